//! Ringback to the caller over real UDP sockets: 20 ms RTP packets in the caller's codec, the
//! tone during the on-period and silence after, and the ports back when it stops.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;
use voicegate_audio::g711;
use voicegate_bridge::session::{CallMedia, Codec};
use voicegate_bridge::tone::{Tone, ToneHandle};
use voicegate_rtp::latch::LatchPolicy;
use voicegate_rtp::PortPool;

use common::free_range;

const WAIT: Duration = Duration::from_secs(5);

fn pool() -> Arc<PortPool> {
    let (min, max) = free_range(4);
    PortPool::new(min, max)
}

struct Packet {
    marker: bool,
    payload_type: u8,
    seq: u16,
    timestamp: u32,
    ssrc: u32,
    payload: Vec<u8>,
    at: Instant,
}

async fn receive(caller: &UdpSocket) -> Packet {
    let mut buf = [0u8; 1500];
    let (n, _) = tokio::time::timeout(WAIT, caller.recv_from(&mut buf))
        .await
        .expect("no RTP from the tone")
        .unwrap();
    assert!(n > 12 && buf[0] == 0x80, "{:?}", &buf[..n.min(12)]);
    Packet {
        marker: buf[1] & 0x80 != 0,
        payload_type: buf[1] & 0x7f,
        seq: u16::from_be_bytes([buf[2], buf[3]]),
        timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        payload: buf[12..n].to_vec(),
        at: Instant::now(),
    }
}

