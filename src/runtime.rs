//! Process lifecycle: start from a config, reload on SIGHUP, stop gracefully on SIGTERM/SIGINT.
//!
//! A reload is: read and validate the file, build a new snapshot, open the listeners the new
//! config adds, swap the snapshot in with one store, then close the listeners it dropped. Any
//! failure before the swap leaves the running config untouched and is reported. Connections
//! accepted before a reload keep being served; their next requests see the new snapshot.
//!
//! Active health checkers run as tasks on the runtime that calls [`Runtime::start`] and
//! [`Runtime::apply`] (the control runtime); each applied config brings them in line with it.
//! So does the admin listener (`[admin]`), which is opened, kept, or moved on each apply.
//!
//! What is served is the file's config with the run-time [`Overlay`] (servers added or removed
//! through the admin API) laid over it; see `overlay` for how the two combine across reloads.

mod certwatch;
mod overlay;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::Mutex;

use crate::admin::{self, AdminHandle, Control, ControlError, DiagnosticView};
use crate::config::{self, Config, ServerSpec};
use crate::health::{HealthCheckers, StateTable};
use crate::plugin::build::build_judge;
use crate::plugin::watch::{WatchHandle, spawn_watch};
use crate::plugin::{LivePlugin, PluginError, PluginSet, Plugins, Reloaded};
use crate::proxy::Proxy;
use crate::proxy::graceful::Graceful;
use crate::proxy::listener::{ListenerHandle, bind, spawn_listener};
use crate::proxy::workers::Workers;
use crate::snapshot::{ListenKey, SnapshotError, build_snapshot, listen_keys, prune_states};
use crate::upstream::ClientCache;

pub use certwatch::{CertWatch, DEBOUNCE as CERT_DEBOUNCE, spawn_cert_watch};
pub use overlay::{Overlay, OverlayError};

/// Why a config could not be started or reloaded.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{}: config has errors:\n{}", path.display(), report.render())]
    Invalid {
        path: PathBuf,
        report: config::Report,
    },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start worker threads: {0}")]
    Workers(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signal(std::io::Error),
    #[error("config loader task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    #[error("{0}")]
    Server(String),
    #[error("wasp is stopping")]
    Stopping,
    #[error("{}: the configuration listens nowhere (no frontend and no [admin]); was the file read half-written?", path.display())]
    NoListener { path: PathBuf },
}

/// A configuration with nothing to listen on is refused at start and on reload, as HAProxy
/// will not start without a listener: a file read while it was being rewritten (empty, or cut
/// short) must not close every listener of a running proxy, the admin API's included.
fn listens_somewhere(config: &Config) -> Result<(), RuntimeError> {
    if config.frontends.is_empty() && config.admin.is_none() {
        return Err(RuntimeError::NoListener {
            path: config.path.clone(),
        });
    }
    Ok(())
}

/// A running proxy: its live snapshot, listeners and run-time state. Dereferences to [`Core`],
/// which the admin API shares.
#[derive(Debug)]
pub struct Runtime {
    core: Arc<Core>,
    /// Held here only, so that a stop can wait for the connections it watches.
    graceful: Arc<Graceful>,
}

impl std::ops::Deref for Runtime {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}

/// The file's config and the run-time changes laid over it.
#[derive(Debug)]
struct Layers {
    file: Arc<Config>,
    overlay: Overlay,
}

/// The running proxy's shared parts (see [`Runtime`]).
#[derive(Debug)]
pub struct Core {
    path: PathBuf,
    proxy: Arc<Proxy>,
    states: Arc<StateTable>,
    clients: ClientCache,
    workers: Arc<Workers>,
    /// Gone once a stop has begun: no listener may open after that.
    graceful: Weak<Graceful>,
    /// Also serialises applies (reloads and run-time server changes).
    listeners: Mutex<HashMap<ListenKey, ListenerHandle>>,
    checkers: std::sync::Mutex<HealthCheckers>,
    plugins: Arc<Plugins>,
    /// Watches the live plugins' files; started with the first config that has plugins.
    watch: std::sync::Mutex<Option<WatchHandle>>,
    layers: std::sync::Mutex<Layers>,
    admin: Mutex<Option<AdminHandle>>,
    /// Reloads certificates when their files change; `None` when no watcher could start.
    cert_watch: std::sync::Mutex<Option<CertWatch>>,
    draining: AtomicBool,
    /// The limit the connection registry applies (kept here too: the registry is gone once a
    /// stop has begun).
    maxconn: AtomicUsize,
    /// `[global]` as the process started: the settings read at start only stay these.
    at_start: config::Global,
    me: Weak<Core>,
}

