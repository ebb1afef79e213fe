//! The thin long-polling driver: performs the [`Action`]s of the [`State`] machine
//! with reqwest and tokio timers, feeds the outcomes back, and watches the
//! cancellation token and the listener throughout. No protocol decision is made
//! here; the only policy is turning HTTP into [`RequestError`]s without ever
//! exposing headers (they carry the agent's credentials). Requests go out on the
//! gateway's one shared client, built by the agent (its credentials and cookies), and
//! every reply's cookies go back into the agent's jar.

use std::collections::VecDeque;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::message::{Message, parse_response};
use super::state::{Action, Input, Request, RequestError, State};
use super::{BayeuxConfig, BayeuxEvent};
use crate::upstream::{Agent, Transport};

/// Largest response body accepted; a connect reply carries a batch of events, which
/// for one agent stays far below this.
const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// Runs one Bayeux client session until `cancel` fires (then sends a best-effort
/// /meta/disconnect and returns) or a terminal failure (after sending `Failed`).
/// Stops quietly if `events` is closed (nobody listens any more).
pub async fn run(
    http: reqwest::Client,
    agent: std::sync::Arc<Agent>,
    config: BayeuxConfig,
    events: mpsc::Sender<BayeuxEvent>,
    cancel: CancellationToken,
) {
    let mut state = State::new(&config);
    let mut todo: VecDeque<Action> = state.handle(Input::Start, Instant::now()).into();
    // Each action list ends in Send, Wait or Stop, so the queue only runs dry if the
    // machine has nothing left to do, which ends the session too.
    while let Some(action) = todo.pop_front() {
        let input = match action {
            Action::Emit(event) => {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    sent = events.send(event) => {
                        if sent.is_err() {
                            tracing::debug!("bayeux: listener gone, stopping");
                            break;
                        }
                        continue;
                    }
                }
            }
            Action::Stop => return,
            Action::Wait(delay) => {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    () = events.closed() => break,
                    () = tokio::time::sleep(delay) => Input::Timer,
                }
            }
            Action::Send(Request {
                kind,
                messages,
                timeout,
            }) => {
                // Serialized now and the messages dropped: a connect waits upstream for up
                // to its whole timeout, with only its body needed meanwhile (per agent).
                let body = serde_json::to_vec(&messages);
                drop(messages);
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    () = events.closed() => break,
                    result = execute(&http, &agent, &config, body, timeout) => Input::Reply {
                        kind,
                        result,
                    },
                }
            }
        };
        todo.extend(state.handle(input, Instant::now()));
    }
    // Cancelled or nobody listening: release the server session (and its parked
    // connect, which the select above has already dropped) if there is one.
    if let Some(request) = state.disconnect_request() {
        let body = serde_json::to_vec(&request.messages);
        let outcome = execute(&http, &agent, &config, body, request.timeout).await;
        tracing::debug!(ok = outcome.is_ok(), "bayeux: disconnect sent");
    }
}

/// POSTs a request's messages (`body`, the JSON array) and parses the reply.
async fn execute(
    http: &reqwest::Client,
    agent: &Agent,
    config: &BayeuxConfig,
    body: serde_json::Result<Vec<u8>>,
    timeout: std::time::Duration,
) -> Result<Vec<Message>, RequestError> {
    let body = body.map_err(|_| RequestError::Malformed("request not serializable".into()))?;
    // Held until the reply's body is read: the connection is busy until then.
    let waiting = Instant::now();
    let _slot = config
        .slots
        .acquire(timeout)
        .await
        .map_err(|_| RequestError::Transport(Transport::InFlightLimit))?;
    let timeout = timeout.saturating_sub(waiting.elapsed());
    // A slot that came with next to no time left could send nothing: what held the request
    // back was the limit, not GWS.
    if timeout < crate::upstream::MIN_UPSTREAM_BUDGET {
        return Err(RequestError::Transport(Transport::InFlightLimit));
    }
    let mut response = agent
        .request(http, reqwest::Method::POST, config.url.clone())
        .headers(config.headers.clone())
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/json;charset=UTF-8",
        )
        .body(body)
        .timeout(timeout)
        .send()
        .await
        .map_err(classify)?;
    agent.absorb(&response);
    let status = response.status();
    if !status.is_success() {
        return Err(RequestError::Http(status.as_u16()));
    }
    let mut buf = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(classify)? {
        if buf.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(RequestError::Malformed("response too large".into()));
        }
        buf.extend_from_slice(&chunk);
    }
    let parsed = parse_response(&buf).map_err(|e| RequestError::Malformed(e.to_string()))?;
    for (index, why) in &parsed.skipped {
        // Skipped alone: the rest of the batch is delivered and acknowledged.
        crate::metrics::NOTIFICATIONS_UNMAPPED.inc();
        tracing::warn!(index, %why, "bayeux: skipped a message that could not be parsed");
    }
    Ok(parsed.messages)
}

/// The failure's category (its Display would include the URL and nested causes), classified
/// as REST calls classify theirs.
fn classify(e: reqwest::Error) -> RequestError {
    let failure = Transport::of(&e);
    if failure == Transport::OutOfDescriptors {
        crate::descriptors::exhausted(crate::descriptors::Place::Feed);
    }
    RequestError::Transport(failure)
}
