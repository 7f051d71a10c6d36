//! The B2BUA half of a call: the leg voicegate places (to a carrier, a trunk's destination or
//! an agent), failover between next hops, early media, the relay between the two legs,
//! session timers on both legs, and escalation from a bot to an agent.
//!
//! The caller's leg stays in [`Call`]; this file adds the other leg ([`Peer`]) and what joins
//! them. Next hops are tried in order: 408, 5xx and silence move on to the next; any other
//! final answer goes back to the caller (or, for an agent, to the flow's fallback).

use std::collections::VecDeque;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};
use voicegate_bridge::relay::{RelayEvent, RelayHandle, RelayLeg, Side};
use voicegate_bridge::tap::TapFrame;
use voicegate_bridge::tone::ToneHandle;
use voicegate_rtp::RtpPorts;
use voicegate_sip::dialog::InDialog;
use voicegate_sip::message::{Request, Response};
use voicegate_sip::sdp::{self, Direction, LocalMedia, Negotiated};
use voicegate_sip::session_timer::{self, Refresher, SessionTimer};

use voicegate_sip::transport::Source;

use super::hops::{agent_hops, moves_on, refer_target, NextHop};
use super::media::{answer_reinvite_offer, call_media, direction_of};
use super::{Call, Leg, Route};
use crate::core::Core;
use crate::resolve::{parse_sip_target, Target};
use voicegate_call::{
    Answer, Arrival, CallerState, Hop, InviteParams, OutState, OutboundEvent, OutboundLeg,
    SessionDue,
};

/// What the other leg is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerRole {
    /// The call itself goes on: the caller is answered when this leg is.
    Forward,
    /// An agent for a caller already answered (by a bot): ringback meanwhile, fallback on
    /// failure.
    Agent,
    /// The target of a REFER from the other leg (blind transfer): replaces that leg when
    /// it answers; until then the caller stays with the transferor.
    Transfer,
    /// The target of a REFER from the caller's side: replaces the caller when it answers
    /// (the other leg and the target go on without it); until then nothing changes.
    CallerTransfer,
}

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

/// The other leg of the call.
pub struct Peer {
    pub role: PeerRole,
    hops: VecDeque<NextHop>,
    pub leg: Option<OutboundLeg>,
    /// Legs given up on whose transactions still finish (CANCEL, ACK retransmissions).
    spent: Vec<OutboundLeg>,
    /// Our RTP ports towards this leg, until the relay takes them.
    ports: Option<RtpPorts>,
    local: LocalMedia,
    pub negotiated: Option<Negotiated>,
    attempt_deadline: Option<Instant>,
    answer_deadline: Instant,
    pub last_failure: Option<(u16, String, Option<String>)>,
    timer: Option<SessionTimer>,
    pub attempts: u32,
    pub answered_by: Option<String>,
    ringing_sent: bool,
    /// The relay started on a 183 with SDP.
    early_media: bool,
    /// Where the answered leg's session timer last sent a refresh.
    refreshing: bool,
}

impl Peer {
    /// A leg about to be tried on `hops`, with our ports and SDP origin towards it.
    fn new(
        role: PeerRole,
        hops: Vec<NextHop>,
        ports: Option<RtpPorts>,
        local: LocalMedia,
        answer_deadline: Instant,
    ) -> Peer {
        Peer {
            role,
            hops: hops.into(),
            leg: None,
            spent: Vec::new(),
            ports,
            local,
            negotiated: None,
            attempt_deadline: None,
            answer_deadline,
            last_failure: None,
            timer: None,
            attempts: 0,
            answered_by: None,
            ringing_sent: false,
            early_media: false,
            refreshing: false,
        }
    }

    /// A peer that only holds finished legs (to reuse the leg bookkeeping on them).
    fn holding(spent: Vec<OutboundLeg>) -> Peer {
        let nowhere = LocalMedia {
            address: std::net::IpAddr::from([0, 0, 0, 0]),
            port: 0,
            session_id: 0,
            session_version: 0,
        };
        Peer {
            spent,
            ..Peer::new(PeerRole::Forward, Vec::new(), None, nowhere, Instant::now())
        }
    }

    fn current_hop_label(&self) -> String {
        self.answered_by.clone().unwrap_or_default()
    }
}

