//! A gateway replica as a child process of the real binary (`serve` in front of a simulator,
//! with cluster flags), so tests can send it real signals: its address from its "gateway
//! serving gRPC" line (a signal, not a sleep), its exit awaited without blocking the test's
//! runtime (which may be running the simulator), its output kept for a failing test to show.
//! Killed when dropped, so a failing test leaves no process behind.

#![allow(dead_code)]

use super::process;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

const BIN: &str = env!("CARGO_BIN_EXE_gws-sms-gateway");
/// Output lines kept per replica, for a failing test's report.
const KEPT_LINES: usize = 400;

pub struct Replica {
    pub addr: SocketAddr,
    /// Which replica this is, in the test's numbering (its log lines are shown with it).
    pub name: String,
    pid: u32,
    exit: watch::Receiver<Option<ExitStatus>>,
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl Replica {
    /// Starts `gws-sms-gateway serve --listen 127.0.0.1:0 --gws-url <gws_url> <flags>` and
    /// returns once it logs that it serves (at most `within`).
    pub async fn spawn(name: &str, gws_url: &str, flags: &[String], within: Duration) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--gws-url", gws_url])
            .args(flags)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gateway starts");
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        let (serving_tx, serving) = oneshot::channel();
        let serving_tx = Arc::new(Mutex::new(Some(serving_tx)));
        let kept = lines.clone();
        process::forward_lines(&mut child, move |line| {
            if line.contains("gateway serving gRPC")
                && let Some(addr) = line
                    .split("listen=")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                && let Some(tx) = serving_tx.lock().unwrap().take()
            {
                let _ = tx.send(addr);
            }
            let mut kept = kept.lock().unwrap();
            if kept.len() == KEPT_LINES {
                kept.pop_front();
            }
            kept.push_back(line);
        });
        let pid = child.id();
        let (exit_tx, exit) = watch::channel(None);
        // Owns the child: reaps it when it exits, whoever made it.
        std::thread::spawn(move || {
            let status = child.wait().expect("wait for the gateway");
            exit_tx.send_replace(Some(status));
        });
        let mut replica = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            name: name.to_string(),
            pid,
            exit,
            lines,
        };
        match tokio::time::timeout(within, serving).await {
            Ok(Ok(addr)) => replica.addr = addr,
            _ => panic!(
                "replica {name} did not say it serves within {within:?}:\n{}",
                replica.output()
            ),
        }
        replica
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends `signal` (`-TERM`, `-KILL`) with kill(1), unless the process has exited (its
    /// pid may be someone else's by then).
    pub fn signal(&self, signal: &str) {
        assert!(
            self.send(signal),
            "kill {signal} {} ({})",
            self.pid,
            self.name
        );
    }

    /// Whether `signal` was sent (false also when the process had exited already).
    fn send(&self, signal: &str) -> bool {
        if self.exit.borrow().is_some() {
            return false;
        }
        Command::new("kill")
            .args([signal, &self.pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Waits, at most `within`, for the process to exit; its status. `None`: still running.
    pub async fn exited(&self, within: Duration) -> Option<ExitStatus> {
        let mut exit = self.exit.clone();
        tokio::time::timeout(within, exit.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|s| *s))
    }

    /// SIGKILL, and its exit awaited.
    pub async fn kill(&self) {
        self.signal("-KILL");
        assert!(
            self.exited(Duration::from_secs(20)).await.is_some(),
            "{} survived SIGKILL",
            self.name
        );
    }

    /// What it wrote so far (the last lines), one line each.
    pub fn output(&self) -> String {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .map(|l| format!("[{}] {l}\n", self.name))
            .collect()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- output of replica {} ---\n{}", self.name, self.output());
        }
        self.send("-KILL");
    }
}
