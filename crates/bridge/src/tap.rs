//! Decoded audio copied off a relayed call for a listen-only bot (agent assist): the relay
//! produces [`TapFrame`]s, the bot session consumes them. A frame is plain data (no heap),
//! so tapping allocates nothing per packet.

/// Samples in one 20 ms frame at 8 kHz.
pub const TAP_FRAME_SAMPLES: usize = 160;

/// Whose voice a frame carries, named as Twilio names tracks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Track {
    /// The caller (the party that called voicegate).
    Inbound,
    /// The other party (agent or callee): what the caller hears.
    Outbound,
}

impl Track {
    /// As written in the dialects' `track` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Track::Inbound => "inbound",
            Track::Outbound => "outbound",
        }
    }
}

/// 20 ms of one party's audio, 16-bit linear PCM at 8 kHz, mono.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TapFrame {
    pub track: Track,
    pub samples: [i16; TAP_FRAME_SAMPLES],
}
