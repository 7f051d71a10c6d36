//! What the caller side and the bot side share while calls run: when each marked packet left
//! its sender (so the receiver can tell the added latency), the counters of frames sent and
//! delivered each way, and the latency histograms. All lock-free: every call's tasks write
//! their own slot's entries.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use crate::marker::Marker;

/// Send times kept per slot and direction: 256 packets (5 s at 50 packets/s).
const RING: usize = 256;
/// Histogram buckets of 10 µs, up to 500 ms; beyond counts in the last one.
const BUCKET_US: u64 = 10;
const BUCKETS: usize = 50_000;
/// Latencies from here on share the last bucket.
pub const MAX_LATENCY_US: u64 = BUCKET_US * (BUCKETS as u64 - 1);

/// One entry: µs since the board's start (46 bits), whether it opens a bot frame (1 bit), the
/// packet's sequence number (16 bits). Zero means unset.
fn entry(at_us: u64, first: bool, seq: u16) -> u64 {
    (at_us + 1) << 17 | u64::from(first) << 16 | u64::from(seq)
}

fn parse(entry: u64) -> Option<(u64, bool, u16)> {
    (entry != 0).then(|| ((entry >> 17) - 1, entry >> 16 & 1 == 1, entry as u16))
}

struct SlotTimes {
    /// Caller → voicegate: when each packet was sent.
    up: [AtomicU64; RING],
    /// Bot → voicegate: when the frame carrying each packet's marker was sent (counted ones).
    down: [AtomicU64; RING],
}

/// A latency histogram.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn record(&self, us: u64) {
        let i = ((us / BUCKET_US) as usize).min(BUCKETS - 1);
        self.buckets[i].fetch_add(1, Relaxed);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// The `q` quantile (0..=1) in µs: the upper edge of its bucket.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Relaxed);
            if seen >= rank {
                return Some((i as u64 + 1) * BUCKET_US);
            }
        }
        None
    }
}

/// Frames (20 ms packets) counted each way.
#[derive(Default)]
pub struct Counters {
    /// Marked packets the callers sent.
    pub up_sent: AtomicU64,
    /// Distinct marked packets the bot received.
    pub up_delivered: AtomicU64,
    /// Marked packets the bot echoed while counting.
    pub down_sent: AtomicU64,
    /// Distinct echoed marked packets the callers received.
    pub down_delivered: AtomicU64,
    /// Bot frames or RTP packets whose markers were not at packet boundaries.
    pub unaligned: AtomicU64,
    /// Bot frames that were not JSON media as expected.
    pub bot_bad_frames: AtomicU64,
    /// WebSocket connections the bot has open.
    pub bot_open: AtomicU64,
}

/// Shared by every call of one run.
pub struct Board {
    start: Instant,
    slots: Box<[SlotTimes]>,
    pub counters: Counters,
    /// RTP in → WebSocket frame out, beyond the frame window.
    pub up_latency: Histogram,
    /// WebSocket frame in → its first RTP packet out.
    pub down_latency: Histogram,
    /// Set when the callers stop sending: later frames neither count as sent nor give latency.
    stopped: AtomicBool,
}

impl Board {
    pub fn new(slots: usize) -> Self {
        let times = || SlotTimes {
            up: std::array::from_fn(|_| AtomicU64::new(0)),
            down: std::array::from_fn(|_| AtomicU64::new(0)),
        };
        Board {
            start: Instant::now(),
            slots: (0..slots).map(|_| times()).collect(),
            counters: Counters::default(),
            up_latency: Histogram::new(),
            down_latency: Histogram::new(),
            stopped: AtomicBool::new(false),
        }
    }

    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    pub fn stop(&self) {
        self.stopped.store(true, Relaxed);
    }

    pub fn stopped(&self) -> bool {
        self.stopped.load(Relaxed)
    }

    fn slot(&self, m: Marker) -> Option<&SlotTimes> {
        self.slots.get(usize::from(m.slot))
    }

    /// A caller sent `m` just now.
    pub fn caller_sent(&self, m: Marker) {
        if let Some(s) = self.slot(m) {
            let at = self.now_us();
            s.up[usize::from(m.seq) % RING].store(entry(at, false, m.seq), Relaxed);
            self.counters.up_sent.fetch_add(1, Relaxed);
        }
    }

    /// The bot received a frame whose last marker is `last`: its latency beyond the frame.
    pub fn bot_received_frame(&self, last: Marker) {
        if self.stopped() {
            return;
        }
        let Some(s) = self.slot(last) else { return };
        if let Some((at, _, seq)) = parse(s.up[usize::from(last.seq) % RING].load(Relaxed)) {
            if seq == last.seq {
                self.up_latency.record(self.now_us().saturating_sub(at));
            }
        }
    }

    /// The bot echoed `m` just now, in a frame it opens when `first`. False (not counted)
    /// once the callers stopped.
    pub fn bot_sent(&self, m: Marker, first: bool) -> bool {
        if self.stopped() {
            return false;
        }
        let Some(s) = self.slot(m) else { return false };
        let at = self.now_us();
        s.down[usize::from(m.seq) % RING].store(entry(at, first, m.seq), Relaxed);
        self.counters.down_sent.fetch_add(1, Relaxed);
        true
    }

    /// A caller received `m`, echoed by the bot; `new` when its slot had not seen it before.
    pub fn caller_received(&self, m: Marker, new: bool) {
        let Some(s) = self.slot(m) else { return };
        let Some((at, first, seq)) = parse(s.down[usize::from(m.seq) % RING].load(Relaxed)) else {
            return;
        };
        if seq != m.seq {
            return;
        }
        if new {
            self.counters.down_delivered.fetch_add(1, Relaxed);
        }
        if first && new {
            self.down_latency.record(self.now_us().saturating_sub(at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_zero_is_unset() {
        assert_eq!(parse(entry(0, true, 7)), Some((0, true, 7)));
        assert_eq!(
            parse(entry(123_456_789, false, 65_535)),
            Some((123_456_789, false, 65_535))
        );
        assert_eq!(parse(0), None);
    }

    #[test]
    fn quantiles_come_from_the_buckets() {
        let h = Histogram::new();
        for us in 0..100 {
            h.record(us * 100);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile_us(0.5), Some(4_910));
        assert_eq!(h.quantile_us(0.99), Some(9_810));
    }

    #[test]
    fn an_echo_counts_once_and_only_if_the_bot_counted_it() {
        let board = Board::new(2);
        let m = Marker { slot: 1, seq: 5 };
        board.caller_received(m, true);
        assert_eq!(board.counters.down_delivered.load(Relaxed), 0);
        assert!(board.bot_sent(m, true));
        board.caller_received(m, true);
        board.caller_received(m, false);
        assert_eq!(board.counters.down_delivered.load(Relaxed), 1);
        assert_eq!(board.down_latency.count(), 1);
        board.stop();
        assert!(!board.bot_sent(Marker { slot: 1, seq: 6 }, true));
    }
}
