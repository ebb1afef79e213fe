//! The whole SMS session API end to end: a real tonic client -> the gateway -> real HTTP ->
//! the GWS simulator. Every operation's upstream body is asserted as the simulator recorded
//! it; the inbound lifecycle runs through Accept, messages, the transcript and Complete;
//! user data is lossless both ways; reads and operations are isolated between agents;
//! invalid input never reaches upstream.

use crate::support::events;
use crate::support::gateway;

use events::{next, subscribed};
use gateway::{AGENT1, AGENT2, Harness, SEED_SESSION, STEP, authed};
use gws_sms_gateway::mapping::{user_data_map_to_json, user_data_value};
use gws_sms_gateway::proto::session_events_response::Event;
use gws_sms_gateway::proto::sms_session_service_client::SmsSessionServiceClient;
use gws_sms_gateway::proto::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

type Client = SmsSessionServiceClient<Channel>;

/// Calls `client.$method(request as agent)` within [`STEP`], returning the reply message.
macro_rules! call {
    ($client:expr, $method:ident, $agent:expr, $message:expr) => {
        tokio::time::timeout(STEP, $client.$method(authed($message, $agent)))
            .await
            .expect("answers in time")
            .map(|r| r.into_inner())
    };
}

fn user_data(v: Value) -> HashMap<String, UserDataValue> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), user_data_value(v)))
        .collect()
}

/// The last body `agent` POSTed, with the session it went to.
async fn last_request(h: &Harness, agent: &str) -> (String, Value) {
    let requests = h.requests(agent).await;
    let last = requests.last().expect("a request was recorded");
    (
        last["session_id"].as_str().unwrap().to_string(),
        last["body"].clone(),
    )
}

