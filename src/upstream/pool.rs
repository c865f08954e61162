//! Connection pools to servers, one per worker thread.
//!
//! A worker's requests only ever use that worker's pool (`set_pool_index`), so a request, its
//! upstream connection and that connection's task all run on one thread.
//!
//! HTTP/1.1: idle keep-alive connections per server, most recently used first. A connection
//! goes back to its pool when the response body has been read to its end (a response without
//! a body: at once); a response abandoned half-way closes it. A request that finds its pooled
//! connection closed by the server before the request was sent moves on to the next idle one,
//! or a new connection. Idle connections are closed after [`POOL_IDLE_TIMEOUT`]; at most
//! [`POOL_MAX_IDLE_PER_SERVER`] stay idle per server.
//!
//! HTTP/2 (`proto = "h2"`): connections shared by many requests, filled up to the server's
//! limit on concurrent streams before another is opened ([`multiplexed`]).

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::uri::Authority;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustc_hash::FxHashMap;
use tokio::time::Instant;
use tokio_util::either::Either;

use crate::clock;
use crate::config::{Proto, SERVER_HEAD_MAX};
use crate::upstream::body::UpstreamBody;
use crate::upstream::connect::{ConnectError, ConnectTiming, Connector};

mod multiplexed;

pub(crate) use multiplexed::OpenStream;

/// How long an idle pooled connection is kept before it is closed.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle pooled connections kept per server.
pub const POOL_MAX_IDLE_PER_SERVER: usize = 256;
/// How often a worker's pool closes connections idle for longer than [`POOL_IDLE_TIMEOUT`].
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Why a request got no response from a server.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made: nothing was sent.
    #[error("connect: {0}")]
    Connect(#[source] ConnectError),
    /// The request was (maybe partly) sent, and no response came back.
    #[error("{0}")]
    Send(#[source] hyper::Error),
    /// The HTTP/2 server refused the request unprocessed: its stream was above the last one
    /// a `GOAWAY` let through, or reset with `REFUSED_STREAM` (RFC 9113 8.7), or the
    /// connection was closing before it went out. It may be sent again, if its body can be.
    #[error("refused unprocessed: {0}")]
    Refused(#[source] hyper::Error),
    /// The request is a WebSocket over HTTP/2 (an extended CONNECT), which the server's
    /// settings do not allow: nothing was sent.
    #[error("the server does not allow extended CONNECT (RFC 8441)")]
    NoExtendedConnect,
}

impl UpstreamError {
    /// Whether the server was never reached (so the request may go to another server).
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }

    /// Whether the server answered with something that is not an HTTP response (a malformed
    /// or oversized head, or over HTTP/2 a frame or header block the HTTP/2 library refused):
    /// an answer, not a hang-up.
    pub fn is_junk(&self) -> bool {
        matches!(self, UpstreamError::Send(e) if e.is_parse() || h2_refused(e))
    }
}

/// The HTTP/2 library's error behind `e`, if any.
fn h2_error(e: &hyper::Error) -> Option<&h2::Error> {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        source = err.source();
    }
    None
}

/// How an HTTP/2 server said it did not process a request: a graceful `GOAWAY` whose last
/// stream is below the request's (the connection is going away), or a reset of its stream with
/// `REFUSED_STREAM` (RFC 9113 8.7). A `GOAWAY` with an error code is left out: the library may
/// report it on streams the server did process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unprocessed {
    GoingAway,
    StreamRefused,
}

fn unprocessed(e: &hyper::Error) -> Option<Unprocessed> {
    let h2 = h2_error(e).filter(|h2| h2.is_remote())?;
    if h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR) {
        Some(Unprocessed::GoingAway)
    } else if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
        Some(Unprocessed::StreamRefused)
    } else {
        None
    }
}

/// Whether the HTTP/2 library ended the stream or the connection itself (a reset or GOAWAY of
/// its own, with an error) because of what the server sent. Replaying the request would only
/// bring the same answer, and end the next shared connection with every stream on it.
fn h2_refused(e: &hyper::Error) -> bool {
    h2_error(e)
        .is_some_and(|h2| h2.is_library() && h2.reason().is_some_and(|r| r != h2::Reason::NO_ERROR))
}

/// Where an HTTP/1.1 request's connection comes from and goes back to: the pool of `worker`
/// for server `key`; `fresh`: a new connection rather than an idle one.
#[derive(Clone, Copy)]
struct Slot {
    worker: usize,
    key: usize,
    fresh: bool,
}

/// An idle HTTP/1.1 connection.
struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    timing: ConnectTiming,
    since: Instant,
}

/// One worker's connections, found by the server's [`Pools::key`], with no hashing per
/// request.
#[derive(Default)]
struct WorkerPool {
    idle: Mutex<Vec<VecDeque<Idle>>>,
    h2: Mutex<Vec<multiplexed::Conns>>,
    sweeping: AtomicBool,
}

