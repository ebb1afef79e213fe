//! The GWS REST operations the gateway performs for an agent, with the CSRF dance:
//! learn the token from `GET /api/v2/me` before the first write, send it on every POST,
//! and on a 403 "Missing or invalid Csrf token" fetch it again and retry once.
//!
//! Every call is bounded by one timeout covering all its round trips, and every reply
//! body is read up to a size limit. Every call first takes a slot of its share
//! ([`super::slots`]): REST calls share `--upstream-max-in-flight`, the event feed's reads
//! and CSRF fetches `--feed-max-in-flight`; a call's round trips run one at a time on it.
//! Requests go out on the one shared client, built by the agent ([`Agent::request`]: its
//! credentials and cookies), and every reply's cookies go back into that agent's jar.

use super::agents::Csrf;
use super::error::excerpt;
use super::operation::Operation;
use super::slots::Share;
use super::{Agent, AgentKey, AgentRegistry, Credential, UpstreamError};
use crate::mapping::ReferenceId;
use http::{HeaderName, HeaderValue, StatusCode};
use prost::bytes::Bytes;
use reqwest::Method;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// The largest reply body read from GWS; a larger one is treated as garbage. Reads (a
/// long transcript, many sessions) are the large ones; 4 MiB of JSON maps to less than the
/// 4 MiB gRPC clients accept by default.
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Below this much of its deadline left, a call sends nothing upstream: an answer could not
/// come back in time, and an operation sent anyway might be applied while the caller is told
/// it failed. Loopback round trips take well under a millisecond; a real GWS takes tens.
pub const MIN_UPSTREAM_BUDGET: Duration = Duration::from_millis(10);
/// How much of an unexpected body goes into an error message.
const EXCERPT_CHARS: usize = 120;

/// GWS accepted an operation (`statusCode` 0). The outcome follows as a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationAccepted {
    /// The reply's `referenceId`, as an int64 or (when it is none) its JSON text.
    pub reference: ReferenceId,
}

impl OperationAccepted {
    fn from_reply(reply: &Map<String, Value>) -> Self {
        Self {
            reference: ReferenceId::of(reply.get("referenceId")),
        }
    }
}

/// The reads GWS offers on SMS sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// `GET /api/v2/me/smssessions?fields=*` -> `{"smssessions": [...]}`.
    Sessions,
    /// `GET /api/v2/me/smssessions/{id}` -> `{"smssession": {...}}`.
    Session(String),
    /// `GET /api/v2/me/smssessions/{id}/messages` -> `{"messages": [...]}`.
    Transcript(String),
}

impl Read {
    /// The name logs and errors use.
    pub fn name(&self) -> &'static str {
        match self {
            Read::Sessions => "ListSessions",
            Read::Session(_) => "GetSession",
            Read::Transcript(_) => "GetTranscript",
        }
    }

    /// The session read, if the read is about one.
    pub fn session_id(&self) -> &str {
        match self {
            Read::Sessions => "",
            Read::Session(id) | Read::Transcript(id) => id,
        }
    }
}

/// The GWS REST client. A cloneable handle.
#[derive(Debug, Clone)]
pub struct GwsClient {
    /// The GWS root + `api/v2/me` and + `api/v2/me/smssessions`, built once: every call
    /// starts from one of them (appending a path segment with `url` costs more than
    /// anything else the gateway does to build a request).
    me: reqwest::Url,
    sessions: reqwest::Url,
    host: String,
    agents: AgentRegistry,
    /// The REST calls' slots.
    rest: Share,
    /// The event feed's slots (its CometD requests take them too).
    feed: Share,
}

/// Slots of each share when none are configured: what the budget of a 1,024 open-files
/// limit gives ([`crate::descriptors::Budget`]).
const DEFAULT_LIMIT: u64 = 1024;

