//! The Anthropic door's request: its checks (every door checks its own shape
//! before routing), and its translation into the canonical request (the
//! chat-completions shape every provider takes) for connections that do not speak
//! the Messages API themselves.
//!
//! What has no equivalent in the canonical request is a 400 naming the field, never
//! dropped quietly. Two things are left out on purpose, as Anthropic itself treats
//! them: `cache_control` (a caching hint; the answer is the same without it) and
//! the `thinking` blocks of earlier assistant turns (Anthropic strips them from the
//! context too).

use serde_json::{json, Map, Value};

use crate::error::ApiError;

fn type_name(value: &Value) -> &'static str {
    crate::config::json_type(value)
}

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_param(param, message)
}

/// Check the members of a Messages API body that the gateway reads or that every
/// upstream requires, and the types of the optional ones. `count_tokens` bodies
/// have no `max_tokens`.
pub fn validate(request: &Map<String, Value>, count_tokens: bool) -> Result<(), ApiError> {
    match request.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => {}
        Some(Value::String(_)) => return Err(bad("model", "`model` must not be empty.")),
        None => return Err(bad("model", "`model` is required.")),
        Some(other) => {
            return Err(bad(
                "model",
                format!("`model` must be a string, not {}.", type_name(other)),
            ))
        }
    }
    if !count_tokens {
        match request.get("max_tokens") {
            Some(v) if v.as_u64().is_some_and(|n| n >= 1) => {}
            None => return Err(bad("max_tokens", "`max_tokens` is required.")),
            Some(_) => {
                return Err(bad(
                    "max_tokens",
                    "`max_tokens` must be a positive integer.",
                ))
            }
        }
    }
    let Some(messages) = request.get("messages") else {
        return Err(bad("messages", "`messages` is required."));
    };
    let Value::Array(messages) = messages else {
        return Err(bad(
            "messages",
            format!("`messages` must be a list, not {}.", type_name(messages)),
        ));
    };
    if messages.is_empty() {
        return Err(bad("messages", "`messages` must not be empty."));
    }
    for (i, message) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let Value::Object(message) = message else {
            return Err(bad(&at, format!("{at} must be an object.")));
        };
        match message.get("role").and_then(Value::as_str) {
            Some("user" | "assistant") => {}
            _ => {
                return Err(bad(
                    &format!("{at}.role"),
                    format!("{at}.role must be \"user\" or \"assistant\"."),
                ))
            }
        }
        match message.get("content") {
            Some(Value::String(_)) => {}
            Some(Value::Array(blocks)) => {
                for (j, block) in blocks.iter().enumerate() {
                    if block.get("type").and_then(Value::as_str).is_none() {
                        let at = format!("{at}.content[{j}]");
                        return Err(bad(
                            &at,
                            format!("{at} must be an object with a string `type`."),
                        ));
                    }
                }
            }
            _ => {
                return Err(bad(
                    &format!("{at}.content"),
                    format!("{at}.content must be a string or a list of content blocks."),
                ))
            }
        }
    }
    for (key, value) in request {
        let ok = match key.as_str() {
            "stream" => value.is_boolean(),
            "system" => value.is_string() || value.is_array(),
            "temperature" | "top_p" => value.is_number(),
            "top_k" => value.is_u64(),
            "stop_sequences" => value
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_string)),
            "tools" => value
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_object)),
            "tool_choice" | "metadata" | "thinking" => value.is_object(),
            _ => true,
        };
        if !ok {
            return Err(bad(
                key,
                format!("`{key}` has the wrong type ({}).", type_name(value)),
            ));
        }
    }
    if let Some(choice) = request.get("tool_choice") {
        if choice.get("type").and_then(Value::as_str).is_none() {
            return Err(bad("tool_choice", "`tool_choice` needs a string `type`."));
        }
    }
    Ok(())
}

