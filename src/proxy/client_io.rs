//! The client side of a connection, with HAProxy's client timeouts enforced at the socket.
//!
//! hyper has no body or idle timeouts, and its header-read timeout closes silently where
//! HAProxy answers 408. This wrapper owns those rules, driven by what the connection is doing:
//!
//! - **Waiting for a request head** (nothing in flight): the head must arrive within
//!   `http_request`, counted from accept for the first request and from the first byte for later
//!   ones, with no pause longer than `client` (from accept, or the last bytes of the head);
//!   otherwise the client gets `408 Request Timeout` and the connection closes. An idle
//!   keep-alive connection that sends nothing for `http_keep_alive` is closed silently.
//! - **A request in flight**: no read deadline here (request bodies have their own idle
//!   timeout, and a slow server is `timeout server`'s business).
//! - **HTTP/2**: a connection with no stream in flight is shut down `http_keep_alive` after it
//!   became idle (its accept, or the end of its last stream), whatever frames (PINGs,
//!   SETTINGS, an unfinished header block) arrive meanwhile, as HAProxy closes an idle HTTP/2
//!   connection: without that a client could hold its connection, and a place under
//!   `maxconn`, for ever. The shutdown is hyper's graceful one, asked for through the
//!   connection's [`StopHandle`]: a GOAWAY, so that the client knows no request it sends from
//!   then on will be served and can retry it elsewhere, and a PING whose answer lets hyper
//!   send the final GOAWAY (the last stream it took) and close. A client that does not
//!   answer, and has no stream in flight, is cut [`H2_GOAWAY_GRACE`] after the shutdown began,
//!   whoever began it: an idle timeout here, or the proxy's graceful stop.
//! - **Writing**: a client that accepts no bytes for `client` (a blocked write) is cut. While
//!   an HTTP/1 client's socket refuses bytes, a large response's body hands hyper no more data
//!   ([`ConnShared::client_blocked`]): what waits for a client that does not read is what
//!   hyper already holds (one server read), not as much as its write buffer takes (64 KiB
//!   more), and the server connection is not read meanwhile.
//! - **HTTP/2 flow control**: a client can stop a response without ever blocking a write, by
//!   granting no window: its stream just stops asking for data. Each HTTP/2 response body
//!   reports when it handed data over and when more was asked for ([`StreamProgress`]); a
//!   response that waited `client` for the client to take its data closes the connection, as
//!   HAProxy does, which releases every stream's server connection. The check needs no timer
//!   per stream: the connection's read timer, which waits anyway while streams are in flight,
//!   is armed at the earliest such deadline, and a scan of the connection's streams when it
//!   fires finds the next one. HTTP/1 connections never register a stream.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf, Take};
use tokio::time::Instant;

use crate::clock;
use crate::proxy::graceful::{OpenGuard, StopHandle};
use crate::proxy::timer::LazyTimer;
use crate::upstream::connect::read_at_most;

/// The bytes of an HTTP/1.1 408, written straight to the socket when a head times out.
const RESPONSE_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 16\r\nconnection: close\r\n\r\nrequest timeout\n";
/// The length of [`RESPONSE_408`]'s body, for the byte counters.
pub(crate) const BODY_408_LEN: u64 = 16;
/// The HTTP/2 connection preface (RFC 9113, section 3.4).
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Its request line, `PRI * HTTP/2.0`: enough to tell HTTP/2 from HTTP/1 for the timeouts.
const H2_PREFACE_START: &[u8] = H2_PREFACE.split_at(14).0;
/// How long an HTTP/2 connection being shut down may stay open with no stream in flight: time
/// for the client to answer the shutdown's PING (one round trip), after which hyper closes it
/// itself. A client that has not answered by then is cut.
pub(crate) const H2_GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// State shared between a connection's socket wrapper and the requests it carries.
#[derive(Debug)]
pub struct ConnShared {
    accepted: Instant,
    /// Requests whose head was complete, ever; tells the socket a head has been consumed even
    /// when its response was over before the socket was next polled.
    requests: AtomicU64,
    in_flight: AtomicUsize,
    timed_out_head: AtomicBool,
    /// When the first byte of the latest request head arrived, in ns since `accepted`.
    head_start_ns: AtomicU64,
    /// The HTTP/2 response bodies of this connection (dead ones are pruned as it goes).
    streams: Mutex<Vec<Weak<StreamProgress>>>,
    /// An HTTP/2 connection's socket task, woken when its last stream ends: the stream ends
    /// in a task of its own, and the idle clock starts then, whether or not anything else
    /// wakes the connection. Never registered on HTTP/1.
    idle: AtomicWaker,
    /// The connection's stop signal: an idle HTTP/2 connection asks for its own graceful
    /// shutdown with it.
    stop: StopHandle,
    /// The socket refused the last write: the client is not taking data.
    write_blocked: AtomicBool,
    /// A response body waiting for the client to take data ([`Self::client_blocked`]).
    writable: AtomicWaker,
    /// The connection's place among the open ones ([`Self::counted_open`]).
    open: Option<OpenGuard>,
}

