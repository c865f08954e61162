//! ACL and condition syntax (HAProxy's `FETCH [-i] [-m METHOD] PATTERN...` and `if`/`unless`
//! expressions): parsed and validated at load time into [`AclSpec`] and [`Condition`].
//!
//! Everything that can be wrong with an ACL line is found here, with the byte offset where the
//! problem starts, so that `wasp check` can point at it: unknown fetches (with a suggestion),
//! bad flags, missing patterns, invalid regexes, CIDRs, lengths and header names. Compiling
//! the parsed specs into per-request matchers is `routing::acl`'s job.
//!
//! Words are split on whitespace. As in HAProxy, `'...'` quotes a word verbatim, `"..."` quotes
//! it with backslash escapes, and outside single quotes `\ `, `\\`, `\'`, `\"` and `\#` escape
//! one character; any other backslash is kept as is (so `\.` reaches a regex intact).

use http::HeaderName;
use regex::bytes::Regex;

use crate::config::model::Mode;

mod fetch;
mod ip;
mod lexer;
mod pattern;

pub use ip::{IpNet, sample_ip};
use lexer::tokenize;
pub use pattern::parse_net;
use pattern::parse_test;

/// A problem in an ACL line or a condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AclError {
    /// Byte offset in the parsed text where the problem starts.
    pub offset: usize,
    /// Lower case, says what is wrong.
    pub message: String,
    pub help: Option<String>,
}

/// A text's errors are reported all at once; one error is a list of one.
impl From<AclError> for Vec<AclError> {
    fn from(e: AclError) -> Self {
        vec![e]
    }
}

impl AclError {
    fn new(offset: usize, message: impl Into<String>) -> Self {
        Self {
            offset,
            message: message.into(),
            help: None,
        }
    }

    fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Where a sample comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetch {
    /// The normalised path.
    Path,
    /// The raw query string, without `?`.
    Query,
    /// The request's host, lower case, without port.
    Host,
    /// The method, as sent.
    Method,
    /// The client's address.
    Src,
    /// `hdr(name[,occ])`: every comma-separated value of every occurrence of the header
    /// (commas inside double quotes do not split), or only the `occ`th value (1-based;
    /// negative counts from the last).
    Header {
        name: HeaderName,
        occurrence: Option<i32>,
    },
    /// `fhdr(name[,occ])`: every full header line, commas included.
    FullHeader {
        name: HeaderName,
        occurrence: Option<i32>,
    },
    /// `url_param(name)`: the value of every `name=value` in the query (not percent-decoded).
    UrlParam(String),
    /// `req.ssl_sni` (TCP mode): the server name of the client's TLS ClientHello.
    SslSni,
    /// `dst_port` (TCP mode): the port the client connected to.
    DstPort,
    /// `ssl_fc_sni`: the server name the TLS client asked for, lower case; absent on a
    /// cleartext connection or without SNI.
    SslFcSni,
}

impl Fetch {
    /// The mode whose connections carry this sample (`None`: both, e.g. `src`).
    pub fn mode(&self) -> Option<Mode> {
        match self {
            Fetch::Src => None,
            Fetch::SslSni | Fetch::DstPort => Some(Mode::Tcp),
            _ => Some(Mode::Http),
        }
    }

    /// The fetch's keyword, for messages.
    pub fn keyword(&self) -> &'static str {
        match self {
            Fetch::Path => "path",
            Fetch::Query => "query",
            Fetch::Host => "host",
            Fetch::Method => "method",
            Fetch::Src => "src",
            Fetch::Header { .. } => "hdr",
            Fetch::FullHeader { .. } => "fhdr",
            Fetch::UrlParam(_) => "url_param",
            Fetch::SslSni => "req.ssl_sni",
            Fetch::DstPort => "dst_port",
            Fetch::SslFcSni => "ssl_fc_sni",
        }
    }
}

/// How a sample is compared with the patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchMethod {
    /// Exact string.
    Str,
    Beg,
    End,
    Sub,
    /// A slash-delimited sequence of segments.
    Dir,
    /// A sequence of `/ ? . :`-delimited words (domain name parts).
    Dom,
    Reg,
    /// The sample's length in bytes, against integers or ranges.
    Len,
    /// The sample exists; takes no pattern.
    Found,
    /// An address against addresses and CIDRs.
    Ip,
    /// An integer sample against integers or ranges.
    Int,
}

