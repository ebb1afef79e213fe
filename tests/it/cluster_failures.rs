//! Cluster mode under real failures: an owner partitioned from NATS (its connection runs
//! through a proxy whose link is cut, then healed), a stale owner (a replica process
//! stopped with SIGSTOP until another replica owns its agent, then continued), and a resume
//! on a replica that cannot reach NATS. One simulator, one real nats-server with JetStream,
//! all on 127.0.0.1; waits are on stream items, notices, health, log lines and the
//! simulator's counters, never sleeps.

use crate::support::cluster::{
    self, health, properties_updated, replica, simulator, with_snapshot,
};
use crate::support::events;
use crate::support::gateway;
use crate::support::link_proxy::LinkProxy;
use crate::support::nats::Nats;
use crate::support::process;

use events::{Stream, expect_notice, next, open, subscribed_at};
use gateway::{AGENT1, Harness, STEP, eventually};
use gws_simulator::RunningSimulator;
use gws_sms_gateway::proto::session_events_response::Event;
use gws_sms_gateway::proto::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// The lease TTL the replicas run with (and its renewal): short, so takeovers are quick.
const LEASE_TTL: Duration = Duration::from_millis(1500);

/// What a stream item is, for comparing streams: a notification's tag, a notice's kind or
/// "snapshot".
fn label(item: &SessionEventsResponse) -> String {
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
        Some(Event::Notice(n)) => format!("{:?}", NoticeKind::try_from(n.kind).unwrap()),
        Some(Event::Snapshot(_)) => "snapshot".into(),
        other => panic!("unexpected item {other:?}"),
    }
}

fn is_notification(item: &SessionEventsResponse) -> bool {
    matches!(item.event, Some(Event::StateChange(_)))
}

/// The stream's items, as (label, token), up to and including the notification `tag`.
async fn until(stream: &mut Stream, tag: &str) -> Vec<(String, String)> {
    let mut got = Vec::new();
    loop {
        let item = next(stream).await.unwrap();
        let l = label(&item);
        let done = is_notification(&item) && l == tag;
        got.push((l, item.resume_token));
        if done {
            return got;
        }
    }
}

/// (live CometD sessions, handshakes so far) of agent1 at the simulator.
async fn cometd(h: &Harness) -> (u64, u64) {
    let v = h.cometd_stats("agent1").await;
    (
        v["sessions"].as_u64().unwrap_or(0),
        v["handshakes"].as_u64().unwrap_or(0),
    )
}

