//! An agent's feed in cluster mode: its follower (the agent's subject, read into the local
//! feed core) and its contender (takes the lease when free, then runs the agent's CometD
//! session and publishes what it learns to the subject).
//!
//! Messages on `gws.events.<agent>`: headers say the kind (`event`, `subscribed`,
//! `restored`, `lost`) and the publisher's term; an event's payload is the encoded
//! `SessionEventsResponse` without its token (followers join the token in front of the
//! bytes: nothing is mapped or encoded twice), a notice's is its detail text. Each publish
//! carries a message id (a retry is stored once) and expects the subject's last sequence to
//! be the one this owner saw: a stale owner's late publish is refused by the stream itself
//! once a new owner has written, and dropped by followers (its term is below the newest).
//!
//! Handover (SIGTERM, make before break): the owner marks its lease draining; replicas that
//! hold the agent's credential start a standby session, and the first subscribed claims the
//! handover (`<agent>.ready`), naming the first event its session received. The owner goes
//! on publishing until it has published that event (it has then published everything GWS
//! sent it before the standby subscribed), then hands the lease back, which only the
//! claimant takes; the claimant drops what the owner published already (`Overlap`).

use super::lease::{Holder, Lease, LeaseError, bucket_answers};
use super::{Cluster, Link, subject};
use crate::bayeux::BayeuxConfig;
use crate::events::feed::{self, Feed, Sink, Upstreamed};
use crate::events::item::Item;
use crate::events::replay::{Stored, Token};
use crate::events::state::{Effect, Input};
use crate::events::{EventsError, Upstream};
use crate::proto::session_events_response::Event;
use crate::proto::{NotificationType, SessionEventsResponse};
use crate::upstream::GwsClient;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull, kv};
use futures::StreamExt;
use prost::Message as _;
use prost::bytes::Bytes;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const KIND: &str = "Gws-Kind";
const TERM: &str = "Gws-Term";
const SESSION: &str = "Gws-Session";
const TYPE: &str = "Gws-Type";
/// Events a session may queue for its owner's publishing loop.
const SESSION_QUEUE: usize = 256;
/// Events a standby session keeps until its replica owns the agent; beyond, the handover is
/// given up (a takeover then says LOST/RESTORED).
const MAX_STANDBY: usize = 10_000;
/// How often, during a handover, the draining owner looks for its successor and the
/// successor for the lease: a handover lasts a second or two, and this is its latency.
const HANDOVER_POLL: Duration = Duration::from_millis(50);
/// How long a subscribed standby session waits for its first event before it tells the
/// draining owner it is ready without one (the agent is quiet): by then, what GWS sent the
/// old session before this one subscribed has reached the old owner too.
const FIRST_EVENT_WAIT: Duration = Duration::from_secs(1);
/// Largest first event a standby names in its ready value (one NATS message); a larger one
/// is not named, as if none had come.
const READY_EVENT_MAX: usize = 64 * 1024;
/// Past a lease's expiry before trying to take it (the server drops expired entries on a
/// sweep, not at the instant).
const EXPIRY_SLACK: Duration = Duration::from_millis(50);
/// Between attempts to follow the subject again after NATS came back.
const RESUBSCRIBE: Duration = Duration::from_millis(200);
/// How often the server proves an idle follower's consumer alive. A follower's consumer is
/// one node's (JetStream keeps an ephemeral consumer on one server of a clustered stream):
/// when that node dies, nothing else says so, and two heartbeats missed is how the follower
/// learns it and makes another. (async-nats's ordered consumer waits for two missed 15 s
/// heartbeats and then backs off up to 10 s between attempts: streams stood still for most
/// of a minute when a NATS node died.)
const FOLLOW_HEARTBEAT: Duration = Duration::from_secs(1);
/// How long one pull request of a follower waits for messages before it asks again.
const FOLLOW_EXPIRES: Duration = Duration::from_secs(30);
/// Messages a follower's consumer may have in flight to it.
const FOLLOW_BATCH: usize = 500;
/// How long a follower waits for its consumer to be made.
const FOLLOW_CREATE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a follower's consumer outlives its follower (the server removes it then).
const FOLLOW_INACTIVE: Duration = Duration::from_secs(30);
/// How long this replica's NATS connection may be down before its streams are told (LOST).
/// A clustered NATS's client moves to another server in milliseconds and the follower
/// resumes after the last sequence it read, so nothing is missed: a notice then would be
/// false. A NATS that is really gone is announced this much later.
const LINK_GRACE: Duration = Duration::from_secs(2);

/// What a control message says about the upstream session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Subscribed,
    Restored,
    Lost,
}

impl Control {
    fn as_str(self) -> &'static str {
        match self {
            Control::Subscribed => "subscribed",
            Control::Restored => "restored",
            Control::Lost => "lost",
        }
    }
}

/// What the agent's follower and contender share.
#[derive(Default)]
struct Shared {
    /// The last control message the follower read (`None`: none in the subject's history).
    last_control: Mutex<Option<Control>>,
}

/// What both halves need.
#[derive(Clone)]
pub struct Context {
    pub cluster: Cluster,
    pub bayeux: BayeuxConfig,
    pub gws: GwsClient,
    pub read_timeout: Duration,
    pub tasks: TaskTracker,
    /// Cancelled when this replica shuts down.
    pub draining: CancellationToken,
    pub handover: Duration,
}

/// The publisher's term a message carries (0: none, below every owner's).
fn term_of(headers: Option<&HeaderMap>) -> u64 {
    headers
        .and_then(|h| h.get(TERM))
        .and_then(|t| t.as_str().parse().ok())
        .unwrap_or(0)
}

impl Context {
    /// Applies `input` to the feed; a restore's snapshot is read in a task of the hub's.
    fn apply(&self, feed: &Arc<Feed>, input: Input) {
        if let Effect::ReadSnapshot { generation } = feed.apply(input) {
            feed::spawn_resync(
                &self.tasks,
                feed.clone(),
                self.gws.clone(),
                self.read_timeout,
                generation,
            );
        }
    }
}

/// Runs `feed` from the agent's subject until the feed is cancelled, competing meanwhile for
/// the agent's lease (the credential is in this replica's memory: the feed exists).
pub async fn run(ctx: Context, feed: Arc<Feed>) {
    let name = ctx.cluster.agent_name(&feed.agent);
    let shared = Arc::new(Shared::default());
    let (position_tx, position) = watch::channel(0u64);
    let contender = ctx.tasks.spawn(crate::telemetry::propagate(contend(
        ctx.clone(),
        feed.clone(),
        name.clone(),
        shared.clone(),
        position,
    )));
    let why = tokio::select! {
        _ = feed.cancel.cancelled() => None,
        r = follow(&ctx, &feed, &name, &shared, &position_tx) => Some(r),
    };
    feed.cancel.cancel();
    let _ = contender.await;
    if let Some(why) = why {
        feed.fail(EventsError::Ended(format!(
            "cluster event stream ended: {why}"
        )));
    }
}

