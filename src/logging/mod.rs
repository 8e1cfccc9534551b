//! Request logging.
//!
//! Two kinds: the `tracing` line every request gets ([`request_line`]; written to
//! stderr in batches by [`output`], so it may appear up to [`output::FLUSH_PERIOD`]
//! late), and the configured `loggers` (the reference's `BaseLogger` +
//! `JsonLogWriter` + `LogEntryTransformer`, or Python callables through the bridge;
//! not batched by [`output`]). Configured loggers
//! never run on the request path: the request hands a JSON snapshot of its context to
//! a [`LogDispatcher`], whose background task feeds every logger and flushes the
//! writers whenever the queue runs dry. The logging task runs on a thread of its
//! own, so a writer that blocks (a log file on a pipe nobody reads, a full disk)
//! holds up no serving thread and no shutdown. The queue is bounded in entries and
//! in bytes (`[log_queue]`): past either bound an entry is dropped, counted
//! (`lm_proxy_log_entries_dropped_total`) and reported in a warning at most every
//! [`DROP_WARNING_PERIOD`]. Shutdown drains the queue for at most
//! `log_queue.flush_timeout_seconds`; what is still unwritten then is counted and
//! reported the same way.

mod json_writer;
pub mod output;
pub mod request_line;
pub mod throttle;
mod transformer;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, ConfigError, ExtensionSpec, LogQueueConfig};
use crate::extensions::{builtin_name, Builtin, ExtensionResolver};

pub use json_writer::JsonLogWriter;
pub use output::flush_request_log;
pub use request_line::{RequestLineFormat, RequestSummary};
pub use transformer::{lookup_path, EntryTransformer};

/// The process's `tracing` subscriber: `filter`'s events as text on `output`, request
/// lines batched. `RequestSummary::log` finds `output` in it (by downcasting) and
/// writes its lines there directly.
pub fn subscriber<S: std::io::Write + Send + 'static>(
    filter: tracing_subscriber::EnvFilter,
    output: output::LogOutput<S>,
) -> impl tracing::Subscriber + Send + Sync {
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(output)
        .with_ansi(false)
        .event_format(RequestLineFormat::default())
        .finish()
}

/// At most one warning about dropped entries per this period (the count of all
/// dropped since the last warning is in it).
pub const DROP_WARNING_PERIOD: Duration = Duration::from_secs(10);

/// How long the logging task waits after writing a batch before it takes the next
/// one (entries reach their file at most this much later; see `run_loggers`).
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Receives the JSON view of each finished request's context (see
/// `RequestContext::to_log_json`). Runs on the logging task.
#[async_trait]
pub trait Logger: Send + Sync {
    async fn log(&self, context: &Value) -> anyhow::Result<()>;
    /// Push buffered output to its destination (called when the queue runs dry and
    /// at shutdown).
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Entry fields that the reference's `BaseLogger` handed over as Python objects, not
/// JSON values. The entry holds them as JSON (the answer as its whole completion, so
/// that paths such as `response.usage.completion_tokens` resolve); each writer renders
/// them: a JSON file as the reference's `json.dumps` did, a Python writer as the
/// objects themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// The answer (microcore's `LLMResponse`: a `str` carrying the completion): its
    /// text in a JSON file ([`answer_text`]), an `lm_proxy.base_types.LLMResponse`
    /// in Python.
    Response,
    /// `created_at`: ISO 8601 in a JSON file, a timezone-aware `datetime` in Python.
    Timestamp,
}

/// The entry's keys that hold a [`FieldKind`] value.
pub type FieldKinds = [(String, FieldKind)];

/// Where a `BaseLogger` writes its entries. Runs on the logging task; `write` is
/// async so that writers which are not plain files (a Python callable through the
/// bridge) can wait without holding up a runtime thread.
#[async_trait]
pub trait LogWriter: Send + Sync {
    /// `kinds` names the entry's fields to render specially (see [`FieldKind`]).
    async fn write(&self, entry: &Value, kinds: &FieldKinds) -> std::io::Result<()>;
    fn flush(&self) -> std::io::Result<()>;
    /// Whether a whole-context entry must hold exactly the reference's keys. Python
    /// writers do: the reference's add-ons map each key to a table column and refuse
    /// one they do not know (the door, `endpoint`, is an addition); a JSON file
    /// takes any key, and a transformer picks its own.
    fn reference_keys_only(&self) -> bool {
        false
    }
}

