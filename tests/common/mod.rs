//! Test harness: voicegate in-process on ephemeral ports, and real peers (SIPp, socat) around it.
#![allow(dead_code)]

pub mod binary;
pub mod bot;
pub mod dns;
pub mod pcap;
pub mod uac;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use voicegate::config::Config;
use voicegate::server::{self, Running};

/// A config listening on 127.0.0.1 ephemeral ports, with its own RTP range.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.sip.udp = "127.0.0.1:0".into();
    config.sip.tcp = "127.0.0.1:0".into();
    config.sip.tls = "127.0.0.1:0".into();
    let (min, max) = rtp_range(400);
    config.rtp.port_min = min;
    config.rtp.port_max = max;
    config.test_numbers.echo = vec!["echo".into()];
    config.test_numbers.ringing = vec!["ring".into()];
    // Never the default API port or a database file in the working folder.
    config.api.listen = "127.0.0.1:0".into();
    config.store.url = "sqlite::memory:".into();
    config
}

pub async fn start(config: &Config) -> Running {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    server::start(config).await.expect("voicegate starts")
}

/// A random even-aligned port range of `len` ports that is free right now, away from the
/// defaults, so parallel tests and other users of the machine rarely collide (the pool skips
/// ports that are taken anyway).
pub fn rtp_range(len: u16) -> (u16, u16) {
    loop {
        let base = 21000 + (rand::random::<u16>() % 4000) * 8;
        if (base..base + len).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return (base, base + len - 1);
        }
    }
}

/// A UDP port free right now (SIPp needs its local port named).
pub fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn scenario(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/scenarios"
    ))
    .join(name)
}

/// Runs SIPp against `target` and returns its output; `args` come after the common ones.
pub async fn sipp(target: SocketAddr, args: &[&str]) -> Output {
    sipp_with_media_port(target, free_even_port(), args).await
}

/// An even UDP port with its odd neighbour free right now (SIPp's media port and RTCP).
pub fn free_even_port() -> u16 {
    loop {
        let port = free_port() & !1;
        if port > 1024
            && UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port + 1)).is_ok()
        {
            return port;
        }
    }
}

/// SIPp with its RTP (`-mp`) on `media_port`, for tests that capture what reaches it.
pub async fn sipp_with_media_port(target: SocketAddr, media_port: u16, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new("sipp");
    let local = free_port().to_string();
    let media = media_port.to_string();
    let tmp = std::env::temp_dir();
    cmd.current_dir(&tmp)
        .arg(target.to_string())
        .args([
            "-nostdin",
            "-i",
            "127.0.0.1",
            "-p",
            &local,
            "-mp",
            &media,
            "-timeout",
            "60",
            "-timeout_error",
        ])
        .args(args)
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("sipp finishes within 90 s")
        .expect("sipp runs (install sip-tester)")
}

