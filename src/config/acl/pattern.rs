//! One ACL line after its fetch: flags (`-i`, `-m METHOD`, `--`) and the patterns, each
//! validated (and regexes compiled) for the line's match method.

use std::net::IpAddr;

use regex::bytes::RegexBuilder;

use crate::config::acl::fetch::parse_fetch;
use crate::config::acl::lexer::Token;
use crate::config::acl::{AclError, AclTest, Fetch, IpNet, MatchMethod, Pattern};

/// Parses one ACL line given as words; `end` is the offset just past it (for "missing" errors).
pub(super) fn parse_test(tokens: &[Token], end: usize) -> Result<AclTest, AclError> {
    let Some((first, rest)) = tokens.split_first() else {
        return Err(
            AclError::new(end, "empty acl").help("write FETCH PATTERN..., e.g. \"path_beg /api\"")
        );
    };
    let (fetch, implied, default) = parse_fetch(first)?;
    let mut method = implied.unwrap_or(default);
    let mut ignore_case = false;
    let mut i = 0;
    while let Some(t) = rest.get(i) {
        let word = t.text.as_str();
        match word {
            "-i" => ignore_case = true,
            "--" => {
                i += 1;
                break;
            }
            "-m" => {
                if implied.is_some() {
                    return Err(AclError::new(
                        t.offset,
                        format!(
                            "\"{}\" already implies \"-m {}\"",
                            first.text,
                            method.name()
                        ),
                    )
                    .help("use the plain fetch with -m, e.g. \"path -m sub /x\""));
                }
                let Some(m) = rest.get(i + 1) else {
                    return Err(AclError::new(t.end, "\"-m\" needs a match method")
                        .help("one of str, beg, end, sub, dir, dom, reg, len, found, ip, int"));
                };
                method = MatchMethod::ALL
                    .iter()
                    .find(|(n, _)| *n == m.text)
                    .map(|(_, m)| *m)
                    .ok_or_else(|| {
                        AclError::new(m.offset, format!("unknown match method \"{}\"", m.text))
                            .help("one of str, beg, end, sub, dir, dom, reg, len, found, ip, int")
                    })?;
                i += 1;
            }
            "-f" | "-M" => {
                return Err(AclError::new(t.offset, "pattern files are not supported")
                    .help("list the patterns on the acl line"));
            }
            _ if word.len() > 1
                && word.starts_with('-')
                && word[1..].bytes().all(|b| b.is_ascii_alphabetic()) =>
            {
                return Err(AclError::new(t.offset, format!("unknown flag \"{word}\""))
                    .help("flags are -i and -m METHOD; write \"--\" before a pattern that starts with '-'"));
            }
            _ => break,
        }
        i += 1;
    }
    let patterns = &rest[i..];
    if fetch == Fetch::Src && !matches!(method, MatchMethod::Ip | MatchMethod::Found) {
        return Err(AclError::new(
            first.offset,
            format!(
                "\"src\" is an address: \"-m {}\" does not apply",
                method.name()
            ),
        )
        .help("match it against addresses and CIDRs, e.g. \"src 10.0.0.0/8 ::1\""));
    }
    let integer = fetch == Fetch::DstPort;
    if integer != (method == MatchMethod::Int) && method != MatchMethod::Found {
        let message = if integer {
            format!(
                "\"{}\" is an integer: \"-m {}\" does not apply",
                first.text,
                method.name()
            )
        } else {
            format!("\"-m int\" does not apply to \"{}\"", first.text)
        };
        return Err(AclError::new(first.offset, message)
            .help("match dst_port against ports and ranges, e.g. \"dst_port 443 8000:8080\""));
    }
    let patterns = match method {
        MatchMethod::Found => match patterns.first() {
            Some(p) => return Err(AclError::new(p.offset, "\"-m found\" takes no pattern")),
            None => Vec::new(),
        },
        _ if patterns.is_empty() => {
            let at = tokens.last().map_or(end, |t| t.end);
            return Err(
                AclError::new(at, format!("missing pattern after \"{}\"", first.text))
                    .help("write FETCH PATTERN..., e.g. \"path_beg /api\""),
            );
        }
        MatchMethod::Reg => patterns
            .iter()
            .map(|p| parse_regex(p, ignore_case))
            .collect::<Result<_, _>>()?,
        MatchMethod::Len => parse_lengths(patterns)?,
        MatchMethod::Int => parse_lengths(patterns)?
            .into_iter()
            .map(|p| match p {
                Pattern::Len { min, max } => Pattern::Int { min, max },
                other => other,
            })
            .collect(),
        MatchMethod::Ip => patterns.iter().map(parse_ip).collect::<Result<_, _>>()?,
        MatchMethod::Dir | MatchMethod::Dom => {
            let delims: &[char] = if method == MatchMethod::Dir {
                &['/', '?']
            } else {
                &['/', '?', '.', ':']
            };
            if let Some(p) = patterns
                .iter()
                .find(|p| p.text.trim_matches(delims).is_empty())
            {
                return Err(AclError::new(
                    p.offset,
                    format!("pattern \"{}\" has nothing besides delimiters", p.text),
                ));
            }
            patterns
                .iter()
                .map(|p| Pattern::Str(p.text.clone()))
                .collect()
        }
        _ => patterns
            .iter()
            .map(|p| Pattern::Str(p.text.clone()))
            .collect(),
    };
    Ok(AclTest {
        fetch,
        method,
        ignore_case,
        patterns,
    })
}

