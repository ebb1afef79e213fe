//! Bayeux wire messages: building the requests a long-polling client sends and
//! parsing whatever a server answers into [`Message`] values. Parsing is total:
//! anything that is not a JSON array of objects with a string `channel` (or a lone
//! such object) is a [`ParseError`], never a panic, and unknown or mistyped optional
//! fields are simply ignored, because servers differ (CometD Java and Node, Faye, GWS).

use serde_json::{Value, json};

use super::advice::Advice;

/// The Bayeux protocol version we speak.
const VERSION: &str = "1.0";
/// The only connection type this client implements.
const LONG_POLLING: &str = "long-polling";

/// One message from a server response, with the fields a client acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub channel: String,
    /// Message id; servers echo the request id in meta replies. Numbers are accepted
    /// and turned into their decimal text, because some servers do not echo strings.
    pub id: Option<String>,
    /// `successful`; absent counts as false (only meta replies carry it).
    pub successful: bool,
    pub client_id: Option<String>,
    pub advice: Option<Advice>,
    /// The `error` text (`code:args:message`); for logs only, decisions use `advice`.
    pub error: Option<String>,
    pub data: Option<Value>,
    /// The acknowledgement extension field `ext.ack`, raw (bool, number or object).
    pub ext_ack: Option<Value>,
}

impl Message {
    /// Whether this is a `/meta/*` message (a protocol reply), as opposed to an event.
    pub fn is_meta(&self) -> bool {
        self.channel.starts_with("/meta/")
    }

    /// Parses one message object; `None` if it is not an object with a string channel.
    fn from_value(value: &Value) -> Option<Self> {
        let obj = value.as_object()?;
        let channel = obj.get("channel")?.as_str()?.to_owned();
        let id = match obj.get("id") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        Some(Self {
            channel,
            id,
            successful: obj
                .get("successful")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            client_id: obj
                .get("clientId")
                .and_then(Value::as_str)
                .map(str::to_owned),
            advice: obj.get("advice").and_then(Advice::from_value),
            error: obj.get("error").and_then(Value::as_str).map(str::to_owned),
            data: obj.get("data").cloned(),
            ext_ack: obj
                .get("ext")
                .and_then(Value::as_object)
                .and_then(|ext| ext.get("ack"))
                .cloned(),
        })
    }
}

/// Why a response body could not be understood at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("response is not JSON")]
    NotJson,
    #[error("response is neither a message array nor a message object")]
    NotMessages,
    #[error("response element {0} is not a message object with a channel")]
    BadElement(usize),
}

/// A response body: the messages understood, in order (events may precede the meta reply
/// they travel with), and the elements that were skipped, with why.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub messages: Vec<Message>,
    pub skipped: Vec<(usize, String)>,
}

/// Parses a response body: a JSON array of messages, or a lone message object.
///
/// Each element of an array is parsed on its own ([`crate::json`]: no recursion limit, no
/// stack overflow, values too deep or too large kept as raw text): an element that is not a
/// message is skipped and reported in [`Parsed::skipped`], and the others are delivered, so
/// one bad message never costs its neighbours (with the acknowledgement extension the batch
/// is still acknowledged: redelivering it would only fail again). Only a body that is not
/// JSON at all, or a lone object that is not a message, fails the whole response.
pub fn parse_response(body: &[u8]) -> Result<Parsed, ParseError> {
    use crate::json::Batch;
    let elements = match crate::json::parse_batch(body).map_err(|_| ParseError::NotJson)? {
        Batch::Elements(elements) => elements,
        Batch::Single(value) => {
            if !value.is_object() {
                return Err(ParseError::NotMessages);
            }
            return Message::from_value(&value)
                .map(|m| Parsed {
                    messages: vec![m],
                    skipped: Vec::new(),
                })
                .ok_or(ParseError::BadElement(0));
        }
    };
    let mut parsed = Parsed::default();
    for (i, element) in elements.into_iter().enumerate() {
        match element {
            Ok(value) => match Message::from_value(&value) {
                Some(m) => parsed.messages.push(m),
                None => parsed
                    .skipped
                    .push((i, "not a message object with a channel".into())),
            },
            Err(e) => parsed.skipped.push((i, e.to_string())),
        }
    }
    Ok(parsed)
}

