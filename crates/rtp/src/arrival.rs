//! In-order release of an incoming RTP stream for a consumer with no playout clock of its own
//! (a bot reading a WebSocket): each packet goes out as soon as every packet before it has.
//!
//! A playout jitter buffer delays every packet by its depth so that a loudspeaker never runs
//! dry. A bot has no loudspeaker: it buffers what it reads, so that
//! delay is pure latency. Here a clean network adds none:
//!
//! * the next packet in sequence is released on arrival, and the ones buffered behind it;
//! * a missing packet is waited for at most [`ArrivalConfig::reorder_wait`] after a later one
//!   arrived, then released as [`Release::Missing`] (the consumer conceals it);
//! * a silence gap in the sender's timestamps (DTX) is released as [`Release::Silence`] frames
//!   before the packet that ends it;
//! * a sender that stops (hold, loss of every packet, before its first packet) is filled with
//!   one [`Release::Silence`] frame per frame interval, starting [`ArrivalConfig::fill_after`]
//!   after its last frame, so the consumer's timeline goes on in real time.
//!
//! Sans-I/O and allocation-free after [`ArrivalBuffer::new`]: the caller pushes each packet
//! with its arrival time, drains [`ArrivalBuffer::pop`] until `None`, and wakes at
//! [`ArrivalBuffer::next_deadline`] to drain again.

use std::time::Duration;

use tokio::time::Instant;

/// Settings of one [`ArrivalBuffer`].
#[derive(Debug, Clone)]
pub struct ArrivalConfig {
    /// RTP clock rate of the stream (8000 for G.711, 48000 for Opus).
    pub clock_rate: u32,
    /// Samples (timestamp units) per frame: 160 is 20 ms at 8 kHz.
    pub frame_samples: u32,
    /// How long a missing packet is waited for once a later one has arrived.
    pub reorder_wait: Duration,
    /// How long after the last frame's interval a silent sender starts being filled.
    pub fill_after: Duration,
    /// Packet slots: also the largest sequence jump kept (a larger one restarts the stream).
    pub capacity: usize,
    /// Largest payload kept; larger ones are refused.
    pub max_payload: usize,
}

impl Default for ArrivalConfig {
    fn default() -> Self {
        ArrivalConfig {
            clock_rate: 8000,
            frame_samples: 160,
            reorder_wait: Duration::from_millis(40),
            // Long enough that a stall of the host (under load) is not taken for a silent
            // sender: its late packets then all go on, after the silence, and the consumer's
            // timeline would run ahead of the sender's by it.
            fill_after: Duration::from_millis(200),
            // 320 ms of 20 ms packets: far beyond what the reorder wait keeps.
            capacity: 16,
            max_payload: 1500,
        }
    }
}

/// What [`ArrivalBuffer::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Accepted,
    /// Already buffered.
    Duplicate,
    /// Its turn has passed (released, or released as missing); dropped.
    Late,
    /// Payload over `max_payload`; dropped.
    TooLarge,
    /// The sequence jumped beyond the buffer: it was emptied and starts over with this packet.
    Reset,
}

/// One frame interval's worth of the stream, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release<'a> {
    Frame {
        seq: u16,
        timestamp: u32,
        payload: &'a [u8],
    },
    /// Packet `seq` was lost (or came later than [`ArrivalConfig::reorder_wait`]): conceal it.
    Missing { seq: u16 },
    /// No packet belongs here (DTX, a pause, nothing received yet): play silence.
    Silence,
}

/// Counters of one [`ArrivalBuffer`], for the call record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArrivalStats {
    pub received: u64,
    pub released: u64,
    pub duplicates: u64,
    /// Packets whose turn had passed (released as missing, or from before a restart).
    pub late: u64,
    pub too_large: u64,
    /// Packets that arrived after one with a higher sequence number.
    pub reordered: u64,
    /// Packets released as [`Release::Missing`].
    pub concealed: u64,
    /// Silence frames released for DTX gaps and silent senders.
    pub silence: u64,
    /// Restarts on a new SSRC or a sequence jump beyond the capacity.
    pub resets: u64,
}

