//! Re-INVITEs across the two legs of a B2BUA call: a hold or resume on one side offered to
//! the other, the answers applied to the relay, and the other leg's session timer.

use bytes::Bytes;
use tokio::time::Instant;
use tracing::{info, warn};
use voicegate_bridge::relay::Side;
use voicegate_sip::message::{Request, Response};
use voicegate_sip::sdp::{self, Direction};
use voicegate_sip::session_timer;
use voicegate_sip::transport::Source;

use super::env::{CallEnv, MediaKind};
use super::media::{answer_reinvite_offer, direction_of};
use super::Call;
use crate::{Answer, OutState, SessionDue};

impl<E: CallEnv> Call<E> {
    /// The next hop's re-INVITE (hold, resume, refresh): answered here, its media change
    /// applied to the relay. The caller's leg keeps its own session.
    pub(super) fn on_peer_reinvite(&mut self, request: Request, source: Source, now: Instant) {
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
    pub(super) fn reinvite_caller(&mut self, direction: Direction, now: Instant) {
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
        let codecs = self.env.settings().codecs.clone();
        let negotiated = sdp::parse(&response.body)
            .map_err(|e| e.to_string())
            .and_then(|answer| {
                sdp::negotiate_from_answer(&answer, &codecs).map_err(|e| e.to_string())
            });
        match negotiated {
            Ok(n) => {
                if let Some(media) = self.media.as_mut() {
                    if self.env.media() == Some(MediaKind::Relay) {
                        self.env.update_relay(Side::A, direction_of(&n), n.remote);
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
    pub(super) fn answer_peer_reinvite(&mut self, request: Request, source: Source, now: Instant) {
        let codecs = self.env.settings().codecs.clone();
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
            self.env.settings().codec_preference,
        )
        .map(|(body, negotiated)| {
            if let Some(n) = negotiated {
                peer.negotiated = Some(n);
            }
            body
        });
        let mut headers = Vec::new();
        if result.is_ok() {
            // Whoever refreshes, the interval restarts now.
            headers.extend(session_timer::refreshed_by_peer(
                &mut peer.timer,
                &request.headers,
                now,
            ));
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
            if let Some(n) = peer.negotiated.as_ref() {
                if self.env.media() == Some(MediaKind::Relay) {
                    self.env.update_relay(Side::B, direction_of(n), n.remote);
                }
            }
        }
    }

    pub(super) fn on_peer_reinvite_done(&mut self, r: &Response, now: Instant) {
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

    /// The other leg's session timer: the refreshes we owe and the expiry we watch (the
    /// caller's is watched by its leg).
    pub(super) fn check_session_timers(&mut self, now: Instant) {
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        match peer.keep_session(now) {
            SessionDue::Nothing => {}
            SessionDue::RefreshSent => info!(
                call_id = self.caller.call_id(),
                interval = peer.timer.map(|t| t.interval),
                "session refresh sent to the other leg"
            ),
            SessionDue::Expired => {
                warn!(
                    call_id = self.caller.call_id(),
                    "other leg's session expired without refresh"
                );
                self.end_both("session expired", now);
            }
        }
    }
}
