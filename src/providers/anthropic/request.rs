//! OpenAI chat request → Anthropic Messages request (reference §2.9).
//!
//! Pure functions: the OpenAI fields in, the Anthropic body out, or a 400 in the
//! OpenAI envelope naming the offending field. Nothing here does I/O, so every
//! rule is unit-tested below.

use serde_json::{json, Map, Value};

use crate::error::ApiError;

/// The forced tool that carries a `response_format` answer (the "tool trick").
pub const JSON_TOOL_NAME: &str = "json_tool_call";

/// Placeholder tool sent when the history holds tool calls but the client sent no
/// `tools`: Anthropic refuses `tool_use`/`tool_result` blocks without a tool list.
const PLACEHOLDER_TOOL_NAME: &str = "no_tools_available";

/// Image types Anthropic accepts in base64 sources.
const IMAGE_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

/// Request fields this translation reads; every other field is dropped (logged at
/// debug level), because Anthropic rejects unknown fields.
const USED_FIELDS: [&str; 15] = [
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
            Some(choice) if choice.get("type") == Some(&json!("tool")) => choice,
            // With tools of its own, the model must call one of them or the JSON tool.
            Some(choice) if client_has_tools && choice.get("type") != Some(&json!("none")) => {
                Map::from_iter([("type".to_owned(), json!("any"))])
            }
            None if client_has_tools => Map::from_iter([("type".to_owned(), json!("any"))]),
            _ => forced(),
        });
    } else if client_has_tools {
        tool_choice = client_tool_choice;
    } else if history_has_tools {
        tools.push(json!({
            "name": PLACEHOLDER_TOOL_NAME,
            "description": "Placeholder so that earlier tool calls can be replayed; never call it.",
            "input_schema": {"type": "object", "properties": {}},
        }));
        tool_choice = Some(Map::from_iter([("type".to_owned(), json!("none"))]));
    }
    // `tool_choice` without tools is meaningless (and rejected upstream): dropped.
    if !parallel && !tools.is_empty() {
        let choice =
            tool_choice.get_or_insert_with(|| Map::from_iter([("type".to_owned(), json!("auto"))]));
        if choice.get("type") != Some(&json!("none")) {
            choice.insert("disable_parallel_tool_use".into(), Value::Bool(true));
        }
    }

    let mut body = Map::new();
    body.insert("model".into(), Value::String(model.to_owned()));
    body.insert(
        "max_tokens".into(),
        max_tokens(params)?.unwrap_or(default_max_tokens).into(),
    );
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
    if let Some(t) = temperature {
        // Anthropic accepts 0..1 where OpenAI takes 0..2: clamped, not rejected, so
        // clients tuned for OpenAI keep working.
        body.insert("temperature".into(), json_f64(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = number(params, "top_p")? {
        // Recent Claude models reject `temperature` and `top_p` together; the
        // temperature wins (reference §5.12).
        if temperature.is_none() {
            body.insert("top_p".into(), json_f64(p));
        }
    }
    match params.get("top_k") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_u64().is_some() => {
            body.insert("top_k".into(), v.clone());
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

fn json_f64(x: f64) -> Value {
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
fn looks_personal(user: &str) -> bool {
    if user.contains('@') {
        return true;
    }
    let digits = user.chars().filter(char::is_ascii_digit).count();
    digits >= 7
        && user
            .chars()
            .all(|c| c.is_ascii_digit() || " +-().".contains(c))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    User,
    Assistant,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug)]
struct Turn {
    role: Role,
    blocks: Vec<Value>,
}

/// Messages → (system blocks, alternating turns).
///
/// System and developer messages are hoisted into `system` in order, wherever
/// they are. Tool messages become `tool_result` blocks of a user turn. Same-role
/// neighbours are merged, with `tool_result` blocks first in each user turn.
/// Empty messages are dropped. Tool calls without a result get an error result,
/// a leading assistant turn gets a `"."` user turn before it, and a final
/// assistant turn (prefill) loses trailing whitespace.
fn convert_messages(messages: &[Value]) -> Result<(Vec<Value>, Vec<Turn>), ApiError> {
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    let mut push = |role: Role, blocks: Vec<Value>| {
        if blocks.is_empty() {
            return;
        }
        match turns.last_mut() {
            Some(last) if last.role == role => last.blocks.extend(blocks),
            _ => turns.push(Turn { role, blocks }),
        }
    };
    for (i, message) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        let content = message.get("content").unwrap_or(&Value::Null);
        match role {
            "system" | "developer" => system.extend(system_blocks(content, &at)?),
            "user" => push(Role::User, user_blocks(content, &format!("{at}.content"))?),
            "assistant" => push(Role::Assistant, assistant_blocks(message, &at)?),
            "tool" => push(Role::User, vec![tool_result(message, &at)?]),
            "function" => {
                return Err(ApiError::invalid_param(
                    &format!("{at}.role"),
                    "the legacy `function` role is not supported by this connection; use `tools` and `tool` messages",
                ))
            }
            other => {
                return Err(ApiError::invalid_param(
                    &format!("{at}.role"),
                    format!("unknown message role '{other}' (expected system, developer, user, assistant or tool)"),
                ))
            }
        }
    }

    for turn in &mut turns {
        if turn.role == Role::User {
            // Anthropic wants tool results before any other block of the turn.
            let (mut results, rest): (Vec<Value>, Vec<Value>) = std::mem::take(&mut turn.blocks)
                .into_iter()
                .partition(|b| b.get("type") == Some(&json!("tool_result")));
            results.extend(rest);
            turn.blocks = results;
        }
    }
    add_missing_tool_results(&mut turns);
    if turns.first().is_some_and(|t| t.role == Role::Assistant) {
        // Anthropic's conversation must open with a user turn.
        turns.insert(
            0,
            Turn {
                role: Role::User,
                blocks: vec![text_block(".")],
            },
        );
    }
    if let Some(last) = turns.last_mut().filter(|t| t.role == Role::Assistant) {
        // A prefill that ends in whitespace is rejected upstream.
        if let Some(Value::Object(block)) = last.blocks.last_mut() {
            if block.get("type") == Some(&json!("text")) {
                if let Some(Value::String(text)) = block.get_mut("text") {
                    let trimmed = text.trim_end().len();
                    text.truncate(trimmed);
                }
            }
        }
        if last
            .blocks
            .last()
            .is_some_and(|b| b.get("text").and_then(Value::as_str) == Some(""))
        {
            last.blocks.pop();
        }
        if last.blocks.is_empty() {
            turns.pop();
        }
    }
    if turns.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "`messages` must contain at least one user or assistant message with content \
             (system messages alone cannot be sent to Anthropic)",
        ));
    }
    Ok((system, turns))
}

