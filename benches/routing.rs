//! Routing decision cost: nanoseconds per `AclRouter::route()`.
//!
//! (a) the reference lab 2 (two `path_beg` rules, a default backend): a request matching the
//!     first rule, the second, and one falling through to the default;
//! (b) a 100-rule frontend mixing path_beg, hdr(host), host, path_reg, method and src: a
//!     request matching rule 98 and one matching nothing.
//!
//! Requests carry a realistic header map (8 headers). Before measuring, every scenario is
//! checked to route where expected and to allocate nothing (a counting global allocator).
//!
//! Run: `cargo bench --bench routing` (`-- --quick` for a short run).

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use wasp::config::acl::{parse_acl, parse_condition};
use wasp::config::{Frontend, Mode, NamedAcl, Timeouts, UseBackend};
use wasp::routing::{AclRouter, RequestView, RouteDecision, Router};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{CountingAlloc, allocations_in};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// An owned request to borrow views from.
struct Req {
    method: Method,
    host: String,
    path: String,
    query: String,
    headers: HeaderMap,
    client: SocketAddr,
}

impl Req {
    fn new(method: Method, host: &str, path: &str, query: &str, client: &str) -> Self {
        let mut headers = HeaderMap::new();
        let mut add = |name: &'static str, value: &str| {
            headers.append(
                name,
                HeaderValue::from_str(value).expect("static test header"),
            );
        };
        add("host", host);
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
        add("x-request-id", "7d1c3b52-0f6e-4d8a-9a53-5b2c1e8f0d47");
        add("connection", "keep-alive");
        Req {
            method,
            host: host.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            headers,
            client: client.parse().expect("static test address"),
        }
    }

    fn view(&self) -> RequestView<'_> {
        RequestView {
            method: &self.method,
            scheme: "http",
            host: &self.host,
            path: &self.path,
            query: Some(&self.query),
            headers: &self.headers,
            client: self.client,
            local_port: 80,
            frontend: "myfrontend",
            sni: "",
        }
    }
}

fn frontend(acls: &[(String, String)], rules: &[(String, String)], default: &str) -> Frontend {
    Frontend {
        name: "myfrontend".into(),
        binds: vec![wasp::config::Bind {
            addr: "127.0.0.1:8080".parse().expect("static address"),
            tls: None,
            accept_proxy: None,
        }],
        redirect: None,
        mode: Mode::Http,
        acls: acls
            .iter()
            .map(|(name, text)| NamedAcl {
                name: name.clone(),
                spec: parse_acl(text).unwrap_or_else(|e| panic!("acl {text:?}: {e:?}")),
            })
            .collect(),
        rules: rules
            .iter()
            .map(|(backend, cond)| UseBackend {
                backend: backend.clone(),
                condition: parse_condition(cond).unwrap_or_else(|e| panic!("{cond:?}: {e:?}")),
                negate: false,
            })
            .collect(),
        default_backend: Some(default.into()),
        timeouts: Timeouts::default(),
        inspect_delay: std::time::Duration::from_secs(5),
        forwardfor: true,
        max_header_size: 64 * 1024,
        router: None,
        maxconn: None,
    }
}

