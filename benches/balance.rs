//! Balancing decision cost: nanoseconds per `Balancer::pick()` for every native algorithm.
//!
//! Each algorithm is built by `build_balancer`, as a snapshot would, over 3 and over 100
//! servers (all up, weight 1, no `maxconn`). Picks cycle through 256 distinct requests (client
//! address, path, query and an `x-user-id` header differ) carrying a realistic header map, so
//! the hashing algorithms do not keep hitting one ring position. Nothing is in flight in the
//! main scenarios: `leastconn` then stops at the first idle server. The `loaded` scenarios hold
//! 1 to 5 requests in flight on every server, so `leastconn` scans them all and `random`
//! compares real loads; `leastconn-weighted` is the same with weights 1 to 4 (the
//! cross-multiplying scan instead of the equal-weights one).
//!
//! Before measuring, every scenario is checked to pick a server and to allocate nothing (a
//! counting global allocator).
//!
//! Run: `cargo bench --bench balance` (`-- --quick` for a short run).

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use wasp::balance::{Balancer, PickContext, build_balancer};
use wasp::config::{
    AdminState, Backend, Balance, CheckParams, DEFAULT_ERROR_LIMIT, Mode, Server, Timeouts,
};
use wasp::health::state::ActiveGuard;
use wasp::health::{ServerKey, ServerState, StateTable};
use wasp::routing::RequestView;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{CountingAlloc, allocations_in};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const REQUESTS: usize = 256;

/// An owned request to borrow views from.
struct Req {
    method: Method,
    path: String,
    query: String,
    headers: HeaderMap,
    client: SocketAddr,
}

impl Req {
    fn new(k: usize) -> Self {
        let mut headers = HeaderMap::new();
        let mut add = |name: &'static str, value: &str| {
            headers.append(
                name,
                HeaderValue::from_str(value).expect("static test header"),
            );
        };
        add("host", "shop.example.com");
        add(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        );
        add(
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        );
        add("accept-language", "en-GB,en;q=0.5");
        add("accept-encoding", "gzip, deflate, br, zstd");
        add("cookie", "session=3f2a9c1e7b6d4a05; theme=dark; consent=1");
        add("x-user-id", &format!("5b2c1e8f-0d47-4d8a-9a53-{k:012x}"));
        add("connection", "keep-alive");
        Req {
            method: Method::GET,
            path: format!("/api/v1/items/{}", 10_000 + k * 37),
            query: format!("page={}&sort=asc", k % 10),
            headers,
            client: SocketAddr::from(([10, 1, (k / 200) as u8, (k % 200) as u8 + 1], 50_000)),
        }
    }

    fn view(&self) -> RequestView<'_> {
        RequestView {
            method: &self.method,
            scheme: "http",
            host: "shop.example.com",
            path: &self.path,
            query: Some(&self.query),
            headers: &self.headers,
            client: self.client,
            local_port: 80,
            frontend: "web",
            sni: "",
        }
    }
}

/// What is in flight while measuring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// Nothing.
    Idle,
    /// 1 to 5 requests on every server.
    Loaded,
    /// As `Loaded`, with weights 1 to 4 instead of all 1.
    Weighted,
}

struct Scenario {
    balancer: Box<dyn Balancer>,
    servers: Vec<Arc<ServerState>>,
    /// Requests held in flight for the `loaded` scenarios.
    _held: Vec<ActiveGuard>,
}

fn scenario(balance: &Balance, n: usize, load: Load) -> Scenario {
    let table = StateTable::new();
    let confs: Vec<Server> = (0..n)
        .map(|i| {
            let addr = SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8080));
            Server {
                name: format!("s{i}"),
                addr_spec: addr.to_string(),
                addr,
                weight: if load == Load::Weighted {
                    1 + i as u32 % 4
                } else {
                    1
                },
                check: false,
                backup: false,
                maxconn: None,
                state: AdminState::Ready,
                send_proxy: None,
                tls: None,
            }
        })
        .collect();
    let servers: Vec<_> = confs
        .iter()
        .map(|c| table.server(ServerKey::of("app", c), c))
        .collect();
    let backend = Backend {
        name: "app".into(),
        mode: Mode::Http,
        balance: balance.clone(),
        servers: confs,
        timeouts: Timeouts::default(),
        retries: 3,
        redispatch: true,
        maxconn: None,
        observe: None,
        error_limit: DEFAULT_ERROR_LIMIT,
        check: CheckParams::default(),
        proto: Default::default(),
        tls: None,
    };
    let balancer = build_balancer(&backend, &servers, table.backend("app"));
    let held = if load != Load::Idle {
        servers
            .iter()
            .enumerate()
            .flat_map(|(i, s)| (0..1 + i * 7 % 5).map(|_| s.begin_request()))
            .collect()
    } else {
        Vec::new()
    };
    Scenario {
        balancer,
        servers,
        _held: held,
    }
}

fn pick(balancer: &dyn Balancer, req: &Req) -> Option<usize> {
    balancer.pick(&PickContext {
        req: &req.view(),
        tried: &[],
    })
}

/// Every request gets a server, and picking allocates nothing.
fn verify(name: &str, s: &Scenario, reqs: &[Req]) {
    for r in reqs {
        assert!(pick(&*s.balancer, r).is_some(), "{name}: no server");
    }
    let allocated = allocations_in(|| {
        for r in reqs {
            black_box(pick(&*s.balancer, r));
        }
    });
    assert_eq!(allocated, 0, "{name}: pick() allocated {allocated} times");
    assert!(s.servers.iter().all(|s| s.usable()));
}

fn bench(c: &mut Criterion) {
    let reqs: Vec<Req> = (0..REQUESTS).map(Req::new).collect();
    let algorithms = [
        ("roundrobin", Balance::RoundRobin, Load::Idle),
        ("static-rr", Balance::StaticRr, Load::Idle),
        ("leastconn", Balance::LeastConn, Load::Idle),
        ("leastconn-loaded", Balance::LeastConn, Load::Loaded),
        ("leastconn-weighted", Balance::LeastConn, Load::Weighted),
        ("random", Balance::Random, Load::Idle),
        ("random-loaded", Balance::Random, Load::Loaded),
        ("source", Balance::Source, Load::Idle),
        ("uri", Balance::Uri { whole: false }, Load::Idle),
        ("uri-whole", Balance::Uri { whole: true }, Load::Idle),
        (
            "hdr",
            Balance::Hdr(HeaderName::from_static("x-user-id")),
            Load::Idle,
        ),
        ("first", Balance::First, Load::Idle),
    ];
    let mut group = c.benchmark_group("pick");
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20);
    for (name, balance, load) in &algorithms {
        for n in [3, 100] {
            let s = scenario(balance, n, *load);
            verify(name, &s, &reqs);
            let mut k = 0;
            group.bench_function(BenchmarkId::new(*name, n), |b| {
                b.iter(|| {
                    k = (k + 1) % REQUESTS;
                    black_box(pick(&*s.balancer, black_box(&reqs[k])))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
