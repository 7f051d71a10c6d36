//! Building our frames to the bot: the [`Encoder`] of one stream writes each event as one JSON
//! text frame in the stream's dialect, numbering messages and media chunks as it goes.

use std::fmt::Write as _;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use voicegate_audio::g711::encode_ulaw;

use super::{
    Protocol, StopReason, StreamInfo, EXOTEL_ENCODING, TWILIO_ENCODING, TWILIO_FROM_PARAMETER,
    TWILIO_SAMPLE_RATE, TWILIO_TO_PARAMETER,
};
use crate::tap::Track;

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
pub(super) fn write_json_str(out: &mut String, s: &str) {
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
