//! The open client connections: how many may be open at once (`[global] maxconn`), and the
//! graceful stop, where every open connection watches a stop signal and the stop waits for them
//! to close.
//!
//! hyper-util's `GracefulShutdown` has every connection watch one `tokio::sync::watch`
//! channel, and each poll of a connection takes that channel's lock: under load the
//! connections of all workers contended for it (docs/benchmarks.md). Here each connection has
//! a signal of its own: a poll costs one atomic load, and its waker is stored only when it
//! changes. Only opening and closing a connection, and the stop itself, touch the shared
//! registry.
//!
//! **The limit.** HAProxy's `maxconn`: once that many connections are open, the accept loops
//! wait ([`Graceful::room`]) and new clients wait in the kernel's listen queue until one
//! closes. Without it a proxy would accept until it runs out of file descriptors, and then
//! every accepted request would fail for want of one to reach a server with. An accept loop
//! takes its connection's place once a client is there to accept and before the accept
//! ([`Graceful::reserve`]), so that loops of other workers and listeners cannot take it too:
//! the limit holds exactly.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use atomic_waker::AtomicWaker;
use rustc_hash::FxHashMap;
use tokio::sync::Notify;

/// The open connections of a proxy, their limit, and the stop signal they watch.
#[derive(Debug)]
pub struct Graceful {
    registry: Arc<Registry>,
}

#[derive(Debug)]
struct Registry {
    stopping: AtomicBool,
    open: Mutex<Open>,
    /// Notified when the last connection closes during a stop.
    closed: Notify,
    /// The most connections open at once (`maxconn`).
    limit: AtomicUsize,
    /// Notified when a connection closes at the limit, or the limit is raised.
    room: Notify,
}

#[derive(Debug, Default)]
struct Open {
    next: u64,
    signals: FxHashMap<u64, Arc<Signal>>,
}

/// One connection's stop signal.
#[derive(Debug, Default)]
struct Signal {
    /// The listener that accepted the connection (see [`Graceful::watcher_of`]).
    listener: u64,
    stop: AtomicBool,
    /// Set while an HTTP/1 request head is arriving: the connection is not idle, and is asked
    /// to shut down only once its request has begun (hyper would close it as idle).
    held: AtomicBool,
    waker: AtomicWaker,
}

