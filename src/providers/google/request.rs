//! OpenAI chat request → Gemini `GenerateContentRequest` (reference §3.2, §3.7).
//!
//! Pure functions over the request fields; every input Gemini cannot take is a 400
//! in the OpenAI envelope naming the offending field. What is translated:
//!
//! - `system`/`developer` messages (anywhere) → `systemInstruction.parts` (text only);
//! - `user` → role `user`, `assistant` → role `model`, `tool`/`function` results →
//!   `functionResponse` parts in a `user` turn; consecutive turns of one role are
//!   merged, so parallel results share one content and text after them follows them;
//! - content parts: text; `image_url` with a `data:` URL → `inlineData`, with an
//!   `http(s)://` or `gs://` URL → `fileData` whose MIME type is guessed from the file
//!   extension ([`guess_mime`]; an unknown extension is a 400 asking for a data URL);
//!   `input_audio` → `inlineData` (`audio/wav`, `audio/mp3`); `file.file_data` (a data
//!   URL) → `inlineData`;
//! - assistant `tool_calls` → `functionCall` parts (arguments parsed from JSON text,
//!   `""`/`null` → `{}`, anything else that is not a JSON object is a 400), with the
//!   Gemini thought signature restored from the tool-call id (see [`super::ids`]);
//! - `tools` (and legacy `functions`) → one `functionDeclarations` list with sanitized
//!   parameters ([`super::schema`]); no `parameters` key for argument-less tools;
//! - `tool_choice` (and legacy `function_call`) → `toolConfig.functionCallingConfig`;
//! - `temperature`, `top_p`, `top_k`, `max_completion_tokens`/`max_tokens`, `stop`
//!   (at most 5), `n`, `seed`, `presence_penalty`, `frequency_penalty`,
//!   `response_format` → `generationConfig`.
//!
//! `reasoning_effort` → `generationConfig.thinkingConfig` ([`thinking_config`]).
//!
//! OpenAI-only fields (`logit_bias`, `logprobs`, `top_logprobs`, `user`, `metadata`,
//! `store`, `service_tier`, `parallel_tool_calls`, `modalities`,
//! `audio`, `prediction`, ...) and unknown fields are not sent to Gemini.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::ids;
use super::schema;
use crate::error::ApiError;
use crate::providers::UpstreamCall;

/// Gemini's limit on `stopSequences`.
pub(super) const MAX_STOP_SEQUENCES: usize = 5;

/// Connection-level additions to every request.
#[derive(Debug, Clone, Default)]
pub struct RequestOptions {
    /// `safetySettings`, as configured (already checked to be a list).
    pub safety_settings: Option<Value>,
    /// `allow_gcs_uris`: whether clients may name `gs://` objects as media. Off by
    /// default: Google reads them with the connection's credentials, so a client
    /// could have the model read any object the gateway's account can.
    pub allow_gcs_uris: bool,
    /// Where thought signatures are kept for clients that strip them from ids.
    pub signatures: super::signatures::SignatureStore,
}

/// Build the Gemini request body for a call.
pub fn build_request(
    call: &UpstreamCall,
    options: &RequestOptions,
) -> Result<Map<String, Value>, ApiError> {
    let params = &call.params;
    let (system, contents) = convert_messages(call.messages(), &call.model, options)?;
    if contents.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "Gemini needs at least one user or assistant message besides system messages",
        ));
    }

    let mut body = Map::new();
    body.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({ "parts": system }));
    }
    // One `$ref` inlining allowance for every schema of the request.
    let mut budget = schema::Budget::default();
    let (declarations, mode) = tools_and_choice(params, &mut budget)?;
    if !declarations.is_empty() {
        body.insert(
            "tools".into(),
            json!([{ "functionDeclarations": declarations }]),
        );
        if let Some(config) = mode {
            body.insert(
                "toolConfig".into(),
                json!({ "functionCallingConfig": config }),
            );
        }
    }
    if let Some(settings) = &options.safety_settings {
        body.insert("safetySettings".into(), settings.clone());
    }
    let mut generation = generation_config(params, &mut budget)?;
    if let Some(thinking) = thinking_config(params, &call.model)? {
        generation.insert("thinkingConfig".into(), thinking);
    }
    if !generation.is_empty() {
        body.insert("generationConfig".into(), Value::Object(generation));
    }
    Ok(body)
}

// ---------------------------------------------------------------------------------
// Messages

/// A turn being built: Gemini role and its parts.
struct Turn {
    role: &'static str,
    parts: Vec<Value>,
}

/// System parts and contents, in order, same-role neighbours merged.
fn convert_messages(
    messages: &[Value],
    model: &str,
    options: &RequestOptions,
) -> Result<(Vec<Value>, Vec<Value>), ApiError> {
    let mut system: Vec<Value> = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    // tool_call_id → function name, from the assistant messages seen so far.
    let mut call_names: HashMap<String, String> = HashMap::new();

    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        let content = message.get("content").unwrap_or(&Value::Null);
        let param = format!("messages[{i}]");
        match role {
            "system" | "developer" => {
                for text in text_only(content, &param)? {
                    if !text.is_empty() {
                        system.push(json!({ "text": text }));
                    }
                }
            }
            "user" => push_turn(&mut turns, "user", user_parts(content, &param, options)?),
            "assistant" => {
                let parts = assistant_parts(message, &param, &mut call_names)?;
                push_turn(&mut turns, "model", parts);
            }
            "tool" | "function" => {
                let name = tool_result_name(message, role, &call_names, &param)?;
                let text = text_only(content, &param)?.concat();
                push_turn(
                    &mut turns,
                    "user",
                    vec![json!({ "functionResponse": { "name": name, "response": tool_response(&text) } })],
                );
            }
            other => {
                return Err(ApiError::invalid_param(
                    &format!("{param}.role"),
                    format!("{param}.role '{other}' is not supported (use system, developer, user, assistant or tool)"),
                ))
            }
        }
    }

    let dummy_signatures = ids::needs_signature_placeholder(model);
    let contents = turns
        .into_iter()
        .map(|mut turn| {
            if turn.role == "model" && dummy_signatures {
                ids::add_signature_placeholder(&mut turn.parts);
            }
            json!({ "role": turn.role, "parts": turn.parts })
        })
        .collect();
    Ok((system, contents))
}

