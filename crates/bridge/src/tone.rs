//! Call-progress tones to the caller, for the seconds between a bot's transfer request and the
//! agent's answer: the caller hears ringback, not silence.
//!
//! [`ToneGenerator`] makes the samples (plain data, no I/O); [`ToneHandle`] sends them as RTP in
//! the call's codec every 20 ms on the caller's ports, to the same address the bot session used
//! (signalled or latched, per [`LatchPolicy`](voicegate_rtp::latch::LatchPolicy)), and gives the
//! ports back, still bound, when stopped.

use std::f64::consts::TAU;
use std::io;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tracing::debug;
use voicegate_audio::{g711, OpusEncoder};
use voicegate_rtp::leg::{LegSetup, LegSockets, MediaLeg, RtpWriter, RECV_BYTES};
use voicegate_rtp::pool::RtpPorts;

use crate::playout::Pacer;
use crate::session::{CallMedia, Codec};

const FRAME: Duration = Duration::from_millis(20);

/// The rate tones are made at: enough for call-progress tones, and G.711's own rate.
const TONE_RATE: u32 = 8000;

/// Peak of a 0 dBm0 sine in 16-bit PCM (G.711's digital milliwatt, 3.17 dB below full load).
const DBM0_PEAK: f64 = 22_656.0;

/// Each burst fades in and out over this long, so it starts and stops without a click.
const RAMP: Duration = Duration::from_millis(5);

/// Which tone to play.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tone {
    /// Ringing tone, the common one of ITU-T E.180: 425 Hz, 1 s on, 4 s off.
    Ringback,
    /// North American ringback: 440 + 480 Hz, 2 s on, 4 s off.
    RingbackUs,
}

impl Tone {
    /// Frequencies (Hz) and level of each (dBm0), on and off times.
    fn cadence(self) -> (&'static [f64], f64, Duration, Duration) {
        match self {
            Tone::Ringback => (
                &[425.0],
                -13.0,
                Duration::from_secs(1),
                Duration::from_secs(4),
            ),
            // The North American precise tone plan sets each component at -19 dBm0.
            Tone::RingbackUs => (
                &[440.0, 480.0],
                -19.0,
                Duration::from_secs(2),
                Duration::from_secs(4),
            ),
        }
    }

    /// How long the tone sounds in each period.
    pub fn on_time(self) -> Duration {
        self.cadence().2
    }

    /// How long it is silent after each burst.
    pub fn off_time(self) -> Duration {
        self.cadence().3
    }

    /// The frequencies it is made of, in Hz.
    pub fn frequencies(self) -> &'static [f64] {
        self.cadence().0
    }
}

/// A tone's samples, one frame after the other, from the start of a burst.
#[derive(Clone, Debug)]
pub struct ToneGenerator {
    rate: f64,
    frequencies: &'static [f64],
    /// Peak of each component.
    amplitude: f64,
    on: u64,
    period: u64,
    ramp: u64,
    /// Samples made since the start, modulo the period.
    position: u64,
}

impl ToneGenerator {
    /// A generator of `tone` at `sample_rate` Hz; the first sample starts a burst.
    pub fn new(tone: Tone, sample_rate: u32) -> Self {
        let (frequencies, level, on, off) = tone.cadence();
        let samples = |d: Duration| d.as_millis() as u64 * u64::from(sample_rate) / 1000;
        ToneGenerator {
            rate: f64::from(sample_rate),
            frequencies,
            amplitude: DBM0_PEAK * 10f64.powf(level / 20.0),
            on: samples(on),
            period: samples(on + off),
            ramp: samples(RAMP).max(1),
            position: 0,
        }
    }

    /// Whether the next sample is in a burst (not in the silence between).
    pub fn is_on(&self) -> bool {
        self.position < self.on
    }

    /// Fills `out` with the next samples.
    pub fn fill(&mut self, out: &mut [i16]) {
        for sample in out {
            *sample = self.sample(self.position);
            self.position = (self.position + 1) % self.period;
        }
    }

    fn sample(&self, n: u64) -> i16 {
        if n >= self.on {
            return 0;
        }
        // Each burst starts at phase zero, so its samples depend on `n` alone.
        let t = n as f64 / self.rate;
        let edge = n.min(self.on - 1 - n);
        let envelope = (edge as f64 / self.ramp as f64).min(1.0);
        let sum: f64 = self.frequencies.iter().map(|f| (TAU * f * t).sin()).sum();
        (sum * self.amplitude * envelope).round() as i16
    }
}

/// Encodes tone frames in the call's codec.
enum ToneEncoder {
    Alaw,
    Ulaw,
    Opus(OpusEncoder),
}

