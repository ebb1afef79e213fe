//! The gateway binary under a lowered open-files limit (`ulimit -n` in the shell that execs
//! it), against the simulator answering slowly: a burst of calls four times the in-flight
//! limit is served or refused honestly while another agent's stream keeps flowing; silent,
//! dribbling and excess connections are closed and a new client is served; descriptors that
//! do run out (accepting, connecting upstream) are reported as what they are, never as GWS
//! being unreachable. After each, the gateway's descriptors return to their baseline
//! (counted in `/proc/PID/fd`). Every wait is on a signal: a log line, a reply, a closed
//! socket, a count observed.
#![cfg(target_os = "linux")]

use crate::support::gateway;
use crate::support::process;

use gateway::{AGENT1, AGENT2, SEED_SESSION, STEP, authed, eventually};
use gws_simulator::{self as simulator, RunningSimulator, SimulatorConfig};
use gws_sms_gateway::descriptors::Budget;
use gws_sms_gateway::proto::session_events_response::Event;
use gws_sms_gateway::proto::sms_session_service_client::SmsSessionServiceClient;
use gws_sms_gateway::proto::user_data_value::Kind;
use gws_sms_gateway::proto::{
    NoticeKind, SessionEventsRequest, SessionEventsResponse, UpdateUserDataRequest, UserDataValue,
};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

