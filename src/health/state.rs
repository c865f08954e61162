//! The server state table: one [`ServerState`] per (backend, address), shared by every
//! snapshot that names that server, so health, counters and admin overrides carry over reloads.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use tokio::sync::Notify;

use crate::config::{AdminState, Server};
use crate::counters::{Sessions, Traffic, raise};
use crate::health::result::{CheckResult, Reason, Verdict};

/// Stable identity of a server across reloads: its backend, its name and its address. Two
/// entries of one backend at one address are two servers, with a state each (as HAProxy's
/// `server` lines are); a server renamed or moved to another address starts afresh.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerKey {
    pub backend: String,
    pub server: String,
    pub addr: SocketAddr,
}

impl ServerKey {
    /// The key of server `conf` of backend `backend`.
    pub fn of(backend: &str, conf: &Server) -> ServerKey {
        ServerKey {
            backend: backend.to_owned(),
            server: conf.name.clone(),
            addr: conf.addr,
        }
    }
}

/// Per-backend run-time facts. `generation` changes whenever a server's usability or weight
/// changes, so that balancers can rebuild cached schedules lazily. The backend also counts its
/// requests in flight and wakes queued requests when a slot frees up.
///
/// Aligned like [`Busy`], so that the `Arc` counts before it share no cache line with it.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct BackendState {
    name: Arc<str>,
    generation: AtomicU64,
    busy: Busy,
    /// Requests waiting in the queue for a free slot.
    waiting: AtomicUsize,
    freed: Notify,
    /// Requests routed to the backend, counted when their response ends.
    pub traffic: Traffic,
}

impl BackendState {
    pub fn new(name: &str) -> Self {
        Self {
            name: Arc::from(name),
            ..Self::default()
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Most requests in flight at once since the backend was first configured.
    pub fn max_active(&self) -> u64 {
        self.busy.max_active.load(Ordering::Relaxed)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        // A server that came back or got more weight may take a queued request.
        self.wake_waiters();
    }

    /// Requests in flight to any server of the backend.
    pub fn active(&self) -> u32 {
        self.busy.active.load(Ordering::Relaxed)
    }

    /// Waits until a request finishes or server state changes (either may free a slot).
    /// Register before re-checking capacity: `let n = s.freed(); if full { n.await }`.
    pub fn slot_freed(&self) -> QueueTicket<'_> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        QueueTicket {
            backend: self,
            notified: Box::pin(self.freed.notified()),
        }
    }

    /// Requests waiting in the queue.
    pub fn queued(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    fn wake_waiters(&self) {
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.freed.notify_waiters();
        }
    }

    /// One slot freed: the request that has waited longest gets its turn (tokio's `Notify`
    /// wakes its waiters first come, first served, and a woken waiter that gives up passes its
    /// turn on). With nobody waiting the turn is kept for the next one to queue.
    fn wake_next(&self) {
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.freed.notify_one();
        }
    }
}

/// A registration to be woken when a slot may have freed up.
pub struct QueueTicket<'a> {
    backend: &'a BackendState,
    notified: std::pin::Pin<Box<tokio::sync::futures::Notified<'a>>>,
}

impl std::fmt::Debug for QueueTicket<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueTicket")
    }
}

impl QueueTicket<'_> {
    /// Arms the registration, so that a wake-up between this call and the `.await` of
    /// [`QueueTicket::wait`] is not lost.
    pub fn enable(&mut self) {
        self.notified.as_mut().enable();
    }

    pub async fn wait(mut self) {
        self.notified.as_mut().await;
    }
}

impl Drop for QueueTicket<'_> {
    fn drop(&mut self) {
        self.backend.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Health as judged by checks (active or passive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    Down,
}

const UP: u8 = 0;
const DOWN: u8 = 1;

fn admin_code(s: AdminState) -> u8 {
    match s {
        AdminState::Ready => 0,
        AdminState::Drain => 1,
        AdminState::Maint => 2,
    }
}

fn admin_of(code: u8) -> AdminState {
    match code {
        1 => AdminState::Drain,
        2 => AdminState::Maint,
        _ => AdminState::Ready,
    }
}

/// Counts every request writes (from every worker), on cache lines of their own: next to
/// the read-mostly fields that each pick reads (health, weight, generation), they would keep
/// evicting those from the other workers' caches.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Busy {
    active: AtomicU32,
    /// Most requests in flight at once.
    max_active: AtomicU64,
}

