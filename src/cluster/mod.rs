//! Cluster mode (`--nats-url`): N replicas behind one load balancer share each agent's event
//! feed through NATS JetStream.
//!
//! - One owner per agent ([`lease`]): a key in a KV bucket, created if absent, renewed by
//!   compare-and-set on its revision, gone by TTL when its owner dies. Only the owner runs the
//!   agent's CometD session; only replicas holding the agent's credential in memory (a live
//!   stream or a waiting call) compete for it.
//! - The owner publishes every mapped item (encoded once) and every upstream notice to the
//!   agent's subject of one stream ([`source`]); every replica with an interest in the agent
//!   follows that subject into its local feed core, so streams, filters, snapshots and
//!   `wait_for_outcome` work on every replica, and a resume token (the stream's identity and
//!   sequence) is honoured by any of them.
//! - Nothing in NATS is a credential: agents are keyed by a hash of the credential salted
//!   with the replicas' shared secret.

pub mod lease;
pub mod source;

use crate::upstream::Agent;
use async_nats::jetstream;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The stream every agent's subject lives in.
pub const STREAM: &str = "GWS_EVENTS";
/// Subjects: `gws.events.<agent>`.
pub const SUBJECT_PREFIX: &str = "gws.events";
/// The KV bucket of the agents' leases.
pub const LEASES: &str = "gws_leases";
/// How long a message id is remembered for deduplication (a retried publish).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// What every connection of the gateway to NATS is named (a replica's adds its id).
const CONNECTION_NAME: &str = "gws-sms-gateway";
/// Connecting at start, and every JetStream request.
const NATS_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub enum NatsAuth {
    None,
    UserPassword(String, String),
    Token(String),
}

// By hand: a password or token is never printed.
impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NatsAuth::None => "None",
            NatsAuth::UserPassword(..) => "UserPassword(<redacted>)",
            NatsAuth::Token(_) => "Token(<redacted>)",
        })
    }
}

/// The validated cluster flags.
#[derive(Clone)]
pub struct ClusterConfig {
    pub servers: Vec<String>,
    pub auth: NatsAuth,
    pub ca: Option<PathBuf>,
    pub secret: String,
    pub lease_ttl: Duration,
    pub lease_renew: Duration,
    /// Copies JetStream keeps of the stream and the lease bucket.
    pub replicas: usize,
    /// Retention: events kept per agent, bytes kept by all agents, age.
    pub replay_max_events: usize,
    pub replay_max_bytes: usize,
    pub replay_max_age: Duration,
}

// By hand: the secret and the NATS password are never printed.
impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("servers", &self.servers)
            .field("lease_ttl", &self.lease_ttl)
            .field("lease_renew", &self.lease_renew)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot connect to NATS at {servers}: {reason}")]
    Connect { servers: String, reason: String },
    #[error("NATS JetStream at {servers} is not usable: {reason}")]
    JetStream { servers: String, reason: String },
}

/// Whether this replica's NATS connection is up (for streams' notices and health).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Up,
    Down,
}

/// The cluster handle: a cloneable connection to NATS with the stream and the lease bucket.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClusterConfig,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    leases: jetstream::kv::Store,
    /// The stream's identity in resume tokens: its creation time. A stream deleted and made
    /// again is another stream, and its tokens are told apart.
    epoch: u64,
    /// This replica, as lease values name it (random per process).
    id: String,
    link: watch::Receiver<Link>,
}

impl Cluster {
    /// Checks that NATS answers with JetStream enabled for these settings' account, creating
    /// nothing (`--check-config`, and before the gateway binds its ports).
    pub async fn check(config: &ClusterConfig) -> Result<(), ClusterError> {
        let servers = config.servers.join(",");
        let client = connect(config, watch::channel(Link::Up).0, CONNECTION_NAME.into()).await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(NATS_TIMEOUT)
            .build(client);
        js.query_account()
            .await
            .map(|_| ())
            .map_err(|e| ClusterError::JetStream {
                servers,
                reason: e.to_string(),
            })
    }

