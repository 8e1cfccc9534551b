//! Config loading: file format by extension, `env:` substitution, `.env`, the serde
//! model, and the checks that stop startup with one clear line
//! (`<file>: <key>: <problem>`) instead of failing on the first request.

mod env;
pub(crate) mod error;
mod limits;
mod model;

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use env::load_dotenv;
pub(crate) use env::push_key;
pub(crate) use error::strip_userinfo;
pub use error::ConfigError;
pub use limits::Limits;
pub(crate) use model::lenient;
pub use model::{
    json_type, AllowedConnectionsSpec, ApiType, ConnectionSpec, ExtensionSpec, FileConfig,
    GroupConfig, MetricsConfig, ModelListingMode, ProviderSettings, DEFAULT_ENCRYPTION_KEY,
    DEFAULT_KEY_CHECK,
};
pub use model::{LogQueueConfig, DEFAULT_MAX_RESPONSE_BODY};

/// A loaded and checked config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (used in error messages and for reloads).
    pub path: PathBuf,
    /// Top-level settings as written (with defaults filled in).
    pub settings: FileConfig,
    /// `api_prefix` normalised: empty, or `/segment...` without a trailing slash.
    pub api_prefix: String,
    pub connections: IndexMap<String, ConnectionSpec>,
    pub api_key_check: Option<ExtensionSpec>,
    pub before: Vec<ExtensionSpec>,
    pub loggers: Vec<ExtensionSpec>,
    pub components: IndexMap<String, ExtensionSpec>,
}

/// The config formats, chosen by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
    Yaml,
    /// A Python file exporting `config`; only the Python package can load it.
    Python,
}

impl Format {
    pub fn of(path: &Path) -> Result<Format, ConfigError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        match ext.as_str() {
            "toml" => Ok(Format::Toml),
            "json" => Ok(Format::Json),
            "yml" | "yaml" => Ok(Format::Yaml),
            "py" => Ok(Format::Python),
            "" => Err(ConfigError::new(
                path,
                "",
                "config file has no extension; use .toml, .json, .yml/.yaml or .py",
            )),
            other => Err(ConfigError::new(
                path,
                "",
                format!(
                    "unsupported config extension '.{other}'; use .toml, .json, .yml/.yaml or .py"
                ),
            )),
        }
    }
}

/// Parse config text of a format into a JSON value tree (key order kept).
///
/// A syntax error names the line and column (and, for TOML, the key on that line)
/// but never quotes the text: the line may hold a secret (`api_key = "sk-...` with
/// its closing quote missing), and the toml crate's message prints it.
pub fn parse_text(text: &str, format: Format, path: &Path) -> Result<Value, ConfigError> {
    match format {
        Format::Toml => toml::from_str::<Value>(text).map_err(|e| {
            let at = e.span().map(|span| span.start);
            let key = at.map(|at| toml_key_at(text, at)).unwrap_or_default();
            let place = at.map(|at| {
                let (line, column) = line_column(text, at);
                format!(" at line {line}, column {column}")
            });
            ConfigError::new(
                path,
                key,
                format!(
                    "TOML syntax error{}: {}",
                    place.unwrap_or_default(),
                    scrub_values(e.message())
                ),
            )
        }),
        Format::Json => serde_json::from_str::<Value>(text)
            .map_err(|e| ConfigError::new(path, "", format!("JSON syntax error: {e}"))),
        Format::Yaml => serde_yaml_ng::from_str::<Value>(text).map_err(|e| {
            let place = e
                .location()
                .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
                .unwrap_or_default();
            // The message is cut at its location (which is given above): what
            // follows it can be the parser's context, and the text is never quoted.
            let message = e.to_string();
            let message = message.split(" at line ").next().unwrap_or_default();
            ConfigError::new(
                path,
                "",
                format!("YAML syntax error{place}: {}", scrub_values(message)),
            )
        }),
        Format::Python => Err(ConfigError::new(path, "", python_config_message())),
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let at = (0..=at)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// The dotted key written on the line holding byte `at` of a TOML text, under the
/// last `[table]` header above it, when the line reads `key = ...`; else "".
fn toml_key_at(text: &str, at: usize) -> String {
    let at = at.min(text.len());
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let is_key = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ' | '"'))
    };
    let Some(key) = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| is_key(k))
    else {
        return String::new();
    };
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(['[', ']']).trim())
        .filter(|t| is_key(t));
    let key = key.replace(' ', "");
    match table {
        Some(table) => format!("{}.{key}", table.replace(' ', "")),
        None => key,
    }
}

