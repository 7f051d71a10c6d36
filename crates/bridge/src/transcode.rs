//! The sans-IO half of the B2BUA relay: what happens to one RTP packet on its way from one
//! leg to the other. [`Forward`] takes a packet received on one leg and gives the packet(s) to
//! send on the other: the same payload under our own numbering when both legs use the same
//! codec, a per-byte A-law/mu-law conversion, or a full decode → encode when the codecs differ.
//! RFC 4733 telephone-events are passed on under the other leg's payload type.
//!
//! Everything is allocated in [`Forward::new`]; [`Forward::process`] allocates nothing, so the
//! relay task calls it per packet and the benches measure it without sockets.
//!
//! Audio is decoded to 8 kHz, the rate both G.711 laws carry: libopus decodes and encodes at
//! 8 kHz directly (it resamples internally, band-limited), so no [`voicegate_audio::Resampler`]
//! is needed for any pair of PCMA, PCMU and Opus. The same 8 kHz frames feed the tap.

use voicegate_audio::opus::MAX_PACKET_BYTES;
use voicegate_audio::{g711, AudioError, OpusDecoder, OpusEncoder};
pub use voicegate_rtp::leg::RtpHeader;
use voicegate_rtp::leg::RtpWriter;

use crate::session::{CallMedia, Codec};
use crate::tap::{TapFrame, Track, TAP_FRAME_SAMPLES};

/// The rate audio is decoded to between legs (and handed to the tap).
pub const PIVOT_RATE: u32 = 8000;

/// Samples of one 20 ms frame at [`PIVOT_RATE`]: transcoded output is always 20 ms packets.
const FRAME: usize = TAP_FRAME_SAMPLES;

/// Output packets one input packet may yield: a 120 ms Opus packet gives 6, a G.711 packet
/// filling the relay's 2048-byte receive buffer 12.
pub const FRAME_SLOTS: usize = 16;

/// Room for one output packet: RTP header and one 20 ms frame (a 20 ms Opus frame is at
/// most 1275 bytes).
const SLOT_BYTES: usize = 1500;

/// Longest decoded packet at 8 kHz: the 2036 samples of a G.711 packet filling 2048 bytes
/// (a 120 ms Opus packet is 960).
const MAX_PACKET_SAMPLES: usize = 2048;

/// Encoder loss tuning, as the bot session uses: a little FEC for a carrier's lossy path.
const OPUS_EXPECTED_LOSS: u8 = 5;

/// Opus carries 8 kHz audio well at this rate; the crate default (32 kbit/s) is for wideband.
const OPUS_NARROWBAND_BITRATE: u32 = 20_000;

/// Maps the timestamps of the incoming stream onto our outgoing one: the same spacing
/// (scaled by the clock ratio), but continuous when the peer's source (SSRC) changes, e.g.
/// early media from one box and the answer from another.
///
/// A timestamp maps to the same output whenever it is seen, so all packets of one RFC 4733
/// event (which share their start timestamp) keep sharing it.
#[derive(Clone, Debug)]
pub struct Timeline {
    /// out = in * num / den, reduced (1/1, 6/1 or 1/6).
    num: i64,
    den: i64,
    source: Option<u32>,
    in_anchor: u32,
    out_anchor: u32,
    /// Latest output timestamp.
    high: u32,
    /// Spacing of the latest packets in output units: the gap left before a new source.
    step: u32,
    /// Spacings beyond this (silence, hold) are not taken as the packet time.
    max_step: u32,
}

impl Timeline {
    /// Incoming at `in_rate`, outgoing at `out_rate` starting at `first_out`.
    pub fn new(in_rate: u32, out_rate: u32, first_out: u32) -> Self {
        let g = gcd(in_rate.max(1), out_rate.max(1));
        Timeline {
            num: i64::from(out_rate.max(1) / g),
            den: i64::from(in_rate.max(1) / g),
            source: None,
            in_anchor: 0,
            out_anchor: first_out,
            high: first_out,
            step: out_rate / 50,
            max_step: out_rate * 120 / 1000,
        }
    }

