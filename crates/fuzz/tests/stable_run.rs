//! Every fuzz target, run on stable: its seeds (valid inputs of its kind, the RFC 4475 torture
//! messages for SIP), then seeded mutants of them. A panic or a broken property fails the test
//! with the input that caused it.
//!
//! `FUZZ_ITERATIONS` (mutants per target, default 2000) and `FUZZ_SEED` (default 1) make a
//! longer or different run, e.g. `FUZZ_ITERATIONS=200000 cargo test -p voicegate-fuzz --release`.

use std::path::Path;
use std::time::Instant;

use voicegate_fuzz::{mutate, targets};
use voicegate_rtp::rtcp::{self, ReportBlock};

const DEFAULT_ITERATIONS: u64 = 2000;

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn torture_messages() -> Vec<Vec<u8>> {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/sip-torture"
    ));
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("tests/sip-torture readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "dat"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 49, "the RFC 4475 torture messages");
    names.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

const OFFER: &str = "v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\ns=-\r\n\
c=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n\
a=sendrecv\r\n";

fn invite() -> String {
    format!(
        "INVITE sip:echo@192.0.2.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\nTo: <sip:echo@192.0.2.1>\r\nFrom: \"Alice\" <sip:alice@192.0.2.10>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@192.0.2.10\r\nCSeq: 314159 INVITE\r\nContact: <sip:alice@192.0.2.10:5060>\r\n\
Accept: application/sdp, */*;q=0.1\r\nSupported: timer\r\nSession-Expires: 1800;refresher=uac\r\n\
Route: <sip:proxy.example.com;lr>, <sip:192.0.2.1;lr>\r\nAuthorization: {}\r\n\
Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{OFFER}",
        targets::valid_authorization(),
        OFFER.len()
    )
}

fn sip_seeds() -> Vec<Vec<u8>> {
    let mut seeds = torture_messages();
    seeds.push(invite().into_bytes());
    seeds.push(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx;received=192.0.2.9;rport=5070\r\n\
To: <sip:b@example.com>;tag=a\r\nFrom: <sip:a@example.com>;tag=b\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n"
            .to_vec(),
    );
    seeds
}

fn stream_seeds() -> Vec<Vec<u8>> {
    let messages = sip_seeds();
    let mut seeds = Vec::new();
    for pair in messages.windows(2) {
        let mut stream = b"\r\n\r\n".to_vec();
        stream.extend_from_slice(&pair[0]);
        stream.extend_from_slice(b"\r\n");
        stream.extend_from_slice(&pair[1]);
        seeds.push(stream);
    }
    seeds
}

fn sdp_seeds() -> Vec<Vec<u8>> {
    vec![
        OFFER.into(),
        "v=0\r\no=- 1 1 IN IP6 2001:db8::1\r\ns=-\r\nc=IN IP6 2001:db8::1\r\nt=0 0\r\n\
m=audio 5004 RTP/AVP 111 0\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1\r\n\
a=rtcp-mux\r\na=rtcp:5005\r\na=sendonly\r\nm=video 0 RTP/AVP 31\r\n"
            .into(),
        "v=0\no=- 0 0 IN IP4 0.0.0.0\ns=hold\nc=IN IP4 0.0.0.0\nb=AS:64\nt=0 0\n\
m=audio 9 RTP/SAVP 8\na=inactive\nm=audio 4000 RTP/AVP 18 0\na=rtpmap:18 G729/8000\n"
            .into(),
    ]
}

fn rtp_packet(pt: u8, marker: bool, extra_header: &[u8], payload: &[u8]) -> Vec<u8> {
    let csrc_count = (extra_header.len() / 4).min(15) as u8;
    let mut p = vec![
        0x80 | csrc_count,
        pt | if marker { 0x80 } else { 0 },
        0x12,
        0x34,
    ];
    p.extend_from_slice(&160u32.to_be_bytes());
    p.extend_from_slice(&0xdead_beefu32.to_be_bytes());
    p.extend_from_slice(extra_header);
    p.extend_from_slice(payload);
    p
}

fn rtp_seeds() -> Vec<Vec<u8>> {
    let mut with_extension = rtp_packet(0, false, &[], &[0xbe, 0xde, 0, 1, 1, 2, 3, 4, 0xff]);
    with_extension[0] |= 0x10;
    let mut padded = rtp_packet(8, false, &[], &[0xd5; 8]);
    padded[0] |= 0x20;
    padded.extend_from_slice(&[0, 0, 3]);
    vec![
        rtp_packet(0, false, &[], &[0xff; 160]),
        rtp_packet(101, true, &[], &[5, 0x0a, 0, 160]),
        rtp_packet(101, false, &[], &[5, 0x8a, 3, 0x20]),
        rtp_packet(0, false, &[0, 0, 0, 1, 0, 0, 0, 2], &[0x7f; 20]),
        with_extension,
        padded,
    ]
}

fn rtcp_seeds() -> Vec<Vec<u8>> {
    let block = ReportBlock {
        ssrc: 0x1234_5678,
        fraction_lost: 12,
        cumulative_lost: -3,
        extended_highest_seq: 0x0001_0010,
        jitter: 80,
        last_sr: 0xabcd_ef01,
        delay_since_last_sr: 65536,
    };
    let mut sr = Vec::new();
    rtcp::write_sender_report(
        &mut sr,
        1,
        0x1122_3344_5566_7788,
        160,
        10,
        1600,
        &[block],
        "a@h",
    );
    let mut rr = Vec::new();
    rtcp::write_receiver_report(&mut rr, 2, &[block, block], "voicegate");
    let mut bye = Vec::new();
    rtcp::write_bye(&mut bye, 3, Some("call ended"));
    let mut compound = rr.clone();
    compound.extend_from_slice(&bye);
    vec![sr, rr, bye, compound]
}

fn dtmf_seeds() -> Vec<Vec<u8>> {
    // Two-byte timestamp, then a 4-byte event payload (event, E|R|volume, duration).
    let key_press = |event: u8| -> Vec<u8> {
        [
            [0, 1, event, 10, 0, 160],
            [0, 1, event, 10, 1, 64],
            [0, 1, event, 0x8a, 3, 32],
        ]
        .concat()
    };
    vec![
        key_press(5),
        [key_press(1), key_press(11), key_press(16)].concat(),
        b"Signal=5\r\nDuration=160\r\n".to_vec(),
        b"Signal= #\nDuration=99999999999\n".to_vec(),
        b"5".to_vec(),
    ]
}

fn digest_seeds() -> Vec<Vec<u8>> {
    vec![
        targets::valid_authorization().into_bytes(),
        b"Digest realm=\"voicegate\", nonce=\"abc\", algorithm=SHA-256, qop=\"auth,auth-int\", opaque=\"x\", stale=true".to_vec(),
        b"Digest username=\"a\\\"b\", realm=voicegate, nonce=\"n\", uri=\"sip:x\", response=\"0123\", nc=00000001, cnonce=\"c\", qop=auth".to_vec(),
        b"NoOneKnowsThisScheme opaque-data=here".to_vec(),
    ]
}

fn bot_seeds() -> Vec<Vec<u8>> {
    [
        r#"{"event":"media","stream_sid":"s1","sequence_number":"3","media":{"chunk":"1","timestamp":"20","payload":"AAABAAIA"}}"#,
        r#"{"event":"media","streamSid":"MZ1","media":{"payload":"/39/fw=="}}"#,
        r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"greeting"}}"#,
        r#"{"event":"clear","stream_sid":"s1"}"#,
        r#"{"event":"transfer","transfer":{"to":"sip:agent@example.com"}}"#,
        r#"{"event":"hangup"}"#,
        r#"{"event":"something-new","sequence_number":7,"extra":[1,2,{"a":null}]}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "sip_message" => sip_seeds(),
        "sip_stream" => stream_seeds(),
        "sdp" => sdp_seeds(),
        "rtp" => rtp_seeds(),
        "rtcp" => rtcp_seeds(),
        "dtmf" => dtmf_seeds(),
        "digest" => digest_seeds(),
        "bot_dialect" => bot_seeds(),
        other => panic!("no seeds for target {other}"),
    }
}

