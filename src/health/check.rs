//! Active health checks: the per-server checker task and the rise/fall state machine it runs.
//!
//! Semantics are HAProxy's:
//!
//! - `rise` consecutive passed checks bring a DOWN server UP; `fall` consecutive failed checks
//!   take an UP server DOWN. A result of the other kind restarts the count.
//! - A server starts UP (traffic flows at once), and one failed check before its first passed
//!   one marks it DOWN (HAProxy's default `init-state up`).
//! - The next check is due `interval` after the previous one ended while UP and settled,
//!   `fastinter` while a change is in progress (failures while UP, passes while DOWN), and
//!   `downinter` while DOWN and settled.
//! - Every delay gets a random ±[`SPREAD_PERCENT`] jitter, and the first checks of a batch of
//!   servers are staggered across one interval, so checks never run in lockstep.
//! - Each state change is logged at `warn`; a changed result that changes no state yet at
//!   `info`; a result identical to the previous one not at all.
//! - No check runs while the server is in `maint`.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{AdminState, CheckParams};
use crate::health::probe::Probe;
use crate::health::result::{CheckResult, HealthCheck, Outcome, Reason};
use crate::health::state::{Health, ServerState};

/// Jitter applied to every check delay, in percent either way (HAProxy's `spread-checks`
/// documentation recommends 2 to 5).
pub const SPREAD_PERCENT: u32 = 5;

/// Where a server stands in the rise/fall count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// UP since start-up, no check passed yet: one failure takes it DOWN.
    Initial,
    /// UP, after `failures` consecutive failed checks (fewer than `fall`).
    Up { failures: u32 },
    /// DOWN, after `successes` consecutive passed checks (fewer than `rise`).
    Down { successes: u32 },
}

/// The rise/fall state machine of one server.
#[derive(Debug, Clone)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    phase: Phase,
}

impl Tracker {
    /// A server seen for the first time: UP, in its initial phase.
    pub fn new(rise: u32, fall: u32) -> Self {
        Self::with_phase(rise, fall, Phase::Initial)
    }

    /// Picks up a server whose health is already known (a checker restarted by a reload):
    /// settled in that health, or initial when it is UP and was never checked.
    pub fn resume(rise: u32, fall: u32, health: Health, checked: bool) -> Self {
        let phase = match (health, checked) {
            (Health::Up, false) => Phase::Initial,
            (Health::Up, true) => Phase::Up { failures: 0 },
            (Health::Down, _) => Phase::Down { successes: 0 },
        };
        Self::with_phase(rise, fall, phase)
    }

    fn with_phase(rise: u32, fall: u32, phase: Phase) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            phase,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn health(&self) -> Health {
        match self.phase {
            Phase::Initial | Phase::Up { .. } => Health::Up,
            Phase::Down { .. } => Health::Down,
        }
    }

    /// Adopts a health that something else set (passive health, an admin), settled.
    pub fn sync(&mut self, health: Health) {
        if health != self.health() {
            self.phase = match health {
                Health::Up => Phase::Up { failures: 0 },
                Health::Down => Phase::Down { successes: 0 },
            };
        }
    }

    /// Counts one check result; returns the new health when it changes.
    pub fn record(&mut self, passed: bool) -> Option<Health> {
        let (phase, change) = match (self.phase, passed) {
            (Phase::Initial | Phase::Up { .. }, true) => (Phase::Up { failures: 0 }, None),
            (Phase::Initial, false) => (Phase::Down { successes: 0 }, Some(Health::Down)),
            (Phase::Up { failures }, false) if failures + 1 >= self.fall => {
                (Phase::Down { successes: 0 }, Some(Health::Down))
            }
            (Phase::Up { failures }, false) => (
                Phase::Up {
                    failures: failures + 1,
                },
                None,
            ),
            (Phase::Down { .. }, false) => (Phase::Down { successes: 0 }, None),
            (Phase::Down { successes }, true) if successes + 1 >= self.rise => {
                (Phase::Up { failures: 0 }, Some(Health::Up))
            }
            (Phase::Down { successes }, true) => (
                Phase::Down {
                    successes: successes + 1,
                },
                None,
            ),
        };
        self.phase = phase;
        change
    }

    /// The delay before the next check (before jitter).
    pub fn delay(&self, params: &CheckParams) -> Duration {
        match self.phase {
            Phase::Up { failures: 0 } => params.interval,
            Phase::Down { successes: 0 } => params.downinter,
            // HAProxy checks a not yet confirmed server at the fast rate too.
            Phase::Initial | Phase::Up { .. } | Phase::Down { .. } => params.fastinter,
        }
    }

    /// Progress toward the next change, for logs: `1/3 to DOWN`.
    fn progress(&self) -> String {
        match self.phase {
            Phase::Initial => "1/1 to DOWN".to_owned(),
            Phase::Up { failures } => format!("{failures}/{} to DOWN", self.fall),
            Phase::Down { successes } => format!("{successes}/{} to UP", self.rise),
        }
    }
}

/// A small seeded random source for check jitter (SplitMix64: no dependency, and tests can fix
/// the seed or turn the jitter off).
#[derive(Debug, Clone)]
pub struct Spread {
    state: u64,
    percent: u32,
}

