use std::time::Duration;

use voicegate_sip::message::{Message, Request};
use voicegate_sip::transaction::Timers;

use super::*;
use crate::testing::{hop, invite_params, parsed};

const ATTEMPT: Duration = Duration::from_secs(2);
const ANSWER: Duration = Duration::from_secs(60);

fn next_hop(label: &str) -> NextHop {
    NextHop {
        request_uri: format!("sip:+15550123@{label}.example"),
        credentials: None,
        fixed: None,
        label: label.to_string(),
        to: None,
    }
}

fn local() -> LocalMedia {
    LocalMedia {
        address: "192.0.2.1".parse().unwrap(),
        port: 10000,
        session_id: 1,
        session_version: 1,
    }
}

fn peer(hops: &[&str], now: Instant) -> Peer<()> {
    let hops = hops.iter().map(|h| next_hop(h)).collect();
    Peer::new(PeerRole::Forward, hops, Some(()), local(), now + ANSWER)
}

/// Tries the next hop as the call task would (resolving and connecting left out): the
/// INVITE that went out.
fn place_next(peer: &mut Peer<()>, now: Instant) -> Option<Request> {
    let hop_to_try = peer.next_hop()?;
    let leg = OutboundLeg::invite(invite_params(), hop(), Timers::default(), now);
    peer.placed(leg, &hop_to_try.label, now, ATTEMPT);
    sent(peer).into_iter().next()
}

fn sent(peer: &mut Peer<()>) -> Vec<Request> {
    std::iter::from_fn(|| peer.poll_send())
        .map(|t| match parsed(&t.bytes) {
            Message::Request(r) => r,
            other => panic!("not a request: {other:?}"),
        })
        .collect()
}

fn answer(invite: &Request, status: u16, reason: &str) -> Response {
    invite.response(status, reason).with_to_tag("far")
}

