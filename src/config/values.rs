//! Values shared by the section walkers: addresses, modes, algorithms, sizes, timeout tables,
//! names, and the [`At`] wrapper that keeps where a value was written for later checks.

use std::net::SocketAddr;
use std::time::Duration;

use toml::de::DeValue;

use crate::config::addr;
use crate::config::diag::Sink;
use crate::config::model::{Balance, MAX_MAX_HEADER_SIZE, MIN_MAX_HEADER_SIZE, Mode, Observe};
use crate::config::size;
use crate::config::walk::{Item, Table};

/// More connect retries than this is a typo, not a tuning choice.
const MAX_RETRIES: i64 = 100;

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
    pub(crate) queue: Option<Duration>,
    pub(crate) tunnel: Option<Duration>,
}

/// The table of a named section (`[frontend.NAME]`), with a hint when the name was forgotten.
pub(crate) fn section<'a, 'i>(
    kind: &str,
    name: &str,
    item: &Item<'a, 'i>,
    sink: &mut Sink<'_>,
) -> Option<Table<'a, 'i>> {
    if !matches!(item.value.get_ref(), DeValue::Table(_)) {
        item.type_error(sink, "a table")
            .help(format!("each {kind} is a named table: [{kind}.NAME]"));
        return None;
    }
    check_name(sink, item.key_at, &item.path, kind, name);
    item.table(sink)
}

/// HAProxy's rule for names, so that they read the same in logs, stats and conditions.
pub(crate) fn check_name(sink: &mut Sink<'_>, at: usize, path: &str, kind: &str, name: &str) {
    if !is_name(name) {
        sink.error(at, path, format!("invalid {kind} name \"{name}\""))
            .help("names may contain letters, digits, '-', '_', '.' and ':'");
    }
}

