//! One call, one task: the INVITE server transaction, the dialog, the media and the call
//! record. Everything here is owned by the task, so calls share no locks with each other.
//!
//! What a dialled number does is decided in [`route`] and by admission: test numbers echo RTP
//! or ring, flow numbers go to a bot, `pstn` numbers go out through the carriers (or, coming
//! from a carrier, to the trunk's destinations) with the B2BUA of [`b2bua`].

mod b2bua;
mod escalation;
mod hops;
mod media;
mod pair;
mod reinvite;
mod transfer;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn};
use voicegate_bridge::session::{
    BotSettings, BridgeEvent, BridgeHandle, SessionEnd, SessionReport,
};
use voicegate_rtp::dtmf::{self, DtmfEvent};
use voicegate_rtp::{EchoHandle, LegConfig, LegControl, LegReport, MediaEvent, RtpPorts};
use voicegate_sip::accept;
use voicegate_sip::message::{Request, Response};
use voicegate_sip::sdp::{self, Direction, LocalMedia, Negotiated};
use voicegate_sip::transport::Source;

use crate::admit::Outcome;
use crate::core::{CallEvent, CallInput, CallTx, Core};
use crate::settings::FlowRoute;
use b2bua::{Peer, Pending};
use hops::NextHop;
use voicegate_bridge::relay::{RelayEvent, RelayHandle};
use voicegate_bridge::tap::TapFrame;
use voicegate_bridge::tone::ToneHandle;
use voicegate_call::{
    CallerEvent, CallerLeg, CallerRequest, CallerState, Identity, OutboundLeg, PeerRole,
};
use voicegate_control::Mode;

/// What a dialled number leads to.
#[derive(Clone, Debug)]
pub enum Route {
    Echo,
    Ringing,
    /// A bot flow.
    Flow(Arc<FlowRoute>),
    /// An admitted `pstn` call with no carrier configured: 503 "no route".
    NoRoute,
    NotFound,
    /// Through the B2BUA to these next hops, in order.
    Forward(Vec<NextHop>),
    /// From a carrier to a `pstn` number: the trunk's destinations (looked up at start).
    Inbound {
        trunk_sid: String,
    },
}

pub fn route(core: &Core, number: &str) -> Route {
    if core.settings.echo_numbers.iter().any(|n| n == number) {
        Route::Echo
    } else if core.settings.ringing_numbers.iter().any(|n| n == number) {
        Route::Ringing
    } else if let Some(flow) = core
        .settings
        .flows
        .iter()
        .find(|f| f.numbers.iter().any(|n| n == number))
    {
        Route::Flow(Arc::new(flow.clone()))
    } else {
        Route::NotFound
    }
}

