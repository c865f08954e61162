//! TCP mode end to end: round-robin over TCP servers, half-close, retries of refused and timed
//! out connects, SNI routing without terminating TLS, PROXY protocol headers, a 1 GiB transfer
//! with bounded memory, and the sessions and bytes the stats count.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::support::{Binary, Proxy, Servers, Unanswered, config_file, rss_kib_of, wait_until};

const LIMIT: Duration = Duration::from_secs(10);

/// A TCP server that sends `NAME\n`, echoes what it reads, and after the client's EOF sends
/// `end\n` and closes.
async fn tcp_echo(name: &str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let name = format!("{name}\n");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let name = name.clone();
            tokio::spawn(async move {
                tcp.write_all(name.as_bytes()).await?;
                let (mut r, mut w) = tcp.split();
                tokio::io::copy(&mut r, &mut w).await?;
                w.write_all(b"end\n").await?;
                w.shutdown().await?;
                Ok::<_, std::io::Error>(())
            });
        }
    });
    addr
}

/// A TCP server that reads each connection to its end, reports the bytes on the channel, then
/// answers `got N` and closes.
pub(crate) async fn tcp_recorder() -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                tcp.read_to_end(&mut got).await?;
                tcp.write_all(format!("got {}", got.len()).as_bytes())
                    .await?;
                let _ = tx.send(got);
                tcp.shutdown().await
            });
        }
    });
    (addr, rx)
}

/// Connects, sends `bytes`, shuts down the write side and reads the answer to its end.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(LIMIT, tcp.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

fn tcp_config(frontend_extra: &str, backend: &str) -> String {
    format!(
        r#"
        [defaults]
        mode = "tcp"
        [frontend.tcp_in]
        bind = "127.0.0.1:0"
        default_backend = "app"
        {frontend_extra}
        [backend.app]
        {backend}
        "#
    )
}

#[tokio::test]
async fn round_robin_over_three_tcp_echo_servers_and_stats_count_sessions() {
    let (a, b, c) = (
        tcp_echo("s1").await,
        tcp_echo("s2").await,
        tcp_echo("s3").await,
    );
    let proxy = Proxy::start(&tcp_config(
        "",
        &format!(
            r#"servers = [{{ name = "s1", addr = "{a}" }}, {{ name = "s2", addr = "{b}" }},
                          {{ name = "s3", addr = "{c}" }}]"#
        ),
    ))
    .await;
    let mut names = Vec::new();
    for _ in 0..6 {
        let answer = exchange(proxy.addr(), b"ping\n").await;
        let mut lines = answer.lines();
        names.push(lines.next().unwrap_or("").to_owned());
        assert_eq!(lines.collect::<Vec<_>>(), ["ping", "end"], "{answer:?}");
    }
    assert_eq!(names, ["s1", "s2", "s3", "s1", "s2", "s3"]);

    let snapshot = proxy.runtime.proxy().snapshot();
    let frontend = &snapshot.frontends[0].state;
    let backend = &snapshot.backends[0];
    wait_until(LIMIT, "six sessions counted", || {
        frontend.traffic.totals().requests == 6
    })
    .await;
    assert_eq!(frontend.sessions.total(), 6);
    let totals = backend.state.traffic.totals();
    assert_eq!((totals.requests, totals.bytes_in), (6, 6 * 5));
    // Each answer: "sN\n" + "ping\n" + "end\n".
    assert_eq!(totals.bytes_out, 6 * 12);
    for s in &backend.servers {
        assert_eq!(s.state.requests(), 2, "{}", s.name);
        assert_eq!(s.state.traffic.totals().bytes_in, 10);
    }
}

/// A backend's `timeout tunnel` replaces `client` and `server` once the server is connected,
/// as HAProxy's does in TCP mode: a silent session is closed after it, not after the others.
#[tokio::test]
async fn timeout_tunnel_is_a_tcp_sessions_idle_timeout() {
    let echo = tcp_echo("s1").await;
    let proxy = Proxy::start(&tcp_config(
        r#"timeout = { client = "1h" }"#,
        &format!(
            r#"timeout = {{ server = "1h", tunnel = "200ms" }}
            servers = [{{ name = "s1", addr = "{echo}" }}]"#
        ),
    ))
    .await;
    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut out = Vec::new();
    // The server's greeting, then silence both ways: closed by the tunnel timeout.
    tokio::time::timeout(LIMIT, tcp.read_to_end(&mut out))
        .await
        .expect("the idle session closed by timeout tunnel")
        .unwrap();
    assert_eq!(out, b"s1\n");
    // Served, then ended by a timeout: a session, not a request error.
    let snapshot = proxy.runtime.proxy().snapshot();
    let frontend = &snapshot.frontends[0].state;
    wait_until(LIMIT, "the session counted", || {
        frontend.traffic.totals().requests == 1
    })
    .await;
    assert_eq!(frontend.traffic.totals().errors, 0);
}