#[tokio::test]
async fn every_operation_sends_exactly_the_documented_body() {
    let h = Harness::with_defaults().await;
    let mut c = h.client().await;
    let s = SEED_SESSION.to_string();
    let ud = json!({"n": 3, "s": "3", "z": null, "big": 4_294_967_296_i64, "m": {"l": [1, "x"]}});
    let invited = h.inbound("agent1", "Hello").await;
    let rejected = h.inbound("agent1", "Hello again").await;

    // (what the gateway must have POSTed, to which session) after each call.
    let expect = |c: &mut Vec<(String, Value)>, session: &str, body: Value| {
        c.push((session.to_string(), body));
    };
    let mut want = Vec::new();

    call!(
        c,
        attach_user_data,
        AGENT1,
        AttachUserDataRequest {
            session_id: s.clone(),
            user_data: user_data(ud.clone()),
            wait_for_outcome: false
        }
    )
    .unwrap();
    expect(
        &mut want,
        &s,
        json!({"operationName": "AttachUserData", "userData": ud}),
    );
    call!(
        c,
        update_user_data,
        AGENT1,
        UpdateUserDataRequest {
            session_id: s.clone(),
            user_data: user_data(json!({"n": 4})),
            wait_for_outcome: false
        }
    )
    .unwrap();
    expect(
        &mut want,
        &s,
        json!({"operationName": "UpdateUserData", "userData": {"n": 4}}),
    );
    call!(
        c,
        delete_user_data,
        AGENT1,
        DeleteUserDataRequest {
            session_id: s.clone(),
            keys: vec!["UserData1".into(), "n".into()],
            wait_for_outcome: false
        }
    )
    .unwrap();
    expect(
        &mut want,
        &s,
        json!({"operationName": "DeleteUserData", "keys": ["UserData1", "n"]}),
    );
    call!(
        c,
        set_disposition,
        AGENT1,
        SetDispositionRequest {
            session_id: s.clone(),
            disposition: "Resolved".into(),
            disposition_key: "DISP_KEY".into(),
            wait_for_outcome: false
        }
    )
    .unwrap();
    expect(
        &mut want,
        &s,
        json!({"operationName": "SetDisposition", "disposition": "Resolved", "dispositionKey": "DISP_KEY"}),
    );
    call!(
        c,
        set_disposition,
        AGENT1,
        SetDispositionRequest {
            session_id: s.clone(),
            disposition: "Sold".into(),
            disposition_key: String::new(),
            wait_for_outcome: false
        }
    )
    .unwrap();
    expect(
        &mut want,
        &s,
        json!({"operationName": "SetDisposition", "disposition": "Sold"}),
    );
    call!(
        c,
        add_comment,
        AGENT1,
        AddCommentRequest {
            session_id: s.clone(),
            comment: "called back".into(),
            wait_for_outcome: false
        }
    )
    .unwrap();
    expect(
        &mut want,
        &s,
        json!({"operationName": "AddComment", "comment": "called back"}),
    );
    call!(
        c,
        send_message,
        AGENT1,
        SendMessageRequest {
            session_id: s.clone(),
            text: "Hi ☺".into(),
            wait_for_outcome: false
        }
    )
    .unwrap();
    expect(
        &mut want,
        &s,
        json!({"operationName": "SendMessage", "text": "Hi ☺"}),
    );
    call!(
        c,
        send_to_agents,
        AGENT1,
        SendToAgentsRequest {
            session_id: s.clone(),
            text: "internal".into(),
            wait_for_outcome: false
        }
    )
    .unwrap();
    expect(
        &mut want,
        &s,
        json!({"operationName": "SendToAgents", "text": "internal"}),
    );
    call!(
        c,
        send_url,
        AGENT1,
        SendUrlRequest {
            session_id: s.clone(),
            url: "https://example.com/help".into(),
            wait_for_outcome: false
        }
    )
    .unwrap();
    expect(
        &mut want,
        &s,
        json!({"operationName": "SendUrl", "url": "https://example.com/help"}),
    );
    call!(
        c,
        send_start_typing_notification,
        AGENT1,
        SendStartTypingNotificationRequest {
            session_id: s.clone(),
            wait_for_outcome: false
        }
    )
    .unwrap();
    expect(
        &mut want,
        &s,
        json!({"operationName": "SendStartTypingNotification"}),
    );
    call!(
        c,
        send_stop_typing_notification,
        AGENT1,
        SendStopTypingNotificationRequest {
            session_id: s.clone(),
            wait_for_outcome: false
        }
    )
    .unwrap();
    expect(
        &mut want,
        &s,
        json!({"operationName": "SendStopTypingNotification"}),
    );
    call!(
        c,
        consult,
        AGENT1,
        ConsultRequest {
            session_id: s.clone(),
            target: Some(consult_request::Target::TargetPath("/agents/expert".into())),
            wait_for_outcome: false
        }
    )
    .unwrap();
    expect(
        &mut want,
        &s,
        json!({"operationName": "Consult", "targetPath": "/agents/expert"}),
    );
    call!(
        c,
        invite,
        AGENT1,
        InviteRequest {
            session_id: s.clone(),
            target: Some(invite_request::Target::TargetUri(
                "http://gws/api/v2/users/sup".into()
            )),
            wait_for_outcome: false
        }
    )
    .unwrap();
    expect(
        &mut want,
        &s,
        json!({"operationName": "Invite", "targetUri": "http://gws/api/v2/users/sup"}),
    );
    call!(
        c,
        leave,
        AGENT1,
        LeaveRequest {
            session_id: s.clone(),
            wait_for_outcome: false
        }
    )
    .unwrap();
    expect(&mut want, &s, json!({"operationName": "Leave"}));
    call!(
        c,
        complete,
        AGENT1,
        CompleteRequest {
            session_id: s.clone(),
            queue_name: "WrapUp".into(),
            wait_for_outcome: false
        }
    )
    .unwrap();
    expect(
        &mut want,
        &s,
        json!({"operationName": "Complete", "queueName": "WrapUp"}),
    );
    call!(
        c,
        accept,
        AGENT1,
        AcceptRequest {
            session_id: invited.clone(),
            nickname: "Ann".into(),
            wait_for_outcome: false
        }
    )
    .unwrap();
    expect(
        &mut want,
        &invited,
        json!({"operationName": "Accept", "nickname": "Ann"}),
    );
    call!(
        c,
        transfer,
        AGENT1,
        TransferRequest {
            session_id: invited.clone(),
            target: Some(transfer_request::Target::QueueName("Billing".into())),
            text: "over to you".into(),
            wait_for_outcome: false
        }
    )
    .unwrap();
    expect(
        &mut want,
        &invited,
        json!({"operationName": "Transfer", "queueName": "Billing", "text": "over to you"}),
    );
    call!(
        c,
        reject,
        AGENT1,
        RejectRequest {
            session_id: rejected.clone(),
            wait_for_outcome: false
        }
    )
    .unwrap();
    expect(&mut want, &rejected, json!({"operationName": "Reject"}));

    let got: Vec<(String, Value)> = h
        .requests("agent1")
        .await
        .iter()
        .map(|r| {
            (
                r["session_id"].as_str().unwrap().to_string(),
                r["body"].clone(),
            )
        })
        .collect();
    assert_eq!(got, want);
    // Every one of them was accepted (the simulator counts only accepted operations).
    assert_eq!(h.stats().await["operations_accepted"], want.len());
}