/// What admission decided for a new INVITE, before any call task exists.
#[derive(Debug)]
pub enum Admission {
    Admitted(Admitted),
    /// Answer with this final response (no call is started).
    Refused {
        status: u16,
        reason: String,
        headers: Vec<(&'static str, String)>,
    },
}

/// An admitted call's route and what admission learnt on the way.
#[derive(Debug)]
pub struct Admitted {
    pub route: Route,
    /// The trunk whose counters hold the call (released when the call ends).
    pub trunk_sid: Option<String>,
    pub caller_id: Option<String>,
    pub direction: &'static str,
}

impl Admitted {
    fn local(route: Route) -> Self {
        Admitted {
            route,
            trunk_sid: None,
            caller_id: None,
            direction: "local",
        }
    }
}

/// Where the dialled number goes: by the trunks when they are configured, else by the test
/// numbers and flows of the config. Decided in the core, so a refusal costs no call task.
pub fn admit(core: &Core, invite: &Request, source: &Source, number: &str) -> Admission {
    if core.carrier_from(source.remote.ip()).is_some() {
        let mut admitted = Admitted::local(inbound_route(core, number));
        admitted.direction = "inbound";
        return admitted_or_not_found(core, admitted);
    }
    let Some(gate) = core.gate.as_ref().filter(|g| g.is_active()) else {
        return admitted_or_not_found(core, Admitted::local(route(core, number)));
    };
    match gate.decide(invite, source.remote.ip(), number) {
        Outcome::Admitted { trunk_sid, mode } => {
            let mut admitted = Admitted {
                route: Route::NotFound,
                caller_id: gate.trunks().external_alias(&trunk_sid),
                trunk_sid: Some(trunk_sid),
                direction: "local",
            };
            admitted.route = match mode {
                Mode::Flow { flow_id } => {
                    match gate.flow(&flow_id).or_else(|| config_flow(core, &flow_id)) {
                        Some(flow) => Route::Flow(flow),
                        None => Route::NotFound,
                    }
                }
                // Until carriers are configured, an E.164 echo test number answers here.
                Mode::Pstn if core.settings.echo_numbers.iter().any(|n| n == number) => Route::Echo,
                Mode::Pstn => {
                    admitted.direction = "outbound";
                    let hops = hops::carrier_hops(core, number);
                    if hops.is_empty() {
                        Route::NoRoute
                    } else {
                        Route::Forward(hops)
                    }
                }
            };
            admitted_or_not_found(core, admitted)
        }
        Outcome::Challenge(values) => Admission::Refused {
            status: 401,
            reason: "Unauthorized".into(),
            headers: values
                .into_iter()
                .map(|v| ("WWW-Authenticate", v))
                .collect(),
        },
        Outcome::Refused {
            status,
            reason,
            retry_after,
        } => Admission::Refused {
            status,
            reason,
            headers: retry_after
                .map(|s| ("Retry-After", s.to_string()))
                .into_iter()
                .collect(),
        },
    }
}

/// A number that leads nowhere is refused like any other: no call task for it.
fn admitted_or_not_found(core: &Core, admitted: Admitted) -> Admission {
    if !matches!(admitted.route, Route::NotFound) {
        return Admission::Admitted(admitted);
    }
    if let (Some(gate), Some(trunk)) = (core.gate.as_ref(), admitted.trunk_sid.as_deref()) {
        gate.call_ended(trunk);
    }
    Admission::Refused {
        status: 404,
        reason: "Number not mapped".into(),
        headers: Vec::new(),
    }
}

fn config_flow(core: &Core, name: &str) -> Option<Arc<FlowRoute>> {
    core.settings
        .flows
        .iter()
        .find(|f| f.name == name)
        .cloned()
        .map(Arc::new)
}

/// A carrier's call: trusted by its address, routed by the number's mapping.
fn inbound_route(core: &Core, number: &str) -> Route {
    let Some(gate) = core.gate.as_ref() else {
        return route(core, number);
    };
    let trunks = gate.trunks();
    let Some(mapping) = trunks.snapshot.numbers.iter().find(|m| m.number == number) else {
        return route(core, number);
    };
    match &mapping.mode {
        Mode::Pstn => Route::Inbound {
            trunk_sid: mapping.trunk_sid.clone(),
        },
        Mode::Flow { flow_id } => match gate.flow(flow_id).or_else(|| config_flow(core, flow_id)) {
            Some(flow) => Route::Flow(flow),
            None => Route::NotFound,
        },
    }
}

/// The media leg of an answered call.
enum Leg {
    Echo(EchoHandle),
    Bot(BridgeHandle),
    /// RTP relayed to the other leg of a B2BUA call.
    Relay(RelayHandle),
    /// Ringback while an agent's phone rings.
    Tone(ToneHandle),
}

/// The caller's phone rings: we answer at `answer_at` (None: rings until CANCEL or the ring
/// timeout), or give up at `give_up_at`.
#[derive(Clone, Copy, Debug)]
struct Ring {
    answer_at: Option<Instant>,
    give_up_at: Instant,
}

struct Media {
    /// Until the echo starts; then the echo task owns them.
    ports: Option<RtpPorts>,
    leg: Option<Leg>,
    local: LocalMedia,
    negotiated: Option<Negotiated>,
}

/// What the call record keeps of the media once its ports are given back.
#[derive(Default)]
struct MediaRecord {
    codec: Option<&'static str>,
    report: Option<LegReport>,
    bot: Option<SessionReport>,
    relay: Option<voicegate_bridge::relay::RelayReport>,
    digits: String,
    peer_codec: Option<&'static str>,
    transcoding: bool,
    escalated_to: Option<String>,
    /// The other leg's label once it left this task (handed over after the caller's REFER).
    peer_label: Option<String>,
}

struct Call {
    core: Arc<Core>,
    /// The caller's side: its INVITE, the dialog, its requests and ours, its session timer.
    caller: CallerLeg,
    number: String,
    /// Until the final answer, when the caller's phone rings.
    ring: Option<Ring>,
    media: Option<Media>,
    media_record: MediaRecord,
    /// Events from the media leg (digits, RTP timeout).
    media_events: Option<mpsc::Receiver<MediaEvent>>,
    /// How the bot step ended, from the bridge.
    bot_events: Option<mpsc::Receiver<BridgeEvent>>,
    /// A leg being stopped: its report is collected by the run loop.
    stopping: Vec<Leg>,
    route: Route,
    /// Our id for the call towards bots (Exotel's CallSid).
    call_sid: String,
    /// The trunk that admitted the call, whose call slot is freed when it ends.
    admitted_trunk: Option<String>,
    started: Instant,
    answered_at: Option<Instant>,
    ended_at: Option<Instant>,
    recorded: bool,
    end_reason: String,
    /// This call's own input queue, for the routes of the legs it places.
    self_tx: CallTx,
    /// The other leg, when voicegate calls out (B2BUA).
    peer: Option<Peer>,
    /// The other leg while a REFER it sent is carried out (it is replaced on success).
    transferor: Option<Peer>,
    /// Legs of peers given up on (a failed agent or transfer target), until their last
    /// transactions end.
    retired: Vec<OutboundLeg>,
    /// Work for the run loop that has to await.
    pending: Option<Pending>,
    relay_events: Option<mpsc::Receiver<RelayEvent>>,
    /// A bot kept listening after the hand-off to an agent (agent assist).
    assist: Option<BridgeHandle>,
    /// Where the relay copies both parties' audio for `assist`.
    tap: Option<mpsc::Sender<TapFrame>>,
    /// The caller ID of legs we place (the trunk's external alias), else the caller's.
    caller_id: Option<String>,
    direction: &'static str,
}

pub async fn run(
    core: Arc<Core>,
    invite: Request,
    source: Source,
    branch: String,
    local_tag: String,
    // The call's own input channel: its sender goes to the routes and the other leg.
    (self_tx, mut rx): (CallTx, mpsc::Receiver<CallInput>),
    admitted: Admitted,
) {
    let now = Instant::now();
    let number = invite.uri_user().unwrap_or_default();
    let timers = core.settings.timers;
    let user_agent = core.sender().user_agent();
    let ip = advertised_ip(core.settings.public_ip, &source);
    let identity = Identity {
        via: format!(
            "SIP/2.0/{} {ip}:{}",
            source.transport.as_via(),
            source.local.port()
        ),
        contact: caller_contact(&invite, &number, ip, &source),
        user_agent: user_agent.to_string(),
    };
    let mut call = Call {
        caller: CallerLeg::new(invite, source, &local_tag, identity, timers),
        core: core.clone(),
        number,
        ring: None,
        media: None,
        media_record: MediaRecord::default(),
        media_events: None,
        stopping: Vec::new(),
        bot_events: None,
        route: admitted.route,
        call_sid: format!("{:032x}", rand::random::<u128>()),
        admitted_trunk: admitted.trunk_sid,
        started: now,
        answered_at: None,
        ended_at: None,
        recorded: false,
        end_reason: String::new(),
        self_tx,
        peer: None,
        transferor: None,
        retired: Vec::new(),
        pending: None,
        relay_events: None,
        assist: None,
        tap: None,
        caller_id: admitted.caller_id,
        direction: admitted.direction,
    };
    core.stats.active.fetch_add(1, Ordering::Relaxed);
    if let Some(in_progress) = &core.in_progress {
        in_progress.started(crate::in_progress::StartedCall {
            call_sid: &call.call_sid,
            call_id: call.caller.call_id(),
            trunk_sid: call.admitted_trunk.as_deref(),
            number: &call.number,
            remote: call.caller.source().remote,
            transport: call.caller.source().transport.as_via(),
            direction: call.direction,
        });
    }
    call.start(now).await;
    call.flush();
    call.drive().await;
    while !call.finished() {
        let deadline = call.next_deadline();
        let media_event = async {
            match call.media_events.as_mut() {
                Some(events) => events.recv().await,
                None => std::future::pending().await,
            }
        };
        let bot_event = async {
            match call.bot_events.as_mut() {
                Some(events) => events.recv().await,
                None => std::future::pending().await,
            }
        };
        let relay_event = async {
            match call.relay_events.as_mut() {
                Some(events) => events.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            input = rx.recv() => match input {
                Some(CallInput::Request(request, source)) => call.on_request(request, source, Instant::now()),
                Some(CallInput::Response(response, _)) => call.on_response(&response, Instant::now()),
                None => break,
            },
            Some(event) = media_event => call.on_media_event(event, Instant::now()),
            Some(event) = relay_event => call.on_relay_event(event, Instant::now()),
            Some(event) = bot_event => match event {
                BridgeEvent::Dtmf(digit) => call.on_dtmf(digit, "rfc4733"),
                BridgeEvent::Ended(end) => call.on_bot_end(end, Instant::now()),
                BridgeEvent::Transfer { to } => call.on_bot_transfer(to),
            },
            _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => call.on_timeout(Instant::now()),
        }
        call.flush();
        call.drive().await;
        call.collect_media_report().await;
        if call.caller.state() == CallerState::Ended && !call.recorded {
            // The record is written when the call ends, not when its last transaction expires.
            call.end_media();
            call.collect_media_report().await;
            call.record();
        }
    }
    call.end_media();
    call.collect_media_report().await;
    core.unregister(call.caller.call_id(), &branch, &local_tag);
    call.unregister_peer();
    if !call.recorded {
        call.record();
    }
}

fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(86_400)
}

impl Call {
    async fn start(&mut self, now: Instant) {
        self.caller.respond(100, "Trying", None, now);
        // RFC 4028: too small a session interval is refused before anything else.
        let timer_config = self.core.settings.routing.session_timer;
        if self.caller.negotiate_timer(&timer_config).is_err() {
            return self.reject(422, "Session Interval Too Small", now);
        }
        if let Route::Inbound { trunk_sid } = &self.route {
            let hops = hops::trunk_hops(&self.core, trunk_sid, &self.number).await;
            self.route = if hops.is_empty() {
                Route::NoRoute
            } else {
                Route::Forward(hops)
            };
        }
        match self.route.clone() {
            Route::Forward(hops) => {
                // Only a request we relay uses up its hops (RFC 3261 §16.3); as the target
                // (echo, bot) we answer it whatever its Max-Forwards (RFC 4475 zeromf).
                if self.caller.invite().max_forwards() == Some(0) {
                    return self.reject(483, "Too Many Hops", now);
                }
                if let Err((status, reason)) = self.prepare_media() {
                    return self.reject(status, &reason, now);
                }
                if let Err((status, reason)) = self.start_peer(PeerRole::Forward, hops, now) {
                    return self.reject(status, &reason, now);
                }
                // The other leg's own deadlines end the wait; this is a backstop.
                let give_up_at = now
                    + self.core.settings.routing.answer_timeout
                    + std::time::Duration::from_secs(60);
                self.ring = Some(Ring {
                    answer_at: None,
                    give_up_at,
                });
            }
            // Resolved into hops above; none means no route.
            Route::Inbound { .. } => self.reject_with(
                503,
                "Service Unavailable (no route)",
                &[("Retry-After", "60".into())],
                now,
            ),
            Route::NotFound => {
                self.reject(404, "Number not mapped", now);
            }
            Route::NoRoute => {
                self.reject_with(
                    503,
                    "Service Unavailable (no route)",
                    &[("Retry-After", "60".into())],
                    now,
                );
            }
            Route::Ringing => {
                self.caller.respond(180, "Ringing", None, now);
                let give_up_at = now + self.core.settings.ring_timeout;
                self.ring = Some(Ring {
                    answer_at: None,
                    give_up_at,
                });
            }
            Route::Echo | Route::Flow(_) => {
                if let Err((status, reason)) = self.prepare_media() {
                    return self.reject(status, &reason, now);
                }
                let ring = self.core.settings.ring_duration;
                if ring.is_zero() {
                    self.answer(now);
                } else {
                    self.caller.respond(180, "Ringing", None, now);
                    let give_up_at = now + ring + self.core.settings.ring_timeout;
                    self.ring = Some(Ring {
                        answer_at: Some(now + ring),
                        give_up_at,
                    });
                }
            }
        }
    }

