//! Whether a request's Accept header lets us answer with a body of a given media type
//! (RFC 3261 §20.1, §21.4.7: when it does not, the answer is 406 Not Acceptable).

use crate::message::{split_values, Headers};

/// Whether a response body of `media_type` (e.g. `application/sdp`) is acceptable to the sender
/// of a request with these headers.
///
/// No Accept header means `application/sdp` only (RFC 3261 §20.1); an empty one accepts
/// nothing. Ranges may be `*/*` or `type/*`; the most specific range that matches decides, and
/// `q=0` refuses (RFC 2616 §14.1 semantics, which RFC 3261 borrows). Anything unparseable in
/// a range makes that range match nothing.
pub fn accepts(headers: &Headers, media_type: &str) -> bool {
    let mut values = headers.get_all("Accept").peekable();
    if values.peek().is_none() {
        return media_type.eq_ignore_ascii_case("application/sdp");
    }
    let Some((want_type, want_subtype)) = media_type.split_once('/') else {
        return false;
    };
    // (specificity, acceptable) of the best match so far: 2 exact, 1 type/*, 0 */*.
    let mut best: Option<(u8, bool)> = None;
    for range in values.flat_map(split_values) {
        let mut parts = range.split(';');
        let Some((range_type, range_subtype)) = parts.next().and_then(|r| r.trim().split_once('/'))
        else {
            continue;
        };
        let (range_type, range_subtype) = (range_type.trim(), range_subtype.trim());
        let specificity = if range_type == "*" && range_subtype == "*" {
            0
        } else if range_type.eq_ignore_ascii_case(want_type) && range_subtype == "*" {
            1
        } else if range_type.eq_ignore_ascii_case(want_type)
            && range_subtype.eq_ignore_ascii_case(want_subtype)
        {
            2
        } else {
            continue;
        };
        let refused = parts.any(|p| {
            p.split_once('=').is_some_and(|(name, value)| {
                name.trim().eq_ignore_ascii_case("q")
                    && value.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
            })
        });
        if best.is_none_or(|(s, _)| specificity > s) {
            best = Some((specificity, !refused));
        }
    }
    best.is_some_and(|(_, acceptable)| acceptable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_accept(values: &[&str]) -> Headers {
        let mut headers = Headers::default();
        for v in values {
            headers.push("Accept", *v);
        }
        headers
    }

    #[test]
    fn no_accept_means_sdp_only() {
        let headers = Headers::default();
        assert!(accepts(&headers, "application/sdp"));
        assert!(!accepts(&headers, "text/plain"));
    }

    #[test]
    fn an_accept_without_sdp_refuses_sdp() {
        // RFC 4475 sdp01.
        assert!(!accepts(
            &with_accept(&["text/nobodyKnowsThis"]),
            "application/sdp"
        ));
        assert!(!accepts(&with_accept(&[""]), "application/sdp"));
        assert!(!accepts(
            &with_accept(&["application/sdpx"]),
            "application/sdp"
        ));
        assert!(!accepts(&with_accept(&["text/*"]), "application/sdp"));
    }

    #[test]
    fn sdp_listed_among_others_or_by_wildcard_is_accepted() {
        for accept in [
            "application/sdp",
            "Application/SDP",
            "text/html, application/sdp;level=1, application/x-private",
            "application/*",
            "*/*",
            " application/sdp ; q=0.5",
        ] {
            assert!(
                accepts(&with_accept(&[accept]), "application/sdp"),
                "{accept}"
            );
        }
        // Spread over several Accept lines.
        assert!(accepts(
            &with_accept(&["text/plain", "application/sdp"]),
            "application/sdp"
        ));
    }

    #[test]
    fn q_zero_refuses_and_the_most_specific_range_decides() {
        assert!(!accepts(
            &with_accept(&["application/sdp;q=0"]),
            "application/sdp"
        ));
        assert!(!accepts(
            &with_accept(&["*/*, application/sdp;q=0.0"]),
            "application/sdp"
        ));
        assert!(accepts(
            &with_accept(&["*/*;q=0, application/sdp"]),
            "application/sdp"
        ));
        assert!(accepts(
            &with_accept(&["application/sdp, */*;q=0"]),
            "application/sdp"
        ));
    }

    #[test]
    fn garbage_ranges_match_nothing() {
        for accept in ["application", "/", ";;;", ",,", "application/sdp;q"] {
            let _ = accepts(&with_accept(&[accept]), "application/sdp");
        }
        assert!(!accepts(&with_accept(&["application"]), "application/sdp"));
        // A bare `q` (no value) is no q-value: the range stands.
        assert!(accepts(
            &with_accept(&["application/sdp;q"]),
            "application/sdp"
        ));
    }
}
