//! Managed keys (issue 17, point 6): client keys kept in the usage database, made
//! and revoked at run time through the admin API (`api::admin`) or the command
//! line (`usage::commands`), next to the keys written in the config
//! (docs/admin-api.md).
//!
//! A key is `sk-lmp-` and 64 hex digits from the thread CSPRNG (256 bits), shown
//! once when it is made. The database keeps only its SHA-256 digest: the key is
//! long and random, so a fast digest is as good as a slow one, and lookups stay a
//! hash-map probe. Its public handle is its `id` (`key_` + 16 hex digits), which
//! is also the ledger's `api_key_id` for its requests: spend is summed by id.
//!
//! The request path never waits on the database for a known key: each gateway
//! keeps the active keys in memory ([`ManagedKeys`]), read again every
//! [`REFRESH`] (so a key revoked on any replica is refused everywhere within about
//! that long; the replica that revokes it drops it at once). A key that is not in
//! memory (made on another replica since the last read) is looked up once in the
//! database; a key found nowhere is remembered as unknown for [`MISS_TTL`], so
//! that a client retrying a bad key costs one query per that time. Only keys with
//! the managed prefix are ever looked up. While the database cannot be read, the
//! keys read last stay in force.
//!
//! A key's budget is enforced by the same reserve / settle as group budgets, in
//! the ledger's `Budgets` under the name `key:<id>` (`budget::KEY_PREFIX`): the
//! spend to date comes from the ledger by `api_key_id`, and with PostgreSQL from
//! the figures every replica shares (`budget_usage`), as for groups.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rand::RngCore;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::SqlitePoolOptions;

use super::budget::{BudgetConfig, Period};
use super::db::{sqlite_sql, Db, Target};
use super::DatabaseConfig;
use crate::auth::KeyGrant;
use crate::config::{Config, ConfigError};
use crate::logging::throttle::Throttled;

/// The `[admin]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The bearer token of the admin API (`"env:NAME"` keeps it out of the file).
    pub token: String,
}

/// What every managed key starts with: recognizable in a leaked-secret scan, and
/// the only keys the database is asked about.
pub const PREFIX: &str = "sk-lmp-";
/// How often each gateway reads the active keys again.
pub const REFRESH: Duration = Duration::from_secs(2);
/// How long a key found nowhere is refused without asking the database again.
pub const MISS_TTL: Duration = Duration::from_secs(2);
/// The deadline of the lookup of a key not in memory (on the request path).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);
/// Lookups of keys not in memory running at once.
const MAX_LOOKUPS: usize = 4;
/// How long a replica remembers the keys it revoked: longer than a read of the
/// database can take (its deadline is `[database] timeout_seconds`).
const REVOKED_MEMORY: Duration = Duration::from_secs(60);

static ORPHANED: Throttled = Throttled::new(Duration::from_secs(30));

/// What a lookup found.
enum Found {
    Known(Arc<ActiveKey>),
    Stored(Stored),
}
/// The longest name and metadata accepted.
const MAX_NAME: usize = 200;
const MAX_METADATA_BYTES: usize = 16 * 1024;

static UNREADABLE: Throttled = Throttled::new(Duration::from_secs(30));

/// A new key and its id.
pub fn generate() -> (String, String) {
    let mut rng = rand::rng();
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let mut id = [0u8; 8];
    rng.fill_bytes(&mut id);
    (
        format!("key_{}", hex::encode(id)),
        format!("{PREFIX}{}", hex::encode(secret)),
    )
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `2027-01-01T00:00:00Z`.
pub fn rfc3339(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// A time given by a person: `2026-12-01` (midnight UTC) or an RFC 3339 time
/// (`2026-12-01T12:00:00Z`; without a zone, UTC). Unix milliseconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    };
    humantime::parse_rfc3339_weak(&full)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .ok_or_else(|| {
            format!("'{text}' is not a date (2026-12-01) or a UTC time (2026-12-01T12:00:00Z)")
        })
}

/// An expiry: a time as [`parse_time`] reads it, or a duration from now (`30d`,
/// `12h`).
pub fn parse_expiry(text: &str, now: i64) -> Result<i64, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) => Ok(now.saturating_add(d.as_millis().min(i64::MAX as u128) as i64)),
        Err(_) => parse_time(text).map_err(|e| format!("{e}, or a duration such as 30d")),
    }
}

