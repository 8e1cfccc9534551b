//! Anthropic answers → OpenAI answers (reference §2.5, §2.7, §2.10, Appendices A/B):
//! the non-streamed message, stop reasons, usage, and upstream error statuses.
//! Shared by the streaming translator for everything but the event order.

use http::{HeaderValue, StatusCode};
use serde_json::{json, Map, Value};

use super::request::{JsonMode, JSON_TOOL_NAME};
use super::thinking;
use crate::error::{ApiError, ErrorBody};
use crate::json_scan::{first_time, has_escape, refuse_unknown, TokenCounts, Walk};
use crate::providers::upstream_http::{parse_error_body, status_error};
use crate::streaming::unix_now;

/// Anthropic token counts. `input` excludes cache reads and writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub cache_read: u64,
    pub cache_creation: u64,
    pub output: u64,
}

/// The counts of an Anthropic `usage` object that are present, as a stream's typed
/// event view reads them (any other member makes the view give way to the tree).
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[serde(deny_unknown_fields)]
pub struct UsageCounts {
    input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

impl UsageCounts {
    /// The counts of a `usage` tree that are unsigned integers (anything else in it
    /// is ignored).
    pub(super) fn of(usage: &Value) -> UsageCounts {
        let field = |k: &str| usage.get(k).and_then(Value::as_u64);
        UsageCounts {
            input_tokens: field("input_tokens"),
            cache_read_input_tokens: field("cache_read_input_tokens"),
            cache_creation_input_tokens: field("cache_creation_input_tokens"),
            output_tokens: field("output_tokens"),
        }
    }

    /// A `usage` object read by a walk as serde reads this struct (see
    /// `stream::FastEvent::walked`; `refused` as there).
    pub(super) fn walked(walk: &mut Walk<'_>, refused: &mut bool) -> Option<UsageCounts> {
        Self::walk(
            walk,
            |_, key| refuse_unknown(key, refused),
            |walk| walk.u64_or_null(),
        )
    }

    /// A `usage` object read by a walk as [`UsageCounts::of`] reads its tree: the
    /// counts that are unsigned integers, every other member and value ignored (a
    /// `message_start`'s usage has more members than the typed view knows). `None`
    /// leaves it to the tree: not an object, a count given twice, a key with
    /// escapes, a negative count.
    pub(super) fn lenient(walk: &mut Walk<'_>) -> Option<UsageCounts> {
        Self::walk(
            walk,
            |walk, key| {
                if has_escape(key) {
                    None
                } else {
                    walk.skip().map(drop)
                }
            },
            |walk| {
                let value = walk.skip()?;
                if value.starts_with('-') {
                    return None;
                }
                // A float, a string, `null` or an object is not a count, as in the tree.
                Some(value.parse().ok())
            },
        )
    }

    /// The walk both readings share: the four counts, each at most once, read by
    /// `count`; other members handed to `other`.
    fn walk<'a>(
        walk: &mut Walk<'a>,
        mut other: impl FnMut(&mut Walk<'a>, &'a str) -> Option<()>,
        mut count: impl FnMut(&mut Walk<'a>) -> Option<Option<u64>>,
    ) -> Option<UsageCounts> {
        let mut counts = UsageCounts::default();
        let mut seen = [false; 4];
        walk.object(|walk, key| {
            let (slot, seen) = match key {
                "input_tokens" => (&mut counts.input_tokens, &mut seen[0]),
                "cache_read_input_tokens" => (&mut counts.cache_read_input_tokens, &mut seen[1]),
                "cache_creation_input_tokens" => {
                    (&mut counts.cache_creation_input_tokens, &mut seen[2])
                }
                "output_tokens" => (&mut counts.output_tokens, &mut seen[3]),
                _ => return other(walk, key),
            };
            first_time(seen)?;
            *slot = count(walk)?;
            Some(())
        })?;
        Some(counts)
    }
}

impl Usage {
    /// Take every count present in an Anthropic `usage` object. Streams report the
    /// cumulative output in each `message_delta`, so values replace, never add.
    pub fn update(&mut self, usage: &Value) {
        self.merge(UsageCounts::of(usage));
    }

    /// [`Usage::update`] with the counts already read.
    pub fn merge(&mut self, counts: UsageCounts) {
        if let Some(n) = counts.input_tokens {
            self.input = n;
        }
        if let Some(n) = counts.cache_read_input_tokens {
            self.cache_read = n;
        }
        if let Some(n) = counts.cache_creation_input_tokens {
            self.cache_creation = n;
        }
        if let Some(n) = counts.output_tokens {
            self.output = n;
        }
    }