impl Runtime {
    /// Builds the snapshot for `config` and opens its listeners (and the admin listener).
    pub async fn start(config: Config) -> Result<Runtime, RuntimeError> {
        let config = Arc::new(config);
        let states = Arc::new(StateTable::new());
        let count = config.global.workers.unwrap_or_else(Workers::default_count);
        let pin = config
            .global
            .pin_workers
            .unwrap_or_else(|| Workers::pin_by_default(count));
        let workers = Arc::new(
            Workers::start(count, config.global.sched_slice, pin).map_err(RuntimeError::Workers)?,
        );
        let maxconn = maxconn(&config);
        let clients = ClientCache::new(workers.len());
        let plugins = Arc::new(Plugins::new());
        let set = prepare_plugins(&plugins, &config).await?;
        let snapshot = build_snapshot(Arc::clone(&config), &states, &clients, &set)?;
        plugins.commit(&set);
        let proxy = Arc::new(Proxy::new(snapshot));
        let graceful = Arc::new(Graceful::new(maxconn));
        let mut listeners = HashMap::new();
        for (key, frontend) in listen_keys(&config) {
            let handle = open(key.clone(), &proxy, &workers, &graceful)?;
            tracing::info!(frontend, listener = %handle.local, "listening");
            listeners.insert(key, handle);
        }
        // Logged once the listeners are open: a bind that fails ends the start-up before it.
        tracing::info!(workers = count, pinned = pin, maxconn, "workers started");
        let cert_watch = match spawn_cert_watch(Arc::clone(&proxy)) {
            Ok(mut w) => {
                w.update(&proxy.snapshot());
                Some(w)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch certificate files; they reload on SIGHUP only");
                None
            }
        };
        let mut checkers = HealthCheckers::default();
        let started = checkers
            .update_with(&config, &states, &|spec| build_judge(spec, &set))
            .started;
        if started > 0 {
            tracing::info!(servers = started, "health checks started");
        }
        let core = Arc::new_cyclic(|me| Core {
            path: config.path.clone(),
            proxy,
            states,
            clients,
            workers,
            graceful: Arc::downgrade(&graceful),
            listeners: Mutex::new(listeners),
            checkers: std::sync::Mutex::new(checkers),
            watch: std::sync::Mutex::new(watch_plugins(&plugins, &set, None)),
            plugins,
            layers: std::sync::Mutex::new(Layers {
                file: Arc::clone(&config),
                overlay: Overlay::default(),
            }),
            admin: Mutex::new(None),
            cert_watch: std::sync::Mutex::new(cert_watch),
            draining: AtomicBool::new(false),
            maxconn: AtomicUsize::new(maxconn),
            at_start: config.global.clone(),
            me: me.clone(),
        });
        if let Some(a) = &config.admin {
            match admin::spawn_admin(a, core.control()) {
                Ok(handle) => *core.admin.lock().await = Some(handle),
                Err(e) => {
                    for (_, handle) in std::mem::take(&mut *core.listeners.lock().await) {
                        handle.stop().await;
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(Runtime { core, graceful })
    }

    /// Stops accepting, lets in-flight requests finish for up to `grace`, then returns. Idle
    /// keep-alive connections are closed at once. `/healthz` on the admin listener answers 503
    /// from the start of the stop; the admin listener closes last.
    pub async fn shutdown(self, grace: Duration) {
        self.shutdown_unless(grace, std::future::pending()).await;
    }

    /// [`shutdown`](Self::shutdown), with the wait for in-flight requests cut short when `cut`
    /// completes first (a second SIGTERM or SIGINT).
    pub async fn shutdown_unless(self, grace: Duration, cut: impl Future<Output = ()>) {
        let Runtime { core, graceful } = self;
        let listeners = {
            let mut listeners = core.listeners.lock().await;
            core.draining.store(true, Ordering::Release);
            std::mem::take(&mut *listeners)
        };
        let mut checkers =
            std::mem::take(&mut *core.checkers.lock().unwrap_or_else(PoisonError::into_inner));
        checkers.shutdown(Duration::from_secs(1)).await;
        for (_, handle) in listeners {
            handle.stop().await;
        }
        match Arc::try_unwrap(graceful) {
            Ok(graceful) => {
                let open = graceful.count();
                if open > 0 {
                    tracing::info!(connections = open, grace = ?grace, "waiting for in-flight requests");
                }
                tokio::select! {
                    finished = tokio::time::timeout(grace, graceful.shutdown()) => {
                        if finished.is_err() {
                            tracing::warn!(grace = ?grace, "grace period over; closing remaining connections");
                        }
                    }
                    () = cut => {
                        tracing::warn!("second stop signal: closing remaining connections now");
                    }
                }
            }
            Err(_) => tracing::warn!("connections still referenced; not waiting for them"),
        }
        if let Some(handle) = core.admin.lock().await.take() {
            handle.stop().await;
        }
    }
}

impl Core {
    fn control(&self) -> Weak<dyn Control> {
        self.me.clone()
    }

    /// The bound address of the admin listener's TCP socket, if it has one.
    pub async fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.lock().await.as_ref().and_then(|h| h.local)
    }

    /// The run-time server changes in force.
    pub fn overlay(&self) -> Overlay {
        self.layers().overlay.clone()
    }

    fn layers(&self) -> std::sync::MutexGuard<'_, Layers> {
        self.layers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The loaded plugins (for stats and hot-loading).
    pub fn plugins(&self) -> &Arc<Plugins> {
        &self.plugins
    }

    /// Hot-loads plugin `name` from its file (the admin request): compiled off the request
    /// path, swapped in atomically; a broken file is rejected and the old version keeps
    /// serving.
    pub async fn reload_plugin(&self, name: &str) -> Result<Reloaded, RuntimeError> {
        let plugins = Arc::clone(&self.plugins);
        let name = name.to_owned();
        Ok(tokio::task::spawn_blocking(move || plugins.reload(&name)).await??)
    }

    /// The live proxy (snapshot holder).
    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// The run-time server state table.
    pub fn states(&self) -> &Arc<StateTable> {
        &self.states
    }

    /// The id of the health checker running for `key` (it changes when a reload restarts the
    /// checker); `None` when the server is not checked.
    pub fn checker_id(&self, key: &crate::health::ServerKey) -> Option<u64> {
        self.checkers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .checker_id(key)
    }

    /// The bound address of each listener (it differs from the configured one for port 0).
    pub async fn local_addrs(&self) -> HashMap<ListenKey, SocketAddr> {
        self.listeners
            .lock()
            .await
            .iter()
            .map(|(k, h)| (k.clone(), h.local))
            .collect()
    }

    /// The bound addresses of a frontend's listeners.
    pub async fn frontend_addrs(&self, frontend: &str) -> Vec<SocketAddr> {
        let snapshot = self.proxy.snapshot();
        let listeners = self.listeners.lock().await;
        listeners
            .iter()
            .filter(|(k, _)| {
                snapshot
                    .frontend_for(k)
                    .is_some_and(|f| &*f.name == frontend)
            })
            .map(|(_, h)| h.local)
            .collect()
    }

    /// Re-reads the config file this runtime was started from and applies it.
    pub async fn reload(&self) -> Result<(), RuntimeError> {
        let reloaded = self.reload_file().await;
        match &reloaded {
            // Its diagnostics are logged already, one line each.
            Err(RuntimeError::Invalid { path, report }) => tracing::error!(
                file = %path.display(),
                errors = report.errors(),
                "reload rejected; the previous configuration keeps serving"
            ),
            Err(e) => {
                tracing::error!(error = %e, "reload rejected; the previous configuration keeps serving")
            }
            Ok(()) => {}
        }
        reloaded
    }

    async fn reload_file(&self) -> Result<(), RuntimeError> {
        let path = self.path.clone();
        let (config, report) = tokio::task::spawn_blocking(move || config::load(&path)).await?;
        log_diagnostics(&report);
        let Some(config) = config else {
            return Err(RuntimeError::Invalid {
                path: self.path.clone(),
                report,
            });
        };
        listens_somewhere(&config)?;
        warn_start_only(&self.at_start, &config.global);
        let plugins = config.plugins.clone();
        match self.apply(config).await {
            Err(RuntimeError::Plugin(e)) => Err(self.plugin_diagnostics(e, plugins).await),
            done => done,
        }
    }

    /// A plugin the new file names cannot be loaded or lacks an export: said as `wasp check`
    /// says it, at the key, with the same words (a report of diagnostics, also logged).
    async fn plugin_diagnostics(
        &self,
        e: PluginError,
        plugins: Vec<config::Plugin>,
    ) -> RuntimeError {
        let name = match &e {
            PluginError::Load { name, .. } | PluginError::Missing { name, .. } => name.clone(),
            PluginError::Unknown(_) => return RuntimeError::Plugin(e),
        };
        let these: Vec<config::Plugin> = plugins.into_iter().filter(|p| p.name == name).collect();
        let diagnostics =
            tokio::task::spawn_blocking(move || crate::plugin::check::check(&these)).await;
        match diagnostics {
            Ok(diagnostics) if !diagnostics.is_empty() => {
                let report = config::Report {
                    file: self.path.clone(),
                    diagnostics,
                };
                log_diagnostics(&report);
                RuntimeError::Invalid {
                    path: self.path.clone(),
                    report,
                }
            }
            // The file was fixed in between: the error as it was.
            _ => RuntimeError::Plugin(e),
        }
    }

    /// Applies a validated config file: new snapshot (with the run-time overlay rebased onto
    /// it), listeners opened and closed to match.
    pub async fn apply(&self, config: Config) -> Result<(), RuntimeError> {
        let mut listeners = self.listeners.lock().await;
        let overlay = self.layers().overlay.rebased(&config);
        self.apply_locked(&mut listeners, Arc::new(config), overlay, Plugging::Load)
            .await
    }

    /// Adds a server to a backend at run time (see `overlay` for how it survives reloads).
    pub async fn add_server(&self, backend: &str, spec: ServerSpec) -> Result<(), RuntimeError> {
        let server = tokio::task::spawn_blocking(move || config::runtime_server(spec))
            .await?
            .map_err(RuntimeError::Server)?;
        let mut listeners = self.listeners.lock().await;
        let (file, mut overlay) = {
            let layers = self.layers();
            (Arc::clone(&layers.file), layers.overlay.clone())
        };
        overlay.add(&file, backend, server)?;
        self.apply_locked(&mut listeners, file, overlay, Plugging::Live)
            .await
    }

    /// Removes a server from a backend at run time; requests in flight to it finish.
    pub async fn remove_server(&self, backend: &str, server: &str) -> Result<(), RuntimeError> {
        let mut listeners = self.listeners.lock().await;
        let (file, mut overlay) = {
            let layers = self.layers();
            (Arc::clone(&layers.file), layers.overlay.clone())
        };
        overlay.remove(&file, backend, server)?;
        self.apply_locked(&mut listeners, file, overlay, Plugging::Live)
            .await
    }

    async fn apply_locked(
        &self,
        listeners: &mut HashMap<ListenKey, ListenerHandle>,
        file: Arc<Config>,
        overlay: Overlay,
        plugging: Plugging,
    ) -> Result<(), RuntimeError> {
        let (Some(graceful), false) = (
            self.graceful.upgrade(),
            self.draining.load(Ordering::Acquire),
        ) else {
            return Err(RuntimeError::Stopping);
        };
        let config = Arc::new(overlay.apply(&file));
        let set = match plugging {
            Plugging::Load => prepare_plugins(&self.plugins, &config).await?,
            Plugging::Live => self.plugins.unchanged(),
        };
        let snapshot = build_snapshot(Arc::clone(&config), &self.states, &self.clients, &set)?;
        let wanted = listen_keys(&config);
        let mut opened = Vec::new();
        for (key, frontend) in &wanted {
            if listeners.contains_key(key) {
                continue;
            }
            match open(key.clone(), &self.proxy, &self.workers, &graceful) {
                Ok(handle) => opened.push((handle, *frontend)),
                Err(e) => {
                    for (handle, _) in opened {
                        handle.stop().await;
                    }
                    return Err(e);
                }
            }
        }
        drop(graceful);
        let mut admin = self.admin.lock().await;
        let mut old_admin = None;
        match (admin.take(), &file.admin) {
            (Some(current), Some(a)) if current.same_sockets(a) => {
                current.update(a);
                *admin = Some(current);
            }
            (Some(current), Some(a)) if current.shares_a_socket(a) => {
                // The new listener needs a socket the old one holds: close it first, and
                // reopen it as it was if the new one cannot open.
                let previous = current.config();
                current.stop().await;
                match admin::spawn_admin(a, self.control()) {
                    Ok(handle) => *admin = Some(handle),
                    Err(e) => {
                        *admin = admin::spawn_admin(&previous, self.control()).ok();
                        for (handle, _) in opened {
                            handle.stop().await;
                        }
                        return Err(e.into());
                    }
                }
            }
            (current, Some(a)) => match admin::spawn_admin(a, self.control()) {
                Ok(handle) => {
                    *admin = Some(handle);
                    old_admin = current;
                }
                Err(e) => {
                    *admin = current;
                    for (handle, _) in opened {
                        handle.stop().await;
                    }
                    return Err(e.into());
                }
            },
            (current, None) => old_admin = current,
        }
        self.plugins.commit(&set);
        self.proxy.install(snapshot);
        // With the snapshot: a reload that fails changes nothing.
        let limit = maxconn(&config);
        if let Some(graceful) = self.graceful.upgrade()
            && limit != graceful.limit()
        {
            tracing::info!(maxconn = limit, was = graceful.limit(), "maxconn changed");
            graceful.set_limit(limit);
            self.maxconn.store(limit, Ordering::Release);
        }
        if let Some(w) = self
            .cert_watch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            w.update(&self.proxy.snapshot());
        }
        drop(admin);
        if let Some(old) = old_admin {
            old.stop().await;
        }
        *self.layers() = Layers {
            file: Arc::clone(&file),
            overlay,
        };
        prune_states(&config, &self.states);
        {
            let mut watch = self.watch.lock().unwrap_or_else(PoisonError::into_inner);
            *watch = watch_plugins(&self.plugins, &set, watch.take());
        }
        let checks = self
            .checkers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .update_with(&config, &self.states, &|spec| build_judge(spec, &set));
        tracing::debug!(
            started = checks.started,
            restarted = checks.restarted,
            kept = checks.kept,
            stopped = checks.stopped,
            "health checks updated"
        );
        for (handle, frontend) in opened {
            tracing::info!(frontend, listener = %handle.local, "listening");
            listeners.insert(handle.key.clone(), handle);
        }
        let gone: Vec<ListenKey> = listeners
            .keys()
            .filter(|k| !wanted.iter().any(|(w, _)| w == *k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(handle) = listeners.remove(&key) {
                let id = handle.id;
                handle.stop().await;
                // Its connections have no frontend left: they finish what is in flight and
                // close, rather than answer 503 to every request after it.
                if let Some(graceful) = self.graceful.upgrade() {
                    graceful.stop_listener(id);
                }
            }
        }
        tracing::info!(file = %config.path.display(), "configuration loaded");
        Ok(())
    }
}

impl Control for Core {
    fn snapshot(&self) -> Arc<crate::snapshot::Snapshot> {
        self.proxy.snapshot()
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    fn workers(&self) -> usize {
        self.workers.len()
    }

    fn maxconn(&self) -> usize {
        self.maxconn.load(Ordering::Acquire)
    }

    fn connections(&self) -> usize {
        self.graceful.upgrade().map_or(0, |g| g.count())
    }

    fn reload(&self) -> admin::BoxFuture<'_, Result<(), ControlError>> {
        Box::pin(async move { Core::reload(self).await.map_err(control_error) })
    }

    fn add_server(
        &self,
        backend: String,
        spec: ServerSpec,
    ) -> admin::BoxFuture<'_, Result<(), ControlError>> {
        Box::pin(async move {
            Core::add_server(self, &backend, spec)
                .await
                .map_err(control_error)
        })
    }

    fn remove_server(
        &self,
        backend: String,
        server: String,
    ) -> admin::BoxFuture<'_, Result<(), ControlError>> {
        Box::pin(async move {
            Core::remove_server(self, &backend, &server)
                .await
                .map_err(control_error)
        })
    }

    fn plugins(&self) -> Vec<LivePlugin> {
        self.plugins.live()
    }

    fn reload_plugin(&self, name: String) -> admin::BoxFuture<'_, Result<Reloaded, ControlError>> {
        Box::pin(async move {
            Core::reload_plugin(self, &name)
                .await
                .map_err(control_error)
        })
    }
}

