//! The usage ledger: one row per request, whatever the door, written to SQLite or
//! PostgreSQL in batches by a task of its own (docs/usage-ledger.md).
//!
//! The request path never waits on the database: the request's end
//! (`api::core::Ending`) pushes its row into a bounded in-memory buffer (a short
//! mutex, no await) and goes on. The writer task takes batches from the buffer;
//! when the database cannot be reached (at startup or later) the rows stay in the
//! buffer and are written once it answers again. Rows that find the buffer full are
//! dropped, counted (`lm_proxy_ledger_rows_dropped` in `/metrics`) and reported in a
//! rate-limited warning. A clean stop writes what is buffered, within
//! `flush_timeout_seconds`.
//!
//! No row is written twice. PostgreSQL: a batch whose outcome is unknown (a
//! timeout after the database took it) is held and written again as it was, under
//! its id, which makes the second copy a no-op (`db::Batch`). SQLite: writes are
//! never abandoned, so a batch is either committed or rolled back. Neither schema
//! indexes `request_id`: random ids made that index the writer's largest cost.

pub mod budget;
pub mod commands;
pub mod db;
pub mod keys;
pub mod prices;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, UNIX_EPOCH};

use arc_swap::ArcSwap;
use futures_util::Stream;
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use tokio::sync::Notify;

use crate::config::{lenient, ConfigError};
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::json_scan::TokenCounts;
use crate::logging::throttle::Throttled;
use crate::payload::{Payload, PayloadStream};
use db::{Batch, Db, RowSink, Target};
use prices::{Prices, Tokens};

/// The `[database]` table. Present (even empty): the ledger is on.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (relative to the config's folder) or `postgres://...`;
    /// absent: `sqlite://lm-proxy.db` beside the config.
    #[serde(default)]
    pub url: Option<String>,
    /// Connections in the pool (the writer uses one at a time; the rest are for
    /// what reads the database, such as budgets).
    #[serde(
        default = "default_max_connections",
        deserialize_with = "lenient::positive_usize"
    )]
    pub max_connections: usize,
    /// Rows that may wait in memory for the database; rows past it are dropped and
    /// counted.
    #[serde(
        default = "default_buffer_rows",
        deserialize_with = "lenient::positive_usize"
    )]
    pub buffer_rows: usize,
    /// Rows per INSERT.
    #[serde(
        default = "default_batch_rows",
        deserialize_with = "lenient::positive_usize"
    )]
    pub batch_rows: usize,
    /// How long a row may wait for its batch to fill before it is written anyway.
    #[serde(
        default = "default_flush_interval",
        deserialize_with = "lenient::positive_f64"
    )]
    pub flush_interval_seconds: f64,
    /// Deadline of one connection attempt or one batch write.
    #[serde(
        default = "default_timeout",
        deserialize_with = "lenient::positive_f64"
    )]
    pub timeout_seconds: f64,
    /// Group budgets while the spend to date cannot be read (the database not
    /// reached since startup): `open` (admit) or `closed` (503).
    #[serde(default)]
    pub budgets_when_unreachable: budget::WhenUnreachable,
    /// How long a clean stop waits for the buffered rows to be written.
    #[serde(
        default = "default_flush_timeout",
        deserialize_with = "lenient::positive_f64"
    )]
    pub flush_timeout_seconds: f64,
}

fn default_max_connections() -> usize {
    4
}
fn default_buffer_rows() -> usize {
    100_000
}
fn default_batch_rows() -> usize {
    500
}
fn default_flush_interval() -> f64 {
    1.0
}
fn default_timeout() -> f64 {
    5.0
}
fn default_flush_timeout() -> f64 {
    10.0
}

/// The URL used when `[database]` has none.
pub const DEFAULT_URL: &str = "sqlite://lm-proxy.db";

/// A batch is one transaction (SQLite: holding the file's write lock;
/// PostgreSQL: one COPY): past this size, larger batches only make each write
/// longer.
const MAX_BATCH_ROWS: usize = 10_000;

impl DatabaseConfig {
    /// At config load: the URL parses, the batch size is within its bound.
    pub fn check(&self, file: &Path) -> Result<(), ConfigError> {
        self.target(file)
            .map_err(|problem| ConfigError::new(file, "database.url", problem))?;
        if self.batch_rows > MAX_BATCH_ROWS {
            return Err(ConfigError::new(
                file,
                "database.batch_rows",
                format!("must be at most {MAX_BATCH_ROWS} (one transaction)"),
            ));
        }
        if self.max_connections > u32::MAX as usize {
            return Err(ConfigError::new(
                file,
                "database.max_connections",
                "is too large",
            ));
        }
        Ok(())
    }