#[tokio::test]
async fn half_close_the_client_still_gets_the_reply() {
    let (addr, mut seen) = tcp_recorder().await;
    let proxy = Proxy::start(&tcp_config(
        "",
        &format!(r#"servers = [{{ name = "r", addr = "{addr}" }}]"#),
    ))
    .await;
    // The server answers only after the client's EOF reached it.
    assert_eq!(exchange(proxy.addr(), b"hello world").await, "got 11");
    assert_eq!(seen.recv().await.unwrap(), b"hello world");
}

/// A TCP frontend's `maxconn`: a session open through it holds its place; the next client
/// waits in the listen queue (its connect succeeds, nothing reaches the server) until the
/// session closes.
#[tokio::test]
async fn a_tcp_frontend_at_its_maxconn_holds_new_clients_until_a_session_ends() {
    let echo = tcp_echo("e").await;
    let proxy = Proxy::start(&format!(
        "[global]\nworkers = 1\n{}",
        tcp_config(
            "maxconn = 1",
            &format!(r#"servers = [{{ name = "e", addr = "{echo}" }}]"#),
        )
    ))
    .await;
    let mut first = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut greeting = [0; 2];
    first.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"e\n", "the first session reaches the server");
    // The second connects (the kernel queues it) but is not accepted: no greeting.
    let mut second = TcpStream::connect(proxy.addr()).await.unwrap();
    let waited =
        tokio::time::timeout(Duration::from_millis(300), second.read_exact(&mut greeting)).await;
    assert!(
        waited.is_err(),
        "a second session was relayed at maxconn = 1"
    );
    drop(first);
    tokio::time::timeout(LIMIT, second.read_exact(&mut greeting))
        .await
        .expect("relayed once the first session closed")
        .unwrap();
    assert_eq!(&greeting, b"e\n");
}

#[tokio::test]
async fn failed_connects_are_retried_on_the_next_server() {
    let servers = Servers::new();
    let (dead1, dead2) = (servers.closed_port().await, servers.closed_port().await);
    let live = tcp_echo("live").await;
    let proxy = Proxy::start(&tcp_config(
        "",
        &format!(
            r#"retries = 2
            servers = [{{ name = "d1", addr = "{dead1}" }}, {{ name = "d2", addr = "{dead2}" }},
                       {{ name = "live", addr = "{live}" }}]"#
        ),
    ))
    .await;
    for _ in 0..3 {
        let answer = exchange(proxy.addr(), b"x").await;
        assert_eq!(answer, "live\nxend\n");
    }
    let snapshot = proxy.runtime.proxy().snapshot();
    let failures: u64 = snapshot.backends[0]
        .servers
        .iter()
        .map(|s| s.state.connect_failures())
        .sum();
    assert!(failures >= 2, "{failures} connect failures");

    // Without retries and no server that answers, the client is closed without a byte (reset,
    // since its bytes were never read).
    let proxy = Proxy::start(&tcp_config(
        "",
        &format!(
            r#"retries = 0
            servers = [{{ name = "d1", addr = "{dead1}" }}]"#
        ),
    ))
    .await;
    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    tcp.write_all(b"x").await.unwrap();
    let mut out = Vec::new();
    match tokio::time::timeout(LIMIT, tcp.read_to_end(&mut out))
        .await
        .expect("closed in time")
    {
        Ok(n) => assert_eq!(n, 0),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
    let snapshot = proxy.runtime.proxy().snapshot();
    wait_until(LIMIT, "the refused session counted", || {
        snapshot.frontends[0].state.traffic.totals().errors == 1
    })
    .await;
}

/// A connect that gets no answer is cut at `timeout connect`, counted against its server, and
/// the session goes on to the next server.
#[tokio::test]
async fn a_connect_without_answer_times_out_and_is_retried() {
    let silent = Unanswered::bind();
    let live = tcp_echo("live").await;
    let proxy = Proxy::start(&tcp_config(
        "",
        &format!(
            r#"retries = 1
            timeout = {{ connect = "300ms" }}
            servers = [{{ name = "silent", addr = "{}" }}, {{ name = "live", addr = "{live}" }}]"#,
            silent.addr()
        ),
    ))
    .await;
    // Round-robin starts with the silent server.
    let answer = exchange(proxy.addr(), b"x").await;
    assert_eq!(answer, "live\nxend\n");
    let snapshot = proxy.runtime.proxy().snapshot();
    let servers = &snapshot.backends[0].servers;
    assert_eq!(servers[0].state.connect_failures(), 1, "the silent server");
    assert_eq!(servers[1].state.connect_failures(), 0, "the live server");
}

/// Reads a PROXY header from `tcp`'s recorded bytes: (the header, the payload after it).
pub(crate) fn split_proxy_header(bytes: &[u8]) -> (ppp::HeaderResult<'_>, &[u8]) {
    let header = ppp::HeaderResult::parse(bytes);
    let len = match &header {
        ppp::HeaderResult::V1(Ok(h)) => h.header.len(),
        ppp::HeaderResult::V2(Ok(h)) => h.len(),
        other => panic!("no PROXY header: {other:?}"),
    };
    (header, &bytes[len..])
}

#[tokio::test]
async fn send_proxy_v1_and_v2_announce_the_client() {
    let (v1_addr, mut v1_seen) = tcp_recorder().await;
    let (v2_addr, mut v2_seen) = tcp_recorder().await;
    let proxy = Proxy::start(&format!(
        r#"
        [defaults]
        mode = "tcp"
        [frontend.one]
        bind = "127.0.0.1:0"
        default_backend = "v1"
        [frontend.two]
        bind = "127.0.0.1:0"
        default_backend = "v2"
        [backend.v1]
        servers = [{{ name = "a", addr = "{v1_addr}", send_proxy = "v1" }}]
        [backend.v2]
        servers = [{{ name = "b", addr = "{v2_addr}", send_proxy = "v2" }}]
        "#
    ))
    .await;
    for (frontend, seen) in [
        (proxy.addrs[0], &mut v1_seen),
        (proxy.addrs[1], &mut v2_seen),
    ] {
        let mut tcp = TcpStream::connect(frontend).await.unwrap();
        let client = tcp.local_addr().unwrap();
        tcp.write_all(b"payload").await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        let bytes = seen.recv().await.unwrap();
        let (header, payload) = split_proxy_header(&bytes);
        assert_eq!(payload, b"payload");
        assert_eq!(answer, format!("got {}", bytes.len()));
        match header {
            ppp::HeaderResult::V1(Ok(h)) => match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    assert_eq!(
                        (
                            SocketAddr::from((a.source_address, a.source_port)),
                            SocketAddr::from((a.destination_address, a.destination_port))
                        ),
                        (client, frontend)
                    );
                }
                other => panic!("v1 addresses {other:?}"),
            },
            ppp::HeaderResult::V2(Ok(h)) => {
                assert_eq!(frontend, proxy.addrs[1]);
                assert_eq!(h.addresses, ppp::v2::Addresses::from((client, frontend)));
                assert_eq!(h.command, ppp::v2::Command::Proxy);
            }
            other => panic!("{other:?}"),
        }
    }
}

