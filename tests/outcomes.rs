//! Outcomes and snapshots end to end against the simulator: `wait_for_outcome` returns the
//! confirming notification (CONFIRMED), ABORTED on a later Error notification, UNCONFIRMED
//! before the deadline when nothing confirms; concurrent waits each get their own item;
//! `include_snapshot` starts a stream with the agent's sessions and resyncs after a restore.

#[path = "support/events.rs"]
mod events;
#[path = "support/gateway.rs"]
mod gateway;

use events::{expect_notice, next, open, subscribed};
use gateway::{AGENT1, AGENT2, Harness, SEED_SESSION, STEP, authed};
use gws_sms_gateway::mapping::{user_data_map_to_json, user_data_value};
use gws_sms_gateway::proto::session_events_response::Event;
use gws_sms_gateway::proto::*;
use serde_json::json;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic_types::StatusExt;

fn confirmed(outcome: Option<OperationOutcome>) -> SessionEventsResponse {
    let outcome = outcome.expect("outcome set");
    assert_eq!(outcome.status(), OutcomeStatus::Confirmed, "{outcome:?}");
    let event = outcome.event.expect("confirming event");
    assert!(!event.resume_token.is_empty());
    event
}

fn state_change(item: &SessionEventsResponse) -> &SessionStateChange {
    match &item.event {
        Some(Event::StateChange(c)) => c,
        other => panic!("expected a state change, got {other:?}"),
    }
}