const BIN: &str = env!("CARGO_BIN_EXE_gws-sms-gateway");
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The gateway as a child process under `ulimit -n LIMIT` (soft and hard: it cannot raise
/// it), its log lines kept.
struct Gateway {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Arc<Mutex<Vec<String>>>,
    addr: SocketAddr,
    metrics: String,
}

impl Gateway {
    fn spawn(limit: u64, args: &[&str]) -> Self {
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
            .arg(BIN)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("GWS_URL")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bash runs the gateway");
        let (tx, lines) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = seen.clone();
        process::forward_lines(&mut child, move |line| {
            keep.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        });
        let mut g = Self {
            child,
            lines,
            seen,
            addr: "0.0.0.0:0".parse().unwrap(),
            metrics: String::new(),
        };
        let serving = g.wait_line("gateway serving gRPC");
        g.addr = process::log_field(&serving, "listen")
            .parse()
            .expect("listen address");
        g.metrics = process::log_field(&g.wait_line("metrics serving"), "metrics");
        g
    }

    /// The next log line containing `needle` (every line is kept for [`Self::logged`]).
    fn wait_line(&self, needle: &str) -> String {
        if let Some(line) = self
            .seen
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
        {
            return line.clone();
        }
        let deadline = std::time::Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line with {needle:?}"),
            }
        }
    }

    fn logged(&self, needle: &str) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// A number the gateway logged in its "open-files budget" line.
    fn budget(&self, key: &str) -> usize {
        process::log_field(&self.wait_line("open-files budget"), key)
            .parse()
            .expect("a number")
    }

    /// Open descriptors of the gateway process now.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn client(&self) -> SmsSessionServiceClient<Channel> {
        let channel = Channel::from_shared(self.endpoint())
            .unwrap()
            .connect()
            .await
            .expect("gateway accepts");
        SmsSessionServiceClient::new(channel)
    }

    /// The value of the series `series` (name with its labels, as rendered), or 0.
    async fn metric(&self, series: &str) -> f64 {
        let text = reqwest::get(&self.metrics)
            .await
            .expect("metrics answer")
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a new client gets health SERVING from `addr` (a fresh connection).
async fn served(addr: SocketAddr) -> bool {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let check = async {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .ok()?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .ok()?;
        Some(reply.into_inner().status == 1)
    };
    matches!(tokio::time::timeout(STEP, check).await, Ok(Some(true)))
}

async fn simulator() -> RunningSimulator {
    simulator::start(&SimulatorConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts")
}

async fn control(sim: &RunningSimulator, method: reqwest::Method, path: &str, body: Value) {
    reqwest::Client::new()
        .request(method, format!("{}{path}", sim.url))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("control API answers");
}

async fn rest_requests(sim: &RunningSimulator) -> u64 {
    let text = reqwest::get(format!("{}/simulator/stats", sim.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let stats: Value = serde_json::from_str(&text).unwrap();
    stats["rest_requests"].as_u64().unwrap()
}

fn update(i: i64) -> UpdateUserDataRequest {
    UpdateUserDataRequest {
        session_id: SEED_SESSION.into(),
        user_data: [(
            "burst".to_string(),
            UserDataValue {
                kind: Some(Kind::IntValue(i)),
            },
        )]
        .into(),
        ..Default::default()
    }
}

/// The ErrorInfo reason and `may_have_been_applied` of a failed call.
fn reason(status: &Status) -> (String, String) {
    let Some(info) = status.get_details_error_info() else {
        return (String::new(), String::new());
    };
    let applied = info
        .metadata
        .get("may_have_been_applied")
        .cloned()
        .unwrap_or_default();
    (info.reason, applied)
}

/// A PropertiesUpdated notification carrying `n` in its user data.
fn numbered(n: i64) -> Value {
    json!({
        "messageType": "SMSsessionStateChangeMessage",
        "notificationType": "PropertiesUpdated",
        "referenceId": 7,
        "smssession": {"id": "s1", "state": "Chatting", "userData": {"n": n},
            "capabilities": [], "uri": "", "participants": []}
    })
}

fn number_of(item: &SessionEventsResponse) -> Option<i64> {
    let Some(Event::StateChange(change)) = &item.event else {
        return None;
    };
    match &change.session.as_ref()?.user_data.get("n")?.kind {
        Some(Kind::IntValue(n)) => Some(*n),
        _ => None,
    }
}

#[tokio::test]
async fn four_times_the_in_flight_limit_is_served_or_refused_honestly_and_streams_flow() {
    let sim = simulator().await;
    // A smaller limit keeps the burst (4x the in-flight limit derived from it) light on
    // CPU, so the timing the test reads is GWS's, not the machine's.
    const LIMIT: u64 = 160;
    // Calls without a deadline wait up to --upstream-timeout; idle upstream connections go
    // after a second, so the descriptors' return to baseline is observable.
    let g = Gateway::spawn(
        LIMIT,
        &[
            "--gws-url",
            &sim.url,
            "--upstream-timeout",
            "1400ms",
            "--upstream-idle-timeout",
            "1s",
        ],
    );
    let max = g.budget("upstream_max_in_flight");
    assert_eq!(
        max,
        Budget::new(LIMIT).upstream_rest(),
        "sized from the limit"
    );
    assert_eq!(g.budget("open_files_limit"), LIMIT as usize);

    // Another agent's stream, and the callers' connections, before the baseline.
    let mut stream = g
        .client()
        .await
        .session_events(authed(SessionEventsRequest::default(), AGENT2))
        .await
        .expect("stream opens")
        .into_inner();
    let first = tokio::time::timeout(STEP, stream.message()).await.unwrap();
    let Some(Event::Notice(notice)) = first.unwrap().unwrap().event else {
        panic!("SUBSCRIBED first")
    };
    assert_eq!(notice.kind, NoticeKind::Subscribed as i32);
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(g.client().await);
    }
    // Agent 1 known (credential checked, CSRF token learnt) before the slow part.
    clients[0]
        .update_user_data(authed(update(-1), AGENT1))
        .await
        .expect("a first call succeeds");
    let baseline = g.fds();

    control(
        &sim,
        reqwest::Method::PUT,
        "/simulator/faults",
        json!({"delay_ms": 500}),
    )
    .await;
    let sent_before = rest_requests(&sim).await;
    // Every other call carries a deadline long enough to wait its turn; the others get the
    // gateway's --upstream-timeout, which the queue outlasts.
    let total = 4 * max;
    let calls: Vec<_> = (0..total)
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            tokio::spawn(async move {
                let mut request = authed(update(i as i64), AGENT1);
                let with_deadline = i % 2 == 0;
                if with_deadline {
                    request.set_timeout(Duration::from_secs(4));
                }
                (with_deadline, client.update_user_data(request).await)
            })
        })
        .collect();
    // While the slots are all taken and at least as many calls wait: a call whose own
    // deadline passes first was never sent, and says so. Its deadline is shorter than one
    // GWS reply, so the slots freed meanwhile (at most one per slot) all go to the calls
    // ahead of it in the queue, however the burst was timed.
    eventually("a slot's worth of calls waiting", || async {
        g.metric("gws_gateway_upstream_waiting").await >= max as f64
    })
    .await;
    let mut short = authed(update(-2), AGENT1);
    short.set_timeout(Duration::from_millis(300));
    let refused = clients[1].update_user_data(short).await.unwrap_err();
    assert_eq!(refused.code(), Code::DeadlineExceeded, "{refused:?}");
    assert_eq!(
        reason(&refused),
        ("UPSTREAM_IN_FLIGHT_LIMIT".into(), "false".into())
    );

    // The other agent's stream keeps receiving while the burst is on.
    let mut delivered = 0;
    while !calls.iter().all(|c| c.is_finished()) && delivered < 200 {
        control(
            &sim,
            reqwest::Method::POST,
            "/simulator/agents/agent2/notifications",
            numbered(delivered),
        )
        .await;
        let item = tokio::time::timeout(STEP, stream.message())
            .await
            .expect("the stream is not starved")
            .expect("no stream error")
            .expect("the stream goes on");
        assert_eq!(number_of(&item), Some(delivered), "{item:?}");
        delivered += 1;
    }
    assert!(
        delivered >= 3,
        "only {delivered} notifications during the burst"
    );

    let (mut ok, mut late, mut no_slot) = (0, 0, 0);
    for call in calls {
        let (with_deadline, result) = call.await.unwrap();
        let Err(status) = result else {
            ok += 1;
            continue;
        };
        assert!(
            !status.message().contains("unreachable") && status.code() != Code::Unavailable,
            "GWS is up: {status:?}"
        );
        match (reason(&status), status.code()) {
            ((r, applied), Code::ResourceExhausted)
                if r == "UPSTREAM_IN_FLIGHT_LIMIT" && applied == "false" && !with_deadline =>
            {
                no_slot += 1
            }
            ((r, applied), Code::DeadlineExceeded)
                if r == "UPSTREAM_IN_FLIGHT_LIMIT" && applied == "false" && with_deadline =>
            {
                no_slot += 1
            }
            // Got its slot late and was sent: it says the operation may have been applied.
            ((r, applied), Code::DeadlineExceeded)
                if r == "UPSTREAM_TIMEOUT" && applied == "true" =>
            {
                late += 1
            }
            // Got its slot with too little time left to send anything, and sent nothing.
            ((r, applied), Code::DeadlineExceeded)
                if r == "DEADLINE_TOO_SHORT" && applied == "false" =>
            {
                no_slot += 1
            }
            _ => panic!("not an honest refusal: {status:?}"),
        }
    }
    assert!(ok * 2 >= total, "{ok} of {total} succeeded");
    assert!(no_slot > 0, "the limit was reached: {ok} ok, {late} late");
    // What was refused for want of a slot never reached GWS. (A late one may or may not
    // have: it timed out after it was handed to the connection, and says so.)
    let reached = rest_requests(&sim).await - sent_before;
    assert!(
        (ok as u64..=(ok + late) as u64).contains(&reached),
        "{reached} reached GWS: {ok} ok, {late} late, {no_slot} never sent"
    );

    // The load gone: calls are served again and idle upstream connections are closed.
    control(
        &sim,
        reqwest::Method::DELETE,
        "/simulator/faults",
        json!({}),
    )
    .await;
    clients[0]
        .update_user_data(authed(update(-3), AGENT1))
        .await
        .expect("served after the burst");
    eventually("descriptors back to their baseline", || async {
        g.fds() <= baseline
    })
    .await;
}

/// Reads from `s` until the peer closes it (EOF or reset); false if it stays open.
async fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0; 64];
    let read = tokio::time::timeout(STEP, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    read.await.is_ok()
}

