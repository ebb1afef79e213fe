//! The built-in command-line client: try the gateway without installing grpcurl. Every RPC
//! has a command (`client accept --session S`, `client send-message --session S --text T`,
//! `client sessions`, `client transcript --session S`, `client events`, ...). Operations
//! print what GWS answered, reads print JSON, `events` prints the stream as it arrives,
//! one JSON line per item; errors print the gRPC code and details.

pub mod args;

use crate::mapping::{user_data_map_to_json, user_data_value};
use crate::proto::session_events_response::Event;
use crate::proto::sms_session_service_client::SmsSessionServiceClient;
use crate::proto::*;
use crate::upstream::{Credential, CredentialError, Operation, PartyTarget, TransferTarget};
use args::{ClientArgs, ClientCall, GatewayAddr, OnSession};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;
use tonic::Request;
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

/// Longest wait for the TCP connection to the gateway: an address that drops packets fails
/// with a message instead of waiting for the operating system's limit (minutes).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(args: ClientArgs) -> ExitCode {
    match call(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why a client command failed, each worded as what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--user and --password go together (or GWS_USER and GWS_PASSWORD): give both")]
    HalfCredential,
    #[error("--user/--password: {0}")]
    Credential(#[from] CredentialError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The gateway (or the connection to it) answered with a gRPC status.
    #[error("{}", describe(.status, *.credential_sent))]
    Call {
        status: tonic::Status,
        credential_sent: bool,
    },
}

/// What failed when connecting to the gateway, from the error chain's I/O error.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection refused: is the gateway running at {addr}?")]
    Refused { addr: GatewayAddr },
    #[error("no connection to {addr} within {}s: is the address right and reachable?", CONNECT_TIMEOUT.as_secs())]
    TimedOut { addr: GatewayAddr },
    #[error("cannot connect to {addr}: {cause}")]
    Other { addr: GatewayAddr, cause: String },
}

impl ConnectError {
    /// Classifies a connection failure by the I/O error somewhere in its chain.
    fn new(addr: GatewayAddr, error: &(dyn std::error::Error + 'static)) -> Self {
        let io = chain(error).find_map(|e| e.downcast_ref::<std::io::Error>());
        match io.map(|e| e.kind()) {
            Some(std::io::ErrorKind::ConnectionRefused) => Self::Refused { addr },
            Some(std::io::ErrorKind::TimedOut) => Self::TimedOut { addr },
            _ => Self::Other {
                addr,
                cause: chain_text(error),
            },
        }
    }
}

/// An error and its sources, outermost first.
fn chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |e| e.source())
}

/// "transport error: tcp connect error: Connection refused": each source once (libraries often
/// repeat their source in their own message).
fn chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    for e in chain(error) {
        let part = e.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

async fn call(args: ClientArgs) -> Result<(), ClientError> {
    let credential = match (&args.user, &args.password) {
        (Some(user), Some(password)) => Some(Credential::new(user.clone(), password.clone())?),
        (None, None) => None,
        _ => return Err(ClientError::HalfCredential),
    };
    let channel = Endpoint::from(args.addr.uri().clone())
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|e| ConnectError::new(args.addr.clone(), &e))?;
    let mut call = Caller {
        client: SmsSessionServiceClient::new(channel),
        credential,
    };
    call.run(args.call).await
}

/// One connected client and the caller's credentials.
struct Caller {
    client: SmsSessionServiceClient<Channel>,
    credential: Option<Credential>,
}

/// Sends one operation RPC and prints what GWS said: `$method` is the client method,
/// `$on` the [`OnSession`], `$message` the request message.
macro_rules! operation {
    ($self:ident, $method:ident, $on:expr, $message:expr) => {{
        let on: OnSession = $on;
        let request = $self.request($message, on.timeout);
        let response = $self
            .client
            .$method(request)
            .await
            .map_err($self.failed())?
            .into_inner();
        print_accepted(
            &label(stringify!($method)),
            &on.session,
            response.reference_id,
            &response.reference_id_json,
            response.outcome.as_ref(),
        );
        Ok(())
    }};
}

