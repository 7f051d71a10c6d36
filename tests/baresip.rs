//! Calls from baresip, a real softphone: over UDP and TLS to the echo number, and over TLS to
//! a flow whose bot is a WebSocket server in the test. baresip sends a 1 kHz sine; what it
//! decodes (the echo, or the bot's own tone) is checked from the WAV it records.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use common::bot::*;
use common::*;
use serde_json::json;
use voicegate::config::FlowConfig;

/// Samples of channel 0 from a 16-bit PCM WAV file (as baresip's sndfile module writes).
fn wav_channel0(bytes: &[u8]) -> (u32, Vec<i16>) {
    assert!(
        bytes.len() > 44 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE",
        "not a WAV file"
    );
    let mut off = 12;
    let (mut rate, mut channels, mut samples) = (0u32, 1usize, Vec::new());
    while off + 8 <= bytes.len() {
        let id = &bytes[off..off + 4];
        let len = u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap()) as usize;
        let body = &bytes[off + 8..(off + 8 + len).min(bytes.len())];
        if id == b"fmt " {
            channels = u16::from_le_bytes([body[2], body[3]]) as usize;
            rate = u32::from_le_bytes(body[4..8].try_into().unwrap());
        } else if id == b"data" {
            samples = body
                .chunks_exact(2 * channels)
                .map(|f| i16::from_le_bytes([f[0], f[1]]))
                .collect();
        }
        off += 8 + len + (len & 1);
    }
    (rate, samples)
}

/// Frequency (from zero crossings) and RMS level of a stretch of audio.
fn tone_of(samples: &[i16], rate: u32) -> (f64, f64) {
    let rms = (samples.iter().map(|s| (*s as f64).powi(2)).sum::<f64>()
        / samples.len().max(1) as f64)
        .sqrt();
    let crossings = samples
        .windows(2)
        .filter(|w| (w[0] < 0) != (w[1] < 0))
        .count();
    let frequency = crossings as f64 / 2.0 / (samples.len() as f64 / rate as f64);
    (frequency, rms)
}

/// What one baresip run left behind.
struct BaresipRun {
    log: String,
    /// The sample rate and channel 0 of what baresip decoded from voicegate.
    rate: u32,
    decoded: Vec<i16>,
}

impl BaresipRun {
    /// The decoded tone's frequency and level over the last 1.5 s: well past call set-up and
    /// the codecs' start.
    fn tail_tone(&self) -> (f64, f64) {
        let tail = &self.decoded[self
            .decoded
            .len()
            .saturating_sub(self.rate as usize * 3 / 2)..];
        assert!(
            tail.len() >= self.rate as usize,
            "only {} samples decoded\n{}",
            self.decoded.len(),
            self.log
        );
        tone_of(tail, self.rate)
    }
}

