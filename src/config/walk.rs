//! A typed walk over the spanned TOML tree.
//!
//! [`Table`] hands out the keys a section knows (`take_*`), turning a wrong type into a
//! diagnostic instead of an abort; [`Table::finish`] then reports every key nobody took as
//! unknown, with a suggestion. The set of valid keys is exactly the set of keys the walking code
//! asked for, so the list in a help line can never drift from what is accepted.

use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::config::diag::{Diagnostic, Sink, did_you_mean, quoted_list};
use crate::config::duration;

pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

/// A value and the key path it was found at.
#[derive(Debug, Clone)]
pub(crate) struct Item<'a, 'i> {
    pub(crate) path: String,
    pub(crate) value: &'a Value<'i>,
    /// Where the key was written (the value's own start for array elements).
    pub(crate) key_at: usize,
}

/// A string value and where its characters are in the source.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Str<'a> {
    pub(crate) value: &'a str,
    /// Offset of the value (its opening quote).
    pub(crate) start: usize,
    /// Offset of the first character inside the quotes, when the source text between the
    /// quotes is exactly the value (no escapes, single line), so offsets inside it map 1:1.
    content: Option<usize>,
}

impl Str<'_> {
    /// The source offset of byte `offset` of the value; the value's start when the mapping is
    /// not exact (escapes, multi-line strings).
    pub(crate) fn at(&self, offset: usize) -> usize {
        match self.content {
            Some(c) if offset <= self.value.len() => c + offset,
            _ => self.start,
        }
    }
}

fn article(type_str: &str) -> &'static str {
    match type_str {
        "string" => "a string",
        "integer" => "an integer",
        "float" => "a float",
        "boolean" => "a boolean",
        "datetime" => "a datetime",
        "array" => "an array",
        _ => "a table",
    }
}

