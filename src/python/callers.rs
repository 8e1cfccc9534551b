//! The threads that run sync Python callables (validators, handlers, loggers) for
//! the request path.
//!
//! Why not tokio's blocking pool, which ran them before: a blocking-pool thread has
//! no Python thread state between calls, so every call created one and destroyed it
//! again (`PyGILState_Ensure`/`Release`: an allocation, an `mmap` and a `munmap`,
//! whose TLB flush interrupts the other CPUs), and under load the pool grew to
//! dozens of threads queueing for the GIL (strace: about 68 futex calls per request
//! with a Python validator and a Python handler). A caller thread here attaches to
//! Python once and keeps its thread state while it lives; a call only takes the GIL
//! and gives it back.
//!
//! Threads are started on demand, one for each call that finds every thread busy,
//! so calls that wait on I/O or sleep (and so release the GIL) still run side by
//! side, up to [`MAX_CALLERS`]; beyond that calls wait their turn. A thread ends
//! after [`IDLE_TIMEOUT`] without work.
//!
//! At interpreter exit [`drain`] refuses new calls and waits for the running ones:
//! a call still running Python when the interpreter finalizes aborts the process
//! (its thread state is gone when the call gives the GIL back).

use std::collections::VecDeque;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

/// A call, with its result channel; it must not unwind (callers catch panics).
pub type Job = Box<dyn FnOnce() + Send>;

/// Most caller threads at once. Only one of them runs Python at a time (the GIL);
/// more help only calls that wait on I/O, and each one more adds contention for
/// the GIL: with a Python validator and handler at concurrency 64, 8 or 16 threads
/// served 14–15.8k req/s, 64 threads 11.8k (tokio's blocking pool, up to 512
/// threads and a thread state per call, 3.7–5k).
const MAX_CALLERS: usize = 16;
/// How long a caller thread waits for work before it ends.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct State {
    /// Threads waiting for work, most recently idle last, with their job channel.
    idle: Vec<(u64, mpsc::Sender<Job>)>,
    threads: usize,
    /// Calls waiting for a thread (all [`MAX_CALLERS`] busy).
    backlog: VecDeque<Job>,
    next_id: u64,
    /// Calls running now.
    running: usize,
    /// The interpreter is exiting ([`drain`]): new calls are refused.
    closing: bool,
}

fn state() -> &'static (Mutex<State>, Condvar) {
    static STATE: OnceLock<(Mutex<State>, Condvar)> = OnceLock::new();
    STATE.get_or_init(Default::default)
}

fn lock_state() -> MutexGuard<'static, State> {
    state()
        .0
        .lock()
        // Nothing here panics while holding the lock; a poisoned lock is usable.
        .unwrap_or_else(|e| e.into_inner())
}

/// Refuse new calls and wait up to `timeout` for the running ones and those waiting
/// for a thread to end; `true` when none is left. Called with the GIL released
/// (the calls need it to finish).
pub fn drain(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let (_, ended) = state();
    let mut state = lock_state();
    state.closing = true;
    while state.running > 0 || !state.backlog.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        state = ended
            .wait_timeout(state, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    true
}

/// Run `job` on a caller thread. A job that cannot be started (no thread could be
/// created) is dropped, which its caller sees as a failed call.
pub fn submit(job: Job) {
    let mut state = lock_state();
    if state.closing {
        // Dropping the job fails the call: the interpreter is going away.
        return;
    }
    if let Some((_, thread)) = state.idle.pop() {
        // Counted from here, so that `drain` never misses a call on its way.
        state.running += 1;
        drop(state);
        // A thread taken off the idle list always receives (see `serve`).
        let _ = thread.send(job);
        return;
    }
    if state.threads >= MAX_CALLERS {
        state.backlog.push_back(job);
        return;
    }
    state.threads += 1;
    state.running += 1;
    let id = state.next_id;
    state.next_id += 1;
    drop(state);
    let started = std::thread::Builder::new()
        .name("lm-proxy-python".into())
        .spawn(move || Python::attach(|py| py.detach(move || serve(id, job))));
    if let Err(err) = started {
        let mut state = lock_state();
        state.threads -= 1;
        state.running -= 1;
        drop(state);
        state_changed();
        tracing::error!("cannot start a thread for Python calls: {err}");
    }
}

/// Wake [`drain`] to look again.
fn state_changed() {
    state().1.notify_all();
}

/// A caller thread's life, attached to Python (thread state kept) but without the
/// GIL, which each job takes for itself.
fn serve(id: u64, first: Job) {
    let (sender, jobs) = mpsc::channel::<Job>();
    let mut job = first;
    loop {
        job();
        let mut state = lock_state();
        if let Some(next) = state.backlog.pop_front() {
            job = next;
            continue;
        }
        // A thread taking the next job from the backlog stays counted as running.
        state.running -= 1;
        if state.closing {
            state_changed();
        }
        state.idle.push((id, sender.clone()));
        drop(state);
        job = match jobs.recv_timeout(IDLE_TIMEOUT) {
            Ok(next) => next,
            // `sender` is held here, so the channel cannot disconnect.
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                let mut state = lock_state();
                if let Some(at) = state.idle.iter().position(|(idle, _)| *idle == id) {
                    state.idle.remove(at);
                    state.threads -= 1;
                    return;
                }
                drop(state);
                // Taken off the idle list while timing out: its job is on the way.
                match jobs.recv() {
                    Ok(next) => next,
                    Err(_) => return,
                }
            }
        };
    }
}
