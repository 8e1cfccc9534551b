//! The Responses door's request: its checks in OpenAI's terms (made before routing,
//! whatever the connection), and its translation into the canonical request (the
//! chat-completions shape every provider takes) for connections whose upstream does
//! not speak the Responses API.
//!
//! The translation is stateless: what needs OpenAI's server (`previous_response_id`,
//! `conversation`, stored prompts, `background`, item references, uploaded file ids,
//! built-in tools such as `web_search`) is a 400 that says so, and any other member
//! without an equivalent is a 400 naming it. Left out on purpose, as hints that do
//! not change the answer: `store` (a translated response is never stored),
//! `metadata` (echoed in the answer), `include`, `truncation`, `prompt_cache_key`,
//! `stream_options`, `reasoning.summary`, and the `reasoning` items of earlier turns
//! (their text cannot be given back to a chat upstream; OpenAI's encrypted content
//! is only readable by OpenAI).

use serde_json::{json, Map, Value};

use crate::context::member;
use crate::error::ApiError;

fn type_name(value: &Value) -> &'static str {
    crate::config::json_type(value)
}

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_param(param, message)
}

/// The 400 for what only a server that keeps state (OpenAI's Responses API) can do.
fn needs_state(param: &str, what: &str) -> ApiError {
    bad(
        param,
        format!(
            "{what} needs server-side state, which this connection does not keep: it does \
             not speak the Responses API, so the request is translated and answered \
             statelessly. Send the whole conversation in `input`, or route the model to an \
             OpenAI connection with `responses_api = true`."
        ),
    )
}

/// Check the members the gateway reads or translates, by type, for every
/// connection (a pass-through upstream would refuse the same).
pub fn validate(request: &Map<String, Value>) -> Result<(), ApiError> {
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
    if let Some(Value::Array(items)) = request.get("input") {
        for (i, item) in items.iter().enumerate() {
            if !item.is_object() {
                let at = format!("input[{i}]");
                return Err(bad(&at, format!("{at} must be an object.")));
            }
        }
    }
    for (key, value) in request {
        if value.is_null() {
            continue;
        }
        let ok = match key.as_str() {
            "input" => value.is_string() || value.is_array(),
            "stream" | "store" | "background" | "parallel_tool_calls" => value.is_boolean(),
            "instructions" | "user" | "previous_response_id" | "safety_identifier" => {
                value.is_string()
            }
            "temperature" | "top_p" => value.is_number(),
            "max_output_tokens" => value.as_u64().is_some_and(|n| n >= 1),
            "tools" => value
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_object)),
            "tool_choice" => value.is_string() || value.is_object(),
            "text" | "reasoning" | "metadata" | "stream_options" => value.is_object(),
            "include" => value
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_string)),
            _ => true,
        };
        if !ok {
            let expected = if key == "max_output_tokens" {
                "a positive integer".to_owned()
            } else {
                format!("not {}", type_name(value))
            };
            return Err(bad(
                key,
                format!("`{key}` has the wrong type ({expected})."),
            ));
        }
    }
    Ok(())
}

