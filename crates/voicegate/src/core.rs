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
use tracing::{debug, info, warn};
use voicegate_rtp::PortPool;
use voicegate_sip::message::{Message, Method, Request, Response};
use voicegate_sip::sdp::{Codec, CodecPreference};
use voicegate_sip::transaction::{ServerNonInviteTx, Timers};
use voicegate_sip::transport::{Handler, Incoming, Sender, Source};

use crate::call;

pub use voicegate_sip::dialog::ALLOW;
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
    pub limits: LimitSettings,
}

/// Load shedding and the shield's limits (from `[limits]`).
#[derive(Clone, Debug)]
pub struct LimitSettings {
    pub shield: crate::shield::ShieldLimits,
    pub refusal_transactions: usize,
    /// Calls in progress, event-loop lag and CPU use that shed new calls.
    pub shedding: crate::load::SheddingLimits,
    pub retry_after_secs: u32,
    pub summary_interval: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        let c = crate::config::LimitsConfig::default();
        LimitSettings::from_config(&c)
    }
}

impl LimitSettings {
    pub fn from_config(c: &crate::config::LimitsConfig) -> Self {
        LimitSettings {
            shield: crate::shield::ShieldLimits {
                window: Duration::from_secs(c.window_secs),
                requests_per_window: c.requests_per_window,
                trusted_requests_per_window: c.trusted_requests_per_window,
                auth_failures: c.auth_failures_per_minute,
                auth_window: Duration::from_secs(60),
                block: Duration::from_secs(c.block_secs),
                tracked_sources: c.tracked_sources,
            },
            refusal_transactions: c.refusal_transactions,
            shedding: crate::load::SheddingLimits {
                max_calls: c.max_calls,
                max_lag: Duration::from_millis(c.max_lag_ms),
                max_cpu_percent: c.max_cpu_percent,
            },
            retry_after_secs: c.retry_after_secs,
            summary_interval: Duration::from_secs(c.summary_interval_secs),
        }
    }
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
    /// INVITEs refused in the core (admission, unknown number, load), no call started.
    pub refused_early: AtomicU64,
    /// INVITEs answered 503 because calls or the event-loop lag passed their limit.
    pub shed: AtomicU64,
    /// Requests dropped unanswered: their source is blocked.
    pub shield_dropped: AtomicU64,
    /// Sources blocked for going over their request rate.
    pub sources_blocked: AtomicU64,
    /// Sources blocked for failing digest authentication too often.
    pub auth_blocked: AtomicU64,
    /// Refusals sent again on an INVITE retransmission.
    pub refusals_resent: AtomicU64,
    /// ACKs of refusals absorbed.
    pub refusal_acks: AtomicU64,
    /// Refused INVITEs forgotten early because the table was full.
    pub refusals_evicted: AtomicU64,
    /// The event loop's latest scheduling lag (ms), measured by the sweeper.
    pub lag_ms: AtomicU64,
    /// The process's CPU use over the last second, in percent of every core.
    pub cpu_percent: AtomicU64,
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
    /// The calls up, mirrored in the store for a close-out after a crash (None without one).
    pub in_progress: Option<crate::in_progress::CallsInProgress>,
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
    out_of_dialog: Mutex<HashMap<(String, String, Method), OutOfDialog>>,
    /// Per-source request rates and the block list.
    shield: Mutex<crate::shield::Shield>,
    /// Registered contacts, as calls read them (the store keeps them across restarts).
    bindings: Mutex<crate::registrar::Bindings>,
    /// INVITEs refused here, kept for their retransmissions and ACK.
    refusals: Mutex<crate::refusals::Refusals>,
}

