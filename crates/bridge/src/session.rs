//! One bridged call, one task: the caller's RTP goes through the jitter buffer, is decoded,
//! resampled to the bot's rate, cut into chunks and sent as `media` events; the bot's audio
//! goes through the playout queue and comes out as 20 ms RTP frames paced by a monotonic
//! clock. Marks, `clear`, DTMF and the endings of both sides are handled here too.
//!
//! A bot's close, `hangup` and `transfer` are held until the caller has heard the audio the bot
//! queued before them (at most [`BotSettings::final_playout_max`]), so its last words are not
//! cut off. Both ends of the WebSocket close with the close handshake: the bot's Close is
//! answered, ours carries 1000 and a reason.
//!
//! Escalation to a human: the bot's `transfer` reaches the call as [`BridgeEvent::Transfer`]
//! while the session goes on. The call then either [`BridgeHandle::finish`]es the session, which
//! gives the caller's RTP ports back still bound, or [`BridgeHandle::hand_off`]s it: the ports come
//! back at once and the session goes on listen-only on the same WebSocket, streaming both
//! parties of the relayed call (agent assist) from [`TapFrame`]s.
//!
//! Buffers are allocated when the session starts (or is handed off) and reused for every frame.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rtp_rs::RtpReader;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant, Sleep};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsProtocolError, Message};
use tracing::{debug, info, warn};
use voicegate_audio::{g711, G711Plc, OpusDecoder, OpusEncoder, Resampler};
use voicegate_rtp::dtmf::{DtmfEvent, Rfc4733Receiver};
use voicegate_rtp::jitter::{JitterBuffer, JitterConfig, Playout};
use voicegate_rtp::latch::{LatchPolicy, RemoteAddress};
use voicegate_rtp::pool::{PortLease, RtpPorts};
use voicegate_rtp::stats::{RtpStats, StatsSummary};

use crate::dialect::{self, Encoder, Protocol, StopReason, StreamInfo};
use crate::limits::{BotBudget, WarnLimiter, MAX_MARK_NAME_BYTES};
use crate::playout::{AfterPlayout, Chunker, Frame, Pacer, PlayoutQueue};
use crate::tap::{TapFrame, Track, TAP_FRAME_SAMPLES};
use crate::ws::{self, BotSocket, BotUrl, ClientConfig};

const FRAME: Duration = Duration::from_millis(20);
/// How long the bot has to answer our Close before the connection is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Frames waiting for the bot to read them: about 13 s of Exotel media at 100 ms, 2.5 s of
/// Twilio's 20 ms frames. A bot that lets it fill is not reading; what does not fit is dropped.
const TO_BOT_QUEUE: usize = 128;
/// At most this many warnings of a kind per interval for one session (see [`WarnLimiter`]).
const WARN_INTERVAL: Duration = Duration::from_secs(10);

pub use voicegate_codec::Codec;

/// The caller's side of the media.
#[derive(Clone, Debug)]
pub struct CallMedia {
    pub codec: Codec,
    pub payload_type: u8,
    pub telephone_event: Option<u8>,
    /// The caller's RTP address from its SDP.
    pub signalled: Option<SocketAddr>,
    pub latching: LatchPolicy,
    pub ssrc: u32,
    /// No RTP for this long (while the caller is expected to send) ends the session.
    pub rtp_timeout: Duration,
}

/// The bot's side.
#[derive(Clone, Debug)]
pub struct BotSettings {
    pub url: BotUrl,
    pub protocol: Protocol,
    pub bidirectional: bool,
    pub client: ClientConfig,
    /// Caller audio per `media` message (Exotel); Twilio always uses 20 ms.
    pub media_interval: Duration,
    pub max_session: Duration,
    pub playout_max: Duration,
    /// When the bot closes, hangs up or transfers, the audio it queued before still plays to
    /// the caller for at most this long.
    pub final_playout_max: Duration,
    /// A bot that reads nothing we send for this long (its queue stays full) is ended as if
    /// it had closed: the call never waits on it.
    pub write_timeout: Duration,
    /// What the bot may send per second (burst: [`crate::limits::BURST_SECS`] seconds of it);
    /// beyond it messages are dropped unread, and counted.
    pub max_messages_per_sec: u64,
    pub max_bytes_per_sec: u64,
    pub silence_when_idle: bool,
    /// For the `start` event.
    pub call_sid: String,
    pub account_sid: String,
    pub from: String,
    pub to: String,
    /// Parameters from SIP headers, after the URL's own.
    pub extra_parameters: Vec<(String, String)>,
}

