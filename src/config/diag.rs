//! Diagnostics: what `wasp check` prints, and the mapping from byte offsets in the TOML text to
//! the 1-based `line:col` positions it prints them at.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters (not bytes).
    pub col: usize,
    /// Dotted key path such as `backend.api.servers[1].addr`; empty for TOML syntax errors.
    pub path: String,
    /// Lowercase, says what is wrong.
    pub message: String,
    /// What to do about it, when there is something useful to say.
    pub help: Option<String>,
}

impl Diagnostic {
    /// This diagnostic as `wasp check` prints it: `FILE:LINE:COL: error: KEY.PATH: message`,
    /// then `    = help: ...` when there is help; newline-terminated.
    pub fn render(&self, file: &Path) -> String {
        let mut out = format!(
            "{}:{}:{}: {}: ",
            file.display(),
            self.line,
            self.col,
            self.severity.as_str()
        );
        if !self.path.is_empty() {
            let _ = write!(out, "{}: ", self.path);
        }
        let _ = writeln!(out, "{}", self.message);
        if let Some(help) = &self.help {
            let _ = writeln!(out, "    = help: {help}");
        }
        out
    }

    /// Attaches a help line.
    pub(crate) fn help(&mut self, help: impl Into<String>) -> &mut Self {
        self.help = Some(help.into());
        self
    }
}

/// Everything `wasp check` found in one file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub file: PathBuf,
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }

    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }

    pub fn has_errors(&self) -> bool {
        self.errors() > 0
    }

    fn count(&self, severity: Severity) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == severity)
            .count()
    }

    /// Compiler-style text: one `FILE:LINE:COL: error: KEY.PATH: message` line per diagnostic
    /// (the `KEY.PATH: ` part is left out when there is no path, as for TOML syntax errors),
    /// followed by `    = help: ...` when the diagnostic has help, then a summary line:
    /// `check: ok`, or the non-zero counts, e.g. `check: 2 errors, 1 warning`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for d in &self.diagnostics {
            out.push_str(&d.render(&self.file));
        }
        let counts: Vec<String> = [(self.errors(), "error"), (self.warnings(), "warning")]
            .into_iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, word)| format!("{n} {word}{}", if n == 1 { "" } else { "s" }))
            .collect();
        if counts.is_empty() {
            out.push_str("check: ok\n");
        } else {
            let _ = writeln!(out, "check: {}", counts.join(", "));
        }
        out
    }
}

/// Maps byte offsets in a source text to 1-based line and character column.
#[derive(Debug)]
pub(crate) struct LineIndex {
    /// Byte offset at which each line starts.
    starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(src: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { starts }
    }

    /// The 1-based `(line, col)` of `offset` in `src` (the text this index was built from).
    /// An offset past the end maps to the end; one inside a multi-byte character maps to that
    /// character.
    pub(crate) fn line_col(&self, src: &str, offset: usize) -> (usize, usize) {
        let offset = offset.min(src.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        // A byte-order mark before the first line is not a column an editor shows.
        let start = if line == 1 && src.starts_with('\u{feff}') {
            '\u{feff}'.len_utf8().min(offset)
        } else {
            start
        };
        let col = src[start..]
            .char_indices()
            .take_while(|(i, c)| start + i + c.len_utf8() <= offset)
            .count();
        (line, col + 1)
    }
}

/// Collects diagnostics while a source text is walked.
#[derive(Debug)]
pub(crate) struct Sink<'s> {
    src: &'s str,
    lines: LineIndex,
    diagnostics: Vec<Diagnostic>,
    /// The config file's directory: relative file names in the config are relative to it.
    base_dir: PathBuf,
}

impl<'s> Sink<'s> {
    pub(crate) fn new(src: &'s str) -> Self {
        Self {
            src,
            lines: LineIndex::new(src),
            diagnostics: Vec::new(),
            base_dir: PathBuf::new(),
        }
    }

    /// Relative file names are resolved against `dir` (the config file's directory).
    pub(crate) fn with_base_dir(mut self, dir: &Path) -> Self {
        dir.clone_into(&mut self.base_dir);
        self
    }

    /// A file name written in the config, resolved against the config file's directory.
    pub(crate) fn resolve(&self, name: &str) -> PathBuf {
        self.base_dir.join(name)
    }