/// Append parts as a turn of `role`, merging with the previous turn of the same role
/// (Gemini wants alternating turns; empty turns are rejected, so they are skipped).
fn push_turn(turns: &mut Vec<Turn>, role: &'static str, parts: Vec<Value>) {
    if parts.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(last) if last.role == role => last.parts.extend(parts),
        _ => turns.push(Turn { role, parts }),
    }
}

/// The texts of a content that may only hold text (system and tool messages).
fn text_only(content: &Value, param: &str) -> Result<Vec<String>, ApiError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(|(j, part)| match part.get("type").and_then(Value::as_str) {
                Some("text") => part
                    .get("text")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        ApiError::invalid_param(
                            &format!("{param}.content[{j}].text"),
                            format!("{param}.content[{j}] needs a string `text`"),
                        )
                    }),
                other => Err(ApiError::invalid_param(
                    &format!("{param}.content[{j}]"),
                    format!(
                        "{param}.content[{j}] has type {}; this message may only contain text",
                        other.map_or("(none)".to_owned(), |t| format!("'{t}'"))
                    ),
                )),
            })
            .collect(),
        _ => Err(ApiError::invalid_param(
            &format!("{param}.content"),
            format!("{param}.content must be a string or a list of content parts"),
        )),
    }
}

fn user_parts(
    content: &Value,
    param: &str,
    options: &RequestOptions,
) -> Result<Vec<Value>, ApiError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({ "text": s })]),
        Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let at = format!("{param}.content[{j}]");
                if let Some(part) = user_part(part, &at, options)? {
                    out.push(part);
                }
            }
            Ok(out)
        }
        _ => Err(ApiError::invalid_param(
            &format!("{param}.content"),
            format!("{param}.content must be a string or a list of content parts"),
        )),
    }
}

fn user_part(part: &Value, at: &str, options: &RequestOptions) -> Result<Option<Value>, ApiError> {
    let bad = |message: String| ApiError::invalid_param(at, message);
    match part.get("type").and_then(Value::as_str) {
        Some("text") => {
            let text = part
                .get("text")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("{at} needs a string `text`")))?;
            Ok((!text.is_empty()).then(|| json!({ "text": text })))
        }
        Some("image_url") => {
            // `{"url": ...}` per the API; a bare string is a common client shortcut.
            let url = match part.get("image_url") {
                Some(Value::String(url)) => Some(url.as_str()),
                Some(obj) => obj.get("url").and_then(Value::as_str),
                None => None,
            }
            .ok_or_else(|| bad(format!("{at} needs `image_url.url`")))?;
            media_part(url, at, options.allow_gcs_uris).map(Some)
        }
        Some("input_audio") => {
            let audio = part.get("input_audio");
            let data = audio
                .and_then(|a| a.get("data"))
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("{at} needs `input_audio.data`")))?;
            let format = audio
                .and_then(|a| a.get("format"))
                .and_then(Value::as_str)
                .unwrap_or("wav");
            let mime = match format {
                "wav" => "audio/wav",
                "mp3" => "audio/mp3",
                other => {
                    return Err(bad(format!(
                        "{at}: audio format '{other}' is not supported (use wav or mp3)"
                    )))
                }
            };
            Ok(Some(
                json!({ "inlineData": { "mimeType": mime, "data": data } }),
            ))
        }
        Some("file") => {
            let file = part.get("file");
            match file.and_then(|f| f.get("file_data")).and_then(Value::as_str) {
                Some(data) if data.starts_with("data:") => media_part(data, at, false).map(Some),
                Some(_) => Err(bad(format!(
                    "{at}: `file.file_data` must be a data URL (data:<mime>;base64,...)"
                ))),
                None => Err(bad(format!(
                    "{at}: Gemini connections need the file inline as `file.file_data`; uploaded `file_id`s are not supported"
                ))),
            }
        }
        other => Err(bad(format!(
            "{at} has type {}, which Gemini connections do not support (text, image_url, input_audio, file)",
            other.map_or("(none)".to_owned(), |t| format!("'{t}'"))
        ))),
    }
}

