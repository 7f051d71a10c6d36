//! RTCP (RFC 3550): sender and receiver reports, reception statistics and a MOS estimate.
//!
//! Sans-I/O: [`ReceptionStats`] and [`SenderStats`] are fed with the RTP packets of a leg,
//! the `write_*` functions append a compound packet to a caller's buffer (reused, so no
//! allocation per report once it has grown), and [`parse`] reads what the peer sends. Time is
//! passed in; the only clock read here is [`ntp_now`], for the wall-clock field of reports.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use voicegate_codec::Codec;

/// RTCP packet types (RFC 3550 §12.1).
pub const PT_SR: u8 = 200;
pub const PT_RR: u8 = 201;
pub const PT_SDES: u8 = 202;
pub const PT_BYE: u8 = 203;
pub const PT_APP: u8 = 204;

/// A sequence jump larger than this is a restart, not loss (RFC 3550 A.1).
const MAX_DROPOUT: u16 = 3000;
/// A packet this far behind the highest is a restart, not reordering (RFC 3550 A.1).
const MAX_MISORDER: u16 = 100;
const SEQ_MOD: u32 = 1 << 16;
/// How many sequence numbers, the highest included, [`ReceptionStats`] remembers for spotting
/// duplicates: every packet A.1 can take as reordered (up to `MAX_MISORDER` behind) fits.
const SEEN_WINDOW: u16 = u128::BITS as u16;
const _: () = assert!(MAX_MISORDER < SEEN_WINDOW);

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// One reception report block (RFC 3550 §6.4.1): what a receiver says about one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// The source this block is about.
    pub ssrc: u32,
    /// Lost fraction since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Packets lost since the start, 24-bit signed on the wire. Ours are never negative
    /// (duplicates are not counted as received); a peer's may be (RFC 3550 counts them).
    pub cumulative_lost: i32,
    /// Highest sequence number received, extended with the wrap count in the top 16 bits.
    pub extended_highest_seq: u32,
    /// Interarrival jitter in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP time of the last SR from the source, 0 if none.
    pub last_sr: u32,
    /// Time since that SR was received, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

/// What [`ReceptionStats::on_rtp`] made of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reception {
    /// A new packet of the stream (in order, after a gap, or late): counted as received.
    Counted,
    /// A copy of a packet already received (RFC 4733 sends each end packet three times
    /// under one sequence number): counted on its own, not as received.
    Duplicate,
    /// Far from the stream: taken as a stray, counted only if the next packet confirms a
    /// sequence restart.
    Stray,
}

/// Reception statistics of one incoming RTP source (RFC 3550 A.1, A.3 and A.8).
///
/// Call [`Self::reset`] when the source's SSRC changes; a sequence restart under the same
/// SSRC is detected (two consecutive packets far from the old sequence) and restarts the
/// counts as A.1 does.
///
/// Unlike A.3, duplicates are not counted as received: they are counted on their own, so
/// the loss (expected − received) is never negative.
#[derive(Debug, Clone, Default)]
pub struct ReceptionStats {
    started: bool,
    max_seq: u16,
    /// Which of the last [`SEEN_WINDOW`] sequence numbers arrived: bit `n` is `max_seq − n`.
    /// A fixed-size bitmap, so spotting a duplicate costs no allocation per packet.
    seen: u128,
    duplicates: u64,
    /// Wrap count, shifted: added to `max_seq` it makes the extended sequence number.
    cycles: u32,
    base_seq: u32,
    /// Sequence number (+1) of a packet far from the stream: if the next one is this, restart.
    bad_seq: u32,
    received: u64,
    bytes: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Jitter in timestamp units, scaled by 16 (the integer form of A.8).
    jitter_q4: u64,
    transit: Option<i32>,
    clock_rate: u32,
    /// Reference for arrival times in timestamp units.
    epoch: Option<Instant>,
    last_sr: Option<(u32, Instant)>,
}

impl ReceptionStats {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the source: the next packet starts a new one (new SSRC).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    fn init_seq(&mut self, seq: u16) {
        self.started = true;
        self.max_seq = seq;
        // The packet that starts the sequence is counted right after.
        self.seen = 1;
        self.cycles = 0;
        self.base_seq = u32::from(seq);
        self.bad_seq = SEQ_MOD + 1; // Never equal to a 16-bit sequence number.
        self.received = 0;
        self.duplicates = 0;
        self.bytes = 0;
        self.expected_prior = 0;
        self.received_prior = 0;
        self.transit = None;
    }

    /// Counts one RTP packet: received, duplicate, or a stray from another sequence (far
    /// jump; counted only if the next packet confirms a restart).
    pub fn on_rtp(
        &mut self,
        seq: u16,
        rtp_timestamp: u32,
        clock_rate: u32,
        payload_len: usize,
        now: Instant,
    ) -> Reception {
        if !self.started {
            self.init_seq(seq);
        } else {
            let udelta = seq.wrapping_sub(self.max_seq);
            if udelta == 0 {
                // The highest one again: always seen already.
                self.duplicates += 1;
                return Reception::Duplicate;
            } else if udelta < MAX_DROPOUT {
                // In order, possibly with a gap.
                if seq < self.max_seq {
                    self.cycles = self.cycles.wrapping_add(SEQ_MOD);
                }
                self.max_seq = seq;
                self.seen = self.seen.checked_shl(u32::from(udelta)).unwrap_or(0) | 1;
            } else if u32::from(udelta) <= SEQ_MOD - u32::from(MAX_MISORDER) {
                // A very large jump: a restart if the next packet follows this one.
                if u32::from(seq) == self.bad_seq {
                    self.init_seq(seq);
                } else {
                    self.bad_seq = (u32::from(seq) + 1) & (SEQ_MOD - 1);
                    return Reception::Stray;
                }
            } else {
                // Up to MAX_MISORDER behind the highest: late, or a copy of one received.
                let behind = self.max_seq.wrapping_sub(seq);
                // Below SEEN_WINDOW (checked at compile time); checked anyway, as network
                // input must never panic.
                let bit = 1u128.checked_shl(u32::from(behind)).unwrap_or(0);
                if self.seen & bit != 0 {
                    self.duplicates += 1;
                    return Reception::Duplicate;
                }
                self.seen |= bit;
            }
        }
        self.received += 1;
        self.bytes += payload_len as u64;
        // Duplicates stay out of the jitter too: a copy sent later under the same timestamp
        // would read as delay variation.
        self.update_jitter(rtp_timestamp, clock_rate, now);
        Reception::Counted
    }

