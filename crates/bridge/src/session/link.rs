//! The WebSocket link to the bot: messages go through a bounded queue to a writer task, so the
//! media loop never waits on the bot; what does not fit is dropped and counted. A reader task
//! hands the bot's messages over a queue too: polling the socket itself from the media loop
//! cost tungstenite a read attempt (and a zeroed read buffer) on every RTP packet and tick.

use super::*;

/// What the session hands the task that writes to the bot.
pub(super) enum Outgoing {
    Frame(Message),
    /// Write what tungstenite queued by itself: the answer to the bot's Close.
    Flush,
}

/// Writes the session's frames to the bot, so the session never waits on a bot's socket. Ends
/// after our Close or the flush of the answer to the bot's, or when the session drops its end.
pub(super) async fn write_to_bot(
    mut sink: SplitSink<BotSocket, Message>,
    mut queue: mpsc::Receiver<Outgoing>,
) {
    while let Some(outgoing) = queue.recv().await {
        match outgoing {
            Outgoing::Frame(message) => {
                let last = message.is_close();
                // After the bot's Close, data frames fail: the flush of the answer may follow.
                if sink.send(message).await.is_ok() && last {
                    return;
                }
            }
            Outgoing::Flush => {
                let _ = sink.flush().await;
                return;
            }
        }
    }
}

/// Reads the bot's messages and hands them to the session, up to and including the one that
/// ends the stream (a Close or an error). A session that stops taking them stops the reading,
/// so the bot's sending meets TCP's back-pressure as it would if the session read directly.
async fn read_from_bot(
    mut stream: SplitStream<BotSocket>,
    to_session: mpsc::Sender<Result<Message, WsProtocolError>>,
) {
    while let Some(item) = stream.next().await {
        let last = matches!(item, Ok(Message::Close(_)) | Err(_));
        if to_session.send(item).await.is_err() || last {
            return;
        }
    }
}

/// The bot's messages as [`read_from_bot`] hands them over.
pub(super) struct FromBot {
    queue: mpsc::Receiver<Result<Message, WsProtocolError>>,
    reader: JoinHandle<()>,
}

impl FromBot {
    /// The next message; `None` once the socket closed (as the stream itself would say).
    pub(super) async fn next(&mut self) -> Option<Result<Message, WsProtocolError>> {
        self.queue.recv().await
    }
}

impl Drop for FromBot {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Messages from the bot read ahead of the session: a few, so a bot's burst is read at once.
const FROM_BOT_QUEUE: usize = 8;

/// The bot's WebSocket and the encoder of its stream.
pub(super) struct Link {
    /// To [`write_to_bot`]: a full queue means the bot is not reading, and the frame is dropped.
    pub(super) to_bot: mpsc::Sender<Outgoing>,
    pub(super) writer: JoinHandle<()>,
    pub(super) from_bot: FromBot,
    /// False once the socket closed or broke: nothing more is sent or read.
    pub(super) open: bool,
    pub(super) encoder: Encoder,
    /// The frame being built, reused.
    pub(super) out: String,
    /// Where `out` is copied to be queued, so that a frame is not a new allocation.
    frames: TextFrames,
    /// Since when our frames have not fitted in the queue (the bot stopped reading).
    pub(super) stalled_since: Option<Instant>,
    /// Frames dropped for a full queue.
    pub(super) dropped: u64,
}

impl Link {
    pub(super) fn new(socket: BotSocket, encoder: Encoder) -> Link {
        let (sink, stream) = socket.split();
        let (to_bot, queue) = mpsc::channel(TO_BOT_QUEUE);
        let (to_session, from_bot) = mpsc::channel(FROM_BOT_QUEUE);
        Link {
            to_bot,
            writer: tokio::spawn(write_to_bot(sink, queue)),
            from_bot: FromBot {
                queue: from_bot,
                reader: tokio::spawn(read_from_bot(stream, to_session)),
            },
            open: true,
            encoder,
            out: String::with_capacity(4096),
            frames: TextFrames::new(),
            stalled_since: None,
            dropped: 0,
        }
    }

