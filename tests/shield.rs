//! Safe to expose: what one stream connection cannot do to the others (issue 11).

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

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

/// A connection from `source_ip` (any 127.x address on Linux) to `target` that sends nothing.
async fn idle_connection(source_ip: &str, target: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{source_ip}:0").parse().unwrap())
        .unwrap();
    socket.connect(target).await.unwrap()
}

/// How long until the server closes `stream` (EOF or reset), if within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// Polls `counter` until it reads `expected` (within 5 s), so that counts are compared once
/// the accept loop has seen every connection.
async fn wait_for(counter: &AtomicU64, expected: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter.load(Ordering::Relaxed) != expected {
        assert!(
            Instant::now() < deadline,
            "{what}: {} instead of {expected}",
            counter.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Idle connections beyond the caps are refused at once, calls over UDP and TCP go on while
/// the admitted ones are held, and the admitted ones are closed by the header and TLS
/// handshake timeouts, giving their places back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_crowd_out_calls() {
    let mut config = test_config();
    config.sip.max_connections = 25;
    config.sip.max_connections_per_ip = 10;
    config.sip.header_timeout_secs = 10;
    config.sip.tls_handshake_timeout_secs = 10;
    let running = start(&config).await;
    let (udp, tcp, tls) = (
        running.local.udp.unwrap(),
        running.local.tcp.unwrap(),
        running.local.tls.unwrap(),
    );
    let stats = running.sender.stats();

    // 15 silent TCP connections from one address and 15 that never start TLS from another:
    // 10 of each are admitted (the per-address cap), the rest closed at once.
    let mut tcp_idle = Vec::new();
    let mut tls_idle = Vec::new();
    for _ in 0..15 {
        tcp_idle.push(idle_connection("127.0.0.2", tcp).await);
        tls_idle.push(idle_connection("127.0.0.3", tls).await);
    }
    wait_for(
        &stats.connections_refused,
        10,
        "refused by the per-address cap",
    )
    .await;
    wait_for(&stats.connections_open, 20, "admitted").await;
    let mut held = Vec::new();
    for mut stream in tcp_idle.into_iter().chain(tls_idle) {
        if closed_within(&mut stream, Duration::from_millis(300))
            .await
            .is_none()
        {
            held.push(stream);
        }
    }
    assert_eq!(
        held.len(),
        20,
        "the refused ones, and only they, are closed"
    );

    // Calls still go through while the idle connections are held.
    good_call(udp, "u1").await;
    good_call(tcp, "t1").await;

    // The total cap: 5 places are left, a sixth connection is refused.
    for _ in 0..6 {
        held.push(idle_connection("127.0.0.4", tcp).await);
    }
    wait_for(&stats.connections_refused, 11, "refused by the total cap").await;
    wait_for(&stats.connections_open, 25, "admitted up to the cap").await;

    // Held connections are closed by the header and handshake timeouts (10 s from their
    // opening), none early.
    let mut open_longest = Duration::ZERO;
    for stream in &mut held {
        let Some(after) = closed_within(stream, Duration::from_secs(15)).await else {
            panic!("an idle connection outlived the header/handshake timeout");
        };
        open_longest = open_longest.max(after);
    }
    assert!(open_longest > Duration::from_secs(2), "{open_longest:?}");
    wait_for(&stats.connections_open, 0, "open after the timeouts").await;
    assert!(stats.connections_timed_out.load(Ordering::Relaxed) >= 25);
    // Their places are free again.
    good_call(tcp, "t1").await;
}

/// A connection that trickles a message without ever finishing it is closed by the header
/// timeout; one that has spoken and then says nothing, by the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_and_idle_connections_are_closed() {
    let mut config = test_config();
    config.sip.header_timeout_secs = 2;
    config.sip.connection_idle_secs = 2;
    let running = start(&config).await;
    let tcp = running.local.tcp.unwrap();
    let stats = running.sender.stats();

    let (mut reader, mut writer) = TcpStream::connect(tcp).await.unwrap().into_split();
    let trickle = tokio::spawn(async move {
        let _ = writer
            .write_all(b"OPTIONS sip:echo@127.0.0.1 SIP/2.0\r\n")
            .await;
        while writer.write_all(b"X-Slow: y\r\n").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a trickling connection must be closed");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(1500),
        "closed early: {after:?}"
    );
    trickle.abort();
    wait_for(&stats.connections_timed_out, 1, "timed out").await;

    // A whole message, its answer, then silence: closed by the idle timeout.
    let mut stream = TcpStream::connect(tcp).await.unwrap();
    stream
        .write_all(options("idle-after-one").as_bytes())
        .await
        .unwrap();
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"SIP/2.0 200 "));
    let after = closed_within(&mut stream, Duration::from_secs(6))
        .await
        .expect("an idle connection must be closed");
    assert!(
        after >= Duration::from_millis(1500),
        "closed early: {after:?}"
    );
    wait_for(&stats.connections_timed_out, 2, "timed out").await;
    wait_for(&stats.connections_open, 0, "open").await;
}

