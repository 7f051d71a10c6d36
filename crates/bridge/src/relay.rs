//! The media of a B2BUA call: RTP relayed between leg A (the caller's side) and leg B (the
//! carrier or agent side), each on its own port pair, by one task that owns both legs'
//! sockets.
//!
//! Packets are forwarded as they arrive (no jitter buffer): with the same codec on both legs
//! the payload passes untouched under our own SSRC, sequence numbers and timestamps; with
//! different codecs it is transcoded in 20 ms frames (see [`crate::transcode`]). Per leg the
//! task latches the send address, keeps RTP statistics, sends RTCP reports (and a BYE at the
//! end), reports RFC 4733 digits and notices when RTP stops. With a tap, a listen-only bot
//! gets both parties' audio as 8 kHz frames.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};
use voicegate_rtp::dtmf::{DtmfEvent, Rfc4733Receiver};
use voicegate_rtp::latch::RemoteAddress;
use voicegate_rtp::pool::{PortLease, RtpPorts};
use voicegate_rtp::stats::{RtpStats, StatsSummary};

pub use crate::session::{CallMedia, Codec};
use crate::tap::{TapFrame, Track};
use crate::transcode::ForwardStats;
pub use crate::transcode::{Forward, Forwarded, RtpHeader};

/// How often the task looks at its clocks: the RTP timeout and DTMF timeout are this precise.
const HOUSEKEEPING: Duration = Duration::from_millis(100);

/// Receive buffer per socket: larger than any RTP packet on an Ethernet path.
const RECV_BYTES: usize = 2048;

/// One of the two legs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The caller's side.
    A,
    /// The carrier or agent side.
    B,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// Which way media flows on a leg, from its (latest) SDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegDirection {
    /// We may send RTP to this leg (its SDP receives).
    pub sending: bool,
    /// The peer sends: the RTP timeout runs only then, so a call on hold is not cut off.
    pub expect_rtp: bool,
}

impl LegDirection {
    pub const SENDRECV: LegDirection = LegDirection {
        sending: true,
        expect_rtp: true,
    };
}

/// One leg: its ports and what was negotiated on it. `media.ssrc` is our SSRC towards it.
#[derive(Debug)]
pub struct RelayLeg {
    pub ports: RtpPorts,
    pub media: CallMedia,
    pub direction: LegDirection,
    pub rtcp_mux: bool,
    pub cname: String,
}

/// What the relay tells the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayEvent {
    /// An RFC 4733 key press received from this leg (reported once per press).
    Dtmf(Side, DtmfEvent),
    /// RTP was expected from this leg and none came for its `rtp_timeout` (reported once
    /// per outage).
    RtpTimeout(Side),
}

/// The call's media figures, for its record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RelayReport {
    /// RTP received from and sent to leg A.
    pub a: StatsSummary,
    pub b: StatsSummary,
    /// Whether payloads were changed on the way (different codecs or G.711 laws).
    pub transcoding: bool,
    /// Digits reported, both legs.
    pub dtmf_events: u64,
    /// Datagrams on the RTP ports that were neither RTP of a negotiated payload type nor RTCP.
    pub invalid_packets: u64,
    /// Audio packets that did not decode (corrupt Opus) while transcoding or tapping.
    pub decode_errors: u64,
    /// Telephone-events not forwarded because the other leg has no telephone-event.
    pub dtmf_dropped: u64,
}

/// What [`RelayHandle::stop`] gives back.
#[derive(Debug)]
pub struct RelayParts {
    pub report: RelayReport,
    /// The legs' ports, still bound; None only if the task died.
    pub a: Option<RtpPorts>,
    pub b: Option<RtpPorts>,
}

/// Owns the relay task; dropping it stops the task (ports are then closed and freed).
#[derive(Debug)]
pub struct RelayHandle {
    task: JoinHandle<RelayParts>,
    control: watch::Sender<Control>,
}

/// What the call may change while the relay runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LegControl {
    direction: LegDirection,
    signalled: Option<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Control {
    a: LegControl,
    b: LegControl,
    stop: bool,
}