    /// Connects and makes sure the stream and the lease bucket exist (creating them with the
    /// configured retention if not). Fails within a few seconds when NATS does not answer.
    pub async fn connect(config: ClusterConfig) -> Result<Self, ClusterError> {
        let servers = config.servers.join(",");
        let (link_tx, link) = watch::channel(Link::Up);
        let id = format!("{:016x}", rand::random::<u64>());
        let client = connect(&config, link_tx, connection_name(&id)).await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(NATS_TIMEOUT)
            .build(client);
        let unusable = |e: &dyn std::fmt::Display| ClusterError::JetStream {
            servers: servers.clone(),
            reason: e.to_string(),
        };
        let wanted = jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec![format!("{SUBJECT_PREFIX}.>")],
            max_messages_per_subject: i64::try_from(config.replay_max_events).unwrap_or(i64::MAX),
            max_bytes: i64::try_from(config.replay_max_bytes).unwrap_or(i64::MAX),
            max_age: config.replay_max_age,
            duplicate_window: DUPLICATE_WINDOW,
            storage: jetstream::stream::StorageType::File,
            num_replicas: config.replicas,
            ..Default::default()
        };
        let mut stream = js
            .get_or_create_stream(wanted.clone())
            .await
            .map_err(|e| unusable(&e))?;
        if let Some(next) = reconcile(&stream.cached_info().config, &wanted, Made::Events) {
            js.update_stream(&next).await.map_err(|e| unusable(&e))?;
            stream = js.get_stream(STREAM).await.map_err(|e| unusable(&e))?;
        }
        let created = stream.cached_info().created;
        let epoch = u64::try_from(created.unix_timestamp_nanos()).unwrap_or_default();
        let leases = match js.get_key_value(LEASES).await {
            Ok(store) => store,
            Err(_) => js
                .create_key_value(jetstream::kv::Config {
                    bucket: LEASES.into(),
                    history: 1,
                    max_age: config.lease_ttl,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: config.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| unusable(&e))?,
        };
        let bucket = js
            .get_stream(&leases.stream_name)
            .await
            .map_err(|e| unusable(&e))?;
        let wanted = jetstream::stream::Config {
            num_replicas: config.replicas,
            max_age: config.lease_ttl,
            ..Default::default()
        };
        let leases = match reconcile(&bucket.cached_info().config, &wanted, Made::Leases) {
            Some(next) => {
                js.update_stream(&next).await.map_err(|e| unusable(&e))?;
                js.get_key_value(LEASES).await.map_err(|e| unusable(&e))?
            }
            None => leases,
        };
        tracing::info!(nats = %servers, replica = %id, "cluster mode: connected to NATS JetStream");
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                js,
                stream,
                leases,
                epoch,
                id,
                link,
            }),
        })
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// The stream's identity, as resume tokens carry it.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch
    }

    pub fn replica(&self) -> &str {
        &self.inner.id
    }

    pub fn link(&self) -> watch::Receiver<Link> {
        self.inner.link.clone()
    }

    pub(crate) fn js(&self) -> &jetstream::Context {
        &self.inner.js
    }

    pub(crate) fn stream(&self) -> &jetstream::stream::Stream {
        &self.inner.stream
    }

    pub(crate) fn leases(&self) -> &jetstream::kv::Store {
        &self.inner.leases
    }

    /// The agent's name in NATS (see [`agent_name`]).
    pub fn agent_name(&self, agent: &Agent) -> String {
        agent_name(&self.inner.config.secret, agent)
    }

    /// The highest sequence number the stream has handed out (or why NATS did not say).
    pub async fn last_seq(&self) -> Result<u64, String> {
        let mut stream = self.inner.stream.clone();
        stream
            .info()
            .await
            .map(|i| i.state.last_sequence)
            .map_err(|e| e.to_string())
    }
}

/// Which of the two streams the gateway makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    /// The agents' event stream: copies, retention and the duplicate window are the flags'.
    Events,
    /// The lease bucket's stream: copies, and its `max_age` (the lease TTL).
    Leases,
}

/// `have` (a stream as it exists) with what the flags decide of it taken from `wanted`, when
/// that differs (`None`: nothing to change). A stream made by an earlier start keeps its
/// settings until updated: a cluster first run with one copy (the default of
/// `--nats-replicas`) would keep its only copy on one NATS node however the flag changes,
/// and a bucket made with another `--lease-ttl` would expire leases between their renewals.
/// Logged at WARN: replicas started with different flags undo each other's change.
fn reconcile(
    have: &jetstream::stream::Config,
    wanted: &jetstream::stream::Config,
    made: Made,
) -> Option<jetstream::stream::Config> {
    let mut next = have.clone();
    let mut changed = Vec::new();
    // Each setting the flags decide: taken from `wanted` when it differs, and said.
    macro_rules! adopt {
        ($field:ident, $what:literal) => {
            if have.$field != wanted.$field {
                next.$field = wanted.$field;
                changed.push(format!(
                    concat!($what, " {:?} -> {:?}"),
                    have.$field, wanted.$field
                ));
            }
        };
    }
    adopt!(num_replicas, "copies");
    adopt!(max_age, "max age");
    match made {
        Made::Events => {
            adopt!(max_bytes, "max bytes");
            adopt!(max_messages_per_subject, "events per agent");
            adopt!(duplicate_window, "duplicate window");
        }
        // JetStream refuses a duplicate window longer than the stream's max age.
        Made::Leases => next.duplicate_window = have.duplicate_window.min(next.max_age),
    }
    if changed.is_empty() {
        return None;
    }
    tracing::warn!(stream = %have.name, changes = %changed.join(", "), "cluster: a stream's settings differ from the flags; updating it");
    Some(next)
}

