//! The per-agent replay buffer and resume tokens.
//!
//! Every delivered event gets a sequence number from one process-wide counter, and its
//! token is `<process epoch>.<seq>`. The buffer keeps an agent's most recent events, bounded
//! by count, encoded bytes and age, and remembers its `floor`: every event of this agent with a sequence
//! number above the floor is still held. A token is honoured when it is from this process
//! and not below the floor; then exactly the held events after it are replayed.
//!
//! A subscriber cut off for being slow is told to resume from its last delivered token; so
//! that this is a promise kept, the buffer *pins* that position: while the cut stream drains
//! and for [`RESUME_WINDOW`] after it ends, neither the count nor the age bound evicts events
//! after a pinned position (the byte bounds still do, and the cut stream's message says so
//! honestly if they did).

use super::item::Item;
use crate::proto::NotificationType;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Longest resume token accepted; anything longer is not one of ours.
pub const MAX_TOKEN_LEN: usize = 64;

/// How long after a cut stream ends its position stays pinned: time for the client to
/// reconnect and resume.
pub const RESUME_WINDOW: Duration = Duration::from_secs(60);

/// Most pins held at once per agent: one per stream cut within a resume window, so as many
/// as `--max-streams-per-agent` allows by default. Beyond, the oldest is dropped; a stream
/// whose pin went is then told honestly that its resume may meet a GAP ([`Self::holds_for`]).
const MAX_PINS: usize = 10_000;

/// A cut subscriber's resume position.
#[derive(Debug)]
struct Pin {
    /// The subscriber slot it belongs to.
    slot: u64,
    seq: u64,
    /// `None` while the cut stream still drains; then the end of the resume window.
    until: Option<Instant>,
}

/// One delivered event as the buffer keeps it: the shared item and what filters need.
#[derive(Debug)]
pub struct Stored {
    pub seq: u64,
    pub at: Instant,
    /// Encoded size of `response`, for the byte budget.
    pub bytes: usize,
    pub session_id: String,
    pub notification_type: Option<NotificationType>,
    pub response: Item,
}

/// A parsed resume token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub epoch: u64,
    pub seq: u64,
}

impl Token {
    pub fn encode(self) -> String {
        format!("{:016x}.{}", self.epoch, self.seq)
    }

