//! The hub's state and the CometD sessions in it: per agent, the sessions it handshook (by
//! `clientId`), each with its subscriptions, its queue of undelivered events and at most
//! one parked `/meta/connect`, plus the ways a parked connect is woken. Kept apart from the
//! message handlers so that what a session *is* (and the bounds on it) reads in one place;
//! only the hub's lock ever reaches these types.

use std::collections::{HashMap, HashSet, VecDeque};
#[cfg(test)]
use std::time::Duration;

use rand::RngCore;
use rand::rngs::StdRng;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Most subscriptions (channels and patterns) one session may hold.
pub(super) const MAX_SUBSCRIPTIONS: usize = 64;
/// Random bytes in a clientId: 160 bits, unguessable.
pub(super) const CLIENT_ID_BYTES: usize = 20;

pub(super) struct State {
    /// Live sessions by agent; an agent with no session has no entry.
    pub(super) agents: HashMap<String, HashMap<String, Session>>,
    /// Handshakes per agent since start. Grows by one small entry per distinct agent,
    /// and agents are authenticated before they reach the hub, so it stays bounded by the
    /// simulator's user list.
    pub(super) handshakes: HashMap<String, u64>,
    /// A CSPRNG seeded once from the OS: clientIds must be unguessable.
    pub(super) rng: StdRng,
    pub(super) next_message_id: u64,
    pub(super) next_park_id: u64,
    pub(super) shutting_down: bool,
    /// Test-only clock skew, so expiry is testable without sleeping.
    #[cfg(test)]
    pub(super) skew: Duration,
}

pub(super) struct Session {
    /// Channels and patterns (`/a/*`, `/a/**`) this session receives.
    pub(super) subscriptions: HashSet<String>,
    /// Events not yet delivered (with ack: not yet acknowledged).
    pub(super) queue: VecDeque<Queued>,
    /// The one outstanding `/meta/connect`, if parked.
    pub(super) parked: Option<Parked>,
    /// When the session expires without a connect; `None` while a connect is parked.
    pub(super) expires_at: Option<Instant>,
    /// Ack extension state: the last batch id sent, when negotiated.
    pub(super) ack_batch: Option<u64>,
}

pub(super) struct Queued {
    /// The batch it was sent in (ack extension); `None` until sent.
    pub(super) batch: Option<u64>,
    pub(super) message: Value,
}

pub(super) struct Parked {
    pub(super) id: u64,
    /// Fired at most once; taken by whoever wakes the connect.
    pub(super) wake: Option<oneshot::Sender<Wake>>,
}

/// Why a parked connect was woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wake {
    Message,
    Replaced,
    Disconnected,
    Dropped,
    Shutdown,
}

impl Parked {
    pub(super) fn wake(&mut self, why: Wake) {
        if let Some(tx) = self.wake.take() {
            // The receiver is gone when the HTTP request was cancelled: nothing to wake.
            let _ = tx.send(why);
        }
    }
}

impl Session {
    pub(super) fn new(ack: bool, expires_at: Instant) -> Self {
        Self {
            subscriptions: HashSet::new(),
            queue: VecDeque::new(),
            parked: None,
            expires_at: Some(expires_at),
            ack_batch: ack.then_some(0),
        }
    }

    /// Wakes the parked connect (if any) because the session is ending.
    pub(super) fn end(mut self, why: Wake) {
        if let Some(p) = self.parked.as_mut() {
            p.wake(why);
        }
    }
}

pub(super) fn remove_session(st: &mut State, agent: &str, client_id: &str) -> Option<Session> {
    let sessions = st.agents.get_mut(agent)?;
    let session = sessions.remove(client_id);
    if sessions.is_empty() {
        st.agents.remove(agent);
    }
    session
}

pub(super) fn new_client_id(rng: &mut StdRng) -> String {
    let mut bytes = [0u8; CLIENT_ID_BYTES];
    rng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A seed from the std hasher's per-process random keys: only used when the OS random
/// source fails, which `new` cannot report (its signature is fixed).
pub(super) fn fallback_seed() -> [u8; 32] {
    use std::hash::BuildHasher;
    let mut seed = [0u8; 32];
    for (i, chunk) in seed.chunks_mut(8).enumerate() {
        let h = std::collections::hash_map::RandomState::new()
            .hash_one((i, std::time::SystemTime::now()));
        chunk.copy_from_slice(&h.to_le_bytes());
    }
    seed
}
