//! HTTP/2 on both sides: what servers reached over HTTP/2 receive as `:authority` and `host`;
//! the header list limit wasp advertises to HTTP/2 clients; clients that stop granting
//! flow-control window (cut after `timeout client`, their servers' connections released),
//! clients that read slowly but steadily (never cut), and the memory a client that stops
//! reading its socket can hold.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::support::{
    Binary, H2Frame, Proxy, Servers, channel_body, config_file, field, h2_start, raw, raw_status,
    server_name, to_echo,
};

/// An HTTP/2 (prior knowledge) server answering with the `:authority` it received (the URI's
/// authority, `-` without one) and its `host` headers (`-` for none), one per line.
async fn authority_reporter() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let authority = req.uri().authority().map_or("-", |a| a.as_str());
                    let hosts: Vec<&str> = req
                        .headers()
                        .get_all("host")
                        .iter()
                        .map(|v| v.to_str().unwrap_or("?"))
                        .collect();
                    let hosts = if hosts.is_empty() {
                        "-".to_owned()
                    } else {
                        hosts.join(",")
                    };
                    let body = format!("authority={authority}\nhost={hosts}\n");
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

fn to_h2_server(addr: SocketAddr) -> String {
    format!(
        r#"[frontend.web]
bind = "127.0.0.1:0"
default_backend = "h2"
[backend.h2]
proto = "h2"
servers = [{{ name = "s1", addr = "{addr}" }}]
"#
    )
}

#[tokio::test]
async fn h2_servers_get_the_canonical_authority_and_no_host_header() {
    let server = authority_reporter().await;
    let proxy = Proxy::start(&to_h2_server(server)).await;
    // HTTP/1.1 with a Host: the server gets it as `:authority`, not the server's address.
    let answer = raw(
        proxy.addr(),
        b"GET /a HTTP/1.1\r\nhost: App.Test:8080\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert!(
        answer.ends_with("authority=App.Test:8080\nhost=-\n"),
        "{answer}"
    );
    // Absolute form: the URI's authority is the canonical one.
    let answer = raw(
        proxy.addr(),
        b"GET http://abs.test/a HTTP/1.1\r\nhost: other.test\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.ends_with("authority=abs.test\nhost=-\n"), "{answer}");
    // HTTP/1.0 without a Host: the server's address stands in.
    let answer = raw(
        proxy.addr(),
        b"GET /a HTTP/1.0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        answer.ends_with(&format!("authority={server}\nhost=-\n")),
        "{answer}"
    );
}

/// Two wasps in a row over HTTP/2: the inner one checks that `:authority` and `host` agree
/// (and answers 400 when they do not), then gives its HTTP/1.1 server the client's host.
#[tokio::test]
async fn wasp_behind_wasp_over_h2_keeps_the_clients_host() {
    let servers = Servers::new();
    let inner = to_echo(&servers, "").await;
    let outer = Proxy::start(&to_h2_server(inner.addr())).await;
    for _ in 0..2 {
        let answer = raw(
            outer.addr(),
            b"GET /chained HTTP/1.1\r\nhost: site.test\r\nconnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(raw_status(&answer), 200, "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
        assert_eq!(server_name(body), "e");
        assert!(body.contains("\nhost: site.test\n"), "{body}");
    }
    // A request the outer wasp received over HTTP/2 goes the same way.
    let (status, _, body) = crate::support::send(
        &crate::support::h2_client(),
        Request::get(format!("http://{}/h2", outer.addr()))
            .body(crate::support::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains(&format!("\nhost: {}\n", outer.addr())),
        "{body}"
    );
}

/// A GET over HTTP/2 (prior knowledge) carrying `n` headers of about 1 KiB each (as HPACK
/// counts them: name, value and 32 bytes): its status, or the error that ended the stream.
async fn with_big_headers(proxy: SocketAddr, n: usize) -> Result<StatusCode, hyper::Error> {
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(format!("http://{proxy}/big-head"))
        .body(crate::support::empty())
        .unwrap();
    for i in 0..n {
        req.headers_mut().insert(
            http::HeaderName::try_from(format!("x-h{i:03}")).unwrap(),
            http::HeaderValue::from_str(&"v".repeat(995)).unwrap(),
        );
    }
    sender.send_request(req).await.map(|r| r.status())
}

#[tokio::test]
async fn h2_header_list_is_limited_to_16k() {
    let servers = Servers::new();
    let proxy = to_echo(&servers, "").await;
    assert_eq!(
        with_big_headers(proxy.addr(), 10).await.unwrap(),
        StatusCode::OK,
        "a 10 KiB header list passes"
    );
    // Answered 431 by the HTTP/2 layer: the request goes nowhere.
    assert_eq!(
        with_big_headers(proxy.addr(), 20).await.unwrap(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "a 20 KiB header list is refused"
    );
}

/// A server whose every response is an endless body, sent in 16 KiB pieces as fast as the
/// reader takes them; over HTTP/2 when `h2`, else HTTP/1.1. Each time a response body is
/// dropped (the proxy let go of it) a message arrives on the returned channel.
async fn endless(h2: bool) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (released_tx, released) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let released_tx = released_tx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<Incoming>| {
                    let released_tx = released_tx.clone();
                    async move {
                        let (tx, body) = channel_body();
                        tokio::spawn(async move {
                            let piece = Bytes::from(vec![b'e'; 16 * 1024]);
                            while tx.send(Frame::data(piece.clone())).await.is_ok() {}
                            let _ = released_tx.send(());
                        });
                        Ok::<_, Infallible>(Response::new(body))
                    }
                });
                let io = TokioIo::new(tcp);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                }
            });
        }
    });
    (addr, released)
}

