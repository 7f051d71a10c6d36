//! One media leg: a call's RTP and RTCP sockets with their port lease, and what every media
//! task does with them whatever it carries (the echo leg, the bot session, the B2BUA relay, the
//! ringback tone): telling RTCP from RTP, symmetric-RTP latching, receive statistics and RTCP
//! reports, RFC 4733 digits and the RTP timeout; plus [`RtpWriter`], our outgoing stream's
//! header (SSRC, sequence numbers, timestamps, marker bit).
//!
//! The decisions are plain data with time passed in ([`LegState`], [`RtpWriter`],
//! [`RtpHeader`]); [`MediaLeg`] puts them on the sockets. Nothing here allocates per packet:
//! the receive buffer is the caller's, the RTCP one is allocated with the leg.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use rtp_rs::RtpReader;
use tokio::net::UdpSocket;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tracing::{debug, warn};
use voicegate_codec::Codec;

use crate::dtmf::{DtmfEvent, DtmfStats, Rfc4733Receiver};
use crate::latch::{LatchPolicy, RemoteAddress};
use crate::pool::{PortLease, RtpPorts};
use crate::stats::{RtpStats, StatsSummary};

/// Receive buffer per socket: larger than any RTP packet on an Ethernet path.
pub const RECV_BYTES: usize = 2048;

/// How often a leg's task looks at its clocks when it has no pacing of its own: the RTP
/// timeout and the DTMF timeout are this precise.
pub const HOUSEKEEPING: Duration = Duration::from_millis(100);

/// One timer per task for everything that is not a packet (RTCP reports, the RTP timeout,
/// DTMF whose end was lost), rather than timers re-armed on every packet.
pub fn housekeeping_timer() -> Interval {
    let mut timer = tokio::time::interval(HOUSEKEEPING);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}

/// The fields of a parsed RTP header a media task needs, with where the payload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload_type: u8,
    pub marker: bool,
    /// Payload bounds in the packet (after CSRCs and extension, before padding).
    pub payload_start: usize,
    pub payload_end: usize,
}

impl RtpHeader {
    /// None for anything that is not a well-formed RTP version 2 packet.
    pub fn parse(packet: &[u8]) -> Option<Self> {
        let r = RtpReader::new(packet).ok()?;
        let start = r.payload_offset();
        Some(RtpHeader {
            seq: u16::from(r.sequence_number()),
            timestamp: r.timestamp(),
            ssrc: r.ssrc(),
            payload_type: r.payload_type(),
            marker: r.mark(),
            payload_start: start,
            payload_end: start + r.payload().len(),
        })
    }

    pub fn payload_len(&self) -> usize {
        self.payload_end - self.payload_start
    }

    /// The payload of `packet`, the packet this header was parsed from.
    pub fn payload<'a>(&self, packet: &'a [u8]) -> &'a [u8] {
        &packet[self.payload_start..self.payload_end]
    }
}

/// RFC 5761 §4: RTCP packet types 200-204 are never RTP payload types in use, so RTCP on the
/// RTP port is told apart by them.
pub fn is_rtcp(packet: &[u8]) -> bool {
    packet.len() >= 2 && (200..=204).contains(&packet[1])
}

/// The peer's RTCP address for its RTP address: the same under rtcp-mux, else the next port.
pub fn rtcp_address(rtp: Option<SocketAddr>, rtcp_mux: bool) -> Option<SocketAddr> {
    let rtp = rtp?;
    Some(if rtcp_mux {
        rtp
    } else {
        SocketAddr::new(rtp.ip(), rtp.port().wrapping_add(1))
    })
}

/// Our outgoing RTP stream: its SSRC, the sequence number of the next packet and, for a
/// paced stream, the timestamp of the next frame. A header is written for the next packet;
/// [`Self::advance_seq`] moves on once that packet counts as sent (each task decides when:
/// on a send that worked, or on every packet made).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpWriter {
    ssrc: u32,
    seq: u16,
    timestamp: u32,
}

