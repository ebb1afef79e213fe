//! What this gateway sent for one agent and has not heard the end of, per SMS session: the
//! operations in flight without a waiting call, the sessions where an operation's fate
//! became unknown a moment ago (sent, and no referenceId or outcome to tell its
//! notifications apart; or with a referenceId, which an `Error` without one does not name),
//! and the referenceIds known to belong to an operation. It exists for
//! one question `events::outcome` asks before pinning an `Error` notification on a waiting
//! call by order (its reply named no referenceId): could another operation own it? If
//! anything here says so, the call stays UNCONFIRMED rather than be told "failed" for what
//! may have been applied. Synchronous; its lock is never held across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a session stays unsettled after an operation on it ended with its fate unknown.
/// GWS reports an accepted operation's failure once its backend gave up on it, typically
/// within seconds; a minute covers that several times over, while a session busy with
/// operations whose ends nobody watches never has its Errors pinned on anyone.
pub const UNSETTLED_FOR: Duration = Duration::from_secs(60);

/// ReferenceIds remembered per agent, each for [`UNSETTLED_FOR`]. They guard against the
/// stray notifications of operations that just ended (an Accept publishes three with its one
/// referenceId, an Error may trail a confirmation) and against the referenceIds of calls that
/// did not wait; those arrive within seconds of their operation. The cap only bounds a burst
/// (the set grows with the load, a few dozen bytes each); one forgotten before its time makes
/// the whole agent unsettled for the rest of it, so a busy agent never has a stray Error
/// pinned on a waiting call by elimination.
pub const MAX_KNOWN: usize = 4096;

/// Sessions tracked per agent (each map); beyond it the whole agent counts as unsettled,
/// for [`UNSETTLED_FOR`] or while the untracked POSTs are out (honest, and bounded whatever
/// the load). Entries idle again are dropped when they end, expired ones when the map is full.
pub const MAX_SESSIONS: usize = 1024;

#[derive(Debug, Default)]
pub struct Unsettled {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, Entry>,
    /// Sessions where an operation whose reply named a referenceId ended with its fate
    /// unknown (answered without a waiting call, or its wait ended without an outcome): an
    /// `Error` without referenceId may be its, one with a referenceId is told apart by it.
    /// Unsettled until then, for unreferenced Errors only.
    unreferenced: HashMap<String, Instant>,
    /// Set when `sessions` or `unreferenced` was full: every session is unsettled until then.
    all_until: Option<Instant>,
    /// POSTs without a waiting call sent while `sessions` was full of live entries: while
    /// any is out, every session is unsettled.
    untracked_in_flight: u32,
    /// Each with the time it was first remembered; `known_order` holds the same, oldest first.
    known: HashMap<i64, Instant>,
    known_order: VecDeque<i64>,
    /// Set when a referenceId was forgotten before its [`UNSETTLED_FOR`] was over: until
    /// then, an Error naming it would look like no operation's, so every session is unsettled.
    forgot_until: Option<Instant>,
}

#[derive(Debug, Default)]
struct Entry {
    /// POSTs sent without a waiting call and not yet answered.
    in_flight: u32,
    /// Unsettled until then: an operation on the session ended with its fate unknown.
    until: Option<Instant>,
}

impl Entry {
    fn idle(&self, now: Instant) -> bool {
        self.in_flight == 0 && self.until.is_none_or(|u| u <= now)
    }
}

impl Inner {
    /// Drops the entries with nothing in flight and nothing unsettled any more, once
    /// `sessions` is full; whether there is room for another then.
    fn make_room(&mut self, now: Instant) -> bool {
        if self.sessions.len() >= MAX_SESSIONS {
            self.sessions.retain(|_, e| !e.idle(now));
        }
        self.sessions.len() < MAX_SESSIONS
    }
}

impl Unsettled {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A POST on `session_id` that no call waits on is about to be sent: the session is
    /// unsettled until the guard says how it ended (dropped unsaid: the call was cancelled or
    /// its fate is unknown).
    pub fn sending<'a>(&'a self, session_id: &'a str) -> Sending<'a> {
        self.sending_at(session_id, Instant::now())
    }

