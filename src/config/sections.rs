//! The sections of a config file, walked one by one.
//!
//! Every check that needs only the section itself happens here: types, values, required keys,
//! ACL syntax and names, duplicates inside one frontend or backend. The result is a [`Raw`]
//! config that keeps what `validate` needs for cross-section checks (positions, key paths) and
//! leaves `[defaults]` unapplied. Invalid values are reported and then dropped: a `Raw` with
//! errors is never turned into a `Config`.

use std::net::SocketAddr;
use std::time::Duration;

use toml::de::DeValue;

use crate::config::acl::{self, AclError, AclSpec, Condition};
use crate::config::addr;
use crate::config::diag::{Sink, did_you_mean, quoted_list};
use crate::config::model::{
    Balance, CheckParams, Global, LogFormat, MAX_WEIGHT, MIN_MAX_HEADER_SIZE, Mode, Server,
};
use crate::config::size;
use crate::config::walk::{Item, Str, Table};

/// More worker threads than this is a typo, not a tuning choice.
const MAX_WORKERS: i64 = 1024;

/// A value and where it was written.
#[derive(Debug, Clone)]
pub(crate) struct At<T> {
    pub(crate) value: T,
    pub(crate) at: usize,
    pub(crate) path: String,
}

/// The timeouts one `timeout` table sets; `validate` layers them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PartialTimeouts {
    pub(crate) client: Option<Duration>,
    pub(crate) server: Option<Duration>,
    pub(crate) connect: Option<Duration>,
    pub(crate) http_request: Option<Duration>,
    pub(crate) http_keep_alive: Option<Duration>,
}

/// `[defaults]`: every field is a fallback for the sections that do not set it.
#[derive(Debug, Default)]
pub(crate) struct Defaults {
    pub(crate) mode: Option<Mode>,
    pub(crate) timeouts: PartialTimeouts,
    pub(crate) retries: Option<u32>,
    pub(crate) forwardfor: Option<bool>,
    pub(crate) max_header_size: Option<usize>,
    pub(crate) balance: Option<Balance>,
}

#[derive(Debug)]
pub(crate) struct RawFrontend {
    pub(crate) name: String,
    pub(crate) at: usize,
    pub(crate) path: String,
    pub(crate) binds: Vec<At<SocketAddr>>,
    pub(crate) mode: Option<Mode>,
    /// Every ACL name, with its spec when it parsed.
    pub(crate) acls: Vec<(String, Option<AclSpec>)>,
    pub(crate) rules: Vec<RawRule>,
    pub(crate) default_backend: Option<At<String>>,
    /// `default_backend` or `use_backend` was written (even if invalid).
    pub(crate) routes: bool,
    pub(crate) timeouts: PartialTimeouts,
    pub(crate) forwardfor: Option<bool>,
    pub(crate) max_header_size: Option<usize>,
}

#[derive(Debug)]
pub(crate) struct RawRule {
    pub(crate) backend: Option<At<String>>,
    /// `None` when the condition was invalid.
    pub(crate) condition: Option<Condition>,
    pub(crate) negate: bool,
}

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

#[derive(Debug, Default)]
pub(crate) struct Raw {
    pub(crate) global: Global,
    pub(crate) defaults: Defaults,
    pub(crate) admin: Option<At<SocketAddr>>,
    pub(crate) frontends: Vec<RawFrontend>,
    pub(crate) backends: Vec<RawBackend>,
}