/// Whether a handshake reply's `ext.ack` says the server supports acknowledgements:
/// CometD answers `true`, some servers `{enabled: true, ...}`.
pub fn ack_offered(ext_ack: Option<&Value>) -> bool {
    match ext_ack {
        Some(Value::Bool(b)) => *b,
        Some(Value::Object(o)) => o.get("enabled").and_then(Value::as_bool).unwrap_or(false),
        _ => false,
    }
}

/// The batch id a connect reply's `ext.ack` carries, if it is an integer.
pub fn ack_batch(ext_ack: Option<&Value>) -> Option<i64> {
    ext_ack.and_then(Value::as_i64)
}

/// `/meta/handshake`; `ext:{ack:true}` asks for the acknowledgement extension.
pub fn handshake(id: &str, use_ack: bool) -> Value {
    let mut msg = json!({
        "channel": "/meta/handshake",
        "version": VERSION,
        "minimumVersion": VERSION,
        "supportedConnectionTypes": [LONG_POLLING],
        "id": id,
    });
    if use_ack {
        insert(&mut msg, "ext", json!({ "ack": true }));
    }
    msg
}

/// `/meta/connect`; `ack` is the last batch id received when acknowledgements are on.
/// `advice_timeout_zero` asks the server to answer at once instead of parking.
pub fn connect(id: &str, client_id: &str, ack: Option<i64>, advice_timeout_zero: bool) -> Value {
    let mut msg = json!({
        "channel": "/meta/connect",
        "clientId": client_id,
        "connectionType": LONG_POLLING,
        "id": id,
    });
    if let Some(batch) = ack {
        insert(&mut msg, "ext", json!({ "ack": batch }));
    }
    if advice_timeout_zero {
        insert(&mut msg, "advice", json!({ "timeout": 0 }));
    }
    msg
}

/// `/meta/subscribe` for one channel (one message per channel keeps replies simple
/// to match by id on every server).
pub fn subscribe(id: &str, client_id: &str, channel: &str) -> Value {
    json!({
        "channel": "/meta/subscribe",
        "clientId": client_id,
        "subscription": channel,
        "id": id,
    })
}

/// `/meta/disconnect`, which also releases a parked connect on the server.
pub fn disconnect(id: &str, client_id: &str) -> Value {
    json!({
        "channel": "/meta/disconnect",
        "clientId": client_id,
        "id": id,
    })
}

