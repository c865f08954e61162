//! HTTP/2 connections to servers (`proto = "h2"`), per worker and server.
//!
//! Requests share a server's connection up to the number of concurrent streams the server
//! allows (`SETTINGS_MAX_CONCURRENT_STREAMS`, as [`peer`](crate::upstream::peer) follows it);
//! when every connection is full the worker opens another, as HAProxy does, up to
//! [`MAX_CONNS_PER_SERVER`]. Past that, requests queue for a stream on the least busy one.
//! The first connections in the list are filled first, so that the extra ones fall idle once
//! the load drops; a connection with no stream begun for about [`POOL_IDLE_TIMEOUT`] is
//! closed, and one whose server stops answering its pings is closed by the HTTP/2 library.
//!
//! A request that finds every connection full makes a new one, or waits for one being made
//! when that one will have room for it too (as far as the server's other connections tell);
//! so a server that allows few streams gets several connections made at once. A new
//! connection is offered to other requests once the server's first SETTINGS have arrived. If
//! its connect fails, or those SETTINGS do not come within `timeout connect`, the requests
//! that waited go to the least busy open connection or, with none open, fail (as connect
//! failures, which `retries` may send elsewhere).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::Authority;
use hyper::client::conn::http2;
use hyper::ext::Protocol;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::{
    After, POOL_IDLE_TIMEOUT, Pools, ResponseBody, SWEEP_EVERY, Unprocessed, WorkerPool, lock,
};
use crate::upstream::body::UpstreamBody;
use crate::upstream::connect::{ConnectError, ConnectTiming};
use crate::upstream::peer::{self, Said, Settings, WakeOnRead};
use crate::upstream::pool::UpstreamError;

/// The flow-control window of each stream. What a server sent that the client has not taken
/// yet waits in wasp's memory, up to this much per stream (hyper's default, 2 MiB, let a client
/// that stops reading park 2 MiB per stream for `timeout client`). 256 KiB still keeps a
/// stream at full speed up to about 2 Gbit/s at 1 ms of round trip; on loopback, through a
/// second wasp, a 1 GB download ran at 540 to 780 MB/s against 700 to 1030 MB/s with hyper's
/// defaults (a shared machine; 1 MiB measured 760 to 810 MB/s).
const STREAM_WINDOW: u32 = 256 * 1024;
/// The connection's window, shared by every client's streams on it. hyper's default (5 MiB,
/// under three default stream windows) let three streams of clients that grant no window
/// stall every other stream on the connection until `timeout client` cut them. At 256 stream
/// windows, it runs out only after the server's own limit on concurrent streams (100 to 250
/// for common servers) has: a window is credit, not memory, and what is held is bounded by
/// the streams' own windows.
const CONN_WINDOW: u32 = 256 * STREAM_WINDOW;
/// Request body bytes queued per stream beyond what the server's window lets out. hyper's
/// default, 1 MiB, let a client park that much of its uploads per stream with a server that
/// stops reading; 64 KiB as on the client side (`proxy::listener`). Measured: a 500 MB upload
/// through a `proto = "h2"` backend on loopback, 670 to 840 MB/s with 1 MiB, 670 to 930 MB/s
/// with 64 KiB.
const MAX_SEND_BUF: usize = 64 * 1024;
/// Connections to one server per worker past which requests wait for a stream rather than
/// open another: what a server that allows few streams, or none, can make a worker open.
const MAX_CONNS_PER_SERVER: usize = 32;
/// Streams a connection being made is counted on for when none of the server's connections is
/// open to tell (otherwise, the largest limit among them): the 100 the HTTP/2 library itself
/// assumes of a server it has not heard from yet.
const ASSUMED_STREAMS: usize = 100;
/// Sweeps in a row that find a connection unused before it is closed.
const QUIET_SWEEPS: u32 = (POOL_IDLE_TIMEOUT.as_secs() / SWEEP_EVERY.as_secs()) as u32;

