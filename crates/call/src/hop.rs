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

/// The parts of a SIP URI that locating its server needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipTarget {
    /// The user part (`agent` in `sip:agent@pbx`), without any `:password`.
    pub user: Option<String>,
    /// A domain name or an IP address; an IPv6 address without its brackets.
    pub host: String,
    pub port: Option<u16>,
    /// From `;transport=`.
    pub transport: Option<TransportKind>,
    /// A `sips:` URI: TLS only.
    pub secure: bool,
}

/// Splits a SIP URI (`sip:host[:port][;transport=tcp][;params]`, `sips:…`, with or without
/// `user@`, maybe in `<>` with a display name before) into its parts.
pub fn parse_sip_target(uri: &str) -> Result<SipTarget, String> {
    let bad = |why: &str| format!("{uri:?}: {why}");
    let mut s = uri.trim();
    // A name-addr (`"Agent" <sip:…>`): only what is inside the brackets is the URI.
    if let Some(open) = s.find('<') {
        let rest = &s[open + 1..];
        let close = rest.find('>').ok_or_else(|| bad("unclosed <"))?;
        s = rest[..close].trim();
    }
    let (secure, rest) = match s.split_once(':') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("sip") => (false, rest),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("sips") => (true, rest),
        _ => return Err(bad("not a sip: or sips: URI")),
    };
    // An unescaped '@' can only end the userinfo (RFC 3261 §25.1: parameters and headers
    // cannot hold one), so the first one splits user from host.
    let (user, rest) = match rest.split_once('@') {
        Some((userinfo, rest)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if user.is_empty() {
                return Err(bad("empty user"));
            }
            (Some(user.to_string()), rest)
        }
        None => (None, rest),
    };
    let (hostport, params) = match rest.find([';', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        addr.parse::<std::net::Ipv6Addr>()
            .map_err(|_| bad("bad IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
        };
        (addr, port)
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
    {
        return Err(bad("bad host"));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(bad("bad port")),
        },
    };
    let mut transport = None;
    let params = params.split('?').next().unwrap_or_default();
    for param in params.split(';').filter(|p| !p.is_empty()) {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        if name.eq_ignore_ascii_case("transport") {
            transport = Some(match value.to_ascii_lowercase().as_str() {
                "udp" => TransportKind::Udp,
                "tcp" => TransportKind::Tcp,
                "tls" => TransportKind::Tls,
                _ => return Err(bad("unsupported transport")),
            });
        }
    }
    Ok(SipTarget {
        user,
        host: host.to_string(),
        port,
        transport,
        secure,
    })
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
