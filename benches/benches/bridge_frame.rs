//! The bridge's per-frame work, as one call's session task does it:
//! caller → bot: RTP payload (A-law, 20 ms) → decode → resample 8→16 kHz → chunker →
//! (every 5th frame) an Exotel `media` JSON text frame with base64 PCM;
//! bot → caller: parse a bot `media` frame into the playout queue, then per 20 ms frame
//! take it out, resample 16→8 kHz, A-law encode and write the RTP packet.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use voicegate_audio::{g711, Resampler};
use voicegate_bridge::dialect::{self, Encoder, Protocol, StreamInfo};
use voicegate_bridge::playout::{Chunker, PlayoutQueue};

fn info() -> StreamInfo {
    StreamInfo {
        stream_sid: "f7fc071a2dbdd73d730b2bd00cf1f98a".into(),
        call_sid: "0d1dd103c3af5c9efbeed088381a738d".into(),
        account_sid: "voicegate".into(),
        from: "+15550100".into(),
        to: "+15550199".into(),
        custom_parameters: vec![],
        sample_rate: 16000,
        bidirectional: true,
    }
}

fn benches(c: &mut Criterion) {
    // Caller → bot, per 20 ms RTP frame (the JSON frame is built every fifth: 100 ms chunks).
    let payload: Vec<u8> = (0..160)
        .map(|i| g711::alaw_encode(((i as f64 * 0.785).sin() * 8000.0) as i16))
        .collect();
    let mut pcm = vec![0i16; 160];
    let mut up = Resampler::new(8000, 16000, 160).unwrap();
    let mut wide = vec![0i16; 320];
    let mut chunker = Chunker::new(16000, Duration::from_millis(100));
    let mut encoder = Encoder::new(Protocol::Exotel, info());
    let mut out = String::with_capacity(8192);
    c.bench_function("bridge_caller_to_bot_per_20ms_frame", |b| {
        b.iter(|| {
            g711::decode_alaw(black_box(&payload), &mut pcm);
            let n = up.process(&pcm, &mut wide).unwrap();
            chunker.push(&wide[..n]);
            while let Some(chunk) = chunker.take_chunk() {
                encoder.media(&chunk, chunk.timestamp_ms, &mut out);
            }
            black_box(&out);
        })
    });

    // Bot → caller: a 100 ms bot frame parsed (amortised over its 5 RTP frames), then one
    // RTP packet per 20 ms.
    let bot_pcm: Vec<i16> = (0..1600)
        .map(|i| ((i as f64 * 0.39).sin() * 8000.0) as i16)
        .collect();
    let mut frame_encoder = Encoder::new(Protocol::Exotel, info());
    let mut bot_frame = String::new();
    frame_encoder.media(&bot_pcm, 0, &mut bot_frame);
    let mut parsed = Vec::with_capacity(1600);
    let mut playout = PlayoutQueue::new(16000, Duration::from_secs(60));
    let mut down = Resampler::new(16000, 8000, 320).unwrap();
    let mut frame = vec![0i16; 320];
    let mut narrow = vec![0i16; 160];
    let mut packet = Vec::with_capacity(1500);
    let mut seq: u16 = 0;
    c.bench_function("bridge_bot_to_caller_per_20ms_frame", |b| {
        b.iter(|| {
            if playout.queued_samples() < 320 {
                dialect::parse_into(Protocol::Exotel, black_box(&bot_frame), &mut parsed).unwrap();
                playout.push_audio(&parsed);
            }
            playout.next_frame(&mut frame);
            let n = down.process(&frame, &mut narrow).unwrap();
            packet.clear();
            packet.extend_from_slice(&[0x80, 8]);
            packet.extend_from_slice(&seq.to_be_bytes());
            packet.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
            packet.extend_from_slice(&0x1234_5678u32.to_be_bytes());
            let start = packet.len();
            packet.resize(start + n, 0);
            g711::encode_alaw(&narrow[..n], &mut packet[start..]);
            seq = seq.wrapping_add(1);
            black_box(&packet);
        })
    });
}

criterion_group!(all, benches);
criterion_main!(all);
