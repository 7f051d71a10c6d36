//! What one call does: the caller's leg, the media it answers with (echo, a bot, the relay
//! to the other leg), the other leg of a B2BUA call with its failover, transfers either way,
//! hold and resume, escalation from a bot to an agent, and the call's record.
//!
//! The call decides; a [`CallEnv`] does everything outside it (SIP out, next hops, the node's
//! counters, the media legs), so a call runs the same on the node and in tests without
//! sockets. Inputs come in through `on_request`, `on_response`, `on_media_input` and
//! `on_timeout` (time passed in); `settle` sends what they queued and does the work that
//! awaits; `next_deadline` says when to call again.

mod b2bua;
mod bot;
mod caller_media;
pub mod env;
mod escalation;
pub mod media;
mod reinvite;
mod transfer;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use voicegate_bridge::session::{BridgeEvent, SessionReport};
use voicegate_rtp::dtmf::{self, DtmfEvent};
use voicegate_rtp::{LegConfig, LegControl, LegReport, MediaEvent};
use voicegate_sip::message::{Request, Response};
use voicegate_sip::sdp::{self, Direction, LocalMedia, Negotiated};
use voicegate_sip::transport::Source;

use crate::caller::{CallerEvent, CallerLeg, CallerRequest, CallerState};
use crate::outbound::OutboundLeg;
use crate::outgoing::Identity;
use crate::peer::PeerRole;
use crate::record::CallRecord;
use crate::route::{Admitted, Route};
use b2bua::{Peer, Pending};
use env::{CallEnv, CallStart, MediaInput, MediaKind, PortsId};

/// The caller's phone rings: we answer at `answer_at` (None: rings until CANCEL or the ring
/// timeout), or give up at `give_up_at`.
#[derive(Clone, Copy, Debug)]
struct Ring {
    answer_at: Option<Instant>,
    give_up_at: Instant,
}

struct Media {
    /// Our RTP ports towards the caller (the env holds them, and runs what is on them).
    ports: PortsId,
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

/// One call, from the caller's INVITE to its record; `E` does what the call decides.
pub struct Call<E: CallEnv> {
    /// Everything outside the call: SIP out, next hops, counters, media.
    env: E,
    /// The caller's side: its INVITE, the dialog, its requests and ours, its session timer.
    caller: CallerLeg,
    number: String,
    /// Until the final answer, when the caller's phone rings.
    ring: Option<Ring>,
    media: Option<Media>,
    media_record: MediaRecord,
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
    /// The other leg, when voicegate calls out (B2BUA).
    peer: Option<Peer>,
    /// The other leg while a REFER it sent is carried out (it is replaced on success).
    transferor: Option<Peer>,
    /// Legs of peers given up on (a failed agent or transfer target), until their last
    /// transactions end.
    retired: Vec<OutboundLeg>,
    /// Work for the run loop that has to await.
    pending: Option<Pending>,
    /// The caller ID of legs we place (the trunk's external alias), else the caller's.
    caller_id: Option<String>,
    direction: &'static str,
}

impl<E: CallEnv> Call<E> {
    /// A call for an admitted INVITE from `source`, with our dialog tag.
    pub fn new(
        env: E,
        invite: Request,
        source: Source,
        local_tag: &str,
        admitted: Admitted,
        now: Instant,
    ) -> Self {
        let number = invite.uri_user().unwrap_or_default();
        let settings = env.settings();
        let ip = advertised_ip(settings.public_ip, &source, |remote| {
            env.local_ip_towards(remote)
        });
        let identity = Identity {
            via: format!(
                "SIP/2.0/{} {ip}:{}",
                source.transport.as_via(),
                source.local.port()
            ),
            contact: caller_contact(&invite, &number, ip, &source),
            user_agent: env.user_agent().to_string(),
        };
        let timers = settings.timers;
        Call {
            caller: CallerLeg::new(invite, source, local_tag, identity, timers),
            env,
            number,
            ring: None,
            media: None,
            media_record: MediaRecord::default(),
            route: admitted.route,
            call_sid: format!("{:032x}", rand::random::<u128>()),
            admitted_trunk: admitted.trunk_sid,
            started: now,
            answered_at: None,
            ended_at: None,
            recorded: false,
            end_reason: String::new(),
            peer: None,
            transferor: None,
            retired: Vec::new(),
            pending: None,
            caller_id: admitted.caller_id,
            direction: admitted.direction,
        }
    }

