//! An Opus call from baresip, a real softphone, to the echo number: baresip sends a 1 kHz
//! sine, and what it decodes from voicegate's echo must be that sine.

mod common;

use common::*;
use std::time::Duration;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opus_call_from_baresip_gets_its_audio_back() {
    let mut config = test_config();
    config.rtp.codecs = vec!["OPUS".into(), "PCMA".into(), "PCMU".into()];
    let running = start(&config).await;
    let udp = running.local.udp.unwrap();

    let dir = std::env::temp_dir().join(format!("vg-baresip-{:x}", rand::random::<u64>()));
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
            .args(["-e", &format!("/dial sip:echo@{udp}"), "-t", "4"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("baresip ends")
    .expect("baresip runs (install baresip-core)");
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("Call established"), "{log}");
    assert!(
        log.contains("Set audio decoder: opus"),
        "Opus was not negotiated\n{log}"
    );

    let decoded = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .expect("baresip wrote what it decoded");
    let (rate, samples) = wav_channel0(&std::fs::read(&decoded).unwrap());
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(rate, 48000);
    // The last 1.5 s: well past call set-up and the codecs' start.
    let tail = &samples[samples.len().saturating_sub(72_000)..];
    assert!(
        tail.len() >= 48_000,
        "only {} samples decoded",
        samples.len()
    );
    let rms = (tail.iter().map(|s| (*s as f64).powi(2)).sum::<f64>() / tail.len() as f64).sqrt();
    let crossings = tail.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    let frequency = crossings as f64 / 2.0 / (tail.len() as f64 / rate as f64);
    assert!(rms > 1000.0, "echoed audio is near silence (rms {rms:.0})");
    assert!(
        (950.0..1050.0).contains(&frequency),
        "echoed tone at {frequency:.0} Hz, sent 1000 Hz"
    );
    assert_eq!(
        running
            .core
            .stats
            .answered
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}
