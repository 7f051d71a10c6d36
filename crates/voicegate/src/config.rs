//! Configuration: TOML file plus VOICEGATE_<SECTION>_<KEY> environment overrides.
//!
//! Loading happens in four steps (see [`Config::load`]):
//!
//! 1. the TOML file, if any, is parsed into a [`toml::Table`];
//! 2. that table is checked against the schema — the serialised
//!    [`Config::default()`] — so unknown sections and keys are reported with
//!    their full dotted name;
//! 3. every key of the schema may be replaced by the environment variable
//!    `VOICEGATE_<SECTION>_<KEY>` (upper-cased), parsed according to the type
//!    of the key's default value (lists are comma-separated);
//! 4. the merged table is deserialised into [`Config`] and [`Config::validate`]d.
//!
//! The schema is derived from the structs below, so a new key only needs a
//! field, a default and a line in `config/voicegate.toml`. Fields must not be
//! `Option`s (a `None` would not appear in the serialised schema and could be
//! neither checked nor overridden); use an empty string or list for "unset".
//!
//! # Secrets
//!
//! `Config` derives `Debug` and `Serialize`, and both are used for logging.
//! No field is secret today (TLS key *paths* are not secrets). A future field
//! holding a password or token must use a wrapper type whose `Debug` and
//! `Serialize` redact the value, and its validation errors must not echo it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "VOICEGATE";

/// Codecs voicegate can negotiate, in canonical spelling.
pub const KNOWN_CODECS: &[&str] = &["PCMA", "PCMU", "OPUS"];

/// Values of `rtp.latching`.
pub const LATCHING_MODES: &[&str] = &["auto", "always", "never"];

/// Values of `log.format`.
pub const LOG_FORMATS: &[&str] = &["text", "json"];

/// Values of `rtp.codec_preference`.
pub const CODEC_PREFERENCES: &[&str] = &["offer", "ours"];

/// Bounds for `sip.max_message_bytes`.
pub const MESSAGE_BYTES_RANGE: RangeInclusive<usize> = 1024..=16 * 1024 * 1024;

/// The whole configuration. `Config::default()` is the documented default
/// configuration shipped as `config/voicegate.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Bot flows and the numbers mapped to them (until the trunk API provides them). Arrays
    /// of tables have no environment override.
    pub flows: Vec<FlowConfig>,
    /// Customer trunks seeded from the file: who may call in, and where their numbers go.
    /// With none, every source may call the test numbers and flow numbers (a demo setup).
    pub trunks: Vec<TrunkConfig>,
    /// Upstream carrier gateways (the telephone network side): outbound calls go to them
    /// in priority order; INVITEs from their addresses are inbound calls.
    pub carriers: Vec<CarrierConfig>,
    pub api: ApiConfig,
    pub store: StoreConfig,
    pub sip: SipConfig,
    pub routing: RoutingConfig,
    pub rtp: RtpConfig,
    pub bridge: BridgeConfig,
    pub test_numbers: TestNumbersConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
}

/// Keys whose values are tables of their own (set in the file only, no env override).
const FILE_ONLY_KEYS: &[&str] = &["flows", "trunks", "carriers"];

/// `[api]`: the Exotel-compatible trunk API.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// HTTP listen address; "" disables the API.
    pub listen: String,
    /// Accounts allowed to use the API (account_sid, api_key, api_token). With none, every
    /// request is refused. File only: secrets stay out of the environment listing.
    pub accounts: Vec<ApiAccountConfig>,
    /// Open API connections at most; beyond, new ones wait until one closes.
    pub max_connections: usize,
    /// Open API connections from one source address at most; beyond, new ones are closed.
    pub max_connections_per_ip: usize,
    /// Seconds a connection may take to send a complete request head, counted from its
    /// opening or from the previous answer; then it is closed (idle keep-alive, slow headers).
    pub idle_timeout_secs: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            accounts: Vec::new(),
            max_connections: 256,
            max_connections_per_ip: 32,
            idle_timeout_secs: 30,
        }
    }
}

impl ApiConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(invalid(
                "api.max_connections",
                "api.max_connections: must be at least 1",
            ));
        }
        if !(1..=self.max_connections).contains(&self.max_connections_per_ip) {
            return Err(invalid(
                "api.max_connections_per_ip",
                format!(
                    "api.max_connections_per_ip: must be 1..={} (api.max_connections)",
                    self.max_connections
                ),
            ));
        }
        if !(1..=3600).contains(&self.idle_timeout_secs) {
            return Err(invalid(
                "api.idle_timeout_secs",
                "api.idle_timeout_secs: must be 1..=3600",
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("listen", &self.listen)
            .field(
                "accounts",
                &format_args!("[{} redacted]", self.accounts.len()),
            )
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("idle_timeout_secs", &self.idle_timeout_secs)
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ApiAccountConfig {
    pub account_sid: String,
    pub api_key: String,
    pub api_token: String,
}

/// `[store]`: where trunks, numbers and flows are kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://path` (created with its schema on first start) or `sqlite::memory:`.
    pub url: String,
    /// This node's name in the store (its calls in progress); empty: the host name.
    pub node: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://voicegate.db".into(),
            node: String::new(),
        }
    }
}

/// `[[trunks]]`: a customer trunk (its secrets are never logged: this struct is not printed).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrunkConfig {
    pub name: String,
    pub active: bool,
    /// Source networks allowed to call in without credentials ("10.0.0.0/16", "192.0.2.7").
    pub whitelisted_ips: Vec<String>,
    /// Digest credentials; a trunk with any is challenged (401) until a caller authenticates.
    pub credentials: Vec<CredentialConfig>,
    /// Concurrent calls allowed (0 = no limit); over it callers get 486.
    pub max_concurrent_calls: u32,
    /// Calls admitted per minute; over it callers get 503 with Retry-After.
    pub calls_per_minute: u32,
    /// The trunk's numbers: E.164, each to a flow (by name) or to the PSTN router.
    pub numbers: Vec<NumberConfig>,
    /// Whether the trunk's PBX may REGISTER (with its credentials) so calls can reach it
    /// behind NAT.
    pub registration_enabled: bool,
    /// Where inbound calls to the trunk's `pstn` numbers go, in priority order (first
    /// first): `host[:port][;transport=tcp]` or a `sip:`/`sips:` URI; a host name is resolved
    /// at each call.
    pub destinations: Vec<String>,
    /// The caller ID (E.164) of the calls the trunk places ("" = the caller's own).
    pub external_alias: String,
}

impl Default for TrunkConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            active: true,
            whitelisted_ips: Vec::new(),
            credentials: Vec::new(),
            max_concurrent_calls: 0,
            calls_per_minute: 200,
            numbers: Vec::new(),
            registration_enabled: false,
            destinations: Vec::new(),
            external_alias: String::new(),
        }
    }
}

impl std::fmt::Debug for TrunkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrunkConfig")
            .field("name", &self.name)
            .field("whitelisted_ips", &self.whitelisted_ips)
            .field(
                "credentials",
                &format_args!("[{} redacted]", self.credentials.len()),
            )
            .field("numbers", &self.numbers)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialConfig {
    pub user_name: String,
    pub password: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct NumberConfig {
    pub number: String,
    /// `flow` (then `flow` names the flow) or `pstn`.
    pub mode: String,
    pub flow: String,
}

/// `[[carriers]]`: an upstream gateway (its password is never logged).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CarrierConfig {
    pub name: String,
    /// Where outbound calls go: `sip:host[:port][;transport=tcp]` (`sips:` for TLS); the
    /// dialled number becomes the user part. A host name is resolved at each attempt.
    pub uri: String,
    /// Digest credentials for the carrier's 401/407 challenges ("" = none).
    pub username: String,
    pub password: String,
    /// Lower first; carriers of equal priority keep their order in the file.
    pub priority: u32,
    /// Source networks of the carrier's own INVITEs (inbound calls); they are not
    /// challenged. "" entries are not allowed.
    pub inbound_ips: Vec<String>,
}

