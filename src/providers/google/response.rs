//! Gemini `GenerateContentResponse` → OpenAI `chat.completion` (reference §3.3,
//! §3.8, Appendices A and B), and the pieces the stream translator shares: parts →
//! text / reasoning / tool calls, finish reasons, usage, blocked prompts and the
//! optional Vertex response validation.
//!
//! - every candidate becomes a choice (index from `candidate.index`), including a
//!   candidate without content (`content: null`, mapped finish reason);
//! - text parts are joined into `content`; `thought: true` parts go to
//!   `reasoning_content`; `functionCall` parts become `tool_calls` with ids from
//!   [`super::ids`]; other part kinds (inline images, code execution) are not carried;
//! - a prompt blocked before generation (`promptFeedback.blockReason`, no candidates)
//!   is answered 400 with code `content_filter` and the reason in the message, never
//!   an empty 200.

use serde_json::{json, Map, Value};

use super::ids;
use crate::error::{ApiError, ErrorBody};
use crate::json_scan::TokenCounts;
use crate::streaming::completion_id;

/// What a translation needs besides the Gemini answer.
#[derive(Debug, Clone)]
pub struct AnswerContext {
    /// The upstream model requested (used when Gemini names no `modelVersion`).
    pub model: String,
    /// `google_vertex_response_validation`: unsuccessful finish reasons are errors.
    pub validate: bool,
}

/// The translated parts of one candidate (or of one streamed event of it).
#[derive(Debug, Default, PartialEq)]
pub struct Parts {
    pub text: Option<String>,
    pub reasoning: Option<String>,
    /// `(name, arguments as JSON text, thought signature)`.
    pub calls: Vec<(String, String, Option<String>)>,
}

/// Sort a candidate's parts into text, reasoning and function calls.
pub fn read_parts(candidate: &Value) -> Parts {
    let mut out = Parts::default();
    let parts = candidate
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array);
    for part in parts.into_iter().flatten() {
        if let Some(call) = part.get("functionCall") {
            let name = call
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let args = match call.get("args") {
                Some(args @ Value::Object(_)) => args.to_string(),
                _ => "{}".to_owned(),
            };
            let signature = part
                .get("thoughtSignature")
                .and_then(Value::as_str)
                .map(str::to_owned);
            out.calls.push((name, args, signature));
        } else if let Some(text) = part.get("text").and_then(Value::as_str) {
            // Empty text parts carrying only a signature are normal at the end.
            if text.is_empty() {
                continue;
            }
            let slot = if part.get("thought").and_then(Value::as_bool) == Some(true) {
                &mut out.reasoning
            } else {
                &mut out.text
            };
            slot.get_or_insert_with(String::new).push_str(text);
        }
    }
    out
}

/// The candidate's index (`index`, else its position).
pub fn candidate_index(candidate: &Value, position: usize) -> u64 {
    candidate
        .get("index")
        .and_then(Value::as_u64)
        .unwrap_or(position as u64)
}

/// Gemini `finishReason` → OpenAI `finish_reason` (Appendix A); `None` while the
/// candidate is still going.
pub fn finish_reason(reason: Option<&str>, has_tool_calls: bool) -> Option<&'static str> {
    let stop = if has_tool_calls { "tool_calls" } else { "stop" };
    Some(match reason? {
        "STOP" | "FINISH_REASON_UNSPECIFIED" => stop,
        "MAX_TOKENS" => "length",
        "SAFETY"
        | "RECITATION"
        | "LANGUAGE"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION"
        | "IMAGE_OTHER"
        | "NO_IMAGE"
        | "OTHER" => "content_filter",
        "MALFORMED_FUNCTION_CALL"
        | "UNEXPECTED_TOOL_CALL"
        | "TOO_MANY_TOOL_CALLS"
        | "MISSING_THOUGHT_SIGNATURE" => {
            tracing::info!("Gemini finished with {}; reported as '{stop}'", reason?);
            stop
        }
        unknown => {
            tracing::warn!("unknown Gemini finishReason '{unknown}'; reported as '{stop}'");
            stop
        }
    })
}