    /// The OpenAI `usage` object: the prompt counts every input token (fresh, cache
    /// read and cache write), `cached_tokens` the cache reads, and the total is
    /// prompt + completion.
    pub fn to_openai(self) -> Value {
        let prompt = self.prompt();
        let mut details = Map::new();
        details.insert("cached_tokens".into(), self.cache_read.into());
        if self.cache_creation > 0 {
            details.insert("cache_write_tokens".into(), self.cache_creation.into());
        }
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": self.output,
            "total_tokens": prompt.saturating_add(self.output),
            "prompt_tokens_details": details,
        })
    }

    /// Every input token: fresh, cache read and cache write.
    fn prompt(self) -> u64 {
        self.input
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_creation)
    }

    /// [`Usage::to_openai`] written as JSON text, as serializing that tree writes
    /// it, with the counts metrics read from it: a stream's last chunk is written
    /// without building and serializing a tree (about 10,000 instructions).
    pub fn write_openai(self, out: &mut Vec<u8>) -> TokenCounts {
        let prompt = self.prompt();
        let total = prompt.saturating_add(self.output);
        let mut number = itoa::Buffer::new();
        let mut member = |out: &mut Vec<u8>, key: &[u8], n: u64| {
            out.extend_from_slice(key);
            out.extend_from_slice(number.format(n).as_bytes());
        };
        member(out, b"{\"prompt_tokens\":", prompt);
        member(out, b",\"completion_tokens\":", self.output);
        member(out, b",\"total_tokens\":", total);
        member(
            out,
            b",\"prompt_tokens_details\":{\"cached_tokens\":",
            self.cache_read,
        );
        if self.cache_creation > 0 {
            member(out, b",\"cache_write_tokens\":", self.cache_creation);
        }
        out.extend_from_slice(b"}}");
        TokenCounts {
            prompt: Some(prompt),
            completion: Some(self.output),
            cached: Some(self.cache_read),
            reasoning: None,
        }
    }
}

/// Anthropic `stop_reason` → OpenAI `finish_reason` (Appendix A). Unknown values
/// are reported as `stop` and logged, so a new upstream reason never breaks clients.
pub fn finish_reason(stop_reason: Option<&str>, connection: &str) -> &'static str {
    match stop_reason {
        Some("end_turn" | "stop_sequence" | "pause_turn") => "stop",
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        other => {
            tracing::warn!(
                connection,
                stop_reason = ?other,
                "unknown Anthropic stop_reason, reported as finish_reason \"stop\""
            );
            "stop"
        }
    }
}

/// The answer text of the JSON tool's input (unwrapping `values` when the schema
/// was wrapped on the way up).
pub fn json_answer(input: &Value, mode: JsonMode) -> String {
    let value = if mode.wrapped {
        input.get("values").unwrap_or(input)
    } else {
        input
    };
    value.to_string()
}

/// Tool input → OpenAI `arguments` text (`"{}"` for no input).
fn arguments(input: &Value) -> String {
    match input {
        Value::Null => "{}".to_owned(),
        other => other.to_string(),
    }
}

/// A non-streamed Anthropic message → an OpenAI `chat.completion`.
pub fn completion(
    message: &Value,
    fallback_model: &str,
    json_mode: Option<JsonMode>,
    connection: &str,
) -> Result<Value, ApiError> {
    if message.get("type").and_then(Value::as_str) == Some("error") {
        return Err(error_event(message));
    }
    let Some(blocks) = message.get("content").and_then(Value::as_array) else {
        return Err(ApiError::upstream_failure(format!(
            "connection '{connection}': upstream answer has no `content` list"
        )));
    };
    let mut text = String::new();
    let mut has_text = false;
    let mut reasoning = String::new();
    let mut signed = Vec::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                has_text = true;
                text.push_str(block.get("text").and_then(Value::as_str).unwrap_or(""));
            }
            Some("tool_use") => {
                let name = block.get("name").and_then(Value::as_str).unwrap_or("");
                let input = block.get("input").unwrap_or(&Value::Null);
                match json_mode {
                    Some(mode) if name == JSON_TOOL_NAME => {
                        has_text = true;
                        text.push_str(&json_answer(input, mode));
                    }
                    _ => tool_calls.push(json!({
                        "id": block.get("id").cloned().unwrap_or(Value::Null),
                        "type": "function",
                        "function": {"name": name, "arguments": arguments(input)},
                    })),
                }
            }
            Some("thinking") => {
                reasoning.push_str(block.get("thinking").and_then(Value::as_str).unwrap_or(""));
                signed.extend(thinking::signed_block(block));
            }
            Some("redacted_thinking") => signed.extend(thinking::signed_block(block)),
            // Server tool blocks, citations...: nothing to show.
            _ => {}
        }
    }
    let stop_reason = message.get("stop_reason").and_then(Value::as_str);
    let mut finish = finish_reason(stop_reason, connection);
    if !tool_calls.is_empty() {
        finish = "tool_calls";
    } else if finish == "tool_calls" {
        // The only tool called was the JSON answer (or a server tool): a plain answer.
        finish = "stop";
    }

    let mut msg = Map::new();
    msg.insert("role".into(), json!("assistant"));
    msg.insert(
        "content".into(),
        if has_text {
            Value::String(text)
        } else {
            Value::Null
        },
    );
    if !reasoning.is_empty() {
        msg.insert("reasoning_content".into(), Value::String(reasoning));
    }
    if !signed.is_empty() {
        // Kept for the next turn (see `thinking`), and shown where clients that
        // send the whole message back keep it.
        msg.insert("thinking_blocks".into(), Value::Array(signed.clone()));
        thinking::remember(
            signed,
            tool_calls
                .iter()
                .filter_map(|c| c.get("id").and_then(Value::as_str)),
        );
    }
    if !tool_calls.is_empty() {
        msg.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    let mut usage = Usage::default();
    if let Some(u) = message.get("usage") {
        usage.update(u);
    }
    Ok(json!({
        "id": message.get("id").and_then(Value::as_str).map_or_else(crate::streaming::completion_id, str::to_owned),
        "object": "chat.completion",
        "created": unix_now(),
        "model": message.get("model").and_then(Value::as_str).unwrap_or(fallback_model),
        "choices": [{"index": 0, "message": msg, "logprobs": null, "finish_reason": finish}],
        "usage": usage.to_openai(),
    }))
}

