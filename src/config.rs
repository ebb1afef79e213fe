//! Command line and environment, validated before any port is bound. A command line that does
//! not parse gets clap's whole message (what is wrong, the usage, its tips) and exit code 2; a
//! configuration that parses but cannot be used is one clear line and exit code 64 (EX_USAGE).

use crate::telemetry::LogFormat;
use crate::tls::{ReloadableTls, ServerTlsFiles, UpstreamTls};
use crate::upstream::Credential;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const EX_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "gws-sms-gateway",
    version,
    about = "gRPC gateway to Genesys Web Services SMS sessions"
)]
pub struct Cli {
    /// Log line format on stderr.
    #[arg(
        long,
        global = true,
        env = "GATEWAY_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Option<Command>,
}

// Parsed once at start-up: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway against the GWS at --gws-url (production).
    // One flag set for both modes; each mode's help leaves out the flag only the other takes
    // (serve ignores --simulator-listen; demo refuses --gws-url, with a reason, so it still
    // parses it: GWS_URL may be set in the environment).
    #[command(mut_arg("simulator_listen", |a| a.hide(true)))]
    Serve(ServeArgs),
    /// Run the gateway with an embedded GWS simulator on loopback (what no subcommand runs).
    #[cfg(feature = "demo")]
    #[command(mut_arg("gws_url", |a| a.hide(true)))]
    Demo(ServeArgs),
    /// Run the GWS simulator alone.
    #[cfg(feature = "demo")]
    Simulate(SimulateArgs),
    /// Call a running gateway.
    Client(ClientArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// gRPC listen address.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// GWS base URL, e.g. https://gws.example:8443 (required by `serve`; `demo` refuses it).
    #[arg(long, env = "GWS_URL", value_parser = parse_url)]
    pub gws_url: Option<reqwest::Url>,
    /// Check the configuration (files readable, URLs, addresses) and exit without binding:
    /// 0 when valid, 64 when not (2 when the command line itself does not parse).
    #[arg(long)]
    pub check_config: bool,
    /// PEM certificate chain of the gRPC listener: serve TLS (with --tls-key).
    #[arg(long, env = "GATEWAY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "GATEWAY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): clients must present a certificate it issued (mutual TLS).
    #[arg(long, env = "GATEWAY_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// PEM CA certificate(s) trusted for an HTTPS GWS, besides the system's roots.
    #[arg(long, env = "GWS_CA")]
    pub gws_ca: Option<PathBuf>,
    /// PEM client certificate presented to GWS (with --gws-client-key).
    #[arg(long, env = "GWS_CLIENT_CERT")]
    pub gws_client_cert: Option<PathBuf>,
    /// PEM private key of --gws-client-cert.
    #[arg(long, env = "GWS_CLIENT_KEY")]
    pub gws_client_key: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, env = "GATEWAY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Also serve gRPC health (grpc.health.v1 only) in plaintext on this address: for probes
    /// that cannot speak TLS (the kubelet's gRPC probe) when --tls-cert is set.
    #[arg(long, env = "GATEWAY_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// Export spans over OTLP/gRPC to this collector, e.g. http://otel-collector:4317.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_parser = parse_endpoint)]
    pub otlp_endpoint: Option<reqwest::Url>,
    /// CometD endpoint path under the GWS base URL.
    #[arg(
        long,
        env = "GWS_NOTIFICATIONS_PATH",
        default_value = "/api/v2/notifications"
    )]
    pub notifications_path: String,
    /// CometD channel(s) to subscribe (repeat or comma-separate).
    #[arg(
        long = "channel",
        env = "GWS_CHANNELS",
        value_delimiter = ',',
        default_value = "/v2/me/smssessions"
    )]
    pub channels: Vec<String>,
    /// Upstream timeout when the caller sets no gRPC deadline (e.g. 10s, 500ms).
    #[arg(long, env = "GWS_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,
    /// Agent user for calls without credentials (with --default-password).
    #[arg(long, env = "GATEWAY_DEFAULT_USER")]
    pub default_user: Option<String>,
    /// Password of --default-user.
    #[arg(long, env = "GATEWAY_DEFAULT_PASSWORD", hide_env_values = true)]
    pub default_password: Option<String>,
    /// Most agents whose upstream state is kept at once (an agent's state is a few KiB;
    /// beyond it, unused agents are evicted, and with none unused new agents get
    /// RESOURCE_EXHAUSTED).
    #[arg(long, env = "GATEWAY_MAX_AGENTS", default_value_t = 10_000)]
    pub max_agents: usize,
    /// Refused first-time credential checks (`GET /api/v2/me` for a credential not seen yet)
    /// allowed per second on average: each check takes a token, and one GWS accepts gives it
    /// back. With no token left, calls of new credentials get UNAVAILABLE with a RetryInfo,
    /// and nothing is sent to GWS. Known agents are not limited.
    #[arg(long, env = "GATEWAY_NEW_AGENT_RATE", default_value_t = 50.0)]
    pub new_agent_rate: f64,
    /// Tokens for first-time credential checks after a quiet period (the token bucket's
    /// size): how many refused credentials a burst may cost GWS.
    #[arg(long, env = "GATEWAY_NEW_AGENT_BURST", default_value_t = 100)]
    pub new_agent_burst: u32,
    /// First-time credential checks under way at once (at most --new-agent-burst); more
    /// wait for a turn in arrival order, within their deadline.
    #[arg(long, env = "GATEWAY_NEW_AGENT_CONCURRENCY", default_value_t = 64)]
    pub new_agent_concurrency: usize,
    /// SessionEvents streams one agent may hold open at once (all share one upstream CometD
    /// session); beyond, RESOURCE_EXHAUSTED.
    #[arg(long, env = "GATEWAY_MAX_STREAMS_PER_AGENT", default_value_t = 10_000)]
    pub max_streams_per_agent: usize,
    /// Forget an agent's upstream state after this long unused.
    #[arg(long, env = "GATEWAY_AGENT_IDLE_TTL", default_value = "10m", value_parser = parse_duration)]
    pub agent_idle_ttl: Duration,
    /// Events kept per agent for resume [default: 4 x --stream-buffer]. At least
    /// --stream-buffer, so everything a stream has queued can be resumed.
    #[arg(long, env = "GATEWAY_REPLAY_MAX_EVENTS")]
    pub replay_max_events: Option<usize>,
    /// Encoded size of the events kept per agent for resume, in MiB.
    #[arg(long, env = "GATEWAY_REPLAY_MAX_MIB", default_value_t = 16)]
    pub replay_max_mib: usize,
    /// Encoded size of the events kept for resume by all agents together, in MiB; shared
    /// fairly (an agent over its share gives first). Resident memory is several times this.
    #[arg(long, env = "GATEWAY_REPLAY_BUDGET_MIB", default_value_t = 256)]
    pub replay_budget_mib: usize,
    /// Age after which events leave the replay buffer.
    #[arg(long, env = "GATEWAY_REPLAY_MAX_AGE", default_value = "5m", value_parser = parse_duration)]
    pub replay_max_age: Duration,
    /// Items queued per SessionEvents stream before a slow consumer is cut off.
    #[arg(long, env = "GATEWAY_STREAM_BUFFER", default_value_t = 256)]
    pub stream_buffer: usize,
    /// How long an agent's CometD session outlives its last stream.
    #[arg(long, env = "GATEWAY_LINGER", default_value = "5s", value_parser = parse_duration)]
    pub linger: Duration,
    /// Longest wait for an operation's confirming notification (wait_for_outcome).
    #[arg(long, env = "GATEWAY_OUTCOME_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub outcome_timeout: Duration,
    /// Calls of one agent waiting for their outcome at once; beyond, RESOURCE_EXHAUSTED.
    #[arg(long, env = "GATEWAY_MAX_OUTCOME_WAITS", default_value_t = 1000)]
    pub max_outcome_waits: usize,
    /// How long a new stream waits for the upstream subscription.
    #[arg(long, env = "GATEWAY_SUBSCRIBE_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub subscribe_timeout: Duration,
    /// Longest wait for in-flight calls on shutdown.
    #[arg(long, env = "GATEWAY_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Run as one replica of a cluster on this NATS JetStream (e.g. nats://nats:4222; several
    /// servers comma-separated): resume on any replica, one upstream session per agent
    /// cluster-wide. Without it the gateway is a single process and needs no NATS.
    #[arg(long, env = "GATEWAY_NATS_URL")]
    pub nats_url: Option<String>,
    /// NATS user (with --nats-password).
    #[arg(long, env = "GATEWAY_NATS_USER")]
    pub nats_user: Option<String>,
    /// Password of --nats-user.
    #[arg(long, env = "GATEWAY_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// NATS authentication token (instead of --nats-user).
    #[arg(long, env = "GATEWAY_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// PEM CA certificate(s) trusted for a TLS NATS (tls:// URLs, or a server requiring TLS).
    #[arg(long, env = "GATEWAY_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// The secret every replica shares (at least 16 bytes): agents are keyed in NATS by a hash
    /// of their credential salted with it, so NATS never sees a credential nor a hash that
    /// could be tested against guessed passwords without it. Required with --nats-url.
    #[arg(long, env = "GATEWAY_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Copies of the event stream and the lease bucket JetStream keeps (at most the NATS
    /// cluster's size; 3 on a 3-node NATS, so one NATS node may fail).
    #[arg(long, env = "GATEWAY_NATS_REPLICAS", default_value_t = 1)]
    pub nats_replicas: usize,
    /// How long an agent's lease (the right to run its upstream session) lasts unrenewed:
    /// after a replica dies, another takes its agents over within about this long.
    #[arg(long, env = "GATEWAY_LEASE_TTL", default_value = "5s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// How often an owner renews its leases (under a third of --lease-ttl, so two renewals
    /// may fail before the lease runs out).
    #[arg(long, env = "GATEWAY_LEASE_RENEW", default_value = "1s", value_parser = parse_duration)]
    pub lease_renew: Duration,
    /// Listen address of the embedded simulator (`demo` only; loopback only).
    #[arg(long, env = "SIMULATOR_LISTEN", default_value = "127.0.0.1:0")]
    pub simulator_listen: SocketAddr,
}

