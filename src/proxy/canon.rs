//! One canonical authority and one canonical path per request.
//!
//! Routing (ACLs, plugins) and forwarding must see the same values, or a request can match one
//! rule and reach something else on the server. The rules:
//!
//! - **Authority.** HTTP/1.1 needs exactly one `Host` header (none or several: 400), even with
//!   an absolute-form target; HTTP/1.0 may omit it. An empty `Host` (RFC 9112's for a target
//!   without an authority) names no authority, as a missing one on HTTP/1.0. An absolute-form
//!   request URI's authority wins over `Host`; an authority-form target (`GET
//!   example.com:80`) is a 400. For HTTP/2, `:authority` is used, and a `host` header that
//!   disagrees with it is a 400. A port that does not fit in 16 bits is a 400. The canonical
//!   authority replaces the `Host` header before routing, so `hdr(host)` sees what the server
//!   will. The canonical *host* (for the `host` ACL) is the authority without port,
//!   lower-cased.
//! - **Path.** Dot segments are resolved as RFC 3986 does (`/a/./b/../c` is `/a/c`, never
//!   above the root), including percent-encoded dots (`%2e`, `%2E`); runs of slashes merge into
//!   one. The normalised path is what ACLs match *and* what the server receives. Encoded slashes
//!   (`%2F`) and backslashes stay as they are, since many applications rely on them, but a
//!   segment that would become a dot segment once they are decoded (`..%2F`, `..\`) is refused
//!   with 400, so no server that decodes them can be walked out of a routed prefix; so is a
//!   dot segment with a path parameter (`..;x`, `.;x`), which servers that drop parameters
//!   (Tomcat, Jetty) read as `..` or `.`.
//! - **Cookies.** An HTTP/2 client may split its `Cookie` header into several fields (browsers
//!   do, one per cookie, for header compression). They are joined into one, separated by
//!   `"; "`, as RFC 9113 (8.2.3) requires before a request goes to an HTTP/1.1 server, and
//!   before routing, so that ACLs, balancers and plugins see what an HTTP/1.1 client sends.

use std::borrow::Cow;
use std::sync::Mutex;

use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Uri, Version, header};

/// Why a request's authority or path was refused (always a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CanonError {
    #[error("missing host header")]
    MissingHost,
    #[error("several host headers")]
    DuplicateHost,
    #[error("invalid host header")]
    InvalidHost,
    #[error("host header disagrees with :authority")]
    AuthorityMismatch,
    #[error("authority-form target on a method other than CONNECT")]
    AuthorityForm,
    #[error("port out of range")]
    InvalidPort,
    #[error("path escapes its prefix through an encoded separator")]
    EncodedTraversal,
    #[error("dot segment with a path parameter")]
    DotParameter,
}

/// The last `Host` a connection sent, parsed. A client sends the same `Host` on every request
/// of a keep-alive connection: then it costs a comparison, not a parse and a copy.
#[derive(Debug, Default)]
pub struct HostCache(Mutex<Option<Authority>>);

impl HostCache {
    fn parse(&self, sent: &HeaderValue) -> Result<Authority, CanonError> {
        let mut last = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // An authority's text is exactly the bytes it was parsed from.
        if let Some(a) = &*last
            && a.as_str().as_bytes() == sent.as_bytes()
        {
            return Ok(a.clone());
        }
        let text = sent.to_str().map_err(|_| CanonError::InvalidHost)?;
        let parsed: Authority = text.parse().map_err(|_| CanonError::InvalidHost)?;
        check_port(&parsed)?;
        *last = Some(parsed.clone());
        Ok(parsed)
    }
}

/// The request's canonical authority (with port, as sent), if it has one, and the `Host`
/// header sent, if any (so that the caller need not look it up again). `cache` is the
/// connection's.
pub fn authority(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
    cache: &HostCache,
) -> Result<(Option<Authority>, Option<HeaderValue>), CanonError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(CanonError::DuplicateHost);
    }
    Ok((canonical(version, uri, host, cache)?, host.cloned()))
}