/// The canonical request (chat-completions fields, `model` excluded) for a
/// Responses request's members (`params`, as the handlers left them).
pub fn to_canonical(params: Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    let mut chat = Vec::new();
    if let Some(text) = member(&params, "instructions").and_then(Value::as_str) {
        if !text.is_empty() {
            chat.push(json!({"role": "system", "content": text}));
        }
    }
    match member(&params, "input") {
        Some(Value::String(text)) => chat.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                convert_item(item, i, &mut chat)?;
            }
        }
        _ => {
            return Err(bad(
                "input",
                "`input` is required: a string or a list of input items.",
            ))
        }
    }
    out.insert("messages".into(), Value::Array(chat));
    for (key, value) in params {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "input" | "instructions" => {}
            "stream"
            | "temperature"
            | "top_p"
            | "user"
            | "parallel_tool_calls"
            | "service_tier"
            | "top_logprobs" => {
                out.insert(key, value);
            }
            "max_output_tokens" => {
                out.insert("max_completion_tokens".into(), value);
            }
            // Hints: the answer is the same without them.
            "store" | "metadata" | "include" | "truncation" | "prompt_cache_key"
            | "stream_options" | "safety_identifier" => {}
            "background" => {
                if value == Value::Bool(true) {
                    return Err(needs_state("background", "`background: true`"));
                }
            }
            "previous_response_id" => {
                return Err(needs_state(
                    "previous_response_id",
                    "`previous_response_id`",
                ))
            }
            "conversation" => return Err(needs_state("conversation", "`conversation`")),
            "prompt" => return Err(needs_state("prompt", "A stored `prompt`")),
            "tools" => {
                let tools = tools(&value)?;
                if !tools.is_empty() {
                    out.insert("tools".into(), Value::Array(tools));
                }
            }
            "tool_choice" => {
                out.insert("tool_choice".into(), tool_choice(&value)?);
            }
            "text" => text_config(&value, &mut out)?,
            "reasoning" => {
                if let Some(effort) = value.get("effort").filter(|e| !e.is_null()) {
                    let Some(effort) = effort.as_str() else {
                        return Err(bad("reasoning.effort", "must be a string"));
                    };
                    out.insert("reasoning_effort".into(), effort.into());
                }
            }
            other => {
                return Err(bad(
                    other,
                    format!(
                        "`{other}` cannot be passed on to this connection (it does not speak \
                         the Responses API, and `{other}` has no equivalent in its request)"
                    ),
                ))
            }
        }
    }
    if out.get("stream").and_then(Value::as_bool) == Some(true) {
        // `response.completed` carries the usage, which comes in the last chunk.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(out)
}

/// One input item → chat messages. Consecutive function calls (and an assistant
/// message before them) make one assistant message, as chat upstreams expect
/// parallel calls.
fn convert_item(item: &Value, i: usize, chat: &mut Vec<Value>) -> Result<(), ApiError> {
    let at = format!("input[{i}]");
    // `type` may be left out of a message (the SDK's EasyInputMessage).
    let kind = match item.get("type") {
        None | Some(Value::Null) if item.get("role").is_some() => "message",
        Some(Value::String(kind)) => kind.as_str(),
        _ => {
            return Err(bad(
                &format!("{at}.type"),
                format!("{at} needs a string `type` (or a `role` for a message)."),
            ))
        }
    };
    match kind {
        "message" => message(item, &at, chat),
        "function_call" => {
            let field = |name: &str| {
                item.get(name).and_then(Value::as_str).ok_or_else(|| {
                    bad(
                        &format!("{at}.{name}"),
                        format!("{at}.{name} must be a string."),
                    )
                })
            };
            let call = json!({
                "id": field("call_id")?,
                "type": "function",
                "function": {"name": field("name")?, "arguments": field("arguments")?},
            });
            match chat.last_mut() {
                Some(Value::Object(last))
                    if last.get("role").and_then(Value::as_str) == Some("assistant") =>
                {
                    let calls = last
                        .entry("tool_calls")
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(calls) = calls {
                        calls.push(call);
                    }
                }
                _ => chat.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
            Ok(())
        }
        "function_call_output" => {
            let id = item.get("call_id").and_then(Value::as_str).ok_or_else(|| {
                bad(
                    &format!("{at}.call_id"),
                    format!("{at}.call_id must be a string."),
                )
            })?;
            let output = match item.get("output") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Array(parts)) => {
                    let mut texts = Vec::new();
                    for (j, part) in parts.iter().enumerate() {
                        let at = format!("{at}.output[{j}]");
                        match part.get("type").and_then(Value::as_str) {
                            Some("input_text" | "output_text") => texts.push(text_of(part, &at)?),
                            other => return Err(untranslatable(&at, other.unwrap_or("?"))),
                        }
                    }
                    texts.join("\n")
                }
                _ => {
                    return Err(bad(
                        &format!("{at}.output"),
                        format!("{at}.output must be a string or a list of text parts."),
                    ))
                }
            };
            chat.push(json!({"role": "tool", "tool_call_id": id, "content": output}));
            Ok(())
        }
        // Earlier turns' reasoning: see the module's comment.
        "reasoning" => Ok(()),
        "item_reference" => Err(needs_state(&format!("{at}.type"), "An `item_reference`")),
        other => Err(bad(
            &format!("{at}.type"),
            format!(
                "{at}: a `{other}` item cannot be passed on to this connection (it does not \
                 speak the Responses API and has no equivalent); built-in tools run only on \
                 an upstream that speaks the Responses API"
            ),
        )),
    }
}

