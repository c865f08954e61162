//! Compiled plugin versions, their pools of warm instances, and one bounded call.
//!
//! A [`Compiled`] component is made once per file content (compile, link against the host's
//! imports, `InstancePre`, find which roles it exports). A [`Loaded`] version pairs it with
//! the plugin's settings and owns a pool of warm instances: a call takes one (or instantiates
//! a fresh one from the `InstancePre`: no compiling or linking on the request path), runs
//! under an epoch deadline and the memory limiter, and gives it back unless it faulted, has
//! served `recycle_after` calls, or its linear memory grew past `recycle_memory`. An instance
//! that trapped, timed out or hit its memory cap is dropped with its `Store`, never reused.
//!
//! The pool is sharded by thread: each worker thread finds its own instance(s) without
//! contention. Since calls are synchronous, a worker normally holds one warm instance per
//! plugin version.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use wasmtime::Store;
use wasmtime::component::{Component, InstancePre};

use crate::config::{OnError, PluginRole};
use crate::plugin::bindings::{balancer, health, router};
use crate::plugin::engine::{TICK, host};
use crate::plugin::store::{PluginContext, StoreData};

/// Shards of a version's idle pool (threads are spread over them).
const SHARDS: usize = 16;
/// Idle instances kept per shard at most.
const IDLE_PER_SHARD: usize = 4;

/// Why a file could not become a plugin version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: String },
    #[error("not a wasm file (no \\0asm header)")]
    NotWasm,
    #[error(
        "is a core wasm module, not a component; build the plugin with `cargo build --release --target wasm32-wasip2`"
    )]
    CoreModule,
    #[error("invalid component: {0}")]
    Invalid(String),
    #[error("cannot link: {0}")]
    Link(String),
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
    #[error("{0}")]
    Engine(String),
}

/// The export a role needs.
pub fn export_name(role: PluginRole) -> &'static str {
    match role {
        PluginRole::Router => "wasp:plugin/router@0.1.0",
        PluginRole::Balancer => "wasp:plugin/balancer@0.1.0",
        PluginRole::Health => "wasp:plugin/health@0.1.0",
    }
}

/// A component compiled and linked once, for one file content.
pub struct Compiled {
    /// Hash of the file's bytes (the cache key).
    pub hash: u64,
    pub size: usize,
    pre: InstancePre<StoreData>,
    router: Option<router::GuestIndices>,
    balancer: Option<balancer::GuestIndices>,
    health: Option<health::GuestIndices>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("hash", &format_args!("{:016x}", self.hash))
            .field("size", &self.size)
            .field("roles", &self.roles())
            .finish()
    }
}

/// A stable hash of file content (the compile cache key).
pub fn content_hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

