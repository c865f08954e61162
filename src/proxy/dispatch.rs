//! From a backend to a response: pick a server, wait in the queue when every server is at its
//! `maxconn`, send, retry what may be retried, count passive health, relay the answer.
//!
//! Retry rules (HAProxy's `retries` / `redispatch` / `retry-on conn-failure empty-response
//! refused-stream`): a failed connect is retried, on another server with `redispatch` (the
//! default) or on the same one, and so is a request an HTTP/2 server refused unprocessed while
//! its body is intact; a request that reached a server is replayed only when it is idempotent,
//! has no body and the server closed or reset the connection without a byte of answer. A
//! server that answered, even with an error status or with something that is not HTTP (a 502,
//! as HAProxy without `junk-response`), is never retried, and a timeout is a 504, not a retry.

use std::error::Error as _;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header,
};
use tokio::time::Instant;

use crate::balance::PickContext;
use crate::clock;
use crate::config::Observe;
use crate::health::Health;
use crate::health::result::Reason;
use crate::proxy::access::Record;
use crate::proxy::body::ProxyBody;
use crate::proxy::canon;
use crate::proxy::headers::{Forwarding, strip_response};
use crate::proxy::http::{ConnInfo, local};
use crate::proxy::respond::Failure;
use crate::proxy::timer::within;
use crate::proxy::upgrade::{self, Upgrade};
use crate::routing::RequestView;
use crate::snapshot::{Backend, Frontend, Server};
use crate::upstream::body::{BodyError, IdleBody, Progress, Reclaimable, UpstreamBody};
use crate::upstream::{ResponseBody, UpstreamError};

/// The parts of a forwarded request that each attempt needs.
#[derive(Debug)]
pub(crate) struct Attempt {
    /// The client's HTTP version (the upstream one is always HTTP/1.1).
    pub(crate) version: Version,
    pub(crate) method: Method,
    pub(crate) authority: Option<Authority>,
    pub(crate) path_and_query: PathAndQuery,
    /// The client's headers as forwarded: hop-by-hop ones removed, `Host` canonical.
    pub(crate) headers: HeaderMap,
    /// Added to each attempt's headers (`forwardfor`).
    pub(crate) forwarding: Option<Forwarding>,
    pub(crate) body: Option<Reclaimable>,
    /// The switch the request asks for (WebSocket), with the client's side of it.
    pub(crate) upgrade: Option<Upgrade>,
    /// The client sent `TE: trailers`: the response keeps its `Trailer` header.
    pub(crate) trailers: bool,
}

impl Attempt {
    fn request(&self, server: &Server, mut headers: HeaderMap) -> Request<UpstreamBody> {
        // HTTP/1.1 sends the origin form; HTTP/2 needs the scheme and authority as well. The
        // authority is the request's canonical one (what an HTTP/1.1 server gets as `Host`),
        // the server's address only when the request has none; and it goes as `:authority`
        // alone: RFC 9113 8.3.1 wants no `host` beside it (an HTTP/2 server may refuse a
        // mismatch, as wasp does, or go by `:authority` and never see `host`). The connection
        // is still chosen by the server's address (`Pools::send`).
        let uri = if server.pools.is_h2() {
            headers.remove(header::HOST);
            Uri::builder()
                .scheme(server.scheme.clone())
                .authority(
                    self.authority
                        .clone()
                        .unwrap_or_else(|| server.authority.clone()),
                )
                .path_and_query(self.path_and_query.clone())
                .build()
                .unwrap_or_default()
        } else {
            if self.authority.is_none()
                && let Ok(host) = HeaderValue::from_str(server.authority.as_str())
            {
                // An HTTP/1.0 client may leave Host out; the HTTP/1.1 request sent must have
                // one.
                headers.insert(header::HOST, host);
            }
            // hyper frames a body of unknown length on GET or HEAD as none at all ("almost
            // never have bodies"): one the client sent (chunked, or HTTP/2 DATA without a
            // length) goes chunked, as HAProxy forwards it, not dropped.
            if matches!(self.method, Method::GET | Method::HEAD)
                && self.body.as_ref().is_some_and(|b| !b.length_known())
            {
                headers.insert(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
            }
            Uri::from(self.path_and_query.clone())
        };
        let body = match &self.body {
            Some(b) => UpstreamBody::Pending(b.clone()),
            None => UpstreamBody::Empty,
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;
        if let Some(upgrade) = &self.upgrade {
            upgrade.ask(&mut req, server.pools.is_h2());
        }
        req
    }

    /// The first attempt's headers: the client's own map, with the forwarding headers. Its
    /// spare capacity is reused: hyper parses the response's headers into the map it sent.
    fn first_headers(&mut self) -> HeaderMap {
        let mut headers = std::mem::take(&mut self.headers);
        if let Some(f) = &self.forwarding {
            f.apply(&mut headers);
        }
        headers
    }

    /// What a later attempt rebuilds its headers from: a plain copy of the client's headers
    /// (one allocation; a clone of the map took two, and about twice the instructions).
    fn saved_headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut saved = Vec::with_capacity(self.headers.len());
        saved.extend(self.headers.iter().map(|(n, v)| (n.clone(), v.clone())));
        saved
    }

    /// A later attempt's headers, from [`Self::saved_headers`].
    fn rebuilt_headers(&self, saved: &[(HeaderName, HeaderValue)]) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(saved.len() + 3);
        for (name, value) in saved {
            headers.append(name.clone(), value.clone());
        }
        if let Some(f) = &self.forwarding {
            f.apply(&mut headers);
        }
        headers
    }