/// An HTTP/2 client connection to `addr` with the given stream and connection windows; its
/// connection task's handle ends when the connection does.
async fn h2_connect(
    addr: SocketAddr,
    window: u32,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Full<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(window)
        .initial_connection_window_size(window.max(65_535))
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, task)
}

fn get(addr: SocketAddr, path: &str) -> Request<http_body_util::Full<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .body(crate::support::empty())
        .unwrap()
}

/// Config for a frontend with `timeout client = client` in front of `server` (over HTTP/2
/// when `h2`), on one worker so that every client shares the worker's server connections.
fn stall_config(server: SocketAddr, h2: bool, client: &str) -> String {
    let proto = if h2 { "proto = \"h2\"\n" } else { "" };
    format!(
        r#"[global]
workers = 1
[defaults]
timeout = {{ client = "{client}", server = "60s" }}
[frontend.web]
bind = "127.0.0.1:0"
default_backend = "be"
[backend.be]
{proto}servers = [{{ name = "s1", addr = "{server}" }}]
"#
    )
}

/// Opens `streams` downloads on one HTTP/2 connection and never reads them: once their
/// windows are used up, the client grants no more. Returns the connection's task.
async fn stalled_client(
    proxy: SocketAddr,
    streams: usize,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Full<Bytes>>,
    tokio::task::JoinHandle<()>,
    Vec<Response<Incoming>>,
) {
    let (mut sender, task) = h2_connect(proxy, 65_535).await;
    let mut held = Vec::new();
    for i in 0..streams {
        let resp = sender
            .send_request(get(proxy, &format!("/stall/{i}")))
            .await;
        let resp = resp.expect("response head");
        assert_eq!(resp.status(), StatusCode::OK);
        held.push(resp);
    }
    (sender, task, held)
}

#[tokio::test]
async fn h2_client_granting_no_window_is_cut_after_timeout_client() {
    for h2_server in [false, true] {
        let (server, mut released) = endless(h2_server).await;
        let proxy = Proxy::start(&stall_config(server, h2_server, "1s")).await;
        let (_sender, task, _held) = stalled_client(proxy.addr(), 3).await;
        let limit = Duration::from_secs(20);
        tokio::time::timeout(limit, task)
            .await
            .unwrap_or_else(|_| panic!("h2 server {h2_server}: connection still open"))
            .unwrap();
        for _ in 0..3 {
            tokio::time::timeout(limit, released.recv())
                .await
                .unwrap_or_else(|_| panic!("h2 server {h2_server}: a server response is held"))
                .unwrap();
        }
    }
}

