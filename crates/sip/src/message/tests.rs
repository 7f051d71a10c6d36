//! Tests of parsing (compact forms, folding, every kind of malformed input and its answer),
//! methods, responses built from requests, and Via stamping.

use std::net::SocketAddr;

use super::*;

const INVITE: &str = "INVITE sip:echo@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-1;rport\r\n\
v: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK-0\r\n\
From: \"Alice\" <sip:alice@10.0.0.1>;tag=abc\r\n\
t: <sip:echo@127.0.0.1>\r\n\
i: call-1@10.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Max-Forwards: 70\r\n\
Subject: folded\r\n  continuation\r\n\
Content-Type: application/sdp\r\n\
l: 4\r\n\r\nv=0\r\nEXTRA";

fn request(text: &str) -> Request {
    match parse(text.as_bytes()) {
        Ok(Message::Request(r)) => r,
        other => panic!("expected a request, got {other:?}"),
    }
}

fn bad_request_reason(text: &str) -> String {
    match parse(text.as_bytes()) {
        Err(ParseError::BadRequest { reason, .. }) => reason,
        other => panic!("expected a 400, got {other:?}"),
    }
}

#[test]
fn parses_compact_forms_folding_and_content_length() {
    let r = request(INVITE);
    assert_eq!(r.method, "INVITE");
    assert_eq!(r.call_id(), "call-1@10.0.0.1");
    assert_eq!(r.cseq(), (1, "INVITE"));
    assert_eq!(r.from_tag(), Some("abc"));
    assert_eq!(r.to_tag(), None);
    assert_eq!(r.headers.get("Subject"), Some("folded continuation"));
    assert_eq!(&r.body[..], b"v=0\r");
    assert_eq!(r.headers.get_all("Via").count(), 2);
    assert_eq!(r.branch().as_deref(), Some("z9hG4bK-1"));
    assert_eq!(r.uri_user().as_deref(), Some("echo"));
}

#[test]
fn dialled_number_is_unescaped() {
    let r = request(&INVITE.replace("INVITE sip:echo@", "INVITE sip:%65cho@"));
    assert_eq!(r.uri_user().as_deref(), Some("echo"));
    assert_eq!(percent_decode("%2B1555%zz"), "+1555%zz");
}

#[test]
fn methods_are_case_sensitive_and_unknown_ones_kept_as_sent() {
    assert_eq!(Method::from("INVITE"), Method::Invite);
    assert_eq!(Method::from("invite"), Method::Other("invite".into()));
    for name in [
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "REGISTER",
        "INFO",
        "REFER",
        "NOTIFY",
        "UPDATE",
        "PRACK",
        "SUBSCRIBE",
        "MESSAGE",
        "PUBLISH",
        "FOOBAR",
    ] {
        assert_eq!(Method::from(name).as_str(), name);
        assert_eq!(Method::from(name).to_string(), name);
    }
    assert!(Method::Bye == "BYE" && Method::Bye != "bye");
}

#[test]
fn unknown_methods_parse() {
    let text = INVITE
        .replace("INVITE sip", "FOOBAR sip")
        .replace("1 INVITE", "1 FOOBAR");
    assert_eq!(request(&text).method, "FOOBAR");
}

#[test]
fn missing_headers_give_400_reasons() {
    for (header, reason) in [
        ("i: call-1@10.0.0.1\r\n", "Missing Call-ID"),
        ("CSeq: 1 INVITE\r\n", "Missing CSeq"),
        (
            "From: \"Alice\" <sip:alice@10.0.0.1>;tag=abc\r\n",
            "Missing From",
        ),
        ("t: <sip:echo@127.0.0.1>\r\n", "Missing To"),
    ] {
        assert_eq!(bad_request_reason(&INVITE.replace(header, "")), reason);
    }
}

#[test]
fn missing_via_is_unanswerable() {
    let text = INVITE
        .replace(
            "Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-1;rport\r\n",
            "",
        )
        .replace("v: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK-0\r\n", "");
    assert!(matches!(
        parse(text.as_bytes()),
        Err(ParseError::Unparseable(_))
    ));
}

