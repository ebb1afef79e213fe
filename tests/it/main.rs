//! The end-to-end tests, one binary (one link of the whole crate instead of one per file):
//! each module runs real servers on 127.0.0.1 port 0 (the gateway, the simulator, the
//! binary as a process, the CometD project's Node server) and a real client, and waits on
//! signals, never on sleeps. `tests/metrics.rs` is the one binary apart: it asserts exact
//! values of the process-wide metrics registry, which other tests' calls would move.

mod support;

mod bayeux_interop;
mod cli;
mod cluster;
mod cluster_failures;
mod cluster_retention;
mod delete_user_data;
mod deploy;
mod examples;
mod fuzz;
mod hostile;
mod limits;
mod nats_cluster;
mod observability;
mod operations;
mod outcomes;
mod production;
mod scale;
mod session_events;