#[derive(Clone)]
struct Slot {
    seq: u16,
    timestamp: u32,
    at: Instant,
    len: usize,
    present: bool,
}

/// Most silence frames released for one DTX gap at once (the rest was filled in real time).
const MAX_GAP_FRAMES: u32 = 50;
/// Most silence frames released at once for intervals gone by (a second); beyond, after a
/// stall of the whole process, the fill skips ahead.
const MAX_FILL_CATCH_UP: u32 = 50;

/// See the [module documentation](self).
pub struct ArrivalBuffer {
    config: ArrivalConfig,
    frame: Duration,
    slots: Box<[Slot]>,
    data: Box<[u8]>,
    ssrc: Option<u32>,
    /// The next sequence number to release; None before the first packet (or a restart).
    next_seq: Option<u16>,
    /// The timestamp the next frame interval starts at.
    next_ts: u32,
    /// Silence frames still to release before the packet at `next_seq` (a DTX gap).
    gap_frames: u32,
    /// Where the next frame interval starts in arrival time: when the last frame was released,
    /// moved on one frame per silence frame.
    expected_at: Instant,
    /// How long after an interval's end silence stands in for it: `fill_after` after a
    /// packet, `reorder_wait` once silence is going out (so a returning sender's packet is not
    /// beaten to its interval), zero to flush.
    fill_lag: Duration,
    /// Highest sequence number pushed so far, for counting reordering.
    highest: Option<u16>,
    stats: ArrivalStats,
}

impl ArrivalBuffer {
    /// An empty buffer; until the first packet, silence stands in for every frame interval from
    /// `now` on (each `reorder_wait` after its end).
    pub fn new(config: ArrivalConfig, now: Instant) -> Self {
        let capacity = config.capacity.max(2);
        let frame = Duration::from_micros(
            u64::from(config.frame_samples) * 1_000_000 / u64::from(config.clock_rate.max(1)),
        );
        ArrivalBuffer {
            frame,
            slots: vec![
                Slot {
                    seq: 0,
                    timestamp: 0,
                    at: now,
                    len: 0,
                    present: false,
                };
                capacity
            ]
            .into_boxed_slice(),
            data: vec![0; capacity * config.max_payload].into_boxed_slice(),
            ssrc: None,
            next_seq: None,
            next_ts: 0,
            gap_frames: 0,
            // No sender yet to wait for: silence from the first frame interval on.
            expected_at: now,
            fill_lag: config.reorder_wait,
            highest: None,
            stats: ArrivalStats::default(),
            config,
        }
    }

    pub fn stats(&self) -> ArrivalStats {
        self.stats
    }

    /// Takes the stream's SSRC; a new one restarts the buffer (true then).
    pub fn set_ssrc(&mut self, ssrc: u32) -> bool {
        let changed = self.ssrc.is_some_and(|old| old != ssrc);
        self.ssrc = Some(ssrc);
        if changed {
            self.restart();
        }
        changed
    }

    fn restart(&mut self) {
        for slot in self.slots.iter_mut() {
            slot.present = false;
        }
        self.next_seq = None;
        self.gap_frames = 0;
        self.highest = None;
        self.stats.resets += 1;
    }

    fn index(&self, seq: u16) -> usize {
        usize::from(seq) % self.slots.len()
    }