/// Why the bot step ended: the call decides what comes next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The caller hung up; the bot got `stop` (`callended`).
    CallerHungUp,
    /// The bot closed the socket or it broke (after its queued audio played).
    BotClosed(String),
    /// The handshake failed twice (or timed out).
    BotUnreachable(String),
    /// The session reached its maximum length; the bot got `stop` (`stopped`).
    MaxDuration,
    /// The bot asked to hang up (extension message), after its queued audio played.
    BotHangup,
    /// The caller sent no RTP for the configured time; the bot got `stop` (`stopped`).
    RtpTimeout,
    /// The call stopped the stream ([`BridgeHandle::stop`], e.g. to connect an agent without
    /// the bot, or the end of a listen-only tap); the bot got `stop` (`stopped`).
    Stopped,
}

/// What happened, for the call record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SessionReport {
    /// The caller's RTP both ways, loss, jitter, round trip and MOS.
    pub rtp: StatsSummary,
    pub media_messages_sent: u64,
    pub bot_media_messages: u64,
    pub bot_frames_invalid: u64,
    pub marks_echoed: u64,
    pub clears: u64,
    pub playout_samples_dropped: u64,
    pub concealed_frames: u64,
    pub dtmf_events: u64,
    /// Bot `media` after a hand-off (listen-only: not played).
    pub bot_media_ignored: u64,
    /// Bot messages dropped unread: over the bot's budget of messages or bytes a second.
    pub bot_frames_over_budget: u64,
    /// Our frames dropped because the bot was not reading them (its queue was full).
    pub frames_to_bot_dropped: u64,
}

/// What a session tells the call while it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BridgeEvent {
    /// An RFC 4733 key press from the caller (already sent to the bot).
    Dtmf(DtmfEvent),
    /// The bot asked (extension message) to transfer the call to `to` (`sip:…` or `+…`, as
    /// sent); reported once the audio the bot queued before it has played. The session goes
    /// on: the call rings the target, then hands the session off or finishes it.
    Transfer { to: String },
    /// The bot step ended; sent once, last.
    Ended(SessionEnd),
}

/// What the call tells a running session.
#[derive(Debug)]
enum Control {
    /// A digit that came by SIP INFO (RFC 4733 digits are read from the RTP here).
    Dtmf {
        digit: char,
        duration_ms: u32,
    },
    /// Whether the caller's SDP says it sends (not on hold): the RTP timeout runs only then.
    ExpectRtp(bool),
    CallerHungUp,
    /// End the stream for another reason than a hang-up.
    Stop,
    /// Give the caller's ports back and go on listen-only with this tap.
    HandOff {
        tap: mpsc::Receiver<TapFrame>,
        ports: oneshot::Sender<RtpPorts>,
    },
}

/// The session's result: its report and, unless handed off, the caller's ports.
type Outcome = (SessionReport, Option<RtpPorts>);

/// Owns the session task.
pub struct BridgeHandle {
    task: JoinHandle<Outcome>,
    control: mpsc::Sender<Control>,
    /// Set once [`Self::hand_off`] got the ports: [`Self::finish`] then waits for the
    /// listen-only stream to end instead of ending it.
    handed_off: AtomicBool,
}

impl BridgeHandle {
    /// Starts the session: connects to the bot and streams until one side ends. The end
    /// and digits are reported on `events`; the report comes from [`Self::finish`].
    pub fn start(
        ports: RtpPorts,
        media: CallMedia,
        bot: BotSettings,
        events: mpsc::Sender<BridgeEvent>,
    ) -> std::io::Result<Self> {
        let sockets = Sockets::from_ports(ports)?;
        let (control_tx, control_rx) = mpsc::channel(16);
        let task = tokio::spawn(run(sockets, media, bot, control_rx, events));
        Ok(BridgeHandle {
            task,
            control: control_tx,
            handed_off: AtomicBool::new(false),
        })
    }

    /// The caller hung up: the bot gets `stop` (`callended`) and the socket is closed.
    pub fn caller_hung_up(&self) {
        let _ = self.control.try_send(Control::CallerHungUp);
    }

    /// The caller put the call on hold (false) or resumed it (true).
    pub fn expect_rtp(&self, expect: bool) {
        let _ = self.control.try_send(Control::ExpectRtp(expect));
    }

    /// A digit the caller sent by SIP INFO: it reaches the bot like an RFC 4733 one.
    pub fn dtmf(&self, digit: char, duration_ms: u32) {
        let _ = self.control.try_send(Control::Dtmf { digit, duration_ms });
    }

    /// Ends the stream for another reason than a hang-up (the call moves on, e.g. to an agent
    /// without the bot): the bot gets `stop` (`stopped`), the session ends with
    /// [`SessionEnd::Stopped`]. Then [`Self::finish`] for the report and the ports.
    pub fn stop(&self) {
        let _ = self.control.try_send(Control::Stop);
    }