/// Reads the agent's subject from its oldest retained message into the feed. Until it has
/// read what was there when it started, the feed is not ready (its streams wait): then the
/// last control message says whether the upstream session is subscribed.
async fn follow(
    ctx: &Context,
    feed: &Arc<Feed>,
    name: &str,
    shared: &Shared,
    position: &watch::Sender<u64>,
) -> String {
    let subject = subject(name);
    let stream = ctx.cluster.stream();
    let history_end = match stream.get_last_raw_message_by_subject(&subject).await {
        Ok(m) => m.sequence,
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => 0,
        Err(e) => return format!("reading the agent's subject: {e}"),
    };
    if history_end == 0 {
        // Nothing retained: the history starts now (a floor guessed lower would let an old
        // token replay as if nothing had been dropped).
        let now = match ctx.cluster.last_seq().await {
            Ok(now) => now,
            Err(e) => return format!("reading the stream's position: {e}"),
        };
        feed.lock().replay.set_floor(now);
    }
    let mut messages = match subscribe(stream, &subject, 0).await {
        Ok(m) => Some(m),
        Err(e) => return format!("following the agent's subject: {e}"),
    };
    let mut max_term = 0u64;
    let mut caught_up = history_end == 0;
    let mut first = true;
    // The last sequence applied: a consumer made again starts after it.
    let mut applied = 0u64;
    if caught_up {
        ready(ctx, feed, name, shared).await;
    }
    let mut link = ctx.cluster.link();
    let mut notices = LinkNotices::default();
    let mut order = Order::default();
    // When to try again to make a consumer (after an attempt failed).
    let mut retry_at: Option<Instant> = None;
    loop {
        let due = notices.due();
        let grace = async move {
            match due {
                Some(due) => tokio::time::sleep_until(due.into()).await,
                None => std::future::pending().await,
            }
        };
        // Whatever comes first: a message (or a consumer, when there is none), a change of
        // the NATS connection, the end of its grace.
        let step = tokio::select! {
            step = async {
                match (messages.as_mut(), retry_at) {
                    (Some(current), _) => Step::Message(current.next().await),
                    (None, Some(at)) if at > Instant::now() => {
                        tokio::time::sleep_until(at.into()).await;
                        Step::Retry
                    }
                    // A consumer from where the last one stopped.
                    (None, _) => Step::Subscribed(subscribe(stream, &subject, applied + 1).await),
                }
            } => step,
            changed = link.changed() => Step::Link(changed.is_ok()),
            () = grace => Step::Grace,
        };
        let message = match step {
            Step::Message(message) => message,
            Step::Subscribed(Ok(m)) => {
                messages = Some(m);
                order = Order::default();
                retry_at = None;
                continue;
            }
            Step::Subscribed(Err(e)) => {
                tracing::debug!(error = %e, "cluster follower: consumer not made yet; retrying");
                retry_at = Some(Instant::now() + RESUBSCRIBE);
                continue;
            }
            Step::Retry => {
                retry_at = None;
                continue;
            }
            Step::Link(false) => return "the NATS connection closed".into(),
            Step::Link(true) => {
                let state = *link.borrow_and_update();
                if state == Link::Up {
                    // The consumer may have been on the server this replica left.
                    messages = None;
                    retry_at = None;
                }
                if let Some(tell) = notices.changed(state, Instant::now())
                    && caught_up
                {
                    on_link(ctx, feed, name, tell).await;
                }
                continue;
            }
            Step::Grace => {
                if let Some(tell) = notices.elapsed(Instant::now())
                    && caught_up
                {
                    on_link(ctx, feed, name, tell).await;
                }
                continue;
            }
        };
        let message = match message {
            Some(Ok(m)) => m,
            Some(Err(e)) if consumer_gone(e.kind()) => {
                tracing::debug!(error = %e, applied, "cluster follower: consumer gone; following again after the last sequence applied");
                messages = None;
                continue;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "cluster follower: consumer error");
                continue;
            }
            None => return "the subject's consumer ended".into(),
        };
        let Ok(info) = message.info() else {
            continue;
        };
        if !order.next(info.consumer_sequence) {
            tracing::debug!(
                applied,
                consumer_sequence = info.consumer_sequence,
                "cluster follower: a message skipped; following again after the last sequence applied"
            );
            messages = None;
            continue;
        }
        let seq = info.stream_sequence;
        if first {
            first = false;
            if history_end > 0 {
                feed.lock().replay.set_floor(seq.saturating_sub(1));
            }
        }
        let headers = message.headers.as_ref();
        let header = |name: &str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        let term = term_of(headers);
        // A message skipped (a stale owner's, or one nobody of ours wrote) still counts as
        // read: the history's end and the owner's catch-up wait on its sequence.
        let stale = term < max_term;
        if stale {
            crate::metrics::CLUSTER_STALE.inc();
            tracing::warn!(agent = ?feed.agent.key(), seq, term, max_term, "dropped a stale owner's message");
        } else {
            max_term = term;
        }
        let history = !caught_up;
        let kind = if stale {
            String::new()
        } else {
            header(KIND).unwrap_or_default()
        };
        let input = match kind.as_str() {
            "event" => {
                // Only a subscribed session has events to publish.
                *shared
                    .last_control
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(Control::Subscribed);
                let payload = &message.payload;
                match SessionEventsResponse::decode(payload.as_ref()) {
                    Err(_) => {
                        tracing::warn!(seq, "undecodable event in the agent's subject; skipped");
                        None
                    }
                    Ok(response) => {
                        let token = Token {
                            epoch: ctx.cluster.epoch(),
                            seq,
                        }
                        .encode();
                        let item = Item::stamped(response, token, payload);
                        let notification_type = header(TYPE)
                            .and_then(|t| t.parse::<i32>().ok())
                            .and_then(|t| NotificationType::try_from(t).ok());
                        let session = header(SESSION).unwrap_or_default();
                        Some(Input::Stored(Stored::new(
                            seq,
                            item,
                            session,
                            notification_type,
                        )))
                    }
                }
            }
            "subscribed" | "restored" | "lost" => {
                let control = match kind.as_str() {
                    "subscribed" => Control::Subscribed,
                    "restored" => Control::Restored,
                    _ => Control::Lost,
                };
                *shared
                    .last_control
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(control);
                if history {
                    None
                } else {
                    Some(match control {
                        Control::Subscribed => Input::Subscribed {
                            restored: false,
                            at: Some(seq),
                        },
                        Control::Restored => Input::Subscribed {
                            restored: true,
                            at: Some(seq),
                        },
                        Control::Lost => Input::Lost {
                            reason: String::from_utf8_lossy(&message.payload).into_owned(),
                            at: Some(seq),
                        },
                    })
                }
            }
            _ => None,
        };
        if let Some(input) = input {
            ctx.apply(feed, input);
        }
        applied = seq;
        position.send_replace(seq);
        if history && seq >= history_end {
            caught_up = true;
            ready(ctx, feed, name, shared).await;
        }
    }
}

/// What the follower's loop waits for.
enum Step {
    Message(Option<Result<jetstream::Message, pull::MessagesError>>),
    Subscribed(Result<pull::Stream, String>),
    /// Time to try again to make a consumer.
    Retry,
    /// The NATS connection changed (false: the client is gone).
    Link(bool),
    /// The connection has been down for the grace.
    Grace,
}

