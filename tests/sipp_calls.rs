//! Calls from SIPp, a real SIP peer, over UDP, TCP and TLS (SIPp behind socat).

mod common;

use common::*;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uac_200_calls_at_20_cps_over_udp() {
    let running = start(&test_config()).await;
    let out = sipp(
        running.local.udp.unwrap(),
        &[
            "-sn", "uac", "-s", "echo", "-m", "200", "-r", "20", "-l", "50",
        ],
    )
    .await;
    assert_sipp_ok(&out, 200);
    assert_eq!(running.core.stats.answered.load(Ordering::Relaxed), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uac_200_calls_at_20_cps_over_tcp() {
    let running = start(&test_config()).await;
    let out = sipp(
        running.local.tcp.unwrap(),
        &[
            "-sn", "uac", "-s", "echo", "-m", "200", "-r", "20", "-l", "50", "-t", "t1",
        ],
    )
    .await;
    assert_sipp_ok(&out, 200);
    assert_eq!(running.core.stats.answered.load(Ordering::Relaxed), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_before_answer_gets_487() {
    let running = start(&test_config()).await;
    let scenario = scenario("cancel.xml");
    let out = sipp(
        running.local.udp.unwrap(),
        &["-sf", scenario.to_str().unwrap(), "-s", "ring", "-m", "5"],
    )
    .await;
    assert_sipp_ok(&out, 5);
    assert_eq!(running.core.stats.cancelled.load(Ordering::Relaxed), 5);
    assert_eq!(running.core.stats.answered.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_ping_gets_200_with_allow() {
    let running = start(&test_config()).await;
    let scenario = scenario("options.xml");
    for transport in [&["-t", "u1"][..], &["-t", "t1"][..]] {
        let addr = if transport[1] == "u1" {
            running.local.udp
        } else {
            running.local.tcp
        };
        let mut args = vec!["-sf", scenario.to_str().unwrap(), "-s", "echo", "-m", "3"];
        args.extend_from_slice(transport);
        assert_sipp_ok(&sipp(addr.unwrap(), &args).await, 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmapped_number_gets_404() {
    let running = start(&test_config()).await;
    let out = sipp(
        running.local.udp.unwrap(),
        &["-sn", "uac", "-s", "+15550009999", "-m", "1"],
    )
    .await;
    assert!(!out.status.success(), "the call must fail");
    assert_eq!(running.core.stats.rejected.load(Ordering::Relaxed), 1);
    assert_eq!(running.core.stats.answered.load(Ordering::Relaxed), 0);
}

/// SIPp's Debian build has no TLS: socat terminates TCP from SIPp and speaks TLS to voicegate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_over_tls_through_socat() {
    let running = start(&test_config()).await;
    let tls = running.local.tls.unwrap();
    // socat listens on a port the kernel picks and says which (-d -d: "listening on").
    let mut socat = tokio::process::Command::new("socat")
        .args(["-d", "-d"])
        .arg("TCP-LISTEN:0,bind=127.0.0.1,reuseaddr,fork")
        .arg(format!("OPENSSL:{tls},verify=0"))
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("socat runs (install socat)");
    let mut log = tokio::io::BufReader::new(socat.stderr.take().unwrap()).lines();
    let front: std::net::SocketAddr = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = log.next_line().await.unwrap() {
            if let Some((_, addr)) = line.split_once("listening on AF=2 ") {
                return addr.trim().parse().expect("socat's listening address");
            }
        }
        panic!("socat ended without listening");
    })
    .await
    .expect("socat listens within 10 s");
    // Its per-connection notices must not fill the pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
    let out = sipp(front, &["-sn", "uac", "-s", "echo", "-m", "3", "-t", "t1"]).await;
    assert_sipp_ok(&out, 3);
    assert_eq!(running.core.stats.answered.load(Ordering::Relaxed), 3);
    let _ = socat.kill().await;
}

/// SIPp offers PCMU, then PCMA; the 200 must answer with `answer` (its m= line's formats).
async fn codec_answer_is(config: &voicegate::config::Config, answer: &str) {
    let running = start(config).await;
    let scenario = filled_scenario("uac_codec_order.xml", &[("ANSWER", answer)]);
    let out = sipp(
        running.local.udp.unwrap(),
        &["-sf", scenario.to_str().unwrap(), "-s", "echo", "-m", "1"],
    )
    .await;
    std::fs::remove_file(&scenario).ok();
    assert_sipp_ok(&out, 1);
}

/// RFC 3264 §6.1: the offer's first codec we support (PCMU), though we list PCMA first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_follows_the_offers_codec_order() {
    let config = test_config();
    assert_eq!(config.rtp.codecs, ["PCMA", "PCMU"]);
    codec_answer_is(&config, "0 101").await;
}

/// `rtp.codec_preference = "ours"`: our first codec (PCMA) that the offer has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_follows_our_codec_order_when_configured() {
    let mut config = test_config();
    config.rtp.codec_preference = "ours".into();
    codec_answer_is(&config, "8 101").await;
}
