//! Header rewriting on the way through: hop-by-hop removal (both directions) and the
//! forwarding headers wasp adds.
//!
//! Order matters: hop-by-hop headers, including every header the `Connection` header names,
//! are removed *before* wasp adds its own, so `Connection: X-Forwarded-For` cannot delete them.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Removes hop-by-hop headers: `Connection` and every header it names, `Keep-Alive`, `TE`,
/// `Trailer`, `Transfer-Encoding`, `Upgrade`, and `Proxy-*` headers.
///
/// One pass over the names finds them (usually none, or just `Connection: keep-alive`, whose
/// token names no other header present), so the common cases make no lookup of a name that
/// is not there, and a message without hop-by-hop headers allocates nothing.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if is_hop_by_hop(name) {
            doomed.push(name.clone());
        }
    }
    if doomed.is_empty() {
        return;
    }
    // End-to-end headers that `Connection` names go as well (hop-by-hop ones already do).
    let hop = doomed.len();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(text) = value.to_str() else { continue };
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if let Some(name) = headers
                .keys()
                .find(|n| n.as_str().eq_ignore_ascii_case(token) && !is_hop_by_hop(n))
                && !doomed[hop..].contains(name)
            {
                doomed.push(name.clone());
            }
        }
    }
    for name in doomed {
        headers.remove(name);
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    let name = name.as_str();
    matches!(
        name,
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    ) || name.starts_with("proxy-")
}

/// Replaces whatever forwarding headers the client sent with wasp's own: the client sent them,
/// so they cannot be trusted. `host` is the canonical authority, if any.
/// `client` is the client's address as [`client_value`] made it, `host` the `Host` value sent.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: HeaderValue,
    scheme: &'static str,
    host: Option<HeaderValue>,
) {
    // Usually the client sent none of them: then there is nothing to look up and remove.
    let sent = headers.keys().any(|n| {
        matches!(
            n.as_str(),
            "forwarded"
                | "x-real-ip"
                | "x-forwarded-for"
                | "x-forwarded-proto"
                | "x-forwarded-host"
        )
    });
    if sent {
        headers.remove(&FORWARDED);
        headers.remove(&X_REAL_IP);
        headers.remove(&X_FORWARDED_HOST);
    }
    headers.reserve(3);
    headers.insert(X_FORWARDED_FOR.clone(), client);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
    if let Some(v) = host {
        headers.insert(X_FORWARDED_HOST.clone(), v);
    }
}

/// A client address as `X-Forwarded-For` gives it (IPv4-mapped IPv6 addresses as IPv4); made
/// once per connection.
pub fn client_value(ip: IpAddr) -> HeaderValue {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    // An address's text form is always a valid header value.
    HeaderValue::try_from(ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names left in `h`, in order.
    fn names(h: &HeaderMap) -> Vec<String> {
        h.keys().map(|k| k.as_str().to_owned()).collect()
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic x"),
            ("proxy-foo", "1"),
            ("x-kept", "yes"),
            ("content-length", "3"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left = names(&h);
        left.sort();
        assert_eq!(left, vec!["content-length", "x-kept"]);
    }

    #[test]
    fn hop_by_hop_headers_go_without_a_connection_header_too() {
        let mut h = map(&[
            ("keep-alive", "timeout=5"),
            ("x-kept", "yes"),
            ("proxy-foo", "1"),
            ("upgrade", "h2c"),
        ]);
        strip_hop_by_hop(&mut h);
        let left = names(&h);
        assert_eq!(left, vec!["x-kept"]);
        let mut untouched = map(&[("host", "a"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut untouched);
        assert_eq!(untouched.len(), 2);
    }

    #[test]
    fn a_lone_connection_header_goes_with_what_it_names() {
        let mut h = map(&[
            ("server", "nginx"),
            ("connection", "keep-alive"),
            ("content-length", "6"),
        ]);
        strip_hop_by_hop(&mut h);
        let left = names(&h);
        assert_eq!(left, vec!["server", "content-length"]);
        let mut h = map(&[
            ("connection", "close, X-Secret"),
            ("x-secret", "1"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        let left = names(&h);
        assert_eq!(left, vec!["x-kept"]);
    }

    #[test]
    fn connection_cannot_remove_forwarding_headers_added_after() {
        let mut h = map(&[("connection", "x-forwarded-for")]);
        strip_hop_by_hop(&mut h);
        set_forwarded(
            &mut h,
            client_value("10.0.0.1".parse().unwrap()),
            "http",
            Some(HeaderValue::from_static("example.com")),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
    }

    #[test]
    fn client_supplied_forwarding_headers_are_replaced() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-host", "evil"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
        ]);
        set_forwarded(
            &mut h,
            client_value("::ffff:192.0.2.7".parse().unwrap()),
            "https",
            None,
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(h.get("x-forwarded-host").is_none());
        assert!(h.get("forwarded").is_none() && h.get("x-real-ip").is_none());
        set_forwarded(
            &mut h,
            client_value("2001:db8::1".parse().unwrap()),
            "http",
            Some(HeaderValue::from_static("a.example:8080")),
        );
        assert_eq!(h["x-forwarded-for"], "2001:db8::1");
        assert_eq!(h["x-forwarded-host"], "a.example:8080");
    }
}