impl ToneEncoder {
    fn new(codec: Codec) -> io::Result<Self> {
        Ok(match codec {
            Codec::Pcma => ToneEncoder::Alaw,
            Codec::Pcmu => ToneEncoder::Ulaw,
            // libopus takes the 8 kHz frames as they are; the RTP clock stays 48 kHz.
            Codec::Opus => {
                ToneEncoder::Opus(OpusEncoder::new(TONE_RATE, 0).map_err(io::Error::other)?)
            }
        })
    }

    /// Appends the encoded frame to `packet`.
    fn encode(&mut self, pcm: &[i16], packet: &mut Vec<u8>) -> io::Result<()> {
        let start = packet.len();
        match self {
            ToneEncoder::Alaw => {
                packet.resize(start + pcm.len(), 0);
                g711::encode_alaw(pcm, &mut packet[start..]);
            }
            ToneEncoder::Ulaw => {
                packet.resize(start + pcm.len(), 0);
                g711::encode_ulaw(pcm, &mut packet[start..]);
            }
            ToneEncoder::Opus(encoder) => {
                packet.resize(start + voicegate_audio::opus::MAX_PACKET_BYTES, 0);
                let n = encoder
                    .encode(pcm, &mut packet[start..])
                    .map_err(io::Error::other)?;
                packet.truncate(start + n);
            }
        }
        Ok(())
    }
}

/// Sends a tone to the caller until stopped. Dropping it stops the task (and frees the ports).
pub struct ToneHandle {
    task: JoinHandle<Option<RtpPorts>>,
    stop: Option<oneshot::Sender<()>>,
}

impl ToneHandle {
    /// Starts sending `tone` on the caller's ports, in `media`'s codec and payload type under
    /// its SSRC, one packet every 20 ms, to its signalled address or, as `media.latching`
    /// says, where its RTP comes from (incoming packets are read only for that, and dropped).
    /// Sequence numbers and timestamps are continuous from a random start, the first packet
    /// marked; silence between bursts is sent too.
    pub fn start(ports: RtpPorts, media: CallMedia, tone: Tone) -> io::Result<ToneHandle> {
        let encoder = ToneEncoder::new(media.codec)?;
        let sockets = LegSockets::from_ports(ports)?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run(sockets, media, tone, encoder, stop_rx));
        Ok(ToneHandle {
            task,
            stop: Some(stop_tx),
        })
    }

    /// Stops the tone and returns the caller's ports, still bound (`None` if the task failed).
    pub async fn stop(mut self) -> Option<RtpPorts> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.ok().flatten()
    }
}

impl Drop for ToneHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The leg a tone goes out on: it only listens for where the caller's RTP comes from (no
/// statistics are reported, no RTCP sent, no timeout).
fn listening_leg(media: &CallMedia) -> LegSetup {
    LegSetup {
        telephone_event: None,
        expect_rtp: false,
        ..media.leg_setup(String::new())
    }
}