/// Keys of the whole-context entry ([`RequestContext::to_log_json`]) that the
/// reference's context did not have.
///
/// [`RequestContext::to_log_json`]: crate::context::RequestContext::to_log_json
const ADDED_CONTEXT_KEYS: [&str; 1] = ["endpoint"];

/// The answer's text, as the reference's loggers saw `str(ctx.response)`: the content
/// of choice 0 (text parts joined); `""` when it has none (tool calls only).
pub fn answer_text(completion: &Value) -> String {
    if completion.get("object").and_then(Value::as_str) == Some("response") {
        // An answer of the Responses door: the `output_text` parts of its messages
        // (what the SDKs call `output_text`).
        return completion
            .get("output")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|item| item.get("type").and_then(Value::as_str) == Some("message"))
            .filter_map(|item| item.get("content").and_then(Value::as_array))
            .flatten()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("output_text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect();
    }
    let Some(choices) = completion.get("choices").and_then(Value::as_array) else {
        // An answer of the Anthropic door is a Messages API `message`: its text is
        // that of its `text` blocks (thinking and tool_use blocks are not the text).
        return match completion.get("content") {
            Some(Value::Array(blocks)) => blocks
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect(),
            _ => String::new(),
        };
    };
    let choice = choices
        .iter()
        .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
        .or(choices.first());
    // A legacy completion's choice has its `text` instead of a message.
    if let Some(Value::String(text)) = choice.and_then(|c| c.get("text")) {
        return text.clone();
    }
    match choice
        .and_then(|c| c.get("message"))
        .and_then(|m| m.get("content"))
    {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// `lm_proxy.loggers.BaseLogger(log_writer, entry_transformer=None)`: turns the
/// context into an entry (all of it by default) and hands it to the writer.
pub struct BaseLogger {
    writer: Arc<dyn LogWriter>,
    transformer: Option<EntryTransformer>,
    kinds: Vec<(String, FieldKind)>,
}

impl BaseLogger {
    pub fn new(writer: Arc<dyn LogWriter>, transformer: Option<EntryTransformer>) -> Self {
        // The whole context, or the transformer's fields whose path is one of these.
        let kind_of = |path: &[String]| match path {
            [only] if only == "response" => Some(FieldKind::Response),
            [only] if only == "created_at" => Some(FieldKind::Timestamp),
            _ => None,
        };
        let kinds = match &transformer {
            None => vec![
                ("response".to_owned(), FieldKind::Response),
                ("created_at".to_owned(), FieldKind::Timestamp),
            ],
            Some(t) => t
                .fields()
                .filter_map(|(name, path)| Some((name.to_owned(), kind_of(path)?)))
                .collect(),
        };
        BaseLogger {
            writer,
            transformer,
            kinds,
        }
    }
}

#[async_trait]
impl Logger for BaseLogger {
    async fn log(&self, context: &Value) -> anyhow::Result<()> {
        match &self.transformer {
            Some(t) => self.writer.write(&t.apply(context), &self.kinds).await?,
            None if self.writer.reference_keys_only() => {
                let mut entry = context.clone();
                if let Value::Object(map) = &mut entry {
                    for key in ADDED_CONTEXT_KEYS {
                        map.shift_remove(key);
                    }
                }
                self.writer.write(&entry, &self.kinds).await?
            }
            None => self.writer.write(context, &self.kinds).await?,
        }
        Ok(())
    }

    fn flush(&self) -> std::io::Result<()> {
        self.writer.flush()
    }
}

/// The bounds of the queue in front of the loggers (`[log_queue]`).
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_entries: usize,
    /// About how much the queued entries may hold (see [`approx_size`]).
    pub max_bytes: usize,
    /// How long [`LogDispatcher::close`] waits for the loggers.
    pub flush_timeout: Duration,
}

impl QueueLimits {
    pub fn from_config(config: &LogQueueConfig) -> QueueLimits {
        QueueLimits {
            max_entries: config.max_entries.max(1),
            max_bytes: config.max_bytes(),
            flush_timeout: Duration::from_secs_f64(config.flush_timeout_seconds),
        }
    }
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits::from_config(&LogQueueConfig::default())
    }
}

/// One queued entry and the bytes it was counted for.
struct Queued {
    entry: Value,
    size: usize,
}

