//! `[backend.NAME]`: servers (names unique, addresses resolved), balancing, retries and the
//! health check table.

use std::net::SocketAddr;

use crate::config::addr;
use crate::config::diag::Sink;
use crate::config::model::{
    AdminState, Balance, CheckParams, HttpCheck, MAX_WEIGHT, Mode, Observe, Proto, SendProxy,
    Server, UpstreamTls,
};
use crate::config::modes::{self, ModeUse};
use crate::config::tls::{UpstreamKeys, upstream_keys};
use crate::config::values::{
    At, PartialTimeouts, Side, balance_at, check_name, maxconn, observe, retries, section,
    take_mode, timeouts,
};
use crate::config::walk::{Item, Table};

/// Largest health check rise/fall count accepted.
const MAX_RISE_FALL: i64 = 1000;
/// Largest `error_limit` accepted.
const MAX_ERROR_LIMIT: i64 = 1_000_000;

#[derive(Debug)]
pub(crate) struct RawBackend {
    pub(crate) name: String,
    pub(crate) at: usize,
    pub(crate) path: String,
    pub(crate) mode: Option<Mode>,
    /// `mode` was written but is invalid (reported).
    pub(crate) mode_invalid: bool,
    pub(crate) balance: Option<At<Balance>>,
    /// `check.judge`, with where it was written.
    pub(crate) judge: Option<At<String>>,
    /// The servers that are valid.
    pub(crate) servers: Vec<Server>,
    pub(crate) timeouts: PartialTimeouts,
    pub(crate) retries: Option<u32>,
    pub(crate) redispatch: Option<bool>,
    pub(crate) maxconn: Option<u32>,
    pub(crate) observe: Option<Observe>,
    pub(crate) error_limit: Option<u32>,
    pub(crate) check: CheckParams,
    /// Keys that need one mode, checked once the mode is known.
    pub(crate) uses: Vec<ModeUse>,
    pub(crate) proto: Option<Proto>,
    /// The backend's own TLS settings (servers have theirs in `servers`).
    pub(crate) tls: Option<UpstreamTls>,
}

