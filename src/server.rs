//! Assembles the gateway in [`serve_on`]'s three steps. Build: the open-files budget and the
//! bounds sized from it, the upstream (or the embedded simulator in `demo` mode), the event
//! hub, the service. Route: health (`grpc.health.v1`, for `""` and the service name),
//! reflection (v1 and v1alpha, the google.rpc error details included), the per-RPC trace span
//! and metrics layers, TLS on the listener (reloaded on SIGHUP), beside them the metrics
//! endpoint and the plaintext health listener. Drain: the shutdown protocol, signal -> health
//! NOT_SERVING -> streams told (UNAVAILABLE) -> stop accepting, in-flight calls finish ->
//! bounded drain (reported when it runs out) -> upstream sessions disconnected.

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
// tonic-health's service is generic over an opaque `Health`: the steps below take it so.
use tonic_health::pb::health_server::{Health, HealthServer};

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

/// Runs the gateway on already bound listeners until `shutdown` completes, then drains: the
/// three steps below, in order.
pub async fn serve_on(
    config: ServeConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let Listeners {
        grpc,
        metrics,
        health: health_listener,
    } = listeners;
    let gateway = build(&config).await?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<SmsSessionServiceServer<SmsSessionApi>>()
        .await;
    // Always watch SIGHUP: without TLS there is nothing to reload, but the signal's default
    // action would kill the gateway without a drain.
    let _reloader = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
        crate::tls::reload_on_sighup(config.server_tls.clone()),
    ));
    announce(
        grpc.local_addr().ok(),
        &gateway.gws_url,
        gateway.embedded.as_ref(),
        config.server_tls.is_some(),
        metrics.as_ref().and_then(|l| l.local_addr().ok()),
    );
    let _side = side_servers(metrics, health_listener, &health_service, gateway.accept);
    // Cluster mode: NATS's state under its own health name; unary calls do not need NATS,
    // so the API's own status stays SERVING while it is down (see the README).
    let _nats_health = gateway.cluster.clone().map(|c| {
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(report_nats(c, health.clone())))
    });
    let sweeper = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(sweep_agents(
        gateway.agents.clone(),
    )));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = route(
        &config,
        gateway.api,
        health_service,
        grpc,
        gateway.accept,
        async {
            let _ = stop_rx.await;
        },
    )?;
    let result = drain(
        serve,
        shutdown,
        Drain {
            health,
            events: &gateway.events,
            stop: stop_tx,
            timeout: config.args.drain_timeout,
        },
    )
    .await;
    drop(sweeper);
    #[cfg(feature = "demo")]
    if let Some(sim) = gateway.embedded {
        sim.shutdown().await;
    }
    #[cfg(not(feature = "demo"))]
    let _: Option<Embedded> = gateway.embedded;
    tracing::info!("gateway stopped");
    result
}

/// What the gateway is made of before it serves: its upstream (a real GWS, or the embedded
/// simulator), the agents' registry, the event hub and the API, every bound sized from the
/// open-files limit in effect.
struct Gateway {
    gws_url: reqwest::Url,
    embedded: Option<Embedded>,
    /// Cluster mode's NATS connection (`--nats-url`).
    cluster: Option<crate::cluster::Cluster>,
    agents: AgentRegistry,
    events: EventsHub,
    api: SmsSessionApi,
    accept: crate::accept::Limits,
}

/// Step 1: builds the gateway from its configuration.
async fn build(config: &ServeConfig) -> Result<Gateway, ServerError> {
    let args = &config.args;
    // Before anything opens a descriptor it could be refused: every bound below is sized
    // from the limit in effect.
    let raised = crate::descriptors::raise();
    let bounds = args.bounds(&crate::descriptors::Budget::new(raised.limit));
    announce_budget(raised, bounds);
    let accept = crate::accept::Limits {
        handshake_timeout: args.handshake_timeout,
        max_pending: bounds.max_pending_handshakes,
    };
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
        pool_idle_timeout: args.upstream_idle_timeout,
        ..AgentsConfig::default()
    })?;
    let gws = GwsClient::new(gws_url.clone(), agents.clone())
        .with_limits(bounds.upstream_max_in_flight, bounds.feed_max_in_flight);
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
    Ok(Gateway {
        gws_url,
        embedded,
        cluster,
        agents,
        events,
        api,
        accept,
    })
}

