//! HTTP/1 messages at the edges of the rules: which Host routing and the server see, request
//! bodies that fail or take long, and server responses whose framing or version the client
//! must not get as they came.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{
    Proxy, Servers, channel_body, get, observed_one, one_backend, raw, raw_status, server_name,
    streaming_client, to_echo,
};

const WAIT: Duration = Duration::from_secs(10);
/// A GET on a connection the client closes after it.
const GET_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";

/// A proxy in front of a [`Servers::scripted`] server answering `answer`.
async fn to_scripted(
    servers: &Servers,
    answer: &'static [u8],
) -> (Proxy, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (addr, heads) = servers.scripted(answer).await;
    let proxy = Proxy::start(&one_backend(
        &format!(r#"{{ name = "s", addr = "{addr}" }}"#),
        "",
    ))
    .await;
    (proxy, heads)
}

/// Reads from `tcp` until what was read ends with `end`; `what` names it in a failure.
async fn read_until(tcp: &mut TcpStream, end: &[u8], what: &str) -> Vec<u8> {
    let mut read = Vec::new();
    while !read.ends_with(end) {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("{what} in time"))
            .unwrap();
        assert!(n > 0, "the proxy closed the connection before {what}");
        read.extend_from_slice(&chunk[..n]);
    }
    read
}

/// Every value of header `name` in a raw head, in order (names compared in any case).
fn header_values<'h>(head: &'h str, name: &str) -> Vec<&'h str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

/// The value of header `name` in a raw head (the first one).
fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    header_values(head, name).first().copied()
}

#[tokio::test]
async fn hdr_host_routes_on_the_host_the_server_gets() {
    let servers = Servers::new();
    let (public, admin) = (servers.echo("public").await, servers.echo("admin").await);
    let proxy = Proxy::start(&format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "public"
        acl = {{ is_admin = "hdr(host) -i admin.example" }}
        use_backend = [ {{ backend = "admin", if = "is_admin" }} ]

        [backend.public]
        servers = [ {{ name = "public", addr = "{public}" }} ]
        [backend.admin]
        servers = [ {{ name = "admin", addr = "{admin}" }} ]
        "#
    ))
    .await;
    // An absolute-form target's authority wins over Host (RFC 9112, 3.2.2): for the server,
    // and so for `hdr(host)`.
    for (target, host, expect) in [
        ("http://admin.example/", "public.example", "admin"),
        ("http://public.example/", "admin.example", "public"),
    ] {
        let answer = raw(
            proxy.addr(),
            format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
            WAIT,
        )
        .await;
        assert_eq!(raw_status(&answer), 200, "{answer}");
        let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
        assert_eq!(
            server_name(body),
            expect,
            "{target} with Host {host}: {answer}"
        );
        let authority = target.trim_start_matches("http://").trim_end_matches('/');
        assert!(
            answer.contains(&format!("host: {authority}")),
            "the server got Host {authority}: {answer}"
        );
    }
}

#[tokio::test]
async fn query_and_url_param_route_as_in_haproxy_and_the_server_gets_the_target() {
    let servers = Servers::new();
    let (plain, query, param) = (
        servers.echo("plain").await,
        servers.echo("query").await,
        servers.echo("param").await,
    );
    let proxy = Proxy::start(&format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "plain"
        acl = {{ q_abc = "urlp(q) abc", has_query = "query -m found" }}
        use_backend = [
          {{ backend = "param", if = "q_abc" }},
          {{ backend = "query", if = "has_query" }},
        ]

        [backend.plain]
        servers = [ {{ name = "plain", addr = "{plain}" }} ]
        [backend.query]
        servers = [ {{ name = "query", addr = "{query}" }} ]
        [backend.param]
        servers = [ {{ name = "param", addr = "{param}" }} ]
        "#
    ))
    .await;
    // A bare `?` is an empty query (found), no `?` none; `;` and `?` end a parameter. The
    // server gets the target as normalised, its query as sent.
    for (target, expect, forwarded) in [
        ("/x", "plain", "GET /x "),
        ("/x?", "query", "GET /x? "),
        ("/a/../x?", "query", "GET /x? "),
        ("/x?q=abcd", "query", "GET /x?q=abcd "),
        ("/u?x=1;q=abc", "param", "GET /u?x=1;q=abc "),
        ("/u??q=abc", "param", "GET /u??q=abc "),
        ("/u?q=z?q=abc", "param", "GET /u?q=z?q=abc "),
    ] {
        let answer = raw(
            proxy.addr(),
            format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
            WAIT,
        )
        .await;
        assert_eq!(raw_status(&answer), 200, "{target}: {answer}");
        let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
        assert_eq!(server_name(body), expect, "{target}: {answer}");
        assert!(body.contains(forwarded), "{target}: {answer}");
    }
}

