//! SDP offer/answer (RFC 4566, RFC 3264) for audio calls.
//!
//! Plain data and pure functions: [`parse`] turns a body into a
//! [`SessionDescription`], [`negotiate_answer`] / [`negotiate_from_answer`]
//! decide what both sides use, and [`build_answer`] / [`build_offer`] render
//! our side. Nothing here does I/O, so the SIP layer decides what to do with
//! errors (typically `488 Not Acceptable Here`).
//!
//! The parser is deliberately lenient about what it ignores (unknown lines,
//! unknown or malformed attributes) and strict only where a mistake would
//! make us send media to the wrong place (`v=`, `c=` and `m=` lines).

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

/// The ptime we use when the peer does not ask for another one.
pub const DEFAULT_PTIME: u32 = 20;

/// Largest ptime we honour; larger requests fall back to [`DEFAULT_PTIME`]
/// so a hostile offer cannot make us buffer seconds of audio per packet.
pub const MAX_PTIME: u32 = 120;

/// Payload type we use for telephone-event (RFC 4733) in our own offers.
pub const TELEPHONE_EVENT_PT: u8 = 101;

/// How much of an offending line an error message quotes, so a huge or
/// hostile line cannot bloat logs.
const EXCERPT_CHARS: usize = 80;

pub use voicegate_codec::{Codec, OPUS_PT};

/// The rtpmap encoding parameters: RFC 7587 requires `opus/48000/2` whatever is sent.
fn rtpmap_channels(codec: Codec) -> Option<u8> {
    match codec {
        Codec::Opus => Some(2),
        Codec::Pcma | Codec::Pcmu => None,
    }
}

/// The fmtp we write for a codec, if any.
fn fmtp(codec: Codec) -> Option<&'static str> {
    match codec {
        // In-band FEC is what makes Opus survive loss; mono is what telephony carries.
        Codec::Opus => Some("useinbandfec=1; stereo=0; sprop-stereo=0"),
        Codec::Pcma | Codec::Pcmu => None,
    }
}

/// The codec an `a=rtpmap` describes, if it is one of ours with the right clock rate and mono
/// (a PCMU/16000 line is not our PCMU).
pub fn codec_of_rtpmap(rtpmap: &RtpMap) -> Option<Codec> {
    let codec = Codec::from_name(&rtpmap.encoding)?;
    let channels_ok = match codec {
        Codec::Opus => matches!(rtpmap.channels, None | Some(1) | Some(2)),
        Codec::Pcma | Codec::Pcmu => matches!(rtpmap.channels, None | Some(1)),
    };
    (rtpmap.clock_rate == codec.clock_rate() && channels_ok).then_some(codec)
}

/// Encoding name of a well-known static payload type (RFC 3551), used to
/// name what a peer offered when no `a=rtpmap` says it.
pub fn static_payload_name(payload_type: u8) -> Option<&'static str> {
    match payload_type {
        0 => Some("PCMU"),
        3 => Some("GSM"),
        4 => Some("G723"),
        8 => Some("PCMA"),
        9 => Some("G722"),
        18 => Some("G729"),
        _ => None,
    }
}

