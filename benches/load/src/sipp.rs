//! SIPp as the callers' signalling: the scenario (INVITE offering PCMA with the call's own RTP
//! port from the injection file, ACK, hold, BYE), how it is started, and what its statistics
//! file says at the end.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

const REQUEST_HEAD: &str = "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]";

/// A call to `[service]` that offers PCMA on `media_port` (an injection field or a fixed port)
/// and hangs up after `hold`.
pub fn scenario(media_port: &str, hold: Duration) -> String {
    let hold_ms = hold.as_millis();
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<!-- Written by voicegate-load: one call offering PCMA, held, then hung up. -->
<scenario name="voicegate-load call">
  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      {REQUEST_HEAD}
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=load 1 1 IN IP4 [media_ip]
      s=-
      c=IN IP4 [media_ip]
      t=0 0
      m=audio {media_port} RTP/AVP 8
      a=rtpmap:8 PCMA/8000
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rtd="true"/>
  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      {REQUEST_HEAD}
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <pause milliseconds="{hold_ms}"/>
  <send retrans="500">
    <![CDATA[
      BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      {REQUEST_HEAD}
      [last_To:]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true"/>
  <ResponseTimeRepartition value="10, 20, 50, 100, 200, 500, 1000"/>
</scenario>
"#
    )
}

/// How SIPp is to place the calls.
pub struct Placement<'a> {
    pub dir: &'a Path,
    pub sip_port: u16,
    /// SIPp's own SIP port.
    pub local_port: u16,
    pub number: &'a str,
    /// Calls per second, concurrent calls at most, calls in all.
    pub rate: u32,
    pub limit: usize,
    pub calls: usize,
    pub hold: Duration,
    /// Each call's RTP port (injected as field0); empty: one fixed port for all.
    pub media_ports: &'a [u16],
}

/// Starts SIPp in the background with statistics every second into `dir/stats.csv`.
pub fn start(p: &Placement) -> anyhow::Result<Child> {
    let media = if p.media_ports.is_empty() {
        "[media_port]"
    } else {
        "[field0]"
    };
    let scenario_path = p.dir.join("scenario.xml");
    std::fs::write(&scenario_path, scenario(media, p.hold))?;
    let mut cmd = Command::new("sipp");
    cmd.arg(format!("127.0.0.1:{}", p.sip_port))
        .arg("-sf")
        .arg(&scenario_path)
        .args(["-s", p.number, "-i", "127.0.0.1", "-nostdin"])
        .args(["-p", &p.local_port.to_string()])
        .args(["-r", &p.rate.to_string(), "-rp", "1000"])
        .args(["-l", &p.limit.to_string(), "-m", &p.calls.to_string()])
        .args([
            "-max_socket",
            "65000",
            "-timeout_error",
            "-trace_stat",
            "-fd",
            "1",
        ])
        .arg("-stf")
        .arg(p.dir.join("stats.csv"))
        .arg("-trace_err")
        .arg("-error_file")
        .arg(p.dir.join("sipp-errors.log"))
        .arg("-timeout")
        .arg(format!("{}s", p.hold.as_secs() + 120));
    if !p.media_ports.is_empty() {
        let mut csv = String::from("SEQUENTIAL\n");
        for port in p.media_ports {
            csv.push_str(&format!("{port};\n"));
        }
        let path = p.dir.join("calls.csv");
        std::fs::write(&path, csv)?;
        cmd.arg("-inf").arg(path);
    }
    let out = std::fs::File::create(p.dir.join("sipp.out"))?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting sipp (Debian package sip-tester)")
}

/// SIPp's totals from the last line of its statistics file.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub created: u64,
    pub succeeded: u64,
    pub failed: u64,
}

pub fn totals(dir: &Path) -> anyhow::Result<Totals> {
    let text = std::fs::read_to_string(dir.join("stats.csv")).context("sipp stats.csv")?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().context("empty stats")?.split(';').collect();
    let Some(last) = lines.next_back() else {
        bail!("no statistics line")
    };
    let values: Vec<&str> = last.split(';').collect();
    let field = |name: &str| -> anyhow::Result<u64> {
        let i = header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("{name} in stats header"))?;
        Ok(values.get(i).context("short line")?.trim().parse()?)
    };
    Ok(Totals {
        created: field("TotalCallCreated")?,
        succeeded: field("SuccessfulCall(C)")?,
        failed: field("FailedCall(C)")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_come_from_the_last_line_by_column_name() {
        let dir = std::env::temp_dir().join(format!("vg-load-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("stats.csv"),
            "StartTime;TotalCallCreated;SuccessfulCall(C);FailedCall(C);\n\
             x;5;3;0;\n\
             y;10;9;1;\n",
        )
        .unwrap();
        let t = totals(&dir).unwrap();
        assert_eq!((t.created, t.succeeded, t.failed), (10, 9, 1));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
