//! The ledger's database: SQLite or PostgreSQL through sqlx, one pool behind an
//! enum (sqlx's `Any` driver would hide the types both backends share anyway, and
//! the SQL of the migrations differs). Migrations live in `migrations/<backend>/`,
//! are embedded in the binary and applied on the first connection (sqlx's
//! `_sqlx_migrations` table keeps track of them).
//!
//! The ledger's rows go through a [`RowSink`]: PostgreSQL's is the pool; SQLite's
//! is one rusqlite connection of its own, used on tokio's blocking threads, so
//! that each value is bound straight from the row (sqlx copies every argument to
//! hand it to its worker thread, which cost as much CPU as SQLite's own insert).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use super::Row;

/// SQLite's insert of one row (`?` placeholders, [`INSERT`]'s column order): one
/// prepared statement run once per row inside the batch's transaction, which is
/// what SQLite does with a multi-row `VALUES` too, without binding 19 x N values
/// to a statement first.
fn sqlite_insert() -> &'static str {
    static STATEMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    STATEMENT.get_or_init(|| {
        let placeholders = vec!["?"; COLUMNS].join(", ");
        format!("{INSERT}VALUES ({placeholders})")
    })
}

/// Embedded migrations: (version, description, SQL) per backend.
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "usage ledger",
        include_str!("../../migrations/sqlite/0001_usage_ledger.sql"),
    ),
    (
        2,
        "ledger indexes",
        include_str!("../../migrations/sqlite/0002_ledger_indexes.sql"),
    ),
    (
        3,
        "budget usage",
        include_str!("../../migrations/sqlite/0003_budget_usage.sql"),
    ),
    // Managed keys (usage::keys); version 10 leaves 2-9 to the ledger's own.
    (
        10,
        "managed keys",
        include_str!("../../migrations/sqlite/0010_managed_keys.sql"),
    ),
];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "usage ledger",
        include_str!("../../migrations/postgres/0001_usage_ledger.sql"),
    ),
    (
        2,
        "budget usage",
        include_str!("../../migrations/postgres/0002_budget_usage.sql"),
    ),
    (
        3,
        "ledger indexes",
        include_str!("../../migrations/postgres/0003_ledger_indexes.sql"),
    ),
    // Managed keys (usage::keys); version 10 leaves 2-9 to the ledger's own.
    (
        10,
        "managed keys",
        include_str!("../../migrations/postgres/0010_managed_keys.sql"),
    ),
];

#[derive(Debug)]
struct Embedded(&'static [(i64, &'static str, &'static str)]);

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> futures_util::future::BoxFuture<'s, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        let migrations = self
            .0
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    Cow::Borrowed(*sql),
                    false,
                )
            })
            .collect();
        Box::pin(async move { Ok(migrations) })
    }
}

/// Where the ledger goes, parsed from `[database] url` (checked at config load).
#[derive(Debug, Clone)]
pub enum Target {
    Sqlite(SqliteConnectOptions),
    Postgres(PgConnectOptions),
}

impl Target {
    /// Parse a URL with a `sqlite://` or `postgres://` (`postgresql://`) scheme. A
    /// relative SQLite path is taken from `base` (the config file's folder).
    pub fn parse(url: &str, base: &std::path::Path) -> Result<Target, String> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err("a sqlite URL needs a file path: sqlite://lm-proxy.db".into());
            }
            let path = base.join(path);
            let options = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                // Readers never wait on the writer; one fsync per batch.
                .journal_mode(SqliteJournalMode::Wal)
                // WAL's usual pairing: a commit is not synced to disk at once
                // (the database stays consistent; a power cut may lose the last
                // batches), which a ledger written every second can afford.
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(SQLITE_BUSY_TIMEOUT);
            Ok(Target::Sqlite(options))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).map_err(|e| {
                crate::config::error::strip_userinfo(&format!("not a valid PostgreSQL URL: {e}"))
            })?;
            Ok(Target::Postgres(options.application_name("lm-proxy")))
        } else {
            Err(
                "must start with sqlite:// (a file beside the config) or postgres:// (a server)"
                    .into(),
            )
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Target::Sqlite(_) => "sqlite",
            Target::Postgres(_) => "postgres",
        }
    }
}

