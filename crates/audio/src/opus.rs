//! Opus (RFC 6716, RTP payload per RFC 7587) for mono voice.
//!
//! The RTP clock of Opus is always 48 kHz, but libopus can take and produce PCM at 8, 12, 16, 24
//! or 48 kHz and resamples internally; decoding straight to the rate the other leg needs (8 kHz
//! for G.711, 16 kHz for a wideband WebSocket peer) saves a separate resampler. These wrappers
//! keep the libopus state, check lengths before handing pointers to C, and turn every libopus
//! complaint into an [`AudioError`], so a corrupt packet from the network is an error, never a
//! panic.

use audiopus::coder::{Decoder, Encoder, GenericCtl as _};
use audiopus::{Application, Bitrate, Channels, SampleRate};

use crate::AudioError;

/// Output capacity that always holds one encoded packet: libopus's recommended maximum (one
/// 20 ms frame never exceeds 1275 bytes, a 60 ms packet 3 x 1275 plus framing).
pub const MAX_PACKET_BYTES: usize = 4000;

/// Bit rate the encoder starts with. 32 kbit/s is a common wideband voice rate and keeps libopus
/// in its SILK or hybrid modes, the only ones that carry in-band FEC; the automatic default
/// (about 51 kbit/s for 20 ms mono at 48 kHz) may switch to CELT-only and lose the FEC.
pub const DEFAULT_BITRATE: u32 = 32_000;

fn sample_rate(rate: u32, what: &'static str) -> Result<SampleRate, AudioError> {
    Ok(match rate {
        8000 => SampleRate::Hz8000,
        12000 => SampleRate::Hz12000,
        16000 => SampleRate::Hz16000,
        24000 => SampleRate::Hz24000,
        48000 => SampleRate::Hz48000,
        _ => return Err(AudioError::UnsupportedSampleRate { rate, what }),
    })
}

fn opus_error(during: &'static str) -> impl Fn(audiopus::Error) -> AudioError {
    move |source| AudioError::Opus { during, source }
}

/// Samples in 2.5 ms, the unit every Opus frame duration is a multiple of.
fn quantum(rate: u32) -> usize {
    rate as usize / 400
}

/// Mono Opus encoder tuned for voice, with in-band FEC on.
pub struct OpusEncoder {
    inner: Encoder,
    rate: u32,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder")
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl OpusEncoder {
    /// A VoIP-mode mono encoder taking PCM at `sample_rate` (8000, 12000, 16000, 24000 or 48000
    /// Hz), at [`DEFAULT_BITRATE`], with in-band FEC enabled and tuned for
    /// `expected_loss_percent` packet loss (0 to 100; higher spends more bits on redundancy).
    pub fn new(sample_rate_hz: u32, expected_loss_percent: u8) -> Result<Self, AudioError> {
        let rate = sample_rate(sample_rate_hz, "the Opus encoder (8, 12, 16, 24 or 48 kHz)")?;
        let setup = opus_error("encoder setup");
        let inner = Encoder::new(rate, Channels::Mono, Application::Voip).map_err(&setup)?;
        let mut encoder = OpusEncoder {
            inner,
            rate: sample_rate_hz,
        };
        encoder.set_bitrate(DEFAULT_BITRATE)?;
        encoder.inner.set_inband_fec(true).map_err(&setup)?;
        encoder.set_expected_loss(expected_loss_percent)?;
        Ok(encoder)
    }

    /// Changes the expected packet loss (clamped to 100 %); libopus sizes its FEC from it.
    pub fn set_expected_loss(&mut self, percent: u8) -> Result<(), AudioError> {
        self.inner
            .set_packet_loss_perc(percent.min(100))
            .map_err(opus_error("setting the expected loss"))
    }

    /// Changes the target bit rate (libopus accepts 500 to 512000 bit/s).
    pub fn set_bitrate(&mut self, bits_per_second: u32) -> Result<(), AudioError> {
        let bps = i32::try_from(bits_per_second).unwrap_or(i32::MAX);
        self.inner
            .set_bitrate(Bitrate::BitsPerSecond(bps))
            .map_err(opus_error("setting the bit rate"))
    }

    /// Changes the CPU/quality trade-off, 0 (cheapest) to 10 (best, the libopus default);
    /// values above 10 are clamped. Encoding is the dearest per-frame step of an Opus leg, so a
    /// busy gateway may lower it.
    pub fn set_complexity(&mut self, complexity: u8) -> Result<(), AudioError> {
        self.inner
            .set_complexity(complexity.min(10))
            .map_err(opus_error("setting the complexity"))
    }

    /// PCM rate the encoder takes, in Hz.
    pub fn sample_rate(&self) -> u32 {
        self.rate
    }

    /// Codec delay in samples at the encoder's rate: decoded audio lags the input by this much
    /// (encoder look-ahead plus the decoder's part), so tests and mixers align by it.
    pub fn lookahead(&self) -> usize {
        self.inner.lookahead().map_or(0, |n| n as usize)
    }

    /// Encodes one frame of `pcm` (2.5, 5, 10, 20, 40 or 60 ms at the encoder's rate) into
    /// `out`; returns the packet length. `out` of [`MAX_PACKET_BYTES`] always suffices.
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, AudioError> {
        let q = quantum(self.rate);
        let valid = [1, 2, 4, 8, 16, 24].iter().any(|&m| pcm.len() == m * q);
        if !valid {
            return Err(AudioError::OpusFrameDuration {
                samples: pcm.len(),
                rate: self.rate,
            });
        }
        if out.is_empty() {
            return Err(AudioError::OutputTooSmall { needed: 1, got: 0 });
        }
        // libopus takes the capacity as an i32; more than a few kB is never used anyway.
        let cap = out.len().min(MAX_PACKET_BYTES);
        self.inner
            .encode(pcm, &mut out[..cap])
            .map_err(opus_error("encode"))
    }
}

/// Mono Opus decoder with loss handling (FEC recovery and concealment).
pub struct OpusDecoder {
    inner: Decoder,
    rate: u32,
    /// Samples in the last decoded frame: the duration a lost frame is assumed to have.
    last_frame: usize,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder")
            .field("rate", &self.rate)
            .field("last_frame", &self.last_frame)
            .finish_non_exhaustive()
    }
}