impl Compiled {
    /// Compiles and links `bytes`, then instantiates it once to prove it works with the
    /// host's imports. Slow (tens of ms): never on the request path.
    pub fn new(bytes: &[u8]) -> Result<Compiled, LoadError> {
        match bytes.get(..8) {
            Some([0, b'a', b's', b'm', 0x01, 0x00, 0x00, 0x00]) => {
                return Err(LoadError::CoreModule);
            }
            Some([0, b'a', b's', b'm', ..]) => {}
            _ => return Err(LoadError::NotWasm),
        }
        let host = host().map_err(LoadError::Engine)?;
        let component =
            Component::new(&host.engine, bytes).map_err(|e| LoadError::Invalid(error_text(&e)))?;
        let pre = host
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link(error_text(&e)))?;
        let compiled = Compiled {
            hash: content_hash(bytes),
            size: bytes.len(),
            router: router::GuestIndices::new(&pre).ok(),
            balancer: balancer::GuestIndices::new(&pre).ok(),
            health: health::GuestIndices::new(&pre).ok(),
            pre,
        };
        let probe = Arc::new(PluginContext {
            name: Arc::from("(load check)"),
            config: Vec::new(),
            shared: Arc::default(),
            log: Arc::new(crate::plugin::store::LogLimit::new(0)),
            memory: crate::config::MAX_PLUGIN_MEMORY,
        });
        compiled
            .instantiate(probe, 1000)
            .map_err(LoadError::Instantiate)?;
        Ok(compiled)
    }

    /// The roles this component exports.
    pub fn roles(&self) -> Vec<PluginRole> {
        let mut roles = Vec::new();
        if self.router.is_some() {
            roles.push(PluginRole::Router);
        }
        if self.balancer.is_some() {
            roles.push(PluginRole::Balancer);
        }
        if self.health.is_some() {
            roles.push(PluginRole::Health);
        }
        roles
    }

    pub fn exports(&self, role: PluginRole) -> bool {
        match role {
            PluginRole::Router => self.router.is_some(),
            PluginRole::Balancer => self.balancer.is_some(),
            PluginRole::Health => self.health.is_some(),
        }
    }

    /// A fresh instance in its own store.
    fn instantiate(&self, ctx: Arc<PluginContext>, deadline_ticks: u64) -> Result<Warm, String> {
        let host = host()?;
        let mut store = Store::new(&host.engine, StoreData::new(ctx));
        store.limiter(|s| s);
        store.set_epoch_deadline(deadline_ticks);
        let instance = poll_once(self.pre.instantiate_async(&mut store))
            .ok_or_else(|| "instantiation blocked".to_owned())?
            .map_err(|e| error_text(&e))?;
        let load_err = |e: wasmtime::Error| error_text(&e);
        Ok(Warm {
            router: match &self.router {
                Some(i) => Some(i.load(&mut store, &instance).map_err(load_err)?),
                None => None,
            },
            balancer: match &self.balancer {
                Some(i) => Some(i.load(&mut store, &instance).map_err(load_err)?),
                None => None,
            },
            health: match &self.health {
                Some(i) => Some(i.load(&mut store, &instance).map_err(load_err)?),
                None => None,
            },
            store,
            calls: 0,
        })
    }
}

/// A live instance: its store and the exports of each role it has.
pub struct Warm {
    pub store: Store<StoreData>,
    pub router: Option<router::Guest>,
    pub balancer: Option<balancer::Guest>,
    pub health: Option<health::Guest>,
    calls: u64,
}

/// Upper bounds of the decision-time histogram buckets, in seconds (the last bucket, +Inf, is
/// implicit): a warm call takes microseconds, a timed-out one milliseconds.
pub const DECISION_BUCKETS: [f64; 12] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2,
];
/// [`DECISION_BUCKETS`] in nanoseconds, for the comparison after each call.
const DECISION_BOUNDS_NS: [u64; 12] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 5_000_000,
    10_000_000,
];
/// Decision-time buckets including +Inf.
pub const DECISION_HISTOGRAM: usize = DECISION_BUCKETS.len() + 1;

/// One thread's part of a version's pool, with the calls it served.
#[derive(Default)]
struct Shard {
    idle: Vec<Warm>,
    usage: Usage,
}

/// Calls made and the wall time they took (instantiation included).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub calls: u64,
    /// Sum of the calls' times, in nanoseconds.
    pub nanos: u64,
    /// Calls by time, non-cumulative, bounds as [`DECISION_BUCKETS`] then +Inf.
    pub histogram: [u64; DECISION_HISTOGRAM],
}

impl Usage {
    fn record(&mut self, nanos: u64) {
        self.calls += 1;
        self.nanos = self.nanos.saturating_add(nanos);
        let bucket = DECISION_BOUNDS_NS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(DECISION_HISTOGRAM - 1);
        self.histogram[bucket] += 1;
    }

    /// Average time of a call, in microseconds.
    pub fn avg_us(&self) -> Option<f64> {
        (self.calls > 0).then(|| self.nanos as f64 / self.calls as f64 / 1e3)
    }
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(mut self, other: Usage) -> Usage {
        self.calls += other.calls;
        self.nanos = self.nanos.saturating_add(other.nanos);
        for (a, b) in self.histogram.iter_mut().zip(other.histogram) {
            *a += b;
        }
        self
    }
}

/// How a plugin version runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub timeout: Duration,
    pub on_error: OnError,
    pub recycle_after: u64,
    pub recycle_memory: usize,
}

impl Settings {
    /// The epoch deadline of one call: the timeout in ticks, rounded up, plus one (the
    /// current tick has partly passed already). A call may run for `timeout` and is
    /// interrupted before `timeout + 1 tick`.
    fn ticks(&self) -> u64 {
        let ticks = self.timeout.as_nanos().div_ceil(TICK.as_nanos());
        u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
    }
}

