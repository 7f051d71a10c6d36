//! Everything a call does outside itself, as one trait ([`CallEnv`]): sending SIP, finding
//! and reaching next hops, the node's counters and the call's record, and running the
//! caller's media (our RTP ports, the echo, bot, relay and ringback legs). The call decides;
//! the env does.
//!
//! The node's env (`voicegate_engine`'s `NodeEnv`) runs it over the SIP core and the media
//! tasks. Tests drive a call with an env of their own: no sockets, no tasks, time passed in.

use std::net::{IpAddr, SocketAddr};

use voicegate_bridge::relay::{LegDirection, RelayEvent, RelayReport, Side};
use voicegate_bridge::session::{BotSettings, BridgeEvent, CallMedia, SessionReport};
use voicegate_bridge::tone::Tone;
use voicegate_rtp::dtmf::DtmfEvent;
use voicegate_rtp::{LegConfig, LegControl, LegReport, MediaEvent};
use voicegate_sip::transport::{Source, TransportKind};

use crate::hop::{NextHop, Target};
use crate::incoming::Transmit;
use crate::outbound::OutboundLeg;
use crate::record::CallRecord;
use crate::settings::CallSettings;

/// A pair of our RTP ports, as the call names it; the env holds the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortsId(pub u32);

/// What runs on the caller's ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaKind {
    Echo,
    Bot,
    /// RTP relayed to the other leg of a B2BUA call.
    Relay,
    /// Ringback while an agent's phone rings.
    Tone,
}

/// One end of the relay: our ports there and what was negotiated.
pub struct RelayEnd {
    pub ports: PortsId,
    pub media: CallMedia,
    pub direction: LegDirection,
    pub rtcp_mux: bool,
    pub cname: String,
}

/// What the relay left when it stopped: its report, and its ports back with the env.
pub struct RelayStopped {
    pub report: RelayReport,
    pub a: PortsId,
    pub b: PortsId,
}

/// What the stopped media legs reported.
#[derive(Default)]
pub struct MediaReports {
    pub echo: Option<LegReport>,
    /// The first bot's (an assisting bot's comes after it).
    pub bot: Option<SessionReport>,
    pub relay: Option<RelayReport>,
    /// A bot that did not end within its grace time and was dropped.
    pub bot_dropped: bool,
}

/// The bot gave the caller's ports back (or did not).
pub struct BotHandOff {
    pub ports_back: bool,
    /// The ended bot's report (None when it stays on to listen).
    pub report: Option<SessionReport>,
}

/// A media event for the call.
pub enum MediaInput {
    Leg(MediaEvent),
    Bot(BridgeEvent),
    Relay(RelayEvent),
}

/// One answered leg handed over to a pair of its own (the env joins them).
pub struct PairSide {
    pub leg: OutboundLeg,
    pub spent: Vec<OutboundLeg>,
    pub ports: PortsId,
    pub local: voicegate_sip::sdp::LocalMedia,
    pub negotiated: voicegate_sip::sdp::Negotiated,
    pub timer: Option<voicegate_sip::session_timer::SessionTimer>,
    pub label: String,
}

/// A call as it starts, for the node's books.
pub struct CallStart<'a> {
    pub call_sid: &'a str,
    pub call_id: &'a str,
    /// The trunk that admitted it (its call slot is held until the call ends).
    pub trunk_sid: Option<&'a str>,
    pub number: &'a str,
    pub remote: SocketAddr,
    pub transport: &'static str,
    pub direction: &'static str,
}

/// What a call needs from the node it runs on.
#[allow(async_fn_in_trait)]
pub trait CallEnv {
    fn settings(&self) -> &CallSettings;
    /// Our Server / User-Agent value.
    fn user_agent(&self) -> &str;
    /// Where we listen on `transport` (for the Via and Contact of legs we place).
    fn listening_port(&self, transport: TransportKind) -> Option<u16>;
    /// The local address the kernel would use to reach `remote` (for a wildcard listener).
    fn local_ip_towards(&self, remote: SocketAddr) -> Option<IpAddr>;
    fn send(&mut self, t: Transmit);
    /// Routes a leg's in-dialog messages to this call.
    fn register_leg(&mut self, call_id: &str, local_tag: &str);
    fn unregister_leg(&mut self, call_id: &str, local_tag: &str);