fn state_of(item: &SessionEventsResponse) -> (String, String) {
    match &item.event {
        Some(Event::StateChange(c)) => (
            c.notification_type_name.clone(),
            c.session
                .as_ref()
                .map(|s| s.state_name.clone())
                .unwrap_or_default(),
        ),
        Some(Event::MessageLog(m)) => (
            "MessageLog".into(),
            m.messages
                .iter()
                .map(|m| m.r#type.clone())
                .collect::<Vec<_>>()
                .join(","),
        ),
        other => panic!("unexpected item {other:?}"),
    }
}

#[tokio::test]
async fn inbound_lifecycle_accept_messages_transcript_complete() {
    let h = Harness::with_defaults().await;
    let mut c = h.client().await;
    let mut stream = subscribed(&h, AGENT1, SessionEventsRequest::default()).await;
    let id = h.inbound("agent1", "Hi, my parcel is late").await;
    assert_eq!(
        state_of(&next(&mut stream).await.unwrap()),
        ("StatusChange".into(), "Invited".into())
    );

    let session = call!(
        c,
        get_session,
        AGENT1,
        GetSessionRequest {
            session_id: id.clone()
        }
    )
    .unwrap()
    .session
    .unwrap();
    assert_eq!(session.state, SessionState::Invited as i32);
    assert!(
        session.capabilities.contains(&"Accept".to_string()),
        "{session:?}"
    );

    let accepted = call!(
        c,
        accept,
        AGENT1,
        AcceptRequest {
            session_id: id.clone(),
            nickname: "Ann".into(),
            wait_for_outcome: false
        }
    )
    .unwrap();
    assert!(accepted.reference_id.is_some() && accepted.outcome.is_none());
    let status = next(&mut stream).await.unwrap();
    assert_eq!(
        state_of(&status),
        ("StatusChange".into(), "Chatting".into())
    );
    assert_eq!(
        state_of(&next(&mut stream).await.unwrap()).0,
        "ParticipantsUpdated"
    );
    assert_eq!(
        state_of(&next(&mut stream).await.unwrap()),
        ("MessageLog".into(), "ParticipantJoined".into())
    );

    call!(
        c,
        send_message,
        AGENT1,
        SendMessageRequest {
            session_id: id.clone(),
            text: "Let me check".into(),
            wait_for_outcome: false
        }
    )
    .unwrap();
    assert_eq!(
        state_of(&next(&mut stream).await.unwrap()),
        ("MessageLog".into(), "Text".into())
    );
    call!(
        c,
        send_url,
        AGENT1,
        SendUrlRequest {
            session_id: id.clone(),
            url: "https://track.example/42".into(),
            wait_for_outcome: false
        }
    )
    .unwrap();
    let pushed = next(&mut stream).await.unwrap();
    assert_eq!(state_of(&pushed), ("MessageLog".into(), "PushUrl".into()));

    let transcript = call!(
        c,
        get_transcript,
        AGENT1,
        GetTranscriptRequest {
            session_id: id.clone()
        }
    )
    .unwrap()
    .messages;
    let kinds: Vec<&str> = transcript.iter().map(|m| m.r#type.as_str()).collect();
    assert_eq!(
        kinds,
        ["Text", "ParticipantJoined", "Text", "PushUrl"],
        "{transcript:?}"
    );
    assert_eq!(transcript[0].text, "Hi, my parcel is late");
    assert_eq!(transcript[2].text, "Let me check");
    assert_eq!(transcript[3].url, "https://track.example/42");
    assert_eq!(transcript[2].sender.as_ref().unwrap().nickname, "Ann");
    assert!(
        transcript.windows(2).all(|w| w[0].index < w[1].index),
        "indexes increase"
    );
    let times: Vec<i64> = transcript
        .iter()
        .map(|m| m.time.as_ref().expect("time mapped").seconds)
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]) && times[0] > 1_600_000_000,
        "{times:?}"
    );

    call!(
        c,
        complete,
        AGENT1,
        CompleteRequest {
            session_id: id.clone(),
            queue_name: String::new(),
            wait_for_outcome: false
        }
    )
    .unwrap();
    assert_eq!(
        state_of(&next(&mut stream).await.unwrap()),
        ("StatusChange".into(), "Completed".into())
    );
    let refused = call!(
        c,
        send_message,
        AGENT1,
        SendMessageRequest {
            session_id: id.clone(),
            text: "too late".into(),
            wait_for_outcome: false
        }
    )
    .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(
        refused.get_details_error_info().unwrap().reason,
        "GWS_STATUS_2"
    );
}

