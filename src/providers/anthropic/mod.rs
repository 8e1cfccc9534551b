//! `api_type = "anthropic"`: the Anthropic Messages API behind the OpenAI shape.
//!
//! This module owns the connection (settings, headers, sending, `n` fan-out);
//! `request` translates the OpenAI request, `response` the answer and errors,
//! `stream` the event stream (`messages` and `tools` are parts of `request`);
//! `raw_request` writes the common requests straight from the client's bytes. User documentation: `docs/providers/anthropic.md`.

mod messages;
pub mod native;
mod raw_request;
pub(crate) mod request;
mod response;
mod stream;
pub(crate) mod thinking;
mod tools;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::upstream_http::{check_status_with, send, timeout_error};
use super::{fanout, upstream_http};
use super::{http_settings, reject_unknown_options, Provider, UpstreamCall};
use crate::config::{Config, ConfigError, ProviderSettings};
use crate::error::ApiError;
use crate::payload::{from_chunk_stream, into_chunk_stream, PayloadStream};
use crate::streaming::{sse_data_events, ChunkStream};
use crate::upstream::{
    json_post_headers, HeaderCase, Target, UpstreamClient, UpstreamError, UpstreamResponse,
};

/// The SDK's default base; requests go to `{api_base}/v1/messages`.
pub const DEFAULT_API_BASE: &str = "https://api.anthropic.com";
/// The `anthropic-version` header sent unless the connection sets another.
pub const DEFAULT_VERSION: &str = "2023-06-01";
/// `max_tokens` when neither the client nor the connection sets one (Anthropic
/// requires it).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;
/// Largest `n`: each choice is a separate upstream call, so this caps the fan-out.
pub const MAX_CHOICES: u64 = 8;

/// Connection keys this provider reads besides the common ones.
const OPTIONS: [&str; 2] = ["anthropic_version", "max_tokens"];

pub struct AnthropicProvider {
    name: String,
    /// Prepared once (parsing the URL per call costs).
    messages: Target,
    /// `{api_base}/v1/messages/count_tokens` (the Anthropic door's pass-through).
    count_tokens: Target,
    /// Whether the connection sets `anthropic_version` (then a client's does not
    /// replace it on the pass-through).
    version_pinned: bool,
    models_url: String,
    /// `anthropic-version`, the static `http_headers`, then `x-api-key`.
    headers: HeaderMap,
    timeout: Duration,
    first_byte_timeout: Duration,
    chunk_timeout: Duration,
    default_max_tokens: u64,
    /// `max_response_body_mb` in bytes.
    max_response_body: usize,
    client: UpstreamClient,
    /// The names of `headers` from the config (`http_headers`) as it spells them.
    header_case: HeaderCase,
}

