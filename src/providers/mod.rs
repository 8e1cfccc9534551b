//! Connections to model providers: the `Provider` trait, the request every provider
//! receives, and building providers from the config.
//!
//! A provider speaks the OpenAI shape to the core on both sides: it takes an
//! [`UpstreamCall`] (OpenAI request fields) and answers with a `chat.completion`
//! object or a stream of `chat.completion.chunk` objects. OpenAI-compatible
//! upstreams get the body passed through; other providers translate (Anthropic:
//! `anthropic/`; `fanout` gives providers without a native `n` their choices).

pub(crate) mod anthropic;
pub(crate) mod chunk_text;
mod deadline;
pub mod doors;
mod fallback;
pub(crate) mod fanout;
pub(crate) mod google;
mod mock;
mod openai;
pub(crate) mod raw_request;
pub(crate) mod upstream_http;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::config::{
    ApiType, Config, ConfigError, ConnectionSpec, ExtensionSpec, ProviderSettings,
};
use crate::error::ApiError;
use crate::extensions::{builtin_name, Builtin, ExtensionResolver};
use crate::payload::{Payload, PayloadStream};
use crate::streaming::ChunkStream;

pub use anthropic::AnthropicProvider;
pub use fallback::{Fallback, FallbackMember};
pub use google::GoogleProvider;
pub use mock::MockProvider;
pub use openai::OpenAiProvider;

/// Default upstream timeout when a connection sets none, in seconds.
pub const DEFAULT_TIMEOUT_SECS: f64 = 600.0;

/// One call to an upstream model.
#[derive(Debug, Clone)]
pub struct UpstreamCall {
    /// The upstream model name (after routing).
    pub model: String,
    /// OpenAI request fields, `model` excluded: `messages`, `stream`, `tools`, ...
    /// and every field this code does not know, in the client's order.
    pub params: Map<String, Value>,
    /// Extra HTTP headers for this call (from handlers' `llm_params.extra_headers`).
    pub headers: http::HeaderMap,
    /// The names of `headers` as the handlers spelled them (where not title case).
    pub header_case: crate::upstream::HeaderCase,
    /// The gateway wants a stream's usage (for loggers and metrics) whether or not
    /// the client asked for it: providers send the usage chunk as if asked
    /// ([`UpstreamCall::include_usage`]), and the core keeps it from a client that
    /// did not ask ([`UpstreamCall::client_include_usage`]).
    pub gateway_usage: bool,
    /// The client's chat request as it came (`api::raw_chat`), for a provider that
    /// sends it on as it is ([`Provider::takes_raw_chat`]); `params` is then empty
    /// (this tells whether the call streams). Never set for a call to any other
    /// provider.
    pub raw_body: Option<crate::api::raw_chat::RawChatRequest>,
}

