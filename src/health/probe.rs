//! Probes: the I/O half of a health check. A probe reaches a server once and reports what it
//! saw as an [`Observation`]; it never decides health (see [`crate::health::result`]).
//!
//! Each probe uses a fresh TCP connection, never the proxy's upstream pools, and the whole
//! probe (connect included) is bounded by the check timeout. An HTTP check to a TLS server
//! speaks TLS too, verified as the proxy's own connections are (a failed handshake fails the
//! check); a TCP check stays a plain connect.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::config::{HttpCheck, SERVER_HEAD_MAX, UpstreamTls};
use crate::health::result::{BODY_PREFIX_LIMIT, CheckResponse, Observation, Outcome, ProbeError};
use crate::tls::client::{client_config, server_name};

/// Reaches a server once. Implemented by the TCP and HTTP probes, and by scripted probes in
/// tests, so that the check state machine runs without sockets.
pub trait Probe: Send + Sync + 'static {
    fn probe(&self) -> impl Future<Output = Observation> + Send;
}

/// The probe a server's check parameters ask for.
#[derive(Debug, Clone)]
pub enum CheckProbe {
    Tcp(TcpProbe),
    Http(HttpProbe),
}

impl CheckProbe {
    /// A TCP connect check, or an HTTP check when `http` is set (over TLS with `tls`).
    pub fn build(
        addr: SocketAddr,
        timeout: Duration,
        http: Option<&HttpCheck>,
        tls: Option<&UpstreamTls>,
    ) -> Self {
        match http {
            None => CheckProbe::Tcp(TcpProbe { addr, timeout }),
            Some(h) => {
                let mut probe = HttpProbe::new(addr, timeout, h);
                if let Some(settings) = tls {
                    probe = probe.with_tls(settings);
                }
                CheckProbe::Http(probe)
            }
        }
    }
}

impl Probe for CheckProbe {
    async fn probe(&self) -> Observation {
        match self {
            CheckProbe::Tcp(p) => p.probe().await,
            CheckProbe::Http(p) => p.probe().await,
        }
    }
}

/// Passes when a TCP connect to the server completes within the timeout.
#[derive(Debug, Clone)]
pub struct TcpProbe {
    pub addr: SocketAddr,
    pub timeout: Duration,
}

impl Probe for TcpProbe {
    async fn probe(&self) -> Observation {
        let start = Instant::now();
        let outcome = match connect(self.addr, start + self.timeout, self.timeout).await {
            Ok(_tcp) => Outcome::Connected,
            Err(e) => Outcome::Failed(e),
        };
        Observation {
            latency: start.elapsed(),
            outcome,
        }
    }
}

/// Sends `METHOD PATH HTTP/1.1` (with `Host`, `Connection: close`, `User-Agent: wasp-check`)
/// and reads the response head and at most [`BODY_PREFIX_LIMIT`] bytes of its body.
#[derive(Debug, Clone)]
pub struct HttpProbe {
    addr: SocketAddr,
    timeout: Duration,
    method: Method,
    uri: Uri,
    host: HeaderValue,
    tls: Option<Box<ProbeTls>>,
}

/// TLS for an HTTP probe: the connector, or why none could be made (every probe then fails
/// with that reason).
#[derive(Clone)]
struct ProbeTls {
    connector: Result<TlsConnector, String>,
    name: ServerName<'static>,
}

impl std::fmt::Debug for ProbeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeTls")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl HttpProbe {
    pub fn new(addr: SocketAddr, timeout: Duration, check: &HttpCheck) -> Self {
        // Both were validated with the config; the fallbacks only keep this total.
        let uri = Uri::try_from(check.path.as_str()).unwrap_or_else(|_| Uri::from_static("/"));
        let host = check
            .host
            .as_deref()
            .and_then(|h| HeaderValue::from_str(h).ok())
            .or_else(|| HeaderValue::from_str(&addr.to_string()).ok())
            .unwrap_or_else(|| HeaderValue::from_static("localhost"));
        Self {
            addr,
            timeout,
            method: check.method.clone(),
            uri,
            host,
            tls: None,
        }
    }

    /// The same probe over TLS with `settings`.
    pub fn with_tls(mut self, settings: &UpstreamTls) -> Self {
        self.tls = Some(Box::new(ProbeTls {
            connector: client_config(settings, false)
                .map(TlsConnector::from)
                .map_err(|e| e.to_string()),
            name: server_name(settings, self.addr.ip()),
        }));
        self
    }

    /// Connects, with the TLS handshake when the server wants one, and runs the exchange.
    async fn run(&self, deadline: Instant) -> Result<CheckResponse, ProbeError> {
        let tcp = connect(self.addr, deadline, self.timeout).await?;
        let Some(tls) = &self.tls else {
            return exchange(tcp, self.request(), deadline).await;
        };
        let connector = tls
            .connector
            .as_ref()
            .map_err(|e| ProbeError::Connect(format!("tls: {e}")))?;
        let stream = connector
            .connect(tls.name.clone(), tcp)
            .await
            .map_err(|e| ProbeError::Connect(format!("tls handshake: {e}")))?;
        exchange(stream, self.request(), deadline).await
    }

    fn request(&self) -> Request<Empty<Bytes>> {
        let mut req = Request::new(Empty::new());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        let headers = req.headers_mut();
        headers.insert(header::HOST, self.host.clone());
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        headers.insert(header::USER_AGENT, HeaderValue::from_static("wasp-check"));
        req
    }
}

