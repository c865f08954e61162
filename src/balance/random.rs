//! `balance random`: power of two random choices, weighted.
//!
//! Two candidates are drawn with probability proportional to their weight (a binary search in
//! the running sums of the weights, rebuilt per state generation) and the one with fewer
//! requests in flight relative to its weight takes the request; the first drawn wins a tie, so
//! an idle backend gets shares exactly proportional to the weights. A drawn server that is not
//! eligible is redrawn a few times; if that keeps failing (nearly every server full or tried) a
//! scan from a random position finds any eligible server left.
//!
//! The generator is injected ([`RandomSource`]): production uses fastrand's per-thread
//! generator ([`ThreadRng`]), tests a seeded one ([`SeededRng`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::balance::{Balancer, PerGeneration, PickContext, candidates, eligible, less_loaded};
use crate::health::{BackendState, ServerState};

/// Draws per candidate before falling back to a scan.
const DRAW_TRIES: usize = 3;

/// Where `random` gets its numbers.
pub trait RandomSource: Send + Sync + std::fmt::Debug {
    /// A number uniformly distributed in `0..bound`; `bound` is never 0.
    fn below(&self, bound: u32) -> u32;
}

/// fastrand's per-thread generator (wyrand, seeded per thread): no sharing between workers.
#[derive(Debug, Default, Clone, Copy)]
pub struct ThreadRng;

impl RandomSource for ThreadRng {
    fn below(&self, bound: u32) -> u32 {
        fastrand::u32(..bound)
    }
}

/// A deterministic generator: the same seed gives the same sequence of draws (in one thread).
/// Lock-free, but all threads advance one shared counter; meant for tests and reproductions.
#[derive(Debug)]
pub struct SeededRng {
    state: AtomicU64,
}

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed),
        }
    }
}

impl RandomSource for SeededRng {
    fn below(&self, bound: u32) -> u32 {
        // Each draw seeds a fresh generator from a counter stepped by an odd constant; wyrand's
        // output function mixes the seed fully.
        let seed = self
            .state
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        fastrand::Rng::with_seed(seed).u32(..bound)
    }
}

#[derive(Debug)]
pub struct Random<R = ThreadRng> {
    servers: Vec<Arc<ServerState>>,
    pool: PerGeneration<Pool>,
    rng: R,
}

/// The candidates as of the last rebuild, with the running sums of their weights.
#[derive(Debug)]
struct Pool {
    members: Vec<Member>,
    /// `ends[i]` = sum of the weights of members `0..=i`; the last is the total.
    ends: Vec<u32>,
}

#[derive(Debug)]
struct Member {
    server: Arc<ServerState>,
    idx: usize,
    weight: u32,
}

impl Random {
    pub fn new(servers: Vec<Arc<ServerState>>, state: Arc<BackendState>) -> Self {
        Self::with_rng(servers, state, ThreadRng)
    }
}

impl<R: RandomSource> Random<R> {
    pub fn with_rng(servers: Vec<Arc<ServerState>>, state: Arc<BackendState>, rng: R) -> Self {
        let pool = PerGeneration::new(state, || pool(&servers));
        Self { servers, pool, rng }
    }

    /// A weighted draw that is eligible, within a few tries, with its load.
    fn draw<'p>(
        &self,
        pool: &'p Pool,
        total: u32,
        ctx: &PickContext<'_>,
    ) -> Option<(&'p Member, u32)> {
        for _ in 0..DRAW_TRIES {
            let r = self.rng.below(total);
            let m = &pool.members[pool.ends.partition_point(|&end| end <= r)];
            if eligible(&m.server, m.idx, ctx) {
                return Some((m, m.server.active()));
            }
        }
        None
    }

    /// Any eligible member, from a random starting point.
    fn scan(&self, pool: &Pool, ctx: &PickContext<'_>) -> Option<usize> {
        let n = pool.members.len() as u32;
        let (before, from) = pool.members.split_at(self.rng.below(n) as usize);
        from.iter()
            .chain(before)
            .find(|m| eligible(&m.server, m.idx, ctx))
            .map(|m| m.idx)
    }
}

