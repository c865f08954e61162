//! Test support: backends the tests start themselves, an in-process proxy from TOML text,
//! the real binary as a child process, and small HTTP client helpers. Everything binds
//! 127.0.0.1:0; ports meant to stay closed are held (see [`HeldPort`]).

#![allow(dead_code)]

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use wasp::runtime::Runtime;

/// Builds the plugins workspace once per test run; `wasm(name)` is a plugin's component.
#[path = "../../src/plugin/test_plugins.rs"]
pub mod test_plugins;

/// Stops the servers it was given when dropped.
#[derive(Debug, Default)]
pub struct Servers {
    stop: CancellationToken,
    /// The ports handed out by [`Servers::closed_port`], held for as long as the servers.
    held: std::sync::Mutex<Vec<HeldPort>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Servers {
    pub fn new() -> Self {
        Self::default()
    }

    /// An echo server named `name`; returns its address.
    pub async fn echo(&self, name: &str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(wasp::echo::serve_echo(
            Arc::from(name),
            listener,
            self.stop.clone(),
        ));
        addr
    }

    /// An echo server named `name` that the test can kill and revive on the same port.
    pub async fn killable_echo(&self, name: &str) -> Killable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut server = Killable {
            name: Arc::from(name),
            addr: listener.local_addr().unwrap(),
            parent: self.stop.clone(),
            running: None,
            held: None,
        };
        server.serve(listener);
        server
    }

    /// A server answering every request with the status `initial` (changeable through the
    /// returned [`Status`]) and its name as the body.
    pub async fn status(&self, name: &str, initial: u16) -> (SocketAddr, Status) {
        let status = Status(Arc::new(std::sync::atomic::AtomicU16::new(initial)));
        let current = status.clone();
        let name: Arc<str> = Arc::from(name);
        let addr = self
            .serve_each(move |tcp| {
                let (current, name) = (current.clone(), Arc::clone(&name));
                let service = service_fn(move |_req: Request<Incoming>| {
                    let code = current.0.load(std::sync::atomic::Ordering::Relaxed);
                    let mut resp = Response::new(Full::new(Bytes::from(format!("{name}\n"))));
                    *resp.status_mut() = StatusCode::from_u16(code).unwrap();
                    async move { Ok::<_, Infallible>(resp) }
                });
                serve_http(tcp, service)
            })
            .await;
        (addr, status)
    }

    /// A port on which nothing listens: held (see [`HeldPort`]) until the servers are
    /// dropped, so no other test's listener can take it meanwhile.
    pub async fn closed_port(&self) -> SocketAddr {
        let held = HeldPort::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = held.addr();
        self.held.lock().unwrap().push(held);
        addr
    }

    /// A server with test behaviours chosen by path:
    /// `/delay/MS` answers "done" after MS milliseconds; `/hang` never answers;
    /// `/bytes/N` streams N bytes; anything else answers "ok" after reading the whole body,
    /// with the body size in `x-body-bytes`.
    pub async fn behaviour(&self) -> SocketAddr {
        self.serve_each(|tcp| serve_http(tcp, service_fn(behave)))
            .await
    }

    /// A server that holds every request until the test opens the gate: each arrival is
    /// reported on the returned channel (with the request's path), and each answer
    /// ("released") waits for the gate.
    pub async fn gated(
        &self,
        name: &str,
    ) -> (
        SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<String>,
        Gate,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (arrived_tx, arrived) = tokio::sync::mpsc::unbounded_channel();
        let gate = Gate::closed();
        let stop = self.stop.clone();
        let permits = gate.clone();
        let name: Arc<str> = Arc::from(name);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => a.unwrap(),
                };
                let (arrived_tx, permits, name) =
                    (arrived_tx.clone(), permits.clone(), Arc::clone(&name));
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (arrived_tx, permits, name) =
                            (arrived_tx.clone(), permits.clone(), Arc::clone(&name));
                        let path = req.uri().path().to_owned();
                        async move {
                            let _ = arrived_tx.send(path);
                            permits.pass().await;
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                                "{name}\nreleased\n"
                            )))))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        (addr, arrived, gate)
    }

    /// A server that counts the connections it accepts and answers by path: `/chunked` with a
    /// chunked body (`one\ntwo\n`), `/empty` with 204, `/bytes/N` with N bytes, anything else
    /// with `ok\n` once it has read the request body.
    pub async fn counting(&self) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let addr = self
            .serve_each(move |tcp| {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                serve_http(tcp, service_fn(by_path))
            })
            .await;
        (addr, accepted)
    }

    /// A server that answers every request with the raw bytes `answer`, whatever they say,
    /// and reports each request head it reads (the text up to the blank line). Request
    /// bodies are read and ignored when they have a `Content-Length`.
    pub async fn scripted(
        &self,
        answer: &'static [u8],
    ) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let (heads_tx, heads) = tokio::sync::mpsc::unbounded_channel();
        let addr = self
            .serve_each(move |tcp| answer_each(tcp, answer, heads_tx.clone()))
            .await;
        (addr, heads)
    }

    /// A listener on a free loopback port whose connections are each handed to `handle`, as
    /// a task of its own; the listener and those tasks end when the servers are dropped.
    pub async fn serve_each<F, Fut>(&self, mut handle: F) -> SocketAddr
    where
        F: FnMut(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => a.unwrap(),
                };
                let (conn, stop) = (handle(tcp), stop.clone());
                tokio::spawn(async move {
                    tokio::select! { _ = conn => {}, _ = stop.cancelled() => {} }
                });
            }
        });
        addr
    }

    /// A server that reads the request head and closes the connection without answering.
    pub async fn closer(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => a.unwrap(),
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = tcp.read(&mut buf).await;
                    drop(tcp);
                });
            }
        });
        addr
    }
}

