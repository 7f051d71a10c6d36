//! The `voicegate` binary as a user runs it: help, config errors, its log output, and the
//! README's call.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::binary::{command as voicegate, port_env, Served};

const SHIPPED_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/voicegate.toml");

/// Runs a command expected to stop by itself; returns (exit code, stderr). One still running
/// after 20 s (start-up went ahead) is killed and the test fails, rather than hanging.
fn run(mut cmd: Command) -> (i32, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("voicegate runs");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after 20 s:\n{}", reader.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code().unwrap_or(-1), reader.join().unwrap())
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
    let served = Served::start(voicegate(
        &["serve", "--config", SHIPPED_CONFIG],
        &port_env(),
    ));
    let out = common::sipp(served.udp, &["-sn", "uac", "-s", "echo", "-m", "1"]).await;
    // Ask it to stop the way an init system does, and expect a clean exit.
    let (status, _, _) = served.stop();
    common::assert_sipp_ok(&out, 1);
    assert!(status.success(), "exit on SIGTERM: {status:?}");
}

/// `serve` on free ports with stderr and stdout piped, as under systemd or `2>file`, at
/// info level in `format` (the default when None).
fn serve_piped(format: Option<&str>) -> (Served, std::net::SocketAddr) {
    let mut cmd = voicegate(&["serve"], &port_env());
    cmd.env("VOICEGATE_LOG_LEVEL", "info");
    match format {
        Some(format) => cmd.env("VOICEGATE_LOG_FORMAT", format),
        None => cmd.env_remove("VOICEGATE_LOG_FORMAT"),
    };
    // Whatever the test runner's environment says: the default is what is under test.
    cmd.env_remove("NO_COLOR");
    let served = Served::start(cmd);
    let udp = served.udp;
    (served, udp)
}

#[test]
fn text_log_to_a_pipe_has_no_colour_codes() {
    let (served, _) = serve_piped(None);
    let (status, stderr, stdout) = served.stop();
    assert!(status.success(), "exit on SIGTERM: {status:?}");
    let text = String::from_utf8_lossy(&stderr.concat()).into_owned();
    assert!(
        !stderr.concat().contains(&0x1b) && !stdout.contains(&0x1b),
        "ESC in piped output: {text:?}"
    );
    let started = text
        .lines()
        .find(|l| l.contains("voicegate started"))
        .expect("the start-up line");
    assert!(started.contains(" INFO voicegate: "), "{started}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_is_one_object_per_line() {
    let (mut served, udp) = serve_piped(Some("json"));
    common::good_call(udp, "u1").await;
    let cdr = served.wait_for("voicegate::cdr", Duration::from_secs(10));
    let (status, stderr, _) = served.stop();
    assert!(status.success(), "exit on SIGTERM: {status:?}");
    let text = String::from_utf8_lossy(&stderr.concat()).into_owned();
    assert!(cdr.is_some(), "no call record: {text}");
    let mut record = None;
    for line in &stderr {
        let event: serde_json::Value = serde_json::from_slice(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(line)));
        for (key, value) in [
            ("level", &event["level"]),
            ("message", &event["fields"]["message"]),
            ("target", &event["target"]),
        ] {
            assert!(value.is_string(), "no {key} in {event}");
        }
        if event["target"] == "voicegate::cdr" {
            record = Some(event);
        }
    }
    assert!(text.contains("voicegate started"), "{text}");
    // The call record's figures stay numbers, for whatever reads them.
    let record = record.unwrap();
    assert_eq!(record["level"], "INFO");
    assert_eq!(record["fields"]["message"], "call ended");
    assert_eq!(record["fields"]["status"], 200);
    assert!(record["fields"]["rtp_lost"].is_u64(), "{record}");
}

#[test]
fn unknown_log_format_stops_startup_naming_the_key() {
    let mut env = port_env();
    env.push(("VOICEGATE_LOG_FORMAT", "xml".into()));
    let (code, stderr) = run(voicegate(&["serve"], &env));
    assert_eq!(code, 2);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("log.format") && stderr.contains("xml"),
        "{stderr}"
    );
}

/// Killed with calls up (issue 11, item 11): the next start writes the record of each call the
/// store knew to be up, with the end cause "interrupted", and only of those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_kill_closes_out_the_calls_that_were_up() {
    let dir = std::env::temp_dir().join(format!("vg-crash-{:x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut env = port_env();
    env.retain(|(key, _)| *key != "VOICEGATE_STORE_URL");
    env.push((
        "VOICEGATE_STORE_URL",
        format!("sqlite://{}", dir.join("voicegate.db").display()),
    ));
    env.push(("VOICEGATE_STORE_NODE", "crash-test".into()));
    let config = ["serve", "--config", SHIPPED_CONFIG];

    let mut served = Served::start(voicegate(&config, &env));
    // One call that ends normally, one still up when the process is killed.
    let mut ended = common::uac::Uac::new(served.udp).await;
    assert_eq!(ended.call("echo", "0", "").await.status, 200);
    assert_eq!(ended.bye().await.status, 200);
    let mut up = common::uac::Uac::new(served.udp).await;
    let response = up.call("echo", "0", "").await;
    assert_eq!(response.status, 200);
    let up_call_id = response.headers.get("Call-ID").unwrap().to_string();
    let ended_call_id = ended.call_id.clone();
    assert!(
        served
            .wait_for(&ended_call_id, Duration::from_secs(5))
            .is_some_and(|l| l.contains("call ended")),
        "no record for the ended call: {}",
        served.stderr_text()
    );
    // The store is written in the background: give it a moment, as a real crash would not.
    tokio::time::sleep(Duration::from_millis(500)).await;
    served.kill();

    let mut restarted = Served::start(voicegate(&config, &env));
    let text = restarted.stderr_text();
    let record = text
        .lines()
        .find(|l| l.contains("voicegate::cdr"))
        .unwrap_or_else(|| panic!("no close-out record on restart: {text}"));
    assert!(record.contains(&up_call_id), "{record}");
    assert!(record.contains("end=\"interrupted\""), "{record}");
    assert!(record.contains("status=200"), "{record}");
    assert_eq!(
        text.matches("voicegate::cdr").count(),
        1,
        "only the call that was up: {text}"
    );
    assert!(
        text.contains("closed out as interrupted"),
        "a warning says what happened: {text}"
    );
    // Closed out once: a second restart has nothing left.
    restarted.kill();
    let again = Served::start(voicegate(&config, &env));
    assert!(
        !again.stderr_text().contains("voicegate::cdr"),
        "{}",
        again.stderr_text()
    );
    drop(again);
    let _ = std::fs::remove_dir_all(&dir);
}
