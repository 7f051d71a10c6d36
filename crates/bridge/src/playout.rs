//! The playout queue: bot audio re-framed into 20 ms frames, with marks and clear; and the chunker for caller audio.
//!
//! Three pieces of plain data, with no I/O and no clock of their own (time is passed in as a
//! [`tokio::time::Instant`], so tests can run on virtual time):
//!
//! - [`PlayoutQueue`]: the bot's audio on its way to the caller. The bot sends PCM16 chunks of any
//!   size; the caller side pulls exactly one frame (normally 20 ms) per tick. Marks and `clear`
//!   follow the bot-protocol rules: a mark is echoed once the audio queued before it has been
//!   handed out for playout (at once if nothing is queued), and `clear` drops the queued audio and
//!   makes every pending mark due at once. [`AfterPlayout`] holds a bot request (its goodbye,
//!   hang-up or transfer) the same way, so the caller hears what the bot queued before it.
//! - [`Pacer`]: a drift-free frame scheduler on the monotonic clock (deadline `n` is always
//!   `start + n * period`), with a cap on catch-up after a stall.
//! - [`Chunker`]: the caller's audio cut into fixed chunks for the bot (100 ms for Exotel, 20 ms
//!   for Twilio), each with its timestamp in milliseconds since the stream started.
//!
//! None of them allocates per frame: the playout ring holds what is queued, so it grows (doubling,
//! up to the bound) only when the bot gets further ahead than it has been since the queue last
//! emptied, and goes back to its first size when the queue empties; the chunker's buffer only
//! grows when a single input is larger than anything seen before.

use std::collections::VecDeque;
use std::fmt;
use std::ops::Deref;
use std::time::Duration;

use thiserror::Error;
use tokio::time::Instant;

/// Length of one playout frame: RTP media runs at 20 ms packets.
pub const FRAME_DURATION: Duration = Duration::from_millis(20);

/// Frames per second at [`FRAME_DURATION`]; a sample rate must be a multiple of this so a frame is
/// a whole number of samples.
const FRAMES_PER_SECOND: u32 = 50;

/// Highest sample rate accepted (a sanity bound against absurd allocations).
pub const MAX_SAMPLE_RATE: u32 = 192_000;

/// Largest playout bound accepted by [`PlayoutQueue::try_new`] (a session lasts at most 60 minutes).
pub const MAX_BUFFERED: Duration = Duration::from_secs(3600);

/// The playout ring's size at first and after the queue empties (capped by the bound). A bot
/// that keeps pace needs much less; one that sends ahead makes the ring grow. A ring sized to the
/// bound (60 s by default, about 1 MB at 8 kHz) would fill each call's memory as it wraps.
const INITIAL_RING: Duration = Duration::from_millis(250);

/// Largest chunk accepted by [`Chunker::try_new`].
pub const MAX_CHUNK: Duration = Duration::from_secs(1);

/// Pending marks kept per queue; beyond this, [`PlayoutQueue::push_mark`] discards the mark
/// (counted in [`PlayoutStats::marks_discarded`]) so a misbehaving bot cannot grow memory without
/// bound.
pub const MAX_PENDING_MARKS: usize = 1024;

/// Default cap on frames returned by one [`Pacer::tick`] after a stall.
pub const DEFAULT_MAX_CATCH_UP: u32 = 5;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Invalid parameters for a [`PlayoutQueue`] or a [`Chunker`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FramingError {
    /// The sample rate is zero, too high, or (for playout) gives no whole-sample 20 ms frame.
    #[error("unsupported sample rate {0} Hz (must be a positive multiple of 50, at most 192000)")]
    SampleRate(u32),
    /// The playout bound is above [`MAX_BUFFERED`].
    #[error("playout bound {0:?} is above the maximum of {MAX_BUFFERED:?}")]
    BufferTooLarge(Duration),
    /// The chunk duration is zero, above [`MAX_CHUNK`], or not a whole number of samples.
    #[error("chunk duration {duration:?} is not a whole number of samples at {sample_rate} Hz (or is zero or above {MAX_CHUNK:?})")]
    ChunkDuration {
        /// The requested chunk duration.
        duration: Duration,
        /// The stream's sample rate.
        sample_rate: u32,
    },
}

/// Samples in `duration` at `rate`, and whether the count is exact (no fractional sample).
fn samples_in(rate: u32, duration: Duration) -> (u128, bool) {
    let scaled = u128::from(rate) * duration.as_nanos();
    (scaled / NANOS_PER_SEC, scaled.is_multiple_of(NANOS_PER_SEC))
}

/// Duration of `samples` samples at `rate` (truncated to whole nanoseconds).
fn duration_of(samples: u64, rate: u32) -> Duration {
    let nanos = u128::from(samples) * NANOS_PER_SEC / u128::from(rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// What [`PlayoutQueue::push_audio`] did with the samples it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PushResult {
    /// Samples appended to the queue.
    pub accepted: usize,
    /// Samples dropped because the queue was full (the newest ones: the tail of the input).
    pub dropped: usize,
}

/// One frame handed out by [`PlayoutQueue::next_frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// The frame carries bot audio. If fewer than a frame's worth was queued, the rest of the
    /// frame is padded with silence (zeros).
    Audio {
        /// First audio frame after silence (or after a `clear`): the RTP side sets the marker bit.
        talkspurt_start: bool,
        /// Samples of real audio at the start of the frame; the remainder is padding.
        samples: usize,
    },
    /// Nothing was queued: the output is all zeros. The caller decides whether to send comfort
    /// silence or nothing at all.
    Silence,
}

impl Frame {
    /// True for [`Frame::Audio`].
    pub fn is_audio(&self) -> bool {
        matches!(self, Frame::Audio { .. })
    }

    /// True when this frame starts a talk spurt (RTP marker bit).
    pub fn talkspurt_start(&self) -> bool {
        matches!(
            self,
            Frame::Audio {
                talkspurt_start: true,
                ..
            }
        )
    }
}

/// Counters kept by a [`PlayoutQueue`] over its lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlayoutStats {
    /// Frames handed out that carried audio.
    pub frames_played: u64,
    /// Frames handed out as silence (queue empty).
    pub silence_frames: u64,
    /// Samples of bot audio handed out (padding not included).
    pub samples_played: u64,
    /// Samples dropped because the queue was full.
    pub samples_dropped: u64,
    /// Calls to `push_audio` that had to drop samples.
    pub overflows: u64,
    /// Calls to `clear`.
    pub clears: u64,
    /// Samples discarded by `clear`.
    pub samples_cleared: u64,
    /// Marks returned by `poll_mark`.
    pub marks_echoed: u64,
    /// Marks discarded because [`MAX_PENDING_MARKS`] were already pending.
    pub marks_discarded: u64,
}

