//! Gemini connections: `api_type = "google"` (Gemini API on AI Studio,
//! `generativelanguage.googleapis.com`, key in `x-goog-api-key`) and
//! `api_type = "google_vertex_ai"` (Gemini on Vertex AI, OAuth2 bearer tokens).
//!
//! This module owns the provider: URLs, authentication headers, the one retry after a
//! Vertex 401, and the plumbing of answers and streams. The pieces:
//! - [`settings`]: connection keys → provider (startup checks, credentials, project);
//! - [`request`] (+ [`schema`], [`ids`]): OpenAI request → Gemini request;
//! - [`response`]: Gemini answer → `chat.completion`; [`stream`]: SSE events → chunks;
//! - [`errors`]: Google error bodies → OpenAI errors;
//! - [`vertex_auth`]: credential files, ADC lookup, token fetching and caching.
//!
//! User documentation: docs/providers/google.md and docs/providers/vertex.md.

mod embed;
mod errors;
mod ids;
mod raw_request;
pub(crate) mod request;
mod response;
mod schema;
mod settings;
mod signatures;
mod stream;
mod vertex_auth;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::Value;

use super::upstream_http::{send, timeout_error};
use super::{Provider, UpstreamCall};
use crate::config::{Config, ConfigError, ProviderSettings};
use crate::error::ApiError;
use crate::payload::{into_chunk_stream, Payload, PayloadStream};
use crate::streaming::{sse_data_events, unix_now, ChunkStream, DataStream};
use crate::upstream::{
    json_post_headers, HeaderCase, UpstreamClient, UpstreamError, UpstreamResponse,
};
use request::RequestOptions;
use response::AnswerContext;
use stream::StreamTranslator;
use vertex_auth::TokenSource;

pub use settings::Environment;

/// Where requests go.
enum Endpoint {
    /// `{root}/models/{model}:generateContent` (root = base + `/v1beta`).
    AiStudio { root: String },
    /// `{root}/projects/{p}/locations/{l}/publishers/google/models/{model}:...`
    /// (root = base + `/v1`).
    Vertex {
        root: String,
        location: String,
        project: Project,
    },
    /// Vertex express mode (API key): `{root}/publishers/google/models/{model}:...`.
    VertexExpress { root: String },
}

/// The Vertex project: known at startup, or asked of the metadata server once.
enum Project {
    Fixed(String),
    Metadata {
        host: String,
        cell: tokio::sync::OnceCell<String>,
    },
}

enum Auth {
    /// No credentials (an AI Studio base behind a proxy that adds them).
    None,
    /// `x-goog-api-key` (AI Studio, Vertex express mode). Never in the URL, so keys
    /// stay out of access logs.
    ApiKey(HeaderValue),
    /// `Authorization: Bearer` from a token source (Vertex).
    Tokens(Arc<TokenSource>),
}

pub struct GoogleProvider {
    name: String,
    endpoint: Endpoint,
    auth: Auth,
    /// Static headers (`http_headers`, `init_params.default_headers`,
    /// `x-goog-user-project`).
    headers: HeaderMap,
    timeout: Duration,
    first_byte_timeout: Duration,
    chunk_timeout: Duration,
    /// `max_response_body_mb` in bytes.
    max_response_body: usize,
    client: UpstreamClient,
    request_options: RequestOptions,
    /// `google_vertex_response_validation`.
    validate: bool,
    /// The names of `headers` from the config (`http_headers`) as it spells them.
    header_case: HeaderCase,
}

impl GoogleProvider {
    /// The provider from its parts; the HTTP settings give headers and timeouts.
    fn assemble(
        name: &str,
        endpoint: Endpoint,
        auth: Auth,
        http: super::HttpSettings,
        client: &crate::upstream::UpstreamClient,
        request_options: RequestOptions,
        validate: bool,
    ) -> GoogleProvider {
        GoogleProvider {
            name: name.to_owned(),
            endpoint,
            auth,
            headers: http.headers,
            timeout: http.timeout,
            first_byte_timeout: http.first_byte_timeout,
            chunk_timeout: http.chunk_timeout,
            max_response_body: http.max_response_body,
            client: client.clone(),
            request_options,
            validate,
            header_case: http.header_case,
        }
    }

