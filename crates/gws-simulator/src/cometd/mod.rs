//! The simulator's CometD hub: a Bayeux server, long-polling only, faithful enough to GWS
//! (CometD 3) that the gateway's Bayeux client can be tested against it. The HTTP layer
//! authenticates the agent and hands each POSTed batch to [`CometdHub::handle`]; the
//! simulator's REST side calls [`CometdHub::publish`] to emit notifications.
//!
//! Sessions belong to the agent that handshook: a `clientId` is looked up only among the
//! sessions of the agent on the request, so agent B presenting agent A's `clientId` gets
//! `402::Unknown client` exactly as if it had guessed. Everything is bounded: messages per
//! batch, sessions per agent, subscriptions per session, queued events per session (a
//! full queue drops the session, see [`CometdHub::publish`]). Sessions that stop
//! connecting expire after `interval + max_interval`, swept lazily on every call. The
//! optional acknowledgement extension (`ext:{ack:true}`) is implemented: connect replies
//! carry batch ids and unacknowledged batches are delivered again.
//!
//! All state sits behind one `std` mutex that is never held across an `.await`; a parked
//! `/meta/connect` waits on a oneshot that publishers, a newer connect, disconnects,
//! server-side drops and shutdown fire while holding the lock, so no wake-up is lost.
//!
//! Layout: `session` holds the hub's state and what a session is, `meta` the batch and the
//! handshake, subscribe, disconnect and publish messages, `connect` the long-poll, `channel`
//! the channel-name rules and `sweep` expiry; this file holds the hub, its configuration
//! and what the rest of the simulator calls (publish, drops, counts, shutdown).

mod channel;
mod connect;
mod meta;
mod session;
mod sweep;
#[cfg(test)]
mod testing;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

use channel::{channel_matches, validate_channel};
use session::{Queued, State, Wake, fallback_seed, remove_session};
use sweep::sweep;

/// The only connection type this hub serves.
pub const LONG_POLLING: &str = "long-polling";

/// Timing and bounds of the hub. Defaults are GWS's CometD defaults.
#[derive(Debug, Clone)]
pub struct CometdConfig {
    /// How long a `/meta/connect` is held when nothing is queued (advice `timeout`).
    pub timeout: Duration,
    /// How long clients should wait between connects (advice `interval`).
    pub interval: Duration,
    /// How long a session lives without a connect after a connect reply (advice `maxInterval`).
    pub max_interval: Duration,
    /// Events queued per session (with the ack extension: sent but unacknowledged ones too).
    pub max_queue: usize,
    /// Live sessions one agent may hold; further handshakes are refused until one ends.
    pub max_sessions_per_agent: usize,
}

impl Default for CometdConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            interval: Duration::ZERO,
            max_interval: Duration::from_secs(15),
            max_queue: 1000,
            max_sessions_per_agent: 64,
        }
    }
}

/// The Bayeux server state: cheap to clone, shared by every HTTP request.
#[derive(Clone)]
pub struct CometdHub {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CometdHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No session ids: they are bearer secrets.
        f.debug_struct("CometdHub")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: CometdConfig,
    state: Mutex<State>,
}

impl CometdHub {
    /// A hub with no sessions.
    pub fn new(config: CometdConfig) -> Self {
        let rng = StdRng::try_from_os_rng().unwrap_or_else(|err| {
            tracing::warn!(%err, "OS random source unavailable; seeding clientIds from the std hasher keys");
            StdRng::from_seed(fallback_seed())
        });
        Self {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State {
                    agents: HashMap::new(),
                    handshakes: HashMap::new(),
                    rng,
                    next_message_id: 0,
                    next_park_id: 0,
                    shutting_down: false,
                    #[cfg(test)]
                    skew: Duration::ZERO,
                }),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock must not take the simulator down;
        // the state is a plain map that stays consistent between statements.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn advice(&self) -> Value {
        let c = &self.inner.config;
        json!({
            "reconnect": "retry",
            "interval": ms(c.interval),
            "timeout": ms(c.timeout),
            "maxInterval": ms(c.max_interval),
        })
    }

