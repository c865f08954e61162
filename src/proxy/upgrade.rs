//! Protocol switches (WebSocket) through the proxy: HTTP/1.1 `Upgrade`, and HTTP/2's extended
//! CONNECT (RFC 8441), translated both ways.
//!
//! An upgrade request is routed and balanced like any other request. When the server accepts
//! (an HTTP/1.1 server's `101 Switching Protocols`, an HTTP/2 server's 2xx to an extended
//! CONNECT), the client gets its own protocol's acceptance and both connections (or streams)
//! are handed over by hyper (`hyper::upgrade::on`) to a tunnel that relays bytes both ways until
//! either side closes, or nothing moves for the backend's `timeout tunnel`. Any other answer is
//! an ordinary response, and the client connection stays HTTP.
//!
//! The four combinations, as HAProxy makes them:
//!
//! - HTTP/1.1 client, HTTP/1.1 server: only `Connection: upgrade` and its `Upgrade` header
//!   survive the hop-by-hop stripping on the way to the server; the 101 goes back as it came.
//! - HTTP/2 client (`CONNECT` with `:protocol websocket`), HTTP/1.1 server: the request is
//!   routed as HAProxy sees it, a `GET` with `Upgrade: websocket`, and goes out so, with a
//!   fresh `Sec-WebSocket-Key` (an HTTP/2 client sends none). The server's 101 must carry the
//!   matching `Sec-WebSocket-Accept`, or it is a broken answer (502); the client gets a 200.
//! - HTTP/1.1 client asking for `websocket`, HTTP/2 server (`proto = "h2"`): the request goes
//!   out as an extended CONNECT, without the client's key; a 2xx from the server becomes a 101
//!   with the `Sec-WebSocket-Accept` the client's key calls for.
//! - HTTP/2 client, HTTP/2 server: the extended CONNECT goes through as it is.
//!
//! A server's 2xx that does not switch (an HTTP/1.1 server's 200 to an HTTP/2 client's
//! WebSocket request) would tell that client its tunnel is open: it is a 502 instead.
//!
//! Nothing the client sends after the request head reaches the server before the switch: hyper
//! keeps those bytes and hands them over with the upgraded connection (a 2026 Pingora advisory
//! was about forwarding them early). `Upgrade: h2c` is never forwarded.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version, header};
use hyper::body::Incoming;
use hyper::ext::Protocol;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::counters::Sessions;
use crate::proxy::access::Record;
use crate::proxy::headers::Scan;
use crate::proxy::relay::{Ending, relay};
use crate::upstream::pool::OpenStream;

static SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
static SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");

/// How a client asked to switch protocols.
#[derive(Debug, Clone)]
pub(crate) enum Asked {
    /// HTTP/1.1 `Connection: upgrade` with this `Upgrade` value, and the client's
    /// `Sec-WebSocket-Key`, if any.
    Http1 {
        proto: HeaderValue,
        key: Option<HeaderValue>,
    },
    /// An HTTP/2 extended CONNECT with `:protocol websocket` (RFC 8441). `key`: the
    /// `Sec-WebSocket-Key` wasp sends an HTTP/1.1 server in its name.
    Http2WebSocket { key: HeaderValue },
}

/// What the client's request head says about a protocol switch.
#[derive(Debug)]
pub(crate) enum Switch {
    /// None asked for.
    No,
    Asked(Asked),
    /// A request wasp refuses (400): a `CONNECT` it does not proxy (a plain one, a TCP tunnel,
    /// an extended one for a protocol other than WebSocket or with a `Content-Length`), or a
    /// WebSocket upgrade without its `Sec-WebSocket-Key` (as HAProxy refuses it).
    Refused,
}

