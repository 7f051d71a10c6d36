//! The SIP core: takes every message from the transports and either answers it at once
//! (OPTIONS, 501, 420, 481…) or hands it to the call task it belongs to.
//!
//! Routing is by Call-ID plus the INVITE's branch (retransmissions, CANCEL) or our To-tag
//! (ACK, BYE, re-INVITE). A call task owns everything about its call; the core holds only the
//! routing table, touched once per SIP message, never per RTP packet.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;
use voicegate_rtp::PortPool;
use voicegate_sip::message::{Message, Request, Response};
use voicegate_sip::sdp::{Codec, CodecPreference};
use voicegate_sip::transaction::{ServerNonInviteTx, Timers};
use voicegate_sip::transport::{Handler, Incoming, Sender, Source};

use crate::call;

/// Methods we implement, for Allow headers.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REFER, NOTIFY";
/// Option tags we support: session timers (RFC 4028).
pub const SUPPORTED: &str = "timer";
/// SIP methods we know of but do not serve here: 405 rather than 501 (RFC 3261 §21.4.6).
const KNOWN_NOT_ALLOWED: &[&str] = &["REGISTER", "SUBSCRIBE", "PUBLISH", "MESSAGE", "PRACK"];

/// What the core needs to know to run calls, derived once from the config.
#[derive(Clone, Debug)]
pub struct Settings {
    pub codecs: Vec<Codec>,
    /// Whose order picks the codec when we answer an offer.
    pub codec_preference: CodecPreference,
    pub echo_numbers: Vec<String>,
    pub ringing_numbers: Vec<String>,
    pub ring_duration: Duration,
    /// How long a never-answered ringing call rings before 480.
    pub ring_timeout: Duration,
    pub public_ip: Option<IpAddr>,
    pub timers: Timers,
    pub latching: voicegate_rtp::latch::LatchPolicy,
    /// Bot flows and their numbers.
    pub flows: Vec<FlowRoute>,
    pub bridge: BridgeSettings,
    /// An answered call with no RTP for this long is ended.
    pub rtp_timeout: Duration,
    /// Upstream gateways, lowest priority first.
    pub carriers: Vec<Carrier>,
    pub routing: RoutingSettings,
}

/// An upstream carrier gateway as calls use it.
#[derive(Clone, Debug)]
pub struct Carrier {
    pub name: String,
    /// `sip:host[:port][;params]`; the dialled number becomes its user part.
    pub uri: String,
    pub credentials: Option<(String, String)>,
    pub priority: u32,
    /// Where its own INVITEs come from.
    pub inbound: Vec<voicegate_control::IpNet>,
}

/// How calls are placed out of voicegate.
#[derive(Clone, Debug)]
pub struct RoutingSettings {
    pub attempt_timeout: Duration,
    pub answer_timeout: Duration,
    pub session_timer: voicegate_sip::session_timer::TimerConfig,
    pub ringback: voicegate_bridge::tone::Tone,
}

/// A bot flow as calls use it (its URL parsed once, at start-up).
#[derive(Clone, Debug)]
pub struct FlowRoute {
    pub name: String,
    /// The account that owns the flow: bots see it as `account_sid` in `start` and `stop`.
    pub account_sid: String,
    pub url: voicegate_bridge::ws::BotUrl,
    pub protocol: voicegate_bridge::dialect::Protocol,
    pub bidirectional: bool,
    pub numbers: Vec<String>,
    /// Custom parameters of the flow, passed to the bot after the URL's own.
    pub parameters: Vec<(String, String)>,
    /// Where the caller goes when the bot closes its socket (None: hang up).
    pub connect_on_end: Option<String>,
    /// The agent for a bot `transfer` that names none.
    pub default_agent: Option<String>,
    /// After the bot's own transfer, it keeps hearing both parties.
    pub agent_assist: bool,
    /// When the agent leg fails: back to the bot (true) or hang up.
    pub fallback_to_bot: bool,
}

/// What every bot session shares.
#[derive(Clone, Debug)]
pub struct BridgeSettings {
    pub client: voicegate_bridge::ws::ClientConfig,
    pub media_interval: Duration,
    pub max_session: Duration,
    pub playout_max: Duration,
    pub final_playout_max: Duration,
    pub bot_write_timeout: Duration,
    pub max_bot_messages_per_sec: u64,
    pub max_bot_bytes_per_sec: u64,
    pub silence_when_idle: bool,
    pub forward_headers: Vec<String>,
}

/// Counters of calls, for tests and (later) metrics.
#[derive(Debug, Default)]
pub struct CallStats {
    pub invites: AtomicU64,
    pub answered: AtomicU64,
    pub rejected: AtomicU64,
    pub cancelled: AtomicU64,
    /// DTMF digits received (RFC 4733 and SIP INFO).
    pub dtmf: AtomicU64,
    /// Calls started and not yet ended (a task may linger after to answer retransmissions).
    pub active: AtomicU64,
}

