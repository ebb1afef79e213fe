//! The built-in command-line client: try the gateway without installing grpcurl. Every RPC
//! has a command (`client accept --session S`, `client send-message --session S --text T`,
//! `client sessions`, `client transcript --session S`, `client events`, ...). Operations
//! print what GWS answered, reads print JSON, `events` prints the stream as it arrives,
//! one JSON line per item; errors print the gRPC code and details.

use crate::config::{ClientArgs, ClientCall, OnSession};
use crate::mapping::{user_data_map_to_json, user_data_value};
use crate::proto::session_events_response::Event;
use crate::proto::sms_session_service_client::SmsSessionServiceClient;
use crate::proto::*;
use crate::upstream::Credential;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;
use tonic::Request;
use tonic::transport::Channel;
use tonic_types::StatusExt;

pub async fn run(args: ClientArgs) -> ExitCode {
    match call(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn call(args: ClientArgs) -> Result<(), String> {
    let credential = match (&args.user, &args.password) {
        (Some(user), Some(password)) => Some(
            Credential::new(user.clone(), password.clone()).map_err(|e| format!("error: {e}"))?,
        ),
        (None, None) => None,
        _ => return Err("error: --user and --password (or GWS_PASSWORD) go together".into()),
    };
    let channel = Channel::from_shared(args.addr.clone())
        .map_err(|_| {
            format!(
                "error: --addr {:?} is not a URL like http://127.0.0.1:50051",
                args.addr
            )
        })?
        .connect()
        .await
        .map_err(|e| format!("error: cannot connect to {}: {e}", args.addr))?;
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
            .map_err(describe)?
            .into_inner();
        print_accepted(
            &label(stringify!($method)),
            &on.session,
            response.reference_id,
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

    async fn run(&mut self, call: ClientCall) -> Result<(), String> {
        use ClientCall as C;
        let session_id = |on: &OnSession| on.session.clone();
        match call {
            C::AttachUserData { on, data } => operation!(
                self,
                attach_user_data,
                on.clone(),
                AttachUserDataRequest {
                    session_id: session_id(&on),
                    user_data: user_data(&data),
                    wait_for_outcome: on.wait
                }
            ),
            C::UpdateUserData { on, data } => operation!(
                self,
                update_user_data,
                on.clone(),
                UpdateUserDataRequest {
                    session_id: session_id(&on),
                    user_data: user_data(&data),
                    wait_for_outcome: on.wait
                }
            ),
            C::DeleteUserData { on, keys } => operation!(
                self,
                delete_user_data,
                on.clone(),
                DeleteUserDataRequest {
                    session_id: session_id(&on),
                    keys,
                    wait_for_outcome: on.wait
                }
            ),
            C::SetDisposition {
                on,
                disposition,
                disposition_key,
            } => operation!(
                self,
                set_disposition,
                on.clone(),
                SetDispositionRequest {
                    session_id: session_id(&on),
                    disposition,
                    disposition_key: disposition_key.unwrap_or_default(),
                    wait_for_outcome: on.wait
                }
            ),
            C::AddComment { on, comment } => operation!(
                self,
                add_comment,
                on.clone(),
                AddCommentRequest {
                    session_id: session_id(&on),
                    comment,
                    wait_for_outcome: on.wait
                }
            ),
            C::Accept { on, nickname } => operation!(
                self,
                accept,
                on.clone(),
                AcceptRequest {
                    session_id: session_id(&on),
                    nickname: nickname.unwrap_or_default(),
                    wait_for_outcome: on.wait
                }
            ),
            C::Reject { on } => operation!(
                self,
                reject,
                on.clone(),
                RejectRequest {
                    session_id: session_id(&on),
                    wait_for_outcome: on.wait
                }
            ),
            C::Complete { on, queue_name } => operation!(
                self,
                complete,
                on.clone(),
                CompleteRequest {
                    session_id: session_id(&on),
                    queue_name: queue_name.unwrap_or_default(),
                    wait_for_outcome: on.wait
                }
            ),
            C::Leave { on } => operation!(
                self,
                leave,
                on.clone(),
                LeaveRequest {
                    session_id: session_id(&on),
                    wait_for_outcome: on.wait
                }
            ),
            C::SendMessage { on, text } => operation!(
                self,
                send_message,
                on.clone(),
                SendMessageRequest {
                    session_id: session_id(&on),
                    text,
                    wait_for_outcome: on.wait
                }
            ),
            C::SendToAgents { on, text } => operation!(
                self,
                send_to_agents,
                on.clone(),
                SendToAgentsRequest {
                    session_id: session_id(&on),
                    text,
                    wait_for_outcome: on.wait
                }
            ),
            C::SendUrl { on, url } => operation!(
                self,
                send_url,
                on.clone(),
                SendUrlRequest {
                    session_id: session_id(&on),
                    url,
                    wait_for_outcome: on.wait
                }
            ),
            C::StartTyping { on } => operation!(
                self,
                send_start_typing_notification,
                on.clone(),
                SendStartTypingNotificationRequest {
                    session_id: session_id(&on),
                    wait_for_outcome: on.wait
                }
            ),
            C::StopTyping { on } => operation!(
                self,
                send_stop_typing_notification,
                on.clone(),
                SendStopTypingNotificationRequest {
                    session_id: session_id(&on),
                    wait_for_outcome: on.wait
                }
            ),
            C::Transfer {
                on,
                target_uri,
                queue_name,
                text,
            } => {
                let target = match (target_uri, queue_name) {
                    (Some(uri), _) => transfer_request::Target::TargetUri(uri),
                    (None, queue) => transfer_request::Target::QueueName(queue.unwrap_or_default()),
                };
                operation!(
                    self,
                    transfer,
                    on.clone(),
                    TransferRequest {
                        session_id: session_id(&on),
                        target: Some(target),
                        text: text.unwrap_or_default(),
                        wait_for_outcome: on.wait
                    }
                )
            }
            C::Consult { on, target } => {
                let target = match target.target_uri {
                    Some(uri) => consult_request::Target::TargetUri(uri),
                    None => {
                        consult_request::Target::TargetPath(target.target_path.unwrap_or_default())
                    }
                };
                operation!(
                    self,
                    consult,
                    on.clone(),
                    ConsultRequest {
                        session_id: session_id(&on),
                        target: Some(target),
                        wait_for_outcome: on.wait
                    }
                )
            }
            C::Invite { on, target } => {
                let target = match target.target_uri {
                    Some(uri) => invite_request::Target::TargetUri(uri),
                    None => {
                        invite_request::Target::TargetPath(target.target_path.unwrap_or_default())
                    }
                };
                operation!(
                    self,
                    invite,
                    on.clone(),
                    InviteRequest {
                        session_id: session_id(&on),
                        target: Some(target),
                        wait_for_outcome: on.wait
                    }
                )
            }
            C::Sessions { opts } => {
                let request = self.request(ListSessionsRequest {}, opts.timeout);
                let response = self.client.list_sessions(request).await.map_err(describe)?;
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
                let response = self.client.get_session(request).await.map_err(describe)?;
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
                    .map_err(describe)?;
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
                    .map_err(describe)?
                    .into_inner();
                loop {
                    tokio::select! {
                        item = stream.message() => match item.map_err(describe)? {
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
    outcome: Option<&OperationOutcome>,
) {
    let reference = reference_id
        .map(|r| format!(" (referenceId {r})"))
        .unwrap_or_default();
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

/// A gRPC error, with its ErrorInfo and BadRequest details.
fn describe(status: tonic::Status) -> String {
    let mut out = format!("error: {:?}: {}", status.code(), status.message());
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

/// One stream item as one JSON line.
pub fn render(item: &SessionEventsResponse) -> String {
    let time = item
        .receive_time
        .as_ref()
        .map(|t| format!("{}.{:03}", t.seconds, t.nanos / 1_000_000))
        .unwrap_or_default();
    let body = match &item.event {
        Some(Event::Notice(n)) => json!({
            "notice": NoticeKind::try_from(n.kind).map(|k| k.as_str_name()).unwrap_or("UNKNOWN"),
            "detail": n.detail,
        }),
        Some(Event::StateChange(c)) => {
            let session = c.session.clone().unwrap_or_default();
            json!({
                "notificationType": c.notification_type_name,
                "referenceId": c.reference_id,
                "session": session.id,
                "state": session.state_name,
                "userData": user_data_map_to_json(&session.user_data),
                "participants": session.participants.iter().map(participant_json).collect::<Vec<_>>(),
                "error": if c.error_message.is_empty() { Value::Null } else { json!(c.error_message) },
            })
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
    json!({ "time": time, "resumeToken": item.resume_token, "event": body }).to_string()
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
        "from": t.sender.as_ref().map(|s| s.nickname.clone()),
    });
    if !t.url.is_empty() {
        m["url"] = json!(t.url);
    }
    m
}
