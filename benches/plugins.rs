//! What a plugin decision costs, next to the native one: a routing decision (lab 2 with a
//! realistic 8-header request) and a balancing decision (4 servers), each native, by a plugin
//! on a warm instance, and by a plugin on a fresh instance per call (`recycle_after = 1`);
//! instantiation alone; and a hot swap (read, compile, link, trial instance, swap).
//!
//! The plugins are built first if needed (plugins/, wasm32-wasip2).
//! Run: `cargo bench --bench plugins` (`-- --quick` for a short run).

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use wasp::balance::{Balancer, PickContext};
use wasp::config::Config;
use wasp::health::{ServerKey, ServerState, StateTable};
use wasp::plugin::build::{build_balancer, build_router};
use wasp::plugin::{PluginSet, Plugins};
use wasp::routing::{RequestView, RouteDecision, Router};

#[path = "../src/plugin/test_plugins.rs"]
mod test_plugins;

struct Req {
    headers: HeaderMap,
    client: SocketAddr,
}

impl Req {
    fn new() -> Req {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("host", "shop.example.com"),
            (
                "user-agent",
                "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
            ),
            (
                "accept",
                "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            ),
            ("accept-language", "en-GB,en;q=0.5"),
            ("accept-encoding", "gzip, deflate, br, zstd"),
            ("cookie", "session=3f2a9c1e7b6d4a05; theme=dark; consent=1"),
            ("x-user", "user-42"),
            ("x-request-id", "0f8e1c2a-5b7d-4e3f-9a1b-2c3d4e5f6a7b"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        Req {
            headers,
            client: "192.0.2.10:40000".parse().unwrap(),
        }
    }

    fn view<'a>(&'a self, path: &'a str) -> RequestView<'a> {
        RequestView {
            method: &Method::GET,
            scheme: "http",
            host: "shop.example.com",
            path,
            query: None,
            headers: &self.headers,
            client: self.client,
            local_port: 80,
            frontend: "web",
            sni: "",
        }
    }
}

fn config(dir: &Path, recycle_after: u64) -> (Config, PluginSet) {
    let text = format!(
        r#"
        [frontend.native]
        bind = "127.0.0.1:0"
        default_backend = "webservers"
        acl = {{ is_item = "path_beg /item", is_basket = "path_beg /basket" }}
        use_backend = [{{ backend = "items", if = "is_item" }}, {{ backend = "baskets", if = "is_basket" }}]
        [frontend.plugin]
        bind = "127.0.0.1:0"
        default_backend = "webservers"
        router = "paths"
        [backend.items]
        servers = [{{ name = "s1", addr = "127.0.0.1:1" }}, {{ name = "s2", addr = "127.0.0.1:2" }}]
        [backend.baskets]
        servers = [{{ name = "s3", addr = "127.0.0.1:3" }}, {{ name = "s4", addr = "127.0.0.1:4" }}]
        [backend.webservers]
        balance = "sticky"
        servers = [
          {{ name = "s1", addr = "127.0.0.1:1" }}, {{ name = "s2", addr = "127.0.0.1:2" }},
          {{ name = "s3", addr = "127.0.0.1:3" }}, {{ name = "s4", addr = "127.0.0.1:4" }},
        ]
        [plugin.paths]
        path = "{}"
        config = {{ routes = "/item=items,/basket=baskets" }}
        recycle_after = {recycle_after}
        # The deadline does not change what a call costs; a generous one keeps a preempted
        # call (a busy machine) from ending as a timeout fault in the middle of a measurement.
        timeout = "1s"
        [plugin.sticky]
        path = "{}"
        config = {{ header = "x-user" }}
        recycle_after = {recycle_after}
        timeout = "1s"
        "#,
        test_plugins::wasm("path-router").display(),
        test_plugins::wasm("sticky-balancer").display(),
    );
    let (config, report) = wasp::config::load_str(&text, &dir.join("bench.toml"));
    let config = config.unwrap_or_else(|| panic!("{}", report.render()));
    let set = Plugins::new().prepare(&config).expect("plugins load");
    (config, set)
}

fn routers(config: &Config, set: &PluginSet) -> (Box<dyn Router>, Box<dyn Router>) {
    let index = config
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| (b.name.clone(), i))
        .collect();
    (
        build_router(&config.frontends[0], &index, set).unwrap(),
        build_router(&config.frontends[1], &index, set).unwrap(),
    )
}

/// The native round-robin and the plugin balancer over webservers' 4 servers.
fn balancers(config: &Config, set: &PluginSet) -> (Box<dyn Balancer>, Box<dyn Balancer>) {
    let b = config.backend("webservers").unwrap();
    let states = StateTable::new();
    let servers: Vec<Arc<ServerState>> = b
        .servers
        .iter()
        .map(|s| states.server(ServerKey::of(&b.name, s), s))
        .collect();
    let mut native_conf = b.clone();
    native_conf.balance = wasp::config::Balance::RoundRobin;
    let native = build_balancer(&native_conf, &servers, states.backend(&b.name), set).unwrap();
    let plugin = build_balancer(b, &servers, states.backend(&b.name), set).unwrap();
    (native, plugin)
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let req = Req::new();
    let (warm_conf, warm) = config(dir.path(), 1_000_000);
    let (fresh_conf, fresh) = config(dir.path(), 1);
    let (native_router, warm_router) = routers(&warm_conf, &warm);
    let (_, fresh_router) = routers(&fresh_conf, &fresh);
    for path in ["/item/1", "/basket/1", "/"] {
        let v = req.view(path);
        assert_eq!(native_router.route(&v), warm_router.route(&v), "{path}");
        assert_eq!(native_router.route(&v), fresh_router.route(&v), "{path}");
    }
    assert_eq!(
        warm_router.route(&req.view("/item/1")),
        RouteDecision::Backend(0)
    );

    let mut g = c.benchmark_group("route");
    for (name, router) in [
        ("native", &native_router),
        ("plugin_warm", &warm_router),
        ("plugin_fresh", &fresh_router),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| black_box(router.route(black_box(&req.view("/item/1")))))
        });
    }
    g.finish();

    let (native_balancer, warm_balancer) = balancers(&warm_conf, &warm);
    let (_, fresh_balancer) = balancers(&fresh_conf, &fresh);
    let view = req.view("/");
    let ctx = PickContext {
        req: &view,
        tried: &[],
    };
    assert!(warm_balancer.pick(&ctx).is_some() && fresh_balancer.pick(&ctx).is_some());
    let mut g = c.benchmark_group("pick");
    for (name, balancer) in [
        ("native_roundrobin", &native_balancer),
        ("plugin_warm", &warm_balancer),
        ("plugin_fresh", &fresh_balancer),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| black_box(balancer.pick(black_box(&ctx))))
        });
    }
    g.finish();

    let paths = warm.get("paths").unwrap().loaded();
    c.bench_function("instantiate", |b| {
        b.iter(|| paths.instantiate_once().unwrap())
    });

    // Hot swap: alternate two versions of the file; each reload compiles, links, makes a
    // trial instance and swaps. The compile cache is defeated by appending a custom section
    // with a counter (a wasm custom section at the end of a component is legal).
    let file = dir.path().join("swap.wasm");
    let original = std::fs::read(test_plugins::wasm("path-router")).unwrap();
    std::fs::write(&file, &original).unwrap();
    let text = format!(
        "[frontend.f]\nbind = \"127.0.0.1:0\"\ndefault_backend = \"b\"\nrouter = \"swap\"\n\
         [backend.b]\nservers = [{{ name = \"s\", addr = \"127.0.0.1:1\" }}]\n\
         [plugin.swap]\npath = \"{}\"\n",
        file.display()
    );
    let (swap_conf, _) = wasp::config::load_str(&text, &dir.path().join("swap.toml"));
    let plugins = Plugins::new();
    let set = plugins.prepare(&swap_conf.unwrap()).unwrap();
    plugins.commit(&set);
    let mut n: u32 = 0;
    let mut g = c.benchmark_group("hot_swap");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    g.bench_function("reload_changed_file", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let mut bytes = original.clone();
                bytes.extend_from_slice(&custom_section("wasp-bench", &n.to_le_bytes()));
                std::fs::write(&file, &bytes).unwrap();
                let started = Instant::now();
                let r = plugins.reload("swap").unwrap();
                total += started.elapsed();
                assert!(matches!(r, wasp::plugin::Reloaded::Swapped { .. }));
            }
            total
        })
    });
    g.finish();
}

