//! Server states and limits through the proxy: weights, backup servers, MAINT and DRAIN,
//! maxconn with its queue.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wasp::config::AdminState;
use wasp::health::{Health, ServerState};

use crate::support::{Proxy, Servers, get, observed_one, server_name, server_state};

fn state(proxy: &Proxy, backend: &str, addr: SocketAddr) -> std::sync::Arc<ServerState> {
    server_state(proxy, backend, addr)
}

async fn shares(proxy: &Proxy, requests: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..requests {
        let (status, _, body) = get(&proxy.url("/")).await;
        assert_eq!(status, 200);
        *seen.entry(server_name(&body).to_owned()).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_1_2_3_split_6000_requests_within_2_points() {
    let servers = Servers::new();
    let (a, b, c) = (
        servers.echo("a").await,
        servers.echo("b").await,
        servers.echo("c").await,
    );
    let proxy = Proxy::start(&format!(
        r#"
        [global]
        access_log = false
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        [backend.app]
        servers = [
          {{ name = "a", addr = "{a}", weight = 1 }},
          {{ name = "b", addr = "{b}", weight = 2 }},
          {{ name = "c", addr = "{c}", weight = 3 }},
        ]
        "#
    ))
    .await;
    let seen = shares(&proxy, 6000).await;
    for (name, want) in [("a", 1.0 / 6.0), ("b", 2.0 / 6.0), ("c", 3.0 / 6.0)] {
        let got = seen.get(name).copied().unwrap_or(0) as f64 / 6000.0;
        assert!(
            (got - want).abs() < 0.02,
            "{name}: {got:.3} vs {want:.3} ({seen:?})"
        );
    }
}

fn two_plus_backup(a: SocketAddr, b: SocketAddr, backup: SocketAddr) -> String {
    format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        [backend.app]
        servers = [
          {{ name = "a", addr = "{a}" }},
          {{ name = "b", addr = "{b}" }},
          {{ name = "spare", addr = "{backup}", backup = true }},
        ]
        "#
    )
}

#[tokio::test]
async fn backup_takes_traffic_only_when_every_active_server_is_down() {
    let servers = Servers::new();
    let (a, b, spare) = (
        servers.echo("a").await,
        servers.echo("b").await,
        servers.echo("spare").await,
    );
    let proxy = Proxy::start(&two_plus_backup(a, b, spare)).await;
    assert!(!shares(&proxy, 20).await.contains_key("spare"));
    state(&proxy, "app", a).set_health(Health::Down);
    let one_down = shares(&proxy, 20).await;
    assert_eq!(
        one_down.get("b"),
        Some(&20),
        "the other active server takes it all: {one_down:?}"
    );
    state(&proxy, "app", b).set_health(Health::Down);
    assert_eq!(shares(&proxy, 10).await.get("spare"), Some(&10));
    state(&proxy, "app", a).set_health(Health::Up);
    assert_eq!(
        shares(&proxy, 10).await.get("a"),
        Some(&10),
        "back to the active server"
    );
}

#[tokio::test]
async fn no_usable_server_is_503_at_once() {
    let servers = Servers::new();
    let (a, b, spare) = (
        servers.echo("a").await,
        servers.echo("b").await,
        servers.echo("spare").await,
    );
    let proxy = Proxy::start(&two_plus_backup(a, b, spare)).await;
    for addr in [a, b, spare] {
        state(&proxy, "app", addr).set_health(Health::Down);
    }
    let start = Instant::now();
    assert_eq!(get(&proxy.url("/")).await.0, 503);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "no waiting: {:?}",
        start.elapsed()
    );
}

/// Two entries of one backend at one address are two servers, as HAProxy's `server` lines
/// are: one in `maint` with weight 3 leaves the other ready with its own weight 1.
#[tokio::test]
async fn two_entries_at_one_address_have_a_state_each() {
    let servers = Servers::new();
    let (one, two) = (servers.echo("one").await, servers.echo("two").await);
    let proxy = Proxy::start(&format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        [backend.app]
        servers = [
          {{ name = "s1", addr = "{one}" }},
          {{ name = "s2", addr = "{two}" }},
          {{ name = "s2b", addr = "{two}", weight = 3, state = "maint" }},
        ]
        "#
    ))
    .await;
    let snapshot = proxy.runtime.proxy().snapshot();
    let states: Vec<_> = snapshot.backends[0]
        .servers
        .iter()
        .map(|s| (s.state.admin(), s.state.weight()))
        .collect();
    assert_eq!(
        states,
        [
            (AdminState::Ready, 1),
            (AdminState::Ready, 1),
            (AdminState::Maint, 3)
        ]
    );
    let seen = shares(&proxy, 10).await;
    assert_eq!((seen.get("one"), seen.get("two")), (Some(&5), Some(&5)));
}