/// Reads the switch the request asks for: an HTTP/1.1 upgrade to a protocol other than `h2c`
/// (`Connection` lists `upgrade` and an `Upgrade` header names it), or an HTTP/2 extended
/// CONNECT for `websocket`. `scan` is the request's.
pub(crate) fn requested<B>(req: &Request<B>, scan: &Scan) -> Switch {
    if req.method() == Method::CONNECT {
        // RFC 9110 9.3.6: a CONNECT has no content. One that gives a length (even 0, which
        // the HTTP/2 library would then hold the tunnel's first bytes to) is refused.
        let websocket = req.version() == Version::HTTP_2
            && !req.headers().contains_key(header::CONTENT_LENGTH)
            && req
                .extensions()
                .get::<Protocol>()
                .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
        return if websocket {
            Switch::Asked(Asked::Http2WebSocket { key: new_key() })
        } else {
            Switch::Refused
        };
    }
    let headers = req.headers();
    if req.version() != Version::HTTP_11 || !scan.connection_upgrade || !scan.has_upgrade() {
        return Switch::No;
    }
    let Some(proto) = headers.get(header::UPGRADE) else {
        return Switch::No;
    };
    let h2c = proto
        .to_str()
        .is_ok_and(|p| p.split(',').any(|t| t.trim().eq_ignore_ascii_case("h2c")));
    if h2c {
        return Switch::No;
    }
    let key = headers.get(&SEC_WEBSOCKET_KEY).cloned();
    if key.is_none() && is_websocket(proto) {
        return Switch::Refused;
    }
    Switch::Asked(Asked::Http1 {
        proto: proto.clone(),
        key,
    })
}

/// A switch asked for, and the client's side of it once hyper hands it over.
#[derive(Debug)]
pub(crate) struct Upgrade {
    pub(crate) asked: Asked,
    pub(crate) client: OnUpgrade,
}

impl Upgrade {
    /// Takes the client's side of the request's switch.
    pub(crate) fn on(asked: Asked, req: &mut Request<Incoming>) -> Upgrade {
        Upgrade {
            asked,
            client: hyper::upgrade::on(req),
        }
    }

    /// Whether the request goes to an HTTP/2 server (`to_h2`) as an extended CONNECT: a
    /// WebSocket switch does; an HTTP/1.1 upgrade to another protocol cannot, and goes as a
    /// plain request.
    pub(crate) fn connects(&self, to_h2: bool) -> bool {
        to_h2
            && match &self.asked {
                Asked::Http2WebSocket { .. } => true,
                Asked::Http1 { proto, .. } => is_websocket(proto),
            }
    }

    /// Makes the forwarded request ask the server for the switch in the server's protocol
    /// (`to_h2`: HTTP/2). Its headers have lost their hop-by-hop ones.
    pub(crate) fn ask<B>(&self, req: &mut Request<B>, to_h2: bool) {
        if self.connects(to_h2) {
            *req.method_mut() = Method::CONNECT;
            req.extensions_mut()
                .insert(Protocol::from_static("websocket"));
            // RFC 8441 5: no key over HTTP/2.
            req.headers_mut().remove(&SEC_WEBSOCKET_KEY);
            return;
        }
        if to_h2 {
            return;
        }
        match &self.asked {
            Asked::Http1 { proto, .. } => restore(req.headers_mut(), proto.clone()),
            Asked::Http2WebSocket { key } => {
                *req.method_mut() = Method::GET;
                let headers = req.headers_mut();
                restore(headers, HeaderValue::from_static("websocket"));
                headers.insert(SEC_WEBSOCKET_KEY.clone(), key.clone());
            }
        }
    }

    /// Whether the server's answer `status` (from an HTTP/2 server when `from_h2`) is its
    /// acceptance of the switch.
    pub(crate) fn accepted(&self, status: StatusCode, from_h2: bool) -> bool {
        if self.connects(from_h2) {
            status.is_success()
        } else {
            status == StatusCode::SWITCHING_PROTOCOLS
        }
    }

    /// Whether an answer that is not an acceptance must not reach the client as it is: a 2xx
    /// to an HTTP/2 client's WebSocket request that did not go as an extended CONNECT would
    /// tell the client its tunnel is open.
    pub(crate) fn misleads(&self, status: StatusCode, from_h2: bool) -> bool {
        matches!(self.asked, Asked::Http2WebSocket { .. })
            && !self.connects(from_h2)
            && status.is_success()
    }

