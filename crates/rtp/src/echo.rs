//! The echo leg: every RTP packet is sent back (to where the caller's packets come from, or to
//! its SDP address, as `rtp.latching` says) under our own SSRC, sequence numbers and
//! timestamps, as carriers' echo-test numbers do. On the way it keeps the call's RTP
//! statistics, sends RTCP reports, reports RFC 4733 digits and notices when RTP stops.
//!
//! The packet is rewritten in the receive buffer: no allocation per packet.

use std::net::SocketAddr;
use std::time::Duration;

use rtp_rs::RtpReader;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::debug;

use crate::dtmf::{DtmfEvent, Rfc4733Receiver};
use crate::latch::{LatchPolicy, RemoteAddress};
use crate::pool::{PortLease, RtpPorts};
use crate::stats::{RtpStats, StatsSummary};
use voicegate_codec::Codec;

/// How often the leg looks at its clocks: the RTP timeout and DTMF timeout are this precise.
const HOUSEKEEPING: Duration = Duration::from_millis(100);

/// What the call tells the leg, and may change mid-call (re-INVITE, ACK with an answer).
#[derive(Clone, Debug, PartialEq)]
pub struct LegControl {
    /// Whether we send (our SDP direction is sendrecv or sendonly).
    pub sending: bool,
    /// Whether RTP is expected from the peer (its direction sends): the media timeout runs
    /// only then, so a call on hold is not cut off.
    pub expect_rtp: bool,
    /// The peer's RTP address from its SDP.
    pub signalled: Option<SocketAddr>,
    pub rtcp_mux: bool,
    /// Payload type of telephone-event, if negotiated.
    pub telephone_event: Option<u8>,
    /// The negotiated codec (its clock rate times the RTP stream; its kind scores the MOS).
    pub codec: Codec,
}

/// Settings fixed for the call's life.
#[derive(Clone, Debug)]
pub struct LegConfig {
    pub ssrc: u32,
    pub latching: LatchPolicy,
    /// No RTP for this long while it is expected gives [`MediaEvent::RtpTimeout`].
    pub timeout: Duration,
    pub cname: String,
}

/// What the leg tells the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaEvent {
    Dtmf(DtmfEvent),
    /// RTP was expected and none came for the configured time.
    RtpTimeout,
}

/// The call's media statistics, for its record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LegReport {
    pub rtp: StatsSummary,
    pub invalid_packets: u64,
    pub dtmf_events: u64,
    pub dtmf_end_retransmissions: u64,
}

/// Owns the echo task; dropping it stops the task.
#[derive(Debug)]
pub struct EchoHandle {
    task: JoinHandle<LegReport>,
    control: watch::Sender<(LegControl, bool)>,
}

impl EchoHandle {
    /// Starts echoing on the call's ports, which the task owns from now on: they are closed
    /// and given back to the pool when the task ends. Events go to `events`.
    pub fn start(
        ports: RtpPorts,
        config: LegConfig,
        control: LegControl,
        events: mpsc::Sender<MediaEvent>,
    ) -> std::io::Result<Self> {
        let RtpPorts { rtp, rtcp, lease } = ports;
        let leg = Leg {
            rtp: UdpSocket::from_std(rtp)?,
            rtcp: UdpSocket::from_std(rtcp)?,
            _lease: lease,
        };
        let (tx, rx) = watch::channel((control, false));
        let task = tokio::spawn(run(leg, config, rx, events));
        Ok(EchoHandle { task, control: tx })
    }

    /// Applies a change of direction or address.
    pub fn update(&self, control: LegControl) {
        self.control.send_modify(|(c, _)| *c = control);
    }

    /// Stops the task (with an RTCP BYE) and returns its report once its ports are closed
    /// and back in the pool.
    pub async fn stop(mut self) -> LegReport {
        self.control.send_modify(|(_, stop)| *stop = true);
        // A task that panicked or was aborted leaves an empty report.
        (&mut self.task).await.unwrap_or_default()
    }
}

impl Drop for EchoHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the echo task owns. Fields drop in order: sockets closed, then the lease freed.
struct Leg {
    rtp: UdpSocket,
    rtcp: UdpSocket,
    _lease: PortLease,
}

/// Our outgoing stream's numbering, continuous whatever the incoming stream does.
#[derive(Debug, Clone)]
pub struct Renumber {
    ssrc: u32,
    next_seq: u16,
    /// Added to the peer's timestamp; fixed per peer SSRC so their spacing is kept.
    ts_offset: u32,
    peer_ssrc: Option<u32>,
    last_ts: u32,
}

impl Renumber {
    pub fn new(ssrc: u32, first_seq: u16, first_ts: u32) -> Self {
        Renumber {
            ssrc,
            next_seq: first_seq,
            ts_offset: first_ts,
            peer_ssrc: None,
            last_ts: first_ts,
        }
    }

