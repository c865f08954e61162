//! The admin listener: accepts on TCP and/or a Unix socket on the control runtime, serves
//! HTTP/1.1 with hyper, and samples request rates once a second while it runs.
//!
//! Auth and the page's refresh interval can change on reload without closing the sockets
//! ([`AdminHandle::update`]); a new address or socket path means a new listener.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::Control;
use crate::admin::api;
use crate::admin::view::{ProcessFacts, Rates, StatsView, build};
use crate::config::Admin;

/// A request head must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open admin connections get to finish when the listener stops.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// Pause after an accept error such as running out of file descriptors.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on {addr} for [admin]: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot listen on unix socket {} for [admin]: {source}", path.display())]
    Unix { path: PathBuf, source: io::Error },
}

/// What request handlers share.
pub(crate) struct Context {
    pub(crate) control: Weak<dyn Control>,
    pub(crate) settings: Arc<ArcSwap<Admin>>,
    pub(crate) rates: Mutex<Rates>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

impl Context {
    /// The stats view of the running proxy, `None` once it is gone.
    pub(crate) fn view(&self) -> Option<(Arc<dyn Control>, StatsView)> {
        let control = self.control.upgrade()?;
        let snapshot = control.snapshot();
        let facts = ProcessFacts {
            started: process_start(),
            draining: control.draining(),
            workers: control.workers(),
            maxconn: control.maxconn(),
            connections: control.connections(),
        };
        let view = build(
            &snapshot,
            &control.plugins(),
            &self.rates.lock().unwrap_or_else(PoisonError::into_inner),
            facts,
        );
        Some((control, view))
    }
}

/// A running admin listener; [`AdminHandle::stop`] closes it.
#[derive(Debug)]
pub struct AdminHandle {
    /// The TCP address actually bound.
    pub local: Option<SocketAddr>,
    pub unix: Option<PathBuf>,
    settings: Arc<ArcSwap<Admin>>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl AdminHandle {
    /// Whether `config` asks for the same sockets as this listener has.
    pub fn same_sockets(&self, config: &Admin) -> bool {
        let current = self.settings.load();
        current.bind == config.bind && current.unix == config.unix
    }

    /// Whether `config` asks for one of this listener's sockets (so the new listener can only
    /// open once this one is closed). An ephemeral port (0) is never shared.
    pub fn shares_a_socket(&self, config: &Admin) -> bool {
        let current = self.settings.load();
        let tcp = current.bind.is_some_and(|b| b.port() != 0) && current.bind == config.bind;
        let unix = current.unix.is_some()
            && current.unix.as_ref().map(|u| &u.path) == config.unix.as_ref().map(|u| &u.path);
        tcp || unix
    }

    /// The settings this listener serves with.
    pub fn config(&self) -> Arc<Admin> {
        self.settings.load_full()
    }

    /// Applies auth and refresh from a reloaded `config` (sockets unchanged).
    pub fn update(&self, config: &Admin) {
        self.settings.store(Arc::new(config.clone()));
    }

    /// Stops accepting, gives open admin connections a moment, removes the socket file.
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        if let Some(path) = &self.unix {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Opens the admin listener(s) of `config` on the current runtime.
pub fn spawn_admin(config: &Admin, control: Weak<dyn Control>) -> Result<AdminHandle, AdminError> {
    process_start();
    let settings = Arc::new(ArcSwap::from_pointee(config.clone()));
    let ctx = Arc::new(Context {
        control,
        settings: Arc::clone(&settings),
        rates: Mutex::new(Rates::default()),
    });
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    let mut local = None;
    if let Some(addr) = config.bind {
        let listener = crate::proxy::listener::bind(addr)
            .and_then(TcpListener::from_std)
            .map_err(|source| AdminError::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| AdminError::Bind { addr, source })?;
        local = Some(bound);
        tracing::info!(listener = %bound, "admin listening");
        tasks.push(tokio::spawn(accept_tcp(
            listener,
            Arc::clone(&ctx),
            stop.clone(),
        )));
    }
    let mut unix = None;
    if let Some(u) = &config.unix {
        let listener = bind_unix(&u.path, u.mode).map_err(|source| AdminError::Unix {
            path: u.path.clone(),
            source,
        })?;
        tracing::info!(socket = %u.path.display(), "admin listening");
        unix = Some(u.path.clone());
        tasks.push(tokio::spawn(accept_unix(
            listener,
            Arc::clone(&ctx),
            stop.clone(),
        )));
    }
    tasks.push(tokio::spawn(sample_rates(ctx, stop.clone())));
    Ok(AdminHandle {
        local,
        unix,
        settings,
        stop,
        tasks,
    })
}

fn bind_unix(path: &Path, mode: u32) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        // A socket left by a previous run that did not stop cleanly.
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

async fn accept_tcp(listener: TcpListener, ctx: Arc<Context>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, _)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(serve(tcp, Arc::clone(&ctx), true, stop.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

async fn accept_unix(listener: UnixListener, ctx: Arc<Context>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream, Arc::clone(&ctx), false, stop.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

async fn serve<IO>(io: IO, ctx: Arc<Context>, tcp: bool, stop: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let ctx = Arc::clone(&ctx);
        async move { Ok::<_, std::convert::Infallible>(api::handle(&ctx, req, tcp).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(STOP_GRACE, conn).await;
        }
    }
}

/// Samples request totals once a second, for the rates the stats page shows.
async fn sample_rates(ctx: Arc<Context>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let Some(control) = ctx.control.upgrade() else {
            break;
        };
        let snapshot = control.snapshot();
        drop(control);
        ctx.rates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sample(&snapshot);
    }
}
