//! `accept_proxy` end to end: the PROXY protocol header of a trusted peer (v1 and v2, whole or
//! in two pieces) sets the client address that `src` ACLs, `balance source`, a router plugin,
//! `X-Forwarded-For`, `send_proxy` and the access log see; a trusted peer without a valid header
//! is closed without an answer; an untrusted peer is a direct client whose PROXY line is a bad
//! request; `LOCAL` and `UNKNOWN` keep the peer's address; TLS binds; a reload that changes the
//! list.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::plugins::plugin;
use crate::support::{
    Binary, Proxy, Servers, config_file, field, raw_status, server_name, wait_until,
};
use crate::tcp::{split_proxy_header, tcp_recorder};
use crate::tls::{connector, site_with};

const LIMIT: Duration = Duration::from_secs(10);
const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n";

/// A v1 header announcing a client at `client` that connected to `local`.
fn v1(client: &str, local: &str) -> Vec<u8> {
    let (client, local): (SocketAddr, SocketAddr) =
        (client.parse().unwrap(), local.parse().unwrap());
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        client.ip(),
        local.ip(),
        client.port(),
        local.port()
    )
    .into_bytes()
}

/// A v2 header: `PROXY` with these addresses (and a TLV, which must be skipped), or `LOCAL`.
fn v2(command: ppp::v2::Command, client: &str, local: &str) -> Vec<u8> {
    let addresses = (
        client.parse::<SocketAddr>().unwrap(),
        local.parse::<SocketAddr>().unwrap(),
    );
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | command,
        ppp::v2::Protocol::Stream,
        addresses,
    )
    .write_tlv(ppp::v2::Type::UniqueId, b"lb-connection-7")
    .unwrap()
    .build()
    .unwrap()
}

/// A connection to `addr` from the loopback address `from`.
async fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Sends each piece (as its own write, `TCP_NODELAY` on) and reads until the proxy closes:
/// everything it answered. A reset (the proxy closed with bytes unread) ends the answer too,
/// and a write the closed connection refuses ends the sending.
async fn exchange(mut tcp: TcpStream, pieces: &[&[u8]]) -> String {
    tcp.set_nodelay(true).unwrap();
    for piece in pieces {
        if tcp.write_all(piece).await.is_err() {
            break;
        }
    }
    read_all(&mut tcp).await
}

/// Everything read from `stream` until it closes (a reset or an abrupt TLS end closes it too).
async fn read_all<S: AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(LIMIT, stream.read(&mut buf))
            .await
            .expect("the proxy answers or closes in time");
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A header and a request in one write from 127.0.0.1.
async fn with_header(addr: SocketAddr, header: &[u8]) -> String {
    exchange(
        connect_from([127, 0, 0, 1], addr).await,
        &[&[header, GET].concat()],
    )
    .await
}

/// The value of `name` in an echo server's answer (it lists the headers it received).
fn echoed<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    answer
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

/// The echo server's name in a raw HTTP answer.
fn answered_by(answer: &str) -> &str {
    server_name(answer.split_once("\r\n\r\n").map_or("", |(_, body)| body))
}

/// Asserts that `answer` is a 200 from the echo server `backend`, which was told (in
/// `X-Forwarded-For`) that the client is `client`.
fn assert_served(answer: &str, backend: &str, client: &str) {
    assert_eq!(raw_status(answer), 200, "{answer}");
    assert_eq!(answered_by(answer), backend, "{answer}");
    assert_eq!(echoed(answer, "x-forwarded-for"), Some(client), "{answer}");
}

/// A frontend `web` whose bind trusts `trusted`; requests announced from 192.0.2.0/24 go to the
/// echo server `inside`, the rest to `outside`.
async fn routed(servers: &Servers, trusted: &str) -> Proxy {
    let (inside, outside) = (servers.echo("inside").await, servers.echo("outside").await);
    Proxy::start(&routed_config(trusted, inside, outside)).await
}