    /// Allocates RTP ports and checks the offer (if any) before we ring.
    fn prepare_media(&mut self) -> Result<(), (u16, String)> {
        // Our answers carry SDP, so a caller that cannot take SDP cannot be answered
        // (RFC 3261 §21.4.7; RFC 4475 sdp01).
        let invite = self.caller.invite();
        if !accept::accepts(&invite.headers, "application/sdp") {
            self.caller.add_final_header(
                "Warning",
                "399 voicegate \"Accept does not allow application/sdp, our only answer body\""
                    .into(),
            );
            return Err((406, "Not Acceptable".into()));
        }
        let offer = if invite.body.is_empty() {
            None
        } else if !invite.body_is_sdp() {
            return Err((415, "Unsupported Media Type: only application/sdp".into()));
        } else {
            Some(sdp::parse(&invite.body).map_err(|e| (400, format!("Malformed SDP: {e}")))?)
        };
        let negotiated = match &offer {
            Some(offer) => Some(
                sdp::negotiate_answer(
                    offer,
                    &self.core.settings.codecs,
                    self.core.settings.codec_preference,
                )
                .map_err(|e| (488, format!("Not Acceptable Here: {e}")))?,
            ),
            None => None,
        };
        let (ports, local) = self.allocate_ports()?;
        self.media = Some(Media {
            ports: Some(ports),
            leg: None,
            local,
            negotiated,
        });
        Ok(())
    }

