//! The one place where proxy failures become HTTP statuses, with short bodies that reveal
//! nothing internal.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::proxy::body::{Finish, ProxyBody};
use crate::routing::LocalResponse;

/// Why wasp answered a request itself instead of relaying a server's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The request was malformed (bad Host, path traversal, ...).
    BadRequest,
    /// The client stopped sending its request body for longer than `timeout client`.
    ClientTimeout,
    /// No rule matched and there is no default backend.
    NoBackend,
    /// The backend has no usable server, or every connect attempt failed.
    NoServer,
    /// Every usable server stayed at its `maxconn` for `timeout queue`.
    QueueTimeout,
    /// The server sent no response within `timeout server`.
    UpstreamTimeout,
    /// The server closed the connection or answered with something that is not HTTP.
    UpstreamFailed,
    /// A routing or balancing plugin failed and its `on_error` policy is `deny`.
    PluginDenied,
}

impl Failure {
    pub fn status(self) -> StatusCode {
        match self {
            Failure::BadRequest => StatusCode::BAD_REQUEST,
            Failure::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            Failure::NoBackend
            | Failure::NoServer
            | Failure::QueueTimeout
            | Failure::PluginDenied => StatusCode::SERVICE_UNAVAILABLE,
            Failure::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Failure::UpstreamFailed => StatusCode::BAD_GATEWAY,
        }
    }

    fn body(self) -> &'static str {
        match self {
            Failure::BadRequest => "400 Bad Request\n",
            Failure::ClientTimeout => "408 Request Timeout\n",
            Failure::NoBackend
            | Failure::NoServer
            | Failure::QueueTimeout
            | Failure::PluginDenied => "503 Service Unavailable\n",
            Failure::UpstreamTimeout => "504 Gateway Timeout\n",
            Failure::UpstreamFailed => "502 Bad Gateway\n",
        }
    }
}

/// The response wasp sends for `failure`.
pub fn failure(failure: Failure, finish: Option<Box<dyn Finish>>) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::local(
        Bytes::from_static(failure.body().as_bytes()),
        finish,
    ));
    *resp.status_mut() = failure.status();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if matches!(failure, Failure::BadRequest | Failure::ClientTimeout) {
        // The connection's framing can no longer be trusted.
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The status of a redirect for `method`: 301 for GET and HEAD, 308 (which keeps the method
/// and body) otherwise.
pub fn redirect_status(method: &http::Method) -> StatusCode {
    if matches!(*method, http::Method::GET | http::Method::HEAD) {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    }
}

/// A redirect to `location` with `status` and an empty body.
pub fn redirect(
    status: StatusCode,
    location: HeaderValue,
    finish: Option<Box<dyn Finish>>,
) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::local(Bytes::new(), finish));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::LOCATION, location);
    resp
}

/// A response a router plugin chose to send itself (validated when it was decided).
pub fn direct(answer: LocalResponse, finish: Option<Box<dyn Finish>>) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::local(answer.body, finish));
    *resp.status_mut() = answer.status;
    *resp.headers_mut() = answer.headers;
    resp
}
