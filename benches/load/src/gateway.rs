//! The voicegate under test: a release binary started with a config of its own (ports free on
//! this machine, the bench's bot as its flow), and what /proc says about its CPU and memory.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::bot::Dialect;

/// The number the bench's flow answers, and the echo test number.
pub const FLOW_NUMBER: &str = "+15550100";
pub const ECHO_NUMBER: &str = "echo";

pub struct Gateway {
    child: Child,
    pub sip_port: u16,
}

/// A UDP and TCP port free right now on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port")
}

/// An RTP range of `len` ports below the kernel's ephemeral range (where the callers' sockets
/// are), free right now.
fn rtp_range(len: u16) -> (u16, u16) {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let base = ephemeral_start.saturating_sub(len + 1000).max(1024) & !1;
    (base, base + len - 1)
}

impl Gateway {
    /// Starts `binary` with its flow pointing at the bot on `bot_port`, and waits until it
    /// answers SIP OPTIONS.
    pub fn start(
        binary: &Path,
        dir: &Path,
        bot_port: u16,
        dialect: Dialect,
        calls: usize,
    ) -> anyhow::Result<Gateway> {
        let sip_port = free_port()?;
        let (rtp_min, rtp_max) = rtp_range(((calls * 2 + 200) as u16).max(1000));
        let config = format!(
            r#"# Written by voicegate-load for one run.
flows = [{{ name = "load-bot", url = "ws://127.0.0.1:{bot_port}/", protocol = "{dialect}", numbers = ["{FLOW_NUMBER}"] }}]
[api]
listen = "127.0.0.1:0"
[store]
url = "sqlite::memory:"
[sip]
udp = "127.0.0.1:{sip_port}"
tcp = "127.0.0.1:{sip_port}"
tls = ""
[rtp]
port_min = {rtp_min}
port_max = {rtp_max}
[test_numbers]
echo = ["{ECHO_NUMBER}"]
[limits]
# One source (SIPp) places every call: the per-source window must not count it as a flood.
requests_per_window = 1000000
trusted_requests_per_window = 1000000
[log]
level = "warn"
"#,
            dialect = dialect.name()
        );
        let config_path = dir.join("voicegate.toml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.join("voicegate.log"))?;
        let child = Command::new(binary)
            .args(["serve", "--config"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut gateway = Gateway { child, sip_port };
        gateway.wait_ready()?;
        Ok(gateway)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let local = socket.local_addr()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 4096];
        let mut n = 0;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("voicegate exited at start: {status}");
            }
            n += 1;
            let options = format!(
                "OPTIONS sip:ping@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-ready{n}\r\nFrom: <sip:load@{local}>;tag=r{n}\r\nTo: <sip:ping@127.0.0.1>\r\nCall-ID: ready-{n}@load\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                port = self.sip_port
            );
            socket.send_to(options.as_bytes(), ("127.0.0.1", self.sip_port))?;
            if let Ok((len, _)) = socket.recv_from(&mut buf) {
                if buf[..len].starts_with(b"SIP/2.0 ") {
                    return Ok(());
                }
            }
        }
        bail!("voicegate did not answer OPTIONS within 20 s")
    }

    /// SIGTERM, then SIGKILL if it is still there after 10 s.
    pub fn stop(mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) of process `pid` so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').context("/proc stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields[11].parse()?;
    let stime: u64 = fields[12].parse()?;
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(
        (utime + stime) * 1_000_000_000 / ticks,
    ))
}

/// Resident memory of `pid` now and at its peak (VmRSS, VmHWM), in bytes.
pub fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(key))
            .with_context(|| format!("{key} in /proc status"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("value")?
            .parse::<u64>()?
            * 1024)
    };
    Ok((kb("VmRSS:")?, kb("VmHWM:")?))
}

/// Where cargo put the release binaries next to this one.
pub fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}
