//! The configured plugins: one [`Plugin`] per name, its live version swapped atomically, and
//! the [`Plugins`] registry that loads versions from config (`prepare`, then `commit` once
//! the new snapshot is live) and hot-loads one plugin whose file changed (`reload`).
//!
//! Compiled components are cached by content hash, so a reload that does not change a file
//! compiles nothing. Shared state (counters, key-value store) is kept per plugin name for the
//! life of the registry: it survives reloads and versions.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::{self, Config, OnError, PluginRole};
use crate::plugin::instance::{Compiled, Fault, LoadError, Loaded, Settings, Usage, content_hash};
use crate::plugin::shared::SharedState;
use crate::plugin::store::{LOG_LINES_PER_SECOND, LogLimit, PluginContext, monotonic_ns};

/// Fault log lines per plugin per second (the rest are counted).
const FAULT_LOGS_PER_SECOND: u32 = 2;

/// Calls that run out of time or memory (each one a whole `timeout` of a worker, or a memory's
/// growth) after which a plugin is not called for [`SUSPEND_FOR`]: its decisions are taken by
/// `on_error` at no cost. That many in a row, or within [`SUSPEND_WINDOW`] whatever answers
/// came between: a plugin that loops on every call, or on the requests of one path, would
/// otherwise make each such request cost a worker its `timeout`, stalling everything else the
/// worker serves.
const SUSPEND_AFTER: u32 = 3;
/// The span within which [`SUSPEND_AFTER`] costly calls suspend a plugin (at least that many
/// timeouts and one more, for a long `timeout`).
const SUSPEND_WINDOW: Duration = Duration::from_secs(1);
/// How long a plugin rests; the first call after it is a trial: one more such fault suspends
/// it again at once, an answer ends the streak. A new version starts afresh.
const SUSPEND_FOR: Duration = Duration::from_secs(1);

/// Why plugins could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    #[error("plugin {name}: {path}: {error}")]
    Load {
        name: String,
        path: String,
        error: LoadError,
    },
    #[error("plugin {name}: {path} does not export {export}, which {key} needs")]
    Missing {
        name: String,
        path: String,
        export: &'static str,
        key: String,
    },
    #[error("plugin {0} is not configured")]
    Unknown(String),
}

/// Counts of what a plugin did, for logs, tests and the stats page.
#[derive(Debug, Default)]
pub struct Stats {
    pub faults: AtomicU64,
    pub timeouts: AtomicU64,
    pub traps: AtomicU64,
    pub memory: AtomicU64,
    pub invalid: AtomicU64,
    pub unavailable: AtomicU64,
    /// Decisions taken by `on_error` without a call while the plugin was suspended.
    pub suspended: AtomicU64,
    /// Times the plugin was suspended.
    pub suspensions: AtomicU64,
    /// New versions rejected by a hot-load.
    pub rejected: AtomicU64,
}

