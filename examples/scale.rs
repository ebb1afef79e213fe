//! Contact-center scale benchmark: prints figures, asserts nothing (the machine is shared and
//! noisy). `cargo run --release --example scale` (run it from a shell with a high open-file
//! limit, e.g. `ulimit -n 20000`: 2,000 streaming agents keep 2,000 upstream long-polls open
//! in the gateway and in the simulator).
//!
//! Every server runs as its own child process (this same executable in another mode), so
//! its CPU time and resident memory are read from `/proc/PID/stat` and `/proc/PID/status`
//! without counting the load generator or the upstream:
//! - `sim N`: the built-in GWS simulator with agents `a0..aN` (password `pw`), CSRF on;
//! - `gateway ARGS...`: the gateway (`server::run`, as `serve` runs it) with ARGS;
//! - `open URL N`: opens and holds one stream for each of agents `a0..aN` (for profiling
//!   a gateway by hand, e.g. under `valgrind --tool=dhat`);
//! - `relay URL`: a minimal relay built from the same crates: a tonic server with only
//!   DeleteUserData, one shared reqwest client, a serde_json body, the same upstream; per
//!   agent it keeps a cookie and a CSRF token learnt with one `GET /api/v2/me`.
//!
//! Figures: saturation calls/s and CPU µs per call, gateway against relay, with 1 agent and
//! 32 concurrent callers, then with 1,000 agents taken in turn; RSS per agent for 1,000 and
//! 10,000 REST-only agents (default `--max-agents`); RSS per agent for 2,000 agents with one
//! SessionEvents stream each; event latency p50/p99 over those streams; 10,000 streams of
//! one agent: upstream handshakes, open time, RSS per stream, fan-out latency p50/p99;
//! admission after a restart with the default flags: 1,000 valid agents calling at once
//! (time until each is served, calls refused on the way) and 2,000 random credentials at
//! once (requests that reach GWS); cluster mode (section 6, with a nats-server from
//! `$GWS_NATS_SERVER`, PATH or `target/nats-venv`): event latency on a replica that does not
//! own the agent against one process and against the floor of the extra hop (a JetStream
//! publish to an ordered consumer, same crate and server), 10,000 streams of one agent over
//! three replicas (handshakes, fan-out), takeover time after kill -9 of the owner, and a
//! rolling restart by SIGTERM with a client reconnecting with its last token (lost, doubled,
//! notices, drain times). `SCALE_CHILD_STDERR=1` shows the children's logs,
//! `SCALE_REPLICA_LOG` sets the replicas' `RUST_LOG` (default `warn`).
//! `SCALE_RUN_SECS` sets each saturation run's length (default 3), `SCALE_ROUNDS` how many
//! rounds the servers take turns in (default 11; the figures are medians over the rounds of
//! each gateway's ratio to the relay's run in the same round), `SCALE_SECTIONS` picks
//! sections (default `123456`). The gateway child runs `Telemetry::init` as `main` does, with
//! its log lines discarded.

#[path = "support/proc.rs"]
mod proc_stats;

use futures::StreamExt;
use gws_simulator::{self as simulator, SimulatorConfig};
use gws_sms_gateway::config::{Cli, Command as CliCommand, ServeConfig};
use gws_sms_gateway::proto::session_events_response::Event;
use gws_sms_gateway::proto::sms_session_service_client::SmsSessionServiceClient;
use gws_sms_gateway::proto::sms_session_service_server::{
    SmsSessionService, SmsSessionServiceServer,
};
use gws_sms_gateway::proto::*;
use gws_sms_gateway::upstream::Credential;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

const SESSION: &str = "0071023821aec011";
const PASSWORD: &str = "pw";
/// Lets the gateway admit thousands of agents in seconds (the default is 50/s).
const FAST_ADMISSION: [&str; 4] = [
    "--new-agent-rate",
    "1000000",
    "--new-agent-burst",
    "1000000",
];

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("sim") => run_sim(args[1].parse().expect("agent count")).await,
        Some("gateway") => run_gateway(&args[1..]).await,
        Some("relay") => run_relay(&args[1]).await,
        // For heap profiling by hand: opens a stream for agents a0..aN and holds them.
        Some("open") => {
            let auths: Vec<_> = (0..args[2].parse().unwrap()).map(auth).collect();
            let (streams, failed) = open_streams(&args[1], &auths, 4, 50).await;
            println!("OPEN {} {failed}", streams.len());
            std::future::pending::<()>().await;
        }
        // For instruction counts by hand (e.g. a server under `valgrind --tool=callgrind`):
        // `drive URL CALLS AGENTS` makes CALLS DeleteUserData calls, 32 at a time, agents
        // a0..aAGENTS in turn.
        Some("drive") => {
            let calls: usize = args[2].parse().unwrap();
            let agents: usize = args[3].parse().unwrap();
            let auths: Vec<_> = (0..calls).map(|i| auth(i % agents)).collect();
            let failed = touch_all(&args[1], &auths, 32).await;
            println!("DRIVEN {calls} {failed} failed");
        }
        _ => orchestrate().await,
    }
}

// ---------------------------------------------------------------- child processes

