//! Active health checks through the real runtime: a killed server is taken out within
//! `fall × interval + timeout` and put back within `rise × interval` once it returns; HTTP
//! checks judge the status against `expect`; a closed port fails a TCP check; reloads keep
//! health and checkers; shutdown stops them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use wasp::health::{ServerKey, ServerState};

use crate::support::{Proxy, Servers, get, server_name, server_state, wait_until};

const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(200);
const RISE: u32 = 2;
const FALL: u32 = 3;
/// Room for scheduling and the 5 ms polling of the tests.
const MARGIN: Duration = Duration::from_millis(100);
const LIMIT: Duration = Duration::from_secs(10);

fn state(proxy: &Proxy, backend: &str, addr: SocketAddr) -> Arc<ServerState> {
    server_state(proxy, backend, addr)
}

fn last_reason(state: &ServerState) -> Option<String> {
    state.last_check().map(|c| c.verdict.reason.to_string())
}

/// Names of the servers that answered `n` requests.
async fn answers(proxy: &Proxy, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..n {
        let (status, _, body) = get(&proxy.url("/")).await;
        assert_eq!(status, 200, "{body}");
        names.push(server_name(&body).to_owned());
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_is_taken_out_in_time_and_put_back_when_it_returns() {
    let servers = Servers::new();
    let mut one = servers.killable_echo("one").await;
    let two = servers.echo("two").await;
    let proxy = Proxy::start(&format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"

        [backend.app]
        check = {{ interval = "200ms", timeout = "200ms", rise = {RISE}, fall = {FALL} }}
        servers = [
          {{ name = "one", addr = "{}", check = true }},
          {{ name = "two", addr = "{two}", check = true }},
        ]
        "#,
        one.addr
    ))
    .await;
    let s1 = state(&proxy, "app", one.addr);
    wait_until(LIMIT, "first check of one passed", || {
        last_reason(&s1).as_deref() == Some("layer4 ok")
    })
    .await;

    one.kill().await;
    let down = wait_until(LIMIT, "one marked down", || !s1.is_up()).await;
    eprintln!("killed server marked down after {down:?}");
    let bound = INTERVAL * FALL + TIMEOUT;
    assert!(
        down <= bound + MARGIN,
        "down after {down:?}, bound {bound:?}"
    );
    // Three failures spaced by fastinter (less 5% jitter each): not a single failed check.
    assert!(down >= (INTERVAL * (FALL - 1)).mul_f64(0.95), "{down:?}");
    assert_eq!(
        last_reason(&s1).as_deref(),
        Some("layer4 connection refused")
    );
    assert!(
        answers(&proxy, 6).await.iter().all(|n| n == "two"),
        "a down server gets no traffic"
    );

    one.revive().await;
    let up = wait_until(LIMIT, "one marked up", || s1.is_up()).await;
    eprintln!("revived server marked up after {up:?}");
    let bound = INTERVAL * RISE;
    assert!(up <= bound + MARGIN, "up after {up:?}, bound {bound:?}");
    assert!(up >= (INTERVAL * (RISE - 1)).mul_f64(0.95), "{up:?}");
    assert!(
        answers(&proxy, 4).await.iter().any(|n| n == "one"),
        "traffic is back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_check_marks_a_500_down_and_a_200_up() {
    let servers = Servers::new();
    let (failing, status) = servers.status("failing", 500).await;
    let (healthy, _) = servers.status("healthy", 200).await;
    let proxy = Proxy::start(&format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"

        [backend.app]
        check = {{ interval = "100ms", rise = 2, fall = 2, http = "GET /health", expect = "200-299" }}
        servers = [
          {{ name = "failing", addr = "{failing}", check = true }},
          {{ name = "healthy", addr = "{healthy}", check = true }},
        ]
        "#
    ))
    .await;
    let (sf, sh) = (state(&proxy, "app", failing), state(&proxy, "app", healthy));
    wait_until(LIMIT, "500 marked down", || !sf.is_up()).await;
    assert_eq!(last_reason(&sf).as_deref(), Some("layer7 status 500"));
    wait_until(LIMIT, "200 checked", || last_reason(&sh).is_some()).await;
    assert!(sh.is_up());
    assert_eq!(last_reason(&sh).as_deref(), Some("layer7 ok status 200"));
    assert!(answers(&proxy, 4).await.iter().all(|n| n == "healthy"));

    status.set(202);
    wait_until(LIMIT, "recovered server marked up", || sf.is_up()).await;
    assert_eq!(last_reason(&sf).as_deref(), Some("layer7 ok status 202"));
    let check = sf.last_check().expect("check result");
    let observation = check
        .observation
        .as_ref()
        .expect("an active check's observation");
    let wasp::health::Outcome::Response(r) = &observation.outcome else {
        panic!("expected a response: {:?}", observation.outcome)
    };
    assert_eq!(&r.body[..], b"failing\n", "the body prefix is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_check_against_a_closed_port_marks_the_server_down() {
    let servers = Servers::new();
    let closed = servers.closed_port().await;
    let live = servers.echo("live").await;
    let proxy = Proxy::start(&format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"

        [backend.app]
        check = {{ interval = "100ms", timeout = "100ms" }}
        servers = [
          {{ name = "closed", addr = "{closed}", check = true }},
          {{ name = "live", addr = "{live}", check = true }},
        ]
        "#
    ))
    .await;
    let sc = state(&proxy, "app", closed);
    let down = wait_until(LIMIT, "closed port marked down", || !sc.is_up()).await;
    eprintln!("closed port marked down after {down:?} (first check, init-state up)");
    // Its first check is due within one 100ms interval (staggered), and one failure suffices.
    assert!(
        down <= Duration::from_millis(100) + MARGIN,
        "one failure suffices at start: {down:?}"
    );
    assert_eq!(
        last_reason(&sc).as_deref(),
        Some("layer4 connection refused")
    );
    assert!(answers(&proxy, 4).await.iter().all(|n| n == "live"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_keep_health_and_unchanged_checkers() {
    let servers = Servers::new();
    let closed = servers.closed_port().await;
    let live = servers.echo("live").await;
    let config = |check: &str, closed_checked: bool| {
        format!(
            r#"
            [frontend.web]
            bind = "127.0.0.1:0"
            default_backend = "app"

            [backend.app]
            check = {{ {check} }}
            servers = [
              {{ name = "closed", addr = "{closed}", check = {closed_checked} }},
              {{ name = "live", addr = "{live}" }},
            ]
            "#
        )
    };
    let proxy = Proxy::start(&config(r#"interval = "100ms""#, true)).await;
    let key = ServerKey {
        backend: "app".into(),
        server: "closed".into(),
        addr: closed,
    };
    let sc = state(&proxy, "app", closed);
    wait_until(LIMIT, "closed port marked down", || !sc.is_up()).await;
    let id = proxy.runtime.checker_id(&key).expect("a checker");

    std::fs::write(&proxy.path, config(r#"interval = "100ms""#, true)).unwrap();
    proxy.runtime.reload().await.expect("reload");
    assert_eq!(proxy.runtime.checker_id(&key), Some(id), "same parameters");
    assert!(!sc.is_up());

    std::fs::write(&proxy.path, config(r#"interval = "150ms""#, true)).unwrap();
    proxy.runtime.reload().await.expect("reload");
    let restarted = proxy.runtime.checker_id(&key).expect("a checker");
    assert_ne!(restarted, id, "changed parameters restart the checker");
    assert!(!sc.is_up(), "and keep the health");

    std::fs::write(&proxy.path, config(r#"interval = "150ms""#, false)).unwrap();
    proxy.runtime.reload().await.expect("reload");
    assert_eq!(proxy.runtime.checker_id(&key), None);
    assert!(sc.is_up(), "a server no longer checked counts as up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_checkers() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(tcp);
        }
    });
    let proxy = Proxy::start(&format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        [backend.app]
        check = {{ interval = "50ms" }}
        servers = [ {{ name = "s", addr = "{addr}", check = true }} ]
        "#
    ))
    .await;
    wait_until(LIMIT, "checks arrive", || {
        accepted.load(Ordering::SeqCst) >= 3
    })
    .await;
    proxy.runtime.shutdown(Duration::from_secs(1)).await;
    let after = accepted.load(Ordering::SeqCst);
    // Several intervals of silence; one connect already in the accept queue may still count.
    tokio::time::sleep(INTERVAL * 2 + Duration::from_millis(100)).await;
    assert!(accepted.load(Ordering::SeqCst) <= after + 1);
    server.abort();
}