impl AnthropicProvider {
    /// Build from the connection settings; bad or unknown keys stop startup with
    /// the key named.
    pub fn from_settings(
        name: &str,
        settings: &ProviderSettings,
        key: &str,
        config: &Config,
        client: &crate::upstream::UpstreamClient,
    ) -> Result<Self, ConfigError> {
        reject_unknown_options(settings, &OPTIONS, key, config)?;
        let err = |sub: &str, problem: &str| {
            ConfigError::new(&config.path, format!("{key}.{sub}"), problem.to_owned())
        };
        let version_pinned = !matches!(
            settings.options.get("anthropic_version"),
            None | Some(Value::Null)
        );
        let version = match settings.options.get("anthropic_version") {
            None | Some(Value::Null) => HeaderValue::from_static(DEFAULT_VERSION),
            Some(Value::String(v)) if !v.trim().is_empty() => HeaderValue::from_str(v.trim())
                .map_err(|_| err("anthropic_version", "not a valid HTTP header value"))?,
            Some(_) => {
                return Err(err(
                    "anthropic_version",
                    "must be a non-empty string such as \"2023-06-01\"",
                ))
            }
        };
        let default_max_tokens = match settings.options.get("max_tokens") {
            None | Some(Value::Null) => DEFAULT_MAX_TOKENS,
            Some(v) => v
                .as_u64()
                .filter(|n| *n >= 1)
                .ok_or_else(|| err("max_tokens", "must be a positive integer"))?,
        };
        let http = http_settings(settings, DEFAULT_API_BASE, key, config)?;
        if http.base.ends_with("/v1") {
            // The base may carry `user:password@`: not for the log.
            let base = crate::config::strip_userinfo(&http.base);
            tracing::warn!(
                "{}: {key}.api_base: '{}' ends in /v1, so requests go to {}/v1/messages; \
                 api_base is the provider root (as the Anthropic SDK takes it), e.g. https://api.anthropic.com",
                config.path.display(),
                base,
                base
            );
        }
        let mut headers = HeaderMap::new();
        headers.insert(HeaderName::from_static("anthropic-version"), version);
        for (name, value) in &http.headers {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(api_key) = &http.api_key {
            let mut value = HeaderValue::from_str(api_key)
                .map_err(|_| err("api_key", "not a valid HTTP header value"))?;
            value.set_sensitive(true);
            headers.insert(HeaderName::from_static("x-api-key"), value);
        }
        Ok(AnthropicProvider {
            name: name.to_owned(),
            messages: client
                .target(&format!("{}/v1/messages", http.base))
                .map_err(|e| err("api_base", &format!("not a valid URL: {e}")))?,
            count_tokens: client
                .target(&format!("{}/v1/messages/count_tokens", http.base))
                .map_err(|e| err("api_base", &format!("not a valid URL: {e}")))?,
            version_pinned,
            models_url: format!("{}/v1/models", http.base),
            headers,
            timeout: http.timeout,
            first_byte_timeout: http.first_byte_timeout,
            chunk_timeout: http.chunk_timeout,
            default_max_tokens,
            max_response_body: http.max_response_body,
            client: client.clone(),
            header_case: http.header_case,
        })
    }

    /// A call that came as the client's bytes (`raw_body`, see
    /// [`Provider::takes_raw_chat`]): its body written from them when
    /// `raw_request` knows every member; otherwise the call is given the tree of
    /// its request (what `request::translate` reads) and `None` comes back.
    fn written_from_raw(
        &self,
        call: &mut UpstreamCall,
        stream: bool,
    ) -> Result<Option<Bytes>, ApiError> {
        let Some(raw) = call.raw_body.take() else {
            return Ok(None);
        };
        let text = raw.text();
        if let Some(body) = raw_request::write(text, &call.model, self.default_max_tokens, stream) {
            // The raw body goes (it may be large and the stream long); whether the
            // client asked for the usage stays, as the usage the call brings.
            call.gateway_usage |= raw.include_usage;
            return Ok(Some(Bytes::from(body)));
        }
        call.params = raw.params()?;
        Ok(None)
    }

    /// The translated body, with `stream` set, as bytes shared by every fan-out call.
    fn body(
        &self,
        call: &UpstreamCall,
        stream: bool,
    ) -> Result<(Bytes, request::Translated), ApiError> {
        request::serialized(&call.model, &call.params, self.default_max_tokens, stream)
    }

    async fn post(
        &self,
        body: Bytes,
        call: &UpstreamCall,
        stream: bool,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let headers = json_post_headers(&self.headers, &call.headers, stream);
        let case = HeaderCase::resolve(
            &headers,
            &[
                (&self.header_case, &self.headers),
                (&call.header_case, &call.headers),
            ],
        );
        self.messages.post_spelled(headers, &case, body).await
    }

    /// One non-streamed call, bounded by the connection timeout as a whole.
    async fn complete_one(
        &self,
        call: &UpstreamCall,
        body: Bytes,
        json_mode: Option<request::JsonMode>,
    ) -> Result<Value, ApiError> {
        let work = async {
            let response = send(self.post(body, call, false), self.first_byte_timeout).await?;
            let response =
                check_status_with(response, self.timeout, response::status_to_error).await?;
            let bytes = response
                .bytes(self.max_response_body)
                .await
                .map_err(UpstreamError::into_api_error)?;
            let message: Value = serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::upstream_failure(format!(
                    "connection '{}': upstream answer is not JSON: {e}",
                    self.name
                ))
            })?;
            response::completion(&message, &call.model, json_mode, &self.name)
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(timeout_error(self.timeout)))
    }

    /// One streamed call: returns once Anthropic accepted it.
    async fn open_one(
        &self,
        call: &UpstreamCall,
        body: Bytes,
        json_mode: Option<request::JsonMode>,
        include_usage: bool,
    ) -> Result<PayloadStream, ApiError> {
        let response = send(self.post(body, call, true), self.first_byte_timeout).await?;
        let response =
            check_status_with(response, self.chunk_timeout, response::status_to_error).await?;
        let events = sse_data_events(response.bytes_stream(), self.chunk_timeout);
        let translator = stream::Translator::new(&call.model, &self.name, include_usage, json_mode)
            .with_buffer_limit(self.max_response_body);
        Ok(stream::translate(events, translator))
    }
}