/// A consumer of `subject` from `start` (0: its oldest retained message) and its messages:
/// ephemeral, in memory, unacknowledged, with an idle heartbeat (see [`FOLLOW_HEARTBEAT`]).
/// The follower checks the order itself (see [`Order`]) and makes a new one when it breaks.
async fn subscribe(
    stream: &jetstream::stream::Stream,
    subject: &str,
    start: u64,
) -> Result<pull::Stream, String> {
    let deliver_policy = match start {
        0 => jetstream::consumer::DeliverPolicy::All,
        start_sequence => jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence },
    };
    let create = stream.create_consumer(pull::Config {
        filter_subject: subject.to_string(),
        deliver_policy,
        ack_policy: jetstream::consumer::AckPolicy::None,
        max_deliver: 1,
        memory_storage: true,
        num_replicas: 1,
        inactive_threshold: FOLLOW_INACTIVE,
        ..Default::default()
    });
    // Bounded below the JetStream requests' own timeout: while the stream elects a leader a
    // request may go unanswered, and the follower asks again sooner (a consumer made by an
    // abandoned request goes once inactive).
    let consumer = tokio::time::timeout(FOLLOW_CREATE_TIMEOUT, create)
        .await
        .map_err(|_| format!("no answer within {FOLLOW_CREATE_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    consumer
        .stream()
        .max_messages_per_batch(FOLLOW_BATCH)
        .expires(FOLLOW_EXPIRES)
        .heartbeat(FOLLOW_HEARTBEAT)
        .messages()
        .await
        .map_err(|e| e.to_string())
}

/// Whether a follower's consumer still delivers the subject in order: its messages' consumer
/// sequences must follow one another from 1. A jump means a message was dropped on the way
/// (a slow subscriber), and the consumer is made again after the last sequence applied.
#[derive(Debug, Default)]
struct Order {
    delivered: u64,
}

impl Order {
    /// The next message's consumer sequence: false when one was skipped.
    fn next(&mut self, consumer_sequence: u64) -> bool {
        if consumer_sequence != self.delivered + 1 {
            return false;
        }
        self.delivered = consumer_sequence;
        true
    }
}

/// Whether a consumer error means the consumer is gone (its node died, it was deleted, or no
/// server answers for it): the follower then makes another.
fn consumer_gone(kind: pull::MessagesErrorKind) -> bool {
    match kind {
        pull::MessagesErrorKind::MissingHeartbeat
        | pull::MessagesErrorKind::ConsumerDeleted
        | pull::MessagesErrorKind::NoResponders => true,
        pull::MessagesErrorKind::Pull
        | pull::MessagesErrorKind::PushBasedConsumer
        | pull::MessagesErrorKind::RequestLimitExceeded
        | pull::MessagesErrorKind::Other => false,
    }
}

/// When a replica's streams hear of its NATS connection: a drop is told only once it has
/// lasted [`LINK_GRACE`] (a clustered NATS's client is back on another server long before,
/// and nothing was missed); its end is told only if the drop was.
#[derive(Debug, Default)]
struct LinkNotices {
    /// Since when the connection is down, not told yet.
    down_since: Option<Instant>,
    /// The streams were told it is down.
    told: bool,
}

impl LinkNotices {
    /// The connection changed at `now`: what to tell the streams now, if anything.
    fn changed(&mut self, link: Link, now: Instant) -> Option<Link> {
        match link {
            Link::Down => {
                if !self.told && self.down_since.is_none() {
                    self.down_since = Some(now);
                }
                None
            }
            Link::Up => {
                self.down_since = None;
                std::mem::take(&mut self.told).then_some(Link::Up)
            }
        }
    }

    /// When the drop is to be told, if one is waiting.
    fn due(&self) -> Option<Instant> {
        self.down_since.map(|since| since + LINK_GRACE)
    }

    /// The grace ran out at `now`: `Down` when the drop is to be told.
    fn elapsed(&mut self, now: Instant) -> Option<Link> {
        match self.due() {
            Some(due) if now >= due => {
                self.down_since = None;
                self.told = true;
                Some(Link::Down)
            }
            _ => None,
        }
    }
}

/// The follower has read the history: the feed's status is what its last control (or
/// event) said. When retention has dropped all of those, the lease says whether its holder's
/// session is subscribed; with no holder, the next owner's control will tell.
async fn ready(ctx: &Context, feed: &Feed, name: &str, shared: &Shared) {
    let last = *shared
        .last_control
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let up = match last {
        Some(control) => control != Control::Lost,
        None => owner_up(ctx, name).await.unwrap_or(false),
    };
    if up && last.is_none() {
        // Learnt from the lease: an owner taking over from here must say LOST (its
        // predecessor's session ran), as if the control were still in the subject.
        *shared
            .last_control
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Control::Subscribed);
    }
    if up {
        feed.apply(Input::Subscribed {
            restored: false,
            at: None,
        });
    }
}

/// Whether the agent's lease says its holder's session is subscribed (no holder: no);
/// `None` when the lease cannot be read.
async fn owner_up(ctx: &Context, name: &str) -> Option<bool> {
    match ctx.cluster.leases().get(name).await {
        Ok(value) => Some(value.is_some_and(|v| Holder::decode(&v).up)),
        Err(e) => {
            tracing::debug!(error = %e, "cluster follower: cannot read the agent's lease");
            None
        }
    }
}

/// The NATS connection went down or came back: this replica's streams are told; events
/// the owner could not publish meanwhile are missed, and a restore brings a snapshot.
async fn on_link(ctx: &Context, feed: &Arc<Feed>, name: &str, link: Link) {
    let status = feed.status.borrow().clone();
    let input = match (link, status) {
        (Link::Down, Upstream::Subscribed) => Input::Lost {
            reason: "this gateway replica lost its NATS connection; reconnecting".into(),
            at: None,
        },
        (Link::Up, Upstream::Lost) => {
            // RESTORED only if an owner's session is subscribed now (the lease says so): the
            // owner may have lost its own meanwhile, or stopped with no successor; then the
            // next owner's control restores these streams, and nothing says so before.
            // (Unreadable: as before the outage, restored.)
            if !owner_up(ctx, name).await.unwrap_or(true) {
                return;
            }
            Input::Subscribed {
                restored: true,
                at: None,
            }
        }
        _ => return,
    };
    ctx.apply(feed, input);
}

/// A running upstream session of this replica; what it learns arrives on `rx`.
struct Session {
    stop: CancellationToken,
    rx: mpsc::Receiver<Upstreamed>,
}

/// A session started while another replica still owns the agent (it is draining): its
/// events are kept until this replica owns the agent, then published unless the old owner
/// already did (make before break).
struct Standby {
    session: Session,
    buffer: Vec<Upstreamed>,
    /// The subject's position before this session started: what the old owner published
    /// after it may be in `buffer` too.
    mark: u64,
    /// Whether the old owner handed the lease back (it published what its session had);
    /// otherwise it ran out (the old owner died mid-drain) and what that session received
    /// since its last publish is missed: a takeover, told as one.
    released: bool,
}

/// Hands a session's events to its owner's loop (bounded: the session waits).
struct ForwardSink(mpsc::Sender<Upstreamed>);

impl Sink for ForwardSink {
    async fn emit(&mut self, event: Upstreamed) -> bool {
        self.0.send(event).await.is_ok()
    }
}

fn start_session(ctx: &Context, feed: &Arc<Feed>) -> Session {
    let stop = feed.cancel.child_token();
    let (tx, rx) = mpsc::channel(SESSION_QUEUE);
    ctx.tasks.spawn(crate::telemetry::propagate(feed::pump(
        feed.agent.clone(),
        stop.clone(),
        ctx.bayeux.clone(),
        ctx.gws.clone(),
        ctx.tasks.clone(),
        ForwardSink(tx),
    )));
    Session { stop, rx }
}

