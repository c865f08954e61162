//! `balance leastconn`: the server with the fewest requests in flight relative to its weight.
//!
//! A pick scans the candidates once, comparing `active / weight` by cross-multiplication. What
//! the scan needs besides the live `active` count (index, weight, `maxconn`) is kept in one
//! compact array rebuilt per state generation, so the scan touches one counter per server and
//! nothing else. The scan starts one position further at every pick and keeps the first of
//! equally loaded servers, so ties (an idle backend, equal loads) are spread round-robin; an idle
//! server ends the scan early since nothing can beat it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::balance::{Balancer, PerGeneration, PickContext, candidates, less_loaded};
use crate::health::{BackendState, ServerState};

#[derive(Debug)]
pub struct LeastConn {
    servers: Vec<Arc<ServerState>>,
    members: PerGeneration<Vec<Member>>,
    next: AtomicUsize,
}

/// A candidate server as of the last rebuild.
#[derive(Debug)]
struct Member {
    server: Arc<ServerState>,
    idx: u32,
    weight: u32,
    /// 0: no limit.
    maxconn: u32,
}

impl LeastConn {
    pub fn new(servers: Vec<Arc<ServerState>>, state: Arc<BackendState>) -> Self {
        let members = PerGeneration::new(state, || members(&servers));
        Self {
            servers,
            members,
            next: AtomicUsize::new(0),
        }
    }
}

impl Balancer for LeastConn {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let members = self.members.get(|_| members(&self.servers));
        let n = members.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let (before, from) = members.split_at(start);
        let mut best: Option<(&Member, u32)> = None;
        for m in from.iter().chain(before) {
            let active = m.server.active();
            if m.maxconn != 0 && active >= m.maxconn {
                continue;
            }
            if let Some((b, b_active)) = best
                && !less_loaded(active, m.weight, b_active, b.weight)
            {
                continue;
            }
            // Rarely reached (only for a new best): the rest of eligibility.
            if ctx.tried(m.idx as usize) || !m.server.usable() {
                continue;
            }
            best = Some((m, active));
            if active == 0 {
                break;
            }
        }
        best.map(|(m, _)| m.idx as usize)
    }
}

fn members(servers: &[Arc<ServerState>]) -> Vec<Member> {
    candidates(servers)
        .map(|i| {
            let s = &servers[i];
            Member {
                server: Arc::clone(s),
                idx: i as u32,
                weight: s.weight(),
                maxconn: s.maxconn().unwrap_or(0),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testkit::{Lab, counts};

    fn lc(lab: &Lab) -> LeastConn {
        LeastConn::new(lab.servers.clone(), lab.backend())
    }

    fn hold(lab: &Lab, server: usize, n: usize) -> Vec<crate::health::state::ActiveGuard> {
        (0..n)
            .map(|_| lab.servers[server].begin_request())
            .collect()
    }

    #[test]
    fn the_least_loaded_server_is_picked() {
        let lab = Lab::new(&[1, 1, 1]);
        let lc = lc(&lab);
        let _a = hold(&lab, 0, 2);
        let _b = hold(&lab, 1, 1);
        assert_eq!(lab.picks(&lc, 3, &[]), vec![Some(2); 3]);
        let _c = hold(&lab, 2, 2);
        assert_eq!(lab.picks(&lc, 3, &[]), vec![Some(1); 3]);
    }

    #[test]
    fn load_is_relative_to_weight() {
        let lab = Lab::new(&[1, 3]);
        let lc = lc(&lab);
        // 1/1 against 2/3: the heavier server is less loaded.
        let _a = hold(&lab, 0, 1);
        let _b = hold(&lab, 1, 2);
        assert_eq!(lab.picks(&lc, 2, &[]), vec![Some(1); 2]);
    }

    #[test]
    fn requests_held_open_pile_up_in_proportion_to_weight() {
        let lab = Lab::new(&[1, 2, 3]);
        let lc = lc(&lab);
        let mut held = Vec::new();
        for _ in 0..60 {
            let i = lab.picks(&lc, 1, &[])[0].expect("a server");
            held.push(lab.servers[i].begin_request());
        }
        let active: Vec<_> = lab.servers.iter().map(|s| s.active()).collect();
        assert_eq!(active, [10, 20, 30]);
    }

    #[test]
    fn ties_are_spread() {
        let lab = Lab::new(&[1, 1, 1, 1]);
        let lc = lc(&lab);
        assert_eq!(counts(&lab.picks(&lc, 400, &[]), 4), [100; 4]);
        let _held: Vec<_> = (0..4).flat_map(|i| hold(&lab, i, 2)).collect();
        assert_eq!(counts(&lab.picks(&lc, 400, &[]), 4), [100; 4]);
    }

    #[test]
    fn full_and_tried_servers_are_passed_over_even_when_least_loaded() {
        let lab = Lab::with_maxconn(&[1, 1, 1], Some(3));
        let lc = lc(&lab);
        let _full = hold(&lab, 0, 3);
        let _busy = hold(&lab, 2, 2);
        assert_eq!(lab.picks(&lc, 3, &[1]), vec![Some(2); 3]);
        assert_eq!(lab.picks(&lc, 1, &[1, 2]), vec![None]);
    }
}
