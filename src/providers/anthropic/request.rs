//! OpenAI chat request → Anthropic Messages request (reference §2.9).
//!
//! Pure functions: the OpenAI fields in, the Anthropic body out, or a 400 in the
//! OpenAI envelope naming the offending field. This file assembles the body and
//! maps the scalar fields; `messages.rs` and `tools.rs` do the rest. Nothing here
//! does I/O, so every rule is unit-tested below (through `translate`).

use serde_json::{json, Map, Value};

use super::messages::{convert_messages, type_is, Role};
use super::tools::{convert_tool_choice, convert_tools, json_tool};
use crate::error::ApiError;

/// The forced tool that carries a `response_format` answer (the "tool trick").
pub const JSON_TOOL_NAME: &str = "json_tool_call";

/// Placeholder tool sent when the history holds tool calls but the client sent no
/// `tools`: Anthropic refuses `tool_use`/`tool_result` blocks without a tool list.
const PLACEHOLDER_TOOL_NAME: &str = "no_tools_available";

/// Request fields this translation reads; every other field is dropped (logged at
/// debug level), because Anthropic rejects unknown fields.
const USED_FIELDS: [&str; 17] = [
    "reasoning_effort",
    "thinking",
    "messages",
    "stream",
    "stream_options",
    "n",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "user",
];

/// How a `response_format` answer comes back: the forced tool's input becomes the
/// message content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonMode {
    /// The schema was not an object, so it went upstream as
    /// `{"type":"object","properties":{"values": schema}}`; the answer is unwrapped.
    pub wrapped: bool,
}

/// The Anthropic request body (without `stream`) and what the answer needs to know.
#[derive(Debug, Clone)]
pub struct Translated {
    pub body: Map<String, Value>,
    pub json_mode: Option<JsonMode>,
}

