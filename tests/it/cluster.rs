//! Cluster mode end to end: three gateway replicas, one simulator, one real nats-server with
//! JetStream, all on 127.0.0.1. Waits are on stream items, health and the simulator's
//! counters, never sleeps.

use crate::support::events;
use crate::support::gateway;
use crate::support::nats;
use crate::support::process;

use events::{Stream, expect_notice, next, open, subscribed_at};
use gateway::{AGENT1, Harness, SEED_SESSION, STEP, authed, eventually};
use gws_simulator::{self as simulator, RunningSimulator, SimulatorConfig};
use gws_sms_gateway::proto::session_events_response::Event;
use gws_sms_gateway::proto::sms_session_service_client::SmsSessionServiceClient;
use gws_sms_gateway::proto::*;
use nats::Nats;
use serde_json::{Value, json};
use std::time::Duration;

const SECRET: &str = "a-test-cluster-secret";

fn cluster_flags(nats: &Nats) -> Vec<String> {
    [
        "--nats-url",
        &nats.url(),
        "--cluster-secret",
        SECRET,
        "--lease-ttl",
        "1500ms",
        "--lease-renew",
        "300ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn simulator() -> RunningSimulator {
    simulator::start(&SimulatorConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts")
}

async fn replica(sim: &RunningSimulator, nats: &Nats) -> Harness {
    // RUST_LOG=gws_sms_gateway=debug shows what the replicas do.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let flags = cluster_flags(nats);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Harness::gateway(&sim.url, &flags).await
}

fn properties_updated(tag: &str) -> Value {
    json!({
        "messageType": "SMSsessionStateChangeMessage",
        "notificationType": "PropertiesUpdated",
        "smssession": { "id": SEED_SESSION, "state": "Chatting", "userData": { "tag": tag },
                        "capabilities": [], "uri": "", "participants": [] }
    })
}

/// The tag of a PropertiesUpdated item (what `properties_updated` put in).
fn tag(item: &SessionEventsResponse) -> String {
    match &item.event {
        Some(Event::StateChange(c)) => {
            let data = gws_sms_gateway::mapping::user_data_map_to_json(
                &c.session.clone().unwrap_or_default().user_data,
            );
            data.get("tag")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        }
        other => panic!("expected a state change, got {other:?}"),
    }
}

fn notice(item: &SessionEventsResponse) -> Option<NoticeKind> {
    match &item.event {
        Some(Event::Notice(n)) => NoticeKind::try_from(n.kind).ok(),
        _ => None,
    }
}

async fn handshakes(h: &Harness) -> u64 {
    h.cometd_stats("agent1").await["handshakes"]
        .as_u64()
        .unwrap_or(0)
}

async fn stream_on(h: &Harness, resume: &str) -> (Stream, String) {
    subscribed_at(
        h,
        AGENT1,
        SessionEventsRequest {
            resume_token: resume.into(),
            ..Default::default()
        },
    )
    .await
}

#[tokio::test]
async fn three_replicas_share_one_upstream_session_and_resume_on_another_replica_exactly() {
    let nats = Nats::start();
    let sim = simulator().await;
    let replicas = [
        replica(&sim, &nats).await,
        replica(&sim, &nats).await,
        replica(&sim, &nats).await,
    ];
    let mut streams = Vec::new();
    for r in &replicas {
        streams.push(stream_on(r, "").await.0);
    }
    assert_eq!(
        handshakes(&replicas[0]).await,
        1,
        "one CometD handshake for the agent across three replicas"
    );
    for i in 0..4 {
        assert_eq!(
            replicas[0]
                .inject("agent1", properties_updated(&format!("t{i}")))
                .await,
            1
        );
    }
    let mut tokens = Vec::new();
    for stream in &mut streams {
        let mut got = Vec::new();
        for _ in 0..4 {
            let item = next(stream).await.unwrap();
            got.push((tag(&item), item.resume_token.clone()));
        }
        tokens.push(got);
    }
    assert_eq!(
        tokens[0].iter().map(|t| t.0.as_str()).collect::<Vec<_>>(),
        ["t0", "t1", "t2", "t3"]
    );
    assert!(
        tokens.iter().all(|t| *t == tokens[0]),
        "every replica delivers the same items at the same tokens: {tokens:?}"
    );
    // The client read two items on replica 0 and reconnects to replica 2 with its token.
    let (mut resumed, at) = stream_on(&replicas[2], &tokens[0][1].1).await;
    assert_eq!(at, tokens[0][1].1);
    for want in ["t2", "t3"] {
        let item = next(&mut resumed).await.unwrap();
        assert_eq!(notice(&item), None, "no GAP: {item:?}");
        assert_eq!(tag(&item), want);
    }
    // Nothing doubled: the next item is the next notification.
    replicas[0].inject("agent1", properties_updated("t4")).await;
    assert_eq!(tag(&next(&mut resumed).await.unwrap()), "t4");
    // A token of another stream is a GAP, honestly.
    let (mut other, _) = stream_on(&replicas[1], "00000000000000aa.3").await;
    expect_notice(&mut other, NoticeKind::Gap).await;
    assert_eq!(handshakes(&replicas[0]).await, 1);
}

#[tokio::test]
async fn wait_for_outcome_is_confirmed_on_a_replica_that_does_not_own_the_session() {
    let nats = Nats::start();
    let sim = simulator().await;
    let owner = replica(&sim, &nats).await;
    let other = replica(&sim, &nats).await;
    // The first with the credential takes the lease.
    let (_stream, _) = stream_on(&owner, "").await;
    let mut c = other.client().await;
    let r = c
        .delete_user_data(authed(
            DeleteUserDataRequest {
                session_id: SEED_SESSION.into(),
                keys: vec!["UserData1".into()],
                wait_for_outcome: true,
            },
            AGENT1,
        ))
        .await
        .unwrap()
        .into_inner();
    let outcome = r.outcome.expect("outcome");
    assert_eq!(outcome.status(), OutcomeStatus::Confirmed, "{outcome:?}");
    assert_eq!(handshakes(&owner).await, 1, "the owner's session only");
}

#[tokio::test]
async fn a_stale_owners_late_publish_is_not_delivered() {
    let nats = Nats::start();
    let sim = simulator().await;
    let r = replica(&sim, &nats).await;
    let (mut stream, _) = stream_on(&r, "").await;
    // A replica that lost its lease long ago publishes an item (its term is below the
    // owner's): straight to the agent's subject, as its late publish would.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let agent = gws_sms_gateway::upstream::Agent::new(
        &gws_sms_gateway::upstream::Credential::new(AGENT1.0, AGENT1.1).unwrap(),
    )
    .unwrap();
    let name = agent_name(&agent);
    let stale = SessionEventsResponse {
        resume_token: String::new(),
        receive_time: None,
        event: Some(Event::Notice(StreamNotice {
            kind: NoticeKind::Gap as i32,
            detail: "stale".into(),
        })),
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Gws-Kind", "event");
    headers.insert("Gws-Term", "0");
    js.publish_with_headers(
        format!("gws.events.{name}"),
        headers,
        prost::Message::encode_to_vec(&stale).into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    r.inject("agent1", properties_updated("real")).await;
    let item = next(&mut stream).await.unwrap();
    assert_eq!(tag(&item), "real", "the stale item was dropped: {item:?}");
}

/// The agent's name in NATS as the replicas compute it (a hash salted with the secret).
fn agent_name(agent: &gws_sms_gateway::upstream::Agent) -> String {
    gws_sms_gateway::cluster::agent_name(SECRET, agent)
}

#[tokio::test]
async fn nats_restarted_mid_stream_streams_are_told_and_recover_and_unary_calls_work() {
    let mut nats = Nats::start();
    let sim = simulator().await;
    let a = replica(&sim, &nats).await;
    let (mut stream, _) = stream_on(&a, "").await;
    a.inject("agent1", properties_updated("before")).await;
    assert_eq!(tag(&next(&mut stream).await.unwrap()), "before");
    nats.kill();
    expect_notice(&mut stream, NoticeKind::UpstreamLost).await;
    // Unary operations do not need NATS.
    let mut c = a.client().await;
    let sessions = c
        .list_sessions(authed(ListSessionsRequest {}, AGENT1))
        .await
        .expect("unary calls work while NATS is down");
    assert!(!sessions.into_inner().sessions.is_empty());
    // Health says so under its own name; the API's own status stays SERVING.
    assert_eq!(health(&a, "gws.sms.v1.Cluster").await, 2);
    assert_eq!(health(&a, "gws.sms.v1.SmsSessionService").await, 1);
    nats.restart();
    expect_notice(&mut stream, NoticeKind::UpstreamRestored).await;
    eventually("health SERVING again", || async {
        health(&a, "gws.sms.v1.Cluster").await == 1
    })
    .await;
    // Notifications flow again once an owner publishes (the lease may have to expire first).
    let mut got = None;
    for i in 0..50 {
        a.inject("agent1", properties_updated(&format!("after{i}")))
            .await;
        match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
            Ok(Ok(Some(item))) if notice(&item).is_none() => {
                got = Some(item);
                break;
            }
            Ok(Ok(Some(_))) | Err(_) => {}
            other => panic!("stream ended: {other:?}"),
        }
    }
    assert!(got.is_some(), "events flow again after NATS is back");
}

/// 1 SERVING, 2 NOT_SERVING.
async fn health(h: &Harness, service: &str) -> i32 {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let channel = tonic::transport::Channel::from_shared(h.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    tokio::time::timeout(
        STEP,
        HealthClient::new(channel).check(HealthCheckRequest {
            service: service.into(),
        }),
    )
    .await
    .expect("health answers in time")
    .map(|r| r.into_inner().status)
    .unwrap_or(0)
}

#[allow(dead_code)]
fn _uses(_: &Harness) {
    let _ = open;
}

const BIN: &str = env!("CARGO_BIN_EXE_gws-sms-gateway");

/// A replica as a child process (so it can be killed with SIGKILL), and its address from
/// its "gateway serving gRPC" line.
fn spawn_replica(
    sim: &RunningSimulator,
    nats: &Nats,
) -> (std::process::Child, std::net::SocketAddr) {
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--gws-url", &sim.url])
        .args(cluster_flags(nats))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("gateway starts");
    let (tx, rx) = std::sync::mpsc::channel();
    process::forward_lines(&mut child, move |line| {
        let _ = tx.send(line);
    });
    let deadline = std::time::Instant::now() + STEP;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx.recv_timeout(left).expect("the gateway says it serves");
        if line.contains("gateway serving gRPC")
            && let Some(addr) = line
                .split("listen=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
        {
            // Keep draining its output so it never blocks on a full pipe.
            std::thread::spawn(move || while rx.recv().is_ok() {});
            return (child, addr.parse().expect("an address"));
        }
    }
}

fn with_snapshot() -> SessionEventsRequest {
    SessionEventsRequest {
        include_snapshot: true,
        ..Default::default()
    }
}

/// LOST, RESTORED and the resync snapshot, as (kind, token).
async fn takeover_items(stream: &mut Stream) -> Vec<(String, String)> {
    let mut got = Vec::new();
    for _ in 0..3 {
        let item = next(stream).await.unwrap();
        let kind = match &item.event {
            Some(Event::Notice(n)) => format!("{:?}", NoticeKind::try_from(n.kind).unwrap()),
            Some(Event::Snapshot(_)) => "snapshot".into(),
            other => panic!("expected a notice or a snapshot, got {other:?}"),
        };
        got.push((kind, item.resume_token));
    }
    got
}

#[tokio::test]
async fn kill_9_of_the_owner_another_replica_takes_over_and_every_stream_learns_it_at_one_sequence()
{
    let nats = Nats::start();
    let sim = simulator().await;
    let (mut child, addr) = spawn_replica(&sim, &nats);
    let owner = Harness::remote(addr, &sim.url).await;
    // The first replica with the credential owns the agent.
    let (_on_owner, _) = stream_on(&owner, "").await;
    let b = replica(&sim, &nats).await;
    let c = replica(&sim, &nats).await;
    let mut streams = Vec::new();
    for r in [&b, &c] {
        let mut s = open(r, AGENT1, with_snapshot()).await.unwrap();
        expect_notice(&mut s, NoticeKind::Subscribed).await;
        assert!(matches!(
            next(&mut s).await.unwrap().event,
            Some(Event::Snapshot(_))
        ));
        streams.push(s);
    }
    assert_eq!(handshakes(&b).await, 1);
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = std::time::Instant::now();
    let mut seen = Vec::new();
    for s in &mut streams {
        seen.push(takeover_items(s).await);
    }
    println!("takeover after kill -9: {:?}", killed.elapsed());
    let kinds: Vec<&str> = seen[0].iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["UpstreamLost", "UpstreamRestored", "snapshot"]);
    assert_eq!(
        seen[0], seen[1],
        "both replicas' streams at the same tokens"
    );
    assert_eq!(handshakes(&b).await, 2, "the new owner's handshake");
    // And events flow through the new owner to both.
    b.inject("agent1", properties_updated("after")).await;
    let mut tokens = Vec::new();
    for s in &mut streams {
        let item = next(s).await.unwrap();
        assert_eq!(tag(&item), "after");
        tokens.push(item.resume_token);
    }
    assert_eq!(tokens[0], tokens[1]);
}

type Live = std::collections::VecDeque<Harness>;

fn endpoints(live: &Live) -> Vec<String> {
    live.iter().map(Harness::endpoint).collect()
}

/// What the rolling-restart client saw: notification tags, and notices.
struct Seen {
    rx: tokio::sync::mpsc::UnboundedReceiver<(String, Option<NoticeKind>)>,
    tags: Vec<String>,
    notices: Vec<NoticeKind>,
}

impl Seen {
    /// Waits for the client's first SUBSCRIBED.
    async fn subscribed(&mut self) {
        while self.notices.is_empty() {
            let (t, n) = tokio::time::timeout(STEP, self.rx.recv())
                .await
                .expect("the client subscribes")
                .expect("client running");
            match n {
                Some(kind) => self.notices.push(kind),
                None => self.tags.push(t),
            }
        }
    }

    /// Waits for `more` notifications (a signal: they flow).
    async fn take(&mut self, more: usize) {
        let want = self.tags.len() + more;
        while self.tags.len() < want {
            let Ok(got) = tokio::time::timeout(STEP, self.rx.recv()).await else {
                let missing: Vec<usize> = (0..want)
                    .filter(|n| !self.tags.contains(&format!("n{n}")))
                    .collect();
                panic!(
                    "items stopped at {} of {want}: missing {missing:?}, notices {:?}",
                    self.tags.len(),
                    self.notices
                );
            };
            let (t, n) = got.expect("client running");
            match n {
                Some(kind) => self.notices.push(kind),
                None => self.tags.push(t),
            }
        }
    }
}

/// A client that streams from the first replica listed and, whenever its stream ends,
/// reconnects at once with its last token to the first one listed then (the test lists
/// the oldest live replica first: the next to be restarted, so every restart moves it).
fn rolling_client(
    addrs: tokio::sync::watch::Receiver<Vec<String>>,
) -> (tokio::task::JoinHandle<()>, Seen) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut token = String::new();
        loop {
            let list = addrs.borrow().clone();
            let Some(addr) = list.first().cloned() else {
                return;
            };
            let Ok(mut c) = SmsSessionServiceClient::connect(addr).await else {
                continue;
            };
            let req = SessionEventsRequest {
                resume_token: token.clone(),
                ..Default::default()
            };
            let Ok(stream) = c.session_events(authed(req, AGENT1)).await else {
                continue;
            };
            let mut stream = stream.into_inner();
            while let Ok(Some(item)) = stream.message().await {
                if !item.resume_token.is_empty() {
                    token = item.resume_token.clone();
                }
                let n = notice(&item);
                let t = if n.is_none() {
                    tag(&item)
                } else {
                    String::new()
                };
                if tx.send((t, n)).is_err() {
                    return;
                }
            }
        }
    });
    (
        task,
        Seen {
            rx,
            tags: Vec::new(),
            notices: Vec::new(),
        },
    )
}