    /// Buffers a packet that arrived at `now`.
    pub fn push(&mut self, seq: u16, timestamp: u32, payload: &[u8], now: Instant) -> PushOutcome {
        self.stats.received += 1;
        if payload.len() > self.config.max_payload {
            self.stats.too_large += 1;
            return PushOutcome::TooLarge;
        }
        let mut outcome = PushOutcome::Accepted;
        let next = match self.next_seq {
            Some(next) => next,
            None => {
                self.next_seq = Some(seq);
                self.next_ts = timestamp;
                seq
            }
        };
        let ahead = seq.wrapping_sub(next) as i16;
        if ahead < 0 {
            if ahead < -(self.slots.len() as i16) {
                // Far behind: another sequence, not a straggler.
                self.restart();
                self.next_seq = Some(seq);
                self.next_ts = timestamp;
                outcome = PushOutcome::Reset;
            } else {
                self.stats.late += 1;
                return PushOutcome::Late;
            }
        } else if ahead as usize >= self.slots.len() {
            self.restart();
            self.next_seq = Some(seq);
            self.next_ts = timestamp;
            outcome = PushOutcome::Reset;
        }
        let index = self.index(seq);
        let slot = &mut self.slots[index];
        if slot.present && slot.seq == seq {
            self.stats.duplicates += 1;
            return PushOutcome::Duplicate;
        }
        match self.highest {
            Some(high) if (seq.wrapping_sub(high) as i16) < 0 => self.stats.reordered += 1,
            _ => self.highest = Some(seq),
        }
        *slot = Slot {
            seq,
            timestamp,
            at: now,
            len: payload.len(),
            present: true,
        };
        let start = index * self.config.max_payload;
        self.data[start..start + payload.len()].copy_from_slice(payload);
        outcome
    }

    /// The first packet buffered after `next` (which is missing), if any.
    fn first_after(&self, next: u16) -> Option<&Slot> {
        (1..self.slots.len() as u16)
            .map(|d| &self.slots[self.index(next.wrapping_add(d))])
            .find(|s| s.present && s.seq.wrapping_sub(next) < self.slots.len() as u16)
    }

