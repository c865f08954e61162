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
//! HTTP/2 (`proto = "h2"`): one shared connection per server, multiplexing every request, and
//! replaced once it closes. One request makes it while the others that need it wait; if that
//! connect fails, so do they (as connect failures, which `retries` may send elsewhere).

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
use hyper::client::conn::{http1, http2};
use hyper::ext::Protocol;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustc_hash::FxHashMap;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::either::Either;

use crate::clock;
use crate::config::{Proto, SERVER_HEAD_MAX};
use crate::upstream::body::UpstreamBody;
use crate::upstream::connect::{ConnectError, ConnectTiming, Connector};
use crate::upstream::peer::{self, FirstRead, Settings};

/// How long an idle pooled connection is kept before it is closed.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle pooled connections kept per server.
pub const POOL_MAX_IDLE_PER_SERVER: usize = 256;
/// How often a worker's pool closes connections idle for longer than [`POOL_IDLE_TIMEOUT`].
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// HTTP/2 to servers: the flow-control window of each stream. What a server sent that the
/// client has not taken yet waits in wasp's memory, up to this much per stream (hyper's
/// default, 2 MiB, let a client that stops reading park 2 MiB per stream for `timeout client`).
/// 256 KiB still keeps a stream at full speed up to about 2 Gbit/s at 1 ms of round trip; on
/// loopback, through a second wasp, a 1 GB download ran at 540 to 780 MB/s against 700 to
/// 1030 MB/s with hyper's defaults (a shared machine; 1 MiB measured 760 to 810 MB/s).
const H2_STREAM_WINDOW: u32 = 256 * 1024;
/// HTTP/2 to servers: the connection's window, shared by every client's streams on the worker.
/// hyper's default (5 MiB, under three default stream windows) let three streams of clients
/// that grant no window stall every other stream on the connection until `timeout client`
/// cut them. At 256 stream windows, it runs out only after the server's own limit on
/// concurrent streams (100 to 250 for common servers) has: a window is credit, not memory,
/// and what is held is bounded by the streams' own windows.
const H2_CONN_WINDOW: u32 = 256 * H2_STREAM_WINDOW;
/// HTTP/2 to servers: request body bytes queued per stream beyond what the server's window
/// lets out. hyper's default, 1 MiB, let a client park that much of its uploads per stream
/// with a server that stops reading; 64 KiB as on the client side (`proxy::listener`).
/// Measured: a 500 MB upload through a `proto = "h2"` backend on loopback, 670 to 840 MB/s
/// with 1 MiB, 670 to 930 MB/s with 64 KiB.
const H2_MAX_SEND_BUF: usize = 64 * 1024;

