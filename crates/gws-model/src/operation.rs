//! The GWS SMS session operations as one typed value: [`Operation`] serializes to exactly the
//! body of `POST /api/v2/me/smssessions/{id}` (`{"operationName": "<Name>", ...fields}`),
//! and the simulator deserializes the same type, so the wire shape is written down once.
//! What GWS shows once an operation took effect ([`Operation::confirmation`],
//! [`Operation::effect`]) is written next to it, in exhaustive matches: adding an operation is
//! one variant here, its proto messages and its line in the gateway's RPC list, and the
//! compiler names every other place (the client's command, the simulator) left to fill in.
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

/// What GWS shows once an operation took effect, beyond the kind of its notification
/// ([`Operation::confirmation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect<'a> {
    /// Nothing beyond the notification itself (user data, disposition, comment, parties).
    Notified,
    /// The session reaches this state; `None` where GWS documents none (a transfer's).
    State(Option<&'static str>),
    /// The session's transcript gains this agent's message: its type and visibility, with
    /// this text or URL. Customers write too, so the type alone proves nothing.
    Message {
        kind: &'static str,
        visibility: &'static str,
        text: Option<&'a str>,
        url: Option<&'a str>,
    },
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

    /// What the session shows once the operation took effect (GWS's documented effect).
    pub fn effect(&self) -> Effect<'_> {
        fn message<'a>(
            kind: &'static str,
            visibility: &'static str,
            text: Option<&'a str>,
            url: Option<&'a str>,
        ) -> Effect<'a> {
            Effect::Message {
                kind,
                visibility,
                text,
                url,
            }
        }
        match self {
            Operation::AttachUserData { .. }
            | Operation::UpdateUserData { .. }
            | Operation::DeleteUserData { .. }
            | Operation::SetDisposition { .. }
            | Operation::AddComment { .. }
            | Operation::Consult { .. }
            | Operation::Invite { .. } => Effect::Notified,
            Operation::Accept { .. } => Effect::State(Some("Chatting")),
            Operation::Reject | Operation::Complete { .. } => Effect::State(Some("Completed")),
            Operation::Leave => Effect::State(Some("LeftChat")),
            Operation::Transfer { .. } => Effect::State(None),
            Operation::SendMessage { text } => message("Text", "All", Some(text.as_str()), None),
            Operation::SendToAgents { text } => {
                message("Text", "Agents", Some(text.as_str()), None)
            }
            Operation::SendUrl { url } => message("PushUrl", "All", None, Some(url.as_str())),
            Operation::SendStartTypingNotification => message("TypingStarted", "All", None, None),
            Operation::SendStopTypingNotification => message("TypingStopped", "All", None, None),
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
    fn each_effect_fits_the_notification_that_confirms_it() {
        let text = || "hi".to_string();
        let all = [
            Operation::AttachUserData {
                user_data: Map::new(),
            },
            Operation::UpdateUserData {
                user_data: Map::new(),
            },
            Operation::DeleteUserData { keys: vec![] },
            Operation::SetDisposition {
                disposition: text(),
                disposition_key: None,
            },
            Operation::AddComment { comment: text() },
            Operation::Accept { nickname: None },
            Operation::Reject,
            Operation::Complete { queue_name: None },
            Operation::Leave,
            Operation::SendMessage { text: text() },
            Operation::SendToAgents { text: text() },
            Operation::SendUrl { url: text() },
            Operation::SendStartTypingNotification,
            Operation::SendStopTypingNotification,
            Operation::Transfer {
                target: TransferTarget::QueueName(text()),
                text: None,
            },
            Operation::Consult {
                target: PartyTarget::TargetUri(text()),
            },
            Operation::Invite {
                target: PartyTarget::TargetPath(text()),
            },
        ];
        for op in &all {
            let fits = matches!(
                (op.effect(), op.confirmation()),
                (Effect::State(_), Confirmation::StatusChange)
                    | (Effect::Message { .. }, Confirmation::MessageLog)
                    | (
                        Effect::Notified,
                        Confirmation::PropertiesUpdated | Confirmation::ParticipantsUpdated
                    )
            );
            assert!(
                fits,
                "{}: {:?} {:?}",
                op.name(),
                op.effect(),
                op.confirmation()
            );
        }
        assert_eq!(
            Operation::SendUrl { url: text() }.effect(),
            Effect::Message {
                kind: "PushUrl",
                visibility: "All",
                text: None,
                url: Some("hi"),
            }
        );
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