#[tokio::test]
async fn h2_slow_steady_reader_is_not_cut() {
    let servers = Servers::new();
    let server = servers.behaviour().await;
    let proxy = Proxy::start(&stall_config(server, false, "1s")).await;
    // A 16 KiB window and a pause of 25 ms after each piece read: the download takes several
    // times `timeout client` (about 10 s), never waiting that long for one piece (a second:
    // room for a busy machine's scheduling delays).
    let (mut sender, _task) = h2_connect(proxy.addr(), 16 * 1024).await;
    let total = 1024 * 1024;
    let resp = sender
        .send_request(get(proxy.addr(), &format!("/bytes/{total}")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap_or_else(|e| panic!("cut after {got} bytes: {e}"));
        got += frame.data_ref().map_or(0, |d| d.len());
        // Pacing the reader, not waiting for an event.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(got, total);
}

/// Clients that grant no window on streams through a `proto = "h2"` backend do not stall
/// another client's download on the worker's shared server connection: it completes while
/// they are still waiting for `timeout client` (a minute here).
#[tokio::test]
async fn h2_stalled_streams_leave_the_shared_server_connection_usable() {
    let (server, _released) = endless(true).await;
    let proxy = Proxy::start(&stall_config(server, true, "60s")).await;
    let (_sender, stalled, _held) = stalled_client(proxy.addr(), 8).await;
    // Another client reads 8 MiB of the endless body, through the same server connection.
    let (mut sender, _task) = h2_connect(proxy.addr(), 1024 * 1024).await;
    let resp = sender
        .send_request(get(proxy.addr(), "/other"))
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut got = 0;
    while got < 8 * 1024 * 1024 {
        let frame = tokio::time::timeout(Duration::from_secs(20), body.frame())
            .await
            .unwrap_or_else(|_| panic!("stalled after {got} bytes"))
            .expect("more body")
            .unwrap();
        got += frame.data_ref().map_or(0, |d| d.len());
    }
    assert!(
        !stalled.is_finished(),
        "the stalled client is still connected"
    );
}

/// An HTTP/2 client that resets its stream while the request waits for its server: the
/// request gets its access-log line, status -1 (none was sent), as HAProxy logs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reset_before_the_response_is_logged() {
    let servers = Servers::new();
    let (held, mut arrived, _gate) = servers.gated("held").await;
    let (_dir, path) = config_file(&format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "held"
        [backend.held]
        servers = [ {{ name = "held", addr = "{held}" }} ]
        "#
    ));
    let wasp = Binary::run(&path);
    let (mut sender, _conn) = h2_connect(wasp.addr, 65_535).await;
    let waiting = tokio::spawn(async move { sender.send_request(get(wasp.addr, "/reset")).await });
    arrived
        .recv()
        .await
        .expect("the request reached its server");
    // Dropping the response future resets the stream (RST_STREAM CANCEL).
    waiting.abort();
    let line = wasp.wait_for("path=\"/reset\"", Duration::from_secs(20));
    assert_eq!(field(&line, "status"), "-1", "{line}");
    assert_eq!(field(&line, "server"), "held", "{line}");
}

/// The access log shows a stream cut this way as HTTP/1 shows a client that stopped reading:
/// the response's status, the bytes that went out, `complete=false`.
#[test]
fn h2_stalled_response_is_logged_incomplete() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (server, _released) = runtime.block_on(endless(false));
    let (_dir, path) = config_file(&stall_config(server, false, "1s"));
    let wasp = Binary::run(&path);
    let (_sender, task, _held) = runtime.block_on(stalled_client(wasp.addr, 1));
    let line = wasp.wait_for("wasp::access", Duration::from_secs(20));
    assert_eq!(field(&line, "path"), "/stall/0", "{line}");
    assert_eq!(field(&line, "status"), "200", "{line}");
    assert_eq!(field(&line, "complete"), "false", "{line}");
    assert!(field(&line, "bytes").parse::<u64>().unwrap() > 0, "{line}");
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), task).await })
        .expect("the connection is closed")
        .unwrap();
}

