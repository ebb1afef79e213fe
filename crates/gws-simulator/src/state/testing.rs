//! What the state's tests share: a state with two agents, and running an operation as
//! agent "a" while checking that only the acting agent hears of it and that a refusal
//! publishes nothing.

use super::{Inbound, Publish, State};
use serde_json::Value;

pub(super) fn state() -> State {
    State::new(
        &[("a".into(), "pa".into()), ("b".into(), "pb".into())],
        true,
        "http://sim",
    )
}

/// Runs an operation as agent "a"; the reply's status code and the publishes.
pub(super) fn op(s: &mut State, id: &str, body: Value) -> (Value, Vec<Publish>) {
    let (reply, publishes) = s.operation("a", id, &body);
    assert!(
        publishes.iter().all(|p| p.agent == "a"),
        "only the acting agent hears of it"
    );
    (reply.body["statusCode"].clone(), publishes)
}

pub(super) fn code(s: &mut State, id: &str, body: Value) -> Value {
    let (code, publishes) = op(s, id, body);
    if code != 0 {
        assert!(publishes.is_empty(), "an error publishes nothing");
    }
    code
}

pub(super) fn kinds(publishes: &[Publish]) -> Vec<(String, String)> {
    publishes
        .iter()
        .map(|p| {
            let d = &p.data;
            (
                d["messageType"].as_str().unwrap_or_default().to_string(),
                d["notificationType"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

pub(super) fn inbound(s: &mut State, agent: &str) -> String {
    let (session, publish) = s.create_inbound(agent, Inbound::default()).unwrap();
    assert_eq!(publish.data["notificationType"], "StatusChange");
    assert_eq!(publish.data["smssession"]["state"], "Invited");
    assert!(publish.data.get("referenceId").is_none());
    session.id
}
