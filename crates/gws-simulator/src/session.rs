//! One simulated SMS session, typed: its GWS state, user data, participants and transcript,
//! the lifecycle GWS runs on it (`Invited` -> `Accept` -> `Chatting` -> `Leave`/`Complete`),
//! and the GWS JSON it is seen as (the `smssession` resource, transcript messages and the
//! CometD notifications). Capabilities are derived from the state, never stored, so they
//! cannot disagree with it. Pure and synchronous: `state/` owns the sessions, assigns
//! reference ids and decides who gets the notifications.
//!
//! Invariants: transcript `index` strictly increases and `timestampSeconds` (epoch
//! milliseconds, as in GWS) never decreases within a session, even if the wall clock steps
//! back; the transcript and the participant list are bounded.

use gws_model::operation::{Operation, PartyTarget};
use prost_types::Timestamp;
use rand::Rng;
use serde::{Serialize, Serializer};
use serde_json::{Map, Value, json};
use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

/// Messages kept per session; beyond it the oldest are forgotten (indices keep increasing,
/// and GWS transcripts are not contiguous either).
pub const MAX_TRANSCRIPT: usize = 10_000;
/// Participants per session; a `Consult`/`Invite` beyond it is refused (code 2).
pub const MAX_PARTICIPANTS: usize = 64;
/// The user-data key `SetDisposition` writes when the request names no `dispositionKey`.
pub const DISPOSITION_KEY: &str = "DispositionCode";
/// The user-data key `AddComment` writes (the latest comment wins).
pub const COMMENT_KEY: &str = "Comment";

/// The GWS session states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SessionState {
    /// Routed to the agent, not yet answered.
    Invited,
    Chatting,
    /// The agent left the conversation; wrap-up (disposition, user data) then `Complete`.
    LeftChat,
    Completed,
    /// Taken away from the agent by the server; no operation leads here, it can be seeded.
    Revoked,
}

impl SessionState {
    /// The operations valid in this state, as GWS lists them in `capabilities`.
    /// `SetInFocus` is listed (GWS does) but the gateway never sends it: the simulator answers
    /// it as an unknown operation.
    pub fn capabilities(self) -> &'static [&'static str] {
        match self {
            // An invited agent sees the attached data and may edit it before answering,
            // but cannot talk yet.
            SessionState::Invited => &[
                "Accept",
                "Reject",
                "AttachUserData",
                "UpdateUserData",
                "DeleteUserData",
            ],
            SessionState::Chatting => &[
                "Transfer",
                "Leave",
                "Invite",
                "Consult",
                "SetInFocus",
                "SetDisposition",
                "AttachUserData",
                "DeleteUserData",
                "UpdateUserData",
                "Complete",
                "SendMessage",
                "SendStartTypingNotification",
                "SendStopTypingNotification",
                "AddComment",
                "SendToAgents",
                "SendUrl",
            ],
            // After Leave only wrap-up remains.
            SessionState::LeftChat => &[
                "Complete",
                "SetDisposition",
                "AddComment",
                "AttachUserData",
                "UpdateUserData",
                "DeleteUserData",
            ],
            SessionState::Completed | SessionState::Revoked => &[],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SessionState::Invited => "Invited",
            SessionState::Chatting => "Chatting",
            SessionState::LeftChat => "LeftChat",
            SessionState::Completed => "Completed",
            SessionState::Revoked => "Revoked",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ParticipantType {
    Customer,
    Agent,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Participant {
    pub nickname: String,
    #[serde(rename = "type")]
    pub kind: ParticipantType,
    pub participant_id: String,
}

impl Participant {
    /// A new participant with a fresh id shaped like GWS's (16 upper-case hex digits).
    pub fn new(nickname: impl Into<String>, kind: ParticipantType) -> Self {
        let id: u64 = rand::rng().random();
        Self {
            nickname: nickname.into(),
            kind,
            participant_id: format!("{id:016X}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Visibility {
    All,
    Agents,
}

/// Transcript message types the simulator produces (GWS has more, e.g. `Notice`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MessageType {
    Text,
    ParticipantJoined,
    ParticipantLeft,
    TypingStarted,
    TypingStopped,
    PushUrl,
}

/// A transcript message, as GWS serializes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub index: u64,
    pub from: Participant,
    /// Empty for events (joined, left, typing); the URL itself for `PushUrl`.
    pub text: String,
    pub visibility: Visibility,
    #[serde(rename = "type")]
    pub kind: MessageType,
    /// Only on `PushUrl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// ISO-8601, UTC, milliseconds.
    pub timestamp: String,
    /// Epoch milliseconds, despite the name (as GWS).
    pub timestamp_seconds: i64,
}

/// A notification an operation calls for, in publishing order. `state/` renders it with
/// [`SmsSession::notification`] once the whole change is made.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    StatusChange,
    ParticipantsUpdated,
    PropertiesUpdated,
    NewMessages(Vec<Message>),
}

/// Why a well-formed operation was refused; the session is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not among the current state's capabilities.
    NotValidInState,
    /// [`MAX_PARTICIPANTS`] reached.
    TooManyParticipants,
}

#[derive(Debug, Clone)]
pub struct SmsSession {
    pub id: String,
    pub state: SessionState,
    /// Arbitrary JSON, kept losslessly (`3` and `"3"` differ, `null` stays).
    pub user_data: Map<String, Value>,
    pub participants: Vec<Participant>,
    /// The session's own URL (no `/me`, as GWS).
    pub uri: String,
    transcript: VecDeque<Message>,
    next_index: u64,
    /// The owning agent's participant once it joined: the `from` of what the agent sends.
    agent: Option<Participant>,
}

/// The `smssession` resource: the session's GWS JSON, capabilities derived from the state.
impl Serialize for SmsSession {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Resource<'a> {
            id: &'a str,
            state: SessionState,
            user_data: &'a Map<String, Value>,
            capabilities: &'static [&'static str],
            uri: &'a str,
            participants: &'a [Participant],
        }
        Resource {
            id: &self.id,
            state: self.state,
            user_data: &self.user_data,
            capabilities: self.state.capabilities(),
            uri: &self.uri,
            participants: &self.participants,
        }
        .serialize(serializer)
    }
}

