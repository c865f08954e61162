//! The pooled HTTP client wasp uses to reach servers.
//!
//! hyper-util's pooled client keeps keep-alive connections per server address; this module
//! only configures it and wraps its TCP connector to time each new connection, so the access
//! log can tell a fresh connect (and how long it took) from a reused pooled connection.
//! `body` holds the request body types sent upstream.

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
use tokio::net::TcpStream;
use tokio::time::Instant;

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

/// `HttpConnector` with timing.
#[derive(Debug, Clone)]
pub struct TimedConnector {
    inner: HttpConnector,
}

impl TimedConnector {
    pub fn new(connect_timeout: Duration) -> Self {
        let mut inner = HttpConnector::new();
        inner.set_nodelay(true);
        inner.set_connect_timeout(Some(connect_timeout));
        inner.enforce_http(true);
        Self { inner }
    }
}

impl tower_service::Service<Uri> for TimedConnector {
    type Response = TimedConn;
    type Error = <HttpConnector as tower_service::Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<TimedConn, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let start = Instant::now();
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            let established = Instant::now();
            Ok(TimedConn {
                io,
                timing: ConnectTiming {
                    established,
                    took: established - start,
                },
            })
        })
    }
}

/// An upstream TCP connection that remembers how it was made.
#[derive(Debug)]
pub struct TimedConn {
    io: TokioIo<TcpStream>,
    timing: ConnectTiming,
}

impl Connection for TimedConn {
    fn connected(&self) -> Connected {
        self.io.connected().extra(self.timing)
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

/// Clients shared across snapshots, per distinct connect timeout, so that a reload keeps the
/// pooled connections of servers that stay.
#[derive(Debug)]
pub struct ClientCache {
    workers: usize,
    pools: Mutex<HashMap<Duration, Pools>>,
}

impl ClientCache {
    /// A cache whose pools have one client per worker.
    pub fn new(workers: usize) -> Self {
        Self {
            workers: workers.max(1),
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// The pools for backends with this connect timeout.
    pub fn pools(&self, connect_timeout: Duration) -> Pools {
        let mut pools = self
            .pools
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        pools
            .entry(connect_timeout)
            .or_insert_with(|| {
                Pools(
                    (0..self.workers)
                        .map(|_| new_client(connect_timeout))
                        .collect(),
                )
            })
            .clone()
    }
}

fn new_client(connect_timeout: Duration) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_SERVER)
        .retry_canceled_requests(true)
        .set_host(false)
        .build(TimedConnector::new(connect_timeout))
}