/// Runs baresip for `seconds`: it dials `target` offering Opus only, sends a 1 kHz sine and
/// records what it decodes. Its SIP and RTP ports are random free ones.
async fn baresip_dial(target: &str, seconds: u32) -> BaresipRun {
    let dir: PathBuf = std::env::temp_dir().join(format!("vg-baresip-{:x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let (rtp_min, rtp_max) = rtp_range(100);
    // SIP on a port the kernel picks (baresip puts it in its Via and Contact); RTP on a port
    // of the range that baresip finds free.
    let config_text = format!(
        "poll_method epoll\n\
sip_listen 127.0.0.1:0\n\
audio_source ausine,1000\n\
audio_player aubridge,nil\n\
audio_alert aubridge,nil\n\
ausrc_srate 48000\nausrc_channels 2\nauplay_srate 48000\nauplay_channels 2\n\
rtp_ports {rtp_min}-{rtp_max}\n\
module_path /usr/lib/baresip/modules\n\
module opus.so\nmodule ausine.so\nmodule aubridge.so\nmodule sndfile.so\n\
module_app account.so\nmodule_app menu.so\n\
snd_path {dir}\n",
        dir = dir.display()
    );
    std::fs::write(dir.join("config"), config_text).unwrap();
    std::fs::write(
        dir.join("accounts"),
        "<sip:tester@127.0.0.1>;regint=0;audio_codecs=opus/48000/2\n",
    )
    .unwrap();

    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("baresip")
            .arg("-f")
            .arg(&dir)
            .args(["-e", &format!("/dial {target}"), "-t", &seconds.to_string()])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("baresip ends")
    .expect("baresip runs (install baresip-core)");
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("Call established"), "{log}");
    // Closed by voicegate or by an error (an ACK that could not be sent), not by baresip's
    // own hang-up at the end.
    assert!(
        !log.contains("session closed"),
        "the call ended before baresip hung up\n{log}"
    );
    assert!(
        log.contains("Set audio decoder: opus"),
        "Opus was not negotiated\n{log}"
    );
    let decoded = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .unwrap_or_else(|| panic!("baresip wrote no decoded audio\n{log}"));
    let (rate, decoded) = wav_channel0(&std::fs::read(&decoded).unwrap());
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(rate, 48000);
    BaresipRun { log, rate, decoded }
}

fn opus_config() -> voicegate::config::Config {
    let mut config = test_config();
    config.rtp.codecs = vec!["OPUS".into(), "PCMA".into(), "PCMU".into()];
    config
}

/// The echo must give back baresip's own 1 kHz sine.
fn assert_echoed_sine(run: &BaresipRun) {
    let (frequency, rms) = run.tail_tone();
    assert!(
        rms > 1000.0,
        "echoed audio is near silence (rms {rms:.0})\n{}",
        run.log
    );
    assert!(
        (950.0..1050.0).contains(&frequency),
        "echoed tone at {frequency:.0} Hz, sent 1000 Hz\n{}",
        run.log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opus_call_from_baresip_gets_its_audio_back() {
    let running = start(&opus_config()).await;
    let udp = running.local.udp.unwrap();
    let run = baresip_dial(&format!("sip:echo@{udp}"), 4).await;
    assert_echoed_sine(&run);
    assert_eq!(
        running
            .core
            .stats
            .answered
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// baresip dials a `sip:` URI over TLS: our Contact must stay `sip:` (with `transport=tls`),
/// or baresip cannot send its ACK to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_call_from_baresip_to_the_echo() {
    let running = start(&opus_config()).await;
    let tls = running.local.tls.unwrap();
    let run = baresip_dial(&format!("sip:echo@{tls};transport=tls"), 4).await;
    assert_echoed_sine(&run);
}

/// A flow call over TLS: the bot hears baresip's 1 kHz sine, and baresip hears the bot's
/// 440 Hz tone (not an echo of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_call_from_baresip_to_a_bot() {
    let (bot_addr, mut conns) = bot_server().await;
    let mut config = opus_config();
    config.flows = vec![FlowConfig {
        name: "tls-bot".into(),
        url: format!("ws://{bot_addr}/stream"),
        numbers: vec!["+15550142".into()],
        ..FlowConfig::default()
    }];
    let running = start(&config).await;
    let tls = running.local.tls.unwrap();

    let bot_side = tokio::spawn(async move {
        let mut bot = next_bot(&mut conns).await;
        let (_, (_, start)) = bot.until("start", Duration::from_secs(5)).await;
        let stream_sid = start["stream_sid"].clone();
        // 10 s of 440 Hz at the Exotel default of 8 kHz: longer than the call.
        let tone: Vec<u8> = (0..80_000)
            .map(|i| {
                (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 8000.0).sin()) as i16
            })
            .flat_map(i16::to_le_bytes)
            .collect();
        let payload = base64::engine::general_purpose::STANDARD.encode(tone);
        bot.send_json(
            json!({"event": "media", "stream_sid": stream_sid, "media": {"payload": payload}}),
        );
        let (frames, _) = bot.until("stop", Duration::from_secs(15)).await;
        frames
            .iter()
            .filter(|f| f["event"] == "media")
            .flat_map(|f| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(f["media"]["payload"].as_str().unwrap_or_default())
                    .unwrap();
                bytes
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<i16>>()
    });

    let run = baresip_dial(&format!("sip:+15550142@{tls};transport=tls"), 5).await;
    let (frequency, rms) = run.tail_tone();
    assert!(
        rms > 1000.0 && (420.0..460.0).contains(&frequency),
        "baresip heard {frequency:.0} Hz at rms {rms:.0}, the bot sent 440 Hz\n{}",
        run.log
    );

    let heard = tokio::time::timeout(Duration::from_secs(20), bot_side)
        .await
        .expect("the bot's session ends after baresip hangs up")
        .unwrap();
    // The last 1.5 s before baresip hung up, at 8 kHz.
    let tail = &heard[heard.len().saturating_sub(12_000)..];
    assert!(
        tail.len() >= 8000,
        "the bot got only {} samples",
        heard.len()
    );
    let (frequency, rms) = tone_of(tail, 8000);
    assert!(
        rms > 1000.0 && (950.0..1050.0).contains(&frequency),
        "the bot heard {frequency:.0} Hz at rms {rms:.0}, baresip sent 1000 Hz"
    );
}