fn build(frontend: &Frontend, backends: &[String]) -> AclRouter {
    AclRouter::build(frontend, |name| backends.iter().position(|b| b == name))
        .expect("valid frontend")
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// Lab 2: `is_item = path_beg /item`, `is_basket = path_beg /basket`, default `webservers`.
fn lab2() -> (AclRouter, Vec<String>) {
    let backends: Vec<String> = ["webservers", "items", "baskets"].map(String::from).into();
    let f = frontend(
        &pairs(&[
            ("is_item", "path_beg /item"),
            ("is_basket", "path_beg /basket"),
        ]),
        &pairs(&[("items", "is_item"), ("baskets", "is_basket")]),
        "webservers",
    );
    (build(&f, &backends), backends)
}

/// 100 rules, each with its own named ACLs, cycling through realistic kinds.
fn hundred_rules() -> (AclRouter, Vec<String>) {
    let mut acls = Vec::new();
    let mut rules = Vec::new();
    let mut backends = vec!["webservers".to_owned()];
    acls.push(("is_post".to_owned(), "method POST PUT".to_owned()));
    for i in 0..100 {
        let backend = format!("svc{i}");
        let cond = match i % 6 {
            0 => {
                acls.push((format!("p{i}"), format!("path_beg /svc{i}/ /v2/svc{i}/")));
                format!("p{i}")
            }
            1 => {
                acls.push((
                    format!("h{i}"),
                    format!("hdr(host) -i tenant{i}.example.com"),
                ));
                format!("h{i}")
            }
            2 => {
                acls.push((format!("d{i}"), format!("host_end .region{i}.example.net")));
                format!("d{i}")
            }
            3 => {
                acls.push((
                    format!("r{i}"),
                    format!(r"path_reg ^/api/v[0-9]+/res{i}/[0-9]+$"),
                ));
                format!("r{i}")
            }
            4 => {
                acls.push((format!("u{i}"), format!("path_beg /upload{i}")));
                format!("is_post u{i}")
            }
            _ => {
                acls.push((
                    format!("n{i}"),
                    format!("src 10.{i}.0.0/16 fd00:{i:x}::/32"),
                ));
                acls.push((format!("a{i}"), format!("path_beg /internal{i}")));
                format!("n{i} a{i} or n{i} {{ path_end .json }}")
            }
        };
        rules.push((backend.clone(), cond));
        backends.push(backend);
    }
    let f = frontend(&acls, &rules, "webservers");
    (build(&f, &backends), backends)
}

fn check(router: &AclRouter, req: &Req, expected: RouteDecision) {
    let view = req.view();
    assert_eq!(router.route(&view), expected, "{} {}", req.host, req.path);
    // Warm up lazily initialised regex caches, then prove the steady state allocates nothing.
    for _ in 0..3 {
        router.route(&view);
    }
    let allocations = allocations_in(|| {
        for _ in 0..100 {
            black_box(router.route(black_box(&view)));
        }
    });
    assert_eq!(
        allocations, 0,
        "route() allocated for {} {}",
        req.host, req.path
    );
}

fn bench_routing(c: &mut Criterion) {
    let get = |host: &str, path: &str, client: &str| Req::new(Method::GET, host, path, "", client);
    let backend = |backends: &[String], name: &str| {
        RouteDecision::Backend(
            backends
                .iter()
                .position(|b| b == name)
                .expect("known backend"),
        )
    };

    let (lab, backends) = lab2();
    let mut group = c.benchmark_group("lab2");
    for (name, path, expected) in [
        ("first_rule", "/item/42", "items"),
        ("second_rule", "/basket/7", "baskets"),
        ("default", "/index.html", "webservers"),
    ] {
        let req = get("localhost", path, "192.0.2.10:51000");
        check(&lab, &req, backend(&backends, expected));
        let view = req.view();
        group.bench_function(name, |b| b.iter(|| lab.route(black_box(&view))));
    }
    group.finish();

    let (big, backends) = hundred_rules();
    let mut group = c.benchmark_group("rules100");
    // Rule 98 (i % 6 == 2): host_end .region98.example.net.
    let late = get(
        "shop.region98.example.net",
        "/catalog/items/17",
        "[::ffff:192.0.2.10]:51000",
    );
    check(&big, &late, backend(&backends, "svc98"));
    let view = late.view();
    group.bench_function("match_late", |b| b.iter(|| big.route(black_box(&view))));
    let none = get("www.example.org", "/catalog/items/17", "192.0.2.10:51000");
    check(&big, &none, backend(&backends, "webservers"));
    let view = none.view();
    group.bench_function("no_match", |b| b.iter(|| big.route(black_box(&view))));
    group.finish();
}

criterion_group!(benches, bench_routing);
criterion_main!(benches);
