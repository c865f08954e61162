//! The HTTP request path: canonicalise, route, balance, forward with retries, relay back.

use std::convert::Infallible;
use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use std::borrow::Cow;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version, header};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::balance::PickContext;
use crate::proxy::Proxy;
use crate::proxy::access::Record;
use crate::proxy::body::ProxyBody;
use crate::proxy::canon;
use crate::proxy::client_io::ConnShared;
use crate::proxy::headers::{set_forwarded, strip_hop_by_hop};
use crate::proxy::respond::{Failure, failure};
use crate::proxy::timer::{LazyTimer, within};
use crate::routing::{RequestView, RouteDecision};
use crate::snapshot::{Backend, Frontend, ListenKey, Snapshot};
use crate::upstream::ConnectTiming;
use crate::upstream::body::{BodyError, IdleBody, Reclaimable, UpstreamBody};

/// What a request knows about the connection it arrived on.
#[derive(Debug)]
pub struct ConnInfo {
    /// The listener the connection came in on (which names its frontend).
    pub bind: ListenKey,
    pub client: SocketAddr,
    pub scheme: &'static str,
    pub conn: Arc<ConnShared>,
    /// The server-timeout timer of HTTP/1 requests, which come one at a time (see `timer`).
    pub h1_timer: Mutex<LazyTimer>,
}

/// Serves one request. Never fails: every failure is an HTTP answer.
pub async fn serve(
    proxy: Arc<Proxy>,
    info: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let received = Instant::now();
    let head_started = if req.version() == Version::HTTP_2 {
        received
    } else {
        info.conn.head_started()
    };
    let snapshot = proxy.snapshot();
    let mut record = Box::new(Record {
        log: snapshot.global.access_log,
        client: info.client,
        frontend: Arc::from("-"),
        backend: None,
        server: None,
        method: req.method().clone(),
        path: String::new(),
        status: 0,
        head_started,
        received,
        t_connect: None,
        t_response: None,
        in_flight: Some(info.conn.begin_request()),
        active: None,
    });
    if record.log {
        record.path = req.uri().path().to_owned();
    }
    let Some(frontend) = snapshot.frontend_for(&info.bind) else {
        // The listener outlived its frontend (a reload removed it); stop serving it.
        return Ok(local(Failure::NoBackend, record));
    };
    record.frontend = Arc::clone(&frontend.name);
    Ok(forward(&snapshot, frontend, &info, req, record).await)
}

fn local(why: Failure, mut record: Box<Record>) -> Response<ProxyBody> {
    record.status = why.status().as_u16();
    record.t_response = Some(record.received.elapsed());
    failure(why, Some(record))
}

async fn forward(
    snapshot: &Snapshot,
    frontend: &Frontend,
    info: &ConnInfo,
    req: Request<Incoming>,
    mut record: Box<Record>,
) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    if parts.method == Method::CONNECT {
        return local(Failure::BadRequest, record);
    }
    let authority = match canon::authority(parts.version, &parts.uri, &parts.headers) {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(client = %info.client, error = %e, "bad request");
            return local(Failure::BadRequest, record);
        }
    };
    let path = match canon::path(parts.uri.path()) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(client = %info.client, error = %e, "bad request");
            return local(Failure::BadRequest, record);
        }
    };
    let host = authority.as_ref().map(canon::host);
    let query = parts.uri.query().unwrap_or("");

    let view = RequestView {
        method: &parts.method,
        scheme: info.scheme,
        host: host.as_deref().unwrap_or(""),
        path: &path,
        query,
        headers: &parts.headers,
        client: info.client,
        frontend: &frontend.name,
    };
    let backend = match frontend.router.route(&view) {
        RouteDecision::Backend(i) => &snapshot.backends[i],
        RouteDecision::NoBackend => return local(Failure::NoBackend, record),
    };
    record.backend = Some(Arc::clone(&backend.name));

    // The forwarded request: normalised path, canonical Host, no hop-by-hop headers, wasp's
    // forwarding headers, re-framed by hyper from the body.
    let path_and_query = match &path {
        Cow::Borrowed(_) => parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
        Cow::Owned(normal) => {
            if record.log {
                record.path.clone_from(normal);
            }
            let text = if query.is_empty() {
                normal.clone()
            } else {
                format!("{normal}?{query}")
            };
            match PathAndQuery::try_from(text) {
                Ok(pq) => pq,
                Err(_) => return local(Failure::BadRequest, record),
            }
        }
    };
    drop(host);
    drop(path);
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    headers.remove(header::CONTENT_LENGTH);
    if let Some(a) = &authority {
        match HeaderValue::from_str(a.as_str()) {
            Ok(v) => {
                headers.insert(header::HOST, v);
            }
            Err(_) => return local(Failure::BadRequest, record),
        }
    }
    if frontend.forwardfor {
        set_forwarded(
            headers,
            info.client.ip(),
            info.scheme,
            authority.as_ref().map(|a| a.as_str()),
        );
    }

    let body = if body_is_empty(&body) {
        None
    } else {
        Some(Reclaimable::new(IdleBody::new(
            body,
            frontend.timeouts.client,
        )))
    };
    let attempt = Attempt {
        version: parts.version,
        method: parts.method,
        authority,
        path_and_query,
        headers: parts.headers,
        body,
    };
    dispatch(backend, frontend, info, attempt, record).await
}

