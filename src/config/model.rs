//! The serde model of the config file: every top-level key of the reference with its
//! default, plus this project's own settings. Unknown keys are rejected.
//!
//! Values that may name a Python callable or a built-in (`api_key_check`, `before`,
//! `loggers`, `components`, class-based connections) are kept as [`ExtensionSpec`]s
//! here and resolved by the module that owns that concern.

use std::path::PathBuf;

use indexmap::IndexMap;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// Default `api_key_check`: look the key up in the groups of the config.
pub const DEFAULT_KEY_CHECK: &str = "lm_proxy.api_key_check.check_api_key_in_config";
/// The reference's default `encryption_key`, kept so that `api_key_id`s stay stable
/// for users who never set one; its use is warned about at startup.
pub const DEFAULT_ENCRYPTION_KEY: &str = "Eclipse";

/// The whole config file, as written (after `env:` substitution).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default = "yes", deserialize_with = "lenient::bool")]
    pub enabled: bool,
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port", deserialize_with = "lenient::u16")]
    pub port: u16,
    #[serde(default)]
    pub ssl_keyfile: Option<PathBuf>,
    #[serde(default)]
    pub ssl_certfile: Option<PathBuf>,
    #[serde(default = "default_api_prefix")]
    pub api_prefix: String,
    #[serde(default, deserialize_with = "lenient::bool")]
    pub dev_autoreload: bool,
    /// Name → connection settings (kept raw; see [`ConnectionSpec`]). Required
    /// (non-empty) unless `enabled = false`; checked in `Config::from_value`.
    #[serde(default)]
    pub connections: IndexMap<String, Value>,
    #[serde(default)]
    pub routing: IndexMap<String, String>,
    #[serde(default = "default_groups")]
    pub groups: IndexMap<String, GroupConfig>,
    #[serde(default = "default_key_check")]
    pub api_key_check: Value,
    #[serde(default)]
    pub loggers: Vec<Value>,
    #[serde(default = "default_encryption_key")]
    pub encryption_key: String,
    #[serde(default)]
    pub model_listing_mode: ModelListingMode,
    #[serde(default)]
    pub model_info: IndexMap<String, Map<String, Value>>,
    #[serde(default)]
    pub components: IndexMap<String, Value>,
    #[serde(default)]
    pub before: Vec<Value>,

    // ---- this project's own settings (not in the reference) ----
    /// Largest accepted request body, in MiB (answered with 413 above it).
    #[serde(default = "default_body_limit_mb", deserialize_with = "lenient::f64")]
    pub max_request_body_mb: f64,
    /// How long a connection's model list is kept (`expand_wildcards`), in seconds.
    #[serde(default = "default_listing_cache", deserialize_with = "lenient::f64")]
    pub model_listing_cache_seconds: f64,
    /// Peers whose `X-Forwarded-For` / `X-Real-IP` / `Forwarded` headers are believed
    /// (addresses or CIDR networks). Default: loopback.
    #[serde(default = "default_trusted_proxies")]
    pub trusted_proxies: Vec<String>,
    /// How long open requests and streams may run on after SIGINT/SIGTERM.
    #[serde(default = "default_grace", deserialize_with = "lenient::f64")]
    pub shutdown_grace_seconds: f64,
    /// `GET /metrics` (Prometheus): on by default, optionally behind a bearer token.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Client timeouts, connection cap and request body memory (`[limits]`).
    #[serde(default)]
    pub limits: super::Limits,
    /// Most of one upstream answer held per request, in MiB: a non-streamed answer
    /// past it is a 502; a streamed answer's copy for the loggers stops there.
    #[serde(
        default = "default_response_limit_mb",
        deserialize_with = "lenient::positive_f64"
    )]
    pub max_response_body_mb: f64,
    /// The queue between finished requests and the configured loggers.
    #[serde(default)]
    pub log_queue: LogQueueConfig,
    /// Status of a missing or unknown client key (`invalid_api_key`): 401 as OpenAI
    /// answers, or 403 as the reference did. Checked in `Config::from_value`.
    #[serde(
        default = "default_invalid_api_key_status",
        deserialize_with = "lenient::u16"
    )]
    pub invalid_api_key_status: u16,
    /// The usage ledger's database (`[database]`); absent: no ledger.
    #[serde(default)]
    pub database: Option<crate::usage::DatabaseConfig>,
    /// Prices by model glob (`[pricing]`), before the built-in table.
    #[serde(default)]
    pub pricing: IndexMap<String, crate::usage::prices::PriceConfig>,
    /// The admin API (`[admin] token`): managed keys and usage reports; needs
    /// `[database]`. Absent: no `/admin/...` endpoint.
    #[serde(default)]
    pub admin: Option<crate::usage::keys::AdminConfig>,
}

