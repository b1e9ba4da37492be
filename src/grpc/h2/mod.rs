//! streamhub's own HTTP/2 transport for the gRPC port: no C core, no async
//! runtime. Pure protocol code, unit-tested without sockets: `frame` (the
//! frame format), `hpack` (header compression, ours both ways), `grpc` (length-prefixed messages, `grpc-timeout`,
//! `grpc-message` encoding) and `conn` (one connection's state machine:
//! streams, flow control, limits and flood budgets). Around it: `server`
//! (sockets, a reader and a writer thread per connection), `tls` (rustls
//! with ALPN h2, when the port speaks TLS), `dispatch`
//! (paths to handlers, on the reader thread) and `call` (the call
//! interface the handlers and stream bodies use, over one stream).

pub mod call;
pub mod client;
pub mod conn;
mod dispatch;
/// What a path no service serves is answered with (gRPC-Web answers the same).
pub(crate) use dispatch::unknown_method;
pub mod frame;
pub mod grpc;
pub mod hpack;
mod hpack_tables;
pub(super) mod server;
pub mod tls;