impl GwsClient {
    /// `base` is the GWS root, e.g. `http://gws:8080` (a path prefix is kept).
    pub fn new(base: reqwest::Url, agents: AgentRegistry) -> Self {
        let host = match (base.host_str(), base.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => String::new(),
        };
        let me = with_segments(&base, &["api", "v2", "me"]);
        let sessions = with_segments(&me, &["smssessions"]);
        let budget = crate::descriptors::Budget::new(DEFAULT_LIMIT);
        Self {
            me,
            sessions,
            host,
            agents,
            rest: Share::observed(budget.upstream_rest()),
            feed: Share::new(budget.upstream_feed()),
        }
    }

    /// At most `rest` REST calls and `feed` event-feed requests in flight at once.
    pub fn with_limits(mut self, rest: usize, feed: usize) -> Self {
        self.rest = Share::observed(rest);
        self.feed = Share::new(feed);
        self
    }

    /// The event feed's share, for its CometD requests.
    pub fn feed_share(&self) -> &Share {
        &self.feed
    }

    /// Runs `work` on a slot of `share`, all of it within `timeout`. A call that timed out
    /// before it got its slot sent nothing and says so ([`UpstreamError::NoSlot`]); one that
    /// timed out on its slot is [`UpstreamError::Timeout`] (which callers that know they sent
    /// an operation relabel).
    async fn on_slot<T>(
        &self,
        share: &Share,
        timeout: Duration,
        work: impl std::future::Future<Output = Result<T, UpstreamError>>,
    ) -> Result<T, UpstreamError> {
        let slotted = std::sync::atomic::AtomicBool::new(false);
        let no_slot = || UpstreamError::NoSlot {
            limit: share.max(),
            waited: timeout,
        };
        let deadline = std::time::Instant::now() + timeout;
        let run = async {
            // A slot that comes with less than the minimum left is no use: nothing could be
            // sent on it any more, so the wait ends that much earlier, and a slot freed just
            // then (by another call's timeout, typically) counts as none.
            let wait = timeout.saturating_sub(MIN_UPSTREAM_BUDGET);
            let slot = share.acquire(wait).await.map_err(|_| no_slot())?;
            if deadline.saturating_duration_since(std::time::Instant::now()) < MIN_UPSTREAM_BUDGET {
                return Err(no_slot());
            }
            let _slot = slot;
            slotted.store(true, std::sync::atomic::Ordering::Relaxed);
            work.await
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(result) => result,
            Err(_) if !slotted.load(std::sync::atomic::Ordering::Relaxed) => Err(no_slot()),
            Err(_) => Err(UpstreamError::Timeout(timeout)),
        }
    }

