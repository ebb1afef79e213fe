//! Who may call: each agent's password, the HTTP sessions (`JSESSIONID` -> agent and CSRF
//! token) handed out, the CSRF check GWS applies to writes, and which connections carried
//! which agents (so a test can see a client sharing a connection pool across agents).
//! Kept apart so that every rule about credentials and cookies, none of which may cross
//! agents, reads in one place.

use super::{Reply, State};
use rand::Rng;
use serde_json::json;

/// Bound on HTTP sessions kept; the oldest is forgotten beyond it (the client re-logs in).
const MAX_HTTP_SESSIONS: usize = 10_000;
/// Connections remembered for the connection-sharing counters.
const MAX_PEERS: usize = 100_000;

/// The first agent seen on a connection, and whether another one followed.
#[derive(Debug)]
pub(super) struct PeerSeen {
    first: String,
    shared: bool,
}

#[derive(Debug)]
pub(super) struct HttpSession {
    agent: String,
    csrf_token: String,
    created: u64,
}

/// The outcome of authenticating a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Authenticated {
    pub agent: String,
    /// Set when a new HTTP session was created: send `Set-Cookie: JSESSIONID=...`.
    pub new_session_id: Option<String>,
    /// The HTTP session's id (old or new).
    pub session_id: String,
}

impl State {
    /// Checks Basic credentials and the `JSESSIONID` cookie. A cookie of another agent's
    /// HTTP session is ignored (a fresh session is made), never honoured.
    pub fn authenticate(
        &mut self,
        user: &str,
        password: &str,
        cookie: Option<&str>,
    ) -> Option<Authenticated> {
        if self.passwords.get(user).map(String::as_str) != Some(password) {
            return None;
        }
        if let Some(id) = cookie
            && let Some(session) = self.http_sessions.get(id)
        {
            if session.agent == user {
                return Some(Authenticated {
                    agent: user.to_string(),
                    new_session_id: None,
                    session_id: id.to_string(),
                });
            }
            self.stats.foreign_cookies += 1;
        }
        self.stats.http_sessions_created += 1;
        if self.http_sessions.len() >= MAX_HTTP_SESSIONS
            && let Some(oldest) = self
                .http_sessions
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
        {
            self.http_sessions.remove(&oldest);
        }
        let id = random_token();
        self.http_session_seq += 1;
        self.http_sessions.insert(
            id.clone(),
            HttpSession {
                agent: user.to_string(),
                csrf_token: random_token(),
                created: self.http_session_seq,
            },
        );
        Some(Authenticated {
            agent: user.to_string(),
            new_session_id: Some(id.clone()),
            session_id: id,
        })
    }

    /// Notes that `user`'s request came over the connection from `peer` (for the
    /// connection-sharing counters; at most [`MAX_PEERS`] connections are remembered).
    pub fn saw_connection(&mut self, peer: std::net::SocketAddr, user: &str) {
        let known = self.peers.len();
        match self.peers.get_mut(&peer) {
            Some(seen) if !seen.shared && seen.first != user => {
                seen.shared = true;
                self.stats.shared_connections += 1;
            }
            Some(_) => {}
            None if known < MAX_PEERS => {
                self.stats.connections += 1;
                self.peers.insert(
                    peer,
                    PeerSeen {
                        first: user.to_string(),
                        shared: false,
                    },
                );
            }
            None => {}
        }
    }

    /// Forgets every HTTP session, as a GWS restart would: clients' cookies and CSRF tokens
    /// become invalid.
    pub fn expire_http_sessions(&mut self) -> usize {
        let n = self.http_sessions.len();
        self.http_sessions.clear();
        n
    }

    /// Every `JSESSIONID` and CSRF token handed out and still known, so tests can prove
    /// that none of them ever reaches a log line.
    pub fn issued_secrets(&self) -> Vec<String> {
        self.http_sessions
            .iter()
            .flat_map(|(id, s)| [id.clone(), s.csrf_token.clone()])
            .collect()
    }

    /// The CSRF token of an HTTP session (to send on GET replies).
    pub fn csrf_token(&self, session_id: &str) -> Option<&str> {
        self.http_sessions
            .get(session_id)
            .map(|s| s.csrf_token.as_str())
    }

    /// Whether a write may proceed: CSRF off, or the token matches the HTTP session's, which
    /// must already have existed (a session created by this very request has no token the
    /// client could know).
    pub fn csrf_ok(&self, auth: &Authenticated, token: Option<&str>) -> bool {
        !self.csrf
            || (auth.new_session_id.is_none()
                && token.is_some()
                && self.csrf_token(&auth.session_id) == token)
    }

    pub fn me(&self, agent: &str) -> Reply {
        Reply::ok(json!({
            "statusCode": 0,
            "user": { "id": format!("id-{agent}"), "userName": agent, "enabledFeatures": ["api-multimedia"] }
        }))
    }
}

/// 128 random bits, hex: session ids and CSRF tokens must not be guessable.
fn random_token() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn authentication_and_cookies_are_per_agent() {
        let mut s = state();
        assert!(s.authenticate("a", "wrong", None).is_none());
        assert!(s.authenticate("nobody", "x", None).is_none());
        let first = s.authenticate("a", "pa", None).unwrap();
        let id = first.new_session_id.clone().unwrap();
        let again = s.authenticate("a", "pa", Some(&id)).unwrap();
        assert_eq!(again.new_session_id, None);
        let other = s.authenticate("b", "pb", Some(&id)).unwrap();
        assert!(
            other.new_session_id.is_some(),
            "agent b must not ride agent a's session"
        );
    }

    #[test]
    fn csrf_needs_the_token_of_an_existing_session() {
        let mut s = state();
        let first = s.authenticate("a", "pa", None).unwrap();
        let token = s.csrf_token(&first.session_id).unwrap().to_string();
        assert!(
            !s.csrf_ok(&first, Some(&token)),
            "a brand-new session has no known token"
        );
        let again = s.authenticate("a", "pa", Some(&first.session_id)).unwrap();
        assert!(s.csrf_ok(&again, Some(&token)));
        assert!(!s.csrf_ok(&again, Some("nope")));
        assert!(!s.csrf_ok(&again, None));
        s.csrf = false;
        assert!(s.csrf_ok(&first, None));
    }
}