    /// Whether the request may be sent again after reaching a server that gave no answer.
    fn replayable(&self) -> bool {
        self.body.is_none()
            && matches!(
                self.method,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::TRACE
                    | Method::PUT
                    | Method::DELETE
            )
    }
}

/// Sends the request to a server of `backend` and relays its answer.
pub(crate) async fn dispatch(
    backend: &Backend,
    frontend: &Frontend,
    info: &ConnInfo,
    mut attempt: Attempt,
    mut record: Box<Record>,
) -> Response<ProxyBody> {
    let attempts = backend.retries as usize + 1;
    let mut tried: Vec<usize> = Vec::new();
    let mut previous: Option<usize> = None;
    // hyper consumes the headers it sends: an attempt after the first rebuilds them from a
    // copy, taken only when there may be one.
    let saved = (attempts > 1).then(|| attempt.saved_headers());
    let mut first = Some(attempt.first_headers());
    let queue_deadline = clock::recent() + backend.timeouts.queue;
    let host = attempt.authority.as_ref().map(canon::host);
    // What the client gets when every attempt failed: 503 after connect failures (no server
    // could take it), 502 when the last server took it and hung up.
    let mut exhausted = Failure::NoServer;
    // HAProxy's `http-reuse safe`: a connection's first request does not go out on an idle
    // server connection, which the server may be closing just then. wasp replays such a
    // request when it may (`replayable`); one that may not be replayed gets a new connection
    // instead of a 502 in that race.
    let fresh = !attempt.replayable() && info.conn.requests() <= 1;
    for n in 0..attempts {
        let headers = match first.take() {
            Some(h) => h,
            None => attempt.rebuilt_headers(saved.as_deref().unwrap_or_default()),
        };
        let view = RequestView {
            method: &attempt.method,
            scheme: info.scheme,
            host: host.as_deref().unwrap_or(""),
            path: attempt.path_and_query.path(),
            query: attempt.path_and_query.query(),
            headers: &headers,
            client: info.client,
            local_port: info.local_port,
            frontend: &frontend.name,
            sni: info.sni.as_deref().unwrap_or(""),
        };
        let idx = match choose(backend, &view, &mut tried, previous, queue_deadline).await {
            Ok(i) => i,
            Err(why) => {
                if n == 0 && why == Failure::NoServer {
                    // No server could take the request at all: the backend's error, as
                    // HAProxy counts a backend without an active server (`econ`); failed
                    // attempts were counted as they failed.
                    backend.state.traffic.count_error();
                }
                return local(why, record);
            }
        };
        let server = &backend.servers[idx];
        // The last attempt's unit stays with the record, whose server gets the response.
        record.active = Some(server.state.begin_request());
        let req = attempt.request(server, headers);
        let sent = clock::recent();
        let timer = (attempt.version != Version::HTTP_2).then_some(&info.h1_timer);
        record.server = Some(idx);
        record.sent = sent;
        record.connection = None;
        let outcome = {
            let mut send = std::pin::pin!(server.pools.send(
                server.pool_key,
                &server.authority,
                req,
                fresh,
                &mut record.connection,
            ));
            // `timeout server` counts from the request, or from the last piece of its body the
            // server took, and does not run while the client is awaited: an upload slower than
            // the timeout, or one the client stalls, is not the server's delay (a stalled one
            // ends at `timeout client`, a 408 that is not counted against the server).
            let mut from = sent;
            loop {
                match within(from, backend.timeouts.server, timer, send.as_mut()).await {
                    None => match attempt.body.as_ref().map(Reclaimable::progress) {
                        Some(p) if p.awaiting_client => from = clock::recent(),
                        Some(Progress {
                            last_sent: Some(later),
                            ..
                        }) if later > from => from = later,
                        _ => break None,
                    },
                    done => break done,
                }
            }
        };
        match outcome {
            Some(Ok(resp)) => {
                observe(
                    backend,
                    server,
                    Event::Answered {
                        error: layer7_error(resp.status()),
                    },
                );
                let from_h2 = server.pools.is_h2();
                match attempt.upgrade.take() {
                    Some(up) if up.accepted(resp.status(), from_h2) => {
                        return switch(resp, up, from_h2, backend, record);
                    }
                    Some(up) if up.misleads(resp.status(), from_h2) => {
                        tracing::debug!(
                            backend = &*backend.name,
                            status = resp.status().as_u16(),
                            "WebSocket request from an HTTP/2 client answered without a switch"
                        );
                        return local(Failure::UpstreamFailed, record);
                    }
                    // A 101 the client did not ask for is a broken answer.
                    _ if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                        return local(Failure::UpstreamFailed, record);
                    }
                    _ => return relay(resp, backend, record, attempt.trailers),
                }
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
                observe(backend, server, Event::ConnectFailed);
                exhausted = Failure::NoServer;
                if attempt.body.as_ref().is_some_and(|b| !b.is_intact()) {
                    // Cannot happen before a connection exists, but never replay a used body.
                    return local(Failure::UpstreamFailed, record);
                }
            }
            Some(Err(UpstreamError::NoExtendedConnect)) => {
                // A WebSocket the server cannot take over HTTP/2: nothing was sent, and the
                // server is not at fault (nor would another attempt fare better).
                tracing::debug!(
                    backend = &*backend.name,
                    server = &*server.name,
                    "WebSocket not sent: the server does not allow extended CONNECT"
                );
                return local(Failure::UpstreamFailed, record);
            }
            Some(Err(UpstreamError::Refused(e))) => {
                // An HTTP/2 server refused it unprocessed (a graceful GOAWAY, REFUSED_STREAM):
                // not the server's failure, and nothing was served. Sent again while its body
                // can be (HAProxy's `retry-on refused-stream`).
                tracing::debug!(
                    backend = &*backend.name,
                    server = &*server.name,
                    error = %source_chain(&e),
                    "request refused unprocessed by the server"
                );
                exhausted = Failure::UpstreamFailed;
                if attempt.body.as_ref().is_some_and(|b| !b.is_intact()) {
                    return local(Failure::UpstreamFailed, record);
                }
            }
            Some(Err(ref e)) if let Some(body) = client_body_error(e) => {
                // The client's request body failed (malformed chunks, the client gone or
                // silent): the client's fault, never counted against the server.
                tracing::debug!(client = %info.client, error = %body, "request body failed");
                let why = match body {
                    BodyError::Idle(_) => Failure::ClientTimeout,
                    BodyError::Hyper(_) => Failure::BadRequest,
                };
                return local(why, record);
            }
            Some(Err(e)) => {
                tracing::debug!(
                    backend = &*backend.name,
                    server = &*server.name,
                    error = %source_chain(&e),
                    "no response from server"
                );
                server.state.record_response_error();
                observe(backend, server, Event::NoAnswer);
                exhausted = Failure::UpstreamFailed;
                if e.is_junk() || !attempt.replayable() {
                    return local(Failure::UpstreamFailed, record);
                }
            }
            None => {
                tracing::debug!(
                    backend = &*backend.name,
                    server = &*server.name,
                    "no response within timeout server"
                );
                server.state.record_response_error();
                observe(backend, server, Event::NoAnswer);
                return local(Failure::UpstreamTimeout, record);
            }
        }
        tried.push(idx);
        previous = Some(idx);
        if n + 1 < attempts {
            server.state.record_retry();
            // Free the failed attempt's slot before choosing again (maxconn, leastconn).
            record.active = None;
        }
    }
    local(exhausted, record)
}

