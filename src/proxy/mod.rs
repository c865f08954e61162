//! The data path: listeners, the HTTP request path, forwarding, error answers, access log.
//!
//! `listener` accepts and serves connections (`client_io` enforces client timeouts at the
//! socket), `http` carries each request through routing, balancing and forwarding (`canon`
//! makes its authority and path canonical, `headers` rewrites headers), `respond` is the one
//! place failures become statuses, `body` and `access` finish each response with its log line.
//! `workers` runs the accept loops and the connections on per-thread runtimes. `upgrade` turns a
//! 101 into a WebSocket tunnel. TCP-mode frontends hand their connections to `l4`, which routes
//! and relays them with `tcp`'s building blocks.

pub mod access;
pub mod body;
pub mod canon;
pub mod client_io;
pub mod dispatch;
pub mod headers;
pub mod http;
pub mod l4;
pub mod listener;
pub mod respond;
pub mod tcp;
pub mod timer;
pub mod upgrade;
pub mod workers;

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::snapshot::Snapshot;

/// The live proxy state shared by every listener and connection: the current snapshot.
#[derive(Debug)]
pub struct Proxy {
    snapshot: ArcSwap<Snapshot>,
}

impl Proxy {
    pub fn new(snapshot: Snapshot) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
        }
    }

    /// The current snapshot; callers keep this `Arc` for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Makes `snapshot` the one new requests see. In-flight requests finish on the old one.
    pub fn install(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }
}
