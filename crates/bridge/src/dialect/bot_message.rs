//! Reading the bot's frames: what a frame asks for ([`BotMessage`]), why one is rejected
//! ([`FrameError`]), and the media payload decoded from lenient base64 into samples.

use std::borrow::Cow;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{DecodeError, DecodeSliceError, Engine as _};
use voicegate_audio::g711::ulaw_decode;

use super::bot_frame::{Frame, Inner, Scalar, Slot};
use super::Protocol;

/// A frame from the bot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BotMessage {
    /// Audio to play to the caller, decoded to PCM16 at the stream's rate (Twilio: from mu-law).
    Media(Vec<i16>),
    /// A mark to echo when playout passes it.
    Mark(String),
    /// Drop queued audio and echo every pending mark.
    Clear,
    /// Extension: transfer the call to `transfer.to` (`sip:…` or `+…`), as sent; empty when the
    /// bot names no target (the call then uses the flow's agent).
    Transfer(String),
    /// Extension: hang up the call.
    Hangup,
    /// Any other event, by name; the caller ignores it.
    Other(String),
}

/// A frame from the bot as [`parse_into`] returns it: like [`BotMessage`], but the media samples
/// are in the caller's reused buffer instead of an owned `Vec`. Only the rare control messages
/// allocate (their small strings); media frames do not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BotMessageRef {
    /// Audio to play; the decoded samples are in the buffer passed to [`parse_into`].
    Media,
    /// A mark to echo when playout passes it.
    Mark(String),
    /// Drop queued audio and echo every pending mark.
    Clear,
    /// Extension: transfer the call to this target (`sip:…` or `+…`), as sent; empty when the
    /// bot names none.
    Transfer(String),
    /// Extension: hang up the call.
    Hangup,
    /// Any other event, by name.
    Other(String),
}

impl BotMessageRef {
    /// The owned message, taking the media samples from `samples` (used only for `Media`).
    pub fn into_message(self, samples: Vec<i16>) -> BotMessage {
        match self {
            Self::Media => BotMessage::Media(samples),
            Self::Mark(name) => BotMessage::Mark(name),
            Self::Clear => BotMessage::Clear,
            Self::Transfer(to) => BotMessage::Transfer(to),
            Self::Hangup => BotMessage::Hangup,
            Self::Other(event) => BotMessage::Other(event),
        }
    }
}

/// Why a bot frame was rejected.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame is not valid JSON.
    #[error("bot frame is not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The frame is JSON but not an object.
    #[error("bot frame is not a JSON object")]
    NotObject,
    /// The frame has no `event`, or it is not a string.
    #[error("bot frame has no \"event\" string")]
    NoEvent,
    /// A field the event needs is absent.
    #[error("bot frame lacks the field {0}")]
    MissingField(&'static str),
    /// A field has the wrong JSON type (e.g. a payload that is not a string).
    #[error("bot frame field {0} has the wrong type")]
    BadField(&'static str),
    /// The media payload is not valid base64 (offsets are within the payload string).
    #[error("bot media payload is not valid base64: {0}")]
    BadBase64(#[source] DecodeError),
    /// The decoded payload is not a whole number of 16-bit samples.
    #[error("bot media payload of {bytes} bytes is not a whole number of 16-bit samples")]
    OddPayload {
        /// Decoded length in bytes.
        bytes: usize,
    },
}

/// Parses one text frame from the bot.
pub fn parse(protocol: Protocol, text: &str) -> Result<BotMessage, FrameError> {
    let mut samples = Vec::new();
    let message = parse_into(protocol, text, &mut samples)?;
    Ok(message.into_message(samples))
}

/// Parses one text frame from the bot without allocating on the media path: for
/// [`BotMessageRef::Media`] the decoded samples replace the contents of `samples`, whose
/// capacity is reused. For other messages and on error `samples` is left empty.
pub fn parse_into<'a>(
    protocol: Protocol,
    text: &'a str,
    samples: &mut Vec<i16>,
) -> Result<BotMessageRef, FrameError> {
    samples.clear();
    let frame: Frame<'a> = serde_json::from_str(text).map_err(|e| {
        if e.classify() == serde_json::error::Category::Data {
            FrameError::NotObject
        } else {
            FrameError::NotJson(e)
        }
    })?;
    let event = match frame.event {
        Some(Scalar::Str(event)) => event,
        _ => return Err(FrameError::NoEvent),
    };
    match &*event {
        "media" => {
            let payload = match frame.media {
                Slot::Absent => return Err(FrameError::MissingField("media")),
                Slot::NotObject => return Err(FrameError::BadField("media")),
                Slot::Object(obj) => match obj.payload {
                    None => return Err(FrameError::MissingField("media.payload")),
                    Some(Scalar::Str(payload)) => payload,
                    Some(_) => return Err(FrameError::BadField("media.payload")),
                },
            };
            if let Err(e) = decode_payload(protocol, &payload, samples) {
                samples.clear();
                return Err(e);
            }
            Ok(BotMessageRef::Media)
        }
        "mark" => text_field(frame.mark, |o| o.name, "mark", "mark.name")
            .map(|name| BotMessageRef::Mark(name.into_owned())),
        "clear" => Ok(BotMessageRef::Clear),
        // The target is optional: without one the call picks the flow's agent.
        "transfer" => match text_field(frame.transfer, |o| o.to, "transfer", "transfer.to") {
            Ok(to) => Ok(BotMessageRef::Transfer(to.into_owned())),
            Err(FrameError::MissingField(_)) => Ok(BotMessageRef::Transfer(String::new())),
            Err(e) => Err(e),
        },
        "hangup" => Ok(BotMessageRef::Hangup),
        _ => Ok(BotMessageRef::Other(event.into_owned())),
    }
}

