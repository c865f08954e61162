//! Graceful stop of client connections: every open connection watches a stop signal, and the
//! stop waits for them to close.
//!
//! hyper-util's `GracefulShutdown` has every connection watch one `tokio::sync::watch`
//! channel, and each poll of a connection takes that channel's lock: under load the
//! connections of all workers contended for it (docs/benchmarks.md). Here each connection has
//! a signal of its own: a poll costs one atomic load, and its waker is stored only when it
//! changes. Only opening and closing a connection, and the stop itself, touch the shared
//! registry.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use atomic_waker::AtomicWaker;
use hyper_util::server::graceful::GracefulConnection;
use rustc_hash::FxHashMap;
use tokio::sync::Notify;

/// The open connections of a proxy, and the stop signal they watch.
#[derive(Debug, Default)]
pub struct Graceful {
    registry: Arc<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    stopping: AtomicBool,
    open: Mutex<Open>,
    /// Notified when the last connection closes during a stop.
    closed: Notify,
}

#[derive(Debug, Default)]
struct Open {
    next: u64,
    signals: FxHashMap<u64, Arc<Signal>>,
}

/// One connection's stop signal.
#[derive(Debug, Default)]
struct Signal {
    stop: AtomicBool,
    waker: AtomicWaker,
}

impl Registry {
    fn open(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Graceful {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a new connection; it counts as open until the watcher is dropped. A
    /// connection opened after the stop began is told to stop at once.
    pub fn watcher(&self) -> Watcher {
        let signal = Arc::new(Signal::default());
        let mut open = self.registry.open();
        // Read under the lock the stop takes, so that no connection misses the stop.
        if self.registry.stopping.load(Ordering::Acquire) {
            signal.stop.store(true, Ordering::Release);
        }
        let id = open.next;
        open.next += 1;
        open.signals.insert(id, Arc::clone(&signal));
        Watcher {
            registry: Arc::clone(&self.registry),
            signal,
            id,
        }
    }

    /// Connections open now.
    pub fn count(&self) -> usize {
        self.registry.open().signals.len()
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

/// A connection's registration; dropping it marks the connection closed.
#[derive(Debug)]
pub struct Watcher {
    registry: Arc<Registry>,
    signal: Arc<Signal>,
    id: u64,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let mut open = self.registry.open();
        open.signals.remove(&self.id);
        if open.signals.is_empty() && self.registry.stopping.load(Ordering::Acquire) {
            self.registry.closed.notify_waiters();
        }
    }
}

impl Watcher {
    /// Runs `conn`, asking it to shut down gracefully once the stop begins.
    pub fn watch<C: GracefulConnection>(self, conn: C) -> Watched<C> {
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

impl<C: GracefulConnection> Future for Watched<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if !*this.asked {
            if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                this.watcher.signal.waker.register(cx.waker());
                *this.waker = Some(cx.waker().clone());
            }
            // After registering: a stop that sets the flag later also wakes this waker.
            if this.watcher.signal.stop.load(Ordering::Acquire) {
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
    async fn shutdown_waits_for_every_open_connection() {
        let graceful = Graceful::new();
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
        let graceful = Graceful::new();
        graceful.shutdown().await;
        let late = graceful.watcher();
        assert!(late.signal.stop.load(Ordering::Acquire));
        drop(late);
        assert_eq!(graceful.count(), 0);
    }
}