/// What the server writes until it closes `stream` (EOF or reset), or None if it is still open
/// after `limit`.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .ok()?;
    Some(String::from_utf8_lossy(&got).into_owned())
}

/// An OPTIONS from `source_ip` on a new connection, and the server's first answer.
async fn options_from(source_ip: &str, target: SocketAddr, call_id: &str) -> String {
    let mut stream = idle_connection(source_ip, target).await;
    stream.write_all(options(call_id).as_bytes()).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .expect("an answer within 2 s")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// A source over its request rate on TCP: its connections are closed (answers already due
/// still written), new ones on TCP and TLS are closed at accept without an answer, another
/// address is still served, and once the block ends the source is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_source_loses_its_connections_until_the_block_ends() {
    let mut config = test_config();
    config.limits.requests_per_window = 3;
    config.limits.window_secs = 1;
    config.limits.block_secs = 2;
    let running = start(&config).await;
    let (tcp, tls) = (running.local.tcp.unwrap(), running.local.tls.unwrap());
    let stats = running.sender.stats();

    let mut idle = idle_connection("127.0.0.2", tcp).await;
    // Its pong shows the connection is being served before the block.
    idle.write_all(b"\r\n\r\n").await.unwrap();
    let mut pong = [0u8; 2];
    idle.read_exact(&mut pong).await.unwrap();
    let mut flooding = idle_connection("127.0.0.2", tcp).await;
    let four: String = (0..4).map(|n| options(&format!("flood-{n}"))).collect();
    flooding.write_all(four.as_bytes()).await.unwrap();
    let blocked_at = Instant::now();
    let answers = read_to_close(&mut flooding, Duration::from_secs(1))
        .await
        .expect("the flooding connection is closed");
    assert_eq!(
        answers.matches("SIP/2.0 200 ").count(),
        3,
        "the answers within the limit are written before the close: {answers:?}"
    );
    assert_eq!(
        read_to_close(&mut idle, Duration::from_secs(1)).await,
        Some(String::new()),
        "the source's other connection is closed too"
    );
    wait_for(
        &stats.connections_closed_on_request,
        2,
        "closed on the block",
    )
    .await;

    // New connections are closed at once, unanswered; TLS before any handshake.
    let mut again = idle_connection("127.0.0.2", tcp).await;
    let _ = again.write_all(options("while-blocked").as_bytes()).await;
    assert_eq!(
        read_to_close(&mut again, Duration::from_millis(500)).await,
        Some(String::new())
    );
    let mut tls_again = idle_connection("127.0.0.2", tls).await;
    assert!(read_to_close(&mut tls_again, Duration::from_millis(500))
        .await
        .is_some());
    wait_for(&stats.connections_declined, 2, "declined at accept").await;

    // Another address is served meanwhile.
    let answer = options_from("127.0.0.3", tcp, "bystander").await;
    assert!(answer.starts_with("SIP/2.0 200 "), "{answer:?}");

    // After the block (and its window), the source is served again.
    tokio::time::sleep_until((blocked_at + Duration::from_millis(2200)).into()).await;
    let answer = options_from("127.0.0.2", tcp, "after-block").await;
    assert!(answer.starts_with("SIP/2.0 200 "), "{answer:?}");
    assert_eq!(stats.connections_declined.load(Ordering::Relaxed), 2);
    assert_eq!(
        running.core.stats.sources_blocked.load(Ordering::Relaxed),
        1
    );
}
