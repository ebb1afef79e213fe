//! Proto requests into validated domain values, before anything goes upstream.

use crate::events::{Filter, Token};
use crate::proto;

pub const MAX_SESSION_ID_LEN: usize = 64;
pub const MAX_KEYS: usize = 1000;
pub const MAX_KEY_BYTES: usize = 256;
/// Field violations reported at most, so a request with 1,000 bad keys gets a bounded error.
const MAX_VIOLATIONS: usize = 10;

/// One thing wrong with one field, for `google.rpc.BadRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// A `DeleteUserData` request that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteUserData {
    pub session_id: String,
    pub keys: Vec<String>,
}

pub fn delete_user_data(
    req: proto::DeleteUserDataRequest,
) -> Result<DeleteUserData, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    if let Err(v) = session_id(&req.session_id, "session_id") {
        violations.push(v);
    }
    if req.keys.is_empty() {
        violations.push(FieldViolation::new("keys", "at least one key is required"));
    } else if req.keys.len() > MAX_KEYS {
        violations.push(FieldViolation::new(
            "keys",
            format!("at most {MAX_KEYS} keys per call, got {}", req.keys.len()),
        ));
    } else {
        for (i, key) in req.keys.iter().enumerate() {
            if violations.len() >= MAX_VIOLATIONS {
                break;
            }
            if key.is_empty() {
                violations.push(FieldViolation::new(
                    format!("keys[{i}]"),
                    "key must not be empty",
                ));
            } else if key.len() > MAX_KEY_BYTES {
                violations.push(FieldViolation::new(
                    format!("keys[{i}]"),
                    format!("key is {} bytes; at most {MAX_KEY_BYTES}", key.len()),
                ));
            }
        }
    }
    if violations.is_empty() {
        Ok(DeleteUserData {
            session_id: req.session_id,
            keys: req.keys,
        })
    } else {
        Err(violations)
    }
}

/// Most `session_ids` one stream may filter on.
pub const MAX_FILTER_SESSIONS: usize = 100;

/// A `SessionEvents` request that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionEvents {
    pub filter: Filter,
    pub resume: Option<Token>,
}

pub fn session_events(
    req: proto::SessionEventsRequest,
) -> Result<SessionEvents, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    if req.session_ids.len() > MAX_FILTER_SESSIONS {
        violations.push(FieldViolation::new(
            "session_ids",
            format!(
                "at most {MAX_FILTER_SESSIONS} session ids, got {}",
                req.session_ids.len()
            ),
        ));
    } else {
        for (i, id) in req.session_ids.iter().enumerate() {
            if let Err(v) = session_id(id, &format!("session_ids[{i}]")) {
                violations.push(v);
            }
        }
    }
    let mut notification_types = std::collections::HashSet::new();
    for (i, &t) in req.notification_types.iter().enumerate() {
        match proto::NotificationType::try_from(t) {
            Ok(proto::NotificationType::Unspecified) | Err(_) => violations.push(FieldViolation::new(
                format!("notification_types[{i}]"),
                format!("{t} is not a NotificationType this gateway knows (UNSPECIFIED is not a filter)"),
            )),
            Ok(t) => {
                notification_types.insert(t);
            }
        }
    }
    let resume = if req.resume_token.is_empty() {
        None
    } else {
        let token = Token::parse(&req.resume_token);
        if token.is_none() {
            violations.push(FieldViolation::new(
                "resume_token",
                "not a resume_token issued by this gateway; send the resume_token of a SessionEventsResponse",
            ));
        }
        token
    };
    violations.truncate(MAX_VIOLATIONS);
    if !violations.is_empty() {
        return Err(violations);
    }
    Ok(SessionEvents {
        filter: Filter {
            session_ids: req.session_ids.into_iter().collect(),
            notification_types,
        },
        resume,
    })
}

/// A session id is 1-64 characters of `[A-Za-z0-9_-]`.
pub fn session_id(id: &str, field: &str) -> Result<(), FieldViolation> {
    if id.is_empty() {
        return Err(FieldViolation::new(field, "session id is required"));
    }
    if id.len() > MAX_SESSION_ID_LEN {
        return Err(FieldViolation::new(
            field,
            format!(
                "session id is {} characters; at most {MAX_SESSION_ID_LEN}",
                id.len()
            ),
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(FieldViolation::new(
            field,
            "session id may only hold A-Z, a-z, 0-9, '_' and '-'",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: &str, keys: &[&str]) -> proto::DeleteUserDataRequest {
        proto::DeleteUserDataRequest {
            session_id: id.into(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    #[test]
    fn accepts_a_good_request() {
        let ok = delete_user_data(req("0071023821aec011", &["UserData1", "k-2"])).unwrap();
        assert_eq!(ok.keys.len(), 2);
        assert!(delete_user_data(req(&"a".repeat(64), &["k"])).is_ok());
    }

    #[test]
    fn rejects_bad_session_ids() {
        for id in ["", "a/b", "../x", "a b", "é", &"a".repeat(65)] {
            let v = delete_user_data(req(id, &["k"])).unwrap_err();
            assert_eq!(v[0].field, "session_id", "{id:?}");
        }
    }

    #[test]
    fn session_events_filters_and_tokens() {
        let ok = session_events(proto::SessionEventsRequest {
            session_ids: vec!["s1".into()],
            notification_types: vec![proto::NotificationType::PropertiesUpdated as i32],
            resume_token: Token { epoch: 1, seq: 2 }.encode(),
        })
        .unwrap();
        assert!(ok.filter.session_ids.contains("s1"));
        assert_eq!(ok.resume, Some(Token { epoch: 1, seq: 2 }));
        let bad = session_events(proto::SessionEventsRequest {
            session_ids: vec!["a/b".into()],
            notification_types: vec![0, 99],
            resume_token: "garbage".into(),
        })
        .unwrap_err();
        let fields: Vec<_> = bad.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "session_ids[0]",
                "notification_types[0]",
                "notification_types[1]",
                "resume_token"
            ]
        );
    }

    #[test]
    fn rejects_bad_keys_with_their_index() {
        let v = delete_user_data(req("s", &[])).unwrap_err();
        assert_eq!(
            v,
            vec![FieldViolation::new("keys", "at least one key is required")]
        );
        let long = "k".repeat(257);
        let v = delete_user_data(req("s", &["ok", "", &long])).unwrap_err();
        assert_eq!(
            v.iter().map(|v| v.field.as_str()).collect::<Vec<_>>(),
            ["keys[1]", "keys[2]"]
        );
        let many: Vec<&str> = vec!["k"; 1001];
        assert_eq!(
            delete_user_data(req("s", &many)).unwrap_err()[0].field,
            "keys"
        );
        let empties: Vec<&str> = vec![""; 500];
        assert_eq!(
            delete_user_data(req("s", &empties)).unwrap_err().len(),
            MAX_VIOLATIONS
        );
    }
}