impl RelayHandle {
    /// Starts relaying; the task owns both legs' sockets. `tap`, when given, receives every
    /// relayed 20 ms of both parties decoded to 8 kHz PCM ([`Track::Inbound`] = what leg A
    /// sends, [`Track::Outbound`] = what leg B sends) by `try_send`: a full tap loses frames,
    /// it never holds up the relay. Fails if a socket cannot join the runtime or a codec
    /// cannot be set up.
    pub fn start(
        a: RelayLeg,
        b: RelayLeg,
        tap: Option<mpsc::Sender<TapFrame>>,
        events: mpsc::Sender<RelayEvent>,
    ) -> std::io::Result<Self> {
        let tapped = tap.is_some();
        let a_to_b = Forward::new(&a.media, &b.media, tapped.then_some(Track::Inbound))
            .map_err(std::io::Error::other)?;
        let b_to_a = Forward::new(&b.media, &a.media, tapped.then_some(Track::Outbound))
            .map_err(std::io::Error::other)?;
        let control = Control {
            a: LegControl {
                direction: a.direction,
                signalled: a.media.signalled,
            },
            b: LegControl {
                direction: b.direction,
                signalled: b.media.signalled,
            },
            stop: false,
        };
        let (io_a, state_a) = split_leg(a, Side::A)?;
        let (io_b, state_b) = split_leg(b, Side::B)?;
        let relay = Relay {
            a: state_a,
            b: state_b,
            a_to_b,
            b_to_a,
            tap,
            events,
            dtmf_events: 0,
            invalid_packets: 0,
        };
        let (tx, rx) = watch::channel(control);
        let task = tokio::spawn(run(io_a, io_b, relay, control, rx));
        Ok(RelayHandle { task, control: tx })
    }

    /// Hold/resume (`direction`) or a new address (`signalled`, None = unchanged) from a
    /// re-INVITE on one leg.
    pub fn update(&self, side: Side, direction: LegDirection, signalled: Option<SocketAddr>) {
        self.control.send_modify(|c| {
            let leg = match side {
                Side::A => &mut c.a,
                Side::B => &mut c.b,
            };
            leg.direction = direction;
            if signalled.is_some() {
                leg.signalled = signalled;
            }
        });
    }

