//! How Rust calls Python code without ever blocking a tokio worker on the GIL.
//!
//! - Sync callables run on caller threads that keep their Python thread state
//!   (`callers.rs`).
//! - Async callables, async generators and other awaitables run on ONE asyncio event
//!   loop owned by the bridge: a Python thread running `loop.run_forever()`. Rust
//!   hands it work through a job queue and a socket pair: pushing a job and writing
//!   one wake-up byte needs no GIL, and the loop (which holds the GIL while it runs
//!   Python code anyway) drains the queue from an `add_reader` callback. Each job
//!   starts an asyncio task whose done-callback converts the result under the GIL and
//!   sends plain Rust data back through a oneshot channel, which the Rust side awaits
//!   without the GIL. Dropping that future (client gone, shutdown) cancels the task.
//! - Rust futures awaited by Python (`env.connections[...]`) resolve an asyncio future
//!   on the caller's loop: via the job queue when that loop is the bridge's, else via
//!   `call_soon_threadsafe` from the blocking pool.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};
use tokio::sync::oneshot;

use super::runtime::{helpers, runtime};

/// Work for the loop thread; runs with the GIL, on the loop thread.
pub type Job = Box<dyn for<'py> FnOnce(Python<'py>) + Send>;

/// The bridge could not run the call (it is shutting down).
#[derive(Debug)]
pub struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the Python event loop of lm-proxy has stopped")
    }
}

struct JobQueue {
    jobs: Mutex<VecDeque<Job>>,
    wake_pending: AtomicBool,
    waker: UnixStream,
    stopped: AtomicBool,
}

impl JobQueue {
    fn push(&self, job: Job) -> bool {
        if self.stopped.load(Ordering::Acquire) {
            return false;
        }
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(job);
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            // A full socket buffer means a wake-up is already pending: nothing to do.
            let _ = (&self.waker).write(&[1]);
        }
        true
    }

    fn pop(&self) -> Option<Job> {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }
}

/// The `add_reader` callback on the loop: runs every queued job.
#[pyclass(module = "lm_proxy._lm_proxy")]
struct Drain {
    queue: Arc<JobQueue>,
    reader: UnixStream,
}

#[pymethods]
impl Drain {
    fn __call__(&self, py: Python<'_>) {
        let mut buf = [0u8; 256];
        loop {
            match (&self.reader).read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        // Cleared before popping: a job pushed after the last pop writes a new byte.
        self.queue.wake_pending.store(false, Ordering::Release);
        while let Some(job) = self.queue.pop() {
            if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(py))) {
                tracing::error!("python bridge job panicked: {panic:?}");
            }
        }
    }
}

/// What runs once an asyncio task is done (with the GIL, on the loop thread).
type OnDone = Box<dyn for<'py> FnOnce(Python<'py>, &Bound<'py, PyAny>) + Send>;

/// Calls a Rust closure once with the finished asyncio task.
#[pyclass(module = "lm_proxy._lm_proxy")]
struct DoneCallback {
    f: Mutex<Option<OnDone>>,
}

#[pymethods]
impl DoneCallback {
    fn __call__(&self, py: Python<'_>, task: &Bound<'_, PyAny>) {
        let f = self.f.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(f) = f {
            f(py, task);
        }
    }
}

/// Aborts a tokio task when the asyncio future awaiting it is cancelled.
#[pyclass(module = "lm_proxy._lm_proxy")]
struct AbortOnCancel {
    handle: tokio::task::AbortHandle,
}

#[pymethods]
impl AbortOnCancel {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future.call_method0("cancelled")?.is_truthy()? {
            self.handle.abort();
        }
        Ok(())
    }
}

/// The one asyncio loop of the process and its job queue.
pub struct Bridge {
    queue: Arc<JobQueue>,
    event_loop: Arc<Py<PyAny>>,
    thread: Py<PyAny>,
}

static BRIDGE: PyOnceLock<Arc<Bridge>> = PyOnceLock::new();

/// A Python object shared by Rust closures that may outlive the GIL scope they were
/// made in (a `Py` clone needs the GIL; an `Arc` clone does not).
pub type Shared = Arc<Py<PyAny>>;

impl Bridge {
    /// The bridge, started on first use.
    pub fn get(py: Python<'_>) -> PyResult<Arc<Bridge>> {
        BRIDGE
            .get_or_try_init(py, || Bridge::start(py).map(Arc::new))
            .cloned()
    }