impl SmsSession {
    /// A session with no transcript; `base` is the simulator's URL, for the session `uri`.
    pub fn new(
        id: impl Into<String>,
        base: &str,
        state: SessionState,
        user_data: Map<String, Value>,
    ) -> Self {
        let id = id.into();
        Self {
            uri: format!("{}/api/v2/smssessions/{id}", base.trim_end_matches('/')),
            id,
            state,
            user_data,
            participants: Vec::new(),
            transcript: VecDeque::new(),
            next_index: 1,
            agent: None,
        }
    }

    /// Adds a participant; the owning agent's own one is also remembered as the sender of
    /// what the agent sends.
    pub fn join(&mut self, participant: Participant, is_owning_agent: bool) {
        if is_owning_agent {
            self.agent = Some(participant.clone());
        }
        self.participants.push(participant);
    }

    /// The transcript, oldest first.
    pub fn messages(&self) -> &VecDeque<Message> {
        &self.transcript
    }

    /// Appends a message and returns it (for the notification). `PushUrl` carries `text`
    /// as its `url` too.
    pub fn append(
        &mut self,
        from: Participant,
        kind: MessageType,
        text: String,
        visibility: Visibility,
    ) -> Message {
        let last = self.transcript.back().map_or(0, |m| m.timestamp_seconds);
        let millis = now_millis().max(last);
        let message = Message {
            index: self.next_index,
            from,
            url: (kind == MessageType::PushUrl).then(|| text.clone()),
            text,
            visibility,
            kind,
            timestamp: iso8601(millis),
            timestamp_seconds: millis,
        };
        self.next_index += 1;
        if self.transcript.len() >= MAX_TRANSCRIPT {
            self.transcript.pop_front();
        }
        self.transcript.push_back(message.clone());
        message
    }

