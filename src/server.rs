//! Assembles the gateway: the service, health (`grpc.health.v1`, for `""` and the service
//! name), reflection (v1 and v1alpha, the google.rpc error details included), the per-RPC
//! trace span and metrics layers, TLS on the listener (reloaded on SIGHUP), the metrics
//! endpoint, the embedded simulator in `demo` mode, and the shutdown protocol: signal ->
//! health NOT_SERVING -> streams told (UNAVAILABLE) -> stop accepting, in-flight calls finish
//! -> bounded drain (reported when it runs out) -> upstream sessions disconnected.

use crate::config::{Mode, ServeConfig};
use crate::events::{EventsConfig, EventsHub};
use crate::grpc::{SmsSessionApi, deadline};
use crate::metrics::GrpcMetricsLayer;
use crate::proto::sms_session_service_server::SmsSessionServiceServer;
use crate::telemetry::TraceLayer;
use crate::upstream::{AgentRegistry, AgentsConfig, GwsClient};
#[cfg(feature = "demo")]
use gws_simulator::{self as simulator, SimulatorConfig, seed};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::net::TcpListener;

/// Largest request message accepted: 1,000 keys of 256 bytes fit with room to spare.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Longest wait for upstream CometD disconnects at shutdown.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);

/// The simulator `demo` embeds; a build without the `demo` feature has none to embed.
#[cfg(feature = "demo")]
type Embedded = gws_simulator::RunningSimulator;
#[cfg(not(feature = "demo"))]
type Embedded = std::convert::Infallible;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("could not start the embedded simulator: {0}")]
    Simulator(std::io::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    UpstreamClient(#[from] crate::upstream::ClientError),
    #[error("no --gws-url: only `demo` runs the embedded simulator")]
    NoUpstream,
    /// `--nats-url` given, and NATS could not be used (exit 64: a configuration error).
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// Calls were still in flight when the drain time ran out; they were cut.
    #[error("drain timed out after {0:?}: calls still in flight were cut")]
    DrainTimedOut(Duration),
}

/// The sockets the gateway serves on, already bound.
#[derive(Debug)]
pub struct Listeners {
    /// The gRPC API (TLS when configured).
    pub grpc: TcpListener,
    /// `GET /metrics`.
    pub metrics: Option<TcpListener>,
    /// Plaintext gRPC health only, for probes that cannot speak TLS.
    pub health: Option<TcpListener>,
}

impl Listeners {
    pub fn grpc(grpc: TcpListener) -> Self {
        Self {
            grpc,
            metrics: None,
            health: None,
        }
    }
}

/// Runs the gateway on `listener` (and metrics and health on `--metrics-listen` and
/// `--health-listen`, bound here) until `shutdown` completes, then drains.
pub async fn run(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let bind = |addr: Option<std::net::SocketAddr>| async move {
        match addr {
            Some(addr) => TcpListener::bind(addr)
                .await
                .map(Some)
                .map_err(|source| ServerError::Listen { addr, source }),
            None => Ok(None),
        }
    };
    let listeners = Listeners {
        grpc: listener,
        metrics: bind(config.args.metrics_listen).await?,
        health: bind(config.args.health_listen).await?,
    };
    serve_on(config, listeners, shutdown).await
}

/// Runs the gateway on already bound listeners until `shutdown` completes, then drains.
pub async fn serve_on(
    config: ServeConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let Listeners {
        grpc: listener,
        metrics: metrics_listener,
        health: health_listener,
    } = listeners;
    let args = &config.args;
    let (gws_url, embedded) = match (&args.gws_url, config.mode) {
        (Some(url), _) => (url.clone(), None),
        (None, Mode::Serve) => return Err(ServerError::NoUpstream),
        // Without the simulator built in, `demo` cannot be chosen; it would have no upstream.
        #[cfg(not(feature = "demo"))]
        (None, Mode::Demo) => return Err(ServerError::NoUpstream),
        #[cfg(feature = "demo")]
        (None, Mode::Demo) => {
            let sim = simulator::start(&SimulatorConfig::default(), args.simulator_listen)
                .await
                .map_err(ServerError::Simulator)?;
            let url = sim.url.parse().expect("simulator URL is valid");
            (url, Some(sim))
        }
    };
    let agents = AgentRegistry::new(AgentsConfig {
        max_agents: args.max_agents,
        idle_ttl: args.agent_idle_ttl,
        tls: config.upstream_tls.clone(),
        plain_http: gws_url.scheme() == "http",
        new_agent_rate: args.new_agent_rate,
        new_agent_burst: args.new_agent_burst,
        new_agent_concurrency: args.new_agent_concurrency,
        trusted: config.default_credential.clone(),
        ..AgentsConfig::default()
    })?;
    let gws = GwsClient::new(gws_url.clone(), agents.clone());
    let mut events_config =
        EventsConfig::new(config.notifications_url(&gws_url), args.channels.clone());
    events_config.replay_max_events = args.replay_max_events();
    events_config.replay_max_age = args.replay_max_age;
    events_config.replay_max_bytes = args.replay_max_mib.saturating_mul(1024 * 1024);
    events_config.replay_budget_bytes = args.replay_budget_mib.saturating_mul(1024 * 1024);
    events_config.stream_buffer = args.stream_buffer;
    events_config.linger = args.linger;
    events_config.subscribe_timeout = args.subscribe_timeout;
    events_config.max_outcome_waits = args.max_outcome_waits;
    events_config.max_streams_per_agent = args.max_streams_per_agent;
    events_config.read_timeout = args.upstream_timeout;
    events_config.handover = args.drain_timeout;
    let cluster = match &config.cluster {
        Some(cluster) => Some(crate::cluster::Cluster::connect(cluster.clone()).await?),
        None => None,
    };
    let events = EventsHub::with_cluster(events_config, gws.clone(), cluster.clone());
    let api = SmsSessionApi::new(
        gws,
        events.clone(),
        config.default_credential.clone(),
        args.upstream_timeout,
        args.outcome_timeout,
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<SmsSessionServiceServer<SmsSessionApi>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // So grpcurl and friends decode ErrorInfo and BadRequest in error details.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let metrics_layer = GrpcMetricsLayer::from_descriptor_sets(
        &[
            crate::proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ],
        "gws.sms.v1.SmsSessionService",
    );

    let local = listener.local_addr().ok();
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    // Always watch SIGHUP: without TLS there is nothing to reload, but the signal's default
    // action would kill the gateway without a drain.
    let _reloader = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
        crate::tls::reload_on_sighup(config.server_tls.clone()),
    ));
    announce(
        local,
        &gws_url,
        embedded.as_ref(),
        config.server_tls.is_some(),
        metrics_addr,
    );

    let sweeper = tokio::spawn(sweep_agents(agents));
    // Cluster mode: NATS's state under its own health name; unary calls do not need NATS,
    // so the API's own status stays SERVING while it is down (see the README).
    let _nats_health = cluster.map(|c| {
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(report_nats(c, health.clone())))
    });
    let background = tokio_util::task::AbortOnDropHandle::new;
    let _metrics_server = metrics_listener.map(|l| {
        background(tokio::spawn(crate::metrics::serve(
            l,
            std::future::pending(),
        )))
    });
    // Health alone, in plaintext, for probes: it reports what the main listener's health
    // reports (the same reporter), and carries no credentials.
    let _health_server = health_listener.map(|l| {
        let service = health_service.clone();
        background(tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(crate::tls::plain_incoming(l))
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "health listener failed");
            }
        }))
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let router = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(256)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(TraceLayer)
        .layer(metrics_layer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(deadline::Stamped(
            SmsSessionServiceServer::new(api).max_decoding_message_size(MAX_REQUEST_BYTES),
        ));
    let stopped = async {
        let _ = stop_rx.await;
    };
    let serve: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
        match &config.server_tls {
            Some(tls) => Box::pin(router.serve_with_incoming_shutdown(
                crate::tls::tls_incoming(listener, tls.clone()),
                stopped,
            )),
            None => Box::pin(
                router.serve_with_incoming_shutdown(crate::tls::plain_incoming(listener), stopped),
            ),
        };
    tokio::pin!(serve);

    let result = tokio::select! {
        r = &mut serve => r.map_err(ServerError::from),
        () = shutdown => {
            tracing::info!("shutdown requested: health NOT_SERVING, ending streams, draining calls");
            health.set_not_serving::<SmsSessionServiceServer<SmsSessionApi>>().await;
            health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
            // Streams end promptly with UNAVAILABLE; unary calls in flight finish.
            let disconnect = events.shutdown(DISCONNECT_GRACE);
            let _ = stop_tx.send(());
            let drain = async {
                match tokio::time::timeout(args.drain_timeout, &mut serve).await {
                    Ok(r) => r.map_err(ServerError::from),
                    Err(_) => {
                        tracing::warn!(drain_timeout = ?args.drain_timeout, "drain timed out; closing remaining calls");
                        Err(ServerError::DrainTimedOut(args.drain_timeout))
                    }
                }
            };
            let (r, ()) = tokio::join!(drain, disconnect);
            r
        }
    };
    sweeper.abort();
    #[cfg(feature = "demo")]
    if let Some(sim) = embedded {
        sim.shutdown().await;
    }
    #[cfg(not(feature = "demo"))]
    let _: Option<Embedded> = embedded;
    tracing::info!("gateway stopped");
    result
}