/// Every `tool_use` needs a `tool_result` in the very next user turn; missing ones
/// get an error result so that the request is not rejected as a whole.
fn add_missing_tool_results(turns: &mut Vec<Turn>) {
    let mut i = 0;
    while i < turns.len() {
        if turns[i].role != Role::Assistant {
            i += 1;
            continue;
        }
        let ids: Vec<String> = turns[i]
            .blocks
            .iter()
            .filter(|b| b.get("type") == Some(&json!("tool_use")))
            .filter_map(|b| b.get("id").and_then(Value::as_str).map(str::to_owned))
            .collect();
        if ids.is_empty() {
            i += 1;
            continue;
        }
        if turns.get(i + 1).is_none_or(|t| t.role != Role::User) {
            turns.insert(
                i + 1,
                Turn {
                    role: Role::User,
                    blocks: Vec::new(),
                },
            );
        }
        let next = &mut turns[i + 1];
        let answered: Vec<String> = next
            .blocks
            .iter()
            .filter_map(|b| {
                b.get("tool_use_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect();
        let missing: Vec<Value> = ids
            .iter()
            .filter(|id| !answered.contains(id))
            .map(|id| {
                json!({"type": "tool_result", "tool_use_id": id,
                       "content": "No result was provided for this tool call.", "is_error": true})
            })
            .collect();
        let at = next
            .blocks
            .iter()
            .take_while(|b| b.get("type") == Some(&json!("tool_result")))
            .count();
        next.blocks.splice(at..at, missing);
        i += 2;
    }
}

fn text_block(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

/// A text block from a text part, keeping an Anthropic `cache_control` if the
/// client set one; `None` for blank text (Anthropic rejects empty text blocks).
fn text_part_block(text: &str, part: &Value) -> Option<Value> {
    if text.trim().is_empty() {
        return None;
    }
    let mut block = text_block(text);
    if let (Some(cache), Value::Object(b)) = (part.get("cache_control"), &mut block) {
        b.insert("cache_control".into(), cache.clone());
    }
    Some(block)
}

fn system_blocks(content: &Value, at: &str) -> Result<Vec<Value>, ApiError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(text_part_block(s, &Value::Null).into_iter().collect()),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(text))) => {
                        out.extend(text_part_block(text, part));
                    }
                    _ => {
                        return Err(ApiError::invalid_param(
                            &format!("{at}.content[{j}]"),
                            "system messages may only contain text parts",
                        ))
                    }
                }
            }
            Ok(out)
        }
        _ => Err(bad_content(&format!("{at}.content"))),
    }
}

