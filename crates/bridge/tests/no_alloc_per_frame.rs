//! Once a call is up, the per-frame media work of a bot session allocates nothing: checked by
//! counting allocations around 1,000 frames each way (the bot's way also with a playout ring
//! grown by a bot far ahead), and 1,000 tap frames of the listen-only stream after a hand-off
//! (after a warm-up). Each chunk for the bot becomes an owned text frame, taken to be sent and
//! dropped by the writer before the next is built; the queue to the writer and the socket are
//! outside what is counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use voicegate_audio::{g711, Resampler};
use voicegate_bridge::dialect::{self, Encoder, Protocol, StreamInfo};
use voicegate_bridge::playout::{Chunker, PlayoutQueue};
use voicegate_bridge::tap::{TapFrame, Track, TAP_FRAME_SAMPLES};
use voicegate_bridge::ws::TextFrames;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counted(f: impl FnOnce()) -> usize {
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    f();
    COUNTING.store(false, Ordering::SeqCst);
    ALLOCATIONS.load(Ordering::SeqCst)
}

fn info() -> StreamInfo {
    StreamInfo {
        stream_sid: "s".into(),
        call_sid: "c".into(),
        account_sid: "a".into(),
        from: "+15550100".into(),
        to: "+15550199".into(),
        custom_parameters: vec![],
        sample_rate: 16000,
        bidirectional: true,
    }
}

#[test]
fn per_frame_media_work_does_not_allocate() {
    // The counter does see allocations (so a zero below means something).
    assert!(counted(|| drop(std::hint::black_box(Vec::<u8>::with_capacity(64)))) >= 1);
    // Caller → bot.
    let payload: Vec<u8> = (0..160)
        .map(|i| g711::alaw_encode(((i as f64 * 0.785).sin() * 8000.0) as i16))
        .collect();
    let mut pcm = vec![0i16; 160];
    let mut up = Resampler::new(8000, 16000, 160).unwrap();
    let mut wide = vec![0i16; 320];
    let mut chunker = Chunker::new(16000, Duration::from_millis(100));
    let mut encoder = Encoder::new(Protocol::Exotel, info());
    let mut out = String::with_capacity(8192);
    let mut text_frames = TextFrames::new();
    let mut caller_frame = || {
        g711::decode_alaw(&payload, &mut pcm);
        let n = up.process(&pcm, &mut wide).unwrap();
        chunker.push(&wide[..n]);
        while let Some(chunk) = chunker.take_chunk() {
            encoder.media(&chunk, chunk.timestamp_ms, &mut out);
            drop(text_frames.frame(&out));
        }
    };
    for _ in 0..50 {
        caller_frame();
    }
    assert_eq!(
        counted(|| (0..1000).for_each(|_| caller_frame())),
        0,
        "caller → bot allocates"
    );

    // Bot → caller.
    let mut bot_frame = String::new();
    Encoder::new(Protocol::Exotel, info()).media(&vec![1000i16; 1600], 0, &mut bot_frame);
    let mut parsed = Vec::with_capacity(1600);
    let mut playout = PlayoutQueue::new(16000, Duration::from_secs(60));
    let mut down = Resampler::new(16000, 8000, 320).unwrap();
    let (mut frame, mut narrow, mut packet) =
        (vec![0i16; 320], vec![0i16; 160], Vec::with_capacity(1500));
    let mut bot_to_caller = || {
        if playout.queued_samples() < 320 {
            dialect::parse_into(Protocol::Exotel, &bot_frame, &mut parsed).unwrap();
            playout.push_audio(&parsed);
        }
        playout.next_frame(&mut frame);
        let n = down.process(&frame, &mut narrow).unwrap();
        packet.clear();
        packet.extend_from_slice(&[0x80, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let start = packet.len();
        packet.resize(start + n, 0);
        g711::encode_alaw(&narrow[..n], &mut packet[start..]);
    };
    for _ in 0..50 {
        bot_to_caller();
    }
    assert_eq!(
        counted(|| (0..1000).for_each(|_| bot_to_caller())),
        0,
        "bot → caller allocates"
    );

    // Bot → caller with the bot 10 s ahead: getting there grew the playout ring (not counted);
    // keeping that much queued, the ring wrapping round, allocates nothing.
    let mut ahead = PlayoutQueue::new(16000, Duration::from_secs(60));
    let initial = ahead.allocated_samples();
    dialect::parse_into(Protocol::Exotel, &bot_frame, &mut parsed).unwrap();
    for _ in 0..100 {
        ahead.push_audio(&parsed);
    }
    assert!(ahead.allocated_samples() > initial);
    let mut frames = 0u32;
    let mut ahead_frame = || {
        frames += 1;
        if frames.is_multiple_of(5) {
            dialect::parse_into(Protocol::Exotel, &bot_frame, &mut parsed).unwrap();
            ahead.push_audio(&parsed);
        }
        ahead.next_frame(&mut frame);
    };
    for _ in 0..50 {
        ahead_frame();
    }
    assert_eq!(
        counted(|| (0..1000).for_each(|_| ahead_frame())),
        0,
        "bot → caller with a grown playout ring allocates"
    );
    assert_eq!(ahead.queued_samples(), 160_000);
    assert!(ahead.stats().samples_played > ahead.allocated_samples() as u64);

    // Listen-only after a hand-off: tap frames of both parties, each track resampled and
    // chunked on its own.
    let mut encoder = Encoder::new(Protocol::Exotel, info());
    let mut feeds = [Track::Inbound, Track::Outbound].map(|track| {
        (
            track,
            Resampler::new(8000, 16000, TAP_FRAME_SAMPLES).unwrap(),
            vec![0i16; 320],
            Chunker::new(16000, Duration::from_millis(100)),
        )
    });
    let mut samples = [0i16; TAP_FRAME_SAMPLES];
    for (i, s) in samples.iter_mut().enumerate() {
        *s = ((i as f64 * 0.314).sin() * 6000.0) as i16;
    }
    let mut n = 0usize;
    let mut tap_frame = || {
        n += 1;
        let (track, resampler, pcm, chunker) = &mut feeds[n % 2];
        let frame = TapFrame {
            track: *track,
            samples,
        };
        let len = resampler.process(&frame.samples, pcm).unwrap();
        chunker.push(&pcm[..len]);
        while let Some(chunk) = chunker.take_chunk() {
            encoder.track_media(frame.track, &chunk, chunk.timestamp_ms, &mut out);
            drop(text_frames.frame(&out));
        }
    };
    for _ in 0..50 {
        tap_frame();
    }
    assert_eq!(
        counted(|| (0..1000).for_each(|_| tap_frame())),
        0,
        "listen-only tap → bot allocates"
    );
}
