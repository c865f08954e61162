//! Smooth weighted round-robin.
//!
//! The interleaved order is computed once per change of the backend's state generation (a
//! server going up or down, a weight change) with the smooth weighted algorithm, and a pick is
//! then one atomic increment into that schedule: O(1) and lock-free on the request path. With
//! equal weights the schedule is the servers' config order, so picks go s1, s2, s3, s1, ...;
//! a weight of 0, or a server that is down, takes no new requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;

use crate::balance::{Balancer, PickContext};
use crate::health::{BackendState, ServerState};

#[derive(Debug)]
pub struct RoundRobin {
    servers: Vec<Arc<ServerState>>,
    state: Arc<BackendState>,
    schedule: ArcSwap<Schedule>,
    next: AtomicUsize,
}

#[derive(Debug)]
struct Schedule {
    generation: u64,
    /// Server indexes in pick order; each appears `weight / gcd` times.
    order: Vec<u32>,
}

impl RoundRobin {
    pub fn new(servers: Vec<Arc<ServerState>>, state: Arc<BackendState>) -> Self {
        let generation = state.generation();
        let order = smooth_order(&current_weights(&servers));
        Self {
            servers,
            state,
            schedule: ArcSwap::from_pointee(Schedule { generation, order }),
            next: AtomicUsize::new(0),
        }
    }

    /// The schedule for the current generation, rebuilt first if server state changed.
    fn schedule(&self) -> arc_swap::Guard<Arc<Schedule>> {
        let generation = self.state.generation();
        let current = self.schedule.load();
        if current.generation == generation {
            return current;
        }
        let order = smooth_order(&current_weights(&self.servers));
        self.schedule
            .store(Arc::new(Schedule { generation, order }));
        self.schedule.load()
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let schedule = self.schedule();
        let len = schedule.order.len();
        if len == 0 {
            return None;
        }
        // At most one lap: a server may have gone down or been tried since the schedule was built.
        for _ in 0..len {
            let slot = self.next.fetch_add(1, Ordering::Relaxed) % len;
            let idx = schedule.order[slot] as usize;
            if self.servers[idx].usable() && !ctx.tried.contains(&idx) {
                return Some(idx);
            }
        }
        None
    }
}

/// Effective weights: 0 for a server that cannot take requests.
fn current_weights(servers: &[Arc<ServerState>]) -> Vec<u32> {
    servers
        .iter()
        .map(|s| if s.usable() { s.weight() } else { 0 })
        .collect()
}

/// The smooth weighted round-robin sequence for `weights` (one full cycle). Each step adds every
/// weight to its server's running score, picks the highest score (first in config order on
/// ties) and subtracts the total from it; this spreads heavy servers out instead of bunching them.
fn smooth_order(weights: &[u32]) -> Vec<u32> {
    let divisor = weights.iter().copied().filter(|&w| w > 0).fold(0, gcd);
    if divisor == 0 {
        return Vec::new();
    }
    let reduced: Vec<i64> = weights.iter().map(|&w| i64::from(w / divisor)).collect();
    let total: i64 = reduced.iter().sum();
    let mut score = vec![0i64; reduced.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..reduced.len() {
            score[i] += reduced[i];
            if score[i] > score[best] {
                best = i;
            }
        }
        score[best] -= total;
        order.push(best as u32);
    }
    order
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http::{HeaderMap, Method};

    use super::*;
    use crate::health::state::tests::conf;
    use crate::health::{ServerKey, StateTable};
    use crate::routing::RequestView;

    fn backend(weights: &[u32]) -> (StateTable, RoundRobin) {
        let table = StateTable::new();
        let servers: Vec<_> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let addr = SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16));
                table.server(
                    ServerKey {
                        backend: "b".into(),
                        addr,
                    },
                    &conf(w),
                )
            })
            .collect();
        let rr = RoundRobin::new(servers, table.backend("b"));
        (table, rr)
    }

    fn picks(rr: &RoundRobin, n: usize, tried: &[usize]) -> Vec<Option<usize>> {
        let headers = HeaderMap::new();
        let req = RequestView {
            method: &Method::GET,
            scheme: "http",
            host: "example.com",
            path: "/",
            query: "",
            headers: &headers,
            client: SocketAddr::from(([127, 0, 0, 1], 40000)),
            frontend: "f",
        };
        (0..n)
            .map(|_| rr.pick(&PickContext { req: &req, tried }))
            .collect()
    }

    #[test]
    fn equal_weights_follow_config_order() {
        let (_t, rr) = backend(&[1, 1, 1]);
        let got = picks(&rr, 7, &[]);
        let want: Vec<_> = [0, 1, 2, 0, 1, 2, 0].into_iter().map(Some).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn weights_are_interleaved_smoothly() {
        assert_eq!(smooth_order(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_order(&[2, 4, 6]), vec![2, 1, 0, 2, 1, 2]);
    }

    #[test]
    fn shares_follow_weights() {
        let (_t, rr) = backend(&[1, 2, 3]);
        let mut counts = [0usize; 3];
        for p in picks(&rr, 6000, &[]) {
            counts[p.expect("a server")] += 1;
        }
        assert_eq!(counts, [1000, 2000, 3000]);
    }

    #[test]
    fn zero_weight_and_down_servers_take_nothing() {
        let (table, rr) = backend(&[1, 0, 1]);
        assert!(picks(&rr, 10, &[]).iter().all(|p| *p != Some(1)));
        let s0 = table
            .get(&ServerKey {
                backend: "b".into(),
                addr: SocketAddr::from(([127, 0, 0, 1], 9000)),
            })
            .expect("known server");
        s0.set_up(false);
        assert_eq!(
            picks(&rr, 4, &[]),
            vec![Some(2); 4],
            "the down server is skipped without bias"
        );
        s0.set_up(true);
        let back = picks(&rr, 4, &[]);
        assert!(back.contains(&Some(0)) && back.contains(&Some(2)));
    }

    #[test]
    fn tried_servers_are_avoided_and_none_when_exhausted() {
        let (_t, rr) = backend(&[1, 1]);
        assert_eq!(picks(&rr, 3, &[0]), vec![Some(1); 3]);
        assert_eq!(picks(&rr, 1, &[0, 1]), vec![None]);
        let (_t, empty) = backend(&[0, 0]);
        assert_eq!(picks(&empty, 1, &[]), vec![None]);
    }
}