/// [`Servers::scripted`]'s connections: each request head read, reported, and answered.
async fn answer_each(
    mut tcp: TcpStream,
    answer: &[u8],
    heads: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < end + length {
            let mut chunk = [0u8; 4096];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..end + length);
        let _ = heads.send(head);
        if tcp.write_all(answer).await.is_err() {
            return;
        }
    }
}

/// An echo server that can be killed (its listener and connections closed) and brought back
/// on the same port.
#[derive(Debug)]
pub struct Killable {
    name: Arc<str>,
    pub addr: SocketAddr,
    parent: CancellationToken,
    running: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    /// The port while the server is dead, so that it stays closed and free for the revival.
    held: Option<HeldPort>,
}

impl Killable {
    /// Closes the listener and every connection; returns once the port refuses connections.
    pub async fn kill(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            stop.cancel();
            let _ = task.await;
            self.held = Some(HeldPort::bind(self.addr).expect("hold the killed server's port"));
        }
    }

    /// Listens on the same port again.
    pub async fn revive(&mut self) {
        self.kill().await;
        let held = self.held.take().expect("a killed server holds its port");
        self.serve(held.listen());
    }

    fn serve(&mut self, listener: TcpListener) {
        let stop = self.parent.child_token();
        let task = tokio::spawn(wasp::echo::serve_echo(
            Arc::clone(&self.name),
            listener,
            stop.clone(),
        ));
        self.running = Some((stop, task));
    }
}

/// A loopback port bound without listening: connects to it are refused, and no other test can
/// take it while it is held (the suite's listeners bind port 0, and the kernel's choice of a
/// port skips one that is bound). A port freed instead could be taken by the listener of a
/// test running at the same time, which then answered where a refusal was expected.
#[derive(Debug)]
pub struct HeldPort(tokio::net::TcpSocket);

impl HeldPort {
    /// Binds `addr` (port 0: any free port). `SO_REUSEADDR` lets the bind through the
    /// `TIME_WAIT` connections a closed server leaves, never past a socket still listening.
    pub fn bind(addr: SocketAddr) -> std::io::Result<HeldPort> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        Ok(HeldPort(socket))
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.local_addr().unwrap()
    }

    /// Starts listening on the held port.
    pub fn listen(self) -> TcpListener {
        self.0.listen(1024).expect("listen on the held port")
    }
}

/// A server whose listen queue is full (one connection, never accepted): the kernel drops a
/// new connect's SYN, so a connect to it waits until its timeout. Held while it lives.
#[derive(Debug)]
pub struct Unanswered {
    listener: TcpListener,
    _filler: std::net::TcpStream,
}

impl Unanswered {
    pub fn bind() -> Unanswered {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let listener = socket.listen(0).unwrap();
        // The queue's one place, taken.
        let filler = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        Unanswered {
            listener,
            _filler: filler,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }
}

/// Asserts that nothing listens on `addr` any more: the port can be held (which a listening
/// socket would prevent), and a connect to it is refused while it is held. A port that cannot
/// be held may have been taken, once freed, as the local port of another test's outgoing
/// connection (which `SO_REUSEADDR` does not bind past): then the kernel's socket table must
/// show no listener on it.
pub async fn assert_closed(addr: SocketAddr, what: &str) {
    match HeldPort::bind(addr) {
        Ok(held) => {
            assert!(TcpStream::connect(addr).await.is_err(), "{what}: {addr}");
            drop(held);
        }
        Err(e) => assert!(
            !listening_on(addr),
            "{what}: {addr} is still bound by a listener: {e}"
        ),
    }
}

/// Whether a TCP socket listens on IPv4 `addr`, from `/proc/net/tcp`.
fn listening_on(addr: SocketAddr) -> bool {
    let SocketAddr::V4(v4) = addr else {
        panic!("{addr}: only IPv4 loopback addresses are checked");
    };
    // The local address as the kernel prints it: the IPv4 address as a native-endian u32 in
    // hex, then the port in hex.
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        let (Some(l), Some(_remote), Some(state)) = (fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        // State 0A is LISTEN.
        l == local && state == "0A"
    })
}