impl Default for ConnShared {
    /// State for a connection that belongs to no stop registry.
    fn default() -> Self {
        Self::new(StopHandle::default())
    }
}

impl ConnShared {
    /// State for a new connection whose stop signal is `stop`.
    pub fn new(stop: StopHandle) -> Self {
        Self {
            accepted: clock::now(),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            timed_out_head: AtomicBool::new(false),
            head_start_ns: AtomicU64::new(0),
            streams: Mutex::default(),
            idle: AtomicWaker::new(),
            stop,
            write_blocked: AtomicBool::new(false),
            writable: AtomicWaker::new(),
            open: None,
        }
    }

    /// Keeps the connection counted as open for as long as this state lives: an upgraded
    /// connection's tunnel holds it (through the socket, and its request's [`InFlight`]).
    pub fn counted_open(mut self, open: OpenGuard) -> Self {
        self.open = Some(open);
        self
    }

    /// Whether the client is not taking data (the socket refused the last write); if so, the
    /// task of `cx` is woken when a write goes through again. A response body holds its data
    /// back meanwhile: hyper would otherwise buffer up to 64 KiB more for a client that may
    /// never read it, and a server read for each poll.
    pub fn client_blocked(&self, cx: &Context<'_>) -> bool {
        if !self.write_blocked.load(Ordering::Acquire) {
            return false;
        }
        self.writable.register(cx.waker());
        // A write may have gone through between the load and the registration.
        self.write_blocked.load(Ordering::Acquire)
    }

    /// Asks the connection to shut down gracefully: it finishes what is in flight and takes
    /// nothing new (an HTTP/2 client gets a GOAWAY).
    pub fn shut_down(&self) {
        self.stop.stop();
    }

    fn set_write_blocked(&self, blocked: bool) {
        if blocked {
            self.write_blocked.store(true, Ordering::Release);
        } else if self.write_blocked.swap(false, Ordering::AcqRel) {
            self.writable.wake();
        }
    }

    /// When the first byte of the current HTTP/1 request head arrived (for HTTP/2, when the
    /// connection last became idle or accepted).
    pub fn head_started(&self) -> Instant {
        self.accepted + Duration::from_nanos(self.head_start_ns.load(Ordering::Relaxed))
    }

    fn mark_head_start(&self, at: Instant) {
        let ns = u64::try_from((at - self.accepted).as_nanos()).unwrap_or(u64::MAX);
        self.head_start_ns.store(ns, Ordering::Relaxed);
    }

    /// The requests whose head was complete so far, the current one included.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Acquire)
    }

    /// Marks a request as in flight until the returned guard is dropped (when its response
    /// has been sent or abandoned).
    pub fn begin_request(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            shared: Arc::clone(self),
        }
    }

    /// Keeps the connection busy (no head or idle clock) until the returned guard is dropped:
    /// held by an HTTP/1 request body until it has all arrived, which may be after its
    /// response (an early answer). The bytes still coming are that body's, not a new head.
    pub fn hold_for_body(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            shared: Arc::clone(self),
        }
    }

    /// Whether the connection ended because a request head did not arrive in time (a 408).
    pub fn timed_out_head(&self) -> bool {
        self.timed_out_head.load(Ordering::Acquire)
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// A new HTTP/2 response body's progress, which the connection's stall check will watch.
    pub fn watch_stream(&self) -> Arc<StreamProgress> {
        let progress = Arc::new(StreamProgress {
            base: self.accepted,
            waiting_since_ns: AtomicU64::new(0),
        });
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if streams.len() == streams.capacity() {
            // Before the list grows: amortised, each entry is looked at once per growth.
            streams.retain(|w| w.strong_count() > 0);
        }
        streams.push(Arc::downgrade(&progress));
        progress
    }

    /// When the connection's streams must be looked at again: `Err` when a response has been
    /// waiting for `limit` for the client to take its data (at `now`), else the earliest
    /// instant one could have (`now + limit` when none is waiting).
    fn next_stall(&self, now: Instant, limit: Duration) -> Result<Instant, ()> {
        let mut next = now + limit;
        let mut stalled = false;
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        streams.retain(|w| {
            let Some(progress) = w.upgrade() else {
                return false;
            };
            if let Some(since) = progress.waiting_since() {
                if since + limit <= now {
                    stalled = true;
                }
                next = next.min(since + limit);
            }
            true
        });
        if stalled { Err(()) } else { Ok(next) }
    }
}

