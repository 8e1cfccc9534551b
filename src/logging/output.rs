//! Where the `tracing` lines go: stderr, with the per-request lines batched.
//!
//! Every finished request emits one line (target [`REQUEST_TARGET`], see
//! [`super::request_line`]). Written one by one, that is one `write(2)` per request
//! on the request's path (a few percent of the CPU at high load, several µs of latency
//! at concurrency 1). A writer thread fed line by line (tracing-appender) costs a
//! futex wake per line instead, which is no better. So [`LogOutput`], the
//! `MakeWriter` of the fmt layer, does this:
//!
//! - request lines are appended to an in-memory batch, under a mutex, and nothing
//!   else happens on the request's path; the batch is written (one `write`) by the
//!   request whose line would take it past [`BATCH_LIMIT`], or else by a background
//!   thread [`FLUSH_PERIOD`] after the first line of the batch arrived. That thread
//!   sleeps (parked, no timer) while there is nothing to write, and is woken once per
//!   batch, not per line (the wake-up is an atomic store unless it is parked);
//! - each serving thread has its own batch ([`crate::shard`]), so that requests on
//!   different cores do not take turns at one lock: lines of one thread keep their
//!   order, lines of different threads may come out up to [`FLUSH_PERIOD`] apart
//!   from the order of their times (as with nginx's buffered access logs);
//! - every other line (startup, "listening on", warnings, errors, debug output) is
//!   written at once, as before, after whatever request lines are waiting: the output
//!   keeps the order in which lines were logged, and only request lines can be late.
//!
//! Lines are never split: the fmt layer hands each event over in one `write_all` of
//! the whole formatted line, and a batch is written only between lines. A batch is at
//! most [`BATCH_LIMIT`] = `PIPE_BUF` (4 KiB) bytes, unless one line alone is longer:
//! on a pipe (docker, a shell) such a write is atomic, so other writers of the same
//! stderr (Python code in the package, `eprintln!`) can never land inside one. When
//! stderr is a regular file, where every `write` is atomic whatever its size, a batch
//! takes up to [`FILE_BATCH_LIMIT`] (64 KiB): a `write` per some 300 request lines
//! instead of a dozen (at 40,000 requests a second on a core, 130 writes a second
//! instead of 3,000, each a few µs of the serving thread's time).
//! Writes happen under one lock of the sink, each batch exactly once.
//!
//! Request lines may therefore appear up to [`FLUSH_PERIOD`] late. Clean exits write
//! what is waiting ([`flush_request_log`]: the binary's exit paths, a Python server's
//! stop, the Python package at interpreter exit, and a panic hook); a process killed
//! outright (SIGKILL, OOM killer) loses the request lines of its last
//! [`FLUSH_PERIOD`] at most. The configured JSON loggers (`BaseLogger`,
//! `JsonLogWriter`) do not go through here and are unaffected.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};

// A panic while writing leaves nothing half-done that matters here.
use crate::shard::{lock, Sharded};
use std::thread::Thread;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// The target of the per-request line, the only one that is batched.
pub const REQUEST_TARGET: &str = "lm_proxy::request";

/// How long a request line may wait in the batch before the background thread
/// writes it.
pub const FLUSH_PERIOD: Duration = Duration::from_millis(100);

/// The largest batch written at once: `PIPE_BUF` on Linux, so that a batch written
/// to a pipe is never interleaved with another writer's output. About a dozen
/// request lines; a line that is longer on its own is written alone.
pub const BATCH_LIMIT: usize = 4096;

/// The largest batch written at once when stderr is a regular file (`2>>file`), where
/// no writer's output can land inside another's `write` (the kernel writes each one
/// whole at the file's end or position).
pub const FILE_BATCH_LIMIT: usize = 64 * 1024;

/// A `tracing_subscriber::fmt::MakeWriter`: request lines into the batch, other
/// lines straight to `S` (stderr in the process; anything `Write` in tests).
/// Clones share the batch.
pub struct LogOutput<S: Write + Send + 'static = io::Stderr> {
    shared: Arc<Shared<S>>,
}

