//! Calls bridged to a bot: a real WebSocket server plays the bot, SIPp or a scripted UA the
//! caller. Events and fields as in docs/bot-protocol.md, audio both ways, marks,
//! clear, DTMF and the endings of both sides.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use common::bot::*;
use common::uac::Uac;
use common::*;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use voicegate::config::{Config, FlowConfig};
use voicegate_audio::g711;

fn flow_config(url: String, protocol: &str, number: &str) -> Config {
    let mut config = test_config();
    config.flows = vec![FlowConfig {
        name: "test-bot".into(),
        url,
        protocol: protocol.into(),
        numbers: vec![number.into()],
        ..FlowConfig::default()
    }];
    config
}

/// A tone as 16-bit samples.
fn tone(frequency: f64, rate: u32, samples: usize, amplitude: f64) -> Vec<i16> {
    (0..samples)
        .map(|i| {
            (amplitude * (2.0 * std::f64::consts::PI * frequency * i as f64 / rate as f64).sin())
                as i16
        })
        .collect()
}

/// Frequency from zero crossings, and RMS level.
fn analyse(samples: &[i16], rate: u32) -> (f64, f64) {
    let crossings = samples
        .windows(2)
        .filter(|w| (w[0] < 0) != (w[1] < 0))
        .count();
    let rms = (samples.iter().map(|s| (*s as f64).powi(2)).sum::<f64>()
        / samples.len().max(1) as f64)
        .sqrt();
    (
        crossings as f64 / 2.0 / (samples.len() as f64 / rate as f64),
        rms,
    )
}

