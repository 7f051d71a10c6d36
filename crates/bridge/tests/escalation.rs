//! Escalation from a bot to a human, end to end over a real WebSocket and real UDP sockets: the
//! bot's `transfer` reaches the call, `finish` gives the caller's ports back (also after the bot
//! closed), and `hand_off` turns the session into a listen-only stream of both parties.

mod common;

use std::net::SocketAddr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use voicegate_bridge::dialect::Protocol;
use voicegate_bridge::session::{BridgeEvent, SessionEnd};
use voicegate_bridge::tap::{TapFrame, Track, TAP_FRAME_SAMPLES};
use voicegate_rtp::RtpPorts;

/// The ports are still bound and usable: a datagram to the RTP port arrives on them.
async fn assert_bound(ports: RtpPorts, port: u16, from: &UdpSocket) -> RtpPorts {
    assert_eq!(ports.rtp_port(), port);
    assert_eq!(ports.rtp.local_addr().unwrap().port(), port);
    assert_eq!(ports.rtcp.local_addr().unwrap().port(), port + 1);
    let RtpPorts { rtp, rtcp, lease } = ports;
    let rtp = UdpSocket::from_std(rtp).unwrap();
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    from.send_to(b"still here", to).await.unwrap();
    let mut buf = [0u8; 64];
    // Anything queued before (the caller's earlier packets) comes first.
    loop {
        let (n, _) = tokio::time::timeout(WAIT, rtp.recv_from(&mut buf))
            .await
            .expect("the RTP port no longer receives")
            .unwrap();
        if &buf[..n] == b"still here" {
            break;
        }
    }
    RtpPorts {
        rtp: rtp.into_std().unwrap(),
        rtcp,
        lease,
    }
}

#[tokio::test]
async fn transfer_reaches_the_call_in_both_dialects() {
    for (protocol, sid_key, to) in [
        (Protocol::Exotel, "stream_sid", "sip:agent@pbx.example"),
        (Protocol::Twilio, "streamSid", "+918047491899"),
    ] {
        let call = Call::new().await;
        let (handle, mut events, mut bot, port) = call.start(protocol, "").await;
        send(
            &mut bot,
            json!({"event": "transfer", sid_key: "S1", "transfer": {"to": to}}),
        )
        .await;
        assert_eq!(
            next_event(&mut events).await,
            BridgeEvent::Transfer { to: to.into() },
            "{protocol}"
        );
        // Without a target: the call picks the flow's agent.
        send(&mut bot, json!({"event": "transfer"})).await;
        assert_eq!(
            next_event(&mut events).await,
            BridgeEvent::Transfer { to: String::new() }
        );
        // The session goes on: the caller's audio still streams and marks still come back.
        assert_eq!(next_json(&mut bot).await["event"], "media");
        send(
            &mut bot,
            json!({"event": "mark", "mark": {"name": "after"}}),
        )
        .await;
        let mark = next_control(&mut bot).await;
        assert_eq!(mark["mark"]["name"], "after", "{mark}");
        assert!(events.try_recv().is_err(), "no end yet");

        // The call rang the agent and finishes the bot step: the ports come back.
        let (report, ports) = handle.finish().await;
        let stop = next_control(&mut bot).await;
        assert_eq!(stop["event"], "stop");
        assert!(report.media_messages_sent >= 1);
        assert_eq!(report.marks_echoed, 1);
        let ports = assert_bound(ports.expect("ports back"), port, &call.caller).await;
        assert_eq!(call.pool.in_use(), 1);
        drop(ports);
        assert_eq!(call.pool.in_use(), 0);
    }
}

#[tokio::test]
async fn stop_ends_the_stream_as_stopped() {
    let call = Call::new().await;
    let (handle, mut events, mut bot, _) = call.start(Protocol::Exotel, "").await;
    handle.stop();
    let stop = next_control(&mut bot).await;
    assert_eq!(stop["stop"]["reason"], "stopped", "{stop}");
    assert_eq!(
        next_event(&mut events).await,
        BridgeEvent::Ended(SessionEnd::Stopped)
    );
    let (_, ports) = handle.finish().await;
    assert!(ports.is_some());
}

#[tokio::test]
async fn finish_returns_the_ports_after_the_bot_closed() {
    let call = Call::new().await;
    let (handle, mut events, mut bot, port) = call.start(Protocol::Exotel, "").await;
    // The caller talks a little first, so the ports have had traffic.
    for seq in 0u16..3 {
        let mut packet = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        packet[2..4].copy_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(&[0xff; 160]);
        call.caller
            .send_to(&packet, ("127.0.0.1", port))
            .await
            .unwrap();
    }
    bot.close(None).await.unwrap();
    match next_event(&mut events).await {
        BridgeEvent::Ended(SessionEnd::BotClosed(_)) => {}
        other => panic!("{other:?}"),
    }
    // The session ended by itself: the ports wait in its result, still bound.
    assert_eq!(call.pool.in_use(), 1);
    let (report, ports) = handle.finish().await;
    assert!(report.rtp.packets_in <= 3);
    let ports = assert_bound(ports.expect("ports back"), port, &call.caller).await;
    drop(ports);
    assert_eq!(call.pool.in_use(), 0);
}