    /// Stops the task (RTCP BYE on both legs) and gives the ports back, still bound, so a
    /// leg can go on to the next media stage. Ports are None only if the task died.
    pub async fn stop(mut self) -> RelayParts {
        self.control.send_modify(|c| c.stop = true);
        match (&mut self.task).await {
            Ok(parts) => parts,
            Err(e) => {
                warn!(error = %e, "relay task died");
                RelayParts {
                    report: RelayReport::default(),
                    a: None,
                    b: None,
                }
            }
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A leg's sockets, owned by the task. Fields drop in order: sockets closed, then the lease
/// freed.
struct LegIo {
    rtp: UdpSocket,
    rtcp: UdpSocket,
    lease: PortLease,
}

impl LegIo {
    /// Back to std sockets (still non-blocking, as the pool hands them out).
    fn into_ports(self) -> Option<RtpPorts> {
        let LegIo { rtp, rtcp, lease } = self;
        match (rtp.into_std(), rtcp.into_std()) {
            (Ok(rtp), Ok(rtcp)) => Some(RtpPorts { rtp, rtcp, lease }),
            _ => None,
        }
    }
}

/// Everything of one leg but its sockets.
struct LegState {
    side: Side,
    media: CallMedia,
    direction: LegDirection,
    rtcp_mux: bool,
    rtp_remote: RemoteAddress,
    rtcp_remote: RemoteAddress,
    stats: RtpStats,
    dtmf: Rfc4733Receiver,
    last_rtp: Instant,
    timed_out: bool,
}

fn split_leg(leg: RelayLeg, side: Side) -> std::io::Result<(LegIo, LegState)> {
    let RelayLeg {
        ports,
        media,
        direction,
        rtcp_mux,
        cname,
    } = leg;
    let RtpPorts { rtp, rtcp, lease } = ports;
    let io = LegIo {
        rtp: UdpSocket::from_std(rtp)?,
        rtcp: UdpSocket::from_std(rtcp)?,
        lease,
    };
    let clock = media.codec.clock_rate();
    let now = Instant::now();
    let state = LegState {
        side,
        rtp_remote: RemoteAddress::new(media.latching, media.signalled),
        rtcp_remote: RemoteAddress::new(media.latching, rtcp_address(media.signalled, rtcp_mux)),
        stats: RtpStats::new(media.ssrc, cname, media.codec, now),
        // RFC 4733 §2.1: the event clock is the audio's (telephone-event/48000 with Opus).
        dtmf: Rfc4733Receiver::new(clock),
        last_rtp: now,
        timed_out: false,
        direction,
        rtcp_mux,
        media,
    };
    Ok((io, state))
}

fn rtcp_address(rtp: Option<SocketAddr>, mux: bool) -> Option<SocketAddr> {
    let rtp = rtp?;
    Some(if mux {
        rtp
    } else {
        SocketAddr::new(rtp.ip(), rtp.port().wrapping_add(1))
    })
}

/// RFC 5761 §4: RTCP packet types 200-204 are never RTP payload types in use, so RTCP on the
/// RTP port (rtcp-mux, or a peer that sends it there anyway) is told apart by them.
fn is_rtcp(packet: &[u8]) -> bool {
    packet.len() >= 2 && (200..=204).contains(&packet[1])
}

/// The task's state apart from the sockets (kept separate so a packet can be transformed
/// while the other leg's socket sends it).
struct Relay {
    a: LegState,
    b: LegState,
    a_to_b: Forward,
    b_to_a: Forward,
    tap: Option<mpsc::Sender<TapFrame>>,
    events: mpsc::Sender<RelayEvent>,
    dtmf_events: u64,
    invalid_packets: u64,
}

async fn run(
    io_a: LegIo,
    io_b: LegIo,
    mut relay: Relay,
    // What the legs were built with: an update made before the task first runs is then
    // still seen as a change.
    mut applied: Control,
    mut control_rx: watch::Receiver<Control>,
) -> RelayParts {
    let mut buf_a = vec![0u8; RECV_BYTES];
    let mut buf_b = vec![0u8; RECV_BYTES];
    let mut rtcp_a = vec![0u8; RECV_BYTES];
    let mut rtcp_b = vec![0u8; RECV_BYTES];
    // One timer for everything that is not a packet (reports, RTP timeouts, DTMF whose end
    // was lost), rather than timers re-armed on every packet.
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = io_a.rtp.recv_from(&mut buf_a) => match received {
                Ok((len, from)) => relay.on_rtp(Side::A, &mut buf_a[..len], from, &io_a, &io_b).await,
                Err(e) => debug!(error = %e, "leg A RTP receive error"),
            },
            received = io_b.rtp.recv_from(&mut buf_b) => match received {
                Ok((len, from)) => relay.on_rtp(Side::B, &mut buf_b[..len], from, &io_a, &io_b).await,
                Err(e) => debug!(error = %e, "leg B RTP receive error"),
            },
            received = io_a.rtcp.recv_from(&mut rtcp_a) => {
                if let Ok((len, from)) = received {
                    relay.a.on_rtcp(&rtcp_a[..len], from, Instant::now());
                }
            }
            received = io_b.rtcp.recv_from(&mut rtcp_b) => {
                if let Ok((len, from)) = received {
                    relay.b.on_rtcp(&rtcp_b[..len], from, Instant::now());
                }
            }
            _ = housekeeping.tick() => {
                let now = Instant::now();
                relay.housekeeping(&io_a, &io_b, now).await;
            }
            changed = control_rx.changed() => {
                let control = *control_rx.borrow_and_update();
                if changed.is_err() || control.stop {
                    break;
                }
                if control.a != applied.a {
                    relay.a.apply(control.a);
                }
                if control.b != applied.b {
                    relay.b.apply(control.b);
                }
                applied = control;
            }
        }
    }
    relay.a.send_rtcp(&io_a, true).await;
    relay.b.send_rtcp(&io_b, true).await;
    let report = relay.finish();
    RelayParts {
        report,
        a: io_a.into_ports(),
        b: io_b.into_ports(),
    }
}

impl Relay {
    /// One datagram from `side`'s RTP port: RTCP (mux), or RTP to pass to the other leg.
    async fn on_rtp(
        &mut self,
        side: Side,
        packet: &mut [u8],
        from: SocketAddr,
        io_a: &LegIo,
        io_b: &LegIo,
    ) {
        let now = Instant::now();
        let (src, dst, forward, dst_io) = match side {
            Side::A => (&mut self.a, &mut self.b, &mut self.a_to_b, io_b),
            Side::B => (&mut self.b, &mut self.a, &mut self.b_to_a, io_a),
        };
        if is_rtcp(packet) {
            src.on_rtcp(packet, from, now);
            return;
        }
        let Some(header) = RtpHeader::parse(packet) else {
            self.invalid_packets += 1;
            return;
        };
        let is_event = Some(header.payload_type) == src.media.telephone_event;
        if header.payload_type != src.media.payload_type && !is_event {
            // Not negotiated (or a stray stream): neither counted as the peer's RTP nor
            // latched onto.
            self.invalid_packets += 1;
            return;
        }
        if src.rtp_remote.on_packet(from) {
            debug!(side = ?side, %from, "RTP latched to source");
        }
        src.last_rtp = now;
        src.timed_out = false;
        src.stats.on_received(
            header.seq,
            header.timestamp,
            header.ssrc,
            header.payload_len(),
            now,
        );
        if is_event {
            let payload = &packet[header.payload_start..header.payload_end];
            if let Some(event) = src
                .dtmf
                .on_packet(header.timestamp, header.marker, payload, now)
            {
                self.dtmf_events += 1;
                let _ = self.events.try_send(RelayEvent::Dtmf(side, event));
            }
        }
        if !dst.direction.sending {
            return;
        }
        let Some(to) = dst.rtp_remote.target() else {
            return;
        };
        match forward.process(&header, packet) {
            Forwarded::Nothing => {}
            Forwarded::InPlace { timestamp } => {
                if dst_io.rtp.send_to(packet, to).await.is_ok() {
                    dst.stats.on_sent(timestamp, header.payload_len(), now);
                }
            }
            Forwarded::Frames(n) => {
                for i in 0..n {
                    let frame = forward.frame(i);
                    if dst_io.rtp.send_to(frame, to).await.is_ok() {
                        let ts = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
                        dst.stats.on_sent(ts, frame.len() - 12, now);
                    }
                }
            }
        }
        if let Some(tap) = &self.tap {
            for frame in forward.tap_frames() {
                // A slow listener loses audio; the call does not wait for it.
                let _ = tap.try_send(*frame);
            }
        }
    }