/// Run-time state of one server. Aligned like [`Busy`], so that the `Arc` counts before it
/// (written for every request) share no cache line with the fields a pick reads.
#[derive(Debug)]
#[repr(align(128))]
pub struct ServerState {
    pub key: ServerKey,
    backend: Arc<BackendState>,
    health: AtomicU8,
    admin: AtomicU8,
    /// The admin state the config last gave; a run-time override replaces `admin` only.
    config_admin: AtomicU8,
    weight: AtomicU32,
    /// The weight the config last gave; an admin override replaces `weight` but not this.
    config_weight: AtomicU32,
    backup: AtomicBool,
    /// 0: no limit.
    maxconn: AtomicU32,
    busy: Busy,
    /// Attempts sent to this server, responses, bytes, timings.
    pub traffic: Traffic,
    connect_failures: AtomicU64,
    checks_passed: AtomicU64,
    checks_failed: AtomicU64,
    /// Consecutive errors seen on real traffic (passive health).
    observed_errors: AtomicU32,
    /// Last time a failure of this server was logged, in seconds since `LOG_EPOCH`.
    last_failure_log: AtomicU64,
    /// The latest active health check, if one ran.
    last_check: ArcSwapOption<CheckResult>,
    /// When `health` or `admin` last changed (or the state was created). Written on changes
    /// only.
    last_change: Mutex<Instant>,
    /// Woken when the admin state changes: a checker idle while the server is in maintenance
    /// checks it at once when it leaves.
    admin_changed: Notify,
}

/// The current time on tokio's clock (paused in tests), as a std `Instant`.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Failures of one server are logged at most once per this many seconds.
const FAILURE_LOG_INTERVAL_SECS: u64 = 1;

fn log_clock_secs() -> u64 {
    static LOG_EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    // Offset by the interval so that the very first failure is always logged.
    LOG_EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs()
        + FAILURE_LOG_INTERVAL_SECS
}

impl ServerState {
    fn new(key: ServerKey, backend: Arc<BackendState>, conf: &Server) -> Self {
        let admin = admin_code(conf.state);
        Self {
            key,
            backend,
            health: AtomicU8::new(UP),
            admin: AtomicU8::new(admin),
            config_admin: AtomicU8::new(admin),
            weight: AtomicU32::new(conf.weight),
            config_weight: AtomicU32::new(conf.weight),
            backup: AtomicBool::new(conf.backup),
            maxconn: AtomicU32::new(conf.maxconn.unwrap_or(0)),
            busy: Busy::default(),
            traffic: Traffic::new(),
            connect_failures: AtomicU64::new(0),
            checks_passed: AtomicU64::new(0),
            checks_failed: AtomicU64::new(0),
            observed_errors: AtomicU32::new(0),
            last_failure_log: AtomicU64::new(0),
            last_check: ArcSwapOption::empty(),
            last_change: Mutex::new(now()),
            admin_changed: Notify::new(),
        }
    }

    /// Applies a (re)loaded config entry: weight and admin state only when the config changed
    /// them (run-time overrides survive otherwise), backup and maxconn always.
    fn configure(&self, conf: &Server) {
        if self.config_weight.swap(conf.weight, Ordering::AcqRel) != conf.weight {
            self.set_weight(conf.weight);
        }
        let admin = admin_code(conf.state);
        if self.config_admin.swap(admin, Ordering::AcqRel) != admin {
            self.set_admin(conf.state);
        }
        let mut changed = self.backup.swap(conf.backup, Ordering::AcqRel) != conf.backup;
        changed |= self
            .maxconn
            .swap(conf.maxconn.unwrap_or(0), Ordering::AcqRel)
            != conf.maxconn.unwrap_or(0);
        if changed {
            self.backend.bump();
        }
    }

    /// Whether the server may take new requests: up, ready, with a non-zero weight.
    pub fn usable(&self) -> bool {
        self.health.load(Ordering::Acquire) == UP
            && self.admin.load(Ordering::Acquire) == admin_code(AdminState::Ready)
            && self.weight() > 0
    }

    /// Whether the server is below its `maxconn` (always, without one).
    pub fn has_capacity(&self) -> bool {
        let max = self.maxconn.load(Ordering::Relaxed);
        max == 0 || self.active() < max
    }

    /// The server's `maxconn`, if it has one.
    pub fn maxconn(&self) -> Option<u32> {
        Some(self.maxconn.load(Ordering::Relaxed)).filter(|&m| m > 0)
    }

    pub fn is_backup(&self) -> bool {
        self.backup.load(Ordering::Relaxed)
    }

