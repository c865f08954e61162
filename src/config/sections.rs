//! The whole file: the root table, `[global]`, `[defaults]`, `[admin]`, `[plugin.*]`, and the
//! frontend and backend sections (walked in `frontend` and `backend`).
//!
//! Every check that needs only one section happens while walking it: types, values, required
//! keys, ACL syntax and names, duplicates inside one frontend or backend. The result is a
//! [`Raw`] config that keeps what `validate` needs for cross-section checks (positions, key
//! paths) and leaves `[defaults]` unapplied. Invalid values are reported and then dropped: a
//! `Raw` with errors is never turned into a `Config`.

use std::time::Duration;

use crate::config::admin::{self, RawAdmin};
use crate::config::backend::{self, RawBackend};
use crate::config::diag::Sink;
use crate::config::frontend::{self, RawFrontend};
use crate::config::model::{Balance, Global, LogFormat, Mode};
use crate::config::plugin::{self, RawPlugin};
use crate::config::values::{
    At, PartialTimeouts, Side, balance_at, header_size, retries, take_mode, timeouts,
};
use crate::config::walk::{Item, Table};

/// More worker threads than this is a typo, not a tuning choice.
const MAX_WORKERS: i64 = 1024;
/// The largest `[global] maxconn`: Linux's ceiling on open files per process (`fs.nr_open`
/// cannot exceed it), and so on connections.
const MAX_MAXCONN: i64 = 1 << 30;

/// The custom slices Linux's scheduler (EEVDF) accepts for ordinary threads.
const SCHED_SLICE_MIN: Duration = Duration::from_micros(100);
const SCHED_SLICE_MAX: Duration = Duration::from_millis(100);

/// `[defaults]`: every field is a fallback for the sections that do not set it.
#[derive(Debug, Default)]
pub(crate) struct Defaults {
    pub(crate) mode: Option<Mode>,
    /// `mode` was written but is invalid (reported).
    pub(crate) mode_invalid: bool,
    pub(crate) timeouts: PartialTimeouts,
    pub(crate) retries: Option<u32>,
    pub(crate) forwardfor: Option<bool>,
    pub(crate) max_header_size: Option<usize>,
    pub(crate) balance: Option<At<Balance>>,
    pub(crate) redispatch: Option<bool>,
}

#[derive(Debug, Default)]
pub(crate) struct Raw {
    pub(crate) global: Global,
    pub(crate) defaults: Defaults,
    pub(crate) admin: Option<RawAdmin>,
    pub(crate) frontends: Vec<RawFrontend>,
    pub(crate) backends: Vec<RawBackend>,
    pub(crate) plugins: Vec<RawPlugin>,
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
    if let Some(t) = root.take("admin").and_then(|i| i.table(sink)) {
        raw.admin = Some(admin::walk(t, sink));
    }
    if let Some(mut t) = root.take("frontend").and_then(|i| i.table(sink)) {
        for (name, item) in t.take_all() {
            raw.frontends.extend(frontend::walk(name, &item, sink));
        }
    }
    if let Some(mut t) = root.take("backend").and_then(|i| i.table(sink)) {
        for (name, item) in t.take_all() {
            raw.backends.extend(backend::walk(name, &item, sink));
        }
    }
    if let Some(mut t) = root.take("plugin").and_then(|i| i.table(sink)) {
        for (name, item) in t.take_all() {
            raw.plugins.extend(plugin::walk(name, &item, sink));
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
    if let Some(f) = t
        .take("log_format")
        .and_then(|i| i.keyword(sink, "log format", &formats))
    {
        g.log_format = f;
    }
    if let Some(b) = t.take_bool(sink, "access_log") {
        g.access_log = b;
    }
    if let Some(d) = t.take_duration(sink, "grace") {
        g.grace = d;
    }
    if let Some(item) = t.take("sched_slice") {
        g.sched_slice = sched_slice(&item, sink);
    }
    let affinities = [("auto", true), ("none", false)];
    if let Some(pin) = t
        .take("cpu_affinity")
        .and_then(|i| i.keyword(sink, "cpu affinity", &affinities))
    {
        g.pin_workers = Some(pin);
    }
    if let Some(n) = t.take_int_in(sink, "maxconn", 1, Some(MAX_MAXCONN)) {
        g.maxconn = usize::try_from(n).ok();
    }
    t.finish(sink);
    g
}

/// `sched_slice`: within what the kernel accepts (0.1 ms to 100 ms).
fn sched_slice(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Option<Duration> {
    let d = item.duration(sink)?;
    if !(SCHED_SLICE_MIN..=SCHED_SLICE_MAX).contains(&d) {
        sink.error(item.start(), &item.path, "sched_slice is out of range")
            .help("the kernel takes 100us to 100ms");
        return None;
    }
    Some(d)
}

fn defaults(mut t: Table<'_, '_>, sink: &mut Sink<'_>) -> Defaults {
    let (mode, mode_invalid) = take_mode(&mut t, sink);
    let d = Defaults {
        mode,
        mode_invalid,
        timeouts: timeouts(t.take("timeout"), Side::Defaults, sink),
        retries: retries(&mut t, sink),
        forwardfor: t.take_bool(sink, "forwardfor"),
        max_header_size: t
            .take("max_header_size")
            .and_then(|i| header_size(&i, sink)),
        balance: t.take("balance").and_then(|i| balance_at(&i, sink)),
        redispatch: t.take_bool(sink, "redispatch"),
    };
    t.finish(sink);
    d
}
