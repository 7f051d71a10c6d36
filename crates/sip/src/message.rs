//! SIP messages on the wire: parsing with a defined outcome for every input, and serialising.
//!
//! Header values are kept as text and read through rsipstack's `sip` types (URIs, Via, tags)
//! where structure matters. The message layer itself is ours because rsipstack's parser rejects
//! methods it does not know (RFC 3261 requires 501 for them), treats a malformed Content-Length
//! as 0, and always writes the standard reason phrase (our 400s say what was wrong).

use std::fmt::Write as _;
use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use rsipstack::sip::typed;

/// A header as it appeared, with its name expanded from the compact form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// Headers in wire order. Lookups are case-insensitive on the (expanded) name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<Header>);

impl Headers {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push(Header {
            name: name.into(),
            value: value.into(),
        });
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|h| !h.name.eq_ignore_ascii_case(name));
    }

    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        match self
            .0
            .iter_mut()
            .find(|h| h.name.eq_ignore_ascii_case(name))
        {
            Some(h) => h.value = value.into(),
            None => self.push(name, value),
        }
    }

    /// Every comma-separated token of every header with this name (Require, Supported, Allow…).
    pub fn tokens<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.get_all(name)
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
    }
}

/// A request method. Methods are case-sensitive tokens (RFC 3261 §7.1): `invite` is not
/// INVITE but an extension method, kept as sent in [`Method::Other`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Info,
    Refer,
    Notify,
    Update,
    Prack,
    Subscribe,
    Message,
    Publish,
    /// Any other token, as sent.
    Other(String),
}

