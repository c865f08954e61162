//! Wasm plugins through the proxy: each example plugin, faults under both `on_error`
//! policies, hot-swap under load, and `wasp check` on a plugin of the wrong world.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use crate::support::test_plugins::wasm;
use crate::support::{Proxy, Servers, body_server, client, get, send, server_name, wait_until};

/// A `[plugin.NAME]` section for the example or test plugin `crate_name`. Unless `extra` sets
/// one, the call timeout is generous: these tests judge answers, and a test machine busy with
/// other tests can stall a call for longer than the 5 ms default.
pub(crate) fn plugin(name: &str, crate_name: &str, extra: &str) -> String {
    let timeout = if extra.contains("timeout") {
        ""
    } else {
        "timeout = \"1s\"\n"
    };
    format!(
        "[plugin.{name}]\npath = \"{}\"\n{timeout}{extra}\n",
        wasm(crate_name).display()
    )
}

fn faults(stats: &wasp::plugin::registry::Stats) -> u64 {
    stats.faults.load(Ordering::Relaxed)
}

#[tokio::test]
async fn path_router_routes_lab2_from_its_config() {
    let servers = Servers::new();
    let mut n = Vec::new();
    for name in ["node1", "node2", "node3", "node4"] {
        n.push(servers.echo(name).await);
    }
    let proxy = Proxy::start(&format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "webservers"
        router = "paths"

        [backend.items]
        servers = [{{ name = "s1", addr = "{}" }}, {{ name = "s2", addr = "{}" }}]
        [backend.baskets]
        servers = [{{ name = "s3", addr = "{}" }}]
        [backend.webservers]
        servers = [{{ name = "s4", addr = "{}" }}]

        {}
        "#,
        n[0],
        n[1],
        n[2],
        n[3],
        plugin(
            "paths",
            "path-router",
            r#"config = { routes = "/item=items,/basket=baskets" }"#
        )
    ))
    .await;
    let mut items = BTreeSet::new();
    for _ in 0..4 {
        let (status, _, body) = get(&proxy.url("/item/1")).await;
        assert_eq!(status, 200);
        items.insert(server_name(&body).to_owned());
    }
    assert_eq!(items, BTreeSet::from(["node1".into(), "node2".into()]));
    let (_, _, body) = get(&proxy.url("/basket/7")).await;
    assert_eq!(server_name(&body), "node3");
    let (_, _, body) = get(&proxy.url("/other")).await;
    assert_eq!(server_name(&body), "node4", "defer: the default backend");
}

