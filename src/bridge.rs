//! Where gRPC-Web meets the HTTP port: the composition root's adapter
//! between `http`'s [`Extension`]/[`Exchange`] and `grpc::web`'s door and
//! [`Sink`]. `grpc` and `http` never import each other; this file is the
//! only one that names both, and it decides nothing: each method forwards.

use std::io;

use crate::grpc::web::{GrpcWeb, Sink, WebRequest, CORS_ALLOW_HEADERS, CORS_EXPOSE_HEADERS};
use crate::http::{Exchange, Extension, Request};

/// gRPC-Web as the HTTP port's extension.
pub struct GrpcWebDoor(pub GrpcWeb);

impl Extension for GrpcWebDoor {
    fn claims(&self, path: &str) -> bool {
        GrpcWeb::claims(path)
    }

    fn cors_allow_headers(&self) -> &'static str {
        CORS_ALLOW_HEADERS
    }

    fn cors_expose_headers(&self) -> &'static str {
        CORS_EXPOSE_HEADERS
    }

    fn serve(&self, req: Request, exchange: Exchange) {
        let request = WebRequest {
            content_type: req.header("content-type").map(str::to_string),
            timeout: req.header("grpc-timeout").map(str::to_string),
            authorization: req.header("authorization").map(str::to_string),
            ip: exchange.ip(),
            metadata: req
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), value.clone().into_bytes()))
                .collect(),
            path: req.path,
            body: req.body,
        };
        self.0.serve(request, Box::new(exchange));
    }
}

impl Sink for Exchange {
    fn peer(&self) -> String {
        Exchange::peer(self)
    }

    fn respond(self: Box<Self>, headers: Vec<(&'static str, String)>, body: Vec<u8>) {
        Exchange::respond(*self, headers, body)
    }

    fn refuse(self: Box<Self>, status: u16, message: &str) {
        Exchange::refuse(*self, status, message)
    }

    fn begin(&mut self, headers: Vec<(&'static str, String)>) -> io::Result<()> {
        Exchange::begin(self, headers)
    }

    fn chunk(&mut self, pieces: &[&[u8]], give_up: &dyn Fn() -> bool) -> io::Result<()> {
        Exchange::chunk(self, pieces, give_up)
    }

    fn end(self: Box<Self>, last: Option<&[u8]>, give_up: &dyn Fn() -> bool) {
        Exchange::end(*self, last, give_up)
    }

    fn client_gone(&mut self) -> bool {
        Exchange::client_gone(self)
    }

    fn room_burst(&mut self, newest: u64) {
        Exchange::room_burst(self, newest)
    }
}
