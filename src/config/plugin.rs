//! `[plugin.NAME]`: a Wasm plugin's file, its configuration values and its limits. Whether
//! the file is a component exporting what its uses need is checked when plugins are loaded
//! (`wasp check` does it too), not here.

use std::time::Duration;

use toml::de::DeValue;

use crate::config::diag::Sink;
use crate::config::model::{
    DEFAULT_PLUGIN_MEMORY, DEFAULT_PLUGIN_TIMEOUT, DEFAULT_RECYCLE_AFTER, DEFAULT_RECYCLE_MEMORY,
    MAX_PLUGIN_MEMORY, MAX_PLUGIN_TIMEOUT, MIN_PLUGIN_TIMEOUT, OnError,
};
use crate::config::size;
use crate::config::values::{At, section};
use crate::config::walk::Item;

/// Longest config key or value handed to a plugin.
const MAX_CONFIG_TEXT: usize = 4096;
/// Smallest `memory`: a Rust guest needs its stack and a few pages of heap.
const MIN_PLUGIN_MEMORY: usize = 1024 * 1024;

#[derive(Debug)]
pub(crate) struct RawPlugin {
    pub(crate) name: String,
    pub(crate) at: usize,
    pub(crate) path: String,
    /// `path`, as written.
    pub(crate) file: Option<At<String>>,
    pub(crate) config: Vec<(String, String)>,
    pub(crate) timeout: Duration,
    pub(crate) memory: usize,
    pub(crate) on_error: OnError,
    pub(crate) recycle_after: u64,
    pub(crate) recycle_memory: usize,
}

pub(crate) fn walk(name: &str, item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Option<RawPlugin> {
    let mut t = section("plugin", name, item, sink)?;
    let file = t.require(sink, "path").and_then(|i| {
        let s = i.str(sink)?;
        if s.value.is_empty() {
            sink.error(s.start, &i.path, "path is empty")
                .help("give the .wasm file, e.g. path = \"plugins/target/wasm32-wasip2/release/my_plugin.wasm\"");
            return None;
        }
        Some(At {
            value: s.value.to_owned(),
            at: s.start,
            path: i.path.clone(),
        })
    });
    let config = t
        .take("config")
        .map(|i| values(&i, sink))
        .unwrap_or_default();
    let timeout = t
        .take("timeout")
        .and_then(|i| {
            let d = i.duration_nonzero(sink)?;
            if d > MAX_PLUGIN_TIMEOUT {
                sink.error(i.start(), &i.path, "plugin timeout is too long")
                    .help("a plugin call runs on the request path; the maximum is 1s");
                return None;
            }
            if d < MIN_PLUGIN_TIMEOUT {
                sink.error(i.start(), &i.path, "plugin timeout is too short")
                    .help("calls are timed in 1 ms steps; the minimum is 1ms");
                return None;
            }
            Some(d)
        })
        .unwrap_or(DEFAULT_PLUGIN_TIMEOUT);
    let memory = t
        .take("memory")
        .and_then(|i| bytes(&i, sink, MIN_PLUGIN_MEMORY, MAX_PLUGIN_MEMORY))
        .unwrap_or(DEFAULT_PLUGIN_MEMORY);
    let on_error = t
        .take("on_error")
        .and_then(|i| {
            i.keyword(
                sink,
                "on_error policy",
                &[("fallback", OnError::Fallback), ("deny", OnError::Deny)],
            )
        })
        .unwrap_or_default();
    let recycle_after = t
        .take_int_in(sink, "recycle_after", 1, None)
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(DEFAULT_RECYCLE_AFTER);
    let recycle_memory_item = t.take("recycle_memory");
    let recycle_memory = recycle_memory_item
        .as_ref()
        .and_then(|i| bytes(i, sink, 0, MAX_PLUGIN_MEMORY))
        .unwrap_or(DEFAULT_RECYCLE_MEMORY);
    if let Some(i) = &recycle_memory_item
        && recycle_memory >= memory
    {
        sink.warning(i.start(), &i.path, "recycle_memory is not below memory")
            .help("an instance never grows past memory, so it is never recycled for its size; set it below memory");
    }
    let p = RawPlugin {
        name: name.to_owned(),
        at: t.start(),
        path: t.path().to_owned(),
        file,
        config,
        timeout,
        memory,
        on_error,
        recycle_after,
        recycle_memory,
    };
    t.finish(sink);
    Some(p)
}

/// `config = { key = "value", ... }`: strings only (numbers and booleans are accepted and
/// handed over as their text), sorted by key.
fn values(item: &Item<'_, '_>, sink: &mut Sink<'_>) -> Vec<(String, String)> {
    let Some(mut t) = item.table(sink) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, value) in t.take_all() {
        let text = match value.value.get_ref() {
            DeValue::String(s) => s.to_string(),
            DeValue::Integer(_) => value.int(sink).map(|n| n.to_string()).unwrap_or_default(),
            DeValue::Boolean(b) => b.to_string(),
            DeValue::Float(f) => f.to_string(),
            _ => {
                value.type_error(sink, "a string");
                continue;
            }
        };
        if key.len() > MAX_CONFIG_TEXT || text.len() > MAX_CONFIG_TEXT {
            sink.error(value.start(), &value.path, "config value is too long")
                .help(format!(
                    "keys and values are at most {MAX_CONFIG_TEXT} bytes"
                ));
            continue;
        }
        out.push((key.to_owned(), text));
    }
    t.finish(sink);
    out.sort();
    out
}

/// A byte size (`33554432`, `"32m"`) in `min..=max`.
fn bytes(item: &Item<'_, '_>, sink: &mut Sink<'_>, min: usize, max: usize) -> Option<usize> {
    let n = match item.value.get_ref() {
        DeValue::Integer(_) => usize::try_from(item.int(sink)?).ok(),
        DeValue::String(_) => {
            let s = item.str(sink)?;
            match size::parse(s.value) {
                Ok(n) => Some(n),
                Err(e) => {
                    sink.error(s.start, &item.path, e.to_string())
                        .help(e.help());
                    return None;
                }
            }
        }
        _ => {
            item.type_error(sink, "an integer or a size string like \"32m\"");
            return None;
        }
    };
    match n {
        Some(n) if (min..=max).contains(&n) => Some(n),
        _ => {
            sink.error(item.start(), &item.path, "size is out of range")
                .help(format!(
                    "expected {}k..={}m",
                    min / 1024,
                    max / (1024 * 1024)
                ));
            None
        }
    }
}
