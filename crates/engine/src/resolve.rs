//! Where a SIP request goes: RFC 3263 server location, simplified.
//!
//! No NAPTR step: the transport comes from the URI (`;transport=`, `sips:`) or, when the URI
//! names none, from which SRV records exist (`_sip._udp` first, then `_sip._tcp`). SRV
//! records are ordered by priority, with RFC 2782's weighted random choice among equal
//! priorities. Every name is resolved to A and AAAA records (IPv4 first: most trunks and our
//! own listeners are IPv4).
//!
//! ```no_run
//! # async fn demo() -> Result<(), String> {
//! use std::time::Duration;
//! use voicegate_engine::resolve::{parse_sip_target, Resolver};
//!
//! let resolver = Resolver::new(&[], Duration::from_secs(2))?;
//! let t = parse_sip_target("sip:agent@pbx.example.com;transport=tcp")?;
//! let targets = resolver.resolve(&t.host, t.port, t.transport, t.secure).await?;
//! // Try targets[0] first, then the next one if it does not answer.
//! # Ok(()) }
//! ```

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use rand::Rng;
use voicegate_sip::transport::TransportKind;

/// The default port of plain SIP (UDP and TCP).
pub const SIP_PORT: u16 = 5060;
/// The default port of SIP over TLS.
pub const SIPS_PORT: u16 = 5061;

pub use voicegate_call::hop::{parse_sip_target, SipTarget, Target};

/// RFC 2782's order for SRV records of one priority: repeatedly pick one at random with
/// probability proportional to its weight. Weight-0 entries go first in the running sum, so
/// they are chosen only when the random number is 0 (rarely, unless all weigh 0).
pub fn order_by_weight<T, R: Rng + ?Sized>(
    items: Vec<T>,
    weight: impl Fn(&T) -> u16,
    rng: &mut R,
) -> Vec<T> {
    let (mut left, heavy): (Vec<T>, Vec<T>) = items.into_iter().partition(|t| weight(t) == 0);
    left.extend(heavy);
    let mut ordered = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let total: u32 = left.iter().map(|t| u32::from(weight(t))).sum();
        let pick = rng.gen_range(0..=total);
        let mut running = 0;
        let index = left
            .iter()
            .position(|t| {
                running += u32::from(weight(t));
                running >= pick
            })
            .unwrap_or(0);
        ordered.push(left.remove(index));
    }
    ordered
}

/// SRV records ordered by priority (lowest first), weighted-random within a priority.
fn order_srv<T, R: Rng + ?Sized>(
    mut items: Vec<T>,
    priority: impl Fn(&T) -> u16,
    weight: impl Fn(&T) -> u16 + Copy,
    rng: &mut R,
) -> Vec<T> {
    items.sort_by_key(|t| priority(t));
    let mut ordered = Vec::with_capacity(items.len());
    let mut rest = items.into_iter().peekable();
    while let Some(first) = rest.next() {
        let p = priority(&first);
        let mut group = vec![first];
        while let Some(next) = rest.next_if(|t| priority(t) == p) {
            group.push(next);
        }
        ordered.extend(order_by_weight(group, weight, rng));
    }
    ordered
}

/// `name` as asked of DNS: a dotted name is taken as fully qualified (no search-domain
/// tries, which would only add NXDOMAIN round trips for a trunk's public name); a single label
/// is left to the system's search list.
fn query_name(name: &str) -> String {
    let name = name.trim_end_matches('.');
    if name.contains('.') {
        format!("{name}.")
    } else {
        name.to_string()
    }
}

/// One SRV record, reduced to what ordering and resolving it need.
#[derive(Clone, Debug)]
struct Srv {
    priority: u16,
    weight: u16,
    port: u16,
    target: String,
    transport: TransportKind,
}

