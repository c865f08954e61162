//! Traffic counters for the stats page and metrics, cheap enough for the request path.
//!
//! Each counted object (frontend, backend, server) owns a [`Traffic`]: one cache-line-aligned
//! [`Shard`] of relaxed atomics per worker thread. A worker only ever writes its own shard
//! (selected by a thread-local index set once per worker with [`set_shard`]), so counting a
//! request costs a few uncontended atomic adds on lines that stay in that core's cache, never a
//! cache-line bounce between workers. Readers (the stats page, `/metrics`) sum the shards at
//! scrape time. Nothing here allocates or locks per request.
//!
//! Latency is kept as a histogram with fixed bucket bounds ([`LATENCY_BUCKETS`]) plus a sum, so
//! averages and Prometheus histograms come from the same counts. Rates are not counted per
//! request: a sampler computes them from the totals ([`RateWindow`]).
//!
//! Connection counts ([`Sessions`]) are plain shared atomics: they change once per
//! connection, not per request. A frontend's `maxconn` is kept with its count
//! ([`Sessions::room`]).

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Shards per counted object. Workers beyond this share shards (still correct: adds are atomic).
pub const SHARDS: usize = 8;

/// Upper bounds of the response-time histogram buckets, in seconds (the last bucket, +Inf, is
/// implicit).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Bucket bounds in microseconds, for the comparison on the request path.
const LATENCY_BOUNDS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];
/// Buckets including +Inf.
pub const BUCKETS: usize = LATENCY_BUCKETS.len() + 1;

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// Makes the current thread count into shard `index` (a worker calls this once with its own
/// index; other threads use shard 0).
pub fn set_shard(index: usize) {
    SHARD.with(|s| s.set(index % SHARDS));
}

fn shard_index() -> usize {
    SHARD.with(Cell::get)
}

/// Response status classes: 1xx..5xx, and anything else (a connection cut before a status).
pub const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

fn class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100) - 1,
        _ => 5,
    }
}

/// One worker's counters for one object. Aligned so that two shards never share a cache line
/// (128 bytes: adjacent-line prefetching pairs lines on x86).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    requests: AtomicU64,
    responses: [AtomicU64; 6],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Sum of response times, in microseconds.
    time_us: AtomicU64,
    latency: [AtomicU64; BUCKETS],
    retries: AtomicU64,
    errors: AtomicU64,
}

#[inline]
fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The traffic counters of one frontend, backend or server.
#[derive(Debug, Default)]
pub struct Traffic {
    shards: [Shard; SHARDS],
}

impl Traffic {
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    fn shard(&self) -> &Shard {
        &self.shards[shard_index()]
    }

    /// Counts a request (for servers: an attempt sent to it).
    #[inline]
    pub fn count_request(&self) {
        add(&self.shard().requests, 1);
    }

    /// Counts a finished response: its status (0: none was sent), the request and response
    /// body bytes, and the response time (request received to response headers), if any.
    #[inline]
    pub fn count_response(
        &self,
        status: u16,
        bytes_in: u64,
        bytes_out: u64,
        time: Option<Duration>,
    ) {
        let s = self.shard();
        add(&s.responses[class_index(status)], 1);
        if bytes_in > 0 {
            add(&s.bytes_in, bytes_in);
        }
        add(&s.bytes_out, bytes_out);
        if let Some(t) = time {
            let us = u64::try_from(t.as_micros()).unwrap_or(u64::MAX);
            add(&s.time_us, us);
            let bucket = LATENCY_BOUNDS_US
                .iter()
                .position(|&b| us <= b)
                .unwrap_or(BUCKETS - 1);
            add(&s.latency[bucket], 1);
        }
    }

    /// Counts a request and its response at once (a request hyper refused before wasp saw it).
    #[inline]
    pub fn count_exchange(
        &self,
        status: u16,
        bytes_in: u64,
        bytes_out: u64,
        time: Option<Duration>,
    ) {
        add(&self.shard().requests, 1);
        self.count_response(status, bytes_in, bytes_out, time);
    }

    /// Counts a finished TCP-mode session: one request (the connection; TCP sessions have no
    /// responses) and the bytes it carried each way.
    pub fn count_session(&self, bytes_in: u64, bytes_out: u64) {
        add(&self.shard().requests, 1);
        self.count_bytes(bytes_in, bytes_out);
    }

    /// Counts bytes relayed outside a response (TCP mode, WebSocket tunnels).
    pub fn count_bytes(&self, bytes_in: u64, bytes_out: u64) {
        let s = self.shard();
        add(&s.bytes_in, bytes_in);
        add(&s.bytes_out, bytes_out);
    }