impl Probe for HttpProbe {
    async fn probe(&self) -> Observation {
        let start = Instant::now();
        let deadline = start + self.timeout;
        let outcome = match tokio::time::timeout_at(deadline, self.run(deadline)).await {
            Ok(Ok(response)) => Outcome::Response(response),
            Ok(Err(e)) => Outcome::Failed(e),
            Err(_) => Outcome::Failed(ProbeError::Timeout(self.timeout)),
        };
        Observation {
            latency: start.elapsed(),
            outcome,
        }
    }
}

async fn connect(
    addr: SocketAddr,
    deadline: Instant,
    timeout: Duration,
) -> Result<TcpStream, ProbeError> {
    match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            Ok(tcp)
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(ProbeError::Refused),
        Ok(Err(e)) => Err(ProbeError::Connect(e.to_string())),
        Err(_) => Err(ProbeError::ConnectTimeout(timeout)),
    }
}

/// One request on a fresh HTTP/1.1 connection. The connection is driven in this task (no
/// spawn), so dropping the future tears everything down.
async fn exchange<IO>(
    io: IO,
    req: Request<Empty<Bytes>>,
    deadline: Instant,
) -> Result<CheckResponse, ProbeError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The head limit of live traffic: a server whose answers would all be 502s for their
    // size does not pass its check.
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(SERVER_HEAD_MAX)
        .max_header_size(SERVER_HEAD_MAX)
        .handshake(TokioIo::new(io))
        .await
        .map_err(invalid)?;
    let work = async move {
        let resp = sender.send_request(req).await.map_err(invalid)?;
        Ok(read_prefix(resp, deadline).await)
    };
    let mut conn = std::pin::pin!(conn);
    let mut work = std::pin::pin!(work);
    tokio::select! {
        biased;
        done = &mut work => done,
        // The connection ended first (an error, or a close): the request future now completes
        // too, with the response or with the error.
        _ = &mut conn => work.await,
    }
}

/// The response head and the first [`BODY_PREFIX_LIMIT`] body bytes. A body that breaks off or
/// does not end by `deadline` is kept as far as it came: the head has already been judged on.
async fn read_prefix(resp: http::Response<Incoming>, deadline: Instant) -> CheckResponse {
    let (parts, mut body) = resp.into_parts();
    let mut prefix = BytesMut::new();
    let body_complete = loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(None) => break true,
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    let room = BODY_PREFIX_LIMIT - prefix.len();
                    if data.len() > room {
                        prefix.extend_from_slice(&data[..room]);
                        break false;
                    }
                    prefix.extend_from_slice(&data);
                }
            }
            Ok(Some(Err(_))) | Err(_) => break false,
        }
    };
    CheckResponse {
        status: parts.status,
        headers: parts.headers,
        body: prefix.freeze(),
        body_complete,
    }
}