    /// Build from a connection's settings; problems stop startup.
    pub fn from_settings(
        name: &str,
        key: &str,
        settings: &ProviderSettings,
        config: &Config,
        client: &crate::upstream::UpstreamClient,
        env: &Environment,
    ) -> Result<GoogleProvider, ConfigError> {
        settings::build(name, key, settings, config, client, env)
    }

    fn answer_context(&self, call: &UpstreamCall) -> AnswerContext {
        AnswerContext {
            model: call.model.clone(),
            validate: self.validate,
        }
    }

    async fn url(&self, model: &str, stream: bool) -> Result<String, ApiError> {
        let method = if stream {
            "streamGenerateContent?alt=sse"
        } else {
            "generateContent"
        };
        self.method_url(model, method).await
    }

    /// The URL of `method` (`generateContent`, `batchEmbedContents`, `predict`, ...)
    /// of `model`.
    async fn method_url(&self, model: &str, method: &str) -> Result<String, ApiError> {
        let (collection, id) = model_path(model)?;
        Ok(match &self.endpoint {
            Endpoint::AiStudio { root } => format!("{root}/{collection}/{id}:{method}"),
            Endpoint::Vertex {
                root,
                location,
                project,
            } => {
                if collection != "models" {
                    return Err(ApiError::invalid_param(
                        "model",
                        format!("'{model}': Vertex connections serve publisher models only"),
                    ));
                }
                let project = self.project(project).await?;
                format!(
                    "{root}/projects/{project}/locations/{location}/publishers/google/models/{id}:{method}"
                )
            }
            Endpoint::VertexExpress { root } => {
                format!("{root}/publishers/google/models/{id}:{method}")
            }
        })
    }

    async fn project<'a>(&'a self, project: &'a Project) -> Result<&'a str, ApiError> {
        match project {
            Project::Fixed(id) => Ok(id),
            Project::Metadata { host, cell } => cell
                .get_or_try_init(|| async {
                    let timeout = self.timeout.min(settings::TOKEN_TIMEOUT);
                    let id = vertex_auth::metadata_project_id(self.client.reqwest(), host, timeout)
                        .await?;
                    settings::checked_project(&id).map_err(ApiError::upstream_failure)
                })
                .await
                .map(String::as_str),
        }
    }

    /// POST the chat request (on a Vertex 401 a new token and one retry): `written`
    /// when `raw_request` wrote it from the client's bytes (see
    /// [`GoogleProvider::written_from_raw`]), else built from the call's tree.
    /// Returns the 2xx response; anything else is mapped to an error.
    async fn post(
        &self,
        call: &UpstreamCall,
        written: Option<Bytes>,
        stream: bool,
    ) -> Result<UpstreamResponse, ApiError> {
        let body = match written {
            Some(body) => body,
            None => {
                // Signatures of calls whose ids came back without them (see `signatures`).
                let restored = self.request_options.signatures.restore(call).await;
                let body = request::build_request(
                    restored.as_ref().unwrap_or(call),
                    &self.request_options,
                )?;
                json_bytes(&body)?
            }
        };
        let url = self.url(&call.model, stream).await?;
        self.post_to(&url, body, (&call.headers, &call.header_case), stream)
            .await
    }

    /// A call that came as the client's bytes (`raw_body`, see
    /// [`Provider::takes_raw_chat`]): its body written from them when
    /// `raw_request` knows every member; otherwise the call is given the tree of its
    /// request (what `build_request` reads) and `None` comes back.
    fn written_from_raw(&self, call: &mut UpstreamCall) -> Result<Option<Bytes>, ApiError> {
        let Some(raw) = call.raw_body.take() else {
            return Ok(None);
        };
        if let Some(body) = raw_request::write(raw.text(), &call.model, &self.request_options) {
            // The raw body goes (it may be large and the stream long); whether the
            // client asked for the usage stays, as the usage the call brings.
            call.gateway_usage |= raw.include_usage;
            return Ok(Some(Bytes::from(body)));
        }
        call.params = raw.params()?;
        Ok(None)
    }