/// The bot's audio queued for the caller, re-framed into fixed frames, with marks and clear.
///
/// Positions are absolute sample counters: `pushed` counts every sample ever accepted and
/// `played` every sample handed out or cleared. A mark stores the value of `pushed` when it was
/// placed and is due once `played` reaches it; `clear` simply moves `played` up to `pushed`.
pub struct PlayoutQueue {
    sample_rate: u32,
    frame_samples: usize,
    /// Most samples queued at once (the playout bound).
    bound: usize,
    /// Ring storage; its length is the ring's size: at least what is queued, at most `bound`.
    ring: Vec<i16>,
    /// The ring's size when the queue is empty.
    initial: usize,
    /// Index of the oldest queued sample.
    head: usize,
    /// Samples queued.
    len: usize,
    /// Samples ever accepted.
    pushed: u64,
    /// Samples ever handed out or cleared.
    played: u64,
    /// Pending marks with the value of `pushed` when each was placed (non-decreasing).
    marks: VecDeque<(u64, String)>,
    /// The previous frame carried audio (so the next audio frame continues the talk spurt).
    in_talkspurt: bool,
    stats: PlayoutStats,
}

impl fmt::Debug for PlayoutQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlayoutQueue")
            .field("sample_rate", &self.sample_rate)
            .field("capacity", &self.bound)
            .field("allocated", &self.ring.len())
            .field("queued", &self.len)
            .field("pending_marks", &self.marks.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl PlayoutQueue {
    /// A queue for audio at `sample_rate`, holding at most `max_buffered` of audio (e.g. 60 s).
    ///
    /// The ring starts at 250 ms (or the bound if smaller) and grows as audio is queued, up to
    /// the bound. A zero bound makes a queue that drops everything (it does not panic).
    ///
    /// # Panics
    ///
    /// If the parameters are invalid (see [`PlayoutQueue::try_new`]).
    pub fn new(sample_rate: u32, max_buffered: Duration) -> Self {
        match Self::try_new(sample_rate, max_buffered) {
            Ok(queue) => queue,
            Err(err) => panic!("invalid playout queue parameters: {err}"),
        }
    }

    /// Like [`PlayoutQueue::new`], but reports invalid parameters: a sample rate that is zero, not a
    /// multiple of 50 (no whole-sample 20 ms frame) or above [`MAX_SAMPLE_RATE`], or a bound above
    /// [`MAX_BUFFERED`].
    pub fn try_new(sample_rate: u32, max_buffered: Duration) -> Result<Self, FramingError> {
        if sample_rate == 0
            || sample_rate > MAX_SAMPLE_RATE
            || !sample_rate.is_multiple_of(FRAMES_PER_SECOND)
        {
            return Err(FramingError::SampleRate(sample_rate));
        }
        if max_buffered > MAX_BUFFERED {
            return Err(FramingError::BufferTooLarge(max_buffered));
        }
        let (capacity, _) = samples_in(sample_rate, max_buffered);
        // Bounded by MAX_SAMPLE_RATE * MAX_BUFFERED, which fits in usize on 32-bit targets too.
        let bound =
            usize::try_from(capacity).map_err(|_| FramingError::BufferTooLarge(max_buffered))?;
        let (initial, _) = samples_in(sample_rate, INITIAL_RING);
        // At most MAX_SAMPLE_RATE samples.
        let initial = (initial as usize).min(bound);
        Ok(Self {
            sample_rate,
            frame_samples: (sample_rate / FRAMES_PER_SECOND) as usize,
            bound,
            ring: vec![0; initial],
            initial,
            head: 0,
            len: 0,
            pushed: 0,
            played: 0,
            marks: VecDeque::with_capacity(8),
            in_talkspurt: false,
            stats: PlayoutStats::default(),
        })
    }

    /// The stream's sample rate in Hz.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Samples in one 20 ms frame (`sample_rate / 50`): the size of the buffer to pass to
    /// [`PlayoutQueue::next_frame`].
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// Most samples the queue can hold.
    pub fn capacity(&self) -> usize {
        self.bound
    }

    /// Samples the ring has room for now, without growing: at least [`Self::queued_samples`],
    /// at most [`Self::capacity`].
    pub fn allocated_samples(&self) -> usize {
        self.ring.len()
    }

    /// Samples queued and not yet handed out.
    pub fn queued_samples(&self) -> usize {
        self.len
    }

    /// Audio queued and not yet handed out.
    pub fn queued(&self) -> Duration {
        duration_of(self.len as u64, self.sample_rate)
    }

    /// True when no audio is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True from a frame of audio handed out until a frame of silence is: the bot is talking.
    pub fn in_talkspurt(&self) -> bool {
        self.in_talkspurt
    }

    /// Marks placed and not yet returned by [`PlayoutQueue::poll_mark`] (due or not).
    pub fn pending_marks(&self) -> usize {
        self.marks.len()
    }

    /// Lifetime counters.
    pub fn stats(&self) -> PlayoutStats {
        self.stats
    }

    /// Appends bot audio. What does not fit under the bound is dropped (the newest samples, i.e.
    /// the tail of `pcm`) and counted; this never panics. It allocates only when the ring must
    /// grow to hold the audio (see [`PlayoutQueue::try_new`]).
    pub fn push_audio(&mut self, pcm: &[i16]) -> PushResult {
        let accepted = pcm.len().min(self.bound - self.len);
        let dropped = pcm.len() - accepted;
        if accepted > 0 {
            if self.len + accepted > self.ring.len() {
                self.grow(self.len + accepted);
            }
            let capacity = self.ring.len();
            let tail = (self.head + self.len) % capacity;
            let first = accepted.min(capacity - tail);
            self.ring[tail..tail + first].copy_from_slice(&pcm[..first]);
            self.ring[..accepted - first].copy_from_slice(&pcm[first..accepted]);
            self.len += accepted;
            self.pushed += accepted as u64;
        }
        if dropped > 0 {
            self.stats.samples_dropped += dropped as u64;
            self.stats.overflows += 1;
        }
        PushResult { accepted, dropped }
    }

    /// Places a mark after all audio queued so far. It becomes due (see
    /// [`PlayoutQueue::poll_mark`]) once that audio has been handed out; at once if nothing is
    /// queued.
    ///
    /// Returns false, and discards the mark, if [`MAX_PENDING_MARKS`] marks are already pending.
    pub fn push_mark(&mut self, name: String) -> bool {
        if self.marks.len() >= MAX_PENDING_MARKS {
            self.stats.marks_discarded += 1;
            return false;
        }
        self.marks.push_back((self.pushed, name));
        true
    }

    /// Drops all queued audio and makes every pending mark due at once. The next frame is silence
    /// (or, if audio is pushed before it, the start of a new talk spurt).
    pub fn clear(&mut self) {
        self.stats.clears += 1;
        self.stats.samples_cleared += self.len as u64;
        self.played = self.pushed;
        self.head = 0;
        self.len = 0;
        self.in_talkspurt = false;
        self.shrink();
    }

    /// Makes room for `needed` samples (at most `bound`): at least double the ring, so a bot
    /// sending ahead costs a few reallocations, not one per message. The queued samples move to
    /// the front of the new ring in order.
    fn grow(&mut self, needed: usize) {
        let size = needed.max(2 * self.ring.len()).min(self.bound);
        let mut ring = vec![0; size];
        let first = self.len.min(self.ring.len() - self.head);
        ring[..first].copy_from_slice(&self.ring[self.head..self.head + first]);
        ring[first..self.len].copy_from_slice(&self.ring[..self.len - first]);
        self.ring = ring;
        self.head = 0;
    }

    /// Gives back what the ring grew by, once nothing is queued (`head` is then 0): what a burst
    /// of audio took is not kept for the rest of the call.
    fn shrink(&mut self) {
        if self.ring.len() > self.initial {
            self.ring.truncate(self.initial);
            self.ring.shrink_to_fit();
        }
    }

    /// Fills `out` with the next frame and returns what it holds.
    ///
    /// `out` should be [`PlayoutQueue::frame_samples`] long (one 20 ms frame); its length is the
    /// number of samples handed out, so another packet time also works. Queued audio is copied in
    /// order; if less than a frame is queued, the rest is zero padding. An empty queue gives
    /// [`Frame::Silence`] with `out` zeroed. The frame that empties the queue also gives back
    /// what the ring grew by.
    pub fn next_frame(&mut self, out: &mut [i16]) -> Frame {
        let take = out.len().min(self.len);
        if take == 0 {
            out.fill(0);
            self.in_talkspurt = false;
            self.stats.silence_frames += 1;
            return Frame::Silence;
        }
        let capacity = self.ring.len();
        let first = take.min(capacity - self.head);
        out[..first].copy_from_slice(&self.ring[self.head..self.head + first]);
        out[first..take].copy_from_slice(&self.ring[..take - first]);
        out[take..].fill(0);
        self.len -= take;
        // Restart at the front when drained, so an idle queue keeps touching the same memory.
        if self.len == 0 {
            self.head = 0;
            self.shrink();
        } else {
            self.head = (self.head + take) % capacity;
        }
        self.played += take as u64;
        self.stats.samples_played += take as u64;
        self.stats.frames_played += 1;
        let talkspurt_start = !self.in_talkspurt;
        self.in_talkspurt = true;
        Frame::Audio {
            talkspurt_start,
            samples: take,
        }
    }

    /// The next mark whose audio has all been handed out (or cleared), in the order the marks were
    /// placed; `None` if no mark is due. Call in a loop after each frame and after `clear` or
    /// `push_mark`.
    pub fn poll_mark(&mut self) -> Option<String> {
        match self.marks.front() {
            Some((position, _)) if *position <= self.played => {
                self.stats.marks_echoed += 1;
                self.marks.pop_front().map(|(_, name)| name)
            }
            _ => None,
        }
    }

    /// Holds `action` until the audio queued now has been handed out (or cleared), and at most
    /// `limit` from `now`. Audio pushed later does not delay it.
    pub fn after_playout<T>(&self, action: T, now: Instant, limit: Duration) -> AfterPlayout<T> {
        AfterPlayout {
            action,
            position: self.pushed,
            latest: now + limit,
        }
    }

    /// Whether `held` is due: its audio has played, or its time is up.
    pub fn is_due<T>(&self, held: &AfterPlayout<T>, now: Instant) -> bool {
        self.played >= held.position || now >= held.latest
    }
}

/// Something held until the caller has heard the audio queued before it, like a mark, but at
/// most until `latest`: a bot's end of stream, hang-up or transfer, so its last words are heard
/// and a stalled queue cannot hold the call. Made by [`PlayoutQueue::after_playout`], checked
/// with [`PlayoutQueue::is_due`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfterPlayout<T> {
    /// What is held.
    pub action: T,
    /// The queue's `pushed` counter when it was placed: due once `played` reaches it.
    position: u64,
    latest: Instant,
}

