//! Bodies stream through the proxy both ways, never buffered whole: a 1 GiB upload and a
//! 1 GiB download leave the proxy's resident memory within 50 MiB of idle.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;

use crate::support::{Binary, Servers, config_file, rss_kib_of, streamed, streaming_client};

const GIB: u64 = 1024 * 1024 * 1024;
const BUDGET_KIB: u64 = 50 * 1024;

/// Samples the peak RSS of `pid` until `stop` is set.
fn sample_peak(
    pid: u32,
    peak: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Some(kib) = rss_kib_of(pid) {
                peak.fetch_max(kib, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_up_and_down_with_bounded_memory() {
    let servers = Servers::new();
    let backend = servers.behaviour().await;
    let (_dir, path) = config_file(&format!(
        r#"
            [global]
            access_log = false
            [frontend.web]
            bind = "127.0.0.1:0"
            default_backend = "app"
            [backend.app]
            servers = [ {{ name = "b", addr = "{backend}" }} ]
            "#
    ));
    let wasp = Binary::run(&path);
    let client = streaming_client();
    // Warm up one request so that idle includes the pools and buffers every request needs.
    let warm = Request::get(format!("http://{}/bytes/1024", wasp.addr))
        .body(streamed(0))
        .unwrap();
    client
        .request(warm)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    let idle = wasp.rss_kib();

    let peak = Arc::new(AtomicU64::new(idle));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_peak(wasp.child.id(), Arc::clone(&peak), Arc::clone(&stop));

    let upload = Request::post(format!("http://{}/sink", wasp.addr))
        .body(streamed(GIB))
        .unwrap();
    let resp = client.request(upload).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-body-bytes"],
        GIB.to_string().as_str(),
        "the server got every byte"
    );

    let download = Request::get(format!("http://{}/bytes/{GIB}", wasp.addr))
        .body(streamed(0))
        .unwrap();
    let resp = client.request(download).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        got += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(got, GIB);

    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak.saturating_sub(idle) < BUDGET_KIB,
        "idle {idle} KiB, peak {peak} KiB"
    );
}
