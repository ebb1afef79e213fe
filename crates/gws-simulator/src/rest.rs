//! The simulator's GWS REST surface and CometD endpoint over HTTP: Basic authentication,
//! the `JSESSIONID` cookie, CSRF headers on GET replies and their check on POSTs, injected
//! faults, then the state's answer in a GWS JSON body. Reads: `GET /api/v2/me`, the agent's
//! session list (`?fields=*` or not, the answer is the full resources), one session, its
//! transcript. Writes: `POST /api/v2/me/smssessions/{id}`, whose body is recorded once it
//! passed authentication and CSRF, then run; its notifications are published before the
//! reply goes out.

use super::state::{Authenticated, Reply, State as SimState};
use super::{NOTIFICATIONS_PATH, Simulator};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gws_model::Credential;
use serde_json::Value;

/// Largest request body accepted, as a real server would bound it.
const MAX_BODY: usize = 1024 * 1024;
const CSRF_HEADER_NAME: &str = "X-CSRF-TOKEN";

pub fn router(sim: Simulator) -> Router {
    Router::new()
        .route("/api/v2/me", get(me))
        .route("/api/v2/me/smssessions", get(list_sessions))
        .route(
            "/api/v2/me/smssessions/{id}",
            get(get_session).post(operation),
        )
        .route("/api/v2/me/smssessions/{id}/messages", get(messages))
        .route(NOTIFICATIONS_PATH, post(notifications))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(sim)
}

async fn me(State(sim): State<Simulator>, headers: HeaderMap) -> Response {
    sim.state().stats.me_requests += 1;
    read(&sim, &headers, |state, agent| state.me(agent)).await
}

async fn list_sessions(State(sim): State<Simulator>, headers: HeaderMap) -> Response {
    read(&sim, &headers, |state, agent| state.list_sessions(agent)).await
}

async fn get_session(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    read(&sim, &headers, |state, agent| state.get_session(agent, &id)).await
}

async fn messages(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    read(&sim, &headers, |state, agent| state.messages(agent, &id)).await
}

/// A GET: faults, authentication, the state's answer, and the CSRF headers.
async fn read(
    sim: &Simulator,
    headers: &HeaderMap,
    answer: impl FnOnce(&SimState, &str) -> Reply,
) -> Response {
    if let Some(failure) = begin_rest_request(sim).await {
        return failure;
    }
    let auth = match authenticate(sim, headers) {
        Ok(auth) => auth,
        Err(resp) => return resp,
    };
    let reply = answer(&sim.state(), &auth.agent);
    respond(sim, reply, &auth, true)
}

async fn operation(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(failure) = begin_rest_request(&sim).await {
        return failure;
    }
    let auth = match authenticate(&sim, &headers) {
        Ok(auth) => auth,
        Err(resp) => return resp,
    };
    if let Some(refused) = check_csrf(&sim, &headers, &auth) {
        return refused;
    }
    let reply = {
        let mut state = sim.state();
        let (reply, publishes) = state.receive(&auth.agent, &id, &body);
        // Published under the state lock: two concurrent operations' notifications go out
        // in the order the operations were applied (a PropertiesUpdated carries the whole
        // user data, so the other order would show the state going backwards).
        if !state.faults.withhold_notifications {
            sim.publish_all(publishes);
        }
        reply
    };
    respond(&sim, reply, &auth, false)
}

async fn notifications(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    let auth = match authenticate(&sim, &headers) {
        Ok(auth) => auth,
        Err(resp) => return resp,
    };
    // Long-polling is POST, and GWS wants the CSRF token on every POST.
    if let Some(refused) = check_csrf(&sim, &headers, &auth) {
        return refused;
    }
    let messages = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    let reply = sim.hub().handle(&auth.agent, messages).await;
    // Written with raw markers expanded: notifications published raw (deep, huge numbers,
    // malformed) go out exactly as given.
    let body = gws_model::json::to_text(&reply);
    let json = [(header::CONTENT_TYPE, "application/json")];
    with_cookie((StatusCode::OK, json, body).into_response(), &auth)
}

/// The 403 GWS answers a POST without the HTTP session's CSRF token, if it must.
fn check_csrf(sim: &Simulator, headers: &HeaderMap, auth: &Authenticated) -> Option<Response> {
    let token = headers.get(CSRF_HEADER_NAME).and_then(|v| v.to_str().ok());
    {
        let mut state = sim.state();
        if state.csrf_ok(auth, token) {
            return None;
        }
        state.stats.csrf_rejections += 1;
    }
    // Spring Security's wording, which GWS clients look for.
    Some(respond(
        sim,
        Reply::error(403, 3, "Missing or invalid Csrf token"),
        auth,
        false,
    ))
}

/// Every REST request starts here: it is counted (tests prove what reached "GWS"), then
/// delayed and maybe answered with an injected raw failure instead.
async fn begin_rest_request(sim: &Simulator) -> Option<Response> {
    sim.state().stats.rest_requests += 1;
    let delay = sim.state().faults.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let failure = {
        let mut state = sim.state();
        let fail = state.faults.fail.as_mut()?;
        let failure = fail.clone();
        fail.times = fail.times.saturating_sub(1);
        if fail.times == 0 {
            state.faults.fail = None;
        }
        failure
    };
    let status =
        StatusCode::from_u16(failure.http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = HeaderValue::from_str(&failure.content_type)
        .unwrap_or(HeaderValue::from_static("text/plain"));
    Some((status, [(header::CONTENT_TYPE, content_type)], failure.body).into_response())
}

// The error is the 401 reply itself, returned straight to axum: boxing it buys nothing.
#[allow(clippy::result_large_err)]
fn authenticate(sim: &Simulator, headers: &HeaderMap) -> Result<Authenticated, Response> {
    let unauthorized = || {
        let body =
            axum::Json(serde_json::json!({"statusCode": 20, "statusMessage": "Not authenticated"}));
        (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"GWS\""),
            )],
            body,
        )
            .into_response()
    };
    let credential = basic(headers).ok_or_else(unauthorized)?;
    let cookie = cookie(headers, "JSESSIONID");
    sim.state()
        .authenticate(credential.user(), credential.password(), cookie.as_deref())
        .ok_or_else(unauthorized)
}

/// The request's Basic credentials, parsed as the gateway parses its callers' ones.
fn basic(headers: &HeaderMap) -> Option<Credential> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    Credential::from_authorization(value).ok()
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A GWS reply; GET replies carry the CSRF headers when protection is on.
fn respond(sim: &Simulator, reply: Reply, auth: &Authenticated, csrf_headers: bool) -> Response {
    let status =
        StatusCode::from_u16(reply.http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, axum::Json(reply.body)).into_response();
    if csrf_headers {
        let state = sim.state();
        if state.csrf
            && let Some(token) = state.csrf_token(&auth.session_id)
            && let Ok(token) = HeaderValue::from_str(token)
        {
            resp.headers_mut()
                .insert("X-CSRF-HEADER", HeaderValue::from_static(CSRF_HEADER_NAME));
            resp.headers_mut().insert("X-CSRF-TOKEN", token);
        }
    }
    with_cookie(resp, auth)
}

fn with_cookie(mut resp: Response, auth: &Authenticated) -> Response {
    if let Some(id) = &auth.new_session_id
        && let Ok(v) = HeaderValue::from_str(&format!("JSESSIONID={id}; Path=/; HttpOnly"))
    {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}
