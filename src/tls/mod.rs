//! TLS termination: certificates loaded and checked (`certs`), chosen per connection by SNI
//! (`sni`); the server name of a ClientHello read without terminating TLS (`hello`, TCP mode); and the rustls server configuration of a listener: TLS 1.2 and 1.3 only with
//! rustls' default cipher suites (no renegotiation or compression exist in rustls), ALPN `h2`
//! then `http/1.1` (none for a client that offers neither), optional client-certificate
//! verification. `client` builds the rustls configuration wasp uses towards TLS servers.

pub mod certs;
pub mod client;
pub mod hello;
pub mod sni;

use std::sync::Arc;

use rustls::server::{ServerConfig, WebPkiClientVerifier};

use crate::config::{ClientAuth, TlsConfig};
use crate::tls::certs::{CertError, provider};
use crate::tls::sni::{CertSet, SniResolver};

/// Why a TLS listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("{}: {message}", .path.display())]
    ClientCa {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("tls: {0}")]
    Verifier(String),
}

/// The TLS side of one listener: its rustls configuration and its replaceable certificates.
#[derive(Debug)]
pub struct TlsListener {
    pub settings: TlsConfig,
    pub resolver: Arc<SniResolver>,
    pub config: Arc<ServerConfig>,
    /// The same without ALPN, for a client that offers only protocols wasp does not speak
    /// (`http/1.0`): rustls would end its handshake with `no_application_protocol`, where
    /// HAProxy goes on without ALPN (RFC 7301 lets a server do either).
    pub config_without_alpn: Arc<ServerConfig>,
}

/// The protocols wasp offers by ALPN, preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

impl TlsListener {
    /// Loads the certificates and builds the rustls configuration.
    pub fn build(settings: &TlsConfig) -> Result<TlsListener, TlsError> {
        let resolver = Arc::new(SniResolver::new(load_set(settings)?));
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = match (&settings.client_ca, settings.client_auth) {
            (Some(ca), auth) if auth != ClientAuth::None => {
                let roots = certs::load_ca(ca)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                let verifier = if auth == ClientAuth::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier.build().map_err(|e| TlsError::ClientCa {
                    path: ca.clone(),
                    message: e.to_string(),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::clone(&resolver) as Arc<_>);
        // The server's order (rustls' default list, strongest first) decides the cipher suite,
        // not the client's.
        config.ignore_client_order = true;
        let config_without_alpn = Arc::new(config.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(TlsListener {
            settings: settings.clone(),
            resolver,
            config: Arc::new(config),
            config_without_alpn,
        })
    }

    /// Re-reads the certificate files; on any error the current certificates stay in use.
    /// New handshakes get the new certificates, established connections are untouched.
    pub fn reload_certs(&self) -> Result<(), TlsError> {
        self.resolver.replace(load_set(&self.settings)?);
        Ok(())
    }

    /// The configuration for a client that offers `offered` by ALPN (`None`: no ALPN).
    pub fn config_for<'a>(
        &self,
        offered: Option<impl Iterator<Item = &'a [u8]>>,
    ) -> &Arc<ServerConfig> {
        match offered {
            Some(protocols) => {
                let mut protocols = protocols.peekable();
                let none_of_ours =
                    protocols.peek().is_some() && !protocols.any(|p| ALPN.contains(&p));
                if none_of_ours {
                    &self.config_without_alpn
                } else {
                    &self.config
                }
            }
            None => &self.config,
        }
    }
}

fn load_set(settings: &TlsConfig) -> Result<CertSet, TlsError> {
    let certs = settings
        .certs
        .iter()
        .map(certs::load)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CertSet::new(certs))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use rustls::RootCertStore;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    use super::*;
    use crate::tls::certs::tests::self_signed;

    fn client(roots: &[&std::path::Path], alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut store = RootCertStore::empty();
        for path in roots {
            let pem = std::fs::read(path).unwrap();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                store.add(cert.unwrap()).unwrap();
            }
        }
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// Accepts one TLS connection and echoes one line; returns the address.
    async fn serve_once(listener: &TlsListener) -> std::net::SocketAddr {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&listener.config));
        tokio::spawn(async move {
            let (sock, _) = tcp.accept().await.unwrap();
            if let Ok(mut tls) = acceptor.accept(sock).await {
                let mut buf = [0u8; 5];
                if tls.read_exact(&mut buf).await.is_ok() {
                    let _ = tls.write_all(&buf).await;
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn sni_picks_the_certificate_and_alpn_prefers_h2() {
        let dir = tempfile::tempdir().unwrap();
        let a = self_signed(dir.path(), "a", &["a.example"]);
        let b = self_signed(dir.path(), "b", &["b.example"]);
        let settings = TlsConfig {
            certs: vec![a.clone(), b.clone()],
            client_ca: None,
            client_auth: ClientAuth::None,
        };
        let listener = TlsListener::build(&settings).unwrap();
        let addr = serve_once(&listener).await;
        let connector = client(&[&a.cert, &b.cert], &[b"h2", b"http/1.1"]);
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = connector
            .connect(ServerName::try_from("b.example").unwrap(), tcp)
            .await
            .expect("handshake");
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
        let presented = conn.peer_certificates().unwrap()[0].clone();
        let b_der = CertificateDer::from_pem_file(&b.cert).unwrap();
        assert_eq!(presented, b_der, "the certificate for b.example");
        tls.write_all(b"hello").await.unwrap();
        let mut echo = [0u8; 5];
        tls.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"hello");
    }

    #[tokio::test]
    async fn reloaded_certificates_serve_new_handshakes() {
        let dir = tempfile::tempdir().unwrap();
        let first = self_signed(dir.path(), "site", &["site.example"]);
        let old_der = CertificateDer::from_pem_file(&first.cert).unwrap();
        let settings = TlsConfig {
            certs: vec![first.clone()],
            client_ca: None,
            client_auth: ClientAuth::None,
        };
        let listener = TlsListener::build(&settings).unwrap();
        // Replace the files with a new certificate for the same name, then reload.
        let second_dir = tempfile::tempdir().unwrap();
        let second = self_signed(second_dir.path(), "site", &["site.example"]);
        std::fs::copy(&second.cert, &first.cert).unwrap();
        std::fs::copy(&second.key, &first.key).unwrap();
        listener.reload_certs().unwrap();
        let addr = serve_once(&listener).await;
        let connector = client(&[&first.cert], &[]);
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = connector
            .connect(ServerName::try_from("site.example").unwrap(), tcp)
            .await
            .expect("handshake");
        let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        assert_ne!(
            presented, old_der,
            "new handshakes get the reloaded certificate"
        );
    }

    #[test]
    fn a_broken_reload_keeps_the_old_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let pair = self_signed(dir.path(), "site", &["site.example"]);
        let settings = TlsConfig {
            certs: vec![pair.clone()],
            client_ca: None,
            client_auth: ClientAuth::None,
        };
        let listener = TlsListener::build(&settings).unwrap();
        let before = listener.resolver.current().certs()[0].key.cert[0].clone();
        std::fs::write(&pair.key, "not a key").unwrap();
        assert!(listener.reload_certs().is_err());
        assert_eq!(listener.resolver.current().certs()[0].key.cert[0], before);
    }
}
