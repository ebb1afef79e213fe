//! What the hub's tests share. They drive the hub through `handle` as the HTTP layer
//! would. Hold timeouts are a few milliseconds of tokio time (the crate does not enable
//! tokio's `test-util`, so time cannot be paused); expiry uses the hub's test clock skew; a
//! parked connect is observed through `parked_count` before anything is published, never
//! by sleeping.

use std::time::Duration;

use serde_json::{Value, json};

use super::{CometdConfig, CometdHub};

pub(super) const A: &str = "agent-a";
pub(super) const B: &str = "agent-b";
pub(super) const SMS: &str = "/v2/me/smssessions";

pub(super) fn hub() -> CometdHub {
    CometdHub::new(CometdConfig::default())
}

pub(super) fn hub_with(f: impl FnOnce(&mut CometdConfig)) -> CometdHub {
    let mut c = CometdConfig::default();
    f(&mut c);
    CometdHub::new(c)
}

pub(super) async fn send(hub: &CometdHub, agent: &str, msg: Value) -> Vec<Value> {
    match hub.handle(agent, msg).await {
        Value::Array(replies) => replies,
        other => panic!("reply is not an array: {other}"),
    }
}

/// The one reply on `channel` (a meta reply among events).
pub(super) fn meta<'a>(replies: &'a [Value], channel: &str) -> &'a Value {
    let found: Vec<_> = replies
        .iter()
        .filter(|r| r["channel"] == channel && r.get("data").is_none())
        .collect();
    assert_eq!(found.len(), 1, "one {channel} reply in {replies:?}");
    found[0]
}

pub(super) fn events(replies: &[Value]) -> Vec<&Value> {
    replies.iter().filter(|r| r.get("data").is_some()).collect()
}

pub(super) async fn handshake(hub: &CometdHub, agent: &str) -> String {
    let r = send(
        hub,
        agent,
        json!([{"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling"], "id": "1"}]),
    )
    .await;
    let h = meta(&r, "/meta/handshake");
    assert_eq!(h["successful"], true, "{h}");
    h["clientId"].as_str().expect("clientId").to_owned()
}

pub(super) async fn subscribe(hub: &CometdHub, agent: &str, client: &str, sub: Value) -> Value {
    let r = send(
        hub,
        agent,
        json!([{"channel": "/meta/subscribe", "clientId": client, "subscription": sub, "id": "2"}]),
    )
    .await;
    meta(&r, "/meta/subscribe").clone()
}

pub(super) fn connect_msg(client: &str, timeout: Option<u64>) -> Value {
    match timeout {
        Some(t) => {
            json!({"channel": "/meta/connect", "clientId": client, "connectionType": "long-polling",
                          "advice": {"timeout": t}, "id": "c"})
        }
        None => {
            json!({"channel": "/meta/connect", "clientId": client, "connectionType": "long-polling", "id": "c"})
        }
    }
}

pub(super) async fn connect(
    hub: &CometdHub,
    agent: &str,
    client: &str,
    timeout: Option<u64>,
) -> Vec<Value> {
    send(hub, agent, connect_msg(client, timeout)).await
}

pub(super) fn assert_402(reply: &Value) {
    assert_eq!(reply["successful"], false, "{reply}");
    assert_eq!(reply["error"], "402::Unknown client", "{reply}");
    assert_eq!(reply["advice"]["reconnect"], "handshake", "{reply}");
    assert_eq!(reply["advice"]["interval"], 0, "{reply}");
}

/// Spawns a connect and returns once it is parked.
pub(super) async fn parked_connect(
    hub: &CometdHub,
    agent: &str,
    client: &str,
) -> tokio::task::JoinHandle<Vec<Value>> {
    let before = hub.parked_count();
    let (h, a, c) = (hub.clone(), agent.to_owned(), client.to_owned());
    let task = tokio::spawn(async move { connect(&h, &a, &c, None).await });
    while hub.parked_count() == before {
        tokio::task::yield_now().await;
    }
    task
}

pub(super) async fn join(task: tokio::task::JoinHandle<Vec<Value>>) -> Vec<Value> {
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("connect released")
        .expect("task ok")
}