    /// Where the rows go; a relative SQLite path is taken from the config's folder.
    pub fn target(&self, file: &Path) -> Result<Target, String> {
        let base = file.parent().unwrap_or(Path::new(""));
        Target::parse(self.url.as_deref().unwrap_or(DEFAULT_URL), base)
    }
}

/// One ledger row (the columns of `usage_ledger`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row {
    /// Unix milliseconds (UTC) when the request arrived.
    pub created_at_ms: i64,
    pub request_id: String,
    /// The key's HMAC id (`auth`), never the key.
    pub api_key_id: Option<String>,
    /// `user_info.name` when the key check gave one.
    pub key_name: Option<String>,
    pub group: Option<String>,
    pub connection: Option<String>,
    pub requested_model: Option<String>,
    pub model: Option<String>,
    pub door: &'static str,
    pub status: i32,
    pub stream: bool,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub cached_tokens: Option<i64>,
    pub reasoning_tokens: Option<i64>,
    pub cost_usd: f64,
    pub duration_ms: f64,
    /// Streams: from the request's arrival to the first chunk.
    pub ttft_ms: Option<f64>,
    /// The error's `code`, or its `type` when it has none; `client_disconnected`
    /// for a stream the client left.
    pub error_type: Option<String>,
}

/// The ledger of one server: the buffer, the writer task and the prices.
pub struct Ledger {
    shared: Arc<Shared>,
    pub budgets: Arc<budget::Budgets>,
    prices: ArcSwap<Prices>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    flush_timeout: Duration,
    /// True once the writer has connected and applied the migrations: the admin
    /// API's writes wait on it rather than race the first migration.
    schema_ready: tokio::sync::watch::Receiver<bool>,
}

/// What the request path and the writer task share.
struct Shared {
    queue: Mutex<VecDeque<Row>>,
    /// A batch that failed, waiting to be written again as it was (same id, same
    /// rows: see `db::Batch`), before any row of the queue.
    held: Mutex<Option<Batch>>,
    /// Rows of the batch being written (neither in the queue nor held).
    in_flight: AtomicU64,
    capacity: usize,
    batch_rows: usize,
    /// Wakes the writer: a batch is full, or the server is stopping.
    wake: Notify,
    stopping: AtomicBool,
    dropped: AtomicU64,
    written: AtomicU64,
    dropped_metric: Option<Counter>,
    written_metric: Option<Counter>,
}

/// The rows-dropped warning: at most one line per 10 s.
static DROPPED: Throttled = Throttled::new(Duration::from_secs(10));
/// The database-unreachable warning: at most one line per 30 s.
static UNREACHABLE: Throttled = Throttled::new(Duration::from_secs(30));
/// The same for reading the shared budget figures (its own line: the read fails
/// first when the database goes away between batches).
static FIGURES: Throttled = Throttled::new(Duration::from_secs(30));

