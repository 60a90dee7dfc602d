//! Durations in configuration are strings with a unit: `"250ms"`, `"10s"`, `"5m"`, `"1h"`,
//! `"7d"`, or a sum such as `"1m30s"`; `"0"` alone is zero (a setting's "off"). A bare number is
//! refused: it was milliseconds in the old `*_ms` settings and seconds elsewhere, so guessing
//! would silently change a timeout by a factor of 1000.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

const UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Parses `"250ms"`, `"10s"`, `"1m30s"`, `"0"`. The error says what is accepted.
pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || {
        format!(
            "`{text}` is not a duration: write a number with a unit, ms, s, m, h or d \
             (e.g. \"250ms\", \"10s\", \"5m\", \"1m30s\")"
        )
    };
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (_, factor) = UNITS
            .iter()
            .find(|(unit, _)| *unit == &rest[..unit_len])
            .ok_or_else(bad)?;
        total = number
            .checked_mul(*factor)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(bad)?;
        rest = rest[unit_len..].trim_start();
    }
    Ok(Duration::from_millis(total))
}

/// `ms` milliseconds in the largest unit that states it exactly (`10000` → `"10s"`), for
/// messages that tell users what to write.
pub fn format_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let (unit, factor) = UNITS
        .iter()
        .rev()
        .find(|(_, factor)| ms.is_multiple_of(*factor))
        .expect("every count of ms is a whole number of ms");
    format!("{}{unit}", ms / factor)
}

/// `duration` as [`format_ms`] writes it.
pub fn format(duration: Duration) -> String {
    format_ms(duration.as_millis() as u64)
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration with a unit, e.g. \"250ms\", \"10s\" or \"5m\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "{v} has no unit: write a duration with a unit, e.g. \"{}\" for {v} milliseconds \
             or \"{v}s\" for {v} seconds",
            format_ms(v)
        )))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(format!("{v}: a duration cannot be negative"))),
        }
    }
}

/// `#[serde(deserialize_with = "duration::deserialize")]`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

/// For `Option<Duration>` fields (unset means "not configured").
pub fn deserialize_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_sums_parse() {
        for (text, ms) in [
            ("250ms", 250),
            ("10s", 10_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("7d", 604_800_000),
            ("1m30s", 90_000),
            ("1m 30s", 90_000),
            ("0", 0),
            ("0s", 0),
        ] {
            assert_eq!(parse(text), Ok(Duration::from_millis(ms)), "{text}");
        }
    }

    #[test]
    fn numbers_without_units_and_unknown_units_are_refused() {
        let err = parse("10").unwrap_err();
        assert!(err.contains("\"10s\""), "{err}");
        for text in ["", "s", "10x", "1.5s", "-1s", "10sec", "10s5"] {
            assert!(parse(text).is_err(), "{text:?} must not parse");
        }
    }

    #[test]
    fn milliseconds_format_in_the_largest_exact_unit() {
        assert_eq!(format_ms(10_000), "10s");
        assert_eq!(format_ms(1_500), "1500ms");
        assert_eq!(format_ms(604_800_000), "7d");
        assert_eq!(format_ms(300_000), "5m");
        assert_eq!(format_ms(0), "0s");
    }
}
