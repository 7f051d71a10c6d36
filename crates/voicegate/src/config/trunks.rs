//! `[[trunks]]` and `[[carriers]]` declared in the file (credentials are never printed).

use super::*;

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

/// `[[carriers]]`: an upstream gateway (its password is never logged).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CarrierConfig {
    pub name: String,
    /// Where outbound calls go: `sip:host[:port][;transport=tcp]` (`sips:` for TLS); the
    /// dialled number becomes the user part. A host name is resolved at each attempt.
    pub uri: String,
    /// Digest credentials for the carrier's 401/407 challenges ("" = none).
    pub username: String,
    pub password: String,
    /// Lower first; carriers of equal priority keep their order in the file.
    pub priority: u32,
    /// Source networks of the carrier's own INVITEs (inbound calls); they are not
    /// challenged. "" entries are not allowed.
    pub inbound_ips: Vec<String>,
}

impl Default for CarrierConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            uri: String::new(),
            username: String::new(),
            password: String::new(),
            priority: 10,
            inbound_ips: Vec::new(),
        }
    }
}

impl std::fmt::Debug for CarrierConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CarrierConfig")
            .field("name", &self.name)
            .field("uri", &self.uri)
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .field("priority", &self.priority)
            .field("inbound_ips", &self.inbound_ips)
            .finish()
    }
}
