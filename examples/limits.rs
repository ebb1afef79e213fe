//! Open-files limit harness: prints figures, asserts nothing. `cargo run --release --example
//! limits` (from a shell allowing this process a few thousand descriptors: it holds the
//! callers' side; the gateway child runs under `ulimit -n 1024`, soft and hard, so it
//! cannot raise it). The GWS simulator runs in this process.
//! - Section 1: 20 known agents make 2,000 concurrent UpdateUserData calls (100 each, one
//!   gRPC connection per agent, no deadline: the gateway's default --upstream-timeout
//!   applies) while GWS answers every REST call in 2-5 s. Prints OK and each (code, reason)
//!   with its `may_have_been_applied`, how many said "unreachable", the gateway's peak
//!   descriptors and what it counted.
//! - Section 2: 1,100 TCP connections to the gRPC port held open and silent (never sending
//!   the HTTP/2 preface); a new client tries once a second for 25 s (connect + health check,
//!   3 s each): when each attempt was served, and how many of the silent ones the gateway
//!   closed.
//!
//! `LIMITS_SECTIONS` picks sections (default `12`); `LIMITS_NOFILE` the gateway's limit
//! (default 1024).

use gws_simulator::{self as simulator, SimulatorConfig};
use gws_sms_gateway::config::{Cli, Command as CliCommand, ServeConfig};
use gws_sms_gateway::proto::sms_session_service_client::SmsSessionServiceClient;
use gws_sms_gateway::proto::user_data_value::Kind;
use gws_sms_gateway::proto::{UpdateUserDataRequest, UserDataValue};
use gws_sms_gateway::upstream::Credential;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tonic::Request;
use tonic::transport::Channel;
use tonic_types::StatusExt;

const SESSION: &str = "0071023821aec011";
const AGENTS: usize = 20;
const CALLS: usize = 2_000;
const SILENT: usize = 1_100;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("gateway") {
        return run_gateway(&args[1..]).await;
    }
    let sections = std::env::var("LIMITS_SECTIONS").unwrap_or_else(|_| "12".into());
    let nofile: u64 = std::env::var("LIMITS_NOFILE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let agents: Vec<(String, String)> = (0..AGENTS)
        .map(|i| (format!("a{i}"), "pw".to_string()))
        .collect();
    let config = SimulatorConfig {
        agents: agents.clone(),
        ..SimulatorConfig::default()
    };
    let sim = simulator::start(&config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts");
    let gateway = Gateway::spawn(nofile, &sim.url);
    println!(
        "gateway pid {} under ulimit -n {nofile}; its budget line:\n  {}",
        gateway.child.id(),
        gateway.budget_line
    );
    if sections.contains('1') {
        burst(&gateway, &sim.url, &agents).await;
    }
    if sections.contains('2') {
        silent_flood(&gateway).await;
    }
}

/// The gateway, as `serve` runs it, announcing its address on stdout.
async fn run_gateway(extra: &[String]) {
    let mut args = vec!["gws-sms-gateway".to_string(), "serve".to_string()];
    args.extend_from_slice(extra);
    let cli = <Cli as clap::Parser>::try_parse_from(args).expect("gateway flags");
    let Some(CliCommand::Serve(serve_args)) = cli.command else {
        unreachable!()
    };
    let config = ServeConfig::from_args(serve_args).expect("gateway config");
    let _telemetry =
        gws_sms_gateway::telemetry::Telemetry::init(cli.log_format, "info", None).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("LISTEN {}", listener.local_addr().unwrap());
    gws_sms_gateway::server::run(config, listener, std::future::pending())
        .await
        .expect("gateway runs");
}

struct Gateway {
    child: Child,
    addr: std::net::SocketAddr,
    metrics: String,
    budget_line: String,
    /// WARN lines the gateway wrote (stderr), collected as they come.
    warnings: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Gateway {
    fn spawn(nofile: u64, gws_url: &str) -> Self {
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(std::env::current_exe().unwrap())
            .args(["gateway", "--gws-url", gws_url])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gateway starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("LISTEN ")
            .expect("gateway announces its address")
            .parse()
            .unwrap();
        let (budget_tx, budget_rx) = std::sync::mpsc::channel();
        let warnings = Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = warnings.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("open-files budget") {
                    let _ = budget_tx.send(line.clone());
                }
                if line.contains("WARN") {
                    keep.lock().unwrap().push(line);
                }
            }
        });
        let budget_line = budget_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_default();
        Self {
            child,
            addr,
            metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
            budget_line,
            warnings,
        }
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// The gateway's own series of interest for this issue.
    async fn counted(&self) -> Vec<String> {
        let Ok(resp) = reqwest::get(&self.metrics).await else {
            return vec!["(metrics unreachable)".into()];
        };
        let text = resp.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                [
                    "open_files_limit",
                    "descriptors_exhausted",
                    "accept_errors",
                    "handshakes_dropped",
                    "upstream_requests_total{operation=\"UpdateUserData\"",
                ]
                .iter()
                .any(|k| l.contains(k))
            })
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn update(i: usize) -> UpdateUserDataRequest {
    UpdateUserDataRequest {
        session_id: SESSION.into(),
        user_data: [(
            "n".to_string(),
            UserDataValue {
                kind: Some(Kind::IntValue(i as i64)),
            },
        )]
        .into(),
        ..Default::default()
    }
}