impl UpstreamCall {
    pub fn is_stream(&self) -> bool {
        match &self.raw_body {
            Some(raw) => raw.stream == Some(true),
            None => self
                .params
                .get("stream")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    }

    pub fn messages(&self) -> &[Value] {
        self.params
            .get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// `n`, defaulting to 1.
    pub fn choice_count(&self) -> u64 {
        self.params
            .get("n")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .max(1)
    }

    /// Whether the stream ends with a usage chunk: the client asked for it, or the
    /// gateway wants it for its loggers and metrics.
    pub fn include_usage(&self) -> bool {
        self.gateway_usage || self.client_include_usage()
    }

    /// Whether the client asked for usage (`stream_options.include_usage`).
    pub fn client_include_usage(&self) -> bool {
        if let Some(raw) = &self.raw_body {
            return raw.include_usage;
        }
        self.params
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

/// A configured connection that can answer chat completions.
#[async_trait]
pub trait Provider: Send + Sync {
    /// A non-streamed answer: a full OpenAI `chat.completion` object.
    async fn complete(&self, call: UpstreamCall) -> Result<Value, ApiError>;

    /// A streamed answer. Returns once the upstream has accepted the request (so
    /// that early failures still get a proper HTTP status); the stream then yields
    /// `chat.completion.chunk` objects.
    async fn stream(&self, call: UpstreamCall) -> Result<ChunkStream, ApiError>;

    /// What the core calls for a non-streamed answer: [`Provider::complete`]'s tree,
    /// unless the provider can hand on the upstream's own text ([`Payload::Raw`];
    /// OpenAI-compatible upstreams).
    async fn complete_payload(&self, call: UpstreamCall) -> Result<Payload, ApiError> {
        self.complete(call).await.map(Payload::Value)
    }

    /// What the core calls for a streamed answer: [`Provider::stream`]'s chunks,
    /// unless the provider can hand on the upstream's own chunk text.
    async fn stream_payload(&self, call: UpstreamCall) -> Result<PayloadStream, ApiError> {
        self.stream(call)
            .await
            .map(crate::payload::from_chunk_stream)
    }

    /// Whether this provider sends a chat call's `raw_body` (the client's bytes,
    /// `model` replaced) instead of writing `params`: OpenAI-compatible upstreams.
    /// Providers that translate the request need the tree, and say no.
    fn takes_raw_chat(&self) -> bool {
        false
    }

    /// The connection as an Anthropic Messages API upstream, for the Anthropic
    /// door's pass-through; `None` for every other kind (those get the door's
    /// requests translated into the canonical call).
    fn anthropic(&self) -> Option<&AnthropicProvider> {
        None
    }

    /// Whether the connection's upstream speaks the Responses API, so that the
    /// Responses door passes requests through ([`Provider::responses`]) instead of
    /// translating them into the canonical call.
    fn speaks_responses(&self) -> bool {
        false
    }

    /// `POST /responses` passed through (only called when
    /// [`Provider::speaks_responses`]): the answer or the events as the upstream
    /// wrote them.
    async fn responses(&self, call: doors::DoorCall) -> Result<doors::TextCompletion, ApiError> {
        Err(ApiError::internal(format!(
            "connection '{}' does not speak the Responses API",
            call.connection
        )))
    }

    /// `POST /embeddings`. Connections that cannot embed answer 400 naming the
    /// connection.
    async fn embeddings(&self, call: doors::DoorCall) -> Result<doors::Embeddings, ApiError> {
        Err(doors::cannot_serve(&call.connection, "embeddings"))
    }

    /// `POST /completions` (legacy text completions). Connections that cannot serve
    /// them answer 400 naming the connection.
    async fn text_completion(
        &self,
        call: doors::DoorCall,
    ) -> Result<doors::TextCompletion, ApiError> {
        Err(doors::cannot_serve(&call.connection, "text completions"))
    }

    /// The model ids the upstream offers (for `model_listing_mode =
    /// "expand_wildcards"`). Connections that cannot list say so with an error;
    /// their routing patterns are then listed as written.
    async fn list_models(&self) -> Result<Vec<String>, ApiError> {
        Err(ApiError::upstream_failure(
            "this connection cannot list its models",
        ))
    }
}

/// A built connection with the settings the core needs around it.
#[derive(Clone)]
pub struct Connection {
    pub name: String,
    pub provider: Arc<dyn Provider>,
    /// The connection's `model` setting (used by routes that name only the connection).
    pub default_model: Option<String>,
}

/// Build every connection of the config.
pub fn build_connections(
    config: &Config,
    client: &crate::upstream::UpstreamClient,
    resolver: &dyn ExtensionResolver,
) -> Result<HashMap<String, Connection>, ConfigError> {
    let mut out = HashMap::new();
    // Fallbacks are made of other connections, so they are built last.
    let mut fallbacks = Vec::new();
    for (name, spec) in &config.connections {
        let key = {
            let mut k = String::from("connections");
            crate::config::push_key(&mut k, name);
            k
        };
        let (provider, default_model): (Arc<dyn Provider>, Option<String>) = match spec {
            ConnectionSpec::Provider(settings) => (
                build_provider(name, &key, settings, config, client, resolver)?,
                settings.model.clone(),
            ),
            ConnectionSpec::Extension(ext) => match builtin_name(&ext.target) {
                Some(Builtin::Fallback) => {
                    fallbacks.push((name, ext));
                    continue;
                }
                Some(_) => {
                    return Err(ConfigError::new(
                        &config.path,
                        &ext.key,
                        format!("'{}' cannot be used as a connection", ext.target),
                    ))
                }
                // A bare callable has no settings: the default deadlines keep it
                // from holding a client forever.
                None => (
                    deadline::WithDeadlines::wrap(
                        resolver.connection(ext, config)?,
                        deadline::Deadlines::default(),
                    ),
                    None,
                ),
            },
        };
        out.insert(
            name.clone(),
            Connection {
                name: name.clone(),
                provider,
                default_model,
            },
        );
    }
    for (name, ext) in fallbacks {
        let provider = build_fallback(name, ext, &out, config)?;
        out.insert(
            name.clone(),
            Connection {
                name: name.clone(),
                provider: Arc::new(provider),
                default_model: None,
            },
        );
    }
    Ok(out)
}

/// `connections = ["a", "b.model"]` or `connections = {a = {}, b = {model = "x", temperature = 0}}`.
fn build_fallback(
    name: &str,
    ext: &ExtensionSpec,
    built: &HashMap<String, Connection>,
    config: &Config,
) -> Result<Fallback, ConfigError> {
    let key = format!("{}.connections", ext.key);
    let err = |problem: String| ConfigError::new(&config.path, &key, problem);
    if let Some(unknown) = ext.kwargs.keys().find(|k| k.as_str() != "connections") {
        return Err(ConfigError::new(
            &config.path,
            format!("{}.{unknown}", ext.key),
            "unknown argument of Fallback (connections)",
        ));
    }
    let entries: Vec<(String, Option<String>, Map<String, Value>)> =
        match ext.kwargs.get("connections") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    let text = item.as_str().ok_or_else(|| {
                        err("list items must be \"name\" or \"name.model\"".into())
                    })?;
                    let (conn, model) = crate::config::split_route_target(text);
                    Ok((conn.to_owned(), model.map(str::to_owned), Map::new()))
                })
                .collect::<Result<_, ConfigError>>()?,
            Some(Value::Object(map)) => map
                .iter()
                .map(|(conn, overrides)| {
                    let mut overrides = match overrides {
                        Value::Object(o) => o.clone(),
                        Value::Null => Map::new(),
                        _ => return Err(err(format!("overrides for '{conn}' must be a table"))),
                    };
                    let model = match overrides.shift_remove("model") {
                        Some(Value::String(m)) => Some(m),
                        None => None,
                        Some(_) => return Err(err(format!("'{conn}'.model must be a string"))),
                    };
                    Ok((conn.clone(), model, overrides))
                })
                .collect::<Result<_, ConfigError>>()?,
            _ => {
                return Err(err(
                    "a list or table of at least two connections is required".into(),
                ))
            }
        };
    if entries.len() < 2 {
        return Err(err(format!(
            "Fallback needs at least two connections, found {}",
            entries.len()
        )));
    }
    let mut members = Vec::new();
    for (conn, model, overrides) in entries {
        let Some(connection) = built.get(&conn) else {
            let problem = if config.connections.contains_key(&conn) {
                format!("'{conn}' is itself a Fallback; list the connections it is made of instead")
            } else {
                format!("unknown connection '{conn}'")
            };
            return Err(err(problem));
        };
        members.push(FallbackMember {
            name: conn,
            provider: connection.provider.clone(),
            model,
            overrides,
        });
    }
    Ok(Fallback::new(
        name,
        members,
        crate::secrets::Redactor::from_config(config),
    ))
}

/// Settings shared by HTTP providers, checked once at startup.
pub struct HttpSettings {
    pub base: String,
    pub api_key: Option<String>,
    pub headers: http::HeaderMap,
    /// The names of `headers` as the config spells them (where not title case).
    pub header_case: crate::upstream::HeaderCase,
    /// The whole call when not streamed.
    pub timeout: Duration,
    /// Until the response headers arrive (streamed or not).
    pub first_byte_timeout: Duration,
    /// Between two streamed chunks.
    pub chunk_timeout: Duration,
    /// `max_response_body_mb` in bytes: the most of one answer read whole.
    pub max_response_body: usize,
}

fn build_provider(
    name: &str,
    key: &str,
    settings: &ProviderSettings,
    config: &Config,
    client: &crate::upstream::UpstreamClient,
    resolver: &dyn ExtensionResolver,
) -> Result<Arc<dyn Provider>, ConfigError> {
    let err = |sub: &str, problem: String| {
        let full = if sub.is_empty() {
            key.to_owned()
        } else {
            format!("{key}.{sub}")
        };
        ConfigError::new(&config.path, full, problem)
    };
    // A connection with its own connect timeout gets its own pool; all others share one.
    let own_client;
    let client = match settings.connect_timeout {
        Some(secs) if secs > 0.0 => {
            own_client = crate::upstream::UpstreamClient::new(Duration::from_secs_f64(secs))
                .map_err(|e| err("connect_timeout", format!("{e:#}")))?;
            &own_client
        }
        Some(_) => return Err(err("connect_timeout", "must be greater than 0".into())),
        None => client,
    };
    match settings.api_type {
        ApiType::OpenAi => {
            reject_unknown_options(settings, &["stream_usage", "responses_api"], key, config)?;
            let flag = |name: &str, default: bool| match settings.options.get(name) {
                None => Ok(default),
                Some(Value::Bool(on)) => Ok(*on),
                Some(_) => Err(err(name, "must be true or false".into())),
            };
            let stream_usage = flag("stream_usage", true)?;
            let http = http_settings(settings, "https://api.openai.com/v1", key, config)?;
            // OpenAI itself speaks the Responses API; OpenAI-compatible servers
            // mostly do not (or only in part), so they get it translated unless set.
            let responses_api = flag("responses_api", openai::is_openai_host(&http.base))?;
            let mut provider = OpenAiProvider::new(name, http, stream_usage, client.clone());
            provider.responses_api = responses_api;
            Ok(Arc::new(provider))
        }
        ApiType::Mock => Ok(Arc::new(MockProvider::from_settings(
            settings, key, config,
        )?)),
        ApiType::Function => {
            let target = |name: &str| match settings.options.get(name) {
                None => Ok(None),
                Some(Value::String(t)) if !t.trim().is_empty() => Ok(Some(ExtensionSpec {
                    target: t.clone(),
                    kwargs: Map::new(),
                    key: format!("{key}.{name}"),
                    is_class_table: false,
                })),
                Some(_) => Err(err(name, "must be \"module.function\"".into())),
            };
            let deadlines = function_deadlines(settings, key, config)?;
            let chat = target("inference_func")?;
            let embed = target("embed_func")?;
            let chat = match (chat, &embed) {
                (Some(spec), _) => Some(deadline::WithDeadlines::wrap(
                    resolver.connection(&spec, config)?,
                    deadlines,
                )),
                (None, Some(_)) => None,
                (None, None) => {
                    return Err(err(
                        "inference_func",
                        "api_type = \"function\" needs `inference_func = \"module.function\"` \
                         (or `embed_func` for an embeddings-only connection)"
                            .into(),
                    ))
                }
            };
            match embed {
                Some(spec) => Ok(Arc::new(doors::EmbeddingConnection {
                    name: name.to_owned(),
                    chat,
                    embedder: resolver.embedder(&spec, config)?,
                    // The whole call of an embedding callable, as `timeout` bounds a
                    // whole HTTP answer.
                    timeout: deadlines.first_byte,
                })),
                None => Ok(chat.expect("checked above")),
            }
        }
        ApiType::Anthropic => Ok(Arc::new(AnthropicProvider::from_settings(
            name, settings, key, config, client,
        )?)),
        ApiType::Google | ApiType::GoogleVertexAi => Ok(Arc::new(GoogleProvider::from_settings(
            name,
            key,
            settings,
            config,
            client,
            &google::Environment::process(),
        )?)),
    }
}

/// `timeout`, `first_byte_timeout` and `chunk_timeout` of a function connection,
/// with the defaults and checks of HTTP connections.
fn function_deadlines(
    settings: &ProviderSettings,
    key: &str,
    config: &Config,
) -> Result<deadline::Deadlines, ConfigError> {
    let seconds = |name: &str, value: Option<f64>, default: f64| {
        let secs = value.unwrap_or(default);
        match Duration::try_from_secs_f64(secs) {
            Ok(d) if secs > 0.0 => Ok(d),
            _ => Err(ConfigError::new(
                &config.path,
                format!("{key}.{name}"),
                "must be a number of seconds greater than 0",
            )),
        }
    };
    let timeout = seconds("timeout", settings.timeout, DEFAULT_TIMEOUT_SECS)?;
    Ok(deadline::Deadlines {
        first_byte: seconds(
            "first_byte_timeout",
            settings.first_byte_timeout,
            timeout.as_secs_f64(),
        )?,
        chunk: seconds(
            "chunk_timeout",
            settings.chunk_timeout,
            timeout.as_secs_f64(),
        )?,
    })
}

/// Reject provider-specific keys that this provider does not understand.
pub(crate) fn reject_unknown_options(
    settings: &ProviderSettings,
    allowed: &[&str],
    key: &str,
    config: &Config,
) -> Result<(), ConfigError> {
    if let Some(unknown) = settings
        .options
        .keys()
        .find(|k| !allowed.contains(&k.as_str()))
    {
        return Err(ConfigError::new(
            &config.path,
            format!("{key}.{unknown}"),
            format!(
                "unknown setting for api_type '{}'",
                settings.api_type.as_str()
            ),
        ));
    }
    Ok(())
}

/// Base URL, key, static headers and timeout of an HTTP provider.
pub(crate) fn http_settings(
    settings: &ProviderSettings,
    default_base: &str,
    key: &str,
    config: &Config,
) -> Result<HttpSettings, ConfigError> {
    let err = |sub: &str, problem: String| {
        ConfigError::new(&config.path, format!("{key}.{sub}"), problem)
    };
    let base = settings
        .api_base
        .as_deref()
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .unwrap_or(default_base)
        .trim_end_matches('/')
        .to_owned();
    match reqwest::Url::parse(&base) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => {}
        _ => return Err(err("api_base", format!("'{base}' is not an http(s) URL"))),
    }