impl FileConfig {
    /// `max_response_body_mb` in bytes.
    pub fn max_response_body_bytes(&self) -> usize {
        mib_to_bytes(self.max_response_body_mb)
    }
}

/// The `[log_queue]` table: how much may wait for slow loggers (entries past it are
/// dropped and counted), and how long shutdown waits for them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQueueConfig {
    #[serde(
        default = "default_log_queue_entries",
        deserialize_with = "lenient::positive_usize"
    )]
    pub max_entries: usize,
    #[serde(
        default = "default_log_queue_mb",
        deserialize_with = "lenient::positive_f64"
    )]
    pub max_mb: f64,
    #[serde(
        default = "default_log_flush_seconds",
        deserialize_with = "lenient::positive_f64"
    )]
    pub flush_timeout_seconds: f64,
}

impl Default for LogQueueConfig {
    fn default() -> Self {
        LogQueueConfig {
            max_entries: default_log_queue_entries(),
            max_mb: default_log_queue_mb(),
            flush_timeout_seconds: default_log_flush_seconds(),
        }
    }
}

impl LogQueueConfig {
    /// `max_mb` in bytes.
    pub fn max_bytes(&self) -> usize {
        mib_to_bytes(self.max_mb)
    }
}

/// Default `max_response_body_mb`, in bytes (also the cap of answers gathered where
/// no config reaches, e.g. Python connections' streams).
pub const DEFAULT_MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;

fn mib_to_bytes(mib: f64) -> usize {
    ((mib * 1024.0 * 1024.0) as usize).max(1)
}
fn default_response_limit_mb() -> f64 {
    (DEFAULT_MAX_RESPONSE_BODY / (1024 * 1024)) as f64
}
fn default_log_queue_entries() -> usize {
    8192
}
fn default_log_queue_mb() -> f64 {
    256.0
}
fn default_log_flush_seconds() -> f64 {
    10.0
}

/// The `[metrics]` table. `enabled` and `path` are read at startup; `token` is
/// reread on reload.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default = "yes", deserialize_with = "lenient::bool")]
    pub enabled: bool,
    #[serde(default = "default_metrics_path")]
    pub path: String,
    /// When set, scrapes must send `Authorization: Bearer <token>`. An empty token is
    /// a startup error (it used to mean "no token", so `METRICS_TOKEN=` left the
    /// endpoint open); `env:NAME?` leaves the setting out when NAME is missing or empty.
    #[serde(default)]
    pub token: Option<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            path: default_metrics_path(),
            token: None,
        }
    }
}

impl MetricsConfig {
    /// The token scrapes must present, if any. An empty one (a config built without
    /// the loader's checks) is returned as is and matches nothing: fail closed.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }
}

/// A group of client keys and the connections they may use.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    #[serde(default)]
    pub api_keys: Vec<String>,
    #[serde(default)]
    pub allowed_connections: AllowedConnectionsSpec,
    /// Spend cap (`{ usd = 50, period = "month" }` or `tokens = N`); needs
    /// `[database]`.
    #[serde(default)]
    pub budget: Option<crate::usage::budget::BudgetConfig>,
}

/// `allowed_connections`: `"*"`, a comma-separated string, or a list of names.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum AllowedConnectionsSpec {
    Text(String),
    List(Vec<String>),
}

impl Default for AllowedConnectionsSpec {
    fn default() -> Self {
        AllowedConnectionsSpec::Text("*".into())
    }
}