async fn run_sim(agents: usize) {
    let config = SimulatorConfig {
        agents: (0..agents)
            .map(|i| (format!("a{i}"), PASSWORD.to_string()))
            .collect(),
        ..SimulatorConfig::default()
    };
    let sim = simulator::start(&config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts");
    println!("LISTEN {}", sim.url);
    std::future::pending::<()>().await;
}

async fn run_gateway(extra: &[String]) {
    let mut args = vec!["gws-sms-gateway".to_string(), "serve".to_string()];
    args.extend_from_slice(extra);
    let cli = <Cli as clap::Parser>::try_parse_from(args).expect("gateway flags");
    let Some(CliCommand::Serve(serve_args)) = cli.command else {
        unreachable!()
    };
    let config = ServeConfig::from_args(serve_args).expect("gateway config");
    // As `main` does: text logs at `info` unless RUST_LOG says otherwise (stderr is
    // discarded by the orchestrator, but every line is still formatted).
    // SCALE_NO_TELEMETRY=1 installs no subscriber at all (to measure what tracing costs).
    let _telemetry = std::env::var_os("SCALE_NO_TELEMETRY").is_none().then(|| {
        gws_sms_gateway::telemetry::Telemetry::init(cli.log_format, "info", None).unwrap()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("LISTEN http://{}", listener.local_addr().unwrap());
    // SIGTERM drains as `serve` does (section 6's rolling restart); the other sections kill.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    gws_sms_gateway::server::run(config, listener, async move {
        term.recv().await;
    })
    .await
    .expect("gateway runs");
}

/// One agent's upstream state in the relay: what GWS needs on every POST.
struct RelayAgent {
    cookie: String,
    csrf: String,
}

struct Relay {
    http: reqwest::Client,
    base: String,
    agents: Mutex<HashMap<String, Arc<RelayAgent>>>,
}

impl Relay {
    async fn agent(&self, auth: &str) -> Result<Arc<RelayAgent>, Status> {
        if let Some(a) = self.agents.lock().unwrap().get(auth) {
            return Ok(a.clone());
        }
        let resp = self
            .http
            .get(format!("{}/api/v2/me", self.base))
            .header("authorization", auth)
            .send()
            .await
            .map_err(|_| Status::unavailable("upstream"))?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let cookie = header("set-cookie")
            .split(';')
            .next()
            .unwrap_or_default()
            .to_string();
        let agent = Arc::new(RelayAgent {
            cookie,
            csrf: header("x-csrf-token"),
        });
        let _ = resp.bytes().await;
        self.agents
            .lock()
            .unwrap()
            .insert(auth.to_string(), agent.clone());
        Ok(agent)
    }
}

impl Relay {
    async fn delete(
        &self,
        request: Request<DeleteUserDataRequest>,
    ) -> Result<Response<DeleteUserDataResponse>, Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("no credentials"))?
            .to_string();
        let agent = self.agent(&auth).await?;
        let message = request.into_inner();
        let body = serde_json::to_vec(&serde_json::json!({
            "operationName": "DeleteUserData",
            "keys": message.keys,
        }))
        .unwrap();
        let resp = self
            .http
            .post(format!(
                "{}/api/v2/me/smssessions/{}",
                self.base, message.session_id
            ))
            .header("authorization", auth)
            .header("cookie", &agent.cookie)
            .header("x-csrf-token", &agent.csrf)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|_| Status::unavailable("upstream"))?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|_| Status::unavailable("upstream"))?;
        let reply: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| Status::unavailable("bad body"))?;
        if reply["statusCode"] != 0 {
            return Err(Status::unknown(reply.to_string()));
        }
        Ok(Response::new(DeleteUserDataResponse {
            reference_id: reply["referenceId"].as_i64(),
            ..Default::default()
        }))
    }
}

/// The whole service from one list (`async_trait` does not see into macros inside it, so a
/// macro builds the whole `impl`): DeleteUserData relays, the rest is unimplemented.
macro_rules! relay_service {
    ($($name:ident($req:ident) -> $resp:ident;)*) => {
        #[tonic::async_trait]
        impl SmsSessionService for Relay {
            async fn delete_user_data(
                &self,
                request: Request<DeleteUserDataRequest>,
            ) -> Result<Response<DeleteUserDataResponse>, Status> {
                self.delete(request).await
            }
            $(
                async fn $name(&self, _: Request<$req>) -> Result<Response<$resp>, Status> {
                    Err(Status::unimplemented("relay"))
                }
            )*
            type SessionEventsStream =
                futures::stream::Empty<Result<gws_sms_gateway::events::SharedItem, Status>>;
            async fn session_events(
                &self,
                _: Request<SessionEventsRequest>,
            ) -> Result<Response<Self::SessionEventsStream>, Status> {
                Err(Status::unimplemented("relay"))
            }
        }
    };
}

relay_service! {
        attach_user_data(AttachUserDataRequest) -> AttachUserDataResponse;
        update_user_data(UpdateUserDataRequest) -> UpdateUserDataResponse;
        set_disposition(SetDispositionRequest) -> SetDispositionResponse;
        add_comment(AddCommentRequest) -> AddCommentResponse;
        accept(AcceptRequest) -> AcceptResponse;
        reject(RejectRequest) -> RejectResponse;
        complete(CompleteRequest) -> CompleteResponse;
        leave(LeaveRequest) -> LeaveResponse;
        send_message(SendMessageRequest) -> SendMessageResponse;
        send_to_agents(SendToAgentsRequest) -> SendToAgentsResponse;
        send_url(SendUrlRequest) -> SendUrlResponse;
        send_start_typing_notification(SendStartTypingNotificationRequest) -> SendStartTypingNotificationResponse;
        send_stop_typing_notification(SendStopTypingNotificationRequest) -> SendStopTypingNotificationResponse;
        transfer(TransferRequest) -> TransferResponse;
        consult(ConsultRequest) -> ConsultResponse;
        invite(InviteRequest) -> InviteResponse;
        list_sessions(ListSessionsRequest) -> ListSessionsResponse;
        get_session(GetSessionRequest) -> GetSessionResponse;
        get_transcript(GetTranscriptRequest) -> GetTranscriptResponse;
}

async fn run_relay(base: &str) {
    let relay = Relay {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .pool_max_idle_per_host(256)
            .build()
            .unwrap(),
        base: base.trim_end_matches('/').to_string(),
        agents: Mutex::new(HashMap::new()),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("LISTEN http://{}", listener.local_addr().unwrap());
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        s.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    });
    tonic::transport::Server::builder()
        .add_service(SmsSessionServiceServer::new(relay))
        .serve_with_incoming(incoming)
        .await
        .unwrap();
}

// ---------------------------------------------------------------- measuring processes

/// A child process of this executable, killed when dropped.
struct Proc {
    child: Child,
    url: String,
}

