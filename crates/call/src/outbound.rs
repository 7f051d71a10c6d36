//! The leg voicegate places as a B2BUA (its UAC side): the INVITE client transaction, answers
//! to a next hop's 401/407 and 422, CANCEL, the dialog once answered, and our in-dialog
//! requests (BYE, session refreshes and hold re-INVITEs).
//!
//! Plain data driven by the call task: the leg queues bytes for its next hop and turns
//! responses into [`OutboundEvent`]s; the task sends the bytes and decides what happens next.
//! Once answered, the leg is a dialog like the caller's: its in-dialog requests are
//! [`Outgoing`], the next hop's are [`Incoming`].

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;
use voicegate_sip::dialog::Dialog;
use voicegate_sip::message::{Headers, Request, Response};
use voicegate_sip::session_timer::{self, Refresher, SessionTimer};
use voicegate_sip::transaction::{ClientInviteTx, ClientNonInviteTx, Timers, TxEvent};
use voicegate_sip::transport::Source;

use crate::incoming::{Arrival, Incoming, Transmit};
use crate::outgoing::{ack_for_2xx, non_2xx_ack, Identity, Outgoing, OutgoingEvent};
use voicegate_sip::dialog::random_token;

/// Where a leg's requests go: the connection (or UDP socket) and the address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hop {
    pub source: Source,
    pub target: SocketAddr,
}

/// What the first INVITE of a leg says.
#[derive(Clone, Debug)]
pub struct InviteParams {
    pub request_uri: String,
    /// From header value without tag, e.g. `<sip:+15550100@192.0.2.1>`.
    pub from: String,
    /// To header value, e.g. `<sip:+15550123@carrier.example>`.
    pub to: String,
    pub contact: String,
    /// `SIP/2.0/UDP host:port` without branch: a new branch is added per transaction.
    pub via: String,
    pub sdp: Option<Bytes>,
    pub credentials: Option<(String, String)>,
    /// Headers added as they are (Supported, Session-Expires, P-Asserted-Identity…).
    pub extra_headers: Vec<(String, String)>,
    pub user_agent: String,
}

/// What a response meant for the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutboundEvent {
    /// 101-199 on the INVITE: ringing, or early media when it carries SDP.
    Provisional(Response),
    /// A 2xx on the INVITE: already acknowledged.
    Answered(Response),
    /// The INVITE failed: a final response (already acknowledged), or our own 408 when the
    /// transaction timed out (`response` None).
    Failed {
        status: u16,
        reason: String,
        response: Option<Response>,
    },
    /// The final answer to one of our re-INVITEs (a 2xx is acknowledged).
    ReinviteDone(Response),
    /// Our re-INVITE got no answer at all.
    ReinviteTimeout,
}

/// What a leg's session timer asked for (see [`OutboundLeg::keep_session`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionDue {
    Nothing,
    /// Our refresh (a re-INVITE) is on its way; its answer comes as
    /// [`OutboundEvent::ReinviteDone`] (RFC 4028 §10: a 408 or 481 ends the session).
    RefreshSent,
    /// The far end did not refresh in time: the session is over.
    Expired,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutState {
    /// INVITE sent, nothing back yet.
    Calling,
    /// A provisional came back.
    Proceeding,
    Answered,
    /// Failed, cancelled or hung up: only transactions may linger.
    Over,
}

pub struct OutboundLeg {
    pub call_id: String,
    pub local_tag: String,
    pub hop: Hop,
    pub state: OutState,
    /// Set by the first answer (or a provisional with a To-tag, for early BYE/CANCEL).
    pub dialog: Option<Dialog>,
    params: InviteParams,
    invite: Request,
    tx: ClientInviteTx,
    timers: Timers,
    reliable: bool,
    auth_tried: bool,
    session_expires_retried: bool,
    /// CANCEL asked for before any provisional: sent when one arrives (RFC 3261 §9.1).
    cancel_pending: bool,
    cancel: Option<ClientNonInviteTx>,
    /// Our requests once the dialog exists: BYE, NOTIFY, re-INVITEs.
    out: Outgoing,
    /// The next hop's requests in the dialog.
    pub incoming: Incoming,
    /// Bytes to send outside transactions (ACKs of 2xx to the INVITE).
    outbox: Vec<Bytes>,
    pub started: Instant,
}

