//! The B2BUA half of a call: the leg voicegate places (to a carrier, a trunk's destination or
//! an agent), failover between next hops, early media and the relay between the two legs.
//! Transfers are in `transfer.rs`, re-INVITEs across the legs in `reinvite.rs`, escalation
//! from a bot to an agent in `escalation.rs`.
//!
//! The caller's leg stays in [`Call`]; this file adds the other leg ([`Peer`], whose books
//! are kept by `voicegate_call::Peer`) and what joins them. Next hops are tried in order: 408,
//! 5xx and silence move on to the next; any other final answer goes back to the caller (or,
//! for an agent, to the flow's fallback).

use bytes::Bytes;
use tokio::time::Instant;
use tracing::{info, warn};
use voicegate_bridge::relay::{RelayEvent, Side};
use voicegate_sip::dialog::InDialog;
use voicegate_sip::message::{Request, Response};
use voicegate_sip::sdp::{self, Direction};
use voicegate_sip::session_timer;
use voicegate_sip::transport::Source;

use super::env::{CallEnv, MediaKind, PortsId, RelayEnd};
use super::media::{call_media, direction_of};
use super::Call;
use crate::hop::NextHop;
use crate::hop::Target;
use crate::{
    AfterFailure, Arrival, CallerState, Failure, Hop, InviteParams, OutState, OutboundEvent,
    OutboundLeg, PeerDeadline, PeerRole,
};

/// Work that needs to await (DNS, connecting, stopping media), done by the run loop.
#[derive(Clone, Debug)]
pub enum Pending {
    /// Try the next hop.
    Attempt,
    /// Ring an agent.
    Agent { to: String, from_transfer: bool },
    /// The agent answered: ringback off, relay on.
    BridgeAgent,
    /// The agent leg failed: the flow's fallback.
    Fallback,
    /// Call a REFER's target (asked by the caller's side, or by the other leg).
    Transfer { to: String, from_caller: bool },
    /// The transfer target answered: the caller's media moves to it.
    BridgeTransfer,
    /// The caller's transfer target answered: the other leg and it become a call of their
    /// own, and the caller is let go.
    HandOver,
}

/// The other leg of the call, with our RTP ports towards it.
pub type Peer = crate::peer::Peer<PortsId>;

impl<E: CallEnv> Call<E> {
    /// Starts the other leg: ports, our offer and the first attempt (done by the run loop).
    pub(super) fn start_peer(
        &mut self,
        role: PeerRole,
        hops: Vec<NextHop>,
        now: Instant,
    ) -> Result<(), (u16, String)> {
        let (ports, local) = self.allocate_ports()?;
        let answer_deadline = now + self.env.settings().routing.answer_timeout;
        self.peer = Some(Peer::new(role, hops, Some(ports), local, answer_deadline));
        self.pending = Some(Pending::Attempt);
        Ok(())
    }

    /// Does what needs awaiting, in order, until nothing is pending.
    pub(super) async fn drive(&mut self) {
        while let Some(pending) = self.pending.take() {
            match pending {
                Pending::Attempt => self.attempt(Instant::now()).await,
                Pending::Agent { to, from_transfer } => {
                    self.start_agent(&to, from_transfer, Instant::now()).await
                }
                Pending::BridgeAgent => self.bridge_agent(Instant::now()).await,
                Pending::Fallback => self.agent_fallback(Instant::now()).await,
                Pending::Transfer { to, from_caller } => {
                    self.start_transfer(&to, from_caller, Instant::now()).await
                }
                Pending::BridgeTransfer => self.bridge_transfer(Instant::now()).await,
                Pending::HandOver => self.hand_over(Instant::now()).await,
            }
            self.flush();
        }
    }

