//! One second of a bridged bot call's media work, as its session task does it, without sockets
//! or the writer task:
//!
//! - caller → bot: 50 PCMA RTP packets (20 ms) taken by the leg (latching, statistics), through
//!   the arrival buffer (each released on arrival), decoded (with PLC), resampled to the bot's rate, chunked and encoded as
//!   `media` messages, each made an owned text frame for the writer (10 messages of 100 ms for
//!   Exotel, 50 of 20 ms for Twilio);
//! - bot → caller: a second of the bot's `media` messages (and a mark after the last) checked
//!   against the bot's budget, parsed into the playout queue, then 50 frames played out,
//!   resampled to 8 kHz, A-law encoded into RTP packets and counted by the leg; the mark comes
//!   back as a message when its audio has played.
//!
//! Time is virtual (a frame is 20 ms of it), so one iteration is one call-second of work.

use std::net::SocketAddr;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tokio::time::Instant;
use voicegate_audio::{g711, G711Plc, Resampler};
use voicegate_bridge::dialect::{self, BotMessageRef, Encoder, Protocol, StreamInfo};
use voicegate_bridge::limits::BotBudget;
use voicegate_bridge::playout::{Chunker, Frame, PlayoutQueue};
use voicegate_bridge::session::Codec;
use voicegate_bridge::ws::TextFrames;
use voicegate_rtp::arrival::{ArrivalBuffer, ArrivalConfig, Release};
use voicegate_rtp::latch::LatchPolicy;
use voicegate_rtp::leg::Datagram;
use voicegate_rtp::{LegSetup, LegState, RtcpDemux, RtpWriter};

const FRAME: Duration = Duration::from_millis(20);
const FRAMES_PER_SECOND: usize = 50;
const PCMA: u8 = 8;
const STREAM_SID: &str = "f7fc071a2dbdd73d730b2bd00cf1f98a";

/// The bot stream of one variant.
#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    protocol: Protocol,
    /// The bot's sample rate (Twilio's is always 8000).
    rate: u32,
    /// Caller audio per `media` message, and the bot's audio per message back.
    chunk: Duration,
}

const VARIANTS: [Variant; 3] = [
    Variant {
        name: "exotel_8k_100ms",
        protocol: Protocol::Exotel,
        rate: 8000,
        chunk: Duration::from_millis(100),
    },
    Variant {
        name: "exotel_16k_100ms",
        protocol: Protocol::Exotel,
        rate: 16000,
        chunk: Duration::from_millis(100),
    },
    Variant {
        name: "twilio_20ms",
        protocol: Protocol::Twilio,
        rate: 8000,
        chunk: FRAME,
    },
];

fn info(rate: u32) -> StreamInfo {
    StreamInfo {
        stream_sid: STREAM_SID.into(),
        call_sid: "0d1dd103c3af5c9efbeed088381a738d".into(),
        account_sid: "voicegate".into(),
        from: "+15550100".into(),
        to: "+15550199".into(),
        custom_parameters: vec![],
        sample_rate: rate,
        bidirectional: true,
    }
}

/// The caller's leg as the session sets it up.
fn leg(now: Instant) -> LegState {
    LegState::new(
        LegSetup {
            ssrc: 0x1234_5678,
            cname: "voicegate@192.0.2.1".into(),
            codec: Codec::Pcma,
            latching: LatchPolicy::Auto,
            signalled: Some(caller()),
            rtcp_mux: false,
            rtcp_demux: RtcpDemux::WhenMuxed,
            telephone_event: Some(101),
            only_payload_type: None,
            dtmf_clock: 8000,
            expect_rtp: true,
            rtp_timeout: Duration::from_secs(30),
        },
        now,
    )
}

fn caller() -> SocketAddr {
    "192.0.2.10:40000".parse().unwrap()
}

