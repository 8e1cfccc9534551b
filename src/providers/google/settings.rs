//! Connection settings of `api_type = "google"` and `"google_vertex_ai"`, checked
//! at startup: unknown keys, conflicting aliases, unreadable credential files and a
//! missing project stop startup with the key named.
//!
//! Key names follow the reference (lm-proxy hands connection keys to MicroCore, whose
//! settings are `google_vertex_project_id`, `google_vertex_location`,
//! `google_vertex_gcloud_auth`, `google_vertex_access_token`,
//! `google_vertex_response_validation`, `google_gemini_safety_settings`, and in newer
//! versions `google_cloud_service_account`, `google_cloud_service_account_json`,
//! `google_cloud_project_id`, `google_cloud_location`), plus `google_vertex_credentials`
//! / `credentials_file` (a credentials file path) and `token_uri` (token endpoint
//! override) of this project.

use std::path::Path;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::request::RequestOptions;
use super::signatures::SignatureStore;
use super::vertex_auth::{find_adc, AdcSource, Credential, CredentialsFile, TokenSource};
use super::{Auth, Endpoint, GoogleProvider, Project};
use crate::config::{ApiType, Config, ConfigError, ProviderSettings};
use crate::providers::{http_settings, reject_unknown_options};

pub const DEFAULT_GOOGLE_BASE: &str = "https://generativelanguage.googleapis.com";
pub const DEFAULT_VERTEX_LOCATION: &str = "us-central1";

/// Keys `api_type = "google"` accepts besides the common ones.
const GOOGLE_OPTIONS: &[&str] = &[
    "google_gemini_safety_settings",
    "safety_settings",
    "allow_gcs_uris",
    "thought_signature_backend",
];

/// Keys `api_type = "google_vertex_ai"` accepts besides the common ones.
const VERTEX_OPTIONS: &[&str] = &[
    "google_gemini_safety_settings",
    "safety_settings",
    "allow_gcs_uris",
    "thought_signature_backend",
    "google_vertex_project_id",
    "google_cloud_project_id",
    "google_vertex_location",
    "google_cloud_location",
    "google_vertex_gcloud_auth",
    "google_vertex_access_token",
    "google_vertex_credentials",
    "credentials_file",
    "google_cloud_service_account",
    "google_cloud_service_account_json",
    "google_vertex_response_validation",
    "token_uri",
];

#[derive(Debug, Default, Deserialize)]
struct RawOptions {
    #[serde(default)]
    google_gemini_safety_settings: Option<Value>,
    #[serde(default)]
    safety_settings: Option<Value>,
    #[serde(default, deserialize_with = "opt_bool")]
    allow_gcs_uris: Option<bool>,
    /// `redis://...`: thought signatures shared by every replica.
    #[serde(default)]
    thought_signature_backend: Option<String>,
    #[serde(default)]
    google_vertex_project_id: Option<String>,
    #[serde(default)]
    google_cloud_project_id: Option<String>,
    #[serde(default)]
    google_vertex_location: Option<String>,
    #[serde(default)]
    google_cloud_location: Option<String>,
    #[serde(default, deserialize_with = "opt_bool")]
    google_vertex_gcloud_auth: Option<bool>,
    #[serde(default)]
    google_vertex_access_token: Option<String>,
    #[serde(default)]
    google_vertex_credentials: Option<String>,
    #[serde(default)]
    credentials_file: Option<String>,
    #[serde(default)]
    google_cloud_service_account: Option<String>,
    #[serde(default)]
    google_cloud_service_account_json: Option<Value>,
    #[serde(default, deserialize_with = "opt_bool")]
    google_vertex_response_validation: Option<bool>,
    #[serde(default)]
    token_uri: Option<String>,
}

fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    crate::config::lenient::bool(d).map(Some)
}

/// The process environment, as the settings see it (a parameter for tests).
pub struct Environment<'a> {
    pub var: &'a dyn Fn(&str) -> Option<String>,
    pub file_exists: &'a dyn Fn(&Path) -> bool,
}

impl Environment<'_> {
    /// The real process environment and file system.
    pub fn process() -> Environment<'static> {
        Environment {
            var: &|name| std::env::var(name).ok(),
            file_exists: &|path| path.is_file(),
        }
    }
}

/// Reports problems as `<file>: <key>.<sub>: <problem>`.
struct Errors<'a> {
    key: &'a str,
    config: &'a Config,
}