    /// Sends the INVITE to the next hop that resolves and connects.
    pub(super) async fn attempt(&mut self, now: Instant) {
        loop {
            let Some(peer) = self.peer.as_mut() else {
                return;
            };
            if peer.leg.is_some() {
                return;
            }
            let Some(hop) = peer.next_hop() else {
                return self.peer_exhausted(now);
            };
            let (target, server_name) = match hop.fixed {
                Some(t) => (t, None),
                None => match self.env.resolve(&hop).await {
                    Ok((mut targets, host)) => {
                        let first = targets.remove(0);
                        // The other addresses of the same name come next (SRV failover).
                        let peer = self.peer.as_mut().expect("peer exists");
                        peer.try_next(&hop, targets);
                        (first, Some(host))
                    }
                    Err(e) => {
                        warn!(call_id = self.caller.call_id(), hop = hop.label, error = %e, "next hop does not resolve");
                        let reason = format!("Service Unavailable ({}: {e})", hop.label);
                        self.peer.as_mut().expect("peer exists").unreachable(reason);
                        continue;
                    }
                },
            };
            let source = match self.env.connect(target, server_name.as_deref()).await {
                Ok(source) => source,
                Err(e) => {
                    warn!(call_id = self.caller.call_id(), hop = hop.label, target = %target.addr, error = %e, "cannot reach next hop");
                    let reason = format!("Service Unavailable ({} unreachable)", hop.label);
                    self.peer.as_mut().expect("peer exists").unreachable(reason);
                    continue;
                }
            };
            let params = self.invite_params(&hop, &source, target);
            let leg = OutboundLeg::invite(
                params,
                Hop {
                    source,
                    target: target.addr,
                },
                self.env.settings().timers,
                now,
            );
            self.env.register_leg(&leg.call_id, &leg.local_tag);
            info!(call_id = self.caller.call_id(), leg = leg.call_id, hop = hop.label, target = %target.addr, transport = target.transport.as_via(), "calling next hop");
            let attempt_timeout = self.env.settings().routing.attempt_timeout;
            let peer = self.peer.as_mut().expect("peer exists");
            peer.placed(leg, &hop.label, now, attempt_timeout);
            return;
        }
    }

    pub(super) fn invite_params(
        &self,
        hop: &NextHop,
        source: &Source,
        target: Target,
    ) -> InviteParams {
        let peer = self.peer.as_ref().expect("peer exists");
        let ip = match self.env.settings().public_ip {
            Some(ip) => ip,
            None if !source.local.ip().is_unspecified() => source.local.ip(),
            None => self
                .env
                .local_ip_towards(target.addr)
                .unwrap_or(source.local.ip()),
        };
        let host = match ip {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            std::net::IpAddr::V4(v4) => v4.to_string(),
        };
        let transport = target.transport.as_via();
        let port = self
            .env
            .listening_port(target.transport)
            .unwrap_or(source.local.port());
        // The caller's number, or the trunk's external alias for calls it places.
        let caller = self
            .caller_id
            .clone()
            .unwrap_or_else(|| self.caller.caller_user());
        let user = if caller.is_empty() {
            "anonymous".to_string()
        } else {
            caller
        };
        let offer_codecs = {
            let mut codecs = self.env.settings().codecs.clone();
            // The caller's codec first: no transcoding when the next hop takes it.
            if let Some(n) = self.media.as_ref().and_then(|m| m.negotiated.as_ref()) {
                codecs.retain(|c| *c != n.codec);
                codecs.insert(0, n.codec);
            }
            codecs
        };
        let sdp = sdp::build_offer(&peer.local, &offer_codecs, Direction::SendRecv);
        let mut extra: Vec<(String, String)> = self
            .env
            .settings()
            .routing
            .session_timer
            .uac_headers()
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect();
        for (name, value) in self.caller.forwarded_headers(&["X-*".to_string()]) {
            extra.push((name, value));
        }
        let to_uri = hop.to.clone().unwrap_or_else(|| {
            hop.request_uri
                .split(';')
                .next()
                .unwrap_or(&hop.request_uri)
                .to_string()
        });
        InviteParams {
            request_uri: hop.request_uri.clone(),
            from: format!("<sip:{user}@{host}>"),
            to: format!("<{to_uri}>"),
            // sips only when the target is a SIPS URI; TLS alone does not make one.
            contact: voicegate_sip::contact::value(
                voicegate_sip::contact::for_request(&hop.request_uri, None),
                &user,
                ip,
                port,
                target.transport,
            ),
            via: format!("SIP/2.0/{transport} {host}:{port}"),
            sdp: Some(Bytes::from(sdp)),
            credentials: hop.credentials.clone(),
            extra_headers: extra,
            user_agent: self.env.user_agent().to_string(),
        }
    }

