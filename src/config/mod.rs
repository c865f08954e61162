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
mod admin;
mod backend;
mod diag;
mod duration;
mod frontend;
pub mod model;
mod modes;
mod plugin;
mod sections;
mod size;
mod tls;
mod validate;
mod values;
mod walk;

use std::path::Path;

use toml::de::DeTable;

pub use addr::parse_bind;
pub use admin::{ServerSpec, runtime_server};
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
    let (config, report) = load_for_check(path);
    (config.ok(), report)
}

/// [`load`] for `wasp check`: with errors, the `[plugin.*]` sections that could be read, so
/// that their files are checked too.
pub fn load_for_check(path: &Path) -> (Result<Config, Vec<Plugin>>, Report) {
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(src) => parts_of_str(&src, path),
            Err(e) => {
                // Each bad byte is reported where it is, and the rest of the file is checked
                // with it replaced (U+FFFD), so that one run still reports every problem.
                let (src, invalid) = lossy(e.as_bytes());
                parts_of_text(&src, path, &invalid)
            }
        },
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
                Err(Vec::new()),
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
    let (config, report) = parts_of_str(src, path);
    (config.ok(), report)
}

/// `bytes` as text, each invalid UTF-8 sequence replaced by U+FFFD; and for each, its offset
/// in that text and its bytes.
fn lossy(bytes: &[u8]) -> (String, Vec<(usize, Vec<u8>)>) {
    let mut text = String::with_capacity(bytes.len());
    let mut invalid = Vec::new();
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        if !chunk.invalid().is_empty() {
            invalid.push((text.len(), chunk.invalid().to_vec()));
            text.push(char::REPLACEMENT_CHARACTER);
        }
    }
    (text, invalid)
}

fn parts_of_str(src: &str, path: &Path) -> (Result<Config, Vec<Plugin>>, Report) {
    parts_of_text(src, path, &[])
}

