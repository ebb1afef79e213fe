//! The simulator's state: agents and their credentials, each agent's own SMS sessions,
//! HTTP sessions (`JSESSIONID` -> agent + CSRF token), injected faults, the POST bodies
//! received, and the operation step: a body is read as an [`Operation`] (the very type the
//! gateway serializes), checked against GWS's status codes, run on the session
//! (`session.rs` holds the lifecycle) and answered with a `referenceId` plus the
//! notifications to publish to the acting agent. Pure and synchronous: the HTTP layer in
//! `rest.rs` and `control.rs` calls in with a lock held only for the call, never across an
//! `.await`.

use super::seed;
use super::session::{Effect, Participant, ParticipantType, Refused, SessionState, SmsSession};
use super::session::{MessageType, Visibility, new_session_id};
use gws_model::operation::{Operation, PartyTarget, TransferTarget};
use rand::Rng;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// Bound on HTTP sessions kept; the oldest is forgotten beyond it (the client re-logs in).
const MAX_HTTP_SESSIONS: usize = 10_000;
/// Connections remembered for the connection-sharing counters.
const MAX_PEERS: usize = 100_000;
/// Bound on SMS sessions per agent, seeds included; creating more is refused.
pub const MAX_SESSIONS_PER_AGENT: usize = 10_000;
/// Bound on recorded POST bodies (all agents together); the oldest is forgotten beyond it.
pub const MAX_RECORDED_REQUESTS: usize = 1_000;
/// Longest id a control-API caller may choose for a new session.
const MAX_SESSION_ID_LEN: usize = 64;

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
        Duration::from_millis(self.delay_ms)
    }
}

/// The first agent seen on a connection, and whether another one followed.
#[derive(Debug)]
struct PeerSeen {
    first: String,
    shared: bool,
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

/// A POST body as received (after authentication and CSRF), so tests can assert exactly
/// what the gateway sent. A body that is not JSON is kept as a JSON string of its text.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RecordedRequest {
    #[serde(skip)]
    pub agent: String,
    pub session_id: String,
    pub body: Value,
    /// The reply's body, so a test can learn what it was answered (e.g. its referenceId).
    pub reply: Value,
    /// The referenceId the operation's notifications carry, when the reply left it out
    /// (`reply_reference_ids` off): so a test can still name the operation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_id: Option<i64>,
}

/// What a control-API call asking for a customer-side event did wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("unknown agent '{0}'")]
    UnknownAgent(String),
    #[error("no SMS session '{0}'")]
    UnknownSession(String),
    #[error("the agent already has {MAX_SESSIONS_PER_AGENT} SMS sessions")]
    TooManySessions,
    #[error("SMS session '{0}' already exists")]
    SessionExists(String),
    #[error("the SMS session is {0}: the customer is no longer in the conversation")]
    Closed(&'static str),
    #[error("{0}")]
    Invalid(String),
}

