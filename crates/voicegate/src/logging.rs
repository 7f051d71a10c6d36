//! The process's log output: a `tracing` subscriber writing to stderr, as text or JSON lines.

use std::ffi::OsString;
use std::io::IsTerminal;

/// How log lines are written (`log.format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (with `message`), `target`.
    Json,
}

impl LogFormat {
    /// The format named by a validated `log.format` (see [`crate::config::LOG_FORMATS`]).
    pub fn from_config(name: &str) -> Self {
        if name == "json" {
            Self::Json
        } else {
            Self::Text
        }
    }
}

/// Installs the global subscriber: stderr, filtered by `filter` (a tracing EnvFilter
/// directive; `info` if it does not parse), in `format`.
pub fn init(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(colour_wanted(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR"),
            ))
            .init(),
        // Fields nested under "fields", not flattened: some events carry a field named
        // `target`, which would clash with the event's own target key.
        LogFormat::Json => builder.with_ansi(false).json().init(),
    }
}

/// Colour codes only for a person at a terminal: in a file, a pipe or a log shipper they
/// are noise. `NO_COLOR` set to anything but "" turns them off there too (no-color.org).
fn colour_wanted(stderr_is_terminal: bool, no_color: Option<OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_on_a_terminal_only_and_never_with_no_color() {
        assert!(colour_wanted(true, None));
        assert!(
            colour_wanted(true, Some("".into())),
            "empty NO_COLOR is unset"
        );
        assert!(!colour_wanted(true, Some("1".into())));
        assert!(!colour_wanted(false, None));
        assert!(!colour_wanted(false, Some("1".into())));
    }

    #[test]
    fn format_from_config() {
        assert_eq!(LogFormat::from_config("json"), LogFormat::Json);
        assert_eq!(LogFormat::from_config("text"), LogFormat::Text);
    }
}