/// A socket whose reads stop for good once `stop` is set (writes go on): a client that has
/// stopped reading.
struct StopReading {
    tcp: tokio::net::TcpStream,
    stop: Arc<AtomicBool>,
}

impl tokio::io::AsyncRead for StopReading {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.stop.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for StopReading {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// What one stream of a client that stopped reading may cost wasp, in KiB.
const BUDGET_PER_STREAM_KIB: u64 = 400;

/// Clients that grant every window there is and then stop reading their sockets: what each
/// stream holds in wasp until `timeout client` is bounded by the HTTP/2 send buffer (hyper's
/// default, 400 KiB a stream, made such clients cost hundreds of MB).
#[test]
fn h2_clients_that_stop_reading_hold_bounded_memory() {
    const STREAMS: usize = 100;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (server, _released) = runtime.block_on(endless(false));
    let config = stall_config(server, false, "60s");
    let (_dir, path) = config_file(&config.replace("[global]", "[global]\naccess_log = false"));
    let wasp = Binary::run(&path);
    let idle = wasp.rss_kib();
    let stop = Arc::new(AtomicBool::new(false));
    let _held = runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(wasp.addr).await.unwrap();
        let io = StopReading {
            tcp,
            stop: Arc::clone(&stop),
        };
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(i32::MAX as u32)
            .initial_connection_window_size(i32::MAX as u32)
            .handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut heads = tokio::task::JoinSet::new();
        for i in 0..STREAMS {
            let mut sender = sender.clone();
            let req = get(wasp.addr, &format!("/big/{i}"));
            heads.spawn(async move { sender.send_request(req).await.unwrap() });
        }
        let held = heads.join_all().await;
        stop.store(true, Ordering::Relaxed);
        (sender, held)
    });
    // Poll until the memory stops growing (no change of more than 1 MiB for a second).
    let (mut peak, mut steady_since) = (idle, std::time::Instant::now());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline && steady_since.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(50));
        let now = wasp.rss_kib();
        if now > peak + 1024 {
            steady_since = std::time::Instant::now();
        }
        peak = peak.max(now);
    }
    let per_stream = (peak.saturating_sub(idle)) / STREAMS as u64;
    assert!(
        per_stream < BUDGET_PER_STREAM_KIB,
        "{per_stream} KiB per stream (idle {idle} KiB, peak {peak} KiB)"
    );
}

/// A proxy to an echo server whose connections may be idle for 300 ms.
async fn short_keep_alive(servers: &Servers) -> Proxy {
    to_echo(
        servers,
        r#"timeout = { client = "1h", http_keep_alive = "300ms" }"#,
    )
    .await
}

/// An HTTP/2 connection with no stream in flight is closed `http_keep_alive` after its last
/// stream ended, as an idle HTTP/1.1 one is: otherwise a client could hold a connection (and a
/// place under `maxconn`) for ever. One that never sends a request is closed the same way.
#[tokio::test]
async fn an_idle_h2_connection_is_closed_after_http_keep_alive() {
    let servers = Servers::new();
    let proxy = short_keep_alive(&servers).await;
    let limit = Duration::from_secs(10);
    let (mut sender, closed) = h2_connect(proxy.addr(), 65_535).await;
    let resp = sender.send_request(get(proxy.addr(), "/")).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    tokio::time::timeout(limit, closed)
        .await
        .expect("closed after its last stream")
        .unwrap();

    let (_sender, closed) = h2_connect(proxy.addr(), 65_535).await;
    tokio::time::timeout(limit, closed)
        .await
        .expect("closed without a stream")
        .unwrap();
}

/// What an idle HTTP/2 connection's client reads from its last response on: the frames up to
/// the close, answering PINGs when `answer_pings`.
async fn frames_until_closed(tcp: &mut tokio::net::TcpStream, answer_pings: bool) -> Vec<H2Frame> {
    use tokio::io::AsyncWriteExt;
    let mut frames = Vec::new();
    while let Some(frame) = H2Frame::read(tcp).await {
        if answer_pings && frame.kind == H2Frame::PING && frame.flags & 1 == 0 {
            let ack = H2Frame::encode(H2Frame::PING, 1, 0, &frame.payload);
            tcp.write_all(&ack).await.unwrap();
        }
        frames.push(frame);
    }
    frames
}