/// The cumulative "Successful call" and "Failed call" counts from SIPp's final screen.
pub fn sipp_counts(output: &Output) -> (u64, u64) {
    let text = String::from_utf8_lossy(&output.stdout);
    let count = |label: &str| {
        text.lines()
            .rfind(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split('|').nth(2))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (count("Successful call"), count("Failed call"))
}

pub fn assert_sipp_ok(output: &Output, calls: u64) {
    let (ok, failed) = sipp_counts(output);
    assert!(
        output.status.success() && ok == calls && failed == 0,
        "sipp: status {:?}, {ok} successful, {failed} failed, expected {calls}\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One good call to the echo number; `transport` is SIPp's `-t` (u1 or t1).
pub async fn good_call(target: SocketAddr, transport: &str) {
    let out = sipp(
        target,
        &["-sn", "uac", "-s", "echo", "-m", "1", "-t", transport],
    )
    .await;
    assert_sipp_ok(&out, 1);
}

/// A tcpdump capture on the loopback interface, for looking at what really went over the wire.
pub struct Capture {
    child: tokio::process::Child,
    path: PathBuf,
}

impl Capture {
    /// Starts capturing packets that match `filter` (tcpdump syntax); returns once it listens.
    pub async fn start(filter: &str) -> Capture {
        use tokio::io::AsyncBufReadExt;
        let path =
            std::env::temp_dir().join(format!("vg-capture-{:x}.pcap", rand::random::<u64>()));
        let mut child = tokio::process::Command::new("tcpdump")
            .args(["-i", "lo", "-n", "-U", "-s", "2048", "-w"])
            .arg(&path)
            .arg(filter)
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("tcpdump runs (install tcpdump; it needs root or CAP_NET_RAW)");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let listening = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("listening on") {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(
            listening.ok(),
            Some(true),
            "tcpdump did not start capturing"
        );
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Capture { child, path }
    }

    /// Stops the capture (after a moment for the last packets) and returns its UDP datagrams.
    pub async fn finish(mut self) -> Vec<pcap::Datagram> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let bytes = std::fs::read(&self.path).expect("capture file");
        let _ = std::fs::remove_file(&self.path);
        pcap::read(&bytes)
    }
}

/// Writes a SIPp scenario from `tests/scenarios/play_pcap.xml` that offers `formats` (with
/// their `rtpmaps`) and plays each capture in turn, pausing `pause_ms` after each.
pub fn play_pcap_scenario(
    formats: &str,
    rtpmaps: &[&str],
    captures: &[(&std::path::Path, u64)],
) -> PathBuf {
    let template = std::fs::read_to_string(scenario("play_pcap.xml")).unwrap();
    let playback: String = captures
        .iter()
        .map(|(path, pause_ms)| {
            format!(
                "  <nop><action><exec play_pcap_audio=\"{}\"/></action></nop>\n  <pause milliseconds=\"{pause_ms}\"/>\n",
                path.display()
            )
        })
        .collect();
    let rtpmaps: String = rtpmaps.iter().map(|r| format!("      {r}\n")).collect();
    let text = template
        .replace("FORMATS", formats)
        .replace("RTPMAPS\n", &rtpmaps)
        .replace("  <!-- PLAYBACK -->\n", &playback);
    let path = std::env::temp_dir().join(format!("vg-play-{:x}.xml", rand::random::<u64>()));
    std::fs::write(&path, text).unwrap();
    path
}

/// A SIPp UAS (carrier, PBX or agent) on 127.0.0.1:`port` running `scenario` for one call,
/// echoing RTP (`-rtp_echo`). Started in the background; await the handle for its output.
pub async fn sipp_uas(scenario: &std::path::Path, port: u16) -> tokio::task::JoinHandle<Output> {
    sipp_uas_with(scenario, port, &["-rtp_echo"]).await
}

/// A SIPp UAS like [`sipp_uas`] with the SIPp arguments given (`-rtp_echo` only if asked:
/// two echoing ends of one relayed call would bounce every packet forever).
pub async fn sipp_uas_with(
    scenario: &std::path::Path,
    port: u16,
    extra: &[&str],
) -> tokio::task::JoinHandle<Output> {
    let mut cmd = tokio::process::Command::new("sipp");
    cmd.args(extra);
    cmd.current_dir(std::env::temp_dir())
        .arg("-sf")
        .arg(scenario)
        .args([
            "-nostdin",
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-mp",
            &free_even_port().to_string(),
            "-m",
            "1",
            "-timeout",
            "45",
            "-timeout_error",
        ])
        .kill_on_drop(true);
    let handle = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .expect("sipp UAS finishes within 60 s")
            .expect("sipp runs (install sip-tester)")
    });
    // Ready once SIPp holds its port (on a loaded machine that can take a while).
    let ready_by = std::time::Instant::now() + Duration::from_secs(10);
    let tcp = extra.contains(&"t1");
    let free = |port: u16| {
        if tcp {
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        } else {
            UdpSocket::bind(("127.0.0.1", port)).is_ok()
        }
    };
    while free(port) && std::time::Instant::now() < ready_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    handle
}

/// `tests/scenarios/uas_answer.xml` with its placeholders filled, written to a temp file.
pub fn uas_answer_scenario(invite_checks: &str, ok_headers: &str, midcall: &str) -> PathBuf {
    let text = std::fs::read_to_string(scenario("uas_answer.xml"))
        .unwrap()
        .replace("<!-- INVITE_CHECKS -->", invite_checks)
        .replace("OK_HEADERS\n", &indent_headers(ok_headers))
        .replace("<!-- MIDCALL -->", midcall);
    write_temp_scenario(&text)
}

/// `tests/scenarios/uas_reject.xml` answering `status reason`.
pub fn uas_reject_scenario(status: u16, reason: &str) -> PathBuf {
    filled_scenario(
        "uas_reject.xml",
        &[("STATUS", &status.to_string()), ("REASON", reason)],
    )
}

/// A mid-call re-INVITE step (for MIDCALL): the re-INVITE must match `check` (a regexp),
/// arrive within `timeout_ms`, and is answered with `direction` and `ok_headers`.
pub fn midcall_reinvite(check: &str, timeout_ms: u64, direction: &str, ok_headers: &str) -> String {
    std::fs::read_to_string(scenario("uas_midcall_reinvite.xml"))
        .unwrap()
        .replace("CHECK", check)
        .replace("TIMEOUT_MS", &timeout_ms.to_string())
        .replace("DIRECTION", direction)
        .replace("OK_HEADERS\n", &indent_headers(ok_headers))
}

fn indent_headers(headers: &str) -> String {
    headers
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("      {}\n", l.trim()))
        .collect()
}