    /// Every hop failed: the caller hears the last answer (or the flow's fallback runs).
    pub(super) fn peer_exhausted(&mut self, now: Instant) {
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        let Failure {
            status,
            reason,
            retry_after,
        } = peer.failure();
        match peer.role {
            PeerRole::Forward => {
                info!(
                    call_id = self.caller.call_id(),
                    status, reason, "no next hop took the call"
                );
                self.end_reason = format!("{status} {reason}");
                let headers: Vec<_> = retry_after
                    .map(|r| ("Retry-After", r))
                    .into_iter()
                    .collect();
                if self.caller.state() == CallerState::Proceeding {
                    self.reject_with(status, &reason, &headers, now);
                }
                self.release_peer_ports();
            }
            PeerRole::Agent => {
                info!(
                    call_id = self.caller.call_id(),
                    status, reason, "agent leg failed"
                );
                self.pending = Some(Pending::Fallback);
            }
            role @ (PeerRole::CallerTransfer | PeerRole::Transfer) => {
                let from_caller = role == PeerRole::CallerTransfer;
                info!(
                    call_id = self.caller.call_id(),
                    status, reason, from_caller, "transfer target failed"
                );
                // The call goes on as it was; whoever sent the REFER hears how it went.
                let failed = std::mem::replace(&mut self.peer, self.transferor.take());
                self.retire(failed);
                let outcome = format!("SIP/2.0 {status} {reason}");
                if from_caller {
                    return self.notify_caller(&outcome, true, now);
                }
                let transferor_up = match self.peer.as_mut().and_then(|p| p.leg.as_mut()) {
                    Some(leg) if leg.state == OutState::Answered => {
                        leg.notify_refer(&outcome, true, now);
                        true
                    }
                    _ => false,
                };
                if !transferor_up && self.caller.is_up() {
                    // The transferor already left: nobody is left for the caller.
                    self.send_bye(
                        "transfer failed",
                        &format!("SIP;cause={status};text=\"transfer failed\""),
                        now,
                    );
                }
            }
        }
    }

    /// Keeps the legs of a peer that is done with, until their transactions end (the ACK of
    /// a retransmitted final response, the 200 of a BYE): they keep their routes till then.
    pub(super) fn retire(&mut self, peer: Option<Peer>) {
        if let Some(peer) = peer {
            if let Some(ports) = peer.ports {
                self.env.release_ports(ports);
            }
            self.retired.extend(peer.into_legs());
        }
    }

    pub(super) fn release_peer_ports(&mut self) {
        if let Some(ports) = self.peer.as_mut().and_then(|p| p.ports.take()) {
            self.env.release_ports(ports);
        }
    }

    /// A response from the next hop.
    pub(super) fn on_peer_response(&mut self, response: &Response, now: Instant) {
        let call_id = response.headers.get("Call-ID").unwrap_or_default();
        if let Some(old) = self.transferor.as_mut() {
            // NOTIFY and BYE answers of the leg being transferred away.
            if let Some(leg) = old.leg_mut(call_id) {
                leg.on_response(response, now);
                return;
            }
        }
        if let Some(leg) = self.retired.iter_mut().find(|l| l.owns(call_id)) {
            leg.on_response(response, now);
            return;
        }
        let event = self
            .peer
            .as_mut()
            .and_then(|peer| peer.on_response(response, now));
        if let Some(event) = event {
            self.on_peer_event(event, now);
        }
    }

    pub(super) fn on_peer_event(&mut self, event: OutboundEvent, now: Instant) {
        match event {
            OutboundEvent::Provisional(r) => self.on_peer_provisional(&r, now),
            OutboundEvent::Answered(r) => self.on_peer_answered(&r, now),
            OutboundEvent::Failed {
                status,
                reason,
                response,
            } => self.on_peer_failed(status, &reason, response.as_ref(), now),
            OutboundEvent::ReinviteDone(r) => self.on_peer_reinvite_done(&r, now),
            OutboundEvent::ReinviteTimeout => self.end_both("session refresh got no answer", now),
        }
    }

    pub(super) fn on_peer_provisional(&mut self, r: &Response, now: Instant) {
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        if peer.role != PeerRole::Forward {
            return; // the caller hears our ringback, or still talks to the transferor
        }
        if !r.body.is_empty() && !peer.early_media {
            if let Err(e) = self.accept_peer_answer(&r.body) {
                warn!(call_id = self.caller.call_id(), error = %e, "unusable SDP in early media");
            } else if self.start_relay().is_ok() {
                let body = self.caller_answer_sdp();
                self.peer.as_mut().expect("peer").early_media = true;
                self.caller
                    .respond(183, "Session Progress", body.map(Bytes::from), now);
                return;
            }
        }
        let peer = self.peer.as_mut().expect("peer");
        if !peer.ringing_sent && !peer.early_media {
            peer.ringing_sent = true;
            self.caller.respond(180, "Ringing", None, now);
        }
    }

