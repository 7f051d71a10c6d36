//! `[routing]`: how calls find their next hop (DNS, timeouts, session timers, ringback).

use super::*;

/// `[routing]`: how calls leave voicegate (carriers, destination URIs, agents).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// DNS servers (`ip:port`) for destination host names; empty = the system's resolver.
    pub dns_servers: Vec<String>,
    /// How long one DNS query may take, in milliseconds.
    pub dns_timeout_ms: u64,
    /// A next hop that sends no response at all within this time is skipped (next carrier or
    /// destination).
    pub attempt_timeout_secs: u64,
    /// A call that is not answered within this time is given up (408 to the caller).
    pub answer_timeout_secs: u64,
    /// Session timer (RFC 4028) we ask for on our INVITEs and offer in our 2xx.
    pub session_expires_secs: u32,
    /// Smallest session interval we accept: below it a request gets 422.
    pub min_session_expires_secs: u32,
    /// The tone callers hear while an agent's phone rings: `eu` (425 Hz) or `us` (440+480 Hz).
    pub ringback: String,
    /// PEM file of extra CA certificates trusted for TLS next hops, besides the public roots
    /// ("" = public roots only).
    pub tls_ca_file: String,
    /// How long opening a TCP or TLS connection to a next hop may take, in seconds.
    pub connect_timeout_secs: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            dns_servers: Vec::new(),
            dns_timeout_ms: 2000,
            attempt_timeout_secs: 4,
            answer_timeout_secs: 120,
            session_expires_secs: 1800,
            min_session_expires_secs: 90,
            ringback: "eu".into(),
            tls_ca_file: String::new(),
            connect_timeout_secs: 5,
        }
    }
}

/// Values of `routing.ringback`.
pub const RINGBACK_TONES: &[&str] = &["eu", "us"];

impl RoutingConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for server in &self.dns_servers {
            if server.parse::<SocketAddr>().is_err() {
                return Err(invalid(
                    "routing.dns_servers",
                    format!("routing.dns_servers: {server:?} is not ip:port"),
                ));
            }
        }
        for (key, value) in [
            ("routing.dns_timeout_ms", self.dns_timeout_ms),
            ("routing.attempt_timeout_secs", self.attempt_timeout_secs),
            ("routing.answer_timeout_secs", self.answer_timeout_secs),
            ("routing.connect_timeout_secs", self.connect_timeout_secs),
            (
                "routing.min_session_expires_secs",
                u64::from(self.min_session_expires_secs),
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, format!("{key}: must be at least 1")));
            }
        }
        if self.session_expires_secs < self.min_session_expires_secs {
            return Err(invalid(
                "routing.session_expires_secs",
                format!(
                    "routing.session_expires_secs: {} is below routing.min_session_expires_secs {}",
                    self.session_expires_secs, self.min_session_expires_secs
                ),
            ));
        }
        if !RINGBACK_TONES.contains(&self.ringback.as_str()) {
            return Err(invalid(
                "routing.ringback",
                format!(
                    "routing.ringback: {:?} is not one of {}",
                    self.ringback,
                    RINGBACK_TONES.join(", ")
                ),
            ));
        }
        Ok(())
    }
}
