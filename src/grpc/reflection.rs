//! gRPC server reflection, `grpc.reflection.v1` and `v1alpha`, answering from
//! the descriptors `build.rs` compiled in, so that grpcurl and grpcui can list
//! and call every service without the `.proto` files.
//!
//! Answers are a pure function of the request ([`ReflectionIndex::answer`]);
//! the stream thread only reads requests and writes answers, through the
//! call interface.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use protobuf::descriptor::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};
use protobuf::Message as _;

use super::call::{Code, Interrupted, Received, Requests, Responses, Started, Status};
use super::streams::say_goodbye_with;
use super::Shared;
use crate::proto::reflection::server_reflection_request::Message_request as Request;
use crate::proto::reflection::server_reflection_response::Message_response as Answer;
use crate::proto::reflection::{
    ErrorResponse, ExtensionNumberResponse, FileDescriptorResponse, ListServiceResponse,
    ServerReflectionRequest, ServerReflectionResponse, ServiceResponse,
};
use crate::proto::DESCRIPTORS;

/// What reflection can look up, built once from [`DESCRIPTORS`].
pub struct ReflectionIndex {
    files: HashMap<String, FileDescriptorProto>,
    /// Fully qualified symbol (no leading dot) -> file name.
    symbols: HashMap<String, String>,
    services: BTreeSet<String>,
}

fn qualify(package: &str, name: &str) -> String {
    if package.is_empty() {
        name.to_string()
    } else {
        format!("{package}.{name}")
    }
}

fn add_messages(
    symbols: &mut HashMap<String, String>,
    file: &str,
    scope: &str,
    messages: &[DescriptorProto],
) {
    for m in messages {
        let name = qualify(scope, m.name());
        for e in &m.enum_type {
            symbols.insert(qualify(&name, e.name()), file.to_string());
        }
        add_messages(symbols, file, &name, &m.nested_type);
        symbols.insert(name, file.to_string());
    }
}

impl ReflectionIndex {
    /// The index of the compiled-in descriptors (built on first use).
    pub fn get() -> &'static ReflectionIndex {
        static INDEX: OnceLock<ReflectionIndex> = OnceLock::new();
        INDEX.get_or_init(|| {
            let set = FileDescriptorSet::parse_from_bytes(DESCRIPTORS)
                .expect("build.rs wrote a valid descriptor set");
            ReflectionIndex::new(set)
        })
    }

    pub fn new(set: FileDescriptorSet) -> ReflectionIndex {
        let mut files = HashMap::new();
        let mut symbols = HashMap::new();
        let mut services = BTreeSet::new();
        for file in set.file {
            let name = file.name().to_string();
            let package = file.package();
            for s in &file.service {
                let service = qualify(package, s.name());
                for m in &s.method {
                    symbols.insert(format!("{service}.{}", m.name()), name.clone());
                }
                symbols.insert(service.clone(), name.clone());
                services.insert(service);
            }
            for e in &file.enum_type {
                symbols.insert(qualify(package, e.name()), name.clone());
            }
            add_messages(&mut symbols, &name, package, &file.message_type);
            files.insert(name, file);
        }
        ReflectionIndex {
            files,
            symbols,
            services,
        }
    }

    /// `name` and everything it imports, each once, `name` first.
    fn file_closure(&self, name: &str) -> Option<Vec<Vec<u8>>> {
        let mut order = vec![name.to_string()];
        let mut i = 0;
        while i < order.len() {
            let file = self.files.get(&order[i])?;
            for dep in &file.dependency {
                if !order.contains(dep) {
                    order.push(dep.clone());
                }
            }
            i += 1;
        }
        order
            .iter()
            .map(|n| self.files[n].write_to_bytes().ok())
            .collect()
    }

    fn files_answer(&self, name: Option<&str>, what: &str) -> Answer {
        match name.and_then(|n| self.file_closure(n)) {
            Some(bytes) => {
                let mut r = FileDescriptorResponse::new();
                r.file_descriptor_proto = bytes;
                Answer::FileDescriptorResponse(r)
            }
            None => error(Code::NotFound, format!("{what} not found")),
        }
    }

    /// The answer to one reflection request.
    pub fn answer(&self, req: &ServerReflectionRequest) -> ServerReflectionResponse {
        let answer = match &req.message_request {
            Some(Request::ListServices(_)) => {
                let mut list = ListServiceResponse::new();
                list.service = self
                    .services
                    .iter()
                    .map(|s| {
                        let mut r = ServiceResponse::new();
                        r.name = s.clone();
                        r
                    })
                    .collect();
                Answer::ListServicesResponse(list)
            }
            Some(Request::FileByFilename(name)) => {
                self.files_answer(Some(name), &format!("file '{name}'"))
            }
            Some(Request::FileContainingSymbol(symbol)) => {
                let symbol = symbol.trim_start_matches('.');
                self.files_answer(
                    self.symbols.get(symbol).map(String::as_str),
                    &format!("symbol '{symbol}'"),
                )
            }
            Some(Request::FileContainingExtension(ext)) => error(
                Code::NotFound,
                format!(
                    "extension {} of '{}' not found",
                    ext.extension_number, ext.containing_type
                ),
            ),
            Some(Request::AllExtensionNumbersOfType(t)) => {
                if self.symbols.contains_key(t.trim_start_matches('.')) {
                    let mut r = ExtensionNumberResponse::new();
                    r.base_type_name = t.clone();
                    Answer::AllExtensionNumbersResponse(r)
                } else {
                    error(Code::NotFound, format!("type '{t}' not found"))
                }
            }
            _ => error(
                Code::InvalidArgument,
                "the request names nothing to look up".into(),
            ),
        };
        let mut resp = ServerReflectionResponse::new();
        resp.valid_host = req.host.clone();
        resp.original_request = protobuf::MessageField::some(req.clone());
        resp.message_response = Some(answer);
        resp
    }
}