/// One configured plugin.
pub struct Plugin {
    pub name: Arc<str>,
    current: ArcSwap<Loaded>,
    /// The roles the live config uses it for: a new version must export them all.
    needs: Mutex<Vec<PluginRole>>,
    versions: AtomicU64,
    /// Usage of the versions swapped out (calls still running on one when it is swapped out
    /// are not counted).
    retired: Mutex<Usage>,
    /// Held while a hot-load reads, compiles and swaps in a new version.
    reloading: Mutex<()>,
    fault_log: LogLimit,
    pub stats: Stats,
    /// Calls in a row that ran out of time or memory.
    costly_streak: AtomicU32,
    /// When the latest calls that ran out of time or memory ended ([`monotonic_ns`]), at most
    /// [`SUSPEND_AFTER`]; touched only by such calls.
    costly_times: Mutex<VecDeque<u64>>,
    /// While [`monotonic_ns`] is below this, the plugin is not called; 0: not suspended.
    suspended_until: AtomicU64,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("current", &self.current.load())
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// The live version. A caller keeps it for the whole call: a swap never disturbs it.
    pub fn loaded(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    /// The version number of the live version (1 for the first one loaded).
    pub fn version(&self) -> u64 {
        self.current.load().version
    }

    pub fn on_error(&self) -> OnError {
        self.current.load().settings.on_error
    }

    /// Runs one call on the live version; a fault is counted and logged before it is
    /// returned.
    pub fn call<R>(
        &self,
        role: PluginRole,
        call: impl FnOnce(&mut crate::plugin::instance::Warm) -> Option<wasmtime::Result<R>>,
    ) -> Result<R, Fault> {
        let loaded = self.current.load();
        if !loaded.compiled.exports(role) {
            let fault = Fault::Missing(role);
            self.fault(role, &fault);
            return Err(fault);
        }
        let until = self.suspended_until.load(Ordering::Relaxed);
        if until != 0 && monotonic_ns() < until {
            self.fault(role, &Fault::Suspended);
            return Err(Fault::Suspended);
        }
        let answer = loaded.call(call);
        match &answer {
            Err(fault @ (Fault::Timeout | Fault::Memory { .. })) => {
                self.fault(role, fault);
                let streak = self.costly_streak.fetch_add(1, Ordering::Relaxed) + 1;
                if streak >= SUSPEND_AFTER {
                    self.suspend(role, "in a row");
                } else if let Some(window) = self.costly_in_window(loaded.settings.timeout) {
                    self.suspend(role, &format!("within {window:?}"));
                }
            }
            Err(fault) => self.fault(role, fault),
            // Read first: no write to a shared line on every call.
            Ok(_) if self.costly_streak.load(Ordering::Relaxed) != 0 => {
                self.costly_streak.store(0, Ordering::Relaxed);
            }
            Ok(_) => {}
        }
        answer
    }

    /// Notes a costly call that just ended: the window, when it is the [`SUSPEND_AFTER`]th
    /// within [`SUSPEND_WINDOW`] (or `SUSPEND_AFTER + 1` timeouts, when that is longer).
    fn costly_in_window(&self, timeout: Duration) -> Option<Duration> {
        let window = SUSPEND_WINDOW.max(timeout * (SUSPEND_AFTER + 1));
        let now = monotonic_ns();
        let mut times = self.costly_times.lock().unwrap_or_else(|p| p.into_inner());
        if times.len() == SUSPEND_AFTER as usize {
            times.pop_front();
        }
        times.push_back(now);
        let first = *times.front()?;
        (times.len() == SUSPEND_AFTER as usize && now - first <= window.as_nanos() as u64)
            .then_some(window)
    }

    fn forget_costly_times(&self) {
        self.costly_times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Stops calling the plugin for [`SUSPEND_FOR`] after [`SUSPEND_AFTER`] costly faults,
    /// `how` close together.
    fn suspend(&self, role: PluginRole, how: &str) {
        let until = monotonic_ns().saturating_add(SUSPEND_FOR.as_nanos() as u64);
        self.suspended_until.store(until, Ordering::Relaxed);
        self.stats.suspensions.fetch_add(1, Ordering::Relaxed);
        self.forget_costly_times();
        let policy = self.on_error().name();
        tracing::warn!(
            plugin = &*self.name,
            role = role_name(role),
            on_error = policy,
            "plugin {} ran out of time or memory on {SUSPEND_AFTER} calls {how}: not called \
             for {SUSPEND_FOR:?}, its decisions taken by on_error = {policy}",
            self.name,
        );
    }

    /// A new version is called at once, whatever the last one did.
    fn resume(&self) {
        self.costly_streak.store(0, Ordering::Relaxed);
        self.forget_costly_times();
        self.suspended_until.store(0, Ordering::Relaxed);
    }

    /// Counts and logs (rate-limited) a fault: a failed call or an answer the host refused.
    pub fn fault(&self, role: PluginRole, fault: &Fault) {
        self.stats.faults.fetch_add(1, Ordering::Relaxed);
        let counter = match fault {
            Fault::Timeout => &self.stats.timeouts,
            Fault::Trap { .. } | Fault::Blocked => &self.stats.traps,
            Fault::Memory { .. } => &self.stats.memory,
            Fault::Invalid(_) | Fault::Missing(_) => &self.stats.invalid,
            Fault::Unavailable(_) => &self.stats.unavailable,
            Fault::Suspended => {
                // The suspension was logged when it began.
                self.stats.suspended.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let Some(dropped) = self.fault_log.allow() else {
            return;
        };
        let policy = self.on_error().name();
        let backtrace = match fault {
            Fault::Trap { backtrace, .. } | Fault::Memory { backtrace, .. } => backtrace.as_str(),
            _ => "",
        };
        tracing::warn!(
            plugin = &*self.name,
            role = role_name(role),
            fault = fault.kind(),
            on_error = policy,
            version = self.version(),
            backtrace,
            suppressed = dropped,
            "plugin {} {}; decision taken by on_error = {policy}",
            self.name,
            fault
        );
    }

    /// Calls made to every version so far and the time they took (counted per thread in
    /// each version's pool, summed here: no shared counter on the request path).
    pub fn usage(&self) -> Usage {
        let retired = *self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        retired + self.current.load().usage()
    }

    /// The roles the live config uses the plugin for.
    pub fn roles(&self) -> Vec<PluginRole> {
        self.needs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Adds a swapped-out version's usage to the plugin's totals.
    fn retire(&self, old: &Loaded) {
        let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        *retired = *retired + old.usage();
    }

    /// Instances created by the live version so far.
    pub fn instances_created(&self) -> usize {
        self.current.load().instances_created()
    }
}

pub fn role_name(role: PluginRole) -> &'static str {
    match role {
        PluginRole::Router => "router",
        PluginRole::Balancer => "balancer",
        PluginRole::Health => "health",
    }
}

/// The plugins one config uses, loaded and ready, not yet live: [`Plugins::commit`] makes
/// their new versions live.
#[derive(Debug, Default)]
pub struct PluginSet {
    plugins: HashMap<String, Arc<Plugin>>,
    /// New versions to install at commit, by name.
    pending: Vec<(Arc<Plugin>, Arc<Loaded>, Vec<PluginRole>)>,
    paths: HashMap<String, PathBuf>,
}

impl PluginSet {
    /// No plugins (a config without `[plugin.*]`).
    pub fn empty() -> PluginSet {
        PluginSet::default()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.plugins.get(name)
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }
}

/// A live plugin and the file it is loaded from.
#[derive(Debug, Clone)]
pub struct LivePlugin {
    pub plugin: Arc<Plugin>,
    pub path: PathBuf,
}

/// Every plugin of the running proxy, across reloads.
#[derive(Debug, Default)]
pub struct Plugins {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    live: HashMap<String, Arc<Plugin>>,
    paths: HashMap<String, PathBuf>,
    compiled: HashMap<u64, Weak<Compiled>>,
    shared: HashMap<String, Arc<SharedState>>,
}

/// How `reload` went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The file did not change.
    Unchanged { version: u64 },
    /// A new version is live.
    Swapped { version: u64 },
}

impl Plugins {
    pub fn new() -> Plugins {
        Plugins::default()
    }

    /// Loads every plugin `config` names: versions whose file and settings did not change
    /// are kept (with their warm instances), others compiled (or taken from the cache).
    /// Blocking: compiling takes tens of milliseconds per plugin.
    pub fn prepare(&self, config: &Config) -> Result<PluginSet, PluginError> {
        let mut set = PluginSet::default();
        for p in &config.plugins {
            let bytes = read(p)?;
            let hash = content_hash(&bytes);
            let (live, shared, cached) = {
                let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
                let shared = Arc::clone(inner.shared.entry(p.name.clone()).or_default());
                let cached = inner.compiled.get(&hash).and_then(Weak::upgrade);
                (inner.live.get(&p.name).cloned(), shared, cached)
            };
            let compiled = match cached {
                Some(c) => c,
                None => {
                    let c = Arc::new(compile(p, &bytes)?);
                    self.inner
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .compiled
                        .insert(hash, Arc::downgrade(&c));
                    c
                }
            };
            for (role, place) in &p.written.uses {
                if !compiled.exports(*role) {
                    return Err(PluginError::Missing {
                        name: p.name.clone(),
                        path: p.path.display().to_string(),
                        export: crate::plugin::instance::export_name(*role),
                        key: place.key.clone(),
                    });
                }
            }
            let roles: Vec<PluginRole> = p.written.uses.iter().map(|(r, _)| *r).collect();
            let settings = settings(p);
            let plugin = match live {
                Some(plugin) => {
                    let current = plugin.loaded();
                    let same = current.compiled.hash == hash
                        && current.settings == settings
                        && current.ctx.config == p.config
                        && current.ctx.memory == p.memory;
                    if !same {
                        let version = plugin.versions.fetch_add(1, Ordering::Relaxed) + 1;
                        // The log budget and its dropped count carry over to the new version.
                        let log = Arc::clone(&current.ctx.log);
                        let ctx = context(p, shared, &plugin.name, log);
                        let loaded = Loaded::new(compiled, ctx, settings, version);
                        set.pending
                            .push((Arc::clone(&plugin), Arc::new(loaded), roles));
                    } else {
                        set.pending
                            .push((Arc::clone(&plugin), plugin.loaded(), roles));
                    }
                    plugin
                }
                None => {
                    let name: Arc<str> = Arc::from(p.name.as_str());
                    let log = Arc::new(LogLimit::new(LOG_LINES_PER_SECOND));
                    let ctx = context(p, shared, &name, log);
                    let loaded = Arc::new(Loaded::new(compiled, ctx, settings, 1));
                    let plugin = Arc::new(Plugin {
                        name,
                        current: ArcSwap::new(Arc::clone(&loaded)),
                        needs: Mutex::new(roles.clone()),
                        versions: AtomicU64::new(1),
                        retired: Mutex::new(Usage::default()),
                        reloading: Mutex::new(()),
                        fault_log: LogLimit::new(FAULT_LOGS_PER_SECOND),
                        stats: Stats::default(),
                        costly_streak: AtomicU32::new(0),
                        costly_times: Mutex::default(),
                        suspended_until: AtomicU64::new(0),
                    });
                    set.pending.push((Arc::clone(&plugin), loaded, roles));
                    plugin
                }
            };
            set.paths.insert(p.name.clone(), p.path.clone());
            set.plugins.insert(p.name.clone(), plugin);
        }
        Ok(set)
    }

    /// The live plugins as they are, for a snapshot of the same file (a server added or
    /// removed at run time): nothing is read, so a plugin file the watcher rejected since
    /// (the live version keeps serving) does not fail the change.
    pub fn unchanged(&self) -> PluginSet {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        PluginSet {
            plugins: inner.live.clone(),
            pending: Vec::new(),
            paths: inner.paths.clone(),
        }
    }

    /// Makes `set` the live plugins: new versions swapped in, removed plugins forgotten.
    pub fn commit(&self, set: &PluginSet) {
        for (plugin, loaded, roles) in &set.pending {
            *plugin.needs.lock().unwrap_or_else(PoisonError::into_inner) = roles.clone();
            let old = plugin.current.swap(Arc::clone(loaded));
            if old.version != loaded.version {
                plugin.retire(&old);
                plugin.resume();
                tracing::info!(
                    plugin = &*plugin.name,
                    version = loaded.version,
                    hash = format!("{:016x}", loaded.compiled.hash),
                    "plugin {} version {} is live",
                    plugin.name,
                    loaded.version
                );
            }
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.live = set.plugins.clone();
        inner.paths = set.paths.clone();
        inner.compiled.retain(|_, c| c.strong_count() > 0);
    }

    /// The live plugin `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .live
            .get(name)
            .cloned()
    }

    /// The live plugins with their files, by name.
    pub fn live(&self) -> Vec<LivePlugin> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut live: Vec<LivePlugin> = inner
            .live
            .iter()
            .map(|(name, plugin)| LivePlugin {
                plugin: Arc::clone(plugin),
                path: inner.paths.get(name).cloned().unwrap_or_default(),
            })
            .collect();
        live.sort_by(|a, b| a.plugin.name.cmp(&b.plugin.name));
        live
    }

    /// Live plugin names and their files.
    pub fn files(&self) -> Vec<(String, PathBuf)> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .paths
            .iter()
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect()
    }

    /// Re-reads plugin `name`'s file and, when it changed, compiles it and swaps it in: calls
    /// in flight finish on the old version. A broken new version is rejected (and counted)
    /// and the old one keeps serving. Blocking (compiles).
    pub fn reload(&self, name: &str) -> Result<Reloaded, PluginError> {
        let (plugin, path) = {
            let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            match (inner.live.get(name), inner.paths.get(name)) {
                (Some(p), Some(path)) => (Arc::clone(p), path.clone()),
                _ => return Err(PluginError::Unknown(name.to_owned())),
            }
        };
        let started = Instant::now();
        // One hot-load of a plugin at a time: the file watcher and the admin API may both ask
        // for the same change, which must make one new version, not two.
        let _one_at_a_time = plugin
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let result = self.load_new_version(&plugin, &path);
        match &result {
            Ok(Reloaded::Swapped { version }) => tracing::info!(
                plugin = name,
                version,
                took_ms = started.elapsed().as_millis() as u64,
                "plugin {name} version {version} is live (file changed)"
            ),
            Ok(Reloaded::Unchanged { .. }) => {}
            Err(e) => {
                plugin.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    plugin = name,
                    error = %e,
                    version = plugin.version(),
                    "new version of plugin {name} rejected; version {} keeps serving",
                    plugin.version()
                );
            }
        }
        result
    }