    pub fn parse(text: &str) -> Option<Self> {
        if text.len() > MAX_TOKEN_LEN {
            return None;
        }
        let (epoch, seq) = text.split_once('.')?;
        if epoch.len() != 16 {
            return None;
        }
        Some(Self {
            epoch: u64::from_str_radix(epoch, 16).ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// What a resume token gets a new subscriber.
#[derive(Debug)]
pub enum Resume {
    /// The events after the token (possibly none).
    Replay(Vec<Arc<Stored>>),
    /// The token cannot be honoured; why.
    Gap(&'static str),
}

/// The process-wide budget all agents' replay buffers draw from (encoded bytes), so memory is
/// bounded for the whole gateway and not only per agent. Shared fairly: when the budget is
/// exceeded, a buffer holding more than its fair share (budget / buffers alive) evicts its
/// oldest events as it takes new ones; one under its share keeps what it has. A cloneable
/// handle.
#[derive(Debug, Clone)]
pub struct ReplayBudget {
    inner: Arc<BudgetInner>,
}

#[derive(Debug)]
struct BudgetInner {
    max_bytes: usize,
    used: AtomicUsize,
    buffers: AtomicUsize,
}

impl ReplayBudget {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            inner: Arc::new(BudgetInner {
                max_bytes,
                used: AtomicUsize::new(0),
                buffers: AtomicUsize::new(0),
            }),
        }
    }

    /// Encoded bytes held by every buffer together.
    pub fn used(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    fn over(&self) -> bool {
        self.used() > self.inner.max_bytes
    }

    fn fair_share(&self) -> usize {
        self.inner.max_bytes / self.inner.buffers.load(Ordering::Relaxed).max(1)
    }
}

#[derive(Debug)]
pub struct ReplayBuffer {
    events: VecDeque<Arc<Stored>>,
    max_events: usize,
    max_bytes: usize,
    max_age: Duration,
    bytes: usize,
    floor: u64,
    pins: Vec<Pin>,
    budget: ReplayBudget,
}

impl Drop for ReplayBuffer {
    fn drop(&mut self) {
        let budget = &self.budget.inner;
        budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
        budget.buffers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ReplayBuffer {
    /// `floor` is the sequence number current when the buffer starts: nothing of this agent
    /// at or below it is held. The buffer draws on `budget` with every other agent's.
    pub fn new(
        max_events: usize,
        max_bytes: usize,
        max_age: Duration,
        floor: u64,
        budget: ReplayBudget,
    ) -> Self {
        budget.inner.buffers.fetch_add(1, Ordering::Relaxed);
        Self {
            events: VecDeque::new(),
            max_events,
            max_bytes,
            max_age,
            bytes: 0,
            floor,
            pins: Vec::new(),
            budget,
        }
    }

    /// Where the numbering's history starts for this agent, learnt after the buffer was made
    /// (cluster mode: from the agent's subject). Only while it holds nothing.
    pub fn set_floor(&mut self, floor: u64) {
        if self.events.is_empty() {
            self.floor = floor;
        }
    }

    /// Holds everything after `seq` for the cut subscriber `slot` (see the module notes).
    pub fn pin(&mut self, slot: u64, seq: u64) {
        if self.pins.len() >= MAX_PINS {
            self.pins.remove(0);
        }
        self.pins.push(Pin {
            slot,
            seq,
            until: None,
        });
    }

    /// The cut stream of `slot` ended: its pin lasts [`RESUME_WINDOW`] more.
    pub fn release(&mut self, slot: u64, now: Instant) {
        for pin in self.pins.iter_mut().filter(|p| p.slot == slot) {
            pin.until.get_or_insert(now + RESUME_WINDOW);
        }
    }

    /// The end of the latest resume window still open, if any (a pin whose stream is still
    /// draining counts as open for a full window from `now`).
    pub fn pinned_until(&self, now: Instant) -> Option<Instant> {
        self.pins
            .iter()
            .map(|p| p.until.unwrap_or(now + RESUME_WINDOW))
            .filter(|until| *until > now)
            .max()
    }

    /// Whether a resume from `seq` would replay without a gap now.
    pub fn holds(&self, seq: u64) -> bool {
        seq >= self.floor
    }

    /// Whether the cut subscriber `slot` can resume from `seq` without a gap: the events
    /// after it are held now, and its pin still protects them from the count bound.
    pub fn holds_for(&mut self, slot: u64, seq: u64) -> bool {
        self.expire(Instant::now());
        self.holds(seq) && self.pins.iter().any(|p| p.slot == slot && p.seq <= seq)
    }

    pub fn push(&mut self, stored: Arc<Stored>) {
        self.bytes += stored.bytes;
        self.budget
            .inner
            .used
            .fetch_add(stored.bytes, Ordering::Relaxed);
        self.events.push_back(stored);
        self.expire(Instant::now());
    }

    /// The newest sequence number this buffer has seen (its floor when empty).
    pub fn last_seq(&self) -> u64 {
        self.events.back().map_or(self.floor, |s| s.seq)
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// The events held after `seq`, oldest first.
    pub fn after(&self, seq: u64) -> impl Iterator<Item = &Arc<Stored>> {
        self.events.iter().filter(move |s| s.seq > seq)
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        self.pins
            .retain(|p| p.until.is_none_or(|until| until > now));
        let pinned = self.pins.iter().map(|p| p.seq).min();
        while let Some(front) = self.events.front() {
            // Evicting `front` breaks a pin at `p` only if `front` comes after it.
            let held_for_a_pin = pinned.is_some_and(|p| front.seq > p);
            let too_many = self.events.len() > self.max_events && !held_for_a_pin;
            // The process-wide budget: over it, whoever holds more than a fair share gives.
            let too_big = self.bytes > self.max_bytes
                || (self.budget.over() && self.bytes > self.budget.fair_share());
            let too_old = now.saturating_duration_since(front.at) > self.max_age && !held_for_a_pin;
            if !(too_many || too_big || too_old) {
                break;
            }
            self.floor = front.seq;
            self.bytes -= front.bytes;
            self.budget
                .inner
                .used
                .fetch_sub(front.bytes, Ordering::Relaxed);
            self.events.pop_front();
        }
    }

    /// `issued` is the highest sequence number this process has handed out (any agent).
    pub fn resume(&mut self, token: Token, epoch: u64, issued: u64) -> Resume {
        self.expire(Instant::now());
        if token.epoch == epoch && token.seq > issued {
            return Resume::Gap(
                "resume_token was never issued by this gateway; events before now cannot be replayed",
            );
        }
        if token.epoch != epoch {
            return Resume::Gap(
                "resume_token is from another gateway process; events in between cannot be replayed",
            );
        }
        if token.seq < self.floor {
            return Resume::Gap(
                "resume_token is older than the replay buffer; events in between were dropped",
            );
        }
        Resume::Replay(
            self.events
                .iter()
                .filter(|s| s.seq > token.seq)
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::SessionEventsResponse;

    fn unlimited() -> ReplayBudget {
        ReplayBudget::new(usize::MAX)
    }

    #[test]
    fn the_process_budget_is_shared_fairly_and_accounted_exactly() {
        let now = Instant::now();
        let budget = ReplayBudget::new(1000);
        let mut quiet =
            ReplayBuffer::new(100, usize::MAX, Duration::from_secs(600), 0, budget.clone());
        let mut busy =
            ReplayBuffer::new(100, usize::MAX, Duration::from_secs(600), 0, budget.clone());
        for seq in 1..=3 {
            quiet.push(sized(seq, now, 100));
        }
        for seq in 10..=40 {
            busy.push(sized(seq, now, 100));
        }
        // Over budget, the busy one gives down to its fair share (500); the quiet one keeps all.
        assert_eq!(quiet.len(), 3);
        assert!(busy.len() <= 7, "{}", busy.len());
        assert!(budget.used() <= 1000, "{}", budget.used());
        assert_eq!(budget.used(), (quiet.len() + busy.len()) * 100);
        drop(busy);
        assert_eq!(budget.used(), 300, "a dropped buffer returns what it held");
    }

    fn stored(seq: u64, at: Instant) -> Arc<Stored> {
        sized(seq, at, 100)
    }

    fn sized(seq: u64, at: Instant, bytes: usize) -> Arc<Stored> {
        Arc::new(Stored {
            seq,
            at,
            bytes,
            session_id: String::new(),
            notification_type: None,
            response: Item::new(SessionEventsResponse::default()),
        })
    }

    fn seqs(r: Resume) -> Vec<u64> {
        match r {
            Resume::Replay(v) => v.iter().map(|s| s.seq).collect(),
            Resume::Gap(why) => panic!("unexpected gap: {why}"),
        }
    }

    #[test]
    fn a_pin_holds_what_came_after_it_beyond_the_count_bound_for_a_while() {
        let now = Instant::now();
        let mut buf = ReplayBuffer::new(3, usize::MAX, Duration::from_secs(600), 0, unlimited());
        for seq in 1..=3 {
            buf.push(stored(seq, now));
        }
        buf.pin(7, 2);
        for seq in 4..=100 {
            buf.push(stored(seq, now));
        }
        assert!(buf.holds(2));
        assert!(
            buf.pinned_until(now).is_some(),
            "a draining stream's pin is open"
        );
        assert_eq!(
            seqs(buf.resume(Token { epoch: 1, seq: 2 }, 1, 100)),
            (3..=100).collect::<Vec<_>>()
        );
        // The stream ended; after the resume window the pin goes and the count bound is back.
        buf.release(7, now - RESUME_WINDOW - Duration::from_secs(1));
        buf.push(stored(101, now));
        assert_eq!(buf.len(), 3);
        assert!(!buf.holds(2));
        assert_eq!(buf.pinned_until(now), None);
    }

    #[test]
    fn a_pin_holds_against_age_and_is_what_makes_a_resume_promise() {
        let now = Instant::now();
        let old = now - Duration::from_secs(120);
        let mut buf = ReplayBuffer::new(100, usize::MAX, Duration::from_secs(60), 0, unlimited());
        buf.pin(9, 0);
        // Older than the age bound, but after the pin: kept.
        buf.push(stored(1, old));
        buf.push(stored(2, old));
        buf.push(stored(3, now));
        assert!(buf.holds_for(9, 0));
        assert_eq!(
            seqs(buf.resume(Token { epoch: 1, seq: 0 }, 1, 3)),
            [1, 2, 3]
        );
        assert!(
            !buf.holds_for(8, 0),
            "another slot's pin promises nothing to this one"
        );
    }

    #[test]
    fn a_pin_never_defeats_the_byte_bound() {
        let now = Instant::now();
        let mut buf = ReplayBuffer::new(2, 500, Duration::from_secs(600), 0, unlimited());
        buf.push(sized(1, now, 100));
        buf.pin(1, 1);
        for seq in 2..=10 {
            buf.push(sized(seq, now, 100));
        }
        assert_eq!(buf.len(), 5);
        assert!(!buf.holds(1));
    }

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let t = Token {
            epoch: 0xabc,
            seq: 42,
        };
        assert_eq!(Token::parse(&t.encode()), Some(t));
        for bad in [
            "",
            "x",
            "abc.1",
            "0000000000000abc.",
            "0000000000000abc.-1",
            &"9".repeat(100),
        ] {
            assert_eq!(Token::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn replays_after_token_within_bounds() {
        let now = Instant::now();
        let mut buf = ReplayBuffer::new(3, usize::MAX, Duration::from_secs(60), 10, unlimited());
        for seq in [11, 12, 15, 20] {
            buf.push(stored(seq, now));
        }
        // Count bound: 11 was dropped, so the floor is 11.
        assert_eq!(buf.len(), 3);
        assert_eq!(
            seqs(buf.resume(Token { epoch: 1, seq: 12 }, 1, 20)),
            vec![15, 20]
        );
        assert_eq!(
            seqs(buf.resume(Token { epoch: 1, seq: 11 }, 1, 20)),
            vec![12, 15, 20]
        );
        assert_eq!(
            seqs(buf.resume(Token { epoch: 1, seq: 20 }, 1, 20)),
            Vec::<u64>::new()
        );
        assert!(matches!(
            buf.resume(Token { epoch: 1, seq: 10 }, 1, 20),
            Resume::Gap(_)
        ));
        assert!(matches!(
            buf.resume(Token { epoch: 2, seq: 20 }, 1, 20),
            Resume::Gap(_)
        ));
        assert_eq!(buf.last_seq(), 20);
    }

    #[test]
    fn a_token_never_issued_is_a_gap() {
        let mut buf = ReplayBuffer::new(10, usize::MAX, Duration::from_secs(60), 0, unlimited());
        buf.push(stored(1, Instant::now()));
        assert!(matches!(
            buf.resume(Token { epoch: 1, seq: 99 }, 1, 1),
            Resume::Gap(_)
        ));
        assert!(matches!(
            buf.resume(Token { epoch: 1, seq: 1 }, 1, 1),
            Resume::Replay(_)
        ));
    }

    #[test]
    fn byte_budget_moves_the_floor() {
        let now = Instant::now();
        let mut buf = ReplayBuffer::new(100, 250, Duration::from_secs(60), 0, unlimited());
        for seq in 1..=3 {
            buf.push(sized(seq, now, 100));
        }
        assert_eq!(
            buf.len(),
            2,
            "300 bytes over a 250-byte budget: the oldest goes"
        );
        assert!(matches!(
            buf.resume(Token { epoch: 1, seq: 0 }, 1, 3),
            Resume::Gap(_)
        ));
        assert_eq!(
            seqs(buf.resume(Token { epoch: 1, seq: 1 }, 1, 3)),
            vec![2, 3]
        );
    }

    #[test]
    fn age_bound_moves_the_floor() {
        let old = Instant::now() - Duration::from_secs(120);
        let mut buf = ReplayBuffer::new(100, usize::MAX, Duration::from_secs(60), 0, unlimited());
        buf.push(stored(1, old));
        buf.push(stored(2, Instant::now()));
        assert_eq!(buf.len(), 1);
        assert!(matches!(
            buf.resume(Token { epoch: 7, seq: 0 }, 7, 20),
            Resume::Gap(_)
        ));
        assert_eq!(seqs(buf.resume(Token { epoch: 7, seq: 1 }, 7, 20)), vec![2]);
    }
}
