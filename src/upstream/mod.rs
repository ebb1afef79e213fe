//! The GWS REST side: who the agent is ([`credential`]), the per-agent upstream state
//! ([`agents`]: cookie jar ([`cookies`]), CSRF token, over one shared HTTP client), the REST operations ([`gws`], typed by [`operation`]) and
//! what can go wrong on the way ([`error`]), and how many requests may be out at once
//! ([`slots`]). Nothing here knows about gRPC.

pub mod agents;
mod cookies;
pub mod credential;
pub mod error;
pub mod gws;
pub mod operation;
pub mod slots;

pub use agents::{Agent, AgentRegistry, AgentsConfig, ClientError, Verdict};
pub use credential::{AgentKey, Credential, CredentialError};
pub use error::UpstreamError;
pub use gws::{GwsClient, MIN_UPSTREAM_BUDGET, OperationAccepted, Read};
pub use operation::{Confirmation, Operation, PartyTarget, TransferTarget};
