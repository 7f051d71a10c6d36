//! How a bot session ends, over a real WebSocket and real UDP: the bot's last words are heard
//! before its close, hang-up or transfer takes effect (bounded by `final_playout_max`); both
//! sides of the WebSocket close handshake (RFC 6455 §5.5.1); and the caller's last partial chunk
//! of audio reaches the bot before `stop`.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::*;
use futures_util::StreamExt;
use serde_json::json;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use voicegate_bridge::dialect::Protocol;
use voicegate_bridge::session::{BridgeEvent, SessionEnd};

/// Counts the RTP packets the caller receives until the session reports its end (every packet
/// here is bot audio: the fixture sends no silence). Returns the end, the packets before it,
/// and when the end came.
async fn caller_hears_until_end(
    caller: &UdpSocket,
    events: &mut mpsc::Receiver<BridgeEvent>,
    wait: Duration,
) -> (BridgeEvent, usize, Instant) {
    let mut packets = 0;
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + wait;
    loop {
        tokio::select! {
            received = caller.recv_from(&mut buf) => {
                if received.is_ok_and(|(n, _)| n == 12 + 160) {
                    packets += 1;
                }
            }
            event = events.recv() => match event {
                Some(BridgeEvent::Dtmf(_)) => {}
                Some(event) => return (event, packets, Instant::now()),
                None => panic!("event channel closed"),
            },
            _ = tokio::time::sleep_until(deadline) => panic!("no end within {wait:?} ({packets} packets heard)"),
        }
    }
}