/// The metrics endpoint and the plaintext health listener, each a background task that ends
/// when the returned handles are dropped.
fn side_servers<H: Health>(
    metrics: Option<TcpListener>,
    health: Option<TcpListener>,
    health_service: &HealthServer<H>,
    accept: crate::accept::Limits,
) -> Vec<tokio_util::task::AbortOnDropHandle<()>> {
    let background = tokio_util::task::AbortOnDropHandle::new;
    let mut tasks = Vec::new();
    if let Some(l) = metrics {
        tasks.push(background(tokio::spawn(crate::metrics::serve(
            l,
            std::future::pending(),
        ))));
    }
    // Health alone, in plaintext, for probes: it reports what the main listener's health
    // reports (the same reporter), and carries no credentials.
    if let Some(l) = health {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(health = %addr, "plaintext health serving");
        }
        let service = health_service.clone();
        tasks.push(background(tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(crate::accept::plain(
                    l,
                    crate::accept::Listener::Health,
                    accept,
                ))
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "health listener failed");
            }
        })));
    }
    tasks
}

type Serving = Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// Step 2: the gRPC routes (health, reflection, the API) behind the trace span and metrics
/// layers, served on `listener` (TLS when configured) until `stopped`.
fn route<H: Health>(
    config: &ServeConfig,
    api: SmsSessionApi,
    health_service: HealthServer<H>,
    listener: TcpListener,
    accept: crate::accept::Limits,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> Result<Serving, ServerError> {
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
    let grpc = crate::accept::Listener::Grpc;
    Ok(match &config.server_tls {
        Some(tls) => Box::pin(router.serve_with_incoming_shutdown(
            crate::accept::tls(listener, grpc, accept, tls.clone()),
            stopped,
        )),
        None => {
            Box::pin(router.serve_with_incoming_shutdown(
                crate::accept::plain(listener, grpc, accept),
                stopped,
            ))
        }
    })
}

/// What the shutdown protocol acts on.
struct Drain<'a> {
    health: tonic_health::server::HealthReporter,
    events: &'a EventsHub,
    /// Stops the listener accepting; calls in flight go on.
    stop: tokio::sync::oneshot::Sender<()>,
    timeout: Duration,
}

/// Step 3: serves until `shutdown`, then the shutdown protocol: health NOT_SERVING, streams
/// told (UNAVAILABLE) and upstream sessions disconnected, no new calls, the calls in flight
/// finishing within the drain timeout (reported when it runs out).
async fn drain(
    mut serve: Serving,
    shutdown: impl Future<Output = ()> + Send,
    on: Drain<'_>,
) -> Result<(), ServerError> {
    tokio::select! {
        r = &mut serve => r.map_err(ServerError::from),
        () = shutdown => {
            tracing::info!("shutdown requested: health NOT_SERVING, ending streams, draining calls");
            on.health.set_not_serving::<SmsSessionServiceServer<SmsSessionApi>>().await;
            on.health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
            // Streams end promptly with UNAVAILABLE; unary calls in flight finish.
            let disconnect = on.events.shutdown(DISCONNECT_GRACE);
            let _ = on.stop.send(());
            let timeout = on.timeout;
            let drained = async {
                match tokio::time::timeout(timeout, &mut serve).await {
                    Ok(r) => r.map_err(ServerError::from),
                    Err(_) => {
                        tracing::warn!(drain_timeout = ?timeout, "drain timed out; closing remaining calls");
                        Err(ServerError::DrainTimedOut(timeout))
                    }
                }
            };
            let (r, ()) = tokio::join!(drained, disconnect);
            r
        }
    }
}

/// The open-files limit in effect and the bounds sized from it; a WARN when the bounds as
/// set leave no room for gRPC connections.
fn announce_budget(raised: crate::descriptors::Raised, bounds: crate::config::Bounds) {
    tracing::info!(
        open_files_limit = raised.limit,
        raised_from = raised.before,
        hard_limit = raised.hard,
        upstream_max_in_flight = bounds.upstream_max_in_flight,
        feed_max_in_flight = bounds.feed_max_in_flight,
        max_pending_handshakes = bounds.max_pending_handshakes,
        "open-files budget"
    );
    let committed = bounds
        .upstream_max_in_flight
        .saturating_add(bounds.feed_max_in_flight)
        .saturating_add(bounds.max_pending_handshakes.saturating_mul(2));
    if committed as u64 >= raised.limit {
        tracing::warn!(
            open_files_limit = raised.limit,
            committed,
            "the upstream and handshake bounds add up to the open-files limit or more: \
             descriptors can run out (calls then get RESOURCE_EXHAUSTED); raise the limit \
             or lower the bounds"
        );
    }
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