/// 20 ms of a 400 Hz sine at 8 kHz, or silence.
fn tap_frame(track: Track, n: usize, loud: bool) -> TapFrame {
    let mut samples = [0i16; TAP_FRAME_SAMPLES];
    if loud {
        for (i, s) in samples.iter_mut().enumerate() {
            let t = (n * TAP_FRAME_SAMPLES + i) as f64 / 8000.0;
            *s = ((std::f64::consts::TAU * 400.0 * t).sin() * 8000.0) as i16;
        }
    }
    TapFrame { track, samples }
}

/// Decoded samples of a `media` message.
fn samples(protocol: Protocol, media: &Value) -> Vec<i16> {
    let bytes = STANDARD
        .decode(media["media"]["payload"].as_str().unwrap())
        .unwrap();
    match protocol {
        Protocol::Exotel => bytes
            .chunks_exact(2)
            .map(|p| i16::from_le_bytes([p[0], p[1]]))
            .collect(),
        Protocol::Twilio => bytes
            .iter()
            .map(|&c| voicegate_audio::g711::ulaw_decode(c))
            .collect(),
    }
}

fn number(v: &Value) -> u64 {
    v.as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn hand_off_returns_the_ports_and_streams_both_parties() {
    // Exotel at 16 kHz in 100 ms chunks, Twilio at 8 kHz in 20 ms chunks.
    for (protocol, query, rate, chunk_ms, sid_key) in [
        (
            Protocol::Exotel,
            "?sample-rate=16000",
            16000usize,
            100usize,
            "stream_sid",
        ),
        (Protocol::Twilio, "", 8000, 20, "streamSid"),
    ] {
        let chunk_samples = rate * chunk_ms / 1000;
        let call = Call::new().await;
        let (handle, mut events, mut bot, port) = call.start(protocol, query).await;
        let mut last_inbound_ts = 0;
        let mut inbound_chunks = 0;
        send(
            &mut bot,
            json!({"event": "transfer", sid_key: "S1", "transfer": {"to": "sip:agent@pbx"}}),
        )
        .await;
        assert!(matches!(
            next_event(&mut events).await,
            BridgeEvent::Transfer { .. }
        ));

        let (tap_tx, tap_rx) = mpsc::channel(64);
        let ports = handle
            .hand_off(tap_rx)
            .await
            .expect("ports from the hand-off");
        // The session no longer reads the caller's RTP: what the caller sends arrives here.
        let ports = assert_bound(ports, port, &call.caller).await;

        // The bot talks after the hand-off: not played, counted; its mark comes back at once.
        let payload = match protocol {
            Protocol::Exotel => STANDARD.encode([0x10u8; 3200]),
            Protocol::Twilio => STANDARD.encode([0x10u8; 160]),
        };
        send(
            &mut bot,
            json!({"event": "media", "media": {"payload": payload}}),
        )
        .await;
        send(&mut bot, json!({"event": "mark", "mark": {"name": "m"}})).await;
        loop {
            let v = next_json(&mut bot).await;
            if v["event"] == "mark" {
                assert_eq!(v["mark"]["name"], "m");
                break;
            }
            // The caller's audio from before the hand-off, flushed.
            assert_eq!(v["event"], "media", "{v}");
            inbound_chunks = number(&v["media"]["chunk"]);
            last_inbound_ts = number(&v["media"]["timestamp"]);
        }
        // Nothing reaches the caller any more.
        let mut buf = [0u8; 1500];
        assert!(
            tokio::time::timeout(Duration::from_millis(200), call.caller.recv_from(&mut buf))
                .await
                .is_err(),
            "RTP to the caller after the hand-off"
        );

        // Half a second of each party, interleaved as a relay produces them.
        for n in 0..25 {
            tap_tx
                .send(tap_frame(Track::Inbound, n, true))
                .await
                .unwrap();
            tap_tx
                .send(tap_frame(Track::Outbound, n, n >= 10))
                .await
                .unwrap();
        }
        let mut inbound = Vec::new();
        let mut outbound = Vec::new();
        let expected = 25 * 20 / chunk_ms;
        while inbound.len() < expected || outbound.len() < expected {
            let v = next_json(&mut bot).await;
            assert_eq!(v["event"], "media", "{v}");
            match v["media"]["track"].as_str() {
                Some("inbound") => inbound.push(v),
                Some("outbound") => outbound.push(v),
                other => panic!("media without a track after the hand-off: {other:?} {v}"),
            }
        }
        for (i, v) in outbound.iter().enumerate() {
            assert_eq!(number(&v["media"]["chunk"]), i as u64 + 1, "{v}");
            assert_eq!(samples(protocol, v).len(), chunk_samples);
        }
        for (i, v) in inbound.iter().enumerate() {
            // The caller's track goes on numbering from the caller's audio before.
            assert_eq!(number(&v["media"]["chunk"]), inbound_chunks + i as u64 + 1);
            assert_eq!(samples(protocol, v).len(), chunk_samples);
        }
        // Timestamps go on from the stream's clock, per track.
        let ts = |v: &Value| number(&v["media"]["timestamp"]);
        assert!(ts(&inbound[0]) > last_inbound_ts, "{}", inbound[0]);
        assert_eq!(ts(&inbound[1]) - ts(&inbound[0]), chunk_ms as u64);
        assert_eq!(ts(&outbound[1]) - ts(&outbound[0]), chunk_ms as u64);
        let loud = |v: &Value| samples(protocol, v).iter().any(|s| s.unsigned_abs() > 2000);
        assert!(inbound.iter().skip(1).all(loud));
        // The agent was silent for the first 200 ms, then spoke.
        assert!(!loud(&outbound[0]));
        assert!(loud(outbound.last().unwrap()));

        // The relay ends: the rest of the audio, then `stop` and the close.
        drop(tap_tx);
        let stop = next_control(&mut bot).await;
        assert_eq!(stop["event"], "stop");
        if protocol == Protocol::Exotel {
            assert_eq!(stop["stop"]["reason"], "stopped");
        }
        assert!(matches!(
            next_message(&mut bot).await,
            None | Some(Message::Close(_))
        ));
        let (report, after) = handle.finish().await;
        assert!(after.is_none(), "the hand-off returned the ports");
        assert_eq!(report.bot_media_ignored, 1);
        assert_eq!(report.bot_media_messages, 0);
        assert_eq!(
            next_event(&mut events).await,
            BridgeEvent::Ended(SessionEnd::Stopped)
        );
        assert_eq!(call.pool.in_use(), 1, "the relay's ports");
        drop(ports);
    }
}

#[tokio::test]
async fn after_a_hand_off_finish_waits_for_the_bot_to_close() {
    let call = Call::new().await;
    let (handle, mut events, mut bot, _) = call.start(Protocol::Twilio, "").await;
    let (tap_tx, tap_rx) = mpsc::channel(8);
    let ports = handle.hand_off(tap_rx).await.unwrap();
    // A second hand-off has nothing to give.
    let (_, again) = mpsc::channel(1);
    assert!(handle.hand_off(again).await.is_none());
    tap_tx
        .send(tap_frame(Track::Outbound, 0, true))
        .await
        .unwrap();
    loop {
        let v = next_json(&mut bot).await;
        if v["media"]["track"] == "outbound" {
            break;
        }
    }
    let finish = tokio::spawn(handle.finish());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !finish.is_finished(),
        "finish waits for the listen-only stream"
    );
    bot.close(None).await.unwrap();
    let (_, after) = tokio::time::timeout(WAIT, finish).await.unwrap().unwrap();
    assert!(after.is_none());
    match next_event(&mut events).await {
        BridgeEvent::Ended(SessionEnd::BotClosed(_)) => {}
        other => panic!("{other:?}"),
    }
    drop((ports, tap_tx));
}