    /// Our timestamp for the peer's `ts` of source `ssrc`.
    pub fn map(&mut self, ssrc: u32, ts: u32) -> u32 {
        if self.source != Some(ssrc) {
            // A new source continues our timeline one packet after where it stood.
            let start = if self.source.is_none() {
                self.high
            } else {
                self.high.wrapping_add(self.step)
            };
            self.source = Some(ssrc);
            self.in_anchor = ts;
            self.out_anchor = start;
        }
        let mut delta = i64::from(ts.wrapping_sub(self.in_anchor) as i32);
        if delta > 1 << 30 {
            // Move the anchor forward by a whole number of `den` so the scaling stays exact
            // and the signed distance never wraps.
            let shift = delta - delta % self.den;
            self.in_anchor = self.in_anchor.wrapping_add(shift as u32);
            self.out_anchor = self
                .out_anchor
                .wrapping_add((shift / self.den * self.num) as u32);
            delta -= shift;
        }
        let out = self
            .out_anchor
            .wrapping_add((delta * self.num).div_euclid(self.den) as u32);
        let ahead = out.wrapping_sub(self.high) as i32;
        if ahead > 0 {
            if ahead as u32 <= self.max_step {
                self.step = ahead as u32;
            }
            self.high = out;
        }
        out
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Decodes one leg's audio to 8 kHz PCM.
enum PcmDecoder {
    Alaw,
    Ulaw,
    Opus(OpusDecoder),
}

impl PcmDecoder {
    fn new(codec: Codec) -> Result<Self, AudioError> {
        Ok(match codec {
            Codec::Pcma => PcmDecoder::Alaw,
            Codec::Pcmu => PcmDecoder::Ulaw,
            Codec::Opus => PcmDecoder::Opus(OpusDecoder::new(PIVOT_RATE)?),
        })
    }

    /// Samples written, or None for a packet that does not decode.
    fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> Option<usize> {
        match self {
            PcmDecoder::Alaw => Some(g711::decode_alaw(payload, out)),
            PcmDecoder::Ulaw => Some(g711::decode_ulaw(payload, out)),
            PcmDecoder::Opus(decoder) => decoder.decode(payload, out).ok(),
        }
    }

    /// Forgets the previous stream (G.711 has no state).
    fn reset(&mut self) {
        if let PcmDecoder::Opus(decoder) = self {
            decoder.reset();
        }
    }
}

/// Encodes 20 ms of 8 kHz PCM for one leg.
enum PcmEncoder {
    Alaw,
    Ulaw,
    Opus(OpusEncoder),
}

impl PcmEncoder {
    fn new(codec: Codec) -> Result<Self, AudioError> {
        Ok(match codec {
            Codec::Pcma => PcmEncoder::Alaw,
            Codec::Pcmu => PcmEncoder::Ulaw,
            Codec::Opus => {
                let mut encoder = OpusEncoder::new(PIVOT_RATE, OPUS_EXPECTED_LOSS)?;
                encoder.set_bitrate(OPUS_NARROWBAND_BITRATE)?;
                PcmEncoder::Opus(encoder)
            }
        })
    }

    /// Payload bytes written, or None if the encoder failed.
    fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Option<usize> {
        match self {
            PcmEncoder::Alaw => Some(g711::encode_alaw(pcm, out)),
            PcmEncoder::Ulaw => Some(g711::encode_ulaw(pcm, out)),
            PcmEncoder::Opus(encoder) => encoder.encode(pcm, out).ok(),
        }
    }
}

/// Cuts decoded audio of any packet time into 20 ms frames, each with the incoming
/// timestamp of its first sample.
struct Framer {
    buf: [i16; FRAME],
    filled: usize,
    /// Incoming timestamp of `buf[0]`.
    start_ts: u32,
    /// Incoming timestamp the next packet has if it follows on.
    next_ts: u32,
    /// Incoming clock ticks per 8 kHz sample (1, or 6 for Opus).
    ticks: u32,
    source: Option<u32>,
    marker: bool,
}

impl Framer {
    fn new(in_rate: u32) -> Self {
        Framer {
            buf: [0; FRAME],
            filled: 0,
            start_ts: 0,
            next_ts: 0,
            ticks: (in_rate / PIVOT_RATE).max(1),
            source: None,
            marker: false,
        }
    }

    fn is_new_source(&self, ssrc: u32) -> bool {
        self.source != Some(ssrc)
    }

    /// Adds one packet's samples; `frame` gets each completed frame with its start
    /// timestamp and whether it starts a talkspurt.
    fn push(
        &mut self,
        ssrc: u32,
        ts: u32,
        marker: bool,
        pcm: &[i16],
        mut frame: impl FnMut(&[i16; FRAME], u32, bool),
    ) {
        if self.is_new_source(ssrc) || ts != self.next_ts {
            // Loss or a new source: a partial frame cannot be completed in time order. Only
            // packet times that are not a multiple of 20 ms ever leave one.
            self.filled = 0;
            self.source = Some(ssrc);
        }
        self.marker |= marker;
        let mut offset = 0;
        while offset < pcm.len() {
            if self.filled == 0 {
                self.start_ts = ts.wrapping_add(offset as u32 * self.ticks);
            }
            let n = (FRAME - self.filled).min(pcm.len() - offset);
            self.buf[self.filled..self.filled + n].copy_from_slice(&pcm[offset..offset + n]);
            self.filled += n;
            offset += n;
            if self.filled == FRAME {
                frame(&self.buf, self.start_ts, std::mem::take(&mut self.marker));
                self.filled = 0;
            }
        }
        self.next_ts = ts.wrapping_add(pcm.len() as u32 * self.ticks);
    }
}

/// How the payload crosses.
enum Kind {
    /// Same codec: the payload is untouched.
    Pass,
    /// A-law ↔ mu-law: byte by byte through this table, same packet time.
    Law(Box<[u8; 256]>),
    /// Decode, then encode in 20 ms frames.
    Transcode(PcmEncoder),
}

/// What [`Forward::process`] made of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarded {
    /// Nothing to send (a payload type we do not relay, or a partial frame).
    Nothing,
    /// The input packet was rewritten where it lies: send it as it is now.
    InPlace { timestamp: u32 },
    /// Send [`Forward::frame`] 0 to n-1.
    Frames(usize),
}

/// Counters of one direction, for the call record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardStats {
    /// Audio packets the decoder rejected (corrupt Opus).
    pub decode_errors: u64,
    /// Telephone-events dropped because the other leg did not negotiate telephone-event.
    pub dtmf_dropped: u64,
    /// Frames the encoder failed on, or beyond [`FRAME_SLOTS`] from one packet.
    pub frames_dropped: u64,
}