    fn sending_at<'a>(&'a self, session_id: &'a str, now: Instant) -> Sending<'a> {
        let mut inner = self.lock();
        let room = inner.make_room(now);
        let tracked = match inner.sessions.get_mut(session_id) {
            Some(entry) => {
                entry.in_flight += 1;
                true
            }
            None if room => {
                inner.sessions.insert(
                    session_id.to_string(),
                    Entry {
                        in_flight: 1,
                        until: None,
                    },
                );
                true
            }
            None => {
                inner.untracked_in_flight += 1;
                false
            }
        };
        Sending {
            tracker: self,
            session_id,
            tracked,
            done: false,
        }
    }

    /// An operation on `session_id` ended with its fate unknown.
    pub fn unsettle(&self, session_id: &str) {
        self.unsettle_at(session_id, Instant::now());
    }

    fn unsettle_at(&self, session_id: &str, now: Instant) {
        let until = now + UNSETTLED_FOR;
        let mut inner = self.lock();
        // Pruned whether the key is there or not: every session id ever touched would stay.
        let room = inner.make_room(now);
        match inner.sessions.get_mut(session_id) {
            Some(entry) => entry.until = Some(until),
            None if room => {
                inner.sessions.insert(
                    session_id.to_string(),
                    Entry {
                        in_flight: 0,
                        until: Some(until),
                    },
                );
            }
            None => inner.all_until = Some(until),
        }
    }

    /// An operation on `session_id` whose reply named a referenceId ended with its fate
    /// unknown: an `Error` there without a referenceId may be its.
    pub fn unsettle_unreferenced(&self, session_id: &str) {
        self.unsettle_unreferenced_at(session_id, Instant::now());
    }

    fn unsettle_unreferenced_at(&self, session_id: &str, now: Instant) {
        let until = now + UNSETTLED_FOR;
        let mut inner = self.lock();
        if !inner.unreferenced.contains_key(session_id) && inner.unreferenced.len() >= MAX_SESSIONS
        {
            inner.unreferenced.retain(|_, u| *u > now);
            if inner.unreferenced.len() >= MAX_SESSIONS {
                inner.all_until = Some(until);
                return;
            }
        }
        inner.unreferenced.insert(session_id.to_string(), until);
    }

    /// Whether an operation on `session_id` is in flight without a waiting call, or ended
    /// with its fate unknown a moment ago: an `Error` there carrying a referenceId no
    /// operation is known by may be its.
    pub fn is_unsettled(&self, session_id: &str) -> bool {
        self.is_unsettled_at(session_id, Instant::now())
    }

    /// Whether an `Error` about `session_id` carrying `reference_id` may belong to an
    /// operation no waiting call stands for. Without a referenceId, also an operation whose
    /// reply named one (the Error does not say it is not that one's).
    pub fn is_unsettled_for(&self, session_id: &str, reference_id: Option<i64>) -> bool {
        let now = Instant::now();
        self.is_unsettled_at(session_id, now)
            || (reference_id.is_none()
                && self
                    .lock()
                    .unreferenced
                    .get(session_id)
                    .is_some_and(|u| *u > now))
    }

    fn is_unsettled_at(&self, session_id: &str, now: Instant) -> bool {
        let inner = self.lock();
        inner.all_until.is_some_and(|u| u > now)
            || inner.forgot_until.is_some_and(|u| u > now)
            || inner.untracked_in_flight > 0
            || inner.sessions.get(session_id).is_some_and(|e| !e.idle(now))
    }

    /// `reference_id` belongs to an operation (its reply or its outcome carried it).
    pub fn remember(&self, reference_id: i64) {
        self.remember_at(reference_id, Instant::now());
    }

