//! The far end's requests inside one dialog, as its server side sees them. One handler for
//! every leg (the caller's, a leg we placed, a handed-over pair), so that no two call shapes
//! answer the same request differently:
//! - a retransmission gets the answer it had, from the transaction that sent it;
//! - CSeq order is kept (RFC 3261 §12.2.2: an older CSeq gets 500);
//! - a method we know but do not take gets 405, one we do not know 501, both with Allow;
//! - OPTIONS and NOTIFY get 200; a re-INVITE while one is still open gets 500 + Retry-After
//!   (RFC 3261 §14.2);
//! - everything else goes to the leg's owner, which answers with [`Incoming::answer`].

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;
use voicegate_sip::dialog::{Dialog, InDialog, ALLOW, SUPPORTED};
use voicegate_sip::message::{response_target, Method, Request, Response};
use voicegate_sip::transaction::{
    ServerInviteState, ServerInviteTx, ServerNonInviteTx, Timers, TxEvent,
};
use voicegate_sip::transport::Source;

/// Bytes to send, and where: answers go back the way their request came (RFC 3261 §18.2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub source: Source,
    pub target: SocketAddr,
    pub bytes: Bytes,
}

/// What became of a request given to [`Incoming::receive`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Answered here (a retransmission, an out-of-order CSeq, a method we do not take,
    /// OPTIONS, NOTIFY, a re-INVITE on top of another, or no dialog): nothing for the owner.
    Handled,
    /// The ACK of one of our answers to a re-INVITE (its body, if any, is an SDP answer).
    ReinviteAck,
    /// An ACK that belongs to no re-INVITE here: the dialog's first INVITE's, for the owner.
    Ack,
    /// A new request the owner answers with [`Incoming::answer`].
    Request(InDialog),
}

/// What an answer carries beyond the status line.
#[derive(Clone, Debug, Default)]
pub struct Answer<'a> {
    pub headers: &'a [(&'static str, String)],
    /// Our Contact, for a 2xx to a re-INVITE (RFC 3261 §12.1.1).
    pub contact: Option<&'a str>,
    pub sdp: Option<Bytes>,
}

/// One request we answered, kept while its transaction may still see retransmissions.
struct Answered {
    source: Source,
    target: SocketAddr,
    kind: AnsweredTx,
}

enum AnsweredTx {
    /// A re-INVITE, known by its CSeq (its ACK has another branch).
    Invite(u32, ServerInviteTx),
    Other(String, Method, ServerNonInviteTx),
}

/// The server side of a dialog: the far end's requests and our answers to them.
pub struct Incoming {
    timers: Timers,
    /// Our Server header.
    user_agent: Arc<str>,
    /// Our dialog tag, added to answers whose To has none yet.
    local_tag: String,
    answered: Vec<Answered>,
    /// Answers to send for requests outside any dialog of ours (481), sent once.
    unkept: Vec<Transmit>,
    /// Our 2xx answers to re-INVITEs that never got their ACK, not yet reported.
    missed_acks: usize,
}

impl Incoming {
    pub fn new(timers: Timers, user_agent: Arc<str>, local_tag: &str) -> Self {
        Incoming {
            timers,
            user_agent,
            local_tag: local_tag.to_string(),
            answered: Vec::new(),
            unkept: Vec::new(),
            missed_acks: 0,
        }
    }

    /// Takes one request from the far end. `dialog` is None once the dialog is over (or
    /// before it exists): anything but an ACK then gets 481.
    pub fn receive(
        &mut self,
        dialog: Option<&mut Dialog>,
        request: &Request,
        source: &Source,
        now: Instant,
    ) -> Arrival {
        let kind = InDialog::of(&request.method);
        let cseq = request.cseq().0;
        if kind == InDialog::Ack {
            return match self.reinvite_mut(cseq) {
                Some(tx) => {
                    tx.on_ack(now);
                    Arrival::ReinviteAck
                }
                None => Arrival::Ack,
            };
        }
        if self.retransmitted(request, now) {
            return Arrival::Handled;
        }
        let Some(dialog) = dialog else {
            self.answer(request, source, 481, NO_DIALOG, Answer::default(), now);
            return Arrival::Handled;
        };
        // A CANCEL carries its INVITE's CSeq: it is no new request of the dialog.
        if kind != InDialog::Cancel {
            if let Err(e) = dialog.accept_remote_cseq(request) {
                let reason = format!("Server Internal Error: {e}");
                self.answer(request, source, 500, &reason, Answer::default(), now);
                return Arrival::Handled;
            }
        }
        match kind {
            InDialog::NotAllowed | InDialog::NotImplemented => {
                let (status, reason) = kind.refusal().unwrap_or((501, "Not Implemented"));
                self.answer(request, source, status, reason, Answer::default(), now);
                Arrival::Handled
            }
            InDialog::Options | InDialog::Notify => {
                self.answer(request, source, 200, "OK", Answer::default(), now);
                Arrival::Handled
            }
            InDialog::Invite if self.reinvite_open() => {
                let retry = [("Retry-After", "1".to_string())];
                let answer = Answer {
                    headers: &retry,
                    ..Answer::default()
                };
                let reason = "Server Internal Error: re-INVITE pending";
                self.answer(request, source, 500, reason, answer, now);
                Arrival::Handled
            }
            _ => Arrival::Request(kind),
        }
    }

