//! One agent's feed: the I/O shell around its synchronous [`Core`], and the upstream CometD
//! session ([`pump`]) that produces its events.
//!
//! The seam: [`pump`] runs the agent's CometD session and hands what it learns
//! ([`Upstreamed`]) to a [`Sink`]. In a single process the sink is the feed itself
//! ([`LocalSink`]: numbered by the process counter, applied to the core at once); in cluster
//! mode the owner's sink publishes to the agent's JetStream subject and every replica's feed
//! is fed by its consumer of that subject (`crate::cluster`).

use super::EventsError;
use super::item::Item;
use super::replay::Stored;
use super::state::{Core, Effect, Input, Upstream};
use crate::bayeux::{self, BayeuxConfig, BayeuxEvent};
use crate::mapping::{self, Notification};
use crate::proto::{
    NotificationType, SessionEventsResponse, SmsSession, session_events_response::Event,
};
use crate::upstream::{Agent, GwsClient, Read, UpstreamError};
use prost::Message as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct Feed {
    pub agent: Arc<Agent>,
    core: Mutex<Core>,
    /// What the core's status is, for those waiting on it (updated under the core's lock).
    pub status: watch::Sender<Upstream>,
    /// Ends the feed's source (the upstream session, or the stream consumer).
    pub cancel: CancellationToken,
}

