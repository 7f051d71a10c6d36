//! One bridged call, one task: the caller's RTP is released in order as it arrives, decoded,
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
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant, Sleep};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsProtocolError, Message};
use tracing::{debug, info, warn};
use voicegate_audio::{g711, G711Plc, OpusDecoder, OpusEncoder, Resampler};
use voicegate_rtp::arrival::{ArrivalBuffer, ArrivalConfig, Release};
use voicegate_rtp::dtmf::DtmfEvent;
use voicegate_rtp::latch::LatchPolicy;
use voicegate_rtp::leg::{LegSetup, LegSockets, MediaLeg, RtcpDemux, RtpWriter, RECV_BYTES};
use voicegate_rtp::pool::RtpPorts;
use voicegate_rtp::stats::StatsSummary;

use crate::dialect::{self, Encoder, Protocol, StopReason, StreamInfo};
use crate::limits::{BotBudget, WarnLimiter, MAX_MARK_NAME_BYTES};
use crate::playout::{AfterPlayout, Chunker, Frame, Pacer, PlayoutQueue};
use crate::tap::{TapFrame, Track, TAP_FRAME_SAMPLES};
use crate::ws::{self, BotSocket, BotUrl, ClientConfig, TextFrames};

mod direct;
mod link;
mod listen;
mod pipeline;

use direct::*;
use link::*;
use listen::*;
use pipeline::*;

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

impl CallMedia {
    /// This side as a media leg: any RTP the peer sends is its RTP, its RTCP is on the next
    /// port, it is expected to send, and its digits count in the audio's clock (RFC 4733 §2.1:
    /// telephone-event/48000 with Opus).
    pub(crate) fn leg_setup(&self, cname: String) -> LegSetup {
        LegSetup {
            ssrc: self.ssrc,
            cname,
            codec: self.codec,
            latching: self.latching,
            signalled: self.signalled,
            rtcp_mux: false,
            rtcp_demux: RtcpDemux::WhenMuxed,
            telephone_event: self.telephone_event,
            only_payload_type: None,
            dtmf_clock: self.codec.clock_rate(),
            expect_rtp: true,
            rtp_timeout: self.rtp_timeout,
        }
    }
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
        let sockets = LegSockets::from_ports(ports)?;
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

async fn run(
    sockets: LegSockets,
    media: CallMedia,
    bot: BotSettings,
    mut control: mpsc::Receiver<Control>,
    events: mpsc::Sender<BridgeEvent>,
) -> Outcome {
    let mut report = SessionReport::default();
    let (exit, sockets) = session(sockets, &media, &bot, &mut control, &events, &mut report).await;
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