    /// RFC 3550 A.8: J += (|D| - J) / 16, with D the change in transit time between this
    /// packet and the previous one (in arrival order), in timestamp units.
    fn update_jitter(&mut self, rtp_timestamp: u32, clock_rate: u32, now: Instant) {
        if clock_rate == 0 {
            return;
        }
        if clock_rate != self.clock_rate {
            self.clock_rate = clock_rate;
            self.transit = None;
            self.jitter_q4 = 0;
        }
        let epoch = *self.epoch.get_or_insert(now);
        let elapsed = now.saturating_duration_since(epoch).as_nanos();
        let arrival = (elapsed * u128::from(clock_rate) / 1_000_000_000) as u32;
        let transit = arrival.wrapping_sub(rtp_timestamp) as i32;
        if let Some(prev) = self.transit {
            let d = u64::from(transit.wrapping_sub(prev).unsigned_abs());
            // The integer form of A.8, kept from running away on absurd transit jumps.
            let d = d.min(u64::from(u32::MAX));
            self.jitter_q4 = (self.jitter_q4 + d).saturating_sub((self.jitter_q4 + 8) >> 4);
        }
        self.transit = Some(transit);
    }

    /// Remembers the peer's last sender report (its NTP time) for LSR/DLSR in our blocks.
    pub fn on_sender_report(&mut self, ntp: u64, now: Instant) {
        self.last_sr = Some((ntp_middle(ntp), now));
    }

    /// Packets received since the start (or restart), duplicates not included.
    pub fn packets(&self) -> u64 {
        self.received
    }

    /// Copies of packets already received, since the start (or restart).
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Payload bytes counted since the start (or restart).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Highest sequence number, with the wrap count in the top 16 bits.
    pub fn extended_highest_seq(&self) -> u32 {
        self.cycles.wrapping_add(u32::from(self.max_seq))
    }

    fn expected(&self) -> u64 {
        if !self.started {
            return 0;
        }
        let ext = u64::from(self.cycles) + u64::from(self.max_seq);
        (ext + 1).saturating_sub(u64::from(self.base_seq))
    }

    /// Packets lost since the start: expected minus received, never negative (duplicates
    /// are not received packets, and a packet older than the first one is not expected).
    pub fn cumulative_lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    /// Lost fraction (0.0-1.0) since the last [`Self::report_block`], without resetting it.
    pub fn fraction_lost(&self) -> f64 {
        let expected = self.expected() - self.expected_prior.min(self.expected());
        let received = self.received - self.received_prior.min(self.received);
        if expected == 0 || received >= expected {
            0.0
        } else {
            (expected - received) as f64 / expected as f64
        }
    }

    /// Interarrival jitter in timestamp units.
    pub fn jitter(&self) -> u32 {
        (self.jitter_q4 >> 4).min(u64::from(u32::MAX)) as u32
    }

    /// Interarrival jitter in milliseconds.
    pub fn jitter_ms(&self) -> f64 {
        if self.clock_rate == 0 {
            return 0.0;
        }
        self.jitter_q4 as f64 / 16.0 * 1000.0 / f64::from(self.clock_rate)
    }

    /// The report block about this source, and the start of a new report interval (the
    /// fraction lost is counted from here on). `now` gives the DLSR.
    pub fn report_block(&mut self, ssrc_of_source: u32, now: Instant) -> ReportBlock {
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval.saturating_sub(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval == 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval).min(255) as u8
        };
        let (last_sr, delay_since_last_sr) = match self.last_sr {
            Some((lsr, at)) => {
                let d = now.saturating_duration_since(at);
                (lsr, duration_to_q16(d))
            }
            None => (0, 0),
        };
        ReportBlock {
            ssrc: ssrc_of_source,
            fraction_lost,
            // RFC 3550 §6.4.1: clamped at the 24-bit field's largest positive value.
            cumulative_lost: self.cumulative_lost().min(0x7f_ffff) as i32,
            extended_highest_seq: self.extended_highest_seq(),
            jitter: self.jitter(),
            last_sr,
            delay_since_last_sr,
        }
    }
}

/// A duration in 1/65536 s, saturating (DLSR field).
fn duration_to_q16(d: Duration) -> u32 {
    let q = (d.as_nanos() << 16) / 1_000_000_000;
    q.min(u128::from(u32::MAX)) as u32
}

/// What we sent on one outgoing RTP stream, for our sender reports.
#[derive(Debug, Clone, Default)]
pub struct SenderStats {
    /// Packets sent (the SR field wraps at 2^32 as RFC 3550 allows).
    pub packets: u32,
    /// Payload octets sent.
    pub octets: u32,
    pub last_rtp_timestamp: u32,
    pub last_sent: Option<Instant>,
    pub clock_rate: u32,
}

