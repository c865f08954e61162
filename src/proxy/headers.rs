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

/// The hop-by-hop headers every message loses, by bit in [`Scan`]'s mask.
const HOP_NAMES: [&str; 6] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];
static HOP_BY_HOP: [HeaderName; 6] = [
    HeaderName::from_static(HOP_NAMES[0]),
    HeaderName::from_static(HOP_NAMES[1]),
    HeaderName::from_static(HOP_NAMES[2]),
    HeaderName::from_static(HOP_NAMES[3]),
    HeaderName::from_static(HOP_NAMES[4]),
    HeaderName::from_static(HOP_NAMES[5]),
];
const TRAILER_BIT: u8 = 1 << 3;
const TRANSFER_ENCODING_BIT: u8 = 1 << 4;
const UPGRADE_BIT: u8 = 1 << 5;

/// What one pass over a message's header names found: which hop-by-hop headers it has, what its
/// `Connection` and `TE` headers say, and (for requests) whether it carries a `Content-Length`
/// or forwarding headers of the client's own.
///
/// The usual message has no hop-by-hop header but `Connection: keep-alive` (whose token names
/// no other header), so stripping it looks up only the names that are there and allocates
/// nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Scan {
    /// Bit `i`: a header named `HOP_BY_HOP[i]` is present.
    hop: u8,
    /// A `Proxy-*` header, or a `Connection` token that may name some other header: the
    /// general (slower) strip is needed.
    general: bool,
    /// `Connection` lists `upgrade`.
    pub connection_upgrade: bool,
    /// `TE` lists `trailers`.
    pub te_trailers: bool,
    pub content_length: bool,
    /// `Content-Length` came as a list (`2, 2`, or the field twice): equal values, or hyper
    /// would have refused the message.
    pub length_list: bool,
    /// A `Transfer-Encoding` header says something other than `chunked`: a coding wasp would
    /// drop (`gzip, chunked`), or one hyper cannot frame.
    pub other_coding: bool,
    /// The client sent `Forwarded`, `X-Real-IP` or an `X-Forwarded-*` header.
    pub forwarding: bool,
}

impl Scan {
    pub fn of(headers: &HeaderMap) -> Self {
        let mut scan = Scan::default();
        for (name, value) in headers {
            // Names `http` knows compare as a one-byte tag, without looking at their text.
            let bit = if *name == header::CONNECTION {
                scan.read_connection(value);
                0
            } else if *name == header::CONTENT_LENGTH {
                scan.length_list |= scan.content_length || value.as_bytes().contains(&b',');
                scan.content_length = true;
                continue;
            } else if *name == header::TE {
                scan.te_trailers |= lists(value, "trailers");
                2
            } else if *name == header::TRAILER {
                3
            } else if *name == header::TRANSFER_ENCODING {
                scan.other_coding |= !value
                    .as_bytes()
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"chunked");
                4
            } else if *name == header::UPGRADE {
                5
            } else if *name == header::FORWARDED {
                scan.forwarding = true;
                continue;
            } else {
                // The other names looked for (`http` knows none of them but two `Proxy-*`)
                // start with one of these letters: most names stop here.
                let text = name.as_str();
                match text.as_bytes()[0] {
                    b'k' if text == "keep-alive" => 1,
                    b'p' => {
                        scan.general |= text.starts_with("proxy-");
                        continue;
                    }
                    b'x' => {
                        scan.forwarding |= matches!(
                            text,
                            "x-real-ip"
                                | "x-forwarded-for"
                                | "x-forwarded-proto"
                                | "x-forwarded-host"
                        );
                        continue;
                    }
                    _ => continue,
                }
            };
            debug_assert_eq!(HOP_NAMES[bit], name.as_str());
            scan.hop |= 1 << bit;
        }
        scan
    }

    fn read_connection(&mut self, value: &HeaderValue) {
        // What nearly every HTTP/1.1 message says: a hop-by-hop name, nothing else to do.
        if value.as_bytes().eq_ignore_ascii_case(b"keep-alive") {
            return;
        }
        // Byte by byte: a token that is not text names no header, but the others in the same
        // value still do.
        for token in tokens(value.as_bytes()) {
            if token.eq_ignore_ascii_case(b"upgrade") {
                self.connection_upgrade = true;
            } else if !is_hop_by_hop(token) {
                self.general = true;
            }
        }
    }

    /// Whether [`Self::strip`] may remove more than the hop-by-hop headers: whatever the
    /// `Connection` header names, which can be any header (`Host` included).
    pub fn strips_named(&self) -> bool {
        self.general
    }

    /// Whether the message has an `Upgrade` header.
    pub fn has_upgrade(&self) -> bool {
        self.hop & UPGRADE_BIT != 0
    }

    /// Whether the message has a `Transfer-Encoding` header.
    pub fn has_transfer_encoding(&self) -> bool {
        self.hop & TRANSFER_ENCODING_BIT != 0
    }

    /// Removes the hop-by-hop headers this scan found in `headers` (the map it scanned,
    /// unchanged since): `Connection` and every header it names, `Keep-Alive`, `TE`,
    /// `Trailer`, `Transfer-Encoding`, `Upgrade`, and `Proxy-*` headers.
    pub fn strip(&self, headers: &mut HeaderMap) {
        if self.general {
            strip_general(headers);
            return;
        }
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            if self.hop & (1 << i) != 0 {
                headers.remove(name);
            }
        }
    }
}