    /// The bridge if it was ever started.
    pub fn started(py: Python<'_>) -> Option<Arc<Bridge>> {
        BRIDGE.get(py).cloned()
    }

    fn start(py: Python<'_>) -> PyResult<Bridge> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        let fd = reader.as_raw_fd();
        let queue = Arc::new(JobQueue {
            jobs: Mutex::new(VecDeque::new()),
            wake_pending: AtomicBool::new(false),
            waker: writer,
            stopped: AtomicBool::new(false),
        });
        let drain = Drain {
            queue: queue.clone(),
            reader,
        };
        let started = helpers(py)?
            .start_loop
            .bind(py)
            .call1((fd, Py::new(py, drain)?))?;
        let (event_loop, thread): (Bound<'_, PyAny>, Bound<'_, PyAny>) = started.extract()?;
        Ok(Bridge {
            queue,
            event_loop: Arc::new(event_loop.unbind()),
            thread: thread.unbind(),
        })
    }

    /// Stop the loop (at interpreter exit): queued and later jobs are dropped, which
    /// fails the Rust futures waiting on them with [`Stopped`].
    pub fn stop(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        if self.queue.stopped.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        while self.queue.pop().is_some() {}
        helpers(py)?.stop_loop.bind(py).call1((
            self.event_loop.bind(py),
            self.thread.bind(py),
            timeout,
        ))?;
        Ok(())
    }

    pub fn event_loop(&self) -> &Shared {
        &self.event_loop
    }

    pub fn is_loop(&self, object: &Py<PyAny>) -> bool {
        object.as_ptr() == self.event_loop.as_ptr()
    }

    /// Queue work for the loop thread. False when the bridge has stopped.
    pub fn submit(&self, job: Job) -> bool {
        self.queue.push(job)
    }