#[test]
fn content_length_errors() {
    assert_eq!(
        bad_request_reason(&INVITE.replace("l: 4", "l: 400")),
        "Content-Length 400 larger than the 10 body bytes received"
    );
    assert_eq!(
        bad_request_reason(&INVITE.replace("l: 4", "l: four")),
        "Malformed Content-Length \"four\""
    );
}

#[test]
fn garbage_and_truncation_are_unparseable() {
    assert!(matches!(
        parse(b"\x00\xff\x13garbage"),
        Err(ParseError::Unparseable(_))
    ));
    assert!(matches!(parse(b""), Err(ParseError::Unparseable(_))));
    let truncated = &INVITE.as_bytes()[..80];
    assert!(matches!(parse(truncated), Err(ParseError::Unparseable(_))));
}

#[test]
fn cseq_method_mismatch_is_400() {
    let text = INVITE.replace("1 INVITE", "1 BYE");
    assert_eq!(
        bad_request_reason(&text),
        "CSeq method does not match the request"
    );
}

#[test]
fn response_copies_dialog_headers_and_reason() {
    let r = request(INVITE);
    let bytes = r
        .response(400, "Missing Call-ID")
        .with_to_tag("xyz")
        .to_bytes();
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(text.starts_with("SIP/2.0 400 Missing Call-ID\r\n"));
    assert!(text.contains("To: <sip:echo@127.0.0.1>;tag=xyz\r\n"));
    assert!(text.contains("Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK-0\r\n"));
    assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
    match parse(&bytes) {
        Ok(Message::Response(resp)) => {
            assert_eq!(resp.status, 400);
            assert_eq!(resp.reason, "Missing Call-ID");
        }
        other => panic!("{other:?}"),
    }
}

fn bad_request(text: &str) -> (u16, String) {
    match parse(text.as_bytes()) {
        Err(ParseError::BadRequest { status, reason, .. }) => (status, reason),
        other => panic!("expected an answerable bad request, got {other:?}"),
    }
}

/// RFC 4475 baddn: a datagram that ends after a header line, without the empty line.
#[test]
fn datagram_without_empty_line_is_answerable() {
    let text = INVITE
        .replace("Content-Type: application/sdp\r\n", "")
        .replace("l: 4\r\n\r\nv=0\r\nEXTRA", "l: 0\r\n");
    assert_eq!(
        bad_request(&text),
        (400, "Header block not terminated by an empty line".into())
    );
    // Cut inside a line: nothing to answer.
    assert!(matches!(
        parse(&text.as_bytes()[..text.len() - 1]),
        Err(ParseError::Unparseable(_))
    ));
}

/// RFC 4475 lwsstart, trws, lwsruri: answerable, with 400.
#[test]
fn malformed_request_lines_are_400() {
    for line in [
        "INVITE  sip:echo@127.0.0.1:5060  SIP/2.0",
        "INVITE sip:echo@127.0.0.1:5060 SIP/2.0  ",
        "INVITE sip:echo@127.0.0.1:5060; lr SIP/2.0",
    ] {
        let text = INVITE.replace("INVITE sip:echo@127.0.0.1:5060 SIP/2.0", line);
        assert_eq!(bad_request(&text), (400, "Malformed Request-Line".into()));
    }
    let garbage = INVITE.replace("INVITE sip:echo@127.0.0.1:5060 SIP/2.0", "INVITE a b c");
    assert!(matches!(
        parse(garbage.as_bytes()),
        Err(ParseError::Unparseable(_))
    ));
}

/// RFC 4475 badvers: 505, not 400; the version is case-insensitive (RFC 3261 §7.1).
#[test]
fn other_sip_versions_get_505() {
    let text = INVITE.replace("5060 SIP/2.0", "5060 SIP/7.0");
    assert_eq!(bad_request(&text), (505, "Version Not Supported".into()));
    assert_eq!(
        request(&INVITE.replace("5060 SIP/2.0", "5060 sip/2.0")).method,
        "INVITE"
    );
}

/// RFC 4475 badinv01 (empty Via parameters) is 400; wsinv's LWS in Via is fine.
#[test]
fn via_hops_are_checked() {
    let text = INVITE.replace(
        "v: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK-0",
        "v: SIP/2.0/UDP 192.0.2.15;;,;,,",
    );
    assert_eq!(bad_request(&text), (400, "Malformed Via".into()));
    let lws = INVITE.replace(
        "v: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK-0",
        "v:  SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8  ,\r\n SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239",
    );
    assert_eq!(request(&lws).headers.get_all("Via").count(), 2);
}

