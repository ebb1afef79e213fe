//! Cluster mode at the edges of what the agent's subject holds: trimmed by retention (a
//! replica that starts following then learns the upstream state from the lease, not from
//! controls long dropped), and an event whose session id no NATS header can carry.

use crate::support::cluster::{self, properties_updated};
use crate::support::events::{Stream, next, subscribed_at};
use crate::support::gateway::{AGENT1, Harness};
use crate::support::nats::Nats;
use gws_simulator::{self as simulator, SimulatorConfig};
use gws_sms_gateway::proto::SessionEventsRequest;
use gws_sms_gateway::proto::session_events_response::Event;
use serde_json::json;

/// A replica that keeps two events per agent: the SUBSCRIBED control leaves the subject soon.
async fn replica(sim_url: &str, nats: &Nats) -> Harness {
    let extra = ["--stream-buffer", "2", "--replay-max-events", "2"];
    cluster::replica_with(sim_url, &nats.url(), &extra).await
}

async fn inject(h: &Harness, tag: &str) {
    h.inject("agent1", properties_updated(tag)).await;
}

async fn stream(h: &Harness) -> (Stream, String) {
    subscribed_at(h, AGENT1, SessionEventsRequest::default()).await
}

#[tokio::test]
async fn a_replica_that_follows_after_every_control_was_trimmed_still_says_subscribed() {
    let nats = Nats::start();
    let sim = simulator::start(&SimulatorConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts");
    let a = replica(&sim.url, &nats).await;
    let (mut on_a, _) = stream(&a).await;
    // Five events through a two-event retention: the subject keeps only the last two.
    for i in 0..5 {
        inject(&a, &format!("e{i}")).await;
        let item = next(&mut on_a).await.unwrap();
        assert!(
            matches!(item.event, Some(Event::StateChange(_))),
            "{item:?}"
        );
    }
    // The owner writes its session's state into the lease at its next renewal; a replica
    // that starts now reads a history with no control in it. Before, it waited for one and
    // its stream was refused NOT_READY after --subscribe-timeout.
    let b = replica(&sim.url, &nats).await;
    let (mut on_b, _) = stream(&b).await;
    inject(&a, "after").await;
    let (x, y) = (
        next(&mut on_a).await.unwrap(),
        next(&mut on_b).await.unwrap(),
    );
    assert_eq!(
        x.resume_token, y.resume_token,
        "the same event at the same token"
    );
    assert_eq!(a.cometd_stats("agent1").await["handshakes"], 1);
}

#[tokio::test]
async fn a_session_id_no_nats_header_can_carry_is_delivered_and_harms_nothing() {
    let nats = Nats::start();
    let sim = simulator::start(&SimulatorConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts");
    let a = replica(&sim.url, &nats).await;
    let (mut on_a, _) = stream(&a).await;
    // GWS's JSON may hold anything in an id; a CR/LF cannot go into a NATS header value.
    a.inject(
        "agent1",
        json!({
            "messageType": "SMSsessionStateChangeMessage",
            "notificationType": "PropertiesUpdated",
            "smssession": { "id": "bad\r\nid", "state": "Chatting", "userData": { "tag": "odd" },
                            "capabilities": [], "uri": "", "participants": [] }
        }),
    )
    .await;
    let odd = next(&mut on_a).await.unwrap();
    match &odd.event {
        Some(Event::StateChange(c)) => {
            assert_eq!(c.session.as_ref().map(|s| s.id.as_str()), Some("bad\r\nid"))
        }
        other => panic!("expected the state change, got {other:?}"),
    }
    // The owner lives on: the next notification flows, through the same upstream session.
    inject(&a, "after").await;
    assert!(matches!(
        next(&mut on_a).await.unwrap().event,
        Some(Event::StateChange(_))
    ));
    assert_eq!(a.cometd_stats("agent1").await["handshakes"], 1);
}
