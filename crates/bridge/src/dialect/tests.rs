//! Tests of both dialects: the frames we build (read back as JSON), string escaping, and the
//! bot frames we accept or reject, media payloads included.

use base64::engine::general_purpose::STANDARD;
use base64::{DecodeError, Engine as _};
use serde_json::{json, Value};
use voicegate_audio::g711::{ulaw_decode, ulaw_encode};

use super::encoder::write_json_str;
use super::*;
use crate::tap::Track;

fn info() -> StreamInfo {
    StreamInfo {
        stream_sid: "MZ0001".into(),
        call_sid: "CA0002".into(),
        account_sid: "AC0003".into(),
        from: "+919876543210".into(),
        to: "+918047491899".into(),
        custom_parameters: vec![("lang".into(), "hi".into()), ("tier".into(), "gold".into())],
        sample_rate: 8000,
        bidirectional: true,
    }
}

fn value(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn payload_bytes(v: &Value) -> Vec<u8> {
    STANDARD
        .decode(v["media"]["payload"].as_str().unwrap())
        .unwrap()
}

#[test]
fn protocol_names() {
    assert_eq!(Protocol::from_name("exotel"), Some(Protocol::Exotel));
    assert_eq!(Protocol::from_name("twilio"), Some(Protocol::Twilio));
    assert_eq!(Protocol::from_name("Twilio"), Some(Protocol::Twilio));
    assert_eq!(Protocol::from_name("vonage"), None);
    assert_eq!(Protocol::from_name(""), None);
    assert_eq!(Protocol::default(), Protocol::Exotel);
    assert_eq!(Protocol::Exotel.to_string(), "exotel");
    assert_eq!(Protocol::Twilio.name(), "twilio");
}

#[test]
fn exotel_connected() {
    let mut enc = Encoder::new(Protocol::Exotel, info());
    let mut out = String::from("left over");
    enc.connected(&mut out);
    assert_eq!(value(&out), json!({"event": "connected"}));
    assert_eq!(enc.sequence_number(), 0);
}

#[test]
fn twilio_connected() {
    let mut enc = Encoder::new(Protocol::Twilio, info());
    let mut out = String::new();
    enc.connected(&mut out);
    assert_eq!(
        value(&out),
        json!({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    );
}

#[test]
fn exotel_start() {
    let mut enc = Encoder::new(Protocol::Exotel, info());
    let mut out = String::new();
    enc.connected(&mut out);
    enc.start(&mut out);
    assert_eq!(
        value(&out),
        json!({
            "event": "start",
            "sequence_number": "1",
            "stream_sid": "MZ0001",
            "start": {
                "stream_sid": "MZ0001",
                "call_sid": "CA0002",
                "account_sid": "AC0003",
                "from": "+919876543210",
                "to": "+918047491899",
                "custom_parameters": {"lang": "hi", "tier": "gold"},
                "media_format": {
                    "encoding": "base64",
                    "sample_rate": "8000",
                    "bit_rate": "128kbps"
                }
            }
        })
    );
}

#[test]
fn exotel_start_wideband_rates() {
    for (rate, bit_rate) in [(16000, "256kbps"), (24000, "384kbps")] {
        let mut enc = Encoder::new(
            Protocol::Exotel,
            StreamInfo {
                sample_rate: rate,
                ..info()
            },
        );
        assert_eq!(enc.sample_rate(), rate);
        let mut out = String::new();
        enc.start(&mut out);
        let v = value(&out);
        let format = &v["start"]["media_format"];
        assert_eq!(format["sample_rate"], json!(rate.to_string()));
        assert_eq!(format["bit_rate"], json!(bit_rate));
    }
}

#[test]
fn twilio_start() {
    let mut enc = Encoder::new(Protocol::Twilio, info());
    let mut out = String::new();
    enc.start(&mut out);
    assert_eq!(
        value(&out),
        json!({
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": "MZ0001",
            "start": {
                "accountSid": "AC0003",
                "streamSid": "MZ0001",
                "callSid": "CA0002",
                "tracks": ["inbound", "outbound"],
                "customParameters": {
                    "lang": "hi",
                    "tier": "gold",
                    "from_number": "+919876543210",
                    "to_number": "+918047491899"
                },
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
            }
        })
    );

    // Listen-only: inbound track only; the sample rate is always 8000.
    let mut enc = Encoder::new(
        Protocol::Twilio,
        StreamInfo {
            bidirectional: false,
            sample_rate: 16000,
            custom_parameters: Vec::new(),
            ..info()
        },
    );
    assert_eq!(enc.sample_rate(), 8000);
    enc.start(&mut out);
    let v = value(&out);
    assert_eq!(v["start"]["tracks"], json!(["inbound"]));
    assert_eq!(
        v["start"]["customParameters"],
        json!({"from_number": "+919876543210", "to_number": "+918047491899"})
    );
    assert_eq!(v["start"]["mediaFormat"]["sampleRate"], json!(8000));
}

#[test]
fn twilio_flow_parameters_win_over_the_numbers_of_the_same_name() {
    let mut enc = Encoder::new(
        Protocol::Twilio,
        StreamInfo {
            custom_parameters: vec![("to_number".into(), "flow's own".into())],
            ..info()
        },
    );
    let mut out = String::new();
    enc.start(&mut out);
    assert_eq!(
        value(&out)["start"]["customParameters"],
        json!({"to_number": "flow's own", "from_number": "+919876543210"})
    );
}

#[test]
fn exotel_media_dtmf_mark_stop() {
    let mut enc = Encoder::new(Protocol::Exotel, info());
    let mut out = String::new();
    enc.connected(&mut out);
    enc.start(&mut out);

    enc.media(&[1, -2, 300], 0, &mut out);
    let v = value(&out);
    assert_eq!(
        v,
        json!({
            "event": "media",
            "sequence_number": "2",
            "stream_sid": "MZ0001",
            "media": {"chunk": "1", "timestamp": "0", "payload": v["media"]["payload"].clone()}
        })
    );
    assert_eq!(payload_bytes(&v), [1, 0, 0xfe, 0xff, 0x2c, 0x01]);

    enc.media(&[0; 800], 100, &mut out);
    let v = value(&out);
    assert_eq!(v["sequence_number"], json!("3"));
    assert_eq!(v["media"]["chunk"], json!("2"));
    assert_eq!(v["media"]["timestamp"], json!("100"));
    assert_eq!(payload_bytes(&v).len(), 1600);

    enc.dtmf('5', 100, &mut out);
    assert_eq!(
        value(&out),
        json!({
            "event": "dtmf",
            "sequence_number": "4",
            "stream_sid": "MZ0001",
            "dtmf": {"digit": "5", "duration": "100"}
        })
    );

    enc.mark(r#"greeting "1""#, &mut out);
    assert_eq!(
        value(&out),
        json!({
            "event": "mark",
            "sequence_number": "5",
            "stream_sid": "MZ0001",
            "mark": {"name": "greeting \"1\""}
        })
    );

    enc.media(&[7], 200, &mut out);
    let v = value(&out);
    assert_eq!(v["sequence_number"], json!("6"));
    assert_eq!(v["media"]["chunk"], json!("3"));

    enc.stop(StopReason::CallEnded, &mut out);
    assert_eq!(
        value(&out),
        json!({
            "event": "stop",
            "sequence_number": "7",
            "stream_sid": "MZ0001",
            "stop": {"call_sid": "CA0002", "account_sid": "AC0003", "reason": "callended"}
        })
    );
    enc.stop(StopReason::Stopped, &mut out);
    let v = value(&out);
    assert_eq!(v["stop"]["reason"], json!("stopped"));
    assert_eq!(v["sequence_number"], json!("8"));
    assert_eq!(enc.sequence_number(), 8);
    assert_eq!(enc.chunk_number(), 3);
}

#[test]
fn twilio_media_dtmf_mark_stop() {
    let mut enc = Encoder::new(Protocol::Twilio, info());
    let mut out = String::new();
    enc.connected(&mut out);
    enc.start(&mut out);

    let pcm: Vec<i16> = (0..160).map(|i| (i * 100 - 8000) as i16).collect();
    enc.media(&pcm, 0, &mut out);
    let v = value(&out);
    assert_eq!(
        v,
        json!({
            "event": "media",
            "sequenceNumber": "2",
            "streamSid": "MZ0001",
            "media": {
                "track": "inbound",
                "chunk": "1",
                "timestamp": "0",
                "payload": v["media"]["payload"].clone()
            }
        })
    );
    let expected: Vec<u8> = pcm.iter().map(|&s| ulaw_encode(s)).collect();
    assert_eq!(payload_bytes(&v), expected);

    enc.media(&pcm, 20, &mut out);
    let v = value(&out);
    assert_eq!(v["sequenceNumber"], json!("3"));
    assert_eq!(v["media"]["chunk"], json!("2"));
    assert_eq!(v["media"]["timestamp"], json!("20"));

    enc.dtmf('#', 250, &mut out);
    assert_eq!(
        value(&out),
        json!({
            "event": "dtmf",
            "sequenceNumber": "4",
            "streamSid": "MZ0001",
            "dtmf": {"track": "inbound_track", "digit": "#"}
        })
    );

    enc.mark("m1", &mut out);
    assert_eq!(
        value(&out),
        json!({
            "event": "mark",
            "sequenceNumber": "5",
            "streamSid": "MZ0001",
            "mark": {"name": "m1"}
        })
    );

    enc.stop(StopReason::CallEnded, &mut out);
    assert_eq!(
        value(&out),
        json!({
            "event": "stop",
            "sequenceNumber": "6",
            "streamSid": "MZ0001",
            "stop": {"accountSid": "AC0003", "callSid": "CA0002"}
        })
    );
}

#[test]
fn track_media_after_a_hand_off() {
    for protocol in [Protocol::Exotel, Protocol::Twilio] {
        let (seq, sid) = (protocol.sequence_key(), protocol.sid_key());
        let mut enc = Encoder::new(protocol, info());
        let mut out = String::new();
        enc.start(&mut out);
        enc.media(&[1; 160], 0, &mut out);
        // The caller's track goes on from the chunks sent before; the agent's starts at 1.
        enc.track_media(Track::Inbound, &[2; 160], 20, &mut out);
        let v = value(&out);
        assert_eq!(
            v,
            json!({
                "event": "media",
                seq: "3",
                sid: "MZ0001",
                "media": {
                    "track": "inbound",
                    "chunk": "2",
                    "timestamp": "20",
                    "payload": v["media"]["payload"].clone()
                }
            }),
            "{protocol}"
        );
        enc.track_media(Track::Outbound, &[-3; 160], 20, &mut out);
        let v = value(&out);
        assert_eq!(v[seq], json!("4"));
        assert_eq!(v["media"]["track"], json!("outbound"));
        assert_eq!(v["media"]["chunk"], json!("1"));
        let expected: Vec<u8> = match protocol {
            Protocol::Exotel => [-3i16; 160].iter().flat_map(|s| s.to_le_bytes()).collect(),
            Protocol::Twilio => vec![ulaw_encode(-3); 160],
        };
        assert_eq!(payload_bytes(&v), expected);
        enc.track_media(Track::Outbound, &[0; 160], 40, &mut out);
        assert_eq!(value(&out)["media"]["chunk"], json!("2"));
        assert_eq!(enc.track_chunk_number(Track::Inbound), 2);
        assert_eq!(enc.track_chunk_number(Track::Outbound), 2);
        assert_eq!(enc.chunk_number(), 2);
        // The caller's audio before a hand-off still has no track in Exotel's dialect.
        enc.media(&[0; 160], 60, &mut out);
        assert_eq!(
            value(&out)["media"].get("track").is_some(),
            protocol == Protocol::Twilio
        );
    }
}

#[test]
fn output_buffer_is_reused() {
    let mut enc = Encoder::new(Protocol::Exotel, info());
    let mut out = String::new();
    let pcm = [123i16; 800];
    enc.media(&pcm, 0, &mut out);
    let capacity = out.capacity();
    let ptr = out.as_ptr();
    for t in 1..20 {
        enc.media(&pcm, t * 100, &mut out);
        assert_eq!(out.capacity(), capacity);
        assert_eq!(out.as_ptr(), ptr);
    }
    enc.mark("x", &mut out);
    assert!(!out.contains("payload"), "output cleared first: {out}");
}

#[test]
fn escapes_strings() {
    let nasty =
        "say \"hi\" \\ back\\slash\nnew\tline \u{1} \u{1f} caf\u{e9} \u{20ac} \u{1f600} \u{7f}";
    let mut enc = Encoder::new(
        Protocol::Exotel,
        StreamInfo {
            stream_sid: "MZ\"q\\".into(),
            from: "\"Alice\" <sip:a@b>".into(),
            custom_parameters: vec![
                (nasty.into(), nasty.into()),
                ("k\"ey".into(), "v".into()),
                ("k\"ey".into(), "ignored duplicate".into()),
            ],
            ..info()
        },
    );
    let mut out = String::new();
    enc.start(&mut out);
    assert!(!out.contains('\n') && !out.contains('\u{1}'), "{out}");
    let v = value(&out);
    assert_eq!(v["stream_sid"], json!("MZ\"q\\"));
    assert_eq!(v["start"]["stream_sid"], json!("MZ\"q\\"));
    assert_eq!(v["start"]["from"], json!("\"Alice\" <sip:a@b>"));
    let params = v["start"]["custom_parameters"].as_object().unwrap();
    assert_eq!(params.len(), 2);
    assert_eq!(params[nasty], json!(nasty));
    assert_eq!(params["k\"ey"], json!("v"));

    let mut enc = Encoder::new(
        Protocol::Twilio,
        StreamInfo {
            custom_parameters: vec![(nasty.into(), nasty.into())],
            ..info()
        },
    );
    enc.start(&mut out);
    let v = value(&out);
    assert_eq!(v["start"]["customParameters"][nasty], json!(nasty));
    enc.mark(nasty, &mut out);
    assert_eq!(value(&out)["mark"]["name"], json!(nasty));
}

#[test]
fn escapes_like_serde_json() {
    for s in [
        "",
        "plain",
        "\"",
        "\\",
        "\u{0}\u{8}\u{c}\u{1b}",
        "ü€😀",
        "a\"b\\c\rd",
    ] {
        let mut out = String::new();
        write_json_str(&mut out, s);
        assert_eq!(out, serde_json::to_string(s).unwrap(), "{s:?}");
    }
}

fn bot_media(payload: &str) -> String {
    json!({"event": "media", "stream_sid": "MZ0001", "media": {"payload": payload}}).to_string()
}

#[test]
fn exotel_pcm_round_trip() {
    let pcm: Vec<i16> = (0..3200i32)
        .map(|i| ((i * 2731) % 65536 - 32768) as i16)
        .chain([i16::MIN, -1, 0, 1, i16::MAX])
        .collect();
    let mut enc = Encoder::new(Protocol::Exotel, info());
    let mut out = String::new();
    enc.media(&pcm, 0, &mut out);
    let v = value(&out);
    let frame = bot_media(v["media"]["payload"].as_str().unwrap());
    assert_eq!(
        parse(Protocol::Exotel, &frame).unwrap(),
        BotMessage::Media(pcm)
    );
}

#[test]
fn twilio_mulaw_round_trip() {
    let pcm: Vec<i16> = (i16::MIN..=i16::MAX)
        .step_by(7)
        .chain([i16::MAX, -1, 0])
        .collect();
    let mut enc = Encoder::new(Protocol::Twilio, info());
    let mut out = String::new();
    enc.media(&pcm, 0, &mut out);
    let v = value(&out);
    let frame = json!({"event": "media", "streamSid": "MZ0001", "media": {"payload": v["media"]["payload"]}})
        .to_string();
    let expected: Vec<i16> = pcm.iter().map(|&s| ulaw_decode(ulaw_encode(s))).collect();
    assert_eq!(
        parse(Protocol::Twilio, &frame).unwrap(),
        BotMessage::Media(expected)
    );
}

#[test]
fn long_payloads_decode_across_steps() {
    // Lengths around the 4096-character decoding step, padded and unpadded.
    for samples in [1535usize, 1536, 1537, 3072, 10_000, 10_001] {
        let pcm: Vec<i16> = (0..samples).map(|i| (i as i16).wrapping_mul(37)).collect();
        let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
        let padded = STANDARD.encode(&bytes);
        let unpadded = padded.trim_end_matches('=');
        for payload in [padded.as_str(), unpadded] {
            assert_eq!(
                parse(Protocol::Exotel, &bot_media(payload)).unwrap(),
                BotMessage::Media(pcm.clone()),
                "{samples} samples"
            );
        }
        let codes: Vec<u8> = (0..samples).map(|i| i as u8).collect();
        let expected: Vec<i16> = codes.iter().map(|&c| ulaw_decode(c)).collect();
        assert_eq!(
            parse(Protocol::Twilio, &bot_media(&STANDARD.encode(&codes))).unwrap(),
            BotMessage::Media(expected)
        );
    }
}

#[test]
fn parse_into_reuses_the_buffer() {
    let frame = bot_media(&STANDARD.encode([0u8; 640]));
    let mut buf = Vec::with_capacity(1000);
    let ptr = buf.as_ptr();
    for _ in 0..5 {
        assert_eq!(
            parse_into(Protocol::Exotel, &frame, &mut buf).unwrap(),
            BotMessageRef::Media
        );
        assert_eq!(buf.len(), 320);
        assert_eq!(buf.as_ptr(), ptr);
    }
    // Non-media frames leave the buffer empty.
    let mark = r#"{"event":"mark","mark":{"name":"a"}}"#;
    assert_eq!(
        parse_into(Protocol::Exotel, mark, &mut buf).unwrap(),
        BotMessageRef::Mark("a".into())
    );
    assert!(buf.is_empty());
    assert_eq!(
        parse_into(Protocol::Exotel, r#"{"event":"stats","x":1}"#, &mut buf).unwrap(),
        BotMessageRef::Other("stats".into())
    );
}

#[test]
fn accepts_any_sid_key() {
    let payload = STANDARD.encode([1u8, 0, 2, 0]);
    for sid in [
        r#""stream_sid":"MZ1","#,
        r#""streamSid":"MZ1","#,
        "",
        r#""streamSid":null,"#,
    ] {
        let frame = format!(r#"{{"event":"media",{sid}"media":{{"payload":"{payload}"}}}}"#);
        assert_eq!(
            parse(Protocol::Exotel, &frame).unwrap(),
            BotMessage::Media(vec![1, 2]),
            "{frame}"
        );
        let frame = format!(r#"{{{sid}"event":"clear"}}"#);
        assert_eq!(parse(Protocol::Twilio, &frame).unwrap(), BotMessage::Clear);
    }
}

#[test]
fn accepts_numbers_as_strings_or_numbers() {
    let payload = STANDARD.encode([0xffu8; 4]);
    for (seq, chunk, ts) in [
        ("\"5\"", "\"2\"", "\"200\""),
        ("5", "2", "200"),
        ("5.0", "\"2\"", "200"),
    ] {
        let frame = format!(
            r#"{{"event":"media","sequence_number":{seq},"sequenceNumber":{seq},"stream_sid":"MZ1","media":{{"chunk":{chunk},"timestamp":{ts},"payload":"{payload}"}}}}"#
        );
        assert_eq!(
            parse(Protocol::Exotel, &frame).unwrap(),
            BotMessage::Media(vec![-1, -1]),
            "{frame}"
        );
        assert_eq!(
            parse(Protocol::Twilio, &frame).unwrap(),
            BotMessage::Media(vec![ulaw_decode(0xff); 4])
        );
    }
    // A mark named by a number.
    assert_eq!(
        parse(
            Protocol::Exotel,
            r#"{"event":"mark","sequence_number":9,"mark":{"name":42}}"#
        )
        .unwrap(),
        BotMessage::Mark("42".into())
    );
}

#[test]
fn control_messages() {
    for protocol in [Protocol::Exotel, Protocol::Twilio] {
        assert_eq!(
            parse(protocol, r#"{"event":"clear","stream_sid":"MZ1"}"#).unwrap(),
            BotMessage::Clear
        );
        assert_eq!(
            parse(
                protocol,
                r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"turn-3 \"é\""}}"#
            )
            .unwrap(),
            BotMessage::Mark("turn-3 \"é\"".into())
        );
        assert_eq!(
            parse(
                protocol,
                r#"{"event":"transfer","transfer":{"to":"sip:agent@pbx.example"}}"#
            )
            .unwrap(),
            BotMessage::Transfer("sip:agent@pbx.example".into())
        );
        assert_eq!(
            parse(
                protocol,
                r#"{"stream_sid":"MZ1","transfer":{"to":"+918047491899"},"event":"transfer"}"#
            )
            .unwrap(),
            BotMessage::Transfer("+918047491899".into())
        );
        // No target: the flow's agent.
        for frame in [
            r#"{"event":"transfer"}"#,
            r#"{"event":"transfer","transfer":{}}"#,
            r#"{"event":"transfer","transfer":{"to":""}}"#,
        ] {
            assert_eq!(
                parse(protocol, frame).unwrap(),
                BotMessage::Transfer(String::new()),
                "{frame}"
            );
        }
        assert_eq!(
            parse(
                protocol,
                r#"{"event":"transfer","streamSid":"MZ1","transfer":{"to":918047491899}}"#
            )
            .unwrap(),
            BotMessage::Transfer("918047491899".into())
        );
        assert_eq!(
            parse(protocol, r#"{"event":"hangup"}"#).unwrap(),
            BotMessage::Hangup
        );
        assert_eq!(
            parse(
                protocol,
                r#"{"event":"hangup","stream_sid":"MZ1","hangup":{}}"#
            )
            .unwrap(),
            BotMessage::Hangup
        );
        assert_eq!(
            parse(
                protocol,
                r#"{"event":"start","start":{"media":"odd"},"media":[1,2]}"#
            )
            .unwrap(),
            BotMessage::Other("start".into())
        );
        assert_eq!(
            parse(
                protocol,
                r#"{"event":"something_new","data":{"a":[1,{"b":null}]}}"#
            )
            .unwrap(),
            BotMessage::Other("something_new".into())
        );
    }
}

#[test]
fn media_payload_with_json_escapes() {
    // `\/` is a legal JSON escape for `/`, which base64 uses.
    let bytes = [0xffu8, 0xff, 0xfb, 0xff];
    let b64 = STANDARD.encode(bytes);
    assert!(b64.contains('/'), "{b64}");
    let frame = format!(
        r#"{{"event":"media","media":{{"payload":"{}"}}}}"#,
        b64.replace('/', "\\/")
    );
    assert_eq!(
        parse(Protocol::Exotel, &frame).unwrap(),
        BotMessage::Media(vec![-1, -5])
    );
    // An empty payload is zero samples.
    assert_eq!(
        parse(Protocol::Exotel, &bot_media("")).unwrap(),
        BotMessage::Media(vec![])
    );
}

#[test]
fn errors() {
    let p = Protocol::Exotel;
    assert!(matches!(parse(p, "not json"), Err(FrameError::NotJson(_))));
    assert!(matches!(
        parse(p, r#"{"event":"media""#),
        Err(FrameError::NotJson(_))
    ));
    assert!(matches!(
        parse(p, r#"{"event":"clear"} x"#),
        Err(FrameError::NotJson(_))
    ));
    assert!(matches!(parse(p, ""), Err(FrameError::NotJson(_))));
    assert!(matches!(parse(p, "[1,2]"), Err(FrameError::NotObject)));
    assert!(matches!(parse(p, "\"media\""), Err(FrameError::NotObject)));
    assert!(matches!(
        parse(p, r#"{"stream_sid":"MZ1"}"#),
        Err(FrameError::NoEvent)
    ));
    assert!(matches!(
        parse(p, r#"{"event":7}"#),
        Err(FrameError::NoEvent)
    ));
    assert!(matches!(
        parse(p, r#"{"event":null}"#),
        Err(FrameError::NoEvent)
    ));
    assert!(matches!(
        parse(p, r#"{"event":"media"}"#),
        Err(FrameError::MissingField("media"))
    ));
    assert!(matches!(
        parse(p, r#"{"event":"media","media":{"chunk":"1"}}"#),
        Err(FrameError::MissingField("media.payload"))
    ));
    assert!(matches!(
        parse(p, r#"{"event":"media","media":"AAAA"}"#),
        Err(FrameError::BadField("media"))
    ));
    assert!(matches!(
        parse(p, r#"{"event":"media","media":{"payload":1234}}"#),
        Err(FrameError::BadField("media.payload"))
    ));
    assert!(matches!(
        parse(p, r#"{"event":"mark","mark":{}}"#),
        Err(FrameError::MissingField("mark.name"))
    ));
    assert!(matches!(
        parse(p, r#"{"event":"mark"}"#),
        Err(FrameError::MissingField("mark"))
    ));
    assert!(matches!(
        parse(p, r#"{"event":"transfer","transfer":{"to":["a"]}}"#),
        Err(FrameError::BadField("transfer.to"))
    ));
    assert!(matches!(
        parse(p, r#"{"event":"transfer","transfer":"sip:a@b"}"#),
        Err(FrameError::BadField("transfer"))
    ));

    for bad in ["AA!A", "A", "AAAA=AAA", "=AAA", "AAAA AAAA"] {
        for protocol in [Protocol::Exotel, Protocol::Twilio] {
            let err = parse(protocol, &bot_media(bad)).unwrap_err();
            assert!(matches!(err, FrameError::BadBase64(_)), "{bad:?}: {err:?}");
        }
    }
    // An invalid byte far into a long payload is reported at its offset in the payload.
    let mut long = STANDARD.encode(vec![0u8; 6000]);
    long.replace_range(5000..5001, "*");
    match parse(p, &bot_media(&long)) {
        Err(FrameError::BadBase64(DecodeError::InvalidByte(5000, b'*'))) => {}
        other => panic!("{other:?}"),
    }

    // 3 bytes is not a whole number of 16-bit samples (but fine as mu-law).
    let odd = STANDARD.encode([1u8, 2, 3]);
    assert!(matches!(
        parse(p, &bot_media(&odd)),
        Err(FrameError::OddPayload { bytes: 3 })
    ));
    assert_eq!(
        parse(Protocol::Twilio, &bot_media(&odd)).unwrap(),
        BotMessage::Media(vec![ulaw_decode(1), ulaw_decode(2), ulaw_decode(3)])
    );
    let odd_long = STANDARD.encode(vec![0u8; 5001]);
    assert!(matches!(
        parse(p, &bot_media(&odd_long)),
        Err(FrameError::OddPayload { .. })
    ));

    // On error the buffer is left empty.
    let mut buf = vec![1i16, 2, 3];
    assert!(parse_into(p, &bot_media(&odd_long), &mut buf).is_err());
    assert!(buf.is_empty());
}

#[test]
fn error_messages_say_what_was_wrong() {
    let msg = |text: &str| parse(Protocol::Exotel, text).unwrap_err().to_string();
    assert!(msg("{").contains("not valid JSON"));
    assert!(msg("{}").contains("\"event\""));
    assert!(msg(r#"{"event":"media"}"#).contains("media"));
    assert!(msg(&bot_media("A!AA")).contains("base64"));
    assert!(msg(&bot_media("AAAA")).contains("3 bytes"));
}
