//! Cluster mode end to end: three gateway replicas, one simulator, one real nats-server with
//! JetStream, all on 127.0.0.1. Waits are on stream items, health and the simulator's
//! counters, never sleeps.

#[path = "support/events.rs"]
mod events;
#[path = "support/gateway.rs"]
mod gateway;
#[path = "support/nats.rs"]
mod nats;
#[path = "support/process.rs"]
mod process;

use events::{Stream, expect_notice, next, open, subscribed_at};
use gateway::{AGENT1, Harness, SEED_SESSION, STEP, authed, eventually};
use gws_simulator::{self as simulator, RunningSimulator, SimulatorConfig};
use gws_sms_gateway::proto::session_events_response::Event;
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