/// A budget as the API shows it.
pub fn budget_json(budget: &BudgetConfig) -> Value {
    let mut object = Map::new();
    if let Some(usd) = budget.usd {
        object.insert("usd".into(), json!(usd));
    }
    if let Some(tokens) = budget.tokens {
        object.insert("tokens".into(), json!(tokens));
    }
    object.insert("period".into(), json!(budget.period.name()));
    Value::Object(object)
}

/// Why a managed-key operation failed, for the API (status) and the command line.
#[derive(Debug)]
pub enum KeyError {
    /// The request is wrong (400): the message says how.
    Invalid(String),
    /// No key with this id (404).
    NotFound(String),
    /// The database did not answer (503); the text has no credentials.
    Database(String),
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::Invalid(m) => f.write_str(m),
            KeyError::NotFound(id) => write!(f, "no managed key with id '{id}'"),
            KeyError::Database(e) => write!(f, "the usage database cannot be used: {e}"),
        }
    }
}

fn db_error(e: impl std::fmt::Display) -> KeyError {
    KeyError::Database(crate::config::strip_userinfo(&e.to_string()))
}

/// What `POST /admin/keys` (and `keys create`) takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub group: String,
    pub name: String,
    #[serde(default)]
    pub budget: Option<BudgetConfig>,
    /// A time (`2027-01-01`, RFC 3339) or a duration from now (`30d`).
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

/// A key as stored (no secret).
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    pub group: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub budget: Option<BudgetConfig>,
    pub metadata: Map<String, Value>,
}

/// Spend to date of a key, from the ledger.
#[derive(Debug, Clone, Default)]
pub struct Spend {
    pub requests: i64,
    pub tokens: i64,
    pub cost_usd: f64,
}

impl KeyRecord {
    pub fn status(&self, now: i64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|e| e <= now) {
            "expired"
        } else {
            "active"
        }
    }

    pub fn to_json(&self, spend: Option<&Spend>) -> Value {
        let mut value = json!({
            "object": "managed_key",
            "id": self.id,
            "name": self.name,
            "group": self.group,
            "created_at": rfc3339(self.created_at),
            "expires_at": self.expires_at.map(rfc3339),
            "revoked_at": self.revoked_at.map(rfc3339),
            "status": self.status(now_ms()),
            "budget": self.budget.as_ref().map(budget_json),
            "metadata": self.metadata,
        });
        if let Some(spend) = spend {
            value["spend"] = json!({
                "requests": spend.requests,
                "tokens": spend.tokens,
                "cost_usd": spend.cost_usd,
            });
        }
        value
    }
}

/// The stored columns of a key, in [`COLUMNS`] order.
type Stored = (
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<f64>,
    Option<i64>,
    Option<String>,
    String,
);

const COLUMNS: &str = "id, name, group_name, created_at, expires_at, revoked_at, budget_usd, \
    budget_tokens, budget_period, metadata";

fn record(stored: Stored) -> KeyRecord {
    let (id, name, group, created_at, expires_at, revoked_at, usd, tokens, period, metadata) =
        stored;
    let budget = period
        .as_deref()
        .and_then(Period::from_name)
        .map(|period| BudgetConfig {
            usd,
            tokens: tokens.map(|t| t.max(0) as u64),
            period,
        });
    let metadata = match serde_json::from_str(&metadata) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    KeyRecord {
        id,
        name,
        group,
        created_at,
        expires_at,
        revoked_at,
        budget,
        metadata,
    }
}

/// One query on either backend, its binds the same.
macro_rules! fetch {
    ($db:expr, $ty:ty, $sql:expr, $fetch:ident $(, $bind:expr)*) => {
        match $db {
            Db::Sqlite(pool) => {
                sqlx::query_as::<_, $ty>(&sqlite_sql($sql))$(.bind($bind))*.$fetch(pool).await
            }
            Db::Postgres(pool) => sqlx::query_as::<_, $ty>($sql)$(.bind($bind))*.$fetch(pool).await,
        }
    };
}

