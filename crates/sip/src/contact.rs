//! Our Contact header: which URI scheme it takes and how it is written.
//!
//! The scheme follows the request, never the transport: a `sip:` URI reached over TLS is
//! answered with `sip:…;transport=tls`, since a `sips:` Contact would ask the peer for TLS on
//! every hop end to end, which a peer that dialled `sip:` may not do (baresip cannot even send
//! its ACK to one).

use std::net::IpAddr;

use crate::message::{self, Request};
use crate::transport::TransportKind;

/// The scheme of a SIP URI we write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Sip => "sip",
            Scheme::Sips => "sips",
        }
    }
}

/// The scheme of our Contact in a request we send (RFC 3261 §8.1.1.8): `sips` when its
/// Request-URI or its top Route is a SIPS URI.
pub fn for_request(request_uri: &str, top_route: Option<&str>) -> Scheme {
    sips_if_any([Some(request_uri), top_route])
}

/// The scheme of our Contact in the answers to `request` and in the dialog it creates
/// (RFC 3261 §12.1.1): `sips` when its Request-URI is a SIPS URI, or its top Record-Route is,
/// or (without Record-Route) its Contact is.
pub fn for_answer(request: &Request) -> Scheme {
    let first_value = |name| {
        request
            .headers
            .get(name)
            .and_then(|v| message::split_values(v).into_iter().next())
    };
    let next_hop = first_value("Record-Route").or_else(|| first_value("Contact"));
    sips_if_any([Some(request.uri.as_str()), next_hop])
}

/// The one rule behind both: any of these URIs (bare or name-addr) being SIPS makes ours SIPS.
fn sips_if_any<'a>(uris: impl IntoIterator<Item = Option<&'a str>>) -> Scheme {
    let is_sips = |value: &str| {
        message::name_addr_uri_text(value)
            .and_then(|uri| uri.get(..5))
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("sips:"))
    };
    if uris.into_iter().flatten().any(is_sips) {
        Scheme::Sips
    } else {
        Scheme::Sip
    }
}

/// A Contact value for us at `ip:port` over `transport`, `user` (if any) as its user part.
/// A `sips` URI over TLS carries no `transport` parameter: TLS over TCP is what `sips` means
/// and `transport=tls` is deprecated (RFC 5630 §3.1.3).
pub fn value(
    scheme: Scheme,
    user: &str,
    ip: IpAddr,
    port: u16,
    transport: TransportKind,
) -> String {
    let host = match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    let user = if user.is_empty() {
        String::new()
    } else {
        format!("{user}@")
    };
    let transport = match (scheme, transport) {
        (Scheme::Sips, TransportKind::Tls) => String::new(),
        (_, transport) => format!(";transport={}", transport.as_via().to_ascii_lowercase()),
    };
    format!("<{}:{user}{host}:{port}{transport}>", scheme.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Built directly, not parsed: the rule must cope with values the parser would refuse.
    fn invite(uri: &str, headers: &[(&str, &str)]) -> Request {
        let mut request = Request {
            method: "INVITE".into(),
            uri: uri.into(),
            headers: message::Headers::default(),
            body: Default::default(),
        };
        for (name, value) in headers {
            request.headers.push(*name, *value);
        }
        request
    }

    #[test]
    fn answers_take_the_scheme_of_the_request_not_of_the_transport() {
        let tls_contact = [("Contact", "<sip:a@192.0.2.9:5061;transport=tls>")];
        // baresip dialling `sip:echo@host;transport=tls`: a sip: Contact comes back.
        let request = invite("sip:echo@192.0.2.1:5061;transport=tls", &tls_contact);
        assert_eq!(for_answer(&request), Scheme::Sip);
        assert_eq!(
            for_answer(&invite("SIPS:echo@192.0.2.1", &tls_contact)),
            Scheme::Sips
        );
    }

    #[test]
    fn answers_follow_the_top_record_route_else_the_contact() {
        let sips_contact = ("Contact", "\"A, B\" <sips:a@192.0.2.9>");
        assert_eq!(
            for_answer(&invite("sip:echo@192.0.2.1", &[sips_contact])),
            Scheme::Sips
        );
        // With Record-Route, only its top value counts, not the Contact.
        let sip_rr = ("Record-Route", "<sip:p1.example;lr>, <sips:p2.example;lr>");
        assert_eq!(
            for_answer(&invite("sip:echo@192.0.2.1", &[sip_rr, sips_contact])),
            Scheme::Sip
        );
        let sips_rr = ("Record-Route", "<sips:p1.example;lr>");
        let sip_contact = ("Contact", "<sip:a@192.0.2.9>");
        assert_eq!(
            for_answer(&invite("sip:echo@192.0.2.1", &[sips_rr, sip_contact])),
            Scheme::Sips
        );
    }

    #[test]
    fn odd_header_values_do_not_make_sips_or_panic() {
        for contact in ["*", "<", "sips", "\"unclosed <sips:a@b>", "<x>", "é"] {
            assert_eq!(
                for_answer(&invite("sip:echo@192.0.2.1", &[("Contact", contact)])),
                Scheme::Sip,
                "{contact}"
            );
        }
    }

    #[test]
    fn requests_take_the_scheme_of_their_target() {
        assert_eq!(
            for_request("sip:+15550100@pbx.example;transport=tls", None),
            Scheme::Sip
        );
        assert_eq!(
            for_request("sips:+15550100@pbx.example", None),
            Scheme::Sips
        );
        assert_eq!(
            for_request("sip:+15550100@pbx.example", Some("<sips:edge.example;lr>")),
            Scheme::Sips
        );
    }

    #[test]
    fn values_name_the_transport_except_for_sips_over_tls() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            value(Scheme::Sip, "echo", v4, 5061, TransportKind::Tls),
            "<sip:echo@192.0.2.1:5061;transport=tls>"
        );
        assert_eq!(
            value(Scheme::Sips, "echo", v4, 5061, TransportKind::Tls),
            "<sips:echo@192.0.2.1:5061>"
        );
        assert_eq!(
            value(Scheme::Sip, "", v6, 5060, TransportKind::Udp),
            "<sip:[2001:db8::1]:5060;transport=udp>"
        );
    }
}