#[tokio::test]
async fn accept_send_message_and_delete_user_data_are_confirmed() {
    let h = Harness::with_defaults().await;
    let mut c = h.client().await;
    let id = h.inbound("agent1", "Hi").await;

    let r = c
        .accept(authed(
            AcceptRequest {
                session_id: id.clone(),
                nickname: "Ann".into(),
                wait_for_outcome: true,
            },
            AGENT1,
        ))
        .await
        .unwrap()
        .into_inner();
    let item = confirmed(r.outcome);
    let change = state_change(&item);
    assert_eq!(change.notification_type(), NotificationType::StatusChange);
    assert_eq!(change.reference_id, r.reference_id);
    let session = change.session.as_ref().unwrap();
    assert_eq!(
        (session.id.as_str(), session.state()),
        (id.as_str(), SessionState::Chatting)
    );

    let r = c
        .send_message(authed(
            SendMessageRequest {
                session_id: id.clone(),
                text: "How can I help?".into(),
                wait_for_outcome: true,
            },
            AGENT1,
        ))
        .await
        .unwrap()
        .into_inner();
    match confirmed(r.outcome).event {
        Some(Event::MessageLog(log)) => {
            assert_eq!(log.session_id, id);
            assert_eq!(log.messages.last().unwrap().text, "How can I help?");
            assert_eq!(log.messages.last().unwrap().r#type, "Text");
        }
        other => panic!("expected a transcript update, got {other:?}"),
    }

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
    let item = confirmed(r.outcome);
    let change = state_change(&item);
    assert_eq!(
        change.notification_type(),
        NotificationType::PropertiesUpdated
    );
    assert_eq!(change.reference_id, r.reference_id);
    let ud = user_data_map_to_json(&change.session.as_ref().unwrap().user_data);
    assert!(!ud.contains_key("UserData1") && ud["UserData2"] == 123456789);

    // The confirming item is the one a stream delivers: resuming from its token loses nothing.
    let mut stream = open(
        &h,
        AGENT1,
        SessionEventsRequest {
            resume_token: item.resume_token.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let first = expect_notice(&mut stream, NoticeKind::Subscribed).await;
    assert_eq!(first.resume_token, item.resume_token);
}

#[tokio::test]
async fn without_the_flag_there_is_no_outcome() {
    let h = Harness::with_defaults().await;
    let mut c = h.client().await;
    let r = c
        .add_comment(authed(
            AddCommentRequest {
                session_id: SEED_SESSION.into(),
                comment: "c".into(),
                wait_for_outcome: false,
            },
            AGENT1,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(r.outcome.is_none() && r.reference_id.is_some());
    // No upstream notification session was opened for it.
    assert_eq!(h.cometd_stats("agent1").await["handshakes"], 0);
}

#[tokio::test]
async fn a_failure_after_acceptance_is_aborted() {
    let h = Harness::with_defaults().await;
    h.faults(json!({"withhold_notifications": true})).await;
    let mut c = h.client().await;
    let call = tokio::spawn(async move {
        c.invite(authed(
            InviteRequest {
                session_id: SEED_SESSION.into(),
                target: Some(invite_request::Target::TargetPath("/agents/busy".into())),
                wait_for_outcome: true,
            },
            AGENT1,
        ))
        .await
    });
    // Once the POST reached the simulator (and was answered), GWS reports the failure.
    let deadline = Instant::now() + STEP;
    while h.requests("agent1").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the Invite never reached upstream"
        );
        tokio::task::yield_now().await;
    }
    // No referenceId on the Error: it is matched to the oldest call waiting on the session.
    h.inject_error("agent1", SEED_SESSION, "target is busy", None)
        .await;
    let status = tokio::time::timeout(STEP, call)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(
        status.message().contains("target is busy"),
        "{}",
        status.message()
    );
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "GWS_OPERATION_FAILED");
    assert_eq!(info.metadata["error_message"], "target is busy");
}

#[tokio::test]
async fn never_confirmed_is_unconfirmed_before_the_deadline() {
    let h = Harness::with_defaults().await;
    h.faults(json!({"withhold_notifications": true})).await;
    let mut c = h.client().await;
    // Subscribe first, so the deadline below is spent waiting for the outcome.
    let _warm = subscribed(&h, AGENT1, SessionEventsRequest::default()).await;
    let mut req = authed(
        LeaveRequest {
            session_id: SEED_SESSION.into(),
            wait_for_outcome: true,
        },
        AGENT1,
    );
    req.set_timeout(Duration::from_millis(1500));
    let started = Instant::now();
    let r = c
        .leave(req)
        .await
        .expect("accepted, so not an error")
        .into_inner();
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "answered before the deadline"
    );
    let outcome = r.outcome.expect("outcome set");
    assert_eq!(outcome.status(), OutcomeStatus::Unconfirmed);
    assert!(outcome.event.is_none() && r.reference_id.is_some());
    // It was applied: the simulator holds the new state.
    assert_eq!(
        h.sim_session("agent1", SEED_SESSION).await["state"],
        "LeftChat"
    );

    // The configured outcome timeout bounds the wait too, whatever the deadline.
    let h = Harness::start(Default::default(), &["--outcome-timeout", "300ms"]).await;
    h.faults(json!({"withhold_notifications": true})).await;
    let mut c = h.client().await;
    let r = c
        .leave(authed(
            LeaveRequest {
                session_id: SEED_SESSION.into(),
                wait_for_outcome: true,
            },
            AGENT1,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome.unwrap().status(), OutcomeStatus::Unconfirmed);
}

#[tokio::test]
async fn concurrent_waits_on_one_session_each_get_their_own_notification() {
    let h = Harness::with_defaults().await;
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let client = h.client();
            async move {
                let mut c = client.await;
                let ud = [(format!("k{i}"), user_data_value(&json!(i)))].into();
                let r = c
                    .attach_user_data(authed(
                        AttachUserDataRequest {
                            session_id: SEED_SESSION.into(),
                            user_data: ud,
                            wait_for_outcome: true,
                        },
                        AGENT1,
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                (i, r)
            }
        })
        .collect();
    let results = futures::future::join_all(calls).await;
    let mut tokens = std::collections::HashSet::new();
    for (i, r) in results {
        let item = confirmed(r.outcome);
        let change = state_change(&item);
        assert_eq!(
            change.reference_id, r.reference_id,
            "call {i} got its own notification"
        );
        let ud = user_data_map_to_json(&change.session.as_ref().unwrap().user_data);
        assert_eq!(ud[&format!("k{i}")], i, "call {i}: its own change is in it");
        assert!(tokens.insert(item.resume_token.clone()), "distinct items");
    }
}

#[tokio::test]
async fn waits_are_bounded_per_agent() {
    let h = Harness::start(Default::default(), &["--max-outcome-waits", "1"]).await;
    h.faults(json!({"withhold_notifications": true})).await;
    let mut c1 = h.client().await;
    let first = tokio::spawn(async move {
        let mut req = authed(
            LeaveRequest {
                session_id: SEED_SESSION.into(),
                wait_for_outcome: true,
            },
            AGENT1,
        );
        req.set_timeout(Duration::from_secs(5));
        c1.leave(req).await
    });
    let deadline = Instant::now() + STEP;
    while h.requests("agent1").await.is_empty() {
        assert!(Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
    let mut c2 = h.client().await;
    let status = c2
        .add_comment(authed(
            AddCommentRequest {
                session_id: SEED_SESSION.into(),
                comment: "x".into(),
                wait_for_outcome: true,
            },
            AGENT1,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // Another agent is not affected, and without the flag nothing is limited.
    let mut c3 = h.client().await;
    c3.add_comment(authed(
        AddCommentRequest {
            session_id: SEED_SESSION.into(),
            comment: "x".into(),
            wait_for_outcome: false,
        },
        AGENT1,
    ))
    .await
    .unwrap();
    c3.add_comment(authed(
        AddCommentRequest {
            session_id: SEED_SESSION.into(),
            comment: "x".into(),
            wait_for_outcome: true,
        },
        AGENT2,
    ))
    .await
    .unwrap();
    first.abort();
}

fn snapshot_ids(item: &SessionEventsResponse) -> Vec<String> {
    match &item.event {
        Some(Event::Snapshot(s)) => {
            let mut ids: Vec<String> = s.sessions.iter().map(|s| s.id.clone()).collect();
            ids.sort();
            ids
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

#[tokio::test]
async fn snapshot_on_subscribe_with_filters_and_after_a_restore() {
    let h = Harness::with_defaults().await;
    let inbound = h.inbound("agent1", "Hi").await;
    let mut all = subscribed(
        &h,
        AGENT1,
        SessionEventsRequest {
            include_snapshot: true,
            ..Default::default()
        },
    )
    .await;
    let first = next(&mut all).await.unwrap();
    let mut want = vec![
        SEED_SESSION.to_string(),
        "0000Wa9CAM6W00K5".into(),
        "0000CompletedSess".into(),
        inbound.clone(),
    ];
    want.sort();
    assert_eq!(snapshot_ids(&first), want);
    assert!(!first.resume_token.is_empty());

    let mut one = subscribed(
        &h,
        AGENT1,
        SessionEventsRequest {
            include_snapshot: true,
            session_ids: vec![inbound.clone()],
            ..Default::default()
        },
    )
    .await;
    let snap = next(&mut one).await.unwrap();
    assert_eq!(snapshot_ids(&snap), [inbound.as_str()]);
    if let Some(Event::Snapshot(s)) = &snap.event {
        assert_eq!(s.sessions[0].state(), SessionState::Invited);
    }
    // A stream without the flag gets no snapshot: its next item is a live notification.
    let mut plain = subscribed(&h, AGENT1, SessionEventsRequest::default()).await;

    assert!(h.drop_cometd("agent1").await >= 1);
    for stream in [&mut all, &mut one] {
        expect_notice(stream, NoticeKind::UpstreamLost).await;
        expect_notice(stream, NoticeKind::UpstreamRestored).await;
    }
    assert_eq!(snapshot_ids(&next(&mut all).await.unwrap()), want);
    assert_eq!(
        snapshot_ids(&next(&mut one).await.unwrap()),
        [inbound.as_str()]
    );
    expect_notice(&mut plain, NoticeKind::UpstreamLost).await;
    expect_notice(&mut plain, NoticeKind::UpstreamRestored).await;
    h.inbound("agent1", "another").await;
    assert!(matches!(
        next(&mut plain).await.unwrap().event,
        Some(Event::StateChange(_))
    ));
}
