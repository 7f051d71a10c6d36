//! RFC 4733 telephone-events (DTMF) received and sent.
//!
//! Receiving: the RFC 4733 sender repeats one event many times (a packet every ptime with a
//! growing duration, all with the event's start timestamp) and ends it with three identical
//! packets carrying the E bit. [`Rfc4733Receiver`] turns that into exactly one [`DtmfEvent`]
//! per key press. Sending: [`Rfc4733Sender`] yields the packets for one key press, the caller
//! wraps them in RTP. (SIP INFO bodies are signalling: the sip crate's `info` module reads them.)

use std::time::Duration;

use tokio::time::Instant;

/// How long an event may go without packets before it is reported even though no end packet
/// came: the sender repeats every ptime (typically 20-50 ms), so a second of silence means all
/// its end packets were lost.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(1);

/// Volume given to a digit that came without one (SIP INFO carries none): -10 dBm0, a typical
/// keypad level.
pub const DEFAULT_VOLUME: u8 = 10;

/// One key press.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfEvent {
    /// `'0'`-`'9'`, `'*'`, `'#'` or `'A'`-`'D'`.
    pub digit: char,
    pub duration_ms: u32,
    /// Power level as RFC 4733 encodes it: 0 to 63, meaning 0 to -63 dBm0 (larger is quieter).
    pub volume: u8,
}

/// The digit of RFC 4733 event codes 0-15; the other telephone-events (flash, tones) are not DTMF.
pub fn event_to_digit(event: u8) -> Option<char> {
    match event {
        0..=9 => Some(char::from(b'0' + event)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + (event - 12))),
        _ => None,
    }
}

/// The RFC 4733 event code of a digit; `a`-`d` are accepted as `A`-`D`.
pub fn digit_to_event(digit: char) -> Option<u8> {
    match digit {
        '0'..='9' => Some(digit as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(digit as u8 - b'A' + 12),
        'a'..='d' => Some(digit as u8 - b'a' + 12),
        _ => None,
    }
}

fn samples_to_ms(samples: u32, clock_rate: u32) -> u32 {
    (u64::from(samples) * 1000 / u64::from(clock_rate.max(1))) as u32
}

/// What the receiver saw, for the call record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DtmfStats {
    /// Events reported (each key press once).
    pub events: u64,
    /// Reported events whose end packets were all lost (found by a new event or the timeout).
    pub events_without_end: u64,
    /// End packets repeated by the sender after the first, and stragglers of finished events.
    pub end_retransmissions_ignored: u64,
    /// Payloads shorter than the 4-byte event.
    pub malformed: u64,
    /// Well-formed telephone-events that are not DTMF digits (codes above 15).
    pub unsupported: u64,
}

#[derive(Debug, Clone, Copy)]
struct CurrentEvent {
    timestamp: u32,
    code: u8,
    /// Largest duration seen, in timestamp units (packets may arrive out of order).
    duration: u32,
    volume: u8,
    last_packet: Instant,
    reported: bool,
}

/// Receives the RFC 4733 `telephone-event` payloads of one RTP stream (one SSRC).
///
/// An event is identified by its RTP timestamp: all its packets, including the three end
/// packets, carry the timestamp of its start, and the next key press gets a new one. That is
/// how a digit pressed twice is told apart from one long press.
#[derive(Debug)]
pub struct Rfc4733Receiver {
    clock_rate: u32,
    current: Option<CurrentEvent>,
    /// A second event that became ready in the same call as another; handed out next.
    queued: Option<DtmfEvent>,
    stats: DtmfStats,
}

