//! One agent's feed: the single upstream CometD session all of that agent's streams share,
//! its replay buffer, and the subscribers it fans out to.
//!
//! Fan-out policy: each subscriber has a bounded queue; delivery never waits. A subscriber
//! whose queue is full is cut off alone (its stream ends with RESOURCE_EXHAUSTED carrying its
//! last delivered token, so it can resume from the replay buffer); the others are not delayed.
//! Items are shared (`Arc`) by the replay buffer and every queue, never copied per subscriber.

use super::EventsError;
use super::filter::Filter;
use super::outcome::Waiters;
use super::replay::{ReplayBuffer, Stored, Token};
use crate::bayeux::{self, BayeuxConfig, BayeuxEvent};
use crate::mapping::{self, Notification};
use crate::proto::{
    NoticeKind, NotificationType, SessionEventsResponse, SessionSnapshot, SmsSession, StreamNotice,
    session_events_response::Event,
};
use crate::upstream::{Agent, GwsClient, Read, UpstreamError};
use prost::Message as _;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// The upstream CometD session as the feed's subscribers see it.
#[derive(Debug, Clone, PartialEq)]
pub enum Upstream {
    Connecting,
    Subscribed,
    Lost,
    /// Ended for good; the feed is being removed. Set before the subscribers are ended, so a
    /// subscriber that checks it under the feed lock never joins a dead feed.
    Failed(EventsError),
}

/// Why a subscriber's queue was closed by the feed (read by its stream once drained).
pub type EndReason = Arc<Mutex<Option<EventsError>>>;

/// One stream item, shared by the replay buffer, every subscriber's queue and the wire.
pub type Item = super::SharedItem;

struct Slot {
    tx: mpsc::Sender<Item>,
    filter: Filter,
    end: EndReason,
    /// While a snapshot is read after a restore, this subscriber's live items wait here, so
    /// the snapshot is delivered first (bounded like its queue).
    held: Option<Vec<Item>>,
    /// The position of the last item queued: where the stream resumes if it is cut.
    last_seq: u64,
}

pub struct FeedState {
    slots: HashMap<u64, Slot>,
    /// Calls waiting for their operation's notification (`wait_for_outcome`).
    pub waiters: Waiters,
    next_slot: u64,
    /// Subscribers registered or still waiting for the upstream subscription.
    pub interest: usize,
    pub replay: ReplayBuffer,
    /// Notifications that could not be mapped (logged and counted, never fatal).
    pub unmapped: u64,
}

impl FeedState {
    pub fn slots_len(&self) -> usize {
        self.slots.len()
    }
}

pub struct Feed {
    pub agent: Arc<Agent>,
    pub epoch: u64,
    seq: Arc<AtomicU64>,
    state: Mutex<FeedState>,
    pub status: watch::Sender<Upstream>,
    /// Ends the upstream session (the Bayeux client disconnects).
    pub cancel: CancellationToken,
    /// Counts resyncs (snapshot reads after restores), so only the newest one is delivered.
    snapshot_generation: AtomicU64,
}