/// A drift-free frame scheduler on the monotonic clock.
///
/// Deadline `n` is exactly `start + n * period`, computed from the start each time, so lateness in
/// one tick never shifts later deadlines. After a stall (the task was not scheduled for a while),
/// [`Pacer::tick`] reports every frame that came due, but at most `max_catch_up` of them
/// ([`DEFAULT_MAX_CATCH_UP`] = 5 by default): the caller sends those back to back and the older
/// deadlines are skipped (counted in [`Pacer::skipped`]) rather than bursting seconds of audio at
/// the caller. Skipped deadlines are not played; the audio they would have carried stays queued.
/// The grid itself is kept, so [`Pacer::frame_index`] still tells the RTP side how many frame
/// periods have elapsed (for its timestamp).
#[derive(Debug, Clone)]
pub struct Pacer {
    start: Instant,
    period: Duration,
    /// Index of the next deadline not yet reported or skipped.
    next: u64,
    skipped: u64,
    max_catch_up: u32,
}

impl Pacer {
    /// A pacer whose first deadline is `start` itself, then one every `period`.
    ///
    /// # Panics
    ///
    /// If `period` is zero.
    pub fn new(start: Instant, period: Duration) -> Self {
        assert!(!period.is_zero(), "pacer period must not be zero");
        Self {
            start,
            period,
            next: 0,
            skipped: 0,
            max_catch_up: DEFAULT_MAX_CATCH_UP,
        }
    }

    /// Sets the most frames one [`Pacer::tick`] may return (at least 1).
    pub fn with_max_catch_up(mut self, frames: u32) -> Self {
        self.max_catch_up = frames.max(1);
        self
    }

    /// The frame period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Deadline number `n`: `start + n * period`, exactly.
    pub fn deadline(&self, n: u64) -> Instant {
        let nanos = self.period.as_nanos() * u128::from(n);
        let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
        // The remainder is below one second, so it fits in u32.
        let subsec = (nanos % NANOS_PER_SEC) as u32;
        self.start + Duration::new(secs, subsec)
    }

    /// The next deadline not yet reported: sleep until this, then call [`Pacer::tick`].
    pub fn next_deadline(&self) -> Instant {
        self.deadline(self.next)
    }

    /// Deadlines reported or skipped so far (the index of [`Pacer::next_deadline`]).
    pub fn frame_index(&self) -> u64 {
        self.next
    }

    /// Deadlines skipped by the catch-up cap so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// How many frames are due at `now`: 0 before the next deadline, normally 1, more after a
    /// stall but never above the catch-up cap (the excess deadlines are skipped).
    pub fn tick(&mut self, now: Instant) -> u32 {
        if now < self.next_deadline() {
            return 0;
        }
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        let latest = u64::try_from(elapsed / self.period.as_nanos()).unwrap_or(u64::MAX);
        // `latest >= self.next` because `now` is at or past the next deadline.
        let due = latest.saturating_sub(self.next).saturating_add(1);
        self.next = latest.saturating_add(1);
        let cap = u64::from(self.max_catch_up);
        if due > cap {
            self.skipped += due - cap;
            self.max_catch_up
        } else {
            // `due <= cap <= u32::MAX`.
            due as u32
        }
    }
}

