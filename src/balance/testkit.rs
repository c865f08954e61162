//! Test helpers shared by the algorithms' unit tests: a backend of servers in a state table,
//! requests with distinct keys, and pick counting.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};

use crate::balance::{Balancer, PickContext};
use crate::config::Server;
use crate::health::state::tests::conf;
use crate::health::{BackendState, ServerKey, ServerState, StateTable};

use crate::routing::RequestView;

/// The backend every lab server belongs to.
pub(crate) const BACKEND: &str = "b";

/// A backend's servers, in config order, in their own state table.
pub(crate) struct Lab {
    pub table: StateTable,
    pub confs: Vec<Server>,
    pub servers: Vec<Arc<ServerState>>,
}

impl Lab {
    /// Servers with these weights, up and ready, without `maxconn`.
    pub fn new(weights: &[u32]) -> Self {
        Self::with_maxconn(weights, None)
    }

    pub fn with_maxconn(weights: &[u32], maxconn: Option<u32>) -> Self {
        Self::from_confs(
            weights
                .iter()
                .enumerate()
                .map(|(i, &w)| Server {
                    maxconn,
                    ..server(i, w)
                })
                .collect(),
        )
    }

    pub fn from_confs(confs: Vec<Server>) -> Self {
        let table = StateTable::new();
        let servers = confs
            .iter()
            .map(|c| table.server(ServerKey::of(BACKEND, c), c))
            .collect();
        Self {
            table,
            confs,
            servers,
        }
    }

    pub fn backend(&self) -> Arc<BackendState> {
        self.table.backend(BACKEND)
    }

    /// The server states without server `skip`: the list a config without it would give.
    pub fn servers_without(&self, skip: usize) -> Vec<Arc<ServerState>> {
        let mut servers = self.servers.clone();
        servers.remove(skip);
        servers
    }

    /// `n` picks for the same plain request.
    pub fn picks(&self, b: &dyn Balancer, n: usize, tried: &[usize]) -> Vec<Option<usize>> {
        let req = Req::new(0);
        (0..n).map(|_| pick(b, &req, tried)).collect()
    }
}

/// Server entry `i` of a lab: `s{i}` on 127.0.0.1:(9000 + i).
pub(crate) fn server(i: usize, weight: u32) -> Server {
    let addr = SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16));
    Server {
        name: format!("s{i}"),
        addr_spec: addr.to_string(),
        addr,
        ..conf(weight)
    }
}

pub(crate) fn pick(b: &dyn Balancer, req: &Req, tried: &[usize]) -> Option<usize> {
    b.pick(&PickContext {
        req: &req.view(),
        tried,
    })
}

/// How many picks went to each of `n` servers; panics on a `None`.
pub(crate) fn counts(picks: &[Option<usize>], n: usize) -> Vec<usize> {
    let mut counts = vec![0; n];
    for p in picks {
        counts[p.expect("a server")] += 1;
    }
    counts
}

/// An owned request to borrow views from.
pub(crate) struct Req {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub client: SocketAddr,
}

impl Req {
    /// Request number `key`: its own client address, path, query and `x-user` header.
    pub fn new(key: u32) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("example.com"));
        headers.insert(
            "x-user",
            HeaderValue::from_str(&format!("user-{key}")).expect("ascii"),
        );
        let [a, b, c, d] = key.to_be_bytes();
        Self {
            method: Method::GET,
            path: format!("/item/{key}"),
            query: format!("page={}", key % 7),
            headers,
            client: SocketAddr::from(([a.wrapping_add(10), b, c, d], 40000)),
        }
    }

    pub fn view(&self) -> RequestView<'_> {
        RequestView {
            method: &self.method,
            scheme: "http",
            host: "example.com",
            path: &self.path,
            query: Some(&self.query),
            headers: &self.headers,
            client: self.client,
            local_port: 80,
            frontend: "f",
            sni: "",
        }
    }
}

/// Consistent hashing over 5 servers and 10 000 keys (`Req::new(0..10_000)`): taking server 2
/// out, by marking it down and by removing it from the list, moves at most 25% of the keys and
/// never a key of another server; marking it up again brings every key back.
pub(crate) fn assert_consistent(
    make: impl Fn(Vec<Arc<ServerState>>, Arc<BackendState>) -> Box<dyn Balancer>,
) {
    const KEYS: u32 = 10_000;
    let lab = Lab::new(&[1; 5]);
    let reqs: Vec<Req> = (0..KEYS).map(Req::new).collect();
    let map = |b: &dyn Balancer, servers: &[Arc<ServerState>]| -> Vec<Option<SocketAddr>> {
        reqs.iter()
            .map(|r| pick(b, r, &[]).map(|i| servers[i].key.addr))
            .collect()
    };
    let all = make(lab.servers.clone(), lab.backend());
    let before = map(&*all, &lab.servers);
    let gone = Some(lab.servers[2].key.addr);
    let on_gone = before.iter().filter(|a| **a == gone).count();
    assert!(
        (1_500..=2_500).contains(&on_gone),
        "server 2 had {on_gone} of {KEYS} keys"
    );
    let check = |after: &[Option<SocketAddr>], how: &str| {
        let mut moved = 0;
        for (b, a) in before.iter().zip(after) {
            assert!(a.is_some() && *a != gone, "{how}: key mapped to {a:?}");
            if b != a {
                assert_eq!(*b, gone, "{how}: a key of another server moved");
                moved += 1;
            }
        }
        assert!(moved <= KEYS / 4, "{how}: {moved} of {KEYS} keys moved");
    };

    lab.servers[2].set_up(false);
    check(&map(&*all, &lab.servers), "marked down");
    lab.servers[2].set_up(true);
    assert!(
        map(&*all, &lab.servers) == before,
        "back up: every key returns"
    );

    let fewer = lab.servers_without(2);
    let without = make(fewer.clone(), lab.backend());
    check(&map(&*without, &fewer), "removed from the list");
}
