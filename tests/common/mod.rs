//! Test harness: voicegate in-process on ephemeral ports, and real peers (SIPp, socat) around it.
#![allow(dead_code)]

pub mod binary;
pub mod bot;
pub mod dns;
pub mod pcap;
pub mod sipp;
pub mod uac;

pub use sipp::{sipp_run, sipp_uas_with, SippUas};

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
/// defaults and below the kernel's ephemeral range (where [`free_port`] and every bind to port
/// 0 land, SIPp's ports among them), so parallel tests and other users of the machine rarely
/// collide (the pool skips ports that are taken anyway).
pub fn rtp_range(len: u16) -> (u16, u16) {
    const LOWEST: u16 = 21000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let bases = (ephemeral_start.saturating_sub(LOWEST + len) / 8).max(1);
    loop {
        let base = LOWEST + (rand::random::<u16>() % bases) * 8;
        if (base..base + len).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return (base, base + len - 1);
        }
    }
}

/// A UDP port free right now, and maybe not a moment later: what another process is told to
/// bind goes through [`sipp::launch`], which copes with losing it.
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
    sipp_run(target, args).await.output
}

/// An even UDP port with the next two free right now: SIPp's audio RTP port (`-mp`), RTCP
/// beside it, and SIPp's video RTP port two up.
pub fn free_even_port() -> u16 {
    loop {
        let port = free_port() & !1;
        if port > 1024
            && port < u16::MAX - 2
            && (port..=port + 2).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok())
        {
            return port;
        }
    }
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

/// A SIPp UAS (carrier, PBX or agent) running `scenario` for one call, echoing RTP
/// (`-rtp_echo`), on a port it holds (`.port`). Await `.finish()` for its output.
pub async fn sipp_uas(scenario: &std::path::Path) -> SippUas {
    sipp_uas_with(scenario, &["-rtp_echo"]).await
}

/// A UDP port on 127.0.0.1 that never answers, held by this test process so that no other
/// process can take it: the address of a next hop that is down (or must not be tried).
pub fn silent_port() -> u16 {
    static SILENT: std::sync::OnceLock<UdpSocket> = std::sync::OnceLock::new();
    SILENT
        .get_or_init(|| UdpSocket::bind("127.0.0.1:0").expect("bind a silent UDP port"))
        .local_addr()
        .unwrap()
        .port()
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
