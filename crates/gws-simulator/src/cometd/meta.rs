//! The Bayeux messages: a POSTed batch is checked (shape, size) and each message dispatched
//! on its channel, `/meta/handshake`, `/meta/subscribe` and `/meta/unsubscribe`,
//! `/meta/disconnect` (the long-polling `/meta/connect` has its own file) or a client
//! publish, every one answered with a reply that echoes its `id`. The wire rules (error
//! codes, advice, what a missing or foreign `clientId` gets) live here, in one place.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::channel::{truncate, validate_channel};
use super::session::{MAX_SUBSCRIPTIONS, Session, Wake, new_client_id, remove_session};
use super::sweep::sweep;
use super::{CometdHub, LONG_POLLING, ms};

/// Most messages accepted in one POSTed batch; a real client sends a handful.
pub(super) const MAX_BATCH: usize = 64;

/// The parts of one incoming message every handler needs.
pub(super) struct Incoming<'a> {
    pub(super) channel: &'a str,
    pub(super) id: Option<&'a Value>,
    pub(super) msg: &'a Map<String, Value>,
}

impl Incoming<'_> {
    pub(super) fn client_id(&self) -> Option<&str> {
        self.msg.get("clientId").and_then(Value::as_str)
    }

    /// A reply on this message's channel, echoing its `id`.
    pub(super) fn reply(&self) -> Map<String, Value> {
        let mut r = Map::new();
        r.insert("channel".into(), Value::String(self.channel.to_owned()));
        if let Some(id) = self.id {
            r.insert("id".into(), id.clone());
        }
        r
    }

    fn error_map(&self, error: String) -> Map<String, Value> {
        let mut r = self.reply();
        if let Some(c) = self.client_id() {
            r.insert("clientId".into(), Value::String(c.to_owned()));
        }
        r.insert("successful".into(), Value::Bool(false));
        r.insert("error".into(), Value::String(error));
        r
    }

    pub(super) fn error(&self, error: String) -> Value {
        Value::Object(self.error_map(error))
    }

    /// `402::Unknown client` with handshake advice: the session is gone (or never was
    /// this agent's), so the client must handshake and re-subscribe.
    pub(super) fn unknown_client(&self) -> Value {
        let mut r = self.error_map("402::Unknown client".to_owned());
        r.insert(
            "advice".into(),
            json!({"reconnect": "handshake", "interval": 0}),
        );
        Value::Object(r)
    }
}

pub(super) fn lone_error(error: &str) -> Value {
    json!({"successful": false, "error": error})
}

impl CometdHub {
    /// Processes one POSTed batch from `agent` (already authenticated); returns the reply
    /// array. A `/meta/connect` that is the batch's last message is held up to `timeout`
    /// (less if the client asks via `advice.timeout`), until an event is queued for the
    /// session, a newer connect arrives, the session ends, or [`CometdHub::shutdown`].
    pub async fn handle(&self, agent: &str, body: Value) -> Value {
        let messages = match body {
            Value::Array(messages) => messages,
            msg @ Value::Object(_) => vec![msg],
            _ => {
                return json!([lone_error(
                    "400::Malformed message: the body must be a JSON array or object"
                )]);
            }
        };
        if messages.is_empty() {
            return json!([lone_error("400::Malformed message: empty batch")]);
        }
        if messages.len() > MAX_BATCH {
            return json!([lone_error(&format!(
                "400::Too many messages in one batch (at most {MAX_BATCH})"
            ))]);
        }
        let last = messages.len() - 1;
        let mut replies = Vec::with_capacity(messages.len());
        for (i, msg) in messages.iter().enumerate() {
            self.handle_one(agent, msg, i == last, &mut replies).await;
        }
        Value::Array(replies)
    }