    /// Checks the server's acceptance (its headers, `from_h2`): an HTTP/1.1 server's 101 must
    /// name the protocol it switched to, answer a WebSocket request with a
    /// `Sec-WebSocket-Accept` (its presence, as HAProxy checks it), and answer the key wasp
    /// sent for an HTTP/2 client with the right one.
    /// `Err`: why it is a broken answer.
    pub(crate) fn check(&self, server: &HeaderMap, from_h2: bool) -> Result<(), &'static str> {
        if self.connects(from_h2) {
            return Ok(());
        }
        let switched = server.get(header::UPGRADE);
        match &self.asked {
            Asked::Http1 { .. } if switched.is_none() => Err("101 without Upgrade"),
            Asked::Http1 { proto, .. }
                if is_websocket(proto) && !server.contains_key(&SEC_WEBSOCKET_ACCEPT) =>
            {
                Err("101 to a WebSocket request without Sec-WebSocket-Accept")
            }
            Asked::Http1 { .. } => Ok(()),
            Asked::Http2WebSocket { .. } if !switched.is_some_and(is_websocket) => {
                Err("101 to a protocol other than websocket")
            }
            Asked::Http2WebSocket { key }
                if server.get(&SEC_WEBSOCKET_ACCEPT) != Some(&accept(key)) =>
            {
                Err("101 without the Sec-WebSocket-Accept of the key sent")
            }
            Asked::Http2WebSocket { .. } => Ok(()),
        }
    }

    /// Turns the server's acceptance, relayed to the client without its hop-by-hop headers
    /// (`resp`; `switched`: the server's `Upgrade`), into the acceptance in the client's
    /// protocol.
    pub(crate) fn answer<B>(
        &self,
        switched: Option<HeaderValue>,
        from_h2: bool,
        resp: &mut http::Response<B>,
    ) {
        let connected = self.connects(from_h2);
        // Neither a 101 nor a 2xx to a CONNECT has a body.
        resp.headers_mut().remove(header::CONTENT_LENGTH);
        match &self.asked {
            Asked::Http1 { key, .. } if connected => {
                *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                let headers = resp.headers_mut();
                if let Some(key) = key {
                    headers.insert(SEC_WEBSOCKET_ACCEPT.clone(), accept(key));
                }
                restore(headers, HeaderValue::from_static("websocket"));
            }
            Asked::Http1 { .. } => {
                if let Some(proto) = switched {
                    restore(resp.headers_mut(), proto);
                }
            }
            Asked::Http2WebSocket { .. } => {
                if !connected {
                    *resp.status_mut() = StatusCode::OK;
                    resp.headers_mut().remove(&SEC_WEBSOCKET_ACCEPT);
                }
            }
        }
    }
}

