//! `[backend.NAME]`: servers (names unique, addresses resolved), balancing, retries and the
//! health check table.

use std::net::SocketAddr;

use crate::config::addr;
use crate::config::diag::Sink;
use crate::config::model::{Balance, CheckParams, MAX_WEIGHT, Mode, Server};
use crate::config::values::{
    At, PartialTimeouts, Side, balance, check_name, mode, retries, section, timeouts,
};
use crate::config::walk::Item;

/// Largest health check rise/fall count accepted.
const MAX_RISE_FALL: i64 = 1000;

#[derive(Debug)]
pub(crate) struct RawBackend {
    pub(crate) name: String,
    pub(crate) at: usize,
    pub(crate) path: String,
    pub(crate) mode: Option<Mode>,
    pub(crate) balance: Option<Balance>,
    /// The servers that are valid.
    pub(crate) servers: Vec<Server>,
    pub(crate) timeouts: PartialTimeouts,
    pub(crate) retries: Option<u32>,
    pub(crate) check: CheckParams,
}

pub(crate) fn walk(name: &str, item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Option<RawBackend> {
    let mut t = section("backend", name, item, sink)?;
    let mode = t.take("mode").and_then(|i| mode(&i, sink));
    let balance = t.take("balance").and_then(|i| balance(&i, sink));
    let servers = match t.take("servers") {
        Some(i) => servers(&i, sink),
        None => {
            sink.error(t.start(), t.path(), "backend has no servers")
                .help("add servers = [{ name = \"s1\", addr = \"host:port\" }]");
            Vec::new()
        }
    };
    let b = RawBackend {
        name: name.to_owned(),
        at: t.start(),
        path: t.path().to_owned(),
        mode,
        balance,
        servers,
        timeouts: timeouts(t.take("timeout"), Side::Backend, sink),
        retries: retries(&mut t, sink),
        check: t
            .take("check")
            .map(|i| check_params(&i, sink))
            .unwrap_or_default(),
    };
    t.finish(sink);
    Some(b)
}

fn servers(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Vec<Server> {
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
        t.finish(sink);
        if let (Some((name, _)), Some((addr_spec, addr))) = (name, addr) {
            out.push(Server {
                name: name.value.to_owned(),
                addr_spec,
                addr,
                weight: weight.and_then(|w| u32::try_from(w).ok()).unwrap_or(1),
                check,
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

fn check_params(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> CheckParams {
    let mut c = CheckParams::default();
    let Some(mut t) = item.table(sink) else {
        return c;
    };
    if let Some(d) = t.take("interval").and_then(|i| i.duration_nonzero(sink)) {
        c.interval = d;
    }
    if let Some(d) = t.take("timeout").and_then(|i| i.duration_nonzero(sink)) {
        c.timeout = d;
    }
    for (key, slot) in [("rise", &mut c.rise), ("fall", &mut c.fall)] {
        if let Some(n) = t.take_int_in(sink, key, 1, Some(MAX_RISE_FALL)) {
            *slot = u32::try_from(n).unwrap_or(1);
        }
    }
    if let Some(i) = t.take("http")
        && let Some(s) = i.str(sink)
    {
        match http_check(s.value) {
            Some(req) => c.http = Some(req),
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
    t.finish(sink);
    c
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
    let method = http::Method::from_bytes(method.as_bytes()).ok()?;
    Some((method, path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::http_check;

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
    }
}