macro_rules! execute {
    ($db:expr, $sql:expr $(, $bind:expr)*) => {
        match $db {
            Db::Sqlite(pool) => sqlx::query(&sqlite_sql($sql))$(.bind($bind))*
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
            Db::Postgres(pool) => sqlx::query($sql)$(.bind($bind))*
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
        }
    };
}

/// Check a new key's settings against the config: its group exists, the budget
/// counts one thing, the expiry is in the future, the metadata is small.
pub fn validate(new: &NewKey, config: &Config, now: i64) -> Result<Option<i64>, KeyError> {
    if !config.settings.groups.contains_key(&new.group) {
        let mut known: Vec<&str> = config.settings.groups.keys().map(String::as_str).collect();
        known.sort_unstable();
        return Err(KeyError::Invalid(format!(
            "unknown group '{}' (the config's groups: {})",
            new.group,
            known.join(", ")
        )));
    }
    let name = new.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(KeyError::Invalid(format!(
            "`name` must be 1 to {MAX_NAME} printable characters"
        )));
    }
    if let Some(budget) = &new.budget {
        match (budget.usd, budget.tokens) {
            (Some(usd), None) if usd.is_finite() && usd >= 0.0 => {}
            (None, Some(_)) => {}
            _ => {
                return Err(KeyError::Invalid(
                    "`budget` needs one of `usd` (not negative) or `tokens`, and a `period` \
                     (day, week, month, total)"
                        .into(),
                ))
            }
        }
    }
    let expires_at = match &new.expires_at {
        Some(text) => {
            let at = parse_expiry(text, now)
                .map_err(|e| KeyError::Invalid(format!("expires_at: {e}")))?;
            if at <= now {
                return Err(KeyError::Invalid("expires_at is in the past".into()));
            }
            Some(at)
        }
        None => None,
    };
    if let Some(metadata) = &new.metadata {
        if Value::Object(metadata.clone()).to_string().len() > MAX_METADATA_BYTES {
            return Err(KeyError::Invalid(format!(
                "`metadata` must be at most {MAX_METADATA_BYTES} bytes of JSON"
            )));
        }
    }
    Ok(expires_at)
}

/// Make a key: checked against the config, stored as a digest. Returns the
/// record and the key (the only time it exists outside the client).
pub async fn create(
    db: &Db,
    config: &Config,
    new: &NewKey,
) -> Result<(KeyRecord, String), KeyError> {
    let now = now_ms();
    let expires_at = validate(new, config, now)?;
    let (id, key) = generate();
    let record = KeyRecord {
        id,
        name: new.name.trim().to_owned(),
        group: new.group.clone(),
        created_at: now,
        expires_at,
        revoked_at: None,
        budget: new.budget.clone(),
        metadata: new.metadata.clone().unwrap_or_default(),
    };
    let budget = record.budget.as_ref();
    execute!(
        db,
        "INSERT INTO managed_keys (id, key_digest, name, group_name, created_at, expires_at, \
         revoked_at, budget_usd, budget_tokens, budget_period, metadata) \
         VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $8, $9, $10)",
        record.id.clone(),
        hex::encode(digest(&key)),
        record.name.clone(),
        record.group.clone(),
        record.created_at,
        record.expires_at,
        budget.and_then(|b| b.usd),
        budget
            .and_then(|b| b.tokens)
            .map(|t| t.min(i64::MAX as u64) as i64),
        budget.map(|b| b.period.name()),
        Value::Object(record.metadata.clone()).to_string()
    )
    .map_err(db_error)?;
    Ok((record, key))
}

