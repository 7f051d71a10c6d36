//! The session's main loop: caller RTP to the bot as it arrives (in order, through the arrival
//! buffer), the bot's audio out through the playout queue as paced RTP, with marks, `clear`, DTMF
//! and both sides' endings. One long-lived timer drives the 20 ms pacing, the arrival buffer's
//! waits and the session cap.

use super::*;

/// Bot requests held until the caller has heard what the bot queued before them.
#[derive(Default)]
pub(super) struct Held {
    /// A `transfer`: reported to the call once its audio has played.
    pub(super) transfer: Option<AfterPlayout<String>>,
    /// The end of the bot step: it closed the socket, or sent `hangup`.
    pub(super) end: Option<AfterPlayout<SessionEnd>>,
}

/// One session's rate-limited warnings, one limiter per kind.
pub(super) struct Warnings {
    pub(super) malformed: WarnLimiter,
    pub(super) over_budget: WarnLimiter,
    pub(super) playout_full: WarnLimiter,
    pub(super) marks_full: WarnLimiter,
}

impl Warnings {
    /// Whether a bot message of `len` bytes fits `budget`; one that does not is counted and
    /// warned about (rate-limited), and dropped unread by the caller.
    pub(super) fn within_budget(
        &mut self,
        budget: &mut BotBudget,
        len: usize,
        now: Instant,
        report: &mut SessionReport,
    ) -> bool {
        if budget.admit(len, now) {
            return true;
        }
        report.bot_frames_over_budget += 1;
        if let Some(suppressed) = self.over_budget.allow(now) {
            warn!(suppressed, "bot over its message budget: message dropped");
        }
        false
    }

    /// The text of a bot message the session reads: from a bot that speaks (bidirectional)
    /// and within its budget. Anything else is dropped (None).
    pub(super) fn readable<'m>(
        &mut self,
        message: &'m Option<Result<Message, WsProtocolError>>,
        bidirectional: bool,
        budget: &mut BotBudget,
        now: Instant,
        report: &mut SessionReport,
    ) -> Option<&'m str> {
        let Some(Ok(Message::Text(text))) = message else {
            return None;
        };
        (bidirectional && self.within_budget(budget, text.len(), now, report))
            .then_some(text.as_str())
    }

    /// A bot frame that does not parse: counted, warned about (rate-limited), ignored.
    pub(super) fn malformed_frame(
        &mut self,
        error: &dyn std::fmt::Display,
        now: Instant,
        report: &mut SessionReport,
    ) {
        report.bot_frames_invalid += 1;
        if let Some(suppressed) = self.malformed.allow(now) {
            warn!(error = %error, suppressed, "malformed bot frame ignored");
        }
    }

    pub(super) fn new() -> Self {
        Warnings {
            malformed: WarnLimiter::new(WARN_INTERVAL),
            over_budget: WarnLimiter::new(WARN_INTERVAL),
            playout_full: WarnLimiter::new(WARN_INTERVAL),
            marks_full: WarnLimiter::new(WARN_INTERVAL),
        }
    }
}

/// A media loop's one timer. Arming it for the deadline it already has costs nothing, so a loop
/// pass (an RTP packet, a bot message) does not touch the timer wheel.
pub(super) struct Timer {
    pub(super) sleep: Pin<Box<Sleep>>,
}

impl Timer {
    pub(super) fn new(at: Instant) -> Self {
        Timer {
            sleep: Box::pin(sleep_until(at)),
        }
    }

    pub(super) fn arm(&mut self, at: Instant) {
        if self.sleep.deadline() != at {
            self.sleep.as_mut().reset(at);
        }
    }

    pub(super) async fn wait(&mut self) {
        self.sleep.as_mut().await;
    }
}

/// What the bidirectional loop's timer is armed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Due {
    /// The pacer's next 20 ms tick: media both ways, RTCP, the RTP and bot-write timeouts.
    Frame,
    /// The session cap (`max_session`).
    SessionEnd,
}

/// The earliest of the bidirectional loop's deadlines; the session cap wins a tie.
pub(super) fn next_due(frame: Instant, session_end: Instant) -> (Instant, Due) {
    if session_end <= frame {
        (session_end, Due::SessionEnd)
    } else {
        (frame, Due::Frame)
    }
}