/// Finish reasons that the Vertex SDK's response validation accepts.
fn is_successful(reason: &str) -> bool {
    matches!(reason, "STOP" | "MAX_TOKENS" | "FINISH_REASON_UNSPECIFIED")
}

/// With response validation on, an unsuccessful finish reason is an error: 400
/// `content_filter` for filter reasons, 502 for the others (malformed function call,
/// ...), which a retry may fix.
pub fn validation_error(reason: &str, candidate: &Value) -> Option<ApiError> {
    if is_successful(reason) {
        return None;
    }
    let detail = candidate
        .get("finishMessage")
        .and_then(Value::as_str)
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    let message = format!(
        "The model's answer did not complete successfully (finishReason {reason}){detail}; \
         google_vertex_response_validation is on for this connection."
    );
    let body = if finish_reason(Some(reason), false) == Some("content_filter") {
        ErrorBody::new(
            http::StatusCode::BAD_REQUEST,
            message,
            "invalid_request_error",
        )
        .code(Some("content_filter".into()))
    } else {
        ErrorBody::new(http::StatusCode::BAD_GATEWAY, message, "upstream_error")
            .code(Some("response_validation_failed".into()))
    };
    Some(ApiError::UpstreamRejected(Box::new(body)))
}

/// A blocked prompt (no candidates, `promptFeedback.blockReason`) as an error.
pub fn blocked_prompt_error(response: &Value) -> Option<ApiError> {
    let has_candidates = response
        .get("candidates")
        .and_then(Value::as_array)
        .is_some_and(|c| !c.is_empty());
    if has_candidates {
        return None;
    }
    let feedback = response.get("promptFeedback")?;
    let reason = feedback.get("blockReason").and_then(Value::as_str)?;
    let detail = feedback
        .get("blockReasonMessage")
        .and_then(Value::as_str)
        .map(|m| format!(" {m}"))
        .unwrap_or_default();
    let body = ErrorBody::new(
        http::StatusCode::BAD_REQUEST,
        format!("Gemini blocked the prompt (blockReason: {reason}).{detail}"),
        "invalid_request_error",
    )
    .code(Some("content_filter".into()))
    .param(Some("messages".into()));
    Some(ApiError::UpstreamRejected(Box::new(body)))
}