/// Media direction attribute (RFC 3264 §5.1), always from the point of view
/// of the side that wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// The direction an answerer uses for an offer with this direction (sendonly -> recvonly, recvonly -> sendonly, others unchanged).
    pub fn reversed(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }

    /// Attribute name, as in `a=sendrecv`.
    /// Whether this direction receives media (sendrecv or recvonly).
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    /// Whether this direction sends media (sendrecv or sendonly).
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// Parses an attribute name; `None` for anything that is not a direction.
    pub fn from_attribute(name: &str) -> Option<Direction> {
        [
            Direction::SendRecv,
            Direction::SendOnly,
            Direction::RecvOnly,
            Direction::Inactive,
        ]
        .into_iter()
        .find(|d| d.as_str().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parsed session description (only what voicegate needs; unknown lines ignored).
#[derive(Clone, Debug, PartialEq)]
pub struct SessionDescription {
    /// Session-level `c=` address; the fallback for media without their own.
    pub connection: Option<IpAddr>,
    /// Session-level direction attribute; the fallback for media without their own.
    pub direction: Option<Direction>,
    /// The `m=` sections in order (order matters: answers mirror it).
    pub media: Vec<MediaDescription>,
}

/// One `m=` section.
#[derive(Clone, Debug, PartialEq)]
pub struct MediaDescription {
    /// "audio", "video", ...
    pub kind: String,
    /// Port from the `m=` line; 0 means the stream is disabled.
    pub port: u16,
    /// "RTP/AVP", "RTP/SAVP", ...
    pub protocol: String,
    /// As on the m= line (payload types; kept as strings so non-RTP formats survive).
    pub formats: Vec<String>,
    /// `a=rtpmap` lines of this section.
    pub rtpmaps: Vec<RtpMap>,
    /// `a=fmtp` lines of this section, by payload type.
    pub fmtps: Vec<(u8, String)>,
    /// Media-level `c=`.
    pub connection: Option<IpAddr>,
    /// Media-level direction attribute.
    pub direction: Option<Direction>,
    /// `a=ptime`, in milliseconds.
    pub ptime: Option<u32>,
    /// `a=rtcp-mux` (RFC 5761) present.
    pub rtcp_mux: bool,
}

impl MediaDescription {
    /// The `a=rtpmap` for a payload type, if any.
    pub fn rtpmap(&self, payload_type: u8) -> Option<&RtpMap> {
        self.rtpmaps.iter().find(|r| r.payload_type == payload_type)
    }

    /// Whether this is an audio section.
    pub fn is_audio(&self) -> bool {
        self.kind.eq_ignore_ascii_case("audio")
    }

    /// Whether we can carry this section: plain RTP (AVP or AVPF, no SRTP).
    pub fn is_plain_rtp(&self) -> bool {
        self.protocol.eq_ignore_ascii_case("RTP/AVP")
            || self.protocol.eq_ignore_ascii_case("RTP/AVPF")
    }

    /// Numeric payload types on the m= line, in order (non-numeric formats skipped).
    pub fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats.iter().filter_map(|f| f.parse().ok())
    }

    /// The codec a payload type of this section carries: its rtpmap decides
    /// if present, otherwise the static assignment.
    pub fn codec_of(&self, payload_type: u8) -> Option<Codec> {
        match self.rtpmap(payload_type) {
            Some(rtpmap) => codec_of_rtpmap(rtpmap),
            None => Codec::ALL
                .iter()
                .copied()
                .find(|c| c.static_payload_type() == Some(payload_type)),
        }
    }

    /// Payload type of telephone-event/8000 (RFC 4733), if offered.
    pub fn telephone_event(&self) -> Option<u8> {
        self.payload_types().find(|&pt| {
            self.rtpmap(pt).is_some_and(|r| {
                r.encoding.eq_ignore_ascii_case("telephone-event") && r.clock_rate == 8000
            })
        })
    }

    /// Human-readable names of the formats on the m= line, for error messages.
    fn format_names(&self) -> Vec<String> {
        self.formats
            .iter()
            .map(|format| {
                let Ok(pt) = format.parse::<u8>() else {
                    return format.clone();
                };
                match (self.rtpmap(pt), static_payload_name(pt)) {
                    (Some(rtpmap), _) => rtpmap.encoding.clone(),
                    (None, Some(name)) => name.to_owned(),
                    (None, None) => format!("PT {pt}"),
                }
            })
            .collect()
    }
}

/// One `a=rtpmap:<pt> <encoding>/<clock>[/<channels>]` attribute.
#[derive(Clone, Debug, PartialEq)]
pub struct RtpMap {
    pub payload_type: u8,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: Option<u8>,
}

/// Why a body is not an SDP we can use.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SdpError {
    #[error("SDP is not UTF-8")]
    NotUtf8,
    #[error("SDP body is empty")]
    Empty,
    #[error("missing v= line (SDP must start with v=0)")]
    MissingVersion,
    #[error("unsupported SDP version {0:?}")]
    UnsupportedVersion(String),
    #[error("bad c= line {line:?}: {reason}")]
    BadConnection { line: String, reason: &'static str },
    #[error("bad m= line {line:?}: {reason}")]
    BadMedia { line: String, reason: &'static str },
}

/// Parses an SDP body (RFC 4566). Lines may end in CRLF or LF; unknown lines
/// and attributes are ignored. Host names in `c=` are rejected rather than
/// resolved, since this module does no I/O.
pub fn parse(body: &[u8]) -> Result<SessionDescription, SdpError> {
    let text = std::str::from_utf8(body).map_err(|_| SdpError::NotUtf8)?;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());

    let first = lines.next().ok_or(SdpError::Empty)?;
    let version = first.strip_prefix("v=").ok_or(SdpError::MissingVersion)?;
    if version.trim() != "0" {
        return Err(SdpError::UnsupportedVersion(excerpt(version)));
    }

    let mut sd = SessionDescription {
        connection: None,
        direction: None,
        media: Vec::new(),
    };
    for line in lines {
        let Some((kind, value)) = split_line(line) else {
            continue;
        };
        match kind {
            'c' => {
                let address = parse_connection(value)?;
                match sd.media.last_mut() {
                    Some(media) => media.connection = Some(address),
                    None => sd.connection = Some(address),
                }
            }
            'm' => sd.media.push(parse_media(value)?),
            'a' => apply_attribute(&mut sd, value),
            _ => {}
        }
    }
    Ok(sd)
}

/// Splits `x=value` into its type letter and value; `None` for lines that
/// are not of that shape (ignored like unknown lines).
fn split_line(line: &str) -> Option<(char, &str)> {
    let (kind, value) = line.split_once('=')?;
    let mut chars = kind.chars();
    let letter = chars.next()?;
    chars.next().is_none().then_some((letter, value))
}

/// Parses the value of `c=IN IP4 <addr>[/ttl[/n]]` (or IP6).
fn parse_connection(value: &str) -> Result<IpAddr, SdpError> {
    let bad = |reason| SdpError::BadConnection {
        line: excerpt(value),
        reason,
    };
    let mut fields = value.split_whitespace();
    let (Some(net), Some(family), Some(address), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(bad("expected \"IN IP4|IP6 <address>\""));
    };
    if !net.eq_ignore_ascii_case("IN") {
        return Err(bad("network type is not IN"));
    }
    if !family.eq_ignore_ascii_case("IP4") && !family.eq_ignore_ascii_case("IP6") {
        return Err(bad("address type is not IP4 or IP6"));
    }
    // Multicast addresses carry /ttl and /count suffixes; we only need the address.
    let address = address.split('/').next().unwrap_or(address);
    address
        .parse()
        .map_err(|_| bad("address is not an IP address"))
}

/// Parses the value of `m=<media> <port>[/<count>] <proto> <fmt> ...`.
fn parse_media(value: &str) -> Result<MediaDescription, SdpError> {
    let bad = |reason| SdpError::BadMedia {
        line: excerpt(value),
        reason,
    };
    // Tokens are echoed into our answer, so refuse anything that is not
    // printable ASCII rather than reflect control characters back.
    if value
        .split_whitespace()
        .any(|t| !t.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(bad("non-printable characters"));
    }
    let mut fields = value.split_whitespace();
    let kind = fields.next().ok_or_else(|| bad("missing media type"))?;
    let port = fields.next().ok_or_else(|| bad("missing port"))?;
    let protocol = fields.next().ok_or_else(|| bad("missing protocol"))?;
    let port = port.split('/').next().unwrap_or(port);
    let port = port
        .parse()
        .map_err(|_| bad("port is not a number 0-65535"))?;
    Ok(MediaDescription {
        kind: kind.to_owned(),
        port,
        protocol: protocol.to_owned(),
        formats: fields.map(str::to_owned).collect(),
        rtpmaps: Vec::new(),
        fmtps: Vec::new(),
        connection: None,
        direction: None,
        ptime: None,
        rtcp_mux: false,
    })
}

/// Applies one `a=` attribute to the current media section (or the session
/// when no `m=` has been seen). Malformed attributes are ignored: they only
/// ever refine what the `m=` line already says.
fn apply_attribute(sd: &mut SessionDescription, value: &str) {
    let (name, arg) = match value.split_once(':') {
        Some((name, arg)) => (name.trim(), arg.trim()),
        None => (value.trim(), ""),
    };
    if let Some(direction) = Direction::from_attribute(name) {
        match sd.media.last_mut() {
            Some(media) => media.direction = Some(direction),
            None => sd.direction = Some(direction),
        }
        return;
    }
    // The remaining attributes we understand are media-level only.
    let Some(media) = sd.media.last_mut() else {
        return;
    };
    match name.to_ascii_lowercase().as_str() {
        "rtpmap" => media.rtpmaps.extend(parse_rtpmap(arg)),
        "fmtp" => {
            let (pt, params) = arg.split_once(char::is_whitespace).unwrap_or((arg, ""));
            if let Ok(pt) = pt.parse() {
                media.fmtps.push((pt, params.trim().to_owned()));
            }
        }
        "ptime" => {
            // Some stacks write "20.0"; the integer part is what matters.
            let whole = arg.split('.').next().unwrap_or(arg);
            media.ptime = whole.parse().ok().or(media.ptime);
        }
        "rtcp-mux" => media.rtcp_mux = true,
        _ => {}
    }
}

/// Parses `<pt> <encoding>/<clock>[/<channels>]`.
fn parse_rtpmap(arg: &str) -> Option<RtpMap> {
    let (pt, encoding) = arg.split_once(char::is_whitespace)?;
    let mut parts = encoding.trim().split('/');
    let name = parts.next().filter(|n| !n.is_empty())?;
    let clock_rate = parts.next()?.parse().ok()?;
    let channels = match parts.next() {
        Some(channels) => Some(channels.parse().ok()?),
        None => None,
    };
    Some(RtpMap {
        payload_type: pt.parse().ok()?,
        encoding: name.to_owned(),
        clock_rate,
        channels,
    })
}

/// A bounded, char-boundary-safe copy of network text for error messages.
fn excerpt(text: &str) -> String {
    let mut out: String = text.chars().take(EXCERPT_CHARS).collect();
    if text.chars().nth(EXCERPT_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

/// Our side of the media: what we put in o=, c= and m=.
#[derive(Clone, Debug)]
pub struct LocalMedia {
    pub address: IpAddr,
    pub port: u16,
    pub session_id: u64,
    pub session_version: u64,
}

/// Outcome of a negotiation: what both sides will use.
#[derive(Clone, Debug, PartialEq)]
pub struct Negotiated {
    pub codec: Codec,
    /// The PT to send with: the one the peer's SDP uses (static for G.711).
    pub payload_type: u8,
    /// PT of telephone-event/8000 if both sides have it.
    pub telephone_event: Option<u8>,
    /// OUR direction (e.g. recvonly when the peer offered sendonly).
    pub direction: Direction,
    /// Where to send RTP; None when port 0 or address 0.0.0.0 (hold).
    pub remote: Option<SocketAddr>,
    /// Packetization time in ms: 20 unless the peer asked otherwise.
    pub ptime: u32,
    pub rtcp_mux: bool,
    /// Which m= line was accepted.
    pub media_index: usize,
}

/// Why no audio stream could be agreed on.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NegotiationError {
    /// No audio m= line with a non-zero port (port 0 means the peer disabled it).
    #[error("no audio stream offered")]
    NoAudio,
    /// Display must name what was offered, e.g. "no common codec (offered: G729, GSM; we accept: PCMA, PCMU)".
    #[error("no common codec (offered: {offered}; we accept: {accepted})")]
    NoCommonCodec { offered: String, accepted: String },
    /// e.g. "unsupported media protocol RTP/SAVP" when the only audio line is not RTP/AVP.
    #[error("unsupported media protocol {0}")]
    UnsupportedProtocol(String),
}

/// Whose order picks the codec when we answer an offer that has several of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodecPreference {
    /// The offer's first codec that we support (RFC 3264 §6.1 recommends keeping the offer's
    /// order): a µ-law caller gets µ-law, with nothing to transcode on its way to a µ-law bot.
    Offer,
    /// The first of our codecs (`rtp.codecs`) that the offer has, whatever its order.
    Ours,
}

impl CodecPreference {
    /// From its config name, `offer` or `ours`.
    pub fn from_name(name: &str) -> Option<CodecPreference> {
        match name {
            "offer" => Some(CodecPreference::Offer),
            "ours" => Some(CodecPreference::Ours),
            _ => None,
        }
    }
}

/// Whose codec order wins when several codecs are common.
#[derive(Clone, Copy)]
enum CodecOrder {
    /// Ours: we are the answerer and were told to prefer ours.
    Ours,
    /// The SDP's: an offer whose order we follow, or an answer (the answerer already picked).
    Theirs,
}

/// RFC 3264 answerer: pick a codec that the offer's first usable audio m= line (protocol RTP/AVP or RTP/AVPF) contains (by static PT 0/8 even without rtpmap, or by rtpmap name with clock 8000) and `prefs` lists: the offer's first such codec, or with [`CodecPreference::Ours`] the first in OUR order; keep telephone-event (rtpmap "telephone-event/8000", any dynamic PT) if offered. Direction: the media-level direction, else the session-level one, else sendrecv; c=0.0.0.0 counts as sendonly hold (RFC 2543 style). ptime from the offer or 20.
///
/// Audio lines with port 0 are skipped (the offerer disabled them and
/// RFC 3264 §8.2 forbids reviving them in the answer); if a usable line has
/// no common codec, later usable audio lines are tried before giving up.
pub fn negotiate_answer(
    offer: &SessionDescription,
    prefs: &[Codec],
    preference: CodecPreference,
) -> Result<Negotiated, NegotiationError> {
    let order = match preference {
        CodecPreference::Offer => CodecOrder::Theirs,
        CodecPreference::Ours => CodecOrder::Ours,
    };
    negotiate(offer, prefs, order)
}

/// Reading the peer's answer to our offer: the first codec in the answer's audio line that is also in prefs (answer order wins), telephone-event if present, remote address, direction reversed appropriately to OUR direction (peer recvonly -> we sendonly, etc.).
///
/// An answer whose audio lines all have port 0 rejected our audio and gives
/// [`NegotiationError::NoAudio`].
pub fn negotiate_from_answer(
    answer: &SessionDescription,
    prefs: &[Codec],
) -> Result<Negotiated, NegotiationError> {
    negotiate(answer, prefs, CodecOrder::Theirs)
}

/// Shared by both negotiation directions: the peer's SDP describes what it
/// wants to receive, so its PTs, address and (reversed) direction are what
/// we use either way; only the tie-break on codec order differs.
fn negotiate(
    sd: &SessionDescription,
    prefs: &[Codec],
    order: CodecOrder,
) -> Result<Negotiated, NegotiationError> {
    let mut unsupported: Option<&str> = None;
    let mut saw_usable = false;
    let mut offered: Vec<String> = Vec::new();

    for (media_index, media) in sd.media.iter().enumerate() {
        if !media.is_audio() || media.port == 0 {
            continue;
        }
        if !media.is_plain_rtp() {
            unsupported.get_or_insert(&media.protocol);
            continue;
        }
        saw_usable = true;
        let Some((codec, payload_type)) = choose_codec(media, prefs, order) else {
            for name in media.format_names() {
                if !offered.contains(&name) {
                    offered.push(name);
                }
            }
            continue;
        };
        return Ok(Negotiated {
            codec,
            payload_type,
            telephone_event: media.telephone_event(),
            direction: peer_direction(sd, media).reversed(),
            remote: remote_address(sd, media),
            ptime: media
                .ptime
                .filter(|p| (1..=MAX_PTIME).contains(p))
                .unwrap_or(DEFAULT_PTIME),
            rtcp_mux: media.rtcp_mux,
            media_index,
        });
    }

    if saw_usable {
        Err(NegotiationError::NoCommonCodec {
            offered: join_or_none(offered),
            accepted: join_or_none(prefs.iter().map(|c| c.encoding_name().to_owned())),
        })
    } else if let Some(protocol) = unsupported {
        Err(NegotiationError::UnsupportedProtocol(protocol.to_owned()))
    } else {
        Err(NegotiationError::NoAudio)
    }
}

/// The codec to use from one media section, and the PT the section gives it.
fn choose_codec(
    media: &MediaDescription,
    prefs: &[Codec],
    order: CodecOrder,
) -> Option<(Codec, u8)> {
    let mut offered = media
        .payload_types()
        .filter_map(|pt| media.codec_of(pt).map(|codec| (codec, pt)));
    match order {
        CodecOrder::Theirs => offered.find(|(codec, _)| prefs.contains(codec)),
        CodecOrder::Ours => {
            let offered: Vec<(Codec, u8)> = offered.collect();
            prefs
                .iter()
                .find_map(|pref| offered.iter().copied().find(|(codec, _)| codec == pref))
        }
    }
}

/// The direction the peer declared for a section, with RFC 2543 hold
/// (`c=0.0.0.0`) meaning "do not send to me".
fn peer_direction(sd: &SessionDescription, media: &MediaDescription) -> Direction {
    let declared = media
        .direction
        .or(sd.direction)
        .unwrap_or(Direction::SendRecv);
    let held = media
        .connection
        .or(sd.connection)
        .is_some_and(|a| a.is_unspecified());
    match (held, declared) {
        (true, Direction::SendRecv | Direction::SendOnly) => Direction::SendOnly,
        (true, Direction::RecvOnly | Direction::Inactive) => Direction::Inactive,
        (false, declared) => declared,
    }
}

/// Where to send RTP for a section: media-level c= else session-level c=,
/// with the m= port; `None` when there is nowhere to send.
fn remote_address(sd: &SessionDescription, media: &MediaDescription) -> Option<SocketAddr> {
    let address = media.connection.or(sd.connection)?;
    (media.port != 0 && !address.is_unspecified()).then(|| SocketAddr::new(address, media.port))
}

fn join_or_none(names: impl IntoIterator<Item = String>) -> String {
    let joined = names.into_iter().collect::<Vec<_>>().join(", ");
    if joined.is_empty() {
        "none".to_owned()
    } else {
        joined
    }
}

/// Our answer: one m= line per offered m= line (RFC 3264 §6): the accepted audio line with the chosen codec PT (+ telephone-event PT with rtpmap and `a=fmtp:<pt> 0-16`), `a=rtpmap` lines, `a=ptime:20` (or negotiated), our direction attribute, `a=rtcp-mux` if negotiated; every other m= line rejected with port 0 keeping its media kind, protocol and formats. Lines end with CRLF. o= line "o=voicegate <session_id> <session_version> IN IP4|IP6 <address>", s=voicegate, c=, t=0 0.
pub fn build_answer(
    offer: &SessionDescription,
    local: &LocalMedia,
    negotiated: &Negotiated,
) -> String {
    let mut out = session_header(local);
    for (index, media) in offer.media.iter().enumerate() {
        if index == negotiated.media_index {
            push_audio(
                &mut out,
                &AudioLine {
                    port: local.port,
                    protocol: &media.protocol,
                    codecs: &[(negotiated.payload_type, negotiated.codec)],
                    telephone_event: negotiated.telephone_event,
                    ptime: negotiated.ptime,
                    direction: negotiated.direction,
                    rtcp_mux: negotiated.rtcp_mux,
                },
            );
        } else {
            let mut line = format!("m={} 0 {}", media.kind, media.protocol);
            for format in &media.formats {
                line.push(' ');
                line.push_str(format);
            }
            push_line(&mut out, format_args!("{line}"));
        }
    }
    out
}

/// Our offer (for INVITEs without SDP, and later for outbound legs): every codec in prefs, then telephone-event with PT 101, ptime 20, given direction.
///
/// Duplicate entries in `prefs` are listed once.
pub fn build_offer(local: &LocalMedia, prefs: &[Codec], direction: Direction) -> String {
    let mut codecs: Vec<(u8, Codec)> = Vec::with_capacity(prefs.len());
    for &codec in prefs {
        if !codecs.iter().any(|&(_, c)| c == codec) {
            codecs.push((codec.payload_type(), codec));
        }
    }
    let mut out = session_header(local);
    push_audio(
        &mut out,
        &AudioLine {
            port: local.port,
            protocol: "RTP/AVP",
            codecs: &codecs,
            telephone_event: Some(TELEPHONE_EVENT_PT),
            ptime: DEFAULT_PTIME,
            direction,
            rtcp_mux: false,
        },
    );
    out
}

/// Everything our audio m= section says, shared by offers and answers.
struct AudioLine<'a> {
    port: u16,
    protocol: &'a str,
    codecs: &'a [(u8, Codec)],
    telephone_event: Option<u8>,
    ptime: u32,
    direction: Direction,
    rtcp_mux: bool,
}