/// Something that happened in a call, for whoever listens (tests now; bots and callbacks later).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallEvent {
    Dtmf {
        call_id: String,
        digit: char,
        duration_ms: u32,
        via: &'static str,
    },
}

/// Input to a call task.
#[derive(Debug)]
pub enum CallInput {
    Request(Request, Source),
    Response(Response, Source),
}

pub(crate) type CallTx = mpsc::Sender<CallInput>;

#[derive(Default)]
struct Routes {
    /// (Call-ID, INVITE branch) → call: INVITE retransmissions and CANCEL.
    by_branch: HashMap<(String, String), CallTx>,
    /// (Call-ID, our To-tag) → call: everything inside the dialog.
    by_tag: HashMap<(String, String), CallTx>,
}

struct OutOfDialog {
    tx: ServerNonInviteTx,
    source: Source,
    target: SocketAddr,
}

pub struct Core {
    pub settings: Settings,
    /// Admission by customer trunks (off while no trunk exists: a demo setup).
    pub gate: Option<crate::admit::Gate>,
    /// Trunks, numbers, flows and registrations (None when `store.url` is empty).
    pub store: Option<Arc<voicegate_control::Store>>,
    /// Destination host names to addresses (SRV, A/AAAA).
    pub resolver: crate::resolve::Resolver,
    pub pool: Arc<PortPool>,
    pub stats: CallStats,
    /// Call events; sending with no subscriber is fine (they are dropped).
    pub events: tokio::sync::broadcast::Sender<CallEvent>,
    sender: OnceLock<Sender>,
    /// Our listening addresses: what Via and Contact name on the legs we place.
    listening: OnceLock<voicegate_sip::transport::LocalAddrs>,
    routes: Mutex<Routes>,
    /// Non-INVITE server transactions answered by the core, kept for retransmissions (Timer J),
    /// by branch, sent-by and method (RFC 3261 §17.2.3).
    out_of_dialog: Mutex<HashMap<(String, String, String), OutOfDialog>>,
}

impl Core {
    pub fn new(
        settings: Settings,
        pool: Arc<PortPool>,
        gate: Option<crate::admit::Gate>,
        store: Option<Arc<voicegate_control::Store>>,
        resolver: crate::resolve::Resolver,
    ) -> Arc<Self> {
        Arc::new(Core {
            settings,
            gate,
            store,
            resolver,
            pool,
            stats: CallStats::default(),
            events: tokio::sync::broadcast::channel(256).0,
            sender: OnceLock::new(),
            listening: OnceLock::new(),
            routes: Mutex::new(Routes::default()),
            out_of_dialog: Mutex::new(HashMap::new()),
        })
    }

