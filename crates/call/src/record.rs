//! The record of one call, whatever its outcome: who called whom, how it was answered and
//! ended, and what its media did. Plain data, filled in by the call when it ends; written as
//! the `voicegate::cdr` log line (and serialised the same way for whatever stores it).

use serde::Serialize;
use voicegate_bridge::session::SessionReport;
use voicegate_rtp::stats::StatsSummary;

/// One call's record. The field names are the log line's keys.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CallRecord {
    /// The caller's Call-ID.
    pub call_id: String,
    /// Our id for the call (Exotel's CallSid), the one bots and the API see.
    pub call_sid: String,
    /// The dialled number.
    pub number: String,
    /// The caller's From header.
    pub from: String,
    /// The caller's address and transport.
    pub remote: String,
    pub transport: String,
    /// The trunk that admitted the call (`-` if none).
    pub trunk: String,
    /// `local`, `inbound`, `outbound`, or `transferred` for a call handed over.
    pub direction: String,
    /// When the INVITE came, in Unix milliseconds.
    pub started_at_ms: i64,
    /// Our final answer to the caller's INVITE (0 if none was sent).
    pub status: u16,
    /// The caller's codec, `-` if none was negotiated.
    pub codec: String,
    pub setup_ms: u64,
    /// From the answer to the end (0 if never answered).
    pub duration_ms: u64,
    /// The caller's RTP: relayed, or through the bot, or echoed.
    pub rtp_in: u64,
    pub rtp_out: u64,
    pub rtp_lost: u64,
    pub rtp_duplicates: u64,
    pub jitter_ms: f64,
    pub rtt_ms: f64,
    pub mos: f64,
    /// The caller's key presses, in order.
    pub dtmf: String,
    pub bot_media_sent: u64,
    pub bot_media_received: u64,
    pub bot_marks: u64,
    pub bot_clears: u64,
    pub bot_frames_invalid: u64,
    pub bot_media_ignored: u64,
    pub bot_over_budget: u64,
    pub bot_frames_dropped: u64,
    /// Who the other leg reached (`-` if none).
    pub peer: String,
    pub peer_attempts: u32,
    /// The last refusal of a next hop (0 if none).
    pub peer_last_failure: u16,
    pub peer_codec: String,
    pub transcoding: bool,
    pub peer_rtp_in: u64,
    pub peer_rtp_out: u64,
    /// The agent or transfer target the call went to (`-` if none).
    pub escalated_to: String,
    /// Who hung up and why.
    pub end: String,
}

/// How the record shows a value that is missing.
pub const NONE: &str = "-";

impl CallRecord {
    /// A record with the text fields that may stay unknown shown as [`NONE`].
    pub fn new(call_id: &str, number: &str) -> Self {
        CallRecord {
            call_id: call_id.to_string(),
            number: number.to_string(),
            trunk: NONE.into(),
            codec: NONE.into(),
            peer: NONE.into(),
            peer_codec: NONE.into(),
            escalated_to: NONE.into(),
            ..CallRecord::default()
        }
    }

    /// The caller's RTP figures.
    pub fn fill_rtp(&mut self, rtp: &StatsSummary) {
        self.rtp_in = rtp.packets_in;
        self.rtp_out = rtp.packets_out;
        self.rtp_lost = rtp.lost;
        self.rtp_duplicates = rtp.duplicates;
        self.jitter_ms = rtp.jitter_ms;
        self.rtt_ms = rtp.rtt_ms.unwrap_or(0.0);
        self.mos = rtp.mos;
    }

    /// The bot session's figures.
    pub fn fill_bot(&mut self, bot: &SessionReport) {
        self.bot_media_sent = bot.media_messages_sent;
        self.bot_media_received = bot.bot_media_messages;
        self.bot_marks = bot.marks_echoed;
        self.bot_clears = bot.clears;
        self.bot_frames_invalid = bot.bot_frames_invalid;
        self.bot_media_ignored = bot.bot_media_ignored;
        self.bot_over_budget = bot.bot_frames_over_budget;
        self.bot_frames_dropped = bot.frames_to_bot_dropped;
    }
}