/// Power of `pcm` at `freq` relative to its total power (Goertzel); 0 for silence.
fn share_at(pcm: &[i16], freq: f64) -> f64 {
    let coeff = 2.0 * (std::f64::consts::TAU * freq / 8000.0).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in pcm {
        let s = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let total: f64 = pcm.iter().map(|&x| f64::from(x).powi(2)).sum();
    if total == 0.0 {
        0.0
    } else {
        power / total / (pcm.len() as f64 / 2.0)
    }
}

#[tokio::test]
async fn ringback_is_425_hz_in_20_ms_packets_then_silence() {
    let pool = pool();
    let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ports = pool.allocate("127.0.0.1".parse().unwrap()).unwrap();
    let port = ports.rtp_port();
    let media = CallMedia {
        codec: Codec::Pcma,
        payload_type: 8,
        telephone_event: Some(101),
        signalled: Some(caller.local_addr().unwrap()),
        latching: LatchPolicy::Auto,
        ssrc: 0xfeed_beef,
        rtp_timeout: Duration::from_secs(30),
    };
    let tone = ToneHandle::start(ports, media, Tone::Ringback).unwrap();

    // 1.5 s: the whole 1 s burst and the start of the 4 s silence.
    let mut packets = Vec::new();
    for _ in 0..75 {
        packets.push(receive(&caller).await);
    }
    let first = &packets[0];
    assert!(first.marker);
    for (i, p) in packets.iter().enumerate() {
        assert_eq!(p.payload_type, 8);
        assert_eq!(p.ssrc, 0xfeed_beef);
        assert_eq!(p.payload.len(), 160, "20 ms of PCMA");
        assert_eq!(p.seq, first.seq.wrapping_add(i as u16));
        assert_eq!(p.timestamp, first.timestamp.wrapping_add(160 * i as u32));
        assert_eq!(p.marker, i == 0);
    }
    // Paced, not burst: 74 periods of 20 ms.
    let span = packets[74].at - first.at;
    assert!(
        span >= Duration::from_millis(1300) && span <= Duration::from_millis(1700),
        "{span:?}"
    );

    let pcm: Vec<i16> = packets
        .iter()
        .flat_map(|p| p.payload.iter().map(|&c| g711::alaw_decode(c)))
        .collect();
    // On: 0 to 1 s (away from the fades at its edges).
    for frame in pcm[160..7840].chunks(160) {
        assert!(share_at(frame, 425.0) > 0.8, "{}", share_at(frame, 425.0));
        assert!(frame.iter().any(|s| s.unsigned_abs() > 3000));
    }
    // Off: silence (A-law's smallest values).
    assert!(pcm[8000..].iter().all(|s| s.unsigned_abs() <= 8));

    let ports = tone.stop().await.expect("ports back");
    assert_eq!(ports.rtp_port(), port);
    assert_eq!(ports.rtp.local_addr().unwrap().port(), port);
    assert_eq!(pool.in_use(), 1);
    // Still bound: the next stage receives on them.
    let rtp = UdpSocket::from_std(ports.rtp).unwrap();
    caller.send_to(b"hello", ("127.0.0.1", port)).await.unwrap();
    let mut buf = [0u8; 16];
    let (n, _) = tokio::time::timeout(WAIT, rtp.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"hello");
    // Nothing more is sent once stopped.
    while tokio::time::timeout(Duration::from_millis(60), caller.recv_from(&mut buf))
        .await
        .is_ok()
    {}
    assert!(
        tokio::time::timeout(Duration::from_millis(100), caller.recv_from(&mut buf))
            .await
            .is_err()
    );
    drop((rtp, ports.rtcp, ports.lease));
    assert_eq!(pool.in_use(), 0);
}

#[tokio::test]
async fn ringback_latches_to_where_the_caller_sends_from() {
    let pool = pool();
    let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ports = pool.allocate("127.0.0.1".parse().unwrap()).unwrap();
    let port = ports.rtp_port();
    let media = CallMedia {
        codec: Codec::Pcmu,
        payload_type: 0,
        telephone_event: None,
        // A private address in the SDP (behind NAT): answer where the packets come from.
        signalled: Some("192.168.1.20:4000".parse().unwrap()),
        latching: LatchPolicy::Auto,
        ssrc: 7,
        rtp_timeout: Duration::from_secs(30),
    };
    let tone = ToneHandle::start(ports, media, Tone::RingbackUs).unwrap();
    let mut packet = vec![0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9];
    packet.extend_from_slice(&[0xff; 160]);
    caller.send_to(&packet, ("127.0.0.1", port)).await.unwrap();
    let p = receive(&caller).await;
    assert_eq!((p.payload_type, p.ssrc, p.payload.len()), (0, 7, 160));
    let pcm: Vec<i16> = {
        let mut pcm = Vec::new();
        for _ in 0..20 {
            let p = receive(&caller).await;
            pcm.extend(p.payload.iter().map(|&c| g711::ulaw_decode(c)));
        }
        pcm
    };
    let both = share_at(&pcm, 440.0) + share_at(&pcm, 480.0);
    assert!(both > 0.8, "{both}");
    let ports = tone.stop().await.unwrap();
    assert_eq!(ports.rtp_port(), port);
}

#[tokio::test]
async fn ringback_in_opus() {
    let pool = pool();
    let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ports = pool.allocate("127.0.0.1".parse().unwrap()).unwrap();
    let media = CallMedia {
        codec: Codec::Opus,
        payload_type: 111,
        telephone_event: None,
        signalled: Some(caller.local_addr().unwrap()),
        latching: LatchPolicy::Never,
        ssrc: 42,
        rtp_timeout: Duration::from_secs(30),
    };
    let tone = ToneHandle::start(ports, media, Tone::Ringback).unwrap();
    let mut decoder = voicegate_audio::OpusDecoder::new(8000).unwrap();
    let mut frame = [0i16; 160];
    let mut pcm = Vec::new();
    let first = receive(&caller).await;
    let mut last = first.timestamp;
    for _ in 0..30 {
        let p = receive(&caller).await;
        // The RTP clock of Opus is 48 kHz whatever the audio's rate.
        assert_eq!(p.timestamp.wrapping_sub(last), 960);
        last = p.timestamp;
        let n = decoder.decode(&p.payload, &mut frame).unwrap();
        pcm.extend_from_slice(&frame[..n]);
    }
    assert!(share_at(&pcm[800..], 425.0) > 0.8);
    assert!(tone.stop().await.is_some());
}