    pub fn health(&self) -> Health {
        if self.health.load(Ordering::Acquire) == UP {
            Health::Up
        } else {
            Health::Down
        }
    }

    pub fn is_up(&self) -> bool {
        self.health() == Health::Up
    }

    /// Sets the health; returns whether that changed anything.
    pub fn set_health(&self, health: Health) -> bool {
        let code = if health == Health::Up { UP } else { DOWN };
        let changed = self.health.swap(code, Ordering::AcqRel) != code;
        if changed {
            self.observed_errors.store(0, Ordering::Relaxed);
            self.changed_now();
            self.backend.bump();
        }
        changed
    }

    fn changed_now(&self) {
        *self
            .last_change
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = now();
    }

    /// When the status (health, or admin state) last changed (the state's creation if it
    /// never did), as HAProxy's `lastchg`.
    pub fn last_change(&self) -> Instant {
        *self
            .last_change
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The latest active health check, if one ran.
    pub fn last_check(&self) -> Option<Arc<CheckResult>> {
        self.last_check.load_full()
    }

    /// Keeps `result` as the latest active health check, and counts it.
    pub fn record_check(&self, result: CheckResult) {
        let counter = if result.verdict.passed {
            &self.checks_passed
        } else {
            &self.checks_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.last_check.store(Some(Arc::new(result)));
    }

    /// Live traffic marked the server down after `errors` errors in a row (passive health):
    /// kept as its latest result, so that the stats say why, but not counted as a check.
    pub fn record_observed_down(&self, errors: u32) {
        self.last_check.store(Some(Arc::new(CheckResult {
            at: std::time::Instant::now(),
            observation: None,
            verdict: Verdict {
                passed: false,
                reason: Reason::Observed(errors),
            },
        })));
    }

    /// Active health checks run so far: (passed, failed).
    pub fn checks(&self) -> (u64, u64) {
        (
            self.checks_passed.load(Ordering::Relaxed),
            self.checks_failed.load(Ordering::Relaxed),
        )
    }

    /// The backend this server belongs to.
    pub fn backend(&self) -> &Arc<BackendState> {
        &self.backend
    }

    /// Marks the server up or down; returns whether that changed anything.
    pub fn set_up(&self, up: bool) -> bool {
        self.set_health(if up { Health::Up } else { Health::Down })
    }

    pub fn admin(&self) -> AdminState {
        admin_of(self.admin.load(Ordering::Acquire))
    }

    /// Sets the administrative state (an admin override); returns whether it changed.
    pub fn set_admin(&self, state: AdminState) -> bool {
        let code = admin_code(state);
        let changed = self.admin.swap(code, Ordering::AcqRel) != code;
        if changed {
            self.changed_now();
            self.backend.bump();
            self.admin_changed.notify_waiters();
        }
        changed
    }

    /// Waits for the next change of the admin state.
    pub async fn admin_changed(&self) {
        self.admin_changed.notified().await;
    }

    /// Waits until the server is out of maintenance (at once when it is).
    pub async fn out_of_maint(&self) {
        loop {
            let changed = self.admin_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.admin() != AdminState::Maint {
                return;
            }
            changed.await;
        }
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Acquire)
    }

    pub fn set_weight(&self, weight: u32) {
        if self.weight.swap(weight, Ordering::AcqRel) != weight {
            self.backend.bump();
        }
    }

    /// Requests currently being served by this server.
    pub fn active(&self) -> u32 {
        self.busy.active.load(Ordering::Relaxed)
    }

    /// Requests sent to this server (every attempt counts).
    pub fn requests(&self) -> u64 {
        self.traffic.requests()
    }

    /// Most requests in flight at once.
    pub fn max_active(&self) -> u64 {
        self.busy.max_active.load(Ordering::Relaxed)
    }

    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }

    /// Counts a request dispatched to this server; the returned guard marks it finished.
    pub fn begin_request(self: &Arc<Self>) -> ActiveGuard {
        let now = self.busy.active.fetch_add(1, Ordering::Relaxed) + 1;
        raise(&self.busy.max_active, u64::from(now));
        let backend = self.backend.busy.active.fetch_add(1, Ordering::Relaxed) + 1;
        raise(&self.backend.busy.max_active, u64::from(backend));
        self.traffic.count_request();
        ActiveGuard {
            server: Arc::clone(self),
        }
    }

