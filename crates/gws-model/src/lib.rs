//! The GWS model both sides of the wire share, so each fact is written down once: the SMS
//! session operations as one typed value whose serialization is the REST body
//! ([`operation`]), an agent's credential and its salted key ([`credential`]), and bounded
//! JSON from upstream ([`json`]: no recursion limit, no stack overflow, values a
//! `serde_json::Value` cannot hold kept as their exact JSON text). The gateway sends and
//! parses with it; the simulator reads and writes the same types.
#![forbid(unsafe_code)]

pub mod credential;
pub mod json;
pub mod operation;

pub use credential::{AgentKey, Credential, CredentialError};
pub use operation::{Confirmation, Effect, Operation, PartyTarget, TransferTarget};