impl OutboundLeg {
    /// Builds and queues the INVITE.
    pub fn invite(params: InviteParams, hop: Hop, timers: Timers, now: Instant) -> Self {
        let call_id = format!("{}@voicegate", random_token());
        let local_tag = random_token();
        let cseq = u32::from(rand::random::<u16>()) + 1;
        let invite = build_invite(&params, &call_id, &local_tag, cseq);
        let reliable = hop.source.transport.is_reliable();
        let tx = ClientInviteTx::new(invite.to_bytes(), reliable, timers, now);
        let identity = Identity {
            via: params.via.clone(),
            contact: params.contact.clone(),
            user_agent: params.user_agent.clone(),
        };
        let incoming = Incoming::new(timers, Arc::from(params.user_agent.as_str()), &local_tag);
        OutboundLeg {
            call_id,
            local_tag,
            hop,
            state: OutState::Calling,
            dialog: None,
            params,
            invite,
            tx,
            timers,
            reliable,
            auth_tried: false,
            session_expires_retried: false,
            cancel_pending: false,
            cancel: None,
            out: Outgoing::new(identity, reliable, timers),
            incoming,
            outbox: Vec::new(),
            started: now,
        }
    }

    pub fn on_response(&mut self, response: &Response, now: Instant) -> Option<OutboundEvent> {
        let (cseq, method) = response.cseq();
        match method {
            "INVITE" if cseq == self.invite.cseq().0 => self.on_invite_response(response, now),
            "CANCEL" => {
                if let Some(cancel) = self.cancel.as_mut() {
                    cancel.on_response(response.status, now);
                }
                None
            }
            _ => {
                let dialog = self.dialog.as_ref()?;
                self.out.on_response(dialog, response, now);
                self.poll_out_event()
            }
        }
    }

    /// What our in-dialog requests' answers meant for the call (a re-INVITE's outcome).
    fn poll_out_event(&mut self) -> Option<OutboundEvent> {
        while let Some(event) = self.out.poll_event() {
            match event {
                OutgoingEvent::ReinviteDone(r) => return Some(OutboundEvent::ReinviteDone(r)),
                OutgoingEvent::ReinviteTimeout => return Some(OutboundEvent::ReinviteTimeout),
                OutgoingEvent::Done { .. } => {}
            }
        }
        None
    }

    fn on_invite_response(&mut self, response: &Response, now: Instant) -> Option<OutboundEvent> {
        let status = response.status;
        let pass = self.tx.on_response(status, now);
        if (200..300).contains(&status) {
            let ack = self.ack_invite_2xx(response);
            self.outbox.push(ack);
            if !pass || self.state == OutState::Answered || self.state == OutState::Over {
                // A retransmitted 2xx (or one racing our CANCEL): acknowledged, nothing else.
                if self.state == OutState::Over && self.dialog.is_none() {
                    // Answered after we gave up: hang the new dialog up at once.
                    self.dialog = Some(Dialog::from_response(&self.invite, response));
                    self.bye("SIP;cause=487;text=\"cancelled\"", now);
                }
                return None;
            }
            self.dialog = Some(Dialog::from_response(&self.invite, response));
            self.state = OutState::Answered;
            return Some(OutboundEvent::Answered(response.clone()));
        }
        if !pass {
            return None;
        }
        if status < 200 {
            if status > 100 && self.state == OutState::Calling {
                self.state = OutState::Proceeding;
            }
            if self.cancel_pending {
                self.cancel_pending = false;
                self.send_cancel(now);
            }
            return (status > 100).then(|| OutboundEvent::Provisional(response.clone()));
        }
        // 3xx-6xx: acknowledge on the transaction's branch.
        let ack = non_2xx_ack(&self.invite, response);
        self.tx.send_ack(ack, now);
        if self.state == OutState::Over {
            return None;
        }
        if (status == 401 || status == 407) && !self.auth_tried {
            if let Some(retry) = self.authenticated_retry(response) {
                self.auth_tried = true;
                self.resend(retry, now);
                return None;
            }
        }
        if status == 422 && !self.session_expires_retried {
            if let Some(min_se) = response
                .headers
                .get("Min-SE")
                .and_then(|v| v.split(';').next())
                .and_then(|v| v.trim().parse::<u32>().ok())
            {
                self.session_expires_retried = true;
                let mut retry = self.invite.clone();
                retry.headers.set("Session-Expires", min_se.to_string());
                retry.headers.set("Min-SE", min_se.to_string());
                self.resend(retry, now);
                return None;
            }
        }
        self.state = OutState::Over;
        Some(OutboundEvent::Failed {
            status,
            reason: response.reason.clone(),
            response: Some(response.clone()),
        })
    }

