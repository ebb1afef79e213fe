//! Test support: runs the CometD project's Node server (`tests/interop/cometd_server.js`)
//! as a child process on 127.0.0.1:0 and talks to it over stdin/stdout JSON lines, so
//! tests wait on the server's own signals instead of sleeping. Installs the pinned npm
//! packages on first use, once per machine even with parallel test binaries.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;

/// How long any single wait on the Node process may take before the test fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an `npm ci` may take (first run downloads from the registry).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("interop")
}

/// Makes sure `tests/interop/node_modules` is installed. Threads of this binary share
/// one attempt (`OnceLock`); other processes are excluded by a `mkdir` lock, and the
/// completion marker (npm's hidden lockfile, written last) is checked under the lock.
pub fn ensure_npm_packages() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(install).clone()
}

fn install() -> Result<(), String> {
    let dir = interop_dir();
    let marker = dir.join("node_modules").join(".package-lock.json");
    let lock = dir.join(".npm-install.lock");
    let deadline = Instant::now() + INSTALL_TIMEOUT;
    loop {
        match std::fs::create_dir(&lock) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // A lock older than the install timeout was left by a killed run.
                let stale = std::fs::metadata(&lock)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > INSTALL_TIMEOUT);
                if stale {
                    let _ = std::fs::remove_dir(&lock);
                } else if Instant::now() > deadline {
                    return Err(format!("timed out waiting for {}", lock.display()));
                } else {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            Err(e) => return Err(format!("cannot create {}: {e}", lock.display())),
        }
    }
    let result = if marker.exists() {
        Ok(())
    } else {
        let sub = if dir.join("package-lock.json").exists() {
            "ci"
        } else {
            "install"
        };
        Command::new("npm")
            .args([sub, "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run npm: {e}"))
            .and_then(|s| {
                if s.success() {
                    Ok(())
                } else {
                    Err(format!("npm {sub} failed: {s}"))
                }
            })
    };
    let _ = std::fs::remove_dir(&lock);
    result
}

/// A running Node CometD server; killed when dropped.
pub struct CometdNode {
    pub port: u16,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<Value>,
    /// Unprompted `{"event":...}` lines seen while waiting for command replies.
    events: VecDeque<Value>,
}

impl CometdNode {
    /// Starts the server with CometD `timeout` (ms) and `maxInterval` (ms).
    pub async fn start(timeout_ms: u64, max_interval_ms: u64) -> Self {
        tokio::task::spawn_blocking(ensure_npm_packages)
            .await
            .expect("install task")
            .expect("npm packages for the interop server");
        let mut child = Command::new("node")
            .arg(interop_dir().join("cometd_server.js"))
            .env("COMETD_TIMEOUT", timeout_ms.to_string())
            .env("COMETD_MAX_INTERVAL", max_interval_ms.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn node");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel(256);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.blocking_send(value).is_err() {
                    break;
                }
            }
        });
        let mut node = Self {
            port: 0,
            child,
            stdin,
            lines,
            events: VecDeque::new(),
        };
        let first = node.next_line().await;
        assert_eq!(first["event"], "listening", "unexpected first line {first}");
        node.port = u16::try_from(first["port"].as_u64().expect("port")).expect("port range");
        node
    }

    pub fn url(&self) -> reqwest::Url {
        reqwest::Url::parse(&format!("http://127.0.0.1:{}/cometd", self.port)).expect("url")
    }

    async fn next_line(&mut self) -> Value {
        tokio::time::timeout(STEP_TIMEOUT, self.lines.recv())
            .await
            .expect("node server did not answer in time")
            .expect("node server exited")
    }

    /// Sends one command line and returns its `{"reply":...}` line.
    pub async fn command(&mut self, cmd: &str) -> Value {
        writeln!(self.stdin, "{cmd}").expect("write to node");
        self.stdin.flush().expect("flush to node");
        loop {
            let line = self.next_line().await;
            if line.get("reply").is_some() {
                assert!(
                    line.get("error").is_none(),
                    "command {cmd:?} failed: {line}"
                );
                return line;
            }
            self.events.push_back(line);
        }
    }

    /// Publishes `data` on `channel` from the server side; returns once published.
    pub async fn publish(&mut self, channel: &str, data: &Value) {
        self.command(&format!("publish {channel} {data}")).await;
    }

    /// Waits for the next unprompted event named `name` (e.g. `sessionRemoved`).
    pub async fn wait_event(&mut self, name: &str) -> Value {
        loop {
            let line = match self.events.pop_front() {
                Some(line) => line,
                None => self.next_line().await,
            };
            if line["event"] == name {
                return line;
            }
        }
    }
}

impl Drop for CometdNode {
    fn drop(&mut self) {
        // Our own child, by handle; closing stdin alone would also end it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