/// The status a [`Servers::status`] server answers with; change it at any time.
#[derive(Debug, Clone)]
pub struct Status(Arc<std::sync::atomic::AtomicU16>);

impl Status {
    pub fn set(&self, status: u16) {
        self.0.store(status, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Lets held requests of a gated server answer, one per permit.
#[derive(Debug, Clone)]
pub struct Gate(Arc<tokio::sync::Semaphore>);

impl Gate {
    /// A gate that lets nothing through until opened.
    pub fn closed() -> Gate {
        Gate(Arc::new(tokio::sync::Semaphore::new(0)))
    }

    pub fn open(&self, requests: usize) {
        self.0.add_permits(requests);
    }

    /// Waits for one permit, and uses it up.
    pub async fn pass(&self) {
        self.0.acquire().await.expect("gate open").forget();
    }
}

/// A pooled HTTP/1.1 client for streamed bodies.
pub fn streaming_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn behave(req: Request<Incoming>) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_owned();
    if let Some(ms) = path.strip_prefix("/delay/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok(Response::new(
            Full::new(Bytes::from_static(b"done")).boxed(),
        ));
    }
    if path == "/hang" {
        std::future::pending::<()>().await;
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        return Ok(Response::new(streamed(n.parse().unwrap_or(0))));
    }
    let mut body = req.into_body();
    let mut n = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        n += frame.data_ref().map_or(0, |d| d.len() as u64);
    }
    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")).boxed());
    resp.headers_mut()
        .insert("x-body-bytes", n.to_string().parse().unwrap());
    Ok(resp)
}

async fn by_path(req: Request<Incoming>) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_owned();
    if let Some(n) = path.strip_prefix("/bytes/") {
        return Ok(Response::new(streamed(n.parse().unwrap_or(0))));
    }
    if path == "/chunked" {
        let (tx, body) = channel_body();
        for part in [&b"one\n"[..], b"two\n"] {
            tx.try_send(Frame::data(Bytes::from_static(part)))
                .expect("the channel has room for both parts");
        }
        return Ok(Response::new(body.boxed()));
    }
    if path == "/empty" {
        let mut resp = Response::new(Full::new(Bytes::new()).boxed());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        return Ok(resp);
    }
    let _ = req.into_body().collect().await;
    Ok(Response::new(
        Full::new(Bytes::from_static(b"ok\n")).boxed(),
    ))
}

/// A body fed frame by frame through a channel, so that a test controls when each part is
/// sent; of unknown length (sent chunked over HTTP/1.1).
pub struct ChannelBody(tokio::sync::mpsc::Receiver<Frame<Bytes>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

pub fn channel_body() -> (tokio::sync::mpsc::Sender<Frame<Bytes>>, ChannelBody) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    (tx, ChannelBody(rx))
}

/// A body of `left` bytes sent as frames of (at most) `chunk`.
struct Repeat {
    left: u64,
    chunk: Bytes,
}

impl http_body::Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64);
        self.left -= n;
        std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(0..n as usize)))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

/// A body of `total` bytes in 64 KiB frames.
pub fn streamed(total: u64) -> TestBody {
    Repeat {
        left: total,
        chunk: Bytes::from(vec![b'u'; 64 * 1024]),
    }
    .boxed()
}

/// One frontend `web` (with `extra` in its section) and one backend `app` with `servers`
/// (TOML inline tables), short connect and server timeouts.
pub fn one_backend(servers: &str, extra: &str) -> String {
    format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        {extra}

        [backend.app]
        timeout = {{ connect = "1s", server = "2s" }}
        servers = [ {servers} ]
        "#
    )
}

/// A frontend `web` in front of backend `app`, whose one server `name` at `addr` is judged by
/// live traffic (`observe = "layer7"`): `error_limit` errors in a row mark it down. Its active
/// checks run hourly, out of the way.
pub fn observed_one(name: &str, addr: SocketAddr, error_limit: u32) -> String {
    format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        [backend.app]
        observe = "layer7"
        error_limit = {error_limit}
        check = {{ interval = "1h" }}
        servers = [ {{ name = "{name}", addr = "{addr}", check = true }} ]
        "#
    )
}

