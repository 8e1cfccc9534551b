//! OpenAI and OpenAI-compatible upstreams (vLLM, llama.cpp, Ollama, LM Studio, ...):
//! the client's body goes upstream with every field intact and `model` replaced, and
//! the answer comes back with minimal re-framing.

mod doors;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Map, Value};

use super::upstream_http::{check_status, data_ids, get_json, send, timeout_error};
use super::{HttpSettings, Provider, UpstreamCall};
use crate::error::ApiError;
use crate::json_scan::ScanMemo;
use crate::payload::{into_chunk_stream, Payload, PayloadStream, RawJson, StreamChunk};
use crate::streaming::{
    completion_id, completion_to_chunks, json_chunk, sse_decoded_unchecked, sse_json_events,
    unix_now, ChunkStream, StreamAccumulator,
};
use crate::upstream::{
    json_post_headers, too_large_error, HeaderCase, PreparedPost, Target, UpstreamClient,
    UpstreamError, UpstreamResponse,
};

pub struct OpenAiProvider {
    name: String,
    /// Prepared once: parsing (and IDNA-checking) the URL per call costs.
    chat: Target,
    /// The embeddings and legacy completions doors' URLs (`doors.rs`).
    doors: doors::Targets,
    models_url: String,
    authorization: Option<HeaderValue>,
    headers: HeaderMap,
    /// How the config spells the names of `headers` (`case.rs`).
    header_case: HeaderCase,
    timeout: Duration,
    first_byte_timeout: Duration,
    chunk_timeout: Duration,
    /// `max_response_body_mb` in bytes.
    max_response_body: usize,
    /// `stream_usage`: ask the upstream for a stream's usage when the client did not
    /// (off for servers that reject `stream_options`).
    stream_usage: bool,
    /// `responses_api`: the upstream speaks the Responses API, so the Responses
    /// door passes requests through (`doors.rs`).
    pub(super) responses_api: bool,
    client: UpstreamClient,
    /// The chat POST's head for a call that adds no header, non-streamed and
    /// streamed (`Target::prepare_post`); `None` where the pool does not carry it.
    prepared_chat: [Option<PreparedPost>; 2],
}

/// Whether an `api_base` is OpenAI's own API (the default `responses_api = true`).
pub(super) fn is_openai_host(base: &str) -> bool {
    reqwest::Url::parse(base)
        .ok()
        .and_then(|url| url.host_str().map(str::to_ascii_lowercase))
        .is_some_and(|host| host == "api.openai.com")
}

impl OpenAiProvider {
    pub fn new(
        name: &str,
        settings: HttpSettings,
        stream_usage: bool,
        client: UpstreamClient,
    ) -> Self {
        let authorization = settings.api_key.as_deref().and_then(|key| {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}")).ok()?;
            value.set_sensitive(true);
            Some(value)
        });
        let mut provider = OpenAiProvider {
            name: name.to_owned(),
            chat: client
                .target(&format!("{}/chat/completions", settings.base))
                .expect("api_base was checked to be an http(s) URL when the config loaded"),
            doors: doors::Targets::new(&client, &settings.base),
            models_url: format!("{}/models", settings.base),
            authorization,
            headers: settings.headers,
            header_case: settings.header_case,
            timeout: settings.timeout,
            first_byte_timeout: settings.first_byte_timeout,
            chunk_timeout: settings.chunk_timeout,
            max_response_body: settings.max_response_body,
            stream_usage,
            responses_api: false,
            client,
            prepared_chat: [None, None],
        };
        provider.prepared_chat = [false, true].map(|stream| {
            let (headers, case) =
                provider.headers_for(&HeaderMap::new(), &HeaderCase::NONE, stream);
            provider.chat.prepare_post(headers, &case)
        });
        provider
    }

    /// Whether this streamed call gets `stream_options.include_usage` added: the
    /// gateway wants usage, the client did not ask, and the connection allows it.
    fn adds_usage(&self, call: &UpstreamCall) -> bool {
        self.stream_usage && call.gateway_usage && !call.client_include_usage()
    }

    /// Send the chat request (the client's body with `model` replaced).
    async fn post(
        &self,
        call: &UpstreamCall,
        stream: bool,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let add_usage = stream && self.adds_usage(call);
        let bytes = match &call.raw_body {
            Some(raw) => raw.upstream_body(&call.model, add_usage),
            None => {
                let body = UpstreamBody {
                    model: &call.model,
                    params: &call.params,
                    stream,
                    add_usage,
                };
                Bytes::from(serde_json::to_vec(&body).expect("JSON values always serialize"))
            }
        };
        if call.headers.is_empty() {
            if let Some(prepared) = &self.prepared_chat[usize::from(stream)] {
                return self.chat.post_prepared(prepared, bytes).await;
            }
        }
        let (headers, case) = self.headers_for(&call.headers, &call.header_case, stream);
        self.chat.post_spelled(headers, &case, bytes).await
    }

    /// The headers of a request to this upstream (a call's, the connection's, the
    /// key) and how their names are spelled: as the config spelled the
    /// connection's, as handlers spelled theirs, where those values went out.
    fn headers_for(
        &self,
        call: &HeaderMap,
        call_case: &HeaderCase,
        stream: bool,
    ) -> (HeaderMap, HeaderCase) {
        let mut headers = json_post_headers(&self.headers, call, stream);
        if let Some(auth) = &self.authorization {
            headers.insert(http::header::AUTHORIZATION, auth.clone());
        }
        let case = HeaderCase::resolve(
            &headers,
            &[(&self.header_case, &self.headers), (call_case, call)],
        );
        (headers, case)
    }
}