/// The canonical request (chat-completions fields, `model` excluded) for an
/// Anthropic request's `messages` and other members (`params`, as the handlers
/// left them).
pub fn to_canonical(
    messages: &Value,
    params: Map<String, Value>,
) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    let mut chat = Vec::new();
    if let Some(system) = params.get("system") {
        let text = system_text(system)?;
        if !text.is_empty() {
            chat.push(json!({"role": "system", "content": text}));
        }
    }
    for (i, message) in messages
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        convert_message(message, i, &mut chat)?;
    }
    out.insert("messages".into(), Value::Array(chat));
    for (key, value) in params {
        match key.as_str() {
            "system" => {}
            "max_tokens" | "temperature" | "top_p" | "top_k" | "stream" => {
                out.insert(key, value);
            }
            "stop_sequences" => {
                out.insert("stop".into(), value);
            }
            "metadata" => {
                if let Some(user) = value.get("user_id").filter(|u| !u.is_null()) {
                    out.insert("user".into(), user.clone());
                }
            }
            "tools" => {
                let tools = tools(value)?;
                if !tools.is_empty() {
                    out.insert("tools".into(), Value::Array(tools));
                }
            }
            "tool_choice" => tool_choice(&value, &mut out)?,
            "thinking" => thinking(&value, &mut out)?,
            other => {
                return Err(bad(
                    other,
                    format!(
                        "`{other}` cannot be passed on to this connection (it does not speak \
                         the Anthropic Messages API, and `{other}` has no equivalent in its request)"
                    ),
                ))
            }
        }
    }
    if out.get("stream").and_then(Value::as_bool) == Some(true) {
        // The usage comes in the last chunk; the door reports it in `message_delta`.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(out)
}

/// `system` as one text: a string, or text blocks joined by blank lines.
fn system_text(system: &Value) -> Result<String, ApiError> {
    match system {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut parts = Vec::new();
            for (i, block) in blocks.iter().enumerate() {
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => parts.push(text_of(block, &format!("system[{i}]"))?),
                    _ => {
                        return Err(bad(
                            &format!("system[{i}].type"),
                            format!(
                                "system[{i}]: only text blocks can be passed on to this connection"
                            ),
                        ))
                    }
                }
            }
            Ok(parts.join("\n\n"))
        }
        other => Err(bad(
            "system",
            format!(
                "`system` must be a string or a list of text blocks, not {}",
                type_name(other)
            ),
        )),
    }
}

fn text_of(block: &Value, at: &str) -> Result<String, ApiError> {
    block
        .get("text")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| bad(&format!("{at}.text"), format!("{at}.text must be a string")))
}

/// One Anthropic message → chat messages (a user turn's `tool_result` blocks
/// become `tool` messages, before the rest of the turn).
fn convert_message(message: &Value, i: usize, chat: &mut Vec<Value>) -> Result<(), ApiError> {
    let at = format!("messages[{i}]");
    let role = message
        .get("role")
        .and_then(Value::as_str)
        .unwrap_or("user");
    let blocks = match message.get("content") {
        Some(Value::String(text)) => {
            chat.push(json!({"role": role, "content": text}));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(bad(
                &format!("{at}.content"),
                "content must be a string or a list",
            ))
        }
    };
    if role == "assistant" {
        let mut text = String::new();
        let mut calls = Vec::new();
        for (j, block) in blocks.iter().enumerate() {
            let at = format!("{at}.content[{j}]");
            match block.get("type").and_then(Value::as_str).unwrap_or("") {
                "text" => text.push_str(&text_of(block, &at)?),
                "tool_use" => {
                    let id = block.get("id").and_then(Value::as_str).unwrap_or_default();
                    let name = block.get("name").and_then(Value::as_str).ok_or_else(|| {
                        bad(&format!("{at}.name"), format!("{at}.name must be a string"))
                    })?;
                    let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                    calls.push(json!({
                        "id": id,
                        "type": "function",
                        "function": {"name": name, "arguments": input.to_string()},
                    }));
                }
                // Earlier turns' reasoning: Anthropic leaves it out of the context too.
                "thinking" | "redacted_thinking" => {}
                other => return Err(untranslatable(&at, other)),
            }
        }
        let mut out = Map::new();
        out.insert("role".into(), "assistant".into());
        out.insert(
            "content".into(),
            if text.is_empty() && !calls.is_empty() {
                Value::Null
            } else {
                Value::String(text)
            },
        );
        if !calls.is_empty() {
            out.insert("tool_calls".into(), Value::Array(calls));
        }
        chat.push(Value::Object(out));
        return Ok(());
    }
    let mut parts = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("{at}.content[{j}]");
        match block.get("type").and_then(Value::as_str).unwrap_or("") {
            "text" => parts.push(json!({"type": "text", "text": text_of(block, &at)?})),
            "image" => parts.push(image(block, &at)?),
            "document" => parts.push(document(block, &at)?),
            "tool_result" => chat.push(tool_result(block, &at)?),
            other => return Err(untranslatable(&at, other)),
        }
    }
    if !parts.is_empty() {
        // A single text part is sent as a plain string, which every
        // OpenAI-compatible server takes.
        let content = match parts.as_slice() {
            [only] if only["type"] == "text" => only["text"].clone(),
            _ => Value::Array(parts),
        };
        chat.push(json!({"role": "user", "content": content}));
    }
    Ok(())
}

