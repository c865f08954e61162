//! Every status of the error table provoked for real, plus header rewriting and a client that
//! half-closes its connection.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{
    Binary, Proxy, Servers, client, config_file, empty, field, get, h2_client, observed_one,
    one_backend, raw, raw_status, send, server_name, to_echo,
};

/// Sends `req` (which asks for JSON) and returns the status and what the echo server says
/// it received.
async fn echoed(req: Request<Full<Bytes>>) -> (StatusCode, serde_json::Value) {
    let (status, _, body) = send(&client(), req).await;
    let echo = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, echo)
}

#[tokio::test]
async fn refused_connect_tries_the_next_server() {
    let servers = Servers::new();
    let dead = servers.closed_port().await;
    let alive = servers.echo("alive").await;
    let proxy = Proxy::start(&one_backend(
        &format!(r#"{{ name = "dead", addr = "{dead}" }}, {{ name = "alive", addr = "{alive}" }}"#),
        "",
    ))
    .await;
    for _ in 0..4 {
        let (status, _, body) = get(&proxy.url("/")).await;
        assert_eq!(status, 200);
        assert_eq!(server_name(&body), "alive");
    }
}

#[tokio::test]
async fn no_server_reachable_is_503() {
    let servers = Servers::new();
    let dead1 = servers.closed_port().await;
    let dead2 = servers.closed_port().await;
    let proxy = Proxy::start(&one_backend(
        &format!(r#"{{ name = "a", addr = "{dead1}" }}, {{ name = "b", addr = "{dead2}" }}"#),
        "",
    ))
    .await;
    let (status, _, body) = get(&proxy.url("/")).await;
    assert_eq!(status, 503);
    assert_eq!(body, "503 Service Unavailable\n");
}

#[tokio::test]
async fn no_matching_rule_and_no_default_is_503() {
    let servers = Servers::new();
    let echo = servers.echo("e").await;
    let proxy = Proxy::start(&format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        acl = {{ api = "path_beg /api" }}
        use_backend = [ {{ backend = "api", if = "api" }} ]

        [backend.api]
        servers = [ {{ name = "e", addr = "{echo}" }} ]
        "#
    ))
    .await;
    assert_eq!(get(&proxy.url("/api/x")).await.0, 200);
    assert_eq!(get(&proxy.url("/elsewhere")).await.0, 503);
}

#[tokio::test]
async fn upstream_that_never_answers_is_504_within_server_timeout() {
    let servers = Servers::new();
    let slow = servers.behaviour().await;
    let proxy = Proxy::start(&one_backend(
        &format!(r#"{{ name = "slow", addr = "{slow}" }}"#),
        "",
    ))
    .await;
    let start = Instant::now();
    let (status, _, _) = get(&proxy.url("/hang")).await;
    let took = start.elapsed();
    assert_eq!(status, 504);
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "took {took:?}"
    );
}

#[tokio::test]
async fn upstream_closing_early_is_502() {
    let servers = Servers::new();
    let closer = servers.closer().await;
    let proxy = Proxy::start(&one_backend(
        &format!(r#"{{ name = "c", addr = "{closer}" }}"#),
        "",
    ))
    .await;
    let (status, _, body) = get(&proxy.url("/")).await;
    assert_eq!(status, 502);
    assert_eq!(body, "502 Bad Gateway\n");
}

/// A 504 or a 502 from a server that took the connection: the access log has the connect time
/// (the server was reached), as HAProxy logs `Tc` once connected.
#[tokio::test]
async fn a_server_reached_without_an_answer_has_its_connect_time_logged() {
    let servers = Servers::new();
    let slow = servers.behaviour().await;
    let closer = servers.closer().await;
    let config = format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "closer"
        acl = {{ hang = "path_beg /hang" }}
        use_backend = [ {{ backend = "slow", if = "hang" }} ]

        [backend.slow]
        timeout = {{ server = "300ms" }}
        servers = [ {{ name = "slow", addr = "{slow}" }} ]
        [backend.closer]
        servers = [ {{ name = "closer", addr = "{closer}" }} ]
        "#
    );
    let (_dir, path) = config_file(&config);
    let wasp = Binary::run(&path);
    let limit = Duration::from_secs(20);
    for (path, status) in [("/hang", "504"), ("/closed", "502")] {
        let (got, _, _) = get(&format!("http://{}{path}", wasp.addr)).await;
        assert_eq!(got.as_str(), status);
        let line = wasp.wait_for(&format!("path=\"{path}\""), limit);
        assert_eq!(field(&line, "status"), status, "{line}");
        let t_connect: f64 = field(&line, "t_connect").parse().unwrap_or(-1.0);
        assert!(t_connect >= 0.0, "t_connect logged: {line}");
    }
}

/// HAProxy's default (no `abortonclose`): a client may shut down its sending side once its
/// request is out, and still gets the answer.
#[tokio::test]
async fn a_client_that_half_closes_after_its_request_still_gets_the_response() {
    let servers = Servers::new();
    let (held, mut arrived, gate) = servers.gated("held").await;
    let proxy = Proxy::start(&one_backend(
        &format!(r#"{{ name = "held", addr = "{held}" }}"#),
        "",
    ))
    .await;
    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: wasp.test\r\n\r\n")
        .await
        .unwrap();
    tcp.shutdown().await.unwrap();
    // The server holds its answer until the request is known to have reached it, so the
    // proxy has the client's EOF long before it has an answer.
    // (Bounded only so that a regression fails rather than hangs.)
    let limit = Duration::from_secs(10);
    let mut answer = Vec::new();
    tokio::time::timeout(limit, async {
        tokio::select! {
            _ = arrived.recv() => {}
            read = tcp.read_to_end(&mut answer) => panic!(
                "the proxy closed the connection before the request reached the server ({read:?}): {:?}",
                String::from_utf8_lossy(&answer)
            ),
        }
    })
    .await
    .expect("the request reaches the server");
    gate.open(1);
    tokio::time::timeout(limit, tcp.read_to_end(&mut answer))
        .await
        .expect("the proxy closes the connection after the response")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(raw_status(&answer), 200, "{answer:?}");
    assert!(answer.ends_with("held\nreleased\n"), "{answer:?}");
}

#[tokio::test]
async fn a_get_a_server_dropped_unanswered_is_replayed_with_the_same_headers() {
    let servers = Servers::new();
    let closer = servers.closer().await;
    let echo = servers.echo("e").await;
    let proxy = Proxy::start(&one_backend(
        &format!(r#"{{ name = "c", addr = "{closer}" }}, {{ name = "e", addr = "{echo}" }}"#),
        "",
    ))
    .await;
    // Round-robin starts on the closer (the first server), so at least the first request is
    // replayed on the echo server, with headers rebuilt for the second attempt.
    for i in 0..4 {
        let req = Request::get(proxy.url("/replay?q=1"))
            .header("host", "shop.example")
            .header("accept", "application/json")
            .header("x-one", "1")
            .header("x-two", "a")
            .header("x-two", "b")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-real-ip", "6.6.6.6")
            .header("connection", "keep-alive, x-private")
            .header("x-private", "secret")
            .body(empty())
            .unwrap();
        let (status, echo) = echoed(req).await;
        assert_eq!(status, 200, "request {i}: {echo}");
        assert_eq!(echo["path"], "/replay", "request {i}");
        assert_eq!(echo["query"], "q=1", "request {i}");
        let h = &echo["headers"];
        assert_eq!(h["host"], "shop.example", "request {i}: {h}");
        assert_eq!(h["x-one"], "1", "request {i}: {h}");
        assert_eq!(h["x-two"], "a, b", "request {i}: {h}");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1", "request {i}: {h}");
        assert_eq!(h["x-forwarded-proto"], "http", "request {i}: {h}");
        assert_eq!(h["x-forwarded-host"], "shop.example", "request {i}: {h}");
        assert!(
            h.get("x-real-ip").is_none() && h.get("x-private").is_none(),
            "request {i}: {h}"
        );
    }
    // A request with a body is not replayed: the server may have acted on it.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let req = Request::post(proxy.url("/once"))
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap();
        statuses.push(send(&client(), req).await.0);
    }
    statuses.sort();
    assert_eq!(statuses, [200, 502], "one to each server");
}

/// A server that answers the first request of each connection and keeps the connection open,
/// then takes the next request on it and closes without an answer: the race of an idle
/// connection the server closes as a request goes out on it.
async fn answers_once_per_connection() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                let mut answered = false;
                while let Ok(n @ 1..) = tcp.read(&mut buf).await {
                    seen.extend_from_slice(&buf[..n]);
                    if !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        continue;
                    }
                    if answered {
                        return;
                    }
                    // Whatever follows the first head (its body, if any) is not a head.
                    answered = true;
                    seen.clear();
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if tcp.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// HAProxy's `http-reuse safe`: a client connection's first request that may not be replayed
/// (here a POST) goes out on a new server connection, not on an idle one the server may be
/// closing; on an idle one it got a 502.
#[tokio::test]
async fn a_first_request_that_cannot_be_replayed_takes_a_new_server_connection() {
    let server = answers_once_per_connection().await;
    let proxy = Proxy::start(&one_backend(
        &format!(r#"{{ name = "s", addr = "{server}" }}"#),
        "",
    ))
    .await;
    // Leaves an idle connection in the pool, which the server closes at its next request.
    let (status, _, body) = get(&proxy.url("/first")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    let post = Request::post(proxy.url("/once"))
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    let (status, _, body) = send(&client(), post).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
}

#[tokio::test]
async fn malformed_requests_are_400() {
    let servers = Servers::new();
    let proxy = to_echo(&servers, "").await;
    let limit = Duration::from_secs(5);
    let garbage = raw(proxy.addr(), b"GARBAGE\x01 / HTTP/1.1\r\n\r\n", limit).await;
    assert_eq!(raw_status(&garbage), 400, "{garbage}");
    let no_host = raw(proxy.addr(), b"GET / HTTP/1.1\r\n\r\n", limit).await;
    assert_eq!(raw_status(&no_host), 400, "{no_host}");
    let two_hosts = raw(
        proxy.addr(),
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        limit,
    )
    .await;
    assert_eq!(raw_status(&two_hosts), 400, "{two_hosts}");
    let traversal = raw(
        proxy.addr(),
        b"GET /item/..%2Fadmin HTTP/1.1\r\nHost: a\r\n\r\n",
        limit,
    )
    .await;
    assert_eq!(raw_status(&traversal), 400, "{traversal}");
    let parameter = raw(
        proxy.addr(),
        b"GET /item/..;/admin HTTP/1.1\r\nHost: a\r\n\r\n",
        limit,
    )
    .await;
    assert_eq!(raw_status(&parameter), 400, "{parameter}");
}

#[tokio::test]
async fn oversized_head_is_431() {
    let servers = Servers::new();
    let proxy = to_echo(&servers, "").await;
    // Larger than `max_header_size` (64 KiB) in 50 headers, well within the count limit.
    let mut req = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..50 {
        req.extend_from_slice(format!("x-filler-{i}: {}\r\n", "y".repeat(1400)).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    assert!(req.len() > 64 * 1024);
    let answer = raw(proxy.addr(), &req, Duration::from_secs(5)).await;
    assert_eq!(raw_status(&answer), 431, "{answer}");
    assert!(!answer.contains("x-server"), "answered by wasp: {answer}");
    let ok = raw(
        proxy.addr(),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(raw_status(&ok), 200);
}

/// `lead` (a request or status line and headers, each line ending in CRLF), one filler
/// header and the blank line: a head of exactly `len` bytes.
fn head_of(lead: &str, len: usize) -> Vec<u8> {
    let fill = len - lead.len() - "x-filler: \r\n\r\n".len();
    format!("{lead}x-filler: {}\r\n\r\n", "y".repeat(fill)).into_bytes()
}

/// Sends `head` on `tcp` and reads one answer (up to its blank line and a `Content-Length`
/// body); its status.
async fn exchange(tcp: &mut TcpStream, head: &[u8]) -> u16 {
    tcp.write_all(head).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed without an answer");
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        if got.len() >= end + 4 + length {
            return raw_status(&head);
        }
    }
}

/// `max_header_size` is exact, however the head arrives: a head of that many bytes is served,
/// one byte more is a 431, on a new connection and on one that served a request before.
#[tokio::test]
async fn a_request_head_may_be_max_header_size_long_and_not_a_byte_more() {
    let servers = Servers::new();
    let proxy = to_echo(&servers, "").await;
    let lead = "GET / HTTP/1.1\r\nHost: a\r\n";
    let limit = 64 * 1024;
    for len in [limit, limit + 1] {
        let want = if len == limit { 200 } else { 431 };
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        let status = exchange(&mut fresh, &head_of(lead, len)).await;
        assert_eq!(status, want, "{len} bytes, new connection");
        let mut used = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(exchange(&mut used, &head_of(lead, 100)).await, 200);
        let status = exchange(&mut used, &head_of(lead, len)).await;
        assert_eq!(status, want, "{len} bytes, second request");
    }
}

/// A server's response head may be 64 KiB long and not a byte more (502), on a new server
/// connection and on a pooled one.
#[tokio::test]
async fn a_response_head_may_be_64_kib_long_and_not_a_byte_more() {
    let servers = Servers::new();
    let limit = 64 * 1024;
    // `/big/N`: a head of N bytes; anything else a small answer.
    let server = servers
        .serve_each(|mut tcp| async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                    continue;
                };
                let head = String::from_utf8_lossy(&got[..end]).into_owned();
                got.drain(..end + 4);
                let lead = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n";
                let answer = match head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.strip_prefix("/big/"))
                {
                    Some(n) => head_of(lead, n.parse().unwrap()),
                    None => head_of(lead, 100),
                };
                if tcp.write_all(&answer).await.is_err() || tcp.write_all(b"ok").await.is_err() {
                    return;
                }
            }
        })
        .await;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes();
    for len in [limit, limit + 1] {
        let want = if len == limit { 200 } else { 502 };
        // A proxy of its own: its first request makes a new server connection.
        let proxy = Proxy::start(&one_backend(
            &format!(r#"{{ name = "s", addr = "{server}" }}"#),
            "",
        ))
        .await;
        let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            exchange(&mut tcp, &get(&format!("/big/{len}"))).await,
            want,
            "{len} bytes, new"
        );
        // Served on a new server connection too when the 502 closed the last one; the next
        // request goes out on the connection it leaves in the pool.
        assert_eq!(exchange(&mut tcp, &get("/small")).await, 200);
        assert_eq!(
            exchange(&mut tcp, &get(&format!("/big/{len}"))).await,
            want,
            "{len} bytes, pooled"
        );
    }
}

#[tokio::test]
async fn more_than_100_header_lines_is_431() {
    let servers = Servers::new();
    // No forwarding headers: the server (which takes 100 lines too) gets exactly what was sent,
    // less `Connection`.
    let proxy = to_echo(&servers, "forwardfor = false").await;
    let head = |lines: usize| {
        let mut req = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n".to_vec();
        for i in 2..lines {
            req.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        req
    };
    let ok = raw(proxy.addr(), &head(100), Duration::from_secs(5)).await;
    assert_eq!(raw_status(&ok), 200, "{ok}");
    let refused = raw(proxy.addr(), &head(101), Duration::from_secs(5)).await;
    assert_eq!(raw_status(&refused), 431, "{refused}");
    assert!(!refused.contains("x-server"), "answered by wasp: {refused}");
}

#[tokio::test]
async fn slow_client_head_is_cut_with_408_within_http_request() {
    let servers = Servers::new();
    let proxy = to_echo(&servers, r#"timeout = { http_request = "1s" }"#).await;
    let start = Instant::now();
    // Half a head, then silence: a slowloris.
    let answer = raw(
        proxy.addr(),
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ",
        Duration::from_secs(10),
    )
    .await;
    let took = start.elapsed();
    assert_eq!(raw_status(&answer), 408, "{answer}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(2),
        "took {took:?}"
    );
    // Its body is counted in the frontend's bytes out, as wasp's other answers are.
    let body = answer
        .split_once("\r\n\r\n")
        .map_or(0, |(_, b)| b.len() as u64);
    let state = proxy.runtime.states().frontend("web");
    crate::support::wait_until(Duration::from_secs(10), "the 408 counted", || {
        state.traffic.totals().responses[3] == 1
    })
    .await;
    assert_eq!((body, state.traffic.totals().bytes_out), (16, 16));
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_set() {
    let servers = Servers::new();
    let proxy = to_echo(&servers, "").await;
    let req = Request::get(proxy.url("/x"))
        .header("host", "Shop.Example:8080")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "6.6.6.6")
        .header("accept", "application/json")
        .body(empty())
        .unwrap();
    let (status, echo) = echoed(req).await;
    assert_eq!(status, 200);
    let h = &echo["headers"];
    assert_eq!(h["host"], "Shop.Example:8080", "Host passes through");
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "client-supplied XFF replaced"
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "Shop.Example:8080");
    assert!(
        h.get("x-private").is_none() && h.get("keep-alive").is_none(),
        "{h}"
    );
    assert_ne!(h["connection"], "keep-alive, x-private");
}

#[tokio::test]
async fn a_connection_header_naming_host_does_not_take_host_away() {
    let servers = Servers::new();
    let proxy = to_echo(&servers, "").await;
    let req = Request::get(proxy.url("/"))
        .header("host", "shop.example")
        .header("connection", "keep-alive, Host")
        .header("accept", "application/json")
        .body(empty())
        .unwrap();
    let (status, echo) = echoed(req).await;
    assert_eq!(status, 200);
    let h = &echo["headers"];
    assert_eq!(h["host"], "shop.example", "{h}");
    assert_eq!(h["x-forwarded-host"], "shop.example", "{h}");
}

#[tokio::test]
async fn forwardfor_false_adds_nothing() {
    let servers = Servers::new();
    let proxy = to_echo(&servers, "forwardfor = false").await;
    let req = Request::get(proxy.url("/"))
        .header("accept", "application/json")
        .body(empty())
        .unwrap();
    let (_, echo) = echoed(req).await;
    assert!(echo["headers"].get("x-forwarded-for").is_none(), "{echo}");
}

#[tokio::test]
async fn normalised_path_is_what_routing_and_server_see() {
    let servers = Servers::new();
    let items = servers.echo("items").await;
    let admin = servers.echo("admin").await;
    let proxy = Proxy::start(&format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "admin"
        acl = {{ is_item = "path_beg /item" }}
        use_backend = [ {{ backend = "items", if = "is_item" }} ]

        [backend.items]
        servers = [ {{ name = "i", addr = "{items}" }} ]
        [backend.admin]
        servers = [ {{ name = "a", addr = "{admin}" }} ]
        "#
    ))
    .await;
    let answer = raw(
        proxy.addr(),
        b"GET /item/../admin?x=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(raw_status(&answer), 200);
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    assert_eq!(server_name(body), "admin", "routed on the normalised path");
    assert!(
        body.contains("GET /admin?x=1 "),
        "forwarded normalised: {body}"
    );
}

#[tokio::test]
async fn an_http2_clients_split_cookie_is_joined_for_routing_and_the_server() {
    let servers = Servers::new();
    let joined = servers.echo("joined").await;
    let split = servers.echo("split").await;
    // `=1;` occurs only in the joined value, in neither field alone.
    let proxy = Proxy::start(&format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "split"
        acl = {{ joined = "hdr_sub(cookie) =1;" }}
        use_backend = [ {{ backend = "joined", if = "joined" }} ]

        [backend.joined]
        servers = [ {{ name = "j", addr = "{joined}" }} ]
        [backend.split]
        servers = [ {{ name = "s", addr = "{split}" }} ]
        "#
    ))
    .await;
    let req = Request::get(proxy.url("/"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(empty())
        .unwrap();
    let (status, _, body) = send(&h2_client(), req).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        server_name(&body),
        "joined",
        "routed on the joined value: {body}"
    );
    let cookies: Vec<&str> = body
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("cookie:"))
        .collect();
    assert_eq!(
        cookies,
        ["cookie: a=1; b=2"],
        "one Cookie header reaches the HTTP/1.1 server: {body}"
    );
}

/// A stalled upload is the client's delay, not the server's: with `timeout server` shorter
/// than `timeout client` it still ends at `client` with a 408, and a server judged by live
/// traffic is not marked down for it (HAProxy answers 504 and counts it against the server, so
/// that any client could take servers down).
#[tokio::test]
async fn a_stalled_upload_is_not_the_servers_timeout() {
    let servers = Servers::new();
    let sink = servers.behaviour().await;
    let config = observed_one("sink", sink, 1)
        .replace(
            "default_backend = \"app\"",
            "default_backend = \"app\"\n        timeout = { client = \"1s\" }",
        )
        .replace(
            "observe = \"layer7\"",
            "observe = \"layer7\"\n        timeout = { server = \"300ms\" }",
        );
    let proxy = Proxy::start(&config).await;
    // Promises 100 bytes, sends 10, then stalls.
    let answer = raw(
        proxy.addr(),
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(raw_status(&answer), 408, "{answer}");
    // Not marked down (one observed error would do it): the next request is served.
    let (status, _, body) = get(&proxy.url("/")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "ok"));
}

#[tokio::test]
async fn stalled_request_body_is_408_after_client_timeout() {
    let servers = Servers::new();
    let sink = servers.behaviour().await;
    let proxy = Proxy::start(&one_backend(
        &format!(r#"{{ name = "sink", addr = "{sink}" }}"#),
        r#"timeout = { client = "1s" }"#,
    ))
    .await;
    let start = Instant::now();
    // Promises 100 bytes, sends 10, then stalls.
    let answer = raw(
        proxy.addr(),
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789",
        Duration::from_secs(10),
    )
    .await;
    let took = start.elapsed();
    assert_eq!(raw_status(&answer), 408, "{answer}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(2),
        "took {took:?}"
    );
}
