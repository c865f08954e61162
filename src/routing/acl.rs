//! Compiled ACLs: the matchers built from `config::acl` specs, evaluated per request.
//!
//! Compiling does all the work that does not depend on the request: patterns are lower-cased
//! for `-i`, deduplicated and sorted for binary search, literal sets become one automaton,
//! regexes of one ACL line become one `RegexSet`, CIDRs become masks. Evaluating reads the
//! [`RequestView`] in place and never allocates.
//!
//! Samples, as in HAProxy:
//! - `hdr(name)` yields every comma-separated value of every occurrence of the header, trimmed
//!   of spaces and tabs; a comma inside a double-quoted string does not split. `fhdr(name)`
//!   yields whole header lines. The ACL is true when any value matches. With an occurrence
//!   (`hdr(name,2)`, `hdr(name,-1)`) only that value is tried.
//! - `hdr(host)` reads the Host header as sent (with its port, if any); when the request has no
//!   Host header (HTTP/2 carries `:authority`) it falls back to the canonical host. Host names
//!   are case-insensitive, so `host` and `hdr(host)` always compare without case.
//! - `query` is what follows the first `?`: absent without one, empty after a bare `?`.
//! - `url_param(name)` yields the value of every `name=value` in the query, split on `&`, `;`
//!   and `?` as in HAProxy, without percent-decoding; `name` without `=` is absent, `name=` is an empty value.
//! - `src` is the client address; an IPv4-mapped IPv6 client (`::ffff:a.b.c.d`) is matched as
//!   the IPv4 address it carries.
//! - An absent sample (no such header or parameter) makes the ACL false, even for `-m len 0`.

use std::cmp::Ordering;
use std::net::SocketAddr;

use http::HeaderName;
use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

use crate::config::acl::{AclSpec, AclTest, Fetch, IpNet, MatchMethod, Pattern, sample_ip};
use crate::routing::{ConnView, RequestView};

/// Above this many literal patterns, `sub` uses one automaton instead of a loop.
const SUB_SCAN_MAX: usize = 4;
/// Up to this many patterns, exact/prefix/suffix sets are scanned rather than searched.
const SMALL_SET: usize = 4;

/// An ACL spec turned into something that failed to compile although the spec was valid.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("cannot compile {count} pattern(s) into one matcher: {source}")]
    Regex { count: usize, source: regex::Error },
}

/// A compiled ACL: true when any of its lines matches.
#[derive(Debug, Clone)]
pub struct CompiledAcl {
    tests: Box<[CompiledTest]>,
}

impl CompiledAcl {
    pub fn compile(spec: &AclSpec) -> Result<Self, CompileError> {
        let tests = spec
            .tests()
            .iter()
            .map(CompiledTest::compile)
            .collect::<Result<_, _>>()?;
        Ok(Self { tests })
    }

    /// Evaluates the ACL against a request. Never allocates.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.tests.iter().any(|t| t.matches(req))
    }

    /// Evaluates the ACL against a TCP-mode connection: `src`, `dst_port` and `req.ssl_sni`
    /// have samples there; HTTP fetches have none (`wasp check` rejects them in TCP mode).
    pub fn matches_conn(&self, conn: &ConnView<'_>) -> bool {
        self.tests.iter().any(|t| t.matches_conn(conn))
    }
}

/// One ACL line: a sample and a matcher.
#[derive(Debug, Clone)]
struct CompiledTest {
    sample: Sample,
    matcher: Matcher,
}

impl CompiledTest {
    fn compile(test: &AclTest) -> Result<Self, CompileError> {
        let sample = Sample::compile(test.fetch());
        // Host names are case-insensitive: the canonical host is lower case already.
        let fold = test.ignore_case() || sample.is_host();
        let matcher = Matcher::compile(test.method(), fold, test.patterns())?;
        Ok(Self { sample, matcher })
    }

    fn matches(&self, req: &RequestView<'_>) -> bool {
        match (&self.sample, &self.matcher) {
            (Sample::Src, Matcher::Ip(nets)) => src_in(req.client, nets),
            // The parser accepts only `ip` and `found` for `src`; a client always has an address.
            (Sample::Src, _) => true,
            (sample, matcher) => sample.any(req, |value| matcher.matches(value)),
        }
    }

    fn matches_conn(&self, conn: &ConnView<'_>) -> bool {
        match (&self.sample, &self.matcher) {
            (Sample::Src, Matcher::Ip(nets)) => src_in(conn.client, nets),
            (Sample::Src, _) => true,
            (Sample::DstPort, Matcher::Int(ranges)) => in_ranges(ranges, conn.local.port().into()),
            (Sample::DstPort, _) => true,
            (Sample::SslSni, matcher) => conn.sni.is_some_and(|n| matcher.matches(n.as_bytes())),
            _ => false,
        }
    }
}

#[inline(never)]
fn src_in(client: SocketAddr, nets: &[IpNet]) -> bool {
    let ip = client.ip().to_canonical();
    nets.iter().any(|n| n.matches_sample(ip))
}

