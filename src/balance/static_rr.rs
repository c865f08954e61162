//! `balance static-rr`: weighted round-robin with the weights the config gave at build time.
//!
//! Run-time weight changes (the admin API, a future agent check) are ignored until the next
//! reload builds a new balancer; health and admin state still take a server in and out, and a
//! run-time weight of 0 still takes it out (it is not usable). Like HAProxy's static-rr the
//! weights never change under a running schedule, so the rotation is the same as roundrobin's
//! with the config's weights.

use std::sync::Arc;

use crate::balance::roundrobin::Rotation;
use crate::balance::{Balancer, PickContext};
use crate::health::{BackendState, ServerState};

#[derive(Debug)]
pub struct StaticRr {
    rotation: Rotation,
}

impl StaticRr {
    /// `weights` are the config's, one per server in the same order.
    pub fn new(
        servers: Vec<Arc<ServerState>>,
        weights: Vec<u32>,
        state: Arc<BackendState>,
    ) -> Self {
        Self {
            rotation: Rotation::new(servers, state, Some(weights)),
        }
    }
}

impl Balancer for StaticRr {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        self.rotation.pick(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::RoundRobin;
    use crate::balance::testkit::{Lab, counts};
    use crate::config::AdminState;

    fn static_rr(lab: &Lab) -> StaticRr {
        let weights = lab.confs.iter().map(|c| c.weight).collect();
        StaticRr::new(lab.servers.clone(), weights, lab.backend())
    }

    #[test]
    fn shares_follow_weights() {
        let lab = Lab::new(&[1, 2, 3]);
        let got = counts(&lab.picks(&static_rr(&lab), 6000, &[]), 3);
        assert_eq!(got, [1000, 2000, 3000]);
    }

    #[test]
    fn a_run_time_weight_change_is_ignored_where_roundrobin_follows_it() {
        let lab = Lab::new(&[1, 1, 1]);
        let srr = static_rr(&lab);
        let rr = RoundRobin::new(lab.servers.clone(), lab.backend());
        lab.servers[2].set_weight(4);
        assert_eq!(counts(&lab.picks(&srr, 600, &[]), 3), [200, 200, 200]);
        assert_eq!(counts(&lab.picks(&rr, 600, &[]), 3), [100, 100, 400]);
    }

    #[test]
    fn a_rebuild_takes_the_weights_in_force() {
        let lab = Lab::new(&[1, 1, 1]);
        lab.servers[2].set_weight(4);
        let backend = crate::balance::tests::backend(&crate::config::Balance::StaticRr, &lab);
        let rebuilt = crate::balance::build_balancer(&backend, &lab.servers, lab.backend());
        assert_eq!(counts(&lab.picks(&*rebuilt, 600, &[]), 3), [100, 100, 400]);
    }

    #[test]
    fn health_admin_and_zero_weight_still_apply() {
        let lab = Lab::new(&[1, 1, 1, 1]);
        let srr = static_rr(&lab);
        lab.servers[0].set_up(false);
        lab.servers[1].set_admin(AdminState::Drain);
        lab.servers[2].set_weight(0);
        assert_eq!(lab.picks(&srr, 5, &[]), vec![Some(3); 5]);
        lab.servers[0].set_up(true);
        assert_eq!(counts(&lab.picks(&srr, 10, &[]), 4), [5, 0, 0, 5]);
    }
}