    /// Hands the caller's media over (to an agent relay) and keeps the bot listening.
    ///
    /// The session stops reading the caller's RTP and playing the bot's audio (queued audio is
    /// dropped and pending marks come back at once, as after `clear`), and returns the caller's
    /// ports, still bound, for the next media stage. From then on every [`TapFrame`] from `tap`
    /// (caller = [`Track::Inbound`], agent = [`Track::Outbound`]) goes to the bot as `media` with
    /// `track`, on the same WebSocket; the bot's audio is ignored. When `tap` closes the bot gets
    /// the last audio and `stop` (`stopped`, or `callended` after [`Self::caller_hung_up`]);
    /// when the bot closes the session ends quietly ([`BridgeEvent::Ended`] still comes, to be
    /// ignored).
    ///
    /// `None` when the session has already ended (or not yet connected to the bot): its ports
    /// then come from [`Self::finish`].
    pub async fn hand_off(&self, tap: mpsc::Receiver<TapFrame>) -> Option<RtpPorts> {
        let (ports_tx, ports_rx) = oneshot::channel();
        let command = Control::HandOff {
            tap,
            ports: ports_tx,
        };
        self.control.send(command).await.ok()?;
        let ports = ports_rx.await.ok()?;
        self.handed_off.store(true, Ordering::Release);
        Some(ports)
    }

    /// Waits for the task and returns its report and the caller's RTP ports, still bound (the
    /// std sockets, still non-blocking, with their pool lease), for the next media stage.
    ///
    /// Before a hand-off this first ends the session if it still runs (as a caller hang-up:
    /// [`Self::stop`] first for `stopped`); the ports come back also when the session had
    /// ended by itself. After a hand-off it waits until the listen-only stream ends (the tap
    /// closes, the bot closes, [`Self::caller_hung_up`], [`Self::stop`] or the maximum session
    /// length), and the ports are `None`: the hand-off returned them.
    pub async fn finish(mut self) -> (SessionReport, Option<RtpPorts>) {
        let result = if self.handed_off.load(Ordering::Acquire) {
            Ok((&mut self.task).await)
        } else {
            self.caller_hung_up();
            tokio::time::timeout(Duration::from_secs(5), &mut self.task).await
        };
        match result {
            Ok(Ok(outcome)) => outcome,
            _ => {
                self.task.abort();
                (SessionReport::default(), None)
            }
        }
    }
}

impl Drop for BridgeHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The caller's ports on the runtime. Fields drop in order: the sockets close before the ports
/// go back to the pool.
pub(crate) struct Sockets {
    pub(crate) rtp: UdpSocket,
    pub(crate) rtcp: UdpSocket,
    _lease: PortLease,
}

impl Sockets {
    /// Registers the pool's (non-blocking) sockets with the runtime.
    pub(crate) fn from_ports(ports: RtpPorts) -> std::io::Result<Self> {
        let RtpPorts { rtp, rtcp, lease } = ports;
        Ok(Sockets {
            rtp: UdpSocket::from_std(rtp)?,
            rtcp: UdpSocket::from_std(rtcp)?,
            _lease: lease,
        })
    }

    /// The ports as the pool handed them out, still bound, for the call's next media stage.
    pub(crate) fn into_ports(self) -> Option<RtpPorts> {
        let Sockets { rtp, rtcp, _lease } = self;
        match (rtp.into_std(), rtcp.into_std()) {
            (Ok(rtp), Ok(rtcp)) => Some(RtpPorts {
                rtp,
                rtcp,
                lease: _lease,
            }),
            (rtp, rtcp) => {
                let error = rtp.err().or(rtcp.err()).map(|e| e.to_string());
                warn!(?error, "caller's RTP sockets could not be given back");
                None
            }
        }
    }
}

/// Decoding the caller's audio to PCM at the bot's rate.
// One per session, built once: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Decoder {
    G711 {
        alaw: bool,
        plc: G711Plc,
        pcm: Vec<i16>,
        resampler: Resampler,
    },
    Opus(OpusDecoder),
}

/// Encoding the bot's audio for the caller.
#[allow(clippy::large_enum_variant)]
enum EncoderKind {
    G711 {
        alaw: bool,
        pcm: Vec<i16>,
        resampler: Resampler,
    },
    Opus(OpusEncoder),
}

/// The per-session buffers and codecs: built once, reused for every frame.
struct Pipeline {
    codec: Codec,
    decoder: Decoder,
    encoder: EncoderKind,
    /// One 20 ms frame at the bot's rate.
    bot_frame: Vec<i16>,
    /// The RTP packet we send.
    packet: Vec<u8>,
    seq: u16,
    timestamp: u32,
    ssrc: u32,
    payload_type: u8,
}

