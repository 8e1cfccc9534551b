//! Shape checks of a chat-completion request body, so that malformed or hostile
//! input is answered with a 400 naming the field instead of reaching a provider (or
//! a translator) in a shape it cannot handle.
//!
//! Only fields of the OpenAI API are checked, and mostly for their JSON type;
//! ranges are enforced only where a value would be absurd for any upstream (`n`,
//! token limits). Unknown fields are not looked at: they pass through untouched.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// Most choices a single request may ask for.
pub const MAX_N: u64 = 128;
/// Largest token limit accepted (no model comes near it; larger is a mistake).
pub const MAX_TOKENS: u64 = 100_000_000;
/// Most `top_logprobs` a request may ask for.
pub const MAX_TOP_LOGPROBS: u64 = 20;
/// Longest accepted `model` name.
pub const MAX_MODEL_LEN: usize = 256;

/// The message roles accepted.
pub const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// Whether a message in this role may come without `content`: an assistant turn
/// (with tool calls) or a legacy function turn.
pub fn may_omit_content(role: &str) -> bool {
    matches!(role, "assistant" | "function")
}

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_param(param, message)
}

/// Check the whole request body (already known to be a JSON object).
pub fn validate_request(request: &Map<String, Value>) -> Result<(), ApiError> {
    match request.get("model") {
        None | Some(Value::Null) => return Err(bad("model", "you must provide a model parameter")),
        Some(Value::String(s)) if s.is_empty() => {
            return Err(bad("model", "`model` must not be empty"))
        }
        Some(Value::String(s)) if s.len() > MAX_MODEL_LEN => {
            return Err(bad(
                "model",
                format!("`model` must be at most {MAX_MODEL_LEN} characters"),
            ))
        }
        Some(Value::String(s)) if s.chars().any(char::is_control) => {
            return Err(bad("model", "`model` must not contain control characters"))
        }
        Some(Value::String(_)) => {}
        Some(_) => return Err(bad("model", "`model` must be a string")),
    }
    match request.get("messages") {
        None | Some(Value::Null) => {
            return Err(bad("messages", "you must provide a messages parameter"))
        }
        Some(Value::Array(messages)) if messages.is_empty() => {
            return Err(bad(
                "messages",
                "`messages` must contain at least one message",
            ))
        }
        Some(Value::Array(messages)) => {
            for (i, message) in messages.iter().enumerate() {
                validate_message(message, &format!("messages[{i}]"))?;
            }
        }
        Some(_) => return Err(bad("messages", "`messages` must be a list of messages")),
    }

    // The other fields in one pass over the body, rather than one hashed lookup
    // per known field (most requests carry few of them).
    for (key, value) in request {
        check_field(key, value)?;
    }
    Ok(())
}

/// The check of one optional top-level field; unknown fields pass.
fn check_field(key: &str, value: &Value) -> Result<(), ApiError> {
    if value.is_null() {
        return Ok(());
    }
    match key {
        "stream" | "logprobs" | "parallel_tool_calls" | "store" => {
            optional(key, value, Value::is_boolean, "a boolean")
        }
        "temperature" | "top_p" | "presence_penalty" | "frequency_penalty" => {
            optional(key, value, Value::is_number, "a number")
        }
        "seed" => optional(key, value, |v| v.is_i64() || v.is_u64(), "an integer"),
        "user" => optional(key, value, Value::is_string, "a string"),
        "metadata" | "logit_bias" | "stream_options" => {
            optional(key, value, Value::is_object, "an object")
        }
        "response_format" => optional(
            key,
            value,
            |v| v.get("type").is_some_and(Value::is_string),
            "an object with a string `type`",
        ),
        "n" => integer_in(key, value, 1, MAX_N),
        "max_tokens" | "max_completion_tokens" => integer_in(key, value, 1, MAX_TOKENS),
        "top_logprobs" => integer_in(key, value, 0, MAX_TOP_LOGPROBS),
        "stop" => match value {
            Value::String(_) => Ok(()),
            Value::Array(items) if items.iter().all(Value::is_string) => Ok(()),
            _ => Err(bad("stop", "`stop` must be a string or a list of strings")),
        },
        "tools" => check_tools(value),
        // The openai SDKs' `extra_headers` is sent as HTTP headers, never in the body.
        // In the body it would reach `llm_params.extra_headers`, which handlers set and
        // which becomes upstream HTTP headers: a client could set any header there
        // (`OpenAI-Project`, framing headers), past what `HTTPHeadersForwarder` allows.
        "extra_headers" => Err(bad(
            "extra_headers",
            "`extra_headers` is not a request field: send headers as HTTP headers \
             (the gateway forwards the ones its configuration allows)",
        )),
        "tool_choice" => match value {
            Value::String(_) | Value::Object(_) => Ok(()),
            _ => Err(bad(
                "tool_choice",
                "`tool_choice` must be a string or an object",
            )),
        },
        _ => Ok(()),
    }
}

fn check_tools(tools: &Value) -> Result<(), ApiError> {
    let Value::Array(tools) = tools else {
        return Err(bad("tools", "`tools` must be a list"));
    };
    for (i, tool) in tools.iter().enumerate() {
        // Named only in an error, so built only then.
        let fail = |problem: &str| {
            let param = format!("tools[{i}]");
            Err(bad(&param, format!("{param}{problem}")))
        };
        let Value::Object(tool) = tool else {
            return fail(" must be an object");
        };
        if !tool.get("type").is_some_and(Value::is_string) {
            return fail(".type must be a string");
        }
        if tool.get("type").and_then(Value::as_str) == Some("function")
            && !tool
                .get("function")
                .and_then(|f| f.get("name"))
                .is_some_and(Value::is_string)
        {
            return fail(".function.name must be a string");
        }
    }
    Ok(())
}

