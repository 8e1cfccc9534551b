//! Serving from Python: the `Server` class (`lm_proxy.Server` wraps it), the command
//! line of the wheel (`run_cli`), and `bootstrap()` for library use.
//!
//! Python owns the signals: nothing here installs an OS signal handler. Blocking
//! waits happen with the GIL released, in slices of 100 ms, after each of which
//! `check_signals()` runs the Python handlers. While serving, the package installs a
//! [`SignalFlag`] as the Python handler of SIGINT and SIGTERM (where the application
//! kept the defaults): it only records the signal, which the wait loop then sees.
//! A handler that raises would not do: Python runs signal handlers wherever the main
//! thread next runs bytecode, which can be a weakref callback run when the GIL is
//! taken back, and an exception raised there is printed and dropped. Exceptions that
//! other handlers raise from `check_signals()` still end the wait.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PySystemExit};
use pyo3::prelude::*;
use tokio::sync::oneshot;

use crate::config::{Config, ConfigError};
use crate::extensions::ExtensionResolver;
use crate::gateway::Gateway;
use crate::server::reload::Overrides;
use crate::server::Serving;

use super::errors::raise_config_error;
use super::resolver::PyResolver;
use super::runtime::runtime;

/// How often a blocking wait comes back to check for signals.
const SLICE: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Finished {
    outcome: Mutex<Option<Result<(), String>>>,
    changed: Condvar,
}

impl Finished {
    fn set(&self, outcome: Result<(), String>) {
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
        self.changed.notify_all();
    }

    fn wait(&self, timeout: Duration) -> Option<Result<(), String>> {
        let guard = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |o| o.is_none())
            .unwrap_or_else(|e| e.into_inner());
        guard.clone()
    }

    fn get(&self) -> Option<Result<(), String>> {
        self.outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

enum StartError {
    Config(ConfigError),
    Other(String),
}

impl StartError {
    fn into_py(self, py: Python<'_>) -> PyErr {
        match self {
            StartError::Config(e) => raise_config_error(py, &e),
            StartError::Other(text) => PyRuntimeError::new_err(text),
        }
    }
}

/// A server running on the shared runtime, and the way to stop it.
struct Running {
    url: String,
    grace: Duration,
    stop: Mutex<Option<oneshot::Sender<Duration>>>,
    finished: Arc<Finished>,
}

impl Running {
    fn start(
        py: Python<'_>,
        config: Config,
        resolver: Arc<PyResolver>,
        overrides: Overrides,
        serving: Serving,
    ) -> Result<Running, StartError> {
        let rt = runtime().map_err(|e| StartError::Other(e.to_string()))?;
        let grace = Duration::from_secs_f64(config.settings.shutdown_grace_seconds);
        let config_path = config.path.clone();
        let dyn_resolver: Arc<dyn ExtensionResolver> = resolver.clone();
        let server = py
            .detach(|| {
                rt.block_on(crate::server::start_serving(
                    config,
                    dyn_resolver,
                    overrides,
                    serving,
                ))
            })
            .map_err(|e| match e.downcast::<ConfigError>() {
                Ok(config_error) => StartError::Config(config_error),
                Err(other) => StartError::Other(format!("{other:#}")),
            })?;
        crate::cli::announce(&server, &config_path);
        let url = server.url();
        let (stop_tx, stop_rx) = oneshot::channel::<Duration>();
        let finished = Arc::new(Finished::default());
        let done = finished.clone();
        rt.spawn(async move {
            // A dropped `Server` object stops its server too.
            let grace = stop_rx.await.unwrap_or(grace);
            resolver.begin_shutdown(grace);
            server.shutdown(grace);
            let outcome = server.wait().await.map_err(|e| format!("{e:#}"));
            // Stopped: its last request lines are written before anyone is told
            // (`Server.stop()`, `serve()` and the command line return after this).
            crate::logging::flush_request_log();
            done.set(outcome);
        });
        Ok(Running {
            url,
            grace,
            stop: Mutex::new(Some(stop_tx)),
            finished,
        })
    }

    /// Ask for a graceful stop (once; later calls do nothing).
    fn request_stop(&self, grace: Duration) -> bool {
        match self.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(tx) => tx.send(grace).is_ok(),
            None => false,
        }
    }

    /// Wait for the server to stop, without the GIL, running signal handlers between
    /// slices. Ends early when `flag` records a signal (or a handler raises).
    fn wait(&self, py: Python<'_>, flag: Option<&SignalFlag>) -> PyResult<Waited> {
        loop {
            let finished = self.finished.clone();
            if let Some(outcome) = py.detach(move || finished.wait(SLICE)) {
                return Ok(Waited::Stopped(outcome));
            }
            py.check_signals()?;
            if let Some(signal) = flag.and_then(SignalFlag::take) {
                return Ok(Waited::Signal(signal));
            }
        }
    }
}

