//! Proto requests into validated domain values, before anything goes upstream: each
//! operation request becomes a typed [`Operation`] in one `validate` (the only place that
//! knows both the proto and the upstream shape), collecting every violation for
//! `google.rpc.BadRequest`.

use crate::events::{Filter, Token};
use crate::mapping::{MAX_USER_DATA_DEPTH, user_data_to_json};
use crate::proto;
use crate::upstream::{Operation, PartyTarget, Read, TransferTarget};
use serde_json::{Map, Value};
use std::collections::HashMap;

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

/// Longest text, comment, disposition, URL or other free string accepted, in characters.
pub const MAX_TEXT_CHARS: usize = 4096;

/// An operation request that passed validation: where it goes and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidOperation {
    pub session_id: String,
    pub operation: Operation,
    pub wait_for_outcome: bool,
}

/// A proto operation request, translated into the typed upstream [`Operation`] in one
/// function per request type.
pub trait OperationRequest {
    fn validate(self) -> Result<ValidOperation, Vec<FieldViolation>>;
}

/// A proto read request, translated into the upstream [`Read`].
pub trait ReadRequest {
    fn validate(self) -> Result<Read, Vec<FieldViolation>>;
}

/// Collects the violations of one request, so a caller learns everything wrong at once.
struct Check {
    violations: Vec<FieldViolation>,
}

impl Check {
    /// Starts with the `session_id` every operation carries.
    fn new(id: &str) -> Self {
        let mut check = Self {
            violations: Vec::new(),
        };
        if let Err(v) = session_id(id, "session_id") {
            check.violations.push(v);
        }
        check
    }

    fn violation(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.violations
            .push(FieldViolation::new(field, description));
    }

    /// A required string of 1-[`MAX_TEXT_CHARS`] characters.
    fn required(&mut self, field: &str, value: &str) {
        if value.is_empty() {
            self.violation(field, format!("{field} is required"));
        } else {
            self.bounded(field, value);
        }
    }

    /// An optional string: empty is left out of the upstream body.
    fn optional(&mut self, field: &str, value: String) -> Option<String> {
        self.bounded(field, &value);
        (!value.is_empty()).then_some(value)
    }

    fn bounded(&mut self, field: &str, value: &str) {
        let chars = value.chars().count();
        if chars > MAX_TEXT_CHARS {
            self.violation(
                field,
                format!("{field} is {chars} characters; at most {MAX_TEXT_CHARS}"),
            );
        }
    }

    /// An absolute `http`/`https` URL with a host.
    fn url(&mut self, field: &str, value: &str) {
        if value.is_empty() {
            return self.violation(field, format!("{field} is required"));
        }
        self.bounded(field, value);
        match reqwest::Url::parse(value) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            _ => self.violation(
                field,
                "must be an absolute http:// or https:// URL with a host",
            ),
        }
    }

    /// A required choice of a `oneof`: present and non-empty.
    fn target(&mut self, value: Option<String>, choices: &str) -> String {
        match value {
            Some(v) if !v.is_empty() => {
                self.bounded("target", &v);
                v
            }
            _ => {
                self.violation("target", format!("one of {choices} is required"));
                String::new()
            }
        }
    }

    /// User-data keys: 1-[`MAX_KEYS`], each 1-[`MAX_KEY_BYTES`] bytes.
    fn keys<'a>(&mut self, field: &str, keys: impl ExactSizeIterator<Item = &'a String>) {
        let n = keys.len();
        if n == 0 {
            return self.violation(field, "at least one key is required");
        }
        if n > MAX_KEYS {
            return self.violation(field, format!("at most {MAX_KEYS} keys per call, got {n}"));
        }
        for (i, key) in keys.enumerate() {
            if key.is_empty() {
                self.violation(format!("{field}[{i}]"), "key must not be empty");
            } else if key.len() > MAX_KEY_BYTES {
                self.violation(
                    format!("{field}[{i}]"),
                    format!("key is {} bytes; at most {MAX_KEY_BYTES}", key.len()),
                );
            }
        }
    }

    /// `user_data`: keys as [`Check::keys`], values set, finite and nested at most
    /// [`MAX_USER_DATA_DEPTH`] levels; becomes the JSON object sent upstream, losslessly.
    fn user_data(&mut self, map: HashMap<String, proto::UserDataValue>) -> Map<String, Value> {
        // Sorted, so violations come in a stable order.
        let mut entries: Vec<_> = map.into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        if entries.is_empty() {
            self.violation("user_data", "at least one entry is required");
        } else if entries.len() > MAX_KEYS {
            self.violation(
                "user_data",
                format!("at most {MAX_KEYS} entries per call, got {}", entries.len()),
            );
        } else {
            for (key, value) in &entries {
                let field = format!("user_data[{key:?}]");
                if key.is_empty() {
                    self.violation("user_data", "keys must not be empty");
                } else if key.len() > MAX_KEY_BYTES {
                    let shown: String = key.chars().take(32).collect();
                    self.violation(
                        "user_data",
                        format!(
                            "key {shown:?}... is {} bytes; at most {MAX_KEY_BYTES}",
                            key.len()
                        ),
                    );
                } else if let Err(why) = check_value(value, MAX_USER_DATA_DEPTH) {
                    self.violation(field, why);
                }
            }
        }
        entries
            .iter()
            .map(|(k, v)| (k.clone(), user_data_to_json(v)))
            .collect()
    }

    fn finish(
        mut self,
        session_id: String,
        wait_for_outcome: bool,
        operation: Operation,
    ) -> Result<ValidOperation, Vec<FieldViolation>> {
        if self.violations.is_empty() {
            Ok(ValidOperation {
                session_id,
                operation,
                wait_for_outcome,
            })
        } else {
            self.violations.truncate(MAX_VIOLATIONS);
            Err(self.violations)
        }
    }
}

