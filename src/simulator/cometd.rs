//! Stand-in until the real hub lands (same interface).
use serde_json::{Value, json};
use std::time::Duration;
#[derive(Debug, Clone)]
pub struct CometdConfig {
    pub timeout: Duration,
    pub interval: Duration,
    pub max_interval: Duration,
    pub max_queue: usize,
    pub max_sessions_per_agent: usize,
}
impl Default for CometdConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            interval: Duration::ZERO,
            max_interval: Duration::from_secs(15),
            max_queue: 1000,
            max_sessions_per_agent: 100,
        }
    }
}
#[derive(Clone, Default)]
pub struct CometdHub;
impl CometdHub {
    pub fn new(_config: CometdConfig) -> Self {
        Self
    }
    pub async fn handle(&self, _agent: &str, _body: Value) -> Value {
        json!([])
    }
    pub fn publish(&self, _agent: &str, _channel: &str, _data: Value) -> usize {
        0
    }
    pub fn drop_sessions(&self, _agent: &str) -> usize {
        0
    }
    pub fn session_count(&self, _agent: &str) -> usize {
        0
    }
    pub fn handshake_count(&self, _agent: &str) -> u64 {
        0
    }
    pub fn shutdown(&self) {}
}
