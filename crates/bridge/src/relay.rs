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

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::warn;
use voicegate_rtp::dtmf::DtmfEvent;
use voicegate_rtp::leg::{self, LegSetup, MediaLeg, Received, RtcpDemux, RECV_BYTES};
use voicegate_rtp::pool::RtpPorts;
use voicegate_rtp::stats::StatsSummary;

pub use crate::session::{CallMedia, Codec};
use crate::tap::{TapFrame, Track};
use crate::transcode::ForwardStats;
pub use crate::transcode::{Forward, Forwarded, RtpHeader};

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
        let relay = Relay {
            a_to_b,
            b_to_a,
            tap,
            events,
            dtmf_events: 0,
        };
        let (a, b) = (RelayedLeg::new(a)?, RelayedLeg::new(b)?);
        let (tx, rx) = watch::channel(control);
        let task = tokio::spawn(run(a, b, relay, control, rx));
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

/// One leg on its sockets, and whether we send to it.
struct RelayedLeg {
    leg: MediaLeg,
    sending: bool,
    /// Its SDP address, and whether its RTCP shares the RTP port (fixed for the call).
    signalled: Option<SocketAddr>,
    rtcp_mux: bool,
}

impl RelayedLeg {
    fn new(leg: RelayLeg) -> std::io::Result<Self> {
        let RelayLeg {
            ports,
            media,
            direction,
            rtcp_mux,
            cname,
        } = leg;
        let setup = LegSetup {
            rtcp_mux,
            // RTCP on the RTP port is taken as RTCP, rtcp-mux or not.
            rtcp_demux: RtcpDemux::Always,
            only_payload_type: Some(media.payload_type),
            expect_rtp: direction.expect_rtp,
            ..media.leg_setup(cname)
        };
        Ok(RelayedLeg {
            leg: MediaLeg::from_ports(ports, setup)?,
            sending: direction.sending,
            signalled: media.signalled,
            rtcp_mux,
        })
    }

    fn apply(&mut self, control: LegControl) {
        let state = self.leg.state_mut();
        if control.signalled != self.signalled {
            self.signalled = control.signalled;
            state.set_signalled(control.signalled, self.rtcp_mux);
        }
        state.set_expect_rtp(control.direction.expect_rtp, Instant::now());
        self.sending = control.direction.sending;
    }
}

/// The task's state apart from the legs.
struct Relay {
    a_to_b: Forward,
    b_to_a: Forward,
    tap: Option<mpsc::Sender<TapFrame>>,
    events: mpsc::Sender<RelayEvent>,
    dtmf_events: u64,
}

async fn run(
    mut a: RelayedLeg,
    mut b: RelayedLeg,
    mut relay: Relay,
    // What the legs were built with: an update made before the task first runs is then
    // still seen as a change.
    mut applied: Control,
    mut control_rx: watch::Receiver<Control>,
) -> RelayParts {
    let mut buf_a = vec![0u8; RECV_BYTES];
    let mut buf_b = vec![0u8; RECV_BYTES];
    let mut housekeeping = leg::housekeeping_timer();
    loop {
        tokio::select! {
            received = a.leg.recv(&mut buf_a) => {
                relay.forward(Side::A, &mut buf_a, received, &mut b).await;
            }
            received = b.leg.recv(&mut buf_b) => {
                relay.forward(Side::B, &mut buf_b, received, &mut a).await;
            }
            _ = housekeeping.tick() => {
                let now = Instant::now();
                for (side, leg) in [(Side::A, &mut a), (Side::B, &mut b)] {
                    relay.housekeeping(side, &mut leg.leg, now).await;
                }
            }
            changed = control_rx.changed() => {
                let control = *control_rx.borrow_and_update();
                if changed.is_err() || control.stop {
                    break;
                }
                if control.a != applied.a {
                    a.apply(control.a);
                }
                if control.b != applied.b {
                    b.apply(control.b);
                }
                applied = control;
            }
        }
    }
    a.leg.send_bye().await;
    b.leg.send_bye().await;
    let report = relay.finish(&a.leg, &b.leg);
    RelayParts {
        report,
        a: a.leg.into_ports(),
        b: b.leg.into_ports(),
    }
}

impl Relay {
    /// The peer's RTP packet from `side` (in `buf`), passed on to the other leg `dst`.
    async fn forward(
        &mut self,
        side: Side,
        buf: &mut [u8],
        received: Received,
        dst: &mut RelayedLeg,
    ) {
        let Received {
            len,
            header,
            dtmf,
            at: now,
        } = received;
        let packet = &mut buf[..len];
        let forward = match side {
            Side::A => &mut self.a_to_b,
            Side::B => &mut self.b_to_a,
        };
        if let Some(event) = dtmf {
            self.dtmf_events += 1;
            let _ = self.events.try_send(RelayEvent::Dtmf(side, event));
        }
        if !dst.sending || dst.leg.state().rtp_target().is_none() {
            return;
        }
        match forward.process(&header, packet) {
            Forwarded::Nothing => {}
            Forwarded::InPlace { timestamp } => {
                dst.leg
                    .send_rtp(packet, timestamp, header.payload_len(), now)
                    .await;
            }
            Forwarded::Frames(n) => {
                for i in 0..n {
                    let frame = forward.frame(i);
                    let ts = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
                    dst.leg.send_rtp(frame, ts, frame.len() - 12, now).await;
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

    async fn housekeeping(&mut self, side: Side, leg: &mut MediaLeg, now: Instant) {
        let (timed_out, dtmf) = leg.housekeeping(now).await;
        if timed_out {
            let _ = self.events.try_send(RelayEvent::RtpTimeout(side));
        }
        if let Some(event) = dtmf {
            self.dtmf_events += 1;
            let _ = self.events.try_send(RelayEvent::Dtmf(side, event));
        }
    }

    fn finish(self, a: &MediaLeg, b: &MediaLeg) -> RelayReport {
        let (ab, ba) = (self.a_to_b.stats(), self.b_to_a.stats());
        let both = |f: fn(&ForwardStats) -> u64| f(&ab) + f(&ba);
        let (a, b) = (a.state(), b.state());
        RelayReport {
            a: a.summary(),
            b: b.summary(),
            transcoding: self.a_to_b.transcoding() || self.b_to_a.transcoding(),
            dtmf_events: self.dtmf_events,
            invalid_packets: a.invalid_packets() + b.invalid_packets(),
            decode_errors: both(|s| s.decode_errors),
            dtmf_dropped: both(|s| s.dtmf_dropped),
        }
    }
}
