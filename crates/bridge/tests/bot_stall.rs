//! A bot that stops reading its socket for a while, over a real WebSocket and real UDP: the
//! caller keeps hearing the bot's queued audio every 20 ms, and the session survives the stall.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::time::Instant;
use voicegate_bridge::dialect::Protocol;

const STALL: Duration = Duration::from_secs(5);

/// Arrival times of the bot-audio RTP packets the caller receives until `until`.
async fn caller_hears(caller: &UdpSocket, until: Instant) -> Vec<Instant> {
    let mut arrivals = Vec::with_capacity(512);
    let mut buf = [0u8; 1500];
    while let Ok(received) = tokio::time::timeout_at(until, caller.recv_from(&mut buf)).await {
        if received.is_ok_and(|(n, _)| n == 12 + 160) {
            arrivals.push(Instant::now());
        }
    }
    arrivals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_that_stops_reading_for_5_s_does_not_disturb_the_callers_rtp() {
    // What voicegate sends fills the bot's small receive buffer, then its queue to the bot.
    let call = Call::with_slow_reading_bot().await;
    // 24 kHz in 20 ms messages: the most bytes a second a session sends a bot.
    let mut settings = call.bot(Protocol::Exotel, "?sample-rate=24000");
    settings.media_interval = Duration::from_millis(20);
    settings.write_timeout = Duration::from_secs(8);
    let (handle, mut events, mut bot, port) = call.start_with(settings).await;
    let caller = &call.caller;
    let talk = caller_talks(caller, port, Instant::now() + Duration::from_secs(30));

    let test = async {
        // 8 s of audio at 24 kHz in 20 ms messages, each followed by a mark: the marks come
        // back as the audio plays, so voicegate writes to the bot faster than media alone would
        // and fills the kernel's buffers and its queue within the stall.
        let padding = "x".repeat(200);
        for i in 0..400 {
            send(&mut bot, exotel_audio(0.06)).await;
            send(
                &mut bot,
                json!({"event": "mark", "mark": {"name": format!("{i}-{padding}")}}),
            )
            .await;
        }
        let stall_start = Instant::now();
        let stall_end = stall_start + STALL;
        let arrivals = caller_hears(caller, stall_end).await;
        assert!(
            matches!(events.try_recv(), Err(TryRecvError::Empty)),
            "the session reported something during the stall"
        );

        // The bot reads again: what queued up drains, then fresh media keeps coming.
        let drained = Instant::now() + Duration::from_secs(1);
        while let Ok(Some(message)) = tokio::time::timeout_at(drained, bot.next()).await {
            message.expect("the bot's socket broke");
        }
        while next_json(&mut bot).await["event"] != "media" {}
        assert!(
            matches!(events.try_recv(), Err(TryRecvError::Empty)),
            "the session ended after the stall"
        );
        (arrivals, stall_start, stall_end)
    };
    let (arrivals, stall_start, stall_end) = tokio::select! {
        result = test => result,
        _ = talk => unreachable!("the caller talks for 30 s"),
    };

    // Gaps between packets, and from the stall's start and to its end.
    let mut edges = vec![stall_start];
    edges.extend(&arrivals);
    edges.push(stall_end);
    let mut gaps: Vec<Duration> = edges.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    let p99 = gaps[(gaps.len() * 99 / 100).min(gaps.len() - 1)];
    let max = gaps[gaps.len() - 1];
    let (report, _) = handle.finish().await;
    eprintln!(
        "caller RTP during a {STALL:?} bot stall: {} packets (250 expected), gaps median {median:?}, p99 {p99:?}, max {max:?}; {} frames to the bot dropped",
        arrivals.len(),
        report.frames_to_bot_dropped
    );
    assert!(
        arrivals.len() >= 225,
        "the caller heard {} of 250 packets",
        arrivals.len()
    );
    assert!(max <= Duration::from_millis(200), "a gap of {max:?}");
    // Proof the bot really stalled: its queue filled and our frames were dropped.
    assert!(report.frames_to_bot_dropped > 0, "{report:?}");
}