impl Default for CarrierConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            uri: String::new(),
            username: String::new(),
            password: String::new(),
            priority: 10,
            inbound_ips: Vec::new(),
        }
    }
}

impl std::fmt::Debug for CarrierConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CarrierConfig")
            .field("name", &self.name)
            .field("uri", &self.uri)
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .field("priority", &self.priority)
            .field("inbound_ips", &self.inbound_ips)
            .finish()
    }
}

/// `[routing]`: how calls leave voicegate (carriers, destination URIs, agents).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// DNS servers (`ip:port`) for destination host names; empty = the system's resolver.
    pub dns_servers: Vec<String>,
    /// How long one DNS query may take, in milliseconds.
    pub dns_timeout_ms: u64,
    /// A next hop that sends no response at all within this time is skipped (next carrier or
    /// destination).
    pub attempt_timeout_secs: u64,
    /// A call that is not answered within this time is given up (408 to the caller).
    pub answer_timeout_secs: u64,
    /// Session timer (RFC 4028) we ask for on our INVITEs and offer in our 2xx.
    pub session_expires_secs: u32,
    /// Smallest session interval we accept: below it a request gets 422.
    pub min_session_expires_secs: u32,
    /// The tone callers hear while an agent's phone rings: `eu` (425 Hz) or `us` (440+480 Hz).
    pub ringback: String,
    /// PEM file of extra CA certificates trusted for TLS next hops, besides the public roots
    /// ("" = public roots only).
    pub tls_ca_file: String,
    /// How long opening a TCP or TLS connection to a next hop may take, in seconds.
    pub connect_timeout_secs: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            dns_servers: Vec::new(),
            dns_timeout_ms: 2000,
            attempt_timeout_secs: 4,
            answer_timeout_secs: 120,
            session_expires_secs: 1800,
            min_session_expires_secs: 90,
            ringback: "eu".into(),
            tls_ca_file: String::new(),
            connect_timeout_secs: 5,
        }
    }
}

/// Values of `routing.ringback`.
pub const RINGBACK_TONES: &[&str] = &["eu", "us"];

/// Values of `flows.protocol`, `flows.direction` and `flows.on_stream_end`.
pub const FLOW_PROTOCOLS: &[&str] = &["exotel", "twilio"];
pub const FLOW_DIRECTIONS: &[&str] = &["bidirectional", "unidirectional"];
pub const FLOW_END_ACTIONS: &[&str] = &["hangup", "connect"];
pub const FLOW_FALLBACKS: &[&str] = &["hangup", "bot"];

/// `[[flows]]`: a voice bot reached over WebSocket, and the numbers that go to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowConfig {
    pub name: String,
    /// The bot's WebSocket URL (ws:// or wss://); `user:pass@` becomes Basic auth, query
    /// parameters become custom parameters (`sample-rate` picks 8000, 16000 or 24000 Hz).
    pub url: String,
    /// `exotel` (default) or `twilio`.
    pub protocol: String,
    /// `bidirectional` (a voicebot that talks back) or `unidirectional` (a listen-only stream).
    pub direction: String,
    /// What happens when the bot closes its socket: `hangup`, or `connect` to `connect_to`.
    pub on_stream_end: String,
    /// The agent for `connect` and for transfers without a target: a SIP URI, `+E.164` (by
    /// the carriers) or `trunk:{trunk_sid}` (that trunk's destination URIs).
    pub connect_to: String,
    /// After a hand-off to an agent, the bot keeps receiving both parties' audio
    /// (listen-only) when the hand-off came from its own `transfer`.
    pub agent_assist: bool,
    /// When the agent leg fails (busy, no answer, error): `hangup`, or back to the `bot`.
    pub fallback: String,
    /// Dialled numbers (Request-URI user parts) answered by this flow.
    pub numbers: Vec<String>,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            url: String::new(),
            protocol: "exotel".into(),
            direction: "bidirectional".into(),
            on_stream_end: "hangup".into(),
            connect_to: String::new(),
            agent_assist: false,
            fallback: "hangup".into(),
            numbers: Vec::new(),
        }
    }
}

/// `[bridge]`: streaming calls to bots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    /// How much caller audio each `media` message carries in the Exotel dialect (20-200 ms;
    /// the Twilio dialect always sends 20 ms).
    pub media_interval_ms: u64,
    /// A bot session longer than this is ended (the flow's next step is taken).
    pub max_session_secs: u64,
    /// How long the bot's WebSocket handshake may take; one retry follows a failure.
    pub handshake_timeout_secs: u64,
    /// Most bot audio queued for playout; beyond it audio is dropped (and counted).
    pub playout_max_secs: u64,
    /// When the bot closes its socket, hangs up or asks for a transfer, the audio it queued
    /// before still plays to the caller for at most this long (0: cut at once).
    pub final_playout_max_secs: u64,
    /// Largest message accepted from a bot, in bytes; a larger one ends the bot step (Close
    /// 1009).
    pub max_message_bytes: usize,
    /// A bot that reads none of our frames for this long is ended as if it had closed.
    pub bot_write_timeout_secs: u64,
    /// Messages and bytes a bot may send per second (5 s of either may come at once); beyond,
    /// its messages are dropped unread and counted.
    pub max_bot_messages_per_sec: u64,
    pub max_bot_bytes_per_sec: u64,
    /// Send RTP silence while the bot has nothing queued (`true`), or send nothing.
    pub silence_when_idle: bool,
    /// PEM file of extra CA certificates for private wss:// bots ("" = none).
    pub extra_ca_file: String,
    /// SIP headers of the INVITE passed to the bot as custom parameters (a trailing `*`
    /// matches a prefix).
    pub forward_headers: Vec<String>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            media_interval_ms: 100,
            max_session_secs: 3600,
            handshake_timeout_secs: 10,
            playout_max_secs: 60,
            final_playout_max_secs: 10,
            max_message_bytes: voicegate_bridge::ws::DEFAULT_MAX_MESSAGE_BYTES,
            bot_write_timeout_secs: 10,
            max_bot_messages_per_sec: 500,
            max_bot_bytes_per_sec: 1 << 20,
            silence_when_idle: true,
            extra_ca_file: String::new(),
            forward_headers: vec!["X-UUI".into(), "X-Exotel-*".into()],
        }
    }
}

/// `[sip]`: SIP listeners and identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// UDP listen address (`ip:port`); empty disables UDP.
    pub udp: String,
    /// TCP listen address (`ip:port`); empty disables TCP.
    pub tcp: String,
    /// TLS listen address (`ip:port`); empty disables TLS.
    pub tls: String,
    /// PEM certificate chain for TLS; empty (with `tls_key`) = self-signed.
    pub tls_cert: String,
    /// PEM private key for TLS; empty (with `tls_cert`) = self-signed.
    pub tls_key: String,
    /// Address advertised in Contact/Via/SDP; empty = the listen/local address.
    pub public_ip: String,
    /// Largest SIP message accepted, in bytes.
    pub max_message_bytes: usize,
    /// User-Agent / Server header value.
    pub user_agent: String,
    /// RFC 3261 T1 (the round-trip estimate) in milliseconds: retransmissions start at T1 and
    /// transactions give up after 64*T1.
    pub t1_ms: u64,
    /// Accepted TCP and TLS connections open at once, together; 0 = a quarter of the open
    /// files limit (RLIMIT_NOFILE), so that connections cannot take the descriptors that RTP
    /// ports and bot connections need.
    pub max_connections: usize,
    /// Accepted TCP and TLS connections open at once from one source IP address.
    pub max_connections_per_ip: usize,
    /// An accepted connection must deliver a whole first SIP message within this many seconds.
    pub header_timeout_secs: u64,
    /// A TCP/TLS connection with no whole message or keep-alive, either way, for this many
    /// seconds is closed.
    pub connection_idle_secs: u64,
    /// The TLS handshake of an accepted connection must finish within this many seconds.
    pub tls_handshake_timeout_secs: u64,
}