fn untranslatable(at: &str, kind: &str) -> ApiError {
    bad(
        &format!("{at}.type"),
        format!(
            "{at}: a `{kind}` block cannot be passed on to this connection (it does not speak \
             the Anthropic Messages API and has no equivalent)"
        ),
    )
}

/// An image block → an `image_url` part (base64 as a data URL).
fn image(block: &Value, at: &str) -> Result<Value, ApiError> {
    let source = block.get("source").unwrap_or(&Value::Null);
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media = source.get("media_type").and_then(Value::as_str);
            let data = source.get("data").and_then(Value::as_str);
            match (media, data) {
                (Some(media), Some(data)) => format!("data:{media};base64,{data}"),
                _ => {
                    return Err(bad(
                        &format!("{at}.source"),
                        "a base64 image needs `media_type` and `data`",
                    ))
                }
            }
        }
        Some("url") => source
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(&format!("{at}.source.url"), "must be a string"))?
            .to_owned(),
        _ => {
            return Err(bad(
                &format!("{at}.source.type"),
                "only base64 and url image sources can be passed on to this connection",
            ))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// A document block: plain text → a text part; a base64 PDF → a `file` part.
fn document(block: &Value, at: &str) -> Result<Value, ApiError> {
    let source = block.get("source").unwrap_or(&Value::Null);
    match source.get("type").and_then(Value::as_str) {
        Some("text") => {
            let text = source
                .get("data")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(&format!("{at}.source.data"), "must be a string"))?;
            Ok(json!({"type": "text", "text": text}))
        }
        Some("base64") => {
            let media = source
                .get("media_type")
                .and_then(Value::as_str)
                .unwrap_or("");
            let data = source.get("data").and_then(Value::as_str).unwrap_or("");
            let mut file = Map::new();
            file.insert(
                "file_data".into(),
                format!("data:{media};base64,{data}").into(),
            );
            if let Some(title) = block.get("title").and_then(Value::as_str) {
                file.insert("filename".into(), title.into());
            }
            Ok(json!({"type": "file", "file": file}))
        }
        _ => Err(bad(
            &format!("{at}.source.type"),
            "only text and base64 document sources can be passed on to this connection",
        )),
    }
}

/// A `tool_result` block → a `tool` message. Errors are marked in the text, as the
/// canonical request has no flag for them.
fn tool_result(block: &Value, at: &str) -> Result<Value, ApiError> {
    let id = block
        .get("tool_use_id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(&format!("{at}.tool_use_id"), "must be a string"))?;
    let mut text = match block.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::new();
            for (k, part) in parts.iter().enumerate() {
                let at = format!("{at}.content[{k}]");
                match part.get("type").and_then(Value::as_str).unwrap_or("") {
                    "text" => texts.push(text_of(part, &at)?),
                    other => return Err(untranslatable(&at, other)),
                }
            }
            texts.join("\n")
        }
        Some(other) => {
            return Err(bad(
                &format!("{at}.content"),
                format!(
                    "must be a string or a list of blocks, not {}",
                    type_name(other)
                ),
            ))
        }
    };
    if block.get("is_error").and_then(Value::as_bool) == Some(true) {
        text = format!("Error: {text}");
    }
    Ok(json!({"role": "tool", "tool_call_id": id, "content": text}))
}

