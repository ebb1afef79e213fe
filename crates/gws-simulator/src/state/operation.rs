//! The operation step behind `POST /api/v2/me/smssessions/{id}`: the raw body is recorded,
//! read as an [`Operation`] (the very type the gateway serializes), checked against GWS's
//! status codes, run on the session (`session.rs` holds the lifecycle) and answered with a
//! `referenceId` plus the notifications to publish to the acting agent. On any refusal
//! nothing changes and nothing is published.

use super::super::session::Refused;
use super::store::not_found;
use super::{Publish, Reply, State};
use gws_model::operation::{Operation, PartyTarget, TransferTarget};
use serde::Deserialize;
use serde_json::{Value, json};

/// Bound on recorded POST bodies (all agents together); the oldest is forgotten beyond it.
pub const MAX_RECORDED_REQUESTS: usize = 1_000;

/// A POST body as received (after authentication and CSRF), so tests can assert exactly
/// what the gateway sent. A body that is not JSON is kept as a JSON string of its text.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RecordedRequest {
    #[serde(skip)]
    pub agent: String,
    pub session_id: String,
    pub body: Value,
    /// The reply's body, so a test can learn what it was answered (e.g. its referenceId).
    pub reply: Value,
    /// The referenceId the operation's notifications carry, when the reply left it out
    /// (`reply_reference_ids` off): so a test can still name the operation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_id: Option<i64>,
}

impl State {
    /// `POST /api/v2/me/smssessions/{id}` as received: records the raw body, then runs it
    /// as [`State::operation`] (a body that is not JSON is a validation error, code 10).
    /// The reply loses its `referenceId` when replies are to carry none (the notifications
    /// keep theirs); the recorded request still names it.
    pub fn receive(&mut self, agent: &str, id: &str, raw: &[u8]) -> (Reply, Vec<Publish>) {
        let body = serde_json::from_slice::<Value>(raw);
        if self.requests.len() >= MAX_RECORDED_REQUESTS {
            self.requests.pop_front();
        }
        self.requests.push_back(RecordedRequest {
            agent: agent.to_string(),
            session_id: id.to_string(),
            body: match &body {
                Ok(body) => body.clone(),
                Err(_) => Value::String(String::from_utf8_lossy(raw).into_owned()),
            },
            reply: Value::Null,
            reference_id: None,
        });
        let (mut reply, publishes) = match body {
            Ok(body) => self.operation(agent, id, &body),
            Err(_) => (
                Reply::error(400, 10, "request body is not JSON"),
                Vec::new(),
            ),
        };
        let withheld = if self.reply_reference_ids && !self.faults.reply_without_reference_id {
            None
        } else {
            reply
                .body
                .as_object_mut()
                .and_then(|body| body.remove("referenceId"))
                .and_then(|r| r.as_i64())
        };
        if let Some(recorded) = self.requests.back_mut() {
            recorded.reply = reply.body.clone();
            recorded.reference_id = withheld;
        }
        (reply, publishes)
    }

    /// The POST bodies `agent` sent that are still recorded, oldest first.
    pub fn requests(&self, agent: &str) -> Vec<&RecordedRequest> {
        self.requests.iter().filter(|r| r.agent == agent).collect()
    }

    /// Runs an operation body on one of `agent`'s sessions: the reply, and the
    /// notifications to publish (in order; none unless the reply is `statusCode` 0).
    /// Checked in order: the body (1 missing parameter or unknown operation, 10 wrong type
    /// or empty value), the session (6), the session's state (2). On error nothing changed.
    pub fn operation(&mut self, agent: &str, id: &str, body: &Value) -> (Reply, Vec<Publish>) {
        match self.try_operation(agent, id, body) {
            Ok(done) => done,
            Err(reply) => (reply, Vec::new()),
        }
    }

