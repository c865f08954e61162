//! WebSocket through the proxy: the upgrade request is routed like any other, the server's
//! acceptance comes back, then bytes flow both ways until a side closes or the tunnel stays
//! idle for `timeout tunnel`. A server that declines keeps the connection HTTP. Over HTTP/2
//! (RFC 8441's extended CONNECT) from clients and to servers, translated to and from HTTP/1.1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper::ext::Protocol;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Binary, Proxy, client, config_file, field, get, raw_status};

const LIMIT: Duration = Duration::from_secs(10);

/// A server that accepts `Upgrade: websocket` (HTTP/1.1) and extended CONNECTs for
/// `websocket` (HTTP/2, RFC 8441), and then echoes the upgraded
/// bytes, prefixed once by what it saw that matters here. Over HTTP/1.1 its 101 answers the
/// client's key as RFC 6455 says, but on paths ending in `/wrong-accept` (a wrong value) and
/// `/no-accept` (none); it declines paths ending in `/decline`.
async fn ws_echo() -> SocketAddr {
    ws_echo_with(None).await.0
}

/// [`ws_echo`], allowing `max_streams` concurrent streams per HTTP/2 connection (hyper's
/// default without), and counting the connections it accepts.
async fn ws_echo_with(max_streams: Option<u32>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = service_fn(|mut req: Request<Incoming>| async move {
                    let protocol = req
                        .extensions()
                        .get::<Protocol>()
                        .map(|p| p.as_str().to_owned());
                    let wants = req
                        .headers()
                        .get(header::UPGRADE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                        .or(protocol);
                    if req.uri().path().ends_with("/decline") || wants.is_none() {
                        return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                            format!("plain {}", req.uri().path()),
                        ))));
                    }
                    let key = req.headers().get("sec-websocket-key").cloned();
                    let seen = format!(
                        "{} upgrade={} key={} xff={}\n",
                        req.method(),
                        wants.as_deref().unwrap_or(""),
                        if key.is_some() { "yes" } else { "no" },
                        req.headers()
                            .get("x-forwarded-for")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                    );
                    let h2 = req.version() == http::Version::HTTP_2;
                    let wrong = req.uri().path().ends_with("/wrong-accept");
                    let no_accept = req.uri().path().ends_with("/no-accept");
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let Ok(upgraded) = on.await else { return };
                        let mut io = TokioIo::new(upgraded);
                        let _ = io.write_all(seen.as_bytes()).await;
                        let (mut r, mut w) = tokio::io::split(io);
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                    let mut resp = Response::new(Full::new(Bytes::new()));
                    if h2 {
                        return Ok(resp);
                    }
                    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    let headers = resp.headers_mut();
                    headers.insert(header::UPGRADE, "websocket".parse().unwrap());
                    headers.insert(header::CONNECTION, "upgrade".parse().unwrap());
                    if let Some(key) = key.filter(|_| !no_accept) {
                        let answer = if wrong {
                            "AAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned()
                        } else {
                            accept_of(key.as_bytes())
                        };
                        headers.insert("sec-websocket-accept", answer.parse().unwrap());
                    }
                    Ok(resp)
                });
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http2()
                    .enable_connect_protocol()
                    .max_concurrent_streams(max_streams);
                let _ = builder
                    .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// RFC 6455 4.2.2: base64 of the SHA-1 of the key and the protocol's GUID.
fn accept_of(key: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

/// What `ws_echo` says first on an HTTP/1.1 client's tunnel to it over HTTP/1.1.
const SEEN_H1: &str = "GET upgrade=websocket key=yes xff=127.0.0.1\n";

fn config(server: SocketAddr, backend_extra: &str) -> String {
    format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        acl = {{ is_chat = "path_beg /chat" }}
        use_backend = [{{ backend = "chat", if = "is_chat" }}]
        [backend.chat]
        servers = [{{ name = "ws", addr = "{server}" }}]
        {backend_extra}
        "#
    )
}