/// Every managed key with its spend to date ([`list`]).
// The `substr` term is what lets both databases use the ledger's partial index
// on managed keys (every managed key's id has that prefix anyway).
pub(crate) const LIST: &str = "SELECT k.id, k.name, k.group_name, k.created_at, k.expires_at, k.revoked_at, \
        k.budget_usd, k.budget_tokens, k.budget_period, k.metadata, \
        COALESCE(s.requests, 0), COALESCE(s.tokens, 0), COALESCE(s.usd, 0.0) \
        FROM managed_keys k LEFT JOIN (\
            SELECT api_key_id, COUNT(*) AS requests, \
            CAST(SUM(COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)) AS BIGINT) AS tokens, \
            CAST(SUM(cost_usd) AS DOUBLE PRECISION) AS usd \
            FROM usage_ledger WHERE api_key_id IN (SELECT id FROM managed_keys) \
            AND substr(api_key_id, 1, 4) = 'key_' \
            GROUP BY api_key_id) s ON s.api_key_id = k.id \
        ORDER BY k.created_at, k.id";

/// Every key (revoked and expired too), oldest first, with its spend to date.
pub async fn list(db: &Db) -> Result<Vec<(KeyRecord, Spend)>, KeyError> {
    type Listed = (
        String,
        String,
        String,
        i64,
        Option<i64>,
        Option<i64>,
        Option<f64>,
        Option<i64>,
        Option<String>,
        String,
        i64,
        i64,
        f64,
    );
    let sql = LIST;
    let rows: Vec<Listed> = fetch!(db, Listed, sql, fetch_all).map_err(db_error)?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let spend = Spend {
                requests: r.10,
                tokens: r.11,
                cost_usd: r.12,
            };
            (
                record((r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9)),
                spend,
            )
        })
        .collect())
}

/// Revoke a key (again: a no-op that answers the key as it is).
pub async fn revoke(db: &Db, id: &str) -> Result<KeyRecord, KeyError> {
    execute!(
        db,
        "UPDATE managed_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        now_ms(),
        id.to_owned()
    )
    .map_err(db_error)?;
    let sql = format!("SELECT {COLUMNS} FROM managed_keys WHERE id = $1");
    let found: Option<Stored> =
        fetch!(db, Stored, &sql, fetch_optional, id.to_owned()).map_err(db_error)?;
    found
        .map(record)
        .ok_or_else(|| KeyError::NotFound(id.to_owned()))
}

/// How `usage` reports are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    Key,
    Group,
    Model,
    Connection,
    Day,
}

impl GroupBy {
    pub fn parse(text: &str) -> Option<GroupBy> {
        Some(match text {
            "key" => GroupBy::Key,
            "group" => GroupBy::Group,
            "model" => GroupBy::Model,
            "connection" => GroupBy::Connection,
            "day" => GroupBy::Day,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Key => "key",
            GroupBy::Group => "group",
            GroupBy::Model => "model",
            GroupBy::Connection => "connection",
            GroupBy::Day => "day",
        }
    }

    fn column(self) -> &'static str {
        match self {
            GroupBy::Key => "COALESCE(api_key_id, '')",
            GroupBy::Group => "COALESCE(group_name, '')",
            GroupBy::Model => "COALESCE(model, requested_model, '')",
            GroupBy::Connection => "COALESCE(connection, '')",
            // Days since 1970-01-01 (UTC), written as a date below.
            GroupBy::Day => "CAST(created_at / 86400000 AS TEXT)",
        }
    }
}

/// One line of a usage report.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageLine {
    /// The key id, group, model, connection or date (`""`: none recorded).
    pub value: String,
    /// With `key`: the key's name as the ledger recorded it.
    pub key_name: Option<String>,
    pub requests: i64,
    pub errors: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost_usd: f64,
}

impl UsageLine {
    pub fn to_json(&self, by: GroupBy) -> Value {
        let mut value = json!({
            by.as_str(): self.value,
            "requests": self.requests,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost_usd": self.cost_usd,
        });
        if by == GroupBy::Key {
            value["key_name"] = json!(self.key_name);
        }
        value
    }
}