/// A server's HTTP/2 connection, as requests use it: a sender of their own, and one shared
/// state (a request clones the two, nothing more).
#[derive(Clone)]
pub(super) struct Shared {
    sender: http2::SendRequest<UpstreamBody>,
    state: Arc<State>,
}

/// What is known of a connection, and what it carries.
struct State {
    timing: ConnectTiming,
    /// What the server's settings allow.
    settings: Settings,
    /// Streams open: requests sent or being sent whose response has not ended.
    open: AtomicUsize,
    /// Whether a stream began since the last sweep.
    used: AtomicBool,
    /// Sweeps in a row that found it unused (only the sweep touches it).
    quiet: AtomicU32,
}

impl Shared {
    fn open(&self) -> usize {
        self.state.open.load(Ordering::Relaxed)
    }

    fn has_room(&self) -> bool {
        self.open() < self.state.settings.max_streams()
    }

    /// Counts a stream begun on this connection.
    fn begin(&self) -> OpenStream {
        self.state.open.fetch_add(1, Ordering::Relaxed);
        self.state.used.store(true, Ordering::Relaxed);
        OpenStream(Arc::clone(&self.state))
    }
}

/// A request's stream on a shared connection, counted open until dropped.
pub(crate) struct OpenStream(Arc<State>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How the making of a connection ended: `Some(true)` made, `Some(false)` failed.
type Made = watch::Receiver<Option<bool>>;

/// A server's connections on one worker.
#[derive(Default)]
pub(super) struct Conns {
    /// Open connections, filled in this order.
    open: Vec<Shared>,
    /// Connections being made, each by one request.
    making: Vec<Made>,
    /// Requests waiting for a connection being made.
    waiting: usize,
}

/// Where a request's stream goes.
enum Found {
    Open(Shared, OpenStream),
    /// Wait for this connection being made (counted in [`Conns::waiting`] until the
    /// [`Waiting`] guard is dropped), then look again.
    Wait(Made),
    Make(watch::Sender<Option<bool>>),
    /// Nothing open, and the connection waited for failed.
    Failed,
}

impl Conns {
    /// The first open connection with room for a stream; else a connection being made that
    /// will have room for this request too, or a new one to make. With `fallback` (the one
    /// waited for failed), the least busy open one instead; at [`MAX_CONNS_PER_SERVER`], the
    /// least busy once those being made are open.
    fn find(&mut self, fallback: bool) -> Found {
        self.open.retain(|c| !c.sender.is_closed());
        if let Some(c) = self.open.iter().find(|c| c.has_room()) {
            return Found::Open(c.clone(), c.begin());
        }
        if fallback {
            return match self.least_busy() {
                Some((c, stream)) => Found::Open(c, stream),
                None => Found::Failed,
            };
        }
        if self.open.len() + self.making.len() >= MAX_CONNS_PER_SERVER {
            // At the cap: once the connections being made are open, the least busy of all
            // (not the few open before them).
            if let Some(made) = self.making.last() {
                self.waiting += 1;
                return Found::Wait(made.clone());
            }
            let (c, stream) = self.least_busy().expect("connections at the cap");
            return Found::Open(c, stream);
        }
        // Each connection being made takes its maker's request, and as many more as the
        // server is likely to allow.
        let per_conn = self
            .open
            .iter()
            .map(|c| c.state.settings.max_streams())
            .max()
            .unwrap_or(ASSUMED_STREAMS);
        let room = self.making.len() * per_conn.saturating_sub(1);
        if let Some(made) = self.making.last()
            && self.waiting < room
        {
            self.waiting += 1;
            return Found::Wait(made.clone());
        }
        let (tx, rx) = watch::channel(None);
        self.making.push(rx);
        Found::Make(tx)
    }

    fn least_busy(&self) -> Option<(Shared, OpenStream)> {
        let c = self.open.iter().min_by_key(|c| c.open())?;
        Some((c.clone(), c.begin()))
    }

    /// Forgets the connection whose state is `state` (it refused a request).
    fn forget(&mut self, state: &Arc<State>) {
        self.open.retain(|c| !Arc::ptr_eq(&c.state, state));
    }

    /// Ends the making that `tx` tells waiting requests about.
    fn made(&mut self, tx: &watch::Sender<Option<bool>>) {
        let mine = tx.subscribe();
        self.making.retain(|rx| !rx.same_channel(&mine));
    }

    /// Forgets the connections that are closed or have been unused for [`QUIET_SWEEPS`]
    /// sweeps (dropping the last sender of a connection with no stream closes it).
    pub(super) fn sweep(&mut self) {
        self.open.retain(|c| {
            if c.sender.is_closed() {
                return false;
            }
            let unused = c.open() == 0 && !c.state.used.swap(false, Ordering::Relaxed);
            if !unused {
                c.state.quiet.store(0, Ordering::Relaxed);
                return true;
            }
            c.state.quiet.fetch_add(1, Ordering::Relaxed) + 1 < QUIET_SWEEPS
        });
    }
}

/// The connections of server `key` in `lists`.
fn conns(lists: &mut Vec<Conns>, key: usize) -> &mut Conns {
    if lists.len() <= key {
        lists.resize_with(key + 1, Conns::default);
    }
    &mut lists[key]
}

/// A request counted among those waiting for server `key`'s connections being made.
struct Waiting<'a> {
    pool: &'a WorkerPool,
    key: usize,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut lists = lock(&self.pool.h2);
        let conns = conns(&mut lists, self.key);
        conns.waiting = conns.waiting.saturating_sub(1);
    }
}

