//! Via: the top hop parsed, stamped with `received`/`rport` on arrival, and where a response
//! therefore goes.

use std::fmt::Write as _;
use std::net::SocketAddr;

use rsipstack::sip::typed;

use super::headers::split_outside;
use super::Headers;

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