/// OpenAI `code` for an Anthropic error type, where one exists.
fn openai_code(anthropic_type: &str) -> Option<&'static str> {
    Some(match anthropic_type {
        "not_found_error" => "model_not_found",
        "request_too_large" => "request_too_large",
        "rate_limit_error" => "rate_limit_exceeded",
        "billing_error" => "insufficient_quota",
        "overloaded_error" => "overloaded",
        _ => return None,
    })
}

/// An upstream error status and body → the client's error (§2.7): 4xx keep their
/// status, Anthropic's message and type (plus Retry-After); 529 overloaded is 503
/// `server_error`/`overloaded`; 504 is a timeout; other 5xx are 502.
pub fn status_to_error(
    status: StatusCode,
    body: &[u8],
    retry_after: Option<HeaderValue>,
) -> ApiError {
    match status.as_u16() {
        529 => {
            let message = parse_error_body(body)
                .message
                .unwrap_or_else(|| "Anthropic is overloaded".to_owned());
            let mut err = ErrorBody::new(StatusCode::SERVICE_UNAVAILABLE, message, "server_error")
                .code(Some("overloaded".into()));
            if let Some(value) = retry_after {
                err = err.header(http::header::RETRY_AFTER, value);
            }
            ApiError::UpstreamRejected(Box::new(err))
        }
        504 => ApiError::UpstreamTimeout {
            detail: "Anthropic answered 504 (timeout_error)".into(),
        },
        _ => match status_error(status, body, retry_after) {
            ApiError::UpstreamRejected(mut err) => {
                if err.code.is_none() {
                    err.code = openai_code(&err.error_type).map(str::to_owned);
                }
                ApiError::UpstreamRejected(err)
            }
            other => other,
        },
    }
}

/// An Anthropic `{"type":"error","error":{...}}` object received with a 200 (in a
/// body or as a stream event). Overloads look like a 529; anything else is an
/// upstream failure with the provider's message.
pub fn error_event(event: &Value) -> ApiError {
    let error = event.get("error").unwrap_or(event);
    let text = |k: &str| error.get(k).and_then(Value::as_str).map(str::to_owned);
    let error_type = text("type").unwrap_or_else(|| "api_error".into());
    let message = text("message").unwrap_or_else(|| "Anthropic reported an error".into());
    mid_stream_error(message, &error_type)
}

