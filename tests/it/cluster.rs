//! Cluster mode end to end: three gateway replicas (in-process, or processes of the binary
//! where a test sends them signals), one simulator, one real nats-server with JetStream, all
//! on 127.0.0.1. Waits are on stream items, health, log lines, process exits and the
//! simulator's counters, never sleeps.

use crate::support::cluster::{
    self, SECRET, health, notice, notices_and_snapshots, properties_updated, replica, simulator,
    with_snapshot,
};
use crate::support::events;
use crate::support::gateway;
use crate::support::nats;
use crate::support::replica::Replica;

use events::{Stream, expect_notice, next, open, subscribed_at};
use gateway::{AGENT1, Harness, SEED_SESSION, STEP, authed, eventually};
use gws_simulator::RunningSimulator;
use gws_sms_gateway::proto::session_events_response::Event;
use gws_sms_gateway::proto::sms_session_service_client::SmsSessionServiceClient;
use gws_sms_gateway::proto::*;
use nats::Nats;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
        replica(&sim, &nats.url()).await,
        replica(&sim, &nats.url()).await,
        replica(&sim, &nats.url()).await,
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
    let owner = replica(&sim, &nats.url()).await;
    let other = replica(&sim, &nats.url()).await;
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
    let r = replica(&sim, &nats.url()).await;
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
    let a = replica(&sim, &nats.url()).await;
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
    // RESTORED once an owner's session is subscribed again. If the lease ran out meanwhile,
    // the owner stopped its session (it was cut off from NATS) and the takeover says LOST
    // first: a LOST before the RESTORED is true, anything else is not.
    loop {
        let item = next(&mut stream).await.unwrap();
        match notice(&item) {
            Some(NoticeKind::UpstreamRestored) => break,
            Some(NoticeKind::UpstreamLost) => {}
            _ => panic!("expected LOST or RESTORED, got {item:?}"),
        }
    }
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

