//! The Bayeux (CometD) long-polling client. (being written)
