//! The jitter buffer: reorders, drops duplicates and late packets, detects loss, adapts its depth.
//!
//! One [`JitterBuffer`] serves one incoming RTP stream of fixed-duration frames. It is
//! sans-I/O: the caller pushes each received packet with its arrival time and pops one frame
//! per frame interval from its own media clock. Payloads are copied into slots allocated once,
//! so nothing is allocated per packet.
//!
//! # Playout
//!
//! Playout follows RTP timestamps: the buffer keeps a playout point (the timestamp of the next
//! frame interval) that moves one frame per [`JitterBuffer::pop`]. A packet whose interval has
//! already been played out is [`PushOutcome::Late`]. A missing sequence number whose interval
//! comes up is reported once as [`Playout::Missing`] so the caller can conceal it (G.711 PLC,
//! or Opus PLC / in-band FEC from [`JitterBuffer::peek_next`]). An interval with no packet
//! because the sender sent none (DTX, silence suppression: the timestamp jumps but the sequence
//! does not) is a [`Playout::Gap`] and is not loss. When nothing at all is buffered the buffer
//! cannot tell loss from a pause yet: the interval is reported as `Missing` with the sequence
//! number expected, which still plays if it turns up with a later timestamp (the sender was
//! pausing) and is late otherwise. A sender silent for [`PAUSE`] sends the buffer back to
//! [`Playout::Waiting`] until packets return, which are then buffered afresh.
//!
//! # Depth
//!
//! The depth is the delay between a packet's arrival and its playout. It starts at
//! `initial_delay` and follows a target between `min_delay` and `max_delay`:
//!
//! * The target grows at once: to three times the RFC 3550 interarrival jitter estimate
//!   (which covers the spread of a jittery network), and, when a packet arrives late, to the
//!   current depth plus its lateness.
//! * It shrinks slowly: after [`CALM_PERIOD`] with no growth, by one frame every
//!   [`SHRINK_STEP`], down to the larger of `min_delay` and the jitter-based target.
//!
//! The actual depth moves one frame at a time, at frame boundaries. It grows by inserting a
//! [`Playout::Gap`] (the playout point stays put; the caller conceals) as soon as the target
//! is a frame above it, because late packets are worse than one stretched frame. It shrinks
//! where nothing is lost: in a silence gap (the playout point jumps a frame ahead), or by
//! dropping the frame just before a talk-spurt start (marker bit). A stream with neither
//! (continuous G.711) gets a frame dropped after [`SHRINK_PATIENCE`].

use std::time::Duration;

use tokio::time::Instant;

/// No growth for this long before the target starts to shrink.
pub const CALM_PERIOD: Duration = Duration::from_secs(4);
/// While shrinking, one frame per this interval.
pub const SHRINK_STEP: Duration = Duration::from_secs(1);
/// How long a needed shrink waits for silence or a talk-spurt start before dropping audio.
pub const SHRINK_PATIENCE: Duration = Duration::from_secs(1);
/// With nothing received for this long the sender is taken as paused (hold, long DTX).
pub const PAUSE: Duration = Duration::from_secs(1);
/// The target is this many times the interarrival jitter.
const JITTER_MULTIPLIER: i64 = 3;
/// A packet this many sequence numbers behind the newest is from another sequence, not
/// reordered (RFC 3550 A.1).
const MAX_MISORDER: i64 = 100;

/// Settings of one jitter buffer. The default suits voice bots: 20 ms G.711 at 8 kHz, low
/// latency first (start at 40 ms, go down to 20 ms on a calm network, never above 200 ms).
#[derive(Debug, Clone)]
pub struct JitterConfig {
    /// RTP clock rate of the stream (8000 for G.711, 48000 for Opus).
    pub clock_rate: u32,
    /// Samples (timestamp units) per frame: 160 is 20 ms at 8 kHz.
    pub frame_samples: u32,
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub initial_delay: Duration,
    /// Packet slots; also the largest sequence jump kept in the buffer.
    pub capacity: usize,
    /// Largest payload kept; larger ones are refused.
    pub max_payload: usize,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            clock_rate: 8000,
            frame_samples: 160,
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            initial_delay: Duration::from_millis(40),
            capacity: 32,
            max_payload: 1500,
        }
    }
}

/// What [`JitterBuffer::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Accepted,
    /// Already buffered or played.
    Duplicate,
    /// Its playout time has passed (or it is a stray from another sequence); dropped.
    Late,
    /// Payload over `max_payload`; dropped.
    TooLarge,
    /// The stream jumped (new SSRC, or sequence/timestamp far from the old stream): the buffer
    /// was emptied and starts over with this packet.
    Reset,
}

/// What to play for one frame interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Playout<'a> {
    Frame {
        seq: u16,
        timestamp: u32,
        payload: &'a [u8],
    },
    /// Packet `seq` was lost (or has not arrived in time): conceal it. Reported once per
    /// sequence number; [`JitterBuffer::peek_next`] gives the following packet for FEC.
    Missing { seq: u16, timestamp: u32 },
    /// No packet belongs here: the sender paused (DTX, silence suppression) or the buffer is
    /// deepening. Play comfort noise or concealment; nothing was lost.
    Gap { timestamp: u32 },
    /// Buffering before the first frame, after a reset or after a pause: play silence.
    Waiting,
}

