//! The Anthropic door's native path: a client that speaks the Messages API, routed
//! to an Anthropic connection, gets its request passed on and the answer passed
//! back as written. The body arrives with only `model` replaced (the door does
//! that on the client's bytes); the answer, or each event of a stream, is checked
//! to be one JSON object and handed on unchanged, with the token counts read for
//! the metrics. Nothing here translates, so fields nobody here knows (thinking
//! signatures, citations, server tools, beta fields) survive byte for byte.

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use serde::Deserialize;
use serde_json::Value;

use super::upstream_http::{check_status_with, send, timeout_error};
use super::{response, AnthropicProvider};
use crate::api::messages::fast::event_type;
use crate::error::ApiError;
use crate::json_scan::{member_spans, member_str, ScanMemo, TokenCounts};
use crate::payload::{Payload, PayloadStream, RawJson};
use crate::streaming::sse_decoded;
use crate::upstream::{json_post_headers, HeaderCase, Target, UpstreamError};

/// Client headers an Anthropic upstream is told about: the API version the client
/// speaks and the beta features it asked for.
pub const CLIENT_HEADERS: [&str; 2] = ["anthropic-version", "anthropic-beta"];

/// One native call, as the door prepared it.
pub struct NativeCall {
    /// The client's body with only `model` replaced.
    pub body: Bytes,
    pub stream: bool,
    /// The client's `anthropic-version` / `anthropic-beta`.
    pub client_headers: HeaderMap,
    /// Headers set by `before` handlers (`llm_params.extra_headers`).
    pub extra_headers: HeaderMap,
    /// The names of `extra_headers` as the handlers (or the client, for copies)
    /// spelled them.
    pub extra_header_case: HeaderCase,
}

/// What the upstream answered.
pub enum NativeReply {
    Complete(Payload),
    Stream(PayloadStream),
}

/// The counts of an Anthropic `usage` object that the metrics keep.
#[derive(Deserialize, Default)]
struct Usage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl Usage {
    /// Read from the raw text of a `usage` member.
    fn parse(text: &str) -> Option<Usage> {
        serde_json::from_str(text).ok()
    }

    /// Prompt tokens count cache reads and writes too, as OpenAI's `prompt_tokens`
    /// includes cached tokens.
    fn prompt(&self) -> Option<u64> {
        let parts = [
            self.input_tokens,
            self.cache_creation_input_tokens,
            self.cache_read_input_tokens,
        ];
        parts
            .iter()
            .any(Option::is_some)
            .then(|| parts.iter().flatten().sum())
    }
}

/// The `usage` member of a JSON object's text, if it has one.
fn usage_of(text: &str) -> Option<Usage> {
    let span = member_spans(text, "usage", 1)?.pop()?;
    Usage::parse(&text[span])
}

impl AnthropicProvider {
    /// The headers of a pass-through request and how their names are spelled: the
    /// connection's as configured, the handlers' as they wrote them.
    fn native_headers(&self, call: &NativeCall) -> (HeaderMap, HeaderCase) {
        let mut from_call = call.extra_headers.clone();
        for name in CLIENT_HEADERS {
            if let Some(value) = call.client_headers.get(name) {
                from_call.insert(HeaderName::from_static(name), value.clone());
            }
        }
        let mut headers = json_post_headers(&self.headers, &from_call, call.stream);
        // The client's API version wins over the default one (it knows which
        // version its body is written for); one set on the connection wins over it.
        if !self.version_pinned {
            if let Some(version) = call.client_headers.get("anthropic-version") {
                headers.insert(
                    HeaderName::from_static("anthropic-version"),
                    version.clone(),
                );
            }
        }
        let case = HeaderCase::resolve(
            &headers,
            &[
                (&self.header_case, &self.headers),
                (&call.extra_header_case, &call.extra_headers),
            ],
        );
        (headers, case)
    }

    /// `POST /v1/messages` with the client's body.
    pub async fn native_messages(&self, call: NativeCall) -> Result<NativeReply, ApiError> {
        if call.stream {
            self.native_stream(call).await.map(NativeReply::Stream)
        } else {
            self.native_json(&self.messages, call)
                .await
                .map(NativeReply::Complete)
        }
    }