/// The longest wait before a retry on the server that just failed (without `redispatch`).
const TURN_AROUND: Duration = Duration::from_secs(1);

/// The server for the next attempt: the balancer's pick among servers not tried yet (a new lap
/// once all have been tried), the failed one again without `redispatch` (after HAProxy's
/// turn-around time), or a wait in the queue while every usable server (or the backend) is at
/// its `maxconn`.
pub(crate) async fn choose(
    backend: &Backend,
    view: &RequestView<'_>,
    tried: &mut Vec<usize>,
    previous: Option<usize>,
    queue_deadline: Instant,
) -> Result<usize, Failure> {
    if !backend.redispatch
        && let Some(p) = previous
        && backend.servers[p].state.usable()
    {
        // HAProxy's turn-around timer before a retry on the same server, which may be
        // restarting: `timeout connect`, at most a second.
        tokio::time::sleep(backend.timeouts.connect.min(TURN_AROUND)).await;
        return Ok(p);
    }
    let mut ticket = None;
    // Whether this request's turn came in the queue. The queue is first come, first served,
    // as HAProxy's: a request that has not been woken from it takes a free slot only when
    // nobody else is waiting (a slot that frees goes to the request waiting longest).
    let mut woken = false;
    loop {
        let others = backend.state.queued() - usize::from(ticket.is_some());
        if !backend.is_full() && (woken || others == 0) {
            let pick = |tried: &[usize]| {
                backend
                    .balancer
                    .pick_or_deny(&PickContext { req: view, tried })
                    .map_err(|_| Failure::PluginDenied)
            };
            if let Some(i) = pick(tried)? {
                return Ok(i);
            }
            if !tried.is_empty() {
                tried.clear();
                if let Some(i) = pick(tried)? {
                    return Ok(i);
                }
            }
        }
        if !backend.any_usable() {
            return Err(Failure::NoServer);
        }
        // Every usable server is at its maxconn (or the backend is), or others wait before
        // this request: queue for a free slot.
        match ticket.take() {
            None => {
                // Register first, then look again, so that a slot freed in between is seen.
                let mut t = backend.state.slot_freed();
                t.enable();
                ticket = Some(t);
            }
            Some(t) => {
                if tokio::time::timeout_at(queue_deadline, t.wait())
                    .await
                    .is_err()
                {
                    return Err(Failure::QueueTimeout);
                }
                woken = true;
            }
        }
    }
}