impl Method {
    const KNOWN: [(&'static str, Method); 14] = [
        ("INVITE", Method::Invite),
        ("ACK", Method::Ack),
        ("BYE", Method::Bye),
        ("CANCEL", Method::Cancel),
        ("OPTIONS", Method::Options),
        ("REGISTER", Method::Register),
        ("INFO", Method::Info),
        ("REFER", Method::Refer),
        ("NOTIFY", Method::Notify),
        ("UPDATE", Method::Update),
        ("PRACK", Method::Prack),
        ("SUBSCRIBE", Method::Subscribe),
        ("MESSAGE", Method::Message),
        ("PUBLISH", Method::Publish),
    ];

    pub fn as_str(&self) -> &str {
        match self {
            Method::Other(token) => token,
            known => Self::KNOWN
                .iter()
                .find(|(_, m)| m == known)
                .map_or("", |(name, _)| name),
        }
    }
}

impl From<&str> for Method {
    fn from(token: &str) -> Self {
        Self::KNOWN
            .iter()
            .find(|(name, _)| *name == token)
            .map_or_else(|| Method::Other(token.to_string()), |(_, m)| m.clone())
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for Method {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Method {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub uri: String,
    pub headers: Headers,
    pub body: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

/// Why a message was refused, and whether it can still be answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not a SIP message we can frame or route an answer for: drop it (UDP) or close (stream).
    Unparseable(String),
    /// A request whose top Via was readable enough to answer with `<status> <reason>`: 400,
    /// or 505 for a SIP version other than 2.0; `request` holds what was read.
    BadRequest {
        status: u16,
        reason: String,
        request: Box<Request>,
    },
    /// A response we cannot use: dropped (responses are never answered).
    BadResponse(String),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Unparseable(why) => write!(f, "unparseable: {why}"),
            ParseError::BadRequest { reason, .. } => write!(f, "bad request: {reason}"),
            ParseError::BadResponse(why) => write!(f, "bad response: {why}"),
        }
    }
}

/// Compact header forms (RFC 3261 §7.3.3 and extensions) to their full names.
fn expand_compact(name: &str) -> &str {
    if name.len() != 1 {
        return name;
    }
    match name.as_bytes()[0].to_ascii_lowercase() {
        b'i' => "Call-ID",
        b'm' => "Contact",
        b'e' => "Content-Encoding",
        b'l' => "Content-Length",
        b'c' => "Content-Type",
        b'f' => "From",
        b's' => "Subject",
        b'k' => "Supported",
        b't' => "To",
        b'v' => "Via",
        b'o' => "Event",
        b'r' => "Refer-To",
        b'b' => "Referred-By",
        b'x' => "Session-Expires",
        b'u' => "Allow-Events",
        _ => name,
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// Where the header block ends: the index of the empty line's CRLF CRLF (or LF LF).
pub(crate) fn find_head_end(data: &[u8]) -> Option<(usize, usize)> {
    let crlf = find_subslice(data, b"\r\n\r\n").map(|i| (i, i + 4));
    let lf = find_subslice(data, b"\n\n").map(|i| (i, i + 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn find_subslice(data: &[u8], needle: &[u8]) -> Option<usize> {
    data.windows(needle.len()).position(|w| w == needle)
}

/// Splits the header block into logical lines, unfolding continuation lines.
fn unfold(head: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for raw in head.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(last) = lines.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
                continue;
            }
        }
        lines.push(line.to_string());
    }
    lines
}

/// Parses one whole message (a UDP datagram, or a frame cut by [`crate::framing`]).
///
/// For datagrams the body is what follows the header block; Content-Length, when present,
/// must not exceed it (the extra bytes beyond it are ignored, RFC 3261 §18.3).
pub fn parse(data: &[u8]) -> Result<Message, ParseError> {
    // Leading CRLFs are keep-alives or stream padding (RFC 5626 §3.5.1).
    let start = data
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(data.len());
    let data = &data[start..];
    if data.is_empty() {
        return Err(ParseError::Unparseable("empty message".into()));
    }
    // A datagram is the whole message (RFC 3261 §18.3): one that ends right after a header
    // line lacks only the empty line, and can still be answered (with 400).
    let (head_end, body_start, terminated) = match find_head_end(data) {
        Some((head_end, body_start)) => (head_end, body_start, true),
        None if data.ends_with(b"\n") => (data.len(), data.len(), false),
        None => {
            return Err(ParseError::Unparseable(
                "header block not terminated by an empty line".into(),
            ))
        }
    };
    let head = std::str::from_utf8(&data[..head_end])
        .map_err(|_| ParseError::Unparseable("header block is not UTF-8".into()))?;
    let mut lines = unfold(head).into_iter();
    let start_line = lines.next().unwrap_or_default();

    let mut headers = Headers::default();
    let mut malformed_header: Option<String> = None;
    for line in lines {
        if line.is_empty() {
            continue;
        }
        match line.split_once(':') {
            Some((name, value)) if is_token(name.trim_end()) => {
                headers.push(expand_compact(name.trim_end()), value.trim());
            }
            _ => {
                if malformed_header.is_none() {
                    malformed_header = Some(line.chars().take(40).collect());
                }
            }
        }
    }
    let rest = &data[body_start..];

    if let Some(status_line) = start_line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = status_line.split_once(' ').unwrap_or((status_line, ""));
        let status = match code.parse::<u16>() {
            Ok(s) if (100..=699).contains(&s) => s,
            _ => return Err(ParseError::BadResponse(format!("bad status code {code:?}"))),
        };
        if !terminated {
            return Err(ParseError::BadResponse(
                "header block not terminated by an empty line".into(),
            ));
        }
        let body = body_for(&headers, rest).map_err(ParseError::BadResponse)?;
        for required in ["Via", "From", "To", "Call-ID", "CSeq"] {
            if headers.get(required).is_none() {
                return Err(ParseError::BadResponse(format!("missing {required}")));
            }
        }
        return Ok(Message::Response(Response {
            status,
            reason: reason.to_string(),
            headers,
            body,
        }));
    }

    // Request-Line = Method SP Request-URI SP SIP-Version CRLF, single spaces (RFC 3261 §25.1).
    let mut parts = start_line.split(' ');
    let method = match parts.next() {
        Some(m) if is_token(m) => m,
        _ => return Err(unparseable_line(&start_line)),
    };
    let (uri, version, line_ok) = match (parts.next(), parts.next(), parts.next()) {
        (Some(uri), Some(version), None) if !uri.is_empty() => (uri.to_string(), version, true),
        // Extra or missing spaces (RFC 4475 lwsruri, lwsstart, trws): still a request if it
        // ends with a SIP version, and answerable (400) once the Via is readable.
        _ => {
            let words: Vec<&str> = start_line.split_whitespace().collect();
            match words.last() {
                Some(v)
                    if words.len() >= 2
                        && v.as_bytes()
                            .get(..4)
                            .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/")) =>
                {
                    (words[1..words.len() - 1].join(" "), "", false)
                }
                _ => return Err(unparseable_line(&start_line)),
            }
        }
    };
    let mut request = Request {
        method: Method::from(method),
        uri,
        headers,
        body: Bytes::new(),
    };
    // From here on the request is answerable if Via can carry the answer back.
    if request.headers.get("Via").is_none() {
        return Err(ParseError::Unparseable("missing Via".into()));
    }
    if top_via(&request.headers).is_none() {
        return Err(ParseError::Unparseable("malformed Via".into()));
    }
    let bad = |reason: String, request: Request| ParseError::BadRequest {
        status: 400,
        reason,
        request: Box::new(request),
    };
    if !line_ok {
        return Err(bad("Malformed Request-Line".into(), request));
    }
    // SIP-Version is case-insensitive (RFC 3261 §7.1).
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return Err(ParseError::BadRequest {
            status: 505,
            reason: "Version Not Supported".into(),
            request: Box::new(request),
        });
    }
    if let Some(line) = malformed_header {
        return Err(bad(format!("Malformed header line {line:?}"), request));
    }
    if !request
        .headers
        .get_all("Via")
        .flat_map(|v| split_outside(v, ','))
        .all(via_parm_well_formed)
    {
        return Err(bad("Malformed Via".into(), request));
    }
    for required in ["Call-ID", "CSeq", "From", "To"] {
        if request.headers.get(required).is_none() {
            return Err(bad(format!("Missing {required}"), request));
        }
    }
    // Headers that are not comma-separated lists appear at most once (RFC 3261 §7.3.1).
    for single in ["Call-ID", "CSeq", "From", "To", "Max-Forwards"] {
        if request.headers.get_all(single).nth(1).is_some() {
            return Err(bad(format!("Multiple {single} headers"), request));
        }
    }
    match parse_cseq(request.headers.get("CSeq").unwrap_or_default()) {
        Some((_, m)) if request.method == m => {}
        Some(_) => {
            return Err(bad(
                "CSeq method does not match the request".into(),
                request,
            ))
        }
        None => return Err(bad("Malformed CSeq".into(), request)),
    }
    if rsipstack::sip::parse_uri(&request.uri).is_err() || request.uri.contains(['<', '>']) {
        return Err(bad("Malformed Request-URI".into(), request));
    }
    if sip_uri_has_headers(&request.uri) {
        // RFC 3261 §19.1.1: headers are not allowed in a Request-URI (RFC 4475 escruri).
        return Err(bad(
            "Headers not allowed in the Request-URI".into(),
            request,
        ));
    }
    for name in ["From", "To"] {
        let value = request.headers.get(name).unwrap_or_default();
        if !name_addr_well_formed(value) || name_addr_uri(value).is_none() {
            return Err(bad(format!("Malformed {name}"), request));
        }
    }
    if !request
        .headers
        .get_all("Contact")
        .flat_map(|v| split_outside(v, ','))
        .all(|c| c.trim() == "*" || name_addr_well_formed(c))
    {
        return Err(bad("Malformed Contact".into(), request));
    }
    if let Some(mf) = request.headers.get("Max-Forwards") {
        if mf.parse::<u8>().is_err() {
            return Err(bad("Malformed Max-Forwards".into(), request));
        }
    }
    match body_for(&request.headers, rest) {
        Ok(body) => request.body = body,
        Err(reason) => return Err(bad(reason, request)),
    }
    if !terminated {
        return Err(bad(
            "Header block not terminated by an empty line".into(),
            request,
        ));
    }
    Ok(Message::Request(request))
}

fn unparseable_line(start_line: &str) -> ParseError {
    ParseError::Unparseable(format!(
        "bad request line {:?}",
        start_line.chars().take(60).collect::<String>()
    ))
}

/// The characters of a header value that lie outside double-quoted strings (quoted-pairs
/// honoured), with their byte offsets.
struct Unquoted<'a> {
    chars: std::str::CharIndices<'a>,
    in_quotes: bool,
    escaped: bool,
}

fn unquoted(value: &str) -> Unquoted<'_> {
    Unquoted {
        chars: value.char_indices(),
        in_quotes: false,
        escaped: false,
    }
}

