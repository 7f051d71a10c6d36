//! The caller's leg (our UAS side): its INVITE server transaction, the dialog it opens, the
//! caller's in-dialog requests ([`Incoming`]) and ours towards it ([`Outgoing`]), and its
//! session timer (RFC 4028; the caller refreshes, we watch).
//!
//! Plain data driven by the call task: the caller's requests go in through
//! [`CallerLeg::receive`], which answers what the leg alone can (retransmissions, CANCEL,
//! BYE, INFO, UPDATE refreshes, a re-INVITE or REFER before the call is up) and hands the
//! rest to the call as a [`CallerRequest`]. Bytes come out of [`CallerLeg::poll_transmit`],
//! the leg's own turns (a missing ACK, our BYE answered, a lapsed session) out of
//! [`CallerLeg::poll_event`].

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;
use voicegate_sip::dialog::{Dialog, InDialog, ALLOW, SUPPORTED};
use voicegate_sip::info::{self, InfoDigit};
use voicegate_sip::message::{name_addr_uri, response_target, Request, Response};
use voicegate_sip::session_timer::{self, Refresher, SessionTimer, TimerConfig, UasTimer};
use voicegate_sip::transaction::{ServerInviteState, ServerInviteTx, Timers, TxEvent};
use voicegate_sip::transport::Source;

use crate::incoming::{Answer, Arrival, Incoming, Transmit};
use crate::outgoing::{Identity, Outgoing, OutgoingEvent};

const NO_DIALOG: &str = "Call/Transaction Does Not Exist";

/// Where the caller's dialog is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallerState {
    /// The INVITE is not answered yet (1xx at most).
    Proceeding,
    /// Our 2xx is sent; its ACK has not come.
    Answered,
    /// The 2xx is acknowledged.
    Confirmed,
    /// We sent BYE and wait for its answer.
    Ending,
    /// Over: a final non-2xx, a BYE either way. Only lingering transactions remain.
    Ended,
}

/// A request of the caller that the call has to decide on (the leg answered the rest).
#[derive(Debug)]
pub enum CallerRequest {
    /// CANCEL of our INVITE, already answered 200. `proceeding`: the INVITE was still
    /// unanswered, so the call rejects it with 487.
    Cancel { proceeding: bool },
    /// BYE, already answered 200; the dialog is over. `early`: it came before our final
    /// answer, so the call rejects the INVITE with 487. `reason` is its Reason header.
    Bye { early: bool, reason: Option<String> },
    /// The ACK of our 2xx: the call is confirmed. `answer` is the SDP of a delayed offer.
    Confirmed { answer: Option<Bytes> },
    /// The ACK of our 2xx to a re-INVITE, with the SDP answer when we offered.
    ReinviteAck { answer: Option<Bytes> },
    /// A re-INVITE of an answered call: the call answers it with [`CallerLeg::answer_reinvite`].
    Reinvite(Request, Source),
    /// A REFER: the call answers it with `incoming.reply`.
    Refer(Request, Source),
    /// A key press in an INFO, already answered 200.
    Dtmf(InfoDigit),
}

/// What happened on the leg by itself (timers, answers to our requests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallerEvent {
    /// Our 2xx to the INVITE got no ACK (Timer H): the call should end with BYE.
    NoAck,
    /// Our 2xx to a re-INVITE got no ACK.
    ReinviteUnacked,
    /// Our BYE was answered (`status`) or timed out (None): the dialog is over.
    ByeDone {
        status: Option<u16>,
    },
    /// The caller's final answer to our re-INVITE (2xx already acknowledged).
    ReinviteDone(Response),
    ReinviteTimeout,
    /// The caller did not refresh its session in time (RFC 4028 §10).
    SessionExpired,
}

