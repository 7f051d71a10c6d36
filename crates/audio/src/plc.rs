//! Packet-loss concealment for G.711 (8 kHz PCM), in the spirit of ITU-T G.711 Appendix I.
//!
//! G.711 has no concealment of its own, and a lost 20 ms frame played as silence clicks and
//! gaps audibly. Voiced speech is nearly periodic over a few tens of milliseconds, so a lost
//! frame is filled by repeating the last pitch period of the audio played before it (found by
//! normalised autocorrelation), with the period's end blended into the samples that preceded it
//! so the repetition has no seam. Longer losses fade out, because repeating one period for long
//! sounds synthetic: full level for 10 ms, then a linear ramp to silence at 60 ms. When audio
//! returns, the first few milliseconds are cross-faded from the continued synthetic signal into
//! the real one so the switch makes no click.
//!
//! All state is in fixed-size arrays: no allocation ever, and any frame length (including empty
//! or odd ones) is accepted.

/// Sample rate the concealer works at.
pub const SAMPLE_RATE: u32 = 8000;

/// Audio kept for the pitch search: 40 ms.
const HISTORY: usize = 320;
/// Shortest pitch period searched (400 Hz).
const MIN_PITCH: usize = 20;
/// Longest pitch period searched (about 67 Hz, below most male voices).
const MAX_PITCH: usize = 120;
/// Samples compared at each candidate lag.
const CORR_LEN: usize = 160;
/// Concealed samples played at full level before the fade starts (10 ms).
const FULL_LEVEL: usize = 80;
/// Concealed samples after which the output is silent (60 ms).
const SILENT_AFTER: usize = 480;
/// Recovery cross-fade after a loss of up to one 20 ms frame (5 ms)...
const FADE_SHORT: usize = 40;
/// ...and after a longer loss, whose synthetic signal has drifted further (10 ms).
const FADE_LONG: usize = 80;

const _: () = assert!(MAX_PITCH + CORR_LEN <= HISTORY);
const _: () = assert!(MAX_PITCH + MAX_PITCH / 4 <= HISTORY);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Good frames are passing through untouched.
    Normal,
    /// One or more frames in a row have been synthesised.
    Concealing,
    /// Good audio is back and being cross-faded in from the synthetic signal.
    Recovering,
}

/// G.711 packet-loss concealer for one stream: feed it every decoded frame with
/// [`good_frame`](Self::good_frame) and ask it for each lost one with
/// [`conceal`](Self::conceal).
#[derive(Clone)]
pub struct G711Plc {
    /// Last [`HISTORY`] samples played (real or synthetic), oldest first.
    history: [i16; HISTORY],
    /// One pitch period (first `pitch` entries) repeated during a loss.
    period: [f32; MAX_PITCH],
    pitch: usize,
    /// Next index into `period`.
    phase: usize,
    /// Synthetic samples produced since the loss began (saturates at [`SILENT_AFTER`]).
    lost: usize,
    fade_len: usize,
    fade_pos: usize,
    state: State,
}

impl std::fmt::Debug for G711Plc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("G711Plc")
            .field("state", &self.state)
            .field("pitch", &self.pitch)
            .field("lost", &self.lost)
            .finish_non_exhaustive()
    }
}

impl Default for G711Plc {
    fn default() -> Self {
        Self::new()
    }
}

impl G711Plc {
    /// A concealer with no history: a loss before any audio is concealed as silence.
    pub fn new() -> Self {
        G711Plc {
            history: [0; HISTORY],
            period: [0.0; MAX_PITCH],
            pitch: MAX_PITCH,
            phase: 0,
            lost: 0,
            fade_len: 0,
            fade_pos: 0,
            state: State::Normal,
        }
    }

    /// Records a correctly received, decoded frame. Right after a loss it also rewrites the
    /// start of `frame` in place (a cross-fade from the synthetic signal), so play `frame` as it
    /// is after this call.
    pub fn good_frame(&mut self, frame: &mut [i16]) {
        if self.state == State::Concealing {
            self.state = State::Recovering;
            self.fade_len = if self.lost <= 160 {
                FADE_SHORT
            } else {
                FADE_LONG
            };
            self.fade_pos = 0;
        }
        if self.state == State::Recovering {
            for sample in frame.iter_mut() {
                if self.fade_pos >= self.fade_len {
                    break;
                }
                self.fade_pos += 1;
                let w = self.fade_pos as f32 / (self.fade_len + 1) as f32;
                let synthetic = self.next_synthetic();
                *sample = to_i16(w * f32::from(*sample) + (1.0 - w) * synthetic);
            }
            if self.fade_pos >= self.fade_len {
                self.state = State::Normal;
                self.lost = 0;
            }
        }
        self.remember(frame);
    }

    /// Fills `out` with a synthetic replacement for a lost frame of `out.len()` samples.
    pub fn conceal(&mut self, out: &mut [i16]) {
        if self.state != State::Concealing {
            // A new loss (possibly during a recovery fade): analyse what was just played.
            self.start_concealment();
        }
        for sample in out.iter_mut() {
            *sample = to_i16(self.next_synthetic());
        }
        self.remember(out);
    }