fn parse_regex(t: &Token, ignore_case: bool) -> Result<Pattern, AclError> {
    match RegexBuilder::new(&t.text)
        .case_insensitive(ignore_case)
        .build()
    {
        Ok(re) => Ok(Pattern::Regex(re)),
        Err(e) => {
            // The syntax error text is a multi-line diagram; keep its last "error: ..." line.
            let full = e.to_string();
            let reason = full
                .lines()
                .rev()
                .find_map(|l| l.trim().strip_prefix("error: "))
                .unwrap_or(full.trim());
            Err(AclError::new(
                t.offset,
                format!("invalid regex \"{}\": {}", t.text, reason.to_lowercase()),
            ))
        }
    }
}

/// Lengths: `N`, `N:M`, `N:`, `:M`, or an operator word (`eq ge gt le lt`) before `N`.
fn parse_lengths(tokens: &[Token]) -> Result<Vec<Pattern>, AclError> {
    let mut out = Vec::new();
    let mut op: Option<&Token> = None;
    let invalid = |t: &Token| {
        AclError::new(t.offset, format!("invalid length \"{}\"", t.text))
            .help("an integer, a range such as 10:20, 10: or :20, or eq/ge/gt/le/lt followed by an integer")
    };
    for t in tokens {
        let word = t.text.as_str();
        if matches!(word, "eq" | "ge" | "gt" | "le" | "lt") && op.is_none() {
            op = Some(t);
            continue;
        }
        let int = |s: &str| s.parse::<u64>().map_err(|_| invalid(t));
        let (min, max) = match (op.take().map(|o| o.text.as_str()), word.split_once(':')) {
            (None, Some((a, b))) if !(a.is_empty() && b.is_empty()) => {
                let min = if a.is_empty() { 0 } else { int(a)? };
                let max = if b.is_empty() { u64::MAX } else { int(b)? };
                (min, max)
            }
            (None, None) | (Some("eq"), None) => (int(word)?, int(word)?),
            (Some("ge"), None) => (int(word)?, u64::MAX),
            (Some("gt"), None) => (int(word)?.saturating_add(1), u64::MAX),
            (Some("le"), None) => (0, int(word)?),
            (Some("lt"), None) => match int(word)?.checked_sub(1) {
                Some(max) => (0, max),
                None => (1, 0), // "lt 0": matches nothing
            },
            _ => return Err(invalid(t)),
        };
        if min > max && word.contains(':') {
            return Err(AclError::new(t.offset, format!("empty range \"{word}\"")));
        }
        out.push(Pattern::Len { min, max });
    }
    match op {
        Some(o) => Err(AclError::new(
            o.end,
            format!("\"{}\" needs an integer after it", o.text),
        )),
        None => Ok(out),
    }
}

/// An address, `ADDR/PREFIX`, or (IPv4) `ADDR/NETMASK`, as a `src` or `-m ip` pattern.
fn parse_ip(t: &Token) -> Result<Pattern, AclError> {
    parse_net(&t.text).map(Pattern::Ip).map_err(|mut e| {
        // An error in the prefix points at it only when the word is as written (unquoted).
        if e.offset > 0 && !t.verbatim {
            e.offset = 0;
        }
        e.offset += t.offset;
        e
    })
}

/// An address, `ADDR/PREFIX`, or (IPv4) `ADDR/NETMASK`: the networks of `src` patterns and of a
/// bind's `accept_proxy`. Error offsets are relative to `word`.
pub fn parse_net(word: &str) -> Result<IpNet, AclError> {
    let (addr, prefix) = word
        .split_once('/')
        .map_or((word, None), |(a, p)| (a, Some(p)));
    let invalid = || {
        AclError::new(0, format!("invalid address or cidr \"{word}\""))
            .help("e.g. 10.0.0.1, 10.0.0.0/8, 10.0.0.0/255.0.0.0, ::1 or 2001:db8::/32")
    };
    let ip: IpAddr = addr.parse().map_err(|_| invalid())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() => match p.parse::<u32>()
        {
            Ok(n) if n <= max => n,
            _ => {
                return Err(AclError::new(
                    addr.len() + 1,
                    format!("prefix length {p} is out of range 0..={max}"),
                ));
            }
        },
        Some(p) => match (ip, p.parse::<std::net::Ipv4Addr>()) {
            (IpAddr::V4(_), Ok(mask))
                if u32::from(mask).leading_ones() + u32::from(mask).trailing_zeros() == 32 =>
            {
                u32::from(mask).leading_ones()
            }
            _ => return Err(invalid()),
        },
    };
    Ok(IpNet::new(ip, prefix))
}