fn canonical(
    version: Version,
    uri: &Uri,
    host: Option<&HeaderValue>,
    cache: &HostCache,
) -> Result<Option<Authority>, CanonError> {
    let from_header = match host {
        // An empty Host is what a target without an authority calls for (RFC 9112, 3.2):
        // present, naming nothing. Over HTTP/2 it would disagree with any `:authority`.
        Some(v) if v.is_empty() && version != Version::HTTP_2 => None,
        Some(v) => Some(cache.parse(v)?),
        // HTTP/1.1 requires Host even with an absolute-form target (RFC 9112, 3.2).
        None if version == Version::HTTP_11 => return Err(CanonError::MissingHost),
        None => None,
    };
    if let Some(auth) = uri.authority() {
        // An HTTP/1 target that is only an authority (`GET example.com:80`) is CONNECT's
        // form; hyper accepts it for any method. HTTP/2 requests always carry a scheme.
        if uri.scheme().is_none() {
            return Err(CanonError::AuthorityForm);
        }
        check_port(auth)?;
        if version == Version::HTTP_2
            && let Some(h) = &from_header
            && !h.as_str().eq_ignore_ascii_case(auth.as_str())
        {
            return Err(CanonError::AuthorityMismatch);
        }
        // Userinfo never belongs in a forwarded authority.
        if auth.as_str().contains('@') {
            return Err(CanonError::InvalidHost);
        }
        return Ok(Some(auth.clone()));
    }
    match from_header {
        Some(h) if h.as_str().contains('@') => Err(CanonError::InvalidHost),
        Some(h) => Ok(Some(h)),
        None => Ok(None),
    }
}

/// An authority's port, when it has one, is a number a TCP port can be (`http`'s parser
/// takes any digits: `example.com:99999`), in digits only (not `:+80`). An empty port
/// (`example.com:`) is allowed.
fn check_port(authority: &Authority) -> Result<(), CanonError> {
    match authority.as_str().rsplit_once(':') {
        // The last colon of an IPv6 host without a port is inside its brackets.
        Some((host, port)) if !port.contains(']') && !port.is_empty() && !host.is_empty() => {
            let digits = port.bytes().all(|b| b.is_ascii_digit());
            match port.parse::<u16>() {
                Ok(_) if digits => Ok(()),
                _ => Err(CanonError::InvalidPort),
            }
        }
        _ => Ok(()),
    }
}

/// Joins an HTTP/2 request's `Cookie` fields into one (`a=1; b=2`), leaving out empty ones
/// (and the header, when all are); one field or none is left as it is.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut fields = headers.get_all(header::COOKIE).iter();
    if fields.next().is_none() || fields.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for field in headers.get_all(header::COOKIE) {
        let crumb = field.as_bytes().trim_ascii();
        if crumb.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb);
    }
    if joined.is_empty() {
        headers.remove(header::COOKIE);
        return;
    }
    // The fields were valid header values, and so are they joined by "; ": this cannot fail.
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
        headers.insert(header::COOKIE, value);
    }
}

/// The host part of an authority, without port, lower-cased (brackets kept for IPv6).
///
/// The authority has no userinfo (see [`authority`]), so the host is everything before the
/// port's `:`, or the bracketed IPv6 literal: `Authority::host` searches from the end for `@`
/// first, at several times the cost. The end is found first and the case checked over the host
/// alone, in a loop with no early exit (which the compiler can widen).
pub fn host(authority: &Authority) -> Cow<'_, str> {
    let text = authority.as_str();
    let bytes = text.as_bytes();
    let stop = if bytes.first() == Some(&b'[') {
        b']'
    } else {
        b':'
    };
    let end = match bytes.iter().position(|&b| b == stop) {
        // The closing bracket belongs to the host; a port's colon does not.
        Some(i) if stop == b']' => i + 1,
        Some(i) => i,
        None => text.len(),
    };
    let host = &text[..end];
    let upper = host
        .bytes()
        .fold(false, |upper, b| upper | b.is_ascii_uppercase());
    if upper {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// The normalised form of `path` (see the module doc); borrowed when nothing changes.
pub fn path(path: &str) -> Result<Cow<'_, str>, CanonError> {
    if path == "*" || !path.starts_with('/') {
        return Ok(Cow::Borrowed(path));
    }
    if !needs_work(path) {
        return Ok(Cow::Borrowed(path));
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        if seg.is_empty() {
            // `//` merges; a final empty segment means the path ended with `/`.
            trailing_slash = i == last;
            continue;
        }
        trailing_slash = false;
        match dot_kind(seg) {
            Dot::One => trailing_slash = i == last,
            Dot::Two => {
                out.pop();
                trailing_slash = i == last;
            }
            Dot::None => {
                if hides_dot_segment(seg) {
                    return Err(CanonError::EncodedTraversal);
                }
                // `..;x` is `..` to a server that drops path parameters (Tomcat, Jetty).
                if seg
                    .split_once(';')
                    .is_some_and(|(head, _)| !matches!(dot_kind(head), Dot::None))
                {
                    return Err(CanonError::DotParameter);
                }
                out.push(seg);
            }
        }
    }
    let mut normal = String::with_capacity(path.len());
    for seg in &out {
        normal.push('/');
        normal.push_str(seg);
    }
    if trailing_slash || out.is_empty() {
        normal.push('/');
    }
    Ok(Cow::Owned(normal))
}