/// One direction of a relayed call: packets from one leg made into packets for the other.
pub struct Forward {
    kind: Kind,
    in_pt: u8,
    in_te: Option<u8>,
    out_pt: u8,
    out_te: Option<u8>,
    in_clock: u32,
    out_clock: u32,
    /// Our SSRC and sequence numbers towards the other leg.
    writer: RtpWriter,
    timeline: Timeline,
    /// Present when transcoding or tapping.
    decoder: Option<PcmDecoder>,
    framer: Framer,
    pcm: Vec<i16>,
    /// FRAME_SLOTS output packets of SLOT_BYTES each.
    frames: Vec<u8>,
    frame_lens: [usize; FRAME_SLOTS],
    track: Option<Track>,
    taps: Vec<TapFrame>,
    stats: ForwardStats,
}

impl Forward {
    /// Packets from the leg negotiated as `from` to the leg negotiated as `to`, sent under
    /// `to.ssrc`. With `tap`, every relayed 20 ms is also decoded to a [`TapFrame`].
    pub fn new(from: &CallMedia, to: &CallMedia, tap: Option<Track>) -> Result<Self, AudioError> {
        let kind = match (from.codec, to.codec) {
            (a, b) if a == b => Kind::Pass,
            (Codec::Pcma, Codec::Pcmu) => Kind::Law(Box::new(std::array::from_fn(|c| {
                g711::ulaw_encode(g711::alaw_decode(c as u8))
            }))),
            (Codec::Pcmu, Codec::Pcma) => Kind::Law(Box::new(std::array::from_fn(|c| {
                g711::alaw_encode(g711::ulaw_decode(c as u8))
            }))),
            (_, to_codec) => Kind::Transcode(PcmEncoder::new(to_codec)?),
        };
        let decoder = match (&kind, tap) {
            (Kind::Transcode(_), _) | (_, Some(_)) => Some(PcmDecoder::new(from.codec)?),
            _ => None,
        };
        let (in_clock, out_clock) = (from.codec.clock_rate(), to.codec.clock_rate());
        Ok(Forward {
            kind,
            in_pt: from.payload_type,
            in_te: from.telephone_event,
            out_pt: to.payload_type,
            out_te: to.telephone_event,
            in_clock,
            out_clock,
            writer: RtpWriter::new(to.ssrc),
            timeline: Timeline::new(in_clock, out_clock, rand::random()),
            decoder,
            framer: Framer::new(in_clock),
            pcm: vec![0; MAX_PACKET_SAMPLES],
            frames: vec![0; FRAME_SLOTS * SLOT_BYTES],
            frame_lens: [0; FRAME_SLOTS],
            track: tap,
            taps: Vec::with_capacity(FRAME_SLOTS),
            stats: ForwardStats::default(),
        })
    }

