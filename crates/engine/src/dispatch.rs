//! What the SIP core does with each message from the transports: answers it at once (OPTIONS,
//! 405/501, 420, 481, a refused INVITE) or hands it to the call task it belongs to, after the
//! shield, load shedding and admission have had their say.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};
use voicegate_sip::dialog::{random_token, InDialog, ALLOW, SUPPORTED};
use voicegate_sip::message::{Message, Method, Request};
use voicegate_sip::transport::{Handler, Incoming, Source};

use crate::call;
use crate::core::{CallInput, CallTx, Core};

/// What the core does with each message from the transports.
impl Core {
    /// Whether a source's out-of-dialog request goes on: false when it is dropped unanswered
    /// (the source is, or has just become, blocked). Blocking also closes the source's TCP/TLS
    /// connections; new ones are declined at accept until the block ends.
    fn shield_passes(&self, source: &Source) -> bool {
        let ip = source.remote.ip();
        let class = if self.is_trusted(ip) {
            crate::shield::SourceClass::Trusted
        } else {
            crate::shield::SourceClass::Unknown
        };
        let verdict = self.lock_shield().check(ip, class, Instant::now());
        match verdict {
            crate::shield::Verdict::Pass => true,
            crate::shield::Verdict::Blocked => {
                self.stats.sources_blocked.fetch_add(1, Ordering::Relaxed);
                self.stats.shield_dropped.fetch_add(1, Ordering::Relaxed);
                let connections_closed = self.sender().close_connections_from(ip);
                warn!(target: "voicegate::shield", source = %ip, connections_closed, "source blocked: request rate over its limit");
                false
            }
            crate::shield::Verdict::Dropped => {
                self.stats.shield_dropped.fetch_add(1, Ordering::Relaxed);
                // A connection that got past the accept check just as the block began.
                if source.transport.is_reliable() {
                    self.sender().close_connections_from(ip);
                }
                false
            }
        }
    }