    pub async fn start(&mut self, now: Instant) {
        let source = self.caller.source();
        self.env.call_started(&CallStart {
            call_sid: &self.call_sid,
            call_id: self.caller.call_id(),
            trunk_sid: self.admitted_trunk.as_deref(),
            number: &self.number,
            remote: source.remote,
            transport: source.transport.as_via(),
            direction: self.direction,
        });
        self.caller.respond(100, "Trying", None, now);
        // RFC 4028: too small a session interval is refused before anything else.
        let timer_config = self.env.settings().routing.session_timer;
        if self.caller.negotiate_timer(&timer_config).is_err() {
            return self.reject(422, "Session Interval Too Small", now);
        }
        if let Route::Inbound { trunk_sid } = &self.route {
            let hops = self.env.trunk_hops(trunk_sid, &self.number).await;
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
                    + self.env.settings().routing.answer_timeout
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
                let give_up_at = now + self.env.settings().ring_timeout;
                self.ring = Some(Ring {
                    answer_at: None,
                    give_up_at,
                });
            }
            Route::Echo | Route::Flow(_) => {
                if let Err((status, reason)) = self.prepare_media() {
                    return self.reject(status, &reason, now);
                }
                let ring = self.env.settings().ring_duration;
                if ring.is_zero() {
                    self.answer(now);
                } else {
                    self.caller.respond(180, "Ringing", None, now);
                    let give_up_at = now + ring + self.env.settings().ring_timeout;
                    self.ring = Some(Ring {
                        answer_at: Some(now + ring),
                        give_up_at,
                    });
                }
            }
        }
    }

    /// The address we put in Contact and SDP (see [`advertised_ip`]).
    fn advertised_ip(&self) -> IpAddr {
        let towards = |remote| self.env.local_ip_towards(remote);
        advertised_ip(self.env.settings().public_ip, self.caller.source(), towards)
    }