/// What went wrong in one call: it costs that decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access...).
    Trap { error: String, backtrace: String },
    /// The call ran past the plugin's `timeout`.
    Timeout,
    /// The guest needed more linear memory than `memory` allows.
    Memory { error: String, backtrace: String },
    /// The guest waited on something that never comes (no host function blocks).
    Blocked,
    /// No instance could be made (the instance pool is exhausted, or instantiation failed).
    Unavailable(String),
    /// The component does not export the role it was asked for.
    Missing(PluginRole),
    /// The guest answered, but the answer is not acceptable (unknown backend, bad index...).
    Invalid(String),
    /// Not called: its latest calls all ran out of time or memory, and it rests for a while
    /// (see `registry::Plugin::call`).
    Suspended,
}

impl Fault {
    /// A short stable name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Trap { .. } => "trap",
            Fault::Timeout => "timeout",
            Fault::Memory { .. } => "memory",
            Fault::Blocked => "blocked",
            Fault::Unavailable(_) => "unavailable",
            Fault::Missing(_) => "missing export",
            Fault::Invalid(_) => "invalid answer",
            Fault::Suspended => "suspended",
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Trap { error, .. } => write!(f, "trapped: {error}"),
            Fault::Timeout => f.write_str("timed out"),
            Fault::Memory { error, .. } => write!(f, "exceeded its memory limit: {error}"),
            Fault::Blocked => f.write_str("blocked waiting for I/O"),
            Fault::Unavailable(e) => write!(f, "no instance available: {e}"),
            Fault::Missing(role) => write!(f, "does not export {}", export_name(*role)),
            Fault::Invalid(e) => write!(f, "invalid answer: {e}"),
            Fault::Suspended => {
                f.write_str("suspended after calls that all ran out of time or memory")
            }
        }
    }
}

/// One version of a plugin, ready to serve: compiled code, settings, and warm instances.
pub struct Loaded {
    pub compiled: Arc<Compiled>,
    pub ctx: Arc<PluginContext>,
    pub settings: Settings,
    /// Counts loads of this plugin name: 1 for the first version.
    pub version: u64,
    idle: Box<[Mutex<Shard>]>,
    /// Instances created for this version.
    pub(crate) created: AtomicUsize,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("compiled", &self.compiled)
            .field("settings", &self.settings)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Loaded {
    pub fn new(
        compiled: Arc<Compiled>,
        ctx: Arc<PluginContext>,
        settings: Settings,
        version: u64,
    ) -> Loaded {
        Loaded {
            compiled,
            ctx,
            settings,
            version,
            idle: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            created: AtomicUsize::new(0),
        }
    }

    /// Runs `call` on a warm instance. `call` gets the instance and returns `None` if the
    /// guest's future did not complete at once (see [`poll_once`]). The call and the time it
    /// took (instantiation included) are counted in this thread's shard, under the lock the
    /// pool takes anyway.
    pub fn call<R>(
        &self,
        call: impl FnOnce(&mut Warm) -> Option<wasmtime::Result<R>>,
    ) -> Result<R, Fault> {
        let started = std::time::Instant::now();
        let shard = &self.idle[shard_index()];
        let taken = shard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .idle
            .pop();
        let (result, keep) = self.run(taken, call);
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        shard.usage.record(nanos);
        if let Some(warm) = keep
            && shard.idle.len() < IDLE_PER_SHARD
        {
            shard.idle.push(warm);
        }
        result
    }

    /// One call on `taken` (or a new instance); gives back the instance when it may be reused.
    fn run<R>(
        &self,
        taken: Option<Warm>,
        call: impl FnOnce(&mut Warm) -> Option<wasmtime::Result<R>>,
    ) -> (Result<R, Fault>, Option<Warm>) {
        let mut warm = match taken {
            Some(w) => w,
            None => {
                self.created.fetch_add(1, Ordering::Relaxed);
                match self
                    .compiled
                    .instantiate(Arc::clone(&self.ctx), self.settings.ticks())
                {
                    Ok(w) => w,
                    Err(e) => return (Err(Fault::Unavailable(e)), None),
                }
            }
        };
        warm.store.set_epoch_deadline(self.settings.ticks());
        let result = match call(&mut warm) {
            Some(Ok(r)) => r,
            Some(Err(e)) => return (Err(classify(&e, warm.store.data().memory_refused)), None),
            // Dropping the pending call and its store cancels it.
            None => return (Err(Fault::Blocked), None),
        };
        warm.calls += 1;
        let worn = warm.calls >= self.settings.recycle_after
            || warm.store.data().memory_used > self.settings.recycle_memory;
        (Ok(result), (!worn).then_some(warm))
    }

    /// Makes a fresh instance and drops it: what a call pays when no warm instance is
    /// there (benchmarks compare it with a warm call).
    pub fn instantiate_once(&self) -> Result<(), Fault> {
        self.compiled
            .instantiate(Arc::clone(&self.ctx), self.settings.ticks())
            .map(drop)
            .map_err(Fault::Unavailable)
    }

    /// Calls made to this version so far and the time they took.
    pub fn usage(&self) -> Usage {
        self.idle.iter().fold(Usage::default(), |sum, s| {
            sum + s.lock().unwrap_or_else(PoisonError::into_inner).usage
        })
    }

    /// Instances created for this version so far.
    pub fn instances_created(&self) -> usize {
        self.created.load(Ordering::Relaxed)
    }
}

fn classify(e: &wasmtime::Error, memory_refused: bool) -> Fault {
    let backtrace = e
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .map(backtrace_text)
        .unwrap_or_default();
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => Fault::Timeout,
        _ if memory_refused => Fault::Memory {
            error: error_text(e),
            backtrace,
        },
        _ => Fault::Trap {
            error: error_text(e),
            backtrace,
        },
    }
}