impl Feed {
    pub fn new(agent: Arc<Agent>, epoch: u64, seq: Arc<AtomicU64>, replay: ReplayBuffer) -> Self {
        let waiters = Waiters::new(agent.unsettled().clone());
        Self {
            agent,
            epoch,
            seq,
            state: Mutex::new(FeedState {
                slots: HashMap::new(),
                waiters,
                next_slot: 0,
                interest: 0,
                replay,
                unmapped: 0,
            }),
            status: watch::Sender::new(Upstream::Connecting),
            cancel: CancellationToken::new(),
            snapshot_generation: AtomicU64::new(0),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn token(&self, seq: u64) -> String {
        Token {
            epoch: self.epoch,
            seq,
        }
        .encode()
    }

    /// Registers a subscriber's queue; returns its slot id. Call with the lock held, after
    /// checking the feed has not failed.
    pub fn add_slot(
        state: &mut FeedState,
        tx: mpsc::Sender<Item>,
        filter: Filter,
        end: EndReason,
    ) -> u64 {
        let id = state.next_slot;
        state.next_slot += 1;
        let last_seq = state.replay.last_seq();
        state.slots.insert(
            id,
            Slot {
                tx,
                filter,
                end,
                held: None,
                last_seq,
            },
        );
        id
    }

    /// The subscriber's stream is gone. If it was cut for being slow, its resume position
    /// stays pinned for the resume window from now.
    pub fn remove_slot(&self, id: u64) {
        let mut state = self.lock();
        state.slots.remove(&id);
        state.replay.release(id, Instant::now());
    }

    /// Whether a stream resuming from `token` now would get everything after it.
    /// (`slot` is the cut stream's: only its pin makes the promise.)
    pub fn resumable(&self, slot: u64, token: &str) -> bool {
        Token::parse(token)
            .is_some_and(|t| t.epoch == self.epoch && self.lock().replay.holds_for(slot, t.seq))
    }

    /// The error that ended this feed, if it has ended.
    pub fn failure(&self) -> Option<EventsError> {
        match &*self.status.borrow() {
            Upstream::Failed(e) => Some(e.clone()),
            _ => None,
        }
    }

    /// Applies one event of the Bayeux client. True when it restored a lost upstream (the
    /// moment snapshot takers need a fresh snapshot).
    pub fn on_bayeux(&self, event: BayeuxEvent) -> bool {
        match event {
            BayeuxEvent::Message { channel, data } => self.on_message(&channel, &data),
            BayeuxEvent::Subscribed { restored } => {
                let was = self.status.send_replace(Upstream::Subscribed);
                // A fresh session after a restart (new CSRF token) counts as restored too.
                if restored || was == Upstream::Lost {
                    crate::metrics::COMETD_HANDSHAKES.inc(["rehandshake"]);
                    tracing::info!(agent = ?self.agent.key(), "upstream notifications restored");
                    self.notify(
                        NoticeKind::UpstreamRestored,
                        "re-handshaked and re-subscribed upstream; events may have been missed while it was lost",
                    );
                    return true;
                }
                crate::metrics::COMETD_HANDSHAKES.inc(["initial"]);
                tracing::info!(agent = ?self.agent.key(), "upstream notifications subscribed");
            }
            BayeuxEvent::Lost { reason } => {
                tracing::warn!(agent = ?self.agent.key(), %reason, "upstream notifications lost");
                self.status.send_replace(Upstream::Lost);
                self.notify(
                    NoticeKind::UpstreamLost,
                    &format!("upstream CometD session lost: {reason}"),
                );
            }
            BayeuxEvent::Failed {
                reason,
                http_status,
            } => {
                tracing::warn!(agent = ?self.agent.key(), %reason, ?http_status, "upstream notifications failed");
                let error = match http_status {
                    Some(http_status @ (401 | 403)) => EventsError::Upstream(UpstreamError::Http {
                        http_status,
                        excerpt: reason,
                    }),
                    _ => EventsError::Ended(reason),
                };
                self.fail(error);
            }
        }
        false
    }

    /// Ends every subscriber with `error` (after what they already have queued), unless the
    /// feed already failed.
    pub fn fail(&self, error: EventsError) {
        let mut state = self.lock();
        if self.failure().is_some() {
            return;
        }
        self.status.send_replace(Upstream::Failed(error.clone()));
        // Waiting calls see their confirmation channel closed: UNCONFIRMED, never a guess.
        state.waiters.clear();
        for (_, slot) in state.slots.drain() {
            *slot.end.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.clone());
        }
    }

    fn on_message(&self, channel: &str, data: &serde_json::Value) {
        let event = match mapping::map_notification(data) {
            Ok(event) => {
                crate::metrics::NOTIFICATIONS.inc([event.label()]);
                event
            }
            Err(error) => {
                // Received all the same: counted, of a kind the gateway cannot tell.
                crate::metrics::NOTIFICATIONS.inc([Notification::OTHER]);
                crate::metrics::NOTIFICATIONS_UNMAPPED.inc();
                let unmapped = {
                    let mut state = self.lock();
                    state.unmapped += 1;
                    state.unmapped
                };
                tracing::warn!(agent = ?self.agent.key(), channel, %error, unmapped, "notification could not be mapped; skipped");
                return;
            }
        };
        let session_id = event.session_id().to_string();
        let notification_type = event.notification_type();
        let proto_event = match event {
            Notification::StateChange(change) => Event::StateChange(change),
            Notification::MessageLog(log) => Event::MessageLog(log),
        };
        let mut state = self.lock();
        let stored = self.store(&mut state, proto_event, session_id, notification_type);
        state.waiters.offer(&stored.response);
        Self::fan_out(&mut state, &stored);
    }

    /// Gives `event` the next sequence number and keeps it in the replay buffer. Call with
    /// the lock held: the sequence number is allocated under it, so this agent's buffer
    /// stays in order.
    fn store(
        &self,
        state: &mut FeedState,
        event: Event,
        session_id: String,
        notification_type: Option<NotificationType>,
    ) -> Arc<Stored> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let response = Item::new(SessionEventsResponse {
            resume_token: self.token(seq),
            receive_time: Some(SystemTime::now().into()),
            event: Some(event),
        });
        let stored = Arc::new(Stored {
            seq,
            at: Instant::now(),
            // Encodes the item, once: every stream then sends these bytes.
            bytes: response.encoded_len(),
            session_id,
            notification_type,
            response,
        });
        state.replay.push(stored.clone());
        stored
    }

