//! The synchronous heart of one agent's feed: fan-out, replay, pins, outcome waiters and
//! resync ordering. It takes events ([`Input`]) and says what its I/O shell must do next
//! ([`Effect`]); it opens no socket, reads no clock (the caller passes `now`) and spawns
//! nothing, so every rule below is unit-tested as `bayeux/` is.
//!
//! Where events come from is the shell's business ([`super::feed`]): a local CometD session,
//! or, in cluster mode, the agent's JetStream subject. Both feed the same inputs; only who
//! allocates sequence numbers differs (the process counter, or the stream).
//!
//! Fan-out policy: each subscriber has a bounded queue; delivery never waits. A subscriber
//! whose queue is full is cut off alone (its stream ends with RESOURCE_EXHAUSTED carrying its
//! last delivered token, so it can resume from the replay buffer); the others are not delayed.
//! Items are shared (`Arc`) by the replay buffer and every queue, never copied per subscriber.

use super::EventsError;
use super::filter::Filter;
use super::item::Item;
use super::outcome::Waiters;
use super::replay::{ReplayBuffer, Resume, Stored, Token};
use crate::proto::session_events_response::Event;
use crate::proto::{NoticeKind, SessionEventsResponse, SessionSnapshot, SmsSession, StreamNotice};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};
use tokio::sync::mpsc;

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

/// What happened upstream, in the order it happened.
#[derive(Debug)]
pub enum Input {
    /// A mapped notification, already numbered.
    Stored(Arc<Stored>),
    /// The upstream subscription is confirmed; `restored` after a loss (or a new session).
    /// `at`: the position its notice stands at (`None`: the newest event's).
    Subscribed { restored: bool, at: Option<u64> },
    /// The upstream session is lost (it is being re-established).
    Lost { reason: String, at: Option<u64> },
    /// The upstream session ended for good.
    Failed(EventsError),
    /// The snapshot read for resync `generation` (or why it failed).
    Snapshot {
        generation: u64,
        result: Result<Vec<SmsSession>, super::feed::SnapshotError>,
    },
}

/// What the shell must do after an input.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    Nothing,
    /// Read the agent's sessions and hand them back as [`Input::Snapshot`] with this
    /// generation: subscribers that asked for snapshots hold their live items meanwhile.
    ReadSnapshot {
        generation: u64,
    },
}

struct Slot {
    tx: mpsc::Sender<Item>,
    filter: Filter,
    end: EndReason,
    /// While a snapshot is read after a restore, this subscriber's live items wait here, so
    /// the snapshot is delivered first (bounded like its queue).
    held: Option<Vec<Item>>,
    /// The position of the last item queued: where the stream resumes if it is cut.
    last_seq: u64,
    /// Items at or before this position are not delivered: the stream resumed from a token
    /// this feed had not reached yet (cluster mode: another replica's follower was ahead).
    /// 0: none (no token is at 0 that this could skip anything for).
    after: u64,
}

/// How a new subscriber starts: the items decided under the lock, in order.
#[derive(Debug)]
pub struct Joined {
    pub slot: u64,
    pub pre: Vec<Item>,
    /// The position the stream registered at (where a snapshot it asked for stands).
    pub registered: String,
}

pub struct Core {
    /// The identity of the sequence numbers: this process's epoch, or the stream's.
    epoch: u64,
    status: Upstream,
    slots: HashMap<u64, Slot>,
    next_slot: u64,
    pub replay: ReplayBuffer,
    /// Calls waiting for their operation's notification (`wait_for_outcome`).
    pub waiters: Waiters,
    /// Subscribers registered or still waiting for the upstream subscription.
    pub interest: usize,
    /// Counts resyncs (snapshot reads after restores), so only the newest one is delivered.
    generation: u64,
    /// The position the current resync's snapshot stands at.
    resync_at: u64,
}

impl Core {
    pub fn new(epoch: u64, replay: ReplayBuffer, waiters: Waiters) -> Self {
        Self {
            epoch,
            status: Upstream::Connecting,
            slots: HashMap::new(),
            next_slot: 0,
            replay,
            waiters,
            interest: 0,
            generation: 0,
            resync_at: 0,
        }
    }

    pub fn token(&self, seq: u64) -> String {
        Token {
            epoch: self.epoch,
            seq,
        }
        .encode()
    }

    pub fn status(&self) -> &Upstream {
        &self.status
    }

    /// The error that ended this feed, if it has ended.
    pub fn failure(&self) -> Option<EventsError> {
        match &self.status {
            Upstream::Failed(e) => Some(e.clone()),
            _ => None,
        }
    }