impl SenderStats {
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate,
            ..Self::default()
        }
    }

    pub fn on_sent(&mut self, rtp_timestamp: u32, payload_len: usize, now: Instant) {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload_len as u32);
        self.last_rtp_timestamp = rtp_timestamp;
        self.last_sent = Some(now);
    }

    /// The RTP timestamp matching `now` on the media clock, for the SR (which pairs it with
    /// the NTP time so the receiver can sync): the last sent one plus the time since.
    pub fn rtp_timestamp_at(&self, now: Instant) -> u32 {
        match self.last_sent {
            Some(at) => {
                let elapsed = now.saturating_duration_since(at).as_nanos();
                let ticks = elapsed * u128::from(self.clock_rate) / 1_000_000_000;
                self.last_rtp_timestamp.wrapping_add(ticks as u32)
            }
            None => self.last_rtp_timestamp,
        }
    }
}

/// The wall clock as a 64-bit NTP timestamp (seconds since 1900 in the top 32 bits).
pub fn ntp_now() -> u64 {
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since_unix.as_secs().wrapping_add(NTP_UNIX_OFFSET);
    let frac = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// The middle 32 bits of an NTP timestamp: the LSR form (16.16 seconds).
pub fn ntp_middle(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// Round-trip time from a peer's report block about our stream (RFC 3550 §6.4.1):
/// arrival time − LSR − DLSR, all in 1/65536 s. `None` when the peer has had no SR from us
/// (LSR 0) or the result is impossible (clocks or fields garbled).
pub fn round_trip(block: &ReportBlock, now_ntp: u64) -> Option<Duration> {
    if block.last_sr == 0 {
        return None;
    }
    let elapsed = ntp_middle(now_ntp).wrapping_sub(block.last_sr);
    // A report block older than the SR it cites, or one from more than a minute ago, is
    // nonsense rather than a round trip.
    if block.delay_since_last_sr > elapsed || elapsed > 60 << 16 {
        return None;
    }
    let rtt = elapsed - block.delay_since_last_sr;
    let nanos = (u64::from(rtt) * 1_000_000_000) >> 16;
    Some(Duration::from_nanos(nanos))
}

/// Writes the common header; the length is patched by [`finish_packet`].
fn start_packet(out: &mut Vec<u8>, count: u8, packet_type: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0x80 | (count & 0x1f), packet_type, 0, 0]);
    start
}

/// Pads to 32 bits and sets the length field (in 32-bit words minus one).
fn finish_packet(out: &mut Vec<u8>, start: usize) {
    let pad = (4 - (out.len() - start) % 4) % 4;
    out.resize(out.len() + pad, 0);
    let words = ((out.len() - start) / 4 - 1).min(0xffff) as u16;
    out[start + 2..start + 4].copy_from_slice(&words.to_be_bytes());
}

fn write_block(out: &mut Vec<u8>, b: &ReportBlock) {
    out.extend_from_slice(&b.ssrc.to_be_bytes());
    let lost = (b.cumulative_lost.clamp(-0x80_0000, 0x7f_ffff) as u32) & 0x00ff_ffff;
    out.extend_from_slice(&((u32::from(b.fraction_lost) << 24) | lost).to_be_bytes());
    out.extend_from_slice(&b.extended_highest_seq.to_be_bytes());
    out.extend_from_slice(&b.jitter.to_be_bytes());
    out.extend_from_slice(&b.last_sr.to_be_bytes());
    out.extend_from_slice(&b.delay_since_last_sr.to_be_bytes());
}

/// A text item fits in 255 bytes; cut at a character boundary.
fn truncate_item(s: &str) -> &str {
    if s.len() <= 255 {
        return s;
    }
    let mut end = 255;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn write_sdes_cname(out: &mut Vec<u8>, ssrc: u32, cname: &str) {
    let start = start_packet(out, 1, PT_SDES);
    out.extend_from_slice(&ssrc.to_be_bytes());
    let cname = truncate_item(cname);
    out.push(1); // CNAME
    out.push(cname.len() as u8);
    out.extend_from_slice(cname.as_bytes());
    // The item list ends with a null octet, then pads to 32 bits with more nulls.
    out.push(0);
    finish_packet(out, start);
}

/// Appends a compound packet: a sender report (with up to 31 report blocks; more are left
/// out, the count field has 5 bits) and an SDES with our CNAME, as RFC 3550 §6.1 requires.
#[allow(clippy::too_many_arguments)]
pub fn write_sender_report(
    out: &mut Vec<u8>,
    ssrc: u32,
    ntp: u64,
    rtp_ts: u32,
    packets: u32,
    octets: u32,
    blocks: &[ReportBlock],
    cname: &str,
) {
    let blocks = &blocks[..blocks.len().min(31)];
    let start = start_packet(out, blocks.len() as u8, PT_SR);
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(&ntp.to_be_bytes());
    out.extend_from_slice(&rtp_ts.to_be_bytes());
    out.extend_from_slice(&packets.to_be_bytes());
    out.extend_from_slice(&octets.to_be_bytes());
    for b in blocks {
        write_block(out, b);
    }
    finish_packet(out, start);
    write_sdes_cname(out, ssrc, cname);
}

/// Appends a compound packet: a receiver report (up to 31 blocks, possibly none) and an
/// SDES with our CNAME. Sent instead of an SR while we have sent no RTP.
pub fn write_receiver_report(out: &mut Vec<u8>, ssrc: u32, blocks: &[ReportBlock], cname: &str) {
    let blocks = &blocks[..blocks.len().min(31)];
    let start = start_packet(out, blocks.len() as u8, PT_RR);
    out.extend_from_slice(&ssrc.to_be_bytes());
    for b in blocks {
        write_block(out, b);
    }
    finish_packet(out, start);
    write_sdes_cname(out, ssrc, cname);
}

/// Appends a BYE for `ssrc`. A BYE must not travel alone: append it after an SR or RR
/// written into the same buffer so the datagram is a valid compound packet.
pub fn write_bye(out: &mut Vec<u8>, ssrc: u32, reason: Option<&str>) {
    let start = start_packet(out, 1, PT_BYE);
    out.extend_from_slice(&ssrc.to_be_bytes());
    if let Some(reason) = reason.filter(|r| !r.is_empty()) {
        let reason = truncate_item(reason);
        out.push(reason.len() as u8);
        out.extend_from_slice(reason.as_bytes());
    }
    finish_packet(out, start);
}

/// One SDES chunk: a source and its CNAME, the only item we keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdesChunk {
    pub ssrc: u32,
    pub cname: Option<String>,
}