    /// Queues `data` on `channel` for every session of `agent` subscribed to a matching
    /// channel (exact, `/a/*`, `/a/**`) and wakes their parked connects. Returns how many
    /// sessions got it; an invalid, wildcard or meta `channel` reaches none.
    ///
    /// A session whose queue already holds `max_queue` events is dropped instead: its
    /// client is not keeping up (or not connecting), and dropping it makes the next connect
    /// answer `402` with handshake advice, so the client learns it lost events and
    /// re-handshakes. Silently discarding events would hide the loss.
    pub fn publish(&self, agent: &str, channel: &str, data: Value) -> usize {
        if validate_channel(channel, false).is_err() || channel.starts_with("/meta/") {
            return 0;
        }
        let max_queue = self.inner.config.max_queue;
        let mut st = self.lock();
        sweep(&mut st);
        let message_id = st.next_message_id;
        st.next_message_id += 1;
        let message = json!({"channel": channel, "data": data, "id": message_id.to_string()});
        let Some(sessions) = st.agents.get_mut(agent) else {
            return 0;
        };
        let mut delivered = 0;
        let mut overflowed = Vec::new();
        for (client_id, session) in sessions.iter_mut() {
            if !session
                .subscriptions
                .iter()
                .any(|p| channel_matches(p, channel))
            {
                continue;
            }
            if session.queue.len() >= max_queue {
                overflowed.push(client_id.clone());
                continue;
            }
            session.queue.push_back(Queued {
                batch: None,
                message: message.clone(),
            });
            if let Some(p) = session.parked.as_mut() {
                p.wake(Wake::Message);
            }
            delivered += 1;
        }
        for client_id in overflowed {
            if let Some(session) = remove_session(&mut st, agent, &client_id) {
                tracing::warn!(agent, max_queue, "CometD session dropped: event queue full");
                session.end(Wake::Dropped);
            }
        }
        delivered
    }

    /// Server-side drop of all of `agent`'s sessions: the next connect of each gets
    /// `402` with handshake advice (a parked one gets it at once). Returns how many.
    pub fn drop_sessions(&self, agent: &str) -> usize {
        let sessions = {
            let mut st = self.lock();
            // Expired sessions are already gone: do not count them as dropped.
            sweep(&mut st);
            st.agents.remove(agent).unwrap_or_default()
        };
        let n = sessions.len();
        for session in sessions.into_values() {
            session.end(Wake::Dropped);
        }
        n
    }

    /// Number of live sessions of `agent`.
    pub fn session_count(&self, agent: &str) -> usize {
        let mut st = self.lock();
        sweep(&mut st);
        st.agents.get(agent).map_or(0, HashMap::len)
    }

    /// Total handshakes `agent` has made since start (successful ones).
    pub fn handshake_count(&self, agent: &str) -> u64 {
        self.lock().handshakes.get(agent).copied().unwrap_or(0)
    }

    /// Releases every parked connect (process shutdown); later connects return at once.
    pub fn shutdown(&self) {
        let mut st = self.lock();
        st.shutting_down = true;
        for session in st.agents.values_mut().flat_map(HashMap::values_mut) {
            if let Some(p) = session.parked.as_mut() {
                p.wake(Wake::Shutdown);
            }
        }
    }

