//! Frame-at-a-time sample-rate conversion between the telephony and wideband rates.
//!
//! A call leg delivers fixed 20 ms frames at a fixed rate pair, so this wraps rubato's
//! synchronous FFT resampler with both chunk sizes fixed: every call turns exactly one input
//! frame into exactly one output frame, with a windowed-sinc anti-aliasing filter as long as the
//! frame (no sample dropping or repetition). All buffers are allocated in [`Resampler::new`];
//! [`Resampler::process`] does not allocate.

use rubato::audioadapter_buffers::direct::SequentialSlice;
use rubato::{Fft, FixedSync, Resampler as _, WindowFunction};

use crate::AudioError;

/// Rates the resampler accepts, on either side.
pub const SUPPORTED_RATES: [u32; 4] = [8000, 16000, 24000, 48000];

/// Scale between i16 samples and the float samples rubato works on.
const SCALE: f32 = 32768.0;

/// Converts one fixed-length frame at a time from one rate to another.
pub struct Resampler {
    from_hz: u32,
    to_hz: u32,
    frame_in: usize,
    frame_out: usize,
    /// `None` when the rates are equal: frames are copied through with no delay.
    fft: Option<Fft<f32>>,
    in_buf: Vec<f32>,
    out_buf: Vec<f32>,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("from_hz", &self.from_hz)
            .field("to_hz", &self.to_hz)
            .field("frame_in", &self.frame_in)
            .field("frame_out", &self.frame_out)
            .finish_non_exhaustive()
    }
}

impl Resampler {
    /// Sets up conversion from `from_hz` to `to_hz` for input frames of `frame_samples_in`
    /// samples (mono). Both rates must be in [`SUPPORTED_RATES`]; equal rates give a copying
    /// pass-through. The frame must convert to a whole number of output samples (any 2.5 ms
    /// multiple works for every pair) and be at most one second long.
    pub fn new(from_hz: u32, to_hz: u32, frame_samples_in: usize) -> Result<Self, AudioError> {
        for rate in [from_hz, to_hz] {
            if !SUPPORTED_RATES.contains(&rate) {
                return Err(AudioError::UnsupportedSampleRate {
                    rate,
                    what: "the resampler (8000, 16000, 24000 or 48000 Hz)",
                });
            }
        }
        let refuse = |reason| AudioError::ResamplerSetup {
            from_hz,
            to_hz,
            frame: frame_samples_in,
            reason,
        };
        if frame_samples_in == 0 {
            return Err(refuse("the frame is empty"));
        }
        if frame_samples_in > from_hz as usize {
            return Err(refuse("frames longer than one second are not supported"));
        }
        let gcd = gcd(from_hz, to_hz) as usize;
        let step_in = from_hz as usize / gcd;
        if !frame_samples_in.is_multiple_of(step_in) {
            return Err(refuse(
                "the frame is not a whole number of output samples long",
            ));
        }
        let frame_out = frame_samples_in / step_in * (to_hz as usize / gcd);

        let fft = if from_hz == to_hz {
            None
        } else {
            // Blackman squared keeps the stop band far below 16-bit noise while leaving a
            // narrower transition band than rubato's default Blackman-Harris squared, so a
            // 3.4 kHz telephone-band tone survives a 16 kHz to 8 kHz conversion.
            let fft = Fft::<f32>::new_custom(
                from_hz as usize,
                to_hz as usize,
                frame_samples_in,
                1,
                1,
                WindowFunction::Blackman2,
                FixedSync::Both,
            )
            .map_err(|_| refuse("rubato rejected the parameters"))?;
            if fft.input_frames_next() != frame_samples_in || fft.output_frames_next() != frame_out
            {
                return Err(refuse("rubato chose a different chunk size"));
            }
            Some(fft)
        };
        Ok(Resampler {
            from_hz,
            to_hz,
            frame_in: frame_samples_in,
            frame_out,
            fft,
            in_buf: vec![0.0; frame_samples_in],
            out_buf: vec![0.0; frame_out],
        })
    }

