//! What the harnesses read of a process from `/proc` (Linux): resident memory, CPU time.
//! Shared by the examples with `#[path = "support/proc.rs"]`.

#![allow(dead_code)]

use std::time::Duration;

/// Resident memory of `pid` (`"self"` for this process) in KiB; 0 when unreadable.
pub fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// User + system CPU time `pid` has used so far, given the clock ticks per second.
pub fn cpu(pid: &str, ticks_per_second: u64) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some(after) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_secs_f64((field(11) + field(12)) as f64 / ticks_per_second.max(1) as f64)
}
