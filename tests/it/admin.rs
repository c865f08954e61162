//! The admin listener: stats page and JSON, Prometheus metrics, the runtime API (drain, maint,
//! weight, add/remove servers, reload), /healthz, auth, `wasp ctl`, and the stats page in a
//! real headless browser.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::support::{HeldPort, Proxy, Servers, assert_closed, client, get, send, server_name};

const WAIT: Duration = Duration::from_secs(10);

/// The running proxy's admin address.
async fn admin(proxy: &Proxy) -> SocketAddr {
    proxy.runtime.admin_addr().await.expect("admin listener")
}

/// Calls the admin API; returns status and body text.
async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    let payload = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    let (status, _, text) = send(&client(), req.body(Full::new(payload)).unwrap()).await;
    (status, text)
}

/// A PATCH to the runtime API with the JSON `body`.
async fn patch(addr: SocketAddr, path: &str, body: Value) -> (StatusCode, String) {
    call(addr, Method::PATCH, path, Some(body)).await
}

async fn stats(addr: SocketAddr) -> Value {
    let (status, text) = call(addr, Method::GET, "/stats.json", None).await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn server<'a>(stats: &'a Value, backend: &str, name: &str) -> &'a Value {
    stats["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == backend)
        .and_then(|b| {
            b["servers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == name)
        })
        .unwrap_or_else(|| panic!("no server {backend}/{name} in {stats}"))
}

/// Polls `/stats.json` until `cond` holds.
async fn wait_stats(addr: SocketAddr, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let start = std::time::Instant::now();
    loop {
        let s = stats(addr).await;
        if cond(&s) {
            return s;
        }
        assert!(start.elapsed() < WAIT, "{what}: not within {WAIT:?}: {s:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn shares(proxy: &Proxy, path: &str, requests: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..requests {
        let (status, _, body) = get(&proxy.url(path)).await;
        assert_eq!(status, 200, "{body}");
        *seen.entry(server_name(&body).to_owned()).or_insert(0) += 1;
    }
    seen
}

/// The admin listener, a frontend `web` and a backend `app` with the one server `name` at
/// `addr`.
fn one_server(name: &str, addr: SocketAddr) -> String {
    format!(
        r#"
        [global]
        access_log = false
        [admin]
        bind = "127.0.0.1:0"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        [backend.app]
        servers = [ {{ name = "{name}", addr = "{addr}" }} ]
        "#
    )
}

fn two_servers(a: SocketAddr, b: SocketAddr, extra: &str) -> String {
    format!(
        r#"
        [global]
        access_log = false
        [admin]
        bind = "127.0.0.1:0"
        {extra}
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        [backend.app]
        servers = [ {{ name = "a", addr = "{a}" }}, {{ name = "b", addr = "{b}" }} ]
        "#
    )
}

/// Lab 2's shape with health checks fast enough for a test.
fn lab(n1: SocketAddr, n2: SocketAddr, n3: SocketAddr, n4: SocketAddr) -> String {
    format!(
        r#"
        [global]
        access_log = false
        [admin]
        bind = "127.0.0.1:0"
        refresh = "10s"
        [frontend.myfrontend]
        bind = "127.0.0.1:0"
        default_backend = "webservers"
        acl = {{ is_item = "path_beg /item", is_basket = "path_beg /basket" }}
        use_backend = [
          {{ backend = "items", if = "is_item" }},
          {{ backend = "baskets", if = "is_basket" }},
        ]
        [backend.webservers]
        check = {{ interval = "100ms", fall = 1, rise = 1 }}
        servers = [
          {{ name = "s1", addr = "{n1}", check = true }},
          {{ name = "s2", addr = "{n2}", check = true }},
          {{ name = "s3", addr = "{n3}", check = true }},
        ]
        [backend.items]
        check = {{ interval = "100ms", fall = 1, rise = 1 }}
        servers = [
          {{ name = "s1", addr = "{n1}", check = true }},
          {{ name = "s2", addr = "{n2}", check = true }},
        ]
        [backend.baskets]
        check = {{ interval = "100ms", fall = 1, rise = 1 }}
        servers = [
          {{ name = "s3", addr = "{n3}", check = true }},
          {{ name = "s4", addr = "{n4}", check = true }},
        ]
        "#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_page_shows_the_lab_and_a_killed_server_going_down() {
    let servers = Servers::new();
    let mut node1 = servers.killable_echo("node1").await;
    let (n2, n3, n4) = (
        servers.echo("node2").await,
        servers.echo("node3").await,
        servers.echo("node4").await,
    );
    let proxy = Proxy::start(&lab(node1.addr, n2, n3, n4)).await;
    let addr = admin(&proxy).await;
    let s = wait_stats(addr, "first checks", |s| {
        server(s, "items", "s1")["last_check"]["passed"] == true
    })
    .await;
    assert_eq!(server(&s, "items", "s1")["status"], "UP");

    node1.kill().await;
    let s = wait_stats(addr, "node1 down in both backends", |s| {
        server(s, "items", "s1")["status"] == "DOWN"
            && server(s, "webservers", "s1")["status"] == "DOWN"
    })
    .await;
    assert_eq!(
        server(&s, "items", "s1")["last_check"]["result"],
        "layer4 connection refused"
    );
    assert_eq!(server(&s, "items", "s2")["status"], "UP");
    assert_eq!(server(&s, "baskets", "s4")["status"], "UP");

    let (status, headers, page) = get(&format!("http://{addr}/")).await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        page.contains("<meta http-equiv=\"refresh\" content=\"10\">"),
        "{page}"
    );
    for name in [
        "myfrontend",
        "webservers",
        "items",
        "baskets",
        "s1",
        "s2",
        "s3",
        "s4",
    ] {
        assert!(page.contains(name), "{name} missing");
    }
    assert!(page.contains("<span class=\"st DOWN\">DOWN</span>"));
    assert!(page.contains("layer4 connection refused"));
    assert!(!page.contains("<script"), "no script, no external assets");
    assert!(!page.contains("src=\"http"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_with_a_prometheus_parser_and_count_the_traffic() {
    let servers = Servers::new();
    let (a, b) = (servers.echo("a").await, servers.echo("b").await);
    let dead = servers.closed_port().await;
    let proxy = Proxy::start(&format!(
        r#"
        [global]
        access_log = false
        maxconn = 777
        [admin]
        bind = "127.0.0.1:0"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        acl = {{ is_dead = "path_beg /dead" }}
        use_backend = [{{ backend = "dead", if = "is_dead" }}]
        [backend.app]
        servers = [ {{ name = "a", addr = "{a}" }}, {{ name = "b", addr = "{b}" }} ]
        [backend.dead]
        retries = 1
        servers = [ {{ name = "d", addr = "{dead}" }} ]
        "#
    ))
    .await;
    let addr = admin(&proxy).await;
    for _ in 0..30 {
        assert_eq!(get(&proxy.url("/")).await.0, 200);
    }
    for _ in 0..4 {
        assert_eq!(get(&proxy.url("/dead")).await.0, 503);
    }

    // Counted when each response ends, which may trail the client's read by a moment.
    let start = std::time::Instant::now();
    let (text, metrics) = loop {
        let (status, text) = call(addr, Method::GET, "/metrics", None).await;
        assert_eq!(status, 200);
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition format");
        let m = Metrics(scrape);
        if m.value("wasp_frontend_requests_total", &[("frontend", "web")]) == 34.0 {
            break (text, m);
        }
        assert!(start.elapsed() < WAIT, "counters never reached 34:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let m = &metrics;
    assert_eq!(
        m.value(
            "wasp_frontend_responses_total",
            &[("frontend", "web"), ("code", "2xx")]
        ),
        30.0
    );
    assert_eq!(
        m.value(
            "wasp_frontend_responses_total",
            &[("frontend", "web"), ("code", "5xx")]
        ),
        4.0
    );
    assert_eq!(
        m.value("wasp_backend_requests_total", &[("backend", "app")]),
        30.0
    );
    assert_eq!(
        m.value(
            "wasp_server_requests_total",
            &[("backend", "app"), ("server", "a")]
        ),
        15.0
    );
    assert_eq!(
        m.value(
            "wasp_server_responses_total",
            &[("backend", "app"), ("server", "b"), ("code", "2xx")]
        ),
        15.0
    );
    assert_eq!(
        m.value(
            "wasp_backend_responses_total",
            &[("backend", "dead"), ("code", "5xx")]
        ),
        4.0
    );
    // Each /dead request: a failed connect, one retry, another failed connect.
    assert_eq!(
        m.value("wasp_backend_retries_total", &[("backend", "dead")]),
        4.0
    );
    assert_eq!(
        m.value(
            "wasp_server_connect_failures_total",
            &[("backend", "dead"), ("server", "d")]
        ),
        8.0
    );
    assert_eq!(
        m.value("wasp_server_up", &[("backend", "app"), ("server", "a")]),
        1.0
    );
    assert_eq!(
        m.value(
            "wasp_server_state",
            &[("backend", "app"), ("server", "a"), ("state", "UP")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "wasp_frontend_connections_accepted_total",
            &[("frontend", "web")]
        ),
        34.0
    );
    assert!(m.value("wasp_process_resident_memory_bytes", &[]) > 1e6);
    assert!(m.value("wasp_open_connections", &[]) >= 0.0);
    assert_eq!(m.value("wasp_maxconn", &[]), 777.0);
    assert_eq!(stats(addr).await["process"]["maxconn"], 777);
    // The latency histogram counts every timed response of the backend.
    let buckets = m.histogram("wasp_backend_response_time_seconds", &[("backend", "app")]);
    assert_eq!(buckets.len(), wasp::counters::BUCKETS);
    assert_eq!(
        buckets.last().map(|b| b.count),
        Some(30.0),
        "+Inf bucket: {text}"
    );
    assert_eq!(
        m.value(
            "wasp_backend_response_time_seconds_count",
            &[("backend", "app")]
        ),
        30.0
    );
    let body_bytes = m.value("wasp_backend_bytes_out_total", &[("backend", "app")]);
    assert!(
        body_bytes > 30.0 * 10.0,
        "echo bodies counted: {body_bytes}"
    );
}

/// A parsed scrape with lookups by labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frontend_at_its_maxconn_shows_full_with_its_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let servers = Servers::new();
    let a = servers.echo("a").await;
    let proxy = Proxy::start(&format!(
        r#"
        [global]
        access_log = false
        [admin]
        bind = "127.0.0.1:0"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        maxconn = 1
        timeout = {{ client = "300s", http_keep_alive = "300s" }}
        [frontend.other]
        bind = "127.0.0.1:0"
        default_backend = "app"
        [backend.app]
        servers = [ {{ name = "a", addr = "{a}" }} ]
        "#
    ))
    .await;
    let addr = admin(&proxy).await;
    let frontend = |s: &Value, name: &str| {
        s["frontends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no frontend {name} in {s}"))
    };
    let s = stats(addr).await;
    assert_eq!(frontend(&s, "web")["status"], "OPEN");
    assert_eq!(frontend(&s, "web")["maxconn"], 1);
    assert_eq!(frontend(&s, "other")["maxconn"], Value::Null);

    let mut tcp = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0; 12];
    tcp.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let s = wait_stats(addr, "web full", |s| frontend(s, "web")["status"] == "FULL").await;
    assert_eq!(frontend(&s, "web")["sessions"]["current"], 1);
    assert_eq!(frontend(&s, "other")["status"], "OPEN");

    let (status, text) = call(addr, Method::GET, "/metrics", None).await;
    assert_eq!(status, 200);
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let m = Metrics(prometheus_parse::Scrape::parse(lines).expect("valid exposition format"));
    assert_eq!(
        m.value("wasp_frontend_connections_limit", &[("frontend", "web")]),
        1.0
    );
    assert!(
        !text.contains("wasp_frontend_connections_limit{frontend=\"other\"}"),
        "a frontend without maxconn has no limit sample:\n{text}"
    );
    let html = get(&format!("http://{addr}/")).await.2;
    assert!(html.contains("st FULL"), "{html}");

    drop(tcp);
    wait_stats(addr, "web open again", |s| {
        frontend(s, "web")["status"] == "OPEN"
    })
    .await;
}

/// The process's open connections count those of a frontend a reload renamed (whose own
/// count starts again under the new name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_outlive_a_reload_that_renames_their_frontend() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let servers = Servers::new();
    let a = servers.echo("a").await;
    let held = HeldPort::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = held.addr();
    let toml = |name: &str| {
        format!(
            r#"
            [global]
            access_log = false
            [admin]
            bind = "127.0.0.1:0"
            [frontend.{name}]
            bind = "{addr}"
            default_backend = "app"
            timeout = {{ client = "300s", http_keep_alive = "300s" }}
            [backend.app]
            servers = [ {{ name = "a", addr = "{a}" }} ]
            "#
        )
    };
    let proxy = Proxy::start(&toml("alpha")).await;
    drop(held);
    let admin_addr = admin(&proxy).await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0; 12];
    tcp.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    wait_stats(admin_addr, "one connection", |s| {
        s["process"]["connections"] == 1
    })
    .await;
    std::fs::write(&proxy.path, toml("beta")).unwrap();
    proxy.runtime.reload().await.expect("reload");
    let s = stats(admin_addr).await;
    assert_eq!(s["frontends"][0]["name"], "beta");
    assert_eq!(s["frontends"][0]["sessions"]["current"], 0, "{s}");
    assert_eq!(
        s["process"]["connections"], 1,
        "the open one still counts: {s}"
    );
    drop(tcp);
    wait_stats(admin_addr, "closed", |s| s["process"]["connections"] == 0).await;
}

struct Metrics(prometheus_parse::Scrape);

impl Metrics {
    fn sample(&self, name: &str, labels: &[(&str, &str)]) -> &prometheus_parse::Sample {
        self.0
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && labels.len() == s.labels.iter().count()
                    && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match &self.sample(name, labels).value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name} is not a number: {other:?}"),
        }
    }

    fn histogram(
        &self,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Vec<prometheus_parse::HistogramCount> {
        match &self.sample(name, labels).value {
            prometheus_parse::Value::Histogram(buckets) => buckets.clone(),
            other => panic!("{name} is not a histogram: {other:?}"),
        }
    }
}

/// As HAProxy counts sessions: a request is counted by its frontend, backend and server as it
/// goes through them, its response when it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_is_counted_everywhere_it_went_and_its_response_when_it_ends() {
    let servers = Servers::new();
    let (g, mut arrived, gate) = servers.gated("g").await;
    let proxy = Proxy::start(&one_server("g", g)).await;
    let addr = admin(&proxy).await;
    let url = proxy.url("/held");
    let held = tokio::spawn(async move { get(&url).await });
    arrived.recv().await.expect("the request reaches g");

    // (requests, 2xx responses) of the frontend, the backend and the server; the backend's and
    // the server's session totals.
    let counts = |s: &Value| {
        let frontend = &s["frontends"][0]["traffic"];
        let backend = &s["backends"][0];
        let server = server(s, "app", "g");
        (
            [frontend, &backend["traffic"], &server["traffic"]]
                .map(|t| (t["requests"].as_u64(), t["responses"]["2xx"].as_u64())),
            backend["sessions"]["total"].as_u64(),
            server["sessions"]["total"].as_u64(),
        )
    };
    let in_flight = stats(addr).await;
    assert_eq!(
        counts(&in_flight),
        ([(Some(1), Some(0)); 3], Some(1), Some(1)),
        "{in_flight:#}"
    );
    gate.open(1);
    let (status, _, _) = held.await.unwrap();
    assert_eq!(status, 200);
    let done = wait_stats(addr, "the response counted", |s| {
        s["frontends"][0]["traffic"]["responses"]["2xx"] == 1
    })
    .await;
    assert_eq!(
        counts(&done),
        ([(Some(1), Some(1)); 3], Some(1), Some(1)),
        "{done:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_in_flight_requests_finish_and_sends_no_new_ones() {
    let servers = Servers::new();
    let (g, mut arrived, gate) = servers.gated("g").await;
    let e = servers.echo("e").await;
    let proxy = Proxy::start(&format!(
        r#"
        [global]
        access_log = false
        [admin]
        bind = "127.0.0.1:0"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        [backend.app]
        servers = [ {{ name = "g", addr = "{g}" }}, {{ name = "e", addr = "{e}" }} ]
        "#
    ))
    .await;
    let addr = admin(&proxy).await;
    let url = proxy.url("/held");
    let held = tokio::spawn(async move { get(&url).await });
    arrived.recv().await.expect("the first request reaches g");

    let (status, body) = patch(addr, "/api/servers/app/g", json!({"state": "drain"})).await;
    assert_eq!(status, 200, "{body}");
    let view: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            view["status"].as_str(),
            view["sessions"]["current"].as_u64()
        ),
        (Some("DRAIN"), Some(1))
    );

    let seen = shares(&proxy, "/", 20).await;
    assert_eq!(
        seen.get("e"),
        Some(&20),
        "no new request to a draining server: {seen:?}"
    );
    gate.open(1);
    let (status, _, body) = held.await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "g\nreleased\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maint_stops_traffic_at_once_and_ready_brings_it_back() {
    let servers = Servers::new();
    let (a, b) = (servers.echo("a").await, servers.echo("b").await);
    let proxy = Proxy::start(&two_servers(a, b, "")).await;
    let addr = admin(&proxy).await;
    let (status, _) = patch(addr, "/api/servers/app/a", json!({"state": "maint"})).await;
    assert_eq!(status, 200);
    assert_eq!(shares(&proxy, "/", 20).await.get("b"), Some(&20));
    let s = stats(addr).await;
    assert_eq!(server(&s, "app", "a")["status"], "MAINT");
    patch(addr, "/api/servers/app/a", json!({"state": "ready"})).await;
    assert_eq!(shares(&proxy, "/", 20).await.get("a"), Some(&10));

    let (status, body) = patch(addr, "/api/servers/app/a", json!({"state": "asleep"})).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = patch(addr, "/api/servers/app/zz", json!({"state": "drain"})).await;
    assert_eq!(status, 404);
    // An unknown server is a 404 before its body is looked at; a path no page has, a 404.
    let (status, _) = patch(addr, "/api/servers/app/zz", json!({})).await;
    assert_eq!(status, 404);
    let (status, _) = patch(addr, "/api/servers/app/a/extra", json!({"state": "drain"})).await;
    assert_eq!(status, 404);
    let (status, _) = patch(addr, "/api/servers/app/a", json!({"weight": 999})).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_changes_shift_the_split() {
    let servers = Servers::new();
    let (a, b) = (servers.echo("a").await, servers.echo("b").await);
    let proxy = Proxy::start(&two_servers(a, b, "")).await;
    let addr = admin(&proxy).await;
    assert_eq!(shares(&proxy, "/", 40).await.get("a"), Some(&20));
    let (status, _) = patch(addr, "/api/servers/app/b", json!({"weight": 3})).await;
    assert_eq!(status, 200);
    let seen = shares(&proxy, "/", 400).await;
    let b_share = seen.get("b").copied().unwrap_or(0);
    assert!(
        (298..=302).contains(&b_share),
        "weights 1:3 -> b ~300 of 400: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_added_and_removed_under_load_fail_no_request() {
    let servers = Servers::new();
    let (a, b, c) = (
        servers.echo("a").await,
        servers.echo("b").await,
        servers.echo("c").await,
    );
    let proxy = Proxy::start(&one_server("a", a)).await;
    let addr = admin(&proxy).await;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(HashMap::<String, usize>::new()));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (stop, failures, done, seen) =
            (stop.clone(), failures.clone(), done.clone(), seen.clone());
        let url = proxy.url("/");
        load.push(tokio::spawn(async move {
            let client = client();
            while !stop.load(Ordering::Relaxed) {
                let req = Request::get(&url).body(Full::new(Bytes::new())).unwrap();
                match client.request(req).await {
                    Ok(resp) if resp.status() == 200 => {
                        let body = http_body_util::BodyExt::collect(resp.into_body()).await;
                        match body {
                            Ok(b) => {
                                let text = String::from_utf8_lossy(&b.to_bytes()).into_owned();
                                *seen
                                    .lock()
                                    .unwrap()
                                    .entry(server_name(&text).to_owned())
                                    .or_insert(0) += 1;
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let served = |n: &str| seen.lock().unwrap().get(n).copied().unwrap_or(0);
    let pause = || tokio::time::sleep(Duration::from_millis(150));
    pause().await;

    let (status, body) = call(
        addr,
        Method::POST,
        "/api/servers/app",
        Some(json!({"name": "b", "addr": b.to_string()})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = call(
        addr,
        Method::POST,
        "/api/servers/app",
        Some(json!({"name": "c", "addr": c.to_string(), "weight": 2})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = call(
        addr,
        Method::POST,
        "/api/servers/app",
        Some(json!({"name": "c", "addr": c.to_string()})),
    )
    .await;
    assert_eq!(status, 409, "duplicate name: {body}");
    pause().await;
    assert!(
        served("b") > 0 && served("c") > 0,
        "added servers take traffic"
    );

    let (status, body) = call(addr, Method::DELETE, "/api/servers/app/a", None).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = call(addr, Method::DELETE, "/api/servers/app/b", None).await;
    assert_eq!(status, 200);
    let a_after = served("a");
    pause().await;
    let (status, _) = call(addr, Method::DELETE, "/api/servers/app/c", None).await;
    assert_eq!(status, 409, "the last server stays");
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no failed request");
    assert!(done.load(Ordering::Relaxed) > 100, "load ran");
    assert!(
        served("a") <= a_after + 8,
        "a removed: at most the in-flight ones finish there"
    );

    let s = stats(addr).await;
    let names: Vec<&str> = s["backends"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["c"]);

    // A reload of the unchanged file keeps the run-time changes.
    let (status, _) = call(addr, Method::POST, "/api/reload", None).await;
    assert_eq!(status, 200);
    assert_eq!(shares(&proxy, "/", 5).await.get("c"), Some(&5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_through_the_api_reports_diagnostics_and_keeps_serving() {
    let servers = Servers::new();
    let (a, b) = (servers.echo("a").await, servers.echo("b").await);
    let good = two_servers(a, b, "");
    let proxy = Proxy::start(&good).await;
    let addr = admin(&proxy).await;
    // Admin overrides made before the reload survive it.
    patch(
        addr,
        "/api/servers/app/a",
        json!({"state": "drain", "weight": 7}),
    )
    .await;

    std::fs::write(
        &proxy.path,
        good.replace("roundrobin", "x")
            .replace("default_backend = \"app\"", "default_backend = \"ap\""),
    )
    .unwrap();
    let (status, body) = call(addr, Method::POST, "/api/reload", None).await;
    assert_eq!(status, 422, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let d = &v["diagnostics"][0];
    assert_eq!(d["severity"], "error");
    assert_eq!(d["message"], "unknown backend \"ap\"");
    assert_eq!(d["path"], "frontend.web.default_backend");
    assert!(d["line"].as_u64().unwrap() > 0 && d["col"].as_u64().unwrap() > 0);
    assert!(d["text"].as_str().unwrap().contains("wasp.toml:"), "{d}");
    assert_eq!(get(&proxy.url("/")).await.0, 200, "still serving");

    std::fs::write(
        &proxy.path,
        good.replace("access_log = false", "access_log = false\ngrace = \"1s\""),
    )
    .unwrap();
    let (status, body) = call(addr, Method::POST, "/api/reload", None).await;
    assert_eq!(status, 200, "{body}");
    let s = stats(addr).await;
    let a = server(&s, "app", "a");
    assert_eq!(
        (a["status"].as_str(), a["weight"].as_u64()),
        (Some("DRAIN"), Some(7))
    );
}

/// A reload whose new plugin cannot be loaded is answered as a config with errors: 422 with
/// the diagnostic `wasp check` gives, at the plugin's `path` key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_a_broken_plugin_answers_with_its_diagnostic() {
    let servers = Servers::new();
    let (a, b) = (servers.echo("a").await, servers.echo("b").await);
    let good = two_servers(a, b, "");
    let proxy = Proxy::start(&good).await;
    let addr = admin(&proxy).await;
    let broken = good.replace(
        "default_backend = \"app\"",
        "default_backend = \"app\"\n        router = \"junk\"",
    ) + "\n[plugin.junk]\npath = \"wasp.toml\"\n";
    std::fs::write(&proxy.path, &broken).unwrap();
    let (status, body) = call(addr, Method::POST, "/api/reload", None).await;
    assert_eq!(status, 422, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let d = &v["diagnostics"][0];
    assert_eq!(d["path"], "plugin.junk.path", "{body}");
    let line = broken
        .lines()
        .position(|l| l.starts_with("path = "))
        .unwrap()
        + 1;
    assert_eq!(
        (d["line"].as_u64(), d["col"].as_u64()),
        (Some(line as u64), Some(8))
    );
    let message = d["message"].as_str().unwrap();
    assert!(
        message.ends_with("wasp.toml is not a wasm component (no \\0asm header)"),
        "{message}"
    );
    assert_eq!(get(&proxy.url("/")).await.0, 200, "still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_guards_everything_but_healthz() {
    let servers = Servers::new();
    let (a, b) = (servers.echo("a").await, servers.echo("b").await);
    let proxy = Proxy::start(&two_servers(
        a,
        b,
        r#"auth = { user = "ops", password = "pw:1" }"#,
    ))
    .await;
    let addr = admin(&proxy).await;
    let (status, _) = call(addr, Method::GET, "/stats.json", None).await;
    assert_eq!(status, 401);
    let (status, _) = call(addr, Method::GET, "/healthz", None).await;
    assert_eq!(status, 200);
    let req = Request::get(format!("http://{addr}/api/servers"))
        .header(
            "authorization",
            wasp::admin::auth::header_value("ops", "pw:1"),
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, body) = send(&client(), req).await;
    assert_eq!(status, 200, "{body}");
    let req = Request::get(format!("http://{addr}/api/servers"))
        .header(
            "authorization",
            wasp::admin::auth::header_value("ops", "pw:2"),
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&client(), req).await.0, 401);
}

#[test]
fn a_non_loopback_admin_bind_without_auth_is_refused() {
    let (config, report) = wasp::config::load_str(
        "[admin]\nbind = \"0.0.0.0:8404\"\n",
        std::path::Path::new("wasp.toml"),
    );
    assert!(config.is_none());
    assert!(
        report.render().contains("wasp.toml:2:8: error: admin.bind: admin listener on 0.0.0.0:8404 is reachable from other hosts without auth"),
        "{}",
        report.render()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_503_while_draining() {
    let servers = Servers::new();
    let (g, mut arrived, gate) = servers.gated("g").await;
    let proxy = Proxy::start(&one_server("g", g)).await;
    let addr = admin(&proxy).await;
    assert_eq!(call(addr, Method::GET, "/healthz", None).await.0, 200);
    let url = proxy.url("/");
    let held = tokio::spawn(async move { get(&url).await });
    arrived.recv().await.unwrap();
    let Proxy { runtime, .. } = proxy;
    let stopping = tokio::spawn(async move { runtime.shutdown(WAIT).await });
    let start = std::time::Instant::now();
    loop {
        let (status, body) = call(addr, Method::GET, "/healthz", None).await;
        if status == 503 {
            assert_eq!(body, "draining\n");
            break;
        }
        assert!(start.elapsed() < WAIT, "healthz never turned 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gate.open(1);
    assert_eq!(held.await.unwrap().0, 200, "the in-flight request finished");
    stopping.await.unwrap();
    assert_closed(addr, "admin closed last").await;
}

/// Runs `wasp ctl ARGS` (the real binary) and returns (exit code, stdout, stderr).
async fn ctl(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_wasp"))
            .arg("ctl")
            .args(&args)
            .env_remove("WASP_ADMIN")
            .output()
            .expect("run wasp ctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_lists_changes_and_reloads_over_tcp_and_a_unix_socket() {
    let servers = Servers::new();
    let (a, b, c) = (
        servers.echo("a").await,
        servers.echo("b").await,
        servers.echo("c").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let proxy = Proxy::start(&two_servers(
        a,
        b,
        &format!("unix = \"{}\"\nmode = \"600\"", socket.display()),
    ))
    .await;
    let addr = admin(&proxy).await.to_string();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let (code, out, err) = ctl(args(&["--admin", &addr, "servers"])).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("SERVER") && lines[0].contains("STATUS"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("app/a") && lines[1].contains("UP"),
        "{out}"
    );

    let (code, out, err) = ctl(args(&[
        "--admin", &addr, "set", "server", "app/a", "state", "drain",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("DRAIN"), "{out}");
    let sock = socket.display().to_string();
    let (code, _, err) = ctl(args(&[
        "--unix", &sock, "set", "server", "app/b", "weight", "5",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = ctl(args(&["--unix", &sock, "--json", "servers"])).await;
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).expect("--json prints the API's JSON");
    assert_eq!(
        (v[0]["status"].as_str(), v[1]["weight"].as_u64()),
        (Some("DRAIN"), Some(5))
    );

    let (code, _, err) = ctl(args(&[
        "--admin",
        &addr,
        "add",
        "server",
        "app",
        "c",
        &c.to_string(),
        "--weight",
        "2",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = ctl(args(&["--admin", &addr, "backends"])).await;
    assert_eq!(code, 0);
    assert!(
        out.lines().nth(1).unwrap().contains("2/3"),
        "a drains; b and c usable: {out}"
    );
    let (code, _, _) = ctl(args(&["--admin", &addr, "del", "server", "app/c"])).await;
    assert_eq!(code, 0);
    let (code, out, _) = ctl(args(&["--admin", &addr, "frontends"])).await;
    assert!(code == 0 && out.contains("web"), "{out}");
    let (code, out, _) = ctl(args(&["--admin", &addr, "health"])).await;
    assert_eq!((code, out.as_str()), (0, "ok\n"));

    std::fs::write(
        &proxy.path,
        "[frontend.web]\nbind = \"127.0.0.1:0\"\ndefault_backend = \"nope\"\n",
    )
    .unwrap();
    let (code, _, err) = ctl(args(&["--admin", &addr, "reload"])).await;
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "wasp.toml:3:19: error: frontend.web.default_backend: unknown backend \"nope\""
        ),
        "{err}"
    );
    let (code, _, err) = ctl(args(&["--admin", "127.0.0.1:1", "servers"])).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot reach the admin API at 127.0.0.1:1"),
        "{err}"
    );
}

/// The stats page of a lab-like setup with a killed server, rendered by Debian's chromium
/// (installed by the script when missing) at a phone's size; the screenshot is kept in
/// `target/stats-page.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_page_renders_in_headless_chromium() {
    let servers = Servers::new();
    let mut node1 = servers.killable_echo("node1").await;
    let (n2, n3, n4) = (
        servers.echo("node2").await,
        servers.echo("node3").await,
        servers.echo("node4").await,
    );
    let proxy = Proxy::start(&lab(node1.addr, n2, n3, n4)).await;
    let addr = admin(&proxy).await;
    for path in ["/item/1", "/basket/1", "/", "/item/2"] {
        assert_eq!(get(&proxy.url(path)).await.0, 200);
    }
    node1.kill().await;
    wait_stats(addr, "node1 down", |s| {
        server(s, "items", "s1")["status"] == "DOWN"
    })
    .await;

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/browser/screenshot.sh");
    let out = root.join("target/stats-page.png");
    let _ = std::fs::remove_file(&out);
    let url = format!("http://{addr}/");
    let (script2, out2) = (script.clone(), out.clone());
    let result = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg(&script2)
            .arg(&url)
            .arg(&out2)
            .output()
    })
    .await
    .unwrap()
    .expect("run tests/browser/screenshot.sh");
    assert!(
        result.status.success(),
        "the browser check failed; run it by hand with\n  bash {} http://{addr}/ {}\nstdout:\n{}\nstderr:\n{}",
        script.display(),
        out.display(),
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr),
    );
    let png = std::fs::read(&out).expect("screenshot written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (390, 844), "the phone-sized window");
    assert!(
        png.len() > 20_000,
        "a rendered page, not a blank one: {} bytes",
        png.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_and_closes_the_admin_listener() {
    let servers = Servers::new();
    let (a, b) = (servers.echo("a").await, servers.echo("b").await);
    let proxy = Proxy::start(&two_servers(a, b, "")).await;
    let old = admin(&proxy).await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    std::fs::write(
        &proxy.path,
        two_servers(a, b, &format!("unix = \"{}\"", socket.display())),
    )
    .unwrap();
    let (status, body) = call(old, Method::POST, "/api/reload", None).await;
    assert_eq!(
        status, 200,
        "answered on the old listener before it closed: {body}"
    );
    let new = admin(&proxy).await;
    assert_ne!(new, old);
    assert_eq!(call(new, Method::GET, "/healthz", None).await.0, 200);
    assert_closed(old, "old listener").await;
    assert!(socket.exists());

    std::fs::write(
        &proxy.path,
        two_servers(a, b, "").replace("[admin]\n        bind = \"127.0.0.1:0\"", ""),
    )
    .unwrap();
    proxy
        .runtime
        .reload()
        .await
        .expect("reload without [admin]");
    assert!(proxy.runtime.admin_addr().await.is_none());
    assert!(!socket.exists(), "socket file removed");
}
