//! The in-memory snapshot of trunks and number mappings that the SIP path reads.
//!
//! Plain data: a later step fills a [`Snapshot`] from the database and the REST API and swaps
//! it in whole; the SIP path only reads it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Exotel's default limit: 200 calls per minute per trunk.
pub const DEFAULT_CALLS_PER_MINUTE: u32 = 200;

fn default_calls_per_minute() -> u32 {
    DEFAULT_CALLS_PER_MINUTE
}

/// A SIP trunk as admission sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trunk {
    /// The trunk's id (`trunk_sid`).
    pub sid: String,
    /// `trunk_name`.
    pub name: String,
    /// `status` "active" (true) or "inactive" (false).
    pub active: bool,
    /// Source networks allowed to send INVITEs on this trunk.
    #[serde(default)]
    pub whitelisted: Vec<IpNet>,
    /// Whether the trunk has at least one credential: INVITEs must then pass digest auth.
    #[serde(default)]
    pub has_credentials: bool,
    /// Concurrent call limit; `None` is unlimited, `Some(0)` admits nothing.
    #[serde(default)]
    pub max_concurrent_calls: Option<u32>,
    /// Calls admitted per sliding minute; 0 admits nothing.
    #[serde(default = "default_calls_per_minute")]
    pub calls_per_minute: u32,
}

impl Trunk {
    /// An active trunk with no whitelist, no credentials, no concurrent limit and
    /// [`DEFAULT_CALLS_PER_MINUTE`].
    pub fn new(sid: impl Into<String>, name: impl Into<String>) -> Self {
        Trunk {
            sid: sid.into(),
            name: name.into(),
            active: true,
            whitelisted: Vec::new(),
            has_credentials: false,
            max_concurrent_calls: None,
            calls_per_minute: DEFAULT_CALLS_PER_MINUTE,
        }
    }
}

/// What a mapped number does when it is called.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Mode {
    /// Ordinary telephony on the trunk (Exotel's default mode).
    Pstn,
    /// The call goes to a voicegate flow (a voice bot).
    Flow { flow_id: String },
}

/// A phone number mapped to a trunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumberMapping {
    /// E.164 with the leading `+`.
    pub number: String,
    pub trunk_sid: String,
    /// Serialized flat: `{"number", "trunk_sid", "mode": "flow", "flow_id"}`.
    #[serde(flatten)]
    pub mode: Mode,
}

/// Why an [`IpNet`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpNetError {
    #[error("not an IP address: {0:?}")]
    Address(String),
    #[error("not a prefix length: {0:?}")]
    PrefixSyntax(String),
    #[error("prefix /{prefix} not allowed for {family}: must be {min}..={max}")]
    Prefix {
        prefix: u8,
        family: &'static str,
        min: u8,
        max: u8,
    },
}

/// A whitelisted network: an address and a prefix length, IPv4 or IPv6.
///
/// Always valid: the prefix is within the family's allowed range and the address has its host
/// bits cleared (`10.0.1.5/16` is stored as `10.0.0.0/16`). Serialized as the string
/// `"10.0.0.0/16"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Allowed IPv4 prefixes: the API's `mask`, 16..=32.
    pub const V4_PREFIXES: (u8, u8) = (16, 32);
    /// Allowed IPv6 prefixes: 48..=128 (a /48 is one site, as a /16 is at most one network
    /// for IPv4; the API spec says nothing on IPv6).
    pub const V6_PREFIXES: (u8, u8) = (48, 128);

    /// A network from an address and prefix; host bits of `addr` are cleared.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, IpNetError> {
        let (family, (min, max)) = match addr {
            IpAddr::V4(_) => ("IPv4", Self::V4_PREFIXES),
            IpAddr::V6(_) => ("IPv6", Self::V6_PREFIXES),
        };
        if !(min..=max).contains(&prefix) {
            return Err(IpNetError::Prefix {
                prefix,
                family,
                min,
                max,
            });
        }
        Ok(IpNet {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// Parses `"10.0.0.0/16"`, `"2001:db8::/64"`, or a bare address (a /32 or /128).
    pub fn parse(s: &str) -> Result<Self, IpNetError> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| IpNetError::Address(addr.to_string()))?;
        let prefix = match prefix {
            None => match addr {
                IpAddr::V4(_) => 32,
                IpAddr::V6(_) => 128,
            },
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse()
                .map_err(|_| IpNetError::PrefixSyntax(p.to_string()))?,
            Some(p) => return Err(IpNetError::PrefixSyntax(p.to_string())),
        };
        Self::new(addr, prefix)
    }

    /// The network address (host bits cleared).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies in this network. Families must match, except that an IPv4-mapped
    /// IPv6 address (`::ffff:10.0.0.1`, as a dual-stack socket reports an IPv4 peer) is
    /// compared as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        matches!(
            (self.addr, ip),
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_))
        ) && mask(ip, self.prefix) == self.addr
    }
}

