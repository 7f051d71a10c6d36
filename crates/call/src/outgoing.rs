//! Our own requests inside one dialog: BYE, NOTIFY for a REFER, and re-INVITEs (hold,
//! resume, session refresh) with the ACK of every 2xx they get. One client side for every
//! leg, the caller's and those we place; the leg's owner sends what it queues to the far end.

use std::collections::VecDeque;

use bytes::Bytes;
use tokio::time::Instant;
use voicegate_sip::dialog::{random_token, Dialog};
use voicegate_sip::message::{Headers, Method, Request, Response};
use voicegate_sip::transaction::{ClientInviteTx, ClientNonInviteTx, Timers, TxEvent};

/// Who we are in a leg's requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `SIP/2.0/UDP host:port` without branch: a new branch is added per transaction.
    pub via: String,
    pub contact: String,
    pub user_agent: String,
}

impl Identity {
    pub fn new_via(&self) -> String {
        format!("{};branch=z9hG4bK{};rport", self.via, random_token())
    }
}

/// What an answer to one of our requests meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutgoingEvent {
    /// The final answer to our re-INVITE (a 2xx is already acknowledged).
    ReinviteDone(Response),
    /// Our re-INVITE got no answer at all.
    ReinviteTimeout,
    /// A BYE, NOTIFY… is over: its final status, or None when it timed out.
    Done { method: Method, status: Option<u16> },
}

/// A re-INVITE of ours in progress.
struct Reinvite {
    cseq: u32,
    tx: ClientInviteTx,
    request: Request,
    /// Its final answer was reported (retransmitted 2xx are only acknowledged).
    reported: bool,
}

/// The client side of a dialog: our requests and their transactions.
pub struct Outgoing {
    pub identity: Identity,
    reliable: bool,
    timers: Timers,
    /// BYE, NOTIFY… with their CSeq and method.
    requests: Vec<(u32, Method, ClientNonInviteTx)>,
    reinvite: Option<Reinvite>,
    /// ACKs of 2xx answers: requests of their own, outside any transaction.
    acks: VecDeque<Bytes>,
    events: VecDeque<OutgoingEvent>,
}

