use std::net::SocketAddr;
use std::time::Duration;

use voicegate_sip::message::{Message, Method};

use super::*;
use crate::testing::{identity, invite, parsed, request, request_with, udp, OFFER};

fn leg() -> CallerLeg {
    leg_of(invite())
}

fn leg_of(invite: Request) -> CallerLeg {
    CallerLeg::new(invite, udp(), "ours", identity(), Timers::default())
}

/// Everything the leg sent: where, and what.
fn sent(leg: &mut CallerLeg) -> Vec<(SocketAddr, Message)> {
    std::iter::from_fn(|| leg.poll_transmit())
        .map(|t| (t.target, parsed(&t.bytes)))
        .collect()
}

/// What the leg answered: status and the method it answered, e.g. "200 CANCEL".
fn answers(leg: &mut CallerLeg) -> Vec<String> {
    sent(leg)
        .into_iter()
        .map(|(_, m)| match m {
            Message::Response(r) => format!("{} {}", r.status, r.cseq().1),
            other => panic!("not a response: {other:?}"),
        })
        .collect()
}

fn events(leg: &mut CallerLeg) -> Vec<CallerEvent> {
    std::iter::from_fn(|| leg.poll_event()).collect()
}

fn cancel() -> Request {
    request("CANCEL", 1, "z9hG4bK-invite", "", "")
}

/// The ACK of our 2xx (a transaction of its own) or of a final non-2xx (the INVITE's branch).
fn ack(branch: &str, body: &str) -> Request {
    request("ACK", 1, branch, "ours", body)
}

/// Answered and acknowledged, with nothing left to send.
fn confirmed(leg: &mut CallerLeg, now: Instant) {
    leg.respond(200, "OK", Some(Bytes::from_static(b"v=0\r\n")), now);
    assert!(leg
        .receive(ack("z9hG4bK-ack", ""), udp(), now)
        .is_some_and(|r| matches!(r, CallerRequest::Confirmed { answer: None })));
    sent(leg);
}

#[test]
fn a_cancel_is_answered_before_the_invites_487_and_the_leg_then_winds_down() {
    let now = Instant::now();
    let mut leg = leg();
    leg.respond(100, "Trying", None, now);
    leg.respond(180, "Ringing", None, now);
    assert_eq!(answers(&mut leg), vec!["100 INVITE", "180 INVITE"]);
    let request = leg.receive(cancel(), udp(), now);
    assert!(matches!(
        request,
        Some(CallerRequest::Cancel { proceeding: true })
    ));
    leg.respond(487, "Request Terminated", None, now);
    assert_eq!(answers(&mut leg), vec!["200 CANCEL", "487 INVITE"]);
    assert_eq!(leg.state(), CallerState::Ended);
    assert_eq!(leg.final_status(), 487);
    assert!(leg.receive(ack("z9hG4bK-invite", ""), udp(), now).is_none());
    assert!(!leg.is_idle(), "Timer I and the CANCEL's Timer J still run");
    let later = now + Duration::from_secs(32);
    leg.handle_timeout(later);
    assert!(leg.is_idle());
    assert!(events(&mut leg).is_empty());
}

#[test]
fn a_cancel_after_the_answer_leaves_the_call_up() {
    let now = Instant::now();
    let mut leg = leg();
    leg.respond(200, "OK", Some(Bytes::from_static(b"v=0\r\n")), now);
    sent(&mut leg);
    let request = leg.receive(cancel(), udp(), now);
    assert!(matches!(
        request,
        Some(CallerRequest::Cancel { proceeding: false })
    ));
    assert_eq!(answers(&mut leg), vec!["200 CANCEL"]);
    assert!(leg.is_up());
}

#[test]
fn a_retransmitted_invite_gets_the_last_response_again() {
    let now = Instant::now();
    let mut leg = leg();
    leg.respond(180, "Ringing", None, now);
    sent(&mut leg);
    assert!(leg.receive(invite(), udp(), now).is_none());
    assert_eq!(answers(&mut leg), vec!["180 INVITE"]);
}