    /// How many connects are parked (tests wait for this before publishing).
    #[cfg(test)]
    fn parked_count(&self) -> usize {
        self.lock()
            .agents
            .values()
            .flat_map(HashMap::values)
            .filter(|s| s.parked.is_some())
            .count()
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use std::collections::HashSet;

    #[tokio::test]
    async fn many_sessions_are_counted_per_agent() {
        let hub = hub();
        let mut ids = HashSet::new();
        for _ in 0..5 {
            ids.insert(handshake(&hub, A).await);
        }
        handshake(&hub, B).await;
        assert_eq!(ids.len(), 5, "clientIds are unique");
        assert_eq!((hub.session_count(A), hub.handshake_count(A)), (5, 5));
        assert_eq!((hub.session_count(B), hub.handshake_count(B)), (1, 1));
    }

    #[tokio::test]
    async fn pattern_subscriptions_match_one_or_many_segments() {
        let hub = hub();
        let one = handshake(&hub, A).await;
        let many = handshake(&hub, A).await;
        let exact = handshake(&hub, A).await;
        assert_eq!(
            subscribe(&hub, A, &one, json!("/v2/me/*")).await["successful"],
            true
        );
        assert_eq!(
            subscribe(&hub, A, &many, json!(["/v2/**", "/other"])).await["successful"],
            true
        );
        assert_eq!(
            subscribe(&hub, A, &exact, json!(SMS)).await["successful"],
            true
        );

        assert_eq!(hub.publish(A, SMS, json!(1)), 3);
        assert_eq!(
            hub.publish(A, "/v2/me/smssessions/x", json!(2)),
            1,
            "only /v2/**"
        );
        assert_eq!(
            hub.publish(A, "/v2/me", json!(3)),
            1,
            "/v2/me/* needs one more segment"
        );
        assert_eq!(hub.publish(A, "/v2", json!(4)), 0);
        assert_eq!(hub.publish(A, "/other", json!(5)), 1);
        assert_eq!(
            hub.publish(A, "/v2/me/*", json!(6)),
            0,
            "wildcards are not publishable"
        );

        let got = |r: Vec<Value>| {
            events(&r)
                .iter()
                .map(|e| e["data"].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(got(connect(&hub, A, &one, Some(0)).await), vec![json!(1)]);
        assert_eq!(
            got(connect(&hub, A, &many, Some(0)).await),
            vec![json!(1), json!(2), json!(3), json!(5)]
        );
        assert_eq!(got(connect(&hub, A, &exact, Some(0)).await), vec![json!(1)]);

        // Unsubscribing stops delivery.
        let r = send(
            &hub,
            A,
            json!({"channel": "/meta/unsubscribe", "clientId": exact, "subscription": SMS}),
        )
        .await;
        assert_eq!(meta(&r, "/meta/unsubscribe")["successful"], true);
        assert_eq!(hub.publish(A, SMS, json!(7)), 2);
    }

    #[tokio::test]
    async fn drop_sessions_makes_the_next_connect_rehandshake() {
        let hub = hub();
        let a1 = handshake(&hub, A).await;
        let a2 = handshake(&hub, A).await;
        let b = handshake(&hub, B).await;
        let parked = parked_connect(&hub, A, &a1).await;

        assert_eq!(hub.drop_sessions(A), 2);
        assert_eq!(hub.session_count(A), 0);
        // The parked connect is released at once with the same advice.
        assert_402(meta(&join(parked).await, "/meta/connect"));
        assert_402(meta(&connect(&hub, A, &a2, Some(0)).await, "/meta/connect"));
        assert_eq!(hub.drop_sessions(A), 0);
        // Another agent is unaffected.
        assert_eq!(
            meta(&connect(&hub, B, &b, Some(0)).await, "/meta/connect")["successful"],
            true
        );
        // A re-handshake works and counts.
        handshake(&hub, A).await;
        assert_eq!((hub.session_count(A), hub.handshake_count(A)), (1, 3));
    }

    #[tokio::test]
    async fn full_queue_drops_the_session() {
        let hub = hub_with(|c| c.max_queue = 3);
        let slow = handshake(&hub, A).await;
        let fast = handshake(&hub, A).await;
        subscribe(&hub, A, &slow, json!(SMS)).await;
        subscribe(&hub, A, &fast, json!(SMS)).await;
        for i in 0..3 {
            assert_eq!(hub.publish(A, SMS, json!(i)), 2);
        }
        assert_eq!(events(&connect(&hub, A, &fast, Some(0)).await).len(), 3);
        // The slow session's queue is full: it is dropped, the fast one gets the event.
        assert_eq!(hub.publish(A, SMS, json!(3)), 1);
        assert_eq!(hub.session_count(A), 1);
        assert_402(meta(
            &connect(&hub, A, &slow, Some(0)).await,
            "/meta/connect",
        ));
    }

    #[tokio::test]
    async fn shutdown_releases_parked_connects() {
        let hub = hub();
        let c1 = handshake(&hub, A).await;
        let c2 = handshake(&hub, B).await;
        let p1 = parked_connect(&hub, A, &c1).await;
        let p2 = parked_connect(&hub, B, &c2).await;
        hub.shutdown();
        assert_eq!(meta(&join(p1).await, "/meta/connect")["successful"], true);
        assert_eq!(meta(&join(p2).await, "/meta/connect")["successful"], true);
        // Later connects do not park.
        assert_eq!(
            meta(&connect(&hub, A, &c1, None).await, "/meta/connect")["successful"],
            true
        );
    }
}
