//! voicegate's running gateway without its start-up: the SIP core that routes every message
//! (per-source shield, load shedding, admission, registrar) and the call tasks that drive
//! `voicegate-call`'s legs and the media of `voicegate-bridge` and `voicegate-rtp`.
//!
//! What a message does is decided in [`dispatch`] over the shared [`core`]; each admitted
//! call runs as a task of [`call`]. The `voicegate` binary builds it all from its config.

pub mod admit;
pub mod bindings;
pub mod call;
pub mod clock;
pub mod core;
pub mod dispatch;
pub mod in_progress;
pub mod load;
pub mod refusals;
pub mod registrar;
pub mod resolve;
pub mod settings;
pub mod shield;
pub mod trunk_config;
