//! Escalation from a bot to a human agent: the flow's `connect` when the bot closes, the
//! in-band `transfer` and `hangup` extensions, agent assist (the bot hears both parties after
//! the hand-off) and the fallback when the agent does not answer. The bot is a real WebSocket
//! server, the agent a SIPp UAS echoing RTP, the caller a scripted UA.

mod common;

use std::time::Duration;

use common::bot::*;
use common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use voicegate::config::{Config, FlowConfig};

const BOT_NUMBER: &str = "bot";

fn flow(url: String, on_stream_end: &str, agent: &str, assist: bool, fallback: &str) -> Config {
    let mut config = test_config();
    config.flows = vec![FlowConfig {
        name: "escalating-bot".into(),
        url,
        on_stream_end: on_stream_end.into(),
        connect_to: agent.into(),
        agent_assist: assist,
        fallback: fallback.into(),
        numbers: vec![BOT_NUMBER.into()],
        ..FlowConfig::default()
    }];
    config
}

fn agent_uri(port: u16) -> String {
    format!("sip:agent@127.0.0.1:{port}")
}

/// Waits for `start`, so the bot step is running.
async fn started(bot: &mut BotConn) {
    bot.until("start", Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_closing_connects_the_caller_to_the_agent() {
    let agent = sipp_uas(&uas_answer_scenario("", "", "")).await;
    let (bot_addr, mut bots) = bot_server().await;
    let config = flow(
        format!("ws://{bot_addr}/stream"),
        "connect",
        &agent_uri(agent.port),
        false,
        "hangup",
    );
    let running = start(&config).await;
    let (mut uac, target) =
        answered_call(running.local.udp.unwrap(), BOT_NUMBER, "0 101", "").await;
    let mut bot = next_bot(&mut bots).await;
    started(&mut bot).await;
    bot.send.send(Message::Close(None)).unwrap();
    // The agent answers; the caller's audio goes to it and its echo comes back, through
    // the same voicegate port the bot used.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let back = rtp_round_trip(&uac, target, 40).await;
    assert!(back >= 30, "{back} of 40 packets came back from the agent");
    assert_eq!(uac.bye().await.status, 200);
    assert_uas_ok(&agent.finish().await, "agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_band_transfer_hands_the_call_to_the_agent() {
    let agent = sipp_uas(&uas_answer_scenario("", "", "")).await;
    let (bot_addr, mut bots) = bot_server().await;
    let config = flow(
        format!("ws://{bot_addr}/stream"),
        "hangup",
        "",
        false,
        "hangup",
    );
    let running = start(&config).await;
    let (mut uac, target) =
        answered_call(running.local.udp.unwrap(), BOT_NUMBER, "0 101", "").await;
    let mut bot = next_bot(&mut bots).await;
    started(&mut bot).await;
    bot.send_json(json!({"event": "transfer", "transfer": {"to": agent_uri(agent.port)}}));
    // The bot step ends with `stop` (stopped), not a hang-up.
    let (_, (_, stop)) = bot.until("stop", Duration::from_secs(5)).await;
    assert_eq!(stop["stop"]["reason"], "stopped", "{stop}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let back = rtp_round_trip(&uac, target, 40).await;
    assert!(back >= 30, "{back} of 40 packets came back from the agent");
    assert_eq!(uac.bye().await.status, 200);
    assert_uas_ok(&agent.finish().await, "agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_band_hangup_ends_the_call() {
    let (bot_addr, mut bots) = bot_server().await;
    let config = flow(
        format!("ws://{bot_addr}/stream"),
        "hangup",
        "",
        false,
        "hangup",
    );
    let running = start(&config).await;
    let (uac, _) = answered_call(running.local.udp.unwrap(), BOT_NUMBER, "0 101", "").await;
    let mut bot = next_bot(&mut bots).await;
    started(&mut bot).await;
    bot.send_json(json!({"event": "hangup"}));
    let bye = expect_bye(&uac, Duration::from_secs(5)).await;
    assert!(
        bye.headers
            .get("Reason")
            .is_some_and(|r| r.contains("bot hung up")),
        "{:?}",
        bye.headers.get("Reason")
    );
    uac.reply(&bye, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_assist_streams_both_parties_to_the_bot() {
    let agent = sipp_uas(&uas_answer_scenario("", "", "")).await;
    let (bot_addr, mut bots) = bot_server().await;
    let mut config = flow(
        format!("ws://{bot_addr}/stream"),
        "hangup",
        &agent_uri(agent.port),
        true,
        "hangup",
    );
    config.sip.t1_ms = 50;
    let running = start(&config).await;
    let (mut uac, target) =
        answered_call(running.local.udp.unwrap(), BOT_NUMBER, "0 101", "").await;
    let mut bot = next_bot(&mut bots).await;
    started(&mut bot).await;
    // A transfer that names no agent goes to the flow's.
    bot.send_json(json!({"event": "transfer"}));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let back = rtp_round_trip(&uac, target, 50).await;
    assert!(back >= 35, "{back} of 50 packets came back from the agent");
    // The same socket now carries both tracks: the caller's and the agent's.
    let mut tracks = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tracks.len() < 2 && tokio::time::Instant::now() < deadline {
        match bot.next(Duration::from_millis(500)).await {
            Some((_, frame)) if frame["event"] == "media" => {
                if let Some(track) = frame["media"]["track"].as_str() {
                    tracks.insert(track.to_string());
                }
            }
            Some((_, frame)) => assert_ne!(frame["event"], "stop", "bot stopped: {frame}"),
            None => {}
        }
    }
    assert_eq!(
        tracks,
        ["inbound", "outbound"]
            .map(String::from)
            .into_iter()
            .collect(),
        "both tracks reach the assisting bot"
    );
    assert_eq!(uac.bye().await.status, 200);
    assert_uas_ok(&agent.finish().await, "agent");
    // The caller hung up: the assisting bot's stream ends too, as a hang-up.
    let (_, (_, stop)) = bot.until("stop", Duration::from_secs(5)).await;
    assert_eq!(stop["stop"]["reason"], "callended", "{stop}");
    routes_drain(&running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_agent_falls_back_to_the_bot() {
    let agent = sipp_uas(&uas_reject_scenario(486, "Busy Here")).await;
    let (bot_addr, mut bots) = bot_server().await;
    let mut config = flow(
        format!("ws://{bot_addr}/stream"),
        "hangup",
        &agent_uri(agent.port),
        false,
        "bot",
    );
    config.sip.t1_ms = 50;
    let running = start(&config).await;
    let (mut uac, _) = answered_call(running.local.udp.unwrap(), BOT_NUMBER, "0 101", "").await;
    let mut bot = next_bot(&mut bots).await;
    started(&mut bot).await;
    bot.send_json(json!({"event": "transfer"}));
    assert_uas_ok(&agent.finish().await, "busy agent");
    // Back to the bot: a new stream for the same call.
    let mut again = next_bot(&mut bots).await;
    let (_, (_, start)) = again.until("start", Duration::from_secs(5)).await;
    assert_eq!(start["start"]["to"], BOT_NUMBER);
    assert_eq!(uac.bye().await.status, 200);
    // The busy agent's leg lingers for Timer D (its 486 may be retransmitted), then goes.
    routes_drain_within(&running, Duration::from_secs(40)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_agent_with_hangup_fallback_ends_the_call() {
    let agent = sipp_uas(&uas_reject_scenario(486, "Busy Here")).await;
    let (bot_addr, mut bots) = bot_server().await;
    let config = flow(
        format!("ws://{bot_addr}/stream"),
        "connect",
        &agent_uri(agent.port),
        false,
        "hangup",
    );
    let running = start(&config).await;
    let (uac, _) = answered_call(running.local.udp.unwrap(), BOT_NUMBER, "0 101", "").await;
    let mut bot = next_bot(&mut bots).await;
    started(&mut bot).await;
    bot.send.send(Message::Close(None)).unwrap();
    let bye = expect_bye(&uac, Duration::from_secs(8)).await;
    uac.reply(&bye, 200).await;
    assert_uas_ok(&agent.finish().await, "busy agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caller_hears_ringback_while_the_agent_rings() {
    // An agent whose phone rings for 2 s before it answers.
    let ringing = std::fs::read_to_string(uas_answer_scenario("", "", ""))
        .unwrap()
        .replacen(
            "  <send retrans=\"500\">",
            "  <pause milliseconds=\"2000\"/>\n  <send retrans=\"500\">",
            1,
        );
    let scenario = std::env::temp_dir().join(format!("vg-ring-{:x}.xml", rand::random::<u64>()));
    std::fs::write(&scenario, ringing).unwrap();
    let agent = sipp_uas(&scenario).await;
    let (bot_addr, mut bots) = bot_server().await;
    let config = flow(
        format!("ws://{bot_addr}/stream"),
        "connect",
        &agent_uri(agent.port),
        false,
        "hangup",
    );
    let running = start(&config).await;
    let (mut uac, _) = answered_call(running.local.udp.unwrap(), BOT_NUMBER, "0 101", "").await;
    let mut bot = next_bot(&mut bots).await;
    started(&mut bot).await;
    // Until the bot closes, its session sends silence: frames that are not loud.
    let mut buf = [0u8; 2048];
    bot.send.send(Message::Close(None)).unwrap();
    // During the first second of ringing, the caller's port plays the 425 Hz burst.
    let mut loud_frames = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(900);
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, uac.rtp.recv_from(&mut buf)).await
    {
        if n <= 12 || buf[1] & 0x7f != 0 {
            continue;
        }
        let samples: Vec<f64> = buf[12..n]
            .iter()
            .map(|b| f64::from(voicegate_audio::g711::ulaw_decode(*b)))
            .collect();
        let rms = (samples.iter().map(|s| s * s).sum::<f64>() / samples.len() as f64).sqrt();
        if rms > 1000.0 {
            loud_frames += 1;
        }
    }
    assert!(
        loud_frames >= 20,
        "{loud_frames} frames of ringback in the first 0.9 s"
    );
    // Then the agent answers and the call is theirs.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(uac.bye().await.status, 200);
    assert_uas_ok(&agent.finish().await, "agent");
}
