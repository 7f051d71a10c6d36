//! One RTP stream pair's statistics and RTCP (RFC 3550): what we received and sent, the
//! reports we owe the peer about every 5 s, what the peer's reports say about us, and the
//! summary for the call record. Plain data with time passed in; the media task that owns
//! it sends the report bytes it hands out.

use tokio::time::{Duration, Instant};

use voicegate_codec::Codec;

use crate::rtcp::{self, Reception, ReceptionStats, RtcpPacket, SenderStats};

/// RTCP report interval (RFC 3550 §6.2 minimum for a two-party call, before randomisation).
pub const RTCP_INTERVAL: Duration = Duration::from_secs(5);

/// The numbers a call record keeps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatsSummary {
    /// RTP packets from the peer, duplicates included (what came in on the wire).
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// RTP packets lost on the way to us: expected minus received (RFC 3550 cumulative
    /// count, but duplicates are not taken as received, so it is never negative).
    pub lost: u64,
    /// Of `packets_in`, copies of a packet already received (RFC 4733 end packets are sent
    /// three times under one sequence number; a network may duplicate too).
    pub duplicates: u64,
    pub loss_percent: f64,
    /// RFC 3550 interarrival jitter of what we received.
    pub jitter_ms: f64,
    /// Round trip from the peer's reports about our stream, if it sent any.
    pub rtt_ms: Option<f64>,
    /// Loss the peer reported for our stream, as it reported it (RFC 3550 lets a peer
    /// count duplicates as received, so this one can be negative).
    pub peer_reported_lost: Option<i64>,
    /// Estimated MOS of what we received (simplified E-model).
    pub mos: f64,
    pub rtcp_sent: u64,
    pub rtcp_received: u64,
}

pub struct RtpStats {
    ssrc: u32,
    cname: String,
    codec: Codec,
    reception: ReceptionStats,
    sent: SenderStats,
    peer_ssrc: Option<u32>,
    summary: StatsSummary,
    next_report: Instant,
    buf: Vec<u8>,
}

impl RtpStats {
    pub fn new(ssrc: u32, cname: String, codec: Codec, now: Instant) -> Self {
        RtpStats {
            ssrc,
            cname,
            codec,
            reception: ReceptionStats::new(),
            sent: SenderStats::new(codec.clock_rate()),
            peer_ssrc: None,
            summary: StatsSummary::default(),
            // The first report goes out early (RFC 3550 §6.2: half the interval at the start).
            next_report: now + RTCP_INTERVAL / 2,
            buf: Vec::with_capacity(512),
        }
    }

    /// The negotiated codec changed (delayed offer answered, re-INVITE).
    pub fn set_codec(&mut self, codec: Codec) {
        self.codec = codec;
        self.sent.clock_rate = codec.clock_rate();
    }

    /// An RTP packet from the peer.
    pub fn on_received(
        &mut self,
        seq: u16,
        timestamp: u32,
        ssrc: u32,
        payload_len: usize,
        now: Instant,
    ) {
        if self.peer_ssrc != Some(ssrc) {
            // A new source (the far end switched streams): its sequence starts afresh.
            self.reception.reset();
            self.peer_ssrc = Some(ssrc);
        }
        let taken =
            self.reception
                .on_rtp(seq, timestamp, self.codec.clock_rate(), payload_len, now);
        if taken == Reception::Duplicate {
            self.summary.duplicates += 1;
        }
        self.summary.packets_in += 1;
        self.summary.bytes_in += payload_len as u64;
    }

    /// An RTP packet we sent.
    pub fn on_sent(&mut self, timestamp: u32, payload_len: usize, now: Instant) {
        self.sent.on_sent(timestamp, payload_len, now);
        self.summary.packets_out += 1;
        self.summary.bytes_out += payload_len as u64;
    }

    /// An RTCP datagram from the peer: its reports about our stream give the round trip.
    pub fn on_rtcp(&mut self, packet: &[u8], now: Instant) -> bool {
        let Ok(parsed) = rtcp::parse(packet) else {
            return false;
        };
        self.summary.rtcp_received += 1;
        let now_ntp = rtcp::ntp_now();
        for p in parsed {
            let blocks = match p {
                RtcpPacket::SenderReport { ntp, reports, .. } => {
                    self.reception.on_sender_report(ntp, now);
                    reports
                }
                RtcpPacket::ReceiverReport { reports, .. } => reports,
                _ => continue,
            };
            for block in blocks.iter().filter(|b| b.ssrc == self.ssrc) {
                if let Some(rtt) = rtcp::round_trip(block, now_ntp) {
                    self.summary.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
                }
                self.summary.peer_reported_lost = Some(block.cumulative_lost as i64);
            }
        }
        true
    }

    /// Our next report when it is due (an SR once we have sent, else an RR); the caller
    /// sends it and calls [`Self::report_sent`].
    pub fn report_due(&mut self, now: Instant) -> Option<&[u8]> {
        if now < self.next_report {
            return None;
        }
        // Randomised between 0.5 and 1.5 intervals so calls do not report in step.
        self.next_report = now + RTCP_INTERVAL.mul_f64(0.5 + rand::random::<f64>());
        self.write_report(now, false);
        Some(&self.buf)
    }