#[tokio::test]
async fn maint_stops_new_traffic_at_once() {
    let servers = Servers::new();
    let (a, b, spare) = (
        servers.echo("a").await,
        servers.echo("b").await,
        servers.echo("spare").await,
    );
    let proxy = Proxy::start(&two_plus_backup(a, b, spare)).await;
    state(&proxy, "app", a).set_admin(AdminState::Maint);
    assert_eq!(shares(&proxy, 10).await.get("b"), Some(&10));
    state(&proxy, "app", a).set_admin(AdminState::Ready);
    assert!(shares(&proxy, 10).await.contains_key("a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_in_flight_requests_finish_and_sends_no_new_ones() {
    let servers = Servers::new();
    let (held, mut arrived, gate) = servers.gated("held").await;
    let other = servers.echo("other").await;
    let proxy = Proxy::start(&format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        [backend.app]
        servers = [ {{ name = "held", addr = "{held}" }}, {{ name = "other", addr = "{other}" }} ]
        "#
    ))
    .await;
    let url = proxy.url("/");
    let in_flight = tokio::spawn(async move { get(&url).await });
    arrived
        .recv()
        .await
        .expect("first request reached the held server");
    state(&proxy, "app", held).set_admin(AdminState::Drain);
    let after = shares(&proxy, 10).await;
    assert_eq!(
        after.get("other"),
        Some(&10),
        "draining server gets nothing new: {after:?}"
    );
    gate.open(1);
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(
        (status.as_u16(), server_name(&body)),
        (200, "held"),
        "the in-flight request finished"
    );
}

fn limited(held: SocketAddr, queue: &str) -> String {
    format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        [backend.app]
        timeout = {{ queue = "{queue}" }}
        servers = [ {{ name = "held", addr = "{held}", maxconn = 1 }} ]
        "#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_maxconn_requests_queue_then_get_503_after_timeout_queue() {
    let servers = Servers::new();
    let (held, mut arrived, gate) = servers.gated("held").await;
    let proxy = Proxy::start(&limited(held, "500ms")).await;
    let url = proxy.url("/");
    let first = tokio::spawn(async move { get(&url).await });
    arrived
        .recv()
        .await
        .expect("first request holds the only slot");
    let start = Instant::now();
    let (status, _, _) = get(&proxy.url("/")).await;
    let waited = start.elapsed();
    assert_eq!(status, 503);
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );
    gate.open(1);
    assert_eq!(first.await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_is_served_when_a_slot_frees_up() {
    let servers = Servers::new();
    let (held, mut arrived, gate) = servers.gated("held").await;
    let proxy = Proxy::start(&limited(held, "10s")).await;
    let url = proxy.url("/");
    let first = tokio::spawn(async move { get(&url).await });
    arrived
        .recv()
        .await
        .expect("first request holds the only slot");
    let url = proxy.url("/");
    let second = tokio::spawn(async move { get(&url).await });
    // The second request must not reach the server while the first holds its only slot.
    let early = tokio::time::timeout(Duration::from_millis(300), arrived.recv()).await;
    assert!(early.is_err(), "maxconn = 1 let a second request through");
    gate.open(1);
    assert_eq!(first.await.unwrap().0, 200);
    arrived
        .recv()
        .await
        .expect("the queued request reached the server");
    gate.open(1);
    assert_eq!(second.await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_is_first_come_first_served() {
    let servers = Servers::new();
    let (held, mut arrived, gate) = servers.gated("held").await;
    let proxy = Proxy::start(&limited(held, "10s")).await;
    let queue = std::sync::Arc::clone(state(&proxy, "app", held).backend());
    let mut answers = Vec::new();
    for n in 0..6usize {
        let url = proxy.url(&format!("/{n}"));
        answers.push(tokio::spawn(async move { get(&url).await }));
        if n == 0 {
            assert_eq!(
                arrived.recv().await.unwrap(),
                "/0",
                "the first takes the slot"
            );
        } else {
            crate::support::wait_until(Duration::from_secs(10), "the request queued", || {
                queue.queued() == n
            })
            .await;
        }
    }
    // Each time the slot frees, the request that has waited longest gets it.
    for n in 1..6 {
        gate.open(1);
        assert_eq!(arrived.recv().await.unwrap(), format!("/{n}"));
    }
    gate.open(1);
    for answer in answers {
        assert_eq!(answer.await.unwrap().0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leastconn_sends_a_slow_server_fewer_requests() {
    let servers = Servers::new();
    let slow = servers.behaviour().await;
    let fast = servers.echo("fast").await;
    let proxy = Proxy::start(&format!(
        r#"
        [global]
        access_log = false
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        [backend.app]
        balance = "leastconn"
        servers = [ {{ name = "slow", addr = "{slow}" }}, {{ name = "fast", addr = "{fast}" }} ]
        "#
    ))
    .await;
    // 20 clients, 20 requests each; the slow server takes 50 ms per request, the echo none.
    let mut clients = Vec::new();
    for _ in 0..20 {
        let url = proxy.url("/delay/50");
        clients.push(tokio::spawn(async move {
            let mut slow = 0;
            for _ in 0..20 {
                let (status, _, body) = get(&url).await;
                assert_eq!(status, 200);
                if body == "done" {
                    slow += 1;
                }
            }
            slow
        }));
    }
    let mut slow_count = 0;
    for c in clients {
        slow_count += c.await.unwrap();
    }
    assert!(
        slow_count < 400 / 4,
        "the slow server got {slow_count} of 400 requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observed_5xx_mark_a_server_down_and_its_checks_bring_it_back() {
    let servers = Servers::new();
    let (bad, status) = servers.status("bad", 500).await;
    let good = servers.echo("good").await;
    let proxy = Proxy::start(&format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        [backend.app]
        observe = "layer7"
        error_limit = 3
        check = {{ interval = "300ms", rise = 2, fall = 3 }}
        servers = [
          {{ name = "bad", addr = "{bad}", check = true }},
          {{ name = "good", addr = "{good}", check = true }},
        ]
        "#
    ))
    .await;
    // Round-robin alternates: the third 500 from "bad" marks it down (TCP checks still pass).
    let mut errors = 0;
    while errors < 3 {
        let (code, _, _) = get(&proxy.url("/")).await;
        if code == 500 {
            errors += 1;
        }
    }
    assert_eq!(
        state(&proxy, "app", bad).health(),
        Health::Down,
        "marked down by live traffic"
    );
    assert_eq!(
        shares(&proxy, 6).await.get("good"),
        Some(&6),
        "no traffic while down"
    );
    status.set(200);
    crate::support::wait_until(
        Duration::from_secs(3),
        "active checks bring bad back",
        || state(&proxy, "app", bad).health() == Health::Up,
    )
    .await;
    assert!(shares(&proxy, 6).await.contains_key("bad"));
}

/// A response that is not HTTP is one observed error per request (it is not replayed), so
/// `error_limit` counts requests, as HAProxy's `error-limit` does.
#[tokio::test]
async fn a_junk_answer_is_one_observed_error_per_request() {
    let servers = Servers::new();
    let (junk, _heads) = servers.scripted(b"NOT HTTP\r\n\r\n").await;
    let proxy = Proxy::start(&observed_one("junk", junk, 3)).await;
    for n in 1..=3 {
        assert_eq!(get(&proxy.url("/")).await.0, 502, "request {n}");
        let expected = if n < 3 { Health::Up } else { Health::Down };
        assert_eq!(state(&proxy, "app", junk).health(), expected, "after {n}");
    }
}

/// `timeout server` expiring is an error to passive health, as HAProxy's `observe layer7`
/// counts a read timeout: a hung server is taken out of rotation, and its last result says
/// why (not its last active check's "ok").
#[tokio::test]
async fn a_server_timeout_is_an_observed_error() {
    let servers = Servers::new();
    let slow = servers.behaviour().await;
    let proxy = Proxy::start(&format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        [backend.app]
        observe = "layer7"
        error_limit = 2
        timeout = {{ server = "200ms" }}
        check = {{ interval = "1h" }}
        servers = [ {{ name = "slow", addr = "{slow}", check = true }} ]
        "#
    ))
    .await;
    for n in 1..=2 {
        assert_eq!(get(&proxy.url("/hang")).await.0, 504, "request {n}");
    }
    let slow_state = state(&proxy, "app", slow);
    assert_eq!(slow_state.health(), Health::Down);
    assert_eq!(get(&proxy.url("/hang")).await.0, 503, "no server left");
    let last = slow_state.last_check().expect("a result");
    assert_eq!(
        last.verdict.reason.to_string(),
        "health analyze: 2 consecutive errors on live traffic"
    );
}

/// 501 and 505 say the server does not do what the client asked, not that it is unwell: not
/// errors to passive health (HAProxy's `observe layer7`), so a client cannot take a server out
/// with requests it does not implement.
#[tokio::test]
async fn a_501_is_no_observed_error() {
    let servers = Servers::new();
    let (server, _heads) = servers
        .scripted(b"HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\n\r\n")
        .await;
    let proxy = Proxy::start(&observed_one("s", server, 1)).await;
    for n in 1..=3 {
        assert_eq!(get(&proxy.url("/")).await.0, 501, "request {n}");
    }
    assert_eq!(state(&proxy, "app", server).health(), Health::Up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_maxconn_queues_across_all_its_servers() {
    let servers = Servers::new();
    let (held, mut arrived, gate) = servers.gated("held").await;
    let other = servers.echo("other").await;
    let proxy = Proxy::start(&format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        [backend.app]
        maxconn = 1
        timeout = {{ queue = "400ms" }}
        servers = [ {{ name = "held", addr = "{held}" }}, {{ name = "other", addr = "{other}" }} ]
        "#
    ))
    .await;
    let url = proxy.url("/");
    let first = tokio::spawn(async move { get(&url).await });
    arrived
        .recv()
        .await
        .expect("first request holds the backend's only slot");
    // "other" is idle, but the backend as a whole is at its maxconn.
    let start = Instant::now();
    assert_eq!(get(&proxy.url("/")).await.0, 503);
    assert!(
        start.elapsed() >= Duration::from_millis(400),
        "{:?}",
        start.elapsed()
    );
    gate.open(1);
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(get(&proxy.url("/")).await.0, 200, "a free slot again");
}