/// How a wait ended.
enum Waited {
    Stopped(Result<(), String>),
    Signal(i32),
}

/// A Python signal handler that only records the signal: `signal.signal(SIGINT,
/// flag)`. The serving loops look at it between their waits.
#[pyclass(module = "lm_proxy._lm_proxy", frozen)]
pub struct SignalFlag {
    signal: AtomicI32,
}

impl SignalFlag {
    fn take(&self) -> Option<i32> {
        match self.signal.swap(0, Ordering::AcqRel) {
            0 => None,
            signal => Some(signal),
        }
    }
}

#[pymethods]
impl SignalFlag {
    #[new]
    fn new() -> Self {
        SignalFlag {
            signal: AtomicI32::new(0),
        }
    }

    /// The handler: `(signum, frame)`.
    #[pyo3(signature = (signum, frame=None))]
    fn __call__(&self, signum: i32, frame: Option<&Bound<'_, PyAny>>) {
        let _ = frame;
        self.signal.store(signum, Ordering::Release);
    }

    /// The last signal recorded and not yet seen, if any (does not clear it).
    #[getter]
    fn signal(&self) -> Option<i32> {
        match self.signal.load(Ordering::Acquire) {
            0 => None,
            signal => Some(signal),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.request_stop(self.grace);
    }
}

fn is_stop_signal(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py)
}

/// `lm_proxy._lm_proxy.Server`: a gateway serving in the background.
#[pyclass(module = "lm_proxy._lm_proxy", frozen)]
pub struct Server {
    running: Running,
}

#[pymethods]
impl Server {
    /// Start serving `config` (a `lm_proxy.config.Config`); returns once listening.
    #[new]
    #[pyo3(signature = (config, *, host=None, port=None, debug=None))]
    fn new(
        py: Python<'_>,
        config: &Bound<'_, PyAny>,
        host: Option<String>,
        port: Option<u16>,
        debug: Option<bool>,
    ) -> PyResult<Server> {
        let debug = debug.unwrap_or_else(crate::error::debug_details);
        crate::error::set_debug_details(debug);
        crate::cli::init_tracing(debug);
        let path = config_path(config)?;
        let resolver = PyResolver::new(py, None)?;
        let mut rust_config = resolver
            .config_from_python(py, config, &path)
            .map_err(|e| raise_config_error(py, &e))?;
        let overrides = Overrides { host, port };
        overrides.apply(&mut rust_config);
        let running = Running::start(py, rust_config, resolver, overrides, Serving::CallerRuntime)
            .map_err(|e| e.into_py(py))?;
        Ok(Server { running })
    }

    /// `http://host:port` (0.0.0.0 shown as 127.0.0.1).
    #[getter]
    fn url(&self) -> &str {
        &self.running.url
    }

    /// Whether the server is still serving (or finishing open requests).
    #[getter]
    fn running(&self) -> bool {
        self.running.finished.get().is_none()
    }

    /// The config's `shutdown_grace_seconds`.
    #[getter]
    fn grace(&self) -> f64 {
        self.running.grace.as_secs_f64()
    }

    /// Stop accepting connections, give open requests `grace` seconds (default: the
    /// config's `shutdown_grace_seconds`), and wait until the server has stopped and
    /// its request log is written. Returns None then, or the signal recorded by
    /// `flag` that ended the wait early (the shutdown goes on in the background).
    #[pyo3(signature = (grace=None, flag=None))]
    fn stop(
        &self,
        py: Python<'_>,
        grace: Option<f64>,
        flag: Option<&SignalFlag>,
    ) -> PyResult<Option<i32>> {
        let grace = grace
            .and_then(|g| Duration::try_from_secs_f64(g).ok())
            .unwrap_or(self.running.grace);
        self.running.request_stop(grace);
        finished_or_signal(self.running.wait(py, flag)?)
    }

    /// Block until the server stops (after `stop()` from another thread). Signal
    /// handlers run meanwhile: returns the signal `flag` recorded, if one ends the
    /// wait; an exception another handler raises is raised here.
    #[pyo3(signature = (flag=None))]
    fn wait(&self, py: Python<'_>, flag: Option<&SignalFlag>) -> PyResult<Option<i32>> {
        finished_or_signal(self.running.wait(py, flag)?)
    }
}

fn finished_or_signal(waited: Waited) -> PyResult<Option<i32>> {
    match waited {
        Waited::Stopped(Ok(())) => Ok(None),
        Waited::Stopped(Err(e)) => Err(PyRuntimeError::new_err(format!(
            "the server stopped with an error: {e}"
        ))),
        Waited::Signal(signal) => Ok(Some(signal)),
    }
}