    /// Whether payloads are changed on the way (anything but a same-codec pass-through).
    pub fn transcoding(&self) -> bool {
        !matches!(self.kind, Kind::Pass)
    }

    pub fn stats(&self) -> ForwardStats {
        self.stats
    }

    /// Takes one packet from the source leg (`header` parsed from it). The packet may be
    /// rewritten in place; see [`Forwarded`] for what to send. Tap frames it produced are in
    /// [`Self::tap_frames`] until the next call.
    pub fn process(&mut self, header: &RtpHeader, packet: &mut [u8]) -> Forwarded {
        self.taps.clear();
        if Some(header.payload_type) == self.in_te {
            return self.telephone_event(header, packet);
        }
        if header.payload_type != self.in_pt || header.payload_end > packet.len() {
            return Forwarded::Nothing;
        }
        if matches!(self.kind, Kind::Transcode(_)) {
            return self.transcode(header, packet);
        }
        if self.track.is_some() {
            self.tap_only(header, &packet[header.payload_start..header.payload_end]);
        }
        if let Kind::Law(table) = &self.kind {
            for byte in &mut packet[header.payload_start..header.payload_end] {
                *byte = table[usize::from(*byte)];
            }
        }
        let timestamp = self.timeline.map(header.ssrc, header.timestamp);
        self.rewrite_header(packet, self.out_pt, timestamp);
        Forwarded::InPlace { timestamp }
    }

    /// Output packet `i` of the last [`Forwarded::Frames`].
    pub fn frame(&self, i: usize) -> &[u8] {
        &self.frames[i * SLOT_BYTES..i * SLOT_BYTES + self.frame_lens[i]]
    }

    /// Decoded audio of the last processed packet, for the tap.
    pub fn tap_frames(&self) -> &[TapFrame] {
        &self.taps
    }

    /// Our sequence number, timestamp and SSRC (and `pt`, keeping the marker) over the
    /// packet's own header.
    fn rewrite_header(&mut self, packet: &mut [u8], pt: u8, timestamp: u32) {
        packet[1] = (packet[1] & 0x80) | (pt & 0x7f);
        self.writer.restamp(packet, timestamp);
        self.writer.advance_seq();
    }

    fn telephone_event(&mut self, header: &RtpHeader, packet: &mut [u8]) -> Forwarded {
        let Some(out_te) = self.out_te else {
            self.stats.dtmf_dropped += 1;
            return Forwarded::Nothing;
        };
        if self.in_clock != self.out_clock && header.payload_len() >= 4 {
            // The event's duration counts in the stream's clock (RFC 4733 §2.5.1.4).
            let at = header.payload_start + 2;
            let duration = u64::from(u16::from_be_bytes([packet[at], packet[at + 1]]));
            let scaled = (duration * u64::from(self.out_clock) / u64::from(self.in_clock))
                .min(0xffff) as u16;
            packet[at..at + 2].copy_from_slice(&scaled.to_be_bytes());
        }
        let timestamp = self.timeline.map(header.ssrc, header.timestamp);
        self.rewrite_header(packet, out_te, timestamp);
        Forwarded::InPlace { timestamp }
    }