impl Pools {
    pub(super) async fn send_h2(
        &self,
        worker: usize,
        key: usize,
        authority: &Authority,
        mut req: Request<UpstreamBody>,
        connected: &mut Option<ConnectTiming>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let pool = &self.0.workers[worker];
        // A request that a connection gave back unsent (it was closing) looks once more,
        // with that connection forgotten.
        let mut looks = 2;
        loop {
            looks -= 1;
            let (shared, stream) = self.find_h2(pool, key, authority).await?;
            let Shared { mut sender, state } = shared;
            let timing = state.timing;
            *connected = Some(timing);
            // RFC 8441 3: `:protocol` only to a server that said it takes it.
            if req.extensions().get::<Protocol>().is_some() && !state.settings.allow_connect().await
            {
                return Err(UpstreamError::NoExtendedConnect);
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(ResponseBody::wrap(resp, timing, After::Stream(stream))),
                Err(mut e) => {
                    let unsent = e.take_message();
                    let error = e.into_error();
                    let why = super::unprocessed(&error);
                    if unsent.is_some() || why == Some(Unprocessed::GoingAway) {
                        // A connection closing or going away: new requests should not meet
                        // it again.
                        conns(&mut lock(&pool.h2), key).forget(&state);
                    }
                    match unsent {
                        Some(unsent) if looks > 0 => req = unsent,
                        Some(_) => return Err(UpstreamError::Refused(error)),
                        None if why.is_some() => return Err(UpstreamError::Refused(error)),
                        None => return Err(UpstreamError::Send(error)),
                    }
                }
            }
        }
    }

    /// A stream for a request to server `key` on the worker's `pool`: on an open connection
    /// with room, on one being made (waited for), or on a new one.
    async fn find_h2(
        &self,
        pool: &Arc<WorkerPool>,
        key: usize,
        authority: &Authority,
    ) -> Result<(Shared, OpenStream), UpstreamError> {
        let mut fallback = false;
        loop {
            let found = conns(&mut lock(&pool.h2), key).find(fallback);
            match found {
                Found::Open(shared, stream) => return Ok((shared, stream)),
                Found::Make(tx) => return self.make_h2(pool, key, authority, tx).await,
                Found::Failed => return Err(UpstreamError::Connect(ConnectError::Shared)),
                // Look again once it is made or failed (or its maker was dropped half-way).
                Found::Wait(mut made) => {
                    let _waiting = Waiting { pool, key };
                    if let Ok(outcome) = made.wait_for(Option::is_some).await {
                        fallback = *outcome == Some(false);
                    }
                }
            }
        }
    }