fn push_audio(out: &mut String, audio: &AudioLine<'_>) {
    let mut m_line = format!("m=audio {} {}", audio.port, audio.protocol);
    for pt in audio
        .codecs
        .iter()
        .map(|&(pt, _)| pt)
        .chain(audio.telephone_event)
    {
        let _ = write!(m_line, " {pt}");
    }
    push_line(out, format_args!("{m_line}"));
    for &(pt, codec) in audio.codecs {
        match rtpmap_channels(codec) {
            Some(channels) => push_line(
                out,
                format_args!(
                    "a=rtpmap:{pt} {}/{}/{channels}",
                    codec.encoding_name(),
                    codec.clock_rate()
                ),
            ),
            None => push_line(
                out,
                format_args!(
                    "a=rtpmap:{pt} {}/{}",
                    codec.encoding_name(),
                    codec.clock_rate()
                ),
            ),
        }
        if let Some(fmtp) = fmtp(codec) {
            push_line(out, format_args!("a=fmtp:{pt} {fmtp}"));
        }
    }
    if let Some(pt) = audio.telephone_event {
        push_line(out, format_args!("a=rtpmap:{pt} telephone-event/8000"));
        push_line(out, format_args!("a=fmtp:{pt} 0-16"));
    }
    push_line(out, format_args!("a=ptime:{}", audio.ptime));
    push_line(out, format_args!("a={}", audio.direction));
    if audio.rtcp_mux {
        push_line(out, format_args!("a=rtcp-mux"));
    }
}

