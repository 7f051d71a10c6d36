//! Starting voicegate: config → transports, RTP pool and the SIP core, wired together.

use std::sync::Arc;
use std::time::Duration;

use voicegate_rtp::latch::LatchPolicy;
use voicegate_rtp::PortPool;
use voicegate_sip::sdp::Codec;
use voicegate_sip::transaction::Timers;
use voicegate_sip::transport::{self, Handler, ListenConfig, LocalAddrs, Sender};

use crate::admit::{Gate, Trunks};
use crate::config::Config;
use crate::core::{BridgeSettings, Core, CoreHandler, FlowRoute, Settings};
use crate::tls;

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
}

/// A started voicegate: its bound addresses and its counters.
pub struct Running {
    pub local: LocalAddrs,
    pub core: Arc<Core>,
    pub sender: Sender,
}

pub fn settings(config: &Config) -> Result<Settings, StartError> {
    let mut flows = Vec::new();
    for (i, flow) in config.flows.iter().enumerate() {
        let url = BotUrl::parse(&flow.url)
            .map_err(|e| StartError::Flow(format!("config: flows[{i}].url: {e}")))?;
        flows.push(FlowRoute {
            name: flow.name.clone(),
            url,
            protocol: Protocol::from_name(&flow.protocol).unwrap_or_default(),
            bidirectional: flow.direction == "bidirectional",
            numbers: flow.numbers.clone(),
        });
    }
    let bridge = &config.bridge;
    let extra_ca =
        (!bridge.extra_ca_file.is_empty()).then(|| std::path::PathBuf::from(&bridge.extra_ca_file));
    Ok(Settings {
        codecs: config
            .rtp
            .codec_names()
            .iter()
            .filter_map(|n| Codec::from_name(n))
            .collect(),
        echo_numbers: config.test_numbers.echo.clone(),
        ringing_numbers: config.test_numbers.ringing.clone(),
        ring_duration: config.test_numbers.ring_duration(),
        ring_timeout: Duration::from_secs(180),
        public_ip: config.sip.public_ip(),
        timers: Timers::default(),
        latching: LatchPolicy::from_name(&config.rtp.latching).unwrap_or(LatchPolicy::Auto),
        rtp_timeout: Duration::from_secs(config.rtp.timeout_secs),
        flows,
        bridge: BridgeSettings {
            client: ClientConfig {
                handshake_timeout: Duration::from_secs(bridge.handshake_timeout_secs),
                retries: 1,
                extra_ca_file: extra_ca,
            },
            media_interval: Duration::from_millis(bridge.media_interval_ms),
            max_session: Duration::from_secs(bridge.max_session_secs),
            playout_max: Duration::from_secs(bridge.playout_max_secs),
            silence_when_idle: bridge.silence_when_idle,
            forward_headers: bridge.forward_headers.clone(),
            account_sid: "voicegate".into(),
        },
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
    let gate = (!config.trunks.is_empty())
        .then(|| Gate::new(Trunks::from_config(&config.trunks), DIGEST_REALM));
    let core = Core::new(
        settings(config)?,
        PortPool::new(*range.start(), *range.end()),
        gate,
    );
    let listen = ListenConfig {
        udp: config.sip.udp_addr(),
        tcp: config.sip.tcp_addr(),
        tls: config.sip.tls_addr(),
        max_message_bytes: config.sip.max_message_bytes,
        user_agent: config.sip.user_agent.clone(),
    };
    let handler: Arc<dyn Handler> = Arc::new(CoreHandler(core.clone()));
    let (sender, local) = transport::start(listen, tls_config, handler).await?;
    core.attach(sender.clone());
    Ok(Running {
        local,
        core,
        sender,
    })
}