    /// POST `body` to `url` with the connection's credentials; on a Vertex 401 get a
    /// new token and retry once.
    async fn post_to(
        &self,
        url: &str,
        body: Bytes,
        (call_headers, call_case): (&HeaderMap, &HeaderCase),
        stream: bool,
    ) -> Result<UpstreamResponse, ApiError> {
        let mut retried = false;
        loop {
            let mut headers = json_post_headers(&self.headers, call_headers, stream);
            let mut used_token = None;
            match &self.auth {
                Auth::None => {}
                Auth::ApiKey(key) => {
                    headers.insert("x-goog-api-key", key.clone());
                }
                Auth::Tokens(tokens) => {
                    let bearer = tokens.bearer().await?;
                    headers.insert(http::header::AUTHORIZATION, bearer.clone());
                    used_token = Some((tokens, bearer));
                }
            }
            let case = HeaderCase::resolve(
                &headers,
                &[
                    (&self.header_case, &self.headers),
                    (call_case, call_headers),
                ],
            );
            let sent = self.client.post_spelled(url, headers, &case, body.clone());
            let response = send(sent, self.first_byte_timeout).await?;
            if response.status() == StatusCode::UNAUTHORIZED && !retried {
                if let Some((tokens, bearer)) = used_token.filter(|(t, _)| t.can_refresh()) {
                    tracing::info!(
                        "connection '{}': Vertex refused the access token (401); fetching a new one and retrying once",
                        self.name
                    );
                    tokens.invalidate(&bearer);
                    retried = true;
                    continue;
                }
            }
            return errors::check_status(response, self.timeout).await;
        }
    }
}

/// `(collection, id)` for the URL: `models/x` and `x` → `("models", "x")`;
/// `tunedModels/x` → `("tunedModels", "x")`. Only characters of real model ids are
/// accepted, so a client's model name cannot change the URL path.
fn model_path(model: &str) -> Result<(&'static str, &str), ApiError> {
    let (collection, id) = if let Some(id) = model.strip_prefix("models/") {
        ("models", id)
    } else if let Some(id) = model.strip_prefix("tunedModels/") {
        ("tunedModels", id)
    } else {
        ("models", model)
    };
    let valid = !id.is_empty()
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if valid {
        Ok((collection, id))
    } else {
        Err(ApiError::invalid_param(
            "model",
            format!("'{model}' is not a valid Gemini model id"),
        ))
    }
}

#[async_trait]
impl Provider for GoogleProvider {
    /// The common requests are written straight from the client's bytes
    /// (`raw_request`); the others are built from the tree as before.
    fn takes_raw_chat(&self) -> bool {
        true
    }

    async fn embeddings(
        &self,
        call: super::doors::DoorCall,
    ) -> Result<super::doors::Embeddings, ApiError> {
        self.embed(call).await
    }