    pub(super) fn on_peer_answered(&mut self, r: &Response, now: Instant) {
        if !r.body.is_empty() {
            if let Err(e) = self.accept_peer_answer(&r.body) {
                warn!(call_id = self.caller.call_id(), error = %e, "unusable SDP answer: hanging the leg up");
                if let Some(leg) = self.peer.as_mut().and_then(|p| p.leg.as_mut()) {
                    leg.bye("SIP;cause=488;text=\"no common codec\"", now);
                }
                return self.on_peer_failed(488, "Not Acceptable Here", None, now);
            }
        }
        let requested = self.env.settings().routing.session_timer.session_expires;
        let peer = self.peer.as_mut().expect("peer");
        peer.answered(r, requested, now);
        if peer.negotiated.is_none() {
            warn!(
                call_id = self.caller.call_id(),
                "next hop answered without SDP"
            );
        }
        info!(
            call_id = self.caller.call_id(),
            hop = peer.label(),
            "next hop answered"
        );
        match peer.role {
            PeerRole::Forward => {
                if !peer.early_media {
                    if let Err(e) = self.start_relay() {
                        warn!(call_id = self.caller.call_id(), error = %e, "could not start the relay");
                    }
                }
                let body = self.caller_answer_sdp();
                self.caller.respond(200, "OK", body.map(Bytes::from), now);
                self.mark_answered(now);
            }
            PeerRole::Agent => self.pending = Some(Pending::BridgeAgent),
            PeerRole::Transfer => self.pending = Some(Pending::BridgeTransfer),
            PeerRole::CallerTransfer => self.pending = Some(Pending::HandOver),
        }
    }

    pub(super) fn on_peer_failed(
        &mut self,
        status: u16,
        reason: &str,
        response: Option<&Response>,
        now: Instant,
    ) {
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        let label = peer.label();
        info!(
            call_id = self.caller.call_id(),
            hop = label,
            status,
            reason,
            "next hop refused"
        );
        let retry_after = response
            .and_then(|r| r.headers.get("Retry-After"))
            .map(str::to_string);
        let failure = Failure {
            status,
            reason: reason.to_string(),
            retry_after,
        };
        match peer.failed(failure) {
            AfterFailure::TryNext => self.pending = Some(Pending::Attempt),
            AfterFailure::Exhausted(_) => self.peer_exhausted(now),
        }
    }

    /// The next hop's SDP answer (in a 183 or 200): what we send it and how.
    pub(super) fn accept_peer_answer(&mut self, body: &[u8]) -> Result<(), String> {
        let codecs = self.env.settings().codecs.clone();
        let answer = sdp::parse(body).map_err(|e| e.to_string())?;
        let n = sdp::negotiate_from_answer(&answer, &codecs).map_err(|e| e.to_string())?;
        let peer = self.peer.as_mut().ok_or("no peer")?;
        // The relay's side B is this leg only once it is the call's other party; a transfer
        // target's answer must not re-point the transferor's side before the bridge.
        if peer.role == PeerRole::Forward && self.env.media() == Some(MediaKind::Relay) {
            self.env.update_relay(Side::B, direction_of(&n), n.remote);
        }
        peer.negotiated = Some(n);
        Ok(())
    }

    /// Our answer to the caller's offer (or our offer, for a delayed offer).
    pub(super) fn caller_answer_sdp(&self) -> Option<String> {
        let media = self.media.as_ref()?;
        match (&media.negotiated, sdp::parse(&self.caller.invite().body)) {
            (Some(n), Ok(offer)) => Some(sdp::build_answer(&offer, &media.local, n)),
            _ => Some(sdp::build_offer(
                &media.local,
                &self.env.settings().codecs,
                Direction::SendRecv,
            )),
        }
    }

    /// Joins the caller's ports to the next hop's. Needs both sides negotiated.
    pub(super) fn start_relay(&mut self) -> Result<(), String> {
        if self.env.media() == Some(MediaKind::Relay) {
            return Ok(());
        }
        let media = self.media.as_ref().ok_or("no caller media")?;
        let a_n = media
            .negotiated
            .clone()
            .ok_or("caller not negotiated yet")?;
        let peer = self.peer.as_ref().ok_or("no peer")?;
        let b_n = peer
            .negotiated
            .clone()
            .ok_or("next hop not negotiated yet")?;
        let b_ports = peer.ports.ok_or("next hop has no ports")?;
        let settings = self.env.settings();
        let a = RelayEnd {
            ports: media.ports,
            media: call_media(&a_n, settings),
            direction: direction_of(&a_n),
            rtcp_mux: a_n.rtcp_mux,
            cname: format!("voicegate@{}", media.local.address),
        };
        let b = RelayEnd {
            ports: b_ports,
            media: call_media(&b_n, settings),
            direction: direction_of(&b_n),
            rtcp_mux: b_n.rtcp_mux,
            cname: format!("voicegate@{}", peer.local.address),
        };
        self.env.start_relay(a, b)?;
        self.media_record.transcoding = a_n.codec != b_n.codec;
        self.media_record.peer_codec = Some(b_n.codec.encoding_name());
        Ok(())
    }