fn in_ranges(ranges: &[(u64, u64)], n: u64) -> bool {
    ranges.iter().any(|&(min, max)| (min..=max).contains(&n))
}

/// Where the bytes to match come from.
#[derive(Debug, Clone)]
enum Sample {
    Path,
    Query,
    Host,
    Method,
    Src,
    Header {
        name: HeaderName,
        split: bool,
        occurrence: Option<i32>,
        host_fallback: bool,
    },
    UrlParam(Box<[u8]>),
    SslSni,
    DstPort,
    Sni,
}

impl Sample {
    fn compile(fetch: &Fetch) -> Self {
        let header = |name: &HeaderName, split, occurrence| Sample::Header {
            host_fallback: name == http::header::HOST,
            name: name.clone(),
            split,
            occurrence,
        };
        match fetch {
            Fetch::Path => Self::Path,
            Fetch::Query => Self::Query,
            Fetch::Host => Self::Host,
            Fetch::Method => Self::Method,
            Fetch::Src => Self::Src,
            Fetch::Header { name, occurrence } => header(name, true, *occurrence),
            Fetch::FullHeader { name, occurrence } => header(name, false, *occurrence),
            Fetch::UrlParam(name) => Self::UrlParam(name.as_bytes().into()),
            Fetch::SslSni => Self::SslSni,
            Fetch::DstPort => Self::DstPort,
            Fetch::SslFcSni => Self::Sni,
        }
    }

    fn is_host(&self) -> bool {
        match self {
            Self::Host => true,
            Self::Header { host_fallback, .. } => *host_fallback,
            _ => false,
        }
    }

    /// Calls `f` on each value of the sample until it returns true; false if none did.
    fn any(&self, req: &RequestView<'_>, mut f: impl FnMut(&[u8]) -> bool) -> bool {
        match self {
            Self::Path => f(req.path.as_bytes()),
            // As HAProxy's `query`: absent without a `?`, empty after a bare one (`/x?`). No
            // host (HTTP/1.0 without Host) is an absent sample too.
            Self::Query => req.query.is_some_and(|q| f(q.as_bytes())),
            Self::Host => !req.host.is_empty() && f(req.host.as_bytes()),
            Self::Method => f(req.method.as_str().as_bytes()),
            Self::Sni => !req.sni.is_empty() && f(req.sni.as_bytes()),
            // Connection samples: absent in HTTP mode.
            Self::Src | Self::SslSni | Self::DstPort => false,
            Self::Header {
                name,
                split,
                occurrence,
                host_fallback,
            } => any_header(req, name, *split, *occurrence, *host_fallback, f),
            Self::UrlParam(name) => req.query.is_some_and(|q| {
                q.as_bytes().split(|&b| is_param_delimiter(b)).any(|param| {
                    param.len() > name.len()
                        && param[name.len()] == b'='
                        && param.starts_with(name)
                        && f(&param[name.len() + 1..])
                })
            }),
        }
    }
}

/// What ends a query parameter for `url_param`: HAProxy's `&` and `;`, and its default
/// delimiter `?` (`/u?a=1?q=2` has a parameter `q`).
fn is_param_delimiter(b: u8) -> bool {
    matches!(b, b'&' | b';' | b'?')
}

/// `Sample::any` for headers, kept out of line so the common path/host tests stay small.
#[inline(never)]
fn any_header(
    req: &RequestView<'_>,
    name: &HeaderName,
    split: bool,
    occurrence: Option<i32>,
    host_fallback: bool,
    f: impl FnMut(&[u8]) -> bool,
) -> bool {
    let lines = req.headers.get_all(name);
    let fallback = (host_fallback && !req.host.is_empty() && lines.iter().next().is_none())
        .then_some(req.host.as_bytes());
    let values = || {
        let lines = lines.iter();
        lines
            .flat_map(move |v| Values::new(v.as_bytes(), split))
            .chain(fallback)
    };
    match occurrence {
        None => values().any(f),
        Some(n) if n > 0 => values().nth(n.unsigned_abs() as usize - 1).is_some_and(f),
        Some(n) => {
            let count = values().count();
            let index = count.checked_sub(n.unsigned_abs() as usize);
            index.and_then(|i| values().nth(i)).is_some_and(f)
        }
    }
}

/// The values of one header line: comma-separated elements (commas in double quotes do not
/// split), or the whole line; trimmed of spaces and tabs.
struct Values<'a> {
    rest: Option<&'a [u8]>,
    split: bool,
}

impl<'a> Values<'a> {
    fn new(line: &'a [u8], split: bool) -> Self {
        Self {
            rest: Some(line),
            split,
        }
    }
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        let end = if self.split {
            element_end(rest)
        } else {
            rest.len()
        };
        self.rest = rest.get(end + 1..);
        Some(rest[..end].trim_ascii_start().trim_ascii_end())
    }
}