/// `POST /simulator/agents/{user}/smssessions`: an inbound SMS; every field is optional.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Inbound {
    pub text: Option<String>,
    pub nickname: Option<String>,
    pub id: Option<String>,
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

    /// `GET /api/v2/me/smssessions`.
    pub fn list_sessions(&self, agent: &str) -> Reply {
        let sessions = self.sessions.get(agent).map_or(&[][..], Vec::as_slice);
        Reply::ok(json!({ "statusCode": 0, "smssessions": sessions }))
    }

    /// `GET /api/v2/me/smssessions/{id}`.
    pub fn get_session(&self, agent: &str, id: &str) -> Reply {
        match self.session(agent, id) {
            Some(session) => Reply::ok(json!({ "statusCode": 0, "smssession": session })),
            None => not_found(id),
        }
    }

    /// `GET /api/v2/me/smssessions/{id}/messages`: the transcript, oldest first.
    pub fn messages(&self, agent: &str, id: &str) -> Reply {
        match self.session(agent, id) {
            Some(session) => Reply::ok(json!({ "statusCode": 0, "messages": session.messages() })),
            None => not_found(id),
        }
    }

    /// One of `agent`'s sessions; another agent's is not found.
    pub fn session(&self, agent: &str, id: &str) -> Option<&SmsSession> {
        self.sessions.get(agent)?.iter().find(|s| s.id == id)
    }

    /// `POST /api/v2/me/smssessions/{id}` as received: records the raw body, then runs it
    /// as [`State::operation`] (a body that is not JSON is a validation error, code 10).
    /// The reply loses its `referenceId` when replies are to carry none (the notifications
    /// keep theirs); the recorded request still names it.
    pub fn receive(&mut self, agent: &str, id: &str, raw: &[u8]) -> (Reply, Vec<Publish>) {
        let body = serde_json::from_slice::<Value>(raw);
        if self.requests.len() >= MAX_RECORDED_REQUESTS {
            self.requests.pop_front();
        }
        self.requests.push_back(RecordedRequest {
            agent: agent.to_string(),
            session_id: id.to_string(),
            body: match &body {
                Ok(body) => body.clone(),
                Err(_) => Value::String(String::from_utf8_lossy(raw).into_owned()),
            },
            reply: Value::Null,
            reference_id: None,
        });
        let (mut reply, publishes) = match body {
            Ok(body) => self.operation(agent, id, &body),
            Err(_) => (
                Reply::error(400, 10, "request body is not JSON"),
                Vec::new(),
            ),
        };
        let withheld = if self.reply_reference_ids && !self.faults.reply_without_reference_id {
            None
        } else {
            reply
                .body
                .as_object_mut()
                .and_then(|body| body.remove("referenceId"))
                .and_then(|r| r.as_i64())
        };
        if let Some(recorded) = self.requests.back_mut() {
            recorded.reply = reply.body.clone();
            recorded.reference_id = withheld;
        }
        (reply, publishes)
    }

    /// The POST bodies `agent` sent that are still recorded, oldest first.
    pub fn requests(&self, agent: &str) -> Vec<&RecordedRequest> {
        self.requests.iter().filter(|r| r.agent == agent).collect()
    }

    /// Runs an operation body on one of `agent`'s sessions: the reply, and the
    /// notifications to publish (in order; none unless the reply is `statusCode` 0).
    /// Checked in order: the body (1 missing parameter or unknown operation, 10 wrong type
    /// or empty value), the session (6), the session's state (2). On error nothing changed.
    pub fn operation(&mut self, agent: &str, id: &str, body: &Value) -> (Reply, Vec<Publish>) {
        match self.try_operation(agent, id, body) {
            Ok(done) => done,
            Err(reply) => (reply, Vec::new()),
        }
    }

    fn try_operation(
        &mut self,
        agent: &str,
        id: &str,
        body: &Value,
    ) -> Result<(Reply, Vec<Publish>), Reply> {
        let op = parse_operation(body)?;
        let name = op.name();
        let session = self
            .sessions
            .get_mut(agent)
            .and_then(|list| list.iter_mut().find(|s| s.id == id))
            .ok_or_else(|| not_found(id))?;
        let effects = session.apply(agent, op).map_err(|refused| match refused {
            Refused::NotValidInState => Reply::error(
                400,
                2,
                format!(
                    "Operation '{name}' is not valid in the current state '{}'",
                    session.state.name()
                ),
            ),
            Refused::TooManyParticipants => Reply::error(
                400,
                2,
                format!("Operation '{name}' is not valid: the session has too many participants"),
            ),
        })?;
        self.stats.operations_accepted += 1;
        let reference_id = self.next_reference_id;
        self.next_reference_id += 1;
        let publishes = effects
            .iter()
            .map(|effect| Publish {
                agent: agent.to_string(),
                data: session.notification(effect, Some(reference_id)),
            })
            .collect();
        Ok((
            Reply::ok(json!({ "statusCode": 0, "referenceId": reference_id })),
            publishes,
        ))
    }

    /// A customer's SMS reaches `agent`: a new session in state `Invited`, with the customer
    /// as participant and the SMS as its first message. Returns the session and the
    /// `StatusChange` to publish (no `referenceId`: no request of the agent caused it).
    pub fn create_inbound(
        &mut self,
        agent: &str,
        inbound: Inbound,
    ) -> Result<(SmsSession, Publish), ControlError> {
        let text = non_empty(inbound.text, "text", "Hi, I need help")?;
        let nickname = non_empty(inbound.nickname, "nickname", "Customer")?;
        let sessions = self
            .sessions
            .get_mut(agent)
            .ok_or_else(|| ControlError::UnknownAgent(agent.to_string()))?;
        if sessions.len() >= MAX_SESSIONS_PER_AGENT {
            return Err(ControlError::TooManySessions);
        }
        let taken = |id: &str| sessions.iter().any(|s| s.id == id);
        let id = match inbound.id {
            Some(id) if !valid_session_id(&id) => {
                return Err(ControlError::Invalid(format!(
                    "'id' must be 1 to {MAX_SESSION_ID_LEN} characters of [0-9A-Za-z]"
                )));
            }
            Some(id) if taken(&id) => return Err(ControlError::SessionExists(id)),
            Some(id) => id,
            // 62^16 ids: a collision is rare, and retried.
            None => std::iter::repeat_with(new_session_id)
                .find(|id| !taken(id))
                .unwrap_or_default(),
        };
        let user_data = Map::from_iter([("Subject".to_string(), json!("Inbound SMS"))]);
        let mut session = SmsSession::new(id, &self.base_url, SessionState::Invited, user_data);
        let customer = Participant::new(nickname, ParticipantType::Customer);
        session.join(customer.clone(), false);
        session.append(customer, MessageType::Text, text, Visibility::All);
        let publish = Publish {
            agent: agent.to_string(),
            data: session.notification(&Effect::StatusChange, None),
        };
        sessions.push(session.clone());
        Ok((session, publish))
    }

    /// The customer writes in one of `agent`'s open sessions: the `MessageLogUpdated` to
    /// publish.
    pub fn customer_message(
        &mut self,
        agent: &str,
        id: &str,
        text: String,
    ) -> Result<Publish, ControlError> {
        if text.is_empty() {
            return Err(ControlError::Invalid("'text' must not be empty".into()));
        }
        let session = self.control_session(agent, id)?;
        let effect = session
            .customer_says(text)
            .map_err(|_| ControlError::Closed(session.state.name()))?;
        Ok(Publish {
            agent: agent.to_string(),
            data: session.notification(&effect, None),
        })
    }

    /// An `Error` notification about one of `agent`'s sessions, as GWS sends when an
    /// accepted operation later fails. The session itself is unchanged.
    pub fn error_notification(
        &mut self,
        agent: &str,
        id: &str,
        message: &str,
        reference_id: Option<i64>,
    ) -> Result<Publish, ControlError> {
        let session = self.control_session(agent, id)?;
        Ok(Publish {
            agent: agent.to_string(),
            data: session.error_notification(message, reference_id),
        })
    }

    fn control_session(&mut self, agent: &str, id: &str) -> Result<&mut SmsSession, ControlError> {
        self.sessions
            .get_mut(agent)
            .ok_or_else(|| ControlError::UnknownAgent(agent.to_string()))?
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or_else(|| ControlError::UnknownSession(id.to_string()))
    }
}