/// What the request side and the logging thread share.
struct QueueState {
    /// Sum of the sizes of entries accepted and not yet handled.
    queued_bytes: AtomicUsize,
    /// Entries accepted and not yet handled (the one being written included).
    pending: AtomicUsize,
    dropped: AtomicU64,
    /// Dropped since the last warning.
    unreported: AtomicU64,
    /// Milliseconds after `epoch` before which no new warning is written.
    next_warning_ms: AtomicU64,
    epoch: Instant,
    /// The server's `lm_proxy_log_entries_dropped` (set once a server serves it).
    metric: OnceLock<Counter>,
}

/// The queue in front of the logging thread.
pub struct LogDispatcher {
    tx: mpsc::Sender<Queued>,
    state: Arc<QueueState>,
    limits: QueueLimits,
    /// Taken by the first `close`: the signal to the logging thread, and its answer
    /// once every queued entry is written and flushed.
    closing: Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
}

impl LogDispatcher {
    /// Start the logging thread; `None` when no logger is configured (nothing to do
    /// per request).
    pub fn start(loggers: Vec<Arc<dyn Logger>>, limits: QueueLimits) -> Option<Arc<LogDispatcher>> {
        if loggers.is_empty() {
            return None;
        }
        let (tx, rx) = mpsc::channel(limits.max_entries.max(1));
        let (close_tx, close_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let state = Arc::new(QueueState {
            queued_bytes: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
            next_warning_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            metric: OnceLock::new(),
        });
        let task_state = state.clone();
        // A thread of its own (not a task on a serving runtime): a writer that blocks
        // in a system call then blocks only this thread, and nothing waits to join
        // it, so neither serving nor the end of the process can be held up by it.
        let started = std::thread::Builder::new()
            .name("lm-proxy-log".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::error!("request logging is off: cannot start its runtime: {e}");
                        return;
                    }
                };
                runtime.block_on(run_loggers(rx, close_rx, loggers, task_state));
                let _ = done_tx.send(());
            });
        if let Err(e) = started {
            // The receiver is gone with the closure: every entry counts as dropped.
            tracing::error!("request logging is off: cannot start its thread: {e}");
        }
        Some(Arc::new(LogDispatcher {
            tx,
            state,
            limits,
            closing: Mutex::new(Some((close_tx, done_rx))),
        }))
    }

    /// Count dropped entries in this server's metrics too (from now on).
    pub fn count_drops_in(&self, counter: Counter) {
        let _ = self.state.metric.set(counter);
    }

    /// Entries dropped so far (queue full, logging stopped, or unwritten at close).
    pub fn dropped(&self) -> u64 {
        self.state.dropped.load(Ordering::Relaxed)
    }

    /// Entries waiting in the queue or being written now.
    pub fn pending(&self) -> usize {
        self.state.pending.load(Ordering::Relaxed)
    }

    /// Queue an entry without waiting; drop it (counted) when the queue is full.
    pub fn submit(&self, context: Value) {
        let size = approx_size(&context);
        let state = &self.state;
        let before = state.queued_bytes.fetch_add(size, Ordering::Relaxed);
        // An entry larger than the whole bound still goes in when nothing else waits:
        // otherwise a big answer would never be logged at all.
        if before > 0 && before.saturating_add(size) > self.limits.max_bytes {
            state.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            self.note_dropped(1, "the log queue is full");
            return;
        }
        state.pending.fetch_add(1, Ordering::Relaxed);
        let why = match self.tx.try_send(Queued {
            entry: context,
            size,
        }) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => "the log queue is full",
            Err(mpsc::error::TrySendError::Closed(_)) => "request logging has stopped",
        };
        state.pending.fetch_sub(1, Ordering::Relaxed);
        state.queued_bytes.fetch_sub(size, Ordering::Relaxed);
        self.note_dropped(1, why);
    }

    fn note_dropped(&self, count: u64, why: &str) {
        let state = &self.state;
        state.dropped.fetch_add(count, Ordering::Relaxed);
        if let Some(metric) = state.metric.get() {
            metric.inc_by(count);
        }
        state.unreported.fetch_add(count, Ordering::Relaxed);
        let now = state.epoch.elapsed().as_millis() as u64;
        let next = state.next_warning_ms.load(Ordering::Relaxed);
        let period = DROP_WARNING_PERIOD.as_millis() as u64;
        if now >= next
            && state
                .next_warning_ms
                .compare_exchange(next, now + period, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let n = state.unreported.swap(0, Ordering::Relaxed);
            tracing::warn!(
                "{n} request log entries dropped: {why} (log_queue: max_entries = {}, max_mb = {}); the loggers are not keeping up (a log file on a pipe nobody reads, a full disk, a slow Python logger?). At most one such warning per {}s",
                self.limits.max_entries,
                self.limits.max_bytes as f64 / (1024.0 * 1024.0),
                DROP_WARNING_PERIOD.as_secs()
            );
        }
    }

    /// Write and flush every queued entry, then stop the logging thread; give up
    /// after `log_queue.flush_timeout_seconds` (the entries left are counted as
    /// dropped and reported). Call after the server stopped accepting requests.
    pub async fn close(&self) {
        let Some((close_tx, done_rx)) = self
            .closing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let _ = close_tx.send(());
        if tokio::time::timeout(self.limits.flush_timeout, done_rx)
            .await
            .is_err()
        {
            let lost = self.state.pending.load(Ordering::Relaxed) as u64;
            self.state.dropped.fetch_add(lost, Ordering::Relaxed);
            if let Some(metric) = self.state.metric.get() {
                metric.inc_by(lost);
            }
            tracing::error!(
                "{lost} request log entries not written: the loggers did not finish within log_queue.flush_timeout_seconds ({}s) of shutdown",
                self.limits.flush_timeout.as_secs_f64()
            );
        }
    }
}

