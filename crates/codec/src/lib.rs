//! The audio codecs voicegate speaks, as one type for the whole workspace: SDP negotiates a
//! [`Codec`], the media legs packetise and score it, the bridge transcodes it for bots.
//!
//! What each codec means on the wire (payload types, rtpmap names, clock rates) is here; how
//! SDP writes its fmtp, and how audio is encoded, stay with the crates that do those things.

use std::fmt;

/// Audio codecs voicegate can negotiate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 A-law (RFC 3551 PCMA), 8 kHz.
    Pcma,
    /// G.711 µ-law (RFC 3551 PCMU), 8 kHz.
    Pcmu,
    /// Opus (RFC 7587): 48 kHz RTP clock, dynamic payload type.
    Opus,
}

/// The dynamic payload type we give Opus in our offers.
pub const OPUS_PT: u8 = 111;

impl Codec {
    /// Every codec we know, for iteration (e.g. name lookup).
    pub const ALL: &'static [Codec] = &[Codec::Pcma, Codec::Pcmu, Codec::Opus];

    /// The payload type we use in our own offers: static for G.711 (RFC 3551), 111 for Opus.
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
            Codec::Opus => OPUS_PT,
        }
    }

    /// The static payload type (RFC 3551), which needs no rtpmap; None for dynamic codecs.
    pub fn static_payload_type(self) -> Option<u8> {
        match self {
            Codec::Pcmu => Some(0),
            Codec::Pcma => Some(8),
            Codec::Opus => None,
        }
    }

    /// Encoding name as written in `a=rtpmap`.
    pub fn encoding_name(self) -> &'static str {
        match self {
            Codec::Pcma => "PCMA",
            Codec::Pcmu => "PCMU",
            Codec::Opus => "opus",
        }
    }

    /// RTP clock rate in Hz.
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Pcma | Codec::Pcmu => 8000,
            Codec::Opus => 48000,
        }
    }

    /// Whether this is G.711 (A-law or µ-law): same rate, same quality, same loss concealment.
    pub fn is_g711(self) -> bool {
        matches!(self, Codec::Pcma | Codec::Pcmu)
    }

    /// Case-insensitive lookup by encoding name (`"pcma"`, `"PCMU"`, ...).
    pub fn from_name(name: &str) -> Option<Codec> {
        Codec::ALL
            .iter()
            .copied()
            .find(|codec| codec.encoding_name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encoding_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_without_case_and_unknown_names_are_none() {
        for &codec in Codec::ALL {
            assert_eq!(Codec::from_name(codec.encoding_name()), Some(codec));
            assert_eq!(
                Codec::from_name(&codec.encoding_name().to_ascii_uppercase()),
                Some(codec)
            );
            assert_eq!(codec.to_string(), codec.encoding_name());
        }
        assert_eq!(Codec::from_name("G729"), None);
    }

    #[test]
    fn static_payload_types_are_rfc_3551s_and_opus_is_dynamic() {
        assert_eq!(Codec::Pcmu.static_payload_type(), Some(0));
        assert_eq!(Codec::Pcma.static_payload_type(), Some(8));
        assert_eq!(Codec::Opus.static_payload_type(), None);
        assert!((96..=127).contains(&Codec::Opus.payload_type()));
        assert!(Codec::Pcma.is_g711() && Codec::Pcmu.is_g711() && !Codec::Opus.is_g711());
    }
}