    /// AI Studio's `GET /v1beta/models` (pages followed, at most 20), keeping models
    /// that can `generateContent`, without the `models/` prefix. Vertex has no
    /// equivalent list of publisher models for a project, so it cannot list.
    async fn list_models(&self) -> Result<Vec<String>, ApiError> {
        let Endpoint::AiStudio { root } = &self.endpoint else {
            return Err(ApiError::upstream_failure(
                "Vertex AI connections cannot list their models",
            ));
        };
        let mut ids = Vec::new();
        let mut page_token: Option<String> = None;
        for _ in 0..20 {
            let mut url = reqwest::Url::parse(&format!("{root}/models"))
                .map_err(|e| ApiError::internal(format!("the models URL: {e}")))?;
            url.query_pairs_mut().append_pair("pageSize", "1000");
            if let Some(token) = &page_token {
                // Encoded: the token comes from the upstream's previous page.
                url.query_pairs_mut().append_pair("pageToken", token);
            }
            let mut headers = self.headers.clone();
            if let Auth::ApiKey(key) = &self.auth {
                headers.insert("x-goog-api-key", key.clone());
            }
            let case = HeaderCase::resolve(&headers, &[(&self.header_case, &self.headers)]);
            let sent = self.client.get_spelled(url.as_str(), headers, &case);
            let response = send(sent, self.timeout).await?;
            let response = errors::check_status(response, self.timeout).await?;
            let bytes = response
                .bytes(self.max_response_body)
                .await
                .map_err(UpstreamError::into_api_error)?;
            let page: Value = serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::upstream_failure(format!("model list is not JSON: {e}")))?;
            for model in page
                .get("models")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let generates = model
                    .get("supportedGenerationMethods")
                    .and_then(Value::as_array)
                    .is_none_or(|methods| methods.iter().any(|m| m == "generateContent"));
                if let Some(name) = model
                    .get("name")
                    .and_then(Value::as_str)
                    .filter(|_| generates)
                {
                    ids.push(name.strip_prefix("models/").unwrap_or(name).to_owned());
                }
            }
            page_token = page
                .get("nextPageToken")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if page_token.is_none() {
                break;
            }
        }
        Ok(ids)
    }

    async fn complete(&self, mut call: UpstreamCall) -> Result<Value, ApiError> {
        let written = self.written_from_raw(&mut call)?;
        let work = async {
            let response = self.post(&call, written, false).await?;
            let bytes = response
                .bytes(self.max_response_body)
                .await
                .map_err(UpstreamError::into_api_error)?;
            let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::upstream_failure(format!(
                    "connection '{}': Gemini answer is not JSON: {e}",
                    self.name
                ))
            })?;
            let completion =
                response::to_completion(&value, &self.answer_context(&call), unix_now())?;
            self.request_options.signatures.remember(&completion);
            Ok(completion)
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(timeout_error(self.timeout)))
    }

    async fn stream(&self, call: UpstreamCall) -> Result<ChunkStream, ApiError> {
        self.stream_payload(call).await.map(into_chunk_stream)
    }

    /// The chunks as the translator writes them (text; see `stream::StreamTranslator`).
    async fn stream_payload(&self, mut call: UpstreamCall) -> Result<PayloadStream, ApiError> {
        let written = self.written_from_raw(&mut call)?;
        let response = self.post(&call, written, true).await?;
        let mut events = sse_data_events(response.bytes_stream(), self.chunk_timeout);
        let mut translator =
            StreamTranslator::new(self.answer_context(&call), call.include_usage())
                .with_signatures(self.request_options.signatures.clone());

        // Read the first event before answering, so that a blocked prompt or an error
        // Gemini reports at once still gets a real HTTP status instead of a 200 stream
        // that fails in its first chunk.
        let mut pending = VecDeque::new();
        match events.next().await {
            Some(Ok(event)) => translator.on_event_data(&event, &mut pending)?,
            Some(Err(error)) => return Err(error),
            None => translator.finish(&mut pending)?,
        }
        Ok(Box::pin(Translate {
            events,
            translator,
            pending,
            ended: false,
        }))
    }
}

/// A request body as JSON bytes.
fn json_bytes(body: &impl serde::Serialize) -> Result<Bytes, ApiError> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(format!("cannot encode the request: {e}")))
}

/// The chunk stream of a Gemini stream: polled in place (an `unfold` moved its whole
/// state in and out of a future for every chunk).
struct Translate {
    events: DataStream,
    translator: StreamTranslator,
    pending: VecDeque<Payload>,
    ended: bool,
}

impl futures_util::Stream for Translate {
    type Item = Result<Payload, ApiError>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let st = self.get_mut();
        loop {
            if let Some(chunk) = st.pending.pop_front() {
                return Poll::Ready(Some(Ok(chunk)));
            }
            if st.ended {
                return Poll::Ready(None);
            }
            let produced = match futures_util::ready!(st.events.poll_next_unpin(cx)) {
                Some(Ok(event)) => st.translator.on_event_data(&event, &mut st.pending),
                Some(Err(error)) => Err(error),
                None => {
                    st.ended = true;
                    st.translator.finish(&mut st.pending)
                }
            };
            if let Err(error) = produced {
                st.ended = true;
                st.pending.clear();
                return Poll::Ready(Some(Err(error)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_cannot_change_the_path() {
        assert_eq!(
            model_path("gemini-2.5-flash").unwrap(),
            ("models", "gemini-2.5-flash")
        );
        assert_eq!(
            model_path("models/gemini-2.0-flash-001").unwrap(),
            ("models", "gemini-2.0-flash-001")
        );
        assert_eq!(
            model_path("tunedModels/my-model").unwrap(),
            ("tunedModels", "my-model")
        );
        for bad in [
            "",
            "../secrets",
            "a/b",
            "x:streamGenerateContent",
            "x?key=1",
            "models/",
            "a b",
        ] {
            let err = model_path(bad).unwrap_err();
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