impl Registry {
    fn open(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Graceful {
    /// A registry that lets `limit` connections be open at once.
    pub fn new(limit: usize) -> Self {
        Self {
            registry: Arc::new(Registry {
                stopping: AtomicBool::new(false),
                open: Mutex::default(),
                closed: Notify::new(),
                limit: AtomicUsize::new(limit.max(1)),
                room: Notify::new(),
            }),
        }
    }

    /// Changes the limit (a reload); connections already open stay open.
    pub fn set_limit(&self, limit: usize) {
        let limit = limit.max(1);
        let before = self.registry.limit.swap(limit, Ordering::AcqRel);
        if limit > before {
            self.registry.room.notify_waiters();
        }
    }

    /// The limit on open connections.
    pub fn limit(&self) -> usize {
        self.registry.limit.load(Ordering::Acquire)
    }

    /// Waits until fewer connections than the limit are open.
    pub async fn room(&self) {
        loop {
            let room = self.registry.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.count() < self.limit() {
                return;
            }
            room.await;
        }
    }

    /// Registers a new connection; it counts as open until the watcher is dropped. A
    /// connection opened after the stop began is told to stop at once.
    pub fn watcher(&self) -> Watcher {
        self.watcher_of(0)
    }

    /// [`Graceful::watcher`] for a connection that `listener` accepted, so that
    /// [`Graceful::stop_listener`] reaches it.
    pub fn watcher_of(&self, listener: u64) -> Watcher {
        self.register(listener, false)
            .expect("registered without a limit")
    }

    /// [`Graceful::watcher_of`] for a connection about to be accepted, if fewer than the limit
    /// are open: its place is taken before the accept (as HAProxy takes it), so that accept
    /// loops of other workers and listeners cannot take it too. Dropped unused (nothing to
    /// accept after all), the place is free again.
    pub fn reserve(&self, listener: u64) -> Option<Watcher> {
        self.register(listener, true)
    }

    fn register(&self, listener: u64, limited: bool) -> Option<Watcher> {
        let signal = Arc::new(Signal {
            listener,
            ..Signal::default()
        });
        let mut open = self.registry.open();
        if limited && open.signals.len() >= self.limit() {
            return None;
        }
        // Read under the lock the stop takes, so that no connection misses the stop.
        if self.registry.stopping.load(Ordering::Acquire) {
            signal.stop.store(true, Ordering::Release);
        }
        let id = open.next;
        open.next += 1;
        open.signals.insert(id, Arc::clone(&signal));
        Some(Watcher {
            open: OpenGuard {
                _registration: Arc::new(Registration {
                    registry: Arc::clone(&self.registry),
                    id,
                }),
            },
            signal,
        })
    }

    /// Connections open now.
    pub fn count(&self) -> usize {
        self.registry.open().signals.len()
    }

    /// Tells the connections `listener` accepted to stop (finish what is in flight, take
    /// nothing new): a reload removed it. Idle HTTP/1 connections close, HTTP/2 ones get a
    /// GOAWAY, as HAProxy's old process closes its connections after a reload.
    pub fn stop_listener(&self, listener: u64) {
        let open = self.registry.open();
        for signal in open.signals.values().filter(|s| s.listener == listener) {
            signal.stop.store(true, Ordering::Release);
            signal.waker.wake();
        }
    }

    /// Tells every connection to stop (finish what is in flight, take nothing new) and waits
    /// until all have closed.
    pub async fn shutdown(&self) {
        {
            let open = self.registry.open();
            self.registry.stopping.store(true, Ordering::Release);
            for signal in open.signals.values() {
                signal.stop.store(true, Ordering::Release);
                signal.waker.wake();
            }
        }
        loop {
            let closed = self.registry.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.registry.open().signals.is_empty() {
                return;
            }
            closed.await;
        }
    }
}

/// One connection's handle on its stop signal: its socket asks for the connection's graceful
/// shutdown with it (an idle HTTP/2 connection's GOAWAY), and sees whether one was asked for,
/// by the stop or by itself. A handle made with `default` belongs to no connection.
#[derive(Debug, Clone, Default)]
pub struct StopHandle(Arc<Signal>);

impl StopHandle {
    /// Asks the connection to shut down gracefully, as the stop does for every connection.
    pub fn stop(&self) {
        self.0.stop.store(true, Ordering::Release);
        self.0.waker.wake();
    }

    /// Whether the connection was asked to shut down.
    pub fn stopping(&self) -> bool {
        self.0.stop.load(Ordering::Acquire)
    }

    /// A request head has started to arrive: a stop waits for [`release`](Self::release)
    /// before it asks the connection to shut down.
    pub fn hold(&self) {
        self.0.held.store(true, Ordering::Release);
    }

    /// Whether a request head holds the stop off.
    #[cfg(test)]
    pub fn held(&self) -> bool {
        self.0.held.load(Ordering::Acquire)
    }

    /// The request whose head arrived has begun (or the connection is idle again): a stop that
    /// began meanwhile asks the connection now.
    pub fn release(&self) {
        if self.0.held.swap(false, Ordering::AcqRel) && self.0.stop.load(Ordering::Acquire) {
            self.0.waker.wake();
        }
    }
}

/// A connection's registration and stop signal; the connection counts as open until this and
/// every [`OpenGuard`] taken from it are dropped.
#[derive(Debug)]
pub struct Watcher {
    open: OpenGuard,
    signal: Arc<Signal>,
}

/// Keeps a connection counted as open (for `maxconn`, the stop, the open-connection gauges)
/// while held: a connection upgraded to a tunnel (WebSocket) outlives hyper's serving of it.
#[derive(Debug, Clone)]
pub struct OpenGuard {
    _registration: Arc<Registration>,
}

/// A connection's place in the registry, freed when the last holder drops it.
#[derive(Debug)]
struct Registration {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut open = self.registry.open();
        open.signals.remove(&self.id);
        if open.signals.is_empty() && self.registry.stopping.load(Ordering::Acquire) {
            self.registry.closed.notify_waiters();
        }
        // There is room again only when this one was at the limit (past it, there is none yet).
        if open.signals.len() + 1 == self.registry.limit.load(Ordering::Acquire) {
            self.registry.room.notify_waiters();
        }
    }
}

/// A connection that can be asked to finish what it is serving and close.
pub trait GracefulConn: Future {
    /// Begins the graceful shutdown: no new request is taken (an HTTP/2 client gets a
    /// GOAWAY), those in flight finish.
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl Watcher {
    /// The connection's own handle on its stop signal.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(Arc::clone(&self.signal))
    }

    /// Keeps the connection counted as open beyond this watcher.
    pub fn open_guard(&self) -> OpenGuard {
        self.open.clone()
    }