    /// Run an awaitable on the loop and wait for it without the GIL.
    ///
    /// `start` makes the awaitable (on the loop thread); `finish` turns the outcome
    /// into Rust data (on the loop thread, with the GIL). `slot` receives the asyncio
    /// task while it runs; with `cancel_on_drop`, dropping the returned future before
    /// it completes cancels that task.
    pub async fn run<T, S, F>(
        self: &Arc<Self>,
        env: &Shared,
        start: S,
        finish: F,
        slot: TaskSlot,
        cancel_on_drop: bool,
    ) -> Result<T, Stopped>
    where
        T: Send + 'static,
        S: for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyAny>> + Send + 'static,
        F: for<'py> FnOnce(Python<'py>, PyResult<Bound<'py, PyAny>>) -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<T>();
        let event_loop = self.event_loop.clone();
        let env = env.clone();
        let job_slot = slot.clone();
        let job: Job = Box::new(move |py| {
            let finish_and_send = move |py: Python<'_>, outcome: PyResult<Bound<'_, PyAny>>| {
                let _ = tx.send(finish(py, outcome));
            };
            let spawned = start(py).and_then(|awaitable| {
                helpers(py)?
                    .spawn
                    .bind(py)
                    .call1((event_loop.bind(py), env.bind(py), awaitable))
            });
            let task = match spawned {
                Ok(task) => task,
                Err(e) => return finish_and_send(py, Err(e)),
            };
            job_slot.set(Some(task.clone().unbind()));
            let done_slot = job_slot.clone();
            let callback = DoneCallback {
                f: Mutex::new(Some(Box::new(move |py, task| {
                    done_slot.set(None);
                    finish_and_send(py, task.call_method0("result"));
                }))),
            };
            let added = Py::new(py, callback)
                .and_then(|cb| task.call_method1("add_done_callback", (cb,)).map(|_| ()));
            if let Err(e) = added {
                tracing::error!("python bridge: cannot watch a task: {e}");
            }
        });
        let mut guard = CancelGuard {
            bridge: self.clone(),
            slot,
            armed: cancel_on_drop,
        };
        if !self.submit(job) {
            guard.armed = false;
            return Err(Stopped);
        }
        let result = rx.await.map_err(|_| Stopped);
        guard.armed = false;
        result
    }

    /// Cancel the task in `slot`, if any (from any thread, without the GIL).
    pub fn cancel(self: &Arc<Self>, slot: &TaskSlot) {
        let slot = slot.clone();
        self.submit(Box::new(move |py| {
            if let Some(task) = slot.take() {
                let _ = task.bind(py).call_method0("cancel");
            }
        }));
    }

    /// Resolve the asyncio future `future` of `event_loop` with what `make` returns.
    fn deliver(
        self: &Arc<Self>,
        event_loop: Shared,
        future: Shared,
        make: impl for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyAny>> + Send + 'static,
    ) {
        let on_bridge_loop = self.is_loop(&event_loop);
        let settle = move |py: Python<'_>, on_loop: bool| -> PyResult<()> {
            let helpers = helpers(py)?;
            let (ok, value) = match make(py) {
                Ok(value) => (true, value),
                Err(e) => (false, e.into_value(py).into_bound(py).into_any()),
            };
            if on_loop {
                helpers
                    .set_future
                    .bind(py)
                    .call1((future.bind(py), ok, value))?;
            } else {
                event_loop.bind(py).call_method1(
                    "call_soon_threadsafe",
                    (helpers.set_future.bind(py), future.bind(py), ok, value),
                )?;
            }
            Ok(())
        };
        if on_bridge_loop {
            self.submit(Box::new(move |py| {
                if let Err(e) = settle(py, true) {
                    tracing::error!("python bridge: cannot resolve a future: {e}");
                }
            }));
        } else {
            // Another thread's loop (library use): hand over from the blocking pool.
            tokio::task::spawn_blocking(move || {
                Python::attach(|py| {
                    if let Err(e) = settle(py, false) {
                        tracing::debug!("python bridge: cannot resolve a future: {e}");
                    }
                })
            });
        }
    }

    /// An asyncio future on the running loop that resolves with the output of the
    /// Rust future `work` (run on the runtime) as converted by `convert`. Cancelling
    /// the asyncio future aborts the Rust work.
    pub fn future_from_rust<'py, T, W, C>(
        self: &Arc<Self>,
        py: Python<'py>,
        work: W,
        convert: C,
    ) -> PyResult<Bound<'py, PyAny>>
    where
        T: Send + 'static,
        W: std::future::Future<Output = T> + Send + 'static,
        C: for<'a> FnOnce(Python<'a>, T) -> PyResult<Bound<'a, PyAny>> + Send + 'static,
    {
        let asyncio = py.import("asyncio")?;
        let event_loop = asyncio.call_method0("get_running_loop")?;
        let future = event_loop.call_method0("create_future")?;
        let shared_loop: Shared = Arc::new(event_loop.unbind());
        let shared_future: Shared = Arc::new(future.clone().unbind());
        let bridge = self.clone();
        let task = runtime()?.spawn(async move {
            let output = work.await;
            bridge.deliver(shared_loop, shared_future, move |py| convert(py, output));
        });
        future.call_method1(
            "add_done_callback",
            (Py::new(
                py,
                AbortOnCancel {
                    handle: task.abort_handle(),
                },
            )?,),
        )?;
        Ok(future)
    }
}

/// Where a running asyncio task is kept so that it can be cancelled.
#[derive(Clone, Default)]
pub struct TaskSlot(Arc<Mutex<Option<Py<PyAny>>>>);

impl TaskSlot {
    fn set(&self, task: Option<Py<PyAny>>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = task;
    }

    pub fn take(&self) -> Option<Py<PyAny>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

struct CancelGuard {
    bridge: Arc<Bridge>,
    slot: TaskSlot,
    armed: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            self.bridge.cancel(&self.slot);
        }
    }
}

/// Run a sync Python call on a caller thread ([`super::callers`]) and wait for it
/// without blocking a worker. `None` when the call could not run to the end (a
/// panic, or no thread to run it).
pub async fn blocking<T: Send + 'static>(
    f: impl for<'py> FnOnce(Python<'py>) -> T + Send + 'static,
) -> Option<T> {
    let (done, result) = oneshot::channel();
    super::callers::submit(Box::new(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Python::attach(f)));
        let _ = done.send(outcome.ok());
    }));
    result.await.ok().flatten()
}

/// Call `func(*args, **kwargs)` with the lm-proxy environment `env` current.
pub fn call_in_env<'py>(
    py: Python<'py>,
    env: &Shared,
    func: &Shared,
    args: Bound<'py, PyTuple>,
    kwargs: Option<Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let kwargs = kwargs.unwrap_or_else(|| PyDict::new(py));
    helpers(py)?
        .call
        .bind(py)
        .call1((env.bind(py), func.bind(py), args, kwargs))
}