/// An image or file reference: `data:` URL → `inlineData`; `http(s)://` or `gs://` →
/// `fileData` with the MIME type guessed from the extension; `gs://` only when the
/// connection allows it (`allow_gcs_uris`).
pub fn media_part(url: &str, at: &str, allow_gcs: bool) -> Result<Value, ApiError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').ok_or_else(|| {
            ApiError::invalid_param(at, format!("{at}: malformed data URL (no comma)"))
        })?;
        let Some(mime) = meta.strip_suffix(";base64") else {
            return Err(ApiError::invalid_param(
                at,
                format!("{at}: data URLs must be base64-encoded (data:<mime>;base64,...)"),
            ));
        };
        // Parameters such as `;charset=...` may precede `;base64`.
        let mime = mime.split(';').next().unwrap_or("").trim();
        if mime.is_empty() || !mime.contains('/') {
            return Err(ApiError::invalid_param(
                at,
                format!("{at}: the data URL has no MIME type"),
            ));
        }
        if data.is_empty() {
            return Err(ApiError::invalid_param(
                at,
                format!("{at}: the data URL is empty"),
            ));
        }
        return Ok(json!({ "inlineData": { "mimeType": mime, "data": data } }));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("gs://") && !allow_gcs {
        return Err(ApiError::invalid_param(
            at,
            format!(
                "{at}: gs:// URLs are not accepted by this connection (set allow_gcs_uris = true \
                 on it to let clients name Cloud Storage objects); send the file as a data URL"
            ),
        ));
    }
    if lower.starts_with("https://") || lower.starts_with("http://") || lower.starts_with("gs://") {
        let Some(mime) = guess_mime(url) else {
            return Err(ApiError::invalid_param(
                at,
                format!(
                    "{at}: cannot tell the media type of '{}' from its extension; send it as a data URL (data:<mime>;base64,...)",
                    shorten(url)
                ),
            ));
        };
        return Ok(json!({ "fileData": { "mimeType": mime, "fileUri": url } }));
    }
    Err(ApiError::invalid_param(
        at,
        format!("{at}: the URL must be a data:, http(s):// or gs:// URL"),
    ))
}

/// The MIME type of a media URL by its file extension (query and fragment ignored).
/// Gemini needs one for `fileData`; the proxy never downloads the file.
pub fn guess_mime(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let name = path.rsplit('/').next().unwrap_or(path);
    let (_, ext) = name.rsplit_once('.')?;
    Some(match ext.to_ascii_lowercase().as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "mp3" => "audio/mp3",
        "wav" => "audio/wav",
        "aac" => "audio/aac",
        "ogg" => "audio/ogg",
        "flac" => "audio/flac",
        "mp4" => "video/mp4",
        "mpeg" | "mpg" => "video/mpeg",
        "mov" => "video/mov",
        "webm" => "video/webm",
        _ => return None,
    })
}

fn shorten(text: &str) -> String {
    if text.len() <= 120 {
        return text.to_owned();
    }
    let mut end = 120;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

fn assistant_parts(
    message: &Value,
    param: &str,
    call_names: &mut HashMap<String, String>,
) -> Result<Vec<Value>, ApiError> {
    let mut parts = Vec::new();
    match message.get("content").unwrap_or(&Value::Null) {
        Value::Null => {}
        Value::String(s) => {
            if !s.is_empty() {
                parts.push(json!({ "text": s }));
            }
        }
        Value::Array(items) => {
            for (j, item) in items.iter().enumerate() {
                // Text and refusal parts both become model text.
                let text = item
                    .get("text")
                    .or_else(|| item.get("refusal"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ApiError::invalid_param(
                            &format!("{param}.content[{j}]"),
                            format!("{param}.content[{j}]: assistant content parts must be text"),
                        )
                    })?;
                if !text.is_empty() {
                    parts.push(json!({ "text": text }));
                }
            }
        }
        _ => {
            return Err(ApiError::invalid_param(
                &format!("{param}.content"),
                format!("{param}.content must be a string, a list of parts or null"),
            ))
        }
    }

    match message.get("tool_calls").unwrap_or(&Value::Null) {
        Value::Null => {}
        Value::Array(calls) => {
            for (k, call) in calls.iter().enumerate() {
                let at = format!("{param}.tool_calls[{k}]");
                let function = call.get("function").ok_or_else(|| {
                    ApiError::invalid_param(&at, format!("{at} needs a `function`"))
                })?;
                let name = function_name(function, &at)?;
                let args = parse_arguments(function.get("arguments"), &at)?;
                let id = call.get("id").and_then(Value::as_str).unwrap_or("");
                if !id.is_empty() {
                    call_names.insert(id.to_owned(), name.to_owned());
                }
                let mut part = json!({ "functionCall": { "name": name, "args": args } });
                if let Some(signature) = ids::signature_from_call_id(id) {
                    part["thoughtSignature"] = Value::String(signature);
                }
                parts.push(part);
            }
        }
        _ => {
            return Err(ApiError::invalid_param(
                &format!("{param}.tool_calls"),
                format!("{param}.tool_calls must be a list"),
            ))
        }
    }

    // Legacy single `function_call`.
    if let Some(function) = message.get("function_call").filter(|f| !f.is_null()) {
        let at = format!("{param}.function_call");
        let name = function_name(function, &at)?;
        let args = parse_arguments(function.get("arguments"), &at)?;
        parts.push(json!({ "functionCall": { "name": name, "args": args } }));
    }
    Ok(parts)
}

fn function_name<'a>(function: &'a Value, at: &str) -> Result<&'a str, ApiError> {
    function
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::invalid_param(at, format!("{at} needs a function `name`")))
}

/// Tool-call arguments as a JSON object. `""`, `null` and a missing value mean no
/// arguments; text that is not a JSON object is refused (Gemini needs an object, and
/// guessing would hand the model arguments it never produced).
pub fn parse_arguments(arguments: Option<&Value>, at: &str) -> Result<Value, ApiError> {
    let parsed = match arguments {
        None | Some(Value::Null) => return Ok(json!({})),
        Some(Value::String(text)) if text.trim().is_empty() => return Ok(json!({})),
        Some(Value::String(text)) => serde_json::from_str::<Value>(text).map_err(|e| {
            ApiError::invalid_param(
                &format!("{at}.function.arguments"),
                format!("{at}.function.arguments is not valid JSON: {e}"),
            )
        })?,
        // Some clients send the arguments already parsed.
        Some(other) => other.clone(),
    };
    match parsed {
        Value::Object(_) => Ok(parsed),
        Value::Null => Ok(json!({})),
        _ => Err(ApiError::invalid_param(
            &format!("{at}.function.arguments"),
            format!("{at}.function.arguments must be a JSON object"),
        )),
    }
}