fn untranslatable(at: &str, kind: &str) -> ApiError {
    bad(
        &format!("{at}.type"),
        format!(
            "{at}: a `{kind}` part cannot be passed on to this connection (it does not speak \
             the Responses API and has no equivalent)"
        ),
    )
}

fn text_of(part: &Value, at: &str) -> Result<String, ApiError> {
    part.get("text")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            bad(
                &format!("{at}.text"),
                format!("{at}.text must be a string."),
            )
        })
}

/// A `message` item → one chat message.
fn message(item: &Value, at: &str, chat: &mut Vec<Value>) -> Result<(), ApiError> {
    let role = match item.get("role").and_then(Value::as_str) {
        Some(role @ ("user" | "assistant" | "system")) => role,
        // Not every chat upstream knows `developer`; it is what `system` was.
        Some("developer") => "system",
        _ => {
            return Err(bad(
                &format!("{at}.role"),
                format!("{at}.role must be \"user\", \"assistant\", \"system\" or \"developer\"."),
            ))
        }
    };
    let parts = match item.get("content") {
        Some(Value::String(text)) => {
            chat.push(json!({"role": role, "content": text}));
            return Ok(());
        }
        Some(Value::Array(parts)) => parts,
        _ => {
            return Err(bad(
                &format!("{at}.content"),
                format!("{at}.content must be a string or a list of content parts."),
            ))
        }
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let at = format!("{at}.content[{j}]");
        let kind = part.get("type").and_then(Value::as_str).unwrap_or("?");
        match kind {
            "input_text" | "output_text" => {
                out.push(json!({"type": "text", "text": text_of(part, &at)?}))
            }
            "refusal" => {
                let text = part
                    .get("refusal")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                out.push(json!({"type": "text", "text": text}));
            }
            "input_image" if role == "user" => out.push(image(part, &at)?),
            "input_file" if role == "user" => out.push(file(part, &at)?),
            other => return Err(untranslatable(&at, other)),
        }
    }
    // Text only (always so for system and assistant turns): one string, which every
    // chat upstream takes.
    let content = if out.iter().all(|p| p["type"] == "text") {
        let texts: Vec<&str> = out.iter().filter_map(|p| p["text"].as_str()).collect();
        Value::String(texts.join(if role == "user" { "\n" } else { "" }))
    } else {
        Value::Array(out)
    };
    chat.push(json!({"role": role, "content": content}));
    Ok(())
}

/// `input_image` → an `image_url` part (a URL or a data URL).
fn image(part: &Value, at: &str) -> Result<Value, ApiError> {
    let Some(url) = part.get("image_url").and_then(Value::as_str) else {
        if part.get("file_id").is_some_and(|f| !f.is_null()) {
            return Err(needs_state(
                &format!("{at}.file_id"),
                "An uploaded file (`file_id`)",
            ));
        }
        return Err(bad(
            &format!("{at}.image_url"),
            format!("{at}.image_url must be a URL or a data URL."),
        ));
    };
    let mut image_url = Map::new();
    image_url.insert("url".into(), url.into());
    if let Some(detail) = part.get("detail").and_then(Value::as_str) {
        image_url.insert("detail".into(), detail.into());
    }
    Ok(json!({"type": "image_url", "image_url": image_url}))
}

/// `input_file` with its data → a `file` part.
fn file(part: &Value, at: &str) -> Result<Value, ApiError> {
    let Some(data) = part.get("file_data").and_then(Value::as_str) else {
        if part.get("file_id").is_some_and(|f| !f.is_null()) {
            return Err(needs_state(
                &format!("{at}.file_id"),
                "An uploaded file (`file_id`)",
            ));
        }
        return Err(bad(
            &format!("{at}.file_data"),
            format!(
                "{at}: only files given inline (`file_data`) can be passed on to this \
                 connection (it does not speak the Responses API)"
            ),
        ));
    };
    let mut file = Map::new();
    file.insert("file_data".into(), data.into());
    if let Some(name) = part.get("filename").and_then(Value::as_str) {
        file.insert("filename".into(), name.into());
    }
    Ok(json!({"type": "file", "file": file}))
}