/// `a.b`, quoting `b` when it is not a bare TOML key.
pub(crate) fn join(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_owned()
    } else {
        // As written: only quotes, backslashes and control characters are escaped.
        format!("\"{}\"", key.escape_debug())
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

impl<'a, 'i> Item<'a, 'i> {
    pub(crate) fn start(&self) -> usize {
        self.value.span().start
    }

    pub(crate) fn type_error<'s>(
        &self,
        sink: &'s mut Sink<'_>,
        expected: &str,
    ) -> &'s mut Diagnostic {
        let found = article(self.value.get_ref().type_str());
        sink.error(
            self.start(),
            &self.path,
            format!("expected {expected}, found {found}"),
        )
    }

    pub(crate) fn str(&self, sink: &mut Sink<'_>) -> Option<Str<'a>> {
        let DeValue::String(s) = self.value.get_ref() else {
            self.type_error(sink, "a string");
            return None;
        };
        let value: &'a str = s;
        let span = self.value.span();
        let raw = sink.src().get(span.clone()).unwrap_or("");
        let exact = raw.len() == value.len() + 2
            && (raw.starts_with('"') || raw.starts_with('\''))
            && raw.get(1..raw.len() - 1) == Some(value);
        Some(Str {
            value,
            start: span.start,
            content: exact.then_some(span.start + 1),
        })
    }

    pub(crate) fn bool(&self, sink: &mut Sink<'_>) -> Option<bool> {
        match self.value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            DeValue::String(s) if s == "true" || s == "false" => {
                self.type_error(sink, "a boolean")
                    .help(format!("write {s} without quotes"));
                None
            }
            _ => {
                self.type_error(sink, "a boolean");
                None
            }
        }
    }

    pub(crate) fn int(&self, sink: &mut Sink<'_>) -> Option<i64> {
        match self.value.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(n),
                Err(_) => {
                    sink.error(self.start(), &self.path, "integer out of range");
                    None
                }
            },
            DeValue::String(s) if s.parse::<i64>().is_ok() => {
                self.type_error(sink, "an integer")
                    .help(format!("write {s} without quotes"));
                None
            }
            _ => {
                self.type_error(sink, "an integer");
                None
            }
        }
    }

    /// An integer in `min..=max` (`max` None: no upper bound), named `what` in messages.
    pub(crate) fn int_in(
        &self,
        sink: &mut Sink<'_>,
        what: &str,
        min: i64,
        max: Option<i64>,
    ) -> Option<i64> {
        let n = self.int(sink)?;
        if n >= min && max.is_none_or(|max| n <= max) {
            return Some(n);
        }
        let help = match max {
            Some(max) => format!("expected {min}..={max}"),
            None => format!("expected at least {min}"),
        };
        sink.error(
            self.start(),
            &self.path,
            format!("{what} {n} is out of range"),
        )
        .help(help);
        None
    }

    pub(crate) fn duration(&self, sink: &mut Sink<'_>) -> Option<Duration> {
        if let DeValue::Integer(i) = self.value.get_ref() {
            self.type_error(sink, "a duration string")
                .help(format!("durations need a unit, e.g. \"{}s\"", i.as_str()));
            return None;
        }
        let s = self.str(sink)?;
        match duration::parse(s.value) {
            Ok(d) => Some(d),
            Err(e) => {
                sink.error(s.start, &self.path, e.to_string())
                    .help(e.help());
                None
            }
        }
    }

    /// A duration that must not be zero (timeouts, check intervals).
    pub(crate) fn duration_nonzero(&self, sink: &mut Sink<'_>) -> Option<Duration> {
        let d = self.duration(sink)?;
        if d.is_zero() {
            sink.error(
                self.start(),
                &self.path,
                "duration must be greater than zero",
            );
            return None;
        }
        Some(d)
    }

    pub(crate) fn table(&self, sink: &mut Sink<'_>) -> Option<Table<'a, 'i>> {
        match self.value.get_ref() {
            DeValue::Table(t) => Some(Table::new(self.path.clone(), self.start(), t)),
            _ => {
                self.type_error(sink, "a table");
                None
            }
        }
    }

    /// The elements of an array, each with its `[i]` path.
    pub(crate) fn array(&self, sink: &mut Sink<'_>) -> Option<Vec<Item<'a, 'i>>> {
        match self.value.get_ref() {
            DeValue::Array(a) => Some(self.elements(a)),
            _ => {
                self.type_error(sink, "an array");
                None
            }
        }
    }

    /// A string or an array of strings (`bind = ":80"` or `bind = [":80", ":81"]`), as items;
    /// element types are checked by the caller.
    pub(crate) fn one_or_many(&self, sink: &mut Sink<'_>) -> Option<Vec<Item<'a, 'i>>> {
        match self.value.get_ref() {
            DeValue::String(_) => Some(vec![self.clone()]),
            DeValue::Array(a) => Some(self.elements(a)),
            _ => {
                self.type_error(sink, "a string or an array of strings");
                None
            }
        }
    }

    pub(crate) fn elements(&self, array: &'a [Value<'i>]) -> Vec<Item<'a, 'i>> {
        array
            .iter()
            .enumerate()
            .map(|(i, value)| Item {
                path: format!("{}[{i}]", self.path),
                value,
                key_at: value.span().start,
            })
            .collect()
    }

    /// One of a fixed set of words (`mode = "http"`), named `what` in messages.
    pub(crate) fn keyword<T: Clone>(
        &self,
        sink: &mut Sink<'_>,
        what: &str,
        words: &[(&str, T)],
    ) -> Option<T> {
        let s = self.str(sink)?;
        if let Some((_, v)) = words.iter().find(|(w, _)| *w == s.value) {
            return Some(v.clone());
        }
        let names: Vec<&str> = words.iter().map(|(w, _)| *w).collect();
        let help = match did_you_mean(s.value, &names) {
            Some(m) => format!("did you mean \"{m}\"?"),
            None => format!("expected {}", or_list(&names)),
        };
        sink.error(
            s.start,
            &self.path,
            format!("unknown {what} \"{}\"", s.value),
        )
        .help(help);
        None
    }
}