/// The function name of a tool (or legacy function) result.
fn tool_result_name(
    message: &Value,
    role: &str,
    call_names: &HashMap<String, String>,
    param: &str,
) -> Result<String, ApiError> {
    let given_name = message
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    if role == "function" {
        return given_name.map(str::to_owned).ok_or_else(|| {
            ApiError::invalid_param(
                &format!("{param}.name"),
                format!("{param}: function messages need a `name`"),
            )
        });
    }
    let id = message
        .get("tool_call_id")
        .and_then(Value::as_str)
        .unwrap_or("");
    if let Some(name) = call_names.get(id) {
        return Ok(name.clone());
    }
    given_name.map(str::to_owned).ok_or_else(|| {
        ApiError::invalid_param(
            &format!("{param}.tool_call_id"),
            format!(
                "{param}: tool_call_id '{id}' matches no tool call of an earlier assistant message"
            ),
        )
    })
}

/// `functionResponse.response` must be a JSON object: a result that is one is sent as
/// is, anything else is wrapped as `{"content": <result>}` (parsed JSON when the text
/// is JSON, else the text).
pub fn tool_response(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Value::Object(map),
        Ok(other) if !text.trim().is_empty() => json!({ "content": other }),
        _ => json!({ "content": text }),
    }
}

// ---------------------------------------------------------------------------------
// Tools

/// Function declarations and the function-calling config.
fn tools_and_choice(
    params: &Map<String, Value>,
    budget: &mut schema::Budget,
) -> Result<(Vec<Value>, Option<Value>), ApiError> {
    let mut declarations: Vec<Value> = Vec::new();
    let mut names: Vec<String> = Vec::new();

    if let Some(tools) = present(params, "tools") {
        let list = tools
            .as_array()
            .ok_or_else(|| ApiError::invalid_param("tools", "`tools` must be a list"))?;
        for (i, tool) in list.iter().enumerate() {
            let at = format!("tools[{i}]");
            let kind = tool
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("function");
            if kind != "function" {
                return Err(ApiError::invalid_param(
                    &at,
                    format!("{at}: tool type '{kind}' is not supported by Gemini connections (only function tools)"),
                ));
            }
            let function = tool
                .get("function")
                .ok_or_else(|| ApiError::invalid_param(&at, format!("{at} needs `function`")))?;
            let declaration = declaration(function, &at, budget)?;
            names.push(declaration["name"].as_str().unwrap_or_default().to_owned());
            declarations.push(declaration);
        }
    }
    if let Some(functions) = present(params, "functions") {
        let list = functions
            .as_array()
            .ok_or_else(|| ApiError::invalid_param("functions", "`functions` must be a list"))?;
        for (i, function) in list.iter().enumerate() {
            let declaration = declaration(function, &format!("functions[{i}]"), budget)?;
            names.push(declaration["name"].as_str().unwrap_or_default().to_owned());
            declarations.push(declaration);
        }
    }

    let choice = present(params, "tool_choice")
        .map(|c| ("tool_choice", c))
        .or_else(|| present(params, "function_call").map(|c| ("function_call", c)));
    let Some((field, choice)) = choice else {
        return Ok((declarations, None));
    };
    let known = |name: &str| -> Result<(), ApiError> {
        if names.iter().any(|n| n == name) {
            Ok(())
        } else {
            Err(ApiError::invalid_param(
                field,
                format!("`{field}` names the function '{name}', which is not among the tools"),
            ))
        }
    };
    let needs_tools = |what: &str| -> Result<(), ApiError> {
        if declarations.is_empty() {
            Err(ApiError::invalid_param(
                field,
                format!("`{field}` is \"{what}\" but the request has no tools"),
            ))
        } else {
            Ok(())
        }
    };
    let config = match choice {
        Value::String(mode) => match mode.as_str() {
            "auto" => json!({ "mode": "AUTO" }),
            "none" => json!({ "mode": "NONE" }),
            "required" => {
                needs_tools("required")?;
                json!({ "mode": "ANY" })
            }
            other => {
                return Err(ApiError::invalid_param(
                    field,
                    format!("`{field}` \"{other}\" is not one of auto, none, required"),
                ))
            }
        },
        Value::Object(object) => {
            match object.get("type").and_then(Value::as_str) {
                Some("allowed_tools") => {
                    let allowed = object.get("allowed_tools");
                    let mode = allowed
                        .and_then(|a| a.get("mode"))
                        .and_then(Value::as_str)
                        .unwrap_or("auto");
                    let mut allowed_names = Vec::new();
                    for tool in allowed
                        .and_then(|a| a.get("tools"))
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        let name = tool
                            .get("function")
                            .and_then(|f| f.get("name"))
                            .or_else(|| tool.get("name"))
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        known(name)?;
                        allowed_names.push(name.to_owned());
                    }
                    match mode {
                        "required" => {
                            needs_tools("required")?;
                            json!({ "mode": "ANY", "allowedFunctionNames": allowed_names })
                        }
                        "auto" => {
                            // Gemini takes `allowedFunctionNames` only with ANY: with
                            // AUTO, declare only the allowed functions instead.
                            declarations.retain(|d| {
                                d["name"]
                                    .as_str()
                                    .is_some_and(|n| allowed_names.iter().any(|a| a == n))
                            });
                            json!({ "mode": "AUTO" })
                        }
                        other => {
                            return Err(ApiError::invalid_param(
                                field,
                                format!(
                                    "allowed_tools mode '{other}' is not one of auto, required"
                                ),
                            ))
                        }
                    }
                }
                // `{"type": "function", "function": {"name": ...}}`, or the legacy
                // `function_call: {"name": ...}`.
                _ => {
                    let name = object
                        .get("function")
                        .and_then(|f| f.get("name"))
                        .or_else(|| object.get("name"))
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            ApiError::invalid_param(
                                field,
                                format!(
                                    "`{field}` must be auto, none, required or name a function"
                                ),
                            )
                        })?;
                    known(name)?;
                    json!({ "mode": "ANY", "allowedFunctionNames": [name] })
                }
            }
        }
        _ => {
            return Err(ApiError::invalid_param(
                field,
                format!("`{field}` must be a string or an object"),
            ))
        }
    };
    Ok((declarations, Some(config)))
}

