//! Parsing one message from bytes, with a defined outcome for every input: the header block
//! unfolded and compact names expanded, then each request checked until it is well formed or
//! known to be answerable with `400`/`505`.

use bytes::Bytes;

use super::headers::{find_laquot, name_addr_uri, parse_cseq, split_outside};
use super::via::top_via;
use super::{is_token, Headers, Message, Method, ParseError, Request, Response};

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

/// Where the header block ends: the index of the empty line's CRLF CRLF (or LF LF).
fn find_head_end(data: &[u8]) -> Option<(usize, usize)> {
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
