//! Configuration: TOML file plus VOICEGATE_<SECTION>_<KEY> environment overrides.
//!
//! Loading happens in four steps (see [`Config::load`]):
//!
//! 1. the TOML file, if any, is parsed into a [`toml::Table`];
//! 2. that table is checked against the schema — the serialised
//!    [`Config::default()`] — so unknown sections and keys are reported with
//!    their full dotted name;
//! 3. every key of the schema may be replaced by the environment variable
//!    `VOICEGATE_<SECTION>_<KEY>` (upper-cased), parsed according to the type
//!    of the key's default value (lists are comma-separated);
//! 4. the merged table is deserialised into [`Config`] and [`Config::validate`]d.
//!
//! The schema is derived from the section structs (one module per section), so a
//! new key only needs a field, a default and a line in `config/voicegate.toml`.
//! Fields must not be `Option`s (a `None` would not appear in the serialised
//! schema and could be neither checked nor overridden); use an empty string or
//! list for "unset".
//!
//! # Secrets
//!
//! `Config` derives `Debug` and `Serialize`, and both are used for logging.
//! No field is secret today (TLS key *paths* are not secrets). A future field
//! holding a password or token must use a wrapper type whose `Debug` and
//! `Serialize` redact the value, and its validation errors must not echo it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

mod api;
mod bridge;
mod flows;
mod limits;
mod load;
mod routing;
mod rtp;
mod sip;
mod trunks;

pub use api::*;
pub use bridge::*;
pub use flows::*;
pub use limits::*;
use load::*;
pub use routing::*;
pub use rtp::*;
pub use sip::*;
pub use trunks::*;

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "VOICEGATE";

/// Codecs voicegate can negotiate, in canonical spelling.
pub const KNOWN_CODECS: &[&str] = &["PCMA", "PCMU", "OPUS"];

/// Values of `rtp.latching`.
pub const LATCHING_MODES: &[&str] = &["auto", "always", "never"];

/// Values of `log.format`.
pub const LOG_FORMATS: &[&str] = &["text", "json"];

/// Values of `rtp.codec_preference`.
pub const CODEC_PREFERENCES: &[&str] = &["offer", "ours"];

/// Bounds for `sip.max_message_bytes`.
pub const MESSAGE_BYTES_RANGE: RangeInclusive<usize> = 1024..=16 * 1024 * 1024;

/// The whole configuration. `Config::default()` is the documented default
/// configuration shipped as `config/voicegate.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Bot flows and the numbers mapped to them (until the trunk API provides them). Arrays
    /// of tables have no environment override.
    pub flows: Vec<FlowConfig>,
    /// Customer trunks seeded from the file: who may call in, and where their numbers go.
    /// With none, every source may call the test numbers and flow numbers (a demo setup).
    pub trunks: Vec<TrunkConfig>,
    /// Upstream carrier gateways (the telephone network side): outbound calls go to them
    /// in priority order; INVITEs from their addresses are inbound calls.
    pub carriers: Vec<CarrierConfig>,
    pub api: ApiConfig,
    pub store: StoreConfig,
    pub sip: SipConfig,
    pub routing: RoutingConfig,
    pub rtp: RtpConfig,
    pub bridge: BridgeConfig,
    pub test_numbers: TestNumbersConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
}

/// Keys whose values are tables of their own (set in the file only, no env override).
const FILE_ONLY_KEYS: &[&str] = &["flows", "trunks", "carriers"];

