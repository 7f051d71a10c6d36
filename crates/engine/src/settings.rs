//! What the node needs to know, derived once from the config: what every call reads
//! (`voicegate_call::settings`), the test numbers, flows, carriers and the limits of the core.

use std::time::Duration;

pub use voicegate_call::settings::{
    ringback_tone, BridgeSettings, CallSettings, FlowRoute, RoutingSettings,
};

/// What the core needs to know to run calls, derived once from the config.
#[derive(Clone, Debug)]
pub struct Settings {
    /// What every call reads.
    pub call: CallSettings,
    pub echo_numbers: Vec<String>,
    pub ringing_numbers: Vec<String>,
    /// Bot flows and their numbers.
    pub flows: Vec<FlowRoute>,
    /// Upstream gateways, lowest priority first.
    pub carriers: Vec<Carrier>,
    pub limits: LimitSettings,
}

/// Load shedding and the shield's limits (from `[limits]`).
#[derive(Clone, Debug)]
pub struct LimitSettings {
    pub shield: crate::shield::ShieldLimits,
    pub refusal_transactions: usize,
    /// Calls in progress, event-loop lag and CPU use that shed new calls.
    pub shedding: crate::load::SheddingLimits,
    pub retry_after_secs: u32,
    pub summary_interval: Duration,
}

/// An upstream carrier gateway as calls use it.
#[derive(Clone, Debug)]
pub struct Carrier {
    pub name: String,
    /// `sip:host[:port][;params]`; the dialled number becomes its user part.
    pub uri: String,
    pub credentials: Option<(String, String)>,
    pub priority: u32,
    /// Where its own INVITEs come from.
    pub inbound: Vec<voicegate_control::IpNet>,
}