    /// The INVITE again with an Authorization for the challenge, or None if we have no
    /// credentials or cannot answer it.
    fn authenticated_retry(&self, response: &Response) -> Option<Request> {
        let (user, password) = self.params.credentials.as_ref()?;
        let (challenge_header, answer_header) = if response.status == 407 {
            ("Proxy-Authenticate", "Proxy-Authorization")
        } else {
            ("WWW-Authenticate", "Authorization")
        };
        let challenge =
            voicegate_sip::digest::pick_challenge(response.headers.get_all(challenge_header))?;
        let cnonce = random_token();
        let value = voicegate_sip::digest::client_authorization(
            challenge,
            "INVITE",
            &self.invite.uri,
            user,
            password,
            &cnonce,
            1,
        )
        .ok()?;
        let mut retry = self.invite.clone();
        retry.headers.set(answer_header, value);
        Some(retry)
    }

    /// Sends `request` as a new INVITE transaction (next CSeq, new branch).
    fn resend(&mut self, mut request: Request, now: Instant) {
        let cseq = self.invite.cseq().0 + 1;
        request.headers.set("CSeq", format!("{cseq} INVITE"));
        request.headers.set("Via", self.out.identity.new_via());
        // The old transaction's ACK goes out before the new INVITE.
        while let Some(bytes) = self.tx.poll_transmit() {
            self.outbox.push(bytes);
        }
        self.invite = request;
        self.tx = ClientInviteTx::new(self.invite.to_bytes(), self.reliable, self.timers, now);
    }

    /// The ACK of a 2xx to our INVITE (and of every retransmission of it).
    fn ack_invite_2xx(&self, response: &Response) -> Bytes {
        let dialog = self
            .dialog
            .clone()
            .unwrap_or_else(|| Dialog::from_response(&self.invite, response));
        ack_for_2xx(&dialog, self.invite.cseq().0, response, &self.out.identity)
    }

    /// Gives up on the INVITE: CANCEL once a provisional has come (else as soon as one does).
    pub fn cancel(&mut self, now: Instant) {
        match self.state {
            OutState::Calling => self.cancel_pending = true,
            OutState::Proceeding => self.send_cancel(now),
            OutState::Answered => {
                self.bye("SIP;cause=487;text=\"cancelled\"", now);
                return;
            }
            OutState::Over => return,
        }
        self.state = OutState::Over;
    }

    /// Whether a response of any kind has come back (the next hop is alive).
    pub fn heard_back(&self) -> bool {
        self.state != OutState::Calling || self.cancel_pending
    }

    fn send_cancel(&mut self, now: Instant) {
        if self.cancel.is_some() {
            return;
        }
        let mut headers = Headers::default();
        if let Some(via) = self.invite.headers.get("Via") {
            headers.push("Via", via.to_string());
        }
        headers.push("Max-Forwards", "70");
        for name in ["From", "To", "Call-ID"] {
            if let Some(v) = self.invite.headers.get(name) {
                headers.push(name, v.to_string());
            }
        }
        headers.push("CSeq", format!("{} CANCEL", self.invite.cseq().0));
        headers.push("User-Agent", self.params.user_agent.clone());
        let cancel = Request {
            method: "CANCEL".into(),
            uri: self.invite.uri.clone(),
            headers,
            body: Bytes::new(),
        };
        self.cancel = Some(ClientNonInviteTx::new(
            cancel.to_bytes(),
            self.reliable,
            self.timers,
            now,
        ));
    }

    /// Reports a REFER's progress (RFC 3515 §2.4.4): the status line of the new call as a
    /// sipfrag; `terminated` ends the implicit subscription.
    pub fn notify_refer(&mut self, status_line: &str, terminated: bool, now: Instant) {
        if self.state != OutState::Answered {
            return;
        }
        if let Some(dialog) = self.dialog.as_mut() {
            self.out.notify_refer(dialog, status_line, terminated, now);
        }
    }

