//! The PyO3 module `lm_proxy._lm_proxy`: the only place that imports pyo3.
//!
//! For now it exposes the version and the command line, so that the wheel's
//! `lm-proxy-server` and `python -m lm_proxy` run the same Rust server as the native
//! binary. Python extensions (validators, handlers, loggers, connections) come with
//! the bridge described in ARCHITECTURE.md.

use pyo3::prelude::*;

use crate::extensions::NativeResolver;

/// Run the server's command line with `argv` (program name first). Blocks until the
/// server stops; the GIL is released meanwhile. Returns the exit code.
#[pyfunction]
fn run_cli(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.detach(|| {
        let code = crate::cli::run(argv, std::sync::Arc::new(NativeResolver));
        if code == std::process::ExitCode::SUCCESS {
            0
        } else {
            1
        }
    })
}

#[pymodule]
fn _lm_proxy(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(run_cli, m)?)?;
    Ok(())
}
