//! Bad input over UDP and TCP: each gets its defined outcome, and a good call right after
//! still succeeds.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

fn invite(call_id: &str) -> String {
    format!(
        "INVITE sip:echo@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-{call_id};rport\r\n\
From: <sip:tester@127.0.0.1>;tag=t-{call_id}\r\n\
To: <sip:echo@127.0.0.1>\r\n\
Call-ID: {call_id}\r\n\
CSeq: 1 INVITE\r\n\
Max-Forwards: 70\r\n\
Contact: <sip:tester@127.0.0.1:5999>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\r"
    )
}

/// Sends one datagram; returns the status line of the first answer within 500 ms.
async fn udp_exchange(target: SocketAddr, bytes: &[u8]) -> Option<String> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(bytes, target).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .map(str::to_string)
}

async fn expect_400(target: SocketAddr, message: String, reason: &str) {
    let status = udp_exchange(target, message.as_bytes()).await;
    assert_eq!(
        status.as_deref(),
        Some(format!("SIP/2.0 400 {reason}").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_mandatory_headers_get_400_naming_them() {
    let running = start(&test_config()).await;
    let udp = running.local.udp.unwrap();
    for (header, reason) in [
        ("Call-ID: m1\r\n", "Missing Call-ID"),
        ("CSeq: 1 INVITE\r\n", "Missing CSeq"),
        ("From: <sip:tester@127.0.0.1>;tag=t-m1\r\n", "Missing From"),
        ("To: <sip:echo@127.0.0.1>\r\n", "Missing To"),
    ] {
        expect_400(udp, invite("m1").replace(header, ""), reason).await;
        good_call(udp, "u1").await;
    }
    assert_eq!(
        running
            .sender
            .stats()
            .bad_requests_answered
            .load(Ordering::Relaxed),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_content_length_gets_400() {
    let running = start(&test_config()).await;
    let udp = running.local.udp.unwrap();
    expect_400(
        udp,
        invite("cl1").replace("Content-Length: 4", "Content-Length: 900"),
        "Content-Length 900 larger than the 4 body bytes received",
    )
    .await;
    good_call(udp, "u1").await;
    expect_400(
        udp,
        invite("cl2").replace("Content-Length: 4", "Content-Length: many"),
        "Malformed Content-Length \"many\"",
    )
    .await;
    good_call(udp, "u1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswerable_datagrams_are_dropped_and_counted() {
    let running = start(&test_config()).await;
    let udp = running.local.udp.unwrap();
    let stats = running.sender.stats();
    let truncated = invite("t1");
    let truncated = &truncated.as_bytes()[..120];
    let no_via = invite("v1").replace(
        "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-v1;rport\r\n",
        "",
    );
    let garbage: Vec<u8> = (0..1200u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    for (i, datagram) in [truncated, no_via.as_bytes(), &garbage[..]]
        .into_iter()
        .enumerate()
    {
        assert_eq!(
            udp_exchange(udp, datagram).await,
            None,
            "case {i} must get no answer"
        );
        assert_eq!(
            stats.datagrams_dropped.load(Ordering::Relaxed),
            i as u64 + 1
        );
        good_call(udp, "u1").await;
    }
}

/// True when the server closed the connection (EOF or reset) within 2 s.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_garbage_and_oversized_messages_close_the_connection() {
    let running = start(&test_config()).await;
    let tcp = running.local.tcp.unwrap();
    let stats = running.sender.stats();

    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let one_mib = {
        let mut m = invite("big")
            .replace("Content-Length: 4", "Content-Length: 1048576")
            .into_bytes();
        m.truncate(m.len() - 4);
        m.extend(std::iter::repeat_n(b'a', 1 << 20));
        m
    };
    let endless_headers = {
        let mut m = b"INVITE sip:echo@127.0.0.1 SIP/2.0\r\n".to_vec();
        while m.len() < (1 << 20) {
            m.extend_from_slice(
                b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        m
    };
    let bad_length = invite("bl")
        .replace("Content-Length: 4", "Content-Length: four")
        .into_bytes();
    for (i, bytes) in [garbage, one_mib, endless_headers, bad_length]
        .into_iter()
        .enumerate()
    {
        let mut stream = TcpStream::connect(tcp).await.unwrap();
        // The server may close before we finish writing a large message: that is the point.
        let _ = stream.write_all(&bytes).await;
        assert!(
            closed_by_server(&mut stream).await,
            "case {i}: connection must be closed"
        );
        assert_eq!(
            stats.streams_closed_on_error.load(Ordering::Relaxed),
            i as u64 + 1
        );
        good_call(tcp, "t1").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_formed_requests_get_their_rfc_answers() {
    let running = start(&test_config()).await;
    let udp = running.local.udp.unwrap();
    let request = |method: &str, extra: &str| {
        invite(&format!("r-{method}-{}", extra.len()))
            .replace("INVITE sip", &format!("{method} sip"))
            .replace("1 INVITE", &format!("1 {method}"))
            .replace("Max-Forwards: 70\r\n", extra)
    };
    let cases = [
        (
            request("FOOBAR", "Max-Forwards: 70\r\n"),
            "SIP/2.0 501 Not Implemented",
        ),
        // To voicegate itself, so not a hop used up (RFC 4475 §3.3.11).
        (request("OPTIONS", "Max-Forwards: 0\r\n"), "SIP/2.0 200 OK"),
        (
            request("INVITE", "Max-Forwards: 70\r\nRequire: nosuchext\r\n"),
            "SIP/2.0 420 Bad Extension",
        ),
        (
            request("BYE", "Max-Forwards: 70\r\n").replace(
                "To: <sip:echo@127.0.0.1>",
                "To: <sip:echo@127.0.0.1>;tag=none",
            ),
            "SIP/2.0 481 Call/Transaction Does Not Exist",
        ),
        (
            request("REGISTER", "Max-Forwards: 70\r\n"),
            "SIP/2.0 405 Method Not Allowed",
        ),
    ];
    for (message, expected) in cases {
        assert_eq!(
            udp_exchange(udp, message.as_bytes()).await.as_deref(),
            Some(expected),
            "{message}"
        );
    }
    good_call(udp, "u1").await;
}