/// The ledger's requests, tokens and cost in `[since, until)` (Unix ms), grouped.
pub async fn usage(
    db: &Db,
    by: GroupBy,
    since: i64,
    until: i64,
) -> Result<Vec<UsageLine>, KeyError> {
    type Summed = (String, Option<String>, i64, i64, i64, i64, i64, i64, f64);
    let sql = format!(
        "SELECT {} AS v, MAX(key_name), COUNT(*), \
         CAST(SUM(CASE WHEN status >= 400 OR error_type IS NOT NULL THEN 1 ELSE 0 END) AS BIGINT), \
         CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT), \
         CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT), \
         CAST(COALESCE(SUM(cached_tokens), 0) AS BIGINT), \
         CAST(COALESCE(SUM(reasoning_tokens), 0) AS BIGINT), \
         CAST(COALESCE(SUM(cost_usd), 0.0) AS DOUBLE PRECISION) \
         FROM usage_ledger WHERE created_at >= $1 AND created_at < $2 \
         GROUP BY 1 ORDER BY 1",
        by.column()
    );
    let rows: Vec<Summed> = fetch!(db, Summed, &sql, fetch_all, since, until).map_err(db_error)?;
    Ok(rows
        .into_iter()
        .map(|r| UsageLine {
            value: if by == GroupBy::Day {
                r.0.parse::<i64>()
                    .map(|day| rfc3339(day * 86_400_000)[..10].to_owned())
                    .unwrap_or(r.0)
            } else {
                r.0
            },
            key_name: r.1,
            requests: r.2,
            errors: r.3,
            prompt_tokens: r.4,
            completion_tokens: r.5,
            cached_tokens: r.6,
            reasoning_tokens: r.7,
            cost_usd: r.8,
        })
        .collect())
}

/// Connect for the command line: one connection, the migrations applied (the
/// command may be the database's first user).
pub async fn connect(config: &Config) -> Result<Db, KeyError> {
    let database = config.settings.database.as_ref().ok_or_else(|| {
        KeyError::Invalid(format!(
            "{} has no [database] section: managed keys and usage live in the usage database",
            config.path.display()
        ))
    })?;
    let target = database.target(&config.path).map_err(KeyError::Invalid)?;
    Db::connect(
        &target,
        1,
        Duration::from_secs_f64(database.timeout_seconds),
    )
    .await
    .map_err(db_error)
}

/// A key in a gateway's memory.
#[derive(Debug)]
pub struct ActiveKey {
    pub id: String,
    pub name: String,
    pub group: String,
    pub expires_at: Option<i64>,
    pub budget: Option<BudgetConfig>,
}

#[derive(Default)]
struct Known {
    by_digest: HashMap<[u8; 32], Arc<ActiveKey>>,
    by_id: HashMap<String, Arc<ActiveKey>>,
}

impl Known {
    fn insert(&mut self, digest: [u8; 32], key: Arc<ActiveKey>) {
        self.by_id.insert(key.id.clone(), key.clone());
        self.by_digest.insert(digest, key);
    }
}

