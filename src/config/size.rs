//! Byte sizes (`65536`, `"64k"`, `"1m"`): binary multiples, as HAProxy's `tune.bufsize` users expect.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum SizeError {
    #[error("invalid size \"{0}\"")]
    Invalid(String),
    #[error("size \"{0}\" is too large")]
    TooLarge(String),
}

impl SizeError {
    pub(crate) fn help(&self) -> &'static str {
        match self {
            SizeError::Invalid(_) => {
                "write bytes as an integer, or a string like \"64k\" or \"1m\""
            }
            SizeError::TooLarge(_) => "sizes must fit in the address space",
        }
    }
}

/// Parses `"65536"`, `"64k"` (x1024) or `"1m"` (x1024²), case-insensitive.
pub(crate) fn parse(s: &str) -> Result<usize, SizeError> {
    let (number, scale) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1024),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SizeError::Invalid(s.to_owned()));
    }
    number
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| SizeError::TooLarge(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::{SizeError, parse};

    #[test]
    fn sizes() {
        assert_eq!(parse("65536"), Ok(65536));
        assert_eq!(parse("64k"), Ok(65536));
        assert_eq!(parse("64K"), Ok(65536));
        assert_eq!(parse("1m"), Ok(1 << 20));
        assert_eq!(parse("k"), Err(SizeError::Invalid("k".into())));
        assert_eq!(parse("6 4k"), Err(SizeError::Invalid("6 4k".into())));
        assert_eq!(parse("64kb"), Err(SizeError::Invalid("64kb".into())));
        assert!(matches!(
            parse("99999999999999999999999k"),
            Err(SizeError::TooLarge(_))
        ));
    }
}