/// Whether a `UserDataValue` can go upstream as JSON: every value set, doubles finite,
/// nested at most `depth` levels of maps and lists.
fn check_value(v: &proto::UserDataValue, depth: usize) -> Result<(), String> {
    use proto::user_data_value::Kind;
    match &v.kind {
        None => Err("value has no kind set; use null_value for JSON null".into()),
        Some(Kind::RawJson(_)) => {
            Err("raw_json is output only (what upstream sent that no other kind holds)".into())
        }
        Some(Kind::DoubleValue(d)) if !d.is_finite() => {
            Err("double_value must be finite (JSON has no NaN or infinity)".into())
        }
        Some(Kind::MapValue(_) | Kind::ListValue(_)) if depth == 0 => Err(format!(
            "nested more than {MAX_USER_DATA_DEPTH} levels deep"
        )),
        Some(Kind::MapValue(m)) => m.fields.iter().try_for_each(|(k, c)| {
            if k.is_empty() || k.len() > MAX_KEY_BYTES {
                return Err(format!(
                    "nested keys must be 1-{MAX_KEY_BYTES} bytes, got {}",
                    k.len()
                ));
            }
            check_value(c, depth - 1)
        }),
        Some(Kind::ListValue(l)) => l.values.iter().try_for_each(|c| check_value(c, depth - 1)),
        Some(_) => Ok(()),
    }
}

impl OperationRequest for proto::AttachUserDataRequest {
    fn validate(self) -> Result<ValidOperation, Vec<FieldViolation>> {
        let mut c = Check::new(&self.session_id);
        let user_data = c.user_data(self.user_data);
        c.finish(
            self.session_id,
            self.wait_for_outcome,
            Operation::AttachUserData { user_data },
        )
    }
}

impl OperationRequest for proto::UpdateUserDataRequest {
    fn validate(self) -> Result<ValidOperation, Vec<FieldViolation>> {
        let mut c = Check::new(&self.session_id);
        let user_data = c.user_data(self.user_data);
        c.finish(
            self.session_id,
            self.wait_for_outcome,
            Operation::UpdateUserData { user_data },
        )
    }
}

impl OperationRequest for proto::DeleteUserDataRequest {
    fn validate(self) -> Result<ValidOperation, Vec<FieldViolation>> {
        let mut c = Check::new(&self.session_id);
        c.keys("keys", self.keys.iter());
        c.finish(
            self.session_id,
            self.wait_for_outcome,
            Operation::DeleteUserData { keys: self.keys },
        )
    }
}

