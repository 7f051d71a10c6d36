//! voicegate: SIP trunk gateway and SIP-to-WebSocket media bridge (config, call handling, server).

pub mod config;
