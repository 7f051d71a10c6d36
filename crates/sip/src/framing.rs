//! Cutting SIP messages out of a TCP/TLS byte stream by Content-Length (RFC 3261 §18.3).
//!
//! Two steps, as in mini-redis: [`Framer::check`] says whether a whole message is buffered,
//! then the caller hands exactly that many bytes to [`crate::message::parse`]. A [`Framer`]
//! remembers how far it got between reads, so a message that arrives a byte at a time costs
//! work in proportion to its length, not to its length squared.

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Not a whole message yet: read more.
    Incomplete,
    /// CRLF keep-alives (RFC 5626) to discard: this many bytes.
    KeepAlive(usize),
    /// A whole message of this many bytes starts the buffer.
    Message(usize),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    /// The header block (this many bytes, blank line included) is whole, so the request can
    /// still be answered with a 400 before the connection is closed.
    #[error("Content-Length is not a number")]
    BadContentLength(usize),
    #[error("header block is not text")]
    NotText,
}

/// Only the start of a message is checked for binary garbage: a SIP start line is text.
const TEXT_CHECK_BYTES: usize = 256;

/// The framing state of one stream between reads.
///
/// The caller's contract: bytes are only appended to the buffer, except that after
/// [`Frame::KeepAlive`]`(n)` or [`Frame::Message`]`(n)` it removes exactly `n` bytes from the
/// front. After an error the stream is closed and the framer dropped.
#[derive(Clone, Debug, Default)]
pub struct Framer {
    /// No header end starts before this offset (everything before it has been searched).
    scanned: usize,
    /// The first `text_checked` bytes hold no binary control characters.
    text_checked: usize,
    /// Once the header block is whole: the length of the whole message.
    total: Option<usize>,
    /// Bytes looked at by the header-end search, for the tests' linearity check.
    #[cfg(test)]
    examined: usize,
}

impl Framer {
    /// Looks at the start of `buf` for one whole message no larger than `max` bytes.
    ///
    /// A stream whose framing is lost (garbage, a bad Content-Length, an oversized message)
    /// cannot be resynchronised, so these are errors and the caller closes the connection.
    pub fn check(&mut self, buf: &[u8], max: usize) -> Result<Frame, FramingError> {
        if let Some(total) = self.total {
            return Ok(self.complete_when_buffered(buf, total));
        }
        if self.scanned == 0 {
            let leading = buf
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            if leading > 0 {
                return Ok(Frame::KeepAlive(leading));
            }
        }
        let window = &buf[..buf.len().min(max)];
        let Some((head_end, body_start)) = self.find_head_end(window) else {
            if buf.len() >= max {
                return Err(FramingError::TooLarge(max));
            }
            self.check_text(buf, buf.len())?;
            return Ok(Frame::Incomplete);
        };
        self.check_text(buf, head_end)?;
        let content_length = content_length(&buf[..head_end], body_start)?;
        let total = body_start
            .checked_add(content_length)
            .ok_or(FramingError::TooLarge(max))?;
        if total > max {
            return Err(FramingError::TooLarge(max));
        }
        self.total = Some(total);
        Ok(self.complete_when_buffered(buf, total))
    }

    /// Garbage shows early: the start of the header block, up to `head_end`, must be text.
    /// Checked the same whether the headers are whole or not, so that how the bytes were
    /// split into reads does not change the outcome.
    fn check_text(&mut self, buf: &[u8], head_end: usize) -> Result<(), FramingError> {
        let end = head_end.min(TEXT_CHECK_BYTES);
        if end > self.text_checked {
            if buf[self.text_checked..end]
                .iter()
                .any(|b| *b == 0 || (*b < 0x20 && !b"\r\n\t".contains(b)))
            {
                return Err(FramingError::NotText);
            }
            self.text_checked = end;
        }
        Ok(())
    }

    fn complete_when_buffered(&mut self, buf: &[u8], total: usize) -> Frame {
        if buf.len() < total {
            return Frame::Incomplete;
        }
        // The caller removes the message: the next one starts afresh.
        *self = Self {
            #[cfg(test)]
            examined: self.examined,
            ..Self::default()
        };
        Frame::Message(total)
    }

    /// The first blank line (CRLF CRLF, or bare LF LF) from where the last search stopped:
    /// `(end of the headers, start of the body)`.
    fn find_head_end(&mut self, data: &[u8]) -> Option<(usize, usize)> {
        for i in self.scanned..data.len() {
            #[cfg(test)]
            {
                self.examined += 1;
            }
            let rest = &data[i..];
            if rest.starts_with(b"\r\n\r\n") {
                return Some((i, i + 4));
            }
            if rest.starts_with(b"\n\n") {
                return Some((i, i + 2));
            }
        }
        // Only a CR/LF tail (at most three bytes) can begin a blank line that the next read
        // completes: the search resumes there.
        let tail = data
            .iter()
            .rev()
            .take(3)
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        self.scanned = self.scanned.max(data.len() - tail);
        None
    }
}

