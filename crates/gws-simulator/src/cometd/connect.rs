//! `/meta/connect`, the long-poll: a connect with nothing queued is parked (one per session;
//! a newer one releases the older) until an event is queued, the hold times out, the
//! session ends or the hub shuts down; then the queue is delivered ahead of the connect
//! reply, with batch ids when the acknowledgement extension was negotiated. Its own file
//! because it is the one handler that waits, and the guard that undoes a parking when
//! the HTTP request is dropped mid-wait belongs beside it.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::channel::truncate;
use super::meta::Incoming;
use super::session::{Parked, Session, Wake};
use super::sweep::{now, sweep};
use super::{CometdHub, LONG_POLLING};

impl CometdHub {
    pub(super) async fn connect(
        &self,
        agent: &str,
        m: &Incoming<'_>,
        last_in_batch: bool,
        replies: &mut Vec<Value>,
    ) {
        let Some(client_id) = m.client_id() else {
            replies.push(m.unknown_client());
            return;
        };
        if let Some(t) = m.msg.get("connectionType")
            && t.as_str() != Some(LONG_POLLING)
        {
            replies.push(m.error(format!(
                "302:{}:Unsupported connection type",
                truncate(&t.to_string())
            )));
            return;
        }
        // The client may ask for a shorter hold (the first connect sends timeout 0), never longer.
        let hold = match m
            .msg
            .get("advice")
            .and_then(|a| a.get("timeout"))
            .and_then(Value::as_u64)
        {
            Some(t) => Duration::from_millis(t).min(self.inner.config.timeout),
            None => self.inner.config.timeout,
        };
        let client_ack = m
            .msg
            .get("ext")
            .and_then(|e| e.get("ack"))
            .and_then(Value::as_u64);

        let (park_id, rx) = {
            let mut st = self.lock();
            let now = sweep(&mut st);
            let shutting_down = st.shutting_down;
            let park_id = st.next_park_id;
            let Some(session) = st.agents.get_mut(agent).and_then(|s| s.get_mut(client_id)) else {
                replies.push(m.unknown_client());
                return;
            };
            // One outstanding connect per client: a newer one releases the older.
            if let Some(mut old) = session.parked.take() {
                old.wake(Wake::Replaced);
            }
            if session.ack_batch.is_some()
                && let Some(acked) = client_ack
            {
                session.queue.retain(|q| q.batch.is_none_or(|b| b > acked));
            }
            if !session.queue.is_empty() || hold.is_zero() || !last_in_batch || shutting_down {
                self.connect_reply(session, now, m, replies);
                return;
            }
            let (tx, rx) = oneshot::channel();
            session.parked = Some(Parked {
                id: park_id,
                wake: Some(tx),
            });
            session.expires_at = None;
            st.next_park_id += 1;
            (park_id, rx)
        };

        let guard = ParkGuard {
            hub: self,
            agent,
            client_id,
            park_id,
            armed: true,
        };
        let woken = match tokio::time::timeout(hold, rx).await {
            Ok(Ok(why)) => Some(why),
            // Timed out, or the sender was dropped without a word: look at the state.
            Ok(Err(_)) | Err(_) => None,
        };
        guard.disarm();

        let mut st = self.lock();
        let now = now(&st);
        let Some(session) = st.agents.get_mut(agent).and_then(|s| s.get_mut(client_id)) else {
            if woken == Some(Wake::Disconnected) {
                // The client itself disconnected: tell the released connect to stop.
                let mut r = m.reply();
                r.insert("clientId".into(), Value::String(client_id.to_owned()));
                r.insert("successful".into(), Value::Bool(true));
                r.insert("advice".into(), json!({"reconnect": "none", "interval": 0}));
                replies.push(Value::Object(r));
            } else {
                replies.push(m.unknown_client());
            }
            return;
        };
        if session.parked.as_ref().map(|p| p.id) != Some(park_id) {
            // Replaced by a newer connect, which owns the queue now: return empty-handed.
            let mut r = m.reply();
            r.insert("clientId".into(), Value::String(client_id.to_owned()));
            r.insert("successful".into(), Value::Bool(true));
            r.insert("advice".into(), self.advice());
            replies.push(Value::Object(r));
            return;
        }
        session.parked = None;
        self.connect_reply(session, now, m, replies);
    }