fn invalid(e: hyper::Error) -> ProbeError {
    let what = if e.is_incomplete_message() {
        "connection closed before the response".to_owned()
    } else if e.is_parse() {
        format!("not an HTTP response ({e})")
    } else {
        e.to_string()
    };
    ProbeError::InvalidResponse(what)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn http_check(host: Option<&str>) -> HttpCheck {
        HttpCheck {
            method: Method::GET,
            path: "/health?full=1".into(),
            host: host.map(str::to_owned),
            expect: vec![(200, 399)],
        }
    }

    /// A server that answers every connection with `answer` once it has read a request head,
    /// and reports the head it read.
    async fn answering(answer: &'static [u8]) -> (SocketAddr, tokio::sync::mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.ends_with(b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tx.send(String::from_utf8_lossy(&head).into_owned()).await;
                    let _ = tcp.write_all(answer).await;
                    let _ = tcp.shutdown().await;
                });
            }
        });
        (addr, rx)
    }

    async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    fn second() -> Duration {
        Duration::from_secs(1)
    }

    #[tokio::test]
    async fn tcp_probe_connects_or_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = TcpProbe {
            addr: listener.local_addr().unwrap(),
            timeout: second(),
        };
        assert!(matches!(up.probe().await.outcome, Outcome::Connected));
        let down = TcpProbe {
            addr: closed_port().await,
            timeout: second(),
        };
        assert!(matches!(
            down.probe().await.outcome,
            Outcome::Failed(ProbeError::Refused)
        ));
    }

    #[tokio::test]
    async fn http_probe_sends_the_check_request_and_keeps_status_headers_and_body() {
        let (addr, mut heads) = answering(
            b"HTTP/1.1 503 Service Unavailable\r\nx-why: maint\r\ncontent-length: 4\r\n\r\nbusy",
        )
        .await;
        let probe = HttpProbe::new(addr, second(), &http_check(None));
        let seen = probe.probe().await;
        let Outcome::Response(r) = seen.outcome else {
            panic!("{:?}", seen.outcome)
        };
        assert_eq!(r.status, 503);
        assert_eq!(r.headers["x-why"], "maint");
        assert_eq!((&r.body[..], r.body_complete), (&b"busy"[..], true));
        let head = heads.recv().await.unwrap().to_ascii_lowercase();
        assert!(
            head.starts_with("get /health?full=1 http/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("host: {addr}\r\n")), "{head}");
        assert!(head.contains("connection: close\r\n"), "{head}");
        assert!(head.contains("user-agent: wasp-check\r\n"), "{head}");
    }

    #[tokio::test]
    async fn http_probe_uses_the_configured_host() {
        let (addr, mut heads) = answering(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        let probe = HttpProbe::new(addr, second(), &http_check(Some("app.example")));
        assert!(matches!(probe.probe().await.outcome, Outcome::Response(_)));
        let head = heads.recv().await.unwrap().to_ascii_lowercase();
        assert!(head.contains("host: app.example\r\n"), "{head}");
    }

    #[tokio::test]
    async fn http_probe_keeps_a_bounded_body_prefix() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = tcp.read(&mut buf).await;
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n")
                .await;
            let chunk = vec![b'x'; 64 * 1024];
            // Never-ending from the probe's point of view; it must stop at the prefix.
            while tcp.write_all(&chunk).await.is_ok() {}
        });
        let probe = HttpProbe::new(addr, second(), &http_check(None));
        let Outcome::Response(r) = probe.probe().await.outcome else {
            panic!("expected a response")
        };
        assert_eq!((r.body.len(), r.body_complete), (BODY_PREFIX_LIMIT, false));
    }

    #[tokio::test]
    async fn garbage_and_early_close_are_invalid_responses() {
        let (garbage, _h1) = answering(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
        let (closer, _h2) = answering(b"").await;
        for addr in [garbage, closer] {
            let probe = HttpProbe::new(addr, second(), &http_check(None));
            let outcome = probe.probe().await.outcome;
            assert!(
                matches!(outcome, Outcome::Failed(ProbeError::InvalidResponse(_))),
                "{addr}: {outcome:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_head_over_the_live_limit_is_an_invalid_response() {
        let head = |filler: usize| -> &'static [u8] {
            let text = format!(
                "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n",
                "a".repeat(filler)
            );
            Box::leak(text.into_bytes().into_boxed_slice())
        };
        let (big, _h1) = answering(head(70 * 1024)).await;
        let outcome = HttpProbe::new(big, second(), &http_check(None))
            .probe()
            .await
            .outcome;
        assert!(
            matches!(outcome, Outcome::Failed(ProbeError::InvalidResponse(_))),
            "{outcome:?}"
        );
        let (large, _h2) = answering(head(60 * 1024)).await;
        let outcome = HttpProbe::new(large, second(), &http_check(None))
            .probe()
            .await
            .outcome;
        assert!(matches!(outcome, Outcome::Response(_)), "{outcome:?}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_a_check_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let timeout = Duration::from_millis(150);
        let probe = HttpProbe::new(addr, timeout, &http_check(None));
        let seen = probe.probe().await;
        assert!(
            matches!(seen.outcome, Outcome::Failed(ProbeError::Timeout(t)) if t == timeout),
            "{:?}",
            seen.outcome
        );
        assert!(seen.latency >= timeout && seen.latency < timeout * 4);
        drop(listener);
    }

    #[tokio::test]
    async fn http_probe_against_a_closed_port_is_refused() {
        let probe = HttpProbe::new(closed_port().await, second(), &http_check(None));
        assert!(matches!(
            probe.probe().await.outcome,
            Outcome::Failed(ProbeError::Refused)
        ));
    }
}