fn count(meta: &Value, key: &str) -> u64 {
    meta.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// `usageMetadata` → OpenAI `usage` (Appendix B): prompt = prompt + tool-use prompt
/// tokens; completion = candidates + thoughts, unless Gemini's candidates count
/// already includes the thoughts (prompt + candidates == total); cached tokens and
/// reasoning tokens in the details; total = prompt + completion.
pub fn usage(meta: &Value) -> Value {
    let counts = UsageCounts::of(meta);
    json!({
        "prompt_tokens": counts.prompt,
        "completion_tokens": counts.completion,
        "total_tokens": counts.total(),
        "prompt_tokens_details": {"cached_tokens": counts.cached},
        "completion_tokens_details": {"reasoning_tokens": counts.thoughts},
    })
}

/// [`usage`] written as JSON text, as serializing that tree writes it, with the
/// counts metrics read from it: a stream's last chunk is written without a tree.
pub fn write_usage(meta: &Value, out: &mut Vec<u8>) -> TokenCounts {
    let counts = UsageCounts::of(meta);
    let mut number = itoa::Buffer::new();
    let mut member = |out: &mut Vec<u8>, key: &[u8], n: u64| {
        out.extend_from_slice(key);
        out.extend_from_slice(number.format(n).as_bytes());
    };
    member(out, b"{\"prompt_tokens\":", counts.prompt);
    member(out, b",\"completion_tokens\":", counts.completion);
    member(out, b",\"total_tokens\":", counts.total());
    member(
        out,
        b",\"prompt_tokens_details\":{\"cached_tokens\":",
        counts.cached,
    );
    member(
        out,
        b"},\"completion_tokens_details\":{\"reasoning_tokens\":",
        counts.thoughts,
    );
    out.extend_from_slice(b"}}");
    TokenCounts {
        prompt: Some(counts.prompt),
        completion: Some(counts.completion),
        cached: Some(counts.cached),
        reasoning: Some(counts.thoughts),
    }
}

/// The OpenAI counts of a `usageMetadata` object (see [`usage`]).
struct UsageCounts {
    prompt: u64,
    completion: u64,
    cached: u64,
    thoughts: u64,
}

impl UsageCounts {
    fn of(meta: &Value) -> UsageCounts {
        let prompt =
            count(meta, "promptTokenCount").saturating_add(count(meta, "toolUsePromptTokenCount"));
        let candidates = count(meta, "candidatesTokenCount");
        let thoughts = count(meta, "thoughtsTokenCount");
        let inclusive = thoughts > 0
            && meta.get("totalTokenCount").and_then(Value::as_u64)
                == Some(prompt.saturating_add(candidates));
        let completion = if inclusive {
            candidates
        } else {
            candidates.saturating_add(thoughts)
        };
        UsageCounts {
            prompt,
            completion,
            cached: count(meta, "cachedContentTokenCount"),
            thoughts,
        }
    }

    fn total(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }
}

/// `chatcmpl-<responseId>`, or a fresh id.
pub fn completion_id_for(response: &Value) -> String {
    completion_id_of(response.get("responseId").and_then(Value::as_str))
}

/// [`completion_id_for`] of a `responseId` already read.
pub fn completion_id_of(response_id: Option<&str>) -> String {
    match response_id {
        Some(id) if !id.is_empty() => {
            let clean: String = id
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            if clean.is_empty() {
                completion_id()
            } else {
                format!("chatcmpl-{clean}")
            }
        }
        _ => completion_id(),
    }
}

/// The model name to report: Gemini's `modelVersion`, else the requested model.
pub fn model_name(response: &Value, requested: &str) -> String {
    model_name_of(
        response.get("modelVersion").and_then(Value::as_str),
        requested,
    )
}

/// [`model_name`] of a `modelVersion` already read.
pub fn model_name_of(model_version: Option<&str>, requested: &str) -> String {
    model_version
        .filter(|m| !m.is_empty())
        .unwrap_or(requested)
        .to_owned()
}

/// OpenAI `tool_calls` entries for the calls of one candidate, ordinals from `first`.
pub fn tool_call_values(
    stem: &str,
    candidate: u64,
    first: usize,
    calls: &[(String, String, Option<String>)],
) -> Vec<Value> {
    calls
        .iter()
        .enumerate()
        .map(|(k, (name, args, signature))| {
            json!({
                "id": ids::tool_call_id(stem, candidate, first + k, signature.as_deref()),
                "type": "function",
                "function": {"name": name, "arguments": args},
            })
        })
        .collect()
}

/// Translate a whole (non-streamed) answer.
pub fn to_completion(
    response: &Value,
    ctx: &AnswerContext,
    created: u64,
) -> Result<Value, ApiError> {
    if let Some(error) = blocked_prompt_error(response) {
        return Err(error);
    }
    let candidates = response
        .get("candidates")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::upstream_failure("Gemini answered without candidates"))?;
    let stem = ids::response_stem(response);

    let mut choices: Vec<(u64, Value)> = Vec::with_capacity(candidates.len());
    for (position, candidate) in candidates.iter().enumerate() {
        let index = candidate_index(candidate, position);
        let reason = candidate.get("finishReason").and_then(Value::as_str);
        if ctx.validate {
            if let Some(error) = reason.and_then(|r| validation_error(r, candidate)) {
                return Err(error);
            }
        }
        let parts = read_parts(candidate);
        let mut message = Map::new();
        message.insert("role".into(), "assistant".into());
        message.insert(
            "content".into(),
            parts.text.map(Value::String).unwrap_or(Value::Null),
        );
        if let Some(reasoning) = parts.reasoning {
            message.insert("reasoning_content".into(), Value::String(reasoning));
        }
        let has_calls = !parts.calls.is_empty();
        if has_calls {
            message.insert(
                "tool_calls".into(),
                Value::Array(tool_call_values(&stem, index, 0, &parts.calls)),
            );
        }
        // A finished answer without a reason is a normal stop.
        let finish = finish_reason(reason.or(Some("STOP")), has_calls);
        choices.push((
            index,
            json!({"index": index, "message": message, "logprobs": null, "finish_reason": finish}),
        ));
    }
    choices.sort_by_key(|(index, _)| *index);

    let mut completion = json!({
        "id": completion_id_for(response),
        "object": "chat.completion",
        "created": created,
        "model": model_name(response, &ctx.model),
        "choices": choices.into_iter().map(|(_, c)| c).collect::<Vec<_>>(),
    });
    if let Some(meta) = response.get("usageMetadata") {
        completion["usage"] = usage(meta);
    }
    Ok(completion)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> AnswerContext {
        AnswerContext {
            model: "gemini-2.5-flash".into(),
            validate: false,
        }
    }

    #[test]
    fn text_thoughts_and_calls() {
        let response = json!({
            "candidates": [{
                "content": {"role": "model", "parts": [
                    {"text": "Thinking...", "thought": true},
                    {"text": "A cat. "},
                    {"text": "On a sofa."},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}, "thoughtSignature": "CiQB"},
                    {"functionCall": {"name": "ping"}},
                    {"text": "", "thoughtSignature": "AAAA"}
                ]},
                "finishReason": "STOP", "index": 0
            }],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 20, "totalTokenCount": 35, "cachedContentTokenCount": 4},
            "modelVersion": "gemini-2.5-flash-001",
            "responseId": "resp1"
        });
        let out = to_completion(&response, &ctx(), 7).unwrap();
        assert_eq!(out["id"], "chatcmpl-resp1");
        assert_eq!(out["model"], "gemini-2.5-flash-001");
        assert_eq!(out["created"], 7);
        let choice = &out["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], "A cat. On a sofa.");
        assert_eq!(choice["message"]["reasoning_content"], "Thinking...");
        let calls = choice["message"]["tool_calls"].as_array().unwrap();
        assert!(calls[0]["id"]
            .as_str()
            .unwrap()
            .starts_with("call_resp1_0_0__thought__"));
        assert_eq!(calls[0]["function"]["arguments"], "{\"city\":\"Oslo\"}");
        assert_eq!(calls[1]["id"], "call_resp1_0_1");
        assert_eq!(calls[1]["function"]["arguments"], "{}");
        assert_eq!(
            out["usage"],
            json!({"prompt_tokens": 10, "completion_tokens": 25, "total_tokens": 35,
                "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 20}})
        );
    }

    #[test]
    fn finish_reasons_per_appendix_a() {
        assert_eq!(finish_reason(Some("STOP"), false), Some("stop"));
        assert_eq!(finish_reason(Some("STOP"), true), Some("tool_calls"));
        assert_eq!(finish_reason(Some("MAX_TOKENS"), true), Some("length"));
        for r in [
            "SAFETY",
            "RECITATION",
            "LANGUAGE",
            "BLOCKLIST",
            "PROHIBITED_CONTENT",
            "SPII",
            "IMAGE_SAFETY",
            "IMAGE_PROHIBITED_CONTENT",
            "IMAGE_RECITATION",
            "IMAGE_OTHER",
            "NO_IMAGE",
            "OTHER",
        ] {
            assert_eq!(finish_reason(Some(r), false), Some("content_filter"), "{r}");
        }
        assert_eq!(
            finish_reason(Some("MALFORMED_FUNCTION_CALL"), false),
            Some("stop")
        );
        assert_eq!(finish_reason(Some("SOMETHING_NEW"), false), Some("stop"));
        assert_eq!(finish_reason(None, false), None);
    }

    #[test]
    fn usage_inclusive_and_exclusive_thoughts() {
        let exclusive = usage(
            &json!({"promptTokenCount": 5, "candidatesTokenCount": 3, "thoughtsTokenCount": 40, "totalTokenCount": 48}),
        );
        assert_eq!(exclusive["completion_tokens"], 43);
        assert_eq!(exclusive["total_tokens"], 48);
        let inclusive = usage(
            &json!({"promptTokenCount": 5, "candidatesTokenCount": 43, "thoughtsTokenCount": 40, "totalTokenCount": 48}),
        );
        assert_eq!(inclusive["completion_tokens"], 43);
        let tool_use = usage(
            &json!({"promptTokenCount": 5, "toolUsePromptTokenCount": 2, "candidatesTokenCount": 3, "totalTokenCount": 10}),
        );
        assert_eq!(tool_use["prompt_tokens"], 7);
        assert_eq!(tool_use["total_tokens"], 10);
        let empty = usage(&json!({"trafficType": "ON_DEMAND"}));
        assert_eq!(empty["total_tokens"], 0);
    }

    /// The text is what serializing the tree writes, and the counts are what metrics
    /// read from that tree (overflowing counts saturate in both).
    #[test]
    fn usage_written_as_text_is_the_tree_serialized() {
        for meta in [
            Value::Null,
            json!({"trafficType": "ON_DEMAND"}),
            json!({"promptTokenCount": 5, "candidatesTokenCount": 3, "thoughtsTokenCount": 40,
                   "totalTokenCount": 48, "cachedContentTokenCount": 2}),
            json!({"promptTokenCount": 5, "candidatesTokenCount": 43, "thoughtsTokenCount": 40, "totalTokenCount": 48}),
            json!({"promptTokenCount": u64::MAX, "toolUsePromptTokenCount": 2, "candidatesTokenCount": u64::MAX,
                   "thoughtsTokenCount": 1}),
        ] {
            let mut text = Vec::new();
            let counts = write_usage(&meta, &mut text);
            let tree = usage(&meta);
            assert_eq!(String::from_utf8(text).unwrap(), tree.to_string(), "{meta}");
            assert_eq!(counts, TokenCounts::of(&tree), "{meta}");
        }
    }

    #[test]
    fn candidates_blocks_and_validation() {
        let two = json!({"candidates": [
            {"content": {"parts": [{"text": "b"}]}, "finishReason": "MAX_TOKENS", "index": 1},
            {"content": {"parts": [{"text": "a"}]}, "finishReason": "STOP", "index": 0}
        ]});
        let out = to_completion(&two, &ctx(), 0).unwrap();
        assert_eq!(out["choices"][0]["message"]["content"], "a");
        assert_eq!(out["choices"][1]["finish_reason"], "length");
        assert!(out.get("usage").is_none());

        let safety =
            json!({"candidates": [{"finishReason": "SAFETY", "index": 0, "safetyRatings": []}]});
        let out = to_completion(&safety, &ctx(), 0).unwrap();
        assert_eq!(out["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(out["choices"][0]["finish_reason"], "content_filter");
        let strict = AnswerContext {
            validate: true,
            ..ctx()
        };
        let err = to_completion(&safety, &strict, 0).unwrap_err();
        assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
        assert_eq!(err.error_object()["code"], "content_filter");
        let malformed = json!({"candidates": [{"finishReason": "MALFORMED_FUNCTION_CALL", "finishMessage": "bad call"}]});
        let err = to_completion(&malformed, &strict, 0).unwrap_err();
        assert_eq!(err.status(), http::StatusCode::BAD_GATEWAY);
        assert!(err.error_object()["message"]
            .as_str()
            .unwrap()
            .contains("bad call"));

        let blocked = json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {"promptTokenCount": 3}});
        let err = to_completion(&blocked, &ctx(), 0).unwrap_err();
        assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
        assert_eq!(err.error_object()["code"], "content_filter");
        assert!(err.error_object()["message"]
            .as_str()
            .unwrap()
            .contains("PROHIBITED_CONTENT"));

        let nothing = to_completion(&json!({"candidates": []}), &ctx(), 0).unwrap_err();
        assert_eq!(nothing.status(), http::StatusCode::BAD_GATEWAY);
    }
}