#[tokio::test]
async fn user_data_is_lossless_both_ways() {
    let h = Harness::with_defaults().await;
    let mut c = h.client().await;
    let ud = json!({"int": 3, "str": "3", "null": null, "big": 9_007_199_254_740_993_i64,
        "neg": -2_147_483_649_i64, "dbl": 2.5, "t": true, "nested": {"list": [1, "1", null, {"x": []}]}});
    call!(
        c,
        attach_user_data,
        AGENT1,
        AttachUserDataRequest {
            session_id: SEED_SESSION.into(),
            user_data: user_data(ud.clone()),
            wait_for_outcome: false
        }
    )
    .unwrap();
    // Upstream holds exactly those JSON values...
    let held = h.sim_session("agent1", SEED_SESSION).await;
    for (k, v) in ud.as_object().unwrap() {
        assert_eq!(&held["userData"][k], v, "upstream {k}");
    }
    // ...and the read maps them back to the same kinds.
    let session = call!(
        c,
        get_session,
        AGENT1,
        GetSessionRequest {
            session_id: SEED_SESSION.into()
        }
    )
    .unwrap()
    .session
    .unwrap();
    let back = Value::Object(user_data_map_to_json(&session.user_data));
    for (k, v) in ud.as_object().unwrap() {
        assert_eq!(&back[k], v, "read back {k}");
    }
    assert_eq!(back["IdentifyCreateContact"], "3");
    assert_eq!(back["UserData2"], 123456789);
}