/// Counters of one jitter buffer, for the call record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Packets pushed, whatever became of them.
    pub received: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub late: u64,
    pub too_large: u64,
    /// Packets that arrived after one with a higher sequence number (and were not duplicates).
    pub reordered: u64,
    /// Sequence numbers whose time passed without the packet (and that did not turn up late).
    pub lost: u64,
    /// `Missing` frames handed out.
    pub concealed: u64,
    /// `Frame`s handed out.
    pub played: u64,
    /// `Gap`s handed out for silence (not counting inserted frames).
    pub gaps: u64,
    /// Frame intervals inserted to deepen the buffer (handed out as `Gap`).
    pub inserted: u64,
    /// Frame intervals removed to make it shallower (silence skipped or a frame dropped).
    pub removed: u64,
    pub resets: u64,
    /// Packets in the buffer now.
    pub buffered: usize,
    /// RFC 3550 interarrival jitter estimate.
    pub jitter: Duration,
    pub target_delay: Duration,
    pub current_delay: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Empty,
    /// Holds a packet waiting for playout.
    Filled,
    /// Its packet was played, dropped or arrived late: a copy is a duplicate.
    Done,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    state: SlotState,
    /// Extended sequence number (never wraps).
    seq: i64,
    /// Extended timestamp.
    ts: i64,
    marker: bool,
    len: usize,
}

const EMPTY_SLOT: Slot = Slot {
    state: SlotState::Empty,
    seq: 0,
    ts: 0,
    marker: false,
    len: 0,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing received yet, or the sender paused.
    Idle,
    /// Collecting packets until the first has waited the target delay.
    Buffering {
        since: Instant,
    },
    Playing,
}

/// Reorders and paces one RTP stream; see the module docs for the policy.
#[derive(Debug)]
pub struct JitterBuffer {
    clock_rate: i64,
    /// Frame duration in timestamp units.
    fs: i64,
    min: i64,
    max: i64,
    max_payload: usize,
    slots: Vec<Slot>,
    /// `capacity × max_payload` bytes, slot `i` at `i × max_payload`.
    data: Vec<u8>,
    phase: Phase,
    buffered: usize,
    /// Next sequence number to play (while buffering: the lowest buffered).
    next_seq: i64,
    /// Timestamp of the next frame interval to play.
    play_ts: i64,
    /// Highest sequence number seen: the reference that extends 16-bit numbers.
    highest_seq: i64,
    /// Timestamp of the last accepted packet: the reference that extends 32-bit timestamps.
    ref_ts: i64,
    /// Sequence number after a far-behind packet: if it comes next, the stream restarted.
    probation: Option<u16>,
    /// First sequence number played since the last start: older ones were never expected.
    play_start_seq: i64,
    /// Sequence number `peek_next` looks for: the one after the last frame handed out.
    peek_seq: i64,
    /// Consecutive pops with an empty buffer.
    underruns: i64,
    target: i64,
    current: i64,
    /// Interarrival jitter in timestamp units, scaled by 16 (RFC 3550 A.8).
    jitter_q4: i64,
    epoch: Option<Instant>,
    last_transit: Option<i64>,
    calm_since: Option<Instant>,
    last_shrink: Option<Instant>,
    shrink_wanted_since: Option<Instant>,
    ssrc: Option<u32>,
    reset_pending: bool,
    stats: JitterStats,
}

impl JitterBuffer {
    /// Allocates all slots. Nonsensical values are corrected (zero rates and frames, a
    /// capacity below 4 or above 4096, min above max).
    pub fn new(config: JitterConfig) -> Self {
        let clock_rate = i64::from(config.clock_rate.max(1));
        let fs = i64::from(config.frame_samples.max(1));
        let capacity = config.capacity.clamp(4, 4096);
        let to_samples = |d: Duration| {
            let s = (d.as_nanos() * clock_rate as u128 / 1_000_000_000).min(i64::MAX as u128);
            // Whole frames, rounded up, at least one.
            ((s as i64).saturating_add(fs - 1) / fs).max(1) * fs
        };
        // The buffer cannot be deeper than it has slots.
        let ceiling = (capacity as i64 - 2).max(1) * fs;
        let min = to_samples(config.min_delay).min(ceiling);
        let max = to_samples(config.max_delay).clamp(min, ceiling.max(min));
        let initial = to_samples(config.initial_delay).clamp(min, max);
        Self {
            clock_rate,
            fs,
            min,
            max,
            max_payload: config.max_payload,
            slots: vec![EMPTY_SLOT; capacity],
            data: vec![0; capacity.saturating_mul(config.max_payload)],
            phase: Phase::Idle,
            buffered: 0,
            next_seq: 0,
            play_ts: 0,
            play_start_seq: 0,
            highest_seq: 0,
            ref_ts: 0,
            probation: None,
            peek_seq: 0,
            underruns: 0,
            target: initial,
            current: initial,
            jitter_q4: 0,
            epoch: None,
            last_transit: None,
            calm_since: None,
            last_shrink: None,
            shrink_wanted_since: None,
            ssrc: None,
            reset_pending: false,
            stats: JitterStats::default(),
        }
    }

