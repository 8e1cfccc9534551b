//! The ledger's database: SQLite or PostgreSQL through sqlx, one pool behind an
//! enum (sqlx's `Any` driver would hide the types both backends share anyway, and
//! the SQL of the migrations differs). Migrations live in `migrations/<backend>/`,
//! are embedded in the binary and applied on the first connection (sqlx's
//! `_sqlx_migrations` table keeps track of them).

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use super::Row;

/// Bind one row's values, in [`INSERT`]'s column order, to either backend's query.
/// Strings are bound by reference: the rows outlive the statement.
macro_rules! bind_row {
    ($query:expr, $row:expr) => {{
        let row: &Row = $row;
        $query
            .bind(row.created_at_ms)
            .bind(row.request_id.as_str())
            .bind(row.api_key_id.as_deref())
            .bind(row.key_name.as_deref())
            .bind(row.group.as_deref())
            .bind(row.connection.as_deref())
            .bind(row.requested_model.as_deref())
            .bind(row.model.as_deref())
            .bind(row.door)
            .bind(row.status)
            .bind(row.stream)
            .bind(row.prompt_tokens)
            .bind(row.completion_tokens)
            .bind(row.cached_tokens)
            .bind(row.reasoning_tokens)
            .bind(row.cost_usd)
            .bind(row.duration_ms)
            .bind(row.ttft_ms)
            .bind(row.error_type.as_deref())
    }};
}

/// The sizes of the statements a batch is written with, largest first: a batch of
/// any length is cut into pieces of these sizes, so that only these few statements
/// exist and each is prepared once per connection and then reused (a statement
/// for every batch length was parsed anew nearly every time: SQLite's parser was a
/// fifth of the ledger's cost per row).
const STATEMENT_ROWS: [usize; 4] = [128, 16, 4, 1];

/// `batch` cut into pieces of the [`STATEMENT_ROWS`] sizes.
fn pieces(batch: &[Row]) -> impl Iterator<Item = &[Row]> {
    let mut rest = batch;
    std::iter::from_fn(move || {
        let size = *STATEMENT_ROWS.iter().find(|&&n| n <= rest.len())?;
        let (piece, tail) = rest.split_at(size);
        rest = tail;
        Some(piece)
    })
}

/// SQLite's insert of `rows` rows (`?` placeholders).
fn insert_sql(rows: usize) -> String {
    let mut sql = String::with_capacity(INSERT.len() + rows * COLUMNS * 3 + 16);
    sql.push_str(INSERT);
    sql.push_str("VALUES ");
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..COLUMNS {
            sql.push_str(if column == 0 { "?" } else { ", ?" });
        }
        sql.push(')');
    }
    sql
}

/// [`insert_sql`] for each of the [`STATEMENT_ROWS`] sizes, made once.
fn statement(rows: usize) -> &'static str {
    static STATEMENTS: std::sync::OnceLock<[String; 4]> = std::sync::OnceLock::new();
    let at = STATEMENT_ROWS
        .iter()
        .position(|&n| n == rows)
        .expect("pieces have the sizes of STATEMENT_ROWS");
    &STATEMENTS.get_or_init(|| STATEMENT_ROWS.map(insert_sql))[at]
}

/// [`POSTGRES_INSERT`] and [`POSTGRES_BUDGET_USAGE`], joined once.
fn postgres_insert() -> &'static str {
    static STATEMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    STATEMENT.get_or_init(|| format!("{POSTGRES_INSERT}{POSTGRES_BUDGET_USAGE}"))
}