/// The managed keys of one gateway: the active keys in memory, read again every
/// [`REFRESH`].
pub struct ManagedKeys {
    db: Db,
    known: ArcSwap<Known>,
    /// Digests looked up and found nowhere, for [`MISS_TTL`].
    misses: moka::sync::Cache<[u8; 32], ()>,
    /// Lookups of keys not in memory at once: a client trying many made-up keys
    /// costs the database at most this many queries at a time (the others wait,
    /// within the lookup's deadline).
    lookups: tokio::sync::Semaphore,
    /// Keys this replica revoked lately: a read of the database that began before
    /// the revocation must not bring them back (until [`REVOKED_MEMORY`] later,
    /// when every read since has seen it).
    revoked: Mutex<HashMap<String, std::time::Instant>>,
    timeout: Duration,
    /// From the ledger's writer: true once the schema is in place.
    schema_ready: tokio::sync::watch::Receiver<bool>,
    refresher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ManagedKeys {
    /// Start reading the keys, on the current tokio runtime. The pool connects
    /// lazily and applies no migration: the ledger's writer does, and says so on
    /// `schema_ready`; reads and writes wait for it.
    pub fn start(
        config: &DatabaseConfig,
        file: &Path,
        schema_ready: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Arc<ManagedKeys>, ConfigError> {
        let target = config
            .target(file)
            .map_err(|problem| ConfigError::new(file, "database.url", problem))?;
        let timeout = Duration::from_secs_f64(config.timeout_seconds);
        let db = match target {
            Target::Sqlite(options) => Db::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(timeout)
                    .connect_lazy_with(options),
            ),
            Target::Postgres(options) => Db::Postgres(
                PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(timeout)
                    .connect_lazy_with(options),
            ),
        };
        let keys = Arc::new(ManagedKeys {
            db,
            known: ArcSwap::from_pointee(Known::default()),
            misses: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(MISS_TTL)
                .build(),
            lookups: tokio::sync::Semaphore::new(MAX_LOOKUPS),
            revoked: Mutex::new(HashMap::new()),
            timeout,
            schema_ready,
            refresher: Mutex::new(None),
        });
        // The task holds the keys weakly: dropping the server's state ends it.
        let weak = Arc::downgrade(&keys);
        let handle = tokio::spawn(refresh_loop(weak));
        *keys.refresher.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(keys)
    }

    /// The key's entry if it is a managed key in force. Known keys are answered
    /// from memory; see the module's notes for the rest.
    pub async fn check(&self, key: &str) -> Option<Arc<ActiveKey>> {
        if !key.starts_with(PREFIX) {
            return None;
        }
        let digest = digest(key);
        let now = now_ms();
        let in_force = |k: &Arc<ActiveKey>| k.expires_at.is_none_or(|e| e > now);
        if let Some(found) = self.known.load().by_digest.get(&digest) {
            return in_force(found).then(|| found.clone());
        }
        if self.misses.contains_key(&digest) {
            return None;
        }
        let sql = format!(
            "SELECT {COLUMNS} FROM managed_keys WHERE key_digest = $1 AND revoked_at IS NULL"
        );
        let lookup = async {
            let _permit = self.lookups.acquire().await;
            // Another lookup of the same key may have finished while this waited.
            if let Some(found) = self.known.load().by_digest.get(&digest) {
                return Ok(Some(Found::Known(found.clone())));
            }
            if self.misses.contains_key(&digest) {
                return Ok(None);
            }
            fetch!(&self.db, Stored, &sql, fetch_optional, hex::encode(digest))
                .map(|stored| stored.map(Found::Stored))
        };
        match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
            Ok(Ok(Some(Found::Known(found)))) => in_force(&found).then_some(found),
            Ok(Ok(Some(Found::Stored(stored)))) => {
                let active = Arc::new(active(record(stored)));
                if self.revoked_here(&active.id) {
                    return None;
                }
                self.known.rcu(|known| {
                    let mut next = Known {
                        by_digest: known.by_digest.clone(),
                        by_id: known.by_id.clone(),
                    };
                    next.insert(digest, active.clone());
                    next
                });
                in_force(&active).then_some(active)
            }
            Ok(Ok(None)) => {
                self.misses.insert(digest, ());
                None
            }
            // Unknown and unverifiable: refused (fail closed), not remembered.
            Ok(Err(e)) => {
                warn_unreadable(&e.to_string());
                None
            }
            Err(_) => {
                warn_unreadable("no answer within 1 s");
                None
            }
        }
    }

    /// A key (in memory) by id: its budget, on the request path.
    pub fn by_id(&self, id: &str) -> Option<Arc<ActiveKey>> {
        self.known.load().by_id.get(id).cloned()
    }

    /// Whether this replica revoked the key lately (see `revoked`).
    fn revoked_here(&self, id: &str) -> bool {
        let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        // Longer than any read of the database may take (its deadline).
        let memory = REVOKED_MEMORY.max(self.timeout * 2 + REFRESH);
        revoked.retain(|_, at| at.elapsed() < memory);
        revoked.contains_key(id)
    }

