//! Upstream timestamps -> `google.protobuf.Timestamp`. GWS's `timestampSeconds` holds epoch
//! *milliseconds* despite its name; `timestamp` is undocumented, so it is read tolerantly:
//! epoch seconds or milliseconds as a number (told apart by magnitude), or an ISO 8601 /
//! RFC 3339 string. A timestamp that cannot be read leaves the time unset rather than
//! failing the whole transcript: losing a message is worse than losing its clock.

use prost_types::Timestamp;
use serde_json::Value;

/// Below this magnitude an epoch number is seconds, above it milliseconds: 1e11 seconds
/// is the year 5138, 1e11 milliseconds is March 1973, so no real timestamp is ambiguous.
const SECONDS_MS_CUTOFF: f64 = 1e11;

/// Latest instant `google.protobuf.Timestamp` allows (9999-12-31T23:59:59Z), and earliest
/// (0001-01-01T00:00:00Z): values outside are invalid for every protobuf runtime.
const MAX_SECONDS: i64 = 253_402_300_799;
const MIN_SECONDS: i64 = -62_135_596_800;

/// `timestampSeconds`: epoch milliseconds (integer, fractional, or a numeric string).
pub(crate) fn from_epoch_millis(v: &Value) -> Option<Timestamp> {
    from_epoch(number(v)?, 1000)
}

/// `timestamp`: epoch seconds or milliseconds, or an ISO 8601 string.
pub(crate) fn from_loose(v: &Value) -> Option<Timestamp> {
    if let Value::String(s) = v
        && let Some(ts) = parse_iso8601(s.trim())
    {
        return Some(ts);
    }
    let n = number(v)?;
    let per_second = if n.as_f64().abs() >= SECONDS_MS_CUTOFF {
        1000
    } else {
        1
    };
    from_epoch(n, per_second)
}

/// An epoch number as read: integers stay exact (a millisecond timestamp does not survive
/// a round trip through `f64` seconds), fractions are carried as `f64`.
#[derive(Clone, Copy)]
enum Epoch {
    Int(i64),
    Float(f64),
}

impl Epoch {
    fn as_f64(self) -> f64 {
        match self {
            Epoch::Int(i) => i as f64,
            Epoch::Float(f) => f,
        }
    }
}

fn number(v: &Value) -> Option<Epoch> {
    let n = match v {
        Value::Number(n) => match n.as_i64() {
            Some(i) => Epoch::Int(i),
            None => Epoch::Float(n.as_f64()?),
        },
        Value::String(s) => {
            let s = s.trim();
            match s.parse::<i64>() {
                Ok(i) => Epoch::Int(i),
                Err(_) => Epoch::Float(s.parse::<f64>().ok()?),
            }
        }
        _ => return None,
    };
    match n {
        Epoch::Float(f) if !f.is_finite() => None,
        n => Some(n),
    }
}