/// A DNS stub resolver for SIP destinations. Cheap to clone: clones share one cache.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<TokioResolver>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Resolver {
    /// The system's resolver (/etc/resolv.conf and /etc/hosts), or, when `nameservers` is
    /// non-empty, only those servers (UDP), e.g. a test DNS server. `timeout` per query.
    pub fn new(nameservers: &[SocketAddr], timeout: Duration) -> Result<Self, String> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if nameservers.is_empty() {
            TokioResolver::builder(provider).map_err(|e| format!("system DNS config: {e}"))?
        } else {
            let servers = nameservers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp])
                })
                .collect();
            let mut builder = TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                provider,
            );
            // Only the given servers: /etc/hosts would make answers depend on the machine.
            builder.options_mut().use_hosts_file = ResolveHosts::Never;
            builder
        };
        let options = builder.options_mut();
        options.timeout = timeout;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let inner = builder.build().map_err(|e| format!("DNS resolver: {e}"))?;
        Ok(Resolver {
            inner: Arc::new(inner),
        })
    }

    /// Where a SIP URI's host goes, in the order to try:
    ///
    /// - an IP address: itself, at `port` or 5060 (5061 for TLS);
    /// - a name with an explicit port: its A/AAAA records at that port;
    /// - else its SRV records (`_sip._udp`, `_sip._tcp` or `_sips._tcp` by transport; with no
    ///   transport given, the `_sip._udp` targets and then the `_sip._tcp` ones) in RFC 2782
    ///   order, each target's A/AAAA records at the SRV port;
    /// - no SRV records: the name's A/AAAA records at 5060 (5061 for TLS).
    ///
    /// `secure` (a `sips:` URI) means TLS whatever `transport` says. Errors: the name does not
    /// exist or has no usable address, or DNS did not answer in time.
    pub async fn resolve(
        &self,
        host: &str,
        port: Option<u16>,
        transport: Option<TransportKind>,
        secure: bool,
    ) -> Result<Vec<Target>, String> {
        let transport = if secure {
            Some(TransportKind::Tls)
        } else {
            transport
        };
        let default_port = |t: Option<TransportKind>| match t {
            Some(TransportKind::Tls) => SIPS_PORT,
            _ => SIP_PORT,
        };
        let host = host.trim();
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(vec![Target {
                addr: SocketAddr::new(ip, port.unwrap_or_else(|| default_port(transport))),
                transport: transport.unwrap_or(TransportKind::Udp),
            }]);
        }
        if bare.is_empty() {
            return Err("empty host".into());
        }
        let name = bare.trim_end_matches('.');
        if let Some(port) = port {
            let transport = transport.unwrap_or(TransportKind::Udp);
            return self.addresses(name, port, transport).await;
        }

        let services: &[(&str, TransportKind)] = match transport {
            Some(TransportKind::Tls) => &[("_sips._tcp", TransportKind::Tls)],
            Some(TransportKind::Tcp) => &[("_sip._tcp", TransportKind::Tcp)],
            Some(TransportKind::Udp) => &[("_sip._udp", TransportKind::Udp)],
            None => &[
                ("_sip._udp", TransportKind::Udp),
                ("_sip._tcp", TransportKind::Tcp),
            ],
        };
        let mut found_any = false;
        let mut records = Vec::new();
        let mut failure = None;
        for (service, kind) in services {
            match self
                .srv(&query_name(&format!("{service}.{name}")), *kind)
                .await
            {
                Ok(mut found) => {
                    found_any |= !found.is_empty();
                    // RFC 2782: a "." target means the service is decidedly not offered here.
                    found.retain(|r| !r.target.is_empty());
                    // Each service in its own order: all UDP targets, then all TCP ones.
                    records.extend(order_srv(
                        found,
                        |r| r.priority,
                        |r| r.weight,
                        &mut rand::thread_rng(),
                    ));
                }
                // A server that does not answer now will not answer the next query either:
                // stop instead of waiting out another timeout.
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if !found_any {
            if let Some(e) = failure {
                return Err(format!("{name}: SRV lookup: {e}"));
            }
            let transport = transport.unwrap_or(TransportKind::Udp);
            return self
                .addresses(name, default_port(Some(transport)), transport)
                .await;
        }
        if records.is_empty() {
            return Err(format!("{name}: SRV says SIP is not offered"));
        }

        // Look the targets up together (one slow name must not hold up the rest), then keep
        // the SRV order.
        let lookups: Vec<_> = records
            .into_iter()
            .map(|r| {
                let me = self.clone();
                tokio::spawn(async move { me.addresses(&r.target, r.port, r.transport).await })
            })
            .collect();
        let mut targets = Vec::new();
        let mut last_error = None;
        for lookup in lookups {
            match lookup.await {
                Ok(Ok(found)) => {
                    for t in found {
                        if !targets.contains(&t) {
                            targets.push(t);
                        }
                    }
                }
                Ok(Err(e)) => last_error = Some(e),
                Err(e) => last_error = Some(format!("lookup task: {e}")),
            }
        }
        if targets.is_empty() {
            return Err(last_error.unwrap_or_else(|| format!("{name}: no address")));
        }
        Ok(targets)
    }

    /// The SRV records of `service_name`: empty when DNS says there are none (or refuses
    /// the question: then plain A/AAAA is worth a try); an error when it did not answer.
    async fn srv(&self, service_name: &str, transport: TransportKind) -> Result<Vec<Srv>, String> {
        match self.inner.srv_lookup(service_name).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::SRV(srv) => Some(Srv {
                        priority: srv.priority,
                        weight: srv.weight,
                        port: srv.port,
                        target: srv.target.to_ascii().trim_end_matches('.').to_string(),
                        transport,
                    }),
                    _ => None,
                })
                .collect()),
            Err(NetError::Dns(_)) => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// A name's A and AAAA records (IPv4 first) at `port`.
    async fn addresses(
        &self,
        name: &str,
        port: u16,
        transport: TransportKind,
    ) -> Result<Vec<Target>, String> {
        let lookup = self
            .inner
            .lookup_ip(query_name(name).as_str())
            .await
            .map_err(|e| {
                if e.is_nx_domain() {
                    format!("{name}: no such host")
                } else if e.is_no_records_found() {
                    format!("{name}: no address records")
                } else {
                    format!("{name}: {e}")
                }
            })?;
        let targets: Vec<Target> = lookup
            .iter()
            .map(|ip| Target {
                addr: SocketAddr::new(ip, port),
                transport,
            })
            .collect();
        if targets.is_empty() {
            return Err(format!("{name}: no address"));
        }
        Ok(targets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn parsed(uri: &str) -> SipTarget {
        parse_sip_target(uri).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_plain_and_user_and_port() {
        assert_eq!(
            parsed("sip:pbx.example.com"),
            SipTarget {
                user: None,
                host: "pbx.example.com".into(),
                port: None,
                transport: None,
                secure: false,
            }
        );
        let t = parsed("sip:agent:secret@10.0.0.5:5080");
        assert_eq!(t.user.as_deref(), Some("agent"));
        assert_eq!(t.host, "10.0.0.5");
        assert_eq!(t.port, Some(5080));
        assert_eq!(t.transport, None);
    }

    #[test]
    fn parses_ipv6_with_port() {
        let t = parsed("sip:bob@[::1]:5070");
        assert_eq!(t.host, "::1");
        assert_eq!(t.port, Some(5070));
        let t = parsed("sip:[2001:db8::7];transport=tcp");
        assert_eq!(t.host, "2001:db8::7");
        assert_eq!(t.port, None);
        assert_eq!(t.transport, Some(TransportKind::Tcp));
    }

    #[test]
    fn parses_transport_and_other_params() {
        let t = parsed("sip:+919876543210;npdi@pbx.example:5062;lr;Transport=TCP;x=y?Subject=hi");
        assert_eq!(t.user.as_deref(), Some("+919876543210;npdi"));
        assert_eq!(t.host, "pbx.example");
        assert_eq!(t.port, Some(5062));
        assert_eq!(t.transport, Some(TransportKind::Tcp));
        assert_eq!(
            parsed("sip:a@h;transport=tls").transport,
            Some(TransportKind::Tls)
        );
        assert_eq!(
            parsed("sip:a@h;transport=udp").transport,
            Some(TransportKind::Udp)
        );
    }

    #[test]
    fn parses_sips_and_name_addr() {
        let t = parsed("SIPS:agent@pbx.example");
        assert!(t.secure);
        assert_eq!(t.transport, None);
        let t = parsed("\"Agent\" <sip:agent@pbx.example:5070;transport=udp>;tag=1");
        assert_eq!(t.user.as_deref(), Some("agent"));
        assert_eq!(t.host, "pbx.example");
        assert_eq!(t.port, Some(5070));
        assert!(!t.secure);
        assert_eq!(parsed("<sips:pbx.example>").host, "pbx.example");
    }

    #[test]
    fn refuses_malformed_uris() {
        for bad in [
            "",
            "tel:+911234",
            "http://pbx.example",
            "sip:",
            "sip:@pbx",
            "sip:pbx:0",
            "sip:pbx:70000",
            "sip:pbx:50a",
            "sip:pbx:",
            "sip:[::1",
            "sip:[nope]:5060",
            "sip:[::1]x",
            "sip:pbx;transport=sctp",
            "sip:p bx",
            "<sip:pbx",
        ] {
            assert!(parse_sip_target(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn weights_share_first_place_in_proportion() {
        // Weights 60/30/10/0: over many draws each comes first about that often, and the
        // weight-0 one almost never.
        let mut rng = StdRng::seed_from_u64(7);
        let mut first = [0u32; 4];
        let draws = 20_000;
        for _ in 0..draws {
            let order = order_by_weight(
                vec![(0, 60u16), (1, 30), (2, 10), (3, 0)],
                |t| t.1,
                &mut rng,
            );
            assert_eq!(order.len(), 4);
            first[order[0].0] += 1;
        }
        let share = |n: u32| f64::from(n) / f64::from(draws);
        assert!((share(first[0]) - 0.6).abs() < 0.03, "{first:?}");
        assert!((share(first[1]) - 0.3).abs() < 0.03, "{first:?}");
        assert!((share(first[2]) - 0.1).abs() < 0.03, "{first:?}");
        assert!(share(first[3]) < 0.01, "{first:?}");
    }

    #[test]
    fn weight_order_is_deterministic_for_a_seed_and_keeps_everything() {
        let items: Vec<(u8, u16)> = vec![(0, 5), (1, 0), (2, 50), (3, 5), (4, 0)];
        let a = order_by_weight(items.clone(), |t| t.1, &mut StdRng::seed_from_u64(42));
        let b = order_by_weight(items.clone(), |t| t.1, &mut StdRng::seed_from_u64(42));
        assert_eq!(a, b);
        let mut ids: Vec<u8> = a.iter().map(|t| t.0).collect();
        ids.sort();
        assert_eq!(ids, vec![0, 1, 2, 3, 4]);
        // All weights 0: nothing to choose by, the order stays as given.
        let zeros = vec![(0u8, 0u16), (1, 0), (2, 0)];
        assert_eq!(
            order_by_weight(zeros.clone(), |t| t.1, &mut StdRng::seed_from_u64(1)),
            zeros
        );
        assert!(order_by_weight(
            Vec::<(u8, u16)>::new(),
            |t| t.1,
            &mut StdRng::seed_from_u64(1)
        )
        .is_empty());
    }

    #[test]
    fn srv_order_puts_lower_priority_first() {
        // (id, priority, weight)
        let items = vec![
            (0u8, 20u16, 1u16),
            (1, 10, 1),
            (2, 20, 100),
            (3, 10, 100),
            (4, 5, 0),
        ];
        for seed in 0..50 {
            let order = order_srv(
                items.clone(),
                |t| t.1,
                |t| t.2,
                &mut StdRng::seed_from_u64(seed),
            );
            let priorities: Vec<u16> = order.iter().map(|t| t.1).collect();
            assert_eq!(priorities, vec![5, 10, 10, 20, 20]);
        }
    }

    #[test]
    fn resolve_can_run_on_a_spawned_task() {
        fn spawnable<F: std::future::Future + Send + 'static>(_: F) {}
        let resolver = Resolver {
            inner: Arc::new(
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(Vec::new()),
                    TokioRuntimeProvider::default(),
                )
                .build()
                .unwrap(),
            ),
        };
        spawnable(async move { resolver.resolve("pbx.test", None, None, false).await });
    }

    #[tokio::test]
    async fn ip_hosts_need_no_dns() {
        // A name server that never answers: an IP host must not ask it anything.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let resolver =
            Resolver::new(&[silent.local_addr().unwrap()], Duration::from_secs(30)).unwrap();
        let quick = |fut| tokio::time::timeout(Duration::from_secs(1), fut);
        let udp = |addr: &str| Target {
            addr: addr.parse().unwrap(),
            transport: TransportKind::Udp,
        };
        assert_eq!(
            quick(resolver.resolve("10.0.0.5", None, None, false))
                .await
                .unwrap()
                .unwrap(),
            vec![udp("10.0.0.5:5060")]
        );
        assert_eq!(
            quick(resolver.resolve("::1", Some(5070), None, false))
                .await
                .unwrap()
                .unwrap(),
            vec![udp("[::1]:5070")]
        );
        assert_eq!(
            quick(resolver.resolve("[2001:db8::1]", None, Some(TransportKind::Tcp), false))
                .await
                .unwrap()
                .unwrap(),
            vec![Target {
                addr: "[2001:db8::1]:5060".parse().unwrap(),
                transport: TransportKind::Tcp,
            }]
        );
        assert_eq!(
            quick(resolver.resolve("192.0.2.1", None, None, true))
                .await
                .unwrap()
                .unwrap(),
            vec![Target {
                addr: "192.0.2.1:5061".parse().unwrap(),
                transport: TransportKind::Tls,
            }]
        );
        assert_eq!(
            quick(resolver.resolve("192.0.2.1", None, Some(TransportKind::Tls), false))
                .await
                .unwrap()
                .unwrap()[0]
                .addr
                .port(),
            5061
        );
    }
}
