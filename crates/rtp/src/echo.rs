//! The echo leg: every RTP packet is sent back (to where the caller's packets come from, or to
//! its SDP address, as `rtp.latching` says) under our own SSRC, sequence numbers and
//! timestamps, as carriers' echo-test numbers do. On the way it keeps the call's RTP
//! statistics, sends RTCP reports, reports RFC 4733 digits and notices when RTP stops.
//!
//! The packet is rewritten in the receive buffer: no allocation per packet.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::dtmf::DtmfEvent;
use crate::latch::LatchPolicy;
use crate::leg::{self, LegSetup, LegSockets, MediaLeg, RtcpDemux, RtpWriter, RECV_BYTES};
use crate::pool::RtpPorts;
use crate::stats::StatsSummary;
use voicegate_codec::Codec;

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
        let sockets = LegSockets::from_ports(ports)?;
        let (tx, rx) = watch::channel((control, false));
        let task = tokio::spawn(run(sockets, config, rx, events));
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

/// Our outgoing stream's numbering, continuous whatever the incoming stream does.
#[derive(Debug, Clone)]
pub struct Renumber {
    writer: RtpWriter,
    /// Added to the peer's timestamp; fixed per peer SSRC so their spacing is kept.
    ts_offset: u32,
    peer_ssrc: Option<u32>,
    last_ts: u32,
}

impl Renumber {
    pub fn new(ssrc: u32, first_seq: u16, first_ts: u32) -> Self {
        Renumber {
            writer: RtpWriter::starting_at(ssrc, first_seq, first_ts),
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
        self.writer.restamp(packet, ts);
        self.writer.advance_seq();
        ts
    }
}

/// The leg as set up by the call's settings and its latest control.
fn setup(config: &LegConfig, control: &LegControl) -> LegSetup {
    LegSetup {
        ssrc: config.ssrc,
        cname: config.cname.clone(),
        codec: control.codec,
        latching: config.latching,
        signalled: control.signalled,
        rtcp_mux: control.rtcp_mux,
        rtcp_demux: RtcpDemux::WhenMuxed,
        telephone_event: control.telephone_event,
        // Every RTP packet is echoed, whatever its payload type.
        only_payload_type: None,
        // As the echo leg always has: the telephone-event clock taken as 8 kHz.
        dtmf_clock: 8000,
        expect_rtp: control.expect_rtp,
        rtp_timeout: config.timeout,
    }
}

async fn run(
    sockets: LegSockets,
    config: LegConfig,
    mut control_rx: watch::Receiver<(LegControl, bool)>,
    events: mpsc::Sender<MediaEvent>,
) -> LegReport {
    // Reading the control marks it seen: a stop already asked for must be taken here, or
    // `changed()` below would never report it and the leg would never end.
    let (mut control, stopped) = control_rx.borrow_and_update().clone();
    let mut leg = MediaLeg::new(sockets, setup(&config, &control), Instant::now());
    let mut renumber = Renumber::new(config.ssrc, rand::random(), rand::random());
    let mut buf = vec![0u8; RECV_BYTES];
    let mut housekeeping = leg::housekeeping_timer();
    let mut stop = stopped;
    while !stop {
        tokio::select! {
            received = leg.recv(&mut buf) => {
                if let Some(event) = received.dtmf {
                    let _ = events.try_send(MediaEvent::Dtmf(event));
                }
                if control.sending {
                    // The packet is rewritten in the receive buffer: no allocation per packet.
                    let packet = &mut buf[..received.len];
                    let ts = renumber.rewrite(packet);
                    let payload_len = packet.len().saturating_sub(12);
                    leg.send_rtp(packet, ts, payload_len, received.at).await;
                }
            }
            _ = housekeeping.tick() => {
                let (timed_out, dtmf) = leg.housekeeping(Instant::now()).await;
                if timed_out {
                    let _ = events.try_send(MediaEvent::RtpTimeout);
                }
                if let Some(event) = dtmf {
                    let _ = events.try_send(MediaEvent::Dtmf(event));
                }
            }
            changed = control_rx.changed() => {
                let (new, stop_asked) = control_rx.borrow_and_update().clone();
                stop = changed.is_err() || stop_asked;
                if !stop {
                    apply(leg.state_mut(), &control, &new);
                    control = new;
                }
            }
        }
    }
    leg.send_bye().await;
    let state = leg.state();
    let dtmf = state.dtmf_stats();
    LegReport {
        rtp: state.summary(),
        invalid_packets: state.invalid_packets(),
        dtmf_events: dtmf.events,
        dtmf_end_retransmissions: dtmf.end_retransmissions_ignored,
    }
}

/// A change of control, on the leg.
fn apply(leg: &mut leg::LegState, old: &LegControl, new: &LegControl) {
    let now = Instant::now();
    if new.signalled != old.signalled || new.rtcp_mux != old.rtcp_mux {
        leg.set_signalled(new.signalled, new.rtcp_mux);
    }
    leg.set_expect_rtp(new.expect_rtp, now);
    if new.codec != old.codec {
        leg.set_codec(new.codec);
    }
    leg.set_telephone_event(new.telephone_event);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtp_rs::RtpReader;
    use tokio::net::UdpSocket;

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