impl Call {
    /// Starts the other leg: ports, our offer and the first attempt (done by the run loop).
    pub(super) fn start_peer(
        &mut self,
        role: PeerRole,
        hops: Vec<NextHop>,
        now: Instant,
    ) -> Result<(), (u16, String)> {
        let (ports, local) = self.allocate_ports()?;
        let answer_deadline = now + self.core.settings.routing.answer_timeout;
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
    async fn attempt(&mut self, now: Instant) {
        loop {
            let Some(peer) = self.peer.as_mut() else {
                return;
            };
            if peer.leg.is_some() {
                return;
            }
            let Some(hop) = peer.hops.pop_front() else {
                return self.peer_exhausted(now);
            };
            let (target, server_name) = match hop.fixed {
                Some(t) => (t, None),
                None => match self.resolve_hop(&hop).await {
                    Ok((mut targets, host)) => {
                        let first = targets.remove(0);
                        let peer = self.peer.as_mut().expect("peer exists");
                        // The other addresses of the same name come next (SRV failover).
                        for t in targets.into_iter().rev() {
                            peer.hops.push_front(NextHop {
                                fixed: Some(t),
                                ..hop.clone()
                            });
                        }
                        (first, Some(host))
                    }
                    Err(e) => {
                        warn!(call_id = self.caller.call_id(), hop = hop.label, error = %e, "next hop does not resolve");
                        self.peer.as_mut().expect("peer exists").last_failure = Some((
                            503,
                            format!("Service Unavailable ({}: {e})", hop.label),
                            None,
                        ));
                        continue;
                    }
                },
            };
            let source = match self
                .core
                .sender()
                .connect(target.transport, target.addr, server_name.as_deref())
                .await
            {
                Ok(source) => source,
                Err(e) => {
                    warn!(call_id = self.caller.call_id(), hop = hop.label, target = %target.addr, error = %e, "cannot reach next hop");
                    self.peer.as_mut().expect("peer exists").last_failure = Some((
                        503,
                        format!("Service Unavailable ({} unreachable)", hop.label),
                        None,
                    ));
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
                self.core.settings.timers,
                now,
            );
            self.core
                .register_leg(&leg.call_id, &leg.local_tag, &self.self_tx);
            info!(call_id = self.caller.call_id(), leg = leg.call_id, hop = hop.label, target = %target.addr, transport = target.transport.as_via(), "calling next hop");
            let attempt_timeout = self.core.settings.routing.attempt_timeout;
            let peer = self.peer.as_mut().expect("peer exists");
            peer.attempts += 1;
            peer.answered_by = Some(hop.label.clone());
            peer.attempt_deadline = Some(now + attempt_timeout);
            peer.leg = Some(leg);
            return;
        }
    }

    async fn resolve_hop(&self, hop: &NextHop) -> Result<(Vec<Target>, String), String> {
        let uri = parse_sip_target(&hop.request_uri)?;
        let targets = self
            .core
            .resolver
            .resolve(&uri.host, uri.port, uri.transport, uri.secure)
            .await?;
        if targets.is_empty() {
            return Err(format!("{} has no address", uri.host));
        }
        Ok((targets, uri.host))
    }

    fn invite_params(&self, hop: &NextHop, source: &Source, target: Target) -> InviteParams {
        let peer = self.peer.as_ref().expect("peer exists");
        let ip = match self.core.settings.public_ip {
            Some(ip) => ip,
            None if !source.local.ip().is_unspecified() => source.local.ip(),
            None => super::local_ip_towards(target.addr).unwrap_or(source.local.ip()),
        };
        let host = match ip {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            std::net::IpAddr::V4(v4) => v4.to_string(),
        };
        let transport = target.transport.as_via();
        let port = self
            .core
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
            let mut codecs = self.core.settings.codecs.clone();
            // The caller's codec first: no transcoding when the next hop takes it.
            if let Some(n) = self.media.as_ref().and_then(|m| m.negotiated.as_ref()) {
                codecs.retain(|c| *c != n.codec);
                codecs.insert(0, n.codec);
            }
            codecs
        };
        let sdp = sdp::build_offer(&peer.local, &offer_codecs, Direction::SendRecv);
        let mut extra: Vec<(String, String)> = self
            .core
            .settings
            .routing
            .session_timer
            .uac_headers()
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect();
        for (name, value) in super::forwarded_headers(self.caller.invite(), &["X-*".to_string()]) {
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
            user_agent: self.core.sender().user_agent().to_string(),
        }
    }

    /// Every hop failed: the caller hears the last answer (or the flow's fallback runs).
    fn peer_exhausted(&mut self, now: Instant) {
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        let (status, reason, retry_after) = peer.last_failure.clone().unwrap_or((
            503,
            "Service Unavailable (no route)".into(),
            None,
        ));
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
            PeerRole::CallerTransfer => {
                info!(
                    call_id = self.caller.call_id(),
                    status, reason, "caller's transfer target failed"
                );
                // The call goes on as it was; the caller hears how the transfer went.
                let failed = std::mem::replace(&mut self.peer, self.transferor.take());
                self.retire(failed);
                self.notify_caller(&format!("SIP/2.0 {status} {reason}"), true, now);
            }
            PeerRole::Transfer => {
                info!(
                    call_id = self.caller.call_id(),
                    status, reason, "transfer target failed"
                );
                // The caller stays with the transferor, which hears how it went.
                let failed = std::mem::replace(&mut self.peer, self.transferor.take());
                self.retire(failed);
                let transferor_up = match self.peer.as_mut().and_then(|p| p.leg.as_mut()) {
                    Some(leg) if leg.state == OutState::Answered => {
                        leg.notify_refer(&format!("SIP/2.0 {status} {reason}"), true, now);
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
    fn retire(&mut self, peer: Option<Peer>) {
        if let Some(peer) = peer {
            self.retired.extend(peer.leg);
            self.retired.extend(peer.spent);
        }
    }

    fn release_peer_ports(&mut self) {
        if let Some(peer) = self.peer.as_mut() {
            peer.ports = None;
        }
    }

    /// A response from the next hop.
    pub(super) fn on_peer_response(&mut self, response: &Response, now: Instant) {
        let call_id = response.headers.get("Call-ID").unwrap_or_default();
        if let Some(old) = self.transferor.as_mut() {
            // NOTIFY and BYE answers of the leg being transferred away.
            if let Some(leg) = old
                .leg
                .iter_mut()
                .chain(old.spent.iter_mut())
                .find(|l| l.owns(call_id))
            {
                leg.on_response(response, now);
                return;
            }
        }
        if let Some(leg) = self.retired.iter_mut().find(|l| l.owns(call_id)) {
            leg.on_response(response, now);
            return;
        }
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        if let Some(leg) = peer.spent.iter_mut().find(|l| l.owns(call_id)) {
            leg.on_response(response, now);
            return;
        }
        let Some(leg) = peer.leg.as_mut().filter(|l| l.owns(call_id)) else {
            return;
        };
        if response.status >= 100 {
            peer.attempt_deadline = None;
        }
        if let Some(event) = leg.on_response(response, now) {
            self.on_peer_event(event, now);
        }
    }

    fn on_peer_event(&mut self, event: OutboundEvent, now: Instant) {
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

    fn on_peer_provisional(&mut self, r: &Response, now: Instant) {
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

    fn on_peer_answered(&mut self, r: &Response, now: Instant) {
        if !r.body.is_empty() {
            if let Err(e) = self.accept_peer_answer(&r.body) {
                warn!(call_id = self.caller.call_id(), error = %e, "unusable SDP answer: hanging the leg up");
                if let Some(leg) = self.peer.as_mut().and_then(|p| p.leg.as_mut()) {
                    leg.bye("SIP;cause=488;text=\"no common codec\"", now);
                }
                return self.on_peer_failed(488, "Not Acceptable Here", None, now);
            }
        }
        let requested = self.core.settings.routing.session_timer.session_expires;
        let peer = self.peer.as_mut().expect("peer");
        peer.timer =
            session_timer::uac_from_response(&r.headers, requested).map(|(interval, refresher)| {
                SessionTimer::new(interval, refresher == Refresher::Uac, now)
            });
        peer.attempt_deadline = None;
        if peer.negotiated.is_none() {
            warn!(
                call_id = self.caller.call_id(),
                "next hop answered without SDP"
            );
        }
        info!(
            call_id = self.caller.call_id(),
            hop = peer.current_hop_label(),
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

    fn on_peer_failed(
        &mut self,
        status: u16,
        reason: &str,
        response: Option<&Response>,
        now: Instant,
    ) {
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        if let Some(leg) = peer.leg.take() {
            peer.spent.push(leg);
        }
        let label = peer.current_hop_label();
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
        peer.last_failure = Some((status, reason.to_string(), retry_after));
        if moves_on(status) && !peer.hops.is_empty() {
            self.pending = Some(Pending::Attempt);
        } else {
            peer.hops.clear();
            self.peer_exhausted(now);
        }
    }

    /// The next hop's SDP answer (in a 183 or 200): what we send it and how.
    fn accept_peer_answer(&mut self, body: &[u8]) -> Result<(), String> {
        let codecs = self.core.settings.codecs.clone();
        let answer = sdp::parse(body).map_err(|e| e.to_string())?;
        let n = sdp::negotiate_from_answer(&answer, &codecs).map_err(|e| e.to_string())?;
        let peer = self.peer.as_mut().ok_or("no peer")?;
        if let Some(Leg::Relay(relay)) = self.media.as_ref().and_then(|m| m.leg.as_ref()) {
            relay.update(Side::B, direction_of(&n), n.remote);
        }
        peer.negotiated = Some(n);
        Ok(())
    }

    /// Our answer to the caller's offer (or our offer, for a delayed offer).
    fn caller_answer_sdp(&self) -> Option<String> {
        let media = self.media.as_ref()?;
        match (&media.negotiated, sdp::parse(&self.caller.invite().body)) {
            (Some(n), Ok(offer)) => Some(sdp::build_answer(&offer, &media.local, n)),
            _ => Some(sdp::build_offer(
                &media.local,
                &self.core.settings.codecs,
                Direction::SendRecv,
            )),
        }
    }

    /// Joins the caller's ports to the next hop's. Needs both sides negotiated.
    pub(super) fn start_relay(&mut self) -> Result<(), String> {
        let core = self.core.clone();
        let media = self.media.as_mut().ok_or("no caller media")?;
        if matches!(media.leg, Some(Leg::Relay(_))) {
            return Ok(());
        }
        let a_n = media
            .negotiated
            .clone()
            .ok_or("caller not negotiated yet")?;
        let peer = self.peer.as_mut().ok_or("no peer")?;
        let b_n = peer
            .negotiated
            .clone()
            .ok_or("next hop not negotiated yet")?;
        let a_ports = media.ports.take().ok_or("caller ports in use")?;
        let b_ports = match peer.ports.take() {
            Some(p) => p,
            None => {
                media.ports = Some(a_ports);
                return Err("next hop ports in use".into());
            }
        };
        let a = RelayLeg {
            ports: a_ports,
            media: call_media(&a_n, &core),
            direction: direction_of(&a_n),
            rtcp_mux: a_n.rtcp_mux,
            cname: format!("voicegate@{}", media.local.address),
        };
        let b = RelayLeg {
            ports: b_ports,
            media: call_media(&b_n, &core),
            direction: direction_of(&b_n),
            rtcp_mux: b_n.rtcp_mux,
            cname: format!("voicegate@{}", peer.local.address),
        };
        let (events_tx, events_rx) = mpsc::channel(32);
        let relay =
            RelayHandle::start(a, b, self.tap.take(), events_tx).map_err(|e| e.to_string())?;
        self.media_record.transcoding = a_n.codec != b_n.codec;
        self.media_record.peer_codec = Some(b_n.codec.encoding_name());
        media.leg = Some(Leg::Relay(relay));
        self.relay_events = Some(events_rx);
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
        if let Some(old) = self.transferor.as_mut() {
            if let Some(mut leg) = old.leg.take() {
                if leg.state == OutState::Answered {
                    leg.bye(reason, now);
                }
                old.spent.push(leg);
            }
        }
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        peer.hops.clear();
        peer.attempt_deadline = None;
        if let Some(mut leg) = peer.leg.take() {
            match leg.state {
                OutState::Answered => leg.bye(reason, now),
                _ => leg.cancel(now),
            }
            peer.spent.push(leg);
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
            return self.caller.answer_unknown(&request, &source);
        };
        let arrival = match peer.leg.as_mut().filter(|l| l.owns(&call_id)) {
            Some(leg) => leg.receive(&request, &source, now),
            // A leg given up on: its dialog is over, but it still answers retransmissions.
            None => match peer.spent.iter_mut().find(|l| l.owns(&call_id)) {
                Some(spent) => spent.incoming.receive(None, &request, &source, now),
                None => return self.caller.answer_unknown(&request, &source),
            },
        };
        let Arrival::Request(kind) = arrival else {
            return;
        };
        match kind {
            InDialog::Bye => {
                self.answer_peer(&request, &source, 200, "OK", &[], now);
                let peer = self.peer.as_mut().expect("peer");
                if let Some(mut leg) = peer.leg.take() {
                    leg.state = OutState::Over;
                    peer.spent.push(leg);
                }
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
                let mut extra = Vec::new();
                if let Some(timer) = peer.timer.as_mut() {
                    timer.on_refreshed(now);
                    extra.push((
                        "Session-Expires",
                        session_timer::header_value(
                            timer.interval,
                            if timer.we_refresh {
                                Refresher::Uac
                            } else {
                                Refresher::Uas
                            },
                        ),
                    ));
                }
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
    fn answer_peer(
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
            None => self.caller.answer_unknown(request, source),
        }
    }

    /// A blind transfer (RFC 3515), asked by the other leg (`from_caller` false: the target
    /// replaces that leg) or by the caller's side (the other leg and the target go on without
    /// the caller): 202, NOTIFY 100, and a new leg to the Refer-To target.
    pub(super) fn on_refer(
        &mut self,
        request: &Request,
        source: &Source,
        from_caller: bool,
        now: Instant,
    ) {
        let answer = |call: &mut Self, status: u16, reason: &str| {
            if from_caller {
                call.caller.reply(request, source, status, reason, &[], now)
            } else {
                call.answer_peer(request, source, status, reason, &[], now)
            }
        };
        if self.transferor.is_some() || self.caller.notify_in_flight() {
            return answer(self, 491, "Request Pending");
        }
        let answered = self.caller.is_up()
            && self.peer.as_ref().is_some_and(|p| {
                // From the caller: only once the call is a plain two-party call.
                (!from_caller || p.role == PeerRole::Forward)
                    && p.leg
                        .as_ref()
                        .is_some_and(|l| l.state == OutState::Answered)
            });
        if !answered {
            let reason = "Forbidden (REFER needs an answered call to another party)";
            return answer(self, 403, reason);
        }
        let target = match refer_target(request) {
            Ok(target) => target,
            Err(reason) => return answer(self, 400, &reason),
        };
        answer(self, 202, "Accepted");
        info!(
            call_id = self.caller.call_id(),
            target, from_caller, "REFER: blind transfer"
        );
        self.pending = Some(Pending::Transfer {
            to: target,
            from_caller,
        });
    }

    /// The caller's transfer target answered: the relay is rebuilt between the other leg and
    /// the target in a task of their own; the caller hears 200 by NOTIFY and is hung up.
    async fn hand_over(&mut self, now: Instant) {
        let (Some(mut other), Some(mut target)) = (self.transferor.take(), self.peer.take()) else {
            return;
        };
        let mut other_ports = None;
        if let Some(media) = self.media.as_mut() {
            if let Some(Leg::Relay(relay)) = media.leg.take() {
                let parts = relay.stop().await;
                other_ports = parts.b;
                self.media_record.relay = Some(parts.report);
            }
        }
        self.relay_events = None;
        self.media_record.peer_label = Some(other.current_hop_label());
        let pair_leg = |peer: &mut Peer, ports: Option<RtpPorts>| {
            Some(super::pair::PairLeg {
                leg: peer.leg.take()?,
                spent: std::mem::take(&mut peer.spent),
                ports: ports.or_else(|| peer.ports.take())?,
                local: peer.local.clone(),
                negotiated: peer.negotiated.clone()?,
                timer: peer.timer,
                label: peer.current_hop_label(),
            })
        };
        let joined = match (
            pair_leg(&mut other, other_ports),
            pair_leg(&mut target, None),
        ) {
            (Some(a), Some(b)) => super::pair::spawn(
                self.core.clone(),
                self.caller.call_id().to_string(),
                self.number.clone(),
                a,
                b,
            ),
            _ => Err("a leg lost its media".to_string()),
        };
        self.retire(Some(other));
        self.retire(Some(target));
        match joined {
            Ok(()) => {
                self.notify_caller("SIP/2.0 200 OK", true, now);
                info!(
                    call_id = self.caller.call_id(),
                    "caller's transfer completed"
                );
                self.send_bye("transferred", "SIP;cause=200;text=\"transferred\"", now);
            }
            Err(e) => {
                warn!(call_id = self.caller.call_id(), error = %e, "caller's transfer failed at hand-over");
                self.notify_caller("SIP/2.0 500 Server Internal Error", true, now);
                self.end_both("transfer hand-over failed", now);
            }
        }
    }

    /// Reports the caller's REFER's progress in its dialog (RFC 3515 §2.4.4).
    fn notify_caller(&mut self, status_line: &str, terminated: bool, now: Instant) {
        if self.caller.is_up() {
            self.caller.notify_refer(status_line, terminated, now);
        }
    }

    /// A request on the leg being transferred away: it may hang up without ending the call.
    fn on_transferor_request(&mut self, request: &Request, source: &Source, now: Instant) {
        let Some(leg) = self.transferor.as_mut().and_then(|p| p.leg.as_mut()) else {
            return;
        };
        let Arrival::Request(kind) = leg.receive(request, source, now) else {
            return;
        };
        let (status, reason) = match kind {
            InDialog::Bye => {
                leg.state = OutState::Over;
                (200, "OK")
            }
            InDialog::Info | InDialog::Update => (200, "OK"),
            InDialog::Invite | InDialog::Refer | InDialog::Cancel => {
                (491, "Request Pending (transfer in progress)")
            }
            // Answered by `Incoming`.
            InDialog::Ack
            | InDialog::Options
            | InDialog::Notify
            | InDialog::NotAllowed
            | InDialog::NotImplemented => return,
        };
        leg.incoming
            .reply(request, source, status, reason, &[], now);
    }

    /// Starts the leg to a REFER's target; the current other leg steps aside (as the
    /// transferor, or to be joined to the target when the caller asked).
    async fn start_transfer(&mut self, to: &str, from_caller: bool, now: Instant) {
        let hops = match agent_hops(&self.core, to, &self.number).await {
            Ok(hops) => hops,
            Err(e) => {
                warn!(call_id = self.caller.call_id(), to, error = %e, "transfer target unusable");
                return self.notify_referrer(from_caller, "SIP/2.0 404 Not Found", true, now);
            }
        };
        self.notify_referrer(from_caller, "SIP/2.0 100 Trying", false, now);
        self.transferor = self.peer.take();
        self.media_record.escalated_to = Some(to.to_string());
        let role = if from_caller {
            PeerRole::CallerTransfer
        } else {
            PeerRole::Transfer
        };
        if let Err((status, reason)) = self.start_peer(role, hops, now) {
            warn!(
                call_id = self.caller.call_id(),
                status, reason, "transfer leg not started"
            );
            self.peer = self.transferor.take();
            let line = format!("SIP/2.0 {status} {reason}");
            self.notify_referrer(from_caller, &line, true, now);
        }
    }

    /// A NOTIFY of the transfer's progress to whoever sent the REFER.
    fn notify_referrer(
        &mut self,
        from_caller: bool,
        status_line: &str,
        terminated: bool,
        now: Instant,
    ) {
        if from_caller {
            self.notify_caller(status_line, terminated, now);
        } else if let Some(leg) = self.peer.as_mut().and_then(|p| p.leg.as_mut()) {
            leg.notify_refer(status_line, terminated, now);
        }
    }

    /// The transfer target answered: the caller's RTP moves from the transferor to it, the
    /// transferor hears 200 and is hung up.
    async fn bridge_transfer(&mut self, now: Instant) {
        if let Some(media) = self.media.as_mut() {
            if let Some(Leg::Relay(relay)) = media.leg.take() {
                let parts = relay.stop().await;
                media.ports = parts.a;
                self.media_record.relay = Some(parts.report);
            }
        }
        self.relay_events = None;
        if let Err(e) = self.start_relay() {
            warn!(call_id = self.caller.call_id(), error = %e, "could not bridge the transfer target");
            return self.end_both("transfer bridge failed", now);
        }
        if let Some(mut old) = self.transferor.take() {
            if let Some(mut leg) = old.leg.take() {
                leg.notify_refer("SIP/2.0 200 OK", true, now);
                if leg.state == OutState::Answered {
                    leg.bye("SIP;cause=200;text=\"transferred\"", now);
                }
                old.spent.push(leg);
            }
            // Its last transactions finish along with the new leg's spent ones.
            if let Some(peer) = self.peer.as_mut() {
                peer.spent.append(&mut old.spent);
            }
        }
        if let Some(peer) = self.peer.as_mut() {
            peer.role = PeerRole::Forward;
        }
        info!(call_id = self.caller.call_id(), "transfer completed");
    }

    /// The next hop's re-INVITE (hold, resume, refresh): answered here, its media change
    /// applied to the relay. The caller's leg keeps its own session.
    fn on_peer_reinvite(&mut self, request: Request, source: Source, now: Instant) {
        let before = self
            .peer
            .as_ref()
            .and_then(|p| p.negotiated.as_ref())
            .map(|n| n.direction);
        self.answer_peer_reinvite(request, source, now);
        let after = self
            .peer
            .as_ref()
            .and_then(|p| p.negotiated.as_ref())
            .map(|n| n.direction);
        if let (Some(before), Some(after)) = (before, after) {
            if before != after {
                // Hold or resume from the other side: the caller hears of it from us.
                self.reinvite_caller(after.reversed(), now);
            }
        }
    }

    /// Offers the caller `direction` (the other leg's, as ours) with a re-INVITE.
    fn reinvite_caller(&mut self, direction: Direction, now: Instant) {
        if !self.caller.can_reinvite() {
            return;
        }
        let Some(media) = self.media.as_mut() else {
            return;
        };
        let Some(n) = media.negotiated.as_ref() else {
            return;
        };
        media.local.session_version += 1;
        let offer = sdp::build_offer(&media.local, &[n.codec], direction);
        self.caller.reinvite(Bytes::from(offer), now);
        info!(call_id = self.caller.call_id(), direction = %direction, "re-INVITE to the caller");
    }

    /// The caller's final answer to our re-INVITE (already acknowledged): its media applied
    /// to the relay.
    pub(super) fn on_caller_reinvite_done(&mut self, response: &Response) {
        if !(200..300).contains(&response.status) || response.body.is_empty() {
            return;
        }
        let codecs = self.core.settings.codecs.clone();
        let negotiated = sdp::parse(&response.body)
            .map_err(|e| e.to_string())
            .and_then(|answer| {
                sdp::negotiate_from_answer(&answer, &codecs).map_err(|e| e.to_string())
            });
        match negotiated {
            Ok(n) => {
                if let Some(media) = self.media.as_mut() {
                    if let Some(Leg::Relay(relay)) = media.leg.as_ref() {
                        relay.update(Side::A, direction_of(&n), n.remote);
                    }
                    media.negotiated = Some(n);
                }
            }
            Err(e) => {
                warn!(call_id = self.caller.call_id(), error = %e, "unusable answer to our re-INVITE")
            }
        }
    }

    /// The next hop's re-INVITE, answered from our media.
    fn answer_peer_reinvite(&mut self, request: Request, source: Source, now: Instant) {
        let codecs = self.core.settings.codecs.clone();
        let peer = self.peer.as_mut().expect("peer");
        // Our Contact on this leg (its transport may not be the caller's).
        let contact = peer
            .leg
            .as_ref()
            .map(|l| l.contact().to_string())
            .unwrap_or_default();
        let result = answer_reinvite_offer(
            &mut peer.local,
            peer.negotiated.as_ref(),
            &request.body,
            &codecs,
            self.core.settings.codec_preference,
        )
        .map(|(body, negotiated)| {
            if let Some(n) = negotiated {
                peer.negotiated = Some(n);
            }
            body
        });
        let mut headers = Vec::new();
        if result.is_ok() {
            if let Some(se) = session_timer::session_expires(&request.headers) {
                // Whoever refreshes, the interval restarts now.
                let we_refresh = se.refresher == Some(Refresher::Uas);
                let refresher = if we_refresh {
                    Refresher::Uas
                } else {
                    Refresher::Uac
                };
                match peer.timer.as_mut() {
                    Some(t) => t.renegotiated(se.interval, we_refresh, now),
                    None => peer.timer = Some(SessionTimer::new(se.interval, we_refresh, now)),
                }
                headers.push((
                    "Session-Expires",
                    session_timer::header_value(se.interval, refresher),
                ));
            } else if let Some(t) = peer.timer.as_mut() {
                t.on_refreshed(now);
            }
        }
        let (status, reason, sdp) = match &result {
            Ok(body) => (200, "OK".to_string(), Some(Bytes::from(body.clone()))),
            Err((status, reason)) => (*status, reason.clone(), None),
        };
        let answer = Answer {
            headers: &headers,
            contact: Some(&contact),
            sdp,
        };
        if let Some(leg) = peer.leg.as_mut() {
            leg.incoming
                .answer(&request, &source, status, &reason, answer, now);
        }
        if result.is_ok() {
            if let (Some(n), Some(Leg::Relay(relay))) = (
                peer.negotiated.as_ref(),
                self.media.as_ref().and_then(|m| m.leg.as_ref()),
            ) {
                relay.update(Side::B, direction_of(n), n.remote);
            }
        }
    }

    fn on_peer_reinvite_done(&mut self, r: &Response, now: Instant) {
        let refreshing = self.peer.as_ref().is_some_and(|p| p.refreshing);
        if let Some(peer) = self.peer.as_mut() {
            peer.refreshing = false;
        }
        if (200..300).contains(&r.status) {
            if !r.body.is_empty() {
                if let Err(e) = self.accept_peer_answer(&r.body) {
                    warn!(call_id = self.caller.call_id(), error = %e, "unusable SDP answer to our re-INVITE");
                }
            }
            if let Some(timer) = self.peer.as_mut().and_then(|p| p.timer.as_mut()) {
                timer.on_refreshed(now);
            }
            return;
        }
        // RFC 4028 §10: a refresh answered 408 or 481 ends the session.
        if refreshing || r.status == 408 || r.status == 481 {
            self.end_both(
                &format!("session refresh failed: {} {}", r.status, r.reason),
                now,
            );
        }
    }

    /// Tells the next hop about a direction change of the caller (hold/resume): our re-INVITE
    /// offers the caller's direction as ours towards it.
    pub(super) fn propagate_direction(&mut self, caller_offered: Direction, now: Instant) {
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        let Some(n) = peer.negotiated.as_ref() else {
            return;
        };
        let Some(leg) = peer.leg.as_mut().filter(|l| l.state == OutState::Answered) else {
            return;
        };
        peer.local.session_version += 1;
        let offer = sdp::build_offer(&peer.local, &[n.codec], caller_offered);
        if leg.reinvite(Some(Bytes::from(offer)), &[], now) {
            info!(call_id = self.caller.call_id(), direction = %caller_offered, "re-INVITE to the other leg");
        }
    }

    /// Session timers of both legs: refreshes we owe and expiries we watch.
    pub(super) fn check_session_timers(&mut self, now: Instant) {
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        let Some(timer) = peer.timer.as_mut() else {
            return;
        };
        let (Some(n), Some(leg)) = (peer.negotiated.as_ref(), peer.leg.as_mut()) else {
            return;
        };
        let offer = || Bytes::from(sdp::build_offer(&peer.local, &[n.codec], n.direction));
        match leg.keep_session(timer, offer, now) {
            SessionDue::Nothing => {}
            SessionDue::RefreshSent => {
                peer.refreshing = true;
                info!(
                    call_id = self.caller.call_id(),
                    interval = timer.interval,
                    "session refresh sent to the other leg"
                );
            }
            SessionDue::Expired => {
                peer.timer = None;
                warn!(
                    call_id = self.caller.call_id(),
                    "other leg's session expired without refresh"
                );
                self.end_both("session expired", now);
            }
        }
    }

    pub(super) fn peer_deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        let peer = self.peer.as_ref();
        let legs = peer
            .into_iter()
            .chain(self.transferor.as_ref())
            .flat_map(|p| p.leg.iter().chain(p.spent.iter()))
            .chain(self.retired.iter())
            .filter_map(|l| l.next_deadline());
        let peer_timers = peer.into_iter().flat_map(|p| {
            let answer = (p
                .leg
                .as_ref()
                .is_some_and(|l| l.state != OutState::Answered))
            .then_some(p.answer_deadline);
            [p.attempt_deadline, answer, p.timer.map(|t| t.deadline())]
        });
        legs.chain(peer_timers.flatten())
    }

    pub(super) fn on_peer_timeout(&mut self, now: Instant) {
        for leg in &mut self.retired {
            leg.handle_timeout(now);
            while leg.poll_event().is_some() {}
        }
        if let Some(old) = self.transferor.as_mut() {
            for leg in old.leg.iter_mut().chain(old.spent.iter_mut()) {
                leg.handle_timeout(now);
                while leg.poll_event().is_some() {}
            }
        }
        let mut events = Vec::new();
        if let Some(peer) = self.peer.as_mut() {
            for leg in peer.leg.iter_mut().chain(peer.spent.iter_mut()) {
                leg.handle_timeout(now);
            }
            if let Some(leg) = peer.leg.as_mut() {
                while let Some(e) = leg.poll_event() {
                    events.push(e);
                }
            }
            for leg in &mut peer.spent {
                while leg.poll_event().is_some() {}
            }
        }
        for e in events {
            self.on_peer_event(e, now);
        }
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        if peer.attempt_deadline.is_some_and(|t| t <= now) {
            peer.attempt_deadline = None;
            if let Some(leg) = peer.leg.as_ref().filter(|l| !l.heard_back()) {
                let label = peer.current_hop_label();
                warn!(
                    call_id = self.caller.call_id(),
                    leg = leg.call_id,
                    hop = label,
                    "next hop silent: trying the next"
                );
                let mut leg = peer.leg.take().expect("leg");
                leg.cancel(now);
                leg.state = OutState::Over;
                peer.spent.push(leg);
                self.on_peer_failed(
                    408,
                    &format!("Request Timeout (no response from {label})"),
                    None,
                    now,
                );
                return;
            }
        }
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        let unanswered = peer
            .leg
            .as_ref()
            .is_some_and(|l| l.state != OutState::Answered);
        if unanswered && peer.answer_deadline <= now {
            let label = peer.current_hop_label();
            info!(
                call_id = self.caller.call_id(),
                hop = label,
                "no answer: giving up"
            );
            if let Some(mut leg) = peer.leg.take() {
                leg.cancel(now);
                peer.spent.push(leg);
            }
            peer.hops.clear();
            peer.last_failure = Some((480, "Temporarily Unavailable (no answer)".into(), None));
            self.peer_exhausted(now);
        }
        self.check_session_timers(now);
    }

    /// Sends what the other leg queued.
    pub(super) fn flush_peer(&mut self) {
        let sender = self.core.sender().clone();
        if let Some(old) = self.transferor.as_mut() {
            flush_legs(&self.core, &sender, old);
        }
        if !self.retired.is_empty() {
            let mut retired = Peer::holding(std::mem::take(&mut self.retired));
            flush_legs(&self.core, &sender, &mut retired);
            self.retired = retired.spent;
        }
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        flush_legs(&self.core, &sender, peer);
    }

    /// Whether the other leg still has something to send or answer.
    pub(super) fn peer_busy(&self) -> bool {
        let transferring = !self.retired.is_empty()
            || self.transferor.as_ref().is_some_and(|p| {
                p.leg.as_ref().is_some_and(|l| !l.is_finished()) || !p.spent.is_empty()
            });
        transferring
            || self.peer.as_ref().is_some_and(|p| {
                p.leg.as_ref().is_some_and(|l| !l.is_finished())
                    || !p.spent.is_empty()
                    || self.pending.is_some()
            })
    }

    /// Forgets the other leg's routes (the call task is ending).
    pub(super) fn unregister_peer(&mut self) {
        for peer in self.peer.iter().chain(self.transferor.iter()) {
            for leg in peer.leg.iter().chain(peer.spent.iter()) {
                self.core.unregister_leg(&leg.call_id, &leg.local_tag);
            }
        }
        for leg in &self.retired {
            self.core.unregister_leg(&leg.call_id, &leg.local_tag);
        }
    }

    // --- escalation ------------------------------------------------------------------------

    /// The bot asked for an agent (or closed with `connect` as the flow's next step).
    async fn start_agent(&mut self, to: &str, from_transfer: bool, now: Instant) {
        if !self.caller.is_up() || self.peer.is_some() {
            return;
        }
        let hops = match agent_hops(&self.core, to, &self.number).await {
            Ok(hops) => hops,
            Err(e) => {
                warn!(call_id = self.caller.call_id(), to, error = %e, "cannot reach the agent");
                return self.agent_unreachable();
            }
        };
        let assist = from_transfer && matches!(&self.route, Route::Flow(flow) if flow.agent_assist);
        info!(
            call_id = self.caller.call_id(),
            to, assist, "connecting the caller to an agent"
        );
        // The caller's ports come back from the bot; ringback plays on them.
        let ports = self.take_caller_ports_from_bot(assist).await;
        let Some(ports) = ports else {
            warn!(
                call_id = self.caller.call_id(),
                "caller's RTP ports did not come back from the bot"
            );
            return self.send_bye(
                "agent hand-off failed",
                "Q.850;cause=41;text=\"hand-off failed\"",
                now,
            );
        };
        let tone = self.core.settings.routing.ringback;
        let Some(n) = self.media.as_ref().and_then(|m| m.negotiated.clone()) else {
            return self.send_bye("agent hand-off failed", "Q.850;cause=41", now);
        };
        match ToneHandle::start(ports, call_media(&n, &self.core), tone) {
            Ok(handle) => {
                if let Some(media) = self.media.as_mut() {
                    media.leg = Some(Leg::Tone(handle));
                }
            }
            Err(e) => warn!(call_id = self.caller.call_id(), error = %e, "no ringback"),
        }
        self.media_record.escalated_to = Some(to.to_string());
        if let Err((status, reason)) = self.start_peer(PeerRole::Agent, hops, now) {
            warn!(
                call_id = self.caller.call_id(),
                status, reason, "agent leg not started"
            );
            self.pending = Some(Pending::Fallback);
        }
    }

    /// The agent cannot even be called (bad target, no carrier): with a running bot and a
    /// `bot` fallback the bot just goes on; otherwise the fallback runs.
    fn agent_unreachable(&mut self) {
        let back_to_bot = matches!(&self.route, Route::Flow(flow) if flow.fallback_to_bot);
        let bot_running = matches!(
            self.media.as_ref().and_then(|m| m.leg.as_ref()),
            Some(Leg::Bot(_))
        );
        if back_to_bot && bot_running {
            return; // the bot simply goes on
        }
        self.pending = Some(Pending::Fallback);
    }

    /// Stops the bot's hold on the caller's RTP: with agent assist the bot stays, listen-only
    /// (fed by the relay's tap); without, its session ends.
    async fn take_caller_ports_from_bot(&mut self, assist: bool) -> Option<RtpPorts> {
        let media = self.media.as_mut()?;
        if let Some(ports) = media.ports.take() {
            return Some(ports);
        }
        match media.leg.take() {
            Some(Leg::Bot(bot)) if assist => {
                let (tap_tx, tap_rx) = mpsc::channel::<TapFrame>(64);
                let ports = bot.hand_off(tap_rx).await;
                self.tap = Some(tap_tx);
                self.assist = Some(bot);
                self.bot_events = None;
                ports
            }
            Some(Leg::Bot(bot)) => {
                self.bot_events = None;
                bot.stop();
                let (report, ports) = bot.finish().await;
                self.media_record.bot = Some(report);
                ports
            }
            Some(other) => {
                media.leg = Some(other);
                None
            }
            None => None,
        }
    }

    /// The agent answered: ringback off, the caller's ports joined to the agent's.
    async fn bridge_agent(&mut self, now: Instant) {
        if let Some(media) = self.media.as_mut() {
            if let Some(Leg::Tone(tone)) = media.leg.take() {
                media.ports = tone.stop().await;
            }
        }
        if let Err(e) = self.start_relay() {
            warn!(call_id = self.caller.call_id(), error = %e, "could not bridge the agent");
            self.end_both("agent bridge failed", now);
        }
    }

    /// The agent leg failed: back to the bot, or hang up, as the flow says.
    async fn agent_fallback(&mut self, now: Instant) {
        if !self.caller.is_up() {
            return;
        }
        if let Some(media) = self.media.as_mut() {
            if let Some(Leg::Tone(tone)) = media.leg.take() {
                media.ports = tone.stop().await;
            }
        }
        if let Some(bot) = self.assist.take() {
            self.tap = None;
            let (report, _) = bot.finish().await;
            self.media_record.bot = Some(report);
        }
        let failed = self.peer.take();
        self.retire(failed);
        let flow = match &self.route {
            Route::Flow(flow) if flow.fallback_to_bot => Some(flow.clone()),
            _ => None,
        };
        match flow {
            Some(flow) => {
                info!(
                    call_id = self.caller.call_id(),
                    "agent leg failed: back to the bot"
                );
                if let Err(e) = self.start_bot(flow) {
                    warn!(call_id = self.caller.call_id(), error = %e, "bot restart failed");
                    self.send_bye("agent failed and bot restart failed", "Q.850;cause=41", now);
                }
            }
            None => {
                info!(
                    call_id = self.caller.call_id(),
                    "agent leg failed: hanging up"
                );
                self.send_bye(
                    "agent unavailable",
                    "Q.850;cause=17;text=\"agent unavailable\"",
                    now,
                );
            }
        }
    }
}

/// Sends what a peer's legs queued; forgets spent legs once their last transaction is over
/// (until then they keep their route, for the 487 to our CANCEL or the 200 to our BYE).
fn flush_legs(core: &Core, sender: &voicegate_sip::transport::Sender, peer: &mut Peer) {
    for leg in peer.leg.iter_mut().chain(peer.spent.iter_mut()) {
        while let Some(t) = leg.poll_send() {
            sender.send_to(&t.source, t.target, t.bytes);
        }
        if leg.incoming.poll_ack_timeout() {
            warn!(
                leg = leg.call_id,
                "no ACK for our answer to the other leg's re-INVITE"
            );
        }
    }
    peer.spent.retain(|l| {
        let done = l.is_finished();
        if done {
            core.unregister_leg(&l.call_id, &l.local_tag);
        }
        !done
    });
}
