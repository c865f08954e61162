//! Balancing: which server of a backend takes a request.
//!
//! Owns the [`Balancer`] decision trait and one file per native algorithm. A balancer is built
//! once per backend per snapshot and reads live server state (health, weight, load) from the
//! shared state table, so it never needs rebuilding when only run-time facts change.

pub mod roundrobin;

use std::sync::Arc;

use crate::config::{Backend, Balance};
use crate::health::{BackendState, ServerState};
use crate::routing::RequestView;

pub use roundrobin::RoundRobin;

/// What a balancer may look at to pick a server.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    pub req: &'a RequestView<'a>,
    /// Indexes of servers already tried for this request (failed connects); avoid them.
    pub tried: &'a [usize],
}

/// The balancing decision: native algorithms or a plugin implement it.
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// Index into the backend's server list of a usable server not in `ctx.tried`, or `None`
    /// when there is none.
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize>;
}

/// Builds the native balancer a backend's config names.
pub fn build_balancer(
    backend: &Backend,
    servers: &[Arc<ServerState>],
    state: Arc<BackendState>,
) -> Box<dyn Balancer> {
    match backend.balance {
        Balance::RoundRobin => Box::new(RoundRobin::new(servers.to_vec(), state)),
        // Work in progress: the other algorithms land in their own files next.
        _ => Box::new(RoundRobin::new(servers.to_vec(), state)),
    }
}