/// One chunk of caller audio from a [`Chunker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// The samples (a full chunk, or the shorter remainder from [`Chunker::flush`]).
    pub samples: &'a [i16],
    /// Milliseconds from the stream start to the first sample of this chunk.
    pub timestamp_ms: u64,
    /// Chunk number, counting from 1 (Exotel's `chunk` field).
    pub seq: u64,
}

impl Deref for Chunk<'_> {
    type Target = [i16];

    fn deref(&self) -> &[i16] {
        self.samples
    }
}

/// Caller audio cut into fixed-size chunks for the bot.
///
/// Push each incoming frame, then take chunks in a loop:
///
/// ```ignore
/// chunker.push(&frame);
/// while let Some(chunk) = chunker.take_chunk() {
///     send(chunk.seq, chunk.timestamp_ms, chunk.samples);
/// }
/// ```
///
/// The buffer is reused; it only grows when one `push` brings more than a chunk's worth at once
/// and more than any push before.
#[derive(Debug, Clone)]
pub struct Chunker {
    sample_rate: u32,
    chunk_samples: usize,
    buf: Vec<i16>,
    /// Index in `buf` of the first sample not yet emitted.
    start: usize,
    /// Samples emitted (in chunks or flushed) since the stream started.
    emitted: u64,
    /// Chunks emitted.
    chunks: u64,
}

impl Chunker {
    /// A chunker for audio at `sample_rate` cutting chunks of `chunk` (20 to 200 ms in practice:
    /// 100 ms for Exotel, 20 ms for Twilio).
    ///
    /// # Panics
    ///
    /// If the parameters are invalid (see [`Chunker::try_new`]).
    pub fn new(sample_rate: u32, chunk: Duration) -> Self {
        match Self::try_new(sample_rate, chunk) {
            Ok(chunker) => chunker,
            Err(err) => panic!("invalid chunker parameters: {err}"),
        }
    }

    /// Like [`Chunker::new`], but reports invalid parameters: a sample rate that is zero or above
    /// [`MAX_SAMPLE_RATE`], or a chunk that is empty, longer than [`MAX_CHUNK`] or not a whole
    /// number of samples.
    pub fn try_new(sample_rate: u32, chunk: Duration) -> Result<Self, FramingError> {
        if sample_rate == 0 || sample_rate > MAX_SAMPLE_RATE {
            return Err(FramingError::SampleRate(sample_rate));
        }
        let (samples, exact) = samples_in(sample_rate, chunk);
        if samples == 0 || !exact || chunk > MAX_CHUNK {
            return Err(FramingError::ChunkDuration {
                duration: chunk,
                sample_rate,
            });
        }
        // At most MAX_SAMPLE_RATE samples (one second).
        let chunk_samples = samples as usize;
        Ok(Self {
            sample_rate,
            chunk_samples,
            buf: Vec::with_capacity(2 * chunk_samples),
            start: 0,
            emitted: 0,
            chunks: 0,
        })
    }

    /// The stream's sample rate in Hz.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Samples in one chunk.
    pub fn chunk_samples(&self) -> usize {
        self.chunk_samples
    }

    /// Samples waiting for the current chunk to fill.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Chunks emitted so far (including a flushed remainder).
    pub fn chunks_emitted(&self) -> u64 {
        self.chunks
    }