fn is_websocket(proto: &HeaderValue) -> bool {
    proto.as_bytes().eq_ignore_ascii_case(b"websocket")
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes in base64 (RFC 6455 4.1). The key is a nonce
/// that shows the server understood a WebSocket handshake, not a secret: fastrand's per-thread
/// generator (seeded from the system's randomness) is enough.
fn new_key() -> HeaderValue {
    let bytes: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The `Sec-WebSocket-Accept` that answers `key` (RFC 6455 4.2.2): base64 of the SHA-1 of the
/// key followed by the protocol's GUID.
fn accept(key: &HeaderValue) -> HeaderValue {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(GUID);
    let text = base64::engine::general_purpose::STANDARD.encode(ctx.finish());
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Puts `Connection: upgrade` and `Upgrade: proto` back after the hop-by-hop headers went.
pub(crate) fn restore(headers: &mut HeaderMap, proto: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, proto);
}

/// What a tunnel holds and counts while it is open.
pub(crate) struct Tunnel {
    /// Idle timeout: the backend's `timeout tunnel`.
    pub(crate) idle: Duration,
    /// The request that opened it. Its guards keep the client connection "in a request" (its
    /// keep-alive timeout off) and hold the server's in-flight unit (its `maxconn` and
    /// `leastconn` count the tunnel); its line is written when the tunnel closes.
    pub(crate) record: Box<Record>,
    /// Over HTTP/2 to the server, the tunnel's stream, counted on its shared connection.
    pub(crate) stream: Option<OpenStream>,
}

impl Tunnel {
    /// Waits for both sides to be handed over, then relays until the tunnel ends.
    pub(crate) fn spawn(self, client: OnUpgrade, server: OnUpgrade) {
        // The client connection's session: hyper's serving of it ends with the hand-over, the
        // connection does not. Counted again now, before hyper's count of it can end, so that
        // the frontend's count never drops below its open connections (nor lets a client in
        // past its `maxconn`). (Its place under `[global] maxconn` goes on through the
        // socket's state, which the upgraded connection holds.)
        let session = self
            .record
            .frontend_state()
            .map(|f| Sessions::hold_owned(Arc::clone(f)));
        tokio::spawn(async move {
            let Tunnel {
                idle,
                record,
                stream,
            } = self;
            let (client, server) = match tokio::join!(client, server) {
                (Ok(c), Ok(s)) => (c, s),
                (c, s) => {
                    let error = c.err().or(s.err()).map(|e| e.to_string());
                    let backend = record.backend_name();
                    tracing::debug!(backend, error, "upgrade abandoned");
                    record.finish_tunnel(0, 0, false);
                    return;
                }
            };
            let (relayed, result) = relay(
                TokioIo::new(client),
                TokioIo::new(server),
                Vec::new(),
                (idle, idle),
                // The client's side may be TLS: its close_notify is sent at the shutdown.
                Ending::ShutdownBoth,
            )
            .await;
            tracing::debug!(
                backend = record.backend_name(),
                bytes_in = relayed.up,
                bytes_out = relayed.down,
                error = result.as_ref().err().map(|e| e.to_string()),
                "tunnel closed"
            );
            drop(session);
            record.finish_tunnel(relayed.up, relayed.down, result.is_ok());
            drop(stream);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, version: Version, pairs: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::new(());
        *req.method_mut() = method;
        *req.version_mut() = version;
        for (k, v) in pairs {
            req.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        req
    }

    fn asked(req: &Request<()>) -> Option<Asked> {
        match requested(req, &Scan::of(req.headers())) {
            Switch::Asked(a) => Some(a),
            Switch::No => None,
            Switch::Refused => panic!("refused"),
        }
    }

    fn is_refused(req: &Request<()>) -> bool {
        matches!(requested(req, &Scan::of(req.headers())), Switch::Refused)
    }

    fn h2_connect(protocol: Option<&'static str>) -> Request<()> {
        let mut req = request(Method::CONNECT, Version::HTTP_2, &[]);
        if let Some(p) = protocol {
            req.extensions_mut().insert(Protocol::from_static(p));
        }
        req
    }

    const WS: &[(&str, &str)] = &[
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn only_http11_upgrades_other_than_h2c() {
        match asked(&request(Method::GET, Version::HTTP_11, WS)) {
            Some(Asked::Http1 { proto, key }) => {
                assert_eq!(proto, "websocket");
                assert_eq!(key.unwrap(), "dGhlIHNhbXBsZSBub25jZQ==");
            }
            other => panic!("{other:?}"),
        }
        assert!(asked(&request(Method::GET, Version::HTTP_10, WS)).is_none());
        let h2c = [("connection", "upgrade"), ("upgrade", "h2c")];
        assert!(asked(&request(Method::GET, Version::HTTP_11, &h2c)).is_none());
        let no_token = [("connection", "keep-alive"), ("upgrade", "websocket")];
        assert!(asked(&request(Method::GET, Version::HTTP_11, &no_token)).is_none());
        let no_proto = [("connection", "upgrade")];
        assert!(asked(&request(Method::GET, Version::HTTP_11, &no_proto)).is_none());
        // A WebSocket upgrade needs its key; another protocol has none to give.
        let keyless = [("connection", "upgrade"), ("upgrade", "websocket")];
        assert!(is_refused(&request(
            Method::GET,
            Version::HTTP_11,
            &keyless
        )));
        let other = [("connection", "upgrade"), ("upgrade", "foo")];
        assert!(asked(&request(Method::GET, Version::HTTP_11, &other)).is_some());
    }

    #[test]
    fn connect_is_refused_but_for_websocket_over_http2() {
        assert!(is_refused(&request(Method::CONNECT, Version::HTTP_11, &[])));
        assert!(is_refused(&h2_connect(None)));
        assert!(is_refused(&h2_connect(Some("connect-udp"))));
        let mut with_length = h2_connect(Some("websocket"));
        with_length
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert!(is_refused(&with_length));
        match asked(&h2_connect(Some("websocket"))) {
            Some(Asked::Http2WebSocket { key }) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(key.as_bytes())
                    .unwrap();
                assert_eq!(raw.len(), 16);
            }
            other => panic!("{other:?}"),
        }
        // A fresh key each time.
        let key = |r: &Request<()>| match asked(r) {
            Some(Asked::Http2WebSocket { key }) => key,
            other => panic!("{other:?}"),
        };
        let req = h2_connect(Some("websocket"));
        assert_ne!(key(&req), key(&req));
    }

    #[test]
    fn accept_answers_the_key_as_rfc_6455_shows() {
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(accept(&key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    fn upgrade(asked: Asked) -> Upgrade {
        Upgrade {
            asked,
            client: hyper::upgrade::on(Request::new(())),
        }
    }

    fn http1_ws() -> Upgrade {
        upgrade(Asked::Http1 {
            proto: HeaderValue::from_static("websocket"),
            key: Some(HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==")),
        })
    }

    fn http2_ws() -> Upgrade {
        upgrade(Asked::Http2WebSocket {
            key: HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAA=="),
        })
    }

    /// The request an attempt sends for `up` to an HTTP/1.1 (`to_h2` false) or HTTP/2 server,
    /// from a GET whose hop-by-hop headers are gone.
    fn asked_of(up: &Upgrade, to_h2: bool, pairs: &[(&str, &str)]) -> Request<()> {
        let mut req = request(Method::GET, Version::HTTP_11, pairs);
        up.ask(&mut req, to_h2);
        req
    }

    fn protocol(req: &Request<()>) -> Option<&str> {
        req.extensions().get::<Protocol>().map(Protocol::as_str)
    }

    #[test]
    fn each_server_protocol_is_asked_in_its_own_terms() {
        let key = [("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")];
        // HTTP/1.1 to HTTP/1.1: the client's Upgrade back.
        let req = asked_of(&http1_ws(), false, &key);
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.headers()["upgrade"], "websocket");
        assert_eq!(req.headers()["connection"], "upgrade");
        assert_eq!(req.headers()["sec-websocket-key"], key[0].1);
        assert_eq!(protocol(&req), None);
        // HTTP/1.1 to HTTP/2: an extended CONNECT, without the key.
        let req = asked_of(&http1_ws(), true, &key);
        assert_eq!(req.method(), Method::CONNECT);
        assert_eq!(protocol(&req), Some("websocket"));
        assert!(req.headers().get("sec-websocket-key").is_none());
        assert!(req.headers().get("upgrade").is_none());
        // HTTP/2 to HTTP/1.1: a GET with Upgrade and wasp's key.
        let req = asked_of(&http2_ws(), false, &[]);
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.headers()["upgrade"], "websocket");
        assert_eq!(req.headers()["connection"], "upgrade");
        assert_eq!(
            req.headers()["sec-websocket-key"],
            "AAAAAAAAAAAAAAAAAAAAAA=="
        );
        // HTTP/2 to HTTP/2: the extended CONNECT as it came.
        let req = asked_of(&http2_ws(), true, &[]);
        assert_eq!(req.method(), Method::CONNECT);
        assert_eq!(protocol(&req), Some("websocket"));
        assert!(req.headers().get("upgrade").is_none());
        // Another protocol cannot go to an HTTP/2 server: a plain request.
        let other = upgrade(Asked::Http1 {
            proto: HeaderValue::from_static("foo"),
            key: None,
        });
        let req = asked_of(&other, true, &[]);
        assert_eq!(req.method(), Method::GET);
        assert_eq!(protocol(&req), None);
        assert!(req.headers().get("upgrade").is_none());
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        request(Method::GET, Version::HTTP_11, pairs)
            .headers()
            .clone()
    }

    fn answered(
        up: &Upgrade,
        status: StatusCode,
        server: &[(&str, &str)],
        from_h2: bool,
    ) -> http::Response<()> {
        let mut resp = http::Response::new(());
        *resp.status_mut() = status;
        *resp.headers_mut() = headers(server);
        resp.headers_mut().remove("upgrade");
        resp.headers_mut().remove("connection");
        up.answer(headers(server).get("upgrade").cloned(), from_h2, &mut resp);
        resp
    }

    #[test]
    fn an_http2_client_gets_a_200_for_a_101_with_the_right_accept() {
        let up = http2_ws();
        let right = accept(&HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAA=="));
        let right = right.to_str().unwrap();
        let good = [("upgrade", "websocket"), ("sec-websocket-accept", right)];
        assert!(up.accepted(StatusCode::SWITCHING_PROTOCOLS, false));
        assert_eq!(up.check(&headers(&good), false), Ok(()));
        let resp = answered(&up, StatusCode::SWITCHING_PROTOCOLS, &good, false);
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers().get("sec-websocket-accept").is_none());
        assert!(resp.headers().get("upgrade").is_none());

        let wrong = [
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ];
        assert!(up.check(&headers(&wrong), false).is_err());
        let missing = [("upgrade", "websocket")];
        assert!(up.check(&headers(&missing), false).is_err());
        let other = [("upgrade", "foo"), ("sec-websocket-accept", right)];
        assert!(up.check(&headers(&other), false).is_err());
        // A 200 from an HTTP/1.1 server did not switch, and would say it had.
        assert!(!up.accepted(StatusCode::OK, false));
        assert!(up.misleads(StatusCode::OK, false));
        assert!(!up.misleads(StatusCode::NOT_FOUND, false));
        // From an HTTP/2 server, its 2xx is the acceptance.
        assert!(up.accepted(StatusCode::OK, true));
        assert!(!up.misleads(StatusCode::OK, true));
        let resp = answered(&up, StatusCode::OK, &[], true);
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[test]
    fn an_http1_client_gets_a_101_for_an_http2_servers_2xx() {
        let up = http1_ws();
        assert!(up.accepted(StatusCode::OK, true));
        assert!(!up.accepted(StatusCode::SWITCHING_PROTOCOLS, true));
        assert!(!up.misleads(StatusCode::OK, true));
        assert_eq!(up.check(&HeaderMap::new(), true), Ok(()));
        let resp = answered(&up, StatusCode::OK, &[("content-length", "0")], true);
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(resp.headers()["upgrade"], "websocket");
        assert_eq!(resp.headers()["connection"], "upgrade");
        assert_eq!(
            resp.headers()["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(resp.headers().get("content-length").is_none());
        // From an HTTP/1.1 server, the 101 as it came, with the protocol it names, and with
        // an accept value (which wasp leaves to the client to check).
        assert!(up.accepted(StatusCode::SWITCHING_PROTOCOLS, false));
        assert!(up.check(&HeaderMap::new(), false).is_err());
        assert!(
            up.check(&headers(&[("upgrade", "websocket")]), false)
                .is_err()
        );
        let server = [("upgrade", "websocket"), ("sec-websocket-accept", "x")];
        assert_eq!(up.check(&headers(&server), false), Ok(()));
        let resp = answered(
            &up,
            StatusCode::SWITCHING_PROTOCOLS,
            &[("upgrade", "websocket"), ("sec-websocket-accept", "x")],
            false,
        );
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(resp.headers()["upgrade"], "websocket");
        assert_eq!(resp.headers()["sec-websocket-accept"], "x");
    }
}