/// The Content-Length of a whole header block (0 when absent; the last one when repeated,
/// which the parser then answers with a 400).
fn content_length(head: &[u8], body_start: usize) -> Result<usize, FramingError> {
    let head = std::str::from_utf8(head).map_err(|_| FramingError::NotText)?;
    let mut content_length = 0usize;
    for line in head.split('\n') {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("Content-Length") || name.eq_ignore_ascii_case("l") {
            content_length = value
                .trim()
                .parse()
                .map_err(|_| FramingError::BadContentLength(body_start))?;
        }
    }
    Ok(content_length)
}

/// [`Framer::check`] on a buffer seen for the first time.
pub fn check(buf: &[u8], max: usize) -> Result<Frame, FramingError> {
    Framer::default().check(buf, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 5\r\n\r\nhello";

    #[test]
    fn frames_by_content_length() {
        assert_eq!(check(MSG, 65536), Ok(Frame::Message(MSG.len())));
        let mut two = MSG.to_vec();
        two.extend_from_slice(MSG);
        assert_eq!(check(&two, 65536), Ok(Frame::Message(MSG.len())));
        assert_eq!(check(&MSG[..MSG.len() - 1], 65536), Ok(Frame::Incomplete));
        assert_eq!(check(&MSG[..10], 65536), Ok(Frame::Incomplete));
    }

    #[test]
    fn keepalives_are_skipped() {
        assert_eq!(check(b"\r\n\r\nOPT", 65536), Ok(Frame::KeepAlive(4)));
    }

    #[test]
    fn errors_close_the_stream() {
        assert_eq!(
            check(b"\x00\x01\x02garbage", 65536),
            Err(FramingError::NotText)
        );
        let bad = b"OPTIONS sip:a@b SIP/2.0\r\nl: x\r\n\r\n";
        assert_eq!(
            check(bad, 65536),
            Err(FramingError::BadContentLength(bad.len()))
        );
        let big = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 1048576\r\n\r\n";
        assert_eq!(check(big, 65536), Err(FramingError::TooLarge(65536)));
        let endless = vec![b'a'; 70000];
        assert_eq!(check(&endless, 65536), Err(FramingError::TooLarge(65536)));
    }

    /// Feeds `message` to one framer a byte at a time, as a trickling peer would; returns what
    /// the framer said when the last byte arrived and how many bytes it looked at.
    fn trickle(message: &[u8], max: usize) -> (Result<Frame, FramingError>, usize) {
        let mut framer = Framer::default();
        for end in 1..message.len() {
            match framer.check(&message[..end], max) {
                Ok(Frame::Incomplete) => {}
                other => return (other, framer.examined),
            }
        }
        (framer.check(message, max), framer.examined)
    }

    #[test]
    fn a_byte_at_a_time_frames_as_in_one_piece() {
        let lf_only = b"OPTIONS sip:a@b SIP/2.0\nl: 3\n\nabc";
        let no_body = b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n";
        let bad = b"OPTIONS sip:a@b SIP/2.0\r\nl: x\r\n\r\n";
        let big = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 1048576\r\n\r\n";
        let binary = b"OPT\x01IONS sip:a@b SIP/2.0\r\n\r\n";
        for message in [MSG, lf_only, no_body, bad, big, binary] {
            assert_eq!(
                trickle(message, 65536).0,
                check(message, 65536),
                "{}",
                String::from_utf8_lossy(message)
            );
        }
        assert_eq!(trickle(MSG, 65536).0, Ok(Frame::Message(MSG.len())));
        let endless = vec![b'a'; 2000];
        assert_eq!(trickle(&endless, 1024).0, Err(FramingError::TooLarge(1024)));
    }

    #[test]
    fn trickled_headers_cost_linear_work() {
        let mut message = b"INVITE sip:a@b SIP/2.0\r\n".to_vec();
        while message.len() < 60_000 {
            message.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        message.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        let (frame, examined) = trickle(&message, 65536);
        assert_eq!(frame, Ok(Frame::Message(message.len())));
        // Each byte is looked at about once (a CR/LF tail again on the next read);
        // re-scanning from the start on every read would be ~1.8e9.
        assert!(
            examined <= 2 * message.len(),
            "{examined} bytes examined for a {}-byte message",
            message.len()
        );
    }

    #[test]
    fn messages_after_the_first_are_framed_afresh() {
        let mut framer = Framer::default();
        let mut stream = MSG.to_vec();
        stream.extend_from_slice(b"\r\n\r\n");
        stream.extend_from_slice(MSG);
        let mut buf: &[u8] = &stream;
        let mut frames = Vec::new();
        while !buf.is_empty() {
            match framer.check(buf, 65536).unwrap() {
                Frame::Incomplete => panic!("whole stream buffered"),
                frame @ (Frame::KeepAlive(n) | Frame::Message(n)) => {
                    frames.push(frame);
                    buf = &buf[n..];
                }
            }
        }
        assert_eq!(
            frames,
            [
                Frame::Message(MSG.len()),
                Frame::KeepAlive(4),
                Frame::Message(MSG.len())
            ]
        );
    }
}