    pub(super) fn on_relay_event(&mut self, event: RelayEvent, now: Instant) {
        match event {
            RelayEvent::Dtmf(Side::A, digit) => self.on_dtmf(digit, "rfc4733"),
            RelayEvent::Dtmf(Side::B, digit) => {
                info!(call_id = self.caller.call_id(), digit = %digit.digit, "DTMF from the other leg")
            }
            RelayEvent::RtpTimeout(side) => {
                let who = if side == Side::A {
                    "caller"
                } else {
                    "other leg"
                };
                info!(call_id = self.caller.call_id(), who, "no RTP from one leg");
                self.on_rtp_timeout(now);
            }
        }
    }

    /// Ends both legs from our side (timeouts, refresh failures).
    pub(super) fn end_both(&mut self, why: &str, now: Instant) {
        self.hang_up_peer(&format!("SIP;cause=408;text=\"{why}\""), now);
        if self.caller.is_up() {
            self.send_bye(why, &format!("SIP;cause=408;text=\"{why}\""), now);
        } else if self.caller.state() == CallerState::Proceeding {
            self.reject(408, &format!("Request Timeout ({why})"), now);
        }
    }

    /// Hangs up or cancels the other leg, whatever state it is in.
    pub(super) fn hang_up_peer(&mut self, reason: &str, now: Instant) {
        // The transferor's leg is answered: it gets a BYE.
        for peer in self.transferor.iter_mut().chain(self.peer.iter_mut()) {
            peer.hang_up(reason, now);
        }
        // The caller's own ending should not run the fallback of an agent leg.
        if self
            .pending
            .as_ref()
            .is_some_and(|p| matches!(p, Pending::Attempt | Pending::Fallback))
        {
            self.pending = None;
        }
    }

    /// A request from the next hop, inside its dialog.
    pub(super) fn on_peer_request(&mut self, request: Request, source: Source, now: Instant) {
        let call_id = request.call_id().to_string();
        if self
            .transferor
            .as_ref()
            .and_then(|p| p.leg.as_ref())
            .is_some_and(|l| l.owns(&call_id))
        {
            return self.on_transferor_request(&request, &source, now);
        }
        let Some(peer) = self.peer.as_mut() else {
            return self.caller.incoming.answer_unknown(&request, &source);
        };
        let live = peer.leg.as_ref().is_some_and(|l| l.owns(&call_id));
        let arrival = match peer.leg_mut(&call_id) {
            Some(leg) if live => leg.receive(&request, &source, now),
            // A leg given up on: its dialog is over, but it still answers retransmissions.
            Some(spent) => spent.incoming.receive(None, &request, &source, now),
            None => return self.caller.incoming.answer_unknown(&request, &source),
        };
        let Arrival::Request(kind) = arrival else {
            return;
        };
        match kind {
            InDialog::Bye => {
                self.answer_peer(&request, &source, 200, "OK", &[], now);
                let peer = self.peer.as_mut().expect("peer");
                peer.hung_up_by_far_end();
                let who = if peer.role == PeerRole::Agent {
                    "agent"
                } else {
                    "callee"
                };
                let reason = request
                    .headers
                    .get("Reason")
                    .map(str::to_string)
                    .unwrap_or_else(|| "Q.850;cause=16;text=\"Normal call clearing\"".into());
                if self.caller.is_up() {
                    self.send_bye(&format!("{who} hung up"), &reason, now);
                }
            }
            InDialog::Invite => self.on_peer_reinvite(request, source, now),
            InDialog::Update => {
                // A session refresh without SDP (RFC 4028 §7.4 allows UPDATE).
                let extra: Vec<_> =
                    session_timer::refreshed_by_peer(&mut peer.timer, &request.headers, now)
                        .into_iter()
                        .collect();
                self.answer_peer(&request, &source, 200, "OK", &extra, now);
            }
            InDialog::Info => self.answer_peer(&request, &source, 200, "OK", &[], now),
            InDialog::Refer => self.on_refer(&request, &source, false, now),
            // A CANCEL after the other leg's 200 has no transaction to cancel.
            InDialog::Cancel => {
                let reason = "Call/Transaction Does Not Exist";
                self.answer_peer(&request, &source, 481, reason, &[], now)
            }
            // Answered by `Incoming`.
            InDialog::Ack
            | InDialog::Options
            | InDialog::Notify
            | InDialog::NotAllowed
            | InDialog::NotImplemented => {}
        }
    }