async fn run_loggers(
    mut rx: mpsc::Receiver<Queued>,
    mut close: oneshot::Receiver<()>,
    loggers: Vec<Arc<dyn Logger>>,
    state: Arc<QueueState>,
) {
    let flush = |loggers: &[Arc<dyn Logger>]| {
        for logger in loggers {
            if let Err(e) = logger.flush() {
                tracing::error!("cannot flush request log: {e}");
            }
        }
    };
    let handle = |queued: Queued| {
        let (loggers, state) = (&loggers, &state);
        async move {
            for logger in loggers {
                if let Err(e) = logger.log(&queued.entry).await {
                    tracing::error!("request logger failed: {e:#}");
                }
            }
            drop(queued.entry);
            state.queued_bytes.fetch_sub(queued.size, Ordering::Relaxed);
            state.pending.fetch_sub(1, Ordering::Relaxed);
        }
    };
    loop {
        let first = tokio::select! {
            biased;
            // Closing (or the dispatcher dropped): what is queued now is the rest.
            _ = &mut close => break,
            next = rx.recv() => match next {
                Some(queued) => queued,
                None => break,
            },
        };
        // Handle everything already queued, then flush once.
        handle(first).await;
        while let Ok(queued) = rx.try_recv() {
            handle(queued).await;
        }
        flush(&loggers);
        // Let entries gather before the next batch: under load this thread then wakes
        // (and writes) a few dozen times a second instead of once per request.
        tokio::time::sleep(BATCH_PAUSE).await;
    }
    while let Ok(queued) = rx.try_recv() {
        handle(queued).await;
    }
    flush(&loggers);
}

/// About how many bytes a JSON value holds in memory: strings by their length, every
/// value and member by a fixed overhead. Counted against `log_queue.max_mb`.
pub fn approx_size(value: &Value) -> usize {
    // Roughly a `Value` plus its share of its container's table.
    const NODE: usize = 48;
    let mut size = 0usize;
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        size = size.saturating_add(NODE);
        match value {
            Value::String(s) => size = size.saturating_add(s.len()),
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                for (key, item) in map {
                    size = size.saturating_add(key.len() + NODE);
                    stack.push(item);
                }
            }
            _ => {}
        }
    }
    size
}

/// Build the configured loggers (built-ins here; others through the resolver).
pub fn build_loggers(
    config: &Config,
    resolver: &dyn ExtensionResolver,
) -> Result<Vec<Arc<dyn Logger>>, ConfigError> {
    let mut loggers: Vec<Arc<dyn Logger>> = Vec::new();
    for spec in &config.loggers {
        let logger: Arc<dyn Logger> = match builtin_name(&spec.target) {
            Some(Builtin::BaseLogger) => Arc::new(base_logger(spec, config, resolver)?),
            // A bare writer logs the whole context, as a BaseLogger with no transformer.
            Some(Builtin::JsonLogWriter) => {
                Arc::new(BaseLogger::new(json_writer(spec, config)?, None))
            }
            Some(_) => {
                return Err(ConfigError::new(
                    &config.path,
                    &spec.key,
                    format!("'{}' cannot be used as a logger", spec.target),
                ))
            }
            None => resolver.logger(spec, config)?,
        };
        loggers.push(logger);
    }
    Ok(loggers)
}