/// Translate OpenAI request fields into an Anthropic Messages body for `model`.
/// `default_max_tokens` applies when the client sends neither `max_tokens` nor
/// `max_completion_tokens`.
pub fn translate(
    model: &str,
    params: &Map<String, Value>,
    default_max_tokens: u64,
) -> Result<Translated, ApiError> {
    let messages = match params.get("messages") {
        Some(Value::Array(list)) => list.as_slice(),
        _ => {
            return Err(ApiError::invalid_param(
                "messages",
                "`messages` must be a list of messages",
            ))
        }
    };
    let (system, turns) = convert_messages(messages)?;
    let history_has_tools = turns.iter().any(|t| {
        t.blocks.iter().any(|b| {
            matches!(
                b.get("type").and_then(Value::as_str),
                Some("tool_use" | "tool_result")
            )
        })
    });

    let mut tools = match params.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => convert_tools(value)?,
    };
    let client_tool_choice = match params.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(value) => Some(convert_tool_choice(value)?),
    };
    let parallel = match params.get("parallel_tool_calls") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "parallel_tool_calls",
                "`parallel_tool_calls` must be a boolean",
            ))
        }
    };
    let json = match params.get("response_format") {
        None | Some(Value::Null) => None,
        Some(value) => json_tool(value)?,
    };

    // Tools and tool_choice together, with the JSON tool and the placeholder.
    let client_has_tools = !tools.is_empty();
    let mut tool_choice: Option<Map<String, Value>> = None;
    let mut json_mode = None;
    if let Some((tool, mode)) = json {
        tools.push(tool);
        json_mode = Some(mode);
        let forced = || {
            Map::from_iter([
                ("type".to_owned(), json!("tool")),
                ("name".to_owned(), json!(JSON_TOOL_NAME)),
            ])
        };
        tool_choice = Some(match client_tool_choice {
            // The client named one of its tools: honour it; it will answer in JSON later.
            Some(choice)
                if client_has_tools
                    && choice.get("type").and_then(Value::as_str) == Some("tool") =>
            {
                choice
            }
            // With tools of its own, the model must call one of them or the JSON tool.
            Some(choice)
                if client_has_tools
                    && choice.get("type").and_then(Value::as_str) != Some("none") =>
            {
                Map::from_iter([("type".to_owned(), json!("any"))])
            }
            None if client_has_tools => Map::from_iter([("type".to_owned(), json!("any"))]),
            _ => forced(),
        });
    } else if client_has_tools {
        tool_choice = client_tool_choice;
    } else if history_has_tools {
        tools.push(placeholder_tool());
        tool_choice = Some(Map::from_iter([("type".to_owned(), json!("none"))]));
    }
    // `tool_choice` without tools is meaningless (and rejected upstream): dropped.
    if !parallel && !tools.is_empty() {
        let choice =
            tool_choice.get_or_insert_with(|| Map::from_iter([("type".to_owned(), json!("auto"))]));
        if choice.get("type").and_then(Value::as_str) != Some("none") {
            choice.insert("disable_parallel_tool_use".into(), Value::Bool(true));
        }
    }

    let client_max = max_tokens(params)?;
    let mut thinking = thinking(params, client_max)?;
    if thinking.is_some() {
        let forced = tool_choice
            .as_ref()
            .and_then(|c| c.get("type"))
            .and_then(Value::as_str)
            .is_some_and(|t| t == "any" || t == "tool");
        // Anthropic refuses thinking with a forced tool (also how `response_format`
        // is answered), and a tool-use loop whose last assistant turn lost its
        // signed thinking: the request is served without thinking rather than refused.
        let unsigned_loop = turns
            .iter()
            .rev()
            .find(|t| t.role == Role::Assistant)
            .is_some_and(|t| {
                t.blocks.iter().any(|b| type_is(b, "tool_use"))
                    && !t
                        .blocks
                        .first()
                        .is_some_and(|b| type_is(b, "thinking") || type_is(b, "redacted_thinking"))
            });
        if forced || unsigned_loop {
            tracing::debug!(
                forced,
                unsigned_loop,
                "thinking left out: Anthropic refuses it with this request"
            );
            thinking = None;
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), Value::String(model.to_owned()));
    let max = match (&thinking, client_max) {
        (_, Some(max)) => max,
        // The budget is part of `max_tokens`: the default answer length comes on top.
        (Some(t), None) => default_max_tokens.saturating_add(t.budget),
        (None, None) => default_max_tokens,
    };
    body.insert("max_tokens".into(), max.into());
    if !system.is_empty() {
        body.insert("system".into(), Value::Array(system));
    }
    body.insert(
        "messages".into(),
        Value::Array(
            turns
                .into_iter()
                .map(|t| json!({"role": t.role.as_str(), "content": t.blocks}))
                .collect(),
        ),
    );
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = tool_choice {
            body.insert("tool_choice".into(), Value::Object(choice));
        }
    }
    if let Some(stop) = stop_sequences(params.get("stop"))? {
        body.insert("stop_sequences".into(), stop);
    }
    let temperature = number(params, "temperature")?;
    let top_p = number(params, "top_p")?;
    if let Some(t) = &thinking {
        // With thinking Anthropic takes no temperature or top_k, and top_p only from
        // 0.95: the sampling settings give way to the reasoning the client asked for.
        body.insert("thinking".into(), t.value.clone());
        if let Some(p) = top_p.filter(|p| *p >= 0.95) {
            body.insert("top_p".into(), json_f64(p));
        }
    } else if let Some(t) = temperature {
        // Anthropic accepts 0..1 where OpenAI takes 0..2: clamped, not rejected, so
        // clients tuned for OpenAI keep working.
        body.insert("temperature".into(), json_f64(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = top_p {
        // Recent Claude models reject `temperature` and `top_p` together; the
        // temperature wins (reference §5.12).
        if temperature.is_none() && thinking.is_none() {
            body.insert("top_p".into(), json_f64(p));
        }
    }
    match params.get("top_k") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_u64().is_some() => {
            if thinking.is_none() {
                body.insert("top_k".into(), v.clone());
            }
        }
        Some(_) => {
            return Err(ApiError::invalid_param(
                "top_k",
                "`top_k` must be a non-negative integer",
            ))
        }
    }
    match params.get("user") {
        None | Some(Value::Null) => {}
        Some(Value::String(user)) => {
            // Anthropic rejects ids that look like e-mail addresses or phone numbers.
            if !user.is_empty() && !looks_personal(user) {
                body.insert("metadata".into(), json!({"user_id": user}));
            }
        }
        Some(_) => return Err(ApiError::invalid_param("user", "`user` must be a string")),
    }
    let dropped: Vec<&str> = params
        .keys()
        .map(String::as_str)
        .filter(|k| !USED_FIELDS.contains(k))
        .collect();
    if !dropped.is_empty() {
        tracing::debug!(fields = ?dropped, "request fields Anthropic has no equivalent for are dropped");
    }
    Ok(Translated { body, json_mode })
}

/// The tool sent when the conversation has tool calls and the client no tools
/// (Anthropic refuses tool blocks without a tool list): never to be called.
pub fn placeholder_tool() -> Value {
    json!({
        "name": PLACEHOLDER_TOOL_NAME,
        "description": "Placeholder so that earlier tool calls can be replayed; never call it.",
        "input_schema": {"type": "object", "properties": {}},
    })
}

/// [`translate`]'s body with `stream` set, as the bytes sent upstream.
pub fn serialized(
    model: &str,
    params: &Map<String, Value>,
    default_max_tokens: u64,
    stream: bool,
) -> Result<(bytes::Bytes, Translated), ApiError> {
    let mut translated = translate(model, params, default_max_tokens)?;
    if stream {
        translated.body.insert("stream".into(), Value::Bool(true));
    }
    let bytes = serde_json::to_vec(&translated.body).map_err(|e| {
        ApiError::internal(format!("could not serialize the Anthropic request: {e}"))
    })?;
    Ok((bytes::Bytes::from(bytes), translated))
}

/// `reasoning_effort` → Anthropic's `budget_tokens` (the inverse of the Anthropic
/// door's mapping: below 4096 is `low`, below 16384 `medium`).
pub const THINKING_BUDGETS: [(&str, u64); 5] = [
    ("minimal", 1024),
    ("low", 2048),
    ("medium", 8192),
    ("high", 24576),
    ("xhigh", 32768),
];
/// Anthropic's smallest thinking budget.
const MIN_THINKING_BUDGET: u64 = 1024;

/// The `thinking` setting of a request and its budget.
struct Thinking {
    value: Value,
    budget: u64,
}

/// The client's own Anthropic `thinking` object, or one made from
/// `reasoning_effort`; `none` (or neither) is no thinking. The budget must stay
/// below `max_tokens`: it is lowered to fit, and a `max_tokens` too small to
/// think at all is a 400.
fn thinking(params: &Map<String, Value>, max: Option<u64>) -> Result<Option<Thinking>, ApiError> {
    if let Some(value) = params.get("thinking").filter(|v| !v.is_null()) {
        if !value.is_object() {
            return Err(ApiError::invalid_param(
                "thinking",
                "`thinking` must be an object such as {\"type\": \"enabled\", \"budget_tokens\": 2048}",
            ));
        }
        if value.get("type").and_then(Value::as_str) == Some("disabled") {
            return Ok(None);
        }
        let budget = value
            .get("budget_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        return Ok(Some(Thinking {
            value: value.clone(),
            budget,
        }));
    }
    let effort = match params.get("reasoning_effort") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(effort)) => effort.as_str(),
        Some(_) => {
            return Err(ApiError::invalid_param(
                "reasoning_effort",
                "`reasoning_effort` must be a string",
            ))
        }
    };
    if effort == "none" {
        return Ok(None);
    }
    let Some(mut budget) = THINKING_BUDGETS
        .iter()
        .find(|(name, _)| *name == effort)
        .map(|(_, b)| *b)
    else {
        return Err(ApiError::invalid_param(
            "reasoning_effort",
            format!("unknown `reasoning_effort` '{effort}' (expected none, minimal, low, medium, high or xhigh)"),
        ));
    };
    if let Some(max) = max {
        if max <= MIN_THINKING_BUDGET {
            return Err(ApiError::invalid_param(
                "reasoning_effort",
                format!("`reasoning_effort` needs `max_tokens` above {MIN_THINKING_BUDGET} on Anthropic models (thinking counts towards it)"),
            ));
        }
        budget = budget.min(max - 1);
    }
    Ok(Some(Thinking {
        value: json!({"type": "enabled", "budget_tokens": budget}),
        budget,
    }))
}

