//! One ACL line after its fetch: flags (`-i`, `-m METHOD`, `--`) and the patterns, each
//! validated (and regexes compiled) for the line's match method.

use std::net::IpAddr;

use regex::bytes::RegexBuilder;

use crate::config::acl::fetch::parse_fetch;
use crate::config::acl::lexer::Token;
use crate::config::acl::{AclError, AclTest, Fetch, IpNet, MatchMethod, Pattern};

/// Parses one ACL line given as words; `end` is the offset just past it (for "missing" errors).
/// Every invalid pattern is an error of its own.
pub(super) fn parse_test(tokens: &[Token], end: usize) -> Result<AclTest, Vec<AclError>> {
    let Some((first, rest)) = tokens.split_first() else {
        let e =
            AclError::new(end, "empty acl").help("write FETCH PATTERN..., e.g. \"path_beg /api\"");
        return Err(e.into());
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
                    let message = format!(
                        "\"{}\" already implies \"-m {}\"",
                        first.text,
                        method.name()
                    );
                    let e = AclError::new(t.offset, message)
                        .help("use the plain fetch with -m, e.g. \"path -m sub /x\"");
                    return Err(e.into());
                }
                let Some(m) = rest.get(i + 1) else {
                    let e = AclError::new(t.end, "\"-m\" needs a match method")
                        .help("one of str, beg, end, sub, dir, dom, reg, len, found, ip, int");
                    return Err(e.into());
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
                let e = AclError::new(t.offset, "pattern files are not supported")
                    .help("list the patterns on the acl line");
                return Err(e.into());
            }
            _ if word.len() > 1
                && word.starts_with('-')
                && word[1..].bytes().all(|b| b.is_ascii_alphabetic()) =>
            {
                let e = AclError::new(t.offset, format!("unknown flag \"{word}\""))
                    .help("flags are -i and -m METHOD; write \"--\" before a pattern that starts with '-'");
                return Err(e.into());
            }
            _ => break,
        }
        i += 1;
    }
    let patterns = &rest[i..];
    if fetch == Fetch::Src && !matches!(method, MatchMethod::Ip | MatchMethod::Found) {
        let message = format!(
            "\"src\" is an address: \"-m {}\" does not apply",
            method.name()
        );
        let e = AclError::new(first.offset, message)
            .help("match it against addresses and CIDRs, e.g. \"src 10.0.0.0/8 ::1\"");
        return Err(e.into());
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
        let e = AclError::new(first.offset, message)
            .help("match dst_port against ports and ranges, e.g. \"dst_port 443 8000:8080\"");
        return Err(e.into());
    }
    let patterns = match method {
        MatchMethod::Found => match patterns.first() {
            Some(p) => {
                return Err(AclError::new(p.offset, "\"-m found\" takes no pattern").into());
            }
            None => Vec::new(),
        },
        _ if patterns.is_empty() => {
            let at = tokens.last().map_or(end, |t| t.end);
            let e = AclError::new(at, format!("missing pattern after \"{}\"", first.text))
                .help("write FETCH PATTERN..., e.g. \"path_beg /api\"");
            return Err(e.into());
        }
        MatchMethod::Reg => every(patterns.iter().map(|p| parse_regex(p, ignore_case)))?,
        MatchMethod::Len => parse_lengths(patterns)?,
        MatchMethod::Int => parse_lengths(patterns)?
            .into_iter()
            .map(|p| match p {
                Pattern::Len { min, max } => Pattern::Int { min, max },
                other => other,
            })
            .collect(),
        MatchMethod::Ip => every(patterns.iter().map(parse_ip))?,
        MatchMethod::Dir | MatchMethod::Dom => {
            let delims: &[char] = if method == MatchMethod::Dir {
                &['/', '?']
            } else {
                &['/', '?', '.', ':']
            };
            every(patterns.iter().map(|p| {
                if p.text.trim_matches(delims).is_empty() {
                    let message = format!("pattern \"{}\" has nothing besides delimiters", p.text);
                    Err(AclError::new(p.offset, message))
                } else {
                    Ok(Pattern::Str(p.text.clone()))
                }
            }))?
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

/// The patterns if all are valid, else the error of every invalid one.
fn every(
    results: impl Iterator<Item = Result<Pattern, AclError>>,
) -> Result<Vec<Pattern>, Vec<AclError>> {
    let (mut patterns, mut errors) = (Vec::new(), Vec::new());
    for result in results {
        match result {
            Ok(p) => patterns.push(p),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(patterns)
    } else {
        Err(errors)
    }
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
fn parse_lengths(tokens: &[Token]) -> Result<Vec<Pattern>, Vec<AclError>> {
    let mut lengths = Vec::new();
    let mut op: Option<&Token> = None;
    for t in tokens {
        if matches!(t.text.as_str(), "eq" | "ge" | "gt" | "le" | "lt") && op.is_none() {
            op = Some(t);
            continue;
        }
        lengths.push(length(t, op.take().map(|o| o.text.as_str())));
    }
    if let Some(o) = op {
        let message = format!("\"{}\" needs an integer after it", o.text);
        lengths.push(Err(AclError::new(o.end, message)));
    }
    every(lengths.into_iter())
}

/// One length pattern, after its operator word if it has one.
fn length(t: &Token, op: Option<&str>) -> Result<Pattern, AclError> {
    let word = t.text.as_str();
    let invalid = || {
        AclError::new(t.offset, format!("invalid length \"{word}\""))
            .help("an integer, a range such as 10:20, 10: or :20, or eq/ge/gt/le/lt followed by an integer")
    };
    let int = |s: &str| s.parse::<u64>().map_err(|_| invalid());
    let (min, max) = match (op, word.split_once(':')) {
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
        _ => return Err(invalid()),
    };
    if min > max && word.contains(':') {
        return Err(AclError::new(t.offset, format!("empty range \"{word}\"")));
    }
    Ok(Pattern::Len { min, max })
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
