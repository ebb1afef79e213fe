//! A hostile upstream and hostile callers, end to end against the simulator: notifications
//! nested far beyond serde_json's recursion limit, numbers beyond 64 bits, a message that
//! cannot be parsed amid valid ones, a slow consumer behind a 5,000-event burst, deadlines
//! too short to make a call, deadlines that pass after an operation was sent, and requests
//! that are not protobuf. Each test fails on a gateway without the matching protection.

use crate::support::events;
use crate::support::gateway;

use events::{Stream, next, subscribed, subscribed_at};
use gateway::{AGENT1, Harness, SEED_SESSION, STEP, authed};
use gws_sms_gateway::proto::session_events_response::Event;
use gws_sms_gateway::proto::sms_session_service_client::SmsSessionServiceClient;
use gws_sms_gateway::proto::user_data_value::Kind;
use gws_sms_gateway::proto::{
    DeleteUserDataRequest, GetSessionRequest, SessionEventsRequest, SessionEventsResponse,
    UserDataValue,
};
use serde_json::json;
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// A PropertiesUpdated notification whose user data `tag` is `tag_json` (JSON text).
fn notification(session: &str, reference: &str, user_data: &str) -> String {
    format!(
        r#"{{"messageType":"SMSsessionStateChangeMessage","notificationType":"PropertiesUpdated","referenceId":{reference},"smssession":{{"id":"{session}","state":"Chatting","userData":{user_data},"capabilities":[],"uri":"","participants":[]}}}}"#
    )
}

fn nested(levels: usize) -> String {
    format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
}

fn state_change(item: &SessionEventsResponse) -> &gws_sms_gateway::proto::SessionStateChange {
    match &item.event {
        Some(Event::StateChange(c)) => c,
        other => panic!("expected a state change, got {other:?}"),
    }
}

fn user_data(item: &SessionEventsResponse) -> &std::collections::HashMap<String, UserDataValue> {
    &state_change(item).session.as_ref().unwrap().user_data
}

/// Follows list values down `levels` levels; the value found there.
fn descend(mut v: &UserDataValue, levels: usize) -> &UserDataValue {
    for level in 0..levels {
        match &v.kind {
            Some(Kind::ListValue(l)) => v = &l.values[0],
            other => panic!("level {level}: expected a list, got {other:?}"),
        }
    }
    v
}

#[tokio::test]
async fn deep_and_unparseable_notifications_never_cost_the_others() {
    let h = Harness::with_defaults().await;
    let mut stream = subscribed(&h, AGENT1, SessionEventsRequest::default()).await;
    let before = h.cometd_stats("agent1").await["handshakes"].as_u64();
    // 50 valid notifications, with hostile ones in the same window: nested 126 and 100,000
    // levels (serde_json refuses more than 128 for the whole reply), one that no JSON parser
    // accepts as a string (a lone surrogate), and one with a referenceId of 2^63.
    let mut hostile = vec![
        notification("s1", "1", &format!("{{\"deep\":{}}}", nested(126))),
        notification("s1", "2", &format!("{{\"deep\":{}}}", nested(100_000))),
        r#"{"messageType":"SMSsessionStateChangeMessage","bad":"\ud800"}"#.to_string(),
        notification(
            "s1",
            "9223372036854775808",
            r#"{"big":18446744073709551616}"#,
        ),
        // Deeper than the proto mapping's 30 levels, within the parser's: the mapper's cut.
        notification("s1", "4", &format!("{{\"deep\":{}}}", nested(50))),
    ];
    for i in 0..50 {
        if i == 25 {
            for text in hostile.drain(..) {
                assert_eq!(h.inject_raw("agent1", &text, 1).await, 1);
            }
        }
        let valid = notification("s1", "7", &format!("{{\"i\":{i}}}"));
        assert_eq!(h.inject_raw("agent1", &valid, 1).await, 1);
    }
    let mut seen = Vec::new();
    while seen.len() < 54 {
        seen.push(next(&mut stream).await.expect("no stream error"));
    }
    // Nothing but state changes: no UPSTREAM_LOST, the session never failed.
    let ints: Vec<i64> = seen
        .iter()
        .filter_map(|item| match &user_data(item).get("i")?.kind {
            Some(Kind::IntValue(i)) => Some(*i),
            _ => None,
        })
        .collect();
    assert_eq!(
        ints,
        (0..50).collect::<Vec<_>>(),
        "every valid one, in order"
    );
    // The deep ones arrive too: 30 levels as lists, the rest as its exact JSON text.
    let deep126 = &seen[25];
    let bottom = descend(&user_data(deep126)["deep"], 30);
    assert_eq!(bottom.kind, Some(Kind::RawJson(nested(96))));
    let deep100k = &seen[26];
    let bottom = descend(&user_data(deep100k)["deep"], 30);
    assert_eq!(bottom.kind, Some(Kind::RawJson(nested(100_000 - 30))));
    // The lone surrogate was skipped alone; 2^63 and 2^64 are kept as their text.
    let big = state_change(&seen[27]);
    assert_eq!(big.reference_id, None);
    assert_eq!(big.reference_id_json, "9223372036854775808");
    assert_eq!(
        user_data(&seen[27])["big"].kind,
        Some(Kind::RawJson("18446744073709551616".into()))
    );
    let bottom = descend(&user_data(&seen[28])["deep"], 30);
    assert_eq!(bottom.kind, Some(Kind::RawJson(nested(20))));
    assert_eq!(
        h.cometd_stats("agent1").await["handshakes"].as_u64(),
        before,
        "no re-handshake: the CometD session stayed up"
    );
}

