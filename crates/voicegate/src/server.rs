//! Starting voicegate: config → transports, RTP pool and the SIP core, wired together.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use voicegate_rtp::latch::LatchPolicy;
use voicegate_rtp::PortPool;
use voicegate_sip::limits::StreamLimits;
use voicegate_sip::sdp::{Codec, CodecPreference};
use voicegate_sip::transaction::Timers;
use voicegate_sip::transport::{self, Handler, ListenConfig, LocalAddrs, Sender};

use crate::admit::{refresh, Gate, Trunks};
use crate::api_listener::{self, ConnectionLimits};
use crate::config::Config;
use crate::core::Core;
use crate::dispatch::CoreHandler;
use crate::resolve::Resolver;
use crate::settings::{
    BridgeSettings, CallSettings, Carrier, FlowRoute, RoutingSettings, Settings,
};
use crate::tls;
use voicegate_control::{router, ApiAccount, ApiState, Change, ChangeFuture, Store};

/// The realm of our digest challenges.
pub const DIGEST_REALM: &str = "voicegate";
use voicegate_bridge::dialect::Protocol;
use voicegate_bridge::ws::{BotUrl, ClientConfig};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
    #[error("config: {0}")]
    Bind(#[from] transport::BindError),
    #[error("{0}")]
    Flow(String),
    #[error("{0}")]
    Store(String),
}

/// A started voicegate: its bound addresses and its counters.
pub struct Running {
    pub local: LocalAddrs,
    pub core: Arc<Core>,
    pub sender: Sender,
    /// Where the trunk API listens, if it is on.
    pub api: Option<std::net::SocketAddr>,
}

pub fn settings(config: &Config) -> Result<Settings, StartError> {
    let mut flows = Vec::new();
    for (i, flow) in config.flows.iter().enumerate() {
        let url = BotUrl::parse(&flow.url)
            .map_err(|e| StartError::Flow(format!("config: flows[{i}].url: {e}")))?;
        flows.push(FlowRoute {
            name: flow.name.clone(),
            // Seeded into the store under this account, so the API shows it there too.
            account_sid: crate::seed::seed_account(config),
            url,
            protocol: Protocol::from_name(&flow.protocol).unwrap_or_default(),
            bidirectional: flow.direction == "bidirectional",
            numbers: flow.numbers.clone(),
            parameters: Vec::new(),
            connect_on_end: (flow.on_stream_end == "connect").then(|| flow.connect_to.clone()),
            default_agent: (!flow.connect_to.is_empty()).then(|| flow.connect_to.clone()),
            agent_assist: flow.agent_assist,
            fallback_to_bot: flow.fallback == "bot",
        });
    }
    let mut carriers: Vec<Carrier> = config
        .carriers
        .iter()
        .map(|c| Carrier {
            name: c.name.clone(),
            uri: c.uri.clone(),
            credentials: (!c.username.is_empty()).then(|| (c.username.clone(), c.password.clone())),
            priority: c.priority,
            inbound: c
                .inbound_ips
                .iter()
                .filter_map(|n| voicegate_control::IpNet::parse(n).ok())
                .collect(),
        })
        .collect();
    // Stable: equal priorities keep the file's order.
    carriers.sort_by_key(|c| c.priority);
    let routing = &config.routing;
    let bridge = &config.bridge;
    let extra_ca =
        (!bridge.extra_ca_file.is_empty()).then(|| std::path::PathBuf::from(&bridge.extra_ca_file));
    Ok(Settings {
        call: CallSettings {
            codecs: config
                .rtp
                .codec_names()
                .iter()
                .filter_map(|n| Codec::from_name(n))
                .collect(),
            codec_preference: CodecPreference::from_name(&config.rtp.codec_preference)
                .unwrap_or(CodecPreference::Offer),
            ring_duration: config.test_numbers.ring_duration(),
            ring_timeout: Duration::from_secs(180),
            public_ip: config.sip.public_ip(),
            timers: Timers {
                t1: Duration::from_millis(config.sip.t1_ms),
                ..Timers::default()
            },
            latching: LatchPolicy::from_name(&config.rtp.latching).unwrap_or(LatchPolicy::Auto),
            rtp_timeout: Duration::from_secs(config.rtp.timeout_secs),
            bridge: BridgeSettings {
                client: ClientConfig {
                    handshake_timeout: Duration::from_secs(bridge.handshake_timeout_secs),
                    retries: 1,
                    extra_ca_file: extra_ca,
                    max_message_bytes: bridge.max_message_bytes,
                },
                media_interval: Duration::from_millis(bridge.media_interval_ms),
                max_session: Duration::from_secs(bridge.max_session_secs),
                playout_max: Duration::from_secs(bridge.playout_max_secs),
                final_playout_max: Duration::from_secs(bridge.final_playout_max_secs),
                bot_write_timeout: Duration::from_secs(bridge.bot_write_timeout_secs),
                max_bot_messages_per_sec: bridge.max_bot_messages_per_sec,
                max_bot_bytes_per_sec: bridge.max_bot_bytes_per_sec,
                silence_when_idle: bridge.silence_when_idle,
                forward_headers: bridge.forward_headers.clone(),
            },
            routing: RoutingSettings {
                attempt_timeout: Duration::from_secs(routing.attempt_timeout_secs),
                answer_timeout: Duration::from_secs(routing.answer_timeout_secs),
                session_timer: voicegate_sip::session_timer::TimerConfig {
                    session_expires: routing.session_expires_secs,
                    min_se: routing.min_session_expires_secs,
                },
                ringback: crate::settings::ringback_tone(&routing.ringback),
            },
        },
        echo_numbers: config.test_numbers.echo.clone(),
        ringing_numbers: config.test_numbers.ringing.clone(),
        flows,
        carriers,
        limits: config.limits.settings(),
    })
}