    async fn handle_one(
        &self,
        agent: &str,
        msg: &Value,
        last_in_batch: bool,
        replies: &mut Vec<Value>,
    ) {
        let Some(obj) = msg.as_object() else {
            replies.push(lone_error("400::Malformed message: not a JSON object"));
            return;
        };
        let id = obj.get("id").filter(|id| id.is_string() || id.is_number());
        let channel = match obj.get("channel") {
            Some(Value::String(c)) => c.as_str(),
            _ => {
                let mut r = Map::new();
                if let Some(id) = id {
                    r.insert("id".into(), id.clone());
                }
                r.insert("successful".into(), Value::Bool(false));
                r.insert(
                    "error".into(),
                    Value::String("400::Malformed message: missing channel".into()),
                );
                replies.push(Value::Object(r));
                return;
            }
        };
        let m = Incoming {
            channel,
            id,
            msg: obj,
        };
        match channel {
            "/meta/handshake" => replies.push(self.handshake(agent, &m)),
            "/meta/connect" => self.connect(agent, &m, last_in_batch, replies).await,
            "/meta/subscribe" => replies.push(self.subscribe(agent, &m, true)),
            "/meta/unsubscribe" => replies.push(self.subscribe(agent, &m, false)),
            "/meta/disconnect" => replies.push(self.disconnect(agent, &m)),
            c if c.starts_with("/meta/") => {
                replies.push(m.error(format!("400:{c}:Unknown meta channel")))
            }
            _ => replies.push(self.client_publish(agent, &m)),
        }
    }

    fn handshake(&self, agent: &str, m: &Incoming<'_>) -> Value {
        let fail = |error: String, reconnect: &str, interval: Duration| {
            let mut r = m.reply();
            r.insert("successful".into(), Value::Bool(false));
            r.insert("error".into(), Value::String(error));
            r.insert(
                "advice".into(),
                json!({"reconnect": reconnect, "interval": ms(interval)}),
            );
            Value::Object(r)
        };
        match m.msg.get("version") {
            Some(Value::String(v)) if v.starts_with('1') => {}
            Some(Value::String(v)) => {
                return fail(
                    format!("300:{}:Unsupported version", truncate(v)),
                    "none",
                    Duration::ZERO,
                );
            }
            _ => {
                return fail(
                    "400::Malformed handshake: missing version".into(),
                    "none",
                    Duration::ZERO,
                );
            }
        }
        match m.msg.get("supportedConnectionTypes") {
            Some(Value::Array(types)) if types.iter().any(|t| t.as_str() == Some(LONG_POLLING)) => {
            }
            Some(Value::Array(_)) => {
                return fail(
                    format!("301:{LONG_POLLING}:Unsupported connection types"),
                    "none",
                    Duration::ZERO,
                );
            }
            _ => {
                return fail(
                    "400::Malformed handshake: missing supportedConnectionTypes".into(),
                    "none",
                    Duration::ZERO,
                );
            }
        }
        let ack = m.msg.get("ext").and_then(|e| e.get("ack")) == Some(&Value::Bool(true));

        let mut st = self.lock();
        let now = sweep(&mut st);
        let live = st.agents.get(agent).map_or(0, HashMap::len);
        if live >= self.inner.config.max_sessions_per_agent {
            drop(st);
            tracing::warn!(agent, live, "CometD handshake refused: too many sessions");
            // Stale sessions expire within maxInterval: retrying after it can succeed.
            return fail(
                "403::Too many sessions".into(),
                "handshake",
                self.inner.config.max_interval,
            );
        }
        let client_id = loop {
            let id = new_client_id(&mut st.rng);
            if !st.agents.get(agent).is_some_and(|s| s.contains_key(&id)) {
                break id;
            }
        };
        st.agents
            .entry(agent.to_owned())
            .or_default()
            .insert(client_id.clone(), Session::new(ack, now + self.grace()));
        *st.handshakes.entry(agent.to_owned()).or_default() += 1;
        drop(st);
        tracing::debug!(agent, ack, "CometD handshake");

        let mut r = m.reply();
        r.insert("version".into(), json!("1.0"));
        r.insert("supportedConnectionTypes".into(), json!([LONG_POLLING]));
        r.insert("clientId".into(), Value::String(client_id));
        r.insert("successful".into(), Value::Bool(true));
        r.insert("advice".into(), self.advice());
        if ack {
            r.insert("ext".into(), json!({"ack": true}));
        }
        Value::Object(r)
    }

