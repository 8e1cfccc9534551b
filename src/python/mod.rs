//! The PyO3 module `lm_proxy._lm_proxy`: the only place that imports pyo3.
//!
//! - [`resolver`]: `PyResolver`, the `ExtensionResolver` that turns Python callables
//!   (dotted paths, class tables, objects of a Python `Config`) into the core's traits;
//! - [`adapters`], [`provider`]: those trait implementations (key checks, handlers,
//!   loggers, log writers, connections);
//! - [`bridge`], [`call`], [`callers`]: how Rust calls Python without blocking a
//!   tokio worker on the GIL (caller threads that keep their Python thread state
//!   for sync callables, one asyncio loop for async ones);
//! - [`connection`]: Rust connections as awaitable callables (`env.connections`);
//! - [`server`]: `Server`, `run_cli`, `bootstrap`: serving with Python owning signals;
//! - [`convert`], [`errors`], [`runtime`]: JSON ⇄ Python, exceptions → answers, the
//!   lazily created tokio runtime.
//!
//! The core never sees a `Py<PyAny>`: everything Python stays behind these adapters.

mod adapters;
mod bridge;
mod call;
mod callers;
mod connection;
mod convert;
mod embed;
mod errors;
mod provider;
mod resolver;
mod runtime;
mod server;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use pyo3::prelude::*;

use errors::raise_config_error;

/// Read a TOML, JSON or YAML config file: parsed, `env:` substituted and checked
/// exactly as the native binary does. Returns the settings as a dict.
#[pyfunction]
fn read_config(py: Python<'_>, path: PathBuf) -> PyResult<Py<PyAny>> {
    let tree = py
        .detach(|| {
            let tree = crate::config::load_tree(&path)?;
            crate::config::Config::from_value(tree.clone(), &path)?;
            Ok(tree)
        })
        .map_err(|e: crate::config::ConfigError| raise_config_error(py, &e))?;
    Ok(convert::to_py(py, &tree)?.unbind())
}

/// Check a Python `Config` the way serving it would (structure, routing, groups),
/// without resolving or calling any Python object. Raises `ConfigError`.
#[pyfunction]
fn check_config(py: Python<'_>, config: &Bound<'_, PyAny>) -> PyResult<()> {
    let (tree, _objects): (Bound<'_, PyAny>, Bound<'_, PyAny>) =
        config.call_method0("_to_tree")?.extract()?;
    let source = config.getattr("_source")?;
    let path = if source.is_none() {
        PathBuf::from("<python config>")
    } else {
        PathBuf::from(source.str()?.to_string_lossy().into_owned())
    };
    let tree = convert::from_py(&tree)?;
    crate::config::Config::from_value(tree, &path)
        .map(|_| ())
        .map_err(|e| raise_config_error(py, &e))
}

/// Load a `.env` file (values override the environment). `None`: `.env` in the
/// working directory if there is one.
#[pyfunction]
#[pyo3(signature = (path=None))]
fn load_dotenv(path: Option<PathBuf>) -> PyResult<()> {
    crate::config::load_dotenv(path.as_deref().map(Path::new))
        .map_err(pyo3::exceptions::PyOSError::new_err)
}

/// Stop the bridge's event loop (called at interpreter exit).
#[pyfunction]
#[pyo3(signature = (timeout=2.0))]
fn stop_bridge(py: Python<'_>, timeout: f64) -> PyResult<()> {
    match bridge::Bridge::started(py) {
        Some(bridge) => bridge.stop(py, timeout),
        None => Ok(()),
    }
}

/// Refuse new sync Python calls and wait up to `timeout` seconds for the running
/// ones (called at interpreter exit: a call still running when the interpreter
/// finalizes would abort the process). `True` when none is left.
#[pyfunction]
#[pyo3(signature = (timeout=5.0))]
fn drain_python_calls(py: Python<'_>, timeout: f64) -> bool {
    let timeout = std::time::Duration::try_from_secs_f64(timeout).unwrap_or_default();
    py.detach(|| callers::drain(timeout))
}

/// Write the request log lines still waiting in the stderr batch (called at
/// interpreter exit; servers write theirs when they stop).
#[pyfunction]
fn flush_request_log(py: Python<'_>) {
    py.detach(crate::logging::flush_request_log);
}

#[pymodule]
fn _lm_proxy(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("OBJECT_REF_PREFIX", resolver::OBJECT_REF_PREFIX)?;
    m.add_function(wrap_pyfunction!(server::run_cli, m)?)?;
    m.add_function(wrap_pyfunction!(server::bootstrap, m)?)?;
    m.add_function(wrap_pyfunction!(read_config, m)?)?;
    m.add_function(wrap_pyfunction!(check_config, m)?)?;
    m.add_function(wrap_pyfunction!(load_dotenv, m)?)?;
    m.add_function(wrap_pyfunction!(stop_bridge, m)?)?;
    m.add_function(wrap_pyfunction!(flush_request_log, m)?)?;
    m.add_function(wrap_pyfunction!(drain_python_calls, m)?)?;
    m.add_class::<server::Server>()?;
    m.add_class::<server::SignalFlag>()?;
    m.add_class::<connection::RustConnection>()?;
    m.add_class::<connection::ChunkIterator>()?;
    Ok(())
}