impl OpusDecoder {
    /// A mono decoder producing PCM at `sample_rate_hz` (8000, 12000, 16000, 24000 or 48000 Hz;
    /// any of them can decode any Opus packet).
    pub fn new(sample_rate_hz: u32) -> Result<Self, AudioError> {
        let rate = sample_rate(sample_rate_hz, "the Opus decoder (8, 12, 16, 24 or 48 kHz)")?;
        let inner = Decoder::new(rate, Channels::Mono).map_err(opus_error("decoder setup"))?;
        Ok(OpusDecoder {
            inner,
            rate: sample_rate_hz,
            last_frame: sample_rate_hz as usize / 50,
        })
    }

    /// PCM rate the decoder produces, in Hz.
    pub fn sample_rate(&self) -> u32 {
        self.rate
    }

    /// Samples of the last decoded frame (20 ms before the first packet): what
    /// [`conceal`](Self::conceal) and [`decode_fec`](Self::decode_fec) produce.
    pub fn frame_len(&self) -> usize {
        self.last_frame
    }

    /// Decodes one packet into `out`; returns the number of samples written. An empty, corrupt
    /// or truncated packet, or an `out` shorter than the packet's duration, is an error and
    /// writes nothing.
    pub fn decode(&mut self, packet: &[u8], out: &mut [i16]) -> Result<usize, AudioError> {
        let needed = self.packet_samples(packet)?;
        if out.len() < needed {
            return Err(AudioError::OutputTooSmall {
                needed,
                got: out.len(),
            });
        }
        let n = self
            .inner
            .decode(Some(packet), &mut out[..needed], false)
            .map_err(opus_error("decode"))?;
        if n > 0 {
            self.last_frame = n;
        }
        Ok(n)
    }

    /// Recovers a lost frame from the in-band FEC carried by the packet that followed it;
    /// returns the samples written ([`frame_len`](Self::frame_len) of them). Call it for the
    /// lost frame, then [`decode`](Self::decode) the same `next_packet` normally. If the packet
    /// carries no FEC, libopus conceals instead, so the result is never worse than
    /// [`conceal`](Self::conceal).
    pub fn decode_fec(&mut self, next_packet: &[u8], out: &mut [i16]) -> Result<usize, AudioError> {
        self.packet_samples(next_packet)?;
        // libopus needs exactly the missing duration; a stream keeps its packet time, so the
        // lost frame is as long as the last one decoded.
        let needed = self.last_frame;
        if out.len() < needed {
            return Err(AudioError::OutputTooSmall {
                needed,
                got: out.len(),
            });
        }
        self.inner
            .decode(Some(next_packet), &mut out[..needed], true)
            .map_err(opus_error("FEC decode"))
    }

