//! One function per parser of network input. Each takes any bytes; a panic is a finding.
//! The properties asserted are ones every input must satisfy, so a failed one is a bug too.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;

use voicegate_bridge::dialect::{self, Protocol};
use voicegate_rtp::{dtmf, rtcp};
use voicegate_sip::message::{self, Message, ParseError, Request};
use voicegate_sip::sdp::{self, Codec, CodecPreference, LocalMedia};
use voicegate_sip::{accept, digest, framing};

/// A fuzz target: any bytes in, a panic when something is wrong.
pub type Target = fn(&[u8]);

/// Every target, by name (the names of the cargo-fuzz targets in `fuzz/fuzz_targets/`).
pub const ALL: &[(&str, Target)] = &[
    ("sip_message", sip_message),
    ("sip_stream", sip_stream),
    ("sdp", sdp),
    ("rtp", rtp),
    ("rtcp", rtcp),
    ("dtmf", dtmf),
    ("digest", digest),
    ("bot_dialect", bot_dialect),
];

/// A SIP datagram: parsed, and what the core reads of a request (routing, the answer's
/// target, Accept); a request that parses still parses, unchanged in what identifies its
/// transaction, after being written out again.
pub fn sip_message(data: &[u8]) {
    match message::parse(data) {
        Ok(Message::Request(request)) => {
            read_like_the_core(&request);
            let again = match message::parse(&request.to_bytes()) {
                Ok(Message::Request(again)) => again,
                other => panic!("a parsed request written out no longer parses: {other:?}"),
            };
            assert_eq!(again.method, request.method);
            assert_eq!(again.uri, request.uri);
            assert_eq!(again.call_id(), request.call_id());
            assert_eq!(again.cseq(), request.cseq());
            assert_eq!(again.branch(), request.branch());
            assert_eq!(again.body, request.body);
        }
        Ok(Message::Response(response)) => {
            let _ = response.cseq();
            let _ = message::top_via(&response.headers);
            let _ = response.to_bytes();
        }
        Err(ParseError::BadRequest { request, .. }) => read_like_the_core(&request),
        Err(_) => {}
    }
}

fn read_like_the_core(request: &Request) {
    let source = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5060);
    let _ = (
        request.call_id(),
        request.cseq(),
        request.from_tag(),
        request.to_tag(),
    );
    let _ = (request.branch(), request.uri_user(), request.max_forwards());
    let _ = request.body_is_sdp();
    let _ = accept::accepts(&request.headers, "application/sdp");
    let _ = message::top_via(&request.headers);
    let _ = message::response_target(&request.headers, source, false);
    for name in ["From", "To", "Contact", "Route", "Record-Route"] {
        for value in request.headers.get_all(name) {
            for single in message::split_values(value) {
                let _ = message::name_addr_uri(single);
                let _ = message::tag_param(single);
            }
        }
    }
    let mut stamped = request.headers.clone();
    message::stamp_received(&mut stamped, source);
    let _ = request
        .response(400, "Bad Request")
        .with_to_tag("t")
        .to_bytes();
}

/// Bytes arriving on a TCP/TLS connection: framed message by message as the transport does,
/// each frame within the buffer and handed to the parser.
pub fn sip_stream(data: &[u8]) {
    const MAX: usize = 4096;
    let mut rest = data;
    while !rest.is_empty() {
        match framing::check(rest, MAX) {
            Ok(framing::Frame::Incomplete) | Err(_) => return,
            Ok(framing::Frame::KeepAlive(n)) => {
                assert!(
                    n > 0 && n <= rest.len(),
                    "keep-alive of {n} in {}",
                    rest.len()
                );
                rest = &rest[n..];
            }
            Ok(framing::Frame::Message(n)) => {
                assert!(
                    n > 0 && n <= rest.len().min(MAX),
                    "frame of {n} in {}",
                    rest.len()
                );
                let _ = message::parse(&rest[..n]);
                rest = &rest[n..];
            }
        }
    }
}

/// An SDP offer (or answer): parsed, negotiated both ways and answered, as a call does.
pub fn sdp(data: &[u8]) {
    let Ok(offer) = sdp::parse(data) else {
        return;
    };
    let prefs = [Codec::Pcma, Codec::Pcmu, Codec::Opus];
    let local = LocalMedia {
        address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        port: 40000,
        session_id: 1,
        session_version: 1,
    };
    for preference in [CodecPreference::Offer, CodecPreference::Ours] {
        if let Ok(negotiated) = sdp::negotiate_answer(&offer, &prefs, preference) {
            let answer = sdp::build_answer(&offer, &local, &negotiated);
            assert!(
                sdp::parse(answer.as_bytes()).is_ok(),
                "our own answer does not parse:\n{answer}"
            );
        }
    }
    let _ = sdp::negotiate_from_answer(&offer, &prefs);
    for media in &offer.media {
        let _ = (
            media.is_audio(),
            media.is_plain_rtp(),
            media.telephone_event(),
        );
        for pt in media.payload_types() {
            let _ = media.codec_of(pt);
        }
    }
}