    /// Makes the connection that `tx` tells the waiting requests about, and takes a stream
    /// on it (on a failure, on the least busy open connection, if any). Other requests get
    /// streams on it once its settings are known ([`Pools::enlist`]).
    async fn make_h2(
        &self,
        pool: &Arc<WorkerPool>,
        key: usize,
        authority: &Authority,
        tx: watch::Sender<Option<bool>>,
    ) -> Result<(Shared, OpenStream), UpstreamError> {
        /// Ends the making if this request is dropped half-way (its waiters then look again).
        struct Unfinished<'a> {
            pool: &'a WorkerPool,
            key: usize,
            tx: Option<watch::Sender<Option<bool>>>,
        }
        impl Drop for Unfinished<'_> {
            fn drop(&mut self) {
                if let Some(tx) = &self.tx {
                    conns(&mut lock(&self.pool.h2), self.key).made(tx);
                }
            }
        }
        let mut unfinished = Unfinished {
            pool,
            key,
            tx: Some(tx),
        };
        let made = Box::pin(self.connect_h2(authority)).await;
        let tx = unfinished.tx.take().expect("the making's sender");
        match made {
            Ok(shared) => {
                let stream = shared.begin();
                self.enlist(pool, key, shared.clone(), tx);
                Ok((shared, stream))
            }
            Err(e) => {
                let found = {
                    let mut lists = lock(&pool.h2);
                    let conns = conns(&mut lists, key);
                    conns.made(&tx);
                    conns.least_busy()
                };
                tx.send_replace(Some(false));
                found.ok_or(e)
            }
        }
    }

    /// Offers a new connection to other requests once the server's first SETTINGS (its
    /// stream limit) are known: till then, the HTTP/2 library assumes 100 streams, and
    /// requests would pile onto a connection that may take fewer. A server that has not sent
    /// them within the connect timeout has not finished connecting: its connection is left to
    /// the request that made it, and closes with it. `tx` tells the requests waiting for it.
    fn enlist(
        &self,
        pool: &Arc<WorkerPool>,
        key: usize,
        shared: Shared,
        tx: watch::Sender<Option<bool>>,
    ) {
        let pool = Arc::clone(pool);
        let limit = self.0.connector.timeout();
        tokio::spawn(async move {
            let heard = tokio::time::timeout(limit, shared.state.settings.known())
                .await
                .is_ok();
            let usable = heard && !shared.sender.is_closed();
            {
                let mut lists = lock(&pool.h2);
                let conns = conns(&mut lists, key);
                if usable {
                    conns.open.push(shared);
                } else {
                    tracing::debug!("server connection dropped: no SETTINGS within {limit:?}");
                }
                conns.made(&tx);
            }
            if usable {
                pool.sweep_soon();
            }
            tx.send_replace(Some(usable));
        });
    }

    async fn connect_h2(&self, authority: &Authority) -> Result<Shared, UpstreamError> {
        let (stream, timing) = self.connect(authority).await?;
        handshake(stream, timing)
            .await
            .map_err(|e| UpstreamError::Connect(ConnectError::Handshake(e)))
    }
}

/// How often a connection with streams open pings a server it has not heard from, and how
/// long it waits for the answer before it closes the connection (hyper's keep-alive): a server
/// that stops answering on one connection does not keep its requests going there.
const PING_EVERY: Duration = Duration::from_secs(20);

