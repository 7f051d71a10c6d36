//! Cutting SIP messages out of a TCP/TLS byte stream by Content-Length (RFC 3261 §18.3).
//!
//! Two steps, as in mini-redis: [`check`] says whether a whole message is buffered, then the
//! caller hands exactly that many bytes to [`crate::message::parse`].

use crate::message::find_head_end;

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
    #[error("Content-Length is not a number")]
    BadContentLength,
    #[error("header block is not text")]
    NotText,
}

/// Looks at the start of `buf` for one whole message no larger than `max` bytes.
///
/// A stream whose framing is lost (garbage, a bad Content-Length, an oversized message) cannot be
/// resynchronised, so these are errors and the caller closes the connection.
pub fn check(buf: &[u8], max: usize) -> Result<Frame, FramingError> {
    let leading = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    if leading > 0 {
        return Ok(Frame::KeepAlive(leading));
    }
    let Some((head_end, body_start)) = find_head_end(&buf[..buf.len().min(max)]) else {
        if buf.len() >= max {
            return Err(FramingError::TooLarge(max));
        }
        // Garbage shows early: a SIP start line is printable text.
        if buf
            .iter()
            .take(256)
            .any(|b| *b == 0 || (*b < 0x20 && !b"\r\n\t".contains(b)))
        {
            return Err(FramingError::NotText);
        }
        return Ok(Frame::Incomplete);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| FramingError::NotText)?;
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
                .map_err(|_| FramingError::BadContentLength)?;
        }
    }
    let total = body_start
        .checked_add(content_length)
        .ok_or(FramingError::TooLarge(max))?;
    if total > max {
        return Err(FramingError::TooLarge(max));
    }
    if buf.len() < total {
        return Ok(Frame::Incomplete);
    }
    Ok(Frame::Message(total))
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
        assert_eq!(check(bad, 65536), Err(FramingError::BadContentLength));
        let big = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 1048576\r\n\r\n";
        assert_eq!(check(big, 65536), Err(FramingError::TooLarge(65536)));
        let endless = vec![b'a'; 70000];
        assert_eq!(check(&endless, 65536), Err(FramingError::TooLarge(65536)));
    }
}