fn not_found(id: &str) -> Reply {
    Reply::error(404, 6, format!("SMS session '{id}' not found"))
}

fn missing(field: &str) -> Reply {
    Reply::error(400, 1, format!("Required parameter '{field}' is missing"))
}

fn invalid(message: impl Into<String>) -> Reply {
    Reply::error(400, 10, message)
}

/// The body as an [`Operation`], or the GWS error for it.
fn parse_operation(body: &Value) -> Result<Operation, Reply> {
    let Some(object) = body.as_object() else {
        return Err(invalid("the request body must be a JSON object"));
    };
    let name = match object.get("operationName") {
        None => return Err(missing("operationName")),
        Some(Value::String(name)) => name,
        Some(_) => return Err(invalid("'operationName' must be a string")),
    };
    // Echoed in messages: bounded, whatever the client sent.
    let name: String = name.chars().take(64).collect();
    let op = Operation::deserialize(body).map_err(|e| deserialize_error(&name, &e))?;
    validate(&op)?;
    Ok(op)
}

/// Sorts serde's complaint into GWS's codes. serde words these through its `de::Error`
/// constructors (`unknown_variant`, `missing_field`, and the flattened-enum miss), which
/// are stable; anything else (a wrong type or value) is a validation error.
fn deserialize_error(name: &str, e: &serde_json::Error) -> Reply {
    let text = e.to_string();
    if text.starts_with("unknown variant") {
        Reply::error(400, 1, format!("Unknown operation '{name}'"))
    } else if let Some(field) = text
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        missing(field)
    } else if text.starts_with("no variant of enum") {
        Reply::error(
            400,
            1,
            format!("Required target parameter of '{name}' is missing"),
        )
    } else {
        invalid(format!("Invalid parameter value for operation '{name}'"))
    }
}

