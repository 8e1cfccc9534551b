//! OpenAI `messages` → Anthropic `system` and alternating `messages` turns
//! (reference §2.3, §2.9, §5.1, §5.7): content parts, images, tool calls and tool
//! results, and the repairs Anthropic's stricter rules need.

use serde_json::{json, Map, Value};

use crate::error::ApiError;

/// Image types Anthropic accepts in base64 sources.
const IMAGE_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

/// Whether a JSON object (block, tool choice) has this `type`.
pub(super) fn type_is(value: &Value, kind: &str) -> bool {
    value.get("type").and_then(Value::as_str) == Some(kind)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug)]
pub struct Turn {
    pub role: Role,
    pub blocks: Vec<Value>,
}

/// Messages → (system blocks, alternating turns).
///
/// System and developer messages are hoisted into `system` in order, wherever
/// they are. Tool messages become `tool_result` blocks of a user turn. Same-role
/// neighbours are merged, with `tool_result` blocks first in each user turn.
/// Empty messages are dropped. Tool calls without a result get an error result,
/// a leading assistant turn gets a `"."` user turn before it, and a final
/// assistant turn (prefill) loses trailing whitespace.
pub fn convert_messages(messages: &[Value]) -> Result<(Vec<Value>, Vec<Turn>), ApiError> {
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
                .partition(|b| type_is(b, "tool_result"));
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
            if block.get("type").and_then(Value::as_str) == Some("text") {
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

/// The content of the error result given to a tool call that has none.
pub const NO_RESULT: &str = "No result was provided for this tool call.";

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
            .filter(|b| type_is(b, "tool_use"))
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
                       "content": NO_RESULT, "is_error": true})
            })
            .collect();
        let at = next
            .blocks
            .iter()
            .take_while(|b| type_is(b, "tool_result"))
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
    let mut thinking = earlier_thinking(message, at)?;
    if !thinking.is_empty() {
        // Anthropic wants a turn's reasoning before its text and tool calls.
        thinking.extend(blocks);
        blocks = thinking;
    }
    Ok(blocks)
}

/// The signed thinking blocks of an assistant turn coming back: the message's own
/// `thinking_blocks` (as our answers carry them), else the ones kept for its tool
/// calls or its `reasoning_content` (see `thinking`). Unsigned reasoning is left
/// out, as Anthropic would refuse it.
fn earlier_thinking(message: &Value, at: &str) -> Result<Vec<Value>, ApiError> {
    match message.get("thinking_blocks") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            let signed: Vec<Value> = list
                .iter()
                .filter_map(super::thinking::signed_block)
                .collect();
            if !signed.is_empty() {
                return Ok(signed);
            }
        }
        Some(_) => {
            return Err(ApiError::invalid_param(
                &format!("{at}.thinking_blocks"),
                "`thinking_blocks` must be a list of thinking blocks",
            ))
        }
    }
    let ids: Vec<&str> = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .map(|calls| {
            calls
                .iter()
                .filter_map(|c| c.get("id").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let reasoning = ["reasoning_content", "reasoning"]
        .iter()
        .find_map(|k| message.get(*k).and_then(Value::as_str));
    Ok(super::thinking::recall(ids, reasoning).unwrap_or_default())
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