#[async_trait]
impl Provider for OpenAiProvider {
    async fn list_models(&self) -> Result<Vec<String>, ApiError> {
        let mut headers = self.headers.clone();
        if let Some(auth) = &self.authorization {
            headers.insert(http::header::AUTHORIZATION, auth.clone());
        }
        let case = HeaderCase::resolve(&headers, &[(&self.header_case, &self.headers)]);
        let sent = self.client.get_spelled(&self.models_url, headers, &case);
        Ok(data_ids(
            &get_json(sent, self.timeout, self.max_response_body).await?,
        ))
    }

    async fn complete(&self, call: UpstreamCall) -> Result<Value, ApiError> {
        self.complete_payload(call).await.map(Payload::into_value)
    }

    fn takes_raw_chat(&self) -> bool {
        true
    }

    async fn embeddings(
        &self,
        call: super::doors::DoorCall,
    ) -> Result<super::doors::Embeddings, ApiError> {
        self.door_embeddings(call).await
    }

    async fn text_completion(
        &self,
        call: super::doors::DoorCall,
    ) -> Result<super::doors::TextCompletion, ApiError> {
        self.door_completion(call).await
    }

    fn speaks_responses(&self) -> bool {
        self.responses_api
    }

    async fn responses(
        &self,
        call: super::doors::DoorCall,
    ) -> Result<super::doors::TextCompletion, ApiError> {
        self.door_responses(call).await
    }

    async fn stream(&self, call: UpstreamCall) -> Result<ChunkStream, ApiError> {
        self.stream_payload(call).await.map(into_chunk_stream)
    }