/// The agent's name in NATS: its credential hashed with the replicas' shared secret, in
/// hex. Every replica computes the same; without the secret it says nothing.
pub fn agent_name(secret: &str, agent: &Agent) -> String {
    let mut hasher = Sha256::new();
    hasher.update((secret.len() as u64).to_be_bytes());
    hasher.update(secret.as_bytes());
    hasher.update(agent.key_material());
    hasher
        .finalize()
        .iter()
        .take(20)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Connects (failing within a few seconds when NATS does not answer); `link` learns when
/// the connection drops and comes back.
async fn connect(
    config: &ClusterConfig,
    link: watch::Sender<Link>,
    name: String,
) -> Result<async_nats::Client, ClusterError> {
    let servers = config.servers.join(",");
    let mut options = async_nats::ConnectOptions::new()
        .connection_timeout(NATS_TIMEOUT)
        .name(name)
        .event_callback(move |event| {
            let link = link.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!("NATS connection restored");
                        link.send_replace(Link::Up);
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS connection lost; reconnecting");
                        link.send_replace(Link::Down);
                    }
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            }
        });
    options = match &config.auth {
        NatsAuth::None => options,
        NatsAuth::UserPassword(user, password) => {
            options.user_and_password(user.clone(), password.clone())
        }
        NatsAuth::Token(token) => options.token(token.clone()),
    };
    if let Some(ca) = &config.ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    match tokio::time::timeout(NATS_TIMEOUT, options.connect(config.servers.clone())).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(ClusterError::Connect {
            servers,
            reason: e.to_string(),
        }),
        Err(_) => Err(ClusterError::Connect {
            servers,
            reason: format!("no answer within {NATS_TIMEOUT:?}"),
        }),
    }
}

/// The NATS connection's name (what the servers' `/connz` shows) of replica `id`: the id the
/// replica's lease values and its start line carry, so an operator can tell which NATS
/// server an agent's owner is connected to.
pub fn connection_name(id: &str) -> String {
    format!("{CONNECTION_NAME}/{id}")
}

pub fn subject(name: &str) -> String {
    format!("{SUBJECT_PREFIX}.{name}")
}

#[cfg(test)]
mod tests {
    use super::{Made, reconcile};
    use async_nats::jetstream::stream::Config;
    use std::time::Duration;

    fn events(replicas: usize, age: u64) -> Config {
        Config {
            name: "GWS_EVENTS".into(),
            subjects: vec!["gws.events.>".into()],
            num_replicas: replicas,
            max_age: Duration::from_secs(age),
            max_bytes: 1 << 20,
            max_messages_per_subject: 100,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        }
    }

    #[test]
    fn a_stream_as_the_flags_say_is_left_alone() {
        assert_eq!(
            reconcile(&events(3, 600), &events(3, 600), Made::Events),
            None
        );
    }

    #[test]
    fn a_stream_made_with_other_flags_gets_the_flags_settings_and_keeps_its_own() {
        let mut have = events(1, 600);
        have.description = Some("kept".into());
        let mut wanted = events(3, 300);
        wanted.max_bytes = 2 << 20;
        wanted.max_messages_per_subject = 50;
        let next = reconcile(&have, &wanted, Made::Events).expect("an update");
        assert_eq!(next.num_replicas, 3);
        assert_eq!(next.max_age, Duration::from_secs(300));
        assert_eq!(next.max_bytes, 2 << 20);
        assert_eq!(next.max_messages_per_subject, 50);
        assert_eq!(next.description.as_deref(), Some("kept"), "not the flags'");
        assert_eq!(next.subjects, have.subjects);
    }

    #[test]
    fn the_lease_bucket_gets_the_flags_copies_and_ttl_and_nothing_else() {
        // As a KV bucket's stream is made: its own subjects, rollups, a duplicate window as
        // long as its max age.
        let have = Config {
            name: "KV_gws_leases".into(),
            subjects: vec!["$KV.gws_leases.>".into()],
            num_replicas: 1,
            max_age: Duration::from_secs(15),
            duplicate_window: Duration::from_secs(15),
            max_messages_per_subject: 1,
            allow_rollup: true,
            allow_direct: true,
            ..Default::default()
        };
        let wanted = Config {
            num_replicas: 3,
            max_age: Duration::from_secs(5),
            ..Default::default()
        };
        let next = reconcile(&have, &wanted, Made::Leases).expect("an update");
        assert_eq!(next.num_replicas, 3);
        assert_eq!(next.max_age, Duration::from_secs(5));
        assert_eq!(
            next.duplicate_window,
            Duration::from_secs(5),
            "never longer than the max age (JetStream refuses that)"
        );
        assert_eq!(next.name, have.name);
        assert_eq!(next.subjects, have.subjects);
        assert_eq!(
            next.max_messages_per_subject, 1,
            "the bucket's, not the flags'"
        );
        assert!(next.allow_rollup && next.allow_direct);
        let same = Config {
            num_replicas: 1,
            max_age: Duration::from_secs(15),
            ..Default::default()
        };
        assert_eq!(reconcile(&have, &same, Made::Leases), None);
    }
}
