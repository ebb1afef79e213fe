//! Operations confirmed by their notification (`wait_for_outcome`): the calls waiting on one
//! agent's feed and the rule that matches each notification to at most one of them.
//!
//! A waiter is registered *before* its POST is sent (the feed is already subscribed), so
//! its notification cannot be missed, even when GWS publishes it before the HTTP reply
//! arrives. The rule never tells a call something false: where a notification cannot be
//! attributed for certain, the call stays UNCONFIRMED.
//!
//! A confirmation (a notification about session S of the expected kind):
//! - with a `referenceId` r: the first waiter whose reply carried r; else, unless r is
//!   another operation's (another waiter's reply named it, or it already confirmed or failed
//!   a call, or a call that did not wait was answered with it), the first waiter whose reply
//!   carried none (order is all there is); else it is kept for every waiter still waiting
//!   for its reply, which checks it when the reply comes;
//! - without a `referenceId`: the first waiter on S in the order the calls were sent.
//!
//! An `Error` about S (it fits every waiter on S):
//! - with a `referenceId` r: the waiter whose reply carried r; never anyone if r is another
//!   operation's (as above);
//! - otherwise (a referenceId no reply named, or none at all) it fails a call only when that
//!   call is the one operation on S it can be about: its reply named no referenceId, and
//!   every other operation of this agent on S that this gateway sent and that could own the
//!   Error has been shown not to. The candidates are fixed when the Error comes: the waiters
//!   on S whose reply is outstanding or named none (for an unreferenced Error, every waiter
//!   on S: a reply's referenceId does not rule one out). A candidate is ruled out when its
//!   reply names another referenceId (referenced Errors only), when it is confirmed or failed
//!   (an operation has one fate), or when its POST was refused or never sent. A confirmation
//!   matched by order that fitted other waiting calls too (their reply outstanding or naming
//!   none) is a guess: it rules nobody out, the Errors its call was a candidate for are pinned
//!   on nobody, and no Error is ever pinned on those others by elimination. A candidate that
//!   ends with its fate unknown (timed out, caller gone) rules the Error out for everyone. An
//!   operation on S sent without a waiting call and still unanswered, or one whose fate
//!   became unknown a moment ago ([`Unsettled`]; for an Error without a referenceId, also
//!   one whose reply named a referenceId), makes the Error unattributable.
//!
//! Once a referenceId has confirmed or failed a call, it is remembered (bounded, in
//! [`Unsettled`]) and never used for another. Everything is bounded: waiters per agent (by
//! the hub), kept notifications, candidates per kept Error.

use super::item::Item;
use crate::proto::session_events_response::Event;
use crate::proto::{NotificationType, TranscriptMessage};
use crate::upstream::{Confirmation, Effect, Operation, Unsettled};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Notifications kept for calls that may still claim them (referenced ones for calls whose
/// reply is still outstanding, Errors for the calls they may be about).
const MAX_RECENT: usize = 64;
/// The most calls one kept Error may be about. It fails one only once all others are shown
/// to be elsewhere, which many concurrent unreferenced operations on one session make
/// unlikely within a wait; beyond this it stays unpinned (the calls UNCONFIRMED).
const MAX_CANDIDATES: usize = 16;

/// What confirms one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub session_id: String,
    pub confirmation: Confirmation,
    /// For a StatusChange: the state the session must reach (`None`: any, as for Transfer,
    /// whose resulting state GWS does not document).
    pub state: Option<&'static str>,
    /// For message operations: the transcript message that confirms them.
    pub message: Option<ExpectMessage>,
}

/// The transcript message a message operation produces: sent by an agent, of this type and
/// visibility, with this text or URL. Customers write too, so the type alone proves nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectMessage {
    pub kind: &'static str,
    pub visibility: &'static str,
    pub text: Option<String>,
    pub url: Option<String>,
}

impl Expect {
    pub fn new(session_id: &str, operation: &Operation) -> Self {
        let (state, message) = match operation.effect() {
            Effect::Notified => (None, None),
            Effect::State(state) => (state, None),
            Effect::Message {
                kind,
                visibility,
                text,
                url,
            } => (
                None,
                Some(ExpectMessage {
                    kind,
                    visibility,
                    text: text.map(str::to_owned),
                    url: url.map(str::to_owned),
                }),
            ),
        };
        Self {
            session_id: session_id.to_string(),
            confirmation: operation.confirmation(),
            state,
            message,
        }
    }
}

/// How a waiting call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The confirming item, exactly as streams deliver it.
    Confirmed(Item),
    /// An `Error` notification about the session: what upstream said.
    Failed(String),
    /// The wait ran out (or the feed ended) before a confirmation came.
    Unconfirmed,
}

impl Outcome {
    /// Its `result` label in `gws_gateway_outcome_waits_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Confirmed(_) => "confirmed",
            Outcome::Unconfirmed => "unconfirmed",
            Outcome::Failed(_) => "failed",
        }
    }
}

/// What a notification says, as far as matching goes.
#[derive(Debug, Clone)]
struct Seen {
    session_id: String,
    reference_id: Option<i64>,
    kind: SeenKind,
}

#[derive(Debug, Clone)]
enum SeenKind {
    State {
        notification: NotificationType,
        state: String,
    },
    Error(String),
    Messages(Vec<TranscriptMessage>),
}

