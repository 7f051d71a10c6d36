//! What a bot session adds to the audio's way, over real UDP and a real WebSocket: the caller's
//! packets reach the bot as they arrive (a bot has no loudspeaker, so no playout delay), and
//! the bot's first frame after silence reaches the caller at once, not at the next 20 ms tick.
//!
//! Medians over many frames, with bounds well above what the session adds now (well under a
//! millisecond on an idle machine) and below what it used to add (a 40 ms jitter-buffer depth
//! one way; a wait of up to 20 ms, 10 ms on average, for the next tick the other way), so a
//! busy machine does not make them flaky while a regression still fails them.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::*;
use serde_json::json;
use tokio::time::Instant;
use voicegate_bridge::dialect::Protocol;

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// A PCMU packet whose payload is `fill` throughout.
fn packet(seq: u16, fill: u8) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend(std::iter::repeat_n(fill, 160));
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_audio_reaches_the_bot_as_it_arrives() {
    let call = Call::new().await;
    // Twilio: one 20 ms mu-law frame per message, passed through unchanged from PCMU.
    let (handle, _events, mut bot, port) = call.start(Protocol::Twilio, "").await;
    let mut delays = Vec::new();
    let mut next_send = Instant::now();
    for seq in 0..25u16 {
        tokio::time::sleep_until(next_send).await;
        next_send += Duration::from_millis(20);
        // A value per packet, never mu-law silence (0xFF, 0x7F).
        let fill = 0x10 + (seq % 64) as u8;
        call.caller
            .send_to(&packet(seq, fill), ("127.0.0.1", port))
            .await
            .unwrap();
        let sent = Instant::now();
        loop {
            let message = next_json(&mut bot).await;
            if message["event"] != "media" {
                continue;
            }
            let payload = base64::engine::general_purpose::STANDARD
                .decode(message["media"]["payload"].as_str().unwrap())
                .unwrap();
            // Silence filled in before the first packet comes too; ours carries its fill.
            if payload.first() == Some(&fill) {
                assert_eq!(payload, vec![fill; 160], "packet {seq} arrived changed");
                delays.push(sent.elapsed());
                break;
            }
        }
    }
    let median = median(delays);
    eprintln!("caller packet → bot message: median {median:?}");
    assert!(
        median < Duration::from_millis(10),
        "the caller's audio waited {median:?} (median) before going to the bot"
    );
    handle.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bots_first_frame_after_silence_goes_out_at_once() {
    let call = Call::new().await;
    let (handle, _events, mut bot, _port) = call.start(Protocol::Twilio, "").await;
    let frame = base64::engine::general_purpose::STANDARD.encode([0x20u8; 160]);
    let mut delays = Vec::new();
    let mut buf = [0u8; 1500];
    for _ in 0..15 {
        // Long enough for the previous frame to play and the queue to go quiet.
        tokio::time::sleep(Duration::from_millis(70)).await;
        send(
            &mut bot,
            json!({"event": "media", "streamSid": "s", "media": {"payload": frame}}),
        )
        .await;
        let sent = Instant::now();
        let (len, _) = tokio::time::timeout(WAIT, call.caller.recv_from(&mut buf))
            .await
            .expect("the caller hears the bot")
            .unwrap();
        delays.push(sent.elapsed());
        assert_eq!(len, 12 + 160);
        assert_eq!(buf[1] & 0x80, 0x80, "a talkspurt's first packet is marked");
        assert_eq!(buf[12..len], [0x20u8; 160][..]);
    }
    let median = median(delays);
    eprintln!("bot frame after silence → caller RTP: median {median:?}");
    assert!(
        median < Duration::from_millis(5),
        "the bot's first frame waited {median:?} (median) to go to the caller"
    );
    handle.finish().await;
}