impl AllowedConnectionsSpec {
    /// `None` means every connection; otherwise the trimmed, non-empty names.
    pub fn names(&self) -> Option<Vec<String>> {
        let items: Vec<String> = match self {
            AllowedConnectionsSpec::Text(text) => text.split(',').map(str::to_owned).collect(),
            AllowedConnectionsSpec::List(list) => list.clone(),
        };
        let items: Vec<String> = items
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        if items.iter().any(|s| s == "*") {
            None
        } else {
            Some(items)
        }
    }
}

/// How `GET /models` presents routing patterns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelListingMode {
    #[default]
    AsIs,
    IgnoreWildcards,
    ExpandWildcards,
}

/// The `api_type` of a provider connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ApiType {
    #[serde(rename = "open_ai", alias = "openai")]
    OpenAi,
    #[serde(rename = "anthropic")]
    Anthropic,
    #[serde(rename = "google", alias = "google_ai_studio")]
    Google,
    #[serde(rename = "google_vertex_ai", alias = "vertex_ai")]
    GoogleVertexAi,
    /// A Python function (`inference_func`); served by the Python package.
    #[serde(rename = "function")]
    Function,
    /// The built-in deterministic mock (demos, client tests, load tests).
    #[serde(rename = "mock")]
    Mock,
}

impl ApiType {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiType::OpenAi => "open_ai",
            ApiType::Anthropic => "anthropic",
            ApiType::Google => "google",
            ApiType::GoogleVertexAi => "google_vertex_ai",
            ApiType::Function => "function",
            ApiType::Mock => "mock",
        }
    }
}

/// Settings common to every provider connection. Keys that only some providers
/// understand are collected in `options` and checked by that provider, which
/// rejects the ones it does not know.
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderSettings {
    pub api_type: ApiType,
    #[serde(default)]
    pub api_base: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
    /// Upstream model used when a routing value names only the connection.
    #[serde(default)]
    pub model: Option<String>,
    /// Static headers sent with every upstream request.
    #[serde(default)]
    pub http_headers: IndexMap<String, String>,
    /// Upstream timeout in seconds (whole request when not streamed; time to the
    /// response headers and between chunks when streamed).
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub timeout: Option<f64>,
    /// Seconds to establish the TCP (and TLS) connection. Default 10.
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub connect_timeout: Option<f64>,
    /// Seconds until the upstream's response headers arrive. Default: `timeout`.
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub first_byte_timeout: Option<f64>,
    /// Longest silence between two streamed chunks, in seconds. Default: `timeout`.
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub chunk_timeout: Option<f64>,
    /// The reference passed these to the provider's SDK client; the ones with an
    /// equivalent here (`timeout`, `default_headers`) are honoured, others rejected.
    #[serde(default)]
    pub init_params: Map<String, Value>,
    #[serde(flatten)]
    pub options: Map<String, Value>,
}

/// A connection entry: provider settings, or an object to instantiate.
#[derive(Debug, Clone)]
pub enum ConnectionSpec {
    Provider(Box<ProviderSettings>),
    /// A `class = "..."` table (e.g. `lm_proxy.strategies.Fallback`) or a dotted path
    /// to a Python callable.
    Extension(ExtensionSpec),
}

/// A config value that names code: a built-in by its reference name
/// (`lm_proxy.api_key_check.AllowAll`) or a Python callable (`my_module.fn`),
/// with keyword arguments when written as a `class = ...` table.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtensionSpec {
    /// The dotted path, as written.
    pub target: String,
    /// The other keys of a `class` table.
    pub kwargs: Map<String, Value>,
    /// Where in the config it was written, for error messages.
    pub key: String,
    /// Whether it was written as a `class` table (instantiate with `kwargs`).
    pub is_class_table: bool,
}