/// A CA and a certificate for `names` it signed: (CA certificate, leaf chain, leaf key).
fn test_pki(names: &[&str]) -> (CertificateDer<'static>, CertificateDer<'static>, Vec<u8>) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let leaf = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    (
        ca.der().clone(),
        leaf.der().clone(),
        leaf_key.serialize_der(),
    )
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Backends `shop` and `blog` (TLS servers with one certificate for `names`, sending their
/// name) and `plain` (a TCP echo), as TOML; and the CA that signed the certificate.
async fn sni_backends(names: &[&str]) -> (CertificateDer<'static>, String) {
    let (ca, leaf, key) = test_pki(names);
    let shop = tls_named("shop", leaf.clone(), key.clone()).await;
    let blog = tls_named("blog", leaf, key).await;
    let plain = tcp_echo("plain").await;
    let backends = format!(
        r#"[backend.shop]
        mode = "tcp"
        servers = [{{ name = "shop", addr = "{shop}" }}]
        [backend.blog]
        mode = "tcp"
        servers = [{{ name = "blog", addr = "{blog}" }}]
        [backend.plain]
        mode = "tcp"
        servers = [{{ name = "plain", addr = "{plain}" }}]"#
    );
    (ca, backends)
}

/// A TLS server that completes the handshake and sends `name`, then closes.
async fn tls_named(name: &'static str, cert: CertificateDer<'static>, key: Vec<u8>) -> SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut tls = acceptor.accept(tcp).await?;
                tls.write_all(name.as_bytes()).await?;
                tls.shutdown().await
            });
        }
    });
    addr
}

async fn read_all(mut io: impl AsyncRead + AsyncWrite + Unpin) -> String {
    let mut out = String::new();
    tokio::time::timeout(LIMIT, io.read_to_string(&mut out))
        .await
        .expect("in time")
        .expect("read");
    out
}

