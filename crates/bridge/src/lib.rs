//! The StreamKit bridge: a call's media streamed to a voice bot over WebSocket (Exotel or
//! Twilio dialect) and the bot's audio played back to the caller.

pub mod dialect;
pub mod echo_bot;
pub mod playout;
pub mod relay;
pub mod session;
pub mod tap;
pub mod tone;
pub mod transcode;
pub mod ws;
