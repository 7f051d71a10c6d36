//! voicegate: SIP trunk gateway and SIP-to-WebSocket media bridge (config, call handling, server).
//!
//! The protocol pieces live in `voicegate-sip` and `voicegate-rtp`; this crate decides what
//! each call does ([`call`]), routes SIP messages to calls ([`core`]) and starts it all
//! ([`server`]) from the [`config`].

pub mod admit;
pub mod api_listener;
pub mod bindings;
pub mod call;
pub mod clock;
pub mod config;
pub mod core;
pub mod dispatch;
pub mod in_progress;
pub mod load;
pub mod logging;
pub mod refusals;
pub mod registrar;
pub mod resolve;
pub mod seed;
pub mod server;
pub mod settings;
pub mod shield;
pub mod tls;
