//! The gateway binary as a child process in tests: its output line by line, and signals.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::Child;

/// Sends every line the child writes, stdout and stderr alike, to `send` (from one thread
/// per pipe) until the pipes close.
pub fn forward_lines(child: &mut Child, send: impl Fn(String) + Clone + Send + 'static) {
    let pipes: [Box<dyn std::io::Read + Send>; 2] = [
        Box::new(child.stdout.take().expect("stdout piped")),
        Box::new(child.stderr.take().expect("stderr piped")),
    ];
    for pipe in pipes {
        let send = send.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                send(line);
            }
        });
    }
}

/// Sends `signal` (e.g. `-TERM`) to the child with kill(1).
pub fn signal(child: &Child, signal: &str) {
    let sent = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(sent, "kill {signal} {}", child.id());
}

/// The value of `key=` in a text log line (up to the next space).
pub fn log_field(line: &str, key: &str) -> String {
    let start = line
        .find(&format!(" {key}="))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        + key.len()
        + 2;
    line[start..]
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}