/// The caller's side of a call.
pub struct CallerLeg {
    invite: Request,
    source: Source,
    branch: String,
    local_tag: String,
    user_agent: Arc<str>,
    invite_tx: ServerInviteTx,
    dialog: Dialog,
    /// The caller's requests in the dialog, and our answers.
    pub incoming: Incoming,
    outgoing: Outgoing,
    state: CallerState,
    /// RFC 4028 terms for our 2xx; only kept when the caller refreshes.
    timer_terms: Option<UasTimer>,
    timer: Option<SessionTimer>,
    min_se: u32,
    /// Headers for the INVITE's final response (Retry-After, Min-SE, Warning…).
    final_headers: Vec<(&'static str, String)>,
    final_status: u16,
    events: VecDeque<CallerEvent>,
}

impl CallerLeg {
    /// The leg of a new INVITE received from `source`, with our dialog tag and identity (the
    /// Via and Contact of our requests to the caller).
    pub fn new(
        invite: Request,
        source: Source,
        local_tag: &str,
        identity: Identity,
        timers: Timers,
    ) -> Self {
        let reliable = source.transport.is_reliable();
        let user_agent: Arc<str> = Arc::from(identity.user_agent.as_str());
        CallerLeg {
            branch: invite.branch().unwrap_or_default(),
            dialog: Dialog::from_invite(&invite, local_tag),
            invite_tx: ServerInviteTx::new(reliable, timers),
            incoming: Incoming::new(timers, user_agent.clone(), local_tag),
            outgoing: Outgoing::new(identity, reliable, timers),
            local_tag: local_tag.to_string(),
            user_agent,
            invite,
            source,
            state: CallerState::Proceeding,
            timer_terms: None,
            timer: None,
            min_se: 0,
            final_headers: Vec::new(),
            final_status: 0,
            events: VecDeque::new(),
        }
    }

    pub fn invite(&self) -> &Request {
        &self.invite
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    pub fn call_id(&self) -> &str {
        self.invite.call_id()
    }

    pub fn state(&self) -> CallerState {
        self.state
    }

    /// Answered (acknowledged or not) and not ending.
    pub fn is_up(&self) -> bool {
        matches!(self.state, CallerState::Answered | CallerState::Confirmed)
    }

    /// Our Contact towards the caller.
    pub fn contact(&self) -> &str {
        &self.outgoing.identity.contact
    }

    /// The caller's user part (its number, usually), from its From.
    pub fn caller_user(&self) -> String {
        self.invite
            .headers
            .get("From")
            .and_then(name_addr_uri)
            .and_then(|u| u.auth.map(|a| a.user))
            .unwrap_or_default()
    }

    /// The INVITE's headers named in `patterns` (a trailing `*` matches a prefix, case
    /// ignored): what goes on to a bot as custom parameters, or to the next hop.
    pub fn forwarded_headers(&self, patterns: &[String]) -> Vec<(String, String)> {
        let matches = |name: &str| {
            patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => name
                    .get(..prefix.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(prefix)),
                None => name.eq_ignore_ascii_case(p),
            })
        };
        self.invite
            .headers
            .0
            .iter()
            .filter(|h| matches(&h.name))
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect()
    }

    /// The final status we answered the INVITE with (0 before).
    pub fn final_status(&self) -> u16 {
        self.final_status
    }

    /// A header for the INVITE's final response.
    pub fn add_final_header(&mut self, name: &'static str, value: String) {
        self.final_headers.push((name, value));
    }

    /// Negotiates the session timer of the INVITE (RFC 4028 §9). `Err(min_se)`: its interval
    /// is too small; the call rejects it with 422 (the Min-SE header is already queued).
    pub fn negotiate_timer(&mut self, config: &TimerConfig) -> Result<(), u32> {
        self.min_se = config.min_se;
        let terms = session_timer::uas_negotiate(&self.invite.headers, config);
        if let UasTimer::TooSmall { min_se } = terms {
            self.add_final_header("Min-SE", min_se.to_string());
            return Err(min_se);
        }
        // We do not refresh towards the caller: a caller that cannot refresh gets no timer.
        self.timer_terms = match terms {
            UasTimer::Active {
                refresher: Refresher::Uac,
                ..
            } => Some(terms),
            _ => None,
        };
        Ok(())
    }

