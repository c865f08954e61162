//! `balance first`: the first eligible server in config order takes the request, so servers
//! fill up one after the other to their `maxconn` (a server without `maxconn` takes
//! everything) and the last ones can be powered down at quiet times, as with HAProxy's `first`.

use std::sync::Arc;

use crate::balance::{Balancer, PerGeneration, PickContext, candidates, eligible};
use crate::health::{BackendState, ServerState};

#[derive(Debug)]
pub struct First {
    servers: Vec<Arc<ServerState>>,
    /// Candidate indexes in config order.
    order: PerGeneration<Vec<usize>>,
}

impl First {
    pub fn new(servers: Vec<Arc<ServerState>>, state: Arc<BackendState>) -> Self {
        let order = PerGeneration::new(state, || candidates(&servers).collect());
        Self { servers, order }
    }
}

impl Balancer for First {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let order = self.order.get(|_| candidates(&self.servers).collect());
        order
            .iter()
            .copied()
            .find(|&i| eligible(&self.servers[i], i, ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testkit::{Lab, server};
    use crate::config::Server;

    fn first(lab: &Lab) -> First {
        First::new(lab.servers.clone(), lab.backend())
    }

    #[test]
    fn servers_fill_in_order_up_to_their_maxconn() {
        let lab = Lab::with_maxconn(&[1, 1, 1], Some(2));
        let first = first(&lab);
        let mut held = Vec::new();
        let mut got = Vec::new();
        for _ in 0..7 {
            let p = lab.picks(&first, 1, &[])[0];
            if let Some(i) = p {
                held.push((i, lab.servers[i].begin_request()));
            }
            got.push(p);
        }
        assert_eq!(
            got,
            [Some(0), Some(0), Some(1), Some(1), Some(2), Some(2), None]
        );
        // A slot freed on s1 goes back to s1, not to a later server.
        let at = held
            .iter()
            .position(|(i, _)| *i == 1)
            .expect("s1 holds two");
        held.remove(at);
        assert_eq!(lab.picks(&first, 1, &[]), vec![Some(1)]);
    }

    #[test]
    fn a_server_without_maxconn_takes_everything() {
        let lab = Lab::from_confs(vec![
            server(0, 1),
            Server {
                maxconn: Some(1),
                ..server(1, 1)
            },
        ]);
        let first = first(&lab);
        let _held: Vec<_> = (0..100).map(|_| lab.servers[0].begin_request()).collect();
        assert_eq!(lab.picks(&first, 3, &[]), vec![Some(0); 3]);
        assert_eq!(lab.picks(&first, 1, &[0]), vec![Some(1)]);
    }
}