    pub(crate) fn src(&self) -> &'s str {
        self.src
    }

    /// The 1-based `(line, col)` of byte offset `at`.
    pub(crate) fn position(&self, at: usize) -> (usize, usize) {
        self.lines.line_col(self.src, at)
    }

    /// Records an error at byte offset `at`.
    pub(crate) fn error(
        &mut self,
        at: usize,
        path: &str,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        self.push(Severity::Error, at, path, message.into())
    }

    /// Records a warning at byte offset `at`.
    pub(crate) fn warning(
        &mut self,
        at: usize,
        path: &str,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        self.push(Severity::Warning, at, path, message.into())
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    fn push(
        &mut self,
        severity: Severity,
        at: usize,
        path: &str,
        message: String,
    ) -> &mut Diagnostic {
        let (line, col) = self.lines.line_col(self.src, at);
        let index = self.diagnostics.len();
        self.diagnostics.push(Diagnostic {
            severity,
            line,
            col,
            path: path.to_owned(),
            message,
            help: None,
        });
        &mut self.diagnostics[index]
    }

    /// The diagnostics in source order (stable for equal positions).
    pub(crate) fn into_diagnostics(self) -> Vec<Diagnostic> {
        let mut diagnostics = self.diagnostics;
        diagnostics.sort_by_key(|d| (d.line, d.col));
        diagnostics
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a likely typo.
pub(crate) fn did_you_mean<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let limit = match word.chars().count() {
        0..=3 => 1,
        4..=6 => 2,
        _ => 3,
    };
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over characters, ASCII case-insensitive.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// `"a", "b", "c"` for help lines.
pub(crate) fn quoted_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::{LineIndex, Report, Severity, Sink, did_you_mean, edit_distance};

    #[test]
    fn line_col_is_one_based() {
        let src = "ab\ncd\n";
        let idx = LineIndex::new(src);
        assert_eq!(idx.line_col(src, 0), (1, 1));
        assert_eq!(idx.line_col(src, 1), (1, 2));
        assert_eq!(idx.line_col(src, 2), (1, 3)); // the newline itself
        assert_eq!(idx.line_col(src, 3), (2, 1));
        assert_eq!(idx.line_col(src, 6), (3, 1)); // end of input after a final newline
        assert_eq!(idx.line_col(src, 99), (3, 1));
    }

    #[test]
    fn a_byte_order_mark_is_not_a_column() {
        let src = "\u{feff}foo = 1\nbar = 2";
        let idx = LineIndex::new(src);
        assert_eq!(idx.line_col(src, src.find("foo").unwrap()), (1, 1));
        assert_eq!(idx.line_col(src, src.find('1').unwrap()), (1, 7));
        assert_eq!(idx.line_col(src, src.find("bar").unwrap()), (2, 1));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        // "é" is 2 bytes, "日" 3 bytes, "🦀" 4 bytes.
        let src = "x = \"é日🦀\" # z\ny";
        let idx = LineIndex::new(src);
        let z = src.find('z').unwrap();
        assert_eq!(idx.line_col(src, z), (1, 13));
        let y = src.find('y').unwrap();
        assert_eq!(idx.line_col(src, y), (2, 1));
        // An offset inside a multi-byte character points at that character.
        let crab = src.find('🦀').unwrap();
        assert_eq!(idx.line_col(src, crab + 2), (1, 8));
    }

    #[test]
    fn crlf_lines() {
        let src = "a\r\nb";
        let idx = LineIndex::new(src);
        assert_eq!(idx.line_col(src, 3), (2, 1));
    }

    #[test]
    fn render_with_and_without_path_and_help() {
        let src = "one\ntwo\n";
        let mut sink = Sink::new(src);
        sink.warning(4, "backend.b", "backend \"b\" is not used");
        sink.error(1, "global.workers", "workers must be at least 1")
            .help("try 1");
        sink.error(0, "", "syntax error");
        let report = Report {
            file: "w.toml".into(),
            diagnostics: sink.into_diagnostics(),
        };
        assert_eq!(report.errors(), 2);
        assert_eq!(report.warnings(), 1);
        assert!(report.has_errors());
        assert_eq!(report.diagnostics[0].severity, Severity::Error);
        assert_eq!(
            report.render(),
            "w.toml:1:1: error: syntax error\n\
             w.toml:1:2: error: global.workers: workers must be at least 1\n    = help: try 1\n\
             w.toml:2:1: warning: backend.b: backend \"b\" is not used\n\
             check: 2 errors, 1 warning\n"
        );
    }

    #[test]
    fn render_summary_plurals() {
        let mut report = Report::default();
        assert_eq!(report.render(), "check: ok\n");
        let mut sink = Sink::new("x");
        sink.warning(0, "a", "w");
        report.diagnostics = sink.into_diagnostics();
        assert!(report.render().ends_with("check: 1 warning\n"));
        assert!(!report.has_errors());
        let mut sink = Sink::new("x");
        sink.error(0, "a", "e");
        report.diagnostics = sink.into_diagnostics();
        assert!(report.render().ends_with("check: 1 error\n"));
    }

    #[test]
    fn suggestions() {
        assert_eq!(edit_distance("balanse", "balance"), 1);
        assert_eq!(edit_distance("round_robn", "roundrobin"), 2);
        assert_eq!(
            did_you_mean("balanse", &["mode", "balance", "servers"]),
            Some("balance")
        );
        assert_eq!(
            did_you_mean("Servers", &["mode", "servers"]),
            Some("servers")
        );
        assert_eq!(did_you_mean("colour", &["mode", "balance"]), None);
        assert_eq!(did_you_mean("x", &["timeout"]), None);
    }
}