/// Feeds a final refusal to the peer as the call task does.
fn refused(peer: &mut Peer<()>, invite: &Request, status: u16, now: Instant) -> AfterFailure {
    let response = answer(invite, status, "Refused");
    match peer.on_response(&response, now) {
        Some(OutboundEvent::Failed { status, reason, .. }) => peer.failed(Failure {
            status,
            reason,
            retry_after: None,
        }),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_5xx_moves_on_to_the_next_hop_and_a_486_is_the_callees_word() {
    let now = Instant::now();
    let mut peer = peer(&["a", "b", "c"], now);
    let first = place_next(&mut peer, now).expect("INVITE to a");
    assert_eq!(refused(&mut peer, &first, 503, now), AfterFailure::TryNext);
    let second = place_next(&mut peer, now).expect("INVITE to b");
    assert_eq!(peer.label(), "b");
    assert_eq!(peer.attempts, 2);
    match refused(&mut peer, &second, 486, now) {
        AfterFailure::Exhausted(failure) => assert_eq!(failure.status, 486),
        other => panic!("a 486 ends the call: {other:?}"),
    }
    assert!(peer.next_hop().is_none(), "c is never tried");
    assert!(peer.leg.is_none());
    assert!(peer.is_busy(), "the refused legs still ACK retransmissions");
}

#[tokio::test(start_paused = true)]
async fn the_last_hops_failure_is_the_answer() {
    let now = Instant::now();
    let mut peer = peer(&["a"], now);
    peer.next_hop();
    peer.unreachable("Service Unavailable (a unreachable)".into());
    assert!(peer.next_hop().is_none());
    assert_eq!(
        peer.failure(),
        Failure {
            status: 503,
            reason: "Service Unavailable (a unreachable)".into(),
            retry_after: None,
        }
    );
    let nothing_tried = Peer::<()>::new(PeerRole::Forward, Vec::new(), None, local(), now);
    assert_eq!(
        nothing_tried.failure().reason,
        "Service Unavailable (no route)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_hop_is_given_up_after_the_attempt_timeout() {
    let start = Instant::now();
    let mut peer = peer(&["a", "b"], start);
    place_next(&mut peer, start).expect("INVITE to a");
    let deadline = peer.deadlines().min().expect("a deadline");
    assert_eq!(
        deadline - start,
        Duration::from_millis(500),
        "Timer A first"
    );
    let mut now = start;
    let mut passed = None;
    while passed.is_none() {
        now = peer.deadlines().min().expect("a deadline");
        assert!(peer.handle_timeout(now).is_empty());
        sent(&mut peer);
        passed = peer.check_deadlines(now);
    }
    assert_eq!(now - start, ATTEMPT);
    assert_eq!(passed, Some(PeerDeadline::Silent { label: "a".into() }));
    let timeout = Failure {
        status: 408,
        reason: "Request Timeout (no response from a)".into(),
        retry_after: None,
    };
    assert_eq!(peer.failed(timeout), AfterFailure::TryNext);
    // The silent leg lingers until its INVITE transaction gives up (Timer B, 64×T1).
    let mut finished = Vec::new();
    while peer.is_busy() {
        now = peer.deadlines().min().expect("the silent leg's timer");
        peer.handle_timeout(now);
        sent(&mut peer);
        finished.extend(peer.take_finished());
    }
    assert_eq!(finished.len(), 1, "handed back to lose its route");
    assert_eq!(now - start, Duration::from_secs(32));
}

#[tokio::test(start_paused = true)]
async fn a_hop_that_rings_too_long_is_cancelled_with_480() {
    let start = Instant::now();
    let mut peer = peer(&["a", "b"], start);
    let invite = place_next(&mut peer, start).expect("INVITE to a");
    let ringing = answer(&invite, 180, "Ringing");
    assert!(matches!(
        peer.on_response(&ringing, start),
        Some(OutboundEvent::Provisional(_))
    ));
    assert!(
        peer.check_deadlines(start + ATTEMPT).is_none(),
        "it rang: not silent"
    );
    let at = start + ANSWER;
    assert_eq!(
        peer.check_deadlines(at),
        Some(PeerDeadline::NoAnswer { label: "a".into() })
    );
    let cancel = sent(&mut peer).remove(0);
    assert_eq!(cancel.method, "CANCEL");
    assert_eq!(peer.failure().status, 480);
    assert!(
        peer.next_hop().is_none(),
        "b is not tried after the caller's wait"
    );
}

#[tokio::test(start_paused = true)]
async fn srv_siblings_come_before_the_other_hops() {
    let now = Instant::now();
    let mut peer = peer(&["a", "b"], now);
    let a = peer.next_hop().expect("a");
    let sibling = |port| Target {
        addr: format!("192.0.2.20:{port}").parse().unwrap(),
        transport: voicegate_sip::transport::TransportKind::Udp,
    };
    peer.try_next(&a, vec![sibling(5060), sibling(5062)]);
    let order: Vec<_> = std::iter::from_fn(|| peer.next_hop())
        .map(|h| (h.label, h.fixed.map(|t| t.addr.port())))
        .collect();
    assert_eq!(
        order,
        vec![
            ("a".to_string(), Some(5060)),
            ("a".to_string(), Some(5062)),
            ("b".to_string(), None)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn hanging_up_cancels_a_ringing_leg_and_byes_an_answered_one() {
    let now = Instant::now();
    let mut ringing = peer(&["a", "b"], now);
    let invite = place_next(&mut ringing, now).expect("INVITE");
    ringing.on_response(&answer(&invite, 180, "Ringing"), now);
    ringing.hang_up("", now);
    assert_eq!(sent(&mut ringing)[0].method, "CANCEL");
    assert!(ringing.next_hop().is_none(), "no hop after a hang-up");

    let mut answered = peer(&["a"], now);
    let invite = place_next(&mut answered, now).expect("INVITE");
    let ok = answer(&invite, 200, "OK");
    assert!(matches!(
        answered.on_response(&ok, now),
        Some(OutboundEvent::Answered(_))
    ));
    answered.answered(&ok, 1800, now);
    sent(&mut answered); // the ACK
    answered.hang_up("SIP;cause=487", now);
    let bye = sent(&mut answered).remove(0);
    assert_eq!(bye.method, "BYE");
    assert_eq!(bye.headers.get("Reason"), Some("SIP;cause=487"));
    let mut unknown = answer(&invite, 200, "OK");
    unknown.headers.0.retain(|h| h.name != "Call-ID");
    let unknown = unknown.header("Call-ID", "other@elsewhere");
    assert!(answered.owns(invite.call_id()));
    assert!(!answered.owns("other@elsewhere"));
    assert_eq!(answered.on_response(&unknown, now), None);
}

#[tokio::test(start_paused = true)]
async fn the_answered_legs_session_is_refreshed_by_us_at_half_the_interval() {
    let start = Instant::now();
    let mut peer = peer(&["a"], start);
    let invite = place_next(&mut peer, start).expect("INVITE");
    let ok = answer(&invite, 200, "OK").header("Session-Expires", "90;refresher=uac");
    peer.on_response(&ok, start);
    peer.answered(&ok, 1800, start);
    peer.negotiated = Some(
        sdp::negotiate_answer(
            &sdp::parse(crate::testing::OFFER.as_bytes()).unwrap(),
            &[voicegate_sip::sdp::Codec::Pcmu],
            sdp::CodecPreference::Offer,
        )
        .unwrap(),
    );
    sent(&mut peer);
    assert_eq!(
        peer.keep_session(start + Duration::from_secs(44)),
        SessionDue::Nothing
    );
    let half = start + Duration::from_secs(45);
    assert_eq!(peer.keep_session(half), SessionDue::RefreshSent);
    assert!(peer.refreshing);
    let refresh = sent(&mut peer).remove(0);
    assert_eq!(refresh.method, "INVITE");
    assert_eq!(
        refresh.headers.get("Session-Expires"),
        Some("90;refresher=uac")
    );
}
