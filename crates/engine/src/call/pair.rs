//! What is left of a call after its caller transferred it away (a REFER from the caller's
//! side): two legs voicegate placed, the other leg and the transfer target, joined by the
//! relay. One task runs them until either hangs up, and writes their call record.
//!
//! Each leg is answered from our own media (re-INVITE, UPDATE), keeps its session timer, and a
//! BYE on one is carried to the other, as in the call task.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tracing::{info, warn};
use voicegate_bridge::relay::{RelayEvent, RelayHandle, RelayLeg, Side};
use voicegate_rtp::RtpPorts;
use voicegate_sip::dialog::InDialog;
use voicegate_sip::message::{Request, Response};
use voicegate_sip::sdp::{self, LocalMedia, Negotiated};
use voicegate_sip::session_timer::{self, SessionTimer};
use voicegate_sip::transport::Source;

use crate::core::{CallInput, Core};
use voicegate_call::call::media::{answer_reinvite_offer, call_media, direction_of};
use voicegate_call::{
    Answer, Arrival, CallRecord, OutState, OutboundEvent, OutboundLeg, SessionDue,
};

/// One answered leg handed over to the pair.
pub struct PairLeg {
    pub leg: OutboundLeg,
    /// Its legs given up on earlier, still finishing their transactions.
    pub spent: Vec<OutboundLeg>,
    pub ports: RtpPorts,
    pub local: LocalMedia,
    pub negotiated: Negotiated,
    pub timer: Option<SessionTimer>,
    /// Carrier, destination or target, for the record.
    pub label: String,
}

struct JoinedLeg {
    leg: OutboundLeg,
    spent: Vec<OutboundLeg>,
    local: LocalMedia,
    negotiated: Negotiated,
    timer: Option<SessionTimer>,
    label: String,
}

struct Pair {
    core: Arc<Core>,
    call_id: String,
    number: String,
    /// `[0]` is the relay's side A (the original other leg), `[1]` its side B (the target).
    sides: [JoinedLeg; 2],
    relay: Option<RelayHandle>,
    relay_events: mpsc::Receiver<RelayEvent>,
    started: Instant,
    ended: Option<(Instant, String)>,
    report: Option<voicegate_bridge::relay::RelayReport>,
}

/// Starts the pair's task; the legs' routes now lead to it.
pub fn spawn(
    core: Arc<Core>,
    call_id: String,
    number: String,
    other: PairLeg,
    target: PairLeg,
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel(64);
    let (events_tx, relay_events) = mpsc::channel(32);
    let split = |p: PairLeg| {
        let relay_leg = RelayLeg {
            media: call_media(&p.negotiated, &core.settings.call),
            direction: direction_of(&p.negotiated),
            rtcp_mux: p.negotiated.rtcp_mux,
            cname: format!("voicegate@{}", p.local.address),
            ports: p.ports,
        };
        let side = JoinedLeg {
            leg: p.leg,
            spent: p.spent,
            local: p.local,
            negotiated: p.negotiated,
            timer: p.timer,
            label: p.label,
        };
        (relay_leg, side)
    };
    let (a, side_a) = split(other);
    let (b, side_b) = split(target);
    let relay = RelayHandle::start(a, b, None, events_tx).map_err(|e| e.to_string())?;
    for side in [&side_a, &side_b] {
        for leg in std::iter::once(&side.leg).chain(side.spent.iter()) {
            core.register_leg(&leg.call_id, &leg.local_tag, &tx);
        }
    }
    let pair = Pair {
        core,
        call_id,
        number,
        sides: [side_a, side_b],
        relay: Some(relay),
        relay_events,
        started: Instant::now(),
        ended: None,
        report: None,
    };
    tokio::spawn(pair.run(rx));
    Ok(())
}

fn relay_side(i: usize) -> Side {
    if i == 0 {
        Side::A
    } else {
        Side::B
    }
}