    /// Answers `request` through a transaction of its own, kept for its retransmissions.
    pub fn answer(
        &mut self,
        request: &Request,
        source: &Source,
        status: u16,
        reason: &str,
        answer: Answer<'_>,
        now: Instant,
    ) {
        let response = self.response(request, status, reason, answer);
        let reliable = source.transport.is_reliable();
        let target = response_target(&request.headers, source.remote, reliable);
        let kind = if request.method == Method::Invite {
            let mut tx = ServerInviteTx::new(reliable, self.timers);
            tx.respond(status, response.to_bytes(), now);
            AnsweredTx::Invite(request.cseq().0, tx)
        } else {
            let mut tx = ServerNonInviteTx::new(reliable, self.timers);
            tx.respond(status, response.to_bytes(), now);
            let branch = request.branch().unwrap_or_default();
            AnsweredTx::Other(branch, request.method.clone(), tx)
        };
        self.answered.push(Answered {
            source: *source,
            target,
            kind,
        });
    }

    /// [`Self::answer`] with headers only: no Contact, no body.
    pub fn reply(
        &mut self,
        request: &Request,
        source: &Source,
        status: u16,
        reason: &str,
        headers: &[(&'static str, String)],
        now: Instant,
    ) {
        let answer = Answer {
            headers,
            ..Answer::default()
        };
        self.answer(request, source, status, reason, answer, now);
    }

    fn response(&self, request: &Request, status: u16, reason: &str, a: Answer<'_>) -> Response {
        let mut response = request
            .response(status, reason)
            .with_to_tag(&self.local_tag)
            .header("Server", &*self.user_agent);
        for (name, value) in a.headers {
            response = response.header(name, value.clone());
        }
        let ok = (200..300).contains(&status);
        let capabilities = ok && matches!(request.method, Method::Options | Method::Invite);
        if status == 405 || status == 501 || capabilities {
            response = response.header("Allow", ALLOW);
        }
        if ok && request.method == Method::Invite {
            response = response.header("Supported", SUPPORTED);
            if let Some(contact) = a.contact {
                response = response.header("Contact", contact);
            }
        }
        if let Some(body) = a.sdp {
            response = response.with_body("application/sdp", body);
        }
        response
    }

    /// Answers a request for no dialog or transaction of ours: 481, not kept.
    pub fn answer_unknown(&mut self, request: &Request, source: &Source) {
        let response = self.response(request, 481, NO_DIALOG, Answer::default());
        let reliable = source.transport.is_reliable();
        self.unkept.push(Transmit {
            source: *source,
            target: response_target(&request.headers, source.remote, reliable),
            bytes: response.to_bytes(),
        });
    }

    /// A request we answered before: its transaction answers again.
    fn retransmitted(&mut self, request: &Request, now: Instant) -> bool {
        let cseq = request.cseq().0;
        let branch = request.branch().unwrap_or_default();
        for answered in &mut self.answered {
            match &mut answered.kind {
                AnsweredTx::Invite(c, tx) if request.method == Method::Invite && *c == cseq => {
                    tx.on_request_retransmit(now);
                    return true;
                }
                AnsweredTx::Other(b, m, tx) if *b == branch && *m == request.method => {
                    tx.on_request_retransmit(now);
                    return true;
                }
                _ => {}
            }
        }
        false
    }

    fn reinvite_mut(&mut self, cseq: u32) -> Option<&mut ServerInviteTx> {
        self.answered.iter_mut().find_map(|a| match &mut a.kind {
            AnsweredTx::Invite(c, tx) if *c == cseq => Some(tx),
            _ => None,
        })
    }

    /// A re-INVITE of the far end we have not given a final answer yet.
    pub fn reinvite_open(&self) -> bool {
        self.answered.iter().any(|a| {
            matches!(&a.kind, AnsweredTx::Invite(_, tx) if tx.state() == ServerInviteState::Proceeding)
        })
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for answered in &mut self.answered {
            match &mut answered.kind {
                AnsweredTx::Invite(_, tx) => {
                    tx.handle_timeout(now);
                    while let Some(event) = tx.poll_event() {
                        self.missed_acks += usize::from(event == TxEvent::AckTimeout);
                    }
                }
                AnsweredTx::Other(_, _, tx) => tx.handle_timeout(now),
            }
        }
    }

    /// What the answers' transactions queued. Transactions that are over are dropped here,
    /// after their last bytes went out.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(t) = self.unkept.pop() {
            return Some(t);
        }
        for answered in &mut self.answered {
            let bytes = match &mut answered.kind {
                AnsweredTx::Invite(_, tx) => tx.poll_transmit(),
                AnsweredTx::Other(_, _, tx) => tx.poll_transmit(),
            };
            if let Some(bytes) = bytes {
                return Some(Transmit {
                    source: answered.source,
                    target: answered.target,
                    bytes,
                });
            }
        }
        self.answered.retain(|a| !is_terminated(&a.kind));
        None
    }

    /// Whether one of our 2xx answers to a re-INVITE never got its ACK (RFC 3261 §13.3.1.4):
    /// reported once per answer.
    pub fn poll_ack_timeout(&mut self) -> bool {
        let missed = self.missed_acks > 0;
        self.missed_acks = self.missed_acks.saturating_sub(1);
        missed
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.answered
            .iter()
            .filter_map(|a| match &a.kind {
                AnsweredTx::Invite(_, tx) => tx.poll_timeout(),
                AnsweredTx::Other(_, _, tx) => tx.poll_timeout(),
            })
            .min()
    }

    /// No answer still has to be sent or repeated.
    pub fn is_idle(&self) -> bool {
        self.unkept.is_empty()
            && self.missed_acks == 0
            && self.answered.iter().all(|a| is_terminated(&a.kind))
    }
}

const NO_DIALOG: &str = "Call/Transaction Does Not Exist";

fn is_terminated(kind: &AnsweredTx) -> bool {
    match kind {
        AnsweredTx::Invite(_, tx) => tx.is_terminated(),
        AnsweredTx::Other(_, _, tx) => tx.is_terminated(),
    }
}

#[cfg(test)]
mod tests;
