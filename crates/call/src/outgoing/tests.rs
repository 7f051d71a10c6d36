use std::time::Duration;

use voicegate_sip::message::{parse, Message};

use super::*;
use crate::testing::{identity, invite};

/// The dialog of a call the far end (192.0.2.10) placed to us.
fn dialog() -> Dialog {
    Dialog::from_invite(&invite(), "ours")
}

fn outgoing() -> Outgoing {
    Outgoing::new(identity(), false, Timers::default())
}

fn sent(out: &mut Outgoing) -> Vec<Request> {
    std::iter::from_fn(|| out.poll_transmit())
        .map(|b| match parse(&b) {
            Ok(Message::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        })
        .collect()
}

fn events(out: &mut Outgoing) -> Vec<OutgoingEvent> {
    std::iter::from_fn(|| out.poll_event()).collect()
}

#[test]
fn a_bye_carries_its_reason_and_reports_its_answer() {
    let now = Instant::now();
    let (mut out, mut dialog) = (outgoing(), dialog());
    out.bye(&mut dialog, "SIP;cause=408;text=\"no ACK\"", now);
    let bye = sent(&mut out).remove(0);
    assert_eq!(bye.method, Method::Bye);
    assert_eq!(bye.uri, "sip:+15550100@192.0.2.10:5062");
    assert_eq!(
        bye.headers.get("Reason"),
        Some("SIP;cause=408;text=\"no ACK\"")
    );
    assert_eq!(bye.headers.get("User-Agent"), Some("voicegate-test"));
    assert!(bye.headers.get("To").unwrap().contains("tag=theirs"));
    assert!(out.owns(&bye.response(200, "OK")));
    out.on_response(&dialog, &bye.response(200, "OK"), now);
    assert_eq!(
        events(&mut out),
        vec![OutgoingEvent::Done {
            method: Method::Bye,
            status: Some(200)
        }]
    );
    // Timer K (T4 over UDP) ends the transaction; then nothing is left.
    out.handle_timeout(now + Duration::from_secs(6));
    assert!(sent(&mut out).is_empty());
    assert!(out.is_idle());
}

#[test]
fn a_bye_never_answered_times_out_after_64_t1() {
    let start = Instant::now();
    let (mut out, mut dialog) = (outgoing(), dialog());
    out.bye(&mut dialog, "", start);
    let first = sent(&mut out);
    assert_eq!(first.len(), 1);
    assert!(first[0].headers.get("Reason").is_none());
    let mut resent = 0;
    let mut now = start;
    while let Some(deadline) = out.poll_timeout() {
        now = deadline;
        out.handle_timeout(now);
        resent += sent(&mut out).len();
    }
    assert!(resent >= 5, "retransmitted {resent} times");
    assert_eq!(
        events(&mut out),
        vec![OutgoingEvent::Done {
            method: Method::Bye,
            status: None
        }]
    );
    assert_eq!(now - start, Duration::from_secs(32));
    assert!(out.is_idle());
}

#[test]
fn every_2xx_to_a_reinvite_is_acked_and_reported_once() {
    let now = Instant::now();
    let (mut out, mut dialog) = (outgoing(), dialog());
    let offer = Bytes::from_static(b"v=0\r\n");
    assert!(out.reinvite(&mut dialog, Some(offer), &[], now));
    assert!(
        !out.reinvite(&mut dialog, None, &[], now),
        "one re-INVITE at a time"
    );
    let reinvite = sent(&mut out).remove(0);
    assert_eq!(reinvite.method, Method::Invite);
    assert_eq!(
        reinvite.headers.get("Contact"),
        Some("<sip:ours@192.0.2.1:5060>")
    );
    assert_eq!(
        reinvite.headers.get("Content-Type"),
        Some("application/sdp")
    );
    let ok = reinvite.response(200, "OK").with_to_tag("theirs");
    for _ in 0..2 {
        out.on_response(&dialog, &ok, now);
        let acks = sent(&mut out);
        assert_eq!(acks.len(), 1);
        assert_eq!(acks[0].method, Method::Ack);
        assert_eq!(acks[0].cseq().0, reinvite.cseq().0);
        assert_ne!(
            acks[0].branch(),
            reinvite.branch(),
            "a 2xx ACK is a new transaction"
        );
    }
    assert_eq!(events(&mut out), vec![OutgoingEvent::ReinviteDone(ok)]);
    assert!(!out.reinvite_pending());
}

#[test]
fn a_refused_reinvite_is_acked_on_its_branch() {
    let now = Instant::now();
    let (mut out, mut dialog) = (outgoing(), dialog());
    out.reinvite(&mut dialog, None, &[], now);
    let reinvite = sent(&mut out).remove(0);
    let busy = reinvite
        .response(491, "Request Pending")
        .with_to_tag("theirs");
    out.on_response(&dialog, &busy, now);
    let ack = sent(&mut out).remove(0);
    assert_eq!(ack.method, Method::Ack);
    assert_eq!(ack.branch(), reinvite.branch());
    assert_eq!(events(&mut out), vec![OutgoingEvent::ReinviteDone(busy)]);
}

#[test]
fn a_reinvite_never_answered_is_reported() {
    let start = Instant::now();
    let (mut out, mut dialog) = (outgoing(), dialog());
    out.reinvite(&mut dialog, None, &[], start);
    let mut now = start;
    while let Some(deadline) = out.poll_timeout() {
        now = deadline;
        out.handle_timeout(now);
        sent(&mut out);
    }
    assert_eq!(events(&mut out), vec![OutgoingEvent::ReinviteTimeout]);
    assert_eq!(now - start, Duration::from_secs(32), "Timer B");
}

#[test]
fn a_refer_is_reported_as_a_sipfrag_notify() {
    let now = Instant::now();
    let (mut out, mut dialog) = (outgoing(), dialog());
    out.notify_refer(&mut dialog, "SIP/2.0 100 Trying", false, now);
    out.notify_refer(&mut dialog, "SIP/2.0 200 OK", true, now);
    let notifies = sent(&mut out);
    assert_eq!(notifies.len(), 2);
    assert_eq!(notifies[0].headers.get("Event"), Some("refer"));
    assert_eq!(
        notifies[0].headers.get("Subscription-State"),
        Some("active;expires=60")
    );
    assert_eq!(
        notifies[1].headers.get("Subscription-State"),
        Some("terminated;reason=noresource")
    );
    assert_eq!(
        notifies[1].headers.get("Content-Type"),
        Some("message/sipfrag;version=2.0")
    );
    assert_eq!(&notifies[1].body[..], b"SIP/2.0 200 OK\r\n");
    assert!(notifies[1].cseq().0 > notifies[0].cseq().0);
}