    fn try_operation(
        &mut self,
        agent: &str,
        id: &str,
        body: &Value,
    ) -> Result<(Reply, Vec<Publish>), Reply> {
        let op = parse_operation(body)?;
        let name = op.name();
        let session = self
            .sessions
            .get_mut(agent)
            .and_then(|list| list.iter_mut().find(|s| s.id == id))
            .ok_or_else(|| not_found(id))?;
        let effects = session.apply(agent, op).map_err(|refused| match refused {
            Refused::NotValidInState => Reply::error(
                400,
                2,
                format!(
                    "Operation '{name}' is not valid in the current state '{}'",
                    session.state.name()
                ),
            ),
            Refused::TooManyParticipants => Reply::error(
                400,
                2,
                format!("Operation '{name}' is not valid: the session has too many participants"),
            ),
        })?;
        self.stats.operations_accepted += 1;
        let reference_id = self.next_reference_id;
        self.next_reference_id += 1;
        let publishes = effects
            .iter()
            .map(|effect| Publish {
                agent: agent.to_string(),
                data: session.notification(effect, Some(reference_id)),
            })
            .collect();
        Ok((
            Reply::ok(json!({ "statusCode": 0, "referenceId": reference_id })),
            publishes,
        ))
    }
}

fn missing(field: &str) -> Reply {
    Reply::error(400, 1, format!("Required parameter '{field}' is missing"))
}

fn invalid(message: impl Into<String>) -> Reply {
    Reply::error(400, 10, message)
}

/// The body as an [`Operation`], or the GWS error for it.
fn parse_operation(body: &Value) -> Result<Operation, Reply> {
    let Some(object) = body.as_object() else {
        return Err(invalid("the request body must be a JSON object"));
    };
    let name = match object.get("operationName") {
        None => return Err(missing("operationName")),
        Some(Value::String(name)) => name,
        Some(_) => return Err(invalid("'operationName' must be a string")),
    };
    // Echoed in messages: bounded, whatever the client sent.
    let name: String = name.chars().take(64).collect();
    let op = Operation::deserialize(body).map_err(|e| deserialize_error(&name, &e))?;
    validate(&op)?;
    Ok(op)
}

/// Sorts serde's complaint into GWS's codes. serde words these through its `de::Error`
/// constructors (`unknown_variant`, `missing_field`, and the flattened-enum miss), which
/// are stable; anything else (a wrong type or value) is a validation error.
fn deserialize_error(name: &str, e: &serde_json::Error) -> Reply {
    let text = e.to_string();
    if text.starts_with("unknown variant") {
        Reply::error(400, 1, format!("Unknown operation '{name}'"))
    } else if let Some(field) = text
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        missing(field)
    } else if text.starts_with("no variant of enum") {
        Reply::error(
            400,
            1,
            format!("Required target parameter of '{name}' is missing"),
        )
    } else {
        invalid(format!("Invalid parameter value for operation '{name}'"))
    }
}