#[tokio::test]
async fn relay_ended_by_the_caller_stops_as_callended() {
    let call = Call::new().await;
    let (handle, mut events, mut bot, _) = call.start(Protocol::Exotel, "").await;
    let (tap_tx, tap_rx) = mpsc::channel(8);
    let _ports = handle.hand_off(tap_rx).await.unwrap();
    // The caller hung up on the agent: the call says so, then the relay's tap closes.
    handle.caller_hung_up();
    drop(tap_tx);
    let stop = next_control(&mut bot).await;
    assert_eq!(stop["stop"]["reason"], "callended", "{stop}");
    let (_, after) = handle.finish().await;
    assert!(after.is_none());
    assert_eq!(
        next_event(&mut events).await,
        BridgeEvent::Ended(SessionEnd::CallerHungUp)
    );
}

#[tokio::test]
async fn hand_off_after_the_session_ended_gives_nothing_and_finish_has_the_ports() {
    let call = Call::new().await;
    let (handle, mut events, mut bot, port) = call.start(Protocol::Exotel, "").await;
    bot.close(None).await.unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        BridgeEvent::Ended(_)
    ));
    let (_tap_tx, tap_rx) = mpsc::channel(1);
    assert!(handle.hand_off(tap_rx).await.is_none());
    let (_, ports) = handle.finish().await;
    assert_eq!(ports.unwrap().rtp_port(), port);
}