fn authed<T>(message: T, user: &str) -> Request<T> {
    let mut req = Request::new(message);
    let value = Credential::new(user, "pw").unwrap().authorization();
    req.metadata_mut()
        .insert("authorization", value.parse().unwrap());
    req
}

async fn faults(sim_url: &str, body: serde_json::Value) {
    reqwest::Client::new()
        .put(format!("{sim_url}/simulator/faults"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("control API answers");
}

async fn burst(g: &Gateway, sim_url: &str, agents: &[(String, String)]) {
    println!(
        "\n== section 1: {CALLS} concurrent calls, {AGENTS} known agents, GWS answering in 2-5 s"
    );
    let mut clients = Vec::new();
    for (user, _) in agents {
        let channel = Channel::from_shared(format!("http://{}", g.addr))
            .unwrap()
            .connect()
            .await
            .expect("gateway accepts");
        let mut client = SmsSessionServiceClient::new(channel);
        // Known: credential checked and CSRF token learnt before the slow part.
        client
            .update_user_data(authed(update(0), user))
            .await
            .expect("first call");
        clients.push((user.clone(), client));
    }
    faults(
        sim_url,
        serde_json::json!({"delay_ms": 2000, "delay_max_ms": 5000}),
    )
    .await;
    let before = g.fds();
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(before));
    let pid = g.child.id();
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let n = std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .map(|d| d.count())
                    .unwrap_or(0);
                peak.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let started = Instant::now();
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let (user, client) = &clients[i % clients.len()];
            let (user, mut client) = (user.clone(), client.clone());
            tokio::spawn(async move {
                let result = client.update_user_data(authed(update(i), &user)).await;
                (result, started.elapsed())
            })
        })
        .collect();
    let mut outcomes: BTreeMap<String, (usize, Duration)> = BTreeMap::new();
    let mut unreachable = 0;
    for call in calls {
        let (result, took) = call.await.unwrap();
        let key = match result {
            Ok(_) => "OK".to_string(),
            Err(status) => {
                if status.message().contains("unreachable") {
                    unreachable += 1;
                }
                let (reason, applied) = status
                    .get_details_error_info()
                    .map(|i| {
                        let applied = i
                            .metadata
                            .get("may_have_been_applied")
                            .cloned()
                            .unwrap_or_default();
                        (i.reason, applied)
                    })
                    .unwrap_or_default();
                format!(
                    "{:?} {reason} may_have_been_applied={applied}",
                    status.code()
                )
            }
        };
        let entry = outcomes.entry(key).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(took);
    }
    let wall = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    for (what, (n, last)) in &outcomes {
        println!(
            "  {n:>5}  {what}  (last answered at {:.1} s)",
            last.as_secs_f64()
        );
    }
    println!("  said \"unreachable\": {unreachable}");
    println!(
        "  all answered in {:.1} s; gateway descriptors: {before} before, peak {}",
        wall.as_secs_f64(),
        peak.load(Ordering::Relaxed)
    );
    for line in g.counted().await {
        println!("  metric {line}");
    }
    let warnings = g.warnings.lock().unwrap().len();
    println!("  gateway WARN lines so far: {warnings}");
    faults(sim_url, serde_json::json!({})).await;
}

async fn silent_flood(g: &Gateway) {
    println!("\n== section 2: {SILENT} silent connections held, a new client tries every second");
    let baseline = g.fds();
    let started = Instant::now();
    let opened: Vec<_> = (0..SILENT)
        .map(|_| {
            let addr = g.addr;
            tokio::spawn(async move {
                tokio::time::timeout(
                    Duration::from_secs(30),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
                .ok()?
                .ok()
            })
        })
        .collect();
    // Held until the end; each task reports when the gateway closed its connection.
    let closed = Arc::new(AtomicUsize::new(0));
    let mut holders = Vec::new();
    for o in opened {
        if let Some(mut stream) = o.await.unwrap() {
            let closed = closed.clone();
            holders.push(tokio::spawn(async move {
                let mut buf = [0; 1];
                if let Ok(0) | Err(_) = stream.read(&mut buf).await {
                    closed.fetch_add(1, Ordering::Relaxed);
                }
                // Keep it (closed or not) until the harness ends.
                std::future::pending::<()>().await;
                drop(stream);
            }));
        }
    }
    println!(
        "  {} connections established in {:.1} s (gateway descriptors {baseline} before)",
        holders.len(),
        started.elapsed().as_secs_f64()
    );
    for second in 0..25u64 {
        let at = started + Duration::from_secs(second);
        tokio::time::sleep_until(at.into()).await;
        let attempt = Instant::now();
        let served = health(g.addr).await;
        println!(
            "  t={:>4.1} s  new client {} in {:>4} ms   (silent ones closed by the gateway: {}, its descriptors: {})",
            at.duration_since(started).as_secs_f64(),
            if served { "SERVED " } else { "FAILED " },
            attempt.elapsed().as_millis(),
            closed.load(Ordering::Relaxed),
            g.fds()
        );
    }
    for line in g.counted().await {
        println!("  metric {line}");
    }
    for h in holders {
        h.abort();
    }
}

/// A fresh connection and a health check, 3 s for each.
async fn health(addr: std::net::SocketAddr) -> bool {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let Ok(endpoint) = Channel::from_shared(format!("http://{addr}")) else {
        return false;
    };
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3));
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    let mut client = HealthClient::new(channel);
    let check = client.check(HealthCheckRequest::default()).await;
    matches!(check, Ok(r) if r.get_ref().status == 1)
}
