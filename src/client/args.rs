//! The built-in client's command line: where to call (`--addr`), as whom (`--user`,
//! `--password`), and one command per RPC. Parsed by clap as the `client` mode of the one
//! binary; [`super::run`] carries a parsed command out.

use crate::config::parse_duration;
use crate::upstream::{Operation, PartyTarget, TransferTarget};
use clap::{Args, Subcommand};
use std::time::Duration;

// Global: the flags go before or after the command (`client --user U sessions` and
// `client sessions --user U`), and every command's help lists them.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The gateway's address: HOST:PORT (plaintext gRPC, http:// assumed) or a URL like
    /// http://127.0.0.1:50051.
    #[arg(
        long,
        global = true,
        env = "GATEWAY_ADDR",
        default_value = "127.0.0.1:50051",
        value_parser = parse_gateway_addr
    )]
    pub addr: GatewayAddr,
    /// GWS agent user (with --password).
    #[arg(long, global = true, env = "GWS_USER")]
    pub user: Option<String>,
    /// GWS agent password (with --user).
    #[arg(long, global = true, env = "GWS_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    #[command(subcommand)]
    pub call: ClientCall,
}

/// What every operation command takes: the session, a deadline, and whether to wait.
#[derive(Debug, Clone, Args)]
pub struct OnSession {
    /// The SMS session id, e.g. 0071023821aec011.
    #[arg(long)]
    pub session: String,
    /// gRPC deadline for the call (e.g. 2s, 500ms).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Return only once the confirming notification arrived, and print it
    /// (wait_for_outcome).
    #[arg(long)]
    pub wait: bool,
}

/// The read commands' options.
#[derive(Debug, Clone, Args)]
pub struct ReadOpts {
    /// gRPC deadline for the call (e.g. 2s, 500ms).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ClientCall {
    #[command(flatten)]
    Operation(OperationCommand),
    /// List the agent's SMS sessions, one JSON line each (ListSessions).
    Sessions {
        #[command(flatten)]
        opts: ReadOpts,
    },
    /// Print one SMS session as JSON (GetSession).
    Session {
        /// The SMS session id.
        #[arg(long)]
        session: String,
        #[command(flatten)]
        opts: ReadOpts,
    },
    /// Print a session's transcript, one JSON line per message (GetTranscript).
    Transcript {
        /// The SMS session id.
        #[arg(long)]
        session: String,
        #[command(flatten)]
        opts: ReadOpts,
    },
    /// Print the agent's SMS session events as they arrive (SessionEvents).
    Events {
        /// Only this session (repeat for several).
        #[arg(long = "session")]
        sessions: Vec<String>,
        /// Only this notification type: status-change, participants-updated,
        /// properties-updated or error (repeat for several). Transcript updates have no type,
        /// so any --type leaves them out.
        #[arg(long = "type", value_parser = parse_notification_type)]
        types: Vec<crate::proto::NotificationType>,
        /// Resume after this token (the resumeToken of the last item processed).
        #[arg(long)]
        resume: Option<String>,
        /// Start with a snapshot of the agent's sessions, and get a fresh one after every
        /// upstream restore (include_snapshot).
        #[arg(long)]
        snapshot: bool,
    },
}