/// `tests/scenarios/<name>` with each `(placeholder, value)` filled in, written to a temp file.
pub fn filled_scenario(name: &str, fills: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(scenario(name)).unwrap();
    for (placeholder, value) in fills {
        text = text.replace(placeholder, value);
    }
    write_temp_scenario(&text)
}

fn write_temp_scenario(text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("vg-scn-{:x}.xml", rand::random::<u64>()));
    std::fs::write(&path, text).unwrap();
    path
}

/// A SIPp UAS run that ended well: one successful call, exit 0.
pub fn assert_uas_ok(output: &Output, what: &str) {
    let (ok, failed) = sipp_counts(output);
    assert!(
        output.status.success() && ok == 1 && failed == 0,
        "{what}: sipp status {:?}, {ok} successful, {failed} failed\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Sends `count` PCMU packets to `target` and returns how many came back from it, with the
/// payload unchanged (both legs chose PCMU: no transcoding).
pub async fn rtp_round_trip(uac: &uac::Uac, target: SocketAddr, count: u16) -> usize {
    let mut buf = [0u8; 2048];
    let mut back = 0;
    for i in 0..count {
        let packet = uac::rtp_packet(i, 160 * u32::from(i), 0x2222, 0, (i % 100) as u8 + 1);
        uac.rtp.send_to(&packet, target).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Ok(Ok((n, from))) =
            tokio::time::timeout(Duration::from_millis(5), uac.rtp.recv_from(&mut buf)).await
        {
            assert_eq!(
                from, target,
                "RTP comes back from voicegate's port (symmetric)"
            );
            assert_eq!(buf[1] & 0x7f, 0, "PCMU");
            assert_ne!(
                u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
                0x2222,
                "under voicegate's SSRC"
            );
            assert_eq!(n, 172);
            back += 1;
        }
    }
    // The last packets' round trip.
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(300), uac.rtp.recv_from(&mut buf)).await
    {
        back += 1;
    }
    back
}

/// Every call and leg route is gone once their transactions end: Timer J (64*T1, with the
/// test's `sip.t1_ms`) and Timer K (5 s) on UDP.
pub async fn routes_drain(running: &voicegate::server::Running) {
    routes_drain_within(running, Duration::from_secs(12)).await
}

/// [`routes_drain`] with a deadline: a refused INVITE keeps its transaction for Timer D,
/// 32 s on UDP whatever T1 is.
pub async fn routes_drain_within(running: &voicegate::server::Running, wait: Duration) {
    let deadline = std::time::Instant::now() + wait;
    while running.core.active_calls() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} routes left after the calls ended",
            running.core.active_calls()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