    /// Input rate in Hz.
    pub fn from_hz(&self) -> u32 {
        self.from_hz
    }

    /// Output rate in Hz.
    pub fn to_hz(&self) -> u32 {
        self.to_hz
    }

    /// Samples every call to [`process`](Self::process) takes.
    pub fn input_frame_len(&self) -> usize {
        self.frame_in
    }

    /// Samples every call to [`process`](Self::process) produces.
    pub fn output_frame_len(&self) -> usize {
        self.frame_out
    }

    /// Latency in output samples: an input event shows up this many samples later in the
    /// output (half the filter length; 0 for a pass-through). Callers use it to align streams,
    /// and it is the warm-up after which the output is steady.
    pub fn delay_samples(&self) -> usize {
        self.fft.as_ref().map_or(0, |f| f.output_delay())
    }

    /// Converts one frame of exactly [`input_frame_len`](Self::input_frame_len) samples into
    /// the first [`output_frame_len`](Self::output_frame_len) samples of `out`; returns that
    /// length. A frame of another length, or a too small `out`, is an error and leaves the
    /// filter state untouched.
    pub fn process(&mut self, input: &[i16], out: &mut [i16]) -> Result<usize, AudioError> {
        if input.len() != self.frame_in {
            return Err(AudioError::FrameLength {
                expected: self.frame_in,
                got: input.len(),
            });
        }
        if out.len() < self.frame_out {
            return Err(AudioError::OutputTooSmall {
                needed: self.frame_out,
                got: out.len(),
            });
        }
        let Some(fft) = self.fft.as_mut() else {
            out[..self.frame_out].copy_from_slice(input);
            return Ok(self.frame_out);
        };
        for (f, &s) in self.in_buf.iter_mut().zip(input) {
            *f = f32::from(s) / SCALE;
        }
        // The adapters only borrow our buffers; both lengths were checked above, so these
        // constructions cannot fail, but an error is still mapped rather than unwrapped.
        let setup = |_| AudioError::FrameLength {
            expected: self.frame_in,
            got: input.len(),
        };
        let adapter_in = SequentialSlice::new(&self.in_buf[..], 1, self.frame_in).map_err(setup)?;
        let mut adapter_out =
            SequentialSlice::new_mut(&mut self.out_buf[..], 1, self.frame_out).map_err(setup)?;
        let (_, written) = fft
            .process_into_buffer(&adapter_in, &mut adapter_out, None)
            .map_err(AudioError::Resample)?;
        let written = written.min(self.frame_out);
        for (o, &f) in out[..written].iter_mut().zip(&self.out_buf) {
            *o = to_i16(f);
        }
        Ok(written)
    }

    /// Like [`process`](Self::process) but replaces the contents of `out`; the vector only
    /// allocates the first time, when its capacity is below one output frame.
    pub fn process_vec(&mut self, input: &[i16], out: &mut Vec<i16>) -> Result<(), AudioError> {
        out.clear();
        out.resize(self.frame_out, 0);
        match self.process(input, out) {
            Ok(n) => {
                out.truncate(n);
                Ok(())
            }
            Err(e) => {
                out.clear();
                Err(e)
            }
        }
    }

    /// Forgets the filter history, as for a new stream (for example after a long gap).
    pub fn reset(&mut self) {
        if let Some(fft) = self.fft.as_mut() {
            fft.reset();
        }
    }
}