/// Client tools → function tools. Anthropic's own server and computer-use tools
/// (a `type` other than `custom`) run only on Anthropic.
fn tools(value: Value) -> Result<Vec<Value>, ApiError> {
    let Value::Array(list) = value else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, tool) in list.into_iter().enumerate() {
        let at = format!("tools[{i}]");
        if let Some(kind) = tool.get("type").and_then(Value::as_str) {
            if kind != "custom" {
                return Err(bad(
                    &format!("{at}.type"),
                    format!("{at}: the `{kind}` tool runs only on Anthropic; this connection does not speak the Messages API"),
                ));
            }
        }
        // Its members are moved into the function tool, not copied: a tool's schema
        // is often a few kilobytes, and an agent sends dozens of tools.
        let name_error = || bad(&format!("{at}.name"), format!("{at}.name must be a string"));
        let Value::Object(mut tool) = tool else {
            return Err(name_error());
        };
        let Some(Value::String(name)) = tool.remove("name") else {
            return Err(name_error());
        };
        let mut function = Map::with_capacity(3);
        function.insert("name".into(), Value::String(name));
        if let Some(description) = tool.remove("description").filter(|d| !d.is_null()) {
            function.insert("description".into(), description);
        }
        function.insert(
            "parameters".into(),
            tool.remove("input_schema")
                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        );
        let mut entry = Map::with_capacity(2);
        entry.insert("type".into(), "function".into());
        entry.insert("function".into(), Value::Object(function));
        out.push(Value::Object(entry));
    }
    Ok(out)
}

fn tool_choice(value: &Value, out: &mut Map<String, Value>) -> Result<(), ApiError> {
    let choice = match value.get("type").and_then(Value::as_str).unwrap_or("") {
        "auto" => json!("auto"),
        "any" => json!("required"),
        "none" => json!("none"),
        "tool" => {
            let name = value.get("name").and_then(Value::as_str).ok_or_else(|| {
                bad(
                    "tool_choice.name",
                    "a `tool` choice needs the tool's `name`",
                )
            })?;
            json!({"type": "function", "function": {"name": name}})
        }
        other => {
            return Err(bad(
                "tool_choice.type",
                format!("unknown tool_choice type '{other}' (auto, any, tool, none)"),
            ))
        }
    };
    out.insert("tool_choice".into(), choice);
    if value
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        == Some(true)
    {
        out.insert("parallel_tool_calls".into(), false.into());
    }
    Ok(())
}

/// Reasoning budgets below this are `low`, below [`MEDIUM_BELOW`] `medium`.
const LOW_BELOW: u64 = 4096;
const MEDIUM_BELOW: u64 = 16384;

/// The `reasoning_effort` for a thinking budget.
pub(super) fn reasoning_effort(budget: u64) -> &'static str {
    if budget < LOW_BELOW {
        "low"
    } else if budget < MEDIUM_BELOW {
        "medium"
    } else {
        "high"
    }
}

