//! Server `advice` and the client's retry timing derived from it: the connect read
//! timeout, the backoff while failing, and when failing has lasted long enough that
//! the server session is certainly gone and only a new handshake can help.
//!
//! Backoff policy: **linear, like the official CometD JavaScript client**: the n-th
//! consecutive failure waits `interval + (n - 1) * 1 s`, capped at `max_backoff`
//! (the first retry is immediate), and any success resets it. Linear keeps the
//! retry rhythm predictable for operators reading logs, and the cap bounds it.

use std::time::Duration;

use serde_json::Value;

/// What the server asks the client to do next (`advice.reconnect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// Connect again after `interval`.
    Retry,
    /// The session is gone: handshake again (and re-subscribe).
    Handshake,
    /// Stop; the server will not accept this client.
    None,
}

/// Advice as carried by one message; every field optional, as on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Advice {
    pub reconnect: Option<Reconnect>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub max_interval_ms: Option<u64>,
}

/// Upper bound on any advised duration: a hostile or broken server must not be able
/// to park this client for hours.
const MAX_ADVISED_MS: u64 = 10 * 60 * 1000;

impl Advice {
    /// Reads an `advice` object; `None` if it is not an object. Unknown reconnect
    /// values and mistyped numbers are ignored; numbers are clamped to 10 minutes.
    pub fn from_value(value: &Value) -> Option<Self> {
        let obj = value.as_object()?;
        let ms = |key: &str| {
            obj.get(key)
                .and_then(|v| {
                    v.as_u64()
                        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                })
                .map(|v| v.min(MAX_ADVISED_MS))
        };
        let reconnect = match obj.get("reconnect").and_then(Value::as_str) {
            Some("retry") => Some(Reconnect::Retry),
            Some("handshake") => Some(Reconnect::Handshake),
            Some("none") => Some(Reconnect::None),
            _ => None,
        };
        Some(Self {
            reconnect,
            interval_ms: ms("interval"),
            timeout_ms: ms("timeout"),
            max_interval_ms: ms("maxInterval"),
        })
    }
}

/// The advice in force: the newest advice received, with the fields it leaves out
/// taken from the defaults (as the CometD JavaScript client mixes advice into its
/// configured defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effective {
    pub reconnect: Reconnect,
    pub interval: Duration,
    pub timeout: Duration,
    pub max_interval: Duration,
}

impl Default for Effective {
    /// The CometD JavaScript client's defaults: retry, no interval, 60 s hold.
    fn default() -> Self {
        Self {
            reconnect: Reconnect::Retry,
            interval: Duration::ZERO,
            timeout: Duration::from_secs(60),
            max_interval: Duration::ZERO,
        }
    }
}

impl Effective {
    /// The newest advice replaces the old one entirely (missing fields fall back to
    /// the defaults, not to the previous advice).
    pub fn from_advice(advice: &Advice) -> Self {
        let d = Self::default();
        Self {
            reconnect: advice.reconnect.unwrap_or(d.reconnect),
            interval: advice.interval_ms.map_or(d.interval, Duration::from_millis),
            timeout: advice.timeout_ms.map_or(d.timeout, Duration::from_millis),
            max_interval: advice
                .max_interval_ms
                .map_or(d.max_interval, Duration::from_millis),
        }
    }

    /// HTTP timeout for a `/meta/connect`: the server may hold it for `timeout`.
    pub fn connect_timeout(&self, network_allowance: Duration) -> Duration {
        self.timeout + network_allowance
    }

    /// After failing this long the server has certainly expired the session.
    pub fn session_expiry(&self) -> Duration {
        self.timeout + self.interval + self.max_interval
    }

    /// Delay before the next attempt after `failures` consecutive failures (>= 1).
    pub fn backoff(&self, failures: u32, max_backoff: Duration) -> Duration {
        let linear = Duration::from_secs(u64::from(failures.saturating_sub(1)));
        self.interval + linear.min(max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_and_clamps() {
        let a = Advice::from_value(&json!({
            "reconnect": "handshake", "interval": 0, "timeout": 2000.0, "maxInterval": 1e12
        }))
        .unwrap();
        assert_eq!(a.reconnect, Some(Reconnect::Handshake));
        assert_eq!(a.interval_ms, Some(0));
        assert_eq!(a.timeout_ms, Some(2000));
        assert_eq!(a.max_interval_ms, Some(MAX_ADVISED_MS));
        let b = Advice::from_value(&json!({"reconnect": "later", "interval": -5, "timeout": "1"}))
            .unwrap();
        assert_eq!(b, Advice::default());
        assert_eq!(Advice::from_value(&json!([1])), None);
        assert_eq!(
            Advice::from_value(&json!({"reconnect":"none"}))
                .unwrap()
                .reconnect,
            Some(Reconnect::None)
        );
        assert_eq!(
            Advice::from_value(&json!({"reconnect":"retry"}))
                .unwrap()
                .reconnect,
            Some(Reconnect::Retry)
        );
    }

    #[test]
    fn newest_advice_replaces_old_with_defaults_for_missing_fields() {
        let e = Effective::from_advice(&Advice {
            reconnect: Some(Reconnect::Handshake),
            interval_ms: Some(0),
            ..Advice::default()
        });
        assert_eq!(e.reconnect, Reconnect::Handshake);
        assert_eq!(e.timeout, Duration::from_secs(60));
    }

    #[test]
    fn timing() {
        let e = Effective {
            reconnect: Reconnect::Retry,
            interval: Duration::from_millis(500),
            timeout: Duration::from_secs(30),
            max_interval: Duration::from_secs(15),
        };
        let cap = Duration::from_secs(3);
        assert_eq!(
            e.connect_timeout(Duration::from_secs(10)),
            Duration::from_secs(40)
        );
        assert_eq!(e.session_expiry(), Duration::from_millis(45_500));
        assert_eq!(e.backoff(1, cap), Duration::from_millis(500));
        assert_eq!(e.backoff(2, cap), Duration::from_millis(1500));
        assert_eq!(e.backoff(3, cap), Duration::from_millis(2500));
        assert_eq!(e.backoff(100, cap), Duration::from_millis(3500));
        assert_eq!(e.backoff(u32::MAX, cap), Duration::from_millis(3500));
    }
}