/// A wasm custom section: id 0, size, name, payload.
fn custom_section(name: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    leb(&mut body, name.len() as u32);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    let mut out = vec![0u8];
    leb(&mut out, body.len() as u32);
    out.extend_from_slice(&body);
    out
}

fn leb(out: &mut Vec<u8>, mut v: u32) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// How long a call that loops forever costs with `timeout = "5ms"`: 50 calls through the
/// router (each interrupted, then the fallback decides), printed as min / median / p90 / max.
fn looping(_c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[frontend.f]\nbind = \"127.0.0.1:0\"\ndefault_backend = \"b\"\nrouter = \"loop\"\n\
         [backend.b]\nservers = [{{ name = \"s\", addr = \"127.0.0.1:1\" }}]\n\
         [plugin.loop]\npath = \"{}\"\ntimeout = \"5ms\"\n",
        test_plugins::wasm("looper").display()
    );
    let (config, report) = wasp::config::load_str(&text, &dir.path().join("loop.toml"));
    let config = config.unwrap_or_else(|| panic!("{}", report.render()));
    let set = Plugins::new().prepare(&config).unwrap();
    let (_, router) = {
        let index = [("b".to_owned(), 0)].into_iter().collect();
        let r = build_router(&config.frontends[0], &index, &set).unwrap();
        ((), r)
    };
    let req = Req::new();
    let view = req.view("/fault");
    let mut took: Vec<Duration> = (0..50)
        .map(|_| {
            let started = Instant::now();
            assert_eq!(router.route(&view), RouteDecision::Backend(0), "fallback");
            started.elapsed()
        })
        .collect();
    took.sort();
    println!(
        "looping plugin, timeout 5ms, 50 calls: min {:?}, median {:?}, p90 {:?}, max {:?}",
        took[0], took[25], took[45], took[49]
    );
}

criterion_group!(benches, bench, looping);
criterion_main!(benches);
