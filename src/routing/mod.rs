//! Routing: which backend serves a request.
//!
//! Owns the [`Router`] decision trait, the read-only [`RequestView`] every router sees, ACL
//! evaluation (`acl`) and the native rule-based router (`native::AclRouter`). ACL *syntax* is
//! parsed and validated in `config::acl`; this module compiles those specs into matchers and
//! evaluates them. Nothing here parses text per request.

pub mod acl;
pub mod native;

use std::net::SocketAddr;

use http::{HeaderMap, Method};

pub use acl::{CompileError, CompiledAcl};
pub use native::AclRouter;
pub use native::BuildError;

/// What a router sees of a request. Borrowed from the request being proxied: building one
/// costs nothing, and every field is already canonical (see `proxy::canon`): `host` is the
/// lower-cased authority without port, `path` is the normalised path that will be forwarded.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// `"http"` or `"https"`.
    pub scheme: &'a str,
    /// Host without port, lower case; empty when the request had none (HTTP/1.0).
    pub host: &'a str,
    /// Normalised path, always starting with `/`.
    pub path: &'a str,
    /// Raw query string after the first `?`, without it; `None` when the target has no `?`
    /// (`/x?` has an empty one, as in HAProxy's `query` fetch).
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub client: SocketAddr,
    /// The port the client connected to (HAProxy's `dst_port`).
    pub local_port: u16,
    pub frontend: &'a str,
    /// The server name a TLS client asked for (SNI), lower case; empty on a cleartext
    /// connection or when the client sent none.
    pub sni: &'a str,
}

/// What a router sees of a TCP-mode connection: the client, where it connected to, and the TLS
/// server name when the frontend's rules or its router plugin may read it (peeked from the
/// ClientHello, which is then forwarded untouched). Everything a TCP routing decision may depend on, native or
/// plugin.
#[derive(Debug, Clone, Copy)]
pub struct ConnView<'a> {
    pub client: SocketAddr,
    /// The address the client connected to (`dst_port` is its port).
    pub local: SocketAddr,
    /// `req.ssl_sni`: `None` when not inspected, not TLS, or no name was sent.
    pub sni: Option<&'a str>,
    pub frontend: &'a str,
}

/// The method a connection shows as a request.
static CONNECT: Method = Method::CONNECT;

impl<'a> ConnView<'a> {
    /// The connection as a request, for decisions written for requests (balancers, router
    /// plugins): method `CONNECT`, scheme `tcp`, host and `sni` the server name (empty when
    /// none), path `/`, no query, and `no_headers` (an empty map, which does not allocate).
    pub fn as_request(&self, no_headers: &'a HeaderMap) -> RequestView<'a> {
        let name = self.sni.unwrap_or("");
        RequestView {
            method: &CONNECT,
            scheme: "tcp",
            host: name,
            path: "/",
            query: None,
            headers: no_headers,
            client: self.client,
            local_port: self.local.port(),
            sni: name,
            frontend: self.frontend,
        }
    }
}

/// A routing decision. Backends are named by their index in the snapshot's backend list,
/// resolved when the router was built, so deciding never hashes or compares names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteDecision {
    /// Send the request to this backend.
    Backend(usize),
    /// No rule matched and there is no default backend: the proxy answers 503.
    NoBackend,
    /// Answer the client with this response instead of proxying (a router plugin's choice,
    /// already validated).
    Respond(Box<LocalResponse>),
    /// A router plugin failed and its `on_error` policy is `deny`: the proxy answers 503.
    Deny,
}

/// A complete response a router chose to send itself. Built only through checked
/// constructors (`http::StatusCode`, `HeaderName`, `HeaderValue`), never with framing or
/// hop-by-hop headers: the proxy sets those.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: http::StatusCode,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

/// The routing decision: native ACL rules or a plugin implement it.
pub trait Router: Send + Sync + std::fmt::Debug {
    fn route(&self, req: &RequestView<'_>) -> RouteDecision;

    /// The decision for a TCP-mode connection. A router that only understands requests
    /// routes connections nowhere (`wasp check` keeps such routers off TCP frontends).
    fn route_conn(&self, conn: &ConnView<'_>) -> RouteDecision {
        let _ = conn;
        RouteDecision::NoBackend
    }
}