/// Index of the comma that ends the first element, or the length (RFC 9110 lists).
fn element_end(s: &[u8]) -> usize {
    let (mut quoted, mut escaped) = (false, false);
    for (i, &b) in s.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => return i,
            _ => {}
        }
    }
    s.len()
}

/// A compiled match method with its patterns.
#[derive(Debug, Clone)]
enum Matcher {
    Found,
    Exact(SortedSet),
    Prefix(SortedSet),
    Suffix(SortedSet),
    /// A few substrings, tried in turn.
    SubScan {
        needles: Box<[Box<[u8]>]>,
        fold: bool,
    },
    /// Many substrings: one literal automaton (the regex crate's).
    SubSet(Regex),
    Words {
        words: Box<[Box<[u8]>]>,
        fold: bool,
        delims: &'static [u8],
    },
    Regex(Regex),
    RegexSet(RegexSet),
    Len(Box<[(u64, u64)]>),
    Ip(Box<[IpNet]>),
    Int(Box<[(u64, u64)]>),
}

impl Matcher {
    fn compile(
        method: MatchMethod,
        fold: bool,
        patterns: &[Pattern],
    ) -> Result<Self, CompileError> {
        let strings = || {
            patterns.iter().filter_map(move |p| match p {
                Pattern::Str(s) if fold => {
                    Some(s.to_ascii_lowercase().into_bytes().into_boxed_slice())
                }
                Pattern::Str(s) => Some(s.as_bytes().into()),
                _ => None,
            })
        };
        let words = |delims: &'static [u8]| Matcher::Words {
            words: strings().map(|w| w.trim_ascii_delims(delims)).collect(),
            fold,
            delims,
        };
        Ok(match method {
            MatchMethod::Found => Self::Found,
            MatchMethod::Str => Self::Exact(SortedSet::new(strings(), fold)),
            MatchMethod::Beg => Self::Prefix(SortedSet::new(strings(), fold)),
            MatchMethod::End => Self::Suffix(SortedSet::new(strings(), fold)),
            MatchMethod::Sub if patterns.len() <= SUB_SCAN_MAX => Self::SubScan {
                needles: strings().collect(),
                fold,
            },
            MatchMethod::Sub => {
                let alternation = patterns
                    .iter()
                    .filter_map(|p| match p {
                        Pattern::Str(s) => Some(regex::escape(s)),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join("|");
                let re = RegexBuilder::new(&alternation)
                    .unicode(false)
                    .case_insensitive(fold)
                    .build();
                Self::SubSet(re.map_err(|source| CompileError::Regex {
                    count: patterns.len(),
                    source,
                })?)
            }
            MatchMethod::Dir => words(b"/?"),
            MatchMethod::Dom => words(b"/?.:"),
            MatchMethod::Reg => {
                let regexes: Vec<&Regex> = patterns
                    .iter()
                    .filter_map(|p| match p {
                        Pattern::Regex(re) => Some(re),
                        _ => None,
                    })
                    .collect();
                match regexes.as_slice() {
                    [one] if !fold => Self::Regex((*one).clone()),
                    [one] => {
                        let re = RegexBuilder::new(one.as_str())
                            .case_insensitive(true)
                            .build();
                        Self::Regex(re.map_err(|source| CompileError::Regex { count: 1, source })?)
                    }
                    _ => {
                        let set = RegexSetBuilder::new(regexes.iter().map(|r| r.as_str()))
                            .case_insensitive(fold)
                            .build();
                        Self::RegexSet(set.map_err(|source| CompileError::Regex {
                            count: regexes.len(),
                            source,
                        })?)
                    }
                }
            }
            MatchMethod::Len => Self::Len(ranges(patterns)),
            MatchMethod::Int => Self::Int(ranges(patterns)),
            MatchMethod::Ip => Self::Ip(
                patterns
                    .iter()
                    .filter_map(|p| match p {
                        Pattern::Ip(net) => Some(*net),
                        _ => None,
                    })
                    .collect(),
            ),
        })
    }

    fn matches(&self, value: &[u8]) -> bool {
        match self {
            Self::Found => true,
            Self::Exact(set) => set.contains(value),
            Self::Prefix(set) => set.has_prefix_of(value),
            Self::Suffix(set) => set.has_suffix_of(value),
            Self::SubScan { needles, fold } => needles.iter().any(|n| contains(value, n, *fold)),
            Self::SubSet(re) | Self::Regex(re) => re.is_match(value),
            Self::RegexSet(set) => set.is_match(value),
            Self::Words {
                words,
                fold,
                delims,
            } => words.iter().any(|w| word_match(value, w, delims, *fold)),
            Self::Len(ranges) => in_ranges(ranges, value.len() as u64),
            Self::Int(ranges) => std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|n| in_ranges(ranges, n)),
            Self::Ip(nets) => {
                sample_ip(value).is_some_and(|ip| nets.iter().any(|n| n.matches_sample(ip)))
            }
        }
    }
}

