//! The customer side, which the control API plays: an inbound SMS opening a session, the
//! customer writing in one, and an `Error` notification as GWS sends when an accepted
//! operation later fails. Here with their request and error types, so the control API's
//! rules (what it refuses, and why) are apart from what the gateway itself can do.

use super::super::session::{
    Effect, MessageType, Participant, ParticipantType, SessionState, SmsSession, Visibility,
    new_session_id,
};
use super::store::MAX_SESSIONS_PER_AGENT;
use super::{Publish, State};
use serde_json::{Map, json};

/// Longest id a control-API caller may choose for a new session.
const MAX_SESSION_ID_LEN: usize = 64;

/// What a control-API call asking for a customer-side event did wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("unknown agent '{0}'")]
    UnknownAgent(String),
    #[error("no SMS session '{0}'")]
    UnknownSession(String),
    #[error("the agent already has {MAX_SESSIONS_PER_AGENT} SMS sessions")]
    TooManySessions,
    #[error("SMS session '{0}' already exists")]
    SessionExists(String),
    #[error("the SMS session is {0}: the customer is no longer in the conversation")]
    Closed(&'static str),
    #[error("{0}")]
    Invalid(String),
}

/// `POST /simulator/agents/{user}/smssessions`: an inbound SMS; every field is optional.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Inbound {
    pub text: Option<String>,
    pub nickname: Option<String>,
    pub id: Option<String>,
}

impl State {
    /// A customer's SMS reaches `agent`: a new session in state `Invited`, with the customer
    /// as participant and the SMS as its first message. Returns the session and the
    /// `StatusChange` to publish (no `referenceId`: no request of the agent caused it).
    pub fn create_inbound(
        &mut self,
        agent: &str,
        inbound: Inbound,
    ) -> Result<(SmsSession, Publish), ControlError> {
        let text = non_empty(inbound.text, "text", "Hi, I need help")?;
        let nickname = non_empty(inbound.nickname, "nickname", "Customer")?;
        let sessions = self
            .sessions
            .get_mut(agent)
            .ok_or_else(|| ControlError::UnknownAgent(agent.to_string()))?;
        if sessions.len() >= MAX_SESSIONS_PER_AGENT {
            return Err(ControlError::TooManySessions);
        }
        let taken = |id: &str| sessions.iter().any(|s| s.id == id);
        let id = match inbound.id {
            Some(id) if !valid_session_id(&id) => {
                return Err(ControlError::Invalid(format!(
                    "'id' must be 1 to {MAX_SESSION_ID_LEN} characters of [0-9A-Za-z]"
                )));
            }
            Some(id) if taken(&id) => return Err(ControlError::SessionExists(id)),
            Some(id) => id,
            // 62^16 ids: a collision is rare, and retried.
            None => std::iter::repeat_with(new_session_id)
                .find(|id| !taken(id))
                .unwrap_or_default(),
        };
        let user_data = Map::from_iter([("Subject".to_string(), json!("Inbound SMS"))]);
        let mut session = SmsSession::new(id, &self.base_url, SessionState::Invited, user_data);
        let customer = Participant::new(nickname, ParticipantType::Customer);
        session.join(customer.clone(), false);
        session.append(customer, MessageType::Text, text, Visibility::All);
        let publish = Publish {
            agent: agent.to_string(),
            data: session.notification(&Effect::StatusChange, None),
        };
        sessions.push(session.clone());
        Ok((session, publish))
    }

    /// The customer writes in one of `agent`'s open sessions: the `MessageLogUpdated` to
    /// publish.
    pub fn customer_message(
        &mut self,
        agent: &str,
        id: &str,
        text: String,
    ) -> Result<Publish, ControlError> {
        if text.is_empty() {
            return Err(ControlError::Invalid("'text' must not be empty".into()));
        }
        let session = self.control_session(agent, id)?;
        let effect = session
            .customer_says(text)
            .map_err(|_| ControlError::Closed(session.state.name()))?;
        Ok(Publish {
            agent: agent.to_string(),
            data: session.notification(&effect, None),
        })
    }