    /// Rewrites the header of a valid RTP packet in place; returns our timestamp.
    pub fn rewrite(&mut self, packet: &mut [u8]) -> u32 {
        if packet.len() < 12 {
            return self.last_ts;
        }
        let peer_ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        let peer_ts = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        if self.peer_ssrc != Some(peer_ssrc) {
            // New source: continue our timeline just after where it was.
            self.ts_offset = self.last_ts.wrapping_add(160).wrapping_sub(peer_ts);
            self.peer_ssrc = Some(peer_ssrc);
        }
        let ts = peer_ts.wrapping_add(self.ts_offset);
        self.last_ts = ts;
        packet[2..4].copy_from_slice(&self.next_seq.to_be_bytes());
        packet[4..8].copy_from_slice(&ts.to_be_bytes());
        packet[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        self.next_seq = self.next_seq.wrapping_add(1);
        ts
    }
}

/// RTCP shares the RTP port under rtcp-mux; RFC 5761 §4 tells them apart by payload type.
fn is_rtcp(packet: &[u8]) -> bool {
    packet.len() >= 2 && (200..=204).contains(&packet[1])
}

struct State {
    config: LegConfig,
    control: LegControl,
    renumber: Renumber,
    rtp_remote: RemoteAddress,
    rtcp_remote: RemoteAddress,
    stats: RtpStats,
    dtmf: Rfc4733Receiver,
    last_rtp: Instant,
    timed_out: bool,
    invalid_packets: u64,
    events: mpsc::Sender<MediaEvent>,
}

async fn run(
    leg: Leg,
    config: LegConfig,
    mut control_rx: watch::Receiver<(LegControl, bool)>,
    events: mpsc::Sender<MediaEvent>,
) -> LegReport {
    // Reading the control marks it seen: a stop already asked for must be taken here, or
    // `changed()` below would never report it and the leg would never end.
    let (control, stopped) = control_rx.borrow_and_update().clone();
    let now = Instant::now();
    let mut state = State {
        renumber: Renumber::new(config.ssrc, rand::random(), rand::random()),
        rtp_remote: RemoteAddress::new(config.latching, control.signalled),
        rtcp_remote: RemoteAddress::new(config.latching, rtcp_address(&control)),
        stats: RtpStats::new(config.ssrc, config.cname.clone(), control.codec, now),
        dtmf: Rfc4733Receiver::new(8000),
        last_rtp: now,
        timed_out: false,
        invalid_packets: 0,
        events,
        config,
        control,
    };
    let mut buf = vec![0u8; 2048];
    let mut rtcp_in = vec![0u8; 2048];
    // One timer per call for everything that is not a packet (reports, the RTP timeout,
    // DTMF whose end was lost), rather than timers re-armed on every packet.
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = stopped;
    while !stop {
        tokio::select! {
            received = leg.rtp.recv_from(&mut buf) => match received {
                Ok((len, from)) => {
                    let now = Instant::now();
                    if state.control.rtcp_mux && is_rtcp(&buf[..len]) {
                        state.on_rtcp(&buf[..len], from, now);
                    } else if let Some(len) = state.on_rtp(&mut buf[..len], from, now) {
                        if let Some(to) = state.rtp_remote.target() {
                            if leg.rtp.send_to(&buf[..len], to).await.is_ok() {
                                let our_ts = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
                                state.stats.on_sent(our_ts, len.saturating_sub(12), now);
                            }
                        }
                    }
                }
                Err(e) => debug!(error = %e, "RTP receive error"),
            },
            received = leg.rtcp.recv_from(&mut rtcp_in) => {
                if let Ok((len, from)) = received {
                    state.on_rtcp(&rtcp_in[..len], from, Instant::now());
                }
            }
            _ = housekeeping.tick() => {
                let now = Instant::now();
                if state.stats.report_due(now).is_some() {
                    send_rtcp(&leg, &mut state, false).await;
                }
                if state.control.expect_rtp && !state.timed_out && now >= state.last_rtp + state.config.timeout {
                    state.timed_out = true;
                    let _ = state.events.try_send(MediaEvent::RtpTimeout);
                }
                if let Some(event) = state.dtmf.poll_timeout(now) {
                    let _ = state.events.try_send(MediaEvent::Dtmf(event));
                }
            }
            changed = control_rx.changed() => {
                let (control, stop_asked) = control_rx.borrow_and_update().clone();
                stop = changed.is_err() || stop_asked;
                if !stop {
                    state.apply(control);
                }
            }
        }
    }
    send_rtcp(&leg, &mut state, true).await;
    state.finish()
}

fn rtcp_address(control: &LegControl) -> Option<SocketAddr> {
    let rtp = control.signalled?;
    Some(if control.rtcp_mux {
        rtp
    } else {
        SocketAddr::new(rtp.ip(), rtp.port().wrapping_add(1))
    })
}

/// Sends the report `state.stats` last wrote (or, with `bye`, the final one).
async fn send_rtcp(leg: &Leg, state: &mut State, bye: bool) {
    let target = if state.control.rtcp_mux {
        state.rtp_remote.target()
    } else {
        state.rtcp_remote.target()
    };
    let Some(to) = target else { return };
    let socket = if state.control.rtcp_mux {
        &leg.rtp
    } else {
        &leg.rtcp
    };
    let report = if bye {
        state.stats.final_report(Instant::now())
    } else {
        state.stats.last_report()
    };
    if socket.send_to(report, to).await.is_ok() {
        state.stats.report_sent();
    }
}

impl State {
    fn apply(&mut self, control: LegControl) {
        if control.signalled != self.control.signalled || control.rtcp_mux != self.control.rtcp_mux
        {
            self.rtp_remote.set_signalled(control.signalled);
            self.rtcp_remote.set_signalled(rtcp_address(&control));
        }
        if control.expect_rtp && !self.control.expect_rtp {
            // Resumed from hold: the timeout counts from now.
            self.last_rtp = Instant::now();
            self.timed_out = false;
        }
        if control.codec != self.control.codec {
            self.stats.set_codec(control.codec);
        }
        self.control = control;
    }