fn base_logger(
    spec: &ExtensionSpec,
    config: &Config,
    resolver: &dyn ExtensionResolver,
) -> Result<BaseLogger, ConfigError> {
    let err = |key: String, problem: String| ConfigError::new(&config.path, key, problem);
    let mut writer = None;
    let mut transformer = None;
    for (name, value) in &spec.kwargs {
        let key = format!("{}.{name}", spec.key);
        match name.as_str() {
            "log_writer" => {
                let inner = ExtensionSpec::parse(value, &key)
                    .map_err(|p| err(key.clone(), p))?
                    .ok_or_else(|| err(key.clone(), "a log writer is required".into()))?;
                writer = Some(match builtin_name(&inner.target) {
                    Some(Builtin::JsonLogWriter) => json_writer(&inner, config)?,
                    Some(_) => {
                        return Err(err(key, format!("'{}' is not a log writer", inner.target)))
                    }
                    None => resolver.log_writer(&inner, config)?,
                });
            }
            "entry_transformer" => {
                if value.is_null() {
                    continue;
                }
                let inner = ExtensionSpec::parse(value, &key)
                    .map_err(|p| err(key.clone(), p))?
                    .ok_or_else(|| {
                        err(key.clone(), "expected a LogEntryTransformer table".into())
                    })?;
                match builtin_name(&inner.target) {
                    Some(Builtin::LogEntryTransformer) => {
                        transformer = Some(EntryTransformer::from_kwargs(&inner.kwargs).map_err(|(k, p)| err(format!("{key}.{k}"), p))?);
                    }
                    _ => {
                        return Err(err(
                            key,
                            format!("'{}' is not supported as entry_transformer (use lm_proxy.loggers.LogEntryTransformer)", inner.target),
                        ))
                    }
                }
            }
            _ => {
                return Err(err(
                    key,
                    "unknown argument of BaseLogger (log_writer, entry_transformer)".into(),
                ))
            }
        }
    }
    let writer =
        writer.ok_or_else(|| err(spec.key.clone(), "BaseLogger needs a `log_writer`".into()))?;
    Ok(BaseLogger::new(writer, transformer))
}

fn json_writer(spec: &ExtensionSpec, config: &Config) -> Result<Arc<dyn LogWriter>, ConfigError> {
    let mut file_name = None;
    for (name, value) in &spec.kwargs {
        match (name.as_str(), value) {
            ("file_name", Value::String(s)) if !s.trim().is_empty() => file_name = Some(s.clone()),
            ("file_name", _) => {
                return Err(ConfigError::new(
                    &config.path,
                    format!("{}.file_name", spec.key),
                    "expected a file path",
                ))
            }
            _ => {
                return Err(ConfigError::new(
                    &config.path,
                    format!("{}.{name}", spec.key),
                    "unknown argument of JsonLogWriter (file_name)",
                ))
            }
        }
    }
    let file_name = file_name.ok_or_else(|| {
        ConfigError::new(&config.path, &spec.key, "JsonLogWriter needs `file_name`")
    })?;
    let writer = JsonLogWriter::open(&file_name).map_err(|e| {
        ConfigError::new(
            &config.path,
            format!("{}.file_name", spec.key),
            format!("cannot open log file '{file_name}': {e}"),
        )
    })?;
    Ok(Arc::new(writer))
}

