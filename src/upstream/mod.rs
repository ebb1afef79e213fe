//! The GWS REST side: the per-agent upstream state ([`agents`]: cookie jar ([`cookies`]), CSRF
//! token, over one shared HTTP client), the REST operations ([`gws`]), what can go wrong on the
//! way ([`error`]), how many requests may be out at once ([`slots`]), and what was sent and not
//! heard the end of ([`unsettled`]). Who the agent is and what an operation's body is come from
//! the shared model (`gws_model`), which the simulator reads too. Nothing here knows about gRPC.

pub mod agents;
mod cookies;
pub mod error;
pub mod gws;
pub mod slots;
pub mod unsettled;

pub use agents::{Agent, AgentRegistry, AgentsConfig, ClientError, Verdict};
pub use error::{Transport, UpstreamError};
pub use gws::{GwsClient, MIN_UPSTREAM_BUDGET, OperationAccepted, Read};
pub use gws_model::credential::{self, AgentKey, Credential, CredentialError};
pub use gws_model::operation::{
    self, Confirmation, Effect, Operation, PartyTarget, TransferTarget,
};
pub use unsettled::{Sending, Unsettled};
