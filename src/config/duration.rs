//! Duration values (`"10s"`, `"250ms"`, `"1m30s"`): the only way the config spells time.

use std::time::Duration;

use thiserror::Error;

/// Units in the order help lines list them, with their length in nanoseconds.
const UNITS: &[(&str, u128)] = &[
    ("us", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
    ("d", 86_400 * 1_000_000_000),
];

/// The longest duration, HAProxy's: 2147483647 ms (about 24.8 days). Every timer wasp arms
/// stays far from the limits of the clock's arithmetic.
pub const MAX_DURATION: Duration = Duration::from_millis(i32::MAX as u64);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("missing unit in duration \"{0}\"")]
    MissingUnit(String),
    #[error("unknown unit \"{unit}\" in duration \"{text}\"")]
    UnknownUnit { unit: String, text: String },
    #[error("invalid duration \"{0}\"")]
    Invalid(String),
    #[error("duration \"{0}\" is too large")]
    TooLarge(String),
}

impl DurationError {
    pub(crate) fn help(&self) -> String {
        match self {
            DurationError::MissingUnit(n) if n.bytes().all(|b| b.is_ascii_digit()) => {
                format!("add a unit, e.g. \"{n}s\" or \"{n}ms\"")
            }
            DurationError::UnknownUnit { .. } => "units are us, ms, s, m, h and d".to_owned(),
            DurationError::TooLarge(_) => {
                "the maximum is \"2147483647ms\" (about 24.8 days), as in HAProxy".to_owned()
            }
            _ => "write a number and a unit, e.g. \"10s\", \"250ms\" or \"1m30s\"".to_owned(),
        }
    }
}

/// Parses `"10s"`, `"250ms"`, `"1m"`, `"1h"`, `"1m30s"`, `"500us"`, `"1d"`. A bare number is
/// rejected: the unit is never implied.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    parse(s).map_err(|e| format!("{e}; {}", e.help()))
}

pub(crate) fn parse(s: &str) -> Result<Duration, DurationError> {
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut rest = s;
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::Invalid(s.to_owned()));
        }
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        if unit.is_empty() {
            return Err(if tail.is_empty() {
                DurationError::MissingUnit(s.to_owned())
            } else {
                DurationError::Invalid(s.to_owned())
            });
        }
        let Some(&(_, scale)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(DurationError::UnknownUnit {
                unit: unit.to_owned(),
                text: s.to_owned(),
            });
        };
        let too_large = || DurationError::TooLarge(s.to_owned());
        let n: u128 = number.parse().map_err(|_| too_large())?;
        nanos = n
            .checked_mul(scale)
            .and_then(|v| v.checked_add(nanos))
            .ok_or_else(too_large)?;
        rest = tail;
    }
    if nanos > MAX_DURATION.as_nanos() {
        return Err(DurationError::TooLarge(s.to_owned()));
    }
    // Below the maximum, both parts fit.
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(0);
    let sub = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    Ok(Duration::new(secs, sub))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{DurationError, parse, parse_duration};

    #[test]
    fn accepts_units_and_compounds() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bare_numbers_need_a_unit() {
        assert_eq!(parse("10"), Err(DurationError::MissingUnit("10".into())));
        assert_eq!(
            parse_duration("10").unwrap_err(),
            "missing unit in duration \"10\"; add a unit, e.g. \"10s\" or \"10ms\""
        );
        assert_eq!(
            parse("1m30"),
            Err(DurationError::MissingUnit("1m30".into()))
        );
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert_eq!(parse("10 s"), Err(DurationError::Invalid("10 s".into())));
        assert_eq!(parse("s"), Err(DurationError::Invalid("s".into())));
        assert_eq!(parse("-1s"), Err(DurationError::Invalid("-1s".into())));
        assert_eq!(parse("1.5s"), Err(DurationError::Invalid("1.5s".into())));
        assert_eq!(
            parse("10sec"),
            Err(DurationError::UnknownUnit {
                unit: "sec".into(),
                text: "10sec".into()
            })
        );
        assert_eq!(
            parse("99999999999999999999999999999999999999999d"),
            Err(DurationError::TooLarge(
                "99999999999999999999999999999999999999999d".into()
            ))
        );
        assert!(matches!(
            parse("999999999999999d"),
            Err(DurationError::TooLarge(_))
        ));
    }

    #[test]
    fn the_longest_duration_is_haproxys() {
        assert_eq!(
            parse("2147483647ms"),
            Ok(Duration::from_millis(2_147_483_647))
        );
        assert_eq!(
            parse("24d20h31m23s647ms"),
            Ok(Duration::from_millis(2_147_483_647))
        );
        for long in ["2147483648ms", "25d", "4000000000000000000s"] {
            assert_eq!(
                parse(long),
                Err(DurationError::TooLarge(long.into())),
                "{long}"
            );
        }
    }
}