impl Pair {
    async fn run(mut self, mut rx: mpsc::Receiver<CallInput>) {
        info!(
            call_id = self.call_id,
            other = self.sides[0].label,
            target = self.sides[1].label,
            "transferred call: other leg and target joined"
        );
        loop {
            self.flush();
            if self.ended.is_some() {
                if let Some(relay) = self.relay.take() {
                    self.report = Some(relay.stop().await.report);
                    self.record();
                }
                if self.finished() {
                    break;
                }
            }
            let deadline = self.next_deadline();
            tokio::select! {
                input = rx.recv() => match input {
                    Some(CallInput::Request(request, source)) => self.on_request(request, source, Instant::now()),
                    Some(CallInput::Response(response, _)) => self.on_response(&response, Instant::now()),
                    None => break,
                },
                Some(event) = self.relay_events.recv() => self.on_relay_event(event, Instant::now()),
                _ = sleep_until(deadline.unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(3600))) => self.on_timeout(Instant::now()),
            }
        }
        for side in &self.sides {
            for leg in std::iter::once(&side.leg).chain(side.spent.iter()) {
                self.core.unregister_leg(&leg.call_id, &leg.local_tag);
            }
        }
        if self.report.is_none() {
            if let Some(relay) = self.relay.take() {
                self.report = Some(relay.stop().await.report);
            }
            self.record();
        }
    }

    fn side_of(&self, call_id: &str) -> Option<usize> {
        self.sides.iter().position(|s| s.leg.owns(call_id))
    }

    fn on_request(&mut self, request: Request, source: Source, now: Instant) {
        let Some(i) = self.side_of(request.call_id()) else {
            return self.sides[0].leg.incoming.answer_unknown(&request, &source);
        };
        let leg = &mut self.sides[i].leg;
        let arrival = if self.ended.is_some() {
            leg.incoming.receive(None, &request, &source, now)
        } else {
            leg.receive(&request, &source, now)
        };
        let Arrival::Request(kind) = arrival else {
            return;
        };
        match kind {
            InDialog::Bye => {
                self.respond(i, &request, &source, 200, "OK", &[], None, now);
                self.sides[i].leg.state = OutState::Over;
                let reason = request
                    .headers
                    .get("Reason")
                    .unwrap_or("Q.850;cause=16;text=\"Normal call clearing\"")
                    .to_string();
                let who = if i == 0 {
                    "other leg"
                } else {
                    "transfer target"
                };
                self.end(&format!("{who} hung up"), &reason, now);
            }
            InDialog::Invite => self.on_reinvite(i, &request, &source, now),
            InDialog::Update => {
                let extra = self.refreshed(i, &request, now);
                self.respond(i, &request, &source, 200, "OK", &extra, None, now);
            }
            InDialog::Info => self.respond(i, &request, &source, 200, "OK", &[], None, now),
            // Both legs are answered: nothing to cancel.
            InDialog::Cancel => {
                let reason = "Call/Transaction Does Not Exist";
                self.respond(i, &request, &source, 481, reason, &[], None, now)
            }
            // A transfer is taken by the call before it becomes a pair, not after.
            InDialog::Refer => {
                let reason = "Forbidden (no transfer once the call is handed over)";
                self.respond(i, &request, &source, 403, reason, &[], None, now)
            }
            // Answered by `Incoming`.
            InDialog::Ack
            | InDialog::Options
            | InDialog::Notify
            | InDialog::NotAllowed
            | InDialog::NotImplemented => {}
        }
    }

    /// A re-INVITE answered from our media; the relay follows the new direction or address.
    fn on_reinvite(&mut self, i: usize, request: &Request, source: &Source, now: Instant) {
        let codecs = self.core.settings.call.codecs.clone();
        let side = &mut self.sides[i];
        let answer = answer_reinvite_offer(
            &mut side.local,
            Some(&side.negotiated),
            &request.body,
            &codecs,
            self.core.settings.call.codec_preference,
        )
        .map(|(body, negotiated)| {
            if let Some(n) = negotiated {
                side.negotiated = n;
            }
            body
        });
        match answer {
            Ok(body) => {
                if let Some(relay) = &self.relay {
                    let n = &self.sides[i].negotiated;
                    relay.update(relay_side(i), direction_of(n), n.remote);
                }
                let extra = self.refreshed(i, request, now);
                self.respond(i, request, source, 200, "OK", &extra, Some(body), now);
            }
            Err((status, reason)) => {
                self.respond(i, request, source, status, &reason, &[], None, now)
            }
        }
    }

    /// The leg refreshed its session: its timer restarts; the headers to answer with.
    fn refreshed(
        &mut self,
        i: usize,
        request: &Request,
        now: Instant,
    ) -> Vec<(&'static str, String)> {
        session_timer::refreshed_by_peer(&mut self.sides[i].timer, &request.headers, now)
            .into_iter()
            .collect()
    }

    /// Answers a request of side `i`'s leg in its dialog.
    #[allow(clippy::too_many_arguments)]
    fn respond(
        &mut self,
        i: usize,
        request: &Request,
        source: &Source,
        status: u16,
        reason: &str,
        headers: &[(&'static str, String)],
        sdp: Option<String>,
        now: Instant,
    ) {
        let leg = &mut self.sides[i].leg;
        let contact = leg.contact().to_string();
        let answer = Answer {
            headers,
            contact: Some(&contact),
            sdp: sdp.map(Bytes::from),
        };
        leg.incoming
            .answer(request, source, status, reason, answer, now);
    }

    fn on_response(&mut self, response: &Response, now: Instant) {
        let call_id = response.headers.get("Call-ID").unwrap_or_default();
        if let Some(leg) = self
            .sides
            .iter_mut()
            .flat_map(|s| s.spent.iter_mut())
            .find(|l| l.owns(call_id))
        {
            leg.on_response(response, now);
            return;
        }
        let Some(i) = self.side_of(call_id) else {
            return;
        };
        match self.sides[i].leg.on_response(response, now) {
            Some(OutboundEvent::ReinviteDone(r)) if (200..300).contains(&r.status) => {
                if let Some(timer) = self.sides[i].timer.as_mut() {
                    timer.on_refreshed(now);
                }
            }
            Some(OutboundEvent::ReinviteDone(r)) => self.end(
                &format!("session refresh failed: {} {}", r.status, r.reason),
                "SIP;cause=408;text=\"session refresh failed\"",
                now,
            ),
            Some(OutboundEvent::ReinviteTimeout) => self.end(
                "session refresh got no answer",
                "SIP;cause=408;text=\"session refresh failed\"",
                now,
            ),
            _ => {}
        }
    }

    fn on_relay_event(&mut self, event: RelayEvent, now: Instant) {
        match event {
            RelayEvent::RtpTimeout(side) => {
                let secs = self.core.settings.call.rtp_timeout.as_secs();
                warn!(
                    call_id = self.call_id,
                    ?side,
                    secs,
                    "no RTP: ending the transferred call"
                );
                self.end(
                    "RTP timeout",
                    &format!("SIP;cause=408;text=\"no RTP for {secs} s\""),
                    now,
                );
            }
            RelayEvent::Dtmf(side, digit) => {
                info!(call_id = self.call_id, ?side, digit = %digit.digit, "DTMF")
            }
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        let mut expired = false;
        for side in &mut self.sides {
            side.leg.handle_timeout(now);
            while side.leg.poll_event().is_some() {}
            for leg in &mut side.spent {
                leg.handle_timeout(now);
                while leg.poll_event().is_some() {}
            }
            if self.ended.is_some() {
                continue;
            }
            let Some(timer) = side.timer.as_mut() else {
                continue;
            };
            let offer = || {
                let n = &side.negotiated;
                Bytes::from(sdp::build_offer(&side.local, &[n.codec], n.direction))
            };
            expired |= side.leg.keep_session(timer, offer, now) == SessionDue::Expired;
        }
        if expired {
            self.end(
                "session expired",
                "SIP;cause=408;text=\"session expired\"",
                now,
            );
        }
    }

    /// Hangs up whatever leg is still up; the record follows.
    fn end(&mut self, why: &str, reason: &str, now: Instant) {
        if self.ended.is_some() {
            return;
        }
        info!(call_id = self.call_id, why, "transferred call ended");
        for side in &mut self.sides {
            if side.leg.state == OutState::Answered {
                side.leg.bye(reason, now);
            }
        }
        self.ended = Some((now, why.to_string()));
    }

    fn flush(&mut self) {
        let sender = self.core.sender().clone();
        for side in &mut self.sides {
            for leg in std::iter::once(&mut side.leg).chain(side.spent.iter_mut()) {
                while let Some(t) = leg.poll_send() {
                    sender.send_to(&t.source, t.target, t.bytes);
                }
            }
            side.spent.retain(|l| !l.is_finished());
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.sides
            .iter()
            .flat_map(|s| {
                let legs = std::iter::once(&s.leg)
                    .chain(s.spent.iter())
                    .filter_map(|l| l.next_deadline());
                let timer = s
                    .timer
                    .filter(|_| self.ended.is_none())
                    .map(|t| t.deadline());
                legs.chain(timer).collect::<Vec<_>>()
            })
            .min()
    }

    fn finished(&self) -> bool {
        self.sides
            .iter()
            .all(|s| s.leg.is_finished() && s.spent.is_empty())
    }

    fn record(&mut self) {
        let report = self.report.clone().unwrap_or_default();
        let (ended_at, why) = self
            .ended
            .clone()
            .unwrap_or_else(|| (Instant::now(), "ended".into()));
        let mut r = CallRecord::new(&self.call_id, &self.number);
        r.direction = "transferred".into();
        r.peer = self.sides[0].label.clone();
        r.escalated_to = self.sides[1].label.clone();
        r.duration_ms = (ended_at - self.started).as_millis() as u64;
        r.codec = self.sides[0].negotiated.codec.encoding_name().into();
        r.peer_codec = self.sides[1].negotiated.codec.encoding_name().into();
        r.fill_rtp(&report.a);
        r.peer_rtp_in = report.b.packets_in;
        r.peer_rtp_out = report.b.packets_out;
        r.transcoding = report.transcoding;
        r.end = why;
        super::record::log(&r);
    }
}