impl RtpWriter {
    /// Sequence number and timestamp start at random (RFC 3550 §5.1).
    pub fn new(ssrc: u32) -> Self {
        RtpWriter::starting_at(ssrc, rand::random(), rand::random())
    }

    pub fn starting_at(ssrc: u32, seq: u16, timestamp: u32) -> Self {
        RtpWriter {
            ssrc,
            seq,
            timestamp,
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The sequence number of the next packet.
    pub fn seq(&self) -> u16 {
        self.seq
    }

    /// The timestamp of the next paced frame.
    pub fn timestamp(&self) -> u32 {
        self.timestamp
    }

    /// Writes the 12-byte header of our next packet (version 2, no CSRC, no extension) at the
    /// start of `out`, which must hold at least 12 bytes.
    pub fn write_header(&self, out: &mut [u8], payload_type: u8, marker: bool, timestamp: u32) {
        out[0] = 0x80;
        out[1] = (payload_type & 0x7f) | if marker { 0x80 } else { 0 };
        out[2..4].copy_from_slice(&self.seq.to_be_bytes());
        out[4..8].copy_from_slice(&timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
    }

    /// Starts `packet` afresh with the header of our next paced frame; the payload goes after.
    pub fn start_frame(&self, packet: &mut Vec<u8>, payload_type: u8, marker: bool) {
        packet.clear();
        packet.resize(12, 0);
        self.write_header(packet, payload_type, marker, self.timestamp);
    }

    /// Puts our sequence number, `timestamp` and SSRC over the header of a received packet
    /// (at least 12 bytes), keeping the rest of it (marker, payload type, CSRCs, payload).
    pub fn restamp(&self, packet: &mut [u8], timestamp: u32) {
        packet[2..4].copy_from_slice(&self.seq.to_be_bytes());
        packet[4..8].copy_from_slice(&timestamp.to_be_bytes());
        packet[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
    }

    /// The packet written counts as sent: the next one takes the next sequence number.
    pub fn advance_seq(&mut self) {
        self.seq = self.seq.wrapping_add(1);
    }

    /// A paced frame's time has passed (sent or not): the next frame is `ticks` later.
    pub fn advance_timestamp(&mut self, ticks: u32) {
        self.timestamp = self.timestamp.wrapping_add(ticks);
    }
}

/// Which datagrams on the RTP port are taken for RTCP (by payload type, [`is_rtcp`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtcpDemux {
    /// Only under rtcp-mux; otherwise they are taken as RTP like any other datagram.
    WhenMuxed,
    /// Always: a peer may send RTCP to the RTP port without having negotiated rtcp-mux.
    Always,
}

/// What a leg is set up with. `signalled`, `rtcp_mux`, `codec`, `telephone_event` and
/// `expect_rtp` may change later (re-INVITE, hold); the rest is fixed for the leg's life.
#[derive(Clone, Debug)]
pub struct LegSetup {
    /// Our SSRC, for RTCP.
    pub ssrc: u32,
    pub cname: String,
    /// The negotiated codec: its clock times the stream, its kind scores the MOS.
    pub codec: Codec,
    pub latching: LatchPolicy,
    /// The peer's RTP address from its SDP.
    pub signalled: Option<SocketAddr>,
    pub rtcp_mux: bool,
    pub rtcp_demux: RtcpDemux,
    /// Payload type of telephone-event, if negotiated.
    pub telephone_event: Option<u8>,
    /// Some: only this payload type (and telephone-event) is the peer's RTP; other packets
    /// are counted invalid, and neither latched onto nor counted in the statistics.
    pub only_payload_type: Option<u8>,
    /// The telephone-event clock (RFC 4733 §2.1: the audio's).
    pub dtmf_clock: u32,
    /// Whether RTP is expected from the peer (its SDP direction sends): the RTP timeout runs
    /// only then, so a call on hold is not cut off.
    pub expect_rtp: bool,
    /// No RTP for this long while it is expected is a timeout.
    pub rtp_timeout: Duration,
}

/// What one datagram on the RTP port was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datagram {
    /// RTCP (taken: statistics, round trip, where to send our reports).
    Rtcp,
    /// Not RTP, or RTP of a payload type the leg does not take: counted and dropped.
    Invalid,
    /// The peer's RTP (latched onto and counted), with the digit it completed, if any.
    Rtp {
        header: RtpHeader,
        dtmf: Option<DtmfEvent>,
    },
}

/// Everything of a leg but its sockets: where to send, what came in, what we owe the peer.
pub struct LegState {
    rtp_remote: RemoteAddress,
    rtcp_remote: RemoteAddress,
    rtcp_mux: bool,
    rtcp_demux: RtcpDemux,
    telephone_event: Option<u8>,
    only_payload_type: Option<u8>,
    stats: RtpStats,
    dtmf: Rfc4733Receiver,
    expect_rtp: bool,
    rtp_timeout: Duration,
    last_rtp: Instant,
    timed_out: bool,
    invalid_packets: u64,
}

impl LegState {
    /// A leg whose clocks (RTCP schedule, RTP timeout) start at `now`.
    pub fn new(setup: LegSetup, now: Instant) -> Self {
        let LegSetup {
            ssrc,
            cname,
            codec,
            latching,
            signalled,
            rtcp_mux,
            rtcp_demux,
            telephone_event,
            only_payload_type,
            dtmf_clock,
            expect_rtp,
            rtp_timeout,
        } = setup;
        LegState {
            rtp_remote: RemoteAddress::new(latching, signalled),
            rtcp_remote: RemoteAddress::new(latching, rtcp_address(signalled, rtcp_mux)),
            rtcp_mux,
            rtcp_demux,
            telephone_event,
            only_payload_type,
            stats: RtpStats::new(ssrc, cname, codec, now),
            dtmf: Rfc4733Receiver::new(dtmf_clock),
            expect_rtp,
            rtp_timeout,
            last_rtp: now,
            timed_out: false,
            invalid_packets: 0,
        }
    }

    /// Takes one datagram from the RTP port, from `from`.
    pub fn on_rtp_port(&mut self, packet: &[u8], from: SocketAddr, now: Instant) -> Datagram {
        let demux = self.rtcp_mux || self.rtcp_demux == RtcpDemux::Always;
        if demux && is_rtcp(packet) {
            self.on_rtcp(packet, from, now);
            return Datagram::Rtcp;
        }
        let Some(header) = RtpHeader::parse(packet) else {
            self.invalid_packets += 1;
            return Datagram::Invalid;
        };
        let is_event = Some(header.payload_type) == self.telephone_event;
        if self
            .only_payload_type
            .is_some_and(|pt| pt != header.payload_type && !is_event)
        {
            // Not negotiated (or a stray stream): neither the peer's RTP nor latched onto.
            self.invalid_packets += 1;
            return Datagram::Invalid;
        }
        if self.rtp_remote.on_packet(from) {
            debug!(%from, "RTP latched to source");
        }
        self.last_rtp = now;
        self.timed_out = false;
        self.stats.on_received(
            header.seq,
            header.timestamp,
            header.ssrc,
            header.payload_len(),
            now,
        );
        let dtmf = if is_event {
            self.dtmf
                .on_packet(header.timestamp, header.marker, header.payload(packet), now)
        } else {
            None
        };
        Datagram::Rtp { header, dtmf }
    }

    /// Takes one RTCP datagram (from either port).
    pub fn on_rtcp(&mut self, packet: &[u8], from: SocketAddr, now: Instant) {
        if self.stats.on_rtcp(packet, now) {
            self.rtcp_remote.on_packet(from);
        }
    }

    /// Where our RTP goes now; None until there is somewhere.
    pub fn rtp_target(&self) -> Option<SocketAddr> {
        self.rtp_remote.target()
    }

    /// Where our RTCP goes now, and whether from the RTP port (rtcp-mux).
    pub fn rtcp_target(&self) -> (Option<SocketAddr>, bool) {
        if self.rtcp_mux {
            (self.rtp_remote.target(), true)
        } else {
            (self.rtcp_remote.target(), false)
        }
    }

    /// An RTP packet we sent.
    pub fn on_sent(&mut self, timestamp: u32, payload_len: usize, now: Instant) {
        self.stats.on_sent(timestamp, payload_len, now);
    }

    /// True once per outage: RTP is expected and none came for the leg's timeout.
    pub fn rtp_timed_out(&mut self, now: Instant) -> bool {
        if self.expect_rtp && !self.timed_out && now >= self.last_rtp + self.rtp_timeout {
            self.timed_out = true;
            return true;
        }
        false
    }

    /// A digit whose end packets were lost (or one queued behind another), once its time is up.
    pub fn dtmf_timeout(&mut self, now: Instant) -> Option<DtmfEvent> {
        self.dtmf.poll_timeout(now)
    }

    /// Our next RTCP report, when it is due; after sending it, [`Self::report_sent`].
    pub fn report_due(&mut self, now: Instant) -> Option<&[u8]> {
        self.stats.report_due(now)
    }

    /// The last report written, by [`Self::report_due`].
    pub fn last_report(&self) -> &[u8] {
        self.stats.last_report()
    }

    /// The last report, with a BYE.
    pub fn final_report(&mut self, now: Instant) -> &[u8] {
        self.stats.final_report(now)
    }

    pub fn report_sent(&mut self) {
        self.stats.report_sent();
    }

    /// A new SDP address or rtcp-mux (re-INVITE); what was observed stays until packets say
    /// otherwise.
    pub fn set_signalled(&mut self, signalled: Option<SocketAddr>, rtcp_mux: bool) {
        self.rtp_remote.set_signalled(signalled);
        self.rtcp_remote
            .set_signalled(rtcp_address(signalled, rtcp_mux));
        self.rtcp_mux = rtcp_mux;
    }

    /// Hold (false) or resume (true): after a resume the timeout counts from `now`.
    pub fn set_expect_rtp(&mut self, expect: bool, now: Instant) {
        if expect && !self.expect_rtp {
            self.last_rtp = now;
            self.timed_out = false;
        }
        self.expect_rtp = expect;
    }

    /// The negotiated codec changed (delayed offer answered, re-INVITE).
    pub fn set_codec(&mut self, codec: Codec) {
        self.stats.set_codec(codec);
    }

    pub fn set_telephone_event(&mut self, payload_type: Option<u8>) {
        self.telephone_event = payload_type;
    }

    /// The figures for the call record.
    pub fn summary(&self) -> StatsSummary {
        self.stats.summary()
    }

    pub fn dtmf_stats(&self) -> DtmfStats {
        self.dtmf.stats()
    }

    /// Datagrams on the RTP port that were neither RTP the leg takes nor RTCP.
    pub fn invalid_packets(&self) -> u64 {
        self.invalid_packets
    }
}

/// A call's RTP and RTCP sockets on the runtime, with their lease. Fields drop in order: the
/// sockets close before the ports go back to the pool.
#[derive(Debug)]
pub struct LegSockets {
    rtp: UdpSocket,
    rtcp: UdpSocket,
    lease: PortLease,
}

impl LegSockets {
    /// Registers the pool's (non-blocking) sockets with the runtime.
    pub fn from_ports(ports: RtpPorts) -> io::Result<Self> {
        let RtpPorts { rtp, rtcp, lease } = ports;
        Ok(LegSockets {
            rtp: UdpSocket::from_std(rtp)?,
            rtcp: UdpSocket::from_std(rtcp)?,
            lease,
        })
    }

    /// The ports as the pool handed them out, still bound (and non-blocking), for the call's
    /// next media stage.
    pub fn into_ports(self) -> Option<RtpPorts> {
        let LegSockets { rtp, rtcp, lease } = self;
        match (rtp.into_std(), rtcp.into_std()) {
            (Ok(rtp), Ok(rtcp)) => Some(RtpPorts { rtp, rtcp, lease }),
            (rtp, rtcp) => {
                let error = rtp.err().or(rtcp.err()).map(|e| e.to_string());
                warn!(?error, "RTP sockets could not be given back");
                None
            }
        }
    }

    /// Our RTP address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.rtp.local_addr()
    }
}

/// The peer's RTP packet that [`MediaLeg::recv`] put in the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// The packet is `buf[..len]`.
    pub len: usize,
    pub header: RtpHeader,
    /// The key press this packet completed, if any.
    pub dtmf: Option<DtmfEvent>,
    /// When it was taken.
    pub at: Instant,
}

