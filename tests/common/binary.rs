//! The built `voicegate` binary run as a user or a container runs it: every listener on a port
//! the kernel picks (`127.0.0.1:0`), the addresses it really got read from its start-up line,
//! and its log read back line by line as raw bytes, as a log file would hold it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
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

/// Overrides for every listener (ports the kernel picks: the machine is shared, never the
/// defaults), the RTP range and an in-memory store.
pub fn port_env() -> Vec<(&'static str, String)> {
    let (min, max) = super::rtp_range(100);
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

/// A `voicegate serve` that has started, its stderr (where it logs) read in the background.
/// Killed when dropped, so a test that fails half-way leaves no server holding its ports.
pub struct Served {
    child: Child,
    lines: mpsc::Receiver<Vec<u8>>,
    /// Every stderr line read so far, newline included.
    pub stderr: Vec<Vec<u8>>,
    /// Its SIP UDP address, from the "voicegate started" line.
    pub udp: SocketAddr,
}

impl Served {
    /// Spawns `cmd` (at info level unless it sets one) with stdout and stderr piped, and waits
    /// for the "voicegate started" line; panics with what it printed if that does not come.
    pub fn start(cmd: Command) -> Served {
        Served::try_start(cmd).unwrap_or_else(|stderr| panic!("voicegate did not start: {stderr}"))
    }

    /// [`Served::start`], but a process that exits before starting gives its exit status and
    /// stderr. One that neither starts nor exits within 20 s is killed and the test fails.
    pub fn try_start(mut cmd: Command) -> Result<Served, String> {
        if !cmd.get_envs().any(|(key, _)| key == "VOICEGATE_LOG_LEVEL") {
            cmd.env("VOICEGATE_LOG_LEVEL", "info");
        }
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
        let mut seen: Vec<Vec<u8>> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let text = String::from_utf8_lossy(&line).into_owned();
                    seen.push(line);
                    if !text.contains("voicegate started") {
                        continue;
                    }
                    let Some(udp) = started_address(&text, "udp") else {
                        let _ = child.kill();
                        panic!("no UDP address in {text:?}");
                    };
                    return Ok(Served {
                        child,
                        lines,
                        stderr: seen,
                        udp,
                    });
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().expect("voicegate exit status");
                    return Err(format!(
                        "{status}\n{}",
                        String::from_utf8_lossy(&seen.concat())
                    ));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "voicegate neither started nor stopped within 20 s:\n{}",
                        String::from_utf8_lossy(&seen.concat())
                    );
                }
            }
        }
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

    /// Kills it with SIGKILL, as a crash or `kill -9` would, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its process id (for /proc/<pid>/status).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything read from stderr so far, as text.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.concat()).into_owned()
    }

    /// Stops it the way an init system does (SIGTERM) and returns its exit status, every
    /// stderr line and its stdout.
    pub fn stop(mut self) -> (ExitStatus, Vec<Vec<u8>>, Vec<u8>) {
        send_sigterm(self.child.id());
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
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The address logged as `<field>=Some(…)` (text) or `"<field>":"Some(…)"` (JSON) in the
/// start-up line.
fn started_address(line: &str, field: &str) -> Option<SocketAddr> {
    let rest = [format!("{field}=Some("), format!("\"{field}\":\"Some(")]
        .iter()
        .find_map(|key| line.split(key.as_str()).nth(1))?;
    rest.split(')').next()?.parse().ok()
}

pub fn send_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}
