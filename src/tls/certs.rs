//! Certificates: loading a PEM chain and its private key, checking that they belong together,
//! and reading what `wasp check` and SNI selection need (the names, the expiry date); loading
//! a CA bundle.
//!
//! This file sits below `config` (which checks the files it names with it) and names nothing
//! else in the crate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, RootCertStore};

/// A certificate file and its private key file (PEM), paths resolved against the config
/// file's directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub use CertFiles as CertPair;

/// Why a certificate could not be loaded; the message names the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{}: cannot read: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a valid PEM file: {message}", .path.display())]
    Pem { path: PathBuf, message: String },
    #[error("{}: no certificate in the file", .path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no private key in the file", .path.display())]
    NoKey { path: PathBuf },
    #[error("{}: the private key is encrypted", .path.display())]
    EncryptedKey { path: PathBuf },
    #[error("{}: unsupported private key: {message}", .path.display())]
    Key { path: PathBuf, message: String },
    #[error("{}: invalid certificate: {message}", .path.display())]
    Certificate { path: PathBuf, message: String },
    #[error("{} does not match the certificate in {}", .key.display(), .cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
}

impl CertError {
    /// The file the problem is in (for a mismatch, the key).
    pub fn path(&self) -> &Path {
        match self {
            CertError::Read { path, .. }
            | CertError::Pem { path, .. }
            | CertError::NoCertificate { path }
            | CertError::NoKey { path }
            | CertError::EncryptedKey { path }
            | CertError::Key { path, .. }
            | CertError::Certificate { path, .. } => path,
            CertError::Mismatch { key, .. } => key,
        }
    }

    /// Whether the problem is with the key (`Some(true)`) or the certificate (`Some(false)`);
    /// `None` for a file that cannot be read or parsed, whichever it is named as.
    pub fn about_key(&self) -> Option<bool> {
        match self {
            CertError::NoKey { .. }
            | CertError::EncryptedKey { .. }
            | CertError::Key { .. }
            | CertError::Mismatch { .. } => Some(true),
            CertError::NoCertificate { .. } | CertError::Certificate { .. } => Some(false),
            CertError::Read { .. } | CertError::Pem { .. } => None,
        }
    }
}

/// A loaded certificate, ready for rustls.
#[derive(Debug, Clone)]
pub struct Certificate {
    pub pair: CertPair,
    pub key: Arc<CertifiedKey>,
    /// DNS names it is valid for (subject alternative names, else the common name), lower
    /// case; `*.example.com` for wildcards.
    pub names: Vec<String>,
    /// The end of its validity period.
    pub not_after: SystemTime,
    /// The same, as the certificate states it (for messages).
    pub not_after_text: String,
}

impl Certificate {
    /// Time left before it expires; `None` once it has.
    pub fn remaining(&self, now: SystemTime) -> Option<Duration> {
        self.not_after.duration_since(now).ok()
    }
}

/// The crypto provider wasp uses everywhere (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads and checks a certificate chain and its key.
pub fn load(pair: &CertPair) -> Result<Certificate, CertError> {
    load_each(pair).map_err(|mut errors| errors.swap_remove(0))
}