#[tokio::test]
async fn silent_and_dribbling_connections_are_closed_and_new_clients_served() {
    const LIMIT: u64 = 128;
    let g = Gateway::spawn(
        LIMIT,
        &[
            "--gws-url",
            "http://127.0.0.1:9",
            "--handshake-timeout",
            "1s",
            "--health-listen",
            "127.0.0.1:0",
        ],
    );
    let health: SocketAddr = process::log_field(&g.wait_line("plaintext health serving"), "health")
        .parse()
        .unwrap();
    let pending = g.budget("max_pending_handshakes");
    assert!(served(g.addr).await && served(health).await);
    let baseline = g.fds();

    // More silent connections than the gateway has descriptors: all are closed, none
    // keeps a new client out.
    let mut silent = Vec::new();
    for _ in 0..LIMIT + 72 {
        silent.push(TcpStream::connect(g.addr).await.unwrap());
    }
    assert!(served(g.addr).await, "a new client is served");
    for s in &mut silent {
        assert!(closed_by_peer(s).await, "a silent connection was left open");
    }
    drop(silent);

    // Dribbling the preface a byte at a time: closed at the handshake timeout, long before
    // the preface is complete. (Fewer than the pending cap, so no eviction is involved.)
    let addr = g.addr;
    let dribblers: Vec<_> = (0..pending.min(3))
        .map(|_| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let mut sent = 0;
                for byte in PREFACE {
                    if s.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    sent += 1;
                    let mut buf = [0; 1];
                    // The dribbler's pace; the wait is on the gateway closing the socket.
                    let read = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf));
                    if let Ok(Ok(0) | Err(_)) = read.await {
                        break;
                    }
                }
                sent
            })
        })
        .collect();
    for d in dribblers {
        let sent = d.await.unwrap();
        assert!(
            sent < PREFACE.len(),
            "closed before the preface: {sent} bytes"
        );
    }

    // The plaintext health listener is bounded the same way.
    let mut idle = TcpStream::connect(health).await.unwrap();
    assert!(
        closed_by_peer(&mut idle).await,
        "health: silent connection closed"
    );
    assert!(served(health).await);

    assert!(
        g.metric("gws_gateway_handshakes_dropped_total{listener=\"grpc\",reason=\"evicted\"}")
            .await
            >= 1.0
    );
    assert!(
        g.metric("gws_gateway_handshakes_dropped_total{listener=\"grpc\",reason=\"timeout\"}")
            .await
            >= 1.0
    );
    assert!(
        g.metric("gws_gateway_handshakes_dropped_total{listener=\"health\",reason=\"timeout\"}")
            .await
            >= 1.0
    );
    assert_eq!(g.metric("gws_gateway_open_files_limit").await, LIMIT as f64);
    eventually("descriptors back to their baseline", || async {
        g.fds() <= baseline
    })
    .await;
}

