//! `[rtp]` (ports, codecs, latching, timeouts) and `[test_numbers]`.

use super::*;

/// `[rtp]`: media ports and codecs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtpConfig {
    /// Lowest RTP port (inclusive).
    pub port_min: u16,
    /// Highest RTP port (inclusive).
    pub port_max: u16,
    /// Codec names in our preference order (case-insensitive, see [`KNOWN_CODECS`]): our
    /// offers list them so, and answers follow it with `codec_preference = "ours"`.
    pub codecs: Vec<String>,
    /// Which codec answers an offer with several of ours: `offer` (the caller's first, as
    /// RFC 3264 recommends: no needless transcoding) or `ours` (the first of `codecs`).
    pub codec_preference: String,
    /// An answered call with no RTP for this long is ended with a BYE (not while held).
    pub timeout_secs: u64,
    /// Where we send RTP: `auto` latches to the address packets really come from when the SDP
    /// address is private or unspecified (NAT), `always` latches whatever the SDP says,
    /// `never` keeps to the SDP address.
    pub latching: String,
}

impl Default for RtpConfig {
    fn default() -> Self {
        Self {
            port_min: 10000,
            port_max: 20000,
            codecs: vec!["PCMA".into(), "PCMU".into()],
            codec_preference: "offer".into(),
            timeout_secs: 30,
            latching: "auto".into(),
        }
    }
}

/// `[test_numbers]`: numbers served locally until trunks/numbers come
/// through the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestNumbersConfig {
    /// Numbers answered by an RTP echo.
    pub echo: Vec<String>,
    /// Numbers that ring (180) and are never answered (for CANCEL tests).
    pub ringing: Vec<String>,
    /// How long echo numbers ring (180) before answering, in milliseconds.
    pub ring_ms: u64,
}

impl Default for TestNumbersConfig {
    fn default() -> Self {
        Self {
            echo: vec!["echo".into()],
            ringing: Vec::new(),
            ring_ms: 0,
        }
    }
}

impl RtpConfig {
    /// The RTP port range, inclusive.
    pub fn port_range(&self) -> RangeInclusive<u16> {
        self.port_min..=self.port_max
    }

    /// Configured codecs in canonical spelling (see [`KNOWN_CODECS`]), in
    /// preference order, without duplicates; unknown names are skipped.
    pub fn codec_names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        for codec in &self.codecs {
            if let Some(name) = canonical_codec(codec) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, port) in [
            ("rtp.port_min", self.port_min),
            ("rtp.port_max", self.port_max),
        ] {
            if port == 0 {
                return Err(invalid(key, format!("{key}: must be above 0")));
            }
        }
        if self.port_min >= self.port_max {
            return Err(invalid(
                "rtp.port_min",
                format!(
                    "rtp.port_min ({}) must be below rtp.port_max ({})",
                    self.port_min, self.port_max
                ),
            ));
        }
        if self.codecs.is_empty() {
            return Err(invalid(
                "rtp.codecs",
                "rtp.codecs: at least one codec is required",
            ));
        }
        if !LATCHING_MODES.contains(&self.latching.as_str()) {
            return Err(invalid(
                "rtp.latching",
                format!(
                    "rtp.latching: {:?} is not one of {}",
                    self.latching,
                    LATCHING_MODES.join(", ")
                ),
            ));
        }
        if !CODEC_PREFERENCES.contains(&self.codec_preference.as_str()) {
            return Err(invalid(
                "rtp.codec_preference",
                format!(
                    "rtp.codec_preference: {:?} is not one of {}",
                    self.codec_preference,
                    CODEC_PREFERENCES.join(", ")
                ),
            ));
        }
        if self.timeout_secs == 0 {
            return Err(invalid(
                "rtp.timeout_secs",
                "rtp.timeout_secs: must be at least 1",
            ));
        }
        if let Some(unknown) = self.codecs.iter().find(|c| canonical_codec(c).is_none()) {
            return Err(invalid(
                "rtp.codecs",
                format!(
                    "rtp.codecs: unknown codec {unknown:?} (known: {})",
                    KNOWN_CODECS.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

pub(super) fn canonical_codec(name: &str) -> Option<&'static str> {
    KNOWN_CODECS
        .iter()
        .copied()
        .find(|known| known.eq_ignore_ascii_case(name.trim()))
}

impl TestNumbersConfig {
    /// Whether `number` is answered by the RTP echo.
    pub fn is_echo(&self, number: &str) -> bool {
        self.echo.iter().any(|n| n == number)
    }

    /// Whether `number` rings forever.
    pub fn is_ringing(&self, number: &str) -> bool {
        self.ringing.iter().any(|n| n == number)
    }

    /// How long echo numbers ring before answering.
    pub fn ring_duration(&self) -> Duration {
        Duration::from_millis(self.ring_ms)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, list) in [
            ("test_numbers.echo", &self.echo),
            ("test_numbers.ringing", &self.ringing),
        ] {
            if list.iter().any(|n| n.trim().is_empty()) {
                return Err(invalid(key, format!("{key}: numbers must not be empty")));
            }
        }
        if let Some(both) = self.echo.iter().find(|n| self.is_ringing(n)) {
            return Err(invalid(
                "test_numbers.ringing",
                format!("test_numbers: {both:?} is listed in both echo and ringing"),
            ));
        }
        Ok(())
    }
}
