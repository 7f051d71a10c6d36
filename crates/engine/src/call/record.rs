//! Writing a call's record ([`CallRecord`]): the `voicegate::cdr` log line, one per call,
//! for the call tasks and for a call handed over after a transfer.

use tokio::time::Instant;
use tracing::info;
use voicegate_bridge::session::SessionReport;
use voicegate_call::CallRecord;
use voicegate_rtp::stats::StatsSummary;

use super::env::CallEnv;
use super::Call;

impl<E: CallEnv> Call<E> {
    /// The call's record, whatever its outcome; the trunk's call slot is freed.
    pub(super) fn record(&mut self) {
        self.recorded = true;
        let trunk = self.admitted_trunk.take();
        self.env.call_ended(&self.call_sid, trunk.as_deref());
        let now = self.ended_at.unwrap_or_else(Instant::now);
        let media = self.media_record.report.clone().unwrap_or_default();
        let bot = self.media_record.bot.clone().unwrap_or_default();
        let relay = self.media_record.relay.clone().unwrap_or_default();
        // The caller's RTP: relayed, or through the bot, or echoed.
        let rtp = if self.media_record.relay.is_some() {
            &relay.a
        } else if self.media_record.bot.is_some() {
            &bot.rtp
        } else {
            &media.rtp
        };
        let peer = self.peer.as_ref();
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        let source = self.caller.source();
        let mut r = CallRecord::new(self.caller.call_id(), &self.number);
        r.call_sid = self.call_sid.clone();
        r.from = self
            .caller
            .invite()
            .headers
            .get("From")
            .unwrap_or_default()
            .to_string();
        r.remote = source.remote.to_string();
        r.transport = source.transport.as_via().to_string();
        r.direction = self.direction.to_string();
        if let Some(trunk) = trunk {
            r.trunk = trunk;
        }
        r.started_at_ms = crate::clock::unix_millis() - ms(self.started.elapsed()) as i64;
        r.status = self.caller.final_status();
        if let Some(codec) = self.media_record.codec {
            r.codec = codec.to_string();
        }
        r.setup_ms = self.answered_at.map_or(0, |a| ms(a - self.started));
        r.duration_ms = self.answered_at.map_or(0, |a| ms(now - a));
        fill_rtp(&mut r, rtp);
        r.dtmf = self.media_record.digits.clone();
        fill_bot(&mut r, &bot);
        if let Some(label) = peer
            .and_then(|p| p.answered_by.clone())
            .or(self.media_record.peer_label.clone())
        {
            r.peer = label;
        }
        r.peer_attempts = peer.map_or(0, |p| p.attempts);
        r.peer_last_failure = peer.and_then(|p| p.last_failure()).map_or(0, |f| f.status);
        if let Some(codec) = self.media_record.peer_codec {
            r.peer_codec = codec.to_string();
        }
        r.transcoding = self.media_record.transcoding;
        r.peer_rtp_in = relay.b.packets_in;
        r.peer_rtp_out = relay.b.packets_out;
        if let Some(to) = &self.media_record.escalated_to {
            r.escalated_to = to.clone();
        }
        r.end = self.end_reason.clone();
        log(&r);
    }
}

/// The caller's RTP figures.
pub(super) fn fill_rtp(record: &mut CallRecord, rtp: &StatsSummary) {
    record.rtp_in = rtp.packets_in;
    record.rtp_out = rtp.packets_out;
    record.rtp_lost = rtp.lost;
    record.rtp_duplicates = rtp.duplicates;
    record.jitter_ms = rtp.jitter_ms;
    record.rtt_ms = rtp.rtt_ms.unwrap_or(0.0);
    record.mos = rtp.mos;
}

/// The bot session's figures.
pub(super) fn fill_bot(record: &mut CallRecord, bot: &SessionReport) {
    record.bot_media_sent = bot.media_messages_sent;
    record.bot_media_received = bot.bot_media_messages;
    record.bot_marks = bot.marks_echoed;
    record.bot_clears = bot.clears;
    record.bot_frames_invalid = bot.bot_frames_invalid;
    record.bot_media_ignored = bot.bot_media_ignored;
    record.bot_over_budget = bot.bot_frames_over_budget;
    record.bot_frames_dropped = bot.frames_to_bot_dropped;
}

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