fn config_path(config: &Bound<'_, PyAny>) -> PyResult<PathBuf> {
    let source = config.getattr("_source")?;
    Ok(if source.is_none() {
        PathBuf::from("<python config>")
    } else {
        PathBuf::from(source.str()?.to_string_lossy().into_owned())
    })
}

/// The wheel's `lm-proxy-server`, `lm-proxy` and `python -m lm_proxy`: the native
/// binary's command line, with Python callables allowed and Python owning signals
/// (`flag` is the handler the package installed for SIGINT and SIGTERM). Returns
/// the exit status.
#[pyfunction]
#[pyo3(signature = (argv, flag=None))]
pub fn run_cli(py: Python<'_>, argv: Vec<String>, flag: Option<&SignalFlag>) -> PyResult<i32> {
    let result = run_cli_until_stopped(py, argv, flag);
    // Every way out (also a second signal, which does not wait for the server) writes
    // the request lines still waiting in the log batch.
    py.detach(crate::logging::flush_request_log);
    result
}

fn run_cli_until_stopped(
    py: Python<'_>,
    argv: Vec<String>,
    flag: Option<&SignalFlag>,
) -> PyResult<i32> {
    let resolver = PyResolver::new(py, None)?;
    let prepare_resolver = resolver.clone();
    let launch = match py.detach(move || crate::cli::prepare(argv, prepare_resolver.as_ref())) {
        Ok(launch) => launch,
        Err(code) => return Ok(i32::from(code)),
    };
    if let Some(command) = launch.command {
        let config = launch.config;
        return py.detach(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => Ok(i32::from(
                    runtime.block_on(crate::cli::run_command(command, &config)),
                )),
                Err(e) => {
                    eprintln!("lm-proxy-server: cannot start the async runtime: {e}");
                    Ok(1)
                }
            }
        });
    }
    // Python code runs on the shared runtime; serving threads only when asked for.
    let serving = Serving::threads(launch.threads.unwrap_or(0));
    let running = match Running::start(py, launch.config, resolver, launch.overrides, serving) {
        Ok(running) => running,
        Err(StartError::Config(e)) => {
            eprintln!("lm-proxy-server: {e}");
            return Ok(1);
        }
        Err(StartError::Other(e)) => {
            eprintln!("lm-proxy-server: {e}");
            return Ok(1);
        }
    };
    let stop_requested = match running.wait(py, flag) {
        Ok(Waited::Stopped(outcome)) => return Ok(exit_status(outcome)),
        Ok(Waited::Signal(_)) => true,
        Err(e) if is_stop_signal(py, &e) => true,
        Err(e) => return Err(e),
    };
    if stop_requested {
        tracing::info!(
            "shutting down; open requests have {:.0}s to finish",
            running.grace.as_secs_f64()
        );
        running.request_stop(running.grace);
    }
    match running.wait(py, flag) {
        Ok(Waited::Stopped(outcome)) => Ok(exit_status(outcome)),
        Ok(Waited::Signal(_)) => {
            tracing::warn!("second signal: exiting without waiting for open requests");
            Ok(0)
        }
        Err(e) if is_stop_signal(py, &e) => {
            tracing::warn!("second signal: exiting without waiting for open requests");
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

fn exit_status(outcome: Result<(), String>) -> i32 {
    match outcome {
        Ok(()) => {
            tracing::info!("stopped");
            0
        }
        Err(e) => {
            // The request lines of the run come before the error that ended it.
            crate::logging::flush_request_log();
            eprintln!("lm-proxy-server: {e}");
            1
        }
    }
}

/// Build the runtime objects of `config` without serving: fills `env` (a
/// `lm_proxy.bootstrap.Env`) with the config, connections and components, and makes
/// it the default `lm_proxy.bootstrap.env`.
#[pyfunction]
#[pyo3(signature = (config, env, debug=false))]
pub fn bootstrap(
    py: Python<'_>,
    config: &Bound<'_, PyAny>,
    env: &Bound<'_, PyAny>,
    debug: bool,
) -> PyResult<()> {
    crate::error::set_debug_details(debug);
    crate::cli::init_tracing(debug);
    let path = config_path(config)?;
    let resolver = PyResolver::new(py, Some(env.clone()))?;
    let rust_config = resolver
        .config_from_python(py, config, &path)
        .map_err(|e| raise_config_error(py, &e))?;
    let rt = runtime()?;
    let built: Result<(), StartError> = py.detach(|| {
        rt.block_on(async move {
            let client = crate::server::upstream_client()
                .map_err(|e| StartError::Other(format!("{e:#}")))?;
            Gateway::build(rust_config, &client, resolver.as_ref())
                .map(|_| ())
                .map_err(StartError::Config)
        })
    });
    built.map_err(|e| e.into_py(py))
}
