//! `[api]` (the trunk API's listener, accounts and connection limits) and `[store]`.

use super::*;

/// `[api]`: the Exotel-compatible trunk API.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// HTTP listen address; "" disables the API.
    pub listen: String,
    /// Accounts allowed to use the API (account_sid, api_key, api_token). With none, every
    /// request is refused. File only: secrets stay out of the environment listing.
    pub accounts: Vec<ApiAccountConfig>,
    /// Open API connections at most; beyond, new ones wait until one closes.
    pub max_connections: usize,
    /// Open API connections from one source address at most; beyond, new ones are closed.
    pub max_connections_per_ip: usize,
    /// Seconds a connection may take to send a complete request head, counted from its
    /// opening or from the previous answer; then it is closed (idle keep-alive, slow headers).
    pub idle_timeout_secs: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            accounts: Vec::new(),
            max_connections: 256,
            max_connections_per_ip: 32,
            idle_timeout_secs: 30,
        }
    }
}

impl ApiConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(invalid(
                "api.max_connections",
                "api.max_connections: must be at least 1",
            ));
        }
        if !(1..=self.max_connections).contains(&self.max_connections_per_ip) {
            return Err(invalid(
                "api.max_connections_per_ip",
                format!(
                    "api.max_connections_per_ip: must be 1..={} (api.max_connections)",
                    self.max_connections
                ),
            ));
        }
        if !(1..=3600).contains(&self.idle_timeout_secs) {
            return Err(invalid(
                "api.idle_timeout_secs",
                "api.idle_timeout_secs: must be 1..=3600",
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("listen", &self.listen)
            .field(
                "accounts",
                &format_args!("[{} redacted]", self.accounts.len()),
            )
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("idle_timeout_secs", &self.idle_timeout_secs)
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ApiAccountConfig {
    pub account_sid: String,
    pub api_key: String,
    pub api_token: String,
}

/// `[store]`: where trunks, numbers and flows are kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://path` (created with its schema on first start) or `sqlite::memory:`.
    pub url: String,
    /// This node's name in the store (its calls in progress); empty: the host name.
    pub node: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://voicegate.db".into(),
            node: String::new(),
        }
    }
}
