//! `SMSsessionStateChangeMessage` -> `SessionStateChange`. Known strings become enum
//! values; every upstream string is also kept as received (`*_name`), so a GWS release
//! that adds a state or participant type loses nothing. Enum names are matched
//! ignoring ASCII case, since upstream's documentation is not consistent about case.

use serde_json::{Map, Value};

use super::MappingError;
use super::json::{self, first, kind, opt_i64, opt_object, opt_str, path, req_str, string_list};
use super::parts::{self, lookup, participant};
use super::user_data::user_data_map;
use crate::proto::{NotificationType, SessionState, SessionStateChange, SmsSession};

/// Spellings of the session object: the documentation has both.
pub(crate) const SESSION_KEYS: &[&str] = &["smssession", "smsession"];

/// Where upstream may put the text of an `Error` notification (undocumented for SMS;
/// the chat API uses the first two), most specific first.
const ERROR_TEXT_KEYS: &[&str] = &[
    "errorMessage",
    "message",
    "statusMessage",
    "errorDescription",
    "description",
    "reason",
    "error",
];

pub(crate) fn map(obj: &Map<String, Value>) -> Result<SessionStateChange, MappingError> {
    let type_name = opt_str(obj, "", "notificationType")?;
    let notification_type = notification_type(&type_name);
    let is_error = notification_type == NotificationType::Error;

    let session = match first(obj, SESSION_KEYS) {
        Some((key, v @ Value::Object(s))) if json::object(v).is_some() => Some(session(s, key)?),
        Some((key, other)) => {
            return Err(MappingError::WrongType {
                path: key.to_owned(),
                expected: "an object",
                found: kind(other),
            });
        }
        // An Error notification reports a failed operation and may not carry the whole
        // session; delivering it without one beats dropping the only sign of the failure.
        None if is_error => parts::session_id_from_refs(obj)?.map(|id| SmsSession {
            id,
            ..SmsSession::default()
        }),
        None => {
            return Err(MappingError::Missing {
                path: SESSION_KEYS[0].to_owned(),
            });
        }
    };

    let error_message = if is_error {
        error_text(obj)
    } else {
        String::new()
    };

    let reference = super::ReferenceId::of(obj.get("referenceId"));
    Ok(SessionStateChange {
        notification_type: notification_type as i32,
        notification_type_name: type_name,
        reference_id: reference.id,
        reference_id_json: reference.json,
        session,
        error_message,
    })
}

fn notification_type(name: &str) -> NotificationType {
    const KNOWN: &[(&str, NotificationType)] = &[
        ("StatusChange", NotificationType::StatusChange),
        ("ParticipantsUpdated", NotificationType::ParticipantsUpdated),
        ("PropertiesUpdated", NotificationType::PropertiesUpdated),
        ("Error", NotificationType::Error),
    ];
    lookup(KNOWN, name).unwrap_or(NotificationType::Unspecified)
}

fn session_state(name: &str) -> SessionState {
    const KNOWN: &[(&str, SessionState)] = &[
        ("Invited", SessionState::Invited),
        ("Chatting", SessionState::Chatting),
        ("LeftChat", SessionState::LeftChat),
        ("Completed", SessionState::Completed),
        ("Revoked", SessionState::Revoked),
    ];
    lookup(KNOWN, name).unwrap_or(SessionState::Unspecified)
}

pub(crate) fn session(s: &Map<String, Value>, at: &str) -> Result<SmsSession, MappingError> {
    let id = req_str(s, at, "id")?;
    if id.is_empty() {
        return Err(MappingError::Invalid {
            path: path(at, "id"),
            reason: "the session id is empty".to_owned(),
        });
    }
    let state_name = opt_str(s, at, "state")?;
    let user_data = match opt_object(s, at, "userData")? {
        None => Default::default(),
        // Never refused for depth or size: what a UserDataValue cannot hold is raw_json.
        Some(fields) => user_data_map(fields),
    };
    let participants_at = path(at, "participants");
    let participants = json::opt_array(s, at, "participants")?
        .iter()
        .enumerate()
        .map(|(i, p)| participant(p, &format!("{participants_at}[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SmsSession {
        id: id.to_owned(),
        state: session_state(&state_name) as i32,
        state_name,
        user_data,
        capabilities: string_list(s, at, "capabilities")?,
        uri: opt_str(s, at, "uri")?,
        participants,
    })
}

/// The text of an `Error` notification, from whichever field carries it. A nested
/// `{"error": {"message": ...}}` is looked into; when only a `statusCode` is present it is
/// reported as such. Non-string values are kept as their JSON text rather than dropped:
/// what upstream said matters more than its shape.
fn error_text(obj: &Map<String, Value>) -> String {
    match first(obj, ERROR_TEXT_KEYS) {
        Some((_, Value::String(s))) => s.clone(),
        Some((_, v @ Value::Object(inner))) if json::object(v).is_some() => {
            match first(inner, ERROR_TEXT_KEYS) {
                Some((_, Value::String(s))) => s.clone(),
                _ => crate::json::to_text(v),
            }
        }
        // Raw markers are written as the text they stand for.
        Some((_, other)) => crate::json::to_text(other),
        None => match opt_i64(obj, "", "statusCode") {
            Ok(Some(code)) => format!("statusCode {code}"),
            _ => String::new(),
        },
    }
}