    /// Revoked by this replica: refused here at once, not at the next read.
    pub fn forget(&self, id: &str) {
        self.revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), std::time::Instant::now());
        self.known.rcu(|known| Known {
            by_digest: known
                .by_digest
                .iter()
                .filter(|(_, k)| k.id != id)
                .map(|(d, k)| (*d, k.clone()))
                .collect(),
            by_id: known
                .by_id
                .iter()
                .filter(|(i, _)| i.as_str() != id)
                .map(|(i, k)| (i.clone(), k.clone()))
                .collect(),
        });
    }

    /// The database, for the admin API, once the ledger's writer has migrated it
    /// (a gateway just started may not have yet): waits up to `[database]
    /// timeout_seconds`.
    pub async fn migrated_db(&self) -> Result<&Db, KeyError> {
        let mut ready = self.schema_ready.clone();
        let waited = tokio::time::timeout(self.timeout, ready.wait_for(|ready| *ready))
            .await
            .map(|result| result.map(|_| ()));
        match waited {
            Ok(Ok(())) => Ok(&self.db),
            Ok(Err(_)) => Err(db_error("the usage ledger has stopped")),
            Err(_) => Err(db_error(format!(
                "the database was not connected and migrated within {:?}",
                self.timeout
            ))),
        }
    }

    /// The grant of a managed key, for the default key check: its group must still
    /// be in the config in force.
    pub async fn grant(&self, key: &str, config: &Config) -> Option<KeyGrant> {
        let active = self.check(key).await?;
        if !config.settings.groups.contains_key(&active.group) {
            ORPHANED.warn(|| {
                format!(
                    "managed key {} belongs to group '{}', which the config no longer has: \
                     it is refused",
                    active.id, active.group
                )
            });
            return None;
        }
        Some(KeyGrant {
            group: active.group.clone(),
            user_info: json!({ "name": active.name, "key_id": active.id }),
            api_key_id: Some(Arc::from(active.id.as_str())),
        })
    }

    /// Read the active keys.
    async fn refresh(&self) -> Result<(), String> {
        let now = now_ms();
        type WithDigest = (
            String,
            String,
            String,
            i64,
            Option<i64>,
            Option<i64>,
            Option<f64>,
            Option<i64>,
            Option<String>,
            String,
            String,
        );
        let sql = format!(
            "SELECT {COLUMNS}, key_digest FROM managed_keys WHERE revoked_at IS NULL \
             AND (expires_at IS NULL OR expires_at > $1)"
        );
        let read = async { fetch!(&self.db, WithDigest, &sql, fetch_all, now) };
        let rows: Vec<WithDigest> = tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
            .map_err(|e| e.to_string())?;
        let mut known = Known::default();
        for r in rows {
            let mut d = [0u8; 32];
            if hex::decode_to_slice(&r.10, &mut d).is_err() {
                continue;
            }
            let stored = (r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9);
            let active = active(record(stored));
            if !self.revoked_here(&active.id) {
                known.insert(d, Arc::new(active));
            }
        }
        self.known.store(Arc::new(known));
        Ok(())
    }
}

impl Drop for ManagedKeys {
    fn drop(&mut self) {
        if let Some(handle) = self
            .refresher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            handle.abort();
        }
    }
}

fn active(record: KeyRecord) -> ActiveKey {
    ActiveKey {
        id: record.id,
        name: record.name,
        group: record.group,
        expires_at: record.expires_at,
        budget: record.budget,
    }
}

fn warn_unreadable(e: &str) {
    let e = crate::config::strip_userinfo(e);
    UNREADABLE.warn(|| {
        format!(
            "managed keys: cannot read the usage database ({e}); the keys read last stay \
             in force, keys not read yet are refused"
        )
    });
}

