//! `[sip]`: listeners, TLS, public address, timers and connection limits.

use super::*;

/// `[sip]`: SIP listeners and identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// UDP listen address (`ip:port`); empty disables UDP.
    pub udp: String,
    /// TCP listen address (`ip:port`); empty disables TCP.
    pub tcp: String,
    /// TLS listen address (`ip:port`); empty disables TLS.
    pub tls: String,
    /// PEM certificate chain for TLS; empty (with `tls_key`) = self-signed.
    pub tls_cert: String,
    /// PEM private key for TLS; empty (with `tls_cert`) = self-signed.
    pub tls_key: String,
    /// Address advertised in Contact/Via/SDP; empty = the listen/local address.
    pub public_ip: String,
    /// Largest SIP message accepted, in bytes.
    pub max_message_bytes: usize,
    /// User-Agent / Server header value.
    pub user_agent: String,
    /// RFC 3261 T1 (the round-trip estimate) in milliseconds: retransmissions start at T1 and
    /// transactions give up after 64*T1.
    pub t1_ms: u64,
    /// Accepted TCP and TLS connections open at once, together; 0 = a quarter of the open
    /// files limit (RLIMIT_NOFILE), so that connections cannot take the descriptors that RTP
    /// ports and bot connections need.
    pub max_connections: usize,
    /// Accepted TCP and TLS connections open at once from one source IP address.
    pub max_connections_per_ip: usize,
    /// An accepted connection must deliver a whole first SIP message within this many seconds.
    pub header_timeout_secs: u64,
    /// A TCP/TLS connection with no whole message or keep-alive, either way, for this many
    /// seconds is closed.
    pub connection_idle_secs: u64,
    /// The TLS handshake of an accepted connection must finish within this many seconds.
    pub tls_handshake_timeout_secs: u64,
}

impl Default for SipConfig {
    fn default() -> Self {
        Self {
            udp: "0.0.0.0:5060".into(),
            tcp: "0.0.0.0:5060".into(),
            tls: "0.0.0.0:5061".into(),
            tls_cert: String::new(),
            tls_key: String::new(),
            public_ip: String::new(),
            max_message_bytes: 65536,
            user_agent: "voicegate".into(),
            t1_ms: 500,
            max_connections: 0,
            max_connections_per_ip: 100,
            header_timeout_secs: 10,
            connection_idle_secs: 300,
            tls_handshake_timeout_secs: 10,
        }
    }
}

pub(super) fn listen_addr(value: &str) -> Option<SocketAddr> {
    value.parse().ok()
}

impl SipConfig {
    /// UDP listen address; `None` when disabled.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        listen_addr(&self.udp)
    }

    /// TCP listen address; `None` when disabled.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        listen_addr(&self.tcp)
    }

    /// TLS listen address; `None` when disabled.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        listen_addr(&self.tls)
    }

    /// The address to advertise; `None` = use the listen/local address.
    pub fn public_ip(&self) -> Option<IpAddr> {
        self.public_ip.parse().ok()
    }

    /// `(certificate, key)` PEM paths; `None` = generate a self-signed
    /// certificate at start.
    pub fn tls_files(&self) -> Option<(&Path, &Path)> {
        if self.tls_cert.is_empty() || self.tls_key.is_empty() {
            None
        } else {
            Some((Path::new(&self.tls_cert), Path::new(&self.tls_key)))
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [("udp", &self.udp), ("tcp", &self.tcp), ("tls", &self.tls)] {
            if !value.is_empty() && listen_addr(value).is_none() {
                let key = format!("sip.{name}");
                return Err(invalid(
                    &key,
                    format!("{key}: {value:?} is not an address (expected ip:port)"),
                ));
            }
        }
        if self.udp.is_empty() && self.tcp.is_empty() && self.tls.is_empty() {
            return Err(invalid(
                "sip",
                "sip: no transport enabled (set at least one of sip.udp, sip.tcp, sip.tls)",
            ));
        }
        if self.tls_cert.is_empty() != self.tls_key.is_empty() {
            return Err(invalid(
                "sip.tls_cert",
                "sip.tls_cert and sip.tls_key must be given together",
            ));
        }
        if !self.public_ip.is_empty() {
            match self.public_ip.parse::<IpAddr>() {
                Err(_) => {
                    return Err(invalid(
                        "sip.public_ip",
                        format!("sip.public_ip: {:?} is not an IP address", self.public_ip),
                    ))
                }
                Ok(ip) if ip.is_unspecified() => {
                    return Err(invalid(
                        "sip.public_ip",
                        format!("sip.public_ip: {ip} cannot be advertised (unspecified address)"),
                    ))
                }
                Ok(_) => {}
            }
        }
        if !(50..=5000).contains(&self.t1_ms) {
            return Err(invalid(
                "sip.t1_ms",
                format!("sip.t1_ms: {} is outside 50-5000", self.t1_ms),
            ));
        }
        if !MESSAGE_BYTES_RANGE.contains(&self.max_message_bytes) {
            return Err(invalid(
                "sip.max_message_bytes",
                format!(
                    "sip.max_message_bytes: {} is out of range (expected {} to {})",
                    self.max_message_bytes,
                    MESSAGE_BYTES_RANGE.start(),
                    MESSAGE_BYTES_RANGE.end()
                ),
            ));
        }
        if self.user_agent.chars().any(char::is_control) {
            return Err(invalid(
                "sip.user_agent",
                "sip.user_agent: must not contain control characters",
            ));
        }
        if self.max_connections_per_ip == 0 {
            return Err(invalid(
                "sip.max_connections_per_ip",
                "sip.max_connections_per_ip: must be at least 1",
            ));
        }
        for (key, value, range) in [
            ("sip.header_timeout_secs", self.header_timeout_secs, 1..=300),
            (
                "sip.connection_idle_secs",
                self.connection_idle_secs,
                1..=86400,
            ),
            (
                "sip.tls_handshake_timeout_secs",
                self.tls_handshake_timeout_secs,
                1..=300,
            ),
        ] {
            if !range.contains(&value) {
                return Err(invalid(
                    key,
                    format!(
                        "{key}: {value} is outside {}-{}",
                        range.start(),
                        range.end()
                    ),
                ));
            }
        }
        Ok(())
    }
}