/// One command per SMS operation; each becomes the shared model's [`Operation`] (see
/// [`OperationCommand::into_operation`]), which the client sends through one exhaustive match.
#[derive(Debug, Clone, Subcommand)]
pub enum OperationCommand {
    /// Add user data to a session (AttachUserData).
    AttachUserData {
        #[command(flatten)]
        on: OnSession,
        /// The user data as a JSON object, e.g. '{"Score": 3, "Code": "3"}' (types are kept).
        #[arg(long, value_parser = parse_json_object)]
        data: serde_json::Map<String, serde_json::Value>,
    },
    /// Overwrite user-data keys of a session (UpdateUserData).
    UpdateUserData {
        #[command(flatten)]
        on: OnSession,
        /// The user data as a JSON object, e.g. '{"Score": 4}' (types are kept).
        #[arg(long, value_parser = parse_json_object)]
        data: serde_json::Map<String, serde_json::Value>,
    },
    /// Delete user-data keys from a session (DeleteUserData).
    DeleteUserData {
        #[command(flatten)]
        on: OnSession,
        /// A key to delete (repeat for several).
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
    },
    /// Set a session's disposition (SetDisposition).
    SetDisposition {
        #[command(flatten)]
        on: OnSession,
        /// The disposition, e.g. "Resolved".
        #[arg(long)]
        disposition: String,
        /// The user-data key the disposition is stored under (optional).
        #[arg(long = "disposition-key")]
        disposition_key: Option<String>,
    },
    /// Add a comment to a session (AddComment).
    AddComment {
        #[command(flatten)]
        on: OnSession,
        /// The comment text.
        #[arg(long)]
        comment: String,
    },
    /// Accept an invited session (Accept).
    Accept {
        #[command(flatten)]
        on: OnSession,
        /// The nickname the customer sees (optional).
        #[arg(long)]
        nickname: Option<String>,
    },
    /// Reject an invited session (Reject).
    Reject {
        #[command(flatten)]
        on: OnSession,
    },
    /// Complete a session (Complete).
    Complete {
        #[command(flatten)]
        on: OnSession,
        /// The queue to place the interaction in (optional).
        #[arg(long = "queue")]
        queue_name: Option<String>,
    },
    /// Leave a session (Leave).
    Leave {
        #[command(flatten)]
        on: OnSession,
    },
    /// Send a message to the customer (SendMessage).
    SendMessage {
        #[command(flatten)]
        on: OnSession,
        /// The message text (1-4,096 characters).
        #[arg(long)]
        text: String,
    },
    /// Send a message only agents see (SendToAgents).
    SendToAgents {
        #[command(flatten)]
        on: OnSession,
        /// The message text (1-4,096 characters).
        #[arg(long)]
        text: String,
    },
    /// Push a URL to the customer (SendUrl).
    SendUrl {
        #[command(flatten)]
        on: OnSession,
        /// An absolute http:// or https:// URL.
        #[arg(long)]
        url: String,
    },
    /// Tell the customer the agent started typing (SendStartTypingNotification).
    StartTyping {
        #[command(flatten)]
        on: OnSession,
    },
    /// Tell the customer the agent stopped typing (SendStopTypingNotification).
    StopTyping {
        #[command(flatten)]
        on: OnSession,
    },
    /// Transfer a session to an agent or a queue (Transfer).
    Transfer {
        #[command(flatten)]
        on: OnSession,
        /// The target's URI.
        #[arg(
            long = "target-uri",
            conflicts_with = "queue_name",
            required_unless_present = "queue_name"
        )]
        target_uri: Option<String>,
        /// The target queue.
        #[arg(long = "queue")]
        queue_name: Option<String>,
        /// A note for the receiving party (optional).
        #[arg(long)]
        text: Option<String>,
    },
    /// Consult another party (Consult).
    Consult {
        #[command(flatten)]
        on: OnSession,
        #[command(flatten)]
        target: PartyArgs,
    },
    /// Invite another party into the session (Invite).
    Invite {
        #[command(flatten)]
        on: OnSession,
        #[command(flatten)]
        target: PartyArgs,
    },
}

impl OperationCommand {
    /// The operation this command sends, and on which session: one arm per command.
    pub fn into_operation(self) -> (OnSession, Operation) {
        use OperationCommand as C;
        let party = |target: PartyArgs| match target.target_uri {
            Some(uri) => PartyTarget::TargetUri(uri),
            None => PartyTarget::TargetPath(target.target_path.unwrap_or_default()),
        };
        match self {
            C::AttachUserData { on, data } => (on, Operation::AttachUserData { user_data: data }),
            C::UpdateUserData { on, data } => (on, Operation::UpdateUserData { user_data: data }),
            C::DeleteUserData { on, keys } => (on, Operation::DeleteUserData { keys }),
            C::SetDisposition {
                on,
                disposition,
                disposition_key,
            } => (
                on,
                Operation::SetDisposition {
                    disposition,
                    disposition_key,
                },
            ),
            C::AddComment { on, comment } => (on, Operation::AddComment { comment }),
            C::Accept { on, nickname } => (on, Operation::Accept { nickname }),
            C::Reject { on } => (on, Operation::Reject),
            C::Complete { on, queue_name } => (on, Operation::Complete { queue_name }),
            C::Leave { on } => (on, Operation::Leave),
            C::SendMessage { on, text } => (on, Operation::SendMessage { text }),
            C::SendToAgents { on, text } => (on, Operation::SendToAgents { text }),
            C::SendUrl { on, url } => (on, Operation::SendUrl { url }),
            C::StartTyping { on } => (on, Operation::SendStartTypingNotification),
            C::StopTyping { on } => (on, Operation::SendStopTypingNotification),
            C::Transfer {
                on,
                target_uri,
                queue_name,
                text,
            } => {
                // Exactly one is given (clap checks it); an empty queue is the gateway's to
                // refuse, with its reason.
                let target = match target_uri {
                    Some(uri) => TransferTarget::TargetUri(uri),
                    None => TransferTarget::QueueName(queue_name.unwrap_or_default()),
                };
                (on, Operation::Transfer { target, text })
            }
            C::Consult { on, target } => (
                on,
                Operation::Consult {
                    target: party(target),
                },
            ),
            C::Invite { on, target } => (
                on,
                Operation::Invite {
                    target: party(target),
                },
            ),
        }
    }
}

