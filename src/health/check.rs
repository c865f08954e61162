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
use crate::health::result::{
    CheckResult, HealthCheck, Observation, Outcome, ProbeError, Reason, Verdict,
};
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

    /// HAProxy's health counter, for logs: `3/3 UP` when fully up, `2/3 UP` after one
    /// failure, `1/3 UP` before the first pass, `0/2 DOWN` when down, `1/2 DOWN` after a pass.
    fn progress(&self) -> String {
        match self.phase {
            Phase::Initial => format!("1/{} UP", self.fall),
            Phase::Up { failures } => format!("{}/{} UP", self.fall - failures, self.fall),
            Phase::Down { successes } => format!("{successes}/{} DOWN", self.rise),
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

/// `judge`'s verdict on `observation`. A judge that may take long (a plugin, up to its
/// timeout) runs on the blocking pool: the checker's own thread also serves the admin API
/// (`/healthz`) and runs every other check. `None`: the runtime is shutting down.
async fn judged(
    judge: &Arc<dyn HealthCheck>,
    observation: Observation,
) -> Option<(Observation, Verdict)> {
    if !judge.may_block() {
        let verdict = judge.judge(&observation);
        return Some((observation, verdict));
    }
    let judge = Arc::clone(judge);
    let judging = tokio::task::spawn_blocking(move || {
        let verdict = judge.judge(&observation);
        (observation, verdict)
    });
    match judging.await {
        Ok(judged) => Some(judged),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => None,
    }
}

/// Everything one server's checker needs.
#[derive(Debug)]
pub struct Checker<P> {
    pub backend: Arc<str>,
    pub server: Arc<str>,
    pub params: CheckParams,
    pub probe: P,
    pub judge: Arc<dyn HealthCheck>,
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
                // No checks in maintenance. Leaving it, the server is checked at once, and one
                // that is UP starts over as at start-up: a single failed check takes it DOWN
                // (HAProxy's "start OK but check immediately"), for it may have died meanwhile.
                self.state.out_of_maint().await;
                if self.state.health() == Health::Up {
                    tracker = Tracker::new(self.params.rise, self.params.fall);
                }
            }
            let observation = self.probe.probe().await;
            let Some((observation, verdict)) = judged(&self.judge, observation).await else {
                return;
            };
            tracker.sync(self.state.health());
            let change = tracker.record(verdict.passed);
            // The reason says it all, except what was wrong with an invalid response.
            let error = match &observation.outcome {
                Outcome::Failed(ProbeError::InvalidResponse(detail)) => Some(detail.clone()),
                _ => None,
            };
            // A first pass only confirms the start-up state: not worth a line per server.
            let changed_reason = match &last_reason {
                None => !verdict.passed,
                Some(last) => *last != verdict.reason,
            };
            last_reason = Some(verdict.reason.clone());
            let passed = verdict.passed;
            let reason = verdict.reason.clone();
            self.state.record_check(CheckResult {
                at: tokio::time::Instant::now().into_std(),
                observation: Some(observation),
                verdict,
            });
            match change {
                Some(health) if self.state.set_health(health) => {
                    self.log_change(health, &reason, error.as_deref())
                }
                _ if changed_reason => self.log_result(passed, &reason, error.as_deref(), &tracker),
                _ => {}
            }
            // Woken early by an admin change: a server put in maintenance and back is
            // checked as it leaves (above), not an interval later.
            tokio::select! {
                () = tokio::time::sleep(self.spread.jitter(tracker.delay(&self.params))) => {}
                () = self.state.admin_changed() => {}
            }
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
            "health check for server {}/{} {verb}: {reason}, {progress}",
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use tokio::time::Instant;

    use super::*;
    use crate::config::Server;
    use crate::health::result::NativeCheck;
    use crate::health::state::{ServerKey, StateTable};
    use crate::test_log::Logs;

    const PASS: bool = true;
    const FAIL: bool = false;

    fn params() -> CheckParams {
        CheckParams {
            interval: Duration::from_secs(10),
            fastinter: Duration::from_secs(1),
            downinter: Duration::from_secs(30),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            http: None,
            judge: None,
        }
    }

    /// Feeds `results` to a tracker; returns the changes, one per result.
    fn run(tracker: &mut Tracker, results: &[bool]) -> Vec<Option<Health>> {
        results.iter().map(|&r| tracker.record(r)).collect()
    }

    #[test]
    fn fall_consecutive_failures_take_an_up_server_down() {
        let mut t = Tracker::resume(2, 3, Health::Up, true);
        let changes = run(&mut t, &[FAIL, FAIL, PASS, FAIL, FAIL, FAIL]);
        assert_eq!(
            changes,
            [None, None, None, None, None, Some(Health::Down)],
            "a pass restarts the count"
        );
        assert_eq!(t.phase(), Phase::Down { successes: 0 });
    }

    #[test]
    fn rise_consecutive_successes_bring_a_down_server_up() {
        let mut t = Tracker::resume(2, 3, Health::Down, true);
        let changes = run(&mut t, &[PASS, FAIL, PASS, PASS, PASS]);
        assert_eq!(changes, [None, None, None, Some(Health::Up), None]);
        assert_eq!(t.phase(), Phase::Up { failures: 0 });
    }

    #[test]
    fn init_state_up_one_failure_before_the_first_success_marks_down() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(t.health(), Health::Up);
        assert_eq!(run(&mut t, &[FAIL]), [Some(Health::Down)]);
        assert_eq!(run(&mut t, &[PASS, PASS]), [None, Some(Health::Up)]);

        let mut t = Tracker::new(2, 3);
        assert_eq!(
            run(&mut t, &[PASS, FAIL, FAIL, FAIL]),
            [None, None, None, Some(Health::Down)],
            "after a first success, fall applies"
        );
    }

    #[test]
    fn rise_and_fall_of_one_flip_at_once() {
        let mut t = Tracker::resume(1, 1, Health::Up, true);
        assert_eq!(
            run(&mut t, &[FAIL, FAIL, PASS, PASS]),
            [Some(Health::Down), None, Some(Health::Up), None]
        );
    }

    #[test]
    fn a_resumed_checker_starts_settled_in_the_servers_health() {
        assert_eq!(
            Tracker::resume(2, 3, Health::Up, false).phase(),
            Phase::Initial
        );
        assert_eq!(
            Tracker::resume(2, 3, Health::Up, true).phase(),
            Phase::Up { failures: 0 }
        );
        assert_eq!(
            Tracker::resume(2, 3, Health::Down, true).phase(),
            Phase::Down { successes: 0 }
        );
    }

    #[test]
    fn sync_adopts_a_health_set_elsewhere() {
        let mut t = Tracker::resume(2, 3, Health::Up, true);
        t.record(FAIL);
        t.sync(Health::Down);
        assert_eq!(t.phase(), Phase::Down { successes: 0 });
        t.sync(Health::Down);
        assert_eq!(t.phase(), Phase::Down { successes: 0 });
    }

    #[test]
    fn delays_follow_the_phase() {
        let p = params();
        let at = |phase| Tracker::with_phase(2, 3, phase).delay(&p);
        assert_eq!(at(Phase::Up { failures: 0 }), p.interval);
        assert_eq!(at(Phase::Up { failures: 2 }), p.fastinter);
        assert_eq!(at(Phase::Down { successes: 0 }), p.downinter);
        assert_eq!(at(Phase::Down { successes: 1 }), p.fastinter);
    }

    #[test]
    fn jitter_stays_within_five_percent_and_varies() {
        let mut s = Spread::new(42, SPREAD_PERCENT);
        let base = Duration::from_secs(2);
        let delays: Vec<Duration> = (0..1000).map(|_| s.jitter(base)).collect();
        let (lo, hi) = (base.mul_f64(0.95), base.mul_f64(1.05));
        assert!(delays.iter().all(|d| (lo..=hi).contains(d)));
        let min = delays.iter().min().unwrap();
        let max = delays.iter().max().unwrap();
        assert!(*max - *min > Duration::from_millis(150), "{min:?}..{max:?}");
        assert_eq!(Spread::none().jitter(base), base);
    }

    #[test]
    fn first_checks_are_staggered_across_one_interval() {
        let interval = Duration::from_secs(4);
        let firsts: Vec<Duration> = (0..4)
            .map(|i| Spread::none().first_delay(interval, i, 4))
            .collect();
        assert_eq!(firsts, [0, 1, 2, 3].map(Duration::from_secs));
        let mut s = Spread::new(7, SPREAD_PERCENT);
        for i in 0..4 {
            let d = s.first_delay(interval, i, 4);
            let slot = Duration::from_secs(i as u64);
            // At most 5% of the interval past the slot start.
            assert!(
                d >= slot && d < slot + Duration::from_millis(200),
                "{i}: {d:?}"
            );
        }
        assert!(Spread::none().first_delay(interval, 0, 1) < interval);
    }

    /// A probe that plays `script` (true: connected, false: refused), records when it was
    /// called, then never answers again.
    #[derive(Clone)]
    struct Script {
        results: Arc<Mutex<VecDeque<bool>>>,
        calls: Arc<Mutex<Vec<Instant>>>,
    }

    impl Script {
        fn new(results: &[bool]) -> Self {
            Self {
                results: Arc::new(Mutex::new(results.iter().copied().collect())),
                calls: Arc::default(),
            }
        }

        /// Seconds since `start` of each call.
        fn call_times(&self, start: Instant) -> Vec<u64> {
            let calls = self.calls.lock().unwrap();
            calls.iter().map(|t| (*t - start).as_secs()).collect()
        }
    }

    impl Probe for Script {
        async fn probe(&self) -> Observation {
            self.calls.lock().unwrap().push(Instant::now());
            let next = self.results.lock().unwrap().pop_front();
            let Some(passed) = next else {
                return std::future::pending().await;
            };
            Observation {
                latency: Duration::from_millis(1),
                outcome: if passed {
                    Outcome::Connected
                } else {
                    Outcome::Failed(ProbeError::Refused)
                },
            }
        }
    }

    fn server_state() -> Arc<ServerState> {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9001));
        let conf = Server {
            name: "s1".into(),
            addr_spec: addr.to_string(),
            addr,
            weight: 1,
            check: true,
            backup: false,
            maxconn: None,
            state: AdminState::Ready,
            send_proxy: None,
            tls: None,
        };
        StateTable::new().server(ServerKey::of("items", &conf), &conf)
    }

    fn start(script: &Script, state: &Arc<ServerState>) -> CheckerHandle {
        spawn_checker(
            Checker {
                backend: Arc::from("items"),
                server: Arc::from("s1"),
                params: params(),
                probe: script.clone(),
                judge: Arc::new(NativeCheck::default()),
                state: Arc::clone(state),
                spread: Spread::none(),
            },
            Duration::ZERO,
        )
    }

    /// A judge that may block: it says when it is called, then holds its thread until
    /// released (or for ten seconds), and says which came first.
    #[derive(Debug)]
    struct Held {
        entered: Mutex<std::sync::mpsc::Sender<()>>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
        released: Mutex<std::sync::mpsc::Sender<bool>>,
    }

    impl HealthCheck for Held {
        fn judge(&self, observation: &Observation) -> Verdict {
            self.entered.lock().unwrap().send(()).unwrap();
            let release = self.release.lock().unwrap();
            let released = release.recv_timeout(Duration::from_secs(10)).is_ok();
            self.released.lock().unwrap().send(released).unwrap();
            NativeCheck::default().judge(observation)
        }

        fn may_block(&self) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn a_judge_that_takes_long_leaves_the_checkers_thread_free() {
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let (released_tx, released) = std::sync::mpsc::channel();
        let state = server_state();
        let _checker = spawn_checker(
            Checker {
                backend: Arc::from("items"),
                server: Arc::from("s1"),
                params: params(),
                probe: Script::new(&[PASS]),
                judge: Arc::new(Held {
                    entered: Mutex::new(entered_tx),
                    release: Mutex::new(release_rx),
                    released: Mutex::new(released_tx),
                }),
                state: Arc::clone(&state),
                spread: Spread::none(),
            },
            Duration::ZERO,
        );
        fn wait<T: Send + 'static>(rx: std::sync::mpsc::Receiver<T>) -> JoinHandle<T> {
            tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)).unwrap())
        }
        wait(entered).await.unwrap();
        // The judge is holding a thread. Were it this runtime's only thread, nothing below
        // would run until the judge gave up.
        tokio::spawn(async {}).await.unwrap();
        release.send(()).unwrap();
        assert!(
            wait(released).await.unwrap(),
            "the judge held the checker's thread: it was not released until it gave up"
        );
    }

    /// Lets the checker run through its script (the paused clock jumps ahead while idle).
    async fn settle() {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn checks_run_at_interval_fastinter_and_downinter() {
        let t0 = Instant::now();
        let script = Script::new(&[PASS, FAIL, FAIL, FAIL, FAIL, PASS, PASS, PASS]);
        let state = server_state();
        let _checker = start(&script, &state);
        settle().await;
        // 0: pass, UP settled -> interval 10s. 10: fail -> fastinter 1s. 11: fail. 12: third
        // failure, DOWN settled -> downinter 30s. 42: fail, still settled -> 30s. 72: pass,
        // rising -> fastinter. 73: pass, UP -> interval. 83: pass.
        assert_eq!(
            script.call_times(t0),
            [0, 10, 11, 12, 42, 72, 73, 83, 93],
            "the ninth call is the one left hanging"
        );
        assert!(state.is_up());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_before_the_first_success_marks_the_server_down_at_once() {
        let t0 = Instant::now();
        let script = Script::new(&[FAIL]);
        let state = server_state();
        assert!(state.is_up(), "servers start up");
        let _checker = start(&script, &state);
        settle().await;
        assert!(!state.is_up());
        assert_eq!(script.call_times(t0), [0, 30], "then checked at downinter");
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_result_and_the_time_of_the_last_change_are_kept() {
        let state = server_state();
        let created = state.last_change();
        assert!(state.last_check().is_none());
        let script = Script::new(&[PASS, FAIL, FAIL, FAIL]);
        let _checker = start(&script, &state);
        settle().await;
        let last = state.last_check().expect("a check result");
        assert_eq!(last.verdict.reason.to_string(), "layer4 connection refused");
        assert!(!last.verdict.passed);
        // The third failure was at 12s, on the paused clock.
        assert_eq!(state.last_change() - created, Duration::from_secs(12));
        assert_eq!(last.at, state.last_change());
    }

    #[tokio::test(start_paused = true)]
    async fn no_checks_run_in_maintenance() {
        let t0 = Instant::now();
        let state = server_state();
        state.set_admin(AdminState::Maint);
        let script = Script::new(&[PASS]);
        let _checker = start(&script, &state);
        tokio::time::sleep(Duration::from_secs(55)).await;
        assert!(script.call_times(t0).is_empty());
        state.set_admin(AdminState::Ready);
        settle().await;
        assert_eq!(
            script.call_times(t0),
            [55, 65],
            "checked as it leaves maintenance, then at the interval"
        );
    }

    /// A server UP before its maintenance may have died meanwhile: leaving it, the server is
    /// checked at once, and a single failed check takes it DOWN (HAProxy's "start OK but check
    /// immediately"), not `fall` checks an interval apart.
    #[tokio::test(start_paused = true)]
    async fn a_server_that_died_in_maintenance_is_down_at_its_first_check() {
        let t0 = Instant::now();
        let state = server_state();
        let script = Script::new(&[PASS, PASS, FAIL]);
        let _checker = start(&script, &state);
        // Passed at 0 and 10; in maintenance from 15 to 45.
        tokio::time::sleep(Duration::from_secs(15)).await;
        state.set_admin(AdminState::Maint);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(state.is_up());
        state.set_admin(AdminState::Ready);
        settle().await;
        assert!(!state.is_up(), "down at the first failed check");
        assert_eq!(script.call_times(t0)[..3], [0, 10, 45]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_checker_checks_no_more() {
        let t0 = Instant::now();
        let script = Script::new(&[PASS, PASS, PASS]);
        let state = server_state();
        let checker = start(&script, &state);
        tokio::time::sleep(Duration::from_secs(15)).await;
        checker.stop().await;
        settle().await;
        assert_eq!(script.call_times(t0), [0, 10]);

        let never = Script::new(&[PASS]);
        drop(start(&never, &state));
        settle().await;
        assert!(
            never.call_times(t0).is_empty(),
            "a dropped handle stops its task"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn only_state_changes_are_logged_as_warnings_and_repeats_not_at_all() {
        let (logs, _guard) = Logs::capture();

        let script = Script::new(&[PASS, PASS, FAIL, FAIL, FAIL, FAIL, FAIL, PASS, PASS, PASS]);
        let state = server_state();
        let _checker = start(&script, &state);
        settle().await;

        let warns = logs.lines("WARN");
        assert_eq!(warns.len(), 2, "{warns:#?}");
        assert!(
            warns[0].contains("server items/s1 is DOWN: layer4 connection refused"),
            "{}",
            warns[0]
        );
        for field in [
            "backend=\"items\"",
            "server=\"s1\"",
            "check=layer4 connection refused",
            "state=\"DOWN\"",
        ] {
            assert!(warns[0].contains(field), "{field} in {}", warns[0]);
        }
        assert!(
            warns[1].contains("server items/s1 is UP: layer4 ok"),
            "{}",
            warns[1]
        );
        let infos = logs.lines("INFO");
        assert_eq!(
            infos.len(),
            2,
            "first failure, first pass while down: {infos:#?}"
        );
        assert!(
            infos[0].contains(
                "health check for server items/s1 failed: layer4 connection refused, 2/3 UP"
            ),
            "{}",
            infos[0]
        );
        assert!(
            infos[1].contains("passed: layer4 ok, 1/2 DOWN"),
            "{}",
            infos[1]
        );
    }
}