    /// Hangs up an answered (or early) dialog.
    pub fn bye(&mut self, reason: &str, now: Instant) {
        if let Some(dialog) = self.dialog.as_mut() {
            self.out.bye(dialog, reason, now);
        }
        self.state = OutState::Over;
    }

    /// Sends a re-INVITE in the dialog (hold, resume, session refresh). False if one is
    /// already pending or there is no dialog.
    pub fn reinvite(
        &mut self,
        sdp: Option<Bytes>,
        extra: &[(String, String)],
        now: Instant,
    ) -> bool {
        if self.state != OutState::Answered {
            return false;
        }
        match self.dialog.as_mut() {
            Some(dialog) => self.out.reinvite(dialog, sdp, extra, now),
            None => false,
        }
    }

    /// Keeps the leg's session alive (RFC 4028): at the timer's refresh time, when we are the
    /// refresher, a re-INVITE with `offer` (the same SDP version: nothing changes in the
    /// media, §7.4); at its expiry, when the far end let it lapse, `Expired`.
    pub fn keep_session(
        &mut self,
        timer: &mut SessionTimer,
        offer: impl FnOnce() -> Bytes,
        now: Instant,
    ) -> SessionDue {
        if timer.refresh_at().is_some_and(|t| t <= now) {
            timer.on_refreshed(now);
            let se = [
                (
                    "Session-Expires".to_string(),
                    session_timer::header_value(timer.interval, Refresher::Uac),
                ),
                ("Supported".to_string(), "timer".to_string()),
            ];
            if self.reinvite(Some(offer()), &se, now) {
                return SessionDue::RefreshSent;
            }
            return SessionDue::Nothing;
        }
        if timer.expires_at().is_some_and(|t| t <= now) {
            return SessionDue::Expired;
        }
        SessionDue::Nothing
    }

    /// Our Contact on this leg.
    pub fn contact(&self) -> &str {
        &self.out.identity.contact
    }

    /// Whether an in-dialog request from the next hop belongs to this leg.
    pub fn owns(&self, call_id: &str) -> bool {
        self.call_id == call_id
    }

    /// A request of the next hop's in this leg's dialog (see [`Incoming::receive`]).
    pub fn receive(&mut self, request: &Request, source: &Source, now: Instant) -> Arrival {
        self.incoming
            .receive(self.dialog.as_mut(), request, source, now)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.tx.handle_timeout(now);
        if let Some(c) = self.cancel.as_mut() {
            c.handle_timeout(now);
        }
        self.out.handle_timeout(now);
        self.incoming.handle_timeout(now);
    }

    /// Events of the transactions themselves (timeouts), after [`Self::handle_timeout`].
    pub fn poll_event(&mut self) -> Option<OutboundEvent> {
        while let Some(event) = self.tx.poll_event() {
            if event == TxEvent::Timeout && self.state != OutState::Over {
                self.state = OutState::Over;
                return Some(OutboundEvent::Failed {
                    status: 408,
                    reason: "Request Timeout".into(),
                    response: None,
                });
            }
        }
        self.poll_out_event()
    }

    /// Everything the leg has to send, with where: answers to the next hop's requests first,
    /// as they were written (a 202 before its NOTIFY), then our own messages to [`Self::hop`].
    pub fn poll_send(&mut self) -> Option<Transmit> {
        if let Some(answer) = self.incoming.poll_transmit() {
            return Some(answer);
        }
        self.poll_transmit().map(|bytes| Transmit {
            source: self.hop.source,
            target: self.hop.target,
            bytes,
        })
    }

    /// What to send to the next hop at [`Self::hop`]. Answers to its requests are in
    /// [`Self::incoming`], each with its own destination.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if !self.outbox.is_empty() {
            return Some(self.outbox.remove(0));
        }
        if let Some(bytes) = self.tx.poll_transmit() {
            return Some(bytes);
        }
        if let Some(bytes) = self.cancel.as_mut().and_then(|c| c.poll_transmit()) {
            return Some(bytes);
        }
        self.out.poll_transmit()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.tx.poll_timeout(),
            self.cancel.as_ref().and_then(|c| c.poll_timeout()),
            self.out.poll_timeout(),
            self.incoming.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Nothing left to send or answer: the leg can be dropped.
    pub fn is_finished(&self) -> bool {
        // A CANCEL still waiting for a provisional is moot once the INVITE has timed out.
        self.state == OutState::Over
            && self.tx.is_terminated()
            && self.cancel.as_ref().is_none_or(|c| c.is_terminated())
            && self.out.is_idle()
            && self.incoming.is_idle()
    }
}