/// Where an HTTP/2 response body stands with its client: waiting since when for the client to
/// take the data it handed over (the stream asks for more only once the client's flow-control
/// window and the send buffer let it), or not waiting (asked for more, or not started).
#[derive(Debug)]
pub struct StreamProgress {
    /// The connection's accept.
    base: Instant,
    /// ns since `base`, plus one; 0: not waiting.
    waiting_since_ns: AtomicU64,
}

impl StreamProgress {
    /// Data was handed over at `at`: waiting for the client from then.
    pub fn handed_over(&self, at: Instant) {
        let ns = u64::try_from((at - self.base).as_nanos()).unwrap_or(u64::MAX - 1);
        self.waiting_since_ns.store(ns + 1, Ordering::Relaxed);
    }

    /// More data was asked for: not waiting for the client.
    pub fn asked(&self) {
        self.waiting_since_ns.store(0, Ordering::Relaxed);
    }

    fn waiting_since(&self) -> Option<Instant> {
        match self.waiting_since_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(self.base + Duration::from_nanos(ns - 1)),
        }
    }
}

/// One request in flight on a connection.
#[derive(Debug)]
pub struct InFlight {
    shared: Arc<ConnShared>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.shared.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.idle.wake();
        }
    }
}

/// The client-side timeouts of a frontend.
#[derive(Debug, Clone, Copy)]
pub struct ClientTimeouts {
    pub client: Duration,
    pub http_request: Duration,
    pub http_keep_alive: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    /// Not told yet: the bytes so far (this many) are the start of the HTTP/2 preface, as
    /// those of an HTTP/1 method starting with `P` can be. Timed as HTTP/1 meanwhile.
    Unknown(usize),
    Http1,
    Http2,
}

