//! The GWS simulator: a faithful stand-in for the parts of GWS the gateway uses, served over
//! real HTTP so the gateway, its tests, demos and users' own integration tests have a real
//! peer. REST (`rest.rs`) with Basic auth, `JSESSIONID` and CSRF as GWS does them; CometD
//! long-polling (`cometd.rs`) publishing each agent's notifications to that agent only; the
//! SMS session lifecycle with its capabilities, transcript and notifications (`session.rs`),
//! owned per agent with status codes and reference ids (`state.rs`); a control API
//! (`control.rs`) for tests and demos (inbound SMS, customer messages, errors, faults, the
//! recorded request bodies); seeded from the GWS documentation page (`seed.rs`). Not for
//! production: the control API has no authentication.

pub mod cometd;
mod control;
mod rest;
pub mod seed;
pub mod session;
pub mod state;

use axum::Router;
use cometd::{CometdConfig, CometdHub};
use state::{Publish, State};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The CometD endpoint path, as GWS serves it.
pub const NOTIFICATIONS_PATH: &str = "/api/v2/notifications";
/// The channel SMS session notifications are published on.
pub const SMS_CHANNEL: &str = "/v2/me/smssessions";

#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// `(user, password)` of each agent.
    pub agents: Vec<(String, String)>,
    /// Whether writes need the CSRF token (GWS's optional protection).
    pub csrf: bool,
    pub cometd: CometdConfig,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            agents: default_agents(),
            csrf: true,
            cometd: CometdConfig::default(),
        }
    }
}

/// The agents a simulator knows unless told otherwise.
pub fn default_agents() -> Vec<(String, String)> {
    vec![
        ("agent1".to_string(), "password1".to_string()),
        ("agent2".to_string(), "password2".to_string()),
    ]
}

/// A simulator's shared state. A cloneable handle.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    hub: CometdHub,
}

impl Simulator {
    /// `base_url` is where it is served; session `uri`s point there.
    pub fn new(config: &SimulatorConfig, base_url: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::new(&config.agents, config.csrf, base_url)),
                hub: CometdHub::new(config.cometd.clone()),
            }),
        }
    }

    pub fn hub(&self) -> &CometdHub {
        &self.inner.hub
    }

    /// Locks the state for one synchronous step; never held across an `.await`.
    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes, in order, on the SMS channel; called after the state lock is released.
    fn publish_all(&self, publishes: Vec<Publish>) {
        for p in publishes {
            let delivered = self.hub().publish(&p.agent, SMS_CHANNEL, p.data);
            tracing::debug!(agent = %p.agent, delivered, "simulator published a notification");
        }
    }

    pub fn router(&self) -> Router {
        rest::router(self.clone()).merge(control::router(self.clone()))
    }
}

/// A simulator serving on a socket, until [`RunningSimulator::shutdown`] or drop.
pub struct RunningSimulator {
    pub addr: SocketAddr,
    pub url: String,
    pub simulator: Simulator,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningSimulator {
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        self.simulator.hub().shutdown();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RunningSimulator {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.simulator.hub().shutdown();
    }
}

/// Binds `addr` (port 0 for any) and serves the simulator in a background task.
pub async fn start(
    config: &SimulatorConfig,
    addr: SocketAddr,
) -> std::io::Result<RunningSimulator> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    let simulator = Simulator::new(config, &url);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(serve(
        listener,
        simulator.clone(),
        cancel.clone().cancelled_owned(),
    ));
    Ok(RunningSimulator {
        addr,
        url,
        simulator,
        cancel,
        task: Some(task),
    })
}

/// Serves `simulator` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    simulator: Simulator,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let hub = simulator.hub().clone();
    let app = simulator.router();
    let shutdown = async move {
        shutdown.await;
        // Parked CometD connects would otherwise hold the graceful shutdown for `timeout`.
        hub.shutdown();
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "simulator server failed");
    }
}