/// Walks the root table of a config file.
pub(crate) fn walk(mut root: Table<'_, '_>, sink: &mut Sink<'_>) -> Raw {
    let mut raw = Raw::default();
    if let Some(t) = root.take("global").and_then(|i| i.table(sink)) {
        raw.global = global(t, sink);
    }
    if let Some(t) = root.take("defaults").and_then(|i| i.table(sink)) {
        raw.defaults = defaults(t, sink);
    }
    if let Some(mut t) = root.take("admin").and_then(|i| i.table(sink)) {
        raw.admin = t.require(sink, "bind").and_then(|i| bind_one(&i, sink));
        t.finish(sink);
    }
    if let Some(mut t) = root.take("frontend").and_then(|i| i.table(sink)) {
        for (name, item) in t.take_all() {
            raw.frontends.extend(frontend(name, &item, sink));
        }
    }
    if let Some(mut t) = root.take("backend").and_then(|i| i.table(sink)) {
        for (name, item) in t.take_all() {
            raw.backends.extend(backend(name, &item, sink));
        }
    }
    if let Some(mut t) = root.take("plugin").and_then(|i| i.table(sink)) {
        for (name, item) in t.take_all() {
            sink.error(item.start(), &item.path, "plugins are not supported yet").help(format!(
                "remove [plugin.{name}]: the section is reserved for wasm plugins, which a later \
                 version adds"
            ));
        }
    }
    root.finish(sink);
    raw
}

fn global(mut t: Table<'_, '_>, sink: &mut Sink<'_>) -> Global {
    let mut g = Global::default();
    if let Some(n) = t.take_int_in(sink, "workers", 1, Some(MAX_WORKERS)) {
        g.workers = usize::try_from(n).ok();
    }
    let formats = [("text", LogFormat::Text), ("json", LogFormat::Json)];
    if let Some(f) = t.take("log_format").and_then(|i| i.keyword(sink, "log format", &formats)) {
        g.log_format = f;
    }
    if let Some(b) = t.take_bool(sink, "access_log") {
        g.access_log = b;
    }
    if let Some(d) = t.take_duration(sink, "grace") {
        g.grace = d;
    }
    t.finish(sink);
    g
}

fn defaults(mut t: Table<'_, '_>, sink: &mut Sink<'_>) -> Defaults {
    let d = Defaults {
        mode: t.take("mode").and_then(|i| mode(&i, sink)),
        timeouts: timeouts(t.take("timeout"), Side::Defaults, sink),
        retries: retries(&mut t, sink),
        forwardfor: t.take_bool(sink, "forwardfor"),
        max_header_size: t.take("max_header_size").and_then(|i| header_size(&i, sink)),
        balance: t.take("balance").and_then(|i| balance(&i, sink)),
    };
    t.finish(sink);
    d
}

/// The table of a named section (`[frontend.NAME]`), with a hint when the name was forgotten.
fn section<'a, 'i>(kind: &str, name: &str, item: &Item<'a, 'i>, sink: &mut Sink<'_>) -> Option<Table<'a, 'i>> {
    if !matches!(item.value.get_ref(), DeValue::Table(_)) {
        item.type_error(sink, "a table")
            .help(format!("each {kind} is a named table: [{kind}.NAME]"));
        return None;
    }
    check_name(sink, item.key_at, &item.path, kind, name);
    item.table(sink)
}

/// HAProxy's rule for names, so that they read the same in logs, stats and conditions.
fn check_name(sink: &mut Sink<'_>, at: usize, path: &str, kind: &str, name: &str) {
    let valid = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if !valid {
        sink.error(at, path, format!("invalid {kind} name \"{name}\""))
            .help("names may contain letters, digits, '-', '_', '.' and ':'");
    }
}

