//! The command line, shared by the native binary and the Python package's
//! `lm-proxy-server` / `python -m lm_proxy`: parse arguments, load `.env`, set up
//! logging, load the config, serve until SIGINT/SIGTERM.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use clap::Parser;

use crate::config::{load_dotenv, Config};
use crate::extensions::{ExtensionResolver, NativeResolver};
use crate::server::reload::Overrides;
use crate::server::{RunningServer, Serving};

/// OpenAI-compatible LLM gateway.
#[derive(Debug, Parser)]
#[command(name = "lm-proxy-server", version, about, long_about = None)]
pub struct Cli {
    /// Config file (.toml, .json, .yml/.yaml; .py with the Python package).
    // Global: `keys list --config prod.toml` reads as well as the other order.
    #[arg(
        long,
        short = 'c',
        default_value = "config.toml",
        value_name = "PATH",
        global = true
    )]
    pub config: PathBuf,

    /// .env file to load before reading the config; "" disables loading.
    /// Default: .env in the working directory, if present.
    #[arg(long, visible_aliases = ["env-file", "env_file"], value_name = "PATH", global = true)]
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

    /// Serving threads, each with its own runtime and listening socket (SO_REUSEPORT).
    /// 0: one shared multi-threaded runtime. Default: one per CPU for the native
    /// binary; 0 for the Python package (where Python code runs on the shared runtime).
    #[arg(long, env = "LM_PROXY_THREADS", value_name = "N")]
    pub threads: Option<usize>,

    /// Without a command: serve. Commands work on the configured `[database]`.
    #[command(subcommand)]
    pub command: Option<crate::usage::commands::Command>,
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
/// Request lines are batched (`logging::output`): whoever ends the process cleanly
/// calls `logging::flush_request_log()` first; `run` does.
pub fn init_tracing(debug: bool) {
    let default = if debug {
        "debug,hyper=info,hyper_util=info,h2=info,rustls=info,reqwest=info"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let subscriber = crate::logging::subscriber(filter, crate::logging::output::stderr_output());
    // `try_init` as the builder's: also routes the `log` crate's records into it.
    let _ = tracing_subscriber::util::SubscriberInitExt::try_init(subscriber);
}

/// Run the native binary.
pub fn main_native() -> ExitCode {
    run(std::env::args_os(), Arc::new(NativeResolver))
}

/// What a command line asks for, once `.env`, debug mode and logging are set up and
/// the config is loaded.
pub struct Launch {
    pub config: Config,
    pub overrides: Overrides,
    pub debug: bool,
    /// `--threads` (or `LM_PROXY_THREADS`), when given.
    pub threads: Option<usize>,
    /// A command instead of serving (`keys ...`, `usage`): see [`run_command`].
    pub command: Option<crate::usage::commands::Command>,
}

/// Parse `args` (program name first), load `.env`, set debug mode and logging, and
/// load the config through `resolver`. `Err` carries the exit status to end with: 0
/// after `--help` / `--version`, 2 for bad arguments, 1 for startup problems (already
/// printed as one line on stderr).
pub fn prepare<I, T>(args: I, resolver: &dyn ExtensionResolver) -> Result<Launch, u8>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return Err(if e.use_stderr() { 2 } else { 0 });
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
            return Err(1);
        }
    }
    let debug = cli.debug_mode();
    crate::error::set_debug_details(debug);
    init_tracing(debug);

    let mut config = match resolver.load_config(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("lm-proxy-server: config error: {e}");
            return Err(1);
        }
    };
    let overrides = Overrides {
        host: cli.host,
        port: cli.port,
    };
    overrides.apply(&mut config);
    Ok(Launch {
        config,
        overrides,
        debug,
        threads: cli.threads,
        command: cli.command,
    })
}

/// Parse `args` (program name first), then serve until a shutdown signal.
/// Startup problems print one line to stderr and give exit code 1. Every way out
/// writes the request lines still waiting in the log batch.
pub fn run<I, T>(args: I, resolver: Arc<dyn ExtensionResolver>) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let code = run_until_stopped(args, resolver);
    crate::logging::flush_request_log();
    code
}

fn run_until_stopped<I, T>(args: I, resolver: Arc<dyn ExtensionResolver>) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let launch = match prepare(args, resolver.as_ref()) {
        Ok(launch) => launch,
        Err(code) => return ExitCode::from(code),
    };
    let runtime = match crate::shard::number_runtime_threads(
        tokio::runtime::Builder::new_multi_thread().enable_all(),
    )
    .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lm-proxy-server: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(command) = launch.command {
        return ExitCode::from(runtime.block_on(run_command(command, &launch.config)));
    }
    let serving = launch
        .threads
        .map_or_else(Serving::per_cpu, Serving::threads);
    match runtime.block_on(serve_until_signal(
        launch.config,
        resolver,
        launch.overrides,
        serving,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The request lines of the run come before the error that ended it.
            crate::logging::flush_request_log();
            eprintln!("lm-proxy-server: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Run a command (`keys ...`, `usage`) against the config's database; the exit
/// status (errors are printed as one line on stderr).
pub async fn run_command(command: crate::usage::commands::Command, config: &Config) -> u8 {
    crate::usage::commands::run(command, config).await
}

/// The line that says the server is ready (tests and scripts wait for it).
pub fn announce(server: &RunningServer, config_path: &Path) {
    tracing::info!(
        "lm-proxy {} listening on {} (config: {}; {})",
        env!("CARGO_PKG_VERSION"),
        server.url(),
        config_path.display(),
        server.serving_description()
    );
}

async fn serve_until_signal(
    config: Config,
    resolver: Arc<dyn ExtensionResolver>,
    overrides: Overrides,
    serving: Serving,
) -> anyhow::Result<()> {
    let grace = Duration::from_secs_f64(config.settings.shutdown_grace_seconds);
    let config_path = config.path.clone();
    let server = crate::server::start_serving(config, resolver, overrides, serving).await?;
    // Listen before saying "listening": a signal sent as soon as the line appears
    // must find the handler in place, not the default action (termination).
    let signals = shutdown_signal();
    announce(&server, &config_path);
    signals.await;
    tracing::info!(
        "shutting down; open requests have {:.0}s to finish",
        grace.as_secs_f64()
    );
    server.shutdown(grace);
    server.wait().await?;
    // Any line but a request line writes the waiting request lines first, so they
    // are all out before "stopped" (and `run` flushes again on the way out).
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT (Ctrl+C) or SIGTERM. The handlers are installed when this is
/// called (inside the runtime), not when the future is first polled.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt()).ok();
        let terminate = signal(SignalKind::terminate()).ok();
        async move {
            let wait = |sig: Option<tokio::signal::unix::Signal>| async move {
                match sig {
                    Some(mut sig) => {
                        sig.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(interrupt) => {},
                _ = wait(terminate) => {},
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
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