/// Remove values that must never reach a log from a context snapshot: a client key
/// that `AllowAll(capture_api_key=True)` put into `user_info`.
pub fn redact_context(context: &mut Map<String, Value>) {
    if let Some(Value::Object(user_info)) = context.get_mut("user_info") {
        if let Some(key) = user_info.get_mut("api_key") {
            *key = Value::String("***".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::AtomicBool;

    /// Blocks its thread (as a write to a full pipe does) until released.
    struct Blocking {
        release: Arc<AtomicBool>,
        written: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl Logger for Blocking {
        async fn log(&self, _context: &Value) -> anyhow::Result<()> {
            while !self.release.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.written.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn limits(max_entries: usize, max_bytes: usize) -> QueueLimits {
        QueueLimits {
            max_entries,
            max_bytes,
            flush_timeout: Duration::from_millis(200),
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_and_close_gives_up_at_its_deadline() {
        let release = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicUsize::new(0));
        let logger = Arc::new(Blocking {
            release: release.clone(),
            written: written.clone(),
        });
        let dispatcher = LogDispatcher::start(vec![logger], limits(3, usize::MAX)).unwrap();
        let counter = Counter::default();
        dispatcher.count_drops_in(counter.clone());
        for i in 0..50 {
            dispatcher.submit(json!({ "n": i }));
        }
        // At most 3 waiting and 1 being written.
        assert!(dispatcher.pending() <= 4, "{}", dispatcher.pending());
        assert!(dispatcher.dropped() >= 46);
        assert_eq!(counter.get(), dispatcher.dropped());
        let started = Instant::now();
        dispatcher.close().await;
        assert!(started.elapsed() < Duration::from_secs(10));
        // Whatever was not written is counted: every entry is written or dropped.
        assert_eq!(dispatcher.dropped(), 50);
        release.store(true, Ordering::SeqCst);
    }

    #[tokio::test]
    async fn the_byte_bound_drops_but_one_big_entry_alone_still_goes_in() {
        let release = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicUsize::new(0));
        let logger = Arc::new(Blocking {
            release: release.clone(),
            written: written.clone(),
        });
        let dispatcher = LogDispatcher::start(vec![logger], limits(100, 1000)).unwrap();
        dispatcher.submit(json!({ "big": "x".repeat(5000) }));
        dispatcher.submit(json!({ "small": 1 }));
        assert_eq!(dispatcher.dropped(), 1);
        release.store(true, Ordering::SeqCst);
        dispatcher.close().await;
        assert_eq!(written.load(Ordering::SeqCst), 1);
        assert_eq!(dispatcher.dropped(), 1);
        // Once written, its bytes are free again.
        assert_eq!(dispatcher.state.queued_bytes.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn close_writes_everything_queued() {
        let written = Arc::new(AtomicUsize::new(0));
        let logger = Arc::new(Blocking {
            release: Arc::new(AtomicBool::new(true)),
            written: written.clone(),
        });
        let dispatcher = LogDispatcher::start(vec![logger], limits(100, usize::MAX)).unwrap();
        for i in 0..60 {
            dispatcher.submit(json!({ "n": i }));
        }
        dispatcher.close().await;
        assert_eq!(written.load(Ordering::SeqCst), 60);
        assert_eq!(dispatcher.dropped(), 0);
        // A second close returns at once.
        dispatcher.close().await;
    }

    #[test]
    fn sizes_count_text_and_structure() {
        let small = approx_size(&json!({"a": 1}));
        let text = approx_size(&json!({"a": "x".repeat(1000)}));
        assert!(text >= 1000 && text < 1000 + 4 * small, "{small} {text}");
        let nested = approx_size(&json!([[[[1]]]]));
        assert!(nested > approx_size(&json!(1)) * 4);
    }

    /// Keeps what it is given; `reference` says whether it wants the reference's keys.
    struct Collecting {
        reference: bool,
        seen: std::sync::Mutex<Vec<Value>>,
    }

    #[async_trait]
    impl LogWriter for Collecting {
        async fn write(&self, entry: &Value, _kinds: &FieldKinds) -> std::io::Result<()> {
            self.seen.lock().unwrap().push(entry.clone());
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn reference_keys_only(&self) -> bool {
            self.reference
        }
    }

    #[tokio::test]
    async fn writers_that_map_keys_to_columns_get_only_the_reference_keys() {
        let context =
            crate::context::RequestContext::new(http::HeaderMap::new(), "127.0.0.1".into())
                .to_log_json();
        assert!(
            context.get("endpoint").is_some(),
            "the JSON view names the door"
        );
        for reference in [true, false] {
            let writer = Arc::new(Collecting {
                reference,
                seen: Default::default(),
            });
            BaseLogger::new(writer.clone(), None)
                .log(&context)
                .await
                .unwrap();
            let seen = writer.seen.lock().unwrap();
            let keys: Vec<&str> = seen[0]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            if reference {
                // The reference's RequestContext.to_dict(): its fields but http_request.
                assert_eq!(
                    keys,
                    [
                        "id",
                        "request",
                        "response",
                        "error",
                        "group",
                        "connection",
                        "model",
                        "llm_params",
                        "api_key_id",
                        "remote_addr",
                        "created_at",
                        "duration",
                        "user_info",
                        "extra"
                    ]
                );
            } else {
                assert!(keys.contains(&"endpoint"), "{keys:?}");
            }
        }
    }
}
