//! Safe to expose: a flood of INVITEs that admission refuses — 2,000/s from one address and a
//! burst from eight more — against the real binary while a trunk places its calls. The trunk
//! loses no call, and voicegate's memory (VmRSS) is back near its pre-flood value within a
//! minute: refusals cost no call task, and what they do cost is bounded and given back.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::binary::{self, Served};
use common::*;

const NUMBER: &str = "+15550199";

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn config_file() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("vg-flood-{:x}.toml", rand::random::<u64>()));
    std::fs::write(
        &path,
        format!(
            r#"
[test_numbers]
echo = ["{NUMBER}"]

[[trunks]]
name = "acme"
whitelisted_ips = ["127.0.0.1/32"]

[[trunks.numbers]]
number = "{NUMBER}"
mode = "pstn"
"#
        ),
    )
    .unwrap();
    path
}

/// INVITEs from 127.0.0.`last`, `count` of them over about `over`.
async fn unknown_source(server: SocketAddr, last: u8, count: u32, over: Duration) {
    let socket = tokio::net::UdpSocket::bind(format!("127.0.0.{last}:0"))
        .await
        .unwrap();
    let local = socket.local_addr().unwrap();
    let pause = over / count.max(1);
    for n in 0..count {
        let branch = format!("z9hG4bKu{last}x{n}");
        let body = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\n";
        let invite = format!(
            "INVITE sip:{NUMBER}@{server} SIP/2.0\r\n\
Via: SIP/2.0/UDP {local};branch={branch}\r\n\
From: <sip:x@{local}>;tag={branch}\r\n\
To: <sip:{NUMBER}@{server}>\r\n\
Call-ID: {branch}\r\n\
CSeq: 1 INVITE\r\n\
Max-Forwards: 70\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = socket.send_to(invite.as_bytes(), server).await;
        tokio::time::sleep(pause).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_invites_fails_no_call_and_leaves_no_memory_behind() {
    let config = config_file();
    let served = Served::start(binary::command(
        &["serve", "--config", config.to_str().unwrap()],
        &binary::port_env(),
    ));
    let server = served.udp;
    let pid = served.pid();

    // Warm up: the trunk's calls, so the pre-flood figure includes a working call path.
    let out = sipp(
        server,
        &["-sn", "uac", "-s", NUMBER, "-m", "40", "-r", "20"],
    )
    .await;
    assert_sipp_ok(&out, 40);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(pid);

    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            peak
        })
    };
    let flood_started = Instant::now();
    let flood_scenario = scenario("uac_flood.xml");
    let attacker_args = [
        "-sf",
        flood_scenario.to_str().unwrap(),
        "-s",
        NUMBER,
        "-i",
        "127.0.0.2",
        "-r",
        "2000",
        "-rp",
        "1000",
        "-m",
        "20000",
    ];
    let attacker = sipp(server, &attacker_args);
    let unknown = async {
        let sources: Vec<_> = (3..=10)
            .map(|last| unknown_source(server, last, 1000, Duration::from_secs(5)))
            .collect();
        futures_util::future::join_all(sources).await;
    };
    let trunk = sipp(
        server,
        &["-sn", "uac", "-s", NUMBER, "-m", "100", "-r", "10"],
    );
    let (attacker, (), trunk) = tokio::join!(attacker, unknown, trunk);
    let flood_secs = flood_started.elapsed().as_secs_f64();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.await.unwrap();
    let (sent, _) = sipp_counts(&attacker);

    // Back within 10 % of the pre-flood value within a minute.
    let limit = before + before / 10;
    let settle_started = Instant::now();
    let mut after = rss_kib(pid);
    while after > limit && settle_started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        after = rss_kib(pid);
    }
    let settle_secs = settle_started.elapsed().as_secs_f64();
    let (_, lines, _) = served.stop();
    let log = String::from_utf8_lossy(&lines.concat()).into_owned();
    let records = log.lines().filter(|l| l.contains("voicegate::cdr")).count();
    let summaries = log
        .lines()
        .filter(|l| l.contains("voicegate::shield"))
        .count();
    let report = format!(
        "flood: sipp sent {sent} INVITEs from 127.0.0.2 and 8,000 came from 127.0.0.3..10 in \
         {flood_secs:.1} s; VmRSS before {before} KiB, peak {peak} KiB, after {after} KiB \
         ({settle_secs:.0} s after the flood); {records} call records, {summaries} shield lines"
    );
    println!("{report}");
    let _ = std::fs::remove_file(&config);
    assert_sipp_ok(&trunk, 100);
    assert!(after <= limit, "memory not given back: {report}");
    // Records for the 140 admitted calls at most, none per refusal (28,000 of them).
    assert!((100..=140).contains(&records), "{report}");
    assert!(summaries > 0, "{report}");
}