/// RFC 4475 multi01.
#[test]
fn repeated_single_headers_are_400() {
    let text = INVITE.replace("CSeq: 1 INVITE\r\n", "CSeq: 1 INVITE\r\nCSeq: 2 INVITE\r\n");
    assert_eq!(bad_request(&text), (400, "Multiple CSeq headers".into()));
    let text = INVITE.replace("i: call-1", "Call-ID: call-2@10.0.0.1\r\ni: call-1");
    assert_eq!(bad_request(&text), (400, "Multiple Call-ID headers".into()));
}

/// RFC 4475 escruri is 400; intmeth's `?` in the user part is not a header.
#[test]
fn headers_in_request_uri_are_400() {
    let text = INVITE.replace(
        "sip:echo@127.0.0.1:5060 SIP",
        "sip:echo@127.0.0.1?Route=%3Csip:example.com%3E SIP",
    );
    assert_eq!(
        bad_request(&text),
        (400, "Headers not allowed in the Request-URI".into())
    );
    let text = INVITE.replace(
        "sip:echo@127.0.0.1:5060 SIP",
        "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP",
    );
    request(&text);
}

/// RFC 4475 quotbal, baddn, badaspec are 400; lwsdisp, intmeth, wsinv forms are fine.
#[test]
fn from_and_to_are_checked() {
    let to = "t: <sip:echo@127.0.0.1>";
    for bad in [
        "t: \"Mr. J. User <sip:j.user@example.com>",
        "t: Watson, Thomas <sip:t.watson@example.org>",
        "t: \"Watson, Thomas\" < sip:t.watson@example.org >",
        "t: \"A\" \"B\" <sip:t.watson@example.org>",
        "t: <sip:t.watson@example.org> junk",
    ] {
        assert_eq!(
            bad_request(&INVITE.replace(to, bad)),
            (400, "Malformed To".into()),
            "{bad}"
        );
    }
    for good in [
        "t: caller<sip:caller@example.com>",
        "t: A. Bell <sip:a.g.bell@example.com>;tag=x",
        "t: \"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f\" <sip:a@example.com>",
        "t: \"J Rosenberg \\\\\\\"\"  <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8",
        "t: \"a <b>, c\" <sip:a@example.com>",
        "t: sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n",
    ] {
        let r = request(&INVITE.replace(to, good));
        assert!(
            name_addr_uri_text(r.headers.get("To").unwrap()).is_some_and(|u| u.starts_with("sip:"))
        );
    }
}

/// RFC 4475 regbadct: a Contact URI with `?` must be in angle brackets (RFC 3261 §20).
#[test]
fn contact_is_checked() {
    let with = |contact: &str| {
        INVITE.replace(
            "Max-Forwards: 70\r\n",
            &format!("Max-Forwards: 70\r\n{contact}\r\n"),
        )
    };
    assert_eq!(
        bad_request(&with(
            "Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E"
        )),
        (400, "Malformed Contact".into())
    );
    for good in [
        "m: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>",
        "Contact: sip:+19725552222@gw1.example.net;unknownparam",
        "Contact: *",
        "Contact: <sip:a@b>, \"x, y\" <sip:c@d>;q=0.5",
        "m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =\r\n      newvalue ;\r\n  secondparam ; q = 0.33",
    ] {
        request(&with(good));
    }
}

#[test]
fn rport_and_received() {
    let mut r = request(INVITE);
    let src: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    stamp_received(&mut r.headers, src);
    assert_eq!(
        r.headers.get("Via"),
        Some("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-1;rport=40000;received=192.0.2.7")
    );
    assert_eq!(response_target(&r.headers, src, false), src);

    let mut no_rport = request(&INVITE.replace(";rport", ""));
    stamp_received(&mut no_rport.headers, src);
    assert_eq!(
        no_rport.headers.get("Via"),
        Some("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-1;received=192.0.2.7")
    );
    assert_eq!(
        response_target(&no_rport.headers, src, false),
        "192.0.2.7:5070".parse().unwrap()
    );
}