/// Bot → caller: the playout queue's next 20 ms (or silence, when configured) as one RTP packet.
async fn bot_to_caller(
    playout: &mut PlayoutQueue,
    pipeline: &mut Pipeline,
    leg: &mut MediaLeg,
    bot: &BotSettings,
    now: Instant,
) {
    let send = match playout.next_frame(&mut pipeline.bot_frame) {
        Frame::Audio {
            talkspurt_start, ..
        } => Some(talkspurt_start),
        Frame::Silence => bot.silence_when_idle.then_some(false),
    };
    if let (Some(marker), Some(_)) = (send, leg.state().rtp_target()) {
        if pipeline.encode_frame(marker).is_ok() {
            let payload_len = pipeline.packet.len() - 12;
            leg.send_rtp(
                &pipeline.packet,
                pipeline.last_timestamp(),
                payload_len,
                now,
            )
            .await;
        }
    }
}

/// Caller → bot: every frame the arrival buffer releases at `now`, decoded, cut into the
/// dialect's chunks and sent.
fn caller_to_bot(
    arrival: &mut ArrivalBuffer,
    now: Instant,
    pipeline: &mut Pipeline,
    decoded: &mut Vec<i16>,
    chunker: &mut Chunker,
    link: &mut Link,
    report: &mut SessionReport,
) {
    while let Some(release) = arrival.pop(now) {
        match release {
            Release::Frame { payload, .. } => pipeline.decode(Some(payload), decoded),
            Release::Missing { .. } => {
                report.concealed_frames += 1;
                pipeline.decode(None, decoded);
            }
            Release::Silence => {
                decoded.clear();
                decoded.resize(pipeline.bot_frame.len(), 0);
            }
        }
        chunker.push(decoded);
        while let Some(chunk) = chunker.take_chunk() {
            if !link.open {
                break;
            }
            link.encoder
                .media(&chunk, chunk.timestamp_ms, &mut link.out);
            report.media_messages_sent += 1;
            if !link.send() {
                break;
            }
        }
    }
}

/// The caller's audio up to now before the stream ends: silence for the intervals no packet
/// came for yet, so the bot gets the stream's whole length.
fn flush_caller_to_bot(
    arrival: &mut ArrivalBuffer,
    pipeline: &mut Pipeline,
    decoded: &mut Vec<i16>,
    chunker: &mut Chunker,
    link: &mut Link,
    report: &mut SessionReport,
) {
    arrival.flush();
    caller_to_bot(
        arrival,
        Instant::now(),
        pipeline,
        decoded,
        chunker,
        link,
        report,
    );
}