    /// Runs `conn`, asking it to shut down gracefully once the stop begins (or once
    /// [`StopHandle::stop`] asks for it), and no request head is arriving.
    pub fn watch<C: GracefulConn>(self, conn: C) -> Watched<C> {
        Watched {
            conn,
            watcher: self,
            waker: None,
            asked: false,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future [`Watcher::watch`] returns.
    pub struct Watched<C> {
        #[pin]
        conn: C,
        watcher: Watcher,
        // The waker last given to the signal.
        waker: Option<Waker>,
        // Whether the connection was asked to shut down.
        asked: bool,
    }
}

impl<C: GracefulConn> Future for Watched<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if !*this.asked {
            if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                this.watcher.signal.waker.register(cx.waker());
                *this.waker = Some(cx.waker().clone());
            }
            // After registering: a stop that sets the flag later also wakes this waker, and so
            // does a release of the hold after it.
            let signal = &this.watcher.signal;
            if signal.stop.load(Ordering::Acquire) && !signal.held.load(Ordering::Acquire) {
                *this.asked = true;
                this.conn.as_mut().graceful_shutdown();
            }
        }
        this.conn.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `fut` once: whether it is still pending.
    async fn pending<F: Future>(fut: Pin<&mut F>) -> bool {
        let mut fut = fut;
        std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx).is_pending())).await
    }

    #[tokio::test]
    async fn a_reserved_place_counts_and_is_free_again_when_dropped_unused() {
        let g = Graceful::new(2);
        let a = g.reserve(1).expect("a free place");
        let _b = g.watcher_of(1);
        assert_eq!(g.count(), 2);
        assert!(g.reserve(1).is_none(), "both places taken");
        let mut room = std::pin::pin!(g.room());
        assert!(pending(room.as_mut()).await);
        // Nothing to accept after all: the place is free again, and a waiting loop told so.
        drop(a);
        assert_eq!(g.count(), 1);
        assert!(!pending(room.as_mut()).await);
        assert!(g.reserve(1).is_some());
    }

    #[tokio::test]
    async fn shutdown_waits_for_every_open_connection() {
        let graceful = Graceful::new(usize::MAX);
        let a = graceful.watcher();
        let b = graceful.watcher();
        assert_eq!(graceful.count(), 2);
        let stop = graceful.shutdown();
        tokio::pin!(stop);
        assert!(pending(stop.as_mut()).await);
        assert!(a.signal.stop.load(Ordering::Acquire) && b.signal.stop.load(Ordering::Acquire));
        drop(a);
        assert!(pending(stop.as_mut()).await, "one connection is still open");
        drop(b);
        assert!(!pending(stop.as_mut()).await);
        assert_eq!(graceful.count(), 0);
    }

    #[tokio::test]
    async fn a_connection_opened_during_the_stop_is_told_to_stop() {
        let graceful = Graceful::new(usize::MAX);
        graceful.shutdown().await;
        let late = graceful.watcher();
        assert!(late.signal.stop.load(Ordering::Acquire));
        drop(late);
        assert_eq!(graceful.count(), 0);
    }

    #[tokio::test]
    async fn room_waits_while_the_limit_is_reached() {
        let graceful = Graceful::new(2);
        let a = graceful.watcher();
        {
            let room = graceful.room();
            tokio::pin!(room);
            assert!(!pending(room.as_mut()).await, "one of two open: room");
        }
        let b = graceful.watcher();
        let room = graceful.room();
        tokio::pin!(room);
        assert!(pending(room.as_mut()).await, "two of two open: no room");
        drop(a);
        assert!(!pending(room.as_mut()).await, "a closed: room again");
        drop(b);
    }

    #[tokio::test]
    async fn raising_the_limit_makes_room_and_lowering_it_takes_it() {
        let graceful = Graceful::new(1);
        let a = graceful.watcher();
        let room = graceful.room();
        tokio::pin!(room);
        assert!(pending(room.as_mut()).await);
        graceful.set_limit(2);
        assert!(
            !pending(room.as_mut()).await,
            "a raised limit wakes the waiter"
        );
        let b = graceful.watcher();
        graceful.set_limit(1);
        let room = graceful.room();
        tokio::pin!(room);
        assert!(pending(room.as_mut()).await);
        drop(b);
        assert!(
            pending(room.as_mut()).await,
            "still one open, the new limit"
        );
        drop(a);
        assert!(!pending(room.as_mut()).await);
    }
}