#[async_trait]
impl Provider for AnthropicProvider {
    fn anthropic(&self) -> Option<&AnthropicProvider> {
        Some(self)
    }

    /// The common requests are written straight from the client's bytes
    /// (`raw_request`); the others are parsed and translated as trees.
    fn takes_raw_chat(&self) -> bool {
        true
    }

    /// `GET /v1/models`, following `has_more` / `last_id` pages (at most 20).
    async fn list_models(&self) -> Result<Vec<String>, ApiError> {
        let mut ids = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..20 {
            let mut url = reqwest::Url::parse(&self.models_url)
                .map_err(|e| ApiError::internal(format!("the models URL: {e}")))?;
            url.query_pairs_mut().append_pair("limit", "1000");
            if let Some(after) = &after {
                // Encoded: the id comes from the upstream's previous page.
                url.query_pairs_mut().append_pair("after_id", after);
            }
            // Only the connection's headers: spelled as the config spells them.
            let sent =
                self.client
                    .get_spelled(url.as_str(), self.headers.clone(), &self.header_case);
            let page = upstream_http::get_json(sent, self.timeout, self.max_response_body).await?;
            ids.extend(upstream_http::data_ids(&page));
            let more = page
                .get("has_more")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            after = page
                .get("last_id")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if !more || after.is_none() {
                break;
            }
        }
        Ok(ids)
    }

    async fn complete(&self, mut call: UpstreamCall) -> Result<Value, ApiError> {
        let written = self.written_from_raw(&mut call, false)?;
        let n = fanout::requested_n(&call.params, MAX_CHOICES)?;
        let (body, json_mode) = match written {
            Some(body) => (body, None),
            None => self
                .body(&call, false)
                .map(|(body, translated)| (body, translated.json_mode))?,
        };
        if n == 1 {
            return self.complete_one(&call, body, json_mode).await;
        }
        let answers =
            fanout::run_all(n, |_| self.complete_one(&call, body.clone(), json_mode)).await?;
        Ok(fanout::merge_completions(answers))
    }

    async fn stream(&self, call: UpstreamCall) -> Result<ChunkStream, ApiError> {
        self.stream_payload(call).await.map(into_chunk_stream)
    }

    /// The chunks as written by the translator (text, see `stream`); `n > 1` merges
    /// the choices' streams as trees.
    async fn stream_payload(&self, mut call: UpstreamCall) -> Result<PayloadStream, ApiError> {
        let written = self.written_from_raw(&mut call, true)?;
        let n = fanout::requested_n(&call.params, MAX_CHOICES)?;
        let (body, json_mode) = match written {
            Some(body) => (body, None),
            None => self
                .body(&call, true)
                .map(|(body, translated)| (body, translated.json_mode))?,
        };
        let include_usage = call.include_usage();
        if n == 1 {
            return self.open_one(&call, body, json_mode, include_usage).await;
        }
        // Sub-streams always report usage so that the merged stream can sum it.
        let streams = fanout::run_all(n, |_| async {
            self.open_one(&call, body.clone(), json_mode, true)
                .await
                .map(into_chunk_stream)
        })
        .await?;
        Ok(from_chunk_stream(fanout::multiplex(streams, include_usage)))
    }
}
