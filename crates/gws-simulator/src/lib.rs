//! The GWS simulator: a faithful stand-in for the parts of GWS the gateway uses, served over
//! real HTTP so the gateway, its tests, demos and users' own integration tests have a real
//! peer. REST (`rest.rs`) with Basic auth, `JSESSIONID` and CSRF as GWS does them; CometD
//! long-polling (`cometd/`) publishing each agent's notifications to that agent only; the
//! SMS session lifecycle with its capabilities, transcript and notifications (`session.rs`),
//! owned per agent with status codes and reference ids (`state/`); a control API
//! (`control.rs`) for tests and demos (inbound SMS, customer messages, errors, faults, the
//! recorded request bodies); seeded from the GWS documentation page (`seed.rs`). Not for
//! production: the control API has no authentication.

pub mod cometd;
mod control;
mod rest;
pub mod seed;
pub mod session;
pub mod state;

use axum::Router;
use cometd::{CometdConfig, CometdHub};
use state::{Publish, State};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The CometD endpoint path, as GWS serves it.
pub const NOTIFICATIONS_PATH: &str = "/api/v2/notifications";
/// The channel SMS session notifications are published on.
pub const SMS_CHANNEL: &str = "/v2/me/smssessions";

#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// `(user, password)` of each agent.
    pub agents: Vec<(String, String)>,
    /// Whether writes need the CSRF token (GWS's optional protection).
    pub csrf: bool,
    /// Whether accepted operations' replies carry their `referenceId`; off, they are
    /// `{"statusCode":0}` as on GWS's documentation page, the notifications carrying it.
    pub reply_reference_ids: bool,
    pub cometd: CometdConfig,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            agents: default_agents(),
            csrf: true,
            reply_reference_ids: true,
            cometd: CometdConfig::default(),
        }
    }
}

/// The agents a simulator knows unless told otherwise.
pub fn default_agents() -> Vec<(String, String)> {
    vec![
        ("agent1".to_string(), "password1".to_string()),
        ("agent2".to_string(), "password2".to_string()),
    ]
}

/// A simulator's shared state. A cloneable handle.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    hub: CometdHub,
    /// The `traceparent` header of recent requests (REST and CometD), oldest first.
    traceparents: Mutex<std::collections::VecDeque<String>>,
}

/// How many `traceparent` headers are kept.
const MAX_TRACEPARENTS: usize = 1000;

impl Simulator {
    /// `base_url` is where it is served; session `uri`s point there.
    pub fn new(config: &SimulatorConfig, base_url: &str) -> Self {
        let mut state = State::new(&config.agents, config.csrf, base_url);
        state.reply_reference_ids = config.reply_reference_ids;
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                hub: CometdHub::new(config.cometd.clone()),
                traceparents: Mutex::new(std::collections::VecDeque::new()),
            }),
        }
    }

    pub fn hub(&self) -> &CometdHub {
        &self.inner.hub
    }

    /// Locks the state for one synchronous step; never held across an `.await`.
    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes, in order, on the SMS channel. May be called with the state lock held (lock
    /// order: state, then hub; the hub never takes the state lock).
    fn publish_all(&self, publishes: Vec<Publish>) {
        for p in publishes {
            let delivered = self.hub().publish(&p.agent, SMS_CHANNEL, p.data);
            tracing::debug!(agent = %p.agent, delivered, "simulator published a notification");
        }
    }

    pub fn router(&self) -> Router {
        let sim = self.clone();
        rest::router(self.clone())
            .merge(control::router(self.clone()))
            .layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    sim.record_traceparent(request.headers());
                    sim.record_connection(&request);
                    next.run(request)
                },
            ))
    }

    /// Which agent (by its Basic user) used which connection, when served with connection
    /// info ([`serve`] does).
    fn record_connection(&self, request: &axum::extract::Request) {
        let peer = request
            .extensions()
            .get::<axum::extract::ConnectInfo<SocketAddr>>();
        let user = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| gws_model::Credential::from_authorization(v).ok());
        if let (Some(peer), Some(user)) = (peer, user) {
            self.state().saw_connection(peer.0, user.user());
        }
    }

    fn record_traceparent(&self, headers: &axum::http::HeaderMap) {
        if let Some(value) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
            let mut seen = self
                .inner
                .traceparents
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if seen.len() == MAX_TRACEPARENTS {
                seen.pop_front();
            }
            seen.push_back(value.to_string());
        }
    }

    /// The `traceparent` headers of recent requests, oldest first (for tracing tests).
    pub fn traceparents(&self) -> Vec<String> {
        let seen = self
            .inner
            .traceparents
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        seen.iter().cloned().collect()
    }

    /// Every `JSESSIONID` and CSRF token handed out and still known (for log tests).
    pub fn issued_secrets(&self) -> Vec<String> {
        self.state().issued_secrets()
    }
}