/// A server's response whose framing cannot be relayed faithfully.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("response transfer coding other than chunked")]
pub struct OtherCoding;

/// Removes a server's response's hop-by-hop headers ([`Scan::strip`]). hyper has de-chunked
/// the response: a `Content-Length` sent along with `Transfer-Encoding` is not the body's
/// length (RFC 9112, 6.3) and goes too. A coding besides `chunked` (`gzip, chunked`) would be
/// lost with the header, so such a response is refused instead.
///
/// With `trailers` (the client sent `TE: trailers`) the `Trailer` header stays: it announces
/// the trailer fields the client will get, and hyper sends an HTTP/1.1 client only the
/// trailer fields it names.
pub fn strip_response(headers: &mut HeaderMap, trailers: bool) -> Result<(), OtherCoding> {
    let scan = Scan::of(headers);
    if scan.has_transfer_encoding() {
        if scan.other_coding {
            return Err(OtherCoding);
        }
        if scan.content_length {
            headers.remove(header::CONTENT_LENGTH);
        }
    } else if scan.length_list {
        single_length(headers);
    }
    if trailers && scan.hop & TRAILER_BIT != 0 {
        let announced: Vec<HeaderValue> =
            headers.get_all(header::TRAILER).iter().cloned().collect();
        scan.strip(headers);
        for value in announced {
            headers.append(header::TRAILER, value);
        }
    } else {
        scan.strip(headers);
    }
    Ok(())
}

/// Replaces a `Content-Length` list of equal values (`2, 2`, which hyper accepts) with the one
/// value, as RFC 9110 (8.6) allows and HAProxy does: a strict recipient refuses the list.
fn single_length(headers: &mut HeaderMap) {
    let first = headers.get(header::CONTENT_LENGTH).and_then(|v| {
        let text = v.as_bytes().split(|&b| b == b',').next()?.trim_ascii();
        std::str::from_utf8(text).ok()?.parse::<u64>().ok()
    });
    if let Some(n) = first {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
}

/// Whether a comma-separated header value lists `token` (parameters after `;` ignored).
fn lists(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|t| {
        t.split(',').any(|e| {
            e.split(';')
                .next()
                .is_some_and(|w| w.trim().eq_ignore_ascii_case(token))
        })
    })
}

/// The general case: `Proxy-*` headers, and `Connection` tokens that may name end-to-end
/// headers, which go as well (hop-by-hop ones already do).
fn strip_general(headers: &mut HeaderMap) {
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name.as_str().as_bytes()))
        .cloned()
        .collect();
    let hop = doomed.len();
    for value in headers.get_all(header::CONNECTION) {
        for token in tokens(value.as_bytes()) {
            if let Some(name) = headers.keys().find(|n| {
                let n = n.as_str().as_bytes();
                n.eq_ignore_ascii_case(token) && !is_hop_by_hop(n)
            }) && !doomed[hop..].contains(name)
            {
                doomed.push(name.clone());
            }
        }
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// Whether a header name, or a `Connection` token naming one, is hop-by-hop (any case): such a
/// header goes anyway, so a token naming it names nothing more.
fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_NAMES
        .iter()
        .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
        || name
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"proxy-"))
}

/// The tokens of a comma-separated `Connection` value, trimmed, empty ones skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The forwarding headers wasp adds to a request (`forwardfor`). Kept apart from the request's
/// headers so that each attempt adds them to its own copy (hyper consumes the map it sends).
#[derive(Debug, Clone)]
pub struct Forwarding {
    /// The client's address as [`client_value`] made it.
    pub client: HeaderValue,
    pub scheme: &'static str,
    /// The `Host` value sent upstream.
    pub host: Option<HeaderValue>,
    /// The client sent forwarding headers of its own (a [`Scan`] tells).
    pub sent: bool,
}

impl Forwarding {
    /// Replaces whatever forwarding headers the client sent with wasp's own: the client sent
    /// them, so they cannot be trusted.
    pub fn apply(&self, headers: &mut HeaderMap) {
        // Usually the client sent none of them: then there is nothing to look up and remove.
        if self.sent {
            headers.remove(&FORWARDED);
            headers.remove(&X_REAL_IP);
            headers.remove(&X_FORWARDED_HOST);
        }
        headers.reserve(3);
        headers.insert(X_FORWARDED_FOR.clone(), self.client.clone());
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(self.scheme),
        );
        if let Some(v) = &self.host {
            headers.insert(X_FORWARDED_HOST.clone(), v.clone());
        }
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

