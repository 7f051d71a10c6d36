//! The example bot voicegate ships: an echo bot that plays the caller's words back.
//!
//! It is a WebSocket *server* that speaks the bot side of the Exotel dialect by default and the
//! Twilio Media Streams dialect when the `start` message uses Twilio's camelCase keys
//! (`streamSid`, `start.callSid`). Every `media` payload from the caller is sent back unchanged
//! (same encoding, same rate) as a bot `media` message, after [`EchoBotOptions::delay`], and
//! followed by a `mark` named `echo-<n>`. `dtmf` is logged; `stop` closes the connection.
//!
//! It parses with [`serde_json::Value`]: this is an example, written for clarity.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};

/// How the echo bot behaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EchoBotOptions {
    /// How long each chunk of caller audio is held before it is echoed (default 0).
    pub delay: Duration,
}

/// How long a connecting client may take to complete the WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accept WebSocket connections on `listener` for ever, each handled on its own task.
///
/// Returns only when accepting fails with an error that is not about one connection.
pub async fn serve(listener: TcpListener, options: EchoBotOptions) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, delay_ms = options.delay.as_millis() as u64, "echo bot listening");
    }
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) if is_per_connection(&e) => {
                tracing::debug!(error = %e, "echo bot: accept failed for one connection");
                continue;
            }
            Err(e) => return Err(e),
        };
        let options = options.clone();
        tokio::spawn(async move {
            match handle_connection(stream, peer, options).await {
                Ok(()) => tracing::info!(%peer, "echo bot: connection closed"),
                Err(e) => tracing::warn!(%peer, error = %e, "echo bot: connection failed"),
            }
        });
    }
}

fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    )
}

/// Which bot protocol the peer speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Exotel,
    Twilio,
}

/// One connection's state.
struct Session {
    peer: SocketAddr,
    dialect: Dialect,
    stream_sid: Option<String>,
    /// Caller audio waiting to be echoed: when it is due, and its base64 payload.
    pending: VecDeque<(Instant, String)>,
    /// Number of chunks echoed so far (names the marks).
    echoed: u64,
    delay: Duration,
}

/// What to do after a message from the caller's side.
enum Next {
    Continue,
    Stop,
}

async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    options: EchoBotOptions,
) -> Result<(), tungstenite::Error> {
    let _ = stream.set_nodelay(true);
    let mut ws = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        // Small buffers, as voicegate's own side: the bot serves many calls.
        tokio_tungstenite::accept_async_with_config(stream, Some(crate::ws::socket_config())),
    )
    .await
    {
        Ok(ws) => ws?,
        Err(_) => {
            tracing::warn!(%peer, "echo bot: no WebSocket handshake in time");
            return Ok(());
        }
    };
    tracing::info!(%peer, "echo bot: connection open");

    let mut session = Session {
        peer,
        dialect: Dialect::Exotel,
        stream_sid: None,
        pending: VecDeque::new(),
        echoed: 0,
        delay: options.delay,
    };

    loop {
        let due = session.pending.front().map(|(at, _)| *at);
        tokio::select! {
            // Echo what is due before reading on, so a `stop` right behind the audio does not
            // overtake it.
            biased;
            _ = sleep_until(due) => {
                if let Some((_, payload)) = session.pending.pop_front() {
                    session.echoed += 1;
                    let name = format!("echo-{}", session.echoed);
                    ws.send(session.media(&payload)).await?;
                    ws.send(session.mark(&name)).await?;
                }
            }
            message = ws.next() => match message {
                None => return Ok(()),
                Some(Err(e)) => return Err(e),
                Some(Ok(Message::Text(text))) => {
                    if let Next::Stop = session.on_text(text.as_str()) {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) => return Ok(()),
                Some(Ok(Message::Binary(data))) => {
                    tracing::debug!(peer = %session.peer, len = data.len(), "echo bot: binary frame ignored");
                }
                Some(Ok(_)) => {} // ping/pong: tungstenite answers pings itself
            }
        }
    }

    // `stop`: the call is over; close and wait briefly for the peer's close.
    ws.close(None).await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    Ok(())
}