/// One leg on its sockets: [`LegState`] fed from and written to the network.
pub struct MediaLeg {
    sockets: LegSockets,
    state: LegState,
    rtcp_in: Box<[u8]>,
}

impl MediaLeg {
    /// The leg on `sockets`, its clocks starting at `now`.
    pub fn new(sockets: LegSockets, setup: LegSetup, now: Instant) -> Self {
        MediaLeg {
            sockets,
            state: LegState::new(setup, now),
            rtcp_in: vec![0; RECV_BYTES].into_boxed_slice(),
        }
    }

    /// The leg on the pool's `ports`, its clocks starting now.
    pub fn from_ports(ports: RtpPorts, setup: LegSetup) -> io::Result<Self> {
        Ok(MediaLeg::new(
            LegSockets::from_ports(ports)?,
            setup,
            Instant::now(),
        ))
    }

    pub fn into_sockets(self) -> LegSockets {
        self.sockets
    }

    /// The ports, still bound, for the call's next media stage (None if they could not be
    /// taken off the runtime).
    pub fn into_ports(self) -> Option<RtpPorts> {
        self.sockets.into_ports()
    }

    pub fn state(&self) -> &LegState {
        &self.state
    }

    pub fn state_mut(&mut self) -> &mut LegState {
        &mut self.state
    }

