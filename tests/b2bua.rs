//! voicegate as a B2BUA with its media anchored: outbound calls to carriers with failover,
//! inbound calls from a carrier to a trunk's destination URIs (IP and DNS name), hold and
//! resume across both legs, and session timers. The far ends are SIPp UASes echoing RTP; the
//! PBX is a scripted UA so the SDP and RTP can be checked.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::dns::{addr, srv, TestDns};
use common::uac::{body_text, offer, Uac};
use common::*;
use voicegate::config::{CarrierConfig, Config, NumberConfig, TrunkConfig};
use voicegate_sip::message::Message;

const NUMBER: &str = "+15550100";
/// Carriers' own address: INVITEs from it are inbound calls.
const CARRIER_IP: &str = "127.0.0.2";

fn carrier(name: &str, port: u16, priority: u32) -> CarrierConfig {
    CarrierConfig {
        name: name.into(),
        uri: format!("sip:127.0.0.1:{port}"),
        priority,
        inbound_ips: vec![CARRIER_IP.into()],
        ..CarrierConfig::default()
    }
}

/// The carrier the inbound calls come from (it is never called in those tests).
fn upstream() -> CarrierConfig {
    carrier("upstream", silent_port(), 10)
}

/// A PBX trunk (127.0.0.1) with NUMBER in `pstn` mode, inbound calls to `destinations`.
fn config(carriers: Vec<CarrierConfig>, destinations: Vec<String>) -> Config {
    let mut config = test_config();
    config.trunks = vec![TrunkConfig {
        name: "pbx".into(),
        whitelisted_ips: vec!["127.0.0.1".into()],
        numbers: vec![NumberConfig {
            number: NUMBER.into(),
            mode: "pstn".into(),
            flow: String::new(),
        }],
        destinations,
        external_alias: "+15550999".into(),
        ..TrunkConfig::default()
    }];
    config.carriers = carriers;
    config.routing.attempt_timeout_secs = 2;
    config
}