    /// Queues a stored item for every subscriber that wants it; full queues are cut off.
    fn fan_out(state: &mut FeedState, stored: &Stored) {
        let replay = &mut state.replay;
        state
            .slots
            .retain(|id, slot| match slot.filter.select(stored) {
                Some(item) => deliver(slot, &item, stored.seq) || cut(replay, *id, slot),
                None => true,
            });
    }

    /// After a restore: the subscribers that asked for snapshots hold their live items until
    /// the snapshot read for this restore is delivered ([`Feed::end_resync`]). Returns the
    /// position (resume token) the snapshot stands at, and the resync's generation; `None`
    /// when no subscriber asked for snapshots.
    pub fn begin_resync(&self) -> Option<(String, u64)> {
        let mut state = self.lock();
        let mut any = false;
        for slot in state.slots.values_mut() {
            if slot.filter.include_snapshot {
                slot.held.get_or_insert_with(Vec::new);
                any = true;
            }
        }
        any.then(|| {
            let generation = self.snapshot_generation.fetch_add(1, Ordering::SeqCst) + 1;
            (self.token(state.replay.last_seq()), generation)
        })
    }

    /// Delivers a resync's snapshot (or, when the read failed, a GAP notice saying so) to
    /// the subscribers that asked for snapshots, then what they held meanwhile. A newer
    /// resync supersedes an older one still under way.
    pub fn end_resync(&self, generation: u64, result: Result<Item, String>) {
        let mut state = self.lock();
        if self.snapshot_generation.load(Ordering::SeqCst) != generation {
            return;
        }
        let first = result.unwrap_or_else(|why| {
            notice(
                NoticeKind::Gap,
                &format!(
                    "snapshot read after restore failed: {why}; the sessions' state is unknown"
                ),
                self.token(state.replay.last_seq()),
            )
        });
        let state = &mut *state;
        let replay = &mut state.replay;
        state.slots.retain(|id, slot| {
            let Some(held) = slot.held.take() else {
                return true;
            };
            let first = match &first.event {
                Some(Event::Snapshot(_)) => slot.filter.snapshot(&first),
                _ => Some(first.clone()),
            };
            first
                .iter()
                .chain(held.iter())
                .all(|item| offer(slot, item, seq_of(item)))
                || cut(replay, *id, slot)
        });
    }

    /// Sends a notice to every subscriber.
    fn notify(&self, kind: NoticeKind, detail: &str) {
        let mut state = self.lock();
        let seq = state.replay.last_seq();
        let response = notice(kind, detail, self.token(seq));
        let state = &mut *state;
        let replay = &mut state.replay;
        state
            .slots
            .retain(|id, slot| deliver(slot, &response, seq) || cut(replay, *id, slot));
    }
}

/// The position an item stands at (its resume token's sequence number).
fn seq_of(item: &Item) -> u64 {
    Token::parse(&item.resume_token).map_or(0, |t| t.seq)
}

/// A subscriber is dropped for a full queue: if it was cut for being slow, pin its resume
/// position so the promise in its RESOURCE_EXHAUSTED holds. Always false (drop the slot).
fn cut(replay: &mut ReplayBuffer, id: u64, slot: &Slot) -> bool {
    let slow = matches!(
        *slot.end.lock().unwrap_or_else(|e| e.into_inner()),
        Some(EventsError::SlowConsumer { .. })
    );
    if slow {
        replay.pin(id, slot.last_seq);
    }
    false
}

/// Queues `item` (standing at `seq`) for one subscriber, or holds it while a resync is under
/// way; never waits. False drops the slot (its queue, or what it may hold, is full).
fn deliver(slot: &mut Slot, item: &Item, seq: u64) -> bool {
    match &mut slot.held {
        None => offer(slot, item, seq),
        Some(held) if held.len() < slot.tx.max_capacity() => {
            held.push(item.clone());
            true
        }
        Some(_) => {
            *slot.end.lock().unwrap_or_else(|e| e.into_inner()) = Some(EventsError::SlowConsumer {
                last_resume_token: String::new(),
                resumable: false,
            });
            false
        }
    }
}

