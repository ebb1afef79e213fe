//! Operations confirmed by their notification (`wait_for_outcome`): the calls waiting on one
//! agent's feed and the rule that matches each notification to at most one of them.
//!
//! A waiter is registered *before* its POST is sent (the feed is already subscribed), so
//! its notification cannot be missed, even when GWS publishes it before the HTTP reply
//! arrives. Matching, for a notification about session S of the expected kind (an `Error`
//! about S fits every waiter on S):
//! - with a `referenceId` r: the first waiter whose reply carried r; else the first whose
//!   reply carried no referenceId (order is all there is); else it is kept as a candidate by
//!   every waiter still waiting for its reply, which checks them when the reply comes;
//! - without a `referenceId`: the first waiter on S in the order the calls were sent.
//!
//! Everything is bounded: waiters per agent (by the hub), candidates per waiter.

use super::feed::Item;
use crate::proto::{NotificationType, session_events_response::Event};
use crate::upstream::{Confirmation, Operation};
use tokio::sync::oneshot;

/// Candidate notifications one waiter keeps while its reply is outstanding.
const MAX_CANDIDATES: usize = 16;

/// What confirms one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub session_id: String,
    pub confirmation: Confirmation,
    /// For message operations: the transcript message type that confirms them.
    pub message_type: Option<&'static str>,
}

