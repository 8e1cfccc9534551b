//! Canonical answers (`chat.completion`) → Anthropic `message` objects, for
//! connections that do not speak the Messages API.

use serde_json::{json, Map, Value};

use crate::error::ApiError;

/// `finish_reason` → `stop_reason`.
pub fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// An Anthropic message id made from the upstream's id (or a new one).
pub fn message_id(upstream_id: Option<&str>) -> String {
    match upstream_id {
        Some(id) if id.starts_with("msg_") => id.to_owned(),
        Some(id) if !id.is_empty() => format!("msg_{id}"),
        _ => crate::context::random_id("msg_"),
    }
}

/// OpenAI `usage` → Anthropic `usage` (input tokens without the cached ones, which
/// are reported as cache reads).
pub fn usage(usage: Option<&Value>) -> Value {
    let get = |key: &str| usage.and_then(|u| u.get(key)).and_then(Value::as_u64);
    let prompt = get("prompt_tokens").unwrap_or(0);
    let cached = usage
        .and_then(|u| u.pointer("/prompt_tokens_details/cached_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .min(prompt);
    let mut out = Map::new();
    out.insert("input_tokens".into(), (prompt - cached).into());
    out.insert(
        "output_tokens".into(),
        get("completion_tokens").unwrap_or(0).into(),
    );
    if cached > 0 {
        out.insert("cache_read_input_tokens".into(), cached.into());
    }
    Value::Object(out)
}

/// The text of a `reasoning_content` (vLLM, DeepSeek) or `reasoning` (OpenRouter,
/// Ollama) member.
pub fn reasoning_text(message: &Value) -> Option<&str> {
    ["reasoning_content", "reasoning"]
        .iter()
        .find_map(|k| message.get(*k).and_then(Value::as_str))
        .filter(|t| !t.is_empty())
}

/// Tool call arguments (a JSON text) as the `input` object of a `tool_use` block.
pub fn tool_input(arguments: &str, connection: &str) -> Result<Value, ApiError> {
    if arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(value @ Value::Object(_)) => Ok(value),
        _ => Err(ApiError::upstream_failure(format!(
            "connection '{connection}': a tool call's arguments are not a JSON object"
        ))),
    }
}

/// A `chat.completion` → a Messages API `message` (its first choice).
pub fn message(completion: &Value, model: &str, connection: &str) -> Result<Value, ApiError> {
    let choice = completion
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| {
            ApiError::upstream_failure(format!(
                "connection '{connection}': the answer has no choices"
            ))
        })?;
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    if let Some(thinking) = reasoning_text(message) {
        content.push(json!({"type": "thinking", "thinking": thinking, "signature": ""}));
    }
    if let Some(text) = message.get("content").and_then(Value::as_str) {
        if !text.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
    }
    if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
        content.push(json!({"type": "text", "text": refusal}));
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let function = call.get("function").unwrap_or(&Value::Null);
        let arguments = function
            .get("arguments")
            .and_then(Value::as_str)
            .unwrap_or("");
        content.push(json!({
            "type": "tool_use",
            "id": call.get("id").and_then(Value::as_str).map(str::to_owned)
                .unwrap_or_else(|| crate::context::random_id("toolu_")),
            "name": function.get("name").and_then(Value::as_str).unwrap_or_default(),
            "input": tool_input(arguments, connection)?,
        }));
    }
    let finish = choice.get("finish_reason").and_then(Value::as_str);
    let stop = if message.get("refusal").and_then(Value::as_str).is_some() {
        "refusal"
    } else {
        stop_reason(finish)
    };
    Ok(json!({
        "id": message_id(completion.get("id").and_then(Value::as_str)),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model").and_then(Value::as_str).unwrap_or(model),
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": usage(completion.get("usage")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completion_becomes_a_message() {
        let completion = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "up-1",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Let me look.", "reasoning_content": "think",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get", "arguments": "{\"q\": 1}"}}],
            }}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 3}},
        });
        let message = message(&completion, "m", "c").unwrap();
        assert_eq!(
            message,
            json!({
                "id": "msg_chatcmpl-1", "type": "message", "role": "assistant", "model": "up-1",
                "content": [
                    {"type": "thinking", "thinking": "think", "signature": ""},
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "call_1", "name": "get", "input": {"q": 1}},
                ],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 7, "output_tokens": 4, "cache_read_input_tokens": 3},
            })
        );
        for (finish, stop) in [
            (Some("stop"), "end_turn"),
            (Some("length"), "max_tokens"),
            (Some("content_filter"), "refusal"),
            (None, "end_turn"),
        ] {
            assert_eq!(stop_reason(finish), stop);
        }
        let bad = json!({"choices": [{"message": {"tool_calls": [{"function": {"name": "f", "arguments": "[1"}}]}}]});
        assert_eq!(super::message(&bad, "m", "c").unwrap_err().status(), 502);
    }
}
