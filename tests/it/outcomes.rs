//! Outcomes and snapshots end to end against the simulator: `wait_for_outcome` returns the
//! confirming notification (CONFIRMED), ABORTED on a later Error notification, UNCONFIRMED
//! before the deadline when nothing confirms; concurrent waits each get their own item;
//! `include_snapshot` starts a stream with the agent's sessions and resyncs after a restore.

use crate::support::events;
use crate::support::gateway;

use events::{expect_notice, next, open, subscribed};
use gateway::{AGENT1, AGENT2, Harness, SEED_SESSION, STEP, authed, eventually};
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
    // Once the POST reached the simulator (and was answered), GWS reports the failure,
    // naming the operation by the referenceId of its reply.
    eventually("the Invite reached upstream", || async {
        !h.requests("agent1").await.is_empty()
    })
    .await;
    let reference = h.requests("agent1").await[0]["reply"]["referenceId"].as_i64();
    assert!(reference.is_some());
    // An Error about another operation of the session is not this call's.
    h.inject_error("agent1", SEED_SESSION, "about something else", Some(1))
        .await;
    h.inject_error("agent1", SEED_SESSION, "target is busy", reference)
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

    // Without a caller deadline the wait is `--outcome-timeout`, however short the upstream
    // timeout (which bounds the POST only).
    let h = Harness::start(
        Default::default(),
        &["--outcome-timeout", "2s", "--upstream-timeout", "500ms"],
    )
    .await;
    h.faults(json!({"withhold_notifications": true})).await;
    let _warm = subscribed(&h, AGENT1, SessionEventsRequest::default()).await;
    let mut c = h.client().await;
    let started = Instant::now();
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
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited the outcome timeout, not the upstream timeout: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn unrelated_notifications_never_confirm() {
    let h = Harness::with_defaults().await;
    let id = h.inbound("agent1", "Hi").await;
    let _warm = subscribed(&h, AGENT1, SessionEventsRequest::default()).await;
    let mut c = h.client().await;
    c.accept(authed(
        AcceptRequest {
            session_id: id.clone(),
            nickname: "Ann".into(),
            wait_for_outcome: true,
        },
        AGENT1,
    ))
    .await
    .unwrap();
    h.faults(json!({"withhold_notifications": true})).await;
    let call = {
        let mut c = h.client().await;
        let id = id.clone();
        tokio::spawn(async move {
            let mut req = authed(
                SendMessageRequest {
                    session_id: id,
                    text: "Let me check".into(),
                    wait_for_outcome: true,
                },
                AGENT1,
            );
            req.set_timeout(Duration::from_millis(1500));
            c.send_message(req).await
        })
    };
    eventually("the SendMessage reached upstream", || async {
        h.requests("agent1").await.len() == 2
    })
    .await;
    // The customer writes meanwhile, and the session changes state: neither is the reply.
    h.control(
        reqwest::Method::POST,
        &format!("/simulator/agents/agent1/smssessions/{id}/customer-message"),
        Some(json!({"text": "Let me check"})),
    )
    .await;
    let mut status = json!({"messageType": "SMSsessionStateChangeMessage",
        "notificationType": "StatusChange", "smssession": {"id": id, "state": "Chatting"}});
    h.inject("agent1", status.clone()).await;
    status["notificationType"] = json!("PropertiesUpdated");
    h.inject("agent1", status).await;
    let r = tokio::time::timeout(STEP, call)
        .await
        .unwrap()
        .unwrap()
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
    eventually("the first call reached upstream", || async {
        !h.requests("agent1").await.is_empty()
    })
    .await;
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

#[tokio::test]
async fn resuming_from_a_snapshot_loses_nothing_queued_behind_it() {
    let h = Harness::with_defaults().await;
    let _warm = subscribed(&h, AGENT1, SessionEventsRequest::default()).await;
    // The snapshot read is slow; a notification arrives while it is under way.
    h.faults(json!({"delay_ms": 400})).await;
    let before = h.stats().await["rest_requests"].as_u64().unwrap();
    let opening = {
        let h_events = h.client().await;
        tokio::spawn(async move {
            let mut c = h_events;
            c.session_events(authed(
                SessionEventsRequest {
                    include_snapshot: true,
                    ..Default::default()
                },
                AGENT1,
            ))
            .await
        })
    };
    eventually("the snapshot read started", || async {
        h.stats().await["rest_requests"].as_u64().unwrap() > before
    })
    .await;
    let raced = json!({"messageType": "SMSsessionStateChangeMessage",
        "notificationType": "PropertiesUpdated", "smssession": {"id": "raced", "state": "Chatting"}});
    assert_eq!(h.inject("agent1", raced).await, 1);
    let mut stream = tokio::time::timeout(STEP, opening)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_inner();
    expect_notice(&mut stream, NoticeKind::Subscribed).await;
    let snap = next(&mut stream).await.unwrap();
    assert!(matches!(snap.event, Some(Event::Snapshot(_))), "{snap:?}");
    let raced = next(&mut stream).await.unwrap();
    assert_eq!(state_change(&raced).session.as_ref().unwrap().id, "raced");
    // A client that stopped right after the snapshot resumes from its token: the event
    // queued behind it is replayed, not lost.
    h.faults(json!({})).await;
    let mut resumed = open(
        &h,
        AGENT1,
        SessionEventsRequest {
            resume_token: snap.resume_token.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    expect_notice(&mut resumed, NoticeKind::Subscribed).await;
    let replayed = next(&mut resumed).await.unwrap();
    assert_eq!(replayed.resume_token, raced.resume_token);
}

/// The seed page's pattern: GWS replies `{"statusCode":0}` and only the notifications carry
/// the operation's referenceId. The simulator applies operations but publishes nothing, so
/// each test says which notifications come, and when.
async fn seed_pattern() -> Harness {
    let h = Harness::with_defaults().await;
    h.faults(json!({"withhold_notifications": true, "reply_without_reference_id": true}))
        .await;
    h
}

/// The `n`-th operation agent1 POSTed, once it is there: its reply must name no
/// referenceId; returns the one the simulator gave it (its notifications carry it).
async fn nth_reference(h: &Harness, n: usize) -> i64 {
    eventually("the operation reached upstream", || async {
        h.requests("agent1").await.len() > n
    })
    .await;
    let request = &h.requests("agent1").await[n];
    assert_eq!(request["reply"], json!({"statusCode": 0}), "{request}");
    request["reference_id"]
        .as_i64()
        .expect("the operation's referenceId")
}

fn assert_failed(status: &tonic::Status, message: &str) {
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains(message), "{}", status.message());
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "GWS_OPERATION_FAILED");
    assert_eq!(info.metadata["error_message"], message);
}

#[tokio::test]
async fn in_the_seed_reply_pattern_a_failure_is_aborted_within_the_wait() {
    let h = seed_pattern().await;
    let mut c = h.client().await;
    let started = Instant::now();
    let call = tokio::spawn(async move {
        c.send_message(authed(
            SendMessageRequest {
                session_id: SEED_SESSION.into(),
                text: "Your parcel is on its way".into(),
                wait_for_outcome: true,
            },
            AGENT1,
        ))
        .await
    });
    let reference = nth_reference(&h, 0).await;
    h.inject_error(
        "agent1",
        SEED_SESSION,
        "message rejected by the carrier",
        Some(reference),
    )
    .await;
    let status = tokio::time::timeout(STEP, call)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_failed(&status, "message rejected by the carrier");
    // Not the whole wait (`--outcome-timeout`, 10 s) with UNCONFIRMED at its end.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn in_the_seed_reply_pattern_two_waits_on_a_session_get_their_own_outcome() {
    let h = seed_pattern().await;
    let first = {
        let mut c = h.client().await;
        tokio::spawn(async move {
            let ud = [("Tier".to_string(), user_data_value(&json!("gold")))].into();
            c.attach_user_data(authed(
                AttachUserDataRequest {
                    session_id: SEED_SESSION.into(),
                    user_data: ud,
                    wait_for_outcome: true,
                },
                AGENT1,
            ))
            .await
        })
    };
    let first_reference = nth_reference(&h, 0).await;
    let second = {
        let mut c = h.client().await;
        tokio::spawn(async move {
            c.invite(authed(
                InviteRequest {
                    session_id: SEED_SESSION.into(),
                    target: Some(invite_request::Target::TargetPath("/agents/busy".into())),
                    wait_for_outcome: true,
                },
                AGENT1,
            ))
            .await
        })
    };
    let second_reference = nth_reference(&h, 1).await;
    // The second fails first: while the first still waits, the Error could be either's.
    h.inject_error(
        "agent1",
        SEED_SESSION,
        "target is busy",
        Some(second_reference),
    )
    .await;
    // Then the first's own notification, as GWS would have published it.
    let session = h.sim_session("agent1", SEED_SESSION).await;
    assert_eq!(session["userData"]["Tier"], "gold", "the first was applied");
    let props = json!({"messageType": "SMSsessionStateChangeMessage",
        "notificationType": "PropertiesUpdated", "referenceId": first_reference,
        "smssession": session});
    assert_eq!(h.inject("agent1", props).await, 1);

    let r = tokio::time::timeout(STEP, first)
        .await
        .unwrap()
        .unwrap()
        .expect("the first is not failed")
        .into_inner();
    let item = confirmed(r.outcome);
    assert_eq!(state_change(&item).reference_id, Some(first_reference));
    assert_eq!(r.reference_id, None, "its reply named none");
    let status = tokio::time::timeout(STEP, second)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_failed(&status, "target is busy");
}

#[tokio::test]
async fn in_the_seed_reply_pattern_an_error_of_a_call_that_did_not_wait_fails_no_waiting_call() {
    let h = seed_pattern().await;
    // A stream of the agent's: once it delivers the Error, the waiting call was offered it.
    let mut stream = subscribed(&h, AGENT1, SessionEventsRequest::default()).await;
    let waiting = {
        let mut c = h.client().await;
        tokio::spawn(async move {
            let mut req = authed(
                InviteRequest {
                    session_id: SEED_SESSION.into(),
                    target: Some(invite_request::Target::TargetPath("/agents/a2".into())),
                    wait_for_outcome: true,
                },
                AGENT1,
            );
            req.set_timeout(Duration::from_secs(4));
            c.invite(req).await
        })
    };
    nth_reference(&h, 0).await;
    let mut c = h.client().await;
    let r = c
        .add_comment(authed(
            AddCommentRequest {
                session_id: SEED_SESSION.into(),
                comment: "called back".into(),
                wait_for_outcome: false,
            },
            AGENT1,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(r.outcome.is_none() && r.reference_id.is_none());
    let unwaited = nth_reference(&h, 1).await;
    // The comment's operation fails: its Error is about the session the Invite waits on,
    // with a referenceId no reply named.
    h.inject_error("agent1", SEED_SESSION, "comment not stored", Some(unwaited))
        .await;
    let error = next(&mut stream).await.unwrap();
    assert_eq!(
        state_change(&error).notification_type(),
        NotificationType::Error
    );
    assert!(!waiting.is_finished(), "the Error failed no waiting call");
    let r = tokio::time::timeout(STEP, waiting)
        .await
        .unwrap()
        .unwrap()
        .expect("accepted, not failed")
        .into_inner();
    assert_eq!(r.outcome.unwrap().status(), OutcomeStatus::Unconfirmed);
}
