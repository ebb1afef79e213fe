//! GWS notification JSON -> proto: the one place that knows upstream's session and
//! transcript shapes, for notifications and for the reads alike. It dispatches on
//! `data.messageType` (never on the CometD channel, which GWS does not document for SMS),
//! keeps every upstream string the proto enums do not know
//! (`*_name` fields), maps `userData` losslessly, and is total: any JSON value either maps
//! or yields a [`MappingError`] naming what was wrong and where, never a panic.
//!
//! Layout: [`json`] holds the typed field accessors that produce path-carrying errors,
//! `state_change` / `message_log` map the two notification kinds (`parts` holds the
//! participant and session-reference shapes they share), `user_data` is the
//! lossless JSON <-> `UserDataValue` pair and `time` turns upstream timestamps into
//! `google.protobuf.Timestamp`.

mod json;
mod message_log;
mod parts;
mod state_change;
mod time;
mod user_data;

#[cfg(test)]
mod tests;

use crate::proto;

pub use user_data::{
    MAX_USER_DATA_DEPTH, user_data_map_to_json, user_data_to_json, user_data_value,
};

/// `data.messageType` of a session state notification.
pub const STATE_CHANGE_MESSAGE_TYPE: &str = "SMSsessionStateChangeMessage";
/// `data.messageType` of a transcript notification.
pub const MESSAGE_LOG_MESSAGE_TYPE: &str = "MessageLogUpdated";

/// Upstream's `referenceId`, never silently absent: an `int64` when it is one (a string
/// holding one counts, as some GWS builds quote ids), else its exact JSON text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReferenceId {
    pub id: Option<i64>,
    /// Set instead of `id` when upstream sent something `int64` cannot hold.
    pub json: String,
}

impl ReferenceId {
    /// From the `referenceId` field of a reply or notification (absent or null: neither).
    pub fn of(value: Option<&serde_json::Value>) -> Self {
        use serde_json::Value;
        match value {
            None | Some(Value::Null) => Self::default(),
            Some(v) => match json::as_i64(v, "referenceId") {
                Ok(id) => Self {
                    id: Some(id),
                    json: String::new(),
                },
                Err(_) => Self {
                    id: None,
                    json: crate::json::to_text(v),
                },
            },
        }
    }
}

/// One mapped GWS notification.
// One per notification, moved once into its stream item: boxing the larger variant would
// add an allocation and buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Notification {
    /// `messageType: SMSsessionStateChangeMessage`.
    StateChange(proto::SessionStateChange),
    /// `messageType: MessageLogUpdated`.
    MessageLog(proto::MessageLogUpdate),
}

impl Notification {
    /// The SMS session the notification is about. Empty only for an `Error` notification
    /// that named no session at all (upstream is not documented to always name one).
    pub fn session_id(&self) -> &str {
        match self {
            Notification::StateChange(sc) => sc.session.as_ref().map_or("", |s| s.id.as_str()),
            Notification::MessageLog(ml) => &ml.session_id,
        }
    }

    /// For a state change its [`proto::NotificationType`] (`Unspecified` when upstream sent
    /// a kind this enum does not know; the name is in `notification_type_name`);
    /// `None` for a transcript update, which has no notification type in the proto.
    pub fn notification_type(&self) -> Option<proto::NotificationType> {
        match self {
            Notification::StateChange(sc) => Some(
                proto::NotificationType::try_from(sc.notification_type)
                    .unwrap_or(proto::NotificationType::Unspecified),
            ),
            Notification::MessageLog(_) => None,
        }
    }

    /// The `kind` label of a notification the gateway cannot tell apart (a notificationType
    /// the proto does not know, or one that could not be mapped at all).
    pub const OTHER: &'static str = "other";

    /// Its `kind` label in `gws_gateway_notifications_total`: its GWS notificationType, or
    /// `MessageLogUpdated` for a transcript update.
    pub fn label(&self) -> &'static str {
        use proto::NotificationType as T;
        match self.notification_type() {
            None => "MessageLogUpdated",
            Some(T::StatusChange) => "StatusChange",
            Some(T::ParticipantsUpdated) => "ParticipantsUpdated",
            Some(T::PropertiesUpdated) => "PropertiesUpdated",
            Some(T::Error) => "Error",
            Some(T::Unspecified) => Self::OTHER,
        }
    }
}

