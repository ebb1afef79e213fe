//! The simulator CometD hub. (being written)