impl Ledger {
    /// Start the ledger's writer on the current tokio runtime. It connects (and
    /// applies the migrations) in the background: a database that is down now
    /// delays only the writing. `counters`: (dropped, written) rows in `/metrics`.
    pub fn start(
        config: &DatabaseConfig,
        file: &Path,
        pricing: &indexmap::IndexMap<String, prices::PriceConfig>,
        counters: Option<(Counter, Counter)>,
    ) -> Result<Arc<Ledger>, ConfigError> {
        let target = config
            .target(file)
            .map_err(|problem| ConfigError::new(file, "database.url", problem))?;
        let (dropped_metric, written_metric) = counters.unzip();
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            held: Mutex::new(None),
            in_flight: AtomicU64::new(0),
            capacity: config.buffer_rows,
            batch_rows: config.batch_rows.min(MAX_BATCH_ROWS),
            wake: Notify::new(),
            stopping: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            dropped_metric,
            written_metric,
        });
        let budgets = Arc::new(budget::Budgets::new(config.budgets_when_unreachable));
        let (schema_sender, schema_ready) = tokio::sync::watch::channel(false);
        let writer = Writer {
            schema_ready: schema_sender,
            shared: shared.clone(),
            budgets: budgets.clone(),
            target,
            max_connections: config.max_connections as u32,
            interval: Duration::from_secs_f64(config.flush_interval_seconds),
            timeout: Duration::from_secs_f64(config.timeout_seconds),
        };
        let handle = tokio::spawn(writer.run());
        Ok(Arc::new(Ledger {
            shared,
            budgets,
            prices: ArcSwap::from_pointee(Prices::new(pricing)),
            writer: Mutex::new(Some(handle)),
            flush_timeout: Duration::from_secs_f64(config.flush_timeout_seconds),
            schema_ready,
        }))
    }

    /// Turns true once the database is connected and migrated (and stays so).
    pub fn schema_ready(&self) -> tokio::sync::watch::Receiver<bool> {
        self.schema_ready.clone()
    }

    /// New `[pricing]` (a reload).
    pub fn set_prices(&self, pricing: &indexmap::IndexMap<String, prices::PriceConfig>) {
        self.prices.store(Arc::new(Prices::new(pricing)));
    }

    /// Rows dropped so far (buffer full, or unwritten at a stop).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Rows written so far.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Start the row of a request whose handling is over.
    pub fn begin(
        self: &Arc<Self>,
        ctx: &RequestContext,
        asked: crate::context::Asked<'_>,
        hold: Option<budget::Hold>,
    ) -> PendingRow {
        let created_at_ms = ctx
            .created_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let key_name = ctx
            .user_info
            .get("name")
            .and_then(|n| n.as_str())
            .map(|n| n.chars().take(200).collect());
        PendingRow {
            ledger: self.clone(),
            hold,
            started: ctx.started,
            row: Row {
                created_at_ms,
                request_id: ctx.id.clone(),
                api_key_id: ctx.api_key_id.clone(),
                key_name,
                group: ctx.group.clone(),
                connection: ctx.connection.clone(),
                requested_model: asked.model.map(str::to_owned),
                model: ctx.model.clone(),
                door: ctx.endpoint.as_str(),
                status: 0,
                stream: asked.stream,
                prompt_tokens: None,
                completion_tokens: None,
                cached_tokens: None,
                reasoning_tokens: None,
                cost_usd: 0.0,
                duration_ms: 0.0,
                ttft_ms: None,
                error_type: None,
            },
        }
    }

    /// Into the buffer, or dropped and counted when it is full. Never waits.
    fn push(&self, row: Row) {
        let shared = &self.shared;
        let len = {
            let mut queue = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            if queue.len() >= shared.capacity {
                None
            } else {
                queue.push_back(row);
                Some(queue.len())
            }
        };
        match len {
            None => shared.count_dropped(1, "the buffer is full ([database] buffer_rows)"),
            // One wake-up per batch, not per row.
            Some(n) if n % shared.batch_rows == 0 => shared.wake.notify_one(),
            Some(_) => {}
        }
    }

    /// A clean stop: the writer writes what is buffered, for at most
    /// `flush_timeout_seconds`; rows still unwritten then are counted as dropped.
    pub async fn close(&self) {
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut handle) = handle else {
            return;
        };
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        if tokio::time::timeout(self.flush_timeout, &mut handle)
            .await
            .is_err()
        {
            handle.abort();
            let left = {
                let mut queue = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                let n = queue.len();
                queue.clear();
                let held = self.shared.held.lock().unwrap_or_else(|e| e.into_inner());
                n + held.as_ref().map_or(0, |b| b.rows.len())
                    + self.shared.in_flight.swap(0, Ordering::Relaxed) as usize
            };
            if left > 0 {
                self.shared
                    .dropped
                    .fetch_add(left as u64, Ordering::Relaxed);
                if let Some(metric) = &self.shared.dropped_metric {
                    metric.inc_by(left as u64);
                }
                tracing::error!(
                    "usage ledger: {left} rows could not be written before the stop \
                     ([database] flush_timeout_seconds)"
                );
            }
        }
    }
}

impl Shared {
    fn count_dropped(&self, n: u64, why: &'static str) {
        let total = self.dropped.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(metric) = &self.dropped_metric {
            metric.inc_by(n);
        }
        DROPPED.warn(|| format!("usage ledger: rows dropped: {why}; {total} so far"));
    }