impl Seen {
    /// What `event` says; `None` for items that are not notifications.
    fn of(event: &Event) -> Option<Self> {
        match event {
            Event::StateChange(sc) => {
                let notification = NotificationType::try_from(sc.notification_type)
                    .unwrap_or(NotificationType::Unspecified);
                let session = sc.session.as_ref();
                Some(Seen {
                    session_id: session.map_or_else(String::new, |s| s.id.clone()),
                    reference_id: sc.reference_id,
                    kind: if notification == NotificationType::Error {
                        SeenKind::Error(sc.error_message.clone())
                    } else {
                        SeenKind::State {
                            notification,
                            state: session.map_or_else(String::new, |s| s.state_name.clone()),
                        }
                    },
                })
            }
            Event::MessageLog(ml) => Some(Seen {
                session_id: ml.session_id.clone(),
                reference_id: None,
                kind: SeenKind::Messages(ml.messages.clone()),
            }),
            Event::Notice(_) | Event::Snapshot(_) => None,
        }
    }

    fn is_error(&self) -> bool {
        matches!(self.kind, SeenKind::Error(_))
    }

    /// Whether this notification confirms (or, for an Error, fails) an operation expecting
    /// `expect`.
    fn fits(&self, expect: &Expect) -> bool {
        if self.session_id != expect.session_id {
            return false;
        }
        match (&self.kind, expect.confirmation) {
            (SeenKind::Error(_), _) => true,
            (
                SeenKind::State {
                    notification,
                    state,
                },
                confirmation,
            ) => {
                let kind_ok = matches!(
                    (notification, confirmation),
                    (
                        NotificationType::PropertiesUpdated,
                        Confirmation::PropertiesUpdated
                    ) | (NotificationType::StatusChange, Confirmation::StatusChange)
                        | (
                            NotificationType::ParticipantsUpdated,
                            Confirmation::ParticipantsUpdated
                        )
                );
                kind_ok
                    && expect
                        .state
                        .is_none_or(|want| want.eq_ignore_ascii_case(state))
            }
            (SeenKind::Messages(messages), Confirmation::MessageLog) => match &expect.message {
                None => true,
                Some(want) => messages.iter().any(|m| message_fits(m, want)),
            },
            _ => false,
        }
    }

    fn outcome(&self, item: &Item) -> Outcome {
        match &self.kind {
            SeenKind::Error(message) if message.is_empty() => {
                Outcome::Failed("GWS reported the operation failed (no message)".to_string())
            }
            SeenKind::Error(message) => Outcome::Failed(message.clone()),
            _ => Outcome::Confirmed(item.clone()),
        }
    }
}

/// Whether one transcript message is the one a message operation produced. Fields upstream
/// left empty are not held against it (GWS does not always send `visibility` or `from`).
fn message_fits(m: &TranscriptMessage, want: &ExpectMessage) -> bool {
    let loose = |got: &str, want: &str| got.is_empty() || got.eq_ignore_ascii_case(want);
    m.r#type.eq_ignore_ascii_case(want.kind)
        && loose(&m.visibility, want.visibility)
        && m.sender
            .as_ref()
            .is_none_or(|s| loose(&s.type_name, "Agent"))
        && want.text.as_ref().is_none_or(|t| &m.text == t)
        && want
            .url
            .as_ref()
            .is_none_or(|u| &m.url == u || (m.url.is_empty() && &m.text == u))
}

/// Whether a waiter's HTTP reply has come, and what it said.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reply {
    Pending,
    Arrived(Option<i64>),
}

struct Waiter {
    id: u64,
    expect: Expect,
    reply: Reply,
    /// Only notifications kept after this call registered can be its confirmation.
    since: u64,
    /// A confirmation that fitted this call too went to another by order (a guess): it may
    /// have been this call's, and the other's operation the one that failed. No Error is
    /// pinned on this call by elimination (one naming its reply's referenceId still is).
    shadowed: bool,
    tx: oneshot::Sender<Outcome>,
}

impl Waiter {
    /// Whether `error` (about this call's session) may be about this call's operation: an
    /// unreferenced one always (even a reply's referenceId does not rule it out); a referenced
    /// one unless the reply named another referenceId.
    fn may_own(&self, error: &Seen) -> bool {
        error.fits(&self.expect)
            && match (error.reference_id, self.reply) {
                (Some(r), Reply::Arrived(Some(own))) => r == own,
                (Some(_), Reply::Pending | Reply::Arrived(None)) | (None, _) => true,
            }
    }
}

/// A notification kept for calls that may still claim it: a referenced confirmation for the
/// calls still waiting for their reply, or an Error for the calls it may be about.
struct Kept(
    /// Its number: a confirmation goes only to a call registered before it (`since <= n`).
    u64,
    Seen,
    Outcome,
    /// For an Error: the calls it may be about when it came, less those since shown to be
    /// elsewhere. It fails the last one left once that call's reply named no referenceId.
    Vec<u64>,
);

/// The calls waiting on one agent's feed, in the order their POSTs were sent, and the
/// recent notifications that calls may still claim.
#[derive(Default)]
pub struct Waiters {
    list: Vec<Waiter>,
    next_id: u64,
    /// Oldest first; each is claimed at most once.
    recent: VecDeque<Kept>,
    next_recent: u64,
    /// The agent's operations whose end is unknown, and the referenceIds known to be taken
    /// (shared with the gRPC edge, which records the calls that do not wait).
    ops: Arc<Unsettled>,
}