#[test]
fn the_answer_carries_our_tag_contact_allow_and_the_queued_headers() {
    let now = Instant::now();
    let mut leg = leg();
    leg.add_final_header("Warning", "399 voicegate \"test\"".into());
    leg.respond(200, "OK", Some(Bytes::from_static(b"v=0\r\n")), now);
    let (target, message) = sent(&mut leg).remove(0);
    let Message::Response(ok) = message else {
        panic!("not a response")
    };
    assert_eq!(target, udp().remote);
    assert!(ok
        .headers
        .get("To")
        .is_some_and(|to| to.ends_with(";tag=ours")));
    assert_eq!(ok.headers.get("Contact"), Some("<sip:ours@192.0.2.1:5060>"));
    assert!(ok.headers.get("Allow").is_some_and(|a| a.contains("REFER")));
    assert_eq!(ok.headers.get("Warning"), Some("399 voicegate \"test\""));
    assert_eq!(ok.headers.get("Content-Type"), Some("application/sdp"));
    assert_eq!(leg.state(), CallerState::Answered);
}

#[test]
fn refusals_carry_what_they_need() {
    let now = Instant::now();
    let mut busy = leg();
    busy.respond(503, "Service Unavailable", None, now);
    let Message::Response(r) = sent(&mut busy).remove(0).1 else {
        panic!("not a response")
    };
    assert_eq!(r.headers.get("Retry-After"), Some("5"));
    assert!(r.headers.get("Contact").is_none());
    let mut unsupported = leg();
    unsupported.respond(415, "Unsupported Media Type", None, now);
    let Message::Response(r) = sent(&mut unsupported).remove(0).1 else {
        panic!("not a response")
    };
    assert_eq!(r.headers.get("Accept"), Some("application/sdp"));
    assert_eq!(unsupported.state(), CallerState::Ended);
}

#[test]
fn the_ack_confirms_once_and_brings_a_delayed_offers_answer() {
    let now = Instant::now();
    let mut leg = leg_of(request("INVITE", 1, "z9hG4bK-invite", "", ""));
    leg.respond(200, "OK", Some(Bytes::from_static(b"v=0\r\n")), now);
    let first = leg.receive(ack("z9hG4bK-ack", OFFER), udp(), now);
    match first {
        Some(CallerRequest::Confirmed { answer: Some(sdp) }) => assert_eq!(sdp, OFFER.as_bytes()),
        other => panic!("expected the confirmation with SDP, got {other:?}"),
    }
    assert_eq!(leg.state(), CallerState::Confirmed);
    assert!(
        leg.receive(ack("z9hG4bK-ack", OFFER), udp(), now).is_none(),
        "a retransmitted ACK confirms nothing again"
    );
}

#[test]
fn an_unacknowledged_200_is_retransmitted_then_reported_once_after_timer_h() {
    let start = Instant::now();
    let mut leg = leg();
    leg.respond(200, "OK", Some(Bytes::from_static(b"v=0\r\n")), start);
    assert_eq!(answers(&mut leg), vec!["200 INVITE"]);
    let first_retransmit = leg.poll_timeout().expect("a retransmission timer");
    assert_eq!(first_retransmit - start, Duration::from_millis(500));
    leg.handle_timeout(first_retransmit);
    assert_eq!(answers(&mut leg), vec!["200 INVITE"]);
    let mut now = first_retransmit;
    while let Some(deadline) = leg.poll_timeout() {
        now = deadline;
        leg.handle_timeout(now);
        sent(&mut leg);
    }
    assert_eq!(now - start, Duration::from_secs(32));
    assert_eq!(events(&mut leg), vec![CallerEvent::NoAck]);
    assert!(leg.is_idle());
}

#[test]
fn a_bye_before_the_answer_ends_the_dialog_and_the_invite() {
    let now = Instant::now();
    let mut leg = leg();
    leg.respond(180, "Ringing", None, now);
    sent(&mut leg);
    let bye = request_with(
        "BYE",
        2,
        "z9hG4bK-bye",
        "ours",
        "Reason: Q.850;cause=16\r\n",
        "",
    );
    match leg.receive(bye, udp(), now) {
        Some(CallerRequest::Bye { early, reason }) => {
            assert!(early);
            assert_eq!(reason.as_deref(), Some("Q.850;cause=16"));
        }
        other => panic!("expected the BYE, got {other:?}"),
    }
    assert_eq!(leg.state(), CallerState::Ended);
    leg.respond(487, "Request Terminated", None, now);
    assert_eq!(answers(&mut leg), vec!["200 BYE", "487 INVITE"]);
}

