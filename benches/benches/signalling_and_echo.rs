//! Per-message and per-packet costs: parsing an INVITE, answering its SDP, and rewriting one
//! RTP packet on the echo leg (the only per-packet work an echo call does besides the syscalls).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use voicegate_rtp::echo::Renumber;
use voicegate_sip::message;
use voicegate_sip::sdp::{self, Codec, CodecPreference, LocalMedia};

const INVITE: &[u8] = b"INVITE sip:echo@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-524287-1---3d0b7d8c;rport\r\n\
Max-Forwards: 70\r\n\
Contact: <sip:sipp@127.0.0.1:5070>\r\n\
To: <sip:echo@127.0.0.1:5060>\r\n\
From: sipp <sip:sipp@127.0.0.1:5070>;tag=1SIPpTag001\r\n\
Call-ID: 1-12345@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Subject: Performance Test\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 129\r\n\r\n\
v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

fn benches(c: &mut Criterion) {
    c.bench_function("sip_parse_invite", |b| {
        b.iter(|| message::parse(black_box(INVITE)).unwrap())
    });

    let request = match message::parse(INVITE).unwrap() {
        message::Message::Request(r) => r,
        _ => unreachable!(),
    };
    c.bench_function("sip_build_200", |b| {
        b.iter(|| {
            black_box(&request)
                .response(200, "OK")
                .with_to_tag("abcdef")
                .to_bytes()
        })
    });

    let offer = sdp::parse(&request.body).unwrap();
    let local = LocalMedia {
        address: "127.0.0.1".parse().unwrap(),
        port: 10000,
        session_id: 1,
        session_version: 1,
    };
    c.bench_function("sdp_negotiate_and_answer", |b| {
        b.iter(|| {
            let negotiated = sdp::negotiate_answer(
                black_box(&offer),
                &[Codec::Pcma, Codec::Pcmu],
                CodecPreference::Offer,
            )
            .unwrap();
            sdp::build_answer(&offer, &local, &negotiated)
        })
    });

    let mut packet = vec![0x80u8, 8, 0, 1, 0, 0, 0, 160, 0, 0, 0, 7];
    packet.extend_from_slice(&[0xd5; 160]);
    let mut renumber = Renumber::new(42, 1, 1);
    c.bench_function("rtp_echo_rewrite_20ms_pcma", |b| {
        b.iter(|| renumber.rewrite(black_box(&mut packet)))
    });
}

criterion_group!(all, benches);
criterion_main!(all);