    /// Milliseconds from the stream start to the start of the current chunk (the next one
    /// [`Chunker::take_chunk`] or [`Chunker::flush`] will return), from the samples emitted.
    pub fn timestamp_ms(&self) -> u64 {
        let ms = u128::from(self.emitted) * 1000 / u128::from(self.sample_rate);
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    /// Appends caller audio. Take the completed chunks with [`Chunker::take_chunk`].
    pub fn push(&mut self, pcm: &[i16]) {
        if self.start > 0 {
            // Move the unemitted remainder (less than a chunk after take_chunk) to the front.
            self.buf.copy_within(self.start.., 0);
            self.buf.truncate(self.buf.len() - self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(pcm);
    }

    /// The next complete chunk, if one has been filled.
    pub fn take_chunk(&mut self) -> Option<Chunk<'_>> {
        if self.buffered() < self.chunk_samples {
            return None;
        }
        let from = self.start;
        self.start += self.chunk_samples;
        Some(self.emit(from))
    }

    /// The partial remainder at the end of the stream (shorter than a chunk, not padded), or
    /// `None` if nothing is left. Complete chunks still buffered are returned first, one per
    /// call, so calling `flush` until it returns `None` drains everything.
    pub fn flush(&mut self) -> Option<Chunk<'_>> {
        let left = self.buffered();
        if left == 0 {
            return None;
        }
        let from = self.start;
        self.start += left.min(self.chunk_samples);
        Some(self.emit(from))
    }

    /// Counts and returns `buf[from..self.start]` as the next chunk.
    fn emit(&mut self, from: usize) -> Chunk<'_> {
        let timestamp_ms = self.timestamp_ms();
        self.emitted += (self.start - from) as u64;
        self.chunks += 1;
        let seq = self.chunks;
        Chunk {
            samples: &self.buf[from..self.start],
            timestamp_ms,
            seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// Distinct, never-zero sample values so padding (zero) is recognisable.
    fn ramp(from: usize, count: usize) -> Vec<i16> {
        (from..from + count)
            .map(|i| (i % 30_000) as i16 + 1)
            .collect()
    }

    /// Plays the queue until it is empty, returning every frame and its kind.
    fn drain(queue: &mut PlayoutQueue) -> Vec<(Vec<i16>, Frame)> {
        let mut frames = Vec::new();
        let mut out = vec![0; queue.frame_samples()];
        while !queue.is_empty() {
            let frame = queue.next_frame(&mut out);
            frames.push((out.clone(), frame));
        }
        frames
    }

    #[test]
    fn playout_reframes_odd_chunks_in_order_with_padding_only_at_the_end() {
        for rate in [8_000, 16_000, 24_000] {
            let mut queue = PlayoutQueue::new(rate, 60 * SECOND);
            let frame = rate as usize / 50;
            assert_eq!(queue.frame_samples(), frame);
            let sizes = [3_210, 17, 8_000, 1, 159];
            let total: usize = sizes.iter().sum();
            let mut sent = 0;
            for size in sizes {
                let result = queue.push_audio(&ramp(sent, size));
                assert_eq!(
                    result,
                    PushResult {
                        accepted: size,
                        dropped: 0
                    }
                );
                sent += size;
            }
            assert_eq!(queue.queued_samples(), total);

            let frames = drain(&mut queue);
            assert_eq!(frames.len(), total.div_ceil(frame));
            let mut heard = Vec::new();
            for (i, (samples, kind)) in frames.iter().enumerate() {
                assert_eq!(samples.len(), frame);
                let last = i == frames.len() - 1;
                let real = if last { total - i * frame } else { frame };
                assert_eq!(
                    *kind,
                    Frame::Audio {
                        talkspurt_start: i == 0,
                        samples: real
                    },
                    "frame {i} at {rate} Hz"
                );
                assert!(samples[..real].iter().all(|&s| s != 0));
                assert!(samples[real..].iter().all(|&s| s == 0));
                heard.extend_from_slice(&samples[..real]);
            }
            assert_eq!(heard, ramp(0, total));

            let mut out = vec![7; frame];
            assert_eq!(queue.next_frame(&mut out), Frame::Silence);
            assert!(out.iter().all(|&s| s == 0));
            let stats = queue.stats();
            assert_eq!(stats.frames_played, frames.len() as u64);
            assert_eq!(stats.samples_played, total as u64);
            assert_eq!(stats.silence_frames, 1);
        }
    }

    #[test]
    fn playout_marks_come_due_in_order_after_their_audio() {
        let mut queue = PlayoutQueue::new(8_000, 60 * SECOND);
        queue.push_audio(&ramp(0, 400)); // frames 0, 1 and half of 2
        queue.push_mark("a".into()); // at sample 400
        queue.push_audio(&ramp(400, 160));
        queue.push_mark("b".into()); // at sample 560
        queue.push_mark("c".into()); // also at 560
        queue.push_audio(&ramp(560, 800));
        queue.push_mark("d".into()); // at 1360, the very end
        assert_eq!(queue.poll_mark(), None, "nothing played yet");
        assert_eq!(queue.pending_marks(), 4);

        let mut out = [0; 160];
        let mut due_at = Vec::new();
        for index in 0..12 {
            queue.next_frame(&mut out);
            while let Some(name) = queue.poll_mark() {
                due_at.push((name, index));
            }
        }
        // Frame 2 hands out samples 320..480 (passing 400); frame 3 480..640 (passing 560);
        // frame 8 ends exactly at 1360.
        assert_eq!(
            due_at,
            vec![
                ("a".to_string(), 2),
                ("b".to_string(), 3),
                ("c".to_string(), 3),
                ("d".to_string(), 8),
            ]
        );
        assert_eq!(queue.stats().marks_echoed, 4);
        assert_eq!(queue.pending_marks(), 0);
    }

    #[test]
    fn playout_mark_with_partial_last_frame_is_due_with_that_frame() {
        let mut queue = PlayoutQueue::new(16_000, 60 * SECOND);
        queue.push_audio(&ramp(0, 3_210)); // 10 full frames of 320 and 10 samples
        queue.push_mark("end".into());
        let mut out = [0; 320];
        for index in 0..11 {
            let frame = queue.next_frame(&mut out);
            let mark = queue.poll_mark();
            if index < 10 {
                assert_eq!(mark, None, "frame {index}");
            } else {
                assert_eq!(
                    frame,
                    Frame::Audio {
                        talkspurt_start: false,
                        samples: 10
                    }
                );
                assert_eq!(mark.as_deref(), Some("end"));
            }
        }
    }

    #[test]
    fn playout_mark_on_empty_queue_is_due_at_once() {
        let mut queue = PlayoutQueue::new(8_000, 60 * SECOND);
        queue.push_mark("first".into());
        assert_eq!(queue.poll_mark().as_deref(), Some("first"));
        assert_eq!(queue.poll_mark(), None);

        // Also once earlier audio has fully played out.
        queue.push_audio(&ramp(0, 160));
        let mut out = [0; 160];
        queue.next_frame(&mut out);
        queue.push_mark("after".into());
        assert_eq!(queue.poll_mark().as_deref(), Some("after"));

        // Audio pushed after the mark does not hold it back.
        queue.push_mark("before-audio".into());
        queue.push_audio(&ramp(0, 1_000));
        assert_eq!(queue.poll_mark().as_deref(), Some("before-audio"));
        assert_eq!(queue.pending_marks(), 0);
    }

    #[test]
    fn playout_clear_drops_audio_at_once_and_echoes_pending_marks() {
        let mut queue = PlayoutQueue::new(8_000, 60 * SECOND);
        queue.push_audio(&ramp(0, 1_600));
        queue.push_mark("m1".into());
        queue.push_audio(&ramp(1_600, 6_400));
        queue.push_mark("m2".into());
        let mut out = [0; 160];
        assert!(queue.next_frame(&mut out).talkspurt_start());
        assert!(queue.next_frame(&mut out).is_audio());
        assert_eq!(queue.poll_mark(), None);

        queue.clear();
        assert!(queue.is_empty());
        assert_eq!(queue.queued(), Duration::ZERO);
        assert_eq!(queue.poll_mark().as_deref(), Some("m1"));
        assert_eq!(queue.poll_mark().as_deref(), Some("m2"));
        assert_eq!(queue.poll_mark(), None);
        // The very next frame carries none of the dropped audio.
        assert_eq!(queue.next_frame(&mut out), Frame::Silence);
        assert!(out.iter().all(|&s| s == 0));

        // Audio and marks after the clear behave normally.
        queue.push_audio(&ramp(50_000, 200));
        queue.push_mark("m3".into());
        assert_eq!(queue.poll_mark(), None);
        assert_eq!(
            queue.next_frame(&mut out),
            Frame::Audio {
                talkspurt_start: true,
                samples: 160
            }
        );
        assert_eq!(out.to_vec(), ramp(50_000, 160));
        assert_eq!(queue.poll_mark(), None);
        assert_eq!(
            queue.next_frame(&mut out),
            Frame::Audio {
                talkspurt_start: false,
                samples: 40
            }
        );
        assert_eq!(out[..40].to_vec(), ramp(50_160, 40));
        assert_eq!(queue.poll_mark().as_deref(), Some("m3"));

        let stats = queue.stats();
        assert_eq!(stats.clears, 1);
        assert_eq!(stats.samples_cleared, 8_000 - 320);
        assert_eq!(stats.samples_played, 320 + 200);
    }

    #[test]
    fn playout_clear_while_talking_restarts_the_talkspurt() {
        let mut queue = PlayoutQueue::new(8_000, 60 * SECOND);
        let mut out = [0; 160];
        queue.push_audio(&ramp(0, 800));
        assert!(queue.next_frame(&mut out).talkspurt_start());
        queue.clear();
        queue.push_audio(&ramp(0, 800));
        // No silence frame in between, but the audio is discontinuous: new talk spurt.
        assert!(queue.next_frame(&mut out).talkspurt_start());
        assert!(!queue.next_frame(&mut out).talkspurt_start());
    }

    #[test]
    fn playout_clear_on_empty_queue_is_harmless() {
        let mut queue = PlayoutQueue::new(8_000, 60 * SECOND);
        queue.clear();
        queue.clear();
        assert_eq!(queue.poll_mark(), None);
        assert_eq!(queue.stats().clears, 2);
        assert_eq!(queue.stats().samples_cleared, 0);
    }

    #[test]
    fn playout_overflow_drops_newest_and_counts() {
        // 100 ms at 8 kHz: 800 samples.
        let mut queue = PlayoutQueue::new(8_000, Duration::from_millis(100));
        assert_eq!(queue.capacity(), 800);
        assert_eq!(
            queue.push_audio(&ramp(0, 500)),
            PushResult {
                accepted: 500,
                dropped: 0
            }
        );
        assert_eq!(
            queue.push_audio(&ramp(500, 500)),
            PushResult {
                accepted: 300,
                dropped: 200
            }
        );
        queue.push_mark("full".into());
        assert_eq!(
            queue.push_audio(&ramp(1_000, 10)),
            PushResult {
                accepted: 0,
                dropped: 10
            }
        );
        assert_eq!(queue.queued(), Duration::from_millis(100));
        let stats = queue.stats();
        assert_eq!(stats.samples_dropped, 210);
        assert_eq!(stats.overflows, 2);

        // What was kept is the oldest audio, in order, and the mark sits after it.
        let frames = drain(&mut queue);
        assert_eq!(frames.len(), 5);
        let heard: Vec<i16> = frames.iter().flat_map(|(s, _)| s.clone()).collect();
        assert_eq!(heard, ramp(0, 800));
        assert_eq!(queue.poll_mark().as_deref(), Some("full"));

        // A push far larger than the whole queue is fine too.
        let result = queue.push_audio(&vec![1; 100_000]);
        assert_eq!(
            result,
            PushResult {
                accepted: 800,
                dropped: 99_200
            }
        );
    }

    #[test]
    fn playout_zero_bound_drops_everything_without_panicking() {
        let mut queue = PlayoutQueue::new(8_000, Duration::ZERO);
        assert_eq!(queue.capacity(), 0);
        assert_eq!(
            queue.push_audio(&ramp(0, 160)),
            PushResult {
                accepted: 0,
                dropped: 160
            }
        );
        assert_eq!(queue.push_audio(&[]), PushResult::default());
        queue.push_mark("m".into());
        assert_eq!(queue.poll_mark().as_deref(), Some("m"));
        let mut out = [5; 160];
        assert_eq!(queue.next_frame(&mut out), Frame::Silence);
        assert!(out.iter().all(|&s| s == 0));
        queue.clear();
    }

    #[test]
    fn playout_ring_wraps_without_losing_order() {
        // 70 ms at 8 kHz = 560 samples: not a multiple of the frame, so wraps split frames.
        let mut queue = PlayoutQueue::new(8_000, Duration::from_millis(70));
        let mut out = [0; 160];
        let mut seed: u32 = 12_345;
        let mut next_in = 0;
        let mut accepted = Vec::new();
        let mut played = Vec::new();
        let mut dropped = 0;
        for _ in 0..5_000 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let size = (seed >> 16) as usize % 300;
            let chunk = ramp(next_in, size);
            next_in += size;
            let result = queue.push_audio(&chunk);
            assert_eq!(result.accepted + result.dropped, size);
            // Only the oldest part (a prefix) is kept.
            accepted.extend_from_slice(&chunk[..result.accepted]);
            dropped += result.dropped;
            for _ in 0..(seed >> 8) % 3 {
                if let Frame::Audio { samples, .. } = queue.next_frame(&mut out) {
                    played.extend_from_slice(&out[..samples]);
                }
            }
        }
        while let Frame::Audio { samples, .. } = queue.next_frame(&mut out) {
            played.extend_from_slice(&out[..samples]);
        }
        assert_eq!(played, accepted);
        assert!(dropped > 0, "the test should exercise overflow");
        assert_eq!(queue.stats().samples_dropped, dropped as u64);
        assert_eq!(queue.stats().samples_played, played.len() as u64);
    }

    #[test]
    fn playout_ring_grows_with_what_is_queued_keeps_order_and_shrinks_when_empty() {
        // The bot sends ahead (about 1,000 samples a step against 160 played): the ring grows
        // past its first 250 ms while wrapped, up to the 60 s bound, and overflows there.
        let mut queue = PlayoutQueue::new(8_000, 60 * SECOND);
        assert_eq!(queue.capacity(), 480_000);
        assert_eq!(queue.allocated_samples(), 2_000);
        let mut out = [0; 160];
        let mut seed: u32 = 777;
        let mut next_in = 0;
        let (mut accepted, mut played) = (Vec::new(), Vec::new());
        let mut sizes = Vec::new();
        for _ in 0..800 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let size = (seed >> 16) as usize % 2_000;
            let chunk = ramp(next_in, size);
            next_in += size;
            let result = queue.push_audio(&chunk);
            accepted.extend_from_slice(&chunk[..result.accepted]);
            assert!(queue.allocated_samples() >= queue.queued_samples());
            assert!(queue.allocated_samples() <= queue.capacity());
            if sizes.last() != Some(&queue.allocated_samples()) {
                sizes.push(queue.allocated_samples());
            }
            if let Frame::Audio { samples, .. } = queue.next_frame(&mut out) {
                played.extend_from_slice(&out[..samples]);
            }
        }
        // Doubling from 250 ms to the bound, no step in between.
        assert_eq!(
            sizes,
            [2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 480_000]
        );
        assert!(queue.stats().samples_dropped > 0, "should reach the bound");
        assert_eq!(queue.queued_samples(), 480_000 - 160);
        for _ in 0..1_000 {
            if let Frame::Audio { samples, .. } = queue.next_frame(&mut out) {
                played.extend_from_slice(&out[..samples]);
            }
        }
        // Draining half the queue keeps the ring; the order is intact.
        assert_eq!(queue.allocated_samples(), 480_000);
        while let Frame::Audio { samples, .. } = queue.next_frame(&mut out) {
            played.extend_from_slice(&out[..samples]);
        }
        assert_eq!(played, accepted);
        // Empty: back to 250 ms.
        assert_eq!(queue.allocated_samples(), 2_000);

        // A clear gives the growth back too; the queue works on as before.
        queue.push_audio(&ramp(0, 20_000));
        assert_eq!(queue.allocated_samples(), 20_000);
        queue.clear();
        assert_eq!(queue.allocated_samples(), 2_000);
        queue.push_audio(&ramp(5, 200));
        assert_eq!(
            queue.next_frame(&mut out),
            Frame::Audio {
                talkspurt_start: true,
                samples: 160
            }
        );
        assert_eq!(out.to_vec(), ramp(5, 160));

        // A bound under 250 ms is the whole ring from the start.
        let small = PlayoutQueue::new(8_000, Duration::from_millis(70));
        assert_eq!(small.allocated_samples(), 560);
        assert_eq!(
            PlayoutQueue::new(24_000, 60 * SECOND).allocated_samples(),
            6_000
        );
    }

