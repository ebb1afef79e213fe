//! The simulator's control API, for tests and demos (no authentication: loopback tooling):
//! - `POST /simulator/agents/{user}/notifications[?channel=C][&repeat=N]` body = a
//!   notification's JSON `data`: published (N times, at most 10,000) to that agent's CometD
//!   sessions.
//! - `POST /simulator/agents/{user}/cometd/drop`: server-side drop of the agent's CometD
//!   sessions (their next connect gets 402 + handshake advice).
//! - `GET /simulator/agents/{user}/cometd`: `{"sessions": n, "handshakes": n}`.
//! - `GET /simulator/agents/{user}/smssessions/{id}`: a session as GWS JSON (the resource).
//! - `POST /simulator/agents/{user}/smssessions` `{"text", "nickname", "id"}` (all optional):
//!   a customer's SMS arrives: a new `Invited` session, its `StatusChange` published.
//! - `POST /simulator/agents/{user}/smssessions/{id}/customer-message` `{"text"}`: the
//!   customer writes; `MessageLogUpdated` published.
//! - `POST /simulator/agents/{user}/smssessions/{id}/error` `{"message", "referenceId"}`:
//!   publishes an `Error` notification naming the session by `smssessionUri`.
//! - `GET /simulator/agents/{user}/requests`: the operation bodies the agent POSTed, as
//!   received, oldest first (the last 1,000 of all agents are kept).
//! - `PUT /simulator/faults` `{"delay_ms": n, "delay_max_ms": m, "fail": {"http_status", "body",
//!   "content_type", "times"}, "withhold_notifications": bool, "reply_without_reference_id":
//!   bool}` and `DELETE /simulator/faults`: delay REST replies (by n ms, or by a uniformly drawn
//!   n..=m ms) or fail them, publish no operation's notifications, answer accepted operations
//!   without their `referenceId`.
//! - `GET /simulator/stats`: request counters; `POST /simulator/http-sessions/expire`:
//!   forget every HTTP session (cookies and CSRF tokens), as a GWS restart would.
//! - `GET /simulator/health`.

use super::state::{ControlError, Faults, Inbound, Publish};
use super::{SMS_CHANNEL, Simulator};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};
use std::collections::HashMap;

pub fn router(sim: Simulator) -> Router {
    Router::new()
        .route(
            "/simulator/health",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/simulator/agents/{user}/notifications", post(inject))
        .route(
            "/simulator/agents/{user}/notifications/raw",
            post(inject_raw),
        )
        .route("/simulator/agents/{user}/cometd/drop", post(drop_sessions))
        .route("/simulator/agents/{user}/cometd", get(cometd_stats))
        .route("/simulator/agents/{user}/smssessions", post(create_session))
        .route(
            "/simulator/agents/{user}/smssessions/{id}",
            get(peek_session),
        )
        .route(
            "/simulator/agents/{user}/smssessions/{id}/customer-message",
            post(customer_message),
        )
        .route(
            "/simulator/agents/{user}/smssessions/{id}/error",
            post(error_notification),
        )
        .route("/simulator/agents/{user}/requests", get(requests))
        .route("/simulator/faults", put(set_faults).delete(clear_faults))
        .route("/simulator/stats", get(stats))
        .route(
            "/simulator/http-sessions/expire",
            post(expire_http_sessions),
        )
        .with_state(sim)
}

fn unknown_agent(user: &str) -> Response {
    refused(&ControlError::UnknownAgent(user.to_string()))
}

/// A control-API refusal: `{"error": "..."}` with the HTTP status that says why.
fn refused(e: &ControlError) -> Response {
    let status = match e {
        ControlError::UnknownAgent(_) | ControlError::UnknownSession(_) => StatusCode::NOT_FOUND,
        ControlError::TooManySessions => StatusCode::TOO_MANY_REQUESTS,
        ControlError::SessionExists(_) | ControlError::Closed(_) => StatusCode::CONFLICT,
        ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
    };
    (status, axum::Json(json!({"error": e.to_string()}))).into_response()
}

/// A JSON body whose fields are all optional: an empty body means all defaults, so
/// `curl -X POST` works without a content type.
// The error is the 400 reply itself, returned straight to axum.
#[allow(clippy::result_large_err)]
fn optional_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| refused(&ControlError::Invalid(format!("bad JSON body: {e}"))))
}

/// Publishes what a control step produced, or answers its refusal.
fn publish_or_refuse(sim: &Simulator, outcome: Result<Publish, ControlError>) -> Response {
    match outcome {
        Ok(publish) => {
            sim.publish_all(vec![publish]);
            axum::Json(json!({"published": true})).into_response()
        }
        Err(e) => refused(&e),
    }
}

async fn inject(
    State(sim): State<Simulator>,
    Path(user): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    axum::Json(data): axum::Json<Value>,
) -> Response {
    publish_repeated(&sim, &user, &query, data)
}

