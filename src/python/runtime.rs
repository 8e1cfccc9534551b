//! Process-wide pieces of the bridge: the tokio runtime (created when serving or
//! bootstrapping starts, never at import, so that forking before that is safe), the
//! Python helper functions the Rust side calls (`lm_proxy._bridge`), and the rule for
//! taking the GIL from Rust code that may run on a runtime thread.

use std::sync::OnceLock;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The tokio runtime that serves every server of this process (created on first use).
pub fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let built = crate::shard::number_runtime_threads(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("lm-proxy-worker"),
    )
    .build()
    .map_err(|e| {
        pyo3::exceptions::PyRuntimeError::new_err(format!("cannot start the async runtime: {e}"))
    })?;
    // A concurrent first use may have won; its runtime is used and ours dropped.
    let _ = RUNTIME.set(built);
    Ok(RUNTIME.get().expect("the runtime was just set"))
}

/// Run `f` with the GIL from code that may be on a runtime worker (gateway building
/// on reload, the `gateway_built` hook). On a worker, `block_in_place` first hands
/// the worker's other tasks to another thread, so no worker ever sits waiting for
/// the GIL. Request-path calls never come here: they use `spawn_blocking` or the
/// asyncio loop (see `bridge`).
pub fn with_gil<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| Python::attach(f))
        }
        _ => Python::attach(f),
    }
}

/// The helper functions of `lm_proxy._bridge` and friends, looked up once.
pub struct Helpers {
    pub to_jsonable: Py<PyAny>,
    pub kind: Py<PyAny>,
    pub call: Py<PyAny>,
    pub spawn: Py<PyAny>,
    pub set_future: Py<PyAny>,
    pub abandon: Py<PyAny>,
    pub close_iterator: Py<PyAny>,
    pub classify: Py<PyAny>,
    pub resolve: Py<PyAny>,
    pub done: Py<PyAny>,
    pub start_loop: Py<PyAny>,
    pub stop_loop: Py<PyAny>,
    pub format_exception: Py<PyAny>,
    pub handler_context: Py<PyAny>,
    pub handler_changes: Py<PyAny>,
    pub log_context: Py<PyAny>,
    pub log_entry: Py<PyAny>,
    pub new_env: Py<PyAny>,
    pub publish_env: Py<PyAny>,
    pub load_python_config: Py<PyAny>,
    pub config_from_tree: Py<PyAny>,
    pub call_connection: Py<PyAny>,
    pub http_exception: Py<PyAny>,
    pub config_error: Py<PyAny>,
}

static HELPERS: PyOnceLock<Helpers> = PyOnceLock::new();

pub fn helpers(py: Python<'_>) -> PyResult<&Helpers> {
    HELPERS.get_or_try_init(py, || {
        let bridge = py.import("lm_proxy._bridge")?;
        let errors = py.import("lm_proxy.errors")?;
        let get = |name: &str| -> PyResult<Py<PyAny>> { Ok(bridge.getattr(name)?.unbind()) };
        Ok(Helpers {
            to_jsonable: get("to_jsonable")?,
            kind: get("kind")?,
            call: get("call")?,
            spawn: get("spawn")?,
            set_future: get("set_future")?,
            abandon: get("abandon")?,
            close_iterator: get("close_iterator")?,
            classify: get("classify")?,
            resolve: get("resolve")?,
            done: get("DONE")?,
            start_loop: get("start_loop")?,
            stop_loop: get("stop_loop")?,
            format_exception: get("format_exception")?,
            handler_context: get("handler_context")?,
            handler_changes: get("handler_changes")?,
            log_context: get("log_context")?,
            log_entry: get("log_entry")?,
            new_env: get("new_env")?,
            publish_env: get("publish_env")?,
            load_python_config: get("load_python_config")?,
            config_from_tree: get("config_from_tree")?,
            call_connection: get("call_connection")?,
            http_exception: errors.getattr("OpenAIHTTPException")?.unbind(),
            config_error: errors.getattr("ConfigError")?.unbind(),
        })
    })
}