    fn transcode(&mut self, header: &RtpHeader, packet: &[u8]) -> Forwarded {
        // The packet's own timestamp is mapped first so a new source is anchored at its
        // first packet, whichever frame completes first.
        self.timeline.map(header.ssrc, header.timestamp);
        let Some(n) = self.decode(header, &packet[header.payload_start..header.payload_end]) else {
            return Forwarded::Nothing;
        };
        let Forward {
            kind,
            framer,
            pcm,
            frames,
            frame_lens,
            timeline,
            writer,
            out_pt,
            track,
            taps,
            stats,
            ..
        } = self;
        let Kind::Transcode(encoder) = kind else {
            return Forwarded::Nothing;
        };
        let mut count = 0;
        framer.push(
            header.ssrc,
            header.timestamp,
            header.marker,
            &pcm[..n],
            |samples, start_ts, marker| {
                if let Some(track) = *track {
                    if taps.len() < FRAME_SLOTS {
                        taps.push(TapFrame {
                            track,
                            samples: *samples,
                        });
                    }
                }
                if count == FRAME_SLOTS {
                    stats.frames_dropped += 1;
                    return;
                }
                let slot = &mut frames[count * SLOT_BYTES..(count + 1) * SLOT_BYTES];
                let timestamp = timeline.map(header.ssrc, start_ts);
                writer.write_header(slot, *out_pt, marker, timestamp);
                let room = (SLOT_BYTES - 12).min(MAX_PACKET_BYTES);
                match encoder.encode(samples, &mut slot[12..12 + room]) {
                    Some(len) => {
                        frame_lens[count] = 12 + len;
                        count += 1;
                        writer.advance_seq();
                    }
                    None => stats.frames_dropped += 1,
                }
            },
        );
        if count == 0 {
            Forwarded::Nothing
        } else {
            Forwarded::Frames(count)
        }
    }

    /// Decodes a payload into `self.pcm`; the number of samples.
    fn decode(&mut self, header: &RtpHeader, payload: &[u8]) -> Option<usize> {
        let decoder = self.decoder.as_mut()?;
        if self.framer.is_new_source(header.ssrc) {
            // A new source is a new stream: Opus's prediction must not carry over.
            decoder.reset();
        }
        let n = decoder.decode(payload, &mut self.pcm);
        if n.is_none() {
            self.stats.decode_errors += 1;
        }
        n
    }

