//! Unit tests of the sans-IO machine: one test per transition, driving [`State`]
//! with canned replies and a synthetic clock.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;
use crate::bayeux::message::parse_response;

const ALLOWANCE: Duration = Duration::from_secs(10);

fn config(channels: &[&str]) -> BayeuxConfig {
    let url = reqwest::Url::parse("http://127.0.0.1:1/cometd").unwrap();
    let mut c = BayeuxConfig::new(url, channels.iter().map(|s| (*s).to_owned()).collect());
    c.max_backoff = Duration::from_secs(3);
    c
}

fn msgs(v: Value) -> Vec<Message> {
    parse_response(v.to_string().as_bytes()).unwrap().messages
}

fn ok(kind: Kind, v: Value) -> Input {
    Input::Reply {
        kind,
        result: Ok(msgs(v)),
    }
}

fn err(kind: Kind, e: RequestError) -> Input {
    Input::Reply {
        kind,
        result: Err(e),
    }
}

/// The single request in an action list (which must end with it).
fn sent(actions: &[Action]) -> &Request {
    match actions.last() {
        Some(Action::Send(r)) => r,
        other => panic!("expected a Send last, got {other:?}"),
    }
}

fn emitted(actions: &[Action]) -> Vec<BayeuxEvent> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Emit(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn id_of(r: &Request, i: usize) -> String {
    r.messages[i]["id"].as_str().unwrap().to_owned()
}

fn handshake_ok(id: &str, ack: bool) -> Value {
    let mut m = json!({"channel":"/meta/handshake","id":id,"successful":true,"clientId":"c1",
        "advice":{"reconnect":"retry","interval":0,"timeout":2000}});
    if ack {
        m["ext"] = json!({"ack": true});
    }
    json!([m])
}

/// Drives a fresh machine to its first parked connect; returns it and that request.
fn connected(channels: &[&str], now: Instant) -> (State, Request) {
    let mut s = State::new(&config(channels));
    let hs = sent(&s.handle(Input::Start, now)).clone();
    let a = s.handle(ok(Kind::Handshake, handshake_ok(&id_of(&hs, 0), true)), now);
    let sub = sent(&a).clone();
    let replies: Vec<Value> = (0..sub.messages.len())
        .map(|i| json!({"channel":"/meta/subscribe","id":id_of(&sub, i),"successful":true}))
        .collect();
    let a = s.handle(ok(Kind::Subscribe, Value::Array(replies)), now);
    assert_eq!(
        emitted(&a),
        vec![BayeuxEvent::Subscribed { restored: false }]
    );
    let cn = sent(&a).clone();
    (s, cn)
}

fn connect_ok(id: &str, batch: i64) -> Value {
    json!({"channel":"/meta/connect","id":id,"successful":true,"ext":{"ack":batch}})
}

#[test]
fn start_sends_a_handshake_asking_for_acks() {
    let mut s = State::new(&config(&["/a"]));
    let a = s.handle(Input::Start, Instant::now());
    assert_eq!(a.len(), 1);
    let r = sent(&a);
    assert_eq!(r.kind, Kind::Handshake);
    assert_eq!(r.timeout, Duration::from_secs(10));
    assert_eq!(r.messages[0]["channel"], "/meta/handshake");
    assert_eq!(r.messages[0]["ext"], json!({"ack": true}));
}

#[test]
fn use_ack_false_does_not_ask() {
    let mut c = config(&["/a"]);
    c.use_ack = false;
    let mut s = State::new(&c);
    let a = s.handle(Input::Start, Instant::now());
    assert!(sent(&a).messages[0].get("ext").is_none());
}

#[test]
fn handshake_success_subscribes_every_channel_in_one_request() {
    let now = Instant::now();
    let mut s = State::new(&config(&["/a", "/b"]));
    let hs = sent(&s.handle(Input::Start, now)).clone();
    let a = s.handle(ok(Kind::Handshake, handshake_ok(&id_of(&hs, 0), true)), now);
    let r = sent(&a);
    assert_eq!(r.kind, Kind::Subscribe);
    assert_eq!(r.messages.len(), 2);
    assert_eq!(r.messages[0]["subscription"], "/a");
    assert_eq!(r.messages[1]["subscription"], "/b");
    assert_eq!(r.messages[1]["clientId"], "c1");
    assert_ne!(id_of(r, 0), id_of(r, 1));
}

#[test]
fn all_subscriptions_confirmed_announces_and_connects_with_ack_zero() {
    let (_, cn) = connected(&["/a", "/b"], Instant::now());
    assert_eq!(cn.kind, Kind::Connect);
    assert_eq!(cn.messages[0]["ext"], json!({"ack": 0}));
    assert_eq!(cn.messages[0]["connectionType"], "long-polling");
    // advice.timeout 2000 ms from the handshake + the network allowance.
    assert_eq!(cn.timeout, Duration::from_millis(2000) + ALLOWANCE);
}

#[test]
fn no_channels_means_subscribed_right_after_the_handshake() {
    let now = Instant::now();
    let mut s = State::new(&config(&[]));
    let hs = sent(&s.handle(Input::Start, now)).clone();
    let a = s.handle(ok(Kind::Handshake, handshake_ok(&id_of(&hs, 0), true)), now);
    assert_eq!(
        emitted(&a),
        vec![BayeuxEvent::Subscribed { restored: false }]
    );
    assert_eq!(sent(&a).kind, Kind::Connect);
}

#[test]
fn handshake_without_ack_offer_connects_without_ext() {
    let now = Instant::now();
    let mut s = State::new(&config(&[]));
    let hs = sent(&s.handle(Input::Start, now)).clone();
    let a = s.handle(
        ok(Kind::Handshake, handshake_ok(&id_of(&hs, 0), false)),
        now,
    );
    assert!(sent(&a).messages[0].get("ext").is_none());
}

#[test]
fn connect_reply_emits_events_in_order_and_acks_the_batch() {
    let now = Instant::now();
    let (mut s, cn) = connected(&["/a"], now);
    let reply = json!([
        {"channel":"/a","data":{"n":1}},
        {"channel":"/a","data":{"n":2}},
        connect_ok(&id_of(&cn, 0), 5),
    ]);
    let a = s.handle(ok(Kind::Connect, reply), now);
    assert_eq!(
        emitted(&a),
        vec![
            BayeuxEvent::Message {
                channel: "/a".into(),
                data: json!({"n":1})
            },
            BayeuxEvent::Message {
                channel: "/a".into(),
                data: json!({"n":2})
            },
        ]
    );
    let next = sent(&a);
    assert_eq!(next.kind, Kind::Connect);
    assert_eq!(next.messages[0]["ext"], json!({"ack": 5}));
    assert_ne!(id_of(next, 0), id_of(&cn, 0));
}

#[test]
fn a_reply_for_another_id_is_not_our_connect_reply() {
    let now = Instant::now();
    let (mut s, _) = connected(&["/a"], now);
    let a = s.handle(ok(Kind::Connect, json!([connect_ok("999", 1)])), now);
    assert!(matches!(emitted(&a)[0], BayeuxEvent::Lost { .. }));
}

#[test]
fn interval_advice_waits_before_the_next_connect() {
    let now = Instant::now();
    let (mut s, cn) = connected(&["/a"], now);
    let mut reply = connect_ok(&id_of(&cn, 0), 1);
    reply["advice"] = json!({"reconnect":"retry","interval":250,"timeout":2000});
    let a = s.handle(ok(Kind::Connect, json!([reply])), now);
    assert_eq!(a, vec![Action::Wait(Duration::from_millis(250))]);
    let a = s.handle(Input::Timer, now);
    assert_eq!(sent(&a).kind, Kind::Connect);
    assert_eq!(sent(&a).messages[0]["ext"], json!({"ack": 1}));
}

#[test]
fn connect_failure_reports_lost_once_backs_off_linearly_and_restores() {
    let t0 = Instant::now();
    let (mut s, _) = connected(&["/a"], t0);
    let boom = || {
        err(
            Kind::Connect,
            RequestError::Transport(crate::upstream::Transport::Timeout),
        )
    };
    // First failure: Lost, immediate retry of the connect (same session, same ack).
    let a = s.handle(boom(), t0);
    assert_eq!(
        emitted(&a),
        vec![BayeuxEvent::Lost {
            reason: "connect failed: transport error: timed out".into()
        }]
    );
    assert_eq!(sent(&a).kind, Kind::Connect);
    assert_eq!(sent(&a).messages[0]["ext"], json!({"ack": 0}));
    // Second failure: no second Lost, wait 1 s.
    let a = s.handle(boom(), t0);
    assert_eq!(a, vec![Action::Wait(Duration::from_secs(1))]);
    let a = s.handle(Input::Timer, t0);
    let cn = sent(&a).clone();
    assert_eq!(cn.kind, Kind::Connect);
    // Success: restored (before any event of that reply), no re-handshake needed.
    let a = s.handle(
        ok(
            Kind::Connect,
            json!([{"channel":"/a","data":1}, connect_ok(&id_of(&cn, 0), 1)]),
        ),
        t0,
    );
    let ev = emitted(&a);
    assert_eq!(ev[0], BayeuxEvent::Subscribed { restored: true });
    assert!(matches!(ev[1], BayeuxEvent::Message { .. }));
    assert_eq!(sent(&a).kind, Kind::Connect);
}

#[test]
fn backoff_is_capped_by_max_backoff() {
    let t0 = Instant::now();
    let (mut s, _) = connected(&["/a"], t0);
    let mut last = Vec::new();
    for _ in 0..10 {
        last = s.handle(err(Kind::Connect, RequestError::Http(503)), t0);
        if let Some(Action::Wait(_)) = last.last() {
            s.handle(Input::Timer, t0);
        }
    }
    assert_eq!(last.last(), Some(&Action::Wait(Duration::from_secs(3))));
}

#[test]
fn handshake_advice_rehandshakes_and_resubscribes_everything() {
    let t0 = Instant::now();
    let (mut s, cn) = connected(&["/a", "/b"], t0);
    let reply = json!([{"channel":"/meta/connect","id":id_of(&cn, 0),"successful":false,
        "error":"402::session_unknown","advice":{"reconnect":"handshake","interval":0}}]);
    let a = s.handle(ok(Kind::Connect, reply), t0);
    assert_eq!(
        emitted(&a),
        vec![BayeuxEvent::Lost {
            reason: "connect unsuccessful: 402::session_unknown".into()
        }]
    );
    let hs = sent(&a).clone();
    assert_eq!(hs.kind, Kind::Handshake);
    let a = s.handle(ok(Kind::Handshake, handshake_ok(&id_of(&hs, 0), true)), t0);
    let sub = sent(&a).clone();
    assert_eq!(sub.messages.len(), 2);
    let replies = json!([
        {"channel":"/meta/subscribe","id":id_of(&sub, 0),"successful":true},
        {"channel":"/meta/subscribe","id":id_of(&sub, 1),"successful":true},
    ]);
    let a = s.handle(ok(Kind::Subscribe, replies), t0);
    assert_eq!(
        emitted(&a),
        vec![BayeuxEvent::Subscribed { restored: true }]
    );
    // New session: acks start over.
    assert_eq!(sent(&a).messages[0]["ext"], json!({"ack": 0}));
}

#[test]
fn failing_longer_than_the_session_expiry_switches_to_handshake() {
    let t0 = Instant::now();
    let (mut s, _) = connected(&["/a"], t0);
    // Expiry = timeout 2 s + interval 0 + maxInterval 0 (not advised).
    let a = s.handle(err(Kind::Connect, RequestError::Http(502)), t0);
    assert_eq!(sent(&a).kind, Kind::Connect);
    let a = s.handle(
        err(Kind::Connect, RequestError::Http(502)),
        t0 + Duration::from_secs(1),
    );
    assert_eq!(a, vec![Action::Wait(Duration::from_secs(1))]);
    assert_eq!(sent(&s.handle(Input::Timer, t0)).kind, Kind::Connect);
    let a = s.handle(
        err(Kind::Connect, RequestError::Http(502)),
        t0 + Duration::from_secs(3),
    );
    assert_eq!(a, vec![Action::Wait(Duration::from_secs(2))]);
    assert_eq!(sent(&s.handle(Input::Timer, t0)).kind, Kind::Handshake);
}

#[test]
fn connect_http_401_or_403_is_terminal_too() {
    for status in [401, 403] {
        let (mut s, _) = connected(&["/a"], Instant::now());
        let a = s.handle(
            err(Kind::Connect, RequestError::Http(status)),
            Instant::now(),
        );
        assert_eq!(
            a,
            vec![
                Action::Emit(BayeuxEvent::Failed {
                    reason: format!("connect refused: HTTP {status}"),
                    http_status: Some(status),
                }),
                Action::Stop,
            ]
        );
    }
}

#[test]
fn handshake_http_401_or_403_is_terminal() {
    for status in [401, 403] {
        let mut s = State::new(&config(&["/a"]));
        s.handle(Input::Start, Instant::now());
        let a = s.handle(
            err(Kind::Handshake, RequestError::Http(status)),
            Instant::now(),
        );
        assert_eq!(
            a,
            vec![
                Action::Emit(BayeuxEvent::Failed {
                    reason: format!("handshake refused: HTTP {status}"),
                    http_status: Some(status),
                }),
                Action::Stop,
            ]
        );
        assert_eq!(s.disconnect_request(), None);
    }
}

#[test]
fn handshake_failures_retry_without_lost_before_the_first_subscribed() {
    let t0 = Instant::now();
    let mut s = State::new(&config(&["/a"]));
    s.handle(Input::Start, t0);
    let a = s.handle(err(Kind::Handshake, RequestError::Http(500)), t0);
    assert!(emitted(&a).is_empty());
    assert_eq!(sent(&a).kind, Kind::Handshake);
    let a = s.handle(
        err(Kind::Handshake, RequestError::Malformed("not JSON".into())),
        t0,
    );
    assert_eq!(a, vec![Action::Wait(Duration::from_secs(1))]);
    let a = s.handle(Input::Timer, t0);
    let hs = sent(&a).clone();
    let a = s.handle(ok(Kind::Handshake, handshake_ok(&id_of(&hs, 0), true)), t0);
    assert_eq!(sent(&a).kind, Kind::Subscribe);
}

#[test]
fn unsuccessful_handshake_retries_it() {
    let t0 = Instant::now();
    let mut s = State::new(&config(&["/a"]));
    let hs = sent(&s.handle(Input::Start, t0)).clone();
    let reply = json!([{"channel":"/meta/handshake","id":id_of(&hs, 0),"successful":false,
        "error":"500::busy","advice":{"reconnect":"handshake","interval":100}}]);
    let a = s.handle(ok(Kind::Handshake, reply), t0);
    assert_eq!(a, vec![Action::Wait(Duration::from_millis(100))]);
    assert_eq!(sent(&s.handle(Input::Timer, t0)).kind, Kind::Handshake);
}

#[test]
fn advice_none_is_terminal() {
    let t0 = Instant::now();
    let (mut s, cn) = connected(&["/a"], t0);
    let reply = json!([{"channel":"/meta/connect","id":id_of(&cn, 0),"successful":false,
        "advice":{"reconnect":"none"}}]);
    let a = s.handle(ok(Kind::Connect, reply), t0);
    assert_eq!(
        a,
        vec![
            Action::Emit(BayeuxEvent::Failed {
                reason: "server advised reconnect none on connect".into(),
                http_status: None,
            }),
            Action::Stop,
        ]
    );
    // Terminal: later inputs do nothing.
    assert!(s.handle(Input::Timer, t0).is_empty());
}

#[test]
fn partially_refused_subscription_retries_only_the_refused_channel() {
    let t0 = Instant::now();
    let mut s = State::new(&config(&["/a", "/b"]));
    let hs = sent(&s.handle(Input::Start, t0)).clone();
    let sub = sent(&s.handle(ok(Kind::Handshake, handshake_ok(&id_of(&hs, 0), true)), t0)).clone();
    let replies = json!([
        {"channel":"/meta/subscribe","id":id_of(&sub, 0),"successful":true},
        {"channel":"/meta/subscribe","id":id_of(&sub, 1),"successful":false,"error":"403::denied"},
    ]);
    let a = s.handle(ok(Kind::Subscribe, replies), t0);
    assert!(
        emitted(&a).is_empty(),
        "not Subscribed until every channel is confirmed"
    );
    let retry = sent(&a).clone();
    assert_eq!(retry.kind, Kind::Subscribe);
    assert_eq!(retry.messages.len(), 1);
    assert_eq!(retry.messages[0]["subscription"], "/b");
    let a = s.handle(
        ok(
            Kind::Subscribe,
            json!([{"channel":"/meta/subscribe","id":id_of(&retry, 0),"successful":true}]),
        ),
        t0,
    );
    assert_eq!(
        emitted(&a),
        vec![BayeuxEvent::Subscribed { restored: false }]
    );
}

#[test]
fn missing_subscribe_reply_counts_as_refused() {
    let t0 = Instant::now();
    let mut s = State::new(&config(&["/a"]));
    let hs = sent(&s.handle(Input::Start, t0)).clone();
    s.handle(ok(Kind::Handshake, handshake_ok(&id_of(&hs, 0), true)), t0);
    let a = s.handle(ok(Kind::Subscribe, json!([])), t0);
    assert_eq!(sent(&a).kind, Kind::Subscribe);
}

#[test]
fn malformed_connect_reply_is_a_failure() {
    let t0 = Instant::now();
    let (mut s, _) = connected(&["/a"], t0);
    let a = s.handle(
        err(
            Kind::Connect,
            RequestError::Malformed("response is not JSON".into()),
        ),
        t0,
    );
    assert!(
        matches!(&emitted(&a)[0], BayeuxEvent::Lost { reason } if reason.contains("malformed"))
    );
}

#[test]
fn stale_or_mismatched_inputs_are_ignored() {
    let t0 = Instant::now();
    let (mut s, _) = connected(&["/a"], t0);
    assert!(s.handle(Input::Timer, t0).is_empty());
    assert!(s.handle(Input::Start, t0).is_empty());
    assert!(s.handle(ok(Kind::Handshake, json!([])), t0).is_empty());
}

#[test]
fn disconnect_request_only_with_a_session() {
    let mut s = State::new(&config(&["/a"]));
    assert_eq!(s.disconnect_request(), None);
    let (mut s, _) = connected(&["/a"], Instant::now());
    let d = s.disconnect_request().unwrap();
    assert_eq!(d.kind, Kind::Disconnect);
    assert_eq!(d.messages[0]["channel"], "/meta/disconnect");
    assert_eq!(d.messages[0]["clientId"], "c1");
    assert_eq!(s.disconnect_request(), None);
}

#[test]
fn unsolicited_meta_messages_are_not_events() {
    let t0 = Instant::now();
    let (mut s, cn) = connected(&["/a"], t0);
    let reply =
        json!([{"channel":"/meta/disconnect","successful":true}, connect_ok(&id_of(&cn, 0), 2)]);
    let a = s.handle(ok(Kind::Connect, reply), t0);
    assert!(emitted(&a).is_empty());
    assert_eq!(sent(&a).kind, Kind::Connect);
}

#[test]
fn reply_without_id_is_accepted_as_fallback() {
    let t0 = Instant::now();
    let (mut s, _) = connected(&["/a"], t0);
    let a = s.handle(
        ok(
            Kind::Connect,
            json!([{"channel":"/meta/connect","successful":true}]),
        ),
        t0,
    );
    assert!(emitted(&a).is_empty());
    assert_eq!(sent(&a).kind, Kind::Connect);
}

#[test]
fn handshake_advice_is_spent_by_a_successful_handshake_without_advice() {
    let t0 = Instant::now();
    let (mut s, cn) = connected(&["/a"], t0);
    let reply = json!([{"channel":"/meta/connect","id":id_of(&cn, 0),"successful":false,
        "advice":{"reconnect":"handshake"}}]);
    let hs = sent(&s.handle(ok(Kind::Connect, reply), t0)).clone();
    let reply =
        json!([{"channel":"/meta/handshake","id":id_of(&hs, 0),"successful":true,"clientId":"c2"}]);
    let sub = sent(&s.handle(ok(Kind::Handshake, reply), t0)).clone();
    let reply = json!([{"channel":"/meta/subscribe","id":id_of(&sub, 0),"successful":true}]);
    let a = s.handle(ok(Kind::Subscribe, reply), t0);
    assert_eq!(
        emitted(&a),
        vec![BayeuxEvent::Subscribed { restored: true }]
    );
    // A plain transport failure now retries the connect on the new session (after
    // 1 s: failures only reset when a connect succeeds, so a server that accepts
    // handshakes but fails every connect cannot make us spin).
    let a = s.handle(
        err(
            Kind::Connect,
            RequestError::Transport(crate::upstream::Transport::Other),
        ),
        t0,
    );
    assert_eq!(a.last(), Some(&Action::Wait(Duration::from_secs(1))));
    let a = s.handle(Input::Timer, t0);
    let r = sent(&a);
    assert_eq!(r.kind, Kind::Connect);
    assert_eq!(r.messages[0]["clientId"], "c2");
}