async fn run(
    sockets: LegSockets,
    media: CallMedia,
    tone: Tone,
    mut encoder: ToneEncoder,
    mut stop: oneshot::Receiver<()>,
) -> Option<RtpPorts> {
    let mut leg = MediaLeg::new(sockets, listening_leg(&media), Instant::now());
    let mut writer = RtpWriter::new(media.ssrc);
    let mut generator = ToneGenerator::new(tone, TONE_RATE);
    let mut pcm = [0i16; (TONE_RATE / 50) as usize];
    let mut packet = Vec::with_capacity(1500);
    let mut rtp_in = vec![0u8; RECV_BYTES];
    let ticks_per_frame = media.codec.clock_rate() / 50;
    let mut marker = true;
    let mut pacer = Pacer::new(Instant::now(), FRAME);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            // Incoming packets are read only for where to send (and RTCP so that none is left
            // queued for the next stage), then dropped.
            _ = leg.recv(&mut rtp_in) => {}
            _ = sleep_until(pacer.next_deadline()) => {
                let now = Instant::now();
                for _ in 0..pacer.tick(now) {
                    generator.fill(&mut pcm);
                    writer.start_frame(&mut packet, media.payload_type, marker);
                    let timestamp = writer.timestamp();
                    // Time goes on whether or not there is anywhere to send to.
                    writer.advance_timestamp(ticks_per_frame);
                    if leg.state().rtp_target().is_none() {
                        continue;
                    }
                    if let Err(e) = encoder.encode(&pcm, &mut packet) {
                        debug!(error = %e, "tone frame not encoded");
                        continue;
                    }
                    if leg.send_rtp(&packet, timestamp, packet.len() - 12, now).await {
                        writer.advance_seq();
                        marker = false;
                    }
                }
            }
        }
    }
    leg.into_ports()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Power of `pcm` at `freq` relative to its total power (Goertzel), 0 for silence.
    fn share_at(pcm: &[i16], freq: f64, rate: f64) -> f64 {
        let coeff = 2.0 * (TAU * freq / rate).cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &x in pcm {
            let s = f64::from(x) + coeff * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
        let total: f64 = pcm.iter().map(|&x| f64::from(x).powi(2)).sum();
        if total == 0.0 {
            0.0
        } else {
            // A pure tone over N samples gives N/2 times its total power.
            power / total / (pcm.len() as f64 / 2.0)
        }
    }

    fn rms(pcm: &[i16]) -> f64 {
        (pcm.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / pcm.len() as f64).sqrt()
    }

    #[test]
    fn ringback_is_425_hz_one_second_on_four_off() {
        let mut generator = ToneGenerator::new(Tone::Ringback, 8000);
        let mut pcm = vec![0i16; 8000 * 10];
        for frame in pcm.chunks_mut(160) {
            generator.fill(frame);
        }
        for start in [0usize, 40_000] {
            let burst = &pcm[start..start + 8000];
            // The middle of the burst, away from the ramps.
            let middle = &burst[400..7600];
            assert!(share_at(middle, 425.0, 8000.0) > 0.95);
            assert!(share_at(middle, 475.0, 8000.0) < 0.05);
            // -13 dBm0: the peak of a sine at that level.
            let peak = middle.iter().map(|x| x.unsigned_abs()).max().unwrap();
            assert!((5000..=5150).contains(&peak), "{peak}");
            assert!(pcm[start + 8000..start + 40_000].iter().all(|&x| x == 0));
        }
        // Faded in and out: no click at either edge.
        assert_eq!(pcm[0], 0);
        assert!(pcm[7999].unsigned_abs() < 100, "{}", pcm[7999]);
        assert!(rms(&pcm[0..40]) < rms(&pcm[400..440]));
    }

    #[test]
    fn us_ringback_is_440_plus_480_two_seconds_on_four_off() {
        let tone = Tone::RingbackUs;
        assert_eq!(tone.frequencies(), &[440.0, 480.0]);
        assert_eq!(tone.on_time(), Duration::from_secs(2));
        assert_eq!(tone.off_time(), Duration::from_secs(4));
        let mut generator = ToneGenerator::new(tone, 16000);
        assert!(generator.is_on());
        let mut pcm = vec![0i16; 16000 * 6];
        generator.fill(&mut pcm);
        assert!(generator.is_on(), "a new period starts");
        let middle = &pcm[1600..30400];
        let both = share_at(middle, 440.0, 16000.0) + share_at(middle, 480.0, 16000.0);
        assert!(both > 0.95, "{both}");
        assert!(share_at(middle, 425.0, 16000.0) < 0.05);
        assert!(pcm[32000..].iter().all(|&x| x == 0));
    }

    #[test]
    fn frames_encode_in_every_codec() {
        let mut generator = ToneGenerator::new(Tone::Ringback, TONE_RATE);
        let mut pcm = [0i16; 160];
        let mut decoder = voicegate_audio::OpusDecoder::new(8000).unwrap();
        let mut opus = ToneEncoder::new(Codec::Opus).unwrap();
        let mut alaw = ToneEncoder::new(Codec::Pcma).unwrap();
        let mut ulaw = ToneEncoder::new(Codec::Pcmu).unwrap();
        let (mut decoded, mut packet) = (Vec::new(), Vec::new());
        let mut frame = vec![0i16; 160];
        for _ in 0..40 {
            generator.fill(&mut pcm);
            packet.clear();
            opus.encode(&pcm, &mut packet).unwrap();
            assert!(!packet.is_empty() && packet.len() < 400);
            let n = decoder.decode(&packet, &mut frame).unwrap();
            decoded.extend_from_slice(&frame[..n]);
            for (encoder, decode) in [
                (&mut alaw, g711::alaw_decode as fn(u8) -> i16),
                (&mut ulaw, g711::ulaw_decode),
            ] {
                packet.clear();
                encoder.encode(&pcm, &mut packet).unwrap();
                assert_eq!(packet.len(), 160);
                for (&code, &x) in packet.iter().zip(&pcm) {
                    let error = (i32::from(decode(code)) - i32::from(x)).abs();
                    assert!(error <= i32::from(x).abs() / 16 + 32, "{x}: {error}");
                }
            }
        }
        // After the codec's start-up, the decoded Opus audio is the tone.
        assert!(share_at(&decoded[1600..6400], 425.0, 8000.0) > 0.9);
    }
}
