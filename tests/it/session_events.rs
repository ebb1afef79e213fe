//! SessionEvents end to end: a real tonic client -> the gateway -> its Bayeux client -> the
//! simulator's CometD endpoint, over real sockets. Every wait is on a stream item or a
//! control-API observation, never a sleep.

use crate::support::events;
use crate::support::gateway;

use events::{expect_notice, next, open, subscribed, subscribed_at};
use gateway::{AGENT1, AGENT2, Harness, SEED_SESSION, STEP, authed};
use gws_sms_gateway::mapping::user_data_map_to_json;
use gws_sms_gateway::proto::session_events_response::Event;
use gws_sms_gateway::proto::{
    DeleteUserDataRequest, NoticeKind, NotificationType, SessionEventsRequest,
    SessionEventsResponse,
};
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

async fn delete(h: &Harness, agent: (&str, &str), keys: &[&str]) -> Option<i64> {
    let mut client = h.client().await;
    let req = DeleteUserDataRequest {
        session_id: SEED_SESSION.into(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        ..Default::default()
    };
    client
        .delete_user_data(authed(req, agent))
        .await
        .unwrap()
        .into_inner()
        .reference_id
}

/// The state change of an item: (reference id, session id, user data as JSON).
fn change(item: &SessionEventsResponse) -> (Option<i64>, String, Value) {
    match &item.event {
        Some(Event::StateChange(c)) => {
            let s = c.session.clone().unwrap_or_default();
            (
                c.reference_id,
                s.id.clone(),
                Value::Object(user_data_map_to_json(&s.user_data)),
            )
        }
        other => panic!("expected a state change, got {other:?}"),
    }
}

fn properties_updated(session: &str, tag: &str) -> Value {
    json!({
        "messageType": "SMSsessionStateChangeMessage",
        "notificationType": "PropertiesUpdated",
        "referenceId": 1,
        "smssession": { "id": session, "state": "Chatting", "userData": { "tag": tag },
                        "capabilities": [], "uri": "", "participants": [] }
    })
}

#[tokio::test]
async fn delete_user_data_notification_arrives_with_remaining_keys() {
    let h = Harness::with_defaults().await;
    let mut stream = subscribed(&h, AGENT1, SessionEventsRequest::default()).await;
    let reference = delete(&h, AGENT1, &["UserData1"]).await;
    let item = next(&mut stream).await.unwrap();
    assert!(!item.resume_token.is_empty() && item.receive_time.is_some());
    let Some(Event::StateChange(c)) = &item.event else {
        panic!("{item:?}")
    };
    assert_eq!(
        c.notification_type,
        NotificationType::PropertiesUpdated as i32
    );
    assert_eq!(c.notification_type_name, "PropertiesUpdated");
    let (ref_id, session, ud) = change(&item);
    assert_eq!(
        ref_id, reference,
        "the notification carries the operation's referenceId"
    );
    assert_eq!(session, SEED_SESSION);
    assert!(ud.get("UserData1").is_none(), "{ud}");
    assert_eq!(ud["UserData2"], json!(123456789));
    assert_eq!(ud["IdentifyCreateContact"], json!("3"));
    assert_eq!(ud["RRequestedSkills"], Value::Null);
}

#[tokio::test]
async fn two_agents_never_see_each_others_events() {
    let h = Harness::with_defaults().await;
    let mut s1 = subscribed(&h, AGENT1, SessionEventsRequest::default()).await;
    let mut s2 = subscribed(&h, AGENT2, SessionEventsRequest::default()).await;
    let r1 = delete(&h, AGENT1, &["UserData1"]).await;
    let r2 = delete(&h, AGENT2, &["Subject"]).await;
    // Each agent's first event is its own, though agent1's happened first.
    let (ref1, _, ud1) = change(&next(&mut s1).await.unwrap());
    let (ref2, _, ud2) = change(&next(&mut s2).await.unwrap());
    assert_eq!((ref1, ref2), (r1, r2));
    assert!(ud1.get("UserData1").is_none() && ud1.get("Subject").is_some());
    assert!(ud2.get("UserData1").is_some() && ud2.get("Subject").is_none());
    // And agent2's CometD session is its own.
    assert_eq!(h.cometd_stats("agent1").await["sessions"], 1);
    assert_eq!(h.cometd_stats("agent2").await["sessions"], 1);
}

#[tokio::test]
async fn filters_by_session_and_notification_type() {
    let h = Harness::with_defaults().await;
    let by_session = SessionEventsRequest {
        session_ids: vec!["s2".into()],
        ..Default::default()
    };
    let by_type = SessionEventsRequest {
        notification_types: vec![NotificationType::StatusChange as i32],
        ..Default::default()
    };
    let mut s_session = subscribed(&h, AGENT1, by_session).await;
    let mut s_type = subscribed(&h, AGENT1, by_type).await;
    h.inject("agent1", properties_updated("s1", "skip")).await;
    h.inject("agent1", properties_updated("s2", "want")).await;
    let mut status_change = properties_updated("s1", "status");
    status_change["notificationType"] = json!("StatusChange");
    h.inject("agent1", status_change).await;
    let (_, id, ud) = change(&next(&mut s_session).await.unwrap());
    assert_eq!((id.as_str(), &ud["tag"]), ("s2", &json!("want")));
    let (_, id, ud) = change(&next(&mut s_type).await.unwrap());
    assert_eq!((id.as_str(), &ud["tag"]), ("s1", &json!("status")));
}

#[tokio::test]
async fn invalid_requests_and_credentials_are_refused() {
    let h = Harness::with_defaults().await;
    let bad = SessionEventsRequest {
        session_ids: vec!["a/b".into()],
        notification_types: vec![42],
        resume_token: "garbage".into(),
        ..Default::default()
    };
    let status = open(&h, AGENT1, bad).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = open(&h, ("agent1", "wrong"), SessionEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        !status.message().contains("wrong"),
        "the password never appears"
    );
    // With CSRF on, the gateway first reads GET /api/v2/me, whose GWS body says why.
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "GWS_STATUS_20"
    );
    let mut client = h.client().await;
    let status = client
        .session_events(tonic::Request::new(SessionEventsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn fifty_subscribers_share_one_upstream_session() {
    let h = Harness::with_defaults().await;
    let mut streams = Vec::new();
    for _ in 0..50 {
        streams.push(subscribed(&h, AGENT1, SessionEventsRequest::default()).await);
    }
    let stats = h.cometd_stats("agent1").await;
    assert_eq!(stats["handshakes"], 1, "{stats}");
    assert_eq!(stats["sessions"], 1, "{stats}");
    let reference = delete(&h, AGENT1, &["UserData1"]).await;
    for stream in &mut streams {
        assert_eq!(change(&next(stream).await.unwrap()).0, reference);
    }
}

#[tokio::test]
async fn upstream_session_dropped_then_restored() {
    let h = Harness::with_defaults().await;
    let mut stream = subscribed(&h, AGENT1, SessionEventsRequest::default()).await;
    assert_eq!(h.drop_cometd("agent1").await, 1);
    expect_notice(&mut stream, NoticeKind::UpstreamLost).await;
    expect_notice(&mut stream, NoticeKind::UpstreamRestored).await;
    assert_eq!(h.cometd_stats("agent1").await["handshakes"], 2);
    let reference = delete(&h, AGENT1, &["UserData1"]).await;
    assert_eq!(
        change(&next(&mut stream).await.unwrap()).0,
        reference,
        "the stream stayed open"
    );
}

#[tokio::test]
async fn resume_after_reconnect_replays_what_was_missed() {
    let h = Harness::with_defaults().await;
    let mut stream = subscribed(&h, AGENT1, SessionEventsRequest::default()).await;
    delete(&h, AGENT1, &["UserData1"]).await;
    let token = next(&mut stream).await.unwrap().resume_token;
    drop(stream);
    // Missed while disconnected (the agent's feed lingers and buffers them).
    let r2 = delete(&h, AGENT1, &["Subject"]).await;
    let r3 = delete(&h, AGENT1, &["RTenant"]).await;
    let resume = SessionEventsRequest {
        resume_token: token.clone(),
        ..Default::default()
    };
    let (mut stream, start) = subscribed_at(&h, AGENT1, resume).await;
    assert_eq!(start, token, "SUBSCRIBED marks where the replay starts");
    assert_eq!(change(&next(&mut stream).await.unwrap()).0, r2);
    assert_eq!(change(&next(&mut stream).await.unwrap()).0, r3);
    let r4 = delete(&h, AGENT1, &["DISP_KEY"]).await;
    assert_eq!(change(&next(&mut stream).await.unwrap()).0, r4, "then live");
}

#[tokio::test]
async fn a_token_it_cannot_honour_yields_gap() {
    let h = Harness::with_defaults().await;
    let foreign = SessionEventsRequest {
        resume_token: "00000000deadbeef.5".into(),
        ..Default::default()
    };
    let mut stream = subscribed(&h, AGENT1, foreign).await;
    expect_notice(&mut stream, NoticeKind::Gap).await;
    let reference = delete(&h, AGENT1, &["UserData1"]).await;
    assert_eq!(change(&next(&mut stream).await.unwrap()).0, reference);
}

#[tokio::test]
async fn slow_consumer_is_cut_off_alone_and_can_resume() {
    // 40 bursts of 10 items of ~16 KiB: a consumer that keeps up never holds more than a
    // burst; one that does not read falls behind by far more than its 32-item buffer plus
    // what HTTP/2 holds for it (hyper's client opens a 2 MiB stream window).
    const BURSTS: usize = 40;
    const BURST: usize = 10;
    let h = Harness::start(
        Default::default(),
        &["--stream-buffer", "32", "--replay-max-events", "1000"],
    )
    .await;
    // Separate connections: HTTP/2 flow control must not couple the two streams.
    let (mut slow, slow_start) = subscribed_at(&h, AGENT1, SessionEventsRequest::default()).await;
    let mut fast = subscribed(&h, AGENT1, SessionEventsRequest::default()).await;
    let big = "x".repeat(16 * 1024);
    let mut tokens = Vec::new();
    for _ in 0..BURSTS {
        let delivered = h
            .control(
                reqwest::Method::POST,
                &format!("/simulator/agents/agent1/notifications?repeat={BURST}"),
                Some(properties_updated("s1", &big)),
            )
            .await;
        assert_eq!(delivered["delivered"], BURST as u64);
        for _ in 0..BURST {
            tokens.push(
                next(&mut fast)
                    .await
                    .expect("the fast consumer gets everything")
                    .resume_token,
            );
        }
    }
    // The slow one: whatever it had, then RESOURCE_EXHAUSTED with its last token.
    let mut got = 0;
    let status = loop {
        match next(&mut slow).await {
            Ok(item) => {
                assert_eq!(item.resume_token, tokens[got], "in order, nothing skipped");
                got += 1;
            }
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(got < tokens.len(), "it was cut off before the end");
    // Its last delivered item: an event, or the SUBSCRIBED notice if it got none.
    let last = if got == 0 {
        slow_start
    } else {
        tokens[got - 1].clone()
    };
    assert!(
        status.message().contains(&format!("\"{last}\"")),
        "{}",
        status.message()
    );
    // Resuming from that token delivers the rest without loss.
    let resume = SessionEventsRequest {
        resume_token: last,
        ..Default::default()
    };
    let mut again = subscribed(&h, AGENT1, resume).await;
    for expected in &tokens[got..] {
        assert_eq!(&next(&mut again).await.unwrap().resume_token, expected);
    }
}

#[tokio::test]
async fn a_client_that_leaves_frees_the_upstream_session() {
    let h = Harness::start(Default::default(), &["--linger", "0s"]).await;
    let stream = subscribed(&h, AGENT1, SessionEventsRequest::default()).await;
    assert_eq!(h.cometd_stats("agent1").await["sessions"], 1);
    drop(stream);
    tokio::time::timeout(STEP, async {
        while h.cometd_stats("agent1").await["sessions"] != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the gateway disconnected upstream once the last stream left");
}

#[tokio::test]
async fn shutdown_ends_streams_with_unavailable_and_disconnects_upstream() {
    let mut h = Harness::with_defaults().await;
    let mut stream = subscribed(&h, AGENT1, SessionEventsRequest::default()).await;
    let stopped = h.trigger_stop();
    let status = next(&mut stream).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    tokio::time::timeout(STEP, stopped)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        h.cometd_stats("agent1").await["sessions"],
        0,
        "CometD disconnect was sent"
    );
}

#[tokio::test]
async fn stream_survives_gws_forgetting_the_http_session() {
    let h = Harness::with_defaults().await;
    let mut stream = subscribed(&h, AGENT1, SessionEventsRequest::default()).await;
    // GWS forgets the HTTP session (cookie and CSRF token) and the CometD session: the
    // re-handshake is refused with 403, the gateway fetches a new token and starts afresh.
    h.control(
        reqwest::Method::POST,
        "/simulator/http-sessions/expire",
        None,
    )
    .await;
    h.drop_cometd("agent1").await;
    expect_notice(&mut stream, NoticeKind::UpstreamLost).await;
    expect_notice(&mut stream, NoticeKind::UpstreamRestored).await;
    assert!(
        h.stats().await["csrf_rejections"].as_u64().unwrap() >= 1,
        "the stale token was refused"
    );
    let reference = delete(&h, AGENT1, &["UserData1"]).await;
    assert_eq!(change(&next(&mut stream).await.unwrap()).0, reference);
}

#[tokio::test]
async fn works_with_csrf_off() {
    let sim = gws_simulator::SimulatorConfig {
        csrf: false,
        ..Default::default()
    };
    let h = Harness::start(sim, &[]).await;
    let mut stream = subscribed(&h, AGENT1, SessionEventsRequest::default()).await;
    let reference = delete(&h, AGENT1, &["UserData1"]).await;
    assert_eq!(change(&next(&mut stream).await.unwrap()).0, reference);
}