pub(crate) fn bind_one(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Option<At<SocketAddr>> {
    let s = item.str(sink)?;
    match addr::bind(s.value) {
        Ok(a) => Some(At {
            value: a,
            at: s.start,
            path: item.path.clone(),
        }),
        Err(e) => {
            let d = sink.error(s.start, &item.path, e.to_string());
            if let Some(help) = e.help() {
                d.help(help);
            }
            None
        }
    }
}

pub(crate) fn mode(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Option<Mode> {
    item.keyword(sink, "mode", &[("http", Mode::Http), ("tcp", Mode::Tcp)])
}

/// A section's `mode`, and whether it was written but invalid (reported): nothing is then
/// judged by a mode the user did not mean.
pub(crate) fn take_mode(t: &mut Table<'_, '_>, sink: &mut Sink<'_>) -> (Option<Mode>, bool) {
    match t.take("mode") {
        Some(i) => {
            let m = mode(&i, sink);
            (m, m.is_none())
        }
        None => (None, false),
    }
}

/// The algorithm names `balance` takes (besides `hdr(NAME)`), for messages.
const ALGORITHMS: [&str; 9] = [
    "roundrobin",
    "static-rr",
    "leastconn",
    "random",
    "source",
    "uri",
    "uri whole",
    "hdr(NAME)",
    "first",
];

pub(crate) fn balance(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Option<Balance> {
    let s = item.str(sink)?;
    let words: Vec<&str> = s.value.split_whitespace().collect();
    let algo = match words.as_slice() {
        ["roundrobin"] => Some(Balance::RoundRobin),
        ["static-rr"] => Some(Balance::StaticRr),
        ["leastconn"] => Some(Balance::LeastConn),
        ["random"] => Some(Balance::Random),
        ["source"] => Some(Balance::Source),
        ["uri"] => Some(Balance::Uri { whole: false }),
        ["uri", "whole"] => Some(Balance::Uri { whole: true }),
        ["first"] => Some(Balance::First),
        [hdr] if hdr.starts_with("hdr(") && hdr.ends_with(')') => {
            let name = &hdr[4..hdr.len() - 1];
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => Some(Balance::Hdr(h)),
                Err(_) => {
                    sink.error(
                        s.start,
                        &item.path,
                        format!("invalid header name \"{name}\" in \"{}\"", s.value),
                    )
                    .help("write hdr(NAME) with a header name, e.g. hdr(x-user)");
                    return None;
                }
            }
        }
        _ => None,
    };
    if algo.is_some() {
        return algo;
    }
    // Any other single name may be a plugin's: `validate` resolves it once every
    // `[plugin.*]` section is known, and reports it there when it is not.
    if let [name] = words.as_slice()
        && is_name(name)
    {
        return Some(Balance::Plugin((*name).to_owned()));
    }
    unknown_algorithm(sink, s.start, &item.path, s.value, &[]);
    None
}

/// Reports `name` as an unknown `balance` value; `plugins` are the plugin names it could
/// have meant.
pub(crate) fn unknown_algorithm(
    sink: &mut Sink<'_>,
    at: usize,
    path: &str,
    name: &str,
    plugins: &[&str],
) {
    let mut candidates: Vec<&str> = ALGORITHMS.to_vec();
    candidates.extend_from_slice(plugins);
    let help = match crate::config::diag::did_you_mean(name, &candidates) {
        Some(m) => format!("did you mean \"{m}\"?"),
        None => {
            let mut words: Vec<&str> = ALGORITHMS.to_vec();
            words.push("a plugin name");
            format!("expected {}", crate::config::walk::or_list(&words))
        }
    };
    sink.error(at, path, format!("unknown algorithm \"{name}\""))
        .help(help);
}

/// Whether `name` follows the naming rule of [`check_name`].
pub(crate) fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// `balance`, with where it was written (a plugin name is resolved in `validate`).
pub(crate) fn balance_at(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Option<At<Balance>> {
    Some(At {
        value: balance(item, sink)?,
        at: item.start(),
        path: item.path.clone(),
    })
}

pub(crate) fn observe(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Option<Observe> {
    item.keyword(
        sink,
        "observe mode",
        &[("layer4", Observe::Layer4), ("layer7", Observe::Layer7)],
    )
}

/// Connection limits (`maxconn`): 1 and up.
pub(crate) fn maxconn(t: &mut Table<'_, '_>, sink: &mut Sink<'_>) -> Option<u32> {
    maxconn_at(t, sink).map(|m| m.value)
}

/// [`maxconn`] with where it was written.
pub(crate) fn maxconn_at(t: &mut Table<'_, '_>, sink: &mut Sink<'_>) -> Option<At<u32>> {
    let item = t.take("maxconn")?;
    let n = item.int_in(sink, "maxconn", 1, Some(i64::from(u32::MAX)))?;
    Some(At {
        value: u32::try_from(n).ok()?,
        at: item.start(),
        path: item.path.clone(),
    })
}

pub(crate) fn retries(t: &mut Table<'_, '_>, sink: &mut Sink<'_>) -> Option<u32> {
    let n = t.take_int_in(sink, "retries", 0, Some(MAX_RETRIES))?;
    u32::try_from(n).ok()
}

pub(crate) fn header_size(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Option<usize> {
    let n = match item.value.get_ref() {
        DeValue::Integer(_) => item.int(sink)?,
        DeValue::String(_) => {
            let s = item.str(sink)?;
            match size::parse(s.value) {
                Ok(n) => i64::try_from(n).unwrap_or(i64::MAX),
                Err(e) => {
                    sink.error(s.start, &item.path, e.to_string())
                        .help(e.help());
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
        Ok(n) if (MIN_MAX_HEADER_SIZE..=MAX_MAX_HEADER_SIZE).contains(&n) => Some(n),
        Ok(n) if n > MAX_MAX_HEADER_SIZE => {
            sink.error(
                item.start(),
                &item.path,
                format!("max_header_size {n} is too large"),
            )
            .help(format!(
                "the maximum is {MAX_MAX_HEADER_SIZE} bytes (\"16m\")"
            ));
            None
        }
        _ => {
            sink.error(
                item.start(),
                &item.path,
                format!("max_header_size {n} is too small"),
            )
            .help(format!("the minimum is {MIN_MAX_HEADER_SIZE} bytes"));
            None
        }
    }
}

/// Which section a `timeout` table is in: frontends take client-side timeouts, backends
/// server-side ones, `[defaults]` both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Defaults,
    Frontend,
    Backend,
}

const TIMEOUTS: [(&str, Side); 7] = [
    ("client", Side::Frontend),
    ("server", Side::Backend),
    ("connect", Side::Backend),
    ("http_request", Side::Frontend),
    ("http_keep_alive", Side::Frontend),
    ("queue", Side::Backend),
    ("tunnel", Side::Backend),
];

pub(crate) fn timeouts(
    item: Option<Item<'_, '_>>,
    side: Side,
    sink: &mut Sink<'_>,
) -> PartialTimeouts {
    let mut out = PartialTimeouts::default();
    let Some(mut t) = item.and_then(|i| i.table(sink)) else {
        return out;
    };
    for (key, belongs) in TIMEOUTS {
        let Some(item) = t.take(key) else { continue };
        if side != Side::Defaults && side != belongs {
            let (here, there) = match belongs {
                Side::Backend => ("frontend", "a backend"),
                _ => ("backend", "a frontend"),
            };
            sink.error(
                item.key_at,
                &item.path,
                format!("{key} timeout does not apply to a {here}"),
            )
            .help(format!("set it in {there} or in [defaults]"));
            continue;
        }
        let d = item.duration_nonzero(sink);
        let slot = match key {
            "client" => &mut out.client,
            "server" => &mut out.server,
            "connect" => &mut out.connect,
            "http_request" => &mut out.http_request,
            "queue" => &mut out.queue,
            "tunnel" => &mut out.tunnel,
            _ => &mut out.http_keep_alive,
        };
        *slot = d;
    }
    t.finish(sink);
    out
}