    /// Counts a retry (another attempt after a failed one).
    pub fn count_retry(&self) {
        add(&self.shard().retries, 1);
    }

    /// Counts an error: for frontends a request wasp refused, for backends and servers a
    /// failed connect or a server that gave no (timely) answer.
    pub fn count_error(&self) {
        add(&self.shard().errors, 1);
    }

    /// Requests counted so far.
    pub fn requests(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.requests.load(Ordering::Relaxed))
            .sum()
    }

    /// The sum of every shard.
    pub fn totals(&self) -> TrafficTotals {
        let mut t = TrafficTotals::default();
        for s in &self.shards {
            let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
            t.requests += get(&s.requests);
            for (out, c) in t.responses.iter_mut().zip(&s.responses) {
                *out += get(c);
            }
            t.bytes_in += get(&s.bytes_in);
            t.bytes_out += get(&s.bytes_out);
            t.time_us += get(&s.time_us);
            for (out, c) in t.latency.iter_mut().zip(&s.latency) {
                *out += get(c);
            }
            t.retries += get(&s.retries);
            t.errors += get(&s.errors);
        }
        t
    }
}

/// [`Traffic`] summed over its shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficTotals {
    pub requests: u64,
    /// By class, as [`CLASSES`].
    pub responses: [u64; 6],
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Sum of response times in microseconds (over the responses in `latency`).
    pub time_us: u64,
    /// Response-time histogram, non-cumulative, bounds as [`LATENCY_BUCKETS`] then +Inf.
    pub latency: [u64; BUCKETS],
    pub retries: u64,
    pub errors: u64,
}

impl TrafficTotals {
    /// Responses that had a response time.
    pub fn timed(&self) -> u64 {
        self.latency.iter().sum()
    }

    /// Average response time in milliseconds, if any response was timed.
    pub fn avg_response_ms(&self) -> Option<f64> {
        let n = self.timed();
        (n > 0).then(|| self.time_us as f64 / n as f64 / 1000.0)
    }
}

/// Client connections of a frontend (HAProxy's sessions): open now, most at once, ever; and
/// the frontend's limit on them (its `maxconn`), which the accept loops wait under.
#[derive(Debug, Default)]
pub struct Sessions {
    current: AtomicU64,
    max: AtomicU64,
    total: AtomicU64,
    /// The most connections open at once (0: no limit of the frontend's own).
    limit: AtomicU64,
    /// Notified when a connection closes at the limit, or the limit is raised or lifted.
    room: Notify,
}

impl Sessions {
    /// Counts a new connection until the guard, which holds what the count is kept in (a
    /// frontend's state), is dropped.
    pub fn open_owned<T: AsRef<Sessions>>(owner: Arc<T>) -> OwnedSession<T> {
        (*owner).as_ref().count_new();
        OwnedSession(owner)
    }

    /// Takes a place under the limit for a connection about to be accepted, if one is free:
    /// counted open at once, so that no other accept takes it too (as HAProxy reserves its
    /// frontend's place before it accepts). [`Reserved::confirm`] once the connection is
    /// accepted; dropped unconfirmed (nothing to accept), the place is free again.
    pub fn reserve<T: AsRef<Sessions>>(owner: Arc<T>) -> Option<Reserved<T>> {
        let s = (*owner).as_ref();
        let limit = s.limit.load(Ordering::Acquire);
        if limit == 0 {
            s.current.fetch_add(1, Ordering::AcqRel);
        } else {
            s.current
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                    (c < limit).then_some(c + 1)
                })
                .ok()?;
        }
        Some(Reserved(Some(owner)))
    }

    /// Counts a connection already counted by [`Sessions::open_owned`] as open again, without
    /// counting it in the total or the most at once (it is counted twice only while hyper
    /// hands it over): an upgraded connection's tunnel, which outlives hyper's serving of it.
    pub fn hold_owned<T: AsRef<Sessions>>(owner: Arc<T>) -> OwnedSession<T> {
        (*owner).as_ref().current.fetch_add(1, Ordering::AcqRel);
        OwnedSession(owner)
    }

    fn count_new(&self) {
        let now = self.current.fetch_add(1, Ordering::AcqRel) + 1;
        self.count_accepted(now);
    }

    fn count_accepted(&self, now: u64) {
        self.total.fetch_add(1, Ordering::Relaxed);
        raise(&self.max, now);
    }

    fn close(&self) {
        let before = self.current.fetch_sub(1, Ordering::AcqRel);
        // There is room again only when this one was at the limit (past it, there is none
        // yet).
        let limit = self.limit.load(Ordering::Acquire);
        if limit != 0 && before == limit {
            self.room.notify_waiters();
        }
    }

    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The frontend's own limit on open connections, if it has one.
    pub fn limit(&self) -> Option<u64> {
        Some(self.limit.load(Ordering::Acquire)).filter(|&l| l != 0)
    }

    /// Sets the frontend's limit (a configuration taking effect); connections already open
    /// stay open.
    pub fn set_limit(&self, limit: Option<u32>) {
        let limit = limit.map_or(0, |l| u64::from(l.max(1)));
        let before = self.limit.swap(limit, Ordering::AcqRel);
        if limit == 0 || (before != 0 && limit > before) {
            self.room.notify_waiters();
        }
    }

    /// Waits until fewer connections than the limit are open (at once without a limit).
    pub async fn room(&self) {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.limit() {
                Some(limit) if self.current.load(Ordering::Acquire) >= limit => room.await,
                _ => return,
            }
        }
    }
}

