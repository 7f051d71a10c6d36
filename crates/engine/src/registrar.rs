//! The registrar (RFC 3261 §10): a trunk's PBX with `registration_enabled` REGISTERs with its
//! digest credentials, and its bindings are kept in the store with their expiry, across
//! restarts, so inbound calls can reach it behind NAT (the source address is kept with each
//! binding). Calls read the bindings from memory ([`crate::bindings::Bindings`]), a copy of the
//! store's that every REGISTER keeps in step after writing the store.

use std::sync::Arc;

use tracing::{info, warn};
use voicegate_control::Binding;
use voicegate_sip::message::{self, Request, Response};
use voicegate_sip::transport::Source;

use crate::admit::Outcome;
use crate::core::Core;

/// Shortest registration we accept (RFC 3261 §10.3 step 7: 423 with Min-Expires below it).
pub const MIN_EXPIRES: u64 = 60;
/// Longest registration we grant; longer requests are shortened.
pub const MAX_EXPIRES: u64 = 7200;
const DEFAULT_EXPIRES: u64 = 3600;

/// Answers one REGISTER (called on its own task: the store is written before the answer).
pub async fn handle(core: Arc<Core>, request: Request, source: Source) {
    let response = register(&core, &request, &source).await;
    let branch = request.branch().unwrap_or_default();
    core.answer(&request, &source, &branch, response);
}

async fn register(core: &Core, request: &Request, source: &Source) -> Response {
    let (Some(gate), Some(store)) = (core.gate.as_ref(), core.store.as_ref()) else {
        return request
            .response(405, "Method Not Allowed")
            .header("Allow", voicegate_sip::dialog::ALLOW);
    };
    let trunk_sid = match gate.authenticate(request) {
        Ok(trunk) => trunk,
        Err(Outcome::Challenge(values)) => {
            return values
                .into_iter()
                .fold(request.response(401, "Unauthorized"), |r, v| {
                    r.header("WWW-Authenticate", v)
                })
        }
        Err(Outcome::Refused { status, reason, .. }) => return request.response(status, &reason),
        Err(Outcome::Admitted { .. }) => return request.response(500, "Server Internal Error"),
    };
    if !gate.trunks().registration_enabled(&trunk_sid) {
        return request.response(403, "Forbidden (registration not enabled for this trunk)");
    }
    let Some(aor) = request
        .headers
        .get("To")
        .and_then(message::name_addr_uri_text)
        .map(str::to_string)
    else {
        return request.response(400, "Malformed To");
    };
    let now = crate::clock::unix_secs();
    let default_expires = match request
        .headers
        .get("Expires")
        .map(|e| e.trim().parse::<u64>())
    {
        None => DEFAULT_EXPIRES,
        Some(Ok(e)) => e,
        Some(Err(_)) => return request.response(400, "Malformed Expires"),
    };
    let contacts: Vec<&str> = request
        .headers
        .get_all("Contact")
        .flat_map(message::split_values)
        .collect();
    let (call_id, cseq) = (request.call_id().to_string(), request.cseq().0 as i64);
    if contacts.iter().any(|c| c.trim() == "*") {
        if contacts.len() != 1 || default_expires != 0 {
            return request.response(400, "Invalid wildcard Contact (needs Expires: 0, alone)");
        }
        if let Err(e) = store.remove_bindings(&trunk_sid, &aor, None).await {
            warn!(error = %e, "registrar: store write failed");
            return request.response(500, "Server Internal Error (store)");
        }
        core.lock_bindings().remove(&trunk_sid, &aor, None);
    }
    for contact in contacts.iter().filter(|c| c.trim() != "*") {
        let Some(uri) = message::name_addr_uri_text(contact) else {
            return request.response(400, "Malformed Contact");
        };
        let expires = contact_expires(contact).unwrap_or(default_expires);
        if expires != 0 && expires < MIN_EXPIRES {
            return request
                .response(423, "Interval Too Brief")
                .header("Min-Expires", MIN_EXPIRES.to_string());
        }
        let written = if expires == 0 {
            store
                .remove_bindings(&trunk_sid, &aor, Some(uri))
                .await
                .map(|_| None)
        } else {
            let binding = Binding {
                trunk_sid: trunk_sid.clone(),
                aor: aor.clone(),
                contact: uri.to_string(),
                source: format!(
                    "{}:{}",
                    source.transport.as_via().to_ascii_lowercase(),
                    source.remote
                ),
                call_id: call_id.clone(),
                cseq,
                expires_at: (now + expires.min(MAX_EXPIRES)) as i64,
            };
            store.save_binding(&binding).await.map(|()| Some(binding))
        };
        match written {
            Ok(Some(binding)) => core.lock_bindings().save(binding),
            Ok(None) => core.lock_bindings().remove(&trunk_sid, &aor, Some(uri)),
            Err(e) => {
                warn!(error = %e, "registrar: store write failed");
                return request.response(500, "Server Internal Error (store)");
            }
        }
    }
    // The answer lists every binding of the AOR with the time it has left (§10.3 step 8).
    let bindings = core.lock_bindings().of_aor(&trunk_sid, &aor, now as i64);
    info!(trunk = trunk_sid, aor, source = %source.remote, "registered");
    bindings.iter().fold(request.response(200, "OK"), |r, b| {
        r.header(
            "Contact",
            format!(
                "<{}>;expires={}",
                b.contact,
                (b.expires_at as u64).saturating_sub(now)
            ),
        )
    })
}

/// The `expires` parameter of one Contact value.
fn contact_expires(contact: &str) -> Option<u64> {
    let params = match contact.rfind('>') {
        Some(close) => &contact[close + 1..],
        None => contact,
    };
    params.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("expires")
            .then(|| v.trim().parse().ok())
            .flatten()
    })
}

/// Where a binding's PBX is reached: the address its REGISTER came from (`udp:1.2.3.4:5060`),
/// which is what gets through its NAT, rather than the Contact it wrote.
pub fn binding_target(source: &str) -> Option<crate::resolve::Target> {
    let (transport, addr) = source.split_once(':')?;
    let transport = match transport.to_ascii_lowercase().as_str() {
        "udp" => voicegate_sip::transport::TransportKind::Udp,
        "tcp" => voicegate_sip::transport::TransportKind::Tcp,
        "tls" => voicegate_sip::transport::TransportKind::Tls,
        _ => return None,
    };
    Some(crate::resolve::Target {
        addr: addr.parse().ok()?,
        transport,
    })
}

#[cfg(test)]
mod tests {
    use super::contact_expires;

    #[test]
    fn contact_expires_parameter() {
        assert_eq!(
            contact_expires("<sip:pbx@10.0.0.5;transport=udp>;expires=120"),
            Some(120)
        );
        assert_eq!(
            contact_expires("<sip:pbx@10.0.0.5;expires=9>"),
            None,
            "a URI parameter is not the Contact's"
        );
        assert_eq!(contact_expires("sip:pbx@10.0.0.5;expires=0"), Some(0));
        assert_eq!(contact_expires("<sip:pbx@10.0.0.5>"), None);
    }
}