/// Queues `item` for one subscriber without waiting; false drops the slot.
fn offer(slot: &mut Slot, item: &Item, seq: u64) -> bool {
    match slot.tx.try_send(item.clone()) {
        Ok(()) => {
            slot.last_seq = seq;
            true
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            // The stream fills in its own last delivered token when it reports this.
            *slot.end.lock().unwrap_or_else(|e| e.into_inner()) = Some(EventsError::SlowConsumer {
                last_resume_token: String::new(),
                resumable: false,
            });
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

pub fn notice(kind: NoticeKind, detail: &str, resume_token: String) -> Item {
    Item::new(SessionEventsResponse {
        resume_token,
        receive_time: Some(SystemTime::now().into()),
        event: Some(Event::Notice(StreamNotice {
            kind: kind as i32,
            detail: detail.to_string(),
        })),
    })
}

/// The agent's sessions, read with `GET /api/v2/me/smssessions` and mapped as
/// notifications are; the error as a caller may see it.
pub async fn read_snapshot(
    gws: &GwsClient,
    agent: &Agent,
    timeout: Duration,
) -> Result<Vec<SmsSession>, String> {
    let reply = gws
        .feed_read(agent, &Read::Sessions, timeout)
        .await
        .map_err(|e| e.to_string())?;
    mapping::map_sessions(&reply).map_err(|e| e.to_string())
}

/// After a restore: one snapshot read for the whole feed, delivered to every stream that
/// asked for snapshots, positioned at the restore.
async fn resync(feed: Arc<Feed>, gws: GwsClient, timeout: Duration) {
    let Some((token, generation)) = feed.begin_resync() else {
        return;
    };
    let read = tokio::select! {
        _ = feed.cancel.cancelled() => return,
        r = read_snapshot(&gws, &feed.agent, timeout) => r,
    };
    if let Err(why) = &read {
        tracing::warn!(agent = ?feed.agent.key(), %why, "snapshot read after restore failed");
    }
    feed.end_resync(generation, read.map(|sessions| snapshot(sessions, token)));
}

/// A snapshot item standing at `resume_token`: the position the read was asked for, so a
/// client resuming from it gets everything after, never less (some of it may already be
/// in the snapshot). Snapshots are not kept in the replay buffer: a stream that resumes
/// with `include_snapshot` reads a fresh one, and a multi-MiB snapshot must not evict the
/// notifications other streams resume from.
pub fn snapshot(sessions: Vec<SmsSession>, resume_token: String) -> Item {
    Item::new(SessionEventsResponse {
        resume_token,
        receive_time: Some(SystemTime::now().into()),
        event: Some(Event::Snapshot(SessionSnapshot { sessions })),
    })
}

/// Runs the agent's upstream session until the feed is cancelled or the session fails, then
/// closes the feed so no subscriber can wait on it any more.
///
/// Every CometD request carries the agent's CSRF header (learnt with `GET /api/v2/me` when
/// not known). When GWS refuses a request with 401/403, the token is fetched again and the
/// session started afresh, once; a second refusal in a row ends the feed.
pub async fn pump(feed: Arc<Feed>, config: BayeuxConfig, gws: GwsClient, read_timeout: Duration) {
    let mut refreshed = false;
    loop {
        let mut session = config.clone();
        match gws
            .feed_csrf_header(&feed.agent, refreshed, config.request_timeout)
            .await
        {
            Ok(Some((name, value))) => {
                session.headers.insert(name, value);
            }
            Ok(None) => {}
            Err(error) => {
                feed.fail(EventsError::Upstream(error));
                return;
            }
        }
        crate::telemetry::insert_trace_headers(&mut session.headers);
        let (tx, mut rx) = mpsc::channel(256);
        let client = tokio::spawn(crate::telemetry::propagate(bayeux::run(
            gws.http().clone(),
            feed.agent.clone(),
            session,
            tx,
            feed.cancel.clone(),
        )));
        let mut refused = false;
        while let Some(event) = rx.recv().await {
            match event {
                BayeuxEvent::Failed {
                    http_status: Some(401 | 403),
                    ..
                } if !refreshed => refused = true,
                BayeuxEvent::Subscribed { .. } => {
                    refreshed = false;
                    if feed.on_bayeux(event) {
                        tokio::spawn(crate::telemetry::propagate(resync(
                            feed.clone(),
                            gws.clone(),
                            read_timeout,
                        )));
                    }
                }
                other => {
                    feed.on_bayeux(other);
                }
            }
        }
        if client.await.is_err() {
            feed.fail(EventsError::Ended(
                "upstream notification client stopped unexpectedly".into(),
            ));
            return;
        }
        if !refused || feed.cancel.is_cancelled() {
            break;
        }
        refreshed = true;
        if *feed.status.borrow() == Upstream::Subscribed {
            feed.on_bayeux(BayeuxEvent::Lost {
                reason: "GWS refused the session; fetching a new CSRF token".into(),
            });
        }
    }
    feed.fail(EventsError::Ended(
        "upstream notification session closed".into(),
    ));
}
