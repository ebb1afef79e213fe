//! `MessageLogUpdated` (`notificationType: NewMessages`) -> `MessageLogUpdate`. The session
//! is named by reference, not embedded: an explicit id field if present, else the last
//! path segment of `smssessionUri` or `smssessionPath` (the `smsession*` spellings too).

use serde_json::{Map, Value};

use super::MappingError;
use super::json::{first, kind, opt_array, opt_i64, opt_str};
use super::parts::{REF_KEYS, participant, session_id_from_refs};
use super::time;
use crate::proto::{MessageLogUpdate, TranscriptMessage};

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