impl Feed {
    pub fn new(agent: Arc<Agent>, core: Core) -> Self {
        Self {
            agent,
            core: Mutex::new(core),
            status: watch::Sender::new(Upstream::Connecting),
            cancel: CancellationToken::new(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one input to the core, with the lock held only for it.
    pub fn apply(&self, input: Input) -> Effect {
        let mut core = self.lock();
        self.apply_locked(&mut core, input)
    }

    /// [`Feed::apply`] for a caller that already holds the lock (it numbers under it).
    pub fn apply_locked(&self, core: &mut Core, input: Input) -> Effect {
        let effect = core.apply(input);
        if *self.status.borrow() != *core.status() {
            self.status.send_replace(core.status().clone());
        }
        effect
    }

    /// Ends every subscriber with `error` (after what they already have queued), unless the
    /// feed already failed.
    pub fn fail(&self, error: EventsError) {
        self.apply(Input::Failed(error));
    }

    /// The subscriber's stream is gone (see [`Core::leave`]).
    pub fn remove_slot(&self, id: u64) {
        self.lock().leave(id, Instant::now());
    }

    pub fn resumable(&self, slot: u64, token: &str) -> bool {
        self.lock().resumable(slot, token)
    }
}

/// What the upstream session learnt, in order. (Events are most of what flows: boxing them
/// to shrink the rare variants would cost an allocation each.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Upstreamed {
    /// A notification, mapped.
    Event {
        event: Event,
        session_id: String,
        notification_type: Option<NotificationType>,
    },
    Subscribed {
        restored: bool,
    },
    Lost {
        reason: String,
    },
    Failed(EventsError),
}

/// Where an upstream session's events go. `false` from `emit` ends the session (the sink
/// can no longer take them: in cluster mode, the lease is lost).
pub trait Sink: Send {
    fn emit(&mut self, event: Upstreamed) -> impl Future<Output = bool> + Send;
}

/// The single-process sink: numbers events with the process counter and applies them to
/// the feed at once.
pub struct LocalSink {
    pub feed: Arc<Feed>,
    pub seq: Arc<AtomicU64>,
    pub gws: GwsClient,
    pub read_timeout: Duration,
    pub tasks: TaskTracker,
}

impl Sink for LocalSink {
    async fn emit(&mut self, event: Upstreamed) -> bool {
        let effect = match event {
            Upstreamed::Event {
                event,
                session_id,
                notification_type,
            } => {
                let mut core = self.feed.lock();
                // Numbered under the lock, so this agent's buffer stays in order.
                let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
                let response = Item::new(SessionEventsResponse {
                    resume_token: core.token(seq),
                    receive_time: Some(SystemTime::now().into()),
                    event: Some(event),
                });
                let stored = Stored::new(seq, response, session_id, notification_type);
                self.feed.apply_locked(&mut core, Input::Stored(stored))
            }
            Upstreamed::Subscribed { restored } => {
                self.feed.apply(Input::Subscribed { restored, at: None })
            }
            Upstreamed::Lost { reason } => self.feed.apply(Input::Lost { reason, at: None }),
            Upstreamed::Failed(error) => self.feed.apply(Input::Failed(error)),
        };
        if let Effect::ReadSnapshot { generation } = effect {
            spawn_resync(
                &self.tasks,
                self.feed.clone(),
                self.gws.clone(),
                self.read_timeout,
                generation,
            );
        }
        true
    }
}

impl Stored {
    /// A notification item at `seq`, encoded once here: its size is what the replay bounds
    /// count, and every stream then sends these bytes.
    pub fn new(
        seq: u64,
        response: Item,
        session_id: String,
        notification_type: Option<NotificationType>,
    ) -> Arc<Self> {
        Arc::new(Stored {
            seq,
            at: Instant::now(),
            bytes: response.encoded_len(),
            session_id,
            notification_type,
            response,
        })
    }
}

/// Why a snapshot could not be read; its text is what a stream's GAP notice says.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Unmappable(#[from] mapping::MappingError),
}

/// The agent's sessions, read with `GET /api/v2/me/smssessions` and mapped as
/// notifications are.
pub async fn read_snapshot(
    gws: &GwsClient,
    agent: &Agent,
    timeout: Duration,
) -> Result<Vec<SmsSession>, SnapshotError> {
    let reply = gws.feed_read(agent, &Read::Sessions, timeout).await?;
    Ok(mapping::map_sessions(&reply)?)
}

/// After a restore: one snapshot read for the whole feed, delivered to every stream that
/// asked for snapshots, positioned at the restore.
pub fn spawn_resync(
    tasks: &TaskTracker,
    feed: Arc<Feed>,
    gws: GwsClient,
    timeout: Duration,
    generation: u64,
) {
    tasks.spawn(crate::telemetry::propagate(async move {
        let result = tokio::select! {
            _ = feed.cancel.cancelled() => return,
            r = read_snapshot(&gws, &feed.agent, timeout) => r,
        };
        if let Err(why) = &result {
            tracing::warn!(agent = ?feed.agent.key(), %why, "snapshot read after restore failed");
        }
        feed.apply(Input::Snapshot { generation, result });
    }));
}

/// Maps one CometD message; `None` (logged and counted, never fatal) when it cannot be.
fn map(agent: &Agent, channel: &str, data: &serde_json::Value) -> Option<Upstreamed> {
    match mapping::map_notification(data) {
        Ok(event) => {
            crate::metrics::NOTIFICATIONS.inc([event.label()]);
            let session_id = event.session_id().to_string();
            let notification_type = event.notification_type();
            let event = match event {
                Notification::StateChange(change) => Event::StateChange(change),
                Notification::MessageLog(log) => Event::MessageLog(log),
            };
            Some(Upstreamed::Event {
                event,
                session_id,
                notification_type,
            })
        }
        Err(error) => {
            // Received all the same: counted, of a kind the gateway cannot tell.
            crate::metrics::NOTIFICATIONS.inc([Notification::OTHER]);
            crate::metrics::NOTIFICATIONS_UNMAPPED.inc();
            tracing::warn!(agent = ?agent.key(), channel, %error, "notification could not be mapped; skipped");
            None
        }
    }
}

/// Runs `agent`'s upstream session until `cancel` or the session fails, handing what it
/// learns to `sink`; the last thing it emits is a failure.
///
/// Every CometD request carries the agent's CSRF header (learnt with `GET /api/v2/me` when
/// not known). When GWS refuses a request with 401/403, the token is fetched again and the
/// session started afresh, once; a second refusal in a row ends the feed.
pub async fn pump(
    agent: Arc<Agent>,
    cancel: CancellationToken,
    config: BayeuxConfig,
    gws: GwsClient,
    tasks: TaskTracker,
    mut sink: impl Sink,
) {
    let _live = crate::metrics::hold(&crate::metrics::COMETD_SESSIONS);
    let mut refreshed = false;
    let mut subscribed = false;
    let mut lost = false;
    loop {
        let mut session = config.clone();
        match gws
            .feed_csrf_header(&agent, refreshed, config.request_timeout)
            .await
        {
            Ok(Some((name, value))) => {
                session.headers.insert(name, value);
            }
            Ok(None) => {}
            Err(error) => {
                sink.emit(Upstreamed::Failed(EventsError::Upstream(error)))
                    .await;
                return;
            }
        }
        crate::telemetry::insert_trace_headers(&mut session.headers);
        let (tx, mut rx) = mpsc::channel(256);
        // Its own token: the sink may stop this session while the feed goes on.
        let stop = cancel.child_token();
        let client = tasks.spawn(crate::telemetry::propagate(bayeux::run(
            gws.http().clone(),
            agent.clone(),
            session,
            tx,
            stop.clone(),
        )));
        let mut refused = false;
        while let Some(event) = rx.recv().await {
            let out = match event {
                BayeuxEvent::Failed {
                    http_status: Some(401 | 403),
                    ..
                } if !refreshed => {
                    refused = true;
                    continue;
                }
                BayeuxEvent::Message { channel, data } => match map(&agent, &channel, &data) {
                    Some(out) => out,
                    None => continue,
                },
                BayeuxEvent::Subscribed { restored } => {
                    refreshed = false;
                    let restored = restored || lost;
                    lost = false;
                    subscribed = true;
                    if restored {
                        crate::metrics::COMETD_HANDSHAKES.inc(["rehandshake"]);
                        tracing::info!(agent = ?agent.key(), "upstream notifications restored");
                    } else {
                        crate::metrics::COMETD_HANDSHAKES.inc(["initial"]);
                        tracing::info!(agent = ?agent.key(), "upstream notifications subscribed");
                    }
                    Upstreamed::Subscribed { restored }
                }
                BayeuxEvent::Lost { reason } => {
                    tracing::warn!(agent = ?agent.key(), %reason, "upstream notifications lost");
                    lost = true;
                    Upstreamed::Lost { reason }
                }
                BayeuxEvent::Failed {
                    reason,
                    http_status,
                } => {
                    tracing::warn!(agent = ?agent.key(), %reason, ?http_status, "upstream notifications failed");
                    let error = match http_status {
                        Some(http_status @ (401 | 403)) => {
                            EventsError::Upstream(UpstreamError::Http {
                                http_status,
                                excerpt: reason,
                            })
                        }
                        _ => EventsError::Ended(reason),
                    };
                    Upstreamed::Failed(error)
                }
            };
            if !sink.emit(out).await {
                stop.cancel();
            }
        }
        if client.await.is_err() {
            sink.emit(Upstreamed::Failed(EventsError::Ended(
                "upstream notification client stopped unexpectedly".into(),
            )))
            .await;
            return;
        }
        if !refused || stop.is_cancelled() {
            break;
        }
        refreshed = true;
        if subscribed && !lost {
            lost = true;
            sink.emit(Upstreamed::Lost {
                reason: "GWS refused the session; fetching a new CSRF token".into(),
            })
            .await;
        }
    }
    sink.emit(Upstreamed::Failed(EventsError::Ended(
        "upstream notification session closed".into(),
    )))
    .await;
}