/// The bidirectional part of a session, on the caller's sockets (given back with how it ended).
pub(super) async fn session(
    sockets: LegSockets,
    media: &CallMedia,
    bot: &BotSettings,
    control: &mut mpsc::Receiver<Control>,
    events: &mpsc::Sender<BridgeEvent>,
    report: &mut SessionReport,
) -> (Exit, LegSockets) {
    // Connect while the caller waits; a caller who hangs up meanwhile ends it all.
    let socket = tokio::select! {
        result = ws::connect(&bot.url, &bot.client) => match result {
            Ok(socket) => socket,
            Err(e) => {
                warn!(url = %bot.url, error = %e, "bot unreachable");
                return (Exit::End(SessionEnd::BotUnreachable(e.to_string())), sockets);
            }
        },
        end = wait_for_end(control) => return (Exit::End(end), sockets),
    };
    let bot_rate = match bot.protocol {
        Protocol::Twilio => 8000,
        Protocol::Exotel => bot.url.sample_rate(),
    };
    let mut pipeline = match Pipeline::new(media, bot_rate) {
        Ok(p) => p,
        Err(e) => {
            let end = SessionEnd::BotClosed(format!("media setup failed: {e}"));
            return (Exit::End(end), sockets);
        }
    };
    let mut custom_parameters = bot.url.custom_parameters().to_vec();
    custom_parameters.extend(bot.extra_parameters.iter().cloned());
    let encoder = Encoder::new(
        bot.protocol,
        StreamInfo {
            stream_sid: format!("{:032x}", rand::random::<u128>()),
            call_sid: bot.call_sid.clone(),
            account_sid: bot.account_sid.clone(),
            from: bot.from.clone(),
            to: bot.to.clone(),
            custom_parameters,
            sample_rate: bot_rate,
            bidirectional: bot.bidirectional,
        },
    );
    let mut link = Link::new(socket, encoder);
    link.encoder.connected(&mut link.out);
    if !link.send() {
        let end = SessionEnd::BotClosed("socket closed before start".into());
        return (Exit::End(end), sockets);
    }
    link.encoder.start(&mut link.out);
    if !link.send() {
        let end = SessionEnd::BotClosed("socket closed before start".into());
        return (Exit::End(end), sockets);
    }

    let chunk = match bot.protocol {
        Protocol::Twilio => FRAME,
        Protocol::Exotel => bot.media_interval,
    };
    let mut chunker = Chunker::new(bot_rate, chunk);
    let mut playout = PlayoutQueue::new(bot_rate, bot.playout_max);
    let clock = media.codec.clock_rate();
    let mut decoded: Vec<i16> = Vec::with_capacity(pipeline.bot_frame.len() * 2);
    let mut rtp_in = vec![0u8; RECV_BYTES];
    // Grows to the largest message the bot sends (a typical one is 20-100 ms).
    let mut bot_pcm: Vec<i16> = Vec::with_capacity(bot_rate as usize / 5);
    let started = Instant::now();
    let deadline = started + bot.max_session;
    // The bot has no playout clock: the caller's audio goes to it as it arrives, in order.
    let mut arrival = ArrivalBuffer::new(
        ArrivalConfig {
            clock_rate: clock,
            frame_samples: clock / 50,
            // G.711 up to 60 ms a packet; an Opus packet is at most 1275 bytes a frame.
            max_payload: if clock == 8000 { 480 } else { 1500 },
            ..ArrivalConfig::default()
        },
        started,
    );
    let mut pacer = Pacer::new(started + FRAME, FRAME);
    let mut peer_ssrc = None;
    let cname = format!(
        "voicegate@{}",
        sockets
            .local_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default()
    );
    // The caller's RTCP is on the next port; what comes to the RTP port is taken as RTP.
    let mut leg = MediaLeg::new(sockets, media.leg_setup(cname), started);
    let mut held = Held::default();
    let mut budget = BotBudget::new(bot.max_messages_per_sec, bot.max_bytes_per_sec, started);
    let mut warnings = Warnings::new();
    let mut timer = Timer::new(pacer.next_deadline());

    let stage = loop {
        let media_due = pacer.next_deadline().min(arrival.next_deadline());
        let (wake_at, due) = next_due(media_due, deadline);
        timer.arm(wake_at);
        tokio::select! {
            received = leg.recv(&mut rtp_in) => {
                let header = received.header;
                if peer_ssrc != Some(header.ssrc) {
                    peer_ssrc = Some(header.ssrc);
                    arrival.set_ssrc(header.ssrc);
                }
                if Some(header.payload_type) == media.telephone_event {
                    if let Some(event) = received.dtmf {
                        report.dtmf_events += 1;
                        let _ = events.try_send(BridgeEvent::Dtmf(event));
                        if bot.bidirectional && link.open {
                            link.encoder.dtmf(event.digit, event.duration_ms, &mut link.out);
                            let _ = link.send();
                        }
                    }
                } else if header.payload_type == media.payload_type {
                    let payload = header.payload(&rtp_in[..received.len]);
                    arrival.push(header.seq, header.timestamp, payload, received.at);
                    caller_to_bot(&mut arrival, received.at, &mut pipeline, &mut decoded, &mut chunker, &mut link, report);
                }
            }
            message = link.from_bot.next(), if link.open => {
                if let Some(why) = bot_left(&message) {
                    match &message {
                        Some(Ok(Message::Close(_))) => link.answer_close().await,
                        // tungstenite read no further than the limit: the bot hears why.
                        Some(Err(WsProtocolError::Capacity(_))) => {
                            link.close(CloseCode::Size, "message too big").await;
                        }
                        _ => {}
                    }
                    link.open = false;
                    // The bot's last words (Exotel's pattern: speak, then disconnect) still play.
                    if held.end.is_none() {
                        held.end = Some(playout.after_playout(SessionEnd::BotClosed(why), Instant::now(), bot.final_playout_max));
                    }
                    continue;
                }
                let now = Instant::now();
                let Some(text) = warnings.readable(&message, bot.bidirectional, &mut budget, now, report) else { continue };
                match dialect::parse_into(bot.protocol, text, &mut bot_pcm) {
                    Ok(dialect::BotMessageRef::Media) => {
                        report.bot_media_messages += 1;
                        // Silence went out since the bot's last audio: it starts talking again.
                        let starts_talking = !playout.in_talkspurt();
                        let pushed = playout.push_audio(&bot_pcm);
                        if starts_talking && !playout.is_empty() && bot.bidirectional {
                            // Its first frame goes out now rather than at the next tick (up to
                            // 20 ms later), and the frames after it every 20 ms from here. The
                            // frame is marked as a talkspurt start, so the caller's jitter buffer
                            // takes the new timing.
                            bot_to_caller(&mut playout, &mut pipeline, &mut leg, bot, now).await;
                            pacer = Pacer::new(now + FRAME, FRAME);
                        }
                        if pushed.dropped > 0 {
                            report.playout_samples_dropped += pushed.dropped as u64;
                            if let Some(suppressed) = warnings.playout_full.allow(now) {
                                warn!(dropped = pushed.dropped, suppressed, "playout queue full: bot audio dropped");
                            }
                        }
                    }
                    Ok(dialect::BotMessageRef::Mark(name)) if name.len() > MAX_MARK_NAME_BYTES => {
                        report.bot_frames_invalid += 1;
                        if let Some(suppressed) = warnings.malformed.allow(now) {
                            warn!(bytes = name.len(), suppressed, "mark name over {MAX_MARK_NAME_BYTES} bytes: frame ignored");
                        }
                    }
                    Ok(dialect::BotMessageRef::Mark(name)) => {
                        if !playout.push_mark(name) {
                            if let Some(suppressed) = warnings.marks_full.allow(now) {
                                warn!(suppressed, "too many pending marks: mark dropped");
                            }
                        }
                    }
                    Ok(dialect::BotMessageRef::Clear) => {
                        report.clears += 1;
                        playout.clear();
                    }
                    Ok(dialect::BotMessageRef::Hangup) => {
                        if held.end.is_none() {
                            held.end = Some(playout.after_playout(SessionEnd::BotHangup, Instant::now(), bot.final_playout_max));
                        }
                    }
                    Ok(dialect::BotMessageRef::Transfer(to)) => {
                        info!(to, "bot asked for a transfer");
                        if held.transfer.is_none() {
                            held.transfer = Some(playout.after_playout(to, Instant::now(), bot.final_playout_max));
                        } else {
                            debug!("second transfer while one is pending ignored");
                        }
                    }
                    Ok(dialect::BotMessageRef::Other(event)) => debug!(event, "unknown bot event ignored"),
                    Err(e) => warnings.malformed_frame(&e, now, report),
                }
                // Marks due now (an empty queue, or a clear) go back at once.
                link.echo_due_marks(&mut playout, report);
            }
            () = timer.wait() => {
                if due == Due::SessionEnd {
                    flush_caller_to_bot(&mut arrival, &mut pipeline, &mut decoded, &mut chunker, &mut link, report);
                    link.finish_stream(&mut chunker, report, StopReason::Stopped).await;
                    break Stage::End(SessionEnd::MaxDuration);
                }
                let now = Instant::now();
                leg.send_report_if_due(now).await;
                if leg.state_mut().rtp_timed_out(now) {
                    flush_caller_to_bot(&mut arrival, &mut pipeline, &mut decoded, &mut chunker, &mut link, report);
                    link.finish_stream(&mut chunker, report, StopReason::Stopped).await;
                    break Stage::End(SessionEnd::RtpTimeout);
                }
                if let Some(stalled) = link.stalled_for(now).filter(|s| *s >= bot.write_timeout) {
                    warn!(secs = stalled.as_secs(), "bot stopped reading: ending its step");
                    link.open = false;
                    break Stage::End(SessionEnd::BotClosed(format!("bot read nothing for {} s", stalled.as_secs())));
                }
                caller_to_bot(&mut arrival, now, &mut pipeline, &mut decoded, &mut chunker, &mut link, report);
                for _ in 0..pacer.tick(now) {
                    if bot.bidirectional {
                        bot_to_caller(&mut playout, &mut pipeline, &mut leg, bot, now).await;
                        link.echo_due_marks(&mut playout, report);
                    }
                }
            }
            command = control.recv() => match command {
                Some(Control::Dtmf { digit, duration_ms }) => {
                    report.dtmf_events += 1;
                    if bot.bidirectional && link.open {
                        link.encoder.dtmf(digit, duration_ms, &mut link.out);
                        let _ = link.send();
                    }
                }
                // Resumed: the timeout counts from now.
                Some(Control::ExpectRtp(expect)) => leg.state_mut().set_expect_rtp(expect, Instant::now()),
                Some(Control::CallerHungUp) | None => {
                    flush_caller_to_bot(&mut arrival, &mut pipeline, &mut decoded, &mut chunker, &mut link, report);
                    link.finish_stream(&mut chunker, report, StopReason::CallEnded).await;
                    break Stage::End(SessionEnd::CallerHungUp);
                }
                Some(Control::Stop) => {
                    flush_caller_to_bot(&mut arrival, &mut pipeline, &mut decoded, &mut chunker, &mut link, report);
                    link.finish_stream(&mut chunker, report, StopReason::Stopped).await;
                    break Stage::End(SessionEnd::Stopped);
                }
                Some(Control::HandOff { tap, ports }) => break Stage::HandOff(tap, ports),
            },
        }
        // Held bot requests whose audio the caller has now heard (or whose time is up).
        if held.transfer.is_some() || held.end.is_some() {
            let now = Instant::now();
            if held
                .transfer
                .as_ref()
                .is_some_and(|t| playout.is_due(t, now))
            {
                if let Some(transfer) = held.transfer.take() {
                    // Never wait on the call here: it may be waiting on this session.
                    if events
                        .try_send(BridgeEvent::Transfer {
                            to: transfer.action,
                        })
                        .is_err()
                    {
                        warn!("transfer request lost: the call's event queue is full");
                    }
                }
            }
            if held.end.as_ref().is_some_and(|e| playout.is_due(e, now)) {
                if let Some(end) = held.end.take() {
                    // A bot that hung up still gets `stop` and our Close; one that left, nothing.
                    flush_caller_to_bot(
                        &mut arrival,
                        &mut pipeline,
                        &mut decoded,
                        &mut chunker,
                        &mut link,
                        report,
                    );
                    link.finish_stream(&mut chunker, report, StopReason::Stopped)
                        .await;
                    break Stage::End(end.action);
                }
            }
        }
    };
    report.playout_samples_dropped = playout.stats().samples_dropped;
    report.frames_to_bot_dropped = link.dropped;
    // When the call moves on (an agent, ringback) the caller's media goes on: no RTCP BYE then.
    let media_goes_on = matches!(stage, Stage::HandOff(..) | Stage::End(SessionEnd::Stopped));
    if !media_goes_on {
        leg.send_bye().await;
    }
    report.rtp = leg.state().summary();
    let sockets = leg.into_sockets();
    let (tap, ports) = match stage {
        Stage::End(end) => return (Exit::End(end), sockets),
        Stage::HandOff(tap, ports) => (tap, ports),
    };
    // The queued audio will never play: its marks come back now, as after `clear`.
    playout.clear();
    link.echo_due_marks(&mut playout, report);
    // The caller's audio not yet sent closes the caller-only part of the stream.
    link.flush_caller_audio(&mut chunker, report);
    let hand_off = Exit::HandOff(Box::new(HandOff {
        tap,
        ports,
        link,
        timeline: Timeline {
            started,
            deadline,
            bot_rate,
            chunk,
            sent_ms: chunker.timestamp_ms(),
        },
    }));
    (hand_off, sockets)
}