/// What serde cannot say: required strings, keys and user data must not be empty, and
/// optional strings, when present, neither.
fn validate(op: &Operation) -> Result<(), Reply> {
    let mut strings: Vec<(&str, &str)> = Vec::new();
    match op {
        Operation::AttachUserData { user_data } | Operation::UpdateUserData { user_data } => {
            if user_data.is_empty() {
                return Err(invalid("'userData' must be a non-empty object"));
            }
        }
        Operation::DeleteUserData { keys } => {
            if keys.is_empty() {
                return Err(invalid(
                    "'keys' must be a non-empty array of non-empty strings",
                ));
            }
            strings.extend(keys.iter().map(|k| ("keys", k.as_str())));
        }
        Operation::SetDisposition {
            disposition,
            disposition_key,
        } => {
            strings.push(("disposition", disposition));
            strings.extend(disposition_key.as_deref().map(|k| ("dispositionKey", k)));
        }
        Operation::AddComment { comment } => strings.push(("comment", comment)),
        Operation::Accept { nickname } => {
            strings.extend(nickname.as_deref().map(|n| ("nickname", n)));
        }
        Operation::Complete { queue_name } => {
            strings.extend(queue_name.as_deref().map(|q| ("queueName", q)));
        }
        Operation::SendMessage { text } | Operation::SendToAgents { text } => {
            strings.push(("text", text));
        }
        Operation::SendUrl { url } => strings.push(("url", url)),
        Operation::Transfer { target, text } => {
            strings.push(match target {
                TransferTarget::TargetUri(t) => ("targetUri", t),
                TransferTarget::QueueName(q) => ("queueName", q),
            });
            strings.extend(text.as_deref().map(|t| ("text", t)));
        }
        Operation::Consult { target } | Operation::Invite { target } => {
            strings.push(match target {
                PartyTarget::TargetUri(t) => ("targetUri", t),
                PartyTarget::TargetPath(p) => ("targetPath", p),
            });
        }
        Operation::Reject
        | Operation::Leave
        | Operation::SendStartTypingNotification
        | Operation::SendStopTypingNotification => {}
    }
    match strings.iter().find(|(_, value)| value.is_empty()) {
        Some((field, _)) => Err(invalid(format!("'{field}' must not be empty"))),
        None => Ok(()),
    }
}

/// An optional control-API string: its default when absent, refused when empty.
fn non_empty(value: Option<String>, field: &str, default: &str) -> Result<String, ControlError> {
    match value {
        None => Ok(default.to_string()),
        Some(v) if v.is_empty() => Err(ControlError::Invalid(format!(
            "'{field}' must not be empty"
        ))),
        Some(v) => Ok(v),
    }
}

/// A caller-chosen session id must be safe in a URL path and look like GWS's.
fn valid_session_id(id: &str) -> bool {
    (1..=MAX_SESSION_ID_LEN).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric())
}