    /// An `Error` notification about one of `agent`'s sessions, as GWS sends when an
    /// accepted operation later fails. The session itself is unchanged.
    pub fn error_notification(
        &mut self,
        agent: &str,
        id: &str,
        message: &str,
        reference_id: Option<i64>,
    ) -> Result<Publish, ControlError> {
        let session = self.control_session(agent, id)?;
        Ok(Publish {
            agent: agent.to_string(),
            data: session.error_notification(message, reference_id),
        })
    }

    fn control_session(&mut self, agent: &str, id: &str) -> Result<&mut SmsSession, ControlError> {
        self.sessions
            .get_mut(agent)
            .ok_or_else(|| ControlError::UnknownAgent(agent.to_string()))?
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or_else(|| ControlError::UnknownSession(id.to_string()))
    }
}

/// An optional control-API string: its default when absent, refused when empty.
fn non_empty(value: Option<String>, field: &str, default: &str) -> Result<String, ControlError> {
    match value {
        None => Ok(default.to_string()),
        Some(v) if v.is_empty() => Err(ControlError::Invalid(format!(
            "'{field}' must not be empty"
        ))),
        Some(v) => Ok(v),
    }
}

/// A caller-chosen session id must be safe in a URL path and look like GWS's.
fn valid_session_id(id: &str) -> bool {
    (1..=MAX_SESSION_ID_LEN).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::seed;

    #[test]
    fn control_events_are_checked() {
        let mut s = state();
        let given = Inbound {
            id: Some("MyId1".into()),
            ..Inbound::default()
        };
        assert!(s.create_inbound("a", given.clone()).is_ok());
        assert_eq!(
            s.create_inbound("a", given.clone()).unwrap_err(),
            ControlError::SessionExists("MyId1".into())
        );
        assert!(s.create_inbound("b", given).is_ok(), "ids are per agent");
        let bad = Inbound {
            id: Some("../me".into()),
            ..Inbound::default()
        };
        assert!(matches!(
            s.create_inbound("a", bad),
            Err(ControlError::Invalid(_))
        ));
        let empty = Inbound {
            text: Some(String::new()),
            ..Inbound::default()
        };
        assert!(matches!(
            s.create_inbound("a", empty),
            Err(ControlError::Invalid(_))
        ));
        assert_eq!(
            s.create_inbound("zed", Inbound::default()).unwrap_err(),
            ControlError::UnknownAgent("zed".into())
        );

        let p = s.customer_message("a", "MyId1", "more".into()).unwrap();
        assert_eq!(p.data["messages"][0]["from"]["type"], "Customer");
        assert_eq!(p.data["messages"][0]["index"], 2);
        assert!(matches!(
            s.customer_message("a", "MyId1", String::new()),
            Err(ControlError::Invalid(_))
        ));
        assert_eq!(
            s.customer_message("a", seed::COMPLETED_SESSION_ID, "x".into())
                .unwrap_err(),
            ControlError::Closed("Completed")
        );
        assert_eq!(
            s.customer_message("a", "nope", "x".into()).unwrap_err(),
            ControlError::UnknownSession("nope".into())
        );

        let e = s.error_notification("a", "MyId1", "boom", Some(3)).unwrap();
        assert_eq!(e.data["notificationType"], "Error");
        assert_eq!(e.data["errorMessage"], "boom");
        assert_eq!(e.data["referenceId"], 3);
        assert_eq!(
            e.data["smssessionUri"],
            "http://sim/api/v2/smssessions/MyId1"
        );
        assert!(s.error_notification("b", "nope", "boom", None).is_err());
    }

    #[test]
    fn sessions_per_agent_are_bounded() {
        let mut s = state();
        while s.sessions["a"].len() < MAX_SESSIONS_PER_AGENT {
            s.create_inbound("a", Inbound::default()).unwrap();
        }
        assert_eq!(
            s.create_inbound("a", Inbound::default()).unwrap_err(),
            ControlError::TooManySessions
        );
        assert!(s.create_inbound("b", Inbound::default()).is_ok());
    }
}