    #[test]
    fn playout_talkspurt_start_only_on_first_audio_after_silence() {
        let mut queue = PlayoutQueue::new(8_000, 60 * SECOND);
        let mut out = [0; 160];
        let mut flags = Vec::new();
        let mut step = |queue: &mut PlayoutQueue, push: usize| {
            if push > 0 {
                queue.push_audio(&ramp(0, push));
            }
            let frame = queue.next_frame(&mut out);
            flags.push(match frame {
                Frame::Silence => None,
                Frame::Audio {
                    talkspurt_start, ..
                } => Some(talkspurt_start),
            });
        };
        step(&mut queue, 0); // silence
        step(&mut queue, 400); // start
        step(&mut queue, 0); // continue
        step(&mut queue, 0); // partial frame, still the same spurt
        step(&mut queue, 0); // silence
        step(&mut queue, 0); // silence
        step(&mut queue, 160); // new spurt
        step(&mut queue, 160); // continued without a gap
        step(&mut queue, 0); // silence
        assert_eq!(
            flags,
            vec![
                None,
                Some(true),
                Some(false),
                Some(false),
                None,
                None,
                Some(true),
                Some(false),
                None
            ]
        );
    }

    #[test]
    fn playout_queued_reports_duration() {
        let mut queue = PlayoutQueue::new(24_000, 60 * SECOND);
        assert_eq!(queue.queued(), Duration::ZERO);
        queue.push_audio(&[1; 24_000 + 480]);
        assert_eq!(queue.queued(), Duration::from_millis(1_020));
        let mut out = [0; 480];
        queue.next_frame(&mut out);
        assert_eq!(queue.queued(), SECOND);
        assert_eq!(queue.capacity(), 60 * 24_000);
    }

