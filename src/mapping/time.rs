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

/// An ISO 8601 / RFC 3339 date-time (`T`, `t` or a space between date and time; no zone
/// means UTC), parsed by prost-types. The thin adapter around its parser keeps what this
/// field has always accepted, no more and no less where it matters: a time of day is
/// required (prost-types also takes a bare date), the year is four plain digits (it also
/// takes signed, longer years), a comma may mark the fraction as ISO 8601 allows (it takes
/// only a dot), and the instant must lie within the range a `Timestamp` may hold (its
/// parser goes far beyond it, which protobuf runtimes reject). Anything else is `None`.
fn parse_iso8601(s: &str) -> Option<Timestamp> {
    // `YYYY-MM-DDTHH:MM:SS`, the shortest form with a time of day, ends at byte 19; the
    // ASCII check makes the byte indexing below safe.
    let b = s.as_bytes();
    if b.len() < 19 || !s.is_ascii() || !b[..4].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let ts = if b.get(19) == Some(&b',') {
        format!("{}.{}", &s[..19], &s[20..]).parse::<Timestamp>()
    } else {
        s.parse::<Timestamp>()
    }
    .ok()?;
    (MIN_SECONDS..=MAX_SECONDS)
        .contains(&ts.seconds)
        .then_some(ts)
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
        // What the adapter around prost-types' parser keeps.
        assert_eq!(
            from_loose(&json!("2023-10-31T13:30:00,250Z")),
            ts(1_698_759_000, 250_000_000)
        );
        assert_eq!(from_loose(&json!("2023-10-31")), None);
        assert_eq!(from_loose(&json!("+02023-10-31T13:30:00Z")), None);
        assert_eq!(
            from_loose(&json!("0001-01-01T00:00:00Z")),
            ts(MIN_SECONDS, 0)
        );
        assert_eq!(from_loose(&json!("9999-12-31T23:59:59-01:00")), None);
    }
}