    async fn complete_payload(&self, call: UpstreamCall) -> Result<Payload, ApiError> {
        let work = async {
            // The whole call is bounded by `timeout` below: a first-byte deadline as
            // long or longer could never be the one to pass, and a timer costs.
            let response = if self.first_byte_timeout < self.timeout {
                send(self.post(&call, false), self.first_byte_timeout).await?
            } else {
                self.post(&call, false)
                    .await
                    .map_err(UpstreamError::into_api_error)?
            };
            let response = check_status(response, self.timeout).await?;
            if declares(response.headers(), "text/event-stream") {
                // Some servers stream whatever was asked: put the answer together.
                let mut events = sse_json_events(response.bytes_stream(), self.chunk_timeout);
                let mut answer = StreamAccumulator::with_limit(self.max_response_body);
                while let Some(chunk) = events.next().await {
                    answer.add(&chunk?);
                    if answer.is_truncated() {
                        return Err(too_large_error(self.max_response_body));
                    }
                }
                return normalize_completion(answer.into_response(), &call.model)
                    .map(Payload::Value);
            }
            let bytes = response
                .bytes(self.max_response_body)
                .await
                .map_err(UpstreamError::into_api_error)?;
            let bytes = match RawJson::completion(bytes) {
                Ok(raw) => return Ok(Payload::Raw(raw)),
                Err(bytes) => bytes,
            };
            let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::upstream_failure(format!(
                    "connection '{}': upstream answer is not JSON: {e}",
                    self.name
                ))
            })?;
            normalize_completion(value, &call.model).map(Payload::Value)
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(timeout_error(self.timeout)))
    }

    async fn stream_payload(&self, call: UpstreamCall) -> Result<PayloadStream, ApiError> {
        let response = send(self.post(&call, true), self.first_byte_timeout).await?;
        let response = match check_status(response, self.chunk_timeout).await {
            Ok(response) => response,
            Err(error) if self.adds_usage(&call) && refuses_stream_options(&error) => {
                return Err(self.explain_stream_options(error))
            }
            Err(error) => return Err(error),
        };
        let mut identity = ChunkDefaults {
            id: None,
            created: unix_now(),
            model: call.model.clone(),
        };
        if declares(response.headers(), "application/json") {
            // A server that ignored `stream: true` and answered with one JSON object:
            // replay it as chunks rather than lose it.
            let bytes = tokio::time::timeout(self.timeout, response.bytes(self.max_response_body))
                .await
                .map_err(|_| timeout_error(self.timeout))?
                .map_err(UpstreamError::into_api_error)?;
            let value: Value = serde_json::from_slice(&bytes).map_err(|_| {
                ApiError::upstream_failure(format!(
                    "connection '{}': a streamed answer declared JSON but is not JSON",
                    self.name
                ))
            })?;
            let completion = normalize_completion(value, &call.model)?;
            let chunks: Vec<Result<Payload, ApiError>> =
                completion_to_chunks(&completion, call.include_usage())
                    .into_iter()
                    .map(|chunk| Ok(Payload::Value(chunk)))
                    .collect();
            return Ok(Box::pin(futures_util::stream::iter(chunks)));
        }
        // Chunks that have every field go to the client as the upstream wrote them;
        // the others are parsed, filled in, or end the stream with their error.
        let mut memo = ScanMemo::default();
        Ok(sse_decoded_unchecked(
            response.bytes_stream(),
            self.chunk_timeout,
            move |data| match RawJson::stream_chunk(data, &mut memo)? {
                StreamChunk::Raw(raw) => Ok(Payload::Raw(raw)),
                StreamChunk::Other(text) => {
                    json_chunk(&text).map(|chunk| Payload::Value(identity.fill(chunk)))
                }
            },
        ))
    }
}

impl OpenAiProvider {
    /// A 400 to a stream that the gateway added `stream_options` to: some
    /// OpenAI-compatible servers reject the member, so say that it was added and how
    /// to stop it, next to the upstream's own message.
    fn explain_stream_options(&self, error: ApiError) -> ApiError {
        tracing::warn!(
            "connection '{}' refused a stream with 400; the gateway had added \
             stream_options.include_usage to it: if this server rejects \
             stream_options, set stream_usage = false for the connection",
            self.name
        );
        match error {
            ApiError::UpstreamRejected(mut body) => {
                body.message = format!(
                    "{} (lm-proxy added stream_options.include_usage to this streamed \
                     request so that its usage is logged; if the upstream rejects \
                     stream_options, set stream_usage = false on connection '{}')",
                    body.message, self.name
                );
                ApiError::UpstreamRejected(body)
            }
            other => other,
        }
    }
}

/// A 400 whose message points at the member added (named, or an "extra" or
/// unknown field as strict servers word it); other 400s (context length, a bad
/// message) go to the client as they are.
fn refuses_stream_options(error: &ApiError) -> bool {
    if error.status() != StatusCode::BAD_REQUEST {
        return false;
    }
    let ApiError::UpstreamRejected(body) = error else {
        return false;
    };
    let message = body.message.to_ascii_lowercase();
    [
        "stream_options",
        "include_usage",
        "extra",
        "unrecognized",
        "not permitted",
        "unknown field",
        "unexpected",
    ]
    .iter()
    .any(|word| message.contains(word))
}

/// Whether the answer declares this media type (parameters ignored). Answers without
/// a content type are taken as what was asked for.
fn declares(headers: &http::HeaderMap, media_type: &str) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            // Compared without case and without a lowercased copy (every answer).
            let head = ct.trim_start().as_bytes().get(..media_type.len());
            head.is_some_and(|head| head.eq_ignore_ascii_case(media_type.as_bytes()))
        })
}

/// The upstream body: the client's fields in their order with `model` replaced
/// (first), serialized straight from the call without copying it.
struct UpstreamBody<'a> {
    model: &'a str,
    params: &'a Map<String, Value>,
    stream: bool,
    /// Ask for the stream's usage: `stream_options.include_usage = true`, the
    /// client's other stream options kept.
    add_usage: bool,
}