impl OperationRequest for proto::SetDispositionRequest {
    fn validate(self) -> Result<ValidOperation, Vec<FieldViolation>> {
        let mut c = Check::new(&self.session_id);
        c.required("disposition", &self.disposition);
        let disposition_key = c.optional("disposition_key", self.disposition_key);
        c.finish(
            self.session_id,
            self.wait_for_outcome,
            Operation::SetDisposition {
                disposition: self.disposition,
                disposition_key,
            },
        )
    }
}

impl OperationRequest for proto::AddCommentRequest {
    fn validate(self) -> Result<ValidOperation, Vec<FieldViolation>> {
        let mut c = Check::new(&self.session_id);
        c.required("comment", &self.comment);
        c.finish(
            self.session_id,
            self.wait_for_outcome,
            Operation::AddComment {
                comment: self.comment,
            },
        )
    }
}

impl OperationRequest for proto::AcceptRequest {
    fn validate(self) -> Result<ValidOperation, Vec<FieldViolation>> {
        let mut c = Check::new(&self.session_id);
        let nickname = c.optional("nickname", self.nickname);
        c.finish(
            self.session_id,
            self.wait_for_outcome,
            Operation::Accept { nickname },
        )
    }
}

impl OperationRequest for proto::RejectRequest {
    fn validate(self) -> Result<ValidOperation, Vec<FieldViolation>> {
        Check::new(&self.session_id).finish(
            self.session_id,
            self.wait_for_outcome,
            Operation::Reject,
        )
    }
}

impl OperationRequest for proto::CompleteRequest {
    fn validate(self) -> Result<ValidOperation, Vec<FieldViolation>> {
        let mut c = Check::new(&self.session_id);
        let queue_name = c.optional("queue_name", self.queue_name);
        c.finish(
            self.session_id,
            self.wait_for_outcome,
            Operation::Complete { queue_name },
        )
    }
}

impl OperationRequest for proto::LeaveRequest {
    fn validate(self) -> Result<ValidOperation, Vec<FieldViolation>> {
        Check::new(&self.session_id).finish(
            self.session_id,
            self.wait_for_outcome,
            Operation::Leave,
        )
    }
}

impl OperationRequest for proto::SendMessageRequest {
    fn validate(self) -> Result<ValidOperation, Vec<FieldViolation>> {
        let mut c = Check::new(&self.session_id);
        c.required("text", &self.text);
        c.finish(
            self.session_id,
            self.wait_for_outcome,
            Operation::SendMessage { text: self.text },
        )
    }
}

impl OperationRequest for proto::SendToAgentsRequest {
    fn validate(self) -> Result<ValidOperation, Vec<FieldViolation>> {
        let mut c = Check::new(&self.session_id);
        c.required("text", &self.text);
        c.finish(
            self.session_id,
            self.wait_for_outcome,
            Operation::SendToAgents { text: self.text },
        )
    }
}

impl OperationRequest for proto::SendUrlRequest {
    fn validate(self) -> Result<ValidOperation, Vec<FieldViolation>> {
        let mut c = Check::new(&self.session_id);
        c.url("url", &self.url);
        c.finish(
            self.session_id,
            self.wait_for_outcome,
            Operation::SendUrl { url: self.url },
        )
    }
}

impl OperationRequest for proto::SendStartTypingNotificationRequest {
    fn validate(self) -> Result<ValidOperation, Vec<FieldViolation>> {
        Check::new(&self.session_id).finish(
            self.session_id,
            self.wait_for_outcome,
            Operation::SendStartTypingNotification,
        )
    }
}

impl OperationRequest for proto::SendStopTypingNotificationRequest {
    fn validate(self) -> Result<ValidOperation, Vec<FieldViolation>> {
        Check::new(&self.session_id).finish(
            self.session_id,
            self.wait_for_outcome,
            Operation::SendStopTypingNotification,
        )
    }
}

impl OperationRequest for proto::TransferRequest {
    fn validate(self) -> Result<ValidOperation, Vec<FieldViolation>> {
        use proto::transfer_request::Target;
        let mut c = Check::new(&self.session_id);
        const CHOICES: &str = "target_uri or queue_name";
        let target = match self.target {
            Some(Target::QueueName(q)) => TransferTarget::QueueName(c.target(Some(q), CHOICES)),
            Some(Target::TargetUri(u)) => TransferTarget::TargetUri(c.target(Some(u), CHOICES)),
            None => TransferTarget::TargetUri(c.target(None, CHOICES)),
        };
        let text = c.optional("text", self.text);
        c.finish(
            self.session_id,
            self.wait_for_outcome,
            Operation::Transfer { target, text },
        )
    }
}