    pub fn slots_len(&self) -> usize {
        self.slots.len()
    }

    /// Registers a subscriber, resuming from `resume` if given. `issued` is the highest
    /// sequence number the numbering has handed out (a token above it was never issued).
    /// Call only when the feed has not failed.
    pub fn join(
        &mut self,
        tx: mpsc::Sender<Item>,
        filter: Filter,
        end: EndReason,
        resume: Option<Token>,
        issued: u64,
    ) -> Joined {
        let now = self.token(self.replay.last_seq());
        let mut pre = Vec::new();
        match resume.map(|t| (t, self.replay.resume(t, self.epoch, issued))) {
            None => pre.push(notice(
                NoticeKind::Subscribed,
                "subscribed upstream",
                now.clone(),
            )),
            Some((token, Resume::Replay(events))) => {
                crate::metrics::REPLAY.inc(["hit"]);
                // SUBSCRIBED carries the token the stream resumes from, so a client that
                // stops right after it loses nothing of the replay.
                pre.push(notice(
                    NoticeKind::Subscribed,
                    "subscribed upstream; replaying what followed resume_token",
                    token.encode(),
                ));
                pre.extend(events.iter().filter_map(|s| filter.select(s)));
            }
            Some((_, Resume::Gap(why))) => {
                crate::metrics::REPLAY.inc(["gap"]);
                pre.push(notice(
                    NoticeKind::Subscribed,
                    "subscribed upstream",
                    now.clone(),
                ));
                pre.push(notice(NoticeKind::Gap, why, now.clone()));
            }
        }
        let slot = self.next_slot;
        self.next_slot += 1;
        let last_seq = self.replay.last_seq();
        let after = resume
            .filter(|t| t.epoch == self.epoch && t.seq > last_seq && t.seq <= issued)
            .map_or(0, |t| t.seq);
        self.slots.insert(
            slot,
            Slot {
                tx,
                filter,
                end,
                held: None,
                last_seq: last_seq.max(after),
                after,
            },
        );
        Joined {
            slot,
            pre,
            registered: now,
        }
    }

    /// The subscriber's stream is gone. If it was cut for being slow, its resume position
    /// stays pinned for the resume window from `now`.
    pub fn leave(&mut self, slot: u64, now: Instant) {
        self.slots.remove(&slot);
        self.replay.release(slot, now);
    }

    /// Whether a stream resuming from `token` now would get everything after it.
    /// (`slot` is the cut stream's: only its pin makes the promise.)
    pub fn resumable(&mut self, slot: u64, token: &str) -> bool {
        Token::parse(token)
            .is_some_and(|t| t.epoch == self.epoch && self.replay.holds_for(slot, t.seq))
    }