impl ExtensionSpec {
    /// Read an extension value: `null`/`""` → `None`; a string → dotted path; a table
    /// with `class` → class plus keyword arguments.
    pub fn parse(value: &Value, key: &str) -> Result<Option<ExtensionSpec>, String> {
        match value {
            Value::Null => Ok(None),
            Value::String(s) if s.trim().is_empty() => Ok(None),
            Value::String(s) => Ok(Some(ExtensionSpec {
                target: s.trim().to_owned(),
                kwargs: Map::new(),
                key: key.to_owned(),
                is_class_table: false,
            })),
            Value::Object(map) => {
                let Some(class) = map.get("class") else {
                    return Err(
                        "expected a dotted path (\"module.name\") or a table with a `class` key"
                            .into(),
                    );
                };
                let Some(target) = class.as_str().filter(|s| !s.trim().is_empty()) else {
                    return Err("`class` must be a non-empty dotted path string".into());
                };
                let mut kwargs = map.clone();
                kwargs.shift_remove("class");
                Ok(Some(ExtensionSpec {
                    target: target.trim().to_owned(),
                    kwargs,
                    key: key.to_owned(),
                    is_class_table: true,
                }))
            }
            other => Err(format!(
                "expected a dotted path or a table with `class`, found {}",
                json_type(other)
            )),
        }
    }
}

pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

fn yes() -> bool {
    true
}
fn default_host() -> String {
    "0.0.0.0".into()
}
fn default_port() -> u16 {
    8000
}
fn default_invalid_api_key_status() -> u16 {
    401
}
fn default_api_prefix() -> String {
    "/v1".into()
}
fn default_groups() -> IndexMap<String, GroupConfig> {
    IndexMap::from([("default".to_owned(), GroupConfig::default())])
}
fn default_key_check() -> Value {
    Value::String(DEFAULT_KEY_CHECK.into())
}
fn default_encryption_key() -> String {
    DEFAULT_ENCRYPTION_KEY.into()
}
fn default_body_limit_mb() -> f64 {
    32.0
}
fn default_listing_cache() -> f64 {
    300.0
}
fn default_trusted_proxies() -> Vec<String> {
    crate::client_addr::DEFAULT_TRUSTED_PROXIES
        .iter()
        .map(|s| s.to_string())
        .collect()
}
fn default_grace() -> f64 {
    30.0
}
fn default_metrics_path() -> String {
    "/metrics".into()
}

/// Deserializers that also accept numbers and booleans written as strings, because
/// `env:` substitution always yields strings (the reference's pydantic model coerced
/// them the same way).
pub(crate) mod lenient {
    use super::*;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw<T> {
        Typed(T),
        Text(String),
    }

    fn parse<'de, D, T>(d: D, what: &str) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + std::str::FromStr,
    {
        match Raw::<T>::deserialize(d)
            .map_err(|_| serde::de::Error::custom(format!("expected {what}")))?
        {
            Raw::Typed(v) => Ok(v),
            Raw::Text(s) => s
                .trim()
                .parse()
                .map_err(|_| serde::de::Error::custom(format!("expected {what}, found \"{s}\""))),
        }
    }

    pub fn u16<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
        parse(d, "a port number (0-65535)")
    }

    /// The largest number a config value may hold. Seconds, MiB, prices, budgets
    /// and token limits all stay far below it; past it, turning seconds into a
    /// `Duration` (at most about 1.8e19 s) or a deadline could overflow and panic
    /// at startup instead of naming the key.
    pub const MAX_NUMBER: f64 = 1e15;

    pub fn f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let v: f64 = parse(d, "a number")?;
        if v.is_finite() && (0.0..=MAX_NUMBER).contains(&v) {
            Ok(v)
        } else {
            Err(serde::de::Error::custom(
                "expected a non-negative number no larger than 1e15",
            ))
        }
    }

    /// A number greater than 0 (a cap of 0 would refuse everything).
    pub fn positive_f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match f64(d)? {
            v if v > 0.0 => Ok(v),
            _ => Err(serde::de::Error::custom("expected a number greater than 0")),
        }
    }

    pub fn positive_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        match parse::<D, usize>(d, "a whole number greater than 0")? {
            0 => Err(serde::de::Error::custom(
                "expected a whole number greater than 0",
            )),
            v => Ok(v),
        }
    }

    pub fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        f64(d).map(Some)
    }

    pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        match Raw::<bool>::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a boolean"))?
        {
            Raw::Typed(v) => Ok(v),
            Raw::Text(s) => crate::cli::parse_truthy(&s).ok_or_else(|| {
                serde::de::Error::custom(format!("expected a boolean, found \"{s}\""))
            }),
        }
    }
}