impl Rfc4733Receiver {
    /// `clock_rate` is the telephone-event clock from the SDP (8000 for `telephone-event/8000`).
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: if clock_rate == 0 { 8000 } else { clock_rate },
            current: None,
            queued: None,
            stats: DtmfStats::default(),
        }
    }

    pub fn stats(&self) -> DtmfStats {
        self.stats
    }

    /// Takes one telephone-event payload (the RTP payload, after the header). Returns the
    /// digit when this packet completes a key press: at its first end packet, or, for a
    /// previous event whose end packets were lost, at the first packet of the next event.
    ///
    /// When two events become ready at once (a lost-end event followed by a one-packet event)
    /// the second is returned by the next `on_packet` or [`Self::poll_timeout`] call.
    pub fn on_packet(
        &mut self,
        timestamp: u32,
        _marker: bool,
        payload: &[u8],
        now: Instant,
    ) -> Option<DtmfEvent> {
        let out = self.queued.take();
        let Some(p) = payload.get(..4) else {
            self.stats.malformed += 1;
            return out;
        };
        let code = p[0];
        let end = p[1] & 0x80 != 0;
        let volume = p[1] & 0x3f;
        let duration = u32::from(u16::from_be_bytes([p[2], p[3]]));

        if let Some(cur) = &mut self.current {
            if cur.timestamp == timestamp && cur.code == code {
                cur.last_packet = now;
                if cur.reported {
                    // The sender sends the end packet three times; stragglers of an event
                    // reported by timeout land here too.
                    if end {
                        self.stats.end_retransmissions_ignored += 1;
                    }
                    return out;
                }
                cur.duration = cur.duration.max(duration);
                cur.volume = volume;
                if !end {
                    return out;
                }
                let event = finish(cur, &mut self.stats, self.clock_rate, false);
                return self.emit(out, event);
            }
            // A different timestamp earlier than the current event's is a reordered straggler
            // of an older event: it must not restart (and report again) that event.
            if (timestamp.wrapping_sub(cur.timestamp) as i32) < 0 {
                if end {
                    self.stats.end_retransmissions_ignored += 1;
                }
                return out;
            }
        }

        // A new event: the previous one ended even if we never saw its end packets.
        let mut out = out;
        if let Some(cur) = self.current.as_mut().filter(|c| !c.reported) {
            let stale = finish(cur, &mut self.stats, self.clock_rate, true);
            out = self.emit(out, stale);
        }
        if event_to_digit(code).is_none() {
            self.stats.unsupported += 1;
            self.current = None;
            return out;
        }
        let cur = self.current.insert(CurrentEvent {
            timestamp,
            code,
            duration,
            volume,
            last_packet: now,
            reported: false,
        });
        if end {
            let event = finish(cur, &mut self.stats, self.clock_rate, false);
            out = self.emit(out, event);
        }
        out
    }

    /// Reports an event that has had no packet for [`EVENT_TIMEOUT`] (all its end packets
    /// were lost and no new event followed), or an event queued by [`Self::on_packet`].
    /// Call it every few tens of milliseconds, for example on the media tick.
    pub fn poll_timeout(&mut self, now: Instant) -> Option<DtmfEvent> {
        if let Some(q) = self.queued.take() {
            return Some(q);
        }
        let cur = self.current.as_mut().filter(|c| {
            !c.reported && now.saturating_duration_since(c.last_packet) >= EVENT_TIMEOUT
        })?;
        Some(finish(cur, &mut self.stats, self.clock_rate, true))
    }

    /// Returns `first` if there is one (queueing `second`), else `second`.
    fn emit(&mut self, first: Option<DtmfEvent>, second: DtmfEvent) -> Option<DtmfEvent> {
        match first {
            Some(f) => {
                self.queued = Some(second);
                Some(f)
            }
            None => Some(second),
        }
    }
}

/// Marks an event reported, counts it and builds it.
fn finish(
    cur: &mut CurrentEvent,
    stats: &mut DtmfStats,
    clock_rate: u32,
    without_end: bool,
) -> DtmfEvent {
    cur.reported = true;
    stats.events += 1;
    if without_end {
        stats.events_without_end += 1;
    }
    DtmfEvent {
        // The code was checked when the event started.
        digit: event_to_digit(cur.code).unwrap_or('?'),
        duration_ms: samples_to_ms(cur.duration, clock_rate),
        volume: cur.volume,
    }
}

