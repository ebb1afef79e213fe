//! The gRPC edge: who the caller is ([`auth`]), how long it may take ([`deadline`]), proto
//! requests into validated domain values ([`validate`]), the service itself ([`service`]),
//! and the one place where errors become `tonic::Status` ([`status`]).

pub mod auth;
pub mod codec;
pub mod deadline;
pub mod service;
pub mod status;
pub mod validate;

pub use service::SmsSessionApi;
pub use status::Error;