#[test]
fn every_target_survives_its_seeds_and_their_mutants() {
    let iterations = env_number("FUZZ_ITERATIONS", DEFAULT_ITERATIONS);
    let seed = env_number("FUZZ_SEED", 1);
    let started = Instant::now();
    let mut failures = Vec::new();
    for (name, target) in targets::ALL {
        let corpus = seeds(name);
        let target_started = Instant::now();
        if let Err((input, message)) = mutate::run(*target, &corpus, seed, iterations) {
            failures.push(format!(
                "{name} (FUZZ_SEED={seed}): {message}\n  input: b\"{}\"",
                input.escape_ascii()
            ));
        }
        println!(
            "{name}: {} seeds + {iterations} mutants in {:?}",
            corpus.len(),
            target_started.elapsed()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Reported, not asserted: a timed test fails on a loaded machine, not on a slow parser.
    println!("stable fuzz run: {:?}", started.elapsed());
}

/// The mutator is deterministic: a failure report's seed reproduces its inputs.
#[test]
fn the_same_seed_gives_the_same_inputs() {
    let corpus = sip_seeds();
    let draw = |seed| {
        let mut mutator = mutate::Mutator::new(seed);
        (0..50)
            .map(|_| mutator.next_input(&corpus))
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(7), draw(7));
    assert_ne!(draw(7), draw(8));
}

/// The run does report a panic, with the input that caused it.
#[test]
fn a_panicking_target_is_reported_with_its_input() {
    fn panics_on_a_nul(data: &[u8]) {
        assert!(!data.contains(&0), "NUL");
    }
    let corpus = vec![b"no nul here".to_vec()];
    let (input, message) =
        mutate::run(panics_on_a_nul, &corpus, 1, 100_000).expect_err("some mutant contains a NUL");
    assert!(input.contains(&0));
    assert!(message.contains("NUL"), "{message}");
}

/// Without coverage feedback the mutants only reach past the first checks if most of their
/// structure survives: a good share of SIP mutants still parse, and many do not.
#[test]
fn sip_mutants_are_a_mix_of_parseable_and_broken() {
    let corpus = sip_seeds();
    let mut mutator = mutate::Mutator::new(1);
    let total = 2000;
    let parsed = (0..total)
        .filter(|_| voicegate_sip::message::parse(&mutator.next_input(&corpus)).is_ok())
        .count();
    println!("{parsed} of {total} SIP mutants parse");
    assert!(
        (total / 10..total * 9 / 10).contains(&parsed),
        "{parsed} of {total} parse"
    );
}