/// The error for a failure reported inside a 200 answer.
pub fn mid_stream_error(message: String, anthropic_type: &str) -> ApiError {
    let body = if anthropic_type == "overloaded_error" {
        ErrorBody::new(StatusCode::SERVICE_UNAVAILABLE, message, "server_error")
            .code(Some("overloaded".into()))
    } else {
        ErrorBody::new(StatusCode::BAD_GATEWAY, message, anthropic_type)
            .code(openai_code(anthropic_type).map(str::to_owned))
    };
    ApiError::UpstreamRejected(Box::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reasons_map_per_appendix_a() {
        for (reason, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("pause_turn", "stop"),
            ("max_tokens", "length"),
            ("model_context_window_exceeded", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("brand_new_reason", "stop"),
        ] {
            assert_eq!(finish_reason(Some(reason), "c"), finish, "{reason}");
        }
        assert_eq!(finish_reason(None, "c"), "stop");
    }

    #[test]
    fn usage_counts_cache_in_the_prompt() {
        let mut u = Usage::default();
        u.update(&json!({"input_tokens": 42, "cache_creation_input_tokens": 10, "cache_read_input_tokens": 1200, "output_tokens": 1}));
        u.update(&json!({"output_tokens": 96}));
        assert_eq!(
            u.to_openai(),
            json!({"prompt_tokens": 1252, "completion_tokens": 96, "total_tokens": 1348,
                   "prompt_tokens_details": {"cached_tokens": 1200, "cache_write_tokens": 10}})
        );
        assert_eq!(
            Usage::default().to_openai()["prompt_tokens_details"],
            json!({"cached_tokens": 0})
        );
    }

    /// The text is what serializing the tree writes, and the counts are what metrics
    /// read from that tree.
    #[test]
    fn usage_written_as_text_is_the_tree_serialized() {
        for (input, cache_read, cache_creation, output) in [
            (0, 0, 0, 0),
            (42, 1200, 10, 96),
            (7, 0, 3, 1),
            (u64::MAX, 1, 0, u64::MAX),
        ] {
            let usage = Usage {
                input,
                cache_read,
                cache_creation,
                output,
            };
            let mut text = Vec::new();
            let counts = usage.write_openai(&mut text);
            let tree = usage.to_openai();
            assert_eq!(String::from_utf8(text).unwrap(), tree.to_string());
            assert_eq!(counts, TokenCounts::of(&tree));
        }
    }

    #[test]
    fn message_with_text_tools_and_thinking() {
        let msg = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-real",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Checking "},
                {"type": "text", "text": "both."},
                {"type": "tool_use", "id": "toolu_a", "name": "w", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "toolu_b", "name": "t", "input": {}},
            ],
            "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 7}});
        let c = completion(&msg, "fallback", None, "c").unwrap();
        assert_eq!(c["id"], "msg_1");
        assert_eq!(c["object"], "chat.completion");
        assert_eq!(c["model"], "claude-real");
        let m = &c["choices"][0]["message"];
        assert_eq!(m["content"], "Checking both.");
        assert_eq!(m["reasoning_content"], "hmm");
        assert_eq!(
            m["tool_calls"][0],
            json!({"id": "toolu_a", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Oslo\"}"}})
        );
        assert_eq!(m["tool_calls"][1]["function"]["arguments"], "{}");
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(c["usage"]["total_tokens"], 12);

        let only_tools = json!({"content": [{"type": "tool_use", "id": "x", "name": "f", "input": {}}], "stop_reason": "tool_use"});
        let c = completion(&only_tools, "fallback", None, "c").unwrap();
        assert_eq!(c["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(c["model"], "fallback");
    }

    #[test]
    fn json_tool_becomes_content() {
        let msg = json!({"content": [{"type": "tool_use", "id": "x", "name": JSON_TOOL_NAME, "input": {"values": [1, 2]}}], "stop_reason": "tool_use"});
        let c = completion(&msg, "m", Some(JsonMode { wrapped: true }), "c").unwrap();
        assert_eq!(c["choices"][0]["message"]["content"], "[1,2]");
        assert!(c["choices"][0]["message"].get("tool_calls").is_none());
        assert_eq!(c["choices"][0]["finish_reason"], "stop");
        let c = completion(&msg, "m", Some(JsonMode { wrapped: false }), "c").unwrap();
        assert_eq!(c["choices"][0]["message"]["content"], "{\"values\":[1,2]}");
    }

    #[test]
    fn error_statuses() {
        let body = br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"},"request_id":"req_1"}"#;
        let e = status_to_error(
            StatusCode::TOO_MANY_REQUESTS,
            body,
            Some(HeaderValue::from_static("5")),
        );
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.error_object()["message"], "slow down");
        assert_eq!(e.error_object()["type"], "rate_limit_error");
        assert_eq!(e.error_object()["code"], "rate_limit_exceeded");

        let over =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let e = status_to_error(StatusCode::from_u16(529).unwrap(), over, None);
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.error_object()["type"], "server_error");
        assert_eq!(e.error_object()["code"], "overloaded");
        assert_eq!(e.error_object()["message"], "Overloaded");

        let e = status_to_error(StatusCode::INTERNAL_SERVER_ERROR, b"{}", None);
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        let e = status_to_error(StatusCode::GATEWAY_TIMEOUT, b"{}", None);
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
        let e = status_to_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            br#"{"type":"error","error":{"type":"request_too_large","message":"big"}}"#,
            None,
        );
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e.error_object()["code"], "request_too_large");
    }
}
