//! The Bayeux (CometD long-polling) client that receives GWS notifications.
//!
//! [`run`] drives one client session: handshake, subscribe to the configured
//! channels, then the `/meta/connect` long-polling loop, obeying server advice,
//! backing off while failing, re-handshaking (and re-subscribing) when the server
//! session is gone, and using the acknowledgement extension when offered so a lost
//! connect response is redelivered. Its progress is reported as [`BayeuxEvent`]s.
//!
//! Layout: [`message`] (wire format) -> [`advice`] (timing) -> [`state`] (the
//! sans-IO protocol machine) -> `transport` (the thin loop doing HTTP and timers).

pub mod advice;
pub mod message;
pub mod state;
mod transport;

use std::time::Duration;

pub use transport::run;

/// How to reach the server and what to subscribe to.
#[derive(Debug, Clone)]
pub struct BayeuxConfig {
    /// The full CometD endpoint, e.g. `http://host:port/api/v2/notifications`.
    pub url: reqwest::Url,
    /// Channels to subscribe, e.g. `/v2/me/smssessions`.
    pub channels: Vec<String>,
    /// Added to `advice.timeout` for the connect HTTP timeout (default 10 s, as the
    /// official CometD client's `maxNetworkDelay`).
    pub network_allowance: Duration,
    /// Timeout of handshake, subscribe and disconnect requests (default 10 s).
    pub request_timeout: Duration,
    /// Cap of the linear backoff while failing (default 60 s, as the official client).
    pub max_backoff: Duration,
    /// Ask for the acknowledgement extension (default true).
    pub use_ack: bool,
    /// Sent on every request besides the HTTP client's own defaults, e.g. GWS's CSRF header
    /// (GWS wants it on every POST, and long-polling is POST).
    pub headers: http::HeaderMap,
    /// The slots every request takes first (the gateway's event-feed share, so its
    /// long-polls never wait behind REST calls); unbounded by default.
    pub slots: crate::upstream::slots::Share,
}

impl BayeuxConfig {
    /// A configuration with the defaults documented on each field.
    pub fn new(url: reqwest::Url, channels: Vec<String>) -> Self {
        Self {
            url,
            channels,
            network_allowance: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(60),
            use_ack: true,
            headers: http::HeaderMap::new(),
            slots: crate::upstream::slots::Share::new(usize::MAX),
        }
    }
}

/// What a running session reports, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum BayeuxEvent {
    /// Handshake done and EVERY configured channel subscription confirmed by the server.
    /// Sent once after the first setup (`restored: false`), and again (`restored: true`)
    /// each time the session is working again after a `Lost`.
    Subscribed { restored: bool },
    /// The session broke (connect failed, server asked for a handshake, transport error):
    /// events may be missed until the next `Subscribed { restored: true }`. Sent once per outage.
    Lost { reason: String },
    /// A message on a non-meta channel (the server's events), in the order received.
    Message {
        channel: String,
        data: serde_json::Value,
    },
    /// Terminal, the task ends after it: advice reconnect "none", or the server refused us
    /// at the HTTP level in a way retrying cannot fix (HTTP 401/403 on handshake).
    Failed {
        reason: String,
        http_status: Option<u16>,
    },
}
