//! Cluster mode on a clustered NATS, as production runs it (`deploy/kubernetes`): three
//! nats-server processes forming one JetStream cluster on 127.0.0.1, the event stream and the
//! lease bucket kept on all three (`--nats-replicas 3`), gateway replicas given every server
//! (`--nats-url` comma-separated) in front of one simulator. A NATS node dies (SIGKILL) while
//! notifications flow: the one the agent's owner is connected to, made first the leader of
//! both the stream and the lease bucket, so every failover happens at once (the owner's
//! connection moves, the stream and the bucket elect leaders, the followers' consumers on
//! that node are gone); then it comes back. And a stream and bucket made by a first start
//! with one copy get three when the flag says so. Waits are on stream items, the servers'
//! log lines and JetStream's own state, never sleeps.

use crate::support::cluster::{SECRET, properties_updated};
use crate::support::events;
use crate::support::gateway;
use crate::support::nats::NatsCluster;

use async_nats::jetstream;
use events::{Stream, subscribed_at};
use gateway::{AGENT1, Harness, STEP};
use gws_simulator::{self as simulator, RunningSimulator, SimulatorConfig};
use gws_sms_gateway::cluster::{LEASES, STREAM};
use gws_sms_gateway::proto::session_events_response::Event;
use gws_sms_gateway::proto::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The lease bucket's stream, as JetStream names a KV bucket's.
const LEASES_STREAM: &str = "KV_gws_leases";

async fn replica(sim: &RunningSimulator, nats: &NatsCluster) -> Replica {
    // The lease flags are the defaults (5 s, renewed every 1 s), as deployed.
    replica_with(sim, nats, &["--nats-replicas", "3"]).await
}

/// A gateway replica in this process (as `Harness::gateway` starts one), whose start, if it
/// fails, says why (the harness would only see its listener close).
struct Replica {
    harness: Harness,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), gws_sms_gateway::server::ServerError>>,
}

impl std::ops::Deref for Replica {
    type Target = Harness;
    fn deref(&self) -> &Harness {
        &self.harness
    }
}

impl Replica {
    /// Stops it as SIGTERM would; returns once it has stopped.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task)
            .await
            .expect("the replica ran")
            .expect("the replica stopped cleanly");
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A replica in front of `sim` with `extra` flags besides the cluster's.
async fn replica_with(sim: &RunningSimulator, nats: &NatsCluster, extra: &[&str]) -> Replica {
    // RUST_LOG=gws_sms_gateway::cluster=debug shows what the replicas do.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let urls = nats.urls();
    let mut flags = vec!["--nats-url", &urls, "--cluster-secret", SECRET];
    flags.extend_from_slice(extra);
    let config = gateway::serve_config(&sim.url, &flags);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut task = tokio::spawn(gws_sms_gateway::server::run(config, listener, async {
        let _ = stopped.await;
    }));
    // Serving once its health says so (the server answers it only once NATS is set up).
    let serving = async {
        loop {
            if let Ok(Ok(channel)) = tokio::time::timeout(
                STEP,
                tonic::transport::Channel::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect(),
            )
            .await
            {
                use tonic_health::pb::HealthCheckRequest;
                use tonic_health::pb::health_client::HealthClient;
                let status = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: "gws.sms.v1.SmsSessionService".into(),
                    })
                    .await;
                if status.is_ok_and(|s| s.into_inner().status == 1) {
                    return;
                }
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::select! {
        () = serving => {}
        ended = &mut task => panic!("the replica did not start: {ended:?}"),
        () = tokio::time::sleep(STEP) => panic!("the replica did not serve within {STEP:?}"),
    }
    Replica {
        harness: Harness::remote(addr, &sim.url).await,
        stop: Some(stop),
        task,
    }
}

/// One item a client read: its notification's tag or its notice, its token, when it came.
#[derive(Debug, Clone)]
struct Seen {
    tag: Option<String>,
    notice: Option<NoticeKind>,
    token: String,
    at: Instant,
}

fn seen(item: &SessionEventsResponse) -> Seen {
    let (tag, notice) = match &item.event {
        Some(Event::StateChange(c)) => {
            let data = gws_sms_gateway::mapping::user_data_map_to_json(
                &c.session.clone().unwrap_or_default().user_data,
            );
            let tag = data.get("tag").and_then(Value::as_str).map(str::to_string);
            (tag, None)
        }
        Some(Event::Notice(n)) => (None, NoticeKind::try_from(n.kind).ok()),
        other => panic!("unexpected item {other:?}"),
    };
    Seen {
        tag,
        notice,
        token: item.resume_token.clone(),
        at: Instant::now(),
    }
}

/// A client reading a stream in the background, so items are timed as they come.
struct Client {
    rx: mpsc::UnboundedReceiver<Seen>,
    items: Vec<Seen>,
}

impl Client {
    fn new(mut stream: Stream) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(item)) = stream.message().await {
                if tx.send(seen(&item)).is_err() {
                    return;
                }
            }
        });
        Self {
            rx,
            items: Vec::new(),
        }
    }

    /// Reads until notification `n{last}` came (every item kept).
    async fn until(&mut self, last: usize) {
        let want = format!("n{last}");
        while !self.items.iter().any(|s| s.tag.as_ref() == Some(&want)) {
            let item = tokio::time::timeout(STEP, self.rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{want} never came; last items: {:?}",
                        self.items.iter().rev().take(3).collect::<Vec<_>>()
                    )
                })
                .expect("the stream ended");
            self.items.push(item);
        }
    }

    fn tags(&self) -> Vec<String> {
        self.items.iter().filter_map(|s| s.tag.clone()).collect()
    }

    fn notices(&self) -> Vec<NoticeKind> {
        self.items.iter().filter_map(|s| s.notice).collect()
    }

    /// The longest wait for an item after `since` (from `since` to the first, or between two).
    fn pause_after(&self, since: Instant) -> Duration {
        let mut prev = since;
        let mut longest = Duration::ZERO;
        for s in self.items.iter().filter(|s| s.at >= since) {
            longest = longest.max(s.at - prev);
            prev = s.at;
        }
        longest
    }

    fn token_of(&self, tag: &str) -> String {
        self.items
            .iter()
            .find(|s| s.tag.as_deref() == Some(tag))
            .map(|s| s.token.clone())
            .unwrap_or_else(|| panic!("{tag} not read"))
    }
}

