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

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::{DecodeError, DecodeSliceError, Engine as _};
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use voicegate_audio::g711::{encode_ulaw, ulaw_decode};

use crate::tap::Track;

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

/// Builds the outgoing text frames of one stream.
///
/// Each method writes exactly one JSON text frame into `out`, clearing it first and reusing its
/// capacity. The sequence number starts at 1 with the first message after `connected` (which has
/// none) and grows by one per message; the media chunk counter starts at 1. Once `out` and the
/// internal scratch buffer have grown to the frame size, building a frame does not allocate.
#[derive(Clone, Debug)]
pub struct Encoder {
    protocol: Protocol,
    info: StreamInfo,
    /// `info.stream_sid` as a JSON string literal (quoted and escaped), written into every frame.
    sid_json: String,
    /// The sequence number of the last message built (0 before the first).
    sequence: u64,
    /// The chunk number of the last media message built (0 before the first); the caller's
    /// (inbound) track, which is the only one before a hand-off.
    chunk: u64,
    /// The same for the agent's (outbound) track, numbered on its own from 1.
    outbound_chunk: u64,
    /// PCM16 LE or mu-law bytes of the current media frame before base64.
    scratch: Vec<u8>,
}

impl Encoder {
    /// An encoder for one stream. For Twilio the sample rate is forced to 8000, and the
    /// numbers join the custom parameters after the others, so a flow's own parameter of the
    /// same name wins.
    pub fn new(protocol: Protocol, mut info: StreamInfo) -> Self {
        if protocol == Protocol::Twilio {
            info.sample_rate = TWILIO_SAMPLE_RATE;
            info.custom_parameters
                .push((TWILIO_FROM_PARAMETER.into(), info.from.clone()));
            info.custom_parameters
                .push((TWILIO_TO_PARAMETER.into(), info.to.clone()));
        }
        let mut sid_json = String::with_capacity(info.stream_sid.len() + 2);
        write_json_str(&mut sid_json, &info.stream_sid);
        Self {
            protocol,
            info,
            sid_json,
            sequence: 0,
            chunk: 0,
            outbound_chunk: 0,
            scratch: Vec::new(),
        }
    }

    /// The dialect this encoder speaks.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The stream's facts (with the sample rate the frames use).
    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// The sample rate of the PCM passed to [`Encoder::media`].
    pub fn sample_rate(&self) -> u32 {
        self.info.sample_rate
    }

    /// The sequence number of the last message built (0 before the first).
    pub fn sequence_number(&self) -> u64 {
        self.sequence
    }

    /// The chunk number of the last media message built (0 before the first) on the caller's
    /// (inbound) track.
    pub fn chunk_number(&self) -> u64 {
        self.chunk
    }

    /// The chunk number of the last media message built on `track` (0 before the first).
    pub fn track_chunk_number(&self, track: Track) -> u64 {
        match track {
            Track::Inbound => self.chunk,
            Track::Outbound => self.outbound_chunk,
        }
    }

    /// `connected`: Exotel `{"event":"connected"}`, Twilio also with `protocol` and `version`.
    /// It carries no sequence number.
    pub fn connected(&mut self, out: &mut String) {
        out.clear();
        out.push_str(match self.protocol {
            Protocol::Exotel => r#"{"event":"connected"}"#,
            Protocol::Twilio => r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#,
        });
    }