/// Publishes `data` on `?channel=` (the SMS channel by default) `?repeat=` times (1-10,000).
fn publish_repeated(
    sim: &Simulator,
    user: &str,
    query: &HashMap<String, String>,
    data: Value,
) -> Response {
    if !sim.state().has_agent(user) {
        return unknown_agent(user);
    }
    let channel = query
        .get("channel")
        .map(String::as_str)
        .unwrap_or(SMS_CHANNEL);
    let repeat: usize = query
        .get("repeat")
        .and_then(|r| r.parse().ok())
        .unwrap_or(1)
        .clamp(1, 10_000);
    let delivered: usize = (0..repeat)
        .map(|_| sim.hub().publish(user, channel, data.clone()))
        .sum();
    axum::Json(json!({ "delivered": delivered })).into_response()
}

/// Publishes the body exactly as sent, as the `data` of one CometD event (repeatable):
/// nesting serde_json would refuse, integers beyond 64 bits, or text that is not JSON at
/// all, to try what the gateway does with a hostile GWS.
async fn inject_raw(
    State(sim): State<Simulator>,
    Path(user): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: String,
) -> Response {
    publish_repeated(&sim, &user, &query, gws_model::json::raw(body))
}

async fn drop_sessions(State(sim): State<Simulator>, Path(user): Path<String>) -> Response {
    if !sim.state().has_agent(&user) {
        return unknown_agent(&user);
    }
    axum::Json(json!({ "dropped": sim.hub().drop_sessions(&user) })).into_response()
}

async fn cometd_stats(State(sim): State<Simulator>, Path(user): Path<String>) -> Response {
    if !sim.state().has_agent(&user) {
        return unknown_agent(&user);
    }
    let hub = sim.hub();
    axum::Json(
        json!({ "sessions": hub.session_count(&user), "handshakes": hub.handshake_count(&user) }),
    )
    .into_response()
}

async fn peek_session(
    State(sim): State<Simulator>,
    Path((user, id)): Path<(String, String)>,
) -> Response {
    match sim.state().session(&user, &id) {
        Some(session) => axum::Json(json!(session)).into_response(),
        None => refused(&ControlError::UnknownSession(id)),
    }
}

async fn create_session(
    State(sim): State<Simulator>,
    Path(user): Path<String>,
    body: Bytes,
) -> Response {
    let inbound: Inbound = match optional_json(&body) {
        Ok(inbound) => inbound,
        Err(resp) => return resp,
    };
    let created = sim.state().create_inbound(&user, inbound);
    match created {
        Ok((session, publish)) => {
            sim.publish_all(vec![publish]);
            let body = json!({"id": session.id, "session": session});
            (StatusCode::CREATED, axum::Json(body)).into_response()
        }
        Err(e) => refused(&e),
    }
}

#[derive(Default, serde::Deserialize)]
struct CustomerMessage {
    text: Option<String>,
}

async fn customer_message(
    State(sim): State<Simulator>,
    Path((user, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let message: CustomerMessage = match optional_json(&body) {
        Ok(message) => message,
        Err(resp) => return resp,
    };
    let text = message.text.unwrap_or_default();
    let outcome = sim.state().customer_message(&user, &id, text);
    publish_or_refuse(&sim, outcome)
}

#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ErrorNotice {
    message: Option<String>,
    reference_id: Option<i64>,
}

async fn error_notification(
    State(sim): State<Simulator>,
    Path((user, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let notice: ErrorNotice = match optional_json(&body) {
        Ok(notice) => notice,
        Err(resp) => return resp,
    };
    let message = notice
        .message
        .unwrap_or_else(|| "The operation failed".to_string());
    let outcome = sim
        .state()
        .error_notification(&user, &id, &message, notice.reference_id);
    publish_or_refuse(&sim, outcome)
}

async fn requests(State(sim): State<Simulator>, Path(user): Path<String>) -> Response {
    let state = sim.state();
    if !state.has_agent(&user) {
        return unknown_agent(&user);
    }
    axum::Json(json!({ "requests": state.requests(&user) })).into_response()
}

async fn set_faults(
    State(sim): State<Simulator>,
    axum::Json(faults): axum::Json<Faults>,
) -> Response {
    sim.state().faults = faults.clone();
    axum::Json(faults).into_response()
}

async fn clear_faults(State(sim): State<Simulator>) -> Response {
    sim.state().faults = Faults::default();
    StatusCode::NO_CONTENT.into_response()
}

async fn stats(State(sim): State<Simulator>) -> Response {
    axum::Json(sim.state().stats.clone()).into_response()
}

async fn expire_http_sessions(State(sim): State<Simulator>) -> Response {
    axum::Json(json!({ "expired": sim.state().expire_http_sessions() })).into_response()
}
