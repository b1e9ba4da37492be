//! Integration tests: the real server on 127.0.0.1 port 0 and real clients.
//! One test binary (see STYLE.md); each area is a module.

mod auth;
mod auth_clients;
mod cluster;
mod conformance;
mod durable;
mod flood;
mod grpc;
mod grpc_web;
mod process;
mod python;
mod service;
mod sse;
mod stress;
mod support;
mod tls;
mod tls_http;
mod web_page;
