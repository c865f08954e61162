//! Reaching servers: connections (`connect`: TCP, then TLS when the server wants it, timed
//! for the access log), per-worker pools of them (`pool`: HTTP/1.1 keep-alive, or shared HTTP/2
//! connections for `proto = "h2"` backends, whose settings `peer` follows), and the
//! request bodies sent upstream (`body`). Pools are shared across configuration snapshots
//! ([`ClientCache`]), so a reload keeps the pooled connections of servers that stay.

pub mod body;
pub mod connect;
mod peer;
pub mod pool;

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::config::{Proto, UpstreamTls};
use crate::tls::TlsError;
use crate::tls::client::client_config;

pub use connect::{ConnectError, ConnectTiming};
pub use pool::{POOL_IDLE_TIMEOUT, POOL_MAX_IDLE_PER_SERVER, Pools, ResponseBody, UpstreamError};

thread_local! {
    static POOL_INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Makes the current thread use pool `index` of every [`Pools`] (a worker thread calls this
/// once with its own index, so that its requests and upstream connections stay on it).
pub fn set_pool_index(index: usize) {
    POOL_INDEX.with(|p| p.set(index));
}

/// The pool index of the current thread.
fn pool_index() -> usize {
    POOL_INDEX.with(Cell::get)
}

/// What sets one set of upstream pools apart from another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub connect_timeout: Duration,
    pub proto: Proto,
    pub tls: Option<TlsKey>,
}

/// The TLS side of a [`ClientKey`]: the settings, the name verified, and the CA bundle's
/// contents as read when the snapshot was built (a changed CA file makes new pools).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsKey {
    pub settings: UpstreamTls,
    pub name: ServerName<'static>,
    pub ca_pem: Option<Vec<u8>>,
}

/// Pools shared across snapshots, per distinct [`ClientKey`], so that a reload keeps the
/// pooled connections of servers that stay.
#[derive(Debug)]
pub struct ClientCache {
    workers: usize,
    pools: Mutex<HashMap<ClientKey, Pools>>,
}

impl ClientCache {
    /// A cache whose pools have one pool per worker.
    pub fn new(workers: usize) -> Self {
        Self {
            workers: workers.max(1),
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// The pools for servers reached with `key`; fails when a TLS configuration cannot be
    /// built (an unreadable CA file).
    pub fn pools(&self, key: &ClientKey) -> Result<Pools, TlsError> {
        let mut pools = self
            .pools
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(p) = pools.get(key) {
            return Ok(p.clone());
        }
        let mut connector = connect::Connector::new(key.connect_timeout);
        if let Some(tls) = &key.tls {
            let config = client_config(&tls.settings, key.proto == Proto::H2)?;
            connector = connector.with_tls(config, tls.name.clone());
        }
        let made = Pools::new(connector, key.proto, self.workers);
        pools.insert(key.clone(), made.clone());
        Ok(made)
    }
}