    #[test]
    fn playout_invalid_parameters_are_errors() {
        assert_eq!(
            PlayoutQueue::try_new(0, SECOND).unwrap_err(),
            FramingError::SampleRate(0)
        );
        assert_eq!(
            PlayoutQueue::try_new(11_025, SECOND).unwrap_err(),
            FramingError::SampleRate(11_025)
        );
        assert_eq!(
            PlayoutQueue::try_new(1_000_000, SECOND).unwrap_err(),
            FramingError::SampleRate(1_000_000)
        );
        assert!(matches!(
            PlayoutQueue::try_new(8_000, Duration::MAX),
            Err(FramingError::BufferTooLarge(_))
        ));
        assert!(Chunker::try_new(0, Duration::from_millis(20)).is_err());
        assert!(Chunker::try_new(8_000, Duration::ZERO).is_err());
        // 8 kHz: one sample is 125 µs, so 100.1 ms is not whole samples.
        assert!(Chunker::try_new(8_000, Duration::from_micros(100_100)).is_err());
        assert!(Chunker::try_new(8_000, Duration::from_secs(2)).is_err());
        assert!(Chunker::try_new(8_000, Duration::from_micros(100_125)).is_ok());
        let err = Chunker::try_new(8_000, Duration::ZERO).unwrap_err();
        assert!(err.to_string().contains("8000 Hz"));
    }

    #[test]
    fn playout_pending_marks_are_bounded() {
        let mut queue = PlayoutQueue::new(8_000, 60 * SECOND);
        queue.push_audio(&[1; 160]);
        for i in 0..MAX_PENDING_MARKS {
            assert!(queue.push_mark(i.to_string()));
        }
        assert!(!queue.push_mark("one too many".into()));
        assert_eq!(queue.stats().marks_discarded, 1);
        let mut out = [0; 160];
        queue.next_frame(&mut out);
        for i in 0..MAX_PENDING_MARKS {
            assert_eq!(queue.poll_mark(), Some(i.to_string()));
        }
        assert_eq!(queue.poll_mark(), None);
    }

    #[test]
    fn playout_pacer_has_no_drift_over_10000_frames() {
        let start = Instant::now();
        let period = Duration::from_millis(20);
        let mut pacer = Pacer::new(start, period);
        let mut lateness_seed: u64 = 1;
        for n in 0..10_000u32 {
            let deadline = pacer.next_deadline();
            assert_eq!(deadline, start + period * n);
            assert_eq!(pacer.frame_index(), u64::from(n));
            // Just before the deadline nothing is due.
            if n > 0 {
                assert_eq!(pacer.tick(deadline - Duration::from_nanos(1)), 0);
            }
            // Wake up late by up to 19 ms; it must not shift later deadlines.
            lateness_seed = lateness_seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let late = Duration::from_micros((lateness_seed >> 33) % 19_000);
            assert_eq!(pacer.tick(deadline + late), 1, "frame {n}");
        }
        assert_eq!(pacer.next_deadline(), start + Duration::from_secs(200));
        assert_eq!(pacer.skipped(), 0);
    }

    #[test]
    fn playout_pacer_caps_catch_up_after_a_stall() {
        let start = Instant::now();
        let period = Duration::from_millis(20);
        let mut pacer = Pacer::new(start, period);
        assert_eq!(pacer.tick(start), 1);
        // Three periods late: all three frames are due (under the cap).
        assert_eq!(pacer.tick(start + Duration::from_millis(65)), 3);
        assert_eq!(pacer.next_deadline(), start + period * 4);
        // A 500 ms stall: 24 deadlines due (4..=27), capped at 5, 19 skipped.
        assert_eq!(pacer.tick(start + Duration::from_millis(555)), 5);
        assert_eq!(pacer.skipped(), 19);
        // The grid is kept: the next deadline is the next multiple of the period.
        assert_eq!(pacer.next_deadline(), start + period * 28);
        assert_eq!(pacer.frame_index(), 28);
        assert_eq!(pacer.tick(start + period * 28), 1);

        let mut custom = Pacer::new(start, period).with_max_catch_up(2);
        assert_eq!(custom.tick(start + SECOND), 2);
        assert_eq!(custom.skipped(), 49);
        let mut at_least_one = Pacer::new(start, period).with_max_catch_up(0);
        assert_eq!(at_least_one.tick(start + SECOND), 1);
    }

    #[test]
    fn playout_pacer_before_start_is_idle() {
        let start = Instant::now() + SECOND;
        let mut pacer = Pacer::new(start, Duration::from_millis(20));
        assert_eq!(pacer.tick(start - Duration::from_millis(1)), 0);
        assert_eq!(pacer.tick(start), 1);
        assert_eq!(pacer.tick(start), 0);
        assert_eq!(pacer.deadline(3), start + Duration::from_millis(60));
        // Periods that are not whole milliseconds stay exact.
        let odd = Pacer::new(start, Duration::from_nanos(333_333_333));
        assert_eq!(odd.deadline(3), start + Duration::from_nanos(999_999_999));
        assert_eq!(odd.deadline(6), start + Duration::new(1, 999_999_998));
    }

