//! The per-agent event hub: all `SessionEvents` streams of one agent share one upstream
//! CometD session ([`feed`]), started by the first subscriber and closed a short linger
//! after the last one leaves. Each stream starts with SUBSCRIBED once the upstream
//! subscription is confirmed, can resume from a token ([`replay`]), and is filtered
//! ([`filter`]). Nothing here knows about tonic: errors are [`EventsError`].

pub(crate) mod feed;
pub mod filter;
pub(crate) mod item;
mod outcome;
pub mod replay;
pub(crate) mod state;
mod stream;

pub use filter::Filter;
pub use item::SharedItem;
pub use outcome::{Expect, Outcome};
pub use replay::{RESUME_WINDOW, ReplayBudget, Token};
pub use state::Upstream;
pub use stream::EventStream;

use crate::bayeux::BayeuxConfig;
use crate::proto::NoticeKind;
use crate::upstream::{Agent, AgentKey, GwsClient, UpstreamError};
use feed::Feed;
use outcome::Waiters;
use rand::Rng;
use replay::ReplayBuffer;
use state::Core;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why a stream could not start or had to end.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventsError {
    /// `resumable`: whether resuming from the token replays everything after it (checked
    /// when the stream ends; its position is pinned for the resume window).
    #[error("stream consumer too slow; resume from {last_resume_token:?}")]
    SlowConsumer {
        last_resume_token: String,
        resumable: bool,
    },
    #[error("gateway shutting down")]
    ShuttingDown,
    #[error("upstream notifications ended: {0}")]
    Ended(String),
    #[error("upstream notifications not established within {0:?}")]
    NotReady(Duration),
    #[error(transparent)]
    Upstream(UpstreamError),
    #[error("too many streams for this agent (at most {0})")]
    TooManySubscribers(usize),
    #[error("too many calls waiting for outcomes for this agent (at most {0})")]
    TooManyWaits(usize),
    /// Cluster mode: the resume token is ahead of what this replica has read of the stream,
    /// and the stream cannot be asked whether it was issued. The token is not refused: it
    /// may well be valid, and another replica (or this one, later) can honour it.
    #[error("resume token {token:?} cannot be checked: {why}")]
    ResumeUnchecked { token: String, why: Unchecked },
}

/// Why a resume token ahead of this replica's follower could not be checked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unchecked {
    #[error("this replica's NATS connection is down")]
    LinkDown,
    #[error("NATS did not say how far the stream goes ({0})")]
    NoAnswer(String),
}

#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// The CometD endpoint, e.g. `http://gws:8080/api/v2/notifications`.
    pub notifications_url: reqwest::Url,
    /// Channels subscribed upstream.
    pub channels: Vec<String>,
    pub replay_max_events: usize,
    /// Encoded bytes of events kept per agent for resume.
    pub replay_max_bytes: usize,
    /// Encoded bytes of events kept for resume by all agents together.
    pub replay_budget_bytes: usize,
    pub replay_max_age: Duration,
    /// Items queued per stream before it is cut off as too slow.
    pub stream_buffer: usize,
    /// How long an agent's upstream session outlives its last stream.
    pub linger: Duration,
    /// How long a new stream waits for the upstream subscription.
    pub subscribe_timeout: Duration,
    pub max_streams_per_agent: usize,
    /// Calls of one agent waiting for their operation's notification at once.
    pub max_outcome_waits: usize,
    /// Bound on a snapshot read (`GET /api/v2/me/smssessions`).
    pub read_timeout: Duration,
    /// Cluster mode, at shutdown: how long an owner keeps an agent's upstream session while
    /// another replica takes it over (make before break).
    pub handover: Duration,
}

impl EventsConfig {
    pub fn new(notifications_url: reqwest::Url, channels: Vec<String>) -> Self {
        Self {
            notifications_url,
            channels,
            replay_max_events: 1000,
            replay_max_bytes: 16 * 1024 * 1024,
            replay_budget_bytes: 256 * 1024 * 1024,
            replay_max_age: Duration::from_secs(300),
            stream_buffer: 256,
            linger: Duration::from_secs(5),
            subscribe_timeout: Duration::from_secs(15),
            max_streams_per_agent: 10_000,
            max_outcome_waits: 1000,
            read_timeout: Duration::from_secs(10),
            handover: Duration::from_secs(10),
        }
    }
}