fn error(code: Code, message: String) -> Answer {
    let mut e = ErrorResponse::new();
    e.error_code = code.number();
    e.error_message = message;
    Answer::ErrorResponse(e)
}

/// `grpc.reflection.v1.ServerReflection` and its `v1alpha` twin for the
/// generated dispatch.
pub(super) struct Reflection<'a>(pub(super) &'a Arc<Shared>);

impl<C> crate::proto::services::reflection::ServerReflection<C> for Reflection<'_>
where
    C: Requests<ServerReflectionRequest> + Responses<ServerReflectionResponse>,
{
    type Status = Status;
    type Started = Started<C>;

    fn server_reflection_info(&self, call: C) -> Started<C> {
        serve(self.0, "ServerReflection.v1", call)
    }
}

impl<C> crate::proto::services::reflection_v1alpha::ServerReflection<C> for Reflection<'_>
where
    C: Requests<ServerReflectionRequest> + Responses<ServerReflectionResponse>,
{
    type Status = Status;
    type Started = Started<C>;

    fn server_reflection_info(&self, call: C) -> Started<C> {
        serve(self.0, "ServerReflection.v1alpha", call)
    }
}

/// ServerReflectionInfo, either version (their messages are the same);
/// `method` names the version for metrics.
fn serve<C>(shared: &Arc<Shared>, method: &'static str, call: C) -> Started<C>
where
    C: Requests<ServerReflectionRequest> + Responses<ServerReflectionResponse>,
{
    shared.start_stream(
        shared.open_stream(),
        method,
        "reflect",
        call,
        || Ok(()),
        move |shared, call, ()| run_reflection(shared, call, method),
    )
}

/// Runs on `grpc-reflect-N`: one answer per request, in order.
fn run_reflection<C>(shared: &Shared, mut call: C, method: &'static str)
where
    C: Requests<ServerReflectionRequest> + Responses<ServerReflectionResponse>,
{
    let timeout = shared.write_timeout();
    let index = ReflectionIndex::get();
    let code = loop {
        match call.next(None) {
            Ok(Received::Message(req)) => {
                if call.send_all([index.answer(&req)], timeout).is_err() {
                    break Code::Cancelled;
                }
            }
            Ok(Received::Ended) => {
                call.finish(Status::ok(), timeout);
                break Code::Ok;
            }
            Ok(Received::Failed(_)) => break Code::Cancelled,
            Err(Interrupted::Stopping) | Err(Interrupted::TimedOut) => {
                break say_goodbye_with(call, timeout);
            }
        }
    };
    shared.done(method, code);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(req: Request) -> Answer {
        let mut r = ServerReflectionRequest::new();
        r.message_request = Some(req);
        ReflectionIndex::get().answer(&r).message_response.unwrap()
    }

    #[test]
    fn lists_every_service() {
        let Answer::ListServicesResponse(list) = ask(Request::ListServices(String::new())) else {
            panic!("not a list");
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "chat.ChatService",
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection"
            ]
        );
    }

    #[test]
    fn symbol_lookup_returns_the_file_and_its_imports() {
        for symbol in [
            "chat.ChatService",
            "chat.Message",
            "chat.MessageType",
            "chat.ChatService.Chat",
        ] {
            let Answer::FileDescriptorResponse(files) =
                ask(Request::FileContainingSymbol(symbol.into()))
            else {
                panic!("{symbol}: no files");
            };
            let names: Vec<String> = files
                .file_descriptor_proto
                .iter()
                .map(|b| {
                    FileDescriptorProto::parse_from_bytes(b)
                        .unwrap()
                        .name()
                        .to_string()
                })
                .collect();
            assert_eq!(
                names,
                vec!["chat.proto", "google/protobuf/timestamp.proto"],
                "{symbol}"
            );
        }
    }

    #[test]
    fn unknown_names_get_not_found() {
        let Answer::ErrorResponse(e) = ask(Request::FileContainingSymbol("nope.Nope".into()))
        else {
            panic!("expected an error");
        };
        assert_eq!(e.error_code, Code::NotFound.number());
        let Answer::ErrorResponse(_) = ask(Request::FileByFilename("missing.proto".into())) else {
            panic!("expected an error");
        };
    }
}