impl Errors<'_> {
    fn at(&self, sub: &str, problem: impl Into<String>) -> ConfigError {
        let key = if sub.is_empty() {
            self.key.to_owned()
        } else {
            format!("{}.{sub}", self.key)
        };
        ConfigError::new(&self.config.path, key, problem)
    }
}

/// A non-empty trimmed string (`env:` substitution turns a missing variable into "").
fn text(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// At most one of several alias keys may be set; returns `(key, value)`.
fn one_of<'a>(
    errors: &Errors,
    candidates: &[(&'static str, Option<&'a str>)],
) -> Result<Option<(&'static str, &'a str)>, ConfigError> {
    let set: Vec<(&'static str, &'a str)> = candidates
        .iter()
        .filter_map(|(k, v)| v.map(|v| (*k, v)))
        .collect();
    match set.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        [first, second, ..] => Err(errors.at(
            second.0,
            format!("set only one of `{}` and `{}`", first.0, second.0),
        )),
    }
}

/// `safetySettings`: a list of `{category, threshold}` tables, or (MicroCore's form)
/// a table `{CATEGORY = "THRESHOLD"}`.
fn safety_settings(raw: &RawOptions, errors: &Errors) -> Result<Option<Value>, ConfigError> {
    let (key, value) = match (&raw.google_gemini_safety_settings, &raw.safety_settings) {
        (Some(_), Some(_)) => {
            return Err(errors.at(
                "safety_settings",
                "set only one of `google_gemini_safety_settings` and `safety_settings`",
            ))
        }
        (Some(v), None) => ("google_gemini_safety_settings", v),
        (None, Some(v)) => ("safety_settings", v),
        (None, None) => return Ok(None),
    };
    let invalid = || errors.at(key, "expected a list of {category, threshold} tables");
    let parsed;
    let value = match value {
        Value::Null => return Ok(None),
        Value::String(s) if s.trim().is_empty() => return Ok(None),
        // `env:` substitution gives strings: accept JSON text.
        Value::String(s) => {
            parsed = serde_json::from_str::<Value>(s).map_err(|_| invalid())?;
            &parsed
        }
        other => other,
    };
    normalize_safety(value).map(Some).ok_or_else(invalid)
}

fn normalize_safety(value: &Value) -> Option<Value> {
    match value {
        Value::Array(items) => items
            .iter()
            .all(|i| i.get("category").is_some_and(Value::is_string))
            .then(|| value.clone()),
        Value::Object(map) => {
            let mut list = Vec::with_capacity(map.len());
            for (category, threshold) in map {
                let mut item = Map::new();
                item.insert("category".into(), Value::String(category.clone()));
                item.insert(
                    "threshold".into(),
                    Value::String(threshold.as_str()?.to_owned()),
                );
                list.push(Value::Object(item));
            }
            Some(Value::Array(list))
        }
        _ => None,
    }
}

/// `base` with an API version: kept as is when it already ends in one.
fn versioned(base: &str, default_version: &str) -> String {
    let last = base.rsplit('/').next().unwrap_or("");
    if matches!(last, "v1" | "v1beta" | "v1beta1") {
        base.to_owned()
    } else {
        format!("{base}/{default_version}")
    }
}