/// [`load`], with a problem of each file: a missing certificate file and a missing key file
/// are two errors (`wasp check` reports both).
pub fn load_each(pair: &CertPair) -> Result<Certificate, Vec<CertError>> {
    match (read_chain(&pair.cert), read_key(&pair.key)) {
        (Ok(chain), Ok(key)) => combine(pair, chain, key).map_err(|e| vec![e]),
        (chain, key) => Err(chain.err().into_iter().chain(key.err()).collect()),
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let pem = read(path)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        // PKCS#8 `ENCRYPTED PRIVATE KEY`, or a traditional key with a `Proc-Type` header: a
        // key, but one wasp cannot read without its passphrase.
        rustls::pki_types::pem::Error::NoItemsFound
            if contains(&pem, b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
                || contains(&pem, b"Proc-Type: 4,ENCRYPTED") =>
        {
            CertError::EncryptedKey {
                path: path.to_owned(),
            }
        }
        rustls::pki_types::pem::Error::NoItemsFound => CertError::NoKey {
            path: path.to_owned(),
        },
        e => CertError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        },
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A chain and its key as one certificate: the key must be usable and match the chain's leaf.
fn combine(
    pair: &CertPair,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Certificate, CertError> {
    let Inspected {
        names,
        not_after,
        not_after_text,
        public_key,
    } = inspect(&chain[0], &pair.cert)?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::Key {
            path: pair.key.clone(),
            message: e.to_string(),
        })?;
    // The key's public half against the certificate's, compared here rather than by rustls'
    // `keys_match`, whose certificate parser takes X.509 v3 only: a v1 certificate (what
    // `openssl x509 -req` makes without extensions) would read as a key that does not match.
    if signing
        .public_key()
        .is_some_and(|spki| spki.as_ref() != public_key.as_slice())
    {
        return Err(CertError::Mismatch {
            cert: pair.cert.clone(),
            key: pair.key.clone(),
        });
    }
    let certified = CertifiedKey::new(chain, signing);
    Ok(Certificate {
        pair: pair.clone(),
        key: Arc::new(certified),
        names,
        not_after,
        not_after_text,
    })
}

/// Loads a CA bundle (one or more PEM certificates), as used to verify client certificates or
/// servers.
pub fn load_ca(path: &Path) -> Result<RootCertStore, CertError> {
    load_ca_listed(path).map(|(roots, _)| roots)
}

/// A CA bundle as trust anchors, and its certificates as written (to recognise one of them
/// presented as a server's own certificate).
pub fn load_ca_listed(
    path: &Path,
) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), CertError> {
    let pem = read(path)?;
    let mut roots = RootCertStore::empty();
    let mut listed = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| CertError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        roots
            .add(cert.clone())
            .map_err(|e| CertError::Certificate {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        listed.push(cert);
    }
    if roots.is_empty() {
        return Err(CertError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok((roots, listed))
}

/// Whether `now` is within a certificate's validity period.
pub fn check_validity(der: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|_| CertificateError::BadEncoding)?;
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    if now < cert.validity().not_before.timestamp() {
        return Err(CertificateError::NotValidYet.into());
    }
    if now > cert.validity().not_after.timestamp() {
        return Err(CertificateError::Expired.into());
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The DNS names and the expiry (as a time and as text) of an end-entity certificate.
/// What wasp reads of a leaf certificate.
struct Inspected {
    /// DNS names (subject alternative names, else the common name), lower case.
    names: Vec<String>,
    not_after: SystemTime,
    not_after_text: String,
    /// The DER of its SubjectPublicKeyInfo.
    public_key: Vec<u8>,
}

fn inspect(der: &CertificateDer<'_>, path: &Path) -> Result<Inspected, CertError> {
    let bad = |message: String| CertError::Certificate {
        path: path.to_owned(),
        message,
    };
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| bad(e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    let secs = cert.validity().not_after.timestamp();
    Ok(Inspected {
        names,
        not_after: UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)),
        not_after_text: cert.validity().not_after.to_string(),
        public_key: cert.public_key().raw.to_vec(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed certificate for `names` written to `dir`: (cert path, key path).
    pub(crate) fn self_signed(dir: &Path, stem: &str, names: &[&str]) -> CertPair {
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let generated = rcgen::generate_simple_self_signed(names).expect("generate");
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
        CertPair { cert, key }
    }

    #[test]
    fn loads_a_pair_with_its_names_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let pair = self_signed(dir.path(), "a", &["A.example", "*.b.example"]);
        let cert = load(&pair).expect("loads");
        assert_eq!(cert.names, ["a.example", "*.b.example"]);
        assert!(
            cert.remaining(SystemTime::now())
                .is_some_and(|d| d > Duration::from_secs(86_400))
        );
    }

    /// An X.509 v1 certificate (`openssl x509 -req` without extensions; HAProxy serves it)
    /// loads with its key, and with another key is a mismatch, not an unreadable certificate.
    #[test]
    fn a_version_1_certificate_loads_with_its_key() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
        let pair = CertPair {
            cert: fixtures.join("v1.pem"),
            key: fixtures.join("v1.key"),
        };
        let cert = load(&pair).expect("loads");
        assert_eq!(cert.names, ["v1.example"]);
        let dir = tempfile::tempdir().unwrap();
        let other = self_signed(dir.path(), "other", &["other.example"]);
        let mismatched = CertPair {
            cert: pair.cert.clone(),
            key: other.key,
        };
        assert!(matches!(load(&mismatched), Err(CertError::Mismatch { .. })));
    }

    #[test]
    fn each_problem_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = self_signed(dir.path(), "a", &["a.example"]);
        let b = self_signed(dir.path(), "b", &["b.example"]);
        let mismatched = CertPair {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        let err = load(&mismatched).unwrap_err();
        assert!(matches!(err, CertError::Mismatch { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("b.key does not match the certificate in"),
            "{err}"
        );

        let missing = CertPair {
            cert: dir.path().join("nope.pem"),
            key: a.key.clone(),
        };
        assert!(matches!(load(&missing), Err(CertError::Read { .. })));

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\n%%%%\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = load(&CertPair {
            cert: garbage.clone(),
            key: a.key.clone(),
        })
        .unwrap_err();
        assert!(matches!(err, CertError::Pem { .. }), "{err}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        assert!(matches!(
            load(&CertPair {
                cert: empty.clone(),
                key: a.key.clone()
            }),
            Err(CertError::NoCertificate { .. })
        ));
        assert!(matches!(
            load(&CertPair {
                cert: a.cert.clone(),
                key: empty
            }),
            Err(CertError::NoKey { .. })
        ));
    }
}