    /// The upstream host (with port), used as the `ErrorInfo` domain.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn agents(&self) -> &AgentRegistry {
        &self.agents
    }

    /// The one HTTP client all agents' requests share.
    pub fn http(&self) -> &reqwest::Client {
        self.agents.http()
    }

    /// `credential`'s agent (`key` is its key). An unknown credential is checked first with
    /// `GET /api/v2/me`, the read the CSRF logic needs anyway: its token and cookie serve the
    /// first write, so a first operation costs no extra round trip. Bounded by `timeout`.
    pub async fn agent(
        &self,
        key: AgentKey,
        credential: &Credential,
        timeout: Duration,
    ) -> Result<Arc<Agent>, UpstreamError> {
        // A known agent needs no check, so no timer either (its call then meets the
        // deadline rules before its own request). Too little time to check an unknown
        // credential upstream: send nothing.
        if let Some(agent) = self.agents.get(&key) {
            return Ok(agent);
        }
        if timeout < MIN_UPSTREAM_BUDGET {
            return Err(UpstreamError::DeadlineTooShort(timeout));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let check = self.agents.admit(
            key,
            credential,
            Self::turn_by(deadline),
            |agent| async move {
                self.csrf_header(&agent, true, Self::left_for_check(deadline)?)
                    .await
            },
        );
        let (agent, _) = tokio::time::timeout_at(deadline, check)
            .await
            .map_err(|_| UpstreamError::Timeout(timeout))??;
        Ok(agent)
    }

    /// A read as `credential`'s agent. For an unknown credential the read itself is the
    /// check (a GET that proves the credential as well as `GET /api/v2/me` does), so the
    /// first read costs one request, not two; only when its answer says nothing about the
    /// credential (an HTTP error without a GWS body) does `GET /api/v2/me` decide. Returns
    /// the agent and the read's result.
    pub async fn read_as(
        &self,
        key: AgentKey,
        credential: &Credential,
        read: &Read,
        timeout: Duration,
    ) -> Result<(Arc<Agent>, Result<Map<String, Value>, UpstreamError>), UpstreamError> {
        if timeout < MIN_UPSTREAM_BUDGET {
            return Err(UpstreamError::DeadlineTooShort(timeout));
        }
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        let check = self.agents.admit(
            key,
            credential,
            Self::turn_by(deadline),
            |agent| async move {
                let result = self
                    .read(&agent, read, Self::left_for_check(deadline)?)
                    .await;
                match result {
                    // An HTTP error without a GWS body says nothing about the credential
                    // (a disabled feature answers 404): `GET /api/v2/me` decides.
                    Err(UpstreamError::Http { .. } | UpstreamError::BadBody { .. }) => self
                        .csrf_header(&agent, true, Self::left_for_check(deadline)?)
                        .await
                        .map(|_| result),
                    // Otherwise the read's own answer is the verdict.
                    other => other.map(Ok),
                }
            },
        );
        let (agent, first) = tokio::time::timeout_at(deadline, check)
            .await
            .map_err(|_| UpstreamError::Timeout(timeout))??;
        let result = match first {
            Some(result) => result.and_then(|read| read),
            None => {
                let left = timeout.saturating_sub(started.elapsed());
                self.read(&agent, read, left).await
            }
        };
        Ok((agent, result))
    }

    /// A first-time check waits for its turn until this: a turn with less left could send
    /// nothing, and the check's own timers then end before the call's, with what really happened
    /// (no turn, no slot) instead of a bare timeout.
    fn turn_by(deadline: tokio::time::Instant) -> tokio::time::Instant {
        deadline - MIN_UPSTREAM_BUDGET
    }

    /// What is left of the call's time for a check's request, or that too little is (so nothing
    /// is sent, and the check's token comes back).
    fn left_for_check(deadline: tokio::time::Instant) -> Result<Duration, UpstreamError> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left < MIN_UPSTREAM_BUDGET {
            return Err(UpstreamError::DeadlineTooShort(left));
        }
        Ok(left)
    }

    /// The GWS root + `api/v2/me/smssessions` + the given segments, each percent-encoded
    /// as one segment.
    fn sessions_url(&self, segments: &[&str]) -> reqwest::Url {
        with_segments(&self.sessions, segments)
    }

    /// `POST /api/v2/me/smssessions/{id}` with the operation's body. The whole exchange
    /// (CSRF fetch, POST, one retry) is bounded by `timeout`.
    pub async fn operation(
        &self,
        agent: &Agent,
        session_id: &str,
        operation: &Operation,
        timeout: Duration,
    ) -> Result<OperationAccepted, UpstreamError> {
        if timeout < MIN_UPSTREAM_BUDGET {
            return Err(UpstreamError::DeadlineTooShort(timeout));
        }
        let url = self.sessions_url(&[session_id]);
        // Shared, not copied, by the POST and its retry.
        let body = Bytes::from(operation.to_body());
        // Set once the POST leaves: from then on a timeout may hide an applied operation.
        let sent = std::sync::atomic::AtomicBool::new(false);
        let started = std::time::Instant::now();
        let deadline = started + timeout;
        // The minimum holds for the POST itself too, after the CSRF read took its time.
        let budget_left = || {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left < MIN_UPSTREAM_BUDGET {
                Err(UpstreamError::DeadlineTooShort(left))
            } else {
                Ok(())
            }
        };
        let work = async {
            let token = self.csrf_token(agent, false, timeout).await?;
            budget_left()?;
            sent.store(true, std::sync::atomic::Ordering::Relaxed);
            let (status, reply) = self.post(agent, &url, &body, token, timeout).await?;
            let (status, reply) = if is_csrf_rejection(status, &reply) {
                // The token dies with the HTTP session: learn the new one and retry once.
                tracing::debug!(agent = ?agent.key(), "CSRF token rejected, fetching it again");
                // GWS refused that POST: nothing is applied until the retry leaves.
                sent.store(false, std::sync::atomic::Ordering::Relaxed);
                let token = self.csrf_token(agent, true, timeout).await?;
                budget_left()?;
                sent.store(true, std::sync::atomic::Ordering::Relaxed);
                self.post(agent, &url, &body, token, timeout).await?
            } else {
                (status, reply)
            };
            interpret(status, &reply).map(|map| OperationAccepted::from_reply(&map))
        };
        let result = self.on_slot(&self.rest, timeout, work).await;
        // After the POST left, a timeout or a broken connection does not mean "not applied".
        let result = match result {
            Err(UpstreamError::Timeout(_)) if sent.load(std::sync::atomic::Ordering::Relaxed) => {
                Err(UpstreamError::TimeoutAfterSend(timeout))
            }
            Err(UpstreamError::Unreachable(why))
                if sent.load(std::sync::atomic::Ordering::Relaxed) && !why.nothing_sent() =>
            {
                Err(UpstreamError::UnreachableAfterSend(why))
            }
            other => other,
        };
        count(operation.name(), started, &result);
        result
    }

    /// A read, bounded by `timeout`. Returns the reply's JSON object once its `statusCode`
    /// is 0.
    pub async fn read(
        &self,
        agent: &Agent,
        read: &Read,
        timeout: Duration,
    ) -> Result<Map<String, Value>, UpstreamError> {
        self.read_on(&self.rest, agent, read, timeout).await
    }

    /// A read for the event feed (a stream's snapshot), on the feed's share.
    pub async fn feed_read(
        &self,
        agent: &Agent,
        read: &Read,
        timeout: Duration,
    ) -> Result<Map<String, Value>, UpstreamError> {
        self.read_on(&self.feed, agent, read, timeout).await
    }

    async fn read_on(
        &self,
        share: &Share,
        agent: &Agent,
        read: &Read,
        timeout: Duration,
    ) -> Result<Map<String, Value>, UpstreamError> {
        if timeout < MIN_UPSTREAM_BUDGET {
            return Err(UpstreamError::DeadlineTooShort(timeout));
        }
        let url = self.read_url(read);
        let work = async {
            let resp = self
                .send(agent, agent.request(self.http(), Method::GET, url), timeout)
                .await?;
            // Every GET reply carries the CSRF headers when protection is on: keep them, so
            // a first write after a read needs no extra round trip.
            if let Some((name, value)) = csrf_from_headers(resp.headers()) {
                agent.set_csrf(Csrf::Token { name, value });
            }
            let (status, reply) = read_reply(resp, timeout).await?;
            interpret(status, &reply)
        };
        let started = std::time::Instant::now();
        let result = self.on_slot(share, timeout, work).await;
        count(read.name(), started, &result);
        result
    }

    /// Where `read` is read from.
    fn read_url(&self, read: &Read) -> reqwest::Url {
        match read {
            Read::Sessions => {
                let mut url = self.sessions.clone();
                url.set_query(Some("fields=*"));
                url
            }
            Read::Session(id) => self.sessions_url(&[id]),
            Read::Transcript(id) => self.sessions_url(&[id, "messages"]),
        }
    }

    /// The agent's CSRF header for writes (`None` when GWS does not use CSRF protection),
    /// read with `GET /api/v2/me` when not known yet or when `refresh` is set. The CometD
    /// requests carry it too: GWS wants it on every POST.
    pub async fn csrf_header(
        &self,
        agent: &Agent,
        refresh: bool,
        timeout: Duration,
    ) -> Result<Option<(HeaderName, HeaderValue)>, UpstreamError> {
        self.csrf_header_on(&self.rest, agent, refresh, timeout)
            .await
    }

    /// [`csrf_header`](Self::csrf_header) for the event feed, on the feed's share.
    pub async fn feed_csrf_header(
        &self,
        agent: &Agent,
        refresh: bool,
        timeout: Duration,
    ) -> Result<Option<(HeaderName, HeaderValue)>, UpstreamError> {
        self.csrf_header_on(&self.feed, agent, refresh, timeout)
            .await
    }

    async fn csrf_header_on(
        &self,
        share: &Share,
        agent: &Agent,
        refresh: bool,
        timeout: Duration,
    ) -> Result<Option<(HeaderName, HeaderValue)>, UpstreamError> {
        if let Some(known) = known_csrf(agent, refresh) {
            return Ok(known);
        }
        let work = self.csrf_token(agent, refresh, timeout);
        self.on_slot(share, timeout, work).await
    }

    async fn post(
        &self,
        agent: &Agent,
        url: &reqwest::Url,
        body: &Bytes,
        csrf: Option<(HeaderName, HeaderValue)>,
        timeout: Duration,
    ) -> Result<(StatusCode, Vec<u8>), UpstreamError> {
        let mut req = agent
            .request(self.http(), Method::POST, url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.clone());
        if let Some((name, value)) = csrf {
            req = req.header(name, value);
        }
        let resp = self.send(agent, req, timeout).await?;
        read_reply(resp, timeout).await
    }

    /// Sends one of `agent`'s requests (with the trace headers) and keeps the reply's
    /// cookies in the agent's jar.
    async fn send(
        &self,
        agent: &Agent,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<reqwest::Response, UpstreamError> {
        let (client, request) = request.build_split();
        let mut request = request.map_err(|e| UpstreamError::from_reqwest(&e, timeout))?;
        crate::telemetry::insert_trace_headers(request.headers_mut());
        let resp = client
            .execute(request)
            .await
            .map_err(|e| UpstreamError::from_reqwest(&e, timeout))?;
        agent.absorb(&resp);
        Ok(resp)
    }

    /// The agent's CSRF header to send on writes, if GWS uses CSRF protection.
    async fn csrf_token(
        &self,
        agent: &Agent,
        refresh: bool,
        timeout: Duration,
    ) -> Result<Option<(HeaderName, HeaderValue)>, UpstreamError> {
        if let Some(known) = known_csrf(agent, refresh) {
            return Ok(known);
        }
        let me = agent.request(self.http(), Method::GET, self.me.clone());
        let resp = self.send(agent, me, timeout).await?;
        let found = csrf_from_headers(resp.headers());
        let (status, reply) = read_reply(resp, timeout).await?;
        // A failed GET /me (bad credentials, GWS down) fails the operation with its reason.
        interpret(status, &reply)?;
        let csrf = match found {
            Some((name, value)) => Csrf::Token { name, value },
            None => Csrf::Disabled,
        };
        agent.set_csrf(csrf.clone());
        Ok(match csrf {
            Csrf::Token { name, value } => Some((name, value)),
            _ => None,
        })
    }
}

