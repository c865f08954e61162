//! `sni-router`: routes TLS connections by the server name the client asked for, and anything
//! by the port it connected to, for `mode = "tcp"` frontends that pass TLS through (and for
//! HTTP frontends, where the same fields are set on TLS binds). Its tables come from the
//! plugin's config:
//!
//! - `names = "a.example=alpha,*.b.example=beta"`: an exact server name, or `*.` and a suffix
//!   (which matches one or more labels before it), names a backend; the first match wins;
//! - `ports = "8443=secure"`: the destination port names a backend.
//!
//! Names are tried first, then ports; when neither matches the frontend's native rules decide.

use std::sync::OnceLock;

use wasp_plugin::{Request, RouteDecision, Router};

/// `(pattern, backend)` pairs in config order.
pub type Names = Vec<(String, String)>;
/// `(port, backend)` pairs in config order.
pub type Ports = Vec<(u16, String)>;

/// Parses `"key=backend,key=backend"`; entries without `=` or with an empty side are skipped.
fn pairs(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.split(',')
        .filter_map(|entry| entry.trim().split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
}

/// Parses the `names` table; patterns are compared in lower case.
pub fn parse_names(text: &str) -> Names {
    pairs(text)
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect()
}

/// Parses the `ports` table; entries whose port is not a number are skipped.
pub fn parse_ports(text: &str) -> Ports {
    pairs(text)
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.to_owned())))
        .collect()
}

/// Whether server name `name` (lower case) matches `pattern`.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .strip_suffix(suffix)
            .and_then(|rest| rest.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty()),
        None => pattern == name,
    }
}

/// The backend for a connection with server name `sni` to port `port`, if a table names one.
pub fn decide<'t>(
    names: &'t Names,
    ports: &'t Ports,
    sni: Option<&str>,
    port: u16,
) -> Option<&'t str> {
    let by_name = sni.and_then(|sni| {
        let sni = sni.to_ascii_lowercase();
        names
            .iter()
            .find(|(pattern, _)| name_matches(pattern, &sni))
            .map(|(_, backend)| backend.as_str())
    });
    by_name.or_else(|| {
        ports
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, backend)| backend.as_str())
    })
}

struct SniRouter;

fn tables() -> &'static (Names, Ports) {
    // The config is fixed for the life of an instance: parse it once.
    static TABLES: OnceLock<(Names, Ports)> = OnceLock::new();
    TABLES.get_or_init(|| {
        (
            parse_names(&wasp_plugin::config("names").unwrap_or_default()),
            parse_ports(&wasp_plugin::config("ports").unwrap_or_default()),
        )
    })
}

impl Router for SniRouter {
    fn route(req: Request) -> RouteDecision {
        let (names, ports) = tables();
        match decide(names, ports, req.sni.as_deref(), req.local_port) {
            Some(backend) => RouteDecision::Backend(backend.to_owned()),
            None => RouteDecision::Defer,
        }
    }
}

wasp_plugin::export_router!(SniRouter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_then_ports_then_defer() {
        let names = parse_names("a.test=alpha, *.B.test=beta");
        let ports = parse_ports("8443=secure, junk=x, 70000=y");
        assert_eq!(ports.len(), 1, "a port that is not a u16 is skipped");
        assert_eq!(decide(&names, &ports, Some("a.test"), 443), Some("alpha"));
        assert_eq!(decide(&names, &ports, Some("A.Test"), 443), Some("alpha"));
        assert_eq!(decide(&names, &ports, Some("x.b.test"), 443), Some("beta"));
        assert_eq!(
            decide(&names, &ports, Some("x.y.b.test"), 443),
            Some("beta")
        );
        assert_eq!(
            decide(&names, &ports, Some("b.test"), 443),
            None,
            "*. needs a label"
        );
        assert_eq!(
            decide(&names, &ports, Some("a.test"), 8443),
            Some("alpha"),
            "names first"
        );
        assert_eq!(decide(&names, &ports, None, 8443), Some("secure"));
        assert_eq!(
            decide(&names, &ports, Some("other.test"), 8443),
            Some("secure")
        );
        assert_eq!(decide(&names, &ports, None, 443), None);
    }

    #[test]
    fn wildcards_do_not_match_inside_a_label() {
        assert!(!name_matches("*.b.test", "xb.test"));
        assert!(!name_matches("*.b.test", ".b.test"));
        assert!(name_matches("exact.test", "exact.test"));
    }
}