/// A non-empty string (or number, as text) field of an event's object.
fn text_field<'a>(
    slot: Slot<'a>,
    field: impl FnOnce(Inner<'a>) -> Option<Scalar<'a>>,
    object: &'static str,
    name: &'static str,
) -> Result<Cow<'a, str>, FrameError> {
    match slot {
        Slot::Absent => Err(FrameError::MissingField(object)),
        Slot::NotObject => Err(FrameError::BadField(object)),
        Slot::Object(obj) => match field(obj) {
            None => Err(FrameError::MissingField(name)),
            Some(Scalar::Str(s)) if s.is_empty() => Err(FrameError::MissingField(name)),
            Some(Scalar::Str(s)) => Ok(s),
            Some(Scalar::Number(n)) => Ok(Cow::Owned(n)),
            Some(Scalar::Other) => Err(FrameError::BadField(name)),
        },
    }
}

/// Base64 accepted from bots: standard alphabet, padding optional, stray trailing bits tolerated.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Base64 characters decoded per step: a multiple of 4, so only the last step sees padding.
const DECODE_STEP_CHARS: usize = 4096;

/// Decodes a base64 payload into samples, through a stack buffer (no heap besides `samples`).
fn decode_payload(
    protocol: Protocol,
    payload: &str,
    samples: &mut Vec<i16>,
) -> Result<(), FrameError> {
    let input = payload.as_bytes();
    // `=` may only end the payload; checked here because each step is decoded on its own.
    let body = input.len() - input.iter().rev().take_while(|&&b| b == b'=').count();
    if let Some(pos) = input[..body].iter().position(|&b| b == b'=') {
        return Err(FrameError::BadBase64(DecodeError::InvalidByte(pos, b'=')));
    }
    let decoded_estimate = input.len() / 4 * 3 + 3;
    samples.reserve(decoded_estimate / protocol.bytes_per_sample());
    let mut buf = [0u8; DECODE_STEP_CHARS / 4 * 3];
    let mut total = 0usize;
    for (step, chunk) in input.chunks(DECODE_STEP_CHARS).enumerate() {
        let n = LENIENT_BASE64
            .decode_slice(chunk, &mut buf)
            .map_err(|e| FrameError::BadBase64(offset_error(e, step * DECODE_STEP_CHARS)))?;
        total += n;
        let bytes = &buf[..n];
        match protocol {
            Protocol::Exotel => {
                // Every step but the last decodes to an even count (3072 bytes), so an odd
                // count means this is the last step and `total` is the whole payload.
                if n % 2 != 0 {
                    return Err(FrameError::OddPayload { bytes: total });
                }
                samples.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|pair| i16::from_le_bytes([pair[0], pair[1]])),
                );
            }
            Protocol::Twilio => samples.extend(bytes.iter().map(|&code| ulaw_decode(code))),
        }
    }
    Ok(())
}

/// Shifts a step-relative decode error to an offset within the whole payload.
fn offset_error(e: DecodeSliceError, base: usize) -> DecodeError {
    match e {
        DecodeSliceError::DecodeError(DecodeError::InvalidByte(i, b)) => {
            DecodeError::InvalidByte(base + i, b)
        }
        DecodeSliceError::DecodeError(DecodeError::InvalidLastSymbol(i, b)) => {
            DecodeError::InvalidLastSymbol(base + i, b)
        }
        DecodeSliceError::DecodeError(DecodeError::InvalidLength(n)) => {
            DecodeError::InvalidLength(base + n)
        }
        DecodeSliceError::DecodeError(other) => other,
        // The step buffer holds the decoded size of a full step, so this cannot happen.
        DecodeSliceError::OutputSliceTooSmall => DecodeError::InvalidLength(base),
    }
}
