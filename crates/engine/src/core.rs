//! The SIP core's state: what every call shares (settings, admission, store, port pool,
//! counters, the transports' sender) and the routing table from SIP messages to call tasks.
//! What the core does with each message is [`crate::dispatch`].
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
use tracing::info;
use voicegate_rtp::PortPool;
use voicegate_sip::dialog::random_token;
use voicegate_sip::message::{Method, Request, Response};
use voicegate_sip::transaction::ServerNonInviteTx;
use voicegate_sip::transport::{Sender, Source};

use crate::settings::{Carrier, Settings};

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
pub(crate) struct Routes {
    /// (Call-ID, INVITE branch) → call: INVITE retransmissions and CANCEL.
    pub(crate) by_branch: HashMap<(String, String), CallTx>,
    /// (Call-ID, our To-tag) → call: everything inside the dialog.
    pub(crate) by_tag: HashMap<(String, String), CallTx>,
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
    bindings: Mutex<crate::bindings::Bindings>,
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
        bindings: crate::bindings::Bindings,
        resolver: crate::resolve::Resolver,
    ) -> Arc<Self> {
        let settings_limits = settings.limits.clone();
        let timer_h = settings.call.timers.t1 * 64;
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
                    core.lock_bindings().purge(crate::clock::unix_secs() as i64);
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

    pub(crate) fn lock_routes(&self) -> std::sync::MutexGuard<'_, Routes> {
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

    pub(crate) fn lock_refusals(&self) -> std::sync::MutexGuard<'_, crate::refusals::Refusals> {
        self.refusals.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn lock_bindings(&self) -> std::sync::MutexGuard<'_, crate::bindings::Bindings> {
        self.bindings.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lock_shield(&self) -> std::sync::MutexGuard<'_, crate::shield::Shield> {
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

    /// A retransmitted out-of-dialog request gets the answer it had.
    pub(crate) fn answer_retransmission(&self, request: &Request, branch: &str) -> bool {
        if request.method == Method::Invite || branch.is_empty() {
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
        if request.method == Method::Invite || request.method == Method::Ack || branch.is_empty() {
            sender.send_to(source, target, bytes);
            return;
        }
        let now = Instant::now();
        let mut tx =
            ServerNonInviteTx::new(source.transport.is_reliable(), self.settings.call.timers);
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

/// A non-INVITE server transaction's key: branch, top Via sent-by and method (RFC 3261
/// §17.2.3); the branch alone is not unique across clients.
fn tx_key(request: &Request, branch: &str) -> (String, String, Method) {
    let sent_by = voicegate_sip::message::top_via(&request.headers)
        .map(|via| via.sent_by().to_string())
        .unwrap_or_default();
    (branch.to_string(), sent_by, request.method.clone())
}
