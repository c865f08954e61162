//! ACL and condition syntax (HAProxy's `FETCH [-i] PATTERN...` and `if`/`unless` expressions):
//! parsed and validated at load time into [`AclSpec`] and [`Condition`].
//!
//! STAND-IN on the `cfg` branch: the real module is written on the `acl` branch and replaces
//! this file at merge. It only has the agreed signatures and just enough checking (fetch names,
//! missing patterns, `*_reg` regexes, condition tokens) for the config loader's tests.

/// A parsed ACL: a sample fetch, a match method, flags and patterns.
#[derive(Debug, Clone)]
pub struct AclSpec {
    /// Any of these matches (several `acl` strings for one name are OR-ed).
    alternatives: Vec<Alternative>,
}

#[derive(Debug, Clone)]
struct Alternative {
    #[allow(dead_code)] // only read by the real module
    fetch: String,
    #[allow(dead_code)]
    patterns: Vec<String>,
}

/// A parsed `if`/`unless` condition over ACL names: an OR of ANDs of (possibly negated) names.
#[derive(Debug, Clone)]
pub struct Condition {
    any: Vec<Vec<Term>>,
}

#[derive(Debug, Clone)]
struct Term {
    offset: usize,
    name: String,
    #[allow(dead_code)]
    negated: bool,
}

/// A syntax error in an ACL or condition; `offset` is a byte offset into the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclError {
    pub offset: usize,
    pub message: String,
    pub help: Option<String>,
}

const FETCHES: &[&str] = &[
    "path",
    "path_beg",
    "path_end",
    "path_reg",
    "path_sub",
    "hdr",
    "hdr_beg",
    "hdr_end",
    "hdr_reg",
    "host",
    "method",
    "src",
    "url_param",
];

/// Byte offset and text of each whitespace-separated token.
fn tokens(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((s, &text[s..i]));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, &text[s..]));
    }
    out
}

pub fn parse_acl(text: &str) -> Result<AclSpec, AclError> {
    let toks = tokens(text);
    let Some(&(fetch_at, fetch)) = toks.first() else {
        return Err(AclError {
            offset: 0,
            message: "empty acl".into(),
            help: Some("write FETCH PATTERN..., e.g. \"path_beg /api\"".into()),
        });
    };
    let name = fetch.split_once('(').map_or(fetch, |(n, _)| n);
    if !FETCHES.contains(&name) {
        return Err(AclError {
            offset: fetch_at,
            message: format!("unknown fetch \"{name}\""),
            help: Some(format!("expected one of {}", FETCHES.join(", "))),
        });
    }
    let patterns: Vec<(usize, &str)> = toks[1..]
        .iter()
        .copied()
        .filter(|(_, t)| *t != "-i")
        .collect();
    if patterns.is_empty() {
        return Err(AclError {
            offset: text.len(),
            message: format!("missing pattern after \"{fetch}\""),
            help: Some("write FETCH PATTERN..., e.g. \"path_beg /api\"".into()),
        });
    }
    if name.ends_with("_reg") {
        for &(at, p) in &patterns {
            if let Err(e) = regex::Regex::new(p) {
                let detail = e.to_string();
                let detail = detail
                    .lines()
                    .find_map(|l| l.strip_prefix("error: "))
                    .unwrap_or("syntax error")
                    .to_owned();
                return Err(AclError {
                    offset: at,
                    message: format!("invalid regex \"{p}\": {detail}"),
                    help: None,
                });
            }
        }
    }
    Ok(AclSpec {
        alternatives: vec![Alternative {
            fetch: fetch.to_owned(),
            patterns: patterns.iter().map(|(_, p)| (*p).to_owned()).collect(),
        }],
    })
}

impl AclSpec {
    /// Matches when either matches.
    pub fn or(mut self, other: AclSpec) -> AclSpec {
        self.alternatives.extend(other.alternatives);
        self
    }
}

pub fn parse_condition(text: &str) -> Result<Condition, AclError> {
    let mut any = vec![Vec::new()];
    let mut negate_next = false;
    for (at, tok) in tokens(text) {
        if tok == "or" || tok == "||" {
            if any.last().is_some_and(Vec::is_empty) || negate_next {
                return Err(AclError {
                    offset: at,
                    message: format!("unexpected \"{tok}\""),
                    help: None,
                });
            }
            any.push(Vec::new());
            continue;
        }
        let (at, name, negated) = match tok.strip_prefix('!') {
            Some("") => {
                negate_next = !negate_next;
                continue;
            }
            Some(rest) => (at + 1, rest, !negate_next),
            None => (at, tok, negate_next),
        };
        negate_next = false;
        if let Some(group) = any.last_mut() {
            group.push(Term {
                offset: at,
                name: name.to_owned(),
                negated,
            });
        }
    }
    if any.last().is_some_and(Vec::is_empty) {
        return Err(AclError {
            offset: text.len(),
            message: "missing acl name".into(),
            help: Some(
                "a condition names acls: \"is_api\", \"is_api !is_admin\", \"a or b\"".into(),
            ),
        });
    }
    Ok(Condition { any })
}

impl Condition {
    /// Every ACL name used, with its byte offset in the condition text.
    pub fn acl_names(&self) -> Vec<(usize, &str)> {
        self.any
            .iter()
            .flatten()
            .map(|t| (t.offset, t.name.as_str()))
            .collect()
    }

    /// The condition of a rule without `if`/`unless`.
    pub fn always() -> Condition {
        Condition {
            any: vec![Vec::new()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_acl, parse_condition};

    #[test]
    fn stand_in_acls() {
        assert!(parse_acl("path_beg /item").is_ok());
        assert!(parse_acl("hdr(host) -i example.com").is_ok());
        assert_eq!(parse_acl("path_bgn /x").unwrap_err().offset, 0);
        assert_eq!(parse_acl("path_beg").unwrap_err().offset, 8);
        let e = parse_acl("path_reg ^/(item").unwrap_err();
        assert_eq!(e.offset, 9);
        assert!(
            e.message.starts_with("invalid regex \"^/(item\": "),
            "{}",
            e.message
        );
    }

    #[test]
    fn stand_in_conditions() {
        let c = parse_condition("a !b or ! c").unwrap();
        assert_eq!(c.acl_names(), vec![(0, "a"), (3, "b"), (10, "c")]);
        assert!(parse_condition("").is_err());
        assert!(parse_condition("a or").is_err());
        assert!(parse_condition("or a").is_err());
    }
}