impl Proc {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("SCALE_CHILD_STDERR").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("child starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .strip_prefix("LISTEN ")
            .expect("child announces its address")
            .trim()
            .to_string();
        Self { child, url }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits for the exit: how long the drain took, and whether it exited 0.
    fn terminate(mut self) -> (Duration, bool) {
        let t = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let ok = self.child.wait().is_ok_and(|s| s.success());
        (t.elapsed(), ok)
    }

    /// User + system CPU time so far.
    fn cpu(&self) -> Duration {
        proc_stats::cpu(&self.pid().to_string(), clock_ticks())
    }

    fn rss_kib(&self) -> u64 {
        proc_stats::rss_kib(&self.pid().to_string())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

fn auth(i: usize) -> AsciiMetadataValue {
    let value = Credential::new(format!("a{i}"), PASSWORD)
        .unwrap()
        .authorization();
    MetadataValue::try_from(value).unwrap()
}

fn authed<T>(message: T, auth: &AsciiMetadataValue) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut().insert("authorization", auth.clone());
    req
}

fn delete_request() -> DeleteUserDataRequest {
    DeleteUserDataRequest {
        session_id: SESSION.into(),
        keys: vec!["NoSuchKey".into()],
        ..Default::default()
    }
}

async fn clients(url: &str, n: usize) -> Vec<SmsSessionServiceClient<Channel>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let channel = Channel::from_shared(url.to_string())
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("server accepts");
        out.push(SmsSessionServiceClient::new(channel).max_decoding_message_size(64 << 20));
    }
    out
}