/// The hub. A cloneable handle.
#[derive(Clone)]
pub struct EventsHub {
    inner: Arc<Inner>,
}

struct Inner {
    config: EventsConfig,
    bayeux: BayeuxConfig,
    /// For the agents' CSRF tokens, which the CometD requests carry too.
    gws: GwsClient,
    /// Random per process: tokens of another process are recognised as such.
    epoch: u64,
    seq: Arc<AtomicU64>,
    feeds: Mutex<HashMap<AgentKey, Arc<Feed>>>,
    /// Shared by every agent's replay buffer: memory bounded for the whole process.
    replay_budget: ReplayBudget,
    shutdown: CancellationToken,
    /// Set just before `shutdown` is cancelled: what each stream checks on every poll, one
    /// atomic load instead of the token's lock.
    stopping: Arc<AtomicBool>,
    tasks: TaskTracker,
    /// Cluster mode: feeds follow the agent's JetStream subject instead of running their own
    /// CometD session, which only the agent's lease holder runs.
    cluster: Option<crate::cluster::Cluster>,
    /// Cluster mode: cancelled at shutdown; owners then hand their agents over.
    draining: CancellationToken,
}

/// Cluster mode: whether `token` is ahead of what this replica's follower has read of its
/// stream (then only the stream can say whether it was issued), failing if it is and this
/// replica's NATS connection is down. A token of another stream is not ahead: it is a GAP
/// whatever NATS says.
fn ahead(
    cluster: &crate::cluster::Cluster,
    interest: &Interest,
    token: Token,
) -> Result<bool, EventsError> {
    let here = interest.feed.lock().replay.last_seq();
    if token.epoch != cluster.epoch() || token.seq <= here {
        return Ok(false);
    }
    if *cluster.link().borrow() == crate::cluster::Link::Down {
        return Err(EventsError::ResumeUnchecked {
            token: token.encode(),
            why: Unchecked::LinkDown,
        });
    }
    Ok(true)
}

/// A subscriber's hold on its feed (waiting or registered). Dropping the last one starts
/// the linger, after which the feed's upstream session is closed.
pub(crate) struct Interest {
    hub: Weak<Inner>,
    feed: Arc<Feed>,
}

impl Drop for Interest {
    fn drop(&mut self) {
        let idle = {
            let mut state = self.feed.lock();
            state.interest -= 1;
            state.interest == 0
        };
        if !idle {
            return;
        }
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        let feed = self.feed.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(_) => {
                let linger = hub.config.linger;
                let tasks = hub.tasks.clone();
                let shutdown = hub.shutdown.clone();
                // Under the tracker, and over at shutdown (which ends every feed itself).
                tasks.spawn(async move {
                    let lingered = async {
                        tokio::time::sleep(linger).await;
                        // A stream cut for being slow was told it can resume: the feed (its
                        // upstream session and replay buffer) stays while that pin lasts.
                        loop {
                            let until = feed.lock().replay.pinned_until(Instant::now());
                            match until {
                                Some(until) => tokio::time::sleep_until(until.into()).await,
                                None => break,
                            }
                        }
                    };
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        () = lingered => hub.remove(&feed, true),
                    }
                });
            }
            Err(_) => hub.remove(&feed, true),
        }
    }
}

/// A `wait_for_outcome` call between its registration and its answer. Dropping it (the
/// call ended, however) removes the waiter: nothing of the call is kept, except that its
/// operation's end is unknown (see `outcome::Waiters::remove`).
pub struct PendingOutcome {
    id: u64,
    rx: tokio::sync::oneshot::Receiver<Outcome>,
    interest: Interest,
}

impl PendingOutcome {
    /// The POST was answered: `reference_id` is what the reply carried.
    pub fn arm(&self, reference_id: Option<i64>) {
        self.interest.feed.lock().waiters.arm(self.id, reference_id);
    }

    /// The POST was refused by GWS or never sent: the call ends, and nothing of its
    /// operation can follow (an Error about its session is not about it).
    pub fn not_applied(self) {
        self.interest.feed.lock().waiters.not_applied(self.id);
    }