/// Counts one exchange of `name`, by its outcome (an error's [`UpstreamError::label`]).
fn count<T>(name: &'static str, started: std::time::Instant, result: &Result<T, UpstreamError>) {
    let outcome = match result {
        Ok(_) => crate::metrics::UpstreamOutcome::OK,
        Err(e) => e.label(),
    };
    crate::metrics::upstream_request(name, outcome, started.elapsed());
}

/// The agent's CSRF header as already known, unless `refresh` asks to fetch it again:
/// `Some(None)` when GWS uses no CSRF protection, `None` when it must be fetched.
#[allow(clippy::option_option)]
fn known_csrf(agent: &Agent, refresh: bool) -> Option<Option<(HeaderName, HeaderValue)>> {
    match agent.csrf() {
        Csrf::Disabled if !refresh => Some(None),
        Csrf::Token { name, value } if !refresh => Some(Some((name, value))),
        _ => None,
    }
}

/// `base` + the given path segments, each percent-encoded as one segment.
fn with_segments(base: &reqwest::Url, segments: &[&str]) -> reqwest::Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

fn csrf_from_headers(headers: &http::HeaderMap) -> Option<(HeaderName, HeaderValue)> {
    let name = headers.get("x-csrf-header")?.to_str().ok()?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).ok()?;
    // A copy, not a clone: a header value received is a slice of the connection's read
    // buffer, and the agent keeps its token for hours; a clone would keep that whole
    // buffer alive, per agent, for as long as the token.
    let mut value = HeaderValue::from_bytes(headers.get("x-csrf-token")?.as_bytes()).ok()?;
    value.set_sensitive(true);
    Some((name, value))
}