fn build_invite(params: &InviteParams, call_id: &str, local_tag: &str, cseq: u32) -> Request {
    let branch = random_token();
    let mut headers = Headers::default();
    headers.push(
        "Via",
        format!("{};branch=z9hG4bK{branch};rport", params.via),
    );
    headers.push("Max-Forwards", "70");
    headers.push("From", format!("{};tag={local_tag}", params.from));
    headers.push("To", params.to.clone());
    headers.push("Call-ID", call_id.to_string());
    headers.push("CSeq", format!("{cseq} INVITE"));
    headers.push("Contact", params.contact.clone());
    headers.push("Allow", voicegate_sip::dialog::ALLOW);
    headers.push("User-Agent", params.user_agent.clone());
    for (name, value) in &params.extra_headers {
        headers.push(name.clone(), value.clone());
    }
    let body = match &params.sdp {
        Some(sdp) => {
            headers.push("Content-Type", "application/sdp");
            sdp.clone()
        }
        None => Bytes::new(),
    };
    Request {
        method: "INVITE".into(),
        uri: params.request_uri.clone(),
        headers,
        body,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::testing::{hop, invite_params as params};
    use voicegate_sip::message::{parse, Message};

    fn sent(leg: &mut OutboundLeg) -> Vec<Request> {
        std::iter::from_fn(|| leg.poll_transmit())
            .map(|b| match parse(&b) {
                Ok(Message::Request(r)) => r,
                other => panic!("not a request: {other:?}"),
            })
            .collect()
    }

    fn reply(
        request: &Request,
        status: u16,
        to_tag: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Response {
        let mut r = request.response(status, "X");
        if let Some(tag) = to_tag {
            r = r.with_to_tag(tag);
        }
        for (n, v) in extra {
            r = r.header(n, *v);
        }
        r
    }

    #[tokio::test(start_paused = true)]
    async fn answered_call_is_acked_and_hung_up() {
        let now = Instant::now();
        let mut leg = OutboundLeg::invite(params(), hop(), Timers::default(), now);
        let invite = sent(&mut leg).remove(0);
        assert_eq!(invite.method, "INVITE");
        assert_eq!(invite.headers.get("Supported"), Some("timer"));
        let ringing = reply(&invite, 180, Some("c1"), &[]);
        assert!(matches!(
            leg.on_response(&ringing, now),
            Some(OutboundEvent::Provisional(_))
        ));
        let ok = reply(
            &invite,
            200,
            Some("c1"),
            &[("Contact", "<sip:gw@192.0.2.10:5070>")],
        );
        assert!(matches!(
            leg.on_response(&ok, now),
            Some(OutboundEvent::Answered(_))
        ));
        let ack = sent(&mut leg).remove(0);
        assert_eq!(ack.method, "ACK");
        assert_eq!(ack.uri, "sip:gw@192.0.2.10:5070");
        assert_eq!(ack.cseq(), (invite.cseq().0, "ACK"));
        assert_eq!(ack.to_tag(), Some("c1"));
        // A retransmitted 200 is acknowledged again and reported once.
        assert_eq!(leg.on_response(&ok, now), None);
        assert_eq!(sent(&mut leg).remove(0).method, "ACK");
        leg.bye("", now);
        let bye = sent(&mut leg).remove(0);
        assert_eq!(bye.method, "BYE");
        assert_eq!(bye.cseq().0, invite.cseq().0 + 1);
        assert_eq!(bye.from_tag(), Some(leg.local_tag.as_str()));
    }

    #[tokio::test(start_paused = true)]
    async fn challenge_is_answered_once() {
        let now = Instant::now();
        let mut leg = OutboundLeg::invite(params(), hop(), Timers::default(), now);
        let invite = sent(&mut leg).remove(0);
        let challenge = reply(
            &invite,
            407,
            Some("p1"),
            &[(
                "Proxy-Authenticate",
                "Digest realm=\"carrier\", nonce=\"abc\", qop=\"auth\"",
            )],
        );
        assert_eq!(leg.on_response(&challenge, now), None);
        let out = sent(&mut leg);
        assert_eq!(out[0].method, "ACK");
        let retry = &out[1];
        assert_eq!(retry.method, "INVITE");
        assert_eq!(retry.cseq().0, invite.cseq().0 + 1);
        assert_ne!(retry.branch(), invite.branch());
        let auth = retry.headers.get("Proxy-Authorization").unwrap();
        assert!(
            auth.contains("username=\"acme\"") && auth.contains("realm=\"carrier\""),
            "{auth}"
        );
        // A second challenge is a failure.
        let again = reply(
            retry,
            407,
            Some("p2"),
            &[(
                "Proxy-Authenticate",
                "Digest realm=\"carrier\", nonce=\"def\"",
            )],
        );
        assert!(matches!(
            leg.on_response(&again, now),
            Some(OutboundEvent::Failed { status: 407, .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_200_racing_our_cancel_is_acked_and_hung_up_at_once() {
        let now = Instant::now();
        let mut leg = OutboundLeg::invite(params(), hop(), Timers::default(), now);
        let invite = sent(&mut leg).remove(0);
        leg.on_response(&reply(&invite, 180, Some("c1"), &[]), now);
        leg.cancel(now);
        assert_eq!(sent(&mut leg).remove(0).method, "CANCEL");
        // The callee answered before our CANCEL reached it (RFC 3261 §9.1).
        let ok = reply(
            &invite,
            200,
            Some("c1"),
            &[("Contact", "<sip:gw@192.0.2.10:5070>")],
        );
        assert_eq!(
            leg.on_response(&ok, now),
            None,
            "not an answer for the call"
        );
        let methods: Vec<_> = sent(&mut leg).into_iter().map(|r| r.method).collect();
        assert_eq!(methods, vec!["ACK", "BYE"]);
        assert_eq!(leg.state, OutState::Over);
    }

    /// Answers the INVITE with 200 and returns the answered leg (ACK drained).
    fn answered_leg(now: Instant) -> (OutboundLeg, Request) {
        let mut leg = OutboundLeg::invite(params(), hop(), Timers::default(), now);
        let invite = sent(&mut leg).remove(0);
        let ok = reply(
            &invite,
            200,
            Some("c1"),
            &[("Contact", "<sip:gw@192.0.2.10:5070>")],
        );
        leg.on_response(&ok, now);
        sent(&mut leg);
        (leg, invite)
    }

    /// A request of the next hop's in the leg's dialog.
    fn from_hop(leg: &OutboundLeg, invite: &Request, method: &str, cseq: u32) -> Request {
        let text = format!(
            "{method} sip:+15550100@192.0.2.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-{method}-{cseq}\r\n\
From: {};tag=c1\r\n\
To: {}\r\n\
Call-ID: {}\r\n\
CSeq: {cseq} {method}\r\n\
Content-Length: 0\r\n\r\n",
            invite.headers.get("To").unwrap(),
            invite.headers.get("From").unwrap(),
            leg.call_id,
        );
        match parse(text.as_bytes()) {
            Ok(Message::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn answers(leg: &mut OutboundLeg) -> Vec<u16> {
        std::iter::from_fn(|| leg.incoming.poll_transmit())
            .map(|t| match parse(&t.bytes) {
                Ok(Message::Response(r)) => r.status,
                other => panic!("not a response: {other:?}"),
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_hops_requests_are_taken_by_the_legs_dialog() {
        let now = Instant::now();
        let (mut leg, invite) = answered_leg(now);
        let source = hop().source;
        let refer = from_hop(&leg, &invite, "REFER", 10);
        assert_eq!(
            leg.receive(&refer, &source, now),
            Arrival::Request(voicegate_sip::dialog::InDialog::Refer)
        );
        leg.incoming
            .answer(&refer, &source, 202, "Accepted", Default::default(), now);
        assert_eq!(answers(&mut leg), vec![202]);
        // Its retransmission gets the same answer; an older CSeq gets 500; OPTIONS 200.
        assert_eq!(leg.receive(&refer, &source, now), Arrival::Handled);
        let stale = from_hop(&leg, &invite, "INFO", 9);
        assert_eq!(leg.receive(&stale, &source, now), Arrival::Handled);
        let options = from_hop(&leg, &invite, "OPTIONS", 11);
        assert_eq!(leg.receive(&options, &source, now), Arrival::Handled);
        assert_eq!(answers(&mut leg), vec![202, 500, 200]);
        // The leg is not finished while an answer may still be repeated (Timer J).
        leg.bye("", now);
        assert!(!leg.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn the_refresher_reinvites_at_half_the_interval_and_a_lapsed_session_expires() {
        let start = Instant::now();
        let (mut leg, _) = answered_leg(start);
        let offer = || Bytes::from_static(b"v=0\r\n");
        // We refresh a 90 s session: nothing before 45 s, a re-INVITE at 45 s.
        let mut ours = SessionTimer::new(90, true, start);
        let early = start + Duration::from_secs(44);
        assert_eq!(
            leg.keep_session(&mut ours, offer, early),
            SessionDue::Nothing
        );
        let half = start + Duration::from_secs(45);
        assert_eq!(
            leg.keep_session(&mut ours, offer, half),
            SessionDue::RefreshSent
        );
        let refresh = sent(&mut leg).remove(0);
        assert_eq!(refresh.method, "INVITE");
        assert_eq!(
            refresh.headers.get("Session-Expires"),
            Some("90;refresher=uac")
        );
        // The next hop answers 481: the refresh failed, which the call ends on (§10).
        let gone = reply(&refresh, 481, Some("c1"), &[]);
        assert!(matches!(
            leg.on_response(&gone, half),
            Some(OutboundEvent::ReinviteDone(r)) if r.status == 481
        ));
        // They refresh a 90 s session and never do: it expires (RFC 4028 §10), not before.
        let mut theirs = SessionTimer::new(90, false, start);
        let mut due = SessionDue::Nothing;
        let mut at = start;
        while due == SessionDue::Nothing {
            at = theirs.deadline();
            due = leg.keep_session(&mut theirs, offer, at);
        }
        assert_eq!(due, SessionDue::Expired);
        assert!(at - start >= Duration::from_secs(60), "{:?}", at - start);
        assert!(at - start <= Duration::from_secs(90), "{:?}", at - start);
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_waits_for_a_provisional() {
        let now = Instant::now();
        let mut leg = OutboundLeg::invite(params(), hop(), Timers::default(), now);
        let invite = sent(&mut leg).remove(0);
        leg.cancel(now);
        assert!(sent(&mut leg).is_empty(), "no CANCEL before a provisional");
        leg.on_response(&reply(&invite, 100, None, &[]), now);
        let cancel = sent(&mut leg).remove(0);
        assert_eq!(cancel.method, "CANCEL");
        assert_eq!(cancel.branch(), invite.branch());
        assert_eq!(cancel.cseq(), (invite.cseq().0, "CANCEL"));
        let terminated = reply(&invite, 487, Some("c1"), &[]);
        assert_eq!(
            leg.on_response(&terminated, now),
            None,
            "487 after CANCEL is ours"
        );
        assert_eq!(sent(&mut leg).remove(0).method, "ACK");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_hop_given_up_on_is_finished_after_timer_b() {
        let now = Instant::now();
        let mut leg = OutboundLeg::invite(params(), hop(), Timers::default(), now);
        sent(&mut leg);
        leg.cancel(now);
        assert!(!leg.is_finished(), "the INVITE transaction still runs");
        let later = now + std::time::Duration::from_secs(33);
        leg.handle_timeout(later);
        while leg.poll_event().is_some() {}
        assert!(leg.is_finished(), "nothing left once Timer B fired");
    }

    #[tokio::test(start_paused = true)]
    async fn no_answer_times_out_as_408() {
        let now = Instant::now();
        let mut leg = OutboundLeg::invite(params(), hop(), Timers::default(), now);
        sent(&mut leg);
        let later = now + std::time::Duration::from_secs(40);
        leg.handle_timeout(later);
        assert!(matches!(
            leg.poll_event(),
            Some(OutboundEvent::Failed { status: 408, .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn interval_too_small_is_retried_with_min_se() {
        let now = Instant::now();
        let mut leg = OutboundLeg::invite(params(), hop(), Timers::default(), now);
        let invite = sent(&mut leg).remove(0);
        leg.on_response(&reply(&invite, 422, Some("x"), &[("Min-SE", "600")]), now);
        let out = sent(&mut leg);
        assert_eq!(out[1].headers.get("Session-Expires"), Some("600"));
    }
}