/// `seconds` of a 440 Hz tone at `rate`, about -12 dBFS.
fn tone(rate: u32, seconds: usize) -> Vec<i16> {
    (0..rate as usize * seconds)
        .map(|n| {
            let t = n as f64 / f64::from(rate);
            (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
        })
        .collect()
}

/// The caller → bot half of a session.
struct CallerToBot {
    leg: LegState,
    arrival: ArrivalBuffer,
    plc: G711Plc,
    pcm: Vec<i16>,
    up: Resampler,
    decoded: Vec<i16>,
    chunker: Chunker,
    encoder: Encoder,
    out: String,
    frames: TextFrames,
    /// A second of the caller's A-law payloads, 160 bytes each.
    payloads: Vec<[u8; 160]>,
    packet: Vec<u8>,
    seq: u16,
    timestamp: u32,
    /// The virtual clock: the next frame tick.
    now: Instant,
}

impl CallerToBot {
    fn new(variant: Variant) -> Self {
        let now = Instant::now();
        let payloads = tone(8000, 1)
            .chunks_exact(160)
            .map(|frame| {
                let mut payload = [0u8; 160];
                g711::encode_alaw(frame, &mut payload);
                payload
            })
            .collect();
        CallerToBot {
            leg: leg(now),
            arrival: ArrivalBuffer::new(ArrivalConfig::default(), now),
            plc: G711Plc::new(),
            pcm: vec![0; 160],
            up: Resampler::new(8000, variant.rate, 160).unwrap(),
            decoded: Vec::with_capacity(variant.rate as usize / 25),
            chunker: Chunker::new(variant.rate, variant.chunk),
            encoder: Encoder::new(variant.protocol, info(variant.rate)),
            out: String::with_capacity(4096),
            frames: TextFrames::new(),
            payloads,
            packet: Vec::with_capacity(172),
            seq: 0,
            timestamp: 0,
            now: now + FRAME,
        }
    }

    /// One second: 50 packets in, each released as it arrives. Returns the messages made and
    /// the frames the arrival buffer released.
    fn second(&mut self) -> (usize, usize) {
        let (mut messages, mut played) = (0, 0);
        for i in 0..self.payloads.len() {
            let payload = self.payloads[i];
            self.packet.clear();
            self.packet.extend_from_slice(&[0x80, PCMA]);
            self.packet.extend_from_slice(&self.seq.to_be_bytes());
            self.packet.extend_from_slice(&self.timestamp.to_be_bytes());
            self.packet.extend_from_slice(&0xdead_beefu32.to_be_bytes());
            self.packet.extend_from_slice(&payload);
            self.seq = self.seq.wrapping_add(1);
            self.timestamp = self.timestamp.wrapping_add(160);
            let arrived = self.now;
            self.now += FRAME;
            if let Datagram::Rtp { header, .. } =
                self.leg
                    .on_rtp_port(black_box(&self.packet), caller(), arrived)
            {
                self.arrival.push(
                    header.seq,
                    header.timestamp,
                    header.payload(&self.packet),
                    arrived,
                );
            }
            while let Some(release) = self.arrival.pop(arrived) {
                match release {
                    Release::Frame { payload, .. } => {
                        let n = g711::decode_alaw(payload, &mut self.pcm);
                        self.pcm[n..].fill(0);
                        self.plc.good_frame(&mut self.pcm);
                        played += 1;
                    }
                    Release::Missing { .. } => self.plc.conceal(&mut self.pcm),
                    Release::Silence => self.pcm.fill(0),
                }
                self.up.process_vec(&self.pcm, &mut self.decoded).unwrap();
                messages += self.chunk();
            }
        }
        (messages, played)
    }

    /// The decoded frame into the chunker, and each full chunk out as a message.
    fn chunk(&mut self) -> usize {
        let mut messages = 0;
        self.chunker.push(&self.decoded);
        while let Some(chunk) = self.chunker.take_chunk() {
            self.encoder
                .media(&chunk, chunk.timestamp_ms, &mut self.out);
            // The writer takes it and drops it once sent.
            black_box(self.frames.frame(&self.out));
            messages += 1;
        }
        messages
    }
}

/// The bot → caller half of a session.
struct BotToCaller {
    protocol: Protocol,
    budget: BotBudget,
    bot_pcm: Vec<i16>,
    playout: PlayoutQueue,
    bot_frame: Vec<i16>,
    down: Resampler,
    pcm: Vec<i16>,
    writer: RtpWriter,
    packet: Vec<u8>,
    leg: LegState,
    encoder: Encoder,
    out: String,
    frames: TextFrames,
    now: Instant,
}

/// A second of what the bot sends: its `media` messages, then a mark after the last.
struct BotSecond {
    media: Vec<String>,
    mark: String,
}

impl BotSecond {
    fn new(variant: Variant) -> Self {
        // The bot's messages carry what ours do, with the bot's keys: event, SID and payload.
        let (sid_key, pcm_rate) = match variant.protocol {
            Protocol::Exotel => ("stream_sid", variant.rate),
            Protocol::Twilio => ("streamSid", 8000),
        };
        let audio = tone(pcm_rate, 1);
        let per_message = (pcm_rate as u128 * variant.chunk.as_nanos() / 1_000_000_000) as usize;
        let mut ours = Encoder::new(variant.protocol, info(pcm_rate));
        let mut built = String::new();
        let messages = audio
            .chunks_exact(per_message)
            .map(|chunk| {
                ours.media(chunk, 0, &mut built);
                let from = built.find(r#""payload":""#).unwrap() + 11;
                let to = from + built[from..].find('"').unwrap();
                format!(
                    r#"{{"event":"media","{sid_key}":"{STREAM_SID}","media":{{"payload":"{}"}}}}"#,
                    &built[from..to]
                )
            })
            .collect();
        let mark = format!(
            r#"{{"event":"mark","{sid_key}":"{STREAM_SID}","mark":{{"name":"utterance-end"}}}}"#
        );
        BotSecond {
            media: messages,
            mark,
        }
    }
}

impl BotToCaller {
    fn new(variant: Variant) -> Self {
        let now = Instant::now();
        let pcm_rate = match variant.protocol {
            Protocol::Exotel => variant.rate,
            Protocol::Twilio => 8000,
        };
        let frame = pcm_rate as usize / FRAMES_PER_SECOND;
        BotToCaller {
            protocol: variant.protocol,
            budget: BotBudget::new(500, 1 << 20, now),
            bot_pcm: Vec::with_capacity(pcm_rate as usize * 2),
            playout: PlayoutQueue::new(pcm_rate, Duration::from_secs(60)),
            bot_frame: vec![0; frame],
            down: Resampler::new(pcm_rate, 8000, frame).unwrap(),
            pcm: vec![0; 160],
            writer: RtpWriter::new(0x1234_5678),
            packet: Vec::with_capacity(1500),
            leg: leg(now),
            encoder: Encoder::new(variant.protocol, info(pcm_rate)),
            out: String::with_capacity(4096),
            frames: TextFrames::new(),
            now,
        }
    }

    /// The bot's message `text` as the session takes it.
    fn receive(&mut self, text: &str) {
        if !self.budget.admit(text.len(), self.now) {
            return;
        }
        match dialect::parse_into(self.protocol, black_box(text), &mut self.bot_pcm) {
            Ok(BotMessageRef::Media) => {
                self.playout.push_audio(&self.bot_pcm);
            }
            Ok(BotMessageRef::Mark(name)) => {
                self.playout.push_mark(name);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// One second: each message arrives just before the tick that starts playing it; 50 frame
    /// ticks. Returns the audio frames played and the marks echoed.
    fn second(&mut self, bot: &BotSecond) -> (usize, usize) {
        let every = FRAMES_PER_SECOND / bot.media.len();
        let (mut audio, mut marks) = (0, 0);
        for tick in 0..FRAMES_PER_SECOND {
            if tick % every == 0 {
                let message = tick / every;
                self.receive(&bot.media[message]);
                if message == bot.media.len() - 1 {
                    self.receive(&bot.mark);
                }
            }
            self.now += FRAME;
            let frame = self.playout.next_frame(&mut self.bot_frame);
            audio += usize::from(frame.is_audio());
            let marker = matches!(
                frame,
                Frame::Audio {
                    talkspurt_start: true,
                    ..
                }
            );
            self.writer.start_frame(&mut self.packet, PCMA, marker);
            let n = self.down.process(&self.bot_frame, &mut self.pcm).unwrap();
            let start = self.packet.len();
            self.packet.resize(start + n, 0);
            g711::encode_alaw(&self.pcm[..n], &mut self.packet[start..]);
            let timestamp = self.writer.timestamp();
            self.writer.advance_seq();
            self.writer.advance_timestamp(160);
            self.leg.on_sent(timestamp, n, self.now);
            black_box(&self.packet);
            while let Some(name) = self.playout.poll_mark() {
                self.encoder.mark(&name, &mut self.out);
                black_box(self.frames.frame(&self.out));
                marks += 1;
            }
        }
        (audio, marks)
    }
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("bot_call_second");
    for variant in VARIANTS {
        let mut up = CallerToBot::new(variant);
        // A second to settle: then every packet plays and every chunk is sent.
        up.second();
        let per_second = (Duration::from_secs(1).as_nanos() / variant.chunk.as_nanos()) as usize;
        assert_eq!(up.second(), (per_second, FRAMES_PER_SECOND));
        group.bench_function(format!("{}/caller_to_bot", variant.name), |b| {
            b.iter(|| up.second())
        });

        let bot = BotSecond::new(variant);
        assert_eq!(bot.media.len(), per_second);
        let mut down = BotToCaller::new(variant);
        assert_eq!(down.second(&bot), (FRAMES_PER_SECOND, 1));
        group.bench_function(format!("{}/bot_to_caller", variant.name), |b| {
            b.iter(|| down.second(&bot))
        });
    }
    group.finish();
}

criterion_group!(all, benches);
criterion_main!(all);
