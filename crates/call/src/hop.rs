//! Where a leg we place goes: the next hops of a call in order, and which failures move on
//! to the next one.

use std::net::SocketAddr;

use voicegate_sip::transport::TransportKind;

/// One place to send a request: an address and the transport to reach it over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub transport: TransportKind,
}

/// One place to try.
#[derive(Clone, Debug)]
pub struct NextHop {
    /// The Request-URI of the INVITE (the dialled number as user part).
    pub request_uri: String,
    pub credentials: Option<(String, String)>,
    /// Already resolved (an SRV sibling, or a registered contact's source address).
    pub fixed: Option<Target>,
    /// For logs and the call record: carrier or destination name.
    pub label: String,
    /// The To URI when it is not the Request-URI (a registered contact is called at its own
    /// URI, but the call is still to the dialled number).
    pub to: Option<String>,
}

/// `sip:host;params` with `user@` put in (a URI that names a user keeps its own).
pub fn with_user(uri: &str, user: &str) -> String {
    let uri = uri.trim().trim_matches(|c| c == '<' || c == '>');
    let Some((scheme, rest)) = uri.split_once(':') else {
        return uri.to_string();
    };
    let host_part_end = rest.find([';', '?']).unwrap_or(rest.len());
    if user.is_empty() || rest[..host_part_end].contains('@') {
        return uri.to_string();
    }
    format!("{scheme}:{user}@{rest}")
}

/// Statuses after which the next hop is tried (RFC 3261 §16.7 serial forking would also
/// move on after 6xx for a proxy; a carrier's 6xx is the callee's final word, so not here).
pub fn moves_on(status: u16) -> bool {
    status == 408 || (500..600).contains(&status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialled_number_goes_into_the_uri() {
        assert_eq!(
            with_user("sip:gw.example:5060;transport=tcp", "+15550123"),
            "sip:+15550123@gw.example:5060;transport=tcp"
        );
        assert_eq!(with_user("<sip:10.0.0.1>", "+1555"), "sip:+1555@10.0.0.1");
        assert_eq!(
            with_user("sip:agent@pbx.example", "+1555"),
            "sip:agent@pbx.example"
        );
        assert_eq!(
            with_user("sips:[2001:db8::1]:5061", "100"),
            "sips:100@[2001:db8::1]:5061"
        );
    }

    #[test]
    fn failover_statuses() {
        for s in [408, 500, 502, 503, 504, 580] {
            assert!(moves_on(s), "{s}");
        }
        for s in [400, 403, 404, 480, 486, 487, 488, 600, 603] {
            assert!(!moves_on(s), "{s}");
        }
    }
}