    /// Takes one datagram from the RTP port; returns the length to echo, if any.
    fn on_rtp(&mut self, packet: &mut [u8], from: SocketAddr, now: Instant) -> Option<usize> {
        let (seq, ts, ssrc, pt, marker, payload_range) = match RtpReader::new(packet) {
            Ok(r) => {
                let offset = r.payload_offset();
                (
                    u16::from(r.sequence_number()),
                    r.timestamp(),
                    r.ssrc(),
                    r.payload_type(),
                    r.mark(),
                    offset..offset + r.payload().len(),
                )
            }
            Err(_) => {
                self.invalid_packets += 1;
                return None;
            }
        };
        if self.rtp_remote.on_packet(from) {
            debug!(%from, "RTP latched to source");
        }
        self.last_rtp = now;
        self.timed_out = false;
        self.stats
            .on_received(seq, ts, ssrc, payload_range.len(), now);
        if Some(pt) == self.control.telephone_event {
            if let Some(event) = self.dtmf.on_packet(ts, marker, &packet[payload_range], now) {
                let _ = self.events.try_send(MediaEvent::Dtmf(event));
            }
        }
        if !self.control.sending {
            return None;
        }
        self.renumber.rewrite(packet);
        Some(packet.len())
    }

    fn on_rtcp(&mut self, packet: &[u8], from: SocketAddr, now: Instant) {
        if self.stats.on_rtcp(packet, now) {
            self.rtcp_remote.on_packet(from);
        }
    }