/// How we open connections to next hops: the TLS roots (plus `routing.tls_ca_file`) and the
/// connect timeout.
fn outbound_config(config: &Config) -> Result<transport::OutboundConfig, StartError> {
    let routing = &config.routing;
    let tls = if routing.tls_ca_file.is_empty() {
        None
    } else {
        let pem = std::fs::read(&routing.tls_ca_file).map_err(|e| {
            StartError::Flow(format!(
                "config: routing.tls_ca_file: cannot read {}: {e}",
                routing.tls_ca_file
            ))
        })?;
        Some(
            transport::client_tls_config(Some(&pem), false)
                .map_err(|e| StartError::Flow(format!("config: routing.tls_ca_file: {e}")))?,
        )
    };
    Ok(transport::OutboundConfig {
        tls,
        connect_timeout: Duration::from_secs(routing.connect_timeout_secs),
    })
}

/// Binds every configured transport and starts serving. Must run inside a tokio runtime.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let tls_config = match config.sip.tls_addr() {
        Some(_) => {
            if config.sip.tls_files().is_none() {
                tracing::warn!("sip.tls_cert/sip.tls_key not set: using a self-signed certificate");
            }
            Some(tls::server_config(config.sip.tls_files())?)
        }
        None => None,
    };
    let range = config.rtp.port_range();
    let store = open_store(config).await?;
    // With a store, the file's trunks and flows are seeded into it and calls read the store;
    // without one, they are used as they are.
    let trunks = match &store {
        Some(store) => {
            crate::seed::seed(store, config)
                .await
                .map_err(|e| StartError::Store(format!("config: {e}")))?;
            let stored = store
                .snapshot()
                .await
                .map_err(|e| StartError::Store(format!("config: store.url: {e}")))?;
            Trunks::build(&[], Some(&stored))
        }
        None => Trunks::build(&config.trunks, None),
    };
    let gate = Some(Gate::new(trunks, DIGEST_REALM));
    let dns_servers: Vec<std::net::SocketAddr> = config
        .routing
        .dns_servers
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let resolver = Resolver::new(
        &dns_servers,
        Duration::from_millis(config.routing.dns_timeout_ms),
    )
    .map_err(|e| StartError::Flow(format!("config: routing.dns_servers: {e}")))?;
    let in_progress = match &store {
        Some(store) => Some(calls_in_progress(config, store).await?),
        None => None,
    };
    let bindings = match &store {
        Some(store) => {
            let now = crate::clock::unix_secs() as i64;
            let live = store
                .bindings(now)
                .await
                .map_err(|e| StartError::Store(format!("config: store.url: {e}")))?;
            crate::bindings::Bindings::load(live)
        }
        None => crate::bindings::Bindings::default(),
    };
    let core = Core::new(
        settings(config)?,
        PortPool::new(*range.start(), *range.end()),
        gate,
        store.clone(),
        in_progress,
        bindings,
        resolver,
    );
    let listen = ListenConfig {
        udp: config.sip.udp_addr(),
        tcp: config.sip.tcp_addr(),
        tls: config.sip.tls_addr(),
        max_message_bytes: config.sip.max_message_bytes,
        user_agent: config.sip.user_agent.clone(),
        limits: stream_limits(config),
    };
    let limits = listen.limits;
    let handler: Arc<dyn Handler> = Arc::new(CoreHandler(core.clone()));
    let (sender, local) =
        transport::start(listen, tls_config, outbound_config(config)?, handler).await?;
    // Said once listening, so that a start that fails says only why.
    tracing::info!(
        max_connections = limits.max_connections,
        max_connections_per_ip = limits.max_connections_per_ip,
        "SIP TCP/TLS connection caps"
    );
    core.attach(sender.clone(), local);
    let api = match store {
        Some(store) => start_api(config, store, core.clone()).await?,
        None => None,
    };
    Ok(Running {
        local,
        core,
        sender,
        api,
    })
}

