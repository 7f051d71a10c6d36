//! What a dialled number leads to, decided in the SIP core before any call task exists: the
//! test numbers and flows of the config, or the trunks' mappings through admission (digest,
//! allowed IPs, limits), or a carrier's call to a trunk's destinations.

use std::sync::Arc;

use voicegate_control::Mode;
use voicegate_sip::message::Request;
use voicegate_sip::transport::Source;

use super::hops;
use crate::admit::Outcome;
use crate::core::Core;
use crate::settings::FlowRoute;
pub use voicegate_call::route::{Admitted, Route};

pub fn route(core: &Core, number: &str) -> Route {
    if core.settings.echo_numbers.iter().any(|n| n == number) {
        Route::Echo
    } else if core.settings.ringing_numbers.iter().any(|n| n == number) {
        Route::Ringing
    } else if let Some(flow) = core
        .settings
        .flows
        .iter()
        .find(|f| f.numbers.iter().any(|n| n == number))
    {
        Route::Flow(Arc::new(flow.clone()))
    } else {
        Route::NotFound
    }
}

/// What admission decided for a new INVITE, before any call task exists.
#[derive(Debug)]
pub enum Admission {
    Admitted(Admitted),
    /// Answer with this final response (no call is started).
    Refused {
        status: u16,
        reason: String,
        headers: Vec<(&'static str, String)>,
    },
}

/// Where the dialled number goes: by the trunks when they are configured, else by the test
/// numbers and flows of the config. Decided in the core, so a refusal costs no call task.
pub fn admit(core: &Core, invite: &Request, source: &Source, number: &str) -> Admission {
    if core.carrier_from(source.remote.ip()).is_some() {
        let mut admitted = Admitted::local(inbound_route(core, number));
        admitted.direction = "inbound";
        return admitted_or_not_found(core, admitted);
    }
    let Some(gate) = core.gate.as_ref().filter(|g| g.is_active()) else {
        return admitted_or_not_found(core, Admitted::local(route(core, number)));
    };
    match gate.decide(invite, source.remote.ip(), number) {
        Outcome::Admitted { trunk_sid, mode } => {
            let mut admitted = Admitted {
                route: Route::NotFound,
                caller_id: gate.trunks().external_alias(&trunk_sid),
                trunk_sid: Some(trunk_sid),
                direction: "local",
            };
            admitted.route = match mode {
                Mode::Flow { flow_id } => {
                    match gate.flow(&flow_id).or_else(|| config_flow(core, &flow_id)) {
                        Some(flow) => Route::Flow(flow),
                        None => Route::NotFound,
                    }
                }
                // Until carriers are configured, an E.164 echo test number answers here.
                Mode::Pstn if core.settings.echo_numbers.iter().any(|n| n == number) => Route::Echo,
                Mode::Pstn => {
                    admitted.direction = "outbound";
                    let hops = hops::carrier_hops(core, number);
                    if hops.is_empty() {
                        Route::NoRoute
                    } else {
                        Route::Forward(hops)
                    }
                }
            };
            admitted_or_not_found(core, admitted)
        }
        Outcome::Challenge(values) => Admission::Refused {
            status: 401,
            reason: "Unauthorized".into(),
            headers: values
                .into_iter()
                .map(|v| ("WWW-Authenticate", v))
                .collect(),
        },
        Outcome::Refused {
            status,
            reason,
            retry_after,
        } => Admission::Refused {
            status,
            reason,
            headers: retry_after
                .map(|s| ("Retry-After", s.to_string()))
                .into_iter()
                .collect(),
        },
    }
}

/// A number that leads nowhere is refused like any other: no call task for it.
fn admitted_or_not_found(core: &Core, admitted: Admitted) -> Admission {
    if !matches!(admitted.route, Route::NotFound) {
        return Admission::Admitted(admitted);
    }
    if let (Some(gate), Some(trunk)) = (core.gate.as_ref(), admitted.trunk_sid.as_deref()) {
        gate.call_ended(trunk);
    }
    Admission::Refused {
        status: 404,
        reason: "Number not mapped".into(),
        headers: Vec::new(),
    }
}

fn config_flow(core: &Core, name: &str) -> Option<Arc<FlowRoute>> {
    core.settings
        .flows
        .iter()
        .find(|f| f.name == name)
        .cloned()
        .map(Arc::new)
}

/// A carrier's call: trusted by its address, routed by the number's mapping.
fn inbound_route(core: &Core, number: &str) -> Route {
    let Some(gate) = core.gate.as_ref() else {
        return route(core, number);
    };
    let trunks = gate.trunks();
    let Some(mapping) = trunks.snapshot.numbers.iter().find(|m| m.number == number) else {
        return route(core, number);
    };
    match &mapping.mode {
        Mode::Pstn => Route::Inbound {
            trunk_sid: mapping.trunk_sid.clone(),
        },
        Mode::Flow { flow_id } => match gate.flow(flow_id).or_else(|| config_flow(core, flow_id)) {
            Some(flow) => Route::Flow(flow),
            None => Route::NotFound,
        },
    }
}
