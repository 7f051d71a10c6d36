//! `[[flows]]`: voice bots reached over WebSocket, and the numbers that go to them.

use super::*;

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
