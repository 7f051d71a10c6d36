//! SIP messages on the wire: parsing with a defined outcome for every input, and serialising.
//!
//! Header values are kept as text and read through rsipstack's `sip` types (URIs, Via, tags)
//! where structure matters. The message layer itself is ours because rsipstack's parser rejects
//! methods it does not know (RFC 3261 requires 501 for them), treats a malformed Content-Length
//! as 0, and always writes the standard reason phrase (our 400s say what was wrong).

mod headers;
mod method;
mod parse;
mod via;

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};

pub use headers::{
    name_addr_uri, name_addr_uri_text, parse_cseq, split_values, tag_param, Header, Headers,
};
pub use method::Method;
pub use parse::parse;
pub use via::{response_target, stamp_received, top_via};

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

/// A token (RFC 3261 §25.1): methods, header names, parameter names.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
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
mod tests;