impl Iterator for Unquoted<'_> {
    type Item = (usize, char);

    fn next(&mut self) -> Option<(usize, char)> {
        loop {
            let (i, c) = self.chars.next()?;
            if self.escaped {
                self.escaped = false;
            } else if self.in_quotes {
                match c {
                    '\\' => self.escaped = true,
                    '"' => self.in_quotes = false,
                    _ => {}
                }
            } else if c == '"' {
                self.in_quotes = true;
            } else {
                return Some((i, c));
            }
        }
    }
}

/// The comma-separated values of one header line (Contact, Route…), commas inside quotes or
/// `<…>` kept.
pub fn split_values(value: &str) -> Vec<&str> {
    split_outside(value, ',')
        .into_iter()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

/// Splits at every `sep` outside double-quoted strings and `<…>`.
fn split_outside(value: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut in_angle, mut start) = (false, 0);
    for (i, c) in unquoted(value) {
        match c {
            '<' => in_angle = true,
            '>' => in_angle = false,
            c if c == sep && !in_angle => {
                out.push(&value[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&value[start..]);
    out
}

/// Where the `<` of a name-addr is (outside the quoted display name); `Err` when a quoted
/// string is not closed.
fn find_laquot(value: &str) -> Result<Option<usize>, ()> {
    let mut chars = unquoted(value);
    let found = chars.by_ref().find(|(_, c)| *c == '<').map(|(i, _)| i);
    chars.by_ref().for_each(drop);
    if chars.in_quotes {
        Err(())
    } else {
        Ok(found)
    }
}

/// display-name = *(token LWS) / quoted-string (RFC 3261 §25.1).
fn display_name_well_formed(display: &str) -> bool {
    let display = display.trim();
    let Some(quoted) = display.strip_prefix('"') else {
        return display.split_whitespace().all(is_token);
    };
    // One quoted string (quoted-pairs honoured) and nothing after it.
    let mut escaped = false;
    for (i, c) in quoted.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            return i + 1 == quoted.len();
        }
    }
    false
}

/// A From, To or Contact value: `display-name <URI> ;params` or a bare `URI ;params`.
/// Rejects what RFC 4475 calls invalid: unbalanced quotes (quotbal), an unquoted display
/// name that is not tokens (baddn), whitespace inside `<…>` (badaspec), and a bare URI
/// carrying `?` or `,`, which must be in angle brackets (RFC 3261 §20; regbadct).
fn name_addr_well_formed(value: &str) -> bool {
    let value = value.trim();
    match find_laquot(value) {
        Err(()) => false,
        Ok(Some(open)) => {
            let Some(len) = value[open + 1..].find('>') else {
                return false;
            };
            let uri = &value[open + 1..open + 1 + len];
            let params = value[open + 2 + len..].trim_start();
            display_name_well_formed(&value[..open])
                && !uri.is_empty()
                && !uri.contains(|c: char| c.is_whitespace() || c == '<')
                && (params.is_empty() || params.starts_with(';'))
        }
        Ok(None) => {
            let uri = value.split(';').next().unwrap_or_default().trim();
            !uri.is_empty()
                && !uri.contains(|c: char| c.is_whitespace() || matches!(c, '?' | ',' | '"' | '>'))
        }
    }
}

/// via-parm = sent-protocol LWS sent-by *( SEMI via-params ), LWS allowed around `/`, `;`
/// and `=` (RFC 3261 §20.42, §25.1); no parameter may be empty (RFC 4475 badinv01).
fn via_parm_well_formed(hop: &str) -> bool {
    let mut parts = split_outside(hop, ';').into_iter();
    let sent = parts.next().unwrap_or_default();
    let mut protocol = sent.splitn(3, '/');
    let (Some(name), Some(version), Some(rest)) =
        (protocol.next(), protocol.next(), protocol.next())
    else {
        return false;
    };
    let mut rest = rest.split_whitespace();
    let transport = rest.next().unwrap_or_default();
    let sent_by: String = rest.collect();
    is_token(name.trim())
        && is_token(version.trim())
        && is_token(transport)
        && !sent_by.is_empty()
        && parts.all(|param| {
            let (name, value) = match param.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (param, None),
            };
            is_token(name.trim()) && value.is_none_or(|v| !v.trim().is_empty())
        })
}

/// True when a sip:/sips: URI has a `?headers` part (after the userinfo, which may itself
/// contain `?`: RFC 4475 intmeth).
fn sip_uri_has_headers(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
        return false;
    }
    let host_part = rest.split_once('@').map_or(rest, |(_, host)| host);
    host_part.contains('?')
}