/// 128 random bits, hex: session ids and CSRF tokens must not be guessable.
fn random_token() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    /// Runs an operation as agent "a"; the reply's status code and the publishes.
    fn op(s: &mut State, id: &str, body: Value) -> (Value, Vec<Publish>) {
        let (reply, publishes) = s.operation("a", id, &body);
        assert!(
            publishes.iter().all(|p| p.agent == "a"),
            "only the acting agent hears of it"
        );
        (reply.body["statusCode"].clone(), publishes)
    }

    fn code(s: &mut State, id: &str, body: Value) -> Value {
        let (code, publishes) = op(s, id, body);
        if code != 0 {
            assert!(publishes.is_empty(), "an error publishes nothing");
        }
        code
    }

    fn kinds(publishes: &[Publish]) -> Vec<(String, String)> {
        publishes
            .iter()
            .map(|p| {
                let d = &p.data;
                (
                    d["messageType"].as_str().unwrap_or_default().to_string(),
                    d["notificationType"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    }

    fn inbound(s: &mut State, agent: &str) -> String {
        let (session, publish) = s.create_inbound(agent, Inbound::default()).unwrap();
        assert_eq!(publish.data["notificationType"], "StatusChange");
        assert_eq!(publish.data["smssession"]["state"], "Invited");
        assert!(publish.data.get("referenceId").is_none());
        session.id
    }

    #[test]
    fn delete_user_data_changes_only_that_agents_session() {
        let mut s = state();
        let body = json!({"operationName": "DeleteUserData", "keys": ["UserData1"]});
        let (reply, publishes) = s.operation("a", seed::SEED_SESSION_ID, &body);
        assert_eq!(reply.body["statusCode"], 0);
        let [publish] = publishes.as_slice() else {
            panic!("{publishes:?}")
        };
        assert_eq!(publish.agent, "a");
        assert_eq!(publish.data["notificationType"], "PropertiesUpdated");
        assert_eq!(publish.data["referenceId"], reply.body["referenceId"]);
        let user_data = &publish.data["smssession"]["userData"];
        assert!(user_data.get("UserData1").is_none());
        assert_eq!(user_data["UserData2"], 123456789);
        assert_eq!(user_data["RRequestedSkills"], Value::Null);
        assert_eq!(user_data["IdentifyCreateContact"], "3");
        let user_data = |s: &State, agent| {
            s.session(agent, seed::SEED_SESSION_ID)
                .unwrap()
                .user_data
                .clone()
        };
        assert!(user_data(&s, "a").get("UserData1").is_none());
        assert!(user_data(&s, "b").get("UserData1").is_some());
        assert_eq!(s.stats.operations_accepted, 1);
    }

    #[test]
    fn status_codes() {
        let mut s = state();
        let seed = seed::SEED_SESSION_ID;
        let cases = [
            (
                "nope",
                json!({"operationName": "DeleteUserData", "keys": ["k"]}),
                6,
            ),
            (seed, json!({"keys": ["k"]}), 1),
            (seed, json!({"operationName": "DeleteUserData"}), 1),
            (seed, json!({"operationName": "SendMessage"}), 1),
            (seed, json!({"operationName": "Transfer"}), 1),
            (seed, json!({"operationName": "Dance"}), 1),
            (seed, json!({"operationName": "SetInFocus"}), 1),
            (seed, json!({"operationName": 5}), 10),
            (seed, json!([1, 2]), 10),
            (
                seed,
                json!({"operationName": "DeleteUserData", "keys": []}),
                10,
            ),
            (
                seed,
                json!({"operationName": "DeleteUserData", "keys": ["a", ""]}),
                10,
            ),
            (
                seed,
                json!({"operationName": "DeleteUserData", "keys": [1]}),
                10,
            ),
            (
                seed,
                json!({"operationName": "UpdateUserData", "userData": 5}),
                10,
            ),
            (
                seed,
                json!({"operationName": "UpdateUserData", "userData": {}}),
                10,
            ),
            (
                seed,
                json!({"operationName": "SendMessage", "text": ""}),
                10,
            ),
            (seed, json!({"operationName": "SendUrl", "url": 3}), 10),
            (
                seed,
                json!({"operationName": "Invite", "targetUri": ""}),
                10,
            ),
            (seed, json!({"operationName": "Accept", "nickname": ""}), 10),
            (seed, json!({"operationName": "Accept"}), 2),
            (seed, json!({"operationName": "Reject"}), 2),
            (
                seed::COMPLETED_SESSION_ID,
                json!({"operationName": "DeleteUserData", "keys": ["k"]}),
                2,
            ),
        ];
        for (id, body, want) in cases {
            assert_eq!(code(&mut s, id, body.clone()), want, "{id} {body}");
        }
        assert_eq!(s.stats.operations_accepted, 0);
        let (reply, _) = s.operation(
            "a",
            seed::COMPLETED_SESSION_ID,
            &json!({"operationName": "SendMessage", "text": "x"}),
        );
        assert_eq!(reply.http_status, 400);
        assert_eq!(
            reply.body["statusMessage"],
            "Operation 'SendMessage' is not valid in the current state 'Completed'"
        );
        let (reply, _) = s.operation("a", "nope", &json!({"operationName": "Leave"}));
        assert_eq!(reply.http_status, 404);
    }

    #[test]
    fn user_data_stays_lossless_and_each_change_publishes_the_whole_session() {
        let mut s = state();
        let id = seed::SEED_SESSION_ID;
        let attach = json!({"operationName": "AttachUserData", "userData": {"n": 3, "s": "3", "z": null, "o": {"x": [1]}}});
        let (c, p) = op(&mut s, id, attach);
        assert_eq!(c, 0);
        let ud = &p[0].data["smssession"]["userData"];
        assert_eq!(
            (&ud["n"], &ud["s"], &ud["z"], &ud["o"]),
            (&json!(3), &json!("3"), &Value::Null, &json!({"x": [1]}))
        );
        let steps = [
            json!({"operationName": "UpdateUserData", "userData": {"n": "4"}}),
            json!({"operationName": "SetDisposition", "disposition": "Sold"}),
            json!({"operationName": "SetDisposition", "disposition": "x", "dispositionKey": "DISP_KEY"}),
            json!({"operationName": "AddComment", "comment": "nice"}),
            json!({"operationName": "DeleteUserData", "keys": ["s", "absent"]}),
        ];
        for body in steps {
            let (c, p) = op(&mut s, id, body.clone());
            assert_eq!(c, 0, "{body}");
            assert_eq!(
                kinds(&p),
                [(
                    "SMSsessionStateChangeMessage".into(),
                    "PropertiesUpdated".into()
                )],
                "{body}"
            );
            assert_eq!(p[0].data["smssession"]["state"], "Chatting");
        }
        let ud = &s.session("a", id).unwrap().user_data;
        assert_eq!(ud["n"], "4");
        assert_eq!(ud["DispositionCode"], "Sold");
        assert_eq!(ud["DISP_KEY"], "x");
        assert_eq!(ud["Comment"], "nice");
        assert!(ud.get("s").is_none());
    }

    #[test]
    fn reference_ids_increase_and_tag_every_notification_of_the_operation() {
        let mut s = state();
        let id = inbound(&mut s, "a");
        let mut last = 0;
        for body in [
            json!({"operationName": "Accept"}),
            json!({"operationName": "SendMessage", "text": "hi"}),
            json!({"operationName": "Consult", "targetUri": "http://gws/api/v2/users/sup"}),
        ] {
            let (reply, publishes) = s.operation("a", &id, &body);
            let r = reply.body["referenceId"].as_i64().unwrap();
            assert!(r > last);
            last = r;
            assert!(!publishes.is_empty());
            assert!(publishes.iter().all(|p| p.data["referenceId"] == r));
        }
    }

    #[test]
    fn the_inbound_flow_lives_the_whole_lifecycle() {
        let mut s = state();
        let id = inbound(&mut s, "a");
        assert_eq!(id.len(), 16);
        assert!(s.session("b", &id).is_none(), "another agent's session");
        let session = s.session("a", &id).unwrap();
        assert_eq!(session.participants[0].kind, ParticipantType::Customer);
        assert_eq!(session.messages()[0].text, "Hi, I need help");
        assert_eq!(
            code(
                &mut s,
                &id,
                json!({"operationName": "SendMessage", "text": "x"})
            ),
            2,
            "not before Accept"
        );

        let (c, p) = op(
            &mut s,
            &id,
            json!({"operationName": "Accept", "nickname": "Ann"}),
        );
        assert_eq!(c, 0);
        let state_change = (
            "SMSsessionStateChangeMessage".to_string(),
            "StatusChange".to_string(),
        );
        assert_eq!(
            kinds(&p),
            [
                state_change.clone(),
                (
                    "SMSsessionStateChangeMessage".into(),
                    "ParticipantsUpdated".into()
                ),
                ("MessageLogUpdated".into(), "NewMessages".into()),
            ]
        );
        assert_eq!(p[0].data["smssession"]["state"], "Chatting");
        assert_eq!(
            p[1].data["smssession"]["participants"][1]["nickname"],
            "Ann"
        );
        assert_eq!(p[2].data["messages"][0]["type"], "ParticipantJoined");
        assert_eq!(p[2].data["messages"][0]["from"]["nickname"], "Ann");

        let (c, p) = op(
            &mut s,
            &id,
            json!({"operationName": "SendMessage", "text": "Hello"}),
        );
        assert_eq!(c, 0);
        assert_eq!(
            kinds(&p),
            [("MessageLogUpdated".into(), "NewMessages".into())]
        );
        let message = &p[0].data["messages"][0];
        assert_eq!(
            p[0].data["smssessionUri"],
            format!("http://sim/api/v2/smssessions/{id}")
        );
        assert_eq!(
            (&message["type"], &message["visibility"], &message["text"]),
            (&json!("Text"), &json!("All"), &json!("Hello"))
        );
        assert_eq!(message["from"]["type"], "Agent");

        let (c, p) = op(
            &mut s,
            &id,
            json!({"operationName": "SendUrl", "url": "https://x.example/"}),
        );
        assert_eq!(c, 0);
        assert_eq!(p[0].data["messages"][0]["type"], "PushUrl");
        assert_eq!(p[0].data["messages"][0]["url"], "https://x.example/");

        let (c, p) = op(&mut s, &id, json!({"operationName": "Complete"}));
        assert_eq!(c, 0);
        assert_eq!(kinds(&p), [state_change]);
        assert_eq!(p[0].data["smssession"]["state"], "Completed");
        assert_eq!(p[0].data["smssession"]["capabilities"], json!([]));
        assert_eq!(
            code(
                &mut s,
                &id,
                json!({"operationName": "SendMessage", "text": "x"})
            ),
            2
        );

        let transcript = s.messages("a", &id).body;
        let messages = transcript["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 4, "{transcript}");
        let indices: Vec<i64> = messages
            .iter()
            .map(|m| m["index"].as_i64().unwrap())
            .collect();
        assert!(indices.windows(2).all(|w| w[0] < w[1]), "{indices:?}");
        let times: Vec<i64> = messages
            .iter()
            .map(|m| m["timestampSeconds"].as_i64().unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    }

    #[test]
    fn reject_leave_and_transfer_change_the_status() {
        let mut s = state();
        let id = inbound(&mut s, "a");
        let (c, p) = op(&mut s, &id, json!({"operationName": "Reject"}));
        assert_eq!(c, 0);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].data["smssession"]["state"], "Completed");

        let seed = seed::SEED_SESSION_ID;
        let (c, p) = op(&mut s, seed, json!({"operationName": "Leave"}));
        assert_eq!(c, 0);
        assert_eq!(p[0].data["smssession"]["state"], "LeftChat");
        assert_eq!(p[1].data["messages"][0]["type"], "ParticipantLeft");
        assert_eq!(p[1].data["messages"][0]["from"]["nickname"], "TestName");
        assert_eq!(
            code(
                &mut s,
                seed,
                json!({"operationName": "SetDisposition", "disposition": "ok"})
            ),
            0
        );
        assert_eq!(code(&mut s, seed, json!({"operationName": "Leave"})), 2);
        assert_eq!(
            code(
                &mut s,
                seed,
                json!({"operationName": "Complete", "queueName": "Q"})
            ),
            0
        );

        let sample = seed::SAMPLE_SESSION_ID;
        let (c, p) = op(
            &mut s,
            sample,
            json!({"operationName": "Transfer", "queueName": "Q", "text": "over to you"}),
        );
        assert_eq!(c, 0);
        assert_eq!(p[0].data["notificationType"], "StatusChange");
        assert_eq!(p[0].data["smssession"]["state"], "Completed");
    }

    #[test]
    fn consult_and_invite_add_a_participant() {
        let mut s = state();
        let id = seed::SEED_SESSION_ID;
        let (c, p) = op(
            &mut s,
            id,
            json!({"operationName": "Invite", "targetPath": "/users/sup2"}),
        );
        assert_eq!(c, 0);
        assert_eq!(p[0].data["notificationType"], "ParticipantsUpdated");
        let participants = p[0].data["smssession"]["participants"].as_array().unwrap();
        assert_eq!(participants.len(), 3);
        assert_eq!(participants[2]["nickname"], "sup2");
        assert_eq!(participants[2]["type"], "Agent");
    }

    #[test]
    fn seeds_have_a_short_transcript_and_state_derived_capabilities() {
        let s = state();
        for id in [seed::SEED_SESSION_ID, seed::SAMPLE_SESSION_ID] {
            let body = s.messages("a", id).body;
            let types: Vec<_> = body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["type"].clone())
                .collect();
            assert_eq!(types, [json!("ParticipantJoined"), json!("Text")]);
            let session = s.get_session("a", id).body;
            assert_eq!(session["smssession"]["state"], "Chatting");
            assert_eq!(session["smssession"]["capabilities"][0], "Transfer");
        }
        let done = s.get_session("a", seed::COMPLETED_SESSION_ID).body;
        assert_eq!(done["smssession"]["capabilities"], json!([]));
        let list = s.list_sessions("a").body;
        assert_eq!(list["smssessions"].as_array().unwrap().len(), 3);
        assert_eq!(s.get_session("a", "nope").body["statusCode"], 6);
        assert_eq!(s.messages("a", "nope").http_status, 404);
    }

    #[test]
    fn received_bodies_are_recorded_per_agent_and_bounded() {
        let mut s = state();
        s.receive("b", "x", b"not json");
        let body = br#"{"operationName":"DeleteUserData","keys":["UserData1"]}"#;
        let (reply, _) = s.receive("a", seed::SEED_SESSION_ID, body);
        assert_eq!(reply.body["statusCode"], 0);
        let a = s.requests("a");
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].session_id, seed::SEED_SESSION_ID);
        assert_eq!(
            a[0].body,
            json!({"operationName": "DeleteUserData", "keys": ["UserData1"]})
        );
        assert_eq!(s.requests("b")[0].body, "not json");
        for i in 0..MAX_RECORDED_REQUESTS + 10 {
            s.receive("a", &format!("s{i}"), b"{}");
        }
        let a = s.requests("a");
        assert_eq!(a.len() + s.requests("b").len(), MAX_RECORDED_REQUESTS);
        assert_eq!(
            a.last().unwrap().session_id,
            format!("s{}", MAX_RECORDED_REQUESTS + 9)
        );
        assert!(s.requests("b").is_empty(), "the oldest went first");
    }

    #[test]
    fn replies_can_leave_the_reference_id_to_the_notifications() {
        let mut s = state();
        let body = br#"{"operationName":"AddComment","comment":"c"}"#;
        let (reply, publishes) = s.receive("a", seed::SEED_SESSION_ID, body);
        let first = reply.body["referenceId"].as_i64().unwrap();
        assert_eq!(s.requests("a")[0].reference_id, None, "the reply said it");
        s.faults.reply_without_reference_id = true;
        let (reply, publishes2) = s.receive("a", seed::SEED_SESSION_ID, body);
        assert_eq!(
            reply.body,
            json!({"statusCode": 0}),
            "the seed page's reply"
        );
        assert_eq!(publishes2[0].data["referenceId"], first + 1);
        assert_eq!(s.requests("a")[1].reference_id, Some(first + 1));
        assert_eq!(s.requests("a")[1].reply, json!({"statusCode": 0}));
        s.faults = Faults::default();
        s.reply_reference_ids = false;
        let (reply, _) = s.receive("a", seed::SEED_SESSION_ID, body);
        assert!(reply.body.get("referenceId").is_none());
        // A refusal has no referenceId to leave out.
        let (reply, _) = s.receive("a", "nope", body);
        assert_eq!(reply.body["statusCode"], 6);
        assert_eq!(s.requests("a")[3].reference_id, None);
        assert_eq!(publishes[0].data["referenceId"], first);
    }

    #[test]
    fn control_events_are_checked() {
        let mut s = state();
        let given = Inbound {
            id: Some("MyId1".into()),
            ..Inbound::default()
        };
        assert!(s.create_inbound("a", given.clone()).is_ok());
        assert_eq!(
            s.create_inbound("a", given.clone()).unwrap_err(),
            ControlError::SessionExists("MyId1".into())
        );
        assert!(s.create_inbound("b", given).is_ok(), "ids are per agent");
        let bad = Inbound {
            id: Some("../me".into()),
            ..Inbound::default()
        };
        assert!(matches!(
            s.create_inbound("a", bad),
            Err(ControlError::Invalid(_))
        ));
        let empty = Inbound {
            text: Some(String::new()),
            ..Inbound::default()
        };
        assert!(matches!(
            s.create_inbound("a", empty),
            Err(ControlError::Invalid(_))
        ));
        assert_eq!(
            s.create_inbound("zed", Inbound::default()).unwrap_err(),
            ControlError::UnknownAgent("zed".into())
        );

        let p = s.customer_message("a", "MyId1", "more".into()).unwrap();
        assert_eq!(p.data["messages"][0]["from"]["type"], "Customer");
        assert_eq!(p.data["messages"][0]["index"], 2);
        assert!(matches!(
            s.customer_message("a", "MyId1", String::new()),
            Err(ControlError::Invalid(_))
        ));
        assert_eq!(
            s.customer_message("a", seed::COMPLETED_SESSION_ID, "x".into())
                .unwrap_err(),
            ControlError::Closed("Completed")
        );
        assert_eq!(
            s.customer_message("a", "nope", "x".into()).unwrap_err(),
            ControlError::UnknownSession("nope".into())
        );

        let e = s.error_notification("a", "MyId1", "boom", Some(3)).unwrap();
        assert_eq!(e.data["notificationType"], "Error");
        assert_eq!(e.data["errorMessage"], "boom");
        assert_eq!(e.data["referenceId"], 3);
        assert_eq!(
            e.data["smssessionUri"],
            "http://sim/api/v2/smssessions/MyId1"
        );
        assert!(s.error_notification("b", "nope", "boom", None).is_err());
    }

    #[test]
    fn missing_parameters_are_named() {
        let mut s = state();
        let id = seed::SEED_SESSION_ID;
        let message = |s: &mut State, body: Value| {
            s.operation("a", id, &body).0.body["statusMessage"].clone()
        };
        assert_eq!(
            message(&mut s, json!({"operationName": "DeleteUserData"})),
            "Required parameter 'keys' is missing"
        );
        assert_eq!(
            message(&mut s, json!({})),
            "Required parameter 'operationName' is missing"
        );
        assert_eq!(
            message(&mut s, json!({"operationName": "Dance"})),
            "Unknown operation 'Dance'"
        );
    }

    const FIELDS: [&str; 12] = [
        "operationName",
        "keys",
        "userData",
        "text",
        "url",
        "targetUri",
        "queueName",
        "targetPath",
        "nickname",
        "disposition",
        "dispositionKey",
        "comment",
    ];

    fn any_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            Just(json!(0)),
            Just(json!(true)),
            Just(json!("")),
            Just(json!("x")),
            Just(json!("Accept")),
            Just(json!("SendMessage")),
            Just(json!("DeleteUserData")),
            Just(json!([])),
            Just(json!([""])),
            Just(json!(["k", 1])),
            Just(json!({})),
            Just(json!({"a": 1})),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever arrives, the answer is a GWS status code, and only success publishes.
        #[test]
        fn any_body_gets_a_status_code_and_never_panics(
            fields in proptest::collection::vec((proptest::sample::select(&FIELDS[..]), any_value()), 0..5),
            raw in proptest::collection::vec(any::<u8>(), 0..32),
            session in proptest::sample::select(&[seed::SEED_SESSION_ID, seed::COMPLETED_SESSION_ID, "nope"][..]),
        ) {
            let mut s = state();
            let body = Value::Object(fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
            for (reply, publishes) in [s.operation("a", session, &body), s.receive("a", session, &raw)] {
                let code = reply.body["statusCode"].as_i64().unwrap();
                prop_assert!([0, 1, 2, 6, 10].contains(&code), "{}", reply.body);
                prop_assert_eq!(code == 0, !publishes.is_empty(), "{}", reply.body);
            }
        }
    }

    #[test]
    fn sessions_per_agent_are_bounded() {
        let mut s = state();
        while s.sessions["a"].len() < MAX_SESSIONS_PER_AGENT {
            s.create_inbound("a", Inbound::default()).unwrap();
        }
        assert_eq!(
            s.create_inbound("a", Inbound::default()).unwrap_err(),
            ControlError::TooManySessions
        );
        assert!(s.create_inbound("b", Inbound::default()).is_ok());
    }
}