    pub fn record_connect_failure(&self) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        self.traffic.count_error();
        self.backend.traffic.count_error();
    }

    /// Counts a server that took a request but gave no (timely) answer.
    pub fn record_response_error(&self) {
        self.traffic.count_error();
        self.backend.traffic.count_error();
    }

    /// Counts a retry after a failed attempt on this server.
    pub fn record_retry(&self) {
        self.traffic.count_retry();
        self.backend.traffic.count_retry();
    }

    /// Passive health: counts one observed error; true when `limit` consecutive errors have
    /// been seen (the caller then marks the server down).
    pub fn observe_error(&self, limit: u32) -> bool {
        self.observed_errors.fetch_add(1, Ordering::AcqRel) + 1 >= limit
    }

    /// Passive health: a success resets the consecutive error count.
    pub fn observe_success(&self) {
        if self.observed_errors.load(Ordering::Relaxed) != 0 {
            self.observed_errors.store(0, Ordering::Relaxed);
        }
    }

    /// Rate limit for failure logs: true at most once per second per server, so that a dead
    /// server under load does not flood the log.
    pub fn should_log_failure(&self) -> bool {
        let now = log_clock_secs();
        let last = self.last_failure_log.load(Ordering::Relaxed);
        now >= last + FAILURE_LOG_INTERVAL_SECS
            && self
                .last_failure_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Holds one unit of a server's `active` count; dropping it releases the unit.
#[derive(Debug)]
pub struct ActiveGuard {
    server: Arc<ServerState>,
}

impl ActiveGuard {
    pub fn server(&self) -> &Arc<ServerState> {
        &self.server
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.server.busy.active.fetch_sub(1, Ordering::Relaxed);
        let backend = &self.server.backend;
        backend.busy.active.fetch_sub(1, Ordering::Relaxed);
        backend.wake_next();
    }
}

/// Run-time facts of a frontend: its client connections and the requests it received.
#[derive(Debug)]
pub struct FrontendState {
    name: Arc<str>,
    pub sessions: Sessions,
    /// Requests received, counted when their response ends; `errors` counts requests wasp
    /// refused itself (400, 408, 431), failed TCP sessions, and connections of a trusted peer
    /// refused for their PROXY protocol header.
    pub traffic: Traffic,
}

impl FrontendState {
    pub fn new(name: &str) -> Self {
        Self {
            name: Arc::from(name),
            sessions: Sessions::default(),
            traffic: Traffic::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsRef<Sessions> for FrontendState {
    fn as_ref(&self) -> &Sessions {
        &self.sessions
    }
}

/// Every frontend, server and backend wasp knows of, keyed by stable ids.
#[derive(Debug, Default)]
pub struct StateTable {
    frontends: DashMap<String, Arc<FrontendState>>,
    backends: DashMap<String, Arc<BackendState>>,
    servers: DashMap<ServerKey, Arc<ServerState>>,
}

impl StateTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn backend(&self, name: &str) -> Arc<BackendState> {
        if let Some(b) = self.backends.get(name) {
            return Arc::clone(&b);
        }
        Arc::clone(
            &self
                .backends
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(BackendState::new(name))),
        )
    }

    /// The state of a frontend, created when first asked for; it keeps its counters across
    /// reloads while the config names it.
    pub fn frontend(&self, name: &str) -> Arc<FrontendState> {
        if let Some(f) = self.frontends.get(name) {
            return Arc::clone(&f);
        }
        Arc::clone(
            &self
                .frontends
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(FrontendState::new(name))),
        )
    }

    /// Forgets frontends that `keep` rejects.
    pub fn retain_frontends(&self, keep: impl Fn(&str) -> bool) {
        self.frontends.retain(|name, _| keep(name));
    }

    /// The state of a server, created from `conf` when first seen. A server that stays in the
    /// config keeps its state; see [`ServerState::configure`] for what a reload changes.
    pub fn server(&self, key: ServerKey, conf: &Server) -> Arc<ServerState> {
        if let Some(s) = self.servers.get(&key) {
            s.configure(conf);
            return Arc::clone(&s);
        }
        let backend = self.backend(&key.backend);
        let state = Arc::new(ServerState::new(key.clone(), backend, conf));
        Arc::clone(self.servers.entry(key).or_insert(state).value())
    }

    /// The state of a server, if it is known.
    pub fn get(&self, key: &ServerKey) -> Option<Arc<ServerState>> {
        self.servers.get(key).map(|s| Arc::clone(&s))
    }

    /// Forgets servers (and backends) that no longer appear in the config.
    pub fn retain(&self, keep: impl Fn(&ServerKey) -> bool) {
        self.servers.retain(|k, _| keep(k));
        self.backends
            .retain(|name, _| self.servers.iter().any(|s| &s.key().backend == name));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A server entry as the config would give it.
    pub(crate) fn conf(weight: u32) -> Server {
        Server {
            name: "s".into(),
            addr_spec: "127.0.0.1:1".into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            weight,
            check: false,
            backup: false,
            maxconn: None,
            state: AdminState::Ready,
            send_proxy: None,
            tls: None,
        }
    }

    fn key(port: u16) -> ServerKey {
        ServerKey {
            backend: "b".into(),
            server: "s".into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// The time of the last change follows the status the stats show: health, and admin state.
    #[tokio::test(start_paused = true)]
    async fn an_admin_change_is_a_change() {
        let table = StateTable::new();
        let s = table.server(key(1), &conf(1));
        let created = s.last_change();
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        assert!(!s.set_admin(AdminState::Ready), "no change");
        assert_eq!(s.last_change(), created);
        assert!(s.set_admin(AdminState::Maint));
        assert_eq!(s.last_change() - created, std::time::Duration::from_secs(5));
    }

    #[test]
    fn state_survives_lookup_by_same_key() {
        let table = StateTable::new();
        let a = table.server(key(1), &conf(1));
        a.set_up(false);
        let again = table.server(key(1), &conf(1));
        assert!(Arc::ptr_eq(&a, &again));
        assert!(!again.is_up());
    }

    #[test]
    fn weight_and_admin_overrides_survive_reload_unless_config_changes_them() {
        let table = StateTable::new();
        let s = table.server(key(1), &conf(2));
        s.set_weight(7);
        s.set_admin(AdminState::Drain);
        let same = table.server(key(1), &conf(2));
        assert_eq!(
            (same.weight(), same.admin()),
            (7, AdminState::Drain),
            "same config keeps overrides"
        );
        let changed = Server {
            state: AdminState::Maint,
            ..conf(3)
        };
        let s = table.server(key(1), &changed);
        assert_eq!(
            (s.weight(), s.admin()),
            (3, AdminState::Maint),
            "a new config value applies"
        );
    }

    #[test]
    fn usability_changes_bump_the_backend_generation() {
        let table = StateTable::new();
        let s = table.server(key(1), &conf(1));
        let b = table.backend("b");
        let g0 = b.generation();
        assert!(s.set_up(false));
        assert!(!s.set_up(false), "no change, no bump");
        s.set_weight(3);
        s.set_admin(AdminState::Maint);
        assert_eq!(b.generation(), g0 + 3);
    }

    #[test]
    fn only_ready_up_weighted_servers_are_usable() {
        let table = StateTable::new();
        let s = table.server(key(1), &conf(1));
        assert!(s.usable());
        s.set_admin(AdminState::Drain);
        assert!(!s.usable());
        s.set_admin(AdminState::Ready);
        s.set_health(Health::Down);
        assert!(!s.usable());
        s.set_health(Health::Up);
        s.set_weight(0);
        assert!(!s.usable());
    }

    #[test]
    fn active_guard_counts_in_flight_requests_and_capacity() {
        let table = StateTable::new();
        let s = table.server(
            key(1),
            &Server {
                maxconn: Some(2),
                ..conf(1)
            },
        );
        let g1 = s.begin_request();
        assert!(s.has_capacity());
        let g2 = s.begin_request();
        assert!(!s.has_capacity());
        assert_eq!((s.active(), table.backend("b").active()), (2, 2));
        drop(g1);
        assert!(s.has_capacity());
        drop(g2);
        assert_eq!((s.active(), s.requests()), (0, 2));
    }

    #[test]
    fn passive_errors_count_consecutively() {
        let table = StateTable::new();
        let s = table.server(key(1), &conf(1));
        assert!(!s.observe_error(3));
        assert!(!s.observe_error(3));
        s.observe_success();
        assert!(!s.observe_error(3));
        assert!(!s.observe_error(3));
        assert!(s.observe_error(3));
    }

    #[tokio::test]
    async fn a_finished_request_wakes_the_queue() {
        let table = StateTable::new();
        let s = table.server(
            key(1),
            &Server {
                maxconn: Some(1),
                ..conf(1)
            },
        );
        let backend = table.backend("b");
        let guard = s.begin_request();
        let mut ticket = backend.slot_freed();
        ticket.enable();
        assert_eq!(backend.queued(), 1);
        drop(guard);
        tokio::time::timeout(std::time::Duration::from_secs(5), ticket.wait())
            .await
            .expect("woken");
        assert_eq!(backend.queued(), 0);
    }
}