    /// Delivers the session's queue (events first, then the connect reply) and starts
    /// the `maxInterval` clock.
    fn connect_reply(
        &self,
        session: &mut Session,
        now: Instant,
        m: &Incoming<'_>,
        replies: &mut Vec<Value>,
    ) {
        session.expires_at = Some(now + self.grace());
        let mut r = m.reply();
        match session.ack_batch.as_mut() {
            None => replies.extend(session.queue.drain(..).map(|q| q.message)),
            Some(batch) => {
                // Everything unacknowledged goes out again, stamped with a new batch id;
                // it stays queued until a later connect acknowledges that id.
                *batch += 1;
                let b = *batch;
                for q in &mut session.queue {
                    q.batch = Some(b);
                    replies.push(q.message.clone());
                }
                r.insert("ext".into(), json!({"ack": b}));
            }
        }
        if let Some(c) = m.client_id() {
            r.insert("clientId".into(), Value::String(c.to_owned()));
        }
        r.insert("successful".into(), Value::Bool(true));
        r.insert("advice".into(), self.advice());
        replies.push(Value::Object(r));
    }
}

/// Restores a parked connect's session to "not parked, expiring" when the request
/// future is dropped mid-wait (the HTTP client went away): otherwise the session would
/// count as connected forever and never expire.
struct ParkGuard<'a> {
    hub: &'a CometdHub,
    agent: &'a str,
    client_id: &'a str,
    park_id: u64,
    armed: bool,
}

