//! The simulator's control API, for tests and demos (no authentication: loopback tooling):
//! - `POST /simulator/agents/{user}/notifications[?channel=C][&repeat=N]` body = a
//!   notification's JSON `data`: published (N times, at most 10,000) to that agent's CometD
//!   sessions.
//! - `POST /simulator/agents/{user}/cometd/drop`: server-side drop of the agent's CometD
//!   sessions (their next connect gets 402 + handshake advice).
//! - `GET /simulator/agents/{user}/cometd`: `{"sessions": n, "handshakes": n}`.
//! - `GET /simulator/agents/{user}/smssessions/{id}`: a session as the simulator holds it.
//! - `PUT /simulator/faults` `{"delay_ms": n, "fail": {"http_status", "body", "content_type", "times"}}`
//!   and `DELETE /simulator/faults`: delay or fail REST replies.
//! - `GET /simulator/stats`: request counters; `POST /simulator/http-sessions/expire`:
//!   forget every HTTP session (cookies and CSRF tokens), as a GWS restart would.
//! - `GET /simulator/health`.

use super::state::Faults;
use super::{SMS_CHANNEL, Simulator};
use axum::Router;
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
        .route("/simulator/agents/{user}/cometd/drop", post(drop_sessions))
        .route("/simulator/agents/{user}/cometd", get(cometd_stats))
        .route(
            "/simulator/agents/{user}/smssessions/{id}",
            get(peek_session),
        )
        .route("/simulator/faults", put(set_faults).delete(clear_faults))
        .route("/simulator/stats", get(stats))
        .route(
            "/simulator/http-sessions/expire",
            post(expire_http_sessions),
        )
        .with_state(sim)
}

fn unknown_agent(user: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"error": format!("unknown agent '{user}'")})),
    )
        .into_response()
}

async fn inject(
    State(sim): State<Simulator>,
    Path(user): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    axum::Json(data): axum::Json<Value>,
) -> Response {
    if !sim.state().has_agent(&user) {
        return unknown_agent(&user);
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
        .map(|_| sim.hub().publish(&user, channel, data.clone()))
        .sum();
    axum::Json(json!({ "delivered": delivered })).into_response()
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
        Some(session) => axum::Json(session.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "no such session"})),
        )
            .into_response(),
    }
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