/// One packet of a compound RTCP datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcpPacket {
    SenderReport {
        ssrc: u32,
        ntp: u64,
        rtp_timestamp: u32,
        packet_count: u32,
        octet_count: u32,
        reports: Vec<ReportBlock>,
    },
    ReceiverReport {
        ssrc: u32,
        reports: Vec<ReportBlock>,
    },
    SourceDescription(Vec<SdesChunk>),
    Bye {
        sources: Vec<u32>,
        reason: Option<String>,
    },
    /// APP, XR, feedback and anything else: skipped, its packet type kept.
    Other(u8),
}

/// Why a datagram is not RTCP we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    #[error("RTCP packet shorter than its header")]
    TooShort,
    #[error("RTCP version {0}, expected 2")]
    BadVersion(u8),
    #[error("RTCP length field runs past the datagram")]
    BadLength,
    #[error("RTCP padding larger than the packet")]
    BadPadding,
    #[error("RTCP packet type {0} body does not match its count")]
    Malformed(u8),
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn read_block(b: &[u8]) -> Option<ReportBlock> {
    let word = be32(b, 4)?;
    // Sign-extend the 24-bit cumulative loss.
    let lost = ((word << 8) as i32) >> 8;
    Some(ReportBlock {
        ssrc: be32(b, 0)?,
        fraction_lost: (word >> 24) as u8,
        cumulative_lost: lost,
        extended_highest_seq: be32(b, 8)?,
        jitter: be32(b, 12)?,
        last_sr: be32(b, 16)?,
        delay_since_last_sr: be32(b, 20)?,
    })
}

fn read_blocks(body: &[u8], count: usize, pt: u8) -> Result<Vec<ReportBlock>, RtcpError> {
    // Profile-specific extensions may follow the blocks: only a shortfall is an error.
    if body.len() < count * 24 {
        return Err(RtcpError::Malformed(pt));
    }
    (0..count)
        .map(|i| read_block(&body[i * 24..]).ok_or(RtcpError::Malformed(pt)))
        .collect()
}

fn parse_sdes(body: &[u8], count: usize) -> Result<Vec<SdesChunk>, RtcpError> {
    let err = RtcpError::Malformed(PT_SDES);
    let mut chunks = Vec::with_capacity(count.min(body.len() / 8));
    let mut at = 0;
    for _ in 0..count {
        let ssrc = be32(body, at).ok_or(err)?;
        at += 4;
        let mut cname = None;
        loop {
            let kind = *body.get(at).ok_or(err)?;
            if kind == 0 {
                // End of the item list; the chunk is padded to 32 bits.
                at = (at + 4) & !3;
                break;
            }
            let len = usize::from(*body.get(at + 1).ok_or(err)?);
            let text = body.get(at + 2..at + 2 + len).ok_or(err)?;
            if kind == 1 {
                cname = Some(String::from_utf8_lossy(text).into_owned());
            }
            at += 2 + len;
        }
        chunks.push(SdesChunk { ssrc, cname });
    }
    Ok(chunks)
}

fn parse_bye(body: &[u8], count: usize) -> Result<RtcpPacket, RtcpError> {
    let err = RtcpError::Malformed(PT_BYE);
    if body.len() < count * 4 {
        return Err(err);
    }
    let sources = (0..count)
        .map(|i| be32(body, i * 4).ok_or(err))
        .collect::<Result<Vec<_>, _>>()?;
    let rest = &body[count * 4..];
    let reason = match rest.first() {
        Some(&len) if len > 0 => {
            let text = rest.get(1..1 + usize::from(len)).ok_or(err)?;
            Some(String::from_utf8_lossy(text).into_owned())
        }
        _ => None,
    };
    Ok(RtcpPacket::Bye { sources, reason })
}

/// Reads a (compound) RTCP datagram. Every packet's version and length are checked; types
/// other than SR, RR, SDES and BYE are returned as [`RtcpPacket::Other`]. A first packet
/// that is not SR/RR is accepted (reduced-size RTCP, RFC 5506).
pub fn parse(packet: &[u8]) -> Result<Vec<RtcpPacket>, RtcpError> {
    if packet.len() < 4 {
        return Err(RtcpError::TooShort);
    }
    let mut out = Vec::new();
    let mut rest = packet;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(RtcpError::TooShort);
        }
        let version = rest[0] >> 6;
        if version != 2 {
            return Err(RtcpError::BadVersion(version));
        }
        let padding = rest[0] & 0x20 != 0;
        let count = usize::from(rest[0] & 0x1f);
        let pt = rest[1];
        let len = (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1) * 4;
        let whole = rest.get(..len).ok_or(RtcpError::BadLength)?;
        rest = &rest[len..];
        let mut body = &whole[4..];
        if padding {
            let pad = usize::from(*whole.last().unwrap_or(&0));
            if pad == 0 || pad > body.len() {
                return Err(RtcpError::BadPadding);
            }
            body = &body[..body.len() - pad];
        }
        let parsed = match pt {
            PT_SR => {
                if body.len() < 24 {
                    return Err(RtcpError::Malformed(pt));
                }
                let ntp = (u64::from(be32(body, 4).unwrap_or(0)) << 32)
                    | u64::from(be32(body, 8).unwrap_or(0));
                RtcpPacket::SenderReport {
                    ssrc: be32(body, 0).unwrap_or(0),
                    ntp,
                    rtp_timestamp: be32(body, 12).unwrap_or(0),
                    packet_count: be32(body, 16).unwrap_or(0),
                    octet_count: be32(body, 20).unwrap_or(0),
                    reports: read_blocks(&body[24..], count, pt)?,
                }
            }
            PT_RR => {
                let ssrc = be32(body, 0).ok_or(RtcpError::Malformed(pt))?;
                RtcpPacket::ReceiverReport {
                    ssrc,
                    reports: read_blocks(&body[4..], count, pt)?,
                }
            }
            PT_SDES => RtcpPacket::SourceDescription(parse_sdes(body, count)?),
            PT_BYE => parse_bye(body, count)?,
            other => RtcpPacket::Other(other),
        };
        out.push(parsed);
    }
    Ok(out)
}