    fn remember_at(&self, reference_id: i64, now: Instant) {
        let mut inner = self.lock();
        if inner.known.contains_key(&reference_id) {
            return;
        }
        let inner = &mut *inner;
        // Oldest first: those past their time go, then, if still full, the oldest.
        while let Some(&oldest) = inner.known_order.front() {
            let until = inner.known.get(&oldest).map_or(now, |t| *t + UNSETTLED_FOR);
            if until > now && inner.known_order.len() < MAX_KNOWN {
                break;
            }
            inner.known_order.pop_front();
            inner.known.remove(&oldest);
            if until > now {
                inner.forgot_until = inner.forgot_until.max(Some(until));
            }
        }
        inner.known.insert(reference_id, now);
        inner.known_order.push_back(reference_id);
    }

    /// Whether `reference_id` belongs to an operation (remembered within [`UNSETTLED_FOR`]).
    pub fn is_known(&self, reference_id: i64) -> bool {
        self.lock().known.contains_key(&reference_id)
    }

    fn finish(&self, session_id: &str, tracked: bool, unsettle: bool) {
        let now = Instant::now();
        {
            let mut inner = self.lock();
            if !tracked {
                inner.untracked_in_flight = inner.untracked_in_flight.saturating_sub(1);
            } else if let Some(entry) = inner.sessions.get_mut(session_id) {
                entry.in_flight = entry.in_flight.saturating_sub(1);
                // Nothing out and its unsettled time over (or none): nothing to keep.
                if !unsettle && entry.idle(now) {
                    inner.sessions.remove(session_id);
                }
            }
        }
        if unsettle {
            self.unsettle_at(session_id, now);
        }
    }
}

/// One POST without a waiting call, between its sending and its answer.
pub struct Sending<'a> {
    tracker: &'a Unsettled,
    session_id: &'a str,
    /// Counted in its session's entry (else agent-wide: the sessions were full).
    tracked: bool,
    done: bool,
}

