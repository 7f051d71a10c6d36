//! Safe to expose: what one stream connection cannot do to the others (issue 11).

mod common;

use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Everything the server writes until it closes the connection (or 3 s pass).
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

fn options(call_id: &str) -> String {
    format!(
        "OPTIONS sip:echo@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-{call_id}\r\n\
From: <sip:tester@127.0.0.1>;tag=t-{call_id}\r\n\
To: <sip:echo@127.0.0.1>\r\n\
Call-ID: {call_id}\r\n\
CSeq: 1 OPTIONS\r\n\
Max-Forwards: 70\r\n\
Content-Length: 0\r\n\r\n"
    )
}

/// A good message and an unparseable one in one write: the good one's answer is still sent
/// before the connection is closed (RFC 3261 §18.3 closes a stream whose framing is lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_to_a_good_message_survives_a_bad_one_behind_it() {
    let running = start(&test_config()).await;
    let tcp = running.local.tcp.unwrap();
    for attempt in 0..20 {
        let mut stream = TcpStream::connect(tcp).await.unwrap();
        let mut bytes = options(&format!("pair-{attempt}"));
        bytes.push_str("X\r\n\r\n");
        stream.write_all(bytes.as_bytes()).await.unwrap();
        let answer = read_until_closed(&mut stream).await;
        assert!(
            answer.starts_with("SIP/2.0 200 "),
            "attempt {attempt}: expected the 200 for the OPTIONS, got {answer:?}"
        );
    }
}

/// A Content-Length that is not a number loses the stream's framing: the request is still
/// answered with a 400 naming the fault, then the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_content_length_on_a_stream_is_answered_then_closed() {
    let running = start(&test_config()).await;
    let tcp = running.local.tcp.unwrap();
    let mut stream = TcpStream::connect(tcp).await.unwrap();
    let bytes = options("bad-cl").replace("Content-Length: 0", "Content-Length: four");
    stream.write_all(bytes.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(
        answer.starts_with("SIP/2.0 400 Malformed Content-Length"),
        "{answer:?}"
    );
}