    /// Answers the INVITE: our tag past 100, Contact on 1xx/2xx, Allow, Supported and the
    /// session timer on 2xx, the queued headers on a final answer. A 2xx starts the dialog
    /// (and the caller's session timer); any other final answer ends it.
    pub fn respond(&mut self, status: u16, reason: &str, sdp: Option<Bytes>, now: Instant) {
        let mut response = self
            .invite
            .response(status, reason)
            .header("Server", &*self.user_agent);
        if status > 100 {
            response = response.with_to_tag(&self.local_tag);
        }
        if (101..300).contains(&status) {
            response = response.header("Contact", self.contact());
        }
        if (200..300).contains(&status) {
            response = response
                .header("Allow", ALLOW)
                .header("Supported", SUPPORTED);
            for (name, value) in self
                .timer_terms
                .map(|t| t.response_headers())
                .unwrap_or_default()
            {
                response = response.header(name, value);
            }
        }
        if status >= 200 {
            for (name, value) in std::mem::take(&mut self.final_headers) {
                response = response.header(name, value);
            }
        }
        if status == 503 && response.headers.get("Retry-After").is_none() {
            response = response.header("Retry-After", "5");
        }
        if status == 415 {
            response = response.header("Accept", "application/sdp");
        }
        if let Some(body) = sdp {
            response = response.with_body("application/sdp", body);
        }
        if !self.invite_tx.respond(status, response.to_bytes(), now) || status < 200 {
            return;
        }
        self.final_status = status;
        if status < 300 {
            self.state = CallerState::Answered;
            if let Some(UasTimer::Active { interval, .. }) = self.timer_terms {
                self.timer = Some(SessionTimer::new(interval, false, now));
            }
        } else {
            self.state = CallerState::Ended;
        }
    }

    /// Takes one request of the caller's dialog (the call routes by Call-ID).
    pub fn receive(
        &mut self,
        request: Request,
        source: Source,
        now: Instant,
    ) -> Option<CallerRequest> {
        let branch = request.branch().unwrap_or_default();
        if request.method == voicegate_sip::message::Method::Invite
            && branch == self.branch
            && request.to_tag().is_none()
        {
            self.invite_tx.on_request_retransmit(now);
            return None;
        }
        // Once the dialog is over the leg only lingers for retransmissions; a CANCEL is still
        // answered while its INVITE's transaction lives (RFC 3261 §9.2).
        let open = self.state != CallerState::Ended
            || request.method == voicegate_sip::message::Method::Cancel;
        let dialog = open.then_some(&mut self.dialog);
        let kind = match self.incoming.receive(dialog, &request, &source, now) {
            Arrival::Handled => return None,
            Arrival::ReinviteAck => {
                let answer = (!request.body.is_empty()).then(|| request.body.clone());
                return Some(CallerRequest::ReinviteAck { answer });
            }
            Arrival::Ack => return self.on_ack(&request, now),
            Arrival::Request(kind) => kind,
        };
        match kind {
            InDialog::Cancel => {
                if branch != self.branch {
                    self.incoming
                        .reply(&request, &source, 481, NO_DIALOG, &[], now);
                    return None;
                }
                // The CANCEL is answered whatever the INVITE's state (RFC 3261 §9.2).
                self.incoming.reply(&request, &source, 200, "OK", &[], now);
                let proceeding = self.invite_tx.state() == ServerInviteState::Proceeding;
                Some(CallerRequest::Cancel { proceeding })
            }
            InDialog::Bye => {
                self.incoming.reply(&request, &source, 200, "OK", &[], now);
                let early = self.invite_tx.state() == ServerInviteState::Proceeding;
                self.state = CallerState::Ended;
                let reason = request.headers.get("Reason").map(str::to_string);
                Some(CallerRequest::Bye { early, reason })
            }
            InDialog::Invite => {
                if !self.is_up() {
                    self.incoming
                        .reply(&request, &source, 481, NO_DIALOG, &[], now);
                    return None;
                }
                Some(CallerRequest::Reinvite(request, source))
            }
            InDialog::Info => {
                let content_type = request.headers.get("Content-Type").unwrap_or_default();
                let digit = info::parse_dtmf(content_type, &request.body);
                self.incoming.reply(&request, &source, 200, "OK", &[], now);
                digit.map(CallerRequest::Dtmf)
            }
            InDialog::Update => {
                // A session refresh (RFC 4028 §7.4); offers in UPDATE are not taken.
                if !request.body.is_empty() {
                    let reason = "Not Acceptable Here: SDP in UPDATE not supported";
                    self.incoming
                        .reply(&request, &source, 488, reason, &[], now);
                    return None;
                }
                let headers = self.refreshed(&request, now);
                self.incoming
                    .reply(&request, &source, 200, "OK", &headers, now);
                None
            }
            InDialog::Refer => Some(CallerRequest::Refer(request, source)),
            // Answered by `Incoming`.
            InDialog::Ack
            | InDialog::Options
            | InDialog::Notify
            | InDialog::NotAllowed
            | InDialog::NotImplemented => None,
        }
    }