/// Starts HTTP/2 on a connection made as `timing` says, and the task that drives it.
async fn handshake<S>(stream: S, timing: ConnectTiming) -> Result<Shared, hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (stream, heard) = WakeOnRead::new(stream);
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_send_buf_size(MAX_SEND_BUF)
        .keep_alive_interval(PING_EVERY)
        .keep_alive_timeout(PING_EVERY)
        .handshake(TokioIo::new(stream))
        .await?;
    let (conn, settings) = peer::drive(conn, heard, |c| Said {
        extended_connect: c.is_extended_connect_protocol_enabled(),
        max_streams: c.current_max_send_streams(),
    });
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "server connection ended");
        }
    });
    Ok(Shared {
        sender,
        state: Arc::new(State {
            timing,
            settings,
            open: AtomicUsize::new(0),
            used: AtomicBool::new(false),
            quiet: AtomicU32::new(0),
        }),
    })
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use tokio::time::Instant;

    use super::*;

    /// An HTTP/2 connection to an in-memory server that allows `max_streams` concurrent
    /// streams, once the server's settings are known; and the server's end, which closes
    /// the connection when dropped.
    async fn connection(max_streams: u32) -> (Shared, tokio::task::JoinHandle<()>) {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(max_streams)
                .serve_connection(TokioIo::new(far), service)
                .await;
        });
        let timing = ConnectTiming {
            established: Instant::now(),
            took: Duration::ZERO,
        };
        let shared = handshake(near, timing).await.unwrap();
        shared.state.settings.known().await;
        assert_eq!(shared.state.settings.max_streams(), max_streams as usize);
        (shared, server)
    }

    fn opened(found: Found) -> (Shared, OpenStream) {
        match found {
            Found::Open(shared, stream) => (shared, stream),
            _ => panic!("expected a stream on an open connection"),
        }
    }

    #[tokio::test]
    async fn each_connection_is_filled_to_the_servers_limit_before_another_is_made() {
        let (first, _server) = connection(2).await;
        let mut conns = Conns::default();
        conns.open.push(first);
        let (_, one) = opened(conns.find(false));
        let (_, two) = opened(conns.find(false));
        assert_eq!(conns.open[0].open(), 2);
        // Full: the first request to find it so makes another; the next waits for that one,
        // which will have room for one more than its maker's request as far as the server's
        // other connection tells; the one after makes a third.
        let Found::Make(_tx) = conns.find(false) else {
            panic!("a full connection should make another")
        };
        assert!(matches!(conns.find(false), Found::Wait(_)));
        assert_eq!(conns.waiting, 1);
        let Found::Make(_tx2) = conns.find(false) else {
            panic!("the connection being made is spoken for")
        };
        assert_eq!(conns.making.len(), 2);
        // A stream that ends makes room again.
        drop(one);
        let (_, three) = opened(conns.find(false));
        // The connection waited for failed: the least busy open one takes the stream, over
        // its limit (the HTTP/2 library queues it).
        let (_, four) = opened(conns.find(true));
        assert_eq!(conns.open[0].open(), 3);
        drop((two, three, four));
        assert_eq!(conns.open[0].open(), 0);
        // With no connection open, a failed wait has nowhere to go.
        assert!(matches!(Conns::default().find(true), Found::Failed));
    }

    #[test]
    fn with_nothing_known_a_connection_being_made_is_counted_on_for_100_streams() {
        let mut conns = Conns::default();
        let Found::Make(tx) = conns.find(false) else {
            panic!("nothing open: make one")
        };
        for _ in 1..ASSUMED_STREAMS {
            assert!(matches!(conns.find(false), Found::Wait(_)));
        }
        assert!(matches!(conns.find(false), Found::Make(_)));
        // A making that ends leaves the list; its waiters' guards are theirs to drop.
        conns.made(&tx);
        assert_eq!(conns.making.len(), 1);
        assert_eq!(conns.waiting, ASSUMED_STREAMS - 1);
        // Its failure leaves the waiters nowhere to go.
        assert!(matches!(conns.find(true), Found::Failed));
    }

    #[tokio::test]
    async fn at_the_connection_cap_requests_queue_on_the_least_busy() {
        let mut conns = Conns::default();
        let mut servers = Vec::new();
        let mut streams = Vec::new();
        for i in 0..MAX_CONNS_PER_SERVER {
            let (shared, server) = connection(1).await;
            // Every connection full, the last one least so.
            streams.push(shared.begin());
            if i + 1 < MAX_CONNS_PER_SERVER {
                streams.push(shared.begin());
            }
            conns.open.push(shared);
            servers.push(server);
        }
        let (shared, _stream) = opened(conns.find(false));
        assert!(Arc::ptr_eq(
            &shared.state,
            &conns.open[MAX_CONNS_PER_SERVER - 1].state
        ));
        assert!(conns.making.is_empty(), "no connection past the cap");
        // At the cap with connections still being made, a request waits for them rather than
        // queue on the one open so far.
        let mut cold = Conns::default();
        cold.open.push(conns.open[0].clone());
        let makers: Vec<_> = (1..MAX_CONNS_PER_SERVER)
            .map(|_| {
                let (tx, rx) = watch::channel(None);
                cold.making.push(rx);
                tx
            })
            .collect();
        assert!(matches!(cold.find(false), Found::Wait(_)));
        assert_eq!(cold.open[0].open(), 2, "no stream taken on the open one");
        drop(makers);
    }

    #[tokio::test]
    async fn connections_unused_for_the_idle_timeout_or_closed_are_forgotten() {
        let (busy, _busy_server) = connection(10).await;
        let (quiet, _quiet_server) = connection(10).await;
        let (closing, closing_server) = connection(10).await;
        let mut conns = Conns::default();
        conns
            .open
            .extend([busy.clone(), quiet.clone(), closing.clone()]);
        // One stream held open on the first, one begun and ended on the second.
        let held = busy.begin();
        drop(quiet.begin());
        closing_server.abort();
        let _ = closing_server.await;
        tokio::time::timeout(Duration::from_secs(10), async {
            while !closing.sender.is_closed() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the connection closes with its server");
        // The first sweep forgets the closed one; the second's use still counts.
        conns.sweep();
        assert_eq!(conns.open.len(), 2);
        for _ in 0..QUIET_SWEEPS - 1 {
            conns.sweep();
        }
        assert_eq!(
            conns.open.len(),
            2,
            "unused for one sweep less than the limit"
        );
        conns.sweep();
        assert_eq!(conns.open.len(), 1);
        assert!(Arc::ptr_eq(&conns.open[0].state, &busy.state));
        // A stream open the whole time keeps its connection.
        for _ in 0..QUIET_SWEEPS * 2 {
            conns.sweep();
        }
        assert_eq!(conns.open.len(), 1);
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_stops_answering_loses_its_connection_to_the_pings() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(64 * 1024);
        // Its SETTINGS (an empty frame), then silence: whatever comes is read and ignored.
        let server = tokio::spawn(async move {
            far.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
            let mut buf = vec![0u8; 4096];
            while far.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        let timing = ConnectTiming {
            established: Instant::now(),
            took: Duration::ZERO,
        };
        let shared = handshake(near, timing).await.unwrap();
        shared.state.settings.known().await;
        let mut sender = shared.sender.clone();
        let req = Request::get("http://server/")
            .body(UpstreamBody::Empty)
            .unwrap();
        let waiting = tokio::spawn(async move { sender.send_request(req).await });
        // A ping after PING_EVERY without a frame, and the connection closed PING_EVERY later.
        tokio::time::sleep(PING_EVERY * 3).await;
        assert!(
            shared.sender.is_closed(),
            "closed for the missing ping answer"
        );
        assert!(
            waiting.await.unwrap().is_err(),
            "its request fails, and does not hang"
        );
        server.abort();
    }
}