/// One RFC 4733 packet of a key press; the caller puts it in RTP with the `telephone-event`
/// payload type, the next sequence number and the event's start timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfPacket {
    /// Set on the first packet of the event (RFC 4733 §2.5.1.1).
    pub marker: bool,
    /// Added to the event's start timestamp: always 0, every packet of an event carries the
    /// same timestamp (§2.5.1.2); kept so callers need no special case.
    pub timestamp_offset: u32,
    pub payload: [u8; 4],
    /// One of the final packets (E bit set); the caller may send these back to back.
    pub end: bool,
}

/// Yields the RFC 4733 packets of one key press (§2.5): one packet per ptime with the
/// duration so far (the first with the marker bit), then the final packet with the E bit and
/// the whole duration, three times so that losing one or two does not lose the end.
#[derive(Debug, Clone)]
pub struct Rfc4733Sender {
    code: u8,
    volume: u8,
    /// Whole event in timestamp units (capped to the 16-bit field).
    total: u32,
    step: u32,
    /// Duration of the next non-final packet.
    next: u32,
    ends_left: u8,
    first: bool,
}

impl Rfc4733Sender {
    /// Packets for `digit` lasting `duration_ms`, one every `ptime_ms` at `clock_rate`.
    /// `None` for a character that is not a DTMF digit. Volume is capped at 63; durations
    /// beyond the 16-bit field (8 s at 8 kHz) are capped rather than split into segments.
    pub fn packets(
        digit: char,
        duration_ms: u32,
        volume: u8,
        clock_rate: u32,
        ptime_ms: u32,
    ) -> Option<Self> {
        let code = digit_to_event(digit)?;
        let clock_rate = if clock_rate == 0 { 8000 } else { clock_rate };
        let ptime_ms = if ptime_ms == 0 { 20 } else { ptime_ms };
        let total = (u64::from(duration_ms) * u64::from(clock_rate) / 1000).min(0xffff) as u32;
        let step = (u64::from(ptime_ms) * u64::from(clock_rate) / 1000).clamp(1, 0xffff) as u32;
        Some(Self {
            code,
            volume: volume.min(63),
            total,
            step,
            next: step,
            ends_left: 3,
            first: true,
        })
    }

    fn packet(&mut self, duration: u32, end: bool) -> DtmfPacket {
        let marker = std::mem::take(&mut self.first);
        let d = (duration as u16).to_be_bytes();
        DtmfPacket {
            marker,
            timestamp_offset: 0,
            payload: [
                self.code,
                if end { 0x80 } else { 0 } | self.volume,
                d[0],
                d[1],
            ],
            end,
        }
    }

    fn remaining(&self) -> usize {
        let progress = if self.next < self.total {
            ((self.total - self.next).div_ceil(self.step)) as usize
        } else {
            0
        };
        progress + usize::from(self.ends_left)
    }
}

impl Iterator for Rfc4733Sender {
    type Item = DtmfPacket;

    fn next(&mut self) -> Option<DtmfPacket> {
        if self.next < self.total {
            let d = self.next;
            self.next += self.step;
            return Some(self.packet(d, false));
        }
        if self.ends_left == 0 {
            return None;
        }
        self.ends_left -= 1;
        Some(self.packet(self.total, true))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.remaining();
        (n, Some(n))
    }
}