/// `thinking: {type: enabled, budget_tokens}` → `reasoning_effort`.
fn thinking(value: &Value, out: &mut Map<String, Value>) -> Result<(), ApiError> {
    match value.get("type").and_then(Value::as_str) {
        Some("disabled") => Ok(()),
        Some("enabled") => {
            let budget = value
                .get("budget_tokens")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("thinking.budget_tokens", "must be a positive integer"))?;
            out.insert("reasoning_effort".into(), reasoning_effort(budget).into());
            Ok(())
        }
        _ => Err(bad(
            "thinking.type",
            "thinking.type must be \"enabled\" or \"disabled\"",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(request: Value) -> Result<Map<String, Value>, ApiError> {
        let Value::Object(mut map) = request else {
            panic!()
        };
        map.shift_remove("model");
        let messages = map.shift_remove("messages").unwrap();
        to_canonical(&messages, map)
    }

    #[test]
    fn client_tools_become_function_tools_and_others_are_refused() {
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        let out = canonical(json!({
            "model": "m", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [
                {"name": "get_weather", "description": "The weather.", "input_schema": schema,
                 "cache_control": {"type": "ephemeral"}},
                {"type": "custom", "name": "bare", "description": null},
                {"name": "", "input_schema": null},
            ],
        }))
        .unwrap();
        assert_eq!(
            out["tools"],
            json!([
                {"type": "function", "function": {"name": "get_weather", "description": "The weather.", "parameters": schema}},
                {"type": "function", "function": {"name": "bare", "parameters": {"type": "object", "properties": {}}}},
                {"type": "function", "function": {"name": "", "parameters": null}},
            ])
        );
        // The order of members as written out: name, description, parameters.
        let first = serde_json::to_string(&out["tools"][0]["function"]).unwrap();
        assert!(
            first.starts_with(r#"{"name":"get_weather","description":"#),
            "{first}"
        );
        let refused = |tools: Value| {
            canonical(json!({"model": "m", "max_tokens": 10,
                "messages": [{"role": "user", "content": "hi"}], "tools": tools}))
            .unwrap_err()
            .to_string()
        };
        assert!(refused(json!([{"description": "no name"}])).contains("tools[0].name"));
        assert!(refused(json!([{"name": "a"}, 7])).contains("tools[1].name"));
        assert!(refused(json!([{"name": 5}])).contains("tools[0].name"));
        assert!(
            refused(json!([{"type": "web_search_20250305", "name": "web_search"}]))
                .contains("runs only on Anthropic")
        );
        // No tools at all: no member.
        let none = canonical(json!({"model": "m", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}], "tools": []}))
        .unwrap();
        assert!(!none.contains_key("tools"));
    }

    #[test]
    fn a_tool_conversation_becomes_chat_messages() {
        let out = canonical(json!({
            "model": "m", "max_tokens": 100,
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Look:"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}},
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"q": 1}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "42"}], "is_error": true},
                    {"type": "text", "text": "and?"},
                ]},
            ],
            "tools": [{"name": "get", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "stop_sequences": ["END"], "temperature": 0.2, "top_p": 0.9, "top_k": 5,
            "metadata": {"user_id": "u-1"},
            "thinking": {"type": "enabled", "budget_tokens": 5000},
            "stream": true,
        }))
        .unwrap();
        assert_eq!(
            Value::Object(out),
            json!({
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "Look:"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
                    ]},
                    {"role": "assistant", "content": "Checking.", "tool_calls": [
                        {"id": "toolu_1", "type": "function", "function": {"name": "get", "arguments": "{\"q\":1}"}},
                    ]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: 42"},
                    {"role": "user", "content": "and?"},
                ],
                "max_tokens": 100,
                "tools": [{"type": "function", "function": {"name": "get", "description": "d", "parameters": {"type": "object"}}}],
                "tool_choice": "required",
                "parallel_tool_calls": false,
                "stop": ["END"], "temperature": 0.2, "top_p": 0.9, "top_k": 5,
                "user": "u-1",
                "reasoning_effort": "medium",
                "stream": true,
                "stream_options": {"include_usage": true},
            })
        );
    }

    #[test]
    fn what_cannot_be_translated_is_a_400_naming_the_field() {
        let cases = [
            (
                json!({"messages": [{"role": "user", "content": [{"type": "search_result", "x": 1}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
                "tools[0].type",
            ),
            (
                json!({"messages": [{"role": "user", "content": "hi"}], "container": "c"}),
                "container",
            ),
            (
                json!({"messages": [{"role": "user", "content": "hi"}], "system": [{"type": "image"}]}),
                "system[0].type",
            ),
            (
                json!({"messages": [{"role": "user", "content": "hi"}], "tool_choice": {"type": "maybe"}}),
                "tool_choice.type",
            ),
        ];
        for (request, param) in cases {
            let err = canonical(request).unwrap_err();
            assert_eq!(err.status(), 400);
            assert_eq!(err.error_object()["param"], param, "{err}");
        }
    }

    #[test]
    fn bad_bodies_are_rejected_with_the_field() {
        let ok =
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
        let check = |v: Value, count: bool| {
            validate(v.as_object().unwrap(), count).map_err(|e| e.error_object()["param"].clone())
        };
        assert!(check(ok.clone(), false).is_ok());
        let mut count = ok.clone();
        count.as_object_mut().unwrap().remove("max_tokens");
        assert!(check(count.clone(), true).is_ok());
        assert_eq!(check(count, false).unwrap_err(), "max_tokens");
        for (patch, param) in [
            (json!({"model": 3}), "model"),
            (json!({"model": ""}), "model"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (json!({"max_tokens": "5"}), "max_tokens"),
            (json!({"messages": []}), "messages"),
            (json!({"messages": {}}), "messages"),
            (json!({"messages": ["hi"]}), "messages[0]"),
            (
                json!({"messages": [{"role": "system", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "user"}]}),
                "messages[0].content",
            ),
            (
                json!({"messages": [{"role": "user", "content": [1]}]}),
                "messages[0].content[0]",
            ),
            (json!({"stream": "yes"}), "stream"),
            (json!({"temperature": "hot"}), "temperature"),
            (json!({"stop_sequences": [1]}), "stop_sequences"),
            (json!({"tool_choice": {}}), "tool_choice"),
            (json!({"system": 1}), "system"),
        ] {
            let mut body = ok.clone();
            for (k, v) in patch.as_object().unwrap() {
                body[k] = v.clone();
            }
            assert_eq!(check(body, false).unwrap_err(), param, "{patch}");
        }
    }
}