/// A configuration error. `Display` is a single line naming the key (or
/// file) and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("config: cannot read {}: {}", .path.display(), io_reason(.source))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML.
    #[error("config: invalid TOML in {}:{line}:{column}: {message}", .path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// The file contains a section that is not in the schema.
    #[error("config: unknown section [{section}] in {}", .path.display())]
    UnknownSection { section: String, path: PathBuf },
    /// The file contains a key (full dotted name) that is not in the schema.
    #[error("config: unknown key {key} in {}", .path.display())]
    UnknownKey { key: String, path: PathBuf },
    /// An environment variable could not be parsed as the key's type.
    #[error("config: {key}: invalid value {value:?} from {var} (expected {expected})")]
    InvalidEnv {
        key: String,
        var: String,
        value: String,
        expected: &'static str,
    },
    /// A value has the wrong type or is out of range for its key.
    /// `origin` says where it came from (`in <file>` or `from <VAR>`).
    #[error("config: {key}: {message} ({origin})")]
    InvalidType {
        key: String,
        origin: String,
        message: String,
    },
    /// A value is well-typed but fails validation.
    #[error("config: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    /// The dotted key (or section) the error is about, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Read { .. } | Self::Syntax { .. } => None,
            Self::UnknownSection { section, .. } => Some(section),
            Self::UnknownKey { key, .. }
            | Self::InvalidEnv { key, .. }
            | Self::InvalidType { key, .. }
            | Self::Invalid { key, .. } => Some(key),
        }
    }
}

/// An io::Error's message without the " (os error N)" suffix.
fn io_reason(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

fn one_line(text: &str) -> String {
    text.trim()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ")
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

impl Config {
    /// Loads the configuration: the TOML file at `path` (or the defaults when
    /// `None`), then `VOICEGATE_<SECTION>_<KEY>` overrides looked up through
    /// `env`, then [`validate`](Self::validate).
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let schema = schema();
        let mut table = match path {
            Some(path) => read_table(path, &schema)?,
            None => Table::new(),
        };
        let mut env_origins = HashMap::new();
        apply_env(&schema, &mut table, "", ENV_PREFIX, &env, &mut env_origins)?;
        let config: Config = table
            .clone()
            .try_into()
            .map_err(|err| locate_error(&table, &err, path, &env_origins))?;
        config.validate()?;
        Ok(config)
    }

    /// [`load`](Self::load) with overrides from the process environment.
    pub fn load_from_process_env(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load(path, |var| std::env::var(var).ok())
    }

    /// Every environment variable that can override a key, e.g.
    /// `VOICEGATE_SIP_UDP`, sorted.
    pub fn env_var_names() -> Vec<String> {
        fn walk(table: &Table, prefix: &str, out: &mut Vec<String>) {
            for (key, value) in table {
                let file_only = (prefix == ENV_PREFIX && FILE_ONLY_KEYS.contains(&key.as_str()))
                    || (prefix == "VOICEGATE_API" && key == "accounts");
                if file_only {
                    continue;
                }
                let var = format!("{prefix}_{}", key.to_ascii_uppercase());
                match value {
                    Value::Table(sub) => walk(sub, &var, out),
                    _ => out.push(var),
                }
            }
        }
        let mut out = Vec::new();
        walk(&schema(), ENV_PREFIX, &mut out);
        out
    }

    /// Checks values that the types alone do not constrain.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.api.validate()?;
        self.sip.validate()?;
        self.rtp.validate()?;
        self.bridge.validate()?;
        self.test_numbers.validate()?;
        self.validate_flows()?;
        self.validate_trunks()?;
        self.validate_carriers()?;
        self.routing.validate()?;
        self.limits.validate()?;
        self.log.validate()
    }
}