    fn subscribe(&self, agent: &str, m: &Incoming<'_>, subscribe: bool) -> Value {
        let Some(client_id) = m.client_id() else {
            return m.unknown_client();
        };
        let raw = m.msg.get("subscription");
        let channels: Vec<&str> = match raw {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_SUBSCRIPTIONS => {
                match items.iter().map(Value::as_str).collect::<Option<Vec<_>>>() {
                    Some(v) => v,
                    None => return m.error("400::Malformed subscription: not a string".into()),
                }
            }
            Some(Value::Array(_)) => {
                return m.error(format!(
                    "400::Malformed subscription: 1 to {MAX_SUBSCRIPTIONS} channels"
                ));
            }
            _ => return m.error("400::Malformed subscription: missing subscription".into()),
        };
        for c in &channels {
            if c.starts_with("/meta/") || *c == "/meta" {
                return m.error(format!("403:{}:Forbidden meta channel", truncate(c)));
            }
            if let Err(why) = validate_channel(c, true) {
                return m.error(format!("403:{}:{why}", truncate(c)));
            }
        }

        let mut st = self.lock();
        sweep(&mut st);
        let Some(session) = st.agents.get_mut(agent).and_then(|s| s.get_mut(client_id)) else {
            return m.unknown_client();
        };
        if subscribe {
            let new = channels
                .iter()
                .filter(|c| !session.subscriptions.contains(**c))
                .count();
            if session.subscriptions.len() + new > MAX_SUBSCRIPTIONS {
                return m.error(format!(
                    "403::Too many subscriptions (at most {MAX_SUBSCRIPTIONS})"
                ));
            }
            session
                .subscriptions
                .extend(channels.iter().map(|c| (*c).to_owned()));
        } else {
            for c in &channels {
                session.subscriptions.remove(*c);
            }
        }
        drop(st);

        let mut r = m.reply();
        r.insert("clientId".into(), Value::String(client_id.to_owned()));
        r.insert("subscription".into(), raw.cloned().unwrap_or(Value::Null));
        r.insert("successful".into(), Value::Bool(true));
        Value::Object(r)
    }

    fn disconnect(&self, agent: &str, m: &Incoming<'_>) -> Value {
        let Some(client_id) = m.client_id() else {
            return m.unknown_client();
        };
        let removed = {
            let mut st = self.lock();
            sweep(&mut st);
            remove_session(&mut st, agent, client_id)
        };
        let Some(session) = removed else {
            return m.unknown_client();
        };
        session.end(Wake::Disconnected);
        let mut r = m.reply();
        r.insert("clientId".into(), Value::String(client_id.to_owned()));
        r.insert("successful".into(), Value::Bool(true));
        Value::Object(r)
    }