    /// Runs a validated operation for the owning agent `agent` (its user name) and says
    /// which notifications follow, in order. On `Err` nothing was changed.
    pub fn apply(&mut self, agent: &str, op: Operation) -> Result<Vec<Effect>, Refused> {
        if !self.state.capabilities().contains(&op.name()) {
            return Err(Refused::NotValidInState);
        }
        let effects = match op {
            Operation::AttachUserData { user_data } | Operation::UpdateUserData { user_data } => {
                self.user_data.extend(user_data);
                vec![Effect::PropertiesUpdated]
            }
            Operation::DeleteUserData { keys } => {
                // Absent keys are not an error: the outcome (key absent) holds.
                for key in &keys {
                    self.user_data.remove(key);
                }
                vec![Effect::PropertiesUpdated]
            }
            Operation::SetDisposition {
                disposition,
                disposition_key,
            } => {
                let key = disposition_key.unwrap_or_else(|| DISPOSITION_KEY.to_string());
                self.user_data.insert(key, Value::String(disposition));
                vec![Effect::PropertiesUpdated]
            }
            Operation::AddComment { comment } => {
                self.user_data
                    .insert(COMMENT_KEY.to_string(), Value::String(comment));
                vec![Effect::PropertiesUpdated]
            }
            Operation::Accept { nickname } => {
                let me = Participant::new(
                    nickname.unwrap_or_else(|| agent.to_string()),
                    ParticipantType::Agent,
                );
                self.join(me.clone(), true);
                self.state = SessionState::Chatting;
                let joined = self.append(
                    me,
                    MessageType::ParticipantJoined,
                    String::new(),
                    Visibility::All,
                );
                vec![
                    Effect::StatusChange,
                    Effect::ParticipantsUpdated,
                    Effect::NewMessages(vec![joined]),
                ]
            }
            Operation::Reject | Operation::Complete { .. } => {
                self.state = SessionState::Completed;
                vec![Effect::StatusChange]
            }
            Operation::Leave => {
                let me = self.agent_participant(agent);
                self.participants
                    .retain(|p| p.participant_id != me.participant_id);
                self.state = SessionState::LeftChat;
                let left = self.append(
                    me,
                    MessageType::ParticipantLeft,
                    String::new(),
                    Visibility::All,
                );
                vec![Effect::StatusChange, Effect::NewMessages(vec![left])]
            }
            // The session is handed over: for this agent it is over, nothing left to do.
            Operation::Transfer { .. } => {
                self.state = SessionState::Completed;
                vec![Effect::StatusChange]
            }
            Operation::SendMessage { text } => {
                self.send(agent, MessageType::Text, text, Visibility::All)
            }
            Operation::SendToAgents { text } => {
                self.send(agent, MessageType::Text, text, Visibility::Agents)
            }
            Operation::SendUrl { url } => {
                self.send(agent, MessageType::PushUrl, url, Visibility::All)
            }
            Operation::SendStartTypingNotification => self.send(
                agent,
                MessageType::TypingStarted,
                String::new(),
                Visibility::All,
            ),
            Operation::SendStopTypingNotification => self.send(
                agent,
                MessageType::TypingStopped,
                String::new(),
                Visibility::All,
            ),
            Operation::Consult { target } | Operation::Invite { target } => {
                if self.participants.len() >= MAX_PARTICIPANTS {
                    return Err(Refused::TooManyParticipants);
                }
                let nickname = target_nickname(&target);
                self.join(Participant::new(nickname, ParticipantType::Agent), false);
                vec![Effect::ParticipantsUpdated]
            }
        };
        Ok(effects)
    }

    /// The customer writes (a control-API event, not an agent operation): only while the
    /// conversation is open, i.e. `Invited` or `Chatting`.
    pub fn customer_says(&mut self, text: String) -> Result<Effect, Refused> {
        if !matches!(self.state, SessionState::Invited | SessionState::Chatting) {
            return Err(Refused::NotValidInState);
        }
        let customer = match self
            .participants
            .iter()
            .find(|p| p.kind == ParticipantType::Customer)
        {
            Some(customer) => customer.clone(),
            None => {
                let customer = Participant::new("Customer", ParticipantType::Customer);
                self.join(customer.clone(), false);
                customer
            }
        };
        let message = self.append(customer, MessageType::Text, text, Visibility::All);
        Ok(Effect::NewMessages(vec![message]))
    }

    /// The owning agent's participant; one is made up if the session never had it (a
    /// seeded session without an agent), so a sender always exists.
    fn agent_participant(&mut self, agent: &str) -> Participant {
        self.agent
            .get_or_insert_with(|| Participant::new(agent, ParticipantType::Agent))
            .clone()
    }

    fn send(
        &mut self,
        agent: &str,
        kind: MessageType,
        text: String,
        visibility: Visibility,
    ) -> Vec<Effect> {
        let me = self.agent_participant(agent);
        vec![Effect::NewMessages(vec![
            self.append(me, kind, text, visibility),
        ])]
    }

