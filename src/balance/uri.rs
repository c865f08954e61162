//! `balance uri`: consistent hash of the request path, or with `uri whole` of the path, `?`
//! and the query (when there is one), so a resource keeps its server (cache affinity) while that
//! server is eligible. See `chash` for the ring.

use std::sync::Arc;

use crate::balance::chash::{HashRing, KeyHasher};
use crate::balance::{Balancer, PickContext};
use crate::health::{BackendState, ServerState};
use crate::routing::RequestView;

#[derive(Debug)]
pub struct Uri {
    ring: HashRing,
    whole: bool,
}

impl Uri {
    pub fn new(servers: Vec<Arc<ServerState>>, state: Arc<BackendState>, whole: bool) -> Self {
        Self {
            ring: HashRing::new(servers, state),
            whole,
        }
    }

    fn key(&self, req: &RequestView<'_>) -> u64 {
        let mut h = KeyHasher::new();
        h.write(req.path.as_bytes());
        if let Some(query) = req.query.filter(|q| self.whole && !q.is_empty()) {
            h.write(b"?");
            h.write(query.as_bytes());
        }
        h.finish()
    }
}

impl Balancer for Uri {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        self.ring.pick(self.key(ctx.req), ctx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::balance::testkit::{Lab, Req, assert_consistent, pick};

    #[test]
    fn removing_a_server_moves_only_its_paths() {
        assert_consistent(|servers, state| Box::new(Uri::new(servers, state, false)));
        assert_consistent(|servers, state| Box::new(Uri::new(servers, state, true)));
    }

    /// Servers taking `/same?q=0` .. `/same?q=99`, and taking `/same` without a query.
    fn spread(whole: bool) -> (HashSet<Option<usize>>, Option<usize>) {
        let lab = Lab::new(&[1; 5]);
        let uri = Uri::new(lab.servers.clone(), lab.backend(), whole);
        let mut req = Req::new(0);
        req.path = "/same".into();
        let servers = (0..100)
            .map(|q| {
                req.query = format!("q={q}");
                pick(&uri, &req, &[])
            })
            .collect();
        req.query.clear();
        (servers, pick(&uri, &req, &[]))
    }

    #[test]
    fn uri_ignores_the_query_and_uri_whole_does_not() {
        let (path_only, bare) = spread(false);
        assert_eq!(path_only, HashSet::from([bare]));
        let (whole, whole_bare) = spread(true);
        assert_eq!(whole.len(), 5, "{whole:?}");
        assert_eq!(whole_bare, bare, "no query: the same key as the path alone");
    }
}