impl<S: Write + Send + 'static> Clone for LogOutput<S> {
    fn clone(&self) -> Self {
        LogOutput {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<S> {
    /// Whole request lines not written yet (at most `BATCH_LIMIT` bytes each), one
    /// batch per serving thread. A batch's lock is taken before the sink's.
    batches: Sharded<Mutex<Vec<u8>>>,
    sink: Mutex<S>,
    /// The background thread, woken when a batch starts (none: `flush` only).
    flusher: OnceLock<Thread>,
    /// [`BATCH_LIMIT`], or [`FILE_BATCH_LIMIT`] for a sink that is a regular file.
    batch_limit: usize,
}

/// Write `batch`, if anything is in it, and empty it. A failed write (stderr
/// closed) drops it, as a failed write of a single line drops that line.
fn write_batch<S: Write>(sink: &mut S, batch: &mut Vec<u8>) {
    if !batch.is_empty() {
        let _ = sink.write_all(batch);
        batch.clear();
    }
}

impl<S: Write + Send + 'static> LogOutput<S> {
    /// Lines go to `sink`; request lines wait for [`LogOutput::flush`] or a full batch
    /// until [`LogOutput::start_flusher`] is called.
    pub fn new(sink: S) -> Self {
        Self::with_batch_limit(sink, BATCH_LIMIT)
    }

    /// [`LogOutput::new`] with batches of up to `batch_limit` bytes (a line longer on
    /// its own is written alone).
    pub fn with_batch_limit(sink: S, batch_limit: usize) -> Self {
        LogOutput {
            shared: Arc::new(Shared {
                // A batch's memory is taken by its first line.
                batches: Sharded::default(),
                sink: Mutex::new(sink),
                flusher: OnceLock::new(),
                batch_limit,
            }),
        }
    }

    /// Start the background thread that writes a batch `period` after its first line
    /// (once; later calls do nothing). It holds the output for the process's lifetime.
    pub fn start_flusher(&self, period: Duration) -> io::Result<()> {
        if self.shared.flusher.get().is_some() {
            return Ok(());
        }
        let shared = self.shared.clone();
        let handle = std::thread::Builder::new()
            .name("lm-proxy-log".into())
            .spawn(move || loop {
                // Nothing to write: sleep until a request line starts a batch. (A
                // stale wake-up only makes this check again.)
                while shared.nothing_waits() {
                    std::thread::park();
                }
                // Let the batch fill for `period`, then write it.
                std::thread::sleep(period);
                shared.flush();
            })?;
        // Known from now on, so lines that start a batch wake it. One wake-up now for
        // a line that came before this, which the thread may have missed by parking
        // after checking.
        let _ = self.shared.flusher.set(handle.thread().clone());
        handle.thread().unpark();
        Ok(())
    }

    /// Add one whole request line (newline included) to the batch, as the fmt layer's
    /// writer does for an event of [`REQUEST_TARGET`] (`RequestSummary::log` writes
    /// its lines here directly). A failed write (stderr closed) drops it.
    pub fn add_request_line(&self, line: &[u8]) {
        let _ = self.shared.add_request_line(line);
    }

    /// Write the request lines that are waiting.
    pub fn flush(&self) {
        self.shared.flush();
    }

    /// As `flush`, but gives up on a batch or the sink instead of waiting if it is
    /// busy (for the panic hook: the panicking thread may be the one holding it).
    fn try_flush(&self) {
        fn try_lock<T>(mutex: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
            match mutex.try_lock() {
                Ok(guard) => Some(guard),
                Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            }
        }
        for batch in self.shared.batches.iter() {
            if let Some(mut batch) = try_lock(batch) {
                if let Some(mut sink) = try_lock(&self.shared.sink) {
                    write_batch(&mut *sink, &mut batch);
                }
            }
        }
    }
}

impl<S: Write> Shared<S> {
    /// Add one request line to this thread's batch (writing the batch first if the
    /// line does not fit in it).
    fn add_request_line(&self, line: &[u8]) -> io::Result<()> {
        let mut batch = lock(self.batches.local());
        if batch.len() + line.len() > self.batch_limit {
            let mut sink = lock(&self.sink);
            write_batch(&mut *sink, &mut batch);
            if line.len() >= self.batch_limit {
                // Too long for a batch: alone, at once.
                return sink.write_all(line);
            }
        }
        let starts_batch = batch.is_empty();
        if batch.capacity() == 0 {
            batch.reserve_exact(self.batch_limit);
        }
        batch.extend_from_slice(line);
        drop(batch);
        if starts_batch {
            if let Some(flusher) = self.flusher.get() {
                flusher.unpark();
            }
        }
        Ok(())
    }

    /// Write every thread's waiting request lines.
    fn flush(&self) {
        for batch in self.batches.iter() {
            let mut batch = lock(batch);
            if !batch.is_empty() {
                write_batch(&mut *lock(&self.sink), &mut batch);
            }
        }
    }

    /// Whether no request line waits (for the background thread).
    fn nothing_waits(&self) -> bool {
        self.batches.iter().all(|batch| lock(batch).is_empty())
    }

    /// Write any other line at once, after the request lines waiting.
    fn write_line(&self, line: &[u8]) -> io::Result<()> {
        self.flush();
        lock(&self.sink).write_all(line)
    }
}

/// The writer for one event (the fmt layer makes one per line): request lines into
/// the batch, others written at once.
pub struct LineWriter<'a, S> {
    shared: &'a Shared<S>,
    request: bool,
}