    /// A trunk's whitelisted address or a carrier's: the higher request limit.
    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.carrier_from(ip).is_some()
            || self.gate.as_ref().is_some_and(|g| {
                g.trunks()
                    .snapshot
                    .trunks
                    .iter()
                    .any(|t| t.whitelisted.iter().any(|net| net.contains(ip)))
            })
    }

    /// Why a new INVITE is shed before admission, if it is.
    /// Why a new call is shed now (the 503's reason phrase), if it is.
    fn overloaded(&self) -> Option<&'static str> {
        let load = crate::load::Load {
            calls: self.stats.active.load(Ordering::Relaxed),
            lag: Duration::from_millis(self.stats.lag_ms.load(Ordering::Relaxed)),
            cpu_percent: self.stats.cpu_percent.load(Ordering::Relaxed) as u32,
        };
        crate::load::shed_reason(&self.settings.limits.shedding, &load)
    }

    fn on_request(self: &Arc<Self>, request: Request, source: Source) {
        let call_id = request.call_id().to_string();
        let branch = request.branch().unwrap_or_default();
        let is_ack = request.method == Method::Ack;

        // In-dialog (or answered-transaction) requests carry our To-tag.
        let target = {
            let routes = self.lock_routes();
            match request.to_tag() {
                Some(tag) => routes
                    .by_tag
                    .get(&(call_id.clone(), tag.to_string()))
                    .cloned(),
                None => routes
                    .by_branch
                    .get(&(call_id.clone(), branch.clone()))
                    .cloned(),
            }
        };
        if is_ack {
            match target {
                Some(call) => forward(&call, CallInput::Request(request, source)),
                None => {
                    if self.refusal_retransmission(&request, &branch, true) {
                        self.stats.refusal_acks.fetch_add(1, Ordering::Relaxed);
                    } else {
                        debug!(call_id, "ACK matches no call: dropped");
                    }
                }
            }
            return;
        }
        if target.is_none() {
            if request.method == Method::Invite
                && self.refusal_retransmission(&request, &branch, false)
            {
                return;
            }
            if !self.shield_passes(&source) {
                return;
            }
        }
        if self.answer_retransmission(&request, &branch) {
            return;
        }
        if request.method != Method::Cancel {
            let scheme = request.uri.split(':').next().unwrap_or_default();
            if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
                // RFC 3261 §8.2.2.1 (RFC 4475 unkscm, novelsc).
                let response = request.response(416, "Unsupported URI Scheme");
                return self.answer(&request, &source, &branch, response);
            }
            let unsupported: Vec<&str> = request
                .headers
                .tokens("Require")
                .filter(|tag| !tag.eq_ignore_ascii_case("timer"))
                .collect();
            if !unsupported.is_empty() {
                let response = request
                    .response(420, "Bad Extension")
                    .header("Unsupported", unsupported.join(", "));
                return self.answer(&request, &source, &branch, response);
            }
        }
        if let Some(call) = target {
            return forward(&call, CallInput::Request(request, source));
        }
        if request.to_tag().is_some() || request.method == Method::Cancel {
            let response = request.response(481, "Call/Transaction Does Not Exist");
            return self.answer(&request, &source, &branch, response);
        }
        match request.method {
            Method::Invite => self.new_call(request, source, call_id, branch),
            Method::Options => {
                let response = request
                    .response(200, "OK")
                    .header("Allow", ALLOW)
                    .header("Accept", "application/sdp")
                    .header("Supported", SUPPORTED);
                self.answer(&request, &source, &branch, response)
            }
            Method::Register
                if self.gate.as_ref().is_some_and(|g| g.is_active()) && self.store.is_some() =>
            {
                tokio::spawn(crate::registrar::handle(self.clone(), request, source));
            }
            // An ACK is never answered; it was routed or dropped above.
            Method::Ack => {}
            // Only inside a dialog: an out-of-dialog REFER (RFC 3515 allows it) is not taken.
            // (A CANCEL without its INVITE was answered above.)
            Method::Bye
            | Method::Info
            | Method::Update
            | Method::Refer
            | Method::Notify
            | Method::Cancel => {
                let response = request.response(481, "Call/Transaction Does Not Exist");
                self.answer(&request, &source, &branch, response)
            }
            // The same answers as inside a dialog: 405 for a method we know but do not serve
            // (REGISTER without trunks that register), 501 for one we do not know.
            Method::Register
            | Method::Subscribe
            | Method::Publish
            | Method::Message
            | Method::Prack
            | Method::Other(_) => {
                let (status, reason) = InDialog::of(&request.method)
                    .refusal()
                    .unwrap_or((501, "Not Implemented"));
                let response = request.response(status, reason).header("Allow", ALLOW);
                self.answer(&request, &source, &branch, response)
            }
        }
    }

    fn new_call(
        self: &Arc<Self>,
        request: Request,
        source: Source,
        call_id: String,
        branch: String,
    ) {
        self.stats.invites.fetch_add(1, Ordering::Relaxed);
        let number = request.uri_user().unwrap_or_default();
        let admission = if let Some(reason) = self.overloaded() {
            self.stats.shed.fetch_add(1, Ordering::Relaxed);
            call::Admission::Refused {
                status: 503,
                reason: reason.into(),
                headers: vec![(
                    "Retry-After",
                    self.settings.limits.retry_after_secs.to_string(),
                )],
            }
        } else {
            call::admit(self, &request, &source, &number)
        };
        let admitted = match admission {
            call::Admission::Admitted(admitted) => admitted,
            call::Admission::Refused {
                status,
                reason,
                headers,
            } => return self.refuse(&request, &source, &branch, status, &reason, headers),
        };
        let local_tag = random_token();
        let (tx, rx) = mpsc::channel(64);
        {
            let mut routes = self.lock_routes();
            routes
                .by_branch
                .insert((call_id.clone(), branch.clone()), tx.clone());
            routes
                .by_tag
                .insert((call_id, local_tag.clone()), tx.clone());
        }
        tokio::spawn(call::run(
            self.clone(),
            request,
            source,
            branch,
            local_tag,
            (tx, rx),
            admitted,
        ));
    }

    /// Refuses a new INVITE without a call: the final response alone (no 100 Trying), kept
    /// over UDP only to answer the INVITE's own retransmissions (see [`crate::refusals`]).
    fn refuse(
        &self,
        request: &Request,
        source: &Source,
        branch: &str,
        status: u16,
        reason: &str,
        headers: Vec<(&'static str, String)>,
    ) {
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        self.stats.refused_early.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let ip = source.remote.ip();
        let auth_blocked = {
            let mut shield = self.lock_shield();
            shield.refused(ip, now);
            let credentials = request.headers.get("Authorization").is_some()
                || request.headers.get("Proxy-Authorization").is_some();
            credentials && matches!(status, 401 | 403 | 407) && shield.auth_failed(ip, now)
        };
        let sender = self.sender();
        let mut response = request
            .response(status, reason)
            .header("Server", sender.user_agent())
            .with_to_tag(&random_token());
        for (name, value) in headers {
            response = response.header(name, value);
        }
        let bytes = response.to_bytes();
        let target = voicegate_sip::message::response_target(
            &request.headers,
            source.remote,
            source.transport.is_reliable(),
        );
        sender.send_to(source, target, bytes.clone());
        if auth_blocked {
            self.stats.auth_blocked.fetch_add(1, Ordering::Relaxed);
            // After the refusal is queued: it is written before the connection closes.
            let connections_closed = sender.close_connections_from(ip);
            warn!(target: "voicegate::shield", source = %ip, connections_closed, "source blocked: digest authentication failed too often");
        }
        if source.transport.is_reliable() || branch.is_empty() {
            return;
        }
        let evicted =
            self.lock_refusals()
                .insert(refusal_key(request, branch), bytes, *source, target, now);
        if evicted {
            self.stats.refusals_evicted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An INVITE retransmission or ACK matching an INVITE refused here: the INVITE gets the
    /// refusal again, the ACK is absorbed. False when nothing matches.
    fn refusal_retransmission(&self, request: &Request, branch: &str, is_ack: bool) -> bool {
        if branch.is_empty() {
            return false;
        }
        let matched =
            self.lock_refusals()
                .on_request(&refusal_key(request, branch), is_ack, Instant::now());
        match matched {
            None => false,
            Some(crate::refusals::Matched::Absorbed) => true,
            Some(crate::refusals::Matched::Resend(bytes, source, target)) => {
                self.stats.refusals_resent.fetch_add(1, Ordering::Relaxed);
                self.sender().send_to(&source, target, bytes);
                true
            }
        }
    }
}

/// A refused INVITE's key: branch and top Via sent-by (its ACK carries the same branch).
fn refusal_key(request: &Request, branch: &str) -> crate::refusals::RefusalKey {
    let sent_by = voicegate_sip::message::top_via(&request.headers)
        .map(|via| via.sent_by().to_string())
        .unwrap_or_default();
    (branch.to_string(), sent_by)
}

fn forward(call: &CallTx, input: CallInput) {
    // A full queue means the call is far behind: drop; the peer retransmits over UDP.
    if call.try_send(input).is_err() {
        debug!("call input queue full or closed: message dropped");
    }
}

/// The transports' entry into the core.
pub struct CoreHandler(pub Arc<Core>);

impl Handler for CoreHandler {
    /// A blocked source's new connections are closed at accept, before any TLS or read.
    fn accepts_connection_from(&self, ip: IpAddr) -> bool {
        !self.0.lock_shield().is_blocked(ip, Instant::now())
    }

    fn on_message(&self, incoming: Incoming) {
        match incoming.message {
            Message::Request(request) => self.0.on_request(request, incoming.source),
            Message::Response(response) => {
                // Responses belong to our own requests (BYE): route by Call-ID and our From-tag.
                let call_id = response
                    .headers
                    .get("Call-ID")
                    .unwrap_or_default()
                    .to_string();
                let tag = response
                    .headers
                    .get("From")
                    .and_then(voicegate_sip::message::tag_param)
                    .unwrap_or_default()
                    .to_string();
                let call = self.0.lock_routes().by_tag.get(&(call_id, tag)).cloned();
                match call {
                    Some(call) => forward(&call, CallInput::Response(response, incoming.source)),
                    None => debug!(
                        status = response.status,
                        "response matches no call: dropped"
                    ),
                }
            }
        }
    }
}