    /// Waits for the confirming notification until `deadline`.
    pub async fn outcome(mut self, deadline: tokio::time::Instant) -> Outcome {
        match tokio::time::timeout_at(deadline, &mut self.rx).await {
            Ok(Ok(outcome)) => outcome,
            // Timed out, or the feed ended (its waiters were cleared).
            Ok(Err(_)) | Err(_) => Outcome::Unconfirmed,
        }
    }
}

impl Drop for PendingOutcome {
    fn drop(&mut self) {
        self.interest.feed.lock().waiters.remove(self.id);
    }
}

impl Inner {
    /// Forgets `feed` (if it is still the agent's current one) and ends its upstream
    /// session. With `only_if_idle`, only when no stream holds or awaits it: the interest
    /// count changes under the same map lock, so a new subscriber cannot slip in between.
    fn remove(&self, feed: &Arc<Feed>, only_if_idle: bool) {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        let key = feed.agent.key();
        let current = feeds.get(&key).is_some_and(|f| Arc::ptr_eq(f, feed));
        if current && (!only_if_idle || feed.lock().interest == 0) {
            feeds.remove(&key);
            feed.cancel.cancel();
            tracing::debug!(agent = ?key, "upstream notification session closed");
        }
    }
}

impl EventsHub {
    pub fn new(config: EventsConfig, gws: GwsClient) -> Self {
        Self::with_cluster(config, gws, None)
    }

    /// A hub whose feeds, with `cluster`, come from NATS JetStream (see [`crate::cluster`]).
    pub fn with_cluster(
        config: EventsConfig,
        gws: GwsClient,
        cluster: Option<crate::cluster::Cluster>,
    ) -> Self {
        let mut bayeux =
            BayeuxConfig::new(config.notifications_url.clone(), config.channels.clone());
        bayeux.slots = gws.feed_share().clone();
        let replay_budget = ReplayBudget::new(config.replay_budget_bytes);
        Self {
            inner: Arc::new(Inner {
                config,
                bayeux,
                gws,
                epoch: rand::rng().random(),
                seq: Arc::new(AtomicU64::new(0)),
                feeds: Mutex::new(HashMap::new()),
                replay_budget,
                shutdown: CancellationToken::new(),
                stopping: Arc::new(AtomicBool::new(false)),
                tasks: TaskTracker::new(),
                cluster,
                draining: CancellationToken::new(),
            }),
        }
    }