    /// The CometD `data` GWS publishes for `effect`, with the session as it is now.
    /// `reference_id` ties it to the request that caused it (absent for server-side events).
    pub fn notification(&self, effect: &Effect, reference_id: Option<i64>) -> Value {
        let data = match effect {
            Effect::StatusChange => self.state_change("StatusChange"),
            Effect::ParticipantsUpdated => self.state_change("ParticipantsUpdated"),
            Effect::PropertiesUpdated => self.state_change("PropertiesUpdated"),
            Effect::NewMessages(messages) => json!({
                "messageType": "MessageLogUpdated",
                "notificationType": "NewMessages",
                "smssessionUri": self.uri,
                "messages": messages,
            }),
        };
        with_reference(data, reference_id)
    }

    /// An `Error` notification naming this session by its URI (no `smssession`), as GWS
    /// reports an operation that failed after it was accepted.
    pub fn error_notification(&self, message: &str, reference_id: Option<i64>) -> Value {
        let data = json!({
            "messageType": "SMSsessionStateChangeMessage",
            "notificationType": "Error",
            "errorMessage": message,
            "smssessionUri": self.uri,
        });
        with_reference(data, reference_id)
    }

    fn state_change(&self, notification_type: &str) -> Value {
        json!({
            "messageType": "SMSsessionStateChangeMessage",
            "notificationType": notification_type,
            "smssession": self,
        })
    }
}

/// GWS adds `referenceId` only to what a request caused.
fn with_reference(mut data: Value, reference_id: Option<i64>) -> Value {
    if let Some(id) = reference_id {
        data["referenceId"] = id.into();
    }
    data
}

/// A consulted or invited party's nickname: the last segment of its URI or path.
fn target_nickname(target: &PartyTarget) -> String {
    let (PartyTarget::TargetUri(t) | PartyTarget::TargetPath(t)) = target;
    t.rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or(t.as_str())
        .to_string()
}