fn frontend(name: &str, item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Option<RawFrontend> {
    let mut t = section("frontend", name, item, sink)?;
    let binds = t.require(sink, "bind").map(|i| binds(&i, sink)).unwrap_or_default();
    let mode = t.take("mode").and_then(|i| mode(&i, sink));
    let acls = t.take("acl").map(|i| acls(&i, sink)).unwrap_or_default();
    let default_item = t.take("default_backend");
    let default_backend = default_item.as_ref().and_then(|i| backend_ref(i, sink));
    let rules_item = t.take("use_backend");
    let acl_names: Vec<&str> = acls.iter().map(|(n, _)| n.as_str()).collect();
    let rules = rules_item.as_ref().map(|i| rules(i, &acl_names, sink)).unwrap_or_default();
    let f = RawFrontend {
        name: name.to_owned(),
        at: t.start(),
        path: t.path().to_owned(),
        binds,
        mode,
        rules,
        default_backend,
        routes: default_item.is_some() || rules_item.is_some(),
        timeouts: timeouts(t.take("timeout"), Side::Frontend, sink),
        forwardfor: t.take_bool(sink, "forwardfor"),
        max_header_size: t.take("max_header_size").and_then(|i| header_size(&i, sink)),
        acls,
    };
    t.finish(sink);
    Some(f)
}

fn bind_one(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Option<At<SocketAddr>> {
    let s = item.str(sink)?;
    match addr::bind(s.value) {
        Ok(a) => Some(At { value: a, at: s.start, path: item.path.clone() }),
        Err(e) => {
            let d = sink.error(s.start, &item.path, e.to_string());
            if let Some(help) = e.help() {
                d.help(help);
            }
            None
        }
    }
}

fn binds(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Vec<At<SocketAddr>> {
    let Some(items) = item.one_or_many(sink) else { return Vec::new() };
    if items.is_empty() {
        sink.error(item.start(), &item.path, "bind needs at least one address")
            .help("write bind = \":80\" or bind = [\"127.0.0.1:8080\", \"[::1]:8080\"]");
    }
    let mut out: Vec<At<SocketAddr>> = Vec::new();
    for i in &items {
        let Some(b) = bind_one(i, sink) else { continue };
        match out.iter().find(|prev| addr::overlaps(prev.value, b.value)) {
            Some(prev) => {
                let message = if prev.value == b.value {
                    format!("duplicate bind address {}", b.value)
                } else {
                    format!("bind address {} overlaps {}", b.value, prev.value)
                };
                sink.error(b.at, &b.path, message).help(format!("already bound by {}", prev.path));
            }
            None => out.push(b),
        }
    }
    out
}

fn mode(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Option<Mode> {
    let m = item.keyword(sink, "mode", &[("http", Mode::Http), ("tcp", Mode::Tcp)])?;
    if m == Mode::Tcp {
        sink.error(item.start(), &item.path, "tcp mode is not supported yet")
            .help("use mode = \"http\"; tcp mode comes in a later version");
    }
    Some(m)
}

fn balance(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Option<Balance> {
    item.keyword(sink, "algorithm", &[("roundrobin", Balance::RoundRobin)])
}

fn retries(t: &mut Table<'_, '_>, sink: &mut Sink<'_>) -> Option<u32> {
    let n = t.take_int_in(sink, "retries", 0, Some(i64::from(u32::MAX)))?;
    u32::try_from(n).ok()
}

fn header_size(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Option<usize> {
    let n = match item.value.get_ref() {
        DeValue::Integer(_) => item.int(sink)?,
        DeValue::String(_) => {
            let s = item.str(sink)?;
            match size::parse(s.value) {
                Ok(n) => i64::try_from(n).unwrap_or(i64::MAX),
                Err(e) => {
                    sink.error(s.start, &item.path, e.to_string()).help(e.help());
                    return None;
                }
            }
        }
        _ => {
            item.type_error(sink, "an integer or a size string like \"64k\"");
            return None;
        }
    };
    match usize::try_from(n) {
        Ok(n) if n >= MIN_MAX_HEADER_SIZE => Some(n),
        _ => {
            sink.error(item.start(), &item.path, format!("max_header_size {n} is too small"))
                .help(format!("the minimum is {MIN_MAX_HEADER_SIZE} bytes"));
            None
        }
    }
}

/// Which section a `timeout` table is in: frontends take client-side timeouts, backends
/// server-side ones, `[defaults]` both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Defaults,
    Frontend,
    Backend,
}

const TIMEOUTS: [(&str, Side); 5] = [
    ("client", Side::Frontend),
    ("server", Side::Backend),
    ("connect", Side::Backend),
    ("http_request", Side::Frontend),
    ("http_keep_alive", Side::Frontend),
];

fn timeouts(item: Option<Item<'_, '_>>, side: Side, sink: &mut Sink<'_>) -> PartialTimeouts {
    let mut out = PartialTimeouts::default();
    let Some(mut t) = item.and_then(|i| i.table(sink)) else { return out };
    for (key, belongs) in TIMEOUTS {
        let Some(item) = t.take(key) else { continue };
        if side != Side::Defaults && side != belongs {
            let (here, there) = match belongs {
                Side::Backend => ("frontend", "a backend"),
                _ => ("backend", "a frontend"),
            };
            sink.error(item.key_at, &item.path, format!("{key} timeout does not apply to a {here}"))
                .help(format!("set it in {there} or in [defaults]"));
            continue;
        }
        let d = item.duration_nonzero(sink);
        let slot = match key {
            "client" => &mut out.client,
            "server" => &mut out.server,
            "connect" => &mut out.connect,
            "http_request" => &mut out.http_request,
            _ => &mut out.http_keep_alive,
        };
        *slot = d;
    }
    t.finish(sink);
    out
}

fn acl_error(sink: &mut Sink<'_>, s: &Str<'_>, path: &str, e: AclError) {
    let d = sink.error(s.at(e.offset), path, e.message);
    if let Some(help) = e.help {
        d.help(help);
    }
}

fn acls(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Vec<(String, Option<AclSpec>)> {
    let Some(mut t) = item.table(sink) else { return Vec::new() };
    let mut out = Vec::new();
    for (name, item) in t.take_all() {
        check_name(sink, item.key_at, &item.path, "acl", name);
        let texts = item.one_or_many(sink).unwrap_or_default();
        if matches!(item.value.get_ref(), DeValue::Array(a) if a.is_empty()) {
            sink.error(item.start(), &item.path, "acl needs at least one expression")
                .help("write NAME = \"FETCH PATTERN...\", e.g. is_api = \"path_beg /api\"");
        }
        let mut spec: Option<AclSpec> = None;
        let mut valid = !texts.is_empty();
        for text in &texts {
            let Some(s) = text.str(sink) else {
                valid = false;
                continue;
            };
            match acl::parse_acl(s.value) {
                Ok(a) => spec = Some(match spec {
                    Some(prev) => prev.or(a),
                    None => a,
                }),
                Err(e) => {
                    acl_error(sink, &s, &text.path, e);
                    valid = false;
                }
            }
        }
        out.push((name.to_owned(), spec.filter(|_| valid)));
    }
    t.finish(sink);
    out
}

fn backend_ref(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Option<At<String>> {
    let s = item.str(sink)?;
    Some(At { value: s.value.to_owned(), at: s.start, path: item.path.clone() })
}

fn rules(item: &Item<'_, '_>, acl_names: &[&str], sink: &mut Sink<'_>) -> Vec<RawRule> {
    let Some(items) = item.array(sink) else { return Vec::new() };
    let mut out = Vec::new();
    // The first rule without a condition: every rule after it is dead.
    let mut catch_all: Option<String> = None;
    for rule in &items {
        let Some(mut t) = rule.table(sink) else { continue };
        let backend = t.require(sink, "backend").and_then(|i| backend_ref(&i, sink));
        let (if_item, unless_item) = (t.take("if"), t.take("unless"));
        t.finish(sink);
        let (condition, negate) = match (if_item, unless_item) {
            (Some(a), Some(b)) => {
                let later = if a.key_at > b.key_at { a } else { b };
                sink.error(later.key_at, &rule.path, "both \"if\" and \"unless\" given")
                    .help("a rule takes one condition; negate part of an \"if\" with \"!\"");
                (None, false)
            }
            (Some(c), None) => (condition(&c, acl_names, sink), false),
            (None, Some(c)) => (condition(&c, acl_names, sink), true),
            (None, None) => {
                if catch_all.is_none() {
                    catch_all = Some(rule.path.clone());
                    out.push(RawRule { backend, condition: Some(Condition::always()), negate: false });
                    continue;
                }
                (Some(Condition::always()), false)
            }
        };
        if let Some(first) = &catch_all {
            sink.warning(rule.start(), &rule.path, "rule can never match")
                .help(format!("{first} has no condition, so it matches every request"));
        }
        out.push(RawRule { backend, condition, negate });
    }
    out
}

fn condition(item: &Item<'_, '_>, acl_names: &[&str], sink: &mut Sink<'_>) -> Option<Condition> {
    let s = item.str(sink)?;
    let c = match acl::parse_condition(s.value) {
        Ok(c) => c,
        Err(e) => {
            acl_error(sink, &s, &item.path, e);
            return None;
        }
    };
    let mut valid = true;
    for (offset, name) in c.acl_names() {
        if acl_names.contains(&name) {
            continue;
        }
        valid = false;
        let help = match did_you_mean(name, acl_names) {
            Some(m) => format!("did you mean \"{m}\"?"),
            None if acl_names.is_empty() => {
                "this frontend defines no acls; add acl = { NAME = \"FETCH PATTERN\" }".to_owned()
            }
            None => format!("acls in this frontend: {}", quoted_list(acl_names)),
        };
        sink.error(s.at(offset), &item.path, format!("unknown acl \"{name}\"")).help(help);
    }
    valid.then_some(c)
}

fn backend(name: &str, item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Option<RawBackend> {
    let mut t = section("backend", name, item, sink)?;
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
        mode: t.take("mode").and_then(|i| mode(&i, sink)),
        balance: t.take("balance").and_then(|i| balance(&i, sink)),
        servers,
        timeouts: timeouts(t.take("timeout"), Side::Backend, sink),
        retries: retries(&mut t, sink),
        check: t.take("check").map(|i| check_params(&i, sink)).unwrap_or_default(),
    };
    t.finish(sink);
    Some(b)
}

fn servers(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Vec<Server> {
    let Some(items) = item.array(sink) else { return Vec::new() };
    if items.is_empty() {
        sink.error(item.start(), &item.path, "backend has no servers")
            .help("add { name = \"s1\", addr = \"host:port\" }");
    }
    let mut names: Vec<At<String>> = Vec::new();
    let mut out = Vec::new();
    for entry in &items {
        let Some(mut t) = entry.table(sink) else { continue };
        let name = t.require(sink, "name").and_then(|i| Some((i.str(sink)?, i.path)));
        if let Some((s, path)) = &name {
            check_name(sink, s.start, path, "server", s.value);
            match names.iter().find(|n| n.value == s.value) {
                Some(first) => {
                    sink.error(s.start, path, format!("duplicate server name \"{}\"", s.value))
                        .help(format!("already used by {}", first.path));
                }
                None => names.push(At { value: s.value.to_owned(), at: s.start, path: entry.path.clone() }),
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
    let Some(mut t) = item.table(sink) else { return c };
    if let Some(d) = t.take("interval").and_then(|i| i.duration_nonzero(sink)) {
        c.interval = d;
    }
    if let Some(d) = t.take("timeout").and_then(|i| i.duration_nonzero(sink)) {
        c.timeout = d;
    }
    for (key, slot) in [("rise", &mut c.rise), ("fall", &mut c.fall)] {
        if let Some(n) = t.take_int_in(sink, key, 1, Some(1000)) {
            *slot = u32::try_from(n).unwrap_or(1);
        }
    }
    if let Some(i) = t.take("http") {
        if let Some(s) = i.str(sink) {
            match http_check(s.value) {
                Some(req) => c.http = Some(req),
                None => {
                    sink.error(s.start, &i.path, format!("invalid health check request \"{}\"", s.value))
                        .help("expected \"METHOD /path\", e.g. \"GET /health\"");
                }
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
        assert_eq!(http_check("GET /health"), Some((http::Method::GET, "/health".into())));
        assert_eq!(http_check("/"), Some((http::Method::GET, "/".into())));
        assert_eq!(http_check("HEAD /x"), Some((http::Method::HEAD, "/x".into())));
        assert_eq!(http_check("get /x"), None);
        assert_eq!(http_check("GET health"), None);
        assert_eq!(http_check("GET /a /b"), None);
        assert_eq!(http_check(""), None);
    }
}
