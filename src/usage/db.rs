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
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, QueryBuilder, SqlitePool};

use super::Row;

/// The same `VALUES` list for either backend's query builder.
macro_rules! push_rows {
    ($query:ident, $rows:expr) => {
        $query.push_values($rows, |mut b, row| {
            b.push_bind(row.created_at_ms)
                .push_bind(row.request_id.clone())
                .push_bind(row.api_key_id.clone())
                .push_bind(row.key_name.clone())
                .push_bind(row.group.clone())
                .push_bind(row.connection.clone())
                .push_bind(row.requested_model.clone())
                .push_bind(row.model.clone())
                .push_bind(row.door)
                .push_bind(row.status)
                .push_bind(row.stream)
                .push_bind(row.prompt_tokens)
                .push_bind(row.completion_tokens)
                .push_bind(row.cached_tokens)
                .push_bind(row.reasoning_tokens)
                .push_bind(row.cost_usd)
                .push_bind(row.duration_ms)
                .push_bind(row.ttft_ms)
                .push_bind(row.error_type.clone());
        });
    };
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

    /// Insert rows in one statement (the caller keeps batches under the backends'
    /// parameter limits).
    pub async fn insert(&self, rows: &[Row], timeout: Duration) -> Result<(), String> {
        let write = async {
            match self {
                Db::Sqlite(pool) => {
                    let mut query = QueryBuilder::new(INSERT);
                    push_rows!(query, rows);
                    query.push(ON_CONFLICT);
                    query.build().execute(pool).await.map(drop)
                }
                Db::Postgres(pool) => {
                    // The rows and the shared budget figures in one statement.
                    let mut query = QueryBuilder::new("WITH inserted AS (");
                    query.push(INSERT);
                    push_rows!(query, rows);
                    query.push(ON_CONFLICT);
                    query.push(POSTGRES_BUDGET_USAGE);
                    query.build().execute(pool).await.map(drop)
                }
            }
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
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

/// A batch written twice (its first write timed out after the database took it)
/// adds nothing the second time.
const ON_CONFLICT: &str = " ON CONFLICT (request_id) DO NOTHING";

/// Columns per row in [`INSERT`]; batches stay under SQLite's 32766 parameters.
pub const COLUMNS: usize = 19;