/// Why a request got no response from a server.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made: nothing was sent.
    #[error("connect: {0}")]
    Connect(#[source] ConnectError),
    /// The request was (maybe partly) sent, and no response came back.
    #[error("{0}")]
    Send(#[source] hyper::Error),
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

/// Whether the HTTP/2 library ended the stream or the connection itself (a reset or GOAWAY of
/// its own, with an error) because of what the server sent. Replaying the request would only
/// bring the same answer, and end the next shared connection with every stream on it.
fn h2_refused(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.is_library() && h2.reason().is_some_and(|r| r != h2::Reason::NO_ERROR);
        }
        source = err.source();
    }
    false
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

/// A shared HTTP/2 connection.
#[derive(Clone)]
struct Shared {
    sender: http2::SendRequest<UpstreamBody>,
    timing: ConnectTiming,
    /// What the server's settings allow.
    settings: Settings,
}

/// A server's HTTP/2 connection on one worker: made, or being made by one request while the
/// others wait for it (`None` until the attempt ends; `Some(None)`: it failed).
enum H2Slot {
    Ready(Shared),
    Connecting(watch::Receiver<Option<Option<Shared>>>),
}

/// One worker's connections. Idle HTTP/1.1 connections are found by the server's
/// [`Pools::key`], with no hashing per request; the HTTP/2 map is keyed by configured server
/// addresses, never by client input, so a fast non-keyed hash is safe there.
#[derive(Default)]
struct WorkerPool {
    idle: Mutex<Vec<VecDeque<Idle>>>,
    h2: Mutex<FxHashMap<Authority, H2Slot>>,
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
            Proto::H2 => Either::Right(Box::pin(self.send_h2(worker, authority, req, connected))),
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
                    return Ok(ResponseBody::wrap(resp, conn.1, Some(checkin)));
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

    async fn send_h2(
        &self,
        worker: usize,
        authority: &Authority,
        mut req: Request<UpstreamBody>,
        connected: &mut Option<ConnectTiming>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        // The shared connection is tried once; a request it gave back unsent goes over a new
        // one of its own, and no further.
        let mut may_reuse = true;
        loop {
            let Shared {
                mut sender,
                timing,
                settings,
            } = if may_reuse {
                match self.shared_h2(worker, authority).await? {
                    Some(shared) => shared,
                    // The connection waited for went away unmade: look again.
                    None => continue,
                }
            } else {
                let shared = Box::pin(self.connect_h2(authority)).await?;
                lock(&self.0.workers[worker].h2)
                    .insert(authority.clone(), H2Slot::Ready(shared.clone()));
                shared
            };
            *connected = Some(timing);
            // RFC 8441 3: `:protocol` only to a server that said it takes it.
            if req.extensions().get::<Protocol>().is_some() && !settings.allow_connect().await {
                return Err(UpstreamError::NoExtendedConnect);
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(ResponseBody::wrap(resp, timing, None)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if may_reuse => {
                        // Whatever refused it, new requests should not meet it again.
                        let mut h2 = lock(&self.0.workers[worker].h2);
                        if matches!(h2.get(authority), Some(H2Slot::Ready(_))) {
                            h2.remove(authority);
                        }
                        may_reuse = false;
                        req = unsent;
                    }
                    _ => return Err(UpstreamError::Send(e.into_error())),
                },
            }
        }
    }

    /// The worker's open HTTP/2 connection to `authority`: the one there is, the one another
    /// request is making (waited for; its failure is this request's), or a new one. `None`
    /// when the request making it was dropped before it finished.
    async fn shared_h2(
        &self,
        worker: usize,
        authority: &Authority,
    ) -> Result<Option<Shared>, UpstreamError> {
        let slots = &self.0.workers[worker].h2;
        enum Found {
            Open(Shared),
            Wait(watch::Receiver<Option<Option<Shared>>>),
            Make(watch::Sender<Option<Option<Shared>>>),
        }
        let found = {
            let mut h2 = lock(slots);
            match h2.get(authority) {
                Some(H2Slot::Ready(s)) if !s.sender.is_closed() => Found::Open(s.clone()),
                Some(H2Slot::Connecting(rx)) => Found::Wait(rx.clone()),
                _ => {
                    let (tx, rx) = watch::channel(None);
                    h2.insert(authority.clone(), H2Slot::Connecting(rx));
                    Found::Make(tx)
                }
            }
        };
        let mut rx = match found {
            Found::Open(shared) => return Ok(Some(shared)),
            Found::Make(tx) => return self.make_h2(slots, authority, tx).await.map(Some),
            Found::Wait(rx) => rx,
        };
        match rx.wait_for(Option::is_some).await {
            Ok(outcome) => match outcome.clone().flatten() {
                Some(shared) => Ok(Some(shared)),
                None => Err(UpstreamError::Connect(ConnectError::Shared)),
            },
            Err(_) => Ok(None),
        }
    }

    /// Makes the connection the `Connecting` slot of `authority` stands for, and tells the
    /// requests waiting for it.
    async fn make_h2(
        &self,
        slots: &Mutex<FxHashMap<Authority, H2Slot>>,
        authority: &Authority,
        tx: watch::Sender<Option<Option<Shared>>>,
    ) -> Result<Shared, UpstreamError> {
        /// Clears the slot if this request is dropped half-way (its waiters then look again).
        struct Unfinished<'a> {
            slots: &'a Mutex<FxHashMap<Authority, H2Slot>>,
            authority: &'a Authority,
            armed: bool,
        }
        impl Drop for Unfinished<'_> {
            fn drop(&mut self) {
                if !self.armed {
                    return;
                }
                let mut h2 = lock(self.slots);
                if matches!(h2.get(self.authority), Some(H2Slot::Connecting(_))) {
                    h2.remove(self.authority);
                }
            }
        }
        let mut unfinished = Unfinished {
            slots,
            authority,
            armed: true,
        };
        let made = Box::pin(self.connect_h2(authority)).await;
        let shared = made.as_ref().ok().cloned();
        {
            let mut h2 = lock(slots);
            match &shared {
                Some(s) => h2.insert(authority.clone(), H2Slot::Ready(s.clone())),
                None => h2.remove(authority),
            };
        }
        unfinished.armed = false;
        tx.send_replace(Some(shared));
        made
    }

    async fn connect_h2(&self, authority: &Authority) -> Result<Shared, UpstreamError> {
        let (stream, timing) = self.connect(authority).await?;
        let (stream, heard) = FirstRead::new(stream);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONN_WINDOW)
            .max_send_buf_size(H2_MAX_SEND_BUF)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Connect(ConnectError::Handshake(e)))?;
        let (conn, settings) =
            peer::drive(conn, heard, |c| c.is_extended_connect_protocol_enabled());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "server connection ended");
            }
        });
        Ok(Shared {
            sender,
            timing,
            settings,
        })
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
        lock(&pool.h2).retain(|_, slot| match slot {
            H2Slot::Ready(s) => !s.sender.is_closed(),
            H2Slot::Connecting(_) => true,
        });
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

/// A server's response body; reading it to its end returns the connection to its pool.
pub struct ResponseBody {
    inner: Incoming,
    timing: ConnectTiming,
    checkin: Option<Checkin>,
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("pooled", &self.checkin.is_some())
            .finish_non_exhaustive()
    }
}

impl ResponseBody {
    fn wrap(
        resp: Response<Incoming>,
        timing: ConnectTiming,
        checkin: Option<Checkin>,
    ) -> Response<ResponseBody> {
        let (parts, inner) = resp.into_parts();
        // After a 101 the connection belongs to the tunnel.
        let checkin = checkin.filter(|_| parts.status != StatusCode::SWITCHING_PROTOCOLS);
        let mut body = ResponseBody {
            inner,
            timing,
            checkin,
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        Response::from_parts(parts, body)
    }

    fn release(&mut self) {
        if let Some(c) = self.checkin.take() {
            c.release(self.timing);
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
            Some(Err(_)) => this.checkin = None,
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
