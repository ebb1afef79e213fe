//! Command line and environment, validated before any port is bound. A command line that does
//! not parse gets clap's whole message (what is wrong, the usage, its tips) and exit code 2; a
//! configuration that parses but cannot be used is one clear line and exit code 64 (EX_USAGE).

use crate::client::args::ClientArgs;
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

/// A secret flag's value: its `Debug` (and so any `{:?}` of the arguments) never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted(pub String);

impl std::str::FromStr for Redacted {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
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
    /// REST calls to GWS in flight at once (each holds an upstream connection); beyond, a
    /// call waits for a slot in arrival order, within its deadline and --upstream-timeout,
    /// and one that never got a slot is refused having sent nothing [default: half of the
    /// open-files budget, see README "Production"].
    #[arg(long, env = "GATEWAY_UPSTREAM_MAX_IN_FLIGHT")]
    pub upstream_max_in_flight: Option<usize>,
    /// Event-feed requests to GWS in flight at once (CometD long-polls and handshakes, one
    /// per agent with streams, and stream snapshot reads): a share of their own, so unary
    /// calls never starve streams [default: an eighth of the open-files budget].
    #[arg(long, env = "GATEWAY_FEED_MAX_IN_FLIGHT")]
    pub feed_max_in_flight: Option<usize>,
    /// Connections per listener that have not finished their TLS handshake or sent the
    /// HTTP/2 preface yet; beyond, the oldest is closed [default: a sixteenth of the
    /// open-files budget, between 8 and 1,024].
    #[arg(long, env = "GATEWAY_MAX_PENDING_HANDSHAKES")]
    pub max_pending_handshakes: Option<usize>,
    /// A connection (gRPC or health listener, TLS or not) that has not sent the HTTP/2
    /// client preface (after its TLS handshake) within this is closed.
    #[arg(long, env = "GATEWAY_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// An idle pooled connection to GWS is closed after this (keep it below the idle
    /// timeout of whatever is in front of GWS).
    #[arg(long, env = "GWS_IDLE_TIMEOUT", default_value = "50s", value_parser = parse_duration)]
    pub upstream_idle_timeout: Duration,
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
    pub nats_password: Option<Redacted>,
    /// NATS authentication token (instead of --nats-user).
    #[arg(long, env = "GATEWAY_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<Redacted>,
    /// PEM CA certificate(s) trusted for a TLS NATS (tls:// URLs, or a server requiring TLS).
    #[arg(long, env = "GATEWAY_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// The secret every replica shares (at least 16 bytes): agents are keyed in NATS by a hash
    /// of their credential salted with it, so NATS never sees a credential nor a hash that
    /// could be tested against guessed passwords without it. Required with --nats-url.
    #[arg(long, env = "GATEWAY_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<Redacted>,
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

/// The bounds that keep the gateway within its open-files budget: as set, or sized from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub upstream_max_in_flight: usize,
    pub feed_max_in_flight: usize,
    pub max_pending_handshakes: usize,
}

impl ServeArgs {
    /// The bounds under `budget`, for those not set on the command line.
    pub fn bounds(&self, budget: &crate::descriptors::Budget) -> Bounds {
        Bounds {
            upstream_max_in_flight: self
                .upstream_max_in_flight
                .unwrap_or_else(|| budget.upstream_rest()),
            feed_max_in_flight: self
                .feed_max_in_flight
                .unwrap_or_else(|| budget.upstream_feed()),
            max_pending_handshakes: self
                .max_pending_handshakes
                .unwrap_or_else(|| budget.pending_handshakes()),
        }
    }

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

/// Why a `serve` / `demo` configuration cannot be used: printed as one line, exit 64.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("serve needs --gws-url (or GWS_URL), the GWS to talk to{}", if cfg!(feature = "demo") { "; run `demo` for the embedded simulator" } else { "" })]
    NoUpstream,
    #[error(
        "demo runs the embedded simulator and takes no --gws-url (GWS_URL is set?); run \
         `serve` to use a real GWS"
    )]
    DemoWithUpstream,
    #[error(
        "--simulator-listen must be a loopback address (its control API has no \
         authentication), got {0}"
    )]
    SimulatorNotLoopback(SocketAddr),
    /// Two listeners given the same port.
    #[error("{flag} {addr} uses the port of {other} {other_addr}")]
    SamePort {
        flag: &'static str,
        addr: SocketAddr,
        other: &'static str,
        other_addr: SocketAddr,
    },
    #[error("--notifications-path must start with '/', got {0:?}")]
    NotificationsPath(String),
    #[error("--channel must be one or more channel names like /v2/me/smssessions")]
    Channels,
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    // The honest-resume rule: see where it is checked.
    #[error(
        "--replay-max-events ({events}) must be at least --stream-buffer ({buffer}): a \
         stream's queued events must stay resumable"
    )]
    ReplayBelowBuffer { events: usize, buffer: usize },
    #[error("--new-agent-rate must be a number of checks per second above 0")]
    NewAgentRate,
    #[error("{0} must be more than 0")]
    ZeroDuration(&'static str),
    #[error("--default-user: {0}")]
    DefaultUser(crate::upstream::CredentialError),
    /// Two flags that only work together, one given alone.
    #[error("{0} and {1} go together")]
    Together(&'static str, &'static str),
    #[error("--tls-client-ca needs --tls-cert and --tls-key")]
    ClientCaAlone,
    #[error("TLS: {0}")]
    ServerTls(crate::tls::TlsError),
    #[error("GWS TLS: {0}")]
    UpstreamTls(crate::tls::TlsError),
    /// A cluster flag (`--nats-url` and the flags that go with it), said as one line.
    #[error("{0}")]
    Cluster(String),
}

