//! G.711 A-law (PCMA) and mu-law (PCMU) companding per ITU-T G.711.
//!
//! Samples are 16-bit linear PCM; G.711 itself works on 13-bit (A-law) or 14-bit (mu-law)
//! magnitudes, so the low bits of the input are simply dropped when encoding and decoding yields
//! the centre of each quantisation cell scaled back to 16 bits. Decoding goes through 256-entry
//! tables built at compile time because it runs on every received sample; encoding is a few
//! integer operations and needs no table.

/// Bits toggled on every A-law code word (G.711 inverts the even bits on the line).
const ALAW_TOGGLE: u8 = 0x55;
/// Bias added to the 14-bit mu-law magnitude so that segment boundaries fall on powers of two.
const ULAW_BIAS: i32 = 33;
/// Largest biased 14-bit mu-law magnitude (top of segment 7).
const ULAW_MAX_BIASED: i32 = 0x1FFF;

/// Encodes one 16-bit linear sample as an A-law code word.
pub const fn alaw_encode(sample: i16) -> u8 {
    // Negative samples use the one's complement so that -1..-8 share the cell of +0..+7 mirrored,
    // exactly as the 13-bit two's-complement input of G.711 would; it also keeps i16::MIN in range.
    let (sign, linear) = if sample >= 0 {
        (0x80u8, sample as i32)
    } else {
        (0x00u8, !(sample as i32))
    };
    let magnitude = linear >> 3; // 12-bit magnitude, 0..=4095
    let code = if magnitude < 32 {
        // Segment 0 has the same step as segment 1; its code is the mantissa alone.
        (magnitude >> 1) as u8
    } else {
        let segment = highest_bit(magnitude) - 4; // 1..=7
        let mantissa = (magnitude >> segment) & 0x0F;
        ((segment as u8) << 4) | mantissa as u8
    };
    (sign | code) ^ ALAW_TOGGLE
}

/// Decodes one A-law code word to 16-bit linear PCM (the centre of its quantisation cell).
#[inline]
pub fn alaw_decode(code: u8) -> i16 {
    ALAW_TABLE[code as usize]
}

/// Encodes one 16-bit linear sample as a mu-law code word.
pub const fn ulaw_encode(sample: i16) -> u8 {
    let (sign, linear) = if sample >= 0 {
        (0x00u8, sample as i32)
    } else {
        (0x80u8, !(sample as i32))
    };
    let mut biased = (linear >> 2) + ULAW_BIAS; // 14-bit magnitude plus bias, >= 33
    if biased > ULAW_MAX_BIASED {
        biased = ULAW_MAX_BIASED;
    }
    let segment = highest_bit(biased) - 5; // 0..=7
    let mantissa = (biased >> (segment + 1)) & 0x0F;
    !(sign | ((segment as u8) << 4) | mantissa as u8)
}

/// Decodes one mu-law code word to 16-bit linear PCM (the centre of its quantisation cell).
#[inline]
pub fn ulaw_decode(code: u8) -> i16 {
    ULAW_TABLE[code as usize]
}

/// Decodes A-law bytes into `out`; returns how many samples were written
/// (the shorter of the two lengths).
pub fn decode_alaw(input: &[u8], out: &mut [i16]) -> usize {
    let n = input.len().min(out.len());
    for (o, &c) in out[..n].iter_mut().zip(&input[..n]) {
        *o = ALAW_TABLE[c as usize];
    }
    n
}

/// Encodes samples into A-law bytes in `out`; returns how many bytes were written
/// (the shorter of the two lengths).
pub fn encode_alaw(input: &[i16], out: &mut [u8]) -> usize {
    let n = input.len().min(out.len());
    for (o, &s) in out[..n].iter_mut().zip(&input[..n]) {
        *o = alaw_encode(s);
    }
    n
}

/// Decodes mu-law bytes into `out`; returns how many samples were written
/// (the shorter of the two lengths).
pub fn decode_ulaw(input: &[u8], out: &mut [i16]) -> usize {
    let n = input.len().min(out.len());
    for (o, &c) in out[..n].iter_mut().zip(&input[..n]) {
        *o = ULAW_TABLE[c as usize];
    }
    n
}

/// Encodes samples into mu-law bytes in `out`; returns how many bytes were written
/// (the shorter of the two lengths).
pub fn encode_ulaw(input: &[i16], out: &mut [u8]) -> usize {
    let n = input.len().min(out.len());
    for (o, &s) in out[..n].iter_mut().zip(&input[..n]) {
        *o = ulaw_encode(s);
    }
    n
}