/// An idle HTTP/2 connection is shut down with GOAWAY, as HAProxy's are, not just closed: a
/// client that sends a request at that moment learns it was not taken and may retry it. A
/// client that answers the shutdown's PING gets a final GOAWAY naming the last stream served;
/// one that does not is still closed.
#[tokio::test]
async fn an_idle_h2_connection_is_shut_down_with_goaway() {
    use tokio::io::AsyncWriteExt;
    let servers = Servers::new();
    let proxy = short_keep_alive(&servers).await;
    let limit = Duration::from_secs(10);

    // One request on stream 1 (HPACK: GET, http, /, then :authority as a literal).
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let mut start = h2_start();
    start.extend(H2Frame::encode(
        H2Frame::HEADERS,
        0x5,
        1,
        &[0x82, 0x86, 0x84, 0x41, 0x01, b'a'],
    ));
    tcp.write_all(&start).await.unwrap();
    let frames = tokio::time::timeout(limit, frames_until_closed(&mut tcp, true))
        .await
        .expect("closed after its last stream");
    let answered = frames
        .iter()
        .any(|f| f.kind == H2Frame::HEADERS && f.stream == 1);
    assert!(answered, "{frames:?}");
    let goaways: Vec<_> = frames
        .iter()
        .filter(|f| f.kind == H2Frame::GOAWAY)
        .map(H2Frame::goaway)
        .collect();
    assert_eq!(
        goaways.last(),
        Some(&(1, 0)),
        "the final GOAWAY names stream 1, NO_ERROR: {frames:?}"
    );

    // No request, and the shutdown's PING left unanswered.
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    tcp.write_all(&h2_start()).await.unwrap();
    let frames = tokio::time::timeout(limit, frames_until_closed(&mut tcp, false))
        .await
        .expect("closed although it never answered");
    let goaway = frames.iter().find(|f| f.kind == H2Frame::GOAWAY);
    assert_eq!(goaway.map(|f| f.goaway().1), Some(0), "{frames:?}");
}

/// A raw HTTP/2 server on a free loopback port: each connection's preface is read and an empty
/// SETTINGS frame sent, then `serve` has the connection, with its number (from 0).
async fn raw_h2_server<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        let mut accepted = 0;
        while let Ok((mut tcp, _)) = listener.accept().await {
            let (serve, number) = (Arc::clone(&serve), accepted);
            accepted += 1;
            tokio::spawn(async move {
                let mut preface = [0u8; 24];
                if tcp.read_exact(&mut preface).await.is_err() {
                    return;
                }
                let settings = H2Frame::encode(H2Frame::SETTINGS, 0, 0, &[]);
                if tcp.write_all(&settings).await.is_ok() {
                    serve(tcp, number).await;
                }
            });
        }
    });
    addr
}