/// A connected, migrated database.
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Db {
    /// Connect (one attempt, bounded by `timeout`) and apply the migrations.
    pub async fn connect(
        target: &Target,
        max_connections: u32,
        timeout: Duration,
    ) -> Result<Db, String> {
        let attempt = async {
            match target {
                Target::Sqlite(options) => {
                    let pool = SqlitePoolOptions::new()
                        .max_connections(max_connections)
                        .acquire_timeout(timeout)
                        .connect_with(options.clone())
                        .await
                        .map_err(|e| e.to_string())?;
                    migrator(SQLITE_MIGRATIONS)
                        .await?
                        .run(&pool)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(Db::Sqlite(pool))
                }
                Target::Postgres(options) => {
                    let pool = PgPoolOptions::new()
                        .max_connections(max_connections)
                        .acquire_timeout(timeout)
                        .connect_with(options.clone())
                        .await
                        .map_err(|e| e.to_string())?;
                    migrator(POSTGRES_MIGRATIONS)
                        .await?
                        .run(&pool)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(Db::Postgres(pool))
                }
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    /// The `budget_usage` figures of the periods holding `now` (Unix ms): per
    /// group and managed key, (period start, USD, tokens).
    pub async fn figures(
        &self,
        now: i64,
        timeout: Duration,
    ) -> Result<super::budget::Before, String> {
        use super::budget::Period;
        let start = |p: Period| p.bounds(now).0;
        let read = async {
            match self {
                Db::Sqlite(pool) => {
                    sqlx::query_as::<_, (String, String, i64, f64, f64)>(&sqlite_sql(FIGURES))
                        .bind(start(Period::Day))
                        .bind(start(Period::Week))
                        .bind(start(Period::Month))
                        .fetch_all(pool)
                        .await
                }
                Db::Postgres(pool) => {
                    sqlx::query_as::<_, (String, String, i64, f64, f64)>(FIGURES)
                        .bind(start(Period::Day))
                        .bind(start(Period::Week))
                        .bind(start(Period::Month))
                        .fetch_all(pool)
                        .await
                }
            }
        };
        let rows = match tokio::time::timeout(timeout, read).await {
            Ok(rows) => rows.map_err(|e| e.to_string())?,
            Err(_) => return Err(format!("no answer within {timeout:?}")),
        };
        let mut figures = super::budget::Before::new();
        for (name, period, period_start, usd, tokens) in rows {
            if let Some(period) = Period::from_name(&period) {
                figures.insert((period, name), (period_start, usd, tokens));
            }
        }
        Ok(figures)
    }

    /// PostgreSQL: delete the ids of the batches written more than
    /// [`BATCH_IDS_KEPT_MS`] before `now` (Unix ms).
    pub async fn forget_batches(&self, now: i64, timeout: Duration) -> Result<(), String> {
        let Db::Postgres(pool) = self else {
            return Ok(());
        };
        let before = format!("{:013}", now - BATCH_IDS_KEPT_MS);
        let delete = sqlx::query("DELETE FROM ledger_batches WHERE id < $1")
            .bind(before)
            .execute(pool);
        match tokio::time::timeout(timeout, delete).await {
            Ok(result) => result.map(drop).map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    pub fn is_shared(&self) -> bool {
        matches!(self, Db::Postgres(_))
    }

    pub async fn close(&self) {
        match self {
            Db::Sqlite(pool) => pool.close().await,
            Db::Postgres(pool) => pool.close().await,
        }
    }
}

/// SQL written with PostgreSQL's `$N` for SQLite (`?N`); no `$` stands in the
/// queries' text otherwise.
pub(crate) fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

/// How long a write waits on another connection's lock (another replica on the
/// same file, the command line) before it fails and the batch is tried again.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long PostgreSQL keeps the id of a batch written: a batch is retried as
/// long as its write fails, and a retry after a write whose answer was lost must
/// find the id. Hours: far longer than any retry of a database that answers.
const BATCH_IDS_KEPT_MS: i64 = 6 * 3_600_000;
/// How often a replica deletes the ids older than that.
pub const FORGET_BATCHES_EVERY: Duration = Duration::from_secs(600);

/// A batch of rows and its id. A batch that failed is written again as it was,
/// under the same id, so that PostgreSQL can tell a second write of a batch whose
/// first write went through (its answer lost to a timeout or a broken connection,
/// or the first still running) and add nothing: one unique id per batch in
/// `ledger_batches` instead of a unique index on every row's `request_id`.
pub struct Batch {
    /// Unix ms (13 digits, so that ids sort by time), `-`, 16 random hex digits.
    pub id: String,
    pub rows: Vec<Row>,
}

impl Batch {
    pub fn new(rows: Vec<Row>) -> Batch {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Batch {
            id: format!("{now:013}-{:016x}", rand::random::<u64>()),
            rows,
        }
    }
}

/// Where the ledger's batches are written (see the module's notes).
pub enum RowSink {
    /// A connection of its own to the ledger's file, used by one blocking thread
    /// at a time.
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
    /// The pool's connections.
    Postgres(PgPool),
}

impl RowSink {
    /// The sink for `db`, connected and migrated from `target`.
    pub async fn open(target: &Target, db: &Db) -> Result<RowSink, String> {
        match (target, db) {
            (Target::Sqlite(options), Db::Sqlite(_)) => {
                let path = options.get_filename().to_owned();
                let connection = tokio::task::spawn_blocking(move || open_sqlite_writer(&path))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                Ok(RowSink::Sqlite(Arc::new(Mutex::new(connection))))
            }
            (Target::Postgres(_), Db::Postgres(pool)) => Ok(RowSink::Postgres(pool.clone())),
            _ => Err("the database is not the configured one".into()),
        }
    }

    /// Write a batch, in one transaction. The batch comes back with the outcome
    /// (held and written again as it is on failure); written, with what it added to
    /// the budgets' figures.
    pub async fn insert(
        &self,
        batch: Batch,
        timeout: Duration,
    ) -> (Batch, Result<BatchSpend, String>) {
        let Batch { id, rows } = batch;
        let (rows, result) = self.insert_rows(&id, rows, timeout).await;
        (Batch { id, rows }, result)
    }

    async fn insert_rows(
        &self,
        batch_id: &str,
        rows: Vec<Row>,
        timeout: Duration,
    ) -> (Vec<Row>, Result<BatchSpend, String>) {
        let additions = budget_additions(&rows);
        let spend = batch_spend(&additions);
        match self {
            // No timeout: abandoning a write whose COMMIT is already running could
            // commit it anyway, and the retry would write the rows twice (SQLite's
            // schema has no unique request_id to stop that, see its migration).
            // Lock waits are bounded by the busy timeout.
            RowSink::Sqlite(connection) => {
                let connection = connection.clone();
                let rows = Arc::new(rows);
                let written = tokio::task::spawn_blocking({
                    let rows = rows.clone();
                    move || {
                        let mut connection = connection.lock().unwrap_or_else(|e| e.into_inner());
                        write_sqlite(&mut connection, &rows, &additions)
                    }
                })
                .await;
                let result = match written {
                    Ok(result) => result.map(|()| spend).map_err(|e| e.to_string()),
                    // A panic rolled the transaction back (its drop): nothing written.
                    Err(e) => Err(format!("the writing thread failed: {e}")),
                };
                // The thread's handle on the rows is gone once it has ended.
                (Arc::unwrap_or_clone(rows), result)
            }
            // One transaction per batch: the batch's id, then (only when the id is
            // new) its rows in one binary COPY and its spend added to the figures.
            // COPY costs the server about 60 % of the CPU per row of an INSERT
            // from arrays (no array decoding, no UNNEST, no tuple store).
            RowSink::Postgres(pool) => {
                let write = async {
                    let mut transaction = pool.begin().await?;
                    let new_batch = sqlx::query(POSTGRES_NEW_BATCH)
                        .bind(batch_id)
                        .fetch_optional(&mut *transaction)
                        .await?
                        .is_some();
                    if new_batch {
                        let mut copy = transaction.copy_in_raw(POSTGRES_COPY).await?;
                        copy.send(copy_binary(&rows)).await?;
                        copy.finish().await?;
                        sqlx::query(POSTGRES_BUDGET_USAGE)
                            .bind(
                                additions
                                    .keys()
                                    .map(|k| k.0.as_str())
                                    .collect::<Vec<&str>>(),
                            )
                            .bind(additions.keys().map(|k| k.1).collect::<Vec<&str>>())
                            .bind(additions.keys().map(|k| k.2).collect::<Vec<i64>>())
                            .bind(additions.values().map(|v| v.0).collect::<Vec<f64>>())
                            .bind(additions.values().map(|v| v.1).collect::<Vec<i64>>())
                            .execute(&mut *transaction)
                            .await?;
                    }
                    transaction.commit().await
                };
                let result = match tokio::time::timeout(timeout, write).await {
                    Ok(result) => result
                        .map(|()| spend)
                        .map_err(|e: sqlx::Error| e.to_string()),
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                };
                (rows, result)
            }
        }
    }
}

/// The ledger's own SQLite connection: the file exists and is migrated (sqlx's
/// pool did that, and set WAL mode, which the file keeps).
fn open_sqlite_writer(path: &std::path::Path) -> rusqlite::Result<rusqlite::Connection> {
    let connection = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(SQLITE_BUSY_TIMEOUT)?;
    // As the pool's connections (see `Target::parse`): a setting per connection.
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(connection)
}

/// SQLite's addition of a batch's spend to `budget_usage` (one statement per
/// name, period and period start in the batch).
const SQLITE_BUDGET_USAGE: &str = "INSERT INTO budget_usage (group_name, period, period_start, \
    usd, tokens) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (group_name, period, period_start) \
    DO UPDATE SET usd = usd + excluded.usd, tokens = tokens + excluded.tokens";

/// A batch's spend per budget name (a group, or `key:` and a managed key's id) and
/// UTC day: a batch mostly holds one day, so the periods are worked out once per
/// name and day rather than per row.
fn spend_by_day(rows: &[Row]) -> hashbrown::HashMap<(bool, &str, i64), (f64, i64)> {
    // foldhash: one lookup per row of every batch.
    let mut spend = hashbrown::HashMap::<(bool, &str, i64), (f64, i64)>::new();
    for row in rows {
        let day = row.created_at_ms.div_euclid(DAY_MS);
        let tokens = row.prompt_tokens.unwrap_or(0) + row.completion_tokens.unwrap_or(0);
        let group = row.group.as_deref().map(|g| (false, g));
        let key = row
            .api_key_id
            .as_deref()
            .filter(|id| id.starts_with("key_"))
            .map(|id| (true, id));
        for (is_key, name) in group.into_iter().chain(key) {
            let entry = spend.entry((is_key, name, day)).or_default();
            entry.0 += row.cost_usd;
            entry.1 += tokens;
        }
    }
    spend
}

const DAY_MS: i64 = 86_400_000;

/// The budget name of a [`spend_by_day`] entry: the group's, or `key:<id>`.
fn budget_name(is_key: bool, name: &str) -> String {
    if is_key {
        format!("{}{name}", super::budget::KEY_PREFIX)
    } else {
        name.to_owned()
    }
}

/// What a batch adds to `budget_usage`: (name, period, period start) → (USD,
/// tokens), in key order (two PostgreSQL replicas' batches then lock the figures
/// they share in the same order).
type Additions = BTreeMap<(String, &'static str, i64), (f64, i64)>;

/// What a written batch added to the budgets: (budget name, USD, tokens).
pub type BatchSpend = Vec<(String, f64, i64)>;

fn budget_additions(rows: &[Row]) -> Additions {
    let mut additions = Additions::new();
    for ((is_key, name, day), (usd, tokens)) in spend_by_day(rows) {
        let name = budget_name(is_key, name);
        for period in super::budget::PERIODS {
            let start = period.bounds(day * DAY_MS).0;
            let entry = additions
                .entry((name.clone(), period.name(), start))
                .or_default();
            entry.0 += usd;
            entry.1 += tokens;
        }
    }
    additions
}

/// A batch's spend per budget name: its additions to the `total` period, which
/// every row counts in once.
fn batch_spend(additions: &Additions) -> BatchSpend {
    additions
        .iter()
        .filter(|((_, period, _), _)| *period == super::budget::Period::Total.name())
        .map(|((name, _, _), &(usd, tokens))| (name.clone(), usd, tokens))
        .collect()
}

/// Run [`sqlite_insert`] for one row.
fn insert_sqlite_row(insert: &mut rusqlite::Statement<'_>, row: &Row) -> rusqlite::Result<usize> {
    insert.execute(rusqlite::params![
        row.created_at_ms,
        row.request_id,
        row.api_key_id,
        row.key_name,
        row.group,
        row.connection,
        row.requested_model,
        row.model,
        row.door,
        row.status,
        row.stream,
        row.prompt_tokens,
        row.completion_tokens,
        row.cached_tokens,
        row.reasoning_tokens,
        row.cost_usd,
        row.duration_ms,
        row.ttft_ms,
        row.error_type,
    ])
}

/// One batch in one transaction, taking the write lock first (a deferred one that
/// upgrades could fail at once instead of waiting when another writer is active).
fn write_sqlite(
    connection: &mut rusqlite::Connection,
    rows: &[Row],
    additions: &Additions,
) -> rusqlite::Result<()> {
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut insert = transaction.prepare_cached(sqlite_insert())?;
        for row in rows {
            insert_sqlite_row(&mut insert, row)?;
        }
        // The budgets' figures, in the same transaction: a restart reads them
        // instead of summing the ledger's rows.
        let mut add = transaction.prepare_cached(SQLITE_BUDGET_USAGE)?;
        for ((name, period, start), (usd, tokens)) in additions {
            add.execute(rusqlite::params![name, period, start, usd, tokens])?;
        }
    }
    transaction.commit()
}

async fn migrator(set: &'static [(i64, &'static str, &'static str)]) -> Result<Migrator, String> {
    Migrator::new(Embedded(set))
        .await
        .map_err(|e| e.to_string())
}

const INSERT: &str = "INSERT INTO usage_ledger (created_at, request_id, api_key_id, key_name, \
    group_name, connection, requested_model, model, door, status, stream, prompt_tokens, \
    completion_tokens, cached_tokens, reasoning_tokens, cost_usd, duration_ms, ttft_ms, error_type) ";

/// PostgreSQL's addition of a batch's spend to `budget_usage` per group and per
/// managed key (`key:<id>`, `budget::KEY_PREFIX`), worked out here
/// ([`budget_additions`], in key order).
const POSTGRES_BUDGET_USAGE: &str = "INSERT INTO budget_usage (group_name, period, \
    period_start, usd, tokens) SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], \
    $4::DOUBLE PRECISION[], $5::BIGINT[]) \
    ON CONFLICT (group_name, period, period_start) DO UPDATE SET \
    usd = budget_usage.usd + EXCLUDED.usd, tokens = budget_usage.tokens + EXCLUDED.tokens";

/// The figures of the current periods (`$1`..`$3`: the day's, week's and month's
/// starts).
const FIGURES: &str = "SELECT group_name, period, period_start, usd, \
    CAST(tokens AS DOUBLE PRECISION) FROM budget_usage WHERE (period = 'day' AND period_start = $1) \
    OR (period = 'week' AND period_start = $2) OR (period = 'month' AND period_start = $3) \
    OR period = 'total'";

/// A PostgreSQL batch's id, added in the batch's transaction: a row back when it
/// is new. A batch written twice (its first write timed out after the database
/// took it) adds nothing the second time: its id is in `ledger_batches` already,
/// or is being added by the first write still running, which this one then waits
/// for.
const POSTGRES_NEW_BATCH: &str =
    "INSERT INTO ledger_batches (id) VALUES ($1) ON CONFLICT (id) DO NOTHING RETURNING id";

/// PostgreSQL's load of a batch's rows ([`copy_binary`] encodes them, in
/// [`INSERT`]'s column order).
const POSTGRES_COPY: &str = "COPY usage_ledger (created_at, request_id, api_key_id, key_name, \
    group_name, connection, requested_model, model, door, status, stream, prompt_tokens, \
    completion_tokens, cached_tokens, reasoning_tokens, cost_usd, duration_ms, ttft_ms, \
    error_type) FROM STDIN (FORMAT BINARY)";

/// Rows in PostgreSQL's binary COPY format: a signature and two zero words, then
/// per row the field count and each field as its length (-1 for NULL) and its
/// bytes in network order; -1 at the end.
fn copy_binary(rows: &[Row]) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    fn null(out: &mut Vec<u8>) {
        out.extend_from_slice(&(-1i32).to_be_bytes());
    }
    // PostgreSQL's text cannot hold NUL: a NUL in an upstream's error code or a
    // key check's name would fail the batch on every retry and stop the ledger.
    fn text(out: &mut Vec<u8>, value: Option<&str>) {
        match value {
            None => null(out),
            Some(value) if value.contains('\0') => {
                field(out, value.replace('\0', "\u{FFFD}").as_bytes())
            }
            Some(value) => field(out, value.as_bytes()),
        }
    }
    fn int8(out: &mut Vec<u8>, value: Option<i64>) {
        match value {
            None => null(out),
            Some(value) => field(out, &value.to_be_bytes()),
        }
    }
    fn float8(out: &mut Vec<u8>, value: Option<f64>) {
        match value {
            None => null(out),
            Some(value) => field(out, &value.to_be_bytes()),
        }
    }
    let mut out = Vec::with_capacity(19 + rows.len() * 300 + 2);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&[0; 8]);
    for row in rows {
        out.extend_from_slice(&(COLUMNS as i16).to_be_bytes());
        int8(&mut out, Some(row.created_at_ms));
        text(&mut out, Some(&row.request_id));
        text(&mut out, row.api_key_id.as_deref());
        text(&mut out, row.key_name.as_deref());
        text(&mut out, row.group.as_deref());
        text(&mut out, row.connection.as_deref());
        text(&mut out, row.requested_model.as_deref());
        text(&mut out, row.model.as_deref());
        text(&mut out, Some(row.door));
        field(&mut out, &row.status.to_be_bytes());
        field(&mut out, &[u8::from(row.stream)]);
        int8(&mut out, row.prompt_tokens);
        int8(&mut out, row.completion_tokens);
        int8(&mut out, row.cached_tokens);
        int8(&mut out, row.reasoning_tokens);
        float8(&mut out, Some(row.cost_usd));
        float8(&mut out, Some(row.duration_ms));
        float8(&mut out, row.ttft_ms);
        text(&mut out, row.error_type.as_deref());
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// Columns per row in [`INSERT`].
pub const COLUMNS: usize = 19;

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(connection: &rusqlite::Connection, versions: &[i64]) {
        for (version, _, sql) in SQLITE_MIGRATIONS {
            if versions.contains(version) {
                connection.execute_batch(sql).unwrap();
            }
        }
    }

    fn figures(connection: &rusqlite::Connection) -> Vec<(String, String, i64, f64, i64)> {
        let mut read = connection
            .prepare("SELECT * FROM budget_usage ORDER BY 1, 2, 3")
            .unwrap();
        let rows = read
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap();
        rows.map(Result::unwrap).collect()
    }

    /// SQLite's `budget_usage` as the writer keeps it equals what the migration
    /// that made it sums from the rows already written: the same period starts
    /// (budget::Period::bounds and the migration's SQL) around days, weeks from
    /// Monday, months, leap days and years.
    #[test]
    fn sqlite_figures_written_equal_figures_migrated() {
        let times = [
            0,                 // 1970-01-01, a Thursday
            951_782_400_000,   // 2000-02-29 00:00
            951_868_799_999,   // 2000-02-29 23:59:59.999
            1_764_460_799_999, // 2025-11-29 23:59:59.999, a Saturday
            1_764_547_200_000, // 2025-12-01 00:00, a Monday
            1_798_761_599_999, // 2026-12-31 23:59:59.999
            1_798_761_600_000, // 2027-01-01 00:00
        ];
        let rows: Vec<Row> = times
            .iter()
            .enumerate()
            .flat_map(|(i, &at)| {
                let row = move |group: Option<&str>, key: &str| Row {
                    created_at_ms: at,
                    request_id: format!("r{i}-{key}"),
                    api_key_id: Some(key.to_owned()),
                    group: group.map(str::to_owned),
                    door: "chat/completions",
                    prompt_tokens: Some(10 + i as i64),
                    completion_tokens: Some(1),
                    cost_usd: 0.25 * (i + 1) as f64,
                    ..Row::default()
                };
                [
                    row(Some("team"), "0123abcd"),
                    row(Some("team"), "key_00000000000000aa"),
                    row(None, "key_00000000000000bb"),
                ]
            })
            .collect();

        let mut written = rusqlite::Connection::open_in_memory().unwrap();
        apply(&written, &[1, 2, 3, 10]);
        for part in [&rows[..9], &rows[9..]] {
            write_sqlite(&mut written, part, &budget_additions(part)).unwrap();
        }

        let migrated = rusqlite::Connection::open_in_memory().unwrap();
        apply(&migrated, &[1, 2]);
        {
            let mut insert = migrated.prepare(sqlite_insert()).unwrap();
            for row in &rows {
                insert_sqlite_row(&mut insert, row).unwrap();
            }
        }
        apply(&migrated, &[3]);

        let (written, migrated) = (figures(&written), figures(&migrated));
        assert_eq!(written, migrated);
        // Every name and period: the group, both managed keys, not the config key.
        let names: std::collections::BTreeSet<&str> =
            written.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            [
                "key:key_00000000000000aa",
                "key:key_00000000000000bb",
                "team"
            ]
        );
        let total = written
            .iter()
            .find(|f| f.0 == "team" && f.1 == "total")
            .unwrap();
        assert_eq!((total.3, total.4), (0.25 * 28.0 * 2.0, 2 * (7 * 11 + 21)));
        let months: Vec<i64> = written
            .iter()
            .filter(|f| f.0 == "team" && f.1 == "month")
            .map(|f| f.2)
            .collect();
        // 1970-01, 2000-02, 2025-11, 2025-12, 2026-12, 2027-01.
        assert_eq!(
            months,
            [
                0,
                949_363_200_000,
                1_761_955_200_000,
                1_764_547_200_000,
                1_796_083_200_000,
                1_798_761_600_000
            ]
        );
    }

    #[test]
    fn statements_have_one_placeholder_per_value() {
        assert_eq!(sqlite_insert().matches('?').count(), COLUMNS);
        assert_eq!(POSTGRES_COPY.matches(',').count() + 1, COLUMNS);
        assert!(POSTGRES_COPY.starts_with(INSERT.replace("INSERT INTO", "COPY").trim_end()));
    }
}
