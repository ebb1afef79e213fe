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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// The only connection type this hub serves.
pub const LONG_POLLING: &str = "long-polling";
/// Most messages accepted in one POSTed batch; a real client sends a handful.
const MAX_BATCH: usize = 64;
/// Most subscriptions (channels and patterns) one session may hold.
const MAX_SUBSCRIPTIONS: usize = 64;
/// Longest channel name accepted, in bytes.
const MAX_CHANNEL_LEN: usize = 256;
/// Random bytes in a clientId: 160 bits, unguessable.
const CLIENT_ID_BYTES: usize = 20;

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

struct State {
    /// Live sessions by agent; an agent with no session has no entry.
    agents: HashMap<String, HashMap<String, Session>>,
    /// Handshakes per agent since start. Grows by one small entry per distinct agent,
    /// and agents are authenticated before they reach the hub, so it stays bounded by the
    /// simulator's user list.
    handshakes: HashMap<String, u64>,
    /// A CSPRNG seeded once from the OS: clientIds must be unguessable.
    rng: StdRng,
    next_message_id: u64,
    next_park_id: u64,
    shutting_down: bool,
    /// Test-only clock skew, so expiry is testable without sleeping.
    #[cfg(test)]
    skew: Duration,
}

struct Session {
    /// Channels and patterns (`/a/*`, `/a/**`) this session receives.
    subscriptions: HashSet<String>,
    /// Events not yet delivered (with ack: not yet acknowledged).
    queue: VecDeque<Queued>,
    /// The one outstanding `/meta/connect`, if parked.
    parked: Option<Parked>,
    /// When the session expires without a connect; `None` while a connect is parked.
    expires_at: Option<Instant>,
    /// Ack extension state: the last batch id sent, when negotiated.
    ack_batch: Option<u64>,
}

struct Queued {
    /// The batch it was sent in (ack extension); `None` until sent.
    batch: Option<u64>,
    message: Value,
}

struct Parked {
    id: u64,
    /// Fired at most once; taken by whoever wakes the connect.
    wake: Option<oneshot::Sender<Wake>>,
}

/// Why a parked connect was woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Message,
    Replaced,
    Disconnected,
    Dropped,
    Shutdown,
}

impl Parked {
    fn wake(&mut self, why: Wake) {
        if let Some(tx) = self.wake.take() {
            // The receiver is gone when the HTTP request was cancelled: nothing to wake.
            let _ = tx.send(why);
        }
    }
}

impl Session {
    fn new(ack: bool, expires_at: Instant) -> Self {
        Self {
            subscriptions: HashSet::new(),
            queue: VecDeque::new(),
            parked: None,
            expires_at: Some(expires_at),
            ack_batch: ack.then_some(0),
        }
    }

    /// Wakes the parked connect (if any) because the session is ending.
    fn end(mut self, why: Wake) {
        if let Some(p) = self.parked.as_mut() {
            p.wake(why);
        }
    }
}

/// The parts of one incoming message every handler needs.
struct Incoming<'a> {
    channel: &'a str,
    id: Option<&'a Value>,
    msg: &'a Map<String, Value>,
}