/// Why a notification could not be mapped. `path` is a dotted JSON path from the
/// notification's `data` object, e.g. `smssession.participants[1].type`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MappingError {
    /// The notification's `data` is not a JSON object.
    #[error("notification data must be a JSON object, got {found}")]
    NotAnObject {
        /// The JSON kind found instead.
        found: &'static str,
    },
    /// A required field is absent (or null).
    #[error("notification field `{path}` is missing")]
    Missing {
        /// Where the field was expected.
        path: String,
    },
    /// A field is present with a JSON type the mapping cannot use.
    #[error("notification field `{path}` must be {expected}, got {found}")]
    WrongType {
        /// The field.
        path: String,
        /// What the mapping accepts there.
        expected: &'static str,
        /// The JSON kind found.
        found: &'static str,
    },
    /// A field has the right type but an unusable value.
    #[error("notification field `{path}` is invalid: {reason}")]
    Invalid {
        /// The field.
        path: String,
        /// What is wrong with the value.
        reason: String,
    },
    /// `messageType` names a notification this gateway does not map.
    #[error("unsupported notification messageType `{0}`")]
    UnknownMessageType(String),
}

/// The sessions of a `GET /api/v2/me/smssessions` reply (`smssessions`, or the
/// documentation's `smsessions` spelling), mapped as notifications map them.
///
/// # Errors
/// [`MappingError`] when the list is missing or one session cannot be mapped.
pub fn map_sessions(
    reply: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<proto::SmsSession>, MappingError> {
    let (key, list) =
        json::first(reply, &["smssessions", "smsessions"]).ok_or(MappingError::Missing {
            path: "smssessions".to_owned(),
        })?;
    let list = list.as_array().ok_or_else(|| MappingError::WrongType {
        path: key.to_owned(),
        expected: "an array",
        found: json::kind(list),
    })?;
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            let at = format!("{key}[{i}]");
            match json::object(s) {
                Some(obj) => state_change::session(obj, &at),
                None => Err(MappingError::WrongType {
                    path: at,
                    expected: "an object",
                    found: json::kind(s),
                }),
            }
        })
        .collect()
}

/// The session of a `GET /api/v2/me/smssessions/{id}` reply.
///
/// # Errors
/// [`MappingError`] when the session is missing or cannot be mapped.
pub fn map_session(
    reply: &serde_json::Map<String, serde_json::Value>,
) -> Result<proto::SmsSession, MappingError> {
    match json::first(reply, state_change::SESSION_KEYS) {
        Some((key, v @ serde_json::Value::Object(s))) if json::object(v).is_some() => {
            state_change::session(s, key)
        }
        Some((key, other)) => Err(MappingError::WrongType {
            path: key.to_owned(),
            expected: "an object",
            found: json::kind(other),
        }),
        None => Err(MappingError::Missing {
            path: state_change::SESSION_KEYS[0].to_owned(),
        }),
    }
}

/// The transcript of a `GET /api/v2/me/smssessions/{id}/messages` reply, mapped as
/// `MessageLogUpdated` notifications map their messages.
///
/// # Errors
/// [`MappingError`] when a message cannot be mapped.
pub fn map_transcript(
    reply: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<proto::TranscriptMessage>, MappingError> {
    json::opt_array(reply, "", "messages")?
        .iter()
        .enumerate()
        .map(|(i, m)| message_log::message(m, &format!("messages[{i}]")))
        .collect()
}

/// Maps one CometD message `data` object to a [`Notification`].
///
/// # Errors
/// [`MappingError`] when `data` is not an object, `messageType` is missing or unknown,
/// a required field is missing, or a field has a type the mapping cannot use.
pub fn map_notification(data: &serde_json::Value) -> Result<Notification, MappingError> {
    let obj = json::object(data).ok_or(MappingError::NotAnObject {
        found: json::kind(data),
    })?;
    let message_type = json::req_str(obj, "", "messageType")?;
    match message_type {
        STATE_CHANGE_MESSAGE_TYPE => state_change::map(obj).map(Notification::StateChange),
        MESSAGE_LOG_MESSAGE_TYPE => message_log::map(obj).map(Notification::MessageLog),
        other => Err(MappingError::UnknownMessageType(json::excerpt(other))),
    }
}
