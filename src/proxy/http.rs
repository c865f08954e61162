//! The HTTP request path up to the backend: canonicalise, route, prepare the forwarded
//! request. `dispatch` takes it from there.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, Version, header};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::clock;
use crate::config::Redirect;
use crate::proxy::Proxy;
use crate::proxy::access::Record;
use crate::proxy::body::ProxyBody;
use crate::proxy::canon;
use crate::proxy::client_io::{ConnShared, InFlight};
use crate::proxy::dispatch::{Attempt, dispatch};
use crate::proxy::headers::{Forwarding, Scan};
use crate::proxy::respond::{Failure, direct, failure, redirect, redirect_status};
use crate::proxy::timer::LazyTimer;
use crate::proxy::upgrade::{self, Asked, Switch, Upgrade};
use crate::routing::{LocalResponse, RequestView, RouteDecision};
use crate::snapshot::{Backend, Frontend, ListenKey, Snapshot};
use crate::upstream::body::{ClientBody, IdleBody, Reclaimable};

/// What a request knows about the connection it arrived on.
#[derive(Debug)]
pub struct ConnInfo {
    /// The listener the connection came in on (which names its frontend).
    pub bind: ListenKey,
    pub client: SocketAddr,
    /// The port the client connected to (the listener's bound port).
    pub local_port: u16,
    /// `"https"` on a TLS connection, else `"http"`.
    pub scheme: &'static str,
    /// The server name the TLS client asked for (SNI), if any.
    pub sni: Option<Arc<str>>,
    pub conn: Arc<ConnShared>,
    /// The proxy (kept here so that requests do not each clone the `Arc` every worker shares).
    pub proxy: Arc<Proxy>,
    /// The server-timeout timer of HTTP/1 requests, which come one at a time (see `timer`).
    pub h1_timer: Mutex<LazyTimer>,
    /// The client's address as `X-Forwarded-For` gives it.
    pub forwarded_for: HeaderValue,
    /// The last `Host` the client sent, parsed.
    pub host: canon::HostCache,
}

