//! Fuzz-style properties, on stable Rust with proptest, for everything that reads upstream
//! bytes: the bounded JSON parser, the Bayeux reply parser and the notification mapper, over
//! arbitrary bytes, mutated JSON, nesting up to 200,000 levels (balanced or not), numbers of
//! hundreds of digits and notification-shaped JSON with all of those inside.
//!
//! `cargo test --test fuzz` runs each property briefly. For a long run, set a time budget per
//! property: `FUZZ_SECONDS=600 cargo test --release --test fuzz -- --test-threads 1`: each
//! property then runs batches of cases (new seeds each batch) until its time is up, and prints
//! how many cases it ran.
//!
//! Properties: nothing panics or overflows the stack; a reply is either refused whole (not JSON)
//! or every element is accounted for (a message or a skip); the parser agrees with serde_json
//! wherever serde_json can hold the value; writing a parsed value back gives JSON that parses
//! to the same value; every mapped notification survives protobuf encoding *and decoding* by
//! prost (whose decoder refuses nesting deeper than 100): what the gateway sends, callers can read.

use gws_sms_gateway::bayeux::message::parse_response;
use gws_sms_gateway::json;
use gws_sms_gateway::mapping::{Notification, map_notification};
use gws_sms_gateway::proto::{MessageLogUpdate, SessionStateChange};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Runs `property` over `strategy`: a few hundred cases, or batches until `FUZZ_SECONDS`.
fn fuzz<S: Strategy>(
    name: &str,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let budget = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let started = Instant::now();
    let mut cases = 0u64;
    loop {
        let batch = if budget.is_some() { 2_000 } else { 256 };
        let mut runner = TestRunner::new(Config {
            cases: batch,
            failure_persistence: None,
            ..Config::default()
        });
        if let Err(e) = runner.run(&strategy, &property) {
            panic!("{name}: {e}");
        }
        cases += u64::from(batch);
        match budget {
            Some(b) if started.elapsed() < b => continue,
            _ => break,
        }
    }
    if budget.is_some() {
        println!(
            "{name}: {cases} cases in {:?}, no failure",
            started.elapsed()
        );
    }
}

/// Bounded arbitrary JSON values.
fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,8}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Text serde_json cannot hold as it stands: very deep, balanced or not, and huge numbers.
fn arb_hostile_fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        // Deep nesting of arrays and objects, balanced.
        (0usize..200_000, any::<bool>()).prop_map(|(depth, objects)| {
            let (open, close) = if objects {
                ("{\"k\":", "}")
            } else {
                ("[", "]")
            };
            format!("{}1{}", open.repeat(depth), close.repeat(depth))
        }),
        // Unbalanced or mismatched nesting.
        (0usize..200_000, 0usize..200_000)
            .prop_map(|(open, close)| { format!("{}{}", "[".repeat(open), "]".repeat(close)) }),
        (1usize..400).prop_map(|n| "9".repeat(n)),
        (1usize..400).prop_map(|n| format!("-{}", "1".repeat(n))),
        (-2000i32..2000).prop_map(|e| format!("1.5e{e}")),
        Just("\"\\ud800\"".to_string()),
        Just("\"\\udc00\\ud800\"".to_string()),
    ]
}

/// JSON text with damage: truncated, bytes replaced, or a hostile fragment spliced in.
fn arb_damaged_text() -> impl Strategy<Value = Vec<u8>> {
    (
        arb_value(),
        any::<prop::sample::Index>(),
        any::<u8>(),
        0u8..4,
        arb_hostile_fragment(),
    )
        .prop_map(|(v, at, byte, how, fragment)| {
            let mut text = v.to_string().into_bytes();
            let i = at.index(text.len() + 1);
            match how {
                0 => text.truncate(i),
                1 if i < text.len() => text[i] = byte,
                2 => {
                    text.splice(i..i, fragment.into_bytes());
                }
                _ => {}
            }
            text
        })
}

/// A notification (state change or transcript) with a hostile fragment as one of its values.
fn arb_hostile_notification() -> impl Strategy<Value = String> {
    (arb_hostile_fragment(), 0u8..5).prop_map(|(fragment, place)| match place {
        0 => format!(
            r#"{{"messageType":"SMSsessionStateChangeMessage","notificationType":"PropertiesUpdated","referenceId":1,"smssession":{{"id":"S1","state":"Chatting","userData":{{"v":{fragment}}}}}}}"#
        ),
        1 => format!(
            r#"{{"messageType":"SMSsessionStateChangeMessage","notificationType":"StatusChange","referenceId":{fragment},"smssession":{{"id":"S1","state":"Chatting"}}}}"#
        ),
        2 => format!(
            r#"{{"messageType":"MessageLogUpdated","notificationType":"NewMessages","smssessionUri":"http://g/api/v2/smssessions/S1","messages":[{{"index":{fragment},"text":"hi","type":"Text","from":{{"nickname":"c","type":"Customer","participantId":"p"}},"timestampSeconds":1}}]}}"#
        ),
        3 => format!(
            r#"{{"messageType":"SMSsessionStateChangeMessage","notificationType":"PropertiesUpdated","smssession":{{"id":"S1","state":"Chatting","userData":{fragment}}}}}"#
        ),
        _ => format!(
            r#"{{"messageType":"SMSsessionStateChangeMessage","notificationType":"Error","smssession":{{"id":"S1","participants":[{fragment}]}}}}"#
        ),
    })
}