fn control_error(e: RuntimeError) -> ControlError {
    match e {
        RuntimeError::Invalid { path, report } => ControlError::Rejected {
            message: format!(
                "{}: config has {} error(s); the previous configuration keeps serving",
                path.display(),
                report.errors()
            ),
            diagnostics: report
                .diagnostics
                .iter()
                .map(|d| DiagnosticView::new(d, &report.file))
                .collect(),
        },
        RuntimeError::Overlay(e @ (OverlayError::NoBackend(_) | OverlayError::NoServer { .. })) => {
            ControlError::NotFound(e.to_string())
        }
        RuntimeError::Overlay(e @ (OverlayError::Exists { .. } | OverlayError::LastServer(_))) => {
            ControlError::Conflict(e.to_string())
        }
        RuntimeError::Server(e) => ControlError::Invalid(e),
        RuntimeError::Plugin(e @ PluginError::Unknown(_)) => ControlError::NotFound(e.to_string()),
        RuntimeError::Stopping => ControlError::Stopping,
        e @ RuntimeError::NoListener { .. } => ControlError::Rejected {
            message: format!("{e}; the previous configuration keeps serving"),
            diagnostics: Vec::new(),
        },
        other => ControlError::Failed(other.to_string()),
    }
}

/// Warns of each `[global]` setting read at start only that the file now sets differently
/// from the running process: a reload leaves it as it was.
fn warn_start_only(running: &config::Global, file: &config::Global) {
    // The values in effect: a key written out at its default, or removed where the default is
    // what runs, changes nothing.
    let workers = |g: &config::Global| g.workers.unwrap_or_else(Workers::default_count);
    // For the workers that run (their number is read at start too).
    let count = workers(running);
    let pinned = |g: &config::Global| {
        g.pin_workers
            .unwrap_or_else(|| Workers::pin_by_default(count))
    };
    let changed = [
        ("workers", workers(running) != workers(file)),
        ("log_format", running.log_format != file.log_format),
        ("cpu_affinity", pinned(running) != pinned(file)),
        ("sched_slice", running.sched_slice != file.sched_slice),
    ];
    for (key, _) in changed.iter().filter(|(_, c)| *c) {
        tracing::warn!(
            "global.{key} changed in the file; it is read at start: the running value stays until a restart"
        );
    }
}