/// Raises `max` to `value`; the common case (no new maximum) is a read of a line that rarely
/// changes, not a write.
#[inline]
pub fn raise(max: &AtomicU64, value: u64) {
    if value > max.load(Ordering::Relaxed) {
        max.fetch_max(value, Ordering::Relaxed);
    }
}

impl AsRef<Sessions> for Sessions {
    fn as_ref(&self) -> &Sessions {
        self
    }
}

/// A place under a frontend's limit taken for a connection about to be accepted
/// ([`Sessions::reserve`]).
#[derive(Debug)]
pub struct Reserved<T: AsRef<Sessions>>(Option<Arc<T>>);

impl<T: AsRef<Sessions>> Reserved<T> {
    /// The connection was accepted: it counts as accepted, and open until the guard drops.
    pub fn confirm(mut self) -> OwnedSession<T> {
        let owner = self.0.take().expect("a reservation is confirmed once");
        let s = (*owner).as_ref();
        s.count_accepted(s.current.load(Ordering::Acquire));
        OwnedSession(owner)
    }
}

impl<T: AsRef<Sessions>> Drop for Reserved<T> {
    fn drop(&mut self) {
        if let Some(owner) = &self.0 {
            (**owner).as_ref().close();
        }
    }
}

/// One open connection of the [`Sessions`] of a `T` it holds (a frontend's state).
#[derive(Debug)]
pub struct OwnedSession<T: AsRef<Sessions>>(Arc<T>);

impl<T: AsRef<Sessions>> OwnedSession<T> {
    /// What the connection is counted in.
    pub fn owner(&self) -> &Arc<T> {
        &self.0
    }
}

impl<T: AsRef<Sessions>> Drop for OwnedSession<T> {
    fn drop(&mut self) {
        (*self.0).as_ref().close();
    }
}

/// A moving window over samples of a total, for rates: push one sample per tick; the rate is
/// the increase over the window divided by its length.
#[derive(Debug, Clone)]
pub struct RateWindow {
    samples: VecDeque<u64>,
    len: usize,
}

impl RateWindow {
    /// A window spanning `len` ticks.
    pub fn new(len: usize) -> Self {
        Self {
            samples: VecDeque::with_capacity(len + 1),
            len: len.max(1),
        }
    }

    pub fn push(&mut self, total: u64) {
        if self.samples.len() > self.len {
            self.samples.pop_front();
        }
        self.samples.push_back(total);
    }

    /// Increase per tick over the samples held (0 with fewer than two).
    pub fn per_tick(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(first), Some(last)) if self.samples.len() > 1 => {
                last.saturating_sub(*first) as f64 / (self.samples.len() - 1) as f64
            }
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_sum_and_classes_split() {
        let t = Traffic::new();
        t.count_exchange(200, 10, 100, Some(Duration::from_micros(300)));
        std::thread::scope(|s| {
            s.spawn(|| {
                set_shard(3);
                t.count_exchange(503, 0, 5, Some(Duration::from_millis(20)));
                t.count_exchange(0, 0, 0, None);
                t.count_retry();
            });
        });
        let totals = t.totals();
        assert_eq!(totals.requests, 3);
        assert_eq!(totals.responses, [0, 1, 0, 0, 1, 1]);
        assert_eq!((totals.bytes_in, totals.bytes_out), (10, 105));
        assert_eq!(totals.latency[0], 1, "300us <= 0.5ms");
        assert_eq!(totals.latency[5], 1, "20ms <= 25ms");
        assert_eq!(totals.timed(), 2);
        assert_eq!(totals.retries, 1);
        assert!((totals.avg_response_ms().unwrap() - 10.15).abs() < 1e-9);
    }