fn bad_content(at: &str) -> ApiError {
    ApiError::invalid_param(at, "`content` must be a string, a list of parts, or null")
}

/// User (and tool-result) content: text, images, PDF files.
fn user_blocks(content: &Value, at: &str) -> Result<Vec<Value>, ApiError> {
    let parts = match content {
        Value::Null => return Ok(Vec::new()),
        Value::String(s) => return Ok(text_part_block(s, &Value::Null).into_iter().collect()),
        Value::Array(parts) => parts,
        _ => return Err(bad_content(at)),
    };
    let mut out = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let at = format!("{at}[{j}]");
        match part.get("type").and_then(Value::as_str) {
            Some("text") => match part.get("text") {
                Some(Value::String(text)) => out.extend(text_part_block(text, part)),
                _ => return Err(ApiError::invalid_param(&at, "a text part needs a string `text`")),
            },
            Some("image_url") => {
                let url = match part.get("image_url") {
                    Some(Value::String(url)) => url.as_str(),
                    Some(obj) => obj.get("url").and_then(Value::as_str).unwrap_or(""),
                    None => "",
                };
                let mut block = image_block(url, &format!("{at}.image_url.url"))?;
                if let (Some(cache), Value::Object(b)) = (part.get("cache_control"), &mut block) {
                    b.insert("cache_control".into(), cache.clone());
                }
                out.push(block);
            }
            Some("file") => out.push(file_block(part, &at)?),
            Some("input_audio") => {
                return Err(ApiError::invalid_param(
                    &at,
                    "audio input is not supported by Anthropic models",
                ))
            }
            other => {
                return Err(ApiError::invalid_param(
                    &at,
                    format!(
                        "unsupported content part type {} (supported: text, image_url, file with PDF data)",
                        other.map_or_else(|| "(missing)".to_owned(), |t| format!("'{t}'"))
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// `data:<mime>;base64,<payload>` → (mime, payload).
fn parse_data_url(url: &str) -> Option<(String, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let mut meta = meta.split(';');
    let mime = meta.next()?.trim().to_ascii_lowercase();
    if !meta.any(|p| p.trim().eq_ignore_ascii_case("base64")) || data.is_empty() {
        return None;
    }
    Some((mime, data))
}

/// An image part: a base64 data URL becomes a base64 source, an http(s) URL a
/// URL source (fetched by Anthropic, not by the gateway).
fn image_block(url: &str, at: &str) -> Result<Value, ApiError> {
    if url.starts_with("data:") {
        let Some((mime, data)) = parse_data_url(url) else {
            return Err(ApiError::invalid_param(
                at,
                "image data URLs must look like data:<image type>;base64,<data>",
            ));
        };
        let mime = if mime == "image/jpg" {
            "image/jpeg".to_owned()
        } else {
            mime
        };
        if !IMAGE_TYPES.contains(&mime.as_str()) {
            return Err(ApiError::invalid_param(
                at,
                format!(
                    "image type '{mime}' is not supported (supported: {})",
                    IMAGE_TYPES.join(", ")
                ),
            ));
        }
        return Ok(
            json!({"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}}),
        );
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(ApiError::invalid_param(
        at,
        "an image URL must be an http(s) URL or a base64 data URL",
    ))
}

/// A `file` part carrying a PDF as a data URL → a document block.
fn file_block(part: &Value, at: &str) -> Result<Value, ApiError> {
    let data = part
        .get("file")
        .and_then(|f| f.get("file_data"))
        .and_then(Value::as_str)
        .unwrap_or("");
    match parse_data_url(data) {
        Some((mime, payload)) if mime == "application/pdf" => Ok(
            json!({"type": "document", "source": {"type": "base64", "media_type": mime, "data": payload}}),
        ),
        _ => Err(ApiError::invalid_param(
            &format!("{at}.file"),
            "only files given inline as `file_data` = data:application/pdf;base64,... are supported (no file ids)",
        )),
    }
}

/// Anthropic tool ids must match `^[a-zA-Z0-9_-]+$`; other characters become `_`.
/// The same mapping is applied to `tool_use.id` and `tool_result.tool_use_id`, so
/// pairs still match.
pub fn sanitize_tool_id(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn assistant_blocks(message: &Value, at: &str) -> Result<Vec<Value>, ApiError> {
    let mut blocks = Vec::new();
    let content = message.get("content").unwrap_or(&Value::Null);
    match content {
        Value::Null => {}
        Value::String(s) => blocks.extend(text_part_block(s, &Value::Null)),
        Value::Array(parts) => {
            for (j, part) in parts.iter().enumerate() {
                let text = match part.get("type").and_then(Value::as_str) {
                    Some("text") => part.get("text"),
                    Some("refusal") => part.get("refusal"),
                    _ => None,
                };
                match text {
                    Some(Value::String(text)) => blocks.extend(text_part_block(text, part)),
                    _ => {
                        return Err(ApiError::invalid_param(
                            &format!("{at}.content[{j}]"),
                            "assistant content parts must be text or refusal parts",
                        ))
                    }
                }
            }
        }
        _ => return Err(bad_content(&format!("{at}.content"))),
    }
    match message.get("tool_calls") {
        None | Some(Value::Null) => {}
        Some(Value::Array(calls)) => {
            for (j, call) in calls.iter().enumerate() {
                blocks.push(tool_use_block(call, &format!("{at}.tool_calls[{j}]"))?);
            }
        }
        Some(_) => {
            return Err(ApiError::invalid_param(
                &format!("{at}.tool_calls"),
                "`tool_calls` must be a list",
            ))
        }
    }
    Ok(blocks)
}

/// An OpenAI tool call → a `tool_use` block. `arguments` is JSON text: `""` means
/// no arguments (`{}`); text that is not a JSON object is a 400 (Anthropic needs an
/// object, and guessing would send the model something it never wrote).
fn tool_use_block(call: &Value, at: &str) -> Result<Value, ApiError> {
    let id = match call.get("id") {
        Some(Value::String(id)) if !id.is_empty() => sanitize_tool_id(id),
        _ => {
            return Err(ApiError::invalid_param(
                &format!("{at}.id"),
                "a tool call needs a non-empty string `id`",
            ))
        }
    };
    let function = call.get("function").unwrap_or(&Value::Null);
    let name = match function.get("name") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        _ => {
            return Err(ApiError::invalid_param(
                &format!("{at}.function.name"),
                "a tool call needs a non-empty string `function.name`",
            ))
        }
    };
    let input = match function.get("arguments") {
        None | Some(Value::Null) => json!({}),
        Some(Value::Object(map)) => Value::Object(map.clone()),
        Some(Value::String(text)) if text.trim().is_empty() => json!({}),
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Value::Object(map),
            Ok(_) => {
                return Err(ApiError::invalid_param(
                    &format!("{at}.function.arguments"),
                    "tool call arguments must be a JSON object",
                ))
            }
            Err(e) => {
                return Err(ApiError::invalid_param(
                    &format!("{at}.function.arguments"),
                    format!(
                    "tool call arguments are not valid JSON ({e}); Anthropic needs a JSON object"
                ),
                ))
            }
        },
        Some(_) => {
            return Err(ApiError::invalid_param(
                &format!("{at}.function.arguments"),
                "tool call arguments must be a JSON string",
            ))
        }
    };
    Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
}

/// A `tool` message → a `tool_result` block.
fn tool_result(message: &Value, at: &str) -> Result<Value, ApiError> {
    let id = match message.get("tool_call_id") {
        Some(Value::String(id)) if !id.is_empty() => sanitize_tool_id(id),
        _ => {
            return Err(ApiError::invalid_param(
                &format!("{at}.tool_call_id"),
                "a tool message needs a non-empty string `tool_call_id`",
            ))
        }
    };
    let mut block = Map::new();
    block.insert("type".into(), json!("tool_result"));
    block.insert("tool_use_id".into(), Value::String(id));
    match message.get("content").unwrap_or(&Value::Null) {
        Value::String(s) if s.trim().is_empty() => {}
        Value::String(s) => {
            block.insert("content".into(), Value::String(s.clone()));
        }
        other => {
            let blocks = user_blocks(other, &format!("{at}.content"))?;
            if !blocks.is_empty() {
                block.insert("content".into(), Value::Array(blocks));
            }
        }
    }
    Ok(Value::Object(block))
}

fn convert_tools(tools: &Value) -> Result<Vec<Value>, ApiError> {
    let Value::Array(list) = tools else {
        return Err(ApiError::invalid_param("tools", "`tools` must be a list"));
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        let at = format!("tools[{i}]");
        match tool.get("type").and_then(Value::as_str) {
            Some("function") | None => {}
            Some(other) => {
                return Err(ApiError::invalid_param(
                    &format!("{at}.type"),
                    format!("tool type '{other}' is not supported (only function tools)"),
                ))
            }
        }
        let function = tool.get("function").unwrap_or(&Value::Null);
        let name = match function.get("name") {
            Some(Value::String(name)) if !name.is_empty() => name,
            _ => {
                return Err(ApiError::invalid_param(
                    &format!("{at}.function.name"),
                    "a tool needs a non-empty string `function.name`",
                ))
            }
        };
        let schema = match function.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(Value::Object(schema)) => {
                let mut schema = schema.clone();
                if !schema.contains_key("type") {
                    // Anthropic requires the root schema to say it is an object.
                    schema.insert("type".into(), json!("object"));
                }
                Value::Object(schema)
            }
            Some(_) => {
                return Err(ApiError::invalid_param(
                    &format!("{at}.function.parameters"),
                    "`parameters` must be a JSON Schema object",
                ))
            }
        };
        let mut entry = Map::new();
        entry.insert("name".into(), Value::String(name.clone()));
        if let Some(Value::String(d)) = function.get("description") {
            if !d.is_empty() {
                entry.insert("description".into(), Value::String(d.clone()));
            }
        }
        entry.insert("input_schema".into(), schema);
        if let Some(cache) = tool.get("cache_control") {
            entry.insert("cache_control".into(), cache.clone());
        }
        out.push(Value::Object(entry));
    }
    Ok(out)
}

fn convert_tool_choice(choice: &Value) -> Result<Map<String, Value>, ApiError> {
    let kind = |t: &str| Map::from_iter([("type".to_owned(), json!(t))]);
    match choice {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(kind("auto")),
            "none" => Ok(kind("none")),
            "required" => Ok(kind("any")),
            other => Err(ApiError::invalid_param(
                "tool_choice",
                format!(
                    "unknown tool_choice '{other}' (expected auto, none, required or a function)"
                ),
            )),
        },
        Value::Object(obj) => {
            let name = obj
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty());
            match (obj.get("type").and_then(Value::as_str), name) {
                (Some("function") | None, Some(name)) => {
                    let mut m = kind("tool");
                    m.insert("name".into(), json!(name));
                    Ok(m)
                }
                _ => Err(ApiError::invalid_param(
                    "tool_choice",
                    "tool_choice must be auto, none, required or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                )),
            }
        }
        _ => Err(ApiError::invalid_param(
            "tool_choice",
            "`tool_choice` must be a string or an object",
        )),
    }
}

/// `response_format` → the forced tool whose input is the answer, or `None` for
/// plain text.
fn json_tool(format: &Value) -> Result<Option<(Value, JsonMode)>, ApiError> {
    let any_object = json!({"type": "object", "properties": {}, "additionalProperties": true});
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some((
            json!({"name": JSON_TOOL_NAME,
                   "description": "Give your final answer as a JSON object through this tool.",
                   "input_schema": any_object}),
            JsonMode { wrapped: false },
        ))),
        Some("json_schema") => {
            let spec = format.get("json_schema").unwrap_or(&Value::Null);
            if !spec.is_object() {
                return Err(ApiError::invalid_param(
                    "response_format.json_schema",
                    "`json_schema` must be an object with a `schema`",
                ));
            }
            let description = match (spec.get("name").and_then(Value::as_str), spec.get("description").and_then(Value::as_str)) {
                (_, Some(d)) if !d.is_empty() => d.to_owned(),
                (Some(name), _) => format!("Give your final answer through this tool, as JSON matching the '{name}' schema."),
                _ => "Give your final answer through this tool, as JSON matching its schema.".to_owned(),
            };
            let (schema, wrapped) = match spec.get("schema") {
                None | Some(Value::Null) => (any_object, false),
                Some(Value::Object(schema)) => object_schema(schema.clone()),
                Some(_) => {
                    return Err(ApiError::invalid_param(
                        "response_format.json_schema.schema",
                        "`schema` must be a JSON Schema object",
                    ))
                }
            };
            Ok(Some((
                json!({"name": JSON_TOOL_NAME, "description": description, "input_schema": schema}),
                JsonMode { wrapped },
            )))
        }
        _ => Err(ApiError::invalid_param(
            "response_format",
            "response_format type must be text, json_object or json_schema",
        )),
    }
}

/// A tool input schema for a `response_format` schema. Object schemas are used as
/// they are; anything else (arrays, nullable objects, unions) is wrapped as the
/// property `values` of an object, with `$defs`/`definitions` moved to the new
/// root so that `#/$defs/...` references still resolve. Returns (schema, wrapped).
fn object_schema(mut schema: Map<String, Value>) -> (Value, bool) {
    let is_object = match schema.get("type") {
        Some(Value::String(t)) => t == "object",
        None => schema.contains_key("properties"),
        _ => false,
    };
    if is_object {
        schema
            .entry("type")
            .or_insert_with(|| Value::String("object".into()));
        return (Value::Object(schema), false);
    }
    let mut root = Map::new();
    root.insert("type".into(), json!("object"));
    for key in ["$defs", "definitions"] {
        if let Some(defs) = schema.remove(key) {
            root.insert(key.into(), defs);
        }
    }
    root.insert(
        "properties".into(),
        json!({"values": Value::Object(schema)}),
    );
    root.insert("required".into(), json!(["values"]));
    (Value::Object(root), true)
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
