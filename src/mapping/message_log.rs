//! `MessageLogUpdated` (`notificationType: NewMessages`) -> `MessageLogUpdate`. The session
//! is named by reference, not embedded: an explicit id field if present, else the last
//! path segment of `smssessionUri` or `smssessionPath` (the `smsession*` spellings too).

use serde_json::{Map, Value};

use super::MappingError;
use super::json::{first, kind, opt_array, opt_i64, opt_str};
use super::state_change::participant;
use super::time;
use crate::proto::{MessageLogUpdate, TranscriptMessage};

/// Explicit session id fields, checked before the URI/path forms.
const ID_KEYS: &[&str] = &["smssessionId", "smsessionId", "sessionId"];
/// Fields holding a URI or path whose last segment is the session id.
const REF_KEYS: &[&str] = &[
    "smssessionUri",
    "smsessionUri",
    "smssessionPath",
    "smsessionPath",
];

pub(crate) fn map(obj: &Map<String, Value>) -> Result<MessageLogUpdate, MappingError> {
    let session_id = session_id_from_refs(obj)?.ok_or_else(|| MappingError::Missing {
        path: REF_KEYS[0].to_owned(),
    })?;
    let messages = opt_array(obj, "", "messages")?
        .iter()
        .enumerate()
        .map(|(i, m)| message(m, &format!("messages[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(MessageLogUpdate {
        session_id,
        messages,
    })
}

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

pub(crate) fn message(v: &Value, at: &str) -> Result<TranscriptMessage, MappingError> {
    let m = super::json::object(v).ok_or_else(|| MappingError::WrongType {
        path: at.to_owned(),
        expected: "an object",
        found: kind(v),
    })?;
    let sender = match m.get("from") {
        None | Some(Value::Null) => None,
        Some(from) => Some(participant(from, &format!("{at}.from"))?),
    };
    // timestampSeconds holds epoch milliseconds despite its name; `timestamp` is the
    // fallback, read tolerantly (see `time`).
    let time = first(m, &["timestampSeconds"])
        .and_then(|(_, v)| time::from_epoch_millis(v))
        .or_else(|| first(m, &["timestamp"]).and_then(|(_, v)| time::from_loose(v)));
    Ok(TranscriptMessage {
        index: opt_i64(m, at, "index")?.unwrap_or_default(),
        text: opt_str(m, at, "text")?,
        r#type: opt_str(m, at, "type")?,
        visibility: opt_str(m, at, "visibility")?,
        sender,
        time,
        url: opt_str(m, at, "url")?,
    })
}