fn session_header(local: &LocalMedia) -> String {
    let family = match local.address {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    };
    let mut out = String::with_capacity(256);
    push_line(&mut out, format_args!("v=0"));
    push_line(
        &mut out,
        format_args!(
            "o=voicegate {} {} IN {family} {}",
            local.session_id, local.session_version, local.address
        ),
    );
    push_line(&mut out, format_args!("s=voicegate"));
    push_line(&mut out, format_args!("c=IN {family} {}", local.address));
    push_line(&mut out, format_args!("t=0 0"));
    out
}

/// Appends one CRLF-terminated line (writing to a String cannot fail).
fn push_line(out: &mut String, line: fmt::Arguments<'_>) {
    let _ = out.write_fmt(line);
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Joins lines with CRLF, as on the wire.
    fn sdp(lines: &[&str]) -> Vec<u8> {
        let mut body = lines.join("\r\n");
        body.push_str("\r\n");
        body.into_bytes()
    }

    fn offer(lines: &[&str]) -> SessionDescription {
        parse(&sdp(lines)).expect("test SDP parses")
    }

    /// An offer with the usual header and the given media lines.
    fn offer_with(media: &[&str]) -> SessionDescription {
        let mut lines = vec![
            "v=0",
            "o=peer 1 1 IN IP4 192.0.2.10",
            "s=-",
            "c=IN IP4 192.0.2.10",
            "t=0 0",
        ];
        lines.extend_from_slice(media);
        offer(&lines)
    }

    const SIPP_UAC: &[&str] = &[
        "v=0",
        "o=user1 53655765 2353687637 IN IP4 127.0.0.1",
        "s=-",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        "m=audio 6000 RTP/AVP 0",
        "a=rtpmap:0 PCMU/8000",
    ];

    const PREFS: &[Codec] = &[Codec::Pcma, Codec::Pcmu];

    fn local() -> LocalMedia {
        LocalMedia {
            address: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
            port: 40000,
            session_id: 42,
            session_version: 7,
        }
    }

    fn remote(addr: &str) -> Option<SocketAddr> {
        Some(addr.parse().expect("test address"))
    }

    fn m_lines(text: &str) -> Vec<&str> {
        text.split("\r\n").filter(|l| l.starts_with("m=")).collect()
    }

    #[test]
    fn opus_is_negotiated_with_its_dynamic_payload_type() {
        let offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 96 0 101\r\na=rtpmap:96 opus/48000/2\r\na=fmtp:96 useinbandfec=1\r\n\
a=rtpmap:101 telephone-event/8000\r\n";
        let sd = parse(offer.as_bytes()).expect("parses");
        let n = negotiate_answer(
            &sd,
            &[Codec::Opus, Codec::Pcma, Codec::Pcmu],
            CodecPreference::Offer,
        )
        .expect("negotiates");
        assert_eq!((n.codec, n.payload_type), (Codec::Opus, 96));
        let local = LocalMedia {
            address: "127.0.0.1".parse().unwrap(),
            port: 5000,
            session_id: 1,
            session_version: 1,
        };
        let answer = build_answer(&sd, &local, &n);
        assert!(
            answer.contains("m=audio 5000 RTP/AVP 96 101\r\n"),
            "{answer}"
        );
        assert!(
            answer.contains("a=rtpmap:96 opus/48000/2\r\na=fmtp:96 useinbandfec=1"),
            "{answer}"
        );
        // Without Opus in our preferences, G.711 is chosen from the same offer.
        let n = negotiate_answer(&sd, &[Codec::Pcma, Codec::Pcmu], CodecPreference::Offer)
            .expect("negotiates");
        assert_eq!(n.codec, Codec::Pcmu);
        // PT 111 without an rtpmap is not Opus: dynamic types need one.
        let bare = offer.replace("a=rtpmap:96 opus/48000/2\r\n", "");
        let sd = parse(bare.as_bytes()).unwrap();
        assert_eq!(
            negotiate_answer(&sd, &[Codec::Opus], CodecPreference::Offer).unwrap_err(),
            NegotiationError::NoCommonCodec {
                offered: "PT 96, PCMU, telephone-event".into(),
                accepted: "opus".into()
            }
        );
        let offer = build_offer(&local, &[Codec::Opus, Codec::Pcma], Direction::SendRecv);
        assert!(
            offer.contains("m=audio 5000 RTP/AVP 111 8 101\r\n"),
            "{offer}"
        );
    }

    #[test]
    fn codec_basics() {
        assert_eq!(Codec::Pcmu.payload_type(), 0);
        assert_eq!(Codec::Pcma.payload_type(), 8);
        assert_eq!(Codec::Pcma.encoding_name(), "PCMA");
        assert_eq!(Codec::Pcmu.clock_rate(), 8000);
        assert_eq!(Codec::from_name("pcma"), Some(Codec::Pcma));
        assert_eq!(Codec::from_name("PcMu"), Some(Codec::Pcmu));
        assert_eq!(Codec::from_name("G729"), None);
        assert_eq!(Codec::Pcmu.to_string(), "PCMU");
    }

    #[test]
    fn direction_basics() {
        assert_eq!(Direction::SendOnly.reversed(), Direction::RecvOnly);
        assert_eq!(Direction::RecvOnly.reversed(), Direction::SendOnly);
        assert_eq!(Direction::SendRecv.reversed(), Direction::SendRecv);
        assert_eq!(Direction::Inactive.reversed(), Direction::Inactive);
        assert_eq!(Direction::RecvOnly.as_str(), "recvonly");
        assert_eq!(
            Direction::from_attribute("sendonly"),
            Some(Direction::SendOnly)
        );
        assert_eq!(Direction::from_attribute("rtcp-mux"), None);
    }

    #[test]
    fn parses_sipp_uac_offer() {
        let sd = offer(SIPP_UAC);
        assert_eq!(sd.connection, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(sd.direction, None);
        assert_eq!(sd.media.len(), 1);
        let m = &sd.media[0];
        assert_eq!(m.kind, "audio");
        assert_eq!(m.port, 6000);
        assert_eq!(m.protocol, "RTP/AVP");
        assert_eq!(m.formats, vec!["0"]);
        assert_eq!(
            m.rtpmaps,
            vec![RtpMap {
                payload_type: 0,
                encoding: "PCMU".into(),
                clock_rate: 8000,
                channels: None
            }]
        );
        assert_eq!(m.connection, None);
        assert!(!m.rtcp_mux);
    }

    #[test]
    fn sipp_uac_negotiates_pcmu() {
        let n =
            negotiate_answer(&offer(SIPP_UAC), PREFS, CodecPreference::Offer).expect("negotiates");
        assert_eq!(
            n,
            Negotiated {
                codec: Codec::Pcmu,
                payload_type: 0,
                telephone_event: None,
                direction: Direction::SendRecv,
                remote: remote("127.0.0.1:6000"),
                ptime: 20,
                rtcp_mux: false,
                media_index: 0,
            }
        );
    }

    #[test]
    fn picks_pcma_and_telephone_event() {
        let sd = offer_with(&[
            "m=audio 5004 RTP/AVP 8 0 101",
            "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:101 telephone-event/8000",
            "a=fmtp:101 0-15",
        ]);
        assert_eq!(sd.media[0].fmtps, vec![(101, "0-15".to_owned())]);
        let n = negotiate_answer(&sd, PREFS, CodecPreference::Offer).expect("negotiates");
        assert_eq!(n.codec, Codec::Pcma);
        assert_eq!(n.payload_type, 8);
        assert_eq!(n.telephone_event, Some(101));
        assert_eq!(n.remote, remote("192.0.2.10:5004"));
    }

    /// The offer's first codec we support, however we order ours (RFC 3264 §6.1).
    #[test]
    fn offer_order_wins_when_answering_by_default() {
        let answer = |media: &[&str], prefs: &[Codec]| {
            let n = negotiate_answer(&offer_with(media), prefs, CodecPreference::Offer)
                .expect("negotiates");
            (n.codec, n.payload_type)
        };
        let pcmu_then_pcma = [
            "m=audio 5004 RTP/AVP 0 8 101",
            "a=rtpmap:101 telephone-event/8000",
        ];
        assert_eq!(answer(&pcmu_then_pcma, PREFS), (Codec::Pcmu, 0));
        assert_eq!(
            answer(&["m=audio 5004 RTP/AVP 8 0"], &[Codec::Pcmu, Codec::Pcma]),
            (Codec::Pcma, 8)
        );
        // Formats we do not take (G.729, telephone-event) are passed over, not a choice.
        assert_eq!(
            answer(
                &[
                    "m=audio 5004 RTP/AVP 101 18 8 0",
                    "a=rtpmap:101 telephone-event/8000"
                ],
                &[Codec::Pcmu, Codec::Pcma]
            ),
            (Codec::Pcma, 8)
        );
        // A codec we know but did not configure is passed over too.
        let opus_first = ["m=audio 5004 RTP/AVP 96 0 8", "a=rtpmap:96 opus/48000/2"];
        assert_eq!(answer(&opus_first, PREFS), (Codec::Pcmu, 0));
        assert_eq!(
            answer(&opus_first, &[Codec::Pcma, Codec::Opus]),
            (Codec::Opus, 96)
        );
    }

    /// `rtp.codec_preference = "ours"`: our first codec that the offer has.
    #[test]
    fn our_order_wins_when_answering_if_configured() {
        let answer = |media: &[&str], prefs: &[Codec]| {
            let n = negotiate_answer(&offer_with(media), prefs, CodecPreference::Ours)
                .expect("negotiates");
            (n.codec, n.payload_type)
        };
        let pcmu_then_pcma = [
            "m=audio 5004 RTP/AVP 0 8 101",
            "a=rtpmap:101 telephone-event/8000",
        ];
        assert_eq!(answer(&pcmu_then_pcma, PREFS), (Codec::Pcma, 8));
        assert_eq!(
            answer(&["m=audio 5004 RTP/AVP 8 0"], &[Codec::Pcmu, Codec::Pcma]),
            (Codec::Pcmu, 0)
        );
        let opus_last = ["m=audio 5004 RTP/AVP 0 8 96", "a=rtpmap:96 opus/48000/2"];
        assert_eq!(
            answer(&opus_last, &[Codec::Opus, Codec::Pcma]),
            (Codec::Opus, 96)
        );
    }

    #[test]
    fn static_payload_types_need_no_rtpmap() {
        let n = negotiate_answer(
            &offer_with(&["m=audio 5004 RTP/AVP 8"]),
            PREFS,
            CodecPreference::Offer,
        )
        .expect("negotiates");
        assert_eq!((n.codec, n.payload_type), (Codec::Pcma, 8));
    }

    #[test]
    fn dynamic_payload_type_matched_by_rtpmap_name_and_clock() {
        let sd = offer_with(&["m=audio 5004 RTP/AVP 96", "a=rtpmap:96 pcma/8000"]);
        let n = negotiate_answer(&sd, PREFS, CodecPreference::Offer).expect("negotiates");
        assert_eq!((n.codec, n.payload_type), (Codec::Pcma, 96));

        let wideband = offer_with(&["m=audio 5004 RTP/AVP 96", "a=rtpmap:96 PCMU/16000"]);
        assert!(matches!(
            negotiate_answer(&wideband, PREFS, CodecPreference::Offer),
            Err(NegotiationError::NoCommonCodec { .. })
        ));
    }

    #[test]
    fn telephone_event_needs_8000_clock() {
        let sd = offer_with(&[
            "m=audio 5004 RTP/AVP 0 97",
            "a=rtpmap:97 telephone-event/16000",
        ]);
        assert_eq!(
            negotiate_answer(&sd, PREFS, CodecPreference::Offer)
                .expect("negotiates")
                .telephone_event,
            None
        );
    }

    #[test]
    fn g729_only_has_no_common_codec() {
        let err = negotiate_answer(
            &offer_with(&["m=audio 5004 RTP/AVP 18"]),
            PREFS,
            CodecPreference::Offer,
        )
        .unwrap_err();
        assert_eq!(
            err,
            NegotiationError::NoCommonCodec {
                offered: "G729".into(),
                accepted: "PCMA, PCMU".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "no common codec (offered: G729; we accept: PCMA, PCMU)"
        );
    }

    #[test]
    fn no_common_codec_names_rtpmaps_statics_and_unknowns() {
        let sd = offer_with(&[
            "m=audio 5004 RTP/AVP 18 3 98 99",
            "a=rtpmap:98 opus/48000/2",
        ]);
        let err = negotiate_answer(&sd, &[Codec::Pcmu], CodecPreference::Offer).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no common codec (offered: G729, GSM, opus, PT 99; we accept: PCMU)"
        );
    }

    #[test]
    fn sendonly_offer_gets_recvonly_answer() {
        let sd = offer_with(&["m=audio 5004 RTP/AVP 0", "a=sendonly"]);
        let n = negotiate_answer(&sd, PREFS, CodecPreference::Offer).expect("negotiates");
        assert_eq!(n.direction, Direction::RecvOnly);
        assert!(n.remote.is_some());
        let answer = build_answer(&sd, &local(), &n);
        assert!(answer.contains("\r\na=recvonly\r\n"), "{answer}");
        assert_eq!(
            parse(answer.as_bytes()).expect("answer parses").media[0].direction,
            Some(Direction::RecvOnly)
        );
    }

    #[test]
    fn session_level_direction_applies_when_media_has_none() {
        let sd = offer(&[
            "v=0",
            "o=peer 1 1 IN IP4 192.0.2.10",
            "s=-",
            "c=IN IP4 192.0.2.10",
            "t=0 0",
            "a=recvonly",
            "m=audio 5004 RTP/AVP 0",
        ]);
        assert_eq!(sd.direction, Some(Direction::RecvOnly));
        assert_eq!(
            negotiate_answer(&sd, PREFS, CodecPreference::Offer)
                .expect("negotiates")
                .direction,
            Direction::SendOnly
        );
    }

    #[test]
    fn inactive_offer_gets_inactive_answer() {
        let sd = offer_with(&["m=audio 5004 RTP/AVP 0", "a=inactive"]);
        let n = negotiate_answer(&sd, PREFS, CodecPreference::Offer).expect("negotiates");
        assert_eq!(n.direction, Direction::Inactive);
        assert!(build_answer(&sd, &local(), &n).contains("\r\na=inactive\r\n"));
    }

    #[test]
    fn zero_address_is_hold() {
        let sd = offer(&[
            "v=0",
            "o=peer 1 2 IN IP4 192.0.2.10",
            "s=-",
            "c=IN IP4 0.0.0.0",
            "t=0 0",
            "m=audio 5004 RTP/AVP 0",
        ]);
        let n = negotiate_answer(&sd, PREFS, CodecPreference::Offer).expect("negotiates");
        assert_eq!(n.remote, None);
        assert_eq!(n.direction, Direction::RecvOnly);

        let held_recvonly = offer(&[
            "v=0",
            "c=IN IP4 0.0.0.0",
            "m=audio 5004 RTP/AVP 0",
            "a=recvonly",
        ]);
        assert_eq!(
            negotiate_answer(&held_recvonly, PREFS, CodecPreference::Offer)
                .expect("negotiates")
                .direction,
            Direction::Inactive
        );
    }

    #[test]
    fn media_level_connection_overrides_session_level() {
        let sd = offer_with(&["m=audio 5004 RTP/AVP 0", "c=IN IP4 203.0.113.5"]);
        assert_eq!(
            negotiate_answer(&sd, PREFS, CodecPreference::Offer)
                .expect("negotiates")
                .remote,
            remote("203.0.113.5:5004")
        );
    }

    #[test]
    fn ipv6_and_multicast_suffix() {
        let sd = offer(&["v=0", "c=IN IP6 2001:db8::1", "m=audio 5004 RTP/AVP 0"]);
        assert_eq!(
            negotiate_answer(&sd, PREFS, CodecPreference::Offer)
                .expect("negotiates")
                .remote,
            Some(SocketAddr::new(
                IpAddr::V6("2001:db8::1".parse().expect("v6")),
                5004
            ))
        );
        let mc = offer(&[
            "v=0",
            "c=IN IP4 224.2.1.1/127/3",
            "m=audio 5004/2 RTP/AVP 0",
        ]);
        assert_eq!(mc.connection, Some(IpAddr::V4(Ipv4Addr::new(224, 2, 1, 1))));
        assert_eq!(mc.media[0].port, 5004);
    }

    #[test]
    fn video_line_is_rejected_in_answer() {
        let sd = offer_with(&[
            "m=video 5006 RTP/AVP 96 97",
            "a=rtpmap:96 H264/90000",
            "m=audio 5004 RTP/AVP 0 8 101",
            "a=rtpmap:101 telephone-event/8000",
            "a=ptime:30",
            "a=rtcp-mux",
        ]);
        let n = negotiate_answer(&sd, PREFS, CodecPreference::Ours).expect("negotiates");
        assert_eq!(n.media_index, 1);
        assert_eq!(n.ptime, 30);
        assert!(n.rtcp_mux);
        let answer = build_answer(&sd, &local(), &n);
        assert_eq!(
            m_lines(&answer),
            vec!["m=video 0 RTP/AVP 96 97", "m=audio 40000 RTP/AVP 8 101"]
        );
        for needed in [
            "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:101 telephone-event/8000",
            "a=fmtp:101 0-16",
            "a=ptime:30",
            "a=sendrecv",
            "a=rtcp-mux",
        ] {
            assert!(
                answer.contains(&format!("\r\n{needed}\r\n")),
                "{needed} missing: {answer}"
            );
        }
        let parsed = parse(answer.as_bytes()).expect("answer parses");
        assert_eq!(parsed.media.len(), sd.media.len());
        assert_eq!(parsed.media[0].port, 0);
        assert_eq!(parsed.media[0].kind, "video");
    }

    #[test]
    fn answer_header_and_line_endings() {
        let n =
            negotiate_answer(&offer(SIPP_UAC), PREFS, CodecPreference::Offer).expect("negotiates");
        let answer = build_answer(&offer(SIPP_UAC), &local(), &n);
        assert!(answer.starts_with(
            "v=0\r\no=voicegate 42 7 IN IP4 198.51.100.1\r\ns=voicegate\r\nc=IN IP4 198.51.100.1\r\nt=0 0\r\n"
        ));
        assert!(answer.ends_with("\r\n"));
        assert!(!answer.replace("\r\n", "").contains('\n'));
        let back = parse(answer.as_bytes()).expect("answer parses");
        let again = negotiate_from_answer(&back, PREFS).expect("answer negotiates");
        assert_eq!(again.codec, Codec::Pcmu);
        assert_eq!(again.remote, remote("198.51.100.1:40000"));

        let v6 = LocalMedia {
            address: IpAddr::V6(Ipv6Addr::LOCALHOST),
            ..local()
        };
        let answer = build_answer(&offer(SIPP_UAC), &v6, &n);
        assert!(answer.contains("o=voicegate 42 7 IN IP6 ::1\r\n"));
        assert!(answer.contains("c=IN IP6 ::1\r\n"));
    }

    #[test]
    fn srtp_only_is_unsupported_protocol() {
        let err = negotiate_answer(
            &offer_with(&["m=audio 5004 RTP/SAVP 0"]),
            PREFS,
            CodecPreference::Offer,
        )
        .unwrap_err();
        assert_eq!(
            err,
            NegotiationError::UnsupportedProtocol("RTP/SAVP".into())
        );
        assert_eq!(err.to_string(), "unsupported media protocol RTP/SAVP");
    }

    #[test]
    fn plain_rtp_line_preferred_over_srtp() {
        let sd = offer_with(&["m=audio 5004 RTP/SAVP 0", "m=audio 5006 RTP/AVPF 0"]);
        let n = negotiate_answer(&sd, PREFS, CodecPreference::Offer).expect("negotiates");
        assert_eq!(n.media_index, 1);
        let answer = build_answer(&sd, &local(), &n);
        assert_eq!(
            m_lines(&answer),
            vec!["m=audio 0 RTP/SAVP 0", "m=audio 40000 RTP/AVPF 0"]
        );
    }

    #[test]
    fn no_audio_and_disabled_audio() {
        let video = offer_with(&["m=video 5006 RTP/AVP 96"]);
        assert_eq!(
            negotiate_answer(&video, PREFS, CodecPreference::Offer),
            Err(NegotiationError::NoAudio)
        );
        assert_eq!(
            NegotiationError::NoAudio.to_string(),
            "no audio stream offered"
        );
        let disabled = offer_with(&["m=audio 0 RTP/AVP 0"]);
        assert_eq!(
            negotiate_answer(&disabled, PREFS, CodecPreference::Offer),
            Err(NegotiationError::NoAudio)
        );
        let none = offer(&["v=0"]);
        assert_eq!(
            negotiate_answer(&none, PREFS, CodecPreference::Offer),
            Err(NegotiationError::NoAudio)
        );
    }

    #[test]
    fn ptime_parsing_and_limits() {
        let decimal = offer_with(&["m=audio 5004 RTP/AVP 0", "a=ptime:30.0"]);
        assert_eq!(
            negotiate_answer(&decimal, PREFS, CodecPreference::Offer)
                .expect("negotiates")
                .ptime,
            30
        );
        let huge = offer_with(&["m=audio 5004 RTP/AVP 0", "a=ptime:5000"]);
        assert_eq!(
            negotiate_answer(&huge, PREFS, CodecPreference::Offer)
                .expect("negotiates")
                .ptime,
            20
        );
        let junk = offer_with(&["m=audio 5004 RTP/AVP 0", "a=ptime:soon"]);
        assert_eq!(
            negotiate_answer(&junk, PREFS, CodecPreference::Offer)
                .expect("negotiates")
                .ptime,
            20
        );
    }

    #[test]
    fn tolerates_lf_trailing_whitespace_and_unknown_lines() {
        let body = "v=0 \no=x 1 1 IN IP4 10.0.0.1\t\ns=-\nc=IN IP4 10.0.0.1  \nt=0 0\nb=AS:64\nz=weird\nnot a line\n\
                    m=audio 7000 RTP/AVP 8   \na=rtpmap:8 PCMA/8000 \na=x-unknown:1\na=rtpmap:bogus\na=fmtp:nope x\na=sendrecv \n";
        let sd = parse(body.as_bytes()).expect("parses");
        let m = &sd.media[0];
        assert_eq!(m.formats, vec!["8"]);
        assert_eq!(m.rtpmaps.len(), 1);
        assert!(m.fmtps.is_empty());
        assert_eq!(m.direction, Some(Direction::SendRecv));
        assert_eq!(
            negotiate_answer(&sd, PREFS, CodecPreference::Offer)
                .expect("negotiates")
                .remote,
            remote("10.0.0.1:7000")
        );
    }

    #[test]
    fn rtpmap_with_channels() {
        let sd = offer_with(&[
            "m=audio 5004 RTP/AVP 96 97",
            "a=rtpmap:96 PCMA/8000/1",
            "a=rtpmap:97 L16/8000/2",
        ]);
        assert_eq!(sd.media[0].rtpmaps[0].channels, Some(1));
        assert_eq!(sd.media[0].rtpmaps[1].channels, Some(2));
        assert_eq!(
            negotiate_answer(&sd, PREFS, CodecPreference::Offer)
                .expect("negotiates")
                .payload_type,
            96
        );
    }

    #[test]
    fn bad_bodies_are_errors() {
        assert_eq!(parse(b""), Err(SdpError::Empty));
        assert_eq!(parse(b" \r\n\r\n"), Err(SdpError::Empty));
        assert_eq!(parse(&[0xff, 0xfe, 0x00, 0x80]), Err(SdpError::NotUtf8));
        assert_eq!(parse(b"hello world"), Err(SdpError::MissingVersion));
        assert_eq!(
            parse(b"o=x 1 1 IN IP4 1.2.3.4\r\nv=0\r\n"),
            Err(SdpError::MissingVersion)
        );
        assert_eq!(
            parse(b"v=1\r\n"),
            Err(SdpError::UnsupportedVersion("1".into()))
        );
        assert_eq!(SdpError::NotUtf8.to_string(), "SDP is not UTF-8");
        assert_eq!(
            SdpError::MissingVersion.to_string(),
            "missing v= line (SDP must start with v=0)"
        );
    }

    #[test]
    fn bad_m_lines_say_what_is_wrong() {
        let err = parse(&sdp(&["v=0", "m=audio port RTP/AVP 0"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad m= line \"audio port RTP/AVP 0\": port is not a number 0-65535"
        );
        let err = parse(&sdp(&["v=0", "m=audio 70000 RTP/AVP 0"])).unwrap_err();
        assert!(matches!(err, SdpError::BadMedia { reason, .. } if reason.contains("port")));
        let err = parse(&sdp(&["v=0", "m=audio 5004"])).unwrap_err();
        assert!(err.to_string().contains("missing protocol"), "{err}");
        let err = parse(&sdp(&["v=0", "m="])).unwrap_err();
        assert!(err.to_string().contains("missing media type"), "{err}");
        let err = parse(&sdp(&["v=0", "m=audio 5004 RTP/AVP 0\u{1}"])).unwrap_err();
        assert!(err.to_string().contains("non-printable"), "{err}");
    }

    #[test]
    fn bad_c_lines_are_errors() {
        let err = parse(&sdp(&["v=0", "c=IN IP4 pbx.example.com"])).unwrap_err();
        assert!(matches!(
            err,
            SdpError::BadConnection {
                reason: "address is not an IP address",
                ..
            }
        ));
        assert!(parse(&sdp(&["v=0", "c=IN IP4"])).is_err());
        assert!(parse(&sdp(&["v=0", "c=ATM NSAP 47.0091"])).is_err());
    }

    #[test]
    fn error_excerpts_are_bounded_and_utf8_safe() {
        let long = format!("m=audio x RTP/AVP {}", "é".repeat(500));
        let err = parse(&sdp(&["v=0", &long])).unwrap_err();
        let SdpError::BadMedia { line, .. } = err else {
            panic!("expected BadMedia, got {err:?}");
        };
        assert!(line.chars().count() <= EXCERPT_CHARS + 3);
        assert!(line.ends_with("..."));
    }

    #[test]
    fn offer_round_trips() {
        let text = build_offer(
            &local(),
            &[Codec::Pcma, Codec::Pcmu, Codec::Pcma],
            Direction::SendRecv,
        );
        assert_eq!(
            text,
            "v=0\r\no=voicegate 42 7 IN IP4 198.51.100.1\r\ns=voicegate\r\nc=IN IP4 198.51.100.1\r\nt=0 0\r\n\
             m=audio 40000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
        );
        let sd = parse(text.as_bytes()).expect("offer parses");
        assert_eq!(sd.connection, Some(local().address));
        let m = &sd.media[0];
        assert_eq!(m.formats, vec!["8", "0", "101"]);
        assert_eq!(m.ptime, Some(20));
        assert_eq!(m.direction, Some(Direction::SendRecv));
        assert_eq!(m.fmtps, vec![(101, "0-16".to_owned())]);
        let n = negotiate_answer(&sd, &[Codec::Pcmu], CodecPreference::Offer).expect("negotiates");
        assert_eq!(n.codec, Codec::Pcmu);
        assert_eq!(n.telephone_event, Some(101));
        assert_eq!(n.remote, remote("198.51.100.1:40000"));

        let sendonly = build_offer(&local(), PREFS, Direction::SendOnly);
        assert!(sendonly.contains("\r\na=sendonly\r\n"));
    }

    #[test]
    fn reads_peer_answer() {
        // The peer answers our "8 0 101" offer listing PCMU first: its order wins.
        let answer = offer(&[
            "v=0",
            "o=peer 9 9 IN IP4 192.0.2.20",
            "s=-",
            "c=IN IP4 192.0.2.20",
            "t=0 0",
            "m=audio 30000 RTP/AVP 0 8 101",
            "a=rtpmap:101 telephone-event/8000",
            "a=recvonly",
        ]);
        let n = negotiate_from_answer(&answer, PREFS).expect("negotiates");
        assert_eq!(n.codec, Codec::Pcmu);
        assert_eq!(n.payload_type, 0);
        assert_eq!(n.telephone_event, Some(101));
        assert_eq!(n.direction, Direction::SendOnly);
        assert_eq!(n.remote, remote("192.0.2.20:30000"));
        assert_eq!(n.ptime, 20);
        assert_eq!(n.media_index, 0);
    }

    #[test]
    fn peer_answer_rejecting_audio_or_codecs() {
        let rejected = offer_with(&["m=audio 0 RTP/AVP 8"]);
        assert_eq!(
            negotiate_from_answer(&rejected, PREFS),
            Err(NegotiationError::NoAudio)
        );
        let g729 = offer_with(&["m=audio 30000 RTP/AVP 18"]);
        assert!(matches!(
            negotiate_from_answer(&g729, PREFS),
            Err(NegotiationError::NoCommonCodec { .. })
        ));
        let no_prefs = offer_with(&["m=audio 30000 RTP/AVP 0"]);
        assert_eq!(
            negotiate_from_answer(&no_prefs, &[])
                .unwrap_err()
                .to_string(),
            "no common codec (offered: PCMU; we accept: none)"
        );
    }

    #[test]
    fn answer_with_out_of_range_index_rejects_everything() {
        let sd = offer(SIPP_UAC);
        let mut n = negotiate_answer(&sd, PREFS, CodecPreference::Offer).expect("negotiates");
        n.media_index = 5;
        let answer = build_answer(&sd, &local(), &n);
        assert_eq!(m_lines(&answer), vec!["m=audio 0 RTP/AVP 0"]);
    }

    /// Mangled variants of valid SDP must never panic, whatever they parse to.
    #[test]
    fn mutated_input_never_panics() {
        let base = build_offer(&local(), PREFS, Direction::SendRecv).into_bytes();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"=:/ \r\n0123456789amcvIP.-\xff\xc3";
        for _ in 0..5000 {
            let mut body = base.clone();
            for _ in 0..(next() % 6 + 1) {
                if body.is_empty() {
                    break;
                }
                let at = (next() as usize) % body.len();
                let byte = alphabet[(next() as usize) % alphabet.len()];
                match next() % 3 {
                    0 => body[at] = byte,
                    1 => body.insert(at, byte),
                    _ => {
                        body.remove(at);
                    }
                }
            }
            if let Ok(sd) = parse(&body) {
                if let Ok(n) = negotiate_answer(&sd, PREFS, CodecPreference::Offer) {
                    let answer = build_answer(&sd, &local(), &n);
                    parse(answer.as_bytes()).expect("our answer always parses");
                }
                let _ = negotiate_from_answer(&sd, PREFS);
            }
        }
        for prefix in 0..base.len() {
            let _ = parse(base.get(..prefix).unwrap_or_default());
        }
    }
}