/// Closes out the calls this node's last run left up (a crash or kill -9), then mirrors the
/// calls of this run.
async fn calls_in_progress(
    config: &Config,
    store: &Arc<Store>,
) -> Result<crate::in_progress::CallsInProgress, StartError> {
    let node = if config.store.node.is_empty() {
        crate::in_progress::default_node_name()
    } else {
        config.store.node.clone()
    };
    let interrupted = crate::in_progress::close_out_interrupted(store, &node)
        .await
        .map_err(|e| StartError::Store(format!("config: store.url: {e}")))?;
    if interrupted > 0 {
        tracing::warn!(
            node,
            calls = interrupted,
            "calls left up by the last run were closed out as interrupted"
        );
    }
    Ok(crate::in_progress::CallsInProgress::start(
        store.clone(),
        node,
    ))
}

async fn open_store(config: &Config) -> Result<Option<Arc<Store>>, StartError> {
    if config.store.url.is_empty() {
        return Ok(None);
    }
    let store = Store::open(&config.store.url).await.map_err(|e| {
        StartError::Store(format!(
            "config: store.url (VOICEGATE_STORE_URL): cannot open {}{}: {e}",
            config.store.url,
            relative_store_file(&config.store.url, std::env::current_dir().ok())
        ))
    })?;
    Ok(Some(Arc::new(store)))
}

/// For a `sqlite:` URL with a relative path, which file that is: it is resolved against the
/// working directory, easy to miss when a service or container runs in `/`. Empty for
/// absolute paths (the URL says it all) and in-memory stores.
fn relative_store_file(url: &str, cwd: Option<std::path::PathBuf>) -> String {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return String::new();
    };
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path.contains(":memory:") || std::path::Path::new(path).is_absolute() {
        return String::new();
    }
    match cwd {
        Some(cwd) => format!(
            " (the file {}: relative paths are taken from the working directory, {})",
            cwd.join(path).display(),
            cwd.display()
        ),
        None => " (a path relative to the working directory)".into(),
    }
}