    fn samples_to_duration(&self, samples: i64) -> Duration {
        let nanos = samples.max(0) as u128 * 1_000_000_000 / self.clock_rate as u128;
        Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64)
    }

    fn round_up_frames(&self, samples: i64) -> i64 {
        (samples.max(0).saturating_add(self.fs - 1) / self.fs) * self.fs
    }

    fn index(&self, seq: i64) -> usize {
        seq.rem_euclid(self.slots.len() as i64) as usize
    }

    fn cap(&self) -> i64 {
        self.slots.len() as i64
    }

    pub fn stats(&self) -> JitterStats {
        JitterStats {
            buffered: self.buffered,
            jitter: self.samples_to_duration(self.jitter_q4 >> 4),
            target_delay: self.samples_to_duration(self.target),
            current_delay: self.samples_to_duration(self.current),
            ..self.stats
        }
    }

    /// Tells the buffer the SSRC of the packet about to be pushed. A different SSRC than
    /// before is a new stream: the buffer empties and the next push reports
    /// [`PushOutcome::Reset`]. Returns whether it changed.
    pub fn set_ssrc(&mut self, ssrc: u32) -> bool {
        let changed = self.ssrc.is_some_and(|old| old != ssrc);
        self.ssrc = Some(ssrc);
        if changed {
            self.reset();
            self.reset_pending = true;
        }
        changed
    }

    /// Empties the buffer; the next packet starts a new stream. Counters and the learned
    /// target delay are kept (the network path has not changed).
    pub fn reset(&mut self) {
        self.clear();
        self.phase = Phase::Idle;
    }

    fn clear(&mut self) {
        for s in &mut self.slots {
            s.state = SlotState::Empty;
        }
        self.buffered = 0;
        self.probation = None;
        self.underruns = 0;
        self.last_transit = None;
        self.shrink_wanted_since = None;
    }

    /// Takes one received packet of the stream. `now` is its arrival time.
    pub fn push(
        &mut self,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
        now: Instant,
    ) -> PushOutcome {
        self.stats.received += 1;
        if payload.len() > self.max_payload {
            self.stats.too_large += 1;
            return PushOutcome::TooLarge;
        }
        if std::mem::take(&mut self.reset_pending) {
            return self.restart(seq, timestamp, marker, payload, now);
        }
        if self.phase == Phase::Idle {
            self.start(seq, timestamp, marker, payload, now);
            return PushOutcome::Accepted;
        }

        let es = self.highest_seq + i64::from(seq.wrapping_sub(self.highest_seq as u16) as i16);
        let ets = self.ref_ts + i64::from(timestamp.wrapping_sub(self.ref_ts as u32) as i32);
        let playing = self.phase == Phase::Playing;
        // How far a timestamp may sensibly be from the playout point (or, while buffering,
        // from the last packet): the buffer's span plus its deepest delay.
        let span = self.cap() * self.fs + self.max;

        // Far ahead: more than the buffer can hold, or a timestamp leap. A new stream.
        let ts_base = if playing { self.play_ts } else { self.ref_ts };
        if es - self.next_seq >= self.cap() || ets - ts_base > span {
            return self.restart(seq, timestamp, marker, payload, now);
        }
        // Far behind: a stray, unless the next packet continues from it (RFC 3550 A.1).
        if self.highest_seq - es > MAX_MISORDER || ts_base - ets > span {
            if self.probation == Some(seq) {
                return self.restart(seq, timestamp, marker, payload, now);
            }
            self.probation = Some(seq.wrapping_add(1));
            self.stats.late += 1;
            return PushOutcome::Late;
        }

        let idx = self.index(es);
        let slot = self.slots[idx];
        if slot.seq == es && slot.state != SlotState::Empty {
            self.stats.duplicates += 1;
            return PushOutcome::Duplicate;
        }
        if es < self.highest_seq {
            self.stats.reordered += 1;
        }
        self.update_jitter(ets, now);

        let late = if playing {
            es < self.next_seq || ets < self.play_ts - self.fs / 2
        } else {
            // Buffering: anything within the window is early enough.
            self.highest_seq - es >= self.cap()
        };
        if late {
            self.stats.late += 1;
            if playing {
                let lateness = self.play_ts - ets;
                self.grow_to(self.current + self.round_up_frames(lateness), now);
                // Remember it, so that a copy is a duplicate and it does not count as lost.
                // Its slot tells whether it was already counted: a slot last used by an older
                // sequence number never held it. (After a newer one, we cannot tell.)
                let slot = self.slots[idx];
                let never_held = slot.state == SlotState::Empty || slot.seq < es;
                if es >= self.next_seq || (never_held && es >= self.play_start_seq) {
                    if es < self.next_seq {
                        self.stats.lost = self.stats.lost.saturating_sub(1);
                    }
                    self.slots[idx] = Slot {
                        state: SlotState::Done,
                        seq: es,
                        ..EMPTY_SLOT
                    };
                }
            }
            return PushOutcome::Late;
        }

        self.store(idx, es, ets, marker, payload);
        if !playing && es < self.next_seq {
            self.next_seq = es;
        }
        self.highest_seq = self.highest_seq.max(es);
        self.ref_ts = ets;
        PushOutcome::Accepted
    }

    fn store(&mut self, idx: usize, seq: i64, ts: i64, marker: bool, payload: &[u8]) {
        let off = idx * self.max_payload;
        self.data[off..off + payload.len()].copy_from_slice(payload);
        self.slots[idx] = Slot {
            state: SlotState::Filled,
            seq,
            ts,
            marker,
            len: payload.len(),
        };
        self.buffered += 1;
        self.stats.accepted += 1;
    }

    /// Starts buffering a stream with its first packet. Extended numbers start from the raw
    /// ones: only differences matter.
    fn start(&mut self, seq: u16, timestamp: u32, marker: bool, payload: &[u8], now: Instant) {
        self.clear();
        let es = i64::from(seq);
        let ets = i64::from(timestamp);
        self.highest_seq = es;
        self.next_seq = es;
        self.peek_seq = es;
        self.ref_ts = ets;
        self.phase = Phase::Buffering { since: now };
        self.calm_since.get_or_insert(now);
        self.update_jitter(ets, now);
        let idx = self.index(es);
        self.store(idx, es, ets, marker, payload);
    }

    fn restart(
        &mut self,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
        now: Instant,
    ) -> PushOutcome {
        self.stats.resets += 1;
        self.start(seq, timestamp, marker, payload, now);
        PushOutcome::Reset
    }

    /// RFC 3550 A.8 on the extended timestamp: J += (|D| − J) / 16.
    fn update_jitter(&mut self, ets: i64, now: Instant) {
        let epoch = *self.epoch.get_or_insert(now);
        let elapsed = now.saturating_duration_since(epoch).as_nanos();
        let arrival = (elapsed * self.clock_rate as u128 / 1_000_000_000).min(i64::MAX as u128);
        let transit = (arrival as i64).wrapping_sub(ets);
        if let Some(prev) = self.last_transit {
            // One absurd packet must not dominate the estimate for long.
            let d = transit
                .wrapping_sub(prev)
                .saturating_abs()
                .min(4 * self.max);
            self.jitter_q4 += d - ((self.jitter_q4 + 8) >> 4);
            let target = self.round_up_frames(JITTER_MULTIPLIER * (self.jitter_q4 >> 4));
            self.grow_to(target, now);
        }
        self.last_transit = Some(transit);
    }

    fn grow_to(&mut self, samples: i64, now: Instant) {
        let samples = samples.min(self.max);
        if samples > self.target {
            self.target = samples;
            self.calm_since = Some(now);
        }
    }

    /// The slow half of the policy: one frame less after a calm period.
    fn relax_target(&mut self, now: Instant) {
        let floor = self
            .round_up_frames(JITTER_MULTIPLIER * (self.jitter_q4 >> 4))
            .clamp(self.min, self.max);
        let calm = self
            .calm_since
            .is_some_and(|t| now.saturating_duration_since(t) >= CALM_PERIOD);
        let stepped = self
            .last_shrink
            .is_none_or(|t| now.saturating_duration_since(t) >= SHRINK_STEP);
        if calm && stepped && self.target > floor {
            self.target -= self.fs;
            self.last_shrink = Some(now);
        }
    }

    /// The lowest buffered sequence number at or after `next_seq`, with its timestamp.
    fn first_buffered(&self) -> Option<(i64, i64)> {
        if self.buffered == 0 {
            return None;
        }
        (self.next_seq..self.next_seq + self.cap()).find_map(|s| {
            let slot = &self.slots[self.index(s)];
            (slot.state == SlotState::Filled && slot.seq == s).then_some((s, slot.ts))
        })
    }

    fn filled(&self, seq: i64) -> Option<&Slot> {
        let slot = &self.slots[self.index(seq)];
        (slot.state == SlotState::Filled && slot.seq == seq).then_some(slot)
    }

    /// The payload of the packet after the last one handed out, if it is here: after a
    /// `Missing`, the packet whose Opus in-band FEC rebuilds the lost one.
    pub fn peek_next(&self) -> Option<&[u8]> {
        let slot = self.filled(self.peek_seq)?;
        let off = self.index(self.peek_seq) * self.max_payload;
        Some(&self.data[off..off + slot.len])
    }

    /// Hands out the next frame interval. Call once per frame duration on the media clock.
    pub fn pop(&mut self, now: Instant) -> Playout<'_> {
        self.relax_target(now);
        match self.phase {
            Phase::Idle => return Playout::Waiting,
            Phase::Buffering { since } => {
                if now.saturating_duration_since(since) < self.samples_to_duration(self.target) {
                    return Playout::Waiting;
                }
                // `next_seq` is the lowest buffered packet: playout starts with it.
                let first = self.slots[self.index(self.next_seq)];
                self.play_ts = first.ts;
                self.peek_seq = self.next_seq;
                self.play_start_seq = self.next_seq;
                self.current = self.target;
                self.underruns = 0;
                self.phase = Phase::Playing;
            }
            Phase::Playing => {}
        }

        let fs = self.fs;
        let half = fs / 2;
        if self.current + fs <= self.target {
            self.current += fs;
            self.stats.inserted += 1;
            return Playout::Gap {
                timestamp: self.play_ts as u32,
            };
        }
        let want_shrink = self.current >= self.target + fs;
        if want_shrink {
            self.shrink_wanted_since.get_or_insert(now);
        } else {
            self.shrink_wanted_since = None;
        }

        loop {
            let Some((seq, ts)) = self.first_buffered() else {
                return self.underrun();
            };
            self.underruns = 0;
            // When the next expected packet is due, by its timestamp or, if it is missing,
            // by the timestamp it would have had.
            let gap = seq - self.next_seq;
            let due_ts = ts - gap * fs;
            if due_ts < self.play_ts - half && gap > 0 {
                // Its interval went by while the buffer was empty (already concealed).
                self.skip_missing();
                continue;
            }
            if due_ts > self.play_ts + half {
                // Nothing due now: the sender paused. A silence gap of two frames or more is
                // the place to shrink: skip one interval of it.
                let timestamp = self.play_ts as u32;
                if want_shrink && due_ts >= self.play_ts + fs + half {
                    self.play_ts += fs;
                    self.current -= fs;
                    self.stats.removed += 1;
                    self.shrink_wanted_since = None;
                }
                self.play_ts += fs;
                self.stats.gaps += 1;
                return Playout::Gap { timestamp };
            }
            if gap > 0 {
                let missing = self.next_seq;
                let timestamp = self.play_ts as u32;
                self.skip_missing();
                self.play_ts += fs;
                self.peek_seq = missing + 1;
                self.stats.concealed += 1;
                return Playout::Missing {
                    seq: missing as u16,
                    timestamp,
                };
            }

            // The next packet is due. Drop it instead if the buffer should shrink and this is
            // the frame before a talk-spurt start, or we waited long enough for one.
            let next_marker = self.filled(seq + 1).map(|s| s.marker);
            let patience_over = self
                .shrink_wanted_since
                .is_some_and(|t| now.saturating_duration_since(t) >= SHRINK_PATIENCE);
            let idx = self.index(seq);
            self.slots[idx].state = SlotState::Done;
            self.buffered = self.buffered.saturating_sub(1);
            self.next_seq = seq + 1;
            self.play_ts = self.play_ts.max(ts) + fs;
            if want_shrink
                && (next_marker == Some(true) || (next_marker.is_some() && patience_over))
            {
                self.current -= fs;
                self.stats.removed += 1;
                self.shrink_wanted_since = None;
                // The following packet is due now, in the interval the dropped one had.
                continue;
            }
            self.peek_seq = seq + 1;
            self.stats.played += 1;
            let off = idx * self.max_payload;
            let len = self.slots[idx].len;
            return Playout::Frame {
                seq: seq as u16,
                timestamp: ts as u32,
                payload: &self.data[off..off + len],
            };
        }
    }

    /// Passes over `next_seq`, which never arrived (or arrived too late to play).
    fn skip_missing(&mut self) {
        let slot = self.slots[self.index(self.next_seq)];
        let seen_late = slot.seq == self.next_seq && slot.state == SlotState::Done;
        if !seen_late {
            self.stats.lost += 1;
        }
        self.next_seq += 1;
    }

    /// Nothing buffered: conceal the expected packet, or, after [`PAUSE`], stop and wait.
    fn underrun(&mut self) -> Playout<'static> {
        self.underruns += 1;
        if self.underruns * self.fs > self.clock_rate * PAUSE.as_millis() as i64 / 1000 {
            self.phase = Phase::Idle;
            return Playout::Waiting;
        }
        let seq = self.next_seq + self.underruns - 1;
        let timestamp = self.play_ts as u32;
        self.play_ts += self.fs;
        self.peek_seq = seq + 1;
        self.stats.concealed += 1;
        Playout::Missing {
            seq: seq as u16,
            timestamp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Xorshift: deterministic pseudo-random numbers for shuffles and delays.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A frame's payload names its sequence number, so the output can be checked.
    fn payload(seq: u16) -> [u8; 4] {
        let s = seq.to_be_bytes();
        [0xab, s[0], s[1], 0xcd]
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Out {
        Frame(u16, u32),
        Missing(u16, u32),
        Gap(u32),
        Waiting,
    }

    fn pop(jb: &mut JitterBuffer, now: Instant) -> Out {
        match jb.pop(now) {
            Playout::Frame {
                seq,
                timestamp,
                payload: p,
            } => {
                assert_eq!(p, payload(seq), "payload of {seq}");
                Out::Frame(seq, timestamp)
            }
            Playout::Missing { seq, timestamp } => Out::Missing(seq, timestamp),
            Playout::Gap { timestamp } => Out::Gap(timestamp),
            Playout::Waiting => Out::Waiting,
        }
    }

    /// Arrivals `(time, seq, timestamp)` played against pops every 20 ms (offset by 10 ms so
    /// the two never tie), in virtual time from `t0`.
    struct Sim<'a> {
        jb: &'a mut JitterBuffer,
        t0: Instant,
        arrivals: Vec<(Duration, u16, u32)>,
        next: usize,
        tick: Duration,
        /// Packets whose sequence number is a multiple of this carry the marker bit.
        marker_every: Option<u16>,
    }

    impl<'a> Sim<'a> {
        fn new(
            jb: &'a mut JitterBuffer,
            t0: Instant,
            mut arrivals: Vec<(Duration, u16, u32)>,
        ) -> Self {
            arrivals.sort_by_key(|a| a.0);
            Self {
                jb,
                t0,
                arrivals,
                next: 0,
                tick: 10 * MS,
                marker_every: None,
            }
        }

        /// Pushes and pops until `until`; returns what came out.
        fn run_until(&mut self, until: Duration) -> Vec<Out> {
            let mut out = Vec::new();
            while self.tick < until {
                while let Some(&(at, seq, ts)) = self.arrivals.get(self.next) {
                    if at > self.tick {
                        break;
                    }
                    let marker = self.marker_every.is_some_and(|n| seq % n == 0);
                    self.jb.push(seq, ts, marker, &payload(seq), self.t0 + at);
                    self.next += 1;
                }
                out.push(pop(self.jb, self.t0 + self.tick));
                self.tick += 20 * MS;
            }
            out
        }
    }

    #[test]
    fn shuffled_stream_with_duplicates_and_losses() {
        let mut jb = JitterBuffer::new(JitterConfig {
            initial_delay: 100 * MS,
            min_delay: 100 * MS,
            ..JitterConfig::default()
        });
        let t0 = Instant::now();
        let mut rng = Rng(0x1234_5678_9abc_def1);
        // 200 frames from just below the sequence and timestamp wraps.
        let first_seq: u16 = 65_450;
        let first_ts: u32 = u32::MAX - 160 * 100;
        let dropped: Vec<u16> = [3u16, 17, 18, 40, 41, 42, 77, 120, 150, 151, 190]
            .iter()
            .map(|i| first_seq.wrapping_add(*i))
            .collect();
        // Delivered in windows of 5, shuffled inside each, one packet every 20 ms.
        let mut order: Vec<u16> = Vec::new();
        for w in 0..40u16 {
            let mut window: Vec<u16> = (0..5).map(|i| w * 5 + i).collect();
            for i in (1..window.len()).rev() {
                window.swap(i, rng.below(i as u64 + 1) as usize);
            }
            order.extend(window);
        }
        let mut arrivals = Vec::new();
        let mut duplicates = 0;
        for (slot, i) in order.iter().enumerate() {
            let seq = first_seq.wrapping_add(*i);
            let ts = first_ts.wrapping_add(160 * u32::from(*i));
            if dropped.contains(&seq) {
                continue;
            }
            let at = 20 * MS * slot as u32;
            arrivals.push((at, seq, ts));
            if i % 9 == 4 {
                // A copy up to 60 ms later.
                arrivals.push((at + MS * (1 + rng.below(60) as u32), seq, ts));
                duplicates += 1;
            }
        }
        let out = Sim::new(&mut jb, t0, arrivals).run_until(5500 * MS);

        let played: Vec<Out> = out
            .iter()
            .copied()
            .filter(|o| !matches!(o, Out::Waiting | Out::Gap(_)))
            .collect();
        // Every frame exactly once, in order, a dropped one as Missing, then only the end.
        for (i, o) in played.iter().take(200).enumerate() {
            let seq = first_seq.wrapping_add(i as u16);
            let ts = first_ts.wrapping_add(160 * i as u32);
            if dropped.contains(&seq) {
                assert_eq!(*o, Out::Missing(seq, ts), "frame {i}");
            } else {
                assert_eq!(*o, Out::Frame(seq, ts), "frame {i}");
            }
        }
        // After the stream ends: concealment of what would come next, then waiting.
        assert!(played[200..].iter().all(|o| matches!(o, Out::Missing(..))));
        assert_eq!(out.last(), Some(&Out::Waiting));
        let missing_in_stream = played[..200]
            .iter()
            .filter(|o| matches!(o, Out::Missing(..)))
            .count();
        assert_eq!(missing_in_stream, dropped.len());

        let s = jb.stats();
        assert_eq!(s.lost, dropped.len() as u64);
        assert_eq!(s.played, 200 - dropped.len() as u64);
        assert_eq!(s.duplicates, duplicates);
        assert_eq!(s.late, 0);
        assert!(s.reordered > 20, "{s:?}");
        assert_eq!(s.resets, 0);
        assert_eq!(s.received, (200 - dropped.len()) as u64 + duplicates);
    }

    #[test]
    fn late_packets_dropped_and_counted() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let t0 = Instant::now();
        let arrivals: Vec<_> = (0..50u16)
            .map(|i| {
                // Packet 20 is held up 120 ms; its turn comes at about 60 ms.
                let extra = if i == 20 { 120 * MS } else { Duration::ZERO };
                (20 * MS * u32::from(i) + extra, i, 160 * u32::from(i))
            })
            .collect();
        let before = jb.stats().target_delay;
        let out = Sim::new(&mut jb, t0, arrivals).run_until(1200 * MS);
        let end = out
            .iter()
            .position(|o| matches!(o, Out::Frame(49, _)))
            .unwrap();
        let missing: Vec<_> = out[..end]
            .iter()
            .filter(|o| matches!(o, Out::Missing(..)))
            .collect();
        assert_eq!(missing, [&Out::Missing(20, 3200)]);
        assert!(!out.contains(&Out::Frame(20, 3200)));
        let s = jb.stats();
        assert_eq!(s.late, 1);
        // Late, not lost: it arrived.
        assert_eq!(s.lost, 0);
        assert_eq!(s.played, 49);
        assert!(s.target_delay > before, "{s:?}");
        assert!(s.inserted > 0);
        // A copy of the late packet is a duplicate now.
        assert_eq!(
            jb.push(20, 3200, false, &payload(20), t0 + 1200 * MS),
            PushOutcome::Duplicate
        );
    }

    #[test]
    fn sequence_wrap() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let t0 = Instant::now();
        let mut arrivals: Vec<_> = (0..20u32)
            .map(|i| {
                let seq = 65_530u16.wrapping_add(i as u16);
                (20 * MS * i, seq, 1000 + 160 * i)
            })
            .collect();
        // 65535 comes after 0; 2 is lost.
        let (a, b) = (arrivals[5].0, arrivals[6].0);
        arrivals[5].0 = b;
        arrivals[6].0 = a;
        arrivals.retain(|a| a.1 != 2);
        let out = Sim::new(&mut jb, t0, arrivals).run_until(500 * MS);
        let seqs: Vec<u16> = out
            .iter()
            .filter_map(|o| match o {
                Out::Frame(s, _) => Some(*s),
                Out::Missing(s, _) => Some(*s),
                _ => None,
            })
            .take(20)
            .collect();
        let expected: Vec<u16> = (0..20u16).map(|i| 65_530u16.wrapping_add(i)).collect();
        assert_eq!(seqs, expected);
        assert!(out.contains(&Out::Missing(2, 1000 + 160 * 8)));
        let s = jb.stats();
        assert_eq!((s.lost, s.late, s.resets), (1, 0, 0));
        assert_eq!(s.reordered, 1);
    }

    #[test]
    fn depth_grows_under_jitter_and_shrinks_when_calm() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let t0 = Instant::now();
        let mut rng = Rng(42);
        // 10 s with up to 80 ms of random delay, then 40 s of a steady network.
        let arrivals: Vec<_> = (0..2500u32)
            .map(|i| {
                let extra = if i < 500 {
                    MS * rng.below(80) as u32
                } else {
                    5 * MS
                };
                (20 * MS * i + extra, i as u16, 160 * i)
            })
            .collect();
        let mut sim = Sim::new(&mut jb, t0, arrivals);
        let out = sim.run_until(10_000 * MS);
        let jittery = sim.jb.stats();
        assert!(jittery.target_delay >= 60 * MS, "{jittery:?}");
        assert!(jittery.current_delay >= 60 * MS, "{jittery:?}");
        assert!(jittery.jitter >= 15 * MS, "{jittery:?}");
        // Late packets happen only while the depth catches up.
        assert!(jittery.late < 25, "{jittery:?}");
        assert!(out.iter().filter(|o| matches!(o, Out::Frame(..))).count() > 450);

        let calm_out = sim.run_until(50_000 * MS);
        let calm = jb.stats();
        assert_eq!(calm.target_delay, 20 * MS, "{calm:?}");
        assert_eq!(calm.current_delay, 20 * MS, "{calm:?}");
        assert!(calm.removed >= 2, "{calm:?}");
        assert_eq!(calm.late, jittery.late, "{calm:?}");
        assert_eq!((calm.lost, calm.concealed), (0, 0), "{calm:?}");
        // The tail plays in order, without loss.
        let tail: Vec<_> = calm_out[calm_out.len() - 100..].to_vec();
        assert!(tail.windows(2).all(|w| matches!(
            (w[0], w[1]),
            (Out::Frame(a, _), Out::Frame(b, _)) if b == a.wrapping_add(1)
        )));
    }

    #[test]
    fn shrinks_before_talk_spurts() {
        let mut jb = JitterBuffer::new(JitterConfig {
            initial_delay: 100 * MS,
            ..JitterConfig::default()
        });
        let t0 = Instant::now();
        // A steady network; a talk spurt starts every 500 ms.
        let arrivals: Vec<_> = (0..450u32)
            .map(|i| (20 * MS * i + 5 * MS, i as u16, 160 * i))
            .collect();
        let mut sim = Sim::new(&mut jb, t0, arrivals);
        sim.marker_every = Some(25);
        let out = sim.run_until(9000 * MS);
        let s = jb.stats();
        assert_eq!(s.target_delay, 20 * MS, "{s:?}");
        assert_eq!(s.current_delay, 20 * MS, "{s:?}");
        assert_eq!(s.removed, 4, "{s:?}");
        assert_eq!(
            (s.lost, s.concealed, s.late, s.inserted),
            (0, 0, 0, 0),
            "{s:?}"
        );
        // The frames that went are the last ones before a marker.
        let played: Vec<u16> = out
            .iter()
            .filter_map(|o| match o {
                Out::Frame(seq, _) => Some(*seq),
                _ => None,
            })
            .collect();
        let skipped: Vec<u16> = (0..*played.last().unwrap())
            .filter(|s| !played.contains(s))
            .collect();
        assert_eq!(skipped.len(), 4);
        assert!(skipped.iter().all(|s| (s + 1) % 25 == 0), "{skipped:?}");
    }

    #[test]
    fn shrinks_in_silence_without_dropping_audio() {
        let mut jb = JitterBuffer::new(JitterConfig {
            initial_delay: 100 * MS,
            ..JitterConfig::default()
        });
        let t0 = Instant::now();
        // DTX: 400 ms of speech, then 400 ms without packets (the timestamp runs on, the
        // sequence number does not), over and over.
        let arrivals: Vec<_> = (0..250u32)
            .map(|i| {
                let frame = i / 20 * 40 + i % 20;
                (20 * MS * frame + 5 * MS, i as u16, 160 * frame)
            })
            .collect();
        let out = Sim::new(&mut jb, t0, arrivals).run_until(10_100 * MS);
        let s = jb.stats();
        assert_eq!(s.current_delay, 20 * MS, "{s:?}");
        assert_eq!(s.removed, 4, "{s:?}");
        assert_eq!((s.played, s.lost, s.late), (250, 0, 0), "{s:?}");
        let played: Vec<u16> = out
            .iter()
            .filter_map(|o| match o {
                Out::Frame(seq, _) => Some(*seq),
                _ => None,
            })
            .collect();
        assert_eq!(played, (0..250).collect::<Vec<u16>>());
    }

    #[test]
    fn reset_on_new_stream() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let t0 = Instant::now();
        for i in 0..10u16 {
            let at = t0 + 20 * MS * u32::from(i);
            assert_eq!(
                jb.push(i, 160 * u32::from(i), false, &payload(i), at),
                PushOutcome::Accepted
            );
            jb.pop(at + 10 * MS);
        }
        // A far sequence jump: another stream.
        let at = t0 + 200 * MS;
        assert_eq!(
            jb.push(30_000, 777, true, &payload(30_000), at),
            PushOutcome::Reset
        );
        assert_eq!(pop(&mut jb, at + 10 * MS), Out::Waiting);
        assert_eq!(
            jb.push(30_001, 937, false, &payload(30_001), at + 20 * MS),
            PushOutcome::Accepted
        );
        assert_eq!(pop(&mut jb, at + 50 * MS), Out::Frame(30_000, 777));
        assert_eq!(pop(&mut jb, at + 70 * MS), Out::Frame(30_001, 937));

        // Same sequence, timestamp leap of an hour: also a new stream.
        let at = at + 80 * MS;
        assert_eq!(
            jb.push(30_002, 937 + 8000 * 3600, false, &payload(30_002), at),
            PushOutcome::Reset
        );
        // A new SSRC resets even when the numbers would fit.
        assert!(!jb.set_ssrc(1));
        assert_eq!(
            jb.push(30_003, 937 + 8000 * 3600 + 160, false, &payload(30_003), at),
            PushOutcome::Accepted
        );
        assert!(jb.set_ssrc(2));
        assert_eq!(jb.pop(at), Playout::Waiting);
        assert_eq!(
            jb.push(30_004, 5, false, &payload(30_004), at),
            PushOutcome::Reset
        );

        // A stray far-behind packet is dropped; two in a row are a restart.
        assert_eq!(
            jb.push(1_000, 5, false, &payload(1_000), at),
            PushOutcome::Late
        );
        assert_eq!(
            jb.push(1_001, 165, false, &payload(1_001), at),
            PushOutcome::Reset
        );
        assert_eq!(jb.stats().resets, 4);
    }

    #[test]
    fn silence_gap_is_not_loss() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let t0 = Instant::now();
        // 10 frames, 200 ms of DTX (timestamps jump, sequence does not), 10 more frames.
        let arrivals: Vec<_> = (0..20u32)
            .map(|i| {
                let silence = if i >= 10 { 10 } else { 0 };
                (20 * MS * (i + silence), i as u16, 160 * (i + silence))
            })
            .collect();
        let out = Sim::new(&mut jb, t0, arrivals).run_until(800 * MS);
        let frames = out.iter().filter(|o| matches!(o, Out::Frame(..))).count();
        assert_eq!(frames, 20);
        let s = jb.stats();
        // While the buffer is empty the silence looks like loss and is concealed; once the
        // next packet is in, the rest of the silence is a gap. Nothing counts as lost.
        assert_eq!(s.lost, 0);
        assert!(s.gaps >= 1, "{s:?}");
        assert!(s.concealed >= 5, "{s:?}");
        // The frame after the silence plays at its own timestamp.
        let first_after = out.iter().position(|o| *o == Out::Frame(10, 3200)).unwrap();
        assert!(matches!(
            out[first_after - 1],
            Out::Gap(_) | Out::Missing(..)
        ));
    }

    #[test]
    fn missing_frame_exposes_next_packet_for_fec() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let t0 = Instant::now();
        for i in [0u16, 2, 3] {
            jb.push(i, 160 * u32::from(i), false, &payload(i), t0);
        }
        assert_eq!(pop(&mut jb, t0 + 40 * MS), Out::Frame(0, 0));
        match jb.pop(t0 + 60 * MS) {
            Playout::Missing { seq: 1, .. } => {
                assert_eq!(jb.peek_next(), Some(&payload(2)[..]));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(pop(&mut jb, t0 + 80 * MS), Out::Frame(2, 320));
    }

    #[test]
    fn pause_returns_to_waiting_and_resumes() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let t0 = Instant::now();
        let mut arrivals: Vec<_> = (0..10u32)
            .map(|i| (20 * MS * i, i as u16, 160 * i))
            .collect();
        // On hold for 3 s; the sender keeps its sequence but not its timestamps.
        arrivals.extend((10..20u32).map(|i| (3000 * MS + 20 * MS * i, i as u16, 160 * i + 50_000)));
        let out = Sim::new(&mut jb, t0, arrivals).run_until(4000 * MS);
        assert!(out[100..140].iter().all(|o| *o == Out::Waiting));
        assert_eq!(
            out.iter().filter(|o| matches!(o, Out::Frame(..))).count(),
            20
        );
        assert_eq!(jb.stats().lost, 0);
        assert_eq!(jb.stats().resets, 0);
    }

    #[test]
    fn bad_input_never_panics() {
        let mut jb = JitterBuffer::new(JitterConfig {
            max_payload: 8,
            ..JitterConfig::default()
        });
        let t0 = Instant::now();
        assert_eq!(jb.push(1, 1, false, &[0; 9], t0), PushOutcome::TooLarge);
        assert_eq!(jb.push(1, 1, false, &[], t0), PushOutcome::Accepted);
        let mut rng = Rng(7);
        for i in 0..20_000u32 {
            let now = t0 + MS * i;
            let seq = if rng.below(3) == 0 {
                rng.next() as u16
            } else {
                (i / 2) as u16
            };
            let ts = if rng.below(3) == 0 {
                rng.next() as u32
            } else {
                i * 80
            };
            let len = rng.below(10) as usize;
            jb.push(seq, ts, rng.below(2) == 0, &[7; 10][..len], now);
            if i % 2 == 0 {
                if let Playout::Frame { payload, .. } = jb.pop(now) {
                    assert!(payload.len() <= 8);
                }
                let _ = jb.peek_next();
            }
        }
        let s = jb.stats();
        assert!(s.buffered <= 32);
        assert!(
            s.target_delay <= 200 * MS && s.current_delay <= 200 * MS,
            "{s:?}"
        );

        // Degenerate settings are corrected rather than dividing by zero.
        let mut odd = JitterBuffer::new(JitterConfig {
            clock_rate: 0,
            frame_samples: 0,
            capacity: 0,
            max_payload: 0,
            min_delay: Duration::from_secs(9),
            max_delay: Duration::ZERO,
            initial_delay: Duration::from_secs(99),
        });
        for i in 0..100u16 {
            odd.push(i, u32::from(i), false, &[], t0 + MS * u32::from(i));
            let _ = odd.pop(t0 + MS * u32::from(i));
        }
    }
}