impl<S: Write> Write for LineWriter<'_, S> {
    // The fmt layer writes each formatted line with one `write_all`, so one `write`
    // call is one whole line; it is taken whole (or fails whole).
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        if self.request {
            self.shared.add_request_line(line)?;
        } else {
            self.shared.write_line(line)?;
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<S: Write + Send + 'static> LogOutput<S> {
    /// The writer for a line of `target`.
    fn writer_for_target(&self, target: &str) -> LineWriter<'_, S> {
        LineWriter {
            shared: &self.shared,
            request: target == REQUEST_TARGET,
        }
    }
}

impl<'a, S: Write + Send + 'static> MakeWriter<'a> for LogOutput<S> {
    type Writer = LineWriter<'a, S>;

    fn make_writer(&'a self) -> Self::Writer {
        self.writer_for_target("")
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        self.writer_for_target(meta.target())
    }
}

static STDERR: OnceLock<LogOutput> = OnceLock::new();

/// The process's log output on stderr, created on first use with its background
/// thread and a panic hook that writes the waiting request lines before the panic
/// message (the previous hook runs after it).
pub fn stderr_output() -> LogOutput {
    STDERR
        .get_or_init(|| {
            let limit = if stderr_is_a_regular_file() {
                FILE_BATCH_LIMIT
            } else {
                BATCH_LIMIT
            };
            let output = LogOutput::with_batch_limit(io::stderr(), limit);
            if let Err(e) = output.start_flusher(FLUSH_PERIOD) {
                // Still correct without it: batches are written when full and at exit.
                eprintln!("lm-proxy: cannot start the log thread: {e}");
            }
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if let Some(output) = STDERR.get() {
                    output.try_flush();
                }
                previous(info);
            }));
            output
        })
        .clone()
}

/// Whether the process's stderr is a regular file (not a pipe, socket or terminal).
fn stderr_is_a_regular_file() -> bool {
    use std::os::fd::AsFd;
    io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|file| file.metadata())
        .is_ok_and(|meta| meta.file_type().is_file())
}