impl ServeConfig {
    pub fn from_args(args: ServeArgs) -> Result<Self, ConfigError> {
        Self::new(Mode::Serve, args)
    }

    pub fn new(mode: Mode, args: ServeArgs) -> Result<Self, ConfigError> {
        match (mode, &args.gws_url) {
            (Mode::Serve, None) => return Err(ConfigError::NoUpstream),
            (Mode::Demo, Some(_)) => return Err(ConfigError::DemoWithUpstream),
            _ => {}
        }
        if mode == Mode::Demo && !args.simulator_listen.ip().is_loopback() {
            return Err(ConfigError::SimulatorNotLoopback(args.simulator_listen));
        }
        for (flag, extra) in [
            ("--metrics-listen", args.metrics_listen),
            ("--health-listen", args.health_listen),
        ] {
            if let Some(addr) = extra
                && addr.port() != 0
                && addr.port() == args.listen.port()
            {
                return Err(ConfigError::SamePort {
                    flag,
                    addr,
                    other: "--listen",
                    other_addr: args.listen,
                });
            }
        }
        if let (Some(metrics), Some(health)) = (args.metrics_listen, args.health_listen)
            && metrics.port() != 0
            && metrics.port() == health.port()
        {
            return Err(ConfigError::SamePort {
                flag: "--health-listen",
                addr: health,
                other: "--metrics-listen",
                other_addr: metrics,
            });
        }
        if !args.notifications_path.starts_with('/') {
            return Err(ConfigError::NotificationsPath(
                args.notifications_path.clone(),
            ));
        }
        if args.channels.is_empty()
            || args
                .channels
                .iter()
                .any(|c| !c.starts_with('/') || c.starts_with("/meta/"))
        {
            return Err(ConfigError::Channels);
        }
        for (name, value) in [
            ("--max-agents", args.max_agents),
            ("--stream-buffer", args.stream_buffer),
            ("--replay-budget-mib", args.replay_budget_mib),
            ("--max-outcome-waits", args.max_outcome_waits),
            ("--max-streams-per-agent", args.max_streams_per_agent),
            ("--new-agent-burst", args.new_agent_burst as usize),
            ("--new-agent-concurrency", args.new_agent_concurrency),
            (
                "--upstream-max-in-flight",
                args.upstream_max_in_flight.unwrap_or(1),
            ),
            ("--feed-max-in-flight", args.feed_max_in_flight.unwrap_or(1)),
            (
                "--max-pending-handshakes",
                args.max_pending_handshakes.unwrap_or(1),
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        // The honest-resume rule: a client that disconnects with a full queue resumes from
        // up to --stream-buffer events back, so the buffer must hold at least that many
        // (a stream cut for being slow is pinned on top of this).
        if args.replay_max_events() < args.stream_buffer {
            return Err(ConfigError::ReplayBelowBuffer {
                events: args.replay_max_events(),
                buffer: args.stream_buffer,
            });
        }
        if !(args.new_agent_rate.is_finite() && args.new_agent_rate > 0.0) {
            return Err(ConfigError::NewAgentRate);
        }
        for (name, value) in [
            ("--upstream-timeout", args.upstream_timeout),
            ("--outcome-timeout", args.outcome_timeout),
            ("--handshake-timeout", args.handshake_timeout),
            ("--upstream-idle-timeout", args.upstream_idle_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        let default_credential = match (&args.default_user, &args.default_password) {
            (None, None) => None,
            (Some(user), Some(password)) => Some(
                Credential::new(user.clone(), password.clone())
                    .map_err(ConfigError::DefaultUser)?,
            ),
            _ => {
                return Err(ConfigError::Together(
                    "--default-user",
                    "--default-password",
                ));
            }
        };
        let server_tls = match (&args.tls_cert, &args.tls_key) {
            (None, None) if args.tls_client_ca.is_some() => {
                return Err(ConfigError::ClientCaAlone);
            }
            (None, None) => None,
            (Some(cert), Some(key)) => Some(
                ReloadableTls::load(ServerTlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: args.tls_client_ca.clone(),
                })
                .map_err(ConfigError::ServerTls)?,
            ),
            _ => return Err(ConfigError::Together("--tls-cert", "--tls-key")),
        };
        let upstream_tls = UpstreamTls::load(
            args.gws_ca.as_deref(),
            args.gws_client_cert.as_deref(),
            args.gws_client_key.as_deref(),
        )
        .map_err(ConfigError::UpstreamTls)?;
        let cluster = cluster_config(&args).map_err(ConfigError::Cluster)?;
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
            crate::cluster::NatsAuth::UserPassword(user.clone(), password.0.clone())
        }
        (None, None, Some(token)) => crate::cluster::NatsAuth::Token(token.0.clone()),
        (_, _, Some(_)) => {
            return Err("--nats-token and --nats-user are alternatives: give one".into());
        }
        _ => return Err("--nats-user and --nats-password go together".into()),
    };
    if let Some(ca) = &args.nats_ca {
        std::fs::metadata(ca).map_err(|e| format!("--nats-ca {}: {e}", ca.display()))?;
    }
    let secret = match &args.cluster_secret {
        Some(Redacted(s)) if s.len() >= 16 => s.clone(),
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
            Some(Command::Serve(a)) => ServeConfig::new(Mode::Serve, a).map_err(|e| e.to_string()),
            Some(Command::Demo(a)) => ServeConfig::new(Mode::Demo, a).map_err(|e| e.to_string()),
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
    fn bounds_are_sized_from_the_open_files_budget_unless_set() {
        let budget = crate::descriptors::Budget::new(1024);
        let sized = serve(&[]).unwrap().args.bounds(&budget);
        assert_eq!(
            sized,
            Bounds {
                upstream_max_in_flight: budget.upstream_rest(),
                feed_max_in_flight: budget.upstream_feed(),
                max_pending_handshakes: budget.pending_handshakes(),
            }
        );
        let set = serve(&[
            "--upstream-max-in-flight",
            "7",
            "--feed-max-in-flight",
            "8",
            "--max-pending-handshakes",
            "9",
        ])
        .unwrap()
        .args
        .bounds(&budget);
        assert_eq!(
            set,
            Bounds {
                upstream_max_in_flight: 7,
                feed_max_in_flight: 8,
                max_pending_handshakes: 9,
            }
        );
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
        assert_eq!(d.args.handshake_timeout, Duration::from_secs(10));
        assert!(serve(&["--handshake-timeout", "0"]).is_err());
        assert!(serve(&["--upstream-idle-timeout", "0"]).is_err());
        for flag in [
            "--upstream-max-in-flight",
            "--feed-max-in-flight",
            "--max-pending-handshakes",
        ] {
            let err = serve(&[flag, "0"]).unwrap_err();
            assert!(err.contains(flag), "{err}");
        }
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
        // Nor are they in the parsed arguments, nor the NATS password or token.
        let cli = Cli::try_parse_from([
            "gws-sms-gateway",
            "serve",
            "--cluster-secret",
            SECRET,
            "--nats-user",
            "u",
            "--nats-password",
            "a-nats-password",
            "--nats-token",
            "a-nats-token",
        ])
        .unwrap();
        let printed = format!("{cli:?}");
        for secret in [SECRET, "a-nats-password", "a-nats-token"] {
            assert!(!printed.contains(secret), "{printed}");
        }
        let auth = crate::cluster::NatsAuth::UserPassword("u".into(), "a-nats-password".into());
        assert!(!format!("{auth:?}").contains("a-nats-password"));
    }
}