    /// Whether the last frame handled was a concealed one.
    pub fn is_concealing(&self) -> bool {
        self.state == State::Concealing
    }

    /// Forgets all history, as for a new stream.
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    fn start_concealment(&mut self) {
        self.state = State::Concealing;
        self.lost = 0;
        self.phase = 0;
        self.pitch = self.find_pitch();
        let p = self.pitch;
        let h = &self.history;
        let end = HISTORY;
        // One period ending with the last sample played. Its last quarter is blended towards
        // the samples just before the period starts, so jumping from its end back to its start
        // continues the waveform instead of leaving a step.
        let blend = (p / 4).max(1);
        for j in 0..p {
            let current = f32::from(h[end - p + j]);
            self.period[j] = if j >= p - blend {
                let t = (j + 1 - (p - blend)) as f32 / (blend + 1) as f32;
                let earlier = f32::from(h[end - 2 * p + j]);
                (1.0 - t) * current + t * earlier
            } else {
                current
            };
        }
    }

    /// The lag in `MIN_PITCH..=MAX_PITCH` at which the recent audio best matches itself
    /// (normalised cross-correlation); the shortest lag wins a tie.
    fn find_pitch(&self) -> usize {
        let h = &self.history;
        let recent = &h[HISTORY - CORR_LEN..];
        let energy_recent: f64 = recent.iter().map(|&s| f64::from(s).powi(2)).sum();
        let mut best = (MAX_PITCH, 0.0f64);
        for lag in MIN_PITCH..=MAX_PITCH {
            let earlier = &h[HISTORY - CORR_LEN - lag..HISTORY - lag];
            let mut corr = 0.0f64;
            let mut energy_earlier = 0.0f64;
            for (&a, &b) in recent.iter().zip(earlier) {
                corr += f64::from(a) * f64::from(b);
                energy_earlier += f64::from(b).powi(2);
            }
            let denom = (energy_recent * energy_earlier).sqrt();
            if denom > 0.0 {
                let score = corr / denom;
                if score > best.1 + 1e-9 {
                    best = (lag, score);
                }
            }
        }
        best.0
    }

    fn next_synthetic(&mut self) -> f32 {
        let gain = if self.lost < FULL_LEVEL {
            1.0
        } else if self.lost >= SILENT_AFTER {
            0.0
        } else {
            1.0 - (self.lost - FULL_LEVEL) as f32 / (SILENT_AFTER - FULL_LEVEL) as f32
        };
        let value = self.period[self.phase] * gain;
        self.phase += 1;
        if self.phase >= self.pitch {
            self.phase = 0;
        }
        self.lost = (self.lost + 1).min(SILENT_AFTER);
        value
    }

    fn remember(&mut self, samples: &[i16]) {
        if samples.len() >= HISTORY {
            self.history
                .copy_from_slice(&samples[samples.len() - HISTORY..]);
        } else {
            let n = samples.len();
            self.history.copy_within(n.., 0);
            self.history[HISTORY - n..].copy_from_slice(samples);
        }
    }
}

