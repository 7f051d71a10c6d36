//! SIP dialogs (RFC 3261 §12) as plain data: created by our 2xx to an INVITE, they check the
//! order of the peer's requests and build our own in-dialog requests (BYE).

use crate::message::{self, Headers, Method, Request};

/// A dialog from either side of the initial INVITE: [`Dialog::from_invite`] when we answer it,
/// [`Dialog::from_response`] when we sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dialog {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: Option<String>,
    /// Our identity as the peer addressed us: their To, with our tag.
    pub local_party: String,
    /// The peer's From header value (with their tag).
    pub remote_party: String,
    /// Where our requests go: the peer's Contact URI.
    pub remote_target: String,
    /// Record-Route of the INVITE, in order (RFC 3261 §12.1.1).
    pub route_set: Vec<String>,
    /// Highest CSeq seen from the peer.
    pub remote_cseq: u32,
    pub local_cseq: u32,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    #[error("CSeq {got} is lower than {last} already seen")]
    CSeqOutOfOrder { got: u32, last: u32 },
}

impl Dialog {
    /// The dialog our answer to `invite` creates, with our `local_tag`.
    pub fn from_invite(invite: &Request, local_tag: &str) -> Self {
        let to = invite.headers.get("To").unwrap_or_default();
        let local_party = if message::tag_param(to).is_some() {
            to.to_string()
        } else {
            format!("{to};tag={local_tag}")
        };
        let remote_target = invite
            .headers
            .get("Contact")
            .or_else(|| invite.headers.get("From"))
            .and_then(message::name_addr_uri_text)
            .unwrap_or_default()
            .to_string();
        Dialog {
            call_id: invite.call_id().to_string(),
            local_tag: local_tag.to_string(),
            remote_tag: invite.from_tag().map(str::to_string),
            local_party,
            remote_party: invite.headers.get("From").unwrap_or_default().to_string(),
            remote_target,
            route_set: invite
                .headers
                .get_all("Record-Route")
                .flat_map(|v| v.split(','))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect(),
            remote_cseq: invite.cseq().0,
            local_cseq: rand::random::<u16>() as u32 + 1,
        }
    }

    /// The dialog a response (1xx with a To-tag, or 2xx) to our `invite` creates (RFC 3261
    /// §12.1.2): the route set is the response's Record-Route in reverse.
    pub fn from_response(invite: &Request, response: &crate::message::Response) -> Self {
        let local_party = invite.headers.get("From").unwrap_or_default().to_string();
        let remote_target = response
            .headers
            .get("Contact")
            .and_then(message::name_addr_uri_text)
            .unwrap_or(invite.uri.as_str())
            .to_string();
        let mut route_set: Vec<String> = response
            .headers
            .get_all("Record-Route")
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        route_set.reverse();
        let to = response.headers.get("To").unwrap_or_default();
        Dialog {
            call_id: invite.call_id().to_string(),
            local_tag: invite.from_tag().unwrap_or_default().to_string(),
            remote_tag: message::tag_param(to).map(str::to_string),
            local_party,
            remote_party: to.to_string(),
            remote_target,
            route_set,
            remote_cseq: 0,
            local_cseq: invite.cseq().0,
        }
    }

    /// Whether a request belongs to this dialog (Call-ID, our tag, their tag).
    pub fn matches(&self, request: &Request) -> bool {
        request.call_id() == self.call_id
            && request.to_tag() == Some(self.local_tag.as_str())
            && request.from_tag() == self.remote_tag.as_deref()
    }

    /// Records the CSeq of a new in-dialog request; an older one gets 500 (RFC 3261 §12.2.2).
    pub fn accept_remote_cseq(&mut self, request: &Request) -> Result<(), DialogError> {
        let got = request.cseq().0;
        if got < self.remote_cseq {
            return Err(DialogError::CSeqOutOfOrder {
                got,
                last: self.remote_cseq,
            });
        }
        self.remote_cseq = got;
        Ok(())
    }

    /// A new request of ours in this dialog (RFC 3261 §12.2.1.1): From/To swapped relative to
    /// the INVITE, the next local CSeq, Route from the route set.
    pub fn request(&mut self, method: &str, via: String, max_forwards: u8) -> Request {
        self.local_cseq += 1;
        let mut headers = Headers::default();
        headers.push("Via", via);
        headers.push("Max-Forwards", max_forwards.to_string());
        for route in &self.route_set {
            headers.push("Route", route.clone());
        }
        headers.push("From", self.local_party.clone());
        headers.push("To", self.remote_party.clone());
        headers.push("Call-ID", self.call_id.clone());
        headers.push("CSeq", format!("{} {method}", self.local_cseq));
        Request {
            method: message::Method::from(method),
            uri: self.remote_target.clone(),
            headers,
            body: bytes::Bytes::new(),
        }
    }
}

/// Methods a voicegate dialog implements, for Allow headers.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REFER, NOTIFY";
/// Option tags we support, for Supported headers: session timers (RFC 4028).
pub const SUPPORTED: &str = "timer";