fn to_i16(f: f32) -> i16 {
    // `as` saturates and maps NaN to 0, so no input can make this panic.
    (f * SCALE).round() as i16
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    /// Pushes `signal` through `r` frame by frame.
    fn run(r: &mut Resampler, signal: &[i16]) -> Vec<i16> {
        let mut out = Vec::new();
        let mut frame = vec![0i16; r.output_frame_len()];
        for chunk in signal.chunks_exact(r.input_frame_len()) {
            let n = r.process(chunk, &mut frame).unwrap();
            out.extend_from_slice(&frame[..n]);
        }
        out
    }

    /// SNR of a tone of `freq` Hz converted `from` -> `to` against the ideal tone at `to`,
    /// skipping the filter warm-up (two delays) and aligning by `delay_samples`.
    fn tone_snr(from: u32, to: u32, freq: f64) -> (f64, f64) {
        let frame = from as usize / 50;
        let mut r = Resampler::new(from, to, frame).unwrap();
        let input = sine(freq, from, 10000.0, frame * 50);
        let out = run(&mut r, &input);
        assert_eq!(out.len(), to as usize);
        let ideal = sine(freq, to, 10000.0, out.len());
        let delay = r.delay_samples();
        let len = out.len() - 3 * delay;
        let snr = snr_db(&ideal, &out, delay, delay, len);
        let measured = zero_crossing_freq(&out[2 * delay..], to);
        (snr, measured)
    }

    #[test]
    fn tone_round_trip_8k_16k_8k() {
        for tone in [1000.0, 1013.0] {
            let input = sine(tone, 8000, 10000.0, 8000);
            let mut up = Resampler::new(8000, 16000, 160).unwrap();
            let mut down = Resampler::new(16000, 8000, 320).unwrap();
            let wide = run(&mut up, &input);
            let back = run(&mut down, &wide);
            assert_eq!(back.len(), input.len());
            // Each stage delays by its own `delay_samples`, counted at its output rate.
            let delay = up.delay_samples() * 8000 / 16000 + down.delay_samples();
            assert_eq!(delay, 160);
            let snr = snr_db(&input, &back, delay, delay, input.len() - 2 * delay);
            let freq = zero_crossing_freq(&back[2 * delay..], 8000);
            println!(
                "8k->16k->8k {tone} Hz: SNR {snr:.1} dB, frequency {freq:.2} Hz, delay {delay}"
            );
            assert!(snr > 30.0, "SNR {snr}");
            assert!((freq - tone).abs() < 1.0, "frequency {freq}");
        }
    }

    #[test]
    fn tones_keep_frequency_and_snr_for_each_pair() {
        for (from, to) in [
            (8000, 16000),
            (8000, 48000),
            (16000, 8000),
            (24000, 16000),
            (48000, 8000),
            (16000, 48000),
            (48000, 24000),
        ] {
            // 1013 Hz as well: it is not a multiple of the 50 Hz frame rate, so the samples do
            // not repeat every frame and the SNR shows the real (rounding-limited) accuracy.
            for tone in [1000.0, 1013.0] {
                let (snr, freq) = tone_snr(from, to, tone);
                println!("{from} -> {to} Hz, {tone} Hz: SNR {snr:.1} dB, frequency {freq:.2} Hz");
                assert!(snr > 30.0, "{from} -> {to}: SNR {snr}");
                assert!(
                    (freq - tone).abs() < 1.0,
                    "{from} -> {to}: frequency {freq}"
                );
            }
        }
    }

    #[test]
    fn downsampling_keeps_3k5_and_removes_6k() {
        // 3.5 kHz is inside the 8 kHz passband: it must come through at level and clean.
        for tone in [3500.0, 3513.0] {
            let (snr, freq) = tone_snr(16000, 8000, tone);
            println!("16k -> 8k, {tone} Hz: SNR {snr:.1} dB, frequency {freq:.1} Hz");
            assert!(snr > 30.0, "{tone} Hz SNR {snr}");
            assert!((freq - tone).abs() < 2.0, "frequency {freq}");
        }

        // 6 kHz and 6.013 kHz (not a multiple of the frame rate) would alias to about 2 kHz;
        // the filter must take them down by at least 30 dB.
        for freq in [6000.0, 6013.0, 4400.0] {
            let mut r = Resampler::new(16000, 8000, 320).unwrap();
            let input = sine(freq, 16000, 10000.0, 16000);
            let out = run(&mut r, &input);
            let steady = &out[2 * r.delay_samples()..];
            let level = rms(steady).max(1e-3);
            let attenuation = 20.0 * (10000.0 / 2f64.sqrt() / level).log10();
            println!("16k -> 8k, {freq} Hz: attenuated by {attenuation:.1} dB");
            assert!(
                attenuation >= 30.0,
                "{freq} Hz only attenuated by {attenuation} dB"
            );
        }
    }

    #[test]
    fn equal_rates_copy_through() {
        let mut r = Resampler::new(16000, 16000, 320).unwrap();
        assert_eq!(r.delay_samples(), 0);
        let input = sine(440.0, 16000, 5000.0, 320);
        let mut out = [0i16; 320];
        assert_eq!(r.process(&input, &mut out).unwrap(), 320);
        assert_eq!(&out[..], &input[..]);
    }

    #[test]
    fn setup_errors_say_what_is_wrong() {
        let err = Resampler::new(44100, 8000, 882).unwrap_err();
        assert!(err.to_string().contains("44100"), "{err}");
        assert!(Resampler::new(8000, 16000, 0).is_err());
        // 24 kHz -> 16 kHz needs frames in multiples of 3 input samples.
        let err = Resampler::new(24000, 16000, 481).unwrap_err();
        assert!(err.to_string().contains("whole number"), "{err}");
        assert!(Resampler::new(8000, 16000, 8001).is_err());
        for from in SUPPORTED_RATES {
            for to in SUPPORTED_RATES {
                for ms in [10, 20, 30, 60] {
                    let frame = from as usize * ms / 1000;
                    let r = Resampler::new(from, to, frame).unwrap();
                    assert_eq!(r.output_frame_len(), to as usize * ms / 1000);
                }
            }
        }
    }

    #[test]
    fn wrong_frames_are_errors_not_panics() {
        let mut r = Resampler::new(8000, 16000, 160).unwrap();
        let mut out = [0i16; 320];
        assert!(matches!(
            r.process(&[0; 159], &mut out),
            Err(AudioError::FrameLength {
                expected: 160,
                got: 159
            })
        ));
        assert!(r.process(&[], &mut out).is_err());
        assert!(matches!(
            r.process(&[0; 160], &mut out[..319]),
            Err(AudioError::OutputTooSmall {
                needed: 320,
                got: 319
            })
        ));
        // Extreme input saturates instead of wrapping.
        let square: Vec<i16> = (0..160)
            .map(|n| if n % 16 < 8 { i16::MAX } else { i16::MIN })
            .collect();
        for _ in 0..5 {
            assert_eq!(r.process(&square, &mut out).unwrap(), 320);
        }
        let mut v = Vec::new();
        r.process_vec(&[1; 160], &mut v).unwrap();
        assert_eq!(v.len(), 320);
        assert!(r.process_vec(&[1; 3], &mut v).is_err());
        assert!(v.is_empty());
    }

    #[test]
    fn reset_clears_history() {
        let mut r = Resampler::new(8000, 16000, 160).unwrap();
        let mut out = [0i16; 320];
        r.process(&sine(1000.0, 8000, 10000.0, 160), &mut out)
            .unwrap();
        r.reset();
        r.process(&[0; 160], &mut out).unwrap();
        assert!(out.iter().all(|&s| s == 0));
    }

    #[test]
    fn per_frame_processing_does_not_allocate() {
        let mut r = Resampler::new(8000, 16000, 160).unwrap();
        let input = sine(1000.0, 8000, 10000.0, 160);
        let mut out = [0i16; 320];
        let mut v = Vec::with_capacity(320);
        r.process(&input, &mut out).unwrap();
        let n = allocations_during(|| {
            for _ in 0..50 {
                r.process(&input, &mut out).unwrap();
                r.process_vec(&input, &mut v).unwrap();
            }
        });
        assert_eq!(n, 0);
    }
}
