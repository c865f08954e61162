//! The pooled HTTP client wasp uses to reach servers.
//!
//! hyper-util's pooled client keeps keep-alive connections per server address; this module
//! configures it (HTTP/1.1, or HTTP/2 for `proto = "h2"` backends) and wraps its TCP connector
//! to time each new connection, so the access log can tell a fresh connect (and how long it
//! took) from a reused pooled connection, and to speak TLS to servers that want it (the
//! handshake is part of the connect, bounded by the same `connect` timeout, and its failure is
//! a connect failure). `body` holds the request body types sent upstream.

pub mod body;

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::{Proto, UpstreamTls};
use crate::tls::TlsError;
use crate::tls::client::client_config;
use crate::upstream::body::UpstreamBody;

/// How long an idle pooled connection is kept before it is closed.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle pooled connections kept per server.
pub const POOL_MAX_IDLE_PER_SERVER: usize = 256;

/// The client the proxy forwards with.
pub type UpstreamClient = Client<TimedConnector, UpstreamBody>;

/// Timing of the TCP connect that created an upstream connection; present in the extensions
/// of every response received on that connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectTiming {
    /// When the connection was established.
    pub established: Instant,
    /// How long the connect took.
    pub took: Duration,
}

/// Why a connection to a server could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Tcp(Box<dyn std::error::Error + Send + Sync>),
    #[error("tls handshake: {0}")]
    Tls(io::Error),
    #[error("tls handshake timed out after {0:?}")]
    TlsTimeout(Duration),
}

/// What a connector needs to speak TLS to one server.
#[derive(Clone)]
struct TlsConnect {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for TlsConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnect")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// `HttpConnector` with timing, and TLS when the server wants it.
#[derive(Debug, Clone)]
pub struct TimedConnector {
    inner: HttpConnector,
    timeout: Duration,
    tls: Option<TlsConnect>,
}

impl TimedConnector {
    pub fn new(connect_timeout: Duration) -> Self {
        let mut inner = HttpConnector::new();
        inner.set_nodelay(true);
        inner.set_connect_timeout(Some(connect_timeout));
        // TLS servers get `https` URIs; the handshake is this connector's.
        inner.enforce_http(false);
        Self {
            inner,
            timeout: connect_timeout,
            tls: None,
        }
    }

    fn with_tls(mut self, config: Arc<rustls::ClientConfig>, name: ServerName<'static>) -> Self {
        self.tls = Some(TlsConnect {
            connector: TlsConnector::from(config),
            name,
        });
        self
    }
}

impl tower_service::Service<Uri> for TimedConnector {
    type Response = TimedConn;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<TimedConn, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| ConnectError::Tcp(e.into()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let start = Instant::now();
        let connecting = self.inner.call(uri);
        let (tls, timeout) = (self.tls.clone(), self.timeout);
        Box::pin(async move {
            let tcp = connecting
                .await
                .map_err(|e| ConnectError::Tcp(e.into()))?
                .into_inner();
            let stream = match tls {
                None => Stream::Plain(tcp),
                Some(t) => {
                    let handshake = t.connector.connect(t.name, tcp);
                    match tokio::time::timeout_at(start + timeout, handshake).await {
                        Ok(Ok(s)) => Stream::Tls(Box::new(s)),
                        Ok(Err(e)) => return Err(ConnectError::Tls(e)),
                        Err(_) => return Err(ConnectError::TlsTimeout(timeout)),
                    }
                }
            };
            let established = Instant::now();
            Ok(TimedConn {
                io: TokioIo::new(stream),
                timing: ConnectTiming {
                    established,
                    took: established - start,
                },
            })
        })
    }
}

/// A connection to a server: plain TCP or TLS over TCP.
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// An upstream connection that remembers how it was made.
#[derive(Debug)]
pub struct TimedConn {
    io: TokioIo<Stream>,
    timing: ConnectTiming,
}

impl Connection for TimedConn {
    fn connected(&self) -> Connected {
        match self.io.inner() {
            Stream::Plain(tcp) => tcp.connected().extra(self.timing),
            Stream::Tls(tls) => {
                let (tcp, session) = tls.get_ref();
                let connected = tcp.connected().extra(self.timing);
                if session.alpn_protocol() == Some(b"h2") {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

impl Read for TimedConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for TimedConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

thread_local! {
    static POOL_INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Makes the current thread use pool `index` of every [`Pools`] (a worker thread calls this
/// once with its own index, so that its requests and upstream connections stay on it).
pub fn set_pool_index(index: usize) {
    POOL_INDEX.with(|p| p.set(index));
}

/// One client (connection pool) per worker thread.
#[derive(Debug, Clone)]
pub struct Pools(Arc<[UpstreamClient]>);

impl Pools {
    /// The current thread's client.
    pub fn client(&self) -> &UpstreamClient {
        let i = POOL_INDEX.with(Cell::get);
        &self.0[i % self.0.len()]
    }
}

/// What sets one upstream client apart from another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub connect_timeout: Duration,
    pub proto: Proto,
    pub tls: Option<TlsKey>,
}

/// The TLS side of a [`ClientKey`]: the settings, the name verified, and the CA bundle's
/// contents as read when the snapshot was built (a changed CA file makes a new client).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsKey {
    pub settings: UpstreamTls,
    pub name: ServerName<'static>,
    pub ca_pem: Option<Vec<u8>>,
}

/// Clients shared across snapshots, per distinct [`ClientKey`], so that a reload keeps the
/// pooled connections of servers that stay.
#[derive(Debug)]
pub struct ClientCache {
    workers: usize,
    pools: Mutex<HashMap<ClientKey, Pools>>,
}

impl ClientCache {
    /// A cache whose pools have one client per worker.
    pub fn new(workers: usize) -> Self {
        Self {
            workers: workers.max(1),
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// The pools for servers reached with `key`; fails when a TLS configuration cannot be
    /// built (an unreadable CA file).
    pub fn pools(&self, key: &ClientKey) -> Result<Pools, TlsError> {
        let mut pools = self
            .pools
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(p) = pools.get(key) {
            return Ok(p.clone());
        }
        let mut connector = TimedConnector::new(key.connect_timeout);
        if let Some(tls) = &key.tls {
            let config = client_config(&tls.settings, key.proto == Proto::H2)?;
            connector = connector.with_tls(config, tls.name.clone());
        }
        let made = Pools(
            (0..self.workers)
                .map(|_| new_client(connector.clone(), key.proto))
                .collect(),
        );
        pools.insert(key.clone(), made.clone());
        Ok(made)
    }
}

fn new_client(connector: TimedConnector, proto: Proto) -> UpstreamClient {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_SERVER)
        .retry_canceled_requests(true)
        .set_host(false);
    if proto == Proto::H2 {
        builder.http2_only(true).timer(TokioTimer::new());
    }
    builder.build(connector)
}
