use std::time::Duration;

use voicegate_sip::message::{parse, Message};

use super::*;
use crate::testing::{invite, request, udp};

fn in_dialog(method: &str, cseq: u32, branch: &str) -> Request {
    request(method, cseq, branch, "ours", "")
}

fn dialog() -> Dialog {
    Dialog::from_invite(&invite(), "ours")
}

fn incoming() -> Incoming {
    Incoming::new(Timers::default(), Arc::from("voicegate-test"), "ours")
}

fn sent(incoming: &mut Incoming) -> Vec<(SocketAddr, Response)> {
    std::iter::from_fn(|| incoming.poll_transmit())
        .map(|t| match parse(&t.bytes) {
            Ok(Message::Response(r)) => (t.target, r),
            other => panic!("not a response: {other:?}"),
        })
        .collect()
}

fn statuses(incoming: &mut Incoming) -> Vec<u16> {
    sent(incoming).into_iter().map(|(_, r)| r.status).collect()
}

#[test]
fn a_bye_goes_to_the_owner_and_its_answer_back_where_it_came_from() {
    let now = Instant::now();
    let (mut incoming, mut dialog) = (incoming(), dialog());
    let bye = in_dialog("BYE", 2, "z9hG4bK-bye");
    let arrival = incoming.receive(Some(&mut dialog), &bye, &udp(), now);
    assert_eq!(arrival, Arrival::Request(InDialog::Bye));
    assert!(
        sent(&mut incoming).is_empty(),
        "nothing is answered for the owner"
    );
    incoming.answer(&bye, &udp(), 200, "OK", Answer::default(), now);
    let answers = sent(&mut incoming);
    assert_eq!(answers.len(), 1);
    let (target, response) = &answers[0];
    assert_eq!(*target, udp().remote);
    assert_eq!(response.status, 200);
    assert_eq!(response.headers.get("Server"), Some("voicegate-test"));
    assert!(response.headers.get("To").unwrap().ends_with(";tag=ours"));
}

#[test]
fn a_retransmission_gets_the_same_answer_and_never_reaches_the_owner() {
    let now = Instant::now();
    let (mut incoming, mut dialog) = (incoming(), dialog());
    let bye = in_dialog("BYE", 2, "z9hG4bK-bye");
    incoming.receive(Some(&mut dialog), &bye, &udp(), now);
    incoming.answer(&bye, &udp(), 200, "OK", Answer::default(), now);
    assert_eq!(statuses(&mut incoming), vec![200]);
    // Even after the dialog is over, the kept transaction answers it.
    let again = incoming.receive(None, &bye, &udp(), now + Duration::from_millis(500));
    assert_eq!(again, Arrival::Handled);
    assert_eq!(statuses(&mut incoming), vec![200]);
}

#[test]
fn an_older_cseq_gets_500_and_the_dialog_keeps_its_count() {
    let now = Instant::now();
    let (mut incoming, mut dialog) = (incoming(), dialog());
    let info = in_dialog("INFO", 5, "z9hG4bK-info5");
    assert_eq!(
        incoming.receive(Some(&mut dialog), &info, &udp(), now),
        Arrival::Request(InDialog::Info)
    );
    let old = in_dialog("INFO", 4, "z9hG4bK-info4");
    assert_eq!(
        incoming.receive(Some(&mut dialog), &old, &udp(), now),
        Arrival::Handled
    );
    let answers = sent(&mut incoming);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].1.status, 500);
    assert!(
        answers[0].1.reason.contains("CSeq"),
        "{}",
        answers[0].1.reason
    );
    assert_eq!(dialog.remote_cseq, 5);
}

#[test]
fn methods_not_taken_get_405_or_501_with_allow() {
    let now = Instant::now();
    let (mut incoming, mut dialog) = (incoming(), dialog());
    for (i, (method, status)) in [("SUBSCRIBE", 405), ("FROBNICATE", 501), ("MESSAGE", 405)]
        .into_iter()
        .enumerate()
    {
        let r = in_dialog(method, 2 + i as u32, &format!("z9hG4bK-{i}"));
        assert_eq!(
            incoming.receive(Some(&mut dialog), &r, &udp(), now),
            Arrival::Handled
        );
        let answers = sent(&mut incoming);
        assert_eq!(answers[0].1.status, status, "{method}");
        assert_eq!(answers[0].1.headers.get("Allow"), Some(ALLOW), "{method}");
    }
}

#[test]
fn options_and_notify_get_200_options_with_allow() {
    let now = Instant::now();
    let (mut incoming, mut dialog) = (incoming(), dialog());
    let options = in_dialog("OPTIONS", 2, "z9hG4bK-o");
    let notify = in_dialog("NOTIFY", 3, "z9hG4bK-n");
    assert_eq!(
        incoming.receive(Some(&mut dialog), &options, &udp(), now),
        Arrival::Handled
    );
    assert_eq!(
        incoming.receive(Some(&mut dialog), &notify, &udp(), now),
        Arrival::Handled
    );
    let answers = sent(&mut incoming);
    assert_eq!(answers.len(), 2);
    let options = answers
        .iter()
        .find(|(_, r)| r.cseq().1 == "OPTIONS")
        .unwrap();
    assert_eq!(options.1.status, 200);
    assert_eq!(options.1.headers.get("Allow"), Some(ALLOW));
    let notify = answers
        .iter()
        .find(|(_, r)| r.cseq().1 == "NOTIFY")
        .unwrap();
    assert_eq!(notify.1.status, 200);
}

