//! L16: 16-bit linear PCM in network byte order (RFC 3551 section 4.5.11), the payload format
//! for uncompressed audio on RTP and the simplest one to hand to a WebSocket peer.

/// Decodes big-endian sample pairs from `input` into `out`; returns the number of samples
/// written. A trailing odd byte (a truncated sample) is ignored rather than guessed at.
pub fn decode(input: &[u8], out: &mut [i16]) -> usize {
    let n = (input.len() / 2).min(out.len());
    for (o, pair) in out[..n].iter_mut().zip(input.chunks_exact(2)) {
        *o = i16::from_be_bytes([pair[0], pair[1]]);
    }
    n
}

/// Encodes samples as big-endian byte pairs into `out`; returns the number of bytes written
/// (always even: a sample that does not fit whole is not written).
pub fn encode(input: &[i16], out: &mut [u8]) -> usize {
    let n = input.len().min(out.len() / 2);
    for (pair, &s) in out[..2 * n].chunks_exact_mut(2).zip(&input[..n]) {
        pair.copy_from_slice(&s.to_be_bytes());
    }
    2 * n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_endian_on_the_wire() {
        let mut bytes = [0u8; 6];
        assert_eq!(encode(&[0x0102, -2, i16::MIN], &mut bytes), 6);
        assert_eq!(bytes, [0x01, 0x02, 0xFF, 0xFE, 0x80, 0x00]);
        let mut samples = [0i16; 3];
        assert_eq!(decode(&bytes, &mut samples), 3);
        assert_eq!(samples, [0x0102, -2, i16::MIN]);
    }

    #[test]
    fn odd_lengths_and_short_buffers_truncate() {
        let mut samples = [7i16; 4];
        assert_eq!(decode(&[0, 1, 0, 2, 9], &mut samples), 2);
        assert_eq!(samples, [1, 2, 7, 7]);
        assert_eq!(decode(&[], &mut samples), 0);
        assert_eq!(decode(&[1, 2, 3, 4], &mut samples[..1]), 1);

        let mut bytes = [0u8; 5];
        assert_eq!(encode(&[1, 2, 3], &mut bytes), 4);
        assert_eq!(bytes, [0, 1, 0, 2, 0]);
        assert_eq!(encode(&[1], &mut bytes[..1]), 0);
    }

    #[test]
    fn every_value_round_trips() {
        let all: Vec<i16> = (i16::MIN..=i16::MAX).collect();
        let mut bytes = vec![0u8; all.len() * 2];
        let mut back = vec![0i16; all.len()];
        assert_eq!(encode(&all, &mut bytes), bytes.len());
        assert_eq!(decode(&bytes, &mut back), all.len());
        assert_eq!(back, all);
    }
}