fn declaration(function: &Value, at: &str, budget: &mut schema::Budget) -> Result<Value, ApiError> {
    let name = function_name(function, at)?;
    let mut declaration = Map::new();
    declaration.insert("name".into(), Value::String(name.to_owned()));
    if let Some(description) = function
        .get("description")
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty())
    {
        declaration.insert("description".into(), Value::String(description.to_owned()));
    }
    let parameters = function.get("parameters").unwrap_or(&Value::Null);
    let cleaned = schema::sanitize_parameters(parameters, budget).map_err(|problem| {
        ApiError::invalid_param(
            &format!("{at}.parameters"),
            format!("{at}.parameters {problem}"),
        )
    })?;
    if let Some(parameters) = cleaned {
        declaration.insert("parameters".into(), parameters);
    }
    Ok(Value::Object(declaration))
}

// ---------------------------------------------------------------------------------
// generationConfig

/// A request field that is present and not `null` (clients often send explicit nulls).
fn present<'a>(params: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    params.get(key).filter(|v| !v.is_null())
}

fn number(params: &Map<String, Value>, key: &str) -> Result<Option<Value>, ApiError> {
    match present(params, key) {
        None => Ok(None),
        Some(v @ Value::Number(_)) => Ok(Some(v.clone())),
        Some(_) => Err(ApiError::invalid_param(
            key,
            format!("`{key}` must be a number"),
        )),
    }
}

fn integer(params: &Map<String, Value>, key: &str, min: i64) -> Result<Option<i64>, ApiError> {
    match present(params, key) {
        None => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if n >= min => Ok(Some(n)),
            _ => Err(ApiError::invalid_param(
                key,
                format!("`{key}` must be an integer of at least {min}"),
            )),
        },
    }
}

fn generation_config(
    params: &Map<String, Value>,
    budget: &mut schema::Budget,
) -> Result<Map<String, Value>, ApiError> {
    let mut config = Map::new();
    for (openai, gemini) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
        if let Some(value) = number(params, openai)? {
            config.insert(gemini.into(), value);
        }
    }
    if let Some(top_k) = integer(params, "top_k", 1)? {
        config.insert("topK".into(), top_k.into());
    }
    // `max_completion_tokens` is the current name; it wins over the deprecated one.
    let max_tokens = match integer(params, "max_completion_tokens", 1)? {
        Some(n) => Some(n),
        None => integer(params, "max_tokens", 1)?,
    };
    if let Some(max) = max_tokens {
        config.insert("maxOutputTokens".into(), max.into());
    }
    if let Some(stop) = present(params, "stop") {
        let sequences: Vec<Value> = match stop {
            Value::String(s) => vec![Value::String(s.clone())],
            Value::Array(items) if items.iter().all(Value::is_string) => items
                .iter()
                .filter(|s| s.as_str().is_some_and(|s| !s.is_empty()))
                .cloned()
                .collect(),
            _ => {
                return Err(ApiError::invalid_param(
                    "stop",
                    "`stop` must be a string or a list of strings",
                ))
            }
        };
        if sequences.len() > MAX_STOP_SEQUENCES {
            return Err(ApiError::invalid_param(
                "stop",
                format!("Gemini accepts at most {MAX_STOP_SEQUENCES} stop sequences"),
            ));
        }
        if !sequences.is_empty() {
            config.insert("stopSequences".into(), Value::Array(sequences));
        }
    }
    if let Some(n) = integer(params, "n", 1)? {
        if n > 1 {
            config.insert("candidateCount".into(), n.into());
        }
    }
    if let Some(seed) = present(params, "seed") {
        if !seed.is_i64() && !seed.is_u64() {
            return Err(ApiError::invalid_param("seed", "`seed` must be an integer"));
        }
        config.insert("seed".into(), seed.clone());
    }
    if let Some(format) = present(params, "response_format") {
        apply_response_format(format, &mut config, budget)?;
    }
    Ok(config)
}

/// `reasoning_effort` → Gemini's thinking budget (2.x models) in tokens.
pub const THINKING_BUDGETS: [(&str, i64); 5] = [
    ("minimal", 512),
    ("low", 1024),
    ("medium", 8192),
    ("high", 24576),
    ("xhigh", 32768),
];

