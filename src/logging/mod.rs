//! Request logging.
//!
//! Two kinds: the `tracing` line every request gets ([`request_line`]; written to
//! stderr in batches by [`output`], so it may appear up to [`output::FLUSH_PERIOD`]
//! late), and the configured `loggers` (the reference's `BaseLogger` +
//! `JsonLogWriter` + `LogEntryTransformer`, or Python callables through the bridge;
//! not batched by [`output`]). Configured loggers
//! never run on the request path: the request hands a JSON snapshot of its context to
//! a [`LogDispatcher`], whose background task feeds every logger and flushes the
//! writers whenever the queue runs dry. The queue is bounded; when it is full the
//! entry waits in a tracked task instead of being dropped, and shutdown waits for
//! those tasks and the queue to drain, so N requests leave exactly N entries.

mod json_writer;
pub mod output;
pub mod request_line;
mod transformer;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError, ExtensionSpec};
use crate::extensions::{builtin_name, Builtin, ExtensionResolver};

pub use json_writer::JsonLogWriter;
pub use output::flush_request_log;
pub use request_line::{RequestLineFormat, RequestSummary};
pub use transformer::{lookup_path, EntryTransformer};

/// How many entries may wait in the queue before senders start waiting.
const QUEUE_CAPACITY: usize = 8192;

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

/// Where a `BaseLogger` writes its entries. Runs on the logging task; `write` is
/// async so that writers which are not plain files (a Python callable through the
/// bridge) can wait without holding up a runtime thread.
#[async_trait]
pub trait LogWriter: Send + Sync {
    async fn write(&self, entry: &Value) -> std::io::Result<()>;
    fn flush(&self) -> std::io::Result<()>;
}

/// `lm_proxy.loggers.BaseLogger(log_writer, entry_transformer=None)`: turns the
/// context into an entry (all of it by default) and hands it to the writer.
pub struct BaseLogger {
    writer: Arc<dyn LogWriter>,
    transformer: Option<EntryTransformer>,
}

impl BaseLogger {
    pub fn new(writer: Arc<dyn LogWriter>, transformer: Option<EntryTransformer>) -> Self {
        BaseLogger {
            writer,
            transformer,
        }
    }
}

#[async_trait]
impl Logger for BaseLogger {
    async fn log(&self, context: &Value) -> anyhow::Result<()> {
        match &self.transformer {
            Some(t) => self.writer.write(&t.apply(context)).await?,
            None => self.writer.write(context).await?,
        }
        Ok(())
    }

    fn flush(&self) -> std::io::Result<()> {
        self.writer.flush()
    }
}

enum Message {
    Entry(Value),
    Close(oneshot::Sender<()>),
}

/// The queue in front of the logging task.
pub struct LogDispatcher {
    tx: mpsc::Sender<Message>,
    /// The runtime of the logging task: entries that wait for room in a full queue
    /// wait there, not on a serving thread's runtime, which may end before `close`.
    runtime: tokio::runtime::Handle,
    overflow: TaskTracker,
    closed: Mutex<bool>,
}

impl LogDispatcher {
    /// Start the logging task; `None` when no logger is configured (nothing to do
    /// per request). Must be called inside a tokio runtime.
    pub fn start(loggers: Vec<Arc<dyn Logger>>) -> Option<Arc<LogDispatcher>> {
        if loggers.is_empty() {
            return None;
        }
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run_loggers(rx, loggers));
        Some(Arc::new(LogDispatcher {
            tx,
            runtime: tokio::runtime::Handle::current(),
            overflow: TaskTracker::new(),
            closed: Mutex::new(false),
        }))
    }

    /// Queue an entry without waiting.
    pub fn submit(&self, context: Value) {
        match self.tx.try_send(Message::Entry(context)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => {
                let tx = self.tx.clone();
                self.overflow.spawn_on(
                    async move {
                        let _ = tx.send(message).await;
                    },
                    &self.runtime,
                );
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("log entry lost: the logging task has stopped");
            }
        }
    }

    /// Wait until every submitted entry is written and flushed, then stop the task.
    /// Call after the server stopped accepting requests.
    pub async fn close(&self) {
        {
            let mut closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
            if *closed {
                return;
            }
            *closed = true;
        }
        self.overflow.close();
        self.overflow.wait().await;
        let (done_tx, done_rx) = oneshot::channel();
        if self.tx.send(Message::Close(done_tx)).await.is_ok() {
            let _ = done_rx.await;
        }
    }
}

async fn run_loggers(mut rx: mpsc::Receiver<Message>, loggers: Vec<Arc<dyn Logger>>) {
    let flush = |loggers: &[Arc<dyn Logger>]| {
        for logger in loggers {
            if let Err(e) = logger.flush() {
                tracing::error!("cannot flush request log: {e}");
            }
        }
    };
    while let Some(message) = rx.recv().await {
        let mut next = Some(message);
        // Handle everything already queued, then flush once.
        while let Some(message) = next.take() {
            match message {
                Message::Entry(context) => {
                    for logger in &loggers {
                        if let Err(e) = logger.log(&context).await {
                            tracing::error!("request logger failed: {e:#}");
                        }
                    }
                }
                Message::Close(done) => {
                    flush(&loggers);
                    let _ = done.send(());
                    return;
                }
            }
            next = rx.try_recv().ok();
        }
        flush(&loggers);
        // Let entries gather before the next batch: under load this task then wakes
        // (and writes) a few dozen times a second instead of once per request, each
        // wake-up a thread switch away from the serving threads.
        tokio::time::sleep(BATCH_PAUSE).await;
    }
    flush(&loggers);
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