    /// An RTP port pair of ours and the SDP origin that goes with it (503 when none is free).
    fn allocate_ports(&self) -> Result<(RtpPorts, LocalMedia), (u16, String)> {
        let ports = self
            .core
            .pool
            .allocate(self.caller.source().local.ip())
            .map_err(|e| (503, format!("Service Unavailable: {e}")))?;
        let local = LocalMedia {
            address: self.advertised_ip(),
            port: ports.rtp_port(),
            session_id: rand::random::<u32>() as u64,
            session_version: 1,
        };
        Ok((ports, local))
    }

    /// The address we put in Contact and SDP (see [`advertised_ip`]).
    fn advertised_ip(&self) -> IpAddr {
        advertised_ip(self.core.settings.public_ip, self.caller.source())
    }

    fn answer(&mut self, now: Instant) {
        let Some(media) = self.media.as_mut() else {
            return self.reject(500, "Server Internal Error: no media", now);
        };
        let body = match (&media.negotiated, sdp::parse(&self.caller.invite().body)) {
            (Some(negotiated), Ok(offer)) => sdp::build_answer(&offer, &media.local, negotiated),
            // Delayed offer: we offer in the 200 and read the answer from the ACK.
            _ => sdp::build_offer(
                &media.local,
                &self.core.settings.codecs,
                Direction::SendRecv,
            ),
        };
        if let Route::Flow(flow) = self.route.clone() {
            // A bot needs the codec: with a delayed offer it starts when the ACK brings the answer.
            if media.negotiated.is_some() {
                if let Err(e) = self.start_bot(flow) {
                    warn!(error = %e, "could not start the bot session");
                    return self.reject(500, "Server Internal Error: media", now);
                }
            }
            self.caller.respond(200, "OK", Some(Bytes::from(body)), now);
            self.mark_answered(now);
            return;
        }
        let Some(ports) = media.ports.take() else {
            return self.reject(500, "Server Internal Error: no media", now);
        };
        let settings = &self.core.settings;
        let config = LegConfig {
            ssrc: rand::random(),
            latching: settings.latching,
            timeout: settings.rtp_timeout,
            cname: format!("voicegate@{}", media.local.address),
        };
        let control = media
            .negotiated
            .as_ref()
            .map(media::leg_control)
            .unwrap_or_else(|| LegControl {
                // Delayed offer: until the ACK's answer, send where the caller's packets come from.
                sending: true,
                expect_rtp: true,
                signalled: None,
                rtcp_mux: false,
                telephone_event: None,
                codec: sdp::Codec::Pcmu,
            });
        let (events_tx, events_rx) = mpsc::channel(32);
        match EchoHandle::start(ports, config, control, events_tx) {
            Ok(echo) => {
                media.leg = Some(Leg::Echo(echo));
                self.media_events = Some(events_rx);
            }
            Err(e) => {
                warn!(error = %e, "could not start the echo leg");
                return self.reject(500, "Server Internal Error: media", now);
            }
        }
        self.caller.respond(200, "OK", Some(Bytes::from(body)), now);
        self.mark_answered(now);
    }

    /// The caller has our 200: the call is up from here on.
    fn mark_answered(&mut self, now: Instant) {
        self.answered_at = Some(now);
        self.core.stats.answered.fetch_add(1, Ordering::Relaxed);
        if let Some(in_progress) = &self.core.in_progress {
            in_progress.answered(&self.call_sid);
        }
    }