    async fn housekeeping(&mut self, io_a: &LegIo, io_b: &LegIo, now: Instant) {
        for (leg, io) in [(&mut self.a, io_a), (&mut self.b, io_b)] {
            if leg.stats.report_due(now).is_some() {
                leg.send_rtcp(io, false).await;
            }
            if leg.direction.expect_rtp
                && !leg.timed_out
                && now >= leg.last_rtp + leg.media.rtp_timeout
            {
                leg.timed_out = true;
                let _ = self.events.try_send(RelayEvent::RtpTimeout(leg.side));
            }
            if let Some(event) = leg.dtmf.poll_timeout(now) {
                self.dtmf_events += 1;
                let _ = self.events.try_send(RelayEvent::Dtmf(leg.side, event));
            }
        }
    }

    fn finish(self) -> RelayReport {
        let (ab, ba) = (self.a_to_b.stats(), self.b_to_a.stats());
        let both = |f: fn(&ForwardStats) -> u64| f(&ab) + f(&ba);
        RelayReport {
            a: self.a.stats.summary(),
            b: self.b.stats.summary(),
            transcoding: self.a_to_b.transcoding() || self.b_to_a.transcoding(),
            dtmf_events: self.dtmf_events,
            invalid_packets: self.invalid_packets,
            decode_errors: both(|s| s.decode_errors),
            dtmf_dropped: both(|s| s.dtmf_dropped),
        }
    }
}

impl LegState {
    fn apply(&mut self, control: LegControl) {
        if control.signalled != self.media.signalled {
            self.media.signalled = control.signalled;
            self.rtp_remote.set_signalled(control.signalled);
            self.rtcp_remote
                .set_signalled(rtcp_address(control.signalled, self.rtcp_mux));
        }
        if control.direction.expect_rtp && !self.direction.expect_rtp {
            // Resumed from hold: the timeout counts from now.
            self.last_rtp = Instant::now();
            self.timed_out = false;
        }
        self.direction = control.direction;
    }

    fn on_rtcp(&mut self, packet: &[u8], from: SocketAddr, now: Instant) {
        if self.stats.on_rtcp(packet, now) {
            self.rtcp_remote.on_packet(from);
        }
    }

    /// Sends the report `stats` last wrote (or, with `bye`, the final one with a BYE).
    async fn send_rtcp(&mut self, io: &LegIo, bye: bool) {
        let (socket, target) = if self.rtcp_mux {
            (&io.rtp, self.rtp_remote.target())
        } else {
            (&io.rtcp, self.rtcp_remote.target())
        };
        let Some(to) = target else { return };
        let report = if bye {
            self.stats.final_report(Instant::now())
        } else {
            self.stats.last_report()
        };
        if socket.send_to(report, to).await.is_ok() {
            self.stats.report_sent();
        }
    }
}
