//! The `voicegate` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use voicegate::config::Config;
use voicegate::logging::{self, LogFormat};

/// voicegate: a SIP trunk gateway and SIP-to-WebSocket media bridge.
///
/// Every config key can be overridden by an environment variable VOICEGATE_<SECTION>_<KEY>,
/// e.g. VOICEGATE_SIP_UDP=127.0.0.1:15060.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve SIP (UDP, TCP, TLS) and RTP until interrupted (Ctrl-C or SIGTERM).
    Serve {
        /// TOML config file (see config/voicegate.toml); without it, built-in defaults apply.
        #[arg(long, short, env = "VOICEGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the example bot: a WebSocket server that plays each caller's audio back to them
    /// (Exotel dialect, Twilio when the stream starts in it), for trying the bridge.
    EchoBot {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8765")]
        listen: String,
        /// How long to hold the caller's audio before playing it back, in milliseconds.
        #[arg(long, default_value_t = 500)]
        delay_ms: u64,
    },
    /// Check a config file (and the environment overrides) and print the result.
    CheckConfig {
        #[arg(long, short, env = "VOICEGATE_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::EchoBot { listen, delay_ms } => echo_bot(&listen, delay_ms),
        Command::CheckConfig { config } => match Config::load_from_process_env(config.as_deref()) {
            Ok(_) => {
                println!("config ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
    }
}

fn serve(path: Option<PathBuf>) -> ExitCode {
    let config = match Config::load_from_process_env(path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let format = LogFormat::from_config(&config.log.format);
    let Some(runtime) = logging_and_runtime(&config.log.level, format) else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        // Before the start-up line: a SIGTERM right after it must stop us cleanly, not kill us.
        let shutdown = Shutdown::install();
        let running = match voicegate::server::start(&config).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        tracing::info!(udp = ?running.local.udp, tcp = ?running.local.tcp, tls = ?running.local.tls, "voicegate started");
        shutdown.wait().await;
        tracing::info!("shutting down");
        ExitCode::SUCCESS
    })
}

/// Logs to stderr with the `level` filter (a tracing EnvFilter directive) in `format` and
/// builds the runtime; None (with the reason printed) if the runtime cannot start.
fn logging_and_runtime(level: &str, format: LogFormat) -> Option<tokio::runtime::Runtime> {
    logging::init(level, format);
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            None
        }
    }
}

fn echo_bot(listen: &str, delay_ms: u64) -> ExitCode {
    let Some(runtime) = logging_and_runtime("info", LogFormat::Text) else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("echo-bot: cannot listen on {listen}: {e}");
                return ExitCode::from(2);
            }
        };
        let shutdown = Shutdown::install();
        tracing::info!(%listen, "echo bot listening (ws://{listen}/)");
        let options = voicegate_bridge::echo_bot::EchoBotOptions {
            delay: std::time::Duration::from_millis(delay_ms),
        };
        tokio::select! {
            result = voicegate_bridge::echo_bot::serve(listener, options) => match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("echo-bot: {e}");
                    ExitCode::FAILURE
                }
            },
            _ = shutdown.wait() => ExitCode::SUCCESS,
        }
    })
}

/// The signals that stop us (SIGTERM, Ctrl-C), listened for from `install` on: one that comes
/// before [`Shutdown::wait`] is kept, not left to its default action.
struct Shutdown {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Shutdown {
    fn install() -> Self {
        Shutdown {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
        }
    }

    async fn wait(mut self) {
        #[cfg(unix)]
        {
            let term = async {
                match self.term.as_mut() {
                    Some(term) => {
                        term.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
