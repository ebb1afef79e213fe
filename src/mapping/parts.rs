//! The shapes both notification kinds share: a participant object (a session's
//! participants, a transcript message's `from`) and the way a notification names its
//! session by id, URI or path. Below `state_change` and `message_log` and importing
//! neither, so those two stay independent of each other.

use serde_json::{Map, Value};

use super::MappingError;
use super::json::{self, first, kind, opt_str};
use crate::proto::{Participant, ParticipantType};

/// Explicit session id fields, checked before the URI/path forms.
const ID_KEYS: &[&str] = &["smssessionId", "smsessionId", "sessionId"];
/// Fields holding a URI or path whose last segment is the session id.
pub(super) const REF_KEYS: &[&str] = &[
    "smssessionUri",
    "smsessionUri",
    "smssessionPath",
    "smsessionPath",
];

/// The session a notification refers to by id, URI or path; `None` when it names none.
pub(crate) fn session_id_from_refs(
    obj: &Map<String, Value>,
) -> Result<Option<String>, MappingError> {
    if let Some((key, v)) = first(obj, ID_KEYS) {
        return match v {
            Value::String(s) if !s.is_empty() => Ok(Some(s.clone())),
            Value::String(_) => Err(MappingError::Invalid {
                path: key.to_owned(),
                reason: "the session id is empty".to_owned(),
            }),
            other => Err(MappingError::WrongType {
                path: key.to_owned(),
                expected: "a string",
                found: kind(other),
            }),
        };
    }
    let Some((key, v)) = first(obj, REF_KEYS) else {
        return Ok(None);
    };
    let Value::String(reference) = v else {
        return Err(MappingError::WrongType {
            path: key.to_owned(),
            expected: "a string",
            found: kind(v),
        });
    };
    match last_segment(reference) {
        Some(id) => Ok(Some(id.to_owned())),
        None => Err(MappingError::Invalid {
            path: key.to_owned(),
            reason: format!(
                "\"{}\" does not end in a session id",
                super::json::excerpt(reference)
            ),
        }),
    }
}

/// The last path segment of a URI or path, ignoring a query or fragment:
/// `http://h/api/v2/smssessions/ABC?x=1` -> `ABC`. A trailing slash means no id (trimming
/// it would turn the collection name `smssessions` into a session id).
fn last_segment(reference: &str) -> Option<&str> {
    let end = reference.find(['?', '#']).unwrap_or(reference.len());
    let path = &reference[..end];
    let id = path.rsplit('/').next()?;
    // A bare scheme or authority ("http:", "host:8080") is not an id.
    (!id.is_empty() && !path.ends_with(':') && !id.contains(':')).then_some(id)
}

/// One participant object (`{nickname, type, participantId}`); also used for a transcript
/// message's `from`.
pub(crate) fn participant(v: &Value, at: &str) -> Result<Participant, MappingError> {
    let p = json::object(v).ok_or_else(|| MappingError::WrongType {
        path: at.to_owned(),
        expected: "an object",
        found: kind(v),
    })?;
    let type_name = opt_str(p, at, "type")?;
    Ok(Participant {
        participant_id: opt_str(p, at, "participantId")?,
        nickname: opt_str(p, at, "nickname")?,
        r#type: participant_type(&type_name) as i32,
        type_name,
    })
}

fn participant_type(name: &str) -> ParticipantType {
    const KNOWN: &[(&str, ParticipantType)] = &[
        ("Customer", ParticipantType::Customer),
        ("Agent", ParticipantType::Agent),
        ("Supervisor", ParticipantType::Supervisor),
    ];
    lookup(KNOWN, name).unwrap_or(ParticipantType::Unspecified)
}

/// The value a known upstream name stands for, matched ignoring ASCII case.
pub(super) fn lookup<T: Copy>(table: &[(&str, T)], name: &str) -> Option<T> {
    table
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}