    /// `POST /v1/messages/count_tokens` with the client's body.
    pub async fn native_count_tokens(&self, mut call: NativeCall) -> Result<Payload, ApiError> {
        call.stream = false;
        self.native_json(&self.count_tokens, call).await
    }

    /// One JSON answer, bounded by the connection timeout as a whole.
    async fn native_json(&self, target: &Target, call: NativeCall) -> Result<Payload, ApiError> {
        let (headers, case) = self.native_headers(&call);
        let work = async {
            let response = send(
                target.post_spelled(headers, &case, call.body),
                self.first_byte_timeout,
            )
            .await?;
            let response =
                check_status_with(response, self.timeout, response::status_to_error).await?;
            let bytes = response
                .bytes(self.max_response_body)
                .await
                .map_err(UpstreamError::into_api_error)?;
            self.answer(bytes)
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(timeout_error(self.timeout)))
    }

    /// A whole answer as the client gets it: the upstream's text, once it is known
    /// to be one JSON object that is not an error.
    fn answer(&self, bytes: Bytes) -> Result<Payload, ApiError> {
        let not_json = || {
            ApiError::upstream_failure(format!(
                "connection '{}': upstream answer is not a JSON object",
                self.name
            ))
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| not_json())?;
        if member_str(text, "type").as_deref() == Some("error") {
            let value: Value = serde_json::from_str(text).map_err(|_| not_json())?;
            return Err(response::error_event(&value));
        }
        let usage = usage_of(text).map(|u| TokenCounts {
            prompt: u.prompt(),
            completion: u.output_tokens,
            cached: u.cache_read_input_tokens,
            reasoning: None,
        });
        RawJson::object(bytes, usage)
            .map(Payload::Raw)
            .map_err(|_| not_json())
    }

    /// A stream, returned once Anthropic accepted the request: each event's data as
    /// written; an `error` event ends it as a failure.
    async fn native_stream(&self, call: NativeCall) -> Result<PayloadStream, ApiError> {
        let (headers, case) = self.native_headers(&call);
        let response = send(
            self.messages.post_spelled(headers, &case, call.body),
            self.first_byte_timeout,
        )
        .await?;
        let response =
            check_status_with(response, self.chunk_timeout, response::status_to_error).await?;
        let name = self.name.clone();
        // Input tokens come in `message_start`, output tokens in `message_delta`:
        // the latter carries both, as the metrics keep a stream's last counts.
        let mut prompt = None;
        let mut cached = None;
        let mut memo = ScanMemo::default();
        let events = sse_decoded(response.bytes_stream(), self.chunk_timeout, move |text| {
            let mut usage = None;
            match event_type(text.as_bytes()).as_deref() {
                Some("message_start") => {
                    let start = member_spans(&text, "message", 1)
                        .and_then(|mut spans| spans.pop())
                        .and_then(|span| usage_of(&text[span]));
                    prompt = start.as_ref().and_then(Usage::prompt);
                    cached = start.and_then(|u| u.cache_read_input_tokens);
                    usage = Some(TokenCounts {
                        prompt,
                        cached,
                        ..TokenCounts::default()
                    });
                }
                Some("message_delta") => {
                    let delta = usage_of(&text).unwrap_or_default();
                    usage = Some(TokenCounts {
                        prompt: delta.prompt().or(prompt),
                        completion: delta.output_tokens,
                        cached: delta.cache_read_input_tokens.or(cached),
                        reasoning: None,
                    });
                }
                Some("error") => {
                    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    return Err(response::error_event(&value));
                }
                _ => {}
            }
            RawJson::stream_object(text, usage, &mut memo)
                .map(Payload::Raw)
                .map_err(|_| {
                    ApiError::upstream_failure(format!(
                        "connection '{name}': a stream event is not a JSON object"
                    ))
                })
        });
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_cache_tokens_as_prompt() {
        let u = usage_of(r#"{"type":"message","usage":{"input_tokens":3,"cache_read_input_tokens":10,"output_tokens":5}}"#).unwrap();
        assert_eq!(u.prompt(), Some(13));
        assert_eq!(u.output_tokens, Some(5));
        assert_eq!(usage_of(r#"{"type":"ping"}"#).map(|u| u.prompt()), None);
        assert_eq!(Usage::default().prompt(), None);
    }
}
