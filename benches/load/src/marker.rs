//! What each 20 ms caller packet carries so both ends can tell which call and which packet it
//! is, whatever G.711 or L16 conversion voicegate does on the way: a sync pattern, then the
//! call's slot, the packet's sequence number and a check byte, one sign per bit.
//!
//! Signs and rough magnitudes survive A-law, mu-law and 16-bit PCM at 8 kHz, so a marker
//! written into a PCMA packet reads back from the bot's slin or mu-law payload, and from the
//! echoed RTP, without the bench knowing which transcoding happened.

/// Samples in one 20 ms packet at 8 kHz.
pub const PACKET_SAMPLES: usize = 160;

const SYNC_LEVEL: i16 = 16_000;
const BIT_LEVEL: i16 = 8_000;
const SYNC: [i16; 8] = [1, 1, -1, -1, 1, 1, -1, -1];
const BITS: usize = 40;
/// Samples a marker takes at the start of its packet; the rest is silence.
pub const MARKER_SAMPLES: usize = SYNC.len() + BITS;

/// Which call (slot) and which of its packets (seq).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub slot: u16,
    pub seq: u16,
}

fn check_byte(m: Marker) -> u8 {
    let [a, b] = m.slot.to_be_bytes();
    let [c, d] = m.seq.to_be_bytes();
    a ^ b.rotate_left(1) ^ c.rotate_left(2) ^ d.rotate_left(3) ^ 0xA5
}

fn bits(m: Marker) -> u64 {
    (u64::from(m.slot) << 24) | (u64::from(m.seq) << 8) | u64::from(check_byte(m))
}

/// Writes `marker` into the first [`MARKER_SAMPLES`] of `out` and silence after it.
pub fn write(marker: Marker, out: &mut [i16; PACKET_SAMPLES]) {
    out.fill(0);
    for (o, s) in out.iter_mut().zip(SYNC) {
        *o = s * SYNC_LEVEL;
    }
    let value = bits(marker);
    for i in 0..BITS {
        let one = value >> (BITS - 1 - i) & 1 == 1;
        out[SYNC.len() + i] = if one { BIT_LEVEL } else { -BIT_LEVEL };
    }
}

/// Reads a marker from the start of `samples` (at least [`MARKER_SAMPLES`] of them, each
/// given by `sample(i)`), if one is there and its check byte matches.
pub fn read(len: usize, sample: impl Fn(usize) -> i16) -> Option<Marker> {
    if len < MARKER_SAMPLES {
        return None;
    }
    for (i, s) in SYNC.iter().enumerate() {
        let x = i32::from(sample(i));
        if x * i32::from(*s) < i32::from(SYNC_LEVEL) * 3 / 4 {
            return None;
        }
    }
    let mut value = 0u64;
    for i in 0..BITS {
        let x = sample(SYNC.len() + i);
        if x.unsigned_abs() < BIT_LEVEL as u16 / 2 {
            return None;
        }
        value = value << 1 | u64::from(x > 0);
    }
    let marker = Marker {
        slot: (value >> 24) as u16,
        seq: (value >> 8) as u16,
    };
    (check_byte(marker) == value as u8).then_some(marker)
}

/// Every marker in `len` samples, looked for at packet boundaries first; when none is found
/// there (audio not aligned to packets), at every sample. Calls `found` for each; true when
/// markers were found only off the packet boundaries.
pub fn scan(len: usize, sample: impl Fn(usize) -> i16, mut found: impl FnMut(Marker)) -> bool {
    let mut any = false;
    let mut at = 0;
    while at + MARKER_SAMPLES <= len {
        if let Some(m) = read(len - at, |i| sample(at + i)) {
            found(m);
            any = true;
        }
        at += PACKET_SAMPLES;
    }
    if any {
        return false;
    }
    let mut at = 0;
    while at + MARKER_SAMPLES <= len {
        if let Some(m) = read(len - at, |i| sample(at + i)) {
            found(m);
            any = true;
            at += MARKER_SAMPLES;
        } else {
            at += 1;
        }
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;
    use voicegate_audio::g711;

    fn packet(m: Marker) -> [i16; PACKET_SAMPLES] {
        let mut out = [0; PACKET_SAMPLES];
        write(m, &mut out);
        out
    }

    #[test]
    fn a_marker_reads_back_through_alaw_and_then_ulaw() {
        let m = Marker {
            slot: 999,
            seq: 65_000,
        };
        let mut alaw = [0u8; PACKET_SAMPLES];
        g711::encode_alaw(&packet(m), &mut alaw);
        let mut linear = [0i16; PACKET_SAMPLES];
        g711::decode_alaw(&alaw, &mut linear);
        assert_eq!(read(PACKET_SAMPLES, |i| linear[i]), Some(m));
        let mut ulaw = [0u8; PACKET_SAMPLES];
        g711::encode_ulaw(&linear, &mut ulaw);
        assert_eq!(
            read(PACKET_SAMPLES, |i| g711::ulaw_decode(ulaw[i])),
            Some(m)
        );
    }

    #[test]
    fn silence_and_a_damaged_marker_read_as_none() {
        assert_eq!(read(PACKET_SAMPLES, |_| 0), None);
        let mut p = packet(Marker { slot: 1, seq: 2 });
        p[20] = -p[20];
        assert_eq!(read(PACKET_SAMPLES, |i| p[i]), None);
    }

    #[test]
    fn scan_finds_aligned_and_shifted_markers() {
        let mut audio = Vec::new();
        for seq in 0..5 {
            audio.extend_from_slice(&packet(Marker { slot: 7, seq }));
        }
        let mut seen = Vec::new();
        assert!(!scan(audio.len(), |i| audio[i], |m| seen.push(m.seq)));
        assert_eq!(seen, [0, 1, 2, 3, 4]);

        let shifted: Vec<i16> = std::iter::repeat_n(0, 37).chain(audio).collect();
        let mut seen = Vec::new();
        assert!(scan(shifted.len(), |i| shifted[i], |m| seen.push(m.seq)));
        assert_eq!(seen, [0, 1, 2, 3, 4]);
    }
}