#[tokio::test]
async fn replies_beyond_int64_or_deep_are_kept_not_dropped() {
    let h = Harness::with_defaults().await;
    let mut client = h.client().await;
    // An operation reply with a referenceId of 2^63.
    let delete = || DeleteUserDataRequest {
        session_id: SEED_SESSION.into(),
        keys: vec!["UserData1".into()],
        ..Default::default()
    };
    // Prime the agent (CSRF token), so the next REST reply is the POST's.
    client
        .delete_user_data(authed(delete(), AGENT1))
        .await
        .unwrap();
    h.faults(
        json!({"fail": {"http_status": 200, "content_type": "application/json",
        "body": r#"{"statusCode":0,"referenceId":9223372036854775808}"#}}),
    )
    .await;
    let reply = client
        .delete_user_data(authed(delete(), AGENT1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.reference_id, None);
    assert_eq!(reply.reference_id_json, "9223372036854775808");
    // A read whose user data nests 200 levels: mapped, not refused.
    let body = format!(
        r#"{{"statusCode":0,"smssession":{{"id":"{SEED_SESSION}","state":"Chatting","userData":{{"deep":{},"n":18446744073709551616}}}}}}"#,
        nested(200)
    );
    h.faults(
        json!({"fail": {"http_status": 200, "content_type": "application/json", "body": body}}),
    )
    .await;
    let session = client
        .get_session(authed(
            GetSessionRequest {
                session_id: SEED_SESSION.into(),
            },
            AGENT1,
        ))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let bottom = descend(&session.user_data["deep"], 30);
    assert_eq!(bottom.kind, Some(Kind::RawJson(nested(170))));
    assert_eq!(
        session.user_data["n"].kind,
        Some(Kind::RawJson("18446744073709551616".into()))
    );
}

/// A client whose HTTP/2 windows are small, so a stream it does not read stalls at once.
async fn stalling_client(h: &Harness) -> SmsSessionServiceClient<Channel> {
    let channel = Channel::from_shared(h.endpoint())
        .unwrap()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .unwrap();
    SmsSessionServiceClient::new(channel)
}

async fn tokens_of(stream: &mut Stream, n: usize) -> Vec<String> {
    let mut tokens = Vec::with_capacity(n);
    while tokens.len() < n {
        tokens.push(next(stream).await.expect("fast consumer").resume_token);
    }
    tokens
}

#[tokio::test]
async fn a_consumer_cut_after_a_5000_event_burst_resumes_without_gap_or_loss() {
    const BURST: usize = 5000;
    const STEPS: usize = 10;
    // Default buffers: 256 items per stream, 1,024 events (4 stream buffers) per agent. No
    // linger: the feed would close as soon as its last stream goes, but for the pin.
    let h = Harness::start(Default::default(), &["--linger", "0s"]).await;
    let mut slow_client = stalling_client(&h).await;
    let mut slow = slow_client
        .session_events(authed(SessionEventsRequest::default(), AGENT1))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(STEP, slow.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let slow_start = first.resume_token.clone();
    let (mut fast, _) = subscribed_at(&h, AGENT1, SessionEventsRequest::default()).await;
    let text = notification("s1", "3", &format!("{{\"pad\":\"{}\"}}", "x".repeat(1000)));
    let mut tokens = Vec::new();
    // In steps the simulator's per-session queue (1,000) takes; the fast consumer keeps up.
    for _ in 0..STEPS {
        assert_eq!(
            h.inject_raw("agent1", &text, BURST / STEPS).await,
            (BURST / STEPS) as u64
        );
        tokens.extend(tokens_of(&mut fast, BURST / STEPS).await);
    }
    // Now the stalled consumer reads: what it had, then RESOURCE_EXHAUSTED.
    let mut got = 0;
    let status = loop {
        match tokio::time::timeout(STEP, slow.message()).await.unwrap() {
            Ok(Some(item)) => {
                assert_eq!(item.resume_token, tokens[got], "in order, nothing skipped");
                got += 1;
            }
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        got + 1024 < BURST,
        "cut off with more than the replay buffer's 1,024 events still to come (got {got})"
    );
    let last = if got == 0 {
        slow_start
    } else {
        tokens[got - 1].clone()
    };
    assert!(
        status.message().contains(&format!("\"{last}\""))
            && status.message().contains("without loss"),
        "{}",
        status.message()
    );
    // Every stream gone: the pinned position keeps the feed and its upstream session, so
    // what happens meanwhile is held too.
    drop(fast);
    drop(slow);
    let meanwhile = h.inject_raw("agent1", &text, 10).await;
    assert_eq!(
        meanwhile, 10,
        "the agent's CometD session outlived its streams"
    );
    // The promise is kept: resuming replays every event after the token, no GAP.
    let resume = SessionEventsRequest {
        resume_token: last,
        ..Default::default()
    };
    let mut again = subscribed(&h, AGENT1, resume).await;
    for expected in &tokens[got..] {
        let item = next(&mut again).await.unwrap();
        assert_eq!(&item.resume_token, expected, "{item:?}");
    }
    for _ in 0..10 {
        let item = next(&mut again).await.unwrap();
        assert!(
            matches!(item.event, Some(Event::StateChange(_))),
            "{item:?}"
        );
    }
}

#[tokio::test]
async fn a_deadline_too_short_sends_nothing_and_says_so() {
    let h = Harness::with_defaults().await;
    let mut client = h.client().await;
    let mut refused = 0;
    for _ in 0..50 {
        let mut request = authed(
            DeleteUserDataRequest {
                session_id: SEED_SESSION.into(),
                keys: vec!["UserData1".into()],
                ..Default::default()
            },
            AGENT1,
        );
        // A 1 ms deadline, as the header alone (so the client does not race the server).
        request
            .metadata_mut()
            .insert("grpc-timeout", "1m".parse().unwrap());
        let status = client.delete_user_data(request).await.unwrap_err();
        // tonic's own deadline layer may answer first (CANCELLED); whenever the gateway
        // answers, it says that nothing was applied.
        match status.code() {
            Code::DeadlineExceeded => {
                let info = status.get_details_error_info().expect("ErrorInfo");
                assert_eq!(info.reason, "DEADLINE_TOO_SHORT", "{status:?}");
                assert_eq!(info.metadata["may_have_been_applied"], "false");
                refused += 1;
            }
            Code::Cancelled => {}
            other => panic!("unexpected {other:?}: {status:?}"),
        }
    }
    assert!(refused > 0, "the gateway answered at least some of them");
    assert!(
        h.requests("agent1").await.is_empty(),
        "not one operation reached upstream"
    );
    // UserData1 is still there.
    let session = h.sim_session("agent1", SEED_SESSION).await;
    assert!(session["userData"].get("UserData1").is_some(), "{session}");
}

#[tokio::test]
async fn a_deadline_that_passes_after_the_post_says_it_may_have_been_applied() {
    let h = Harness::with_defaults().await;
    let mut client = h.client().await;
    let delete = |keys: &[&str]| DeleteUserDataRequest {
        session_id: SEED_SESSION.into(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        ..Default::default()
    };
    // Prime the agent: the CSRF token is known, so the next call goes straight to the POST.
    client
        .delete_user_data(authed(delete(&["UserData1"]), AGENT1))
        .await
        .unwrap();
    h.faults(json!({"delay_ms": 3000})).await;
    let mut request = authed(delete(&["Subject"]), AGENT1);
    request.set_timeout(Duration::from_millis(1500));
    let status = client.delete_user_data(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "UPSTREAM_TIMEOUT");
    assert_eq!(info.metadata["may_have_been_applied"], "true");
    assert!(
        status.message().contains("may have been applied"),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_request_that_is_not_protobuf_is_invalid_argument() {
    let h = Harness::with_defaults().await;
    // A raw gRPC call: HTTP/2, a length-prefixed message that no protobuf parser accepts
    // (field 1 declared as a 2 GiB string in 3 bytes).
    let http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let garbage = [0x0a, 0xff, 0xff, 0xff, 0xff, 0x07, 0x01];
    let mut body = vec![0u8];
    body.extend((garbage.len() as u32).to_be_bytes());
    body.extend(garbage);
    for method in ["DeleteUserData", "SessionEvents", "GetSession"] {
        let resp = http
            .post(format!(
                "{}/gws.sms.v1.SmsSessionService/{method}",
                h.endpoint()
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", "Basic YWdlbnQxOnBhc3N3b3JkMQ==")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        // The status comes trailers-only: in the headers.
        let code = resp
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(code.as_deref(), Some("3"), "{method}: {:?}", resp.headers());
    }
    assert!(h.requests("agent1").await.is_empty());
}