fn insert(msg: &mut Value, key: &str, value: Value) {
    if let Value::Object(map) = msg {
        map.insert(key.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bayeux::advice::Reconnect;

    #[test]
    fn parses_array_with_events_before_the_meta_reply() {
        let body = br#"[{"channel":"/a","data":{"n":1}},
            {"channel":"/meta/connect","id":"7","successful":true,"ext":{"ack":3},
             "advice":{"reconnect":"retry","timeout":2000}}]"#;
        let msgs = parse_response(body).unwrap().messages;
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].channel, "/a");
        assert!(!msgs[0].is_meta());
        assert_eq!(msgs[0].data, Some(json!({"n":1})));
        assert!(msgs[1].is_meta());
        assert_eq!(msgs[1].id.as_deref(), Some("7"));
        assert!(msgs[1].successful);
        assert_eq!(ack_batch(msgs[1].ext_ack.as_ref()), Some(3));
        let advice = msgs[1].advice.clone().unwrap();
        assert_eq!(advice.reconnect, Some(Reconnect::Retry));
        assert_eq!(advice.timeout_ms, Some(2000));
    }

    #[test]
    fn accepts_a_lone_object_and_numeric_ids() {
        let msgs = parse_response(
            br#"{"channel":"/meta/handshake","id":1,"successful":true,"clientId":"c"}"#,
        )
        .unwrap()
        .messages;
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].id.as_deref(), Some("1"));
        assert_eq!(msgs[0].client_id.as_deref(), Some("c"));
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert_eq!(
            parse_response(b"<html>502</html>"),
            Err(ParseError::NotJson)
        );
        assert_eq!(parse_response(b""), Err(ParseError::NotJson));
        assert_eq!(parse_response(b"42"), Err(ParseError::NotMessages));
        assert_eq!(parse_response(b"[1,"), Err(ParseError::NotJson));
        assert_eq!(
            parse_response(br#"{"data":1}"#),
            Err(ParseError::BadElement(0))
        );
    }

    #[test]
    fn one_bad_message_never_costs_its_neighbours() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let body = format!(
            r#"[{{"channel":"/a","data":{{"n":1}}}}, 1, {{"channel":5}},
                {{"channel":"/b","data":{{"deep":{deep}}}}}, ["\ud800"],
                {{"channel":"/meta/connect","successful":true,"ext":{{"ack":4}}}}]"#
        );
        let parsed = parse_response(body.as_bytes()).unwrap();
        let channels: Vec<_> = parsed.messages.iter().map(|m| m.channel.as_str()).collect();
        assert_eq!(channels, ["/a", "/b", "/meta/connect"]);
        let skipped: Vec<usize> = parsed.skipped.iter().map(|(i, _)| *i).collect();
        assert_eq!(skipped, [1, 2, 4]);
        // The deep message keeps its data, exactly, beyond the parse depth as raw text.
        let data = parsed.messages[1].data.as_ref().unwrap();
        assert_eq!(crate::json::to_text(&data["deep"]), deep);
    }

    #[test]
    fn mistyped_optional_fields_are_ignored() {
        let msgs = parse_response(
            br#"[{"channel":"/meta/connect","successful":"yes","clientId":3,"advice":"x","ext":7,"id":null}]"#,
        )
        .unwrap()
        .messages;
        let m = &msgs[0];
        assert!(!m.successful);
        assert_eq!(m.client_id, None);
        assert_eq!(m.advice, None);
        assert_eq!(m.ext_ack, None);
        assert_eq!(m.id, None);
    }

    #[test]
    fn ack_offer_forms() {
        assert!(ack_offered(Some(&json!(true))));
        assert!(ack_offered(Some(&json!({"enabled":true,"batch":0}))));
        assert!(!ack_offered(Some(&json!(false))));
        assert!(!ack_offered(Some(&json!({"enabled":false}))));
        assert!(!ack_offered(Some(&json!(1))));
        assert!(!ack_offered(None));
        assert_eq!(ack_batch(Some(&json!(true))), None);
    }

    #[test]
    fn builds_requests() {
        let hs = handshake("1", true);
        assert_eq!(hs["channel"], "/meta/handshake");
        assert_eq!(hs["supportedConnectionTypes"], json!(["long-polling"]));
        assert_eq!(hs["ext"], json!({"ack": true}));
        assert!(handshake("1", false).get("ext").is_none());

        let cn = connect("2", "cid", Some(0), true);
        assert_eq!(cn["clientId"], "cid");
        assert_eq!(cn["connectionType"], "long-polling");
        assert_eq!(cn["ext"], json!({"ack": 0}));
        assert_eq!(cn["advice"], json!({"timeout": 0}));
        let cn = connect("3", "cid", None, false);
        assert!(cn.get("ext").is_none() && cn.get("advice").is_none());

        assert_eq!(subscribe("4", "cid", "/x")["subscription"], "/x");
        assert_eq!(disconnect("5", "cid")["channel"], "/meta/disconnect");
    }
}
