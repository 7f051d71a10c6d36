//! The audio pipeline of a session: the caller's codec decoded and resampled to the bot's
//! rate, and the bot's audio back to the caller's codec, in buffers allocated once.

use super::*;

/// Decoding the caller's audio to PCM at the bot's rate.
// One per session, built once: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Decoder {
    G711 {
        alaw: bool,
        plc: G711Plc,
        pcm: Vec<i16>,
        resampler: Resampler,
    },
    Opus(OpusDecoder),
}

/// Encoding the bot's audio for the caller.
#[allow(clippy::large_enum_variant)]
pub(super) enum EncoderKind {
    G711 {
        alaw: bool,
        pcm: Vec<i16>,
        resampler: Resampler,
    },
    Opus(OpusEncoder),
}

/// The per-session buffers and codecs: built once, reused for every frame.
pub(super) struct Pipeline {
    pub(super) codec: Codec,
    pub(super) decoder: Decoder,
    pub(super) encoder: EncoderKind,
    /// One 20 ms frame at the bot's rate.
    pub(super) bot_frame: Vec<i16>,
    /// The RTP packet we send.
    pub(super) packet: Vec<u8>,
    /// Our SSRC, sequence numbers and timestamps towards the caller.
    pub(super) writer: RtpWriter,
    pub(super) payload_type: u8,
}

impl Pipeline {
    pub(super) fn new(media: &CallMedia, bot_rate: u32) -> Result<Self, String> {
        let frame_at = |rate: u32| (rate / 50) as usize;
        let (decoder, encoder) = match media.codec {
            Codec::Pcma | Codec::Pcmu => {
                let alaw = media.codec == Codec::Pcma;
                let up = Resampler::new(8000, bot_rate, 160).map_err(|e| e.to_string())?;
                let down = Resampler::new(bot_rate, 8000, frame_at(bot_rate))
                    .map_err(|e| e.to_string())?;
                (
                    Decoder::G711 {
                        alaw,
                        plc: G711Plc::new(),
                        pcm: vec![0; 160],
                        resampler: up,
                    },
                    EncoderKind::G711 {
                        alaw,
                        pcm: vec![0; 160],
                        resampler: down,
                    },
                )
            }
            Codec::Opus => (
                // libopus decodes and encodes at the bot's rate directly: no resampler.
                Decoder::Opus(OpusDecoder::new(bot_rate).map_err(|e| e.to_string())?),
                EncoderKind::Opus(OpusEncoder::new(bot_rate, 5).map_err(|e| e.to_string())?),
            ),
        };
        Ok(Pipeline {
            codec: media.codec,
            decoder,
            encoder,
            bot_frame: vec![0; frame_at(bot_rate)],
            packet: Vec::with_capacity(1500),
            writer: RtpWriter::new(media.ssrc),
            payload_type: media.payload_type,
        })
    }

    /// Decodes one caller frame (or conceals a lost one) into `out` at the bot's rate.
    pub(super) fn decode(&mut self, payload: Option<&[u8]>, out: &mut Vec<i16>) {
        out.clear();
        match &mut self.decoder {
            Decoder::G711 {
                alaw,
                plc,
                pcm,
                resampler,
            } => {
                match payload {
                    Some(p) => {
                        let n = if *alaw {
                            g711::decode_alaw(p, pcm)
                        } else {
                            g711::decode_ulaw(p, pcm)
                        };
                        pcm[n..].fill(0);
                        plc.good_frame(pcm);
                    }
                    None => plc.conceal(pcm),
                }
                let _ = resampler.process_vec(pcm, out);
            }
            Decoder::Opus(decoder) => {
                out.resize(self.bot_frame.len(), 0);
                let n = match payload {
                    Some(p) => decoder
                        .decode(p, out)
                        .unwrap_or_else(|_| decoder.conceal(out)),
                    None => decoder.conceal(out),
                };
                out.truncate(n);
            }
        }
    }

    /// The RTP timestamp of the packet last encoded.
    pub(super) fn last_timestamp(&self) -> u32 {
        self.writer
            .timestamp()
            .wrapping_sub(self.codec.clock_rate() / 50)
    }

    /// Encodes `self.bot_frame` into `self.packet` as the next RTP packet.
    pub(super) fn encode_frame(&mut self, marker: bool) -> Result<(), String> {
        self.writer
            .start_frame(&mut self.packet, self.payload_type, marker);
        match &mut self.encoder {
            EncoderKind::G711 {
                alaw,
                pcm,
                resampler,
            } => {
                let n = resampler
                    .process(&self.bot_frame, pcm)
                    .map_err(|e| e.to_string())?;
                let start = self.packet.len();
                self.packet.resize(start + n, 0);
                if *alaw {
                    g711::encode_alaw(&pcm[..n], &mut self.packet[start..]);
                } else {
                    g711::encode_ulaw(&pcm[..n], &mut self.packet[start..]);
                }
            }
            EncoderKind::Opus(encoder) => {
                let start = self.packet.len();
                self.packet
                    .resize(start + voicegate_audio::opus::MAX_PACKET_BYTES, 0);
                let n = encoder
                    .encode(&self.bot_frame, &mut self.packet[start..])
                    .map_err(|e| e.to_string())?;
                self.packet.truncate(start + n);
            }
        }
        self.writer.advance_seq();
        self.writer.advance_timestamp(self.codec.clock_rate() / 50);
        Ok(())
    }
}
