//! `balance source`: consistent hash of the client's IP address (port excluded; an
//! IPv4-mapped IPv6 address counts as the IPv4 address), so a client keeps its server while
//! that server is eligible. See `chash` for the ring.

use std::sync::Arc;

use crate::balance::chash::{HashRing, hash_ip};
use crate::balance::{Balancer, PickContext};
use crate::health::{BackendState, ServerState};

#[derive(Debug)]
pub struct Source {
    ring: HashRing,
}

impl Source {
    pub fn new(servers: Vec<Arc<ServerState>>, state: Arc<BackendState>) -> Self {
        Self {
            ring: HashRing::new(servers, state),
        }
    }
}

impl Balancer for Source {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        self.ring.pick(hash_ip(ctx.req.client.ip()), ctx)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::balance::testkit::{Lab, Req, assert_consistent, pick};

    #[test]
    fn removing_a_server_moves_only_its_clients() {
        assert_consistent(|servers, state| Box::new(Source::new(servers, state)));
    }

    #[test]
    fn the_client_port_does_not_count_and_mapped_ipv6_is_ipv4() {
        let lab = Lab::new(&[1; 5]);
        let source = Source::new(lab.servers.clone(), lab.backend());
        let mut req = Req::new(0);
        for k in 0..50u16 {
            req.client = SocketAddr::from(([10, 0, 0, k as u8], 1000 + k));
            let v4 = pick(&source, &req, &[]);
            req.client = format!("[::ffff:10.0.0.{k}]:{}", 2000 + k)
                .parse()
                .expect("addr");
            assert_eq!(pick(&source, &req, &[]), v4);
        }
    }
}
