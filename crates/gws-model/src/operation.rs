//! The GWS SMS session operations as one typed value: [`Operation`] serializes to exactly the
//! body of `POST /api/v2/me/smssessions/{id}` (`{"operationName": "<Name>", ...fields}`),
//! and the simulator deserializes the same type, so the wire shape is written down once.
//! Adding an operation is one variant here (plus its RPC at the edge).
//!
//! Optional fields are `Option`s and are left out of the body when `None`; the edge turns
//! empty optional strings into `None`. Field names follow GWS (`camelCase`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One SMS session operation, tagged by its GWS `operationName`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "operationName", rename_all_fields = "camelCase")]
pub enum Operation {
    AttachUserData {
        user_data: Map<String, Value>,
    },
    UpdateUserData {
        user_data: Map<String, Value>,
    },
    DeleteUserData {
        keys: Vec<String>,
    },
    SetDisposition {
        disposition: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disposition_key: Option<String>,
    },
    AddComment {
        comment: String,
    },
    Accept {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nickname: Option<String>,
    },
    Reject,
    Complete {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queue_name: Option<String>,
    },
    Leave,
    SendMessage {
        text: String,
    },
    SendToAgents {
        text: String,
    },
    SendUrl {
        url: String,
    },
    SendStartTypingNotification,
    SendStopTypingNotification,
    Transfer {
        #[serde(flatten)]
        target: TransferTarget,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
    Consult {
        #[serde(flatten)]
        target: PartyTarget,
    },
    Invite {
        #[serde(flatten)]
        target: PartyTarget,
    },
}

/// Where a `Transfer` goes: `targetUri` or `queueName`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TransferTarget {
    TargetUri(String),
    QueueName(String),
}

/// Whom a `Consult` or `Invite` reaches: `targetUri` or `targetPath`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PartyTarget {
    TargetUri(String),
    TargetPath(String),
}

/// What kind of notification confirms an operation (`api.md`, the operations table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    PropertiesUpdated,
    StatusChange,
    MessageLog,
    ParticipantsUpdated,
}

