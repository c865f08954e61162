//! The server state table: one [`ServerState`] per (backend, address), shared by every
//! snapshot that names that server, so health, counters and admin overrides carry over reloads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use dashmap::DashMap;

/// Stable identity of a server across reloads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerKey {
    pub backend: String,
    pub addr: SocketAddr,
}

/// Per-backend run-time facts. `generation` changes whenever a server's usability or weight
/// changes, so that balancers can rebuild cached schedules lazily.
#[derive(Debug, Default)]
pub struct BackendState {
    generation: AtomicU64,
}

impl BackendState {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Run-time state of one server.
#[derive(Debug)]
pub struct ServerState {
    pub key: ServerKey,
    backend: Arc<BackendState>,
    up: AtomicBool,
    weight: AtomicU32,
    /// The weight the config last gave; an admin override replaces `weight` but not this.
    config_weight: AtomicU32,
    active: AtomicU32,
    requests: AtomicU64,
    connect_failures: AtomicU64,
    /// Last time a failure of this server was logged, in seconds since `LOG_EPOCH`.
    last_failure_log: AtomicU64,
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
    fn new(key: ServerKey, backend: Arc<BackendState>, weight: u32) -> Self {
        Self {
            key,
            backend,
            up: AtomicBool::new(true),
            weight: AtomicU32::new(weight),
            config_weight: AtomicU32::new(weight),
            active: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            last_failure_log: AtomicU64::new(0),
        }
    }

    /// Whether the server may take new requests: up and with a non-zero weight.
    pub fn usable(&self) -> bool {
        self.up.load(Ordering::Acquire) && self.weight() > 0
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Marks the server up or down; returns whether that changed anything.
    pub fn set_up(&self, up: bool) -> bool {
        let changed = self.up.swap(up, Ordering::AcqRel) != up;
        if changed {
            self.backend.bump();
        }
        changed
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
        self.active.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }

    /// Counts a request dispatched to this server; the returned guard marks it finished.
    pub fn begin_request(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        ActiveGuard {
            server: Arc::clone(self),
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

    pub fn record_connect_failure(&self) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
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
        self.server.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every server and backend wasp knows of, keyed by stable ids.
#[derive(Debug, Default)]
pub struct StateTable {
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
        Arc::clone(&self.backends.entry(name.to_owned()).or_default())
    }

    /// The state of a server, created with `weight` when first seen. A server that stays in
    /// the config keeps its state; its configured weight is applied only when the config
    /// changed it, so run-time weight overrides survive reloads that leave it alone.
    pub fn server(&self, key: ServerKey, weight: u32) -> Arc<ServerState> {
        if let Some(s) = self.servers.get(&key) {
            if s.config_weight.swap(weight, Ordering::AcqRel) != weight {
                s.set_weight(weight);
            }
            return Arc::clone(&s);
        }
        let backend = self.backend(&key.backend);
        let state = Arc::new(ServerState::new(key.clone(), backend, weight));
        Arc::clone(self.servers.entry(key).or_insert(state).value())
    }

    /// Forgets servers that no longer appear in the config.
    pub fn retain(&self, keep: impl Fn(&ServerKey) -> bool) {
        self.servers.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> ServerKey {
        ServerKey {
            backend: "b".into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    #[test]
    fn state_survives_lookup_by_same_key() {
        let table = StateTable::new();
        let a = table.server(key(1), 1);
        a.set_up(false);
        let again = table.server(key(1), 1);
        assert!(Arc::ptr_eq(&a, &again));
        assert!(!again.is_up());
    }

    #[test]
    fn weight_override_survives_reload_unless_config_changes_it() {
        let table = StateTable::new();
        let s = table.server(key(1), 2);
        s.set_weight(7);
        assert_eq!(
            table.server(key(1), 2).weight(),
            7,
            "same config weight keeps the override"
        );
        assert_eq!(
            table.server(key(1), 3).weight(),
            3,
            "a new config weight applies"
        );
    }

    #[test]
    fn usability_changes_bump_the_backend_generation() {
        let table = StateTable::new();
        let s = table.server(key(1), 1);
        let b = table.backend("b");
        let g0 = b.generation();
        assert!(s.set_up(false));
        assert!(!s.set_up(false), "no change, no bump");
        s.set_weight(3);
        assert_eq!(b.generation(), g0 + 2);
    }

    #[test]
    fn active_guard_counts_in_flight_requests() {
        let table = StateTable::new();
        let s = table.server(key(1), 1);
        let g1 = s.begin_request();
        let g2 = s.begin_request();
        assert_eq!(s.active(), 2);
        drop(g1);
        assert_eq!(s.active(), 1);
        drop(g2);
        assert_eq!((s.active(), s.requests()), (0, 2));
    }
}