/// Serves one request. Never fails: every failure is an HTTP answer.
/// `in_flight`: the request, counted on its connection from the moment hyper handed it over (an
/// HTTP/2 stream's future first runs in a task of its own, after the connection may have looked
/// at whether it is idle).
pub async fn serve(
    info: Arc<ConnInfo>,
    req: Request<Incoming>,
    in_flight: InFlight,
) -> Result<Response<ProxyBody>, Infallible> {
    let received = clock::now();
    let h2 = req.version() == Version::HTTP_2;
    let head_started = if h2 {
        received
    } else {
        info.conn.head_started()
    };
    let snapshot = info.proxy.local_snapshot();
    let mut record = Box::new(Record {
        log: snapshot.global.access_log,
        client: info.client,
        snapshot: Arc::clone(&snapshot),
        frontend: None,
        backend: None,
        server: None,
        method: req.method().clone(),
        path: String::new(),
        status: 0,
        body: None,
        head_started,
        received,
        sent: received,
        connection: None,
        t_response: None,
        in_flight: Some(in_flight),
        active: None,
        done: false,
    });
    if record.log {
        record.path = req.uri().path().to_owned();
    }
    let Some(index) = snapshot.frontend_index(&info.bind) else {
        // The connection outlived its listener's frontend (a reload removed it; the reload
        // also asks its connections to close, and this request came first): a 503, after which
        // the connection closes, as HAProxy's old process closes its connections (HTTP/2: a
        // GOAWAY). Kept open, it would answer every later request the same way.
        let mut answer = local(Failure::NoBackend, record);
        info.conn.shut_down();
        if !h2 {
            answer
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return Ok(watched(h2, &info, answer));
    };
    record.frontend = Some(index);
    let frontend = &snapshot.frontends[index];
    // Requests are counted as they arrive (and by their backend once routed), as HAProxy
    // counts sessions; the response when it ends (`access`).
    frontend.state.traffic.count_request();
    let (backend, attempt, record) = match prepare(&snapshot, frontend, &info, req, record) {
        Prepared::Forward(backend, attempt, record) => (backend, attempt, record),
        Prepared::Answer(answer) => return Ok(watched(h2, &info, answer)),
    };
    // Boxed: the attempts' state is a few KiB, and hyper moves this future (into its
    // connection's slot; into a task of its own for each HTTP/2 stream). The box is allocated
    // first and the future made into it: `Box::pin(dispatch(..))` built it on the stack and
    // copied it over (callgrind: two copies of about 130 instructions each per request; this
    // way, one of about 30).
    let dispatched = Box::write(
        Box::new_uninit(),
        dispatch(backend, frontend, &info, attempt, record),
    );
    Ok(watched(h2, &info, Box::into_pin(dispatched).await))
}

/// An HTTP/2 response's body reports its progress to the connection's stall check
/// (`client_io`); a large HTTP/1 one waits while its client takes no data.
#[inline]
fn watched(h2: bool, info: &ConnInfo, mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
    if h2 {
        resp.body_mut().watch(info.conn.watch_stream());
    } else {
        resp.body_mut().pace(&info.conn);
    }
    resp
}

/// Where a request goes once [`prepare`] has looked at it.
enum Prepared<'s> {
    /// To a backend, with what each attempt there needs.
    Forward(&'s Backend, Attempt, Box<Record>),
    /// Nowhere: this is the answer (a local error, a redirect, a router's own response).
    Answer(Response<ProxyBody>),
}

/// Everything before the first attempt, none of which waits: canonical host and path,
/// routing, the forwarded request's headers.
fn prepare<'s>(
    snapshot: &'s Snapshot,
    frontend: &Frontend,
    info: &ConnInfo,
    mut req: Request<Incoming>,
    mut record: Box<Record>,
) -> Prepared<'s> {
    let scan = Scan::of(req.headers());
    // A transfer coding besides `chunked` (`gzip, chunked`) would be lost when the request is
    // re-framed.
    if scan.other_coding {
        return Prepared::Answer(local(Failure::BadRequest, record));
    }
    let upgrade = match upgrade::requested(&req, &scan) {
        Switch::No => None,
        Switch::Asked(asked) => Some(Upgrade::on(asked, &mut req)),
        // CONNECT is not proxied, but for WebSocket over HTTP/2.
        Switch::Refused => return Prepared::Answer(local(Failure::BadRequest, record)),
    };
    let (mut parts, body) = req.into_parts();
    let h2_websocket = upgrade
        .as_ref()
        .is_some_and(|u| matches!(u.asked, Asked::Http2WebSocket { .. }));
    if h2_websocket {
        // Routed and logged as HAProxy sees it: a GET asking for `Upgrade: websocket`.
        parts.method = Method::GET;
        record.method = Method::GET;
        parts
            .headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    let (authority, sent_host) =
        match canon::authority(parts.version, &parts.uri, &parts.headers, &info.host) {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(client = %info.client, error = %e, "bad request");
                return Prepared::Answer(local(Failure::BadRequest, record));
            }
        };
    let path = match canon::path(parts.uri.path()) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(client = %info.client, error = %e, "bad request");
            return Prepared::Answer(local(Failure::BadRequest, record));
        }
    };
    if parts.version == Version::HTTP_2 {
        canon::join_cookies(&mut parts.headers);
    }
    // Host is the canonical authority, for `hdr(host)` and plugins as for the server; usually
    // the client's own Host header already says it.
    let host_value = match &authority {
        None => None,
        Some(a) => match sent_host {
            Some(sent) if sent.as_bytes() == a.as_str().as_bytes() => Some(sent),
            _ => match HeaderValue::from_str(a.as_str()) {
                Ok(v) => {
                    parts.headers.insert(header::HOST, v.clone());
                    Some(v)
                }
                Err(_) => return Prepared::Answer(local(Failure::BadRequest, record)),
            },
        },
    };
    let host = authority.as_ref().map(canon::host);
    let query = parts.uri.query();
    if frontend.redirect == Some(Redirect::Https) && info.scheme == "http" {
        return Prepared::Answer(to_https(
            &parts.method,
            host.as_deref(),
            &path,
            query,
            record,
        ));
    }

    let view = RequestView {
        method: &parts.method,
        scheme: info.scheme,
        host: host.as_deref().unwrap_or(""),
        path: &path,
        query,
        headers: &parts.headers,
        client: info.client,
        local_port: info.local_port,
        frontend: &frontend.name,
        sni: info.sni.as_deref().unwrap_or(""),
    };
    let backend = match frontend.router.route(&view) {
        RouteDecision::Backend(i) => {
            record.backend = Some(i);
            let backend = &snapshot.backends[i];
            backend.state.traffic.count_request();
            backend
        }
        RouteDecision::NoBackend => return Prepared::Answer(local(Failure::NoBackend, record)),
        RouteDecision::Respond(answer) => return Prepared::Answer(respond_direct(*answer, record)),
        RouteDecision::Deny => return Prepared::Answer(local(Failure::PluginDenied, record)),
    };

    // The forwarded request: normalised path, canonical Host, no hop-by-hop headers (wasp's
    // forwarding headers come with each attempt), re-framed by hyper from the body.
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
            let text = match query {
                None => normal.clone(),
                Some(query) => format!("{normal}?{query}"),
            };
            match PathAndQuery::try_from(text) {
                Ok(pq) => pq,
                Err(_) => return Prepared::Answer(local(Failure::BadRequest, record)),
            }
        }
    };
    drop(host);
    drop(path);
    let headers = &mut parts.headers;
    scan.strip(headers);
    if scan.te_trailers {
        // The one TE value that is end to end in effect: gRPC servers require it.
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let empty = body_is_empty(&body);
    // Re-framed by hyper, except an empty body's `Content-Length: 0`, kept: without it a POST
    // reaches the server with no length at all, and strict servers answer 411.
    if scan.content_length && !empty {
        headers.remove(header::CONTENT_LENGTH);
    }
    // A `Connection` header that names `Host` makes the strip above remove it.
    if scan.strips_named()
        && let Some(v) = &host_value
    {
        headers.insert(header::HOST, v.clone());
    }
    if h2_websocket {
        // Each attempt asks in the server's protocol (`Upgrade::ask`).
        headers.remove(header::UPGRADE);
    }
    // Added by each attempt (dispatch), to its own copy of the headers.
    let forwarding = frontend.forwardfor.then(|| Forwarding {
        client: info.forwarded_for.clone(),
        scheme: info.scheme,
        host: host_value,
        sent: scan.forwarding,
    });

    let body = if empty {
        None
    } else {
        // On HTTP/1 the rest of the body follows on the connection even after an early
        // response; on HTTP/2 an unread body's stream is reset instead.
        let hold = (parts.version != Version::HTTP_2)
            .then(|| Box::new(info.conn.hold_for_body()) as Box<dyn Send + Sync>);
        let body = Reclaimable::new(ClientBody::new(
            IdleBody::new(body, frontend.timeouts.client),
            hold,
        ));
        record.body = Some(body.clone());
        Some(body)
    };
    let attempt = Attempt {
        version: parts.version,
        method: parts.method,
        authority,
        path_and_query,
        headers: parts.headers,
        forwarding,
        body,
        upgrade,
        trailers: scan.te_trailers,
    };
    Prepared::Forward(backend, attempt, record)
}