/// The body as delimited by Content-Length (or everything left when it is absent).
fn body_for(headers: &Headers, rest: &[u8]) -> Result<Bytes, String> {
    let mut lengths = headers.get_all("Content-Length");
    let Some(value) = lengths.next() else {
        return Ok(Bytes::copy_from_slice(rest));
    };
    if lengths.next().is_some() {
        return Err("Multiple Content-Length headers".into());
    }
    let len: usize = value
        .parse()
        .map_err(|_| format!("Malformed Content-Length {value:?}"))?;
    if len > rest.len() {
        return Err(format!(
            "Content-Length {len} larger than the {} body bytes received",
            rest.len()
        ));
    }
    Ok(Bytes::copy_from_slice(&rest[..len]))
}

/// Decodes %HH escapes; a malformed escape is kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `CSeq: 4711 INVITE` → (4711, "INVITE").
pub fn parse_cseq(value: &str) -> Option<(u32, &str)> {
    let mut it = value.split_whitespace();
    let seq = it.next()?.parse::<u32>().ok()?;
    let method = it.next()?;
    if it.next().is_some() || !is_token(method) {
        return None;
    }
    Some((seq, method))
}

/// The URI of a name-addr or addr-spec header value (From, To, Contact).
pub fn name_addr_uri(value: &str) -> Option<rsipstack::sip::Uri> {
    rsipstack::sip::parse_uri(name_addr_uri_text(value)?).ok()
}

/// The URI text of a name-addr or addr-spec, exactly as sent (for echoing it back unchanged).
pub fn name_addr_uri_text(value: &str) -> Option<&str> {
    match (find_laquot(value).ok()?, value.rfind('>')) {
        (Some(open), Some(close)) if open < close => Some(value[open + 1..close].trim()),
        (None, None) => Some(value.split(';').next()?.trim()),
        _ => None,
    }
}

/// The `tag` parameter of a From/To value (outside the `<…>` part).
pub fn tag_param(value: &str) -> Option<&str> {
    let params = match value.rfind('>') {
        Some(close) => &value[close + 1..],
        None => value,
    };
    params.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("tag").then(|| v.trim())
    })
}

