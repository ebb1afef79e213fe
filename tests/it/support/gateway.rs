//! Test harness: a real GWS simulator and a real gateway, both on 127.0.0.1 port 0, a real
//! tonic client, and the simulator's control API over real HTTP. Readiness is a health check,
//! never a sleep.

#![allow(dead_code)]

use gws_simulator::{self as simulator, RunningSimulator, SimulatorConfig};
use gws_sms_gateway::config::{Cli, Command, ServeConfig};
use gws_sms_gateway::proto::sms_session_service_client::SmsSessionServiceClient;
use gws_sms_gateway::server::{self, ServerError};
use gws_sms_gateway::upstream::Credential;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::oneshot;
use tonic::Request;
use tonic::transport::Channel;

pub const AGENT1: (&str, &str) = ("agent1", "password1");
pub const AGENT2: (&str, &str) = ("agent2", "password2");
pub const SEED_SESSION: &str = "0071023821aec011";

/// Any single step of a test must finish within this, so a bug fails instead of hanging.
pub const STEP: Duration = Duration::from_secs(20);

pub struct Harness {
    pub sim: Option<RunningSimulator>,
    pub sim_url: String,
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ServerError>>>,
}

/// Builds `serve` settings as the command line would, plus extra flags.
pub fn serve_config(gws_url: &str, extra: &[&str]) -> ServeConfig {
    let mut args = vec![
        "gws-sms-gateway",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--gws-url",
        gws_url,
    ];
    args.extend_from_slice(extra);
    let cli = <Cli as clap::Parser>::try_parse_from(args).expect("valid test flags");
    match cli.command {
        Some(Command::Serve(a)) => ServeConfig::from_args(a).expect("valid test config"),
        _ => unreachable!(),
    }
}

impl Harness {
    /// Simulator with `sim_config`, gateway in front of it with `extra` serve flags.
    pub async fn start(sim_config: SimulatorConfig, extra: &[&str]) -> Self {
        let sim = simulator::start(&sim_config, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("simulator starts");
        let url = sim.url.clone();
        let mut h = Self::gateway(&url, extra).await;
        h.sim = Some(sim);
        h
    }

    pub async fn with_defaults() -> Self {
        Self::start(SimulatorConfig::default(), &[]).await
    }

    /// A gateway in front of whatever is at `gws_url` (which may be nothing).
    pub async fn gateway(gws_url: &str, extra: &[&str]) -> Self {
        let config = serve_config(gws_url, extra);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(config, listener, async {
            let _ = stopped.await;
        }));
        let h = Self {
            sim: None,
            sim_url: gws_url.to_string(),
            addr,
            http: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
        };
        h.wait_serving().await;
        h
    }

