//! The embeddings, legacy completions and Responses doors on an OpenAI-compatible
//! upstream: `POST {api_base}/embeddings`, `/completions` and (with
//! `responses_api`) `/responses` with the client's body (only `model` replaced, by
//! the door), answers and stream events passed on as the upstream wrote them.

use bytes::Bytes;
use serde_json::Value;

use super::super::doors::{DoorCall, Embeddings, TextCompletion};
use super::super::upstream_http::{check_status, send, timeout_error};
use super::{declares, refuses_stream_options, OpenAiProvider};
use crate::error::ApiError;
use crate::json_scan::{member_spans, member_str, ScanMemo, TokenCounts};
use crate::payload::{Payload, RawJson, StreamChunk};
use crate::streaming::{json_chunk, sse_decoded, sse_decoded_unchecked};
use crate::upstream::{Target, UpstreamError, UpstreamResponse};

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
        body: Bytes,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let (headers, case) = self.headers_for(&call.headers, &call.header_case, call.stream);
        target.post_spelled(headers, &case, body).await
    }

    /// Whether this streamed completion gets `stream_options.include_usage` added
    /// (as chat streams do, see `OpenAiProvider::adds_usage`).
    fn door_adds_usage(&self, call: &DoorCall) -> bool {
        self.stream_usage && call.stream && call.gateway_usage && !call.client_include_usage()
    }

    /// A whole JSON answer of the upstream, within the connection's timeout.
    async fn door_json(&self, target: &Target, call: &DoorCall) -> Result<Bytes, ApiError> {
        let work = async {
            let response = send(
                self.post_door(target, call, call.body.clone()),
                self.first_byte_timeout,
            )
            .await?;
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
        match RawJson::object_with_usage(bytes) {
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
            return match RawJson::object_with_usage(bytes) {
                Ok(raw) => Ok(TextCompletion::Complete(Payload::Raw(raw))),
                Err(_) => Err(self.not_json("completions")),
            };
        }
        let adds_usage = self.door_adds_usage(&call);
        let body = if adds_usage {
            with_usage_asked(&call)
        } else {
            call.body.clone()
        };
        let response = send(
            self.post_door(&self.doors.completions, &call, body),
            self.first_byte_timeout,
        )
        .await?;
        let response = match check_status(response, self.chunk_timeout).await {
            Ok(response) => response,
            Err(error) if adds_usage && refuses_stream_options(&error) => {
                return Err(self.explain_stream_options(error))
            }
            Err(error) => return Err(error),
        };
        if declares(response.headers(), "application/json") {
            // A server that ignored `stream: true`: its one answer as the one chunk.
            let bytes = tokio::time::timeout(self.timeout, response.bytes(self.max_response_body))
                .await
                .map_err(|_| timeout_error(self.timeout))?
                .map_err(UpstreamError::into_api_error)?;
            let raw =
                RawJson::object_with_usage(bytes).map_err(|_| self.not_json("completions"))?;
            let one = futures_util::stream::iter([Ok(Payload::Raw(raw))]);
            return Ok(TextCompletion::Stream(Box::pin(one)));
        }
        // Events with every field go on as written; others are read as JSON (an
        // `error` event ends the stream with its error).
        let mut memo = ScanMemo::default();
        let chunks =
            sse_decoded_unchecked(response.bytes_stream(), self.chunk_timeout, move |data| {
                match RawJson::stream_chunk(data, &mut memo)? {
                    StreamChunk::Raw(raw) => Ok(Payload::Raw(raw)),
                    StreamChunk::Other(text) => json_chunk(&text).map(Payload::Value),
                }
            });
        Ok(TextCompletion::Stream(chunks))
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
            self.post_door(&self.doors.responses, &call, call.body.clone()),
            self.first_byte_timeout,
        )
        .await?;
        let response = check_status(response, self.chunk_timeout).await?;
        if declares(response.headers(), "application/json") {
            return Err(ApiError::upstream_failure(format!(
                "connection '{}': a streamed Responses request was answered with JSON, not \
                 events",
                self.name
            )));
        }
        let name = self.name.clone();
        let mut memo = ScanMemo::default();
        let events = sse_decoded(response.bytes_stream(), self.chunk_timeout, move |data| {
            let usage = final_usage(&data);
            RawJson::stream_object(data, usage, &mut memo)
                .map(Payload::Raw)
                .map_err(|_| {
                    ApiError::upstream_failure(format!(
                        "connection '{name}': a Responses event is not a JSON object"
                    ))
                })
        });
        Ok(TextCompletion::Stream(events))
    }

    fn not_json(&self, what: &str) -> ApiError {
        ApiError::upstream_failure(format!(
            "connection '{}': the upstream's {what} answer is not a JSON object",
            self.name
        ))
    }
}

/// A streamed completion's body with `stream_options.include_usage = true`: the
/// client's text with the member put in front when it sent no `stream_options`
/// (no parse of a prompt that may be large), written out again from the call's
/// fields when it sent other options, which are kept.
fn with_usage_asked(call: &DoorCall) -> Bytes {
    let body = &call.body;
    let opening = body.iter().position(|b| !b.is_ascii_whitespace());
    if !call.params.contains_key("stream_options") {
        if let Some(at) = opening.filter(|&at| body[at] == b'{') {
            const MEMBER: &[u8] = br#""stream_options":{"include_usage":true},"#;
            let mut out = Vec::with_capacity(body.len() + MEMBER.len());
            out.extend_from_slice(&body[..=at]);
            out.extend_from_slice(MEMBER);
            out.extend_from_slice(&body[at + 1..]);
            return Bytes::from(out);
        }
    }
    let rebuilt = super::UpstreamBody {
        model: &call.model,
        params: &call.params,
        stream: true,
        add_usage: true,
    };
    Bytes::from(serde_json::to_vec(&rebuilt).expect("JSON values always serialize"))
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