#[test]
fn a_reinvite_before_the_answer_gets_481_and_after_it_goes_to_the_call() {
    let now = Instant::now();
    let mut leg = leg();
    let early = request("INVITE", 2, "z9hG4bK-re1", "ours", OFFER);
    assert!(leg.receive(early, udp(), now).is_none());
    assert_eq!(answers(&mut leg), vec!["481 INVITE"]);
    confirmed(&mut leg, now);
    let reinvite = request("INVITE", 3, "z9hG4bK-re2", "ours", OFFER);
    let Some(CallerRequest::Reinvite(reinvite, source)) = leg.receive(reinvite, udp(), now) else {
        panic!("the re-INVITE goes to the call")
    };
    leg.answer_reinvite(&reinvite, &source, Ok(Bytes::from_static(b"v=0\r\n")), now);
    let Message::Response(ok) = sent(&mut leg).remove(0).1 else {
        panic!("not a response")
    };
    assert_eq!(ok.status, 200);
    assert_eq!(ok.headers.get("Contact"), Some("<sip:ours@192.0.2.1:5060>"));
    let ack = request_ack(3, "z9hG4bK-re2-ack");
    assert!(matches!(
        leg.receive(ack, udp(), now),
        Some(CallerRequest::ReinviteAck { answer: None })
    ));
    let refused = request("INVITE", 4, "z9hG4bK-re3", "ours", OFFER);
    let Some(CallerRequest::Reinvite(refused, source)) = leg.receive(refused, udp(), now) else {
        panic!("the re-INVITE goes to the call")
    };
    let not_here = Err((488, "Not Acceptable Here".to_string()));
    leg.answer_reinvite(&refused, &source, not_here, now);
    assert_eq!(answers(&mut leg), vec!["488 INVITE"]);
}

fn request_ack(cseq: u32, branch: &str) -> Request {
    request("ACK", cseq, branch, "ours", "")
}

#[test]
fn info_digits_are_answered_and_handed_to_the_call() {
    let now = Instant::now();
    let mut leg = leg();
    confirmed(&mut leg, now);
    let text = "Signal=5\r\nDuration=160\r\n";
    let info = request_with(
        "INFO",
        2,
        "z9hG4bK-info",
        "ours",
        "Content-Type: application/dtmf-relay\r\n",
        "",
    );
    let info = Request {
        body: Bytes::from_static(text.as_bytes()),
        ..info
    };
    match leg.receive(info, udp(), now) {
        Some(CallerRequest::Dtmf(digit)) => {
            assert_eq!((digit.digit, digit.duration_ms), ('5', 160))
        }
        other => panic!("expected a digit, got {other:?}"),
    }
    assert_eq!(answers(&mut leg), vec!["200 INFO"]);
}

/// A caller that supports timers and refreshes every 90 s.
fn timed_leg() -> CallerLeg {
    let invite = request_with(
        "INVITE",
        1,
        "z9hG4bK-invite",
        "",
        "Supported: timer\r\nSession-Expires: 90;refresher=uac\r\n",
        OFFER,
    );
    let mut leg = leg_of(invite);
    assert_eq!(leg.negotiate_timer(&TimerConfig::default()), Ok(()));
    leg
}

#[test]
fn the_callers_update_refreshes_its_session_and_silence_expires_it() {
    let start = Instant::now();
    let mut leg = timed_leg();
    leg.respond(200, "OK", Some(Bytes::from_static(b"v=0\r\n")), start);
    let Message::Response(ok) = sent(&mut leg).remove(0).1 else {
        panic!("not a response")
    };
    assert_eq!(ok.headers.get("Session-Expires"), Some("90;refresher=uac"));
    assert!(leg.receive(ack("z9hG4bK-ack", ""), udp(), start).is_some());

    let offer_in_update = request("UPDATE", 2, "z9hG4bK-up1", "ours", OFFER);
    assert!(leg.receive(offer_in_update, udp(), start).is_none());
    assert_eq!(answers(&mut leg), vec!["488 UPDATE"]);

    let refreshed_at = start + Duration::from_secs(40);
    let update = request("UPDATE", 3, "z9hG4bK-up2", "ours", "");
    assert!(leg.receive(update, udp(), refreshed_at).is_none());
    let Message::Response(ok) = sent(&mut leg).remove(0).1 else {
        panic!("not a response")
    };
    assert_eq!(ok.status, 200);
    assert_eq!(ok.headers.get("Session-Expires"), Some("90;refresher=uac"));
    assert_eq!(ok.headers.get("Require"), Some("timer"));

    // 90 s less a third: the session lapses 60 s after the last refresh.
    leg.handle_timeout(start + Duration::from_secs(61));
    assert!(events(&mut leg).is_empty(), "refreshed at 40 s");
    let mut expiry = start;
    let mut seen = Vec::new();
    while seen.is_empty() {
        expiry = leg.poll_timeout().expect("the session timer");
        leg.handle_timeout(expiry);
        seen = events(&mut leg);
    }
    assert_eq!(seen, vec![CallerEvent::SessionExpired]);
    assert_eq!(expiry, refreshed_at + Duration::from_secs(60));
    leg.handle_timeout(expiry + Duration::from_secs(1));
    assert!(events(&mut leg).is_empty(), "reported once");
}