impl MatchMethod {
    const ALL: [(&'static str, MatchMethod); 11] = [
        ("str", Self::Str),
        ("beg", Self::Beg),
        ("end", Self::End),
        ("sub", Self::Sub),
        ("dir", Self::Dir),
        ("dom", Self::Dom),
        ("reg", Self::Reg),
        ("len", Self::Len),
        ("found", Self::Found),
        ("ip", Self::Ip),
        ("int", Self::Int),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, m)| *m == self)
            .map_or("?", |(n, _)| n)
    }
}

/// One pattern, already validated (and compiled, for regexes).
#[derive(Debug, Clone)]
pub enum Pattern {
    Str(String),
    Regex(Regex),
    /// Inclusive length range.
    Len {
        min: u64,
        max: u64,
    },
    Ip(IpNet),
    /// Inclusive integer range (`dst_port 8000:8080`).
    Int {
        min: u64,
        max: u64,
    },
}

/// One ACL line: a fetch, a match method, the `-i` flag and the patterns (any of them).
#[derive(Debug, Clone)]
pub struct AclTest {
    fetch: Fetch,
    method: MatchMethod,
    ignore_case: bool,
    patterns: Vec<Pattern>,
}

impl AclTest {
    pub fn fetch(&self) -> &Fetch {
        &self.fetch
    }

    pub fn method(&self) -> MatchMethod {
        self.method
    }

    /// `-i` was given.
    pub fn ignore_case(&self) -> bool {
        self.ignore_case
    }

    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }
}

/// A parsed named or inline ACL: true when any of its lines matches.
#[derive(Debug, Clone)]
pub struct AclSpec {
    tests: Vec<AclTest>,
}

impl AclSpec {
    /// The same ACL name declared on several lines: true when any of them matches.
    pub fn or(mut self, other: AclSpec) -> AclSpec {
        self.tests.extend(other.tests);
        self
    }

    pub fn tests(&self) -> &[AclTest] {
        &self.tests
    }
}

/// Parses one ACL line, e.g. `path_beg -i /item /basket`; on failure, every error found.
pub fn parse_acl(text: &str) -> Result<AclSpec, Vec<AclError>> {
    let tokens = tokenize(text)?;
    let test = parse_test(&tokens, text.len())?;
    Ok(AclSpec { tests: vec![test] })
}

/// What a condition term refers to.
#[derive(Debug, Clone)]
pub enum AclRef {
    /// A named ACL of the frontend; `offset` is where the name starts in the condition.
    Named { name: String, offset: usize },
    /// An anonymous `{ ... }` ACL; `offset` is where its `{` is.
    Inline { spec: AclSpec, offset: usize },
}

/// One possibly negated ACL in a condition.
#[derive(Debug, Clone)]
pub struct Term {
    pub negate: bool,
    pub acl: AclRef,
}

/// A parsed `if`/`unless` condition: OR of ANDs of terms (AND binds tighter; no parentheses).
#[derive(Debug, Clone)]
pub struct Condition {
    /// `None` for [`Condition::always`].
    any_of: Option<Vec<Vec<Term>>>,
}

impl Condition {
    /// An unconditional rule.
    pub fn always() -> Condition {
        Condition { any_of: None }
    }

    pub fn is_always(&self) -> bool {
        self.any_of.is_none()
    }

    /// The alternatives (OR), each a conjunction (AND) of terms; empty for [`Condition::always`].
    pub fn alternatives(&self) -> &[Vec<Term>] {
        self.any_of.as_deref().unwrap_or(&[])
    }

    /// Named ACLs referenced, with the offset of each reference.
    pub fn acl_names(&self) -> Vec<(usize, &str)> {
        self.alternatives()
            .iter()
            .flatten()
            .filter_map(|t| match &t.acl {
                AclRef::Named { name, offset } => Some((*offset, name.as_str())),
                AclRef::Inline { .. } => None,
            })
            .collect()
    }
}

const NAMES_HELP: &str = r#"a condition names acls: "is_api", "is_api !is_admin", "a or b""#;

/// Parses a condition, e.g. `is_item !is_admin or is_basket` or `{ path_beg /api } is_internal`;
/// on failure, every error found.
pub fn parse_condition(text: &str) -> Result<Condition, Vec<AclError>> {
    let (c, errors) = parse_condition_partly(text);
    if errors.is_empty() {
        Ok(c)
    } else {
        Err(errors)
    }
}

/// Parses a condition as far as it can: the terms read (an inline ACL with errors is left
/// out; reading stops at an error in the condition's own syntax) and the errors found, so that
/// `wasp check` also reports the unknown names among the terms.
pub fn parse_condition_partly(text: &str) -> (Condition, Vec<AclError>) {
    let mut errors = Vec::new();
    let any_of = alternatives(text, &mut errors);
    let c = Condition {
        any_of: Some(any_of),
    };
    (c, errors)
}