/// `reasoning_effort` → `thinkingConfig`, with `includeThoughts` so that the
/// thoughts come back as `reasoning_content`. Gemini 3 takes a `thinkingLevel`
/// (`low` / `high`; Flash models also `minimal` / `medium`), earlier models a
/// `thinkingBudget`; `none` turns thinking off where the model allows it
/// (budget 0; 128, the least, on 2.5 Pro; level `minimal` on Gemini 3 Flash, `low`
/// on other Gemini 3 models).
fn thinking_config(params: &Map<String, Value>, model: &str) -> Result<Option<Value>, ApiError> {
    let effort = match present(params, "reasoning_effort") {
        None => return Ok(None),
        Some(Value::String(effort)) => effort.as_str(),
        Some(_) => {
            return Err(ApiError::invalid_param(
                "reasoning_effort",
                "`reasoning_effort` must be a string",
            ))
        }
    };
    let budget = THINKING_BUDGETS
        .iter()
        .find(|(name, _)| *name == effort)
        .map(|(_, b)| *b);
    if budget.is_none() && effort != "none" {
        return Err(ApiError::invalid_param(
            "reasoning_effort",
            format!("unknown `reasoning_effort` '{effort}' (expected none, minimal, low, medium, high or xhigh)"),
        ));
    }
    let model = model.trim_start_matches("models/").to_ascii_lowercase();
    if model.starts_with("gemini-3") {
        let flash = model.contains("flash");
        let level = match effort {
            "none" | "minimal" if flash => "minimal",
            "medium" if flash => "medium",
            "none" | "minimal" | "low" => "low",
            _ => "high",
        };
        return Ok(Some(
            json!({"thinkingLevel": level, "includeThoughts": effort != "none"}),
        ));
    }
    Ok(Some(match budget {
        Some(budget) => json!({"thinkingBudget": budget, "includeThoughts": true}),
        // 2.5 Pro cannot stop thinking: its smallest budget instead.
        None if model.contains("pro") => json!({"thinkingBudget": 128}),
        None => json!({"thinkingBudget": 0}),
    }))
}