    /// The held batch if there is one, else up to one batch from the front of the
    /// buffer (a new batch, with a new id).
    fn take_batch(&self) -> Batch {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner()).take();
        let batch = held.unwrap_or_else(|| {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            let n = queue.len().min(self.batch_rows);
            Batch::new(queue.drain(..n).collect())
        });
        self.in_flight
            .store(batch.rows.len() as u64, Ordering::Relaxed);
        batch
    }

    /// A batch written: its rows are no longer the writer's.
    fn written(&self, batch: &Batch) {
        self.in_flight.store(0, Ordering::Relaxed);
        let n = batch.rows.len() as u64;
        self.written.fetch_add(n, Ordering::Relaxed);
        if let Some(metric) = &self.written_metric {
            metric.inc_by(n);
        }
    }

    /// A batch that could not be written is held, to be written again first. The
    /// buffer may then hold up to one batch more than its bound until written: the
    /// rows already taken are not dropped for rows that came later.
    fn hold(&self, batch: Batch) {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = Some(batch);
        self.in_flight.store(0, Ordering::Relaxed);
    }

    /// A held batch, or a whole batch's rows in the buffer.
    fn has_full_batch(&self) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
            || self.queue.lock().unwrap_or_else(|e| e.into_inner()).len() >= self.batch_rows
    }

    fn is_empty(&self) -> bool {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
            && self
                .held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none()
    }
}

/// The writer task's settings.
struct Writer {
    shared: Arc<Shared>,
    budgets: Arc<budget::Budgets>,
    target: Target,
    max_connections: u32,
    interval: Duration,
    timeout: Duration,
    schema_ready: tokio::sync::watch::Sender<bool>,
}