/// A simulator serving on a socket, until [`RunningSimulator::shutdown`] or drop.
pub struct RunningSimulator {
    pub addr: SocketAddr,
    pub url: String,
    pub simulator: Simulator,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningSimulator {
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        self.simulator.hub().shutdown();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RunningSimulator {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.simulator.hub().shutdown();
    }
}

/// Binds `addr` (port 0 for any) and serves the simulator in a background task.
pub async fn start(
    config: &SimulatorConfig,
    addr: SocketAddr,
) -> std::io::Result<RunningSimulator> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    let simulator = Simulator::new(config, &url);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(serve(
        listener,
        simulator.clone(),
        cancel.clone().cancelled_owned(),
    ));
    Ok(RunningSimulator {
        addr,
        url,
        simulator,
        cancel,
        task: Some(task),
    })
}

/// Serves `simulator` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    simulator: Simulator,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let hub = simulator.hub().clone();
    let app = simulator.router();
    let shutdown = async move {
        shutdown.await;
        // Parked CometD connects would otherwise hold the graceful shutdown for `timeout`.
        hub.shutdown();
    };
    if let Err(e) = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    {
        tracing::error!(error = %e, "simulator server failed");
    }
}

/// The HTTP surface over a real socket: REST reads and the recorded bodies, and the control
/// API driving a customer-side flow, observed on the agent's CometD session.
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const AGENT: (&str, &str) = ("agent1", "password1");

    struct Client {
        http: reqwest::Client,
        url: String,
        csrf: Option<String>,
        /// The session cookie (`JSESSIONID=...`) login got.
        cookie: Option<String>,
    }

    impl Client {
        /// Logs in as agent1 (`GET /api/v2/me`), keeping the cookie and the CSRF token.
        async fn login(url: &str) -> Self {
            let mut client = Self {
                http: reqwest::Client::new(),
                url: url.to_string(),
                csrf: None,
                cookie: None,
            };
            let resp = client.request(reqwest::Method::GET, "/api/v2/me").send();
            let resp = resp.await.unwrap();
            let header = |name| Some(resp.headers().get(name)?.to_str().unwrap().to_string());
            client.csrf = header("X-CSRF-TOKEN");
            // `JSESSIONID=...; Path=/; HttpOnly` -> `JSESSIONID=...`
            client.cookie = header("set-cookie").map(|v| v.split(';').next().unwrap().into());
            assert!(client.cookie.is_some(), "login starts an HTTP session");
            client
        }

        fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
            let request = self
                .http
                .request(method, format!("{}{path}", self.url))
                .basic_auth(AGENT.0, Some(AGENT.1));
            match &self.cookie {
                Some(cookie) => request.header("cookie", cookie),
                None => request,
            }
        }

        async fn get(&self, path: &str) -> (u16, Value) {
            let resp = self.request(reqwest::Method::GET, path).send().await;
            answer(resp.unwrap()).await
        }

        async fn post(&self, path: &str, body: &str, csrf: bool) -> (u16, Value) {
            let mut req = self
                .request(reqwest::Method::POST, path)
                .body(body.to_string());
            if let (true, Some(token)) = (csrf, &self.csrf) {
                req = req.header("X-CSRF-TOKEN", token);
            }
            answer(req.send().await.unwrap()).await
        }
    }

    async fn answer(resp: reqwest::Response) -> (u16, Value) {
        let status = resp.status().as_u16();
        let body = serde_json::from_str(&resp.text().await.unwrap()).unwrap_or(Value::Null);
        (status, body)
    }

    async fn control(url: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let http = reqwest::Client::new();
        let req = match body {
            Some(body) => http
                .post(format!("{url}{path}"))
                .header("content-type", "application/json")
                .body(body.to_string()),
            None => http.get(format!("{url}{path}")),
        };
        answer(req.send().await.unwrap()).await
    }

    /// A CometD session of agent1 subscribed to the SMS channel, driven in-process.
    async fn subscribe(hub: &CometdHub) -> String {
        let h = hub
            .handle(
                AGENT.0,
                json!([{"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling"]}]),
            )
            .await;
        let client = h[0]["clientId"].as_str().unwrap().to_string();
        hub.handle(
            AGENT.0,
            json!([{"channel": "/meta/subscribe", "clientId": client, "subscription": SMS_CHANNEL}]),
        )
        .await;
        client
    }

    /// The `data` of every event queued for the session, oldest first.
    async fn events(hub: &CometdHub, client: &str) -> Vec<Value> {
        let r = hub
            .handle(
                AGENT.0,
                json!([{"channel": "/meta/connect", "clientId": client, "connectionType": "long-polling", "advice": {"timeout": 0}}]),
            )
            .await;
        r.as_array()
            .unwrap()
            .iter()
            .filter(|m| m["channel"] == SMS_CHANNEL)
            .map(|m| m["data"].clone())
            .collect()
    }

    #[tokio::test]
    async fn rest_reads_sessions_and_transcripts_and_records_posted_bodies() {
        let sim = start(&SimulatorConfig::default(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let c = Client::login(&sim.url).await;
        let seed = seed::SEED_SESSION_ID;

        let (status, list) = c.get("/api/v2/me/smssessions?fields=*").await;
        assert_eq!(
            (status, list["smssessions"].as_array().map(Vec::len)),
            (200, Some(3))
        );
        let (status, one) = c.get(&format!("/api/v2/me/smssessions/{seed}")).await;
        assert_eq!(status, 200);
        assert_eq!(one["smssession"]["id"], seed);
        assert_eq!(one["smssession"]["userData"]["UserData2"], 123456789);
        let (status, log) = c
            .get(&format!("/api/v2/me/smssessions/{seed}/messages"))
            .await;
        assert_eq!(status, 200);
        assert_eq!(log["messages"][1]["type"], "Text");
        let (status, none) = c.get("/api/v2/me/smssessions/nope").await;
        assert_eq!((status, &none["statusCode"]), (404, &json!(6)));
        let (status, none) = c.get("/api/v2/me/smssessions/nope/messages").await;
        assert_eq!((status, &none["statusCode"]), (404, &json!(6)));

        // agent2's session is not agent1's.
        let (status, created) = control(
            &sim.url,
            "/simulator/agents/agent2/smssessions",
            Some(json!({})),
        )
        .await;
        assert_eq!(status, 201);
        let theirs = created["id"].as_str().unwrap();
        let (status, _) = c.get(&format!("/api/v2/me/smssessions/{theirs}")).await;
        assert_eq!(status, 404);

        let body = r#"{"operationName":"SendMessage","text":"Hello"}"#;
        let path = format!("/api/v2/me/smssessions/{seed}");
        let (status, refused) = c.post(&path, body, false).await;
        assert_eq!((status, &refused["statusCode"]), (403, &json!(3)));
        let (status, done) = c.post(&path, body, true).await;
        assert_eq!((status, &done["statusCode"]), (200, &json!(0)));
        assert!(done["referenceId"].is_i64());
        let (status, bad) = c.post(&path, "{oops", true).await;
        assert_eq!((status, &bad["statusCode"]), (400, &json!(10)));

        let (_, recorded) = control(&sim.url, "/simulator/agents/agent1/requests", None).await;
        assert_eq!(
            recorded,
            json!({"requests": [
                {"session_id": seed, "body": {"operationName": "SendMessage", "text": "Hello"},
                    "reply": done},
                {"session_id": seed, "body": "{oops", "reply": bad},
            ]}),
            "only what passed authentication and CSRF"
        );
        let (_, log) = c
            .get(&format!("/api/v2/me/smssessions/{seed}/messages"))
            .await;
        assert_eq!(log["messages"][2]["text"], "Hello");
        let (_, stats) = control(&sim.url, "/simulator/stats", None).await;
        assert_eq!(stats["operations_accepted"], 1);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn control_api_drives_an_inbound_session() {
        let sim = start(&SimulatorConfig::default(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let hub = sim.simulator.hub().clone();
        let client = subscribe(&hub).await;
        let base = "/simulator/agents/agent1/smssessions";

        let (status, created) = control(
            &sim.url,
            base,
            Some(json!({"text": "Hi, I need help", "nickname": "Pat"})),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().unwrap().to_string();
        assert_eq!(created["session"]["state"], "Invited");
        assert_eq!(created["session"]["participants"][0]["nickname"], "Pat");
        let published = events(&hub, &client).await;
        assert_eq!(published.len(), 1);
        assert_eq!(published[0]["notificationType"], "StatusChange");
        assert_eq!(published[0]["smssession"]["id"], id.as_str());

        let (status, _) = control(
            &sim.url,
            &format!("{base}/{id}/customer-message"),
            Some(json!({"text": "anyone?"})),
        )
        .await;
        assert_eq!(status, 200);
        let published = events(&hub, &client).await;
        assert_eq!(published[0]["messageType"], "MessageLogUpdated");
        assert_eq!(published[0]["messages"][0]["text"], "anyone?");
        assert_eq!(published[0]["messages"][0]["from"]["nickname"], "Pat");

        let (status, _) = control(
            &sim.url,
            &format!("{base}/{id}/error"),
            Some(json!({"message": "routing failed", "referenceId": 99})),
        )
        .await;
        assert_eq!(status, 200);
        let published = events(&hub, &client).await;
        assert_eq!(published[0]["notificationType"], "Error");
        assert_eq!(published[0]["errorMessage"], "routing failed");
        assert_eq!(published[0]["referenceId"], 99);
        assert!(
            published[0]["smssessionUri"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/api/v2/smssessions/{id}"))
        );

        let (status, peek) = control(&sim.url, &format!("{base}/{id}"), None).await;
        assert_eq!(status, 200);
        assert_eq!(peek["userData"], json!({"Subject": "Inbound SMS"}));
        assert_eq!(peek["capabilities"][0], "Accept");

        let refusals = [
            (
                "/simulator/agents/nobody/smssessions".to_string(),
                json!({}),
                404,
            ),
            (base.to_string(), json!({"id": id}), 409),
            (base.to_string(), json!({"id": "a/b"}), 400),
            (base.to_string(), json!({"text": 5}), 400),
            (format!("{base}/nope/error"), json!({}), 404),
            (
                format!("{base}/{}/customer-message", seed::COMPLETED_SESSION_ID),
                json!({"text": "x"}),
                409,
            ),
        ];
        for (path, body, want) in refusals {
            let (status, answer) = control(&sim.url, &path, Some(body.clone())).await;
            assert_eq!(status, want, "{path} {body}: {answer}");
            assert!(answer["error"].is_string(), "{answer}");
        }
        assert!(
            events(&hub, &client).await.is_empty(),
            "refusals publish nothing"
        );
        sim.shutdown().await;
    }
}
