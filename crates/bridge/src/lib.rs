//! A call's media pipelines: streamed to a voice bot over WebSocket (Exotel or Twilio dialect)
//! with the bot's audio played back, relayed (and transcoded) between the two legs of a B2BUA
//! call, or ringback while an agent's phone rings.

pub mod dialect;
pub mod echo_bot;
pub mod limits;
pub mod playout;
pub mod relay;
pub mod session;
pub mod tap;
pub mod tone;
pub mod transcode;
pub mod ws;