    #[test]
    fn slow_responses_land_in_the_inf_bucket() {
        let t = Traffic::new();
        t.count_response(200, 0, 0, Some(Duration::from_secs(11)));
        assert_eq!(t.totals().latency[BUCKETS - 1], 1);
    }

    #[test]
    fn sessions_track_current_max_total() {
        let s = Arc::new(Sessions::default());
        let a = Sessions::open_owned(Arc::clone(&s));
        let b = Sessions::open_owned(Arc::clone(&s));
        drop(a);
        let _c = Sessions::open_owned(Arc::clone(&s));
        drop(b);
        assert_eq!((s.current(), s.max(), s.total()), (1, 2, 3));
    }

    /// Whether `fut` is still pending after one poll.
    fn pending<F: Future>(fut: std::pin::Pin<&mut F>) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        fut.poll(&mut cx).is_pending()
    }

    #[tokio::test]
    async fn room_waits_at_the_limit_until_a_connection_closes() {
        let s = Arc::new(Sessions::default());
        let room = || s.room();
        assert!(!pending(std::pin::pin!(room())), "no limit: room at once");
        s.set_limit(Some(2));
        let a = Sessions::open_owned(Arc::clone(&s));
        assert!(!pending(std::pin::pin!(room())), "one of two open");
        let b = Sessions::open_owned(Arc::clone(&s));
        let mut waiting = std::pin::pin!(room());
        assert!(pending(waiting.as_mut()), "two of two open");
        // Past the limit (a loop that was already in accept): no room when one of three
        // closes, room when one of two does.
        let c = Sessions::open_owned(Arc::clone(&s));
        drop(c);
        assert!(pending(waiting.as_mut()), "two of two still open");
        drop(a);
        assert!(!pending(waiting.as_mut()), "one closed at the limit");
        assert_eq!(s.current(), 1);
        drop(b);
    }

    #[tokio::test]
    async fn raising_or_lifting_the_limit_makes_room() {
        let s = Arc::new(Sessions::default());
        s.set_limit(Some(1));
        let _a = Sessions::open_owned(Arc::clone(&s));
        let mut raised = std::pin::pin!(s.room());
        assert!(pending(raised.as_mut()));
        s.set_limit(Some(1));
        assert!(pending(raised.as_mut()), "the same limit makes no room");
        s.set_limit(Some(2));
        assert!(!pending(raised.as_mut()), "raised to 2 with 1 open");
        s.set_limit(Some(1));
        let mut lifted = std::pin::pin!(s.room());
        assert!(pending(lifted.as_mut()));
        s.set_limit(None);
        assert!(!pending(lifted.as_mut()), "no limit any more");
        assert_eq!(s.limit(), None);
    }

    #[test]
    fn a_reserved_place_counts_as_accepted_only_once_confirmed() {
        let s = Arc::new(Sessions::default());
        s.set_limit(Some(2));
        let a = Sessions::reserve(Arc::clone(&s)).expect("a free place");
        let b = Sessions::reserve(Arc::clone(&s)).expect("the second place");
        assert!(
            Sessions::reserve(Arc::clone(&s)).is_none(),
            "both places taken"
        );
        assert_eq!((s.current(), s.total()), (2, 0));
        // Nothing to accept after all: the place is free again, and nothing was accepted.
        drop(b);
        assert_eq!((s.current(), s.total()), (1, 0));
        let a = a.confirm();
        assert_eq!((s.current(), s.max(), s.total()), (1, 1, 1));
        drop(a);
        assert_eq!(s.current(), 0);
        // Without a limit every reservation succeeds.
        s.set_limit(None);
        let many: Vec<_> = (0..5)
            .map(|_| Sessions::reserve(Arc::clone(&s)).unwrap().confirm())
            .collect();
        assert_eq!((s.current(), s.total()), (5, 6));
        drop(many);
    }

    #[test]
    fn rate_window_averages_over_its_span() {
        let mut w = RateWindow::new(3);
        assert_eq!(w.per_tick(), 0.0);
        for total in [0, 10, 20, 30, 70] {
            w.push(total);
        }
        // The last 4 samples (a span of 3 ticks): 10 -> 70.
        assert_eq!(w.per_tick(), 20.0);
    }
}