    fn answer(&mut self, now: Instant) {
        let Some(media) = self.media.as_ref() else {
            return self.reject(500, "Server Internal Error: no media", now);
        };
        let body = match (&media.negotiated, sdp::parse(&self.caller.invite().body)) {
            (Some(negotiated), Ok(offer)) => sdp::build_answer(&offer, &media.local, negotiated),
            // Delayed offer: we offer in the 200 and read the answer from the ACK.
            _ => sdp::build_offer(
                &media.local,
                &self.env.settings().codecs,
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
        let settings = self.env.settings();
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
        if let Err(e) = self.env.start_echo(media.ports, config, control) {
            warn!(error = %e, "could not start the echo leg");
            return self.reject(500, "Server Internal Error: media", now);
        }
        self.caller.respond(200, "OK", Some(Bytes::from(body)), now);
        self.mark_answered(now);
    }

    /// The caller has our 200: the call is up from here on.
    fn mark_answered(&mut self, now: Instant) {
        self.answered_at = Some(now);
        self.env.call_answered(&self.call_sid);
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
        self.env.call_refused(status == 487);
    }

    pub fn on_request(&mut self, request: Request, source: Source, now: Instant) {
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

    pub fn on_response(&mut self, response: &Response, now: Instant) {
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

    /// No RTP for `rtp.timeout_secs` on a leg that should send: the call ends (both legs).
    fn on_rtp_timeout(&mut self, now: Instant) {
        if self.caller.is_up() {
            let secs = self.env.settings().rtp_timeout.as_secs();
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

    /// An event of the media legs: digits, an RTP timeout, the bot's end or its transfer.
    pub fn on_media_input(&mut self, input: MediaInput, now: Instant) {
        match input {
            MediaInput::Leg(MediaEvent::Dtmf(digit)) => self.on_dtmf(digit, "rfc4733"),
            MediaInput::Leg(MediaEvent::RtpTimeout) => self.on_rtp_timeout(now),
            MediaInput::Relay(event) => self.on_relay_event(event, now),
            MediaInput::Bot(BridgeEvent::Dtmf(digit)) => self.on_dtmf(digit, "rfc4733"),
            MediaInput::Bot(BridgeEvent::Ended(end)) => self.on_bot_end(end, now),
            MediaInput::Bot(BridgeEvent::Transfer { to }) => self.on_bot_transfer(to),
        }
    }

    /// A key press from the caller, by RFC 4733 or SIP INFO: one event whichever way it came.
    fn on_dtmf(&mut self, event: DtmfEvent, via: &'static str) {
        // RFC 4733 digits reach the bot in its own session; INFO ones are passed on.
        if via == "info" && self.env.media() == Some(MediaKind::Bot) {
            self.env.bot_dtmf(event.digit, event.duration_ms);
        }
        info!(call_id = self.caller.call_id(), digit = %event.digit, duration_ms = event.duration_ms, via, "DTMF");
        self.media_record.digits.push(event.digit);
        self.env.call_dtmf(self.caller.call_id(), event, via);
    }

    pub fn on_timeout(&mut self, now: Instant) {
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

    /// After each input: sends what the legs queued, does the work that awaits, takes the
    /// stopped media's reports, and writes the record once the call is over.
    pub async fn settle(&mut self) {
        self.flush();
        self.drive().await;
        self.collect_media_report().await;
        if self.caller.state() == CallerState::Ended && !self.recorded {
            // The record is written when the call ends, not when its last transaction expires.
            self.end_media();
            self.collect_media_report().await;
            self.record();
        }
    }

    /// The env, for its driver (e.g. to wait for the media's events).
    pub fn env_mut(&mut self) -> &mut E {
        &mut self.env
    }

    /// The task's last step: the media stopped and reported, the other legs' routes gone, and
    /// the record written if it was not yet.
    pub async fn close(&mut self) {
        self.end_media();
        self.collect_media_report().await;
        self.unregister_peer();
        if !self.recorded {
            self.record();
        }
    }

    /// While the INVITE is unanswered: when we answer or give up.
    fn ringing(&self) -> Option<Ring> {
        self.ring
            .filter(|_| self.caller.state() == CallerState::Proceeding)
    }

    /// Sends what the legs queued: the caller's first, then the other leg's.
    fn flush(&mut self) {
        while let Some(t) = self.caller.poll_transmit() {
            self.env.send(t);
        }
        self.flush_peer();
    }

    pub fn next_deadline(&self) -> Option<Instant> {
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
    pub fn finished(&self) -> bool {
        self.caller.state() == CallerState::Ended && self.caller.is_idle() && !self.peer_busy()
    }
}

/// The address we put in Contact and SDP: the configured public one, else the address the
/// INVITE reached us on, else (wildcard listener) the local address routed towards the peer.
fn advertised_ip(
    public_ip: Option<IpAddr>,
    source: &Source,
    towards: impl FnOnce(SocketAddr) -> Option<IpAddr>,
) -> IpAddr {
    if let Some(ip) = public_ip {
        return ip;
    }
    let local = source.local.ip();
    if !local.is_unspecified() {
        return local;
    }
    towards(source.remote).unwrap_or(local)
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

impl<E: CallEnv> Call<E> {
    /// The call's record, whatever its outcome; the trunk's call slot is freed.
    fn record(&mut self) {
        self.recorded = true;
        let trunk = self.admitted_trunk.take();
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
        let peer = self.peer.as_ref();
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        let source = self.caller.source();
        let mut r = CallRecord::new(self.caller.call_id(), &self.number);
        r.call_sid = self.call_sid.clone();
        r.from = self
            .caller
            .invite()
            .headers
            .get("From")
            .unwrap_or_default()
            .to_string();
        r.remote = source.remote.to_string();
        r.transport = source.transport.as_via().to_string();
        r.direction = self.direction.to_string();
        if let Some(trunk) = trunk {
            r.trunk = trunk;
        }
        r.started_at_ms = unix_millis() - ms(self.started.elapsed()) as i64;
        r.status = self.caller.final_status();
        if let Some(codec) = self.media_record.codec {
            r.codec = codec.to_string();
        }
        r.setup_ms = self.answered_at.map_or(0, |a| ms(a - self.started));
        r.duration_ms = self.answered_at.map_or(0, |a| ms(now - a));
        r.fill_rtp(rtp);
        r.dtmf = self.media_record.digits.clone();
        r.fill_bot(&bot);
        if let Some(label) = peer
            .and_then(|p| p.answered_by.clone())
            .or(self.media_record.peer_label.clone())
        {
            r.peer = label;
        }
        r.peer_attempts = peer.map_or(0, |p| p.attempts);
        r.peer_last_failure = peer.and_then(|p| p.last_failure()).map_or(0, |f| f.status);
        if let Some(codec) = self.media_record.peer_codec {
            r.peer_codec = codec.to_string();
        }
        r.transcoding = self.media_record.transcoding;
        r.peer_rtp_in = relay.b.packets_in;
        r.peer_rtp_out = relay.b.packets_out;
        if let Some(to) = &self.media_record.escalated_to {
            r.escalated_to = to.clone();
        }
        r.end = self.end_reason.clone();
        self.env.call_ended(&r);
    }
}

/// Now, in Unix milliseconds.
fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