    /// Completes start-up once the transports are bound, and starts the sweeper.
    pub fn attach(
        self: &Arc<Self>,
        sender: Sender,
        listening: voicegate_sip::transport::LocalAddrs,
    ) {
        let _ = self.sender.set(sender);
        let _ = self.listening.set(listening);
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(core) = weak.upgrade() else { break };
                core.sweep(Instant::now());
            }
        });
    }

    /// The port we listen on for `transport` (a connection we opened has an ephemeral local
    /// port; requests must name the one peers can reach).
    pub fn listening_port(
        &self,
        transport: voicegate_sip::transport::TransportKind,
    ) -> Option<u16> {
        use voicegate_sip::transport::TransportKind;
        let local = self.listening.get()?;
        match transport {
            TransportKind::Udp => local.udp,
            TransportKind::Tcp => local.tcp,
            TransportKind::Tls => local.tls,
        }
        .map(|a| a.port())
    }

    pub fn sender(&self) -> &Sender {
        self.sender
            .get()
            .expect("core used before transports were attached")
    }

    fn lock_routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes a finished call's routes.
    pub fn unregister(&self, call_id: &str, branch: &str, local_tag: &str) {
        let mut routes = self.lock_routes();
        routes
            .by_branch
            .remove(&(call_id.to_string(), branch.to_string()));
        routes
            .by_tag
            .remove(&(call_id.to_string(), local_tag.to_string()));
    }

    /// Routes a leg we placed (its Call-ID and our From-tag) to its call: the next hop's
    /// responses and in-dialog requests.
    pub fn register_leg(&self, call_id: &str, local_tag: &str, call: &CallTx) {
        self.lock_routes()
            .by_tag
            .insert((call_id.to_string(), local_tag.to_string()), call.clone());
    }

    pub fn unregister_leg(&self, call_id: &str, local_tag: &str) {
        self.lock_routes()
            .by_tag
            .remove(&(call_id.to_string(), local_tag.to_string()));
    }

    /// The carrier whose inbound addresses include `ip`.
    pub fn carrier_from(&self, ip: IpAddr) -> Option<&Carrier> {
        self.settings
            .carriers
            .iter()
            .find(|c| c.inbound.iter().any(|net| net.contains(ip)))
    }

    pub fn active_calls(&self) -> usize {
        self.lock_routes().by_tag.len()
    }

    fn sweep(&self, now: Instant) {
        let mut table = self.out_of_dialog.lock().unwrap_or_else(|e| e.into_inner());
        table.retain(|_, entry| {
            entry.tx.handle_timeout(now);
            !entry.tx.is_terminated()
        });
    }

    fn on_request(self: &Arc<Self>, request: Request, source: Source) {
        let call_id = request.call_id().to_string();
        let branch = request.branch().unwrap_or_default();
        let is_ack = request.method == "ACK";

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
                None => debug!(call_id, "ACK matches no call: dropped"),
            }
            return;
        }
        if self.answer_retransmission(&request, &branch) {
            return;
        }
        if request.method != "CANCEL" {
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
        if request.to_tag().is_some() || request.method == "CANCEL" {
            let response = request.response(481, "Call/Transaction Does Not Exist");
            return self.answer(&request, &source, &branch, response);
        }
        match request.method.as_str() {
            "INVITE" => self.new_call(request, source, call_id, branch),
            "OPTIONS" => {
                let response = request
                    .response(200, "OK")
                    .header("Allow", ALLOW)
                    .header("Accept", "application/sdp")
                    .header("Supported", SUPPORTED);
                self.answer(&request, &source, &branch, response)
            }
            "REGISTER"
                if self.gate.as_ref().is_some_and(|g| g.is_active()) && self.store.is_some() =>
            {
                tokio::spawn(crate::registrar::handle(self.clone(), request, source));
            }
            // Only inside a dialog: an out-of-dialog REFER (RFC 3515 allows it) is not taken.
            "BYE" | "INFO" | "UPDATE" | "REFER" | "NOTIFY" => {
                let response = request.response(481, "Call/Transaction Does Not Exist");
                self.answer(&request, &source, &branch, response)
            }
            m if KNOWN_NOT_ALLOWED.contains(&m) => {
                let response = request
                    .response(405, "Method Not Allowed")
                    .header("Allow", ALLOW);
                self.answer(&request, &source, &branch, response)
            }
            _ => {
                let response = request
                    .response(501, "Not Implemented")
                    .header("Allow", ALLOW);
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
        self.stats.invites.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(call::run(
            self.clone(),
            request,
            source,
            branch,
            local_tag,
            tx,
            rx,
        ));
    }

    /// A retransmitted out-of-dialog request gets the answer it had.
    fn answer_retransmission(&self, request: &Request, branch: &str) -> bool {
        if request.method == "INVITE" || branch.is_empty() {
            return false;
        }
        let mut table = self.out_of_dialog.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = table.get_mut(&tx_key(request, branch)) else {
            return false;
        };
        entry.tx.on_request_retransmit(Instant::now());
        while let Some(bytes) = entry.tx.poll_transmit() {
            self.sender().send_to(&entry.source, entry.target, bytes);
        }
        true
    }

    /// Answers a request in the core: statelessly for INVITE (failure responses before any
    /// call exists), through a non-INVITE server transaction otherwise.
    pub(crate) fn answer(
        &self,
        request: &Request,
        source: &Source,
        branch: &str,
        response: Response,
    ) {
        let sender = self.sender();
        let mut response = response.header("Server", sender.user_agent());
        if response.status > 100 && request.to_tag().is_none() {
            response = response.with_to_tag(&random_token());
        }
        let bytes = response.to_bytes();
        let target = voicegate_sip::message::response_target(
            &request.headers,
            source.remote,
            source.transport.is_reliable(),
        );
        if request.method == "INVITE" || request.method == "ACK" || branch.is_empty() {
            sender.send_to(source, target, bytes);
            return;
        }
        let now = Instant::now();
        let mut tx = ServerNonInviteTx::new(source.transport.is_reliable(), self.settings.timers);
        tx.respond(response.status, bytes, now);
        while let Some(bytes) = tx.poll_transmit() {
            sender.send_to(source, target, bytes);
        }
        if !tx.is_terminated() {
            let mut table = self.out_of_dialog.lock().unwrap_or_else(|e| e.into_inner());
            table.insert(
                tx_key(request, branch),
                OutOfDialog {
                    tx,
                    source: *source,
                    target,
                },
            );
        }
    }
}

/// A non-INVITE server transaction's key: branch, top Via sent-by and method (RFC 3261
/// §17.2.3); the branch alone is not unique across clients.
fn tx_key(request: &Request, branch: &str) -> (String, String, String) {
    let sent_by = voicegate_sip::message::top_via(&request.headers)
        .map(|via| via.sent_by().to_string())
        .unwrap_or_default();
    (branch.to_string(), sent_by, request.method.clone())
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

/// A random token for tags and branches.
pub fn random_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}