/// What the bot's side reads after it sent Close: our answer, then the end of the stream.
async fn close_answer(bot: &mut Bot) -> (Option<CloseFrame>, Option<String>) {
    loop {
        match tokio::time::timeout(WAIT, bot.next())
            .await
            .expect("no answer")
        {
            Some(Ok(Message::Close(frame))) => {
                let after = bot.next().await.map(|m| format!("{m:?}"));
                return (frame, after);
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("the bot's close was not answered: {e}"),
            None => panic!("the connection ended without a Close"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_that_speaks_then_closes_is_heard_and_its_close_answered() {
    let call = Call::new().await;
    let (_handle, mut events, mut bot, _) = call.start(Protocol::Exotel, "").await;
    // Exotel's documented pattern: 3 s of speech in one message, then disconnect.
    send(&mut bot, exotel_audio(3.0)).await;
    let closed_at = Instant::now();
    bot.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "goodbye".into(),
    }))
    .await
    .unwrap();
    let answer = tokio::spawn(async move { close_answer(&mut bot).await });

    let (end, packets, ended_at) =
        caller_hears_until_end(&call.caller, &mut events, Duration::from_secs(10)).await;
    assert_eq!(
        end,
        BridgeEvent::Ended(SessionEnd::BotClosed("goodbye".into()))
    );
    // 3 s is 150 packets of 20 ms; a few may still be in flight when the end is reported.
    assert!(
        packets >= 145,
        "the caller heard {packets} of 150 packets of the goodbye"
    );
    let held = ended_at - closed_at;
    assert!(held >= Duration::from_millis(2800), "ended after {held:?}");

    let (frame, after) = answer.await.unwrap();
    let frame = frame.expect("our Close carries a code");
    assert_eq!(frame.code, CloseCode::Normal, "the bot's code is echoed");
    assert_eq!(after, None, "the stream ends cleanly after the Close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_goodbye_is_cut_at_final_playout_max() {
    let call = Call::new().await;
    let mut settings = call.bot(Protocol::Exotel, "");
    settings.final_playout_max = Duration::from_secs(1);
    let (_handle, mut events, mut bot, _) = call.start_with(settings).await;
    send(&mut bot, exotel_audio(5.0)).await;
    let closed_at = Instant::now();
    bot.close(None).await.unwrap();
    let (end, packets, ended_at) =
        caller_hears_until_end(&call.caller, &mut events, Duration::from_secs(10)).await;
    assert!(
        matches!(end, BridgeEvent::Ended(SessionEnd::BotClosed(_))),
        "{end:?}"
    );
    let held = ended_at - closed_at;
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&held),
        "held {held:?} for a 1 s limit"
    );
    assert!(
        (40..120).contains(&packets),
        "{packets} packets for about 1 s of playout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_waits_for_the_audio_before_it_then_stop_and_close_1000() {
    let call = Call::new().await;
    let (_handle, mut events, mut bot, _) = call.start(Protocol::Exotel, "").await;
    send(&mut bot, exotel_audio(1.0)).await;
    send(&mut bot, json!({"event": "hangup"})).await;
    let sent_at = Instant::now();
    let (end, packets, ended_at) =
        caller_hears_until_end(&call.caller, &mut events, Duration::from_secs(10)).await;
    assert_eq!(end, BridgeEvent::Ended(SessionEnd::BotHangup));
    assert!(packets >= 45, "the caller heard {packets} of 50 packets");
    assert!(ended_at - sent_at >= Duration::from_millis(900));

    let stop = next_control(&mut bot).await;
    assert_eq!(stop["event"], "stop", "{stop}");
    assert_eq!(stop["stop"]["reason"], "stopped");
    match next_message(&mut bot).await {
        Some(Message::Close(Some(frame))) => {
            assert_eq!(frame.code, CloseCode::Normal);
            assert!(!frame.reason.is_empty(), "a short reason comes with 1000");
        }
        other => panic!("expected our Close with 1000, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_is_reported_once_the_words_before_it_were_heard() {
    let call = Call::new().await;
    let (handle, mut events, mut bot, _) = call.start(Protocol::Exotel, "").await;
    send(&mut bot, exotel_audio(1.0)).await;
    send(
        &mut bot,
        json!({"event": "transfer", "transfer": {"to": "sip:agent@pbx.example"}}),
    )
    .await;
    let sent_at = Instant::now();
    let (event, packets, at) =
        caller_hears_until_end(&call.caller, &mut events, Duration::from_secs(10)).await;
    assert_eq!(
        event,
        BridgeEvent::Transfer {
            to: "sip:agent@pbx.example".into()
        }
    );
    assert!(
        packets >= 45,
        "only {packets} of 50 packets heard before the transfer"
    );
    assert!(at - sent_at >= Duration::from_millis(900));
    // The call then takes the caller over: the bot gets `stop` and a clean close.
    handle.stop();
    let stop = next_control(&mut bot).await;
    assert_eq!(stop["stop"]["reason"], "stopped");
    assert!(matches!(
        next_message(&mut bot).await,
        Some(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            ..
        })))
    ));
    let (_, ports) = handle.finish().await;
    assert!(ports.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_hang_up_sends_stop_then_close_1000_with_a_reason() {
    for protocol in [Protocol::Exotel, Protocol::Twilio] {
        let call = Call::new().await;
        let (handle, mut events, mut bot, _) = call.start(protocol, "").await;
        handle.caller_hung_up();
        let stop = next_control(&mut bot).await;
        assert_eq!(stop["event"], "stop", "{protocol}: {stop}");
        match next_message(&mut bot).await {
            Some(Message::Close(Some(frame))) => {
                assert_eq!(frame.code, CloseCode::Normal, "{protocol}");
                assert_eq!(frame.reason.as_str(), "call ended");
            }
            other => panic!("{protocol}: expected Close 1000, got {other:?}"),
        }
        // tungstenite answers our Close; the session then ends without waiting out CLOSE_WAIT.
        assert_eq!(bot.next().await.map(|m| format!("{m:?}")), None);
        match tokio::time::timeout(WAIT, events.recv()).await.unwrap() {
            Some(BridgeEvent::Ended(SessionEnd::CallerHungUp)) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_partial_chunk_reaches_the_bot_before_stop() {
    let call = Call::new().await;
    let mut settings = call.bot(Protocol::Exotel, "");
    settings.media_interval = Duration::from_millis(200);
    let (handle, _events, mut bot, port) = call.start_with(settings).await;
    let caller = call.caller;
    let talking = tokio::spawn(async move {
        caller_talks(&caller, port, Instant::now() + Duration::from_secs(3)).await;
    });
    // Two full chunks, then hang up half-way through the third: 100 ms of it is waiting.
    for _ in 0..2 {
        let media = next_json(&mut bot).await;
        assert_eq!(media["event"], "media");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    handle.caller_hung_up();
    let mut last_media = None;
    loop {
        let v = next_json(&mut bot).await;
        match v["event"].as_str() {
            Some("media") => last_media = Some(v),
            Some("stop") => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let last = last_media.expect("media before stop");
    let bytes = STANDARD
        .decode(last["media"]["payload"].as_str().unwrap())
        .unwrap();
    // 200 ms at 8 kHz PCM16 is 3,200 bytes: the last message is the partial chunk.
    assert!(
        !bytes.is_empty() && bytes.len() < 3200,
        "last media before stop has {} bytes (a full chunk is 3200)",
        bytes.len()
    );
    talking.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_sees_the_owning_account_and_twilio_bots_the_numbers() {
    let call = Call::new().await;
    let mut settings = call.bot(Protocol::Twilio, "");
    settings.account_sid = "AC-owner".into();
    settings.extra_parameters = vec![("to_number".into(), "flow wins".into())];
    let ports = call.pool.allocate("127.0.0.1".parse().unwrap()).unwrap();
    let (events_tx, _events) = mpsc::channel(32);
    let handle =
        voicegate_bridge::session::BridgeHandle::start(ports, call.media(), settings, events_tx)
            .unwrap();
    let (stream, _) = call.listener.accept().await.unwrap();
    let mut bot = tokio_tungstenite::accept_async(stream).await.unwrap();
    assert_eq!(next_json(&mut bot).await["event"], "connected");
    let start = next_json(&mut bot).await;
    assert_eq!(start["start"]["accountSid"], "AC-owner");
    assert_eq!(
        start["start"]["customParameters"],
        json!({"to_number": "flow wins", "from_number": "+15550100"})
    );
    handle.caller_hung_up();
    let stop = next_control(&mut bot).await;
    assert_eq!(stop["stop"]["accountSid"], "AC-owner");
    bot.close(None).await.ok();
}