#[tokio::test]
async fn out_of_descriptors_on_accept_is_logged_counted_backed_off_and_recovered() {
    const LIMIT: u64 = 64;
    let g = Gateway::spawn(LIMIT, &["--gws-url", "http://127.0.0.1:9"]);
    assert!(served(g.addr).await);
    let baseline = g.fds();
    // Connections that send their preface are served (held by hyper), one at a time: each
    // is opened once the one before it was taken by the server (its SETTINGS frame arrived),
    // so none is a pending handshake the cap would close, and the descriptors run out. The
    // first connection the gateway cannot accept waits in the kernel's backlog: no SETTINGS.
    let mut held = Vec::new();
    for _ in 0..LIMIT * 2 {
        let mut s = TcpStream::connect(g.addr).await.unwrap();
        s.write_all(PREFACE).await.unwrap();
        let mut frame = [0u8; 9];
        let taken = tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut frame)).await;
        held.push(s);
        if !matches!(taken, Ok(Ok(_))) {
            break;
        }
    }
    let warn = g.wait_line("out of file descriptors");
    assert!(
        warn.contains("WARN") && warn.contains("place=\"grpc_accept\""),
        "{warn}"
    );
    drop(held);
    // Recovered: the connections queued meanwhile and new ones are served.
    assert!(
        served(g.addr).await,
        "served once descriptors are free again"
    );
    let errors = g
        .metric("gws_gateway_accept_errors_total{listener=\"grpc\",kind=\"descriptors\"}")
        .await;
    // Backed off, not retried in a busy loop (which counts hundreds of thousands).
    assert!((1.0..1000.0).contains(&errors), "{errors} accept errors");
    assert!(
        g.metric("gws_gateway_descriptors_exhausted_total{place=\"grpc_accept\"}")
            .await
            >= 1.0
    );
    assert_eq!(
        g.logged("out of file descriptors").len(),
        1,
        "one WARN line per 10 s"
    );
    eventually("descriptors back to their baseline", || async {
        g.fds() <= baseline
    })
    .await;
}

