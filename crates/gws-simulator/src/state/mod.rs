//! The simulator's state: agents and their credentials, each agent's own SMS sessions,
//! HTTP sessions (`JSESSIONID` -> agent + CSRF token), injected faults, the POST bodies
//! received, and the operation step: a body is read as an [`Operation`] (the very type the
//! gateway serializes), checked against GWS's status codes, run on the session
//! (`session.rs` holds the lifecycle) and answered with a `referenceId` plus the
//! notifications to publish to the acting agent. Pure and synchronous: the HTTP layer in
//! `rest.rs` and `control.rs` calls in with a lock held only for the call, never across an
//! `.await`.
//!
//! Layout: `auth` holds the agents' credentials, HTTP sessions, CSRF tokens and the
//! connections seen; `store` the reads of each agent's SMS sessions; `operation` the
//! operation step and the recorded bodies; `customer` the customer-side events the control
//! API injects. This file holds the state itself and the small types every part shares:
//! replies, faults, notifications to publish and the counters.

mod auth;
mod customer;
mod operation;
mod store;
#[cfg(test)]
mod testing;

pub use auth::Authenticated;
pub use customer::{ControlError, Inbound};
pub use operation::{MAX_RECORDED_REQUESTS, RecordedRequest};
pub use store::MAX_SESSIONS_PER_AGENT;

use super::seed;
use super::session::SmsSession;
use auth::{HttpSession, PeerSeen};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// A GWS reply: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub http_status: u16,
    pub body: Value,
}

impl Reply {
    pub fn ok(body: Value) -> Self {
        Self {
            http_status: 200,
            body,
        }
    }

    /// A GWS error: `{"statusCode": code, "statusMessage": message}`.
    pub fn error(http_status: u16, code: i64, message: impl Into<String>) -> Self {
        Self {
            http_status,
            body: json!({ "statusCode": code, "statusMessage": message.into() }),
        }
    }
}

/// A fault injected through the control API, applied to REST operations.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct Faults {
    /// Added before every REST reply.
    #[serde(default)]
    pub delay_ms: u64,
    /// With it, each REST reply is delayed by a duration drawn uniformly between `delay_ms`
    /// and this (a GWS answering in 2-5 s: 2000 and 5000).
    #[serde(default)]
    pub delay_max_ms: Option<u64>,
    /// Replace the next `times` REST replies with this raw one.
    #[serde(default)]
    pub fail: Option<RawFailure>,
    /// Apply and answer operations but publish none of their notifications: an operation
    /// that is accepted and never confirmed (or, with an injected Error, fails later).
    #[serde(default)]
    pub withhold_notifications: bool,
    /// Answer accepted operations `{"statusCode":0}`, without the `referenceId` their
    /// notifications still carry: the pattern of GWS's own documentation (the seed page).
    #[serde(default)]
    pub reply_without_reference_id: bool,
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct RawFailure {
    pub http_status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default = "default_content_type")]
    pub content_type: String,
    #[serde(default = "one")]
    pub times: u32,
}

fn default_content_type() -> String {
    "text/html".into()
}

fn one() -> u32 {
    1
}

impl Faults {
    pub fn delay(&self) -> Duration {
        match self.delay_max_ms {
            Some(max) if max > self.delay_ms => {
                use rand::Rng;
                Duration::from_millis(rand::rng().random_range(self.delay_ms..=max))
            }
            _ => Duration::from_millis(self.delay_ms),
        }
    }
}

/// A notification to publish to one agent after a state change.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub agent: String,
    pub data: Value,
}

#[derive(Debug)]
pub struct State {
    passwords: HashMap<String, String>,
    sessions: HashMap<String, Vec<SmsSession>>,
    http_sessions: HashMap<String, HttpSession>,
    http_session_seq: u64,
    next_reference_id: i64,
    base_url: String,
    requests: VecDeque<RecordedRequest>,
    peers: HashMap<std::net::SocketAddr, PeerSeen>,
    pub csrf: bool,
    /// Whether accepted operations' replies carry their `referenceId` (GWS's documentation
    /// shows both patterns). Replies leave it out when this is off, or while
    /// [`Faults::reply_without_reference_id`] is on.
    pub reply_reference_ids: bool,
    pub faults: Faults,
    pub stats: Stats,
}

/// Counters the control API exposes, so tests can prove what reached the upstream.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    /// REST requests received (`/api/v2/me*`), whatever their outcome.
    pub rest_requests: u64,
    /// POSTs refused for a missing or wrong CSRF token.
    pub csrf_rejections: u64,
    /// Session operations accepted (answered `statusCode` 0).
    pub operations_accepted: u64,
    /// `GET /api/v2/me` requests received, whatever their outcome.
    pub me_requests: u64,
    /// HTTP sessions (`JSESSIONID`s) handed out.
    pub http_sessions_created: u64,
    /// Requests that presented the `JSESSIONID` of another agent's HTTP session (ignored
    /// for authentication; a client leaking cookies between agents shows here).
    pub foreign_cookies: u64,
    /// TCP connections that carried authenticated-looking requests (with Basic credentials).
    pub connections: u64,
    /// Of those, connections that carried requests of more than one agent (a shared pool).
    pub shared_connections: u64,
}

impl State {
    pub fn new(agents: &[(String, String)], csrf: bool, base_url: &str) -> Self {
        let passwords = agents.iter().cloned().collect();
        let sessions = agents
            .iter()
            .map(|(user, _)| (user.clone(), seed::sessions(base_url)))
            .collect();
        Self {
            passwords,
            sessions,
            http_sessions: HashMap::new(),
            http_session_seq: 0,
            next_reference_id: 15,
            base_url: base_url.to_string(),
            requests: VecDeque::new(),
            peers: HashMap::new(),
            csrf,
            reply_reference_ids: true,
            faults: Faults::default(),
            stats: Stats::default(),
        }
    }

    pub fn has_agent(&self, user: &str) -> bool {
        self.passwords.contains_key(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_delays_are_fixed_or_drawn_from_their_range() {
        let fixed = Faults {
            delay_ms: 20,
            ..Faults::default()
        };
        assert_eq!(fixed.delay(), Duration::from_millis(20));
        let ranged = Faults {
            delay_ms: 2000,
            delay_max_ms: Some(5000),
            ..Faults::default()
        };
        let drawn: Vec<_> = (0..200).map(|_| ranged.delay().as_millis()).collect();
        assert!(drawn.iter().all(|d| (2000..=5000).contains(d)), "{drawn:?}");
        assert!(drawn.iter().any(|d| *d != drawn[0]), "drawn, not fixed");
        // A maximum below the minimum is no range.
        let inverted = Faults {
            delay_ms: 30,
            delay_max_ms: Some(10),
            ..Faults::default()
        };
        assert_eq!(inverted.delay(), Duration::from_millis(30));
    }
}