fn to_i16(value: f32) -> i16 {
    // `as` saturates, so a blend can never wrap around.
    value.round() as i16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    const FRAME: usize = 160;

    /// Plays `signal` frame by frame through `plc`, losing the frames in `lost`; returns what
    /// would be played.
    fn play(plc: &mut G711Plc, signal: &[i16], lost: &[usize]) -> Vec<i16> {
        let mut played = Vec::with_capacity(signal.len());
        for (i, chunk) in signal.chunks(FRAME).enumerate() {
            let mut frame = chunk.to_vec();
            if lost.contains(&i) {
                plc.conceal(&mut frame);
            } else {
                plc.good_frame(&mut frame);
            }
            played.extend_from_slice(&frame);
        }
        played
    }

    /// Largest second difference: how far a sample departs from the straight line through the
    /// two before it. A smooth tone of amplitude A gives A * (2 pi f / fs)^2; a splice adds
    /// its jump on top, so this is what a click shows up in.
    fn max_bend(samples: &[i16]) -> i32 {
        samples
            .windows(3)
            .map(|w| (i32::from(w[2]) - 2 * i32::from(w[1]) + i32::from(w[0])).abs())
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn concealed_sine_keeps_its_frequency() {
        // 440 Hz has a period of 18.18 samples: not a whole number, as with real voices.
        for freq in [150.0, 440.0, 1000.0] {
            let signal = sine(freq, 8000, 8000.0, FRAME * 12);
            let mut plc = G711Plc::new();
            let played = play(&mut plc, &signal, &[10]);
            let concealed = &played[10 * FRAME..11 * FRAME];
            let measured = zero_crossing_freq(concealed, 8000);
            let snr = snr_db(&signal[10 * FRAME..], concealed, 0, 0, FRAME);
            println!(
                "PLC {freq} Hz: concealed frame at {measured:.1} Hz, SNR {snr:.1} dB vs. the lost \
                 audio, pitch lag {}",
                plc.pitch
            );
            assert!(
                (measured - freq).abs() < freq * 0.02,
                "{freq} Hz became {measured} Hz"
            );
            assert!(snr > 15.0, "{freq} Hz: SNR {snr}");
        }
    }

    #[test]
    fn repeated_losses_fade_to_silence() {
        let signal = sine(440.0, 8000, 8000.0, FRAME * 10);
        let mut plc = G711Plc::new();
        play(&mut plc, &signal, &[]);
        let mut lost = [0i16; FRAME * 5];
        for frame in lost.chunks_mut(FRAME) {
            plc.conceal(frame);
            assert!(plc.is_concealing());
        }
        let levels: Vec<f64> = lost.chunks(80).map(rms).collect();
        println!("PLC level per 10 ms of a 50 ms loss: {levels:.0?}");
        assert!(
            levels[0] > 5000.0,
            "first 10 ms at full level: {}",
            levels[0]
        );
        for w in levels.windows(2) {
            assert!(w[1] <= w[0] + 1.0, "level rose: {levels:?}");
        }
        assert!(levels[4] < levels[0] * 0.5);
        // From 60 ms on: exact silence.
        assert!(lost[SILENT_AFTER..].iter().all(|&s| s == 0));
    }

    #[test]
    fn recovery_is_smooth() {
        // Around the return of real audio the waveform may bend no more than 1.5 times the
        // clean tone's own curvature; splicing the real audio straight after the synthetic
        // frame bends it far more (printed for comparison).
        for (freq, losses) in [
            (200.0, vec![10]),
            (440.0, vec![10]),
            (1234.0, vec![10]),
            (300.0, vec![10, 11]),
            (523.0, vec![10, 11, 12, 13]),
        ] {
            let signal = sine(freq, 8000, 8000.0, FRAME * 20);
            let clean = max_bend(&signal);
            let mut plc = G711Plc::new();
            let played = play(&mut plc, &signal, &losses);
            let resume = (losses[losses.len() - 1] + 1) * FRAME;
            let bend = max_bend(&played[resume - FRAME..resume + FRAME]);
            let mut spliced = played[resume - 2..resume].to_vec();
            spliced.extend_from_slice(&signal[resume..resume + 2]);
            let splice = max_bend(&spliced);
            println!(
                "PLC {freq} Hz, {} lost: max bend around recovery {bend}, clean tone {clean}, \
                 plain splice {splice}",
                losses.len()
            );
            assert!(
                f64::from(bend) <= 1.5 * f64::from(clean),
                "{freq} Hz: bend {bend}"
            );
            // After the fade the real audio passes through untouched.
            assert_eq!(&played[resume + FADE_LONG..], &signal[resume + FADE_LONG..]);
        }
    }

    #[test]
    fn recovery_fade_can_span_short_frames() {
        let signal = sine(440.0, 8000, 8000.0, FRAME * 12);
        let mut plc = G711Plc::new();
        play(&mut plc, &signal[..FRAME * 10], &[]);
        let mut played = signal[..FRAME * 10].to_vec();
        let mut lost = [0i16; FRAME];
        plc.conceal(&mut lost);
        played.extend_from_slice(&lost);
        // Audio resumes in 10-sample frames: the 40-sample fade continues across them.
        for chunk in signal[FRAME * 11..].chunks(10) {
            let mut frame = chunk.to_vec();
            plc.good_frame(&mut frame);
            played.extend_from_slice(&frame);
        }
        assert!(f64::from(max_bend(&played)) <= 1.5 * f64::from(max_bend(&signal)));
        assert!(!plc.is_concealing());
        assert_eq!(
            &played[FRAME * 11 + FADE_SHORT..],
            &signal[FRAME * 11 + FADE_SHORT..]
        );
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let mut plc = G711Plc::new();
        // Loss before any audio: silence.
        let mut frame = [1i16; FRAME];
        plc.conceal(&mut frame);
        assert!(frame.iter().all(|&s| s == 0));
        plc.good_frame(&mut []);
        plc.conceal(&mut []);
        plc.good_frame(&mut [5]);
        plc.conceal(&mut [0; 7]);
        // Full-scale square wave: blends saturate instead of wrapping.
        let square: Vec<i16> = (0..FRAME * 4)
            .map(|n| if n % 40 < 20 { i16::MAX } else { i16::MIN })
            .collect();
        let mut big = square.clone();
        plc.good_frame(&mut big[..FRAME * 3]);
        plc.conceal(&mut [0; 1000]);
        plc.good_frame(&mut big[FRAME * 3..]);
        // Frames longer than the history.
        let mut long = sine(200.0, 8000, 1000.0, 2000);
        plc.good_frame(&mut long);
        plc.conceal(&mut long);
        plc.reset();
        assert!(!plc.is_concealing());
    }

    #[test]
    fn per_frame_calls_do_not_allocate() {
        let signal = sine(440.0, 8000, 8000.0, FRAME);
        let mut frame = [0i16; FRAME];
        let mut plc = G711Plc::new();
        let n = allocations_during(|| {
            for i in 0..50 {
                frame.copy_from_slice(&signal);
                if i % 3 == 2 {
                    plc.conceal(&mut frame);
                } else {
                    plc.good_frame(&mut frame);
                }
            }
        });
        assert_eq!(n, 0);
    }
}