#[test]
fn too_small_a_session_interval_gets_422_with_min_se() {
    let invite = request_with(
        "INVITE",
        1,
        "z9hG4bK-invite",
        "",
        "Supported: timer\r\nSession-Expires: 30\r\n",
        OFFER,
    );
    let mut leg = leg_of(invite);
    assert_eq!(leg.negotiate_timer(&TimerConfig::default()), Err(90));
    leg.respond(422, "Session Interval Too Small", None, Instant::now());
    let Message::Response(r) = sent(&mut leg).remove(0).1 else {
        panic!("not a response")
    };
    assert_eq!(r.status, 422);
    assert_eq!(r.headers.get("Min-SE"), Some("90"));
}

#[test]
fn our_bye_goes_back_the_way_the_caller_came_and_its_answer_ends_the_dialog() {
    let now = Instant::now();
    let mut leg = leg();
    confirmed(&mut leg, now);
    leg.bye("SIP;cause=408;text=\"no RTP\"", now);
    assert_eq!(leg.state(), CallerState::Ending);
    let (target, message) = sent(&mut leg).remove(0);
    let Message::Request(bye) = message else {
        panic!("not a request")
    };
    assert_eq!(target, udp().remote);
    assert_eq!(bye.method, Method::Bye);
    assert!(leg.on_response(&bye.response(200, "OK"), now));
    assert_eq!(
        events(&mut leg),
        vec![CallerEvent::ByeDone { status: Some(200) }]
    );
    assert_eq!(leg.state(), CallerState::Ended);
    let other = request("OPTIONS", 9, "z9hG4bK-other", "ours", "").response(200, "OK");
    assert!(!leg.on_response(&other, now), "not an answer to ours");
}

#[test]
fn our_reinvite_waits_for_the_confirmation_and_goes_one_at_a_time() {
    let now = Instant::now();
    let mut leg = leg();
    leg.respond(200, "OK", Some(Bytes::from_static(b"v=0\r\n")), now);
    sent(&mut leg);
    assert!(
        !leg.reinvite(Bytes::from_static(b"v=0\r\n"), now),
        "no ACK yet"
    );
    assert!(leg.receive(ack("z9hG4bK-ack", ""), udp(), now).is_some());
    assert!(leg.reinvite(Bytes::from_static(b"v=0\r\n"), now));
    assert!(
        !leg.reinvite(Bytes::from_static(b"v=0\r\n"), now),
        "one pending"
    );
    let Message::Request(reinvite) = sent(&mut leg).remove(0).1 else {
        panic!("not a request")
    };
    let ok = reinvite.response(200, "OK").with_to_tag("theirs");
    assert!(leg.on_response(&ok, now));
    assert_eq!(events(&mut leg), vec![CallerEvent::ReinviteDone(ok)]);
}

#[test]
fn headers_are_forwarded_by_name_or_prefix() {
    let invite = request_with(
        "INVITE",
        1,
        "z9hG4bK-invite",
        "",
        "X-Customer: 42\r\nx-campaign: spring\r\nUser-To-User: 3a\r\n",
        OFFER,
    );
    let leg = leg_of(invite);
    let wanted = |patterns: &[&str]| {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        leg.forwarded_headers(&patterns)
    };
    assert_eq!(
        wanted(&["X-*"]),
        vec![
            ("X-Customer".to_string(), "42".to_string()),
            ("x-campaign".to_string(), "spring".to_string())
        ]
    );
    assert_eq!(
        wanted(&["user-to-user"]),
        vec![("User-To-User".to_string(), "3a".to_string())]
    );
    assert!(wanted(&["X-Customer-Id-That-Is-Long*"]).is_empty());
    assert!(wanted(&[]).is_empty());
}