    /// The ACK of our final answer to the INVITE.
    fn on_ack(&mut self, ack: &Request, now: Instant) -> Option<CallerRequest> {
        let was_answered = self.invite_tx.state() == ServerInviteState::Accepted;
        self.invite_tx.on_ack(now);
        if !was_answered || self.state != CallerState::Answered {
            return None;
        }
        self.state = CallerState::Confirmed;
        let answer = (!ack.body.is_empty()).then(|| ack.body.clone());
        Some(CallerRequest::Confirmed { answer })
    }

    /// Answers a re-INVITE: 200 with our SDP (and the refreshed session timer), or the
    /// status the call's negotiation ended in.
    pub fn answer_reinvite(
        &mut self,
        request: &Request,
        source: &Source,
        answer: Result<Bytes, (u16, String)>,
        now: Instant,
    ) {
        let body = match answer {
            Ok(body) => body,
            Err((status, reason)) => {
                return self
                    .incoming
                    .reply(request, source, status, &reason, &[], now)
            }
        };
        let headers = self.refreshed(request, now);
        let contact = self.contact().to_string();
        let answer = Answer {
            headers: &headers,
            contact: Some(&contact),
            sdp: Some(body),
        };
        self.incoming
            .answer(request, source, 200, "OK", answer, now);
    }

    /// The caller refreshed its session (re-INVITE or UPDATE): the timer restarts; the
    /// headers to answer with.
    fn refreshed(&mut self, request: &Request, now: Instant) -> Vec<(&'static str, String)> {
        let Some(timer) = self.timer.as_mut() else {
            return Vec::new();
        };
        let interval = session_timer::session_expires(&request.headers)
            .map(|se| se.interval.max(self.min_se))
            .unwrap_or(timer.interval);
        timer.renegotiated(interval, false, now);
        vec![
            (
                "Session-Expires",
                session_timer::header_value(interval, Refresher::Uac),
            ),
            ("Require", "timer".into()),
        ]
    }

    /// Ends the dialog from our side with BYE; `reason` becomes its Reason header (RFC 3326).
    pub fn bye(&mut self, reason: &str, now: Instant) {
        self.timer = None;
        self.outgoing.bye(&mut self.dialog, reason, now);
        self.state = CallerState::Ending;
    }

    /// Marks the dialog over without a BYE of ours (the call is torn down otherwise).
    pub fn close(&mut self) {
        self.timer = None;
        self.state = CallerState::Ended;
    }

    /// Whether a re-INVITE of ours may go now: the call is confirmed and none is pending.
    pub fn can_reinvite(&self) -> bool {
        !self.outgoing.reinvite_pending() && self.state == CallerState::Confirmed
    }

