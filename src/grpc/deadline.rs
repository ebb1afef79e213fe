//! How long an upstream call may take: the caller's `grpc-timeout` when it sent one,
//! otherwise the configured upstream timeout.
//!
//! tonic's server enforces `grpc-timeout` itself but answers `CANCELLED` when it fires.
//! The gateway ends the upstream call a little earlier, so the caller gets the precise
//! `DEADLINE_EXCEEDED` from us instead.

use std::time::Duration;
use tonic::metadata::MetadataMap;

/// The upstream budget for this call.
pub fn budget(metadata: &MetadataMap, configured: Duration) -> Duration {
    match metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse)
    {
        Some(caller) => caller.saturating_sub(margin(caller)),
        None => configured,
    }
}

/// A tenth of the deadline, between 2 ms and 100 ms: enough to answer before tonic's own
/// timer, small enough not to waste the caller's budget.
fn margin(deadline: Duration) -> Duration {
    (deadline / 10).clamp(Duration::from_millis(2), Duration::from_millis(100))
}

/// Parses a `grpc-timeout` value (gRPC over HTTP/2: at most 8 digits and a unit).
fn parse(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 || !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_deadline_bounds_the_budget() {
        let mut md = MetadataMap::new();
        let configured = Duration::from_secs(10);
        assert_eq!(budget(&md, configured), configured);
        md.insert("grpc-timeout", "200m".parse().unwrap());
        assert_eq!(budget(&md, configured), Duration::from_millis(180));
        md.insert("grpc-timeout", "30S".parse().unwrap());
        assert_eq!(budget(&md, configured), Duration::from_millis(29_900));
        md.insert("grpc-timeout", "garbage".parse().unwrap());
        assert_eq!(budget(&md, configured), configured);
    }

    #[test]
    fn parses_every_unit_and_rejects_the_rest() {
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse("7n"), Some(Duration::from_nanos(7)));
        assert_eq!(parse("123456789S"), None);
        assert_eq!(parse("S"), None);
        assert_eq!(parse("-1S"), None);
        assert_eq!(parse("10x"), None);
    }
}
