//! A WebSocket server standing in for a bot, and the calls that reach it.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use voicegate_sip::message::Message as Sip;

use super::uac::Uac;

/// One connection to the test bot: what voicegate sent (with arrival times), and a way to
/// send frames back.
pub struct BotConn {
    pub received: mpsc::UnboundedReceiver<(Instant, Value)>,
    pub send: mpsc::UnboundedSender<Message>,
}

impl BotConn {
    /// The next frame within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<(Instant, Value)> {
        tokio::time::timeout(wait, self.received.recv())
            .await
            .ok()
            .flatten()
    }

    /// Frames until one with this event arrives (the ones skipped are returned too).
    pub async fn until(&mut self, event: &str, wait: Duration) -> (Vec<Value>, (Instant, Value)) {
        let mut skipped = Vec::new();
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some((at, v)) if v["event"] == event => return (skipped, (at, v)),
                Some((_, v)) => skipped.push(v),
                None => panic!(
                    "no {event} event within {wait:?}; got {} others",
                    skipped.len()
                ),
            }
        }
    }

    pub fn send_json(&self, value: Value) {
        self.send.send(Message::text(value.to_string())).unwrap();
    }
}

/// A WebSocket server standing in for the bot; each accepted connection comes out of the
/// receiver.
pub async fn bot_server() -> (SocketAddr, mpsc::UnboundedReceiver<BotConn>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (conn_tx, conn_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                continue;
            };
            let (mut sink, mut stream) = ws.split();
            let (recv_tx, recv_rx) = mpsc::unbounded_channel();
            let (send_tx, mut send_rx) = mpsc::unbounded_channel::<Message>();
            tokio::spawn(async move {
                while let Some(Ok(message)) = stream.next().await {
                    match message {
                        Message::Text(text) => {
                            let value: Value =
                                serde_json::from_str(text.as_str()).expect("voicegate sends JSON");
                            let _ = recv_tx.send((Instant::now(), value));
                        }
                        Message::Close(_) => {
                            let _ = recv_tx.send((Instant::now(), json!({"event": "<closed>"})));
                            break;
                        }
                        _ => {}
                    }
                }
            });
            tokio::spawn(async move {
                while let Some(message) = send_rx.recv().await {
                    let close = matches!(message, Message::Close(_));
                    if sink.send(message).await.is_err() || close {
                        break;
                    }
                }
            });
            let _ = conn_tx.send(BotConn {
                received: recv_rx,
                send: send_tx,
            });
        }
    });
    (addr, conn_rx)
}

/// Calls `number` offering `formats` (with `extra` headers) and acknowledges the 200; returns
/// the UA and where voicegate wants its RTP.
pub async fn answered_call(
    server: SocketAddr,
    number: &str,
    formats: &str,
    extra: &str,
) -> (Uac, SocketAddr) {
    let mut uac = Uac::new(server).await;
    let ok = uac.call(number, formats, extra).await;
    assert_eq!(ok.status, 200);
    let target = Uac::media_target(&ok);
    (uac, target)
}

/// The bot's side of the next call.
pub async fn next_bot(conns: &mut mpsc::UnboundedReceiver<BotConn>) -> BotConn {
    tokio::time::timeout(Duration::from_secs(5), conns.recv())
        .await
        .expect("voicegate connects to the bot")
        .unwrap()
}

/// The BYE voicegate sends within `wait`.
pub async fn expect_bye(uac: &Uac, wait: Duration) -> voicegate_sip::message::Request {
    loop {
        match uac.recv(wait).await {
            Some(Sip::Request(r)) if r.method == "BYE" => return r,
            Some(_) => continue,
            None => panic!("no BYE within {wait:?}"),
        }
    }
}