pub(super) fn json_f64(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// A finite number field, or `None` when absent/null.
fn number(params: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| ApiError::invalid_param(key, format!("`{key}` must be a number"))),
    }
}

/// `max_completion_tokens` (the current OpenAI name) or else `max_tokens`.
fn max_tokens(params: &Map<String, Value>) -> Result<Option<u64>, ApiError> {
    for key in ["max_completion_tokens", "max_tokens"] {
        match params.get(key) {
            None | Some(Value::Null) => continue,
            Some(v) => {
                return match v.as_u64().filter(|n| *n >= 1) {
                    Some(n) => Ok(Some(n)),
                    None => Err(ApiError::invalid_param(
                        key,
                        format!("`{key}` must be a positive integer"),
                    )),
                }
            }
        }
    }
    Ok(None)
}

/// `stop` (string or list) → `stop_sequences`, whitespace-only entries dropped
/// (Anthropic rejects them); `None` when nothing is left.
fn stop_sequences(stop: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let bad = || ApiError::invalid_param("stop", "`stop` must be a string or a list of strings");
    let list: Vec<&str> = match stop {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().ok_or_else(bad))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad()),
    };
    let kept: Vec<Value> = list
        .into_iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| Value::String(s.to_owned()))
        .collect();
    Ok((!kept.is_empty()).then_some(Value::Array(kept)))
}