    /// Decodes a passed-through payload for the tap only.
    fn tap_only(&mut self, header: &RtpHeader, payload: &[u8]) {
        let Some(track) = self.track else { return };
        let Some(n) = self.decode(header, payload) else {
            return;
        };
        let taps = &mut self.taps;
        self.framer.push(
            header.ssrc,
            header.timestamp,
            header.marker,
            &self.pcm[..n],
            |samples, _, _| {
                if taps.len() < FRAME_SLOTS {
                    taps.push(TapFrame {
                        track,
                        samples: *samples,
                    });
                }
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use voicegate_rtp::latch::LatchPolicy;

    fn media(codec: Codec, payload_type: u8, te: Option<u8>, ssrc: u32) -> CallMedia {
        CallMedia {
            codec,
            payload_type,
            telephone_event: te,
            signalled: None,
            latching: LatchPolicy::Auto,
            ssrc,
            rtp_timeout: Duration::from_secs(30),
        }
    }

    fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, pt];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn fields(p: &[u8]) -> (u8, u16, u32, u32) {
        let h = RtpHeader::parse(p).unwrap();
        (h.payload_type, h.seq, h.timestamp, h.ssrc)
    }

    fn tone_alaw(samples: usize, from: usize) -> Vec<u8> {
        (from..from + samples)
            .map(|i| {
                let s = (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / 8000.0).sin() * 8000.0;
                g711::alaw_encode(s as i16)
            })
            .collect()
    }

    /// Runs `packet` through `forward`; the packets to send.
    fn send(forward: &mut Forward, mut packet: Vec<u8>) -> Vec<Vec<u8>> {
        let header = RtpHeader::parse(&packet).unwrap();
        match forward.process(&header, &mut packet) {
            Forwarded::Nothing => vec![],
            Forwarded::InPlace { timestamp } => {
                assert_eq!(fields(&packet).2, timestamp);
                vec![packet]
            }
            Forwarded::Frames(n) => (0..n).map(|i| forward.frame(i).to_vec()).collect(),
        }
    }

    #[test]
    fn timeline_scales_exactly_and_stays_continuous_across_sources() {
        let mut t = Timeline::new(8000, 48000, 1000);
        assert_eq!(t.map(7, 500), 1000);
        assert_eq!(t.map(7, 660), 1960);
        assert_eq!(t.map(7, 820), 2920);
        assert_eq!(t.map(7, 660), 1960, "the same timestamp maps the same way");
        // A new source picks up one packet later, wherever its own clock stands.
        assert_eq!(t.map(9, 4_000_000), 3880);
        assert_eq!(t.map(9, 4_000_160), 4840);

        // 48 kHz → 8 kHz across the incoming timestamp's wrap.
        let mut down = Timeline::new(48000, 8000, 0);
        let start = u32::MAX - 2 * 960 + 1;
        let out: Vec<u32> = (0..5)
            .map(|i| down.map(1, start.wrapping_add(960 * i)))
            .collect();
        assert_eq!(out, vec![0, 160, 320, 480, 640]);

        // Far beyond 2^30 the anchor moves on without losing exactness.
        let mut long = Timeline::new(48000, 8000, 0);
        let mut ts = 0u32;
        let mut expected = 0u32;
        for _ in 0..10 {
            assert_eq!(long.map(3, ts), expected);
            ts = ts.wrapping_add(600_000_000);
            expected = expected.wrapping_add(100_000_000);
        }
    }

    #[test]
    fn same_codec_passes_the_payload_under_our_numbering() {
        let mut f = Forward::new(
            &media(Codec::Pcma, 8, Some(101), 1),
            &media(Codec::Pcma, 8, Some(96), 0xb0b),
            None,
        )
        .unwrap();
        assert!(!f.transcoding());
        let payload = tone_alaw(160, 0);
        let mut out = Vec::new();
        for (i, ssrc) in [(0u16, 7u32), (1, 7), (2, 7), (0, 9), (1, 9)] {
            let sent = send(
                &mut f,
                rtp(8, 4000 + i, 80_000 + 160 * u32::from(i), ssrc, &payload),
            );
            assert_eq!(sent.len(), 1);
            assert_eq!(&sent[0][12..], &payload[..], "payload untouched");
            out.push(fields(&sent[0]));
        }
        assert!(out.iter().all(|f| f.0 == 8 && f.3 == 0xb0b));
        assert!(out.windows(2).all(|w| w[1].1 == w[0].1.wrapping_add(1)));
        assert!(
            out.windows(2).all(|w| w[1].2.wrapping_sub(w[0].2) == 160),
            "{out:?}"
        );
        // A payload type that was not negotiated is not relayed.
        assert!(send(&mut f, rtp(0, 5, 0, 9, &payload)).is_empty());
    }

    #[test]
    fn telephone_events_take_the_other_legs_type_and_clock_or_are_dropped() {
        let mut f = Forward::new(
            &media(Codec::Pcma, 8, Some(101), 1),
            &media(Codec::Opus, 111, Some(96), 2),
            None,
        )
        .unwrap();
        let audio = send(&mut f, rtp(8, 1, 8000, 5, &tone_alaw(160, 0)));
        let base = fields(&audio[0]).2;
        let mut sent = Vec::new();
        for (i, duration) in [160u16, 320, 480].into_iter().enumerate() {
            let d = duration.to_be_bytes();
            let p = rtp(101, 2 + i as u16, 8160, 5, &[5, 10, d[0], d[1]]);
            sent.extend(send(&mut f, p));
        }
        assert_eq!(sent.len(), 3);
        for (p, duration) in sent.iter().zip([960u16, 1920, 2880]) {
            let (pt, _, ts, ssrc) = fields(p);
            assert_eq!((pt, ts, ssrc), (96, base.wrapping_add(960), 2));
            assert_eq!(u16::from_be_bytes([p[14], p[15]]), duration);
        }

        let mut none = Forward::new(
            &media(Codec::Pcma, 8, Some(101), 1),
            &media(Codec::Pcma, 8, None, 2),
            None,
        )
        .unwrap();
        assert!(send(&mut none, rtp(101, 1, 0, 5, &[5, 10, 0, 160])).is_empty());
        assert_eq!(none.stats().dtmf_dropped, 1);
    }

    #[test]
    fn alaw_to_mulaw_converts_each_byte_and_keeps_the_packet_time() {
        let mut f = Forward::new(
            &media(Codec::Pcma, 8, None, 1),
            &media(Codec::Pcmu, 0, None, 2),
            None,
        )
        .unwrap();
        assert!(f.transcoding());
        let payload = tone_alaw(240, 0);
        let sent = send(&mut f, rtp(8, 1, 0, 5, &payload));
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].len(), 12 + 240);
        assert_eq!(fields(&sent[0]).0, 0);
        for (&a, &u) in payload.iter().zip(&sent[0][12..]) {
            let (a, u) = (g711::alaw_decode(a), g711::ulaw_decode(u));
            // Within one mu-law quantisation step (1/16 of the magnitude, at least 32).
            let step = (i32::from(a).abs() / 16).max(32);
            assert!((i32::from(a) - i32::from(u)).abs() <= step, "{a} vs {u}");
        }
    }

