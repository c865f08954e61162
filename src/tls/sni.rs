//! Choosing a certificate by SNI: exact names first, then wildcards (`*.example.com` covers one
//! label), else the default (the first certificate configured). The set can be replaced while
//! connections are being accepted: handshakes in progress keep the set they started with.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::tls::certs::Certificate;

/// The certificates of one TLS listener, indexed by name.
#[derive(Debug)]
pub struct CertSet {
    certs: Vec<Certificate>,
    exact: HashMap<String, usize>,
    /// `example.com` for a `*.example.com` certificate.
    wildcard: HashMap<String, usize>,
}

impl CertSet {
    /// `certs` must not be empty; the first is the default.
    pub fn new(certs: Vec<Certificate>) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, cert) in certs.iter().enumerate() {
            for name in &cert.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_owned()).or_insert(i),
                    None => exact.entry(name.clone()).or_insert(i),
                };
            }
        }
        Self {
            certs,
            exact,
            wildcard,
        }
    }

    pub fn certs(&self) -> &[Certificate] {
        &self.certs
    }

    /// The certificate for a client that asked for `sni` (or sent none).
    pub fn select(&self, sni: Option<&str>) -> Option<&Certificate> {
        let by_name = sni.and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            self.exact.get(&name).or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
        });
        by_name.or(Some(&0)).and_then(|&i| self.certs.get(i))
    }
}

/// rustls' certificate resolver over a replaceable [`CertSet`].
#[derive(Debug)]
pub struct SniResolver {
    set: ArcSwap<CertSet>,
}

impl SniResolver {
    pub fn new(set: CertSet) -> Self {
        Self {
            set: ArcSwap::from_pointee(set),
        }
    }

    /// New handshakes use `set` from now on.
    pub fn replace(&self, set: CertSet) {
        self.set.store(Arc::new(set));
    }

    pub fn current(&self) -> Arc<CertSet> {
        self.set.load_full()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.set
            .load()
            .select(hello.server_name())
            .map(|c| Arc::clone(&c.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::certs::load;
    use crate::tls::certs::tests::self_signed;

    #[test]
    fn exact_then_wildcard_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let default = load(&self_signed(dir.path(), "d", &["default.example"])).unwrap();
        let exact = load(&self_signed(dir.path(), "e", &["shop.example"])).unwrap();
        let wild = load(&self_signed(dir.path(), "w", &["*.api.example"])).unwrap();
        let set = CertSet::new(vec![default, exact, wild]);
        let pick = |sni: Option<&str>| set.select(sni).map(|c| c.names[0].clone()).unwrap();
        assert_eq!(pick(Some("shop.example")), "shop.example");
        assert_eq!(
            pick(Some("SHOP.example.")),
            "shop.example",
            "case and trailing dot"
        );
        assert_eq!(pick(Some("v1.api.example")), "*.api.example");
        assert_eq!(
            pick(Some("a.v1.api.example")),
            "default.example",
            "a wildcard covers one label"
        );
        assert_eq!(pick(Some("api.example")), "default.example");
        assert_eq!(pick(None), "default.example");
    }
}
