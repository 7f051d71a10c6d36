//! Blind transfer (RFC 3515) in a B2BUA call: a REFER from the other leg (the target replaces
//! it) or from the caller's side (the other leg and the target go on without the caller),
//! with the NOTIFYs that report how it went.

use tokio::time::Instant;
use tracing::{info, warn};
use voicegate_sip::dialog::InDialog;
use voicegate_sip::message::Request;
use voicegate_sip::transport::Source;

use super::b2bua::{Peer, Pending};
use super::env::{CallEnv, PairSide};
use super::Call;
use crate::{take_refer, Arrival, OutState, PeerRole, ReferContext};

impl<E: CallEnv> Call<E> {
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
                call.caller
                    .incoming
                    .reply(request, source, status, reason, &[], now)
            } else {
                call.answer_peer(request, source, status, reason, &[], now)
            }
        };
        let context = ReferContext {
            from_caller,
            transfer_under_way: self.transferor.is_some() || self.caller.notify_in_flight(),
            caller_up: self.caller.is_up(),
            peer: self.peer.as_ref().map(|p| {
                let answered = p
                    .leg
                    .as_ref()
                    .is_some_and(|l| l.state == OutState::Answered);
                (p.role, answered)
            }),
        };
        let target = match take_refer(request, context) {
            Ok(target) => target,
            Err((status, reason)) => return answer(self, status, &reason),
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
    pub(super) async fn hand_over(&mut self, now: Instant) {
        let (Some(mut other), Some(mut target)) = (self.transferor.take(), self.peer.take()) else {
            return;
        };
        if let Some(stopped) = self.env.stop_relay().await {
            // The caller leaves: its ports go; the other leg's go on with the pair.
            self.env.release_ports(stopped.a);
            self.media_record.relay = Some(stopped.report);
        }
        self.media_record.peer_label = Some(other.label());
        let pair_side = |peer: &mut Peer| {
            Some(PairSide {
                leg: peer.leg.take()?,
                spent: peer.take_spent(),
                ports: peer.ports.take()?,
                local: peer.local.clone(),
                negotiated: peer.negotiated.clone()?,
                timer: peer.timer,
                label: peer.label(),
            })
        };
        let call_id = self.caller.call_id().to_string();
        let joined = match (pair_side(&mut other), pair_side(&mut target)) {
            (Some(a), Some(b)) => self.env.hand_over(&call_id, &self.number, a, b),
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
    pub(super) fn notify_caller(&mut self, status_line: &str, terminated: bool, now: Instant) {
        if self.caller.is_up() {
            self.caller.notify_refer(status_line, terminated, now);
        }
    }

    /// A request on the leg being transferred away: it may hang up without ending the call.
    pub(super) fn on_transferor_request(
        &mut self,
        request: &Request,
        source: &Source,
        now: Instant,
    ) {
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
    pub(super) async fn start_transfer(&mut self, to: &str, from_caller: bool, now: Instant) {
        let hops = match self.env.agent_hops(to, &self.number).await {
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
    pub(super) fn notify_referrer(
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
    pub(super) async fn bridge_transfer(&mut self, now: Instant) {
        if let Some(stopped) = self.env.stop_relay().await {
            // The caller's ports are free for the target; the transferor's go.
            self.env.release_ports(stopped.b);
            self.media_record.relay = Some(stopped.report);
        }
        if let Err(e) = self.start_relay() {
            warn!(call_id = self.caller.call_id(), error = %e, "could not bridge the transfer target");
            return self.end_both("transfer bridge failed", now);
        }
        if let Some(mut old) = self.transferor.take() {
            if let Some(leg) = old.leg.as_mut() {
                leg.notify_refer("SIP/2.0 200 OK", true, now);
            }
            old.hang_up("SIP;cause=200;text=\"transferred\"", now);
            // Its last transactions finish along with the new leg's spent ones.
            if let Some(peer) = self.peer.as_mut() {
                peer.adopt(&mut old);
            }
        }
        if let Some(peer) = self.peer.as_mut() {
            peer.role = PeerRole::Forward;
        }
        info!(call_id = self.caller.call_id(), "transfer completed");
    }
}
