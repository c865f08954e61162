//! Failover: one of three servers is killed and restarted during a 10-second run at 50
//! connections, and no client request fails; retries after refused and unanswered connects.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::{Servers, Unanswered, client, empty, server_name};
use http::Request;
use http_body_util::BodyExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_and_restarting_a_server_under_load_fails_no_request() {
    let servers = Servers::new();
    let a = servers.killable_echo("a").await;
    let mut b = servers.killable_echo("b").await;
    let c = servers.killable_echo("c").await;
    let proxy = crate::support::Proxy::start(&format!(
        r#"
        [global]
        access_log = false
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        [backend.app]
        timeout = {{ connect = "500ms", server = "5s" }}
        check = {{ interval = "200ms", timeout = "200ms", rise = 2, fall = 2 }}
        servers = [
          {{ name = "a", addr = "{}", check = true }},
          {{ name = "b", addr = "{}", check = true }},
          {{ name = "c", addr = "{}", check = true }},
        ]
        "#,
        a.addr, b.addr, c.addr
    ))
    .await;

    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let run_for = Duration::from_secs(10);
    let restarted_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let mut load = Vec::new();
    for _ in 0..50 {
        let (ok, failed, url, restarted_at) = (
            Arc::clone(&ok),
            Arc::clone(&failed),
            proxy.url("/"),
            Arc::clone(&restarted_at),
        );
        load.push(tokio::spawn(async move {
            let client = client();
            let mut after_restart: HashMap<String, u64> = HashMap::new();
            while start.elapsed() < run_for {
                let req = Request::get(&url).body(empty()).unwrap();
                let outcome = match client.request(req).await {
                    Ok(resp) if resp.status() == 200 => {
                        resp.into_body().collect().await.ok().map(|b| b.to_bytes())
                    }
                    _ => None,
                };
                match outcome {
                    Some(body) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        let restarted = *restarted_at.lock().unwrap();
                        if restarted.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) {
                            let name = server_name(&String::from_utf8_lossy(&body)).to_owned();
                            *after_restart.entry(name).or_insert(0) += 1;
                        }
                    }
                    None => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            after_restart
        }));
    }

    tokio::time::sleep_until((start + Duration::from_secs(3)).into()).await;
    b.kill().await;
    tokio::time::sleep_until((start + Duration::from_secs(6)).into()).await;
    b.revive().await;
    *restarted_at.lock().unwrap() = Some(Instant::now());

    let mut after_restart: HashMap<String, u64> = HashMap::new();
    for task in load {
        for (name, n) in task.await.unwrap() {
            *after_restart.entry(name).or_insert(0) += n;
        }
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} failed requests out of {}", ok + failed);
    assert!(ok > 1000, "the load ran: {ok} requests");
    assert!(
        after_restart.get("b").copied().unwrap_or(0) > 0,
        "b serves again after its restart: {after_restart:?}"
    );
}

/// Without `redispatch`, a retry goes to the same server after HAProxy's turn-around time
/// (`timeout connect`, at most a second), not at once: a server that refused may be restarting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_on_the_same_server_waits_its_turn_around_time() {
    let servers = Servers::new();
    let dead = servers.closed_port().await;
    let proxy = crate::support::Proxy::start(&format!(
        r#"
        [global]
        access_log = false
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        [backend.app]
        redispatch = false
        retries = 2
        timeout = {{ connect = "300ms" }}
        servers = [ {{ name = "dead", addr = "{dead}" }} ]
        "#
    ))
    .await;
    let start = Instant::now();
    let (status, _, _) = crate::support::get(&proxy.url("/")).await;
    assert_eq!(status.as_u16(), 503);
    assert!(
        start.elapsed() >= Duration::from_millis(600),
        "two retries, each after 300 ms: {:?}",
        start.elapsed()
    );
}

/// A connect that gets no answer (the server's listen queue is full) is cut at `timeout
/// connect`, counted against its server, and the request goes to the next server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_without_answer_times_out_and_the_next_server_answers() {
    let servers = Servers::new();
    let live = servers.echo("live").await;
    let silent = Unanswered::bind();
    let proxy = crate::support::Proxy::start(&format!(
        r#"
        [global]
        access_log = false
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        [backend.app]
        retries = 1
        timeout = {{ connect = "300ms" }}
        servers = [ {{ name = "silent", addr = "{}" }}, {{ name = "live", addr = "{live}" }} ]
        "#,
        silent.addr()
    ))
    .await;
    // Round-robin starts with the silent server.
    let (status, _, body) = tokio::time::timeout(
        Duration::from_secs(10),
        crate::support::get(&proxy.url("/")),
    )
    .await
    .expect("an answer once the connect timed out");
    assert_eq!(status.as_u16(), 200, "{body}");
    assert_eq!(server_name(&body), "live");
    let snapshot = proxy.runtime.proxy().snapshot();
    let servers = &snapshot.backends[0].servers;
    assert_eq!(servers[0].state.connect_failures(), 1, "the silent server");
    assert_eq!(servers[1].state.connect_failures(), 0, "the live server");
}

/// A retry after a failed connect does not wait for the failed attempt's own slot: with a
/// backend `maxconn` of 1, the request goes straight to the next server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_does_not_queue_behind_its_own_failed_attempt() {
    let servers = Servers::new();
    let dead = servers.closed_port().await;
    let live = servers.echo("live").await;
    let proxy = crate::support::Proxy::start(&format!(
        r#"
        [global]
        access_log = false
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        [backend.app]
        maxconn = 1
        retries = 1
        timeout = {{ queue = "2s" }}
        servers = [ {{ name = "dead", addr = "{dead}" }}, {{ name = "live", addr = "{live}" }} ]
        "#
    ))
    .await;
    let start = Instant::now();
    let (status, _, body) = crate::support::get(&proxy.url("/")).await;
    assert_eq!((status.as_u16(), server_name(&body)), (200, "live"));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "no queueing: {:?}",
        start.elapsed()
    );
}