#[tokio::test]
async fn reads_and_operations_are_isolated_between_agents() {
    let h = Harness::with_defaults().await;
    let mut c = h.client().await;
    let mine = h.inbound("agent1", "for agent1 only").await;
    let listed = |r: ListSessionsResponse| r.sessions.into_iter().map(|s| s.id).collect::<Vec<_>>();
    let a1 = listed(call!(c, list_sessions, AGENT1, ListSessionsRequest {}).unwrap());
    let a2 = listed(call!(c, list_sessions, AGENT2, ListSessionsRequest {}).unwrap());
    assert!(
        a1.contains(&mine) && a1.contains(&SEED_SESSION.to_string()),
        "{a1:?}"
    );
    assert!(
        !a2.contains(&mine) && a2.contains(&SEED_SESSION.to_string()),
        "{a2:?}"
    );

    let read = call!(
        c,
        get_session,
        AGENT2,
        GetSessionRequest {
            session_id: mine.clone()
        }
    )
    .unwrap_err();
    assert_eq!(read.code(), Code::NotFound, "{read:?}");
    let read = call!(
        c,
        get_transcript,
        AGENT2,
        GetTranscriptRequest {
            session_id: mine.clone()
        }
    )
    .unwrap_err();
    assert_eq!(read.code(), Code::NotFound, "{read:?}");
    let op = call!(
        c,
        accept,
        AGENT2,
        AcceptRequest {
            session_id: mine.clone(),
            nickname: String::new(),
            wait_for_outcome: false
        }
    )
    .unwrap_err();
    assert_eq!(op.code(), Code::NotFound, "{op:?}");
    // agent2's own copy of the seeded session is untouched by agent1's change.
    call!(
        c,
        attach_user_data,
        AGENT1,
        AttachUserDataRequest {
            session_id: SEED_SESSION.into(),
            user_data: user_data(json!({"who": "agent1"})),
            wait_for_outcome: false
        }
    )
    .unwrap();
    let theirs = call!(
        c,
        get_session,
        AGENT2,
        GetSessionRequest {
            session_id: SEED_SESSION.into()
        }
    )
    .unwrap()
    .session
    .unwrap();
    assert!(!theirs.user_data.contains_key("who"));
    assert_eq!(
        call!(
            c,
            get_session,
            AGENT1,
            GetSessionRequest {
                session_id: "nope".into()
            }
        )
        .unwrap_err()
        .code(),
        Code::NotFound
    );
}

/// The violations' fields of an INVALID_ARGUMENT status.
fn violations(status: &Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad = status
        .get_details_bad_request()
        .expect("BadRequest details");
    bad.field_violations.into_iter().map(|v| v.field).collect()
}