    let mut timeout = settings.timeout;
    let mut header_pairs: Vec<(String, String)> = Vec::new();
    for (k, v) in &settings.init_params {
        match (k.as_str(), v) {
            ("timeout", Value::Number(n)) if timeout.is_none() => timeout = n.as_f64(),
            ("timeout", Value::Number(_)) => {}
            ("default_headers", Value::Object(map)) => {
                for (name, value) in map {
                    let Some(value) = value.as_str() else {
                        return Err(err(
                            &format!("init_params.default_headers.{name}"),
                            "header values must be strings".into(),
                        ));
                    };
                    header_pairs.push((name.clone(), value.to_owned()));
                }
            }
            _ => {
                return Err(err(
                    &format!("init_params.{k}"),
                    "unsupported init parameter (supported: timeout, default_headers)".into(),
                ))
            }
        }
    }
    header_pairs.extend(
        settings
            .http_headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    let header_case = crate::upstream::HeaderCase::of(header_pairs.iter().map(|(n, _)| n.as_str()));
    let mut headers = http::HeaderMap::new();
    for (name, value) in header_pairs {
        let header_name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            err(
                &format!("http_headers.{name}"),
                "invalid HTTP header name".into(),
            )
        })?;
        let mut header_value = http::HeaderValue::from_str(&value).map_err(|_| {
            err(
                &format!("http_headers.{name}"),
                "invalid HTTP header value".into(),
            )
        })?;
        header_value.set_sensitive(true);
        headers.insert(header_name, header_value);
    }
    let secs = timeout.unwrap_or(DEFAULT_TIMEOUT_SECS);
    let positive = |name: &str, value: Option<f64>| -> Result<Duration, ConfigError> {
        match value {
            None => Ok(Duration::from_secs_f64(secs)),
            Some(v) if v > 0.0 => Ok(Duration::from_secs_f64(v)),
            Some(_) => Err(err(name, "must be greater than 0".into())),
        }
    };
    if secs <= 0.0 {
        return Err(err("timeout", "must be greater than 0".into()));
    }
    let first_byte_timeout = positive("first_byte_timeout", settings.first_byte_timeout)?;
    let chunk_timeout = positive("chunk_timeout", settings.chunk_timeout)?;
    Ok(HttpSettings {
        base,
        api_key: settings.api_key.clone().filter(|k| !k.is_empty()),
        headers,
        header_case,
        timeout: Duration::from_secs_f64(secs),
        first_byte_timeout,
        chunk_timeout,
        max_response_body: config.settings.max_response_body_bytes(),
    })
}