impl Core {
    pub fn new(
        settings: Settings,
        pool: Arc<PortPool>,
        gate: Option<crate::admit::Gate>,
        store: Option<Arc<voicegate_control::Store>>,
        in_progress: Option<crate::in_progress::CallsInProgress>,
        bindings: crate::registrar::Bindings,
        resolver: crate::resolve::Resolver,
    ) -> Arc<Self> {
        let settings_limits = settings.limits.clone();
        let timer_h = settings.timers.t1 * 64;
        Arc::new(Core {
            settings,
            gate,
            store,
            in_progress,
            resolver,
            pool,
            stats: CallStats::default(),
            events: tokio::sync::broadcast::channel(256).0,
            sender: OnceLock::new(),
            listening: OnceLock::new(),
            routes: Mutex::new(Routes::default()),
            out_of_dialog: Mutex::new(HashMap::new()),
            bindings: Mutex::new(bindings),
            shield: Mutex::new(crate::shield::Shield::new(
                settings_limits.shield,
                Instant::now(),
            )),
            refusals: Mutex::new(crate::refusals::Refusals::new(
                settings_limits.refusal_transactions,
                timer_h,
            )),
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
            const TICK: Duration = Duration::from_secs(1);
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_summary = Instant::now();
            let mut cpu = crate::load::CpuMeter::new(crate::load::available_cores());
            loop {
                let due = tick.tick().await;
                let now = Instant::now();
                let Some(core) = weak.upgrade() else { break };
                // How late the tick ran: how far behind the runtime is.
                let lag = now.saturating_duration_since(due);
                core.stats
                    .lag_ms
                    .store(lag.as_millis() as u64, Ordering::Relaxed);
                if let Some(percent) =
                    crate::load::process_cpu_time().and_then(|t| cpu.sample(t, now))
                {
                    core.stats
                        .cpu_percent
                        .store(u64::from(percent), Ordering::Relaxed);
                }
                core.sweep(now);
                if now.saturating_duration_since(last_summary)
                    >= core.settings.limits.summary_interval
                {
                    last_summary = now;
                    core.log_refusals(now);
                    core.lock_bindings()
                        .purge(crate::registrar::unix_secs() as i64);
                    release_free_memory();
                }
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
        {
            let mut table = self.out_of_dialog.lock().unwrap_or_else(|e| e.into_inner());
            table.retain(|_, entry| {
                entry.tx.handle_timeout(now);
                !entry.tx.is_terminated()
            });
            shrink(&mut table);
        }
        self.lock_refusals().sweep(now);
        let mut routes = self.lock_routes();
        shrink(&mut routes.by_branch);
        shrink(&mut routes.by_tag);
    }

    fn lock_refusals(&self) -> std::sync::MutexGuard<'_, crate::refusals::Refusals> {
        self.refusals.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn lock_bindings(&self) -> std::sync::MutexGuard<'_, crate::registrar::Bindings> {
        self.bindings.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_shield(&self) -> std::sync::MutexGuard<'_, crate::shield::Shield> {
        self.shield.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One line per source whose requests were refused or dropped since the last summary,
    /// instead of a call record per refused INVITE.
    fn log_refusals(&self, now: Instant) {
        const MOST_LINES: usize = 20;
        let summary = self.lock_shield().sweep(now);
        for s in summary.iter().take(MOST_LINES) {
            let source = s.source.map_or_else(
                || "(sources beyond limits.tracked_sources)".to_string(),
                |ip| ip.to_string(),
            );
            info!(
                target: "voicegate::shield",
                source,
                refused = s.refused,
                dropped = s.dropped,
                blocked = s.blocked,
                "requests refused"
            );
        }
        if summary.len() > MOST_LINES {
            let rest = &summary[MOST_LINES..];
            info!(
                target: "voicegate::shield",
                sources = rest.len(),
                refused = rest.iter().map(|s| s.refused).sum::<u64>(),
                dropped = rest.iter().map(|s| s.dropped).sum::<u64>(),
                "requests refused from further sources"
            );
        }
    }

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
            if request.method == "INVITE" && self.refusal_retransmission(&request, &branch, false) {
                return;
            }
            if !self.shield_passes(&source) {
                return;
            }
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
fn tx_key(request: &Request, branch: &str) -> (String, String, Method) {
    let sent_by = voicegate_sip::message::top_via(&request.headers)
        .map(|via| via.sent_by().to_string())
        .unwrap_or_default();
    (branch.to_string(), sent_by, request.method.clone())
}

/// A refused INVITE's key: branch and top Via sent-by (its ACK carries the same branch).
fn refusal_key(request: &Request, branch: &str) -> crate::refusals::RefusalKey {
    let sent_by = voicegate_sip::message::top_via(&request.headers)
        .map(|via| via.sent_by().to_string())
        .unwrap_or_default();
    (branch.to_string(), sent_by)
}

/// Hands freed heap pages back to the system. glibc keeps what a burst of small allocations
/// freed (in every thread's arena) unless asked: after a flood, RSS would stay at its peak.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Gives back a map's memory once a flood has passed (its capacity stays at its peak else).
fn shrink<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to_fit();
    }
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

/// A random token for tags and branches.
pub fn random_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}
