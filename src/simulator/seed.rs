//! The simulator's seeded data: the SMS sessions of the GWS documentation page the product
//! started from (`shared/seeds/`, the DeleteUserData page). Its sample is a Python dump;
//! here it is JSON (`None` is `null`). `UserData1`, the key the page deletes, is added back
//! so the page's request can be replayed against the seed.

use serde_json::{Value, json};

/// The session id of the seed page's request.
pub const SEED_SESSION_ID: &str = "0071023821aec011";
/// The session id of the seed page's notification sample.
pub const SAMPLE_SESSION_ID: &str = "0000Wa9CAM6W00K5";
/// A seeded session in state `Completed`, where user-data operations are invalid (GWS code 2).
pub const COMPLETED_SESSION_ID: &str = "0000CompletedSess";

/// The seed page's user data, before `UserData1` was deleted.
pub fn user_data() -> Value {
    json!({
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
    })
}

pub fn capabilities() -> Value {
    json!([
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
        "SendStopTypingNotification"
    ])
}

pub fn participants() -> Value {
    json!([
        { "nickname": "FirstL", "type": "Customer", "participantId": "007352CE9A92032E" },
        { "nickname": "TestName", "type": "Agent", "participantId": "007352CE9AB40330" }
    ])
}

/// One seeded session resource; `base` is the simulator's own URL for the session `uri`.
pub fn session(id: &str, base: &str) -> Value {
    let completed = id == COMPLETED_SESSION_ID;
    json!({
        "id": id,
        "state": if completed { "Completed" } else { "Chatting" },
        "userData": user_data(),
        "capabilities": if completed { json!([]) } else { capabilities() },
        "uri": format!("{}/api/v2/smssessions/{id}", base.trim_end_matches('/')),
        "participants": participants(),
    })
}

/// The sessions every agent starts with (each agent has its own copies).
pub fn sessions(base: &str) -> Vec<Value> {
    [SEED_SESSION_ID, SAMPLE_SESSION_ID, COMPLETED_SESSION_ID]
        .iter()
        .map(|id| session(id, base))
        .collect()
}
