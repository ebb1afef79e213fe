//! The simulator's state: agents and their credentials, each agent's own SMS sessions,
//! HTTP sessions (`JSESSIONID` -> agent + CSRF token), injected faults, and the user-data
//! operations with their GWS status codes. Pure and synchronous: the HTTP layer in
//! `rest.rs` calls in with a lock held only for the call, never across an `.await`.

use super::seed;
use rand::Rng;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::time::Duration;

/// Bound on HTTP sessions kept; the oldest is forgotten beyond it (the client re-logs in).
const MAX_HTTP_SESSIONS: usize = 10_000;

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
    /// Replace the next `times` REST replies with this raw one.
    #[serde(default)]
    pub fail: Option<RawFailure>,
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
        Duration::from_millis(self.delay_ms)
    }
}

#[derive(Debug)]
struct HttpSession {
    agent: String,
    csrf_token: String,
    created: u64,
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
    sessions: HashMap<String, Vec<Value>>,
    http_sessions: HashMap<String, HttpSession>,
    http_session_seq: u64,
    next_reference_id: i64,
    pub csrf: bool,
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
    /// User-data operations accepted.
    pub operations_accepted: u64,
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
            csrf,
            faults: Faults::default(),
            stats: Stats::default(),
        }
    }

    pub fn has_agent(&self, user: &str) -> bool {
        self.passwords.contains_key(user)
    }

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
            && self.http_sessions.get(id).is_some_and(|s| s.agent == user)
        {
            return Some(Authenticated {
                agent: user.to_string(),
                new_session_id: None,
                session_id: id.to_string(),
            });
        }
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

    /// Forgets every HTTP session, as a GWS restart would: clients' cookies and CSRF tokens
    /// become invalid.
    pub fn expire_http_sessions(&mut self) -> usize {
        let n = self.http_sessions.len();
        self.http_sessions.clear();
        n
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

    pub fn list_sessions(&self, agent: &str) -> Reply {
        let sessions = self.sessions.get(agent).cloned().unwrap_or_default();
        Reply::ok(json!({ "statusCode": 0, "smssessions": sessions }))
    }

    pub fn session(&self, agent: &str, id: &str) -> Option<&Value> {
        self.sessions.get(agent)?.iter().find(|s| s["id"] == id)
    }

    /// `POST /api/v2/me/smssessions/{id}`: runs the operation and says what to publish.
    pub fn operation(&mut self, agent: &str, id: &str, body: &Value) -> (Reply, Option<Publish>) {
        let Some(op) = body.get("operationName") else {
            return (
                Reply::error(400, 1, "Required parameter 'operationName' is missing"),
                None,
            );
        };
        let Some(op) = op.as_str() else {
            return (
                Reply::error(400, 10, "'operationName' must be a string"),
                None,
            );
        };
        let Some(session) = self
            .sessions
            .get_mut(agent)
            .and_then(|list| list.iter_mut().find(|s| s["id"] == id))
        else {
            return (
                Reply::error(404, 6, format!("SMS session '{id}' not found")),
                None,
            );
        };
        let capable = session["capabilities"]
            .as_array()
            .is_some_and(|caps| caps.iter().any(|c| c == op));
        let change = match op {
            "DeleteUserData" => delete_keys(body),
            "AttachUserData" | "UpdateUserData" => merge_user_data(body),
            _ => Err(Reply::error(
                400,
                10,
                format!("operation '{op}' is not supported by this simulator"),
            )),
        };
        let change = match change {
            Ok(change) => change,
            Err(reply) => return (reply, None),
        };
        if !capable {
            let state = session["state"].as_str().unwrap_or("").to_string();
            return (
                Reply::error(
                    400,
                    2,
                    format!("Operation '{op}' is not valid in the current state '{state}'"),
                ),
                None,
            );
        }
        if !session["userData"].is_object() {
            session["userData"] = json!({});
        }
        if let Some(user_data) = session["userData"].as_object_mut() {
            change.apply(user_data);
        }
        self.stats.operations_accepted += 1;
        let reference_id = self.next_reference_id;
        self.next_reference_id += 1;
        let data = json!({
            "referenceId": reference_id,
            "smssession": session.clone(),
            "notificationType": "PropertiesUpdated",
            "messageType": "SMSsessionStateChangeMessage",
        });
        (
            Reply::ok(json!({ "statusCode": 0, "referenceId": reference_id })),
            Some(Publish {
                agent: agent.to_string(),
                data,
            }),
        )
    }
}