impl Spread {
    /// Jitter of ±`percent`, from `seed`.
    pub fn new(seed: u64, percent: u32) -> Self {
        Self {
            state: seed,
            percent: percent.min(50),
        }
    }

    /// ±[`SPREAD_PERCENT`] from a random seed.
    pub fn random() -> Self {
        let seed = std::hash::RandomState::new().build_hasher().finish();
        Self::new(seed, SPREAD_PERCENT)
    }

    /// No jitter at all (tests).
    pub fn none() -> Self {
        Self::new(0, 0)
    }

    /// The jitter size, in percent either way.
    pub fn percent(&self) -> u32 {
        self.percent
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `d` scaled by a random factor in [1 - p, 1 + p].
    pub fn jitter(&mut self, d: Duration) -> Duration {
        if self.percent == 0 {
            return d;
        }
        let p = f64::from(self.percent) / 100.0;
        d.mul_f64(1.0 + p * (2.0 * self.unit() - 1.0))
    }

    /// When the first check of the `index`-th of `count` servers started together is due:
    /// `index/count` of `interval`, plus a random part below both that slot and
    /// [`SPREAD_PERCENT`] of `interval`.
    pub fn first_delay(&mut self, interval: Duration, index: usize, count: usize) -> Duration {
        let count = u32::try_from(count.max(1)).unwrap_or(u32::MAX);
        let index = u32::try_from(index).unwrap_or(u32::MAX).min(count - 1);
        let slot = interval / count;
        let extra = slot.min(interval * self.percent / 100);
        slot * index + extra.mul_f64(self.unit())
    }
}

/// Everything one server's checker needs.
#[derive(Debug)]
pub struct Checker<P> {
    pub backend: Arc<str>,
    pub server: Arc<str>,
    pub params: CheckParams,
    pub probe: P,
    pub judge: Box<dyn HealthCheck>,
    pub state: Arc<ServerState>,
    pub spread: Spread,
}

impl<P: Probe> Checker<P> {
    /// Checks forever: the first check after `first`, then at the delays the state asks for.
    pub async fn run(mut self, first: Duration) {
        let mut tracker = Tracker::resume(
            self.params.rise,
            self.params.fall,
            self.state.health(),
            self.state.last_check().is_some(),
        );
        let mut last_reason = self.state.last_check().map(|r| r.verdict.reason.clone());
        tokio::time::sleep(first).await;
        loop {
            if self.state.admin() == AdminState::Maint {
                tokio::time::sleep(self.spread.jitter(self.params.interval)).await;
                continue;
            }
            let observation = self.probe.probe().await;
            let verdict = self.judge.judge(&observation);
            tracker.sync(self.state.health());
            let change = tracker.record(verdict.passed);
            let error = match &observation.outcome {
                Outcome::Failed(e) => Some(e.to_string()),
                _ => None,
            };
            let changed_reason = last_reason.as_ref() != Some(&verdict.reason);
            last_reason = Some(verdict.reason.clone());
            let passed = verdict.passed;
            let reason = verdict.reason.clone();
            self.state.record_check(CheckResult {
                at: tokio::time::Instant::now().into_std(),
                observation,
                verdict,
            });
            match change {
                Some(health) if self.state.set_health(health) => {
                    self.log_change(health, &reason, error.as_deref())
                }
                _ if changed_reason => {
                    self.log_result(passed, &reason, error.as_deref(), &tracker)
                }
                _ => {}
            }
            tokio::time::sleep(self.spread.jitter(tracker.delay(&self.params))).await;
        }
    }

    fn log_change(&self, health: Health, reason: &Reason, error: Option<&str>) {
        let state = match health {
            Health::Up => "UP",
            Health::Down => "DOWN",
        };
        tracing::warn!(
            backend = &*self.backend,
            server = &*self.server,
            addr = %self.state.key.addr,
            check = %reason,
            state,
            error,
            "server {}/{} is {state}: {reason}",
            self.backend,
            self.server,
        );
    }

    fn log_result(&self, passed: bool, reason: &Reason, error: Option<&str>, tracker: &Tracker) {
        let progress = tracker.progress();
        let verb = if passed { "passed" } else { "failed" };
        tracing::info!(
            backend = &*self.backend,
            server = &*self.server,
            addr = %self.state.key.addr,
            check = %reason,
            progress,
            error,
            "health check for server {}/{} {verb}: {reason} ({progress})",
            self.backend,
            self.server,
        );
    }
}

/// A running checker; dropping it stops the task.
#[derive(Debug)]
pub struct CheckerHandle {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl CheckerHandle {
    /// Stops the checker and waits for its task to end.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for CheckerHandle {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Starts `checker` on the current tokio runtime; its first check is due after `first`.
pub fn spawn_checker<P: Probe>(checker: Checker<P>, first: Duration) -> CheckerHandle {
    spawn_until_stopped(checker.run(first))
}

fn spawn_until_stopped(run: impl Future<Output = ()> + Send + 'static) -> CheckerHandle {
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        tokio::select! {
            _ = token.cancelled() => {}
            _ = run => {}
        }
    });
    CheckerHandle {
        stop,
        task: Some(task),
    }
}