/// Serves the trunk API; every successful write refreshes the trunks calls see before the
/// API answers, so a change is live for the next call.
async fn start_api(
    config: &Config,
    store: Arc<Store>,
    core: Arc<Core>,
) -> Result<Option<std::net::SocketAddr>, StartError> {
    if config.api.listen.is_empty() {
        return Ok(None);
    }
    let addr: std::net::SocketAddr = config.api.listen.parse().map_err(|_| {
        StartError::Store(format!(
            "config: api.listen: {:?} is not an address (expected ip:port)",
            config.api.listen
        ))
    })?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        StartError::Store(format!("config: api.listen: cannot listen on {addr}: {e}"))
    })?;
    let local = listener.local_addr().ok();
    let store_for_reload = store.clone();
    if config.api.accounts.is_empty() {
        tracing::warn!(
            "api: no accounts configured ([api] accounts): every request will be refused"
        );
    }
    let reloads = Arc::new(CoalescedReload::default());
    let on_change: Arc<dyn Fn(Change) -> ChangeFuture + Send + Sync> = Arc::new(move |change| {
        let (store, core, reloads) = (store_for_reload.clone(), core.clone(), reloads.clone());
        Box::pin(async move {
            reloads
                .after_write(change, |changes| async move {
                    if let Some(gate) = core.gate.as_ref() {
                        refresh(&store, gate, changes).await;
                    }
                })
                .await
        })
    });
    let state = ApiState {
        store,
        accounts: config
            .api
            .accounts
            .iter()
            .map(|a| ApiAccount {
                account_sid: a.account_sid.clone(),
                api_key: a.api_key.clone(),
                api_token: a.api_token.clone(),
            })
            .collect(),
        on_change,
    };
    let app = router(state);
    let limits = ConnectionLimits {
        max_connections: config.api.max_connections,
        max_connections_per_ip: config.api.max_connections_per_ip,
        idle_timeout: Duration::from_secs(config.api.idle_timeout_secs),
    };
    tokio::spawn(api_listener::serve(listener, app, limits));
    tracing::info!(addr = ?local, "trunk API listening");
    Ok(local)
}

/// Makes a burst of API writes cost one refresh, not one each, without weakening the promise
/// that a write is live once answered: a writer returns only after a refresh that *started*
/// after its write (so it read the write) has finished. A refresh re-reads what the writes
/// not yet covered changed.
#[derive(Default)]
struct CoalescedReload {
    announced: std::sync::Mutex<Announced>,
    /// Held while refreshing; holds the number of writes the last finished refresh covers.
    covered: tokio::sync::Mutex<u64>,
}

#[derive(Default)]
struct Announced {
    /// Writes announced so far; a write's number is taken after it is stored.
    count: u64,
    /// What each write not yet covered changed, with the number of its latest write. Kept
    /// until a refresh finishes, so one dropped mid-way (its client gone) loses nothing.
    pending: HashMap<Change, u64>,
}

impl CoalescedReload {
    async fn after_write<F, Fut>(&self, change: Change, refresh: F)
    where
        F: FnOnce(Vec<Change>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mine = {
            let mut announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
            announced.count += 1;
            let count = announced.count;
            announced.pending.insert(change, count);
            count
        };
        let mut covered = self.covered.lock().await;
        if *covered >= mine {
            return; // a refresh that began after this write has already finished
        }
        // Every write numbered up to here was stored before this refresh reads the store.
        let (upto, changes) = {
            let announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
            (announced.count, announced.pending.keys().cloned().collect())
        };
        refresh(changes).await;
        self.announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .retain(|_, latest| *latest > upto);
        *covered = upto;
    }
}

