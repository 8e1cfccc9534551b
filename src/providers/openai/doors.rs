//! The embeddings, legacy completions and Responses doors on an OpenAI-compatible
//! upstream: `POST {api_base}/embeddings`, `/completions` and (with
//! `responses_api`) `/responses` with the client's body (only `model` replaced, by
//! the door), answers and stream events passed on as the upstream wrote them.

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;

use super::super::doors::{DoorCall, Embeddings, TextCompletion};
use super::super::upstream_http::{check_status, send, timeout_error};
use super::{declares, OpenAiProvider};
use crate::error::ApiError;
use crate::json_scan::{member_spans, member_str, TokenCounts};
use crate::payload::{Payload, RawJson};
use crate::streaming::{end_after_error, json_chunk, sse_data_events};
use crate::upstream::{json_post_headers, Target, UpstreamError, UpstreamResponse};

/// The two doors' upstream URLs, prepared once.
pub(super) struct Targets {
    embeddings: Target,
    completions: Target,
    responses: Target,
}

impl Targets {
    pub(super) fn new(client: &crate::upstream::UpstreamClient, base: &str) -> Targets {
        let target = |path: &str| {
            client
                .target(&format!("{base}/{path}"))
                .expect("api_base was checked to be an http(s) URL when the config loaded")
        };
        Targets {
            embeddings: target("embeddings"),
            completions: target("completions"),
            responses: target("responses"),
        }
    }
}

impl OpenAiProvider {
    async fn post_door(
        &self,
        target: &Target,
        call: &DoorCall,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let mut headers = json_post_headers(&self.headers, &call.headers, call.stream);
        if let Some(auth) = &self.authorization {
            headers.insert(http::header::AUTHORIZATION, auth.clone());
        }
        target.post(headers, call.body.clone()).await
    }

    /// A whole JSON answer of the upstream, within the connection's timeout.
    async fn door_json(&self, target: &Target, call: &DoorCall) -> Result<Bytes, ApiError> {
        let work = async {
            let response = send(self.post_door(target, call), self.first_byte_timeout).await?;
            let response = check_status(response, self.timeout).await?;
            response
                .bytes(self.max_response_body)
                .await
                .map_err(UpstreamError::into_api_error)
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(timeout_error(self.timeout)))
    }

    pub(super) async fn door_embeddings(&self, call: DoorCall) -> Result<Embeddings, ApiError> {
        let bytes = self.door_json(&self.doors.embeddings, &call).await?;
        let usage = usage_of(&bytes);
        match RawJson::object(bytes, usage) {
            Ok(raw) => Ok(Embeddings::Answer(Payload::Raw(raw))),
            Err(_) => Err(self.not_json("embeddings")),
        }
    }

    pub(super) async fn door_completion(&self, call: DoorCall) -> Result<TextCompletion, ApiError> {
        if !call.stream {
            let bytes = self.door_json(&self.doors.completions, &call).await?;
            let bytes = match RawJson::completion(bytes) {
                Ok(raw) => return Ok(TextCompletion::Complete(Payload::Raw(raw))),
                Err(bytes) => bytes,
            };
            // Not every field there (some servers leave out `id` or `created`): still
            // one JSON object, passed on as it is.
            let usage = usage_of(&bytes);
            return match RawJson::object(bytes, usage) {
                Ok(raw) => Ok(TextCompletion::Complete(Payload::Raw(raw))),
                Err(_) => Err(self.not_json("completions")),
            };
        }
        let response = send(
            self.post_door(&self.doors.completions, &call),
            self.first_byte_timeout,
        )
        .await?;
        let response = check_status(response, self.chunk_timeout).await?;
        if declares(&response, "application/json") {
            // A server that ignored `stream: true`: its one answer as the one chunk.
            let bytes = tokio::time::timeout(self.timeout, response.bytes(self.max_response_body))
                .await
                .map_err(|_| timeout_error(self.timeout))?
                .map_err(UpstreamError::into_api_error)?;
            let usage = usage_of(&bytes);
            let raw = RawJson::object(bytes, usage).map_err(|_| self.not_json("completions"))?;
            let one = futures_util::stream::iter([Ok(Payload::Raw(raw))]);
            return Ok(TextCompletion::Stream(Box::pin(one)));
        }
        // Events with every field go on as written; others are read as JSON (an
        // `error` event ends the stream with its error).
        let chunks =
            sse_data_events(response.bytes_stream(), self.chunk_timeout).map(move |item| {
                item.and_then(|data| match RawJson::chunk_str(data) {
                    Ok(raw) => Ok(Payload::Raw(raw)),
                    Err(text) => json_chunk(&text).map(Payload::Value),
                })
            });
        Ok(TextCompletion::Stream(Box::pin(end_after_error(chunks))))
    }

    /// `POST /responses` passed through: the response object, or each event as
    /// written (never gathered); the usage of the final one is read for metrics.
    pub(super) async fn door_responses(&self, call: DoorCall) -> Result<TextCompletion, ApiError> {
        if !call.stream {
            let bytes = self.door_json(&self.doors.responses, &call).await?;
            let usage = std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| member_spans(text, "usage", 1)?.pop().map(|s| &text[s]))
                .and_then(|usage| serde_json::from_str::<Value>(usage).ok())
                .map(|usage| crate::api::responses::answer::token_counts(&usage));
            return match RawJson::object(bytes, usage) {
                Ok(raw) => Ok(TextCompletion::Complete(Payload::Raw(raw))),
                Err(_) => Err(self.not_json("responses")),
            };
        }
        let response = send(
            self.post_door(&self.doors.responses, &call),
            self.first_byte_timeout,
        )
        .await?;
        let response = check_status(response, self.chunk_timeout).await?;
        if declares(&response, "application/json") {
            return Err(ApiError::upstream_failure(format!(
                "connection '{}': a streamed Responses request was answered with JSON, not \
                 events",
                self.name
            )));
        }
        let name = self.name.clone();
        let events =
            sse_data_events(response.bytes_stream(), self.chunk_timeout).map(move |item| {
                item.and_then(|data| {
                    let usage = final_usage(&data);
                    RawJson::object(Bytes::from(data), usage)
                        .map(Payload::Raw)
                        .map_err(|_| {
                            ApiError::upstream_failure(format!(
                                "connection '{name}': a Responses event is not a JSON object"
                            ))
                        })
                })
            });
        Ok(TextCompletion::Stream(Box::pin(end_after_error(events))))
    }

    fn not_json(&self, what: &str) -> ApiError {
        ApiError::upstream_failure(format!(
            "connection '{}': the upstream's {what} answer is not a JSON object",
            self.name
        ))
    }
}

/// The token counts of the `usage` member of a JSON object's text, if any.
fn usage_of(bytes: &[u8]) -> Option<TokenCounts> {
    let text = std::str::from_utf8(bytes).ok()?;
    let span = member_spans(text, "usage", 1)?.pop()?;
    let usage: Value = serde_json::from_str(&text[span]).ok()?;
    usage.is_object().then(|| TokenCounts::of(&usage))
}

/// The usage of a Responses stream's final event (`response.completed`,
/// `.incomplete`, `.failed`: `response.usage`); other events are not parsed.
fn final_usage(data: &str) -> Option<TokenCounts> {
    let kind = member_str(data, "type")?;
    if !matches!(
        kind.as_ref(),
        "response.completed" | "response.incomplete" | "response.failed"
    ) {
        return None;
    }
    let event: Value = serde_json::from_str(data).ok()?;
    let usage = event.get("response")?.get("usage")?;
    usage
        .is_object()
        .then(|| crate::api::responses::answer::token_counts(usage))
}
