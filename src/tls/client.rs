//! The rustls configuration wasp uses towards TLS servers: the server's certificate is
//! verified against the bundled Mozilla roots (`webpki-roots`, so that nothing depends on the
//! machine's certificate store) or against a configured CA bundle, and not at all only when a
//! backend says `verify = "none"`. ALPN offers `h2` or `http/1.1` after the backend's `proto`.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::UpstreamTls;
use crate::tls::TlsError;
use crate::tls::certs::{self, provider};

/// The client configuration for servers with these settings; `h2` selects the ALPN offer.
pub fn client_config(settings: &UpstreamTls, h2: bool) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let mut config = if settings.verify {
        let roots = match &settings.ca {
            Some(ca) => certs::load_ca(ca)?,
            None => RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(Arc::new(config))
}

/// The name a server is verified against (and sent as SNI when it is a DNS name): the
/// configured or derived `sni`, else the server's address.
pub fn server_name(settings: &UpstreamTls, addr: IpAddr) -> ServerName<'static> {
    settings
        .sni
        .as_deref()
        .and_then(|s| ServerName::try_from(s.to_owned()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(addr.into()))
}

/// `verify = "none"`: any certificate is accepted; handshake signatures are still checked, so
/// the peer must hold the key of the certificate it sent.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
