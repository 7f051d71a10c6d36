//! Where a call's other leg goes: the next hops for a number through the carriers, to a
//! trunk's destination URIs and registered PBXs, or to an agent. (What a hop is and which
//! failures move on to the next: `voicegate_call::hop`.)

use crate::core::Core;
use crate::resolve::parse_sip_target;
pub use voicegate_call::{with_user, NextHop};

/// Hops through the carriers for a number, lowest priority first.
pub fn carrier_hops(core: &Core, number: &str) -> Vec<NextHop> {
    let mut carriers: Vec<_> = core.settings.carriers.iter().collect();
    carriers.sort_by_key(|c| c.priority);
    carriers
        .into_iter()
        .map(|c| NextHop {
            request_uri: with_user(&c.uri, number),
            credentials: c.credentials.clone(),
            fixed: None,
            label: format!("carrier {}", c.name),
            to: None,
        })
        .collect()
}

/// Hops to a trunk's destination URIs (by priority, spread by weight within one), then its
/// registered contacts.
pub async fn trunk_hops(core: &Core, trunk_sid: &str, number: &str) -> Vec<NextHop> {
    let mut hops = Vec::new();
    if let Some(gate) = core.gate.as_ref() {
        let trunks = gate.trunks();
        let mut by_priority: Vec<(i64, Vec<(String, i64)>)> = Vec::new();
        for d in trunks.destinations(trunk_sid) {
            match by_priority.iter_mut().find(|(p, _)| *p == d.priority) {
                Some((_, list)) => list.push((d.uri.clone(), d.weight)),
                None => by_priority.push((d.priority, vec![(d.uri.clone(), d.weight)])),
            }
        }
        by_priority.sort_by_key(|(p, _)| *p);
        let mut rng = rand::thread_rng();
        for (_, list) in by_priority {
            let ordered = crate::resolve::order_by_weight(
                list,
                |(_, w)| u16::try_from((*w).clamp(0, 65535)).unwrap_or(0),
                &mut rng,
            );
            hops.extend(ordered.into_iter().map(|(uri, _)| NextHop {
                request_uri: with_user(&uri, number),
                credentials: None,
                fixed: None,
                label: format!("destination {uri}"),
                to: None,
            }));
        }
    }
    let now = crate::clock::unix_secs() as i64;
    let bindings = core.lock_bindings().live(trunk_sid, now);
    for b in bindings {
        let fixed = crate::registrar::binding_target(&b.source);
        let to = parse_sip_target(&b.contact)
            .ok()
            .map(|t| format!("sip:{number}@{}", t.host));
        hops.push(NextHop {
            // RFC 3261 §10: a registered contact is the Request-URI as it is.
            label: format!("registered {}", b.contact),
            request_uri: b.contact,
            credentials: None,
            fixed,
            to,
        });
    }
    hops
}

/// Hops for an agent: a SIP URI, `+E.164` through the carriers, or `trunk:{sid}`.
pub async fn agent_hops(core: &Core, to: &str, number: &str) -> Result<Vec<NextHop>, String> {
    let to = to.trim();
    if let Some(sid) = to.strip_prefix("trunk:") {
        let hops = trunk_hops(core, sid, number).await;
        if hops.is_empty() {
            return Err(format!("trunk {sid} has no destination URI"));
        }
        return Ok(hops);
    }
    if to.starts_with('+') && to[1..].bytes().all(|b| b.is_ascii_digit()) {
        let hops = carrier_hops(core, to);
        if hops.is_empty() {
            return Err("no carrier to reach a number".into());
        }
        return Ok(hops);
    }
    parse_sip_target(to)?;
    Ok(vec![NextHop {
        request_uri: to.trim_matches(|c| c == '<' || c == '>').to_string(),
        credentials: None,
        fixed: None,
        label: format!("agent {to}"),
        to: None,
    }])
}
