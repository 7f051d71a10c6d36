//! `[bridge]`: the bot bridge's media interval, limits on bots and playout.

use super::*;

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

/// A bot's last words may hold the call this long at most.
pub(super) const MAX_FINAL_PLAYOUT_SECS: u64 = 300;

impl BridgeConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
