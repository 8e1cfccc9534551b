//! OpenAI `tools`, `tool_choice` and `response_format` → Anthropic tools and
//! `tool_choice` (reference §2.9, §5.15): the JSON answer is a forced tool.

use serde_json::{json, Map, Value};

use super::request::{JsonMode, JSON_TOOL_NAME};
use crate::error::ApiError;

pub fn convert_tools(tools: &Value) -> Result<Vec<Value>, ApiError> {
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

pub fn convert_tool_choice(choice: &Value) -> Result<Map<String, Value>, ApiError> {
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
pub fn json_tool(format: &Value) -> Result<Option<(Value, JsonMode)>, ApiError> {
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