#[test]
fn without_a_dialog_everything_but_ack_gets_481() {
    let now = Instant::now();
    let mut incoming = incoming();
    let bye = in_dialog("BYE", 2, "z9hG4bK-bye");
    assert_eq!(incoming.receive(None, &bye, &udp(), now), Arrival::Handled);
    assert_eq!(statuses(&mut incoming), vec![481]);
    let ack = in_dialog("ACK", 1, "z9hG4bK-ack");
    assert_eq!(incoming.receive(None, &ack, &udp(), now), Arrival::Ack);
    assert!(statuses(&mut incoming).is_empty());
}

#[test]
fn a_cancel_is_not_held_to_the_cseq_order() {
    let now = Instant::now();
    let (mut incoming, mut dialog) = (incoming(), dialog());
    let info = in_dialog("INFO", 3, "z9hG4bK-info");
    incoming.receive(Some(&mut dialog), &info, &udp(), now);
    let cancel = request("CANCEL", 1, "z9hG4bK-invite", "", "");
    assert_eq!(
        incoming.receive(Some(&mut dialog), &cancel, &udp(), now),
        Arrival::Request(InDialog::Cancel)
    );
}

#[test]
fn a_reinvite_is_answered_with_contact_allow_supported_and_its_ack_is_matched() {
    let now = Instant::now();
    let (mut incoming, mut dialog) = (incoming(), dialog());
    let reinvite = request("INVITE", 2, "z9hG4bK-re", "ours", "v=0\r\n");
    assert_eq!(
        incoming.receive(Some(&mut dialog), &reinvite, &udp(), now),
        Arrival::Request(InDialog::Invite)
    );
    let answer = Answer {
        contact: Some("<sip:ours@192.0.2.1:5060>"),
        sdp: Some(Bytes::from_static(b"v=0\r\n")),
        ..Answer::default()
    };
    incoming.answer(&reinvite, &udp(), 200, "OK", answer, now);
    let answers = sent(&mut incoming);
    let ok = &answers[0].1;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.headers.get("Contact"), Some("<sip:ours@192.0.2.1:5060>"));
    assert_eq!(ok.headers.get("Allow"), Some(ALLOW));
    assert_eq!(ok.headers.get("Supported"), Some(SUPPORTED));
    assert_eq!(ok.headers.get("Content-Type"), Some("application/sdp"));
    // The 2xx is repeated until its ACK (RFC 3261 §13.3.1.4), then no more.
    incoming.handle_timeout(now + Duration::from_millis(500));
    assert_eq!(statuses(&mut incoming), vec![200]);
    let ack = request("ACK", 2, "z9hG4bK-ack2", "ours", "");
    let later = now + Duration::from_millis(600);
    assert_eq!(
        incoming.receive(Some(&mut dialog), &ack, &udp(), later),
        Arrival::ReinviteAck
    );
    incoming.handle_timeout(now + Duration::from_secs(2));
    assert!(statuses(&mut incoming).is_empty());
    assert!(!incoming.poll_ack_timeout());
}

#[test]
fn a_reinvite_on_top_of_an_open_one_gets_500_with_retry_after() {
    let now = Instant::now();
    let (mut incoming, mut dialog) = (incoming(), dialog());
    let first = request("INVITE", 2, "z9hG4bK-re1", "ours", "");
    incoming.receive(Some(&mut dialog), &first, &udp(), now);
    incoming.answer(&first, &udp(), 100, "Trying", Answer::default(), now);
    sent(&mut incoming);
    assert!(incoming.reinvite_open());
    let second = request("INVITE", 3, "z9hG4bK-re2", "ours", "");
    assert_eq!(
        incoming.receive(Some(&mut dialog), &second, &udp(), now),
        Arrival::Handled
    );
    let answers = sent(&mut incoming);
    assert_eq!(answers[0].1.status, 500);
    assert_eq!(answers[0].1.headers.get("Retry-After"), Some("1"));
}

#[test]
fn a_2xx_without_its_ack_is_reported_once_and_the_answers_are_dropped() {
    let start = Instant::now();
    let (mut incoming, mut dialog) = (incoming(), dialog());
    let reinvite = request("INVITE", 2, "z9hG4bK-re", "ours", "");
    incoming.receive(Some(&mut dialog), &reinvite, &udp(), start);
    incoming.answer(&reinvite, &udp(), 200, "OK", Answer::default(), start);
    let mut missed = 0;
    let mut now = start;
    while let Some(deadline) = incoming.poll_timeout() {
        now = deadline;
        incoming.handle_timeout(now);
        sent(&mut incoming);
        missed += usize::from(incoming.poll_ack_timeout());
    }
    assert_eq!(missed, 1);
    assert!(incoming.is_idle());
    // Timer H: 64 × T1.
    assert!(now - start >= Duration::from_secs(32), "{:?}", now - start);
}

#[test]
fn over_tcp_answers_are_sent_once_and_not_kept() {
    let now = Instant::now();
    let (mut incoming, mut dialog) = (incoming(), dialog());
    let tcp = Source {
        transport: voicegate_sip::transport::TransportKind::Tcp,
        connection: Some(7),
        ..udp()
    };
    let bye = in_dialog("BYE", 2, "z9hG4bK-bye");
    incoming.receive(Some(&mut dialog), &bye, &tcp, now);
    incoming.answer(&bye, &tcp, 200, "OK", Answer::default(), now);
    let t = incoming.poll_transmit().expect("the 200");
    assert_eq!(t.source.connection, Some(7));
    assert!(incoming.poll_transmit().is_none());
    assert!(incoming.is_idle());
}