impl Outgoing {
    pub fn new(identity: Identity, reliable: bool, timers: Timers) -> Self {
        Outgoing {
            identity,
            reliable,
            timers,
            requests: Vec::new(),
            reinvite: None,
            acks: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Sends a non-INVITE request in `dialog` with these extra headers and body.
    pub fn send(
        &mut self,
        dialog: &mut Dialog,
        method: Method,
        headers: &[(&str, String)],
        body: Option<(&str, Bytes)>,
        now: Instant,
    ) {
        let mut request = dialog.request(method.as_str(), self.identity.new_via(), 70);
        for (name, value) in headers {
            request.headers.push(*name, value.clone());
        }
        request
            .headers
            .push("User-Agent", self.identity.user_agent.clone());
        if let Some((content_type, body)) = body {
            request.headers.push("Content-Type", content_type);
            request.body = body;
        }
        let tx = ClientNonInviteTx::new(request.to_bytes(), self.reliable, self.timers, now);
        self.requests.push((request.cseq().0, method, tx));
    }

    /// Hangs the dialog up; `reason` (RFC 3326), if any, says why.
    pub fn bye(&mut self, dialog: &mut Dialog, reason: &str, now: Instant) {
        let reason = (!reason.is_empty()).then(|| ("Reason", reason.to_string()));
        self.send(dialog, Method::Bye, reason.as_slice(), None, now);
    }

    /// Reports a REFER's progress (RFC 3515 §2.4.4): the new call's status line as a
    /// sipfrag; `terminated` ends the implicit subscription.
    pub fn notify_refer(
        &mut self,
        dialog: &mut Dialog,
        status_line: &str,
        terminated: bool,
        now: Instant,
    ) {
        let state = if terminated {
            "terminated;reason=noresource"
        } else {
            "active;expires=60"
        };
        let headers = [
            ("Event", "refer".to_string()),
            ("Subscription-State", state.to_string()),
            ("Contact", self.identity.contact.clone()),
        ];
        let body = Bytes::from(format!("{status_line}\r\n"));
        let body = Some(("message/sipfrag;version=2.0", body));
        self.send(dialog, Method::Notify, &headers, body, now);
    }

    /// Sends a re-INVITE (hold, resume, session refresh). False if one is still pending.
    pub fn reinvite(
        &mut self,
        dialog: &mut Dialog,
        sdp: Option<Bytes>,
        extra: &[(String, String)],
        now: Instant,
    ) -> bool {
        if self.reinvite_pending() {
            return false;
        }
        let mut request = dialog.request("INVITE", self.identity.new_via(), 70);
        request
            .headers
            .push("Contact", self.identity.contact.clone());
        request
            .headers
            .push("User-Agent", self.identity.user_agent.clone());
        for (name, value) in extra {
            request.headers.push(name.clone(), value.clone());
        }
        if let Some(sdp) = sdp {
            request.headers.push("Content-Type", "application/sdp");
            request.body = sdp;
        }
        let cseq = request.cseq().0;
        let tx = ClientInviteTx::new(request.to_bytes(), self.reliable, self.timers, now);
        self.reinvite = Some(Reinvite {
            cseq,
            tx,
            request,
            reported: false,
        });
        true
    }

    pub fn reinvite_pending(&self) -> bool {
        self.reinvite
            .as_ref()
            .is_some_and(|re| !re.tx.is_terminated())
    }

    /// Whether a `method` request of ours is still waiting for its answer.
    pub fn in_flight(&self, method: &Method) -> bool {
        self.requests
            .iter()
            .any(|(_, m, tx)| m == method && !tx.is_terminated())
    }

    /// Whether `response` answers one of our requests here.
    pub fn owns(&self, response: &Response) -> bool {
        let (cseq, method) = response.cseq();
        if method == "INVITE" {
            return self.reinvite.as_ref().is_some_and(|re| re.cseq == cseq);
        }
        self.requests
            .iter()
            .any(|(c, m, _)| *c == cseq && m.as_str() == method)
    }

    /// Takes an answer to one of our requests (see [`Self::owns`]); what it meant comes
    /// out of [`Self::poll_event`].
    pub fn on_response(&mut self, dialog: &Dialog, response: &Response, now: Instant) {
        let (cseq, method) = response.cseq();
        let status = response.status;
        if method == "INVITE" {
            let Some(re) = self.reinvite.as_mut().filter(|re| re.cseq == cseq) else {
                return;
            };
            re.tx.on_response(status, now);
            if (200..300).contains(&status) {
                // Every 2xx is acknowledged, retransmissions too (RFC 3261 §13.2.2.4).
                let ack = ack_for_2xx(dialog, cseq, response, &self.identity);
                self.acks.push_back(ack);
            } else if status >= 300 {
                let ack = non_2xx_ack(&re.request, response);
                re.tx.send_ack(ack, now);
            }
            if status >= 200 && !re.reported {
                re.reported = true;
                self.events
                    .push_back(OutgoingEvent::ReinviteDone(response.clone()));
            }
            return;
        }
        if let Some((_, m, tx)) = self
            .requests
            .iter_mut()
            .find(|(c, m, _)| *c == cseq && m.as_str() == method)
        {
            if tx.on_response(status, now) && status >= 200 {
                self.events.push_back(OutgoingEvent::Done {
                    method: m.clone(),
                    status: Some(status),
                });
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(re) = self.reinvite.as_mut() {
            re.tx.handle_timeout(now);
            while let Some(event) = re.tx.poll_event() {
                if event == TxEvent::Timeout {
                    self.events.push_back(OutgoingEvent::ReinviteTimeout);
                }
            }
        }
        for (_, method, tx) in &mut self.requests {
            tx.handle_timeout(now);
            while let Some(event) = tx.poll_event() {
                if event == TxEvent::Timeout {
                    self.events.push_back(OutgoingEvent::Done {
                        method: method.clone(),
                        status: None,
                    });
                }
            }
        }
    }

    pub fn poll_event(&mut self) -> Option<OutgoingEvent> {
        self.events.pop_front()
    }

    /// What to send to the far end. Requests that are over are dropped here, after their
    /// last bytes went out.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if let Some(ack) = self.acks.pop_front() {
            return Some(ack);
        }
        if let Some(bytes) = self.reinvite.as_mut().and_then(|re| re.tx.poll_transmit()) {
            return Some(bytes);
        }
        if let Some(bytes) = self
            .requests
            .iter_mut()
            .find_map(|(_, _, tx)| tx.poll_transmit())
        {
            return Some(bytes);
        }
        self.requests.retain(|(_, _, tx)| !tx.is_terminated());
        None
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.reinvite
            .as_ref()
            .and_then(|re| re.tx.poll_timeout())
            .into_iter()
            .chain(
                self.requests
                    .iter()
                    .filter_map(|(_, _, tx)| tx.poll_timeout()),
            )
            .min()
    }

    /// Nothing left to send or wait for.
    pub fn is_idle(&self) -> bool {
        self.acks.is_empty()
            && self
                .reinvite
                .as_ref()
                .is_none_or(|re| re.tx.is_terminated())
            && self.requests.iter().all(|(_, _, tx)| tx.is_terminated())
    }
}

/// The ACK of a 2xx to an INVITE of ours: a request of its own that keeps the INVITE's CSeq
/// number (RFC 3261 §13.2.2.4).
pub fn ack_for_2xx(dialog: &Dialog, cseq: u32, response: &Response, who: &Identity) -> Bytes {
    let mut dialog = dialog.clone();
    dialog.local_cseq = cseq - 1;
    dialog.remote_party = response.headers.get("To").unwrap_or_default().to_string();
    let mut ack = dialog.request("ACK", who.new_via(), 70);
    ack.headers.push("User-Agent", who.user_agent.clone());
    ack.to_bytes()
}

/// The ACK of a non-2xx final response: part of the INVITE transaction (RFC 3261 §17.1.1.3).
pub fn non_2xx_ack(invite: &Request, response: &Response) -> Bytes {
    let mut headers = Headers::default();
    if let Some(via) = invite.headers.get("Via") {
        headers.push("Via", via.to_string());
    }
    headers.push("Max-Forwards", "70");
    for route in invite.headers.get_all("Route") {
        headers.push("Route", route.to_string());
    }
    headers.push(
        "From",
        invite.headers.get("From").unwrap_or_default().to_string(),
    );
    headers.push(
        "To",
        response
            .headers
            .get("To")
            .or_else(|| invite.headers.get("To"))
            .unwrap_or_default()
            .to_string(),
    );
    headers.push("Call-ID", invite.call_id().to_string());
    headers.push("CSeq", format!("{} ACK", invite.cseq().0));
    Request {
        method: Method::Ack,
        uri: invite.uri.clone(),
        headers,
        body: Bytes::new(),
    }
    .to_bytes()
}

#[cfg(test)]
mod tests;