impl ParkGuard<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for ParkGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let grace = self.hub.grace();
        let mut st = self.hub.lock();
        let now = now(&st);
        if let Some(session) = st
            .agents
            .get_mut(self.agent)
            .and_then(|s| s.get_mut(self.client_id))
            && session.parked.as_ref().map(|p| p.id) == Some(self.park_id)
        {
            session.parked = None;
            session.expires_at = Some(now + grace);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[tokio::test]
    async fn parked_connect_is_released_by_publish() {
        let hub = hub();
        let c = handshake(&hub, A).await;
        subscribe(&hub, A, &c, json!(SMS)).await;
        let parked = parked_connect(&hub, A, &c).await;
        assert_eq!(hub.publish(A, SMS, json!({"hello": 1})), 1);
        let r = join(parked).await;
        assert_eq!(events(&r).len(), 1);
        assert_eq!(events(&r)[0]["data"]["hello"], 1);
        assert_eq!(meta(&r, "/meta/connect")["successful"], true);
        assert_eq!(hub.parked_count(), 0);
    }

    #[tokio::test]
    async fn parked_connect_is_released_by_timeout() {
        let hub = hub_with(|c| c.timeout = Duration::from_millis(20));
        let c = handshake(&hub, A).await;
        let r = connect(&hub, A, &c, None).await;
        assert!(events(&r).is_empty());
        assert_eq!(meta(&r, "/meta/connect")["successful"], true);
        assert_eq!(meta(&r, "/meta/connect")["advice"]["timeout"], 20);
        // A client asking for more than the server's timeout gets the server's.
        let r = connect(&hub, A, &c, Some(3_600_000)).await;
        assert_eq!(meta(&r, "/meta/connect")["successful"], true);
        assert_eq!(hub.session_count(A), 1);
    }

    #[tokio::test]
    async fn second_connect_releases_the_first() {
        let hub = hub();
        let c = handshake(&hub, A).await;
        subscribe(&hub, A, &c, json!(SMS)).await;
        let first = parked_connect(&hub, A, &c).await;
        // The second connect parks in place of the first (parked_count stays 1, so wait
        // for the first to finish instead).
        let (h, cid) = (hub.clone(), c.clone());
        let second = tokio::spawn(async move { connect(&h, A, &cid, None).await });
        let r1 = join(first).await;
        assert!(events(&r1).is_empty());
        assert_eq!(meta(&r1, "/meta/connect")["successful"], true);
        while hub.parked_count() == 0 {
            tokio::task::yield_now().await;
        }
        hub.publish(A, SMS, json!("for the second"));
        let r2 = join(second).await;
        assert_eq!(events(&r2)[0]["data"], "for the second");
    }

    #[tokio::test]
    async fn disconnect_releases_the_parked_connect_and_ends_the_session() {
        let hub = hub();
        let c = handshake(&hub, A).await;
        let parked = parked_connect(&hub, A, &c).await;
        let r = send(
            &hub,
            A,
            json!({"channel": "/meta/disconnect", "clientId": c, "id": "d"}),
        )
        .await;
        let d = meta(&r, "/meta/disconnect");
        assert_eq!(
            (d["successful"].clone(), d["id"].clone()),
            (json!(true), json!("d"))
        );
        let r = join(parked).await;
        let released = meta(&r, "/meta/connect");
        assert_eq!(released["successful"], true);
        assert_eq!(released["advice"]["reconnect"], "none");
        assert_eq!(hub.session_count(A), 0);
        assert_402(meta(&connect(&hub, A, &c, Some(0)).await, "/meta/connect"));
    }

    #[tokio::test]
    async fn a_batch_connect_that_is_not_last_does_not_block() {
        let hub = hub();
        let c = handshake(&hub, A).await;
        let r = send(
            &hub,
            A,
            json!([connect_msg(&c, None), {"channel": "/meta/subscribe", "clientId": c, "subscription": SMS}]),
        )
        .await;
        assert_eq!(meta(&r, "/meta/connect")["successful"], true);
        assert_eq!(meta(&r, "/meta/subscribe")["successful"], true);
    }

    #[tokio::test]
    async fn ack_extension_redelivers_unacknowledged_batches() {
        let hub = hub();
        let r = send(
            &hub,
            A,
            json!({"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling"], "ext": {"ack": true}}),
        )
        .await;
        let h = meta(&r, "/meta/handshake");
        assert_eq!(h["ext"]["ack"], true);
        let c = h["clientId"].as_str().expect("clientId").to_owned();
        subscribe(&hub, A, &c, json!(SMS)).await;

        let ack_connect = |ack: u64| {
            json!({"channel": "/meta/connect", "clientId": c, "connectionType": "long-polling",
                                             "advice": {"timeout": 0}, "ext": {"ack": ack}})
        };
        let r = send(&hub, A, ack_connect(0)).await;
        assert_eq!(meta(&r, "/meta/connect")["ext"]["ack"], 1);

        hub.publish(A, SMS, json!("e1"));
        let r = send(&hub, A, ack_connect(1)).await;
        assert_eq!(events(&r).len(), 1);
        assert_eq!(meta(&r, "/meta/connect")["ext"]["ack"], 2);

        // That reply was "lost": the client acks 1 again and gets e1 once more, with e2.
        hub.publish(A, SMS, json!("e2"));
        let r = send(&hub, A, ack_connect(1)).await;
        let data: Vec<_> = events(&r).iter().map(|e| e["data"].clone()).collect();
        assert_eq!(data, vec![json!("e1"), json!("e2")]);
        assert_eq!(meta(&r, "/meta/connect")["ext"]["ack"], 3);

        // Acknowledged: nothing comes back.
        let r = send(&hub, A, ack_connect(3)).await;
        assert!(events(&r).is_empty());

        // Without the extension negotiated, connect replies carry no batch ids.
        let plain = handshake(&hub, A).await;
        let r = connect(&hub, A, &plain, Some(0)).await;
        assert!(meta(&r, "/meta/connect").get("ext").is_none());
    }
}
