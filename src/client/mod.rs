//! The built-in command-line client: try the gateway without installing grpcurl.
//! `client delete-user-data` prints the result or the gRPC error (with its details);
//! `client events` prints the stream as it arrives, one line per item.

use crate::config::{ClientArgs, ClientCall};
use crate::mapping::user_data_map_to_json;
use crate::proto::session_events_response::Event;
use crate::proto::sms_session_service_client::SmsSessionServiceClient;
use crate::proto::{
    DeleteUserDataRequest, NoticeKind, SessionEventsRequest, SessionEventsResponse,
};
use crate::upstream::Credential;
use serde_json::{Value, json};
use std::process::ExitCode;
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
    let mut client = SmsSessionServiceClient::new(channel);
    let authorize = |req: &mut tonic::metadata::MetadataMap| {
        if let Some(c) = &credential
            && let Ok(v) = c.authorization().parse()
        {
            req.insert("authorization", v);
        }
    };
    match args.call {
        ClientCall::DeleteUserData {
            session,
            keys,
            timeout,
        } => {
            let mut req = Request::new(DeleteUserDataRequest {
                session_id: session.clone(),
                keys: keys.clone(),
            });
            authorize(req.metadata_mut());
            if let Some(t) = timeout {
                req.set_timeout(t);
            }
            let resp = client
                .delete_user_data(req)
                .await
                .map_err(describe)?
                .into_inner();
            let reference = resp
                .reference_id
                .map(|r| format!(" (referenceId {r})"))
                .unwrap_or_default();
            println!("DeleteUserData accepted: keys {keys:?} of session {session}{reference}");
            Ok(())
        }
        ClientCall::Events { sessions, resume } => {
            let mut req = Request::new(SessionEventsRequest {
                session_ids: sessions,
                notification_types: vec![],
                resume_token: resume.unwrap_or_default(),
            });
            authorize(req.metadata_mut());
            let mut stream = client
                .session_events(req)
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
            let user_data = user_data_map_to_json(&session.user_data);
            json!({
                "notificationType": c.notification_type_name,
                "referenceId": c.reference_id,
                "session": session.id,
                "state": session.state_name,
                "userData": user_data,
                "error": if c.error_message.is_empty() { Value::Null } else { json!(c.error_message) },
            })
        }
        Some(Event::MessageLog(m)) => json!({
            "messageLog": m.session_id,
            "messages": m.messages.iter().map(|t| json!({
                "index": t.index, "type": t.r#type, "text": t.text, "visibility": t.visibility,
                "from": t.sender.as_ref().map(|s| s.nickname.clone()),
            })).collect::<Vec<_>>(),
        }),
        None => json!({}),
    };
    json!({ "time": time, "resumeToken": item.resume_token, "event": body }).to_string()
}
