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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Method token as sent: methods are case-sensitive (RFC 3261 §7.1).
    pub method: String,
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
    /// A request whose Via, Call-ID, CSeq, From and To were readable enough to answer with
    /// `400 <reason>`; `request` holds what was read.
    BadRequest {
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
    let (head_end, body_start) = find_head_end(data).ok_or_else(|| {
        ParseError::Unparseable("header block not terminated by an empty line".into())
    })?;
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

    let mut parts = start_line.split(' ');
    let (method, uri, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(u), Some(v), None) if is_token(m) && !u.is_empty() => (m, u, v),
        _ => {
            return Err(ParseError::Unparseable(format!(
                "bad request line {:?}",
                start_line.chars().take(60).collect::<String>()
            )))
        }
    };
    let mut request = Request {
        method: method.to_string(),
        uri: uri.to_string(),
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
        reason,
        request: Box::new(request),
    };
    if let Some(line) = malformed_header {
        return Err(bad(format!("Malformed header line {line:?}"), request));
    }
    for required in ["Call-ID", "CSeq", "From", "To"] {
        if request.headers.get(required).is_none() {
            return Err(bad(format!("Missing {required}"), request));
        }
    }
    if version != "SIP/2.0" {
        return Err(bad("Unsupported SIP version".into(), request));
    }
    match parse_cseq(request.headers.get("CSeq").unwrap_or_default()) {
        Some((_, m)) if m == request.method => {}
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
    for name in ["From", "To"] {
        let value = request.headers.get(name).unwrap_or_default();
        if name_addr_uri(value).is_none() {
            return Err(bad(format!("Malformed {name}"), request));
        }
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
    Ok(Message::Request(request))
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
    match (value.find('<'), value.rfind('>')) {
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
    let mut in_quotes = false;
    for (i, c) in value.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => return (value[..i].trim_end(), Some(&value[i..])),
            _ => {}
        }
    }
    (value, None)
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
    pub fn uri_user(&self) -> Option<String> {
        let uri = rsipstack::sip::parse_uri(&self.uri).ok()?;
        uri.auth.map(|a| a.user)
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