#[tokio::test]
async fn kill_9_of_the_owner_another_replica_takes_over_and_every_stream_learns_it_at_one_sequence()
{
    let nats = Nats::start();
    let sim = simulator().await;
    // A child process, so it can be killed with SIGKILL.
    let process = Replica::spawn("owner", &sim.url, &cluster::flags(&nats.url()), STEP).await;
    let owner = Harness::remote(process.addr, &sim.url).await;
    // The first replica with the credential owns the agent.
    let (_on_owner, _) = stream_on(&owner, "").await;
    let b = replica(&sim, &nats.url()).await;
    let c = replica(&sim, &nats.url()).await;
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
    process.kill().await;
    let killed = std::time::Instant::now();
    let mut seen = Vec::new();
    for s in &mut streams {
        seen.push(notices_and_snapshots(s, 3).await);
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

/// The next `count` items of `stream` (fewer if it has none for [`STEP`]): notifications'
/// tags, notices as `notice:<kind>`.
async fn items(stream: &mut Stream, count: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < count {
        let Ok(item) = tokio::time::timeout(STEP, stream.message()).await else {
            break;
        };
        let item = item
            .expect("the stream goes on")
            .expect("the stream goes on");
        got.push(match notice(&item) {
            Some(kind) => format!("notice:{kind:?}"),
            None => tag(&item),
        });
    }
    got
}

/// What `got` lacks of `want`, and what it has that it should not (or twice).
fn differences(got: &[String], want: &[String]) -> String {
    let missing: Vec<_> = want.iter().filter(|w| !got.contains(w)).collect();
    let mut extra = got.to_vec();
    for w in want {
        if let Some(i) = extra.iter().position(|g| g == w) {
            extra.remove(i);
        }
    }
    format!("missing {missing:?}, extra {extra:?}")
}

/// Two other replicas hold the agent's credential (a stream each) when its owner drains:
/// both start a standby session, the first to claim the handover takes the agent over, the
/// other ends its session at once; nothing is lost or doubled on either replica's stream.
#[tokio::test]
async fn a_handover_to_two_standbys_loses_nothing_and_leaves_one_upstream_session() {
    let nats = Nats::start();
    let sim = simulator().await;
    let mut owner = replica(&sim, &nats.url()).await;
    let (_on_owner, _) = stream_on(&owner, "").await;
    let b = replica(&sim, &nats.url()).await;
    let c = replica(&sim, &nats.url()).await;
    let mut streams = vec![stream_on(&b, "").await.0, stream_on(&c, "").await.0];
    let injected = Arc::new(Injected::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let injector = injector(sim.url.clone(), injected.clone(), stop.clone());
    for s in &mut streams {
        assert_eq!(items(s, 5).await, ["n0", "n1", "n2", "n3", "n4"]);
    }
    // The owner's shutdown (SIGTERM's path, which the rolling restart takes for real).
    owner.trigger_stop().await.unwrap().unwrap();
    // Notifications flow through the new owner: 20 more reach the first stream.
    let after = injected.sent() + 20;
    let mut got = vec![items(&mut streams[0], after - 5).await];
    stop.cancel();
    injector.await.unwrap();
    assert_eq!(*injected.failure.lock().unwrap(), None);
    let sent = injected.sent();
    got[0].extend(items(&mut streams[0], sent - after).await);
    got.push(items(&mut streams[1], sent - 5).await);
    let want: Vec<String> = (5..sent).map(|n| format!("n{n}")).collect();
    for (i, got) in got.iter().enumerate() {
        assert!(
            *got == want,
            "stream {i}: every notification once, in order, no notice: {}; delivered to {:?}",
            differences(got, &want),
            injected.delivered.lock().unwrap()
        );
    }
    // The owner's, the successor's, and the other replica's standby session if it saw the
    // owner draining before the handover was over (it looks every --lease-renew).
    let handshakes = sim_handshakes(&sim).await;
    assert!(
        (2..=3).contains(&handshakes),
        "the owner's and one standby session per replica at most: {handshakes}"
    );
    // The standby that did not claim the handover ended its session when it lost the claim
    // (without which it kept it until its handover deadline, over 10 s).
    tokio::time::timeout(Duration::from_secs(3), async {
        while sessions(&sim).await != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("one upstream session soon after the handover");
}

/// At shutdown an owner keeps the agent's upstream session at most this long while another
/// replica takes it over (`--drain-timeout`, which is also the hub's handover limit).
const HANDOVER: Duration = Duration::from_secs(10);
/// How long a SIGTERMed replica may take to exit: the gateway bounds its own drain by the
/// handover limit plus 2 s for the CometD disconnects (`DISCONNECT_GRACE` in
/// `src/server.rs`); a few seconds more are the process's teardown on a loaded machine.
/// Beyond that the drain does not end.
const EXIT_BOUND: Duration = Duration::from_secs(HANDOVER.as_secs() + 2 + 5);

fn rolling_flags(nats: &Nats) -> Vec<String> {
    let mut flags = cluster::flags(&nats.url());
    flags.extend(["--drain-timeout".into(), format!("{}s", HANDOVER.as_secs())]);
    flags
}

/// The agent's CometD counters at the simulator's control API: live sessions, handshakes.
async fn cometd(sim: &RunningSimulator) -> (u64, u64) {
    let url = format!("{}/simulator/agents/agent1/cometd", sim.url);
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    let stats: Value = serde_json::from_str(&text).unwrap();
    let count = |name: &str| stats[name].as_u64().expect("a count");
    (count("sessions"), count("handshakes"))
}

async fn sessions(sim: &RunningSimulator) -> u64 {
    cometd(sim).await.0
}

async fn sim_handshakes(sim: &RunningSimulator) -> u64 {
    cometd(sim).await.1
}

/// What the rolling-restart client got, in order.
enum Got {
    /// A notification: its tag.
    Item(String),
    Notice(NoticeKind),
    /// A stream ended with this status.
    Ended(tonic::Code, String),
    /// A stream could not be opened.
    Refused(String),
}

/// What the injector did so far.
#[derive(Default)]
struct Injected {
    /// Of each notification sent, to how many upstream sessions it was delivered.
    delivered: Mutex<Vec<u64>>,
    failure: Mutex<Option<String>>,
}

impl Injected {
    fn sent(&self) -> usize {
        self.delivered.lock().unwrap().len()
    }

    /// Of the notifications `from..to`, how many were delivered to two sessions: sent while
    /// both the old owner's session and its successor's were subscribed.
    fn to_both(&self, from: usize, to: usize) -> usize {
        let delivered = self.delivered.lock().unwrap();
        delivered[from..to].iter().filter(|d| **d >= 2).count()
    }
}

/// What the rolling-restart client saw.
struct Seen {
    rx: tokio::sync::mpsc::UnboundedReceiver<Got>,
    tags: Vec<String>,
    notices: Vec<NoticeKind>,
    ends: Vec<(tonic::Code, String)>,
    refused: Vec<String>,
    injected: Arc<Injected>,
}

impl Seen {
    /// Takes what the client got next (within [`STEP`]).
    async fn next(&mut self, waiting_for: &str) {
        let got = match tokio::time::timeout(STEP, self.rx.recv()).await {
            Ok(Some(got)) => got,
            Ok(None) => panic!("the client stopped"),
            Err(_) => panic!(
                "waiting for {waiting_for}: nothing more after {} items (the last {:?}; {}); \
                 notices {:?}, stream ends {:?}, refusals {:?}; injected {}, injector failure {:?}",
                self.tags.len(),
                self.tags.last(),
                self.anomalies(),
                self.notices,
                self.ends,
                self.refused,
                self.injected.sent(),
                self.injected.failure.lock().unwrap(),
            ),
        };
        match got {
            Got::Item(tag) => self.tags.push(tag),
            Got::Notice(kind) => self.notices.push(kind),
            Got::Ended(code, message) => self.ends.push((code, message)),
            Got::Refused(why) => self.refused.push(why),
        }
    }

    /// The notifications received twice, and those missing before the last received.
    fn anomalies(&self) -> String {
        let mut counts = std::collections::BTreeMap::new();
        for t in &self.tags {
            let n: usize = t.trim_start_matches('n').parse().unwrap_or(usize::MAX);
            *counts.entry(n).or_insert(0) += 1;
        }
        let last = counts.keys().next_back().copied().unwrap_or(0);
        let doubled: Vec<_> = counts
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(n, _)| n)
            .collect();
        let missing: Vec<_> = (0..last).filter(|n| !counts.contains_key(n)).collect();
        let delivered = self.injected.delivered.lock().unwrap();
        let to: Vec<_> = missing.iter().map(|n| delivered.get(*n)).collect();
        format!(
            "received twice {doubled:?}, missing {missing:?} (delivered to {to:?} upstream sessions)"
        )
    }

    /// Waits for the client's first SUBSCRIBED.
    async fn subscribed(&mut self) {
        while self.notices.is_empty() {
            self.next("the first SUBSCRIBED").await;
        }
    }

    /// Waits until the client has received `count` notifications (a signal: they flow).
    async fn received(&mut self, count: usize) {
        while self.tags.len() < count {
            self.next(&format!("{count} notifications")).await;
        }
    }
}

/// A client that streams from the first replica listed and, whenever its stream ends,
/// reconnects at once with its last token to the first one listed then (the test lists
/// the live replicas oldest first, and the oldest is the next to be restarted: every
/// restart moves the client, and the agent's lease with it).
fn rolling_client(
    addrs: tokio::sync::watch::Receiver<Vec<String>>,
    injected: Arc<Injected>,
) -> (tokio::task::JoinHandle<()>, Seen) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut token = String::new();
        loop {
            let Some(addr) = addrs.borrow().first().cloned() else {
                return;
            };
            let req = SessionEventsRequest {
                resume_token: token.clone(),
                ..Default::default()
            };
            let opened = match SmsSessionServiceClient::connect(addr).await {
                Ok(mut c) => c
                    .session_events(authed(req, AGENT1))
                    .await
                    .map_err(|s| s.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let mut stream = match opened {
                Ok(s) => s.into_inner(),
                Err(why) => {
                    if tx.send(Got::Refused(why)).is_err() {
                        return;
                    }
                    // The test fails on any refusal; this only spares the machine meanwhile.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let end = loop {
                match stream.message().await {
                    Ok(Some(item)) => {
                        if !item.resume_token.is_empty() {
                            token = item.resume_token.clone();
                        }
                        let got = match notice(&item) {
                            Some(kind) => Got::Notice(kind),
                            None => Got::Item(tag(&item)),
                        };
                        if tx.send(got).is_err() {
                            return;
                        }
                    }
                    Ok(None) => break (tonic::Code::Ok, "end of stream without a status".into()),
                    Err(status) => break (status.code(), status.message().to_string()),
                }
            };
            if tx.send(Got::Ended(end.0, end.1)).is_err() {
                return;
            }
        }
    });
    let seen = Seen {
        rx,
        tags: Vec::new(),
        notices: Vec::new(),
        ends: Vec::new(),
        refused: Vec::new(),
        injected,
    };
    (task, seen)
}

/// Notifications flowing throughout, `n0`, `n1`, ... (paced, so the machine is not
/// flooded); each must reach an upstream session (make before break: at every instant one
/// is subscribed). Stops when `stop` is cancelled or at its first failure (recorded).
fn injector(
    sim_url: String,
    injected: Arc<Injected>,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let url = format!("{sim_url}/simulator/agents/agent1/notifications");
        while !stop.is_cancelled() {
            let n = injected.sent();
            let reply = async {
                let text = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(properties_updated(&format!("n{n}")).to_string())
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .text()
                    .await
                    .map_err(|e| e.to_string())?;
                serde_json::from_str::<Value>(&text).map_err(|e| e.to_string())
            };
            let delivered = match reply.await {
                Ok(reply) => reply["delivered"].as_u64().unwrap_or(0),
                Err(e) => {
                    *injected.failure.lock().unwrap() = Some(format!("notification {n}: {e}"));
                    return;
                }
            };
            if delivered == 0 {
                *injected.failure.lock().unwrap() =
                    Some(format!("notification {n} reached no upstream session"));
                return;
            }
            injected.delivered.lock().unwrap().push(delivered);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// One replica's restart as measured.
#[derive(Debug)]
struct Round {
    /// From SIGTERM to the process's exit.
    exit: Duration,
    /// Notifications injected between SIGTERM and exit.
    during_drain: usize,
    /// Of them, delivered to both upstream sessions (the handover's overlap).
    to_both: usize,
}

/// Three replicas as processes of the binary; three rounds of: a new replica started, the
/// oldest (the agent's owner, the client's replica) sent SIGTERM, notifications injected
/// throughout, the client reconnecting at once with its last token to the oldest live one.
#[tokio::test]
async fn a_rolling_restart_loses_nothing_and_doubles_nothing() {
    let nats = Nats::start();
    let sim = simulator().await;
    let flags = rolling_flags(&nats);
    let mut started = 0;
    let mut start = async || {
        started += 1;
        Replica::spawn(&format!("r{}", started - 1), &sim.url, &flags, STEP).await
    };
    let mut live = std::collections::VecDeque::new();
    for _ in 0..3 {
        live.push_back(start().await);
    }
    let endpoints = |live: &std::collections::VecDeque<Replica>| {
        live.iter().map(Replica::endpoint).collect::<Vec<_>>()
    };
    let (addrs_tx, addrs) = tokio::sync::watch::channel(endpoints(&live));
    let injected = Arc::new(Injected::default());
    let (client, mut seen) = rolling_client(addrs, injected.clone());
    seen.subscribed().await;
    assert_eq!(sim_handshakes(&sim).await, 1, "the first owner's session");
    let stop = tokio_util::sync::CancellationToken::new();
    let injector = injector(sim.url.clone(), injected.clone(), stop.clone());
    seen.received(5).await;
    let mut rounds = Vec::new();
    let mut gone = Vec::new();
    for round in 0..3 {
        // A new replica first, reachable for the client; then the oldest (the owner, and the
        // client's) gets SIGTERM: the client's stream ends and it reconnects to the next.
        live.push_back(start().await);
        let old = live.pop_front().unwrap();
        addrs_tx.send_replace(endpoints(&live));
        let sent = injected.sent();
        let sigterm = std::time::Instant::now();
        old.signal("-TERM");
        let Some(status) = old.exited(EXIT_BOUND).await else {
            panic!(
                "round {round}: {} still running {EXIT_BOUND:?} after SIGTERM:\n{}",
                old.name,
                old.output()
            );
        };
        let exit = sigterm.elapsed();
        assert!(
            status.success(),
            "round {round}: {} exited with {status}:\n{}",
            old.name,
            old.output()
        );
        // Ended by the successor's signal, not by the time limit: a handover cut on the timer
        // would take HANDOVER at least.
        assert!(
            exit < HANDOVER,
            "round {round}: {} took {exit:?} to exit: the handover ran out",
            old.name
        );
        // Its session was disconnected before it exited: the new owner's is the only one.
        assert_eq!(sessions(&sim).await, 1, "round {round}: upstream sessions");
        let drained = injected.sent();
        rounds.push(Round {
            exit,
            during_drain: drained - sent,
            to_both: injected.to_both(sent, drained),
        });
        // The client got its stream ended by the shutdown and is on a live replica: what is
        // injected after the old one exited reaches it.
        seen.received(injected.sent() + 5).await;
        assert_eq!(seen.ends.len(), round + 1, "stream ends: {:?}", seen.ends);
        // Kept: a failing test shows its output.
        gone.push(old);
    }
    stop.cancel();
    injector.await.unwrap();
    assert_eq!(*injected.failure.lock().unwrap(), None);
    let sent = injected.sent();
    seen.received(sent).await;
    client.abort();
    for (i, r) in rounds.iter().enumerate() {
        println!(
            "rolling restart, round {i}: exit {:?} after SIGTERM; {} notifications during the \
             drain, {} of them delivered to both sessions",
            r.exit, r.during_drain, r.to_both
        );
    }
    println!(
        "rolling restart: {sent} notifications in all; {} CometD handshakes",
        sim_handshakes(&sim).await
    );
    let want: Vec<String> = (0..sent).map(|n| format!("n{n}")).collect();
    assert_eq!(seen.tags, want, "every notification once, in order");
    assert_eq!(
        seen.notices,
        [NoticeKind::Subscribed; 4],
        "one SUBSCRIBED per stream (the first and three resumes), no GAP, LOST or RESTORED"
    );
    assert_eq!(seen.ends.len(), 3, "one stream end per restart");
    for (code, message) in &seen.ends {
        assert_eq!(
            (*code, message.contains("gateway is shutting down")),
            (tonic::Code::Unavailable, true),
            "a stream on a SIGTERMed replica ends with UNAVAILABLE, shutting down: {message}"
        );
    }
    assert_eq!(seen.refused, Vec::<String>::new(), "every reconnect opened");
    // Make before break: one handshake per owner (the first, then each successor's standby
    // session, which becomes the agent's session); no takeover's re-handshake.
    assert_eq!(sim_handshakes(&sim).await, 1 + 3, "CometD handshakes");
    assert_eq!(sessions(&sim).await, 1, "one upstream session at the end");
    // Make before break, at the simulator: in every drain both sessions were subscribed at
    // once (the old owner stops only once it has published a notification its successor
    // received too).
    assert!(
        rounds.iter().all(|r| r.to_both > 0),
        "a notification reached both sessions in every drain: {rounds:?}"
    );
}