/// `addr` with all but the first `prefix` bits cleared (`prefix` at most the family's width).
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        IpNet::parse(s)
    }
}

impl TryFrom<String> for IpNet {
    type Error = IpNetError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        IpNet::parse(&s)
    }
}

impl From<IpNet> for String {
    fn from(net: IpNet) -> String {
        net.to_string()
    }
}

/// Trunks and number mappings as one consistent picture.
///
/// Lookups are linear scans: fine for hundreds of trunks and thousands of numbers; an index can
/// come later without changing the API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub trunks: Vec<Trunk>,
    pub numbers: Vec<NumberMapping>,
}

impl Snapshot {
    /// The trunk with this sid.
    pub fn trunk(&self, sid: &str) -> Option<&Trunk> {
        self.trunks.iter().find(|t| t.sid == sid)
    }

    /// The trunk a source address belongs to: the first *active* trunk whose whitelist
    /// contains it, else the first inactive one (so admission can answer "Trunk inactive"
    /// rather than "Source IP not allowed").
    pub fn trunk_for_source(&self, ip: IpAddr) -> Option<&Trunk> {
        let mut matching = self
            .trunks
            .iter()
            .filter(|t| t.whitelisted.iter().any(|net| net.contains(ip)));
        let first = matching.next()?;
        if first.active {
            return Some(first);
        }
        matching.find(|t| t.active).or(Some(first))
    }