impl serde::Serialize for UpstreamBody<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("model", self.model)?;
        for (key, value) in self.params {
            // OpenAI rejects `stream_options` on a non-streamed request.
            if key == "model" || (!self.stream && key == "stream_options") {
                continue;
            }
            if key == "stream_options" && self.add_usage {
                let mut options = value.as_object().cloned().unwrap_or_default();
                options.insert("include_usage".into(), Value::Bool(true));
                map.serialize_entry(key, &options)?;
                continue;
            }
            map.serialize_entry(key, value)?;
        }
        if self.add_usage && !self.params.contains_key("stream_options") {
            map.serialize_entry(
                "stream_options",
                &serde_json::json!({"include_usage": true}),
            )?;
        }
        map.end()
    }
}

/// Defaults for chunk fields that some OpenAI-compatible servers leave out.
struct ChunkDefaults {
    /// Made when a chunk first lacks one (most upstreams name theirs), then the
    /// same for the rest of the stream.
    id: Option<String>,
    created: u64,
    model: String,
}

impl ChunkDefaults {
    fn fill(&mut self, mut chunk: Value) -> Value {
        if let Value::Object(map) = &mut chunk {
            if !map.contains_key("id") {
                let id = self.id.get_or_insert_with(completion_id);
                map.insert("id".into(), Value::String(id.clone()));
            }
            if !map.contains_key("object") {
                map.insert(
                    "object".into(),
                    Value::String("chat.completion.chunk".into()),
                );
            }
            if !map.contains_key("created") {
                map.insert("created".into(), self.created.into());
            }
            if !map.contains_key("model") {
                map.insert("model".into(), Value::String(self.model.clone()));
            }
        }
        chunk
    }
}

/// Check that an upstream answer is a chat completion and fill the fields that some
/// OpenAI-compatible servers omit, so clients always get the full object.
pub fn normalize_completion(value: Value, model: &str) -> Result<Value, ApiError> {
    let Value::Object(mut map) = value else {
        return Err(ApiError::upstream_failure(
            "upstream answer is not a JSON object",
        ));
    };
    if !map.get("choices").is_some_and(Value::is_array) {
        return Err(ApiError::upstream_failure(
            "upstream answer has no `choices` list",
        ));
    }
    map.entry("id")
        .or_insert_with(|| Value::String(completion_id()));
    map.entry("object")
        .or_insert_with(|| Value::String("chat.completion".into()));
    map.entry("created").or_insert_with(|| unix_now().into());
    map.entry("model")
        .or_insert_with(|| Value::String(model.to_owned()));
    Ok(Value::Object(map))
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunks_without_an_id_share_one_made_when_first_needed() {
        use serde_json::json;
        let mut defaults = super::ChunkDefaults {
            id: None,
            created: 7,
            model: "m".into(),
        };
        let own = defaults.fill(json!({"id": "up-1", "choices": []}));
        assert_eq!(own["id"], "up-1");
        assert!(defaults.id.is_none(), "an upstream id makes none");
        let first = defaults.fill(json!({"choices": []}));
        let second = defaults.fill(json!({"choices": []}));
        let id = first["id"].as_str().unwrap();
        assert!(id.starts_with("chatcmpl-") && id.len() == "chatcmpl-".len() + 32);
        assert_eq!(second["id"], first["id"]);
        assert_eq!(
            (&first["created"], &first["model"]),
            (&json!(7), &json!("m"))
        );
    }

    #[test]
    fn a_media_type_is_declared_whatever_its_case_and_parameters() {
        use super::declares;
        let with = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::CONTENT_TYPE, value.parse().unwrap());
            headers
        };
        for value in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "  application/json;charset=UTF-8",
        ] {
            assert!(declares(&with(value), "application/json"), "{value}");
            assert!(!declares(&with(value), "text/event-stream"), "{value}");
        }
        assert!(declares(&with("TEXT/Event-Stream"), "text/event-stream"));
        for value in ["text/plain", "application/js", "json", ""] {
            assert!(!declares(&with(value), "application/json"), "{value:?}");
        }
        assert!(!declares(&http::HeaderMap::new(), "application/json"));
    }

    #[test]
    fn only_openai_itself_speaks_the_responses_api_by_default() {
        for (base, expected) in [
            ("https://api.openai.com/v1", true),
            ("https://API.OpenAI.com/v1/", true),
            ("http://127.0.0.1:8000/v1", false),
            ("https://api.openai.com.example.net/v1", false),
            ("https://openrouter.ai/api/v1", false),
        ] {
            assert_eq!(super::is_openai_host(base), expected, "{base}");
        }
    }
}