impl Writer {
    async fn run(self) {
        let shared = &self.shared;
        let mut db: Option<(Db, RowSink)> = None;
        // PostgreSQL: this process's spend written since the shared budget figures
        // were last read (per group: USD, tokens).
        let mut written: HashMap<String, (f64, f64)> = HashMap::new();
        // Retry delay after a failure: doubles from 100 ms up to 5 s; 0 once it works.
        let mut backoff = Duration::ZERO;
        // PostgreSQL: when the ids of old batches were last forgotten.
        let mut forgotten_at = Instant::now();
        loop {
            if shared.stopping.load(Ordering::Acquire) && shared.is_empty() {
                break;
            }
            // Connected (and migrated) first, so that the schema is in place from
            // startup on when the database is up.
            let (database, sink) = match &db {
                Some((database, sink)) => (database, sink),
                None => match self.connect().await {
                    Ok((connected, sink)) => {
                        self.schema_ready.send_replace(true);
                        // The budgets' spend to date, before any row is written.
                        if let Err(e) = self.read_spend(&connected, &mut written).await {
                            let e = crate::config::strip_userinfo(&e);
                            UNREACHABLE.warn(|| {
                                format!("usage ledger: cannot read the spend to date ({e})")
                            });
                            connected.close().await;
                            backoff = next_backoff(backoff);
                            tokio::time::sleep(backoff).await;
                            continue;
                        }
                        tracing::info!("usage ledger: {} database ready", self.target.backend());
                        backoff = Duration::ZERO;
                        let (database, sink) = db.insert((connected, sink));
                        (&*database, &*sink)
                    }
                    Err(e) => {
                        let e = crate::config::strip_userinfo(&e);
                        UNREACHABLE.warn(|| {
                            format!(
                                "usage ledger: cannot open the {} database ({e}); rows wait \
                                 in memory (up to [database] buffer_rows)",
                                self.target.backend()
                            )
                        });
                        backoff = next_backoff(backoff);
                        // A stop does not cut the back-off short: retrying at once
                        // would only hammer a database that is down; the stop's
                        // flush deadline ends the task.
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                },
            };
            // A full batch, the interval, or the stop. A wake-up left over from a
            // batch already taken does not end the wait: under load every batch is
            // then a full one (each costs the database a transaction and several
            // round trips whatever its length).
            let deadline = tokio::time::Instant::now() + self.interval;
            while !shared.stopping.load(Ordering::Acquire) && !shared.has_full_batch() {
                if tokio::time::timeout_at(deadline, shared.wake.notified())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let mut failed = false;
            loop {
                let batch = shared.take_batch();
                if batch.rows.is_empty() {
                    shared.in_flight.store(0, Ordering::Relaxed);
                    break;
                }
                let n = batch.rows.len() as u64;
                let (batch, written_or_not) = sink.insert(batch, self.timeout).await;
                match written_or_not {
                    Ok(spent) => {
                        backoff = Duration::ZERO;
                        if database.is_shared() {
                            // Per group and managed key (`key:<id>`), as the
                            // insert added them to the figures.
                            for (name, usd, tokens) in spent {
                                let entry = written.entry(name).or_default();
                                entry.0 += usd;
                                entry.1 += tokens as f64;
                            }
                        }
                        shared.written(&batch);
                    }
                    Err(e) => {
                        shared.hold(batch);
                        let e = crate::config::strip_userinfo(&e);
                        UNREACHABLE.warn(|| {
                            format!(
                                "usage ledger: cannot write to the {} database ({e}); rows \
                                 wait in memory (up to [database] buffer_rows)",
                                self.target.backend()
                            )
                        });
                        failed = true;
                        break;
                    }
                }
                // Another batch at once only when it is a full one (or at the
                // stop); a partial one waits for the interval or more rows.
                if n < shared.batch_rows as u64
                    || !(shared.stopping.load(Ordering::Acquire) || shared.has_full_batch())
                {
                    break;
                }
            }
            if failed {
                backoff = next_backoff(backoff);
                tokio::time::sleep(backoff).await;
            } else if database.is_shared() && !shared.stopping.load(Ordering::Acquire) {
                if forgotten_at.elapsed() >= db::FORGET_BATCHES_EVERY {
                    forgotten_at = Instant::now();
                    if let Err(e) = database.forget_batches(budget_now(), self.timeout).await {
                        let e = crate::config::strip_userinfo(&e);
                        tracing::debug!("usage ledger: old batch ids not deleted ({e})");
                    }
                }
                // Every replica's spend, this one's just written included.
                if let Err(e) = self.read_spend(database, &mut written).await {
                    let e = crate::config::strip_userinfo(&e);
                    FIGURES.warn(|| {
                        format!(
                            "usage ledger: cannot read the shared budget figures ({e}); \
                             budgets count on with the last figures read"
                        )
                    });
                    backoff = next_backoff(backoff);
                    tokio::time::sleep(backoff).await;
                }
            }
        }
        if let Some((db, _)) = db {
            db.close().await;
        }
    }

    /// Connect and migrate; then the sink the rows are written through.
    async fn connect(&self) -> Result<(Db, RowSink), String> {
        let db = Db::connect(&self.target, self.max_connections, self.timeout).await?;
        match RowSink::open(&self.target, &db).await {
            Ok(sink) => Ok((db, sink)),
            Err(e) => {
                db.close().await;
                Err(e)
            }
        }
    }

    /// PostgreSQL: the shared budget figures (and this process's `written` spend
    /// leaves its own count). SQLite: once, the rows written before the start.
    async fn read_spend(
        &self,
        db: &Db,
        written: &mut HashMap<String, (f64, f64)>,
    ) -> Result<(), String> {
        if db.is_shared() {
            let figures = db.figures(budget_now(), self.timeout).await?;
            self.budgets.refreshed(figures, written);
            written.clear();
        } else if !self.budgets.is_loaded() {
            let figures = db.figures(self.budgets.start_ms, self.timeout).await?;
            self.budgets.loaded(figures);
        }
        Ok(())
    }
}

fn budget_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

/// The row of one request, waiting for its outcome.
pub struct PendingRow {
    ledger: Arc<Ledger>,
    hold: Option<budget::Hold>,
    started: Instant,
    row: Row,
}

impl PendingRow {
    /// The request failed before any byte of an answer.
    pub fn failed(self, error: &ApiError) {
        let code = error_code(error);
        self.finish(error.status().as_u16(), None, None, Some(code));
    }

    /// The client left before any byte of an answer (`499`, `client_disconnected`).
    pub fn abandoned(self) {
        self.finish(499, None, None, Some("client_disconnected".to_owned()));
    }

    /// A whole answer was sent.
    pub fn completed(self, usage: Option<TokenCounts>) {
        self.finish(200, usage, None, None);
    }

    /// Observe a stream's chunks: the first one's time, the last usage, an error;
    /// the row is written when the stream is dropped (its end, an error, or the
    /// client leaving).
    pub fn stream(self, chunks: PayloadStream) -> PayloadStream {
        Box::pin(LedgerStream {
            chunks,
            pending: Some(self),
            ttft: None,
            usage: None,
            error: None,
            ended: false,
        })
    }

    fn finish(
        mut self,
        status: u16,
        usage: Option<TokenCounts>,
        ttft: Option<Duration>,
        error_type: Option<String>,
    ) {
        let row = &mut self.row;
        row.status = i32::from(status);
        row.duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        row.ttft_ms = ttft.map(|t| t.as_secs_f64() * 1000.0);
        row.error_type = error_type;
        if let Some(usage) = usage {
            let count = |n: Option<u64>| n.map(|n| n.min(i64::MAX as u64) as i64);
            row.prompt_tokens = count(usage.prompt);
            row.completion_tokens = count(usage.completion);
            row.cached_tokens = count(usage.cached);
            row.reasoning_tokens = count(usage.reasoning);
            let tokens = Tokens {
                prompt: usage.prompt.unwrap_or(0),
                completion: usage.completion.unwrap_or(0),
                cached: usage.cached.unwrap_or(0),
            };
            let models = [
                row.model.as_deref().unwrap_or(""),
                row.requested_model.as_deref().unwrap_or(""),
            ];
            row.cost_usd = self.ledger.prices.load().cost(&models, tokens);
        }
        if let Some(hold) = self.hold.take() {
            let tokens = row.prompt_tokens.unwrap_or(0) + row.completion_tokens.unwrap_or(0);
            hold.settle(row.cost_usd, tokens.max(0) as u64);
        }
        self.ledger.push(self.row);
    }
}

/// The `code` of an error's OpenAI object, or its `type` when it has none (an
/// upstream's own code may be anything: at most 100 characters are kept).
fn error_code(error: &ApiError) -> String {
    let object = error.error_object();
    object
        .get("code")
        .and_then(|c| c.as_str())
        .or_else(|| object.get("type").and_then(|t| t.as_str()))
        .unwrap_or("error")
        .chars()
        .take(100)
        .collect()
}

/// A stream's chunks on their way to the client, watched for the ledger.
struct LedgerStream {
    chunks: PayloadStream,
    pending: Option<PendingRow>,
    ttft: Option<Duration>,
    usage: Option<TokenCounts>,
    error: Option<String>,
    ended: bool,
}

impl Stream for LedgerStream {
    type Item = Result<Payload, ApiError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let item = this.chunks.as_mut().poll_next(cx);
        match &item {
            Poll::Pending => {}
            Poll::Ready(Some(Ok(chunk))) => {
                if this.ttft.is_none() {
                    if let Some(pending) = &this.pending {
                        this.ttft = Some(pending.started.elapsed());
                    }
                }
                if let Some(usage) = chunk.usage() {
                    this.usage = Some(usage);
                }
            }
            Poll::Ready(Some(Err(error))) => {
                this.error.get_or_insert_with(|| error_code(error));
            }
            Poll::Ready(None) => this.ended = true,
        }
        item
    }
}

impl Drop for LedgerStream {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            let error = self
                .error
                .take()
                .or_else(|| (!self.ended).then(|| "client_disconnected".to_owned()));
            pending.finish(200, self.usage, self.ttft, error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> DatabaseConfig {
        serde_json::from_value(serde_json::json!({ "url": url })).unwrap()
    }

    #[test]
    fn urls_are_checked_and_name_the_key() {
        let file = Path::new("/etc/lm/config.toml");
        config("sqlite://usage.db").check(file).unwrap();
        config("postgres://u:p@db:5432/lm").check(file).unwrap();
        for (url, problem) in [
            ("mysql://x", "must start with sqlite://"),
            ("sqlite://", "needs a file path"),
        ] {
            let err = config(url).check(file).unwrap_err().to_string();
            assert!(err.contains("database.url"), "{err}");
            assert!(err.contains(problem), "{err}");
        }
        let err = config("postgres://user:secret@db:notaport/x")
            .check(file)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
        let defaults: DatabaseConfig = serde_json::from_value(serde_json::json!({})).unwrap();
        assert!(matches!(defaults.target(file).unwrap(), Target::Sqlite(_)));
        let big: DatabaseConfig =
            serde_json::from_value(serde_json::json!({ "batch_rows": 20_000 })).unwrap();
        let err = big.check(file).unwrap_err().to_string();
        assert!(err.contains("database.batch_rows"), "{err}");
    }

    #[test]
    fn usage_details_are_read_alike_from_trees_and_raw_text() {
        let text = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2,"x":[1]}}}"#;
        let top = crate::json_scan::scan_object(text).unwrap();
        let expected = TokenCounts {
            prompt: Some(10),
            completion: Some(5),
            cached: Some(4),
            reasoning: Some(2),
        };
        assert_eq!(top.usage, crate::json_scan::Shape::Expected(expected));
        let tree: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(TokenCounts::of(&tree["usage"]), expected);
    }
}
