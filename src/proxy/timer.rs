//! A reusable timer for deadlines that keep moving later (idle timeouts, one request after
//! another on a keep-alive connection).
//!
//! Registering a tokio timer takes the time driver's lock and, when the new deadline is the
//! earliest, a wake-up write to the driver: measurable at tens of thousands of requests per
//! second. A [`LazyTimer`] stays armed at the deadline it was first given; when that fires it
//! checks the deadline in force and re-arms only if it moved. A stream of later and later
//! deadlines costs one registration per timeout period instead of one per request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

#[derive(Debug, Default)]
pub struct LazyTimer {
    sleep: Option<Pin<Box<Sleep>>>,
    /// The waker the armed timer will wake (the one of its last poll).
    waker: Option<Waker>,
}

impl LazyTimer {
    /// Whether `deadline` has passed; if not, the task is woken no later than `deadline`.
    ///
    /// A timer already armed no later than `deadline`, not yet fired, and holding this task's
    /// waker is left alone: polling it again would only store the same waker again (as the
    /// request path would, several times per request).
    pub fn poll_expired(&mut self, deadline: Instant, cx: &mut Context<'_>) -> bool {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() > deadline {
            sleep.as_mut().reset(deadline);
            self.waker = None;
        }
        if !sleep.is_elapsed() && self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return false;
        }
        while sleep.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                self.waker = None;
                return true;
            }
            sleep.as_mut().reset(deadline);
        }
        self.waker = Some(cx.waker().clone());
        false
    }
}

/// Runs `fut` for at most `limit` from `start`; `None` when the limit passed first. With a
/// shared `timer` (one that no other pending future polls meanwhile, e.g. the one request in
/// flight on an HTTP/1 connection) no new timer is registered; without one a fresh tokio timer
/// is used.
///
/// A plain future rather than an `async fn`, so that `fut` is stored once (an `async fn` keeps
/// its argument and the pinned copy of it), which keeps every request's future smaller.
pub fn within<F: Future>(
    start: Instant,
    limit: Duration,
    timer: Option<&Mutex<LazyTimer>>,
    fut: F,
) -> Within<'_, F> {
    let (shared, own) = match timer {
        Some(timer) => (Some((timer, start + limit)), None),
        None => (None, Some(tokio::time::sleep_until(start + limit))),
    };
    Within { fut, shared, own }
}

pin_project_lite::pin_project! {
    /// The future [`within`] returns.
    pub struct Within<'a, F> {
        #[pin]
        fut: F,
        // The shared timer and the deadline, or a timer of its own.
        shared: Option<(&'a Mutex<LazyTimer>, Instant)>,
        #[pin]
        own: Option<Sleep>,
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Some(out));
        }
        let expired = match (this.shared, this.own.as_pin_mut()) {
            (Some((timer, deadline)), _) => timer
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .poll_expired(*deadline, cx),
            (None, Some(sleep)) => sleep.poll(cx).is_ready(),
            (None, None) => false,
        };
        if expired {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fires_at_the_latest_deadline_not_the_first() {
        let timer = Mutex::new(LazyTimer::default());
        let start = Instant::now();
        // A first use arms the timer at +10s.
        assert_eq!(
            within(
                Instant::now(),
                Duration::from_secs(10),
                Some(&timer),
                async { 1 }
            )
            .await,
            Some(1)
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        // A later request's deadline is +15s from start; the +10s arming must not cut it.
        let out = within(
            Instant::now(),
            Duration::from_secs(10),
            Some(&timer),
            std::future::pending::<()>(),
        )
        .await;
        assert_eq!(out, None);
        assert_eq!(start.elapsed(), Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_rearms() {
        let timer = Mutex::new(LazyTimer::default());
        let start = Instant::now();
        assert_eq!(
            within(
                Instant::now(),
                Duration::from_secs(60),
                Some(&timer),
                async {}
            )
            .await,
            Some(())
        );
        let out = within(
            Instant::now(),
            Duration::from_secs(2),
            Some(&timer),
            std::future::pending::<()>(),
        )
        .await;
        assert_eq!(out, None);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_shared_timer_it_is_a_plain_timeout() {
        let start = Instant::now();
        assert_eq!(
            within(
                Instant::now(),
                Duration::from_secs(3),
                None,
                std::future::pending::<()>()
            )
            .await,
            None
        );
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }
}