/// The `target` of a Consult or Invite.
fn party_target(c: &mut Check, target: Option<PartyChoice>) -> PartyTarget {
    const CHOICES: &str = "target_uri or target_path";
    match target {
        Some(PartyChoice::Path(p)) => PartyTarget::TargetPath(c.target(Some(p), CHOICES)),
        Some(PartyChoice::Uri(u)) => PartyTarget::TargetUri(c.target(Some(u), CHOICES)),
        None => PartyTarget::TargetUri(c.target(None, CHOICES)),
    }
}

/// The two proto `oneof target`s of Consult and Invite, which prost generates as two types.
enum PartyChoice {
    Uri(String),
    Path(String),
}

impl OperationRequest for proto::ConsultRequest {
    fn validate(self) -> Result<ValidOperation, Vec<FieldViolation>> {
        use proto::consult_request::Target;
        let mut c = Check::new(&self.session_id);
        let target = party_target(
            &mut c,
            self.target.map(|t| match t {
                Target::TargetUri(u) => PartyChoice::Uri(u),
                Target::TargetPath(p) => PartyChoice::Path(p),
            }),
        );
        c.finish(
            self.session_id,
            self.wait_for_outcome,
            Operation::Consult { target },
        )
    }
}

impl OperationRequest for proto::InviteRequest {
    fn validate(self) -> Result<ValidOperation, Vec<FieldViolation>> {
        use proto::invite_request::Target;
        let mut c = Check::new(&self.session_id);
        let target = party_target(
            &mut c,
            self.target.map(|t| match t {
                Target::TargetUri(u) => PartyChoice::Uri(u),
                Target::TargetPath(p) => PartyChoice::Path(p),
            }),
        );
        c.finish(
            self.session_id,
            self.wait_for_outcome,
            Operation::Invite { target },
        )
    }
}

impl ReadRequest for proto::ListSessionsRequest {
    fn validate(self) -> Result<Read, Vec<FieldViolation>> {
        Ok(Read::Sessions)
    }
}

impl ReadRequest for proto::GetSessionRequest {
    fn validate(self) -> Result<Read, Vec<FieldViolation>> {
        session_id(&self.session_id, "session_id").map_err(|v| vec![v])?;
        Ok(Read::Session(self.session_id))
    }
}