/// Sends an upgrade request for `path` and reads the response head.
async fn upgrade(addr: SocketAddr, path: &str) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: chat.example\r\nConnection: keep-alive, Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    (tcp, head)
}

async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(LIMIT, tcp.read(&mut byte))
            .await
            .expect("head in time")
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed inside the head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap().to_ascii_lowercase()
}

async fn read_exact_in_time(tcp: &mut (impl AsyncRead + Unpin), n: usize) -> String {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(LIMIT, tcp.read_exact(&mut buf))
        .await
        .expect("bytes in time")
        .unwrap();
    String::from_utf8(buf).unwrap()
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let proxy = Proxy::start(&config(ws_echo().await, "")).await;
    let (mut tcp, head) = upgrade(proxy.addr(), "/chat").await;
    assert_eq!(raw_status(&head), 101, "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    let seen = SEEN_H1;
    assert_eq!(read_exact_in_time(&mut tcp, seen.len()).await, seen);
    // A masked WebSocket text frame "hello", and back, twice: the tunnel carries any bytes.
    let frame = [
        0x81,
        0x85,
        1,
        2,
        3,
        4,
        b'h' ^ 1,
        b'e' ^ 2,
        b'l' ^ 3,
        b'l' ^ 4,
        b'o' ^ 1,
    ];
    for _ in 0..2 {
        tcp.write_all(&frame).await.unwrap();
        let mut back = [0u8; 11];
        tokio::time::timeout(LIMIT, tcp.read_exact(&mut back))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(back, frame);
    }
    // The client closes its side: the server's echo loop ends and the tunnel closes.
    tcp.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(LIMIT, tcp.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .unwrap();
    assert!(rest.is_empty());
}

/// An open tunnel is an open client connection: it counts under `[global] maxconn`, as in
/// HAProxy (hyper's serving of the connection ends with the upgrade; the connection does not).
#[tokio::test]
async fn open_tunnels_count_under_maxconn() {
    let toml = format!(
        "[global]\nworkers = 1\nmaxconn = 2\n{}",
        config(ws_echo().await, "")
    );
    tunnels_hold_their_places(&toml).await;
}

/// The same under a frontend's own `maxconn`. The tunnel counts itself before hyper's count
/// of its connection ends: counted after, the frontend's count dropped below its open
/// connections for a moment, and a client connecting just after the two upgrades was let in.
#[tokio::test]
async fn open_tunnels_count_under_their_frontends_maxconn() {
    let toml = format!("[global]\nworkers = 1\n{}", config(ws_echo().await, "")).replacen(
        "bind = \"127.0.0.1:0\"",
        "bind = \"127.0.0.1:0\"\nmaxconn = 2",
        1,
    );
    tunnels_hold_their_places(&toml).await;
}

/// Two tunnels open through `toml`'s frontend, whose limit is two connections: a third client
/// waits until one closes.
async fn tunnels_hold_their_places(toml: &str) {
    let proxy = Proxy::start(toml).await;
    let seen = SEEN_H1;
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let (mut tcp, head) = upgrade(proxy.addr(), "/chat").await;
        assert_eq!(raw_status(&head), 101, "{head}");
        assert_eq!(read_exact_in_time(&mut tcp, seen.len()).await, seen);
        tunnels.push(tcp);
    }
    // The frontend counts them as its current sessions.
    let snapshot = proxy.runtime.proxy().snapshot();
    let sessions = &snapshot.frontends[0].state.sessions;
    crate::support::wait_until(LIMIT, "two current sessions", || sessions.current() == 2).await;
    // Counted once each, at their most too (a tunnel counts itself while hyper still counts
    // its connection, for a moment).
    assert_eq!(sessions.max(), 2, "the most connections at once");
    // A third client waits in the listen queue while both tunnels are open...
    let mut third = TcpStream::connect(proxy.addr()).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 1];
    let waited = tokio::time::timeout(Duration::from_millis(500), third.read(&mut first)).await;
    assert!(waited.is_err(), "served while both tunnels were open");
    // ...and is served once one closes.
    let mut closing = tunnels.pop().unwrap();
    closing.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(LIMIT, third.read_to_end(&mut answer))
        .await
        .expect("served once a tunnel closed")
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 "), "{answer:?}");
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_after_timeout_tunnel() {
    let proxy = Proxy::start(&config(
        ws_echo().await,
        // Every other timeout far longer than the test: only `tunnel` can close it.
        r#"timeout = { tunnel = "300ms", server = "1h" }
        [defaults]
        timeout = { client = "1h", http_request = "1h", http_keep_alive = "1h" }"#,
    ))
    .await;
    let (mut tcp, head) = upgrade(proxy.addr(), "/chat").await;
    assert_eq!(raw_status(&head), 101, "{head}");
    let seen = SEEN_H1;
    assert_eq!(read_exact_in_time(&mut tcp, seen.len()).await, seen);
    tcp.write_all(b"ping").await.unwrap();
    assert_eq!(read_exact_in_time(&mut tcp, 4).await, "ping");
    // Then silence on both sides: the proxy closes the tunnel.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(LIMIT, tcp.read_to_end(&mut rest))
        .await
        .expect("tunnel closed within the test's limit");
    // Closed (EOF, or a reset), with nothing more sent.
    assert!(closed.is_err() || rest.is_empty(), "{closed:?} {rest:?}");
}

#[tokio::test]
async fn a_declined_upgrade_is_a_normal_response_and_the_connection_stays_http() {
    let proxy = Proxy::start(&format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "chat"
        [backend.chat]
        servers = [{{ name = "ws", addr = "{}" }}]
        "#,
        ws_echo().await
    ))
    .await;
    let (mut tcp, head) = upgrade(proxy.addr(), "/decline").await;
    assert_eq!(raw_status(&head), 200, "{head}");
    assert!(!head.contains("upgrade:"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    assert_eq!(read_exact_in_time(&mut tcp, len).await, "plain /decline");
    // The same connection serves the next request as HTTP.
    tcp.write_all(b"GET /again HTTP/1.1\r\nHost: chat.example\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut tcp).await;
    assert_eq!(raw_status(&head), 200, "{head}");
    assert_eq!(read_exact_in_time(&mut tcp, 12).await, "plain /again");
}

type H2Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

/// An HTTP/2 (prior knowledge) connection to `addr`, once the server's settings have arrived
/// (a first request answered): an extended CONNECT needs the permission they carry.
async fn h2_connection(addr: SocketAddr) -> H2Sender {
    h2_over(TcpStream::connect(addr).await.unwrap()).await
}

/// [`h2_connection`] over `io` (a TLS stream that chose `h2`).
async fn h2_over(io: impl AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static) -> H2Sender {
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    let first = Request::get("http://chat.example/chat/decline")
        .body(Empty::new())
        .unwrap();
    let resp = tokio::time::timeout(LIMIT, sender.send_request(first))
        .await
        .expect("first answer in time")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    sender
}

/// Sends an extended CONNECT for `protocol` to `path`: its status, and the tunnel when it is a
/// 2xx.
async fn h2_connect(
    sender: &mut H2Sender,
    path: &str,
    protocol: &'static str,
) -> (StatusCode, Option<TokioIo<hyper::upgrade::Upgraded>>) {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://chat.example{path}"))
        .header("sec-websocket-version", "13")
        .body(Empty::new())
        .unwrap();
    req.extensions_mut().insert(Protocol::from_static(protocol));
    let mut resp = tokio::time::timeout(LIMIT, sender.send_request(req))
        .await
        .expect("answer in time")
        .unwrap();
    let status = resp.status();
    if !status.is_success() {
        return (status, None);
    }
    let upgraded = tokio::time::timeout(LIMIT, hyper::upgrade::on(&mut resp))
        .await
        .expect("tunnel in time")
        .unwrap();
    (status, Some(TokioIo::new(upgraded)))
}

/// A WebSocket over HTTP/2 to `/chat`: answered 200, and the tunnel once the server's first
/// line, `seen`, came through it.
async fn h2_tunnel(sender: &mut H2Sender, seen: &str) -> TokioIo<hyper::upgrade::Upgraded> {
    let (status, tunnel) = h2_connect(sender, "/chat", "websocket").await;
    assert_eq!(status, StatusCode::OK);
    let mut tunnel = tunnel.unwrap();
    assert_eq!(read_exact_in_time(&mut tunnel, seen.len()).await, seen);
    tunnel
}

/// Sends `hello` through `tunnel` and reads it back, then closes its sending side and sees the
/// tunnel close.
async fn echo_then_close(tunnel: &mut (impl AsyncRead + tokio::io::AsyncWrite + Unpin)) {
    tunnel.write_all(b"hello").await.unwrap();
    assert_eq!(read_exact_in_time(tunnel, 5).await, "hello");
    tunnel.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(LIMIT, tunnel.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .unwrap();
    assert!(rest.is_empty(), "{rest:?}");
}

/// RFC 8441 from the client: the extended CONNECT is routed as a GET asking for WebSocket
/// (by its path, as HAProxy routes it), goes to the HTTP/1.1 server as an upgrade with a key
/// of wasp's, and the server's 101 becomes the client's 200.
#[tokio::test]
async fn websocket_over_http2_to_an_http1_server() {
    let proxy = Proxy::start(&config(ws_echo().await, "")).await;
    let mut h2 = h2_connection(proxy.addr()).await;
    let mut tunnel = h2_tunnel(&mut h2, SEEN_H1).await;
    // A second tunnel on the same connection, while the first is open.
    let mut other = h2_tunnel(&mut h2, SEEN_H1).await;
    echo_then_close(&mut tunnel).await;
    echo_then_close(&mut other).await;
}

/// An HTTP/1.1 server's answer that is not a proper switch must not tell an HTTP/2 client its
/// tunnel is open: a 101 without the accept value of the key sent, and a 200 that switched
/// nothing, are 502s; a 4xx passes as it is. The connection serves on.
#[tokio::test]
async fn an_http2_websocket_is_not_opened_by_a_broken_or_declining_answer() {
    let proxy = Proxy::start(&config(ws_echo().await, "")).await;
    let mut h2 = h2_connection(proxy.addr()).await;
    let (status, _) = h2_connect(&mut h2, "/chat/wrong-accept", "websocket").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let (status, _) = h2_connect(&mut h2, "/chat/decline", "websocket").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    // Not routed anywhere (no rule, no default backend): the 503 as it is.
    let (status, _) = h2_connect(&mut h2, "/elsewhere", "websocket").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let mut tunnel = h2_tunnel(&mut h2, SEEN_H1).await;
    echo_then_close(&mut tunnel).await;
}

/// A CONNECT for another protocol, a plain one, or one with a length is not proxied.
#[tokio::test]
async fn other_connects_over_http2_are_refused() {
    let proxy = Proxy::start(&config(ws_echo().await, "")).await;
    let mut h2 = h2_connection(proxy.addr()).await;
    let (status, _) = h2_connect(&mut h2, "/chat", "connect-udp").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A CONNECT has no content (RFC 9110 9.3.6): one that gives a length, even 0, is refused.
    let mut with_length = Request::builder()
        .method(Method::CONNECT)
        .uri("http://chat.example/chat")
        .header("sec-websocket-version", "13")
        .header("content-length", "0")
        .body(Empty::new())
        .unwrap();
    with_length
        .extensions_mut()
        .insert(Protocol::from_static("websocket"));
    let resp = tokio::time::timeout(LIMIT, h2.send_request(with_length))
        .await
        .expect("answer in time")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let plain = Request::builder()
        .method(Method::CONNECT)
        .uri("chat.example:443")
        .body(Empty::new())
        .unwrap();
    let resp = tokio::time::timeout(LIMIT, h2.send_request(plain))
        .await
        .expect("answer in time")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

/// Toward an HTTP/2 server (`proto = "h2"`) a WebSocket goes as an extended CONNECT: an
/// HTTP/1.1 client's upgrade is translated (its key stays with wasp, which answers it in the
/// 101), an HTTP/2 client's goes as it came.
#[tokio::test]
async fn websocket_to_an_http2_server_from_either_client() {
    let proxy = Proxy::start(&config(ws_echo().await, r#"proto = "h2""#)).await;
    let seen = "CONNECT upgrade=websocket key=no xff=127.0.0.1\n";

    let (mut tcp, head) = upgrade(proxy.addr(), "/chat").await;
    assert_eq!(raw_status(&head), 101, "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    // RFC 6455's own example key and answer (the head is read in lower case).
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    assert_eq!(read_exact_in_time(&mut tcp, seen.len()).await, seen);
    echo_then_close(&mut tcp).await;

    let mut h2 = h2_connection(proxy.addr()).await;
    let mut tunnel = h2_tunnel(&mut h2, seen).await;
    echo_then_close(&mut tunnel).await;
}

/// As HAProxy logs a WebSocket, the upgrade request's access-log line is written when the
/// tunnel closes, with the tunnel's bytes to the client and its whole duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnels_access_log_line_is_written_when_it_closes() {
    let (_dir, path) = config_file(&config(ws_echo().await, ""));
    let wasp = Binary::run(&path);
    let (mut tcp, head) = upgrade(wasp.addr, "/chat").await;
    assert_eq!(raw_status(&head), 101, "{head}");
    assert_eq!(read_exact_in_time(&mut tcp, SEEN_H1.len()).await, SEEN_H1);
    // A request made after the switch is logged first: the tunnel's line waits for its end.
    let (status, _, body) = get(&format!("http://{}/chat/after", wasp.addr)).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "plain /chat/after"));
    let before = wasp.lines_until("path=\"/chat/after\"", LIMIT);
    assert!(
        !before.iter().any(|l| l.contains("path=\"/chat\"")),
        "{before:#?}"
    );
    echo_then_close(&mut tcp).await;
    let line = wasp.wait_for("path=\"/chat\"", LIMIT);
    assert_eq!(field(&line, "status"), "101", "{line}");
    assert_eq!(
        field(&line, "bytes"),
        (SEEN_H1.len() + 5).to_string(),
        "{line}"
    );
    assert_eq!(field(&line, "complete"), "true", "{line}");
}

/// A WebSocket to an HTTP/2 server holds its stream for the tunnel's life: with the server
/// allowing one stream per connection, a request while the tunnel is open goes over another
/// connection instead of waiting behind it.
#[tokio::test]
async fn an_http2_websocket_holds_its_stream_on_the_shared_server_connection() {
    let (server, accepted) = ws_echo_with(Some(1)).await;
    let toml = format!(
        "[global]\nworkers = 1\n{}",
        config(server, "proto = \"h2\"\ntimeout = { server = \"3s\" }")
    );
    let proxy = Proxy::start(&toml).await;
    let (mut tcp, head) = upgrade(proxy.addr(), "/chat").await;
    assert_eq!(raw_status(&head), 101, "{head}");
    let seen = "CONNECT upgrade=websocket key=no xff=127.0.0.1\n";
    assert_eq!(read_exact_in_time(&mut tcp, seen.len()).await, seen);
    let resp = client()
        .get(proxy.url("/chat/room").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "not queued behind the tunnel's stream");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    echo_then_close(&mut tcp).await;
}

/// A graceful stop waits for an HTTP/2 client's open WebSocket as for a request in flight: the
/// tunnel carries bytes while the stop waits, and the stop ends once the tunnel has closed.
#[tokio::test]
async fn a_graceful_stop_waits_for_an_open_http2_websocket() {
    let proxy = Proxy::start(&config(ws_echo().await, "")).await;
    let addr = proxy.addr();
    let mut h2 = h2_connection(addr).await;
    let mut tunnel = h2_tunnel(&mut h2, SEEN_H1).await;
    let mut stop = tokio::spawn(proxy.runtime.shutdown(Duration::from_secs(60)));
    crate::support::wait_until(LIMIT, "the listener closed by the stop", || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    tunnel.write_all(b"still").await.unwrap();
    assert_eq!(read_exact_in_time(&mut tunnel, 5).await, "still");
    let waited = tokio::time::timeout(Duration::from_millis(300), &mut stop).await;
    assert!(waited.is_err(), "the stop ended with the tunnel open");
    echo_then_close(&mut tunnel).await;
    tokio::time::timeout(LIMIT, stop)
        .await
        .expect("the stop ends once the tunnel closed")
        .unwrap();
}

/// The same over TLS, as browsers open it: ALPN `h2`, then an extended CONNECT.
#[tokio::test]
async fn websocket_over_http2_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::tls::TestCa::new(dir.path(), "ca");
    let (cert, key) = ca.leaf(dir.path(), "site", &["chat.example"]);
    let proxy = Proxy::start(&format!(
        r#"
        [frontend.web]
        bind = [{{ addr = "127.0.0.1:0", tls = {} }}]
        acl = {{ is_chat = "path_beg /chat" }}
        use_backend = [{{ backend = "chat", if = "is_chat" }}]
        [backend.chat]
        servers = [{{ name = "ws", addr = "{}" }}]
        "#,
        crate::tls::tls_table(&cert, &key),
        ws_echo().await
    ))
    .await;
    let stream = crate::tls::tls(proxy.addr(), "chat.example", &ca.pem, &[b"h2"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut h2 = h2_over(stream).await;
    let mut tunnel = h2_tunnel(&mut h2, SEEN_H1).await;
    echo_then_close(&mut tunnel).await;
}

/// As in HAProxy, an HTTP/1.1 WebSocket upgrade needs its key (else 400), and a server's 101 to
/// one needs a `Sec-WebSocket-Accept` (else 502).
#[tokio::test]
async fn an_http1_websocket_needs_its_key_and_its_accept() {
    let proxy = Proxy::start(&config(ws_echo().await, "")).await;
    let head = crate::support::raw(
        proxy.addr(),
        b"GET /chat HTTP/1.1\r\nHost: chat.example\r\nConnection: Upgrade\r\n\
          Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n",
        LIMIT,
    )
    .await;
    assert_eq!(raw_status(&head), 400, "{head}");
    let (_tcp, head) = upgrade(proxy.addr(), "/chat/no-accept").await;
    assert_eq!(raw_status(&head), 502, "{head}");
    let (mut tcp, head) = upgrade(proxy.addr(), "/chat").await;
    assert_eq!(raw_status(&head), 101, "{head}");
    assert_eq!(read_exact_in_time(&mut tcp, SEEN_H1.len()).await, SEEN_H1);
}

/// An HTTP/2 server that does not allow extended CONNECT cannot take a WebSocket: wasp does
/// not send it one, the client gets a 502 over either protocol, and its connection serves on.
#[tokio::test]
async fn a_websocket_to_an_http2_server_without_extended_connect_is_a_502() {
    let servers = crate::support::Servers::new();
    let plain_h2 = servers.echo("node1").await;
    let proxy = Proxy::start(&config(plain_h2, r#"proto = "h2""#)).await;
    let (_tcp, head) = upgrade(proxy.addr(), "/chat").await;
    assert_eq!(raw_status(&head), 502, "{head}");
    let mut h2 = h2_connection(proxy.addr()).await;
    let (status, _) = h2_connect(&mut h2, "/chat", "websocket").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let again = Request::get("http://chat.example/chat")
        .body(Empty::new())
        .unwrap();
    let resp = tokio::time::timeout(LIMIT, h2.send_request(again))
        .await
        .expect("answer in time")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Nothing was sent (RFC 8441 3: no `:protocol` to a server that has not allowed it), so
    // the server is not at fault: no error, no retry.
    let snapshot = proxy.runtime.proxy().snapshot();
    let server = snapshot.backends[0].servers[0].state.traffic.totals();
    assert_eq!((server.errors, server.retries), (0, 0));
}
