//! Fixtures shared by the legs' tests: the far end (192.0.2.10:5062) calling us (192.0.2.1)
//! over UDP, and its requests in that dialog.

use bytes::Bytes;
use voicegate_sip::message::{parse, Message, Request};
use voicegate_sip::transport::{Source, TransportKind};

use crate::outbound::{Hop, InviteParams};
use crate::outgoing::Identity;

pub fn udp() -> Source {
    Source {
        transport: TransportKind::Udp,
        remote: "192.0.2.10:5062".parse().unwrap(),
        local: "192.0.2.1:5060".parse().unwrap(),
        connection: None,
    }
}

pub const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";

/// The far end's INVITE, with an SDP offer.
pub fn invite() -> Request {
    request("INVITE", 1, "z9hG4bK-invite", "", OFFER)
}

/// Our identity in the dialog.
pub fn identity() -> Identity {
    Identity {
        via: "SIP/2.0/UDP 192.0.2.1:5060".into(),
        contact: "<sip:ours@192.0.2.1:5060>".into(),
        user_agent: "voicegate-test".into(),
    }
}

/// A request of the far end in the dialog (`to_tag` empty: none yet).
pub fn request(method: &str, cseq: u32, branch: &str, to_tag: &str, body: &str) -> Request {
    request_with(method, cseq, branch, to_tag, "", body)
}

/// [`request`] with more header lines (each ending in CRLF).
pub fn request_with(
    method: &str,
    cseq: u32,
    branch: &str,
    to_tag: &str,
    headers: &str,
    body: &str,
) -> Request {
    let to_tag = if to_tag.is_empty() {
        String::new()
    } else {
        format!(";tag={to_tag}")
    };
    let content = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/sdp\r\n".to_string()
    };
    let text = format!(
        "{method} sip:ours@192.0.2.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5062;branch={branch}\r\n\
Max-Forwards: 70\r\n\
From: <sip:+15550100@192.0.2.10>;tag=theirs\r\n\
To: <sip:+15550123@192.0.2.1>{to_tag}\r\n\
Call-ID: call-1@192.0.2.10\r\n\
CSeq: {cseq} {method}\r\n\
Contact: <sip:+15550100@192.0.2.10:5062>\r\n\
{headers}{content}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    match parse(text.as_bytes()) {
        Ok(Message::Request(r)) => r,
        other => panic!("not a request: {other:?}"),
    }
}

/// What a leg sent, parsed.
pub fn parsed(bytes: &[u8]) -> Message {
    parse(bytes).unwrap_or_else(|e| panic!("unparsable: {e:?}"))
}

/// What a leg we place to 192.0.2.10 says in its INVITE.
pub fn invite_params() -> InviteParams {
    InviteParams {
        request_uri: "sip:+15550123@192.0.2.10:5060".into(),
        from: "<sip:+15550100@192.0.2.1>".into(),
        to: "<sip:+15550123@192.0.2.10>".into(),
        contact: "<sip:+15550100@192.0.2.1:5060;transport=udp>".into(),
        via: "SIP/2.0/UDP 192.0.2.1:5060".into(),
        sdp: Some(Bytes::from_static(b"v=0\r\n")),
        credentials: Some(("acme".into(), "secret".into())),
        extra_headers: vec![("Supported".into(), "timer".into())],
        user_agent: "voicegate-test".into(),
    }
}

/// The next hop of a leg we place: 192.0.2.10:5060 over UDP.
pub fn hop() -> Hop {
    Hop {
        source: Source {
            transport: TransportKind::Udp,
            remote: "192.0.2.10:5060".parse().unwrap(),
            local: "192.0.2.1:5060".parse().unwrap(),
            connection: None,
        },
        target: "192.0.2.10:5060".parse().unwrap(),
    }
}