    fn load_new_version(&self, plugin: &Arc<Plugin>, path: &Path) -> Result<Reloaded, PluginError> {
        let name = plugin.name.to_string();
        let load_err = |error| PluginError::Load {
            name: name.clone(),
            path: path.display().to_string(),
            error,
        };
        let bytes = std::fs::read(path).map_err(|e| {
            load_err(LoadError::Read {
                path: path.display().to_string(),
                error: e.to_string(),
            })
        })?;
        let hash = content_hash(&bytes);
        let current = plugin.loaded();
        if current.compiled.hash == hash {
            return Ok(Reloaded::Unchanged {
                version: current.version,
            });
        }
        let compiled = Arc::new(Compiled::new(&bytes).map_err(load_err)?);
        let needs = plugin
            .needs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for role in needs {
            if !compiled.exports(role) {
                return Err(PluginError::Missing {
                    name: name.clone(),
                    path: path.display().to_string(),
                    export: crate::plugin::instance::export_name(role),
                    key: format!("its {} use", role_name(role)),
                });
            }
        }
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .compiled
            .insert(hash, Arc::downgrade(&compiled));
        let version = plugin.versions.fetch_add(1, Ordering::Relaxed) + 1;
        let loaded = Loaded::new(
            compiled,
            Arc::clone(&current.ctx),
            current.settings.clone(),
            version,
        );
        let old = plugin.current.swap(Arc::new(loaded));
        plugin.retire(&old);
        plugin.resume();
        Ok(Reloaded::Swapped { version })
    }

