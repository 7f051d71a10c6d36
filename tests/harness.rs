//! The test harness itself: a SIPp that loses its port to another process between our pick
//! and its own bind (as on a busy shared machine) is started again on fresh ports, and the
//! test learns the ports it finally holds.

mod common;

use std::net::UdpSocket;

use common::sipp::{lost_a_port, ports_held_by, sipp_run_on, sipp_uas_on, SippPorts};
use common::*;

/// Ports from `first`, then fresh ones: what SIPp is offered when the first pick loses a race.
fn first_then_fresh(first: SippPorts) -> impl FnMut() -> SippPorts {
    let mut first = Some(first);
    move || first.take().unwrap_or_else(SippPorts::pick)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uas_whose_sip_port_was_taken_is_started_on_another_and_answers_there() {
    // Another process took the port we picked: here, this test holds it.
    let taker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken = taker.local_addr().unwrap().port();
    let uas = sipp_uas_on(
        &uas_answer_scenario("", "", ""),
        &["-rtp_echo"],
        first_then_fresh(SippPorts {
            sip: taken,
            media: free_even_port(),
        }),
    )
    .await;
    assert_ne!(uas.port, taken, "the UAS is on a port of its own");
    let caller = sipp(
        format!("127.0.0.1:{}", uas.port).parse().unwrap(),
        &["-sn", "uac", "-m", "1"],
    )
    .await;
    assert_sipp_ok(&caller, 1);
    assert_uas_ok(&uas.finish().await, "UAS on its second port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_whose_media_port_was_taken_is_started_again_and_reports_its_ports() {
    let running = start(&test_config()).await;
    let taker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken = taker.local_addr().unwrap().port();
    let run = sipp_run_on(
        running.local.udp.unwrap(),
        &["-sn", "uac", "-s", "echo", "-m", "1"],
        first_then_fresh(SippPorts {
            sip: free_port(),
            media: taken,
        }),
    )
    .await;
    assert_sipp_ok(&run.output, 1);
    assert_ne!(
        run.ports.media, taken,
        "the run reports the media port it used"
    );
}

/// What the retry looks for: SIPp's own words when its port is taken, checked against the
/// SIPp installed here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_on_a_taken_port_is_recognised_as_a_lost_port() {
    let taker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken = taker.local_addr().unwrap().port();
    let output = tokio::process::Command::new("sipp")
        .args(["-sn", "uas", "-nostdin", "-i", "127.0.0.1", "-m", "1"])
        .args([
            "-p",
            &taken.to_string(),
            "-mp",
            &free_even_port().to_string(),
        ])
        .output()
        .await
        .expect("sipp runs (install sip-tester)");
    assert!(
        lost_a_port(&output),
        "status {:?}, stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A port being in use says nothing about who holds it; the harness asks the kernel which
/// process does.
#[test]
fn ports_held_by_lists_this_process_sockets_only() {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held = ports_held_by(std::process::id());
    assert!(held.contains(&udp.local_addr().unwrap().port()), "{held:?}");
    assert!(held.contains(&tcp.local_addr().unwrap().port()), "{held:?}");
    let mut other = std::process::Command::new("sleep")
        .arg("5")
        .spawn()
        .unwrap();
    let theirs = ports_held_by(other.id());
    let _ = other.kill();
    let _ = other.wait();
    assert!(theirs.is_empty(), "sleep holds no sockets: {theirs:?}");
}
