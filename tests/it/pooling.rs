//! Upstream connection pooling: keep-alive reuse, connections the server closed, responses
//! abandoned half-way; HTTP/2 servers' stream limits, and a server that never sends its
//! SETTINGS.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::support::{Gate, Proxy, Servers, client};

fn proxy_to(addr: std::net::SocketAddr) -> String {
    proxy_over(addr, "http1")
}

fn proxy_over(addr: std::net::SocketAddr, proto: &str) -> String {
    format!(
        r#"
        [global]
        workers = 1

        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"

        [backend.app]
        proto = "{proto}"
        retries = 0
        timeout = {{ connect = "1s", server = "5s" }}
        servers = [ {{ name = "s", addr = "{addr}" }} ]
        "#
    )
}

#[tokio::test]
async fn sequential_requests_reuse_one_server_connection() {
    let servers = Servers::new();
    let (addr, accepted) = servers.counting().await;
    let proxy = Proxy::start(&proxy_to(addr)).await;
    let client = client();
    for i in 0..30 {
        let (method, path, want) = match i % 5 {
            0 => (Method::GET, "/", "ok\n"),
            1 => (Method::HEAD, "/", ""),
            2 => (Method::GET, "/chunked", "one\ntwo\n"),
            3 => (Method::GET, "/empty", ""),
            _ => (Method::POST, "/", "ok\n"),
        };
        let req = Request::builder()
            .method(method.clone())
            .uri(proxy.url(path))
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert!(
            resp.status().is_success(),
            "{method} {path}: {}",
            resp.status()
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, want.as_bytes(), "{method} {path}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "30 sequential requests on one worker should share one server connection"
    );
}

#[tokio::test]
async fn http2_requests_share_one_server_connection() {
    let servers = Servers::new();
    let (addr, accepted) = servers.counting().await;
    let proxy = Proxy::start(&proxy_over(addr, "h2")).await;
    let client = client();
    // Bursts of requests at once, the first before any connection exists: all streams of one
    // HTTP/2 connection, which the first request makes while the others wait for it.
    for _ in 0..3 {
        let requests: Vec<_> = (0..5)
            .map(|_| tokio::spawn(client.get(proxy.url("/").parse().unwrap())))
            .collect();
        for request in requests {
            let resp = request.await.unwrap().unwrap();
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok\n");
        }
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn requests_waiting_for_a_failed_http2_connect_fail_with_it() {
    let servers = Servers::new();
    let closed = servers.closed_port().await;
    let proxy = Proxy::start(&proxy_over(closed, "h2")).await;
    let client = client();
    let requests: Vec<_> = (0..5)
        .map(|_| tokio::spawn(client.get(proxy.url("/").parse().unwrap())))
        .collect();
    for request in requests {
        let resp = request.await.unwrap().unwrap();
        assert_eq!(
            resp.status(),
            503,
            "a connect failure, for every waiting request"
        );
    }
    // Nothing stays behind: the next request tries to connect again (and fails again).
    let resp = client.get(proxy.url("/").parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), 503);
}

/// A server that answers one request per connection with a keep-alive response, then closes
/// the connection (and reports it closed).
async fn one_shot_server() -> (
    std::net::SocketAddr,
    mpsc::UnboundedReceiver<()>,
    Arc<AtomicUsize>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, closed) = mpsc::unbounded_channel();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                    .await;
                drop(tcp);
                let _ = closed_tx.send(());
            });
        }
    });
    (addr, closed, accepted)
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_not_used() {
    let (addr, mut closed, accepted) = one_shot_server().await;
    let proxy = Proxy::start(&proxy_to(addr)).await;
    let client = client();
    for i in 0..6 {
        // Not replayable, and no retries: only the pool can keep this from failing.
        let method = if i % 2 == 0 {
            Method::GET
        } else {
            Method::POST
        };
        let req = Request::builder()
            .method(method.clone())
            .uri(proxy.url("/"))
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "request {i} ({method})");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok\n");
        // The server has closed this connection before the next request is sent.
        tokio::time::timeout(Duration::from_secs(5), closed.recv())
            .await
            .expect("server closes")
            .expect("server runs");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn a_response_abandoned_half_way_does_not_leave_its_connection_in_the_pool() {
    let servers = Servers::new();
    let (addr, accepted) = servers.counting().await;
    let proxy = Proxy::start(&proxy_to(addr)).await;
    // Take the head and the first bytes of a large response, then hang up.
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    tcp.write_all(b"GET /bytes/8388608 HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let mut got = 0;
    while got < 1024 {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "proxy closed early");
        got += n;
    }
    drop(tcp);
    // Later requests get whole, correct answers, never the rest of that body.
    let client = client();
    for _ in 0..5 {
        let resp = client.get(proxy.url("/").parse().unwrap()).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok\n");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the abandoned connection is closed; the later requests share a new one"
    );
}

/// An HTTP/2 server that allows `max_streams` concurrent streams per connection, counts the
/// connections it accepts, reports each request's arrival and holds its answer until the
/// gate lets it go.
async fn limited_h2_server(
    servers: &Servers,
    max_streams: u32,
) -> (
    SocketAddr,
    Arc<AtomicUsize>,
    mpsc::UnboundedReceiver<()>,
    Gate,
) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let (arrived_tx, arrived) = mpsc::unbounded_channel();
    let gate = Gate::closed();
    let (count, permits) = (Arc::clone(&accepted), gate.clone());
    let addr = servers
        .serve_each(move |tcp| {
            count.fetch_add(1, Ordering::SeqCst);
            let (arrived_tx, permits) = (arrived_tx.clone(), permits.clone());
            async move {
                let service = service_fn(move |_req: Request<Incoming>| {
                    let (arrived_tx, permits) = (arrived_tx.clone(), permits.clone());
                    async move {
                        let _ = arrived_tx.send(());
                        permits.pass().await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(max_streams)
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            }
        })
        .await;
    (addr, accepted, arrived, gate)
}

#[tokio::test]
async fn http2_requests_past_the_servers_stream_limit_open_another_connection() {
    let servers = Servers::new();
    let (addr, accepted, mut arrived, gate) = limited_h2_server(&servers, 2).await;
    let proxy = Proxy::start(&proxy_over(addr, "h2")).await;
    let client = client();
    let requests: Vec<_> = (0..5)
        .map(|_| tokio::spawn(client.get(proxy.url("/").parse().unwrap())))
        .collect();
    // All five reach the server while it holds every answer: two streams per connection
    // allowed, so three connections (a request left waiting for a stream would never arrive:
    // `timeout server` would end it first).
    for n in 0..5 {
        tokio::time::timeout(Duration::from_secs(10), arrived.recv())
            .await
            .unwrap_or_else(|_| panic!("request {} never reached the server", n + 1))
            .unwrap();
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    gate.open(5);
    for request in requests {
        let resp = request.await.unwrap().unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok\n");
    }
    // Streams that ended make room again: the next requests need no new connection.
    for _ in 0..2 {
        let pending = tokio::spawn(client.get(proxy.url("/").parse().unwrap()));
        arrived.recv().await.unwrap();
        gate.open(1);
        assert_eq!(pending.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

/// A server that accepts connections and never says a word (no HTTP/2 SETTINGS): its
/// connection is not offered to other requests, and closes with the request that made it, so
/// the next request tries a new connection.
#[tokio::test]
async fn an_http2_server_that_sends_no_settings_is_not_reused() {
    let servers = Servers::new();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    let addr = servers
        .serve_each(move |mut tcp| {
            count.fetch_add(1, Ordering::SeqCst);
            async move {
                let mut buf = vec![0u8; 4096];
                while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            }
        })
        .await;
    let config = proxy_over(addr, "h2").replace(
        r#"timeout = { connect = "1s", server = "5s" }"#,
        r#"timeout = { connect = "200ms", server = "1500ms" }"#,
    );
    let proxy = Proxy::start(&config).await;
    let client = client();
    for n in 1..=2 {
        let resp = client.get(proxy.url("/").parse().unwrap()).await.unwrap();
        assert_eq!(resp.status(), 504);
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            n,
            "a connection of its own"
        );
    }
}