/// Whether a serde message about `key` may quote a secret: the key names one
/// (`groups.team.api_keys`, `metrics.token`, `http_headers.Authorization`), or a
/// plain value stands where a table or a list belongs (`[groups]` `team = "sk-..."`).
/// Elsewhere the value helps (`port = "eighty"`, `api_type = "telepathy"`) and stays.
fn may_quote_a_secret(key: &str, problem: &str) -> bool {
    key.split(['.', '[']).any(env::is_secret_key)
        || [
            "expected struct",
            "expected a map",
            "expected a sequence",
            "expected a table",
            "expected a list",
        ]
        .iter()
        .any(|e| problem.contains(e))
}

/// Drop the values that parser and serde messages quote (`invalid type: string
/// "sk-...", expected ...`, `unknown variant `sk-...``): the key path says where the
/// mistake is, and the value may be a secret. Backquoted field names and the
/// expected variants stay.
pub(crate) fn scrub_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(['"', '`']) {
        out.push_str(&rest[..start]);
        let quote = &rest[start..start + 1];
        let close = rest[start + 1..].find(quote).map(|len| start + 1 + len + 1);
        if quote == "`" {
            // A name (or an expected token such as `"`): kept as written.
            let end = close.unwrap_or(rest.len());
            out.push_str(&rest[start..end]);
            rest = &rest[end..];
        } else {
            out.push_str("a string");
            rest = close.map_or("", |end| &rest[end..]);
        }
    }
    out.push_str(rest);
    let mut out = out.replace("string a string", "a string");
    if let Some(at) = out.find("unknown variant `") {
        let from = at + "unknown variant `".len();
        if let Some(len) = out[from..].find('`') {
            out.replace_range(at..from + len + 1, "unknown value");
        }
    }
    out
}

/// Read a TOML, JSON or YAML config file into a value tree with `env:` substituted
/// (not yet checked; see [`Config::from_value`]). `.py` files are refused: only the
/// Python package can execute them.
pub fn load_tree(path: &Path) -> Result<Value, ConfigError> {
    let format = Format::of(path)?;
    if format == Format::Python {
        return Err(ConfigError::new(path, "", python_config_message()));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path, "", format!("cannot read config file: {e}")))?;
    let mut tree = parse_text(&text, format, path)?;
    env::substitute(&mut tree, path)?;
    Ok(tree)
}

pub fn python_config_message() -> String {
    "a .py config file is executed by Python: install the Python package \
     (pip install lm-proxy-server) and start the server with its `lm-proxy-server` command"
        .into()
}