impl Expect {
    pub fn new(session_id: &str, operation: &Operation) -> Self {
        Self {
            session_id: session_id.to_string(),
            confirmation: operation.confirmation(),
            message_type: operation.message_type(),
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

/// What a notification says, as far as matching goes.
pub struct Seen<'a> {
    session_id: &'a str,
    reference_id: Option<i64>,
    kind: SeenKind<'a>,
}

enum SeenKind<'a> {
    State(NotificationType),
    Error(&'a str),
    /// A transcript update, with the types of the messages it carries.
    Messages(Vec<&'a str>),
}

impl<'a> Seen<'a> {
    /// What `event` says; `None` for items that are not notifications.
    pub fn of(event: &'a Event) -> Option<Self> {
        match event {
            Event::StateChange(sc) => {
                let t = NotificationType::try_from(sc.notification_type)
                    .unwrap_or(NotificationType::Unspecified);
                Some(Seen {
                    session_id: sc.session.as_ref().map_or("", |s| s.id.as_str()),
                    reference_id: sc.reference_id,
                    kind: if t == NotificationType::Error {
                        SeenKind::Error(&sc.error_message)
                    } else {
                        SeenKind::State(t)
                    },
                })
            }
            Event::MessageLog(ml) => Some(Seen {
                session_id: &ml.session_id,
                reference_id: None,
                kind: SeenKind::Messages(ml.messages.iter().map(|m| m.r#type.as_str()).collect()),
            }),
            Event::Notice(_) | Event::Snapshot(_) => None,
        }
    }

    fn fits(&self, expect: &Expect) -> bool {
        if self.session_id != expect.session_id {
            return false;
        }
        match (&self.kind, expect.confirmation) {
            (SeenKind::Error(_), _) => true,
            (
                SeenKind::State(NotificationType::PropertiesUpdated),
                Confirmation::PropertiesUpdated,
            )
            | (SeenKind::State(NotificationType::StatusChange), Confirmation::StatusChange)
            | (
                SeenKind::State(NotificationType::ParticipantsUpdated),
                Confirmation::ParticipantsUpdated,
            ) => true,
            (SeenKind::Messages(types), Confirmation::MessageLog) => expect
                .message_type
                .is_none_or(|want| types.iter().any(|t| t.eq_ignore_ascii_case(want))),
            _ => false,
        }
    }

    fn outcome(&self, item: &Item) -> Outcome {
        match self.kind {
            SeenKind::Error(message) => Outcome::Failed(if message.is_empty() {
                "GWS reported the operation failed (no message)".to_string()
            } else {
                message.to_string()
            }),
            _ => Outcome::Confirmed(item.clone()),
        }
    }
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
    /// Notifications with a referenceId seen while the reply was pending.
    candidates: Vec<(i64, Outcome)>,
    tx: oneshot::Sender<Outcome>,
}

/// The calls waiting on one agent's feed, in the order their POSTs were sent.
#[derive(Default)]
pub struct Waiters {
    list: Vec<Waiter>,
    next_id: u64,
}

impl Waiters {
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
            candidates: Vec::new(),
            tx,
        });
        id
    }

    /// The call is over (answered, timed out or gone): nothing of it is kept.
    pub fn remove(&mut self, id: u64) {
        self.list.retain(|w| w.id != id);
    }

    /// Ends every wait (the feed ended): the calls see their sender dropped.
    pub fn clear(&mut self) {
        self.list.clear();
    }

    /// The call's HTTP reply arrived with `reference_id`: a candidate seen meanwhile may
    /// already be its confirmation.
    pub fn arm(&mut self, id: u64, reference_id: Option<i64>) {
        let Some(pos) = self.list.iter().position(|w| w.id == id) else {
            return;
        };
        let waiter = &mut self.list[pos];
        waiter.reply = Reply::Arrived(reference_id);
        let found = match reference_id {
            Some(r) => waiter.candidates.iter().position(|(c, _)| *c == r),
            None => (!waiter.candidates.is_empty()).then_some(0),
        };
        if let Some(c) = found {
            let outcome = waiter.candidates.swap_remove(c).1;
            self.resolve(pos, outcome);
        }
    }

    /// Offers one delivered item to the waiting calls.
    pub fn offer(&mut self, item: &Item) {
        if self.list.is_empty() {
            return;
        }
        let Some(seen) = item.event.as_ref().and_then(Seen::of) else {
            return;
        };
        let fits = |w: &Waiter| seen.fits(&w.expect);
        let pos = match seen.reference_id {
            None => self.list.iter().position(fits),
            Some(r) => self
                .list
                .iter()
                .position(|w| fits(w) && w.reply == Reply::Arrived(Some(r)))
                .or_else(|| {
                    self.list
                        .iter()
                        .position(|w| fits(w) && w.reply == Reply::Arrived(None))
                }),
        };
        match (pos, seen.reference_id) {
            (Some(pos), _) => self.resolve(pos, seen.outcome(item)),
            (None, Some(r)) => {
                for w in self.list.iter_mut() {
                    if w.reply == Reply::Pending
                        && seen.fits(&w.expect)
                        && w.candidates.len() < MAX_CANDIDATES
                    {
                        w.candidates.push((r, seen.outcome(item)));
                    }
                }
            }
            (None, None) => {}
        }
    }

    fn resolve(&mut self, pos: usize, outcome: Outcome) {
        let waiter = self.list.remove(pos);
        // The caller may have gone (deadline, client left): nothing to do then.
        let _ = waiter.tx.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::{Notification, map_notification};
    use crate::proto::SessionEventsResponse;
    use crate::upstream::PartyTarget;
    use serde_json::{Value, json};
    use std::sync::Arc;

    fn state(kind: &str, session: &str, reference: Option<i64>) -> Value {
        let mut v = json!({"messageType": "SMSsessionStateChangeMessage", "notificationType": kind,
            "smssession": {"id": session, "state": "Chatting"}});
        if let Some(r) = reference {
            v["referenceId"] = json!(r);
        }
        v
    }

    fn messages(session: &str, types: &[&str]) -> Value {
        json!({"messageType": "MessageLogUpdated", "notificationType": "NewMessages",
            "smssessionUri": format!("http://h/api/v2/smssessions/{session}"),
            "messages": types.iter().enumerate().map(|(i, t)| json!({"index": i, "type": t})).collect::<Vec<_>>()})
    }

    /// Offers `data` as the feed would, with a recognisable resume token.
    fn offer(w: &mut Waiters, data: Value, token: &str) {
        let event = match map_notification(&data).unwrap() {
            Notification::StateChange(sc) => Event::StateChange(sc),
            Notification::MessageLog(ml) => Event::MessageLog(ml),
        };
        let item = Arc::new(SessionEventsResponse {
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
    fn only_the_right_kind_about_the_right_session_confirms() {
        let mut w = Waiters::default();
        let (id, mut rx) = wait(&mut w, "S", Operation::Accept { nickname: None });
        w.arm(id, None);
        offer(&mut w, state("PropertiesUpdated", "S", None), "props");
        offer(&mut w, state("StatusChange", "OTHER", None), "other");
        assert_eq!(token(&mut rx), None);
        offer(&mut w, state("StatusChange", "S", None), "status");
        assert_eq!(token(&mut rx).as_deref(), Some("status"));
        assert_eq!(w.len(), 0, "a confirmed waiter is gone");
    }

    #[test]
    fn message_operations_need_a_message_of_their_type() {
        let mut w = Waiters::default();
        let (id, mut rx) = wait(&mut w, "S", Operation::SendUrl { url: "u".into() });
        w.arm(id, None);
        offer(&mut w, messages("S", &["Text"]), "text");
        assert_eq!(token(&mut rx), None);
        offer(&mut w, messages("S", &["TypingStopped", "PushUrl"]), "url");
        assert_eq!(token(&mut rx).as_deref(), Some("url"));
    }

    #[test]
    fn reference_ids_pick_the_waiter_even_before_the_reply() {
        let mut w = Waiters::default();
        let (a, mut rx_a) = wait(&mut w, "S", Operation::DeleteUserData { keys: vec![] });
        let (b, mut rx_b) = wait(&mut w, "S", Operation::DeleteUserData { keys: vec![] });
        // Both notifications come before either reply: kept as candidates.
        offer(&mut w, state("PropertiesUpdated", "S", Some(8)), "eight");
        offer(&mut w, state("PropertiesUpdated", "S", Some(7)), "seven");
        assert_eq!((token(&mut rx_a), token(&mut rx_b)), (None, None));
        w.arm(b, Some(8));
        assert_eq!(token(&mut rx_b).as_deref(), Some("eight"));
        w.arm(a, Some(7));
        assert_eq!(token(&mut rx_a).as_deref(), Some("seven"));
    }

    #[test]
    fn without_reference_ids_calls_are_matched_in_order() {
        let mut w = Waiters::default();
        let (_, mut rx_a) = wait(&mut w, "S", Operation::Leave);
        let (_, mut rx_b) = wait(&mut w, "S", Operation::Leave);
        offer(&mut w, state("StatusChange", "S", None), "first");
        offer(&mut w, state("StatusChange", "S", None), "second");
        assert_eq!(token(&mut rx_a).as_deref(), Some("first"));
        assert_eq!(token(&mut rx_b).as_deref(), Some("second"));
    }

    #[test]
    fn an_error_about_the_session_fails_the_call() {
        let mut w = Waiters::default();
        let (id, mut rx) = wait(
            &mut w,
            "S",
            Operation::Invite {
                target: PartyTarget::TargetUri("u".into()),
            },
        );
        w.arm(id, Some(3));
        let mut err = json!({"messageType": "SMSsessionStateChangeMessage", "notificationType": "Error",
            "errorMessage": "target not reachable", "smssessionUri": "http://h/api/v2/smssessions/S"});
        offer(&mut w, err.clone(), "e");
        assert_eq!(
            rx.try_recv().unwrap(),
            Outcome::Failed("target not reachable".into())
        );
        // An error with another call's referenceId is not this one's.
        let (id, mut rx) = wait(&mut w, "S", Operation::Leave);
        w.arm(id, Some(4));
        err["referenceId"] = json!(99);
        offer(&mut w, err, "e");
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn removed_waiters_leave_nothing_and_candidates_are_bounded() {
        let mut w = Waiters::default();
        let (id, _rx) = wait(&mut w, "S", Operation::Leave);
        for r in 0..100 {
            offer(&mut w, state("StatusChange", "S", Some(r)), "x");
        }
        assert_eq!(w.list[0].candidates.len(), MAX_CANDIDATES);
        w.remove(id);
        assert_eq!(w.len(), 0);
    }
}