/// Fast check: can this path change under normalisation, or need refusing? One pass: only `/`
/// followed by `/` or `.`, an encoded dot, slash or backslash (`%2e`, `%2f`, `%5c`, any case),
/// or a backslash can.
fn needs_work(path: &str) -> bool {
    let b = path.as_bytes();
    b.iter().enumerate().any(|(i, &c)| match c {
        b'/' => matches!(b.get(i + 1), Some(b'/' | b'.')),
        b'%' => b.get(i + 1..i + 3).is_some_and(|hex| {
            hex.eq_ignore_ascii_case(b"2e")
                || hex.eq_ignore_ascii_case(b"2f")
                || hex.eq_ignore_ascii_case(b"5c")
        }),
        b'\\' => true,
        _ => false,
    })
}

enum Dot {
    None,
    One,
    Two,
}

/// Whether a segment is `.` or `..`, counting `%2e` as a dot.
fn dot_kind(seg: &str) -> Dot {
    let mut dots = 0;
    let mut rest = seg.as_bytes();
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"%2e") {
            rest = &rest[3..];
        } else {
            return Dot::None;
        }
        dots += 1;
    }
    match dots {
        1 => Dot::One,
        2 => Dot::Two,
        _ => Dot::None,
    }
}

/// Whether a segment contains a dot segment once `%2F`, `%5C` and `\` are read as separators.
fn hides_dot_segment(seg: &str) -> bool {
    let decoded = seg
        .replace("%2f", "/")
        .replace("%2F", "/")
        .replace("%5c", "/")
        .replace("%5C", "/")
        .replace('\\', "/");
    if !decoded.contains('/') {
        return false;
    }
    decoded
        .split('/')
        .any(|part| !matches!(dot_kind(part), Dot::None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookies(fields: &[&str]) -> Vec<String> {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("example.com"));
        for f in fields {
            headers.append(header::COOKIE, HeaderValue::from_str(f).unwrap());
        }
        join_cookies(&mut headers);
        assert_eq!(headers[header::HOST], "example.com", "other headers stay");
        headers
            .get_all(header::COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn split_cookie_fields_are_joined_into_one() {
        assert_eq!(cookies(&["a=1", "b=2", "c=3"]), ["a=1; b=2; c=3"]);
        assert_eq!(cookies(&["a=1; b=2", "c=3"]), ["a=1; b=2; c=3"]);
        assert_eq!(cookies(&["a=1", "", " ", "b=2"]), ["a=1; b=2"]);
        assert_eq!(cookies(&["", ""]), Vec::<String>::new());
    }

    #[test]
    fn one_cookie_field_or_none_is_left_alone() {
        assert_eq!(cookies(&["a=1; b=2"]), ["a=1; b=2"]);
        assert_eq!(cookies(&[" a=1 "]), [" a=1 "]);
        assert_eq!(cookies(&[]), Vec::<String>::new());
    }

    /// The authority as a connection's first request sees it.
    fn authority(
        version: Version,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Option<Authority>, CanonError> {
        let (authority, sent) = super::authority(version, uri, headers, &HostCache::default())?;
        assert_eq!(sent.as_ref(), headers.get(header::HOST), "the Host sent");
        Ok(authority)
    }

    fn norm(p: &str) -> String {
        path(p).expect("accepted").into_owned()
    }

    #[test]
    fn clean_paths_are_borrowed() {
        assert!(matches!(path("/item/42").unwrap(), Cow::Borrowed(_)));
        assert!(matches!(path("/a.b/c.d").unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn dot_segments_and_slashes_normalise() {
        assert_eq!(norm("/item/../admin"), "/admin");
        assert_eq!(norm("/item/%2e%2E/admin"), "/admin");
        assert_eq!(norm("/item/.%2e/admin"), "/admin");
        assert_eq!(norm("/a/./b/"), "/a/b/");
        assert_eq!(norm("/a/b/.."), "/a/");
        assert_eq!(norm("/../../etc"), "/etc");
        assert_eq!(norm("//item///x"), "/item/x");
        assert_eq!(norm("/.."), "/");
        assert_eq!(norm("/a/..."), "/a/...", "three dots is a name");
    }

    #[test]
    fn dot_segments_with_parameters_are_refused() {
        assert_eq!(path("/item/..;/admin"), Err(CanonError::DotParameter));
        assert_eq!(
            path("/item/..;jsessionid=1/admin"),
            Err(CanonError::DotParameter)
        );
        assert_eq!(path("/.;/admin"), Err(CanonError::DotParameter));
        assert_eq!(path("/item/%2e%2E;x/admin"), Err(CanonError::DotParameter));
        assert_eq!(norm("/item;v=1/x"), "/item;v=1/x", "other parameters stay");
        assert_eq!(norm("/a/;/b"), "/a/;/b");
        assert_eq!(norm("/a/...;x"), "/a/...;x", "three dots is a name");
    }

    #[test]
    fn encoded_separators_stay_but_cannot_hide_traversal() {
        assert_eq!(norm("/files/a%2Fb"), "/files/a%2Fb");
        assert_eq!(path("/item/..%2Fadmin"), Err(CanonError::EncodedTraversal));
        assert_eq!(path("/item/..%5cadmin"), Err(CanonError::EncodedTraversal));
        assert_eq!(path("/item/..\\admin"), Err(CanonError::EncodedTraversal));
        assert_eq!(
            path("/item/x%2F%2e%2e%2Fy"),
            Err(CanonError::EncodedTraversal)
        );
    }

    fn headers(hosts: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in hosts {
            h.append(header::HOST, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn authority_rules() {
        let origin: Uri = "/x".parse().unwrap();
        let a = authority(Version::HTTP_11, &origin, &headers(&["Example.COM:8080"]))
            .unwrap()
            .unwrap();
        assert_eq!(a.as_str(), "Example.COM:8080");
        assert_eq!(host(&a), "example.com");
        assert_eq!(
            authority(Version::HTTP_11, &origin, &headers(&[])),
            Err(CanonError::MissingHost)
        );
        assert_eq!(
            authority(Version::HTTP_10, &origin, &headers(&[])),
            Ok(None)
        );
        assert_eq!(
            authority(Version::HTTP_11, &origin, &headers(&[""])),
            Ok(None),
            "an empty Host is present and names nothing"
        );
        assert_eq!(
            authority(
                Version::HTTP_11,
                &"http://a.example/x".parse().unwrap(),
                &headers(&[""])
            )
            .unwrap()
            .map(|a| a.to_string()),
            Some("a.example".to_owned())
        );
        assert_eq!(
            authority(
                Version::HTTP_2,
                &"http://a.example/x".parse().unwrap(),
                &headers(&[""])
            ),
            Err(CanonError::InvalidHost)
        );
        assert_eq!(
            authority(Version::HTTP_11, &origin, &headers(&["a", "b"])),
            Err(CanonError::DuplicateHost)
        );
        assert_eq!(
            authority(Version::HTTP_11, &origin, &headers(&["a b"])),
            Err(CanonError::InvalidHost)
        );
        let absolute: Uri = "http://real.example/x".parse().unwrap();
        let a = authority(Version::HTTP_11, &absolute, &headers(&["other"]))
            .unwrap()
            .unwrap();
        assert_eq!(a.as_str(), "real.example", "absolute-form wins over Host");
        assert_eq!(
            authority(Version::HTTP_2, &absolute, &headers(&["other"])),
            Err(CanonError::AuthorityMismatch)
        );
        assert!(authority(Version::HTTP_2, &absolute, &headers(&["REAL.example"])).is_ok());
        let ipv6 = authority(Version::HTTP_11, &origin, &headers(&["[::1]:80"]))
            .unwrap()
            .unwrap();
        assert_eq!(host(&ipv6), "[::1]");
    }

    #[test]
    fn http11_needs_host_even_with_an_absolute_target() {
        let absolute: Uri = "http://real.example/x".parse().unwrap();
        assert_eq!(
            authority(Version::HTTP_11, &absolute, &headers(&[])),
            Err(CanonError::MissingHost)
        );
        assert_eq!(
            authority(Version::HTTP_10, &absolute, &headers(&[]))
                .unwrap()
                .map(|a| a.to_string()),
            Some("real.example".to_owned())
        );
    }

    #[test]
    fn an_authority_form_target_is_refused() {
        let target: Uri = "admin.example:80".parse().unwrap();
        assert_eq!(target.scheme(), None);
        assert_eq!(
            authority(Version::HTTP_11, &target, &headers(&["public.example"])),
            Err(CanonError::AuthorityForm)
        );
    }

    #[test]
    fn ports_must_fit_in_16_bits() {
        let origin: Uri = "/x".parse().unwrap();
        for good in [
            "a.example:65535",
            "a.example:",
            "[::1]",
            "[::1]:8080",
            "a.example",
        ] {
            assert!(
                authority(Version::HTTP_11, &origin, &headers(&[good])).is_ok(),
                "{good}"
            );
        }
        for bad in [
            "a.example:65536",
            "a.example:99999",
            "[::1]:123456",
            "a.example:+80",
            "[::1]:+80",
        ] {
            assert_eq!(
                authority(Version::HTTP_11, &origin, &headers(&[bad])),
                Err(CanonError::InvalidPort),
                "{bad}"
            );
        }
        let absolute: Uri = "http://a.example:99999/x".parse().unwrap();
        assert_eq!(
            authority(Version::HTTP_11, &absolute, &headers(&["a.example"])),
            Err(CanonError::InvalidPort)
        );
    }

    /// What `needs_work` decides, said the slow and obvious way.
    fn needs_work_by_definition(path: &str) -> bool {
        let b = path.as_bytes();
        let contains_ci = |needle: &[u8]| b.windows(3).any(|w| w.eq_ignore_ascii_case(needle));
        b.windows(2).any(|w| w == b"//" || w == b"/.")
            || contains_ci(b"%2e")
            || contains_ci(b"%2f")
            || contains_ci(b"%5c")
            || b.contains(&b'\\')
    }

    #[test]
    fn the_fast_check_agrees_with_its_definition() {
        let alphabet = [
            '/', '.', '%', '2', 'e', 'E', 'f', 'F', '5', 'c', 'C', '\\', 'a',
        ];
        let mut paths = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> = paths
                .iter()
                .flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}")))
                .collect();
            for p in &longer {
                assert_eq!(needs_work(p), needs_work_by_definition(p), "{p:?}");
            }
            paths = longer;
        }
    }

    #[test]
    fn a_connection_keeps_the_last_host_it_sent_parsed() {
        let cache = HostCache::default();
        let origin: Uri = "/".parse().unwrap();
        let on_conn = |host: &str| {
            super::authority(Version::HTTP_11, &origin, &headers(&[host]), &cache)
                .map(|(a, _)| a.map(|a| a.as_str().to_owned()))
        };
        let kept = || {
            cache
                .0
                .lock()
                .unwrap()
                .as_ref()
                .map(|a| a.as_str().to_owned())
        };
        assert_eq!(on_conn("a.example:8080"), Ok(Some("a.example:8080".into())));
        assert_eq!(on_conn("a.example:8080"), Ok(Some("a.example:8080".into())));
        assert_eq!(kept().as_deref(), Some("a.example:8080"));
        // Another host is parsed anew (a prefix of the kept one is not the kept one).
        assert_eq!(on_conn("a.example"), Ok(Some("a.example".into())));
        assert_eq!(kept().as_deref(), Some("a.example"));
        // A bad one is refused, and the last good one stays.
        assert_eq!(on_conn("a b"), Err(CanonError::InvalidHost));
        assert_eq!(kept().as_deref(), Some("a.example"));
    }

    #[test]
    fn host_is_the_authority_without_port_lower_cased() {
        for (authority, expected) in [
            ("example.com", "example.com"),
            ("Example.COM", "example.com"),
            ("example.com:8080", "example.com"),
            ("10.0.0.1:80", "10.0.0.1"),
            ("[::1]", "[::1]"),
            ("[2001:DB8::1]:443", "[2001:db8::1]"),
        ] {
            let a: Authority = authority.parse().unwrap();
            assert_eq!(host(&a), expected, "{authority}");
            assert_eq!(host(&a), a.host().to_ascii_lowercase(), "{authority}");
        }
    }
}