/// The first Via value, parsed (comma-joined hops are split first).
pub fn top_via(headers: &Headers) -> Option<typed::Via> {
    let first = headers.get("Via")?;
    let via = rsipstack::sip::headers::untyped::Via::new(first)
        .first_value()
        .ok()?;
    typed::Via::parse(via.value().trim()).ok()
}

/// Rewrites the top Via as RFC 3261 §18.2.1 and RFC 3581 ask: `received` when the sent-by host
/// is not the source address, `rport` filled in when the client asked for it.
pub fn stamp_received(headers: &mut Headers, source: SocketAddr) {
    let Some(via) = top_via(headers) else { return };
    let mut extra = String::new();
    let wants_rport = matches!(via.rport(), Some(None));
    let host = via.sent_by().host.to_string();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if (wants_rport || host != source.ip().to_string()) && via.received().is_none() {
        let _ = write!(extra, ";received={}", source.ip());
    }
    let Some(first) = headers
        .0
        .iter_mut()
        .find(|h| h.name.eq_ignore_ascii_case("Via"))
    else {
        return;
    };
    let (top, rest) = split_first_value(&first.value);
    let mut top = top.to_string();
    if wants_rport {
        // Replace the bare `rport` parameter with `rport=<port>`.
        top = replace_bare_param(&top, "rport", &format!("rport={}", source.port()));
    }
    top.push_str(&extra);
    first.value = match rest {
        Some(rest) => format!("{top}{rest}"),
        None => top,
    };
}

fn split_first_value(value: &str) -> (&str, Option<&str>) {
    let first = split_outside(value, ',')
        .into_iter()
        .next()
        .unwrap_or(value);
    match &value[first.len()..] {
        "" => (first.trim_end(), None),
        rest => (first.trim_end(), Some(rest)),
    }
}

