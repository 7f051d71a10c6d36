//! The other party of a B2BUA call, as plain data: the next hops still to try, the leg
//! placed to the current one, the legs given up on (until their last transactions end), the
//! deadlines of an attempt and of the answer, and the answered leg's session timer.
//!
//! Serial failover (RFC 3261 §16.6 in spirit): a 408, a 5xx or silence moves on to the next
//! hop; any other final answer is the callee's word. The call task resolves and connects each
//! hop (I/O) and decides what an answer means for the caller; the peer keeps the books.

use std::collections::VecDeque;

use bytes::Bytes;
use tokio::time::Instant;
use voicegate_sip::message::Response;
use voicegate_sip::sdp::{self, LocalMedia, Negotiated};
use voicegate_sip::session_timer::{self, Refresher, SessionTimer};

use crate::hop::{moves_on, NextHop, Target};
use crate::incoming::Transmit;
use crate::outbound::{OutState, OutboundEvent, OutboundLeg, SessionDue};

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

/// The last refusal: what the caller hears when no hop is left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub status: u16,
    pub reason: String,
    pub retry_after: Option<String>,
}

/// What to do after a hop failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Another hop is left and the failure lets us try it.
    TryNext,
    /// Over: `Failure` is the answer to give.
    Exhausted(Failure),
}

/// A deadline of the peer that passed (see [`Peer::check_deadlines`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerDeadline {
    /// The current hop sent nothing back within the attempt timeout: its leg is cancelled;
    /// it failed with 408, so the next hop may be tried.
    Silent { label: String },
    /// Nobody answered within the answer timeout: the leg is cancelled, no hop is left, the
    /// failure is 480.
    NoAnswer { label: String },
}

/// The other party of a call. `P` is the RTP port lease held for it until the relay takes it.
pub struct Peer<P> {
    pub role: PeerRole,
    hops: VecDeque<NextHop>,
    /// The leg to the current hop.
    pub leg: Option<OutboundLeg>,
    /// Legs given up on whose transactions still finish (CANCEL, ACK retransmissions).
    spent: Vec<OutboundLeg>,
    /// Our RTP ports towards this party, until the relay takes them.
    pub ports: Option<P>,
    pub local: LocalMedia,
    pub negotiated: Option<Negotiated>,
    attempt_deadline: Option<Instant>,
    answer_deadline: Instant,
    last_failure: Option<Failure>,
    pub timer: Option<SessionTimer>,
    pub attempts: u32,
    /// The label of the hop tried last (the one that answered, once answered).
    pub answered_by: Option<String>,
    pub ringing_sent: bool,
    /// The relay started on a 183 with SDP.
    pub early_media: bool,
    /// Our session refresh is on its way to the answered leg.
    pub refreshing: bool,
}