impl Caller {
    fn request<T>(&self, message: T, timeout: Option<Duration>) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(c) = &self.credential
            && let Ok(v) = c.authorization().parse()
        {
            request.metadata_mut().insert("authorization", v);
        }
        if let Some(t) = timeout {
            request.set_timeout(t);
        }
        request
    }

    /// Turns a status into the command's error; without credentials sent, an
    /// UNAUTHENTICATED answer gets a hint naming the flags.
    fn failed(&self) -> impl Fn(tonic::Status) -> ClientError + use<> {
        let credential_sent = self.credential.is_some();
        move |status| ClientError::Call {
            status,
            credential_sent,
        }
    }

    /// Sends `operation` on `on.session` as its RPC: one arm per operation and no catch-all,
    /// so a new [`Operation`] variant does not compile until the client can send it.
    async fn operate(&mut self, on: OnSession, operation: Operation) -> Result<(), ClientError> {
        let (session_id, wait_for_outcome) = (on.session.clone(), on.wait);
        match operation {
            Operation::AttachUserData { user_data: data } => operation!(
                self,
                attach_user_data,
                on,
                AttachUserDataRequest {
                    session_id,
                    user_data: user_data(&data),
                    wait_for_outcome
                }
            ),
            Operation::UpdateUserData { user_data: data } => operation!(
                self,
                update_user_data,
                on,
                UpdateUserDataRequest {
                    session_id,
                    user_data: user_data(&data),
                    wait_for_outcome
                }
            ),
            Operation::DeleteUserData { keys } => operation!(
                self,
                delete_user_data,
                on,
                DeleteUserDataRequest {
                    session_id,
                    keys,
                    wait_for_outcome
                }
            ),
            Operation::SetDisposition {
                disposition,
                disposition_key,
            } => operation!(
                self,
                set_disposition,
                on,
                SetDispositionRequest {
                    session_id,
                    disposition,
                    disposition_key: disposition_key.unwrap_or_default(),
                    wait_for_outcome
                }
            ),
            Operation::AddComment { comment } => operation!(
                self,
                add_comment,
                on,
                AddCommentRequest {
                    session_id,
                    comment,
                    wait_for_outcome
                }
            ),
            Operation::Accept { nickname } => operation!(
                self,
                accept,
                on,
                AcceptRequest {
                    session_id,
                    nickname: nickname.unwrap_or_default(),
                    wait_for_outcome
                }
            ),
            Operation::Reject => operation!(
                self,
                reject,
                on,
                RejectRequest {
                    session_id,
                    wait_for_outcome
                }
            ),
            Operation::Complete { queue_name } => operation!(
                self,
                complete,
                on,
                CompleteRequest {
                    session_id,
                    queue_name: queue_name.unwrap_or_default(),
                    wait_for_outcome
                }
            ),
            Operation::Leave => operation!(
                self,
                leave,
                on,
                LeaveRequest {
                    session_id,
                    wait_for_outcome
                }
            ),
            Operation::SendMessage { text } => operation!(
                self,
                send_message,
                on,
                SendMessageRequest {
                    session_id,
                    text,
                    wait_for_outcome
                }
            ),
            Operation::SendToAgents { text } => operation!(
                self,
                send_to_agents,
                on,
                SendToAgentsRequest {
                    session_id,
                    text,
                    wait_for_outcome
                }
            ),
            Operation::SendUrl { url } => operation!(
                self,
                send_url,
                on,
                SendUrlRequest {
                    session_id,
                    url,
                    wait_for_outcome
                }
            ),
            Operation::SendStartTypingNotification => operation!(
                self,
                send_start_typing_notification,
                on,
                SendStartTypingNotificationRequest {
                    session_id,
                    wait_for_outcome
                }
            ),
            Operation::SendStopTypingNotification => operation!(
                self,
                send_stop_typing_notification,
                on,
                SendStopTypingNotificationRequest {
                    session_id,
                    wait_for_outcome
                }
            ),
            Operation::Transfer { target, text } => {
                let target = match target {
                    TransferTarget::TargetUri(uri) => transfer_request::Target::TargetUri(uri),
                    TransferTarget::QueueName(queue) => transfer_request::Target::QueueName(queue),
                };
                operation!(
                    self,
                    transfer,
                    on,
                    TransferRequest {
                        session_id,
                        target: Some(target),
                        text: text.unwrap_or_default(),
                        wait_for_outcome
                    }
                )
            }
            Operation::Consult { target } => {
                let target = match target {
                    PartyTarget::TargetUri(uri) => consult_request::Target::TargetUri(uri),
                    PartyTarget::TargetPath(path) => consult_request::Target::TargetPath(path),
                };
                operation!(
                    self,
                    consult,
                    on,
                    ConsultRequest {
                        session_id,
                        target: Some(target),
                        wait_for_outcome
                    }
                )
            }
            Operation::Invite { target } => {
                let target = match target {
                    PartyTarget::TargetUri(uri) => invite_request::Target::TargetUri(uri),
                    PartyTarget::TargetPath(path) => invite_request::Target::TargetPath(path),
                };
                operation!(
                    self,
                    invite,
                    on,
                    InviteRequest {
                        session_id,
                        target: Some(target),
                        wait_for_outcome
                    }
                )
            }
        }
    }

    async fn run(&mut self, call: ClientCall) -> Result<(), ClientError> {
        use ClientCall as C;
        match call {
            C::Operation(command) => {
                let (on, operation) = command.into_operation();
                self.operate(on, operation).await
            }
            C::Sessions { opts } => {
                let request = self.request(ListSessionsRequest {}, opts.timeout);
                let response = self
                    .client
                    .list_sessions(request)
                    .await
                    .map_err(self.failed())?;
                for session in &response.get_ref().sessions {
                    println!("{}", session_json(session));
                }
                Ok(())
            }
            C::Session { session, opts } => {
                let request = self.request(
                    GetSessionRequest {
                        session_id: session,
                    },
                    opts.timeout,
                );
                let response = self
                    .client
                    .get_session(request)
                    .await
                    .map_err(self.failed())?;
                let session = response.into_inner().session.unwrap_or_default();
                println!("{}", session_json(&session));
                Ok(())
            }
            C::Transcript { session, opts } => {
                let request = self.request(
                    GetTranscriptRequest {
                        session_id: session,
                    },
                    opts.timeout,
                );
                let response = self
                    .client
                    .get_transcript(request)
                    .await
                    .map_err(self.failed())?;
                for message in &response.get_ref().messages {
                    println!("{}", message_json(message));
                }
                Ok(())
            }
            C::Events {
                sessions,
                types,
                resume,
                snapshot,
            } => {
                let request = self.request(
                    SessionEventsRequest {
                        session_ids: sessions,
                        notification_types: types.into_iter().map(|t| t as i32).collect(),
                        resume_token: resume.unwrap_or_default(),
                        include_snapshot: snapshot,
                    },
                    None,
                );
                let mut stream = self
                    .client
                    .session_events(request)
                    .await
                    .map_err(self.failed())?
                    .into_inner();
                loop {
                    tokio::select! {
                        item = stream.message() => match item.map_err(self.failed())? {
                            Some(item) => println!("{}", render(&item)),
                            None => return Ok(()),
                        },
                        _ = tokio::signal::ctrl_c() => return Ok(()),
                    }
                }
            }
        }
    }
}