/// Logs each diagnostic of a config report at its severity.
pub fn log_diagnostics(report: &config::Report) {
    for d in &report.diagnostics {
        // One log line each: the help `wasp check` prints on a line of its own follows `; `.
        let rendered = d.render(&report.file);
        let text = rendered
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        match d.severity {
            config::Severity::Error => tracing::error!("{text}"),
            config::Severity::Warning => tracing::warn!("{text}"),
        }
    }
}

/// Where a new snapshot's plugins come from.
#[derive(Debug, Clone, Copy)]
enum Plugging {
    /// The files the config names (a start or reload): changed ones are loaded.
    Load,
    /// The live versions, as they are (the config file has not changed).
    Live,
}

/// Loads the plugins `config` names (compiling what changed) on a blocking thread.
async fn prepare_plugins(
    plugins: &Arc<Plugins>,
    config: &Arc<Config>,
) -> Result<PluginSet, RuntimeError> {
    if config.plugins.is_empty() {
        return Ok(PluginSet::empty());
    }
    let (plugins, config) = (Arc::clone(plugins), Arc::clone(config));
    Ok(tokio::task::spawn_blocking(move || plugins.prepare(&config)).await??)
}

/// The watcher for the live plugins: started when the first plugin appears, kept (and
/// pointed at the current files) after.
fn watch_plugins(
    plugins: &Arc<Plugins>,
    set: &PluginSet,
    current: Option<WatchHandle>,
) -> Option<WatchHandle> {
    let mut handle = match current {
        Some(h) => h,
        None if set.is_empty() => return None,
        None => match spawn_watch(Arc::clone(plugins)) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch plugin files; changed plugins load on SIGHUP only");
                return None;
            }
        },
    };
    handle.update(plugins);
    Some(handle)
}