impl Operation {
    /// The GWS `operationName`.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::AttachUserData { .. } => "AttachUserData",
            Operation::UpdateUserData { .. } => "UpdateUserData",
            Operation::DeleteUserData { .. } => "DeleteUserData",
            Operation::SetDisposition { .. } => "SetDisposition",
            Operation::AddComment { .. } => "AddComment",
            Operation::Accept { .. } => "Accept",
            Operation::Reject => "Reject",
            Operation::Complete { .. } => "Complete",
            Operation::Leave => "Leave",
            Operation::SendMessage { .. } => "SendMessage",
            Operation::SendToAgents { .. } => "SendToAgents",
            Operation::SendUrl { .. } => "SendUrl",
            Operation::SendStartTypingNotification => "SendStartTypingNotification",
            Operation::SendStopTypingNotification => "SendStopTypingNotification",
            Operation::Transfer { .. } => "Transfer",
            Operation::Consult { .. } => "Consult",
            Operation::Invite { .. } => "Invite",
        }
    }

    /// The notification GWS publishes once the operation took effect.
    pub fn confirmation(&self) -> Confirmation {
        match self {
            Operation::AttachUserData { .. }
            | Operation::UpdateUserData { .. }
            | Operation::DeleteUserData { .. }
            | Operation::SetDisposition { .. }
            | Operation::AddComment { .. } => Confirmation::PropertiesUpdated,
            Operation::Accept { .. }
            | Operation::Reject
            | Operation::Complete { .. }
            | Operation::Leave
            | Operation::Transfer { .. } => Confirmation::StatusChange,
            Operation::SendMessage { .. }
            | Operation::SendToAgents { .. }
            | Operation::SendUrl { .. }
            | Operation::SendStartTypingNotification
            | Operation::SendStopTypingNotification => Confirmation::MessageLog,
            Operation::Consult { .. } | Operation::Invite { .. } => {
                Confirmation::ParticipantsUpdated
            }
        }
    }

    /// The request body.
    pub fn to_body(&self) -> Vec<u8> {
        // Serializing maps with string keys and plain values cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(op: &Operation) -> Value {
        serde_json::from_slice(&op.to_body()).unwrap()
    }

    #[test]
    fn every_operation_has_the_documented_body() {
        let ud: Map<String, Value> = json!({"n": 3, "s": "3", "z": null, "big": 4_294_967_296_i64})
            .as_object()
            .unwrap()
            .clone();
        let cases = [
            (
                Operation::AttachUserData {
                    user_data: ud.clone(),
                },
                json!({"operationName": "AttachUserData", "userData": {"n": 3, "s": "3", "z": null, "big": 4_294_967_296_i64}}),
            ),
            (
                Operation::UpdateUserData {
                    user_data: ud.clone(),
                },
                json!({"operationName": "UpdateUserData", "userData": {"n": 3, "s": "3", "z": null, "big": 4_294_967_296_i64}}),
            ),
            (
                Operation::DeleteUserData {
                    keys: vec!["a".into()],
                },
                json!({"operationName": "DeleteUserData", "keys": ["a"]}),
            ),
            (
                Operation::SetDisposition {
                    disposition: "Sold".into(),
                    disposition_key: Some("DISP".into()),
                },
                json!({"operationName": "SetDisposition", "disposition": "Sold", "dispositionKey": "DISP"}),
            ),
            (
                Operation::SetDisposition {
                    disposition: "Sold".into(),
                    disposition_key: None,
                },
                json!({"operationName": "SetDisposition", "disposition": "Sold"}),
            ),
            (
                Operation::AddComment {
                    comment: "c".into(),
                },
                json!({"operationName": "AddComment", "comment": "c"}),
            ),
            (
                Operation::Accept {
                    nickname: Some("Bob".into()),
                },
                json!({"operationName": "Accept", "nickname": "Bob"}),
            ),
            (
                Operation::Accept { nickname: None },
                json!({"operationName": "Accept"}),
            ),
            (Operation::Reject, json!({"operationName": "Reject"})),
            (
                Operation::Complete {
                    queue_name: Some("Q".into()),
                },
                json!({"operationName": "Complete", "queueName": "Q"}),
            ),
            (Operation::Leave, json!({"operationName": "Leave"})),
            (
                Operation::SendMessage { text: "hi".into() },
                json!({"operationName": "SendMessage", "text": "hi"}),
            ),
            (
                Operation::SendToAgents { text: "hi".into() },
                json!({"operationName": "SendToAgents", "text": "hi"}),
            ),
            (
                Operation::SendUrl {
                    url: "https://x.example/".into(),
                },
                json!({"operationName": "SendUrl", "url": "https://x.example/"}),
            ),
            (
                Operation::SendStartTypingNotification,
                json!({"operationName": "SendStartTypingNotification"}),
            ),
            (
                Operation::SendStopTypingNotification,
                json!({"operationName": "SendStopTypingNotification"}),
            ),
            (
                Operation::Transfer {
                    target: TransferTarget::QueueName("Q".into()),
                    text: Some("t".into()),
                },
                json!({"operationName": "Transfer", "queueName": "Q", "text": "t"}),
            ),
            (
                Operation::Transfer {
                    target: TransferTarget::TargetUri("u".into()),
                    text: None,
                },
                json!({"operationName": "Transfer", "targetUri": "u"}),
            ),
            (
                Operation::Consult {
                    target: PartyTarget::TargetPath("p".into()),
                },
                json!({"operationName": "Consult", "targetPath": "p"}),
            ),
            (
                Operation::Invite {
                    target: PartyTarget::TargetUri("u".into()),
                },
                json!({"operationName": "Invite", "targetUri": "u"}),
            ),
        ];
        for (op, want) in cases {
            assert_eq!(body(&op), want, "{}", op.name());
            assert_eq!(body(&op)["operationName"], op.name());
            // The simulator reads the same type back.
            let back: Operation = serde_json::from_value(want).unwrap();
            assert_eq!(back, op);
        }
    }

    #[test]
    fn confirmations_follow_the_table() {
        assert_eq!(
            Operation::Accept { nickname: None }.confirmation(),
            Confirmation::StatusChange
        );
        assert_eq!(
            Operation::Invite {
                target: PartyTarget::TargetUri("u".into())
            }
            .confirmation(),
            Confirmation::ParticipantsUpdated
        );
        assert_eq!(
            Operation::SendUrl { url: "u".into() }.confirmation(),
            Confirmation::MessageLog
        );
    }
}