    #[test]
    fn transcoding_reframes_into_20_ms_packets() {
        // 30 ms A-law packets become 20 ms Opus packets: two packets, three frames.
        let mut f = Forward::new(
            &media(Codec::Pcma, 8, None, 1),
            &media(Codec::Opus, 111, None, 2),
            Some(Track::Inbound),
        )
        .unwrap();
        let mut sent = send(&mut f, rtp(8, 1, 0, 5, &tone_alaw(240, 0)));
        assert_eq!(f.tap_frames().len(), 1);
        sent.extend(send(&mut f, rtp(8, 2, 240, 5, &tone_alaw(240, 240))));
        assert_eq!(f.tap_frames().len(), 2);
        assert_eq!(sent.len(), 3);
        let ts: Vec<u32> = sent.iter().map(|p| fields(p).2).collect();
        assert_eq!(ts[1].wrapping_sub(ts[0]), 960);
        assert_eq!(ts[2].wrapping_sub(ts[1]), 960);
        let seq: Vec<u16> = sent.iter().map(|p| fields(p).1).collect();
        assert_eq!(seq[1], seq[0].wrapping_add(1));
        assert!(sent.iter().all(|p| fields(p).0 == 111 && fields(p).3 == 2));
        // A lost packet leaves a partial frame that is not sent late.
        let after_loss = send(&mut f, rtp(8, 4, 720, 5, &tone_alaw(240, 720)));
        assert_eq!(after_loss.len(), 1);
        assert_eq!(fields(&after_loss[0]).2.wrapping_sub(ts[0]), 720 * 6);

        // 60 ms Opus packets become three 20 ms A-law packets.
        let mut enc = OpusEncoder::new(48000, 0).unwrap();
        let pcm: Vec<i16> = (0..2880)
            .map(|i| ((i as f64 * 0.13).sin() * 8000.0) as i16)
            .collect();
        let mut opus = vec![0u8; 4000];
        let n = enc.encode(&pcm, &mut opus).unwrap();
        let mut back = Forward::new(
            &media(Codec::Opus, 111, None, 1),
            &media(Codec::Pcma, 8, None, 2),
            None,
        )
        .unwrap();
        let sent = send(&mut back, rtp(111, 1, 48_000, 5, &opus[..n]));
        assert_eq!(sent.len(), 3);
        assert!(sent.iter().all(|p| p.len() == 12 + 160));
        // Garbage in an Opus payload is counted, not decoded.
        assert!(send(&mut back, rtp(111, 2, 50_880, 5, &[0xff; 3])).is_empty());
        assert_eq!(back.stats().decode_errors, 1);
    }

    #[test]
    fn a_tapped_pass_through_yields_20_ms_frames_of_any_packet_time() {
        let mut f = Forward::new(
            &media(Codec::Pcmu, 0, None, 1),
            &media(Codec::Pcmu, 0, None, 2),
            Some(Track::Outbound),
        )
        .unwrap();
        let payload: Vec<u8> = (0..240).map(|i| g711::ulaw_encode(i * 10)).collect();
        let mut frames = Vec::new();
        for i in 0..4u16 {
            let sent = send(&mut f, rtp(0, i, 240 * u32::from(i), 5, &payload));
            assert_eq!(&sent[0][12..], &payload[..]);
            frames.extend_from_slice(f.tap_frames());
        }
        assert_eq!(frames.len(), 6);
        assert!(frames.iter().all(|f| f.track == Track::Outbound));
        assert_eq!(frames[0].samples[5], g711::ulaw_decode(payload[5]));
        assert_eq!(frames[1].samples[0], g711::ulaw_decode(payload[160]));
    }
}