    pub fn apply(&mut self, input: Input) -> Effect {
        if self.failure().is_some() {
            return Effect::Nothing;
        }
        match input {
            Input::Stored(stored) => {
                self.replay.push(stored.clone());
                self.waiters.offer(&stored.response);
                let replay = &mut self.replay;
                self.slots
                    .retain(|id, slot| match slot.filter.select(&stored) {
                        Some(item) => deliver(slot, &item, stored.seq) || cut(replay, *id, slot),
                        None => true,
                    });
            }
            Input::Subscribed { restored, at } => {
                let was = std::mem::replace(&mut self.status, Upstream::Subscribed);
                // A fresh session after a restart (new CSRF token) counts as restored too.
                if restored || was == Upstream::Lost {
                    self.notify(
                        NoticeKind::UpstreamRestored,
                        "re-handshaked and re-subscribed upstream; events may have been missed while it was lost",
                        at,
                    );
                    return self.begin_resync(at);
                }
            }
            Input::Lost { reason, at } => {
                self.status = Upstream::Lost;
                self.notify(
                    NoticeKind::UpstreamLost,
                    &format!("upstream CometD session lost: {reason}"),
                    at,
                );
            }
            Input::Failed(error) => {
                self.status = Upstream::Failed(error.clone());
                // Waiting calls see their confirmation channel closed: UNCONFIRMED, never a
                // guess.
                self.waiters.clear();
                for (_, slot) in self.slots.drain() {
                    *slot.end.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.clone());
                }
            }
            Input::Snapshot { generation, result } => self.end_resync(generation, result),
        }
        Effect::Nothing
    }

    /// After a restore: the subscribers that asked for snapshots hold their live items until
    /// the snapshot read for this restore is delivered.
    fn begin_resync(&mut self, at: Option<u64>) -> Effect {
        let mut any = false;
        for slot in self.slots.values_mut() {
            if slot.filter.include_snapshot {
                slot.held.get_or_insert_with(Vec::new);
                any = true;
            }
        }
        if !any {
            return Effect::Nothing;
        }
        self.generation += 1;
        self.resync_at = at.unwrap_or_else(|| self.replay.last_seq());
        Effect::ReadSnapshot {
            generation: self.generation,
        }
    }

    /// Delivers a resync's snapshot (or, when the read failed, a GAP notice saying so) to
    /// the subscribers that asked for snapshots, then what they held meanwhile. A newer
    /// resync supersedes an older one still under way.
    fn end_resync(
        &mut self,
        generation: u64,
        result: Result<Vec<SmsSession>, super::feed::SnapshotError>,
    ) {
        if self.generation != generation {
            return;
        }
        let token = self.token(self.resync_at);
        let first = match result {
            Ok(sessions) => snapshot(sessions, token),
            Err(why) => notice(
                NoticeKind::Gap,
                &format!(
                    "snapshot read after restore failed: {why}; the sessions' state is unknown"
                ),
                self.token(self.replay.last_seq()),
            ),
        };
        let replay = &mut self.replay;
        self.slots.retain(|id, slot| {
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

    /// Sends a notice to every subscriber, standing at `at` (or the newest event).
    fn notify(&mut self, kind: NoticeKind, detail: &str, at: Option<u64>) {
        let seq = at.unwrap_or_else(|| self.replay.last_seq());
        let response = notice(kind, detail, self.token(seq));
        let replay = &mut self.replay;
        self.slots
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

fn slow(slot: &Slot) {
    // The stream fills in its own last delivered token when it reports this.
    *slot.end.lock().unwrap_or_else(|e| e.into_inner()) = Some(EventsError::SlowConsumer {
        last_resume_token: String::new(),
        resumable: false,
    });
}

/// Queues `item` (standing at `seq`) for one subscriber, or holds it while a resync is under
/// way; never waits. False drops the slot (its queue, or what it may hold, is full).
fn deliver(slot: &mut Slot, item: &Item, seq: u64) -> bool {
    if slot.after != 0 && seq <= slot.after {
        return true;
    }
    match &mut slot.held {
        None => offer(slot, item, seq),
        Some(held) if held.len() < slot.tx.max_capacity() => {
            held.push(item.clone());
            true
        }
        Some(_) => {
            slow(slot);
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
            slow(slot);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ReplayBudget;
    use crate::proto::{NotificationType, SessionStateChange};
    use std::time::Duration;

    const EPOCH: u64 = 0xfeed;

    fn core(max_events: usize) -> Core {
        let replay = ReplayBuffer::new(
            max_events,
            usize::MAX,
            Duration::from_secs(600),
            0,
            ReplayBudget::new(usize::MAX),
        );
        Core::new(EPOCH, replay, Waiters::new(Arc::default()))
    }

    fn event(seq: u64, session: &str) -> Input {
        let response = Item::new(SessionEventsResponse {
            resume_token: Token { epoch: EPOCH, seq }.encode(),
            receive_time: None,
            event: Some(Event::StateChange(SessionStateChange {
                notification_type: NotificationType::PropertiesUpdated as i32,
                ..Default::default()
            })),
        });
        Input::Stored(Arc::new(Stored {
            seq,
            at: Instant::now(),
            bytes: 10,
            session_id: session.into(),
            notification_type: Some(NotificationType::PropertiesUpdated),
            response,
        }))
    }

    struct Sub {
        rx: mpsc::Receiver<Item>,
        end: EndReason,
        joined: Joined,
    }

    fn join(core: &mut Core, cap: usize, filter: Filter, resume: Option<u64>) -> Sub {
        let (tx, rx) = mpsc::channel(cap);
        let end = EndReason::default();
        let issued = core.replay.last_seq();
        let joined = core.join(
            tx,
            filter,
            end.clone(),
            resume.map(|seq| Token { epoch: EPOCH, seq }),
            issued,
        );
        Sub { rx, end, joined }
    }

    /// What a subscriber got, as (kind, seq): "n:KIND" for notices, "e" for events, "s"
    /// for snapshots.
    fn drain(sub: &mut Sub) -> Vec<(String, u64)> {
        let mut out: Vec<Item> = std::mem::take(&mut sub.joined.pre);
        while let Ok(item) = sub.rx.try_recv() {
            out.push(item);
        }
        out.iter()
            .map(|i| {
                let kind = match &i.event {
                    Some(Event::Notice(n)) => {
                        format!("n:{}", NoticeKind::try_from(n.kind).unwrap().as_str_name())
                    }
                    Some(Event::Snapshot(_)) => "s".into(),
                    _ => "e".into(),
                };
                (kind, seq_of(i))
            })
            .collect()
    }

    fn kinds(got: &[(String, u64)]) -> Vec<&str> {
        got.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn fans_out_in_order_to_every_subscriber_that_wants_it() {
        let mut core = core(100);
        core.apply(Input::Subscribed {
            restored: false,
            at: None,
        });
        let mut all = join(&mut core, 8, Filter::default(), None);
        let mut only_b = join(
            &mut core,
            8,
            Filter {
                session_ids: ["b".to_string()].into(),
                ..Default::default()
            },
            None,
        );
        for (seq, s) in [(1, "a"), (2, "b"), (3, "a")] {
            assert_eq!(core.apply(event(seq, s)), Effect::Nothing);
        }
        let got = drain(&mut all);
        assert_eq!(kinds(&got), ["n:NOTICE_KIND_SUBSCRIBED", "e", "e", "e"]);
        assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(
            drain(&mut only_b),
            [("n:NOTICE_KIND_SUBSCRIBED".into(), 0), ("e".into(), 2)]
        );
    }

    #[test]
    fn a_resume_replays_exactly_what_followed_and_a_stale_token_is_a_gap() {
        let mut core = core(3);
        for seq in 1..=5 {
            core.apply(event(seq, "a"));
        }
        let mut resumed = join(&mut core, 8, Filter::default(), Some(3));
        let got = drain(&mut resumed);
        assert_eq!(
            got,
            [
                ("n:NOTICE_KIND_SUBSCRIBED".into(), 3),
                ("e".into(), 4),
                ("e".into(), 5)
            ]
        );
        // Seq 1 was evicted by the count bound: resuming from 0 cannot be honoured.
        let mut stale = join(&mut core, 8, Filter::default(), Some(0));
        assert_eq!(
            kinds(&drain(&mut stale)),
            ["n:NOTICE_KIND_SUBSCRIBED", "n:NOTICE_KIND_GAP"]
        );
        // A token from the future was never issued.
        let mut future = join(&mut core, 8, Filter::default(), Some(99));
        assert_eq!(
            kinds(&drain(&mut future)),
            ["n:NOTICE_KIND_SUBSCRIBED", "n:NOTICE_KIND_GAP"]
        );
    }

    #[test]
    fn a_slow_subscriber_is_cut_alone_and_its_position_pinned() {
        let mut core = core(2);
        let mut slow = join(&mut core, 1, Filter::default(), None);
        let mut fast = join(&mut core, 16, Filter::default(), None);
        for seq in 1..=6 {
            core.apply(event(seq, "a"));
        }
        assert_eq!(core.slots_len(), 1, "only the slow one is dropped");
        assert!(matches!(
            *slow.end.lock().unwrap(),
            Some(EventsError::SlowConsumer { .. })
        ));
        assert_eq!(drain(&mut slow).last().unwrap().1, 1, "it got seq 1 only");
        assert_eq!(drain(&mut fast).len(), 7);
        // Beyond the count bound (2), the pin keeps everything after seq 1 resumable.
        assert!(
            core.resumable(
                slow.joined.slot,
                &Token {
                    epoch: EPOCH,
                    seq: 1
                }
                .encode()
            )
        );
        assert!(
            !core.resumable(
                fast.joined.slot,
                &Token {
                    epoch: EPOCH,
                    seq: 1
                }
                .encode()
            )
        );
        let mut back = join(&mut core, 16, Filter::default(), Some(1));
        assert_eq!(drain(&mut back).len(), 6, "SUBSCRIBED and seqs 2..=6");
    }

    #[test]
    fn after_a_restore_the_snapshot_comes_before_what_was_held_and_at_the_restore() {
        let mut core = core(100);
        core.apply(Input::Subscribed {
            restored: false,
            at: None,
        });
        let snap = Filter {
            include_snapshot: true,
            ..Default::default()
        };
        let mut with = join(&mut core, 16, snap, None);
        let mut without = join(&mut core, 16, Filter::default(), None);
        core.apply(event(1, "a"));
        core.apply(Input::Lost {
            reason: "gone".into(),
            at: None,
        });
        assert_eq!(core.status(), &Upstream::Lost);
        let effect = core.apply(Input::Subscribed {
            restored: true,
            at: None,
        });
        let Effect::ReadSnapshot { generation } = effect else {
            panic!("{effect:?}");
        };
        // Live items during the read are held for the snapshot taker only.
        core.apply(event(2, "a"));
        assert_eq!(
            core.apply(Input::Snapshot {
                generation,
                result: Ok(vec![])
            }),
            Effect::Nothing
        );
        let got = drain(&mut with);
        assert_eq!(
            got,
            [
                ("n:NOTICE_KIND_SUBSCRIBED".into(), 0),
                ("e".into(), 1),
                ("n:NOTICE_KIND_UPSTREAM_LOST".into(), 1),
                ("n:NOTICE_KIND_UPSTREAM_RESTORED".into(), 1),
                ("s".into(), 1),
                ("e".into(), 2),
            ]
        );
        assert_eq!(
            kinds(&drain(&mut without)),
            [
                "n:NOTICE_KIND_SUBSCRIBED",
                "e",
                "n:NOTICE_KIND_UPSTREAM_LOST",
                "n:NOTICE_KIND_UPSTREAM_RESTORED",
                "e"
            ]
        );
    }

    #[test]
    fn a_newer_resync_supersedes_an_older_one_and_a_failed_read_is_a_gap() {
        let mut core = core(100);
        let snap = Filter {
            include_snapshot: true,
            ..Default::default()
        };
        let mut with = join(&mut core, 16, snap, None);
        let restore = |core: &mut Core| match core.apply(Input::Subscribed {
            restored: true,
            at: None,
        }) {
            Effect::ReadSnapshot { generation } => generation,
            other => panic!("{other:?}"),
        };
        let old = restore(&mut core);
        let new = restore(&mut core);
        core.apply(Input::Snapshot {
            generation: old,
            result: Ok(vec![]),
        });
        // The superseded read delivers nothing; the second restore's notice is still held.
        assert_eq!(
            kinds(&drain(&mut with)),
            [
                "n:NOTICE_KIND_SUBSCRIBED",
                "n:NOTICE_KIND_UPSTREAM_RESTORED"
            ]
        );
        core.apply(Input::Snapshot {
            generation: new,
            result: Err(crate::upstream::UpstreamError::Unreachable(
                crate::upstream::Transport::Connect,
            )
            .into()),
        });
        assert_eq!(
            kinds(&drain(&mut with)),
            ["n:NOTICE_KIND_GAP", "n:NOTICE_KIND_UPSTREAM_RESTORED"]
        );
    }

    #[test]
    fn notices_from_a_numbered_source_stand_at_their_own_position() {
        let mut core = core(100);
        let mut sub = join(&mut core, 16, Filter::default(), None);
        core.apply(event(4, "a"));
        core.apply(Input::Lost {
            reason: "owner gone".into(),
            at: Some(7),
        });
        let got = drain(&mut sub);
        assert_eq!(got[2], ("n:NOTICE_KIND_UPSTREAM_LOST".into(), 7));
    }

    #[test]
    fn a_token_ahead_of_this_feed_skips_what_it_already_had() {
        let mut core = core(100);
        core.apply(event(1, "a"));
        let (tx, rx) = mpsc::channel(8);
        let joined = core.join(
            tx,
            Filter::default(),
            EndReason::default(),
            Some(Token {
                epoch: EPOCH,
                seq: 3,
            }),
            3,
        );
        let mut sub = Sub {
            rx,
            end: EndReason::default(),
            joined,
        };
        for seq in 2..=4 {
            core.apply(event(seq, "a"));
        }
        assert_eq!(
            drain(&mut sub),
            [("n:NOTICE_KIND_SUBSCRIBED".into(), 3), ("e".into(), 4)],
            "2 and 3 were delivered where the token came from"
        );
    }

    #[test]
    fn a_failure_ends_every_subscriber_and_nothing_after_it_counts() {
        let mut core = core(100);
        let sub = join(&mut core, 16, Filter::default(), None);
        core.apply(Input::Failed(EventsError::Ended("bye".into())));
        assert_eq!(core.slots_len(), 0);
        assert_eq!(
            *sub.end.lock().unwrap(),
            Some(EventsError::Ended("bye".into()))
        );
        assert!(core.failure().is_some());
        core.apply(event(1, "a"));
        assert!(core.replay.is_empty(), "a dead feed stores nothing");
    }
}