fn body_is_empty(body: &Incoming) -> bool {
    use http_body::Body as _;
    body.is_end_stream() || body.size_hint().exact() == Some(0)
}

/// The parts of a forwarded request that each attempt needs.
struct Attempt {
    /// The client's HTTP version (the upstream one is always HTTP/1.1).
    version: Version,
    method: Method,
    authority: Option<Authority>,
    path_and_query: PathAndQuery,
    headers: HeaderMap,
    body: Option<Reclaimable>,
}

impl Attempt {
    fn request(
        &self,
        server: &crate::snapshot::Server,
        last: bool,
        headers: &mut Option<HeaderMap>,
    ) -> Request<UpstreamBody> {
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(server.authority.clone())
            .path_and_query(self.path_and_query.clone())
            .build()
            .unwrap_or_default();
        let body = match &self.body {
            Some(b) => UpstreamBody::Pending(b.clone()),
            None => UpstreamBody::Empty,
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        // The last possible attempt takes the headers; earlier ones copy them.
        *req.headers_mut() = match (last, headers.take()) {
            (true, Some(h)) => h,
            (_, Some(h)) => {
                let copy = h.clone();
                *headers = Some(h);
                copy
            }
            (_, None) => self.headers.clone(),
        };
        req
    }
}

async fn dispatch(
    backend: &Backend,
    frontend: &Frontend,
    info: &ConnInfo,
    mut attempt: Attempt,
    mut record: Box<Record>,
) -> Response<ProxyBody> {
    let attempts = backend.retries as usize + 1;
    let mut tried: Vec<usize> = Vec::new();
    let mut headers = Some(std::mem::take(&mut attempt.headers));
    // A view for balancers: the forwarded headers, canonical path.
    let empty = HeaderMap::new();
    let host = attempt.authority.as_ref().map(canon::host);
    for n in 0..attempts {
        let idx = {
            let view_headers = headers.as_ref().unwrap_or(&empty);
            let view = RequestView {
                method: &attempt.method,
                scheme: info.scheme,
                host: host.as_deref().unwrap_or(""),
                path: attempt.path_and_query.path(),
                query: attempt.path_and_query.query().unwrap_or(""),
                headers: view_headers,
                client: info.client,
                frontend: &frontend.name,
            };
            let mut pick = backend.balancer.pick(&PickContext {
                req: &view,
                tried: &tried,
            });
            if pick.is_none() && !tried.is_empty() {
                // Every usable server failed once: start another lap over them.
                tried.clear();
                pick = backend.balancer.pick(&PickContext {
                    req: &view,
                    tried: &tried,
                });
            }
            match pick {
                Some(i) => i,
                None => break,
            }
        };
        let server = &backend.servers[idx];
        let active = server.state.begin_request();
        let req = attempt.request(server, n + 1 == attempts, &mut headers);
        let sent = Instant::now();
        let timer = (attempt.version != Version::HTTP_2).then_some(&info.h1_timer);
        let outcome = within(
            backend.timeouts.server,
            timer,
            backend.pools.client().request(req),
        )
        .await;
        match outcome {
            Some(Ok(resp)) => {
                record.server = Some(Arc::clone(&server.name));
                record.active = Some(active);
                return relay(resp, backend, sent, record);
            }
            Some(Err(e)) if e.is_connect() => {
                server.state.record_connect_failure();
                if server.state.should_log_failure() {
                    tracing::warn!(
                        backend = &*backend.name,
                        server = &*server.name,
                        error = %source_chain(&e),
                        "connect to {} failed",
                        server.authority
                    );
                }
                if attempt.body.as_ref().is_some_and(|b| !b.is_intact()) {
                    // Cannot happen before a connection exists, but never replay a used body.
                    break;
                }
                tried.push(idx);
            }
            Some(Err(e)) => {
                record.server = Some(Arc::clone(&server.name));
                let why = if is_client_body_timeout(&e) {
                    Failure::ClientTimeout
                } else {
                    Failure::UpstreamFailed
                };
                tracing::debug!(
                    backend = &*backend.name,
                    server = &*server.name,
                    error = %source_chain(&e),
                    "upstream request failed"
                );
                return local(why, record);
            }
            None => {
                record.server = Some(Arc::clone(&server.name));
                tracing::debug!(
                    backend = &*backend.name,
                    server = &*server.name,
                    "no response within timeout server"
                );
                return local(Failure::UpstreamTimeout, record);
            }
        }
    }
    local(Failure::NoServer, record)
}

fn relay(
    resp: Response<Incoming>,
    backend: &Backend,
    sent: Instant,
    mut record: Box<Record>,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    record.t_connect = parts.extensions.get::<ConnectTiming>().map(|t| {
        if t.established >= sent {
            t.took
        } else {
            std::time::Duration::ZERO
        }
    });
    record.t_response = Some(record.received.elapsed());
    record.status = parts.status.as_u16();
    strip_hop_by_hop(&mut parts.headers);
    parts.extensions = http::Extensions::new();
    let body = ProxyBody::upstream(IdleBody::new(body, backend.timeouts.server), Some(record));
    Response::from_parts(parts, body)
}

fn is_client_body_timeout(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source = e.source();
    while let Some(err) = source {
        if let Some(BodyError::Idle(_)) = err.downcast_ref::<BodyError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// An error and its causes on one line: hyper-util's own messages are terse.
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    text
}