/// What live traffic told about a server, for passive health.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Event {
    ConnectFailed,
    /// Connected, but the server closed or broke the connection without a valid answer, or
    /// sent none within `timeout server`.
    NoAnswer,
    /// An answer; `error` for a 5xx but 501 and 505.
    Answered {
        error: bool,
    },
}

/// Whether an answer's status is an error to passive health: a 5xx other than 501 and 505,
/// which say the server does not do what this client asked, not that it is unwell (HAProxy's
/// `observe layer7`).
fn layer7_error(status: StatusCode) -> bool {
    status.is_server_error()
        && status != StatusCode::NOT_IMPLEMENTED
        && status != StatusCode::HTTP_VERSION_NOT_SUPPORTED
}

/// Passive health (`observe`): `error_limit` consecutive errors on live traffic mark a checked
/// server down; its active checks bring it back. `layer4` counts failed connects (any
/// connection that worked resets the count); `layer7` also counts 5xx answers (but 501 and
/// 505), connections closed without an answer, and `timeout server` expiring.
pub(crate) fn observe(backend: &Backend, server: &Server, event: Event) {
    let Some(mode) = backend.observe else { return };
    if !server.check {
        return;
    }
    let failed = match (mode, event) {
        (_, Event::ConnectFailed) => true,
        (Observe::Layer4, _) => false,
        (Observe::Layer7, Event::NoAnswer) => true,
        (Observe::Layer7, Event::Answered { error }) => error,
    };
    if !failed {
        server.state.observe_success();
    } else if server.state.observe_error(backend.error_limit)
        && server.state.set_health(Health::Down)
    {
        server.state.record_observed_down(backend.error_limit);
        tracing::warn!(
            backend = &*backend.name,
            server = &*server.name,
            check = %Reason::Observed(backend.error_limit),
            "server {}/{} is DOWN",
            backend.name,
            server.name
        );
    }
}