/// [`parts_of_str`] for text read with `invalid` UTF-8 sequences (offset, bytes), each an
/// error at its place.
fn parts_of_text(
    src: &str,
    path: &Path,
    invalid: &[(usize, Vec<u8>)],
) -> (Result<Config, Vec<Plugin>>, Report) {
    let mut sink = Sink::new(src).with_base_dir(path.parent().unwrap_or(Path::new("")));
    for (at, bytes) in invalid {
        let hex: Vec<String> = bytes.iter().map(|b| format!("0x{b:02X}")).collect();
        sink.error(
            *at,
            "",
            format!("not UTF-8 text: byte {} here", hex.join(" ")),
        )
        .help = Some("a config file is UTF-8 text; re-save it as UTF-8".into());
    }
    let (root, syntax_errors) = DeTable::parse_recoverable(src);
    let config = if syntax_errors.is_empty() {
        let raw = sections::walk(Table::new(String::new(), 0, root.get_ref()), &mut sink);
        validate::build(raw, path, &mut sink)
    } else {
        for e in &syntax_errors {
            syntax_error(&mut sink, src, e);
        }
        Err(Vec::new())
    };
    let config = match config {
        Ok(config) if !invalid.is_empty() => Err(config.plugins),
        other => other,
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

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::{Severity, load_str};

    /// Every diagnostic of `src` as `LINE:COL PATH: MESSAGE`.
    pub(crate) fn messages(src: &str) -> Vec<String> {
        let (_, report) = load_str(src, Path::new("t.toml"));
        report
            .diagnostics
            .iter()
            .map(|d| format!("{}:{} {}: {}", d.line, d.col, d.path, d.message))
            .collect()
    }

    #[test]
    fn max_header_size_has_a_ceiling() {
        let src = |size: &str| {
            format!(
                "[frontend.web]\nbind = \"127.0.0.1:8080\"\ndefault_backend = \"app\"\nmax_header_size = {size}\n[backend.app]\nservers = [{{ name = \"s\", addr = \"127.0.0.1:2\" }}]\n"
            )
        };
        assert_eq!(messages(&src("\"16m\"")), Vec::<String>::new());
        assert_eq!(
            messages(&src("\"99999999999m\"")),
            ["4:19 frontend.web.max_header_size: max_header_size 104857599998951424 is too large"]
        );
        assert_eq!(
            messages(&src("16777217")),
            ["4:19 frontend.web.max_header_size: max_header_size 16777217 is too large"]
        );
    }

    #[test]
    fn other_toml_spellings_are_equivalent() {
        // Dotted keys, sub-tables and arrays of tables instead of inline tables.
        let src = r#"
[frontend.web]
bind = "127.0.0.1:8080"
default_backend = "app"
timeout.client = "3s"

[frontend.web.acl]
is_api = ["path_beg /api", "path_beg /v2"]

[[frontend.web.use_backend]]
backend = "app"
unless = "is_api"

[[backend.app.servers]]
name = "s1"
addr = "127.0.0.1:9001"
weight = 0

[backend.app.check]
interval = "1m30s"
http = "HEAD /"
"#;
        let (config, report) = load_str(src, Path::new("t.toml"));
        assert_eq!(report.diagnostics, []);
        let config = config.expect("config");
        let web = &config.frontends[0];
        assert_eq!(web.timeouts.client, Duration::from_secs(3));
        assert_eq!(web.acls[0].name, "is_api");
        assert!(web.rules[0].negate);
        let app = &config.backends[0];
        assert_eq!(app.servers[0].weight, 0);
        assert_eq!(app.check.interval, Duration::from_secs(90));
        let http = app.check.http.as_ref().expect("an HTTP check");
        assert_eq!(
            (&http.method, http.path.as_str()),
            (&http::Method::HEAD, "/")
        );
        assert!(http.expects(200) && http.expects(399) && !http.expects(404));
    }

    #[test]
    fn columns_after_multibyte_text_and_crlf() {
        let src = "[global] # é日🦀\r\nworkers = 0 # ü\r\n\"clé\" = 1\r\n";
        assert_eq!(
            messages(src),
            [
                "2:11 global.workers: workers 0 is out of range",
                "3:1 global: unknown key \"clé\""
            ]
        );
        let src = "[frontend.web]\nbind = \"127.0.0.1:1\"\nacl = { a = \"é\" }\nuse_backend = [{ backend = \"b\", if = \"ü ñ\" }]\n[backend.b]\nservers = [{ name = \"s\", addr = \"127.0.0.1:2\" }]\n";
        let m = messages(src);
        assert!(
            m.contains(&"3:14 frontend.web.acl.a: unknown fetch \"é\"".to_owned()),
            "{m:?}"
        );
        // Columns count characters: "ñ" is at character 41 but byte 42 (after a 2-byte "ü").
        assert!(
            m.contains(&"4:39 frontend.web.use_backend[0].if: unknown acl \"ü\"".to_owned()),
            "{m:?}"
        );
        assert!(
            m.contains(&"4:41 frontend.web.use_backend[0].if: unknown acl \"ñ\"".to_owned()),
            "{m:?}"
        );
    }

    #[test]
    fn warnings_still_yield_a_config() {
        let src = "[frontend.web]\nbind = \"127.0.0.1:1\"\n";
        let (config, report) = load_str(src, Path::new("t.toml"));
        assert!(config.is_some());
        assert_eq!(report.warnings(), 1);
        assert_eq!(report.diagnostics[0].severity, Severity::Warning);
    }

    #[test]
    fn empty_file_is_a_valid_config_that_listens_nowhere() {
        let (config, report) = load_str("", Path::new("t.toml"));
        assert!(config.is_some_and(|c| c.frontends.is_empty()));
        assert_eq!(report.errors(), 0);
        assert_eq!(
            messages(""),
            ["1:1 : the configuration listens nowhere: no frontend and no [admin]"]
        );
    }
}