/// Notifications `n0`, `n1`, ... to agent1 every few milliseconds (paced, not to flood the
/// machine) until `stop`; each sends its index and how many upstream sessions got it.
fn injector(sim_url: String, stop: CancellationToken) -> mpsc::UnboundedReceiver<(usize, u64)> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut n = 0;
        while !stop.is_cancelled() {
            let reply = http
                .post(format!("{sim_url}/simulator/agents/agent1/notifications"))
                .header("content-type", "application/json")
                .body(properties_updated(&format!("n{n}")).to_string())
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let reply: Value = serde_json::from_str(&reply).unwrap();
            if tx
                .send((n, reply["delivered"].as_u64().unwrap_or(0)))
                .is_err()
            {
                return;
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    rx
}

/// The stream's info as JetStream gives it (asked again while it elects a leader).
async fn info(js: &jetstream::Context, name: &str) -> jetstream::stream::Info {
    let deadline = Instant::now() + STEP;
    loop {
        match js.get_stream(name).await {
            Ok(s) => return s.cached_info().clone(),
            Err(e) => assert!(
                Instant::now() < deadline,
                "no info of {name} within {STEP:?}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn leader(info: &jetstream::stream::Info) -> Option<String> {
    info.cluster.as_ref().and_then(|c| c.leader.clone())
}

/// The servers keeping a copy (the leader and its peers) and those of them current.
fn copies(info: &jetstream::stream::Info) -> (BTreeSet<String>, BTreeSet<String>) {
    let cluster = info.cluster.clone().unwrap_or_default();
    let mut all: BTreeSet<String> = cluster.replicas.iter().map(|p| p.name.clone()).collect();
    let mut current: BTreeSet<String> = cluster
        .replicas
        .iter()
        .filter(|p| p.current && !p.offline)
        .map(|p| p.name.clone())
        .collect();
    if let Some(leader) = cluster.leader {
        all.insert(leader.clone());
        current.insert(leader);
    }
    (all, current)
}

/// Polls JetStream's state of `name` until `holds`; fails after [`STEP`]. The pause between
/// looks only spares the machine.
async fn until_state(
    js: &jetstream::Context,
    name: &str,
    what: &str,
    holds: impl Fn(&jetstream::stream::Info) -> bool,
) -> jetstream::stream::Info {
    let deadline = Instant::now() + STEP;
    loop {
        let info = info(js, name).await;
        if holds(&info) {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: never {what}: {:?}",
            info.cluster
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Makes `server` the leader of stream `name` (JetStream's leader stepdown, with it as the
/// preferred successor).
async fn lead(js: &jetstream::Context, name: &str, server: &str) {
    let deadline = Instant::now() + STEP;
    while leader(&info(js, name).await).as_deref() != Some(server) {
        let _: Result<Value, _> = js
            .request(
                format!("STREAM.LEADER.STEPDOWN.{name}"),
                &json!({ "placement": { "preferred": server } }),
            )
            .await;
        until_state(js, name, "led by anyone", |i| leader(i).is_some()).await;
        assert!(
            Instant::now() < deadline,
            "{name}: {server} never became its leader"
        );
    }
}

#[tokio::test]
async fn a_nats_node_killed_under_the_owner_and_the_leaders_loses_nothing_and_rejoins() {
    let mut nats = NatsCluster::start(3).await;
    let names: BTreeSet<String> = nats.nodes.iter().map(|n| n.name.clone()).collect();
    let sim = simulator::start(&SimulatorConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts");
    let a = replica(&sim, &nats).await;
    let b = replica(&sim, &nats).await;
    // The first replica with the agent's credential takes its lease: `a` owns the agent.
    let (on_a, _) = subscribed_at(&a, AGENT1, SessionEventsRequest::default()).await;
    let (on_b, _) = subscribed_at(&b, AGENT1, SessionEventsRequest::default()).await;
    let mut clients = [Client::new(on_a), Client::new(on_b)];

    // The stream and the lease bucket were made with three copies, one on every node (which
    // catch up within moments of being made).
    let client = async_nats::connect(nats.urls().split(',').collect::<Vec<_>>())
        .await
        .unwrap();
    let js = jetstream::new(client);
    for name in [STREAM, LEASES_STREAM] {
        let info = info(&js, name).await;
        assert_eq!(info.config.num_replicas, 3, "{name}");
        assert_eq!(copies(&info).0, names, "{name}: a copy on every node");
        until_state(&js, name, "current on every node", |i| copies(i).1 == names).await;
    }

    // The owner: the replica its lease names, and the node its NATS connection is on.
    let agent = gws_sms_gateway::upstream::Agent::new(
        &gws_sms_gateway::upstream::Credential::new(AGENT1.0, AGENT1.1).unwrap(),
    )
    .unwrap();
    let key = gws_sms_gateway::cluster::agent_name(SECRET, &agent);
    let leases = js.get_key_value(LEASES).await.unwrap();
    let owner = leases.get(&key).await.unwrap().expect("the agent's lease");
    // `<replica>`, and `;up` once its session is subscribed.
    let owner = String::from_utf8(owner.to_vec()).unwrap();
    let owner = owner.split(';').next().unwrap_or_default().to_string();
    let connection = gws_sms_gateway::cluster::connection_name(&owner);
    let victim = nats
        .connected_to(&connection)
        .await
        .expect("the owner's NATS connection");
    let victim_name = nats.nodes[victim].name.clone();
    // That node leads the stream and the bucket too: its death costs every failover at once.
    // (Moving the leaders is itself a leader change the followers live through.)
    lead(&js, STREAM, &victim_name).await;
    lead(&js, LEASES_STREAM, &victim_name).await;

    let stop = CancellationToken::new();
    let mut injected = injector(sim.url.clone(), stop.clone());
    let mut delivered = Vec::new();
    while delivered.len() < 30 {
        delivered.push(injected.recv().await.unwrap());
    }
    for c in &mut clients {
        c.until(29).await;
    }
    // The client on `b` read up to n29: its token, from before the kill, is resumed below.
    let before = clients[1].token_of("n29");

    nats.kill(victim);
    let killed = Instant::now();
    let first = injected.recv().await.unwrap();
    let at_kill = first.0;
    delivered.push(first);
    // Notifications flow on until both streams have read what was sent well after the kill.
    while delivered.len() < at_kill + 1 + 50 || !clients_read_past(&mut clients, at_kill + 50) {
        assert!(
            killed.elapsed() < STEP * 2,
            "the streams read nothing from n{} on after the kill: {:?}",
            at_kill + 50,
            clients
                .iter()
                .map(|c| c.items.last().cloned())
                .collect::<Vec<_>>()
        );
        delivered.push(injected.recv().await.unwrap());
    }
    stop.cancel();
    while let Some(d) = injected.recv().await {
        delivered.push(d);
    }
    let last = delivered.last().unwrap().0;
    for c in &mut clients {
        c.until(last).await;
    }
    let lost_upstream: Vec<usize> = delivered
        .iter()
        .filter(|(_, d)| *d != 1)
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(
        lost_upstream,
        Vec::<usize>::new(),
        "every notification reached the owner's upstream session"
    );
    let want: Vec<String> = (0..=last).map(|n| format!("n{n}")).collect();
    for (c, on) in clients.iter().zip(["a (the owner)", "b"]) {
        assert_eq!(c.tags(), want, "on {on}: every notification once, in order");
        assert_eq!(
            c.notices(),
            Vec::<NoticeKind>::new(),
            "on {on}: no LOST, RESTORED or GAP after SUBSCRIBED: the node's death was not a loss"
        );
        println!(
            "stream on {on}: paused {:?} at most after {victim_name} was killed ({} notifications)",
            c.pause_after(killed),
            last + 1
        );
    }
    let tokens = |c: &Client| -> Vec<String> { c.items.iter().map(|s| s.token.clone()).collect() };
    assert_eq!(
        tokens(&clients[0]),
        tokens(&clients[1]),
        "both replicas deliver every item at the same token"
    );
    assert_eq!(
        handshakes(&a).await,
        1,
        "the owner's upstream session lived through it: no takeover"
    );
    // JetStream's view: new leaders elsewhere, the dead node's copies not current.
    for name in [STREAM, LEASES_STREAM] {
        let info = info(&js, name).await;
        assert_ne!(leader(&info), Some(victim_name.clone()), "{name}");
        assert!(!copies(&info).1.contains(&victim_name), "{name}");
    }

    // A client that read up to n29 on `b` before the kill resumes on `a`: exactly what
    // followed, no GAP.
    let (resumed, at) = subscribed_at(
        &a,
        AGENT1,
        SessionEventsRequest {
            resume_token: before.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(at, before);
    let mut resumed = Client::new(resumed);
    resumed.until(last).await;
    assert_eq!(
        resumed.tags(),
        want[30..].to_vec(),
        "exactly what followed n29"
    );
    assert_eq!(resumed.notices(), Vec::<NoticeKind>::new(), "no GAP");

    // The node comes back on its ports and store, catches up and is current again.
    let restarting = Instant::now();
    nats.restart(victim).await;
    for name in [STREAM, LEASES_STREAM] {
        until_state(&js, name, "current on every node", |i| {
            copies(i).1.contains(&victim_name)
        })
        .await;
    }
    println!(
        "{victim_name} restarted and current again in {:?}",
        restarting.elapsed()
    );
    // And notifications still flow, to every stream.
    for n in last + 1..=last + 5 {
        assert_eq!(
            a.inject("agent1", properties_updated(&format!("n{n}")))
                .await,
            1
        );
    }
    for c in clients.iter_mut().chain([&mut resumed]) {
        c.until(last + 5).await;
        assert!(c.tags().ends_with(&[
            format!("n{}", last + 1),
            format!("n{}", last + 2),
            format!("n{}", last + 3),
            format!("n{}", last + 4),
            format!("n{}", last + 5)
        ]));
    }
    assert_eq!(handshakes(&a).await, 1);
}

/// Whether both clients have read a notification from `n{n}` on (reading what has come).
fn clients_read_past(clients: &mut [Client], n: usize) -> bool {
    let mut all = true;
    for c in clients.iter_mut() {
        while let Ok(item) = c.rx.try_recv() {
            c.items.push(item);
        }
        all &= c.items.iter().any(|s| {
            s.tag
                .as_deref()
                .and_then(|t| t.strip_prefix('n'))
                .and_then(|i| i.parse::<usize>().ok())
                .is_some_and(|i| i >= n)
        });
    }
    all
}

async fn handshakes(h: &Harness) -> u64 {
    h.cometd_stats("agent1").await["handshakes"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test]
async fn a_stream_and_bucket_made_with_one_copy_get_three_when_the_flag_says_so() {
    let nats = NatsCluster::start(3).await;
    let names: BTreeSet<String> = nats.nodes.iter().map(|n| n.name.clone()).collect();
    let sim = simulator::start(&SimulatorConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts");
    let client = async_nats::connect(nats.urls().split(',').collect::<Vec<_>>())
        .await
        .unwrap();
    let js = jetstream::new(client);
    // A first deployment without --nats-replicas (one copy) and the default lease TTL.
    let first = replica_with(&sim, &nats, &[]).await;
    for name in [STREAM, LEASES_STREAM] {
        assert_eq!(info(&js, name).await.config.num_replicas, 1, "{name}");
    }
    assert_eq!(
        info(&js, LEASES_STREAM).await.config.max_age,
        Duration::from_secs(5)
    );
    first.stop().await;
    // The next one says three copies and another TTL: the existing stream and bucket get
    // them (before, they kept one copy whatever the flag said, and the bucket its TTL).
    let next = replica_with(
        &sim,
        &nats,
        &[
            "--nats-replicas",
            "3",
            "--lease-ttl",
            "6s",
            "--lease-renew",
            "2s",
        ],
    )
    .await;
    for name in [STREAM, LEASES_STREAM] {
        let info = until_state(&js, name, "kept on every node, current", |i| {
            copies(i).1 == names
        })
        .await;
        assert_eq!(info.config.num_replicas, 3, "{name}");
    }
    assert_eq!(
        info(&js, LEASES_STREAM).await.config.max_age,
        Duration::from_secs(6)
    );
    // And it serves: a stream subscribes, a notification arrives.
    let (mut stream, _) = subscribed_at(&next, AGENT1, SessionEventsRequest::default()).await;
    assert_eq!(next.inject("agent1", properties_updated("n0")).await, 1);
    let item = events::next(&mut stream).await.unwrap();
    assert_eq!(seen(&item).tag.as_deref(), Some("n0"));
}

/// The NATS manifest's documents.
fn nats_manifest() -> Vec<serde_norway::Value> {
    use serde::Deserialize;
    let path = format!("{}/deploy/kubernetes/nats.yaml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| serde_norway::Value::deserialize(doc).expect("valid YAML"))
        .collect()
}

/// Seconds of a `key: <n>s` line of a NATS config.
fn seconds(config: &str, key: &str) -> u64 {
    config
        .lines()
        .find_map(|l| l.trim().strip_prefix(key)?.trim().strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix('s')?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in seconds: {config}"))
}

#[test]
fn the_manifests_nats_config_is_valid_and_its_lame_duck_ends_before_the_pod_is_killed() {
    let docs = nats_manifest();
    let of = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("no {kind}"))
            .clone()
    };
    let config = of("ConfigMap")["data"]["nats.conf"]
        .as_str()
        .unwrap()
        .to_string();
    // nats-server itself reads it (as the pod does, its name from the environment).
    let dir = std::env::temp_dir().join(format!("gws-nats-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("nats.conf");
    std::fs::write(&file, &config).unwrap();
    let checked = std::process::Command::new(crate::support::nats::binary())
        .arg("-c")
        .arg(&file)
        .arg("-t")
        .env("POD_NAME", "nats-0")
        .output()
        .expect("nats-server runs");
    let _ = std::fs::remove_dir_all(&dir);
    let said = String::from_utf8_lossy(&checked.stdout).to_string()
        + &String::from_utf8_lossy(&checked.stderr);
    assert!(
        checked.status.success() && said.contains("is valid"),
        "{said}"
    );
    // The preStop hook's lame duck moves clients off; SIGTERM waits for it, the kill does not.
    let pod = &of("StatefulSet")["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let lame_duck =
        seconds(&config, "lame_duck_grace_period") + seconds(&config, "lame_duck_duration");
    assert!(
        lame_duck < grace,
        "lame duck {lame_duck} s must end within the pod's {grace} s"
    );
    // A rolling update goes on only once the restarted node's copies caught up.
    let container = &pod["containers"][0];
    assert_eq!(
        container["startupProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
}