    /// The mapping of an E.164 number (exact string match, `+` included).
    pub fn mapping(&self, number: &str) -> Option<&NumberMapping> {
        self.numbers.iter().find(|m| m.number == number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_slash16_contains_its_range_only() {
        let net = IpNet::parse("10.0.0.0/16").unwrap();
        assert!(net.contains(ip("10.0.0.0")));
        assert!(net.contains(ip("10.0.255.255")));
        assert!(net.contains(ip("10.0.3.4")));
        assert!(!net.contains(ip("10.1.0.0")));
        assert!(!net.contains(ip("9.255.255.255")));
    }

    #[test]
    fn v4_slash32_and_bare_address_match_one_host() {
        for s in ["192.0.2.7/32", "192.0.2.7"] {
            let net = IpNet::parse(s).unwrap();
            assert_eq!(net.prefix(), 32);
            assert!(net.contains(ip("192.0.2.7")));
            assert!(!net.contains(ip("192.0.2.8")));
            assert!(!net.contains(ip("192.0.2.6")));
        }
    }

    #[test]
    fn host_bits_are_cleared() {
        let net = IpNet::parse("10.0.1.5/16").unwrap();
        assert_eq!(net.addr(), ip("10.0.0.0"));
        assert_eq!(net.to_string(), "10.0.0.0/16");
        assert!(net.contains(ip("10.0.200.1")));
    }

    #[test]
    fn v4_prefix_outside_16_to_32_is_refused() {
        assert!(matches!(
            IpNet::parse("10.0.0.0/15"),
            Err(IpNetError::Prefix { prefix: 15, .. })
        ));
        assert!(matches!(
            IpNet::parse("10.0.0.0/33"),
            Err(IpNetError::Prefix { prefix: 33, .. })
        ));
        assert!(IpNet::parse("10.0.0.0/0").is_err());
        assert!(IpNet::parse("10.0.0.0/16").is_ok());
    }

    #[test]
    fn v6_slash64_contains_its_range_only() {
        let net = IpNet::parse("2001:db8:1:2::/64").unwrap();
        assert!(net.contains(ip("2001:db8:1:2::1")));
        assert!(net.contains(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")));
        assert!(!net.contains(ip("2001:db8:1:3::1")));
        let host = IpNet::parse("2001:db8::5").unwrap();
        assert_eq!(host.prefix(), 128);
        assert!(host.contains(ip("2001:db8::5")));
        assert!(!host.contains(ip("2001:db8::6")));
    }

    #[test]
    fn v6_prefix_outside_48_to_128_is_refused() {
        assert!(IpNet::parse("2001:db8::/47").is_err());
        assert!(IpNet::parse("2001:db8::/129").is_err());
        assert!(IpNet::parse("2001:db8::/48").is_ok());
    }

    #[test]
    fn mismatched_families_never_match() {
        let v4 = IpNet::parse("10.0.0.0/16").unwrap();
        let v6 = IpNet::parse("::/48").unwrap();
        assert!(!v4.contains(ip("::a00:1"))); // IPv4-compatible (not mapped) form
        assert!(!v4.contains(ip("2001:db8::1")));
        assert!(!v6.contains(ip("0.0.0.1")));
        assert!(!v6.contains(ip("10.0.0.1")));
    }

    #[test]
    fn v4_mapped_v6_source_matches_v4_network() {
        let v4 = IpNet::parse("10.0.0.0/16").unwrap();
        assert!(v4.contains(ip("::ffff:10.0.9.9")));
        assert!(!v4.contains(ip("::ffff:10.1.9.9")));
    }

    #[test]
    fn malformed_networks_are_refused() {
        for s in [
            "",
            "10.0.0",
            "10.0.0.0/",
            "10.0.0.0/x",
            "10.0.0.0/+16",
            "10.0.0.0/16/1",
            "10.0.0.0/999",
            "host/16",
        ] {
            assert!(IpNet::parse(s).is_err(), "{s:?} parsed");
        }
    }

    #[test]
    fn trunk_for_source_takes_first_match_preferring_active() {
        let mut old = Trunk::new("OLD", "old");
        old.active = false;
        old.whitelisted.push(IpNet::parse("10.0.0.0/16").unwrap());
        let mut new = Trunk::new("NEW", "new");
        new.whitelisted.push(IpNet::parse("10.0.0.0/24").unwrap());
        let mut other = Trunk::new("OTHER", "other");
        other.whitelisted.push(IpNet::parse("10.0.0.0/16").unwrap());
        let snap = Snapshot {
            trunks: vec![old, new, other],
            numbers: vec![],
        };
        // Active beats an earlier inactive trunk; among active ones, the first wins.
        assert_eq!(snap.trunk_for_source(ip("10.0.0.9")).unwrap().sid, "NEW");
        assert_eq!(snap.trunk_for_source(ip("10.0.7.9")).unwrap().sid, "OTHER");
        assert_eq!(snap.trunk_for_source(ip("10.9.0.1")), None);

        let only_inactive = Snapshot {
            trunks: vec![snap.trunks[0].clone()],
            numbers: vec![],
        };
        assert_eq!(
            only_inactive.trunk_for_source(ip("10.0.0.9")).unwrap().sid,
            "OLD"
        );
    }

    #[test]
    fn mapping_and_trunk_lookups() {
        let snap = Snapshot {
            trunks: vec![Trunk::new("TR1", "a")],
            numbers: vec![NumberMapping {
                number: "+918000000001".into(),
                trunk_sid: "TR1".into(),
                mode: Mode::Flow {
                    flow_id: "F1".into(),
                },
            }],
        };
        assert_eq!(snap.mapping("+918000000001").unwrap().trunk_sid, "TR1");
        assert_eq!(snap.mapping("918000000001"), None);
        assert_eq!(snap.trunk("TR1").unwrap().name, "a");
        assert_eq!(snap.trunk("TR2"), None);
    }

    #[test]
    fn serde_shapes() {
        let json = r#"{
            "trunks": [{"sid": "TR1", "name": "a", "active": true, "whitelisted": ["10.0.1.5/16"]}],
            "numbers": [
                {"number": "+918000000001", "trunk_sid": "TR1", "mode": "flow", "flow_id": "F1"},
                {"number": "+918000000002", "trunk_sid": "TR1", "mode": "pstn"}
            ]
        }"#;
        let snap: Snapshot = serde_json::from_str(json).unwrap();
        let t = &snap.trunks[0];
        assert_eq!(t.calls_per_minute, DEFAULT_CALLS_PER_MINUTE);
        assert_eq!(t.max_concurrent_calls, None);
        assert!(!t.has_credentials);
        assert_eq!(t.whitelisted[0].to_string(), "10.0.0.0/16");
        assert_eq!(
            snap.numbers[0].mode,
            Mode::Flow {
                flow_id: "F1".into()
            }
        );
        assert_eq!(snap.numbers[1].mode, Mode::Pstn);

        let back: Snapshot = serde_json::from_str(&serde_json::to_string(&snap).unwrap()).unwrap();
        assert_eq!(back, snap);
        let n = serde_json::to_value(&snap.numbers[0]).unwrap();
        assert_eq!(n["mode"], "flow");
        assert_eq!(n["flow_id"], "F1");

        let bad = r#"{"sid":"T","name":"n","active":true,"whitelisted":["10.0.0.0/8"]}"#;
        assert!(serde_json::from_str::<Trunk>(bad).is_err());
    }
}