fn relay(
    resp: Response<ResponseBody>,
    backend: &Backend,
    mut record: Box<Record>,
    trailers: bool,
) -> Response<ProxyBody> {
    match head(resp, backend, &mut record, trailers) {
        Some((parts, body)) => {
            let body =
                ProxyBody::upstream(IdleBody::new(body, backend.timeouts.server), Some(record));
            Response::from_parts(parts, body)
        }
        None => local(Failure::UpstreamFailed, record),
    }
}

/// The server's response head made ready for the client, and noted in `record`; `None` when
/// it cannot be relayed.
fn head(
    resp: Response<ResponseBody>,
    backend: &Backend,
    record: &mut Record,
    trailers: bool,
) -> Option<(http::response::Parts, ResponseBody)> {
    let (mut parts, body) = resp.into_parts();
    record.t_response = Some(clock::since(record.received));
    if let Err(e) = strip_response(&mut parts.headers, trailers) {
        tracing::debug!(backend = &*backend.name, error = %e, "response not relayed");
        return None;
    }
    record.status = parts.status.as_u16();
    // wasp's own version, not the server's: an HTTP/1.0 status line would end the client's
    // keep-alive (hyper still answers an HTTP/1.0 client in HTTP/1.0).
    parts.version = Version::HTTP_11;
    // The server's own reason phrase (`413 X`), when it is not the usual one, as HAProxy
    // keeps it; nothing else of the client connection's extensions.
    let reason = parts.extensions.remove::<hyper::ext::ReasonPhrase>();
    parts.extensions = http::Extensions::new();
    if let Some(reason) = reason {
        parts.extensions.insert(reason);
    }
    Some((parts, body))
}

/// The server accepted the switch: its acceptance goes to the client in the client's protocol
/// (`upgrade`), and a tunnel takes both sides over once hyper has handed them out. `from_h2`:
/// the server was reached over HTTP/2. The request's record goes with the tunnel, which
/// writes its access-log line when it closes.
fn switch(
    mut resp: Response<ResponseBody>,
    up: Upgrade,
    from_h2: bool,
    backend: &Backend,
    mut record: Box<Record>,
) -> Response<ProxyBody> {
    if let Err(why) = up.check(resp.headers(), from_h2) {
        tracing::debug!(backend = &*backend.name, why, "protocol switch refused");
        return local(Failure::UpstreamFailed, record);
    }
    let switched = resp.headers().get(header::UPGRADE).cloned();
    let server = hyper::upgrade::on(&mut resp);
    let stream = resp.body_mut().take_stream();
    let Some((parts, body)) = head(resp, backend, &mut record, false) else {
        return local(Failure::UpstreamFailed, record);
    };
    record.count_switch();
    let body = ProxyBody::upstream(IdleBody::new(body, backend.timeouts.server), None);
    let mut out = Response::from_parts(parts, body);
    up.answer(switched, from_h2, &mut out);
    let tunnel = upgrade::Tunnel {
        idle: backend.timeouts.websocket(),
        record,
        stream,
    };
    tunnel.spawn(up.client, server);
    out
}

/// The client's request-body error behind `e`, when that is why no response came.
fn client_body_error(e: &UpstreamError) -> Option<&BodyError> {
    let mut source = e.source();
    while let Some(err) = source {
        if let Some(body) = err.downcast_ref::<BodyError>() {
            return Some(body);
        }
        source = err.source();
    }
    None
}

/// An error and its causes on one line: hyper's own messages are terse.
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        // A wrapper may show its source's text as its own (`tcp connect error: tcp connect
        // error: ...`): each text once.
        let more = err.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = err.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::source_chain;

    /// An error showing `text`, caused by `source`.
    #[derive(Debug)]
    struct Wrap(&'static str, Option<Box<Wrap>>);

    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Wrap {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn a_cause_is_named_once() {
        let refused = Wrap("connection refused", None);
        let tcp = Wrap("tcp connect error", Some(Box::new(refused)));
        // A transparent wrapper: the same text as its source.
        let same = Wrap("tcp connect error", Some(Box::new(tcp)));
        let top = Wrap("client error (Connect)", Some(Box::new(same)));
        assert_eq!(
            source_chain(&top),
            "client error (Connect): tcp connect error: connection refused"
        );
    }
}