    /// Synthesises one lost frame with the decoder's own concealment and returns its length:
    /// [`frame_len`](Self::frame_len) samples, or as many whole 2.5 ms steps as fit in `out`.
    /// If libopus fails (it should not), the frame is silence rather than an error, because a
    /// lost frame has to be filled with something.
    pub fn conceal(&mut self, out: &mut [i16]) -> usize {
        let q = quantum(self.rate);
        let n = self.last_frame.min(out.len()) / q * q;
        if n == 0 {
            return 0;
        }
        let frame = &mut out[..n];
        if self
            .inner
            .decode(None::<&[u8]>, &mut *frame, false)
            .is_err()
        {
            frame.fill(0);
        }
        n
    }

    /// Forgets the decoder state, as for a new stream.
    pub fn reset(&mut self) {
        // Resetting only fails on an invalid decoder handle, which `new` rules out.
        let _ = self.inner.reset_state();
        self.last_frame = self.rate as usize / 50;
    }

    /// Duration of `packet` at the decoder's rate, checking that its framing is valid.
    fn packet_samples(&self, packet: &[u8]) -> Result<usize, AudioError> {
        if packet.is_empty() {
            return Err(AudioError::EmptyPacket);
        }
        let rate = sample_rate(self.rate, "the Opus decoder")?;
        let n = audiopus::packet::nb_samples(packet, rate).map_err(opus_error("decode"))?;
        // RFC 6716 caps a packet at 120 ms and libopus refuses longer ones. audiopus passes
        // libopus's negative error codes through as huge `usize`s, which this also catches.
        if n == 0 || n > self.rate as usize * 120 / 1000 {
            return Err(AudioError::Opus {
                during: "decode",
                source: audiopus::Error::Opus(audiopus::ErrorCode::InvalidPacket),
            });
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    const FRAME: usize = 960; // 20 ms at 48 kHz

    /// Encodes `pcm` in 20 ms frames; returns the packets.
    fn encode_all(enc: &mut OpusEncoder, pcm: &[i16]) -> Vec<Vec<u8>> {
        let frame = enc.sample_rate() as usize / 50;
        let mut buf = [0u8; MAX_PACKET_BYTES];
        pcm.chunks_exact(frame)
            .map(|chunk| {
                let n = enc.encode(chunk, &mut buf).unwrap();
                buf[..n].to_vec()
            })
            .collect()
    }

    fn decode_all(dec: &mut OpusDecoder, packets: &[Vec<u8>]) -> Vec<i16> {
        let mut out = Vec::new();
        let mut frame = vec![0i16; 5760];
        for p in packets {
            let n = dec.decode(p, &mut frame).unwrap();
            out.extend_from_slice(&frame[..n]);
        }
        out
    }

    #[test]
    fn tone_keeps_frequency_and_snr_after_codec_delay() {
        let mut enc = OpusEncoder::new(48000, 10).unwrap();
        let mut dec = OpusDecoder::new(48000).unwrap();
        let input = sine(1000.0, 48000, 10000.0, FRAME * 100);
        let packets = encode_all(&mut enc, &input);
        let out = decode_all(&mut dec, &packets);
        assert_eq!(out.len(), input.len());
        let lookahead = enc.lookahead();
        let skip = FRAME * 10;
        let len = input.len() - skip - 2 * lookahead - 100;
        // A pure tone matches itself every period (48 samples), so search one period either
        // side of the reported codec delay rather than from zero.
        let (lag, snr) = best_alignment(&input, &out, lookahead - 48..lookahead + 48, skip, len);
        let freq = zero_crossing_freq(&out[skip..], 48000);
        let bytes: usize = packets.iter().map(Vec::len).sum();
        println!(
            "Opus 48 kHz 1 kHz tone: SNR {snr:.1} dB at lag {lag} (lookahead {lookahead}), \
             frequency {freq:.2} Hz, {:.1} kbit/s",
            bytes as f64 * 8.0 / 2.0 / 1000.0
        );
        assert!(snr > 20.0, "SNR {snr}");
        assert!(
            lag.abs_diff(lookahead) <= 8,
            "lag {lag}, lookahead {lookahead}"
        );
        assert!((freq - 1000.0).abs() < 2.0, "frequency {freq}");
        let at_tone = goertzel_power(&out[skip..], 1000.0, 48000);
        for other in [500.0, 900.0, 1100.0, 2000.0] {
            assert!(at_tone > 100.0 * goertzel_power(&out[skip..], other, 48000));
        }
    }

    #[test]
    fn decoder_can_output_narrow_and_wideband_rates() {
        let mut enc = OpusEncoder::new(48000, 0).unwrap();
        let packets = encode_all(&mut enc, &sine(1000.0, 48000, 10000.0, FRAME * 50));
        for rate in [8000, 16000, 24000] {
            let mut dec = OpusDecoder::new(rate).unwrap();
            let out = decode_all(&mut dec, &packets);
            assert_eq!(out.len(), rate as usize);
            assert_eq!(dec.frame_len(), rate as usize / 50);
            let freq = zero_crossing_freq(&out[out.len() / 5..], rate);
            println!("Opus decoded at {rate} Hz: frequency {freq:.2} Hz");
            assert!((freq - 1000.0).abs() < 2.0, "{rate} Hz: frequency {freq}");
        }
        // And an encoder fed at 16 kHz decodes to the same tone at 48 kHz.
        let mut enc16 = OpusEncoder::new(16000, 0).unwrap();
        let packets = encode_all(&mut enc16, &sine(1000.0, 16000, 10000.0, 320 * 50));
        let out = decode_all(&mut OpusDecoder::new(48000).unwrap(), &packets);
        assert_eq!(out.len(), 48000);
        let freq = zero_crossing_freq(&out[out.len() / 5..], 48000);
        assert!((freq - 1000.0).abs() < 2.0, "frequency {freq}");
    }

    #[test]
    fn garbage_packets_are_errors_never_panics() {
        let mut dec = OpusDecoder::new(48000).unwrap();
        let mut out = [0i16; 5760];
        assert!(matches!(
            dec.decode(&[], &mut out),
            Err(AudioError::EmptyPacket)
        ));
        assert!(matches!(
            dec.decode_fec(&[], &mut out),
            Err(AudioError::EmptyPacket)
        ));
        // TOC code 3 with a frame count of zero is invalid framing.
        let err = dec.decode(&[0x03, 0x00], &mut out).unwrap_err();
        println!("invalid packet error: {err}");
        assert!(matches!(err, AudioError::Opus { .. }));
        // Code 3 claiming 48 frames of 20 ms (960 ms): over the 120 ms limit.
        assert!(dec.decode(&[0x0B, 48, 1, 2, 3], &mut out).is_err());
        // Code 3 with CBR frames whose bytes do not divide evenly.
        assert!(dec.decode(&[0x03, 0x02, 1, 2, 3], &mut out).is_err());
        // Code 1 (two equal frames) with an odd payload.
        assert!(dec.decode(&[0x01, 1, 2, 3], &mut out).is_err());
        // A valid 20 ms packet into a buffer too small for it.
        let mut enc = OpusEncoder::new(48000, 0).unwrap();
        let mut pkt = [0u8; MAX_PACKET_BYTES];
        let n = enc.encode(&[0; FRAME], &mut pkt).unwrap();
        assert!(matches!(
            dec.decode(&pkt[..n], &mut out[..959]),
            Err(AudioError::OutputTooSmall {
                needed: 960,
                got: 959
            })
        ));

        // Random bytes of random lengths: each call returns Ok or Err, and the decoder keeps
        // working afterwards.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut garbage = [0u8; 1500];
        let (mut ok, mut err) = (0, 0);
        for _ in 0..3000 {
            let len = (next() % 1500) as usize;
            for b in &mut garbage[..len] {
                *b = next() as u8;
            }
            match dec.decode(&garbage[..len], &mut out) {
                Ok(_) => ok += 1,
                Err(_) => err += 1,
            }
            let _ = dec.decode_fec(&garbage[..len], &mut out);
            assert!(dec.conceal(&mut out) > 0);
        }
        println!("random packets: {ok} decoded as noise, {err} rejected");
        assert!(dec.decode(&pkt[..n], &mut out).is_ok());
    }

    #[test]
    fn encoder_rejects_bad_frames_and_rates() {
        let mut enc = OpusEncoder::new(48000, 5).unwrap();
        let mut out = [0u8; MAX_PACKET_BYTES];
        for bad in [0, 1, 959, 961, 3000] {
            let err = enc.encode(&vec![0; bad], &mut out).unwrap_err();
            assert!(
                matches!(err, AudioError::OpusFrameDuration { .. }),
                "{bad}: {err}"
            );
        }
        for good in [120, 240, 480, 960, 1920, 2880] {
            assert!(enc.encode(&vec![0; good], &mut out).is_ok(), "{good}");
        }
        assert!(matches!(
            enc.encode(&[0; FRAME], &mut []),
            Err(AudioError::OutputTooSmall { .. })
        ));
        // A one-byte buffer is too small for anything but silence; libopus says so or fits it.
        let _ = enc.encode(&sine(1000.0, 48000, 10000.0, FRAME), &mut out[..1]);
        assert!(OpusEncoder::new(44100, 0).is_err());
        assert!(OpusDecoder::new(11025).is_err());
        let err = OpusDecoder::new(11025).unwrap_err();
        assert!(err.to_string().contains("11025"), "{err}");
        assert!(enc.set_expected_loss(255).is_ok());
        assert!(enc.set_bitrate(24_000).is_ok());
        assert!(enc.set_complexity(5).is_ok());
        assert!(enc.set_complexity(200).is_ok());
        // Out-of-range rates are clamped or refused by libopus, never a panic.
        let _ = enc.set_bitrate(u32::MAX);
        let _ = enc.set_bitrate(0);
    }

    #[test]
    fn conceal_produces_a_frame_that_continues_the_tone() {
        let mut enc = OpusEncoder::new(48000, 10).unwrap();
        let mut dec = OpusDecoder::new(48000).unwrap();
        let input = sine(1000.0, 48000, 10000.0, FRAME * 20);
        let packets = encode_all(&mut enc, &input);
        decode_all(&mut dec, &packets[..19]);
        let mut out = [0i16; FRAME];
        assert_eq!(dec.conceal(&mut out), FRAME);
        let level = rms(&out);
        let freq = zero_crossing_freq(&out, 48000);
        println!("Opus PLC frame: rms {level:.0} (tone rms 7071), frequency {freq:.1} Hz");
        assert!(level > 1000.0, "rms {level}");
        assert!((freq - 1000.0).abs() < 20.0, "frequency {freq}");
        // Concealment before any packet, into short or odd buffers: no panic.
        let mut fresh = OpusDecoder::new(16000).unwrap();
        assert_eq!(fresh.conceal(&mut [0; 320]), 320);
        assert_eq!(fresh.conceal(&mut [0; 50]), 40);
        assert_eq!(fresh.conceal(&mut [0; 39]), 0);
        assert_eq!(fresh.conceal(&mut []), 0);
    }

    #[test]
    fn fec_recovers_a_lost_frame_better_than_concealment() {
        let mut enc = OpusEncoder::new(48000, 20).unwrap();
        // A tone whose pitch glides, so plain concealment cannot just repeat the last period.
        let input: Vec<i16> = (0..FRAME * 40)
            .map(|n| {
                let t = n as f64 / 48000.0;
                let phase = 2.0 * std::f64::consts::PI * (300.0 * t + 400.0 * t * t);
                (8000.0 * phase.sin()) as i16
            })
            .collect();
        let packets = encode_all(&mut enc, &input);
        let lost = 30;
        let reference = decode_all(&mut OpusDecoder::new(48000).unwrap(), &packets[..=lost]);
        let reference = &reference[lost * FRAME..];

        let mut out = [0i16; FRAME];
        let mut with_fec = OpusDecoder::new(48000).unwrap();
        decode_all(&mut with_fec, &packets[..lost]);
        assert_eq!(
            with_fec.decode_fec(&packets[lost + 1], &mut out).unwrap(),
            FRAME
        );
        let fec_snr = snr_db(reference, &out, 0, 0, FRAME);

        let mut with_plc = OpusDecoder::new(48000).unwrap();
        decode_all(&mut with_plc, &packets[..lost]);
        with_plc.conceal(&mut out);
        let plc_snr = snr_db(reference, &out, 0, 0, FRAME);
        println!("lost Opus frame vs. its normal decode: FEC SNR {fec_snr:.1} dB, PLC SNR {plc_snr:.1} dB");
        assert!(
            fec_snr > plc_snr + 3.0,
            "FEC {fec_snr} dB, PLC {plc_snr} dB"
        );
        // After FEC the next packet decodes normally.
        assert_eq!(
            with_fec.decode(&packets[lost + 1], &mut out).unwrap(),
            FRAME
        );
    }

    #[test]
    fn per_frame_coding_does_not_allocate() {
        let mut enc = OpusEncoder::new(48000, 10).unwrap();
        let mut dec = OpusDecoder::new(48000).unwrap();
        let pcm = sine(1000.0, 48000, 10000.0, FRAME);
        let mut packet = [0u8; MAX_PACKET_BYTES];
        let mut out = [0i16; FRAME];
        let n = allocations_during(|| {
            for _ in 0..20 {
                let len = enc.encode(&pcm, &mut packet).unwrap();
                dec.decode(&packet[..len], &mut out).unwrap();
                dec.decode_fec(&packet[..len], &mut out).unwrap();
                dec.conceal(&mut out);
            }
            let _ = dec.decode(&[0x03, 0x00], &mut out);
        });
        assert_eq!(n, 0);
    }
}