impl Default for SipConfig {
    fn default() -> Self {
        Self {
            udp: "0.0.0.0:5060".into(),
            tcp: "0.0.0.0:5060".into(),
            tls: "0.0.0.0:5061".into(),
            tls_cert: String::new(),
            tls_key: String::new(),
            public_ip: String::new(),
            max_message_bytes: 65536,
            user_agent: "voicegate".into(),
            t1_ms: 500,
            max_connections: 0,
            max_connections_per_ip: 100,
            header_timeout_secs: 10,
            connection_idle_secs: 300,
            tls_handshake_timeout_secs: 10,
        }
    }
}

/// `[rtp]`: media ports and codecs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtpConfig {
    /// Lowest RTP port (inclusive).
    pub port_min: u16,
    /// Highest RTP port (inclusive).
    pub port_max: u16,
    /// Codec names in our preference order (case-insensitive, see [`KNOWN_CODECS`]): our
    /// offers list them so, and answers follow it with `codec_preference = "ours"`.
    pub codecs: Vec<String>,
    /// Which codec answers an offer with several of ours: `offer` (the caller's first, as
    /// RFC 3264 recommends: no needless transcoding) or `ours` (the first of `codecs`).
    pub codec_preference: String,
    /// An answered call with no RTP for this long is ended with a BYE (not while held).
    pub timeout_secs: u64,
    /// Where we send RTP: `auto` latches to the address packets really come from when the SDP
    /// address is private or unspecified (NAT), `always` latches whatever the SDP says,
    /// `never` keeps to the SDP address.
    pub latching: String,
}

impl Default for RtpConfig {
    fn default() -> Self {
        Self {
            port_min: 10000,
            port_max: 20000,
            codecs: vec!["PCMA".into(), "PCMU".into()],
            codec_preference: "offer".into(),
            timeout_secs: 30,
            latching: "auto".into(),
        }
    }
}

/// `[test_numbers]`: numbers served locally until trunks/numbers come
/// through the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestNumbersConfig {
    /// Numbers answered by an RTP echo.
    pub echo: Vec<String>,
    /// Numbers that ring (180) and are never answered (for CANCEL tests).
    pub ringing: Vec<String>,
    /// How long echo numbers ring (180) before answering, in milliseconds.
    pub ring_ms: u64,
}

impl Default for TestNumbersConfig {
    fn default() -> Self {
        Self {
            echo: vec!["echo".into()],
            ringing: Vec::new(),
            ring_ms: 0,
        }
    }
}

/// `[limits]`: what a source may send, and when voicegate sheds load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// The per-source request counter's window, in seconds.
    pub window_secs: u64,
    /// Out-of-dialog requests per window from an address that is no trunk's or carrier's;
    /// over it the source is blocked.
    pub requests_per_window: u32,
    /// The same for trunk whitelist and carrier addresses.
    pub trusted_requests_per_window: u32,
    /// Failed digest authentications (credentials offered, not accepted) per minute from one
    /// source before it is blocked.
    pub auth_failures_per_minute: u32,
    /// How long a blocked source's requests are dropped unanswered, in seconds.
    pub block_secs: u64,
    /// Most source addresses tracked at once; beyond, new sources share one counter.
    pub tracked_sources: usize,
    /// Most refused INVITEs kept (for their retransmissions) at once; the oldest go first.
    pub refusal_transactions: usize,
    /// Calls in progress beyond which new INVITEs get 503; 0 = no limit.
    pub max_calls: u64,
    /// Scheduling lag of the event loop, in milliseconds, beyond which new INVITEs get 503;
    /// 0 = not checked.
    pub max_lag_ms: u64,
    /// The process's CPU use over the last second, in percent of every core it may run on,
    /// from which new INVITEs get 503; 0 = not checked.
    pub max_cpu_percent: u32,
    /// The Retry-After of a shed INVITE's 503, in seconds.
    pub retry_after_secs: u32,
    /// How often refused INVITEs are summarised in the log (one line per source), in seconds.
    pub summary_interval_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            window_secs: 2,
            requests_per_window: 200,
            trusted_requests_per_window: 2000,
            auth_failures_per_minute: 20,
            block_secs: 60,
            tracked_sources: 16384,
            refusal_transactions: 4096,
            max_calls: 5000,
            max_lag_ms: 500,
            max_cpu_percent: 95,
            retry_after_secs: 5,
            summary_interval_secs: 10,
        }
    }
}

impl LimitsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("limits.window_secs", self.window_secs),
            (
                "limits.requests_per_window",
                self.requests_per_window as u64,
            ),
            (
                "limits.trusted_requests_per_window",
                self.trusted_requests_per_window as u64,
            ),
            ("limits.block_secs", self.block_secs),
            ("limits.tracked_sources", self.tracked_sources as u64),
            (
                "limits.refusal_transactions",
                self.refusal_transactions as u64,
            ),
            ("limits.retry_after_secs", self.retry_after_secs as u64),
            ("limits.summary_interval_secs", self.summary_interval_secs),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, format!("{key}: must be at least 1")));
            }
        }
        let bounded = [
            ("limits.window_secs", self.window_secs, 3600),
            ("limits.block_secs", self.block_secs, 86_400),
            (
                "limits.tracked_sources",
                self.tracked_sources as u64,
                1 << 20,
            ),
            (
                "limits.refusal_transactions",
                self.refusal_transactions as u64,
                1 << 20,
            ),
            (
                "limits.summary_interval_secs",
                self.summary_interval_secs,
                3600,
            ),
            (
                "limits.max_cpu_percent",
                u64::from(self.max_cpu_percent),
                100,
            ),
        ];
        for (key, value, max) in bounded {
            if value > max {
                return Err(invalid(key, format!("{key}: {value} is above {max}")));
            }
        }
        if self.trusted_requests_per_window < self.requests_per_window {
            return Err(invalid(
                "limits.trusted_requests_per_window",
                "limits.trusted_requests_per_window: must not be below limits.requests_per_window",
            ));
        }
        Ok(())
    }
}

/// `[log]`: logging.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` EnvFilter directive, e.g. `info` or `voicegate=debug,info`.
    pub level: String,
    /// `text` (coloured on a terminal only) or `json` (one object per line, for log
    /// shippers); see [`LOG_FORMATS`].
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// A configuration error. `Display` is a single line naming the key (or
/// file) and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("config: cannot read {}: {}", .path.display(), io_reason(.source))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML.
    #[error("config: invalid TOML in {}:{line}:{column}: {message}", .path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// The file contains a section that is not in the schema.
    #[error("config: unknown section [{section}] in {}", .path.display())]
    UnknownSection { section: String, path: PathBuf },
    /// The file contains a key (full dotted name) that is not in the schema.
    #[error("config: unknown key {key} in {}", .path.display())]
    UnknownKey { key: String, path: PathBuf },
    /// An environment variable could not be parsed as the key's type.
    #[error("config: {key}: invalid value {value:?} from {var} (expected {expected})")]
    InvalidEnv {
        key: String,
        var: String,
        value: String,
        expected: &'static str,
    },
    /// A value has the wrong type or is out of range for its key.
    /// `origin` says where it came from (`in <file>` or `from <VAR>`).
    #[error("config: {key}: {message} ({origin})")]
    InvalidType {
        key: String,
        origin: String,
        message: String,
    },
    /// A value is well-typed but fails validation.
    #[error("config: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    /// The dotted key (or section) the error is about, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Read { .. } | Self::Syntax { .. } => None,
            Self::UnknownSection { section, .. } => Some(section),
            Self::UnknownKey { key, .. }
            | Self::InvalidEnv { key, .. }
            | Self::InvalidType { key, .. }
            | Self::Invalid { key, .. } => Some(key),
        }
    }
}

