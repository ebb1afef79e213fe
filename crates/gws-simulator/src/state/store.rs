//! Each agent's SMS sessions as the REST reads show them: the list, one session, its
//! transcript. A session is found only among the asking agent's own, so another agent's id
//! answers "not found" exactly as an unknown one does; that rule lives here once, for the
//! reads and (through `not_found`) for the operations.

use super::super::session::SmsSession;
use super::{Reply, State};
use serde_json::json;

/// Bound on SMS sessions per agent, seeds included; creating more is refused.
pub const MAX_SESSIONS_PER_AGENT: usize = 10_000;

impl State {
    /// `GET /api/v2/me/smssessions`.
    pub fn list_sessions(&self, agent: &str) -> Reply {
        let sessions = self.sessions.get(agent).map_or(&[][..], Vec::as_slice);
        Reply::ok(json!({ "statusCode": 0, "smssessions": sessions }))
    }

    /// `GET /api/v2/me/smssessions/{id}`.
    pub fn get_session(&self, agent: &str, id: &str) -> Reply {
        match self.session(agent, id) {
            Some(session) => Reply::ok(json!({ "statusCode": 0, "smssession": session })),
            None => not_found(id),
        }
    }

    /// `GET /api/v2/me/smssessions/{id}/messages`: the transcript, oldest first.
    pub fn messages(&self, agent: &str, id: &str) -> Reply {
        match self.session(agent, id) {
            Some(session) => Reply::ok(json!({ "statusCode": 0, "messages": session.messages() })),
            None => not_found(id),
        }
    }

    /// One of `agent`'s sessions; another agent's is not found.
    pub fn session(&self, agent: &str, id: &str) -> Option<&SmsSession> {
        self.sessions.get(agent)?.iter().find(|s| s.id == id)
    }
}

pub(super) fn not_found(id: &str) -> Reply {
    Reply::error(404, 6, format!("SMS session '{id}' not found"))
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::seed;

    #[test]
    fn seeds_have_a_short_transcript_and_state_derived_capabilities() {
        let s = state();
        for id in [seed::SEED_SESSION_ID, seed::SAMPLE_SESSION_ID] {
            let body = s.messages("a", id).body;
            let types: Vec<_> = body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["type"].clone())
                .collect();
            assert_eq!(types, [json!("ParticipantJoined"), json!("Text")]);
            let session = s.get_session("a", id).body;
            assert_eq!(session["smssession"]["state"], "Chatting");
            assert_eq!(session["smssession"]["capabilities"][0], "Transfer");
        }
        let done = s.get_session("a", seed::COMPLETED_SESSION_ID).body;
        assert_eq!(done["smssession"]["capabilities"], json!([]));
        let list = s.list_sessions("a").body;
        assert_eq!(list["smssessions"].as_array().unwrap().len(), 3);
        assert_eq!(s.get_session("a", "nope").body["statusCode"], 6);
        assert_eq!(s.messages("a", "nope").http_status, 404);
    }
}