/// For each `(server name, backend)`: a TLS client trusting `ca` connects through `proxy` with
/// that server name and reads what the backend that answered sends. The handshake completes
/// with the backend itself, so the ClientHello went through intact.
async fn assert_tls_routes(proxy: SocketAddr, ca: CertificateDer<'static>, cases: &[(&str, &str)]) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    for (name, expected) in cases {
        let tcp = TcpStream::connect(proxy).await.unwrap();
        let server_name = ServerName::try_from((*name).to_owned()).unwrap();
        let tls = tokio::time::timeout(LIMIT, connector.connect(server_name, tcp))
            .await
            .expect("handshake in time")
            .expect("handshake with the backend");
        assert_eq!(read_all(tls).await, *expected, "{name}");
    }
}

#[tokio::test]
async fn sni_routes_tls_to_two_backends_without_terminating_it() {
    let (ca, backends) = sni_backends(&["shop.example", "blog.example"]).await;
    let proxy = Proxy::start(&format!(
        r#"
        [frontend.tls_in]
        mode = "tcp"
        bind = "127.0.0.1:0"
        inspect_delay = "5s"
        acl = {{ is_shop = "req.ssl_sni -i shop.example", is_blog = "req.ssl_sni -i -m end .blog.example blog.example", local = "src 127.0.0.0/8" }}
        use_backend = [
          {{ backend = "shop", if = "is_shop local" }},
          {{ backend = "blog", if = "is_blog" }},
        ]
        default_backend = "plain"
        {backends}
        "#
    ))
    .await;
    assert_tls_routes(
        proxy.addr(),
        ca,
        &[
            ("shop.example", "shop"),
            ("BLOG.example", "blog"),
            ("shop.example", "shop"),
        ],
    )
    .await;
    // Not TLS: no name, the default backend, and the bytes arrive as sent.
    assert_eq!(
        exchange(proxy.addr(), b"GET / HTTP/1.0\r\n\r\n").await,
        "plain\nGET / HTTP/1.0\r\n\r\nend\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_through_tcp_mode_with_bounded_memory() {
    const GIB: u64 = 1024 * 1024 * 1024;
    const BUDGET_KIB: u64 = 50 * 1024;
    // A sink that counts what it reads and answers the count after the client's EOF.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut n = 0u64;
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k as u64,
                    }
                }
                let _ = tcp.write_all(n.to_string().as_bytes()).await;
            });
        }
    });
    let (_dir, path) = config_file(
        &tcp_config(
            "",
            &format!(r#"servers = [{{ name = "sink", addr = "{sink}" }}]"#),
        )
        .replace("[defaults]", "[global]\naccess_log = false\n[defaults]"),
    );
    let wasp = Binary::run(&path);
    // Warm up: one small session, so that idle includes what every session needs.
    assert_eq!(exchange(wasp.addr, b"warm").await, "4");
    let idle = wasp.rss_kib();
    let peak = Arc::new(AtomicU64::new(idle));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (pid, peak, stop) = (wasp.child.id(), Arc::clone(&peak), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib_of(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut tcp = TcpStream::connect(wasp.addr).await.unwrap();
    let chunk = vec![b't'; 256 * 1024];
    let mut sent = 0u64;
    while sent < GIB {
        tcp.write_all(&chunk).await.unwrap();
        sent += chunk.len() as u64;
    }
    tcp.shutdown().await.unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert_eq!(answer, GIB.to_string(), "the server got every byte");
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak.saturating_sub(idle) < BUDGET_KIB,
        "idle {idle} KiB, peak {peak} KiB"
    );
}

/// A router plugin decides for a TCP frontend: `sni-router` sends TLS connections to a backend
/// by server name (the ClientHello is inspected because a plugin decides, and forwarded
/// untouched), and defers the rest to `default_backend`.
#[tokio::test]
async fn a_router_plugin_routes_connections_by_sni() {
    let (ca, backends) = sni_backends(&["shop.example", "www.blog.example"]).await;
    let proxy = Proxy::start(&format!(
        r#"
        [frontend.tls_in]
        mode = "tcp"
        bind = "127.0.0.1:0"
        router = "sni"
        default_backend = "plain"
        {backends}
        [plugin.sni]
        path = "{}"
        timeout = "1s"
        config = {{ names = "shop.example=shop,*.blog.example=blog" }}
        "#,
        crate::support::test_plugins::wasm("sni-router").display()
    ))
    .await;
    assert_tls_routes(
        proxy.addr(),
        ca,
        &[("shop.example", "shop"), ("www.blog.example", "blog")],
    )
    .await;
    assert_eq!(
        exchange(proxy.addr(), b"PING\r\n").await,
        "plain\nPING\r\nend\n",
        "not TLS: the plugin defers to default_backend"
    );
    let plugin = proxy.runtime.plugins().get("sni").unwrap();
    assert_eq!(plugin.usage().calls, 3);
    assert_eq!(
        plugin
            .stats
            .faults
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}