    /// The agent's feed, created (and its upstream session started) on first use, with a
    /// new interest registered on it. The session is started after the map lock is released.
    fn interest(&self, agent: &Arc<Agent>) -> Result<Interest, EventsError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(EventsError::ShuttingDown);
        }
        let (feed, created) = {
            let mut feeds = self.inner.feeds.lock().unwrap_or_else(|e| e.into_inner());
            let mut created = false;
            let feed = feeds
                .entry(agent.key())
                .or_insert_with(|| {
                    created = true;
                    Arc::new(Feed::new(agent.clone(), self.new_core(agent)))
                })
                .clone();
            // Under the map lock: `Inner::remove` checks it under the same lock.
            feed.lock().interest += 1;
            (feed, created)
        };
        if created {
            self.start(feed.clone());
            tracing::debug!(agent = ?agent.key(), "first stream: upstream notification session started");
        }
        Ok(Interest {
            hub: Arc::downgrade(&self.inner),
            feed,
        })
    }

    fn new_core(&self, agent: &Agent) -> Core {
        let floor = self.inner.seq.load(Ordering::Relaxed);
        let replay = ReplayBuffer::new(
            self.inner.config.replay_max_events,
            self.inner.config.replay_max_bytes,
            self.inner.config.replay_max_age,
            floor,
            self.inner.replay_budget.clone(),
        );
        // In cluster mode the numbering is the stream's; its floor is set from the agent's
        // subject before any stream can join.
        let epoch = self
            .inner
            .cluster
            .as_ref()
            .map_or(self.inner.epoch, |c| c.epoch());
        Core::new(epoch, replay, Waiters::new(agent.unsettled().clone()))
    }

    /// Starts `feed`'s source under the hub's task tracker.
    fn start(&self, feed: Arc<Feed>) {
        let hub = Arc::downgrade(&self.inner);
        let inner = &self.inner;
        if let Some(cluster) = &inner.cluster {
            let ctx = crate::cluster::source::Context {
                cluster: cluster.clone(),
                bayeux: inner.bayeux.clone(),
                gws: inner.gws.clone(),
                read_timeout: inner.config.read_timeout,
                tasks: inner.tasks.clone(),
                draining: inner.draining.clone(),
                handover: inner.config.handover,
            };
            let span = tracing::info_span!("cluster_feed", trace_id = crate::telemetry::trace_id());
            inner.tasks.spawn(crate::telemetry::propagate(
                tracing::Instrument::instrument(
                    async move {
                        crate::cluster::source::run(ctx, feed.clone()).await;
                        if let Some(hub) = hub.upgrade() {
                            hub.remove(&feed, false);
                        }
                    },
                    span,
                ),
            ));
            return;
        }
        let sink = feed::LocalSink {
            feed: feed.clone(),
            seq: inner.seq.clone(),
            gws: inner.gws.clone(),
            read_timeout: inner.config.read_timeout,
            tasks: inner.tasks.clone(),
        };
        let source = feed::pump(
            feed.agent.clone(),
            feed.cancel.clone(),
            inner.bayeux.clone(),
            inner.gws.clone(),
            inner.tasks.clone(),
            sink,
        );
        // In the trace of the call that started it: its upstream requests carry that
        // trace's `traceparent`.
        let span = tracing::info_span!("cometd_feed", trace_id = crate::telemetry::trace_id());
        inner.tasks.spawn(crate::telemetry::propagate(
            tracing::Instrument::instrument(
                async move {
                    source.await;
                    // Whatever ended the session, the next subscriber starts a fresh one.
                    if let Some(hub) = hub.upgrade() {
                        hub.remove(&feed, false);
                    }
                },
                span,
            ),
        ));
    }

    /// Registers an interest in `agent`'s feed and waits, at most `wait`, until its upstream
    /// subscription is confirmed.
    async fn ready(&self, agent: &Arc<Agent>, wait: Duration) -> Result<Interest, EventsError> {
        let interest = self.interest(agent)?;
        self.confirmed(interest, wait).await
    }

    /// Waits, at most `wait`, until the upstream subscription of `interest`'s feed is
    /// confirmed.
    async fn confirmed(&self, interest: Interest, wait: Duration) -> Result<Interest, EventsError> {
        let mut status = interest.feed.status.subscribe();
        let ready = async {
            loop {
                match &*status.borrow_and_update() {
                    Upstream::Subscribed => return Ok(()),
                    Upstream::Failed(e) => return Err(e.clone()),
                    Upstream::Connecting | Upstream::Lost => {}
                }
                if status.changed().await.is_err() {
                    return Err(EventsError::Ended(
                        "upstream notification session closed".into(),
                    ));
                }
            }
        };
        tokio::select! {
            _ = self.inner.shutdown.cancelled() => Err(EventsError::ShuttingDown),
            r = tokio::time::timeout(wait, ready) => {
                r.map_err(|_| EventsError::NotReady(wait))??;
                Ok(interest)
            }
        }
    }

    /// Prepares a `wait_for_outcome` call: the agent's feed is subscribed (shared with its
    /// streams; the call counts as a user of it) and a waiter registered, *before* the
    /// caller sends its POST. Waits for the subscription at most `wait`.
    pub async fn expect(
        &self,
        agent: Arc<Agent>,
        expect: Expect,
        wait: Duration,
    ) -> Result<PendingOutcome, EventsError> {
        let wait = wait.min(self.inner.config.subscribe_timeout);
        let interest = self.ready(&agent, wait).await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let id = {
            let mut state = interest.feed.lock();
            if let Some(error) = state.failure() {
                return Err(error);
            }
            if state.waiters.len() >= self.inner.config.max_outcome_waits {
                return Err(EventsError::TooManyWaits(
                    self.inner.config.max_outcome_waits,
                ));
            }
            state.waiters.add(expect, tx)
        };
        Ok(PendingOutcome { id, rx, interest })
    }

    /// Opens a stream of `agent`'s events. Returns once the upstream subscription is
    /// confirmed; the stream's first item is then the SUBSCRIBED notice, followed (with
    /// `filter.include_snapshot`) by a snapshot of the agent's sessions read after it.
    pub async fn subscribe(
        &self,
        agent: Arc<Agent>,
        filter: Filter,
        resume: Option<Token>,
    ) -> Result<EventStream, EventsError> {
        let interest = self.interest(&agent)?;
        let cluster = self.inner.cluster.as_ref();
        if let (Some(cluster), Some(token)) = (cluster, resume) {
            // Before waiting for the subscription: a replica cut from NATS is not subscribed
            // (its streams were told LOST) until the link is back, and the caller is better
            // served by another replica at once than by a NOT_READY much later.
            ahead(cluster, &interest, token)?;
        }
        let interest = self
            .confirmed(interest, self.inner.config.subscribe_timeout)
            .await?;
        // The highest position issued: a token beyond it was never one of ours.
        let issued = match (cluster, resume) {
            (Some(cluster), Some(token)) => {
                // Only a token ahead of this replica's follower needs the stream asked (one
                // round trip). If NATS cannot say, the token is neither honoured nor called
                // never issued: the call fails, and the token stays good elsewhere.
                if ahead(cluster, &interest, token)? {
                    cluster
                        .last_seq()
                        .await
                        .map_err(|why| EventsError::ResumeUnchecked {
                            token: token.encode(),
                            why: Unchecked::NoAnswer(why),
                        })?
                } else {
                    interest.feed.lock().replay.last_seq()
                }
            }
            (Some(_), None) => 0,
            (None, _) => self.inner.seq.load(Ordering::Relaxed),
        };
        let feed = interest.feed.clone();
        let (tx, rx) = mpsc::channel(self.inner.config.stream_buffer.max(1));
        let end = Arc::new(Mutex::new(None));
        let mut pre = VecDeque::new();
        // The stream's position when it joined the feed.
        let registered;
        let slot = {
            let mut state = feed.lock();
            // Checked under the lock a failure drains under: a stream never joins a dead feed.
            if let Some(error) = state.failure() {
                return Err(error);
            }
            if state.slots_len() >= self.inner.config.max_streams_per_agent {
                return Err(EventsError::TooManySubscribers(
                    self.inner.config.max_streams_per_agent,
                ));
            }
            let joined = state.join(tx, filter.clone(), end.clone(), resume, issued);
            registered = joined.registered;
            pre.extend(joined.pre);
            joined.slot
        };
        // From here the slot is released however this ends, cancellation included.
        let guard = stream::SlotGuard::new(feed, slot, interest);
        if filter.include_snapshot {
            // Read after the subscription is confirmed and the stream registered, and placed
            // at the registration point: resuming from its token replays whatever was queued
            // behind it, so nothing falls between (some of it may be in the snapshot too).
            let read = feed::read_snapshot(&self.inner.gws, &agent, self.inner.config.read_timeout);
            let read = tokio::select! {
                _ = self.inner.shutdown.cancelled() => return Err(EventsError::ShuttingDown),
                r = read => r,
            };
            match read {
                Ok(sessions) => pre.extend(filter.snapshot(&state::snapshot(sessions, registered))),
                Err(why) => pre.push_back(state::notice(
                    NoticeKind::Gap,
                    &format!("snapshot read failed: {why}; the sessions' state is unknown"),
                    registered,
                )),
            }
        }
        Ok(stream::new(
            pre,
            rx,
            end,
            self.inner.shutdown.clone(),
            self.inner.stopping.clone(),
            guard,
        ))
    }

    /// Ends every stream with UNAVAILABLE and closes every upstream session (CometD
    /// disconnect), waiting at most `grace` for the disconnects.
    ///
    /// In cluster mode the streams end as well (their clients reconnect to other replicas),
    /// but an agent's owner keeps its upstream session, publishing, until a replica those
    /// clients reached has its own session subscribed, then hands the lease over; at most
    /// `handover` (then the session ends as linger ends it).
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.stopping.store(true, Ordering::Release);
        self.inner.shutdown.cancel();
        if self.inner.cluster.is_some() {
            self.inner.draining.cancel();
            self.inner.tasks.close();
            let limit = self.inner.config.handover + grace;
            let _ = tokio::time::timeout(limit, self.inner.tasks.wait()).await;
            return;
        }
        let feeds: Vec<_> = {
            let mut feeds = self.inner.feeds.lock().unwrap_or_else(|e| e.into_inner());
            feeds.drain().map(|(_, f)| f).collect()
        };
        for feed in feeds {
            feed.cancel.cancel();
        }
        self.inner.tasks.close();
        let _ = tokio::time::timeout(grace, self.inner.tasks.wait()).await;
    }
}