/// Write the request lines waiting in the process's stderr output, if it was set up.
/// Called on every clean exit path (the binary's `run`, the Python server's stop, the
/// Python package at interpreter exit); cheap when there is nothing to write.
pub fn flush_request_log() {
    if let Some(output) = STDERR.get() {
        output.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A sink that keeps each `write` call apart, to see how output was written.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn writes(&self) -> Vec<String> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .map(|w| String::from_utf8(w.clone()).unwrap())
                .collect()
        }
    }

    /// Log one line the way the fmt layer does.
    fn log(output: &LogOutput<Sink>, target: &str, line: &str) {
        output
            .writer_for_target(target)
            .write_all(line.as_bytes())
            .unwrap();
    }

    const REQUEST: &str = REQUEST_TARGET;
    const OTHER: &str = "lm_proxy::cli";

    fn line(n: usize, len: usize) -> String {
        let head = format!("request {n} ");
        format!("{head}{}\n", "x".repeat(len - head.len() - 1))
    }

    #[test]
    fn request_lines_wait_for_flush_then_go_out_in_one_write() {
        let sink = Sink::default();
        let output = LogOutput::new(sink.clone());
        for n in 0..3 {
            log(&output, REQUEST, &line(n, 100));
        }
        assert!(sink.writes().is_empty(), "held: {:?}", sink.writes());
        output.flush();
        assert_eq!(
            sink.writes(),
            vec![line(0, 100) + &line(1, 100) + &line(2, 100)]
        );
        output.flush();
        assert_eq!(sink.writes().len(), 1, "nothing written twice");
    }

    #[test]
    fn a_larger_batch_limit_writes_fewer_larger_batches_of_whole_lines() {
        let sink = Sink::default();
        let output = LogOutput::with_batch_limit(sink.clone(), FILE_BATCH_LIMIT);
        let per_batch = FILE_BATCH_LIMIT / 300;
        let lines: Vec<String> = (0..per_batch * 2 + 1).map(|n| line(n, 300)).collect();
        for l in &lines {
            log(&output, REQUEST, l);
        }
        let writes = sink.writes();
        assert_eq!(writes.len(), 2, "two full batches written");
        for w in &writes {
            assert!(
                w.len() > BATCH_LIMIT && w.len() <= FILE_BATCH_LIMIT,
                "{}",
                w.len()
            );
            assert_eq!(w.len() % 300, 0, "whole lines only");
        }
        output.flush();
        assert_eq!(
            sink.writes().concat(),
            lines.concat(),
            "all, in order, once"
        );
    }

    #[test]
    fn a_full_batch_is_written_in_whole_lines_by_the_line_that_overflows_it() {
        let sink = Sink::default();
        let output = LogOutput::new(sink.clone());
        let per_batch = BATCH_LIMIT / 300;
        let lines: Vec<String> = (0..per_batch * 3 + 1).map(|n| line(n, 300)).collect();
        for l in &lines {
            log(&output, REQUEST, l);
        }
        let writes = sink.writes();
        assert_eq!(writes.len(), 3, "three full batches written");
        for w in &writes {
            assert!(w.len() <= BATCH_LIMIT, "{}", w.len());
            assert_eq!(w.len() % 300, 0, "whole lines only");
            assert!(w.ends_with('\n'));
        }
        output.flush();
        assert_eq!(
            sink.writes().concat(),
            lines.concat(),
            "all, in order, once"
        );
    }

    #[test]
    fn a_line_longer_than_a_batch_is_written_alone_after_the_batch() {
        let sink = Sink::default();
        let output = LogOutput::new(sink.clone());
        log(&output, REQUEST, &line(0, 100));
        let long = line(1, BATCH_LIMIT * 2);
        log(&output, REQUEST, &long);
        assert_eq!(sink.writes(), vec![line(0, 100), long]);
    }

    #[test]
    fn other_lines_go_straight_through_after_waiting_request_lines() {
        let sink = Sink::default();
        let output = LogOutput::new(sink.clone());
        log(&output, OTHER, "listening on http://x\n");
        assert_eq!(sink.writes(), vec!["listening on http://x\n"]);
        log(&output, REQUEST, &line(0, 100));
        log(&output, OTHER, "stopped\n");
        assert_eq!(
            sink.writes(),
            vec![
                "listening on http://x\n".to_owned(),
                line(0, 100),
                "stopped\n".into()
            ],
            "the request line first: the order of logging is kept"
        );
        // `make_writer` (no metadata) writes directly too.
        output.make_writer().write_all(b"plain\n").unwrap();
        assert_eq!(sink.writes().last().unwrap(), "plain\n");
    }

    #[test]
    fn through_the_fmt_layer_only_the_request_target_is_batched() {
        let sink = Sink::default();
        let output = LogOutput::new(sink.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_writer(output.clone())
            .with_ansi(false)
            .without_time()
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "lm_proxy::request", status = 200, "chat completion");
            tracing::warn!(target: "lm_proxy::request", status = 502, "chat completion");
            assert!(sink.writes().is_empty(), "held: {:?}", sink.writes());
            tracing::info!("stopped");
        });
        let writes = sink.writes();
        assert_eq!(writes.len(), 2, "{writes:?}");
        assert_eq!(writes[0].lines().count(), 2, "{writes:?}");
        assert!(writes[0].contains("status=200") && writes[0].contains("status=502"));
        assert!(writes[1].ends_with("stopped\n"), "{writes:?}");
    }

    #[test]
    fn the_background_thread_writes_a_batch_without_a_flush() {
        let sink = Sink::default();
        let output = LogOutput::new(sink.clone());
        output.start_flusher(Duration::from_millis(10)).unwrap();
        for round in 0..3 {
            log(&output, REQUEST, &line(round, 100));
            let deadline = Instant::now() + Duration::from_secs(10);
            while sink.writes().len() <= round {
                assert!(Instant::now() < deadline, "round {round}: not written");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        assert_eq!(
            sink.writes(),
            (0..3).map(|n| line(n, 100)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn concurrent_lines_are_all_written_once_and_whole() {
        let sink = Sink::default();
        let output = LogOutput::new(sink.clone());
        output.start_flusher(Duration::from_millis(1)).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let output = output.clone();
                std::thread::spawn(move || {
                    // Threads 1-3 have batches of their own, thread 0 the shared one.
                    crate::shard::set_thread_shard(t);
                    for n in 0..500 {
                        let meta = if n % 50 == 0 { OTHER } else { REQUEST };
                        log(&output, meta, &line(t * 1000 + n, 120));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        output.flush();
        let text = sink.writes().concat();
        let mut seen: Vec<&str> = text.lines().collect();
        assert!(seen.iter().all(|l| l.len() == 119), "whole lines only");
        // Each thread's lines in the order it logged them.
        let numbers: Vec<usize> = seen
            .iter()
            .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
            .collect();
        for t in 0..4 {
            let own: Vec<usize> = numbers.iter().copied().filter(|n| n / 1000 == t).collect();
            assert_eq!(
                own,
                (t * 1000..t * 1000 + 500).collect::<Vec<_>>(),
                "thread {t}"
            );
        }
        seen.sort_unstable();
        let mut expected: Vec<String> = (0..4)
            .flat_map(|t| (0..500).map(move |n| line(t * 1000 + n, 120)))
            .map(|l| l.trim_end().to_owned())
            .collect();
        expected.sort_unstable();
        assert_eq!(seen, expected);
    }
}