#[tokio::test]
async fn invalid_input_is_rejected_before_upstream() {
    let h = Harness::with_defaults().await;
    let mut c: Client = h.client().await;
    let before = h.stats().await["rest_requests"].as_u64().unwrap();
    let s = || SEED_SESSION.to_string();
    let long = "x".repeat(4097);
    let cases: Vec<(Result<(), Status>, &[&str])> = vec![
        (
            call!(
                c,
                send_message,
                AGENT1,
                SendMessageRequest {
                    session_id: s(),
                    text: String::new(),
                    wait_for_outcome: false
                }
            )
            .map(drop),
            &["text"],
        ),
        (
            call!(
                c,
                send_message,
                AGENT1,
                SendMessageRequest {
                    session_id: s(),
                    text: long.clone(),
                    wait_for_outcome: false
                }
            )
            .map(drop),
            &["text"],
        ),
        (
            call!(
                c,
                send_to_agents,
                AGENT1,
                SendToAgentsRequest {
                    session_id: "a/b".into(),
                    text: "x".into(),
                    wait_for_outcome: false
                }
            )
            .map(drop),
            &["session_id"],
        ),
        (
            call!(
                c,
                send_url,
                AGENT1,
                SendUrlRequest {
                    session_id: s(),
                    url: "ftp://example.com/x".into(),
                    wait_for_outcome: false
                }
            )
            .map(drop),
            &["url"],
        ),
        (
            call!(
                c,
                send_url,
                AGENT1,
                SendUrlRequest {
                    session_id: s(),
                    url: "/relative".into(),
                    wait_for_outcome: false
                }
            )
            .map(drop),
            &["url"],
        ),
        (
            call!(
                c,
                set_disposition,
                AGENT1,
                SetDispositionRequest {
                    session_id: s(),
                    disposition: String::new(),
                    disposition_key: String::new(),
                    wait_for_outcome: false
                }
            )
            .map(drop),
            &["disposition"],
        ),
        (
            call!(
                c,
                add_comment,
                AGENT1,
                AddCommentRequest {
                    session_id: String::new(),
                    comment: String::new(),
                    wait_for_outcome: false
                }
            )
            .map(drop),
            &["session_id", "comment"],
        ),
        (
            call!(
                c,
                transfer,
                AGENT1,
                TransferRequest {
                    session_id: s(),
                    target: None,
                    text: String::new(),
                    wait_for_outcome: false
                }
            )
            .map(drop),
            &["target"],
        ),
        (
            call!(
                c,
                consult,
                AGENT1,
                ConsultRequest {
                    session_id: s(),
                    target: Some(consult_request::Target::TargetUri(String::new())),
                    wait_for_outcome: false
                }
            )
            .map(drop),
            &["target"],
        ),
        (
            call!(
                c,
                invite,
                AGENT1,
                InviteRequest {
                    session_id: s(),
                    target: None,
                    wait_for_outcome: false
                }
            )
            .map(drop),
            &["target"],
        ),
        (
            call!(
                c,
                attach_user_data,
                AGENT1,
                AttachUserDataRequest {
                    session_id: s(),
                    user_data: HashMap::new(),
                    wait_for_outcome: false
                }
            )
            .map(drop),
            &["user_data"],
        ),
        (
            call!(
                c,
                update_user_data,
                AGENT1,
                UpdateUserDataRequest {
                    session_id: s(),
                    user_data: HashMap::from([("k".to_string(), UserDataValue { kind: None })]),
                    wait_for_outcome: false
                }
            )
            .map(drop),
            &["user_data[\"k\"]"],
        ),
        (
            call!(
                c,
                update_user_data,
                AGENT1,
                UpdateUserDataRequest {
                    session_id: s(),
                    user_data: (0..1001)
                        .map(|i| (i.to_string(), user_data_value(&json!(i))))
                        .collect(),
                    wait_for_outcome: false
                }
            )
            .map(drop),
            &["user_data"],
        ),
        (
            call!(
                c,
                delete_user_data,
                AGENT1,
                DeleteUserDataRequest {
                    session_id: s(),
                    keys: vec![String::new()],
                    wait_for_outcome: false
                }
            )
            .map(drop),
            &["keys[0]"],
        ),
        (
            call!(
                c,
                accept,
                AGENT1,
                AcceptRequest {
                    session_id: "x".repeat(65),
                    nickname: long.clone(),
                    wait_for_outcome: false
                }
            )
            .map(drop),
            &["session_id", "nickname"],
        ),
        (
            call!(
                c,
                get_session,
                AGENT1,
                GetSessionRequest {
                    session_id: "../me".into()
                }
            )
            .map(drop),
            &["session_id"],
        ),
        (
            call!(
                c,
                get_transcript,
                AGENT1,
                GetTranscriptRequest {
                    session_id: String::new()
                }
            )
            .map(drop),
            &["session_id"],
        ),
    ];
    for (i, (result, fields)) in cases.into_iter().enumerate() {
        let status = result.expect_err("refused");
        assert_eq!(violations(&status), fields, "case {i}: {status:?}");
    }
    assert_eq!(
        h.stats().await["rest_requests"].as_u64().unwrap(),
        before,
        "no invalid request reached upstream"
    );
    assert!(h.requests("agent1").await.is_empty());
}

#[tokio::test]
async fn gws_refusals_become_precise_codes() {
    let h = Harness::with_defaults().await;
    let mut c = h.client().await;
    // Accept on a chatting session: not valid in the current state.
    let s = call!(
        c,
        accept,
        AGENT1,
        AcceptRequest {
            session_id: SEED_SESSION.into(),
            nickname: String::new(),
            wait_for_outcome: false
        }
    )
    .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    let (session, body) = last_request(&h, "agent1").await;
    assert_eq!(
        (session.as_str(), body),
        (SEED_SESSION, json!({"operationName": "Accept"}))
    );
    let s = call!(
        c,
        leave,
        AGENT1,
        LeaveRequest {
            session_id: "0000CompletedSess".into(),
            wait_for_outcome: false
        }
    )
    .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    let s = call!(
        c,
        leave,
        ("agent1", "wrong"),
        LeaveRequest {
            session_id: SEED_SESSION.into(),
            wait_for_outcome: false
        }
    )
    .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    let s = call!(
        c,
        list_sessions,
        ("agent1", "wrong"),
        ListSessionsRequest {}
    )
    .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
}