    fn finish(self) -> LegReport {
        let dtmf = self.dtmf.stats();
        LegReport {
            rtp: self.stats.summary(),
            invalid_packets: self.invalid_packets,
            dtmf_events: dtmf.events,
            dtmf_end_retransmissions: dtmf.end_retransmissions_ignored,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 8];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xd5; 160]);
        p
    }

    fn fields(p: &[u8]) -> (u16, u32, u32) {
        let r = RtpReader::new(p).unwrap();
        (u16::from(r.sequence_number()), r.timestamp(), r.ssrc())
    }

    fn control(signalled: Option<SocketAddr>) -> LegControl {
        LegControl {
            sending: true,
            expect_rtp: true,
            signalled,
            rtcp_mux: false,
            telephone_event: Some(101),
            codec: Codec::Pcmu,
        }
    }

    fn config(timeout: Duration) -> LegConfig {
        LegConfig {
            ssrc: 42,
            latching: LatchPolicy::Auto,
            timeout,
            cname: "test@voicegate".into(),
        }
    }

    #[test]
    fn numbering_stays_continuous_across_source_change() {
        let mut r = Renumber::new(0xabcd, 100, 1000);
        let mut out = Vec::new();
        for (i, ssrc) in [(0u16, 7u32), (1, 7), (2, 7), (0, 9), (1, 9)] {
            let mut p = packet(5000 + i, 40_000 + 160 * i as u32, ssrc);
            r.rewrite(&mut p);
            out.push(fields(&p));
            assert_eq!(&p[12..], &[0xd5; 160][..], "payload untouched");
        }
        let seqs: Vec<u16> = out.iter().map(|f| f.0).collect();
        assert_eq!(seqs, vec![100, 101, 102, 103, 104]);
        let ts: Vec<u32> = out.iter().map(|f| f.1).collect();
        assert!(
            ts.windows(2).all(|w| w[1].wrapping_sub(w[0]) == 160),
            "{ts:?}"
        );
        assert!(out.iter().all(|f| f.2 == 0xabcd));
    }

    struct Started {
        pool: std::sync::Arc<crate::PortPool>,
        echo: EchoHandle,
        /// The leg's RTP address.
        addr: SocketAddr,
        /// The caller's socket, also the leg's signalled peer.
        client: UdpSocket,
        events: mpsc::Receiver<MediaEvent>,
    }

    async fn start_leg(timeout: Duration) -> Started {
        let (min, max) = crate::pool::free_range(4);
        let pool = crate::PortPool::new(min, max);
        let ports = pool.allocate("127.0.0.1".parse().unwrap()).unwrap();
        let addr = format!("127.0.0.1:{}", ports.rtp_port()).parse().unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (tx, events) = mpsc::channel(16);
        let echo = EchoHandle::start(
            ports,
            config(timeout),
            control(Some(client.local_addr().unwrap())),
            tx,
        )
        .unwrap();
        Started {
            pool,
            echo,
            addr,
            client,
            events,
        }
    }

    /// A call can hang up before the leg's task first runs (a BYE right behind the ACK on a
    /// busy machine): the stop asked for then must still end the task and give its report.
    #[tokio::test]
    async fn a_leg_stopped_before_its_task_first_runs_still_stops() {
        // The test runtime is single-threaded: nothing spawned has run yet.
        let Started { pool, echo, .. } = start_leg(Duration::from_secs(30)).await;
        let report = tokio::time::timeout(Duration::from_secs(2), echo.stop())
            .await
            .expect("the leg stops");
        assert_eq!(report.rtp.packets_in, 0);
        assert_eq!(pool.in_use(), 0);
    }

    #[tokio::test]
    async fn echoes_to_the_source_address_and_frees_its_ports_when_stopped() {
        let Started {
            pool,
            echo,
            addr,
            client,
            ..
        } = start_leg(Duration::from_secs(30)).await;
        let mut buf = [0u8; 2048];
        for i in 0..5u16 {
            client
                .send_to(&packet(i, 160 * i as u32, 1), addr)
                .await
                .unwrap();
            let (n, from) = client.recv_from(&mut buf).await.unwrap();
            assert_eq!(from, addr);
            assert_eq!(&buf[12..n], &[0xd5; 160][..]);
            assert_eq!(fields(&buf[..n]).2, 42);
        }
        client.send_to(b"not rtp", addr).await.unwrap();
        echo.update(LegControl {
            sending: false,
            ..control(Some(client.local_addr().unwrap()))
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.send_to(&packet(9, 0, 1), addr).await.unwrap();
        let silent =
            tokio::time::timeout(Duration::from_millis(200), client.recv_from(&mut buf)).await;
        assert!(silent.is_err(), "no echo while on hold");
        assert_eq!(pool.in_use(), 1);
        let report = echo.stop().await;
        assert_eq!(report.rtp.packets_out, 5);
        assert_eq!(report.rtp.packets_in, 6);
        assert_eq!(report.invalid_packets, 1);
        assert_eq!(pool.in_use(), 0);
        assert!(
            std::net::UdpSocket::bind(addr).is_ok(),
            "port closed when the pool says free"
        );
    }

    #[tokio::test]
    async fn reports_digits_and_rtp_timeout() {
        let Started {
            echo,
            addr,
            client,
            mut events,
            ..
        } = start_leg(Duration::from_millis(300)).await;
        // Digit 5: a start packet, two updates, three end packets (same timestamp).
        for (i, (duration, end)) in [
            (160u16, false),
            (320, false),
            (480, false),
            (640, true),
            (640, true),
            (640, true),
        ]
        .into_iter()
        .enumerate()
        {
            let mut p = vec![0x80, 101 | if i == 0 { 0x80 } else { 0 }];
            p.extend_from_slice(&(100 + i as u16).to_be_bytes());
            p.extend_from_slice(&8000u32.to_be_bytes());
            p.extend_from_slice(&7u32.to_be_bytes());
            p.extend_from_slice(&[5, if end { 0x80 | 10 } else { 10 }]);
            p.extend_from_slice(&duration.to_be_bytes());
            client.send_to(&p, addr).await.unwrap();
        }
        let first = tokio::time::timeout(Duration::from_secs(1), events.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            first,
            MediaEvent::Dtmf(DtmfEvent {
                digit: '5',
                duration_ms: 80,
                volume: 10
            })
        );
        let second = tokio::time::timeout(Duration::from_secs(2), events.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            second,
            MediaEvent::RtpTimeout,
            "the digit is reported once, then RTP stops"
        );
        let report = echo.stop().await;
        assert_eq!(report.dtmf_events, 1);
        assert_eq!(report.dtmf_end_retransmissions, 2);
    }
}
