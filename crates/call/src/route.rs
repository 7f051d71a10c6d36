//! What a dialled number leads to, as admission decided it before the call started.

use std::sync::Arc;

use crate::hop::NextHop;
use crate::settings::FlowRoute;

/// What a dialled number leads to.
#[derive(Clone, Debug)]
pub enum Route {
    Echo,
    Ringing,
    /// A bot flow.
    Flow(Arc<FlowRoute>),
    /// An admitted `pstn` call with no carrier configured: 503 "no route".
    NoRoute,
    NotFound,
    /// Through the B2BUA to these next hops, in order.
    Forward(Vec<NextHop>),
    /// From a carrier to a `pstn` number: the trunk's destinations (looked up at start).
    Inbound {
        trunk_sid: String,
    },
}

/// An admitted call's route and what admission learnt on the way.
#[derive(Debug)]
pub struct Admitted {
    pub route: Route,
    /// The trunk whose counters hold the call (released when the call ends).
    pub trunk_sid: Option<String>,
    pub caller_id: Option<String>,
    pub direction: &'static str,
}

impl Admitted {
    /// A call admitted without a trunk (test numbers, config flows, a carrier's call).
    pub fn local(route: Route) -> Self {
        Admitted {
            route,
            trunk_sid: None,
            caller_id: None,
            direction: "local",
        }
    }
}
