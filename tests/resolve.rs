//! SIP destination resolution (RFC 3263, simplified) against a real DNS server on loopback.

mod common;

use std::time::{Duration, Instant};

use common::dns::{addr, srv, TestDns};
use hickory_proto::rr::RecordType;
use voicegate::resolve::{parse_sip_target, Resolver, Target};
use voicegate_sip::transport::TransportKind;

const TIMEOUT: Duration = Duration::from_secs(2);

fn target(a: &str, transport: TransportKind) -> Target {
    Target {
        addr: a.parse().unwrap(),
        transport,
    }
}

fn resolver_for(dns: &TestDns) -> Resolver {
    Resolver::new(&[dns.addr], TIMEOUT).unwrap()
}

#[tokio::test]
async fn srv_priorities_give_the_order() {
    let dns = TestDns::start(vec![
        srv("_sip._udp.pbx.test", 20, 10, 5080, "backup.pbx.test"),
        srv("_sip._udp.pbx.test", 10, 10, 5070, "main.pbx.test"),
        addr("main.pbx.test", "127.0.0.10"),
        addr("main.pbx.test", "::10"),
        addr("backup.pbx.test", "127.0.0.20"),
    ])
    .await;
    let resolver = resolver_for(&dns);
    let got = resolver
        .resolve("pbx.test", None, Some(TransportKind::Udp), false)
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![
            target("127.0.0.10:5070", TransportKind::Udp),
            target("[::10]:5070", TransportKind::Udp),
            target("127.0.0.20:5080", TransportKind::Udp),
        ],
        "priority 10 (IPv4 before IPv6) before priority 20"
    );
}

#[tokio::test]
async fn no_transport_tries_udp_then_tcp_services() {
    let dns = TestDns::start(vec![
        srv("_sip._udp.both.test", 10, 0, 5070, "u.both.test"),
        srv("_sip._tcp.both.test", 5, 0, 5071, "t.both.test"),
        srv("_sip._tcp.tcponly.test", 10, 0, 5072, "t.both.test"),
        addr("u.both.test", "127.0.0.1"),
        addr("t.both.test", "127.0.0.2"),
        // Present so the name exists: its SRV query gets NOERROR with no answer.
        addr("tcponly.test", "127.0.0.3"),
    ])
    .await;
    let resolver = resolver_for(&dns);
    let got = resolver
        .resolve("both.test", None, None, false)
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![
            target("127.0.0.1:5070", TransportKind::Udp),
            target("127.0.0.2:5071", TransportKind::Tcp),
        ],
        "UDP targets come first whatever the TCP record's priority"
    );
    let got = resolver
        .resolve("tcponly.test", None, None, false)
        .await
        .unwrap();
    assert_eq!(got, vec![target("127.0.0.2:5072", TransportKind::Tcp)]);

    // An explicit transport asks for that service only.
    let got = resolver
        .resolve("both.test", None, Some(TransportKind::Tcp), false)
        .await
        .unwrap();
    assert_eq!(got, vec![target("127.0.0.2:5071", TransportKind::Tcp)]);
}

#[tokio::test]
async fn sips_uses_sips_tcp_service_and_5061() {
    let dns = TestDns::start(vec![
        srv("_sips._tcp.secure.test", 10, 0, 5161, "tls.secure.test"),
        addr("tls.secure.test", "127.0.0.5"),
        addr("plain.test", "127.0.0.6"),
    ])
    .await;
    let resolver = resolver_for(&dns);
    let t = parse_sip_target("sips:agent@secure.test").unwrap();
    let got = resolver
        .resolve(&t.host, t.port, t.transport, t.secure)
        .await
        .unwrap();
    assert_eq!(got, vec![target("127.0.0.5:5161", TransportKind::Tls)]);
    // transport=tls on a sip: URI looks up the same service.
    let got = resolver
        .resolve("secure.test", None, Some(TransportKind::Tls), false)
        .await
        .unwrap();
    assert_eq!(got, vec![target("127.0.0.5:5161", TransportKind::Tls)]);
    // No SRV: A at 5061.
    let got = resolver
        .resolve("plain.test", None, None, true)
        .await
        .unwrap();
    assert_eq!(got, vec![target("127.0.0.6:5061", TransportKind::Tls)]);
}