/// A fresh session id: 16 characters of `[0-9A-Za-z]`, like GWS's.
pub fn new_session_id() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(16)
        .map(char::from)
        .collect()
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Epoch milliseconds as GWS prints them, `YYYY-MM-DDThh:mm:ss.mmmZ`. prost-types does the
/// calendar; the adapter keeps GWS's shape, always three fraction digits, where its
/// `Display` leaves a zero fraction out and writes a finer one with six or nine.
fn iso8601(millis: i64) -> String {
    let whole_seconds = Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: 0,
    };
    // Whole seconds print without a fraction: `YYYY-MM-DDThh:mm:ssZ`.
    let text = whole_seconds.to_string();
    let date_time = text.strip_suffix('Z').unwrap_or(&text);
    format!("{date_time}.{:03}Z", millis.rem_euclid(1000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gws_model::operation::TransferTarget;

    fn invited() -> SmsSession {
        let mut s = SmsSession::new("S1", "http://sim/", SessionState::Invited, Map::new());
        let customer = Participant::new("Customer", ParticipantType::Customer);
        s.join(customer.clone(), false);
        s.append(customer, MessageType::Text, "hi".into(), Visibility::All);
        s
    }

    fn run(s: &mut SmsSession, op: Operation) -> Result<Vec<Effect>, Refused> {
        s.apply("agent1", op)
    }

    #[test]
    fn resource_json_has_the_gws_shape_and_derived_capabilities() {
        let s = invited();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["uri"], "http://sim/api/v2/smssessions/S1");
        assert_eq!(v["state"], "Invited");
        assert_eq!(v["capabilities"][0], "Accept");
        assert_eq!(v["participants"][0]["type"], "Customer");
        assert_eq!(
            v["participants"][0]["participantId"]
                .as_str()
                .unwrap()
                .len(),
            16
        );
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "capabilities",
                "id",
                "participants",
                "state",
                "uri",
                "userData"
            ]
        );
    }

    #[test]
    fn accept_joins_the_agent_and_publishes_three_notifications() {
        let mut s = invited();
        let effects = run(&mut s, Operation::Accept { nickname: None }).unwrap();
        assert_eq!(s.state, SessionState::Chatting);
        assert_eq!(effects.len(), 3);
        assert_eq!(effects[0], Effect::StatusChange);
        assert_eq!(effects[1], Effect::ParticipantsUpdated);
        let Effect::NewMessages(joined) = &effects[2] else {
            panic!("{effects:?}")
        };
        assert_eq!(joined[0].kind, MessageType::ParticipantJoined);
        assert_eq!(joined[0].from.nickname, "agent1");
        assert_eq!(s.participants.len(), 2);
        let named = &mut invited();
        run(
            named,
            Operation::Accept {
                nickname: Some("Bob".into()),
            },
        )
        .unwrap();
        assert_eq!(named.participants[1].nickname, "Bob");
    }

    #[test]
    fn capabilities_gate_every_operation() {
        let mut s = invited();
        let refused = run(&mut s, Operation::SendMessage { text: "x".into() });
        assert_eq!(refused, Err(Refused::NotValidInState));
        assert_eq!(s.messages().len(), 1, "nothing changed");
        run(&mut s, Operation::Reject).unwrap();
        assert_eq!(s.state, SessionState::Completed);
        assert!(s.state.capabilities().is_empty());
        let ops = [
            Operation::Accept { nickname: None },
            Operation::Complete { queue_name: None },
            Operation::DeleteUserData {
                keys: vec!["k".into()],
            },
        ];
        for op in ops {
            assert_eq!(run(&mut s, op), Err(Refused::NotValidInState));
        }
    }

    #[test]
    fn messages_come_from_the_agent_with_the_right_type_and_visibility() {
        let mut s = invited();
        run(&mut s, Operation::Accept { nickname: None }).unwrap();
        let cases = [
            (
                Operation::SendMessage { text: "t".into() },
                MessageType::Text,
                Visibility::All,
                "t",
            ),
            (
                Operation::SendToAgents { text: "a".into() },
                MessageType::Text,
                Visibility::Agents,
                "a",
            ),
            (
                Operation::SendUrl {
                    url: "https://x.example/".into(),
                },
                MessageType::PushUrl,
                Visibility::All,
                "https://x.example/",
            ),
            (
                Operation::SendStartTypingNotification,
                MessageType::TypingStarted,
                Visibility::All,
                "",
            ),
            (
                Operation::SendStopTypingNotification,
                MessageType::TypingStopped,
                Visibility::All,
                "",
            ),
        ];
        for (op, kind, visibility, text) in cases {
            let name = op.name();
            let effects = run(&mut s, op).unwrap();
            let [Effect::NewMessages(m)] = effects.as_slice() else {
                panic!("{name}: {effects:?}")
            };
            assert_eq!(
                (m[0].kind, m[0].visibility, m[0].text.as_str()),
                (kind, visibility, text),
                "{name}"
            );
            assert_eq!(m[0].from.nickname, "agent1", "{name}");
            assert_eq!(m[0].from.kind, ParticipantType::Agent, "{name}");
        }
        let url = serde_json::to_value(&s.messages()[4]).unwrap();
        assert_eq!(url["type"], "PushUrl");
        assert_eq!(url["url"], "https://x.example/");
        let text = serde_json::to_value(s.messages().back().unwrap()).unwrap();
        assert!(text.get("url").is_none());
    }

    #[test]
    fn transcript_index_and_timestamps_increase() {
        let mut s = invited();
        run(&mut s, Operation::Accept { nickname: None }).unwrap();
        for i in 0..50 {
            run(
                &mut s,
                Operation::SendMessage {
                    text: format!("{i}"),
                },
            )
            .unwrap();
        }
        let m: Vec<_> = s.messages().iter().collect();
        assert!(m.windows(2).all(|w| w[0].index < w[1].index));
        assert!(
            m.windows(2)
                .all(|w| w[0].timestamp_seconds <= w[1].timestamp_seconds)
        );
        let json = serde_json::to_value(m[1]).unwrap();
        assert!(json["timestampSeconds"].as_i64().unwrap() > 1_600_000_000_000);
        assert!(json["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn the_transcript_is_bounded_and_indices_keep_growing() {
        let mut s = invited();
        let customer = s.participants[0].clone();
        for _ in 0..MAX_TRANSCRIPT + 5 {
            s.append(
                customer.clone(),
                MessageType::Text,
                "x".into(),
                Visibility::All,
            );
        }
        assert_eq!(s.messages().len(), MAX_TRANSCRIPT);
        assert_eq!(
            s.messages().back().unwrap().index,
            MAX_TRANSCRIPT as u64 + 6
        );
    }

    #[test]
    fn leave_then_wrap_up_then_complete() {
        let mut s = invited();
        run(&mut s, Operation::Accept { nickname: None }).unwrap();
        let effects = run(&mut s, Operation::Leave).unwrap();
        assert_eq!(effects[0], Effect::StatusChange);
        assert!(
            matches!(&effects[1], Effect::NewMessages(m) if m[0].kind == MessageType::ParticipantLeft)
        );
        assert_eq!(s.state, SessionState::LeftChat);
        assert_eq!(s.participants.len(), 1, "the agent left");
        assert_eq!(
            run(&mut s, Operation::SendMessage { text: "x".into() }),
            Err(Refused::NotValidInState)
        );
        run(
            &mut s,
            Operation::SetDisposition {
                disposition: "Sold".into(),
                disposition_key: None,
            },
        )
        .unwrap();
        run(
            &mut s,
            Operation::SetDisposition {
                disposition: "resolved".into(),
                disposition_key: Some("DISP_KEY".into()),
            },
        )
        .unwrap();
        run(
            &mut s,
            Operation::AddComment {
                comment: "called back".into(),
            },
        )
        .unwrap();
        assert_eq!(s.user_data[DISPOSITION_KEY], "Sold");
        assert_eq!(s.user_data["DISP_KEY"], "resolved");
        assert_eq!(s.user_data[COMMENT_KEY], "called back");
        run(&mut s, Operation::Complete { queue_name: None }).unwrap();
        assert_eq!(s.state, SessionState::Completed);
    }

    #[test]
    fn transfer_ends_the_session_for_the_agent() {
        let mut s = invited();
        run(&mut s, Operation::Accept { nickname: None }).unwrap();
        let effects = run(
            &mut s,
            Operation::Transfer {
                target: TransferTarget::QueueName("Q".into()),
                text: None,
            },
        )
        .unwrap();
        assert_eq!(effects, [Effect::StatusChange]);
        assert_eq!(s.state, SessionState::Completed);
    }

    #[test]
    fn consult_and_invite_add_a_bounded_number_of_agents() {
        let mut s = invited();
        run(&mut s, Operation::Accept { nickname: None }).unwrap();
        let effects = run(
            &mut s,
            Operation::Consult {
                target: PartyTarget::TargetUri("http://gws/api/v2/users/sup1/".into()),
            },
        )
        .unwrap();
        assert_eq!(effects, [Effect::ParticipantsUpdated]);
        assert_eq!(s.participants.last().unwrap().nickname, "sup1");
        assert_eq!(s.participants.last().unwrap().kind, ParticipantType::Agent);
        while s.participants.len() < MAX_PARTICIPANTS {
            let target = PartyTarget::TargetPath("/users/x".into());
            run(&mut s, Operation::Invite { target }).unwrap();
        }
        let target = PartyTarget::TargetPath("p".into());
        assert_eq!(
            run(&mut s, Operation::Invite { target }),
            Err(Refused::TooManyParticipants)
        );
    }

    #[test]
    fn notifications_carry_the_reference_id_only_when_given() {
        let s = invited();
        let n = s.notification(&Effect::PropertiesUpdated, Some(7));
        assert_eq!(n["messageType"], "SMSsessionStateChangeMessage");
        assert_eq!(n["notificationType"], "PropertiesUpdated");
        assert_eq!(n["referenceId"], 7);
        assert_eq!(n["smssession"]["id"], "S1");
        let m = s.notification(&Effect::NewMessages(vec![]), None);
        assert_eq!(m["messageType"], "MessageLogUpdated");
        assert_eq!(m["smssessionUri"], s.uri);
        assert!(m.get("referenceId").is_none());
        let e = s.error_notification("boom", None);
        assert_eq!(e["notificationType"], "Error");
        assert!(e.get("smssession").is_none());
    }

    #[test]
    fn ids_and_timestamps_have_the_gws_shape() {
        let id = new_session_id();
        assert_eq!(id.len(), 16);
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_825_845_007), "2000-02-29T12:04:05.007Z");
        assert_eq!(iso8601(1_735_689_599_999), "2024-12-31T23:59:59.999Z");
    }
}