    /// The last report, with a BYE, when the stream ends.
    pub fn final_report(&mut self, now: Instant) -> &[u8] {
        self.write_report(now, true);
        &self.buf
    }

    /// The report last written by [`Self::report_due`].
    pub fn last_report(&self) -> &[u8] {
        &self.buf
    }

    pub fn report_sent(&mut self) {
        self.summary.rtcp_sent += 1;
    }

    fn write_report(&mut self, now: Instant, bye: bool) {
        self.buf.clear();
        let block = self
            .peer_ssrc
            .map(|ssrc| self.reception.report_block(ssrc, now));
        let blocks = block.as_slice();
        if self.sent.packets > 0 {
            let rtp_ts = self.sent.rtp_timestamp_at(now);
            let (packets, octets) = (self.sent.packets, self.sent.octets);
            rtcp::write_sender_report(
                &mut self.buf,
                self.ssrc,
                rtcp::ntp_now(),
                rtp_ts,
                packets,
                octets,
                blocks,
                &self.cname,
            );
        } else {
            rtcp::write_receiver_report(&mut self.buf, self.ssrc, blocks, &self.cname);
        }
        if bye {
            rtcp::write_bye(&mut self.buf, self.ssrc, Some("call ended"));
        }
    }

    /// The figures for the call record.
    pub fn summary(&self) -> StatsSummary {
        let lost = self.reception.cumulative_lost();
        let expected = self.reception.packets() + lost;
        let loss_percent = if expected > 0 {
            lost as f64 * 100.0 / expected as f64
        } else {
            0.0
        };
        let jitter_ms = self.reception.jitter_ms();
        StatsSummary {
            lost,
            loss_percent,
            jitter_ms,
            mos: rtcp::estimate_mos(
                loss_percent,
                jitter_ms,
                self.summary.rtt_ms.unwrap_or(0.0),
                self.codec,
            ),
            ..self.summary.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn reports_on_schedule_and_summarises() {
        let t0 = Instant::now();
        let mut stats = RtpStats::new(42, "test@voicegate".into(), Codec::Pcmu, t0);
        assert!(
            stats.report_due(t0).is_none(),
            "not before half an interval"
        );
        // 100 packets with two lost (seq 10 and 11 never arrive).
        for seq in (0u16..102).filter(|s| *s != 10 && *s != 11) {
            let at = t0 + Duration::from_millis(20 * seq as u64);
            stats.on_received(seq, 160 * seq as u32, 7, 160, at);
            stats.on_sent(160 * seq as u32, 160, at);
        }
        let report = stats
            .report_due(t0 + Duration::from_millis(2500))
            .expect("due after 2.5 s")
            .to_vec();
        stats.report_sent();
        let parsed = rtcp::parse(&report).unwrap();
        match &parsed[0] {
            RtcpPacket::SenderReport {
                ssrc,
                packet_count,
                reports,
                ..
            } => {
                assert_eq!((*ssrc, *packet_count), (42, 100));
                assert_eq!(reports[0].ssrc, 7);
                assert_eq!(reports[0].cumulative_lost, 2);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            stats.report_due(t0 + Duration::from_millis(2600)).is_none(),
            "next one later"
        );
        let last = stats.final_report(t0 + Duration::from_secs(3)).to_vec();
        assert!(rtcp::parse(&last)
            .unwrap()
            .iter()
            .any(|p| matches!(p, RtcpPacket::Bye { .. })));
        let summary = stats.summary();
        assert_eq!(
            (summary.packets_in, summary.packets_out, summary.lost),
            (100, 100, 2)
        );
        assert!((summary.loss_percent - 100.0 * 2.0 / 102.0).abs() < 1e-9);
        assert!(summary.mos > 3.5 && summary.mos < 4.5, "{}", summary.mos);
        assert_eq!(summary.rtcp_sent, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_end_packets_are_duplicates_in_the_summary_and_report() {
        let t0 = Instant::now();
        let mut stats = RtpStats::new(42, "test@voicegate".into(), Codec::Pcmu, t0);
        // SIPp's dtmf_2833_1.pcap: eight packets, the last (the end packet) sent three times.
        for (i, seq) in (0x1f30u16..=0x1f37).chain([0x1f37, 0x1f37]).enumerate() {
            stats.on_received(seq, 0x33e0, 7, 4, t0 + Duration::from_millis(20 * i as u64));
        }
        let summary = stats.summary();
        assert_eq!(
            (summary.packets_in, summary.lost, summary.duplicates),
            (10, 0, 2)
        );
        assert_eq!(summary.loss_percent, 0.0);
        let report = stats.final_report(t0 + Duration::from_secs(1)).to_vec();
        match &rtcp::parse(&report).unwrap()[0] {
            RtcpPacket::ReceiverReport { reports, .. } => {
                assert_eq!((reports[0].ssrc, reports[0].cumulative_lost), (7, 0));
            }
            other => panic!("{other:?}"),
        }
    }
}
