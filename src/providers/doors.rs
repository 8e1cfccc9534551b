//! What providers get and give for the embeddings and legacy completions doors
//! (`api/embeddings.rs`, `api/completions.rs`).
//!
//! Both doors pass an OpenAI-compatible connection the client's bytes with only
//! `model` replaced ([`DoorCall::body`]); providers that translate (Gemini, Vertex,
//! the mock, Python embedding callables) read the checked inputs instead
//! ([`DoorCall::inputs`]) and answer with plain vectors ([`Embeddings::Vectors`]),
//! which the door turns into OpenAI's answer (`encoding_format`, `dimensions`).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Map, Value};

use super::{Provider, UpstreamCall};
use crate::error::ApiError;
use crate::payload::{Payload, PayloadStream};
use crate::streaming::ChunkStream;

/// One embeddings or legacy completions call, as the door prepared it.
#[derive(Debug, Clone)]
pub struct DoorCall {
    /// The connection's name, for errors that must name it.
    pub connection: String,
    /// The upstream model name (after routing).
    pub model: String,
    /// The request as it goes to an OpenAI-compatible upstream: the client's bytes
    /// with only `model` replaced (or the request written out again when a handler
    /// changed it).
    pub body: Bytes,
    /// The request's fields other than `model`, as handlers left them.
    pub params: Map<String, Value>,
    /// Embeddings: the checked `input` items, one per vector asked for.
    pub inputs: Vec<EmbeddingInput>,
    /// Extra HTTP headers for this call (from handlers' `llm_params.extra_headers`).
    pub headers: http::HeaderMap,
    /// The names of `headers` as the handlers spelled them (where not title case).
    pub header_case: crate::upstream::HeaderCase,
    /// Completions: the answer is streamed.
    pub stream: bool,
    /// Completions: the gateway wants a stream's usage (for loggers and metrics)
    /// whether or not the client asked for it, as for chat
    /// (`UpstreamCall::gateway_usage`); the door hides what the client did not ask for.
    pub gateway_usage: bool,
}

impl DoorCall {
    /// Whether the client asked for a stream's usage (`stream_options.include_usage`).
    pub fn client_include_usage(&self) -> bool {
        self.params
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// Whether a stream's usage is wanted, by the client or the gateway.
    pub fn include_usage(&self) -> bool {
        self.gateway_usage || self.client_include_usage()
    }

    /// The positive `dimensions` the client asked for.
    pub fn dimensions(&self) -> Option<u64> {
        self.params.get("dimensions").and_then(Value::as_u64)
    }
}

/// One item of an embeddings request's `input`.
#[derive(Debug, Clone, PartialEq)]
pub enum EmbeddingInput {
    Text(String),
    /// Token ids, for upstreams that embed tokens.
    Tokens(Vec<u64>),
}

impl EmbeddingInput {
    /// The item as text: the text itself, or the token ids written out with spaces
    /// (for the mock, which derives its vectors from text).
    pub fn as_text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            EmbeddingInput::Text(text) => std::borrow::Cow::Borrowed(text),
            EmbeddingInput::Tokens(ids) => std::borrow::Cow::Owned(
                ids.iter().map(u64::to_string).collect::<Vec<_>>().join(" "),
            ),
        }
    }
}

/// What a provider answers an embeddings call with.
pub enum Embeddings {
    /// An OpenAI-compatible upstream's answer, passed on (the door encodes its
    /// vectors only if the client asked for base64 and the upstream gave floats).
    Answer(Payload),
    /// Vectors in input order and the tokens read, if known; the door writes
    /// OpenAI's `list` answer from them.
    Vectors {
        vectors: Vec<Vec<f32>>,
        prompt_tokens: Option<u64>,
    },
}

/// What a provider answers a legacy completions call (or a Responses call passed
/// through) with.
pub enum TextCompletion {
    /// A `text_completion` object (a `response` object).
    Complete(Payload),
    /// Its chunks, each a `text_completion` object (Responses events), as the
    /// upstream wrote them.
    Stream(PayloadStream),
}

/// The 400 of a connection that cannot serve a door.
pub fn cannot_serve(connection: &str, what: &str) -> ApiError {
    ApiError::invalid_request(format!(
        "The model is routed to connection '{connection}', which cannot serve {what}; \
         route it to an OpenAI-compatible connection{}.",
        if what == "embeddings" {
            ", a Gemini / Vertex AI connection, a mock or a Python connection with `embed_func`"
        } else {
            " or a mock"
        }
    ))
}

/// A user callable that embeds texts (a Python connection's `embed_func`).
#[async_trait]
pub trait Embedder: Send + Sync {
    async fn embed(&self, call: &DoorCall) -> Result<(Vec<Vec<f32>>, Option<u64>), ApiError>;
}

/// A Python (`api_type = "function"`) connection with an `embed_func`: embeddings
/// from the callable, everything else from the chat callable (`inference_func`), if
/// there is one.
pub struct EmbeddingConnection {
    pub name: String,
    pub chat: Option<Arc<dyn Provider>>,
    pub embedder: Arc<dyn Embedder>,
    /// The most one embedding call may take (504 past it; the call is dropped,
    /// which cancels an async callable).
    pub timeout: std::time::Duration,
}

impl EmbeddingConnection {
    fn chat(&self) -> Result<&Arc<dyn Provider>, ApiError> {
        self.chat.as_ref().ok_or_else(|| {
            ApiError::invalid_request(format!(
                "The model is routed to connection '{}', which serves embeddings only (it has \
                 `embed_func` and no `inference_func`).",
                self.name
            ))
        })
    }
}

#[async_trait]
impl Provider for EmbeddingConnection {
    async fn complete(&self, call: UpstreamCall) -> Result<Value, ApiError> {
        self.chat()?.complete(call).await
    }

    async fn stream(&self, call: UpstreamCall) -> Result<ChunkStream, ApiError> {
        self.chat()?.stream(call).await
    }

    async fn complete_payload(&self, call: UpstreamCall) -> Result<Payload, ApiError> {
        self.chat()?.complete_payload(call).await
    }

    async fn stream_payload(&self, call: UpstreamCall) -> Result<PayloadStream, ApiError> {
        self.chat()?.stream_payload(call).await
    }

    async fn list_models(&self) -> Result<Vec<String>, ApiError> {
        self.chat()?.list_models().await
    }

    async fn embeddings(&self, call: DoorCall) -> Result<Embeddings, ApiError> {
        let (vectors, prompt_tokens) =
            tokio::time::timeout(self.timeout, self.embedder.embed(&call))
                .await
                .map_err(|_| super::upstream_http::timeout_error(self.timeout))??;
        Ok(Embeddings::Vectors {
            vectors,
            prompt_tokens,
        })
    }

    async fn text_completion(&self, call: DoorCall) -> Result<TextCompletion, ApiError> {
        match &self.chat {
            Some(chat) => chat.text_completion(call).await,
            None => Err(cannot_serve(&call.connection, "text completions")),
        }
    }
}