async fn refresh_loop(keys: Weak<ManagedKeys>) {
    // No read before the ledger's writer has put the schema in place (it warns
    // itself while the database cannot be reached).
    let Some(mut ready) = keys.upgrade().map(|keys| keys.schema_ready.clone()) else {
        return;
    };
    if ready.wait_for(|ready| *ready).await.is_err() {
        return;
    }
    // Only failures that last are worth a warning.
    let mut failures = 0u32;
    loop {
        let Some(keys) = keys.upgrade() else {
            return;
        };
        match keys.refresh().await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures >= 3 {
                    warn_unreadable(&e);
                } else {
                    tracing::debug!("managed keys: read failed ({e}); trying again");
                }
            }
        }
        drop(keys);
        tokio::time::sleep(REFRESH).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The admin API's calls wait for the ledger's writer to migrate the database
    /// (a key made just after start once found no table: a 503), up to
    /// `timeout_seconds`, and then say the database is unavailable.
    #[tokio::test]
    async fn admin_calls_wait_for_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let config: DatabaseConfig =
            serde_json::from_value(serde_json::json!({"timeout_seconds": 0.2})).unwrap();
        let (ready, schema_ready) = tokio::sync::watch::channel(false);
        let keys =
            ManagedKeys::start(&config, &dir.path().join("config.toml"), schema_ready).unwrap();
        let waited = keys.migrated_db().await.err().unwrap();
        assert!(matches!(waited, KeyError::Database(_)), "{waited}");
        assert!(
            waited.to_string().contains("not connected and migrated"),
            "{waited}"
        );
        // Migrated while a call waits: it goes on at once.
        let waiting = tokio::spawn({
            let keys = keys.clone();
            async move { keys.migrated_db().await.is_ok() }
        });
        tokio::task::yield_now().await;
        ready.send_replace(true);
        assert!(waiting.await.unwrap());
        // The writer stopped after migrating: the schema stays in place.
        drop(ready);
        assert!(keys.migrated_db().await.is_ok());
        // The writer stopped before: unavailable at once, not after the deadline.
        let (never, schema_ready) = tokio::sync::watch::channel(false);
        drop(never);
        let keys =
            ManagedKeys::start(&config, &dir.path().join("config.toml"), schema_ready).unwrap();
        let stopped = keys.migrated_db().await.err().unwrap();
        assert!(stopped.to_string().contains("has stopped"), "{stopped}");
    }

    /// The listing reads managed keys' rows through the partial index (migration
    /// 2): no scan of the whole ledger, whose other rows have no index entry.
    #[tokio::test]
    async fn the_listing_uses_the_managed_keys_index() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::parse("sqlite://ledger.db", dir.path()).unwrap();
        let db = Db::connect(&target, 1, Duration::from_secs(10))
            .await
            .unwrap();
        let Db::Sqlite(pool) = &db else {
            unreachable!()
        };
        let plan: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(&format!("EXPLAIN QUERY PLAN {LIST}"))
                .fetch_all(pool)
                .await
                .unwrap();
        let plan: Vec<&str> = plan.iter().map(|row| row.3.as_str()).collect();
        assert!(
            plan.iter()
                .any(|step| step.contains("USING INDEX usage_ledger_managed_key")),
            "{plan:?}"
        );
        assert!(
            !plan
                .iter()
                .any(|step| step.starts_with("SCAN usage_ledger")),
            "{plan:?}"
        );
        db.close().await;
    }

    #[test]
    fn keys_are_long_random_and_prefixed() {
        let (id, key) = generate();
        let (id2, key2) = generate();
        assert_ne!(key, key2);
        assert_ne!(id, id2);
        assert!(key.starts_with(PREFIX));
        assert_eq!(key.len(), PREFIX.len() + 64);
        assert!(id.starts_with("key_") && id.len() == 20);
        // Ids never look like an HMAC `api_key_id` (hex only).
        assert!(!id.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn times_and_expiries() {
        assert_eq!(parse_time("2026-12-01").unwrap(), 1_796_083_200_000);
        assert_eq!(
            parse_time("2026-12-01T00:00:00Z").unwrap(),
            parse_time("2026-12-01").unwrap()
        );
        assert!(parse_time("yesterday").is_err());
        assert_eq!(parse_expiry("1d", 1000).unwrap(), 1000 + 86_400_000);
        assert_eq!(rfc3339(1_796_083_200_000), "2026-12-01T00:00:00Z");
        assert_eq!(GroupBy::parse("day"), Some(GroupBy::Day));
        assert_eq!(GroupBy::parse("user"), None);
    }
}