    /// Waits for the peer's next RTP packet and reads it into `buf` (at least [`RECV_BYTES`]
    /// long). RTCP on either port and datagrams that are not RTP the leg takes are dealt with
    /// on the way. Cancel-safe: a packet is taken whole or left in the socket.
    pub async fn recv(&mut self, buf: &mut [u8]) -> Received {
        let MediaLeg {
            sockets,
            state,
            rtcp_in,
        } = self;
        loop {
            tokio::select! {
                received = sockets.rtp.recv_from(buf) => match received {
                    Ok((len, from)) => {
                        let at = Instant::now();
                        if let Datagram::Rtp { header, dtmf } = state.on_rtp_port(&buf[..len], from, at) {
                            return Received { len, header, dtmf, at };
                        }
                    }
                    Err(e) => debug!(error = %e, "RTP receive error"),
                },
                received = sockets.rtcp.recv_from(rtcp_in) => {
                    if let Ok((len, from)) = received {
                        state.on_rtcp(&rtcp_in[..len], from, Instant::now());
                    }
                }
            }
        }
    }

    /// Sends one RTP packet of ours (with `timestamp` and `payload_len` bytes of payload, for
    /// the statistics) to where the leg's RTP goes; false when there is nowhere yet or the
    /// send failed.
    pub async fn send_rtp(
        &mut self,
        packet: &[u8],
        timestamp: u32,
        payload_len: usize,
        now: Instant,
    ) -> bool {
        let Some(to) = self.state.rtp_target() else {
            return false;
        };
        if self.sockets.rtp.send_to(packet, to).await.is_err() {
            return false;
        }
        self.state.on_sent(timestamp, payload_len, now);
        true
    }