/// The alternatives of a condition, each a conjunction of terms; errors go to `errors`.
fn alternatives(text: &str, errors: &mut Vec<AclError>) -> Vec<Vec<Term>> {
    let mut any_of = Vec::new();
    let tokens = match tokenize(text) {
        Ok(t) => t,
        Err(e) => {
            errors.push(e);
            return any_of;
        }
    };
    if tokens.is_empty() {
        errors.push(AclError::new(0, "empty condition").help(NAMES_HELP));
        return any_of;
    }
    let dangling_bang = |at| AclError::new(at, "missing acl name after \"!\"");
    let mut all_of: Vec<Term> = Vec::new();
    // A pending `!` word: where it is and whether the `!`s so far negate.
    let mut pending: Option<(usize, bool)> = None;
    let mut i = 0;
    // Set when the condition's syntax is broken: reading stops there.
    let mut broken: Option<AclError> = None;
    while let Some(t) = tokens.get(i) {
        i += 1;
        // Operators and braces are only recognised unquoted.
        let word = if t.verbatim { t.text.as_str() } else { "" };
        match word {
            "or" | "||" => {
                if let Some((at, _)) = pending {
                    broken = Some(dangling_bang(at));
                    break;
                }
                if all_of.is_empty() {
                    let msg = format!("unexpected \"{word}\"");
                    broken = Some(AclError::new(t.offset, msg));
                    break;
                }
                any_of.push(std::mem::take(&mut all_of));
                continue;
            }
            "and" | "&&" => {
                broken = Some(
                    AclError::new(t.offset, format!("unexpected \"{word}\""))
                        .help("acls separated by spaces are ANDed: write \"a b\", not \"a and b\""),
                );
                break;
            }
            "}" => {
                let msg = "unexpected \"}\" without a matching \"{\"";
                broken = Some(AclError::new(t.offset, msg));
                break;
            }
            _ => {}
        }
        let bangs = word.len() - word.trim_start_matches('!').len();
        let (at, before) = pending.take().unwrap_or((t.offset, false));
        let negate = before != (bangs % 2 == 1);
        let name = &t.text[bangs..];
        if name.is_empty() {
            pending = Some((at, negate));
        } else if t.verbatim && name == "{" {
            let close = tokens[i..].iter().position(|c| c.verbatim && c.text == "}");
            let Some(close) = close.map(|c| c + i) else {
                broken = Some(AclError::new(
                    t.offset + bangs,
                    "unclosed \"{\": missing \"}\"",
                ));
                break;
            };
            match parse_test(&tokens[i..close], tokens[close].offset) {
                Ok(test) => {
                    let acl = AclRef::Inline {
                        spec: AclSpec { tests: vec![test] },
                        offset: t.offset + bangs,
                    };
                    all_of.push(Term { negate, acl });
                }
                Err(e) => errors.extend(e),
            }
            i = close + 1;
        } else if name.starts_with('{') || name.ends_with('}') {
            let msg = format!("invalid acl name \"{name}\"");
            broken = Some(
                AclError::new(t.offset + bangs, msg)
                    .help("inline acls need spaces around braces: \"{ path_beg /api }\""),
            );
            break;
        } else {
            // Any other word is a name; one that no `acl` defines is the loader's
            // "unknown acl" diagnostic (with suggestions), reported for every such name.
            let acl = AclRef::Named {
                name: name.to_owned(),
                offset: t.offset + bangs,
            };
            all_of.push(Term { negate, acl });
        }
    }
    let failed = broken.is_some() || !errors.is_empty();
    if let Some(e) = broken {
        errors.push(e);
    } else if let Some((at, _)) = pending {
        errors.push(dangling_bang(at));
    } else if all_of.is_empty() && !failed {
        errors.push(AclError::new(text.len(), "missing acl name").help(NAMES_HELP));
    }
    if !all_of.is_empty() {
        any_of.push(all_of);
    }
    any_of
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use http::HeaderName;

    use super::{
        AclError, AclRef, AclSpec, AclTest, Condition, Fetch, IpNet, MatchMethod, Pattern,
        parse_acl, parse_condition,
    };

    fn one(text: &str) -> AclTest {
        let spec = parse_acl(text).unwrap_or_else(|e| panic!("{text:?}: {e:?}"));
        assert_eq!(spec.tests().len(), 1);
        spec.tests()[0].clone()
    }

    fn strings(test: &AclTest) -> Vec<&str> {
        test.patterns()
            .iter()
            .map(|p| match p {
                Pattern::Str(s) => s.as_str(),
                Pattern::Regex(re) => re.as_str(),
                other => panic!("not a string pattern: {other:?}"),
            })
            .collect()
    }

    /// The one error of an ACL line.
    fn err(text: &str) -> AclError {
        only(text, errs(text))
    }

    fn errs(text: &str) -> Vec<AclError> {
        match parse_acl(text) {
            Ok(spec) => panic!("{text:?} parsed: {spec:?}"),
            Err(e) => e,
        }
    }

    /// The one error of a condition.
    fn cond_err(text: &str) -> AclError {
        only(text, cond_errs(text))
    }

    fn cond_errs(text: &str) -> Vec<AclError> {
        match parse_condition(text) {
            Ok(c) => panic!("{text:?} parsed: {c:?}"),
            Err(e) => e,
        }
    }

    fn only(text: &str, mut errors: Vec<AclError>) -> AclError {
        assert_eq!(errors.len(), 1, "{text:?}: {errors:?}");
        errors.remove(0)
    }

    /// Offsets and messages of `errors`.
    fn found(errors: &[AclError]) -> Vec<(usize, &str)> {
        errors
            .iter()
            .map(|e| (e.offset, e.message.as_str()))
            .collect()
    }

    #[test]
    fn every_invalid_pattern_of_a_line_is_an_error() {
        assert_eq!(
            found(&errs("src 10.0.0.0/33 ::1/129 300.1.1.1 10.0.0.1")),
            [
                (13, "prefix length 33 is out of range 0..=32"),
                (20, "prefix length 129 is out of range 0..=128"),
                (24, "invalid address or cidr \"300.1.1.1\""),
            ]
        );
        assert_eq!(
            found(&errs("path_reg ^/(a ok ^/[b")).len(),
            2,
            "two invalid regexes"
        );
        assert_eq!(
            found(&errs("path_len 1:x 2 y ge")),
            [
                (9, "invalid length \"1:x\""),
                (15, "invalid length \"y\""),
                (19, "\"ge\" needs an integer after it"),
            ]
        );
        assert_eq!(
            found(&errs("path_dir / ok //")),
            [
                (9, "pattern \"/\" has nothing besides delimiters"),
                (14, "pattern \"//\" has nothing besides delimiters"),
            ]
        );
    }

    #[test]
    fn a_condition_reports_every_inline_error_and_keeps_its_names() {
        let text = "a { pth /x } { path_beg } !b or c";
        let errors = cond_errs(text);
        assert_eq!(
            found(&errors),
            [
                (4, "unknown fetch \"pth\""),
                (23, "missing pattern after \"path_beg\"")
            ]
        );
        let (c, _) = super::parse_condition_partly(text);
        let names: Vec<&str> = c.acl_names().into_iter().map(|(_, n)| n).collect();
        assert_eq!(names, ["a", "b", "c"]);
        // Reading stops at a broken condition; what came before it is kept.
        let (c, errors) = super::parse_condition_partly("x or or y");
        assert_eq!(found(&errors), [(5, "unexpected \"or\"")]);
        assert_eq!(c.acl_names(), [(0, "x")]);
    }

    #[test]
    fn lab_acl_parses_to_path_prefix() {
        let t = one("path_beg /item");
        assert_eq!(t.fetch(), &Fetch::Path);
        assert_eq!(t.method(), MatchMethod::Beg);
        assert!(!t.ignore_case());
        assert_eq!(strings(&t), ["/item"]);
    }

    #[test]
    fn every_fetch_and_suffix_parses() {
        let cases: &[(&str, Fetch, MatchMethod)] = &[
            ("path /a", Fetch::Path, MatchMethod::Str),
            ("path_end .jpg", Fetch::Path, MatchMethod::End),
            ("path_sub x", Fetch::Path, MatchMethod::Sub),
            ("path_dir img", Fetch::Path, MatchMethod::Dir),
            ("path_dom a", Fetch::Path, MatchMethod::Dom),
            ("path_reg ^/a", Fetch::Path, MatchMethod::Reg),
            ("path_len 3", Fetch::Path, MatchMethod::Len),
            ("query a=b", Fetch::Query, MatchMethod::Str),
            ("host example.com", Fetch::Host, MatchMethod::Str),
            ("host_end .example.com", Fetch::Host, MatchMethod::End),
            ("host_reg ^www", Fetch::Host, MatchMethod::Reg),
            ("method GET", Fetch::Method, MatchMethod::Str),
            ("src 10.0.0.0/8", Fetch::Src, MatchMethod::Ip),
            (
                "url_param(id) 1",
                Fetch::UrlParam("id".into()),
                MatchMethod::Str,
            ),
            ("urlp(id) 1", Fetch::UrlParam("id".into()), MatchMethod::Str),
            (
                "urlp_beg(id) 1",
                Fetch::UrlParam("id".into()),
                MatchMethod::Beg,
            ),
            (
                "url_param_sub(id) 1",
                Fetch::UrlParam("id".into()),
                MatchMethod::Sub,
            ),
        ];
        for (text, fetch, method) in cases {
            let t = one(text);
            assert_eq!((t.fetch(), t.method()), (fetch, *method), "{text}");
        }
    }

    #[test]
    fn header_fetches_lowercase_the_name_and_take_an_occurrence() {
        let host = HeaderName::from_static("host");
        let t = one("hdr(Host) example.com");
        assert_eq!(
            t.fetch(),
            &Fetch::Header {
                name: host.clone(),
                occurrence: None
            }
        );
        let t = one("hdr_beg(X-Forwarded-For,-1) 10.");
        let xff = HeaderName::from_static("x-forwarded-for");
        assert_eq!(
            t.fetch(),
            &Fetch::Header {
                name: xff.clone(),
                occurrence: Some(-1)
            }
        );
        assert_eq!(t.method(), MatchMethod::Beg);
        let t = one("hdr_ip(x-forwarded-for) 10.0.0.0/8");
        assert_eq!(t.method(), MatchMethod::Ip);
        let t = one("fhdr(user-agent,2) -m sub x");
        assert_eq!(
            t.fetch(),
            &Fetch::FullHeader {
                name: HeaderName::from_static("user-agent"),
                occurrence: Some(2)
            }
        );
        assert_eq!(
            one("req.hdr(host) a").fetch(),
            &Fetch::Header {
                name: host,
                occurrence: None
            }
        );
    }

    #[test]
    fn flags_and_match_method() {
        let t = one("path -i -m beg /A /b");
        assert!(t.ignore_case());
        assert_eq!(t.method(), MatchMethod::Beg);
        assert_eq!(strings(&t), ["/A", "/b"]);
        let t = one("hdr(x) -m found");
        assert_eq!(t.method(), MatchMethod::Found);
        assert!(t.patterns().is_empty());
        let t = one("hdr(x) -- -i -dash");
        assert!(!t.ignore_case());
        assert_eq!(strings(&t), ["-i", "-dash"]);
        assert_eq!(one("src -m found").method(), MatchMethod::Found);
    }

    #[test]
    fn quotes_and_escapes() {
        let t = one(r#"hdr_sub(user-agent) "Mozilla 5" 'a\b c' x\ y \"q\" a\.b"#);
        assert_eq!(
            strings(&t),
            ["Mozilla 5", r"a\b c", "x y", "\"q\"", r"a\.b"]
        );
        let t = one(r"path_reg ^/api/v[0-9]+\.json$");
        assert_eq!(strings(&t), [r"^/api/v[0-9]+\.json$"]);
        let e = err("path_beg 'abc");
        assert_eq!((e.offset, e.message.as_str()), (9, "unterminated quote '"));
    }

    #[test]
    fn connection_fetches_take_integers_and_names() {
        let t = one("dst_port 443 8000:8080 ge 9000");
        assert_eq!((t.fetch(), t.method()), (&Fetch::DstPort, MatchMethod::Int));
        assert!(matches!(
            t.patterns(),
            [
                Pattern::Int { min: 443, max: 443 },
                Pattern::Int {
                    min: 8000,
                    max: 8080
                },
                Pattern::Int { min: 9000, .. }
            ]
        ));
        let t = one("req.ssl_sni -i -m end .example.com");
        assert_eq!((t.fetch(), t.method()), (&Fetch::SslSni, MatchMethod::End));
        assert_eq!(one("req_ssl_sni a").fetch(), &Fetch::SslSni);
        assert_eq!(one("dst_port -m found").method(), MatchMethod::Found);
        assert_eq!(
            err("dst_port -m beg 4").message,
            "\"dst_port\" is an integer: \"-m beg\" does not apply"
        );
        assert_eq!(
            err("path -m int 3").message,
            "\"-m int\" does not apply to \"path\""
        );
        assert_eq!(Fetch::SslSni.mode(), Some(crate::config::Mode::Tcp));
        assert_eq!(Fetch::Src.mode(), None);
    }

    #[test]
    fn or_combines_lines() {
        let spec = parse_acl("path_beg /a")
            .unwrap()
            .or(parse_acl("host x").unwrap());
        assert_eq!(spec.tests().len(), 2);
        assert_eq!(spec.tests()[1].fetch(), &Fetch::Host);
    }

    #[test]
    fn unknown_fetch_suggests_the_closest_name() {
        let e = err("path_begin /x");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (0, "unknown fetch \"path_begin\"")
        );
        assert!(
            e.help
                .as_deref()
                .unwrap()
                .starts_with("did you mean \"path_beg\"?"),
            "{e:?}"
        );
        let e = err("hdr_bge(host) x");
        assert!(
            e.help
                .as_deref()
                .unwrap()
                .starts_with("did you mean \"hdr_beg\"?"),
            "{e:?}"
        );
        let e = err("ssl_fc_alpn x");
        assert_eq!(e.message, "unknown fetch \"ssl_fc_alpn\"");
        let help = e.help.unwrap();
        assert!(!help.contains("did you mean"), "{help}");
        assert!(
            help.contains("path, query, host, method, src, hdr(NAME)"),
            "{help}"
        );
        assert_eq!(err("method_beg G").message, "unknown fetch \"method_beg\"");
    }

    #[test]
    fn fetch_argument_errors_point_at_the_argument() {
        let e = err("hdr(bad@name) x");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (4, "invalid header name \"bad@name\"")
        );
        let e = err(r"hdr(bad\ name) x");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (0, "invalid header name \"bad name\"")
        );
        let e = err("  hdr_beg(a:b) x");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (10, "invalid header name \"a:b\"")
        );
        let e = err("hdr(x,0) a");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (6, "invalid occurrence \"0\"")
        );
        assert_eq!(err("hdr() x").offset, 4);
        assert_eq!(err("hdr x").message, "\"hdr\" needs a header name");
        assert_eq!(
            err("url_param x").message,
            "\"url_param\" needs a parameter name"
        );
        assert_eq!(err("urlp() x").message, "invalid parameter name \"\"");
        assert_eq!(err("path(x) /a").message, "\"path\" takes no argument");
        assert_eq!(err("hdr(host x").message, "missing \")\" in \"hdr(host\"");
    }

    #[test]
    fn missing_patterns_are_an_error_at_the_end() {
        let e = err("path_beg");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (8, "missing pattern after \"path_beg\"")
        );
        let e = err("path_beg -i  ");
        assert_eq!(e.offset, 11);
        assert_eq!(err("").message, "empty acl");
        assert_eq!(err("-i /x").message, "expected a fetch before \"-i\"");
    }

    #[test]
    fn flag_errors() {
        let e = err("path -m begins /x");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (8, "unknown match method \"begins\"")
        );
        let e = err("path -m");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (7, "\"-m\" needs a match method")
        );
        let e = err("path_beg -m sub /x");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (9, "\"path_beg\" already implies \"-m beg\"")
        );
        let e = err("path -x /a");
        assert_eq!((e.offset, e.message.as_str()), (5, "unknown flag \"-x\""));
        assert_eq!(
            err("path -f list.txt").message,
            "pattern files are not supported"
        );
        let e = err("hdr(x) -m found y");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (16, "\"-m found\" takes no pattern")
        );
        let e = err("src -m beg 10.");
        assert_eq!(
            e.message,
            "\"src\" is an address: \"-m beg\" does not apply"
        );
        let e = err("path_dir //");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (9, "pattern \"//\" has nothing besides delimiters")
        );
    }

    #[test]
    fn invalid_regex_points_at_the_pattern() {
        let e = err("path_reg ^/ok ^/a(b");
        assert_eq!(e.offset, 14);
        assert_eq!(e.message, "invalid regex \"^/a(b\": unclosed group");
        let e = err("hdr_reg(x) -i [z-a]");
        assert_eq!(e.offset, 14);
        assert!(e.message.starts_with("invalid regex \"[z-a]\": "), "{e:?}");
    }

    #[test]
    fn regex_is_compiled_with_the_case_flag() {
        let t = one("path_reg -i ^/API");
        let Pattern::Regex(re) = &t.patterns()[0] else {
            panic!()
        };
        assert!(re.is_match(b"/api/x"));
        let t = one("path_reg ^/API");
        let Pattern::Regex(re) = &t.patterns()[0] else {
            panic!()
        };
        assert!(!re.is_match(b"/api/x"));
    }

    #[test]
    fn addresses_and_cidrs() {
        let nets: Vec<IpNet> = one(
            "src 10.0.0.0/8 192.168.1.7 2001:db8::/32 ::ffff:172.16.0.0/108 10.1.0.0/255.255.0.0",
        )
        .patterns()
        .iter()
        .map(|p| match p {
            Pattern::Ip(n) => *n,
            other => panic!("{other:?}"),
        })
        .collect();
        let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
        assert!(nets[0].contains(v4(10, 200, 3, 4)));
        assert!(!nets[0].contains(v4(11, 0, 0, 1)));
        assert!(nets[1].contains(v4(192, 168, 1, 7)));
        assert!(!nets[1].contains(v4(192, 168, 1, 8)));
        assert!(nets[2].contains("2001:db8:1::5".parse().unwrap()));
        assert!(!nets[2].contains("2001:db9::5".parse().unwrap()));
        // A mapped pattern is the IPv4 network it carries; a mapped client is its IPv4 address.
        assert_eq!(
            nets[3],
            IpNet::V4 {
                net: 0xac10_0000,
                mask: 0xfff0_0000
            }
        );
        assert!(nets[3].contains(v4(172, 16, 9, 9)));
        assert!(nets[0].contains(IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped())));
        assert!(nets[4].contains(v4(10, 1, 99, 1)));
        assert!(!nets[4].contains(v4(10, 2, 0, 1)));
        assert!(!nets[0].contains(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        // Host bits are masked off, as HAProxy does.
        let Pattern::Ip(net) = one("src 10.1.2.3/8").patterns()[0] else {
            panic!()
        };
        assert_eq!(
            net,
            IpNet::V4 {
                net: 0x0a00_0000,
                mask: 0xff00_0000
            }
        );
        let Pattern::Ip(all) = one("src 0.0.0.0/0").patterns()[0] else {
            panic!()
        };
        assert!(all.contains(v4(8, 8, 8, 8)));
        // Trust lists stay within a family; ACL samples cross it as in HAProxy.
        let Pattern::Ip(any6) = one("src ::/0").patterns()[0] else {
            panic!()
        };
        assert!(!any6.contains(v4(10, 1, 2, 3)));
        assert!(any6.matches_sample(v4(10, 1, 2, 3)));
        let compatible = IpAddr::V6("::10.1.2.3".parse().unwrap());
        assert!(!nets[0].contains(compatible));
        assert!(nets[0].matches_sample(compatible));
    }

    #[test]
    fn bad_cidrs_are_errors_at_their_offset() {
        let e = err("src 10.0.0.0/8 10.0.0.0/33");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (24, "prefix length 33 is out of range 0..=32")
        );
        let e = err("src 10.0.0.300");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (4, "invalid address or cidr \"10.0.0.300\"")
        );
        assert_eq!(
            err("src ::1/129").message,
            "prefix length 129 is out of range 0..=128"
        );
        assert_eq!(
            err("src 10.0.0.0/255.0.255.0").message,
            "invalid address or cidr \"10.0.0.0/255.0.255.0\""
        );
        assert_eq!(err("src 10.0.0.0/").offset, 4);
        assert_eq!(
            err("hdr_ip(x) nope").message,
            "invalid address or cidr \"nope\""
        );
    }

    #[test]
    fn lengths() {
        let ranges: Vec<(u64, u64)> = one("path_len 5 10:20 30: :3 gt 100 ge 7 lt 2 le 4 eq 9")
            .patterns()
            .iter()
            .map(|p| match p {
                Pattern::Len { min, max } => (*min, *max),
                other => panic!("{other:?}"),
            })
            .collect();
        let max = u64::MAX;
        assert_eq!(
            ranges,
            [
                (5, 5),
                (10, 20),
                (30, max),
                (0, 3),
                (101, max),
                (7, max),
                (0, 1),
                (0, 4),
                (9, 9)
            ]
        );
        assert_eq!(
            err("path_len 5 gt").message,
            "\"gt\" needs an integer after it"
        );
        assert_eq!(err("path_len 5 gt").offset, 13);
        assert_eq!(err("path_len x").message, "invalid length \"x\"");
        assert_eq!(err("path_len 20:10").message, "empty range \"20:10\"");
        assert_eq!(err("path -m len :").offset, 12);
    }

    #[test]
    fn condition_and_binds_tighter_than_or() {
        let c = parse_condition("a !b or c || ! d").unwrap();
        let shape: Vec<Vec<(bool, &str)>> = c
            .alternatives()
            .iter()
            .map(|all| {
                all.iter()
                    .map(|t| match &t.acl {
                        AclRef::Named { name, .. } => (t.negate, name.as_str()),
                        AclRef::Inline { .. } => panic!("inline"),
                    })
                    .collect()
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                vec![(false, "a"), (true, "b")],
                vec![(false, "c")],
                vec![(true, "d")]
            ]
        );
        assert_eq!(c.acl_names(), [(0, "a"), (3, "b"), (8, "c"), (15, "d")]);
        assert!(!c.is_always());
    }

    #[test]
    fn double_negation_cancels() {
        let c = parse_condition("!!a ! !b").unwrap();
        let negs: Vec<bool> = c.alternatives()[0].iter().map(|t| t.negate).collect();
        assert_eq!(negs, [false, false]);
        assert_eq!(c.acl_names(), [(2, "a"), (7, "b")]);
    }

    #[test]
    fn always_has_no_names() {
        let c = Condition::always();
        assert!(c.is_always());
        assert!(c.alternatives().is_empty());
        assert!(c.acl_names().is_empty());
    }

    #[test]
    fn inline_acls() {
        let c = parse_condition("is_api { path_beg /v1 /v2 } or !{ hdr(x) -m found }").unwrap();
        let alts = c.alternatives();
        assert_eq!(alts.len(), 2);
        let AclRef::Inline { spec, offset } = &alts[0][1].acl else {
            panic!("{c:?}")
        };
        assert_eq!(*offset, 7);
        assert_eq!(strings(&spec.tests()[0]), ["/v1", "/v2"]);
        assert!(!alts[0][1].negate);
        assert!(alts[1][0].negate);
        assert!(matches!(&alts[1][0].acl, AclRef::Inline { offset: 32, .. }));
        assert_eq!(c.acl_names(), [(0, "is_api")]);
    }

    #[test]
    fn inline_acl_errors_are_relative_to_the_condition() {
        let text = "a { path_reg ^/x( } b";
        let e = cond_err(text);
        assert_eq!(e.offset, text.find("^/x(").unwrap());
        assert!(e.message.starts_with("invalid regex"), "{e:?}");
        let e = cond_err("a { pth_beg /x }");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (4, "unknown fetch \"pth_beg\"")
        );
        let e = cond_err("a { path_beg }");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (12, "missing pattern after \"path_beg\"")
        );
        let e = cond_err("a {  }");
        assert_eq!((e.offset, e.message.as_str()), (5, "empty acl"));
        let e = cond_err("a { path_beg /x");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (2, "unclosed \"{\": missing \"}\"")
        );
        let e = cond_err("a } b");
        assert_eq!(e.offset, 2);
        let e = cond_err("{path_beg /x}");
        assert_eq!(e.message, "invalid acl name \"{path_beg\"");
        assert!(e.help.unwrap().contains("spaces around braces"));
    }

    #[test]
    fn condition_errors() {
        assert_eq!(cond_err("").message, "empty condition");
        assert_eq!(cond_err("   ").offset, 0);
        let e = cond_err("a or");
        assert_eq!((e.offset, e.message.as_str()), (4, "missing acl name"));
        let e = cond_err("or a");
        assert_eq!((e.offset, e.message.as_str()), (0, "unexpected \"or\""));
        let e = cond_err("a || || b");
        assert_eq!((e.offset, e.message.as_str()), (5, "unexpected \"||\""));
        let e = cond_err("a !");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (2, "missing acl name after \"!\"")
        );
        let e = cond_err("a ! or b");
        assert_eq!(e.offset, 2);
        let e = cond_err("a and b");
        assert_eq!((e.offset, e.message.as_str()), (2, "unexpected \"and\""));
        assert!(e.help.is_some());
        assert_eq!(cond_err("a && b").message, "unexpected \"&&\"");
        // Other odd names parse; the loader reports them as unknown acls.
        let c = parse_condition("a !b,c ü").unwrap();
        assert_eq!(c.acl_names(), [(0, "a"), (3, "b,c"), (7, "ü")]);
    }

    #[test]
    fn garbage_never_panics() {
        // Deterministic xorshift over a hostile alphabet: every input must give Ok or Err.
        let alphabet: Vec<char> = " \t'\"\\!{}()-,:/.|&#éx0i9mpathdrsc_beglnu"
            .chars()
            .collect();
        let words = [
            "path_beg",
            "hdr(",
            "src",
            "-m",
            "-i",
            "or",
            "{",
            "}",
            "!",
            "url_param(",
            "len",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..5_000 {
            let mut text = String::new();
            for _ in 0..next() % 24 {
                let r = next();
                if r % 4 == 0 {
                    text.push_str(words[(r / 4) as usize % words.len()]);
                } else {
                    text.push(alphabet[(r / 4) as usize % alphabet.len()]);
                }
            }
            for result in [parse_acl(&text).map(drop), parse_condition(&text).map(drop)] {
                for e in result.err().unwrap_or_default() {
                    assert!(e.offset <= text.len(), "{text:?}: {e:?}");
                    assert!(text.is_char_boundary(e.offset), "{text:?}: {e:?}");
                }
            }
        }
    }

    #[test]
    fn types_are_shareable() {
        fn check<T: std::fmt::Debug + Clone + Send + Sync>() {}
        check::<AclSpec>();
        check::<Condition>();
        check::<AclError>();
    }
}