/// Whether `reference_id` belongs to an operation other than the waiting calls whose reply
/// named none: a waiting call's reply named it, or a call already ended with it.
fn owned(list: &[Waiter], ops: &Unsettled, reference_id: i64) -> bool {
    list.iter()
        .any(|w| w.reply == Reply::Arrived(Some(reference_id)))
        || ops.is_known(reference_id)
}

impl Waiters {
    pub fn new(ops: Arc<Unsettled>) -> Self {
        Self {
            ops,
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Registers a call about to send its POST; returns its id.
    pub fn add(&mut self, expect: Expect, tx: oneshot::Sender<Outcome>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.list.push(Waiter {
            id,
            expect,
            reply: Reply::Pending,
            since: self.next_recent,
            shadowed: false,
            tx,
        });
        id
    }

    /// The call is over without an outcome (timed out, or the caller left): nothing of it is
    /// kept. Its operation may still have been applied, and may still fail: a referenceId its
    /// reply named stays known as its own, and its session unsettled for a while for Errors
    /// without a referenceId; without one, its session is unsettled for a while for every
    /// Error (it may be this operation's), and no kept Error is pinned on anyone else.
    pub fn remove(&mut self, id: u64) {
        let Some(pos) = self.list.iter().position(|w| w.id == id) else {
            return;
        };
        let waiter = self.list.remove(pos);
        match waiter.reply {
            Reply::Arrived(Some(r)) => {
                self.ops.remember(r);
                // Its failure may still come as an Error without the referenceId.
                self.ops.unsettle_unreferenced(&waiter.expect.session_id);
            }
            Reply::Pending | Reply::Arrived(None) => self.ops.unsettle(&waiter.expect.session_id),
        }
        // Whatever Error it was a candidate for may be its own: never pinned on another.
        self.recent.retain(|k| !k.3.contains(&id));
        self.settle();
    }

    /// The call's POST was refused by GWS or never sent: nothing of its operation follows,
    /// so no Error is about it.
    pub fn not_applied(&mut self, id: u64) {
        let Some(pos) = self.list.iter().position(|w| w.id == id) else {
            return;
        };
        self.list.remove(pos);
        self.rule_out(id);
        self.settle();
    }

    /// Ends every wait (the feed ended): the calls see their sender dropped. Their
    /// operations' ends are unknown, as for [`Waiters::remove`].
    pub fn clear(&mut self) {
        for waiter in self.list.drain(..) {
            match waiter.reply {
                Reply::Arrived(Some(r)) => {
                    self.ops.remember(r);
                    self.ops.unsettle_unreferenced(&waiter.expect.session_id);
                }
                Reply::Pending | Reply::Arrived(None) => {
                    self.ops.unsettle(&waiter.expect.session_id);
                }
            }
        }
        self.recent.clear();
    }

    /// The call's HTTP reply arrived with `reference_id`: a notification seen meanwhile may
    /// already be its confirmation (with a referenceId, only the one carrying it), or its
    /// failure (with a referenceId, the Error carrying it; without, an Error it was the only
    /// candidate for).
    pub fn arm(&mut self, id: u64, reference_id: Option<i64>) {
        let Some(pos) = self.list.iter().position(|w| w.id == id) else {
            return;
        };
        self.list[pos].reply = Reply::Arrived(reference_id);
        let waiter = &self.list[pos];
        let (list, ops) = (&self.list, &*self.ops);
        let claim = self.recent.iter().position(|Kept(n, seen, _, candidates)| {
            *n >= waiter.since
                && seen.fits(&waiter.expect)
                && match (reference_id, seen.is_error()) {
                    (Some(r), _) => seen.reference_id == Some(r),
                    // By order: a confirmation no other call's referenceId claims.
                    (None, false) => seen.reference_id.is_none_or(|r| !owned(list, ops, r)),
                    // An Error only if this call is all it can be about.
                    (None, true) => {
                        candidates[..] == [id]
                            && !waiter.shadowed
                            && seen.reference_id.is_none_or(|r| !owned(list, ops, r))
                    }
                }
        });
        if let Some(c) = claim
            && let Some(Kept(n, seen, outcome, _)) = self.recent.remove(c)
        {
            // Claimed by its referenceId, by order (a confirmation other calls may fit), or
            // as an Error this call is all that is left for.
            let by_order = reference_id.is_none() && !seen.is_error();
            let rivals = if by_order {
                self.rivals(&seen, n, self.list[pos].id)
            } else {
                Vec::new()
            };
            self.resolve(pos, outcome, seen.reference_id, &rivals);
        } else if let Some(own) = reference_id {
            // A referenced Error naming another referenceId is not about this call.
            for Kept(_, seen, _, candidates) in &mut self.recent {
                if seen.reference_id.is_some_and(|r| r != own) {
                    candidates.retain(|c| *c != id);
                }
            }
            self.recent
                .retain(|Kept(_, seen, _, candidates)| !seen.is_error() || !candidates.is_empty());
        }
        self.settle();
    }

    /// Offers one delivered item to the waiting calls.
    pub fn offer(&mut self, item: &Item) {
        if self.list.is_empty() {
            return;
        }
        let Some(seen) = item.event.as_ref().and_then(Seen::of) else {
            return;
        };
        if seen.is_error() {
            self.offer_error(seen, item);
        } else {
            self.offer_confirmation(seen, item);
        }
        self.settle();
    }

    fn offer_confirmation(&mut self, seen: Seen, item: &Item) {
        let fits = |w: &Waiter| seen.fits(&w.expect);
        let exact = seen.reference_id.and_then(|r| {
            self.list
                .iter()
                .position(|w| fits(w) && w.reply == Reply::Arrived(Some(r)))
        });
        let pos = match seen.reference_id {
            Some(_) if exact.is_some() => exact,
            // By order, unless the referenceId is another operation's.
            Some(r) if owned(&self.list, &self.ops, r) => None,
            Some(_) => self
                .list
                .iter()
                .position(|w| fits(w) && w.reply == Reply::Arrived(None)),
            None => self.list.iter().position(fits),
        };
        if let Some(pos) = pos {
            let outcome = seen.outcome(item);
            let rivals = if exact.is_some() {
                Vec::new()
            } else {
                self.rivals(&seen, u64::MAX, self.list[pos].id)
            };
            self.resolve(pos, outcome, seen.reference_id, &rivals);
        } else if let Some(r) = seen.reference_id
            && !owned(&self.list, &self.ops, r)
            && self
                .list
                .iter()
                .any(|w| w.reply == Reply::Pending && fits(w))
        {
            let outcome = seen.outcome(item);
            self.keep(seen, outcome, Vec::new());
        }
    }

    /// An Error about a session fails the call whose reply named its referenceId; else it
    /// is kept for the calls it may be about, and fails one only when that call is the one
    /// operation of the agent's on the session it can be about ([`Waiters::settle`]).
    fn offer_error(&mut self, seen: Seen, item: &Item) {
        if let Some(r) = seen.reference_id {
            let exact = self
                .list
                .iter()
                .position(|w| seen.fits(&w.expect) && w.reply == Reply::Arrived(Some(r)));
            if let Some(pos) = exact {
                let outcome = seen.outcome(item);
                self.resolve(pos, outcome, Some(r), &[]);
                return;
            }
            if owned(&self.list, &self.ops, r) {
                return;
            }
        }
        // An operation on the session in flight without a waiting call, or ended a moment
        // ago with its fate unknown, may be the one that failed: no call is told it was its.
        if self
            .ops
            .is_unsettled_for(&seen.session_id, seen.reference_id)
        {
            return;
        }
        let candidates: Vec<u64> = self
            .list
            .iter()
            .filter(|w| w.may_own(&seen))
            .map(|w| w.id)
            .take(MAX_CANDIDATES + 1)
            .collect();
        if candidates.is_empty() || candidates.len() > MAX_CANDIDATES {
            return;
        }
        let outcome = seen.outcome(item);
        self.keep(seen, outcome, candidates);
    }

    fn keep(&mut self, seen: Seen, outcome: Outcome, candidates: Vec<u64>) {
        if self.recent.len() >= MAX_RECENT {
            self.recent.pop_front();
        }
        self.recent
            .push_back(Kept(self.next_recent, seen, outcome, candidates));
        self.next_recent += 1;
    }

    /// The other calls a confirmation matched by order (not by the reply's referenceId) to
    /// call `chosen` fits too, whose reply is outstanding or named none: it may be any of
    /// theirs as well. `n`: the kept notification's number (`u64::MAX` for one just come).
    fn rivals(&self, seen: &Seen, n: u64, chosen: u64) -> Vec<u64> {
        self.list
            .iter()
            .filter(|w| {
                w.id != chosen
                    && w.since <= n
                    && matches!(w.reply, Reply::Pending | Reply::Arrived(None))
                    && seen.fits(&w.expect)
            })
            .map(|w| w.id)
            .collect()
    }

    /// The call at `pos` ended with `outcome`, carried by a notification with `reference_id`.
    /// `rivals`: the other calls that notification may be about (a confirmation by order that
    /// fits several); empty when it can only be this call's.
    fn resolve(&mut self, pos: usize, outcome: Outcome, reference_id: Option<i64>, rivals: &[u64]) {
        let waiter = self.list.remove(pos);
        // Never used for another call (an Accept publishes three notifications with its
        // one referenceId; an Error may trail a confirmation).
        for r in [reference_id, waiter.reply_id()].into_iter().flatten() {
            self.ops.remember(r);
        }
        // The caller may have gone (deadline, client left): nothing to do then.
        let _ = waiter.tx.send(outcome);
        if rivals.is_empty() {
            // An operation has one fate: a kept Error is not about this one.
            self.rule_out(waiter.id);
        } else {
            // A guess: this call's operation may be the one that failed, and a rival's the
            // one confirmed. An Error this call was a candidate for is pinned on nobody, and
            // none is pinned on a rival by elimination.
            self.recent.retain(|k| !k.3.contains(&waiter.id));
            for w in &mut self.list {
                if rivals.contains(&w.id) {
                    w.shadowed = true;
                }
            }
        }
        if self.list.is_empty() {
            self.recent.clear();
        }
    }

    /// `id` is no candidate for any kept Error; one left with no candidate is dropped.
    fn rule_out(&mut self, id: u64) {
        for Kept(_, _, _, candidates) in &mut self.recent {
            candidates.retain(|c| *c != id);
        }
        self.recent
            .retain(|Kept(_, seen, _, candidates)| !seen.is_error() || !candidates.is_empty());
    }

    /// Fails every call that a kept Error is now provably about: its one candidate left,
    /// answered without a referenceId, and the Error's referenceId (if any) is no other
    /// operation's. Each pinned Error may rule its call out of others: repeat until none.
    /// With no call left, nothing is kept.
    fn settle(&mut self) {
        loop {
            let (list, ops) = (&self.list, &*self.ops);
            let found = self.recent.iter().enumerate().find_map(|(c, kept)| {
                let Kept(_, seen, _, candidates) = kept;
                let [only] = candidates[..] else {
                    return None;
                };
                let pos = list
                    .iter()
                    .position(|w| w.id == only && w.reply == Reply::Arrived(None) && !w.shadowed)?;
                seen.reference_id
                    .is_none_or(|r| !owned(list, ops, r))
                    .then_some((c, pos))
            });
            let Some((c, pos)) = found else {
                // Nobody left to claim anything.
                if self.list.is_empty() {
                    self.recent.clear();
                }
                return;
            };
            if let Some(Kept(_, seen, outcome, _)) = self.recent.remove(c) {
                self.resolve(pos, outcome, seen.reference_id, &[]);
            }
        }
    }
}

impl Waiter {
    fn reply_id(&self) -> Option<i64> {
        match self.reply {
            Reply::Arrived(r) => r,
            Reply::Pending => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::{Notification, map_notification};
    use crate::proto::SessionEventsResponse;
    use crate::upstream::PartyTarget;
    use serde_json::{Value, json};

    fn state(kind: &str, session: &str, state: &str, reference: Option<i64>) -> Value {
        let mut v = json!({"messageType": "SMSsessionStateChangeMessage", "notificationType": kind,
            "smssession": {"id": session, "state": state}});
        if let Some(r) = reference {
            v["referenceId"] = json!(r);
        }
        v
    }

    fn message(session: &str, kind: &str, from: &str, visibility: &str, text: &str) -> Value {
        json!({"messageType": "MessageLogUpdated", "notificationType": "NewMessages",
            "smssessionUri": format!("http://h/api/v2/smssessions/{session}"),
            "messages": [{"index": 1, "type": kind, "text": text, "visibility": visibility,
                "from": {"nickname": "n", "type": from, "participantId": "p"}}]})
    }

    fn error(session: &str, reference: Option<i64>) -> Value {
        let mut v = json!({"messageType": "SMSsessionStateChangeMessage", "notificationType": "Error",
            "errorMessage": "target not reachable", "smssessionUri": format!("http://h/api/v2/smssessions/{session}")});
        if let Some(r) = reference {
            v["referenceId"] = json!(r);
        }
        v
    }

    /// Offers `data` as the feed would, with a recognisable resume token.
    fn offer(w: &mut Waiters, data: Value, token: &str) {
        let event = match map_notification(&data).unwrap() {
            Notification::StateChange(sc) => Event::StateChange(sc),
            Notification::MessageLog(ml) => Event::MessageLog(ml),
        };
        let item = Item::new(SessionEventsResponse {
            resume_token: token.into(),
            receive_time: None,
            event: Some(event),
        });
        w.offer(&item);
    }

    fn wait(w: &mut Waiters, session: &str, op: Operation) -> (u64, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        (w.add(Expect::new(session, &op), tx), rx)
    }

    fn token(rx: &mut oneshot::Receiver<Outcome>) -> Option<String> {
        match rx.try_recv() {
            Ok(Outcome::Confirmed(item)) => Some(item.resume_token.clone()),
            Ok(other) => Some(format!("{other:?}")),
            Err(_) => None,
        }
    }

    #[test]
    fn only_the_right_kind_and_state_about_the_right_session_confirms() {
        let mut w = Waiters::default();
        let (id, mut rx) = wait(&mut w, "S", Operation::Accept { nickname: None });
        w.arm(id, None);
        offer(
            &mut w,
            state("PropertiesUpdated", "S", "Chatting", None),
            "props",
        );
        offer(
            &mut w,
            state("StatusChange", "OTHER", "Chatting", None),
            "other",
        );
        // The inbound session's own StatusChange (Invited) is not the Accept's.
        offer(
            &mut w,
            state("StatusChange", "S", "Invited", None),
            "invited",
        );
        assert_eq!(token(&mut rx), None);
        offer(
            &mut w,
            state("StatusChange", "S", "Chatting", None),
            "status",
        );
        assert_eq!(token(&mut rx).as_deref(), Some("status"));
        assert_eq!(w.len(), 0, "a confirmed waiter is gone");
    }

    #[test]
    fn message_operations_need_their_own_message() {
        let mut w = Waiters::default();
        let (id, mut rx) = wait(
            &mut w,
            "S",
            Operation::SendMessage {
                text: "hello".into(),
            },
        );
        w.arm(id, None);
        // The customer writing, or an agents-only note, or another text: not this call's.
        offer(
            &mut w,
            message("S", "Text", "Customer", "All", "hello"),
            "customer",
        );
        offer(
            &mut w,
            message("S", "Text", "Agent", "Agents", "hello"),
            "to-agents",
        );
        offer(
            &mut w,
            message("S", "Text", "Agent", "All", "other"),
            "other",
        );
        assert_eq!(token(&mut rx), None);
        offer(
            &mut w,
            message("S", "Text", "Agent", "All", "hello"),
            "mine",
        );
        assert_eq!(token(&mut rx).as_deref(), Some("mine"));

        let (id, mut rx) = wait(
            &mut w,
            "S",
            Operation::SendUrl {
                url: "https://u/".into(),
            },
        );
        w.arm(id, None);
        offer(
            &mut w,
            message("S", "Text", "Agent", "All", "https://u/"),
            "text",
        );
        assert_eq!(token(&mut rx), None);
        offer(
            &mut w,
            message("S", "PushUrl", "Agent", "All", "https://u/"),
            "url",
        );
        assert_eq!(token(&mut rx).as_deref(), Some("url"));
    }

    #[test]
    fn reference_ids_pick_the_waiter_even_before_the_reply() {
        let mut w = Waiters::default();
        let del = || Operation::DeleteUserData { keys: vec![] };
        let (a, mut rx_a) = wait(&mut w, "S", del());
        let (b, mut rx_b) = wait(&mut w, "S", del());
        // Both notifications come before either reply: kept for the calls to claim.
        offer(
            &mut w,
            state("PropertiesUpdated", "S", "Chatting", Some(8)),
            "eight",
        );
        offer(
            &mut w,
            state("PropertiesUpdated", "S", "Chatting", Some(7)),
            "seven",
        );
        assert_eq!((token(&mut rx_a), token(&mut rx_b)), (None, None));
        w.arm(b, Some(8));
        assert_eq!(token(&mut rx_b).as_deref(), Some("eight"));
        w.arm(a, Some(7));
        assert_eq!(token(&mut rx_a).as_deref(), Some("seven"));
    }

    #[test]
    fn a_kept_notification_is_claimed_once() {
        let mut w = Waiters::default();
        let del = || Operation::DeleteUserData { keys: vec![] };
        let (a, mut rx_a) = wait(&mut w, "S", del());
        let (b, mut rx_b) = wait(&mut w, "S", del());
        offer(
            &mut w,
            state("PropertiesUpdated", "S", "Chatting", Some(8)),
            "eight",
        );
        // Neither reply carried a referenceId: the one kept notification goes to one call.
        w.arm(a, None);
        w.arm(b, None);
        assert_eq!(token(&mut rx_a).as_deref(), Some("eight"));
        assert_eq!(token(&mut rx_b), None);
    }

    #[test]
    fn without_reference_ids_calls_are_matched_in_order() {
        let mut w = Waiters::default();
        let (_, mut rx_a) = wait(&mut w, "S", Operation::Leave);
        let (_, mut rx_b) = wait(&mut w, "S", Operation::Leave);
        offer(
            &mut w,
            state("StatusChange", "S", "LeftChat", None),
            "first",
        );
        offer(
            &mut w,
            state("StatusChange", "S", "LeftChat", None),
            "second",
        );
        assert_eq!(token(&mut rx_a).as_deref(), Some("first"));
        assert_eq!(token(&mut rx_b).as_deref(), Some("second"));
    }

    #[test]
    fn an_error_about_the_session_fails_only_a_call_it_can_be_about() {
        let invite = || Operation::Invite {
            target: PartyTarget::TargetUri("u".into()),
        };
        let mut w = Waiters::default();
        let (id, mut rx) = wait(&mut w, "S", invite());
        w.arm(id, Some(3));
        // Unreferenced: it may be about any operation on S, not provably this one.
        offer(&mut w, error("S", None), "e");
        assert!(rx.try_recv().is_err());
        // Another call's referenceId: not this one's either.
        offer(&mut w, error("S", Some(99)), "e");
        assert!(rx.try_recv().is_err());
        offer(&mut w, error("S", Some(3)), "e");
        assert_eq!(
            rx.try_recv().unwrap(),
            Outcome::Failed("target not reachable".into())
        );
        // A call whose reply named no referenceId takes an unreferenced Error.
        let (id, mut rx) = wait(&mut w, "S", invite());
        w.arm(id, None);
        offer(&mut w, error("S", None), "e");
        assert!(matches!(rx.try_recv(), Ok(Outcome::Failed(_))));
    }

    #[test]
    fn kept_notifications_are_bounded_and_forgotten_with_the_last_waiter() {
        let mut w = Waiters::default();
        let (id, _rx) = wait(&mut w, "S", Operation::Leave);
        for r in 0..100 {
            offer(&mut w, state("StatusChange", "S", "LeftChat", Some(r)), "x");
        }
        assert_eq!(w.recent.len(), MAX_RECENT);
        assert_eq!(
            w.recent.front().unwrap().1.reference_id,
            Some(100 - MAX_RECENT as i64)
        );
        w.remove(id);
        assert_eq!((w.len(), w.recent.len()), (0, 0));
    }

    fn props(session: &str, reference: i64) -> Value {
        state("PropertiesUpdated", session, "Chatting", Some(reference))
    }

    fn failed(rx: &mut oneshot::Receiver<Outcome>) -> bool {
        matches!(rx.try_recv(), Ok(Outcome::Failed(_)))
    }

    fn comment() -> Operation {
        Operation::AddComment {
            comment: "c".into(),
        }
    }

    #[test]
    fn in_the_seed_pattern_an_error_fails_the_one_call_it_can_be_about() {
        // Reply `{"statusCode":0}`, then a notification carrying the referenceId.
        let mut w = Waiters::default();
        let (id, mut rx) = wait(&mut w, "S", comment());
        w.arm(id, None);
        offer(&mut w, error("OTHER", Some(15)), "elsewhere");
        assert_eq!(token(&mut rx), None, "another session's Error");
        offer(&mut w, error("S", Some(15)), "e");
        assert_eq!(
            rx.try_recv().unwrap(),
            Outcome::Failed("target not reachable".into())
        );
        // Its referenceId is now taken: it fails no later call, confirms none either.
        let (id, mut rx) = wait(&mut w, "S", comment());
        w.arm(id, None);
        offer(&mut w, error("S", Some(15)), "again");
        offer(&mut w, props("S", 15), "stale");
        assert_eq!(token(&mut rx), None);
        offer(&mut w, props("S", 16), "mine");
        assert_eq!(token(&mut rx).as_deref(), Some("mine"));
    }

    #[test]
    fn of_two_waits_on_a_session_a_confirmation_that_fits_both_rules_neither_out() {
        // A's operation fails and B's is applied: Error(16) is A's, PropertiesUpdated(15)
        // B's. Nothing tells them apart; the confirmation goes to A by order, a guess, so
        // the Error is pinned on nobody: B stays UNCONFIRMED, never ABORTED.
        for error_first in [false, true] {
            let mut w = Waiters::default();
            let (a, mut rx_a) = wait(&mut w, "S", comment());
            let (b, mut rx_b) = wait(&mut w, "S", comment());
            w.arm(a, None);
            w.arm(b, None);
            if error_first {
                // Either call's: kept, pinned on neither yet.
                offer(&mut w, error("S", Some(16)), "e");
                assert_eq!((token(&mut rx_a), token(&mut rx_b)), (None, None));
            }
            offer(&mut w, props("S", 15), "a's");
            assert_eq!(token(&mut rx_a).as_deref(), Some("a's"), "{error_first}");
            if !error_first {
                offer(&mut w, error("S", Some(16)), "e");
            }
            assert_eq!(
                token(&mut rx_b),
                None,
                "{error_first}: b may be the applied one"
            );
            // Nor is a later Error pinned on b: a's operation may be the one that failed.
            offer(&mut w, error("S", None), "later");
            offer(&mut w, error("S", Some(17)), "later");
            assert_eq!(token(&mut rx_b), None, "{error_first}");
            assert_eq!(w.len(), 1);
        }
    }

    #[test]
    fn a_confirmation_that_fits_one_wait_only_rules_it_out() {
        // AttachUserData waits for PropertiesUpdated, Invite for ParticipantsUpdated.
        for error_first in [false, true] {
            let mut w = Waiters::default();
            let attach = Operation::AttachUserData {
                user_data: Default::default(),
            };
            let invite = Operation::Invite {
                target: PartyTarget::TargetUri("u".into()),
            };
            let (a, mut rx_a) = wait(&mut w, "S", attach);
            let (b, mut rx_b) = wait(&mut w, "S", invite);
            w.arm(a, None);
            w.arm(b, None);
            if error_first {
                offer(&mut w, error("S", Some(16)), "e");
            }
            offer(&mut w, props("S", 15), "a's");
            assert_eq!(token(&mut rx_a).as_deref(), Some("a's"), "{error_first}");
            if !error_first {
                offer(&mut w, error("S", Some(16)), "e");
            }
            assert!(failed(&mut rx_b), "{error_first}: b is all it can be about");
            assert_eq!(w.len(), 0);
        }
    }

    #[test]
    fn an_error_before_the_reply_waits_for_the_replies() {
        let mut w = Waiters::default();
        let (a, mut rx_a) = wait(&mut w, "S", comment());
        let (b, mut rx_b) = wait(&mut w, "S", comment());
        offer(&mut w, error("S", Some(20)), "e");
        w.arm(a, None);
        assert_eq!(token(&mut rx_a), None, "b's reply may still name 20");
        w.arm(b, Some(21));
        assert!(failed(&mut rx_a), "b's reply named another: only a is left");
        assert_eq!(token(&mut rx_b), None);

        // A refused POST rules its call out too.
        let mut w = Waiters::default();
        let (a, mut rx_a) = wait(&mut w, "S", comment());
        let (b, _rx_b) = wait(&mut w, "S", comment());
        offer(&mut w, error("S", Some(20)), "e");
        w.arm(a, None);
        w.not_applied(b);
        assert!(failed(&mut rx_a));

        // The reply naming the Error's referenceId: its own, even with others around.
        let mut w = Waiters::default();
        let (a, mut rx_a) = wait(&mut w, "S", comment());
        let (b, mut rx_b) = wait(&mut w, "S", comment());
        offer(&mut w, error("S", Some(20)), "e");
        w.arm(b, Some(20));
        assert!(failed(&mut rx_b));
        w.arm(a, None);
        assert_eq!(token(&mut rx_a), None, "20 is b's");
    }

    #[test]
    fn a_candidate_ending_unknown_leaves_the_error_pinned_on_nobody() {
        let ops = Arc::new(Unsettled::default());
        let mut w = Waiters::new(ops.clone());
        let (a, _rx_a) = wait(&mut w, "S", comment());
        let (b, mut rx_b) = wait(&mut w, "S", comment());
        w.arm(a, None);
        w.arm(b, None);
        offer(&mut w, error("S", Some(20)), "e");
        // a timed out: its operation may be the one that failed.
        w.remove(a);
        assert_eq!(token(&mut rx_b), None);
        assert!(ops.is_unsettled("S"), "and the session stays unsettled");
        offer(&mut w, error("S", Some(21)), "later");
        assert_eq!(token(&mut rx_b), None, "a's may come later too");
    }

    #[test]
    fn an_error_is_never_pinned_while_a_call_that_does_not_wait_may_own_it() {
        let ops = Arc::new(Unsettled::default());
        let mut w = Waiters::new(ops.clone());
        let (id, mut rx) = wait(&mut w, "S", comment());
        w.arm(id, None);
        // In flight without a waiter:
        let sending = ops.sending("S");
        offer(&mut w, error("S", Some(30)), "e");
        assert_eq!(token(&mut rx), None);
        // Answered with its referenceId: an Error naming it is its own.
        sending.answered(Some(31));
        offer(&mut w, error("S", Some(31)), "e");
        assert_eq!(token(&mut rx), None);
        // Refused: nothing of it follows; an Error naming another referenceId is this call's.
        ops.sending("S").not_applied();
        offer(&mut w, error("S", Some(32)), "e");
        assert!(failed(&mut rx));

        // Answered without a referenceId: nobody can tell its notifications apart.
        let (id, mut rx) = wait(&mut w, "S", comment());
        w.arm(id, None);
        ops.sending("S").answered(None);
        offer(&mut w, error("S", Some(33)), "e");
        assert_eq!(token(&mut rx), None);
        // Another session is not affected.
        let (id, mut rx) = wait(&mut w, "T", comment());
        w.arm(id, None);
        offer(&mut w, error("T", Some(34)), "e");
        assert!(failed(&mut rx));
    }

    #[test]
    fn a_reference_id_is_used_for_one_call_only() {
        let mut w = Waiters::default();
        let (a, mut rx_a) = wait(&mut w, "S", Operation::Accept { nickname: None });
        let invite = Operation::Invite {
            target: PartyTarget::TargetUri("u".into()),
        };
        let (b, mut rx_b) = wait(&mut w, "S", invite);
        w.arm(a, None);
        w.arm(b, None);
        // Accept publishes three notifications with its one referenceId.
        offer(
            &mut w,
            state("StatusChange", "S", "Chatting", Some(16)),
            "a",
        );
        offer(
            &mut w,
            state("ParticipantsUpdated", "S", "Chatting", Some(16)),
            "a's too",
        );
        assert_eq!(token(&mut rx_a).as_deref(), Some("a"));
        assert_eq!(token(&mut rx_b), None, "16 is the Accept's");
        offer(&mut w, error("S", Some(16)), "e");
        assert_eq!(token(&mut rx_b), None);
        offer(
            &mut w,
            state("ParticipantsUpdated", "S", "Chatting", Some(17)),
            "b",
        );
        assert_eq!(token(&mut rx_b).as_deref(), Some("b"));
    }

    #[test]
    fn an_unreferenced_error_fails_only_the_one_call_it_can_be_about() {
        let mut w = Waiters::default();
        let (a, mut rx_a) = wait(&mut w, "S", comment());
        let (b, mut rx_b) = wait(&mut w, "S", comment());
        w.arm(a, None);
        w.arm(b, Some(5));
        // b's reply named a referenceId, but an unreferenced Error may still be b's.
        offer(&mut w, error("S", None), "e");
        assert_eq!((token(&mut rx_a), token(&mut rx_b)), (None, None));
        offer(&mut w, props("S", 5), "b's");
        assert_eq!(token(&mut rx_b).as_deref(), Some("b's"));
        assert!(
            failed(&mut rx_a),
            "b is confirmed: a is all it can be about"
        );

        // Before the reply: only once the reply named none.
        let (a, mut rx_a) = wait(&mut w, "S", comment());
        offer(&mut w, error("S", None), "e");
        assert_eq!(token(&mut rx_a), None);
        w.arm(a, Some(9));
        assert_eq!(token(&mut rx_a), None, "its reply named a referenceId");
        let (c, mut rx_c) = wait(&mut w, "S", comment());
        offer(&mut w, error("S", None), "e");
        w.arm(c, None);
        assert_eq!(token(&mut rx_c), None, "a (reply 9) may be the one");
    }

    #[test]
    fn a_reply_naming_a_reference_id_leaves_its_session_unsettled_for_unreferenced_errors() {
        // Invite replies carry a referenceId, an AddComment's does not: mixed on one session.
        let ops = Arc::new(Unsettled::default());
        let mut w = Waiters::new(ops.clone());
        let invite = || Operation::Invite {
            target: PartyTarget::TargetUri("u".into()),
        };
        // A call that does not wait, answered with 7: an Error without referenceId may be its.
        ops.sending("S").answered(Some(7));
        let (a, mut rx_a) = wait(&mut w, "S", comment());
        w.arm(a, None);
        offer(&mut w, error("S", None), "the invite's?");
        assert_eq!(
            token(&mut rx_a),
            None,
            "the Invite may be the one that failed"
        );
        // A referenced Error keeps its rule: 8 is no other operation's.
        offer(&mut w, error("S", Some(8)), "e");
        assert!(failed(&mut rx_a));

        // A waiting Invite whose reply named 7 ends with its fate unknown: the same.
        let (b, _rx_b) = wait(&mut w, "T", invite());
        w.arm(b, Some(7));
        w.remove(b);
        let (c, mut rx_c) = wait(&mut w, "T", comment());
        w.arm(c, None);
        offer(&mut w, error("T", None), "the invite's?");
        assert_eq!(
            token(&mut rx_c),
            None,
            "the Invite may be the one that failed"
        );
    }

    #[test]
    fn feed_end_leaves_the_sessions_unsettled() {
        let ops = Arc::new(Unsettled::default());
        let mut w = Waiters::new(ops.clone());
        let (a, _rx_a) = wait(&mut w, "S", comment());
        let (b, _rx_b) = wait(&mut w, "T", comment());
        w.arm(a, None);
        w.arm(b, Some(40));
        w.clear();
        assert!(ops.is_unsettled("S") && !ops.is_unsettled("T"));
        assert!(ops.is_known(40));
    }
}