/// Competes for the agent's lease until the feed is cancelled; while it holds the lease,
/// runs the agent's upstream session. When the owner is draining, starts a standby session.
async fn contend(
    ctx: Context,
    feed: Arc<Feed>,
    name: String,
    shared: Arc<Shared>,
    position: watch::Receiver<u64>,
) {
    let config = ctx.cluster.config().clone();
    // The draining owner whose handover another replica's standby claimed: not this one's.
    let mut declined = None;
    // The bucket did not answer the last attempt.
    let mut unanswered = false;
    loop {
        if feed.cancel.is_cancelled() {
            return;
        }
        if ctx.draining.is_cancelled() {
            // This replica is shutting down and owns nothing of this agent.
            feed.cancel.cancel();
            return;
        }
        let mut wait = config.lease_renew;
        if unanswered {
            // While the bucket did not answer, its owner (if any) could not renew either, and
            // its lease may have run out meanwhile: once the bucket's leader answers again,
            // that owner (trying every SUSPENDED_RETRY) gets a TTL to confirm it before this
            // replica tries to take it (otherwise a NATS node's death could cost the agent a
            // needless takeover, and what GWS sent meanwhile).
            if bucket_answers(ctx.cluster.leases(), &name).await {
                unanswered = false;
                wait = config.lease_ttl;
            }
        } else {
            match Lease::take(
                ctx.cluster.leases(),
                &name,
                ctx.cluster.replica(),
                config.lease_ttl,
            )
            .await
            {
                Ok(lease) => {
                    let claimed = standing_claim(&ctx, &name).await;
                    if claimed.is_some_and(|r| r.replica != ctx.cluster.replica()) {
                        // Handed back by a draining owner to the standby that claimed it:
                        // that one takes it (its session has run since before the old one
                        // stopped).
                        lease.release().await;
                        wait = HANDOVER_POLL;
                    } else {
                        own(&ctx, &feed, &name, &shared, position.clone(), lease, None).await;
                    }
                }
                Err(LeaseError::Taken) => {
                    if let Ok(Some(entry)) = ctx.cluster.leases().entry(name.as_str()).await {
                        if let Some(term) = Holder::decode(&entry.value).draining {
                            if declined != Some(term)
                                && standby(&ctx, &feed, &name, &shared, &position, term).await
                                    == Standing::Declined
                            {
                                declined = Some(term);
                            }
                        } else {
                            // Try again just after the lease would run out unrenewed (the
                            // owner's last write plus the TTL), not up to a renewal later: the
                            // takeover after an owner dies is the TTL plus a handshake.
                            wait = wait.min(expires_in(
                                entry.created.unix_timestamp_nanos(),
                                config.lease_ttl,
                            ));
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cluster: lease not taken");
                    unanswered = true;
                }
            }
        }
        tokio::select! {
            _ = feed.cancel.cancelled() => return,
            _ = ctx.draining.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// How long until a lease last written at `written` (the server's clock) runs out, plus a
/// little for the server's expiry sweep; never less than that little.
fn expires_in(written_unix_nanos: i128, ttl: Duration) -> Duration {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    let left = i128::try_from(ttl.as_nanos()).unwrap_or(i128::MAX) - (now - written_unix_nanos);
    Duration::from_nanos(u64::try_from(left.max(0)).unwrap_or(u64::MAX)) + EXPIRY_SLACK
}

fn ready_key(name: &str) -> String {
    format!("{name}.ready")
}

/// A standby's claim of a draining owner's handover: the owner's term, the claimant, and
/// the first event the claimant's session received (when one came soon and is not too
/// large). The first claim of a term wins: the owner waits for that standby only, and only
/// that one takes the lease it hands back.
#[derive(Debug, Clone, PartialEq)]
struct Ready {
    term: u64,
    replica: String,
    first: Option<Event>,
}

impl Ready {
    /// `<term>:<replica>`, then `:` and the encoded first event if there is one.
    fn encode(&self) -> Bytes {
        let mut value = format!("{}:{}", self.term, self.replica).into_bytes();
        if let Some(event) = &self.first {
            let encoded = SessionEventsResponse {
                event: Some(event.clone()),
                ..Default::default()
            }
            .encode_to_vec();
            if encoded.len() <= READY_EVENT_MAX {
                value.push(b':');
                value.extend(encoded);
            }
        }
        Bytes::from(value)
    }

    fn parse(value: &[u8]) -> Option<Self> {
        let mut parts = value.splitn(3, |b| *b == b':');
        let term = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let replica = std::str::from_utf8(parts.next()?).ok()?.to_string();
        let first = match parts.next() {
            Some(encoded) => Some(SessionEventsResponse::decode(encoded).ok()?.event?),
            None => None,
        };
        Some(Self {
            term,
            replica,
            first,
        })
    }
}

/// Attempts at claiming a handover when the ready key changes under the claim.
const CLAIM_ATTEMPTS: usize = 3;

/// Claims the handover `ready` names, unless another standby did first: whether this one
/// holds the claim.
async fn claim(leases: &kv::Store, key: &str, ready: &Ready) -> Result<bool, String> {
    let value = ready.encode();
    for _ in 0..CLAIM_ATTEMPTS {
        let entry = leases.entry(key).await.map_err(|e| e.to_string())?;
        let written = match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                if let Some(other) = Ready::parse(&e.value)
                    && other.term == ready.term
                {
                    return Ok(other.replica == ready.replica);
                }
                // An earlier handover's: replaced, unless someone writes it meanwhile.
                leases.update(key, value.clone(), e.revision).await.is_ok()
            }
            _ => leases.create(key, value.clone()).await.is_ok(),
        };
        if written {
            return Ok(true);
        }
    }
    Err("the handover's ready key kept changing".into())
}

/// The standing claim of the agent's handover, if any (it lasts at most the lease TTL, the
/// bucket's age limit; its claimant deletes it once it owns the agent).
async fn standing_claim(ctx: &Context, name: &str) -> Option<Ready> {
    let value = ctx
        .cluster
        .leases()
        .get(ready_key(name))
        .await
        .ok()
        .flatten()?;
    Ready::parse(&value)
}

/// Whether a draining owner whose successor is subscribed may stop its session: once it has
/// published (`published`: since it began draining) the successor's first event, if the
/// successor named one.
fn handed_over<'a>(first: Option<&Event>, mut published: impl Iterator<Item = &'a Event>) -> bool {
    first.is_none_or(|first| published.any(|e| e == first))
}

/// How a standby ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Another replica's standby claimed the handover first.
    Declined,
    /// This one owned the agent, or gave up.
    Over,
}

/// The owner (of `term`) is draining: start this replica's own session, claim the handover
/// once it is subscribed, and take the lease as soon as the owner hands it back.
async fn standby(
    ctx: &Context,
    feed: &Arc<Feed>,
    name: &str,
    shared: &Shared,
    position: &watch::Receiver<u64>,
    term: u64,
) -> Standing {
    if ctx.draining.is_cancelled() {
        // This replica is shutting down too: a successor must outlive the handover.
        return Standing::Declined;
    }
    let mark = *position.borrow();
    let mut session = start_session(ctx, feed);
    let subscribed = tokio::time::timeout(ctx.handover, async {
        loop {
            match session.rx.recv().await {
                Some(Upstreamed::Subscribed { .. }) => return true,
                Some(Upstreamed::Event { .. }) => {}
                Some(Upstreamed::Lost { .. } | Upstreamed::Failed(_)) | None => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    if !subscribed || ctx.draining.is_cancelled() {
        session.stop.cancel();
        return Standing::Over;
    }
    // The old owner stops once it has published this session's first event: GWS sends each
    // session the agent's events in one order, so it has then published everything GWS sent
    // it before this session subscribed (what it drops as it stops came later, and this
    // session has it). Stopping any sooner drops what was on its way to it, which this
    // session never got.
    let first = tokio::time::timeout(FIRST_EVENT_WAIT, async {
        loop {
            match session.rx.recv().await {
                Some(event @ Upstreamed::Event { .. }) => return Some(event),
                Some(Upstreamed::Subscribed { .. }) => {}
                Some(Upstreamed::Lost { .. } | Upstreamed::Failed(_)) | None => return None,
            }
        }
    })
    .await;
    let mut buffer = Vec::new();
    let mut ready = Ready {
        term,
        replica: ctx.cluster.replica().to_string(),
        first: None,
    };
    match first {
        Ok(Some(event)) => {
            if let Upstreamed::Event { event, .. } = &event {
                ready.first = Some(event.clone());
            }
            buffer.push(event);
        }
        // Quiet: nothing is on its way to the old owner either.
        Err(_) => {}
        Ok(None) => {
            session.stop.cancel();
            return Standing::Over;
        }
    }
    // The handover may be over already (another standby took the lease and deleted its
    // claim): a claim now would keep a second upstream session for nothing.
    let still_draining = matches!(
        ctx.cluster.leases().entry(name).await,
        Ok(Some(e)) if e.operation == kv::Operation::Put && Holder::decode(&e.value).draining == Some(term)
    );
    if !still_draining {
        session.stop.cancel();
        return Standing::Declined;
    }
    match claim(ctx.cluster.leases(), &ready_key(name), &ready).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(agent = ?feed.agent.key(), term, "cluster: another replica's standby session takes the agent over; this one stops");
            session.stop.cancel();
            return Standing::Declined;
        }
        Err(e) => {
            tracing::debug!(error = %e, "cluster: handover not claimed");
            session.stop.cancel();
            return Standing::Over;
        }
    }
    tracing::info!(agent = ?feed.agent.key(), term, "cluster: standby session subscribed; waiting for the draining owner's lease");
    let deadline = tokio::time::Instant::now() + ctx.handover + ctx.cluster.config().lease_ttl;
    let mut poll = tokio::time::interval(HANDOVER_POLL);
    loop {
        tokio::select! {
            _ = feed.cancel.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => break,
            event = session.rx.recv() => match event {
                Some(event @ Upstreamed::Event { .. }) if buffer.len() < MAX_STANDBY => buffer.push(event),
                Some(Upstreamed::Subscribed { .. }) => {}
                // Lost, failed, or more than a handover can hold: let a takeover say so.
                _ => break,
            },
            _ = poll.tick() => {
                // One read a tick says it all: held (by the draining owner, or by another
                // replica), handed back (a delete marker), or run out (nothing).
                let entry = match ctx.cluster.leases().entry(name).await {
                    Ok(entry) => entry,
                    Err(e) => {
                        tracing::debug!(error = %e, "cluster: lease not read");
                        continue;
                    }
                };
                match entry {
                    Some(e) if e.operation == kv::Operation::Put => {
                        // Held by another replica: one that found this claim hands it back at
                        // once; one that took it after this claim expired keeps it, and this
                        // session is then one too many.
                        if superseded(e.operation, &e.value, term)
                            && !standing_claim(ctx, name).await.is_some_and(|r| {
                                r.term == term && r.replica == ctx.cluster.replica()
                            })
                        {
                            break;
                        }
                    }
                    gone => {
                        let released = gone.is_some();
                        match Lease::take(ctx.cluster.leases(), name, ctx.cluster.replica(), ctx.cluster.config().lease_ttl).await {
                            Ok(lease) => {
                                // The claim has served: no other replica holds back from the lease.
                                let _ = ctx.cluster.leases().delete(ready_key(name)).await;
                                let standby = Standby { session, buffer, mark, released };
                                own(ctx, feed, name, shared, position.clone(), lease, Some(standby)).await;
                                return Standing::Over;
                            }
                            // Taken in between: the next tick reads who holds it.
                            Err(LeaseError::Taken) => {}
                            Err(e) => tracing::debug!(error = %e, "cluster: lease not taken"),
                        }
                    }
                }
            }
        }
    }
    session.stop.cancel();
    Standing::Over
}

/// Whether a lease (its last `operation` and `value`) is held by an owner other than the
/// draining one of `term` (a deleted lease is held by none: it is about to be taken).
fn superseded(operation: kv::Operation, value: &[u8], term: u64) -> bool {
    operation == kv::Operation::Put && Holder::decode(value).draining != Some(term)
}

/// Make before break, at the new owner: tells apart what its session receives that the old
/// owner published already. Both sessions got the agent's notifications in GWS's order, so
/// what the old owner published last (since this session started) and what this session
/// received first are one run. The old owner's last events may reach this session only after
/// the lease did (they were on their way when it took the lease), so each event is judged
/// as it comes, not once over what the standby had buffered: a run cut short there would
/// match nothing, and the whole buffer and the late events be published twice.
struct Overlap<T> {
    /// What the old owner published since this session started, oldest first.
    published: Vec<T>,
    /// This session's events judged so far.
    judged: usize,
    /// Where in `published` this session's first event may be: every start still consistent
    /// with the events judged, ascending (`published.len()`, nothing in common, always is).
    starts: Vec<usize>,
}

impl<T: PartialEq> Overlap<T> {
    fn new(published: Vec<T>) -> Self {
        let starts = (0..=published.len()).collect();
        Self {
            published,
            judged: 0,
            starts,
        }
    }

    /// Whether `event`, this session's next one, is new (to publish) rather than one the old
    /// owner published. The earliest consistent start wins (the longest overlap): nothing is
    /// published twice, even when events alike make the start ambiguous. Once an event is
    /// new, every later one is.
    fn is_new(&mut self, event: &T) -> bool {
        let (published, j) = (&self.published, self.judged);
        self.judged += 1;
        self.starts
            .retain(|&i| i + j >= published.len() || published[i + j] == *event);
        let new = self
            .starts
            .first()
            .is_none_or(|&i| i + j >= published.len());
        if new {
            self.finish();
        }
        new
    }

    /// From here on every event is new (the session's run was broken: it lost its
    /// subscription, say).
    fn finish(&mut self) {
        self.published = Vec::new();
        self.starts = Vec::new();
    }
}

/// Whether the owner publishes `event` of its session (see [`Overlap`]).
fn admits(overlap: &mut Overlap<Event>, event: &Upstreamed) -> bool {
    match event {
        Upstreamed::Event { event, .. } => overlap.is_new(event),
        Upstreamed::Subscribed { .. } | Upstreamed::Lost { .. } | Upstreamed::Failed(_) => {
            overlap.finish();
            true
        }
    }
}

/// This replica owns the agent: runs its session (or takes over its standby one), renews
/// the lease, and stops the session as soon as the lease is lost or cannot be renewed in
/// time. At shutdown it keeps publishing until a successor is subscribed and this owner has
/// published the successor's first event (or `handover`).
async fn own(
    ctx: &Context,
    feed: &Arc<Feed>,
    name: &str,
    shared: &Shared,
    mut position: watch::Receiver<u64>,
    lease: Lease,
    standby: Option<Standby>,
) {
    let subject = subject(name);
    let expected = match ctx
        .cluster
        .stream()
        .get_last_raw_message_by_subject(&subject)
        .await
    {
        Ok(m) => m.sequence,
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => 0,
        Err(e) => {
            tracing::warn!(error = %e, "cluster: cannot read the agent's subject; lease handed back");
            lease.release().await;
            return;
        }
    };
    // What the previous owner last said is known once the follower has read up to here.
    // Bounded by the lease, which nobody renews meanwhile: an owner must not start a session
    // on a lease that may have run out.
    let catch_up = lease
        .valid_until
        .saturating_duration_since(std::time::Instant::now())
        .saturating_sub(ctx.cluster.config().lease_renew);
    if expected > 0
        && tokio::time::timeout(catch_up, position.wait_for(|p| *p >= expected))
            .await
            .map_or(true, |r| r.is_err())
    {
        lease.release().await;
        if let Some(standby) = standby {
            standby.session.stop.cancel();
        }
        return;
    }
    let previous = *shared
        .last_control
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let term = lease.term;
    let up = lease.up();
    let state_changed = Arc::new(tokio::sync::Notify::new());
    tracing::info!(agent = ?feed.agent.key(), term, handover = standby.is_some(), "cluster: this replica owns the agent's upstream session");
    let (standing, standing_rx) = watch::channel(Authority {
        valid_until: lease.valid_until,
        term,
    });
    let lease = Arc::new(tokio::sync::Mutex::new(Some(lease)));
    let from_standby = standby.is_some();
    let handed = standby.as_ref().is_some_and(|s| s.released);
    let (mut session, pending, mut overlap) = match standby {
        Some(Standby {
            session,
            buffer,
            mark,
            ..
        }) => {
            // What the old owner published since this session started: this session has
            // received it too, or some of it, or it is on its way.
            let published = feed
                .lock()
                .replay
                .after(mark)
                .filter_map(|s| s.response.event.clone())
                .collect();
            (session, buffer, Overlap::new(published))
        }
        None => (
            start_session(ctx, feed),
            Vec::new(),
            Overlap::new(Vec::new()),
        ),
    };
    // Cancelled when the lease is lost: from then on nothing of this owner is published.
    let fence = CancellationToken::new();
    let mut sink = ClusterSink {
        js: ctx.cluster.js().clone(),
        subject,
        first_term: term,
        expected,
        next_id: 0,
        type_header: None,
        standing: standing_rx,
        had_session: previous.is_some(),
        up: up.clone(),
        state_changed: state_changed.clone(),
        feed: feed.clone(),
        session: fence.clone(),
        stopped: false,
    };
    if !handed && matches!(previous, Some(Control::Subscribed | Control::Restored)) {
        // The previous owner went without a word: its session is gone, and whatever GWS sent
        // since it last published is missed.
        sink.publish(
            Control::Lost.as_str(),
            Bytes::from_static(
                b"the gateway replica running this agent's upstream session stopped; another is taking over",
            ),
            None,
        )
        .await;
    }
    if from_standby {
        // The standby session is subscribed already. If the old owner gave up waiting and
        // said LOST meanwhile, or died mid-drain (LOST said just above), this session's
        // start is a restore.
        up.store(true, std::sync::atomic::Ordering::Relaxed);
        state_changed.notify_one();
        if !handed || previous == Some(Control::Lost) {
            sink.publish(Control::Restored.as_str(), Bytes::new(), None)
                .await;
        }
    }
    // However `own` ends (unwinding included), the session and its renewer end with it: a
    // lease renewed with no session behind it would keep every other replica out.
    let _session_ends = session.stop.clone().drop_guard();
    let renewer = ctx.tasks.spawn(renew(
        lease.clone(),
        standing,
        session.stop.clone(),
        fence.clone(),
        state_changed,
        ctx.cluster.link(),
        ctx.cluster.config().lease_renew,
    ));
    let mut going = true;
    for event in pending {
        if going && admits(&mut overlap, &event) {
            going = sink.emit(event).await;
        }
    }
    let mut handover: Option<tokio::time::Instant> = None;
    let mut succeeded = false;
    // The subject's position when draining began: a successor's events come after it.
    let mut drain_mark = 0;
    // Once the successor said it is subscribed: its first event, if it named one.
    let mut successor: Option<Option<Event>> = None;
    // The term the draining mark names (a successor says it is ready for that one).
    let mut draining_term = term;
    let mut poll = tokio::time::interval(HANDOVER_POLL);
    while going {
        tokio::select! {
            event = session.rx.recv() => match event {
                Some(event) if admits(&mut overlap, &event) => going = sink.emit(event).await,
                Some(_) => {}
                None => going = false,
            },
            _ = ctx.draining.cancelled(), if handover.is_none() => {
                handover = Some(tokio::time::Instant::now() + ctx.handover);
                drain_mark = *position.borrow();
                if let Some(held) = lease.lock().await.as_mut() {
                    draining_term = held.term;
                    if let Err(e) = held.mark_draining().await {
                        tracing::warn!(error = %e, "cluster: cannot mark the lease draining");
                        going = false;
                    }
                }
                tracing::info!(agent = ?feed.agent.key(), "cluster: draining; keeping the upstream session until another replica has its own");
            }
            _ = poll.tick(), if handover.is_some() => {
                if successor.is_none() {
                    let ready = ctx.cluster.leases().get(ready_key(name)).await.ok().flatten();
                    successor = ready
                        .and_then(|v| Ready::parse(&v))
                        .filter(|r| r.term == draining_term)
                        .map(|r| r.first);
                }
                let handed = successor.as_ref().is_some_and(|first| {
                    let state = feed.lock();
                    let published = state.replay.after(drain_mark).filter_map(|s| s.response.event.as_ref());
                    handed_over(first.as_ref(), published)
                });
                succeeded = handed;
                if handed || handover.is_some_and(|h| tokio::time::Instant::now() >= h) {
                    going = false;
                }
            }
        }
    }
    session.stop.cancel();
    // What the session received and this loop has not published yet: published now, while
    // the lease is still held (the successor, subscribed before this one stopped, drops what
    // it received too when it takes over). Once the lease is lost the sink refuses each at
    // once, and counts it as a stale owner's message.
    while let Some(event) = session.rx.recv().await {
        if matches!(event, Upstreamed::Event { .. }) && admits(&mut overlap, &event) {
            sink.emit(event).await;
        }
    }
    if !succeeded && !sink.stopped {
        // No successor runs a session now: a replica that starts following the agent must
        // not tell its streams SUBSCRIBED, and the next owner's start is a restore.
        sink.publish(
            Control::Lost.as_str(),
            Bytes::from_static(
                b"no gateway replica runs this agent's upstream session now; the next stream or call of the agent starts one",
            ),
            None,
        )
        .await;
    }
    let _ = renewer.await;
    if let Some(lease) = lease.lock().await.take() {
        lease.release().await;
    }
    if handover.is_some() {
        feed.cancel.cancel();
    }
    tracing::info!(agent = ?feed.agent.key(), term, "cluster: upstream session ended; lease handed back");
}

/// How long an owner whose lease ran out unrenewed (the bucket did not answer) keeps its
/// upstream session, publishing nothing, while it tries to confirm the lease again: a NATS
/// cluster elects a new leader for the bucket's Raft group within its election timeout
/// (4 to 9 s after the old one died), and the lease, renewed or reclaimed then, loses
/// nothing. Longer, and the owner gives up (another replica's takeover says LOST). Only
/// while this replica's NATS connection is up: one that lost it stops at the run-out. In a
/// partition that keeps a connected owner from the bucket's leader but not other replicas,
/// this is how long the agent may have two upstream sessions (the other one's wins: this
/// one never publishes unconfirmed).
const BUCKET_OUTAGE: Duration = Duration::from_secs(10);
/// Between renewals of a lease that ran out unrenewed (see [`BUCKET_OUTAGE`]): the owner
/// confirms it again soon after the bucket answers, well before a contender that waited
/// for the bucket too gives up deferring to it (a TTL, see `contend`).
const SUSPENDED_RETRY: Duration = Duration::from_millis(100);
/// How long one such renewal may wait for its answer.
const SUSPENDED_ATTEMPT: Duration = Duration::from_millis(400);

/// What the owner's sink may do: publish until `valid_until`, as `term`.
#[derive(Debug, Clone, Copy)]
struct Authority {
    valid_until: std::time::Instant,
    term: u64,
}

/// Renews the lease every `every`, and at once when `state_changed` (the session's state goes
/// into the lease's value). When it is taken, ends the session (`session`) and
/// fences the sink. When it cannot be renewed before it runs out (the bucket does not
/// answer: its Raft group electing a leader after a NATS node died, or this replica cut off),
/// the sink publishes nothing while the session goes on, and the renewal is tried every
/// [`SUSPENDED_RETRY`]: confirmed again (renewed, or reclaimed: see [`Lease::reclaim`]), what
/// the session received meanwhile is published, nothing lost; taken, or not confirmed within
/// [`BUCKET_OUTAGE`] past its run-out, the session ends as when it is taken.
async fn renew(
    lease: Arc<tokio::sync::Mutex<Option<Lease>>>,
    standing: watch::Sender<Authority>,
    session: CancellationToken,
    fence: CancellationToken,
    state_changed: Arc<tokio::sync::Notify>,
    link: watch::Receiver<Link>,
    every: Duration,
) {
    loop {
        let lapsed = std::time::Instant::now() >= standing.borrow().valid_until;
        let pause = if lapsed { SUSPENDED_RETRY } else { every };
        tokio::select! {
            _ = session.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
            // The session's state goes into the lease at once.
            _ = state_changed.notified() => {}
        }
        let mut guard = lease.lock().await;
        let Some(held) = guard.as_mut() else {
            return;
        };
        // Bounded: a request the bucket never answers (no leader) must not keep this owner
        // from asking again once it has one. One whose write went through unanswered is
        // found again by `reclaim` (the value is this owner's).
        let attempt = if lapsed { SUSPENDED_ATTEMPT } else { every };
        let renewed = tokio::time::timeout(attempt, async {
            match held.renew().await {
                Err(LeaseError::Taken) => held.reclaim().await,
                other => other,
            }
        })
        .await
        .unwrap_or_else(|_| Err(LeaseError::Nats(format!("no answer within {attempt:?}"))));
        match renewed {
            Ok(()) => {
                let was = standing.send_replace(Authority {
                    valid_until: held.valid_until,
                    term: held.term,
                });
                if std::time::Instant::now() >= was.valid_until {
                    tracing::info!(
                        term = held.term,
                        "cluster: lease confirmed again after it ran out unrenewed; publishing what the session received meanwhile"
                    );
                }
            }
            Err(LeaseError::Taken) => {
                tracing::warn!("cluster: lease taken by another replica; upstream session stops");
                guard.take();
                fence.cancel();
                session.cancel();
                return;
            }
            // Kept past the run-out only while this replica's NATS connection is up (the bucket
            // electing a leader): cut off from NATS, it may be partitioned away, and another
            // replica may have taken the agent, so its session ends at once (one upstream
            // session per agent).
            Err(e)
                if std::time::Instant::now()
                    >= held.valid_until
                        + if *link.borrow() == Link::Up {
                            BUCKET_OUTAGE
                        } else {
                            Duration::ZERO
                        } =>
            {
                tracing::warn!(error = %e, "cluster: lease not renewed in time; upstream session stops");
                fence.cancel();
                session.cancel();
                return;
            }
            Err(e) => tracing::debug!(error = %e, "cluster: lease renewal failed; retrying"),
        }
    }
}

/// The owner's sink: publishes to the agent's subject.
struct ClusterSink {
    js: jetstream::Context,
    subject: String,
    /// The term this owner started with: a write by an owner of a lower term is an older
    /// owner's late one; anything else, a newer owner's.
    first_term: u64,
    /// The subject's last sequence as this owner knows it.
    expected: u64,
    next_id: u64,
    /// The next event's notification type header.
    type_header: Option<String>,
    standing: watch::Receiver<Authority>,
    /// Whether an upstream session of this agent existed before this owner's: its first
    /// subscription is then a restore (streams elsewhere may have missed events).
    had_session: bool,
    feed: Arc<Feed>,
    session: CancellationToken,
    /// Set once this owner stopped (fenced, or its lease ran out): what its session says
    /// after is not the feed's business.
    stopped: bool,
    /// The lease's word on whether this owner's session is subscribed.
    up: Arc<std::sync::atomic::AtomicBool>,
    /// Wakes the renewer to write `up` now: the subject's word on it may be trimmed soon.
    state_changed: Arc<tokio::sync::Notify>,
}

impl ClusterSink {
    /// The term to publish as, once the lease is confirmed (see [`renew`]); `None` when
    /// this owner must stop (fenced, or the renewer gave the lease up).
    async fn confirmed(&mut self) -> Option<u64> {
        loop {
            if self.session.is_cancelled() {
                return None;
            }
            let standing = *self.standing.borrow_and_update();
            if std::time::Instant::now() < standing.valid_until {
                return Some(standing.term);
            }
            tokio::select! {
                _ = self.session.cancelled() => return None,
                changed = self.standing.changed() => changed.ok()?,
            }
        }
    }

    /// The subject's last message: its sequence, its publisher's term and its message id.
    async fn last_written(&self) -> Option<(u64, u64, Option<String>)> {
        let stream = self.js.get_stream_no_info(super::STREAM).await.ok()?;
        let m = stream
            .get_last_raw_message_by_subject(&self.subject)
            .await
            .ok()?;
        let term = term_of(Some(&m.headers));
        let id = m
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.as_str().to_string());
        Some((m.sequence, term, id))
    }

    /// Publishes one message; false when this owner must stop (fenced, or its lease ran out).
    async fn publish(&mut self, kind: &str, payload: Bytes, extra: Option<(&str, String)>) -> bool {
        self.next_id += 1;
        // The same id for every attempt (stored once), named by the term this owner started
        // with (unique to it), whatever term it publishes as after a reclaim.
        let id = format!("{}.{}.{}", self.subject, self.first_term, self.next_id);
        loop {
            let confirmed = if self.stopped {
                None
            } else {
                self.confirmed().await
            };
            let Some(term) = confirmed else {
                // What a session received after its owner lost the lease (another replica
                // took it, or it was not confirmed again in time) is dropped here, never
                // published: counted, and said once.
                crate::metrics::CLUSTER_STALE.inc();
                if !self.stopped {
                    tracing::warn!(
                        agent = ?self.feed.agent.key(),
                        term = self.first_term,
                        "cluster: this replica no longer holds the agent's lease; what its upstream session received is not published"
                    );
                    self.stopped = true;
                }
                return false;
            };
            let mut headers = HeaderMap::new();
            headers.insert(KIND, kind);
            headers.insert(TERM, term.to_string().as_str());
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                self.expected.to_string().as_str(),
            );
            // From GWS's JSON (a session id): a CR or LF cannot be a header value, and the
            // event goes without it rather than panic the owner.
            if let Some((name, value)) = &extra
                && let Ok(value) = value.parse::<async_nats::HeaderValue>()
            {
                headers.insert(*name, value);
            }
            if let Some(t) = &self.type_header {
                headers.insert(TYPE, t.as_str());
            }
            let sent = self
                .js
                .publish_with_headers(self.subject.clone(), headers, payload.clone())
                .await;
            let acked = match sent {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match acked {
                Ok(ack) => {
                    self.expected = ack.sequence;
                    self.type_header = None;
                    return true;
                }
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                    // The subject's last message is not the one this owner last saw.
                    match self.last_written().await {
                        // This very message: an earlier attempt was stored and its answer
                        // lost (the stream's leader died before acknowledging it).
                        Some((seq, _, Some(last))) if last == id => {
                            tracing::debug!(seq, "cluster: a publish stored unanswered");
                            self.expected = seq;
                            self.type_header = None;
                            return true;
                        }
                        // An older owner's late write (followers drop it): this owner goes on
                        // after it.
                        Some((seq, term, _)) if term < self.first_term => self.expected = seq,
                        // A newer owner's: this one is stale and stops.
                        Some(_) => {
                            crate::metrics::CLUSTER_STALE.inc();
                            tracing::warn!(
                                agent = ?self.feed.agent.key(),
                                term = self.first_term,
                                "cluster: a newer owner wrote the agent's subject; this one stops"
                            );
                            self.stopped = true;
                            return false;
                        }
                        // Not answered (the stream electing a leader, say): asked again.
                        None => {
                            tracing::debug!("cluster: the agent's subject not readable; retrying");
                            tokio::select! {
                                _ = self.session.cancelled() => {
                                    self.stopped = true;
                                    return false;
                                }
                                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cluster: publish failed; retrying");
                    tokio::select! {
                        // Checked (and counted) at the top of the loop.
                        _ = self.session.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
    }
}

impl Sink for ClusterSink {
    async fn emit(&mut self, event: Upstreamed) -> bool {
        match event {
            Upstreamed::Event {
                event,
                session_id,
                notification_type,
            } => {
                // Encoded once, here; followers put the token in front of these bytes.
                let payload = SessionEventsResponse {
                    resume_token: String::new(),
                    receive_time: Some(SystemTime::now().into()),
                    event: Some(event),
                }
                .encode_to_vec();
                self.type_header = notification_type.map(|t| (t as i32).to_string());
                self.publish("event", Bytes::from(payload), Some((SESSION, session_id)))
                    .await
            }
            Upstreamed::Subscribed { restored } => {
                let kind = if restored || self.had_session {
                    Control::Restored
                } else {
                    Control::Subscribed
                };
                self.had_session = true;
                let published = self.publish(kind.as_str(), Bytes::new(), None).await;
                self.up
                    .store(published, std::sync::atomic::Ordering::Relaxed);
                self.state_changed.notify_one();
                published
            }
            Upstreamed::Lost { reason } => {
                self.up.store(false, std::sync::atomic::Ordering::Relaxed);
                self.state_changed.notify_one();
                self.publish(Control::Lost.as_str(), Bytes::from(reason), None)
                    .await
            }
            Upstreamed::Failed(error) => {
                // Ends this replica's streams with what GWS said; other replicas' contenders
                // find out for themselves (each holds the credential too).
                if !self.stopped && !self.session.is_cancelled() {
                    self.feed.fail(error);
                    self.feed.cancel.cancel();
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        Event, LINK_GRACE, Link, LinkNotices, Order, Overlap, READY_EVENT_MAX, Ready, Upstreamed,
        admits, handed_over, kv, superseded,
    };
    use crate::proto::StreamNotice;
    use std::time::{Duration, Instant};

    #[test]
    fn a_connection_back_within_the_grace_is_never_told() {
        let t = Instant::now();
        let mut n = LinkNotices::default();
        assert_eq!(n.changed(Link::Down, t), None, "not at once");
        assert_eq!(n.due(), Some(t + LINK_GRACE));
        assert_eq!(n.elapsed(t + LINK_GRACE / 2), None, "not before the grace");
        assert_eq!(n.changed(Link::Up, t + Duration::from_millis(5)), None);
        assert_eq!(n.due(), None, "nothing waits");
        assert_eq!(
            n.elapsed(t + LINK_GRACE * 2),
            None,
            "and nothing is told later"
        );
    }

    #[test]
    fn a_drop_longer_than_the_grace_is_told_once_and_so_is_its_end() {
        let t = Instant::now();
        let mut n = LinkNotices::default();
        n.changed(Link::Down, t);
        // A second drop report does not move the deadline.
        n.changed(Link::Down, t + Duration::from_millis(500));
        assert_eq!(n.due(), Some(t + LINK_GRACE));
        assert_eq!(n.elapsed(t + LINK_GRACE), Some(Link::Down));
        assert_eq!(n.due(), None);
        assert_eq!(n.elapsed(t + LINK_GRACE * 3), None, "told once");
        assert_eq!(
            n.changed(Link::Down, t + LINK_GRACE * 3),
            None,
            "still down"
        );
        assert_eq!(n.due(), None, "already told");
        assert_eq!(n.changed(Link::Up, t + LINK_GRACE * 4), Some(Link::Up));
        assert_eq!(
            n.changed(Link::Up, t + LINK_GRACE * 5),
            None,
            "its end once"
        );
        // And the next drop starts over.
        let t2 = t + LINK_GRACE * 6;
        n.changed(Link::Down, t2);
        assert_eq!(n.due(), Some(t2 + LINK_GRACE));
    }

    #[test]
    fn a_consumer_is_in_order_while_its_sequences_follow_one_another_from_one() {
        let mut o = Order::default();
        assert!(o.next(1));
        assert!(o.next(2));
        assert!(!o.next(4), "3 was skipped");
        let mut o = Order::default();
        assert!(!o.next(2), "a new consumer starts at 1");
        let mut o = Order::default();
        assert!(o.next(1));
        assert!(!o.next(1), "a repeat is out of order too");
    }

    #[test]
    fn a_standby_is_superseded_once_another_owner_holds_the_lease() {
        assert!(
            !superseded(kv::Operation::Put, b"draining:5", 5),
            "still draining"
        );
        assert!(
            !superseded(kv::Operation::Put, b"draining:5;up", 5),
            "still draining, its session subscribed"
        );
        assert!(
            superseded(kv::Operation::Put, b"0f1e2d3c4b5a6978", 5),
            "a new owner"
        );
        assert!(
            superseded(kv::Operation::Put, b"draining:9", 5),
            "a later owner draining"
        );
        assert!(
            !superseded(kv::Operation::Delete, b"", 5),
            "handed back: about to be taken"
        );
    }

    fn notice(detail: &str) -> Event {
        Event::Notice(StreamNotice {
            kind: 0,
            detail: detail.into(),
        })
    }

    #[test]
    fn a_claim_carries_the_term_the_claimant_and_its_first_event() {
        let ready = |first: Option<Event>| Ready {
            term: 12,
            replica: "00aa11bb22cc33dd".into(),
            first,
        };
        let with = ready(Some(notice("a: with a colon")));
        assert_eq!(Ready::parse(&with.encode()), Some(with));
        assert_eq!(Ready::parse(&ready(None).encode()), Some(ready(None)));
        assert_eq!(Ready::parse(b"12"), None, "no claimant");
        assert_eq!(Ready::parse(b"draining:7"), None);
        assert_eq!(Ready::parse(b"7:r:\xff\xff"), None, "not an event");
        // Too large for a lease value: not named.
        let large = ready(Some(notice(&"x".repeat(READY_EVENT_MAX))));
        assert_eq!(Ready::parse(&large.encode()), Some(ready(None)));
    }

    #[test]
    fn a_draining_owner_stops_once_it_has_published_its_successors_first_event() {
        let published = [notice("a"), notice("b")];
        assert!(handed_over(Some(&notice("b")), published.iter()));
        assert!(
            !handed_over(Some(&notice("c")), published.iter()),
            "c was sent to the old session too, and may be on its way to this owner"
        );
        assert!(
            handed_over(None, [].iter()),
            "a quiet agent: nothing is on its way"
        );
    }

    /// What the new owner publishes of what its session `received` (in order), the old owner
    /// having published `published` since the session started.
    fn new_of(published: &[u8], received: &[u8]) -> Vec<u8> {
        let mut overlap = Overlap::new(published.to_vec());
        received
            .iter()
            .copied()
            .filter(|e| overlap.is_new(e))
            .collect()
    }

    #[test]
    fn what_the_old_owner_published_last_is_dropped_from_what_the_new_session_received_first() {
        assert_eq!(new_of(&[1, 2, 3, 4], &[3, 4, 5]), [5]);
        assert_eq!(new_of(&[1, 2], &[3, 4]), [3, 4], "nothing in common");
        assert_eq!(new_of(&[], &[1]), [1]);
        assert_eq!(new_of(&[1, 2, 3], &[1, 2, 3]), [0u8; 0], "all of it");
        assert_eq!(
            new_of(&[1, 2, 3], &[2, 3, 4, 1, 2]),
            [4, 1, 2],
            "once one is new, every later one is"
        );
        // Repeats: the longest overlap wins, so nothing the old owner published is doubled.
        assert_eq!(new_of(&[7, 7, 7], &[7, 7, 7, 8]), [8]);
        assert_eq!(new_of(&[7, 7], &[7, 9]), [9]);
        // The old owner published 3, which the new session never got: 2 is still not doubled.
        assert_eq!(new_of(&[1, 2, 3], &[2, 4]), [4]);
    }

    #[test]
    fn the_old_owners_last_events_reaching_the_new_session_after_the_lease_are_not_doubled() {
        // At the lease the standby had buffered 2 and 3; 4, which the old owner published
        // too, reaches the session after (judging the buffer alone, 2 and 3 matched no tail
        // of what was published, and 2, 3 and 4 went out twice).
        let mut overlap = Overlap::new(vec![1, 2, 3, 4]);
        let buffered: Vec<bool> = [2, 3].iter().map(|e| overlap.is_new(e)).collect();
        assert_eq!(buffered, [false, false]);
        let later: Vec<bool> = [4, 5, 6].iter().map(|e| overlap.is_new(e)).collect();
        assert_eq!(later, [false, true, true]);
        // Nothing buffered at the lease at all.
        assert_eq!(new_of(&[1, 2], &[2, 3]), [3]);
    }

    #[test]
    fn after_a_broken_run_every_event_of_the_session_is_new() {
        let event = |detail: &str| Upstreamed::Event {
            event: notice(detail),
            session_id: String::new(),
            notification_type: None,
        };
        let mut overlap = Overlap::new(vec![notice("a"), notice("b")]);
        assert!(!admits(&mut overlap, &event("a")));
        let lost = Upstreamed::Lost {
            reason: "re-handshake".into(),
        };
        assert!(admits(&mut overlap, &lost));
        assert!(
            admits(&mut overlap, &event("b")),
            "after the session lost its subscription, nothing is matched"
        );
    }
}