fn routed_config(trusted: &str, inside: SocketAddr, outside: SocketAddr) -> String {
    two_way(
        "http",
        trusted,
        &format!(r#""{inside}""#),
        &format!(r#""{outside}""#),
        "",
    )
}

/// A frontend `web` in `mode` whose bind trusts `trusted`: connections announced from
/// 192.0.2.0/24 go to the backend `inside`, the rest to `outside`, each with one server whose
/// table goes on from `addr = ` with `inside` or `outside`; `frontend_extra` is added to the
/// frontend's section.
fn two_way(mode: &str, trusted: &str, inside: &str, outside: &str, frontend_extra: &str) -> String {
    format!(
        r#"
        [global]
        access_log = false
        [defaults]
        mode = "{mode}"
        [frontend.web]
        bind = [{{ addr = "127.0.0.1:0", accept_proxy = {trusted} }}]
        acl = {{ announced = "src 192.0.2.0/24" }}
        use_backend = [{{ backend = "inside", if = "announced" }}]
        default_backend = "outside"
        {frontend_extra}
        [backend.inside]
        servers = [{{ name = "i", addr = {inside} }}]
        [backend.outside]
        servers = [{{ name = "o", addr = {outside} }}]
        "#
    )
}

#[tokio::test]
async fn the_header_of_a_trusted_peer_sets_the_client_address() {
    let servers = Servers::new();
    let proxy = routed(&servers, r#"["127.0.0.0/8", "::1"]"#).await;
    let cases = [
        (
            v1("192.0.2.7:40000", "198.51.100.2:443"),
            "inside",
            "192.0.2.7",
        ),
        (
            v2(
                ppp::v2::Command::Proxy,
                "192.0.2.8:40000",
                "198.51.100.2:443",
            ),
            "inside",
            "192.0.2.8",
        ),
        (
            v1("203.0.113.9:1", "198.51.100.2:443"),
            "outside",
            "203.0.113.9",
        ),
        (
            v2(
                ppp::v2::Command::Proxy,
                "[2001:db8::5]:1",
                "[2001:db8::1]:443",
            ),
            "outside",
            "2001:db8::5",
        ),
    ];
    for (header, backend, client) in cases {
        assert_served(&with_header(proxy.addr(), &header).await, backend, client);
    }
}

#[tokio::test]
async fn balance_source_hashes_the_announced_address() {
    let servers = Servers::new();
    let mut list = Vec::new();
    for name in ["s1", "s2", "s3", "s4"] {
        list.push(format!(
            r#"{{ name = "{name}", addr = "{}" }}"#,
            servers.echo(name).await
        ));
    }
    let proxy = Proxy::start(&format!(
        r#"
        [global]
        access_log = false
        [frontend.web]
        bind = {{ addr = "127.0.0.1:0", accept_proxy = "127.0.0.1" }}
        default_backend = "app"
        [backend.app]
        balance = "source"
        servers = [{}]
        "#,
        list.join(", ")
    ))
    .await;
    // Every connection comes from 127.0.0.1; only the announced addresses differ.
    let chosen = answers_for_announced(proxy.addr(), 40000).await;
    let again = answers_for_announced(proxy.addr(), 40001).await;
    assert_eq!(again, chosen, "each announced client keeps its server");
    let mut servers_used = chosen.clone();
    servers_used.sort();
    servers_used.dedup();
    assert!(
        servers_used.len() > 1,
        "announced clients spread: {chosen:?}"
    );
}

#[tokio::test]
async fn a_router_plugin_sees_the_announced_client() {
    let servers = Servers::new();
    let (inside, outside) = (servers.echo("inside").await, servers.echo("outside").await);
    let config = two_way(
        "http",
        r#""127.0.0.1""#,
        &format!(r#""{inside}""#),
        &format!(r#""{outside}""#),
        r#"router = "canary""#,
    ) + &plugin(
        "canary",
        "canary",
        r#"config = { backend = "outside", percent = "50" }"#,
    );
    let proxy = Proxy::start(&config).await;
    // The plugin sends half the client addresses `outside` and defers the rest to the rules,
    // which send 192.0.2.0/24 `inside`. All connections come from 127.0.0.1.
    let sides = answers_for_announced(proxy.addr(), 40000).await;
    assert!(
        sides.iter().any(|s| s == "inside") && sides.iter().any(|s| s == "outside"),
        "{sides:?}"
    );
}

/// Which echo server answers each of the clients 192.0.2.1 to 192.0.2.16 (from `port`), as
/// 127.0.0.1 announces them.
async fn answers_for_announced(addr: SocketAddr, port: u16) -> Vec<String> {
    let mut names = Vec::new();
    for i in 1..=16 {
        let header = v1(&format!("192.0.2.{i}:{port}"), "198.51.100.2:443");
        names.push(answered_by(&with_header(addr, &header).await).to_owned());
    }
    names
}

#[tokio::test]
async fn a_trusted_peer_without_a_valid_header_is_closed_without_an_answer() {
    let servers = Servers::new();
    let proxy = routed(&servers, r#"["127.0.0.1"]"#).await;
    let too_long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(120));
    let bad_address = b"PROXY TCP4 192.0.2.300 198.51.100.2 1 2\r\n".to_vec();
    // Refused at once, not after the 30 s `timeout client` (the answer's wait is shorter).
    let bare_lf = b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\nGET / HTTP/1.1\r\n\r\n".to_vec();
    // A v2 header whose TLV announces 80 bytes where 1 is left.
    let mut overrun = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (
            "192.0.2.7:1".parse::<SocketAddr>().unwrap(),
            "198.51.100.2:2".parse::<SocketAddr>().unwrap(),
        ),
    )
    .write_tlv(ppp::v2::Type::NoOp, &[0])
    .unwrap()
    .build()
    .unwrap();
    overrun[29..31].copy_from_slice(&80u16.to_be_bytes());
    for bytes in [
        GET.to_vec(),
        b"HELLO\r\n".to_vec(),
        too_long.into_bytes(),
        bad_address,
        bare_lf,
        [&overrun[..], GET].concat(),
    ] {
        let answer = exchange(connect_from([127, 0, 0, 1], proxy.addr()).await, &[&bytes]).await;
        assert_eq!(
            answer,
            "",
            "no answer to {:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
    let state = proxy.runtime.states().frontend("web");
    assert_eq!(
        state.traffic.totals().errors,
        6,
        "each refused connection is counted"
    );
    assert_eq!(state.sessions.total(), 6, "as accepted, too");
}

/// A connection counts as open from its accept, as in HAProxy: one still sending its header
/// holds a place under `maxconn` and shows in the frontend's sessions, in either mode.
#[tokio::test]
async fn a_connection_awaiting_its_header_is_counted_open() {
    for mode in ["http", "tcp"] {
        let servers = Servers::new();
        let (inside, outside) = (servers.echo("inside").await, servers.echo("outside").await);
        let (inside, outside) = (format!(r#""{inside}""#), format!(r#""{outside}""#));
        let proxy = Proxy::start(&two_way(mode, r#"["127.0.0.1"]"#, &inside, &outside, "")).await;
        let state = proxy.runtime.states().frontend("web");
        let mut tcp = connect_from([127, 0, 0, 1], proxy.addr()).await;
        tcp.write_all(b"PROXY TCP4 ").await.unwrap();
        wait_until(LIMIT, "the connection counted", || {
            state.sessions.current() == 1
        })
        .await;
        assert_eq!(state.sessions.total(), 1, "{mode}");
        drop(tcp);
        wait_until(LIMIT, "the connection no longer counted", || {
            state.sessions.current() == 0
        })
        .await;
        assert_eq!(state.sessions.total(), 1, "{mode}: counted once");
    }
}

#[tokio::test]
async fn an_untrusted_peer_is_a_direct_client() {
    let servers = Servers::new();
    let proxy = routed(&servers, r#"["127.0.0.1"]"#).await;
    // From 127.0.0.2, a PROXY line is the start of a malformed request.
    let header = v1("192.0.2.7:40000", "198.51.100.2:443");
    let tcp = connect_from([127, 0, 0, 2], proxy.addr()).await;
    let answer = exchange(tcp, &[&[&header[..], GET].concat()]).await;
    assert_eq!(raw_status(&answer), 400, "{answer}");
    // Without one it is served, with its own address.
    let answer = exchange(connect_from([127, 0, 0, 2], proxy.addr()).await, &[GET]).await;
    assert_served(&answer, "outside", "127.0.0.2");
}

#[tokio::test]
async fn local_and_unknown_headers_keep_the_peer_address() {
    let servers = Servers::new();
    let proxy = routed(&servers, r#"["127.0.0.1"]"#).await;
    // A LOCAL header's addresses are not the client's, even when it carries some.
    let local = v2(ppp::v2::Command::Local, "192.0.2.7:1", "198.51.100.2:443");
    for header in [local, b"PROXY UNKNOWN\r\n".to_vec()] {
        assert_served(
            &with_header(proxy.addr(), &header).await,
            "outside",
            "127.0.0.1",
        );
    }
}

#[tokio::test]
async fn a_header_in_two_writes_is_read_whole() {
    let servers = Servers::new();
    let proxy = routed(&servers, r#"["127.0.0.1"]"#).await;
    for header in [
        v1("192.0.2.7:40000", "198.51.100.2:443"),
        v2(
            ppp::v2::Command::Proxy,
            "192.0.2.7:40000",
            "198.51.100.2:443",
        ),
    ] {
        // The first piece ends inside the signature (v2) or the addresses (v1).
        let (first, rest) = header.split_at(10);
        let tcp = connect_from([127, 0, 0, 1], proxy.addr()).await;
        let answer = exchange(tcp, &[first, &[rest, GET].concat()]).await;
        assert_served(&answer, "inside", "192.0.2.7");
    }
}

#[tokio::test]
async fn tcp_mode_passes_the_announced_addresses_on_with_send_proxy() {
    let (inside, mut inside_seen) = tcp_recorder().await;
    let (outside, mut outside_seen) = tcp_recorder().await;
    let proxy = Proxy::start(&two_way(
        "tcp",
        r#"["127.0.0.1"]"#,
        &format!(r#""{inside}", send_proxy = "v2""#),
        &format!(r#""{outside}", send_proxy = "v1""#),
        "",
    ))
    .await;
    let cases = [
        (
            v2(
                ppp::v2::Command::Proxy,
                "192.0.2.7:40000",
                "198.51.100.2:5432",
            ),
            &mut inside_seen,
            ("192.0.2.7:40000", "198.51.100.2:5432"),
        ),
        (
            v1("203.0.113.9:40001", "198.51.100.2:5432"),
            &mut outside_seen,
            ("203.0.113.9:40001", "198.51.100.2:5432"),
        ),
    ];
    for (header, seen, (client, local)) in cases {
        let mut tcp = connect_from([127, 0, 0, 1], proxy.addr()).await;
        tcp.write_all(&[&header[..], b"payload"].concat())
            .await
            .unwrap();
        tcp.shutdown().await.unwrap();
        let answer = read_all(&mut tcp).await;
        let bytes = tokio::time::timeout(LIMIT, seen.recv())
            .await
            .expect("the server got the session")
            .unwrap();
        let (sent, payload) = split_proxy_header(&bytes);
        assert_eq!(payload, b"payload", "the client's bytes after its header");
        assert_eq!(answer, format!("got {}", bytes.len()));
        let announced: (SocketAddr, SocketAddr) = (client.parse().unwrap(), local.parse().unwrap());
        match sent {
            ppp::HeaderResult::V1(Ok(h)) => {
                assert_eq!(h.addresses, ppp::v1::Addresses::from(announced));
            }
            ppp::HeaderResult::V2(Ok(h)) => {
                assert_eq!(h.addresses, ppp::v2::Addresses::from(announced));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_tls_bind_reads_the_header_before_the_handshake() {
    let site = site_with(r#", accept_proxy = ["127.0.0.1"]"#, "").await;
    let mut tcp = connect_from([127, 0, 0, 1], site.proxy.addr()).await;
    tcp.write_all(&v2(
        ppp::v2::Command::Proxy,
        "192.0.2.7:40000",
        "198.51.100.2:443",
    ))
    .await
    .unwrap();
    let name = rustls::pki_types::ServerName::try_from("site.test").unwrap();
    let mut tls = tokio::time::timeout(LIMIT, connector(&site.ca.pem, &[]).connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("tls handshake after the header");
    tls.write_all(GET).await.unwrap();
    let answer = read_all(&mut tls).await;
    assert_served(&answer, "node1", "192.0.2.7");
    assert_eq!(echoed(&answer, "x-forwarded-proto"), Some("https"));
}

#[tokio::test]
async fn a_reload_changes_the_trusted_peers_of_an_open_listener() {
    let servers = Servers::new();
    let (inside, outside) = (servers.echo("inside").await, servers.echo("outside").await);
    let proxy = Proxy::start(&routed_config(r#"["127.0.0.2"]"#, inside, outside)).await;
    let addr = proxy.addr();
    let answer = exchange(connect_from([127, 0, 0, 1], addr).await, &[GET]).await;
    assert_served(&answer, "outside", "127.0.0.1");

    std::fs::write(
        &proxy.path,
        routed_config(r#"["127.0.0.1"]"#, inside, outside),
    )
    .unwrap();
    proxy.runtime.reload().await.expect("reload");
    assert_eq!(
        proxy.runtime.frontend_addrs("web").await,
        [addr],
        "the same socket"
    );
    let answer = exchange(connect_from([127, 0, 0, 1], addr).await, &[GET]).await;
    assert_eq!(answer, "", "127.0.0.1 must now send a header");
    let answer = with_header(addr, &v1("192.0.2.7:40000", "198.51.100.2:443")).await;
    assert_served(&answer, "inside", "192.0.2.7");
    // And 127.0.0.2 is no longer trusted.
    let answer = exchange(connect_from([127, 0, 0, 2], addr).await, &[GET]).await;
    assert_served(&answer, "outside", "127.0.0.2");
}

#[test]
fn the_access_log_shows_the_announced_client_and_refusals_name_the_peer() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let servers = Servers::new();
    let echo = runtime.block_on(servers.echo("node1"));
    let (_dir, path) = config_file(&format!(
        r#"
        [frontend.web]
        bind = {{ addr = "127.0.0.1:0", accept_proxy = ["127.0.0.1"] }}
        default_backend = "app"
        [backend.app]
        servers = [{{ name = "s1", addr = "{echo}" }}]
        "#
    ));
    let wasp = Binary::run(&path);
    let answer = runtime.block_on(with_header(
        wasp.addr,
        &v1("192.0.2.7:40000", "198.51.100.2:443"),
    ));
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let line = wasp.wait_for("wasp::access", LIMIT);
    assert_eq!(field(&line, "client"), "192.0.2.7:40000", "{line}");

    let tcp = runtime.block_on(connect_from([127, 0, 0, 1], wasp.addr));
    let peer = tcp.local_addr().unwrap();
    assert_eq!(runtime.block_on(exchange(tcp, &[GET])), "");
    let line = wasp.wait_for("PROXY header refused", LIMIT);
    assert_eq!(field(&line, "peer"), peer.to_string(), "{line}");
    assert!(line.contains("no PROXY protocol header"), "{line}");
    assert_eq!(peer.ip(), IpAddr::from([127, 0, 0, 1]));
}