/// Index of the highest set bit of a positive value (0 for 1).
const fn highest_bit(value: i32) -> i32 {
    31 - value.leading_zeros() as i32
}

const fn alaw_decode_slow(code: u8) -> i16 {
    let c = code ^ ALAW_TOGGLE;
    let segment = ((c >> 4) & 0x07) as i32;
    let mantissa = (c & 0x0F) as i32;
    // Centre of the cell in the 12-bit magnitude domain.
    let magnitude = if segment == 0 {
        (mantissa << 1) + 1
    } else {
        ((mantissa << 1) + 33) << (segment - 1)
    };
    let linear = magnitude << 3;
    if c & 0x80 != 0 {
        linear as i16
    } else {
        -linear as i16
    }
}

const fn ulaw_decode_slow(code: u8) -> i16 {
    let c = !code;
    let segment = ((c >> 4) & 0x07) as i32;
    let mantissa = (c & 0x0F) as i32;
    let linear = ((((mantissa << 1) + 33) << segment) - ULAW_BIAS) << 2;
    if c & 0x80 != 0 {
        -linear as i16
    } else {
        linear as i16
    }
}

const fn build_alaw_table() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = alaw_decode_slow(i as u8);
        i += 1;
    }
    table
}

const fn build_ulaw_table() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = ulaw_decode_slow(i as u8);
        i += 1;
    }
    table
}

