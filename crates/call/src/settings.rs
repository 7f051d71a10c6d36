//! What a call needs to know, derived once from the config: codecs, timers, ringing, the
//! session timer, next-hop timeouts, the bot flows and the bridge's limits.

use std::net::IpAddr;
use std::time::Duration;

use voicegate_sip::sdp::{Codec, CodecPreference};
use voicegate_sip::transaction::Timers;

/// What every call reads.
#[derive(Clone, Debug)]
pub struct CallSettings {
    pub codecs: Vec<Codec>,
    /// Whose order picks the codec when we answer an offer.
    pub codec_preference: CodecPreference,
    pub ring_duration: Duration,
    /// How long a never-answered ringing call rings before 480.
    pub ring_timeout: Duration,
    pub public_ip: Option<IpAddr>,
    pub timers: Timers,
    pub latching: voicegate_rtp::latch::LatchPolicy,
    pub bridge: BridgeSettings,
    /// An answered call with no RTP for this long is ended.
    pub rtp_timeout: Duration,
    pub routing: RoutingSettings,
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

/// The ringback tone `routing.ringback` names ("eu" or "us").
pub fn ringback_tone(name: &str) -> voicegate_bridge::tone::Tone {
    match name {
        "us" => voicegate_bridge::tone::Tone::RingbackUs,
        _ => voicegate_bridge::tone::Tone::Ringback,
    }
}
