//! The bot protocols on the wire: Exotel and Twilio Media Streams messages, built and parsed.
//!
//! Plain data and functions, no I/O. voicegate is the WebSocket client: an [`Encoder`] builds the
//! text frames sent to the bot (one per call, keeping the sequence number and the media chunk
//! counter), and [`parse`] / [`parse_into`] read the bot's frames.
//!
//! Field names follow `spec/bot-protocols.md`:
//!
//! * Exotel: snake_case keys, caller audio as base64 of 16-bit little-endian mono PCM ("slin") at
//!   the stream's rate (8000, 16000 or 24000); numeric fields as strings.
//! * Twilio: camelCase keys, audio as base64 of G.711 mu-law at 8000 Hz.
//!
//! Every message after `connected` carries the dialect's sequence number (from 1, one more per
//! message, as a string) and stream SID key (`sequence_number` / `stream_sid` for Exotel,
//! `sequenceNumber` / `streamSid` for Twilio), then an object named after the event.
//!
//! From the bot we accept `stream_sid`, `streamSid` or no SID at all, numbers as strings or
//! numbers, and any media payload that is a whole number of samples. Besides `media`, `mark` and
//! `clear`, two voicegate extensions are understood: `{"event":"transfer","transfer":{"to":"…"}}`
//! and `{"event":"hangup"}`. Unknown events come back as [`BotMessage::Other`] for the caller to
//! ignore, as Exotel does.
//!
//! After a hand-off to an agent the stream carries both parties: [`Encoder::track_media`] adds
//! `media.track` (`inbound` = caller, `outbound` = agent) in both dialects; for Exotel that field
//! is a voicegate extension.

mod bot_frame;
mod bot_message;
mod encoder;

use std::fmt;

pub use bot_message::{parse, parse_into, BotMessage, BotMessageRef, FrameError};
pub use encoder::Encoder;

/// Which bot dialect a stream speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Exotel Voicebot / Stream: base64 PCM16 LE at 8, 16 or 24 kHz (the default dialect).
    #[default]
    Exotel,
    /// Twilio Media Streams: base64 mu-law at 8 kHz.
    Twilio,
}

impl Protocol {
    /// The dialect named `exotel` or `twilio` (ASCII case-insensitive), as in the configuration.
    pub fn from_name(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("exotel") {
            Some(Self::Exotel)
        } else if name.eq_ignore_ascii_case("twilio") {
            Some(Self::Twilio)
        } else {
            None
        }
    }

    /// The configuration name of the dialect: `exotel` or `twilio`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Exotel => "exotel",
            Self::Twilio => "twilio",
        }
    }

    /// Bytes one sample takes in a decoded media payload (2 for PCM16, 1 for mu-law).
    pub fn bytes_per_sample(self) -> usize {
        match self {
            Self::Exotel => 2,
            Self::Twilio => 1,
        }
    }

    fn sequence_key(self) -> &'static str {
        match self {
            Self::Exotel => "sequence_number",
            Self::Twilio => "sequenceNumber",
        }
    }

    fn sid_key(self) -> &'static str {
        match self {
            Self::Exotel => "stream_sid",
            Self::Twilio => "streamSid",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The value of Exotel's `start.media_format.encoding`, as Exotel's own `start` shows it: the
/// payloads are base64 text (of raw signed 16-bit little-endian PCM, "slin").
pub const EXOTEL_ENCODING: &str = "base64";
/// The `customParameters` names under which the Twilio dialect passes the caller's and the
/// called number (Twilio's `start` has no such fields; a TwiML `<Stream>` would pass them as
/// `<Parameter>`s, and these are the names stock pipecat bots read).
pub const TWILIO_FROM_PARAMETER: &str = "from_number";
/// See [`TWILIO_FROM_PARAMETER`].
pub const TWILIO_TO_PARAMETER: &str = "to_number";
/// The value of Twilio's `start.mediaFormat.encoding`.
pub const TWILIO_ENCODING: &str = "audio/x-mulaw";
/// Twilio streams are always 8 kHz.
pub const TWILIO_SAMPLE_RATE: u32 = 8000;

/// Fixed facts of one stream, for the start event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamInfo {
    /// The stream's SID, repeated in every message.
    pub stream_sid: String,
    /// The call's SID.
    pub call_sid: String,
    /// The account's SID.
    pub account_sid: String,
    /// Caller number (Exotel `start.from`; Twilio `customParameters.from_number`).
    pub from: String,
    /// Called number (Exotel `start.to`; Twilio `customParameters.to_number`).
    pub to: String,
    /// Emitted as the `custom_parameters` / `customParameters` object, in this order; a key that
    /// repeats an earlier one is left out (the first value wins).
    pub custom_parameters: Vec<(String, String)>,
    /// Exotel: 8000, 16000 or 24000. Ignored for Twilio, which is always 8000.
    pub sample_rate: u32,
    /// Voicebot (bidirectional) rather than Stream (listen-only). Twilio lists both tracks then.
    pub bidirectional: bool,
}

/// Why the stream stops (Exotel's `stop.reason`; Twilio's stop carries no reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// The caller hung up: `callended`.
    CallEnded,
    /// The stream ended for another reason: `stopped`.
    Stopped,
}

impl StopReason {
    /// The wire value: `callended` or `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CallEnded => "callended",
            Self::Stopped => "stopped",
        }
    }
}

#[cfg(test)]
mod tests;