impl Config {
    fn validate_flows(&self) -> Result<(), ConfigError> {
        let mut seen: Vec<&str> = Vec::new();
        for (i, flow) in self.flows.iter().enumerate() {
            let key = |field: &str| format!("flows[{i}].{field}");
            if flow.name.trim().is_empty() {
                return Err(invalid(
                    &key("name"),
                    format!("{}: every flow needs a name", key("name")),
                ));
            }
            if !(flow.url.starts_with("ws://") || flow.url.starts_with("wss://")) {
                return Err(invalid(
                    &key("url"),
                    format!(
                        "{}: {:?} is not a ws:// or wss:// URL",
                        key("url"),
                        flow.url
                    ),
                ));
            }
            for (field, value, allowed) in [
                ("protocol", &flow.protocol, FLOW_PROTOCOLS),
                ("direction", &flow.direction, FLOW_DIRECTIONS),
                ("on_stream_end", &flow.on_stream_end, FLOW_END_ACTIONS),
                ("fallback", &flow.fallback, FLOW_FALLBACKS),
            ] {
                if !allowed.contains(&value.as_str()) {
                    return Err(invalid(
                        &key(field),
                        format!(
                            "{}: {value:?} is not one of {}",
                            key(field),
                            allowed.join(", ")
                        ),
                    ));
                }
            }
            if flow.on_stream_end == "connect" && flow.connect_to.trim().is_empty() {
                return Err(invalid(
                    &key("connect_to"),
                    format!(
                        "{}: on_stream_end = \"connect\" needs an agent to connect to",
                        key("connect_to")
                    ),
                ));
            }
            for number in &flow.numbers {
                if seen.contains(&number.as_str())
                    || self.test_numbers.is_echo(number)
                    || self.test_numbers.is_ringing(number)
                {
                    return Err(invalid(
                        &key("numbers"),
                        format!("{}: number {number:?} is mapped twice", key("numbers")),
                    ));
                }
                seen.push(number);
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_trunks(&self) -> Result<(), ConfigError> {
        for (i, trunk) in self.trunks.iter().enumerate() {
            let key = |field: &str| format!("trunks[{i}].{field}");
            if trunk.name.trim().is_empty() {
                return Err(invalid(
                    &key("name"),
                    format!("{}: every trunk needs a name", key("name")),
                ));
            }
            for net in &trunk.whitelisted_ips {
                if let Err(e) = voicegate_control::IpNet::parse(net) {
                    return Err(invalid(
                        &key("whitelisted_ips"),
                        format!("{}: {net:?}: {e}", key("whitelisted_ips")),
                    ));
                }
            }
            if trunk
                .credentials
                .iter()
                .any(|c| c.user_name.is_empty() || c.password.is_empty())
            {
                return Err(invalid(
                    &key("credentials"),
                    format!(
                        "{}: user_name and password are required",
                        key("credentials")
                    ),
                ));
            }
            for destination in &trunk.destinations {
                if let Err(e) = voicegate_control::parse_destination(destination) {
                    return Err(invalid(
                        &key("destinations"),
                        format!("{}: {destination:?}: {e}", key("destinations")),
                    ));
                }
            }
            if !trunk.external_alias.is_empty()
                && voicegate_control::check_e164(&trunk.external_alias).is_err()
            {
                return Err(invalid(
                    &key("external_alias"),
                    format!(
                        "{}: {:?} is not E.164 (+ and 8 to 15 digits)",
                        key("external_alias"),
                        trunk.external_alias
                    ),
                ));
            }
            for number in &trunk.numbers {
                if voicegate_control::check_e164(&number.number).is_err() {
                    return Err(invalid(
                        &key("numbers"),
                        format!(
                            "{}: {:?} is not E.164 (+ and 8 to 15 digits)",
                            key("numbers"),
                            number.number
                        ),
                    ));
                }
                match number.mode.as_str() {
                    "pstn" => {}
                    "flow" if self.flows.iter().any(|f| f.name == number.flow) => {}
                    "flow" => {
                        return Err(invalid(
                            &key("numbers"),
                            format!(
                                "{}: {}: no flow named {:?}",
                                key("numbers"),
                                number.number,
                                number.flow
                            ),
                        ))
                    }
                    other => {
                        return Err(invalid(
                            &key("numbers"),
                            format!("{}: mode {other:?} is not flow or pstn", key("numbers")),
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_carriers(&self) -> Result<(), ConfigError> {
        for (i, carrier) in self.carriers.iter().enumerate() {
            let key = |field: &str| format!("carriers[{i}].{field}");
            if carrier.name.trim().is_empty() {
                return Err(invalid(
                    &key("name"),
                    format!("{}: every carrier needs a name", key("name")),
                ));
            }
            if let Err(e) = crate::resolve::parse_sip_target(&carrier.uri) {
                return Err(invalid(
                    &key("uri"),
                    format!("{}: {:?}: {e}", key("uri"), carrier.uri),
                ));
            }
            if carrier.username.is_empty() != carrier.password.is_empty() {
                return Err(invalid(
                    &key("username"),
                    format!(
                        "{}: give both username and password, or neither",
                        key("username")
                    ),
                ));
            }
            for net in &carrier.inbound_ips {
                if let Err(e) = voicegate_control::IpNet::parse(net) {
                    return Err(invalid(
                        &key("inbound_ips"),
                        format!("{}: {net:?}: {e}", key("inbound_ips")),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/voicegate.toml");

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// A TOML file in the temp dir, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, contents: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "voicegate-config-test-{}-{name}.toml",
                std::process::id()
            ));
            std::fs::write(&path, contents).unwrap();
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn load_err(contents: &str, name: &str, vars: &[(&str, &str)]) -> (ConfigError, String) {
        let file = TempFile::new(name, contents);
        let err = Config::load(Some(&file.0), env(vars)).unwrap_err();
        let text = err.to_string();
        assert!(!text.contains('\n'), "error is not one line: {text}");
        (err, text.replace(&file.0.display().to_string(), "FILE"))
    }

    fn env_err(vars: &[(&str, &str)]) -> String {
        let text = Config::load(None, env(vars)).unwrap_err().to_string();
        assert!(!text.contains('\n'), "error is not one line: {text}");
        text
    }

    #[test]
    fn defaults() {
        let c = Config::default();
        assert_eq!(c.sip.udp, "0.0.0.0:5060");
        assert_eq!(c.sip.tcp, "0.0.0.0:5060");
        assert_eq!(c.sip.tls, "0.0.0.0:5061");
        assert_eq!(c.sip.udp_addr(), Some("0.0.0.0:5060".parse().unwrap()));
        assert_eq!(c.sip.tls_addr(), Some("0.0.0.0:5061".parse().unwrap()));
        assert_eq!(c.sip.tls_files(), None);
        assert_eq!(c.sip.public_ip(), None);
        assert_eq!(c.sip.max_message_bytes, 65536);
        assert_eq!(c.sip.user_agent, "voicegate");
        assert_eq!(c.rtp.port_range(), 10000..=20000);
        assert_eq!(c.rtp.codec_names(), vec!["PCMA", "PCMU"]);
        assert!(c.test_numbers.is_echo("echo"));
        assert!(c.test_numbers.ringing.is_empty());
        assert_eq!(c.test_numbers.ring_duration(), Duration::ZERO);
        assert_eq!(c.log.level, "info");
        assert_eq!(c.log.format, "text");
        c.validate().unwrap();
        assert_eq!(Config::load(None, no_env).unwrap(), c);
    }

    #[test]
    fn shipped_file_equals_defaults() {
        let loaded = Config::load(Some(Path::new(SHIPPED)), no_env).unwrap();
        assert_eq!(loaded, Config::default());
        // Every key is written out, not merely defaulted.
        let text = std::fs::read_to_string(SHIPPED).unwrap();
        let table: Table = toml::from_str(&text).unwrap();
        assert_eq!(table, schema());
    }

    #[test]
    fn shipped_file_documents_every_env_var() {
        let text = std::fs::read_to_string(SHIPPED).unwrap();
        let vars = Config::env_var_names();
        assert!(vars.contains(&"VOICEGATE_TEST_NUMBERS_RING_MS".to_owned()));
        for var in vars {
            assert!(text.contains(&var), "{var} is not documented in {SHIPPED}");
        }
    }

    #[test]
    fn env_overrides_string() {
        let c = Config::load(
            None,
            env(&[
                ("VOICEGATE_SIP_UDP", "127.0.0.1:15060"),
                ("VOICEGATE_SIP_PUBLIC_IP", "192.0.2.7"),
                ("VOICEGATE_LOG_LEVEL", "voicegate=debug,info"),
                ("VOICEGATE_LOG_FORMAT", "json"),
            ]),
        )
        .unwrap();
        assert_eq!(c.log.format, "json");
        assert_eq!(c.sip.udp_addr(), Some("127.0.0.1:15060".parse().unwrap()));
        assert_eq!(c.sip.public_ip(), Some("192.0.2.7".parse().unwrap()));
        assert_eq!(c.log.level, "voicegate=debug,info");
        assert_eq!(c.sip.tcp, "0.0.0.0:5060");
    }

    #[test]
    fn env_overrides_number() {
        let c = Config::load(
            None,
            env(&[
                ("VOICEGATE_RTP_PORT_MIN", "30000"),
                ("VOICEGATE_RTP_PORT_MAX", " 30100 "),
                ("VOICEGATE_TEST_NUMBERS_RING_MS", "1500"),
            ]),
        )
        .unwrap();
        assert_eq!(c.rtp.port_range(), 30000..=30100);
        assert_eq!(c.test_numbers.ring_duration(), Duration::from_millis(1500));
    }

    #[test]
    fn api_connection_limits_are_env_overridable_and_checked() {
        let c = Config::load(
            None,
            env(&[
                ("VOICEGATE_API_MAX_CONNECTIONS", "8"),
                ("VOICEGATE_API_MAX_CONNECTIONS_PER_IP", "2"),
                ("VOICEGATE_API_IDLE_TIMEOUT_SECS", "5"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (
                c.api.max_connections,
                c.api.max_connections_per_ip,
                c.api.idle_timeout_secs
            ),
            (8, 2, 5)
        );
        let err = env_err(&[("VOICEGATE_API_MAX_CONNECTIONS", "0")]);
        assert!(
            err.contains("api.max_connections: must be at least 1"),
            "{err}"
        );
        let err = env_err(&[
            ("VOICEGATE_API_MAX_CONNECTIONS", "4"),
            ("VOICEGATE_API_MAX_CONNECTIONS_PER_IP", "5"),
        ]);
        assert!(
            err.contains("api.max_connections_per_ip: must be 1..=4"),
            "{err}"
        );
        let err = env_err(&[("VOICEGATE_API_IDLE_TIMEOUT_SECS", "0")]);
        assert!(
            err.contains("api.idle_timeout_secs: must be 1..=3600"),
            "{err}"
        );
    }

    #[test]
    fn env_overrides_list() {
        let c = Config::load(
            None,
            env(&[
                ("VOICEGATE_TEST_NUMBERS_ECHO", "echo, 1234"),
                ("VOICEGATE_TEST_NUMBERS_RINGING", "ring"),
                ("VOICEGATE_RTP_CODECS", "pcmu,PCMA,pcmu"),
            ]),
        )
        .unwrap();
        assert_eq!(c.test_numbers.echo, vec!["echo", "1234"]);
        assert!(c.test_numbers.is_ringing("ring"));
        assert_eq!(c.rtp.codec_names(), vec!["PCMU", "PCMA"]);

        let c = Config::load(None, env(&[("VOICEGATE_TEST_NUMBERS_ECHO", "")])).unwrap();
        assert!(c.test_numbers.echo.is_empty());
    }

    #[test]
    fn env_empty_string_disables_transport() {
        let c = Config::load(
            None,
            env(&[("VOICEGATE_SIP_TCP", ""), ("VOICEGATE_SIP_TLS", "")]),
        )
        .unwrap();
        assert_eq!(c.sip.tcp_addr(), None);
        assert_eq!(c.sip.tls_addr(), None);
        assert!(c.sip.udp_addr().is_some());

        let err = env_err(&[
            ("VOICEGATE_SIP_UDP", ""),
            ("VOICEGATE_SIP_TCP", ""),
            ("VOICEGATE_SIP_TLS", ""),
        ]);
        assert!(err.contains("no transport enabled"), "{err}");
    }

    #[test]
    fn env_overrides_file() {
        let file = TempFile::new(
            "override",
            "[sip]\nudp = \"127.0.0.1:5070\"\ntcp = \"\"\n[rtp]\nport_min = 40000\nport_max = 40100\n",
        );
        let c = Config::load(
            Some(&file.0),
            env(&[("VOICEGATE_SIP_UDP", "127.0.0.1:5080")]),
        )
        .unwrap();
        assert_eq!(c.sip.udp_addr(), Some("127.0.0.1:5080".parse().unwrap()));
        assert_eq!(c.sip.tcp_addr(), None);
        assert_eq!(c.rtp.port_range(), 40000..=40100);
        assert_eq!(c.sip.tls, "0.0.0.0:5061");
    }

    #[test]
    fn unknown_key_names_dotted_key() {
        let (err, text) = load_err("[sip]\nudpp = \"1.2.3.4:5\"\n", "unknown-key", &[]);
        assert_eq!(text, "config: unknown key sip.udpp in FILE");
        assert_eq!(err.key(), Some("sip.udpp"));

        let (_, text) = load_err("colour = 1\n", "unknown-top-key", &[]);
        assert_eq!(text, "config: unknown key colour in FILE");
    }

    #[test]
    fn unknown_section_names_section() {
        let (err, text) = load_err("[widgets]\nname = \"a\"\n", "unknown-section", &[]);
        assert_eq!(text, "config: unknown section [widgets] in FILE");
        assert_eq!(err.key(), Some("widgets"));
    }

    #[test]
    fn bad_integer_from_env() {
        assert_eq!(
            env_err(&[("VOICEGATE_RTP_PORT_MIN", "abc")]),
            r#"config: rtp.port_min: invalid value "abc" from VOICEGATE_RTP_PORT_MIN (expected an integer)"#
        );
        let err = env_err(&[("VOICEGATE_RTP_PORT_MAX", "70000")]);
        assert!(err.starts_with("config: rtp.port_max: "), "{err}");
        assert!(err.ends_with("(from VOICEGATE_RTP_PORT_MAX)"), "{err}");
    }

    #[test]
    fn bad_type_in_file_names_key() {
        let (err, text) = load_err("[rtp]\nport_min = \"abc\"\n", "bad-type", &[]);
        assert_eq!(err.key(), Some("rtp.port_min"));
        assert!(text.starts_with("config: rtp.port_min: "), "{text}");
        assert!(text.ends_with("(in FILE)"), "{text}");

        let (_, text) = load_err("sip = 1\n", "bad-section", &[]);
        assert!(
            text.starts_with("config: sip: expected a section [sip]"),
            "{text}"
        );
    }

    #[test]
    fn syntax_error_is_one_line_with_position() {
        let (_, text) = load_err("[sip]\nudp = \n", "syntax", &[]);
        assert!(
            text.starts_with("config: invalid TOML in FILE:2:"),
            "{text}"
        );
    }

    #[test]
    fn bad_address() {
        assert_eq!(
            env_err(&[("VOICEGATE_SIP_UDP", "foo")]),
            r#"config: sip.udp: "foo" is not an address (expected ip:port)"#
        );
        assert_eq!(
            env_err(&[("VOICEGATE_SIP_PUBLIC_IP", "x")]),
            r#"config: sip.public_ip: "x" is not an IP address"#
        );
    }

    #[test]
    fn bad_port_range() {
        assert_eq!(
            env_err(&[
                ("VOICEGATE_RTP_PORT_MIN", "20000"),
                ("VOICEGATE_RTP_PORT_MAX", "10000")
            ]),
            "config: rtp.port_min (20000) must be below rtp.port_max (10000)"
        );
        assert_eq!(
            env_err(&[("VOICEGATE_RTP_PORT_MIN", "0")]),
            "config: rtp.port_min: must be above 0"
        );
    }

    #[test]
    fn unknown_codec() {
        assert_eq!(
            env_err(&[("VOICEGATE_RTP_CODECS", "PCMA,G729")]),
            r#"config: rtp.codecs: unknown codec "G729" (known: PCMA, PCMU, OPUS)"#
        );
        let err = env_err(&[("VOICEGATE_RTP_CODECS", "")]);
        assert!(err.contains("at least one codec"), "{err}");
    }

    #[test]
    fn codec_preference() {
        assert_eq!(Config::default().rtp.codec_preference, "offer");
        let c = Config::load(None, env(&[("VOICEGATE_RTP_CODEC_PREFERENCE", "ours")])).unwrap();
        assert_eq!(c.rtp.codec_preference, "ours");
        assert_eq!(
            env_err(&[("VOICEGATE_RTP_CODEC_PREFERENCE", "caller")]),
            r#"config: rtp.codec_preference: "caller" is not one of offer, ours"#
        );
    }

    #[test]
    fn other_validation() {
        assert_eq!(
            env_err(&[("VOICEGATE_SIP_TLS_CERT", "cert.pem")]),
            "config: sip.tls_cert and sip.tls_key must be given together"
        );
        let err = env_err(&[("VOICEGATE_SIP_MAX_MESSAGE_BYTES", "100")]);
        assert!(
            err.starts_with("config: sip.max_message_bytes: 100 is out of range"),
            "{err}"
        );
        assert_eq!(
            env_err(&[("VOICEGATE_LOG_LEVEL", " ")]),
            "config: log.level: must not be empty"
        );
        assert_eq!(
            env_err(&[("VOICEGATE_LOG_FORMAT", "logfmt")]),
            r#"config: log.format: "logfmt" is not one of text, json"#
        );
        let (err, _) = load_err("[log]\nformat = \"JSON\"\n", "log-format", &[]);
        assert_eq!(err.key(), Some("log.format"));
        let err = env_err(&[("VOICEGATE_TEST_NUMBERS_RINGING", "echo")]);
        assert!(err.contains("listed in both echo and ringing"), "{err}");

        let c = Config::load(
            None,
            env(&[
                ("VOICEGATE_SIP_TLS_CERT", "cert.pem"),
                ("VOICEGATE_SIP_TLS_KEY", "key.pem"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.sip.tls_files(),
            Some((Path::new("cert.pem"), Path::new("key.pem")))
        );
    }

    #[test]
    fn missing_file() {
        let err = Config::load(Some(Path::new("config/x.toml")), no_env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config: cannot read config/x.toml: No such file or directory"
        );
    }

    #[test]
    fn flows_load_from_the_file_and_are_checked() {
        let dir = std::env::temp_dir().join(format!("vg-flows-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("flows.toml");
        std::fs::write(&path, "[[flows]]\nname = \"bot\"\nurl = \"ws://127.0.0.1:9/x?sample-rate=16000\"\nnumbers = [\"+15550100\"]\n").unwrap();
        let config = Config::load(Some(&path), no_env).unwrap();
        assert_eq!(config.flows.len(), 1);
        assert_eq!(config.flows[0].protocol, "exotel");
        assert_eq!(config.flows[0].direction, "bidirectional");
        std::fs::write(
            &path,
            "[[flows]]\nname = \"bot\"\nurl = \"ws://h/\"\nprotocol = \"sip\"\n",
        )
        .unwrap();
        let err = Config::load(Some(&path), no_env).unwrap_err().to_string();
        assert!(err.contains("flows[0].protocol"), "{err}");
        std::fs::write(&path, "[[flows]]\nname = \"bot\"\nurl = \"http://h/\"\n").unwrap();
        let err = Config::load(Some(&path), no_env).unwrap_err().to_string();
        assert!(err.contains("flows[0].url"), "{err}");
        std::fs::write(
            &path,
            "[[flows]]\nname = \"bot\"\nurl = \"ws://h/\"\nnumbers = [\"echo\"]\n",
        )
        .unwrap();
        let err = Config::load(Some(&path), no_env).unwrap_err().to_string();
        assert!(err.contains("mapped twice"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