impl ReadRequest for proto::GetTranscriptRequest {
    fn validate(self) -> Result<Read, Vec<FieldViolation>> {
        session_id(&self.session_id, "session_id").map_err(|v| vec![v])?;
        Ok(Read::Transcript(self.session_id))
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
            include_snapshot: req.include_snapshot,
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
    use crate::mapping::user_data_value;
    use serde_json::json;

    fn req(id: &str, keys: &[&str]) -> proto::DeleteUserDataRequest {
        proto::DeleteUserDataRequest {
            session_id: id.into(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
            wait_for_outcome: false,
        }
    }

    fn fields(v: &[FieldViolation]) -> Vec<&str> {
        v.iter().map(|v| v.field.as_str()).collect()
    }

    #[test]
    fn accepts_a_good_request() {
        let ok = req("0071023821aec011", &["UserData1", "k-2"])
            .validate()
            .unwrap();
        assert_eq!(ok.session_id, "0071023821aec011");
        assert_eq!(
            ok.operation,
            Operation::DeleteUserData {
                keys: vec!["UserData1".into(), "k-2".into()]
            }
        );
        assert!(req(&"a".repeat(64), &["k"]).validate().is_ok());
    }

    #[test]
    fn rejects_bad_session_ids() {
        for id in ["", "a/b", "../x", "a b", "é", &"a".repeat(65)] {
            let v = req(id, &["k"]).validate().unwrap_err();
            assert_eq!(v[0].field, "session_id", "{id:?}");
            let v = proto::LeaveRequest {
                session_id: id.into(),
                wait_for_outcome: false,
            }
            .validate()
            .unwrap_err();
            assert_eq!(fields(&v), ["session_id"], "{id:?}");
            let v = proto::GetTranscriptRequest {
                session_id: id.into(),
            }
            .validate()
            .unwrap_err();
            assert_eq!(fields(&v), ["session_id"], "{id:?}");
        }
    }

    #[test]
    fn session_events_filters_and_tokens() {
        let ok = session_events(proto::SessionEventsRequest {
            session_ids: vec!["s1".into()],
            notification_types: vec![proto::NotificationType::PropertiesUpdated as i32],
            resume_token: Token { epoch: 1, seq: 2 }.encode(),
            include_snapshot: false,
        })
        .unwrap();
        assert!(ok.filter.session_ids.contains("s1"));
        assert_eq!(ok.resume, Some(Token { epoch: 1, seq: 2 }));
        let bad = session_events(proto::SessionEventsRequest {
            session_ids: vec!["a/b".into()],
            notification_types: vec![0, 99],
            resume_token: "garbage".into(),
            include_snapshot: false,
        })
        .unwrap_err();
        assert_eq!(
            fields(&bad),
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
        let v = req("s", &[]).validate().unwrap_err();
        assert_eq!(
            v,
            vec![FieldViolation::new("keys", "at least one key is required")]
        );
        let long = "k".repeat(257);
        let v = req("s", &["ok", "", &long]).validate().unwrap_err();
        assert_eq!(fields(&v), ["keys[1]", "keys[2]"]);
        let many: Vec<&str> = vec!["k"; 1001];
        assert_eq!(req("s", &many).validate().unwrap_err()[0].field, "keys");
        let empties: Vec<&str> = vec![""; 500];
        assert_eq!(
            req("s", &empties).validate().unwrap_err().len(),
            MAX_VIOLATIONS
        );
    }

    #[test]
    fn texts_are_required_and_bounded() {
        let send = |text: &str| {
            proto::SendMessageRequest {
                session_id: "s".into(),
                text: text.into(),
                wait_for_outcome: true,
            }
            .validate()
        };
        let ok = send("hello").unwrap();
        assert!(ok.wait_for_outcome);
        assert_eq!(
            ok.operation,
            Operation::SendMessage {
                text: "hello".into()
            }
        );
        // 4,096 characters, not bytes: multi-byte characters count once.
        assert!(send(&"é".repeat(MAX_TEXT_CHARS)).is_ok());
        assert_eq!(fields(&send("").unwrap_err()), ["text"]);
        assert_eq!(
            fields(&send(&"x".repeat(MAX_TEXT_CHARS + 1)).unwrap_err()),
            ["text"]
        );
        let v = proto::SetDispositionRequest {
            session_id: "s".into(),
            disposition: String::new(),
            disposition_key: "k".repeat(MAX_TEXT_CHARS + 1),
            wait_for_outcome: false,
        }
        .validate()
        .unwrap_err();
        assert_eq!(fields(&v), ["disposition", "disposition_key"]);
        let v = proto::AddCommentRequest {
            session_id: "bad id".into(),
            comment: String::new(),
            wait_for_outcome: false,
        }
        .validate()
        .unwrap_err();
        assert_eq!(fields(&v), ["session_id", "comment"]);
    }

    #[test]
    fn empty_optional_strings_are_left_out() {
        let ok = proto::AcceptRequest {
            session_id: "s".into(),
            nickname: String::new(),
            wait_for_outcome: false,
        }
        .validate()
        .unwrap();
        assert_eq!(ok.operation, Operation::Accept { nickname: None });
        let ok = proto::CompleteRequest {
            session_id: "s".into(),
            queue_name: "Q".into(),
            wait_for_outcome: false,
        }
        .validate()
        .unwrap();
        assert_eq!(
            ok.operation,
            Operation::Complete {
                queue_name: Some("Q".into())
            }
        );
    }

    #[test]
    fn urls_must_be_absolute_http() {
        let url = |u: &str| {
            proto::SendUrlRequest {
                session_id: "s".into(),
                url: u.into(),
                wait_for_outcome: false,
            }
            .validate()
        };
        assert!(url("https://example.com/help?x=1").is_ok());
        assert!(url("http://10.0.0.1:8080/").is_ok());
        for bad in [
            "",
            "example.com",
            "/relative",
            "ftp://example.com/",
            "javascript:alert(1)",
            "https://",
            "mailto:a@b.c",
        ] {
            assert_eq!(fields(&url(bad).unwrap_err()), ["url"], "{bad:?}");
        }
    }

    #[test]
    fn targets_are_required() {
        use proto::{consult_request, invite_request, transfer_request};
        let transfer = |target, text: &str| {
            proto::TransferRequest {
                session_id: "s".into(),
                target,
                text: text.into(),
                wait_for_outcome: false,
            }
            .validate()
        };
        assert_eq!(
            transfer(Some(transfer_request::Target::QueueName("Q".into())), "hi")
                .unwrap()
                .operation,
            Operation::Transfer {
                target: TransferTarget::QueueName("Q".into()),
                text: Some("hi".into())
            }
        );
        assert_eq!(fields(&transfer(None, "").unwrap_err()), ["target"]);
        assert_eq!(
            fields(
                &transfer(Some(transfer_request::Target::TargetUri(String::new())), "")
                    .unwrap_err()
            ),
            ["target"]
        );
        let consult = proto::ConsultRequest {
            session_id: "s".into(),
            target: Some(consult_request::Target::TargetPath("/agents/x".into())),
            wait_for_outcome: false,
        };
        assert_eq!(
            consult.validate().unwrap().operation,
            Operation::Consult {
                target: PartyTarget::TargetPath("/agents/x".into())
            }
        );
        let invite = proto::InviteRequest {
            session_id: "s".into(),
            target: None,
            wait_for_outcome: false,
        };
        assert_eq!(fields(&invite.validate().unwrap_err()), ["target"]);
        let invite = proto::InviteRequest {
            session_id: "s".into(),
            target: Some(invite_request::Target::TargetUri("u".into())),
            wait_for_outcome: false,
        };
        assert!(invite.validate().is_ok());
    }

    fn attach(
        entries: Vec<(&str, proto::UserDataValue)>,
    ) -> Result<ValidOperation, Vec<FieldViolation>> {
        proto::AttachUserDataRequest {
            session_id: "s".into(),
            user_data: entries
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            wait_for_outcome: false,
        }
        .validate()
    }

    #[test]
    fn user_data_goes_upstream_losslessly() {
        let src = json!({"int": 3, "str": "3", "null": null, "big": 9_007_199_254_740_993_i64,
            "nested": {"list": [1, "a", {"deep": true}], "d": 1.5}});
        let entries: Vec<_> = src
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str(), user_data_value(v)))
            .collect();
        let ok = attach(entries).unwrap();
        let Operation::AttachUserData { user_data } = ok.operation else {
            panic!("wrong operation")
        };
        assert_eq!(Value::Object(user_data), src);
    }

    #[test]
    fn user_data_is_bounded() {
        use proto::user_data_value::Kind;
        assert_eq!(fields(&attach(vec![]).unwrap_err()), ["user_data"]);
        let s = |v: &str| user_data_value(&json!(v));
        assert_eq!(
            fields(&attach(vec![("", s("x"))]).unwrap_err()),
            ["user_data"]
        );
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(
            fields(&attach(vec![(&long, s("x"))]).unwrap_err()),
            ["user_data"]
        );
        let unset = proto::UserDataValue { kind: None };
        assert_eq!(
            fields(&attach(vec![("k", unset)]).unwrap_err()),
            ["user_data[\"k\"]"]
        );
        let nested_empty_key = user_data_value(&json!({"": 1}));
        assert_eq!(
            fields(&attach(vec![("k", nested_empty_key)]).unwrap_err()),
            ["user_data[\"k\"]"]
        );
        let nan = proto::UserDataValue {
            kind: Some(Kind::DoubleValue(f64::NAN)),
        };
        assert!(attach(vec![("k", nan)]).is_err());
        let mut deep = json!(1);
        for _ in 0..MAX_USER_DATA_DEPTH {
            deep = json!([deep]);
        }
        assert!(attach(vec![("k", user_data_value(&deep))]).is_ok());
        assert!(attach(vec![("k", user_data_value(&json!([deep])))]).is_err());
        let many: Vec<(String, proto::UserDataValue)> =
            (0..=MAX_KEYS).map(|i| (i.to_string(), s("v"))).collect();
        let v = proto::UpdateUserDataRequest {
            session_id: "s".into(),
            user_data: many.into_iter().collect(),
            wait_for_outcome: false,
        }
        .validate()
        .unwrap_err();
        assert_eq!(fields(&v), ["user_data"]);
    }
}
