//! Inside a call: SDP offer/answer, the echo of RTP, hold and resume, delayed offer, and the
//! failure answers (488, 503), driven by a scripted UA so the SDP and RTP can be checked.

mod common;

use common::uac::{body_text, offer, rtp_packet, Uac};
use common::*;
use std::time::Duration;
use voicegate_sip::message::Message;

/// Sends `count` RTP packets and returns how many came back, checking each echo.
async fn echo_round(uac: &Uac, target: std::net::SocketAddr, count: u16, first_seq: u16) -> usize {
    let mut buf = [0u8; 2048];
    let mut echoed = 0;
    let mut ssrcs = std::collections::HashSet::new();
    let mut seqs = Vec::new();
    for i in 0..count {
        let packet = rtp_packet(
            first_seq + i,
            160 * (first_seq + i) as u32,
            0x1111,
            8,
            (i % 200) as u8,
        );
        uac.rtp.send_to(&packet, target).await.unwrap();
        if let Ok(Ok((n, from))) =
            tokio::time::timeout(Duration::from_millis(300), uac.rtp.recv_from(&mut buf)).await
        {
            assert_eq!(
                from, target,
                "echo comes from the port in the SDP (symmetric RTP)"
            );
            assert_eq!(&buf[12..n], &packet[12..], "payload echoed unchanged");
            ssrcs.insert(u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]));
            seqs.push(u16::from_be_bytes([buf[2], buf[3]]));
            echoed += 1;
        }
    }
    if echoed > 0 {
        assert_eq!(ssrcs.len(), 1, "one SSRC of our own");
        assert!(!ssrcs.contains(&0x1111), "not the caller's SSRC");
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
            "continuous sequence numbers: {seqs:?}"
        );
    }
    echoed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_number_returns_every_rtp_packet() {
    let running = start(&test_config()).await;
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    uac.invite(&offer(uac.rtp_port(), "8 0 101", "sendrecv"))
        .await;
    let ok = uac.final_response().await;
    assert_eq!(ok.status, 200);
    let sdp = body_text(&ok);
    assert!(
        sdp.contains("m=audio")
            && sdp.contains(" RTP/AVP 8 101")
            && sdp.contains("a=rtpmap:8 PCMA/8000"),
        "{sdp}"
    );
    assert!(
        sdp.contains("a=ptime:20") && sdp.contains("a=sendrecv"),
        "{sdp}"
    );
    let target = Uac::media_target(&ok);
    uac.ack("").await;
    assert_eq!(echo_round(&uac, target, 50, 1000).await, 50);
    assert_eq!(uac.bye().await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_stops_the_echo_and_resume_restarts_it() {
    let running = start(&test_config()).await;
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    uac.invite(&offer(uac.rtp_port(), "8", "sendrecv")).await;
    let ok = uac.final_response().await;
    let target = Uac::media_target(&ok);
    uac.ack("").await;
    assert_eq!(echo_round(&uac, target, 5, 0).await, 5);

    uac.invite(&offer(uac.rtp_port(), "8", "sendonly")).await;
    let held = uac.final_response().await;
    assert_eq!(held.status, 200);
    assert!(
        body_text(&held).contains("a=recvonly"),
        "{}",
        body_text(&held)
    );
    uac.ack("").await;
    assert_eq!(
        echo_round(&uac, target, 5, 5).await,
        0,
        "no echo while held"
    );

    uac.invite(&offer(uac.rtp_port(), "8", "inactive")).await;
    let inactive = uac.final_response().await;
    assert!(body_text(&inactive).contains("a=inactive"));
    uac.ack("").await;

    uac.invite(&offer(uac.rtp_port(), "8", "sendrecv")).await;
    let resumed = uac.final_response().await;
    assert!(body_text(&resumed).contains("a=sendrecv"));
    uac.ack("").await;
    assert_eq!(echo_round(&uac, target, 5, 10).await, 5);
    assert_eq!(uac.bye().await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_offer_gets_our_offer_and_reads_the_answer_from_the_ack() {
    let running = start(&test_config()).await;
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    uac.invite("").await;
    let ok = uac.final_response().await;
    assert_eq!(ok.status, 200);
    let sdp = body_text(&ok);
    assert!(
        sdp.contains("RTP/AVP 8 0 101") && sdp.contains("telephone-event/8000"),
        "{sdp}"
    );
    let target = Uac::media_target(&ok);
    uac.ack(&offer(uac.rtp_port(), "0", "sendrecv")).await;
    assert_eq!(echo_round(&uac, target, 10, 0).await, 10);
    assert_eq!(uac.bye().await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_common_codec_gets_488_naming_the_offer() {
    let running = start(&test_config()).await;
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    uac.invite(&offer(uac.rtp_port(), "18", "sendrecv")).await;
    let refused = uac.final_response().await;
    assert_eq!(refused.status, 488);
    assert!(refused.reason.contains("G729"), "{}", refused.reason);
    uac.ack_failure().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_rtp_ports_give_503_with_retry_after() {
    let mut config = test_config();
    let (min, _) = rtp_range(2);
    config.rtp.port_min = min;
    config.rtp.port_max = min + 1; // one RTP/RTCP pair
    let running = start(&config).await;
    let mut first = Uac::new(running.local.udp.unwrap()).await;
    first
        .invite(&offer(first.rtp_port(), "8", "sendrecv"))
        .await;
    assert_eq!(first.final_response().await.status, 200);
    first.ack("").await;

    let mut second = Uac::new(running.local.udp.unwrap()).await;
    second
        .invite(&offer(second.rtp_port(), "8", "sendrecv"))
        .await;
    let busy = second.final_response().await;
    assert_eq!(busy.status, 503);
    assert!(busy.headers.get("Retry-After").is_some());
    second.ack_failure().await;

    // The pair comes back when the first call ends (its media task stops just after the BYE).
    assert_eq!(first.bye().await.status, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while running.core.pool.in_use() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ports not given back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut third = Uac::new(running.local.udp.unwrap()).await;
    third
        .invite(&offer(third.rtp_port(), "8", "sendrecv"))
        .await;
    assert_eq!(third.final_response().await.status, 200);
    third.ack("").await;
    assert_eq!(third.bye().await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_200_is_retransmitted_until_acked() {
    let running = start(&test_config()).await;
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    uac.invite(&offer(uac.rtp_port(), "8", "sendrecv")).await;
    assert_eq!(uac.final_response().await.status, 200);
    // T1 = 500 ms: copies at about 0.5 s and 1.5 s.
    let mut copies = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1800);
    while let Some(m) = uac
        .recv(until.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        if matches!(m, Message::Response(ref r) if r.status == 200) {
            copies += 1;
        }
    }
    assert_eq!(copies, 2, "two retransmissions of the 200 in 1.8 s");
    uac.ack("").await;
    assert!(
        uac.recv(Duration::from_millis(1500)).await.is_none(),
        "the ACK stops them"
    );
    assert_eq!(uac.bye().await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_cancel_is_harmless_and_requests_after_the_end_get_481() {
    let running = start(&test_config()).await;
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    uac.invite(&offer(uac.rtp_port(), "8", "sendrecv")).await;
    let ok = uac.final_response().await;
    assert_eq!(ok.status, 200);
    let target = Uac::media_target(&ok);
    uac.ack("").await;
    // CANCEL after the answer: 200 to the CANCEL, the call goes on (RFC 3261 §9.2).
    assert_eq!(uac.cancel().await.status, 200);
    assert_eq!(echo_round(&uac, target, 3, 0).await, 3);
    assert_eq!(uac.bye().await.status, 200);
    // A new BYE in the ended dialog.
    assert_eq!(uac.bye().await.status, 481);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_sdp_gets_415() {
    let running = start(&test_config()).await;
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    let text = uac
        .request_text("INVITE", "hello")
        .replace("application/sdp", "text/plain");
    uac.send(&text).await;
    let refused = uac.final_response().await;
    assert_eq!(refused.status, 415);
    assert_eq!(refused.headers.get("Accept"), Some("application/sdp"));
    uac.ack_failure().await;
}

/// Our answer carries SDP: a caller whose Accept rules SDP out gets 406 (RFC 3261 §21.4.7,
/// RFC 4475 sdp01); one that lists it, or a wildcard covering it, gets the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accept_without_sdp_gets_406_and_one_covering_sdp_gets_the_call() {
    let running = start(&test_config()).await;
    for (accept, status) in [
        ("Accept: text/nobodyKnowsThis\r\n", 406),
        ("Accept: text/plain, application/sdp;q=0\r\n", 406),
        ("Accept: text/plain, application/*\r\n", 200),
        ("Accept: */*\r\n", 200),
    ] {
        let mut uac = Uac::new(running.local.udp.unwrap()).await;
        let response = uac.call("echo", "0", accept).await;
        assert_eq!(response.status, status, "{accept}");
        if status == 406 {
            assert!(
                response
                    .headers
                    .get("Warning")
                    .is_some_and(|w| w.starts_with("399 ")),
                "406 without Warning 399: {:?}",
                response.headers
            );
            assert!(response.body.is_empty(), "406 carries a body");
        } else {
            assert_eq!(uac.bye().await.status, 200);
        }
    }
}

/// Max-Forwards 0 to the echo number: voicegate is the target, not a hop, so the call is
/// answered (RFC 4475 §3.3.11), where it used to get 483.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_forwards_zero_to_the_echo_number_is_answered() {
    let running = start(&test_config()).await;
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    let invite = uac
        .request_text("INVITE", &offer(uac.rtp_port(), "0", "sendrecv"))
        .replace("Max-Forwards: 70\r\n", "Max-Forwards: 0\r\n");
    uac.send(&invite).await;
    let answer = uac.final_response().await;
    assert_eq!(answer.status, 200, "{:?}", answer.headers);
    uac.ack("").await;
    assert_eq!(uac.bye().await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_dtmf_becomes_the_same_event_as_rfc4733() {
    let running = start(&test_config()).await;
    let mut events = running.core.events.subscribe();
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    uac.invite(&offer(uac.rtp_port(), "8 101", "sendrecv"))
        .await;
    assert_eq!(uac.final_response().await.status, 200);
    uac.ack("").await;
    for (content_type, body) in [
        ("application/dtmf-relay", "Signal=5\r\nDuration=160\r\n"),
        ("application/dtmf", "#"),
    ] {
        let text = uac
            .request_text("INFO", body)
            .replace("application/sdp", content_type);
        uac.cseq += 1;
        uac.send(&text).await;
        assert_eq!(uac.final_response().await.status, 200);
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(1), events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            voicegate::core::CallEvent::Dtmf { digit, via, .. } => got.push((digit, via)),
        }
    }
    assert_eq!(got, vec![('5', "info"), ('#', "info")]);
    assert_eq!(uac.bye().await.status, 200);
}

/// Inside a call, a method we know but that means nothing there gets 405 with Allow, one we
/// do not implement 501 (RFC 3261 §8.2.1), and the call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_dialog_methods_we_do_not_take_get_405_or_501() {
    let running = start(&test_config()).await;
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    uac.invite(&offer(uac.rtp_port(), "8", "sendrecv")).await;
    assert_eq!(uac.final_response().await.status, 200);
    uac.ack("").await;
    for (method, status, reason) in [
        ("MESSAGE", 405, "Method Not Allowed"),
        ("SUBSCRIBE", 405, "Method Not Allowed"),
        ("FOOBAR", 501, "Not Implemented"),
    ] {
        let text = uac.request_text(method, "");
        uac.cseq += 1;
        uac.send(&text).await;
        let answer = uac.final_response().await;
        assert_eq!(
            (answer.status, answer.reason.as_str()),
            (status, reason),
            "{method}"
        );
        let allow = answer.headers.get("Allow");
        if status == 405 {
            assert!(
                allow.is_some_and(|a| a.contains("INVITE") && !a.contains(method)),
                "{allow:?}"
            );
        }
    }
    assert_eq!(uac.bye().await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_call_is_ended_with_a_bye_carrying_a_reason() {
    let mut config = test_config();
    config.rtp.timeout_secs = 1;
    let running = start(&config).await;
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    uac.invite(&offer(uac.rtp_port(), "8", "sendrecv")).await;
    let ok = uac.final_response().await;
    let target = Uac::media_target(&ok);
    uac.ack("").await;
    uac.rtp
        .send_to(&rtp_packet(1, 160, 0x2222, 8, 0xd5), target)
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let bye = loop {
        match uac.recv(Duration::from_secs(4)).await {
            Some(Message::Request(r)) if r.method == "BYE" => break r,
            Some(_) => continue,
            None => panic!("no BYE after the RTP timeout"),
        }
    };
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let reason = bye.headers.get("Reason").unwrap_or_default();
    assert!(
        reason.starts_with("SIP;cause=408") && reason.contains("no RTP"),
        "{reason}"
    );
    uac.reply(&bye, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_hold_is_not_cut_off_by_the_rtp_timeout() {
    let mut config = test_config();
    config.rtp.timeout_secs = 1;
    let running = start(&config).await;
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    uac.invite(&offer(uac.rtp_port(), "8", "inactive")).await;
    assert_eq!(uac.final_response().await.status, 200);
    uac.ack("").await;
    // Longer than the timeout, with no RTP at all: a held call stays up.
    assert!(
        uac.recv(Duration::from_millis(2500)).await.is_none(),
        "no BYE while held"
    );
    assert_eq!(uac.bye().await.status, 200);
}