/// Embedded migrations: (version, description, SQL) per backend.
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "usage ledger",
        include_str!("../../migrations/sqlite/0001_usage_ledger.sql"),
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
                .busy_timeout(Duration::from_secs(5));
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

    /// Insert a batch: SQLite in one transaction, as pieces of the
    /// [`STATEMENT_ROWS`] sizes (prepared statements reused from one batch to the
    /// next); PostgreSQL in one statement of arrays.
    pub async fn insert(&self, rows: &[Row], timeout: Duration) -> Result<(), String> {
        match self {
            // No timeout: abandoning a write whose COMMIT is already running in
            // sqlx's SQLite thread could commit it anyway, and the retry would write
            // the rows twice (SQLite's schema has no unique request_id to stop that,
            // see its migration). Lock waits are bounded by the busy timeout.
            Db::Sqlite(pool) => {
                let write = async {
                    let mut transaction = pool.begin().await?;
                    for piece in pieces(rows) {
                        let mut query = sqlx::query(statement(piece.len()));
                        for row in piece {
                            query = bind_row!(query, row);
                        }
                        query.execute(&mut *transaction).await?;
                    }
                    transaction.commit().await
                };
                write.await.map_err(|e: sqlx::Error| e.to_string())
            }
            // One statement per batch, whatever its length: each column goes as one
            // array parameter and UNNEST turns them back into rows, so the budget
            // figures are updated once per batch (pieces of fixed sizes made the
            // database run that upsert once per piece).
            Db::Postgres(pool) => {
                let write = async {
                    let column = |f: &dyn Fn(&Row) -> Option<&str>| -> Vec<Option<&str>> {
                        rows.iter().map(f).collect()
                    };
                    sqlx::query(postgres_insert())
                        .bind(rows.iter().map(|r| r.created_at_ms).collect::<Vec<i64>>())
                        .bind(
                            rows.iter()
                                .map(|r| r.request_id.as_str())
                                .collect::<Vec<&str>>(),
                        )
                        .bind(column(&|r| r.api_key_id.as_deref()))
                        .bind(column(&|r| r.key_name.as_deref()))
                        .bind(column(&|r| r.group.as_deref()))
                        .bind(column(&|r| r.connection.as_deref()))
                        .bind(column(&|r| r.requested_model.as_deref()))
                        .bind(column(&|r| r.model.as_deref()))
                        .bind(rows.iter().map(|r| r.door).collect::<Vec<&str>>())
                        .bind(rows.iter().map(|r| r.status).collect::<Vec<i32>>())
                        .bind(rows.iter().map(|r| r.stream).collect::<Vec<bool>>())
                        .bind(rows.iter().map(|r| r.prompt_tokens).collect::<Vec<_>>())
                        .bind(rows.iter().map(|r| r.completion_tokens).collect::<Vec<_>>())
                        .bind(rows.iter().map(|r| r.cached_tokens).collect::<Vec<_>>())
                        .bind(rows.iter().map(|r| r.reasoning_tokens).collect::<Vec<_>>())
                        .bind(rows.iter().map(|r| r.cost_usd).collect::<Vec<f64>>())
                        .bind(rows.iter().map(|r| r.duration_ms).collect::<Vec<f64>>())
                        .bind(rows.iter().map(|r| r.ttft_ms).collect::<Vec<_>>())
                        .bind(column(&|r| r.error_type.as_deref()))
                        .execute(pool)
                        .await
                        .map(drop)
                };
                match tokio::time::timeout(timeout, write).await {
                    Ok(result) => result.map_err(|e: sqlx::Error| e.to_string()),
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                }
            }
        }
    }

    /// Per group, the USD and tokens (prompt + completion) of the rows from each
    /// period's start to `until` (Unix ms): the budgets' spend before this process.
    pub async fn spend_before(
        &self,
        periods: &[(super::budget::Period, i64)],
        until: i64,
        timeout: Duration,
    ) -> Result<super::budget::Before, String> {
        let read = async {
            let mut before = super::budget::Before::new();
            for &(period, since) in periods {
                let rows: Vec<(String, f64, f64)> = match self {
                    Db::Sqlite(pool) => {
                        sqlx::query_as(&SPEND.replace("$1", "?1").replace("$2", "?2"))
                            .bind(since)
                            .bind(until)
                            .fetch_all(pool)
                            .await
                    }
                    Db::Postgres(pool) => {
                        sqlx::query_as(SPEND)
                            .bind(since)
                            .bind(until)
                            .fetch_all(pool)
                            .await
                    }
                }
                .map_err(|e| e.to_string())?;
                for (group, usd, tokens) in rows {
                    before.insert((period, group), (since, usd, tokens));
                }
            }
            Ok(before)
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    /// PostgreSQL: the shared figures of the periods holding `now` (Unix ms):
    /// (group, period, period start, USD, tokens). `None` for SQLite.
    pub async fn shared_figures(
        &self,
        now: i64,
        timeout: Duration,
    ) -> Result<Option<super::budget::Before>, String> {
        use super::budget::Period;
        let Db::Postgres(pool) = self else {
            return Ok(None);
        };
        let start = |p: Period| p.bounds(now).0;
        let read = sqlx::query_as::<_, (String, String, i64, f64, f64)>(POSTGRES_FIGURES)
            .bind(start(Period::Day))
            .bind(start(Period::Week))
            .bind(start(Period::Month))
            .fetch_all(pool);
        let rows = match tokio::time::timeout(timeout, read).await {
            Ok(rows) => rows.map_err(|e| e.to_string())?,
            Err(_) => return Err(format!("no answer within {timeout:?}")),
        };
        let mut figures = super::budget::Before::new();
        for (group, period, period_start, usd, tokens) in rows {
            let period = match period.as_str() {
                "day" => Period::Day,
                "week" => Period::Week,
                "month" => Period::Month,
                _ => Period::Total,
            };
            figures.insert((period, group), (period_start, usd, tokens));
        }
        Ok(Some(figures))
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

async fn migrator(set: &'static [(i64, &'static str, &'static str)]) -> Result<Migrator, String> {
    Migrator::new(Embedded(set))
        .await
        .map_err(|e| e.to_string())
}

const INSERT: &str = "INSERT INTO usage_ledger (created_at, request_id, api_key_id, key_name, \
    group_name, connection, requested_model, model, door, status, stream, prompt_tokens, \
    completion_tokens, cached_tokens, reasoning_tokens, cost_usd, duration_ms, ttft_ms, error_type) ";

/// The rest of the PostgreSQL insert: the inserted rows' spend added to
/// `budget_usage` for each kind of period, per group and per managed key
/// (`key:<id>`, `budget::KEY_PREFIX`) (in key order, so that two replicas'
/// batches lock the figures they share in the same order).
const POSTGRES_BUDGET_USAGE: &str = " RETURNING group_name, api_key_id, cost_usd, \
    COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0) AS tokens, created_at), \
    spent AS (SELECT group_name AS name, cost_usd, tokens, created_at FROM inserted \
    WHERE group_name IS NOT NULL \
    UNION ALL SELECT 'key:' || api_key_id, cost_usd, tokens, created_at FROM inserted \
    WHERE substr(api_key_id, 1, 4) = 'key_') \
    INSERT INTO budget_usage (group_name, period, period_start, usd, tokens) \
    SELECT name, p.period, lm_proxy_period_start(p.period, created_at), SUM(cost_usd), \
    SUM(tokens) FROM spent CROSS JOIN (VALUES ('day'), ('week'), ('month'), ('total')) \
    AS p (period) GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 \
    ON CONFLICT (group_name, period, period_start) DO UPDATE SET \
    usd = budget_usage.usd + EXCLUDED.usd, tokens = budget_usage.tokens + EXCLUDED.tokens";

/// The shared figures of the current periods (PostgreSQL).
const POSTGRES_FIGURES: &str = "SELECT group_name, period, period_start, usd, \
    CAST(tokens AS DOUBLE PRECISION) FROM budget_usage WHERE (period = 'day' AND period_start = $1) \
    OR (period = 'week' AND period_start = $2) OR (period = 'month' AND period_start = $3) \
    OR period = 'total'";

/// Spend per group in `[$1, $2)`; both backends read `DOUBLE PRECISION` as a float.
///
/// Managed keys' spend comes with it, named `key:<id>` (`budget::KEY_PREFIX`):
/// their ids (`key_...`) are the rows' `api_key_id`.
const SPEND: &str = "SELECT group_name, CAST(SUM(cost_usd) AS DOUBLE PRECISION), \
    CAST(SUM(COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)) AS DOUBLE PRECISION) \
    FROM usage_ledger WHERE created_at >= $1 AND created_at < $2 AND group_name IS NOT NULL \
    GROUP BY group_name \
    UNION ALL SELECT 'key:' || api_key_id, CAST(SUM(cost_usd) AS DOUBLE PRECISION), \
    CAST(SUM(COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)) AS DOUBLE PRECISION) \
    FROM usage_ledger WHERE created_at >= $1 AND created_at < $2 \
    AND substr(api_key_id, 1, 4) = 'key_' GROUP BY api_key_id";

/// PostgreSQL's insert of a whole batch: one array per column ([`INSERT`]'s order).
/// A batch written twice (its first write timed out after the database took it)
/// adds nothing the second time. [`POSTGRES_BUDGET_USAGE`] follows it.
const POSTGRES_INSERT: &str = "WITH inserted AS (INSERT INTO usage_ledger (created_at, \
    request_id, api_key_id, key_name, group_name, connection, requested_model, model, door, \
    status, stream, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, cost_usd, \
    duration_ms, ttft_ms, error_type) SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], \
    $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], \
    $10::INTEGER[], $11::BOOLEAN[], $12::BIGINT[], $13::BIGINT[], $14::BIGINT[], $15::BIGINT[], \
    $16::DOUBLE PRECISION[], $17::DOUBLE PRECISION[], $18::DOUBLE PRECISION[], $19::TEXT[]) \
    ON CONFLICT (request_id) DO NOTHING";

/// Columns per row in [`INSERT`] (the largest piece binds 128 x 19 values, under
/// SQLite's 32766 parameters).
pub const COLUMNS: usize = 19;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_of_any_length_are_cut_into_the_few_prepared_sizes() {
        let row = |i: usize| Row {
            request_id: format!("r{i}"),
            ..Row::default()
        };
        for len in [0, 1, 3, 4, 5, 16, 17, 127, 128, 129, 300, 1000] {
            let batch: Vec<Row> = (0..len).map(row).collect();
            let sizes: Vec<usize> = pieces(&batch).map(<[Row]>::len).collect();
            assert!(
                sizes.iter().all(|n| STATEMENT_ROWS.contains(n)),
                "{len}: {sizes:?}"
            );
            assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{len}: {sizes:?}");
            let ids: Vec<&str> = pieces(&batch)
                .flatten()
                .map(|r| r.request_id.as_str())
                .collect();
            let expected: Vec<String> = (0..len).map(|i| format!("r{i}")).collect();
            assert_eq!(ids, expected, "every row once, in order");
        }
    }

    #[test]
    fn statements_have_one_placeholder_per_value() {
        for rows in STATEMENT_ROWS {
            assert_eq!(statement(rows).matches('?').count(), rows * COLUMNS);
        }
        let postgres = postgres_insert();
        assert!(postgres.contains(&format!("${COLUMNS}::TEXT[]")));
        assert!(!postgres.contains(&format!("${}", COLUMNS + 1)));
        assert!(postgres.contains("INSERT INTO budget_usage"));
    }
}