/// JSON user data as the proto's lossless map.
fn user_data(data: &Map<String, Value>) -> HashMap<String, UserDataValue> {
    data.iter()
        .map(|(k, v)| (k.clone(), user_data_value(v)))
        .collect()
}

/// `send_message` -> `SendMessage`.
fn label(method: &str) -> String {
    method
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// What GWS said of an operation, and with `--wait` what became of it: the confirming
/// notification as one JSON line.
fn print_accepted(
    operation: &str,
    session: &str,
    reference_id: Option<i64>,
    reference_id_json: &str,
    outcome: Option<&OperationOutcome>,
) {
    let reference = match (reference_id, reference_id_json) {
        (Some(r), _) => format!(" (referenceId {r})"),
        (None, "") => String::new(),
        // GWS sent a referenceId that is not an int64: its exact text.
        (None, text) => format!(" (referenceId {text})"),
    };
    println!("{operation} accepted by GWS: session {session}{reference}");
    match outcome.map(|o| (o.status(), o.event.as_ref())) {
        None => {}
        Some((OutcomeStatus::Confirmed, Some(event))) => {
            println!("confirmed: {}", render(event));
        }
        Some(_) => println!(
            "unconfirmed: no confirming notification arrived in time; the operation was \
             accepted, so check the session (client session --session {session}) before retrying"
        ),
    }
}

/// A gRPC error, with its ErrorInfo and BadRequest details; a status made on this side of
/// the connection (no answer from the gateway) also names its cause.
fn describe(status: &tonic::Status, credential_sent: bool) -> String {
    let mut out = format!("{:?}: {}", status.code(), status.message());
    if let Some(source) = std::error::Error::source(status) {
        let cause = chain_text(source);
        if !status.message().contains(&cause) {
            out.push_str(&format!(": {cause}"));
        }
    }
    if status.code() == tonic::Code::Unauthenticated && !credential_sent {
        out.push_str(
            "\n  no credentials were sent: give --user USER --password PASSWORD \
             (before or after the command), or set GWS_USER and GWS_PASSWORD",
        );
    }
    if let Some(info) = status.get_details_error_info() {
        let mut meta: Vec<_> = info
            .metadata
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        meta.sort();
        out.push_str(&format!(
            "\n  reason {} (domain {}) {}",
            info.reason,
            info.domain,
            meta.join(" ")
        ));
    }
    if let Some(bad) = status.get_details_bad_request() {
        for v in bad.field_violations {
            out.push_str(&format!("\n  {}: {}", v.field, v.description));
        }
    }
    out
}

// The JSON below is the client's own compact shape (user data as plain JSON values, types
// kept), written with the proto3 JSON mapping's rules, as the Python and Node examples print
// messages: camelCase names, a Timestamp as RFC 3339 in UTC ("2026-12-03T08:00:00.260Z"),
// and a field that is not set left out rather than written as null.

/// A `google.protobuf.Timestamp` as the proto3 JSON mapping writes it: RFC 3339, `Z`, and
/// 0, 3, 6 or 9 fractional digits.
fn timestamp_json(t: &prost_types::Timestamp) -> Value {
    json!(t.to_string())
}

/// One stream item as one JSON line.
pub fn render(item: &SessionEventsResponse) -> String {
    let body = match &item.event {
        Some(Event::Notice(n)) => json!({
            "notice": NoticeKind::try_from(n.kind).map(|k| k.as_str_name()).unwrap_or("UNKNOWN"),
            "detail": n.detail,
        }),
        Some(Event::StateChange(c)) => {
            let session = c.session.clone().unwrap_or_default();
            let mut change = json!({
                "notificationType": c.notification_type_name,
                "session": session.id,
                "state": session.state_name,
                "userData": user_data_map_to_json(&session.user_data),
                "participants": session.participants.iter().map(participant_json).collect::<Vec<_>>(),
            });
            if let Some(r) = c.reference_id {
                change["referenceId"] = json!(r);
            }
            if !c.reference_id_json.is_empty() {
                change["referenceIdJson"] = json!(c.reference_id_json);
            }
            if !c.error_message.is_empty() {
                change["error"] = json!(c.error_message);
            }
            change
        }
        Some(Event::MessageLog(m)) => json!({
            "messageLog": m.session_id,
            "messages": m.messages.iter().map(message_json).collect::<Vec<_>>(),
        }),
        Some(Event::Snapshot(s)) => json!({
            "snapshot": s.sessions.iter().map(session_json).collect::<Vec<_>>(),
        }),
        None => json!({}),
    };
    let mut line = json!({ "resumeToken": item.resume_token, "event": body });
    if let Some(t) = &item.receive_time {
        line["time"] = timestamp_json(t);
    }
    line.to_string()
}

fn participant_json(p: &Participant) -> Value {
    json!({ "nickname": p.nickname, "type": p.type_name, "participantId": p.participant_id })
}

/// A session as GWS-like JSON (user data with its types kept).
pub fn session_json(s: &SmsSession) -> Value {
    json!({
        "id": s.id,
        "state": s.state_name,
        "capabilities": s.capabilities,
        "participants": s.participants.iter().map(participant_json).collect::<Vec<_>>(),
        "userData": user_data_map_to_json(&s.user_data),
    })
}

fn message_json(t: &TranscriptMessage) -> Value {
    let mut m = json!({
        "index": t.index, "type": t.r#type, "text": t.text, "visibility": t.visibility,
    });
    if let Some(sender) = &t.sender {
        m["from"] = json!(sender.nickname);
    }
    if let Some(time) = &t.time {
        m["time"] = timestamp_json(time);
    }
    if !t.url.is_empty() {
        m["url"] = json!(t.url);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::Timestamp;

    fn has_null(v: &Value) -> bool {
        match v {
            Value::Null => true,
            Value::Array(a) => a.iter().any(has_null),
            Value::Object(o) => o.values().any(has_null),
            _ => false,
        }
    }

    #[test]
    fn times_are_rfc3339_and_unset_fields_are_left_out() {
        let change = SessionEventsResponse {
            resume_token: "t1".into(),
            receive_time: Some(Timestamp {
                seconds: 1_796_284_800,
                nanos: 260_000_000,
            }),
            event: Some(Event::StateChange(SessionStateChange {
                notification_type_name: "StatusChange".into(),
                session: Some(SmsSession {
                    id: "s1".into(),
                    state_name: "Chatting".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        };
        let line: Value = serde_json::from_str(&render(&change)).unwrap();
        assert_eq!(line["time"], "2026-12-03T08:00:00.260Z", "{line}");
        assert!(!has_null(&line), "{line}");
        assert!(line["event"].get("referenceId").is_none(), "{line}");
        assert!(line["event"].get("error").is_none(), "{line}");

        let log = SessionEventsResponse {
            resume_token: "t2".into(),
            receive_time: None,
            event: Some(Event::MessageLog(MessageLogUpdate {
                session_id: "s1".into(),
                messages: vec![
                    TranscriptMessage {
                        index: 1,
                        text: "hi".into(),
                        r#type: "Text".into(),
                        time: Some(Timestamp {
                            seconds: 1_796_284_800,
                            nanos: 0,
                        }),
                        ..Default::default()
                    },
                    TranscriptMessage {
                        index: 2,
                        ..Default::default()
                    },
                ],
            })),
        };
        let line: Value = serde_json::from_str(&render(&log)).unwrap();
        assert!(!has_null(&line), "{line}");
        assert!(line.get("time").is_none(), "{line}");
        let messages = &line["event"]["messages"];
        assert_eq!(messages[0]["time"], "2026-12-03T08:00:00Z", "{line}");
        assert!(messages[1].get("time").is_none() && messages[1].get("from").is_none());
    }

    #[test]
    fn set_fields_are_kept() {
        let change = SessionEventsResponse {
            event: Some(Event::StateChange(SessionStateChange {
                reference_id: Some(15),
                error_message: "boom".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let line: Value = serde_json::from_str(&render(&change)).unwrap();
        assert_eq!(line["event"]["referenceId"], 15);
        assert_eq!(line["event"]["error"], "boom");
    }

    #[test]
    fn connection_failures_say_what_failed() {
        let addr: GatewayAddr = "127.0.0.1:50051".parse().unwrap();
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            ConnectError::new(addr.clone(), &refused).to_string(),
            "connection refused: is the gateway running at http://127.0.0.1:50051?"
        );
        let timed_out = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert!(matches!(
            ConnectError::new(addr.clone(), &timed_out),
            ConnectError::TimedOut { .. }
        ));
        let other = std::io::Error::other("no route");
        assert_eq!(
            ConnectError::new(addr, &other).to_string(),
            "cannot connect to http://127.0.0.1:50051: no route"
        );
    }

    #[test]
    fn unauthenticated_without_credentials_names_the_flags() {
        let status = tonic::Status::unauthenticated("no credentials");
        let text = describe(&status, false);
        assert!(
            text.contains("--user USER --password PASSWORD") && text.contains("GWS_USER"),
            "{text}"
        );
        // With credentials sent, the hint would be wrong: GWS refused the ones given.
        assert!(!describe(&status, true).contains("--user"));
    }
}