fn pcm16_base64(samples: &[i16]) -> String {
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn decode_pcm16(payload: &str) -> Vec<i16> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .unwrap();
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// Sends `frames` 20 ms RTP frames of a 1 kHz tone (G.711, A-law or mu-law) in real time.
async fn send_tone(uac: &Uac, target: SocketAddr, frames: usize, alaw: bool) {
    let pcm = tone(1000.0, 8000, 160 * frames, 8000.0);
    let mut next = Instant::now();
    for (i, frame) in pcm.chunks(160).enumerate() {
        let mut packet = vec![0x80, if alaw { 8 } else { 0 }];
        packet.extend_from_slice(&(i as u16).to_be_bytes());
        packet.extend_from_slice(&(160 * i as u32).to_be_bytes());
        packet.extend_from_slice(&0x5151u32.to_be_bytes());
        packet.extend(frame.iter().map(|s| {
            if alaw {
                g711::alaw_encode(*s)
            } else {
                g711::ulaw_encode(*s)
            }
        }));
        uac.rtp.send_to(&packet, target).await.unwrap();
        next += Duration::from_millis(20);
        tokio::time::sleep_until(next).await;
    }
}

/// RTP from voicegate for `wait`, decoded to PCM (A-law or mu-law).
async fn receive_audio(uac: &Uac, wait: Duration, alaw: bool) -> Vec<i16> {
    let mut pcm = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + wait;
    while let Ok(Ok((n, _))) = tokio::time::timeout(
        deadline.saturating_duration_since(Instant::now()),
        uac.rtp.recv_from(&mut buf),
    )
    .await
    {
        if n > 12 {
            pcm.extend(buf[12..n].iter().map(|b| {
                if alaw {
                    g711::alaw_decode(*b)
                } else {
                    g711::ulaw_decode(*b)
                }
            }));
        }
    }
    pcm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exotel_events_fields_and_audio_both_ways() {
    let (bot_addr, mut conns) = bot_server().await;
    let config = flow_config(
        format!("ws://{bot_addr}/stream?sample-rate=16000&campaign=spring"),
        "exotel",
        "+15550100",
    );
    let running = start(&config).await;
    let (mut uac, target) = answered_call(
        running.local.udp.unwrap(),
        "+15550100",
        "8 101",
        "X-UUI: order-42\r\n",
    )
    .await;

    let mut bot = next_bot(&mut conns).await;
    let (_, connected) = bot.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(connected, json!({"event": "connected"}));
    let (started_at, start) = bot.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(start["event"], "start");
    assert_eq!(start["sequence_number"], "1");
    let s = &start["start"];
    assert_eq!(start["stream_sid"], s["stream_sid"]);
    for key in ["stream_sid", "call_sid", "account_sid"] {
        assert!(
            s[key].as_str().is_some_and(|v| !v.is_empty()),
            "start.{key}: {start}"
        );
    }
    // A flow from the config file belongs to the account it is seeded under ("config" when
    // no API account is configured).
    assert_eq!(s["account_sid"], "config");
    assert_eq!(s["media_format"]["encoding"], "base64");
    assert_eq!(s["to"], "+15550100");
    assert_eq!(s["from"], "tester");
    assert_eq!(s["custom_parameters"]["campaign"], "spring");
    assert_eq!(s["custom_parameters"]["X-UUI"], "order-42");
    assert_eq!(s["media_format"]["sample_rate"], "16000");

    // Caller → bot: 2 s of a 1 kHz tone.
    let sender = send_tone(&uac, target, 100, true);
    // Bot → caller: 1 s of a 1 kHz tone at 16 kHz, then a mark.
    let bot_tone = tone(1000.0, 16000, 16000, 8000.0);
    bot.send_json(json!({"event": "media", "stream_sid": s["stream_sid"], "media": {"payload": pcm16_base64(&bot_tone)}}));
    bot.send_json(
        json!({"event": "mark", "stream_sid": s["stream_sid"], "mark": {"name": "greeting"}}),
    );
    let mark_sent = Instant::now();
    let (_, heard) = tokio::join!(
        sender,
        receive_audio(&uac, Duration::from_millis(1500), true)
    );
    // The caller heard the bot's tone, transcoded 16 kHz → 8 kHz A-law.
    let voiced: Vec<i16> = heard
        .iter()
        .copied()
        .skip_while(|s| s.abs() < 500)
        .take(6000)
        .collect();
    let (frequency, rms) = analyse(&voiced, 8000);
    assert!(
        (950.0..1050.0).contains(&frequency) && rms > 2000.0,
        "caller heard {frequency:.0} Hz at rms {rms:.0}"
    );

    // The mark comes back once its audio has played (1 s), not before.
    let (media_before_mark, (mark_at, mark)) = bot.until("mark", Duration::from_secs(3)).await;
    assert_eq!(mark["mark"]["name"], "greeting");
    let waited = mark_at - mark_sent;
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(1600),
        "mark after {waited:?}"
    );

    // Caller hangs up: stop (callended), then the socket closes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(uac.bye().await.status, 200);
    let (media_after_mark, (stopped_at, stop)) = bot.until("stop", Duration::from_secs(3)).await;
    assert_eq!(stop["stop"]["reason"], "callended");
    assert_eq!(stop["stop"]["call_sid"], s["call_sid"]);
    assert_eq!(stop["stop"]["account_sid"], "config");
    let (_, _closed) = bot.until("<closed>", Duration::from_secs(3)).await;

    // Caller audio at the bot: about call duration × 16000 × 2 bytes, in 100 ms chunks.
    let media: Vec<&Value> = media_before_mark
        .iter()
        .chain(media_after_mark.iter())
        .filter(|v| v["event"] == "media")
        .collect();
    let pcm: Vec<i16> = media
        .iter()
        .flat_map(|m| decode_pcm16(m["media"]["payload"].as_str().unwrap()))
        .collect();
    let expected = (stopped_at - started_at).as_secs_f64() * 16000.0;
    let ratio = pcm.len() as f64 / expected;
    assert!(
        (0.95..1.05).contains(&ratio),
        "{} samples for {expected:.0} expected",
        pcm.len()
    );
    assert_eq!(media[0]["media"]["chunk"], "1");
    assert_eq!(media[1]["media"]["timestamp"], "100");
    let (last, full) = media.split_last().unwrap();
    assert!(
        full.iter()
            .all(|m| m["media"]["payload"].as_str().unwrap().len() == 4268),
        "100 ms at 16 kHz = 3200 bytes"
    );
    // The last one is what was left at the hang-up: at most a chunk.
    assert!(last["media"]["payload"].as_str().unwrap().len() <= 4268);
    // And the caller's tone reached the bot as a 1 kHz tone at 16 kHz.
    let voiced: Vec<i16> = pcm
        .iter()
        .copied()
        .skip_while(|s| s.abs() < 500)
        .take(16000)
        .collect();
    let (frequency, rms) = analyse(&voiced, 16000);
    assert!(
        (950.0..1050.0).contains(&frequency) && rms > 2000.0,
        "bot heard {frequency:.0} Hz at rms {rms:.0}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_dialect_in_camel_case_with_mulaw() {
    let (bot_addr, mut conns) = bot_server().await;
    let running = start(&flow_config(
        format!("ws://{bot_addr}/media"),
        "twilio",
        "+15550101",
    ))
    .await;
    let (mut uac, target) =
        answered_call(running.local.udp.unwrap(), "+15550101", "0 101", "").await;
    let mut bot = next_bot(&mut conns).await;
    let (_, connected) = bot.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        connected,
        json!({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    );
    let (started_at, start) = bot.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(start["sequenceNumber"], "1");
    let s = &start["start"];
    assert_eq!(start["streamSid"], s["streamSid"]);
    assert!(s["accountSid"].is_string() && s["callSid"].is_string());
    assert_eq!(s["tracks"], json!(["inbound", "outbound"]));
    // Twilio's start has no numbers: they come as custom parameters, as pipecat reads them.
    assert_eq!(
        s["customParameters"],
        json!({"from_number": "tester", "to_number": "+15550101"})
    );
    assert_eq!(
        s["mediaFormat"],
        json!({"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1})
    );

    let bot_tone: Vec<u8> = tone(1000.0, 8000, 8000, 8000.0)
        .iter()
        .map(|s| g711::ulaw_encode(*s))
        .collect();
    bot.send_json(json!({"event": "media", "streamSid": s["streamSid"], "media": {"payload": base64::engine::general_purpose::STANDARD.encode(&bot_tone)}}));
    let (_, heard) = tokio::join!(
        send_tone(&uac, target, 50, false),
        receive_audio(&uac, Duration::from_millis(1200), false)
    );
    let voiced: Vec<i16> = heard
        .iter()
        .copied()
        .skip_while(|s| s.abs() < 500)
        .take(4000)
        .collect();
    let (frequency, _) = analyse(&voiced, 8000);
    assert!(
        (950.0..1050.0).contains(&frequency),
        "caller heard {frequency:.0} Hz"
    );
    assert_eq!(uac.bye().await.status, 200);
    let (media, (stopped_at, stop)) = bot.until("stop", Duration::from_secs(3)).await;
    assert_eq!(stop["stop"]["callSid"], s["callSid"]);
    let media: Vec<&Value> = media.iter().filter(|v| v["event"] == "media").collect();
    assert!(media.len() > 40, "{} media messages", media.len());
    // Caller audio at the bot: about session length × 8000 samples (one mu-law byte each).
    let bytes: usize = media
        .iter()
        .map(|m| {
            base64::engine::general_purpose::STANDARD
                .decode(m["media"]["payload"].as_str().unwrap())
                .unwrap()
                .len()
        })
        .sum();
    let expected = (stopped_at - started_at).as_secs_f64() * 8000.0;
    assert!(
        (0.95..1.05).contains(&(bytes as f64 / expected)),
        "{bytes} bytes for {expected:.0} expected"
    );
    assert_eq!(media[0]["sequenceNumber"], "2");
    assert_eq!(media[1]["sequenceNumber"], "3");
    assert_eq!(media[0]["media"]["track"], "inbound");
    assert!(
        media
            .iter()
            .all(|m| m["media"]["payload"].as_str().unwrap().len() == 216),
        "20 ms = 160 mu-law bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marks_in_order_and_clear_drops_audio_and_echoes_marks_at_once() {
    let (bot_addr, mut conns) = bot_server().await;
    let running = start(&flow_config(
        format!("ws://{bot_addr}/"),
        "exotel",
        "+15550102",
    ))
    .await;
    let (mut uac, _) = answered_call(running.local.udp.unwrap(), "+15550102", "8", "").await;
    let mut bot = next_bot(&mut conns).await;
    bot.until("start", Duration::from_secs(5)).await;
    // Malformed frames are logged and counted, never fatal.
    bot.send.send(Message::text("not json")).unwrap();
    bot.send_json(json!({"event": "media", "media": {"payload": "@@@"}}));
    bot.send_json(json!({"event": "media", "media": {"payload": "AAA="}}));
    bot.send_json(json!({"event": "something-new"}));
    let half_second = pcm16_base64(&tone(440.0, 8000, 4000, 6000.0));
    let sent = Instant::now();
    for name in ["a", "b"] {
        bot.send_json(json!({"event": "media", "media": {"payload": half_second}}));
        bot.send_json(json!({"event": "mark", "mark": {"name": name}}));
    }
    let mut marks = Vec::new();
    while marks.len() < 2 {
        let (_, (at, mark)) = bot.until("mark", Duration::from_secs(3)).await;
        marks.push((
            mark["mark"]["name"].as_str().unwrap().to_string(),
            at - sent,
        ));
    }
    assert_eq!(marks[0].0, "a");
    assert_eq!(marks[1].0, "b");
    assert!(
        marks[0].1 >= Duration::from_millis(400) && marks[0].1 < Duration::from_millis(800),
        "{marks:?}"
    );
    assert!(
        marks[1].1 >= Duration::from_millis(900) && marks[1].1 < Duration::from_millis(1300),
        "{marks:?}"
    );

    // Five seconds queued, a mark behind it, then clear: the mark comes back at once and the
    // caller hears silence from the next frame on.
    let five_seconds = pcm16_base64(&tone(440.0, 8000, 40_000, 6000.0));
    bot.send_json(json!({"event": "media", "media": {"payload": five_seconds}}));
    bot.send_json(json!({"event": "mark", "mark": {"name": "c"}}));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cleared = Instant::now();
    bot.send_json(json!({"event": "clear"}));
    let (_, (at, mark)) = bot.until("mark", Duration::from_secs(2)).await;
    assert_eq!(mark["mark"]["name"], "c");
    assert!(
        at - cleared < Duration::from_millis(100),
        "mark after clear took {:?}",
        at - cleared
    );
    // Skip what was already on its way (and what queued up unread in our socket).
    tokio::time::sleep(Duration::from_millis(60)).await;
    let mut buf = [0u8; 2048];
    while uac.rtp.try_recv_from(&mut buf).is_ok() {}
    let after = receive_audio(&uac, Duration::from_millis(500), true).await;
    let (_, rms) = analyse(&after, 8000);
    assert!(
        !after.is_empty() && rms < 50.0,
        "audio after clear: rms {rms:.0} over {} samples",
        after.len()
    );
    assert_eq!(uac.bye().await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_digits_reach_the_bot_once_each() {
    let (bot_addr, mut conns) = bot_server().await;
    let running = start(&flow_config(
        format!("ws://{bot_addr}/"),
        "exotel",
        "+15550103",
    ))
    .await;
    let files: Vec<std::path::PathBuf> = ["1", "2", "3"]
        .iter()
        .map(|d| format!("/usr/share/sip-tester/dtmf_2833_{d}.pcap").into())
        .collect();
    let playback: Vec<(&std::path::Path, u64)> = files.iter().map(|f| (f.as_path(), 400)).collect();
    let scenario = play_pcap_scenario(
        "8 101",
        &["a=rtpmap:8 PCMA/8000", "a=rtpmap:101 telephone-event/8000"],
        &playback,
    );
    let args = [
        "-sf",
        scenario.to_str().unwrap(),
        "-s",
        "+15550103",
        "-m",
        "1",
    ];
    let sipp_run = sipp(running.local.udp.unwrap(), &args);
    let mut call_events = running.core.events.subscribe();
    let collect = async {
        let mut bot = tokio::time::timeout(Duration::from_secs(5), conns.recv())
            .await
            .unwrap()
            .unwrap();
        let (before, _) = bot.until("stop", Duration::from_secs(10)).await;
        before
    };
    let (out, frames) = tokio::join!(sipp_run, collect);
    // The same digits are call events, as for any call.
    let mut published = String::new();
    while let Ok(voicegate::core::CallEvent::Dtmf { digit, via, .. }) = call_events.try_recv() {
        assert_eq!(via, "rfc4733");
        published.push(digit);
    }
    assert_eq!(published, "123");
    let _ = std::fs::remove_file(&scenario);
    assert_sipp_ok(&out, 1);
    let digits: String = frames
        .iter()
        .filter(|v| v["event"] == "dtmf")
        .map(|v| v["dtmf"]["digit"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(digits, "123");
    let dtmf = frames.iter().find(|v| v["event"] == "dtmf").unwrap();
    assert_eq!(dtmf["dtmf"]["duration"], "280");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_that_speaks_then_closes_is_heard_before_the_bye() {
    let (bot_addr, mut conns) = bot_server().await;
    let running = start(&flow_config(
        format!("ws://{bot_addr}/"),
        "exotel",
        "+15550108",
    ))
    .await;
    let (uac, _) = answered_call(running.local.udp.unwrap(), "+15550108", "8", "").await;
    let mut bot = next_bot(&mut conns).await;
    bot.until("start", Duration::from_secs(5)).await;
    // Exotel's "speak, then disconnect": 3 s of speech in one message, then the socket closes.
    let goodbye = tone(440.0, 8000, 24_000, 8000.0);
    bot.send_json(json!({"event": "media", "media": {"payload": pcm16_base64(&goodbye)}}));
    bot.send.send(Message::Close(None)).unwrap();
    let closed_at = Instant::now();
    let (heard, (bye, bye_at)) = tokio::join!(
        receive_audio(&uac, Duration::from_millis(3600), true),
        async {
            let bye = expect_bye(&uac, Duration::from_secs(6)).await;
            (bye, Instant::now())
        }
    );
    let voiced_frames = heard
        .chunks(160)
        .filter(|frame| analyse(frame, 8000).1 > 1000.0)
        .count();
    assert!(
        voiced_frames >= 140,
        "the caller heard {voiced_frames} of the goodbye's 150 frames"
    );
    let held = bye_at - closed_at;
    assert!(
        held >= Duration::from_millis(2800),
        "BYE {held:?} after the close"
    );
    uac.reply(&bye, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_closing_the_socket_hangs_up_the_call() {
    let (bot_addr, mut conns) = bot_server().await;
    let running = start(&flow_config(
        format!("ws://{bot_addr}/"),
        "exotel",
        "+15550104",
    ))
    .await;
    let (mut uac, _) = answered_call(running.local.udp.unwrap(), "+15550104", "8", "").await;
    let mut bot = next_bot(&mut conns).await;
    bot.until("start", Duration::from_secs(5)).await;
    // A digit by SIP INFO reaches the bot as a dtmf event, like an RFC 4733 one.
    let info = uac
        .request_text("INFO", "Signal=9\r\nDuration=160\r\n")
        .replace("application/sdp", "application/dtmf-relay");
    uac.cseq += 1;
    uac.send(&info).await;
    assert_eq!(uac.final_response().await.status, 200);
    let (_, (_, dtmf)) = bot.until("dtmf", Duration::from_secs(2)).await;
    assert_eq!(dtmf["dtmf"]["digit"], "9");
    assert_eq!(dtmf["dtmf"]["duration"], "160");
    bot.send.send(Message::Close(None)).unwrap();
    let bye = expect_bye(&uac, Duration::from_secs(3)).await;
    assert!(
        bye.headers
            .get("Reason")
            .unwrap_or_default()
            .contains("bot closed"),
        "{:?}",
        bye.headers.get("Reason")
    );
    uac.reply(&bye, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_bot_gets_one_retry_then_the_call_hangs_up() {
    // Accepts TCP but never answers the WebSocket handshake.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = attempts.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    let mut config = flow_config(format!("ws://{addr}/"), "exotel", "+15550105");
    config.bridge.handshake_timeout_secs = 1;
    let running = start(&config).await;
    let (uac, _) = answered_call(running.local.udp.unwrap(), "+15550105", "8", "").await;
    let started = Instant::now();
    let bye = expect_bye(&uac, Duration::from_secs(5)).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(3),
        "BYE after {waited:?}: two 1 s attempts"
    );
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert!(bye
        .headers
        .get("Reason")
        .unwrap_or_default()
        .contains("unreachable"));
    uac.reply(&bye, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_calls_through_the_echo_bot() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bot_addr = listener.local_addr().unwrap();
    tokio::spawn(voicegate_bridge::echo_bot::serve(
        listener,
        voicegate_bridge::echo_bot::EchoBotOptions::default(),
    ));
    let mut config = flow_config(
        format!("ws://{bot_addr}/?sample-rate=16000"),
        "exotel",
        "+15550106",
    );
    let (min, max) = rtp_range(400);
    config.rtp.port_min = min;
    config.rtp.port_max = max;
    let running = start(&config).await;
    let out = sipp(
        running.local.udp.unwrap(),
        &[
            "-sn",
            "uac",
            "-s",
            "+15550106",
            "-m",
            "100",
            "-r",
            "50",
            "-l",
            "100",
            "-d",
            "3000",
        ],
    )
    .await;
    assert_sipp_ok(&out, 100);
    assert_eq!(
        running
            .core
            .stats
            .answered
            .load(std::sync::atomic::Ordering::Relaxed),
        100
    );
    // Every session ended and gave its ports back.
    let deadline = Instant::now() + Duration::from_secs(5);
    while running.core.pool.in_use() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} port pairs still held",
            running.core.pool.in_use()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIPp plays a real capture to a flow served by the shipped echo bot; what reaches SIPp's RTP
/// port (seen by tcpdump) is the bot playing the caller's words back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_hears_the_echo_bot_play_its_audio_back() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bot_addr = listener.local_addr().unwrap();
    tokio::spawn(voicegate_bridge::echo_bot::serve(
        listener,
        voicegate_bridge::echo_bot::EchoBotOptions::default(),
    ));
    let config = flow_config(
        format!("ws://{bot_addr}/?sample-rate=16000"),
        "exotel",
        "+15550107",
    );
    let running = start(&config).await;
    // SIPp's media port is known once it runs: capture what leaves voicegate's RTP ports,
    // then keep what went to SIPp's.
    let (rtp_min, rtp_max) = (config.rtp.port_min, config.rtp.port_max);
    let tap = Capture::start(&format!("udp and src portrange {rtp_min}-{rtp_max}")).await;
    let capture = std::path::Path::new("/usr/share/sip-tester/g711a.pcap");
    let scenario = play_pcap_scenario(
        "8 101",
        &["a=rtpmap:8 PCMA/8000", "a=rtpmap:101 telephone-event/8000"],
        &[(capture, 8000)],
    );
    let args = [
        "-sf",
        scenario.to_str().unwrap(),
        "-s",
        "+15550107",
        "-m",
        "1",
    ];
    let run = sipp_run(running.local.udp.unwrap(), &args).await;
    let _ = std::fs::remove_file(&scenario);
    assert_sipp_ok(&run.output, 1);
    let rtp: Vec<_> = tap
        .finish()
        .await
        .into_iter()
        .filter(|d| d.dst_port == run.ports.media && d.payload.len() == 172)
        .collect();
    // About 8 s of 20 ms PCMA frames (silence while the bot has nothing queued).
    assert!(
        (350..=460).contains(&rtp.len()),
        "{} RTP packets reached SIPp",
        rtp.len()
    );
    let pcm: Vec<i16> = rtp
        .iter()
        .flat_map(|d| d.payload[12..].iter().map(|b| g711::alaw_decode(*b)))
        .collect();
    let loud = pcm
        .chunks(160)
        .filter(|frame| analyse(frame, 8000).1 > 300.0)
        .count();
    // The capture is about 7 s of speech; most of it comes back.
    assert!(
        loud > 150,
        "only {loud} frames of the echoed speech reached SIPp"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_caller_is_hung_up_and_the_bot_told() {
    let (bot_addr, mut conns) = bot_server().await;
    let mut config = flow_config(format!("ws://{bot_addr}/"), "exotel", "+15550108");
    config.rtp.timeout_secs = 1;
    let running = start(&config).await;
    let (uac, _) = answered_call(running.local.udp.unwrap(), "+15550108", "8", "").await;
    let mut bot = next_bot(&mut conns).await;
    let bye = expect_bye(&uac, Duration::from_secs(4)).await;
    assert!(
        bye.headers
            .get("Reason")
            .unwrap_or_default()
            .contains("no RTP"),
        "{:?}",
        bye.headers.get("Reason")
    );
    let (_, (_, stop)) = bot.until("stop", Duration::from_secs(2)).await;
    assert_eq!(stop["stop"]["reason"], "stopped");
    uac.reply(&bye, 200).await;
}