/// An RTP datagram: the header as the media path reads it, its payload within the packet,
/// and the payload as an RFC 4733 event.
pub fn rtp(data: &[u8]) {
    let Ok(reader) = rtp_rs::RtpReader::new(data) else {
        return;
    };
    let offset = reader.payload_offset();
    let payload = reader.payload();
    assert!(
        offset + payload.len() <= data.len(),
        "payload past the packet"
    );
    let _ = (reader.sequence_number(), reader.timestamp(), reader.ssrc());
    let _ = (reader.payload_type(), reader.mark(), reader.padding());
    let _ = reader.csrc().count();
    let mut receiver = dtmf::Rfc4733Receiver::new(8000);
    let _ = receiver.on_packet(reader.timestamp(), reader.mark(), payload, Instant::now());
}

/// A (compound) RTCP datagram; a receiver or sender report read from it writes back as the
/// same report.
pub fn rtcp(data: &[u8]) {
    let Ok(packets) = rtcp::parse(data) else {
        return;
    };
    let Some(first) = packets.first() else {
        return;
    };
    let mut out = Vec::new();
    match first {
        rtcp::RtcpPacket::ReceiverReport { ssrc, reports } if reports.len() <= 31 => {
            rtcp::write_receiver_report(&mut out, *ssrc, reports, "fuzz");
        }
        rtcp::RtcpPacket::SenderReport {
            ssrc,
            ntp,
            rtp_timestamp,
            packet_count,
            octet_count,
            reports,
        } if reports.len() <= 31 => {
            rtcp::write_sender_report(
                &mut out,
                *ssrc,
                *ntp,
                *rtp_timestamp,
                *packet_count,
                *octet_count,
                reports,
                "fuzz",
            );
        }
        _ => return,
    }
    let again = rtcp::parse(&out).expect("our own report parses");
    assert_eq!(again.first(), Some(first), "report changed in a round trip");
    for block in packets.iter().flat_map(|p| match p {
        rtcp::RtcpPacket::ReceiverReport { reports, .. }
        | rtcp::RtcpPacket::SenderReport { reports, .. } => reports.as_slice(),
        _ => &[],
    }) {
        let _ = rtcp::round_trip(block, rtcp::ntp_now());
    }
}

/// RFC 4733 telephone-events: the data cut into 4-byte event payloads with a timestamp
/// each, fed to one receiver in order; and the same bytes as a SIP INFO body.
pub fn dtmf(data: &[u8]) {
    let start = Instant::now();
    let mut receiver = dtmf::Rfc4733Receiver::new(8000);
    for (i, chunk) in data.chunks(6).enumerate() {
        let (stamp, payload) = chunk.split_at(chunk.len().min(2));
        let timestamp = u32::from(u16::from_be_bytes([
            stamp.first().copied().unwrap_or(0),
            stamp.get(1).copied().unwrap_or(0),
        ])) * 160;
        let now = start + Duration::from_millis(20 * i as u64);
        if let Some(event) = receiver.on_packet(timestamp, false, payload, now) {
            assert_eq!(
                dtmf::digit_to_event(event.digit).map(dtmf::event_to_digit),
                Some(Some(event.digit))
            );
        }
        let _ = receiver.poll_timeout(now);
    }
    let _ = receiver.stats();
    for content_type in ["application/dtmf-relay", "application/dtmf"] {
        if let Some(event) = voicegate_sip::info::parse_dtmf(content_type, data) {
            assert!(
                dtmf::digit_to_event(event.digit).is_some(),
                "INFO digit {event:?}"
            );
        }
    }
}

/// An Authorization header value (and, as a challenge, a WWW-Authenticate one).
pub fn digest(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = digest::parse_params(&text);
    let _ = digest_server().verify(&text, "INVITE", DIGEST_NOW, |user| {
        (user == "alice").then(|| "secret".to_string())
    });
    let _ = digest::client_authorization(
        &text,
        "REGISTER",
        "sip:example.com",
        "alice",
        "secret",
        "c",
        1,
    );
    let _ = digest::pick_challenge(text.split('\n'));
}

const DIGEST_NOW: u64 = 1_000_000;

/// The same server every run, so an Authorization made for its challenge (a corpus seed,
/// [`valid_authorization`]) gets past the nonce checks.
fn digest_server() -> digest::DigestServer {
    digest::DigestServer::with_secret("voicegate", Duration::from_secs(300), [7; 32])
}

/// An Authorization that [`digest`]'s server accepts: a seed that reaches the hash checks.
pub fn valid_authorization() -> String {
    let challenge = digest_server().challenge(DIGEST_NOW, false).remove(0);
    digest::client_authorization(
        &challenge,
        "INVITE",
        "sip:echo@example.com",
        "alice",
        "secret",
        "0a4f113b",
        1,
    )
    .expect("our own challenge is answerable")
}

/// A text frame from the bot, in both dialects; the allocation-free parse agrees with the
/// plain one.
pub fn bot_dialect(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut samples = Vec::new();
    for protocol in [Protocol::Exotel, Protocol::Twilio] {
        let plain = dialect::parse(protocol, text);
        let reused = dialect::parse_into(protocol, text, &mut samples);
        assert_eq!(
            plain.is_ok(),
            reused.is_ok(),
            "parse and parse_into disagree"
        );
        if let Ok(dialect::BotMessage::Media(decoded)) = plain {
            assert_eq!(decoded, samples, "parse and parse_into decode differently");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digest seed is only worth having if it reaches the response check.
    #[test]
    fn the_digest_seed_is_accepted_by_the_targets_server() {
        let verdict = digest_server().verify(&valid_authorization(), "INVITE", DIGEST_NOW, |_| {
            Some("secret".into())
        });
        assert!(matches!(verdict, digest::Verdict::Ok { .. }), "{verdict:?}");
    }
}