fn in_rtp_range(config: &Config, target: SocketAddr) -> bool {
    (config.rtp.port_min..=config.rtp.port_max).contains(&target.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_call_relays_rtp_both_ways_through_voicegate() {
    // The carrier sees our caller ID (the trunk's external alias) and our own media address.
    let checks = r#"      <ereg regexp="From: .sip:\+15550999@" search_in="msg" check_it="true" assign_to="from_ok"/>
      <ereg regexp="Session-Expires: 1800" search_in="msg" check_it="true" assign_to="se_ok"/>
      <log message="[$from_ok] [$se_ok]"/>"#;
    let uas = sipp_uas(&uas_answer_scenario(checks, "", "")).await;
    let mut config = config(vec![carrier("a", uas.port, 10)], vec![]);
    config.sip.t1_ms = 50;
    let running = start(&config).await;
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    let ok = uac.call(NUMBER, "0 101", "").await;
    if ok.status != 200 {
        let out = uas.finish().await;
        panic!(
            "{} {}\n{}\n{}",
            ok.status,
            ok.reason,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let target = Uac::media_target(&ok);
    assert!(
        in_rtp_range(&config, target),
        "caller's RTP goes to voicegate: {target}"
    );
    let back = rtp_round_trip(&uac, target, 50).await;
    assert!(
        back >= 45,
        "{back} of 50 packets came back through both legs"
    );
    assert_eq!(uac.bye().await.status, 200);
    assert_uas_ok(&uas.finish().await, "carrier");
    routes_drain(&running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_over_tcp_gets_its_own_connection() {
    let checks = r#"      <ereg regexp="Via: SIP/2.0/TCP 127.0.0.1:[0-9]+;branch" search_in="msg" check_it="true" assign_to="via_ok"/>
      <log message="[$via_ok]"/>"#;
    let uas = sipp_uas_with(
        &uas_answer_scenario(checks, "", ""),
        &["-t", "t1", "-rtp_echo"],
    )
    .await;
    let mut tcp_carrier = carrier("tcp", uas.port, 10);
    tcp_carrier.uri = format!("sip:127.0.0.1:{};transport=tcp", uas.port);
    let config = config(vec![tcp_carrier], vec![]);
    let running = start(&config).await;
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    let ok = uac.call(NUMBER, "0 101", "").await;
    assert_eq!(ok.status, 200);
    assert!(rtp_round_trip(&uac, Uac::media_target(&ok), 20).await >= 15);
    assert_eq!(uac.bye().await.status, 200);
    assert_uas_ok(&uas.finish().await, "TCP carrier");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_503_fails_over_to_the_next_carrier() {
    let refusing = sipp_uas(&uas_reject_scenario(503, "Service Unavailable")).await;
    let answering = sipp_uas(&uas_answer_scenario("", "", "")).await;
    let config = config(
        vec![
            carrier("second", answering.port, 20),
            carrier("first", refusing.port, 10),
        ],
        vec![],
    );
    let running = start(&config).await;
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    let ok = uac.call(NUMBER, "0 101", "").await;
    assert_eq!(ok.status, 200);
    assert_uas_ok(&refusing.finish().await, "first carrier (503, ACKed)");
    let target = Uac::media_target(&ok);
    assert!(rtp_round_trip(&uac, target, 20).await >= 15);
    assert_eq!(uac.bye().await.status, 200);
    assert_uas_ok(&answering.finish().await, "second carrier");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_486_goes_back_to_the_caller() {
    let busy = sipp_uas(&uas_reject_scenario(486, "Busy Here")).await;
    // A second carrier that must not be tried: nothing answers there.
    let config = config(
        vec![
            carrier("first", busy.port, 10),
            carrier("second", silent_port(), 20),
        ],
        vec![],
    );
    let running = start(&config).await;
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    let refused = uac.call(NUMBER, "0 101", "").await;
    assert_eq!(refused.status, 486);
    assert_eq!(refused.reason, "Busy Here");
    assert_uas_ok(&busy.finish().await, "busy carrier");
}

/// A call voicegate would relay uses up a hop: with Max-Forwards 0 it gets 483 (RFC 3261
/// §16.3) at once, and no carrier is tried (this one would never answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_forwards_zero_on_a_relayed_call_gets_483() {
    let running = start(&config(vec![upstream()], vec![])).await;
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    let invite = uac
        .request_text("INVITE", &offer(uac.rtp_port(), "0", "sendrecv"))
        .replace("sip:echo@", &format!("sip:{NUMBER}@"))
        .replace("Max-Forwards: 70\r\n", "Max-Forwards: 0\r\n");
    uac.send(&invite).await;
    let refused = uac.final_response().await;
    assert_eq!(
        (refused.status, refused.reason.as_str()),
        (483, "Too Many Hops")
    );
    uac.ack_failure().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_carrier_is_skipped_after_the_attempt_timeout() {
    let answering = sipp_uas(&uas_answer_scenario("", "", "")).await;
    let config = config(
        vec![
            carrier("silent", silent_port(), 10),
            carrier("b", answering.port, 20),
        ],
        vec![],
    );
    let running = start(&config).await;
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    let started = std::time::Instant::now();
    let invite = uac
        .request_text("INVITE", &offer(uac.rtp_port(), "0 101", "sendrecv"))
        .replace("sip:echo@", &format!("sip:{NUMBER}@"));
    uac.send(&invite).await;
    let ok = loop {
        match uac.recv(Duration::from_secs(8)).await {
            Some(Message::Response(r)) if r.status >= 200 => break r,
            Some(_) => continue,
            None => panic!("no final response"),
        }
    };
    assert_eq!(ok.status, 200);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited for the first carrier"
    );
    uac.to_tag = ok
        .headers
        .get("To")
        .and_then(voicegate_sip::message::tag_param)
        .map(str::to_string);
    uac.ack("").await;
    assert_eq!(uac.bye().await.status, 200);
    assert_uas_ok(&answering.finish().await, "second carrier");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_call_reaches_the_trunk_destination() {
    let checks = r#"      <ereg regexp="INVITE sip:\+15550100@127.0.0.1" search_in="msg" check_it="true" assign_to="ruri_ok"/>
      <log message="[$ruri_ok]"/>"#;
    let pbx = sipp_uas(&uas_answer_scenario(checks, "", "")).await;
    let config = config(vec![upstream()], vec![format!("127.0.0.1:{}", pbx.port)]);
    let running = start(&config).await;
    let mut carrier = Uac::from_ip(running.local.udp.unwrap(), CARRIER_IP).await;
    let ok = carrier.call(NUMBER, "0 101", "").await;
    assert_eq!(ok.status, 200);
    let target = Uac::media_target(&ok);
    assert!(in_rtp_range(&config, target));
    assert!(rtp_round_trip(&carrier, target, 30).await >= 25);
    assert_eq!(carrier.bye().await.status, 200);
    assert_uas_ok(&pbx.finish().await, "PBX");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_call_to_a_dns_name_uses_srv_then_a() {
    let pbx = sipp_uas(&uas_answer_scenario("", "", "")).await;
    let dns = TestDns::start(vec![
        srv(
            "_sip._udp.pbx.acme.test",
            10,
            1,
            pbx.port,
            "host1.acme.test",
        ),
        addr("host1.acme.test", "127.0.0.1"),
    ])
    .await;
    let mut config = config(vec![upstream()], vec!["pbx.acme.test".into()]);
    config.routing.dns_servers = vec![dns.addr.to_string()];
    let running = start(&config).await;
    let mut carrier = Uac::from_ip(running.local.udp.unwrap(), CARRIER_IP).await;
    let ok = carrier.call(NUMBER, "0 101", "").await;
    assert_eq!(ok.status, 200);
    assert!(rtp_round_trip(&carrier, Uac::media_target(&ok), 20).await >= 15);
    assert_eq!(carrier.bye().await.status, 200);
    assert_uas_ok(&pbx.finish().await, "PBX found through SRV");
    let queries = dns.queries();
    assert!(
        queries
            .iter()
            .any(|(name, _)| name.starts_with("_sip._udp.pbx.acme.test")),
        "SRV asked: {queries:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_call_fails_over_between_destinations() {
    let refusing = sipp_uas(&uas_reject_scenario(503, "Service Unavailable")).await;
    let answering = sipp_uas(&uas_answer_scenario("", "", "")).await;
    let config = config(
        vec![upstream()],
        vec![
            format!("127.0.0.1:{}", refusing.port),
            format!("127.0.0.1:{}", answering.port),
        ],
    );
    let running = start(&config).await;
    let mut carrier = Uac::from_ip(running.local.udp.unwrap(), CARRIER_IP).await;
    let ok = carrier.call(NUMBER, "0 101", "").await;
    assert_eq!(ok.status, 200);
    assert_uas_ok(&refusing.finish().await, "first destination");
    assert_eq!(carrier.bye().await.status, 200);
    assert_uas_ok(&answering.finish().await, "second destination");
}

/// A re-INVITE of the caller's, and its final answer (ACKed).
async fn reinvite(uac: &mut Uac, direction: &str) -> voicegate_sip::message::Response {
    uac.invite(&offer(uac.rtp_port(), "0 101", direction)).await;
    let response = uac.final_response().await;
    uac.ack("").await;
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_and_resume_cross_the_b2bua() {
    let midcall = format!(
        "{}{}",
        midcall_reinvite("a=sendonly", 10_000, "recvonly", ""),
        midcall_reinvite("a=sendrecv", 10_000, "sendrecv", "")
    );
    let uas = sipp_uas(&uas_answer_scenario("", "", &midcall)).await;
    let config = config(vec![carrier("a", uas.port, 10)], vec![]);
    let running = start(&config).await;
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    let ok = uac.call(NUMBER, "0 101", "").await;
    assert_eq!(ok.status, 200);
    let hold = reinvite(&mut uac, "sendonly").await;
    assert_eq!(hold.status, 200);
    assert!(
        body_text(&hold).contains("a=recvonly"),
        "{}",
        body_text(&hold)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resume = reinvite(&mut uac, "sendrecv").await;
    assert_eq!(resume.status, 200);
    assert!(body_text(&resume).contains("a=sendrecv"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        rtp_round_trip(&uac, Uac::media_target(&ok), 20).await >= 15,
        "audio after resume"
    );
    assert_eq!(uac.bye().await.status, 200);
    assert_uas_ok(&uas.finish().await, "carrier saw hold and resume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_timer_refresh_is_sent_to_the_carrier() {
    // The carrier asks us to refresh every 4 s: a re-INVITE must come within about 2 s.
    let headers = "Session-Expires: 4;refresher=uac\nRequire: timer";
    let midcall = midcall_reinvite("Session-Expires: 4", 3_500, "sendrecv", headers);
    let uas = sipp_uas(&uas_answer_scenario("", headers, &midcall)).await;
    let config = config(vec![carrier("a", uas.port, 10)], vec![]);
    let running = start(&config).await;
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    let ok = uac.call(NUMBER, "0 101", "Supported: timer\r\n").await;
    assert_eq!(ok.status, 200);
    // The caller's own leg got a session timer it refreshes (we never refresh callers).
    assert!(
        ok.headers
            .get("Session-Expires")
            .is_some_and(|v| v.contains("refresher=uac")),
        "{:?}",
        ok.headers.get("Session-Expires")
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(uac.bye().await.status, 200);
    assert_uas_ok(&uas.finish().await, "carrier got the refresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_small_session_interval_gets_422() {
    let config = config(vec![carrier("a", silent_port(), 10)], vec![]);
    let running = start(&config).await;
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    let refused = uac
        .call(
            NUMBER,
            "0 101",
            "Supported: timer\r\nSession-Expires: 30\r\n",
        )
        .await;
    assert_eq!(refused.status, 422);
    assert_eq!(refused.headers.get("Min-SE"), Some("90"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_cancel_reaches_the_carrier() {
    // A carrier that rings and never answers until cancelled.
    let uas = sipp_uas(&scenario("uas_ring_cancel.xml")).await;
    let config = config(vec![carrier("a", uas.port, 10)], vec![]);
    let running = start(&config).await;
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    let invite = uac
        .request_text("INVITE", &offer(uac.rtp_port(), "0 101", "sendrecv"))
        .replace("sip:echo@", &format!("sip:{NUMBER}@"));
    uac.send(&invite).await;
    // Wait for the ringing relayed from the carrier.
    loop {
        match uac.recv(Duration::from_secs(5)).await {
            Some(Message::Response(r)) if r.status == 180 => break,
            Some(_) => continue,
            None => panic!("no 180 relayed"),
        }
    }
    let _ = running;
    assert_eq!(uac.cancel().await.status, 200);
    assert_eq!(uac.final_response().await.status, 487);
    uac.ack_failure().await;
    assert_uas_ok(&uas.finish().await, "carrier got the CANCEL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbx_refer_transfers_the_caller() {
    // The target first: the PBX's scenario names its port.
    let target = sipp_uas(&uas_answer_scenario("", "", "")).await;
    let refer_to = format!("sip:+15550123@127.0.0.1:{}", target.port);
    let pbx = sipp_uas(&filled_scenario(
        "uas_refer.xml",
        &[("REFER_TO", &refer_to)],
    ))
    .await;
    let mut config = config(vec![upstream()], vec![format!("127.0.0.1:{}", pbx.port)]);
    config.sip.t1_ms = 50;
    let running = start(&config).await;
    let voicegate = running.local.udp.unwrap();
    let mut carrier = Uac::from_ip(voicegate, CARRIER_IP).await;
    let ok = carrier.call(NUMBER, "0 101", "").await;
    assert_eq!(ok.status, 200);
    // The PBX transfers, hears 100 and 200 by NOTIFY, and is hung up.
    assert_uas_ok(&pbx.finish().await, "transferring PBX");
    // The caller now talks to the transfer target, on the same voicegate port.
    assert!(rtp_round_trip(&carrier, Uac::media_target(&ok), 30).await >= 25);
    assert_eq!(carrier.bye().await.status, 200);
    assert_uas_ok(&target.finish().await, "transfer target");
    routes_drain(&running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_media_is_passed_through_before_the_answer() {
    let early = filled_scenario("uas_early_media.xml", &[("EARLY_MS", "2500")]);
    let uas = sipp_uas(&early).await;
    let config = config(vec![carrier("a", uas.port, 10)], vec![]);
    let running = start(&config).await;
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    let invite = uac
        .request_text("INVITE", &offer(uac.rtp_port(), "0 101", "sendrecv"))
        .replace("sip:echo@", &format!("sip:{NUMBER}@"));
    uac.send(&invite).await;
    let progress = loop {
        match uac.recv(Duration::from_secs(5)).await {
            Some(Message::Response(r)) if r.status == 183 => break r,
            Some(Message::Response(r)) if r.status >= 200 => panic!("{} before 183", r.status),
            Some(_) => continue,
            None => panic!("no 183"),
        }
    };
    let target = Uac::media_target(&progress);
    // Before the answer, the carrier's early media (its echo) reaches the caller.
    let back = rtp_round_trip(&uac, target, 25).await;
    assert!(back >= 20, "{back} of 25 packets of early media");
    let ok = uac.final_response().await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        Uac::media_target(&ok),
        target,
        "same media address in 183 and 200"
    );
    uac.ack("").await;
    assert_eq!(uac.bye().await.status, 200);
    assert_uas_ok(&uas.finish().await, "carrier with early media");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_session_refresh_ends_both_legs() {
    let headers = "Session-Expires: 4;refresher=uac\nRequire: timer";
    // The refresh gets 481: the carrier has lost the dialog. voicegate then hangs up both legs.
    let midcall = r#"  <recv request="INVITE" timeout="3500"/>
  <send>
    <![CDATA[

      SIP/2.0 481 Call/Transaction Does Not Exist
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
  <recv request="ACK"/>"#;
    let uas = sipp_uas(&uas_answer_scenario("", headers, midcall)).await;
    let config = config(vec![carrier("a", uas.port, 10)], vec![]);
    let running = start(&config).await;
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    let ok = uac.call(NUMBER, "0 101", "").await;
    assert_eq!(ok.status, 200);
    let bye = loop {
        match uac.recv(Duration::from_secs(6)).await {
            Some(Message::Request(r)) if r.method == "BYE" => break r,
            Some(_) => continue,
            None => panic!("no BYE after the failed refresh"),
        }
    };
    assert!(
        bye.headers
            .get("Reason")
            .is_some_and(|r| r.contains("refresh")),
        "{:?}",
        bye.headers.get("Reason")
    );
    uac.reply(&bye, 200).await;
    assert_uas_ok(
        &uas.finish().await,
        "carrier that lost the dialog (and got our BYE)",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_challenge_is_answered_with_its_credentials() {
    let auth = filled_scenario(
        "uas_auth.xml",
        &[("USER", "vg-account"), ("PASSWORD", "carrier-secret")],
    );
    let uas = sipp_uas(&auth).await;
    let mut with_credentials = carrier("a", uas.port, 10);
    with_credentials.username = "vg-account".into();
    with_credentials.password = "carrier-secret".into();
    let config = config(vec![with_credentials], vec![]);
    let running = start(&config).await;
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    let ok = uac.call(NUMBER, "0 101", "").await;
    assert_eq!(ok.status, 200, "{} {}", ok.status, ok.reason);
    assert_eq!(uac.bye().await.status, 200);
    assert_uas_ok(&uas.finish().await, "challenging carrier");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_hang_up_reaches_the_caller() {
    let uas = sipp_uas(&scenario("uas_hangup.xml")).await;
    let config = config(vec![carrier("a", uas.port, 10)], vec![]);
    let running = start(&config).await;
    let voicegate = running.local.udp.unwrap();
    let mut uac = Uac::new(voicegate).await;
    assert_eq!(uac.call(NUMBER, "0 101", "").await.status, 200);
    let bye = loop {
        match uac.recv(Duration::from_secs(5)).await {
            Some(Message::Request(r)) if r.method == "BYE" => break r,
            Some(_) => continue,
            None => panic!("the carrier's BYE did not reach the caller"),
        }
    };
    assert_eq!(
        bye.headers.get("Reason"),
        Some("Q.850;cause=16;text=\"callee hung up\""),
        "the other leg's Reason is passed on"
    );
    uac.reply(&bye, 200).await;
    assert_uas_ok(&uas.finish().await, "carrier that hung up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_call_to_a_flow_number_reaches_the_bot() {
    let (bot_addr, mut bots) = common::bot::bot_server().await;
    let mut config = config(vec![upstream()], vec![]);
    config.flows = vec![voicegate::config::FlowConfig {
        name: "ivr".into(),
        url: format!("ws://{bot_addr}/stream"),
        ..Default::default()
    }];
    config.trunks[0].numbers.push(NumberConfig {
        number: "+15550111".into(),
        mode: "flow".into(),
        flow: "ivr".into(),
    });
    let running = start(&config).await;
    let mut carrier = Uac::from_ip(running.local.udp.unwrap(), CARRIER_IP).await;
    let ok = carrier.call("+15550111", "8 101", "").await;
    assert_eq!(ok.status, 200);
    let mut bot = common::bot::next_bot(&mut bots).await;
    let (_, (_, start)) = bot.until("start", Duration::from_secs(5)).await;
    assert_eq!(start["start"]["to"], "+15550111");
    assert_eq!(carrier.bye().await.status, 200);
}

/// The re-INVITE voicegate sends the caller, answered with `direction`; returns its SDP.
async fn answer_reinvite(uac: &Uac, direction: &str) -> String {
    let reinvite = loop {
        match uac.recv(Duration::from_secs(5)).await {
            Some(Message::Request(r)) if r.method == "INVITE" => break r,
            Some(_) => continue,
            None => panic!("no re-INVITE reached the caller"),
        }
    };
    let sdp = String::from_utf8_lossy(&reinvite.body).to_string();
    let answer = reinvite
        .response(200, "OK")
        .header(
            "Contact",
            format!("<sip:tester@{}>", uac.sip.local_addr().unwrap()),
        )
        .with_body("application/sdp", offer(uac.rtp_port(), "0 101", direction));
    uac.sip
        .send_to(&answer.to_bytes(), uac.server)
        .await
        .unwrap();
    loop {
        match uac.recv(Duration::from_secs(5)).await {
            Some(Message::Request(r)) if r.method == "ACK" => return sdp,
            Some(_) => continue,
            None => panic!("no ACK for the caller's 200"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_from_the_carrier_reaches_the_caller() {
    let uas = sipp_uas(&scenario("uas_hold.xml")).await;
    let config = config(vec![carrier("a", uas.port, 10)], vec![]);
    let running = start(&config).await;
    let voicegate = running.local.udp.unwrap();
    let mut uac = Uac::new(voicegate).await;
    let ok = uac.call(NUMBER, "0 101", "").await;
    assert_eq!(ok.status, 200);
    let held = answer_reinvite(&uac, "recvonly").await;
    assert!(
        held.contains("a=sendonly"),
        "hold offered to the caller: {held}"
    );
    let resumed = answer_reinvite(&uac, "sendrecv").await;
    assert!(
        resumed.contains("a=sendrecv"),
        "resume offered to the caller: {resumed}"
    );
    assert!(
        rtp_round_trip(&uac, Uac::media_target(&ok), 20).await >= 15,
        "audio after resume"
    );
    assert_eq!(uac.bye().await.status, 200);
    assert_uas_ok(&uas.finish().await, "carrier that held and resumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_pbx_audio_crosses_voicegate_both_ways_on_the_wire() {
    const G711A_PCAP: &str = "/usr/share/sip-tester/g711a.pcap";
    let carrier_uas = sipp_uas(&uas_answer_scenario("", "", "")).await;
    let config = config(vec![carrier("a", carrier_uas.port, 10)], vec![]);
    let (rtp_min, rtp_max) = (config.rtp.port_min, config.rtp.port_max);
    let running = start(&config).await;
    let tap = Capture::start(&format!("udp and portrange {rtp_min}-{rtp_max}")).await;
    // The PBX (SIPp) plays a real PCMA capture; the carrier (SIPp, PCMU) echoes it.
    let scenario = play_pcap_scenario(
        "8 101",
        &["a=rtpmap:8 PCMA/8000", "a=rtpmap:101 telephone-event/8000"],
        &[(std::path::Path::new(G711A_PCAP), 8000)],
    );
    let pbx = sipp_run(
        running.local.udp.unwrap(),
        &["-sf", scenario.to_str().unwrap(), "-s", NUMBER, "-m", "1"],
    )
    .await;
    let _ = std::fs::remove_file(&scenario);
    assert_sipp_ok(&pbx.output, 1);
    assert_uas_ok(&carrier_uas.finish().await, "carrier");
    let pbx_media = pbx.ports.media;
    let ours = |port: u16| (rtp_min..=rtp_max).contains(&port);
    let rtp: Vec<_> = tap
        .finish()
        .await
        .into_iter()
        // RTP only: version 2, not an RTCP packet type (200-204).
        .filter(|d| d.payload.len() >= 12 && d.payload[0] >> 6 == 2)
        .filter(|d| !(200..=204).contains(&d.payload[1]))
        .collect();
    let count = |f: &dyn Fn(&common::pcap::Datagram) -> bool| rtp.iter().filter(|d| f(d)).count();
    let pbx_to_us = count(&|d| d.src_port == pbx_media && ours(d.dst_port));
    let us_to_pbx = count(&|d| ours(d.src_port) && d.dst_port == pbx_media);
    let us_to_carrier =
        count(&|d| ours(d.src_port) && d.dst_port != pbx_media && !ours(d.dst_port));
    let carrier_to_us =
        count(&|d| d.src_port != pbx_media && !ours(d.src_port) && ours(d.dst_port));
    let legs = format!(
        "PBX→voicegate {pbx_to_us}, voicegate→carrier {us_to_carrier}, \
         carrier→voicegate {carrier_to_us}, voicegate→PBX {us_to_pbx}"
    );
    eprintln!("{legs}");
    // g711a.pcap holds 236 audio packets; allow a few for the edges of the call.
    for n in [pbx_to_us, us_to_carrier, carrier_to_us, us_to_pbx] {
        assert!(n >= 220, "RTP through voicegate's ports both ways: {legs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc4733_digits_cross_the_relay() {
    let uas = sipp_uas(&uas_answer_scenario("", "", "")).await;
    let config = config(vec![carrier("a", uas.port, 10)], vec![]);
    let running = start(&config).await;
    let mut events = running.core.events.subscribe();
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    let ok = uac.call(NUMBER, "0 101", "").await;
    assert_eq!(ok.status, 200);
    let target = Uac::media_target(&ok);
    // Digit 7: three updates and three copies of the end packet, one timestamp.
    let mut sent = 0;
    for (i, (end, duration)) in [
        (false, 160u16),
        (false, 320),
        (false, 480),
        (true, 640),
        (true, 640),
        (true, 640),
    ]
    .into_iter()
    .enumerate()
    {
        let mut packet = vec![0x80, if i == 0 { 0x80 | 101 } else { 101 }];
        packet.extend_from_slice(&(100 + i as u16).to_be_bytes());
        packet.extend_from_slice(&16000u32.to_be_bytes());
        packet.extend_from_slice(&0x3333u32.to_be_bytes());
        packet.extend_from_slice(&[7, if end { 0x80 | 10 } else { 10 }]);
        packet.extend_from_slice(&duration.to_be_bytes());
        uac.rtp.send_to(&packet, target).await.unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The carrier echoes them: they come back through both legs as telephone-event.
    let mut buf = [0u8; 2048];
    let mut events_back = 0;
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(500), uac.rtp.recv_from(&mut buf)).await
    {
        if buf[1] & 0x7f == 101 && n == 16 && buf[12] == 7 {
            events_back += 1;
        }
    }
    assert!(
        events_back >= sent - 1,
        "{events_back} of {sent} event packets came back"
    );
    let digit = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Ok(voicegate::core::CallEvent::Dtmf { digit, .. }) = events.recv().await {
                return digit;
            }
        }
    })
    .await
    .expect("the caller's digit is reported");
    assert_eq!(digit, '7');
    assert_eq!(uac.bye().await.status, 200);
    assert_uas_ok(&uas.finish().await, "carrier");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_refer_hands_the_call_to_the_target() {
    const G711A_PCAP: &str = "/usr/share/sip-tester/g711a.pcap";
    let carrier_uas = sipp_uas(&uas_answer_scenario("", "", "")).await;
    // The target answers with PCMA, plays a capture to the carrier (which echoes it), then
    // hangs up.
    let play = format!(
        "  <nop><action><exec play_pcap_audio=\"{G711A_PCAP}\"/></action></nop>\n  <pause milliseconds=\"9000\"/>"
    );
    let target_scenario = filled_scenario(
        "uas_hangup.xml",
        &[
            ("RTP/AVP 0 101", "RTP/AVP 8 101"),
            ("a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000"),
            ("  <pause milliseconds=\"1000\"/>", &play),
        ],
    );
    let target = sipp_uas_with(&target_scenario, &[]).await;
    let target_port = target.port;
    let mut config = config(vec![carrier("a", carrier_uas.port, 10)], vec![]);
    config.sip.t1_ms = 50;
    let (rtp_min, rtp_max) = (config.rtp.port_min, config.rtp.port_max);
    let running = start(&config).await;
    let voicegate = running.local.udp.unwrap();
    let tap = Capture::start(&format!("udp and portrange {rtp_min}-{rtp_max}")).await;

    let mut uac = Uac::new(voicegate).await;
    let ok = uac.call(NUMBER, "0 101", "").await;
    assert_eq!(ok.status, 200);
    let refer = uac.request_text("REFER", "").replace(
        "Max-Forwards: 70\r\n",
        &format!("Max-Forwards: 70\r\nRefer-To: <sip:+15550123@127.0.0.1:{target_port}>\r\n"),
    );
    uac.cseq += 1;
    uac.send(&refer).await;
    // 202, NOTIFY 100 Trying, NOTIFY 200 OK (subscription over), then our BYE.
    let mut seen = Vec::new();
    loop {
        match uac.recv(Duration::from_secs(8)).await {
            Some(Message::Response(r)) if r.cseq().1 == "REFER" => seen.push(r.status.to_string()),
            Some(Message::Request(r)) if r.method == "NOTIFY" => {
                let frag = String::from_utf8_lossy(&r.body).trim().to_string();
                let state = r
                    .headers
                    .get("Subscription-State")
                    .unwrap_or_default()
                    .to_string();
                seen.push(format!("NOTIFY {frag} ({state})"));
                uac.reply(&r, 200).await;
            }
            Some(Message::Request(r)) if r.method == "BYE" => {
                seen.push("BYE".into());
                uac.reply(&r, 200).await;
                break;
            }
            Some(_) => continue,
            None => panic!("transfer stalled after {seen:?}"),
        }
    }
    assert_eq!(
        seen,
        [
            "202",
            "NOTIFY SIP/2.0 100 Trying (active;expires=60)",
            "NOTIFY SIP/2.0 200 OK (terminated;reason=noresource)",
            "BYE"
        ]
    );
    // The target hangs up after its audio (g711a.pcap: 236 packets over about 8 s); the
    // carrier then gets our BYE.
    assert_uas_ok(&target.finish().await, "transfer target");
    assert_uas_ok(&carrier_uas.finish().await, "carrier");
    // On the wire: the target's audio reached the carrier through voicegate and the
    // carrier's echo came back to the target, after the caller had left.
    let ours = |port: u16| (rtp_min..=rtp_max).contains(&port);
    let caller_rtp = uac.rtp_port();
    let mut by_remote: std::collections::HashMap<u16, (usize, usize)> = Default::default();
    for d in tap.finish().await {
        if d.payload.len() < 12 || d.payload[0] >> 6 != 2 || (200..=204).contains(&d.payload[1]) {
            continue;
        }
        if ours(d.src_port) && !ours(d.dst_port) && d.dst_port != caller_rtp {
            by_remote.entry(d.dst_port).or_default().0 += 1;
        } else if ours(d.dst_port) && !ours(d.src_port) && d.src_port != caller_rtp {
            by_remote.entry(d.src_port).or_default().1 += 1;
        }
    }
    eprintln!("RTP by remote port (from voicegate, to voicegate): {by_remote:?}");
    let busy: Vec<_> = by_remote
        .values()
        .filter(|(to, from)| *to >= 220 && *from >= 220)
        .collect();
    assert_eq!(busy.len(), 2, "carrier and target both ways: {by_remote:?}");
    routes_drain(&running).await;
}