enum Change {
    Delete(Vec<String>),
    Merge(Map<String, Value>),
}

impl Change {
    fn apply(self, user_data: &mut Map<String, Value>) {
        match self {
            Change::Delete(keys) => keys.iter().for_each(|k| {
                user_data.remove(k);
            }),
            Change::Merge(map) => user_data.extend(map),
        }
    }
}

fn delete_keys(body: &Value) -> Result<Change, Reply> {
    let Some(keys) = body.get("keys") else {
        return Err(Reply::error(400, 1, "Required parameter 'keys' is missing"));
    };
    let keys: Option<Vec<String>> = keys
        .as_array()
        .map(|a| a.iter().map(|k| k.as_str().map(str::to_string)).collect())
        .unwrap_or(None);
    match keys {
        Some(keys) if !keys.is_empty() && keys.iter().all(|k| !k.is_empty()) => {
            Ok(Change::Delete(keys))
        }
        _ => Err(Reply::error(
            400,
            10,
            "'keys' must be a non-empty array of non-empty strings",
        )),
    }
}

fn merge_user_data(body: &Value) -> Result<Change, Reply> {
    match body.get("userData") {
        None => Err(Reply::error(
            400,
            1,
            "Required parameter 'userData' is missing",
        )),
        Some(Value::Object(map)) if !map.is_empty() => Ok(Change::Merge(map.clone())),
        Some(_) => Err(Reply::error(
            400,
            10,
            "'userData' must be a non-empty object",
        )),
    }
}

/// 128 random bits, hex: session ids and CSRF tokens must not be guessable.
fn random_token() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State::new(
            &[("a".into(), "pa".into()), ("b".into(), "pb".into())],
            true,
            "http://sim",
        )
    }

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

    #[test]
    fn delete_user_data_changes_only_that_agents_session() {
        let mut s = state();
        let body = json!({"operationName": "DeleteUserData", "keys": ["UserData1"]});
        let (reply, publish) = s.operation("a", seed::SEED_SESSION_ID, &body);
        assert_eq!(reply.body["statusCode"], 0);
        let publish = publish.unwrap();
        assert_eq!(publish.agent, "a");
        assert_eq!(publish.data["referenceId"], reply.body["referenceId"]);
        assert!(
            publish.data["smssession"]["userData"]
                .get("UserData1")
                .is_none()
        );
        assert_eq!(
            publish.data["smssession"]["userData"]["UserData2"],
            123456789
        );
        assert!(
            s.session("a", seed::SEED_SESSION_ID).unwrap()["userData"]
                .get("UserData1")
                .is_none()
        );
        assert!(
            s.session("b", seed::SEED_SESSION_ID).unwrap()["userData"]
                .get("UserData1")
                .is_some()
        );
    }

    #[test]
    fn status_codes() {
        let mut s = state();
        let code = |s: &mut State, id: &str, body: Value| {
            s.operation("a", id, &body).0.body["statusCode"].clone()
        };
        assert_eq!(
            code(
                &mut s,
                "nope",
                json!({"operationName": "DeleteUserData", "keys": ["k"]})
            ),
            6
        );
        assert_eq!(
            code(&mut s, seed::SEED_SESSION_ID, json!({"keys": ["k"]})),
            1
        );
        assert_eq!(
            code(
                &mut s,
                seed::SEED_SESSION_ID,
                json!({"operationName": "DeleteUserData"})
            ),
            1
        );
        assert_eq!(
            code(
                &mut s,
                seed::SEED_SESSION_ID,
                json!({"operationName": "DeleteUserData", "keys": []})
            ),
            10
        );
        assert_eq!(
            code(
                &mut s,
                seed::SEED_SESSION_ID,
                json!({"operationName": "Dance"})
            ),
            10
        );
        assert_eq!(
            code(
                &mut s,
                seed::COMPLETED_SESSION_ID,
                json!({"operationName": "DeleteUserData", "keys": ["k"]})
            ),
            2
        );
        let (r, p) = s.operation(
            "a",
            seed::SEED_SESSION_ID,
            &json!({"operationName": "AttachUserData", "userData": {"n": 3, "s": "3"}}),
        );
        assert_eq!(r.body["statusCode"], 0);
        let ud = &p.unwrap().data["smssession"]["userData"];
        assert_eq!((ud["n"].clone(), ud["s"].clone()), (json!(3), json!("3")));
        assert_eq!(
            code(
                &mut s,
                seed::SEED_SESSION_ID,
                json!({"operationName": "UpdateUserData", "userData": 5})
            ),
            10
        );
    }
}
