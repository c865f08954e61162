//! Mode checks: HTTP and TCP sections must not be mixed, and keys (or ACL fetches) that only
//! mean something in one mode are errors in the other.
//!
//! A section's mode may come from `[defaults]`, which is known only once the whole file is
//! walked, so the section walkers note what they see ([`frontend_uses`], [`backend_uses`],
//! by peeking at the table beside the normal walk) and [`check`] judges it afterwards.

use toml::de::DeValue;

use crate::config::acl::{AclRef, parse_acl, parse_condition};
use crate::config::diag::Sink;
use crate::config::model::Mode;
use crate::config::sections::Raw;
use crate::config::walk::{Item, Table};

/// Something written in a section that needs the section to be in one mode.
#[derive(Debug, Clone)]
pub(crate) struct ModeUse {
    pub(crate) needs: Mode,
    /// What needs it, for messages: `forwardfor`, `fetch "path"`.
    pub(crate) what: String,
    pub(crate) at: usize,
    pub(crate) path: String,
    /// A warning with this help instead of an error: the other mode has a fallback.
    pub(crate) fallback: Option<&'static str>,
}

impl ModeUse {
    fn key(needs: Mode, item: &Item<'_, '_>) -> Self {
        let key = item.path.rsplit('.').next().unwrap_or(&item.path);
        Self {
            needs,
            what: key.to_owned(),
            at: item.key_at,
            path: item.path.clone(),
            fallback: None,
        }
    }
}

/// Frontend keys that only HTTP mode reads.
const HTTP_FRONTEND_KEYS: [&str; 3] = ["forwardfor", "max_header_size", "redirect"];
/// TLS to servers: TCP mode connects in cleartext and passes the client's bytes through.
const UPSTREAM_TLS_KEYS: [&str; 4] = ["tls", "ca", "sni", "verify"];
/// Timeouts that only HTTP mode has.
const HTTP_TIMEOUTS: [&str; 2] = ["http_request", "http_keep_alive"];

/// What a frontend table uses that needs one mode: keys, and the fetches of its ACLs (named or
/// inline in `use_backend` conditions; ACLs that do not parse are reported by the walk).
pub(crate) fn frontend_uses(t: &Table<'_, '_>) -> Vec<ModeUse> {
    let mut out = Vec::new();
    for key in HTTP_FRONTEND_KEYS {
        if let Some(i) = t.peek(key) {
            out.push(ModeUse::key(Mode::Http, &i));
        }
    }
    if let Some(i) = t.peek("inspect_delay") {
        out.push(ModeUse::key(Mode::Tcp, &i));
    }
    // TLS termination serves HTTP; a TCP frontend passes TLS through untouched.
    if let Some(binds) = t.peek("bind") {
        let binds = match binds.value.get_ref() {
            DeValue::Array(_) => elements(&binds),
            _ => vec![binds],
        };
        for tls in binds.iter().filter_map(|b| table(b)?.peek("tls")) {
            let mut u = ModeUse::key(Mode::Http, &tls);
            u.what = "tls".to_owned();
            out.push(u);
        }
    }
    if let Some(timeouts) = t.peek("timeout").as_ref().and_then(table) {
        for key in HTTP_TIMEOUTS {
            if let Some(i) = timeouts.peek(key) {
                let mut u = ModeUse::key(Mode::Http, &i);
                u.what = format!("timeout {key}");
                out.push(u);
            }
        }
    }
    if let Some(mut acls) = t.peek("acl").as_ref().and_then(table) {
        for (_, item) in acls.take_all() {
            for (text, at) in strings(&item) {
                let Ok(spec) = parse_acl(text) else { continue };
                fetch_uses(&spec, at, &item.path, &mut out);
            }
        }
    }
    if let Some(rules) = t.peek("use_backend") {
        for rule in elements(&rules) {
            let Some(rule) = table(&rule) else { continue };
            for key in ["if", "unless"] {
                let Some(cond) = rule.peek(key) else { continue };
                for (text, at) in strings(&cond) {
                    let Ok(c) = parse_condition(text) else {
                        continue;
                    };
                    for term in c.alternatives().iter().flatten() {
                        if let AclRef::Inline { spec, .. } = &term.acl {
                            fetch_uses(spec, at, &cond.path, &mut out);
                        }
                    }
                }
            }
        }
    }
    out
}

/// What a backend table uses that needs one mode.
pub(crate) fn backend_uses(t: &Table<'_, '_>) -> Vec<ModeUse> {
    let mut out = Vec::new();
    for key in UPSTREAM_TLS_KEYS.iter().chain(&["proto"]) {
        if let Some(i) = t.peek(key) {
            out.push(ModeUse::key(Mode::Http, &i));
        }
    }
    if let Some(check) = t.peek("check").as_ref().and_then(table) {
        for key in ["http", "host", "expect"] {
            if let Some(i) = check.peek(key) {
                let mut u = ModeUse::key(Mode::Http, &i);
                u.what = format!("check.{key}");
                out.push(u);
            }
        }
    }
    if let Some(i) = t.peek("observe")
        && let Some(&(s, at)) = strings(&i).first()
        && s == "layer7"
    {
        // At the value, where check's warnings about `observe` point too.
        out.push(ModeUse {
            needs: Mode::Http,
            what: "observe = \"layer7\"".to_owned(),
            at,
            path: i.path.clone(),
            fallback: None,
        });
    }
    if let Some(i) = t.peek("balance")
        && let Some((s, at)) = strings(&i).first().copied()
        && (s.split_whitespace().next() == Some("uri") || s.starts_with("hdr("))
    {
        out.push(ModeUse {
            needs: Mode::Http,
            what: format!("balance \"{s}\""),
            at,
            path: i.path.clone(),
            fallback: Some("without HTTP data to hash, tcp mode balances round-robin"),
        });
    }
    if let Some(servers) = t.peek("servers") {
        for server in elements(&servers) {
            let Some(server) = table(&server) else {
                continue;
            };
            if let Some(i) = server.peek("send_proxy") {
                out.push(ModeUse::key(Mode::Tcp, &i));
            }
            for key in UPSTREAM_TLS_KEYS {
                if let Some(i) = server.peek(key) {
                    out.push(ModeUse::key(Mode::Http, &i));
                }
            }
        }
    }
    out
}

