//! Fetch keywords (`path_beg`, `hdr(NAME)`, `src`, ...): the table of what each fetches and
//! which match suffixes it takes, and parsing a fetch word with typo suggestions.

use http::HeaderName;

use crate::config::acl::lexer::Token;
use crate::config::acl::{AclError, Fetch, MatchMethod};
use crate::config::diag::did_you_mean;

/// A fetch keyword: its canonical name, what it fetches and which match suffixes it takes.
struct Keyword {
    name: &'static str,
    kind: FetchKind,
    suffixes: &'static [MatchMethod],
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FetchKind {
    Path,
    Query,
    Host,
    Method,
    Src,
    Hdr,
    Fhdr,
    UrlParam,
    SslSni,
    DstPort,
    SslFcSni,
}

const STRING_SUFFIXES: &[MatchMethod] = {
    use MatchMethod::*;
    &[Beg, End, Sub, Dir, Dom, Reg, Len]
};
const HDR_SUFFIXES: &[MatchMethod] = {
    use MatchMethod::*;
    &[Beg, End, Sub, Dir, Dom, Reg, Len, Ip]
};

const KEYWORDS: &[Keyword] = &[
    Keyword {
        name: "path",
        kind: FetchKind::Path,
        suffixes: STRING_SUFFIXES,
    },
    Keyword {
        name: "query",
        kind: FetchKind::Query,
        suffixes: STRING_SUFFIXES,
    },
    Keyword {
        name: "host",
        kind: FetchKind::Host,
        suffixes: STRING_SUFFIXES,
    },
    Keyword {
        name: "method",
        kind: FetchKind::Method,
        suffixes: &[],
    },
    Keyword {
        name: "src",
        kind: FetchKind::Src,
        suffixes: &[],
    },
    Keyword {
        name: "hdr",
        kind: FetchKind::Hdr,
        suffixes: HDR_SUFFIXES,
    },
    Keyword {
        name: "req.hdr",
        kind: FetchKind::Hdr,
        suffixes: &[],
    },
    Keyword {
        name: "fhdr",
        kind: FetchKind::Fhdr,
        suffixes: &[],
    },
    Keyword {
        name: "req.fhdr",
        kind: FetchKind::Fhdr,
        suffixes: &[],
    },
    Keyword {
        name: "url_param",
        kind: FetchKind::UrlParam,
        suffixes: STRING_SUFFIXES,
    },
    Keyword {
        name: "urlp",
        kind: FetchKind::UrlParam,
        suffixes: STRING_SUFFIXES,
    },
    Keyword {
        name: "req.ssl_sni",
        kind: FetchKind::SslSni,
        suffixes: &[],
    },
    Keyword {
        name: "req_ssl_sni",
        kind: FetchKind::SslSni,
        suffixes: &[],
    },
    Keyword {
        name: "dst_port",
        kind: FetchKind::DstPort,
        suffixes: &[],
    },
    Keyword {
        name: "ssl_fc_sni",
        kind: FetchKind::SslFcSni,
        suffixes: STRING_SUFFIXES,
    },
];

const FETCH_HELP: &str = "expected one of path, query, host, method, src, hdr(NAME), \
     fhdr(NAME), url_param(NAME) (or urlp), ssl_fc_sni; path, query, host, hdr, url_param and \
     ssl_fc_sni also with a \
     match suffix _beg, _end, _sub, _dir, _dom, _reg, _len (hdr also _ip), e.g. path_beg, \
     hdr_end(host); in tcp mode also req.ssl_sni and dst_port";

fn takes_arg(kind: FetchKind) -> bool {
    matches!(kind, FetchKind::Hdr | FetchKind::Fhdr | FetchKind::UrlParam)
}

/// Finds a keyword by its full name, e.g. `path_beg`: the keyword and the implied method.
fn lookup_keyword(word: &str) -> Option<(&'static Keyword, Option<MatchMethod>)> {
    KEYWORDS.iter().find_map(|kw| {
        let rest = word.strip_prefix(kw.name)?;
        if rest.is_empty() {
            return Some((kw, None));
        }
        let method = kw
            .suffixes
            .iter()
            .copied()
            .find(|m| rest.strip_prefix('_') == Some(m.name()))?;
        Some((kw, Some(method)))
    })
}

/// Every full fetch name, for typo suggestions.
fn all_fetch_names() -> impl Iterator<Item = String> {
    KEYWORDS.iter().flat_map(|kw| {
        std::iter::once(kw.name.to_owned()).chain(
            kw.suffixes
                .iter()
                .map(|m| format!("{}_{}", kw.name, m.name())),
        )
    })
}

fn suggest(word: &str) -> Option<String> {
    let names: Vec<String> = all_fetch_names().collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    did_you_mean(word, &refs).map(str::to_owned)
}

/// Parses the fetch word, e.g. `hdr_beg(Host)`: the fetch, the implied method, the default one.
pub(super) fn parse_fetch(
    t: &Token,
) -> Result<(Fetch, Option<MatchMethod>, MatchMethod), AclError> {
    let word = t.text.as_str();
    let (kw_word, arg) = match word.split_once('(') {
        Some((kw, rest)) => match rest.strip_suffix(')') {
            Some(arg) => (kw, Some(arg)),
            None => {
                return Err(AclError::new(
                    t.offset,
                    format!("missing \")\" in \"{word}\""),
                ));
            }
        },
        None => (word, None),
    };
    let Some((kw, implied)) = lookup_keyword(kw_word) else {
        let mut message = format!("unknown fetch \"{kw_word}\"");
        if kw_word.starts_with('-') {
            message = format!("expected a fetch before \"{kw_word}\"");
        } else if let Some(s) = suggest(kw_word) {
            return Err(AclError::new(t.offset, message).help(format!("did you mean \"{s}\"?")));
        }
        return Err(AclError::new(t.offset, message).help(FETCH_HELP));
    };
    // Offset of the argument, exact when the word was written without quotes or escapes.
    let arg_offset = if t.verbatim {
        t.offset + kw_word.len() + 1
    } else {
        t.offset
    };
    let fetch = match (kw.kind, arg) {
        (kind, None) if takes_arg(kind) => {
            let what = if kind == FetchKind::UrlParam {
                "a parameter name"
            } else {
                "a header name"
            };
            return Err(
                AclError::new(t.offset, format!("\"{kw_word}\" needs {what}"))
                    .help(format!("write {kw_word}(NAME)")),
            );
        }
        (kind, Some(_)) if !takes_arg(kind) => {
            return Err(AclError::new(
                arg_offset,
                format!("\"{kw_word}\" takes no argument"),
            ));
        }
        (FetchKind::Hdr | FetchKind::Fhdr, Some(arg)) => {
            let (name, occ) = match arg.split_once(',') {
                Some((name, occ)) => {
                    let at = arg_offset + name.len() + 1;
                    match occ.trim().parse::<i32>() {
                        Ok(n) if n != 0 => (name, Some(n)),
                        _ => {
                            return Err(AclError::new(at, format!("invalid occurrence \"{occ}\""))
                                .help("a non-zero integer: 1 is the first value, -1 the last"));
                        }
                    }
                }
                None => (arg, None),
            };
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                AclError::new(arg_offset, format!("invalid header name \"{name}\""))
            })?;
            match kw.kind {
                FetchKind::Hdr => Fetch::Header {
                    name,
                    occurrence: occ,
                },
                _ => Fetch::FullHeader {
                    name,
                    occurrence: occ,
                },
            }
        }
        (_, Some(arg)) => {
            if arg.is_empty() || arg.contains(',') {
                return Err(AclError::new(
                    arg_offset,
                    format!("invalid parameter name \"{arg}\""),
                ));
            }
            Fetch::UrlParam(arg.to_owned())
        }
        (FetchKind::Path, None) => Fetch::Path,
        (FetchKind::Query, None) => Fetch::Query,
        (FetchKind::Host, None) => Fetch::Host,
        (FetchKind::Method, None) => Fetch::Method,
        (FetchKind::SslSni, None) => Fetch::SslSni,
        (FetchKind::DstPort, None) => Fetch::DstPort,
        (FetchKind::SslFcSni, None) => Fetch::SslFcSni,
        (_, None) => Fetch::Src,
    };
    let default = match fetch {
        Fetch::Src => MatchMethod::Ip,
        Fetch::DstPort => MatchMethod::Int,
        _ => MatchMethod::Str,
    };
    Ok((fetch, implied, default))
}
