//! The rustls configuration wasp uses towards TLS servers: the server's certificate is
//! verified against the bundled Mozilla roots (`webpki-roots`, so that nothing depends on the
//! machine's certificate store) or against a configured CA bundle, and not at all only when a
//! backend says `verify = "none"`. ALPN offers `h2` or `http/1.1` after the backend's `proto`.
//!
//! A certificate that is itself in the configured CA bundle is trusted as it is, as OpenSSL
//! (and so HAProxy's `ca-file`) trusts it: the self-signed certificate `openssl req -x509`
//! makes is also a CA (`CA:TRUE`), which webpki refuses as a server's own certificate. Its
//! name and validity period are still checked.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::config::UpstreamTls;
use crate::tls::TlsError;
use crate::tls::certs::{self, provider};

/// The client configuration for servers with these settings; `h2` selects the ALPN offer.
pub fn client_config(settings: &UpstreamTls, h2: bool) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let trust = match &settings.ca {
        _ if !settings.verify => Some(Trust::Any),
        Some(ca) => {
            let (roots, listed) = certs::load_ca_listed(ca)?;
            let chains = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
            Some(Trust::Bundle { chains, listed })
        }
        None => None,
    };
    let mut config = match trust {
        Some(trust) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier {
                provider: provider(),
                trust,
            }))
            .with_no_client_auth(),
        // A chain to the bundled Mozilla roots: rustls' own verifier.
        None => builder
            .with_root_certificates(RootCertStore::from_iter(
                webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
            ))
            .with_no_client_auth(),
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

/// How a server's certificate is trusted when the rustls default (a chain to the bundled
/// Mozilla roots) is not what the backend says. Handshake signatures are checked either way,
/// so the peer must hold the key of the certificate it sent.
#[derive(Debug)]
struct ServerVerifier {
    provider: Arc<CryptoProvider>,
    trust: Trust,
}

#[derive(Debug)]
enum Trust {
    /// `verify = "none"`: any certificate.
    Any,
    /// A chain to the `ca` bundle, or a certificate found in the bundle itself (then only its
    /// name and validity period are checked).
    Bundle {
        chains: Arc<WebPkiServerVerifier>,
        /// The bundle's certificates, as written.
        listed: Vec<CertificateDer<'static>>,
    },
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Trust::Bundle { chains, listed } = &self.trust else {
            return Ok(ServerCertVerified::assertion());
        };
        let chained =
            chains.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        if chained.is_ok() || !listed.iter().any(|c| c == end_entity) {
            return chained;
        }
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| CertificateError::BadEncoding)?;
        cert.verify_is_valid_for_subject_name(server_name)
            .map_err(|_| CertificateError::NotValidForName)?;
        certs::check_validity(end_entity, now)?;
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
