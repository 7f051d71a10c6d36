//! Where to send RTP: the address in the peer's SDP, or the address its packets really come
//! from (latching). Behind NAT the SDP names a private address we cannot reach, the classic
//! cause of one-way audio; symmetric RTP answers to the observed source instead.

use std::net::{IpAddr, SocketAddr};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatchPolicy {
    /// Latch when the SDP address cannot be right for us: private, shared (CGNAT),
    /// link-local or unspecified, while packets come from elsewhere.
    Auto,
    /// Always answer to the observed source.
    Always,
    /// Always the SDP address.
    Never,
}

impl LatchPolicy {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "auto" => Some(LatchPolicy::Auto),
            "always" => Some(LatchPolicy::Always),
            "never" => Some(LatchPolicy::Never),
            _ => None,
        }
    }
}

/// The send address of one RTP (or RTCP) flow.
#[derive(Clone, Debug)]
pub struct RemoteAddress {
    policy: LatchPolicy,
    signalled: Option<SocketAddr>,
    observed: Option<SocketAddr>,
}

impl RemoteAddress {
    pub fn new(policy: LatchPolicy, signalled: Option<SocketAddr>) -> Self {
        RemoteAddress {
            policy,
            signalled,
            observed: None,
        }
    }

    /// A new SDP address (re-INVITE); what was observed stays until packets say otherwise.
    pub fn set_signalled(&mut self, signalled: Option<SocketAddr>) {
        self.signalled = signalled;
    }

    /// Notes where a packet came from; returns true when that changes where we send.
    pub fn on_packet(&mut self, source: SocketAddr) -> bool {
        let before = self.target();
        self.observed = Some(source);
        self.target() != before
    }

    /// Where to send now; None until there is somewhere (SDP hold with no packets yet).
    pub fn target(&self) -> Option<SocketAddr> {
        match self.policy {
            LatchPolicy::Never => self.signalled,
            LatchPolicy::Always => self.observed.or(self.signalled),
            LatchPolicy::Auto => match (self.signalled, self.observed) {
                (Some(sdp), Some(seen)) if unreachable_from_outside(sdp.ip()) => Some(seen),
                (Some(sdp), _) => Some(sdp),
                (None, seen) => seen,
            },
        }
    }
}

/// Addresses that a peer behind NAT puts in its SDP and that we cannot send to.
fn unreachable_from_outside(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_unspecified() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn auto_latches_only_for_private_sdp_addresses() {
        let mut nat = RemoteAddress::new(LatchPolicy::Auto, Some(addr("192.168.1.10:4000")));
        assert_eq!(nat.target(), Some(addr("192.168.1.10:4000")));
        assert!(nat.on_packet(addr("203.0.113.5:61000")));
        assert_eq!(nat.target(), Some(addr("203.0.113.5:61000")));

        let mut cgnat = RemoteAddress::new(LatchPolicy::Auto, Some(addr("100.64.3.3:4000")));
        cgnat.on_packet(addr("203.0.113.5:61000"));
        assert_eq!(cgnat.target(), Some(addr("203.0.113.5:61000")));

        let mut public = RemoteAddress::new(LatchPolicy::Auto, Some(addr("198.51.100.7:4000")));
        assert!(!public.on_packet(addr("203.0.113.5:61000")));
        assert_eq!(public.target(), Some(addr("198.51.100.7:4000")));

        let mut hold = RemoteAddress::new(LatchPolicy::Auto, None);
        assert_eq!(hold.target(), None);
        hold.on_packet(addr("203.0.113.5:61000"));
        assert_eq!(hold.target(), Some(addr("203.0.113.5:61000")));
    }

    #[test]
    fn always_and_never() {
        let mut always = RemoteAddress::new(LatchPolicy::Always, Some(addr("198.51.100.7:4000")));
        always.on_packet(addr("203.0.113.5:61000"));
        assert_eq!(always.target(), Some(addr("203.0.113.5:61000")));
        let mut never = RemoteAddress::new(LatchPolicy::Never, Some(addr("10.0.0.1:4000")));
        never.on_packet(addr("203.0.113.5:61000"));
        assert_eq!(never.target(), Some(addr("10.0.0.1:4000")));
        assert_eq!(LatchPolicy::from_name("auto"), Some(LatchPolicy::Auto));
        assert_eq!(LatchPolicy::from_name("sometimes"), None);
    }
}
