//! Tests of the notification mapping: the seed page's sample field by field, one test per
//! notification kind and edge case, and property tests that mapping never panics and that
//! user data round-trips.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::proto::{
    MessageLogUpdate, NotificationType, Participant, ParticipantType, SessionState,
    SessionStateChange, UserDataValue, user_data_value::Kind,
};

/// The sample notification of the seed page (`seeds/000_*.txt`, SMS DeleteUserData), with
/// the Python dump's `None` written as JSON `null`.
const SEED_SAMPLE: &str = r#"{ "referenceId": 15, "smssession": { "userData": { "IdentifyCreateContact": "3", "RTargetTypeSelected": "2", "RTargetObjectSelected": "Chat distribution for processing", "RVQID": "", "ChatServerAppName": "es_chat", "PegAGChat distribution for processing": 1, "ChatServerHost": "GWS-ubuntu.emea.int.genesyslab.com", "RTargetObjSelDBID": "115", "ChatServerPort": "7160", "CBR-Interaction_cost": "", "CBR-contract_DBIDs": "", "RTargetAgentSelected": "12345", "CBR-IT-path_DBIDs": "", "RTargetRuleSelected": "", "UserData2": 123456789, "RTargetPlaceSelected": "a1", "CBR-actual_volume": "", "RTenant": "Environment", "ChatServerDBID": "115", "RRequestedSkills": null, "RRequestedSkillCombination": "", "RVQDBID": "", "RStrategyDBID": "776", "CustomerSegment": "default", "ServiceType": "default", "ServiceObjective": 0, "DISP_KEY": "resolved", "RTargetRequested": "Chat distribution for processing", "RTargetAgentGroup": "Chat distribution for processing", "RStrategyName": "SimpleChatInStrategy", "Subject": "Customer support" }, "state": "Chatting", "capabilities": [ "Transfer", "Leave", "Invite", "Consult", "SetInFocus", "SetDisposition", "AttachUserData", "DeleteUserData", "UpdateUserData", "Complete", "SendMessage", "SendStartTypingNotification", "SendStopTypingNotification" ], "uri": "http://localhost:8080/api/v2/smssessions/0000Wa9CAM6W00K5", "participants": [ { "nickname": "FirstL", "type": "Customer", "participantId": "007352CE9A92032E" }, { "nickname": "TestName", "type": "Agent", "participantId": "007352CE9AB40330" } ], "id": "0000Wa9CAM6W00K5" }, "notificationType": "PropertiesUpdated", "messageType": "SMSsessionStateChangeMessage" }"#;

fn state_change(v: &Value) -> SessionStateChange {
    match map_notification(v) {
        Ok(Notification::StateChange(sc)) => sc,
        other => panic!("expected a state change, got {other:?}"),
    }
}

fn message_log(v: &Value) -> MessageLogUpdate {
    match map_notification(v) {
        Ok(Notification::MessageLog(ml)) => ml,
        other => panic!("expected a message log update, got {other:?}"),
    }
}

fn kind_of(v: &UserDataValue) -> &Kind {
    v.kind.as_ref().expect("kind set")
}

fn minimal(notification_type: &str) -> Value {
    json!({
        "messageType": "SMSsessionStateChangeMessage",
        "notificationType": notification_type,
        "smssession": {"id": "S1", "state": "Chatting"}
    })
}