    /// A client publishing on a broadcast channel: delivered to the same agent's
    /// subscribers only (sessions never cross agents). `/service/` messages go nowhere.
    fn client_publish(&self, agent: &str, m: &Incoming<'_>) -> Value {
        let known = m.client_id().is_some_and(|c| {
            let mut st = self.lock();
            sweep(&mut st);
            st.agents.get(agent).is_some_and(|s| s.contains_key(c))
        });
        if !known {
            return m.unknown_client();
        }
        if let Err(why) = validate_channel(m.channel, false) {
            return m.error(format!("400:{}:{why}", truncate(m.channel)));
        }
        let Some(data) = m.msg.get("data") else {
            return m.error("400::Malformed publish: missing data".into());
        };
        if !m.channel.starts_with("/service/") {
            self.publish(agent, m.channel, data.clone());
        }
        let mut r = m.reply();
        r.insert("successful".into(), Value::Bool(true));
        Value::Object(r)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::cometd::session::CLIENT_ID_BYTES;

    #[tokio::test]
    async fn handshake_subscribe_connect_publish_delivers() {
        let hub = hub();
        let r = send(
            &hub,
            A,
            json!({"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling", "websocket"], "id": "7"}),
        )
        .await;
        let h = meta(&r, "/meta/handshake");
        assert_eq!(h["successful"], true);
        assert_eq!(h["id"], "7");
        assert_eq!(h["supportedConnectionTypes"], json!(["long-polling"]));
        assert_eq!(
            h["advice"],
            json!({"reconnect": "retry", "interval": 0, "timeout": 30_000, "maxInterval": 15_000})
        );
        let client = h["clientId"].as_str().expect("clientId").to_owned();
        assert_eq!(client.len(), 2 * CLIENT_ID_BYTES);

        let s = subscribe(&hub, A, &client, json!(SMS)).await;
        assert_eq!(s["successful"], true, "{s}");
        assert_eq!(s["subscription"], SMS);
        assert_eq!(s["clientId"], client.as_str());

        // The first connect asks for timeout 0 and returns at once, empty.
        let r = connect(&hub, A, &client, Some(0)).await;
        assert!(events(&r).is_empty());
        let c = meta(&r, "/meta/connect");
        assert_eq!(c["successful"], true);
        assert_eq!(c["id"], "c");
        assert_eq!(c["advice"]["reconnect"], "retry");

        assert_eq!(hub.publish(A, SMS, json!({"messageType": "X", "n": 1})), 1);
        assert_eq!(hub.publish(A, SMS, json!({"n": 2})), 1);
        assert_eq!(
            hub.publish(A, "/v2/me/calls", json!({"n": 3})),
            0,
            "not subscribed"
        );
        assert_eq!(hub.publish(B, SMS, json!({"n": 4})), 0, "other agent");

        let r = connect(&hub, A, &client, None).await;
        let ev = events(&r);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0]["channel"], SMS);
        assert_eq!(ev[0]["data"], json!({"messageType": "X", "n": 1}));
        assert_eq!(ev[1]["data"]["n"], 2);
        assert_ne!(ev[0]["id"], ev[1]["id"]);
        assert_eq!(meta(&r, "/meta/connect")["successful"], true);
        assert_eq!(hub.session_count(A), 1);
        assert_eq!(hub.handshake_count(A), 1);
        assert_eq!(hub.handshake_count(B), 0);
    }

    #[tokio::test]
    async fn client_id_of_another_agent_is_unknown() {
        let hub = hub();
        let a = handshake(&hub, A).await;
        subscribe(&hub, A, &a, json!(SMS)).await;

        assert_402(meta(&connect(&hub, B, &a, Some(0)).await, "/meta/connect"));
        assert_402(&subscribe(&hub, B, &a, json!(SMS)).await);
        let r = send(
            &hub,
            B,
            json!({"channel": "/meta/unsubscribe", "clientId": a, "subscription": SMS}),
        )
        .await;
        assert_402(meta(&r, "/meta/unsubscribe"));
        let r = send(
            &hub,
            B,
            json!({"channel": "/meta/disconnect", "clientId": a}),
        )
        .await;
        assert_402(meta(&r, "/meta/disconnect"));
        let r = send(&hub, B, json!({"channel": SMS, "clientId": a, "data": {}})).await;
        assert_402(&r[0]);

        // A's session is untouched and still receives its events.
        assert_eq!(hub.session_count(A), 1);
        assert_eq!(hub.session_count(B), 0);
        assert_eq!(hub.publish(A, SMS, json!("x")), 1);
        assert_eq!(events(&connect(&hub, A, &a, Some(0)).await).len(), 1);
    }

    #[tokio::test]
    async fn unknown_or_missing_client_id_gets_handshake_advice() {
        let hub = hub();
        assert_402(meta(&connect(&hub, A, "nope", None).await, "/meta/connect"));
        let r = send(
            &hub,
            A,
            json!({"channel": "/meta/connect", "connectionType": "long-polling"}),
        )
        .await;
        assert_402(&r[0]);
        let r = send(
            &hub,
            A,
            json!({"channel": "/meta/subscribe", "clientId": 5, "subscription": SMS}),
        )
        .await;
        assert_402(&r[0]);
    }

    #[tokio::test]
    async fn sessions_per_agent_are_capped() {
        let hub = hub_with(|c| c.max_sessions_per_agent = 2);
        handshake(&hub, A).await;
        handshake(&hub, A).await;
        let r = send(&hub, A, json!({"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling"]})).await;
        let h = meta(&r, "/meta/handshake");
        assert_eq!(h["successful"], false);
        assert!(
            h["error"].as_str().is_some_and(|e| e.starts_with("403:")),
            "{h}"
        );
        assert_eq!(h["advice"]["reconnect"], "handshake");
        assert_eq!(hub.handshake_count(A), 2);
        // The cap is per agent.
        handshake(&hub, B).await;
    }

    #[tokio::test]
    async fn subscription_errors() {
        let hub = hub();
        let c = handshake(&hub, A).await;
        for (sub, code) in [
            (json!("/meta/connect"), "403:"),
            (json!("/meta/*"), "403:"),
            (json!(["/ok", "/meta/handshake"]), "403:"),
            (json!("no-slash"), "403:"),
            (json!("/a/*/b"), "403:"),
            (json!("/a//b"), "403:"),
            (json!(5), "400:"),
            (json!([]), "400:"),
            (json!(["/a", 1]), "400:"),
            (json!(null), "400:"),
        ] {
            let r = subscribe(&hub, A, &c, sub.clone()).await;
            assert_eq!(r["successful"], false, "{sub}");
            assert!(
                r["error"].as_str().is_some_and(|e| e.starts_with(code)),
                "{sub}: {r}"
            );
        }
        // Nothing of a rejected batch was applied.
        assert_eq!(hub.publish(A, "/ok", json!(1)), 0);
        // Subscriptions per session are bounded.
        let many: Vec<String> = (0..MAX_SUBSCRIPTIONS).map(|i| format!("/c/{i}")).collect();
        assert_eq!(
            subscribe(&hub, A, &c, json!(many)).await["successful"],
            true
        );
        let r = subscribe(&hub, A, &c, json!("/one/more")).await;
        assert_eq!(r["successful"], false, "{r}");
    }

    #[tokio::test]
    async fn malformed_input_gets_error_replies() {
        let hub = hub();
        for body in [json!("x"), json!(5), json!(null), json!([])] {
            let r = send(&hub, A, body.clone()).await;
            assert_eq!(r.len(), 1, "{body}");
            assert_eq!(r[0]["successful"], false, "{body}");
        }
        let too_many: Vec<Value> = (0..=MAX_BATCH)
            .map(|_| json!({"channel": "/meta/connect"}))
            .collect();
        let r = send(&hub, A, Value::Array(too_many)).await;
        assert_eq!((r.len(), r[0]["successful"].clone()), (1, json!(false)));

        let c = handshake(&hub, A).await;
        let r = send(
            &hub,
            A,
            json!([
                7,
                {"id": "m1"},
                {"channel": 5},
                {"channel": "/meta/bogus", "id": "m2"},
                {"channel": "/meta/connect", "clientId": c, "connectionType": "websocket"},
                {"channel": "/meta/handshake", "version": "1.0"},
                {"channel": "/meta/handshake", "supportedConnectionTypes": ["long-polling"]},
                {"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["callback-polling"]},
                {"channel": "/meta/handshake", "version": "2.0", "supportedConnectionTypes": ["long-polling"]},
                {"channel": "/a/b", "clientId": c},
                {"channel": "/a/*", "clientId": c, "data": 1},
            ]),
        )
        .await;
        assert_eq!(r.len(), 11, "one reply per message: {r:?}");
        for reply in &r {
            assert_eq!(reply["successful"], false, "{reply}");
            assert!(
                reply["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("30") || e.starts_with("40")),
                "{reply}"
            );
        }
        assert_eq!(r[1]["id"], "m1");
        assert_eq!(r[3]["id"], "m2");
        assert_eq!(r[3]["channel"], "/meta/bogus");
        assert_eq!(r[7]["advice"]["reconnect"], "none");
        assert_eq!(
            hub.handshake_count(A),
            1,
            "failed handshakes create nothing"
        );
    }

    #[tokio::test]
    async fn client_publish_reaches_the_same_agents_subscribers() {
        let hub = hub();
        let c = handshake(&hub, A).await;
        subscribe(&hub, A, &c, json!("/chat/*")).await;
        let r = send(
            &hub,
            A,
            json!({"channel": "/chat/x", "clientId": c, "data": {"t": 1}, "id": "p"}),
        )
        .await;
        assert_eq!(
            (r[0]["successful"].clone(), r[0]["id"].clone()),
            (json!(true), json!("p"))
        );
        let r = send(
            &hub,
            A,
            json!({"channel": "/service/echo", "clientId": c, "data": 1}),
        )
        .await;
        assert_eq!(r[0]["successful"], true);
        let got = connect(&hub, A, &c, Some(0)).await;
        assert_eq!(events(&got).len(), 1);
        assert_eq!(events(&got)[0]["data"]["t"], 1);
    }
}