/// The connections of every worker to servers reached alike (one [`Connector`] and protocol).
struct Inner {
    connector: Connector,
    proto: Proto,
    /// Each worker's own (`Arc`: a check-in holds its worker's pool, and only that worker
    /// writes its reference count).
    workers: Box<[Arc<WorkerPool>]>,
    /// The key of each server address these pools have been asked about.
    keys: Mutex<FxHashMap<Authority, usize>>,
}

/// Connection pools, one per worker, for servers reached with the same settings.
#[derive(Clone)]
pub struct Pools(Arc<Inner>);

impl fmt::Debug for Pools {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pools")
            .field("proto", &self.0.proto)
            .field("workers", &self.0.workers.len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Pools {
    pub(crate) fn new(connector: Connector, proto: Proto, workers: usize) -> Self {
        Pools(Arc::new(Inner {
            connector,
            proto,
            workers: (0..workers.max(1))
                .map(|_| Arc::new(WorkerPool::default()))
                .collect(),
            keys: Mutex::default(),
        }))
    }

    /// The key under which these pools keep idle connections to `authority` (the same for
    /// the same address, in every snapshot that uses these pools). Asked once per server
    /// when a snapshot is built; requests pass it to [`Pools::send`].
    pub fn key(&self, authority: &Authority) -> usize {
        let mut keys = lock(&self.0.keys);
        let next = keys.len();
        *keys.entry(authority.clone()).or_insert(next)
    }

    /// Whether requests to these servers are sent over HTTP/2 (and need an absolute URI).
    pub fn is_h2(&self) -> bool {
        self.0.proto == Proto::H2
    }

    /// Sends `req` to the server at `authority` (whose [`Pools::key`] is `key`) on
    /// the current worker's pool. An HTTP/1.1 request carries its target in origin form, an
    /// HTTP/2 one in absolute form. `connected` gets the timing of the connection the request
    /// went out on (the access log's `t_connect`), whether an answer comes or not. `fresh`:
    /// over HTTP/1.1, a new connection rather than an idle one (which the server may be
    /// closing as the request goes out).
    pub fn send<'a>(
        &'a self,
        key: usize,
        authority: &'a Authority,
        req: Request<UpstreamBody>,
        fresh: bool,
        connected: &'a mut Option<ConnectTiming>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, UpstreamError>> + Send + 'a {
        let worker = super::pool_index() % self.0.workers.len();
        // Either future itself, not one awaiting it: a layer less to move the request and the
        // response through.
        match self.0.proto {
            Proto::Http1 => {
                Either::Left(self.send_h1(Slot { worker, key, fresh }, authority, req, connected))
            }
            // Boxed: its state is the larger, and inline every HTTP/1 request's future would
            // carry (and copy) it too.
            Proto::H2 => Either::Right(Box::pin(
                self.send_h2(worker, key, authority, req, connected),
            )),
        }
    }

    async fn send_h1(
        &self,
        slot: Slot,
        authority: &Authority,
        mut req: Request<UpstreamBody>,
        connected: &mut Option<ConnectTiming>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let Slot { worker, key, fresh } = slot;
        loop {
            let idle = if fresh {
                None
            } else {
                self.checkout(worker, key)
            };
            let (mut conn, reused) = match idle {
                Some(idle) => ((idle.sender, idle.timing), true),
                // Boxed: the connect state is large and rarely needed; inline, every request's
                // future would carry (and copy) it.
                None => (Box::pin(self.connect_h1(authority)).await?, false),
            };
            *connected = Some(conn.1);
            match conn.0.try_send_request(req).await {
                Ok(resp) => {
                    let checkin = Checkin {
                        pool: Arc::clone(&self.0.workers[worker]),
                        key,
                        sender: conn.0,
                    };
                    return Ok(ResponseBody::wrap(resp, conn.1, After::Pool(checkin)));
                }
                Err(mut e) => match e.take_message() {
                    // A pooled connection the server had closed; nothing was sent.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(UpstreamError::Send(e.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection to the server `key` that can take a request.
    fn checkout(&self, worker: usize, key: usize) -> Option<Idle> {
        let mut idle = lock(&self.0.workers[worker].idle);
        let list = idle.get_mut(key)?;
        let now = clock::recent();
        while let Some(conn) = list.pop_back() {
            if conn.sender.is_ready() && now - conn.since < POOL_IDLE_TIMEOUT {
                return Some(conn);
            }
        }
        None
    }

    async fn connect_h1(
        &self,
        authority: &Authority,
    ) -> Result<(http1::SendRequest<UpstreamBody>, ConnectTiming), UpstreamError> {
        let (stream, timing) = self.connect(authority).await?;
        // One buffer per write (head and body copied together) rather than writev: fewer,
        // larger writes; measured cheaper per request (docs/benchmarks.md).
        let (sender, conn) = http1::Builder::new()
            .writev(false)
            // hyper's default, about 400 KiB, is also how far its read buffer grows.
            .max_buf_size(SERVER_HEAD_MAX)
            // Exact: the read buffer's limit alone let a head arriving in large reads pass it
            // by up to one read, on some connections and not others.
            .max_header_size(SERVER_HEAD_MAX)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Connect(ConnectError::Handshake(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "server connection ended");
            }
        });
        Ok((sender, timing))
    }

    async fn connect(
        &self,
        authority: &Authority,
    ) -> Result<(super::connect::Stream, ConnectTiming), UpstreamError> {
        self.0
            .connector
            .connect(authority)
            .await
            .map_err(UpstreamError::Connect)
    }
}

impl WorkerPool {
    /// Puts an idle connection back, and makes sure this worker sweeps out stale ones.
    fn check_in(self: &Arc<Self>, key: usize, idle: Idle) {
        {
            let mut lists = lock(&self.idle);
            if lists.len() <= key {
                lists.resize_with(key + 1, VecDeque::new);
            }
            let list = &mut lists[key];
            if list.len() >= POOL_MAX_IDLE_PER_SERVER {
                // The oldest goes.
                list.pop_front();
            }
            list.push_back(idle);
        }
        self.sweep_soon();
    }

    /// Makes sure this worker sweeps out stale connections.
    fn sweep_soon(self: &Arc<Self>) {
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }
}

/// Closes, every [`SWEEP_EVERY`], the worker's connections idle for too long or closed by
/// their server; ends with the worker's pool.
async fn sweep(pool: Weak<WorkerPool>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        let mut idle = lock(&pool.idle);
        for list in idle.iter_mut() {
            list.retain(|c| !c.sender.is_closed() && now - c.since < POOL_IDLE_TIMEOUT);
            if list.is_empty() {
                *list = VecDeque::new();
            }
        }
        drop(idle);
        for conns in lock(&pool.h2).iter_mut() {
            conns.sweep();
        }
    }
}

/// Where an HTTP/1.1 connection goes once its response is over: its worker's pool, held
/// strongly for the one response (no count other workers write is touched).
struct Checkin {
    pool: Arc<WorkerPool>,
    key: usize,
    sender: http1::SendRequest<UpstreamBody>,
}

impl Checkin {
    /// Returns the connection (made as `timing` says) to its pool once it can take the next
    /// request (at once, nearly always: the connection's task finished the response before its
    /// last bytes got here).
    fn release(self, timing: ConnectTiming) {
        let Checkin {
            pool,
            key,
            mut sender,
        } = self;
        let put_back = move |sender| {
            let since = clock::recent();
            let idle = Idle {
                sender,
                timing,
                since,
            };
            pool.check_in(key, idle);
        };
        if sender.is_ready() {
            put_back(sender);
        } else if !sender.is_closed() {
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    put_back(sender);
                }
            });
        }
    }
}

