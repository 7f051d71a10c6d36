//! voicegate: SIP trunk gateway and SIP-to-WebSocket media bridge. This crate is the wiring:
//! the [`config`] file, start-up ([`server`]: store, seeding, transports, TLS, the trunk API)
//! and logging; what runs is `voicegate-engine` (the SIP core and the calls).

pub mod api_listener;
pub mod config;
pub mod logging;
pub mod seed;
pub mod server;
pub mod tls;

// The engine's modules under their old paths, for the binary and the integration tests.
pub use voicegate_engine::{
    admit, bindings, call, clock, core, dispatch, in_progress, load, refusals, registrar, resolve,
    settings, shield,
};