/// An io::Error's message without the " (os error N)" suffix.
fn io_reason(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

fn one_line(text: &str) -> String {
    text.trim()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ")
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

impl Config {
    /// Loads the configuration: the TOML file at `path` (or the defaults when
    /// `None`), then `VOICEGATE_<SECTION>_<KEY>` overrides looked up through
    /// `env`, then [`validate`](Self::validate).
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let schema = schema();
        let mut table = match path {
            Some(path) => read_table(path, &schema)?,
            None => Table::new(),
        };
        let mut env_origins = HashMap::new();
        apply_env(&schema, &mut table, "", ENV_PREFIX, &env, &mut env_origins)?;
        let config: Config = table
            .clone()
            .try_into()
            .map_err(|err| locate_error(&table, &err, path, &env_origins))?;
        config.validate()?;
        Ok(config)
    }

    /// [`load`](Self::load) with overrides from the process environment.
    pub fn load_from_process_env(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load(path, |var| std::env::var(var).ok())
    }

    /// Every environment variable that can override a key, e.g.
    /// `VOICEGATE_SIP_UDP`, sorted.
    pub fn env_var_names() -> Vec<String> {
        fn walk(table: &Table, prefix: &str, out: &mut Vec<String>) {
            for (key, value) in table {
                let file_only = (prefix == ENV_PREFIX && FILE_ONLY_KEYS.contains(&key.as_str()))
                    || (prefix == "VOICEGATE_API" && key == "accounts");
                if file_only {
                    continue;
                }
                let var = format!("{prefix}_{}", key.to_ascii_uppercase());
                match value {
                    Value::Table(sub) => walk(sub, &var, out),
                    _ => out.push(var),
                }
            }
        }
        let mut out = Vec::new();
        walk(&schema(), ENV_PREFIX, &mut out);
        out
    }

    /// Checks values that the types alone do not constrain.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.api.validate()?;
        self.sip.validate()?;
        self.rtp.validate()?;
        self.bridge.validate()?;
        self.test_numbers.validate()?;
        self.validate_flows()?;
        self.validate_trunks()?;
        self.validate_carriers()?;
        self.routing.validate()?;
        self.limits.validate()?;
        self.log.validate()
    }
}

