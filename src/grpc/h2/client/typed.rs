//! Typed calls of `chat.ChatService` on a [`Channel`], messages encoded and
//! decoded with rust-protobuf 3: the shapes the CLI, the tests and the load
//! tool use.

use std::marker::PhantomData;

use super::{CallOptions, Channel, Duplex, Stream};
use crate::grpc::call::{Code, Status};
use crate::proto::chat;

/// A message to send, encoded (rust-protobuf 3).
pub fn encode(message: &impl protobuf::Message) -> Result<Vec<u8>, Status> {
    message
        .write_to_bytes()
        .map_err(|e| Status::new(Code::Internal, format!("cannot encode the request: {e}")))
}

/// A message received, decoded (rust-protobuf 3).
pub fn decode<T: protobuf::Message>(bytes: &[u8]) -> Result<T, Status> {
    T::parse_from_bytes(bytes)
        .map_err(|e| Status::new(Code::Internal, format!("cannot decode the response: {e}")))
}

/// A server-streaming call's responses, decoded as `T`.
pub struct Messages<T> {
    stream: Stream,
    _type: PhantomData<fn() -> T>,
}

impl<T> Messages<T> {
    /// The undecoded stream (for `recv_timeout`).
    pub fn stream_mut(&mut self) -> &mut Stream {
        &mut self.stream
    }
}

impl<T: protobuf::Message> Iterator for Messages<T> {
    type Item = Result<T, Status>;

    fn next(&mut self) -> Option<Result<T, Status>> {
        self.stream.next().map(|r| r.and_then(|m| decode(&m)))
    }
}

/// The paths of `chat.ChatService`'s methods.
pub mod chat_paths {
    pub const SEND_MESSAGE: &str = "/chat.ChatService/SendMessage";
    pub const SUBSCRIBE_MESSAGES: &str = "/chat.ChatService/SubscribeMessages";
    pub const UPLOAD_MESSAGES: &str = "/chat.ChatService/UploadMessages";
    pub const CHAT: &str = "/chat.ChatService/Chat";
    pub const STREAM_METRICS: &str = "/chat.ChatService/StreamMetrics";
}

/// Typed calls of `chat.ChatService`, each made with the client's options.
#[derive(Clone, Debug)]
pub struct ChatClient {
    channel: Channel,
    options: CallOptions,
}

impl ChatClient {
    pub fn new(channel: Channel) -> ChatClient {
        ChatClient {
            channel,
            options: CallOptions::default(),
        }
    }

    pub fn with_options(mut self, options: CallOptions) -> ChatClient {
        self.options = options;
        self
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    pub fn send_message(
        &self,
        req: &chat::SendMessageRequest,
    ) -> Result<chat::SendMessageResponse, Status> {
        let bytes = self
            .channel
            .unary(chat_paths::SEND_MESSAGE, &encode(req)?, &self.options)?;
        decode(&bytes)
    }

    pub fn subscribe_messages(
        &self,
        req: &chat::SubscribeRequest,
    ) -> Result<Messages<chat::Message>, Status> {
        self.server_streaming(chat_paths::SUBSCRIBE_MESSAGES, req)
    }

    pub fn stream_metrics(
        &self,
        req: &chat::MetricsRequest,
    ) -> Result<Messages<chat::Metric>, Status> {
        self.server_streaming(chat_paths::STREAM_METRICS, req)
    }

    /// Send `chat::Message`s with [`encode`]; [`Duplex::close_and_recv`]
    /// gives the `chat::UploadResponse` to [`decode`].
    pub fn upload_messages(&self) -> Result<Duplex, Status> {
        self.channel
            .open(chat_paths::UPLOAD_MESSAGES, &self.options)
    }

    /// `chat::Message`s both ways.
    pub fn chat(&self) -> Result<Duplex, Status> {
        self.channel.open(chat_paths::CHAT, &self.options)
    }

    fn server_streaming<T>(
        &self,
        path: &str,
        req: &impl protobuf::Message,
    ) -> Result<Messages<T>, Status> {
        Ok(Messages {
            stream: self
                .channel
                .server_streaming(path, &encode(req)?, &self.options)?,
            _type: PhantomData,
        })
    }
}
