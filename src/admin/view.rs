//! The stats model: one [`StatsView`] built from the live snapshot and the state table, served
//! as `/stats.json`, rendered as the stats page and encoded as `/metrics`, so the three always
//! show the same numbers.
//!
//! Sections: `process`, `frontends`, `backends` (each with its `servers`), `plugins`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use std::sync::atomic::Ordering;

use crate::config::{AdminState, Balance};
use crate::counters::{CLASSES, RateWindow, TrafficTotals};
use crate::health::{ServerKey, ServerState};
use crate::plugin::LivePlugin;
use crate::plugin::instance::Usage;
use crate::plugin::registry::role_name;
use crate::snapshot::{Backend, Frontend, Server, Snapshot};

/// Everything the stats page shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatsView {
    pub process: ProcessView,
    pub frontends: Vec<FrontendView>,
    pub backends: Vec<BackendView>,
    pub plugins: Vec<PluginView>,
}

/// One live plugin: its version, what it is used for, and what its calls did.
#[derive(Debug, Clone, Serialize)]
pub struct PluginView {
    pub name: String,
    pub path: String,
    /// Loads of this plugin so far (1 for the first).
    pub version: u64,
    /// Hash of the live version's file (hex), as logged when it went live.
    pub hash: String,
    pub size_bytes: usize,
    /// `router`, `balancer`, `health`: the uses in the live config.
    pub roles: Vec<&'static str>,
    pub on_error: &'static str,
    pub timeout_ms: f64,
    pub memory_limit_bytes: usize,
    /// Calls of every version so far.
    pub calls: u64,
    /// Average decision time (instantiation included), in microseconds.
    pub avg_decision_us: Option<f64>,
    /// Calls that cost their decision, by kind, and their sum.
    pub errors: u64,
    pub timeouts: u64,
    pub traps: u64,
    pub memory_faults: u64,
    pub invalid_answers: u64,
    pub unavailable: u64,
    /// Decisions taken by `on_error` while the plugin was suspended, and the suspensions.
    pub suspended: u64,
    pub suspensions: u64,
    /// New versions a hot-load rejected (the previous one kept serving).
    pub rejected_loads: u64,
    /// Log lines over the plugin's budget, dropped.
    pub log_lines_dropped: u64,
    /// Instances the live version has created.
    pub instances: usize,
    /// The raw usage, for `/metrics` (histogram).
    #[serde(skip)]
    pub usage: Usage,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessView {
    pub version: &'static str,
    pub pid: u32,
    pub uptime_seconds: u64,
    /// Resident memory, when the OS tells (Linux).
    pub rss_bytes: Option<u64>,
    /// Client connections open now, on every listener (those of frontends a reload removed
    /// or renamed included: the frontends' own counts start again under a new name).
    pub connections: u64,
    /// The most client connections open at once (`[global] maxconn`).
    pub maxconn: usize,
    pub workers: usize,
    /// True once a graceful stop has begun.
    pub draining: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FrontendView {
    pub name: String,
    pub binds: Vec<String>,
    /// OPEN, or FULL while as many connections are open as its `maxconn` lets in.
    pub status: &'static str,
    /// Its own limit on client connections (`maxconn`), if it has one.
    pub maxconn: Option<u64>,
    /// Client connections.
    pub sessions: SessionsView,
    /// Requests per second over the last 10 s.
    pub rate: f64,
    pub traffic: TrafficView,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendView {
    pub name: String,
    /// UP when some server can take requests, else DOWN.
    pub status: &'static str,
    pub balance: String,
    /// Requests in flight (current), most at once (max), requests ever (total).
    pub sessions: SessionsView,
    pub queued: u64,
    pub rate: f64,
    pub traffic: TrafficView,
    /// Servers usable now / servers.
    pub servers_up: usize,
    pub servers: Vec<ServerView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerView {
    pub backend: String,
    pub name: String,
    pub addr: SocketAddr,
    /// UP, DOWN, MAINT or DRAIN (MAINT, then DOWN, then DRAIN win).
    pub status: &'static str,
    /// As judged by health checks: "up" or "down".
    pub health: &'static str,
    /// The administrative state: "ready", "drain" or "maint".
    pub admin: &'static str,
    pub weight: u32,
    pub backup: bool,
    pub maxconn: Option<u32>,
    /// Whether active health checks run for it.
    pub checked: bool,
    pub last_check: Option<CheckView>,
    /// Seconds since the health last changed (or the server was first configured).
    pub last_change_seconds: u64,
    pub checks_passed: u64,
    pub checks_failed: u64,
    /// Requests in flight (current), most at once (max), attempts sent (total).
    pub sessions: SessionsView,
    pub rate: f64,
    pub connect_failures: u64,
    pub traffic: TrafficView,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckView {
    /// HAProxy's words: "layer4 ok", "layer7 status 500", ...
    pub result: String,
    pub passed: bool,
    pub seconds_ago: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct SessionsView {
    pub current: u64,
    pub max: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrafficView {
    pub requests: u64,
    /// Responses by status class: 1xx..5xx, and "other" (no status sent).
    pub responses: HashMap<&'static str, u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Average time from request to response headers, in milliseconds.
    pub avg_response_ms: Option<f64>,
    pub retries: u64,
    pub errors: u64,
    /// The raw sums, for `/metrics` (histograms).
    #[serde(skip)]
    pub totals: TrafficTotals,
}

impl From<TrafficTotals> for TrafficView {
    fn from(t: TrafficTotals) -> Self {
        Self {
            requests: t.requests,
            responses: CLASSES.iter().copied().zip(t.responses).collect(),
            bytes_in: t.bytes_in,
            bytes_out: t.bytes_out,
            avg_response_ms: t.avg_response_ms(),
            retries: t.retries,
            errors: t.errors,
            totals: t,
        }
    }
}

/// What a rate is kept for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    Frontend(String),
    Backend(String),
    Server(ServerKey),
}

/// Request rates, sampled once a second from the totals by the admin server's sampler.
#[derive(Debug, Default)]
pub struct Rates {
    windows: HashMap<RateKey, RateWindow>,
}

/// Seconds the request rate is averaged over.
pub const RATE_WINDOW_SECS: usize = 10;

impl Rates {
    /// Takes one sample of every counted object; forgets the ones that are gone.
    pub fn sample(&mut self, snapshot: &Snapshot) {
        let mut seen: Vec<(RateKey, u64)> = Vec::new();
        for f in &snapshot.frontends {
            seen.push((
                RateKey::Frontend(f.name.to_string()),
                f.state.traffic.requests(),
            ));
        }
        for b in &snapshot.backends {
            seen.push((
                RateKey::Backend(b.name.to_string()),
                b.state.traffic.requests(),
            ));
            for s in &b.servers {
                seen.push((RateKey::Server(s.state.key.clone()), s.state.requests()));
            }
        }
        let mut next = HashMap::with_capacity(seen.len());
        for (key, total) in seen {
            let mut window = self
                .windows
                .remove(&key)
                .unwrap_or_else(|| RateWindow::new(RATE_WINDOW_SECS));
            window.push(total);
            next.insert(key, window);
        }
        self.windows = next;
    }

    /// Requests per second of `key` over the window.
    pub fn get(&self, key: &RateKey) -> f64 {
        self.windows.get(key).map_or(0.0, RateWindow::per_tick)
    }
}

/// Process facts that the stats view cannot read from the snapshot.
#[derive(Debug, Clone, Copy)]
pub struct ProcessFacts {
    pub started: Instant,
    pub draining: bool,
    pub workers: usize,
    pub maxconn: usize,
    pub connections: usize,
}

/// Builds the view of `snapshot` (servers' run-time state comes through it) and `plugins`.
pub fn build(
    snapshot: &Snapshot,
    plugins: &[LivePlugin],
    rates: &Rates,
    process: ProcessFacts,
) -> StatsView {
    let now = tokio::time::Instant::now().into_std();
    let frontends: Vec<FrontendView> = snapshot
        .frontends
        .iter()
        .map(|f| frontend(f, rates))
        .collect();
    StatsView {
        process: ProcessView {
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            uptime_seconds: process.started.elapsed().as_secs(),
            rss_bytes: rss_bytes(),
            connections: process.connections as u64,
            maxconn: process.maxconn,
            workers: process.workers,
            draining: process.draining,
        },
        frontends,
        backends: snapshot
            .backends
            .iter()
            .map(|b| backend(snapshot, b, rates, now))
            .collect(),
        plugins: plugins.iter().map(plugin).collect(),
    }
}

/// The view of one live plugin.
pub fn plugin(live: &LivePlugin) -> PluginView {
    let p = &live.plugin;
    let loaded = p.loaded();
    let usage = p.usage();
    let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    PluginView {
        name: p.name.to_string(),
        path: live.path.display().to_string(),
        version: loaded.version,
        hash: format!("{:016x}", loaded.compiled.hash),
        size_bytes: loaded.compiled.size,
        roles: p.roles().into_iter().map(role_name).collect(),
        on_error: loaded.settings.on_error.name(),
        timeout_ms: loaded.settings.timeout.as_secs_f64() * 1e3,
        memory_limit_bytes: loaded.ctx.memory,
        calls: usage.calls,
        avg_decision_us: usage.avg_us(),
        errors: count(&p.stats.faults),
        timeouts: count(&p.stats.timeouts),
        traps: count(&p.stats.traps),
        memory_faults: count(&p.stats.memory),
        invalid_answers: count(&p.stats.invalid),
        unavailable: count(&p.stats.unavailable),
        suspended: count(&p.stats.suspended),
        suspensions: count(&p.stats.suspensions),
        rejected_loads: count(&p.stats.rejected),
        log_lines_dropped: loaded.ctx.log.dropped_total(),
        instances: loaded.instances_created(),
        usage,
    }
}

fn frontend(f: &Frontend, rates: &Rates) -> FrontendView {
    let s = &f.state.sessions;
    let maxconn = f.maxconn.map(u64::from);
    FrontendView {
        name: f.name.to_string(),
        binds: f.binds.iter().map(ToString::to_string).collect(),
        status: if maxconn.is_some_and(|m| s.current() >= m) {
            "FULL"
        } else {
            "OPEN"
        },
        maxconn,
        sessions: SessionsView {
            current: s.current(),
            max: s.max(),
            total: s.total(),
        },
        rate: rates.get(&RateKey::Frontend(f.name.to_string())),
        traffic: f.state.traffic.totals().into(),
    }
}

fn backend(snapshot: &Snapshot, b: &Backend, rates: &Rates, now: Instant) -> BackendView {
    let servers: Vec<ServerView> = b.servers.iter().map(|s| server(b, s, rates, now)).collect();
    let servers_up = b.servers.iter().filter(|s| s.state.usable()).count();
    let traffic = b.state.traffic.totals();
    BackendView {
        name: b.name.to_string(),
        status: if servers_up > 0 { "UP" } else { "DOWN" },
        balance: snapshot
            .config
            .backend(&b.name)
            .map(|c| balance_name(&c.balance))
            .unwrap_or_default(),
        sessions: SessionsView {
            current: u64::from(b.state.active()),
            max: b.state.max_active(),
            total: traffic.requests,
        },
        queued: b.state.queued() as u64,
        rate: rates.get(&RateKey::Backend(b.name.to_string())),
        traffic: traffic.into(),
        servers_up,
        servers,
    }
}

/// The status shown for a server.
pub fn status(state: &ServerState) -> &'static str {
    match (state.admin(), state.is_up()) {
        (AdminState::Maint, _) => "MAINT",
        (_, false) => "DOWN",
        (AdminState::Drain, true) => "DRAIN",
        (AdminState::Ready, true) => "UP",
    }
}

pub fn admin_name(state: AdminState) -> &'static str {
    match state {
        AdminState::Ready => "ready",
        AdminState::Drain => "drain",
        AdminState::Maint => "maint",
    }
}

fn server(b: &Backend, s: &Server, rates: &Rates, now: Instant) -> ServerView {
    let st = &s.state;
    let (checks_passed, checks_failed) = st.checks();
    ServerView {
        backend: b.name.to_string(),
        name: s.name.to_string(),
        addr: st.key.addr,
        status: status(st),
        health: if st.is_up() { "up" } else { "down" },
        admin: admin_name(st.admin()),
        weight: st.weight(),
        backup: st.is_backup(),
        maxconn: st.maxconn(),
        checked: s.check,
        last_check: st.last_check().map(|c| CheckView {
            result: c.verdict.reason.to_string(),
            passed: c.verdict.passed,
            seconds_ago: now.saturating_duration_since(c.at).as_secs(),
        }),
        last_change_seconds: now.saturating_duration_since(st.last_change()).as_secs(),
        checks_passed,
        checks_failed,
        sessions: SessionsView {
            current: u64::from(st.active()),
            max: st.max_active(),
            total: st.requests(),
        },
        rate: rates.get(&RateKey::Server(st.key.clone())),
        connect_failures: st.connect_failures(),
        traffic: st.traffic.totals().into(),
    }
}

/// The `balance` keyword of an algorithm, as written in the config.
pub fn balance_name(b: &Balance) -> String {
    match b {
        Balance::RoundRobin => "roundrobin".into(),
        Balance::StaticRr => "static-rr".into(),
        Balance::LeastConn => "leastconn".into(),
        Balance::Random => "random".into(),
        Balance::Source => "source".into(),
        Balance::Uri { whole: false } => "uri".into(),
        Balance::Uri { whole: true } => "uri whole".into(),
        Balance::Hdr(h) => format!("hdr({h})"),
        Balance::First => "first".into(),
        Balance::Plugin(name) => name.clone(),
    }
}

/// Resident memory of this process, from /proc (Linux).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// "3s", "4m", "2h", "5d": how long ago, coarsely, for the stats page.
pub fn ago(seconds: u64) -> String {
    let d = Duration::from_secs(seconds);
    match d.as_secs() {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Finds a server by backend and name.
pub fn find_server<'a>(
    snapshot: &'a Snapshot,
    backend: &str,
    name: &str,
) -> Option<(&'a Backend, &'a Server)> {
    let b = snapshot.backends.iter().find(|b| &*b.name == backend)?;
    let s = b.servers.iter().find(|s| &*s.name == name)?;
    Some((b, s))
}

/// The view of one server.
pub fn server_view(
    snapshot: &Snapshot,
    rates: &Rates,
    backend: &str,
    name: &str,
) -> Option<ServerView> {
    let now = tokio::time::Instant::now().into_std();
    let (b, s) = find_server(snapshot, backend, name)?;
    Some(server(b, s, rates, now))
}

/// The view of every server of every backend, in config order.
pub fn all_servers(view: &StatsView) -> Vec<&ServerView> {
    view.backends.iter().flat_map(|b| &b.servers).collect()
}