    /// The names of live plugins whose file is one of `changed`.
    pub fn affected(&self, changed: &HashSet<PathBuf>) -> Vec<String> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<String> = inner
            .paths
            .iter()
            .filter(|(_, p)| changed.contains(*p))
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    }
}

fn read(p: &config::Plugin) -> Result<Vec<u8>, PluginError> {
    std::fs::read(&p.path).map_err(|e| PluginError::Load {
        name: p.name.clone(),
        path: p.path.display().to_string(),
        error: LoadError::Read {
            path: p.path.display().to_string(),
            error: e.to_string(),
        },
    })
}

fn compile(p: &config::Plugin, bytes: &[u8]) -> Result<Compiled, PluginError> {
    let started = Instant::now();
    let compiled = Compiled::new(bytes).map_err(|error| PluginError::Load {
        name: p.name.clone(),
        path: p.path.display().to_string(),
        error,
    })?;
    tracing::debug!(
        plugin = p.name,
        bytes = bytes.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "plugin compiled"
    );
    Ok(compiled)
}

fn settings(p: &config::Plugin) -> Settings {
    Settings {
        timeout: p.timeout,
        on_error: p.on_error,
        recycle_after: p.recycle_after,
        recycle_memory: p.recycle_memory,
    }
}

fn context(
    p: &config::Plugin,
    shared: Arc<SharedState>,
    name: &Arc<str>,
    log: Arc<LogLimit>,
) -> Arc<PluginContext> {
    Arc::new(PluginContext {
        name: Arc::clone(name),
        config: p.config.clone(),
        shared,
        log,
        memory: p.memory,
    })
}