fn announce(
    local: Option<std::net::SocketAddr>,
    gws_url: &reqwest::Url,
    embedded: Option<&Embedded>,
    tls: bool,
    metrics: Option<std::net::SocketAddr>,
) {
    let addr = local.map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(listen = %addr, upstream = %gws_url, tls, "gateway serving gRPC");
    if let Some(metrics) = metrics {
        tracing::info!(metrics = %format!("http://{metrics}/metrics"), "metrics serving");
    }
    #[cfg(not(feature = "demo"))]
    let _ = embedded;
    #[cfg(feature = "demo")]
    if embedded.is_some() {
        tracing::warn!(
            "DEMO MODE: the upstream is the embedded GWS simulator with well-known passwords, \
             not a real GWS; run `serve --gws-url URL` for production"
        );
        let (user, password) = &simulator::default_agents()[0];
        // The command as this process was started (`target/release/gws-sms-gateway` under
        // `cargo run`), so the hint works whether or not the binary is on PATH.
        let me = std::env::args()
            .next()
            .unwrap_or_else(|| "gws-sms-gateway".into());
        tracing::info!(
            simulator = %gws_url,
            "demo: started the embedded GWS simulator (agents agent1/password1, agent2/password2). \
             Try: {me} client --addr http://{addr} --user {user} --password {password} \
             delete-user-data --session {} --key UserData1",
            seed::SEED_SESSION_ID
        );
        tracing::info!(
            "make a customer's SMS arrive (a new Invited session to accept): \
             curl -X POST {}simulator/agents/{user}/smssessions -d '{{\"text\":\"Hi\"}}'",
            gws_url
        );
    }
}

/// The health name that says whether this replica's NATS connection is up.
pub const NATS_HEALTH: &str = "gws.sms.v1.Cluster";

async fn report_nats(
    cluster: crate::cluster::Cluster,
    health: tonic_health::server::HealthReporter,
) {
    let mut link = cluster.link();
    loop {
        let status = match *link.borrow_and_update() {
            crate::cluster::Link::Up => tonic_health::ServingStatus::Serving,
            crate::cluster::Link::Down => tonic_health::ServingStatus::NotServing,
        };
        health.set_service_status(NATS_HEALTH, status).await;
        if link.changed().await.is_err() {
            return;
        }
    }
}

/// Forgets idle agents' upstream state now and then.
async fn sweep_agents(agents: AgentRegistry) {
    let period = (agents.idle_ttl() / 2).max(Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let forgotten = agents.sweep();
        if forgotten > 0 {
            tracing::debug!(forgotten, "idle agents' upstream state forgotten");
        }
    }
}
