//! Listen-only after a hand-off (agent assist): both parties of the relayed call streamed to the
//! bot from tap frames, until the call ends or the bot does.

use super::*;

/// One party's audio on its way to the bot after a hand-off.
pub(super) struct TrackFeed {
    pub(super) track: Track,
    /// 8 kHz tap frames to the bot's rate.
    pub(super) resampler: Resampler,
    /// One frame at the bot's rate.
    pub(super) pcm: Vec<i16>,
    pub(super) chunker: Chunker,
    /// Stream time of this track's first sample, set by its first frame.
    pub(super) origin_ms: Option<u64>,
}

impl TrackFeed {
    pub(super) fn new(track: Track, timeline: &Timeline) -> Result<Self, String> {
        let resampler = Resampler::new(8000, timeline.bot_rate, TAP_FRAME_SAMPLES)
            .map_err(|e| e.to_string())?;
        let pcm = vec![0; resampler.output_frame_len()];
        let chunker =
            Chunker::try_new(timeline.bot_rate, timeline.chunk).map_err(|e| e.to_string())?;
        Ok(TrackFeed {
            track,
            resampler,
            pcm,
            chunker,
            origin_ms: None,
        })
    }

    /// Sends the complete chunks (all that is left when `flush`); false when the bot is gone.
    pub(super) async fn send_chunks(
        &mut self,
        link: &mut Link,
        report: &mut SessionReport,
        flush: bool,
    ) -> bool {
        let origin = self.origin_ms.unwrap_or(0);
        loop {
            let chunk = if flush {
                self.chunker.flush()
            } else {
                self.chunker.take_chunk()
            };
            let Some(chunk) = chunk else { return true };
            link.encoder.track_media(
                self.track,
                &chunk,
                origin + chunk.timestamp_ms,
                &mut link.out,
            );
            report.media_messages_sent += 1;
            // A full queue drops the chunk (the bot is slow); only a gone socket stops here.
            if !link.send() && !link.open {
                return false;
            }
        }
    }
}

/// After a hand-off: both parties of the relayed call from `tap` to the bot, each as its own
/// `track` chunked like the caller's audio before; the bot's media is counted and ignored.
pub(super) async fn listen_only(
    link: &mut Link,
    mut tap: mpsc::Receiver<TapFrame>,
    bot: &BotSettings,
    timeline: &Timeline,
    control: &mut mpsc::Receiver<Control>,
    report: &mut SessionReport,
) -> SessionEnd {
    let feeds = TrackFeed::new(Track::Inbound, timeline)
        .and_then(|inbound| Ok([inbound, TrackFeed::new(Track::Outbound, timeline)?]));
    let mut feeds = match feeds {
        Ok(feeds) => feeds,
        Err(e) => {
            link.stop(StopReason::Stopped).await;
            return SessionEnd::BotClosed(format!("media setup failed: {e}"));
        }
    };
    let mut bot_pcm: Vec<i16> = Vec::new();
    let mut budget = BotBudget::new(
        bot.max_messages_per_sec,
        bot.max_bytes_per_sec,
        Instant::now(),
    );
    let mut warnings = Warnings::new();
    let mut session_end = Timer::new(timeline.deadline);
    loop {
        tokio::select! {
            frame = tap.recv() => {
                let Some(frame) = frame else {
                    // The relay ended. The call may have said just before that the caller hung
                    // up; otherwise the stream just stops.
                    let mut caller_left = false;
                    while let Ok(command) = control.try_recv() {
                        caller_left |= matches!(command, Control::CallerHungUp);
                    }
                    for feed in &mut feeds {
                        if !feed.send_chunks(link, report, true).await {
                            break;
                        }
                    }
                    return if caller_left {
                        link.stop(StopReason::CallEnded).await;
                        SessionEnd::CallerHungUp
                    } else {
                        link.stop(StopReason::Stopped).await;
                        SessionEnd::Stopped
                    };
                };
                let feed = match frame.track {
                    Track::Inbound => &mut feeds[0],
                    Track::Outbound => &mut feeds[1],
                };
                if feed.origin_ms.is_none() {
                    // A track starts when its first frame comes, but never before the caller's
                    // audio already sent: both tracks stay on the stream's clock.
                    let now_ms = u64::try_from(timeline.started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    feed.origin_ms = Some(now_ms.max(timeline.sent_ms));
                }
                let Ok(n) = feed.resampler.process(&frame.samples, &mut feed.pcm) else { continue };
                feed.chunker.push(&feed.pcm[..n]);
                if !feed.send_chunks(link, report, false).await {
                    return SessionEnd::BotClosed("socket closed".into());
                }
                if let Some(stalled) = link.stalled_for(Instant::now()).filter(|s| *s >= bot.write_timeout) {
                    warn!(secs = stalled.as_secs(), "listening bot stopped reading: ending its stream");
                    link.open = false;
                    return SessionEnd::BotClosed(format!("bot read nothing for {} s", stalled.as_secs()));
                }
            }
            message = link.from_bot.next() => {
                if let Some(why) = bot_left(&message) {
                    if matches!(message, Some(Ok(Message::Close(_)))) {
                        link.answer_close().await;
                    }
                    return SessionEnd::BotClosed(why);
                }
                let now = Instant::now();
                let Some(text) = warnings.readable(&message, bot.bidirectional, &mut budget, now, report) else { continue };
                match dialect::parse_into(bot.protocol, text, &mut bot_pcm) {
                    Ok(dialect::BotMessageRef::Media) => report.bot_media_ignored += 1,
                    Ok(dialect::BotMessageRef::Mark(name)) => {
                        // Nothing is queued, so a mark is due at once.
                        report.marks_echoed += 1;
                        link.encoder.mark(&name, &mut link.out);
                        let _ = link.send();
                    }
                    Ok(dialect::BotMessageRef::Clear) => report.clears += 1,
                    // The bot only listens now: the call is the caller's and the agent's.
                    Ok(message @ (dialect::BotMessageRef::Hangup | dialect::BotMessageRef::Transfer(_))) => {
                        debug!(?message, "bot request after the hand-off ignored");
                    }
                    Ok(dialect::BotMessageRef::Other(event)) => debug!(event, "unknown bot event ignored"),
                    Err(e) => warnings.malformed_frame(&e, now, report),
                }
            }
            () = session_end.wait() => {
                link.stop(StopReason::Stopped).await;
                return SessionEnd::MaxDuration;
            }
            command = control.recv() => match command {
                Some(Control::Dtmf { digit, duration_ms }) => {
                    report.dtmf_events += 1;
                    if bot.bidirectional {
                        link.encoder.dtmf(digit, duration_ms, &mut link.out);
                        let _ = link.send();
                    }
                }
                Some(Control::ExpectRtp(_)) => {}
                // Already handed off: dropping the reply tells the caller so.
                Some(Control::HandOff { .. }) => {}
                Some(Control::Stop) => {
                    link.stop(StopReason::Stopped).await;
                    return SessionEnd::Stopped;
                }
                Some(Control::CallerHungUp) | None => {
                    link.stop(StopReason::CallEnded).await;
                    return SessionEnd::CallerHungUp;
                }
            },
        }
    }
}