    /// A gateway already running elsewhere (a child process) at `addr`, in front of the
    /// simulator at `sim_url`.
    pub async fn remote(addr: SocketAddr, sim_url: &str) -> Self {
        let h = Self {
            sim: None,
            sim_url: sim_url.to_string(),
            addr,
            http: reqwest::Client::new(),
            stop: None,
            task: None,
        };
        h.wait_serving().await;
        h
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn wait_serving(&self) {
        use tonic_health::pb::health_client::HealthClient;
        use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
        let channel = Channel::from_shared(self.endpoint())
            .unwrap()
            .connect()
            .await
            .expect("gateway accepts");
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: "gws.sms.v1.SmsSessionService".into(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32);
    }

    pub async fn client(&self) -> SmsSessionServiceClient<Channel> {
        let channel = Channel::from_shared(self.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap();
        SmsSessionServiceClient::new(channel)
    }

    /// Triggers graceful shutdown; the handle ends when the gateway has stopped.
    pub fn trigger_stop(&mut self) -> tokio::task::JoinHandle<Result<(), ServerError>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("running")
    }

    // --- the simulator's control API ---

    pub async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.sim_url));
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = req.send().await.expect("control API answers");
        let text = resp.text().await.unwrap();
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Returns once the simulator has seen a REST request (a signal, not a sleep): a call
    /// spawned before is in flight upstream.
    pub async fn reached_upstream(&self) {
        tokio::time::timeout(STEP, async {
            while self.stats().await["rest_requests"].as_u64().unwrap_or(0) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("call reached upstream");
    }

    pub async fn stats(&self) -> Value {
        self.control(reqwest::Method::GET, "/simulator/stats", None)
            .await
    }

    pub async fn faults(&self, faults: Value) {
        self.control(reqwest::Method::PUT, "/simulator/faults", Some(faults))
            .await;
    }

    pub async fn sim_session(&self, agent: &str, id: &str) -> Value {
        self.control(
            reqwest::Method::GET,
            &format!("/simulator/agents/{agent}/smssessions/{id}"),
            None,
        )
        .await
    }

    pub async fn inject(&self, agent: &str, data: Value) -> u64 {
        let v = self
            .control(
                reqwest::Method::POST,
                &format!("/simulator/agents/{agent}/notifications"),
                Some(data),
            )
            .await;
        v["delivered"].as_u64().unwrap_or(0)
    }

    /// Publishes `text` verbatim as the `data` of `repeat` CometD events to `agent`: JSON a
    /// `serde_json::Value` could not hold, or no JSON at all. How many were delivered.
    pub async fn inject_raw(&self, agent: &str, text: &str, repeat: usize) -> u64 {
        let resp = self
            .http
            .post(format!(
                "{}/simulator/agents/{agent}/notifications/raw?repeat={repeat}",
                self.sim_url
            ))
            .body(text.to_string())
            .send()
            .await
            .expect("control API answers");
        let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap_or(Value::Null);
        v["delivered"].as_u64().unwrap_or(0)
    }

    pub async fn cometd_stats(&self, agent: &str) -> Value {
        self.control(
            reqwest::Method::GET,
            &format!("/simulator/agents/{agent}/cometd"),
            None,
        )
        .await
    }

    /// A customer's SMS arrives for `agent`: a new Invited session; its id.
    pub async fn inbound(&self, agent: &str, text: &str) -> String {
        let v = self
            .control(
                reqwest::Method::POST,
                &format!("/simulator/agents/{agent}/smssessions"),
                Some(serde_json::json!({ "text": text })),
            )
            .await;
        v["id"]
            .as_str()
            .expect("inbound session created")
            .to_string()
    }

    /// The operation bodies `agent` POSTed, as the simulator received them, oldest first.
    pub async fn requests(&self, agent: &str) -> Vec<Value> {
        let v = self
            .control(
                reqwest::Method::GET,
                &format!("/simulator/agents/{agent}/requests"),
                None,
            )
            .await;
        v["requests"].as_array().cloned().unwrap_or_default()
    }

    /// Publishes an `Error` notification about `session` to `agent`.
    pub async fn inject_error(
        &self,
        agent: &str,
        session: &str,
        message: &str,
        reference_id: Option<i64>,
    ) {
        self.control(
            reqwest::Method::POST,
            &format!("/simulator/agents/{agent}/smssessions/{session}/error"),
            Some(serde_json::json!({ "message": message, "referenceId": reference_id })),
        )
        .await;
    }

    pub async fn drop_cometd(&self, agent: &str) -> u64 {
        let v = self
            .control(
                reqwest::Method::POST,
                &format!("/simulator/agents/{agent}/cometd/drop"),
                None,
            )
            .await;
        v["dropped"].as_u64().unwrap_or(0)
    }
}

/// Polls `check` (an observation through the control API, say) until it holds; fails the
/// test after [`STEP`]. The short pause between polls only spares the machine: the wait is
/// on the observation, never on the pause.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + STEP;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A request carrying `agent`'s Basic credentials.
pub fn authed<T>(message: T, agent: (&str, &str)) -> Request<T> {
    let mut req = Request::new(message);
    let value = Credential::new(agent.0, agent.1).unwrap().authorization();
    req.metadata_mut()
        .insert("authorization", value.parse().unwrap());
    req
}