/// A GET or HEAD body of unknown length (chunked from an HTTP/1.1 client) reaches an HTTP/1.1
/// server chunked, as HAProxy forwards it: hyper alone would frame it as no body at all.
#[tokio::test]
async fn a_chunked_get_body_reaches_the_server() {
    let servers = Servers::new();
    let proxy = to_echo(&servers, "").await;
    for method in ["GET", "HEAD"] {
        let answer = raw(
            proxy.addr(),
            format!(
                "{method} /search HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
                 Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
            .as_bytes(),
            WAIT,
        )
        .await;
        assert_eq!(raw_status(&answer), 200, "{method}: {answer}");
        if method == "GET" {
            assert!(answer.contains("body: 11 bytes"), "{answer}");
        }
    }
    // Without a body, no framing is added.
    let answer = raw(proxy.addr(), GET_CLOSE, WAIT).await;
    assert!(answer.contains("body: 0 bytes"), "{answer}");
    assert!(
        !answer
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked\n"),
        "{answer}"
    );
}

#[tokio::test]
async fn targets_and_hosts_that_name_no_one_place_are_400() {
    let servers = Servers::new();
    let proxy = to_echo(&servers, "").await;
    for request in [
        // Authority-form is CONNECT's; hyper takes it for any method.
        "GET admin.example:80 HTTP/1.1\r\nHost: admin.example\r\n\r\n",
        // HTTP/1.1 needs Host even with an absolute-form target.
        "GET http://admin.example/ HTTP/1.1\r\n\r\n",
        // No TCP port is that large.
        "GET / HTTP/1.1\r\nHost: admin.example:99999\r\n\r\n",
        "GET http://admin.example:65536/ HTTP/1.1\r\nHost: admin.example\r\n\r\n",
    ] {
        let answer = raw(proxy.addr(), request.as_bytes(), WAIT).await;
        assert_eq!(raw_status(&answer), 400, "{request:?}: {answer}");
    }
}

#[tokio::test]
async fn an_http10_request_without_host_reaches_the_server_with_one() {
    let servers = Servers::new();
    let (proxy, mut heads) =
        to_scripted(&servers, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let answer = raw(proxy.addr(), b"GET /old HTTP/1.0\r\n\r\n", WAIT).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let head = heads.recv().await.unwrap();
    assert!(head.starts_with("GET /old HTTP/1.1\r\n"), "{head}");
    let host = header(&head, "host").unwrap_or_else(|| panic!("no Host sent: {head}"));
    assert!(host.starts_with("127.0.0.1:"), "{head}");
}

#[tokio::test]
async fn a_connection_header_with_a_non_ascii_token_still_strips_what_it_names() {
    let servers = Servers::new();
    let (proxy, mut heads) = to_scripted(
        &servers,
        b"HTTP/1.1 200 OK\r\nConnection: x-internal, \xe9t\xe9\r\nX-Internal: server-only\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    let answer = raw(
        proxy.addr(),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Secret, \xe9t\xe9\r\nX-Secret: client-only\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("x-internal"),
        "{answer}"
    );
    let head = heads.recv().await.unwrap();
    assert!(header(&head, "x-secret").is_none(), "{head}");
}

#[tokio::test]
async fn a_response_with_a_length_and_chunked_framing_goes_by_the_chunks() {
    let servers = Servers::new();
    // The length says 50, the chunks carry 3 bytes: chunked wins (RFC 9112, 6.3), and the
    // length must not reach the client, which would wait for 47 more bytes.
    let (proxy, _heads) = to_scripted(
        &servers,
        b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    let (status, headers, body) = get(&proxy.url("/")).await;
    assert_eq!(status, 200);
    assert_eq!(body, "abc");
    assert_ne!(
        headers.get("content-length").map(|v| v.as_bytes()),
        Some(&b"50"[..]),
        "{headers:?}"
    );
}

#[tokio::test]
async fn transfer_codings_besides_chunked_are_refused_both_ways() {
    let servers = Servers::new();
    let (proxy, mut heads) = to_scripted(
        &servers,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    // Re-framed, the request would lose its gzip coding: 400, and nothing reaches the server.
    let answer = raw(
        proxy.addr(),
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(raw_status(&answer), 400, "{answer}");
    assert!(heads.try_recv().is_err(), "the request reached the server");
    // The same for the server's response: 502.
    let (status, _, _) = get(&proxy.url("/")).await;
    assert_eq!(status, 502);
}

#[tokio::test]
async fn an_http10_server_does_not_end_the_clients_keep_alive() {
    let servers = Servers::new();
    let (proxy, _heads) =
        to_scripted(&servers, b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    for n in 0..2 {
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let answer = read_until(&mut tcp, b"\r\n\r\nok", &format!("answer {n}")).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "request {n}: {answer}");
    }
}

#[tokio::test]
async fn a_malformed_request_body_is_400_and_not_held_against_the_server() {
    let servers = Servers::new();
    let echo = servers.echo("e").await;
    // One observed error would mark the server DOWN (and every request after it 503).
    let proxy = Proxy::start(&observed_one("e", echo, 1)).await;
    for body in [
        &b"zz\r\nabc\r\n0\r\n\r\n"[..],
        b"3\r\nabcdef\r\n0\r\n\r\n",
        b"ffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
    ] {
        let mut request =
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        request.extend_from_slice(body);
        let answer = raw(proxy.addr(), &request, WAIT).await;
        assert_eq!(raw_status(&answer), 400, "{answer}");
    }
    let (status, _, body) = get(&proxy.url("/")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server_name(&body), "e");
}

#[tokio::test]
async fn an_upload_slower_than_timeout_server_is_not_a_504() {
    let servers = Servers::new();
    let sink = servers.behaviour().await;
    let proxy = Proxy::start(&format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        timeout = {{ client = "5s" }}

        [backend.app]
        timeout = {{ server = "1s" }}
        servers = [ {{ name = "sink", addr = "{sink}" }} ]
        "#
    ))
    .await;
    let (tx, body) = channel_body();
    let req = Request::post(proxy.url("/upload"))
        .body(body.boxed())
        .unwrap();
    let response = tokio::spawn(streaming_client().request(req));
    // A slow client: ten pieces over about 2.5 s, each well within `timeout client`, the
    // whole well beyond `timeout server`. The server takes every piece as it comes.
    for _ in 0..10 {
        tx.send(Frame::data(Bytes::from_static(&[b'x'; 1000])))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(tx);
    let resp = tokio::time::timeout(WAIT, response)
        .await
        .expect("an answer in time")
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-body-bytes"], "10000");
}

#[tokio::test]
async fn an_empty_body_keeps_its_content_length_zero() {
    let servers = Servers::new();
    let (proxy, mut heads) =
        to_scripted(&servers, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let answer = raw(
        proxy.addr(),
        b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let head = heads.recv().await.unwrap();
    assert_eq!(header(&head, "content-length"), Some("0"), "{head}");
}

#[tokio::test]
async fn a_content_length_list_of_equal_values_goes_on_as_one_value() {
    // RFC 9110, 8.6: a list of equal lengths may be taken as the one value; a strict recipient
    // refuses the list, so the proxy passes on the one value, both ways.
    let servers = Servers::new();
    let (proxy, mut heads) = to_scripted(
        &servers,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    let answer = raw(
        proxy.addr(),
        b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert_eq!(header_values(&answer, "content-length"), ["2"], "{answer}");
    assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
    let head = heads.recv().await.unwrap();
    assert_eq!(header_values(&head, "content-length"), ["0"], "{head}");
}

/// A server that answers `/upload` with 413 as soon as it has read the head, leaving the body
/// unread, and anything else with 200 "next".
async fn early_answers(servers: &Servers) -> std::net::SocketAddr {
    servers
        .serve_each(|mut tcp| async move {
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let answer: &[u8] = if head.starts_with(b"POST /upload") {
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nnext\n"
            };
            let _ = tcp.write_all(answer).await;
            // Whatever else comes is not read; the connection closes when dropped.
        })
        .await
}

#[tokio::test]
async fn a_body_still_arriving_after_an_early_answer_is_not_a_late_head() {
    let servers = Servers::new();
    let server = early_answers(&servers).await;
    let proxy = Proxy::start(&format!(
        r#"
        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        timeout = {{ http_request = "1s", client = "10s" }}

        [backend.app]
        servers = [ {{ name = "s", addr = "{server}" }} ]
        "#
    ))
    .await;
    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    tcp.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10000\r\n\r\n")
        .await
        .unwrap();
    tcp.write_all(&[b'x'; 1000]).await.unwrap();
    let answer = read_until(&mut tcp, b"\r\n\r\n", "the early answer").await;
    assert!(
        answer.starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // The client goes on with its body for longer than `http_request`, each piece well
    // within `timeout client`: these bytes are the body's, not a next head to time.
    for _ in 0..9 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        tcp.write_all(&[b'x'; 1000]).await.unwrap();
    }
    tcp.write_all(b"GET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest))
        .await
        .expect("the next answer in time")
        .unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
    assert!(rest.ends_with("next\n"), "{rest}");
}

/// A server that answers with something that is not HTTP has answered: the request gets a 502
/// at once and is not replayed, although it is a GET and the server kept the connection open
/// (HAProxy without `retry-on junk-response`).
#[tokio::test]
async fn a_response_that_is_not_http_is_a_502_and_not_replayed() {
    let servers = Servers::new();
    for answer in [
        &b"NOT HTTP AT ALL\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Space : a\r\nContent-Length: 0\r\n\r\n",
    ] {
        let (proxy, mut heads) = to_scripted(&servers, answer).await;
        let (status, _, body) = get(&proxy.url("/junk")).await;
        let text = String::from_utf8_lossy(answer);
        assert_eq!(status, 502, "{text:?}: {body}");
        // Every attempt was made before the answer: what the server got by now is all.
        let mut sent = 0;
        while heads.try_recv().is_ok() {
            sent += 1;
        }
        assert_eq!(sent, 1, "{text:?}: sent once");
    }
}

/// A body that fails right after its head (a malformed first chunk, or the server closing
/// after the head) still gets the client an answer: the head, then the connection closes
/// before the body's end (as HAProxy passes on a head whose server then closed), never
/// nothing.
#[tokio::test]
async fn a_body_that_fails_at_once_still_gets_the_client_an_answer() {
    let servers = Servers::new();
    let (proxy, _heads) = to_scripted(
        &servers,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    )
    .await;
    for i in 0..5 {
        let answer = raw(proxy.addr(), GET_CLOSE, WAIT).await;
        assert_eq!(raw_status(&answer), 200, "{i}: {answer:?}");
        assert!(!answer.ends_with("0\r\n\r\n"), "{i}: cut short: {answer:?}");
    }
    // Over HTTP/2 the same: HEADERS, then the stream is reset.
    let resp = crate::support::h2_client()
        .get(proxy.url("/").parse().unwrap())
        .await
        .expect("the head reaches an HTTP/2 client");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.into_body().collect().await.is_err(),
        "then the body fails"
    );

    let closing = servers
        .serve_each(|mut tcp| async move {
            let mut buf = [0u8; 4096];
            let _ = tcp.read(&mut buf).await;
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
                .await;
        })
        .await;
    let proxy = Proxy::start(&one_backend(
        &format!(r#"{{ name = "s", addr = "{closing}" }}"#),
        "",
    ))
    .await;
    for i in 0..10 {
        let answer = raw(proxy.addr(), GET_CLOSE, WAIT).await;
        assert_eq!(raw_status(&answer), 200, "{i}: {answer:?}");
        assert!(answer.contains("content-length: 100"), "{i}: {answer:?}");
    }
}

/// A response's trailers reach an HTTP/1.1 client that asked for them (`TE: trailers`): the
/// `Trailer` header announcing them is kept for it, and for it only.
#[tokio::test]
async fn trailers_reach_an_http11_client_that_asked_for_them() {
    let servers = Servers::new();
    let (proxy, _heads) = to_scripted(
        &servers,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 42\r\n\r\n",
    )
    .await;
    let asking = raw(
        proxy.addr(),
        b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    let (head, body) = asking.split_once("\r\n\r\n").unwrap();
    assert_eq!(header(head, "trailer"), Some("X-Sum"), "{asking}");
    assert_eq!(body, "3\r\nabc\r\n0\r\nx-sum: 42\r\n\r\n", "{asking}");

    let not_asking = raw(proxy.addr(), GET_CLOSE, WAIT).await;
    let (head, body) = not_asking.split_once("\r\n\r\n").unwrap();
    assert_eq!(header(head, "trailer"), None, "{not_asking}");
    assert_eq!(body, "3\r\nabc\r\n0\r\n\r\n", "{not_asking}");
}

/// The server's own reason phrase goes to the client, as HAProxy passes it on.
#[tokio::test]
async fn the_servers_reason_phrase_is_kept() {
    let servers = Servers::new();
    let (proxy, _heads) = to_scripted(
        &servers,
        b"HTTP/1.1 413 Upload Much Too Big\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    let answer = raw(proxy.addr(), GET_CLOSE, WAIT).await;
    assert!(
        answer.starts_with("HTTP/1.1 413 Upload Much Too Big\r\n"),
        "{answer}"
    );
}
