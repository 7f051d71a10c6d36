//! `[[trunks]]` and `[[carriers]]` declared in the file (credentials are never printed).

use super::*;

// The trunk types belong to admission, which reads them; the file declares them.
pub use voicegate_engine::trunk_config::{CredentialConfig, NumberConfig, TrunkConfig};

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
