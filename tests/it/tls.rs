//! TLS: termination with certificates from a test CA (generated here with rcgen), SNI
//! selection and routing, ALPN h2, certificate hot reload (file change and SIGHUP's reload),
//! TLS and HTTP/2 to servers, gRPC-style streaming with trailers, redirect to https, client
//! certificates (required and optional), and the handshake timeout.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::support::{Proxy, Servers, channel_body, server_name, wait_until};

/// A certificate authority made for one test.
pub(crate) struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate (PEM) on disk.
    pub(crate) pem: PathBuf,
}

impl TestCa {
    pub(crate) fn new(dir: &Path, stem: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("wasp test CA {stem}"));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pem = dir.join(format!("{stem}.pem"));
        std::fs::write(&pem, issuer.pem()).unwrap();
        Self { issuer, pem }
    }

    /// A certificate for `names` signed by this CA, written as `stem.pem` and `stem.key`.
    pub(crate) fn leaf(&self, dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let params = CertificateParams::new(names).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        write_pair(dir, stem, &cert, &key)
    }
}

/// Writes `cert` and `key` as `stem.pem` and `stem.key`: (cert path, key path).
fn write_pair(
    dir: &Path,
    stem: &str,
    cert: &rcgen::Certificate,
    key: &KeyPair,
) -> (PathBuf, PathBuf) {
    let (cert_path, key_path) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

fn der(cert: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(cert).unwrap()
}

pub(crate) fn connector(ca: &Path, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(ca)).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// A TLS connection to `addr` asking for `sni`, verified against `ca`.
pub(crate) async fn tls(
    addr: SocketAddr,
    sni: &str,
    ca: &Path,
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector(ca, alpn)
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .expect("tls handshake")
}

/// The certificate the server presented on `stream`.
fn presented(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// An HTTP/1.1 connection over `stream`, driven in the background.
async fn h1(stream: TlsStream<TcpStream>) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn h1_get(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: &str,
    path: &str,
) -> (StatusCode, String) {
    let req = Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub(crate) fn tls_table(cert: &Path, key: &Path) -> String {
    format!(
        "{{ cert = \"{}\", key = \"{}\" }}",
        cert.display(),
        key.display()
    )
}

/// A TLS frontend `web` for `site.test` (a certificate from a test CA made here) in front of
/// one echo server, `node1`; `frontend_extra` is added to the frontend's section. Keep `dir`
/// and `_servers` bound for the whole test: dropping them removes the files and the server.
pub(crate) struct Site {
    dir: tempfile::TempDir,
    pub(crate) ca: TestCa,
    cert: PathBuf,
    key: PathBuf,
    pub(crate) proxy: Proxy,
    _servers: Servers,
}

async fn site(frontend_extra: &str) -> Site {
    site_with("", frontend_extra).await
}

/// [`site`] with `bind_extra` (`, KEY = VALUE`...) added to its bind's table.
pub(crate) async fn site_with(bind_extra: &str, frontend_extra: &str) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let (cert, key) = ca.leaf(dir.path(), "site", &["site.test"]);
    let servers = Servers::new();
    let echo = servers.echo("node1").await;
    let proxy = Proxy::start(&format!(
        "[frontend.web]\nbind = [{{ addr = \"127.0.0.1:0\", tls = {}{bind_extra} }}]\ndefault_backend = \"app\"\n\
         {frontend_extra}\n\
         [backend.app]\nservers = [{{ name = \"s1\", addr = \"{echo}\" }}]\n",
        tls_table(&cert, &key)
    ))
    .await;
    Site {
        dir,
        ca,
        cert,
        key,
        proxy,
        _servers: servers,
    }
}

#[tokio::test]
async fn https_terminates_and_forwards_as_https() {
    let Site {
        ca,
        proxy,
        dir: _dir,
        _servers,
        ..
    } = site("").await;
    let stream = tls(proxy.addr(), "site.test", &ca.pem, &[b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut sender = h1(stream).await;
    let (status, body) = h1_get(&mut sender, "site.test", "/hello?x=1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server_name(&body), "node1");
    assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
    // A second request on the same TLS connection (keep-alive).
    let (status, _) = h1_get(&mut sender, "site.test", "/again").await;
    assert_eq!(status, StatusCode::OK);
    // A plain-text client on the TLS port gets no HTTP answer.
    let answer = crate::support::raw(
        proxy.addr(),
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn sni_picks_the_certificate_and_routes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let (a_cert, a_key) = ca.leaf(dir.path(), "a", &["a.test"]);
    let (b_cert, b_key) = ca.leaf(dir.path(), "b", &["b.test", "*.b.test"]);
    let servers = Servers::new();
    let (na, nb) = (servers.echo("na").await, servers.echo("nb").await);
    let proxy = Proxy::start(&format!(
        r#"[frontend.web]
bind = [{{ addr = "127.0.0.1:0", tls = {{ certs = [{a}, {b}] }} }}]
acl = {{ is_b = "ssl_fc_sni_end b.test" }}
use_backend = [{{ backend = "bees", if = "is_b" }}]
default_backend = "aces"
[backend.aces]
servers = [{{ name = "s", addr = "{na}" }}]
[backend.bees]
servers = [{{ name = "s", addr = "{nb}" }}]
"#,
        a = tls_table(&a_cert, &a_key),
        b = tls_table(&b_cert, &b_key),
    ))
    .await;
    for (sni, cert, node) in [
        ("a.test", &a_cert, "na"),
        ("b.test", &b_cert, "nb"),
        ("api.b.test", &b_cert, "nb"),
    ] {
        let stream = tls(proxy.addr(), sni, &ca.pem, &[]).await;
        assert_eq!(presented(&stream), der(cert), "certificate for {sni}");
        let mut sender = h1(stream).await;
        let (status, body) = h1_get(&mut sender, sni, "/").await;
        assert_eq!(status, StatusCode::OK, "{sni}");
        assert_eq!(server_name(&body), node, "backend for {sni}");
    }
    // An unknown name gets the first certificate (the default): a client verifying
    // "c.test" rejects it.
    let tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    let refused = connector(&ca.pem, &[])
        .connect(ServerName::try_from("c.test").unwrap(), tcp)
        .await;
    assert!(
        refused.is_err(),
        "a.test's certificate does not cover c.test"
    );
}

#[tokio::test]
async fn alpn_negotiates_h2() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let (cert, key) = ca.leaf(dir.path(), "site", &["site.test"]);
    let servers = Servers::new();
    let echo = servers.echo("node1").await;
    let proxy = Proxy::start(&format!(
        "[frontend.web]\nbind = {{ addr = \"127.0.0.1:0\", tls = {} }}\ndefault_backend = \"app\"\n\
         [backend.app]\nservers = [{{ name = \"s1\", addr = \"{echo}\" }}]\n",
        tls_table(&cert, &key)
    ))
    .await;
    let stream = tls(proxy.addr(), "site.test", &ca.pem, &[b"h2", b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let resp = h2_get(stream, "https://site.test/h2").await;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert_eq!(server_name(&body), "node1");
    assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
}

/// The version ALPN chose is the only one served: over `http/1.1` the HTTP/2 preface is a
/// malformed request, and the connection is closed without a byte of HTTP/2 (hyper answers
/// this one with nothing). Without ALPN, a client that starts with it gets HTTP/2.
#[tokio::test]
async fn alpn_http11_is_http1_only_and_without_alpn_the_preface_is_http2() {
    let Site {
        ca,
        proxy,
        dir: _dir,
        _servers,
        ..
    } = site("").await;
    let mut stream = tls(proxy.addr(), "site.test", &ca.pem, &[b"http/1.1"]).await;
    let answer = send_raw(&mut stream, &crate::support::h2_start()).await;
    assert!(answer.is_empty(), "{answer:?}");

    let stream = tls(proxy.addr(), "site.test", &ca.pem, &[]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);
    h2_get(stream, "https://site.test/prior").await;
}

/// A GET over HTTP/2 on `stream`, answered 200 over HTTP/2.
async fn h2_get(stream: TlsStream<TcpStream>, uri: &str) -> Response<Incoming> {
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    resp
}

#[tokio::test]
async fn reloaded_certificates_serve_new_connections_while_old_ones_keep_working() {
    let Site {
        dir: _dir,
        ca,
        cert,
        key,
        proxy,
        _servers,
    } = site("").await;
    let first = der(&cert);
    let old = tls(proxy.addr(), "site.test", &ca.pem, &[]).await;
    assert_eq!(presented(&old), first);
    let mut old = h1(old).await;
    assert_eq!(h1_get(&mut old, "site.test", "/").await.0, StatusCode::OK);

    // Renew: new files written over the old ones (key first, then the certificate).
    let renewed = tempfile::tempdir().unwrap();
    let (new_cert, new_key) = ca.leaf(renewed.path(), "site", &["site.test"]);
    let second = der(&new_cert);
    std::fs::copy(&new_key, &key).unwrap();
    std::fs::copy(&new_cert, &cert).unwrap();
    let addr = proxy.addr();
    let ca_pem = ca.pem.clone();
    let latest = Arc::new(std::sync::Mutex::new(None));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stream = tls(addr, "site.test", &ca_pem, &[]).await;
        *latest.lock().unwrap() = Some(presented(&stream));
        if presented(&stream) == second {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate was not served within 10s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The connection opened before the renewal still works.
    assert_eq!(
        h1_get(&mut old, "site.test", "/after").await.0,
        StatusCode::OK
    );

    // A broken file keeps the current certificate (for file changes and for SIGHUP).
    std::fs::write(&key, "not a key").unwrap();
    assert!(
        proxy.runtime.reload().await.is_err(),
        "reload with a bad key is rejected"
    );
    let stream = tls(addr, "site.test", &ca_pem, &[]).await;
    assert_eq!(presented(&stream), second);

    // SIGHUP's reload reads the files again, at once.
    let third_dir = tempfile::tempdir().unwrap();
    let (third_cert, third_key) = ca.leaf(third_dir.path(), "site", &["site.test"]);
    std::fs::copy(&third_key, &key).unwrap();
    std::fs::copy(&third_cert, &cert).unwrap();
    proxy.runtime.reload().await.expect("reload");
    let stream = tls(addr, "site.test", &ca_pem, &[]).await;
    assert_eq!(presented(&stream), der(&third_cert));
    assert_eq!(
        h1_get(&mut old, "site.test", "/last").await.0,
        StatusCode::OK
    );
}

/// A certificate from a Kubernetes Secret volume: `tls.crt -> ..data/tls.crt`, `..data ->
/// ..v1`, updated by renaming a new `..data` link over the old one (the only event in the
/// folder names `..data`), is reloaded as a file written in place is.
#[tokio::test]
async fn a_kubernetes_style_secret_update_is_reloaded() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let secret = dir.path().join("secret");
    let version = |name: &str| {
        let v = secret.join(name);
        std::fs::create_dir_all(&v).unwrap();
        let made = tempfile::tempdir().unwrap();
        let (cert, key) = ca.leaf(made.path(), "site", &["site.test"]);
        std::fs::copy(&cert, v.join("tls.crt")).unwrap();
        std::fs::copy(&key, v.join("tls.key")).unwrap();
        der(&cert)
    };
    let first = version("..v1");
    symlink("..v1", secret.join("..data")).unwrap();
    symlink("..data/tls.crt", secret.join("tls.crt")).unwrap();
    symlink("..data/tls.key", secret.join("tls.key")).unwrap();
    let servers = Servers::new();
    let echo = servers.echo("node1").await;
    let proxy = Proxy::start(&format!(
        "[frontend.web]\nbind = [{{ addr = \"127.0.0.1:0\", tls = {} }}]\ndefault_backend = \"app\"\n\
         [backend.app]\nservers = [{{ name = \"s1\", addr = \"{echo}\" }}]\n",
        tls_table(&secret.join("tls.crt"), &secret.join("tls.key"))
    ))
    .await;
    let addr = proxy.addr();
    assert_eq!(
        presented(&tls(addr, "site.test", &ca.pem, &[]).await),
        first
    );

    let second = version("..v2");
    symlink("..v2", secret.join("..data_tmp")).unwrap();
    std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while presented(&tls(addr, "site.test", &ca.pem, &[]).await) != second {
        assert!(
            std::time::Instant::now() < deadline,
            "the updated Secret's certificate was not served within 10s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TLS server with a certificate for `names` from `ca`, answering its name and the HTTP
/// version of the request; speaks HTTP/2 when `h2`.
async fn tls_backend(ca: &TestCa, dir: &Path, name: &str, names: &[&str], h2: bool) -> SocketAddr {
    let (cert, key) = ca.leaf(dir, name, names);
    tls_backend_with(&cert, &key, name, h2).await
}

/// A TLS echo backend presenting the certificate at `cert`, answering with `name`.
async fn tls_backend_with(cert: &Path, key: &Path, name: &str, h2: bool) -> SocketAddr {
    let chain = vec![der(cert)];
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let name: Arc<str> = Arc::from(name);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, name) = (acceptor.clone(), Arc::clone(&name));
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |req: Request<Incoming>| {
                    let body = format!("{name}\n{:?}\n", req.version());
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_tls_is_verified_unless_told_not_to() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let other_ca = TestCa::new(dir.path(), "other-ca");
    let backend = tls_backend(&ca, dir.path(), "secure", &["backend.test"], false).await;
    let config = |server_keys: &str| {
        format!(
            "[frontend.web]\nbind = \"127.0.0.1:0\"\ndefault_backend = \"app\"\n\
             [backend.app]\nretries = 0\nservers = [{{ name = \"s1\", addr = \"{backend}\", {server_keys} }}]\n"
        )
    };
    // The right CA and name: served.
    let good = Proxy::start(&config(&format!(
        "tls = true, ca = \"{}\", sni = \"backend.test\"",
        ca.pem.display()
    )))
    .await;
    let (status, _, body) = crate::support::get(&good.url("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server_name(&body), "secure");
    // The wrong CA: the handshake fails like a failed connect (503, no server could take it).
    let wrong_ca = Proxy::start(&config(&format!(
        "tls = true, ca = \"{}\", sni = \"backend.test\"",
        other_ca.pem.display()
    )))
    .await;
    assert_eq!(
        crate::support::get(&wrong_ca.url("/")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // The right CA but a name the certificate does not cover: refused too.
    let wrong_name = Proxy::start(&config(&format!(
        "tls = true, ca = \"{}\", sni = \"other.test\"",
        ca.pem.display()
    )))
    .await;
    assert_eq!(
        crate::support::get(&wrong_name.url("/")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // The bundled public roots do not know the test CA.
    let public_roots = Proxy::start(&config("tls = true, sni = \"backend.test\"")).await;
    assert_eq!(
        crate::support::get(&public_roots.url("/")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // verify = "none": any certificate.
    let unverified = Proxy::start(&config("tls = true, verify = \"none\"")).await;
    let (status, _, body) = crate::support::get(&unverified.url("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server_name(&body), "secure");
}

/// A self-signed certificate that is also a CA (`openssl req -x509`'s default), written as
/// `stem.pem` and `stem.key`; `expired` puts its validity period in the past.
fn self_signed_ca(dir: &Path, stem: &str, names: &[&str], expired: bool) -> (PathBuf, PathBuf) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    write_pair(dir, stem, &cert, &key)
}

#[tokio::test]
async fn a_self_signed_ca_certificate_named_in_ca_is_trusted_for_its_names() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_ca(dir.path(), "self", &["backend.test"], false);
    let backend = tls_backend_with(&cert, &key, "self", false).await;
    let (old, old_key) = self_signed_ca(dir.path(), "old", &["backend.test"], true);
    let expired = tls_backend_with(&old, &old_key, "old", false).await;
    let other_ca = TestCa::new(dir.path(), "other-ca");
    let status = |addr: SocketAddr, ca: PathBuf, sni: &'static str| async move {
        let proxy = Proxy::start(&format!(
            "[frontend.web]\nbind = \"127.0.0.1:0\"\ndefault_backend = \"app\"\n\
             [backend.app]\nretries = 0\nservers = [{{ name = \"s1\", addr = \"{addr}\", \
             tls = true, ca = \"{}\", sni = \"{sni}\" }}]\n",
            ca.display()
        ))
        .await;
        let (status, _, body) = crate::support::get(&proxy.url("/")).await;
        (status, body)
    };
    // The certificate itself as the CA bundle, as HAProxy's ca-file takes it: served.
    let (code, body) = status(backend, cert.clone(), "backend.test").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(server_name(&body), "self");
    // Its name is still checked,
    assert_eq!(
        status(backend, cert, "other.test").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // and so is its validity period,
    assert_eq!(
        status(expired, old, "backend.test").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // and a bundle without it does not trust it.
    assert_eq!(
        status(backend, other_ca.pem.clone(), "backend.test")
            .await
            .0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn http_checks_reach_tls_servers_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let backend = tls_backend(&ca, dir.path(), "secure", &["backend.test"], false).await;
    let proxy = Proxy::start(&format!(
        "[frontend.web]\nbind = \"127.0.0.1:0\"\ndefault_backend = \"app\"\n\
         [backend.app]\ntls = true\nca = \"{}\"\nsni = \"backend.test\"\n\
         servers = [{{ name = \"s1\", addr = \"{backend}\", check = true }}]\n\
         check = {{ interval = \"50ms\", rise = 1, fall = 1, http = \"GET /health\" }}\n",
        ca.pem.display()
    ))
    .await;
    let snapshot = proxy.runtime.proxy().snapshot();
    let state = Arc::clone(&snapshot.backends[0].servers[0].state);
    // The check passes only if it spoke TLS (a plain request gets no HTTP answer).
    wait_until(Duration::from_secs(5), "a passing TLS check", || {
        state.checks().0 >= 2
    })
    .await;
    assert_eq!(state.checks().1, 0, "no check failed");
    assert!(state.usable());
    let (status, _, body) = crate::support::get(&proxy.url("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server_name(&body), "secure");
}

#[tokio::test]
async fn h2_to_servers_with_prior_knowledge_and_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let servers = Servers::new();
    let cleartext = servers.echo("h2c").await;
    let secure = tls_backend(&ca, dir.path(), "h2tls", &["backend.test"], true).await;
    let proxy = Proxy::start(&format!(
        r#"[frontend.a]
bind = "127.0.0.1:0"
default_backend = "plain"
[frontend.b]
bind = "127.0.0.1:0"
default_backend = "secure"
[backend.plain]
proto = "h2"
servers = [{{ name = "s1", addr = "{cleartext}" }}]
[backend.secure]
proto = "h2"
tls = true
ca = "{ca}"
sni = "backend.test"
servers = [{{ name = "s1", addr = "{secure}" }}]
"#,
        ca = ca.pem.display()
    ))
    .await;
    // The client speaks HTTP/1.1 to wasp; wasp speaks HTTP/2 to the servers.
    let (status, _, body) = crate::support::get(&format!("http://{}/x", proxy.addrs[0])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server_name(&body), "h2c");
    assert!(body.contains("HTTP/2.0"), "{body}");
    let (status, _, body) = crate::support::get(&format!("http://{}/y", proxy.addrs[1])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "h2tls\nHTTP/2.0\n");
}

/// An HTTP/2 server in the style of gRPC: it echoes each request body chunk as soon as it
/// arrives, then ends with trailers carrying `grpc-status: 0` and the request's own trailer.
async fn grpc_like_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let te = req.headers().get("te").cloned();
                    let (tx, resp_body) = channel_body();
                    let mut body = req.into_body();
                    tokio::spawn(async move {
                        let mut got = None;
                        while let Some(Ok(frame)) = body.frame().await {
                            match frame.into_data() {
                                Ok(data) => {
                                    let _ = tx.send(Frame::data(data)).await;
                                }
                                Err(frame) => got = frame.into_trailers().ok(),
                            }
                        }
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", HeaderValue::from_static("0"));
                        let echoed = got
                            .and_then(|t| t.get("x-client-trailer").cloned())
                            .unwrap_or_else(|| HeaderValue::from_static("missing"));
                        trailers.insert("x-client-trailer", echoed);
                        let te = te.unwrap_or_else(|| HeaderValue::from_static("missing"));
                        trailers.insert("x-te", te);
                        let _ = tx.send(Frame::trailers(trailers)).await;
                    });
                    let mut resp = Response::new(resp_body);
                    resp.headers_mut()
                        .insert("content-type", HeaderValue::from_static("application/grpc"));
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn grpc_style_streams_and_trailers_pass_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let (cert, key) = ca.leaf(dir.path(), "site", &["site.test"]);
    let backend = grpc_like_backend().await;
    let proxy = Proxy::start(&format!(
        "[frontend.web]\nbind = [{{ addr = \"127.0.0.1:0\", tls = {} }}]\ndefault_backend = \"grpc\"\n\
         [backend.grpc]\nproto = \"h2\"\nservers = [{{ name = \"s1\", addr = \"{backend}\" }}]\n",
        tls_table(&cert, &key)
    ))
    .await;
    let stream = tls(proxy.addr(), "site.test", &ca.pem, &[b"h2"]).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, body) = channel_body();
    let req = Request::post("https://site.test/echo.Echo/Stream")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let limit = Duration::from_secs(5);
    tx.send(Frame::data(Bytes::from_static(b"one")))
        .await
        .unwrap();
    let resp = tokio::time::timeout(limit, sender.send_request(req))
        .await
        .expect("response head while the request is still open")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut resp_body = resp.into_body();
    // Each chunk comes back before the next one is sent: streaming in both directions.
    for (i, chunk) in [&b"one"[..], b"two", b"three"].into_iter().enumerate() {
        if i > 0 {
            tx.send(Frame::data(Bytes::from_static(chunk)))
                .await
                .unwrap();
        }
        let frame = tokio::time::timeout(limit, resp_body.frame())
            .await
            .expect("echoed chunk")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), Bytes::from_static(chunk));
    }
    let mut client_trailers = HeaderMap::new();
    client_trailers.insert("x-client-trailer", HeaderValue::from_static("from-client"));
    tx.send(Frame::trailers(client_trailers)).await.unwrap();
    drop(tx);
    let frame = tokio::time::timeout(limit, resp_body.frame())
        .await
        .expect("trailers")
        .unwrap()
        .unwrap();
    let trailers = frame.into_trailers().expect("response trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(
        trailers["x-client-trailer"], "from-client",
        "request trailers reached the server"
    );
    assert_eq!(
        trailers["x-te"], "trailers",
        "TE: trailers reached the server"
    );
}

#[tokio::test]
async fn redirect_to_https() {
    let servers = Servers::new();
    let echo = servers.echo("node1").await;
    let proxy = Proxy::start(&format!(
        "[frontend.web]\nbind = \"127.0.0.1:0\"\nredirect = \"https\"\ndefault_backend = \"app\"\n\
         [backend.app]\nservers = [{{ name = \"s1\", addr = \"{echo}\" }}]\n"
    ))
    .await;
    let client = crate::support::client();
    let get = Request::get(proxy.url("/a/../b?x=1&y=2"))
        .header("host", "Shop.Example:8080")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, _) = crate::support::send(&client, get).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(headers["location"], "https://shop.example/b?x=1&y=2");
    let post = Request::post(proxy.url("/form"))
        .header("host", "shop.example")
        .body(Full::new(Bytes::from_static(b"data")))
        .unwrap();
    let (status, headers, _) = crate::support::send(&client, post).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(headers["location"], "https://shop.example/form");
}

/// A TLS client that verifies the proxy with `ca` and, when given, presents `identity` (a
/// certificate and its key).
fn client_with_identity(ca: &Path, identity: Option<(&Path, &Path)>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(ca)).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(vec![der(cert)], PrivateKeyDer::from_pem_file(key).unwrap())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// One GET over a new TLS connection; `None` when the handshake or the exchange failed (with
/// TLS 1.3 a refused client certificate shows only once the client reads).
async fn get_with_identity(
    addr: SocketAddr,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Option<(StatusCode, String)> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("site.test").unwrap();
    let stream = client_with_identity(ca, identity)
        .connect(name, tcp)
        .await
        .ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", "site.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .expect("an answer or a failure, not a hang")
        .ok()?;
    let status = resp.status();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test]
async fn client_certificates_are_verified_against_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = TestCa::new(dir.path(), "server-ca");
    let (cert, key) = server_ca.leaf(dir.path(), "site", &["site.test"]);
    let client_ca = TestCa::new(dir.path(), "client-ca");
    let good = client_ca.leaf(dir.path(), "alice", &["alice.client"]);
    let stranger_ca = TestCa::new(dir.path(), "stranger-ca");
    let bad = stranger_ca.leaf(dir.path(), "mallory", &["mallory.client"]);
    let servers = Servers::new();
    let echo = servers.echo("node1").await;
    let config = |verify: &str| {
        format!(
            "[frontend.web]\nbind = [{{ addr = \"127.0.0.1:0\", tls = {{ cert = \"{}\", key = \"{}\", \
             ca = \"{}\", verify_client = \"{verify}\" }} }}]\ndefault_backend = \"app\"\n\
             [backend.app]\nservers = [{{ name = \"s1\", addr = \"{echo}\" }}]\n",
            cert.display(),
            key.display(),
            client_ca.pem.display()
        )
    };
    fn id((c, k): &(PathBuf, PathBuf)) -> Option<(&Path, &Path)> {
        Some((c.as_path(), k.as_path()))
    }

    let required = Proxy::start(&config("required")).await;
    let answer = get_with_identity(required.addr(), &server_ca.pem, id(&good)).await;
    assert_eq!(
        answer.map(|(s, b)| (s, server_name(&b).to_owned())),
        Some((StatusCode::OK, "node1".into()))
    );
    assert_eq!(
        get_with_identity(required.addr(), &server_ca.pem, None).await,
        None,
        "no client certificate: refused"
    );
    assert_eq!(
        get_with_identity(required.addr(), &server_ca.pem, id(&bad)).await,
        None,
        "a certificate from another CA: refused"
    );

    let optional = Proxy::start(&config("optional")).await;
    let anonymous = get_with_identity(optional.addr(), &server_ca.pem, None).await;
    assert_eq!(
        anonymous.map(|(s, _)| s),
        Some(StatusCode::OK),
        "optional: none is fine"
    );
    assert_eq!(
        get_with_identity(optional.addr(), &server_ca.pem, id(&bad)).await,
        None,
        "optional: a certificate that is sent must still verify"
    );
}

#[tokio::test]
async fn a_stalled_handshake_is_cut_after_http_request() {
    let Site {
        ca,
        proxy,
        dir: _dir,
        _servers,
        ..
    } = site("timeout = { http_request = \"300ms\" }").await;
    // Nothing at all, then the first bytes of a ClientHello and nothing more: both closed by
    // the proxy (the read ends) well before the test's own 5 s guard.
    for opening in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
        let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut tcp, opening)
            .await
            .unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut buf),
        )
        .await;
        assert!(read.is_ok(), "the proxy kept a stalled handshake open");
    }
    // The listener still serves a real client.
    let stream = tls(proxy.addr(), "site.test", &ca.pem, &[b"http/1.1"]).await;
    let (status, _) = h1_get(&mut h1(stream).await, "site.test", "/").await;
    assert_eq!(status, StatusCode::OK);
}

/// A router plugin sees the TLS server name and the port the client connected to:
/// `sni-router` sends `a.test` to `alpha` by name, then (after a reload that adds a port
/// table naming the listener's port) every other name to `beta` by port.
#[tokio::test]
async fn router_plugins_see_the_sni_and_the_local_port() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let (cert, key) = ca.leaf(dir.path(), "site", &["a.test", "b.test"]);
    let servers = Servers::new();
    let (alpha, beta, other) = (
        servers.echo("alpha").await,
        servers.echo("beta").await,
        servers.echo("other").await,
    );
    let config = |ports: &str| {
        format!(
            "[frontend.web]\nbind = [{{ addr = \"127.0.0.1:0\", tls = {} }}]\ndefault_backend = \"other\"\n\
             router = \"sni\"\n\
             [backend.alpha]\nservers = [{{ name = \"a\", addr = \"{alpha}\" }}]\n\
             [backend.beta]\nservers = [{{ name = \"b\", addr = \"{beta}\" }}]\n\
             [backend.other]\nservers = [{{ name = \"o\", addr = \"{other}\" }}]\n\
             [plugin.sni]\npath = \"{}\"\ntimeout = \"1s\"\n\
             config = {{ names = \"a.test=alpha\", ports = \"{ports}\" }}\n",
            tls_table(&cert, &key),
            crate::support::test_plugins::wasm("sni-router").display(),
        )
    };
    let proxy = Proxy::start(&config("")).await;
    let served = |sni: &'static str| {
        let (addr, ca) = (proxy.addr(), ca.pem.clone());
        async move {
            let stream = tls(addr, sni, &ca, &[b"http/1.1"]).await;
            let (status, body) = h1_get(&mut h1(stream).await, sni, "/").await;
            assert_eq!(status, StatusCode::OK);
            server_name(&body).to_owned()
        }
    };
    assert_eq!(served("a.test").await, "alpha");
    assert_eq!(
        served("b.test").await,
        "other",
        "no rule: deferred to default_backend"
    );

    let port = proxy.addr().port();
    std::fs::write(&proxy.path, config(&format!("{port}=beta"))).unwrap();
    proxy.runtime.reload().await.expect("reload");
    assert_eq!(served("b.test").await, "beta", "by the local port");
    assert_eq!(served("a.test").await, "alpha", "names before ports");
}

/// Writes `request` on `stream` and returns all that comes back until the proxy ends the
/// connection (a reset ends it too).
async fn send_raw(stream: &mut TlsStream<TcpStream>, request: &[u8]) -> String {
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the connection ends in time")
        .ok();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_client_offering_only_other_protocols_goes_on_without_alpn() {
    let Site {
        ca,
        proxy,
        dir: _dir,
        _servers,
        ..
    } = site("").await;
    // What `curl --http1.0` offers: rustls alone would end the handshake with
    // `no_application_protocol`; HAProxy goes on without ALPN, and so does wasp.
    let mut stream = tls(proxy.addr(), "site.test", &ca.pem, &[b"http/1.0"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);
    let answer = send_raw(&mut stream, b"GET /old HTTP/1.0\r\nHost: site.test\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(answer.contains("node1"), "{answer}");
}

#[tokio::test]
async fn a_connection_that_chose_h2_by_alpn_serves_only_http2() {
    let Site {
        ca,
        proxy,
        dir: _dir,
        _servers,
        ..
    } = site("").await;
    let mut stream = tls(proxy.addr(), "site.test", &ca.pem, &[b"h2"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let answer = send_raw(&mut stream, b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n").await;
    assert!(
        !answer.contains("HTTP/1.1 200"),
        "served HTTP/1.1 after ALPN h2: {answer}"
    );
}

/// A connection that chose h2 by ALPN and then sends nothing is closed at its idle timeout
/// without an HTTP/1.1 `408` written into the HTTP/2 stream of frames.
#[tokio::test]
async fn a_silent_h2_connection_is_closed_without_an_http1_answer() {
    let Site {
        ca,
        proxy,
        dir: _dir,
        _servers,
        ..
    } = site(r#"timeout = { http_request = "300ms", http_keep_alive = "300ms" }"#).await;
    let mut stream = tls(proxy.addr(), "site.test", &ca.pem, &[b"h2"]).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("closed in time");
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains("HTTP/1.1"), "{text:?}");
}