impl Pipeline {
    fn new(media: &CallMedia, bot_rate: u32) -> Result<Self, String> {
        let frame_at = |rate: u32| (rate / 50) as usize;
        let (decoder, encoder) = match media.codec {
            Codec::Pcma | Codec::Pcmu => {
                let alaw = media.codec == Codec::Pcma;
                let up = Resampler::new(8000, bot_rate, 160).map_err(|e| e.to_string())?;
                let down = Resampler::new(bot_rate, 8000, frame_at(bot_rate))
                    .map_err(|e| e.to_string())?;
                (
                    Decoder::G711 {
                        alaw,
                        plc: G711Plc::new(),
                        pcm: vec![0; 160],
                        resampler: up,
                    },
                    EncoderKind::G711 {
                        alaw,
                        pcm: vec![0; 160],
                        resampler: down,
                    },
                )
            }
            Codec::Opus => (
                // libopus decodes and encodes at the bot's rate directly: no resampler.
                Decoder::Opus(OpusDecoder::new(bot_rate).map_err(|e| e.to_string())?),
                EncoderKind::Opus(OpusEncoder::new(bot_rate, 5).map_err(|e| e.to_string())?),
            ),
        };
        Ok(Pipeline {
            codec: media.codec,
            decoder,
            encoder,
            bot_frame: vec![0; frame_at(bot_rate)],
            packet: Vec::with_capacity(1500),
            seq: rand::random(),
            timestamp: rand::random(),
            ssrc: media.ssrc,
            payload_type: media.payload_type,
        })
    }

    /// Decodes one caller frame (or conceals a lost one) into `out` at the bot's rate.
    fn decode(&mut self, payload: Option<&[u8]>, out: &mut Vec<i16>) {
        out.clear();
        match &mut self.decoder {
            Decoder::G711 {
                alaw,
                plc,
                pcm,
                resampler,
            } => {
                match payload {
                    Some(p) => {
                        let n = if *alaw {
                            g711::decode_alaw(p, pcm)
                        } else {
                            g711::decode_ulaw(p, pcm)
                        };
                        pcm[n..].fill(0);
                        plc.good_frame(pcm);
                    }
                    None => plc.conceal(pcm),
                }
                let _ = resampler.process_vec(pcm, out);
            }
            Decoder::Opus(decoder) => {
                out.resize(self.bot_frame.len(), 0);
                let n = match payload {
                    Some(p) => decoder
                        .decode(p, out)
                        .unwrap_or_else(|_| decoder.conceal(out)),
                    None => decoder.conceal(out),
                };
                out.truncate(n);
            }
        }
    }

    /// The RTP timestamp of the packet last encoded.
    fn last_timestamp(&self) -> u32 {
        self.timestamp.wrapping_sub(self.codec.clock_rate() / 50)
    }

    /// Encodes `self.bot_frame` into `self.packet` as the next RTP packet.
    fn encode_frame(&mut self, marker: bool) -> Result<(), String> {
        self.packet.clear();
        self.packet
            .extend_from_slice(&[0x80, self.payload_type | if marker { 0x80 } else { 0 }]);
        self.packet.extend_from_slice(&self.seq.to_be_bytes());
        self.packet.extend_from_slice(&self.timestamp.to_be_bytes());
        self.packet.extend_from_slice(&self.ssrc.to_be_bytes());
        match &mut self.encoder {
            EncoderKind::G711 {
                alaw,
                pcm,
                resampler,
            } => {
                let n = resampler
                    .process(&self.bot_frame, pcm)
                    .map_err(|e| e.to_string())?;
                let start = self.packet.len();
                self.packet.resize(start + n, 0);
                if *alaw {
                    g711::encode_alaw(&pcm[..n], &mut self.packet[start..]);
                } else {
                    g711::encode_ulaw(&pcm[..n], &mut self.packet[start..]);
                }
            }
            EncoderKind::Opus(encoder) => {
                let start = self.packet.len();
                self.packet
                    .resize(start + voicegate_audio::opus::MAX_PACKET_BYTES, 0);
                let n = encoder
                    .encode(&self.bot_frame, &mut self.packet[start..])
                    .map_err(|e| e.to_string())?;
                self.packet.truncate(start + n);
            }
        }
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(self.codec.clock_rate() / 50);
        Ok(())
    }
}

async fn run(
    sockets: Sockets,
    media: CallMedia,
    bot: BotSettings,
    mut control: mpsc::Receiver<Control>,
    events: mpsc::Sender<BridgeEvent>,
) -> Outcome {
    let mut report = SessionReport::default();
    let exit = session(&sockets, &media, &bot, &mut control, &events, &mut report).await;
    let (end, ports) = match exit {
        Exit::End(end) => (end, sockets.into_ports()),
        Exit::HandOff(hand_off) => {
            let HandOff {
                tap,
                ports,
                mut link,
                timeline,
            } = *hand_off;
            // If the call stopped waiting for the ports they stay here, for finish().
            let unclaimed = match sockets.into_ports() {
                Some(caller) => ports.send(caller).err(),
                None => None,
            };
            info!("bot session handed off: listen-only");
            let end = listen_only(&mut link, tap, &bot, &timeline, &mut control, &mut report).await;
            report.frames_to_bot_dropped = link.dropped;
            (end, unclaimed)
        }
    };
    info!(end = ?end, "bot session ended");
    let _ = events.try_send(BridgeEvent::Ended(end));
    (report, ports)
}