/// Sleep until `at`, or for ever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A field that may be a string or a number, as text.
fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Session {
    fn on_text(&mut self, text: &str) -> Next {
        let message: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(peer = %self.peer, error = %e, "echo bot: message is not JSON");
                return Next::Continue;
            }
        };
        let event = message.get("event").and_then(Value::as_str).unwrap_or("");
        match event {
            "connected" => tracing::debug!(peer = %self.peer, "echo bot: connected"),
            "start" => self.on_start(&message),
            "media" => {
                let payload = message.pointer("/media/payload").and_then(Value::as_str);
                match payload {
                    Some(payload) if !payload.is_empty() => self
                        .pending
                        .push_back((Instant::now() + self.delay, payload.to_string())),
                    _ => tracing::warn!(peer = %self.peer, "echo bot: media without payload"),
                }
            }
            "dtmf" => {
                let digit = message.pointer("/dtmf/digit").and_then(text_of);
                let duration = message.pointer("/dtmf/duration").and_then(text_of);
                tracing::info!(
                    peer = %self.peer,
                    digit = digit.as_deref().unwrap_or("?"),
                    duration_ms = duration.as_deref().unwrap_or("-"),
                    "echo bot: DTMF"
                );
            }
            "mark" => {
                let name = message.pointer("/mark/name").and_then(Value::as_str);
                tracing::debug!(peer = %self.peer, mark = name.unwrap_or(""), "echo bot: played");
            }
            "stop" => {
                let reason = message.pointer("/stop/reason").and_then(Value::as_str);
                tracing::info!(
                    peer = %self.peer,
                    reason = reason.unwrap_or("-"),
                    echoed = self.echoed,
                    "echo bot: stop"
                );
                return Next::Stop;
            }
            other => tracing::debug!(peer = %self.peer, event = other, "echo bot: event ignored"),
        }
        Next::Continue
    }

    fn on_start(&mut self, message: &Value) {
        let start = message.get("start").unwrap_or(&Value::Null);
        let has = |v: &Value, key: &str| v.get(key).is_some();
        let twilio = has(start, "callSid")
            || ((has(message, "streamSid") || has(start, "streamSid"))
                && !has(start, "call_sid")
                && !has(message, "stream_sid"));
        self.dialect = if twilio {
            Dialect::Twilio
        } else {
            Dialect::Exotel
        };
        let sid = match self.dialect {
            Dialect::Twilio => ["/streamSid", "/start/streamSid"],
            Dialect::Exotel => ["/stream_sid", "/start/stream_sid"],
        }
        .iter()
        .chain(["/streamSid", "/start/streamSid"].iter())
        .find_map(|p| message.pointer(p).and_then(text_of));
        self.stream_sid = sid;
        let (call, rate) = match self.dialect {
            Dialect::Twilio => ("/start/callSid", "/start/mediaFormat/sampleRate"),
            Dialect::Exotel => ("/start/call_sid", "/start/media_format/sample_rate"),
        };
        tracing::info!(
            peer = %self.peer,
            dialect = ?self.dialect,
            call_sid = message.pointer(call).and_then(text_of).as_deref().unwrap_or("-"),
            stream_sid = self.stream_sid.as_deref().unwrap_or("-"),
            sample_rate = message.pointer(rate).and_then(text_of).as_deref().unwrap_or("8000"),
            "echo bot: start"
        );
    }

    /// A bot message of `event` in this session's dialect, with the stream SID when known.
    fn message(&self, event: &str, key: &str, body: Value) -> Message {
        let mut message = json!({ "event": event });
        if let Some(sid) = &self.stream_sid {
            let sid_key = match self.dialect {
                Dialect::Exotel => "stream_sid",
                Dialect::Twilio => "streamSid",
            };
            message[sid_key] = Value::String(sid.clone());
        }
        message[key] = body;
        Message::text(message.to_string())
    }

    fn media(&self, payload: &str) -> Message {
        self.message("media", "media", json!({ "payload": payload }))
    }

    fn mark(&self, name: &str) -> Message {
        self.message("mark", "mark", json!({ "name": name }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::connect_async;

    async fn start_bot(options: EchoBotOptions) -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let handle = tokio::spawn(async move {
            serve(listener, options).await.unwrap();
        });
        (url, handle)
    }

    type Client = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    async fn next_json(client: &mut Client) -> Value {
        let message = tokio::time::timeout(Duration::from_secs(5), client.next())
            .await
            .expect("no reply from the echo bot")
            .unwrap()
            .unwrap();
        serde_json::from_str(message.to_text().unwrap()).unwrap()
    }

    async fn send(client: &mut Client, value: Value) {
        client.send(Message::text(value.to_string())).await.unwrap();
    }

    /// After `stop` the bot closes: the client sees a close (or the end of the stream).
    async fn expect_close(client: &mut Client) {
        let next = tokio::time::timeout(Duration::from_secs(5), client.next())
            .await
            .expect("bot did not close");
        assert!(
            matches!(next, None | Some(Ok(Message::Close(_)))),
            "{next:?}"
        );
    }

    #[tokio::test]
    async fn echoes_exotel_media_with_marks_and_closes_on_stop() {
        let (url, bot) = start_bot(EchoBotOptions::default()).await;
        let (mut client, _) = connect_async(url.as_str()).await.unwrap();
        send(&mut client, json!({"event": "connected"})).await;
        send(
            &mut client,
            json!({
                "event": "start", "sequence_number": "1", "stream_sid": "S1",
                "start": {
                    "stream_sid": "S1", "call_sid": "C1", "account_sid": "A1",
                    "from": "+911", "to": "+912", "custom_parameters": {},
                    "media_format": {"encoding": "base64", "sample_rate": "8000", "bit_rate": "128kbps"}
                }
            }),
        )
        .await;
        let payloads = ["AAABAAIAAwA=", "BAAFAAYABwA="];
        for (i, payload) in payloads.iter().enumerate() {
            send(
                &mut client,
                json!({
                    "event": "media", "sequence_number": (i + 3).to_string(), "stream_sid": "S1",
                    "media": {"chunk": (i + 1).to_string(), "timestamp": (i * 100).to_string(), "payload": payload}
                }),
            )
            .await;
        }
        send(
            &mut client,
            json!({"event": "dtmf", "stream_sid": "S1", "dtmf": {"digit": "5", "duration": "80"}}),
        )
        .await;
        for (i, payload) in payloads.iter().enumerate() {
            let media = next_json(&mut client).await;
            assert_eq!(media["event"], "media");
            assert_eq!(media["stream_sid"], "S1");
            assert_eq!(media["media"]["payload"], *payload);
            let mark = next_json(&mut client).await;
            assert_eq!(mark["event"], "mark");
            assert_eq!(mark["stream_sid"], "S1");
            assert_eq!(mark["mark"]["name"], format!("echo-{}", i + 1));
        }
        send(
            &mut client,
            json!({"event": "stop", "sequence_number": "6", "stream_sid": "S1",
                   "stop": {"call_sid": "C1", "account_sid": "A1", "reason": "callended"}}),
        )
        .await;
        expect_close(&mut client).await;
        bot.abort();
    }

    #[tokio::test]
    async fn answers_twilio_in_twilio_keys() {
        let (url, bot) = start_bot(EchoBotOptions::default()).await;
        let (mut client, _) = connect_async(url.as_str()).await.unwrap();
        send(
            &mut client,
            json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
        )
        .await;
        send(
            &mut client,
            json!({
                "event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
                "start": {"accountSid": "AC1", "streamSid": "MZ1", "callSid": "CA1",
                          "tracks": ["inbound"], "customParameters": {},
                          "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}
            }),
        )
        .await;
        send(
            &mut client,
            json!({"event": "media", "sequenceNumber": "2", "streamSid": "MZ1",
                   "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": "//////8="}}),
        )
        .await;
        let media = next_json(&mut client).await;
        assert_eq!(media["event"], "media");
        assert_eq!(media["streamSid"], "MZ1");
        assert!(media.get("stream_sid").is_none());
        assert_eq!(media["media"]["payload"], "//////8=");
        let mark = next_json(&mut client).await;
        assert_eq!(mark["streamSid"], "MZ1");
        assert_eq!(mark["mark"]["name"], "echo-1");
        send(
            &mut client,
            json!({"event": "stop", "sequenceNumber": "3", "streamSid": "MZ1",
                   "stop": {"accountSid": "AC1", "callSid": "CA1"}}),
        )
        .await;
        expect_close(&mut client).await;
        bot.abort();
    }

    #[tokio::test]
    async fn echoes_media_larger_than_its_read_buffer() {
        let (url, bot) = start_bot(EchoBotOptions::default()).await;
        let (mut client, _) = connect_async(url.as_str()).await.unwrap();
        // 10 s of 8 kHz slin in base64: many times the bot's read buffer.
        let payload = "AAEC".repeat(40_000);
        send(
            &mut client,
            json!({"event": "media", "media": {"payload": payload}}),
        )
        .await;
        let media = next_json(&mut client).await;
        assert_eq!(media["media"]["payload"], payload.as_str());
        assert_eq!(next_json(&mut client).await["mark"]["name"], "echo-1");
        send(&mut client, json!({"event": "stop"})).await;
        expect_close(&mut client).await;
        bot.abort();
    }

    #[tokio::test]
    async fn delay_holds_audio_and_connections_are_independent() {
        let delay = Duration::from_millis(150);
        let (url, bot) = start_bot(EchoBotOptions { delay }).await;
        let (mut first, _) = connect_async(url.as_str()).await.unwrap();
        let (mut second, _) = connect_async(url.as_str()).await.unwrap();
        // No start at all (some peers skip it): Exotel keys, no SID.
        let sent = Instant::now();
        send(
            &mut first,
            json!({"event": "media", "media": {"payload": "AQA="}}),
        )
        .await;
        send(
            &mut second,
            json!({"event": "media", "media": {"payload": "AgA="}}),
        )
        .await;
        let a = next_json(&mut first).await;
        let b = next_json(&mut second).await;
        assert!(sent.elapsed() >= delay, "{:?}", sent.elapsed());
        assert_eq!(a["media"]["payload"], "AQA=");
        assert_eq!(b["media"]["payload"], "AgA=");
        assert!(a.get("stream_sid").is_none());
        assert_eq!(next_json(&mut first).await["mark"]["name"], "echo-1");
        assert_eq!(next_json(&mut second).await["mark"]["name"], "echo-1");
        // Not JSON: ignored, the connection stays up.
        first.send(Message::text("garbage")).await.unwrap();
        send(&mut first, json!({"event": "stop"})).await;
        expect_close(&mut first).await;
        second.close(None).await.unwrap();
        bot.abort();
    }
}
