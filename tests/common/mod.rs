//! Test harness: voicegate in-process on ephemeral ports, and real peers (SIPp, socat) around it.
#![allow(dead_code)]

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
    let mut cmd = tokio::process::Command::new("sipp");
    let local = free_port().to_string();
    let media = (free_port() & !1).to_string();
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