    /// The names left, in order, once the hop-by-hop headers of `pairs` are stripped.
    fn left_after_strip(pairs: &[(&str, &str)]) -> Vec<String> {
        let mut h = map(pairs);
        Scan::of(&h).strip(&mut h);
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
        let mut left = left_after_strip(&[
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
        left.sort();
        assert_eq!(left, vec!["content-length", "x-kept"]);
    }

    #[test]
    fn hop_by_hop_headers_go_without_a_connection_header_too() {
        let left = left_after_strip(&[
            ("keep-alive", "timeout=5"),
            ("x-kept", "yes"),
            ("proxy-foo", "1"),
            ("upgrade", "h2c"),
        ]);
        assert_eq!(left, vec!["x-kept"]);
        assert_eq!(
            left_after_strip(&[("host", "a"), ("accept", "*/*")]),
            vec!["host", "accept"]
        );
    }

    #[test]
    fn a_lone_connection_header_goes_with_what_it_names() {
        let left = left_after_strip(&[
            ("server", "nginx"),
            ("connection", "keep-alive"),
            ("content-length", "6"),
        ]);
        assert_eq!(left, vec!["server", "content-length"]);
        let left = left_after_strip(&[
            ("connection", "close, X-Secret"),
            ("x-secret", "1"),
            ("x-kept", "yes"),
        ]);
        assert_eq!(left, vec!["x-kept"]);
    }

    #[test]
    fn a_scan_reads_connection_te_and_the_request_headers_wasp_replaces() {
        let h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("te", "gzip;q=0.5, Trailers"),
            ("content-length", "0"),
            ("x-forwarded-proto", "https"),
        ]);
        let scan = Scan::of(&h);
        assert!(scan.connection_upgrade && scan.has_upgrade());
        assert!(scan.te_trailers && scan.content_length && scan.forwarding);
        let plain = Scan::of(&map(&[("host", "a"), ("te", "gzip")]));
        assert!(!plain.connection_upgrade && !plain.has_upgrade());
        assert!(!plain.te_trailers && !plain.content_length && !plain.forwarding);
        // `Connection: Keep-Alive` in any case names only a hop-by-hop header.
        let keep = Scan::of(&map(&[("connection", "Keep-Alive"), ("keep-alive", "5")]));
        assert_eq!((keep.hop, keep.general), (0b11, false));
        // Each forwarding header the client may send is seen, standard name or not.
        for name in [
            "forwarded",
            "x-real-ip",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
        ] {
            assert!(Scan::of(&map(&[(name, "x")])).forwarding, "{name}");
        }
        for name in [
            "x-forwarded",
            "xforwarded-for",
            "x-frame-options",
            "forwarded-for",
        ] {
            assert!(!Scan::of(&map(&[(name, "x")])).forwarding, "{name}");
        }
        // `Proxy-*` names, standard or not, take the general strip; `Pragma` does not.
        for (name, general) in [
            ("proxy-authorization", true),
            ("proxy-connection", true),
            ("proxy", false),
            ("pragma", false),
        ] {
            assert_eq!(Scan::of(&map(&[(name, "x")])).general, general, "{name}");
        }
    }

    #[test]
    fn connection_tokens_naming_no_hop_by_hop_header_take_the_general_strip() {
        // `close` names no standard header, but a header may carry that name: it goes too.
        assert_eq!(
            left_after_strip(&[
                ("connection", "close"),
                ("close", "1"),
                ("keep-alive", "timeout=5"),
                ("x-kept", "yes"),
            ]),
            vec!["x-kept"]
        );
        // Tokens naming hop-by-hop headers only: each present one goes, nothing else.
        assert_eq!(
            left_after_strip(&[
                ("connection", "Keep-Alive, TE, proxy-authorization"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("transfer-encoding", "chunked"),
                ("x-kept", "yes"),
            ]),
            vec!["x-kept"]
        );
    }

    #[test]
    fn connection_cannot_remove_forwarding_headers_added_after() {
        let mut h = map(&[("connection", "x-forwarded-for")]);
        let scan = Scan::of(&h);
        scan.strip(&mut h);
        Forwarding {
            client: client_value("10.0.0.1".parse().unwrap()),
            scheme: "http",
            host: Some(HeaderValue::from_static("example.com")),
            sent: scan.forwarding,
        }
        .apply(&mut h);
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
        assert!(Scan::of(&h).forwarding);
        Forwarding {
            client: client_value("::ffff:192.0.2.7".parse().unwrap()),
            scheme: "https",
            host: None,
            sent: true,
        }
        .apply(&mut h);
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(h.get("x-forwarded-host").is_none());
        assert!(h.get("forwarded").is_none() && h.get("x-real-ip").is_none());
        let sent = Scan::of(&h).forwarding;
        assert!(sent, "wasp's own headers from the first call");
        Forwarding {
            client: client_value("2001:db8::1".parse().unwrap()),
            scheme: "http",
            host: Some(HeaderValue::from_static("a.example:8080")),
            sent,
        }
        .apply(&mut h);
        assert_eq!(h["x-forwarded-for"], "2001:db8::1");
        assert_eq!(h["x-forwarded-host"], "a.example:8080");
    }
}
