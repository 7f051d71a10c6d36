//! A light echo bot: a WebSocket server speaking the bot side of the Exotel or Twilio dialect
//! as voicegate sends it. Each caller `media` frame is read for markers (counted, and its
//! latency taken) and sent straight back as a bot `media` frame. It reads only what it needs
//! (the event name, the stream id, the payload) by searching the text, so that it costs the
//! machine little next to voicegate.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use voicegate_audio::g711;

use crate::board::Board;
use crate::marker::{self, Marker};

/// Which dialect the bot speaks (set by the flow voicegate is configured with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Exotel,
    Twilio,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Exotel => "exotel",
            Dialect::Twilio => "twilio",
        }
    }

    fn stream_key(self) -> &'static str {
        match self {
            Dialect::Exotel => "stream_sid",
            Dialect::Twilio => "streamSid",
        }
    }
}

/// Accepts bot connections on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, dialect: Dialect, board: Arc<Board>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let board = board.clone();
        tokio::spawn(async move {
            board.counters.bot_open.fetch_add(1, Relaxed);
            let _ = connection(stream, dialect, &board).await;
            board.counters.bot_open.fetch_sub(1, Relaxed);
        });
    }
}

/// The string value of `"key":"…"` in `text`, if there.
fn string_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!("\"{key}\":\"");
    let start = text.find(&pattern)? + pattern.len();
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

async fn connection(stream: TcpStream, dialect: Dialect, board: &Board) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    // Bot messages are a few KB: no need for tungstenite's 128 KiB default read buffer.
    let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
    let mut ws = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await?;
    let mut echo_prefix = String::new();
    let mut audio = Vec::with_capacity(4096);
    let mut markers: Vec<Marker> = Vec::with_capacity(16);
    let mut last_seen: Option<u16> = None;
    while let Some(message) = ws.next().await {
        let text = match message? {
            Message::Text(text) => text,
            Message::Close(_) => break,
            _ => continue,
        };
        let text = text.as_str();
        if text.starts_with("{\"event\":\"media\"") || string_field(text, "event") == Some("media")
        {
            let Some(payload) = string_field(text, "payload") else {
                board.counters.bot_bad_frames.fetch_add(1, Relaxed);
                continue;
            };
            audio.clear();
            if base64::engine::general_purpose::STANDARD
                .decode_vec(payload, &mut audio)
                .is_err()
            {
                board.counters.bot_bad_frames.fetch_add(1, Relaxed);
                continue;
            }
            markers.clear();
            let unaligned = match dialect {
                Dialect::Exotel => marker::scan(
                    audio.len() / 2,
                    |i| i16::from_le_bytes([audio[2 * i], audio[2 * i + 1]]),
                    |m| markers.push(m),
                ),
                Dialect::Twilio => marker::scan(
                    audio.len(),
                    |i| g711::ulaw_decode(audio[i]),
                    |m| markers.push(m),
                ),
            };
            if unaligned {
                board.counters.unaligned.fetch_add(1, Relaxed);
            }
            for m in &markers {
                if last_seen.is_none_or(|last| m.seq > last) {
                    board.counters.up_delivered.fetch_add(1, Relaxed);
                    last_seen = Some(m.seq);
                }
            }
            if let Some(last) = markers.last() {
                board.bot_received_frame(*last);
            }
            let reply = format!("{echo_prefix}{payload}\"}}}}");
            for (i, m) in markers.iter().enumerate() {
                board.bot_sent(*m, i == 0);
            }
            ws.send(Message::text(reply)).await?;
        } else {
            match string_field(text, "event") {
                Some("start") => {
                    let sid = string_field(text, dialect.stream_key()).unwrap_or_default();
                    echo_prefix = format!(
                        "{{\"event\":\"media\",\"{}\":\"{sid}\",\"media\":{{\"payload\":\"",
                        dialect.stream_key()
                    );
                }
                Some("stop") => break,
                _ => {}
            }
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_by_key() {
        let text = r#"{"event":"media","stream_sid":"s1","media":{"chunk":"2","payload":"AAA="}}"#;
        assert_eq!(string_field(text, "event"), Some("media"));
        assert_eq!(string_field(text, "stream_sid"), Some("s1"));
        assert_eq!(string_field(text, "payload"), Some("AAA="));
        assert_eq!(string_field(text, "streamSid"), None);
    }
}