impl ServeArgs {
    /// `--replay-max-events`, or its default: four stream buffers.
    pub fn replay_max_events(&self) -> usize {
        self.replay_max_events
            .unwrap_or_else(|| self.stream_buffer.saturating_mul(4))
    }
}

#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// HTTP listen address of the simulator (loopback only: its control API has no
    /// authentication).
    #[arg(long, env = "SIMULATOR_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// An agent as user:password (repeat or comma-separate). Default: agent1:password1,agent2:password2.
    #[arg(
        long = "agent",
        env = "SIMULATOR_AGENTS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub agents: Vec<String>,
    /// Turn GWS's CSRF protection off.
    #[arg(long)]
    pub no_csrf: bool,
    /// CometD long-poll timeout.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub cometd_timeout: Duration,
    /// CometD session lifetime without a connect.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub cometd_max_interval: Duration,
}

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

/// Which gateway: in front of a real GWS, or of the embedded simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Serve,
    Demo,
}

/// Validated `serve` / `demo` settings, TLS files already read.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub mode: Mode,
    pub args: ServeArgs,
    pub default_credential: Option<Credential>,
    /// The listener's TLS, when --tls-cert is given; reloadable.
    pub server_tls: Option<ReloadableTls>,
    /// Extra trust and identity towards GWS.
    pub upstream_tls: UpstreamTls,
    /// Cluster mode (`--nats-url`), validated; connecting is checked at start.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl ServeConfig {
    pub fn from_args(args: ServeArgs) -> Result<Self, String> {
        Self::new(Mode::Serve, args)
    }

    pub fn new(mode: Mode, args: ServeArgs) -> Result<Self, String> {
        match (mode, &args.gws_url) {
            (Mode::Serve, None) => {
                let demo = if cfg!(feature = "demo") {
                    "; run `demo` for the embedded simulator"
                } else {
                    ""
                };
                return Err(format!(
                    "serve needs --gws-url (or GWS_URL), the GWS to talk to{demo}"
                ));
            }
            (Mode::Demo, Some(_)) => {
                return Err("demo runs the embedded simulator and takes no --gws-url \
                    (GWS_URL is set?); run `serve` to use a real GWS"
                    .into());
            }
            _ => {}
        }
        if mode == Mode::Demo && !args.simulator_listen.ip().is_loopback() {
            return Err(format!(
                "--simulator-listen must be a loopback address (its control API has no \
                 authentication), got {}",
                args.simulator_listen
            ));
        }
        for (name, extra) in [
            ("--metrics-listen", args.metrics_listen),
            ("--health-listen", args.health_listen),
        ] {
            if let Some(extra) = extra
                && extra.port() != 0
                && extra.port() == args.listen.port()
            {
                return Err(format!(
                    "{name} {extra} uses the port of --listen {}",
                    args.listen
                ));
            }
        }
        if let (Some(metrics), Some(health)) = (args.metrics_listen, args.health_listen)
            && metrics.port() != 0
            && metrics.port() == health.port()
        {
            return Err(format!(
                "--health-listen {health} uses the port of --metrics-listen {metrics}"
            ));
        }
        if !args.notifications_path.starts_with('/') {
            return Err(format!(
                "--notifications-path must start with '/', got {:?}",
                args.notifications_path
            ));
        }
        if args.channels.is_empty()
            || args
                .channels
                .iter()
                .any(|c| !c.starts_with('/') || c.starts_with("/meta/"))
        {
            return Err(
                "--channel must be one or more channel names like /v2/me/smssessions".into(),
            );
        }
        for (name, value) in [
            ("--max-agents", args.max_agents),
            ("--stream-buffer", args.stream_buffer),
            ("--replay-budget-mib", args.replay_budget_mib),
            ("--max-outcome-waits", args.max_outcome_waits),
            ("--max-streams-per-agent", args.max_streams_per_agent),
            ("--new-agent-burst", args.new_agent_burst as usize),
            ("--new-agent-concurrency", args.new_agent_concurrency),
        ] {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        // The honest-resume rule: a client that disconnects with a full queue resumes from
        // up to --stream-buffer events back, so the buffer must hold at least that many
        // (a stream cut for being slow is pinned on top of this).
        if args.replay_max_events() < args.stream_buffer {
            return Err(format!(
                "--replay-max-events ({}) must be at least --stream-buffer ({}): a stream's \
                 queued events must stay resumable",
                args.replay_max_events(),
                args.stream_buffer
            ));
        }
        if !(args.new_agent_rate.is_finite() && args.new_agent_rate > 0.0) {
            return Err("--new-agent-rate must be a number of checks per second above 0".into());
        }
        if args.upstream_timeout.is_zero() {
            return Err("--upstream-timeout must be more than 0".into());
        }
        if args.outcome_timeout.is_zero() {
            return Err("--outcome-timeout must be more than 0".into());
        }
        let default_credential = match (&args.default_user, &args.default_password) {
            (None, None) => None,
            (Some(user), Some(password)) => Some(
                Credential::new(user.clone(), password.clone())
                    .map_err(|e| format!("--default-user: {e}"))?,
            ),
            _ => return Err("--default-user and --default-password go together".into()),
        };
        let server_tls = match (&args.tls_cert, &args.tls_key) {
            (None, None) if args.tls_client_ca.is_some() => {
                return Err("--tls-client-ca needs --tls-cert and --tls-key".into());
            }
            (None, None) => None,
            (Some(cert), Some(key)) => Some(
                ReloadableTls::load(ServerTlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: args.tls_client_ca.clone(),
                })
                .map_err(|e| format!("TLS: {e}"))?,
            ),
            _ => return Err("--tls-cert and --tls-key go together".into()),
        };
        let upstream_tls = UpstreamTls::load(
            args.gws_ca.as_deref(),
            args.gws_client_cert.as_deref(),
            args.gws_client_key.as_deref(),
        )
        .map_err(|e| format!("GWS TLS: {e}"))?;
        let cluster = cluster_config(&args)?;
        Ok(Self {
            mode,
            args,
            default_credential,
            server_tls,
            upstream_tls,
            cluster,
        })
    }

    /// The CometD endpoint URL.
    pub fn notifications_url(&self, base: &reqwest::Url) -> reqwest::Url {
        let mut url = base.clone();
        let path = format!(
            "{}{}",
            base.path().trim_end_matches('/'),
            self.args.notifications_path
        );
        url.set_path(&path);
        url
    }
}