fn optional(
    key: &str,
    value: &Value,
    ok: impl Fn(&Value) -> bool,
    what: &str,
) -> Result<(), ApiError> {
    if ok(value) {
        Ok(())
    } else {
        Err(bad(key, format!("`{key}` must be {what}")))
    }
}

fn integer_in(key: &str, value: &Value, min: u64, max: u64) -> Result<(), ApiError> {
    match value.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(()),
        _ => Err(bad(
            key,
            format!("`{key}` must be an integer from {min} to {max}"),
        )),
    }
}

fn validate_message(message: &Value, param: &str) -> Result<(), ApiError> {
    let Value::Object(message) = message else {
        return Err(bad(
            param,
            format!("{param} must be an object with a string `role`"),
        ));
    };
    let role = match message.get("role") {
        Some(Value::String(role)) => role.as_str(),
        _ => {
            return Err(bad(
                param,
                format!("{param} must be an object with a string `role`"),
            ))
        }
    };
    if !ROLES.contains(&role) {
        return Err(bad(
            &format!("{param}.role"),
            format!("{param}.role '{role}' is not one of {}", ROLES.join(", ")),
        ));
    }
    match message.get("content") {
        None | Some(Value::Null) => {
            // Only an assistant turn (with tool calls) or a legacy function turn may
            // come without content.
            if !may_omit_content(role) {
                return Err(bad(
                    &format!("{param}.content"),
                    format!("{param}.content is required for role '{role}'"),
                ));
            }
        }
        Some(Value::String(_)) => {}
        Some(Value::Array(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                validate_part(part, &format!("{param}.content[{j}]"))?;
            }
        }
        Some(_) => {
            return Err(bad(
                &format!("{param}.content"),
                format!("{param}.content must be a string or a list of content parts"),
            ))
        }
    }
    if let Some(calls) = message.get("tool_calls").filter(|v| !v.is_null()) {
        let Value::Array(calls) = calls else {
            return Err(bad(
                &format!("{param}.tool_calls"),
                format!("{param}.tool_calls must be a list"),
            ));
        };
        for (j, call) in calls.iter().enumerate() {
            let function = call.get("function");
            let ok = call.is_object()
                && function
                    .and_then(|f| f.get("name"))
                    .is_some_and(Value::is_string)
                && function
                    .and_then(|f| f.get("arguments"))
                    .is_none_or(|a| a.is_string() || a.is_null());
            if !ok {
                let p = format!("{param}.tool_calls[{j}]");
                return Err(bad(
                    &p,
                    format!("{p} must have `function.name` and string `function.arguments`"),
                ));
            }
        }
    }
    if role == "tool" && !message.get("tool_call_id").is_some_and(Value::is_string) {
        return Err(bad(
            &format!("{param}.tool_call_id"),
            format!("{param}.tool_call_id must be a string"),
        ));
    }
    Ok(())
}

fn validate_part(part: &Value, param: &str) -> Result<(), ApiError> {
    let Some(kind) = part.get("type").and_then(Value::as_str) else {
        return Err(bad(
            param,
            format!("{param} must be an object with a string `type`"),
        ));
    };
    let ok = match kind {
        "text" => part.get("text").is_some_and(Value::is_string),
        "image_url" => part
            .get("image_url")
            .and_then(|i| i.get("url"))
            .is_some_and(|u| u.as_str().is_some_and(|s| !s.is_empty())),
        "input_audio" => part.get("input_audio").is_some_and(Value::is_object),
        "file" => part.get("file").is_some_and(Value::is_object),
        "refusal" => part.get("refusal").is_some_and(Value::is_string),
        // Newer part types pass through to the upstream, which knows them.
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(bad(
            param,
            format!("{param} is not a valid '{kind}' content part"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(v: Value) -> Result<(), ApiError> {
        validate_request(v.as_object().unwrap())
    }

    #[test]
    fn ordinary_requests_pass() {
        check(json!({"model": "m", "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "t"}, {"type": "image_url", "image_url": {"url": "data:x"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "r"}
        ], "n": 2, "max_tokens": 10, "stop": ["x"], "tools": [{"type": "function", "function": {"name": "f"}}],
           "tool_choice": "auto", "stream": false, "temperature": 0.5, "unknown_field": [1, 2]}))
        .unwrap();
    }

    #[test]
    fn absurd_values_are_rejected() {
        for (field, value) in [
            ("n", json!(0)),
            ("n", json!(100000)),
            ("n", json!("2")),
            ("max_tokens", json!(-1)),
            ("max_tokens", json!(1e20)),
            ("temperature", json!("hot")),
            ("stop", json!(5)),
            ("tools", json!({})),
            ("tools", json!([{"type": "function"}])),
            ("top_logprobs", json!(50)),
        ] {
            let mut req = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
            req[field] = value.clone();
            let err = check(req).expect_err(&format!("{field}={value}"));
            let param = err.error_object()["param"].as_str().unwrap().to_owned();
            assert!(param.starts_with(field), "{param} names {field}");
        }
    }

    #[test]
    fn bad_messages_are_rejected() {
        for message in [
            json!({"role": "wizard", "content": "x"}),
            json!({"role": "user"}),
            json!({"role": "user", "content": 5}),
            json!({"role": "user", "content": [{"text": "no type"}]}),
            json!({"role": "user", "content": [{"type": "text"}]}),
            json!({"role": "user", "content": [{"type": "image_url", "image_url": {}}]}),
            json!({"role": "tool", "content": "r"}),
            json!({"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}),
        ] {
            assert!(
                check(json!({"model": "m", "messages": [message.clone()]})).is_err(),
                "{message}"
            );
        }
    }
}