    /// Queues the frame in `out` for the bot; false when the socket is gone or the bot is not
    /// reading (the frame is then dropped and counted). Never waits.
    pub(super) fn send(&mut self) -> bool {
        if !self.open {
            return false;
        }
        let frame = Message::Text(self.frames.frame(&self.out));
        match self.to_bot.try_send(Outgoing::Frame(frame)) {
            Ok(()) => {
                self.stalled_since = None;
                true
            }
            Err(TrySendError::Full(_)) => {
                self.dropped += 1;
                self.stalled_since.get_or_insert_with(Instant::now);
                false
            }
            Err(TrySendError::Closed(_)) => {
                self.open = false;
                false
            }
        }
    }

    /// How long the bot has left our frames unread, if it has.
    pub(super) fn stalled_for(&self, now: Instant) -> Option<Duration> {
        self.stalled_since
            .map(|since| now.saturating_duration_since(since))
    }

    /// `stop` with `reason`, then our Close.
    pub(super) async fn stop(&mut self, reason: StopReason) {
        self.encoder.stop(reason, &mut self.out);
        let _ = self.send();
        self.close(
            CloseCode::Normal,
            match reason {
                StopReason::CallEnded => "call ended",
                StopReason::Stopped => "stream stopped",
            },
        )
        .await;
    }

    /// Our Close (`code`, `reason`), then the bot's Close in answer (RFC 6455 §5.5.1; what it
    /// still sends before that is dropped), bounded by [`CLOSE_WAIT`].
    pub(super) async fn close(&mut self, code: CloseCode, reason: &str) {
        if !self.open {
            return;
        }
        self.open = false;
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        if self
            .to_bot
            .try_send(Outgoing::Frame(Message::Close(Some(frame))))
            .is_err()
        {
            return; // not reading: dropping the connection is all that is left
        }
        let from_bot = &mut self.from_bot;
        let writer = &mut self.writer;
        let handshake = async move {
            while let Some(Ok(message)) = from_bot.next().await {
                if message.is_close() {
                    break;
                }
            }
            let _ = writer.await;
        };
        if tokio::time::timeout(CLOSE_WAIT, handshake).await.is_err() {
            debug!("bot did not answer our Close in time");
        }
    }

    /// The bot sent Close: ours goes back (tungstenite queued the echo of its code; the writer
    /// flushes it), so the bot sees a clean close rather than 1006.
    pub(super) async fn answer_close(&mut self) {
        self.open = false;
        if self.to_bot.try_send(Outgoing::Flush).is_ok() {
            let _ = tokio::time::timeout(CLOSE_WAIT, &mut self.writer).await;
        }
    }

    /// The caller's audio not yet sent (a partial chunk), then `stop` and Close: a normal end
    /// loses none of what the caller said.
    pub(super) async fn finish_stream(
        &mut self,
        chunker: &mut Chunker,
        report: &mut SessionReport,
        reason: StopReason,
    ) {
        self.flush_caller_audio(chunker, report);
        self.stop(reason).await;
    }

    /// Sends what `chunker` still holds, however short.
    pub(super) fn flush_caller_audio(&mut self, chunker: &mut Chunker, report: &mut SessionReport) {
        if !self.open {
            return;
        }
        while let Some(chunk) = chunker.flush() {
            self.encoder
                .media(&chunk, chunk.timestamp_ms, &mut self.out);
            report.media_messages_sent += 1;
            if !self.send() {
                break;
            }
        }
    }

    /// Echoes every mark that is due.
    pub(super) fn echo_due_marks(
        &mut self,
        playout: &mut PlayoutQueue,
        report: &mut SessionReport,
    ) {
        while let Some(name) = playout.poll_mark() {
            report.marks_echoed += 1;
            self.encoder.mark(&name, &mut self.out);
            let _ = self.send();
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // A writer stuck on a bot that reads nothing must not outlive the session.
        self.writer.abort();
    }
}

/// How the bot left, as read from its socket: `None` while it is still there.
pub(super) fn bot_left(message: &Option<Result<Message, WsProtocolError>>) -> Option<String> {
    match message {
        Some(Ok(Message::Close(frame))) => Some(
            frame
                .as_ref()
                .map(|f| f.reason.to_string())
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "closed".into()),
        ),
        Some(Err(e)) => Some(e.to_string()),
        None => Some("socket closed".into()),
        Some(Ok(_)) => None,
    }
}