    /// The next frame to release at `now`, if one is due; call until `None`.
    pub fn pop(&mut self, now: Instant) -> Option<Release<'_>> {
        let fs = self.config.frame_samples;
        if let Some(next) = self.next_seq {
            let index = self.index(next);
            let Slot {
                seq,
                timestamp,
                len,
                present,
                ..
            } = self.slots[index];
            if present && seq == next {
                if self.gap_frames == 0 {
                    let ahead = timestamp.wrapping_sub(self.next_ts) as i32;
                    if ahead >= fs as i32 {
                        // A DTX gap: its silence goes first (what was filled in real time
                        // already moved `next_ts` on).
                        self.gap_frames = (ahead as u32 / fs).min(MAX_GAP_FRAMES);
                    }
                }
                if self.gap_frames > 0 {
                    self.gap_frames -= 1;
                    self.next_ts = if self.gap_frames == 0 {
                        timestamp
                    } else {
                        self.next_ts.wrapping_add(fs)
                    };
                    self.stats.silence += 1;
                    return Some(Release::Silence);
                }
                self.slots[index].present = false;
                self.next_seq = Some(next.wrapping_add(1));
                // A packet the fill already covered leaves the timeline where the fill left it.
                let end = timestamp.wrapping_add(fs);
                if end.wrapping_sub(self.next_ts) as i32 > 0 {
                    self.next_ts = end;
                }
                self.expected_at = now;
                self.fill_lag = self.config.fill_after;
                self.stats.released += 1;
                let start = index * self.config.max_payload;
                return Some(Release::Frame {
                    seq,
                    timestamp,
                    payload: &self.data[start..start + len],
                });
            }
            let later = self.first_after(next).map(|s| (s.at, s.seq, s.timestamp));
            if let Some((at, later_seq, later_ts)) = later {
                if now < at + self.config.reorder_wait {
                    return None;
                }
                // Its interval: where the later packet's timestamp puts it.
                let behind = u32::from(later_seq.wrapping_sub(next));
                let expected_ts = later_ts.wrapping_sub(behind * fs);
                self.next_seq = Some(next.wrapping_add(1));
                self.stats.concealed += 1;
                if (expected_ts.wrapping_sub(self.next_ts) as i32) < 0 {
                    // The fill already played silence for its interval: nothing to add.
                    return self.pop(now);
                }
                self.next_ts = expected_ts.wrapping_add(fs);
                self.expected_at = now;
                self.fill_lag = self.config.fill_after;
                return Some(Release::Missing { seq: next });
            }
        }
        if now >= self.fill_due() {
            // Silence from here on, for every interval gone by (the first fill after a packet
            // covers `fill_after` at once), up to a cap after a stall of the whole process.
            self.fill_lag = self.fill_lag.min(self.config.reorder_wait);
            let most = self.frame * MAX_FILL_CATCH_UP;
            if now.saturating_duration_since(self.expected_at) > most {
                self.expected_at = now.checked_sub(most).unwrap_or(now);
            }
            self.expected_at += self.frame;
            if self.next_seq.is_some() {
                self.next_ts = self.next_ts.wrapping_add(fs);
            }
            self.stats.silence += 1;
            return Some(Release::Silence);
        }
        None
    }

    /// When silence is due for the next interval (if no packet comes for it).
    fn fill_due(&self) -> Instant {
        self.expected_at + self.frame + self.fill_lag
    }

    /// From now on every interval gone by is released as silence without waiting: for the end
    /// of the stream, so the consumer gets its whole length.
    pub fn flush(&mut self) {
        self.fill_lag = Duration::ZERO;
    }

    /// When [`ArrivalBuffer::pop`] may next have something without a new packet: a missing
    /// packet's wait ending, or the next silence frame for a silent sender.
    pub fn next_deadline(&self) -> Instant {
        if let Some(next) = self.next_seq {
            let slot = &self.slots[self.index(next)];
            if slot.present && slot.seq == next {
                return slot.at;
            }
            if let Some(later) = self.first_after(next) {
                return (later.at + self.config.reorder_wait).min(self.fill_due());
            }
        }
        self.fill_due()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// The default buffer, but filling 60 ms after a frame went missing (short for the tests).
    fn buffer(start: Instant) -> ArrivalBuffer {
        let config = ArrivalConfig {
            fill_after: Duration::from_millis(60),
            ..ArrivalConfig::default()
        };
        ArrivalBuffer::new(config, start)
    }

    /// Everything due at `now`, as (kind, seq) pairs: 'F' frame, 'M' missing, 'S' silence.
    fn drain(b: &mut ArrivalBuffer, now: Instant) -> Vec<(char, u16)> {
        let mut out = Vec::new();
        while let Some(r) = b.pop(now) {
            out.push(match r {
                Release::Frame { seq, .. } => ('F', seq),
                Release::Missing { seq } => ('M', seq),
                Release::Silence => ('S', 0),
            });
        }
        out
    }

    #[test]
    fn packets_in_order_go_out_on_arrival() {
        let t0 = Instant::now();
        let mut b = buffer(t0);
        for i in 0..5u16 {
            let at = t0 + 20 * MS * u32::from(i);
            assert_eq!(
                b.push(i, u32::from(i) * 160, &[i as u8; 160], at),
                PushOutcome::Accepted
            );
            match b.pop(at) {
                Some(Release::Frame { seq, payload, .. }) => {
                    assert_eq!(seq, i);
                    assert_eq!(payload, &[i as u8; 160][..]);
                }
                other => panic!("expected frame {i}, got {other:?}"),
            }
            assert_eq!(b.pop(at), None);
        }
        assert_eq!(b.stats().released, 5);
    }

    #[test]
    fn a_reordered_packet_releases_the_ones_behind_it() {
        let t0 = Instant::now();
        let mut b = buffer(t0);
        b.push(0, 0, &[0], t0);
        assert_eq!(drain(&mut b, t0), [('F', 0)]);
        b.push(2, 320, &[2], t0 + 40 * MS);
        assert_eq!(drain(&mut b, t0 + 40 * MS), []);
        assert_eq!(b.next_deadline(), t0 + 80 * MS);
        b.push(1, 160, &[1], t0 + 45 * MS);
        assert_eq!(drain(&mut b, t0 + 45 * MS), [('F', 1), ('F', 2)]);
        assert_eq!(b.stats().reordered, 1);
        assert_eq!(b.stats().concealed, 0);
    }

    #[test]
    fn a_lost_packet_is_concealed_after_the_reorder_wait() {
        let t0 = Instant::now();
        let mut b = buffer(t0);
        b.push(0, 0, &[0], t0);
        drain(&mut b, t0);
        b.push(2, 320, &[2], t0 + 40 * MS);
        assert_eq!(drain(&mut b, t0 + 79 * MS), []);
        assert_eq!(drain(&mut b, t0 + 80 * MS), [('M', 1), ('F', 2)]);
        // It turns up after all: too late.
        assert_eq!(b.push(1, 160, &[1], t0 + 90 * MS), PushOutcome::Late);
        assert_eq!(b.stats().concealed, 1);
        assert_eq!(b.stats().late, 1);
    }

    #[test]
    fn a_dtx_gap_comes_out_as_silence_before_the_packet_ending_it() {
        let t0 = Instant::now();
        let mut b = buffer(t0);
        b.push(0, 0, &[0], t0);
        drain(&mut b, t0);
        // Next sequence number, five frames later by timestamp, arriving before the fill.
        b.push(1, 5 * 160, &[1], t0 + 30 * MS);
        let out = drain(&mut b, t0 + 30 * MS);
        assert_eq!(out, [('S', 0), ('S', 0), ('S', 0), ('S', 0), ('F', 1)]);
    }

    #[test]
    fn a_silent_sender_is_filled_in_real_time_and_not_twice() {
        let t0 = Instant::now();
        let mut b = buffer(t0);
        b.push(0, 0, &[0], t0);
        drain(&mut b, t0);
        // Frame 1's interval ended at 20 ms; silence stands in 60 ms after that, for every
        // interval ended 40 ms (the reorder wait) before.
        assert_eq!(drain(&mut b, t0 + 79 * MS), []);
        assert_eq!(b.next_deadline(), t0 + 80 * MS);
        assert_eq!(drain(&mut b, t0 + 80 * MS), [('S', 0), ('S', 0)]);
        assert_eq!(drain(&mut b, t0 + 100 * MS), [('S', 0)]);
        assert_eq!(drain(&mut b, t0 + 120 * MS), [('S', 0)]);
        // The sender resumes after a 5-frame pause (DTX): four frames were filled already.
        b.push(1, 6 * 160, &[1], t0 + 125 * MS);
        assert_eq!(drain(&mut b, t0 + 125 * MS), [('S', 0), ('F', 1)]);
        // At the end, a flush covers every interval gone by at once.
        b.flush();
        assert_eq!(drain(&mut b, t0 + 185 * MS), [('S', 0), ('S', 0), ('S', 0)]);
    }

    #[test]
    fn before_the_first_packet_the_stream_is_silence() {
        let t0 = Instant::now();
        let mut b = buffer(t0);
        assert_eq!(drain(&mut b, t0 + 59 * MS), []);
        assert_eq!(drain(&mut b, t0 + 60 * MS), [('S', 0)]);
        assert_eq!(drain(&mut b, t0 + 80 * MS), [('S', 0)]);
        b.push(7, 1000, &[7], t0 + 85 * MS);
        assert_eq!(drain(&mut b, t0 + 85 * MS), [('F', 7)]);
    }

    #[test]
    fn a_stall_of_the_process_fills_a_few_frames_not_all() {
        let t0 = Instant::now();
        let mut b = buffer(t0);
        let out = drain(&mut b, t0 + Duration::from_secs(5));
        assert!(out.len() <= MAX_FILL_CATCH_UP as usize + 1, "{out:?}");
    }

    #[test]
    fn duplicates_jumps_and_a_new_ssrc() {
        let t0 = Instant::now();
        let mut b = buffer(t0);
        b.set_ssrc(1);
        b.push(0, 0, &[0], t0);
        drain(&mut b, t0);
        b.push(2, 320, &[2], t0);
        assert_eq!(b.push(2, 320, &[2], t0), PushOutcome::Duplicate);
        assert_eq!(b.push(0, 0, &[0], t0), PushOutcome::Late);
        // A jump beyond the capacity restarts the stream there.
        assert_eq!(b.push(5000, 90_000, &[9], t0 + MS), PushOutcome::Reset);
        assert_eq!(drain(&mut b, t0 + MS), [('F', 5000)]);
        assert!(b.set_ssrc(2));
        b.push(100, 0, &[1], t0 + 2 * MS);
        assert_eq!(drain(&mut b, t0 + 2 * MS), [('F', 100)]);
        assert_eq!(b.stats().resets, 2);
        assert_eq!(b.push(0, 0, &[0; 2000], t0), PushOutcome::TooLarge);
    }
}