/// The cluster flags, checked together: the URL here (not a clap value parser, so a bad one
/// is exit 64 like any unusable setting); whether NATS answers is checked at start.
fn cluster_config(args: &ServeArgs) -> Result<Option<crate::cluster::ClusterConfig>, String> {
    let Some(urls) = &args.nats_url else {
        let stray = [
            ("--nats-user", args.nats_user.is_some()),
            ("--nats-password", args.nats_password.is_some()),
            ("--nats-token", args.nats_token.is_some()),
            ("--nats-ca", args.nats_ca.is_some()),
            ("--cluster-secret", args.cluster_secret.is_some()),
        ];
        if let Some((name, _)) = stray.iter().find(|(_, given)| *given) {
            return Err(format!("{name} needs --nats-url (cluster mode)"));
        }
        return Ok(None);
    };
    let mut servers = Vec::new();
    for text in urls.split(',').map(str::trim) {
        let url: reqwest::Url = text
            .parse()
            .map_err(|e| format!("--nats-url {text:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "nats" | "tls") || url.host_str().is_none_or(str::is_empty) {
            return Err(format!(
                "--nats-url {text:?} must be a nats:// or tls:// URL with a host, e.g. nats://nats:4222"
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "--nats-url must not contain user:password@: give --nats-user and --nats-password"
                    .into(),
            );
        }
        servers.push(url.to_string());
    }
    let auth = match (&args.nats_user, &args.nats_password, &args.nats_token) {
        (None, None, None) => crate::cluster::NatsAuth::None,
        (Some(user), Some(password), None) => {
            crate::cluster::NatsAuth::UserPassword(user.clone(), password.clone())
        }
        (None, None, Some(token)) => crate::cluster::NatsAuth::Token(token.clone()),
        (_, _, Some(_)) => {
            return Err("--nats-token and --nats-user are alternatives: give one".into());
        }
        _ => return Err("--nats-user and --nats-password go together".into()),
    };
    if let Some(ca) = &args.nats_ca {
        std::fs::metadata(ca).map_err(|e| format!("--nats-ca {}: {e}", ca.display()))?;
    }
    let secret = match &args.cluster_secret {
        Some(s) if s.len() >= 16 => s.clone(),
        Some(_) => return Err("--cluster-secret must be at least 16 bytes".into()),
        None => {
            return Err("--nats-url needs --cluster-secret (GATEWAY_CLUSTER_SECRET), the secret every replica shares".into());
        }
    };
    if args.lease_renew.is_zero() || args.lease_renew.saturating_mul(3) > args.lease_ttl {
        return Err(format!(
            "--lease-renew ({:?}) must be above 0 and at most a third of --lease-ttl ({:?})",
            args.lease_renew, args.lease_ttl
        ));
    }
    if !(1..=5).contains(&args.nats_replicas) {
        return Err("--nats-replicas must be 1 to 5 (JetStream's limit)".into());
    }
    Ok(Some(crate::cluster::ClusterConfig {
        replicas: args.nats_replicas,
        servers,
        auth,
        ca: args.nats_ca.clone(),
        secret,
        lease_ttl: args.lease_ttl,
        lease_renew: args.lease_renew,
        replay_max_events: args.replay_max_events(),
        replay_max_bytes: args.replay_budget_mib.saturating_mul(1024 * 1024),
        replay_max_age: args.replay_max_age,
    }))
}

/// Validated `simulate` agents (and its address: loopback only).
#[cfg(feature = "demo")]
pub fn simulator_agents(args: &SimulateArgs) -> Result<Vec<(String, String)>, String> {
    if !args.listen.ip().is_loopback() {
        return Err(format!(
            "--listen must be a loopback address (the simulator's control API has no \
             authentication), got {}",
            args.listen
        ));
    }
    if args.agents.is_empty() {
        return Ok(gws_simulator::default_agents());
    }
    args.agents
        .iter()
        .map(|a| match a.split_once(':') {
            Some((u, p)) if !u.is_empty() => Ok((u.to_string(), p.to_string())),
            _ => Err("--agent must be user:password".to_string()),
        })
        .collect()
}

fn parse_url(text: &str) -> Result<reqwest::Url, String> {
    let url: reqwest::Url = text.parse().map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    // Credentials in the URL would be sent instead of each caller's own (and be logged).
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain user:password@; callers send their own credentials".into());
    }
    Ok(url)
}

/// An OTLP collector endpoint: http(s) with a host.
fn parse_endpoint(text: &str) -> Result<reqwest::Url, String> {
    let url: reqwest::Url = text.parse().map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    Ok(url)
}

/// Parses `500ms`, `10s`, `5m`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 10s, 5m"))?;
    let seconds = |mult: u64| n.checked_mul(mult).map(Duration::from_secs);
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => Some(Duration::from_secs(n)),
        "m" => seconds(60),
        "h" => seconds(3600),
        _ => None,
    }
    .ok_or_else(|| format!("{text:?} is not a duration like 500ms, 10s, 5m"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(mode: &str, args: &[&str]) -> Result<ServeConfig, String> {
        let mut all = vec!["gws-sms-gateway", mode];
        all.extend_from_slice(args);
        let cli = Cli::try_parse_from(all).map_err(|e| e.to_string())?;
        match cli.command {
            Some(Command::Serve(a)) => ServeConfig::new(Mode::Serve, a),
            Some(Command::Demo(a)) => ServeConfig::new(Mode::Demo, a),
            _ => unreachable!(),
        }
    }

    /// `serve` with a valid upstream, plus `args`.
    fn serve(args: &[&str]) -> Result<ServeConfig, String> {
        let mut all = vec!["--gws-url", "http://gws:8080"];
        all.extend_from_slice(args);
        parse("serve", &all)
    }

    #[test]
    fn modes_are_explicit() {
        let err = parse("serve", &[]).unwrap_err();
        assert!(err.contains("--gws-url"), "{err}");
        assert_eq!(parse("demo", &[]).unwrap().mode, Mode::Demo);
        assert!(parse("demo", &["--gws-url", "http://gws"]).is_err());
        let err = parse("demo", &["--simulator-listen", "0.0.0.0:0"]).unwrap_err();
        assert!(err.contains("loopback"), "{err}");
        assert!(parse("demo", &["--simulator-listen", "[::1]:0"]).is_ok());
        assert!(
            serve(&[
                "--listen",
                "0.0.0.0:9000",
                "--metrics-listen",
                "0.0.0.0:9000"
            ])
            .is_err()
        );
        let sim = |listen: &str| SimulateArgs {
            listen: listen.parse().unwrap(),
            agents: vec![],
            no_csrf: false,
            cometd_timeout: Duration::from_secs(1),
            cometd_max_interval: Duration::from_secs(1),
        };
        assert!(simulator_agents(&sim("0.0.0.0:8090")).is_err());
        assert!(simulator_agents(&sim("127.0.0.1:8090")).is_ok());
    }

    #[test]
    fn tls_files_are_checked_before_anything_binds() {
        let err = serve(&[
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ])
        .unwrap_err();
        assert!(err.contains("/nonexistent/cert.pem"), "{err}");
        assert!(serve(&["--tls-cert", "/nonexistent/cert.pem"]).is_err());
        assert!(serve(&["--tls-client-ca", "/nonexistent/ca.pem"]).is_err());
        assert!(serve(&["--gws-ca", "/nonexistent/ca.pem"]).is_err());
        assert!(serve(&["--gws-client-cert", "/nonexistent/c.pem"]).is_err());
        assert!(serve(&["--otlp-endpoint", "collector:4317"]).is_err());
    }

    #[test]
    fn the_replay_buffer_is_sized_from_the_stream_buffer() {
        let defaults = serve(&[]).unwrap();
        assert_eq!(defaults.args.replay_max_events(), 1024);
        let sized = serve(&["--stream-buffer", "100"]).unwrap();
        assert_eq!(sized.args.replay_max_events(), 400);
        let err = serve(&["--stream-buffer", "100", "--replay-max-events", "99"]).unwrap_err();
        assert!(err.contains("at least --stream-buffer"), "{err}");
        assert!(serve(&["--stream-buffer", "100", "--replay-max-events", "100"]).is_ok());
    }

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

    #[test]
    fn each_command_lists_its_own_flags() {
        use clap::CommandFactory;
        let help = |path: &[&str]| {
            let mut command = Cli::command();
            command.build();
            let mut sub = &mut command;
            for name in path {
                sub = sub.find_subcommand_mut(name).unwrap();
            }
            sub.render_long_help().to_string()
        };
        let serve = help(&["serve"]);
        assert!(serve.contains("--gws-url") && !serve.contains("--simulator-listen"));
        let demo = help(&["demo"]);
        assert!(demo.contains("--simulator-listen") && !demo.contains("--gws-url"));
        for flag in ["--addr", "--user", "--password"] {
            assert!(help(&["client", "accept"]).contains(flag), "{flag}");
        }
        // The flags of the client go before or after its command.
        let cli = Cli::try_parse_from([
            "gws-sms-gateway",
            "client",
            "sessions",
            "--user",
            "agent1",
            "--addr",
            "127.0.0.1:1",
        ])
        .unwrap();
        let Some(Command::Client(args)) = cli.command else {
            unreachable!()
        };
        assert_eq!(args.user.as_deref(), Some("agent1"));
        assert_eq!(args.addr.to_string(), "http://127.0.0.1:1");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn validates_serve_settings() {
        let ok = parse("serve", &["--gws-url", "http://gws:8080/base"]).unwrap();
        assert_eq!(
            ok.notifications_url(ok.args.gws_url.as_ref().unwrap())
                .as_str(),
            "http://gws:8080/base/api/v2/notifications"
        );
        assert!(parse("serve", &["--gws-url", "ftp://x"]).is_err());
        assert!(parse("serve", &["--gws-url", "http://svc:secret@gws:8080"]).is_err());
        assert!(serve(&["--listen", "nowhere"]).is_err());
        assert!(serve(&["--notifications-path", "x"]).is_err());
        assert!(serve(&["--channel", "/meta/connect"]).is_err());
        assert!(serve(&["--default-user", "a"]).is_err());
        assert!(serve(&["--stream-buffer", "0"]).is_err());
        assert!(serve(&["--new-agent-rate", "0"]).is_err());
        assert!(serve(&["--new-agent-rate", "NaN"]).is_err());
        assert!(serve(&["--new-agent-burst", "0"]).is_err());
        assert!(serve(&["--max-streams-per-agent", "0"]).is_err());
        let d = serve(&[]).unwrap();
        assert_eq!(
            (d.args.max_agents, d.args.max_streams_per_agent),
            (10_000, 10_000)
        );
        assert_eq!((d.args.new_agent_rate, d.args.new_agent_burst), (50.0, 100));
        assert_eq!(d.args.new_agent_concurrency, 64);
        assert!(serve(&["--new-agent-concurrency", "0"]).is_err());
        let d = serve(&["--default-user", "a", "--default-password", "b"]).unwrap();
        assert_eq!(d.default_credential.unwrap().user(), "a");
    }

    #[test]
    fn validates_cluster_settings() {
        const SECRET: &str = "0123456789abcdef";
        assert!(
            serve(&[]).unwrap().cluster.is_none(),
            "single process by default"
        );
        let c = serve(&[
            "--nats-url",
            "nats://a:4222, tls://b:4222",
            "--cluster-secret",
            SECRET,
        ])
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.servers, ["nats://a:4222", "tls://b:4222"]);
        assert_eq!(
            (c.lease_ttl, c.lease_renew),
            (Duration::from_secs(5), Duration::from_secs(1))
        );
        assert_eq!(
            c.replay_max_events, 1024,
            "retention follows the replay flags"
        );
        let bad = |args: &[&str]| {
            let mut all = vec!["--cluster-secret", SECRET];
            all.extend_from_slice(args);
            serve(&all).unwrap_err()
        };
        assert!(bad(&["--nats-url", "http://a:4222"]).contains("nats://"));
        assert!(bad(&["--nats-url", "not a url"]).contains("not a URL"));
        assert!(bad(&["--nats-url", "nats://u:p@a:4222"]).contains("--nats-user"));
        assert!(bad(&["--nats-url", "nats://a", "--nats-user", "u"]).contains("together"));
        assert!(
            bad(&[
                "--nats-url",
                "nats://a",
                "--nats-token",
                "t",
                "--nats-user",
                "u"
            ])
            .contains("alternatives")
        );
        assert!(bad(&["--nats-url", "nats://a", "--lease-renew", "2s"]).contains("third"));
        assert!(
            bad(&["--nats-url", "nats://a", "--nats-ca", "/nonexistent"]).contains("--nats-ca")
        );
        assert!(bad(&[]).contains("needs --nats-url"), "a secret alone");
        assert!(
            serve(&["--nats-url", "nats://a"])
                .unwrap_err()
                .contains("--cluster-secret")
        );
        assert!(
            serve(&["--nats-url", "nats://a", "--cluster-secret", "short"])
                .unwrap_err()
                .contains("16 bytes")
        );
        // The secret is never printed.
        let c = serve(&["--nats-url", "nats://a", "--cluster-secret", SECRET]).unwrap();
        assert!(!format!("{:?}", c.cluster).contains(SECRET));
    }
}