/// A Bayeux reply: an array of messages whose data are the given texts, amid meta replies.
fn reply_of(datas: &[String]) -> String {
    let mut parts: Vec<String> = datas
        .iter()
        .enumerate()
        .map(|(i, d)| format!(r#"{{"channel":"/v2/me/smssessions","id":"{i}","data":{d}}}"#))
        .collect();
    parts.push(r#"{"channel":"/meta/connect","successful":true,"ext":{"ack":3}}"#.into());
    format!("[{}]", parts.join(","))
}

/// A mapped notification must encode, and decode again with prost's own limits.
fn survives_protobuf(n: &Notification) -> Result<(), TestCaseError> {
    use prost::Message;
    match n {
        Notification::StateChange(sc) => {
            let back = SessionStateChange::decode(sc.encode_to_vec().as_slice());
            prop_assert!(
                back.is_ok(),
                "prost refuses what the gateway would send: {back:?}"
            );
            prop_assert_eq!(&back.unwrap(), sc);
        }
        Notification::MessageLog(ml) => {
            let back = MessageLogUpdate::decode(ml.encode_to_vec().as_slice());
            prop_assert!(
                back.is_ok(),
                "prost refuses what the gateway would send: {back:?}"
            );
            prop_assert_eq!(&back.unwrap(), ml);
        }
    }
    Ok(())
}

/// Everything upstream bytes go through: the parser, then the mapper for each message.
fn through_the_gateway(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(v) = json::parse(bytes) {
        // What the parser gives back, written out, parses to the same value.
        let again = json::parse(json::to_text(&v).as_bytes());
        prop_assert_eq!(again.as_ref().ok(), Some(&v));
        if let Ok(n) = map_notification(&v) {
            survives_protobuf(&n)?;
        }
    }
    if let Ok(parsed) = parse_response(bytes) {
        for m in &parsed.messages {
            if let Some(data) = &m.data
                && let Ok(n) = map_notification(data)
            {
                survives_protobuf(&n)?;
            }
        }
    }
    Ok(())
}

#[test]
fn arbitrary_bytes() {
    fuzz(
        "arbitrary bytes",
        prop::collection::vec(any::<u8>(), 0..512),
        |bytes| through_the_gateway(&bytes),
    );
}

#[test]
fn damaged_json() {
    fuzz("damaged JSON", arb_damaged_text(), |bytes| {
        through_the_gateway(&bytes)
    });
}

#[test]
fn the_parser_agrees_with_serde_json_where_it_can_hold_the_value() {
    fuzz("agrees with serde_json", arb_value(), |v| {
        let text = v.to_string();
        let ours = json::parse(text.as_bytes());
        // serde_json's own reading of its output (u64 beyond i64 aside: that is raw text).
        let theirs: Value = serde_json::from_str(&text).unwrap();
        match ours {
            Ok(ours) if json::to_text(&ours) == text || ours == theirs => Ok(()),
            other => Err(TestCaseError::fail(format!("{text} -> {other:?}"))),
        }
    });
}

#[test]
fn hostile_notifications_map_or_fail_cleanly_and_always_decode() {
    fuzz(
        "hostile notifications",
        arb_hostile_notification(),
        |text| {
            through_the_gateway(text.as_bytes())?;
            // A balanced hostile value never costs the notification: it maps.
            let v = json::parse(text.as_bytes());
            if let Ok(v) = &v
                && text.contains(r#""userData":{"v":"#)
            {
                prop_assert!(
                    map_notification(v).is_ok(),
                    "{}",
                    &text[..text.len().min(200)]
                );
            }
            Ok(())
        },
    );
}

#[test]
fn a_bayeux_batch_accounts_for_every_element() {
    let datas = prop::collection::vec(
        prop_oneof![
            arb_hostile_notification(),
            arb_value().prop_map(|v| v.to_string()),
        ],
        0..6,
    );
    fuzz("bayeux batches", datas, |datas| {
        let reply = reply_of(&datas);
        let elements = datas.len() + 1;
        match parse_response(reply.as_bytes()) {
            // Unbalanced fragments make the whole reply not JSON: refused whole, fine.
            Err(_) => {
                prop_assert!(json::parse_batch(reply.as_bytes()).is_err());
            }
            Ok(parsed) => {
                prop_assert_eq!(parsed.messages.len() + parsed.skipped.len(), elements);
                // The connect reply is never lost to a bad neighbour.
                prop_assert_eq!(
                    parsed.messages.last().map(|m| m.channel.as_str()),
                    Some("/meta/connect")
                );
            }
        }
        through_the_gateway(reply.as_bytes())
    });
}