#[test]
fn seed_page_sample_maps_field_by_field() {
    let data: Value = serde_json::from_str(SEED_SAMPLE).expect("seed sample is JSON");
    let n = map_notification(&data).expect("seed sample maps");
    assert_eq!(n.session_id(), "0000Wa9CAM6W00K5");
    assert_eq!(
        n.notification_type(),
        Some(NotificationType::PropertiesUpdated)
    );
    let sc = state_change(&data);
    assert_eq!(
        sc.notification_type,
        NotificationType::PropertiesUpdated as i32
    );
    assert_eq!(sc.notification_type_name, "PropertiesUpdated");
    assert_eq!(sc.reference_id, Some(15));
    assert_eq!(sc.error_message, "");
    let s = sc.session.expect("session");
    assert_eq!(s.id, "0000Wa9CAM6W00K5");
    assert_eq!(
        s.uri,
        "http://localhost:8080/api/v2/smssessions/0000Wa9CAM6W00K5"
    );
    assert_eq!(s.state, SessionState::Chatting as i32);
    assert_eq!(s.state_name, "Chatting");
    assert_eq!(
        s.capabilities,
        [
            "Transfer",
            "Leave",
            "Invite",
            "Consult",
            "SetInFocus",
            "SetDisposition",
            "AttachUserData",
            "DeleteUserData",
            "UpdateUserData",
            "Complete",
            "SendMessage",
            "SendStartTypingNotification",
            "SendStopTypingNotification"
        ]
    );
    assert_eq!(
        s.participants,
        vec![
            Participant {
                participant_id: "007352CE9A92032E".into(),
                nickname: "FirstL".into(),
                r#type: ParticipantType::Customer as i32,
                type_name: "Customer".into(),
            },
            Participant {
                participant_id: "007352CE9AB40330".into(),
                nickname: "TestName".into(),
                r#type: ParticipantType::Agent as i32,
                type_name: "Agent".into(),
            },
        ]
    );
    let ud = &s.user_data;
    assert_eq!(ud.len(), 31);
    assert_eq!(kind_of(&ud["UserData2"]), &Kind::IntValue(123_456_789));
    assert_eq!(
        kind_of(&ud["IdentifyCreateContact"]),
        &Kind::StringValue("3".into())
    );
    assert_eq!(kind_of(&ud["RRequestedSkills"]), &Kind::NullValue(0));
    assert_eq!(kind_of(&ud["ServiceObjective"]), &Kind::IntValue(0));
    assert_eq!(
        kind_of(&ud["PegAGChat distribution for processing"]),
        &Kind::IntValue(1)
    );
    assert_eq!(kind_of(&ud["RVQID"]), &Kind::StringValue(String::new()));
    assert_eq!(
        kind_of(&ud["Subject"]),
        &Kind::StringValue("Customer support".into())
    );
    // And every value comes back as it went in.
    let original = data["smssession"]["userData"].as_object().expect("object");
    for (k, v) in original {
        assert_eq!(&user_data_to_json(&ud[k]), v, "userData key {k}");
    }
}

#[test]
fn each_notification_type_maps_to_its_enum() {
    for (name, expected) in [
        ("StatusChange", NotificationType::StatusChange),
        ("ParticipantsUpdated", NotificationType::ParticipantsUpdated),
        ("PropertiesUpdated", NotificationType::PropertiesUpdated),
        ("Error", NotificationType::Error),
    ] {
        let n = map_notification(&minimal(name)).expect(name);
        assert_eq!(n.notification_type(), Some(expected), "{name}");
        assert_eq!(n.session_id(), "S1");
        assert_eq!(
            n.label(),
            name,
            "the metrics label is GWS's notificationType"
        );
        let sc = state_change(&minimal(name));
        assert_eq!(sc.notification_type_name, name);
        assert_eq!(sc.reference_id, None);
    }
}

#[test]
fn unknown_notification_type_keeps_its_name() {
    let sc = state_change(&minimal("SomethingNew"));
    assert_eq!(sc.notification_type, NotificationType::Unspecified as i32);
    assert_eq!(sc.notification_type_name, "SomethingNew");
    let n = map_notification(&minimal("SomethingNew")).expect("maps");
    assert_eq!(n.notification_type(), Some(NotificationType::Unspecified));
    assert_eq!(n.label(), Notification::OTHER);
}