/// A wasm backtrace on one line, innermost first: `func <- caller <- ...`, demangled, with
/// the Rust runtime's panic and abort machinery left out.
fn backtrace_text(bt: &wasmtime::WasmBacktrace) -> String {
    const MACHINERY: [&str; 6] = ["std::", "core::", "alloc::", "__rustc", "panic_", "abort"];
    let names: Vec<String> = bt
        .frames()
        .iter()
        .map(|f| match f.func_name() {
            Some(name) => format!("{:#}", rustc_demangle::demangle(name)),
            None => format!("<func {}>", f.func_index()),
        })
        .filter(|name| !MACHINERY.iter().any(|m| name.starts_with(m)))
        .take(12)
        .collect();
    names.join(" <- ")
}

/// An error's message: its root cause (a trap's description) on one line; wasm backtraces
/// are reported apart.
pub fn error_text(e: &wasmtime::Error) -> String {
    let root = e.chain().last().map(|c| c.to_string()).unwrap_or_default();
    let top = e.to_string();
    if top == root || top.starts_with("error while executing at wasm backtrace") {
        root
    } else {
        format!("{top}: {root}")
    }
}

/// Polls `f` once with a no-op waker. Plugin calls never wait (the host's imports are
/// synchronous, the WASI streams always ready, and the epoch deadline traps rather than
/// yields), so the future completes on the first poll; `None` means it would have waited.
pub fn poll_once<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// This thread's shard of the idle pools.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_buckets_calls_by_time_and_adds_up() {
        let mut a = Usage::default();
        a.record(800); // <= 1 µs
        a.record(1_000); // a bound belongs to its bucket
        a.record(40_000); // <= 50 µs
        a.record(20_000_000); // past 10 ms: +Inf
        assert_eq!(a.calls, 4);
        assert_eq!(a.nanos, 20_041_800);
        assert_eq!(a.histogram[0], 2);
        assert_eq!(a.histogram[5], 1);
        assert_eq!(a.histogram[DECISION_HISTOGRAM - 1], 1);
        let mut b = Usage::default();
        b.record(3_000);
        let sum = a + b;
        assert_eq!(sum.calls, 5);
        assert_eq!(sum.histogram.iter().sum::<u64>(), 5);
        assert_eq!(sum.histogram[2], 1);
        assert_eq!(Usage::default().avg_us(), None);
        assert_eq!(b.avg_us(), Some(3.0));
    }
}
