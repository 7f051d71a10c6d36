//! Per-packet cost of the B2BUA relay's sans-IO step ([`Forward`]), as the relay task does it
//! for every RTP packet (parse the header, then transform): a same-codec pass-through (header
//! rewritten in place), the same with a tap decoding the audio for a listening bot, A-law →
//! Opus and Opus → A-law transcoding of 20 ms packets. Sockets are not included.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use voicegate_audio::{g711, OpusEncoder};
use voicegate_bridge::relay::{CallMedia, Codec, Forward, Forwarded, RtpHeader};
use voicegate_bridge::tap::Track;
use voicegate_rtp::latch::LatchPolicy;

fn media(codec: Codec, payload_type: u8, ssrc: u32) -> CallMedia {
    CallMedia {
        codec,
        payload_type,
        telephone_event: Some(101),
        signalled: Some("192.0.2.10:40000".parse().unwrap()),
        latching: LatchPolicy::Auto,
        ssrc,
        rtp_timeout: std::time::Duration::from_secs(30),
    }
}

/// 20 ms of a 440 Hz tone at `rate`, about -12 dBFS, starting at sample `from`.
fn tone(rate: u32, from: usize) -> Vec<i16> {
    (from..from + rate as usize / 50)
        .map(|n| {
            let t = n as f64 / f64::from(rate);
            (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
        })
        .collect()
}

fn packet(pt: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt, 0, 0, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
    p.extend_from_slice(payload);
    p
}

/// One iteration: the packet as received (fresh sequence number and timestamp), parsed and
/// forwarded.
fn bench_forward(
    c: &mut Criterion,
    name: &str,
    mut forward: Forward,
    template: Vec<u8>,
    step: u32,
) {
    let mut buf = template.clone();
    let mut i: u32 = 0;
    c.bench_function(name, |b| {
        b.iter(|| {
            buf.copy_from_slice(&template);
            buf[2..4].copy_from_slice(&(i as u16).to_be_bytes());
            buf[4..8].copy_from_slice(&i.wrapping_mul(step).to_be_bytes());
            i = i.wrapping_add(1);
            let header = RtpHeader::parse(black_box(&buf)).unwrap();
            let out = forward.process(&header, &mut buf);
            debug_assert_ne!(out, Forwarded::Nothing);
            black_box((out, &buf, forward.tap_frames().len()));
        })
    });
}

fn benches(c: &mut Criterion) {
    let mut alaw = [0u8; 160];
    g711::encode_alaw(&tone(8000, 0), &mut alaw);
    let pcma = packet(8, &alaw);

    let pass = Forward::new(&media(Codec::Pcma, 8, 1), &media(Codec::Pcma, 8, 2), None).unwrap();
    bench_forward(
        c,
        "relay_passthrough_pcma_per_packet",
        pass,
        pcma.clone(),
        160,
    );

    let tapped = Forward::new(
        &media(Codec::Pcma, 8, 1),
        &media(Codec::Pcma, 8, 2),
        Some(Track::Inbound),
    )
    .unwrap();
    bench_forward(
        c,
        "relay_passthrough_pcma_tapped_per_packet",
        tapped,
        pcma.clone(),
        160,
    );

    let to_opus =
        Forward::new(&media(Codec::Pcma, 8, 1), &media(Codec::Opus, 111, 2), None).unwrap();
    bench_forward(
        c,
        "relay_transcode_pcma_to_opus_per_packet",
        to_opus,
        pcma,
        160,
    );

    // A real 20 ms Opus packet (48 kHz tone) from the far leg.
    let mut encoder = OpusEncoder::new(48000, 5).unwrap();
    let mut opus = vec![0u8; 4000];
    let n = encoder.encode(&tone(48000, 0), &mut opus).unwrap();
    let from_opus =
        Forward::new(&media(Codec::Opus, 111, 1), &media(Codec::Pcma, 8, 2), None).unwrap();
    bench_forward(
        c,
        "relay_transcode_opus_to_pcma_per_packet",
        from_opus,
        packet(111, &opus[..n]),
        960,
    );
}

criterion_group!(all, benches);
criterion_main!(all);
