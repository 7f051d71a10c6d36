//! Per-20 ms-frame media costs of a G.711 <-> 16 kHz bridge leg and of Opus: what one call
//! spends per packet in each direction, to size how many calls a core carries.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use rtp_rs::RtpReader;
use voicegate_audio::opus::MAX_PACKET_BYTES;
use voicegate_audio::{g711, OpusDecoder, OpusEncoder, Resampler};

/// One second of a 440 Hz tone at `rate`, at about -12 dBFS.
fn tone(rate: u32) -> Vec<i16> {
    (0..rate)
        .map(|n| {
            let t = f64::from(n) / f64::from(rate);
            (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
        })
        .collect()
}

/// A 172-byte RTP packet: 12-byte header, payload type 8 (PCMA), 160 A-law bytes of a tone.
fn pcma_packet() -> Vec<u8> {
    let mut packet = vec![
        0x80u8, 8, 0x12, 0x34, 0, 0, 0x0f, 0xa0, 0xde, 0xad, 0xbe, 0xef,
    ];
    let mut payload = [0u8; 160];
    g711::encode_alaw(&tone(8000)[..160], &mut payload);
    packet.extend_from_slice(&payload);
    packet
}

fn benches(c: &mut Criterion) {
    // (a) Receive: parse RTP, A-law decode 160 samples, resample 8 -> 16 kHz (320 samples).
    let packet = pcma_packet();
    assert_eq!(packet.len(), 172);
    let mut pcm8 = [0i16; 160];
    let mut pcm16 = [0i16; 320];
    let mut up = Resampler::new(8000, 16000, 160).unwrap();
    c.bench_function("rx_20ms_rtp_parse_alaw_decode_resample_8k_to_16k", |b| {
        b.iter(|| {
            let rtp = RtpReader::new(black_box(&packet)).unwrap();
            let n = g711::decode_alaw(rtp.payload(), &mut pcm8);
            up.process(&pcm8[..n], &mut pcm16).unwrap();
            black_box(&pcm16);
        })
    });

    // (b) Send: resample 320 samples 16 -> 8 kHz, A-law encode, write header and payload into
    // a reused packet buffer.
    let wide = tone(16000);
    let mut down = Resampler::new(16000, 8000, 320).unwrap();
    let mut out_packet = [0u8; 172];
    let (mut seq, mut timestamp) = (0u16, 0u32);
    let ssrc = 0x1234_5678u32;
    c.bench_function("tx_20ms_resample_16k_to_8k_alaw_encode_rtp_write", |b| {
        b.iter(|| {
            down.process(black_box(&wide[..320]), &mut pcm8).unwrap();
            out_packet[0] = 0x80;
            out_packet[1] = 8;
            out_packet[2..4].copy_from_slice(&seq.to_be_bytes());
            out_packet[4..8].copy_from_slice(&timestamp.to_be_bytes());
            out_packet[8..12].copy_from_slice(&ssrc.to_be_bytes());
            let n = g711::encode_alaw(&pcm8, &mut out_packet[12..]);
            seq = seq.wrapping_add(1);
            timestamp = timestamp.wrapping_add(160);
            black_box(&out_packet[..12 + n]);
        })
    });

    // The pieces on their own, to see where the time goes.
    c.bench_function("alaw_decode_160", |b| {
        b.iter(|| g711::decode_alaw(black_box(&packet[12..]), &mut pcm8))
    });
    c.bench_function("resample_8k_to_16k_20ms", |b| {
        b.iter(|| up.process(black_box(&pcm8), &mut pcm16).unwrap())
    });

    // Opus, 20 ms mono at 48 kHz: encode cycles through a second of tone, decode through the
    // packets it produced (so the decoder sees a real stream).
    let full = tone(48000);
    let mut encoder = OpusEncoder::new(48000, 10).unwrap();
    let mut encoded = [0u8; MAX_PACKET_BYTES];
    let mut frames = full.chunks_exact(960).cycle();
    c.bench_function("opus_encode_20ms_48k", |b| {
        b.iter(|| {
            let frame = frames.next().unwrap();
            encoder.encode(black_box(frame), &mut encoded).unwrap()
        })
    });

    // The same at complexity 5, the cheaper setting a loaded gateway might choose.
    let mut cheap = OpusEncoder::new(48000, 10).unwrap();
    cheap.set_complexity(5).unwrap();
    c.bench_function("opus_encode_20ms_48k_complexity5", |b| {
        b.iter(|| {
            let frame = frames.next().unwrap();
            cheap.encode(black_box(frame), &mut encoded).unwrap()
        })
    });

    let mut encoder = OpusEncoder::new(48000, 10).unwrap();
    let packets: Vec<Vec<u8>> = full
        .chunks_exact(960)
        .map(|frame| {
            let n = encoder.encode(frame, &mut encoded).unwrap();
            encoded[..n].to_vec()
        })
        .collect();
    let mut decoder = OpusDecoder::new(48000).unwrap();
    let mut decoded = [0i16; 960];
    let mut stream = packets.iter().cycle();
    c.bench_function("opus_decode_20ms_48k", |b| {
        b.iter(|| {
            let packet = stream.next().unwrap();
            decoder.decode(black_box(packet), &mut decoded).unwrap()
        })
    });
}

criterion_group!(all, benches);
criterion_main!(all);