impl Sending<'_> {
    /// GWS accepted it. With a referenceId, its notifications carrying it are known to be its
    /// own, but not an Error without one; without one nobody can tell them apart, and nobody
    /// watches them: its fate is unknown.
    pub fn answered(mut self, reference_id: Option<i64>) {
        self.done = true;
        if let Some(r) = reference_id {
            self.tracker.remember(r);
            // Its failure may come as an Error without the referenceId.
            self.tracker.unsettle_unreferenced(self.session_id);
        }
        self.tracker
            .finish(self.session_id, self.tracked, reference_id.is_none());
    }

    /// It was refused, or never sent: nothing of it can follow.
    pub fn not_applied(mut self) {
        self.done = true;
        self.tracker.finish(self.session_id, self.tracked, false);
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Cancelled or ended without an answer that says: it may have been applied.
            self.tracker.finish(self.session_id, self.tracked, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_unsettled_while_a_post_is_out_and_after_an_unknown_end() {
        let t = Unsettled::default();
        assert!(!t.is_unsettled("S"));
        let refused = t.sending("S");
        let other = t.sending("S");
        assert!(t.is_unsettled("S") && !t.is_unsettled("T"));
        refused.not_applied();
        assert!(t.is_unsettled("S"), "one is still out");
        other.answered(Some(7));
        assert!(!t.is_unsettled("S"), "answered with its referenceId");
        assert!(t.is_known(7) && !t.is_known(8));
        assert!(
            t.lock().sessions.is_empty(),
            "nothing kept for a settled session"
        );

        t.sending("S").answered(None);
        assert!(
            t.is_unsettled("S"),
            "accepted without a referenceId: fate unknown"
        );
        drop(t.sending("T"));
        assert!(
            t.is_unsettled("T"),
            "cancelled or unanswered: may have been applied"
        );
        let later = Instant::now() + UNSETTLED_FOR + Duration::from_millis(1);
        assert!(!t.is_unsettled_at("S", later) && !t.is_unsettled_at("T", later));
    }

    #[test]
    fn sessions_stay_bounded_whatever_the_session_ids() {
        // Random session ids against a slow GWS: each answered without a referenceId.
        let t = Unsettled::default();
        for i in 0..MAX_SESSIONS + 10 {
            t.sending(&format!("s{i}")).answered(None);
        }
        assert_eq!(t.lock().sessions.len(), MAX_SESSIONS);
        assert!(
            t.is_unsettled("never-seen"),
            "beyond: the agent is unsettled"
        );

        // Out at once, more than fit: the rest are counted agent-wide.
        let t = Unsettled::default();
        let ids: Vec<String> = (0..=MAX_SESSIONS).map(|i| format!("s{i}")).collect();
        let out: Vec<_> = ids.iter().map(|id| t.sending(id)).collect();
        assert_eq!(t.lock().sessions.len(), MAX_SESSIONS);
        assert!(t.is_unsettled("never-seen"), "one is out untracked");
        for sending in out {
            sending.not_applied();
        }
        assert!(!t.is_unsettled("never-seen") && t.lock().sessions.is_empty());

        // Full of entries that expired: they make room, whichever key comes.
        let now = Instant::now();
        for i in 0..MAX_SESSIONS {
            t.unsettle_at(&format!("s{i}"), now);
        }
        let later = now + UNSETTLED_FOR + Duration::from_millis(1);
        t.unsettle_at("s0", later);
        assert_eq!(t.lock().sessions.len(), 1);
        assert!(t.is_unsettled_at("s0", later) && !t.is_unsettled_at("s1", later));
        for i in 0..MAX_SESSIONS {
            t.unsettle_at(&format!("s{i}"), now);
        }
        let out = t.sending_at("new", later);
        assert_eq!(t.lock().sessions.len(), 1, "tracked in its own entry");
        assert_eq!(t.lock().untracked_in_flight, 0);
        drop(out);
    }

    #[test]
    fn a_reference_id_forgotten_while_young_unsettles_the_agent() {
        // A busy agent: more referenceIds within a minute than are kept.
        let t = Unsettled::default();
        for r in 0..=MAX_KNOWN as i64 {
            t.remember(r);
        }
        assert!(
            t.is_known(0) || t.is_unsettled("S"),
            "0's trailing Error would be pinned on a waiter whose reply named none"
        );
        assert!(t.is_known(MAX_KNOWN as i64));
        let later = Instant::now() + UNSETTLED_FOR + Duration::from_millis(1);
        assert!(
            !t.is_unsettled_at("S", later),
            "for the forgotten one's time only"
        );

        // Past their time they go unsaid, and make room.
        let t = Unsettled::default();
        let now = Instant::now();
        for r in 0..MAX_KNOWN as i64 {
            t.remember_at(r, now);
        }
        let later = now + UNSETTLED_FOR + Duration::from_millis(1);
        t.remember_at(-1, later);
        assert!(!t.is_unsettled_at("S", later));
        assert!(!t.is_known(0) && t.is_known(-1));
        assert_eq!(t.lock().known.len(), 1);
    }

    #[test]
    fn memory_is_bounded() {
        let t = Unsettled::default();
        for r in 0..(MAX_KNOWN as i64 + 10) {
            t.remember(r);
            t.remember(r);
        }
        assert_eq!(t.lock().known.len(), MAX_KNOWN);
        assert!(!t.is_known(9) && t.is_known(10) && t.is_known(MAX_KNOWN as i64 + 9));

        let now = Instant::now();
        for i in 0..MAX_SESSIONS {
            t.unsettle_at(&format!("s{i}"), now);
        }
        assert!(t.lock().all_until.is_none());
        // Full of live entries: the agent as a whole is unsettled instead.
        t.unsettle_at("one-more", now);
        assert_eq!(t.lock().sessions.len(), MAX_SESSIONS);
        assert!(t.is_unsettled_at("never-seen", now));
        // Expired entries make room again.
        let later = now + UNSETTLED_FOR + Duration::from_millis(1);
        t.unsettle_at("fresh", later);
        assert_eq!(t.lock().sessions.len(), 1);
        assert!(t.is_unsettled_at("fresh", later) && !t.is_unsettled_at("s1", later));
    }
}
