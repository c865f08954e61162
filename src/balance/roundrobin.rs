//! Smooth weighted round-robin.
//!
//! The interleaved order is computed once per change of the backend's state generation (a
//! server going up or down, a weight change) with the smooth weighted algorithm, and a pick is
//! then one atomic increment into that schedule: O(1) and lock-free on the request path. With
//! equal weights the schedule is the servers' config order, so picks go s1, s2, s3, s1, ...;
//! a weight of 0, or a server that is down, takes no new requests. A server at its `maxconn`
//! is skipped for this pick without leaving the schedule.
//!
//! [`Rotation`] is the machinery, shared with `static-rr`, which only differs in where the
//! weights come from.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::balance::{Balancer, PerGeneration, PickContext, candidates, eligible};
use crate::health::{BackendState, ServerState};

/// `balance roundrobin`: smooth weighted round-robin with live weights.
#[derive(Debug)]
pub struct RoundRobin {
    rotation: Rotation,
}

impl RoundRobin {
    pub fn new(servers: Vec<Arc<ServerState>>, state: Arc<BackendState>) -> Self {
        Self {
            rotation: Rotation::new(servers, state, None),
        }
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        self.rotation.pick(ctx)
    }
}

/// The position in the schedule, written by every pick of every worker: on a cache line of
/// its own, so that it does not evict the fields next to it (read by every pick).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Cursor(AtomicUsize);

/// A weighted schedule over the candidate servers and a cursor into it.
#[derive(Debug)]
pub(crate) struct Rotation {
    servers: Vec<Arc<ServerState>>,
    /// Weights fixed at build time (`static-rr`); `None` follows each server's live weight.
    fixed: Option<Vec<u32>>,
    schedule: PerGeneration<Vec<u32>>,
    next: Cursor,
}

impl Rotation {
    pub(crate) fn new(
        servers: Vec<Arc<ServerState>>,
        state: Arc<BackendState>,
        fixed: Option<Vec<u32>>,
    ) -> Self {
        let schedule = PerGeneration::new(state, || schedule(&servers, fixed.as_deref()));
        Self {
            servers,
            fixed,
            schedule,
            next: Cursor::default(),
        }
    }

    pub(crate) fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let order = self
            .schedule
            .get(|_| schedule(&self.servers, self.fixed.as_deref()));
        let len = order.len();
        if len == 0 {
            return None;
        }
        // At most one lap: a server may be full, tried, or have gone down since the schedule
        // was built.
        for _ in 0..len {
            let slot = self.next.0.fetch_add(1, Ordering::Relaxed) % len;
            let idx = order[slot] as usize;
            if eligible(&self.servers[idx], idx, ctx) {
                return Some(idx);
            }
        }
        None
    }
}

/// The schedule (server indexes in pick order) over the current candidates.
fn schedule(servers: &[Arc<ServerState>], fixed: Option<&[u32]>) -> Vec<u32> {
    let mut weights = vec![0; servers.len()];
    for i in candidates(servers) {
        weights[i] = match fixed {
            Some(fixed) => fixed.get(i).copied().unwrap_or(0),
            None => servers[i].weight(),
        };
    }
    smooth_order(&weights)
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
    use super::*;
    use crate::balance::testkit::{Lab, counts};

    fn rr(lab: &Lab) -> RoundRobin {
        RoundRobin::new(lab.servers.clone(), lab.backend())
    }

    #[test]
    fn equal_weights_follow_config_order() {
        let lab = Lab::new(&[1, 1, 1]);
        let rr = rr(&lab);
        let got = lab.picks(&rr, 7, &[]);
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
        let lab = Lab::new(&[1, 2, 3]);
        assert_eq!(
            counts(&lab.picks(&rr(&lab), 6000, &[]), 3),
            [1000, 2000, 3000]
        );
    }

    #[test]
    fn a_weight_change_takes_effect_at_once() {
        let lab = Lab::new(&[1, 1, 1]);
        let rr = rr(&lab);
        assert_eq!(counts(&lab.picks(&rr, 300, &[]), 3), [100, 100, 100]);
        lab.servers[2].set_weight(4);
        assert_eq!(counts(&lab.picks(&rr, 600, &[]), 3), [100, 100, 400]);
    }

    #[test]
    fn zero_weight_and_down_servers_take_nothing() {
        let lab = Lab::new(&[1, 0, 1]);
        let rr = rr(&lab);
        assert!(lab.picks(&rr, 10, &[]).iter().all(|p| *p != Some(1)));
        lab.servers[0].set_up(false);
        assert_eq!(
            lab.picks(&rr, 4, &[]),
            vec![Some(2); 4],
            "the down server is skipped without bias"
        );
        lab.servers[0].set_up(true);
        let back = lab.picks(&rr, 4, &[]);
        assert!(back.contains(&Some(0)) && back.contains(&Some(2)));
    }

    #[test]
    fn a_full_server_is_skipped_and_none_when_all_are() {
        let lab = Lab::with_maxconn(&[1, 1], Some(1));
        let rr = rr(&lab);
        let _held = lab.servers[0].begin_request();
        assert_eq!(lab.picks(&rr, 3, &[]), vec![Some(1); 3]);
        let _held1 = lab.servers[1].begin_request();
        assert_eq!(lab.picks(&rr, 1, &[]), vec![None]);
    }

    #[test]
    fn tried_servers_are_avoided_and_none_when_exhausted() {
        let lab = Lab::new(&[1, 1]);
        let balancer = rr(&lab);
        assert_eq!(lab.picks(&balancer, 3, &[0]), vec![Some(1); 3]);
        assert_eq!(lab.picks(&balancer, 1, &[0, 1]), vec![None]);
        let empty = Lab::new(&[0, 0]);
        assert_eq!(empty.picks(&rr(&empty), 1, &[]), vec![None]);
    }
}
