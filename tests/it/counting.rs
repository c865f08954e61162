//! The traffic counters behind the stats page and the metrics, against what really happened:
//! bytes in are what arrived, a server that breaks off its response body is that server's
//! error, and a backend that has no server to offer counts an error of its own.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Proxy, Servers, one_backend, raw, raw_status, wait_until};

const LIMIT: Duration = Duration::from_secs(10);

/// Sends `request` on a connection of its own and checks the answer's status; returns once the
/// frontend has counted the response.
async fn counted(proxy: &Proxy, request: &[u8], status: u16) {
    let answer = raw(proxy.addr(), request, LIMIT).await;
    assert_eq!(raw_status(&answer), status, "{answer}");
    let snapshot = proxy.runtime.proxy().snapshot();
    let frontend = &snapshot.frontends[0].state.traffic;
    wait_until(LIMIT, "the response counted", || {
        frontend.totals().responses.iter().sum::<u64>() == 1
    })
    .await;
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";

/// A server that reads whatever comes and never answers.
async fn sink(servers: &Servers) -> SocketAddr {
    servers
        .serve_each(|mut tcp| async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = tcp.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await
}

/// A client that announces a megabyte and sends 100 bytes before it goes: bytes in are the
/// 100 that arrived (and went on to the server), not the megabyte announced; a chunked upload,
/// which announces nothing, counts what it carried.
#[tokio::test]
async fn bytes_in_are_what_arrived() {
    let servers = Servers::new();
    let proxy = Proxy::start(&one_backend(
        &format!(r#"{{ name = "s", addr = "{}" }}"#, sink(&servers).await),
        "",
    ))
    .await;
    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    tcp.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n")
        .await
        .unwrap();
    tcp.write_all(&[b'x'; 100]).await.unwrap();
    drop(tcp);
    let snapshot = proxy.runtime.proxy().snapshot();
    let frontend = &snapshot.frontends[0].state.traffic;
    wait_until(LIMIT, "the abandoned upload counted", || {
        frontend.totals().responses.iter().sum::<u64>() == 1
    })
    .await;
    assert_eq!(frontend.totals().bytes_in, 100);
    assert_eq!(snapshot.backends[0].state.traffic.totals().bytes_in, 100);

    let proxy = Proxy::start(&one_backend(
        &format!(
            r#"{{ name = "s", addr = "{}" }}"#,
            servers.echo("node1").await
        ),
        "",
    ))
    .await;
    let chunked: Vec<u8> = b"POST /up HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\
          Transfer-Encoding: chunked\r\n\r\n3e8\r\n"
        .iter()
        .copied()
        .chain([b'y'; 1000])
        .chain(*b"\r\n0\r\n\r\n")
        .collect();
    counted(&proxy, &chunked, 200).await;
    let snapshot = proxy.runtime.proxy().snapshot();
    assert_eq!(snapshot.frontends[0].state.traffic.totals().bytes_in, 1000);
}

/// A server that sends a head for 100,000 bytes, 5,000 of them, and hangs up: the client gets
/// what came, and the server and its backend count an error (HAProxy's `eresp`).
#[tokio::test]
async fn a_server_that_breaks_off_its_body_counts_an_error() {
    let servers = Servers::new();
    let cut = servers
        .serve_each(|mut tcp| async move {
            let mut buf = [0u8; 4096];
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                .await;
            let _ = tcp.write_all(&[b'z'; 5000]).await;
        })
        .await;
    let proxy = Proxy::start(&one_backend(
        &format!(r#"{{ name = "s", addr = "{cut}" }}"#),
        "",
    ))
    .await;
    counted(&proxy, GET, 200).await;
    let snapshot = proxy.runtime.proxy().snapshot();
    let backend = &snapshot.backends[0];
    let server = &backend.servers[0].state.traffic;
    assert_eq!(server.totals().errors, 1);
    assert_eq!(backend.state.traffic.totals().errors, 1);
    assert_eq!(server.totals().bytes_out, 5000);
}

/// A backend whose only server is in maintenance answers 503 and counts it as its error, as
/// HAProxy counts a backend without an active server.
#[tokio::test]
async fn a_backend_with_no_server_to_offer_counts_an_error() {
    let servers = Servers::new();
    let proxy = Proxy::start(&one_backend(
        &format!(
            r#"{{ name = "s", addr = "{}", state = "maint" }}"#,
            servers.echo("node1").await
        ),
        "",
    ))
    .await;
    counted(&proxy, GET, 503).await;
    let snapshot = proxy.runtime.proxy().snapshot();
    assert_eq!(snapshot.backends[0].state.traffic.totals().errors, 1);
}