/// What is owed once a response is over: an HTTP/1.1 connection to give back to its pool, or
/// a stream to count closed on a shared HTTP/2 connection.
enum After {
    Nothing,
    Pool(Checkin),
    Stream(OpenStream),
}

/// A server's response body; reading it to its end returns the connection to its pool (over
/// HTTP/2, ends the stream's count on its connection).
pub struct ResponseBody {
    inner: Incoming,
    timing: ConnectTiming,
    after: After,
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("pooled", &matches!(self.after, After::Pool(_)))
            .finish_non_exhaustive()
    }
}

impl ResponseBody {
    fn wrap(
        resp: Response<Incoming>,
        timing: ConnectTiming,
        after: After,
    ) -> Response<ResponseBody> {
        let (parts, inner) = resp.into_parts();
        // A switch of protocols: after a 101 the connection belongs to the tunnel; over
        // HTTP/2 the stream goes on as the tunnel ([`ResponseBody::take_stream`]), whatever
        // its body says.
        let tunnel =
            matches!(after, After::Stream(_)) && parts.extensions.get::<OnUpgrade>().is_some();
        let after = match after {
            After::Pool(_) if parts.status == StatusCode::SWITCHING_PROTOCOLS => After::Nothing,
            after => after,
        };
        let mut body = ResponseBody {
            inner,
            timing,
            after,
        };
        if body.inner.is_end_stream() && !tunnel {
            body.release();
        }
        Response::from_parts(parts, body)
    }

    fn release(&mut self) {
        match std::mem::replace(&mut self.after, After::Nothing) {
            After::Pool(c) => c.release(self.timing),
            After::Stream(_) | After::Nothing => {}
        }
    }

    /// The HTTP/2 stream this response came on, counted open until the returned guard is
    /// dropped: a tunnel holds it for its life.
    pub(crate) fn take_stream(&mut self) -> Option<OpenStream> {
        match std::mem::replace(&mut self.after, After::Nothing) {
            After::Stream(s) => Some(s),
            other => {
                self.after = other;
                None
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.release(),
            Some(Ok(_)) if this.inner.is_end_stream() => this.release(),
            Some(Ok(_)) => {}
            // The connection is broken: it closes when its sender is dropped.
            Some(Err(_)) => this.after = After::Nothing,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