    /// A next hop's addresses (RFC 3263) and the host name for TLS.
    async fn resolve(&mut self, hop: &NextHop) -> Result<(Vec<Target>, String), String>;
    /// A connection (or the UDP socket) towards `target`.
    async fn connect(
        &mut self,
        target: Target,
        server_name: Option<&str>,
    ) -> Result<Source, String>;
    /// A trunk's destinations and registered PBXs for a number.
    async fn trunk_hops(&mut self, trunk_sid: &str, number: &str) -> Vec<NextHop>;
    /// An agent or transfer target's hops.
    async fn agent_hops(&mut self, to: &str, number: &str) -> Result<Vec<NextHop>, String>;

    /// The call started / was answered / refused / had a key pressed: the node's counters.
    fn call_started(&mut self, call: &CallStart<'_>);
    fn call_answered(&mut self, call_sid: &str);
    fn call_refused(&mut self, cancelled: bool);
    fn call_dtmf(&mut self, call_id: &str, event: DtmfEvent, via: &'static str);
    /// The call is over: its record, to write and count (its trunk's slot is free again).
    fn call_ended(&mut self, record: &CallRecord);
    /// Two legs we placed go on as a call of their own (the caller transferred it away).
    fn hand_over(
        &mut self,
        call_id: &str,
        number: &str,
        a: PairSide,
        b: PairSide,
    ) -> Result<(), String>;

    /// A pair of our RTP ports on `local_ip`: its name and RTP port.
    fn allocate_ports(&mut self, local_ip: IpAddr) -> Result<(PortsId, u16), String>;
    /// Gives ports back (no leg may be running on them).
    fn release_ports(&mut self, ports: PortsId);

    /// What runs on the caller's ports now.
    fn media(&self) -> Option<MediaKind>;
    fn start_echo(
        &mut self,
        ports: PortsId,
        config: LegConfig,
        control: LegControl,
    ) -> Result<(), String>;
    fn update_echo(&mut self, control: LegControl);
    fn start_bot(
        &mut self,
        ports: PortsId,
        media: CallMedia,
        bot: BotSettings,
    ) -> Result<(), String>;
    fn bot_expect_rtp(&mut self, on: bool);
    fn bot_dtmf(&mut self, digit: char, duration_ms: u32);
    fn start_relay(&mut self, a: RelayEnd, b: RelayEnd) -> Result<(), String>;
    fn update_relay(&mut self, side: Side, direction: LegDirection, remote: Option<SocketAddr>);
    fn start_tone(&mut self, ports: PortsId, media: CallMedia, tone: Tone) -> Result<(), String>;
    /// Stops the ringback; its ports come back.
    async fn stop_tone(&mut self);
    /// Stops the relay; its ports come back.
    async fn stop_relay(&mut self) -> Option<RelayStopped>;
    /// The bot lets go of the caller's `ports` (if it holds them): with `assist` it stays
    /// on, listen-only (fed by the next relay's tap), else its session ends.
    async fn take_ports_from_bot(&mut self, ports: PortsId, assist: bool) -> BotHandOff;
    /// Ends an assisting bot.
    async fn finish_assist(&mut self) -> Option<SessionReport>;
    /// Stops every media leg and lets go of every port (their reports follow); the bot
    /// always hears that the call ended, an assisting one only when `caller_hung_up`.
    fn stop_media(&mut self, caller_hung_up: bool);
    /// The reports of the legs stopped, once they have ended.
    async fn collect_media_reports(&mut self) -> MediaReports;
}
