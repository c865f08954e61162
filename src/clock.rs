//! A worker's clock: HAProxy's `now_ms` model.
//!
//! Reading the monotonic clock costs ~30 ns on the 2-core reference VM, and a request used to
//! read it about twenty times (access-log timings, the client socket's timeout bookkeeping,
//! pool idle ages, deadlines). Most of those readings only need to be as exact as a timeout
//! of seconds. So:
//!
//! - [`now`] reads the clock and remembers the reading for this thread. The request path calls
//!   it where a figure is reported: when a request's head is parsed and when its response
//!   headers are ready.
//! - [`recent`] returns this thread's last reading, without reading the clock. Workers also
//!   take a reading each time they wake up ([`refresh`] on unpark), so on a worker it is never
//!   older than the current round of work: a few microseconds under load, and the moment of
//!   the wake-up otherwise. Idle ages, inactivity clocks and the start of a timeout are taken
//!   from it.
//!
//! `recent` is never later than the true time, so a deadline computed from it can only be
//! early by that much, never late.

use std::cell::Cell;

use tokio::time::Instant;

thread_local! {
    static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Reads the clock, and remembers the reading as this thread's [`recent`] time.
pub fn now() -> Instant {
    let now = Instant::now();
    LAST.with(|l| l.set(Some(now)));
    now
}

/// This thread's last [`now`] (the clock is read if there is none yet).
pub fn recent() -> Instant {
    LAST.with(Cell::get).unwrap_or_else(now)
}

/// The time since `earlier`, by a fresh reading ([`now`]).
pub fn since(earlier: Instant) -> std::time::Duration {
    now().saturating_duration_since(earlier)
}

/// Takes a reading (a worker calls this whenever it wakes up).
pub fn refresh() {
    now();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_is_the_last_reading_and_never_ahead() {
        let first = now();
        assert_eq!(recent(), first);
        std::thread::sleep(std::time::Duration::from_millis(2));
        // No reading since: still the old one, behind the true time.
        assert_eq!(recent(), first);
        assert!(recent() < Instant::now());
        let second = now();
        assert!(second > first);
        assert_eq!(recent(), second);
    }

    #[test]
    fn each_thread_has_its_own() {
        let mine = now();
        let theirs = std::thread::spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(2));
            now()
        })
        .join()
        .unwrap();
        assert!(theirs > mine);
        assert_eq!(recent(), mine);
    }
}
