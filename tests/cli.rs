//! The `voicegate` binary as a user runs it: help, config errors, and the README's call.

mod common;

use std::process::Command;

use common::binary::{serve, BIN};

const SHIPPED_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/voicegate.toml");

fn voicegate(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    // The machine is shared: never the default ports.
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Ephemeral-port overrides for every listener and the RTP range.
fn port_env() -> Vec<(&'static str, String)> {
    let (min, max) = common::rtp_range(100);
    vec![
        ("VOICEGATE_SIP_UDP", "127.0.0.1:0".to_string()),
        ("VOICEGATE_SIP_TCP", "127.0.0.1:0".to_string()),
        ("VOICEGATE_SIP_TLS", "127.0.0.1:0".to_string()),
        ("VOICEGATE_RTP_PORT_MIN", min.to_string()),
        ("VOICEGATE_RTP_PORT_MAX", max.to_string()),
        ("VOICEGATE_API_LISTEN", "127.0.0.1:0".to_string()),
        ("VOICEGATE_STORE_URL", "sqlite::memory:".to_string()),
    ]
}

/// Runs to completion; returns (exit code, stderr).
fn run(mut cmd: Command) -> (i32, String) {
    let out = cmd.output().expect("voicegate runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn help_explains_commands_and_flags() {
    let out = voicegate(&["--help"], &[]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("serve") && text.contains("check-config"),
        "{text}"
    );
    let out = voicegate(&["serve", "--help"], &[]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("--config") && text.contains("VOICEGATE_CONFIG"),
        "{text}"
    );
}

#[test]
fn unknown_key_stops_startup_with_one_line_naming_it() {
    let path = std::env::temp_dir().join(format!("vg-bad-{}.toml", std::process::id()));
    std::fs::write(&path, "[sip]\nudpp = \"127.0.0.1:5060\"\n").unwrap();
    let (code, stderr) = run(voicegate(
        &["serve", "--config", path.to_str().unwrap()],
        &port_env(),
    ));
    std::fs::remove_file(&path).ok();
    assert_eq!(code, 2);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("sip.udpp"), "{stderr}");
}

#[test]
fn bad_env_override_names_key_and_variable() {
    let mut env = port_env();
    env.push(("VOICEGATE_RTP_PORT_MIN", "lots".into()));
    let (code, stderr) = run(voicegate(&["serve"], &env));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("rtp.port_min") && stderr.contains("VOICEGATE_RTP_PORT_MIN"),
        "{stderr}"
    );
}

#[test]
fn port_in_use_stops_startup_naming_the_key() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut env = port_env();
    env.push(("VOICEGATE_SIP_UDP", taken.local_addr().unwrap().to_string()));
    let (code, stderr) = run(voicegate(&["serve"], &env));
    assert_eq!(code, 2);
    assert_eq!(
        stderr
            .trim()
            .lines()
            .filter(|l| !l.contains("WARN"))
            .count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("sip.udp") && stderr.contains("cannot listen"),
        "{stderr}"
    );
}

#[test]
fn unreadable_certificate_stops_startup_naming_the_key() {
    let mut env = port_env();
    env.push(("VOICEGATE_SIP_TLS_CERT", "/nonexistent/cert.pem".into()));
    env.push(("VOICEGATE_SIP_TLS_KEY", "/nonexistent/key.pem".into()));
    let (code, stderr) = run(voicegate(&["serve"], &env));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("sip.tls_cert") && stderr.contains("/nonexistent/cert.pem"),
        "{stderr}"
    );
}

/// The README's first call: start with the shipped config, `sipp -sn uac -s echo`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_call_to_the_echo_number() {
    let serving = serve(voicegate(
        &["serve", "--config", SHIPPED_CONFIG],
        &port_env(),
    ))
    .expect("voicegate starts");
    let out = common::sipp(serving.udp, &["-sn", "uac", "-s", "echo", "-m", "1"]).await;
    let status = serving.stop();
    common::assert_sipp_ok(&out, 1);
    assert!(status.success(), "exit on SIGTERM: {status:?}");
}
