//! HTTP basic authentication for the admin listener, compared in constant time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use subtle::ConstantTimeEq;

use crate::config::AdminAuth;

/// Whether `headers` carry the credentials of `auth`. The comparison does not stop at the
/// first differing byte, so its timing tells nothing about how much of a guess was right.
pub fn authorized(auth: &AdminAuth, headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Some(colon) = decoded.iter().position(|&b| b == b':') else {
        return false;
    };
    let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
    let user_ok = user.ct_eq(auth.user.as_bytes());
    let password_ok = password.ct_eq(auth.password.as_bytes());
    bool::from(user_ok & password_ok)
}

/// The `Authorization` header value for `user` and `password`.
pub fn header_value(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn accepts_only_the_configured_pair() {
        let auth = AdminAuth {
            user: "admin".into(),
            password: "s3cret:x".into(),
        };
        assert!(authorized(
            &auth,
            &headers(&header_value("admin", "s3cret:x"))
        ));
        assert!(!authorized(
            &auth,
            &headers(&header_value("admin", "s3cret"))
        ));
        assert!(!authorized(
            &auth,
            &headers(&header_value("admim", "s3cret:x"))
        ));
        assert!(!authorized(&auth, &headers("Bearer abc")));
        assert!(!authorized(&auth, &headers("Basic !!!")));
        assert!(!authorized(&auth, &HeaderMap::new()));
    }
}