/// Estimated listening-and-talking MOS (1.0-4.5) from a simplified ITU-T G.107 E-model.
///
/// * One-way delay `d` (ms) = `rtt/2` + `2 × jitter` (a jitter buffer twice the measured
///   jitter deep) + codec delay (G.711: 20 ms packetisation; Opus: 20 ms frame + 6.5 ms
///   look-ahead).
/// * Delay impairment `Id = 0.024·d + 0.11·(d − 177.3)·H(d − 177.3)` (Cole & Rosenbluth's fit
///   of G.107's delay terms at default echo settings; H is the step function).
/// * Effective equipment impairment `Ie_eff = Ie + (95 − Ie)·Ppl / (Ppl + Bpl)` (G.107 §7,
///   random loss, BurstR = 1). G.711 with PLC: Ie 0, Bpl 25.1 (G.113 Appendix I). Opus: Ie 0,
///   Bpl 30 — an assumption (no G.113 value): its PLC and in-band FEC hide loss better.
/// * `R = 93.2 − Id − Ie_eff`, and MOS = 1 + 0.035·R + R·(R − 60)·(100 − R)·7·10⁻⁶, with
///   MOS 1 for R < 0 and 4.5 for R > 100.
///
/// Negative or NaN inputs count as 0; loss is capped at 100 %.
pub fn estimate_mos(loss_percent: f64, jitter_ms: f64, rtt_ms: f64, codec: Codec) -> f64 {
    fn clean(x: f64) -> f64 {
        if x.is_finite() && x > 0.0 {
            x
        } else if x == f64::INFINITY {
            f64::MAX
        } else {
            0.0
        }
    }
    let loss = clean(loss_percent).min(100.0);
    let (ie, bpl, codec_delay) = match codec {
        Codec::Pcma | Codec::Pcmu => (0.0, 25.1, 20.0),
        Codec::Opus => (0.0, 30.0, 26.5),
    };
    let d = (clean(rtt_ms) / 2.0 + 2.0 * clean(jitter_ms) + codec_delay).min(1e6);
    let id = 0.024 * d + if d > 177.3 { 0.11 * (d - 177.3) } else { 0.0 };
    let ie_eff = ie + (95.0 - ie) * loss / (loss + bpl);
    let r = 93.2 - id - ie_eff;
    if r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        (1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6).clamp(1.0, 4.5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(ssrc: u32) -> ReportBlock {
        ReportBlock {
            ssrc,
            fraction_lost: 64,
            cumulative_lost: -3,
            extended_highest_seq: 0x0001_0005,
            jitter: 123,
            last_sr: 0xdead_beef,
            delay_since_last_sr: 65536,
        }
    }

    #[test]
    fn sender_report_round_trip() {
        let mut buf = Vec::new();
        let ntp = 0xe000_0001_8000_0000;
        write_sender_report(
            &mut buf,
            0x1234,
            ntp,
            9999,
            50,
            8000,
            &[block(77)],
            "bot@gw",
        );
        assert_eq!(buf.len() % 4, 0);
        let pkts = parse(&buf).unwrap();
        assert_eq!(
            pkts,
            vec![
                RtcpPacket::SenderReport {
                    ssrc: 0x1234,
                    ntp,
                    rtp_timestamp: 9999,
                    packet_count: 50,
                    octet_count: 8000,
                    reports: vec![block(77)],
                },
                RtcpPacket::SourceDescription(vec![SdesChunk {
                    ssrc: 0x1234,
                    cname: Some("bot@gw".into())
                }]),
            ]
        );
    }

    #[test]
    fn receiver_report_round_trip() {
        let mut buf = Vec::new();
        write_receiver_report(&mut buf, 42, &[block(1), block(2)], "x");
        let pkts = parse(&buf).unwrap();
        assert_eq!(
            pkts[0],
            RtcpPacket::ReceiverReport {
                ssrc: 42,
                reports: vec![block(1), block(2)]
            }
        );
        // An empty RR (nothing received yet) is valid too.
        buf.clear();
        write_receiver_report(&mut buf, 42, &[], "");
        assert_eq!(
            parse(&buf).unwrap()[0],
            RtcpPacket::ReceiverReport {
                ssrc: 42,
                reports: vec![]
            }
        );
    }

    #[test]
    fn bye_and_compound_round_trip() {
        let mut buf = Vec::new();
        write_receiver_report(&mut buf, 7, &[block(9)], "voicegate");
        write_bye(&mut buf, 7, Some("call ended"));
        let pkts = parse(&buf).unwrap();
        assert_eq!(pkts.len(), 3);
        assert!(matches!(
            pkts[0],
            RtcpPacket::ReceiverReport { ssrc: 7, .. }
        ));
        assert!(
            matches!(&pkts[1], RtcpPacket::SourceDescription(c) if c[0].cname.as_deref() == Some("voicegate"))
        );
        assert_eq!(
            pkts[2],
            RtcpPacket::Bye {
                sources: vec![7],
                reason: Some("call ended".into())
            }
        );
        buf.clear();
        write_bye(&mut buf, 8, None);
        assert_eq!(buf.len(), 8);
        assert_eq!(
            parse(&buf).unwrap(),
            vec![RtcpPacket::Bye {
                sources: vec![8],
                reason: None
            }]
        );
    }

    #[test]
    fn other_types_skipped_and_padding_handled() {
        let mut buf = Vec::new();
        write_receiver_report(&mut buf, 1, &[], "a");
        // APP packet: 12 bytes (header, SSRC, name).
        buf.extend_from_slice(&[0x80, PT_APP, 0, 2, 0, 0, 0, 1, b'a', b'b', b'c', b'd']);
        // XR with padding bit: header + 4 body bytes, 4 of which are padding.
        buf.extend_from_slice(&[0xa0, 207, 0, 1, 0, 0, 0, 4]);
        let pkts = parse(&buf).unwrap();
        assert_eq!(pkts[2], RtcpPacket::Other(PT_APP));
        assert_eq!(pkts[3], RtcpPacket::Other(207));
    }

    #[test]
    fn garbage_rejected_without_panic() {
        assert_eq!(parse(&[]), Err(RtcpError::TooShort));
        assert_eq!(parse(&[0x80, 200]), Err(RtcpError::TooShort));
        assert_eq!(parse(&[0x40, 200, 0, 0]), Err(RtcpError::BadVersion(1)));
        assert_eq!(parse(&[0x80, 200, 0, 6, 0, 0]), Err(RtcpError::BadLength));
        // SR claiming one block with no room for it.
        let mut sr = vec![0x81, 200, 0, 6];
        sr.extend_from_slice(&[0; 24]);
        assert_eq!(parse(&sr), Err(RtcpError::Malformed(200)));
        // Padding count larger than the body.
        assert_eq!(
            parse(&[0xa0, 201, 0, 1, 0, 0, 0, 9]),
            Err(RtcpError::BadPadding)
        );
        // SDES item running past the packet.
        assert_eq!(
            parse(&[0x81, 202, 0, 2, 0, 0, 0, 1, 1, 200, b'a', 0]),
            Err(RtcpError::Malformed(202))
        );
        // A valid packet followed by a truncated one.
        let mut buf = Vec::new();
        write_bye(&mut buf, 1, None);
        buf.extend_from_slice(&[0x80, 201]);
        assert_eq!(parse(&buf), Err(RtcpError::TooShort));

        // Random bytes, and valid packets with bytes flipped or cut: never a panic.
        let mut valid = Vec::new();
        write_sender_report(&mut valid, 5, 1, 2, 3, 4, &[block(6), block(7)], "cname");
        write_bye(&mut valid, 5, Some("bye"));
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000 {
            let len = (rnd() % 120) as usize;
            let mut p: Vec<u8> = if i % 2 == 0 {
                (0..len).map(|_| rnd() as u8).collect()
            } else {
                let mut v = valid.clone();
                for _ in 0..(rnd() % 4) {
                    let at = (rnd() as usize) % v.len();
                    v[at] = rnd() as u8;
                }
                v.truncate((rnd() as usize) % (v.len() + 1));
                v
            };
            if i % 4 == 0 && !p.is_empty() {
                p[0] = 0x80 | (p[0] & 0x3f);
            }
            let _ = parse(&p);
        }
    }

    #[test]
    fn jitter_matches_hand_computation() {
        // 8 kHz, packets every 20 ms (160 ticks) sent, arriving with extra delays
        // 0, 10, 0, 30, 20 ms (= 0, 80, 0, 240, 160 ticks).
        // D: |80-0| = 80, |0-80| = 80, |240-0| = 240, |160-240| = 80.
        // J (×16, integer A.8): 0 → 80 → 155 → 385 → 441; J = 441 >> 4 = 27.
        let mut rs = ReceptionStats::new();
        let t0 = Instant::now();
        let extra = [0u64, 10, 0, 30, 20];
        for (i, e) in extra.iter().enumerate() {
            let at = t0 + Duration::from_millis(20 * i as u64 + e);
            rs.on_rtp(100 + i as u16, 5000 + 160 * i as u32, 8000, 160, at);
        }
        assert_eq!(rs.jitter(), 27);
        assert!((rs.jitter_ms() - 441.0 / 16.0 / 8.0).abs() < 1e-9);
        assert_eq!(rs.packets(), 5);
        assert_eq!(rs.bytes(), 800);
        // A perfectly paced stream has no jitter.
        let mut calm = ReceptionStats::new();
        for i in 0..50u32 {
            let at = t0 + Duration::from_millis(20 * u64::from(i));
            calm.on_rtp(i as u16, i * 160, 8000, 160, at);
        }
        assert_eq!(calm.jitter(), 0);
    }

    #[test]
    fn loss_with_gaps_and_wrap() {
        let mut rs = ReceptionStats::new();
        let t0 = Instant::now();
        let mut n = 0u32;
        let mut feed = |rs: &mut ReceptionStats, seq: u16| {
            let at = t0 + Duration::from_millis(20 * u64::from(n));
            rs.on_rtp(seq, n * 160, 8000, 160, at);
            n += 1;
        };
        // 65530..=65535, 0..=9 with 65533, 2 and 3 lost: 16 expected, 13 received.
        for seq in (65530u16..=65535).chain(0..10) {
            if ![65533, 2, 3].contains(&seq) {
                feed(&mut rs, seq);
            }
        }
        assert_eq!(rs.extended_highest_seq(), 0x0001_0009);
        assert_eq!(rs.cumulative_lost(), 3);
        assert!((rs.fraction_lost() - 3.0 / 16.0).abs() < 1e-9);
        let b = rs.report_block(0xabc, t0);
        assert_eq!(b.ssrc, 0xabc);
        assert_eq!(b.fraction_lost, (3 * 256 / 16) as u8);
        assert_eq!(b.cumulative_lost, 3);
        assert_eq!(b.extended_highest_seq, 0x0001_0009);
        assert_eq!((b.last_sr, b.delay_since_last_sr), (0, 0));

        // Next interval: 10..=19 with 15 coming late (after 19), and 8 again: a duplicate.
        // Neither moves the maximum.
        for seq in (10u16..20).filter(|s| *s != 15).chain([15, 8]) {
            feed(&mut rs, seq);
        }
        let b = rs.report_block(0xabc, t0);
        // Expected 10, received 10 (the late one counts, the duplicate does not).
        assert_eq!(b.fraction_lost, 0);
        assert_eq!(b.cumulative_lost, 3);
        assert_eq!(b.extended_highest_seq, 0x0001_0013);
        assert_eq!(rs.duplicates(), 1);

        // An interval with nothing received reports 0, not a division by zero.
        assert_eq!(rs.report_block(0xabc, t0).fraction_lost, 0);
    }

    /// Feeds `seqs` 20 ms apart; returns what each packet was taken as.
    fn feed_seqs(rs: &mut ReceptionStats, seqs: impl IntoIterator<Item = u16>) -> Vec<Reception> {
        let t0 = Instant::now();
        seqs.into_iter()
            .enumerate()
            .map(|(i, seq)| {
                let at = t0 + Duration::from_millis(20 * i as u64);
                rs.on_rtp(seq, 160 * i as u32, 8000, 4, at)
            })
            .collect()
    }

    #[test]
    fn repeated_rfc4733_end_packets_are_duplicates_not_negative_loss() {
        // SIPp's dtmf_2833_1.pcap: 0x1f30..=0x1f37, the end packet 0x1f37 sent three times.
        let mut rs = ReceptionStats::new();
        let seqs: Vec<u16> = (0x1f30..=0x1f37).chain([0x1f37, 0x1f37]).collect();
        let taken = feed_seqs(&mut rs, seqs);
        assert_eq!(taken[..8], [Reception::Counted; 8]);
        assert_eq!(taken[8..], [Reception::Duplicate; 2]);
        assert_eq!(
            (rs.packets(), rs.duplicates(), rs.cumulative_lost()),
            (8, 2, 0)
        );
        assert_eq!(rs.bytes(), 8 * 4);
        let b = rs.report_block(1, Instant::now());
        assert_eq!((b.cumulative_lost, b.fraction_lost), (0, 0));
        assert_eq!(b.extended_highest_seq, 0x1f37);
        // On the wire too: the 24-bit field reads back as 0, not as -2.
        let mut buf = Vec::new();
        write_receiver_report(&mut buf, 9, &[b], "x");
        match &parse(&buf).unwrap()[0] {
            RtcpPacket::ReceiverReport { reports, .. } => assert_eq!(reports[0].cumulative_lost, 0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn old_duplicate_within_the_window() {
        let mut rs = ReceptionStats::new();
        feed_seqs(&mut rs, 1000u16..1200);
        // 50 and 99 behind the highest (1199): copies of packets received long ago.
        assert_eq!(
            feed_seqs(&mut rs, [1149, 1100]),
            [Reception::Duplicate, Reception::Duplicate]
        );
        assert_eq!(
            (rs.packets(), rs.duplicates(), rs.cumulative_lost()),
            (200, 2, 0)
        );
        // Further behind than A.1 takes as reordering: a stray, neither counted nor a copy.
        assert_eq!(feed_seqs(&mut rs, [1000]), [Reception::Stray]);
        assert_eq!((rs.packets(), rs.duplicates()), (200, 2));
    }

    #[test]
    fn late_packet_is_received_and_its_copy_is_a_duplicate() {
        let mut rs = ReceptionStats::new();
        feed_seqs(&mut rs, (0u16..10).filter(|s| *s != 5));
        assert_eq!(rs.cumulative_lost(), 1);
        assert_eq!(feed_seqs(&mut rs, [5]), [Reception::Counted]);
        assert_eq!(
            (rs.packets(), rs.duplicates(), rs.cumulative_lost()),
            (10, 0, 0)
        );
        assert_eq!(
            rs.extended_highest_seq(),
            9,
            "a late packet is not the new maximum"
        );
        assert_eq!(feed_seqs(&mut rs, [5]), [Reception::Duplicate]);
        assert_eq!(
            (rs.packets(), rs.duplicates(), rs.cumulative_lost()),
            (10, 1, 0)
        );
    }

    #[test]
    fn duplicates_across_the_sequence_wrap() {
        let mut rs = ReceptionStats::new();
        feed_seqs(
            &mut rs,
            (65530u16..=65535).chain(0..5).filter(|s| *s != 65534),
        );
        assert_eq!(rs.cumulative_lost(), 1);
        // 65534 arrives late across the wrap; then copies from both sides of it.
        assert_eq!(
            feed_seqs(&mut rs, [65534, 65535, 65534, 3, 4]),
            [
                Reception::Counted,
                Reception::Duplicate,
                Reception::Duplicate,
                Reception::Duplicate,
                Reception::Duplicate
            ]
        );
        assert_eq!(
            (rs.packets(), rs.duplicates(), rs.cumulative_lost()),
            (11, 4, 0)
        );
        assert_eq!(rs.extended_highest_seq(), 0x0001_0004);
    }

    #[test]
    fn a_long_gap_empties_the_window() {
        let mut rs = ReceptionStats::new();
        feed_seqs(&mut rs, 0u16..10);
        // 500 jumps far past the window; 450 (50 behind it) was never received: late.
        assert_eq!(
            feed_seqs(&mut rs, [500, 450, 450]),
            [Reception::Counted, Reception::Counted, Reception::Duplicate]
        );
        assert_eq!((rs.packets(), rs.duplicates()), (12, 1));
        assert_eq!(rs.cumulative_lost(), 501 - 12);
    }

    #[test]
    fn loss_is_never_negative_whatever_arrives() {
        // A packet from before the first one (reordered at the start) is received but was
        // not expected: loss stays 0 rather than going below.
        let mut rs = ReceptionStats::new();
        feed_seqs(&mut rs, [10, 9, 8]);
        assert_eq!((rs.packets(), rs.cumulative_lost()), (3, 0));
        assert_eq!(rs.report_block(1, Instant::now()).cumulative_lost, 0);
        // Random sequences (close to each other, and anywhere): no panic, no negative block.
        let mut x: u32 = 0x2545_f491;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let mut seq = 0u16;
        for i in 0..50_000 {
            let r = rnd();
            seq = if i % 97 == 0 {
                r as u16
            } else {
                seq.wrapping_add((r % 7) as u16).wrapping_sub(3)
            };
            feed_seqs(&mut rs, [seq]);
            if i % 500 == 0 {
                assert!(rs.report_block(1, Instant::now()).cumulative_lost >= 0);
            }
        }
    }

    #[test]
    fn restart_and_reset() {
        let mut rs = ReceptionStats::new();
        let t0 = Instant::now();
        for seq in 1000u16..1010 {
            rs.on_rtp(seq, 0, 8000, 10, t0);
        }
        // One stray far packet is ignored; two in sequence restart the counts.
        assert_eq!(rs.on_rtp(30000, 0, 8000, 10, t0), Reception::Stray);
        assert_eq!(rs.on_rtp(1010, 0, 8000, 10, t0), Reception::Counted);
        assert_eq!(rs.packets(), 11);
        assert_eq!(rs.on_rtp(40000, 0, 8000, 10, t0), Reception::Stray);
        assert_eq!(rs.on_rtp(40001, 0, 8000, 10, t0), Reception::Counted);
        assert_eq!(rs.packets(), 1);
        assert_eq!(rs.cumulative_lost(), 0);
        assert_eq!(rs.extended_highest_seq(), 40001);
        rs.reset();
        assert_eq!(rs.packets(), 0);
        rs.on_rtp(5, 0, 8000, 10, t0);
        assert_eq!((rs.extended_highest_seq(), rs.cumulative_lost()), (5, 0));
    }

    #[test]
    fn dlsr_and_round_trip() {
        let t0 = Instant::now();
        let mut rs = ReceptionStats::new();
        rs.on_rtp(1, 0, 8000, 160, t0);
        let their_sr_ntp: u64 = (3_900_000_000u64 << 32) | (1u64 << 31); // x.5 s
        rs.on_sender_report(their_sr_ntp, t0);
        let b = rs.report_block(1, t0 + Duration::from_millis(250));
        assert_eq!(b.last_sr, ntp_middle(their_sr_ntp));
        assert_eq!(b.delay_since_last_sr, 65536 / 4);

        // They echo our SR time; the reply comes 400 ms later of which 250 ms they held it.
        let ours_at_send: u64 = 3_900_000_010u64 << 32;
        let block = ReportBlock {
            last_sr: ntp_middle(ours_at_send),
            delay_since_last_sr: 65536 / 4,
            ..ReportBlock::default()
        };
        let now_ntp = ours_at_send + ((4u64 << 32) / 10);
        let rtt = round_trip(&block, now_ntp).unwrap();
        assert!((rtt.as_secs_f64() - 0.150).abs() < 0.001, "{rtt:?}");
        assert_eq!(round_trip(&ReportBlock::default(), now_ntp), None);
        // DLSR larger than the elapsed time: garbage, not a negative RTT.
        let bad = ReportBlock {
            delay_since_last_sr: 65536,
            ..block
        };
        assert_eq!(round_trip(&bad, now_ntp), None);
    }

    #[test]
    fn ntp_now_is_after_2020() {
        let secs = ntp_now() >> 32;
        assert!(secs > NTP_UNIX_OFFSET + 1_577_836_800);
    }

    #[test]
    fn sender_stats_and_rtp_timestamp_at() {
        let t0 = Instant::now();
        let mut s = SenderStats::new(8000);
        s.on_sent(1000, 160, t0);
        s.on_sent(1160, 160, t0 + Duration::from_millis(20));
        assert_eq!((s.packets, s.octets, s.last_rtp_timestamp), (2, 320, 1160));
        assert_eq!(s.rtp_timestamp_at(t0 + Duration::from_millis(120)), 1960);
    }

    #[test]
    fn mos_estimates() {
        let clean = estimate_mos(0.0, 0.0, 0.0, Codec::Pcmu);
        assert!((4.35..=4.45).contains(&clean), "{clean}");
        let lossy = estimate_mos(5.0, 0.0, 0.0, Codec::Pcmu);
        assert!(lossy < clean - 0.3, "{lossy}");
        assert!(estimate_mos(5.0, 0.0, 0.0, Codec::Opus) > lossy);
        // Monotonic in loss, jitter and round trip.
        let mut prev = f64::INFINITY;
        for loss in 0..=100 {
            let m = estimate_mos(f64::from(loss), 10.0, 50.0, Codec::Pcmu);
            assert!(m <= prev && (1.0..=4.5).contains(&m));
            prev = m;
        }
        for codec in [Codec::Pcmu, Codec::Opus] {
            let mut prev = f64::INFINITY;
            for ms in (0..2000).step_by(10) {
                let m = estimate_mos(1.0, 0.0, f64::from(ms), codec);
                assert!(m <= prev);
                prev = m;
            }
            let mut prev = f64::INFINITY;
            for ms in 0..500 {
                let m = estimate_mos(1.0, f64::from(ms), 20.0, codec);
                assert!(m <= prev);
                prev = m;
            }
        }
        assert_eq!(estimate_mos(100.0, 500.0, 2000.0, Codec::Pcmu), 1.0);
        let weird = estimate_mos(f64::NAN, -5.0, f64::INFINITY, Codec::Opus);
        assert!((1.0..=4.5).contains(&weird));
    }
}
