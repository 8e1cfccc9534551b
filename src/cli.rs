//! The command line, shared by the native binary and the Python package's
//! `lm-proxy-server` / `python -m lm_proxy`: parse arguments, load `.env`, set up
//! logging, load the config, serve until SIGINT/SIGTERM.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use clap::Parser;

use crate::config::{load_dotenv, Config};
use crate::extensions::{ExtensionResolver, NativeResolver};
use crate::server::reload::Overrides;

/// OpenAI-compatible LLM gateway.
#[derive(Debug, Parser)]
#[command(name = "lm-proxy-server", version, about, long_about = None)]
pub struct Cli {
    /// Config file (.toml, .json, .yml/.yaml; .py with the Python package).
    #[arg(long, short = 'c', default_value = "config.toml", value_name = "PATH")]
    pub config: PathBuf,

    /// .env file to load before reading the config; "" disables loading.
    /// Default: .env in the working directory, if present.
    #[arg(long, visible_aliases = ["env-file", "env_file"], value_name = "PATH")]
    pub env: Option<String>,

    /// Debug mode: DEBUG log level and error details (overrides LM_PROXY_DEBUG).
    #[arg(long, overrides_with = "no_debug")]
    pub debug: bool,

    /// Turn debug mode off (overrides LM_PROXY_DEBUG).
    #[arg(long = "no-debug", overrides_with = "debug")]
    pub no_debug: bool,

    /// Interface to bind to (overrides `host` in the config).
    #[arg(long)]
    pub host: Option<String>,

    /// Port to listen on (overrides `port` in the config; 0 picks a free port).
    #[arg(long)]
    pub port: Option<u16>,
}

/// The reference's truthy words (case-insensitive): 1, true, yes, on, enabled, y, +.
/// Returns `Some(false)` for their opposites, `None` for anything else.
pub fn parse_truthy(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "enabled" | "y" | "+" => Some(true),
        "0" | "false" | "no" | "off" | "disabled" | "n" | "-" | "" => Some(false),
        _ => None,
    }
}

impl Cli {
    /// Debug mode: the flags win, then `LM_PROXY_DEBUG` (read after `.env` is loaded).
    pub fn debug_mode(&self) -> bool {
        if self.debug {
            true
        } else if self.no_debug {
            false
        } else {
            std::env::var("LM_PROXY_DEBUG")
                .ok()
                .and_then(|v| parse_truthy(&v))
                .unwrap_or(false)
        }
    }
}

/// Set up `tracing` on stderr: INFO, or DEBUG in debug mode; `RUST_LOG` overrides.
pub fn init_tracing(debug: bool) {
    let default = if debug {
        "debug,hyper=info,hyper_util=info,h2=info,rustls=info,reqwest=info"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// Run the native binary.
pub fn main_native() -> ExitCode {
    run(std::env::args_os(), Arc::new(NativeResolver))
}

/// Parse `args` (program name first), then serve until a shutdown signal.
/// Startup problems print one line to stderr and give exit code 1.
pub fn run<I, T>(args: I, resolver: Arc<dyn ExtensionResolver>) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let env_file = match cli.env.as_deref() {
        Some("") => None,
        Some(path) => Some(Some(PathBuf::from(path))),
        None => Some(None),
    };
    if let Some(explicit) = env_file {
        if let Err(problem) = load_dotenv(explicit.as_deref()) {
            eprintln!("lm-proxy-server: cannot load environment file {problem}");
            return ExitCode::from(1);
        }
    }
    let debug = cli.debug_mode();
    crate::error::set_debug_details(debug);
    init_tracing(debug);

    let mut config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("lm-proxy-server: config error: {e}");
            return ExitCode::from(1);
        }
    };
    let overrides = Overrides {
        host: cli.host,
        port: cli.port,
    };
    overrides.apply(&mut config);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lm-proxy-server: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve_until_signal(config, resolver, overrides)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lm-proxy-server: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn serve_until_signal(
    config: Config,
    resolver: Arc<dyn ExtensionResolver>,
    overrides: Overrides,
) -> anyhow::Result<()> {
    let grace = Duration::from_secs_f64(config.settings.shutdown_grace_seconds);
    let config_path = config.path.clone();
    let server = crate::server::start(config, resolver, overrides).await?;
    tracing::info!(
        "lm-proxy {} listening on {} (config: {})",
        env!("CARGO_PKG_VERSION"),
        server.url(),
        config_path.display()
    );
    shutdown_signal().await;
    tracing::info!(
        "shutting down; open requests have {:.0}s to finish",
        grace.as_secs_f64()
    );
    server.shutdown(grace);
    server.wait().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT (Ctrl+C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truthy_words() {
        for word in ["1", "TRUE", "Yes", "on", "Enabled", "y", "+"] {
            assert_eq!(parse_truthy(word), Some(true), "{word}");
        }
        for word in ["0", "false", "NO", "off", "disabled", "n", "-", ""] {
            assert_eq!(parse_truthy(word), Some(false), "{word}");
        }
        assert_eq!(parse_truthy("maybe"), None);
    }

    #[test]
    fn env_aliases_and_debug_flags() {
        for flag in ["--env", "--env-file", "--env_file"] {
            let cli = Cli::try_parse_from(["x", flag, "a.env"]).unwrap();
            assert_eq!(cli.env.as_deref(), Some("a.env"));
        }
        let cli = Cli::try_parse_from(["x", "--env="]).unwrap();
        assert_eq!(cli.env.as_deref(), Some(""));
        let cli = Cli::try_parse_from(["x", "--debug", "--no-debug"]).unwrap();
        assert!(!cli.debug_mode());
        let cli = Cli::try_parse_from(["x", "--no-debug", "--debug"]).unwrap();
        assert!(cli.debug_mode());
    }
}