/// An HTTP/2 server answering every request with a header value holding CR LF, which no HTTP/2
/// library accepts; it counts the requests it got.
async fn malformed_h2_server() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::AsyncWriteExt;
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&requests);
    let addr = raw_h2_server(move |mut tcp, _| {
        let counted = Arc::clone(&counted);
        async move {
            // :status 200, then `x-a: a\r\nb` as a literal without indexing.
            let mut block = vec![0x88, 0x00, 3];
            block.extend_from_slice(b"x-a");
            block.push(4);
            block.extend_from_slice(b"a\r\nb");
            while let Some(frame) = H2Frame::read(&mut tcp).await {
                let answer = match frame.kind {
                    H2Frame::SETTINGS if frame.flags & 1 == 0 => {
                        H2Frame::encode(H2Frame::SETTINGS, 1, 0, &[])
                    }
                    H2Frame::HEADERS => {
                        counted.fetch_add(1, Ordering::SeqCst);
                        H2Frame::encode(H2Frame::HEADERS, 0x5, frame.stream, &block)
                    }
                    _ => continue,
                };
                if tcp.write_all(&answer).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (addr, requests)
}

/// A response the HTTP/2 library refuses is the server's answer, as a malformed HTTP/1 head
/// is: a 502 at once. Replayed (`retries` times), it ended a shared connection each time,
/// with the other requests on it.
#[tokio::test]
async fn an_h2_response_the_library_refuses_is_a_502_not_a_retry() {
    let (server, requests) = malformed_h2_server().await;
    let proxy = Proxy::start(&to_h2_server(server)).await;
    let (status, _, _) = crate::support::get(&proxy.url("/bad")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(requests.load(Ordering::SeqCst), 1, "sent once, not retried");
}

/// How [`refusing_h2_server`] refuses.
#[derive(Clone, Copy, PartialEq)]
enum Refuse {
    /// On its first connection, wait for two requests, then send a graceful GOAWAY letting
    /// only the first through, and answer that one.
    GoAway,
    /// Reset the very first request's stream with REFUSED_STREAM.
    Reset,
}

/// A raw HTTP/2 server that refuses a request unprocessed as `how` says, and answers every
/// other request at once (`:status 200`, no body). It counts its connections.
async fn refusing_h2_server(how: Refuse) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::AsyncWriteExt;
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    let addr = raw_h2_server(move |mut tcp, number| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut held = Vec::new();
            let mut requests = 0;
            while let Some(frame) = H2Frame::read(&mut tcp).await {
                let ok = |stream| H2Frame::encode(H2Frame::HEADERS, 0x5, stream, &[0x88]);
                let answer = match frame.kind {
                    H2Frame::SETTINGS if frame.flags & 1 == 0 => {
                        H2Frame::encode(H2Frame::SETTINGS, 1, 0, &[])
                    }
                    H2Frame::HEADERS if number > 0 => ok(frame.stream),
                    H2Frame::HEADERS if how == Refuse::Reset => {
                        requests += 1;
                        if requests > 1 {
                            ok(frame.stream)
                        } else {
                            H2Frame::encode(3, 0, frame.stream, &7u32.to_be_bytes())
                        }
                    }
                    H2Frame::HEADERS => {
                        held.push(frame.stream);
                        if held.len() < 2 {
                            continue;
                        }
                        let mut goaway = held[0].to_be_bytes().to_vec();
                        goaway.extend_from_slice(&0u32.to_be_bytes());
                        let mut out = H2Frame::encode(H2Frame::GOAWAY, 0, 0, &goaway);
                        out.extend(ok(held[0]));
                        out
                    }
                    _ => continue,
                };
                if tcp.write_all(&answer).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (addr, connections)
}

fn request(proxy: &Proxy, method: http::Method, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(proxy.url(path))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// The errors and retries counted on `proxy`'s first server.
fn errors_and_retries(proxy: &Proxy) -> (u64, u64) {
    let snapshot = proxy.runtime.proxy().snapshot();
    let traffic = snapshot.backends[0].servers[0].state.traffic.totals();
    (traffic.errors, traffic.retries)
}

/// A request an HTTP/2 server refused unprocessed (above a graceful GOAWAY's last stream) is
/// sent again, even a POST, on another connection; the refusal is not the server's error.
#[tokio::test]
async fn a_request_refused_by_a_goaway_is_sent_again() {
    let (server, connections) = refusing_h2_server(Refuse::GoAway).await;
    let proxy = Proxy::start(&format!("[global]\nworkers = 1\n{}", to_h2_server(server))).await;
    let client = crate::support::client();
    let get = tokio::spawn(client.request(request(&proxy, http::Method::GET, "/first")));
    let post = tokio::spawn(client.request(request(&proxy, http::Method::POST, "/second")));
    assert_eq!(get.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(post.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    assert_eq!(errors_and_retries(&proxy), (0, 1));
}

/// A stream the server reset with REFUSED_STREAM is sent again too, on the same connection,
/// which stays in use.
#[tokio::test]
async fn a_request_refused_with_refused_stream_is_sent_again() {
    let (server, connections) = refusing_h2_server(Refuse::Reset).await;
    let proxy = Proxy::start(&format!("[global]\nworkers = 1\n{}", to_h2_server(server))).await;
    let client = crate::support::client();
    let resp = client
        .request(request(&proxy, http::Method::POST, "/refused"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    assert_eq!(errors_and_retries(&proxy), (0, 1));
}