/// The inclusive ranges of `len` and `int` patterns.
fn ranges(patterns: &[Pattern]) -> Box<[(u64, u64)]> {
    patterns
        .iter()
        .filter_map(|p| match p {
            Pattern::Len { min, max } | Pattern::Int { min, max } => Some((*min, *max)),
            _ => None,
        })
        .collect()
}

/// Trimming delimiters off a pattern word, as HAProxy's `dir`/`dom` matching does.
trait TrimDelims {
    fn trim_ascii_delims(self, delims: &[u8]) -> Box<[u8]>;
}

impl TrimDelims for Box<[u8]> {
    fn trim_ascii_delims(self, delims: &[u8]) -> Box<[u8]> {
        let start = self
            .iter()
            .position(|b| !delims.contains(b))
            .unwrap_or(self.len());
        let end = self
            .iter()
            .rposition(|b| !delims.contains(b))
            .map_or(start, |i| i + 1);
        self[start..end].into()
    }
}

/// Patterns sorted for binary search (lower case when folding), with their distinct lengths
/// so that prefix and suffix tests are one lookup per length.
#[derive(Debug, Clone)]
struct SortedSet {
    items: Box<[Box<[u8]>]>,
    lens: Box<[usize]>,
    fold: bool,
}

impl SortedSet {
    fn new(items: impl Iterator<Item = Box<[u8]>>, fold: bool) -> Self {
        let mut items: Vec<_> = items.collect();
        items.sort_unstable();
        items.dedup();
        let mut lens: Vec<usize> = items.iter().map(|i| i.len()).collect();
        lens.sort_unstable();
        lens.dedup();
        Self {
            items: items.into(),
            lens: lens.into(),
            fold,
        }
    }

    fn contains(&self, value: &[u8]) -> bool {
        if self.items.len() <= SMALL_SET {
            return self
                .items
                .iter()
                .any(|item| eq_folded(item, value, self.fold));
        }
        self.items
            .binary_search_by(|item| cmp_folded(item, value, self.fold))
            .is_ok()
    }

    /// Some pattern is a prefix of `value`.
    fn has_prefix_of(&self, value: &[u8]) -> bool {
        if self.items.len() <= SMALL_SET {
            let fold = self.fold;
            return self
                .items
                .iter()
                .any(|p| value.get(..p.len()).is_some_and(|v| eq_folded(v, p, fold)));
        }
        let fits = self.lens.iter().take_while(|&&l| l <= value.len());
        fits.into_iter().any(|&l| self.contains(&value[..l]))
    }

    /// Some pattern is a suffix of `value`.
    fn has_suffix_of(&self, value: &[u8]) -> bool {
        let tail = |l: usize| &value[value.len() - l..];
        if self.items.len() <= SMALL_SET {
            let fold = self.fold;
            let fits = self.items.iter().filter(|p| p.len() <= value.len());
            return fits.into_iter().any(|p| eq_folded(tail(p.len()), p, fold));
        }
        let fits = self.lens.iter().take_while(|&&l| l <= value.len());
        fits.into_iter().any(|&l| self.contains(tail(l)))
    }
}

/// Compares a (lower-case when folding) pattern with a value lower-cased on the fly.
fn cmp_folded(pattern: &[u8], value: &[u8], fold: bool) -> Ordering {
    if !fold {
        return pattern.cmp(value);
    }
    pattern
        .iter()
        .copied()
        .cmp(value.iter().map(u8::to_ascii_lowercase))
}