    /// Sends our RTCP report if one is due.
    pub async fn send_report_if_due(&mut self, now: Instant) {
        if self.state.report_due(now).is_some() {
            self.send_rtcp(false).await;
        }
    }

    /// Sends our last RTCP report, with a BYE: the stream ends.
    pub async fn send_bye(&mut self) {
        self.send_rtcp(true).await;
    }

    /// What the leg's clocks say now: a due report is sent; the RTP timeout (once per outage)
    /// and a digit whose end was lost are returned.
    pub async fn housekeeping(&mut self, now: Instant) -> (bool, Option<DtmfEvent>) {
        self.send_report_if_due(now).await;
        let timed_out = self.state.rtp_timed_out(now);
        (timed_out, self.state.dtmf_timeout(now))
    }

    /// Sends the report `report_due` last wrote or, with `bye`, the final one.
    async fn send_rtcp(&mut self, bye: bool) {
        let (target, muxed) = self.state.rtcp_target();
        let Some(to) = target else { return };
        let socket = if muxed {
            &self.sockets.rtp
        } else {
            &self.sockets.rtcp
        };
        let report = if bye {
            self.state.final_report(Instant::now())
        } else {
            self.state.last_report()
        };
        if socket.send_to(report, to).await.is_ok() {
            self.state.report_sent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtcp::{self, RtcpPacket};
    use tokio::net::UdpSocket;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn rtp(pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn setup() -> LegSetup {
        LegSetup {
            ssrc: 42,
            cname: "test@voicegate".into(),
            codec: Codec::Pcmu,
            latching: LatchPolicy::Auto,
            signalled: Some(addr("192.168.1.10:4000")),
            rtcp_mux: false,
            rtcp_demux: RtcpDemux::WhenMuxed,
            telephone_event: Some(101),
            only_payload_type: None,
            dtmf_clock: 8000,
            expect_rtp: true,
            rtp_timeout: Duration::from_secs(1),
        }
    }

    fn receiver_report() -> Vec<u8> {
        let mut report = Vec::new();
        rtcp::write_receiver_report(&mut report, 7, &[], "peer");
        report
    }

    #[test]
    fn rtp_latches_and_counts_and_what_is_not_rtp_is_invalid() {
        let now = Instant::now();
        let mut leg = LegState::new(setup(), now);
        assert_eq!(leg.rtp_target(), Some(addr("192.168.1.10:4000")));
        assert_eq!(leg.rtcp_target(), (Some(addr("192.168.1.10:4001")), false));
        let nat = addr("203.0.113.5:61000");
        let packet = rtp(0, true, 7, 1600, 9, &[0xff; 160]);
        match leg.on_rtp_port(&packet, nat, now) {
            Datagram::Rtp { header, dtmf } => {
                assert_eq!((header.seq, header.timestamp, header.ssrc), (7, 1600, 9));
                assert!(header.marker);
                assert_eq!(header.payload(&packet), &[0xff; 160][..]);
                assert_eq!(dtmf, None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            leg.rtp_target(),
            Some(nat),
            "a private SDP address is latched over"
        );
        assert_eq!(leg.on_rtp_port(b"not rtp", nat, now), Datagram::Invalid);
        assert_eq!(leg.invalid_packets(), 1);
        let summary = leg.summary();
        assert_eq!((summary.packets_in, summary.bytes_in), (1, 160));
    }

    #[test]
    fn rtcp_on_the_rtp_port_is_taken_as_rtcp_only_when_muxed_or_always() {
        let now = Instant::now();
        let from = addr("198.51.100.7:4000");
        let report = receiver_report();
        let mut plain = LegState::new(setup(), now);
        assert!(matches!(
            plain.on_rtp_port(&report, from, now),
            Datagram::Rtp { .. }
        ));
        let mut muxed = LegState::new(
            LegSetup {
                rtcp_mux: true,
                ..setup()
            },
            now,
        );
        assert_eq!(muxed.on_rtp_port(&report, from, now), Datagram::Rtcp);
        assert_eq!(muxed.rtcp_target(), (Some(addr("192.168.1.10:4000")), true));
        let mut always = LegState::new(
            LegSetup {
                rtcp_demux: RtcpDemux::Always,
                ..setup()
            },
            now,
        );
        assert_eq!(always.on_rtp_port(&report, from, now), Datagram::Rtcp);
        assert_eq!(always.summary().rtcp_received, 1);
        assert_eq!(always.summary().packets_in, 0);
        // The peer's RTCP source is where our reports go.
        assert_eq!(always.rtcp_target(), (Some(from), false));
    }

    #[test]
    fn only_the_negotiated_payload_type_and_telephone_event_when_asked() {
        let now = Instant::now();
        let mut leg = LegState::new(
            LegSetup {
                only_payload_type: Some(8),
                latching: LatchPolicy::Always,
                ..setup()
            },
            now,
        );
        let stray = addr("203.0.113.9:5000");
        assert_eq!(
            leg.on_rtp_port(&rtp(0, false, 1, 0, 9, &[0; 160]), stray, now),
            Datagram::Invalid
        );
        assert_ne!(leg.rtp_target(), Some(stray), "not latched onto");
        let peer = addr("203.0.113.5:61000");
        let digit = rtp(101, true, 2, 8000, 9, &[5, 0x80 | 10, 0x02, 0x80]);
        match leg.on_rtp_port(&digit, peer, now) {
            Datagram::Rtp { dtmf, .. } => assert_eq!(
                dtmf,
                Some(DtmfEvent {
                    digit: '5',
                    duration_ms: 80,
                    volume: 10
                })
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            leg.on_rtp_port(&rtp(8, false, 3, 160, 9, &[0xd5; 160]), peer, now),
            Datagram::Rtp { dtmf: None, .. }
        ));
        assert_eq!(leg.rtp_target(), Some(peer));
        assert_eq!(leg.invalid_packets(), 1);
        assert_eq!(leg.summary().packets_in, 2);
        assert_eq!(leg.dtmf_stats().events, 1);
    }

    #[test]
    fn rtp_timeout_once_per_outage_and_not_on_hold() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut leg = LegState::new(setup(), t0);
        let from = addr("198.51.100.7:4000");
        assert!(!leg.rtp_timed_out(t0 + second / 2));
        assert!(leg.rtp_timed_out(t0 + second));
        assert!(!leg.rtp_timed_out(t0 + 2 * second), "reported once");
        leg.on_rtp_port(&rtp(0, false, 1, 0, 9, &[0; 160]), from, t0 + 3 * second);
        assert!(!leg.rtp_timed_out(t0 + 3 * second + second / 2));
        assert!(leg.rtp_timed_out(t0 + 4 * second), "a new outage");
        leg.set_expect_rtp(false, t0 + 5 * second);
        assert!(!leg.rtp_timed_out(t0 + 9 * second), "on hold");
        leg.set_expect_rtp(true, t0 + 10 * second);
        assert!(
            !leg.rtp_timed_out(t0 + 10 * second + second / 2),
            "counts from the resume"
        );
        assert!(leg.rtp_timed_out(t0 + 11 * second));
    }

    #[test]
    fn a_new_address_moves_rtp_and_rtcp() {
        let now = Instant::now();
        let mut leg = LegState::new(setup(), now);
        leg.set_signalled(Some(addr("198.51.100.7:5000")), false);
        assert_eq!(leg.rtp_target(), Some(addr("198.51.100.7:5000")));
        assert_eq!(leg.rtcp_target(), (Some(addr("198.51.100.7:5001")), false));
        leg.set_signalled(Some(addr("198.51.100.7:6000")), true);
        assert_eq!(leg.rtcp_target(), (Some(addr("198.51.100.7:6000")), true));
        leg.set_signalled(None, false);
        assert_eq!(leg.rtp_target(), None, "SDP hold with no packets yet");
    }

    #[tokio::test(start_paused = true)]
    async fn reports_come_due_and_the_last_one_says_bye() {
        let t0 = Instant::now();
        let mut leg = LegState::new(setup(), t0);
        assert!(leg.report_due(t0).is_none());
        let due = leg
            .report_due(t0 + Duration::from_secs(3))
            .expect("due")
            .to_vec();
        assert_eq!(leg.last_report(), &due[..]);
        leg.report_sent();
        let last = leg.final_report(t0 + Duration::from_secs(4)).to_vec();
        assert!(rtcp::parse(&last)
            .unwrap()
            .iter()
            .any(|p| matches!(p, RtcpPacket::Bye { .. })));
        assert_eq!(leg.summary().rtcp_sent, 1);
    }

    #[tokio::test]
    async fn a_leg_on_its_sockets_takes_rtcp_on_the_way_and_gives_its_ports_back() {
        let (min, max) = crate::pool::free_range(4);
        let pool = crate::PortPool::new(min, max);
        let ports = pool.allocate("127.0.0.1".parse().unwrap()).unwrap();
        let port = ports.rtp_port();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut leg = MediaLeg::from_ports(
            ports,
            LegSetup {
                signalled: Some(client.local_addr().unwrap()),
                ..setup()
            },
        )
        .unwrap();
        let rtp_addr = addr(&format!("127.0.0.1:{port}"));
        let rtcp_addr = addr(&format!("127.0.0.1:{}", port + 1));
        let mut buf = vec![0u8; RECV_BYTES];
        client.send_to(&receiver_report(), rtcp_addr).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(200), leg.recv(&mut buf)).await;
        assert!(waiting.is_err(), "RTCP is taken on the way, not returned");
        assert_eq!(leg.state().summary().rtcp_received, 1);
        client.send_to(b"not rtp", rtp_addr).await.unwrap();
        let packet = rtp(0, false, 1, 160, 9, &[0x7f; 160]);
        client.send_to(&packet, rtp_addr).await.unwrap();
        let received = tokio::time::timeout(Duration::from_secs(2), leg.recv(&mut buf))
            .await
            .expect("the RTP packet");
        assert_eq!(&buf[..received.len], &packet[..]);
        assert_eq!(received.header.seq, 1);
        let mut writer = RtpWriter::new(42);
        let mut ours = Vec::new();
        writer.start_frame(&mut ours, 0, true);
        ours.extend_from_slice(&[0xff; 160]);
        assert!(
            leg.send_rtp(&ours, writer.timestamp(), 160, Instant::now())
                .await
        );
        writer.advance_seq();
        let mut back = [0u8; RECV_BYTES];
        let (n, from) = client.recv_from(&mut back).await.unwrap();
        assert_eq!((&back[..n], from), (&ours[..], rtp_addr));
        // The bad datagram was counted and dropped.
        let summary = leg.state().summary();
        assert_eq!(
            (
                summary.rtcp_received,
                summary.packets_in,
                summary.packets_out
            ),
            (1, 1, 1)
        );
        assert_eq!(leg.state().invalid_packets(), 1);
        let ports = leg.into_ports().expect("still bound");
        assert_eq!((ports.rtp_port(), pool.in_use()), (port, 1));
        drop(ports);
        assert_eq!(pool.in_use(), 0);
    }

    fn fields(h: &RtpHeader) -> (u16, u32, u32, u8) {
        (h.seq, h.timestamp, h.ssrc, h.payload_type)
    }

    #[test]
    fn the_writer_numbers_our_packets() {
        let mut writer = RtpWriter::starting_at(0xabcd, 0xffff, 1000);
        let mut packet = Vec::new();
        writer.start_frame(&mut packet, 8, true);
        packet.extend_from_slice(&[0xd5; 160]);
        let header = RtpHeader::parse(&packet).unwrap();
        assert_eq!(fields(&header), (0xffff, 1000, 0xabcd, 8));
        assert!(header.marker);
        writer.advance_seq();
        writer.advance_timestamp(160);
        assert_eq!((writer.seq(), writer.timestamp()), (0, 1160), "wraps");
        // Restamping keeps the peer's marker, payload type and payload.
        let mut theirs = rtp(101, true, 500, 77, 9, &[1, 2, 3, 4]);
        writer.restamp(&mut theirs, 4242);
        let header = RtpHeader::parse(&theirs).unwrap();
        assert_eq!(fields(&header), (0, 4242, 0xabcd, 101));
        assert!(header.marker);
        assert_eq!(header.payload(&theirs), &[1, 2, 3, 4]);
        let mut slot = [0u8; 12];
        writer.write_header(&mut slot, 0x7f | 0x80, false, 1);
        assert_eq!(slot[1], 0x7f, "the payload type cannot set the marker");
    }
}