/// `a`, `a or b`, `a, b or c`.
pub(crate) fn or_list(words: &[&str]) -> String {
    match words {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

#[derive(Debug)]
struct Entry<'a, 'i> {
    key: &'a str,
    key_at: usize,
    value: &'a Value<'i>,
    taken: bool,
}

/// A TOML table being walked: keys are taken one by one, then [`Table::finish`] reports the rest.
#[derive(Debug)]
pub(crate) struct Table<'a, 'i> {
    path: String,
    start: usize,
    /// In source order.
    entries: Vec<Entry<'a, 'i>>,
    /// Every key the walking code asked for: the valid keys.
    known: Vec<&'static str>,
}

impl<'a, 'i> Table<'a, 'i> {
    pub(crate) fn new(path: String, start: usize, table: &'a DeTable<'i>) -> Self {
        let mut entries: Vec<Entry<'a, 'i>> = table
            .iter()
            .map(|(k, value)| Entry {
                key: k.get_ref(),
                key_at: k.span().start,
                value,
                taken: false,
            })
            .collect();
        entries.sort_by_key(|e| e.key_at);
        Self {
            path,
            start,
            entries,
            known: Vec::new(),
        }
    }

    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    /// Offset of the table itself (its header or opening brace).
    pub(crate) fn start(&self) -> usize {
        self.start
    }

    /// Takes `key` (and declares it valid for this table).
    pub(crate) fn take(&mut self, key: &'static str) -> Option<Item<'a, 'i>> {
        if !self.known.contains(&key) {
            self.known.push(key);
        }
        let path = join(&self.path, key);
        let entry = self.entries.iter_mut().find(|e| e.key == key)?;
        entry.taken = true;
        Some(Item {
            path,
            value: entry.value,
            key_at: entry.key_at,
        })
    }

    /// `key`'s item without taking it (for checks that run beside the walk).
    pub(crate) fn peek(&self, key: &str) -> Option<Item<'a, 'i>> {
        let entry = self.entries.iter().find(|e| e.key == key)?;
        Some(Item {
            path: join(&self.path, key),
            value: entry.value,
            key_at: entry.key_at,
        })
    }

    /// Takes `key`, reporting it missing at the table when absent.
    pub(crate) fn require(
        &mut self,
        sink: &mut Sink<'_>,
        key: &'static str,
    ) -> Option<Item<'a, 'i>> {
        let item = self.take(key);
        if item.is_none() {
            sink.error(
                self.start,
                &self.path,
                format!("missing required key \"{key}\""),
            );
        }
        item
    }

    pub(crate) fn take_bool(&mut self, sink: &mut Sink<'_>, key: &'static str) -> Option<bool> {
        self.take(key)?.bool(sink)
    }

    pub(crate) fn take_duration(
        &mut self,
        sink: &mut Sink<'_>,
        key: &'static str,
    ) -> Option<Duration> {
        self.take(key)?.duration(sink)
    }

    pub(crate) fn take_int_in(
        &mut self,
        sink: &mut Sink<'_>,
        key: &'static str,
        min: i64,
        max: Option<i64>,
    ) -> Option<i64> {
        self.take(key)?.int_in(sink, key, min, max)
    }

    /// Takes every entry (for tables of named things: `[frontend.*]`, `acl`), in source order.
    pub(crate) fn take_all(&mut self) -> Vec<(&'a str, Item<'a, 'i>)> {
        let path = &self.path;
        self.entries
            .iter_mut()
            .map(|e| {
                e.taken = true;
                (
                    e.key,
                    Item {
                        path: join(path, e.key),
                        value: e.value,
                        key_at: e.key_at,
                    },
                )
            })
            .collect()
    }

    /// Reports every key that was not taken.
    pub(crate) fn finish(self, sink: &mut Sink<'_>) {
        for e in self.entries.iter().filter(|e| !e.taken) {
            let help = match did_you_mean(e.key, &self.known) {
                Some(m) => format!("did you mean \"{m}\"?"),
                None if self.known.is_empty() => "this table takes no keys".to_owned(),
                None => format!("valid keys are {}", quoted_list(&self.known)),
            };
            sink.error(e.key_at, &self.path, format!("unknown key \"{}\"", e.key))
                .help(help);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use toml::de::DeTable;

    use super::{Table, join, or_list};
    use crate::config::diag::{Diagnostic, Sink};

    /// Runs `f` over the root table of `src` and returns the rendered diagnostics.
    fn walk(src: &str, f: impl FnOnce(&mut Table<'_, '_>, &mut Sink<'_>)) -> Vec<String> {
        let (root, errors) = DeTable::parse_recoverable(src);
        assert!(errors.is_empty(), "{errors:?}");
        let mut sink = Sink::new(src);
        let mut table = Table::new(String::new(), 0, root.get_ref());
        f(&mut table, &mut sink);
        table.finish(&mut sink);
        sink.into_diagnostics().iter().map(show).collect()
    }

    fn show(d: &Diagnostic) -> String {
        let help = d
            .help
            .as_deref()
            .map(|h| format!(" [{h}]"))
            .unwrap_or_default();
        format!("{}:{} {}: {}{help}", d.line, d.col, d.path, d.message)
    }

    #[test]
    fn takes_typed_values() {
        let src = "s = 'x'\nb = true\ni = 0x10\nd = \"1m30s\"\n[t]\nk = 1\n";
        let out = walk(src, |t, sink| {
            assert_eq!(
                t.take("s").and_then(|i| i.str(sink)).map(|s| s.value),
                Some("x")
            );
            assert_eq!(t.take_bool(sink, "b"), Some(true));
            assert_eq!(t.take_int_in(sink, "i", 0, Some(16)), Some(16));
            assert_eq!(t.take_duration(sink, "d"), Some(Duration::from_secs(90)));
            let mut inner = t.take("t").and_then(|i| i.table(sink)).unwrap();
            assert_eq!(inner.path(), "t");
            assert_eq!(inner.take_int_in(sink, "k", 0, None), Some(1));
            inner.finish(sink);
            assert!(t.take("absent").is_none());
        });
        assert_eq!(out, Vec::<String>::new());
    }

    #[test]
    fn reports_type_errors_with_hints() {
        let src = "s = 1\nb = \"true\"\ni = \"3\"\nd = 10\ne = \"10\"\n";
        let out = walk(src, |t, sink| {
            assert!(t.take("s").and_then(|i| i.str(sink)).is_none());
            assert!(t.take_bool(sink, "b").is_none());
            assert!(t.take_int_in(sink, "i", 0, None).is_none());
            assert!(t.take_duration(sink, "d").is_none());
            assert!(t.take_duration(sink, "e").is_none());
        });
        assert_eq!(
            out,
            [
                "1:5 s: expected a string, found an integer",
                "2:5 b: expected a boolean, found a string [write true without quotes]",
                "3:5 i: expected an integer, found a string [write 3 without quotes]",
                "4:5 d: expected a duration string, found an integer [durations need a unit, e.g. \"10s\"]",
                "5:5 e: missing unit in duration \"10\" [add a unit, e.g. \"10s\" or \"10ms\"]",
            ]
        );
    }

    #[test]
    fn unknown_keys_get_suggestions() {
        let src = "[backend.api]\nbalanse = 'x'\nmode = 'http'\ncolour = 1\n";
        let out = walk(src, |t, sink| {
            let mut backends = t.take("backend").and_then(|i| i.table(sink)).unwrap();
            for (_, item) in backends.take_all() {
                let mut b = item.table(sink).unwrap();
                b.take("mode");
                b.take("balance");
                b.finish(sink);
            }
        });
        assert_eq!(
            out,
            [
                "2:1 backend.api: unknown key \"balanse\" [did you mean \"balance\"?]",
                "4:1 backend.api: unknown key \"colour\" [valid keys are \"mode\", \"balance\"]",
            ]
        );
    }

    #[test]
    fn missing_and_out_of_range() {
        let src = "[s]\nweight = 300\n";
        let out = walk(src, |t, sink| {
            let mut s = t.take("s").and_then(|i| i.table(sink)).unwrap();
            assert!(s.require(sink, "addr").is_none());
            assert!(s.take_int_in(sink, "weight", 0, Some(256)).is_none());
            s.finish(sink);
        });
        assert_eq!(
            out,
            [
                "1:1 s: missing required key \"addr\"",
                "2:10 s.weight: weight 300 is out of range [expected 0..=256]",
            ]
        );
    }

    #[test]
    fn arrays_and_one_or_many() {
        let src = "a = ['x', 2]\nb = 'y'\nc = 3\n";
        let out = walk(src, |t, sink| {
            let a = t.take("a").and_then(|i| i.one_or_many(sink)).unwrap();
            assert_eq!(a.len(), 2);
            assert_eq!(a[1].path, "a[1]");
            assert!(a[1].str(sink).is_none());
            let b = t.take("b").and_then(|i| i.one_or_many(sink)).unwrap();
            assert_eq!(b[0].path, "b");
            assert!(t.take("c").and_then(|i| i.one_or_many(sink)).is_none());
        });
        assert_eq!(
            out,
            [
                "1:11 a[1]: expected a string, found an integer",
                "3:5 c: expected a string or an array of strings, found an integer",
            ]
        );
    }

    #[test]
    fn string_offsets_map_into_the_source() {
        let src = "a = \"é x\"\nb = 'lit'\nc = \"esc\\tx\"\n";
        walk(src, |t, sink| {
            let a = t.take("a").and_then(|i| i.str(sink)).unwrap();
            assert_eq!(a.at(0), 5);
            assert_eq!(a.at(3), 8); // after the 2-byte é and the space
            let b = t.take("b").and_then(|i| i.str(sink)).unwrap();
            assert_eq!(b.at(1), src.find("lit").unwrap() + 1);
            let c = t.take("c").and_then(|i| i.str(sink)).unwrap();
            assert_eq!(c.at(3), c.start); // escapes: no exact mapping
        });
    }

    #[test]
    fn keywords() {
        let src = "m = 'htp'\nn = 'zzz'\n";
        let out = walk(src, |t, sink| {
            let words = [("http", 1), ("tcp", 2)];
            assert!(
                t.take("m")
                    .and_then(|i| i.keyword(sink, "mode", &words))
                    .is_none()
            );
            assert!(
                t.take("n")
                    .and_then(|i| i.keyword(sink, "mode", &words))
                    .is_none()
            );
        });
        assert_eq!(
            out,
            [
                "1:5 m: unknown mode \"htp\" [did you mean \"http\"?]",
                "2:5 n: unknown mode \"zzz\" [expected http or tcp]",
            ]
        );
    }

    #[test]
    fn paths_quote_non_bare_keys() {
        assert_eq!(join("", "frontend"), "frontend");
        assert_eq!(join("frontend", "my web"), "frontend.\"my web\"");
        assert_eq!(join("backend", "api-1_x"), "backend.api-1_x");
        assert_eq!(join("acl", "é"), "acl.\"é\"");
        assert_eq!(join("acl", "a\"b\n"), "acl.\"a\\\"b\\n\"");
        assert_eq!(or_list(&["a", "b", "c"]), "a, b or c");
    }
}