/// One call for each of `auths`, `parallel` at a time; the number that failed.
async fn touch_all(url: &str, auths: &[AsciiMetadataValue], parallel: usize) -> usize {
    let cs = clients(url, 4).await;
    let failed = AtomicUsize::new(0);
    futures::stream::iter(auths.iter().enumerate())
        .for_each_concurrent(parallel, |(i, a)| {
            let mut c = cs[i % cs.len()].clone();
            let failed = &failed;
            async move {
                if c.delete_user_data(authed(delete_request(), a))
                    .await
                    .is_err()
                {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .await;
    failed.into_inner()
}

struct Saturation {
    calls: u64,
    errors: u64,
    per_sec: f64,
    cpu_us_per_call: f64,
    upstream_cpu_us_per_call: f64,
}

/// `callers` concurrent callers for `run`, each taking the next agent of `auths` in turn.
async fn saturate(
    server: &Proc,
    upstream: &Proc,
    auths: &[AsciiMetadataValue],
    callers: usize,
    run: Duration,
) -> Saturation {
    let cs = clients(&server.url, 4).await;
    let next = Arc::new(AtomicUsize::new(0));
    let (ok, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let auths = Arc::new(auths.to_vec());
    let (cpu0, up0, t0) = (server.cpu(), upstream.cpu(), Instant::now());
    let until = t0 + run;
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let mut c = cs[i % cs.len()].clone();
            let (next, ok, errors, auths) =
                (next.clone(), ok.clone(), errors.clone(), auths.clone());
            tokio::spawn(async move {
                while Instant::now() < until {
                    let a = &auths[next.fetch_add(1, Ordering::Relaxed) % auths.len()];
                    match c.delete_user_data(authed(delete_request(), a)).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = t0.elapsed();
    let calls = ok.load(Ordering::Relaxed);
    let cpu = server.cpu() - cpu0;
    let up = upstream.cpu() - up0;
    Saturation {
        calls,
        errors: errors.load(Ordering::Relaxed),
        per_sec: calls as f64 / elapsed.as_secs_f64(),
        cpu_us_per_call: cpu.as_secs_f64() * 1e6 / calls.max(1) as f64,
        upstream_cpu_us_per_call: up.as_secs_f64() * 1e6 / calls.max(1) as f64,
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// The `t_us` user-data value of a state change, if any.
fn stamp(item: &SessionEventsResponse) -> Option<i64> {
    let Some(Event::StateChange(change)) = &item.event else {
        return None;
    };
    // Read straight from the message: the load generator shares the cores it measures.
    match change.session.as_ref()?.user_data.get("t_us")?.kind {
        Some(gws_sms_gateway::proto::user_data_value::Kind::IntValue(t)) => Some(t),
        _ => None,
    }
}

fn stamped_event(t_us: i64) -> String {
    serde_json::json!({
        "messageType": "SMSsessionStateChangeMessage", "notificationType": "PropertiesUpdated",
        "referenceId": 1, "smssession": { "id": "s1", "state": "Chatting",
        "userData": { "t_us": t_us }, "capabilities": [], "uri": "", "participants": [] }
    })
    .to_string()
}

/// Opens one SessionEvents stream per entry of `auths` (`parallel` at a time) and waits for
/// each one's SUBSCRIBED notice; the streams and the number that failed.
async fn open_streams(
    url: &str,
    auths: &[AsciiMetadataValue],
    conns: usize,
    parallel: usize,
) -> (Vec<tonic::Streaming<SessionEventsResponse>>, usize) {
    let cs = clients(url, conns).await;
    let opened: Vec<_> = futures::stream::iter(auths.iter().enumerate())
        .map(|(i, a)| {
            let mut c = cs[i % cs.len()].clone();
            async move {
                let mut s = c
                    .session_events(authed(SessionEventsRequest::default(), a))
                    .await
                    .ok()?
                    .into_inner();
                s.message().await.ok()??; // SUBSCRIBED
                Some(s)
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let failed = opened.iter().filter(|s| s.is_none()).count();
    (opened.into_iter().flatten().collect(), failed)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn control_json(http: &reqwest::Client, url: String) -> serde_json::Value {
    let text = http.get(url).send().await.unwrap().text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_default()
}

async fn inject(http: &reqwest::Client, sim: &str, agent: usize, body: String) {
    http.post(format!("{sim}/simulator/agents/a{agent}/notifications"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
}

/// The number in environment variable `name`, else `default`.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn ratio(a: f64, b: f64) -> f64 {
    a / b
}

async fn orchestrate() {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "scale benchmark: {cores} cores, load average {}, CLK_TCK {}; servers are child processes, \
         the upstream is the built-in simulator (its own process)",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        clock_ticks()
    );
    let run = Duration::from_secs(env_or("SCALE_RUN_SECS", 3));
    let rounds: usize = env_or("SCALE_ROUNDS", 11);
    // SCALE_SECTIONS picks sections, e.g. "1" or "34" (default: all six).
    let sections = std::env::var("SCALE_SECTIONS").unwrap_or_else(|_| "123456".into());
    let http = reqwest::Client::new();

    // ---- 1. Throughput and CPU per call: gateway against relay.
    if sections.contains('1') {
        let sim = Proc::start(&["sim", "1000"], &[]);
        let mut gw_args = vec!["gateway", "--gws-url", &sim.url];
        gw_args.extend_from_slice(&FAST_ADMISSION);
        let gateway = Proc::start(&gw_args, &[]);
        let gateway_quiet = Proc::start(&gw_args, &[("RUST_LOG", "warn")]);
        let gateway_bare = Proc::start(&gw_args, &[("SCALE_NO_TELEMETRY", "1")]);
        let relay = Proc::start(&["relay", &sim.url], &[]);
        let one = vec![auth(0)];
        let thousand: Vec<_> = (0..1000).map(auth).collect();
        for server in [&gateway, &gateway_quiet, &gateway_bare, &relay] {
            let failed = touch_all(&server.url, &thousand, 64).await;
            assert_eq!(failed, 0, "warm-up calls failed");
        }
        let servers = [
            ("gateway (info logs)", &gateway),
            ("gateway (RUST_LOG=warn)", &gateway_quiet),
            ("gateway (no tracing subscriber)", &gateway_bare),
            ("relay", &relay),
        ];
        for (label, auths) in [
            ("1 agent, 32 callers", &one),
            ("1,000 agents in turn, 32 callers", &thousand),
        ] {
            // The servers take turns in each round (each round starting with the next one),
            // and each gateway is compared with the relay's run of the same round: on a
            // shared machine one server's runs vary widely as other work comes and goes, and
            // a ratio of two runs minutes apart would measure that. The figures are
            // the medians over the rounds of those paired ratios.
            let mut rounds_seen: Vec<HashMap<&str, Saturation>> = Vec::new();
            for round in 0..rounds {
                let mut this_round = HashMap::new();
                for k in 0..servers.len() {
                    let (name, server) = servers[(round + k) % servers.len()];
                    let s = saturate(server, &sim, auths, 32, run).await;
                    println!(
                        "  [{label}] round {round} {name}: {} calls ({} errors), {:.0} calls/s, \
                         {:.1} µs CPU/call (simulator {:.1} µs/call)",
                        s.calls, s.errors, s.per_sec, s.cpu_us_per_call, s.upstream_cpu_us_per_call
                    );
                    this_round.insert(name, s);
                }
                rounds_seen.push(this_round);
            }
            let median = |mut v: Vec<f64>| {
                v.sort_by(f64::total_cmp);
                percentile(&v, 0.5)
            };
            let of = |name: &str, f: fn(&Saturation) -> f64| -> Vec<f64> {
                rounds_seen.iter().map(|r| f(&r[name])).collect()
            };
            let (relay_rate, relay_cpu) = (
                median(of("relay", |s| s.per_sec)),
                median(of("relay", |s| s.cpu_us_per_call)),
            );
            for name in [
                "gateway (info logs)",
                "gateway (RUST_LOG=warn)",
                "gateway (no tracing subscriber)",
            ] {
                let paired = |f: fn(&Saturation) -> f64| -> Vec<f64> {
                    rounds_seen
                        .iter()
                        .map(|r| ratio(f(&r[name]), f(&r["relay"])))
                        .collect()
                };
                let errors: u64 = rounds_seen.iter().map(|r| r[name].errors).sum();
                // The simulator does the same work for every call: its CPU per call in this
                // server's runs against the relay's says how much slower the machine was
                // then. Printed as context for the spread, never folded into the figure.
                println!(
                    "{label}: {name} {:.0} calls/s at {:.1} µs CPU/call; relay {:.0} calls/s at {:.1} µs CPU/call \
                     => {:.2}x calls/s, {:.2}x CPU/call (medians over {rounds} rounds of the ratio to the \
                     relay's run in the same round; {errors} errors; the simulator's own CPU per call in \
                     these runs: {:.2}x the relay's runs)",
                    median(of(name, |s| s.per_sec)),
                    median(of(name, |s| s.cpu_us_per_call)),
                    relay_rate,
                    relay_cpu,
                    median(paired(|s| s.per_sec)),
                    median(paired(|s| s.cpu_us_per_call)),
                    median(paired(|s| s.upstream_cpu_us_per_call)),
                );
            }
        }
    }

    // ---- 2. Memory per REST-only agent; 10,000 agents within the default --max-agents.
    if sections.contains('2') {
        let sim = Proc::start(&["sim", "10000"], &[]);
        let mut gw_args = vec!["gateway", "--gws-url", &sim.url];
        gw_args.extend_from_slice(&FAST_ADMISSION);
        let gateway = Proc::start(&gw_args, &[("RUST_LOG", "warn")]);
        let auths: Vec<_> = (0..10_000).map(auth).collect();
        assert_eq!(touch_all(&gateway.url, &auths[..1], 1).await, 0);
        let base = gateway.rss_kib();
        let failed = touch_all(&gateway.url, &auths[1..1001], 32).await;
        let at_1000 = gateway.rss_kib();
        println!(
            "REST-only agents: RSS {base} KiB with 1 agent, {at_1000} KiB with 1,001 ({failed} failed) \
             => {:.1} KiB per agent",
            (at_1000 as f64 - base as f64) / 1000.0
        );
        let failed = touch_all(&gateway.url, &auths[1001..], 32).await;
        let at_10k = gateway.rss_kib();
        let again = touch_all(&gateway.url, &auths, 32).await;
        let stats = control_json(&http, format!("{}/simulator/stats", sim.url)).await;
        println!(
            "10,000 agents with the default --max-agents: {failed} of 9,000 more failed, a second call \
             each: {again} failed; RSS {at_10k} KiB => {:.1} KiB per agent over the first; GWS saw \
             {} GET /api/v2/me (one check per agent)",
            (at_10k as f64 - base as f64) / 9999.0,
            stats["me_requests"]
        );
    }

    // ---- 3 and 4 share one simulator with 2,001 agents.
    if sections.contains('3') || sections.contains('4') {
        streaming(&http, &sections).await;
    }

    // ---- 5. Admission after a restart, default flags.
    if sections.contains('5') {
        admission(&http).await;
    }

    // ---- 6. Cluster mode: three replicas on one NATS JetStream.
    if sections.contains('6') {
        cluster(&http).await;
    }
}

/// Sections 3 (memory per streaming agent, event latency) and 4 (10,000 streams of one agent).
async fn streaming(http: &reqwest::Client, sections: &str) {
    // ---- 3. Memory per agent with one stream each; event latency over those streams.
    let sim = Proc::start(&["sim", "2001"], &[]);
    if sections.contains('3') {
        let mut gw_args = vec!["gateway", "--gws-url", &sim.url];
        gw_args.extend_from_slice(&FAST_ADMISSION);
        let gateway = Proc::start(&gw_args, &[("RUST_LOG", "warn")]);
        let auths: Vec<_> = (0..2000).map(auth).collect();
        let (first, _) = open_streams(&gateway.url, &auths[..1], 1, 1).await;
        let base = gateway.rss_kib();
        let t = Instant::now();
        let (mut streams, failed) = open_streams(&gateway.url, &auths[1..], 8, 200).await;
        let opened = t.elapsed();
        streams.extend(first);
        let after = gateway.rss_kib();
        println!(
            "2,000 agents with one SessionEvents stream each: opened in {opened:?} ({failed} failed); \
             RSS {base} KiB with 1, {after} KiB with 2,000 => {:.1} KiB per agent (its CometD session \
             and long-poll included)",
            (after as f64 - base as f64) / 1999.0
        );
        // Latency: one stamped event at a time to an agent taken in turn.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<f64>(1024);
        // Every reader reports the stamps its stream receives.
        for mut s in streams {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Ok(Some(item)) = s.message().await {
                    if let Some(t_us) = stamp(&item)
                        && tx.send((now_us() - t_us) as f64 / 1000.0).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
        let mut lat = Vec::new();
        for i in 0..500 {
            inject(http, &sim.url, (i * 7) % 2000, stamped_event(now_us())).await;
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some(ms)) => lat.push(ms),
                _ => println!("  event {i} not delivered within 10 s"),
            }
        }
        lat.sort_by(f64::total_cmp);
        println!(
            "event latency (simulator publish -> gateway -> gRPC client), {} events over 2,000 \
             agents' streams: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; RSS then {} KiB",
            lat.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN),
            gateway.rss_kib()
        );
    }

    // ---- 4. 10,000 streams of one agent.
    if sections.contains('4') {
        let gateway = Proc::start(&["gateway", "--gws-url", &sim.url], &[("RUST_LOG", "warn")]);
        let agent = 2000;
        let auths = vec![auth(agent); 10_000];
        let (first, _) = open_streams(&gateway.url, &auths[..1], 1, 1).await;
        let base = gateway.rss_kib();
        let t = Instant::now();
        let (mut streams, failed) = open_streams(&gateway.url, &auths[1..], 20, 500).await;
        let opened = t.elapsed();
        streams.extend(first);
        let after = gateway.rss_kib();
        let cometd = control_json(
            http,
            format!("{}/simulator/agents/a{agent}/cometd", sim.url),
        )
        .await;
        println!(
            "10,000 streams of one agent (default limits): opened in {opened:?} ({failed} failed), \
             upstream handshakes {}, CometD sessions {}; RSS {base} KiB with 1, {after} KiB with \
             10,000 => {:.1} KiB per stream",
            cometd["handshakes"],
            cometd["sessions"],
            (after as f64 - base as f64) / 9999.0
        );
        let events: usize = env_or("SCALE_FANOUT_EVENTS", 20);
        let n = streams.len();
        let delivered = Arc::new(AtomicUsize::new(0));
        let readers: Vec<_> = streams
            .into_iter()
            .map(|mut s| {
                let delivered = delivered.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(events);
                    while lat.len() < events {
                        match tokio::time::timeout(Duration::from_secs(30), s.message()).await {
                            Ok(Ok(Some(item))) => {
                                if let Some(t_us) = stamp(&item) {
                                    lat.push((now_us() - t_us) as f64 / 1000.0);
                                    delivered.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            _ => break,
                        }
                    }
                    // The stream is handed back, not dropped: 10,000 streams closing while
                    // the last events are still being delivered would be measured with them.
                    (lat, s)
                })
            })
            .collect();
        let cpu0 = gateway.cpu();
        let own0 = proc_stats::cpu("self", clock_ticks());
        let t0 = Instant::now();
        for k in 1..=events {
            inject(http, &sim.url, agent, stamped_event(now_us())).await;
            // Each event's fan-out is measured on its own: the next one is published once
            // every stream received this one (or after 30 s).
            let until = Instant::now() + Duration::from_secs(30);
            while delivered.load(Ordering::Relaxed) < k * n && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let (fan_cpu, fan_wall) = (gateway.cpu() - cpu0, t0.elapsed());
        let own_cpu = proc_stats::cpu("self", clock_ticks()) - own0;
        let mut lat = Vec::new();
        let mut short = 0;
        let mut slowest = vec![0f64; events];
        let mut finished = Vec::with_capacity(readers.len());
        for r in readers {
            let (got, stream) = r.await.unwrap();
            finished.push(stream);
            if got.len() < events {
                short += 1;
            }
            for (k, ms) in got.iter().enumerate() {
                slowest[k] = slowest[k].max(*ms);
            }
            lat.extend(got);
        }
        lat.sort_by(f64::total_cmp);
        let slowest: Vec<_> = slowest.iter().map(|ms| format!("{ms:.0}")).collect();
        println!("  each event's slowest delivery, ms: {}", slowest.join(" "));
        println!(
            "fan-out of {events} events to {n} streams: {} deliveries ({short} streams short), \
             latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; gateway CPU {:.1} ms per event \
             ({:.1} µs per delivery) over {:.1} ms wall per event; the load generator decoding \
             the 10,000 streams, on the same 2 cores, {:.1} ms CPU per event",
            lat.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN),
            fan_cpu.as_secs_f64() * 1e3 / events as f64,
            fan_cpu.as_secs_f64() * 1e6 / (events * n) as f64,
            fan_wall.as_secs_f64() * 1e3 / events as f64,
            own_cpu.as_secs_f64() * 1e3 / events as f64,
        );
    }
}

/// A freshly started gateway with the default flags: 1,000 valid agents call at once (each
/// retrying on UNAVAILABLE as its RetryInfo says, as a client library would), then, on
/// another fresh gateway, 2,000 random credentials call once each.
async fn admission(http: &reqwest::Client) {
    let sim = Proc::start(&["sim", "1000"], &[]);
    let gateway = Proc::start(&["gateway", "--gws-url", &sim.url], &[("RUST_LOG", "warn")]);
    let cs = clients(&gateway.url, 4).await;
    let auths: Vec<_> = (0..1000).map(auth).collect();
    let refused = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let start = Instant::now();
    let mut served: Vec<f64> = futures::stream::iter(auths.iter().enumerate())
        .map(|(i, a)| {
            let mut c = cs[i % cs.len()].clone();
            let (refused, failed) = (&refused, &failed);
            async move {
                loop {
                    match c.delete_user_data(authed(delete_request(), a)).await {
                        Ok(_) => return start.elapsed().as_secs_f64(),
                        Err(s) if s.code() == tonic::Code::Unavailable => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            let wait = tonic_types::StatusExt::get_details_retry_info(&s)
                                .and_then(|r| r.retry_delay)
                                .unwrap_or(Duration::from_millis(50));
                            tokio::time::sleep(wait).await;
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            return f64::NAN;
                        }
                    }
                }
            }
        })
        .buffer_unordered(1000)
        .collect()
        .await;
    served.retain(|t| t.is_finite());
    served.sort_by(f64::total_cmp);
    let me_valid = control_json(http, format!("{}/simulator/stats", sim.url)).await["me_requests"]
        .as_u64()
        .unwrap_or(0);
    println!(
        "admission after a restart (default flags), 1,000 valid agents at once: {} served, last \
         after {:.2} s (median {:.2} s), {} calls refused UNAVAILABLE on the way, {} failed \
         otherwise; GWS saw {me_valid} GET /api/v2/me",
        served.len(),
        served.last().copied().unwrap_or(f64::NAN),
        percentile(&served, 0.5),
        refused.into_inner(),
        failed.into_inner(),
    );
    drop(gateway);

    let gateway = Proc::start(&["gateway", "--gws-url", &sim.url], &[("RUST_LOG", "warn")]);
    let cs = clients(&gateway.url, 4).await;
    let random: Vec<_> = (0..2000)
        .map(|i| {
            let user = format!("random-{i}-{}", rand_suffix(i));
            let value = Credential::new(user, "guess").unwrap().authorization();
            MetadataValue::try_from(value).unwrap()
        })
        .collect();
    let mut codes: HashMap<tonic::Code, usize> = HashMap::new();
    let results: Vec<tonic::Code> = futures::stream::iter(random.iter().enumerate())
        .map(|(i, a)| {
            let mut c = cs[i % cs.len()].clone();
            async move {
                match c.delete_user_data(authed(delete_request(), a)).await {
                    Ok(_) => tonic::Code::Ok,
                    Err(s) => s.code(),
                }
            }
        })
        .buffer_unordered(2000)
        .collect()
        .await;
    for code in results {
        *codes.entry(code).or_default() += 1;
    }
    let me_random = control_json(http, format!("{}/simulator/stats", sim.url)).await["me_requests"]
        .as_u64()
        .unwrap_or(0)
        - me_valid;
    let mut codes: Vec<_> = codes
        .into_iter()
        .map(|(c, n)| format!("{c:?} {n}"))
        .collect();
    codes.sort();
    println!(
        "admission after a restart (default flags), 2,000 random credentials at once: {}; GWS saw \
         {me_random} upstream requests for them (burst 100 + 50/s)",
        codes.join(", ")
    );
}

/// A nats-server with JetStream on a random loopback port and its own store, killed (and its
/// store removed) when dropped. The binary: `$GWS_NATS_SERVER`, else `nats-server` on PATH,
/// else `target/nats-venv/bin/nats-server` (what `.ci/run` installs).
struct NatsServer {
    child: Child,
    url: String,
    store: std::path::PathBuf,
}

impl NatsServer {
    fn start() -> Self {
        let bin = std::env::var_os("GWS_NATS_SERVER")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("target/nats-venv/bin/nats-server");
                venv.exists().then_some(venv)
            })
            .unwrap_or_else(|| "nats-server".into());
        let store = std::env::temp_dir().join(format!("scale-nats-{}", std::process::id()));
        let mut child = Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-sd"])
            .arg(&store)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("nats-server runs (set GWS_NATS_SERVER)");
        let mut port = None;
        for line in BufReader::new(child.stderr.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some((_, addr)) = line.split_once("Listening for client connections on ") {
                port = addr.trim().rsplit(':').next().map(str::to_string);
            }
            if line.contains("Server is ready") {
                break;
            }
        }
        let url = format!("nats://127.0.0.1:{}", port.expect("nats-server listens"));
        Self { child, url, store }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// Stamped events to `agent`, one at a time, each waited for on `rx`: the latencies (ms).
async fn latencies(
    http: &reqwest::Client,
    sim: &str,
    agent: usize,
    rx: &mut tokio::sync::mpsc::Receiver<f64>,
    events: usize,
) -> Vec<f64> {
    let mut lat = Vec::with_capacity(events);
    for _ in 0..events {
        inject(http, sim, agent, stamped_event(now_us())).await;
        if let Ok(Some(ms)) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            lat.push(ms);
        }
    }
    lat.sort_by(f64::total_cmp);
    lat
}

/// Reads `stream`, sending the latency of every stamped event to `tx`; notices go to
/// `notices` (kind and when).
fn read_stamps(
    mut stream: tonic::Streaming<SessionEventsResponse>,
    tx: tokio::sync::mpsc::Sender<f64>,
    notices: Option<tokio::sync::mpsc::UnboundedSender<(i32, Instant)>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(Some(item)) = stream.message().await {
            if let Some(t_us) = stamp(&item) {
                let _ = tx.try_send((now_us() - t_us) as f64 / 1000.0);
            } else if let (Some(Event::Notice(n)), Some(notices)) = (&item.event, &notices) {
                let _ = notices.send((n.kind, Instant::now()));
            }
        }
    })
}

/// Cluster mode, in the same run as the single process: event latency on a replica that does
/// not own the agent against one process; 10,000 streams of one agent spread over three
/// replicas (handshakes, fan-out); takeover time after kill -9 of the owner.
async fn cluster(http: &reqwest::Client) {
    let nats = NatsServer::start();
    let sim = Proc::start(&["sim", "4"], &[]);
    let flags = |extra: &[&str]| {
        let mut v: Vec<String> = ["gateway", "--gws-url", &sim.url, "--nats-url", &nats.url]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(["--cluster-secret", "scale-harness-cluster-secret"].map(String::from));
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let start = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = std::env::var("SCALE_REPLICA_LOG").unwrap_or("warn".into());
        Proc::start(&args, &[("RUST_LOG", &log)])
    };
    let events: usize = env_or("SCALE_CLUSTER_EVENTS", 300);

    // Latency: one process, then a non-owner replica, agent a0 and a1.
    let single = Proc::start(&["gateway", "--gws-url", &sim.url], &[("RUST_LOG", "warn")]);
    let (s, _) = open_streams(&single.url, &[auth(0)], 1, 1).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    read_stamps(s.into_iter().next().unwrap(), tx, None);
    let one = latencies(http, &sim.url, 0, &mut rx, events).await;
    drop(single);
    let replicas: Vec<Proc> = (0..3).map(|_| start(&flags(&[]))).collect();
    // The first stream makes replica 0 the owner; the measured one is on replica 1.
    let (owner_stream, _) = open_streams(&replicas[0].url, &[auth(1)], 1, 1).await;
    let (s, _) = open_streams(&replicas[1].url, &[auth(1)], 1, 1).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let (ntx, mut notices) = tokio::sync::mpsc::unbounded_channel();
    let measured = read_stamps(s.into_iter().next().unwrap(), tx, Some(ntx));
    let other = latencies(http, &sim.url, 1, &mut rx, events).await;
    let floor = jetstream_floor(&nats.url, events).await;
    let p50 = |v: &[f64]| percentile(v, 0.5);
    let p99 = |v: &[f64]| percentile(v, 0.99);
    println!(
        "event latency, simulator publish -> gRPC client, {events} events one at a time: single process p50 {:.2} ms, p99 {:.2} ms; cluster, on a replica that does not own the agent (owner -> NATS -> replica) p50 {:.2} ms, p99 {:.2} ms => {:.2}x, {:.2}x",
        p50(&one),
        p99(&one),
        p50(&other),
        p99(&other),
        ratio(p50(&other), p50(&one)),
        ratio(p99(&other), p99(&one)),
    );
    println!(
        "  floor of the extra hop, same crate and server (async-nats JetStream publish -> ordered consumer, file storage, {events} messages one at a time): p50 {:.2} ms, p99 {:.2} ms; single process + floor p50 {:.2} ms => the cluster's p50 is {:.2}x of it",
        p50(&floor),
        p99(&floor),
        p50(&one) + p50(&floor),
        ratio(p50(&other), p50(&one) + p50(&floor)),
    );

    // 10,000 streams of agent a2 over the three replicas.
    let agent = 2;
    let per = env_or("SCALE_CLUSTER_STREAMS", 10_000) / 3;
    let mut streams = Vec::new();
    let t = Instant::now();
    for r in &replicas {
        let (mut s, failed) = open_streams(&r.url, &vec![auth(agent); per], 20, 500).await;
        if failed > 0 {
            println!("  {failed} streams failed to open on {}", r.url);
        }
        streams.append(&mut s);
    }
    let opened = t.elapsed();
    let cometd = control_json(
        http,
        format!("{}/simulator/agents/a{agent}/cometd", sim.url),
    )
    .await;
    let n = streams.len();
    let (tx, mut rx) = tokio::sync::mpsc::channel(n * 2);
    let readers: Vec<_> = streams
        .into_iter()
        .map(|s| read_stamps(s, tx.clone(), None))
        .collect();
    let fan_events: usize = env_or("SCALE_FANOUT_EVENTS", 10);
    let mut lat = Vec::new();
    for _ in 0..fan_events {
        inject(http, &sim.url, agent, stamped_event(now_us())).await;
        for _ in 0..n {
            match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
                Ok(Some(ms)) => lat.push(ms),
                _ => break,
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    // Those streams close before the takeover and the rolling restart.
    for r in readers {
        r.abort();
    }
    println!(
        "{n} streams of one agent over 3 replicas: opened in {opened:?}, upstream handshakes {}; fan-out of {fan_events} events: {} deliveries, p50 {:.1} ms, p99 {:.1} ms",
        cometd["handshakes"],
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
    );

    // Takeover: kill -9 of the owner of a1 (replica 0); replica 1's stream learns it.
    drop(owner_stream);
    let mut replicas = replicas.into_iter();
    let owner = replicas.next().unwrap();
    let killed = Instant::now();
    drop(owner);
    let restored = NoticeKind::UpstreamRestored as i32;
    let mut took = None;
    while let Ok(Some((kind, at))) =
        tokio::time::timeout(Duration::from_secs(30), notices.recv()).await
    {
        if kind == restored {
            took = Some(at - killed);
            break;
        }
    }
    println!(
        "takeover after kill -9 of the owner (default --lease-ttl 5s, --lease-renew 1s): RESTORED on another replica's stream after {took:?}"
    );
    measured.abort();
    // Three fresh replicas, so each drain below is the rolling client's agent alone (a
    // replica still owning an agent nobody streams any more waits --handover for a successor).
    drop(replicas);
    rolling_restart(http, &sim.url, Vec::new(), || start(&flags(&[]))).await;
}

/// A rolling restart, as an operator's rollout does it: three rounds of starting a new
/// replica and sending SIGTERM to the oldest, while stamped notifications flow to agent a3
/// every few milliseconds and one client streams them, reconnecting at once with its last
/// token to the oldest live replica whenever its stream ends (so every round moves it).
/// Prints what was sent, received once, lost, doubled, the notices, each drain's time.
async fn rolling_restart(
    http: &reqwest::Client,
    sim: &str,
    mut live: Vec<Proc>,
    start: impl Fn() -> Proc,
) {
    const AGENT: usize = 3;
    while live.len() < 3 {
        live.push(start());
    }
    let (urls_tx, urls) =
        tokio::sync::watch::channel(live.iter().map(|p| p.url.clone()).collect::<Vec<_>>());
    // (stamp or None for a notice kind, latency ms)
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Result<i64, i32>, f64)>();
    let client = tokio::spawn(async move {
        let mut token = String::new();
        let mut reconnects = 0usize;
        loop {
            let Some(url) = urls.borrow().first().cloned() else {
                return reconnects;
            };
            let Ok(mut c) = SmsSessionServiceClient::connect(url).await else {
                continue;
            };
            let req = SessionEventsRequest {
                resume_token: token.clone(),
                ..Default::default()
            };
            let stream = match c.session_events(authed(req, &auth(AGENT))).await {
                Ok(s) => s,
                // Refused (e.g. by a replica shutting down): the next one listed soon.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            reconnects += 1;
            let mut stream = stream.into_inner();
            loop {
                let item = match stream.message().await {
                    Ok(Some(item)) => item,
                    _ => break,
                };
                if !item.resume_token.is_empty() {
                    token = item.resume_token.clone();
                }
                let got = match (stamp(&item), &item.event) {
                    (Some(t), _) => (Ok(t), (now_us() - t) as f64 / 1000.0),
                    (None, Some(Event::Notice(n))) => (Err(n.kind), 0.0),
                    _ => continue,
                };
                if tx.send(got).is_err() {
                    return reconnects;
                }
            }
        }
    });
    let subscribed = NoticeKind::Subscribed as i32;
    match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
        Ok(Some((Err(kind), _))) if kind == subscribed => {}
        other => {
            println!("rolling restart: the client did not subscribe: {other:?}");
            return;
        }
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let injector = {
        let (http, sim, stop) = (http.clone(), sim.to_string(), stop.clone());
        tokio::spawn(async move {
            let mut sent = Vec::new();
            while !stop.is_cancelled() {
                let t = now_us();
                inject(&http, &sim, AGENT, stamped_event(t)).await;
                sent.push(t);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        })
    };
    let mut drains = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        live.push(start());
        let old = live.remove(0);
        urls_tx.send_replace(live.iter().map(|p| p.url.clone()).collect());
        drains.push(
            tokio::task::spawn_blocking(move || old.terminate())
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let sent = injector.await.unwrap();
    let mut seen: HashMap<i64, usize> = HashMap::new();
    let mut lat = Vec::new();
    let mut notices: HashMap<String, usize> = HashMap::new();
    let last = *sent.last().unwrap_or(&0);
    while !seen.contains_key(&last) {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some((Ok(t), ms))) => {
                *seen.entry(t).or_default() += 1;
                lat.push(ms);
            }
            Ok(Some((Err(kind), _))) => {
                let name =
                    NoticeKind::try_from(kind).map_or(kind.to_string(), |k| format!("{k:?}"));
                *notices.entry(name).or_default() += 1;
            }
            _ => break,
        }
    }
    client.abort();
    lat.sort_by(f64::total_cmp);
    let lost = sent.iter().filter(|t| !seen.contains_key(t)).count();
    let doubled = seen.values().filter(|&&n| n > 1).count();
    let drains: Vec<String> = drains
        .iter()
        .map(|(d, ok)| {
            format!(
                "{:.2} s{}",
                d.as_secs_f64(),
                if *ok { "" } else { " (exit not 0)" }
            )
        })
        .collect();
    println!(
        "rolling restart of 3 replicas (SIGTERM each in turn, a new one started first), one client reconnecting with its last token: {} notifications sent, {} received, {lost} lost, {doubled} doubled; notices after the first SUBSCRIBED: {notices:?}; latency through the restart p50 {:.2} ms, p99 {:.1} ms, max {:.1} ms; each SIGTERMed replica exited after {}",
        sent.len(),
        seen.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
        drains.join(", "),
    );
}

/// The floor of the cluster's extra hop, built from the same crate against the same server:
/// a JetStream publish from one connection to an ordered consumer on another (as the owner
/// publishes and a replica's follower reads), one message at a time, in milliseconds.
async fn jetstream_floor(url: &str, n: usize) -> Vec<f64> {
    use async_nats::jetstream;
    let publisher = jetstream::new(async_nats::connect(url).await.expect("NATS"));
    let reader = jetstream::new(async_nats::connect(url).await.expect("NATS"));
    let stream = publisher
        .create_stream(jetstream::stream::Config {
            name: "SCALE_FLOOR".into(),
            subjects: vec!["scale.floor".into()],
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("floor stream");
    drop(stream);
    let mut messages = reader
        .get_stream("SCALE_FLOOR")
        .await
        .expect("floor stream")
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: "scale.floor".into(),
            ..Default::default()
        })
        .await
        .expect("floor consumer")
        .messages()
        .await
        .expect("floor messages");
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let ack = publisher
            .publish("scale.floor", "x".into())
            .await
            .expect("publish");
        if let Ok(Some(Ok(_))) =
            tokio::time::timeout(Duration::from_secs(10), messages.next()).await
        {
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let _ = ack.await;
        // Paced like the events: each one alone on the wire.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    lat.sort_by(f64::total_cmp);
    lat
}

/// A per-run suffix so random credentials are never ones a previous run could have known.
fn rand_suffix(i: usize) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}