#[tokio::test]
async fn without_srv_the_a_record_at_5060() {
    let dns = TestDns::start(vec![addr("gw.test", "127.0.0.7")]).await;
    let resolver = resolver_for(&dns);
    let got = resolver
        .resolve("gw.test", None, None, false)
        .await
        .unwrap();
    assert_eq!(got, vec![target("127.0.0.7:5060", TransportKind::Udp)]);
    let got = resolver
        .resolve("gw.test", None, Some(TransportKind::Tcp), false)
        .await
        .unwrap();
    assert_eq!(got, vec![target("127.0.0.7:5060", TransportKind::Tcp)]);
    let asked = dns.queries();
    assert!(
        asked.contains(&("_sip._udp.gw.test".into(), RecordType::SRV))
            && asked.contains(&("_sip._tcp.gw.test".into(), RecordType::SRV)),
        "SRV asked first: {asked:?}"
    );
}

#[tokio::test]
async fn a_name_with_a_port_skips_srv() {
    let dns = TestDns::start(vec![
        srv("_sip._udp.pbx.test", 10, 0, 5999, "other.test"),
        addr("other.test", "127.0.0.99"),
        addr("pbx.test", "127.0.0.8"),
    ])
    .await;
    let resolver = resolver_for(&dns);
    let t = parse_sip_target("<sip:agent@pbx.test:5090;transport=tcp>").unwrap();
    let got = resolver
        .resolve(&t.host, t.port, t.transport, t.secure)
        .await
        .unwrap();
    assert_eq!(got, vec![target("127.0.0.8:5090", TransportKind::Tcp)]);
    assert!(
        dns.queries().iter().all(|(_, ty)| *ty != RecordType::SRV),
        "no SRV query with an explicit port: {:?}",
        dns.queries()
    );
}

#[tokio::test]
async fn srv_targets_that_do_not_resolve_are_skipped() {
    let dns = TestDns::start(vec![
        srv("_sip._udp.pbx.test", 10, 0, 5070, "gone.pbx.test"),
        srv("_sip._udp.pbx.test", 20, 0, 5071, "alive.pbx.test"),
        addr("alive.pbx.test", "127.0.0.9"),
    ])
    .await;
    let resolver = resolver_for(&dns);
    let got = resolver
        .resolve("pbx.test", None, Some(TransportKind::Udp), false)
        .await
        .unwrap();
    assert_eq!(got, vec![target("127.0.0.9:5071", TransportKind::Udp)]);
}

#[tokio::test]
async fn an_unknown_name_is_an_error() {
    let dns = TestDns::start(vec![addr("known.test", "127.0.0.1")]).await;
    let resolver = resolver_for(&dns);
    let err = resolver
        .resolve("unknown.test", None, None, false)
        .await
        .unwrap_err();
    assert!(err.contains("unknown.test"), "{err}");
    assert!(resolver
        .resolve("unknown.test", Some(5060), None, false)
        .await
        .is_err());
    // SRV whose only target is "." (RFC 2782: service not offered here).
    let dns = TestDns::start(vec![srv("_sip._udp.none.test", 0, 0, 0, ".")]).await;
    let resolver = resolver_for(&dns);
    assert!(resolver
        .resolve("none.test", None, Some(TransportKind::Udp), false)
        .await
        .is_err());
}

#[tokio::test]
async fn a_silent_name_server_times_out_instead_of_hanging() {
    // Bound but never read: queries reach it and get no answer.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let resolver =
        Resolver::new(&[silent.local_addr().unwrap()], Duration::from_millis(200)).unwrap();
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        resolver.resolve("pbx.test", None, None, false),
    )
    .await
    .expect("resolve gives up by itself");
    assert!(result.is_err(), "{result:?}");
    let named_port = tokio::time::timeout(
        Duration::from_secs(10),
        resolver.resolve("pbx.test", Some(5060), None, false),
    )
    .await
    .expect("resolve gives up by itself");
    assert!(named_port.is_err(), "{named_port:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    // Nothing bound at all: refused or timed out, but an error either way, soon.
    let port = silent.local_addr().unwrap().port();
    drop(silent);
    let resolver = Resolver::new(
        &[format!("127.0.0.1:{port}").parse().unwrap()],
        Duration::from_millis(200),
    )
    .unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        resolver.resolve("pbx.test", None, None, false),
    )
    .await
    .expect("resolve gives up by itself");
    assert!(result.is_err(), "{result:?}");
}
