//! `balance hdr(name)`: consistent hash of a request header's value (its first occurrence);
//! a request without the header, or with an empty value, is balanced round-robin instead, as in
//! HAProxy. See `chash` for the ring.

use std::sync::Arc;

use http::HeaderName;

use crate::balance::chash::{HashRing, hash_bytes};
use crate::balance::{Balancer, PickContext, RoundRobin};
use crate::health::{BackendState, ServerState};

#[derive(Debug)]
pub struct Hdr {
    name: HeaderName,
    ring: HashRing,
    fallback: RoundRobin,
}

impl Hdr {
    pub fn new(servers: Vec<Arc<ServerState>>, state: Arc<BackendState>, name: HeaderName) -> Self {
        Self {
            name,
            fallback: RoundRobin::new(servers.clone(), Arc::clone(&state)),
            ring: HashRing::new(servers, state),
        }
    }
}

impl Balancer for Hdr {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        match ctx.req.headers.get(&self.name) {
            Some(value) if !value.is_empty() => self.ring.pick(hash_bytes(value.as_bytes()), ctx),
            _ => self.fallback.pick(ctx),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::balance::testkit::{Lab, Req, assert_consistent, pick};

    fn hdr(lab: &Lab) -> Hdr {
        Hdr::new(
            lab.servers.clone(),
            lab.backend(),
            HeaderName::from_static("x-user"),
        )
    }

    #[test]
    fn removing_a_server_moves_only_its_header_values() {
        assert_consistent(|servers, state| {
            Box::new(Hdr::new(servers, state, HeaderName::from_static("x-user")))
        });
    }

    #[test]
    fn the_same_value_keeps_its_server() {
        let lab = Lab::new(&[1; 5]);
        let hdr = hdr(&lab);
        let req = Req::new(17);
        let first = pick(&hdr, &req, &[]);
        assert!(first.is_some());
        for _ in 0..20 {
            assert_eq!(pick(&hdr, &req, &[]), first);
        }
    }

    #[test]
    fn an_absent_or_empty_header_falls_back_to_round_robin() {
        let lab = Lab::new(&[1, 1, 1]);
        let hdr = hdr(&lab);
        let mut req = Req::new(0);
        req.headers.remove("x-user");
        let got: Vec<_> = (0..6).map(|_| pick(&hdr, &req, &[])).collect();
        assert_eq!(got, [0, 1, 2, 0, 1, 2].map(Some));
        req.headers.insert("x-user", HeaderValue::from_static(""));
        let got: Vec<_> = (0..3).map(|_| pick(&hdr, &req, &[])).collect();
        assert_eq!(got, [0, 1, 2].map(Some));
    }
}
