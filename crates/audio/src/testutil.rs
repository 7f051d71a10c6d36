//! Signal helpers shared by the unit tests: tone generation and the measurements the tests
//! assert on (SNR after alignment, Goertzel power, zero-crossing frequency).

use std::f64::consts::PI;

/// `len` samples of a sine of `freq` Hz at `rate` Hz with peak `amplitude`.
pub fn sine(freq: f64, rate: u32, amplitude: f64, len: usize) -> Vec<i16> {
    (0..len)
        .map(|n| (amplitude * (2.0 * PI * freq * n as f64 / f64::from(rate)).sin()).round() as i16)
        .collect()
}

/// SNR in dB of `output` against `reference`, with `output` lagging by `delay` samples, over
/// reference samples `skip..skip + len`.
pub fn snr_db(reference: &[i16], output: &[i16], delay: usize, skip: usize, len: usize) -> f64 {
    let mut signal = 0.0;
    let mut noise = 0.0;
    for n in skip..skip + len {
        let r = f64::from(reference[n]);
        let o = f64::from(output[n + delay]);
        signal += r * r;
        noise += (o - r) * (o - r);
    }
    if noise == 0.0 {
        return f64::INFINITY; // bit-exact
    }
    10.0 * (signal / noise).log10()
}

/// The lag in `lags` at which `output` best matches `reference` (by SNR), and that SNR.
pub fn best_alignment(
    reference: &[i16],
    output: &[i16],
    lags: std::ops::Range<usize>,
    skip: usize,
    len: usize,
) -> (usize, f64) {
    lags.map(|lag| (lag, snr_db(reference, output, lag, skip, len)))
        .fold((0, f64::NEG_INFINITY), |best, cur| {
            if cur.1 > best.1 {
                cur
            } else {
                best
            }
        })
}

/// Power of `freq` in `samples` (Goertzel), normalised so a full sine of amplitude A gives A²/4.
pub fn goertzel_power(samples: &[i16], freq: f64, rate: u32) -> f64 {
    let w = 2.0 * PI * freq / f64::from(rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    power / (samples.len() as f64).powi(2)
}

/// Frequency estimated from the rising zero crossings of `samples`.
pub fn zero_crossing_freq(samples: &[i16], rate: u32) -> f64 {
    let crossings: Vec<usize> = samples
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0] < 0 && w[1] >= 0)
        .map(|(i, _)| i)
        .collect();
    if crossings.len() < 2 {
        return 0.0;
    }
    let periods = (crossings.len() - 1) as f64;
    let span = (crossings[crossings.len() - 1] - crossings[0]) as f64;
    periods * f64::from(rate) / span
}

/// RMS of `samples`.
pub fn rms(samples: &[i16]) -> f64 {
    let sum: f64 = samples.iter().map(|&s| f64::from(s).powi(2)).sum();
    (sum / samples.len().max(1) as f64).sqrt()
}

/// Counts heap allocations per thread, so a test can check that per-frame work allocates
/// nothing (tests run on parallel threads, hence the thread-local count).
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        pub static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    }

    pub struct Counting;

    // SAFETY: defers to the system allocator; only bumps a thread-local counter on the side.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;
}

/// Heap allocations made on this thread while `f` runs.
pub fn allocations_during(f: impl FnOnce()) -> usize {
    let before = counting::ALLOCATIONS.with(|c| c.get());
    f();
    counting::ALLOCATIONS.with(|c| c.get()) - before
}