fn replace_bare_param(value: &str, name: &str, replacement: &str) -> String {
    value
        .split(';')
        .enumerate()
        .map(|(i, p)| {
            if i > 0 && p.trim().eq_ignore_ascii_case(name) {
                replacement.to_string()
            } else {
                p.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// Where a response to a request goes (RFC 3261 §18.2.2, RFC 3581 §4): UDP answers go to the
/// source IP, at the source port when `rport` was asked for, else the sent-by port.
pub fn response_target(headers: &Headers, source: SocketAddr, reliable: bool) -> SocketAddr {
    if reliable {
        return source;
    }
    let Some(via) = top_via(headers) else {
        return source;
    };
    if via.rport().is_some() {
        return source;
    }
    let port = via.sent_by().port.map(|p| p.value()).unwrap_or(5060);
    SocketAddr::new(source.ip(), port)
}

impl Request {
    pub fn call_id(&self) -> &str {
        self.headers.get("Call-ID").unwrap_or_default()
    }

    pub fn cseq(&self) -> (u32, &str) {
        parse_cseq(self.headers.get("CSeq").unwrap_or_default()).unwrap_or((0, ""))
    }

    pub fn from_tag(&self) -> Option<&str> {
        tag_param(self.headers.get("From")?)
    }

    pub fn to_tag(&self) -> Option<&str> {
        tag_param(self.headers.get("To")?)
    }

    /// The top Via branch: the transaction id for RFC 3261 peers.
    pub fn branch(&self) -> Option<String> {
        top_via(&self.headers)?.branch().map(|b| b.to_string())
    }

    /// The user part of the Request-URI (the dialled number).
    /// The user part of the Request-URI (the dialled number), with %HH escapes decoded
    /// (RFC 3261 §19.1.4: `sip:%65cho@host` is the same as `sip:echo@host`).
    pub fn uri_user(&self) -> Option<String> {
        let uri = rsipstack::sip::parse_uri(&self.uri).ok()?;
        uri.auth.map(|a| percent_decode(&a.user))
    }

    /// The Max-Forwards value, if present and numeric (leading zeros allowed).
    pub fn max_forwards(&self) -> Option<u32> {
        self.headers.get("Max-Forwards")?.trim().parse().ok()
    }

    /// Whether the body is SDP (no body counts as none; parameters after `;` are ignored).
    pub fn body_is_sdp(&self) -> bool {
        self.headers.get("Content-Type").is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp"))
        })
    }

    /// Starts a response that copies Via, From, To, Call-ID and CSeq (RFC 3261 §8.2.6.2).
    pub fn response(&self, status: u16, reason: &str) -> Response {
        let mut headers = Headers::default();
        for h in &self.headers.0 {
            if ["Via", "From", "To", "Call-ID", "CSeq"]
                .iter()
                .any(|n| h.name.eq_ignore_ascii_case(n))
            {
                headers.0.push(h.clone());
            }
        }
        Response {
            status,
            reason: reason.to_string(),
            headers,
            body: Bytes::new(),
        }
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(512 + self.body.len());
        let _ = write!(Writer(&mut out), "{} {} SIP/2.0\r\n", self.method, self.uri);
        write_headers_and_body(&mut out, &self.headers, &self.body);
        out.freeze()
    }
}

impl Response {
    /// Adds a To-tag unless the request already had one (RFC 3261 §8.2.6.2).
    pub fn with_to_tag(mut self, tag: &str) -> Self {
        if let Some(to) = self
            .headers
            .0
            .iter_mut()
            .find(|h| h.name.eq_ignore_ascii_case("To"))
        {
            if tag_param(&to.value).is_none() {
                to.value.push_str(";tag=");
                to.value.push_str(tag);
            }
        }
        self
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push(name, value);
        self
    }

    pub fn with_body(mut self, content_type: &str, body: impl Into<Bytes>) -> Self {
        self.headers.set("Content-Type", content_type);
        self.body = body.into();
        self
    }

    pub fn cseq(&self) -> (u32, &str) {
        parse_cseq(self.headers.get("CSeq").unwrap_or_default()).unwrap_or((0, ""))
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(512 + self.body.len());
        // A reason phrase may not carry CR or LF (RFC 3261 §25.1).
        let reason: String = self
            .reason
            .chars()
            .filter(|c| *c != '\r' && *c != '\n')
            .collect();
        let _ = write!(Writer(&mut out), "SIP/2.0 {} {}\r\n", self.status, reason);
        write_headers_and_body(&mut out, &self.headers, &self.body);
        out.freeze()
    }
}

fn write_headers_and_body(out: &mut BytesMut, headers: &Headers, body: &[u8]) {
    for h in &headers.0 {
        if h.name.eq_ignore_ascii_case("Content-Length") {
            continue;
        }
        let _ = write!(Writer(out), "{}: {}\r\n", h.name, h.value);
    }
    let _ = write!(Writer(out), "Content-Length: {}\r\n\r\n", body.len());
    out.put_slice(body);
}

struct Writer<'a>(&'a mut BytesMut);

impl std::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:echo@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-1;rport\r\n\
v: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK-0\r\n\
From: \"Alice\" <sip:alice@10.0.0.1>;tag=abc\r\n\
t: <sip:echo@127.0.0.1>\r\n\
i: call-1@10.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Max-Forwards: 70\r\n\
Subject: folded\r\n  continuation\r\n\
Content-Type: application/sdp\r\n\
l: 4\r\n\r\nv=0\r\nEXTRA";

    fn request(text: &str) -> Request {
        match parse(text.as_bytes()) {
            Ok(Message::Request(r)) => r,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn bad_request_reason(text: &str) -> String {
        match parse(text.as_bytes()) {
            Err(ParseError::BadRequest { reason, .. }) => reason,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn parses_compact_forms_folding_and_content_length() {
        let r = request(INVITE);
        assert_eq!(r.method, "INVITE");
        assert_eq!(r.call_id(), "call-1@10.0.0.1");
        assert_eq!(r.cseq(), (1, "INVITE"));
        assert_eq!(r.from_tag(), Some("abc"));
        assert_eq!(r.to_tag(), None);
        assert_eq!(r.headers.get("Subject"), Some("folded continuation"));
        assert_eq!(&r.body[..], b"v=0\r");
        assert_eq!(r.headers.get_all("Via").count(), 2);
        assert_eq!(r.branch().as_deref(), Some("z9hG4bK-1"));
        assert_eq!(r.uri_user().as_deref(), Some("echo"));
    }

    #[test]
    fn dialled_number_is_unescaped() {
        let r = request(&INVITE.replace("INVITE sip:echo@", "INVITE sip:%65cho@"));
        assert_eq!(r.uri_user().as_deref(), Some("echo"));
        assert_eq!(percent_decode("%2B1555%zz"), "+1555%zz");
    }

    #[test]
    fn methods_are_case_sensitive_and_unknown_ones_kept_as_sent() {
        assert_eq!(Method::from("INVITE"), Method::Invite);
        assert_eq!(Method::from("invite"), Method::Other("invite".into()));
        for name in [
            "INVITE",
            "ACK",
            "BYE",
            "CANCEL",
            "OPTIONS",
            "REGISTER",
            "INFO",
            "REFER",
            "NOTIFY",
            "UPDATE",
            "PRACK",
            "SUBSCRIBE",
            "MESSAGE",
            "PUBLISH",
            "FOOBAR",
        ] {
            assert_eq!(Method::from(name).as_str(), name);
            assert_eq!(Method::from(name).to_string(), name);
        }
        assert!(Method::Bye == "BYE" && Method::Bye != "bye");
    }

    #[test]
    fn unknown_methods_parse() {
        let text = INVITE
            .replace("INVITE sip", "FOOBAR sip")
            .replace("1 INVITE", "1 FOOBAR");
        assert_eq!(request(&text).method, "FOOBAR");
    }

    #[test]
    fn missing_headers_give_400_reasons() {
        for (header, reason) in [
            ("i: call-1@10.0.0.1\r\n", "Missing Call-ID"),
            ("CSeq: 1 INVITE\r\n", "Missing CSeq"),
            (
                "From: \"Alice\" <sip:alice@10.0.0.1>;tag=abc\r\n",
                "Missing From",
            ),
            ("t: <sip:echo@127.0.0.1>\r\n", "Missing To"),
        ] {
            assert_eq!(bad_request_reason(&INVITE.replace(header, "")), reason);
        }
    }

    #[test]
    fn missing_via_is_unanswerable() {
        let text = INVITE
            .replace(
                "Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-1;rport\r\n",
                "",
            )
            .replace("v: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK-0\r\n", "");
        assert!(matches!(
            parse(text.as_bytes()),
            Err(ParseError::Unparseable(_))
        ));
    }

    #[test]
    fn content_length_errors() {
        assert_eq!(
            bad_request_reason(&INVITE.replace("l: 4", "l: 400")),
            "Content-Length 400 larger than the 10 body bytes received"
        );
        assert_eq!(
            bad_request_reason(&INVITE.replace("l: 4", "l: four")),
            "Malformed Content-Length \"four\""
        );
    }

    #[test]
    fn garbage_and_truncation_are_unparseable() {
        assert!(matches!(
            parse(b"\x00\xff\x13garbage"),
            Err(ParseError::Unparseable(_))
        ));
        assert!(matches!(parse(b""), Err(ParseError::Unparseable(_))));
        let truncated = &INVITE.as_bytes()[..80];
        assert!(matches!(parse(truncated), Err(ParseError::Unparseable(_))));
    }

    #[test]
    fn cseq_method_mismatch_is_400() {
        let text = INVITE.replace("1 INVITE", "1 BYE");
        assert_eq!(
            bad_request_reason(&text),
            "CSeq method does not match the request"
        );
    }

    #[test]
    fn response_copies_dialog_headers_and_reason() {
        let r = request(INVITE);
        let bytes = r
            .response(400, "Missing Call-ID")
            .with_to_tag("xyz")
            .to_bytes();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.starts_with("SIP/2.0 400 Missing Call-ID\r\n"));
        assert!(text.contains("To: <sip:echo@127.0.0.1>;tag=xyz\r\n"));
        assert!(text.contains("Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK-0\r\n"));
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
        match parse(&bytes) {
            Ok(Message::Response(resp)) => {
                assert_eq!(resp.status, 400);
                assert_eq!(resp.reason, "Missing Call-ID");
            }
            other => panic!("{other:?}"),
        }
    }

    fn bad_request(text: &str) -> (u16, String) {
        match parse(text.as_bytes()) {
            Err(ParseError::BadRequest { status, reason, .. }) => (status, reason),
            other => panic!("expected an answerable bad request, got {other:?}"),
        }
    }

    /// RFC 4475 baddn: a datagram that ends after a header line, without the empty line.
    #[test]
    fn datagram_without_empty_line_is_answerable() {
        let text = INVITE
            .replace("Content-Type: application/sdp\r\n", "")
            .replace("l: 4\r\n\r\nv=0\r\nEXTRA", "l: 0\r\n");
        assert_eq!(
            bad_request(&text),
            (400, "Header block not terminated by an empty line".into())
        );
        // Cut inside a line: nothing to answer.
        assert!(matches!(
            parse(&text.as_bytes()[..text.len() - 1]),
            Err(ParseError::Unparseable(_))
        ));
    }

    /// RFC 4475 lwsstart, trws, lwsruri: answerable, with 400.
    #[test]
    fn malformed_request_lines_are_400() {
        for line in [
            "INVITE  sip:echo@127.0.0.1:5060  SIP/2.0",
            "INVITE sip:echo@127.0.0.1:5060 SIP/2.0  ",
            "INVITE sip:echo@127.0.0.1:5060; lr SIP/2.0",
        ] {
            let text = INVITE.replace("INVITE sip:echo@127.0.0.1:5060 SIP/2.0", line);
            assert_eq!(bad_request(&text), (400, "Malformed Request-Line".into()));
        }
        let garbage = INVITE.replace("INVITE sip:echo@127.0.0.1:5060 SIP/2.0", "INVITE a b c");
        assert!(matches!(
            parse(garbage.as_bytes()),
            Err(ParseError::Unparseable(_))
        ));
    }

    /// RFC 4475 badvers: 505, not 400; the version is case-insensitive (RFC 3261 §7.1).
    #[test]
    fn other_sip_versions_get_505() {
        let text = INVITE.replace("5060 SIP/2.0", "5060 SIP/7.0");
        assert_eq!(bad_request(&text), (505, "Version Not Supported".into()));
        assert_eq!(
            request(&INVITE.replace("5060 SIP/2.0", "5060 sip/2.0")).method,
            "INVITE"
        );
    }

    /// RFC 4475 badinv01 (empty Via parameters) is 400; wsinv's LWS in Via is fine.
    #[test]
    fn via_hops_are_checked() {
        let text = INVITE.replace(
            "v: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK-0",
            "v: SIP/2.0/UDP 192.0.2.15;;,;,,",
        );
        assert_eq!(bad_request(&text), (400, "Malformed Via".into()));
        let lws = INVITE.replace(
            "v: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK-0",
            "v:  SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8  ,\r\n SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239",
        );
        assert_eq!(request(&lws).headers.get_all("Via").count(), 2);
    }

    /// RFC 4475 multi01.
    #[test]
    fn repeated_single_headers_are_400() {
        let text = INVITE.replace("CSeq: 1 INVITE\r\n", "CSeq: 1 INVITE\r\nCSeq: 2 INVITE\r\n");
        assert_eq!(bad_request(&text), (400, "Multiple CSeq headers".into()));
        let text = INVITE.replace("i: call-1", "Call-ID: call-2@10.0.0.1\r\ni: call-1");
        assert_eq!(bad_request(&text), (400, "Multiple Call-ID headers".into()));
    }

    /// RFC 4475 escruri is 400; intmeth's `?` in the user part is not a header.
    #[test]
    fn headers_in_request_uri_are_400() {
        let text = INVITE.replace(
            "sip:echo@127.0.0.1:5060 SIP",
            "sip:echo@127.0.0.1?Route=%3Csip:example.com%3E SIP",
        );
        assert_eq!(
            bad_request(&text),
            (400, "Headers not allowed in the Request-URI".into())
        );
        let text = INVITE.replace(
            "sip:echo@127.0.0.1:5060 SIP",
            "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP",
        );
        request(&text);
    }

    /// RFC 4475 quotbal, baddn, badaspec are 400; lwsdisp, intmeth, wsinv forms are fine.
    #[test]
    fn from_and_to_are_checked() {
        let to = "t: <sip:echo@127.0.0.1>";
        for bad in [
            "t: \"Mr. J. User <sip:j.user@example.com>",
            "t: Watson, Thomas <sip:t.watson@example.org>",
            "t: \"Watson, Thomas\" < sip:t.watson@example.org >",
            "t: \"A\" \"B\" <sip:t.watson@example.org>",
            "t: <sip:t.watson@example.org> junk",
        ] {
            assert_eq!(
                bad_request(&INVITE.replace(to, bad)),
                (400, "Malformed To".into()),
                "{bad}"
            );
        }
        for good in [
            "t: caller<sip:caller@example.com>",
            "t: A. Bell <sip:a.g.bell@example.com>;tag=x",
            "t: \"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f\" <sip:a@example.com>",
            "t: \"J Rosenberg \\\\\\\"\"  <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8",
            "t: \"a <b>, c\" <sip:a@example.com>",
            "t: sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n",
        ] {
            let r = request(&INVITE.replace(to, good));
            assert!(name_addr_uri_text(r.headers.get("To").unwrap())
                .is_some_and(|u| u.starts_with("sip:")));
        }
    }

    /// RFC 4475 regbadct: a Contact URI with `?` must be in angle brackets (RFC 3261 §20).
    #[test]
    fn contact_is_checked() {
        let with = |contact: &str| {
            INVITE.replace(
                "Max-Forwards: 70\r\n",
                &format!("Max-Forwards: 70\r\n{contact}\r\n"),
            )
        };
        assert_eq!(
            bad_request(&with(
                "Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E"
            )),
            (400, "Malformed Contact".into())
        );
        for good in [
            "m: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>",
            "Contact: sip:+19725552222@gw1.example.net;unknownparam",
            "Contact: *",
            "Contact: <sip:a@b>, \"x, y\" <sip:c@d>;q=0.5",
            "m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =\r\n      newvalue ;\r\n  secondparam ; q = 0.33",
        ] {
            request(&with(good));
        }
    }

    #[test]
    fn rport_and_received() {
        let mut r = request(INVITE);
        let src: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        stamp_received(&mut r.headers, src);
        assert_eq!(
            r.headers.get("Via"),
            Some("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-1;rport=40000;received=192.0.2.7")
        );
        assert_eq!(response_target(&r.headers, src, false), src);

        let mut no_rport = request(&INVITE.replace(";rport", ""));
        stamp_received(&mut no_rport.headers, src);
        assert_eq!(
            no_rport.headers.get("Via"),
            Some("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-1;received=192.0.2.7")
        );
        assert_eq!(
            response_target(&no_rport.headers, src, false),
            "192.0.2.7:5070".parse().unwrap()
        );
    }
}