    fn reject_with(
        &mut self,
        status: u16,
        reason: &str,
        headers: &[(&'static str, String)],
        now: Instant,
    ) {
        for (name, value) in headers {
            self.caller.add_final_header(name, value.clone());
        }
        self.reject(status, reason, now);
    }

    fn reject(&mut self, status: u16, reason: &str, now: Instant) {
        self.hang_up_peer("", now);
        self.caller.respond(status, reason, None, now);
        self.caller.close();
        self.end_media();
        if self.end_reason.is_empty() {
            self.end_reason = reason.to_string();
        }
        if status == 487 {
            self.core.stats.cancelled.fetch_add(1, Ordering::Relaxed);
        } else {
            self.core.stats.rejected.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_request(&mut self, request: Request, source: Source, now: Instant) {
        if request.call_id() != self.caller.call_id() {
            return self.on_peer_request(request, source, now);
        }
        let Some(request) = self.caller.receive(request, source, now) else {
            return;
        };
        match request {
            CallerRequest::Cancel { proceeding } => {
                if proceeding {
                    self.end_reason = "cancelled by caller".into();
                    self.reject(487, "Request Terminated", now);
                }
                self.hang_up_peer("SIP;cause=487;text=\"cancelled by caller\"", now);
            }
            CallerRequest::Bye { early, reason } => self.on_bye(early, reason, now),
            CallerRequest::Confirmed { answer } => {
                // A delayed offer: our 200 offered, the ACK answers.
                if self.media.as_ref().is_some_and(|m| m.negotiated.is_none()) {
                    match answer {
                        Some(answer) => self.apply_answer(&answer),
                        None => warn!(
                            call_id = self.caller.call_id(),
                            "delayed offer: ACK carried no SDP answer"
                        ),
                    }
                }
            }
            CallerRequest::ReinviteAck { answer } => {
                if let Some(answer) = answer {
                    self.apply_answer(&answer);
                }
            }
            CallerRequest::Reinvite(request, source) => self.on_reinvite(request, source, now),
            CallerRequest::Refer(request, source) => self.on_refer(&request, &source, true, now),
            CallerRequest::Dtmf(key) => {
                let event = dtmf::DtmfEvent {
                    digit: key.digit,
                    duration_ms: key.duration_ms,
                    volume: dtmf::DEFAULT_VOLUME,
                };
                self.on_dtmf(event, "info");
            }
        }
    }

    /// The peer's answer to our offer (in an ACK): sets what we send and whether.
    fn apply_answer(&mut self, body: &[u8]) {
        let Some(media) = self.media.as_mut() else {
            return;
        };
        let negotiated = sdp::parse(body)
            .map_err(|e| e.to_string())
            .and_then(|answer| {
                sdp::negotiate_from_answer(&answer, &self.core.settings.codecs)
                    .map_err(|e| e.to_string())
            });
        match negotiated {
            Ok(n) => {
                if let Some(Leg::Echo(echo)) = &media.leg {
                    echo.update(media::leg_control(&n));
                }
                media.negotiated = Some(n);
                if let (Route::Flow(flow), None) = (self.route.clone(), &media.leg) {
                    if let Err(e) = self.start_bot(flow) {
                        warn!(error = %e, "could not start the bot session");
                    }
                }
                if self.peer.as_ref().is_some_and(|p| p.negotiated.is_some()) {
                    if let Err(e) = self.start_relay() {
                        warn!(error = %e, "could not start the relay");
                    }
                }
            }
            Err(e) => {
                warn!(call_id = self.caller.call_id(), error = %e, "unusable SDP answer in ACK")
            }
        }
    }

    /// The caller hung up (its BYE is answered); before our final answer the INVITE ends too.
    fn on_bye(&mut self, early: bool, reason: Option<String>, now: Instant) {
        if early {
            self.reject(487, "Request Terminated", now);
        }
        if self.end_reason.is_empty() {
            self.end_reason = "caller hung up".into();
        }
        let reason =
            reason.unwrap_or_else(|| "Q.850;cause=16;text=\"Normal call clearing\"".to_string());
        self.hang_up_peer(&reason, now);
        self.end_media();
    }

    /// The caller's re-INVITE of an answered call (its CSeq and overlap were checked by its
    /// leg): our answer from the call's media, and the other leg told of a hold or resume.
    fn on_reinvite(&mut self, request: Request, source: Source, now: Instant) {
        let before = self.caller_direction();
        let answer = self.renegotiate(&request).map(Bytes::from);
        let after = self.caller_direction();
        if let (Ok(_), Some(before), Some(after)) = (&answer, before, after) {
            if before != after {
                // Hold or resume: the other leg is told with our own re-INVITE.
                self.propagate_direction(after.reversed(), now);
            }
        }
        self.caller.answer_reinvite(&request, &source, answer, now);
    }

    /// A re-INVITE's offer (hold, resume, new address) or, without SDP, our new offer.
    fn renegotiate(&mut self, request: &Request) -> Result<String, (u16, String)> {
        let codecs = self.core.settings.codecs.clone();
        let preference = self.core.settings.codec_preference;
        let Some(media) = self.media.as_mut() else {
            return Err((488, "Not Acceptable Here: no media".into()));
        };
        media.local.session_version += 1;
        if request.body.is_empty() {
            return Ok(sdp::build_offer(&media.local, &codecs, Direction::SendRecv));
        }
        let offer = sdp::parse(&request.body).map_err(|e| (400, format!("Malformed SDP: {e}")))?;
        let negotiated = sdp::negotiate_answer(&offer, &codecs, preference)
            .map_err(|e| (488, format!("Not Acceptable Here: {e}")))?;
        match &media.leg {
            Some(Leg::Echo(echo)) => echo.update(media::leg_control(&negotiated)),
            // The bot keeps streaming through hold and resume; its RTP follows the caller.
            Some(Leg::Bot(bot)) => bot.expect_rtp(negotiated.direction.receives()),
            Some(Leg::Relay(relay)) => relay.update(
                voicegate_bridge::relay::Side::A,
                voicegate_bridge::relay::LegDirection {
                    sending: negotiated.direction.sends(),
                    expect_rtp: negotiated.direction.receives(),
                },
                negotiated.remote,
            ),
            Some(Leg::Tone(_)) | None => {}
        }
        let body = sdp::build_answer(&offer, &media.local, &negotiated);
        media.negotiated = Some(negotiated);
        Ok(body)
    }

    /// Our direction towards the caller, as last negotiated.
    fn caller_direction(&self) -> Option<Direction> {
        self.media
            .as_ref()
            .and_then(|m| m.negotiated.as_ref())
            .map(|n| n.direction)
    }

    fn on_response(&mut self, response: &Response, now: Instant) {
        if response.headers.get("Call-ID") != Some(self.caller.call_id()) {
            return self.on_peer_response(response, now);
        }
        if self.caller.on_response(response, now) {
            self.on_caller_events(now);
        }
    }

    /// What the caller's leg reported by itself: answers to our requests, their silence, a
    /// missing ACK, a lapsed session.
    fn on_caller_events(&mut self, now: Instant) {
        while let Some(event) = self.caller.poll_event() {
            let call_id = self.caller.call_id();
            match event {
                CallerEvent::ByeDone { status: None } => debug!(call_id, "BYE timed out"),
                CallerEvent::ByeDone { .. } => {}
                CallerEvent::ReinviteDone(response) => self.on_caller_reinvite_done(&response),
                CallerEvent::ReinviteTimeout => {
                    warn!(call_id, "the caller did not answer our re-INVITE")
                }
                CallerEvent::ReinviteUnacked => {
                    warn!(call_id, "no ACK for our answer to the caller's re-INVITE")
                }
                CallerEvent::NoAck => {
                    warn!(call_id, "no ACK for our 200: ending the call");
                    self.send_bye("no ACK", "SIP;cause=408;text=\"no ACK for 200\"", now);
                }
                CallerEvent::SessionExpired => {
                    warn!(call_id, "caller's session expired without refresh");
                    self.end_both("session expired", now);
                }
            }
        }
    }

    /// Ends an answered call from our side; `reason` becomes the BYE's Reason header
    /// (RFC 3326), e.g. `SIP;cause=408;text="No ACK"`.
    fn send_bye(&mut self, why: &str, reason: &str, now: Instant) {
        self.hang_up_peer(reason, now);
        self.end_media();
        self.end_reason = why.to_string();
        self.caller.bye(reason, now);
    }

    /// Stops the media and gives its ports back at once (the task may linger for Timer J).
    fn end_media(&mut self) {
        self.ended_at.get_or_insert_with(Instant::now);
        if let Some(media) = self.media.take() {
            self.media_record.codec = media.negotiated.as_ref().map(|n| n.codec.encoding_name());
            if let Some(Leg::Bot(bot)) = &media.leg {
                bot.caller_hung_up();
            }
            self.stopping.extend(media.leg);
        }
        if let Some(assist) = self.assist.take() {
            if self.end_reason == "caller hung up" {
                // The assisting bot hears `callended`, as it would have before the hand-off.
                assist.caller_hung_up();
            }
            self.stopping.push(Leg::Bot(assist));
        }
        self.tap = None;
        if let Some(peer) = self.peer.as_mut() {
            peer.negotiated = None;
        }
        self.media_events = None;
        self.bot_events = None;
        self.relay_events = None;
    }

    /// Waits for stopping legs' reports (their ports are free after this).
    async fn collect_media_report(&mut self) {
        for leg in std::mem::take(&mut self.stopping) {
            match leg {
                Leg::Echo(echo) => self.media_record.report = Some(echo.stop().await),
                Leg::Bot(bot) => {
                    // A listening bot that stopped reading could hold its session (and so the
                    // call record) forever: it gets a few seconds, then its task is dropped.
                    let finished =
                        tokio::time::timeout(std::time::Duration::from_secs(5), bot.finish()).await;
                    if let Ok((report, _ports)) = finished {
                        // The first bot's report is the call's; an assisting bot adds nothing.
                        self.media_record.bot.get_or_insert(report);
                    } else {
                        warn!(
                            call_id = self.caller.call_id(),
                            "bot session did not end in 5 s: dropped"
                        );
                    }
                }
                Leg::Relay(relay) => self.media_record.relay = Some(relay.stop().await.report),
                Leg::Tone(tone) => drop(tone.stop().await),
            }
        }
    }

    /// Starts streaming to the flow's bot on the call's ports.
    fn start_bot(&mut self, flow: Arc<FlowRoute>) -> Result<(), String> {
        let settings = &self.core.settings;
        let media = self.media.as_mut().ok_or("no media")?;
        let negotiated = media.negotiated.as_ref().ok_or("no negotiated codec")?;
        let ports = media.ports.take().ok_or("no RTP ports")?;
        let call_media = media::call_media(negotiated, &self.core);
        let from = self.caller.caller_user();
        let bot = BotSettings {
            url: flow.url.clone(),
            protocol: flow.protocol,
            bidirectional: flow.bidirectional,
            client: settings.bridge.client.clone(),
            media_interval: settings.bridge.media_interval,
            max_session: settings.bridge.max_session,
            playout_max: settings.bridge.playout_max,
            final_playout_max: settings.bridge.final_playout_max,
            write_timeout: settings.bridge.bot_write_timeout,
            max_messages_per_sec: settings.bridge.max_bot_messages_per_sec,
            max_bytes_per_sec: settings.bridge.max_bot_bytes_per_sec,
            silence_when_idle: settings.bridge.silence_when_idle,
            call_sid: self.call_sid.clone(),
            account_sid: flow.account_sid.clone(),
            from,
            to: self.number.clone(),
            extra_parameters: flow
                .parameters
                .iter()
                .cloned()
                .chain(forwarded_headers(
                    self.caller.invite(),
                    &settings.bridge.forward_headers,
                ))
                .collect(),
        };
        let (events_tx, events_rx) = mpsc::channel(32);
        let handle =
            BridgeHandle::start(ports, call_media, bot, events_tx).map_err(|e| e.to_string())?;
        media.leg = Some(Leg::Bot(handle));
        self.bot_events = Some(events_rx);
        Ok(())
    }

    /// The bot step ended: the flow's next step (hang up) unless the caller already left.
    fn on_bot_end(&mut self, end: SessionEnd, now: Instant) {
        if let (SessionEnd::BotClosed(_), Route::Flow(flow)) = (&end, &self.route) {
            if let Some(to) = flow.connect_on_end.clone() {
                if self.caller.is_up() {
                    info!(
                        call_id = self.caller.call_id(),
                        to, "bot closed: connecting to the agent"
                    );
                    self.pending = Some(Pending::Agent {
                        to,
                        from_transfer: false,
                    });
                    return;
                }
            }
        }
        let reason = match &end {
            // Ended by us (hang-up, or a hand-off): the call already knows what comes next.
            SessionEnd::CallerHungUp | SessionEnd::Stopped => return,
            SessionEnd::BotClosed(why) => format!("bot closed the stream: {why}"),
            SessionEnd::BotUnreachable(why) => format!("bot unreachable: {why}"),
            SessionEnd::MaxDuration => "bot session reached its maximum length".to_string(),
            SessionEnd::BotHangup => "bot hung up".to_string(),
            SessionEnd::RtpTimeout => return self.on_rtp_timeout(now),
        };
        info!(
            call_id = self.caller.call_id(),
            reason, "bot step ended: hanging up"
        );
        if self.caller.is_up() {
            let text = reason.replace('"', "'");
            self.send_bye(&reason, &format!("Q.850;cause=16;text=\"{text}\""), now);
        }
    }

    /// The bot asked for a transfer: to the agent it names, else the flow's.
    fn on_bot_transfer(&mut self, to: String) {
        let Route::Flow(flow) = &self.route else {
            return;
        };
        let to = if to.trim().is_empty() {
            match flow.default_agent.clone() {
                Some(agent) => agent,
                None => {
                    warn!(
                        call_id = self.caller.call_id(),
                        "bot transfer names no agent and the flow has none"
                    );
                    return;
                }
            }
        } else {
            to
        };
        if self.peer.is_some() || !self.caller.is_up() {
            return;
        }
        info!(
            call_id = self.caller.call_id(),
            to, "bot asked for a transfer"
        );
        self.pending = Some(Pending::Agent {
            to,
            from_transfer: true,
        });
    }

    /// No RTP for `rtp.timeout_secs` on a leg that should send: the call ends (both legs).
    fn on_rtp_timeout(&mut self, now: Instant) {
        if self.caller.is_up() {
            let secs = self.core.settings.rtp_timeout.as_secs();
            warn!(
                call_id = self.caller.call_id(),
                secs, "no RTP: ending the call"
            );
            self.send_bye(
                "RTP timeout",
                &format!("SIP;cause=408;text=\"no RTP for {secs} s\""),
                now,
            );
        }
    }

    fn on_media_event(&mut self, event: MediaEvent, now: Instant) {
        match event {
            MediaEvent::Dtmf(digit) => self.on_dtmf(digit, "rfc4733"),
            MediaEvent::RtpTimeout => self.on_rtp_timeout(now),
        }
    }

    /// A key press from the caller, by RFC 4733 or SIP INFO: one event whichever way it came.
    fn on_dtmf(&mut self, event: DtmfEvent, via: &'static str) {
        if via == "info" {
            if let Some(Media {
                leg: Some(Leg::Bot(bot)),
                ..
            }) = &self.media
            {
                bot.dtmf(event.digit, event.duration_ms);
            }
        }
        info!(call_id = self.caller.call_id(), digit = %event.digit, duration_ms = event.duration_ms, via, "DTMF");
        self.media_record.digits.push(event.digit);
        self.core.stats.dtmf.fetch_add(1, Ordering::Relaxed);
        let _ = self.core.events.send(CallEvent::Dtmf {
            call_id: self.caller.call_id().to_string(),
            digit: event.digit,
            duration_ms: event.duration_ms,
            via,
        });
    }

    fn on_timeout(&mut self, now: Instant) {
        self.on_peer_timeout(now);
        self.caller.handle_timeout(now);
        self.on_caller_events(now);
        if let Some(Ring {
            answer_at,
            give_up_at,
        }) = self.ringing()
        {
            if answer_at.is_some_and(|t| t <= now) {
                self.answer(now);
            } else if give_up_at <= now {
                self.end_reason = "no answer".into();
                self.reject(480, "Temporarily Unavailable", now);
            }
        }
    }

    /// While the INVITE is unanswered: when we answer or give up.
    fn ringing(&self) -> Option<Ring> {
        self.ring
            .filter(|_| self.caller.state() == CallerState::Proceeding)
    }

    /// Sends what the legs queued: the caller's first, then the other leg's.
    fn flush(&mut self) {
        let sender = self.core.sender().clone();
        while let Some(t) = self.caller.poll_transmit() {
            sender.send_to(&t.source, t.target, t.bytes);
        }
        self.flush_peer();
    }

    fn next_deadline(&self) -> Option<Instant> {
        let ring = self
            .ringing()
            .into_iter()
            .flat_map(|r| [r.answer_at, Some(r.give_up_at)]);
        std::iter::once(self.caller.poll_timeout())
            .chain(ring)
            .flatten()
            .chain(self.peer_deadlines())
            .min()
    }

    /// Over when the call has ended and no transaction still needs to answer retransmissions.
    fn finished(&self) -> bool {
        self.caller.state() == CallerState::Ended && self.caller.is_idle() && !self.peer_busy()
    }

    /// The call detail record: one line per call, whatever its outcome.
    fn record(&mut self) {
        self.recorded = true;
        if let (Some(gate), Some(trunk)) = (self.core.gate.as_ref(), self.admitted_trunk.take()) {
            gate.call_ended(&trunk);
        }
        self.core.stats.active.fetch_sub(1, Ordering::Relaxed);
        if let Some(in_progress) = &self.core.in_progress {
            in_progress.ended(&self.call_sid);
        }
        let now = self.ended_at.unwrap_or_else(Instant::now);
        let media = self.media_record.report.clone().unwrap_or_default();
        let bot = self.media_record.bot.clone().unwrap_or_default();
        let relay = self.media_record.relay.clone().unwrap_or_default();
        // The caller's RTP: relayed, or through the bot, or echoed.
        let rtp = if self.media_record.relay.is_some() {
            &relay.a
        } else if self.media_record.bot.is_some() {
            &bot.rtp
        } else {
            &media.rtp
        };
        let codec = self.media_record.codec.unwrap_or("-");
        let peer = self.peer.as_ref();
        info!(
            target: "voicegate::cdr",
            call_id = self.caller.call_id(),
            number = self.number,
            from = self.caller.invite().headers.get("From").unwrap_or_default(),
            remote = %self.caller.source().remote,
            transport = self.caller.source().transport.as_via(),
            status = self.caller.final_status(),
            codec,
            setup_ms = self.answered_at.map(|a| (a - self.started).as_millis() as u64).unwrap_or(0),
            duration_ms = self.answered_at.map(|a| (now - a).as_millis() as u64).unwrap_or(0),
            rtp_in = rtp.packets_in,
            rtp_out = rtp.packets_out,
            rtp_lost = rtp.lost,
            rtp_duplicates = rtp.duplicates,
            jitter_ms = format_args!("{:.1}", rtp.jitter_ms),
            rtt_ms = format_args!("{:.1}", rtp.rtt_ms.unwrap_or(0.0)),
            mos = format_args!("{:.2}", rtp.mos),
            dtmf = self.media_record.digits,
            bot_media_sent = bot.media_messages_sent,
            bot_media_received = bot.bot_media_messages,
            bot_marks = bot.marks_echoed,
            bot_clears = bot.clears,
            bot_frames_invalid = bot.bot_frames_invalid,
            bot_media_ignored = bot.bot_media_ignored,
            bot_over_budget = bot.bot_frames_over_budget,
            bot_frames_dropped = bot.frames_to_bot_dropped,
            direction = self.direction,
            peer = peer
                .and_then(|p| p.answered_by.as_deref())
                .or(self.media_record.peer_label.as_deref())
                .unwrap_or("-"),
            peer_attempts = peer.map_or(0, |p| p.attempts),
            peer_last_failure = peer.and_then(|p| p.last_failure()).map_or(0, |f| f.status),
            peer_codec = self.media_record.peer_codec.unwrap_or("-"),
            transcoding = self.media_record.transcoding,
            peer_rtp_in = relay.b.packets_in,
            peer_rtp_out = relay.b.packets_out,
            escalated_to = self.media_record.escalated_to.as_deref().unwrap_or("-"),
            end = self.end_reason,
            "call ended"
        );
    }
}

/// INVITE headers named in `bridge.forward_headers` (a trailing `*` matches a prefix), as
/// custom parameters for the bot.
fn forwarded_headers(invite: &Request, patterns: &[String]) -> Vec<(String, String)> {
    let matches = |name: &str| {
        patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => {
                name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix)
            }
            None => name.eq_ignore_ascii_case(p),
        })
    };
    invite
        .headers
        .0
        .iter()
        .filter(|h| matches(&h.name))
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect()
}

/// The address we put in Contact and SDP: the configured public one, else the address the
/// INVITE reached us on, else (wildcard listener) the local address routed towards the peer.
fn advertised_ip(public_ip: Option<IpAddr>, source: &Source) -> IpAddr {
    if let Some(ip) = public_ip {
        return ip;
    }
    let local = source.local.ip();
    if !local.is_unspecified() {
        return local;
    }
    local_ip_towards(source.remote).unwrap_or(local)
}

/// Our Contact towards the caller: the scheme follows its INVITE (RFC 3261 §12.1.1), not the
/// transport it came over.
fn caller_contact(invite: &Request, number: &str, ip: IpAddr, source: &Source) -> String {
    voicegate_sip::contact::value(
        voicegate_sip::contact::for_answer(invite),
        number,
        ip,
        source.local.port(),
        source.transport,
    )
}

/// The local address the kernel would use to reach `remote` (no packet is sent).
fn local_ip_towards(remote: SocketAddr) -> Option<IpAddr> {
    let bind = if remote.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect(remote).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}
