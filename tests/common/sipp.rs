//! SIPp runs on ports nobody else holds. SIPp must bind the ports it is given itself (`-p`
//! for SIP, `-mp` for RTP), so a port free when we picked it can be taken by another process
//! on this shared machine before SIPp binds it ("Unable to bind main socket", errno 98). Every
//! SIPp a test starts goes through [`launch`]: it detects that failure and starts SIPp again
//! on newly picked ports, and tells the test which ports SIPp finally holds.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::{free_even_port, free_port};

/// SIPp's exit status when a port it was given is in use (its EXIT_BIND_ERROR, -2, which it
/// keeps for EADDRINUSE); it prints "Unable to bind ..." on stderr first.
pub const SIPP_EXIT_PORT_IN_USE: i32 = 254;

/// Launches before giving up: each one after the first follows a port lost to someone else.
const LAUNCH_ATTEMPTS: usize = 8;

/// How long a SIPp may take to bind its ports on a loaded machine.
const BIND_DEADLINE: Duration = Duration::from_secs(20);

/// The ports one SIPp binds: SIP on `sip` (`-p`, UDP or a TCP listener), audio RTP on `media`
/// (`-mp`; SIPp also binds video RTP on `media + 2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SippPorts {
    pub sip: u16,
    pub media: u16,
}

impl SippPorts {
    /// Ports free right now (no promise they still are when SIPp binds them).
    pub fn pick() -> SippPorts {
        SippPorts {
            sip: free_port(),
            media: free_even_port(),
        }
    }
}

/// A SIPp process once [`launch`] is done with it.
pub enum Launched {
    /// Running, holding its SIP and media ports.
    Holding(Child),
    /// Already over: a short run that finished, or a failure other than a port in use.
    Ended(Output),
}

impl Launched {
    /// Waits for SIPp to finish (at most `limit`) and returns what it printed.
    pub async fn output(self, limit: Duration) -> Output {
        match self {
            Launched::Ended(output) => output,
            Launched::Holding(child) => tokio::time::timeout(limit, child.wait_with_output())
                .await
                .unwrap_or_else(|_| panic!("sipp did not finish within {limit:?}"))
                .expect("sipp output"),
        }
    }
}

/// Whether a finished SIPp failed because one of its ports was in use.
pub fn lost_a_port(output: &Output) -> bool {
    output.status.code() == Some(SIPP_EXIT_PORT_IN_USE)
        && String::from_utf8_lossy(&output.stderr).contains("Unable to bind")
}