    /// `start`, with the stream's SIDs, custom parameters and media format.
    pub fn start(&mut self, out: &mut String) {
        self.begin("start", out);
        let info = &self.info;
        match self.protocol {
            Protocol::Exotel => {
                out.push_str(r#""stream_sid":"#);
                out.push_str(&self.sid_json);
                out.push_str(r#","call_sid":"#);
                write_json_str(out, &info.call_sid);
                out.push_str(r#","account_sid":"#);
                write_json_str(out, &info.account_sid);
                out.push_str(r#","from":"#);
                write_json_str(out, &info.from);
                out.push_str(r#","to":"#);
                write_json_str(out, &info.to);
                out.push_str(r#","custom_parameters":"#);
                write_parameters(out, &info.custom_parameters);
                out.push_str(r#","media_format":{"encoding":""#);
                out.push_str(EXOTEL_ENCODING);
                out.push_str(r#"","sample_rate":""#);
                push_u64(out, u64::from(info.sample_rate));
                // 16 bits per sample, mono: 8000 Hz is 128 kbit/s.
                out.push_str(r#"","bit_rate":""#);
                push_u64(out, u64::from(info.sample_rate) * 16 / 1000);
                out.push_str("kbps\"}");
            }
            Protocol::Twilio => {
                out.push_str(r#""accountSid":"#);
                write_json_str(out, &info.account_sid);
                out.push_str(r#","streamSid":"#);
                out.push_str(&self.sid_json);
                out.push_str(r#","callSid":"#);
                write_json_str(out, &info.call_sid);
                out.push_str(if info.bidirectional {
                    r#","tracks":["inbound","outbound"]"#
                } else {
                    r#","tracks":["inbound"]"#
                });
                out.push_str(r#","customParameters":"#);
                write_parameters(out, &info.custom_parameters);
                out.push_str(r#","mediaFormat":{"encoding":""#);
                out.push_str(TWILIO_ENCODING);
                out.push_str(r#"","sampleRate":"#);
                push_u64(out, u64::from(TWILIO_SAMPLE_RATE));
                out.push_str(r#","channels":1}"#);
            }
        }
        out.push_str("}}");
    }

    /// `media` with caller audio. `pcm` is 16-bit samples at the stream's rate; Exotel sends them
    /// as base64 PCM16 LE, Twilio mu-law encodes them (8 kHz) first. `timestamp_ms` is the time
    /// since the stream started. The chunk number counts from 1.
    pub fn media(&mut self, pcm: &[i16], timestamp_ms: u64, out: &mut String) {
        // Exotel's own messages have no track field: keep them as Exotel sends them.
        let write_track = self.protocol == Protocol::Twilio;
        self.media_of(Track::Inbound, write_track, pcm, timestamp_ms, out);
    }

    /// `media` with one party's audio of a relayed call (listen-only, after a hand-off): like
    /// [`Encoder::media`], with `media.track` (`inbound` = caller, `outbound` = agent) in both
    /// dialects (for Exotel a voicegate extension) and the chunk numbered per track. The inbound
    /// track continues the numbering of the caller's audio sent before.
    pub fn track_media(&mut self, track: Track, pcm: &[i16], timestamp_ms: u64, out: &mut String) {
        self.media_of(track, true, pcm, timestamp_ms, out);
    }

    fn media_of(
        &mut self,
        track: Track,
        write_track: bool,
        pcm: &[i16],
        timestamp_ms: u64,
        out: &mut String,
    ) {
        let chunk = match track {
            Track::Inbound => &mut self.chunk,
            Track::Outbound => &mut self.outbound_chunk,
        };
        *chunk += 1;
        let chunk = *chunk;
        self.begin("media", out);
        if write_track {
            out.push_str(r#""track":""#);
            out.push_str(track.as_str());
            out.push_str(r#"","#);
        }
        out.push_str(r#""chunk":""#);
        push_u64(out, chunk);
        out.push_str(r#"","timestamp":""#);
        push_u64(out, timestamp_ms);
        out.push_str(r#"","payload":""#);
        self.scratch.clear();
        match self.protocol {
            Protocol::Exotel => {
                self.scratch.reserve(pcm.len() * 2);
                for sample in pcm {
                    self.scratch.extend_from_slice(&sample.to_le_bytes());
                }
            }
            Protocol::Twilio => {
                self.scratch.resize(pcm.len(), 0);
                encode_ulaw(pcm, &mut self.scratch);
            }
        }
        // Room for the payload and the closing; when `out` must grow, it grows with slack so that
        // the next frame of the same size, whose counters may be a digit or two longer, still fits.
        let needed = base64::encoded_len(self.scratch.len(), true).unwrap_or(0) + 3;
        if out.capacity() - out.len() < needed {
            out.reserve(needed + MEDIA_SLACK);
        }
        STANDARD.encode_string(&self.scratch, out);
        out.push_str("\"}}");
    }

    /// `dtmf`: a key the caller pressed. Exotel gives `digit` and `duration` (ms); Twilio gives
    /// `track` (`inbound_track`) and `digit`.
    pub fn dtmf(&mut self, digit: char, duration_ms: u32, out: &mut String) {
        self.begin("dtmf", out);
        let mut buf = [0u8; 4];
        let digit = digit.encode_utf8(&mut buf);
        match self.protocol {
            Protocol::Exotel => {
                out.push_str(r#""digit":"#);
                write_json_str(out, digit);
                out.push_str(r#","duration":""#);
                push_u64(out, u64::from(duration_ms));
                out.push('"');
            }
            Protocol::Twilio => {
                out.push_str(r#""track":"inbound_track","digit":"#);
                write_json_str(out, digit);
            }
        }
        out.push_str("}}");
    }

    /// `mark`: the audio the bot queued before its mark `name` has finished playing.
    pub fn mark(&mut self, name: &str, out: &mut String) {
        self.begin("mark", out);
        out.push_str(r#""name":"#);
        write_json_str(out, name);
        out.push_str("}}");
    }

    /// `stop`: Exotel gives `call_sid`, `account_sid` and `reason`; Twilio `accountSid` and
    /// `callSid` (no reason).
    pub fn stop(&mut self, reason: StopReason, out: &mut String) {
        self.begin("stop", out);
        match self.protocol {
            Protocol::Exotel => {
                out.push_str(r#""call_sid":"#);
                write_json_str(out, &self.info.call_sid);
                out.push_str(r#","account_sid":"#);
                write_json_str(out, &self.info.account_sid);
                out.push_str(r#","reason":""#);
                out.push_str(reason.as_str());
                out.push('"');
            }
            Protocol::Twilio => {
                out.push_str(r#""accountSid":"#);
                write_json_str(out, &self.info.account_sid);
                out.push_str(r#","callSid":"#);
                write_json_str(out, &self.info.call_sid);
            }
        }
        out.push_str("}}");
    }

    /// Clears `out` and writes `{"event":E,<seq>:"N",<sid>:S,"E":{` with the next sequence number.
    fn begin(&mut self, event: &'static str, out: &mut String) {
        out.clear();
        self.sequence += 1;
        out.push_str(r#"{"event":""#);
        out.push_str(event);
        out.push_str(r#"",""#);
        out.push_str(self.protocol.sequence_key());
        out.push_str(r#"":""#);
        push_u64(out, self.sequence);
        out.push_str(r#"",""#);
        out.push_str(self.protocol.sid_key());
        out.push_str(r#"":"#);
        out.push_str(&self.sid_json);
        out.push_str(r#",""#);
        out.push_str(event);
        out.push_str(r#"":{"#);
    }
}

/// Spare bytes reserved in a media frame beyond its payload (see [`Encoder::media`]).
const MEDIA_SLACK: usize = 64;

/// Appends a decimal number without allocating.
fn push_u64(out: &mut String, n: u64) {
    // Writing to a String cannot fail.
    let _ = write!(out, "{n}");
}

/// Appends `s` as a JSON string literal, quoted and escaped (RFC 8259): `"` and `\` escaped,
/// control characters as short escapes or `\u00XX`, everything else as UTF-8.
fn write_json_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        // Only ASCII bytes are escaped, so `start..i` always falls on char boundaries.
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Appends the custom parameters as a JSON object; a repeated key keeps its first value.
fn write_parameters(out: &mut String, params: &[(String, String)]) {
    out.push('{');
    let mut first = true;
    for (i, (key, value)) in params.iter().enumerate() {
        if params[..i].iter().any(|(k, _)| k == key) {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        write_json_str(out, key);
        out.push(':');
        write_json_str(out, value);
    }
    out.push('}');
}

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

// ---------------------------------------------------------------------------------------------
// Zero-copy reading of bot frames: only the few fields we use are kept, borrowed from the text
// where JSON has no escapes; everything else is skipped without allocating.

/// A JSON value we read as text.
enum Scalar<'a> {
    Str(Cow<'a, str>),
    /// A number, as its decimal text.
    Number(String),
    /// `true`/`false`, `null`, an array or an object.
    Other,
}

/// The fields we read from an event's object.
#[derive(Default)]
struct Inner<'a> {
    payload: Option<Scalar<'a>>,
    name: Option<Scalar<'a>>,
    to: Option<Scalar<'a>>,
}

/// A top-level key holding an event's object.
#[derive(Default)]
enum Slot<'a> {
    #[default]
    Absent,
    NotObject,
    Object(Inner<'a>),
}

/// The parts of a bot frame we read.
#[derive(Default)]
struct Frame<'a> {
    event: Option<Scalar<'a>>,
    media: Slot<'a>,
    mark: Slot<'a>,
    transfer: Slot<'a>,
}

/// The index of an object key in a list of known keys, matched without allocating; `None` for
/// any other key.
struct Key(Option<usize>);

struct KeyVisitor(&'static [&'static str]);

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Key(self.0.iter().position(|name| *name == v)))
    }
}

const FRAME_KEYS: &[&str] = &["event", "media", "mark", "transfer"];
const INNER_KEYS: &[&str] = &["payload", "name", "to"];

/// Deserializes a key of a known set.
struct KeySeed(&'static [&'static str]);

impl<'de> de::DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_identifier(KeyVisitor(self.0))
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::Number(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Number(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Number(v.to_string()))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct SlotVisitor;

impl<'de> Visitor<'de> for SlotVisitor {
    type Value = Slot<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut inner = Inner::default();
        while let Some(Key(key)) = map.next_key_seed(KeySeed(INNER_KEYS))? {
            match key {
                Some(0) => inner.payload = Some(map.next_value()?),
                Some(1) => inner.name = Some(map.next_value()?),
                Some(2) => inner.to = Some(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Slot::Object(inner))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Slot::NotObject)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Slot::NotObject)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Slot::NotObject)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Slot::NotObject)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Slot::NotObject)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Slot::NotObject)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Slot::NotObject)
    }
}

impl<'de> Deserialize<'de> for Slot<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SlotVisitor)
    }
}

struct FrameVisitor;

impl<'de> Visitor<'de> for FrameVisitor {
    type Value = Frame<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut frame = Frame::default();
        while let Some(Key(key)) = map.next_key_seed(KeySeed(FRAME_KEYS))? {
            match key {
                Some(0) => frame.event = Some(map.next_value()?),
                Some(1) => frame.media = map.next_value()?,
                Some(2) => frame.mark = map.next_value()?,
                Some(3) => frame.transfer = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(frame)
    }
}

impl<'de> Deserialize<'de> for Frame<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FrameVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use voicegate_audio::g711::ulaw_encode;

    fn info() -> StreamInfo {
        StreamInfo {
            stream_sid: "MZ0001".into(),
            call_sid: "CA0002".into(),
            account_sid: "AC0003".into(),
            from: "+919876543210".into(),
            to: "+918047491899".into(),
            custom_parameters: vec![("lang".into(), "hi".into()), ("tier".into(), "gold".into())],
            sample_rate: 8000,
            bidirectional: true,
        }
    }

    fn value(out: &str) -> Value {
        serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    fn payload_bytes(v: &Value) -> Vec<u8> {
        STANDARD
            .decode(v["media"]["payload"].as_str().unwrap())
            .unwrap()
    }

    #[test]
    fn protocol_names() {
        assert_eq!(Protocol::from_name("exotel"), Some(Protocol::Exotel));
        assert_eq!(Protocol::from_name("twilio"), Some(Protocol::Twilio));
        assert_eq!(Protocol::from_name("Twilio"), Some(Protocol::Twilio));
        assert_eq!(Protocol::from_name("vonage"), None);
        assert_eq!(Protocol::from_name(""), None);
        assert_eq!(Protocol::default(), Protocol::Exotel);
        assert_eq!(Protocol::Exotel.to_string(), "exotel");
        assert_eq!(Protocol::Twilio.name(), "twilio");
    }

    #[test]
    fn exotel_connected() {
        let mut enc = Encoder::new(Protocol::Exotel, info());
        let mut out = String::from("left over");
        enc.connected(&mut out);
        assert_eq!(value(&out), json!({"event": "connected"}));
        assert_eq!(enc.sequence_number(), 0);
    }

    #[test]
    fn twilio_connected() {
        let mut enc = Encoder::new(Protocol::Twilio, info());
        let mut out = String::new();
        enc.connected(&mut out);
        assert_eq!(
            value(&out),
            json!({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        );
    }

    #[test]
    fn exotel_start() {
        let mut enc = Encoder::new(Protocol::Exotel, info());
        let mut out = String::new();
        enc.connected(&mut out);
        enc.start(&mut out);
        assert_eq!(
            value(&out),
            json!({
                "event": "start",
                "sequence_number": "1",
                "stream_sid": "MZ0001",
                "start": {
                    "stream_sid": "MZ0001",
                    "call_sid": "CA0002",
                    "account_sid": "AC0003",
                    "from": "+919876543210",
                    "to": "+918047491899",
                    "custom_parameters": {"lang": "hi", "tier": "gold"},
                    "media_format": {
                        "encoding": "base64",
                        "sample_rate": "8000",
                        "bit_rate": "128kbps"
                    }
                }
            })
        );
    }

    #[test]
    fn exotel_start_wideband_rates() {
        for (rate, bit_rate) in [(16000, "256kbps"), (24000, "384kbps")] {
            let mut enc = Encoder::new(
                Protocol::Exotel,
                StreamInfo {
                    sample_rate: rate,
                    ..info()
                },
            );
            assert_eq!(enc.sample_rate(), rate);
            let mut out = String::new();
            enc.start(&mut out);
            let v = value(&out);
            let format = &v["start"]["media_format"];
            assert_eq!(format["sample_rate"], json!(rate.to_string()));
            assert_eq!(format["bit_rate"], json!(bit_rate));
        }
    }

    #[test]
    fn twilio_start() {
        let mut enc = Encoder::new(Protocol::Twilio, info());
        let mut out = String::new();
        enc.start(&mut out);
        assert_eq!(
            value(&out),
            json!({
                "event": "start",
                "sequenceNumber": "1",
                "streamSid": "MZ0001",
                "start": {
                    "accountSid": "AC0003",
                    "streamSid": "MZ0001",
                    "callSid": "CA0002",
                    "tracks": ["inbound", "outbound"],
                    "customParameters": {
                        "lang": "hi",
                        "tier": "gold",
                        "from_number": "+919876543210",
                        "to_number": "+918047491899"
                    },
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
                }
            })
        );

        // Listen-only: inbound track only; the sample rate is always 8000.
        let mut enc = Encoder::new(
            Protocol::Twilio,
            StreamInfo {
                bidirectional: false,
                sample_rate: 16000,
                custom_parameters: Vec::new(),
                ..info()
            },
        );
        assert_eq!(enc.sample_rate(), 8000);
        enc.start(&mut out);
        let v = value(&out);
        assert_eq!(v["start"]["tracks"], json!(["inbound"]));
        assert_eq!(
            v["start"]["customParameters"],
            json!({"from_number": "+919876543210", "to_number": "+918047491899"})
        );
        assert_eq!(v["start"]["mediaFormat"]["sampleRate"], json!(8000));
    }

    #[test]
    fn twilio_flow_parameters_win_over_the_numbers_of_the_same_name() {
        let mut enc = Encoder::new(
            Protocol::Twilio,
            StreamInfo {
                custom_parameters: vec![("to_number".into(), "flow's own".into())],
                ..info()
            },
        );
        let mut out = String::new();
        enc.start(&mut out);
        assert_eq!(
            value(&out)["start"]["customParameters"],
            json!({"to_number": "flow's own", "from_number": "+919876543210"})
        );
    }

    #[test]
    fn exotel_media_dtmf_mark_stop() {
        let mut enc = Encoder::new(Protocol::Exotel, info());
        let mut out = String::new();
        enc.connected(&mut out);
        enc.start(&mut out);

        enc.media(&[1, -2, 300], 0, &mut out);
        let v = value(&out);
        assert_eq!(
            v,
            json!({
                "event": "media",
                "sequence_number": "2",
                "stream_sid": "MZ0001",
                "media": {"chunk": "1", "timestamp": "0", "payload": v["media"]["payload"].clone()}
            })
        );
        assert_eq!(payload_bytes(&v), [1, 0, 0xfe, 0xff, 0x2c, 0x01]);

        enc.media(&[0; 800], 100, &mut out);
        let v = value(&out);
        assert_eq!(v["sequence_number"], json!("3"));
        assert_eq!(v["media"]["chunk"], json!("2"));
        assert_eq!(v["media"]["timestamp"], json!("100"));
        assert_eq!(payload_bytes(&v).len(), 1600);

        enc.dtmf('5', 100, &mut out);
        assert_eq!(
            value(&out),
            json!({
                "event": "dtmf",
                "sequence_number": "4",
                "stream_sid": "MZ0001",
                "dtmf": {"digit": "5", "duration": "100"}
            })
        );

        enc.mark(r#"greeting "1""#, &mut out);
        assert_eq!(
            value(&out),
            json!({
                "event": "mark",
                "sequence_number": "5",
                "stream_sid": "MZ0001",
                "mark": {"name": "greeting \"1\""}
            })
        );

        enc.media(&[7], 200, &mut out);
        let v = value(&out);
        assert_eq!(v["sequence_number"], json!("6"));
        assert_eq!(v["media"]["chunk"], json!("3"));

        enc.stop(StopReason::CallEnded, &mut out);
        assert_eq!(
            value(&out),
            json!({
                "event": "stop",
                "sequence_number": "7",
                "stream_sid": "MZ0001",
                "stop": {"call_sid": "CA0002", "account_sid": "AC0003", "reason": "callended"}
            })
        );
        enc.stop(StopReason::Stopped, &mut out);
        let v = value(&out);
        assert_eq!(v["stop"]["reason"], json!("stopped"));
        assert_eq!(v["sequence_number"], json!("8"));
        assert_eq!(enc.sequence_number(), 8);
        assert_eq!(enc.chunk_number(), 3);
    }

    #[test]
    fn twilio_media_dtmf_mark_stop() {
        let mut enc = Encoder::new(Protocol::Twilio, info());
        let mut out = String::new();
        enc.connected(&mut out);
        enc.start(&mut out);

        let pcm: Vec<i16> = (0..160).map(|i| (i * 100 - 8000) as i16).collect();
        enc.media(&pcm, 0, &mut out);
        let v = value(&out);
        assert_eq!(
            v,
            json!({
                "event": "media",
                "sequenceNumber": "2",
                "streamSid": "MZ0001",
                "media": {
                    "track": "inbound",
                    "chunk": "1",
                    "timestamp": "0",
                    "payload": v["media"]["payload"].clone()
                }
            })
        );
        let expected: Vec<u8> = pcm.iter().map(|&s| ulaw_encode(s)).collect();
        assert_eq!(payload_bytes(&v), expected);

        enc.media(&pcm, 20, &mut out);
        let v = value(&out);
        assert_eq!(v["sequenceNumber"], json!("3"));
        assert_eq!(v["media"]["chunk"], json!("2"));
        assert_eq!(v["media"]["timestamp"], json!("20"));

        enc.dtmf('#', 250, &mut out);
        assert_eq!(
            value(&out),
            json!({
                "event": "dtmf",
                "sequenceNumber": "4",
                "streamSid": "MZ0001",
                "dtmf": {"track": "inbound_track", "digit": "#"}
            })
        );

        enc.mark("m1", &mut out);
        assert_eq!(
            value(&out),
            json!({
                "event": "mark",
                "sequenceNumber": "5",
                "streamSid": "MZ0001",
                "mark": {"name": "m1"}
            })
        );

        enc.stop(StopReason::CallEnded, &mut out);
        assert_eq!(
            value(&out),
            json!({
                "event": "stop",
                "sequenceNumber": "6",
                "streamSid": "MZ0001",
                "stop": {"accountSid": "AC0003", "callSid": "CA0002"}
            })
        );
    }

    #[test]
    fn track_media_after_a_hand_off() {
        for protocol in [Protocol::Exotel, Protocol::Twilio] {
            let (seq, sid) = (protocol.sequence_key(), protocol.sid_key());
            let mut enc = Encoder::new(protocol, info());
            let mut out = String::new();
            enc.start(&mut out);
            enc.media(&[1; 160], 0, &mut out);
            // The caller's track goes on from the chunks sent before; the agent's starts at 1.
            enc.track_media(Track::Inbound, &[2; 160], 20, &mut out);
            let v = value(&out);
            assert_eq!(
                v,
                json!({
                    "event": "media",
                    seq: "3",
                    sid: "MZ0001",
                    "media": {
                        "track": "inbound",
                        "chunk": "2",
                        "timestamp": "20",
                        "payload": v["media"]["payload"].clone()
                    }
                }),
                "{protocol}"
            );
            enc.track_media(Track::Outbound, &[-3; 160], 20, &mut out);
            let v = value(&out);
            assert_eq!(v[seq], json!("4"));
            assert_eq!(v["media"]["track"], json!("outbound"));
            assert_eq!(v["media"]["chunk"], json!("1"));
            let expected: Vec<u8> = match protocol {
                Protocol::Exotel => [-3i16; 160].iter().flat_map(|s| s.to_le_bytes()).collect(),
                Protocol::Twilio => vec![ulaw_encode(-3); 160],
            };
            assert_eq!(payload_bytes(&v), expected);
            enc.track_media(Track::Outbound, &[0; 160], 40, &mut out);
            assert_eq!(value(&out)["media"]["chunk"], json!("2"));
            assert_eq!(enc.track_chunk_number(Track::Inbound), 2);
            assert_eq!(enc.track_chunk_number(Track::Outbound), 2);
            assert_eq!(enc.chunk_number(), 2);
            // The caller's audio before a hand-off still has no track in Exotel's dialect.
            enc.media(&[0; 160], 60, &mut out);
            assert_eq!(
                value(&out)["media"].get("track").is_some(),
                protocol == Protocol::Twilio
            );
        }
    }

    #[test]
    fn output_buffer_is_reused() {
        let mut enc = Encoder::new(Protocol::Exotel, info());
        let mut out = String::new();
        let pcm = [123i16; 800];
        enc.media(&pcm, 0, &mut out);
        let capacity = out.capacity();
        let ptr = out.as_ptr();
        for t in 1..20 {
            enc.media(&pcm, t * 100, &mut out);
            assert_eq!(out.capacity(), capacity);
            assert_eq!(out.as_ptr(), ptr);
        }
        enc.mark("x", &mut out);
        assert!(!out.contains("payload"), "output cleared first: {out}");
    }

    #[test]
    fn escapes_strings() {
        let nasty =
            "say \"hi\" \\ back\\slash\nnew\tline \u{1} \u{1f} caf\u{e9} \u{20ac} \u{1f600} \u{7f}";
        let mut enc = Encoder::new(
            Protocol::Exotel,
            StreamInfo {
                stream_sid: "MZ\"q\\".into(),
                from: "\"Alice\" <sip:a@b>".into(),
                custom_parameters: vec![
                    (nasty.into(), nasty.into()),
                    ("k\"ey".into(), "v".into()),
                    ("k\"ey".into(), "ignored duplicate".into()),
                ],
                ..info()
            },
        );
        let mut out = String::new();
        enc.start(&mut out);
        assert!(!out.contains('\n') && !out.contains('\u{1}'), "{out}");
        let v = value(&out);
        assert_eq!(v["stream_sid"], json!("MZ\"q\\"));
        assert_eq!(v["start"]["stream_sid"], json!("MZ\"q\\"));
        assert_eq!(v["start"]["from"], json!("\"Alice\" <sip:a@b>"));
        let params = v["start"]["custom_parameters"].as_object().unwrap();
        assert_eq!(params.len(), 2);
        assert_eq!(params[nasty], json!(nasty));
        assert_eq!(params["k\"ey"], json!("v"));

        let mut enc = Encoder::new(
            Protocol::Twilio,
            StreamInfo {
                custom_parameters: vec![(nasty.into(), nasty.into())],
                ..info()
            },
        );
        enc.start(&mut out);
        let v = value(&out);
        assert_eq!(v["start"]["customParameters"][nasty], json!(nasty));
        enc.mark(nasty, &mut out);
        assert_eq!(value(&out)["mark"]["name"], json!(nasty));
    }

    #[test]
    fn escapes_like_serde_json() {
        for s in [
            "",
            "plain",
            "\"",
            "\\",
            "\u{0}\u{8}\u{c}\u{1b}",
            "ü€😀",
            "a\"b\\c\rd",
        ] {
            let mut out = String::new();
            write_json_str(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    fn bot_media(payload: &str) -> String {
        json!({"event": "media", "stream_sid": "MZ0001", "media": {"payload": payload}}).to_string()
    }

    #[test]
    fn exotel_pcm_round_trip() {
        let pcm: Vec<i16> = (0..3200i32)
            .map(|i| ((i * 2731) % 65536 - 32768) as i16)
            .chain([i16::MIN, -1, 0, 1, i16::MAX])
            .collect();
        let mut enc = Encoder::new(Protocol::Exotel, info());
        let mut out = String::new();
        enc.media(&pcm, 0, &mut out);
        let v = value(&out);
        let frame = bot_media(v["media"]["payload"].as_str().unwrap());
        assert_eq!(
            parse(Protocol::Exotel, &frame).unwrap(),
            BotMessage::Media(pcm)
        );
    }

    #[test]
    fn twilio_mulaw_round_trip() {
        let pcm: Vec<i16> = (i16::MIN..=i16::MAX)
            .step_by(7)
            .chain([i16::MAX, -1, 0])
            .collect();
        let mut enc = Encoder::new(Protocol::Twilio, info());
        let mut out = String::new();
        enc.media(&pcm, 0, &mut out);
        let v = value(&out);
        let frame = json!({"event": "media", "streamSid": "MZ0001", "media": {"payload": v["media"]["payload"]}})
            .to_string();
        let expected: Vec<i16> = pcm.iter().map(|&s| ulaw_decode(ulaw_encode(s))).collect();
        assert_eq!(
            parse(Protocol::Twilio, &frame).unwrap(),
            BotMessage::Media(expected)
        );
    }

    #[test]
    fn long_payloads_decode_across_steps() {
        // Lengths around the 4096-character decoding step, padded and unpadded.
        for samples in [1535usize, 1536, 1537, 3072, 10_000, 10_001] {
            let pcm: Vec<i16> = (0..samples).map(|i| (i as i16).wrapping_mul(37)).collect();
            let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
            let padded = STANDARD.encode(&bytes);
            let unpadded = padded.trim_end_matches('=');
            for payload in [padded.as_str(), unpadded] {
                assert_eq!(
                    parse(Protocol::Exotel, &bot_media(payload)).unwrap(),
                    BotMessage::Media(pcm.clone()),
                    "{samples} samples"
                );
            }
            let codes: Vec<u8> = (0..samples).map(|i| i as u8).collect();
            let expected: Vec<i16> = codes.iter().map(|&c| ulaw_decode(c)).collect();
            assert_eq!(
                parse(Protocol::Twilio, &bot_media(&STANDARD.encode(&codes))).unwrap(),
                BotMessage::Media(expected)
            );
        }
    }

    #[test]
    fn parse_into_reuses_the_buffer() {
        let frame = bot_media(&STANDARD.encode([0u8; 640]));
        let mut buf = Vec::with_capacity(1000);
        let ptr = buf.as_ptr();
        for _ in 0..5 {
            assert_eq!(
                parse_into(Protocol::Exotel, &frame, &mut buf).unwrap(),
                BotMessageRef::Media
            );
            assert_eq!(buf.len(), 320);
            assert_eq!(buf.as_ptr(), ptr);
        }
        // Non-media frames leave the buffer empty.
        let mark = r#"{"event":"mark","mark":{"name":"a"}}"#;
        assert_eq!(
            parse_into(Protocol::Exotel, mark, &mut buf).unwrap(),
            BotMessageRef::Mark("a".into())
        );
        assert!(buf.is_empty());
        assert_eq!(
            parse_into(Protocol::Exotel, r#"{"event":"stats","x":1}"#, &mut buf).unwrap(),
            BotMessageRef::Other("stats".into())
        );
    }

    #[test]
    fn accepts_any_sid_key() {
        let payload = STANDARD.encode([1u8, 0, 2, 0]);
        for sid in [
            r#""stream_sid":"MZ1","#,
            r#""streamSid":"MZ1","#,
            "",
            r#""streamSid":null,"#,
        ] {
            let frame = format!(r#"{{"event":"media",{sid}"media":{{"payload":"{payload}"}}}}"#);
            assert_eq!(
                parse(Protocol::Exotel, &frame).unwrap(),
                BotMessage::Media(vec![1, 2]),
                "{frame}"
            );
            let frame = format!(r#"{{{sid}"event":"clear"}}"#);
            assert_eq!(parse(Protocol::Twilio, &frame).unwrap(), BotMessage::Clear);
        }
    }

    #[test]
    fn accepts_numbers_as_strings_or_numbers() {
        let payload = STANDARD.encode([0xffu8; 4]);
        for (seq, chunk, ts) in [
            ("\"5\"", "\"2\"", "\"200\""),
            ("5", "2", "200"),
            ("5.0", "\"2\"", "200"),
        ] {
            let frame = format!(
                r#"{{"event":"media","sequence_number":{seq},"sequenceNumber":{seq},"stream_sid":"MZ1","media":{{"chunk":{chunk},"timestamp":{ts},"payload":"{payload}"}}}}"#
            );
            assert_eq!(
                parse(Protocol::Exotel, &frame).unwrap(),
                BotMessage::Media(vec![-1, -1]),
                "{frame}"
            );
            assert_eq!(
                parse(Protocol::Twilio, &frame).unwrap(),
                BotMessage::Media(vec![ulaw_decode(0xff); 4])
            );
        }
        // A mark named by a number.
        assert_eq!(
            parse(
                Protocol::Exotel,
                r#"{"event":"mark","sequence_number":9,"mark":{"name":42}}"#
            )
            .unwrap(),
            BotMessage::Mark("42".into())
        );
    }

    #[test]
    fn control_messages() {
        for protocol in [Protocol::Exotel, Protocol::Twilio] {
            assert_eq!(
                parse(protocol, r#"{"event":"clear","stream_sid":"MZ1"}"#).unwrap(),
                BotMessage::Clear
            );
            assert_eq!(
                parse(
                    protocol,
                    r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"turn-3 \"é\""}}"#
                )
                .unwrap(),
                BotMessage::Mark("turn-3 \"é\"".into())
            );
            assert_eq!(
                parse(
                    protocol,
                    r#"{"event":"transfer","transfer":{"to":"sip:agent@pbx.example"}}"#
                )
                .unwrap(),
                BotMessage::Transfer("sip:agent@pbx.example".into())
            );
            assert_eq!(
                parse(
                    protocol,
                    r#"{"stream_sid":"MZ1","transfer":{"to":"+918047491899"},"event":"transfer"}"#
                )
                .unwrap(),
                BotMessage::Transfer("+918047491899".into())
            );
            // No target: the flow's agent.
            for frame in [
                r#"{"event":"transfer"}"#,
                r#"{"event":"transfer","transfer":{}}"#,
                r#"{"event":"transfer","transfer":{"to":""}}"#,
            ] {
                assert_eq!(
                    parse(protocol, frame).unwrap(),
                    BotMessage::Transfer(String::new()),
                    "{frame}"
                );
            }
            assert_eq!(
                parse(
                    protocol,
                    r#"{"event":"transfer","streamSid":"MZ1","transfer":{"to":918047491899}}"#
                )
                .unwrap(),
                BotMessage::Transfer("918047491899".into())
            );
            assert_eq!(
                parse(protocol, r#"{"event":"hangup"}"#).unwrap(),
                BotMessage::Hangup
            );
            assert_eq!(
                parse(
                    protocol,
                    r#"{"event":"hangup","stream_sid":"MZ1","hangup":{}}"#
                )
                .unwrap(),
                BotMessage::Hangup
            );
            assert_eq!(
                parse(
                    protocol,
                    r#"{"event":"start","start":{"media":"odd"},"media":[1,2]}"#
                )
                .unwrap(),
                BotMessage::Other("start".into())
            );
            assert_eq!(
                parse(
                    protocol,
                    r#"{"event":"something_new","data":{"a":[1,{"b":null}]}}"#
                )
                .unwrap(),
                BotMessage::Other("something_new".into())
            );
        }
    }

    #[test]
    fn media_payload_with_json_escapes() {
        // `\/` is a legal JSON escape for `/`, which base64 uses.
        let bytes = [0xffu8, 0xff, 0xfb, 0xff];
        let b64 = STANDARD.encode(bytes);
        assert!(b64.contains('/'), "{b64}");
        let frame = format!(
            r#"{{"event":"media","media":{{"payload":"{}"}}}}"#,
            b64.replace('/', "\\/")
        );
        assert_eq!(
            parse(Protocol::Exotel, &frame).unwrap(),
            BotMessage::Media(vec![-1, -5])
        );
        // An empty payload is zero samples.
        assert_eq!(
            parse(Protocol::Exotel, &bot_media("")).unwrap(),
            BotMessage::Media(vec![])
        );
    }

    #[test]
    fn errors() {
        let p = Protocol::Exotel;
        assert!(matches!(parse(p, "not json"), Err(FrameError::NotJson(_))));
        assert!(matches!(
            parse(p, r#"{"event":"media""#),
            Err(FrameError::NotJson(_))
        ));
        assert!(matches!(
            parse(p, r#"{"event":"clear"} x"#),
            Err(FrameError::NotJson(_))
        ));
        assert!(matches!(parse(p, ""), Err(FrameError::NotJson(_))));
        assert!(matches!(parse(p, "[1,2]"), Err(FrameError::NotObject)));
        assert!(matches!(parse(p, "\"media\""), Err(FrameError::NotObject)));
        assert!(matches!(
            parse(p, r#"{"stream_sid":"MZ1"}"#),
            Err(FrameError::NoEvent)
        ));
        assert!(matches!(
            parse(p, r#"{"event":7}"#),
            Err(FrameError::NoEvent)
        ));
        assert!(matches!(
            parse(p, r#"{"event":null}"#),
            Err(FrameError::NoEvent)
        ));
        assert!(matches!(
            parse(p, r#"{"event":"media"}"#),
            Err(FrameError::MissingField("media"))
        ));
        assert!(matches!(
            parse(p, r#"{"event":"media","media":{"chunk":"1"}}"#),
            Err(FrameError::MissingField("media.payload"))
        ));
        assert!(matches!(
            parse(p, r#"{"event":"media","media":"AAAA"}"#),
            Err(FrameError::BadField("media"))
        ));
        assert!(matches!(
            parse(p, r#"{"event":"media","media":{"payload":1234}}"#),
            Err(FrameError::BadField("media.payload"))
        ));
        assert!(matches!(
            parse(p, r#"{"event":"mark","mark":{}}"#),
            Err(FrameError::MissingField("mark.name"))
        ));
        assert!(matches!(
            parse(p, r#"{"event":"mark"}"#),
            Err(FrameError::MissingField("mark"))
        ));
        assert!(matches!(
            parse(p, r#"{"event":"transfer","transfer":{"to":["a"]}}"#),
            Err(FrameError::BadField("transfer.to"))
        ));
        assert!(matches!(
            parse(p, r#"{"event":"transfer","transfer":"sip:a@b"}"#),
            Err(FrameError::BadField("transfer"))
        ));

        for bad in ["AA!A", "A", "AAAA=AAA", "=AAA", "AAAA AAAA"] {
            for protocol in [Protocol::Exotel, Protocol::Twilio] {
                let err = parse(protocol, &bot_media(bad)).unwrap_err();
                assert!(matches!(err, FrameError::BadBase64(_)), "{bad:?}: {err:?}");
            }
        }
        // An invalid byte far into a long payload is reported at its offset in the payload.
        let mut long = STANDARD.encode(vec![0u8; 6000]);
        long.replace_range(5000..5001, "*");
        match parse(p, &bot_media(&long)) {
            Err(FrameError::BadBase64(DecodeError::InvalidByte(5000, b'*'))) => {}
            other => panic!("{other:?}"),
        }

        // 3 bytes is not a whole number of 16-bit samples (but fine as mu-law).
        let odd = STANDARD.encode([1u8, 2, 3]);
        assert!(matches!(
            parse(p, &bot_media(&odd)),
            Err(FrameError::OddPayload { bytes: 3 })
        ));
        assert_eq!(
            parse(Protocol::Twilio, &bot_media(&odd)).unwrap(),
            BotMessage::Media(vec![ulaw_decode(1), ulaw_decode(2), ulaw_decode(3)])
        );
        let odd_long = STANDARD.encode(vec![0u8; 5001]);
        assert!(matches!(
            parse(p, &bot_media(&odd_long)),
            Err(FrameError::OddPayload { .. })
        ));

        // On error the buffer is left empty.
        let mut buf = vec![1i16, 2, 3];
        assert!(parse_into(p, &bot_media(&odd_long), &mut buf).is_err());
        assert!(buf.is_empty());
    }

    #[test]
    fn error_messages_say_what_was_wrong() {
        let msg = |text: &str| parse(Protocol::Exotel, text).unwrap_err().to_string();
        assert!(msg("{").contains("not valid JSON"));
        assert!(msg("{}").contains("\"event\""));
        assert!(msg(r#"{"event":"media"}"#).contains("media"));
        assert!(msg(&bot_media("A!AA")).contains("base64"));
        assert!(msg(&bot_media("AAAA")).contains("3 bytes"));
    }
}