/// `n` units since the epoch, `per_second` units a second (1 or 1000).
fn from_epoch(n: Epoch, per_second: i64) -> Option<Timestamp> {
    let nanos_per_unit = 1_000_000_000 / per_second;
    let (whole, frac_nanos) = match n {
        Epoch::Int(i) => (i, 0),
        Epoch::Float(f) => {
            let floor = f.floor();
            // Range check in f64 before converting, so the cast below is exact and in range.
            if !(MIN_SECONDS as f64 * per_second as f64..=MAX_SECONDS as f64 * per_second as f64)
                .contains(&floor)
            {
                return None;
            }
            // Below one unit, so below nanos_per_unit: the sum with the whole part's
            // nanoseconds stays under one second.
            let frac = (((f - floor) * nanos_per_unit as f64) as i64).clamp(0, nanos_per_unit - 1);
            (floor as i64, frac)
        }
    };
    let seconds = whole.div_euclid(per_second);
    let nanos = whole.rem_euclid(per_second) * nanos_per_unit + frac_nanos;
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&seconds) {
        return None;
    }
    Some(Timestamp {
        seconds,
        nanos: i32::try_from(nanos).ok()?,
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction][Z|±HH:MM|±HHMM]` (a space instead of `T` is accepted;
/// no zone means UTC). Anything else is `None`.
fn parse_iso8601(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 19 || !b.is_ascii() {
        return None;
    }
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = s.get(from..from + len)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos: i64 = 0;
    if let Some(frac) = rest.strip_prefix('.').or_else(|| rest.strip_prefix(',')) {
        let len = frac.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 {
            return None;
        }
        // Nanosecond precision: extra digits are truncated.
        for (i, c) in frac.bytes().take(len).enumerate() {
            if i < 9 {
                nanos = nanos * 10 + i64::from(c - b'0');
            }
        }
        for _ in len.min(9)..9 {
            nanos *= 10;
        }
        rest = &frac[len..];
    }
    let offset_secs = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let zone = rest[1..].replace(':', "");
            if zone.len() != 4 || !zone.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let (hh, mm) = (
                zone[..2].parse::<i64>().ok()?,
                zone[2..].parse::<i64>().ok()?,
            );
            if hh > 23 || mm > 59 {
                return None;
            }
            sign * (hh * 3600 + mm * 60)
        }
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&seconds) {
        return None;
    }
    Some(Timestamp {
        seconds,
        nanos: i32::try_from(nanos).ok()?,
    })
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ts(seconds: i64, nanos: i32) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos })
    }

    #[test]
    fn epoch_millis_keep_the_milliseconds() {
        assert_eq!(
            from_epoch_millis(&json!(1_700_000_000_123_i64)),
            ts(1_700_000_000, 123_000_000)
        );
        assert_eq!(
            from_epoch_millis(&json!("1700000000123")),
            ts(1_700_000_000, 123_000_000)
        );
        assert_eq!(from_epoch_millis(&json!(-1500)), ts(-2, 500_000_000));
        assert_eq!(from_epoch_millis(&json!(true)), None);
        assert_eq!(from_epoch_millis(&json!(1e300)), None);
        assert_eq!(from_epoch_millis(&json!(i64::MIN)), None);
        assert_eq!(from_epoch_millis(&json!(1500.5)), ts(1, 500_500_000));
    }

    #[test]
    fn loose_numbers_are_seconds_or_millis_by_magnitude() {
        assert_eq!(from_loose(&json!(1_700_000_000)), ts(1_700_000_000, 0));
        assert_eq!(
            from_loose(&json!(1_700_000_000_500_i64)),
            ts(1_700_000_000, 500_000_000)
        );
        assert_eq!(from_loose(&json!(1.25)), ts(1, 250_000_000));
        assert_eq!(from_loose(&json!("-1")), ts(-1, 0));
    }

    #[test]
    fn iso_strings() {
        assert_eq!(from_loose(&json!("1970-01-01T00:00:00Z")), ts(0, 0));
        assert_eq!(
            from_loose(&json!("2023-10-31T13:30:00.250Z")),
            ts(1_698_759_000, 250_000_000)
        );
        assert_eq!(
            from_loose(&json!("2023-10-31T14:30:00+01:00")),
            ts(1_698_759_000, 0)
        );
        assert_eq!(
            from_loose(&json!("2023-10-31T12:30:00-0100")),
            ts(1_698_759_000, 0)
        );
        assert_eq!(
            from_loose(&json!("2024-02-29 00:00:00")),
            ts(1_709_164_800, 0)
        );
        assert_eq!(from_loose(&json!("2023-02-29T00:00:00Z")), None);
        assert_eq!(from_loose(&json!("yesterday")), None);
        assert_eq!(from_loose(&json!("2023-10-31T13:30:00Zjunk")), None);
        assert_eq!(from_loose(&json!("2023-10-31T13:30:00.Z")), None);
        assert_eq!(from_loose(&json!("2023-10-31T13:30:00+é")), None);
    }
}