/// `[global] maxconn`, else derived from the open-file limit.
/// A configured value that the open-file limit cannot carry (a client connection and its
/// server's take a descriptor each) is logged: like HAProxy, wasp then runs with it, and
/// accepts fail with "too many open files" before the limit is reached.
fn maxconn(config: &Config) -> usize {
    let files = crate::limits::open_files();
    let fits = crate::limits::default_maxconn(files);
    match config.global.maxconn {
        Some(n) if n > fits => {
            tracing::warn!(
                maxconn = n,
                open_file_limit = files,
                fits,
                "maxconn is more than the open-file limit can serve; raise the hard limit \
                 (ulimit -Hn, systemd LimitNOFILE=) or lower maxconn"
            );
            n
        }
        Some(n) => n,
        None => fits,
    }
}

fn open(
    key: ListenKey,
    proxy: &Arc<Proxy>,
    workers: &Workers,
    graceful: &Arc<Graceful>,
) -> Result<ListenerHandle, RuntimeError> {
    let addr = key.addr;
    let listener = bind(addr).map_err(|source| RuntimeError::Bind { addr, source })?;
    spawn_listener(
        listener,
        key,
        Arc::clone(proxy),
        workers,
        Arc::clone(graceful),
    )
    .map_err(|source| RuntimeError::Bind { addr, source })
}

/// Serves `config` until SIGTERM or SIGINT; SIGHUP reloads its file.
pub async fn run(config: Config) -> Result<(), RuntimeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).map_err(RuntimeError::Signal)?;
    let mut term = signal(SignalKind::terminate()).map_err(RuntimeError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RuntimeError::Signal)?;
    listens_somewhere(&config)?;
    let runtime = Runtime::start(config).await?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!(file = %runtime.path.display(), "SIGHUP: reloading");
                // A rejected reload is logged by `reload`.
                let _ = runtime.reload().await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping: no new connections; in-flight requests may finish");
    // The grace period of the configuration in force now (a reload may have changed it).
    let grace = runtime.proxy.snapshot().global.grace;
    // A second signal stops at once, as HAProxy's hard stop after a soft one. A reload asked
    // for meanwhile is refused, and says so.
    let second = async {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => tracing::warn!("SIGHUP ignored: wasp is stopping"),
            }
        }
    };
    runtime.shutdown_unless(grace, second).await;
    tracing::info!("stopped");
    Ok(())
}