impl Config {
    /// Read, substitute and check a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::from_value(load_tree(path)?, path)
    }

    /// Build a config from an already parsed tree (`env:` already substituted).
    /// `path` is used for error messages and relative lookups.
    pub fn from_value(tree: Value, path: &Path) -> Result<Config, ConfigError> {
        if !tree.is_object() {
            return Err(ConfigError::new(
                path,
                "",
                format!(
                    "the config must be a table of settings, found {}",
                    json_type(&tree)
                ),
            ));
        }
        let mut settings: FileConfig = deserialize_at(tree, "", path)?;
        check_gate_secrets(&mut settings, path)?;

        let api_prefix = normalize_prefix(&settings.api_prefix);
        if api_prefix.contains(['?', '#', '{', '}', '*']) {
            return Err(ConfigError::new(
                path,
                "api_prefix",
                format!("'{}' is not a valid URL path prefix", settings.api_prefix),
            ));
        }

        let mut connections = IndexMap::new();
        // A disabled service answers 503 on the API without routing anywhere, so
        // (as in the reference) it needs no connection; an enabled one does.
        if settings.connections.is_empty() && settings.enabled {
            return Err(ConfigError::new(
                path,
                "connections",
                "at least one connection is required (unless `enabled = false`)",
            ));
        }
        for (name, raw) in &settings.connections {
            let key = key_of("connections", name);
            if name.is_empty() || name.contains('.') {
                return Err(ConfigError::new(
                    path,
                    key,
                    "connection names must be non-empty and contain no '.' (routing values are `connection.model`)",
                ));
            }
            let mut spec = parse_connection(raw, &key, path)?;
            if let ConnectionSpec::Provider(provider) = &mut spec {
                provider.api_key = check_provider_key(provider.api_key.take(), &key, path)?;
            }
            connections.insert(name.clone(), spec);
        }

        let api_key_check = ExtensionSpec::parse(&settings.api_key_check, "api_key_check")
            .map_err(|p| ConfigError::new(path, "api_key_check", p))?;
        let before = parse_extension_list(&settings.before, "before", path)?;
        let loggers = parse_extension_list(&settings.loggers, "loggers", path)?;
        let mut components = IndexMap::new();
        for (name, raw) in &settings.components {
            let key = key_of("components", name);
            if let Some(spec) =
                ExtensionSpec::parse(raw, &key).map_err(|p| ConfigError::new(path, &key, p))?
            {
                components.insert(name.clone(), spec);
            }
        }

        let config = Config {
            path: path.to_path_buf(),
            api_prefix,
            connections,
            api_key_check,
            before,
            loggers,
            components,
            settings,
        };
        config.check_references()?;
        Ok(config)
    }

    /// Cross-key checks: routing targets, group connection lists, TLS pair.
    fn check_references(&self) -> Result<(), ConfigError> {
        let path = &self.path;
        let known = || {
            self.connections
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (pattern, target) in &self.settings.routing {
            let key = key_of("routing", pattern);
            let (conn, model) = split_route_target(target);
            if conn.is_empty() {
                return Err(ConfigError::new(
                    path,
                    key,
                    format!("'{target}' must be \"connection.model\" or \"connection.*\""),
                ));
            }
            match self.connections.get(conn) {
                None => {
                    return Err(ConfigError::new(
                        path,
                        key,
                        format!(
                            "unknown connection '{conn}'; defined connections: {}",
                            known()
                        ),
                    ))
                }
                Some(ConnectionSpec::Provider(p)) if model.is_none() && p.model.is_none() => {
                    return Err(ConfigError::new(
                        path,
                        key,
                        format!(
                            "'{target}' names no model and connection '{conn}' has no `model`; \
                             write \"{conn}.*\" to pass the client's model name through"
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        crate::routing::compile_patterns(self.settings.routing.keys().map(String::as_str))
            .map_err(|(pattern, problem)| {
                ConfigError::new(path, key_of("routing", &pattern), problem)
            })?;

        for (group, cfg) in &self.settings.groups {
            if let Some(names) = cfg.allowed_connections.names() {
                for name in names {
                    if !self.connections.contains_key(&name) {
                        return Err(ConfigError::new(
                            path,
                            format!("{}.allowed_connections", key_of("groups", group)),
                            format!(
                                "unknown connection '{name}'; defined connections: {}",
                                known()
                            ),
                        ));
                    }
                }
            }
        }

        match (&self.settings.ssl_keyfile, &self.settings.ssl_certfile) {
            (Some(_), None) => Err(ConfigError::new(
                path,
                "ssl_certfile",
                "ssl_keyfile is set, so ssl_certfile must be set too",
            )),
            (None, Some(_)) => Err(ConfigError::new(
                path,
                "ssl_keyfile",
                "ssl_certfile is set, so ssl_keyfile must be set too",
            )),
            _ => Ok(()),
        }?;
        if !matches!(self.settings.invalid_api_key_status, 401 | 403) {
            return Err(ConfigError::new(
                path,
                "invalid_api_key_status",
                format!(
                    "must be 401 (as OpenAI answers; the default) or 403 (as the Python lm-proxy did), found {}",
                    self.settings.invalid_api_key_status
                ),
            ));
        }
        if self.settings.max_request_body_mb <= 0.0 {
            return Err(ConfigError::new(
                path,
                "max_request_body_mb",
                "must be greater than 0",
            ));
        }
        if let Some(database) = &self.settings.database {
            database.check(path)?;
        }
        for (group, cfg) in &self.settings.groups {
            // Managed keys' budgets are named `key:<id>` among the groups' (the
            // ledger's sums, PostgreSQL's `budget_usage`).
            if group.starts_with(crate::usage::budget::KEY_PREFIX) {
                return Err(ConfigError::new(
                    path,
                    key_of("groups", group),
                    "group names may not start with \"key:\" (it names managed keys' budgets)",
                ));
            }
            if let Some(budget) = &cfg.budget {
                let key = format!("{}.budget", key_of("groups", group));
                budget.check(path, &key)?;
                if self.settings.database.is_none() {
                    return Err(ConfigError::new(
                        path,
                        &key,
                        "a budget needs the usage ledger: add a [database] section",
                    ));
                }
            }
        }
        if self.settings.admin.is_some() && self.settings.database.is_none() {
            return Err(ConfigError::new(
                path,
                "admin",
                "the admin API keeps managed keys in the usage database: add a [database] section",
            ));
        }
        crate::usage::prices::Prices::check(&self.settings.pricing, path)?;
        self.check_metrics_path()
    }

    /// `metrics.path` must be a plain path that no other endpoint uses.
    fn check_metrics_path(&self) -> Result<(), ConfigError> {
        let metrics = &self.settings.metrics;
        if !metrics.enabled {
            return Ok(());
        }
        let p = metrics.path.as_str();
        let taken = [
            "/health".to_owned(),
            format!("{}/chat/completions", self.api_prefix),
            format!("{}/models", self.api_prefix),
            // The admin API's (`api::admin`), routed with `[admin]`.
            "/admin/keys".to_owned(),
            "/admin/usage".to_owned(),
        ];
        let problem = if !p.starts_with('/') || p.len() < 2 {
            Some(format!(
                "'{p}' must be a path starting with '/', such as \"/metrics\""
            ))
        } else if p.contains(['?', '#', '{', '}', '*', ' ']) || p.ends_with('/') {
            Some(format!("'{p}' is not a valid URL path"))
        } else if taken.iter().any(|t| t == p) {
            Some(format!("'{p}' is already used by another endpoint"))
        } else if p.starts_with("/admin/keys/") {
            Some(format!("'{p}' is under /admin/keys/, the admin API's"))
        } else if p.starts_with(&format!("{}/models/", self.api_prefix)) {
            // `{api_prefix}/models/{id}` takes every path below it (ids may hold `/`).
            Some(format!(
                "'{p}' is under {}/models/, where models are retrieved by id",
                self.api_prefix
            ))
        } else {
            None
        };
        match problem {
            Some(problem) => Err(ConfigError::new(&self.path, "metrics.path", problem)),
            None => Ok(()),
        }
    }

    /// The status answered for a missing or unknown client key (401 or 403, checked
    /// at load).
    pub fn invalid_api_key_status(&self) -> http::StatusCode {
        http::StatusCode::from_u16(self.settings.invalid_api_key_status)
            .unwrap_or(http::StatusCode::UNAUTHORIZED)
    }

    /// The request body limit in bytes.
    pub fn body_limit_bytes(&self) -> usize {
        (self.settings.max_request_body_mb * 1024.0 * 1024.0) as usize
    }
}

/// Client keys (`groups.*.api_keys`) and the metrics token open the gateway, so an
/// empty one is a startup error rather than a key that matches "no key" (or a token
/// that means "no token"). Surrounding whitespace (a file's last newline) is removed
/// with a warning, since clients' keys are compared trimmed; a value that no client
/// could send (control or non-ASCII characters) is an error. Messages name the
/// key, never the value.
fn check_gate_secrets(settings: &mut FileConfig, path: &Path) -> Result<(), ConfigError> {
    for (group, cfg) in settings.groups.iter_mut() {
        for (i, api_key) in cfg.api_keys.iter_mut().enumerate() {
            let key = format!("{}.api_keys[{i}]", key_of("groups", group));
            *api_key = gate_secret(
                api_key,
                &key,
                path,
                "remove it, or write \"env:NAME?\" for a key that may be absent",
            )?;
        }
    }
    if let Some(token) = settings.metrics.token.as_mut() {
        *token = gate_secret(
            token,
            "metrics.token",
            path,
            "leave `token` out to serve metrics without one",
        )?;
    }
    if let Some(admin) = settings.admin.as_mut() {
        admin.token = gate_secret(
            &admin.token,
            "admin.token",
            path,
            "leave [admin] out to serve no admin API",
        )?;
        // The admin token must not open the client doors, nor a client key the
        // admin API.
        if settings
            .groups
            .values()
            .any(|g| g.api_keys.contains(&admin.token))
        {
            return Err(ConfigError::new(
                path,
                "admin.token",
                "is also a client key in [groups]; give the admin API a token of its own",
            ));
        }
    }
    Ok(())
}

fn gate_secret(value: &str, key: &str, path: &Path, advice: &str) -> Result<String, ConfigError> {
    let trimmed = trim_secret(value, key, path);
    if trimmed.is_empty() {
        return Err(ConfigError::new(
            path,
            key,
            format!("is empty, which would let requests without a key in; {advice}"),
        ));
    }
    // What a client can send in a header value, and so match: visible ASCII and
    // spaces (inside the key; `Bearer` values are trimmed).
    if !trimmed.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(ConfigError::new(
            path,
            key,
            "contains control or non-ASCII characters, which no client can send in `Authorization: Bearer`",
        ));
    }
    Ok(trimmed)
}

/// The value without surrounding whitespace, warned about (key named, value not).
fn trim_secret(value: &str, key: &str, path: &Path) -> String {
    let trimmed = value.trim();
    if trimmed.len() != value.len() && !trimmed.is_empty() {
        tracing::warn!(
            "{}: {key}: whitespace around the value (such as the newline at the end of a file or variable) was removed",
            path.display()
        );
    }
    trimmed.to_owned()
}

/// A provider `api_key` goes into an HTTP header (`Authorization: Bearer ...`,
/// `x-api-key`, ...). One with a trailing newline (read from a file or a variable)
/// made no valid header, and the key was silently not sent: it is trimmed, with a
/// warning. `""` still means "no key" (local servers); a blank value or one with
/// control characters inside stops startup.
fn check_provider_key(
    api_key: Option<String>,
    parent: &str,
    path: &Path,
) -> Result<Option<String>, ConfigError> {
    let Some(value) = api_key else {
        return Ok(None);
    };
    if value.is_empty() {
        return Ok(Some(value));
    }
    let key = format!("{parent}.api_key");
    let trimmed = trim_secret(&value, &key, path);
    if trimmed.is_empty() {
        return Err(ConfigError::new(
            path,
            key,
            "is blank (only whitespace); leave it out to send no key",
        ));
    }
    if trimmed.chars().any(char::is_control) || http::HeaderValue::from_str(&trimmed).is_err() {
        return Err(ConfigError::new(
            path,
            key,
            "contains control or non-ASCII characters, which no HTTP header can carry",
        ));
    }
    Ok(Some(trimmed))
}

/// Split a routing value at the first dot: `conn.model`, `conn.*`, or `conn`
/// (the connection's own `model`). Returns the model part, `None` for "use the
/// connection's default".
pub fn split_route_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once('.') {
        Some((conn, model)) if !model.is_empty() => (conn.trim(), Some(model.trim())),
        Some((conn, _)) => (conn.trim(), None),
        None => (target.trim(), None),
    }
}

fn parse_connection(raw: &Value, key: &str, path: &Path) -> Result<ConnectionSpec, ConfigError> {
    match raw {
        Value::Object(map) if map.contains_key("class") => {
            let spec = ExtensionSpec::parse(raw, key).map_err(|p| ConfigError::new(path, key, p))?;
            Ok(ConnectionSpec::Extension(spec.expect("a class table is never empty")))
        }
        Value::Object(map) if map.contains_key("api_type") => {
            let settings: ProviderSettings = deserialize_at(raw.clone(), key, path)?;
            Ok(ConnectionSpec::Provider(Box::new(settings)))
        }
        Value::Object(_) => Err(ConfigError::new(
            path,
            key,
            "a connection needs `api_type` (open_ai, anthropic, google, google_vertex_ai, function, mock) or `class`",
        )),
        Value::String(s) if !s.trim().is_empty() => Ok(ConnectionSpec::Extension(ExtensionSpec {
            target: s.trim().to_owned(),
            kwargs: Default::default(),
            key: key.to_owned(),
            is_class_table: false,
        })),
        other => Err(ConfigError::new(
            path,
            key,
            format!("expected a table of connection settings or a dotted path, found {}", json_type(other)),
        )),
    }
}

fn parse_extension_list(
    items: &[Value],
    name: &str,
    path: &Path,
) -> Result<Vec<ExtensionSpec>, ConfigError> {
    let mut out = Vec::new();
    for (i, raw) in items.iter().enumerate() {
        let key = format!("{name}[{i}]");
        if let Some(spec) =
            ExtensionSpec::parse(raw, &key).map_err(|p| ConfigError::new(path, &key, p))?
        {
            out.push(spec);
        }
    }
    Ok(out)
}

/// Deserialize a subtree, reporting the failing key as a full dotted path.
pub fn deserialize_at<T: DeserializeOwned>(
    tree: Value,
    prefix: &str,
    path: &Path,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(tree).map_err(|err| {
        // Segment by segment, quoted as every other config error quotes keys
        // (`routing."gpt-*"`, not `routing.gpt-*`), so one key has one name.
        let mut key = prefix.to_owned();
        for segment in err.path().iter() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => key.push_str(&format!("[{index}]")),
                serde_path_to_error::Segment::Map { key: name }
                | serde_path_to_error::Segment::Enum { variant: name } => push_key(&mut key, name),
                serde_path_to_error::Segment::Unknown => {
                    if !key.is_empty() {
                        key.push('.');
                    }
                    key.push('?');
                }
            }
        }
        let problem = err.into_inner().to_string();
        let problem = if may_quote_a_secret(&key, &problem) {
            scrub_values(&problem)
        } else {
            problem
        };
        ConfigError::new(path, key, problem)
    })
}

fn key_of(parent: &str, name: &str) -> String {
    let mut key = parent.to_owned();
    push_key(&mut key, name);
    key
}

fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else if trimmed.starts_with('/') {
        trimmed.to_owned()
    } else {
        format!("/{trimmed}")
    }
}

/// A cache's time to live from a number of seconds in the config: at least 1 ms,
/// and at most about 31 years (moka refuses, by panicking, lifetimes past 1,000
/// years; the config accepts numbers up to `lenient::MAX_NUMBER`).
pub fn cache_ttl(seconds: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(seconds.clamp(0.001, 1e9))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load(tree: Value) -> Result<Config, ConfigError> {
        Config::from_value(tree, Path::new("test.toml"))
    }

    #[test]
    fn defaults_match_the_reference() {
        let c = load(json!({"connections": {"m": {"api_type": "mock"}}})).unwrap();
        let s = &c.settings;
        assert!(s.enabled);
        assert_eq!((s.host.as_str(), s.port), ("0.0.0.0", 8000));
        assert_eq!(c.api_prefix, "/v1");
        assert!(!s.dev_autoreload);
        assert!(s.routing.is_empty());
        assert_eq!(s.groups.keys().collect::<Vec<_>>(), ["default"]);
        assert_eq!(c.api_key_check.unwrap().target, DEFAULT_KEY_CHECK);
        assert!(c.loggers.is_empty() && c.before.is_empty() && c.components.is_empty());
        assert_eq!(s.encryption_key, "Eclipse");
        assert_eq!(s.model_listing_mode, ModelListingMode::AsIs);
        assert!(s.model_info.is_empty());
    }

    #[test]
    fn only_a_disabled_service_may_have_no_connections() {
        let c = load(json!({"enabled": false})).unwrap();
        assert!(!c.settings.enabled && c.connections.is_empty());
        let c = load(json!({"enabled": false, "connections": {}})).unwrap();
        assert!(c.connections.is_empty());

        let err = load(json!({"connections": {}})).unwrap_err();
        assert_eq!(err.key, "connections");
        assert!(err.problem.contains("at least one connection"), "{err}");
        let err = load(json!({"enabled": true})).unwrap_err();
        assert_eq!(err.key, "connections");
    }

    #[test]
    fn invalid_api_key_status_is_401_or_403() {
        let base = json!({"connections": {"m": {"api_type": "mock"}}});
        let c = load(base.clone()).unwrap();
        assert_eq!(c.invalid_api_key_status(), http::StatusCode::UNAUTHORIZED);
        for (value, status) in [(json!(403), 403), (json!("403"), 403), (json!(401), 401)] {
            let mut tree = base.clone();
            tree["invalid_api_key_status"] = value;
            assert_eq!(load(tree).unwrap().invalid_api_key_status(), status);
        }
        for value in [json!(400), json!(404), json!(0), json!("x")] {
            let mut tree = base.clone();
            tree["invalid_api_key_status"] = value.clone();
            let err = load(tree).unwrap_err();
            assert_eq!(err.key, "invalid_api_key_status", "{value}: {err}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let err =
            load(json!({"connections": {"m": {"api_type": "mock"}}, "bogus": 1})).unwrap_err();
        assert!(err.problem.contains("unknown field `bogus`"), "{err}");

        let err =
            load(json!({"connections": {"m": {"api_type": "mock"}}, "port": "abc"})).unwrap_err();
        assert_eq!(err.key, "port");

        let err = load(json!({"connections": {"m": {"api_type": "nope"}}})).unwrap_err();
        assert_eq!(err.key, "connections.m.api_type");

        let err = load(
            json!({"connections": {"m": {"api_type": "mock"}}, "routing": {"gpt*": "other.*"}}),
        )
        .unwrap_err();
        assert_eq!(err.key, "routing.\"gpt*\"");
        assert!(
            err.problem.contains("unknown connection 'other'") && err.problem.contains("m"),
            "{err}"
        );

        let err =
            load(json!({"connections": {"m": {"api_type": "mock"}}, "routing": {"[abc": "m.*"}}))
                .unwrap_err();
        assert_eq!(err.key, "routing.\"[abc\"");

        let err = load(json!({"connections": {"m": {"api_type": "mock"}}, "groups": {"g": {"allowed_connections": "m, x"}}})).unwrap_err();
        assert_eq!(err.key, "groups.g.allowed_connections");

        let err = load(
            json!({"connections": {"m": {"api_type": "mock"}}, "groups": {"g": {"api_keys": "k"}}}),
        )
        .unwrap_err();
        assert_eq!(err.key, "groups.g.api_keys");
    }

    #[test]
    fn strings_from_env_coerce_to_numbers_and_bools() {
        let c = load(json!({"connections": {"m": {"api_type": "mock", "timeout": "2.5"}}, "port": "9000", "enabled": "no"})).unwrap();
        assert_eq!(c.settings.port, 9000);
        assert!(!c.settings.enabled);
        match &c.connections["m"] {
            ConnectionSpec::Provider(p) => assert_eq!(p.timeout, Some(2.5)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn prefixes_are_normalised() {
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix("v1/"), "/v1");
        assert_eq!(normalize_prefix("/api/v1"), "/api/v1");
    }

    #[test]
    fn route_targets_split_at_the_first_dot() {
        assert_eq!(
            split_route_target("openai.gpt-4.1"),
            ("openai", Some("gpt-4.1"))
        );
        assert_eq!(split_route_target("openai.*"), ("openai", Some("*")));
        assert_eq!(split_route_target("openai"), ("openai", None));
    }

    #[test]
    fn messages_lose_quoted_values_but_keep_names() {
        assert_eq!(
            scrub_values("invalid type: string \"client-abc\", expected a sequence"),
            "invalid type: a string, expected a sequence"
        );
        assert_eq!(
            scrub_values("invalid basic string, expected `\"`"),
            "invalid basic string, expected `\"`"
        );
        assert_eq!(
            scrub_values("unknown variant `sk-123`, expected one of `a`, `b`"),
            "unknown value, expected one of `a`, `b`"
        );
        assert_eq!(
            scrub_values("unknown field `bogus`, expected `x`"),
            "unknown field `bogus`, expected `x`"
        );
        assert_eq!(scrub_values("found \"sk-unclosed"), "found a string");
    }

    #[test]
    fn toml_errors_name_the_key_on_their_line() {
        let text = "a = 1\n[connections.x]\napi_key = \"sk-secret-1\n";
        let err = parse_text(text, Format::Toml, Path::new("c.toml")).unwrap_err();
        assert_eq!(err.key, "connections.x.api_key");
        assert!(err.problem.contains("line 3"), "{err}");
        assert!(!err.to_string().contains("sk-secret"), "{err}");
    }

    #[test]
    fn gate_secrets_are_trimmed_and_checked() {
        let base = |groups: Value, metrics: Value| {
            load(
                json!({"connections": {"m": {"api_type": "mock"}}, "groups": groups, "metrics": metrics}),
            )
        };
        let c = base(
            json!({"g": {"api_keys": [" key-1\n", "two words"]}}),
            json!({"token": "t0k\n"}),
        )
        .unwrap();
        assert_eq!(c.settings.groups["g"].api_keys, ["key-1", "two words"]);
        assert_eq!(c.settings.metrics.token.as_deref(), Some("t0k"));
        let err = base(json!({"g": {"api_keys": ["a\u{1}b"]}}), json!({})).unwrap_err();
        assert_eq!(err.key, "groups.g.api_keys[0]");
        assert!(!err.to_string().contains("a\u{1}b"));
        let err = base(json!({"g": {"api_keys": []}}), json!({"token": " "})).unwrap_err();
        assert_eq!(err.key, "metrics.token");
    }

    /// Each structural check names its key and says what is wrong, and the value
    /// just inside the limit is accepted (so the check is not over-eager either).
    #[test]
    fn structural_mistakes_stop_loading_with_the_key_named() {
        let mock = json!({"api_type": "mock"});
        let cases = [
            (
                json!({"connections": {"a.b": mock}}),
                "connections.\"a.b\"",
                "contain no '.'",
            ),
            (
                json!({"connections": {"": mock}}),
                "connections.\"\"",
                "non-empty",
            ),
            (
                json!({"connections": {"m": mock}, "routing": {"*": "m"}}),
                "routing.\"*\"",
                "names no model and connection 'm' has no `model`",
            ),
            (
                json!({"connections": {"m": mock}, "routing": {"*": "m."}}),
                "routing.\"*\"",
                "names no model",
            ),
            (
                json!({"connections": {"m": mock}, "routing": {"*": ".gpt"}}),
                "routing.\"*\"",
                "must be \"connection.model\"",
            ),
            (
                json!({"connections": {"m": mock}, "api_prefix": "/v1?x=1"}),
                "api_prefix",
                "not a valid URL path prefix",
            ),
            (
                json!({"connections": {"m": mock}, "api_prefix": "/{id}"}),
                "api_prefix",
                "not a valid URL path prefix",
            ),
            (
                json!({"connections": {"m": mock}, "max_request_body_mb": 0}),
                "max_request_body_mb",
                "must be greater than 0",
            ),
            (
                json!({"connections": {"m": mock}, "max_request_body_mb": -1.5}),
                "max_request_body_mb",
                "expected a non-negative number",
            ),
            // Numbers too large for a Duration or a deadline: named, never a panic.
            (
                json!({"connections": {"m": mock}, "shutdown_grace_seconds": 1e300}),
                "shutdown_grace_seconds",
                "no larger than 1e15",
            ),
            (
                json!({"connections": {"m": {"api_type": "mock", "timeout": 1e16}}}),
                "connections.m.timeout",
                "no larger than 1e15",
            ),
            (
                json!({"connections": {"m": mock}, "database": {"flush_interval_seconds": 1e300}}),
                "database.flush_interval_seconds",
                "no larger than 1e15",
            ),
        ];
        for (tree, key, problem) in cases {
            let err = load(tree.clone()).unwrap_err();
            assert_eq!(err.key, key, "{tree}: {err}");
            assert!(err.problem.contains(problem), "{tree}: {err}");
        }
        // Just inside: a route naming no model of a connection that has one, a
        // prefix of plain segments, the smallest positive body limit.
        let c = load(json!({
            "connections": {"m": {"api_type": "mock", "model": "dflt"}},
            "routing": {"*": "m"},
            "api_prefix": "api/v2/",
            "max_request_body_mb": 0.001
        }))
        .unwrap();
        assert_eq!(c.api_prefix, "/api/v2");
        assert_eq!(c.body_limit_bytes(), 1048);
    }
}