impl<P> Peer<P> {
    /// A party about to be tried on `hops`, with our ports and SDP origin towards it; it must
    /// answer by `answer_deadline`.
    pub fn new(
        role: PeerRole,
        hops: Vec<NextHop>,
        ports: Option<P>,
        local: LocalMedia,
        answer_deadline: Instant,
    ) -> Self {
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

    /// The label of the hop tried last, for logs and the call record.
    pub fn label(&self) -> String {
        self.answered_by.clone().unwrap_or_default()
    }

    /// The next hop to try, if any is left.
    pub fn next_hop(&mut self) -> Option<NextHop> {
        self.hops.pop_front()
    }

    /// `hop`'s name resolved to more addresses than the one tried first: they come next (SRV
    /// failover), before the other hops.
    pub fn try_next(&mut self, hop: &NextHop, targets: Vec<Target>) {
        for target in targets.into_iter().rev() {
            self.hops.push_front(NextHop {
                fixed: Some(target),
                ..hop.clone()
            });
        }
    }

    /// A hop that could not be reached (no address, no connection): 503 unless a later hop
    /// says otherwise.
    pub fn unreachable(&mut self, reason: String) {
        self.last_failure = Some(Failure {
            status: 503,
            reason,
            retry_after: None,
        });
    }

    /// The INVITE to a hop is on its way; the hop must say something within
    /// `attempt_timeout`.
    pub fn placed(
        &mut self,
        leg: OutboundLeg,
        label: &str,
        now: Instant,
        attempt_timeout: std::time::Duration,
    ) {
        self.attempts += 1;
        self.answered_by = Some(label.to_string());
        self.attempt_deadline = Some(now + attempt_timeout);
        self.leg = Some(leg);
    }

    /// The live leg, or one given up on, with this Call-ID.
    pub fn leg_mut(&mut self, call_id: &str) -> Option<&mut OutboundLeg> {
        self.leg
            .iter_mut()
            .chain(self.spent.iter_mut())
            .find(|l| l.owns(call_id))
    }

    /// Whether a message with this Call-ID is for one of the peer's legs.
    pub fn owns(&self, call_id: &str) -> bool {
        self.legs().any(|l| l.owns(call_id))
    }

    /// A response for one of the peer's legs (see [`Self::owns`]); the live leg's event, if
    /// it makes one, comes back.
    pub fn on_response(&mut self, response: &Response, now: Instant) -> Option<OutboundEvent> {
        let call_id = response.headers.get("Call-ID").unwrap_or_default();
        if let Some(leg) = self.spent.iter_mut().find(|l| l.owns(call_id)) {
            leg.on_response(response, now);
            return None;
        }
        let leg = self.leg.as_mut().filter(|l| l.owns(call_id))?;
        // Any answer shows the hop is alive.
        self.attempt_deadline = None;
        leg.on_response(response, now)
    }

    /// The current hop refused (or timed out): try the next one, or give up with the last
    /// failure.
    pub fn failed(&mut self, failure: Failure) -> AfterFailure {
        self.retire_leg();
        let status = failure.status;
        self.last_failure = Some(failure);
        if moves_on(status) && !self.hops.is_empty() {
            return AfterFailure::TryNext;
        }
        self.hops.clear();
        AfterFailure::Exhausted(self.failure())
    }

    /// The last refusal so far, if any (for the call record).
    pub fn last_failure(&self) -> Option<&Failure> {
        self.last_failure.as_ref()
    }

    /// What the caller hears when no hop took the call.
    pub fn failure(&self) -> Failure {
        self.last_failure.clone().unwrap_or(Failure {
            status: 503,
            reason: "Service Unavailable (no route)".into(),
            retry_after: None,
        })
    }

    /// The leg answered: its session timer (RFC 4028 §7.2, we asked for `requested`).
    pub fn answered(&mut self, response: &Response, requested: u32, now: Instant) {
        self.attempt_deadline = None;
        self.timer = session_timer::uac_from_response(&response.headers, requested).map(
            |(interval, refresher)| SessionTimer::new(interval, refresher == Refresher::Uac, now),
        );
    }

    /// Hangs up an answered leg or cancels a ringing one; no hop is tried after this.
    pub fn hang_up(&mut self, reason: &str, now: Instant) {
        self.hops.clear();
        self.attempt_deadline = None;
        if let Some(mut leg) = self.leg.take() {
            match leg.state {
                OutState::Answered => leg.bye(reason, now),
                _ => leg.cancel(now),
            }
            self.spent.push(leg);
        }
    }

    /// The far end ended the live leg (its BYE is answered).
    pub fn hung_up_by_far_end(&mut self) {
        if let Some(mut leg) = self.leg.take() {
            leg.state = OutState::Over;
            self.spent.push(leg);
        }
    }

    /// The live leg is done with; its transactions finish among the spent.
    pub fn retire_leg(&mut self) {
        self.spent.extend(self.leg.take());
    }

    /// Takes over the legs of another peer (a transferor's last transactions).
    pub fn adopt<Q>(&mut self, other: &mut Peer<Q>) {
        self.spent.extend(other.leg.take());
        self.spent.append(&mut other.spent);
    }

    /// Gives away the spent legs (to whoever finishes their transactions now).
    pub fn take_spent(&mut self) -> Vec<OutboundLeg> {
        std::mem::take(&mut self.spent)
    }

    /// All the peer's legs: the live one and the spent ones.
    pub fn legs(&self) -> impl Iterator<Item = &OutboundLeg> {
        self.leg.iter().chain(self.spent.iter())
    }

    /// Gives all the legs away (the peer is done with).
    pub fn into_legs(self) -> impl Iterator<Item = OutboundLeg> {
        self.leg.into_iter().chain(self.spent)
    }

    /// Runs the legs' timers; the live leg's events come back (a spent leg's are moot).
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<OutboundEvent> {
        for leg in self.leg.iter_mut().chain(self.spent.iter_mut()) {
            leg.handle_timeout(now);
        }
        for leg in &mut self.spent {
            while leg.poll_event().is_some() {}
        }
        let Some(leg) = self.leg.as_mut() else {
            return Vec::new();
        };
        std::iter::from_fn(|| leg.poll_event()).collect()
    }

    /// The attempt and answer deadlines, after [`Self::handle_timeout`].
    pub fn check_deadlines(&mut self, now: Instant) -> Option<PeerDeadline> {
        if self.attempt_deadline.is_some_and(|t| t <= now) {
            self.attempt_deadline = None;
            if self.leg.as_ref().is_some_and(|l| !l.heard_back()) {
                let mut leg = self.leg.take().expect("leg");
                leg.cancel(now);
                leg.state = OutState::Over;
                self.spent.push(leg);
                return Some(PeerDeadline::Silent {
                    label: self.label(),
                });
            }
        }
        if self.ringing() && self.answer_deadline <= now {
            let mut leg = self.leg.take().expect("ringing leg");
            leg.cancel(now);
            self.spent.push(leg);
            self.hops.clear();
            self.last_failure = Some(Failure {
                status: 480,
                reason: "Temporarily Unavailable (no answer)".into(),
                retry_after: None,
            });
            return Some(PeerDeadline::NoAnswer {
                label: self.label(),
            });
        }
        None
    }

    /// A leg is placed and not answered yet.
    fn ringing(&self) -> bool {
        self.leg
            .as_ref()
            .is_some_and(|l| l.state != OutState::Answered)
    }

    /// The answered leg's session timer (RFC 4028): our refresh when due, with the same SDP;
    /// `Expired` when the far end let it lapse (the timer is then gone).
    pub fn keep_session(&mut self, now: Instant) -> SessionDue {
        let (Some(timer), Some(n), Some(leg)) = (
            self.timer.as_mut(),
            self.negotiated.as_ref(),
            self.leg.as_mut(),
        ) else {
            return SessionDue::Nothing;
        };
        let local = &self.local;
        let offer = || Bytes::from(sdp::build_offer(local, &[n.codec], n.direction));
        let due = leg.keep_session(timer, offer, now);
        match due {
            SessionDue::RefreshSent => self.refreshing = true,
            SessionDue::Expired => self.timer = None,
            SessionDue::Nothing => {}
        }
        due
    }

    /// When the peer next needs [`Self::handle_timeout`] / [`Self::check_deadlines`].
    pub fn deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        let answer = self.ringing().then_some(self.answer_deadline);
        self.legs()
            .filter_map(|l| l.next_deadline())
            .chain(self.attempt_deadline)
            .chain(answer)
            .chain(self.timer.map(|t| t.deadline()))
    }

    /// The next message any leg has to send.
    pub fn poll_send(&mut self) -> Option<Transmit> {
        self.leg
            .iter_mut()
            .chain(self.spent.iter_mut())
            .find_map(|l| l.poll_send())
    }

    /// Our answers to the far end's re-INVITEs that never got their ACK: how many, per leg.
    pub fn poll_ack_timeouts(&mut self) -> Vec<String> {
        self.leg
            .iter_mut()
            .chain(self.spent.iter_mut())
            .filter_map(|l| l.incoming.poll_ack_timeout().then(|| l.call_id.clone()))
            .collect()
    }

    /// Spent legs whose last transaction ended: dropped here, returned to lose their routes.
    pub fn take_finished(&mut self) -> Vec<OutboundLeg> {
        let (done, live) = std::mem::take(&mut self.spent)
            .into_iter()
            .partition(|l| l.is_finished());
        self.spent = live;
        done
    }

    /// Something is left to send or answer.
    pub fn is_busy(&self) -> bool {
        self.leg.as_ref().is_some_and(|l| !l.is_finished()) || !self.spent.is_empty()
    }
}

#[cfg(test)]
mod tests;
