//! Calling one user callable from the request path: sync ones on a caller thread,
//! async ones (and awaitables a sync one returns) on the bridge's event loop, always
//! with the server's `lm_proxy.bootstrap.env` current.

use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tokio::sync::watch;

use super::bridge::{blocking, call_in_env, Bridge, Shared, Stopped, TaskSlot};

/// How a callable is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A plain function or object: called on a caller thread; an awaitable it
    /// returns is awaited on the loop.
    Sync,
    /// `async def` or an async generator function: called on the loop.
    Async,
}

/// What every adapter of one server shares: the bridge, the server's `env`, and the
/// shutdown deadline for open Python streams.
pub struct Scope {
    pub bridge: Arc<Bridge>,
    pub env: Shared,
    pub shutdown: watch::Receiver<Option<tokio::time::Instant>>,
}

/// A resolved user callable.
pub struct Callable {
    pub func: Shared,
    pub kind: Kind,
    /// Names it in logs and error details (`before[0] my_module.audit`).
    pub label: String,
}

/// Positional and keyword arguments plus state handed from `args` to `finish`.
pub type Args<'py, St> = (Bound<'py, PyTuple>, Option<Bound<'py, PyDict>>, St);

enum Step<T, St, F> {
    Done(T),
    Await(Py<PyAny>, St, F),
}

impl Scope {
    /// Call `callable` with the arguments `args` builds, and turn the outcome into
    /// Rust data with `finish` (both run with the GIL, off the runtime's workers).
    /// `finish` gets the state `args` returned (`None` if `args` itself failed).
    pub async fn call<St, T, A, F>(
        &self,
        callable: &Callable,
        args: A,
        finish: F,
    ) -> Result<T, Stopped>
    where
        St: Send + 'static,
        T: Send + 'static,
        A: for<'py> FnOnce(Python<'py>) -> PyResult<Args<'py, St>> + Send + 'static,
        F: for<'py> FnOnce(Python<'py>, Option<St>, PyResult<Bound<'py, PyAny>>) -> T
            + Send
            + 'static,
    {
        let env = self.env.clone();
        let func = callable.func.clone();
        match callable.kind {
            Kind::Sync => {
                let step = blocking(move |py| match args(py) {
                    Err(e) => Step::Done(finish(py, None, Err(e))),
                    Ok((a, kw, state)) => match call_in_env(py, &env, &func, a, kw) {
                        Ok(value) if value.hasattr("__await__").unwrap_or(false) => {
                            Step::Await(value.unbind(), state, finish)
                        }
                        other => Step::Done(finish(py, Some(state), other)),
                    },
                })
                .await
                .ok_or(Stopped)?;
                match step {
                    Step::Done(t) => Ok(t),
                    Step::Await(awaitable, state, finish) => {
                        self.bridge
                            .run(
                                &self.env,
                                move |py| Ok(awaitable.into_bound(py)),
                                move |py, outcome| finish(py, Some(state), outcome),
                                TaskSlot::default(),
                                true,
                            )
                            .await
                    }
                }
            }
            Kind::Async => {
                let state: Arc<Mutex<Option<St>>> = Arc::new(Mutex::new(None));
                let state_in = state.clone();
                let call_env = env.clone();
                self.bridge
                    .run(
                        &self.env,
                        move |py| {
                            let (a, kw, st) = args(py)?;
                            *state_in.lock().unwrap_or_else(|e| e.into_inner()) = Some(st);
                            call_in_env(py, &call_env, &func, a, kw)
                        },
                        move |py, outcome| {
                            let st = state.lock().unwrap_or_else(|e| e.into_inner()).take();
                            finish(py, st, outcome)
                        },
                        TaskSlot::default(),
                        true,
                    )
                    .await
            }
        }
    }
}