impl Config {
    fn validate_flows(&self) -> Result<(), ConfigError> {
        let mut seen: Vec<&str> = Vec::new();
        for (i, flow) in self.flows.iter().enumerate() {
            let key = |field: &str| format!("flows[{i}].{field}");
            if flow.name.trim().is_empty() {
                return Err(invalid(
                    &key("name"),
                    format!("{}: every flow needs a name", key("name")),
                ));
            }
            if !(flow.url.starts_with("ws://") || flow.url.starts_with("wss://")) {
                return Err(invalid(
                    &key("url"),
                    format!(
                        "{}: {:?} is not a ws:// or wss:// URL",
                        key("url"),
                        flow.url
                    ),
                ));
            }
            for (field, value, allowed) in [
                ("protocol", &flow.protocol, FLOW_PROTOCOLS),
                ("direction", &flow.direction, FLOW_DIRECTIONS),
                ("on_stream_end", &flow.on_stream_end, FLOW_END_ACTIONS),
                ("fallback", &flow.fallback, FLOW_FALLBACKS),
            ] {
                if !allowed.contains(&value.as_str()) {
                    return Err(invalid(
                        &key(field),
                        format!(
                            "{}: {value:?} is not one of {}",
                            key(field),
                            allowed.join(", ")
                        ),
                    ));
                }
            }
            if flow.on_stream_end == "connect" && flow.connect_to.trim().is_empty() {
                return Err(invalid(
                    &key("connect_to"),
                    format!(
                        "{}: on_stream_end = \"connect\" needs an agent to connect to",
                        key("connect_to")
                    ),
                ));
            }
            for number in &flow.numbers {
                if seen.contains(&number.as_str())
                    || self.test_numbers.is_echo(number)
                    || self.test_numbers.is_ringing(number)
                {
                    return Err(invalid(
                        &key("numbers"),
                        format!("{}: number {number:?} is mapped twice", key("numbers")),
                    ));
                }
                seen.push(number);
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_trunks(&self) -> Result<(), ConfigError> {
        for (i, trunk) in self.trunks.iter().enumerate() {
            let key = |field: &str| format!("trunks[{i}].{field}");
            if trunk.name.trim().is_empty() {
                return Err(invalid(
                    &key("name"),
                    format!("{}: every trunk needs a name", key("name")),
                ));
            }
            for net in &trunk.whitelisted_ips {
                if let Err(e) = voicegate_control::IpNet::parse(net) {
                    return Err(invalid(
                        &key("whitelisted_ips"),
                        format!("{}: {net:?}: {e}", key("whitelisted_ips")),
                    ));
                }
            }
            if trunk
                .credentials
                .iter()
                .any(|c| c.user_name.is_empty() || c.password.is_empty())
            {
                return Err(invalid(
                    &key("credentials"),
                    format!(
                        "{}: user_name and password are required",
                        key("credentials")
                    ),
                ));
            }
            for destination in &trunk.destinations {
                if let Err(e) = voicegate_control::parse_destination(destination) {
                    return Err(invalid(
                        &key("destinations"),
                        format!("{}: {destination:?}: {e}", key("destinations")),
                    ));
                }
            }
            if !trunk.external_alias.is_empty()
                && voicegate_control::check_e164(&trunk.external_alias).is_err()
            {
                return Err(invalid(
                    &key("external_alias"),
                    format!(
                        "{}: {:?} is not E.164 (+ and 8 to 15 digits)",
                        key("external_alias"),
                        trunk.external_alias
                    ),
                ));
            }
            for number in &trunk.numbers {
                if voicegate_control::check_e164(&number.number).is_err() {
                    return Err(invalid(
                        &key("numbers"),
                        format!(
                            "{}: {:?} is not E.164 (+ and 8 to 15 digits)",
                            key("numbers"),
                            number.number
                        ),
                    ));
                }
                match number.mode.as_str() {
                    "pstn" => {}
                    "flow" if self.flows.iter().any(|f| f.name == number.flow) => {}
                    "flow" => {
                        return Err(invalid(
                            &key("numbers"),
                            format!(
                                "{}: {}: no flow named {:?}",
                                key("numbers"),
                                number.number,
                                number.flow
                            ),
                        ))
                    }
                    other => {
                        return Err(invalid(
                            &key("numbers"),
                            format!("{}: mode {other:?} is not flow or pstn", key("numbers")),
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_carriers(&self) -> Result<(), ConfigError> {
        for (i, carrier) in self.carriers.iter().enumerate() {
            let key = |field: &str| format!("carriers[{i}].{field}");
            if carrier.name.trim().is_empty() {
                return Err(invalid(
                    &key("name"),
                    format!("{}: every carrier needs a name", key("name")),
                ));
            }
            if let Err(e) = crate::resolve::parse_sip_target(&carrier.uri) {
                return Err(invalid(
                    &key("uri"),
                    format!("{}: {:?}: {e}", key("uri"), carrier.uri),
                ));
            }
            if carrier.username.is_empty() != carrier.password.is_empty() {
                return Err(invalid(
                    &key("username"),
                    format!(
                        "{}: give both username and password, or neither",
                        key("username")
                    ),
                ));
            }
            for net in &carrier.inbound_ips {
                if let Err(e) = voicegate_control::IpNet::parse(net) {
                    return Err(invalid(
                        &key("inbound_ips"),
                        format!("{}: {net:?}: {e}", key("inbound_ips")),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl RoutingConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for server in &self.dns_servers {
            if server.parse::<SocketAddr>().is_err() {
                return Err(invalid(
                    "routing.dns_servers",
                    format!("routing.dns_servers: {server:?} is not ip:port"),
                ));
            }
        }
        for (key, value) in [
            ("routing.dns_timeout_ms", self.dns_timeout_ms),
            ("routing.attempt_timeout_secs", self.attempt_timeout_secs),
            ("routing.answer_timeout_secs", self.answer_timeout_secs),
            ("routing.connect_timeout_secs", self.connect_timeout_secs),
            (
                "routing.min_session_expires_secs",
                u64::from(self.min_session_expires_secs),
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, format!("{key}: must be at least 1")));
            }
        }
        if self.session_expires_secs < self.min_session_expires_secs {
            return Err(invalid(
                "routing.session_expires_secs",
                format!(
                    "routing.session_expires_secs: {} is below routing.min_session_expires_secs {}",
                    self.session_expires_secs, self.min_session_expires_secs
                ),
            ));
        }
        if !RINGBACK_TONES.contains(&self.ringback.as_str()) {
            return Err(invalid(
                "routing.ringback",
                format!(
                    "routing.ringback: {:?} is not one of {}",
                    self.ringback,
                    RINGBACK_TONES.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

/// A bot's last words may hold the call this long at most.
const MAX_FINAL_PLAYOUT_SECS: u64 = 300;

impl BridgeConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(20..=200).contains(&self.media_interval_ms) {
            return Err(invalid(
                "bridge.media_interval_ms",
                format!(
                    "bridge.media_interval_ms: {} is outside 20-200",
                    self.media_interval_ms
                ),
            ));
        }
        for (key, value) in [
            ("bridge.max_session_secs", self.max_session_secs),
            ("bridge.handshake_timeout_secs", self.handshake_timeout_secs),
            ("bridge.playout_max_secs", self.playout_max_secs),
            ("bridge.bot_write_timeout_secs", self.bot_write_timeout_secs),
            (
                "bridge.max_bot_messages_per_sec",
                self.max_bot_messages_per_sec,
            ),
            ("bridge.max_bot_bytes_per_sec", self.max_bot_bytes_per_sec),
        ] {
            if value == 0 {
                return Err(invalid(key, format!("{key}: must be at least 1")));
            }
        }
        if !MESSAGE_BYTES_RANGE.contains(&self.max_message_bytes) {
            return Err(invalid(
                "bridge.max_message_bytes",
                format!(
                    "bridge.max_message_bytes: {} is outside {}-{}",
                    self.max_message_bytes,
                    MESSAGE_BYTES_RANGE.start(),
                    MESSAGE_BYTES_RANGE.end()
                ),
            ));
        }
        if self.final_playout_max_secs > MAX_FINAL_PLAYOUT_SECS {
            return Err(invalid(
                "bridge.final_playout_max_secs",
                format!(
                    "bridge.final_playout_max_secs: {} is above {MAX_FINAL_PLAYOUT_SECS}",
                    self.final_playout_max_secs
                ),
            ));
        }
        Ok(())
    }
}

/// The schema: the default configuration as a TOML table.
fn schema() -> Table {
    Table::try_from(Config::default()).expect("the default configuration serialises to TOML")
}

fn read_table(path: &Path, schema: &Table) -> Result<Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let table: Table = toml::from_str(&text).map_err(|err| {
        let offset = err.span().map_or(0, |span| span.start).min(text.len());
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        ConfigError::Syntax {
            path: path.to_owned(),
            line,
            column,
            message: one_line(err.message()),
        }
    })?;
    check_known(schema, &table, "", path)?;
    Ok(table)
}

/// Rejects sections and keys of `table` that do not exist in `schema`.
fn check_known(
    schema: &Table,
    table: &Table,
    prefix: &str,
    path: &Path,
) -> Result<(), ConfigError> {
    for (key, value) in table {
        let dotted = join_key(prefix, key);
        match (schema.get(key), value) {
            (None, Value::Table(_)) if prefix.is_empty() => {
                return Err(ConfigError::UnknownSection {
                    section: dotted,
                    path: path.to_owned(),
                })
            }
            (None, _) => {
                return Err(ConfigError::UnknownKey {
                    key: dotted,
                    path: path.to_owned(),
                })
            }
            (Some(Value::Table(sub_schema)), Value::Table(sub)) => {
                check_known(sub_schema, sub, &dotted, path)?
            }
            (Some(Value::Table(_)), other) => {
                return Err(ConfigError::InvalidType {
                    message: format!("expected a section [{dotted}], found {}", other.type_str()),
                    key: dotted,
                    origin: format!("in {}", path.display()),
                })
            }
            (Some(_), _) => {}
        }
    }
    Ok(())
}

/// Replaces every schema key that has an environment variable set.
fn apply_env(
    schema: &Table,
    table: &mut Table,
    key_prefix: &str,
    var_prefix: &str,
    env: &impl Fn(&str) -> Option<String>,
    origins: &mut HashMap<String, String>,
) -> Result<(), ConfigError> {
    for (key, default) in schema {
        if (key_prefix.is_empty() && FILE_ONLY_KEYS.contains(&key.as_str()))
            || (key_prefix == "api" && key == "accounts")
        {
            continue;
        }
        let dotted = join_key(key_prefix, key);
        let var = format!("{var_prefix}_{}", key.to_ascii_uppercase());
        if let Value::Table(sub_schema) = default {
            let entry = table
                .entry(key.clone())
                .or_insert_with(|| Value::Table(Table::new()));
            if let Value::Table(sub) = entry {
                apply_env(sub_schema, sub, &dotted, &var, env, origins)?;
            }
            continue;
        }
        let Some(raw) = env(&var) else { continue };
        let value = parse_env(default, &raw).map_err(|expected| ConfigError::InvalidEnv {
            key: dotted.clone(),
            var: var.clone(),
            value: raw.clone(),
            expected,
        })?;
        table.insert(key.clone(), value);
        origins.insert(dotted, var);
    }
    Ok(())
}

/// Parses an environment value as the type of the key's default value.
/// Lists are comma-separated, items trimmed, empty items dropped.
fn parse_env(default: &Value, raw: &str) -> Result<Value, &'static str> {
    match default {
        Value::String(_) | Value::Table(_) => Ok(Value::String(raw.to_owned())),
        Value::Integer(_) => raw
            .trim()
            .parse()
            .map(Value::Integer)
            .map_err(|_| "an integer"),
        Value::Float(_) => raw.trim().parse().map(Value::Float).map_err(|_| "a number"),
        Value::Boolean(_) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Boolean(false)),
            _ => Err("true or false"),
        },
        Value::Datetime(_) => raw
            .trim()
            .parse()
            .map(Value::Datetime)
            .map_err(|_| "a TOML date-time"),
        Value::Array(items) => {
            let item_default = items
                .first()
                .cloned()
                .unwrap_or_else(|| Value::String(String::new()));
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| parse_env(&item_default, item))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
    }
}

/// Turns a deserialisation error into one naming the offending key, found by
/// deserialising each key on its own.
fn locate_error(
    table: &Table,
    err: &toml::de::Error,
    path: Option<&Path>,
    env_origins: &HashMap<String, String>,
) -> ConfigError {
    let origin_of = |key: &str| match (env_origins.get(key), path) {
        (Some(var), _) => format!("from {var}"),
        (None, Some(path)) => format!("in {}", path.display()),
        (None, None) => "default".to_owned(),
    };
    for (section, value) in table {
        let Value::Table(keys) = value else { continue };
        for (key, value) in keys {
            let probe = Table::from_iter([(
                section.clone(),
                Value::Table(Table::from_iter([(key.clone(), value.clone())])),
            )]);
            if let Err(err) = probe.try_into::<Config>() {
                let dotted = join_key(section, key);
                return ConfigError::InvalidType {
                    origin: origin_of(&dotted),
                    message: one_line(err.message()),
                    key: dotted,
                };
            }
        }
    }
    ConfigError::InvalidType {
        key: String::new(),
        origin: path.map_or_else(
            || "environment".to_owned(),
            |p| format!("in {}", p.display()),
        ),
        message: one_line(err.message()),
    }
}

fn listen_addr(value: &str) -> Option<SocketAddr> {
    value.parse().ok()
}

impl SipConfig {
    /// UDP listen address; `None` when disabled.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        listen_addr(&self.udp)
    }

    /// TCP listen address; `None` when disabled.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        listen_addr(&self.tcp)
    }

    /// TLS listen address; `None` when disabled.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        listen_addr(&self.tls)
    }

    /// The address to advertise; `None` = use the listen/local address.
    pub fn public_ip(&self) -> Option<IpAddr> {
        self.public_ip.parse().ok()
    }

    /// `(certificate, key)` PEM paths; `None` = generate a self-signed
    /// certificate at start.
    pub fn tls_files(&self) -> Option<(&Path, &Path)> {
        if self.tls_cert.is_empty() || self.tls_key.is_empty() {
            None
        } else {
            Some((Path::new(&self.tls_cert), Path::new(&self.tls_key)))
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [("udp", &self.udp), ("tcp", &self.tcp), ("tls", &self.tls)] {
            if !value.is_empty() && listen_addr(value).is_none() {
                let key = format!("sip.{name}");
                return Err(invalid(
                    &key,
                    format!("{key}: {value:?} is not an address (expected ip:port)"),
                ));
            }
        }
        if self.udp.is_empty() && self.tcp.is_empty() && self.tls.is_empty() {
            return Err(invalid(
                "sip",
                "sip: no transport enabled (set at least one of sip.udp, sip.tcp, sip.tls)",
            ));
        }
        if self.tls_cert.is_empty() != self.tls_key.is_empty() {
            return Err(invalid(
                "sip.tls_cert",
                "sip.tls_cert and sip.tls_key must be given together",
            ));
        }
        if !self.public_ip.is_empty() {
            match self.public_ip.parse::<IpAddr>() {
                Err(_) => {
                    return Err(invalid(
                        "sip.public_ip",
                        format!("sip.public_ip: {:?} is not an IP address", self.public_ip),
                    ))
                }
                Ok(ip) if ip.is_unspecified() => {
                    return Err(invalid(
                        "sip.public_ip",
                        format!("sip.public_ip: {ip} cannot be advertised (unspecified address)"),
                    ))
                }
                Ok(_) => {}
            }
        }
        if !(50..=5000).contains(&self.t1_ms) {
            return Err(invalid(
                "sip.t1_ms",
                format!("sip.t1_ms: {} is outside 50-5000", self.t1_ms),
            ));
        }
        if !MESSAGE_BYTES_RANGE.contains(&self.max_message_bytes) {
            return Err(invalid(
                "sip.max_message_bytes",
                format!(
                    "sip.max_message_bytes: {} is out of range (expected {} to {})",
                    self.max_message_bytes,
                    MESSAGE_BYTES_RANGE.start(),
                    MESSAGE_BYTES_RANGE.end()
                ),
            ));
        }
        if self.user_agent.chars().any(char::is_control) {
            return Err(invalid(
                "sip.user_agent",
                "sip.user_agent: must not contain control characters",
            ));
        }
        if self.max_connections_per_ip == 0 {
            return Err(invalid(
                "sip.max_connections_per_ip",
                "sip.max_connections_per_ip: must be at least 1",
            ));
        }
        for (key, value, range) in [
            ("sip.header_timeout_secs", self.header_timeout_secs, 1..=300),
            (
                "sip.connection_idle_secs",
                self.connection_idle_secs,
                1..=86400,
            ),
            (
                "sip.tls_handshake_timeout_secs",
                self.tls_handshake_timeout_secs,
                1..=300,
            ),
        ] {
            if !range.contains(&value) {
                return Err(invalid(
                    key,
                    format!(
                        "{key}: {value} is outside {}-{}",
                        range.start(),
                        range.end()
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl RtpConfig {
    /// The RTP port range, inclusive.
    pub fn port_range(&self) -> RangeInclusive<u16> {
        self.port_min..=self.port_max
    }

    /// Configured codecs in canonical spelling (see [`KNOWN_CODECS`]), in
    /// preference order, without duplicates; unknown names are skipped.
    pub fn codec_names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        for codec in &self.codecs {
            if let Some(name) = canonical_codec(codec) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (key, port) in [
            ("rtp.port_min", self.port_min),
            ("rtp.port_max", self.port_max),
        ] {
            if port == 0 {
                return Err(invalid(key, format!("{key}: must be above 0")));
            }
        }
        if self.port_min >= self.port_max {
            return Err(invalid(
                "rtp.port_min",
                format!(
                    "rtp.port_min ({}) must be below rtp.port_max ({})",
                    self.port_min, self.port_max
                ),
            ));
        }
        if self.codecs.is_empty() {
            return Err(invalid(
                "rtp.codecs",
                "rtp.codecs: at least one codec is required",
            ));
        }
        if !LATCHING_MODES.contains(&self.latching.as_str()) {
            return Err(invalid(
                "rtp.latching",
                format!(
                    "rtp.latching: {:?} is not one of {}",
                    self.latching,
                    LATCHING_MODES.join(", ")
                ),
            ));
        }
        if !CODEC_PREFERENCES.contains(&self.codec_preference.as_str()) {
            return Err(invalid(
                "rtp.codec_preference",
                format!(
                    "rtp.codec_preference: {:?} is not one of {}",
                    self.codec_preference,
                    CODEC_PREFERENCES.join(", ")
                ),
            ));
        }
        if self.timeout_secs == 0 {
            return Err(invalid(
                "rtp.timeout_secs",
                "rtp.timeout_secs: must be at least 1",
            ));
        }
        if let Some(unknown) = self.codecs.iter().find(|c| canonical_codec(c).is_none()) {
            return Err(invalid(
                "rtp.codecs",
                format!(
                    "rtp.codecs: unknown codec {unknown:?} (known: {})",
                    KNOWN_CODECS.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

fn canonical_codec(name: &str) -> Option<&'static str> {
    KNOWN_CODECS
        .iter()
        .copied()
        .find(|known| known.eq_ignore_ascii_case(name.trim()))
}

impl TestNumbersConfig {
    /// Whether `number` is answered by the RTP echo.
    pub fn is_echo(&self, number: &str) -> bool {
        self.echo.iter().any(|n| n == number)
    }

    /// Whether `number` rings forever.
    pub fn is_ringing(&self, number: &str) -> bool {
        self.ringing.iter().any(|n| n == number)
    }

    /// How long echo numbers ring before answering.
    pub fn ring_duration(&self) -> Duration {
        Duration::from_millis(self.ring_ms)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (key, list) in [
            ("test_numbers.echo", &self.echo),
            ("test_numbers.ringing", &self.ringing),
        ] {
            if list.iter().any(|n| n.trim().is_empty()) {
                return Err(invalid(key, format!("{key}: numbers must not be empty")));
            }
        }
        if let Some(both) = self.echo.iter().find(|n| self.is_ringing(n)) {
            return Err(invalid(
                "test_numbers.ringing",
                format!("test_numbers: {both:?} is listed in both echo and ringing"),
            ));
        }
        Ok(())
    }
}

impl LogConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.level.trim().is_empty() {
            return Err(invalid("log.level", "log.level: must not be empty"));
        }
        if !LOG_FORMATS.contains(&self.format.as_str()) {
            return Err(invalid(
                "log.format",
                format!(
                    "log.format: {:?} is not one of {}",
                    self.format,
                    LOG_FORMATS.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/voicegate.toml");

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// A TOML file in the temp dir, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, contents: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "voicegate-config-test-{}-{name}.toml",
                std::process::id()
            ));
            std::fs::write(&path, contents).unwrap();
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn load_err(contents: &str, name: &str, vars: &[(&str, &str)]) -> (ConfigError, String) {
        let file = TempFile::new(name, contents);
        let err = Config::load(Some(&file.0), env(vars)).unwrap_err();
        let text = err.to_string();
        assert!(!text.contains('\n'), "error is not one line: {text}");
        (err, text.replace(&file.0.display().to_string(), "FILE"))
    }

    fn env_err(vars: &[(&str, &str)]) -> String {
        let text = Config::load(None, env(vars)).unwrap_err().to_string();
        assert!(!text.contains('\n'), "error is not one line: {text}");
        text
    }

    #[test]
    fn defaults() {
        let c = Config::default();
        assert_eq!(c.sip.udp, "0.0.0.0:5060");
        assert_eq!(c.sip.tcp, "0.0.0.0:5060");
        assert_eq!(c.sip.tls, "0.0.0.0:5061");
        assert_eq!(c.sip.udp_addr(), Some("0.0.0.0:5060".parse().unwrap()));
        assert_eq!(c.sip.tls_addr(), Some("0.0.0.0:5061".parse().unwrap()));
        assert_eq!(c.sip.tls_files(), None);
        assert_eq!(c.sip.public_ip(), None);
        assert_eq!(c.sip.max_message_bytes, 65536);
        assert_eq!(c.sip.user_agent, "voicegate");
        assert_eq!(c.rtp.port_range(), 10000..=20000);
        assert_eq!(c.rtp.codec_names(), vec!["PCMA", "PCMU"]);
        assert!(c.test_numbers.is_echo("echo"));
        assert!(c.test_numbers.ringing.is_empty());
        assert_eq!(c.test_numbers.ring_duration(), Duration::ZERO);
        assert_eq!(c.log.level, "info");
        assert_eq!(c.log.format, "text");
        c.validate().unwrap();
        assert_eq!(Config::load(None, no_env).unwrap(), c);
    }

    #[test]
    fn shipped_file_equals_defaults() {
        let loaded = Config::load(Some(Path::new(SHIPPED)), no_env).unwrap();
        assert_eq!(loaded, Config::default());
        // Every key is written out, not merely defaulted.
        let text = std::fs::read_to_string(SHIPPED).unwrap();
        let table: Table = toml::from_str(&text).unwrap();
        assert_eq!(table, schema());
    }

    #[test]
    fn shipped_file_documents_every_env_var() {
        let text = std::fs::read_to_string(SHIPPED).unwrap();
        let vars = Config::env_var_names();
        assert!(vars.contains(&"VOICEGATE_TEST_NUMBERS_RING_MS".to_owned()));
        for var in vars {
            assert!(text.contains(&var), "{var} is not documented in {SHIPPED}");
        }
    }

    #[test]
    fn env_overrides_string() {
        let c = Config::load(
            None,
            env(&[
                ("VOICEGATE_SIP_UDP", "127.0.0.1:15060"),
                ("VOICEGATE_SIP_PUBLIC_IP", "192.0.2.7"),
                ("VOICEGATE_LOG_LEVEL", "voicegate=debug,info"),
                ("VOICEGATE_LOG_FORMAT", "json"),
            ]),
        )
        .unwrap();
        assert_eq!(c.log.format, "json");
        assert_eq!(c.sip.udp_addr(), Some("127.0.0.1:15060".parse().unwrap()));
        assert_eq!(c.sip.public_ip(), Some("192.0.2.7".parse().unwrap()));
        assert_eq!(c.log.level, "voicegate=debug,info");
        assert_eq!(c.sip.tcp, "0.0.0.0:5060");
    }

    #[test]
    fn env_overrides_number() {
        let c = Config::load(
            None,
            env(&[
                ("VOICEGATE_RTP_PORT_MIN", "30000"),
                ("VOICEGATE_RTP_PORT_MAX", " 30100 "),
                ("VOICEGATE_TEST_NUMBERS_RING_MS", "1500"),
            ]),
        )
        .unwrap();
        assert_eq!(c.rtp.port_range(), 30000..=30100);
        assert_eq!(c.test_numbers.ring_duration(), Duration::from_millis(1500));
    }

    #[test]
    fn api_connection_limits_are_env_overridable_and_checked() {
        let c = Config::load(
            None,
            env(&[
                ("VOICEGATE_API_MAX_CONNECTIONS", "8"),
                ("VOICEGATE_API_MAX_CONNECTIONS_PER_IP", "2"),
                ("VOICEGATE_API_IDLE_TIMEOUT_SECS", "5"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (
                c.api.max_connections,
                c.api.max_connections_per_ip,
                c.api.idle_timeout_secs
            ),
            (8, 2, 5)
        );
        let err = env_err(&[("VOICEGATE_API_MAX_CONNECTIONS", "0")]);
        assert!(
            err.contains("api.max_connections: must be at least 1"),
            "{err}"
        );
        let err = env_err(&[
            ("VOICEGATE_API_MAX_CONNECTIONS", "4"),
            ("VOICEGATE_API_MAX_CONNECTIONS_PER_IP", "5"),
        ]);
        assert!(
            err.contains("api.max_connections_per_ip: must be 1..=4"),
            "{err}"
        );
        let err = env_err(&[("VOICEGATE_API_IDLE_TIMEOUT_SECS", "0")]);
        assert!(
            err.contains("api.idle_timeout_secs: must be 1..=3600"),
            "{err}"
        );
    }

    #[test]
    fn env_overrides_list() {
        let c = Config::load(
            None,
            env(&[
                ("VOICEGATE_TEST_NUMBERS_ECHO", "echo, 1234"),
                ("VOICEGATE_TEST_NUMBERS_RINGING", "ring"),
                ("VOICEGATE_RTP_CODECS", "pcmu,PCMA,pcmu"),
            ]),
        )
        .unwrap();
        assert_eq!(c.test_numbers.echo, vec!["echo", "1234"]);
        assert!(c.test_numbers.is_ringing("ring"));
        assert_eq!(c.rtp.codec_names(), vec!["PCMU", "PCMA"]);

        let c = Config::load(None, env(&[("VOICEGATE_TEST_NUMBERS_ECHO", "")])).unwrap();
        assert!(c.test_numbers.echo.is_empty());
    }

    #[test]
    fn env_empty_string_disables_transport() {
        let c = Config::load(
            None,
            env(&[("VOICEGATE_SIP_TCP", ""), ("VOICEGATE_SIP_TLS", "")]),
        )
        .unwrap();
        assert_eq!(c.sip.tcp_addr(), None);
        assert_eq!(c.sip.tls_addr(), None);
        assert!(c.sip.udp_addr().is_some());

        let err = env_err(&[
            ("VOICEGATE_SIP_UDP", ""),
            ("VOICEGATE_SIP_TCP", ""),
            ("VOICEGATE_SIP_TLS", ""),
        ]);
        assert!(err.contains("no transport enabled"), "{err}");
    }

    #[test]
    fn env_overrides_file() {
        let file = TempFile::new(
            "override",
            "[sip]\nudp = \"127.0.0.1:5070\"\ntcp = \"\"\n[rtp]\nport_min = 40000\nport_max = 40100\n",
        );
        let c = Config::load(
            Some(&file.0),
            env(&[("VOICEGATE_SIP_UDP", "127.0.0.1:5080")]),
        )
        .unwrap();
        assert_eq!(c.sip.udp_addr(), Some("127.0.0.1:5080".parse().unwrap()));
        assert_eq!(c.sip.tcp_addr(), None);
        assert_eq!(c.rtp.port_range(), 40000..=40100);
        assert_eq!(c.sip.tls, "0.0.0.0:5061");
    }

    #[test]
    fn unknown_key_names_dotted_key() {
        let (err, text) = load_err("[sip]\nudpp = \"1.2.3.4:5\"\n", "unknown-key", &[]);
        assert_eq!(text, "config: unknown key sip.udpp in FILE");
        assert_eq!(err.key(), Some("sip.udpp"));

        let (_, text) = load_err("colour = 1\n", "unknown-top-key", &[]);
        assert_eq!(text, "config: unknown key colour in FILE");
    }

    #[test]
    fn unknown_section_names_section() {
        let (err, text) = load_err("[widgets]\nname = \"a\"\n", "unknown-section", &[]);
        assert_eq!(text, "config: unknown section [widgets] in FILE");
        assert_eq!(err.key(), Some("widgets"));
    }

    #[test]
    fn bad_integer_from_env() {
        assert_eq!(
            env_err(&[("VOICEGATE_RTP_PORT_MIN", "abc")]),
            r#"config: rtp.port_min: invalid value "abc" from VOICEGATE_RTP_PORT_MIN (expected an integer)"#
        );
        let err = env_err(&[("VOICEGATE_RTP_PORT_MAX", "70000")]);
        assert!(err.starts_with("config: rtp.port_max: "), "{err}");
        assert!(err.ends_with("(from VOICEGATE_RTP_PORT_MAX)"), "{err}");
    }

    #[test]
    fn bad_type_in_file_names_key() {
        let (err, text) = load_err("[rtp]\nport_min = \"abc\"\n", "bad-type", &[]);
        assert_eq!(err.key(), Some("rtp.port_min"));
        assert!(text.starts_with("config: rtp.port_min: "), "{text}");
        assert!(text.ends_with("(in FILE)"), "{text}");

        let (_, text) = load_err("sip = 1\n", "bad-section", &[]);
        assert!(
            text.starts_with("config: sip: expected a section [sip]"),
            "{text}"
        );
    }

    #[test]
    fn syntax_error_is_one_line_with_position() {
        let (_, text) = load_err("[sip]\nudp = \n", "syntax", &[]);
        assert!(
            text.starts_with("config: invalid TOML in FILE:2:"),
            "{text}"
        );
    }

    #[test]
    fn bad_address() {
        assert_eq!(
            env_err(&[("VOICEGATE_SIP_UDP", "foo")]),
            r#"config: sip.udp: "foo" is not an address (expected ip:port)"#
        );
        assert_eq!(
            env_err(&[("VOICEGATE_SIP_PUBLIC_IP", "x")]),
            r#"config: sip.public_ip: "x" is not an IP address"#
        );
    }

    #[test]
    fn bad_port_range() {
        assert_eq!(
            env_err(&[
                ("VOICEGATE_RTP_PORT_MIN", "20000"),
                ("VOICEGATE_RTP_PORT_MAX", "10000")
            ]),
            "config: rtp.port_min (20000) must be below rtp.port_max (10000)"
        );
        assert_eq!(
            env_err(&[("VOICEGATE_RTP_PORT_MIN", "0")]),
            "config: rtp.port_min: must be above 0"
        );
    }

    #[test]
    fn unknown_codec() {
        assert_eq!(
            env_err(&[("VOICEGATE_RTP_CODECS", "PCMA,G729")]),
            r#"config: rtp.codecs: unknown codec "G729" (known: PCMA, PCMU, OPUS)"#
        );
        let err = env_err(&[("VOICEGATE_RTP_CODECS", "")]);
        assert!(err.contains("at least one codec"), "{err}");
    }

    #[test]
    fn codec_preference() {
        assert_eq!(Config::default().rtp.codec_preference, "offer");
        let c = Config::load(None, env(&[("VOICEGATE_RTP_CODEC_PREFERENCE", "ours")])).unwrap();
        assert_eq!(c.rtp.codec_preference, "ours");
        assert_eq!(
            env_err(&[("VOICEGATE_RTP_CODEC_PREFERENCE", "caller")]),
            r#"config: rtp.codec_preference: "caller" is not one of offer, ours"#
        );
    }

    #[test]
    fn other_validation() {
        assert_eq!(
            env_err(&[("VOICEGATE_SIP_TLS_CERT", "cert.pem")]),
            "config: sip.tls_cert and sip.tls_key must be given together"
        );
        let err = env_err(&[("VOICEGATE_SIP_MAX_MESSAGE_BYTES", "100")]);
        assert!(
            err.starts_with("config: sip.max_message_bytes: 100 is out of range"),
            "{err}"
        );
        assert_eq!(
            env_err(&[("VOICEGATE_LOG_LEVEL", " ")]),
            "config: log.level: must not be empty"
        );
        assert_eq!(
            env_err(&[("VOICEGATE_LOG_FORMAT", "logfmt")]),
            r#"config: log.format: "logfmt" is not one of text, json"#
        );
        let (err, _) = load_err("[log]\nformat = \"JSON\"\n", "log-format", &[]);
        assert_eq!(err.key(), Some("log.format"));
        let err = env_err(&[("VOICEGATE_TEST_NUMBERS_RINGING", "echo")]);
        assert!(err.contains("listed in both echo and ringing"), "{err}");

        let c = Config::load(
            None,
            env(&[
                ("VOICEGATE_SIP_TLS_CERT", "cert.pem"),
                ("VOICEGATE_SIP_TLS_KEY", "key.pem"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.sip.tls_files(),
            Some((Path::new("cert.pem"), Path::new("key.pem")))
        );
    }

    #[test]
    fn missing_file() {
        let err = Config::load(Some(Path::new("config/x.toml")), no_env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config: cannot read config/x.toml: No such file or directory"
        );
    }

    #[test]
    fn flows_load_from_the_file_and_are_checked() {
        let dir = std::env::temp_dir().join(format!("vg-flows-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("flows.toml");
        std::fs::write(&path, "[[flows]]\nname = \"bot\"\nurl = \"ws://127.0.0.1:9/x?sample-rate=16000\"\nnumbers = [\"+15550100\"]\n").unwrap();
        let config = Config::load(Some(&path), no_env).unwrap();
        assert_eq!(config.flows.len(), 1);
        assert_eq!(config.flows[0].protocol, "exotel");
        assert_eq!(config.flows[0].direction, "bidirectional");
        std::fs::write(
            &path,
            "[[flows]]\nname = \"bot\"\nurl = \"ws://h/\"\nprotocol = \"sip\"\n",
        )
        .unwrap();
        let err = Config::load(Some(&path), no_env).unwrap_err().to_string();
        assert!(err.contains("flows[0].protocol"), "{err}");
        std::fs::write(&path, "[[flows]]\nname = \"bot\"\nurl = \"http://h/\"\n").unwrap();
        let err = Config::load(Some(&path), no_env).unwrap_err().to_string();
        assert!(err.contains("flows[0].url"), "{err}");
        std::fs::write(
            &path,
            "[[flows]]\nname = \"bot\"\nurl = \"ws://h/\"\nnumbers = [\"echo\"]\n",
        )
        .unwrap();
        let err = Config::load(Some(&path), no_env).unwrap_err().to_string();
        assert!(err.contains("mapped twice"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
