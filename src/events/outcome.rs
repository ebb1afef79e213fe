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
use crate::proto::session_events_response::Event;
use crate::proto::{NotificationType, TranscriptMessage};
use crate::upstream::{Confirmation, Operation};
use std::collections::VecDeque;
use tokio::sync::oneshot;

/// Notifications with a `referenceId` kept for calls whose reply is still outstanding.
const MAX_RECENT: usize = 64;

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
        let message = |kind, visibility, text: Option<&String>, url: Option<&String>| {
            Some(ExpectMessage {
                kind,
                visibility,
                text: text.cloned(),
                url: url.cloned(),
            })
        };
        let (state, message) = match operation {
            Operation::Accept { .. } => (Some("Chatting"), None),
            Operation::Reject | Operation::Complete { .. } => (Some("Completed"), None),
            Operation::Leave => (Some("LeftChat"), None),
            Operation::SendMessage { text } => (None, message("Text", "All", Some(text), None)),
            Operation::SendToAgents { text } => (None, message("Text", "Agents", Some(text), None)),
            Operation::SendUrl { url } => (None, message("PushUrl", "All", None, Some(url))),
            Operation::SendStartTypingNotification => {
                (None, message("TypingStarted", "All", None, None))
            }
            Operation::SendStopTypingNotification => {
                (None, message("TypingStopped", "All", None, None))
            }
            _ => (None, None),
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
    tx: oneshot::Sender<Outcome>,
}

/// The calls waiting on one agent's feed, in the order their POSTs were sent, and the
/// recent referenced notifications that calls still waiting for their reply may claim.
#[derive(Default)]
pub struct Waiters {
    list: Vec<Waiter>,
    next_id: u64,
    /// `(number, notification, its outcome)`, oldest first; each is claimed at most once.
    recent: VecDeque<(u64, Seen, Outcome)>,
    next_recent: u64,
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
            since: self.next_recent,
            tx,
        });
        id
    }

    /// The call is over (answered, timed out or gone): nothing of it is kept.
    pub fn remove(&mut self, id: u64) {
        self.list.retain(|w| w.id != id);
        if self.list.is_empty() {
            self.recent.clear();
        }
    }

    /// Ends every wait (the feed ended): the calls see their sender dropped.
    pub fn clear(&mut self) {
        self.list.clear();
        self.recent.clear();
    }

    /// The call's HTTP reply arrived with `reference_id`: a notification seen meanwhile may
    /// already be its confirmation (with a referenceId, only the one carrying it).
    pub fn arm(&mut self, id: u64, reference_id: Option<i64>) {
        let Some(pos) = self.list.iter().position(|w| w.id == id) else {
            return;
        };
        let waiter = &mut self.list[pos];
        waiter.reply = Reply::Arrived(reference_id);
        let claim = self.recent.iter().position(|(n, seen, _)| {
            *n >= waiter.since
                && seen.fits(&waiter.expect)
                && match reference_id {
                    Some(r) => seen.reference_id == Some(r),
                    // No referenceId to go by: an unreferenced Error stays ambiguous.
                    None => !seen.is_error(),
                }
        });
        if let Some(c) = claim
            && let Some((_, _, outcome)) = self.recent.remove(c)
        {
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
        let pos = match (seen.reference_id, seen.is_error()) {
            (Some(r), _) => self
                .list
                .iter()
                .position(|w| fits(w) && w.reply == Reply::Arrived(Some(r)))
                .or_else(|| {
                    self.list.iter().position(|w| {
                        fits(w) && w.reply == Reply::Arrived(None) && !seen.is_error()
                    })
                }),
            // An Error without a referenceId cannot be about a call whose reply named
            // another one: it goes to the oldest call on the session without one.
            (None, true) => self
                .list
                .iter()
                .position(|w| fits(w) && matches!(w.reply, Reply::Pending | Reply::Arrived(None))),
            (None, false) => self.list.iter().position(fits),
        };
        if let Some(pos) = pos {
            let outcome = seen.outcome(item);
            self.resolve(pos, outcome);
        } else if seen.reference_id.is_some()
            && self
                .list
                .iter()
                .any(|w| w.reply == Reply::Pending && fits(w))
        {
            if self.recent.len() >= MAX_RECENT {
                self.recent.pop_front();
            }
            let outcome = seen.outcome(item);
            self.recent.push_back((self.next_recent, seen, outcome));
            self.next_recent += 1;
        }
    }

    fn resolve(&mut self, pos: usize, outcome: Outcome) {
        let waiter = self.list.remove(pos);
        // The caller may have gone (deadline, client left): nothing to do then.
        let _ = waiter.tx.send(outcome);
        if self.list.is_empty() {
            self.recent.clear();
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
}