/// An e-mail address or a phone number (which Anthropic refuses as `user_id`).
pub(super) fn looks_personal(user: &str) -> bool {
    if user.contains('@') {
        return true;
    }
    let digits = user.chars().filter(char::is_ascii_digit).count();
    digits >= 7
        && user
            .chars()
            .all(|c| c.is_ascii_digit() || " +-().".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn params(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("object expected"),
        }
    }

    fn tr(v: Value) -> Map<String, Value> {
        translate("claude-x", &params(v), 4096).unwrap().body
    }

    fn err(v: Value) -> Value {
        let e = translate("claude-x", &params(v), 4096).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        e.error_object()
    }

    #[test]
    fn minimal_request_gets_default_max_tokens() {
        let body = tr(json!({"messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(
            Value::Object(body),
            json!({"model": "claude-x", "max_tokens": 4096,
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
        );
        let body = tr(
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "max_completion_tokens": 20}),
        );
        assert_eq!(body["max_tokens"], 20);
        let body = tr(json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}));
        assert_eq!(body["max_tokens"], 10);
        assert_eq!(
            err(json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}))["param"],
            "max_tokens"
        );
    }

    #[test]
    fn system_messages_are_hoisted_and_users_merged() {
        let body = tr(json!({"messages": [
            {"role": "system", "content": "one"},
            {"role": "user", "content": "a"},
            {"role": "developer", "content": [{"type": "text", "text": "two"}]},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "c"},
            {"role": "assistant", "content": "d"},
            {"role": "user", "content": ""},
            {"role": "system", "content": "three"},
        ]}));
        assert_eq!(
            body["system"],
            json!([{"type": "text", "text": "one"}, {"type": "text", "text": "two"}, {"type": "text", "text": "three"}])
        );
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "c"}, {"type": "text", "text": "d"}]},
            ])
        );
    }

    #[test]
    fn tool_round_trip_matches_the_worked_example() {
        let body = tr(json!({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Oslo and Bergen?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
                {"id": "call.b", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": "call_a", "content": "3°C"},
            {"role": "tool", "tool_call_id": "call.b", "content": [{"type": "text", "text": "7°C, rain"}]},
            {"role": "user", "content": "thanks"},
            {"role": "system", "content": "Answer in French."}
        ]}));
        assert_eq!(
            body["system"],
            json!([{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Answer in French."}])
        );
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo and Bergen?"}]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Oslo"}},
                    {"type": "tool_use", "id": "call_b", "name": "get_weather", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_a", "content": "3°C"},
                    {"type": "tool_result", "tool_use_id": "call_b", "content": [{"type": "text", "text": "7°C, rain"}]},
                    {"type": "text", "text": "thanks"}]},
            ])
        );
        // History with tool calls but no tools: a placeholder tool that cannot be chosen.
        assert_eq!(body["tools"][0]["name"], PLACEHOLDER_TOOL_NAME);
        assert_eq!(body["tool_choice"], json!({"type": "none"}));
    }

    #[test]
    fn invalid_tool_arguments_are_400() {
        let call = |args: &str| {
            json!({"messages": [{"role": "user", "content": "x"},
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": args}}]}]})
        };
        let e = err(call("{not json"));
        assert_eq!(e["param"], "messages[1].tool_calls[0].function.arguments");
        assert_eq!(e["code"], "invalid_value");
        err(call("[1, 2]"));
    }

    #[test]
    fn missing_tool_results_and_leading_assistant_are_repaired() {
        let body = tr(json!({"messages": [
            {"role": "assistant", "content": "Hello! "},
            {"role": "user", "content": "go"},
            {"role": "assistant", "tool_calls": [
                {"id": "a", "function": {"name": "f", "arguments": "{}"}},
                {"id": "b", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "a", "content": "ok"},
            {"role": "assistant", "content": "Sure.  \n"},
        ], "tools": [{"type": "function", "function": {"name": "f"}}]}));
        let m = body["messages"].as_array().unwrap();
        assert_eq!(
            m[0],
            json!({"role": "user", "content": [{"type": "text", "text": "."}]})
        );
        assert_eq!(
            m[1]["content"][0]["text"], "Hello! ",
            "only the final prefill is trimmed"
        );
        assert_eq!(m[4]["content"][1]["tool_use_id"], "b");
        assert_eq!(m[4]["content"][1]["is_error"], true);
        assert_eq!(m[5]["content"], json!([{"type": "text", "text": "Sure."}]));
        assert_eq!(
            body["tools"][0]["input_schema"],
            json!({"type": "object", "properties": {}})
        );
    }

    #[test]
    fn images_and_files() {
        let body = tr(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "data:image/jpg;base64,QUJD", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"}},
        ]}]}));
        assert_eq!(
            body["messages"][0]["content"],
            json!([
                {"type": "text", "text": "look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
            ])
        );
        for url in [
            "data:image/bmp;base64,QUJD",
            "data:image/png,QUJD",
            "ftp://x/y.png",
            "",
        ] {
            let e = err(
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}),
            );
            assert_eq!(e["param"], "messages[0].content[0].image_url.url", "{url}");
        }
        err(
            json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}]}]}),
        );
    }

    #[test]
    fn tools_choice_and_parallel() {
        let base = |choice: Value, parallel: Value| {
            tr(json!({"messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"properties": {"a": {"type": "string"}}}}}],
                "tool_choice": choice, "parallel_tool_calls": parallel}))
        };
        let body = base(Value::Null, Value::Null);
        assert_eq!(
            body["tools"],
            json!([{"name": "f", "description": "d", "input_schema": {"properties": {"a": {"type": "string"}}, "type": "object"}}])
        );
        assert!(body.get("tool_choice").is_none());
        assert_eq!(
            base(json!("auto"), Value::Null)["tool_choice"],
            json!({"type": "auto"})
        );
        assert_eq!(
            base(json!("none"), json!(false))["tool_choice"],
            json!({"type": "none"})
        );
        assert_eq!(
            base(json!("required"), Value::Null)["tool_choice"],
            json!({"type": "any"})
        );
        assert_eq!(
            base(
                json!({"type": "function", "function": {"name": "f"}}),
                json!(false)
            )["tool_choice"],
            json!({"type": "tool", "name": "f", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            base(Value::Null, json!(false))["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        err(
            json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": "sometimes", "tools": []}),
        );
    }

    #[test]
    fn sampling_stop_user_and_dropped_fields() {
        let body = tr(json!({"messages": [{"role": "user", "content": "x"}],
            "temperature": 1.7, "top_p": 0.5, "top_k": 5, "stop": ["END", "  ", "\n\n", "STOP"],
            "user": "user-42", "seed": 1, "logit_bias": {"1": 2}, "presence_penalty": 1, "logprobs": true}));
        assert_eq!(
            Value::Object(body),
            json!({"model": "claude-x", "max_tokens": 4096,
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
                   "stop_sequences": ["END", "STOP"], "temperature": 1.0, "top_k": 5,
                   "metadata": {"user_id": "user-42"}})
        );
        let body = tr(
            json!({"messages": [{"role": "user", "content": "x"}], "top_p": 0.5, "stop": "###", "user": "a@b.com"}),
        );
        assert_eq!(body["top_p"], 0.5);
        assert_eq!(body["stop_sequences"], json!(["###"]));
        assert!(body.get("metadata").is_none());
        let body = tr(
            json!({"messages": [{"role": "user", "content": "x"}], "stop": " ", "user": "+47 123 45 678"}),
        );
        assert!(body.get("stop_sequences").is_none());
        assert!(body.get("metadata").is_none());
        assert_eq!(
            err(json!({"messages": [{"role": "user", "content": "x"}], "stop": [1]}))["param"],
            "stop"
        );
        assert_eq!(
            err(json!({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}))
                ["param"],
            "temperature"
        );
    }

    #[test]
    fn response_format_becomes_a_forced_tool() {
        let t = translate(
            "m",
            &params(json!({"messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": {"type": "object", "properties": {"name": {"type": "string"}}}}}})),
            100,
        )
        .unwrap();
        assert_eq!(t.json_mode, Some(JsonMode { wrapped: false }));
        assert_eq!(t.body["tools"][0]["name"], JSON_TOOL_NAME);
        assert_eq!(
            t.body["tools"][0]["input_schema"]["properties"]["name"]["type"],
            "string"
        );
        assert_eq!(
            t.body["tool_choice"],
            json!({"type": "tool", "name": JSON_TOOL_NAME})
        );

        let t = translate(
            "m",
            &params(json!({"messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "list", "schema": {"type": "array", "items": {"$ref": "#/$defs/x"}, "$defs": {"x": {"type": "string"}}}}}})),
            100,
        )
        .unwrap();
        assert_eq!(t.json_mode, Some(JsonMode { wrapped: true }));
        assert_eq!(
            t.body["tools"][0]["input_schema"],
            json!({"type": "object", "$defs": {"x": {"type": "string"}},
                   "properties": {"values": {"type": "array", "items": {"$ref": "#/$defs/x"}}}, "required": ["values"]})
        );

        // With the client's own tools, the model must call one of them or answer.
        let t = translate(
            "m",
            &params(json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"},
                "tools": [{"type": "function", "function": {"name": "f"}}]})),
            100,
        )
        .unwrap();
        assert_eq!(t.body["tools"].as_array().unwrap().len(), 2);
        assert_eq!(t.body["tool_choice"], json!({"type": "any"}));
        assert!(translate("m", &params(json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "text"}})), 1)
            .unwrap()
            .json_mode
            .is_none());
        err(
            json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "yaml"}}),
        );
    }

    #[test]
    fn reasoning_effort_becomes_a_thinking_budget() {
        let ask = |extra: Value| {
            let mut p = json!({"messages": [{"role": "user", "content": "x"}]});
            for (k, v) in extra.as_object().unwrap() {
                p[k] = v.clone();
            }
            p
        };
        let body = tr(ask(
            json!({"reasoning_effort": "medium", "temperature": 0.2, "top_k": 3, "top_p": 0.97}),
        ));
        assert_eq!(
            body["thinking"],
            json!({"type": "enabled", "budget_tokens": 8192})
        );
        assert_eq!(
            body["max_tokens"],
            4096 + 8192,
            "the default answer length on top of the budget"
        );
        assert!(body.get("temperature").is_none() && body.get("top_k").is_none());
        assert_eq!(body["top_p"], 0.97);
        let body = tr(ask(
            json!({"reasoning_effort": "high", "max_completion_tokens": 3000}),
        ));
        assert_eq!(
            body["thinking"]["budget_tokens"], 2999,
            "lowered below max_tokens"
        );
        assert_eq!(body["max_tokens"], 3000);
        for effort in [json!("none"), Value::Null] {
            let body = tr(ask(json!({"reasoning_effort": effort, "temperature": 0.5})));
            assert!(body.get("thinking").is_none());
            assert_eq!(body["temperature"], 0.5);
        }
        assert_eq!(
            err(ask(json!({"reasoning_effort": "extreme"})))["param"],
            "reasoning_effort"
        );
        assert_eq!(
            err(ask(json!({"reasoning_effort": "low", "max_tokens": 1000})))["param"],
            "reasoning_effort"
        );
        // The client's own Anthropic setting wins.
        let body = tr(ask(
            json!({"thinking": {"type": "enabled", "budget_tokens": 1500}, "reasoning_effort": "high"}),
        ));
        assert_eq!(
            body["thinking"],
            json!({"type": "enabled", "budget_tokens": 1500})
        );
        // A forced tool (here the JSON answer) cannot think.
        let body = tr(ask(
            json!({"reasoning_effort": "low", "response_format": {"type": "json_object"}}),
        ));
        assert!(body.get("thinking").is_none());
        assert_eq!(body["max_tokens"], 4096);
    }

    #[test]
    fn signed_thinking_goes_back_on_its_turn() {
        let history = |assistant: Value| {
            json!({"reasoning_effort": "low", "messages": [
                {"role": "user", "content": "weather?"},
                assistant,
                {"role": "tool", "tool_call_id": "toolu_req_1", "content": "3°C"},
            ], "tools": [{"type": "function", "function": {"name": "w"}}]})
        };
        let call = json!([{"id": "toolu_req_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]);
        // Carried by the client in `thinking_blocks` (unsigned ones are left out).
        let body = tr(history(
            json!({"role": "assistant", "content": "Checking.", "tool_calls": call,
            "thinking_blocks": [{"type": "thinking", "thinking": "t", "signature": "sig-1"}, {"type": "thinking", "thinking": "u"}]}),
        ));
        assert_eq!(
            body["messages"][1]["content"][0],
            json!({"type": "thinking", "thinking": "t", "signature": "sig-1"})
        );
        assert_eq!(body["messages"][1]["content"][1]["type"], "text");
        assert_eq!(body["thinking"]["budget_tokens"], 2048);
        // Not carried and not kept: the turn goes without it, and so does thinking.
        let body = tr(history(
            json!({"role": "assistant", "reasoning_content": "never seen", "tool_calls": call}),
        ));
        assert_eq!(body["messages"][1]["content"][0]["type"], "tool_use");
        assert!(body.get("thinking").is_none());
        // Kept server-side for its tool call.
        super::super::thinking::remember(
            vec![json!({"type": "thinking", "thinking": "kept", "signature": "sig-kept"})],
            ["toolu_req_1"],
        );
        let body = tr(history(json!({"role": "assistant", "tool_calls": call})));
        assert_eq!(body["messages"][1]["content"][0]["signature"], "sig-kept");
        assert_eq!(body["thinking"]["budget_tokens"], 2048);
        assert_eq!(
            err(history(
                json!({"role": "assistant", "content": "x", "thinking_blocks": "sig"})
            ))["param"],
            "messages[1].thinking_blocks"
        );
    }

    #[test]
    fn bad_messages_are_400() {
        err(json!({"messages": [{"role": "system", "content": "only system"}]}));
        err(json!({"messages": [{"role": "wizard", "content": "x"}]}));
        err(json!({"messages": [{"role": "user", "content": 5}]}));
        err(json!({"messages": [{"role": "tool", "content": "x"}]}));
        err(
            json!({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x"}}]}, {"role": "user", "content": "x"}]}),
        );
    }
}
