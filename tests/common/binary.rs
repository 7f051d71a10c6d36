//! The `voicegate` binary as a user runs it, on ports free right now, with its log read back.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_voicegate");

/// `voicegate args…` with `env` set on top of the test's own environment.
pub fn command(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Ephemeral-port overrides for every listener and the RTP range (the machine is shared:
/// never the default ports), and an in-memory store.
pub fn port_env() -> Vec<(&'static str, String)> {
    let port = super::free_port();
    let (min, max) = super::rtp_range(100);
    vec![
        ("VOICEGATE_SIP_UDP", format!("127.0.0.1:{port}")),
        ("VOICEGATE_SIP_TCP", format!("127.0.0.1:{port}")),
        ("VOICEGATE_SIP_TLS", "127.0.0.1:0".to_string()),
        ("VOICEGATE_RTP_PORT_MIN", min.to_string()),
        ("VOICEGATE_RTP_PORT_MAX", max.to_string()),
        ("VOICEGATE_API_LISTEN", "127.0.0.1:0".to_string()),
        ("VOICEGATE_STORE_URL", "sqlite::memory:".to_string()),
    ]
}

/// A `voicegate serve` in the background, its stderr (where it logs) piped and read line by
/// line as raw bytes, so a test sees exactly what a log file would hold.
pub struct Served {
    child: Child,
    lines: mpsc::Receiver<Vec<u8>>,
    /// Every stderr line read so far, newline included.
    pub stderr: Vec<Vec<u8>>,
}

impl Served {
    /// Spawns `cmd` with stderr (and stdout) piped and waits for the "voicegate started"
    /// line; panics with what it printed if that does not come within 20 s.
    pub fn start(mut cmd: Command) -> Served {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("voicegate runs");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            loop {
                let mut line = Vec::new();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let mut served = Served {
            child,
            lines,
            stderr: Vec::new(),
        };
        if served
            .wait_for("voicegate started", Duration::from_secs(20))
            .is_none()
        {
            let _ = served.child.kill();
            panic!("voicegate did not start:\n{}", served.stderr_text());
        }
        served
    }

    /// Reads stderr until a line contains `needle`; that line, or None after `within`.
    pub fn wait_for(&mut self, needle: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            let text = String::from_utf8_lossy(&line).into_owned();
            self.stderr.push(line);
            if text.contains(needle) {
                return Some(text);
            }
        }
    }

    /// Everything read from stderr so far, as text.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.concat()).into_owned()
    }

    /// Stops it the way an init system does (SIGTERM) and returns its exit status, every
    /// stderr line and its stdout.
    pub fn stop(mut self) -> (ExitStatus, Vec<Vec<u8>>, Vec<u8>) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().expect("voicegate exits");
        // The reader thread ends at EOF, once the process is gone.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stderr.push(line);
        }
        let mut stdout = Vec::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = std::io::Read::read_to_end(&mut out, &mut stdout);
        }
        (status, std::mem::take(&mut self.stderr), stdout)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // A test that panicked half-way must not leave a server holding its ports.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