/// `redirect = "https"`: the same canonical host (without its port: https is on 443), path and
/// query over https. A request without a host cannot be redirected: 400.
fn to_https(
    method: &Method,
    host: Option<&str>,
    path: &str,
    query: Option<&str>,
    mut record: Box<Record>,
) -> Response<ProxyBody> {
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return local(Failure::BadRequest, record);
    };
    let mut location = format!("https://{host}{path}");
    if let Some(query) = query {
        location.push('?');
        location.push_str(query);
    }
    let Ok(location) = HeaderValue::try_from(location) else {
        return local(Failure::BadRequest, record);
    };
    let status = redirect_status(method);
    record.status = status.as_u16();
    record.t_response = Some(clock::since(record.received));
    redirect(status, location, Some(record))
}

/// A local answer for `why`, logged with the request's record.
pub(crate) fn local(why: Failure, mut record: Box<Record>) -> Response<ProxyBody> {
    record.status = why.status().as_u16();
    if why.status().is_client_error()
        && let Some(f) = record.frontend_state()
    {
        f.traffic.count_error();
    }
    record.t_response = Some(clock::since(record.received));
    failure(why, Some(record))
}

/// A router's own answer, logged with the request's record.
fn respond_direct(answer: LocalResponse, mut record: Box<Record>) -> Response<ProxyBody> {
    record.status = answer.status.as_u16();
    record.t_response = Some(clock::since(record.received));
    direct(answer, Some(record))
}

fn body_is_empty(body: &Incoming) -> bool {
    body.is_end_stream() || body.size_hint().exact() == Some(0)
}
