//! The simulator's seeded data: the SMS sessions of the GWS documentation page the product
//! started from (`shared/seeds/`, the DeleteUserData page). Its sample is a Python dump;
//! here it is JSON (`None` is `null`). `UserData1`, the key the page deletes, is added back
//! so the page's request can be replayed against the seed. The two chatting sessions carry a
//! short transcript so the transcript GET and resync have something to read.

use super::session::{
    MessageType, Participant, ParticipantType, SessionState, SmsSession, Visibility,
};
use serde_json::{Map, Value, json};

/// The session id of the seed page's request.
pub const SEED_SESSION_ID: &str = "0071023821aec011";
/// The session id of the seed page's notification sample.
pub const SAMPLE_SESSION_ID: &str = "0000Wa9CAM6W00K5";
/// A seeded session in state `Completed`, where user-data operations are invalid (GWS code 2).
pub const COMPLETED_SESSION_ID: &str = "0000CompletedSess";

/// The seed page's user data, before `UserData1` was deleted.
pub fn user_data() -> Map<String, Value> {
    let seed = json!({
        "UserData1": "Value1",
        "IdentifyCreateContact": "3", "RTargetTypeSelected": "2",
        "RTargetObjectSelected": "Chat distribution for processing", "RVQID": "",
        "ChatServerAppName": "es_chat", "PegAGChat distribution for processing": 1,
        "ChatServerHost": "GWS-ubuntu.emea.int.genesyslab.com", "RTargetObjSelDBID": "115",
        "ChatServerPort": "7160", "CBR-Interaction_cost": "", "CBR-contract_DBIDs": "",
        "RTargetAgentSelected": "12345", "CBR-IT-path_DBIDs": "", "RTargetRuleSelected": "",
        "UserData2": 123456789, "RTargetPlaceSelected": "a1", "CBR-actual_volume": "",
        "RTenant": "Environment", "ChatServerDBID": "115", "RRequestedSkills": null,
        "RRequestedSkillCombination": "", "RVQDBID": "", "RStrategyDBID": "776",
        "CustomerSegment": "default", "ServiceType": "default", "ServiceObjective": 0,
        "DISP_KEY": "resolved", "RTargetRequested": "Chat distribution for processing",
        "RTargetAgentGroup": "Chat distribution for processing",
        "RStrategyName": "SimpleChatInStrategy", "Subject": "Customer support"
    });
    match seed {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The seed page's two participants; the agent is the one the seeded sessions belong to.
fn participants() -> (Participant, Participant) {
    let customer = Participant {
        nickname: "FirstL".into(),
        kind: ParticipantType::Customer,
        participant_id: "007352CE9A92032E".into(),
    };
    let agent = Participant {
        nickname: "TestName".into(),
        kind: ParticipantType::Agent,
        participant_id: "007352CE9AB40330".into(),
    };
    (customer, agent)
}

/// One seeded session; `base` is the simulator's own URL for the session `uri`. A chatting
/// one has a short transcript: the customer joined and said something.
pub fn session(id: &str, base: &str) -> SmsSession {
    let state = if id == COMPLETED_SESSION_ID {
        SessionState::Completed
    } else {
        SessionState::Chatting
    };
    let mut session = SmsSession::new(id, base, state, user_data());
    let (customer, agent) = participants();
    session.join(customer.clone(), false);
    session.join(agent, true);
    if state == SessionState::Chatting {
        session.append(
            customer.clone(),
            MessageType::ParticipantJoined,
            String::new(),
            Visibility::All,
        );
        session.append(
            customer,
            MessageType::Text,
            "Hello, I have a question about my order".into(),
            Visibility::All,
        );
    }
    session
}

/// The sessions every agent starts with (each agent has its own copies).
pub fn sessions(base: &str) -> Vec<SmsSession> {
    [SEED_SESSION_ID, SAMPLE_SESSION_ID, COMPLETED_SESSION_ID]
        .iter()
        .map(|id| session(id, base))
        .collect()
}