/// A random token for tags, branches and Call-IDs (64 bits, hex).
pub fn random_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// What a dialog does with a request inside it: one answer per method for every call shape
/// (echo, bot, B2BUA leg, transfer), so that no two places can answer a method differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InDialog {
    Ack,
    /// A re-INVITE (or a retransmission of the INVITE that made the dialog).
    Invite,
    Cancel,
    Bye,
    /// DTMF in `application/dtmf-relay` or `application/dtmf` ([`crate::info`]); 200 either way.
    Info,
    /// Keep-alive or capability query: 200.
    Options,
    /// A session refresh (RFC 4028 §7.4).
    Update,
    /// 200: we subscribe to nothing but accept the implicit REFER subscription's NOTIFYs.
    Notify,
    Refer,
    /// 405 with [`ALLOW`]: a method we know that has no meaning inside a call (RFC 3261 §8.2.1).
    NotAllowed,
    /// 501: a method we do not implement (RFC 3261 §8.2.1).
    NotImplemented,
}

impl InDialog {
    pub fn of(method: &Method) -> InDialog {
        match method {
            Method::Ack => InDialog::Ack,
            Method::Invite => InDialog::Invite,
            Method::Cancel => InDialog::Cancel,
            Method::Bye => InDialog::Bye,
            Method::Info => InDialog::Info,
            Method::Options => InDialog::Options,
            Method::Update => InDialog::Update,
            Method::Notify => InDialog::Notify,
            Method::Refer => InDialog::Refer,
            Method::Register
            | Method::Subscribe
            | Method::Publish
            | Method::Message
            | Method::Prack => InDialog::NotAllowed,
            Method::Other(_) => InDialog::NotImplemented,
        }
    }

    /// The refusal for a method the dialog does not take, with whether Allow goes with it.
    pub fn refusal(self) -> Option<(u16, &'static str)> {
        match self {
            InDialog::NotAllowed => Some((405, "Method Not Allowed")),
            InDialog::NotImplemented => Some((501, "Not Implemented")),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{parse, Message};

    fn invite() -> Request {
        let text = "INVITE sip:echo@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-1\r\n\
Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n\
From: <sip:alice@10.0.0.1>;tag=alice1\r\n\
To: <sip:echo@127.0.0.1>\r\n\
Call-ID: dlg-1\r\n\
CSeq: 10 INVITE\r\n\
Contact: <sip:alice@10.0.0.1:5070;transport=udp>\r\n\
Content-Length: 0\r\n\r\n";
        match parse(text.as_bytes()) {
            Ok(Message::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    fn in_dialog(method: &str, cseq: u32, to_tag: &str) -> Request {
        let mut r = invite();
        r.method = message::Method::from(method);
        r.headers
            .set("To", format!("<sip:echo@127.0.0.1>;tag={to_tag}"));
        r.headers.set("CSeq", format!("{cseq} {method}"));
        r
    }

    #[test]
    fn dialog_from_invite() {
        let d = Dialog::from_invite(&invite(), "vg1");
        assert_eq!(d.call_id, "dlg-1");
        assert_eq!(d.remote_tag.as_deref(), Some("alice1"));
        assert_eq!(d.local_party, "<sip:echo@127.0.0.1>;tag=vg1");
        assert_eq!(d.remote_target, "sip:alice@10.0.0.1:5070;transport=udp");
        assert_eq!(
            d.route_set,
            vec!["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
        );
        assert_eq!(d.remote_cseq, 10);
    }

    #[test]
    fn matching_and_cseq_order() {
        let mut d = Dialog::from_invite(&invite(), "vg1");
        assert!(d.matches(&in_dialog("BYE", 11, "vg1")));
        assert!(!d.matches(&in_dialog("BYE", 11, "other")));
        assert_eq!(
            d.accept_remote_cseq(&in_dialog("INVITE", 12, "vg1")),
            Ok(())
        );
        assert_eq!(
            d.accept_remote_cseq(&in_dialog("INFO", 11, "vg1")),
            Err(DialogError::CSeqOutOfOrder { got: 11, last: 12 })
        );
    }

    #[test]
    fn our_bye_swaps_parties_and_follows_route_set() {
        let mut d = Dialog::from_invite(&invite(), "vg1");
        let first = d.local_cseq;
        let bye = d.request(
            "BYE",
            "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx".into(),
            70,
        );
        assert_eq!(bye.uri, "sip:alice@10.0.0.1:5070;transport=udp");
        assert_eq!(
            bye.headers.get("From"),
            Some("<sip:echo@127.0.0.1>;tag=vg1")
        );
        assert_eq!(
            bye.headers.get("To"),
            Some("<sip:alice@10.0.0.1>;tag=alice1")
        );
        assert_eq!(bye.cseq(), (first + 1, "BYE"));
        assert_eq!(bye.headers.get_all("Route").count(), 2);
        // What we send must parse as a valid request.
        assert!(matches!(parse(&bye.to_bytes()), Ok(Message::Request(_))));
    }

    #[test]
    fn methods_inside_a_dialog_known_but_meaningless_get_405_and_unknown_ones_501() {
        for known in ["REGISTER", "SUBSCRIBE", "PUBLISH", "MESSAGE", "PRACK"] {
            let answer = InDialog::of(&Method::from(known));
            assert_eq!(
                answer.refusal(),
                Some((405, "Method Not Allowed")),
                "{known}"
            );
            assert!(!ALLOW.contains(known), "{known}");
        }
        for unknown in ["FOOBAR", "invite", "NEWMETHOD"] {
            let answer = InDialog::of(&Method::from(unknown));
            assert_eq!(
                answer.refusal(),
                Some((501, "Not Implemented")),
                "{unknown}"
            );
        }
        for taken in ALLOW.split(", ") {
            let answer = InDialog::of(&Method::from(taken));
            assert_eq!(answer.refusal(), None, "{taken}");
        }
    }
}
