//! A seeded mutation fuzzer for stable Rust: no coverage feedback, so its reach comes from
//! good seeds (valid messages) and mutations that keep most of their structure. Same seed,
//! same inputs: a failure found once is found again.

use std::panic::{self, AssertUnwindSafe};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Byte strings that matter to the parsers: separators, escapes, numbers at their limits.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b"=",
    b"\"",
    b"\\",
    b"<",
    b">",
    b"/",
    b"%",
    b"%00",
    b"%zz",
    b"@",
    b"?",
    b"*",
    b"\0",
    b"\xff",
    b"\xc3\xa9",
    b"0",
    b"-1",
    b"65535",
    b"65536",
    b"4294967295",
    b"4294967296",
    b"18446744073709551616",
    b"Content-Length: ",
    b"l: ",
    b"Via: SIP/2.0/UDP ",
    b";branch=z9hG4bK",
    b";rport",
    b";tag=",
    b"sip:",
    b"sips:",
    b"SIP/2.0",
    b"INVITE",
    b"ACK",
    b"CANCEL",
    b"m=audio ",
    b"a=rtpmap:",
    b"c=IN IP6 ",
    b"RTP/AVP",
    b"telephone-event/8000",
    b"{",
    b"}",
    b"[",
    b"]",
    b"null",
    b"\"event\"",
    b"\"media\"",
    b"\"payload\"",
    b"nonce=",
    b"qop=auth",
    b"\xde\xad",
];

/// Mutates inputs drawn from a corpus.
pub struct Mutator {
    rng: StdRng,
}

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Mutator {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// A mutant of one corpus entry: one to four stacked mutations.
    pub fn next_input(&mut self, corpus: &[Vec<u8>]) -> Vec<u8> {
        let mut data = corpus[self.rng.gen_range(0..corpus.len())].clone();
        for _ in 0..self.rng.gen_range(1..=4) {
            self.mutate_once(&mut data, corpus);
        }
        data
    }

    fn mutate_once(&mut self, data: &mut Vec<u8>, corpus: &[Vec<u8>]) {
        let len = data.len();
        let at = |rng: &mut StdRng| rng.gen_range(0..=len);
        match self.rng.gen_range(0..9) {
            0 if len > 0 => {
                let i = self.rng.gen_range(0..len);
                data[i] ^= 1 << self.rng.gen_range(0..8);
            }
            1 if len > 0 => {
                let i = self.rng.gen_range(0..len);
                data[i] = self.rng.gen();
            }
            2 => {
                let i = at(&mut self.rng);
                let token = TOKENS[self.rng.gen_range(0..TOKENS.len())];
                data.splice(i..i, token.iter().copied());
            }
            3 if len > 0 => {
                let start = self.rng.gen_range(0..len);
                let end = (start + self.rng.gen_range(1..=16)).min(len);
                data.drain(start..end);
            }
            4 if len > 0 => {
                // Repeat a piece (a header line, a JSON field): duplicates and long values.
                let start = self.rng.gen_range(0..len);
                let end = (start + self.rng.gen_range(1..=64)).min(len);
                let piece = data[start..end].to_vec();
                for _ in 0..self.rng.gen_range(1..=8) {
                    data.splice(start..start, piece.iter().copied());
                }
            }
            5 => data.truncate(at(&mut self.rng)),
            6 => {
                // Splice in part of another seed: mixes valid structures.
                let other = &corpus[self.rng.gen_range(0..corpus.len())];
                if !other.is_empty() {
                    let start = self.rng.gen_range(0..other.len());
                    let end = (start + self.rng.gen_range(1..=128)).min(other.len());
                    let i = at(&mut self.rng);
                    data.splice(i..i, other[start..end].iter().copied());
                }
            }
            7 if len > 0 => {
                // Replace a digit run's neighbourhood with a number at a limit.
                let i = self.rng.gen_range(0..len);
                if data[i].is_ascii_digit() {
                    let token = [&b"0"[..], b"4294967296", b"99999999999999999999", b"-0"];
                    data.splice(
                        i..i + 1,
                        token[self.rng.gen_range(0..token.len())].iter().copied(),
                    );
                }
            }
            _ if len > 1 => {
                // Swap two bytes.
                let (i, j) = (self.rng.gen_range(0..len), self.rng.gen_range(0..len));
                data.swap(i, j);
            }
            _ => data.push(self.rng.gen()),
        }
    }
}

/// Runs `target` on every corpus entry, then on `iterations` mutants. On a panic, returns
/// the input that caused it and the panic message.
pub fn run(
    target: crate::targets::Target,
    corpus: &[Vec<u8>],
    seed: u64,
    iterations: u64,
) -> Result<(), (Vec<u8>, String)> {
    let attempt = |input: &[u8]| {
        panic::catch_unwind(AssertUnwindSafe(|| target(input))).map_err(|payload| {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".into());
            (input.to_vec(), message)
        })
    };
    for seed_input in corpus {
        attempt(seed_input)?;
    }
    let mut mutator = Mutator::new(seed);
    for _ in 0..iterations {
        attempt(&mutator.next_input(corpus))?;
    }
    Ok(())
}