/// Function tools → chat tools. OpenAI's built-in tools run only on OpenAI.
fn tools(value: &Value) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    for (i, tool) in value
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        let at = format!("tools[{i}]");
        match tool.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some(kind) => {
                return Err(bad(
                    &format!("{at}.type"),
                    format!(
                        "{at}: the built-in `{kind}` tool runs on OpenAI's server; this \
                         connection does not speak the Responses API, so only function tools \
                         can be passed on (or route the model to an OpenAI connection with \
                         `responses_api = true`)"
                    ),
                ))
            }
            None => {
                return Err(bad(
                    &format!("{at}.type"),
                    format!("{at}.type must be a string."),
                ))
            }
        }
        let name = tool.get("name").and_then(Value::as_str).ok_or_else(|| {
            bad(
                &format!("{at}.name"),
                format!("{at}.name must be a string."),
            )
        })?;
        let mut function = Map::new();
        function.insert("name".into(), name.into());
        for key in ["description", "parameters", "strict"] {
            if let Some(value) = tool.get(key).filter(|v| !v.is_null()) {
                function.insert(key.into(), value.clone());
            }
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(out)
}

fn tool_choice(value: &Value) -> Result<Value, ApiError> {
    match value {
        Value::String(mode) if matches!(mode.as_str(), "auto" | "none" | "required") => {
            Ok(value.clone())
        }
        Value::Object(choice) if choice.get("type").and_then(Value::as_str) == Some("function") => {
            let name = choice.get("name").and_then(Value::as_str).ok_or_else(|| {
                bad(
                    "tool_choice.name",
                    "a function tool_choice needs the tool's `name`",
                )
            })?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(bad(
            "tool_choice",
            "`tool_choice` can be passed on to this connection only as \"auto\", \"none\", \
             \"required\" or {\"type\": \"function\", \"name\": ...} (it does not speak the \
             Responses API)",
        )),
    }
}

/// `text.format` → `response_format`; `text.verbosity` → `verbosity`.
fn text_config(value: &Value, out: &mut Map<String, Value>) -> Result<(), ApiError> {
    if let Some(verbosity) = value.get("verbosity").filter(|v| !v.is_null()) {
        out.insert("verbosity".into(), verbosity.clone());
    }
    let Some(format) = value.get("format").filter(|f| !f.is_null()) else {
        return Ok(());
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => {}
        Some("json_object") => {
            out.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some("json_schema") => {
            let mut schema = Map::new();
            let name = format
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("text.format.name", "a json_schema format needs a `name`"))?;
            schema.insert("name".into(), name.into());
            for key in ["description", "schema", "strict"] {
                if let Some(value) = format.get(key).filter(|v| !v.is_null()) {
                    schema.insert(key.into(), value.clone());
                }
            }
            out.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": schema}),
            );
        }
        _ => {
            return Err(bad(
                "text.format.type",
                "text.format.type must be \"text\", \"json_object\" or \"json_schema\"",
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(request: Value) -> Result<Map<String, Value>, ApiError> {
        let Value::Object(mut map) = request else {
            panic!()
        };
        map.shift_remove("model");
        to_canonical(map)
    }

    #[test]
    fn a_function_calling_conversation_becomes_chat_messages() {
        let out = canonical(json!({
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"role": "developer", "content": "Use tools."},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "Look:"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAA", "detail": "low"},
                    {"type": "input_file", "file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"},
                ]},
                {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "hm"}]},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
                {"type": "function_call", "call_id": "call_1", "name": "get", "arguments": "{\"q\":1}"},
                {"type": "function_call", "call_id": "call_2", "name": "get", "arguments": "{\"q\":2}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "42"},
                {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "43"}]},
            ],
            "tools": [{"type": "function", "name": "get", "description": "d", "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "get"},
            "parallel_tool_calls": false,
            "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": true}},
            "reasoning": {"effort": "low", "summary": "auto"},
            "max_output_tokens": 100, "temperature": 0.2, "top_p": 0.9,
            "metadata": {"k": "v"}, "user": "u-1", "store": true, "stream": true,
        }))
        .unwrap();
        assert_eq!(
            Value::Object(out),
            json!({
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "system", "content": "Use tools."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "Look:"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA", "detail": "low"}},
                        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"}},
                    ]},
                    {"role": "assistant", "content": "Checking.", "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": "{\"q\":1}"}},
                        {"id": "call_2", "type": "function", "function": {"name": "get", "arguments": "{\"q\":2}"}},
                    ]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "42"},
                    {"role": "tool", "tool_call_id": "call_2", "content": "43"},
                ],
                "tools": [{"type": "function", "function": {"name": "get", "description": "d", "parameters": {"type": "object"}, "strict": true}}],
                "tool_choice": {"type": "function", "function": {"name": "get"}},
                "parallel_tool_calls": false,
                "response_format": {"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": true}},
                "reasoning_effort": "low",
                "max_completion_tokens": 100, "temperature": 0.2, "top_p": 0.9,
                "user": "u-1", "stream": true,
                "stream_options": {"include_usage": true},
            })
        );
        let plain = canonical(
            json!({"model": "m", "input": "hi", "text": {"format": {"type": "json_object"}}}),
        )
        .unwrap();
        assert_eq!(
            Value::Object(plain),
            json!({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}})
        );
    }

    #[test]
    fn what_needs_state_or_has_no_equivalent_is_a_400_naming_the_field() {
        let cases = [
            (
                json!({"input": "hi", "previous_response_id": "resp_1"}),
                "previous_response_id",
                "server-side state",
            ),
            (
                json!({"input": "hi", "background": true}),
                "background",
                "server-side state",
            ),
            (
                json!({"input": "hi", "conversation": "conv_1"}),
                "conversation",
                "server-side state",
            ),
            (
                json!({"input": [{"type": "item_reference", "id": "msg_1"}]}),
                "input[0].type",
                "server-side state",
            ),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]}),
                "input[0].content[0].file_id",
                "server-side state",
            ),
            (
                json!({"input": "hi", "tools": [{"type": "web_search"}]}),
                "tools[0].type",
                "built-in `web_search`",
            ),
            (
                json!({"input": [{"type": "web_search_call", "id": "ws_1"}]}),
                "input[0].type",
                "web_search_call",
            ),
            (
                json!({"input": "hi", "tool_choice": {"type": "web_search_preview"}}),
                "tool_choice",
                "tool_choice",
            ),
            (
                json!({"input": "hi", "text": {"format": {"type": "yaml"}}}),
                "text.format.type",
                "json_schema",
            ),
            (
                json!({"input": "hi", "zz_unknown": 1}),
                "zz_unknown",
                "no equivalent",
            ),
            (json!({}), "input", "required"),
        ];
        for (request, param, needle) in cases {
            let err = canonical(request.clone()).expect_err(&request.to_string());
            assert_eq!(err.status(), 400, "{request}");
            assert_eq!(err.error_object()["param"], param, "{request}");
            assert!(err.to_string().contains(needle), "{request}: {err}");
        }
        // `background: false` and a null previous response are what a stateless call is.
        canonical(json!({"input": "hi", "background": false, "previous_response_id": null}))
            .unwrap();
    }

    #[test]
    fn bad_bodies_are_rejected_with_the_field() {
        let check = |v: Value| {
            validate(v.as_object().unwrap()).map_err(|e| e.error_object()["param"].clone())
        };
        assert!(check(json!({"model": "m", "input": "hi"})).is_ok());
        for (body, param) in [
            (json!({"input": "hi"}), "model"),
            (json!({"model": "", "input": "hi"}), "model"),
            (json!({"model": 1, "input": "hi"}), "model"),
            (json!({"model": "m", "input": 5}), "input"),
            (json!({"model": "m", "input": ["hi"]}), "input[0]"),
            (
                json!({"model": "m", "input": "x", "stream": "yes"}),
                "stream",
            ),
            (
                json!({"model": "m", "input": "x", "max_output_tokens": 0}),
                "max_output_tokens",
            ),
            (json!({"model": "m", "input": "x", "tools": {}}), "tools"),
            (json!({"model": "m", "input": "x", "text": "json"}), "text"),
            (
                json!({"model": "m", "input": "x", "temperature": "hot"}),
                "temperature",
            ),
        ] {
            assert_eq!(check(body.clone()).unwrap_err(), param, "{body}");
        }
    }
}
