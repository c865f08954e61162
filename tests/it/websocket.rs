//! WebSocket (HTTP/1.1 Upgrade) through the proxy: the upgrade request is routed like any
//! other, the 101 comes back, then bytes flow both ways until a side closes or the tunnel
//! stays idle for `timeout tunnel`. A server that declines keeps the connection HTTP.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Proxy, raw_status};

const LIMIT: Duration = Duration::from_secs(10);

/// A server that accepts `Upgrade: websocket` on any path but `/decline` and then echoes the
/// upgraded bytes, prefixed once by the headers it saw that matter here.
async fn ws_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|mut req: Request<Incoming>| async move {
                    let wants = req.headers().get(header::UPGRADE).cloned();
                    if req.uri().path() == "/decline" || wants.is_none() {
                        return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                            format!("plain {}", req.uri().path()),
                        ))));
                    }
                    let seen = format!(
                        "upgrade={} xff={}\n",
                        wants.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
                        req.headers()
                            .get("x-forwarded-for")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                    );
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let Ok(upgraded) = on.await else { return };
                        let mut io = TokioIo::new(upgraded);
                        let _ = io.write_all(seen.as_bytes()).await;
                        let (mut r, mut w) = tokio::io::split(io);
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                    let mut resp = Response::new(Full::new(Bytes::new()));
                    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    resp.headers_mut()
                        .insert(header::UPGRADE, "websocket".parse().unwrap());
                    resp.headers_mut()
                        .insert(header::CONNECTION, "upgrade".parse().unwrap());
                    Ok(resp)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

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

async fn read_exact_in_time(tcp: &mut TcpStream, n: usize) -> String {
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
    let seen = "upgrade=websocket xff=127.0.0.1\n";
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
    let proxy = Proxy::start(&format!(
        "[global]\nworkers = 1\nmaxconn = 2\n{}",
        config(ws_echo().await, "")
    ))
    .await;
    let seen = "upgrade=websocket xff=127.0.0.1\n";
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
    let seen = "upgrade=websocket xff=127.0.0.1\n";
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