fn is_csrf_rejection(status: StatusCode, body: &[u8]) -> bool {
    status == StatusCode::FORBIDDEN
        && String::from_utf8_lossy(body)
            .to_ascii_lowercase()
            .contains("csrf")
}

/// Reads a reply body, at most [`MAX_BODY`] bytes.
async fn read_reply(
    mut resp: reqwest::Response,
    timeout: Duration,
) -> Result<(StatusCode, Vec<u8>), UpstreamError> {
    let status = resp.status();
    let too_big = || UpstreamError::BadBody {
        http_status: status.as_u16(),
        excerpt: format!("reply body larger than {MAX_BODY} bytes"),
    };
    if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| UpstreamError::from_reqwest(&e, timeout))?
    {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body))
}

/// Classifies a GWS reply: the body's `statusCode` decides first, the HTTP status second.
/// `statusCode` 0 gives the reply's JSON object.
pub fn interpret(status: StatusCode, body: &[u8]) -> Result<Map<String, Value>, UpstreamError> {
    let http_status = status.as_u16();
    // Bounded parse: deep or huge values inside a valid reply are kept as raw text rather
    // than making the whole reply "not JSON".
    let parsed: Option<Map<String, Value>> = match crate::json::parse(body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    };
    let status_code = parsed
        .as_ref()
        .and_then(|m| m.get("statusCode"))
        .and_then(Value::as_i64);
    match (parsed, status_code) {
        (Some(map), Some(0)) => Ok(map),
        (Some(map), Some(code)) => Err(UpstreamError::Gws {
            status_code: code,
            status_message: map
                .get("statusMessage")
                .and_then(Value::as_str)
                .map(|m| excerpt(m.as_bytes(), 300))
                .unwrap_or_default(),
            http_status,
        }),
        _ if status.is_success() => Err(UpstreamError::BadBody {
            http_status,
            excerpt: excerpt(body, EXCERPT_CHARS),
        }),
        _ => Err(UpstreamError::Http {
            http_status,
            excerpt: excerpt(body, EXCERPT_CHARS),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_csrf_token_does_not_pin_the_read_buffer() {
        // As hyper hands them over: header values are slices of the connection's buffer.
        let buffer = prost::bytes::Bytes::from(vec![b'x'; 8192]);
        let token = buffer.slice(100..132);
        let mut headers = http::HeaderMap::new();
        headers.insert("x-csrf-header", HeaderValue::from_static("X-CSRF-TOKEN"));
        headers.insert(
            "x-csrf-token",
            HeaderValue::from_maybe_shared(token).unwrap(),
        );
        let (name, value) = csrf_from_headers(&headers).unwrap();
        assert_eq!(name, "x-csrf-token");
        assert_eq!(value.as_bytes(), &buffer[100..132]);
        assert!(value.is_sensitive());
        let inside = buffer.as_ptr_range();
        assert!(
            !inside.contains(&value.as_bytes().as_ptr()),
            "the token must be a copy, not a slice keeping 8 KiB alive"
        );
    }

    #[test]
    fn interprets_gws_bodies_first() {
        let ok = interpret(StatusCode::OK, br#"{"statusCode":0,"referenceId":15}"#).unwrap();
        assert_eq!(OperationAccepted::from_reply(&ok).reference.id, Some(15));
        let ok = interpret(StatusCode::OK, br#"{"statusCode":0}"#).unwrap();
        assert_eq!(
            OperationAccepted::from_reply(&ok).reference,
            ReferenceId::default()
        );
        // Beyond int64: never silently absent, kept as its exact text.
        let ok = interpret(
            StatusCode::OK,
            br#"{"statusCode":0,"referenceId":9223372036854775808}"#,
        )
        .unwrap();
        let reference = OperationAccepted::from_reply(&ok).reference;
        assert_eq!(reference.id, None);
        assert_eq!(reference.json, "9223372036854775808");
        let err = interpret(
            StatusCode::BAD_REQUEST,
            br#"{"statusCode":6,"statusMessage":"not found"}"#,
        );
        assert_eq!(
            err.unwrap_err(),
            UpstreamError::Gws {
                status_code: 6,
                status_message: "not found".into(),
                http_status: 400
            }
        );
    }

    #[test]
    fn garbage_bodies_are_classified_not_trusted() {
        assert!(matches!(
            interpret(StatusCode::OK, b"<html>oops</html>"),
            Err(UpstreamError::BadBody {
                http_status: 200,
                ..
            })
        ));
        assert!(matches!(
            interpret(StatusCode::BAD_GATEWAY, b""),
            Err(UpstreamError::Http {
                http_status: 502,
                ..
            })
        ));
        assert!(matches!(
            interpret(StatusCode::OK, br#"{"statusCode":"zero"}"#),
            Err(UpstreamError::BadBody { .. })
        ));
        assert!(matches!(
            interpret(StatusCode::OK, br#"[1,2"#),
            Err(UpstreamError::BadBody { .. })
        ));
    }

    #[test]
    fn csrf_rejection_is_recognised() {
        assert!(is_csrf_rejection(
            StatusCode::FORBIDDEN,
            b"Missing or invalid Csrf token"
        ));
        assert!(!is_csrf_rejection(
            StatusCode::FORBIDDEN,
            br#"{"statusCode":3}"#
        ));
        assert!(!is_csrf_rejection(StatusCode::OK, b"csrf"));
    }

    #[test]
    fn urls_keep_prefix_and_encode_segments() {
        // A path prefix is kept, with or without a trailing slash.
        for base in ["http://gws:8080/prefix/", "http://gws:8080/prefix"] {
            let client = GwsClient::new(
                base.parse().unwrap(),
                AgentRegistry::new(Default::default()).unwrap(),
            );
            assert_eq!(
                client.sessions_url(&["a/b c"]).as_str(),
                "http://gws:8080/prefix/api/v2/me/smssessions/a%2Fb%20c"
            );
            assert_eq!(
                client.sessions_url(&["s1", "messages"]).as_str(),
                "http://gws:8080/prefix/api/v2/me/smssessions/s1/messages"
            );
            assert_eq!(client.me.as_str(), "http://gws:8080/prefix/api/v2/me");
            assert_eq!(client.host(), "gws:8080");
        }
        let root = GwsClient::new(
            "http://gws:8080".parse().unwrap(),
            AgentRegistry::new(Default::default()).unwrap(),
        );
        assert_eq!(root.me.as_str(), "http://gws:8080/api/v2/me");
        assert_eq!(
            root.sessions_url(&["s1"]).as_str(),
            "http://gws:8080/api/v2/me/smssessions/s1"
        );
        let reads = [
            (
                Read::Sessions,
                "http://gws:8080/api/v2/me/smssessions?fields=*",
            ),
            (
                Read::Session("s1".into()),
                "http://gws:8080/api/v2/me/smssessions/s1",
            ),
            (
                Read::Transcript("s1".into()),
                "http://gws:8080/api/v2/me/smssessions/s1/messages",
            ),
        ];
        for (read, want) in reads {
            assert_eq!(root.read_url(&read).as_str(), want, "{read:?}");
        }
    }
}
