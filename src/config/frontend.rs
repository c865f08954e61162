//! `[frontend.NAME]`: listeners, ACLs, `use_backend` rules. ACL names used by a condition are
//! checked here (they are local to the frontend); backend names are checked in `validate`.

use std::net::SocketAddr;
use std::time::Duration;

use toml::de::DeValue;

use crate::config::acl::{self, AclError, AclSpec, Condition, IpNet};
use crate::config::addr;
use crate::config::diag::{Sink, did_you_mean, quoted_list};
use crate::config::model::{Mode, Redirect, TlsConfig};
use crate::config::modes::{self, ModeUse};
use crate::config::tls::bind_tls;
use crate::config::values::{
    At, PartialTimeouts, Side, bind_one, check_name, header_size, maxconn_at, section, take_mode,
    timeouts,
};
use crate::config::walk::{Item, Str};

#[derive(Debug)]
pub(crate) struct RawFrontend {
    pub(crate) name: String,
    pub(crate) at: usize,
    pub(crate) path: String,
    pub(crate) binds: Vec<RawBind>,
    pub(crate) redirect: Option<Redirect>,
    pub(crate) mode: Option<Mode>,
    /// `mode` was written but is invalid (reported).
    pub(crate) mode_invalid: bool,
    /// Every ACL name, with its spec when it parsed.
    pub(crate) acls: Vec<(String, Option<AclSpec>)>,
    pub(crate) rules: Vec<RawRule>,
    pub(crate) default_backend: Option<At<String>>,
    /// `default_backend` or `use_backend` was written (even if invalid).
    pub(crate) routes: bool,
    /// A backend reference was written but could not be read (a type error): which backends
    /// the frontend uses is not known.
    pub(crate) refs_unread: bool,
    pub(crate) timeouts: PartialTimeouts,
    pub(crate) forwardfor: Option<bool>,
    pub(crate) max_header_size: Option<usize>,
    pub(crate) inspect_delay: Option<Duration>,
    pub(crate) maxconn: Option<At<u32>>,
    /// Keys and fetches that need one mode, checked once the mode is known.
    pub(crate) uses: Vec<ModeUse>,
    /// `router = "PLUGIN"`.
    pub(crate) router: Option<At<String>>,
}

/// One `bind` entry: where it was written, its TLS settings and the peers it takes the PROXY
/// protocol from.
#[derive(Debug)]
pub(crate) struct RawBind {
    pub(crate) addr: At<SocketAddr>,
    pub(crate) tls: Option<TlsConfig>,
    pub(crate) accept_proxy: Option<Vec<IpNet>>,
}

#[derive(Debug)]
pub(crate) struct RawRule {
    pub(crate) backend: Option<At<String>>,
    /// `None` when the condition was invalid.
    pub(crate) condition: Option<Condition>,
    pub(crate) negate: bool,
}