fn apply_response_format(
    format: &Value,
    config: &mut Map<String, Value>,
    budget: &mut schema::Budget,
) -> Result<(), ApiError> {
    let kind = format.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "text" => {}
        "json_object" => {
            config.insert("responseMimeType".into(), "application/json".into());
        }
        "json_schema" => {
            config.insert("responseMimeType".into(), "application/json".into());
            let schema = format
                .get("json_schema")
                .and_then(|s| s.get("schema"))
                .filter(|s| !s.is_null());
            if let Some(schema) = schema {
                let cleaned = schema::sanitize(schema, budget).map_err(|problem| {
                    ApiError::invalid_param(
                        "response_format.json_schema.schema",
                        format!("response_format.json_schema.schema {problem}"),
                    )
                })?;
                config.insert("responseSchema".into(), cleaned);
            }
        }
        other => {
            return Err(ApiError::invalid_param(
                "response_format",
                format!(
                    "response_format type '{other}' is not one of text, json_object, json_schema"
                ),
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(params: Value) -> UpstreamCall {
        UpstreamCall {
            model: "gemini-2.5-flash".into(),
            params: params.as_object().unwrap().clone(),
            headers: http::HeaderMap::new(),
            header_case: Default::default(),
            gateway_usage: false,
            raw_body: None,
        }
    }

    fn build(params: Value) -> Result<Value, ApiError> {
        build_request(&call(params), &RequestOptions::default()).map(Value::Object)
    }

    fn err_message(result: Result<Value, ApiError>) -> String {
        let err = result.unwrap_err();
        assert_eq!(err.status(), http::StatusCode::BAD_REQUEST, "{err:?}");
        err.error_object()["message"].as_str().unwrap().to_owned()
    }

    #[test]
    fn system_messages_anywhere_and_turns_merged() {
        let body = build(json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "developer", "content": [{"type": "text", "text": "and kind"}]},
            {"role": "user", "content": [{"type": "text", "text": "there"}, {"type": "text", "text": ""}]},
            {"role": "assistant", "content": "hello"},
            {"role": "assistant", "content": [{"type": "text", "text": "again"}]},
            {"role": "user", "content": ""}
        ]}))
        .unwrap();
        assert_eq!(
            body,
            json!({
                "contents": [
                    {"role": "user", "parts": [{"text": "hi"}, {"text": "there"}]},
                    {"role": "model", "parts": [{"text": "hello"}, {"text": "again"}]}
                ],
                "systemInstruction": {"parts": [{"text": "be brief"}, {"text": "and kind"}]}
            })
        );
    }

    #[test]
    fn gcs_uris_only_where_the_connection_allows_them() {
        for url in ["gs://bucket/doc.pdf", "GS://bucket/doc.pdf"] {
            let params = json!({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": url}]}]});
            let err = build(params.clone()).unwrap_err();
            assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
            assert_eq!(err.error_object()["param"], "messages[0].content[0]");
            assert!(err_message(Err(err)).contains("allow_gcs_uris"));
            let allowed = RequestOptions {
                allow_gcs_uris: true,
                ..Default::default()
            };
            let body = build_request(&call(params), &allowed).unwrap();
            assert_eq!(
                body["contents"][0]["parts"],
                json!([{"fileData": {"mimeType": "application/pdf", "fileUri": url}}])
            );
        }
    }

    #[test]
    fn images_audio_and_files() {
        let body = build(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.JPG?size=large", "detail": "low"}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "mp3"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}}
        ]}]}))
        .unwrap();
        assert_eq!(
            body["contents"][0]["parts"],
            json!([
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.JPG?size=large"}},
                {"inlineData": {"mimeType": "audio/mp3", "data": "UklGRg=="}},
                {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}}
            ])
        );
        let unknown = build(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/image"}}]}]}));
        assert!(err_message(unknown).contains("data URL"));
        let not_b64 = build(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png,raw"}}]}]}));
        assert!(err_message(not_b64).contains("base64"));
        let ftp = build(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]}));
        assert!(err_message(ftp).contains("URL"));
        let file_id = build(json!({"messages": [{"role": "user", "content": [
            {"type": "file", "file": {"file_id": "file-1"}}]}]}));
        assert!(err_message(file_id).contains("file_id"));
    }

    #[test]
    fn parallel_tool_calls_and_results() {
        let body = build(json!({"messages": [
            {"role": "user", "content": "weather and time in Oslo?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "call_a", "content": "{\"temp\": 3}"},
            {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "12:00"}]},
            {"role": "user", "content": "thanks"}
        ]}))
        .unwrap();
        assert_eq!(
            body["contents"],
            json!([
                {"role": "user", "parts": [{"text": "weather and time in Oslo?"}]},
                {"role": "model", "parts": [
                    {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
                    {"functionCall": {"name": "get_time", "args": {}}}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"temp": 3}}},
                    {"functionResponse": {"name": "get_time", "response": {"content": "12:00"}}},
                    {"text": "thanks"}
                ]}
            ])
        );
    }

    #[test]
    fn tool_results_and_arguments_edge_cases() {
        assert_eq!(tool_response("[1,2]"), json!({"content": [1, 2]}));
        assert_eq!(tool_response("42"), json!({"content": 42}));
        assert_eq!(tool_response("sunny"), json!({"content": "sunny"}));
        assert_eq!(tool_response(""), json!({"content": ""}));
        assert_eq!(parse_arguments(Some(&json!("")), "x").unwrap(), json!({}));
        assert_eq!(
            parse_arguments(Some(&json!("null")), "x").unwrap(),
            json!({})
        );
        assert_eq!(parse_arguments(None, "x").unwrap(), json!({}));
        assert_eq!(
            parse_arguments(Some(&json!({"a": 1})), "x").unwrap(),
            json!({"a": 1})
        );
        assert!(parse_arguments(Some(&json!("{bad")), "x").is_err());
        assert!(parse_arguments(Some(&json!("[1]")), "x").is_err());

        let orphan = build(json!({"messages": [
            {"role": "user", "content": "x"},
            {"role": "tool", "tool_call_id": "nope", "content": "1"}
        ]}));
        assert!(err_message(orphan).contains("nope"));
        let named = build(json!({"messages": [
            {"role": "user", "content": "x"},
            {"role": "tool", "tool_call_id": "nope", "name": "f", "content": "1"}
        ]}))
        .unwrap();
        assert_eq!(
            named["contents"][0]["parts"][1]["functionResponse"]["name"],
            "f"
        );
    }

    #[test]
    fn tools_and_tool_choice() {
        let tools = json!([
            {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false}}},
            {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
            {"type": "function", "function": {"name": "ping"}}
        ]);
        let with = |choice: Value| {
            build(
                json!({"messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": choice}),
            )
        };
        let body = with(json!("auto")).unwrap();
        assert_eq!(
            body["tools"],
            json!([{"functionDeclarations": [
                {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
                {"name": "get_time"},
                {"name": "ping"}
            ]}])
        );
        assert_eq!(
            body["toolConfig"],
            json!({"functionCallingConfig": {"mode": "AUTO"}})
        );
        assert_eq!(
            with(json!("none")).unwrap()["toolConfig"]["functionCallingConfig"],
            json!({"mode": "NONE"})
        );
        assert_eq!(
            with(json!("required")).unwrap()["toolConfig"]["functionCallingConfig"],
            json!({"mode": "ANY"})
        );
        assert_eq!(
            with(json!({"type": "function", "function": {"name": "get_time"}})).unwrap()
                ["toolConfig"]["functionCallingConfig"],
            json!({"mode": "ANY", "allowedFunctionNames": ["get_time"]})
        );
        assert!(err_message(with(
            json!({"type": "function", "function": {"name": "nope"}})
        ))
        .contains("nope"));
        assert!(with(json!("sometimes")).is_err());
        let auto_subset = with(json!({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": {"name": "ping"}}]}})).unwrap();
        assert_eq!(
            auto_subset["tools"],
            json!([{"functionDeclarations": [{"name": "ping"}]}])
        );
        let no_tools = build(
            json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}),
        );
        assert!(err_message(no_tools).contains("no tools"));
        let custom = build(
            json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "custom", "custom": {"name": "x"}}]}),
        );
        assert!(err_message(custom).contains("custom"));
        let legacy = build(json!({"messages": [{"role": "user", "content": "x"}],
            "functions": [{"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}],
            "function_call": {"name": "f"}}))
        .unwrap();
        assert_eq!(
            legacy["toolConfig"]["functionCallingConfig"],
            json!({"mode": "ANY", "allowedFunctionNames": ["f"]})
        );
    }

    #[test]
    fn generation_config_fields() {
        let body = build(json!({"messages": [{"role": "user", "content": "x"}],
            "temperature": 0.3, "top_p": 0.9, "top_k": 40, "max_tokens": 100, "max_completion_tokens": 200,
            "stop": ["a", "b"], "n": 2, "seed": 7, "presence_penalty": 0.5, "frequency_penalty": -0.5,
            "response_format": {"type": "json_schema", "json_schema": {"name": "r", "strict": true,
                "schema": {"type": "object", "properties": {"a": {"type": ["string", "null"]}}, "additionalProperties": false}}},
            "logit_bias": {"1": 2}, "user": "u", "parallel_tool_calls": false, "stream_options": {"include_usage": true},
            "temperature_unknown": null
        }))
        .unwrap();
        assert_eq!(
            body["generationConfig"],
            json!({
                "temperature": 0.3, "topP": 0.9, "presencePenalty": 0.5, "frequencyPenalty": -0.5,
                "topK": 40, "maxOutputTokens": 200, "stopSequences": ["a", "b"], "candidateCount": 2, "seed": 7,
                "responseMimeType": "application/json",
                "responseSchema": {"type": "object", "properties": {"a": {"type": "string", "nullable": true}}}
            })
        );
        assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
        let single = build(
            json!({"messages": [{"role": "user", "content": "x"}], "stop": "END", "n": 1,
            "response_format": {"type": "json_object"}}),
        )
        .unwrap();
        assert_eq!(
            single["generationConfig"],
            json!({"stopSequences": ["END"], "responseMimeType": "application/json"})
        );
        let too_many = build(
            json!({"messages": [{"role": "user", "content": "x"}], "stop": ["1", "2", "3", "4", "5", "6"]}),
        );
        assert!(err_message(too_many).contains("at most 5"));
        assert!(build(
            json!({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"})
        )
        .is_err());
        assert!(build(json!({"messages": [{"role": "user", "content": "x"}], "n": 0})).is_err());
        assert!(
            build(json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}))
                .is_err()
        );
        assert!(build(json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "yaml"}})).is_err());
        assert!(
            build(json!({"messages": [{"role": "system", "content": "only system"}]})).is_err()
        );
        assert!(build(json!({"messages": [{"role": "narrator", "content": "x"}]})).is_err());
    }

    #[test]
    fn reasoning_effort_becomes_a_thinking_config() {
        let with = |model: &str, effort: Value| {
            let mut c = call(
                json!({"messages": [{"role": "user", "content": "x"}], "reasoning_effort": effort}),
            );
            c.model = model.to_owned();
            build_request(&c, &RequestOptions::default())
                .map(|b| Value::Object(b)["generationConfig"]["thinkingConfig"].clone())
        };
        assert_eq!(
            with("gemini-2.5-flash", json!("medium")).unwrap(),
            json!({"thinkingBudget": 8192, "includeThoughts": true})
        );
        assert_eq!(
            with("gemini-2.5-flash", json!("none")).unwrap(),
            json!({"thinkingBudget": 0})
        );
        assert_eq!(
            with("models/gemini-3-pro-preview", json!("medium")).unwrap(),
            json!({"thinkingLevel": "high", "includeThoughts": true})
        );
        assert_eq!(
            with("gemini-3-pro-preview", json!("minimal")).unwrap(),
            json!({"thinkingLevel": "low", "includeThoughts": true})
        );
        assert_eq!(
            with("gemini-3-flash-preview", json!("medium")).unwrap(),
            json!({"thinkingLevel": "medium", "includeThoughts": true})
        );
        assert_eq!(
            with("gemini-3-flash-preview", json!("none")).unwrap(),
            json!({"thinkingLevel": "minimal", "includeThoughts": false})
        );
        assert_eq!(
            with("gemini-2.5-pro", json!("none")).unwrap(),
            json!({"thinkingBudget": 128})
        );
        assert_eq!(with("gemini-2.5-pro", Value::Null).unwrap(), Value::Null);
        assert!(err_message(with("gemini-2.5-pro", json!("max"))).contains("reasoning_effort"));
        assert!(with("gemini-2.5-pro", json!(3)).is_err());
    }

    #[test]
    fn safety_settings_are_added() {
        let options = RequestOptions {
            safety_settings: Some(
                json!([{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]),
            ),
            ..Default::default()
        };
        let body = build_request(
            &call(json!({"messages": [{"role": "user", "content": "x"}]})),
            &options,
        )
        .unwrap();
        assert_eq!(body["safetySettings"][0]["threshold"], json!("BLOCK_NONE"));
    }

    /// Definitions that each refer to the one below twice: 2^depth copies once
    /// inlined (a 2 KB request became a 31 MB upstream body before the budget).
    fn doubling_schema(levels: usize) -> Value {
        let mut defs = Map::new();
        defs.insert(
            "D0".into(),
            json!({"type": "string", "description": "leaf"}),
        );
        for i in 1..=levels {
            let below = format!("#/$defs/D{}", i - 1);
            defs.insert(
                format!("D{i}"),
                json!({"type": "object", "properties": {"a": {"$ref": below}, "b": {"$ref": below}}}),
            );
        }
        json!({"type": "object", "$defs": defs,
               "properties": {"x": {"$ref": format!("#/$defs/D{levels}")}}})
    }

    #[test]
    fn ref_expansion_is_bounded_per_request_and_names_the_schema() {
        let bomb = doubling_schema(30);
        assert!(bomb.to_string().len() < 3_000);
        let started = std::time::Instant::now();
        let err = build(json!({"messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": bomb}}]}))
        .unwrap_err();
        assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
        let error = err.error_object();
        assert_eq!(error["param"], "tools[0].parameters", "{error}");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("`$ref`s are inlined"),
            "{error}"
        );
        // Refused early, not after building the copies.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));

        // The same in a response schema.
        let err = build(json!({"messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": doubling_schema(30)}}}))
        .unwrap_err();
        assert_eq!(
            err.error_object()["param"],
            "response_format.json_schema.schema"
        );

        // A few levels are fine, and the allowance is per request: many tools that
        // each stay under it can still exceed it together.
        let small = doubling_schema(6);
        assert!(build(json!({"messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": small}}]}))
        .is_ok());
        let tools: Vec<Value> = (0..200)
            .map(|i| json!({"type": "function", "function": {"name": format!("f{i}"), "parameters": doubling_schema(6)}}))
            .collect();
        let err = build(json!({"messages": [{"role": "user", "content": "x"}], "tools": tools}))
            .unwrap_err();
        assert!(err.error_object()["param"]
            .as_str()
            .unwrap()
            .ends_with("].parameters"));
    }

    #[test]
    fn ref_expansion_counts_the_bytes_it_copies() {
        // Few nodes, but a 64 KB description copied once per reference.
        let refs: Map<String, Value> = (0..40)
            .map(|i| (format!("p{i}"), json!({"$ref": "#/$defs/Big"})))
            .collect();
        let schema = json!({"type": "object",
            "$defs": {"Big": {"type": "string", "description": "d".repeat(64 * 1024)}},
            "properties": refs});
        let err = build(json!({"messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}]}))
        .unwrap_err();
        assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
    }
}
