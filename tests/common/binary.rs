//! The built `voicegate` binary run as a user or a container runs it, listening on ports the
//! kernel picks (`127.0.0.1:0`): the addresses it really got are read from its start-up line.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_voicegate");

/// A `voicegate serve` that has started; stopped with SIGTERM when dropped.
pub struct Serving {
    pub child: Child,
    /// Its SIP UDP address, from the "voicegate started" line.
    pub udp: SocketAddr,
}

/// Runs `cmd` (a `voicegate serve`, its stderr left to us) until it logs "voicegate started",
/// or returns its stderr if it exits first.
pub fn serve(mut cmd: Command) -> Result<Serving, String> {
    let mut child = cmd
        .env("VOICEGATE_LOG_LEVEL", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("voicegate runs");
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    loop {
        match lines_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => {
                let line = without_ansi_colours(&line);
                if line.contains("voicegate started") {
                    let Some(udp) = started_address(&line, "udp") else {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!("no UDP address in {line:?}");
                    };
                    // Keep draining stderr so the process never blocks on a full pipe.
                    std::thread::spawn(move || for _ in lines_rx {});
                    return Ok(Serving { child, udp });
                }
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().expect("voicegate exit status");
                return Err(format!("{status}\n{seen}"));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("voicegate neither started nor stopped within 20 s:\n{seen}");
            }
        }
    }
}

/// The log line without its terminal colour codes (ESC [ ... m), which tracing writes even
/// to a pipe.
fn without_ansi_colours(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The address after `<field>=Some(` in the start-up line, e.g. `udp=Some(127.0.0.1:40123)`.
fn started_address(line: &str, field: &str) -> Option<SocketAddr> {
    let rest = line.split(&format!("{field}=Some(")).nth(1)?;
    rest.split(')').next()?.parse().ok()
}

impl Serving {
    /// Asks it to stop the way an init system does and returns whether it exited cleanly.
    pub fn stop(mut self) -> std::process::ExitStatus {
        send_sigterm(self.child.id());
        self.child.wait().expect("voicegate exit status")
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn send_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}
