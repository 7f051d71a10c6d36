//! `[limits]` (per-source protection and load shedding) and `[log]`.

use super::*;
use voicegate_engine::settings::LimitSettings;

/// `[limits]`: what a source may send, and when voicegate sheds load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// The per-source request counter's window, in seconds.
    pub window_secs: u64,
    /// Out-of-dialog requests per window from an address that is no trunk's or carrier's;
    /// over it the source is blocked.
    pub requests_per_window: u32,
    /// The same for trunk whitelist and carrier addresses.
    pub trusted_requests_per_window: u32,
    /// Failed digest authentications (credentials offered, not accepted) per minute from one
    /// source before it is blocked.
    pub auth_failures_per_minute: u32,
    /// How long a blocked source's requests are dropped unanswered, in seconds.
    pub block_secs: u64,
    /// Most source addresses tracked at once; beyond, new sources share one counter.
    pub tracked_sources: usize,
    /// Most refused INVITEs kept (for their retransmissions) at once; the oldest go first.
    pub refusal_transactions: usize,
    /// Calls in progress beyond which new INVITEs get 503; 0 = no limit.
    pub max_calls: u64,
    /// Scheduling lag of the event loop, in milliseconds, beyond which new INVITEs get 503;
    /// 0 = not checked.
    pub max_lag_ms: u64,
    /// The process's CPU use over the last second, in percent of every core it may run on,
    /// from which new INVITEs get 503; 0 = not checked.
    pub max_cpu_percent: u32,
    /// The Retry-After of a shed INVITE's 503, in seconds.
    pub retry_after_secs: u32,
    /// How often refused INVITEs are summarised in the log (one line per source), in seconds.
    pub summary_interval_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            window_secs: 2,
            requests_per_window: 200,
            trusted_requests_per_window: 2000,
            auth_failures_per_minute: 20,
            block_secs: 60,
            tracked_sources: 16384,
            refusal_transactions: 4096,
            max_calls: 5000,
            max_lag_ms: 500,
            max_cpu_percent: 95,
            retry_after_secs: 5,
            summary_interval_secs: 10,
        }
    }
}

impl LimitsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("limits.window_secs", self.window_secs),
            (
                "limits.requests_per_window",
                self.requests_per_window as u64,
            ),
            (
                "limits.trusted_requests_per_window",
                self.trusted_requests_per_window as u64,
            ),
            ("limits.block_secs", self.block_secs),
            ("limits.tracked_sources", self.tracked_sources as u64),
            (
                "limits.refusal_transactions",
                self.refusal_transactions as u64,
            ),
            ("limits.retry_after_secs", self.retry_after_secs as u64),
            ("limits.summary_interval_secs", self.summary_interval_secs),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, format!("{key}: must be at least 1")));
            }
        }
        let bounded = [
            ("limits.window_secs", self.window_secs, 3600),
            ("limits.block_secs", self.block_secs, 86_400),
            (
                "limits.tracked_sources",
                self.tracked_sources as u64,
                1 << 20,
            ),
            (
                "limits.refusal_transactions",
                self.refusal_transactions as u64,
                1 << 20,
            ),
            (
                "limits.summary_interval_secs",
                self.summary_interval_secs,
                3600,
            ),
            (
                "limits.max_cpu_percent",
                u64::from(self.max_cpu_percent),
                100,
            ),
        ];
        for (key, value, max) in bounded {
            if value > max {
                return Err(invalid(key, format!("{key}: {value} is above {max}")));
            }
        }
        if self.trusted_requests_per_window < self.requests_per_window {
            return Err(invalid(
                "limits.trusted_requests_per_window",
                "limits.trusted_requests_per_window: must not be below limits.requests_per_window",
            ));
        }
        Ok(())
    }
}

/// `[log]`: logging.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` EnvFilter directive, e.g. `info` or `voicegate_engine=debug,info`.
    pub level: String,
    /// `text` (coloured on a terminal only) or `json` (one object per line, for log
    /// shippers); see [`LOG_FORMATS`].
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

impl LogConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.level.trim().is_empty() {
            return Err(invalid("log.level", "log.level: must not be empty"));
        }
        if !LOG_FORMATS.contains(&self.format.as_str()) {
            return Err(invalid(
                "log.format",
                format!(
                    "log.format: {:?} is not one of {}",
                    self.format,
                    LOG_FORMATS.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

impl LimitsConfig {
    /// What the SIP core takes from `[limits]`.
    pub fn settings(&self) -> LimitSettings {
        let c = self;
        LimitSettings {
            shield: voicegate_engine::shield::ShieldLimits {
                window: Duration::from_secs(c.window_secs),
                requests_per_window: c.requests_per_window,
                trusted_requests_per_window: c.trusted_requests_per_window,
                auth_failures: c.auth_failures_per_minute,
                auth_window: Duration::from_secs(60),
                block: Duration::from_secs(c.block_secs),
                tracked_sources: c.tracked_sources,
            },
            refusal_transactions: c.refusal_transactions,
            shedding: voicegate_engine::load::SheddingLimits {
                max_calls: c.max_calls,
                max_lag: Duration::from_millis(c.max_lag_ms),
                max_cpu_percent: c.max_cpu_percent,
            },
            retry_after_secs: c.retry_after_secs,
            summary_interval: Duration::from_secs(c.summary_interval_secs),
        }
    }
}