impl Proto {
    /// What the connection is after `fresh` more bytes.
    fn after(self, fresh: &[u8]) -> Proto {
        let Proto::Unknown(seen) = self else {
            return self;
        };
        let rest = &H2_PREFACE_START[seen..];
        let n = fresh.len().min(rest.len());
        if fresh[..n] != rest[..n] {
            Proto::Http1
        } else if n == rest.len() {
            Proto::Http2
        } else {
            Proto::Unknown(seen + n)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request head. `first`: the connection's first request; `started`: some
    /// bytes of the head have arrived.
    AwaitingHead {
        since: Instant,
        first: bool,
        started: bool,
    },
    InFlight,
}

/// A client socket with the timeouts described in the module doc.
#[derive(Debug)]
pub struct ClientIo<IO> {
    /// The socket; its read limit is only set for a read that must stop at `max_head`.
    io: Take<IO>,
    shared: Arc<ConnShared>,
    timeouts: ClientTimeouts,
    proto: Proto,
    phase: Phase,
    /// `ConnShared::requests` as of the last phase update.
    seen_requests: u64,
    read_timer: LazyTimer,
    write_blocked_since: Option<Instant>,
    write_timer: LazyTimer,
    /// HTTP/2 with streams in flight: when to look for a stalled response next.
    stall_check: Instant,
    /// HTTP/2: when the connection's graceful shutdown was first seen (module doc).
    shutdown_since: Option<Instant>,
    /// HTTP/1: a request head is arriving, and the stop signal is held for it.
    holding: bool,
    /// HTTP/1: the longest request head (`max_header_size`). hyper refuses a head once its
    /// buffer holds that many bytes without the head's end, but a read can take more than
    /// that at once, and a head ending in it passed: reads stop at this many bytes of a head.
    max_head: usize,
    /// HTTP/1: the bytes of the current request head read so far.
    head_read: usize,
    /// HTTP/1: when the current request head (or, before its first byte, the connection's
    /// first request) last got bytes: `client` inactivity applies while a head arrives.
    head_active: Instant,
}

impl<IO: AsyncRead> ClientIo<IO> {
    /// `h2`: HTTP/2 was agreed by ALPN (otherwise the first bytes tell).
    pub fn new(io: IO, shared: Arc<ConnShared>, timeouts: ClientTimeouts, h2: bool) -> Self {
        let now = shared.accepted;
        Self {
            io: io.take(u64::MAX),
            shared,
            timeouts,
            proto: if h2 { Proto::Http2 } else { Proto::Unknown(0) },
            phase: Phase::AwaitingHead {
                since: now,
                first: true,
                started: false,
            },
            seen_requests: 0,
            read_timer: LazyTimer::default(),
            write_blocked_since: None,
            write_timer: LazyTimer::default(),
            stall_check: now,
            shutdown_since: None,
            holding: false,
            max_head: usize::MAX,
            head_read: 0,
            head_active: now,
        }
    }

    /// Makes request heads longer than `max` bytes fail exactly there (HTTP/1).
    pub fn max_head(mut self, max: usize) -> Self {
        self.max_head = max;
        self
    }

    pub fn get_ref(&self) -> &IO {
        self.io.get_ref()
    }

    /// Keeps `phase` in step with the requests: a new request means its head was complete
    /// (even if its response is already over), and no request in flight means idle.
    fn sync_phase(&mut self, now: Instant) {
        let busy = self.shared.in_flight() > 0;
        let requests = self.shared.requests.load(Ordering::Acquire);
        let idle = Phase::AwaitingHead {
            since: now,
            first: false,
            started: false,
        };
        if requests != self.seen_requests {
            self.seen_requests = requests;
            self.phase = if busy { Phase::InFlight } else { idle };
            self.head_read = 0;
            if self.holding {
                // The head arrived: a stop now finds a request in flight (hyper ends it with
                // `Connection: close`), not an idle connection.
                self.holding = false;
                self.shared.stop.release();
            }
        } else if self.phase == Phase::InFlight && !busy {
            self.phase = idle;
            self.head_read = 0;
        }
        if self.proto == Proto::Http2
            && self.shutdown_since.is_none()
            && self.shared.stop.stopping()
        {
            self.shutdown_since = Some(now);
        }
    }

    /// The instant at which waiting for more client bytes becomes a timeout, if any.
    fn read_deadline(&self) -> Option<Instant> {
        match (self.proto, self.phase) {
            (Proto::Http2, Phase::InFlight) => Some(self.stall_check),
            (_, Phase::InFlight) => None,
            (Proto::Http2, Phase::AwaitingHead { since, .. }) => match self.shutdown_since {
                None => Some(since + self.timeouts.http_keep_alive),
                Some(shutdown) => Some(since.max(shutdown) + H2_GOAWAY_GRACE),
            },
            (
                _,
                Phase::AwaitingHead {
                    since,
                    first,
                    started,
                },
            ) => {
                if first || started {
                    // The whole head within `http_request`, and no pause in it longer than
                    // `client`, as HAProxy applies both while it waits for a request.
                    let whole = since + self.timeouts.http_request;
                    Some(whole.min(self.head_active + self.timeouts.client))
                } else {
                    Some(since + self.timeouts.http_keep_alive)
                }
            }
        }
    }
}

impl<IO: AsyncRead> ClientIo<IO> {
    /// How much the next read may take when that may be less than `remaining` (the room in
    /// the reader's buffer): the rest of `max_head` while an HTTP/1 head is arriving.
    #[inline]
    fn head_room(&mut self, remaining: usize) -> Option<usize> {
        if self.max_head.saturating_sub(self.head_read) >= remaining {
            return None;
        }
        // The phase may not know yet that the head was taken (a request is in flight).
        self.sync_phase(clock::recent());
        if self.proto == Proto::Http2 || !matches!(self.phase, Phase::AwaitingHead { .. }) {
            return None;
        }
        // Nothing left: hyper, which holds the whole head so far, refuses it before reading.
        let room = self.max_head.saturating_sub(self.head_read);
        (room > 0).then_some(room)
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("client {what} timeout"))
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let max = this.head_room(buf.remaining()).unwrap_or(usize::MAX);
        match read_at_most(&mut this.io, max, cx, buf) {
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                if fresh.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                // Inactivity and head clocks: as exact as `clock::recent` (module doc).
                let now = clock::recent();
                if let Proto::Unknown(_) = this.proto {
                    this.proto = this.proto.after(fresh);
                    if this.proto == Proto::Http2 {
                        // The first bytes were timed as an HTTP/1 head's: not any more.
                        this.head_read = 0;
                        if this.holding {
                            this.holding = false;
                            this.shared.stop.release();
                        }
                    }
                }
                this.sync_phase(now);
                // HTTP/2 frames are no request head: its idle clock runs on (`read_deadline`).
                if this.proto != Proto::Http2
                    && let Phase::AwaitingHead {
                        since,
                        first,
                        started: false,
                    } = this.phase
                {
                    // The first request's clock runs from accept; later ones from their first byte.
                    let since = if first { since } else { now };
                    this.phase = Phase::AwaitingHead {
                        since,
                        first,
                        started: true,
                    };
                    this.shared.mark_head_start(now);
                    // Not idle any more: a graceful stop waits for this request to begin.
                    this.holding = true;
                    this.shared.stop.hold();
                }
                if this.proto != Proto::Http2 && matches!(this.phase, Phase::AwaitingHead { .. }) {
                    this.head_read += fresh.len();
                    this.head_active = now;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.proto == Proto::Http2 {
                    this.shared.idle.register(cx.waker());
                }
                this.sync_phase(clock::recent());
                loop {
                    let Some(deadline) = this.read_deadline() else {
                        return Poll::Pending;
                    };
                    if !this.read_timer.poll_expired(deadline, cx) {
                        return Poll::Pending;
                    }
                    let Phase::AwaitingHead { first, started, .. } = this.phase else {
                        // HTTP/2 streams in flight (no other in-flight phase has a deadline).
                        match this.shared.next_stall(Instant::now(), this.timeouts.client) {
                            Ok(next) => {
                                this.stall_check = next;
                                continue;
                            }
                            Err(()) => return Poll::Ready(Err(timed_out("write"))),
                        }
                    };
                    if this.proto != Proto::Http2 && (first || started) {
                        // Best effort: hyper is not writing while it waits for a head.
                        this.shared.timed_out_head.store(true, Ordering::Release);
                        let _ = Pin::new(this.io.get_mut()).poll_write(cx, RESPONSE_408);
                        let _ = Pin::new(this.io.get_mut()).poll_flush(cx);
                        return Poll::Ready(Err(timed_out("request")));
                    }
                    if this.proto == Proto::Http2 && this.shutdown_since.is_none() {
                        // Idle: a graceful shutdown (GOAWAY) first, then the grace.
                        this.shared.stop.stop();
                        this.shutdown_since = Some(deadline);
                        continue;
                    }
                    return Poll::Ready(Err(timed_out("idle")));
                }
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> ClientIo<IO> {
    fn on_write<T>(
        &mut self,
        res: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match res {
            Poll::Ready(r) => {
                if self.write_blocked_since.take().is_some() {
                    self.shared.set_write_blocked(false);
                }
                if r.is_ok() {
                    let now = clock::recent();
                    // A response just went out: if it ended the last request in flight, the
                    // idle clock starts now, whether or not hyper polls the read side again.
                    self.sync_phase(now);
                    if let Some(deadline) = self.read_deadline() {
                        let _ = self.read_timer.poll_expired(deadline, cx);
                    }
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let since = match self.write_blocked_since {
                    Some(since) => since,
                    None => {
                        self.shared.set_write_blocked(true);
                        *self.write_blocked_since.insert(clock::recent())
                    }
                };
                if self
                    .write_timer
                    .poll_expired(since + self.timeouts.client, cx)
                {
                    return Poll::Ready(Err(timed_out("write")));
                }
                Poll::Pending
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClientIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let res = Pin::new(this.io.get_mut()).poll_write(cx, buf);
        this.on_write(res, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let res = Pin::new(this.io.get_mut()).poll_write_vectored(cx, bufs);
        this.on_write(res, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.get_ref().is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let res = Pin::new(this.io.get_mut()).poll_flush(cx);
        this.on_write(res, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io.get_mut()).poll_shutdown(cx)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    use super::*;

    /// Runs `test` on a worker's runtime (whose wake-ups refresh `clock::recent`), with
    /// tokio's clock paused so that timeouts pass at once.
    fn paused(test: impl Future<Output = ()>) {
        crate::proxy::workers::runtime_builder()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(test);
    }

    /// A connection whose client sent `sent`, read once from the socket; and the client's
    /// end (kept open).
    async fn after_reading(sent: &[u8]) -> (ClientIo<DuplexStream>, DuplexStream, Arc<ConnShared>) {
        let (server_end, mut client) = duplex(4096);
        let shared = Arc::new(ConnShared::default());
        let mut io = ClientIo::new(server_end, Arc::clone(&shared), timeouts(), false);
        client.write_all(sent).await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        (io, client, shared)
    }

    /// [`after_reading`] the HTTP/2 connection preface.
    async fn after_h2_preface() -> (ClientIo<DuplexStream>, DuplexStream, Arc<ConnShared>) {
        after_reading(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await
    }

    /// Reads whatever comes until a read fails; that error.
    async fn read_until_error(io: &mut ClientIo<DuplexStream>) -> io::Error {
        let mut buf = [0u8; 64];
        loop {
            if let Err(e) = io.read(&mut buf).await {
                return e;
            }
        }
    }

    /// How long [`read_until_error`] takes, which must end in a timeout.
    async fn time_to_timeout(io: &mut ClientIo<DuplexStream>) -> Duration {
        let start = Instant::now();
        let err = read_until_error(io).await;
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        start.elapsed()
    }

    /// [`after_reading`] a whole HTTP/1.1 request head.
    async fn after_a_request_head() -> (ClientIo<DuplexStream>, DuplexStream, Arc<ConnShared>) {
        after_reading(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await
    }

    fn timeouts() -> ClientTimeouts {
        ClientTimeouts {
            client: Duration::from_secs(30),
            http_request: Duration::from_secs(10),
            http_keep_alive: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_408s_body_is_as_long_as_counted() {
        let head_end = RESPONSE_408
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap()
            + 4;
        assert_eq!((RESPONSE_408.len() - head_end) as u64, BODY_408_LEN);
    }

    #[test]
    fn slow_head_gets_408_after_http_request() {
        paused(async {
            let (server_end, mut client) = duplex(4096);
            let shared = Arc::new(ConnShared::default());
            let mut io = ClientIo::new(server_end, Arc::clone(&shared), timeouts(), false);
            client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            let mut buf = [0u8; 64];
            let start = Instant::now();
            let n = io.read(&mut buf).await.unwrap();
            assert!(n > 0);
            answers_408(
                &mut io,
                &mut client,
                &shared,
                start + Duration::from_secs(10),
            )
            .await;
        });
    }

    /// The next read of `io` fails at `at` with a head timeout, and the client gets the 408.
    async fn answers_408(
        io: &mut ClientIo<DuplexStream>,
        client: &mut DuplexStream,
        shared: &ConnShared,
        at: Instant,
    ) {
        let mut buf = [0u8; 64];
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(Instant::now(), at);
        assert!(shared.timed_out_head());
        let mut got = vec![0u8; RESPONSE_408.len()];
        client.read_exact(&mut got).await.unwrap();
        assert!(got.starts_with(b"HTTP/1.1 408"));
    }

    #[test]
    fn the_protocol_is_told_once_the_bytes_rule_one_out() {
        let after = |pieces: &[&[u8]]| {
            pieces
                .iter()
                .fold(Proto::Unknown(0), |proto, piece| proto.after(piece))
        };
        assert_eq!(after(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]), Proto::Http2);
        assert_eq!(after(&[b"P", b"RI * HT", b"TP/2.0"]), Proto::Http2);
        assert_eq!(after(&[b"P"]), Proto::Unknown(1));
        assert_eq!(after(&[b"PR", b"I * "]), Proto::Unknown(6));
        assert_eq!(after(&[b"P", b"OST / HTTP/1.1\r\n"]), Proto::Http1);
        assert_eq!(after(&[b"PRI * HTTP/1.1\r\n"]), Proto::Http1);
        assert_eq!(after(&[b"GET / HTTP/1.1\r\n"]), Proto::Http1);
        assert_eq!(after(&[b"PRI * HTTP/2.0", b"GET"]), Proto::Http2);
    }

    /// A head whose first read is a lone `P` (of `POST`, `PUT`, `PATCH`) is an HTTP/1 head
    /// like any other: 408 at `http_request`, not HTTP/2's idle clock.
    #[test]
    fn a_head_starting_with_a_lone_p_gets_408_after_http_request() {
        paused(async {
            let (server_end, mut client) = duplex(4096);
            let shared = Arc::new(ConnShared::default());
            let long_keep_alive = ClientTimeouts {
                http_keep_alive: Duration::from_secs(30),
                ..timeouts()
            };
            let mut io = ClientIo::new(server_end, Arc::clone(&shared), long_keep_alive, false);
            let start = Instant::now();
            client.write_all(b"P").await.unwrap();
            let mut buf = [0u8; 64];
            assert_eq!(io.read(&mut buf).await.unwrap(), 1);
            tokio::time::sleep(Duration::from_secs(1)).await;
            client.write_all(b"OST / HTTP/1.1\r\n").await.unwrap();
            assert!(io.read(&mut buf).await.unwrap() > 0);
            answers_408(
                &mut io,
                &mut client,
                &shared,
                start + Duration::from_secs(10),
            )
            .await;
        });
    }

    /// An HTTP/2 preface that arrives in pieces is HTTP/2 once whole: its first bytes, timed
    /// as an HTTP/1 head's until then, hold nothing, and the idle connection is asked to shut
    /// down at `http_keep_alive`, not answered a 408.
    #[test]
    fn a_preface_in_pieces_is_http2_once_whole() {
        paused(async {
            let (server_end, mut client) = duplex(4096);
            let shared = Arc::new(ConnShared::default());
            let mut io = ClientIo::new(server_end, Arc::clone(&shared), timeouts(), false);
            let start = Instant::now();
            let mut buf = [0u8; 64];
            client.write_all(b"PRI * H").await.unwrap();
            assert_eq!(io.read(&mut buf).await.unwrap(), 7);
            assert!(shared.stop.held(), "timed as a head while it may be one");
            client
                .write_all(b"TTP/2.0\r\n\r\nSM\r\n\r\n")
                .await
                .unwrap();
            assert!(io.read(&mut buf).await.unwrap() > 0);
            assert!(!shared.stop.held(), "an HTTP/2 connection holds no head");
            let err = read_until_error(&mut io).await;
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            assert!(shared.stop.stopping(), "a graceful shutdown was asked for");
            assert!(!shared.timed_out_head());
            assert_eq!(start.elapsed(), Duration::from_secs(5) + H2_GOAWAY_GRACE);
        });
    }

    /// `client` applies while a head arrives, as in HAProxy: a silent client, or a pause in a
    /// head, longer than it gets a 408 before `http_request`; a head that keeps coming gets
    /// `http_request`.
    #[test]
    fn a_pause_in_a_head_longer_than_client_gets_408() {
        paused(async {
            let short_client = ClientTimeouts {
                client: Duration::from_secs(2),
                ..timeouts()
            };
            let (server_end, _client) = duplex(4096);
            let shared = Arc::new(ConnShared::default());
            let mut io = ClientIo::new(server_end, Arc::clone(&shared), short_client, false);
            assert_eq!(
                time_to_timeout(&mut io).await,
                Duration::from_secs(2),
                "nothing after accept"
            );
            assert!(shared.timed_out_head());

            let (server_end, mut client) = duplex(4096);
            let mut io = ClientIo::new(server_end, Arc::default(), short_client, false);
            let dribble = tokio::spawn(async move {
                for b in b"GET / HTTP/1.1\r\nhost: a\r\n" {
                    client.write_all(&[*b]).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
                client
            });
            assert_eq!(
                time_to_timeout(&mut io).await,
                Duration::from_secs(10),
                "a byte every 1.5 s"
            );
            dribble.abort();

            let (server_end, mut client) = duplex(4096);
            let mut io = ClientIo::new(server_end, Arc::default(), short_client, false);
            client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            let mut buf = [0u8; 64];
            assert!(io.read(&mut buf).await.unwrap() > 0);
            assert_eq!(
                time_to_timeout(&mut io).await,
                Duration::from_secs(2),
                "a pause in the head"
            );
        });
    }

    #[test]
    fn in_flight_request_has_no_read_deadline_and_idle_keepalive_closes_silently() {
        paused(async {
            let (mut io, _client, shared) = after_a_request_head().await;
            let mut buf = [0u8; 64];
            let guard = shared.begin_request();
            // With a request in flight, a read waits beyond every client timeout.
            let waited = tokio::time::timeout(Duration::from_secs(60), io.read(&mut buf)).await;
            assert!(
                waited.is_err(),
                "no read deadline while a request is in flight"
            );
            drop(guard);
            let start = Instant::now();
            let err = io.read(&mut buf).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            assert_eq!(start.elapsed(), Duration::from_secs(5), "http_keep_alive");
            assert!(
                !shared.timed_out_head(),
                "idle keep-alive close sends no 408"
            );
        });
    }

    #[test]
    fn blocked_write_is_cut_after_client_timeout() {
        paused(async {
            let (server_end, _client) = duplex(16);
            let shared = Arc::new(ConnShared::default());
            let mut io = ClientIo::new(server_end, shared, timeouts(), false);
            let start = Instant::now();
            let err = io.write_all(&[0u8; 1024]).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            assert_eq!(start.elapsed(), Duration::from_secs(30));
        });
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Woken(AtomicUsize);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A connection whose client has taken no data: the socket (16 bytes of buffer) is full,
    /// and the last write was refused. With the client's end, the connection's shared state,
    /// and whether that saw the client as blocked before the refused write (it must not).
    pub(crate) async fn refusing_writes()
    -> (ClientIo<DuplexStream>, DuplexStream, Arc<ConnShared>, bool) {
        let (server_end, client) = duplex(16);
        let shared = Arc::new(ConnShared::default());
        let mut io = ClientIo::new(server_end, Arc::clone(&shared), timeouts(), false);
        io.write_all(&[0u8; 16]).await.unwrap();
        let noop = Context::from_waker(std::task::Waker::noop());
        let blocked_before = shared.client_blocked(&noop);
        let refused = std::future::poll_fn(|cx| {
            Poll::Ready(Pin::new(&mut io).poll_write(cx, b"more").is_pending())
        })
        .await;
        assert!(refused);
        (io, client, shared, blocked_before)
    }

    #[test]
    fn a_client_is_blocked_from_a_refused_write_until_a_write_goes_through() {
        paused(async {
            let (mut io, mut client, shared, blocked_before) = refusing_writes().await;
            assert!(!blocked_before, "the full socket took its last write");
            let woken = Arc::new(Woken::default());
            let waker = std::task::Waker::from(Arc::clone(&woken));
            let body = Context::from_waker(&waker);
            assert!(shared.client_blocked(&body));
            assert_eq!(woken.0.load(Ordering::SeqCst), 0);
            // The client reads: the write goes through, and what waited for it is woken.
            let mut buf = [0u8; 16];
            client.read_exact(&mut buf).await.unwrap();
            io.write_all(b"more").await.unwrap();
            assert_eq!(woken.0.load(Ordering::SeqCst), 1);
            assert!(!shared.client_blocked(&body));
        });
    }

    #[test]
    fn h2_response_waiting_for_the_client_closes_the_connection_after_client() {
        paused(async {
            let (mut io, _client, shared) = after_h2_preface().await;
            let mut buf = [0u8; 64];
            let _request = shared.begin_request();
            let waiting = shared.watch_stream();
            let other = shared.watch_stream();
            // One stream keeps going (asks for more every 10 s); the other stops at 20 s.
            let start = Instant::now();
            let steady = async {
                loop {
                    waiting.handed_over(clock::now());
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    waiting.asked();
                }
            };
            let stalls = async {
                tokio::time::sleep(Duration::from_secs(20)).await;
                other.handed_over(clock::now());
                std::future::pending::<()>().await;
            };
            let err = tokio::select! {
                r = io.read(&mut buf) => r.unwrap_err(),
                _ = steady => unreachable!(),
                _ = stalls => unreachable!(),
            };
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            assert_eq!(start.elapsed(), Duration::from_secs(50), "20 s + client");
        });
    }

    #[test]
    fn an_idle_h2_connection_closes_after_http_keep_alive_whatever_it_sends() {
        paused(async {
            let (mut io, mut client, shared) = after_h2_preface().await;
            let request = shared.begin_request();
            // The response goes out while the stream is still open; the stream ends 7 s later,
            // in a task of its own, with nothing written on the connection then. The client
            // sends a frame now and then (a PING): not a request, the idle clock runs on.
            io.write_all(b"response frames").await.unwrap();
            let start = Instant::now();
            let ended = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(7)).await;
                drop(request);
                for _ in 0..4 {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    client.write_all(b"ping").await.unwrap();
                }
                client
            });
            let err = read_until_error(&mut io).await;
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            assert!(shared.stop.stopping(), "a graceful shutdown was asked for");
            assert_eq!(
                start.elapsed(),
                Duration::from_secs(12) + H2_GOAWAY_GRACE,
                "7 s + http_keep_alive, then the grace for a client that does not answer"
            );
            drop(ended.await.unwrap());
        });
    }

    #[test]
    fn an_idle_h2_connection_asks_for_its_graceful_shutdown_at_http_keep_alive() {
        paused(async {
            let (mut io, _client, shared) = after_h2_preface().await;
            let mut buf = [0u8; 64];
            let start = Instant::now();
            let almost = Duration::from_secs(5) - Duration::from_millis(1);
            let before = tokio::time::timeout(almost, io.read(&mut buf)).await;
            assert!(before.is_err(), "nothing happens before http_keep_alive");
            assert!(!shared.stop.stopping());
            let at = tokio::time::timeout(Duration::from_millis(2), io.read(&mut buf)).await;
            assert!(at.is_err(), "the read goes on waiting, for the grace");
            assert!(
                shared.stop.stopping(),
                "the shutdown (GOAWAY) was asked for at http_keep_alive"
            );
            let err = io.read(&mut buf).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            assert_eq!(start.elapsed(), Duration::from_secs(5) + H2_GOAWAY_GRACE);
        });
    }

    #[test]
    fn a_stopping_h2_connection_is_cut_the_grace_after_its_last_stream() {
        paused(async {
            let (mut io, mut client, shared) = after_h2_preface().await;
            let request = shared.begin_request();
            let start = Instant::now();
            // The proxy's stop begins at 2 s with a stream in flight, which ends at 4 s; the
            // client sends a frame at 3 s and never answers the shutdown's PING.
            let stop = shared.stop.clone();
            let driver = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                stop.stop();
                tokio::time::sleep(Duration::from_secs(1)).await;
                client.write_all(b"frame").await.unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
                drop(request);
                client
            });
            let err = read_until_error(&mut io).await;
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            assert_eq!(
                start.elapsed(),
                Duration::from_secs(4) + H2_GOAWAY_GRACE,
                "not while the stream was in flight; the grace after it ended"
            );
            drop(driver.await.unwrap());
        });
    }

    #[test]
    fn keep_alive_clock_starts_when_the_response_is_written() {
        paused(async {
            let (mut io, _client, shared) = after_a_request_head().await;
            let mut buf = [0u8; 64];
            // The request is served and answered before the read side is polled again, as hyper
            // does for a local answer.
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(shared.begin_request());
            io.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            let answered = Instant::now();
            let err = io.read(&mut buf).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            assert_eq!(
                answered.elapsed(),
                Duration::from_secs(5),
                "http_keep_alive from the answer"
            );
            assert!(
                !shared.timed_out_head(),
                "an idle keep-alive close sends no 408"
            );
        });
    }
}
