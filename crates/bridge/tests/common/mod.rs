//! The bot session's test fixture: a port pool, the caller's RTP socket and a listening bot,
//! over real UDP sockets and a real WebSocket (tokio-tungstenite's server side).

#![allow(dead_code)] // each test file uses its own part of the fixture

use std::net::UdpSocket as StdUdpSocket;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use voicegate_bridge::dialect::Protocol;
use voicegate_bridge::session::{BotSettings, BridgeEvent, BridgeHandle, CallMedia, Codec};
use voicegate_bridge::ws::{BotUrl, ClientConfig};
use voicegate_rtp::latch::LatchPolicy;
use voicegate_rtp::PortPool;

pub const WAIT: Duration = Duration::from_secs(5);

pub type Bot = WebSocketStream<TcpStream>;

/// A range of `len` ports nobody holds now (found from an OS-chosen port).
pub fn free_range(len: u16) -> (u16, u16) {
    loop {
        let probe = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let base = probe.local_addr().unwrap().port() & !1;
        drop(probe);
        if base < 60000 && (base..base + len).all(|p| StdUdpSocket::bind(("127.0.0.1", p)).is_ok())
        {
            return (base, base + len - 1);
        }
    }
}

/// One call's fixture: the pool, the caller's RTP socket and a listening bot.
pub struct Call {
    pub pool: Arc<PortPool>,
    pub caller: UdpSocket,
    pub listener: TcpListener,
}

impl Call {
    /// A call whose bot socket takes little before the kernel stops accepting (a 4 KiB receive
    /// buffer): a bot that stops reading fills it, and then voicegate's queue, quickly.
    pub async fn with_slow_reading_bot() -> Call {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let (min, max) = free_range(4);
        Call {
            pool: PortPool::new(min, max),
            caller: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            listener: socket.listen(16).unwrap(),
        }
    }

    pub async fn new() -> Call {
        let (min, max) = free_range(4);
        Call {
            pool: PortPool::new(min, max),
            caller: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    pub fn media(&self) -> CallMedia {
        CallMedia {
            codec: Codec::Pcmu,
            payload_type: 0,
            telephone_event: None,
            signalled: Some(self.caller.local_addr().unwrap()),
            latching: LatchPolicy::Never,
            ssrc: 0x1234_5678,
            rtp_timeout: Duration::from_secs(30),
        }
    }

    pub fn bot(&self, protocol: Protocol, query: &str) -> BotSettings {
        let url = format!("ws://{}/bot{query}", self.listener.local_addr().unwrap());
        BotSettings {
            url: BotUrl::parse(&url).unwrap(),
            protocol,
            bidirectional: true,
            client: ClientConfig {
                handshake_timeout: WAIT,
                retries: 0,
                extra_ca_file: None,
                max_message_bytes: voicegate_bridge::ws::DEFAULT_MAX_MESSAGE_BYTES,
            },
            media_interval: Duration::from_millis(100),
            max_session: Duration::from_secs(60),
            playout_max: Duration::from_secs(10),
            final_playout_max: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_messages_per_sec: 500,
            max_bytes_per_sec: 1 << 20,
            silence_when_idle: false,
            call_sid: "CA1".into(),
            account_sid: "AC1".into(),
            from: "+15550100".into(),
            to: "+15550199".into(),
            extra_parameters: vec![],
        }
    }

    /// Starts the session and accepts the bot's side, past `connected` and `start`.
    pub async fn start(
        &self,
        protocol: Protocol,
        query: &str,
    ) -> (BridgeHandle, mpsc::Receiver<BridgeEvent>, Bot, u16) {
        self.start_with(self.bot(protocol, query)).await
    }

    /// [`Call::start`] with the bot settings given.
    pub async fn start_with(
        &self,
        settings: BotSettings,
    ) -> (BridgeHandle, mpsc::Receiver<BridgeEvent>, Bot, u16) {
        let ports = self.pool.allocate("127.0.0.1".parse().unwrap()).unwrap();
        let port = ports.rtp_port();
        let (events_tx, events) = mpsc::channel(32);
        let handle = BridgeHandle::start(ports, self.media(), settings, events_tx).unwrap();
        let (stream, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .unwrap()
            .unwrap();
        let mut bot = tokio_tungstenite::accept_async(stream).await.unwrap();
        assert_eq!(next_json(&mut bot).await["event"], "connected");
        assert_eq!(next_json(&mut bot).await["event"], "start");
        (handle, events, bot, port)
    }
}

pub async fn next_message(bot: &mut Bot) -> Option<Message> {
    tokio::time::timeout(WAIT, bot.next())
        .await
        .expect("nothing from the session")
        .map(|m| m.unwrap())
}

pub async fn next_json(bot: &mut Bot) -> Value {
    match next_message(bot).await {
        Some(Message::Text(text)) => serde_json::from_str(text.as_str()).unwrap(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// The next message that is not caller `media`.
pub async fn next_control(bot: &mut Bot) -> Value {
    loop {
        let v = next_json(bot).await;
        if v["event"] != "media" {
            return v;
        }
    }
}

pub async fn send(bot: &mut Bot, value: Value) {
    bot.send(Message::text(value.to_string())).await.unwrap();
}

/// The next event that is not a digit.
pub async fn next_event(events: &mut mpsc::Receiver<BridgeEvent>) -> BridgeEvent {
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await.unwrap() {
            Some(BridgeEvent::Dtmf(_)) => continue,
            Some(event) => return event,
            None => panic!("event channel closed"),
        }
    }
}

/// `seconds` of a loud 8 kHz tone as one Exotel `media` message (PCM16 LE, base64).
pub fn exotel_audio(seconds: f64) -> Value {
    use base64::Engine as _;
    let samples = (8000.0 * seconds) as usize;
    let pcm: Vec<u8> = (0..samples)
        .map(|i| ((i as f64 * 0.3).sin() * 12_000.0) as i16)
        .flat_map(i16::to_le_bytes)
        .collect();
    serde_json::json!({"event": "media", "media": {"payload": base64::engine::general_purpose::STANDARD.encode(pcm)}})
}

/// PCMU RTP with a loud tone, 20 ms each, from the caller to the session on `port` until
/// `until`.
pub async fn caller_talks(caller: &UdpSocket, port: u16, until: tokio::time::Instant) {
    let mut seq = 0u16;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    while tokio::time::Instant::now() < until {
        ticker.tick().await;
        let mut packet = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        packet[2..4].copy_from_slice(&seq.to_be_bytes());
        packet[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        packet.extend((0..160).map(|i| if i % 16 < 8 { 0x10 } else { 0x90 }));
        let _ = caller.send_to(&packet, ("127.0.0.1", port)).await;
        seq = seq.wrapping_add(1);
    }
}
