//! What the end-to-end tests share: the gateway and simulator harness, stream helpers,
//! child processes, certificates, the CometD Node server, a connection-cutting proxy, a
//! network link that can be cut and healed.

pub mod certs;
pub mod cluster;
pub mod cometd_node;
pub mod cut_proxy;
pub mod events;
pub mod gateway;
pub mod link_proxy;
pub mod nats;
pub mod process;
pub mod replica;
