//! DTMF in SIP INFO bodies: `application/dtmf-relay` and `application/dtmf`, the two formats
//! PBXs send when they do not use RFC 4733 telephone-events in the media.

/// Duration given to a digit whose body does not say (`application/dtmf` never does).
pub const DEFAULT_DURATION_MS: u32 = 250;

/// The keys of RFC 4733 events 0–15, in event order.
const KEYS: &[u8; 16] = b"0123456789*#ABCD";

/// One key press read from an INFO body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InfoDigit {
    /// `'0'`-`'9'`, `'*'`, `'#'` or `'A'`-`'D'`.
    pub digit: char,
    pub duration_ms: u32,
}

/// Reads the DTMF digit of a SIP INFO body.
///
/// * `application/dtmf-relay`: lines `Signal=5` and `Duration=160` (ms); Signal may be a
///   digit, `*`, `#`, `A`-`D`, or the event number (10 and 11 for `*` and `#`).
/// * `application/dtmf`: the body is the digit or its event number.
///
/// The content type is compared without case and its parameters are ignored. Anything else,
/// or a body without a valid digit, gives `None`.
pub fn parse_dtmf(content_type: &str, body: &[u8]) -> Option<InfoDigit> {
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    let body = std::str::from_utf8(body).ok()?;
    if media_type.eq_ignore_ascii_case("application/dtmf-relay") {
        let mut digit = None;
        let mut duration_ms = DEFAULT_DURATION_MS;
        for line in body.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim();
            let value = value.trim();
            if key.eq_ignore_ascii_case("signal") {
                digit = Some(signal_digit(value)?);
            } else if key.eq_ignore_ascii_case("duration") {
                // A garbled duration is not worth losing the digit for.
                if let Ok(ms) = value.parse::<u32>() {
                    duration_ms = ms;
                }
            }
        }
        Some(InfoDigit {
            digit: digit?,
            duration_ms,
        })
    } else if media_type.eq_ignore_ascii_case("application/dtmf") {
        Some(InfoDigit {
            digit: signal_digit(body.trim())?,
            duration_ms: DEFAULT_DURATION_MS,
        })
    } else {
        None
    }
}

/// A key written as itself (any case) or as its event number.
fn signal_digit(value: &str) -> Option<char> {
    if let Ok(event) = value.parse::<usize>() {
        return KEYS.get(event).map(|&k| char::from(k));
    }
    let mut chars = value.chars();
    let c = chars.next()?.to_ascii_uppercase();
    if chars.next().is_some() {
        return None;
    }
    KEYS.contains(&u8::try_from(c).ok()?).then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digit(content_type: &str, body: &[u8]) -> Option<char> {
        parse_dtmf(content_type, body).map(|d| d.digit)
    }

    #[test]
    fn dtmf_relay_bodies() {
        let e = parse_dtmf("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n").unwrap();
        assert_eq!(
            e,
            InfoDigit {
                digit: '5',
                duration_ms: 160,
            }
        );
        let star = parse_dtmf(
            "Application/DTMF-Relay; charset=utf-8",
            b"Signal= *\nDuration= 250",
        );
        assert_eq!(star.map(|e| (e.digit, e.duration_ms)), Some(('*', 250)));
        assert_eq!(
            digit("application/dtmf-relay", b"Signal=11\r\nDuration=100"),
            Some('#')
        );
        assert_eq!(digit("application/dtmf-relay", b"Signal=10"), Some('*'));
        assert_eq!(digit("application/dtmf-relay", b"signal=d\r\n"), Some('D'));
        let no_duration = parse_dtmf("application/dtmf-relay", b"Signal=B").unwrap();
        assert_eq!(no_duration.duration_ms, DEFAULT_DURATION_MS);
    }

    #[test]
    fn dtmf_bodies() {
        assert_eq!(digit("application/dtmf", b"7"), Some('7'));
        assert_eq!(digit("APPLICATION/DTMF", b"#\r\n"), Some('#'));
        assert_eq!(digit("application/dtmf", b"11"), Some('#'));
        assert_eq!(digit("application/dtmf", b"15"), Some('D'));
        assert_eq!(digit("application/dtmf", b"0"), Some('0'));
    }

    #[test]
    fn garbage_gives_no_digit() {
        assert_eq!(parse_dtmf("application/sdp", b"Signal=5"), None);
        assert_eq!(parse_dtmf("application/dtmf-relay", b""), None);
        assert_eq!(parse_dtmf("application/dtmf-relay", b"Duration=100"), None);
        assert_eq!(parse_dtmf("application/dtmf-relay", b"Signal=16"), None);
        assert_eq!(parse_dtmf("application/dtmf-relay", b"Signal=55"), None);
        assert_eq!(parse_dtmf("application/dtmf-relay", b"Signal=x"), None);
        assert_eq!(parse_dtmf("application/dtmf-relay", b"Signal=\xff"), None);
        assert_eq!(
            parse_dtmf("application/dtmf-relay", b"Signal=\xc3\xa9"),
            None
        );
        assert_eq!(parse_dtmf("application/dtmf", b"12345"), None);
        assert_eq!(parse_dtmf("application/dtmf", b""), None);
        assert_eq!(parse_dtmf("application/dtmf", b"E"), None);
        assert_eq!(parse_dtmf("application/dtmf", b"-1"), None);
        assert_eq!(parse_dtmf("", b"5"), None);
        // Only the Signal must be valid: a bad Duration falls back to the default.
        let e = parse_dtmf("application/dtmf-relay", b"Signal=3\r\nDuration=abc").unwrap();
        assert_eq!((e.digit, e.duration_ms), ('3', DEFAULT_DURATION_MS));
    }
}
