//! The data path: listeners, the HTTP request path, forwarding, error answers, access log.
//!
//! `listener` accepts and serves connections (`accept_proxy` reads the PROXY protocol header
//! of trusted peers, `client_io` enforces client timeouts at the socket), `http` carries each
//! request through routing, balancing and forwarding (`canon` makes its authority and path
//! canonical, `headers` rewrites headers), `respond` is the one place failures become
//! statuses, `body` and `access` finish each response with its log line. `workers` runs the
//! accept loops and the connections on per-thread runtimes (`sched` sets a worker thread's time
//! slice and CPU when the config asks); `graceful` tells open connections to stop and waits for
//! them. `upgrade` turns a 101 into a WebSocket tunnel. TCP-mode frontends hand their
//! connections to `l4`, which routes and relays them with `tcp`'s building blocks.

pub mod accept_proxy;
pub mod access;
pub mod body;
pub mod canon;
pub mod client_io;
pub mod detect;
pub mod dispatch;
pub mod graceful;
pub mod headers;
pub mod http;
pub mod l4;
pub mod listener;
pub mod relay;
pub mod respond;
pub mod sched;
pub mod tcp;
#[cfg(test)]
pub(crate) mod test_io;
pub mod timer;
pub mod upgrade;
pub mod workers;

use std::cell::RefCell;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::health::state::FrontendState;
use crate::snapshot::{ListenKey, Snapshot};

/// A thread's own handle on a snapshot (see [`Proxy::local_snapshot`]).
pub type LocalSnapshot = Arc<Arc<Snapshot>>;

thread_local! {
    static LOCAL: RefCell<Option<LocalSnapshot>> = const { RefCell::new(None) };
}

/// The live proxy state shared by every listener and connection: the current snapshot.
#[derive(Debug)]
pub struct Proxy {
    snapshot: ArcSwap<Snapshot>,
    /// Notified when a new snapshot is installed.
    installed: Notify,
}

impl Proxy {
    pub fn new(snapshot: Snapshot) -> Self {
        snapshot.apply_limits();
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            installed: Notify::new(),
        }
    }

    /// The current snapshot; callers keep this `Arc` for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The current snapshot, through this thread's own handle on it, for the request path.
    ///
    /// Every request keeps its snapshot alive to its end. Cloning the snapshot's `Arc` for
    /// each request would make every worker write the one reference count they share; cloning
    /// the thread's handle writes a count only this thread uses. The handle is replaced at the
    /// thread's first request after a reload (until then it keeps the old snapshot alive).
    pub fn local_snapshot(&self) -> LocalSnapshot {
        let current = self.snapshot.load();
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            match &*local {
                Some(handle) if Arc::ptr_eq(handle.as_ref(), &current) => Arc::clone(handle),
                _ => {
                    let handle = Arc::new(Arc::clone(&current));
                    *local = Some(Arc::clone(&handle));
                    handle
                }
            }
        })
    }

    /// Makes `snapshot` the one new requests see. In-flight requests finish on the old one.
    /// Its frontends' connection limits take effect with it.
    pub fn install(&self, snapshot: Snapshot) {
        snapshot.apply_limits();
        self.snapshot.store(Arc::new(snapshot));
        self.installed.notify_waiters();
    }

    /// The state of the frontend serving listener `key` now.
    pub fn frontend_state(&self, key: &ListenKey) -> Option<Arc<FrontendState>> {
        self.snapshot
            .load()
            .frontend_for(key)
            .map(|f| Arc::clone(&f.state))
    }

    /// Waits until the frontend serving listener `key` has room for another connection under
    /// its own `maxconn` (the accept loop then reserves the place as it accepts). A reload that
    /// gives the listener to another frontend, or changes the limit, is seen while waiting.
    pub async fn room_on(&self, key: &ListenKey) {
        loop {
            // The usual case, a frontend without a limit of its own, takes no reference.
            let state = match self.snapshot.load().frontend_for(key) {
                Some(f) if f.state.sessions.limit().is_some() => Arc::clone(&f.state),
                _ => return,
            };
            let installed = self.installed.notified();
            tokio::pin!(installed);
            installed.as_mut().enable();
            // A snapshot installed since the look above is not notified: look again.
            match self.snapshot.load().frontend_for(key) {
                Some(f) if Arc::ptr_eq(&f.state, &state) => {}
                _ => continue,
            }
            tokio::select! {
                () = state.sessions.room() => return,
                () = installed => {}
            }
        }
    }
}
