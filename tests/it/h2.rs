//! HTTP/2 on both sides: what servers reached over HTTP/2 receive as `:authority` and `host`;
//! the header list limit wasp advertises to HTTP/2 clients.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::support::{Proxy, Servers, raw, raw_status, server_name};

/// An HTTP/2 (prior knowledge) server answering with the `:authority` it received (the URI's
/// authority, `-` without one) and its `host` headers (`-` for none), one per line.
async fn authority_reporter() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let authority = req.uri().authority().map_or("-", |a| a.as_str());
                    let hosts: Vec<&str> = req
                        .headers()
                        .get_all("host")
                        .iter()
                        .map(|v| v.to_str().unwrap_or("?"))
                        .collect();
                    let hosts = if hosts.is_empty() {
                        "-".to_owned()
                    } else {
                        hosts.join(",")
                    };
                    let body = format!("authority={authority}\nhost={hosts}\n");
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

fn to_h2_server(addr: SocketAddr) -> String {
    format!(
        r#"[frontend.web]
bind = "127.0.0.1:0"
default_backend = "h2"
[backend.h2]
proto = "h2"
servers = [{{ name = "s1", addr = "{addr}" }}]
"#
    )
}

#[tokio::test]
async fn h2_servers_get_the_canonical_authority_and_no_host_header() {
    let server = authority_reporter().await;
    let proxy = Proxy::start(&to_h2_server(server)).await;
    // HTTP/1.1 with a Host: the server gets it as `:authority`, not the server's address.
    let answer = raw(
        proxy.addr(),
        b"GET /a HTTP/1.1\r\nhost: App.Test:8080\r\nconnection: close\r\n\r\n",
        std::time::Duration::from_secs(5),
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert!(
        answer.ends_with("authority=App.Test:8080\nhost=-\n"),
        "{answer}"
    );
    // Absolute form: the URI's authority is the canonical one.
    let answer = raw(
        proxy.addr(),
        b"GET http://abs.test/a HTTP/1.1\r\nhost: other.test\r\nconnection: close\r\n\r\n",
        std::time::Duration::from_secs(5),
    )
    .await;
    assert!(answer.ends_with("authority=abs.test\nhost=-\n"), "{answer}");
    // HTTP/1.0 without a Host: the server's address stands in.
    let answer = raw(
        proxy.addr(),
        b"GET /a HTTP/1.0\r\n\r\n",
        std::time::Duration::from_secs(5),
    )
    .await;
    assert!(
        answer.ends_with(&format!("authority={server}\nhost=-\n")),
        "{answer}"
    );
}

/// Two wasps in a row over HTTP/2: the inner one checks that `:authority` and `host` agree
/// (and answers 400 when they do not), then gives its HTTP/1.1 server the client's host.
#[tokio::test]
async fn wasp_behind_wasp_over_h2_keeps_the_clients_host() {
    let servers = Servers::new();
    let echo = servers.echo("e1").await;
    let inner = Proxy::start(&format!(
        r#"[frontend.inner]
bind = "127.0.0.1:0"
default_backend = "echo"
[backend.echo]
servers = [{{ name = "e1", addr = "{echo}" }}]
"#
    ))
    .await;
    let outer = Proxy::start(&to_h2_server(inner.addr())).await;
    for _ in 0..2 {
        let answer = raw(
            outer.addr(),
            b"GET /chained HTTP/1.1\r\nhost: site.test\r\nconnection: close\r\n\r\n",
            std::time::Duration::from_secs(5),
        )
        .await;
        assert_eq!(raw_status(&answer), 200, "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
        assert_eq!(server_name(body), "e1");
        assert!(body.contains("\nhost: site.test\n"), "{body}");
    }
    // A request the outer wasp received over HTTP/2 goes the same way.
    let (status, _, body) = crate::support::send(
        &crate::support::h2_client(),
        Request::get(format!("http://{}/h2", outer.addr()))
            .body(crate::support::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains(&format!("\nhost: {}\n", outer.addr())),
        "{body}"
    );
}

/// A GET over HTTP/2 (prior knowledge) carrying `n` headers of about 1 KiB each (as HPACK
/// counts them: name, value and 32 bytes): its status, or the error that ended the stream.
async fn with_big_headers(proxy: SocketAddr, n: usize) -> Result<StatusCode, hyper::Error> {
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(format!("http://{proxy}/big-head"))
        .body(crate::support::empty())
        .unwrap();
    for i in 0..n {
        req.headers_mut().insert(
            http::HeaderName::try_from(format!("x-h{i:03}")).unwrap(),
            http::HeaderValue::from_str(&"v".repeat(995)).unwrap(),
        );
    }
    sender.send_request(req).await.map(|r| r.status())
}

#[tokio::test]
async fn h2_header_list_is_limited_to_16k() {
    let servers = Servers::new();
    let echo = servers.echo("e1").await;
    let proxy = Proxy::start(&format!(
        r#"[frontend.web]
bind = "127.0.0.1:0"
default_backend = "echo"
[backend.echo]
servers = [{{ name = "e1", addr = "{echo}" }}]
"#
    ))
    .await;
    assert_eq!(
        with_big_headers(proxy.addr(), 10).await.unwrap(),
        StatusCode::OK,
        "a 10 KiB header list passes"
    );
    // Answered 431 by the HTTP/2 layer: the request goes nowhere.
    assert_eq!(
        with_big_headers(proxy.addr(), 20).await.unwrap(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "a 20 KiB header list is refused"
    );
}