/// The caps and timeouts of accepted SIP connections, `sip.max_connections` sized against
/// the open files limit.
fn stream_limits(config: &Config) -> StreamLimits {
    let open_files = open_files_limit();
    let (max_connections, warning) = connection_cap(config.sip.max_connections, open_files);
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    StreamLimits {
        max_connections,
        max_connections_per_ip: config.sip.max_connections_per_ip,
        header_timeout: Duration::from_secs(config.sip.header_timeout_secs),
        idle_timeout: Duration::from_secs(config.sip.connection_idle_secs),
        tls_handshake_timeout: Duration::from_secs(config.sip.tls_handshake_timeout_secs),
    }
}

/// The soft RLIMIT_NOFILE, as Linux reports it in /proc/self/limits.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The connection cap for `sip.max_connections` (0 = derive it) under an open files limit:
/// derived, a quarter of the limit, leaving the rest to RTP sockets, bot connections, the
/// API and the store; with a warning when a configured cap could take over half of it.
fn connection_cap(configured: usize, open_files: Option<u64>) -> (usize, Option<String>) {
    /// Without a known limit, the usual default soft limit of 1024 is assumed.
    const ASSUMED_OPEN_FILES: u64 = 1024;
    const SMALLEST_DERIVED: usize = 16;
    let limit = open_files.unwrap_or(ASSUMED_OPEN_FILES);
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if configured == 0 {
        return ((limit / 4).max(SMALLEST_DERIVED), None);
    }
    let warning = (configured > limit / 2).then(|| {
        format!(
            "sip.max_connections = {configured} is over half the open files limit ({limit}): \
             a connection flood could leave no descriptors for RTP; raise the limit \
             (ulimit -n, LimitNOFILE=) or lower sip.max_connections"
        )
    });
    (configured, warning)
}

#[cfg(test)]
mod tests {
    use super::{connection_cap, relative_store_file};
    use voicegate_control::Change;

    #[test]
    fn the_connection_cap_leaves_descriptors_for_media() {
        assert_eq!(connection_cap(0, Some(1024)), (256, None));
        assert_eq!(connection_cap(0, Some(1_048_576)), (262_144, None));
        assert_eq!(connection_cap(0, Some(20)), (16, None));
        assert_eq!(connection_cap(0, None), (256, None));
        assert_eq!(connection_cap(500, Some(1024)), (500, None));
        let (cap, warning) = connection_cap(600, Some(1024));
        assert_eq!(cap, 600);
        assert!(warning.is_some_and(|w| w.contains("sip.max_connections = 600")));
    }
    use std::path::PathBuf;

    #[test]
    fn a_relative_store_url_names_the_file_it_resolves_to() {
        let note = relative_store_file("sqlite://voicegate.db", Some(PathBuf::from("/")));
        assert_eq!(
            note,
            " (the file /voicegate.db: relative paths are taken from the working directory, /)"
        );
        assert!(
            relative_store_file("sqlite:data/vg.db?mode=rwc", Some(PathBuf::from("/srv")))
                .contains("the file /srv/data/vg.db:")
        );
    }

    #[test]
    fn absolute_and_memory_store_urls_need_no_note() {
        let cwd = Some(PathBuf::from("/"));
        assert_eq!(
            relative_store_file("sqlite:///var/lib/voicegate/voicegate.db", cwd.clone()),
            ""
        );
        assert_eq!(relative_store_file("sqlite::memory:", cwd.clone()), "");
        assert_eq!(relative_store_file("", cwd), "");
    }