/// Whom a Consult or Invite reaches: exactly one of the two.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct PartyArgs {
    /// The target's URI.
    #[arg(long = "target-uri")]
    pub target_uri: Option<String>,
    /// The target's path.
    #[arg(long = "target-path")]
    pub target_path: Option<String>,
}

/// Where the built-in client calls: an `http://HOST:PORT` URI (the client speaks plaintext
/// gRPC only), shown as the user would type it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayAddr(http::Uri);

impl GatewayAddr {
    pub fn uri(&self) -> &http::Uri {
        &self.0
    }

    /// The HOST:PORT part (HOST alone when a URL gave no port).
    pub fn authority(&self) -> &str {
        self.0.authority().map(|a| a.as_str()).unwrap_or_default()
    }
}

impl std::str::FromStr for GatewayAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_gateway_addr(text)
    }
}

impl std::fmt::Display for GatewayAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}", self.authority())
    }
}

/// `--addr`: HOST:PORT (what grpcurl and the Node example take) or an `http://` URL.
fn parse_gateway_addr(text: &str) -> Result<GatewayAddr, String> {
    let text = text.trim();
    const FORM: &str = "give HOST:PORT, e.g. 127.0.0.1:50051, or a URL like http://127.0.0.1:50051";
    let (url, scheme_given) = match text.split_once("://") {
        Some(("https", _)) => {
            return Err(
                "the built-in client speaks plaintext gRPC only (http://); call a TLS \
                 listener with a client given its CA, e.g. grpcurl -cacert"
                    .into(),
            );
        }
        Some(("http", _)) => (text.to_string(), true),
        Some((scheme, _)) => return Err(format!("{scheme}:// is not supported: {FORM}")),
        None => (format!("http://{text}"), false),
    };
    let uri: http::Uri = url.parse().map_err(|_| format!("not an address: {FORM}"))?;
    let authority = match uri.authority() {
        Some(a) if !a.host().is_empty() => a,
        _ => return Err(format!("no host: {FORM}")),
    };
    if authority.as_str().contains('@') {
        return Err("must not contain user:password@: give --user and --password".into());
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!("a gRPC address has no path: {FORM}"));
    }
    // Without a scheme the user typed HOST:PORT; a bare host would silently mean port 80.
    if !scheme_given && authority.port().is_none() {
        return Err(format!("no port: {FORM}"));
    }
    Ok(GatewayAddr(uri))
}

fn parse_json_object(text: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err("must be a JSON object, e.g. '{\"key\": \"value\"}'".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

fn parse_notification_type(text: &str) -> Result<crate::proto::NotificationType, String> {
    use crate::proto::NotificationType as T;
    match text.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
        "statuschange" => Ok(T::StatusChange),
        "participantsupdated" => Ok(T::ParticipantsUpdated),
        "propertiesupdated" => Ok(T::PropertiesUpdated),
        "error" => Ok(T::Error),
        _ => Err("one of status-change, participants-updated, properties-updated, error".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_addresses_are_host_port_or_http_urls() {
        let addr = |t: &str| parse_gateway_addr(t).map(|a| a.to_string());
        for (given, means) in [
            ("127.0.0.1:50051", "http://127.0.0.1:50051"),
            ("http://127.0.0.1:50051", "http://127.0.0.1:50051"),
            ("http://127.0.0.1:50051/", "http://127.0.0.1:50051"),
            ("localhost:50051", "http://localhost:50051"),
            ("[::1]:50051", "http://[::1]:50051"),
            ("http://gateway.example", "http://gateway.example"),
        ] {
            assert_eq!(addr(given).as_deref(), Ok(means), "{given}");
        }
        for (given, says) in [
            ("localhost", "no port"),
            ("https://localhost:15051", "plaintext gRPC only"),
            ("ftp://x:1", "ftp:// is not supported"),
            ("http://127.0.0.1:50051/api", "no path"),
            (
                "http://agent1:password1@127.0.0.1:50051",
                "--user and --password",
            ),
            ("", "HOST:PORT"),
            ("not an address", "HOST:PORT"),
        ] {
            let err = addr(given).unwrap_err();
            assert!(err.contains(says), "{given}: {err}");
        }
    }
}
