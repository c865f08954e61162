//! Bodies stream through the proxy both ways, never buffered whole: a 1 GiB upload and a
//! 1 GiB download leave the proxy's resident memory within 50 MiB of idle; a client that stops
//! reading a large response and reads on later gets all of it.

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

/// wasp in front of the one server `backend` (and the config's directory, kept until dropped).
fn in_front_of(backend: std::net::SocketAddr) -> (tempfile::TempDir, Binary) {
    let (dir, path) = config_file(&format!(
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
    (dir, Binary::run(&path))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_up_and_down_with_bounded_memory() {
    let servers = Servers::new();
    let backend = servers.behaviour().await;
    let (_dir, wasp) = in_front_of(backend);
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

/// Reads one HTTP/1.1 response with a `Content-Length` body from `tcp` (its status and body),
/// stopping for `pause` when the body read so far reaches each of `stops` (a client that stops
/// reading now and then).
async fn read_response(
    tcp: &mut tokio::net::TcpStream,
    stops: &[usize],
    pause: Duration,
) -> (u16, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let head_end = loop {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the head ended");
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .expect("a content-length")
        .trim()
        .parse()
        .unwrap();
    let mut body = got.split_off(head_end);
    let mut stops = stops.iter().peekable();
    while body.len() < length {
        if stops.next_if(|&&at| body.len() >= at).is_some() {
            tokio::time::sleep(pause).await;
        }
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed after {} of {length} body bytes", body.len());
        body.extend_from_slice(&buf[..n]);
    }
    assert_eq!(body.len(), length, "no more than the body");
    (status, body)
}

/// A client that stops reading a large response twice: each stop lasts long enough for the
/// socket buffers to fill and the proxy's writes to be refused (the response body then holds
/// its data back), and the reads after it let the writes through again. The whole body
/// arrives, and the connection serves the next request.
#[tokio::test]
async fn a_client_that_stops_reading_gets_all_of_a_large_response_and_the_next_one() {
    use tokio::io::AsyncWriteExt;
    let servers = Servers::new();
    let backend = servers.behaviour().await;
    let (_dir, wasp) = in_front_of(backend);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(wasp.addr).await.unwrap();
    // More than the sockets' buffers on the way can hold (a few MiB each at most).
    let len = 64 * 1024 * 1024;
    let exchange = async {
        tcp.write_all(format!("GET /bytes/{len} HTTP/1.1\r\nhost: a\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let stops = [0, 1024 * 1024];
        let (status, body) = read_response(&mut tcp, &stops, Duration::from_millis(500)).await;
        assert_eq!(status, 200);
        assert_eq!(body.len(), len);
        assert!(body.iter().all(|&b| b == b'u'), "the server's bytes");
        tcp.write_all(b"GET /bytes/10 HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let (status, body) = read_response(&mut tcp, &[], Duration::ZERO).await;
        assert_eq!((status, body.len()), (200, 10));
    };
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .expect("the responses came");
}