/// Notifications flowing throughout (paced, so the machine is not flooded); each must
/// reach an upstream session. Returns how many were sent once `stop` is cancelled.
fn injector(
    sim_url: String,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut n = 0;
        while !stop.is_cancelled() {
            let reply = http
                .post(format!("{sim_url}/simulator/agents/agent1/notifications"))
                .header("content-type", "application/json")
                .body(properties_updated(&format!("n{n}")).to_string())
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let reply: Value = serde_json::from_str(&reply).unwrap();
            assert!(
                reply["delivered"].as_u64().unwrap_or(0) >= 1,
                "notification {n} reached no upstream session: {reply}"
            );
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        n
    })
}

#[tokio::test]
async fn a_rolling_restart_loses_nothing_and_doubles_nothing() {
    let nats = Nats::start();
    let sim = simulator().await;
    let mut live = Live::new();
    for _ in 0..3 {
        live.push_back(replica(&sim, &nats).await);
    }
    let (addrs_tx, addrs) = tokio::sync::watch::channel(endpoints(&live));
    let (client, mut seen) = rolling_client(addrs);
    seen.subscribed().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let injector = injector(sim.url.clone(), stop.clone());
    seen.take(5).await;
    for round in 0..3 {
        let mut old = live.pop_front().unwrap();
        live.push_back(replica(&sim, &nats).await);
        addrs_tx.send_replace(endpoints(&live));
        // SIGTERM's path: the graceful shutdown.
        let stopped = old.trigger_stop();
        seen.take(20).await;
        stopped
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        seen.take(10).await;
    }
    stop.cancel();
    let sent = injector.await.unwrap();
    let more = sent.saturating_sub(seen.tags.len());
    seen.take(more).await;
    let want: Vec<String> = (0..sent).map(|n| format!("n{n}")).collect();
    assert_eq!(seen.tags, want, "every notification once, in order");
    assert!(
        seen.notices.iter().all(|n| *n == NoticeKind::Subscribed),
        "no GAP, LOST or RESTORED through the restart: {:?}",
        seen.notices
    );
    client.abort();
}