#[test]
fn status_change_states_known_and_unknown() {
    for (name, expected) in [
        ("Invited", SessionState::Invited),
        ("Chatting", SessionState::Chatting),
        ("LeftChat", SessionState::LeftChat),
        ("Completed", SessionState::Completed),
        ("Revoked", SessionState::Revoked),
        ("completed", SessionState::Completed),
        ("Parked", SessionState::Unspecified),
        ("", SessionState::Unspecified),
    ] {
        let mut v = minimal("StatusChange");
        v["smssession"]["state"] = json!(name);
        let s = state_change(&v).session.expect("session");
        assert_eq!(s.state, expected as i32, "{name}");
        assert_eq!(s.state_name, name);
    }
    // No state at all: unspecified, empty name.
    let v = json!({"messageType": "SMSsessionStateChangeMessage", "notificationType": "StatusChange",
        "smssession": {"id": "S1"}});
    let s = state_change(&v).session.expect("session");
    assert_eq!((s.state, s.state_name.as_str()), (0, ""));
}

#[test]
fn participants_updated_keeps_unknown_types_by_name() {
    let v = json!({
        "messageType": "SMSsessionStateChangeMessage",
        "notificationType": "ParticipantsUpdated",
        "referenceId": 7,
        "smssession": {"id": "S1", "state": "Chatting", "participants": [
            {"nickname": "Sup", "type": "Supervisor", "participantId": "P1"},
            {"nickname": "Bot", "type": "Bot", "participantId": "P2"},
            {"participantId": "P3"}
        ]}
    });
    let sc = state_change(&v);
    assert_eq!(sc.reference_id, Some(7));
    let p = sc.session.expect("session").participants;
    assert_eq!(p.len(), 3);
    assert_eq!(
        (p[0].r#type, p[0].type_name.as_str()),
        (ParticipantType::Supervisor as i32, "Supervisor")
    );
    assert_eq!(
        (p[1].r#type, p[1].type_name.as_str()),
        (ParticipantType::Unspecified as i32, "Bot")
    );
    assert_eq!(p[2].participant_id, "P3");
    assert_eq!((p[2].nickname.as_str(), p[2].type_name.as_str()), ("", ""));
}

#[test]
fn smsession_spelling_is_accepted() {
    let v = json!({"messageType": "SMSsessionStateChangeMessage", "notificationType": "StatusChange",
        "smsession": {"id": "S9", "state": "Completed"}});
    assert_eq!(map_notification(&v).expect("maps").session_id(), "S9");
}

#[test]
fn error_notification_text_from_any_field() {
    for (field, value, expected) in [
        ("errorMessage", json!("boom"), "boom"),
        ("message", json!("bad key"), "bad key"),
        ("statusMessage", json!("Not found"), "Not found"),
        ("error", json!({"message": "nested"}), "nested"),
        ("error", json!({"code": 6}), r#"{"code":6}"#),
        ("statusCode", json!(6), "statusCode 6"),
    ] {
        let mut v = minimal("Error");
        v[field] = value;
        let sc = state_change(&v);
        assert_eq!(sc.notification_type, NotificationType::Error as i32);
        assert_eq!(sc.error_message, expected, "{field}");
    }
    // errorMessage wins over the less specific fields.
    let mut v = minimal("Error");
    v["message"] = json!("generic");
    v["errorMessage"] = json!("specific");
    assert_eq!(state_change(&v).error_message, "specific");
    // Non-Error notifications never fill error_message.
    let mut v = minimal("StatusChange");
    v["message"] = json!("ignored");
    assert_eq!(state_change(&v).error_message, "");
}

#[test]
fn error_notification_without_session_is_delivered() {
    let v = json!({"messageType": "SMSsessionStateChangeMessage", "notificationType": "Error",
        "referenceId": 3, "errorMessage": "operation failed"});
    let n = map_notification(&v).expect("maps");
    assert_eq!(n.session_id(), "");
    let sc = state_change(&v);
    assert_eq!(sc.session, None);
    assert_eq!(sc.error_message, "operation failed");
    assert_eq!(sc.reference_id, Some(3));
    // A session named by URI is kept.
    let v = json!({"messageType": "SMSsessionStateChangeMessage", "notificationType": "Error",
        "smssessionUri": "http://h/api/v2/smssessions/S5", "message": "x"});
    assert_eq!(map_notification(&v).expect("maps").session_id(), "S5");
}

#[test]
fn reference_id_forms() {
    let mut v = minimal("PropertiesUpdated");
    v["referenceId"] = json!("42");
    assert_eq!(state_change(&v).reference_id, Some(42));
    v["referenceId"] = json!(null);
    assert_eq!(state_change(&v).reference_id, None);
    v["referenceId"] = json!(9_000_000_000_i64);
    assert_eq!(state_change(&v).reference_id, Some(9_000_000_000));
    // What int64 cannot hold is never silently absent, nor a reason to drop the
    // notification: it is kept as its JSON text.
    for (odd, text) in [
        (json!(1.5), "1.5"),
        (json!("x"), "\"x\""),
        (json!(true), "true"),
        (json!([1]), "[1]"),
        (json!(u64::MAX), "18446744073709551615"),
    ] {
        v["referenceId"] = odd.clone();
        let sc = state_change(&v);
        assert_eq!(sc.reference_id, None, "{odd}");
        assert_eq!(sc.reference_id_json, text);
    }
    // 2^63 as upstream sends it, through the body parser.
    let text = r#"{"messageType":"SMSsessionStateChangeMessage","notificationType":"PropertiesUpdated","referenceId":9223372036854775808,"smssession":{"id":"S1","state":"Chatting"}}"#;
    let sc = state_change(&crate::json::parse(text.as_bytes()).unwrap());
    assert_eq!(sc.reference_id, None);
    assert_eq!(sc.reference_id_json, "9223372036854775808");
}

#[test]
fn unmappable_notifications_are_errors_naming_the_field() {
    let cases = [
        (json!([]), "must be a JSON object"),
        (json!(null), "must be a JSON object"),
        (json!({}), "`messageType` is missing"),
        (
            json!({"messageType": 5}),
            "`messageType` must be a string, got a number",
        ),
        (
            json!({"messageType": "CallStateChangeMessage"}),
            "unsupported notification messageType `CallStateChangeMessage`",
        ),
        (
            json!({"messageType": "SMSsessionStateChangeMessage", "notificationType": "StatusChange"}),
            "`smssession` is missing",
        ),
        (
            json!({"messageType": "SMSsessionStateChangeMessage", "smssession": "S1"}),
            "`smssession` must be an object, got a string",
        ),
        (
            json!({"messageType": "SMSsessionStateChangeMessage", "smssession": {"state": "Chatting"}}),
            "`smssession.id` is missing",
        ),
        (
            json!({"messageType": "SMSsessionStateChangeMessage", "smssession": {"id": ""}}),
            "`smssession.id` is invalid",
        ),
        (
            json!({"messageType": "SMSsessionStateChangeMessage", "notificationType": 3, "smssession": {"id": "S"}}),
            "`notificationType` must be a string",
        ),
        (
            json!({"messageType": "SMSsessionStateChangeMessage", "smssession": {"id": "S", "userData": []}}),
            "`smssession.userData` must be an object, got an array",
        ),
        (
            json!({"messageType": "SMSsessionStateChangeMessage", "smssession": {"id": "S", "capabilities": ["a", 1]}}),
            "`smssession.capabilities[1]` must be a string, got a number",
        ),
        (
            json!({"messageType": "SMSsessionStateChangeMessage", "smssession": {"id": "S", "participants": [{}, {"type": 2}]}}),
            "`smssession.participants[1].type` must be a string",
        ),
        (
            json!({"messageType": "SMSsessionStateChangeMessage", "smsession": {"id": "S", "participants": {}}}),
            "`smsession.participants` must be an array",
        ),
        (
            json!({"messageType": "MessageLogUpdated", "messages": []}),
            "`smssessionUri` is missing",
        ),
        (
            json!({"messageType": "MessageLogUpdated", "smssessionUri": "http://h/api/v2/smssessions/", "messages": []}),
            "`smssessionUri` is invalid",
        ),
        (
            json!({"messageType": "MessageLogUpdated", "smssessionPath": "/smssessions/S", "messages": [1]}),
            "`messages[0]` must be an object, got a number",
        ),
        (
            json!({"messageType": "MessageLogUpdated", "smssessionPath": "/smssessions/S", "messages": [{"from": "x"}]}),
            "`messages[0].from` must be an object",
        ),
        (
            json!({"messageType": "MessageLogUpdated", "smssessionPath": "/smssessions/S", "messages": [{"index": "one"}]}),
            "`messages[0].index` is invalid",
        ),
    ];
    for (input, expected) in cases {
        let err = map_notification(&input).expect_err(&input.to_string());
        assert!(
            err.to_string().contains(expected),
            "{input}: got `{err}`, want `{expected}`"
        );
    }
}

#[test]
fn unknown_message_type_is_quoted_briefly() {
    let long = "X".repeat(10_000);
    let err = map_notification(&json!({"messageType": long})).expect_err("unknown");
    assert!(err.to_string().len() < 200, "{err}");
}

#[test]
fn message_log_maps_messages() {
    let v = json!({
        "messageType": "MessageLogUpdated",
        "notificationType": "NewMessages",
        "smssessionUri": "http://localhost:8080/api/v2/smssessions/0000Wa9CAM6W00K5",
        "messages": [
            {"index": 1, "text": "hello", "type": "Text", "visibility": "All",
             "from": {"nickname": "FirstL", "type": "Customer", "participantId": "007352CE9A92032E"},
             "timestamp": 1_700_000_000, "timestampSeconds": 1_700_000_000_250_i64},
            {"index": 2, "type": "ParticipantJoined", "visibility": "All",
             "from": {"nickname": "TestName", "type": "Agent", "participantId": "P2"},
             "timestamp": "2023-11-14T22:13:21Z"},
            {"index": 3, "type": "TypingStarted", "visibility": "Agents"}
        ]
    });
    let ml = message_log(&v);
    assert_eq!(ml.session_id, "0000Wa9CAM6W00K5");
    assert_eq!(ml.messages.len(), 3);
    assert_eq!(map_notification(&v).unwrap().label(), "MessageLogUpdated");
    let m = &ml.messages[0];
    assert_eq!(
        (
            m.index,
            m.text.as_str(),
            m.r#type.as_str(),
            m.visibility.as_str()
        ),
        (1, "hello", "Text", "All")
    );
    let sender = m.sender.as_ref().expect("sender");
    assert_eq!(
        (sender.nickname.as_str(), sender.r#type),
        ("FirstL", ParticipantType::Customer as i32)
    );
    // timestampSeconds (milliseconds) wins over timestamp.
    let t = m.time.expect("time");
    assert_eq!((t.seconds, t.nanos), (1_700_000_000, 250_000_000));
    let t = ml.messages[1].time.expect("time from the ISO timestamp");
    assert_eq!((t.seconds, t.nanos), (1_700_000_001, 0));
    assert_eq!(ml.messages[1].text, "");
    assert_eq!(ml.messages[2].sender, None);
    assert_eq!(ml.messages[2].time, None);
    let n = map_notification(&v).expect("maps");
    assert_eq!(n.session_id(), "0000Wa9CAM6W00K5");
    assert_eq!(n.notification_type(), None);
}

#[test]
fn message_log_session_id_sources() {
    for (field, value) in [
        ("smssessionUri", "http://h:8080/api/v2/smssessions/ABC"),
        (
            "smssessionUri",
            "http://h:8080/api/v2/smssessions/ABC?fields=*#top",
        ),
        ("smssessionPath", "/smssessions/ABC"),
        ("smsessionPath", "/api/v2/smsessions/ABC"),
        ("smssessionId", "ABC"),
        ("sessionId", "ABC"),
    ] {
        let v = json!({"messageType": "MessageLogUpdated", field: value});
        assert_eq!(message_log(&v).session_id, "ABC", "{field}: {value}");
    }
    // The explicit id wins over the URI.
    let v = json!({"messageType": "MessageLogUpdated", "smssessionUri": "/x/URI", "smssessionId": "ID"});
    assert_eq!(message_log(&v).session_id, "ID");
    // No messages at all is an empty update, not an error.
    let v = json!({"messageType": "MessageLogUpdated", "smssessionPath": "/smssessions/S"});
    assert!(message_log(&v).messages.is_empty());
}

#[test]
fn user_data_keeps_every_json_kind() {
    let cases = [
        (json!("3"), Kind::StringValue("3".into())),
        (json!(3), Kind::IntValue(3)),
        (json!(3.0), Kind::DoubleValue(3.0)),
        (json!(-2.5), Kind::DoubleValue(-2.5)),
        (json!(4_294_967_296_i64), Kind::IntValue(4_294_967_296)),
        (json!(i64::MIN), Kind::IntValue(i64::MIN)),
        (json!(i64::MAX), Kind::IntValue(i64::MAX)),
        (json!(true), Kind::BoolValue(true)),
        (json!(null), Kind::NullValue(0)),
    ];
    for (v, expected) in cases {
        let mapped = user_data_value(&v);
        assert_eq!(kind_of(&mapped), &expected, "{v}");
        assert_eq!(user_data_to_json(&mapped), v, "round trip of {v}");
    }
    // What int64 and double cannot hold exactly is its exact JSON text, never rounded.
    let big = json!(u64::MAX);
    assert_eq!(
        kind_of(&user_data_value(&big)),
        &Kind::RawJson("18446744073709551615".into())
    );
    let text = r#"{"a":123456789012345678901234567890,"b":-9223372036854775809,"c":1e999}"#;
    let parsed = crate::json::parse(text.as_bytes()).unwrap();
    for (key, raw) in [
        ("a", "123456789012345678901234567890"),
        ("b", "-9223372036854775809"),
        ("c", "1e999"),
    ] {
        assert_eq!(
            kind_of(&user_data_value(&parsed[key])),
            &Kind::RawJson(raw.into())
        );
    }
}

#[test]
fn user_data_nests_and_round_trips() {
    let v = json!({"a": {"b": [1, "1", null, {"c": false}], "d": {}}, "e": [], "f": 1e-7});
    let mapped = user_data_value(&v);
    let Kind::MapValue(m) = kind_of(&mapped) else {
        panic!("map")
    };
    let Kind::MapValue(a) = kind_of(&m.fields["a"]) else {
        panic!("nested map")
    };
    let Kind::ListValue(b) = kind_of(&a.fields["b"]) else {
        panic!("list")
    };
    assert_eq!(b.values.len(), 4);
    assert_eq!(kind_of(&b.values[1]), &Kind::StringValue("1".into()));
    assert_eq!(user_data_to_json(&mapped), v);
}

#[test]
fn user_data_to_json_of_values_json_cannot_hold() {
    assert_eq!(
        user_data_to_json(&UserDataValue { kind: None }),
        Value::Null
    );
    let nan = UserDataValue {
        kind: Some(Kind::DoubleValue(f64::NAN)),
    };
    assert_eq!(user_data_to_json(&nan), Value::Null);
}

#[test]
fn user_data_nesting_is_bounded() {
    let mut deep = json!(1);
    for _ in 0..MAX_USER_DATA_DEPTH {
        deep = json!([deep]);
    }
    let mut v = minimal("PropertiesUpdated");
    v["smssession"]["userData"] = json!({"k": deep.clone()});
    assert!(
        map_notification(&v).is_ok(),
        "{MAX_USER_DATA_DEPTH} levels are accepted"
    );
    // One level more: still delivered; the 31st level is its exact JSON text.
    v["smssession"]["userData"] = json!({"k": [deep.clone()], "other": 1});
    let sc = state_change(&v);
    let ud = &sc.session.as_ref().unwrap().user_data;
    assert_eq!(kind_of(&ud["other"]), &Kind::IntValue(1));
    let mut at = &ud["k"];
    for _ in 0..MAX_USER_DATA_DEPTH {
        match kind_of(at) {
            Kind::ListValue(l) => at = &l.values[0],
            other => panic!("expected a list, got {other:?}"),
        }
    }
    assert_eq!(kind_of(at), &Kind::RawJson("[1]".into()));
    // Far deeper than serde_json's recursion limit, as it comes off the wire: delivered.
    let levels = 100_000;
    let text = format!(
        r#"{{"messageType":"SMSsessionStateChangeMessage","notificationType":"PropertiesUpdated","smssession":{{"id":"S1","state":"Chatting","userData":{{"deep":{}1{},"ok":"yes"}}}}}}"#,
        "[".repeat(levels),
        "]".repeat(levels)
    );
    let sc = state_change(&crate::json::parse(text.as_bytes()).unwrap());
    let ud = &sc.session.as_ref().unwrap().user_data;
    assert_eq!(kind_of(&ud["ok"]), &Kind::StringValue("yes".into()));
    let mut at = &ud["deep"];
    for _ in 0..MAX_USER_DATA_DEPTH {
        match kind_of(at) {
            Kind::ListValue(l) => at = &l.values[0],
            other => panic!("expected a list, got {other:?}"),
        }
    }
    let want = format!(
        "{}1{}",
        "[".repeat(levels - MAX_USER_DATA_DEPTH),
        "]".repeat(levels - MAX_USER_DATA_DEPTH)
    );
    assert_eq!(kind_of(at), &Kind::RawJson(want));
}

#[test]
fn mapped_notification_survives_protobuf_encoding() {
    use prost::Message;
    let data: Value = serde_json::from_str(SEED_SAMPLE).expect("seed sample is JSON");
    let sc = state_change(&data);
    let decoded = SessionStateChange::decode(sc.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(decoded, sc);
}

/// Arbitrary JSON, of bounded size. Numbers cover i64, u64 beyond i64 and finite doubles.
fn arb_json() -> impl Strategy<Value = Value> {
    arb_json_numbers(true)
}

/// JSON that user data round-trips exactly: everything but u64 beyond i64::MAX.
fn arb_user_data() -> impl Strategy<Value = Value> {
    arb_json_numbers(false)
}

/// Bounded arbitrary JSON; `big_unsigned` adds u64 values, which may exceed i64::MAX.
fn arb_json_numbers(big_unsigned: bool) -> impl Strategy<Value = Value> {
    let unsigned = if big_unsigned {
        any::<u64>().boxed()
    } else {
        (0..=i64::MAX as u64).boxed()
    };
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        unsigned.prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Notification-shaped JSON: the right keys with arbitrary (often wrong) values mixed in.
fn arb_almost_notification() -> impl Strategy<Value = Value> {
    let message_type = prop_oneof![
        4 => Just(json!("SMSsessionStateChangeMessage")),
        2 => Just(json!("MessageLogUpdated")),
        1 => arb_json(),
    ];
    let notification_type = prop_oneof![
        Just(json!("StatusChange")),
        Just(json!("ParticipantsUpdated")),
        Just(json!("PropertiesUpdated")),
        Just(json!("Error")),
        Just(json!("NewMessages")),
        arb_json(),
    ];
    let participant = prop_oneof![
        1 => (arb_json(), arb_json(), arb_json())
            .prop_map(|(n, t, id)| json!({"nickname": n, "type": t, "participantId": id})),
        4 => Just(json!({"nickname": "A", "type": "Agent", "participantId": "P"})),
        1 => arb_json(),
    ];
    let session = (
        prop_oneof![4 => Just(json!("S1")), 1 => arb_json()],
        prop_oneof![4 => Just(json!("Chatting")), 1 => arb_json()],
        prop_oneof![4 => arb_user_data(), 1 => arb_json()],
        prop_oneof![4 => Just(json!(["Leave"])), 1 => arb_json()],
        prop::collection::vec(participant.clone(), 0..3),
    )
        .prop_map(|(id, state, ud, caps, parts)| {
            json!({"id": id, "state": state, "userData": ud, "capabilities": caps, "participants": parts})
        });
    let message = (
        prop_oneof![4 => Just(json!(1)), 1 => arb_json()],
        prop_oneof![4 => Just(json!("hi")), 1 => arb_json()],
        participant,
        prop_oneof![4 => Just(json!(1_700_000_000_000_i64)), 1 => arb_json()],
        prop_oneof![4 => Just(json!("2023-10-31T13:30:00Z")), 1 => arb_json()],
    )
        .prop_map(|(i, t, f, ts, t2)| {
            json!({"index": i, "text": t, "type": "Text", "visibility": "All", "from": f,
                   "timestampSeconds": ts, "timestamp": t2})
        });
    (
        message_type,
        notification_type,
        prop_oneof![4 => Just(json!(15)), 1 => arb_json()],
        prop_oneof![4 => session, 1 => arb_json()],
        prop_oneof![4 => Just(json!("http://h/api/v2/smssessions/S1")), 1 => arb_json()],
        prop::collection::vec(message, 0..3),
        arb_json(),
        prop::array::uniform7(prop::bool::weighted(0.15)),
        any::<bool>(),
    )
        .prop_map(|(mt, nt, rid, s, uri, msgs, junk, drop, misspelt)| {
            let mut o = serde_json::Map::new();
            // Keys are dropped at random, so absent fields are exercised too.
            let mut put = |i: usize, k: &str, v: Value| {
                if !drop[i] {
                    o.insert(k.to_owned(), v);
                }
            };
            put(0, "messageType", mt);
            put(1, "notificationType", nt);
            put(2, "referenceId", rid);
            put(3, if misspelt { "smsession" } else { "smssession" }, s);
            put(4, "smssessionUri", uri);
            put(5, "messages", Value::Array(msgs));
            put(6, "errorMessage", junk);
            Value::Object(o)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn map_notification_never_panics_on_arbitrary_json(v in arb_json()) {
        let _ = map_notification(&v);
    }

    #[test]
    fn map_notification_never_panics_on_almost_notifications(v in arb_almost_notification()) {
        if let Ok(n) = map_notification(&v) {
            // Whatever maps names its kind consistently.
            prop_assert_eq!(n.notification_type().is_none(), matches!(n, Notification::MessageLog(_)));
            let _ = n.session_id();
        }
    }

    #[test]
    fn user_data_round_trips(v in arb_user_data()) {
        prop_assert_eq!(user_data_to_json(&user_data_value(&v)), v);
    }

    #[test]
    fn user_data_map_of_a_valid_notification_round_trips(ud in prop::collection::btree_map(".{0,6}", arb_user_data(), 0..8)) {
        let ud: serde_json::Map<String, Value> = ud.into_iter().collect();
        let v = json!({"messageType": "SMSsessionStateChangeMessage", "notificationType": "PropertiesUpdated",
            "smssession": {"id": "S1", "userData": ud.clone()}});
        let sc = match map_notification(&v) {
            Ok(Notification::StateChange(sc)) => sc,
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        };
        let back = user_data::user_data_map_to_json(&sc.session.unwrap_or_default().user_data);
        prop_assert_eq!(back, ud);
    }
}

#[test]
fn raw_markers_are_never_taken_for_upstream_objects() {
    let parse = |text: &str| crate::json::parse(text.as_bytes()).unwrap();
    // userData must be an object; a number too large is not one (and its marker key never
    // reaches a caller).
    let v = parse(
        r#"{"messageType":"SMSsessionStateChangeMessage","notificationType":"PropertiesUpdated","smssession":{"id":"S1","state":"Chatting","userData":18446744073709551616}}"#,
    );
    let err = map_notification(&v).expect_err("userData is not an object");
    assert!(err.to_string().contains("too large"), "{err}");
    assert!(!err.to_string().contains("gws-gateway-raw-json"), "{err}");
    let v = parse(
        r#"{"messageType":"SMSsessionStateChangeMessage","notificationType":"StatusChange","smssession":{"id":"S1","state":"Chatting","participants":[1e400]}}"#,
    );
    assert!(
        map_notification(&v).is_err(),
        "a participant must be an object"
    );
    // An Error notification's text keeps upstream's exact JSON, never the marker.
    let v = parse(
        r#"{"messageType":"SMSsessionStateChangeMessage","notificationType":"Error","smssession":{"id":"S1"},"error":{"code":1e400}}"#,
    );
    let sc = state_change(&v);
    assert_eq!(sc.error_message, r#"{"code":1e400}"#);
}