/// A proxy in front of one echo server (named "e"), with `extra` in the frontend.
pub async fn to_echo(servers: &Servers, extra: &str) -> Proxy {
    let echo = servers.echo("e").await;
    Proxy::start(&one_backend(
        &format!(r#"{{ name = "e", addr = "{echo}" }}"#),
        extra,
    ))
    .await
}

/// An in-process proxy started from TOML text.
pub struct Proxy {
    pub runtime: Runtime,
    /// Bound address of each frontend's first listener, in config order.
    pub addrs: Vec<SocketAddr>,
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

/// `toml` written to `wasp.toml` in a new temporary folder, which is removed when the
/// returned `TempDir` is dropped (keep it as long as the file is needed).
pub fn config_file(toml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasp.toml");
    std::fs::write(&path, toml).unwrap();
    (dir, path)
}

impl Proxy {
    /// Starts a proxy from `toml`; binds in it should use port 0.
    pub async fn start(toml: &str) -> Proxy {
        let (dir, path) = config_file(toml);
        let (config, report) = wasp::config::load(&path);
        let config = config.unwrap_or_else(|| panic!("test config invalid:\n{}", report.render()));
        let names: Vec<String> = config.frontends.iter().map(|f| f.name.clone()).collect();
        let runtime = Runtime::start(config).await.expect("proxy starts");
        let mut addrs = Vec::new();
        for name in &names {
            addrs.push(runtime.frontend_addrs(name).await[0]);
        }
        Proxy {
            runtime,
            addrs,
            _dir: dir,
            path,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }
}

/// An HTTP/1.1 client (pooled keep-alive).
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge client.
pub fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// GETs `url` and returns status, headers and body text.
pub async fn get(url: &str) -> (StatusCode, http::HeaderMap, String) {
    send(
        &client(),
        Request::get(url).body(Full::new(Bytes::new())).unwrap(),
    )
    .await
}

pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (StatusCode, http::HeaderMap, String) {
    let resp = client.request(req).await.expect("request");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// Polls `cond` every 5 ms until it holds; returns how long that took, or panics after `limit`.
pub async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = std::time::Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The first line of an echo answer: the server's name.
pub fn server_name(body: &str) -> &str {
    body.lines().next().unwrap_or("")
}

/// Sends raw bytes on a fresh connection and returns everything read until the server closes
/// (or `limit` passes).
pub async fn raw(addr: SocketAddr, bytes: &[u8], limit: Duration) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The run-time state of the server at `addr` in backend `backend` of the live snapshot.
pub fn server_state(
    proxy: &Proxy,
    backend: &str,
    addr: SocketAddr,
) -> std::sync::Arc<wasp::health::ServerState> {
    let snapshot = proxy.runtime.proxy().snapshot();
    let backend = snapshot.backends.iter().find(|b| &*b.name == backend);
    let server = backend.and_then(|b| b.servers.iter().find(|s| s.state.key.addr == addr));
    std::sync::Arc::clone(&server.expect("server state").state)
}

/// The HTTP/2 client connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What an HTTP/2 client sends first: the preface and an empty SETTINGS frame.
pub fn h2_start() -> Vec<u8> {
    let mut start = H2_PREFACE.to_vec();
    start.extend(H2Frame::encode(H2Frame::SETTINGS, 0, 0, &[]));
    start
}

/// One HTTP/2 frame: its type, flags, stream and payload.
#[derive(Debug)]
pub struct H2Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl H2Frame {
    pub const HEADERS: u8 = 1;
    pub const SETTINGS: u8 = 4;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;

    /// The frame's bytes: the 9-byte header, then the payload.
    pub fn encode(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], kind, flags];
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    /// The next frame on `tcp`; `None` once the peer has closed (at a frame's boundary).
    pub async fn read(tcp: &mut TcpStream) -> Option<H2Frame> {
        let mut head = [0u8; 9];
        match tcp.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) => panic!("reading a frame: {e}"),
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0; len];
        tcp.read_exact(&mut payload).await.unwrap();
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        Some(H2Frame {
            kind: head[3],
            flags: head[4],
            stream,
            payload,
        })
    }

    /// A GOAWAY's last stream identifier and error code.
    pub fn goaway(&self) -> (u32, u32) {
        assert_eq!(self.kind, Self::GOAWAY, "{self:?}");
        let word = |i: usize| u32::from_be_bytes(self.payload[i..i + 4].try_into().unwrap());
        (word(0) & 0x7fff_ffff, word(4))
    }
}

/// The status code of a raw HTTP/1 answer.
pub fn raw_status(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The real `wasp` binary running a config file, its stdout (the log) read line by line.
pub struct Binary {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub addr: SocketAddr,
    /// The log lines up to the first `listening` one (start-up).
    pub start_log: Vec<String>,
}

impl Binary {
    /// Runs `wasp run -c path` and waits until it logs its listening address.
    pub fn run(path: &Path) -> Binary {
        Self::run_with_env(path, &[])
    }

    /// [`Self::run`] with these environment variables set as well. `MIMALLOC_ALLOW_THP` is
    /// not passed on from the test's environment: wasp makes its own huge-page choice.
    pub fn run_with_env(path: &Path, vars: &[(&str, &str)]) -> Binary {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wasp"));
        command.args(["run", "-c"]).arg(path);
        Self::start(command, Some("info"), vars)
    }

    /// [`Self::run`] without `RUST_LOG`: wasp's own default log filter.
    pub fn run_with_default_log(path: &Path) -> Binary {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wasp"));
        command.args(["run", "-c"]).arg(path);
        Self::start(command, None, &[])
    }

    /// [`Self::run`] with the soft limit on open files lowered to `soft` (by the shell that
    /// then becomes wasp: the same process).
    pub fn run_with_soft_open_files(path: &Path, soft: u64) -> Binary {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -Sn {soft} && exec \"$0\" run -c \"$1\""))
            .arg(env!("CARGO_BIN_EXE_wasp"))
            .arg(path);
        Self::start(command, Some("info"), &[])
    }

    /// Starts `command` with `RUST_LOG` set to `log` (`None`: unset) and `vars`.
    fn start(mut command: Command, log: Option<&str>, vars: &[(&str, &str)]) -> Binary {
        match log {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        let mut child = command
            .env("NO_COLOR", "1")
            .env_remove("MIMALLOC_ALLOW_THP")
            .envs(vars.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn wasp");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut binary = Binary {
            child,
            lines,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            start_log: Vec::new(),
        };
        binary.start_log = binary.lines_until("listening", Duration::from_secs(20));
        let line = binary.start_log.last().expect("the listening line");
        binary.addr = field(line, "listener")
            .parse()
            .expect("listener address in log");
        binary
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> String {
        let mut lines = self.lines_until(needle, limit);
        lines.pop().expect("the line found")
    }

    /// The log lines read until one contains `needle`, that one last; panics after `limit`.
    pub fn lines_until(&self, needle: &str, limit: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + limit;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    lines.push(line);
                    if found {
                        return lines;
                    }
                }
                Err(_) => panic!("no log line containing {needle:?} within {limit:?}"),
            }
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> i32 {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "wasp did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory of the process in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.child.id()).expect("VmRSS")
    }
}

/// Resident memory of process `pid` in KiB, if it is still running.
pub fn rss_kib_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `key=value` in a text log line (quotes stripped).
pub fn field(line: &str, key: &str) -> String {
    let start = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        + key.len()
        + 1;
    line[start..]
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_matches('"')
        .to_owned()
}

/// An empty request body.
pub fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

/// A server answering every request with status 200 and the body it is given (changeable
/// through the returned handle).
pub async fn body_server(servers: &Servers, initial: &str) -> (SocketAddr, BodyText) {
    let text = BodyText(Arc::new(std::sync::Mutex::new(initial.to_owned())));
    let current = text.clone();
    let addr = servers
        .serve_each(move |tcp| {
            let current = current.clone();
            let service = service_fn(move |_req: Request<Incoming>| {
                let body = current.0.lock().unwrap().clone();
                async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
            });
            serve_http(tcp, service)
        })
        .await;
    (addr, text)
}

/// Serves HTTP/1.1 or HTTP/2 (prior knowledge) with `service` on `tcp` until it closes.
async fn serve_http<S, B>(tcp: TcpStream, service: S)
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tcp), service)
        .await;
}

/// The body a [`body_server`] answers with.
#[derive(Debug, Clone)]
pub struct BodyText(Arc<std::sync::Mutex<String>>);

impl BodyText {
    pub fn set(&self, body: &str) {
        *self.0.lock().unwrap() = body.to_owned();
    }
}

/// The socket-table check of [`assert_closed`] sees a listener, and no longer once it is closed.
#[test]
fn listening_on_sees_a_listener_until_it_closes() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    assert!(listening_on(addr));
    drop(listener);
    assert!(!listening_on(addr));
}