impl<R: RandomSource> Balancer for Random<R> {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let pool = self.pool.get(|_| pool(&self.servers));
        let total = pool.ends.last().copied().unwrap_or(0);
        if total == 0 {
            return None;
        }
        let chosen = match (self.draw(&pool, total, ctx), self.draw(&pool, total, ctx)) {
            (Some((a, a_active)), Some((b, b_active))) => {
                if less_loaded(b_active, b.weight, a_active, a.weight) {
                    b
                } else {
                    a
                }
            }
            (Some((m, _)), None) | (None, Some((m, _))) => m,
            (None, None) => return self.scan(&pool, ctx),
        };
        Some(chosen.idx)
    }
}

fn pool(servers: &[Arc<ServerState>]) -> Pool {
    let members: Vec<Member> = candidates(servers)
        .map(|i| Member {
            server: Arc::clone(&servers[i]),
            idx: i,
            weight: servers[i].weight(),
        })
        .collect();
    let ends = members
        .iter()
        .scan(0u32, |sum, m| {
            *sum += m.weight;
            Some(*sum)
        })
        .collect();
    Pool { members, ends }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testkit::{Lab, counts};

    fn random(lab: &Lab, seed: u64) -> Random<SeededRng> {
        Random::with_rng(lab.servers.clone(), lab.backend(), SeededRng::new(seed))
    }

    /// Percent of `n` picks each server got.
    fn shares(picks: &[Option<usize>], servers: usize) -> Vec<f64> {
        counts(picks, servers)
            .iter()
            .map(|&c| 100.0 * c as f64 / picks.len() as f64)
            .collect()
    }

    fn assert_near(got: &[f64], want: &[f64], points: f64) {
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= points,
                "shares {got:?}, expected {want:?} ± {points}"
            );
        }
    }

    #[test]
    fn shares_follow_weights() {
        let lab = Lab::new(&[1, 2, 3]);
        let got = shares(&lab.picks(&random(&lab, 7), 6000, &[]), 3);
        assert_near(&got, &[100.0 / 6.0, 200.0 / 6.0, 300.0 / 6.0], 2.0);
    }

    #[test]
    fn shares_follow_weights_under_equal_relative_load() {
        let lab = Lab::new(&[1, 2, 3]);
        let _held: Vec<_> = (0..3)
            .flat_map(|i| (0..=i).map(move |_| i))
            .map(|i| lab.servers[i].begin_request())
            .collect();
        let got = shares(&lab.picks(&random(&lab, 11), 6000, &[]), 3);
        assert_near(&got, &[100.0 / 6.0, 200.0 / 6.0, 300.0 / 6.0], 2.0);
    }

    #[test]
    fn the_less_loaded_of_two_draws_wins() {
        let lab = Lab::new(&[1, 1, 1]);
        let _busy: Vec<_> = (0..5).map(|_| lab.servers[0].begin_request()).collect();
        // s0 only wins when both draws are s0: 1/9 of picks instead of 1/3.
        let got = shares(&lab.picks(&random(&lab, 3), 6000, &[]), 3);
        assert_near(&got, &[100.0 / 9.0, 400.0 / 9.0, 400.0 / 9.0], 2.0);
    }

    #[test]
    fn the_same_seed_gives_the_same_picks() {
        let lab = Lab::new(&[1, 1, 1, 1]);
        let a = lab.picks(&random(&lab, 42), 50, &[]);
        let b = lab.picks(&random(&lab, 42), 50, &[]);
        let c = lab.picks(&random(&lab, 43), 50, &[]);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn the_last_eligible_server_is_found_when_draws_keep_missing() {
        let weights = vec![1; 50];
        let lab = Lab::new(&weights);
        let tried: Vec<usize> = (0..49).collect();
        assert_eq!(lab.picks(&random(&lab, 5), 20, &tried), vec![Some(49); 20]);
        let all: Vec<usize> = (0..50).collect();
        assert_eq!(lab.picks(&random(&lab, 5), 1, &all), vec![None]);
    }
}
