//! Writing a call's record ([`CallRecord`]): the `voicegate::cdr` log line, one per call,
//! for the call tasks, a call handed over after a transfer, and a call closed out after a
//! crash. (What goes into a call's record is `Call::record`, in `call.rs`.)

use tracing::info;
use voicegate_call::CallRecord;

/// The record as one log line (numbers stay numbers in the JSON log).
pub(crate) fn log(r: &CallRecord) {
    info!(
        target: "voicegate::cdr",
        call_id = r.call_id,
        call_sid = r.call_sid,
        number = r.number,
        from = r.from,
        remote = r.remote,
        transport = r.transport,
        trunk = r.trunk,
        status = r.status,
        codec = r.codec,
        setup_ms = r.setup_ms,
        duration_ms = r.duration_ms,
        rtp_in = r.rtp_in,
        rtp_out = r.rtp_out,
        rtp_lost = r.rtp_lost,
        rtp_duplicates = r.rtp_duplicates,
        jitter_ms = format_args!("{:.1}", r.jitter_ms),
        rtt_ms = format_args!("{:.1}", r.rtt_ms),
        mos = format_args!("{:.2}", r.mos),
        dtmf = r.dtmf,
        bot_media_sent = r.bot_media_sent,
        bot_media_received = r.bot_media_received,
        bot_marks = r.bot_marks,
        bot_clears = r.bot_clears,
        bot_frames_invalid = r.bot_frames_invalid,
        bot_media_ignored = r.bot_media_ignored,
        bot_over_budget = r.bot_over_budget,
        bot_frames_dropped = r.bot_frames_dropped,
        direction = r.direction,
        started_at_ms = r.started_at_ms,
        peer = r.peer,
        peer_attempts = r.peer_attempts,
        peer_last_failure = r.peer_last_failure,
        peer_codec = r.peer_codec,
        transcoding = r.transcoding,
        peer_rtp_in = r.peer_rtp_in,
        peer_rtp_out = r.peer_rtp_out,
        escalated_to = r.escalated_to,
        end = r.end,
        "call ended"
    );
}