impl ExactSizeIterator for Rfc4733Sender {}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(code: u8, end: bool, volume: u8, duration: u16) -> [u8; 4] {
        let d = duration.to_be_bytes();
        [code, if end { 0x80 } else { 0 } | volume, d[0], d[1]]
    }

    /// The packets of SIPp's `dtmf_2833_1.pcap`: digit 1 at timestamp 13280, a marker start
    /// packet with duration 0, durations growing by 320 every 20 ms, then the end packet
    /// (duration 2240) three times.
    fn sipp_digit(code: u8, timestamp: u32) -> Vec<(u32, bool, [u8; 4])> {
        let mut v: Vec<_> = (0..7u16)
            .map(|i| (timestamp, i == 0, payload(code, false, 10, i * 320)))
            .collect();
        for _ in 0..3 {
            v.push((timestamp, false, payload(code, true, 10, 2240)));
        }
        v
    }

    #[test]
    fn sipp_sequence_reports_the_digit_once() {
        let mut rx = Rfc4733Receiver::new(8000);
        let t0 = Instant::now();
        let mut got = Vec::new();
        for (i, (ts, m, p)) in sipp_digit(1, 13280).into_iter().enumerate() {
            let now = t0 + Duration::from_millis(20 * i.min(7) as u64);
            if let Some(e) = rx.on_packet(ts, m, &p, now) {
                got.push((i, e));
            }
        }
        assert_eq!(
            got,
            vec![(
                7,
                DtmfEvent {
                    digit: '1',
                    duration_ms: 280,
                    volume: 10
                }
            )]
        );
        assert_eq!(rx.poll_timeout(t0 + Duration::from_secs(5)), None);
        let s = rx.stats();
        assert_eq!(s.events, 1);
        assert_eq!(s.end_retransmissions_ignored, 2);
        assert_eq!(s.malformed, 0);
    }

    #[test]
    fn star_and_pound_codes() {
        let mut rx = Rfc4733Receiver::new(8000);
        let t0 = Instant::now();
        let mut digits = String::new();
        for (code, ts) in [(10u8, 85760u32), (11, 92640)] {
            for (t, m, p) in sipp_digit(code, ts) {
                if let Some(e) = rx.on_packet(t, m, &p, t0) {
                    digits.push(e.digit);
                }
            }
        }
        assert_eq!(digits, "*#");
    }

    #[test]
    fn lost_end_packets_reported_by_next_event() {
        let mut rx = Rfc4733Receiver::new(8000);
        let t0 = Instant::now();
        // Digit 5 without its end packets, then digit 6.
        for (ts, m, p) in sipp_digit(5, 1000).into_iter().take(7) {
            assert_eq!(rx.on_packet(ts, m, &p, t0), None);
        }
        let first = rx.on_packet(5000, true, &payload(6, false, 10, 0), t0);
        assert_eq!(
            first,
            Some(DtmfEvent {
                digit: '5',
                duration_ms: 240,
                volume: 10
            })
        );
        let mut rest = Vec::new();
        for (ts, m, p) in sipp_digit(6, 5000).into_iter().skip(1) {
            rest.extend(rx.on_packet(ts, m, &p, t0));
        }
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].digit, '6');
        assert_eq!(rx.stats().events, 2);
        assert_eq!(rx.stats().events_without_end, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn lost_end_packets_reported_by_timeout() {
        let mut rx = Rfc4733Receiver::new(8000);
        for (ts, m, p) in sipp_digit(9, 70000).into_iter().take(4) {
            assert_eq!(rx.on_packet(ts, m, &p, Instant::now()), None);
            tokio::time::advance(Duration::from_millis(20)).await;
        }
        assert_eq!(rx.poll_timeout(Instant::now()), None);
        tokio::time::advance(EVENT_TIMEOUT).await;
        let e = rx.poll_timeout(Instant::now()).expect("timed out event");
        assert_eq!((e.digit, e.duration_ms), ('9', 120));
        assert_eq!(rx.poll_timeout(Instant::now()), None);
        // A late end packet for it is not a second key press.
        assert_eq!(
            rx.on_packet(70000, false, &payload(9, true, 10, 2240), Instant::now()),
            None
        );
        assert_eq!(rx.stats().events, 1);
        assert_eq!(rx.stats().end_retransmissions_ignored, 1);
    }

    #[test]
    fn same_digit_twice_reported_twice() {
        let mut rx = Rfc4733Receiver::new(8000);
        let t0 = Instant::now();
        let mut got = Vec::new();
        for ts in [8000u32, 12000] {
            for (t, m, p) in sipp_digit(4, ts) {
                got.extend(rx.on_packet(t, m, &p, t0));
            }
        }
        assert_eq!(got.iter().map(|e| e.digit).collect::<String>(), "44");
        // A straggler of the first press after the second began changes nothing.
        assert_eq!(
            rx.on_packet(8000, false, &payload(4, true, 10, 2240), t0),
            None
        );
        assert_eq!(rx.stats().events, 2);
    }

    #[test]
    fn lost_end_then_one_packet_event_queues_the_second() {
        let mut rx = Rfc4733Receiver::new(8000);
        let t0 = Instant::now();
        assert_eq!(
            rx.on_packet(100, true, &payload(2, false, 10, 160), t0),
            None
        );
        let a = rx.on_packet(900, true, &payload(3, true, 10, 400), t0);
        assert_eq!(a.map(|e| e.digit), Some('2'));
        let b = rx.poll_timeout(t0);
        assert_eq!(b.map(|e| (e.digit, e.duration_ms)), Some(('3', 50)));
        assert_eq!(rx.stats().events, 2);
    }

    #[test]
    fn malformed_and_unsupported_ignored() {
        let mut rx = Rfc4733Receiver::new(8000);
        let t0 = Instant::now();
        assert_eq!(rx.on_packet(1, true, &[], t0), None);
        assert_eq!(rx.on_packet(1, true, &[1, 2, 3], t0), None);
        // Event 16 (hook flash) is not a digit, even with its end bit.
        assert_eq!(rx.on_packet(2, true, &payload(16, true, 10, 800), t0), None);
        let s = rx.stats();
        assert_eq!((s.malformed, s.unsupported, s.events), (2, 1, 0));
    }

    #[test]
    fn sender_follows_rfc4733() {
        let pkts: Vec<_> = Rfc4733Sender::packets('7', 100, 10, 8000, 20)
            .unwrap()
            .collect();
        // 100 ms at 8 kHz = 800: durations 160, 320, 480, 640, then 800 with E three times.
        let durations: Vec<u16> = pkts
            .iter()
            .map(|p| u16::from_be_bytes([p.payload[2], p.payload[3]]))
            .collect();
        assert_eq!(durations, [160, 320, 480, 640, 800, 800, 800]);
        assert!(pkts[0].marker);
        assert!(pkts[1..].iter().all(|p| !p.marker));
        assert_eq!(pkts.iter().filter(|p| p.end).count(), 3);
        assert!(pkts[4..].iter().all(|p| p.end && p.payload[1] == 0x80 | 10));
        assert!(pkts
            .iter()
            .all(|p| p.timestamp_offset == 0 && p.payload[0] == 7));
        assert_eq!(
            Rfc4733Sender::packets('7', 100, 10, 8000, 20)
                .unwrap()
                .len(),
            7
        );
        assert!(Rfc4733Sender::packets('x', 100, 10, 8000, 20).is_none());
        // Shorter than one ptime: only the end packets, the first with the marker.
        let short: Vec<_> = Rfc4733Sender::packets('#', 10, 99, 8000, 20)
            .unwrap()
            .collect();
        assert_eq!(short.len(), 3);
        assert!(short[0].marker && short.iter().all(|p| p.end));
        assert_eq!(short[0].payload, [11, 0x80 | 63, 0, 80]);
    }

    #[test]
    fn sender_output_parsed_back() {
        let mut rx = Rfc4733Receiver::new(48000);
        let t0 = Instant::now();
        let mut got = Vec::new();
        for (i, d) in "159*#0AD".chars().enumerate() {
            let ts = 10_000 + i as u32 * 20_000;
            for p in Rfc4733Sender::packets(d, 120, 12, 48000, 20).unwrap() {
                got.extend(rx.on_packet(ts + p.timestamp_offset, p.marker, &p.payload, t0));
            }
        }
        assert_eq!(got.iter().map(|e| e.digit).collect::<String>(), "159*#0AD");
        assert!(got.iter().all(|e| e.duration_ms == 120 && e.volume == 12));
        assert_eq!(rx.stats().end_retransmissions_ignored, 16);
    }
}
