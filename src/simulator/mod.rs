//! The GWS simulator. (being written)
pub mod cometd;