#[tokio::test]
async fn canary_takes_flagged_requests_and_a_sticky_share_of_clients() {
    let servers = Servers::new();
    let stable = servers.echo("stable").await;
    let canary = servers.echo("canary").await;
    let config = |percent: u32| {
        format!(
            r#"
            [frontend.web]
            bind = "127.0.0.1:0"
            default_backend = "stable"
            router = "canary"
            [backend.stable]
            servers = [{{ name = "s", addr = "{stable}" }}]
            [backend.canary]
            servers = [{{ name = "c", addr = "{canary}" }}]
            {}
            "#,
            plugin(
                "canary",
                "canary",
                &format!(
                    r#"config = {{ backend = "canary", percent = "{percent}", header = "x-canary" }}"#
                )
            )
        )
    };
    let proxy = Proxy::start(&config(0)).await;
    let (_, _, body) = get(&proxy.url("/")).await;
    assert_eq!(server_name(&body), "stable");
    let req = Request::get(proxy.url("/"))
        .header("x-canary", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (_, _, body) = send(&client(), req).await;
    assert_eq!(server_name(&body), "canary", "the header always selects");

    let all = Proxy::start(&config(100)).await;
    for _ in 0..3 {
        let (_, _, body) = get(&all.url("/")).await;
        assert_eq!(server_name(&body), "canary", "100%: every client");
    }
}

#[tokio::test]
async fn sticky_balancer_keeps_each_user_on_one_server_and_round_robins_the_rest() {
    let servers = Servers::new();
    let mut addrs = Vec::new();
    for name in ["a", "b", "c"] {
        addrs.push(servers.echo(name).await);
    }
    let proxy = Proxy::start(&format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        [backend.app]
        balance = "sticky"
        servers = [{{ name = "a", addr = "{}" }}, {{ name = "b", addr = "{}" }}, {{ name = "c", addr = "{}" }}]
        {}
        "#,
        addrs[0],
        addrs[1],
        addrs[2],
        plugin("sticky", "sticky-balancer", r#"config = { header = "x-user" }"#)
    ))
    .await;
    let c = client();
    let mut homes: HashMap<String, BTreeSet<String>> = HashMap::new();
    for round in 0..3 {
        for user in 0..12 {
            let req = Request::get(proxy.url("/"))
                .header("x-user", format!("user-{user}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let (status, _, body) = send(&c, req).await;
            assert_eq!(status, 200, "round {round}");
            homes
                .entry(format!("user-{user}"))
                .or_default()
                .insert(server_name(&body).to_owned());
        }
    }
    assert!(homes.values().all(|s| s.len() == 1), "sticky: {homes:?}");
    let used: BTreeSet<String> = homes.values().flatten().cloned().collect();
    assert!(used.len() >= 2, "users spread over servers: {used:?}");
    let mut plain = Vec::new();
    for _ in 0..6 {
        let (_, _, body) = get(&proxy.url("/")).await;
        plain.push(server_name(&body).to_owned());
    }
    let distinct: BTreeSet<&String> = plain.iter().collect();
    assert_eq!(distinct.len(), 3, "no key: round-robin over all: {plain:?}");
}

#[tokio::test]
async fn json_health_marks_down_a_server_whose_body_is_not_status_ok() {
    let servers = Servers::new();
    let (good, _) = body_server(&servers, r#"{"status": "ok"}"#).await;
    let (bad, bad_body) = body_server(&servers, r#"{"status": "ok"}"#).await;
    let proxy = Proxy::start(&format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        [backend.app]
        servers = [{{ name = "good", addr = "{good}", check = true }}, {{ name = "bad", addr = "{bad}", check = true }}]
        check = {{ http = "GET /health", interval = "50ms", rise = 1, fall = 1, judge = "json" }}
        {}
        "#,
        plugin("json", "json-health", "")
    ))
    .await;
    let states = Arc::clone(proxy.runtime.states());
    let key = |name: &str, addr| wasp::health::ServerKey {
        backend: "app".into(),
        server: name.into(),
        addr,
    };
    let bad_state = states.get(&key("bad", bad)).unwrap();
    bad_body.set(r#"{"status": "degraded"}"#);
    wait_until(Duration::from_secs(5), "bad server down", || {
        !bad_state.is_up()
    })
    .await;
    let reason = bad_state.last_check().unwrap().verdict.reason.to_string();
    assert_eq!(reason, r#"plugin json: down: status is "degraded""#);
    assert!(states.get(&key("good", good)).unwrap().is_up());
    bad_body.set(r#"{"status":"ok","db":"up"}"#);
    wait_until(Duration::from_secs(5), "bad server back", || {
        bad_state.is_up()
    })
    .await;
}

/// A frontend whose router is plugin `name` (defined by `section`), with backend `app` at
/// `app` as its default.
fn routed_by(app: std::net::SocketAddr, name: &str, section: &str) -> String {
    format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        router = "{name}"
        [backend.app]
        servers = [{{ name = "app", addr = "{app}" }}]
        {section}
        "#
    )
}

/// A fault plugin under `on_error`: the faulting request gets the fallback (the default
/// backend) or 503; later requests are served by a fresh instance of the plugin.
async fn fault_costs_one_decision(crate_name: &str, on_error: &str, limits: &str) {
    let servers = Servers::new();
    let app = servers.echo("app").await;
    let section = plugin(
        "faulty",
        crate_name,
        &format!("on_error = \"{on_error}\"\n{limits}"),
    );
    let proxy = Proxy::start(&routed_by(app, "faulty", &section)).await;
    let plugin = proxy.runtime.plugins().get("faulty").unwrap();
    let (status, _, body) = get(&proxy.url("/ok")).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (200, &*format!("{crate_name} ok\n"))
    );
    assert_eq!(faults(&plugin.stats), 0);

    let started = Instant::now();
    let (status, _, body) = get(&proxy.url("/fault")).await;
    let took = started.elapsed();
    match on_error {
        "fallback" => {
            assert_eq!(status, 200, "{crate_name}: {body}");
            assert_eq!(server_name(&body), "app", "the native rules decided");
        }
        _ => assert_eq!(status, 503, "{crate_name}: {body}"),
    }
    assert_eq!(faults(&plugin.stats), 1, "{crate_name}: one decision lost");
    assert!(
        took < Duration::from_secs(1),
        "{crate_name}: the faulting request took {took:?}"
    );

    for _ in 0..5 {
        let (status, _, body) = get(&proxy.url("/ok")).await;
        assert_eq!(status, 200, "{crate_name}: {body}");
        assert_eq!(body, format!("{crate_name} ok\n"));
    }
    assert_eq!(
        faults(&plugin.stats),
        1,
        "{crate_name}: the faulted instance was replaced, not reused"
    );
    assert!(plugin.instances_created() >= 2, "a fresh instance was made");
}

#[tokio::test]
async fn a_panicking_plugin_costs_one_decision_fallback() {
    fault_costs_one_decision("panicker", "fallback", "").await;
}

#[tokio::test]
async fn a_panicking_plugin_costs_one_decision_deny() {
    fault_costs_one_decision("panicker", "deny", "").await;
}

/// The looper's timeout: long enough that a healthy call is never cut short because the
/// test process was descheduled (the suite runs many tests at once on two cores; a 5 ms
/// timeout once stopped an `/ok` call there), short enough to keep the faulting request fast.
const LOOPER_LIMITS: &str = "timeout = \"250ms\"";

#[tokio::test]
async fn a_looping_plugin_costs_one_decision_fallback() {
    fault_costs_one_decision("looper", "fallback", LOOPER_LIMITS).await;
}

#[tokio::test]
async fn a_looping_plugin_costs_one_decision_deny() {
    fault_costs_one_decision("looper", "deny", LOOPER_LIMITS).await;
}

#[tokio::test]
async fn an_allocating_plugin_costs_one_decision_fallback() {
    fault_costs_one_decision("hog", "fallback", "memory = \"8m\"").await;
}

#[tokio::test]
async fn an_allocating_plugin_costs_one_decision_deny() {
    fault_costs_one_decision("hog", "deny", "memory = \"8m\"").await;
}

/// A plugin that times out on every call is not called for a while: each request would cost a
/// worker a whole `timeout`. The native rules decide meanwhile; calls resume after the rest, or
/// at once with a new version.
#[tokio::test]
async fn a_plugin_that_keeps_timing_out_is_suspended() {
    let servers = Servers::new();
    let app = servers.echo("app").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("router.wasm");
    std::fs::write(&file, std::fs::read(wasm("looper")).unwrap()).unwrap();
    let section = format!(
        "[plugin.looper]\npath = \"{}\"\n{LOOPER_LIMITS}\n",
        file.display()
    );
    let proxy = Proxy::start(&routed_by(app, "looper", &section)).await;
    let plugin = proxy.runtime.plugins().get("looper").unwrap();
    let answered_by = |body: &str| {
        if body == "looper ok\n" {
            "plugin".to_owned()
        } else {
            server_name(body).to_owned()
        }
    };
    let timeouts = || plugin.stats.timeouts.load(Ordering::Relaxed);
    let suspensions = || plugin.stats.suspensions.load(Ordering::Relaxed);
    // Three timeouts in a row, and only the third suspends it.
    let suspend = async |then: u64| {
        for call in 1..=3 {
            let (status, _, body) = get(&proxy.url("/fault")).await;
            assert_eq!((status.as_u16(), &*answered_by(&body)), (200, "app"));
            let expected = if call < 3 { then - 1 } else { then };
            assert_eq!(suspensions(), expected, "after timeout {call}");
        }
    };
    suspend(1).await;
    assert_eq!(timeouts(), 3);
    // Suspended: not called, not even for a request it would answer at once.
    let (status, _, body) = get(&proxy.url("/ok")).await;
    assert_eq!((status.as_u16(), &*answered_by(&body)), (200, "app"));
    assert_eq!(plugin.stats.suspended.load(Ordering::Relaxed), 1);
    assert_eq!(timeouts(), 3);
    // After the rest, the first call is a trial: one more timeout suspends it again at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while timeouts() == 3 {
        assert!(
            Instant::now() < deadline,
            "the plugin was never called again"
        );
        get(&proxy.url("/fault")).await;
    }
    assert_eq!((timeouts(), suspensions()), (4, 2));
    let (_, _, body) = get(&proxy.url("/ok")).await;
    assert_eq!(answered_by(&body), "app");
    // A trial that answers ends the streak.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            Instant::now() < deadline,
            "the plugin was never called again"
        );
        let (_, _, body) = get(&proxy.url("/ok")).await;
        if answered_by(&body) == "plugin" {
            break;
        }
    }
    suspend(3).await;
    // A new version is called at once.
    hot_load(&plugin, &file, "panicker").await;
    let (_, _, body) = get(&proxy.url("/ok")).await;
    assert_eq!(body, "panicker ok\n");
}

/// A plugin that runs out of time on the requests of one path only, with answers to others
/// between, is suspended too: 3 timeouts within a second, whatever came between, would
/// otherwise cost a worker its `timeout` on every such request, for ever.
#[tokio::test]
async fn a_plugin_timing_out_between_answers_is_suspended() {
    let servers = Servers::new();
    let app = servers.echo("app").await;
    let section = plugin("looper", "looper", LOOPER_LIMITS);
    let proxy = Proxy::start(&routed_by(app, "looper", &section)).await;
    let plugin = proxy.runtime.plugins().get("looper").unwrap();
    let suspensions = || plugin.stats.suspensions.load(Ordering::Relaxed);
    for n in 1..=3 {
        assert_eq!(suspensions(), 0, "before timeout {n}");
        let (status, _, body) = get(&proxy.url("/fault")).await;
        assert_eq!((status.as_u16(), server_name(&body)), (200, "app"));
        let (_, _, body) = get(&proxy.url("/ok")).await;
        if n < 3 {
            assert_eq!(body, "looper ok\n", "answered between the timeouts");
        }
    }
    assert_eq!(plugin.stats.timeouts.load(Ordering::Relaxed), 3);
    assert_eq!(
        suspensions(),
        1,
        "the third timeout within a second suspends it"
    );
    assert_eq!(
        plugin.stats.suspended.load(Ordering::Relaxed),
        1,
        "/ok decided by on_error"
    );
}

/// Log lines over a plugin's budget (50 a second) are dropped and counted in
/// `log_lines_dropped`, and a new version (hot-loaded, or made by a reload) keeps the count and
/// the budget: a plugin that floods the log and then stops still shows what it lost.
#[tokio::test]
async fn a_plugin_flooding_the_log_has_its_dropped_lines_counted() {
    let servers = Servers::new();
    let app = servers.echo("app").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("noisy.wasm");
    std::fs::copy(wasm("panicker"), &file).unwrap();
    let config = |timeout: &str| {
        let section = format!(
            "[plugin.noisy]\npath = \"{}\"\ntimeout = \"{timeout}\"\n[admin]\nbind = \"127.0.0.1:0\"\n",
            file.display()
        );
        routed_by(app, "noisy", &section)
    };
    let proxy = Proxy::start(&config("1s")).await;
    let admin = proxy.runtime.admin_addr().await.expect("admin listener");
    let dropped = || async {
        let (status, text) = admin_call(admin, false, "/api/plugins").await;
        assert_eq!(status, 200, "{text}");
        let list: serde_json::Value = serde_json::from_str(&text).unwrap();
        list[0]["log_lines_dropped"]
            .as_u64()
            .unwrap_or_else(|| panic!("no log_lines_dropped: {text}"))
    };
    assert_eq!(dropped().await, 0);
    // Each panic writes its message to stderr, which reaches the log line by line.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut before = 0;
    while before == 0 {
        assert!(Instant::now() < deadline, "no line dropped within 30 s");
        for _ in 0..20 {
            let (status, _, body) = get(&proxy.url("/fault")).await;
            assert_eq!(status, 200, "{body}");
        }
        before = dropped().await;
    }

    let plugin = proxy.runtime.plugins().get("noisy").unwrap();
    hot_load(&plugin, &file, "looper").await;
    let (_, _, body) = get(&proxy.url("/ok")).await;
    assert_eq!(body, "looper ok\n");
    assert!(dropped().await >= before, "the count survives a hot-load");
    // A reload that changes the plugin's settings makes a new version too.
    let version = plugin.version();
    std::fs::write(&proxy.path, config("900ms")).unwrap();
    proxy.runtime.reload().await.expect("reload");
    assert!(plugin.version() > version);
    assert!(dropped().await >= before, "the count survives a reload");

    let (status, text) = admin_call(admin, false, "/metrics").await;
    assert_eq!(status, 200);
    let line = text
        .lines()
        .find(|l| l.starts_with("wasp_plugin_log_lines_dropped_total{"))
        .unwrap_or_else(|| panic!("no dropped lines metric:\n{text}"));
    let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= before, "{line}");
}

/// Puts the test plugin `crate_name` in `file` (watched by the running proxy) and waits until
/// `plugin` runs it as a new version.
async fn hot_load(plugin: &wasp::plugin::registry::Plugin, file: &Path, crate_name: &str) {
    let version = plugin.version();
    replace_file(file, &std::fs::read(wasm(crate_name)).unwrap());
    wait_until(Duration::from_secs(10), "the new version loaded", || {
        plugin.version() > version
    })
    .await;
}

/// Replaces `dest` with `src`'s bytes atomically (write beside it, then rename), as a build
/// tool or a deploy would.
fn replace_file(dest: &Path, bytes: &[u8]) {
    let tmp = dest.with_extension("wasm.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

/// 50 concurrent clients for 10 s while the plugin's file is replaced 10 times, alternating
/// path-router (everything to `alpha`) and canary (everything to `beta`), with a broken file
/// once in between (rejected: the old version keeps serving). No request fails, and each new
/// version's behaviour is observed; the time from each file write until the new version
/// answers is printed (docs/benchmarks.md has the figures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_load_fails_no_request() {
    const CLIENTS: usize = 50;
    const SWAPS: u32 = 10;
    const RUN: Duration = Duration::from_secs(10);
    let servers = Servers::new();
    let alpha = servers.echo("alpha").await;
    let beta = servers.echo("beta").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("swap.wasm");
    let router = std::fs::read(wasm("path-router")).unwrap();
    let canary = std::fs::read(wasm("canary")).unwrap();
    std::fs::write(&file, &router).unwrap();
    let proxy = Proxy::start(&format!(
        r#"
        [global]
        access_log = false
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "alpha"
        router = "swap"
        [backend.alpha]
        servers = [{{ name = "a", addr = "{alpha}" }}]
        [backend.beta]
        servers = [{{ name = "b", addr = "{beta}" }}]
        [plugin.swap]
        path = "{}"
        config = {{ routes = "/=alpha", backend = "beta", percent = "100" }}
        # Generous: this test shares 2 cores with load and the rest of the suite, and the
        # deadline counts wall-clock time.
        timeout = "200ms"
        "#,
        file.display()
    ))
    .await;
    let url = proxy.url("/x");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..CLIENTS {
        let (url, stop, ok, failed) = (url.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let req = Request::get(&url).body(Full::new(Bytes::new())).unwrap();
                match c.request(req).await {
                    Ok(resp) if resp.status() == 200 => {
                        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let start = Instant::now();
    let now_serving = |name: &'static str| {
        let url = url.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let (_, _, body) = get(&url).await;
                if server_name(&body) == name {
                    return;
                }
                assert!(Instant::now() < deadline, "{name} never served");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    now_serving("alpha").await;
    let plugin = proxy.runtime.plugins().get("swap").unwrap();

    // The swaps are spread over the run; each waits for the previous one to be observed.
    let pace = RUN / (SWAPS + 1);
    let mut visible = Vec::new();
    for i in 0..SWAPS {
        tokio::time::sleep_until((start + pace * (i + 1)).into()).await;
        if i == SWAPS / 2 {
            let rejected = plugin.stats.rejected.load(Ordering::Relaxed);
            replace_file(&file, b"this is not wasm");
            wait_until(Duration::from_secs(5), "broken version rejected", || {
                plugin.stats.rejected.load(Ordering::Relaxed) > rejected
            })
            .await;
            let (_, _, body) = get(&url).await;
            let serving = if i % 2 == 0 { "alpha" } else { "beta" };
            assert_eq!(server_name(&body), serving, "the old version keeps serving");
        }
        let (bytes, name) = if i % 2 == 0 {
            (&canary, "beta")
        } else {
            (&router, "alpha")
        };
        let written = Instant::now();
        replace_file(&file, bytes);
        let version = u64::from(i) + 2;
        wait_until(Duration::from_secs(5), "new version live", || {
            plugin.version() == version
        })
        .await;
        now_serving(name).await;
        visible.push(written.elapsed());
    }

    tokio::time::sleep_until((start + RUN).into()).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    visible.sort();
    eprintln!(
        "hot swap under load: {CLIENTS} clients, {ok} ok, {failed} failed in {:?}; new version \
         answering after a file write: median {:?}, max {:?}",
        start.elapsed(),
        visible[visible.len() / 2],
        visible[visible.len() - 1],
    );
    assert_eq!(failed, 0);
    assert!(ok > 1000, "{ok} requests");
    assert_eq!(plugin.version(), u64::from(SWAPS) + 1);
    // Every proxied request was one routing call, whichever version made it: the totals
    // carry over the swaps.
    let usage = plugin.usage();
    assert!(usage.calls >= ok, "{usage:?} for {ok} requests");
    // No call failed for a swap's sake. A call cut by its wall-clock deadline is left out: on
    // 2 cores shared with the load, a compile and the rest of the suite, a worker can be
    // descheduled for longer than the timeout in the middle of a call (one timeout in three
    // runs with a busy loop on each core); a swap holds no call up.
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let stats = &plugin.stats;
    let (traps, memory, invalid) = (
        count(&stats.traps),
        count(&stats.memory),
        count(&stats.invalid),
    );
    let unavailable = count(&stats.unavailable);
    assert_eq!(
        (traps, memory, invalid, unavailable),
        (0, 0, 0, 0),
        "traps, memory, invalid, unavailable ({} timeouts)",
        count(&stats.timeouts),
    );
}

#[test]
fn wasp_check_names_the_missing_export_or_import() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasp.toml");
    std::fs::write(
        &path,
        format!(
            r#"[frontend.web]
bind = "127.0.0.1:0"
default_backend = "app"
router = "oops"

[backend.app]
servers = [{{ name = "s1", addr = "127.0.0.1:9001" }}]

{}
[plugin.text]
path = "{}"

[backend.other]
servers = [{{ name = "s1", addr = "127.0.0.1:9002" }}]
balance = "text"

[frontend.map]
bind = "127.0.0.1:0"
default_backend = "app"
router = "map"
{}"#,
            plugin("oops", "wrong-world", ""),
            path.display(),
            plugin("map", "std-map", ""),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wasp"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "wasp.toml:4:10: error: frontend.web.router: plugin \"oops\" does not export wasp:plugin/router@0.1.0"
        ),
        "{text}"
    );
    assert!(
        text.contains("= help: it exports wasp:plugin/balancer@0.1.0; a router plugin implements wasp_plugin::Router and calls wasp_plugin::export_router!"),
        "{text}"
    );
    assert!(
        text.contains("wasp.toml:15:8: error: plugin.text.path: plugin ")
            && text.contains("wasp.toml is not a wasm component"),
        "{text}"
    );
    assert!(
        text.contains("std_map.wasm cannot be loaded: cannot link: ")
            && text.contains("= help: plugins have no randomness: std's HashMap"),
        "{text}"
    );
    assert!(text.ends_with("check: 3 errors\n"), "{text}");
}

/// The example plugins' own unit tests (their logic, on the host target).
#[test]
fn example_plugins_unit_tests_pass() {
    let _ = wasm("path-router"); // serializes with the wasm build
    let root = crate::support::test_plugins::workspace();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(cargo)
        .current_dir(&root)
        .args(["test", "--quiet", "--workspace", "--lib"])
        .env("CARGO_TARGET_DIR", root.join("target"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cd plugins && cargo test --workspace failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `wasp plugin new` for each role: the crate builds with one cargo command and loads as
/// the printed config lines say.
#[test]
fn scaffolded_plugins_build_and_load() {
    let _ = wasm("path-router"); // the SDK's dependencies are built (and cached) once
    let dir = tempfile::tempdir().unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let shared_target = crate::support::test_plugins::workspace().join("target");
    let mut config = String::from(
        "[frontend.web]\nbind = \"127.0.0.1:0\"\ndefault_backend = \"app\"\nrouter = \"my-router\"\n\
         [backend.app]\nservers = [{ name = \"s1\", addr = \"127.0.0.1:9001\", check = true }]\n\
         balance = \"my-balancer\"\ncheck = { http = \"GET /\", judge = \"my-health\" }\n",
    );
    for (name, role) in [
        ("my-router", "router"),
        ("my-balancer", "balancer"),
        ("my-health", "health"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wasp"))
            .args(["plugin", "new", name, "--role", role, "--dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let crate_dir = dir.path().join(name);
        assert!(
            text.contains(&format!(
                "cd {} && cargo build --release --target wasm32-wasip2",
                crate_dir.display()
            )),
            "{text}"
        );
        assert!(text.contains(&format!("[plugin.{name}]")), "{text}");
        let built = std::process::Command::new(&cargo)
            .current_dir(&crate_dir)
            .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2"])
            .env("CARGO_TARGET_DIR", &shared_target)
            .output()
            .unwrap();
        assert!(
            built.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        // The crate's own tests run on the host as generated: they compile, and so does the
        // library they link with.
        let tested = std::process::Command::new(&cargo)
            .current_dir(&crate_dir)
            .args(["test", "--quiet"])
            .env("CARGO_TARGET_DIR", &shared_target)
            .output()
            .unwrap();
        assert!(
            tested.status.success(),
            "{name}: cargo test: {}{}",
            String::from_utf8_lossy(&tested.stdout),
            String::from_utf8_lossy(&tested.stderr)
        );
        let wasm_file = shared_target
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        config.push_str(&format!(
            "[plugin.{name}]\npath = \"{}\"\n",
            wasm_file.display()
        ));
    }
    let path = dir.path().join("wasp.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wasp"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stderr), "check: ok\n");
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_wasp"))
        .args(["plugin", "new", "my-router", "--role", "router", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "an existing folder is never overwritten"
    );
}

/// The threads of process `pid`, by name.
fn thread_names(pid: u32) -> Vec<String> {
    let mut names = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let comm = task.unwrap().path().join("comm");
        if let Ok(name) = std::fs::read_to_string(comm) {
            names.push(name.trim().to_owned());
        }
    }
    names
}

/// With no plugin configured there is no Wasm engine at all: no epoch ticker thread, no
/// compiled code; a config with a plugin starts them.
#[test]
fn no_plugin_configured_means_no_wasm_engine() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, extra: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[global]\nworkers = 1\n[frontend.web]\nbind = \"127.0.0.1:0\"\ndefault_backend = \"app\"\n{}\n\
                 [backend.app]\nservers = [{{ name = \"s1\", addr = \"127.0.0.1:9\" }}]\n{}",
                if extra.is_empty() { "" } else { "router = \"paths\"" },
                extra
            ),
        )
        .unwrap();
        crate::support::Binary::run(&path)
    };
    let native = run("native.toml", "");
    let names = thread_names(native.child.id());
    assert!(!names.iter().any(|n| n == "wasp-epoch"), "{names:?}");
    let with_plugin = run("plugin.toml", &plugin("paths", "path-router", ""));
    let names = thread_names(with_plugin.child.id());
    assert!(names.iter().any(|n| n == "wasp-epoch"), "{names:?}");
}

/// POSTs to (or GETs from) the admin listener; status and body.
async fn admin_call(addr: std::net::SocketAddr, post: bool, path: &str) -> (StatusCode, String) {
    let method = if post {
        http::Method::POST
    } else {
        http::Method::GET
    };
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, text) = send(&client(), req).await;
    (status, text)
}

/// The control plane sees plugins: `/api/plugins`, `/metrics` (parsed by a Prometheus parser)
/// and the stats page count the calls the traffic made; `/api/plugins/NAME/reload` hot-loads
/// a new file, refuses a broken one with its reason (the old version keeps serving) and knows
/// no unknown plugin; `wasp ctl plugins` lists them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_lists_counts_and_reloads_plugins() {
    let servers = Servers::new();
    let (items, other) = (servers.echo("items").await, servers.echo("other").await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("paths.wasm");
    std::fs::copy(wasm("path-router"), &file).unwrap();
    let proxy = Proxy::start(&format!(
        r#"
        [global]
        access_log = false
        [admin]
        bind = "127.0.0.1:0"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "other"
        router = "paths"
        [backend.items]
        servers = [{{ name = "i", addr = "{items}" }}]
        [backend.other]
        servers = [{{ name = "o", addr = "{other}" }}]
        [plugin.paths]
        path = "{}"
        timeout = "1s"
        config = {{ routes = "/item=items" }}
        "#,
        file.display()
    ))
    .await;
    let admin = proxy.runtime.admin_addr().await.expect("admin listener");
    for i in 0..20 {
        let (status, _, body) = get(&proxy.url(&format!("/item/{i}"))).await;
        assert_eq!((status, server_name(&body)), (StatusCode::OK, "items"));
    }

    let (status, text) = admin_call(admin, false, "/api/plugins").await;
    assert_eq!(status, 200, "{text}");
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    let p = &list[0];
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{text}");
    assert_eq!(p["name"], "paths");
    assert_eq!(p["version"], 1);
    assert_eq!(p["roles"], serde_json::json!(["router"]));
    assert_eq!(p["hash"].as_str().map(str::len), Some(16), "{text}");
    assert_eq!(p["calls"], 20, "one routing call per request: {text}");
    assert_eq!(p["errors"], 0);
    assert!(
        p["avg_decision_us"].as_f64().is_some_and(|us| us > 0.0),
        "{text}"
    );

    let (status, text) = admin_call(admin, false, "/metrics").await;
    assert_eq!(status, 200);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("valid exposition format");
    let value = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("plugin") == Some("paths"))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                other => panic!("{name}: {other:?}"),
            })
            .unwrap_or_else(|| panic!("no {name}:\n{text}"))
    };
    assert_eq!(value("wasp_plugin_calls_total"), 20.0);
    assert_eq!(value("wasp_plugin_version"), 1.0);
    assert_eq!(value("wasp_plugin_decision_time_seconds_count"), 20.0);
    let timeouts = scrape.samples.iter().find(|s| {
        s.metric == "wasp_plugin_errors_total" && s.labels.get("kind") == Some("timeout")
    });
    assert!(timeouts.is_some(), "errors by kind:\n{text}");

    let (status, page) = admin_call(admin, false, "/").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<h2>Plugins</h2>") && page.contains(">paths<"),
        "{page}"
    );

    // A broken file: refused with the reason, the old version keeps routing.
    replace_file(&file, b"not a component");
    let (status, text) = admin_call(admin, true, "/api/plugins/paths/reload").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert!(text.contains("not a wasm file"), "{text}");
    let (_, _, body) = get(&proxy.url("/item/x")).await;
    assert_eq!(server_name(&body), "items");

    // A new version: live after the call (the file watcher may have loaded it first).
    std::fs::copy(wasm("canary"), file.with_extension("wasm.tmp")).unwrap();
    std::fs::rename(file.with_extension("wasm.tmp"), &file).unwrap();
    let (status, text) = admin_call(admin, true, "/api/plugins/paths/reload").await;
    assert_eq!(status, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["version"], 2, "{text}");
    assert!(
        answer["status"] == "reloaded" || answer["status"] == "unchanged",
        "{text}"
    );
    let plugin = proxy.runtime.plugins().get("paths").unwrap();
    assert_eq!(plugin.version(), 2);
    assert!(plugin.usage().calls >= 21, "calls of version 1 are kept");

    let (status, text) = admin_call(admin, true, "/api/plugins/nope/reload").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{text}");

    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_wasp"))
            .args(["ctl", "--admin", &admin.to_string(), "plugins"])
            .env_remove("WASP_ADMIN")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("paths "))
        .unwrap_or_else(|| panic!("{table}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[1], "2", "version column: {table}");
    assert_eq!(row[3], "router", "roles column: {table}");
}

/// A server added or removed at run time changes nothing of the plugins: a broken plugin file
/// on disk (which hot-loading rejects, the live version serving on) does not fail the change.
#[tokio::test]
async fn servers_change_at_run_time_while_a_plugin_file_is_broken() {
    let servers = Servers::new();
    let app = servers.echo("app").await;
    let extra = servers.echo("extra").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("router.wasm");
    std::fs::write(&file, std::fs::read(wasm("path-router")).unwrap()).unwrap();
    let section = format!(
        "[plugin.r]\npath = \"{}\"\ntimeout = \"1s\"\nconfig = {{ routes = \"/=app\" }}\n",
        file.display()
    );
    let proxy = Proxy::start(&routed_by(app, "r", &section)).await;
    replace_file(&file, b"not a wasm file");
    let spec = |name: &str, addr: std::net::SocketAddr| wasp::config::ServerSpec {
        name: name.to_owned(),
        addr: addr.to_string(),
        weight: 1,
        check: false,
        backup: false,
        maxconn: None,
        state: wasp::config::AdminState::Ready,
    };
    proxy
        .runtime
        .add_server("app", spec("extra", extra))
        .await
        .expect("a server added");
    proxy
        .runtime
        .remove_server("app", "app")
        .await
        .expect("a server removed");
    let (status, _, body) = get(&proxy.url("/x")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server_name(&body), "extra", "routed by the live plugin");
}
