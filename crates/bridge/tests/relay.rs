//! The B2BUA relay over real UDP on 127.0.0.1: two fake phones, one per leg, each sending to
//! its leg's RTP port and receiving what the relay forwards from the other.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::timeout;
use voicegate_audio::{g711, OpusDecoder, OpusEncoder};
use voicegate_bridge::relay::{
    CallMedia, Codec, Forward, Forwarded, LegDirection, RelayEvent, RelayHandle, RelayLeg,
    RtpHeader, Side,
};
use voicegate_bridge::tap::{TapFrame, Track};
use voicegate_rtp::dtmf::DtmfEvent;
use voicegate_rtp::latch::LatchPolicy;
use voicegate_rtp::rtcp::{self, RtcpPacket};
use voicegate_rtp::PortPool;

const SSRC_TO_A: u32 = 0xaaaa_0001;
const SSRC_TO_B: u32 = 0xbbbb_0002;

/// Counts allocations made on the thread that asked, so tests running beside it on other
/// threads do not disturb the count.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_in(f: impl FnOnce()) -> usize {
    ALLOCATIONS.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}

/// A range of `len` ports nobody holds now: random, so parallel tests (and other test
/// binaries on the machine) rarely collide, and checked by binding each.
fn free_range(len: u16) -> (u16, u16) {
    loop {
        let base = 30000 + (rand::random::<u16>() % 3000) * 8;
        if (base..base + len).all(|p| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return (base, base + len - 1);
        }
    }
}

fn localhost() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

fn media(codec: Codec, pt: u8, te: Option<u8>, peer: SocketAddr, ssrc: u32) -> CallMedia {
    CallMedia {
        codec,
        payload_type: pt,
        telephone_event: te,
        signalled: Some(peer),
        latching: LatchPolicy::Auto,
        ssrc,
        rtp_timeout: Duration::from_secs(30),
    }
}

/// A phone on one leg: its socket, and the relay's RTP address for that leg.
struct Phone {
    socket: UdpSocket,
    relay: SocketAddr,
}

impl Phone {
    async fn send(&self, packet: &[u8]) {
        self.socket.send_to(packet, self.relay).await.unwrap();
    }

    /// The next RTP packet (RTCP is skipped), or None after `wait`.
    async fn recv_rtp(&self, wait: Duration) -> Option<Vec<u8>> {
        let mut buf = [0u8; 2048];
        loop {
            let (n, _) = timeout(wait, self.socket.recv_from(&mut buf))
                .await
                .ok()?
                .unwrap();
            if !(200..=204).contains(&buf[1]) {
                return Some(buf[..n].to_vec());
            }
        }
    }

    async fn expect_rtp(&self) -> Vec<u8> {
        self.recv_rtp(Duration::from_secs(2))
            .await
            .expect("a packet from the relay")
    }
}

struct Call {
    pool: Arc<PortPool>,
    relay: RelayHandle,
    a: Phone,
    b: Phone,
    events: mpsc::Receiver<RelayEvent>,
}

struct LegSpec {
    codec: Codec,
    pt: u8,
    te: Option<u8>,
    direction: LegDirection,
    rtcp_mux: bool,
    rtp_timeout: Duration,
}

fn spec(codec: Codec, pt: u8, te: Option<u8>) -> LegSpec {
    LegSpec {
        codec,
        pt,
        te,
        direction: LegDirection::SENDRECV,
        rtcp_mux: false,
        rtp_timeout: Duration::from_secs(30),
    }
}

async fn start(a: LegSpec, b: LegSpec, tap: Option<mpsc::Sender<TapFrame>>) -> Call {
    let (min, max) = free_range(8);
    let pool = PortPool::new(min, max);
    let phone_a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let phone_b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let leg = |s: LegSpec, peer: SocketAddr, ssrc: u32| {
        let mut media = media(s.codec, s.pt, s.te, peer, ssrc);
        media.rtp_timeout = s.rtp_timeout;
        RelayLeg {
            ports: pool.allocate(localhost()).unwrap(),
            media,
            direction: s.direction,
            rtcp_mux: s.rtcp_mux,
            cname: "relay@test".into(),
        }
    };
    let leg_a = leg(a, phone_a.local_addr().unwrap(), SSRC_TO_A);
    let leg_b = leg(b, phone_b.local_addr().unwrap(), SSRC_TO_B);
    let relay_a = SocketAddr::new(localhost(), leg_a.ports.rtp_port());
    let relay_b = SocketAddr::new(localhost(), leg_b.ports.rtp_port());
    let (tx, events) = mpsc::channel(64);
    let relay = RelayHandle::start(leg_a, leg_b, tap, tx).unwrap();
    Call {
        pool,
        relay,
        a: Phone {
            socket: phone_a,
            relay: relay_a,
        },
        b: Phone {
            socket: phone_b,
            relay: relay_b,
        },
        events,
    }
}

fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// (payload type, sequence number, timestamp, SSRC)
fn fields(p: &[u8]) -> (u8, u16, u32, u32) {
    let h = RtpHeader::parse(p).unwrap();
    (h.payload_type, h.seq, h.timestamp, h.ssrc)
}

fn sine(freq: f64, rate: u32, from: usize, len: usize) -> Vec<i16> {
    (from..from + len)
        .map(|i| {
            ((2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin() * 8000.0) as i16
        })
        .collect()
}

/// Power of `freq` in `pcm` (Goertzel), normalised by length.
fn power_at(pcm: &[i16], freq: f64, rate: u32) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / f64::from(rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in pcm {
        let s = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (pcm.len() as f64).powi(2)
}

fn rms(pcm: &[i16]) -> f64 {
    (pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / pcm.len() as f64).sqrt()
}

/// A 1 kHz tone clearly dominates 500 Hz and 2 kHz, at a level near the 8000 sent.
fn assert_tone(pcm: &[i16], rate: u32) {
    let at_1k = power_at(pcm, 1000.0, rate);
    for other in [500.0, 1500.0, 2000.0, 3000.0] {
        let p = power_at(pcm, other, rate);
        assert!(at_1k > 100.0 * p, "1 kHz {at_1k} vs {other} Hz {p}");
    }
    let level = rms(pcm);
    assert!(
        (4000.0..7000.0).contains(&level),
        "rms {level} (a sine of 8000 is 5657)"
    );
}

#[tokio::test]
async fn same_codec_is_passed_through_both_ways_under_our_numbering() {
    let call = start(spec(Codec::Pcma, 8, None), spec(Codec::Pcma, 8, None), None).await;
    let payload: Vec<u8> = sine(1000.0, 8000, 0, 160)
        .into_iter()
        .map(g711::alaw_encode)
        .collect();
    // A → B, with a source change (early media, then the answer) half-way.
    let mut got = Vec::new();
    for i in 0..10u16 {
        let ssrc = if i < 5 { 0x1111 } else { 0x2222 };
        let base = if i < 5 { 1_000 } else { 9_000_000 };
        let seq = if i < 5 { 100 + i } else { 60_000 + i };
        call.a
            .send(&rtp(8, seq, base + 160 * u32::from(i), ssrc, &payload))
            .await;
        let p = call.b.expect_rtp().await;
        assert_eq!(&p[12..], &payload[..], "payload bytes untouched");
        got.push(fields(&p));
    }
    assert!(got.iter().all(|f| f.0 == 8 && f.3 == SSRC_TO_B), "{got:?}");
    assert!(got.windows(2).all(|w| w[1].1 == w[0].1.wrapping_add(1)));
    assert!(
        got.windows(2).all(|w| w[1].2.wrapping_sub(w[0].2) == 160),
        "timestamps continuous across the source change: {got:?}"
    );
    // B → A.
    let mut back = Vec::new();
    for i in 0..5u16 {
        call.b
            .send(&rtp(8, i, 160 * u32::from(i), 0x3333, &payload))
            .await;
        let p = call.a.expect_rtp().await;
        assert_eq!(&p[12..], &payload[..]);
        back.push(fields(&p));
    }
    assert!(back.iter().all(|f| f.3 == SSRC_TO_A));
    assert!(back.windows(2).all(|w| w[1].1 == w[0].1.wrapping_add(1)));
    // Garbage and a payload type that was not negotiated are counted, not relayed.
    call.a.send(b"not rtp at all").await;
    call.a.send(&rtp(0, 11, 2_000, 0x1111, &payload)).await;
    assert!(call.b.recv_rtp(Duration::from_millis(200)).await.is_none());

    let parts = call.relay.stop().await;
    let r = parts.report;
    assert!(!r.transcoding);
    assert_eq!(r.invalid_packets, 2);
    assert_eq!((r.a.packets_in, r.a.packets_out), (10, 5));
    assert_eq!((r.b.packets_in, r.b.packets_out), (5, 10));
    assert_eq!(r.b.bytes_out, 1600);
}

#[tokio::test]
async fn alaw_to_mulaw_keeps_a_1khz_tone() {
    let call = start(spec(Codec::Pcma, 8, None), spec(Codec::Pcmu, 0, None), None).await;
    let mut heard = Vec::new();
    for i in 0..25u16 {
        let payload: Vec<u8> = sine(1000.0, 8000, 160 * usize::from(i), 160)
            .into_iter()
            .map(g711::alaw_encode)
            .collect();
        call.a
            .send(&rtp(8, i, 160 * u32::from(i), 7, &payload))
            .await;
        let p = call.b.expect_rtp().await;
        assert_eq!(fields(&p).0, 0, "PCMU payload type");
        assert_eq!(p.len(), 12 + 160);
        let mut pcm = [0i16; 160];
        g711::decode_ulaw(&p[12..], &mut pcm);
        heard.extend_from_slice(&pcm);
    }
    assert_tone(&heard, 8000);
    let parts = call.relay.stop().await;
    assert!(parts.report.transcoding);
}

#[tokio::test]
async fn alaw_and_opus_are_transcoded_both_ways() {
    let call = start(
        spec(Codec::Pcma, 8, None),
        spec(Codec::Opus, 111, None),
        None,
    )
    .await;
    // A (A-law) → B (Opus at 48 kHz).
    let mut decoder = OpusDecoder::new(48000).unwrap();
    let mut heard = Vec::new();
    let mut ts = Vec::new();
    let mut frame = vec![0i16; 5760];
    for i in 0..50u16 {
        let payload: Vec<u8> = sine(1000.0, 8000, 160 * usize::from(i), 160)
            .into_iter()
            .map(g711::alaw_encode)
            .collect();
        call.a
            .send(&rtp(8, i, 160 * u32::from(i), 7, &payload))
            .await;
        let p = call.b.expect_rtp().await;
        let (pt, _, t, ssrc) = fields(&p);
        assert_eq!((pt, ssrc), (111, SSRC_TO_B));
        ts.push(t);
        let n = decoder.decode(&p[12..], &mut frame).unwrap();
        assert_eq!(n, 960, "20 ms frames");
        heard.extend_from_slice(&frame[..n]);
    }
    assert!(ts.windows(2).all(|w| w[1].wrapping_sub(w[0]) == 960));
    // Past the codecs' start-up.
    assert_tone(&heard[4800..], 48000);

    // B (Opus) → A (A-law).
    let mut encoder = OpusEncoder::new(48000, 0).unwrap();
    let mut opus = vec![0u8; 4000];
    let mut heard = Vec::new();
    for i in 0..50u16 {
        let pcm = sine(1000.0, 48000, 960 * usize::from(i), 960);
        let n = encoder.encode(&pcm, &mut opus).unwrap();
        call.b
            .send(&rtp(111, i, 960 * u32::from(i), 9, &opus[..n]))
            .await;
        let p = call.a.expect_rtp().await;
        assert_eq!((fields(&p).0, fields(&p).3), (8, SSRC_TO_A));
        assert_eq!(p.len(), 12 + 160);
        let mut pcm = [0i16; 160];
        g711::decode_alaw(&p[12..], &mut pcm);
        heard.extend_from_slice(&pcm);
    }
    assert_tone(&heard[800..], 8000);
    let parts = call.relay.stop().await;
    assert!(parts.report.transcoding);
    assert_eq!(parts.report.decode_errors, 0);
}

/// The six packets of one RFC 4733 digit 5 (start with marker, updates, three ends).
fn digit_packets(pt: u8, ts: u32) -> Vec<Vec<u8>> {
    [
        (160u16, false),
        (320, false),
        (480, false),
        (640, true),
        (640, true),
        (640, true),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (duration, end))| {
        let d = duration.to_be_bytes();
        let mut p = rtp(
            pt,
            500 + i as u16,
            ts,
            7,
            &[5, if end { 0x80 | 10 } else { 10 }, d[0], d[1]],
        );
        if i == 0 {
            p[1] |= 0x80;
        }
        p
    })
    .collect()
}

#[tokio::test]
async fn telephone_events_are_mapped_to_the_other_legs_type_and_reported_once() {
    let mut call = start(
        spec(Codec::Pcma, 8, Some(101)),
        spec(Codec::Pcma, 8, Some(96)),
        None,
    )
    .await;
    let audio = rtp(8, 499, 7840, 7, &[0xd5; 160]);
    call.a.send(&audio).await;
    let audio_ts = fields(&call.b.expect_rtp().await).2;
    let mut forwarded = Vec::new();
    for p in digit_packets(101, 8000) {
        call.a.send(&p).await;
        forwarded.push(call.b.expect_rtp().await);
    }
    for (i, p) in forwarded.iter().enumerate() {
        let (pt, _, ts, ssrc) = fields(p);
        assert_eq!(pt, 96);
        assert_eq!(ts, audio_ts.wrapping_add(160), "rebased like the audio");
        assert_eq!(ssrc, SSRC_TO_B);
        assert_eq!(p[1] & 0x80 != 0, i == 0, "marker kept");
        assert_eq!(p[12], 5);
    }
    let event = timeout(Duration::from_secs(1), call.events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        event,
        RelayEvent::Dtmf(
            Side::A,
            DtmfEvent {
                digit: '5',
                duration_ms: 80,
                volume: 10
            }
        )
    );
    assert!(
        timeout(Duration::from_millis(300), call.events.recv())
            .await
            .is_err(),
        "one event per key press"
    );
    let parts = call.relay.stop().await;
    assert_eq!(parts.report.dtmf_events, 1);
}

#[tokio::test]
async fn telephone_events_are_dropped_when_the_other_leg_has_none() {
    let mut call = start(
        spec(Codec::Pcma, 8, Some(101)),
        spec(Codec::Pcmu, 0, None),
        None,
    )
    .await;
    for p in digit_packets(101, 8000) {
        call.a.send(&p).await;
    }
    assert!(call.b.recv_rtp(Duration::from_millis(300)).await.is_none());
    // Still reported to the call.
    let event = timeout(Duration::from_secs(1), call.events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(event, RelayEvent::Dtmf(Side::A, e) if e.digit == '5'));
    let parts = call.relay.stop().await;
    assert_eq!(parts.report.dtmf_dropped, 6);
}

#[tokio::test]
async fn a_leg_on_hold_gets_nothing_until_resumed() {
    let call = start(spec(Codec::Pcma, 8, None), spec(Codec::Pcma, 8, None), None).await;
    let packet = |i: u16| rtp(8, i, 160 * u32::from(i), 7, &[0xd5; 160]);
    call.a.send(&packet(0)).await;
    let before_hold = fields(&call.b.expect_rtp().await);
    let held = LegDirection {
        sending: false,
        expect_rtp: true,
    };
    call.relay.update(Side::B, held, None);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 1..5 {
        call.a.send(&packet(i)).await;
    }
    assert!(
        call.b.recv_rtp(Duration::from_millis(300)).await.is_none(),
        "nothing sent to a held leg"
    );
    // The other way still flows.
    call.b.send(&packet(0)).await;
    call.a.expect_rtp().await;
    call.relay.update(Side::B, LegDirection::SENDRECV, None);
    tokio::time::sleep(Duration::from_millis(50)).await;
    call.a.send(&packet(5)).await;
    let (_, seq, ts, _) = fields(&call.b.expect_rtp().await);
    assert_eq!(
        seq,
        before_hold.1.wrapping_add(1),
        "no gap in our numbering"
    );
    assert_eq!(
        ts.wrapping_sub(before_hold.2),
        5 * 160,
        "time went on during hold"
    );
    let parts = call.relay.stop().await;
    assert_eq!(parts.report.b.packets_out, 2);
    assert_eq!(parts.report.a.packets_in, 6);
}

#[tokio::test]
async fn a_new_address_from_a_reinvite_is_used() {
    // Phone B never sends, so only the signalled address can be used.
    let call = start(spec(Codec::Pcma, 8, None), spec(Codec::Pcma, 8, None), None).await;
    let moved = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    call.relay.update(
        Side::B,
        LegDirection::SENDRECV,
        Some(moved.local_addr().unwrap()),
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    call.a.send(&rtp(8, 1, 160, 7, &[0xd5; 160])).await;
    let mut buf = [0u8; 2048];
    let (n, _) = timeout(Duration::from_secs(2), moved.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 172);
    call.relay.stop().await;
}

#[tokio::test]
async fn rtp_timeout_is_reported_once_for_the_leg_that_should_send() {
    let mut call = start(
        LegSpec {
            rtp_timeout: Duration::from_millis(300),
            ..spec(Codec::Pcma, 8, None)
        },
        LegSpec {
            rtp_timeout: Duration::from_millis(300),
            direction: LegDirection {
                sending: true,
                expect_rtp: false,
            },
            ..spec(Codec::Pcma, 8, None)
        },
        None,
    )
    .await;
    let event = timeout(Duration::from_secs(2), call.events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event, RelayEvent::RtpTimeout(Side::A));
    assert!(
        timeout(Duration::from_millis(600), call.events.recv())
            .await
            .is_err(),
        "once, and none for B which does not send"
    );
    call.relay.stop().await;
}

#[tokio::test]
async fn the_tap_gets_both_parties_as_8khz_frames() {
    let (tap_tx, mut tap_rx) = mpsc::channel(256);
    let call = start(
        spec(Codec::Pcma, 8, None),
        spec(Codec::Opus, 111, None),
        Some(tap_tx),
    )
    .await;
    let mut encoder = OpusEncoder::new(48000, 0).unwrap();
    let mut opus = vec![0u8; 4000];
    for i in 0..10u16 {
        let alaw: Vec<u8> = sine(1000.0, 8000, 160 * usize::from(i), 160)
            .into_iter()
            .map(g711::alaw_encode)
            .collect();
        call.a.send(&rtp(8, i, 160 * u32::from(i), 7, &alaw)).await;
        call.b.expect_rtp().await;
        let n = encoder
            .encode(&sine(1000.0, 48000, 960 * usize::from(i), 960), &mut opus)
            .unwrap();
        call.b
            .send(&rtp(111, i, 960 * u32::from(i), 9, &opus[..n]))
            .await;
        call.a.expect_rtp().await;
    }
    let mut inbound = Vec::new();
    let mut outbound = Vec::new();
    while let Ok(frame) = tap_rx.try_recv() {
        match frame.track {
            Track::Inbound => inbound.extend_from_slice(&frame.samples),
            Track::Outbound => outbound.extend_from_slice(&frame.samples),
        }
    }
    assert_eq!(inbound.len(), 10 * 160);
    assert_eq!(outbound.len(), 10 * 160);
    assert_tone(&inbound, 8000);
    assert!(rms(&outbound[800..]) > 3000.0, "the Opus party is heard");
    assert!(
        power_at(&outbound[800..], 1000.0, 8000) > 100.0 * power_at(&outbound[800..], 2000.0, 8000)
    );
    call.relay.stop().await;
}

#[tokio::test]
async fn stop_sends_bye_and_gives_back_ports_that_can_be_reused() {
    let call = start(
        LegSpec {
            rtcp_mux: true,
            ..spec(Codec::Pcma, 8, None)
        },
        spec(Codec::Pcma, 8, None),
        None,
    )
    .await;
    let Call {
        pool, relay, a, b, ..
    } = call;
    a.send(&rtp(8, 1, 160, 7, &[0xd5; 160])).await;
    b.expect_rtp().await;
    let parts = relay.stop().await;
    // Leg A uses rtcp-mux: its BYE comes to the phone's RTP address.
    let mut buf = [0u8; 2048];
    let bye = loop {
        let (n, _) = timeout(Duration::from_secs(2), a.socket.recv_from(&mut buf))
            .await
            .expect("RTCP at the end")
            .unwrap();
        if (200..=204).contains(&buf[1]) {
            break buf[..n].to_vec();
        }
    };
    let parsed = rtcp::parse(&bye).unwrap();
    assert!(parsed.iter().any(|p| matches!(p, RtcpPacket::Bye { .. })));

    let ports_a = parts.a.expect("leg A's ports back");
    let ports_b = parts.b.expect("leg B's ports back");
    assert_eq!(ports_a.rtp_port(), a.relay.port());
    assert_eq!(ports_b.rtp_port(), b.relay.port());
    assert_eq!(pool.in_use(), 2, "still leased");

    // The caller's ports go on to a new stage with a new B leg.
    let agent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (tx, _events) = mpsc::channel(8);
    let next = RelayHandle::start(
        RelayLeg {
            ports: ports_a,
            media: media(
                Codec::Pcma,
                8,
                None,
                a.socket.local_addr().unwrap(),
                SSRC_TO_A,
            ),
            direction: LegDirection::SENDRECV,
            rtcp_mux: true,
            cname: "relay@test".into(),
        },
        RelayLeg {
            ports: pool.allocate(localhost()).unwrap(),
            media: media(Codec::Pcma, 8, None, agent.local_addr().unwrap(), SSRC_TO_B),
            direction: LegDirection::SENDRECV,
            rtcp_mux: false,
            cname: "relay@test".into(),
        },
        None,
        tx,
    )
    .unwrap();
    a.send(&rtp(8, 2, 320, 7, &[0xd5; 160])).await;
    let (n, _) = timeout(Duration::from_secs(2), agent.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[12..n], &[0xd5; 160][..]);
    let next_parts = next.stop().await;
    drop(next_parts);
    drop(ports_b);
    assert_eq!(pool.in_use(), 0);
    assert!(
        std::net::UdpSocket::bind(a.relay).is_ok(),
        "closed and free"
    );
}

#[tokio::test]
async fn dropping_the_handle_frees_the_ports() {
    let call = start(spec(Codec::Pcma, 8, None), spec(Codec::Pcma, 8, None), None).await;
    assert_eq!(call.pool.in_use(), 2);
    drop(call.relay);
    // The aborted task drops its sockets on the runtime shortly after.
    for _ in 0..50 {
        if call.pool.in_use() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(call.pool.in_use(), 0);
}

fn media_only(codec: Codec, pt: u8, ssrc: u32) -> CallMedia {
    media(codec, pt, None, "127.0.0.1:9".parse().unwrap(), ssrc)
}

#[test]
fn per_packet_work_does_not_allocate() {
    assert!(allocations_in(|| drop(std::hint::black_box(Vec::<u8>::with_capacity(8)))) >= 1);
    let alaw: Vec<u8> = sine(1000.0, 8000, 0, 160)
        .into_iter()
        .map(g711::alaw_encode)
        .collect();
    let mut encoder = OpusEncoder::new(48000, 0).unwrap();
    let mut opus = vec![0u8; 4000];
    let n = encoder
        .encode(&sine(1000.0, 48000, 0, 960), &mut opus)
        .unwrap();
    opus.truncate(n);
    let cases = [
        (Codec::Pcma, 8, Codec::Pcma, 8, &alaw, 160u32),
        (Codec::Pcma, 8, Codec::Pcmu, 0, &alaw, 160),
        (Codec::Pcma, 8, Codec::Opus, 111, &alaw, 160),
        (Codec::Opus, 111, Codec::Pcma, 8, &opus, 960),
    ];
    for (from, from_pt, to, to_pt, payload, step) in cases {
        let mut forward = Forward::new(
            &media_only(from, from_pt, 1),
            &media_only(to, to_pt, 2),
            Some(Track::Inbound),
        )
        .unwrap();
        let template = rtp(from_pt, 0, 0, 7, payload);
        let mut packet = template.clone();
        let mut run = |i: u32| {
            packet.copy_from_slice(&template);
            packet[2..4].copy_from_slice(&(i as u16).to_be_bytes());
            packet[4..8].copy_from_slice(&(i * step).to_be_bytes());
            let header = RtpHeader::parse(&packet).unwrap();
            let out = forward.process(&header, &mut packet);
            assert_ne!(out, Forwarded::Nothing);
            assert_eq!(forward.tap_frames().len(), 1);
        };
        for i in 0..10 {
            run(i);
        }
        let count = allocations_in(|| {
            for i in 10..1010 {
                run(i);
            }
        });
        assert_eq!(count, 0, "{from:?} → {to:?}");
    }
}