/// How the bidirectional part of a session ends.
enum Exit {
    End(SessionEnd),
    /// Boxed: it carries the whole bot link, and exits once.
    HandOff(Box<HandOff>),
}

/// What a hand-off takes from the bidirectional part to the listen-only part.
struct HandOff {
    tap: mpsc::Receiver<TapFrame>,
    ports: oneshot::Sender<RtpPorts>,
    link: Link,
    timeline: Timeline,
}

/// What the session hands the task that writes to the bot.
enum Outgoing {
    Frame(Message),
    /// Write what tungstenite queued by itself: the answer to the bot's Close.
    Flush,
}

/// Writes the session's frames to the bot, so the session never waits on a bot's socket. Ends
/// after our Close or the flush of the answer to the bot's, or when the session drops its end.
async fn write_to_bot(
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

/// The bot's WebSocket and the encoder of its stream.
struct Link {
    /// To [`write_to_bot`]: a full queue means the bot is not reading, and the frame is dropped.
    to_bot: mpsc::Sender<Outgoing>,
    writer: JoinHandle<()>,
    from_bot: SplitStream<BotSocket>,
    /// False once the socket closed or broke: nothing more is sent or read.
    open: bool,
    encoder: Encoder,
    /// The frame being built, reused.
    out: String,
    /// Since when our frames have not fitted in the queue (the bot stopped reading).
    stalled_since: Option<Instant>,
    /// Frames dropped for a full queue.
    dropped: u64,
}

impl Link {
    fn new(socket: BotSocket, encoder: Encoder) -> Link {
        let (sink, from_bot) = socket.split();
        let (to_bot, queue) = mpsc::channel(TO_BOT_QUEUE);
        Link {
            to_bot,
            writer: tokio::spawn(write_to_bot(sink, queue)),
            from_bot,
            open: true,
            encoder,
            out: String::with_capacity(4096),
            stalled_since: None,
            dropped: 0,
        }
    }

    /// Queues the frame in `out` for the bot; false when the socket is gone or the bot is not
    /// reading (the frame is then dropped and counted). Never waits.
    fn send(&mut self) -> bool {
        if !self.open {
            return false;
        }
        match self
            .to_bot
            .try_send(Outgoing::Frame(Message::text(self.out.clone())))
        {
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
    fn stalled_for(&self, now: Instant) -> Option<Duration> {
        self.stalled_since
            .map(|since| now.saturating_duration_since(since))
    }

    /// `stop` with `reason`, then our Close.
    async fn stop(&mut self, reason: StopReason) {
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
    async fn close(&mut self, code: CloseCode, reason: &str) {
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
    async fn answer_close(&mut self) {
        self.open = false;
        if self.to_bot.try_send(Outgoing::Flush).is_ok() {
            let _ = tokio::time::timeout(CLOSE_WAIT, &mut self.writer).await;
        }
    }

    /// The caller's audio not yet sent (a partial chunk), then `stop` and Close: a normal end
    /// loses none of what the caller said.
    async fn finish_stream(
        &mut self,
        chunker: &mut Chunker,
        report: &mut SessionReport,
        reason: StopReason,
    ) {
        self.flush_caller_audio(chunker, report);
        self.stop(reason).await;
    }

    /// Sends what `chunker` still holds, however short.
    fn flush_caller_audio(&mut self, chunker: &mut Chunker, report: &mut SessionReport) {
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
    fn echo_due_marks(&mut self, playout: &mut PlayoutQueue, report: &mut SessionReport) {
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
fn bot_left(message: &Option<Result<Message, WsProtocolError>>) -> Option<String> {
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

/// The stream's clock and framing, carried over to the listen-only part.
struct Timeline {
    started: Instant,
    deadline: Instant,
    bot_rate: u32,
    /// Audio per `media` message.
    chunk: Duration,
    /// Stream time up to which the caller's audio has been sent.
    sent_ms: u64,
}

/// Bot requests held until the caller has heard what the bot queued before them.
#[derive(Default)]
struct Held {
    /// A `transfer`: reported to the call once its audio has played.
    transfer: Option<AfterPlayout<String>>,
    /// The end of the bot step: it closed the socket, or sent `hangup`.
    end: Option<AfterPlayout<SessionEnd>>,
}

/// One session's rate-limited warnings, one limiter per kind.
struct Warnings {
    malformed: WarnLimiter,
    over_budget: WarnLimiter,
    playout_full: WarnLimiter,
    marks_full: WarnLimiter,
}

impl Warnings {
    /// Whether a bot message of `len` bytes fits `budget`; one that does not is counted and
    /// warned about (rate-limited), and dropped unread by the caller.
    fn within_budget(
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

    fn new() -> Self {
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
struct Timer {
    sleep: Pin<Box<Sleep>>,
}

impl Timer {
    fn new(at: Instant) -> Self {
        Timer {
            sleep: Box::pin(sleep_until(at)),
        }
    }

    fn arm(&mut self, at: Instant) {
        if self.sleep.deadline() != at {
            self.sleep.as_mut().reset(at);
        }
    }

    async fn wait(&mut self) {
        self.sleep.as_mut().await;
    }
}

/// What the bidirectional loop's timer is armed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Due {
    /// The pacer's next 20 ms tick: media both ways, RTCP, the RTP and bot-write timeouts.
    Frame,
    /// The session cap (`max_session`).
    SessionEnd,
}

/// The earliest of the bidirectional loop's deadlines; the session cap wins a tie.
fn next_due(frame: Instant, session_end: Instant) -> (Instant, Due) {
    if session_end <= frame {
        (session_end, Due::SessionEnd)
    } else {
        (frame, Due::Frame)
    }
}

async fn session(
    sockets: &Sockets,
    media: &CallMedia,
    bot: &BotSettings,
    control: &mut mpsc::Receiver<Control>,
    events: &mpsc::Sender<BridgeEvent>,
    report: &mut SessionReport,
) -> Exit {
    // Connect while the caller waits; a caller who hangs up meanwhile ends it all.
    let socket = tokio::select! {
        result = ws::connect(&bot.url, &bot.client) => match result {
            Ok(socket) => socket,
            Err(e) => {
                warn!(url = %bot.url, error = %e, "bot unreachable");
                return Exit::End(SessionEnd::BotUnreachable(e.to_string()));
            }
        },
        end = wait_for_end(control) => return Exit::End(end),
    };
    let bot_rate = match bot.protocol {
        Protocol::Twilio => 8000,
        Protocol::Exotel => bot.url.sample_rate(),
    };
    let mut pipeline = match Pipeline::new(media, bot_rate) {
        Ok(p) => p,
        Err(e) => {
            return Exit::End(SessionEnd::BotClosed(format!("media setup failed: {e}")));
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
        return Exit::End(SessionEnd::BotClosed("socket closed before start".into()));
    }
    link.encoder.start(&mut link.out);
    if !link.send() {
        return Exit::End(SessionEnd::BotClosed("socket closed before start".into()));
    }

    let chunk = match bot.protocol {
        Protocol::Twilio => FRAME,
        Protocol::Exotel => bot.media_interval,
    };
    let mut chunker = Chunker::new(bot_rate, chunk);
    let mut playout = PlayoutQueue::new(bot_rate, bot.playout_max);
    let clock = media.codec.clock_rate();
    let mut jitter = JitterBuffer::new(JitterConfig {
        clock_rate: clock,
        frame_samples: clock / 50,
        ..JitterConfig::default()
    });
    // RFC 4733 §2.1: the event clock is the audio's (telephone-event/48000 with Opus).
    let mut dtmf = Rfc4733Receiver::new(clock);
    let mut remote = RemoteAddress::new(media.latching, media.signalled);
    let mut decoded: Vec<i16> = Vec::with_capacity(pipeline.bot_frame.len() * 2);
    let mut rtp_in = vec![0u8; 2048];
    let mut bot_pcm: Vec<i16> = Vec::with_capacity(bot_rate as usize * 2);
    let started = Instant::now();
    let deadline = started + bot.max_session;
    let mut pacer = Pacer::new(started + FRAME, FRAME);
    let mut peer_ssrc = None;
    let mut stats = RtpStats::new(
        media.ssrc,
        format!(
            "voicegate@{}",
            sockets
                .rtp
                .local_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default()
        ),
        media.codec,
        started,
    );
    let mut rtcp_remote = RemoteAddress::new(
        media.latching,
        media
            .signalled
            .map(|a| SocketAddr::new(a.ip(), a.port().wrapping_add(1))),
    );
    let mut rtcp_in = vec![0u8; 1500];
    let mut last_rtp = started;
    let mut expect_rtp = true;
    let mut held = Held::default();
    let mut budget = BotBudget::new(bot.max_messages_per_sec, bot.max_bytes_per_sec, started);
    let mut warnings = Warnings::new();
    let mut timer = Timer::new(pacer.next_deadline());

    let stage = loop {
        let (wake_at, due) = next_due(pacer.next_deadline(), deadline);
        timer.arm(wake_at);
        tokio::select! {
            received = sockets.rtp.recv_from(&mut rtp_in) => {
                let Ok((len, from)) = received else { continue };
                let now = Instant::now();
                let Ok(packet) = RtpReader::new(&rtp_in[..len]) else { continue };
                stats.on_received(u16::from(packet.sequence_number()), packet.timestamp(), packet.ssrc(), packet.payload().len(), now);
                last_rtp = now;
                remote.on_packet(from);
                if peer_ssrc != Some(packet.ssrc()) {
                    peer_ssrc = Some(packet.ssrc());
                    jitter.set_ssrc(packet.ssrc());
                }
                let seq = u16::from(packet.sequence_number());
                if Some(packet.payload_type()) == media.telephone_event {
                    if let Some(event) = dtmf.on_packet(packet.timestamp(), packet.mark(), packet.payload(), now) {
                        report.dtmf_events += 1;
                        let _ = events.try_send(BridgeEvent::Dtmf(event));
                        if bot.bidirectional && link.open {
                            link.encoder.dtmf(event.digit, event.duration_ms, &mut link.out);
                            let _ = link.send();
                        }
                    }
                } else if packet.payload_type() == media.payload_type {
                    jitter.push(seq, packet.timestamp(), packet.mark(), packet.payload(), now);
                }
            }
            received = sockets.rtcp.recv_from(&mut rtcp_in) => {
                if let Ok((len, from)) = received {
                    if stats.on_rtcp(&rtcp_in[..len], Instant::now()) {
                        rtcp_remote.on_packet(from);
                    }
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
                let Some(Ok(Message::Text(text))) = message else { continue };
                if !bot.bidirectional {
                    continue;
                }
                let now = Instant::now();
                if !warnings.within_budget(&mut budget, text.len(), now, report) {
                    continue;
                }
                match dialect::parse_into(bot.protocol, text.as_str(), &mut bot_pcm) {
                    Ok(dialect::BotMessageRef::Media) => {
                        report.bot_media_messages += 1;
                        let pushed = playout.push_audio(&bot_pcm);
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
                    Err(e) => {
                        report.bot_frames_invalid += 1;
                        if let Some(suppressed) = warnings.malformed.allow(now) {
                            warn!(error = %e, suppressed, "malformed bot frame ignored");
                        }
                    }
                }
                // Marks due now (an empty queue, or a clear) go back at once.
                link.echo_due_marks(&mut playout, report);
            }
            () = timer.wait() => {
                if due == Due::SessionEnd {
                    link.finish_stream(&mut chunker, report, StopReason::Stopped).await;
                    break Stage::End(SessionEnd::MaxDuration);
                }
                let now = Instant::now();
                if let (Some(report), Some(to)) = (stats.report_due(now), rtcp_remote.target()) {
                    if sockets.rtcp.send_to(report, to).await.is_ok() {
                        stats.report_sent();
                    }
                }
                if expect_rtp && now.saturating_duration_since(last_rtp) >= media.rtp_timeout {
                    link.finish_stream(&mut chunker, report, StopReason::Stopped).await;
                    break Stage::End(SessionEnd::RtpTimeout);
                }
                if let Some(stalled) = link.stalled_for(now).filter(|s| *s >= bot.write_timeout) {
                    warn!(secs = stalled.as_secs(), "bot stopped reading: ending its step");
                    link.open = false;
                    break Stage::End(SessionEnd::BotClosed(format!("bot read nothing for {} s", stalled.as_secs())));
                }
                for _ in 0..pacer.tick(now) {
                    // Caller → bot.
                    match jitter.pop(now) {
                        Playout::Frame { payload, .. } => pipeline.decode(Some(payload), &mut decoded),
                        Playout::Missing { .. } => {
                            report.concealed_frames += 1;
                            pipeline.decode(None, &mut decoded);
                        }
                        Playout::Gap { .. } | Playout::Waiting => {
                            decoded.clear();
                            decoded.resize(pipeline.bot_frame.len(), 0);
                        }
                    }
                    chunker.push(&decoded);
                    while let Some(chunk) = chunker.take_chunk() {
                        if !link.open {
                            break;
                        }
                        link.encoder.media(&chunk, chunk.timestamp_ms, &mut link.out);
                        report.media_messages_sent += 1;
                        if !link.send() {
                            break;
                        }
                    }
                    // Bot → caller.
                    if bot.bidirectional {
                        let frame = playout.next_frame(&mut pipeline.bot_frame);
                        let send = match frame {
                            Frame::Audio { talkspurt_start, .. } => Some(talkspurt_start),
                            Frame::Silence => bot.silence_when_idle.then_some(false),
                        };
                        if let (Some(marker), Some(to)) = (send, remote.target()) {
                            if pipeline.encode_frame(marker).is_ok() && sockets.rtp.send_to(&pipeline.packet, to).await.is_ok() {
                                stats.on_sent(pipeline.last_timestamp(), pipeline.packet.len() - 12, now);
                            }
                        }
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
                Some(Control::ExpectRtp(expect)) => {
                    if expect && !expect_rtp {
                        // Resumed: the timeout counts from now.
                        last_rtp = Instant::now();
                    }
                    expect_rtp = expect;
                }
                Some(Control::CallerHungUp) | None => {
                    link.finish_stream(&mut chunker, report, StopReason::CallEnded).await;
                    break Stage::End(SessionEnd::CallerHungUp);
                }
                Some(Control::Stop) => {
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
    if let (Some(to), false) = (rtcp_remote.target(), media_goes_on) {
        if sockets
            .rtcp
            .send_to(stats.final_report(Instant::now()), to)
            .await
            .is_ok()
        {
            stats.report_sent();
        }
    }
    report.rtp = stats.summary();
    let (tap, ports) = match stage {
        Stage::End(end) => return Exit::End(end),
        Stage::HandOff(tap, ports) => (tap, ports),
    };
    // The queued audio will never play: its marks come back now, as after `clear`.
    playout.clear();
    link.echo_due_marks(&mut playout, report);
    // The caller's audio not yet sent closes the caller-only part of the stream.
    link.flush_caller_audio(&mut chunker, report);
    Exit::HandOff(Box::new(HandOff {
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
    }))
}

/// One party's audio on its way to the bot after a hand-off.
struct TrackFeed {
    track: Track,
    /// 8 kHz tap frames to the bot's rate.
    resampler: Resampler,
    /// One frame at the bot's rate.
    pcm: Vec<i16>,
    chunker: Chunker,
    /// Stream time of this track's first sample, set by its first frame.
    origin_ms: Option<u64>,
}

impl TrackFeed {
    fn new(track: Track, timeline: &Timeline) -> Result<Self, String> {
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
    async fn send_chunks(
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
async fn listen_only(
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
                let Some(Ok(Message::Text(text))) = message else { continue };
                if !bot.bidirectional {
                    continue;
                }
                let now = Instant::now();
                if !warnings.within_budget(&mut budget, text.len(), now, report) {
                    continue;
                }
                match dialect::parse_into(bot.protocol, text.as_str(), &mut bot_pcm) {
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
                    Err(e) => {
                        report.bot_frames_invalid += 1;
                        if let Some(suppressed) = warnings.malformed.allow(now) {
                            warn!(error = %e, suppressed, "malformed bot frame ignored");
                        }
                    }
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

/// How the bidirectional loop ends.
enum Stage {
    End(SessionEnd),
    HandOff(mpsc::Receiver<TapFrame>, oneshot::Sender<RtpPorts>),
}

/// Waits until the call ends the session before the bot answered (digits and a hand-off
/// before then are dropped).
async fn wait_for_end(control: &mut mpsc::Receiver<Control>) -> SessionEnd {
    while let Some(command) = control.recv().await {
        match command {
            Control::CallerHungUp => return SessionEnd::CallerHungUp,
            Control::Stop => return SessionEnd::Stopped,
            _ => {}
        }
    }
    SessionEnd::CallerHungUp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_deadline_is_due_and_the_cap_wins_a_tie() {
        let t = Instant::now();
        let later = t + FRAME;
        assert_eq!(next_due(t, later), (t, Due::Frame));
        assert_eq!(next_due(later, t), (t, Due::SessionEnd));
        assert_eq!(next_due(t, t), (t, Due::SessionEnd));
    }

    #[tokio::test(start_paused = true)]
    async fn one_timer_paces_frames_until_the_session_cap() {
        let start = Instant::now();
        let mut pacer = Pacer::new(start + FRAME, FRAME);
        let cap = start + Duration::from_millis(50);
        let mut timer = Timer::new(pacer.next_deadline());
        let mut woke = Vec::new();
        loop {
            let (at, due) = next_due(pacer.next_deadline(), cap);
            timer.arm(at);
            // Re-arming for the same deadline leaves the timer as it is.
            timer.arm(at);
            timer.wait().await;
            let now = Instant::now();
            woke.push((now - start, due));
            if due == Due::SessionEnd {
                break;
            }
            assert_eq!(pacer.tick(now), 1);
        }
        let ms = Duration::from_millis;
        assert_eq!(
            woke,
            [
                (ms(20), Due::Frame),
                (ms(40), Due::Frame),
                (ms(50), Due::SessionEnd)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_armed_earlier_fires_at_the_new_deadline() {
        let start = Instant::now();
        let mut timer = Timer::new(start + Duration::from_secs(60));
        timer.arm(start + FRAME);
        timer.wait().await;
        assert_eq!(Instant::now() - start, FRAME);
    }
}