pub(crate) fn walk(name: &str, item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Option<RawFrontend> {
    let mut t = section("frontend", name, item, sink)?;
    let uses = modes::frontend_uses(&t);
    let binds = t
        .require(sink, "bind")
        .map(|i| binds(&i, sink))
        .unwrap_or_default();
    let redirect = t.take("redirect").and_then(|i| {
        let r = i.keyword(sink, "redirect", &[("https", Redirect::Https)])?;
        if !binds.is_empty() && binds.iter().all(|b| b.tls.is_some()) {
            sink.warning(
                i.start(),
                &i.path,
                "redirect has no effect: every bind here is TLS",
            )
            .help("requests are redirected only on cleartext binds");
        }
        Some(r)
    });
    let (mode, mode_invalid) = take_mode(&mut t, sink);
    let acls = t.take("acl").map(|i| acls(&i, sink)).unwrap_or_default();
    let default_item = t.take("default_backend");
    let default_backend = default_item.as_ref().and_then(|i| backend_ref(i, sink));
    let rules_item = t.take("use_backend");
    let acl_names: Vec<&str> = acls.iter().map(|(n, _)| n.as_str()).collect();
    let (rules, rules_read) = rules_item
        .as_ref()
        .map(|i| rules(i, &acl_names, sink))
        .unwrap_or((Vec::new(), true));
    let refs_unread = (default_item.is_some() && default_backend.is_none()) || !rules_read;
    let f = RawFrontend {
        name: name.to_owned(),
        at: t.start(),
        path: t.path().to_owned(),
        binds,
        redirect,
        mode,
        mode_invalid,
        rules,
        default_backend,
        routes: default_item.is_some() || rules_item.is_some(),
        refs_unread,
        timeouts: timeouts(t.take("timeout"), Side::Frontend, sink),
        forwardfor: t.take_bool(sink, "forwardfor"),
        max_header_size: t
            .take("max_header_size")
            .and_then(|i| header_size(&i, sink)),
        inspect_delay: t
            .take("inspect_delay")
            .and_then(|i| i.duration_nonzero(sink)),
        maxconn: maxconn_at(&mut t, sink),
        uses,
        router: t.take("router").and_then(|i| backend_ref(&i, sink)),
        acls,
    };
    t.finish(sink);
    Some(f)
}

/// `bind`: an address, a `{ addr, tls, accept_proxy }` table, or an array of either.
fn binds(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Vec<RawBind> {
    let items = if matches!(item.value.get_ref(), DeValue::Table(_)) {
        vec![item.clone()]
    } else {
        match item.value.get_ref() {
            DeValue::String(_) | DeValue::Array(_) => item.one_or_many(sink).unwrap_or_default(),
            _ => {
                item.type_error(sink, "a string, a table or an array")
                    .help("write bind = \":80\", bind = [\":80\", \":81\"] or bind = [{ addr = \":443\", tls = { cert = \"site.pem\", key = \"site.key\" } }]");
                return Vec::new();
            }
        }
    };
    if items.is_empty() {
        sink.error(item.start(), &item.path, "bind needs at least one address")
            .help("write bind = \":80\" or bind = [\"127.0.0.1:8080\", \"[::1]:8080\"]");
    }
    let mut out: Vec<RawBind> = Vec::new();
    for i in &items {
        let (b, tls, accept_proxy) = if matches!(i.value.get_ref(), DeValue::Table(_)) {
            let Some(mut t) = i.table(sink) else { continue };
            let addr = t.require(sink, "addr").and_then(|a| bind_one(&a, sink));
            let tls_item = t.take("tls");
            let tls = tls_item.as_ref().and_then(|x| bind_tls(x, sink));
            let proxy_item = t.take("accept_proxy");
            let accept_proxy = proxy_item.as_ref().and_then(|x| trusted_peers(x, sink));
            t.finish(sink);
            // An invalid `tls` or `accept_proxy` was reported; the address still takes part in
            // the checks for addresses bound twice, here and across frontends. With an error
            // reported, the config never serves.
            let Some(a) = addr else { continue };
            (a, tls, accept_proxy)
        } else {
            let Some(b) = bind_one(i, sink) else { continue };
            (b, None, None)
        };
        match out
            .iter()
            .map(|r| &r.addr)
            .find(|prev| addr::overlaps(prev.value, b.value))
        {
            Some(prev) => {
                let message = if prev.value == b.value {
                    format!("duplicate bind address {}", b.value)
                } else {
                    format!("bind address {} overlaps {}", b.value, prev.value)
                };
                sink.error(b.at, &b.path, message)
                    .help(format!("already bound by {}", prev.path));
            }
            None => out.push(RawBind {
                addr: b,
                tls,
                accept_proxy,
            }),
        }
    }
    out
}

/// `accept_proxy`: the peers that send a PROXY protocol header, each an address or a CIDR (as
/// in a `src` ACL); one string, or an array of at least one.
fn trusted_peers(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Option<Vec<IpNet>> {
    let entries = item.one_or_many(sink)?;
    if entries.is_empty() {
        let message = "accept_proxy needs at least one address";
        sink.error(item.start(), &item.path, message).help(
            "list the peers that send the PROXY protocol, e.g. accept_proxy = [\"10.0.0.0/8\"]",
        );
        return None;
    }
    let mut nets = Vec::with_capacity(entries.len());
    let mut valid = true;
    for entry in &entries {
        let Some(s) = entry.str(sink) else {
            valid = false;
            continue;
        };
        match acl::parse_net(s.value) {
            Ok(net) => nets.push(net),
            Err(e) => {
                acl_error(sink, &s, &entry.path, e);
                valid = false;
            }
        }
    }
    valid.then_some(nets)
}

fn acl_error(sink: &mut Sink<'_>, s: &Str<'_>, path: &str, e: AclError) {
    let d = sink.error(s.at(e.offset), path, e.message);
    if let Some(help) = e.help {
        d.help(help);
    }
}

fn acl_errors(sink: &mut Sink<'_>, s: &Str<'_>, path: &str, errors: Vec<AclError>) {
    for e in errors {
        acl_error(sink, s, path, e);
    }
}

fn acls(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Vec<(String, Option<AclSpec>)> {
    let Some(mut t) = item.table(sink) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, item) in t.take_all() {
        check_name(sink, item.key_at, &item.path, "acl", name);
        let texts = item.one_or_many(sink).unwrap_or_default();
        if matches!(item.value.get_ref(), DeValue::Array(a) if a.is_empty()) {
            sink.error(
                item.start(),
                &item.path,
                "acl needs at least one expression",
            )
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
                Ok(a) => {
                    spec = Some(match spec {
                        Some(prev) => prev.or(a),
                        None => a,
                    })
                }
                Err(errors) => {
                    acl_errors(sink, &s, &text.path, errors);
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
    Some(At {
        value: s.value.to_owned(),
        at: s.start,
        path: item.path.clone(),
    })
}

/// The rules, and whether every rule's backend could be read.
fn rules(item: &Item<'_, '_>, acl_names: &[&str], sink: &mut Sink<'_>) -> (Vec<RawRule>, bool) {
    let Some(items) = item.array(sink) else {
        return (Vec::new(), false);
    };
    let mut all_read = true;
    let mut out = Vec::new();
    // The first rule without a condition: every rule after it is dead.
    let mut catch_all: Option<String> = None;
    for rule in &items {
        let Some(mut t) = rule.table(sink) else {
            all_read = false;
            continue;
        };
        let backend = t
            .require(sink, "backend")
            .and_then(|i| backend_ref(&i, sink));
        all_read &= backend.is_some();
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
                    out.push(RawRule {
                        backend,
                        condition: Some(Condition::always()),
                        negate: false,
                    });
                    continue;
                }
                (Some(Condition::always()), false)
            }
        };
        if let Some(first) = &catch_all {
            sink.warning(rule.start(), &rule.path, "rule can never match")
                .help(format!(
                    "{first} has no condition, so it matches every request"
                ));
        }
        out.push(RawRule {
            backend,
            condition,
            negate,
        });
    }
    (out, all_read)
}

fn condition(item: &Item<'_, '_>, acl_names: &[&str], sink: &mut Sink<'_>) -> Option<Condition> {
    let s = item.str(sink)?;
    // Names are checked in a condition with errors too: every problem in one run.
    let (c, errors) = acl::parse_condition_partly(s.value);
    let mut valid = errors.is_empty();
    acl_errors(sink, &s, &item.path, errors);
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
        sink.error(s.at(offset), &item.path, format!("unknown acl \"{name}\""))
            .help(help);
    }
    valid.then_some(c)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::path::Path;

    use crate::config::load_str;
    use crate::config::tests::messages;

    const BACKEND: &str = "[backend.app]\nservers = [{ name = \"s\", addr = \"127.0.0.1:2\" }]\n";

    #[test]
    fn accept_proxy_lists_the_trusted_peers_of_one_bind() {
        let src = format!(
            "[frontend.web]\ndefault_backend = \"app\"\nbind = [\n  \"127.0.0.1:1\",\n  {{ addr = \"127.0.0.1:2\", accept_proxy = [\"10.0.0.0/8\", \"::1\"] }},\n  {{ addr = \"127.0.0.1:3\", accept_proxy = \"192.0.2.7\" }},\n]\n{BACKEND}"
        );
        let (config, report) = load_str(&src, Path::new("t.toml"));
        assert_eq!(report.diagnostics, []);
        let binds = &config.expect("config").frontends[0].binds;
        assert_eq!(binds[0].accept_proxy, None);
        let trusts = |i: usize, ip: &str| {
            let ip: IpAddr = ip.parse().unwrap();
            binds[i]
                .accept_proxy
                .as_ref()
                .unwrap()
                .iter()
                .any(|n| n.contains(ip))
        };
        assert!(trusts(1, "10.9.8.7") && trusts(1, "::1") && !trusts(1, "11.0.0.1"));
        assert!(trusts(2, "192.0.2.7") && !trusts(2, "192.0.2.8"));
    }

    #[test]
    fn accept_proxy_entries_are_checked_where_they_are_written() {
        let src = format!(
            "[frontend.web]\ndefault_backend = \"app\"\nbind = [\n  {{ addr = \"127.0.0.1:1\", accept_proxy = [] }},\n  {{ addr = \"127.0.0.1:2\", accept_proxy = [\"10.0.0.0/33\", \"lb1\", 7] }},\n  {{ addr = \"127.0.0.1:3\", accept_proxy = 10 }},\n]\n{BACKEND}"
        );
        assert_eq!(
            messages(&src),
            [
                "4:42 frontend.web.bind[0].accept_proxy: accept_proxy needs at least one address",
                "5:53 frontend.web.bind[1].accept_proxy[0]: prefix length 33 is out of range 0..=32",
                "5:59 frontend.web.bind[1].accept_proxy[1]: invalid address or cidr \"lb1\"",
                "5:65 frontend.web.bind[1].accept_proxy[2]: expected a string, found an integer",
                "6:42 frontend.web.bind[2].accept_proxy: expected a string or an array of strings, found an integer",
            ]
        );
    }
}