fn api_key_header(key: &str, errors: &Errors) -> Result<HeaderValue, ConfigError> {
    let mut value = HeaderValue::from_str(key).map_err(|_| {
        errors.at(
            "api_key",
            "contains characters not allowed in an HTTP header",
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Build a Google or Vertex provider from its connection settings.
pub fn build(
    name: &str,
    key: &str,
    settings: &ProviderSettings,
    config: &Config,
    client: &crate::upstream::UpstreamClient,
    env: &Environment,
) -> Result<GoogleProvider, ConfigError> {
    let errors = Errors { key, config };
    let vertex = settings.api_type == ApiType::GoogleVertexAi;
    reject_unknown_options(
        settings,
        if vertex {
            VERTEX_OPTIONS
        } else {
            GOOGLE_OPTIONS
        },
        key,
        config,
    )?;
    let raw: RawOptions =
        crate::config::deserialize_at(Value::Object(settings.options.clone()), key, &config.path)?;
    let request_options = RequestOptions {
        safety_settings: safety_settings(&raw, &errors)?,
        allow_gcs_uris: raw.allow_gcs_uris.unwrap_or(false),
        signatures: SignatureStore::new(match text(&raw.thought_signature_backend) {
            None => None,
            Some(url) => Some(
                crate::shared_state::RedisStore::new(url)
                    .map_err(|problem| errors.at("thought_signature_backend", problem))?,
            ),
        }),
    };

    if !vertex {
        let http = http_settings(settings, DEFAULT_GOOGLE_BASE, key, config)?;
        let auth = match &http.api_key {
            Some(api_key) => Auth::ApiKey(api_key_header(api_key, &errors)?),
            // A custom base may be a proxy that adds the key itself.
            None if http.base != DEFAULT_GOOGLE_BASE => Auth::None,
            None => {
                return Err(errors.at(
                    "api_key",
                    "a Gemini API key is required (from https://aistudio.google.com/apikey)",
                ))
            }
        };
        return Ok(GoogleProvider::assemble(
            name,
            Endpoint::AiStudio {
                root: versioned(&http.base, "v1beta"),
            },
            auth,
            http,
            client,
            request_options,
            false,
        ));
    }

    let location = one_of(
        &errors,
        &[
            ("google_vertex_location", text(&raw.google_vertex_location)),
            ("google_cloud_location", text(&raw.google_cloud_location)),
        ],
    )?;
    let (location_key, location) =
        location.unwrap_or(("google_vertex_location", DEFAULT_VERTEX_LOCATION));
    if !location
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(errors.at(
            location_key,
            format!("'{location}' is not a Google Cloud location (like us-central1, europe-west4 or global)"),
        ));
    }
    let default_base = match location {
        "global" => "https://aiplatform.googleapis.com".to_owned(),
        "us" | "eu" => format!("https://aiplatform.{location}.rep.googleapis.com"),
        _ => format!("https://{location}-aiplatform.googleapis.com"),
    };
    let validate = raw.google_vertex_response_validation.unwrap_or(false);

    let access_token = text(&raw.google_vertex_access_token);
    let credentials_path = one_of(
        &errors,
        &[
            (
                "google_vertex_credentials",
                text(&raw.google_vertex_credentials),
            ),
            ("credentials_file", text(&raw.credentials_file)),
            (
                "google_cloud_service_account",
                text(&raw.google_cloud_service_account),
            ),
        ],
    )?;
    let inline_json = match &raw.google_cloud_service_account_json {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(table @ Value::Object(_)) => Some(table.to_string()),
        Some(_) => {
            return Err(errors.at(
                "google_cloud_service_account_json",
                "expected the service-account JSON as a string or a table",
            ))
        }
    };
    let explicit: Vec<&str> = [
        access_token.map(|_| "google_vertex_access_token"),
        credentials_path.map(|(k, _)| k),
        inline_json
            .as_ref()
            .map(|_| "google_cloud_service_account_json"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if explicit.len() > 1 {
        return Err(errors.at(
            explicit[1],
            format!("set only one of `{}` and `{}`", explicit[0], explicit[1]),
        ));
    }

    // Express mode: an API key instead of OAuth, and no project in the path.
    if settings
        .api_key
        .as_deref()
        .is_some_and(|k| !k.trim().is_empty())
    {
        if let Some(other) = explicit.first() {
            return Err(errors.at(
                "api_key",
                format!("use either `api_key` (Vertex express mode) or `{other}`, not both"),
            ));
        }
        let http = http_settings(settings, "https://aiplatform.googleapis.com", key, config)?;
        let api_key = http.api_key.as_deref().unwrap_or_default();
        return Ok(GoogleProvider::assemble(
            name,
            Endpoint::VertexExpress {
                root: versioned(&http.base, "v1"),
            },
            Auth::ApiKey(api_key_header(api_key, &errors)?),
            http,
            client,
            request_options,
            validate,
        ));
    }

    let mut http = http_settings(settings, &default_base, key, config)?;

    // Where tokens come from.
    enum Source {
        Fixed(Credential),
        File(CredentialsFile),
        Metadata(String),
    }
    let source = if let Some(token) = access_token {
        Source::Fixed(
            Credential::fixed(token).map_err(|p| errors.at("google_vertex_access_token", p))?,
        )
    } else if let Some((path_key, path)) = credentials_path {
        Source::File(CredentialsFile::load(Path::new(path)).map_err(|p| errors.at(path_key, p))?)
    } else if let Some(json) = &inline_json {
        Source::File(
            CredentialsFile::parse(json)
                .map_err(|p| errors.at("google_cloud_service_account_json", p))?,
        )
    } else if raw.google_vertex_gcloud_auth == Some(false) {
        return Err(errors.at(
            "",
            "no Vertex credentials: set google_vertex_credentials (a credentials JSON file), \
             google_vertex_access_token, or google_vertex_gcloud_auth = true to use \
             Application Default Credentials",
        ));
    } else {
        // The reference ran `gcloud auth application-default print-access-token`; the
        // same credentials are found here the way Google's client libraries find them.
        match find_adc(env.var, env.file_exists) {
            AdcSource::File { path, found_by } => {
                Source::File(CredentialsFile::load(&path).map_err(|p| {
                    errors.at(
                        "google_vertex_gcloud_auth",
                        format!("Application Default Credentials (found by {found_by}): {p}"),
                    )
                })?)
            }
            AdcSource::Metadata { host } => Source::Metadata(host),
        }
    };

    // Project: the connection key, then GOOGLE_CLOUD_PROJECT (legacy GCLOUD_PROJECT),
    // then the credentials file, then the metadata server.
    let configured = one_of(
        &errors,
        &[
            (
                "google_vertex_project_id",
                text(&raw.google_vertex_project_id),
            ),
            (
                "google_cloud_project_id",
                text(&raw.google_cloud_project_id),
            ),
        ],
    )?;
    let from_env = ["GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT"]
        .into_iter()
        .find_map(|name| {
            let value = (env.var)(name)?.trim().to_owned();
            (!value.is_empty()).then_some((name, value))
        });
    let from_file = match &source {
        Source::File(file) => file
            .project_id()
            .map(|p| ("the credentials file", p.to_owned())),
        _ => None,
    };
    let project = if let Some((project_key, project)) = configured {
        Project::Fixed(checked_project(project).map_err(|p| errors.at(project_key, p))?)
    } else if let Some((origin, project)) = from_env.or(from_file) {
        Project::Fixed(checked_project(&project).map_err(|p| {
            errors.at(
                "google_vertex_project_id",
                format!("project from {origin}: {p}"),
            )
        })?)
    } else if let Source::Metadata(host) = &source {
        Project::Metadata {
            host: host.clone(),
            cell: tokio::sync::OnceCell::new(),
        }
    } else {
        return Err(errors.at(
            "google_vertex_project_id",
            "no Google Cloud project: set google_vertex_project_id (or the GOOGLE_CLOUD_PROJECT environment variable)",
        ));
    };

    // User credentials bill their quota project (as google-auth does).
    if let Source::File(file) = &source {
        let name = HeaderName::from_static("x-goog-user-project");
        if let Some(quota) = file.quota_project() {
            if !http.headers.contains_key(&name) {
                if let Ok(value) = HeaderValue::from_str(quota) {
                    http.headers.insert(name, value);
                }
            }
        }
    }

    let token_uri = match text(&raw.token_uri) {
        None => None,
        Some(uri) => match reqwest::Url::parse(uri) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Some(uri.to_owned()),
            _ => return Err(errors.at("token_uri", format!("'{uri}' is not an http(s) URL"))),
        },
    };

    let credential = match source {
        Source::Fixed(credential) => credential,
        Source::File(file) => Credential::from_file(file),
        Source::Metadata(host) => Credential::Metadata { host },
    };
    let tokens = TokenSource::new(
        name,
        credential,
        token_uri,
        client.reqwest().clone(),
        // Token endpoints answer fast; do not let a hung one hold requests for the
        // (long) generation timeout.
        http.timeout.min(TOKEN_TIMEOUT),
    );
    Ok(GoogleProvider::assemble(
        name,
        Endpoint::Vertex {
            root: versioned(&http.base, "v1"),
            location: location.to_owned(),
            project,
        },
        Auth::Tokens(Arc::new(tokens)),
        http,
        client,
        request_options,
        validate,
    ))
}

/// The longest a token (or metadata) request may take.
pub const TOKEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Project ids are lowercase letters, digits and hyphens; older domain-scoped ones
/// look like `example.com:project`. Anything else would change the URL path.
pub fn checked_project(project: &str) -> Result<String, String> {
    let ok = !project.is_empty()
        && project
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_'));
    if ok {
        Ok(project.to_owned())
    } else {
        Err(format!(
            "'{project}' is not a valid Google Cloud project id"
        ))
    }
}