/// Reports mode mismatches: a frontend routing to a backend of the other mode, and every use
/// of a key or fetch that the section's mode does not have.
pub(crate) fn check(raw: &Raw, sink: &mut Sink<'_>) {
    let d = &raw.defaults;
    // A section's mode; `None` when it (or `[defaults]`' mode it falls back on) is invalid.
    let effective = |own: Option<Mode>, invalid: bool| match own {
        _ if invalid => None,
        Some(m) => Some(m),
        None if d.mode_invalid => None,
        None => Some(d.mode.unwrap_or(Mode::Http)),
    };
    let backend_mode = |name: &str| {
        raw.backends
            .iter()
            .find(|b| b.name == name)
            .and_then(|b| effective(b.mode, b.mode_invalid))
    };
    for f in &raw.frontends {
        let Some(mode) = effective(f.mode, f.mode_invalid) else {
            continue;
        };
        report(&f.uses, mode, "frontend", &f.name, sink);
        let refs = f
            .default_backend
            .iter()
            .chain(f.rules.iter().filter_map(|r| r.backend.as_ref()));
        for r in refs {
            let Some(theirs) = backend_mode(&r.value) else {
                continue;
            };
            if theirs != mode {
                sink.error(
                    r.at,
                    &r.path,
                    format!(
                        "{} frontend \"{}\" cannot use {} backend \"{}\"",
                        mode.name(),
                        f.name,
                        theirs.name(),
                        r.value
                    ),
                )
                .help(format!(
                    "set mode = \"{}\" in [backend.{}], or route to {} backend",
                    mode.name(),
                    r.value,
                    match mode {
                        Mode::Http => "an http",
                        Mode::Tcp => "a tcp",
                    }
                ));
            }
        }
    }
    for b in &raw.backends {
        let Some(mode) = effective(b.mode, b.mode_invalid) else {
            continue;
        };
        report(&b.uses, mode, "backend", &b.name, sink);
    }
}

fn report(uses: &[ModeUse], mode: Mode, kind: &str, name: &str, sink: &mut Sink<'_>) {
    for u in uses.iter().filter(|u| u.needs != mode) {
        match u.fallback {
            Some(help) => {
                sink.warning(
                    u.at,
                    &u.path,
                    format!("{} needs {} mode", u.what, u.needs.name()),
                )
                .help(format!(
                    "{kind} \"{name}\" is in {} mode: {help}",
                    mode.name()
                ));
            }
            None => {
                sink.error(
                    u.at,
                    &u.path,
                    format!("{} applies to {} mode only", u.what, u.needs.name()),
                )
                .help(format!(
                    "{kind} \"{name}\" is in {} mode; remove it, or set mode = \"{}\"",
                    mode.name(),
                    u.needs.name()
                ));
            }
        }
    }
}

fn fetch_uses(spec: &crate::config::acl::AclSpec, at: usize, path: &str, out: &mut Vec<ModeUse>) {
    for test in spec.tests() {
        if let Some(needs) = test.fetch().mode() {
            out.push(ModeUse {
                needs,
                what: format!("fetch \"{}\"", test.fetch().keyword()),
                at,
                path: path.to_owned(),
                fallback: None,
            });
        }
    }
}

/// The item as a table, if it is one (type errors are the walk's to report).
fn table<'a, 'i>(item: &Item<'a, 'i>) -> Option<Table<'a, 'i>> {
    match item.value.get_ref() {
        DeValue::Table(t) => Some(Table::new(item.path.clone(), item.start(), t)),
        _ => None,
    }
}

/// The elements of an array item (none for other types).
fn elements<'a, 'i>(item: &Item<'a, 'i>) -> Vec<Item<'a, 'i>> {
    match item.value.get_ref() {
        DeValue::Array(a) => item.elements(a),
        _ => Vec::new(),
    }
}

/// The strings of a string or array-of-strings item, each with where its value starts.
fn strings<'a>(item: &Item<'a, '_>) -> Vec<(&'a str, usize)> {
    let one = |v: &'a crate::config::walk::Value<'_>| match v.get_ref() {
        DeValue::String(s) => {
            let s: &'a str = s;
            Some((s, v.span().start))
        }
        _ => None,
    };
    match item.value.get_ref() {
        DeValue::Array(a) => a.iter().filter_map(one).collect(),
        _ => one(item.value).into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::messages;

    #[test]
    fn a_router_plugin_may_decide_for_tcp_frontends() {
        let src = r#"
[frontend.db_in]
bind = "127.0.0.1:5432"
mode = "tcp"
router = "pick"
default_backend = "db"

[backend.db]
mode = "tcp"
servers = [{ name = "d1", addr = "127.0.0.1:9002" }]

[plugin.pick]
path = "pick.wasm"
"#;
        assert_eq!(messages(src), Vec::<String>::new());
        // An HTTP-only key on the same frontend is still refused.
        let with_redirect = src.replace(
            "router = \"pick\"",
            "router = \"pick\"\nredirect = \"https\"",
        );
        assert_eq!(
            messages(&with_redirect),
            ["6:1 frontend.db_in.redirect: redirect applies to http mode only"]
        );
    }
}