/// What serde cannot say: required strings, keys and user data must not be empty, and
/// optional strings, when present, neither.
fn validate(op: &Operation) -> Result<(), Reply> {
    let mut strings: Vec<(&str, &str)> = Vec::new();
    match op {
        Operation::AttachUserData { user_data } | Operation::UpdateUserData { user_data } => {
            if user_data.is_empty() {
                return Err(invalid("'userData' must be a non-empty object"));
            }
        }
        Operation::DeleteUserData { keys } => {
            if keys.is_empty() {
                return Err(invalid(
                    "'keys' must be a non-empty array of non-empty strings",
                ));
            }
            strings.extend(keys.iter().map(|k| ("keys", k.as_str())));
        }
        Operation::SetDisposition {
            disposition,
            disposition_key,
        } => {
            strings.push(("disposition", disposition));
            strings.extend(disposition_key.as_deref().map(|k| ("dispositionKey", k)));
        }
        Operation::AddComment { comment } => strings.push(("comment", comment)),
        Operation::Accept { nickname } => {
            strings.extend(nickname.as_deref().map(|n| ("nickname", n)));
        }
        Operation::Complete { queue_name } => {
            strings.extend(queue_name.as_deref().map(|q| ("queueName", q)));
        }
        Operation::SendMessage { text } | Operation::SendToAgents { text } => {
            strings.push(("text", text));
        }
        Operation::SendUrl { url } => strings.push(("url", url)),
        Operation::Transfer { target, text } => {
            strings.push(match target {
                TransferTarget::TargetUri(t) => ("targetUri", t),
                TransferTarget::QueueName(q) => ("queueName", q),
            });
            strings.extend(text.as_deref().map(|t| ("text", t)));
        }
        Operation::Consult { target } | Operation::Invite { target } => {
            strings.push(match target {
                PartyTarget::TargetUri(t) => ("targetUri", t),
                PartyTarget::TargetPath(p) => ("targetPath", p),
            });
        }
        Operation::Reject
        | Operation::Leave
        | Operation::SendStartTypingNotification
        | Operation::SendStopTypingNotification => {}
    }
    match strings.iter().find(|(_, value)| value.is_empty()) {
        Some((field, _)) => Err(invalid(format!("'{field}' must not be empty"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::seed;
    use crate::session::ParticipantType;
    use crate::state::Faults;
    use proptest::prelude::*;

    #[test]
    fn delete_user_data_changes_only_that_agents_session() {
        let mut s = state();
        let body = json!({"operationName": "DeleteUserData", "keys": ["UserData1"]});
        let (reply, publishes) = s.operation("a", seed::SEED_SESSION_ID, &body);
        assert_eq!(reply.body["statusCode"], 0);
        let [publish] = publishes.as_slice() else {
            panic!("{publishes:?}")
        };
        assert_eq!(publish.agent, "a");
        assert_eq!(publish.data["notificationType"], "PropertiesUpdated");
        assert_eq!(publish.data["referenceId"], reply.body["referenceId"]);
        let user_data = &publish.data["smssession"]["userData"];
        assert!(user_data.get("UserData1").is_none());
        assert_eq!(user_data["UserData2"], 123456789);
        assert_eq!(user_data["RRequestedSkills"], Value::Null);
        assert_eq!(user_data["IdentifyCreateContact"], "3");
        let user_data = |s: &State, agent| {
            s.session(agent, seed::SEED_SESSION_ID)
                .unwrap()
                .user_data
                .clone()
        };
        assert!(user_data(&s, "a").get("UserData1").is_none());
        assert!(user_data(&s, "b").get("UserData1").is_some());
        assert_eq!(s.stats.operations_accepted, 1);
    }

    #[test]
    fn status_codes() {
        let mut s = state();
        let seed = seed::SEED_SESSION_ID;
        let cases = [
            (
                "nope",
                json!({"operationName": "DeleteUserData", "keys": ["k"]}),
                6,
            ),
            (seed, json!({"keys": ["k"]}), 1),
            (seed, json!({"operationName": "DeleteUserData"}), 1),
            (seed, json!({"operationName": "SendMessage"}), 1),
            (seed, json!({"operationName": "Transfer"}), 1),
            (seed, json!({"operationName": "Dance"}), 1),
            (seed, json!({"operationName": "SetInFocus"}), 1),
            (seed, json!({"operationName": 5}), 10),
            (seed, json!([1, 2]), 10),
            (
                seed,
                json!({"operationName": "DeleteUserData", "keys": []}),
                10,
            ),
            (
                seed,
                json!({"operationName": "DeleteUserData", "keys": ["a", ""]}),
                10,
            ),
            (
                seed,
                json!({"operationName": "DeleteUserData", "keys": [1]}),
                10,
            ),
            (
                seed,
                json!({"operationName": "UpdateUserData", "userData": 5}),
                10,
            ),
            (
                seed,
                json!({"operationName": "UpdateUserData", "userData": {}}),
                10,
            ),
            (
                seed,
                json!({"operationName": "SendMessage", "text": ""}),
                10,
            ),
            (seed, json!({"operationName": "SendUrl", "url": 3}), 10),
            (
                seed,
                json!({"operationName": "Invite", "targetUri": ""}),
                10,
            ),
            (seed, json!({"operationName": "Accept", "nickname": ""}), 10),
            (seed, json!({"operationName": "Accept"}), 2),
            (seed, json!({"operationName": "Reject"}), 2),
            (
                seed::COMPLETED_SESSION_ID,
                json!({"operationName": "DeleteUserData", "keys": ["k"]}),
                2,
            ),
        ];
        for (id, body, want) in cases {
            assert_eq!(code(&mut s, id, body.clone()), want, "{id} {body}");
        }
        assert_eq!(s.stats.operations_accepted, 0);
        let (reply, _) = s.operation(
            "a",
            seed::COMPLETED_SESSION_ID,
            &json!({"operationName": "SendMessage", "text": "x"}),
        );
        assert_eq!(reply.http_status, 400);
        assert_eq!(
            reply.body["statusMessage"],
            "Operation 'SendMessage' is not valid in the current state 'Completed'"
        );
        let (reply, _) = s.operation("a", "nope", &json!({"operationName": "Leave"}));
        assert_eq!(reply.http_status, 404);
    }

    #[test]
    fn user_data_stays_lossless_and_each_change_publishes_the_whole_session() {
        let mut s = state();
        let id = seed::SEED_SESSION_ID;
        let attach = json!({"operationName": "AttachUserData", "userData": {"n": 3, "s": "3", "z": null, "o": {"x": [1]}}});
        let (c, p) = op(&mut s, id, attach);
        assert_eq!(c, 0);
        let ud = &p[0].data["smssession"]["userData"];
        assert_eq!(
            (&ud["n"], &ud["s"], &ud["z"], &ud["o"]),
            (&json!(3), &json!("3"), &Value::Null, &json!({"x": [1]}))
        );
        let steps = [
            json!({"operationName": "UpdateUserData", "userData": {"n": "4"}}),
            json!({"operationName": "SetDisposition", "disposition": "Sold"}),
            json!({"operationName": "SetDisposition", "disposition": "x", "dispositionKey": "DISP_KEY"}),
            json!({"operationName": "AddComment", "comment": "nice"}),
            json!({"operationName": "DeleteUserData", "keys": ["s", "absent"]}),
        ];
        for body in steps {
            let (c, p) = op(&mut s, id, body.clone());
            assert_eq!(c, 0, "{body}");
            assert_eq!(
                kinds(&p),
                [(
                    "SMSsessionStateChangeMessage".into(),
                    "PropertiesUpdated".into()
                )],
                "{body}"
            );
            assert_eq!(p[0].data["smssession"]["state"], "Chatting");
        }
        let ud = &s.session("a", id).unwrap().user_data;
        assert_eq!(ud["n"], "4");
        assert_eq!(ud["DispositionCode"], "Sold");
        assert_eq!(ud["DISP_KEY"], "x");
        assert_eq!(ud["Comment"], "nice");
        assert!(ud.get("s").is_none());
    }

    #[test]
    fn reference_ids_increase_and_tag_every_notification_of_the_operation() {
        let mut s = state();
        let id = inbound(&mut s, "a");
        let mut last = 0;
        for body in [
            json!({"operationName": "Accept"}),
            json!({"operationName": "SendMessage", "text": "hi"}),
            json!({"operationName": "Consult", "targetUri": "http://gws/api/v2/users/sup"}),
        ] {
            let (reply, publishes) = s.operation("a", &id, &body);
            let r = reply.body["referenceId"].as_i64().unwrap();
            assert!(r > last);
            last = r;
            assert!(!publishes.is_empty());
            assert!(publishes.iter().all(|p| p.data["referenceId"] == r));
        }
    }

    #[test]
    fn the_inbound_flow_lives_the_whole_lifecycle() {
        let mut s = state();
        let id = inbound(&mut s, "a");
        assert_eq!(id.len(), 16);
        assert!(s.session("b", &id).is_none(), "another agent's session");
        let session = s.session("a", &id).unwrap();
        assert_eq!(session.participants[0].kind, ParticipantType::Customer);
        assert_eq!(session.messages()[0].text, "Hi, I need help");
        assert_eq!(
            code(
                &mut s,
                &id,
                json!({"operationName": "SendMessage", "text": "x"})
            ),
            2,
            "not before Accept"
        );

        let (c, p) = op(
            &mut s,
            &id,
            json!({"operationName": "Accept", "nickname": "Ann"}),
        );
        assert_eq!(c, 0);
        let state_change = (
            "SMSsessionStateChangeMessage".to_string(),
            "StatusChange".to_string(),
        );
        assert_eq!(
            kinds(&p),
            [
                state_change.clone(),
                (
                    "SMSsessionStateChangeMessage".into(),
                    "ParticipantsUpdated".into()
                ),
                ("MessageLogUpdated".into(), "NewMessages".into()),
            ]
        );
        assert_eq!(p[0].data["smssession"]["state"], "Chatting");
        assert_eq!(
            p[1].data["smssession"]["participants"][1]["nickname"],
            "Ann"
        );
        assert_eq!(p[2].data["messages"][0]["type"], "ParticipantJoined");
        assert_eq!(p[2].data["messages"][0]["from"]["nickname"], "Ann");

        let (c, p) = op(
            &mut s,
            &id,
            json!({"operationName": "SendMessage", "text": "Hello"}),
        );
        assert_eq!(c, 0);
        assert_eq!(
            kinds(&p),
            [("MessageLogUpdated".into(), "NewMessages".into())]
        );
        let message = &p[0].data["messages"][0];
        assert_eq!(
            p[0].data["smssessionUri"],
            format!("http://sim/api/v2/smssessions/{id}")
        );
        assert_eq!(
            (&message["type"], &message["visibility"], &message["text"]),
            (&json!("Text"), &json!("All"), &json!("Hello"))
        );
        assert_eq!(message["from"]["type"], "Agent");

        let (c, p) = op(
            &mut s,
            &id,
            json!({"operationName": "SendUrl", "url": "https://x.example/"}),
        );
        assert_eq!(c, 0);
        assert_eq!(p[0].data["messages"][0]["type"], "PushUrl");
        assert_eq!(p[0].data["messages"][0]["url"], "https://x.example/");

        let (c, p) = op(&mut s, &id, json!({"operationName": "Complete"}));
        assert_eq!(c, 0);
        assert_eq!(kinds(&p), [state_change]);
        assert_eq!(p[0].data["smssession"]["state"], "Completed");
        assert_eq!(p[0].data["smssession"]["capabilities"], json!([]));
        assert_eq!(
            code(
                &mut s,
                &id,
                json!({"operationName": "SendMessage", "text": "x"})
            ),
            2
        );

        let transcript = s.messages("a", &id).body;
        let messages = transcript["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 4, "{transcript}");
        let indices: Vec<i64> = messages
            .iter()
            .map(|m| m["index"].as_i64().unwrap())
            .collect();
        assert!(indices.windows(2).all(|w| w[0] < w[1]), "{indices:?}");
        let times: Vec<i64> = messages
            .iter()
            .map(|m| m["timestampSeconds"].as_i64().unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    }

    #[test]
    fn reject_leave_and_transfer_change_the_status() {
        let mut s = state();
        let id = inbound(&mut s, "a");
        let (c, p) = op(&mut s, &id, json!({"operationName": "Reject"}));
        assert_eq!(c, 0);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].data["smssession"]["state"], "Completed");

        let seed = seed::SEED_SESSION_ID;
        let (c, p) = op(&mut s, seed, json!({"operationName": "Leave"}));
        assert_eq!(c, 0);
        assert_eq!(p[0].data["smssession"]["state"], "LeftChat");
        assert_eq!(p[1].data["messages"][0]["type"], "ParticipantLeft");
        assert_eq!(p[1].data["messages"][0]["from"]["nickname"], "TestName");
        assert_eq!(
            code(
                &mut s,
                seed,
                json!({"operationName": "SetDisposition", "disposition": "ok"})
            ),
            0
        );
        assert_eq!(code(&mut s, seed, json!({"operationName": "Leave"})), 2);
        assert_eq!(
            code(
                &mut s,
                seed,
                json!({"operationName": "Complete", "queueName": "Q"})
            ),
            0
        );

        let sample = seed::SAMPLE_SESSION_ID;
        let (c, p) = op(
            &mut s,
            sample,
            json!({"operationName": "Transfer", "queueName": "Q", "text": "over to you"}),
        );
        assert_eq!(c, 0);
        assert_eq!(p[0].data["notificationType"], "StatusChange");
        assert_eq!(p[0].data["smssession"]["state"], "Completed");
    }

    #[test]
    fn consult_and_invite_add_a_participant() {
        let mut s = state();
        let id = seed::SEED_SESSION_ID;
        let (c, p) = op(
            &mut s,
            id,
            json!({"operationName": "Invite", "targetPath": "/users/sup2"}),
        );
        assert_eq!(c, 0);
        assert_eq!(p[0].data["notificationType"], "ParticipantsUpdated");
        let participants = p[0].data["smssession"]["participants"].as_array().unwrap();
        assert_eq!(participants.len(), 3);
        assert_eq!(participants[2]["nickname"], "sup2");
        assert_eq!(participants[2]["type"], "Agent");
    }

    #[test]
    fn received_bodies_are_recorded_per_agent_and_bounded() {
        let mut s = state();
        s.receive("b", "x", b"not json");
        let body = br#"{"operationName":"DeleteUserData","keys":["UserData1"]}"#;
        let (reply, _) = s.receive("a", seed::SEED_SESSION_ID, body);
        assert_eq!(reply.body["statusCode"], 0);
        let a = s.requests("a");
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].session_id, seed::SEED_SESSION_ID);
        assert_eq!(
            a[0].body,
            json!({"operationName": "DeleteUserData", "keys": ["UserData1"]})
        );
        assert_eq!(s.requests("b")[0].body, "not json");
        for i in 0..MAX_RECORDED_REQUESTS + 10 {
            s.receive("a", &format!("s{i}"), b"{}");
        }
        let a = s.requests("a");
        assert_eq!(a.len() + s.requests("b").len(), MAX_RECORDED_REQUESTS);
        assert_eq!(
            a.last().unwrap().session_id,
            format!("s{}", MAX_RECORDED_REQUESTS + 9)
        );
        assert!(s.requests("b").is_empty(), "the oldest went first");
    }

    #[test]
    fn replies_can_leave_the_reference_id_to_the_notifications() {
        let mut s = state();
        let body = br#"{"operationName":"AddComment","comment":"c"}"#;
        let (reply, publishes) = s.receive("a", seed::SEED_SESSION_ID, body);
        let first = reply.body["referenceId"].as_i64().unwrap();
        assert_eq!(s.requests("a")[0].reference_id, None, "the reply said it");
        s.faults.reply_without_reference_id = true;
        let (reply, publishes2) = s.receive("a", seed::SEED_SESSION_ID, body);
        assert_eq!(
            reply.body,
            json!({"statusCode": 0}),
            "the seed page's reply"
        );
        assert_eq!(publishes2[0].data["referenceId"], first + 1);
        assert_eq!(s.requests("a")[1].reference_id, Some(first + 1));
        assert_eq!(s.requests("a")[1].reply, json!({"statusCode": 0}));
        s.faults = Faults::default();
        s.reply_reference_ids = false;
        let (reply, _) = s.receive("a", seed::SEED_SESSION_ID, body);
        assert!(reply.body.get("referenceId").is_none());
        // A refusal has no referenceId to leave out.
        let (reply, _) = s.receive("a", "nope", body);
        assert_eq!(reply.body["statusCode"], 6);
        assert_eq!(s.requests("a")[3].reference_id, None);
        assert_eq!(publishes[0].data["referenceId"], first);
    }

    #[test]
    fn missing_parameters_are_named() {
        let mut s = state();
        let id = seed::SEED_SESSION_ID;
        let message = |s: &mut State, body: Value| {
            s.operation("a", id, &body).0.body["statusMessage"].clone()
        };
        assert_eq!(
            message(&mut s, json!({"operationName": "DeleteUserData"})),
            "Required parameter 'keys' is missing"
        );
        assert_eq!(
            message(&mut s, json!({})),
            "Required parameter 'operationName' is missing"
        );
        assert_eq!(
            message(&mut s, json!({"operationName": "Dance"})),
            "Unknown operation 'Dance'"
        );
    }

    const FIELDS: [&str; 12] = [
        "operationName",
        "keys",
        "userData",
        "text",
        "url",
        "targetUri",
        "queueName",
        "targetPath",
        "nickname",
        "disposition",
        "dispositionKey",
        "comment",
    ];

    fn any_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            Just(json!(0)),
            Just(json!(true)),
            Just(json!("")),
            Just(json!("x")),
            Just(json!("Accept")),
            Just(json!("SendMessage")),
            Just(json!("DeleteUserData")),
            Just(json!([])),
            Just(json!([""])),
            Just(json!(["k", 1])),
            Just(json!({})),
            Just(json!({"a": 1})),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever arrives, the answer is a GWS status code, and only success publishes.
        #[test]
        fn any_body_gets_a_status_code_and_never_panics(
            fields in proptest::collection::vec((proptest::sample::select(&FIELDS[..]), any_value()), 0..5),
            raw in proptest::collection::vec(any::<u8>(), 0..32),
            session in proptest::sample::select(&[seed::SEED_SESSION_ID, seed::COMPLETED_SESSION_ID, "nope"][..]),
        ) {
            let mut s = state();
            let body = Value::Object(fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
            for (reply, publishes) in [s.operation("a", session, &body), s.receive("a", session, &raw)] {
                let code = reply.body["statusCode"].as_i64().unwrap();
                prop_assert!([0, 1, 2, 6, 10].contains(&code), "{}", reply.body);
                prop_assert_eq!(code == 0, !publishes.is_empty(), "{}", reply.body);
            }
        }
    }
}