    #[tokio::test(start_paused = true)]
    async fn playout_paced_loop_on_virtual_time_echoes_marks_on_schedule() {
        let start = Instant::now();
        let mut pacer = Pacer::new(start, FRAME_DURATION);
        let mut queue = PlayoutQueue::new(8_000, 60 * SECOND);
        queue.push_audio(&ramp(0, 8_000)); // one second: 50 frames
        queue.push_mark("one-second".into());
        let mut out = vec![0; queue.frame_samples()];
        let mut echoed_at = None;
        let mut frames = 0u64;
        while echoed_at.is_none() {
            tokio::time::sleep_until(pacer.next_deadline()).await;
            for _ in 0..pacer.tick(Instant::now()) {
                queue.next_frame(&mut out);
                frames += 1;
            }
            if let Some(name) = queue.poll_mark() {
                echoed_at = Some((name, Instant::now() - start, frames));
            }
        }
        // Frame 49 (the 50th) is sent at t = 980 ms and completes the second of audio.
        assert_eq!(
            echoed_at,
            Some(("one-second".to_string(), Duration::from_millis(980), 50))
        );
        assert_eq!(pacer.skipped(), 0);
    }

    /// Feeds 20 ms frames and collects (seq, timestamp, length) of every chunk.
    fn chunk_20ms_frames(rate: u32, chunk: Duration, frames: usize) -> Vec<(u64, u64, usize)> {
        let mut chunker = Chunker::new(rate, chunk);
        let frame = rate as usize / 50;
        let capacity = chunker.buf.capacity();
        let mut seen = Vec::new();
        let mut next = 0;
        let mut expected_next = 0;
        for _ in 0..frames {
            chunker.push(&ramp(next, frame));
            next += frame;
            while let Some(chunk) = chunker.take_chunk() {
                assert_eq!(chunk.samples, &ramp(expected_next, chunk.len())[..]);
                expected_next += chunk.len();
                seen.push((chunk.seq, chunk.timestamp_ms, chunk.len()));
            }
        }
        assert_eq!(chunker.buf.capacity(), capacity, "no reallocation");
        seen
    }

    #[test]
    fn playout_chunker_cuts_100ms_chunks_with_timestamps() {
        for (rate, size) in [(8_000, 800), (16_000, 1_600), (24_000, 2_400)] {
            let seen = chunk_20ms_frames(rate, Duration::from_millis(100), 50);
            assert_eq!(seen.len(), 10, "{rate} Hz");
            for (i, &(seq, timestamp, len)) in seen.iter().enumerate() {
                assert_eq!(seq, i as u64 + 1);
                assert_eq!(timestamp, i as u64 * 100);
                assert_eq!(len, size);
            }
        }
    }

    #[test]
    fn playout_chunker_20ms_at_8k_is_160_samples() {
        let chunker = Chunker::new(8_000, Duration::from_millis(20));
        assert_eq!(chunker.chunk_samples(), 160);
        let seen = chunk_20ms_frames(8_000, Duration::from_millis(20), 25);
        assert_eq!(seen.len(), 25);
        for (i, &(seq, timestamp, len)) in seen.iter().enumerate() {
            assert_eq!((seq, timestamp, len), (i as u64 + 1, i as u64 * 20, 160));
        }
    }

    #[test]
    fn playout_chunker_odd_inputs_and_flush() {
        let mut chunker = Chunker::new(8_000, Duration::from_millis(100));
        let mut out = Vec::new();
        let mut sent = 0;
        for size in [17, 3_210, 1, 799, 0, 150] {
            chunker.push(&ramp(sent, size));
            sent += size;
            while let Some(chunk) = chunker.take_chunk() {
                assert_eq!(chunk.len(), 800);
                assert_eq!(chunk.timestamp_ms, (chunk.seq - 1) * 100);
                out.extend_from_slice(&chunk);
            }
        }
        // 4,177 samples: 5 chunks and 177 left over.
        assert_eq!(chunker.chunks_emitted(), 5);
        assert_eq!(chunker.buffered(), 177);
        assert_eq!(chunker.timestamp_ms(), 500);
        let tail = chunker.flush().expect("a remainder");
        assert_eq!((tail.seq, tail.timestamp_ms, tail.len()), (6, 500, 177));
        out.extend_from_slice(&tail);
        assert_eq!(chunker.flush(), None);
        assert_eq!(out, ramp(0, sent));
        // 4,177 samples at 8 kHz = 522.125 ms.
        assert_eq!(chunker.timestamp_ms(), 522);

        // The stream continues after a flush with consistent timestamps.
        chunker.push(&ramp(0, 800));
        let chunk = chunker.take_chunk().expect("a chunk");
        assert_eq!((chunk.seq, chunk.timestamp_ms), (7, 522));
    }

    #[test]
    fn playout_chunker_flush_drains_full_chunks_first() {
        let mut chunker = Chunker::new(8_000, Duration::from_millis(20));
        chunker.push(&ramp(0, 400));
        let mut lens = Vec::new();
        while let Some(chunk) = chunker.flush() {
            lens.push((chunk.len(), chunk.timestamp_ms));
        }
        assert_eq!(lens, vec![(160, 0), (160, 20), (80, 40)]);
    }

    #[test]
    fn after_playout_waits_for_the_audio_queued_before_it_and_no_later_audio() {
        let now = Instant::now();
        let mut queue = PlayoutQueue::new(8_000, 60 * SECOND);
        // The bot's goodbye: 3 s in one message, then its request.
        queue.push_audio(&ramp(0, 24_000));
        let held = queue.after_playout("hangup", now, 10 * SECOND);
        // Audio sent after the request plays later but does not hold it.
        queue.push_audio(&ramp(0, 8_000));
        let mut out = vec![0; queue.frame_samples()];
        let mut frames = 0;
        while !queue.is_due(&held, now) {
            assert!(queue.next_frame(&mut out).is_audio());
            frames += 1;
        }
        assert_eq!(frames, 150, "due after exactly the 3 s queued before it");
        assert_eq!(held.action, "hangup");
    }

    #[test]
    fn after_playout_is_due_at_once_on_an_empty_queue_and_after_clear() {
        let now = Instant::now();
        let mut queue = PlayoutQueue::new(16_000, 60 * SECOND);
        assert!(queue.is_due(&queue.after_playout((), now, SECOND), now));
        queue.push_audio(&ramp(0, 16_000));
        let held = queue.after_playout((), now, 10 * SECOND);
        assert!(!queue.is_due(&held, now));
        queue.clear();
        assert!(queue.is_due(&held, now));
    }

    #[test]
    fn after_playout_is_due_at_its_limit_whatever_is_queued() {
        let now = Instant::now();
        let mut queue = PlayoutQueue::new(8_000, 60 * SECOND);
        queue.push_audio(&ramp(0, 80_000));
        let held = queue.after_playout((), now, 2 * SECOND);
        assert!(!queue.is_due(&held, now + 2 * SECOND - Duration::from_millis(1)));
        assert!(queue.is_due(&held, now + 2 * SECOND));
        // A zero limit cuts the goodbye at once.
        assert!(queue.is_due(&queue.after_playout((), now, Duration::ZERO), now));
    }
}