/// Starts `sipp <args> -p <sip> -mp <media>` on ports from `pick`, again on newly picked ports
/// while SIPp reports one of them in use, and returns once SIPp holds both ports (or has
/// already ended), with the ports of the last launch.
pub async fn launch(args: &[String], mut pick: impl FnMut() -> SippPorts) -> (Launched, SippPorts) {
    let mut lost = Vec::new();
    for _ in 0..LAUNCH_ATTEMPTS {
        let ports = pick();
        let mut child = Command::new("sipp")
            .current_dir(std::env::temp_dir())
            .args(args)
            .args([
                "-p",
                &ports.sip.to_string(),
                "-mp",
                &ports.media.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("sipp runs (install sip-tester)");
        let pid = child.id().expect("a running sipp has a pid");
        let deadline = Instant::now() + BIND_DEADLINE;
        let mut sip_held_at = None;
        loop {
            if child.try_wait().expect("sipp status").is_some() {
                let output = child.wait_with_output().await.expect("sipp output");
                if lost_a_port(&output) {
                    lost.push(ports);
                    break;
                }
                return (Launched::Ended(output), ports);
            }
            let held = ports_held_by(pid);
            if held.contains(&ports.sip) {
                // SIPp binds its media ports right after its SIP port (3.6 always; later
                // versions only with -rtp_echo): wait for them, but not forever.
                let sip_held_at = *sip_held_at.get_or_insert_with(Instant::now);
                if held.contains(&ports.media) || sip_held_at.elapsed() > Duration::from_millis(300)
                {
                    return (Launched::Holding(child), ports);
                }
            }
            if Instant::now() > deadline {
                let _ = child.start_kill();
                let output = child.wait_with_output().await.expect("sipp output");
                panic!(
                    "sipp did not bind {ports:?} within {BIND_DEADLINE:?}\n{}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    panic!("sipp found a port in use at each of {LAUNCH_ATTEMPTS} launches: {lost:?}");
}

/// The local ports of every socket process `pid` has open: its socket inodes
/// (/proc/PID/fd) looked up in the kernel's socket tables (/proc/net). A port being in use
/// proves nothing on a shared machine; SIPp holding it does.
pub fn ports_held_by(pid: u32) -> HashSet<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let mut ports = HashSet::new();
    for table in ["udp", "tcp", "udp6", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/net/{table}")) else {
            continue;
        };
        // Columns: sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
        for line in text.lines().skip(1) {
            let columns: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(inode)) = (columns.get(1), columns.get(9)) else {
                continue;
            };
            if inodes.contains(*inode) {
                if let Some(port) = local
                    .rsplit(':')
                    .next()
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok())
                {
                    ports.insert(port);
                }
            }
        }
    }
    ports
}

/// A finished SIPp client run and the ports it ran on.
pub struct SippRun {
    pub output: Output,
    pub ports: SippPorts,
}

/// The arguments every SIPp run here shares, then `args`.
fn common_args(timeout_secs: u32, args: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = ["-nostdin", "-i", "127.0.0.1", "-timeout"]
        .map(String::from)
        .into();
    all.push(timeout_secs.to_string());
    all.push("-timeout_error".into());
    all.extend(args.iter().map(|a| a.to_string()));
    all
}

/// Runs SIPp against `target` to the end; `args` come after the common ones.
pub async fn sipp_run(target: SocketAddr, args: &[&str]) -> SippRun {
    sipp_run_on(target, args, SippPorts::pick).await
}

/// [`sipp_run`] on ports from `pick` (a test of the retry chooses what SIPp is offered).
pub async fn sipp_run_on(
    target: SocketAddr,
    args: &[&str],
    pick: impl FnMut() -> SippPorts,
) -> SippRun {
    let mut all = vec![target.to_string()];
    all.extend(common_args(60, args));
    let (launched, ports) = launch(&all, pick).await;
    SippRun {
        output: launched.output(Duration::from_secs(90)).await,
        ports,
    }
}

/// A SIPp UAS (carrier, PBX or agent) running one call in the background, on ports it holds.
pub struct SippUas {
    /// Its SIP port on 127.0.0.1: configure voicegate with this one.
    pub port: u16,
    /// Its RTP port.
    pub media_port: u16,
    done: tokio::task::JoinHandle<Output>,
}

impl SippUas {
    /// What SIPp printed, once its call is over.
    pub async fn finish(self) -> Output {
        self.done.await.expect("sipp UAS task")
    }
}

/// A SIPp UAS running `scenario` for one call, with the SIPp arguments given (`-rtp_echo`
/// only if asked: two echoing ends of one relayed call would bounce every packet forever).
/// Returns once SIPp holds its ports.
pub async fn sipp_uas_with(scenario: &Path, extra: &[&str]) -> SippUas {
    sipp_uas_on(scenario, extra, SippPorts::pick).await
}

/// [`sipp_uas_with`] on ports from `pick` (a test of the retry chooses what SIPp is offered).
pub async fn sipp_uas_on(
    scenario: &Path,
    extra: &[&str],
    pick: impl FnMut() -> SippPorts,
) -> SippUas {
    let scenario = scenario.to_str().expect("scenario path is UTF-8");
    let mut args: Vec<&str> = vec!["-sf", scenario, "-m", "1"];
    args.extend_from_slice(extra);
    let (launched, ports) = launch(&common_args(45, &args), pick).await;
    SippUas {
        port: ports.sip,
        media_port: ports.media,
        done: tokio::spawn(launched.output(Duration::from_secs(60))),
    }
}