impl Incoming<'_> {
    fn client_id(&self) -> Option<&str> {
        self.msg.get("clientId").and_then(Value::as_str)
    }

    /// A reply on this message's channel, echoing its `id`.
    fn reply(&self) -> Map<String, Value> {
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

    fn error(&self, error: String) -> Value {
        Value::Object(self.error_map(error))
    }

    /// `402::Unknown client` with handshake advice: the session is gone (or never was
    /// this agent's), so the client must handshake and re-subscribe.
    fn unknown_client(&self) -> Value {
        let mut r = self.error_map("402::Unknown client".to_owned());
        r.insert(
            "advice".into(),
            json!({"reconnect": "handshake", "interval": 0}),
        );
        Value::Object(r)
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn lone_error(error: &str) -> Value {
    json!({"successful": false, "error": error})
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

    /// How long after a reply a session survives without a connect. Capped at a day so
    /// `Instant + grace` cannot overflow whatever the configuration says.
    fn grace(&self) -> Duration {
        const CAP: Duration = Duration::from_secs(24 * 3600);
        self.inner
            .config
            .interval
            .saturating_add(self.inner.config.max_interval)
            .min(CAP)
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

    async fn connect(
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

    /// Moves the hub's clock forward (expiry only; hold timeouts use tokio's clock).
    #[cfg(test)]
    fn advance_clock(&self, by: Duration) {
        self.lock().skew += by;
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

fn now(st: &State) -> Instant {
    let now = Instant::now();
    #[cfg(test)]
    let now = now + st.skew;
    #[cfg(not(test))]
    let _ = st;
    now
}

/// Removes expired sessions (and agents left with none); returns the current time.
fn sweep(st: &mut State) -> Instant {
    let now = now(st);
    st.agents.retain(|agent, sessions| {
        sessions.retain(|_, s| {
            let live = s.expires_at.is_none_or(|t| t > now);
            if !live {
                tracing::debug!(agent, "CometD session expired");
            }
            live
        });
        !sessions.is_empty()
    });
    now
}

fn remove_session(st: &mut State, agent: &str, client_id: &str) -> Option<Session> {
    let sessions = st.agents.get_mut(agent)?;
    let session = sessions.remove(client_id);
    if sessions.is_empty() {
        st.agents.remove(agent);
    }
    session
}

fn new_client_id(rng: &mut StdRng) -> String {
    let mut bytes = [0u8; CLIENT_ID_BYTES];
    rng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A seed from the std hasher's per-process random keys: only used when the OS random
/// source fails, which `new` cannot report (its signature is fixed).
fn fallback_seed() -> [u8; 32] {
    use std::hash::BuildHasher;
    let mut seed = [0u8; 32];
    for (i, chunk) in seed.chunks_mut(8).enumerate() {
        let h = std::collections::hash_map::RandomState::new()
            .hash_one((i, std::time::SystemTime::now()));
        chunk.copy_from_slice(&h.to_le_bytes());
    }
    seed
}

/// A channel name for error messages, cut short.
fn truncate(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_owned(),
    }
}

/// `Ok` when `name` is a valid channel: `/seg/seg...`, non-empty segments of printable
/// characters; with `wildcards`, the last segment may be `*` or `**`.
fn validate_channel(name: &str, wildcards: bool) -> Result<(), &'static str> {
    if name.len() > MAX_CHANNEL_LEN {
        return Err("Channel name too long");
    }
    let Some(rest) = name.strip_prefix('/') else {
        return Err("Invalid channel");
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        if seg.is_empty() || seg.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("Invalid channel");
        }
        if seg.contains('*') {
            let wildcard_ok = wildcards && i == last && (*seg == "*" || *seg == "**");
            if !wildcard_ok {
                return Err("Invalid channel");
            }
        }
    }
    Ok(())
}

/// Whether subscription `pattern` matches the concrete `channel`: exact, `/a/*` (one more
/// segment) or `/a/**` (one or more).
fn channel_matches(pattern: &str, channel: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix("/**") {
        channel
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('/'))
            .is_some_and(|rest| !rest.is_empty())
    } else if let Some(prefix) = pattern.strip_suffix("/*") {
        channel
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('/'))
            .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
    } else {
        pattern == channel
    }
}

#[cfg(test)]
mod tests {
    //! The hub driven through `handle` as the HTTP layer would. Hold timeouts are a few
    //! milliseconds of tokio time (the crate does not enable tokio's `test-util`, so time
    //! cannot be paused); expiry uses the hub's test clock skew; a parked connect is
    //! observed through `parked_count` before anything is published, never by sleeping.

    use super::*;

    const A: &str = "agent-a";
    const B: &str = "agent-b";
    const SMS: &str = "/v2/me/smssessions";

    fn hub() -> CometdHub {
        CometdHub::new(CometdConfig::default())
    }

    fn hub_with(f: impl FnOnce(&mut CometdConfig)) -> CometdHub {
        let mut c = CometdConfig::default();
        f(&mut c);
        CometdHub::new(c)
    }

    async fn send(hub: &CometdHub, agent: &str, msg: Value) -> Vec<Value> {
        match hub.handle(agent, msg).await {
            Value::Array(replies) => replies,
            other => panic!("reply is not an array: {other}"),
        }
    }

    /// The one reply on `channel` (a meta reply among events).
    fn meta<'a>(replies: &'a [Value], channel: &str) -> &'a Value {
        let found: Vec<_> = replies
            .iter()
            .filter(|r| r["channel"] == channel && r.get("data").is_none())
            .collect();
        assert_eq!(found.len(), 1, "one {channel} reply in {replies:?}");
        found[0]
    }

    fn events(replies: &[Value]) -> Vec<&Value> {
        replies.iter().filter(|r| r.get("data").is_some()).collect()
    }

    async fn handshake(hub: &CometdHub, agent: &str) -> String {
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

    async fn subscribe(hub: &CometdHub, agent: &str, client: &str, sub: Value) -> Value {
        let r = send(hub, agent, json!([{"channel": "/meta/subscribe", "clientId": client, "subscription": sub, "id": "2"}])).await;
        meta(&r, "/meta/subscribe").clone()
    }

    fn connect_msg(client: &str, timeout: Option<u64>) -> Value {
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

    async fn connect(
        hub: &CometdHub,
        agent: &str,
        client: &str,
        timeout: Option<u64>,
    ) -> Vec<Value> {
        send(hub, agent, connect_msg(client, timeout)).await
    }

    fn assert_402(reply: &Value) {
        assert_eq!(reply["successful"], false, "{reply}");
        assert_eq!(reply["error"], "402::Unknown client", "{reply}");
        assert_eq!(reply["advice"]["reconnect"], "handshake", "{reply}");
        assert_eq!(reply["advice"]["interval"], 0, "{reply}");
    }

    /// Spawns a connect and returns once it is parked.
    async fn parked_connect(
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

    async fn join(task: tokio::task::JoinHandle<Vec<Value>>) -> Vec<Value> {
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("connect released")
            .expect("task ok")
    }

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

    #[test]
    fn channel_matching_and_validation() {
        assert!(channel_matches("/a/*", "/a/b"));
        assert!(!channel_matches("/a/*", "/a/b/c"));
        assert!(!channel_matches("/a/*", "/a"));
        assert!(!channel_matches("/a/*", "/ab/c"));
        assert!(channel_matches("/a/**", "/a/b/c"));
        assert!(!channel_matches("/a/**", "/a"));
        assert!(!channel_matches("/a/**", "/ab/c"));
        assert!(channel_matches("/**", "/x/y"));
        assert!(channel_matches("/a", "/a"));
        for ok in ["/a", "/a/b", "/a/*", "/a/**", "/**"] {
            assert!(validate_channel(ok, true).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a",
            "/",
            "/a/",
            "//a",
            "/a b",
            "/a/*/b",
            "/a*",
            "/a/***",
            &format!("/{}", "x".repeat(300)),
        ] {
            assert!(validate_channel(bad, true).is_err(), "{bad}");
        }
        assert!(validate_channel("/a/*", false).is_err());
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

    #[tokio::test]
    async fn sessions_expire_without_connects() {
        let hub = hub();
        let idle = handshake(&hub, A).await;
        let active = handshake(&hub, A).await;
        hub.advance_clock(Duration::from_secs(10));
        connect(&hub, A, &active, Some(0)).await;
        hub.advance_clock(Duration::from_secs(6));
        // idle: 16 s since its handshake > maxInterval 15 s; active: 6 s since its connect.
        assert_eq!(hub.session_count(A), 1);
        assert_402(meta(
            &connect(&hub, A, &idle, Some(0)).await,
            "/meta/connect",
        ));
        assert_eq!(
            meta(&connect(&hub, A, &active, Some(0)).await, "/meta/connect")["successful"],
            true
        );
        hub.advance_clock(Duration::from_secs(16));
        assert_eq!(hub.session_count(A), 0);
    }

    #[tokio::test]
    async fn a_parked_connect_keeps_the_session_alive_and_a_cancelled_one_does_not() {
        let hub = hub();
        let c = handshake(&hub, A).await;
        let parked = parked_connect(&hub, A, &c).await;
        hub.advance_clock(Duration::from_secs(3600));
        assert_eq!(hub.session_count(A), 1, "parked: not expiring");
        // The HTTP client goes away mid-poll: the request future is dropped.
        parked.abort();
        let _ = parked.await;
        assert_eq!(hub.parked_count(), 0);
        assert_eq!(hub.session_count(A), 1);
        hub.advance_clock(Duration::from_secs(16));
        assert_eq!(hub.session_count(A), 0, "expires after the cancelled poll");
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
