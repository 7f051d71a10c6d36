//! What one misbehaving bot can make its session do, over a real WebSocket and real UDP: a bot
//! that stops reading is ended after `write_timeout` while the caller's RTP goes on; a message
//! over `max_message_bytes` ends the step with Close 1009; a flood of messages is held to the
//! bot's budget and long mark names are refused.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use voicegate_bridge::dialect::Protocol;
use voicegate_bridge::session::{BridgeEvent, SessionEnd};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_that_stops_reading_is_ended_while_the_caller_keeps_hearing_it() {
    // What voicegate sends fills the bot's small receive buffer, then its queue to the bot.
    let call = Call::with_slow_reading_bot().await;
    // 24 kHz audio in 20 ms messages: the most bytes a second a session sends a bot.
    let mut settings = call.bot(Protocol::Exotel, "?sample-rate=24000");
    settings.media_interval = Duration::from_millis(20);
    settings.write_timeout = Duration::from_secs(2);
    let (handle, mut events, mut bot, port) = call.start_with(settings).await;
    // The bot queues a long answer, then reads nothing more.
    send(&mut bot, exotel_audio(30.0)).await;
    let talking_until = Instant::now() + Duration::from_secs(30);
    let caller = &call.caller;
    let talk = caller_talks(caller, port, talking_until);
    let listen = async {
        let mut heard = 0usize;
        let mut buf = [0u8; 1500];
        let started = Instant::now();
        loop {
            tokio::select! {
                received = caller.recv_from(&mut buf) => {
                    if received.is_ok_and(|(n, _)| n == 12 + 160) {
                        heard += 1;
                    }
                }
                event = events.recv() => return (event, heard, started.elapsed()),
            }
        }
    };
    let (event, heard, after) = tokio::select! {
        result = listen => result,
        _ = talk => panic!("the session never ended its stalled bot"),
    };
    match event {
        Some(BridgeEvent::Ended(SessionEnd::BotClosed(why))) => {
            assert!(why.contains("read nothing"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    // The caller heard the bot's audio the whole time: one packet per 20 ms.
    let expected = after.as_millis() as usize / 20;
    assert!(
        heard * 10 >= expected * 8,
        "caller heard {heard} packets in {after:?} ({expected} expected)"
    );
    assert!(after < Duration::from_secs(25), "ended after {after:?}");
    let (report, ports) = handle.finish().await;
    assert!(report.frames_to_bot_dropped > 0, "{report:?}");
    assert!(ports.is_some());
    drop(bot);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_ends_the_bot_step_with_1009() {
    let call = Call::new().await;
    let mut settings = call.bot(Protocol::Exotel, "");
    settings.client.max_message_bytes = 64 * 1024;
    let (_handle, mut events, mut bot, _) = call.start_with(settings).await;
    // 5 s at 8 kHz: 80 KB of PCM, about 107 KB as base64.
    send(&mut bot, exotel_audio(5.0)).await;
    let close = loop {
        match next_message(&mut bot).await {
            Some(Message::Close(frame)) => break frame,
            Some(_) => continue,
            None => panic!("the connection ended without a Close"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Size));
    match tokio::time::timeout(WAIT, events.recv()).await.unwrap() {
        Some(BridgeEvent::Ended(SessionEnd::BotClosed(_))) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_marks_is_held_to_the_budget_and_long_names_refused() {
    let call = Call::new().await;
    let mut settings = call.bot(Protocol::Exotel, "");
    // 20 messages a second: at most 100 at once.
    settings.max_messages_per_sec = 20;
    let (handle, _events, mut bot, _) = call.start_with(settings).await;
    let long_name = "m".repeat(300);
    send(
        &mut bot,
        json!({"event": "mark", "mark": {"name": long_name}}),
    )
    .await;
    let started = Instant::now();
    for i in 0..1000 {
        send(
            &mut bot,
            json!({"event": "mark", "mark": {"name": format!("m{i}")}}),
        )
        .await;
    }
    // Marks on an empty queue come back at once: count them for a moment.
    let mut echoed = 0u64;
    let until = Instant::now() + Duration::from_millis(500);
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(until.saturating_duration_since(Instant::now()), bot.next()).await
    {
        if let Message::Text(text) = message {
            let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
            if v["event"] == "mark" {
                assert_ne!(v["mark"]["name"], json!(long_name), "a long name came back");
                echoed += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    handle.caller_hung_up();
    let (report, _) = handle.finish().await;
    let allowed = 100 + (20.0 * (elapsed + 0.1)).ceil() as u64;
    assert!(
        echoed <= allowed && echoed >= 90,
        "{echoed} marks echoed, budget {allowed}"
    );
    assert_eq!(report.bot_frames_invalid, 1, "the 300-byte name");
    assert!(
        report.bot_frames_over_budget + report.marks_echoed >= 1000,
        "{report:?}"
    );
    assert!(
        report.bot_frames_over_budget >= 1000 - allowed,
        "{report:?}"
    );
}
