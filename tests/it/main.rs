//! Integration tests: real sockets on 127.0.0.1, backends the tests start themselves, the
//! library's runtime in-process or the real binary as a child process.

mod support;

mod accept_proxy;
mod admin;
mod counting;

mod failover;
mod framing;
mod h2;
mod health;
mod labs;
mod lifecycle;
mod plugins;
mod pooling;
mod states;
mod statuses;
mod streaming;
mod tcp;
mod tls;
mod websocket;
