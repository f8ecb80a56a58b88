//! Millisecond durations written as `"500ms"`, `"2s"`, `"1.5s"`, `"5m"`, `"1h"`.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const MS_PER_S: u64 = 1_000;
const MS_PER_M: u64 = 60 * MS_PER_S;
const MS_PER_H: u64 = 60 * MS_PER_M;

/// Names the accepted form in every error so users can fix input without docs.
const FORM: &str = "a number followed by ms, s, m or h, e.g. \"500ms\", \"1.5s\", \"5m\", \"1h\"";

/// A duration in whole milliseconds, at most [`DurationSpec::MAX`] when parsed.
///
/// Human-readable formats (YAML, JSON) carry it as a canonical string;
/// binary formats (bincode in the Raft log) carry the raw millisecond count,
/// so a stored value never has to be re-parsed or re-checked against the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DurationSpec(pub u64);

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("invalid duration {input:?}: {reason}")]
pub struct ParseDurationError {
    /// The rejected input.
    pub input: String,
    /// What was wrong with it.
    pub reason: String,
}

impl DurationSpec {
    /// Zero; only meaningful where a field documents it.
    pub const ZERO: DurationSpec = DurationSpec(0);
    /// Longest duration accepted from text: 24 hours.
    pub const MAX: DurationSpec = DurationSpec(24 * MS_PER_H);

    /// Wraps a millisecond count (not checked against [`Self::MAX`]).
    pub const fn from_millis(ms: u64) -> Self {
        DurationSpec(ms)
    }

    /// Wraps a whole number of seconds.
    pub const fn from_secs(s: u64) -> Self {
        DurationSpec(s * MS_PER_S)
    }

    /// The duration in milliseconds.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Converts for callers that need std timers.
    pub const fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }
}

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        // Zero divides by every unit; "0ms" reads least surprisingly.
        if ms == 0 {
            return f.write_str("0ms");
        }
        for (unit, size) in [("h", MS_PER_H), ("m", MS_PER_M), ("s", MS_PER_S)] {
            if ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl FromStr for DurationSpec {
    type Err = ParseDurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| ParseDurationError {
            input: input.to_string(),
            reason,
        };
        let s = input.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        if unit.is_empty() {
            return Err(fail(format!("missing unit; expected {FORM}")));
        }
        let unit_ms = match unit {
            "ms" => 1,
            "s" => MS_PER_S,
            "m" => MS_PER_M,
            "h" => MS_PER_H,
            other => return Err(fail(format!("unsupported unit {other:?}; expected {FORM}"))),
        };
        let (whole, frac) = match number.split_once('.') {
            Some((w, f)) => (w, f),
            None => (number, ""),
        };
        let digits_ok = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
        if !digits_ok(whole) || (number.contains('.') && !digits_ok(frac)) {
            return Err(fail(format!("expected {FORM}")));
        }
        // Beyond 9 fractional digits the value cannot matter at millisecond
        // precision unless it is all zeros, and capping keeps arithmetic in u64.
        let frac = frac.trim_end_matches('0');
        if frac.len() > 9 {
            return Err(fail("too many decimal places".to_string()));
        }
        let too_long = || fail(format!("must be at most {}", DurationSpec::MAX));
        let whole: u64 = whole.parse().map_err(|_| too_long())?;
        let mut ms = whole.checked_mul(unit_ms).ok_or_else(too_long)?;
        if !frac.is_empty() {
            let scale = 10u64.pow(frac.len() as u32);
            let frac_units: u64 = frac.parse().expect("checked to be digits");
            let frac_ms = frac_units * unit_ms;
            if !frac_ms.is_multiple_of(scale) {
                return Err(fail("must be a whole number of milliseconds".to_string()));
            }
            ms = ms.checked_add(frac_ms / scale).ok_or_else(too_long)?;
        }
        if ms > DurationSpec::MAX.0 {
            return Err(too_long());
        }
        Ok(DurationSpec(ms))
    }
}

impl Serialize for DurationSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = DurationSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a duration string: {FORM}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationSpec, E> {
                v.parse().map_err(E::custom)
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(TextVisitor)
        } else {
            u64::deserialize(deserializer).map(DurationSpec)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> u64 {
        s.parse::<DurationSpec>().unwrap().as_millis()
    }

    #[test]
    fn parses_units() {
        assert_eq!(ms("500ms"), 500);
        assert_eq!(ms("2s"), 2_000);
        assert_eq!(ms("1.5s"), 1_500);
        assert_eq!(ms("0.25s"), 250);
        assert_eq!(ms("1.500s"), 1_500);
        assert_eq!(ms("5m"), 300_000);
        assert_eq!(ms("1.5m"), 90_000);
        assert_eq!(ms("1h"), 3_600_000);
        assert_eq!(ms("24h"), 86_400_000);
        assert_eq!(ms("0ms"), 0);
        assert_eq!(ms(" 2s "), 2_000);
    }

    #[test]
    fn rejects_bad_input() {
        for (input, needle) in [
            ("500", "missing unit"),
            ("", "missing unit"),
            ("250us", "unsupported unit \"us\""),
            ("1d", "unsupported unit"),
            ("1h30m", "unsupported unit"),
            ("-1s", "unsupported unit"),
            ("s", "expected a number"),
            ("1.s", "expected a number"),
            (".5s", "expected a number"),
            ("1.5ms", "whole number of milliseconds"),
            ("0.0001s", "whole number of milliseconds"),
            ("25h", "at most 24h"),
            ("86400001ms", "at most 24h"),
            ("99999999999999999999999h", "at most 24h"),
            ("1.0000000001s", "too many decimal places"),
        ] {
            let err = input.parse::<DurationSpec>().unwrap_err().to_string();
            assert!(err.contains(needle), "{input}: {err}");
        }
        // A bare number must tell the user what form is expected.
        let err = "500".parse::<DurationSpec>().unwrap_err().to_string();
        assert!(err.contains("\"500ms\""), "{err}");
    }

    #[test]
    fn canonical_display() {
        for (millis, text) in [
            (0, "0ms"),
            (500, "500ms"),
            (1_500, "1500ms"),
            (2_000, "2s"),
            (90_000, "90s"),
            (300_000, "5m"),
            (3_600_000, "1h"),
            (5_400_000, "90m"),
        ] {
            let d = DurationSpec::from_millis(millis);
            assert_eq!(d.to_string(), text);
            assert_eq!(text.parse::<DurationSpec>().unwrap(), d);
        }
    }

    #[test]
    fn serde_text_and_binary() {
        let d = DurationSpec::from_millis(1_500);
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1500ms\"");
        assert_eq!(serde_json::from_str::<DurationSpec>("\"1.5s\"").unwrap(), d);
        let err = serde_json::from_str::<DurationSpec>("500").unwrap_err();
        assert!(err.to_string().contains("\"500ms\""), "{err}");
        let err = serde_yaml::from_str::<DurationSpec>("500").unwrap_err();
        assert!(err.to_string().contains("missing unit"), "{err}");

        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(d, cfg).unwrap();
        let (back, _): (DurationSpec, usize) =
            bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn ordering_and_conversions() {
        assert!(DurationSpec::from_secs(1) < DurationSpec::from_millis(1_001));
        assert_eq!(DurationSpec::default(), DurationSpec::ZERO);
        assert_eq!(
            DurationSpec::from_secs(2).as_std(),
            std::time::Duration::from_secs(2)
        );
    }
}