fn eq_folded(a: &[u8], b: &[u8], fold: bool) -> bool {
    if fold {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

fn contains(haystack: &[u8], needle: &[u8], fold: bool) -> bool {
    if needle.is_empty() {
        return true;
    }
    haystack.len() >= needle.len()
        && haystack
            .windows(needle.len())
            .any(|w| eq_folded(w, needle, fold))
}

/// HAProxy's `dir`/`dom` match: `word` occurs in `value` starting at the beginning or after a
/// delimiter, and ending at the end or before a delimiter.
fn word_match(value: &[u8], word: &[u8], delims: &[u8], fold: bool) -> bool {
    if word.len() > value.len() {
        return false;
    }
    let mut at_boundary = true;
    for start in 0..=value.len() - word.len() {
        if delims.contains(&value[start]) {
            at_boundary = true;
            continue;
        }
        if !std::mem::replace(&mut at_boundary, false) {
            continue;
        }
        let end = start + word.len();
        if eq_folded(&value[start..end], word, fold)
            && value.get(end).is_none_or(|b| delims.contains(b))
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http::{HeaderMap, HeaderValue, Method};

    use super::CompiledAcl;
    use crate::config::acl::parse_acl;
    use crate::routing::RequestView;

    /// An owned request to borrow views from.
    struct Req {
        method: Method,
        host: &'static str,
        path: &'static str,
        query: Option<&'static str>,
        headers: HeaderMap,
        client: SocketAddr,
        sni: &'static str,
    }

    impl Req {
        fn new(path: &'static str) -> Self {
            Req {
                method: Method::GET,
                host: "example.com",
                path,
                query: None,
                headers: HeaderMap::new(),
                client: "192.0.2.10:40000".parse().unwrap(),
                sni: "",
            }
        }

        fn header(mut self, name: &'static str, value: &'static str) -> Self {
            self.headers.append(name, HeaderValue::from_static(value));
            self
        }

        fn view(&self) -> RequestView<'_> {
            RequestView {
                method: &self.method,
                scheme: "http",
                host: self.host,
                path: self.path,
                query: self.query,
                headers: &self.headers,
                client: self.client,
                local_port: 80,
                frontend: "web",
                sni: self.sni,
            }
        }
    }

    fn acl(text: &str) -> CompiledAcl {
        let spec = parse_acl(text).unwrap_or_else(|e| panic!("{text:?}: {e:?}"));
        CompiledAcl::compile(&spec).unwrap()
    }

    /// Asserts which of `paths` the ACL matches.
    fn on_paths(text: &str, yes: &[&'static str], no: &[&'static str]) {
        let acl = acl(text);
        for path in yes {
            assert!(
                acl.matches(&Req::new(path).view()),
                "{text:?} should match {path:?}"
            );
        }
        for path in no {
            assert!(
                !acl.matches(&Req::new(path).view()),
                "{text:?} should not match {path:?}"
            );
        }
    }

    fn with_query(text: &str, query: &'static str) -> bool {
        let req = Req {
            query: Some(query),
            ..Req::new("/")
        };
        acl(text).matches(&req.view())
    }

    fn with_headers(text: &str, headers: &[(&'static str, &'static str)]) -> bool {
        let req = headers
            .iter()
            .fold(Req::new("/"), |r, (n, v)| r.header(n, v));
        acl(text).matches(&req.view())
    }

    fn from(text: &str, client: &str) -> bool {
        let req = Req {
            client: client.parse().unwrap(),
            ..Req::new("/")
        };
        acl(text).matches(&req.view())
    }

    #[test]
    fn ssl_fc_sni_is_the_tls_server_name() {
        let with_sni = |text: &str, sni: &'static str| {
            acl(text).matches(
                &Req {
                    sni,
                    ..Req::new("/")
                }
                .view(),
            )
        };
        assert!(with_sni("ssl_fc_sni api.example.com", "api.example.com"));
        assert!(with_sni("ssl_fc_sni_end .example.com", "api.example.com"));
        assert!(!with_sni("ssl_fc_sni api.example.com", "www.example.com"));
        assert!(
            !with_sni("ssl_fc_sni -m found", ""),
            "no SNI is an absent sample"
        );
        assert!(with_sni("ssl_fc_sni -m found", "a.example"));
    }

    #[test]
    fn path_exact() {
        on_paths("path /a /b/c", &["/a", "/b/c"], &["/a/", "/A", "/b", "/"]);
        on_paths("path -i /Admin", &["/admin", "/ADMIN"], &["/admin/x"]);
    }

    #[test]
    fn path_beg() {
        on_paths(
            "path_beg /item",
            &["/item", "/items", "/item/3"],
            &["/ite", "/x/item", "/Item"],
        );
        on_paths(
            "path_beg -i /Item /BASKET",
            &["/item/3", "/iTeM", "/basket?"],
            &["/bask"],
        );
        // Many patterns of different lengths: one lookup per distinct length.
        let many = "path_beg /b /c /dd /eee /ffff /ggggg /api/v1 /api/v2 /static";
        on_paths(
            many,
            &["/api/v2/x", "/eee", "/static/a.css", "/ffff/"],
            &["/api/v3", "/", "/ee", "/a"],
        );
    }

    #[test]
    fn path_end() {
        on_paths(
            "path_end .jpg .png",
            &["/a.jpg", "/b/c.png", ".jpg"],
            &["/a.jpeg", "/a.JPG", "/jpg"],
        );
        on_paths("path_end -i .JPG", &["/a.jpg", "/a.Jpg"], &["/a.jpgx"]);
        let many = "path_end -i .jpg .PNG .gif .webp .css .js";
        on_paths(
            many,
            &["/a.png", "/b/C.JS", "/x.webp"],
            &["/a.pn", "/s", "/a.jsx"],
        );
    }

    #[test]
    fn path_sub_few_and_many() {
        on_paths(
            "path_sub admin",
            &["/admin", "/x/admin/y", "/superadmin"],
            &["/adm/in", "/ADMIN"],
        );
        on_paths("path_sub -i Admin", &["/ADMIN", "/x/aDmIn"], &["/adm"]);
        let many = "path_sub -i alpha beta gamma delta epsilon zeta é";
        on_paths(
            many,
            &["/x/BETA/y", "/zetas", "/caf\u{e9}"],
            &["/alph", "/bet", "/"],
        );
        let many = "path_sub alpha beta gamma delta epsilon zeta";
        on_paths(many, &["/alphabet"], &["/ALPHA"]);
    }

    #[test]
    fn path_dir_matches_whole_segments() {
        on_paths(
            "path_dir /img",
            &["/img", "/img/a.png", "/static/img", "/a/img/b"],
            &["/images", "/aimg/b", "/im"],
        );
        on_paths("path_dir img/", &["/img/x"], &["/imgx"]);
        on_paths(
            "path_dir /api/v1",
            &["/api/v1", "/x/api/v1/users"],
            &["/api/v10", "/api/v", "/api"],
        );
        on_paths("path_dir -i IMG", &["/a/img/b"], &["/a/imgs"]);
    }

    #[test]
    fn dom_matches_dot_delimited_words() {
        let acl = acl("host_dom example");
        for (host, expected) in [
            ("www.example.com", true),
            ("example", true),
            ("examples.com", false),
            ("myexample.com", false),
        ] {
            let req = Req {
                host,
                ..Req::new("/")
            };
            assert_eq!(acl.matches(&req.view()), expected, "{host}");
        }
        on_paths("path_dom b.c", &["/a/b.c/d", "/b.c"], &["/ab.c", "/b.cd"]);
    }

    #[test]
    fn path_reg_one_and_many() {
        on_paths(
            r"path_reg ^/api/v[0-9]+/ \.php$",
            &["/api/v2/x", "/x/a.php"],
            &["/api/vx/", "/API/v2/"],
        );
        on_paths(r"path_reg -i ^/api/v[0-9]+/", &["/API/V2/x"], &["/apix"]);
        on_paths(
            r"path_reg -i ^/api/ ^/static/",
            &["/Static/a", "/API/"],
            &["/x/api/"],
        );
        // Unanchored, as HAProxy: a regex matches anywhere in the sample.
        on_paths("path_reg admin", &["/x/admin/y"], &["/x/adm"]);
    }

    #[test]
    fn path_len_and_len_method() {
        on_paths(
            "path_len 2 10:",
            &["/a", "/0123456789"],
            &["/", "/abc", "/01234567"],
        );
        on_paths("path -m len gt 3", &["/abc"], &["/ab"]);
        on_paths("path_len lt 0", &[], &["/"]);
    }

    #[test]
    fn found_on_a_path_always_holds() {
        on_paths("path -m found", &["/"], &[]);
    }

    #[test]
    fn no_query_or_host_is_not_found_but_an_empty_query_is() {
        let query = acl("query -m found");
        let empty = acl("query -m len 0");
        let mut r = Req::new("/");
        assert!(!query.matches(&r.view()), "no query string");
        assert!(!empty.matches(&r.view()), "no query string");
        r.query = Some("");
        assert!(query.matches(&r.view()), "a bare '?'");
        assert!(empty.matches(&r.view()), "a bare '?'");
        r.query = Some("a=1");
        assert!(query.matches(&r.view()));
        assert!(!empty.matches(&r.view()));
        let host = acl("host -m found");
        r.host = "";
        assert!(!host.matches(&r.view()), "HTTP/1.0 without Host");
        r.host = "example.com";
        assert!(host.matches(&r.view()));
    }

    #[test]
    fn any_of_several_lines() {
        let spec = parse_acl("path_beg /a")
            .unwrap()
            .or(parse_acl("path_end .css").unwrap());
        let acl = CompiledAcl::compile(&spec).unwrap();
        assert!(acl.matches(&Req::new("/a/x").view()));
        assert!(acl.matches(&Req::new("/x/s.css").view()));
        assert!(!acl.matches(&Req::new("/x/s.js").view()));
    }

    #[test]
    fn host_is_case_insensitive_and_portless() {
        let req = Req {
            host: "api.example.com",
            ..Req::new("/")
        };
        assert!(acl("host API.Example.com").matches(&req.view()));
        assert!(acl("host_end .EXAMPLE.com").matches(&req.view()));
        assert!(acl("host_beg api.").matches(&req.view()));
        assert!(acl("host_reg ^API\\.").matches(&req.view()));
        assert!(!acl("host example.com").matches(&req.view()));
        let empty = Req {
            host: "",
            ..Req::new("/")
        };
        assert!(!acl("host_sub e").matches(&empty.view()));
    }

    #[test]
    fn method_is_case_sensitive_unless_i() {
        let post = Req {
            method: Method::POST,
            ..Req::new("/")
        };
        assert!(acl("method GET POST").matches(&post.view()));
        assert!(!acl("method GET").matches(&post.view()));
        assert!(!acl("method post").matches(&post.view()));
        assert!(acl("method -i post").matches(&post.view()));
    }

    #[test]
    fn query_exact() {
        assert!(with_query("query a=1&b=2", "a=1&b=2"));
        assert!(!with_query("query a=1", "a=1&b=2"));
        assert!(with_query("query_sub b=2", "a=1&b=2"));
    }

    #[test]
    fn hdr_any_value_of_any_occurrence() {
        let accept = [
            ("accept", "text/html, application/json;q=0.9"),
            ("accept", "image/png"),
        ];
        assert!(with_headers("hdr(accept) image/png", &accept));
        assert!(with_headers("hdr(Accept) application/json;q=0.9", &accept));
        assert!(with_headers("hdr_beg(accept) application/", &accept));
        assert!(!with_headers(
            "hdr(accept) 'text/html, application/json;q=0.9'",
            &accept
        ));
        assert!(with_headers(
            "fhdr(accept) 'text/html, application/json;q=0.9'",
            &accept
        ));
        assert!(!with_headers("fhdr(accept) text/html", &accept));
        assert!(!with_headers("hdr(accept) image/gif", &accept));
        assert!(!with_headers("hdr(x-other) image/png", &accept));
    }

    #[test]
    fn hdr_commas_inside_quotes_do_not_split() {
        let h = [("x-list", r#"a, "b, \"c" ,d"#)];
        assert!(with_headers(r#"hdr(x-list) '"b, \"c"'"#, &h));
        assert!(with_headers("hdr(x-list) d", &h));
        assert!(!with_headers("hdr(x-list) '\"b'", &h));
    }

    #[test]
    fn hdr_case_and_methods() {
        let h = [("x-tenant", "Acme")];
        assert!(with_headers("hdr(X-TENANT) Acme", &h));
        assert!(!with_headers("hdr(x-tenant) acme", &h));
        assert!(with_headers("hdr(x-tenant) -i ACME", &h));
        assert!(with_headers("hdr_sub(x-tenant) cm", &h));
        assert!(with_headers("hdr_end(x-tenant) me", &h));
        assert!(with_headers("hdr_reg(x-tenant) ^A.m", &h));
        assert!(with_headers("hdr_len(x-tenant) 4", &h));
        assert!(with_headers("hdr_dir(x-tenant) Acme", &h));
    }

    #[test]
    fn hdr_found_and_absent() {
        assert!(with_headers("hdr(x-debug) -m found", &[("x-debug", "")]));
        assert!(!with_headers("hdr(x-debug) -m found", &[("x-other", "1")]));
        assert!(with_headers("hdr_len(x-debug) 0", &[("x-debug", "")]));
        // An absent header is no sample, not an empty one.
        assert!(!with_headers("hdr_len(x-debug) 0", &[]));
    }

    #[test]
    fn hdr_occurrence() {
        let xff = [
            ("x-forwarded-for", "10.0.0.1, 10.0.0.2"),
            ("x-forwarded-for", "10.0.0.3"),
        ];
        assert!(with_headers("hdr(x-forwarded-for,1) 10.0.0.1", &xff));
        assert!(!with_headers("hdr(x-forwarded-for,1) 10.0.0.2", &xff));
        assert!(with_headers("hdr(x-forwarded-for,2) 10.0.0.2", &xff));
        assert!(with_headers("hdr(x-forwarded-for,-1) 10.0.0.3", &xff));
        assert!(with_headers("hdr(x-forwarded-for,-3) 10.0.0.1", &xff));
        assert!(!with_headers("hdr(x-forwarded-for,-4) -m found", &xff));
        assert!(!with_headers("hdr(x-forwarded-for,4) -m found", &xff));
        assert!(with_headers(
            "fhdr(x-forwarded-for,1) '10.0.0.1, 10.0.0.2'",
            &xff
        ));
    }

    #[test]
    fn hdr_ip() {
        let xff = [("x-forwarded-for", "203.0.113.9, 10.1.2.3")];
        assert!(with_headers("hdr_ip(x-forwarded-for) 10.0.0.0/8", &xff));
        assert!(!with_headers("hdr_ip(x-forwarded-for,1) 10.0.0.0/8", &xff));
        assert!(!with_headers(
            "hdr_ip(x-forwarded-for) 192.168.0.0/16",
            &xff
        ));
        assert!(!with_headers(
            "hdr_ip(x-forwarded-for) 10.0.0.0/8",
            &[("x-forwarded-for", "unknown")]
        ));
        assert!(with_headers(
            "hdr(x-real-ip) -m ip ::1",
            &[("x-real-ip", "::1")]
        ));
        // As HAProxy reads addresses: a port (or anything not a digit or dot) may follow an
        // IPv4 address, leading zeros are decimal; an IPv6 address must be whole.
        let ip = |value| with_headers("hdr_ip(x-ip) 10.0.0.0/8", &[("x-ip", value)]);
        for value in ["10.1.2.3:80", "010.1.2.3", "10.1.2.3abc", "::ffff:10.1.2.3"] {
            assert!(ip(value), "{value}");
        }
        for value in [
            "10.1.2",
            "10.1.2.3.4",
            "10.1.2.256",
            "1O.1.2.3",
            "",
            "10..2.3",
            "::1",
        ] {
            assert!(!ip(value), "{value}");
        }
        assert!(with_headers(
            "hdr_ip(x-ip) 2001:db8::/32",
            &[("x-ip", "2001:db8::7")]
        ));
        assert!(!with_headers(
            "hdr_ip(x-ip) 2001:db8::/32",
            &[("x-ip", "2001:db8::7:80x")]
        ));
    }

    #[test]
    fn hdr_host_uses_the_header_then_the_canonical_host() {
        let with_port = [("host", "Shop.Example.com:8080")];
        assert!(with_headers("hdr(host) shop.example.com:8080", &with_port));
        assert!(with_headers("hdr_beg(host) shop.example.com", &with_port));
        assert!(!with_headers("hdr(host) shop.example.com", &with_port));
        // HTTP/2: no Host header, the :authority became the canonical host.
        assert!(with_headers("hdr(host) EXAMPLE.com", &[]));
        let no_host = Req {
            host: "",
            ..Req::new("/")
        };
        assert!(!acl("hdr(host) -m found").matches(&no_host.view()));
    }

    #[test]
    fn url_param() {
        assert!(with_query("url_param(id) 42", "id=42"));
        assert!(with_query("urlp(id) 42", "a=1&id=42&b=2"));
        assert!(with_query("urlp(id) 7", "id=42&id=7"));
        // The name must be the whole parameter name, not a suffix or prefix of another.
        assert!(!with_query("urlp(id) 42", "uid=42"));
        assert!(!with_query("urlp(id) 42", "id2=42"));
        assert!(!with_query("urlp(id) -m found", "xid=1&idx=2"));
        // Empty value, and a parameter without '=' (absent, as in HAProxy).
        assert!(with_query("urlp(id) -m found", "id="));
        assert!(with_query("urlp(id) ''", "a=1&id=&b=2"));
        assert!(with_query("urlp_len(id) 0", "id="));
        assert!(!with_query("urlp(id) -m found", "id"));
        assert!(!with_query("urlp(id) -m found", "id&x=1"));
        assert!(!with_query("urlp(id) -m found", ""));
        // Values are not percent-decoded; '=' inside a value is kept.
        assert!(with_query("urlp(q) a%20b", "q=a%20b"));
        assert!(with_query("urlp(q) a=b", "q=a=b"));
        assert!(with_query("urlp_beg(lang) -i EN", "lang=en-GB"));
        // Names are case-sensitive, as in HAProxy.
        assert!(!with_query("urlp(ID) 1", "id=1"));
        // ';' and '?' end a parameter too, as in HAProxy.
        assert!(with_query("urlp(q) abc", "x=1;q=abc"));
        assert!(with_query("urlp(q) abc", "q=abc;x=1"));
        assert!(with_query("urlp(q) abc", "?q=abc"));
        assert!(with_query("urlp(q) abc", "q=abc?q=z"));
        assert!(with_query("urlp(q) z", "q=abc?q=z"));
        assert!(!with_query("urlp(q) abc;x=1", "q=abc;x=1"));
        assert!(!with_query("urlp(q) -m found", "a=1"));
        assert!(!acl("urlp(q) -m found").matches(&Req::new("/").view()));
    }

    #[test]
    fn src_ipv4_ipv6_and_mapped() {
        assert!(from("src 10.0.0.0/8", "10.9.8.7:1234"));
        assert!(!from("src 10.0.0.0/8", "11.0.0.1:1234"));
        assert!(from("src 192.0.2.1 2001:db8::/32", "[2001:db8::42]:443"));
        assert!(!from("src 2001:db8::/32", "[2001:db9::1]:443"));
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
        assert!(from("src 10.0.0.0/8", "[::ffff:10.1.1.1]:5000"));
        assert!(from("src ::ffff:10.0.0.0/104", "10.1.1.1:5000"));
        assert!(!from("src 10.0.0.0/8", "[::1]:5000"));
        assert!(from("src ::1 127.0.0.1", "[::1]:5000"));
        assert!(from("src -m found", "[::1]:5000"));
        // Across families, as HAProxy matches: an IPv4 client is ::ffff:a.b.c.d to an IPv6
        // network; an IPv6 client carrying an IPv4 address (IPv4-compatible, 6to4) is that
        // address to an IPv4 network.
        assert!(from("src ::/0", "10.1.2.3:5000"));
        assert!(from("src ::ffff:0:0/96", "10.1.2.3:5000"));
        assert!(!from("src 2001:db8::/32", "10.1.2.3:5000"));
        assert!(from("src 10.1.0.0/16", "[::10.1.2.3]:5000"));
        assert!(from("src 10.1.0.0/16", "[2002:a01:203::1]:5000"));
        assert!(!from("src 10.2.0.0/16", "[2002:a01:203::1]:5000"));
        assert!(from("src 0.0.0.0/0", "[::1]:5000"));
        assert!(!from("src 0.0.0.0/0", "[2001:db8::1]:5000"));
    }

    #[test]
    fn exact_sets_dedupe_and_fold() {
        let acl = acl("path -i /B /a /c /A /b /d /e /f /g /h /i /j");
        for path in ["/a", "/J", "/e"] {
            assert!(acl.matches(&Req::new(path).view()), "{path}");
        }
        assert!(!acl.matches(&Req::new("/k").view()));
        assert!(!acl.matches(&Req::new("/").view()));
    }
}
