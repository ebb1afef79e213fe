//! gws-sms-gateway: one gRPC API in front of Genesys Web Services (GWS) SMS sessions.
//!
//! A request reads top to bottom, an event bottom to top:
//! - [`config`]: command line and environment, validated before any port is bound.
//! - [`descriptors`]: the open-files budget (raised at start, cut into shares) and
//!   recognising its exhaustion.
//! - [`server`]: assembles tonic (service, health, reflection) and the shutdown drain.
//! - [`grpc`]: the edge: request validation, the service, the one `Error -> Status` mapping.
//! - [`upstream`]: the GWS REST client and per-agent state (cookies, CSRF, credential key).
//! - [`bayeux`]: the Bayeux (CometD long-polling) client.
//! - [`mapping`]: GWS notification JSON -> proto, lossless and total.
//! - [`events`]: the per-agent hub: one upstream CometD session, fan-out, replay, resume.
//! - [`cluster`]: cluster mode on NATS JetStream: per-agent leases, the agent's subject as
//!   the feed's source on every replica.
//! - [`json`]: bounded JSON from upstream (from the shared `gws_model` crate).
//! - [`client`]: the built-in command-line client.
//!
//! Beside it, in `crates/`: `gws-model` (the operation wire type, credentials, bounded JSON:
//! what the gateway and the simulator share) and `gws-simulator` (the GWS stand-in, linked only
//! with the default `demo` feature and into tests).
//!
//! Operations: [`accept`] (the listeners' bounded accept loop: handshake timeout, pending
//! cap, backoff), [`tls`] (the listener's reloadable TLS, trust towards GWS), [`metrics`]
//! (Prometheus series and the per-RPC layer), [`telemetry`] (logs, traces, `traceparent`).
#![forbid(unsafe_code)]

pub mod accept;
pub mod bayeux;
pub mod client;
pub mod cluster;
pub mod config;
pub mod descriptors;
pub mod events;
pub mod grpc;
pub mod mapping;
pub mod metrics;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod upstream;

pub use gws_model::json;

/// Code generated from `proto/gws/sms/v1/sms_session.proto`.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("gws.sms.v1");
    pub use client::sms_session_service_client;
    pub use server::sms_session_service_server;

    mod client {
        include!(concat!(env!("OUT_DIR"), "/client/gws.sms.v1.rs"));
    }

    mod server {
        include!(concat!(env!("OUT_DIR"), "/server/gws.sms.v1.rs"));
    }

    /// The encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("gws_sms_v1_descriptor");
}
