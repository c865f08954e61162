//! Configuration: TOML text -> spanned tree -> validated [`Config`] + diagnostics.
//!
//! Owns the file format (the contract in DESIGN.md), every diagnostic `wasp check` prints, and
//! the domain types the rest of the crate is built from (`model`).
//!
//! The text is parsed with `toml`'s recoverable parser into a spanned tree and walked by hand
//! (`walk`) rather than deserialized with serde derive, because serde stops at the first error
//! while `wasp check` must report every problem in one run, each at its `line:col`.
//!
//! Pipeline: syntax (`toml`) -> per-section checks (`sections`, `frontend`, `backend`, on the
//! typed walker `walk` and shared `values`) -> cross-section checks and
//! `[defaults]` applied (`validate`). A file that is not valid TOML gets its syntax errors only
//! (all of them): the tree recovered from broken TOML is not trustworthy enough to validate.

pub mod acl;
mod addr;
mod backend;
mod diag;
mod duration;
mod frontend;
pub mod model;
mod sections;
mod size;
mod validate;
mod values;
mod walk;

use std::path::Path;

use toml::de::DeTable;

pub use addr::parse_bind;
pub use diag::{Diagnostic, Report, Severity};
pub use duration::parse_duration;
pub use model::*;

use diag::Sink;
use walk::Table;

/// Reads and validates a config file. The [`Config`] is `Some` only when the report has no
/// errors (warnings are allowed). An unreadable file is one error at 1:1.
///
/// Server host names are resolved here (blocking); call it from `spawn_blocking` in async code.
pub fn load(path: &Path) -> (Option<Config>, Report) {
    match std::fs::read_to_string(path) {
        Ok(src) => load_str(&src, path),
        Err(e) => {
            let diagnostic = Diagnostic {
                severity: Severity::Error,
                line: 1,
                col: 1,
                path: String::new(),
                message: format!(
                    "cannot read config file: {}",
                    lowercase_first(&e.to_string())
                ),
                help: None,
            };
            (
                None,
                Report {
                    file: path.to_owned(),
                    diagnostics: vec![diagnostic],
                },
            )
        }
    }
}

/// Validates config text; `path` is only used in the report and [`Config::path`].
pub fn load_str(src: &str, path: &Path) -> (Option<Config>, Report) {
    let mut sink = Sink::new(src);
    let (root, syntax_errors) = DeTable::parse_recoverable(src);
    let config = if syntax_errors.is_empty() {
        let raw = sections::walk(Table::new(String::new(), 0, root.get_ref()), &mut sink);
        validate::build(raw, path, &mut sink)
    } else {
        for e in &syntax_errors {
            syntax_error(&mut sink, src, e);
        }
        None
    };
    (
        config,
        Report {
            file: path.to_owned(),
            diagnostics: sink.into_diagnostics(),
        },
    )
}

fn syntax_error(sink: &mut Sink<'_>, src: &str, e: &toml::de::Error) {
    let span = e.span().unwrap_or(0..0);
    let mut message = lowercase_first(e.message().trim());
    // toml does not name the key; its span does.
    if message == "duplicate key"
        && let Some(key) = src.get(span.clone()).filter(|k| !k.is_empty())
    {
        message = if key.starts_with(['"', '\'']) {
            format!("duplicate key {key}")
        } else {
            format!("duplicate key \"{key}\"")
        };
    }
    sink.error(span.start, "", message);
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