    /// Answers a request of the other leg's in its dialog.
    pub(super) fn answer_peer(
        &mut self,
        request: &Request,
        source: &Source,
        status: u16,
        reason: &str,
        headers: &[(&'static str, String)],
        now: Instant,
    ) {
        match self.peer.as_mut().and_then(|p| p.leg.as_mut()) {
            Some(leg) => leg
                .incoming
                .reply(request, source, status, reason, headers, now),
            None => self.caller.incoming.answer_unknown(request, source),
        }
    }

    pub(super) fn peer_deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        // Only the legs of the transferor: its own timers are no longer watched.
        let transferor = self
            .transferor
            .iter()
            .flat_map(|p| p.legs())
            .chain(self.retired.iter())
            .filter_map(|l| l.next_deadline());
        self.peer
            .iter()
            .flat_map(|p| p.deadlines())
            .chain(transferor)
    }

    pub(super) fn on_peer_timeout(&mut self, now: Instant) {
        for leg in &mut self.retired {
            leg.handle_timeout(now);
            while leg.poll_event().is_some() {}
        }
        if let Some(old) = self.transferor.as_mut() {
            // Its events are moot: the transfer decides what becomes of it.
            old.handle_timeout(now);
        }
        let events = self
            .peer
            .as_mut()
            .map(|p| p.handle_timeout(now))
            .unwrap_or_default();
        for e in events {
            self.on_peer_event(e, now);
        }
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        match peer.check_deadlines(now) {
            Some(PeerDeadline::Silent { label }) => {
                warn!(
                    call_id = self.caller.call_id(),
                    hop = label,
                    "next hop silent: trying the next"
                );
                let reason = format!("Request Timeout (no response from {label})");
                return self.on_peer_failed(408, &reason, None, now);
            }
            Some(PeerDeadline::NoAnswer { label }) => {
                info!(
                    call_id = self.caller.call_id(),
                    hop = label,
                    "no answer: giving up"
                );
                self.peer_exhausted(now);
            }
            None => {}
        }
        self.check_session_timers(now);
    }

    /// Sends what the other legs queued; forgets spent legs once their last transaction is
    /// over (until then they keep their route, for the 487 to our CANCEL or the 200 to our
    /// BYE).
    pub(super) fn flush_peer(&mut self) {
        let call_id = self.caller.call_id();
        for peer in self.transferor.iter_mut().chain(self.peer.iter_mut()) {
            while let Some(t) = peer.poll_send() {
                self.env.send(t);
            }
            for leg in peer.poll_ack_timeouts() {
                warn!(
                    call_id,
                    leg, "no ACK for our answer to the other leg's re-INVITE"
                );
            }
            for leg in peer.take_finished() {
                self.env.unregister_leg(&leg.call_id, &leg.local_tag);
            }
        }
        for leg in &mut self.retired {
            while let Some(t) = leg.poll_send() {
                self.env.send(t);
            }
        }
        let env = &mut self.env;
        self.retired.retain(|l| {
            let done = l.is_finished();
            if done {
                env.unregister_leg(&l.call_id, &l.local_tag);
            }
            !done
        });
    }

    /// Whether the other leg still has something to send or answer.
    pub(super) fn peer_busy(&self) -> bool {
        !self.retired.is_empty()
            || self.transferor.as_ref().is_some_and(|p| p.is_busy())
            || self
                .peer
                .as_ref()
                .is_some_and(|p| p.is_busy() || self.pending.is_some())
    }

    /// Forgets the other leg's routes (the call task is ending).
    pub(super) fn unregister_peer(&mut self) {
        let peers = self.peer.iter().chain(self.transferor.iter());
        for leg in peers.flat_map(|p| p.legs()).chain(self.retired.iter()) {
            self.env.unregister_leg(&leg.call_id, &leg.local_tag);
        }
    }
}
