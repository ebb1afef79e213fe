//! What the cluster-mode tests share: the replicas' flags, an in-process replica, the
//! notification they inject, and the small readers of what comes back.

#![allow(dead_code)]

use super::events::{Stream, next};
use super::gateway::{Harness, SEED_SESSION, STEP};
use gws_simulator::{self as simulator, RunningSimulator, SimulatorConfig};
use gws_sms_gateway::proto::session_events_response::Event;
use gws_sms_gateway::proto::{NoticeKind, SessionEventsRequest, SessionEventsResponse};
use serde_json::{Value, json};

/// The secret the test replicas share.
pub const SECRET: &str = "a-test-cluster-secret";

/// Cluster mode on `nats_url` with a short lease (1.5 s, renewed every 300 ms), so takeovers
/// are quick.
pub fn flags(nats_url: &str) -> Vec<String> {
    [
        "--nats-url",
        nats_url,
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

pub async fn simulator() -> RunningSimulator {
    simulator::start(&SimulatorConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts")
}

/// An in-process replica whose NATS connection goes to `nats_url` (the server, or a proxy).
pub async fn replica(sim: &RunningSimulator, nats_url: &str) -> Harness {
    replica_with(&sim.url, nats_url, &[]).await
}

/// [`replica`] with more flags.
pub async fn replica_with(sim_url: &str, nats_url: &str, extra: &[&str]) -> Harness {
    // RUST_LOG=gws_sms_gateway=debug shows what the replicas do.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut flags = flags(nats_url);
    flags.extend(extra.iter().map(|s| s.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Harness::gateway(sim_url, &flags).await
}

/// A PropertiesUpdated notification of the seed session carrying `tag` in its user data.
pub fn properties_updated(tag: &str) -> Value {
    json!({
        "messageType": "SMSsessionStateChangeMessage",
        "notificationType": "PropertiesUpdated",
        "smssession": { "id": SEED_SESSION, "state": "Chatting", "userData": { "tag": tag },
                        "capabilities": [], "uri": "", "participants": [] }
    })
}

pub fn notice(item: &SessionEventsResponse) -> Option<NoticeKind> {
    match &item.event {
        Some(Event::Notice(n)) => NoticeKind::try_from(n.kind).ok(),
        _ => None,
    }
}

pub fn with_snapshot() -> SessionEventsRequest {
    SessionEventsRequest {
        include_snapshot: true,
        ..Default::default()
    }
}

/// The next `n` items as (what, token): a notice's kind or "snapshot" (a takeover's LOST,
/// RESTORED and resync snapshot, say).
pub async fn notices_and_snapshots(stream: &mut Stream, n: usize) -> Vec<(String, String)> {
    let mut got = Vec::new();
    for _ in 0..n {
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

/// `grpc.health.v1` of `service` on `h`: 1 SERVING, 2 NOT_SERVING.
pub async fn health(h: &Harness, service: &str) -> i32 {
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
