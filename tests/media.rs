//! Media through the echo number with real captures played by SIPp, and what came back
//! measured on the wire with tcpdump.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

const G711A_PCAP: &str = "/usr/share/sip-tester/g711a.pcap";

/// Plays `capture` to the echo number offering `formats`, and compares what voicegate sent back
/// to SIPp's media port with what SIPp sent.
async fn echo_capture(capture: &Path, formats: &str, rtpmaps: &[&str]) {
    let config = test_config();
    let running = start(&config).await;
    // SIPp's media port is known once it runs: capture what leaves voicegate's RTP ports,
    // then keep what went to SIPp's.
    let (rtp_min, rtp_max) = (config.rtp.port_min, config.rtp.port_max);
    let tap = Capture::start(&format!("udp and src portrange {rtp_min}-{rtp_max}")).await;
    let scenario = play_pcap_scenario(formats, rtpmaps, &[(capture, 8000)]);
    let run = sipp_run(
        running.local.udp.unwrap(),
        &["-sf", scenario.to_str().unwrap(), "-s", "echo", "-m", "1"],
    )
    .await;
    let _ = std::fs::remove_file(&scenario);
    assert_sipp_ok(&run.output, 1);
    let echoed: Vec<_> = tap
        .finish()
        .await
        .into_iter()
        .filter(|d| d.dst_port == run.ports.media && d.payload.len() >= 12)
        .collect();
    let sent: Vec<_> = pcap::read(&std::fs::read(capture).unwrap())
        .into_iter()
        .filter(|d| d.payload.len() >= 12)
        .collect();
    assert!(!sent.is_empty());
    let missing = sent.len().abs_diff(echoed.len());
    assert!(
        missing * 100 <= sent.len() * 2,
        "echoed {} of {} packets (more than 2% apart)",
        echoed.len(),
        sent.len()
    );
    // Payloads identical and in order (UDP on loopback does not reorder).
    for (i, (s, e)) in sent.iter().zip(echoed.iter()).enumerate() {
        assert_eq!(
            &s.payload[12..],
            &e.payload[12..],
            "payload of packet {i} differs"
        );
        assert_eq!(
            s.payload[1] & 0x7f,
            e.payload[1] & 0x7f,
            "payload type of packet {i}"
        );
    }
    // Our own SSRC and a continuous sequence.
    let ssrc = |d: &pcap::Datagram| {
        u32::from_be_bytes([d.payload[8], d.payload[9], d.payload[10], d.payload[11]])
    };
    let seq = |d: &pcap::Datagram| u16::from_be_bytes([d.payload[2], d.payload[3]]);
    assert!(echoed.iter().all(|d| ssrc(d) == ssrc(&echoed[0])));
    assert_ne!(ssrc(&echoed[0]), ssrc(&sent[0]));
    assert!(echoed
        .windows(2)
        .all(|w| seq(&w[1]) == seq(&w[0]).wrapping_add(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcma_capture_is_echoed_packet_for_packet() {
    echo_capture(
        Path::new(G711A_PCAP),
        "8 101",
        &["a=rtpmap:8 PCMA/8000", "a=rtpmap:101 telephone-event/8000"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcmu_capture_is_echoed_packet_for_packet() {
    // The mu-law capture: SIPp's A-law one transcoded sample by sample.
    let alaw = std::fs::read(G711A_PCAP).unwrap();
    let ulaw = pcap::rewrite_rtp(&alaw, |pt, payload| {
        *pt = 0;
        for byte in payload.iter_mut() {
            *byte = voicegate_audio::g711::ulaw_encode(voicegate_audio::g711::alaw_decode(*byte));
        }
    });
    let path = std::env::temp_dir().join(format!("vg-ulaw-{:x}.pcap", rand::random::<u64>()));
    std::fs::write(&path, ulaw).unwrap();
    echo_capture(
        &path,
        "0 101",
        &["a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000"],
    )
    .await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc4733_digits_from_sipp_are_reported_once_each() {
    let running = start(&test_config()).await;
    let mut events = running.core.events.subscribe();
    // In the order of their RTP timestamps: SIPp replays each capture's own timestamps, and
    // an event older than the last one is a straggler, not a new key press.
    let digits = ["1", "2", "3", "star", "pound"];
    let files: Vec<std::path::PathBuf> = digits
        .iter()
        .map(|d| format!("/usr/share/sip-tester/dtmf_2833_{d}.pcap").into())
        .collect();
    let playback: Vec<(&Path, u64)> = files.iter().map(|f| (f.as_path(), 400)).collect();
    let scenario = play_pcap_scenario(
        "8 101",
        &[
            "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:101 telephone-event/8000",
            "a=fmtp:101 0-16",
        ],
        &playback,
    );
    let out = sipp(
        running.local.udp.unwrap(),
        &["-sf", scenario.to_str().unwrap(), "-s", "echo", "-m", "1"],
    )
    .await;
    let _ = std::fs::remove_file(&scenario);
    assert_sipp_ok(&out, 1);
    let mut got = String::new();
    while let Ok(Ok(event)) =
        tokio::time::timeout(std::time::Duration::from_millis(1500), events.recv()).await
    {
        match event {
            voicegate::core::CallEvent::Dtmf { digit, via, .. } => {
                assert_eq!(via, "rfc4733");
                got.push(digit);
            }
        }
    }
    assert_eq!(got, "123*#", "each digit once, in order");
    assert_eq!(
        running
            .core
            .stats
            .dtmf
            .load(std::sync::atomic::Ordering::Relaxed),
        5
    );
}

/// The value of `key=` in a text log line (fields are space-separated `key=value`).
fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

/// SIPp plays its RFC 4733 capture into an echo call of the real binary. The capture's end
/// packet is sent three times under one sequence number: the call record must count the two
/// copies as duplicates, not as negative loss (it used to say `rtp_lost=-2`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_dtmf_end_packets_are_duplicates_in_the_call_record() {
    let mut served = binary::Served::start(binary::command(&["serve"], &binary::port_env()));
    let udp = served.udp;
    let capture = Path::new("/usr/share/sip-tester/dtmf_2833_1.pcap");
    let scenario = play_pcap_scenario(
        "8 101",
        &["a=rtpmap:8 PCMA/8000", "a=rtpmap:101 telephone-event/8000"],
        &[(capture, 400)],
    );
    let out = sipp(
        udp,
        &["-sf", scenario.to_str().unwrap(), "-s", "echo", "-m", "1"],
    )
    .await;
    let _ = std::fs::remove_file(&scenario);
    assert_sipp_ok(&out, 1);
    let record = served
        .wait_for("voicegate::cdr", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no call record:\n{}", served.stderr_text()));
    let (status, _, _) = served.stop();
    assert!(status.success(), "exit on SIGTERM: {status:?}");
    let field =
        |key| log_field(&record, key).unwrap_or_else(|| panic!("no {key} in the record: {record}"));
    // 10 packets on the wire: 8 distinct, the end packet twice more.
    assert_eq!(field("rtp_in"), "10", "{record}");
    assert_eq!(field("rtp_lost"), "0", "{record}");
    assert_eq!(field("rtp_duplicates"), "2", "{record}");
    assert_eq!(field("dtmf"), "\"1\"", "{record}");
}