    /// Our re-INVITE (hold, resume, new media). False when [`Self::can_reinvite`] is not
    /// so: the offer is not sent.
    pub fn reinvite(&mut self, offer: Bytes, now: Instant) -> bool {
        if !self.can_reinvite() {
            return false;
        }
        self.outgoing
            .reinvite(&mut self.dialog, Some(offer), &[], now);
        true
    }

    /// A NOTIFY of the progress of the caller's REFER (RFC 3515, sipfrag).
    pub fn notify_refer(&mut self, status_line: &str, terminated: bool, now: Instant) {
        self.outgoing
            .notify_refer(&mut self.dialog, status_line, terminated, now);
    }

    /// A NOTIFY of ours is still unanswered.
    pub fn notify_in_flight(&self) -> bool {
        self.outgoing
            .in_flight(&voicegate_sip::message::Method::Notify)
    }

    /// A response to one of our requests to the caller; false when it is not ours.
    pub fn on_response(&mut self, response: &Response, now: Instant) -> bool {
        if !self.outgoing.owns(response) {
            return false;
        }
        self.outgoing.on_response(&self.dialog, response, now);
        self.take_outgoing_events();
        true
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.invite_tx.handle_timeout(now);
        self.incoming.handle_timeout(now);
        self.outgoing.handle_timeout(now);
        self.take_outgoing_events();
        while let Some(event) = self.invite_tx.poll_event() {
            if event == TxEvent::AckTimeout && self.state == CallerState::Answered {
                self.events.push_back(CallerEvent::NoAck);
            }
        }
        if self.incoming.poll_ack_timeout() {
            self.events.push_back(CallerEvent::ReinviteUnacked);
        }
        let lapsed = self
            .timer
            .and_then(|t| t.expires_at())
            .is_some_and(|t| t <= now);
        if lapsed && self.is_up() {
            self.timer = None;
            self.events.push_back(CallerEvent::SessionExpired);
        }
    }

    fn take_outgoing_events(&mut self) {
        while let Some(event) = self.outgoing.poll_event() {
            let event = match event {
                OutgoingEvent::Done {
                    method: voicegate_sip::message::Method::Bye,
                    status,
                } => {
                    self.state = CallerState::Ended;
                    CallerEvent::ByeDone { status }
                }
                OutgoingEvent::Done { .. } => continue,
                OutgoingEvent::ReinviteDone(response) => CallerEvent::ReinviteDone(response),
                OutgoingEvent::ReinviteTimeout => CallerEvent::ReinviteTimeout,
            };
            self.events.push_back(event);
        }
    }

    pub fn poll_event(&mut self) -> Option<CallerEvent> {
        self.events.pop_front()
    }

    /// The next datagram or stream write for the caller. Answers to its requests go first, as
    /// they were written (the 200 to a CANCEL before the INVITE's 487), then the INVITE's
    /// responses, then our requests, back the way the caller came (symmetric, so NAT does not
    /// matter).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(t) = self.incoming.poll_transmit() {
            return Some(t);
        }
        if let Some(bytes) = self.invite_tx.poll_transmit() {
            let target = response_target(
                &self.invite.headers,
                self.source.remote,
                self.source.transport.is_reliable(),
            );
            return Some(Transmit {
                source: self.source,
                target,
                bytes,
            });
        }
        self.outgoing.poll_transmit().map(|bytes| Transmit {
            source: self.source,
            target: self.source.remote,
            bytes,
        })
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.invite_tx.poll_timeout(),
            self.incoming.poll_timeout(),
            self.outgoing.poll_timeout(),
            self.timer.map(|t| t.deadline()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// No transaction of the leg still needs to answer or retransmit.
    pub fn is_idle(&self) -> bool {
        self.invite_tx.is_terminated() && self.incoming.is_idle() && self.outgoing.is_idle()
    }
}

#[cfg(test)]
mod tests;
