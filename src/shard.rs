//! Per-thread shards of what every request writes.
//!
//! A serving thread (`server::Serving::ThreadPerCore`) handles its connections from
//! accept to close on its own runtime; what a request writes to memory that other
//! serving threads write too (a shared counter, a lock word, a reference count)
//! makes that memory's cache line travel between cores on every request, and
//! queues the cores on it as their number grows. So state that every request
//! updates (idle upstream connections, metrics, the request log's batch) is kept
//! in one shard per serving thread, each on cache lines of its own, and is put
//! together only where it is read (a scrape, a flush).
//!
//! Serving threads take shards 1 to N ([`set_serving_thread`]); so do the threads of
//! a shared multi-threaded runtime ([`number_runtime_threads`]: the Python package's
//! and `--threads 0`), whose tasks move between threads, so a request may write
//! two shards in turn; every other thread (Python's, tests) shares shard 0. A
//! shard's contents must therefore be safe to use from several threads: atomics or
//! a lock, uncontended in the thread-per-core case.

use std::cell::Cell;
use std::sync::{Mutex, MutexGuard, OnceLock};

use crossbeam_utils::CachePadded;

thread_local! {
    /// This thread's shard (see [`set_thread_shard`]).
    static SHARD: Cell<usize> = const { Cell::new(0) };
    /// Whether this thread runs a runtime of its own (a serving thread).
    static OWN_RUNTIME: Cell<bool> = const { Cell::new(false) };
}

/// Shards per [`Sharded`]: one for each serving thread a machine is likely to run
/// (its CPUs, at most 63), and shard 0 for every other thread.
pub fn shard_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(63)
            + 1
    })
}

/// Make this thread use shard `index` of every [`Sharded`] (a serving thread calls
/// this with its number, from 1; more serving threads than shards share them).
pub fn set_thread_shard(index: usize) {
    SHARD.with(|shard| shard.set(index));
}

/// This thread's shard number (0 unless [`set_thread_shard`] was called).
pub fn thread_shard() -> usize {
    SHARD.with(Cell::get)
}

/// Mark this thread as one that runs a runtime of its own (a serving thread of
/// `server::Serving::ThreadPerCore`), using shard `index`: what belongs to its
/// runtime, such as sockets registered with its I/O driver, is kept in its shard
/// ([`Sharded::local_to_runtime`]).
pub fn set_serving_thread(index: usize) {
    set_thread_shard(index);
    OWN_RUNTIME.with(|own| own.set(true));
}

/// Give each thread of a multi-threaded runtime a shard of its own (1, 2, ...,
/// wrapping around), as it starts.
pub fn number_runtime_threads(
    builder: &mut tokio::runtime::Builder,
) -> &mut tokio::runtime::Builder {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    builder.on_thread_start(|| {
        let next = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        set_thread_shard(1 + next % (shard_count() - 1).max(1));
    })
}

/// Lock a shard's mutex (or any whose holders leave nothing half-updated that
/// matters): a poisoned lock is used as it is.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One `T` per shard, each on its own cache lines.
pub struct Sharded<T> {
    shards: Box<[CachePadded<T>]>,
}

impl<T> Sharded<T> {
    /// [`shard_count`] shards, each made by `make`.
    pub fn new(make: impl FnMut() -> T) -> Self {
        Self::with_count(shard_count(), make)
    }

    /// At most `most` shards (and at least two), each made by `make`: for
    /// what there are many of, such as the series of a metric, where a shard for
    /// each of 64 cores would cost more memory than the writes it keeps apart.
    /// Serving threads past the count share shards.
    pub fn at_most(most: usize, make: impl FnMut() -> T) -> Self {
        Self::with_count(shard_count().min(most.max(2)), make)
    }

    fn with_count(count: usize, mut make: impl FnMut() -> T) -> Self {
        Sharded {
            shards: (0..count.max(1))
                .map(|_| CachePadded::new(make()))
                .collect(),
        }
    }

    /// The calling thread's shard.
    pub fn local(&self) -> &T {
        let (index, count) = (thread_shard(), self.shards.len());
        // No division in the usual case (one is some 30 cycles, and a request
        // takes a dozen shards).
        &self.shards[if index < count { index } else { index % count }]
    }

    /// The shard of this thread's runtime: the thread's own on a serving thread,
    /// shard 0 on any other (the threads of a shared runtime share its I/O driver,
    /// and what is registered with it, such as an idle connection, serves all of
    /// them best from one place).
    pub fn local_to_runtime(&self) -> &T {
        if OWN_RUNTIME.with(Cell::get) {
            self.local()
        } else {
            &self.shards[0]
        }
    }

    /// Every shard, to read them together.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.shards.iter().map(|shard| &**shard)
    }
}

impl<T: Default> Default for Sharded<T> {
    fn default() -> Self {
        Sharded::new(T::default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn each_thread_writes_its_own_shard_and_shards_do_not_share_cache_lines() {
        let sharded = Sharded::<AtomicUsize>::with_count(4, AtomicUsize::default);
        std::thread::scope(|scope| {
            for index in 0..6 {
                let sharded = &sharded;
                scope.spawn(move || {
                    set_thread_shard(index);
                    sharded.local().fetch_add(index + 1, Ordering::Relaxed);
                });
            }
        });
        // Threads 4 and 5 wrap around onto shards 0 and 1.
        let values: Vec<usize> = sharded.iter().map(|s| s.load(Ordering::Relaxed)).collect();
        assert_eq!(values, [1 + 5, 2 + 6, 3, 4]);
        // A thread that never chose a shard uses shard 0.
        assert_eq!(std::thread::spawn(thread_shard).join().unwrap(), 0);
        // What belongs to a runtime is kept in the thread's shard only on a thread
        // with a runtime of its own.
        let (on_worker, on_serving) = std::thread::scope(|scope| {
            let worker = scope.spawn(|| {
                set_thread_shard(2);
                sharded.local_to_runtime() as *const _ as usize
            });
            let serving = scope.spawn(|| {
                set_serving_thread(2);
                sharded.local_to_runtime() as *const _ as usize
            });
            (worker.join().unwrap(), serving.join().unwrap())
        });
        let at = |i: usize| sharded.iter().nth(i).unwrap() as *const _ as usize;
        assert_eq!((on_worker, on_serving), (at(0), at(2)));
        let fewer = Sharded::<AtomicUsize>::at_most(2, AtomicUsize::default);
        assert_eq!(fewer.iter().count(), shard_count().min(2));
        let addresses: Vec<usize> = sharded.iter().map(|s| s as *const _ as usize).collect();
        for pair in addresses.windows(2) {
            assert!(pair[1] - pair[0] >= 64, "{addresses:?}");
        }
    }

    /// The threads of a shared runtime get shards of their own, not shard 0.
    #[test]
    fn a_shared_runtimes_threads_are_numbered() {
        let runtime =
            number_runtime_threads(tokio::runtime::Builder::new_multi_thread().worker_threads(2))
                .build()
                .unwrap();
        let shards: Vec<usize> = runtime.block_on(async {
            let tasks: Vec<_> = (0..4)
                .map(|_| tokio::spawn(async { thread_shard() }))
                .collect();
            let mut shards = Vec::new();
            for task in tasks {
                shards.push(task.await.unwrap());
            }
            shards
        });
        assert!(
            shards.iter().all(|&s| (1..shard_count()).contains(&s)),
            "{shards:?}"
        );
    }
}