static ALAW_TABLE: [i16; 256] = build_alaw_table();
static ULAW_TABLE: [i16; 256] = build_ulaw_table();

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{allocations_during, sine, snr_db};

    #[test]
    fn known_code_words() {
        // The two smallest A-law magnitudes: 0xD5 is +8 and 0x55 is -8 (even bits inverted).
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(alaw_encode(-1), 0x55);
        assert_eq!(alaw_decode(0xAA), 32256); // largest positive
        assert_eq!(alaw_decode(0x2A), -32256);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
        // mu-law: 0xFF and 0x7F are +0 and -0; 0x80 and 0x00 the extremes.
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        // A few mid-range values from the G.711 segment tables.
        assert_eq!(ulaw_decode(0xFE), 8); // +1 step in segment 0
        assert_eq!(ulaw_decode(0xEF), 132); // segment 1 starts at 33 << 2 = 132 after bias
        assert_eq!(alaw_decode(0xC5), 264); // segment 1 mantissa 0: 33 << 3
    }

    #[test]
    fn every_code_word_survives_decode_then_encode() {
        for code in 0..=255u8 {
            assert_eq!(alaw_encode(alaw_decode(code)), code, "A-law {code:#04x}");
            // mu-law's negative zero (0x7F) decodes to 0, which encodes as positive zero,
            // as in the ITU-T G.191 reference; every other code is exact.
            let expected = if code == 0x7F { 0xFF } else { code };
            assert_eq!(
                ulaw_encode(ulaw_decode(code)),
                expected,
                "mu-law {code:#04x}"
            );
        }
    }

    #[test]
    fn decode_tables_are_odd_and_monotonic() {
        let mut alaw: Vec<i16> = (0..=255).map(alaw_decode).collect();
        let mut ulaw: Vec<i16> = (0..=255).map(ulaw_decode).collect();
        for code in 0..=255u8 {
            assert_eq!(alaw_decode(code), -alaw_decode(code ^ 0x80));
            assert_eq!(ulaw_decode(code), -ulaw_decode(code ^ 0x80));
        }
        alaw.sort_unstable();
        alaw.dedup();
        ulaw.sort_unstable();
        ulaw.dedup();
        assert_eq!(alaw.len(), 256, "A-law levels are distinct");
        assert_eq!(
            ulaw.len(),
            255,
            "mu-law levels are distinct except the two zeros"
        );
    }

    /// Largest error each law allows at `x`: half a quantisation step of the segment `x` falls
    /// in, plus the extra the top segment's clipping adds.
    fn alaw_bound(x: i32) -> i32 {
        // Segment 0 and 1 steps are 16 in 16-bit units; the step doubles per segment above.
        let m = if x >= 0 { x } else { -x - 1 } >> 3;
        let seg = if m < 32 {
            1
        } else {
            31 - (m as u32).leading_zeros() as i32 - 4
        };
        (8 << (seg - 1)) + if m >= 4032 { 511 - 256 } else { 0 }
    }

    fn ulaw_bound(x: i32) -> i32 {
        let m = (if x >= 0 { x } else { -x - 1 } >> 2) + 33;
        let seg = 31 - (m.min(0x1FFF) as u32).leading_zeros() as i32 - 5;
        (4 << seg)
            + if m > 0x1FFF {
                x.abs() - 32124 - (4 << seg)
            } else {
                0
            }
    }

    #[test]
    fn round_trip_error_stays_within_half_a_step() {
        let mut worst_alaw_rel = 0.0f64;
        let mut worst_ulaw_rel = 0.0f64;
        for x in i16::MIN..=i16::MAX {
            let xi = i32::from(x);
            let ea = (i32::from(alaw_decode(alaw_encode(x))) - xi).abs();
            let eu = (i32::from(ulaw_decode(ulaw_encode(x))) - xi).abs();
            assert!(ea <= alaw_bound(xi), "A-law {x}: error {ea}");
            assert!(eu <= ulaw_bound(xi), "mu-law {x}: error {eu}");
            if xi.abs() >= 1024 && xi.abs() <= 32000 {
                worst_alaw_rel = worst_alaw_rel.max(f64::from(ea) / f64::from(xi.abs()));
                worst_ulaw_rel = worst_ulaw_rel.max(f64::from(eu) / f64::from(xi.abs()));
            }
        }
        println!("G.711 worst relative error 1024..32000: A-law {worst_alaw_rel:.4}, mu-law {worst_ulaw_rel:.4}");
        // Logarithmic companding: relative error about 3 % at worst (a little more at mu-law segment starts) over the loud range.
        assert!(
            worst_alaw_rel < 0.035,
            "A-law relative error {worst_alaw_rel}"
        );
        assert!(
            worst_ulaw_rel < 0.035,
            "mu-law relative error {worst_ulaw_rel}"
        );
    }

    #[test]
    fn sine_snr_matches_g711_quality() {
        // A -6 dBFS tone (1013 Hz so the samples do not repeat every few periods): G.711 gives roughly 38 dB SNR over most of its range.
        let tone = sine(1013.0, 8000, 16000.0, 8000);
        let mut bytes = vec![0u8; tone.len()];
        let mut back = vec![0i16; tone.len()];
        encode_alaw(&tone, &mut bytes);
        decode_alaw(&bytes, &mut back);
        let snr_a = snr_db(&tone, &back, 0, 0, tone.len());
        encode_ulaw(&tone, &mut bytes);
        decode_ulaw(&bytes, &mut back);
        let snr_u = snr_db(&tone, &back, 0, 0, tone.len());
        println!("G.711 1013 Hz -6 dBFS: A-law SNR {snr_a:.1} dB, mu-law SNR {snr_u:.1} dB");
        assert!(snr_a > 35.0 && snr_u > 35.0);
    }

    #[test]
    fn slice_helpers_use_the_shorter_length() {
        let mut out = [0i16; 3];
        assert_eq!(decode_alaw(&[0xD5; 5], &mut out), 3);
        assert_eq!(out, [8; 3]);
        assert_eq!(decode_ulaw(&[0xFF, 0x80], &mut out), 2);
        assert_eq!(out, [0, 32124, 8]);
        assert_eq!(decode_alaw(&[], &mut out), 0);
        let mut bytes = [0u8; 2];
        assert_eq!(encode_alaw(&[0, 0, 0], &mut bytes), 2);
        assert_eq!(bytes, [0xD5, 0xD5]);
        assert_eq!(encode_ulaw(&[0], &mut bytes), 1);
        assert_eq!(bytes, [0xFF, 0xD5]);
        assert_eq!(encode_ulaw(&[], &mut bytes), 0);
    }

    #[test]
    fn per_frame_coding_does_not_allocate() {
        let frame = sine(440.0, 8000, 12000.0, 160);
        let mut bytes = [0u8; 160];
        let mut pcm = [0i16; 160];
        let n = allocations_during(|| {
            for _ in 0..50 {
                encode_alaw(&frame, &mut bytes);
                decode_alaw(&bytes, &mut pcm);
                encode_ulaw(&frame, &mut bytes);
                decode_ulaw(&bytes, &mut pcm);
            }
        });
        assert_eq!(n, 0);
    }
}