pub(crate) fn walk(name: &str, item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Option<RawBackend> {
    let mut t = section("backend", name, item, sink)?;
    let uses = modes::backend_uses(&t);
    let (mode, mode_invalid) = take_mode(&mut t, sink);
    let balance = t.take("balance").and_then(|i| balance_at(&i, sink));
    let proto = t
        .take("proto")
        .and_then(|i| i.keyword(sink, "proto", &[("http1", Proto::Http1), ("h2", Proto::H2)]));
    let tls = upstream_keys(&mut t, sink);
    let servers = match t.take("servers") {
        Some(i) => servers(&i, &tls, sink),
        None => {
            sink.error(t.start(), t.path(), "backend has no servers")
                .help("add servers = [{ name = \"s1\", addr = \"host:port\" }]");
            Vec::new()
        }
    };
    let mut b = RawBackend {
        name: name.to_owned(),
        at: t.start(),
        path: t.path().to_owned(),
        mode,
        mode_invalid,
        balance,
        judge: None,
        servers,
        timeouts: timeouts(t.take("timeout"), Side::Backend, sink),
        retries: retries(&mut t, sink),
        redispatch: t.take_bool(sink, "redispatch"),
        maxconn: maxconn(&mut t, sink),
        observe: None,
        error_limit: None,
        check: CheckParams::default(),
        uses,
        proto,
        tls: tls.backend_settings(),
    };
    tls.warn_unused(
        tls.enabled() || b.servers.iter().any(|s| s.tls.is_some()),
        sink,
    );
    passive_health(&mut t, &mut b, sink);
    if let Some(i) = t.take("check") {
        (b.check, b.judge) = check_params(&i, sink);
    }
    t.finish(sink);
    Some(b)
}

/// `observe` and `error_limit`, with a warning where they could have no effect: passive health
/// only marks down servers that have active checks (the checks bring them back).
fn passive_health(t: &mut Table<'_, '_>, b: &mut RawBackend, sink: &mut Sink<'_>) {
    let observe_item = t.take("observe");
    b.observe = observe_item.as_ref().and_then(|i| observe(i, sink));
    if let Some(i) = &observe_item
        && b.observe.is_some()
        && !b.servers.iter().any(|s| s.check)
    {
        sink.warning(
            i.start(),
            &i.path,
            "observe has no effect: no server here has check = true",
        )
        .help("passive health marks only checked servers down, since their checks bring them back");
    }
    let limit_item = t.take("error_limit");
    b.error_limit = limit_item
        .as_ref()
        .and_then(|i| i.int_in(sink, "error_limit", 1, Some(MAX_ERROR_LIMIT)))
        .and_then(|n| u32::try_from(n).ok());
    if let Some(i) = &limit_item
        && observe_item.is_none()
    {
        sink.warning(
            i.start(),
            &i.path,
            "error_limit has no effect without observe",
        )
        .help("add observe = \"layer4\" or \"layer7\"");
    }
}

fn servers(item: &Item<'_, '_>, backend_tls: &UpstreamKeys, sink: &mut Sink<'_>) -> Vec<Server> {
    let Some(items) = item.array(sink) else {
        return Vec::new();
    };
    if items.is_empty() {
        sink.error(item.start(), &item.path, "backend has no servers")
            .help("add { name = \"s1\", addr = \"host:port\" }");
    }
    let mut names: Vec<At<String>> = Vec::new();
    let mut out = Vec::new();
    for entry in &items {
        let Some(mut t) = entry.table(sink) else {
            continue;
        };
        let name = t
            .require(sink, "name")
            .and_then(|i| Some((i.str(sink)?, i.path)));
        if let Some((s, path)) = &name {
            check_name(sink, s.start, path, "server", s.value);
            match names.iter().find(|n| n.value == s.value) {
                Some(first) => {
                    sink.error(
                        s.start,
                        path,
                        format!("duplicate server name \"{}\"", s.value),
                    )
                    .help(format!("already used by {}", first.path));
                }
                None => names.push(At {
                    value: s.value.to_owned(),
                    at: s.start,
                    path: entry.path.clone(),
                }),
            }
        }
        let addr = t.require(sink, "addr").and_then(|i| server_addr(&i, sink));
        let weight = t.take_int_in(sink, "weight", 0, Some(i64::from(MAX_WEIGHT)));
        let check = t.take_bool(sink, "check").unwrap_or(false);
        let backup = t.take_bool(sink, "backup").unwrap_or(false);
        let maxconn = maxconn(&mut t, sink);
        let state = t
            .take("state")
            .and_then(|i| {
                i.keyword(
                    sink,
                    "server state",
                    &[
                        ("ready", AdminState::Ready),
                        ("drain", AdminState::Drain),
                        ("maint", AdminState::Maint),
                    ],
                )
            })
            .unwrap_or_default();
        let send_proxy = t.take("send_proxy").and_then(|i| {
            i.keyword(
                sink,
                "PROXY protocol version",
                &[("v1", SendProxy::V1), ("v2", SendProxy::V2)],
            )
        });
        let own_tls = upstream_keys(&mut t, sink);
        let tls = own_tls.over(backend_tls);
        own_tls.warn_unused(tls.enabled(), sink);
        t.finish(sink);
        if let (Some((name, _)), Some((addr_spec, addr)), false) = (name, addr, tls.invalid()) {
            let tls = tls.for_server(&addr_spec);
            out.push(Server {
                name: name.value.to_owned(),
                addr_spec,
                addr,
                weight: weight.and_then(|w| u32::try_from(w).ok()).unwrap_or(1),
                check,
                backup,
                maxconn,
                state,
                send_proxy,
                tls,
            });
        }
    }
    out
}

fn server_addr(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Option<(String, SocketAddr)> {
    let s = item.str(sink)?;
    match addr::resolve_server(s.value) {
        Ok(a) => Some((s.value.to_owned(), a)),
        Err(e) => {
            let d = sink.error(s.start, &item.path, e.to_string());
            if let Some(help) = e.help() {
                d.help(help);
            }
            None
        }
    }
}

fn check_params(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> (CheckParams, Option<At<String>>) {
    let mut c = CheckParams::default();
    let Some(mut t) = item.table(sink) else {
        return (c, None);
    };
    let judge = t.take("judge").and_then(|i| {
        let s = i.str(sink)?;
        Some(At {
            value: s.value.to_owned(),
            at: s.start,
            path: i.path.clone(),
        })
    });
    c.judge = judge.as_ref().map(|j| j.value.clone());
    if let Some(d) = t.take("interval").and_then(|i| i.duration_nonzero(sink)) {
        c.interval = d;
    }
    // Both default to the (possibly just set) interval, as in HAProxy.
    c.fastinter = t
        .take("fastinter")
        .and_then(|i| i.duration_nonzero(sink))
        .unwrap_or(c.interval);
    c.downinter = t
        .take("downinter")
        .and_then(|i| i.duration_nonzero(sink))
        .unwrap_or(c.interval);
    if let Some(d) = t.take("timeout").and_then(|i| i.duration_nonzero(sink)) {
        c.timeout = d;
    }
    for (key, slot) in [("rise", &mut c.rise), ("fall", &mut c.fall)] {
        if let Some(n) = t.take_int_in(sink, key, 1, Some(MAX_RISE_FALL)) {
            *slot = u32::try_from(n).unwrap_or(1);
        }
    }
    let host = t.take("host").and_then(|i| {
        let s = i.str(sink)?;
        if http::HeaderValue::from_str(s.value).is_err() || s.value.is_empty() {
            sink.error(s.start, &i.path, format!("invalid host \"{}\"", s.value));
            return None;
        }
        Some(s.value.to_owned())
    });
    let expect = t.take("expect").and_then(|i| expect(&i, sink));
    if let Some(i) = t.take("http")
        && let Some(s) = i.str(sink)
    {
        match http_check(s.value) {
            Some((method, path)) => {
                c.http = Some(HttpCheck {
                    method,
                    path,
                    host: host.clone(),
                    expect: expect.clone().unwrap_or_else(|| vec![(200, 399)]),
                })
            }
            None => {
                sink.error(
                    s.start,
                    &i.path,
                    format!("invalid health check request \"{}\"", s.value),
                )
                .help("expected \"METHOD /path\", e.g. \"GET /health\"");
            }
        }
    }
    if c.http.is_none() && (host.is_some() || expect.is_some()) {
        sink.error(
            item.start(),
            &item.path,
            "host and expect need an HTTP check",
        )
        .help("add http = \"GET /health\" (without it the check is a TCP connect)");
    }
    t.finish(sink);
    (c, judge)
}

/// `expect = "200"`, `"200-299"`, `"200,204,300-399"`, or an array of such.
fn expect(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Option<Vec<(u16, u16)>> {
    let items = match item.value.get_ref() {
        toml::de::DeValue::Array(_) => item.array(sink)?,
        _ => vec![item.clone()],
    };
    // Every invalid entry is reported, not only the first.
    let mut valid = true;
    let mut ranges = Vec::new();
    for i in &items {
        let (text, at) = match i.value.get_ref() {
            toml::de::DeValue::Integer(_) => match i.int(sink) {
                Some(n) => (n.to_string(), i.start()),
                None => {
                    valid = false;
                    continue;
                }
            },
            _ => match i.str(sink) {
                Some(s) => (s.value.to_owned(), s.start),
                None => {
                    valid = false;
                    continue;
                }
            },
        };
        for part in text.split(',').map(str::trim) {
            match status_range(part) {
                Some(r) => ranges.push(r),
                None => {
                    sink.error(at, &i.path, format!("invalid status \"{part}\""))
                        .help("expected a status or a range of statuses, e.g. 200, \"200-399\"");
                    valid = false;
                }
            }
        }
    }
    valid.then_some(ranges)
}

fn status_range(s: &str) -> Option<(u16, u16)> {
    let status = |t: &str| {
        let t = t.trim();
        t.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| t.parse::<u16>().ok())
            .flatten()
            .filter(|n| (100..=599).contains(n))
    };
    match s.split_once('-') {
        Some((lo, hi)) => {
            let (lo, hi) = (status(lo)?, status(hi)?);
            (lo <= hi).then_some((lo, hi))
        }
        None => status(s).map(|n| (n, n)),
    }
}

/// `"GET /health"`, or just `"/health"` (GET).
fn http_check(s: &str) -> Option<(http::Method, String)> {
    let mut parts = s.split_whitespace();
    let (method, path) = match (parts.next(), parts.next(), parts.next()) {
        (Some(path), None, None) => ("GET", path),
        (Some(method), Some(path), None) => (method, path),
        _ => return None,
    };
    if !path.starts_with('/') || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    // The probe sends it as the request target: it must be one.
    http::uri::PathAndQuery::try_from(path).ok()?;
    let method = http::Method::from_bytes(method.as_bytes()).ok()?;
    Some((method, path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::http_check;
    use crate::config::tests::messages;

    #[test]
    fn every_invalid_expected_status_is_reported() {
        let src = r#"
[frontend.web]
bind = "127.0.0.1:8080"
default_backend = "app"
[backend.app]
servers = [{ name = "s", addr = "127.0.0.1:2" }]
check = { interval = "1s", http = "GET /", expect = ["200-299", "abc", 99, "300-200, 204, x", "+200"] }
"#;
        assert_eq!(
            messages(src),
            [
                "7:65 backend.app.check.expect[1]: invalid status \"abc\"",
                "7:72 backend.app.check.expect[2]: invalid status \"99\"",
                "7:76 backend.app.check.expect[3]: invalid status \"300-200\"",
                "7:76 backend.app.check.expect[3]: invalid status \"x\"",
                "7:95 backend.app.check.expect[4]: invalid status \"+200\"",
            ]
        );
    }

    #[test]
    fn health_check_requests() {
        assert_eq!(
            http_check("GET /health"),
            Some((http::Method::GET, "/health".into()))
        );
        assert_eq!(http_check("/"), Some((http::Method::GET, "/".into())));
        assert_eq!(
            http_check("HEAD /x"),
            Some((http::Method::HEAD, "/x".into()))
        );
        assert_eq!(http_check("get /x"), None);
        assert_eq!(http_check("GET health"), None);
        assert_eq!(http_check("GET /a /b"), None);
        assert_eq!(http_check(""), None);
        assert_eq!(
            http_check("/health?x=1"),
            Some((http::Method::GET, "/health?x=1".into()))
        );
        assert_eq!(http_check("/he\u{7f}alth"), None, "not a request target");
    }
}