#[tokio::test]
async fn out_of_descriptors_towards_gws_is_resource_exhausted_never_unreachable() {
    let sim = simulator().await;
    const LIMIT: u64 = 64;
    // An operator's in-flight limit far above what the descriptors allow.
    let g = Gateway::spawn(
        LIMIT,
        &[
            "--gws-url",
            &sim.url,
            "--upstream-max-in-flight",
            "500",
            "--upstream-idle-timeout",
            "1s",
        ],
    );
    assert!(!g.logged("add up to the open-files limit").is_empty());
    let mut clients = Vec::new();
    for _ in 0..2 {
        clients.push(g.client().await);
    }
    clients[0]
        .update_user_data(authed(update(-1), AGENT1))
        .await
        .expect("a first call succeeds");
    let baseline = g.fds();
    control(
        &sim,
        reqwest::Method::PUT,
        "/simulator/faults",
        json!({"delay_ms": 1000}),
    )
    .await;
    let sent_before = rest_requests(&sim).await;
    let calls: Vec<_> = (0..120)
        .map(|i| {
            let mut client = clients[i % 2].clone();
            tokio::spawn(async move {
                client
                    .update_user_data(authed(update(i as i64), AGENT1))
                    .await
            })
        })
        .collect();
    let (mut ok, mut exhausted) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(!status.message().contains("unreachable"), "{status:?}");
                assert_eq!(
                    reason(&status),
                    ("GATEWAY_OUT_OF_DESCRIPTORS".into(), "false".into())
                );
                exhausted += 1;
            }
        }
    }
    assert!(
        ok > 0 && exhausted > 0,
        "{ok} ok, {exhausted} out of descriptors"
    );
    assert_eq!(
        rest_requests(&sim).await - sent_before,
        ok as u64,
        "none of the others was sent"
    );
    let warn = g.wait_line("place=\"upstream\"");
    assert!(
        warn.contains("WARN") && warn.contains("out of file descriptors"),
        "{warn}"
    );
    control(
        &sim,
        reqwest::Method::DELETE,
        "/simulator/faults",
        json!({}),
    )
    .await;
    clients[0]
        .update_user_data(authed(update(-2), AGENT1))
        .await
        .expect("served again");
    assert!(
        g.metric("gws_gateway_descriptors_exhausted_total{place=\"upstream\"}")
            .await
            >= exhausted as f64
    );
    eventually("descriptors back to their baseline", || async {
        g.fds() <= baseline
    })
    .await;
}