    #[tokio::test]
    async fn a_burst_of_writes_costs_two_reloads_and_each_waits_for_one_that_saw_it() {
        use std::sync::Mutex;
        let reloads = std::sync::Arc::new(super::CoalescedReload::default());
        let seen = std::sync::Arc::new(Mutex::new(Vec::<Vec<Change>>::new()));
        let mut writers = tokio::task::JoinSet::new();
        for i in 0..10 {
            let (reloads, seen) = (reloads.clone(), seen.clone());
            let change = Change::Trunk(format!("TR{}", i % 5));
            writers.spawn(async move {
                reloads
                    .after_write(change.clone(), |changes| async {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        seen.lock().unwrap().push(changes);
                    })
                    .await;
                // Whoever returns has seen a refresh that read its change finish.
                assert!(seen.lock().unwrap().iter().flatten().any(|c| *c == change));
            });
        }
        while let Some(done) = writers.join_next().await {
            done.unwrap();
        }
        // The first refresh began before the other nine were announced, so one more must
        // follow for them; and one is enough, reading each of their trunks once.
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0].len(), 1);
        assert_eq!(seen[1].len(), 5, "{seen:?}");
    }

    #[tokio::test]
    async fn a_refresh_dropped_mid_way_leaves_its_changes_to_the_next() {
        let reloads = super::CoalescedReload::default();
        let dropped = reloads.after_write(Change::Flow("FL1".into()), |_| std::future::pending());
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), dropped)
                .await
                .is_err()
        );
        let mut seen = Vec::new();
        reloads
            .after_write(Change::Trunk("TR1".into()), |changes| {
                seen = changes;
                async {}
            })
            .await;
        seen.sort_by_key(|c| format!("{c:?}"));
        assert_eq!(
            seen,
            [Change::Flow("FL1".into()), Change::Trunk("TR1".into())]
        );
    }

    /// Issue 11: the cost of one API write with 10,000 destinations on 100 trunks, refreshing
    /// everything or only the trunk written. Prints medians; asserts nothing about time.
    /// `cargo test -p voicegate --lib -- --ignored --nocapture one_write_costs`
    #[tokio::test]
    #[ignore = "a measurement"]
    async fn one_write_costs_full_and_scoped() {
        use crate::admit::{Gate, Trunks};
        use std::time::{Duration, Instant};
        use voicegate_control::{IpNet, NewTrunk, Store};

        let store = Store::open("sqlite::memory:").await.unwrap();
        let mut sids = Vec::new();
        for t in 0..100 {
            let name = format!("t{t}");
            let rec = store
                .create_trunk("AC1", &NewTrunk::new(name, "ANY-ANY", "x.example"))
                .await
                .unwrap();
            let net = IpNet::parse(&format!("10.{t}.0.0/16")).unwrap();
            store.add_ip(&rec.sid, net).await.unwrap();
            for d in 0..100 {
                let uri = format!("sip:10.{t}.0.{d}:5060");
                store
                    .add_destination(&rec.sid, &uri, Some(d), None)
                    .await
                    .unwrap();
            }
            sids.push(rec.sid);
        }
        let gate = Gate::new(
            Trunks::build(&[], Some(&store.snapshot().await.unwrap())),
            "test",
        );
        let median = |mut v: Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        for scoped in [false, true] {
            let (mut writes, mut refreshes) = (Vec::new(), Vec::new());
            for i in 0..41 {
                let sid = &sids[i * 7 % sids.len()];
                let started = Instant::now();
                store
                    .set_setting(sid, "trunk_external_alias", &format!("+1555{i:07}"))
                    .await
                    .unwrap();
                let stored = Instant::now();
                let change = if scoped {
                    Change::Trunk(sid.clone())
                } else {
                    Change::All
                };
                super::refresh(&store, &gate, vec![change]).await;
                refreshes.push(stored.elapsed());
                writes.push(started.elapsed());
                assert_eq!(
                    gate.trunks().external_alias(sid).as_deref(),
                    Some(format!("+1555{i:07}").as_str())
                );
            }
            let destinations: usize = sids
                .iter()
                .map(|s| gate.trunks().destinations(s).len())
                .sum();
            eprintln!(
                "{}: {destinations} destinations, median write+refresh {:?}, refresh {:?}",
                if scoped { "scoped" } else { "full" },
                median(writes),
                median(refreshes)
            );
        }
    }
}
