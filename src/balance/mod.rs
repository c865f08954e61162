//! Balancing: which server of a backend takes a request.
//!
//! Owns the [`Balancer`] decision trait and one file per native algorithm. A balancer is built
//! once per backend per snapshot and reads live server state (health, weight, load) from the
//! shared state table, so it never needs rebuilding when only run-time facts change.
//!
//! The rules every native algorithm shares live here:
//! - a server is *eligible* when it is usable (up, admin READY, weight > 0), below its
//!   `maxconn`, and not already tried for this request ([`eligible`]);
//! - backup servers take requests only while no non-backup server is usable; capacity and
//!   `tried` do not count for that test, as in HAProxy ([`backup_in_use`]). Within the backup
//!   set the algorithm applies unchanged;
//! - whatever an algorithm derives from server state (a schedule, a ring, a compact member
//!   list) is rebuilt lazily when the backend's state generation moves ([`PerGeneration`]),
//!   so that a pick itself neither allocates nor locks.

pub mod chash;
pub mod first;
pub mod hdr;
pub mod leastconn;
pub mod random;
pub mod roundrobin;
pub mod source;
pub mod static_rr;
pub mod uri;

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Backend, Balance, Mode};
use crate::health::{BackendState, ServerState};
use crate::routing::RequestView;

pub use first::First;
pub use hdr::Hdr;
pub use leastconn::LeastConn;
pub use random::{Random, RandomSource, SeededRng, ThreadRng};
pub use roundrobin::RoundRobin;
pub use source::Source;
pub use static_rr::StaticRr;
pub use uri::Uri;

/// What a balancer may look at to pick a server.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    pub req: &'a RequestView<'a>,
    /// Indexes of servers already tried for this request (failed connects); avoid them.
    pub tried: &'a [usize],
}

impl PickContext<'_> {
    fn tried(&self, idx: usize) -> bool {
        !self.tried.is_empty() && self.tried.contains(&idx)
    }
}

/// The balancing decision: native algorithms or a plugin implement it.
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// Index into the backend's server list of an eligible server (usable, below its
    /// `maxconn`, not in `ctx.tried`), or `None` when there is none.
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize>;

    /// [`Balancer::pick`], or a refusal of the request as a whole: a balancer plugin that
    /// failed under `on_error = "deny"`. Native algorithms never refuse.
    fn pick_or_deny(&self, ctx: &PickContext<'_>) -> Result<Option<usize>, Denied> {
        Ok(self.pick(ctx))
    }
}

/// A balancer refused the request (the proxy answers 503 without queueing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied;

/// Builds the native balancer a backend's config names (round-robin for a plugin name: the
/// plugin's fallback). `servers` are the backend's server states in config order. Only
/// `plugin::build` calls it.
pub fn build_balancer(
    backend: &Backend,
    servers: &[Arc<ServerState>],
    state: Arc<BackendState>,
) -> Box<dyn Balancer> {
    let servers = servers.to_vec();
    match &backend.balance {
        Balance::RoundRobin => Box::new(RoundRobin::new(servers, state)),
        Balance::StaticRr => {
            // The weights in force when the snapshot is built: the file's, or a run-time
            // change a reload kept (HAProxy's static-rr takes such changes at a reload too).
            let weights = servers.iter().map(|s| s.weight()).collect();
            Box::new(StaticRr::new(servers, weights, state))
        }
        Balance::LeastConn => Box::new(LeastConn::new(servers, state)),
        Balance::Random => Box::new(Random::new(servers, state)),
        Balance::Source => Box::new(Source::new(servers, state)),
        // TCP mode has no path or headers to hash (`wasp check` warns).
        Balance::Uri { .. } | Balance::Hdr(_) if backend.mode == Mode::Tcp => {
            Box::new(RoundRobin::new(servers, state))
        }
        Balance::Uri { whole } => Box::new(Uri::new(servers, state, *whole)),
        Balance::Hdr(name) => Box::new(Hdr::new(servers, state, name.clone())),
        Balance::First => Box::new(First::new(servers, state)),
        // `plugin::build` builds plugin balancers; this is their native fallback.
        Balance::Plugin(_) => Box::new(RoundRobin::new(servers, state)),
    }
}

/// Whether server `idx` may take this request now.
pub(crate) fn eligible(server: &ServerState, idx: usize, ctx: &PickContext<'_>) -> bool {
    server.usable() && server.has_capacity() && !ctx.tried(idx)
}

/// Whether the backup servers are the ones in use: true when no non-backup server is usable.
pub(crate) fn backup_in_use<'a>(servers: impl IntoIterator<Item = &'a ServerState>) -> bool {
    !servers.into_iter().any(|s| !s.is_backup() && s.usable())
}

/// The servers an algorithm chooses among right now, in config order: the usable servers of
/// the tier in use (non-backup, or backup when no non-backup server is usable).
pub(crate) fn candidates(servers: &[Arc<ServerState>]) -> impl Iterator<Item = usize> + '_ {
    let backup = backup_in_use(servers.iter().map(|s| &**s));
    servers
        .iter()
        .enumerate()
        .filter(move |(_, s)| s.is_backup() == backup && s.usable())
        .map(|(i, _)| i)
}

/// `a_active / a_weight < b_active / b_weight`, without division. Weights are > 0.
pub(crate) fn less_loaded(a_active: u32, a_weight: u32, b_active: u32, b_weight: u32) -> bool {
    u64::from(a_active) * u64::from(b_weight) < u64::from(b_active) * u64::from(a_weight)
}

/// A value derived from server state, rebuilt lazily (on the next pick) when the backend's
/// state generation has moved since it was built. Reading it is one atomic load and a
/// comparison; only a rebuild allocates.
#[derive(Debug)]
pub(crate) struct PerGeneration<T> {
    state: Arc<BackendState>,
    current: ArcSwap<Stamped<T>>,
}

#[derive(Debug)]
pub(crate) struct Stamped<T> {
    generation: u64,
    value: T,
}

impl<T> std::ops::Deref for Stamped<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> PerGeneration<T> {
    /// `build` derives the value from server state as it is now.
    pub(crate) fn new(state: Arc<BackendState>, build: impl FnOnce() -> T) -> Self {
        // Read the generation before the state it stamps: a change racing with the build
        // bumps it again, so the next pick rebuilds.
        let generation = state.generation();
        let value = build();
        Self {
            state,
            current: ArcSwap::from_pointee(Stamped { generation, value }),
        }
    }

    /// The value for the current generation. `rebuild` gets the stale value (to reuse what
    /// did not change) and derives a fresh one.
    pub(crate) fn get(&self, rebuild: impl FnOnce(&T) -> T) -> arc_swap::Guard<Arc<Stamped<T>>> {
        let generation = self.state.generation();
        let current = self.current.load();
        if current.generation == generation {
            return current;
        }
        let value = rebuild(&current.value);
        self.current.store(Arc::new(Stamped { generation, value }));
        self.current.load()
    }
}

#[cfg(test)]
pub(crate) mod testkit;

#[cfg(test)]
pub(crate) mod tests;
