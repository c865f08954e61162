//! TLS keys: a bind's `tls` table (certificates chosen by SNI, client verification) and the
//! upstream TLS keys of backends and servers (`tls`, `ca`, `sni`, `verify`).
//!
//! The files these keys name are read and checked here, so that `wasp check` names the file
//! and the problem at the key that names it; relative names are relative to the config file's
//! directory. A certificate that has expired or expires within [`EXPIRY_WARNING`] is a warning.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;

use crate::config::diag::Sink;
use crate::config::model::{ClientAuth, TlsConfig, UpstreamTls};
use crate::config::walk::{Item, Table};
use crate::tls::certs::{self, CertFiles};

/// A certificate expiring sooner than this gets a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// A bind's `tls` table: `{ cert, key }` or `{ certs = [{ cert, key }, ...] }`, with optional
/// `ca` and `verify_client`. `None` when anything in it is wrong (each problem is reported).
pub(crate) fn bind_tls(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Option<TlsConfig> {
    let mut t = item.table(sink)?;
    let (cert, key, list) = (t.take("cert"), t.take("key"), t.take("certs"));
    let ca_item = t.take("ca");
    let verify_item = t.take("verify_client");
    t.finish(sink);
    let mut valid = true;
    let mut pairs = Vec::new();
    match (cert, key, list) {
        (None, None, Some(list)) => {
            let entries = list.array(sink).unwrap_or_default();
            if entries.is_empty() {
                sink.error(
                    list.start(),
                    &list.path,
                    "certs needs at least one certificate",
                )
                .help("write certs = [{ cert = \"a.pem\", key = \"a.key\" }, ...]");
                valid = false;
            }
            for entry in &entries {
                let Some(mut e) = entry.table(sink) else {
                    valid = false;
                    continue;
                };
                let (cert, key) = (e.take("cert"), e.take("key"));
                e.finish(sink);
                match pair(entry, cert, key, sink) {
                    Some(p) => pairs.push(p),
                    None => valid = false,
                }
            }
        }
        (None, None, None) => {
            sink.error(item.start(), &item.path, "tls needs a certificate")
                .help("write tls = { cert = \"site.pem\", key = \"site.key\" }");
            valid = false;
        }
        (cert, key, None) => match pair(item, cert, key, sink) {
            Some(p) => pairs.push(p),
            None => valid = false,
        },
        (_, _, Some(list)) => {
            sink.error(
                list.key_at,
                &list.path,
                "give either cert and key, or certs",
            )
            .help(
                "several certificates go in certs = [{ cert, key }, ...]; the first is the default",
            );
            valid = false;
        }
    }
    let client_ca = match &ca_item {
        Some(i) => match ca_file(i, sink) {
            Some(path) => Some(path),
            None => {
                valid = false;
                None
            }
        },
        None => None,
    };
    let verify = verify_item.as_ref().and_then(|i| {
        i.keyword(
            sink,
            "verify_client",
            &[
                ("optional", ClientAuth::Optional),
                ("required", ClientAuth::Required),
            ],
        )
    });
    let client_auth = match (&ca_item, verify, &verify_item) {
        (Some(_), Some(v), _) => v,
        (Some(_), None, _) => ClientAuth::Required,
        (None, _, Some(i)) => {
            sink.error(i.start(), &i.path, "verify_client needs a ca")
                .help("add ca = \"clients-ca.pem\": the CA that signs client certificates");
            valid = false;
            ClientAuth::None
        }
        (None, _, None) => ClientAuth::None,
    };
    valid.then_some(TlsConfig {
        certs: pairs,
        client_ca,
        client_auth,
    })
}

/// One certificate and key, loaded and checked.
fn pair(
    table: &Item<'_, '_>,
    cert: Option<Item<'_, '_>>,
    key: Option<Item<'_, '_>>,
    sink: &mut Sink<'_>,
) -> Option<CertFiles> {
    let (cert, key) = match (cert, key) {
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => {
            sink.error(table.start(), &table.path, "cert without key")
                .help("add key = \"FILE\": the certificate's private key (PEM)");
            return None;
        }
        (None, _) => {
            sink.error(table.start(), &table.path, "key without cert")
                .help("add cert = \"FILE\": the certificate chain (PEM)");
            return None;
        }
    };
    let (c, k) = (cert.str(sink)?, key.str(sink)?);
    let files = CertFiles {
        cert: sink.resolve(c.value),
        key: sink.resolve(k.value),
    };
    match certs::load_each(&files) {
        Ok(loaded) => {
            let shown = files.cert.display();
            match loaded.remaining(SystemTime::now()) {
                None => {
                    sink.warning(
                        c.start,
                        &cert.path,
                        format!("certificate {shown} expired on {}", loaded.not_after_text),
                    )
                    .help("clients will refuse it; install a renewed certificate (the file is reloaded when it changes)");
                }
                Some(left) if left < EXPIRY_WARNING => {
                    let days = left.as_secs() / 86_400;
                    sink.warning(
                        c.start,
                        &cert.path,
                        format!(
                            "certificate {shown} expires in {days} day{}, on {}",
                            if days == 1 { "" } else { "s" },
                            loaded.not_after_text
                        ),
                    )
                    .help("renew it; the file is reloaded when it changes");
                }
                Some(_) => {}
            }
            Some(files)
        }
        Err(errors) => {
            for e in errors {
                let on_key = e
                    .about_key()
                    .unwrap_or(e.path() == files.key && files.key != files.cert);
                let (at, path) = if on_key {
                    (k.start, &key.path)
                } else {
                    (c.start, &cert.path)
                };
                let d = sink.error(at, path, e.to_string());
                if matches!(e, certs::CertError::EncryptedKey { .. }) {
                    d.help("wasp reads keys without a passphrase: decrypt it (`openssl pkey -in KEY -out PLAIN`) and keep the file readable by wasp alone");
                }
            }
            None
        }
    }
}

/// A CA bundle named by `item`, loaded to check it.
fn ca_file(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Option<PathBuf> {
    let s = item.str(sink)?;
    let path = sink.resolve(s.value);
    match certs::load_ca(&path) {
        Ok(_) => Some(path),
        Err(e) => {
            sink.error(s.start, &item.path, e.to_string());
            None
        }
    }
}

/// The upstream TLS keys of a backend or of one server, before the two are combined.
#[derive(Debug, Clone, Default)]
pub(crate) struct UpstreamKeys {
    tls: Option<bool>,
    ca: Option<PathBuf>,
    sni: Option<String>,
    verify: Option<bool>,
    /// Where the first of `ca`, `sni`, `verify` was written, for the "no effect" warning.
    set_at: Option<(usize, String)>,
    /// A key was invalid (and reported).
    invalid: bool,
}

/// Takes `tls`, `ca`, `sni` and `verify` from a backend or server table.
pub(crate) fn upstream_keys(t: &mut Table<'_, '_>, sink: &mut Sink<'_>) -> UpstreamKeys {
    let mut keys = UpstreamKeys {
        tls: t.take_bool(sink, "tls"),
        ..UpstreamKeys::default()
    };
    let note = |keys: &mut UpstreamKeys, i: &Item<'_, '_>| {
        if keys.set_at.is_none() {
            keys.set_at = Some((i.key_at, i.path.clone()));
        }
    };
    if let Some(i) = t.take("ca") {
        note(&mut keys, &i);
        keys.ca = ca_file(&i, sink);
        keys.invalid |= keys.ca.is_none();
    }
    if let Some(i) = t.take("sni") {
        note(&mut keys, &i);
        keys.sni = i.str(sink).and_then(|s| {
            let is_name = matches!(ServerName::try_from(s.value), Ok(ServerName::DnsName(_)));
            if !is_name {
                sink.error(s.start, &i.path, format!("invalid sni \"{}\"", s.value))
                    .help("sni is a host name such as \"api.example.com\"");
                return None;
            }
            Some(s.value.to_ascii_lowercase())
        });
        keys.invalid |= keys.sni.is_none();
    }
    if let Some(i) = t.take("verify") {
        note(&mut keys, &i);
        keys.verify = i.keyword(sink, "verify", &[("required", true), ("none", false)]);
        keys.invalid |= keys.verify.is_none();
        if keys.verify == Some(false) {
            sink.warning(
                i.start(),
                &i.path,
                "certificate verification is off: any certificate the server presents is accepted",
            )
            .help("remove verify = \"none\", or set ca = \"FILE\" to verify against your own CA");
        }
    }
    keys
}

impl UpstreamKeys {
    /// These keys (a server's) laid over `backend`'s.
    pub(crate) fn over(&self, backend: &UpstreamKeys) -> UpstreamKeys {
        UpstreamKeys {
            tls: self.tls.or(backend.tls),
            ca: self.ca.clone().or_else(|| backend.ca.clone()),
            sni: self.sni.clone().or_else(|| backend.sni.clone()),
            verify: self.verify.or(backend.verify),
            set_at: self.set_at.clone(),
            invalid: self.invalid || backend.invalid,
        }
    }

    pub(crate) fn invalid(&self) -> bool {
        self.invalid
    }

    pub(crate) fn enabled(&self) -> bool {
        self.tls == Some(true)
    }

    /// Warns when `ca`, `sni` or `verify` were written here but TLS is off.
    pub(crate) fn warn_unused(&self, tls_on: bool, sink: &mut Sink<'_>) {
        if let (false, Some((at, path))) = (tls_on, &self.set_at) {
            sink.warning(*at, path, "has no effect without tls = true")
                .help("add tls = true to speak TLS to the server");
        }
    }

    /// The backend-level settings as a model value (the SNI stays as written).
    pub(crate) fn backend_settings(&self) -> Option<UpstreamTls> {
        self.enabled().then(|| UpstreamTls {
            ca: self.ca.clone(),
            sni: self.sni.clone(),
            verify: self.verify.unwrap_or(true),
        })
    }

    /// The TLS settings of a server at `addr_spec`, when TLS is on.
    pub(crate) fn for_server(&self, addr_spec: &str) -> Option<UpstreamTls> {
        self.backend_settings().map(|t| t.for_server(addr_spec))
    }
}

impl UpstreamTls {
    /// These settings for a server written as `addr_spec`: without an explicit `sni`, the
    /// server's host name (none for an IP address).
    pub fn for_server(&self, addr_spec: &str) -> UpstreamTls {
        UpstreamTls {
            sni: self.sni.clone().or_else(|| host_name(addr_spec)),
            ..self.clone()
        }
    }
}

/// The host name of `host:port`, lower case; `None` for an IP address.
fn host_name(addr_spec: &str) -> Option<String> {
    let host = addr_spec
        .rsplit_once(':')
        .map_or(addr_spec, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() || host.parse::<IpAddr>().is_ok() {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::host_name;

    #[test]
    fn host_names_of_server_addresses() {
        assert_eq!(host_name("Node1:8443").as_deref(), Some("node1"));
        assert_eq!(
            host_name("api.example.com:443").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(host_name("127.0.0.1:443"), None);
        assert_eq!(host_name("[::1]:443"), None);
    }
}