/// How long after `since` the first CometD session of agent1 ended, the simulator polled
/// from now on: once its live sessions are one fewer than its handshakes (the first
/// owner's session is the only one that ends).
fn old_session_ended(sim_url: &str, since: Instant) -> tokio::task::JoinHandle<Duration> {
    let url = format!("{sim_url}/simulator/agents/agent1/cometd");
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let deadline = since + STEP;
        loop {
            let text = http.get(&url).send().await.unwrap().text().await.unwrap();
            let v: Value = serde_json::from_str(&text).unwrap();
            let (sessions, handshakes) = (v["sessions"].as_u64(), v["handshakes"].as_u64());
            if let (Some(s), Some(h)) = (sessions, handshakes)
                && s + 1 == h
            {
                return since.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "the first session never ended: {v}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// LOST, RESTORED and the resync snapshot, as (kind, token).
async fn takeover_items(stream: &mut Stream) -> Vec<(String, String)> {
    let mut got = Vec::new();
    for _ in 0..3 {
        let item = next(stream).await.unwrap();
        got.push((label(&item), item.resume_token));
    }
    got
}

/// A stream with snapshots on `h`, past its SUBSCRIBED notice and first snapshot.
async fn snapshot_stream(h: &Harness) -> Stream {
    let mut s = open(h, AGENT1, with_snapshot()).await.unwrap();
    expect_notice(&mut s, NoticeKind::Subscribed).await;
    assert!(matches!(
        next(&mut s).await.unwrap().event,
        Some(Event::Snapshot(_))
    ));
    s
}

const NATS_HEALTH: &str = "gws.sms.v1.Cluster";

#[tokio::test]
async fn a_partitioned_owner_is_fenced_another_takes_over_and_its_streams_recover_when_healed() {
    let nats = Nats::start();
    let sim = simulator().await;
    let link = LinkProxy::start(nats.port);
    // The first replica with the credential owns the agent: its NATS link can be cut.
    let owner = replica(&sim, &link.url("nats")).await;
    let (mut on_owner, _) = subscribed_at(&owner, AGENT1, SessionEventsRequest::default()).await;
    let b = replica(&sim, &nats.url()).await;
    let c = replica(&sim, &nats.url()).await;
    let mut others = [snapshot_stream(&b).await, snapshot_stream(&c).await];
    assert_eq!(cometd(&b).await, (1, 1), "one session: the owner's");
    assert_eq!(sim_inject(&b, "before").await, 1);
    let before = until(&mut on_owner, "before").await;
    for s in &mut others {
        assert_eq!(until(s, "before").await, before);
    }

    link.cut();
    let cut = Instant::now();
    let old_session_ended = old_session_ended(&sim.url, cut);
    // Received by the cut owner's session alone (no other exists yet): it cannot publish it.
    assert_eq!(
        sim_inject(&b, "during").await,
        1,
        "the cut owner's session is still up"
    );
    let lost = expect_notice(&mut on_owner, NoticeKind::UpstreamLost).await;
    assert!(
        notice_detail(&lost).contains("NATS"),
        "the cut replica's stream says why: {lost:?}"
    );
    let mut seen = Vec::new();
    for s in &mut others {
        seen.push(takeover_items(s).await);
    }
    let restored_after = cut.elapsed();
    assert_eq!(
        seen[0].iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["UpstreamLost", "UpstreamRestored", "snapshot"]
    );
    assert_eq!(
        seen[0], seen[1],
        "both replicas' streams at the same tokens"
    );
    // The cut owner stops its own session once it cannot renew its lease in time.
    let session_ended_after = old_session_ended.await.unwrap();
    println!(
        "partition of the owner: RESTORED elsewhere after {restored_after:?}, the cut \
         owner's CometD session ended after {session_ended_after:?} (lease TTL {LEASE_TTL:?})"
    );
    assert!(
        session_ended_after < 2 * LEASE_TTL,
        "the cut owner's session outlived its lease by far: {session_ended_after:?}"
    );
    // Events flow through the new owner.
    assert_eq!(
        sim_inject(&b, "after1").await,
        1,
        "the new owner's session only"
    );
    let mut after1 = Vec::new();
    for s in &mut others {
        after1.push(until(s, "after1").await);
    }
    assert_eq!(after1[0].len(), 1, "nothing else before: {after1:?}");
    assert_eq!(after1[0], after1[1]);

    link.heal();
    eventually("the healed replica's NATS link is up", || async {
        health(&owner, NATS_HEALTH).await == 1
    })
    .await;
    let healed = until(&mut on_owner, "after1").await;
    // What the subject holds since, at the same tokens as elsewhere: the takeover's notices
    // and what the new owner published (never the event only the cut owner's session got),
    // and RESTORED for the link, standing where this replica's follower had read to (unless
    // the subject's own RESTORED was read first: then that one told it).
    let from_subject = [seen[0][0].clone(), seen[0][1].clone(), after1[0][0].clone()];
    let (same, extra): (Vec<_>, Vec<_>) = healed
        .iter()
        .cloned()
        .partition(|item| from_subject.contains(item));
    assert_eq!(same, from_subject, "{healed:?}");
    let link_restored = ("UpstreamRestored".to_string(), before[0].1.clone());
    assert!(
        extra.len() <= 1 && extra.iter().all(|e| *e == link_restored),
        "{healed:?}"
    );
    // Whatever the cut owner's session received and tried to publish is in NATS by now
    // (its connection is back): the next item everywhere is the next notification.
    assert_eq!(sim_inject(&b, "after2").await, 1);
    let mut after2 = vec![until(&mut on_owner, "after2").await];
    for s in &mut others {
        after2.push(until(s, "after2").await);
    }
    assert_eq!(
        after2[0].len(),
        1,
        "nothing between after1 and after2: {after2:?}"
    );
    assert!(after2.iter().all(|a| *a == after2[0]), "{after2:?}");
    assert_eq!(cometd(&b).await, (1, 2), "one session, the new owner's");
}

fn notice_detail(item: &SessionEventsResponse) -> String {
    match &item.event {
        Some(Event::Notice(n)) => n.detail.clone(),
        _ => String::new(),
    }
}

/// Injects a PropertiesUpdated tagged `tag`; how many CometD sessions it was queued for.
async fn sim_inject(h: &Harness, tag: &str) -> u64 {
    h.inject("agent1", properties_updated(tag)).await
}

const BIN: &str = env!("CARGO_BIN_EXE_gws-sms-gateway");

/// A replica as a child process (so it can be stopped with SIGSTOP), its log lines kept.
struct Child {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    metrics: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Child {
    async fn spawn(sim: &RunningSimulator, nats: &Nats) -> Self {
        let mut child = std::process::Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--gws-url", &sim.url])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(cluster::flags(&nats.url()))
            // GWS_CHILD_LOG=info,gws_sms_gateway=debug shows what the child does.
            .env(
                "RUST_LOG",
                std::env::var("GWS_CHILD_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("gateway starts");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = seen.clone();
        process::forward_lines(&mut child, move |line| keep.lock().unwrap().push(line));
        let mut c = Self {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            metrics: String::new(),
            seen,
        };
        c.addr = process::log_field(&c.wait_line("gateway serving gRPC").await, "listen")
            .parse()
            .expect("an address");
        c.metrics = process::log_field(&c.wait_line("metrics serving").await, "metrics");
        c
    }

    /// The first log line containing `needle`, once written. (Polled without blocking the
    /// thread: the simulator and the other replicas run on the test's runtime, and the
    /// child may be waiting for them.)
    async fn wait_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(line) = self.logged(needle).into_iter().next() {
                return line;
            }
            assert!(Instant::now() < deadline, "no log line with {needle:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn logged(&self, needle: &str) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// A counter's value in the replica's Prometheus text.
    async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(&self.metrics)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // SIGKILL ends it stopped or not (a failed test may leave it stopped).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_stopped_owner_continued_after_another_took_over_publishes_nothing_and_stops() {
    let nats = Nats::start();
    let sim = simulator().await;
    let stale = Child::spawn(&sim, &nats).await;
    let on_stale_replica = Harness::remote(stale.addr, &sim.url).await;
    // The first replica with the credential owns the agent.
    let (mut on_stale, _) =
        subscribed_at(&on_stale_replica, AGENT1, SessionEventsRequest::default()).await;
    let b = replica(&sim, &nats.url()).await;
    let c = replica(&sim, &nats.url()).await;
    let mut others = [snapshot_stream(&b).await, snapshot_stream(&c).await];
    assert_eq!(sim_inject(&b, "before").await, 1);
    let before = until(&mut on_stale, "before").await;
    for s in &mut others {
        assert_eq!(until(s, "before").await, before);
    }
    let stale_before = stale
        .metric("gws_gateway_cluster_stale_publishes_total")
        .await;

    process::signal(&stale.child, "-STOP");
    let stopped = Instant::now();
    // Its lease runs out unrenewed and another replica takes the agent over.
    let mut takeover = Vec::new();
    for s in &mut others {
        takeover.push(takeover_items(s).await);
    }
    assert_eq!(
        takeover[0]
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
        ["UpstreamLost", "UpstreamRestored", "snapshot"]
    );
    assert_eq!(takeover[0], takeover[1]);
    println!(
        "stale owner: RESTORED on the other replicas {:?} after SIGSTOP",
        stopped.elapsed()
    );
    // The stopped replica's CometD session still exists: GWS queues these for it too.
    const N: usize = 5;
    for i in 0..N {
        assert_eq!(
            sim_inject(&b, &format!("n{i}")).await,
            2,
            "queued for the new owner's session and the stopped one's"
        );
    }
    let mut got = Vec::new();
    for s in &mut others {
        got.push(until(s, &format!("n{}", N - 1)).await);
    }
    assert_eq!(
        got[0].iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        (0..N).map(|i| format!("n{i}")).collect::<Vec<_>>()
    );
    assert_eq!(got[0], got[1]);

    process::signal(&stale.child, "-CONT");
    let continued = Instant::now();
    // It finds out it lost the lease, stops its upstream session and publishes nothing of
    // what that session received meanwhile.
    stale
        .wait_line("cluster: upstream session ended; lease handed back")
        .await;
    eventually("the stale replica's CometD session ends", || async {
        cometd(&b).await == (1, 2)
    })
    .await;
    println!(
        "stale owner: its CometD session ended {:?} after SIGCONT",
        continued.elapsed()
    );
    let fenced = [
        "lease not renewed in time; upstream session stops",
        "lease taken by another replica; upstream session stops",
        "no longer holds the agent's lease",
    ];
    assert!(
        fenced.iter().any(|l| !stale.logged(l).is_empty()),
        "the stale replica says why it stopped: {:?}",
        stale.logged("cluster")
    );
    let stale_after = stale
        .metric("gws_gateway_cluster_stale_publishes_total")
        .await;
    println!("stale owner: messages it dropped or had refused: {stale_before} -> {stale_after}");
    // Whatever it tried is in NATS by now: the next item everywhere is the next one.
    assert_eq!(
        sim_inject(&b, "end").await,
        1,
        "the new owner's session only"
    );
    for s in &mut others {
        assert_eq!(until(s, "end").await.len(), 1, "nothing before it");
    }
    // The stale replica's own stream learns the same, at the same tokens, each once.
    let mut want = vec![takeover[0][0].clone(), takeover[0][1].clone()];
    want.extend(got[0].iter().cloned());
    let on_stale_got = until(&mut on_stale, "end").await;
    assert_eq!(&on_stale_got[..want.len()], &want[..], "{on_stale_got:?}");
    assert_eq!(on_stale_got.len(), want.len() + 1, "{on_stale_got:?}");
}

#[tokio::test]
async fn a_resume_a_replica_cut_from_nats_cannot_check_is_unavailable_not_a_gap() {
    let nats = Nats::start();
    let sim = simulator().await;
    let link = LinkProxy::start(nats.port);
    let a = replica(&sim, &nats.url()).await;
    // A owns the agent (its stream came first); B reads the subject through the link.
    let (mut on_a, _) = subscribed_at(&a, AGENT1, SessionEventsRequest::default()).await;
    let b = replica(&sim, &link.url("nats")).await;
    let (mut on_b, _) = subscribed_at(&b, AGENT1, SessionEventsRequest::default()).await;
    assert_eq!(sim_inject(&a, "before").await, 1);
    assert_eq!(
        until(&mut on_a, "before").await,
        until(&mut on_b, "before").await
    );

    link.cut();
    expect_notice(&mut on_b, NoticeKind::UpstreamLost).await;
    assert_eq!(sim_inject(&a, "x").await, 1);
    let x = until(&mut on_a, "x").await;
    assert_eq!(x.len(), 1);
    let token = x[0].1.clone();
    // B has not read it and cannot ask NATS whether it exists: not "never issued".
    let asked = Instant::now();
    let refused = open(&b, AGENT1, resume_from(&token))
        .await
        .expect_err("a token B cannot check is not honoured");
    println!(
        "resume on a replica cut from NATS: refused after {:?}",
        asked.elapsed()
    );
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("NATS connection is down")
            && refused.message().contains("stays valid"),
        "{}",
        refused.message()
    );
    use tonic_types::StatusExt;
    assert_eq!(
        refused.get_details_error_info().expect("ErrorInfo").reason,
        "CLUSTER_LINK_DOWN"
    );

    link.heal();
    eventually("B's NATS link is up", || async {
        health(&b, NATS_HEALTH).await == 1
    })
    .await;
    let (mut resumed, at) = subscribed_at(&b, AGENT1, resume_from(&token)).await;
    assert_eq!(at, token, "resumed from the token");
    assert_eq!(sim_inject(&a, "y").await, 1);
    let y = until(&mut on_a, "y").await;
    assert_eq!(
        until(&mut resumed, "y").await,
        y,
        "no GAP, no duplicate of x: the next item is y, at the same token"
    );
    // B's own stream was told it is back, and caught up: x and y at the same tokens.
    let healed = until(&mut on_b, "y").await;
    let (events, notices): (Vec<_>, Vec<_>) = healed
        .iter()
        .cloned()
        .partition(|(label, _)| !label.starts_with("Upstream"));
    assert_eq!(events, [x[0].clone(), y[0].clone()], "{healed:?}");
    assert_eq!(
        notices.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["UpstreamRestored"],
        "{healed:?}"
    );
}

fn resume_from(token: &str) -> SessionEventsRequest {
    SessionEventsRequest {
        resume_token: token.into(),
        ..Default::default()
    }
}
