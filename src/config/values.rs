//! Values shared by the section walkers: addresses, modes, algorithms, sizes, timeout tables,
//! names, and the [`At`] wrapper that keeps where a value was written for later checks.

use std::net::SocketAddr;
use std::time::Duration;

use toml::de::DeValue;

use crate::config::addr;
use crate::config::diag::Sink;
use crate::config::model::{Balance, MIN_MAX_HEADER_SIZE, Mode};
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
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if !valid {
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
    let m = item.keyword(sink, "mode", &[("http", Mode::Http), ("tcp", Mode::Tcp)])?;
    if m == Mode::Tcp {
        sink.error(item.start(), &item.path, "tcp mode is not supported yet")
            .help("use mode = \"http\"; tcp mode comes in a later version");
    }
    Some(m)
}

pub(crate) fn balance(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Option<Balance> {
    item.keyword(sink, "algorithm", &[("roundrobin", Balance::RoundRobin)])
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
        Ok(n) if n >= MIN_MAX_HEADER_SIZE => Some(n),
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

const TIMEOUTS: [(&str, Side); 5] = [
    ("client", Side::Frontend),
    ("server", Side::Backend),
    ("connect", Side::Backend),
    ("http_request", Side::Frontend),
    ("http_keep_alive", Side::Frontend),
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
            _ => &mut out.http_keep_alive,
        };
        *slot = d;
    }
    t.finish(sink);
    out
}
