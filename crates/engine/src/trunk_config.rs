//! `[[trunks]]` as the config file declares them (credentials are never printed); admission
//! builds its trunks from these and from the store's.

use serde::{Deserialize, Serialize};

/// `[[trunks]]`: a customer trunk (its secrets are never logged: this struct is not printed).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrunkConfig {
    pub name: String,
    pub active: bool,
    /// Source networks allowed to call in without credentials ("10.0.0.0/16", "192.0.2.7").
    pub whitelisted_ips: Vec<String>,
    /// Digest credentials; a trunk with any is challenged (401) until a caller authenticates.
    pub credentials: Vec<CredentialConfig>,
    /// Concurrent calls allowed (0 = no limit); over it callers get 486.
    pub max_concurrent_calls: u32,
    /// Calls admitted per minute; over it callers get 503 with Retry-After.
    pub calls_per_minute: u32,
    /// The trunk's numbers: E.164, each to a flow (by name) or to the PSTN router.
    pub numbers: Vec<NumberConfig>,
    /// Whether the trunk's PBX may REGISTER (with its credentials) so calls can reach it
    /// behind NAT.
    pub registration_enabled: bool,
    /// Where inbound calls to the trunk's `pstn` numbers go, in priority order (first
    /// first): `host[:port][;transport=tcp]` or a `sip:`/`sips:` URI; a host name is resolved
    /// at each call.
    pub destinations: Vec<String>,
    /// The caller ID (E.164) of the calls the trunk places ("" = the caller's own).
    pub external_alias: String,
}

impl Default for TrunkConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            active: true,
            whitelisted_ips: Vec::new(),
            credentials: Vec::new(),
            max_concurrent_calls: 0,
            calls_per_minute: 200,
            numbers: Vec::new(),
            registration_enabled: false,
            destinations: Vec::new(),
            external_alias: String::new(),
        }
    }
}

impl std::fmt::Debug for TrunkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrunkConfig")
            .field("name", &self.name)
            .field("whitelisted_ips", &self.whitelisted_ips)
            .field(
                "credentials",
                &format_args!("[{} redacted]", self.credentials.len()),
            )
            .field("numbers", &self.numbers)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialConfig {
    pub user_name: String,
    pub password: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct NumberConfig {
    pub number: String,
    /// `flow` (then `flow` names the flow) or `pstn`.
    pub mode: String,
    pub flow: String,
}
