//! Canonical answers (`chat.completion`) → Responses API `response` objects, for
//! connections whose upstream does not speak the Responses API; shared with the
//! stream translation (the skeleton, items, usage and status).

use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::json_scan::TokenCounts;

/// A new id with OpenAI's prefix for its kind (`resp`, `msg`, `fc`, `rs`).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// The members of the `response` object that echo the request (as OpenAI's do),
/// made once from the request as the handlers left it.
pub fn skeleton(params: &Map<String, Value>, model: &str) -> Map<String, Value> {
    let get = |key: &str| params.get(key).filter(|v| !v.is_null()).cloned();
    // Sized for every member below (and `output_text` / `usage` added later), so the
    // map is never grown.
    let mut out = Map::with_capacity(28);
    out.insert("id".into(), new_id("resp").into());
    out.insert("object".into(), "response".into());
    out.insert("created_at".into(), crate::streaming::unix_now().into());
    out.insert("status".into(), "in_progress".into());
    out.insert("background".into(), false.into());
    out.insert("error".into(), Value::Null);
    out.insert("incomplete_details".into(), Value::Null);
    out.insert(
        "instructions".into(),
        get("instructions").unwrap_or(Value::Null),
    );
    out.insert(
        "max_output_tokens".into(),
        get("max_output_tokens").unwrap_or(Value::Null),
    );
    out.insert(
        "metadata".into(),
        get("metadata").unwrap_or_else(|| json!({})),
    );
    out.insert("model".into(), model.into());
    out.insert("output".into(), Value::Array(Vec::new()));
    out.insert(
        "parallel_tool_calls".into(),
        get("parallel_tool_calls").unwrap_or(Value::Bool(true)),
    );
    out.insert("previous_response_id".into(), Value::Null);
    let effort = params
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .cloned()
        .unwrap_or(Value::Null);
    out.insert(
        "reasoning".into(),
        json!({"effort": effort, "summary": null}),
    );
    // A translated response is never stored (the gateway keeps no state).
    out.insert("store".into(), false.into());
    out.insert(
        "temperature".into(),
        get("temperature").unwrap_or(Value::Null),
    );
    out.insert(
        "text".into(),
        get("text").unwrap_or_else(|| json!({"format": {"type": "text"}})),
    );
    out.insert(
        "tool_choice".into(),
        get("tool_choice").unwrap_or_else(|| "auto".into()),
    );
    out.insert("tools".into(), get("tools").unwrap_or_else(|| json!([])));
    out.insert("top_p".into(), get("top_p").unwrap_or(Value::Null));
    out.insert("truncation".into(), "disabled".into());
    out.insert("usage".into(), Value::Null);
    out.insert("user".into(), get("user").unwrap_or(Value::Null));
    out
}

/// OpenAI chat `usage` → the Responses API's.
pub fn usage(usage: Option<&Value>) -> Value {
    let count = |object: Option<&Value>, key: &str| {
        object
            .and_then(|o| o.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let details = |key: &str| usage.and_then(|u| u.get(key));
    let input = count(usage, "prompt_tokens");
    let output = count(usage, "completion_tokens");
    let total = usage
        .and_then(|u| u.get("total_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(input + output);
    // Built member by member into maps of their final size (`json!` grows each map
    // as it goes): this runs at the end of every translated stream.
    let one = |key: &str, value: u64| {
        let mut map = Map::with_capacity(1);
        map.insert(key.into(), value.into());
        Value::Object(map)
    };
    let mut out = Map::with_capacity(5);
    out.insert("input_tokens".into(), input.into());
    out.insert(
        "input_tokens_details".into(),
        one(
            "cached_tokens",
            count(details("prompt_tokens_details"), "cached_tokens"),
        ),
    );
    out.insert("output_tokens".into(), output.into());
    out.insert(
        "output_tokens_details".into(),
        one(
            "reasoning_tokens",
            count(details("completion_tokens_details"), "reasoning_tokens"),
        ),
    );
    out.insert("total_tokens".into(), total.into());
    Value::Object(out)
}

/// The Responses API's `usage` in the metrics' terms.
pub fn token_counts(usage: &Value) -> TokenCounts {
    let detail = |object: &str, member: &str| {
        usage
            .get(object)
            .and_then(|d| d.get(member))
            .and_then(Value::as_u64)
    };
    TokenCounts {
        prompt: usage.get("input_tokens").and_then(Value::as_u64),
        completion: usage.get("output_tokens").and_then(Value::as_u64),
        cached: detail("input_tokens_details", "cached_tokens"),
        reasoning: detail("output_tokens_details", "reasoning_tokens"),
    }
}

/// `status` and `incomplete_details` for a chat `finish_reason`: a length stop is
/// `incomplete` (`max_output_tokens`), a content filter too (`content_filter`).
pub fn status(finish_reason: Option<&str>) -> (&'static str, Value) {
    match finish_reason {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// A JSON object of these members in this order, its map allocated at its size
/// (`json!` grows the map as it inserts; these are made for every streamed item).
fn object<const N: usize>(members: [(&str, Value); N]) -> Value {
    let mut map = Map::with_capacity(N);
    for (key, value) in members {
        map.insert(key.to_owned(), value);
    }
    Value::Object(map)
}

pub fn reasoning_item(id: &str, text: &str) -> Value {
    let summary = object([("type", "summary_text".into()), ("text", text.into())]);
    object([
        ("id", id.into()),
        ("type", "reasoning".into()),
        ("summary", Value::Array(vec![summary])),
    ])
}

pub fn text_part(text: &str) -> Value {
    object([
        ("type", "output_text".into()),
        ("text", text.into()),
        ("annotations", Value::Array(Vec::new())),
        ("logprobs", Value::Array(Vec::new())),
    ])
}

pub fn refusal_part(text: &str) -> Value {
    object([("type", "refusal".into()), ("refusal", text.into())])
}

pub fn message_item(id: &str, status: &str, content: Vec<Value>) -> Value {
    object([
        ("id", id.into()),
        ("type", "message".into()),
        ("role", "assistant".into()),
        ("status", status.into()),
        ("content", Value::Array(content)),
    ])
}

pub fn function_call_item(
    id: &str,
    call_id: &str,
    name: &str,
    arguments: &str,
    status: &str,
) -> Value {
    object([
        ("id", id.into()),
        ("type", "function_call".into()),
        ("call_id", call_id.into()),
        ("name", name.into()),
        ("arguments", arguments.into()),
        ("status", status.into()),
    ])
}

/// A `chat.completion` → a `response` (its first choice), on the request's skeleton.
pub fn response(
    completion: &Value,
    mut skeleton: Map<String, Value>,
    connection: &str,
) -> Result<Value, ApiError> {
    let choice = completion
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| {
            ApiError::upstream_failure(format!(
                "connection '{connection}': the answer has no choices"
            ))
        })?;
    let message = choice.get("message").unwrap_or(&Value::Null);
    let finish = choice.get("finish_reason").and_then(Value::as_str);
    let (status, incomplete) = status(finish);
    let item_status = if status == "completed" {
        "completed"
    } else {
        "incomplete"
    };
    let mut output = Vec::new();
    if let Some(thinking) = crate::api::messages::answer::reasoning_text(message) {
        output.push(reasoning_item(&new_id("rs"), thinking));
    }
    let mut content = Vec::new();
    if let Some(text) = message.get("content").and_then(Value::as_str) {
        if !text.is_empty() {
            content.push(text_part(text));
        }
    }
    if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
        content.push(refusal_part(refusal));
    }
    if !content.is_empty() {
        output.push(message_item(&new_id("msg"), item_status, content));
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let function = call.get("function").unwrap_or(&Value::Null);
        let call_id = call
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| new_id("call"));
        output.push(function_call_item(
            &new_id("fc"),
            &call_id,
            function
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            function
                .get("arguments")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            "completed",
        ));
    }
    skeleton.insert("status".into(), status.into());
    skeleton.insert("incomplete_details".into(), incomplete);
    skeleton.insert("output".into(), Value::Array(output));
    skeleton.insert("usage".into(), usage(completion.get("usage")));
    Ok(Value::Object(skeleton))
}

/// Ids and the creation time of a written event or response, made constant (for
/// tests that compare whole texts).
#[cfg(test)]
pub fn normalized(text: &str) -> String {
    let mut out = text.to_owned();
    for prefix in ["resp_", "msg_", "fc_", "rs_", "call_"] {
        let mut from = 0;
        while let Some(at) = out[from..].find(prefix).map(|i| i + from) {
            let id = at + prefix.len();
            let hex = out[id..].bytes().take_while(u8::is_ascii_hexdigit).count();
            if hex == 32 {
                out.replace_range(id..id + 32, "ID");
            }
            from = id;
        }
    }
    while let Some(at) = out.find("\"created_at\":1") {
        let digits = out[at + 13..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        out.replace_range(at + 13..at + 13 + digits, "0");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_default_to_zero_and_the_total_to_their_sum() {
        let zero = json!({"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens": 0, "output_tokens_details": {"reasoning_tokens": 0},
                          "total_tokens": 0});
        assert_eq!(usage(None), zero);
        let partial =
            json!({"prompt_tokens": 5, "completion_tokens": 7, "prompt_tokens_details": null});
        let converted = usage(Some(&partial));
        assert_eq!(converted["total_tokens"], 12);
        assert_eq!(converted["input_tokens_details"]["cached_tokens"], 0);
        assert_eq!(
            serde_json::to_string(&converted).unwrap(),
            r#"{"input_tokens":5,"input_tokens_details":{"cached_tokens":0},"output_tokens":7,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":12}"#
        );
    }

    #[test]
    fn a_completion_becomes_a_response() {
        let completion = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "up-1",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Let me look.", "reasoning_content": "think",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get", "arguments": "{\"q\": 1}"}}],
            }}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14,
                      "prompt_tokens_details": {"cached_tokens": 3},
                      "completion_tokens_details": {"reasoning_tokens": 2}},
        });
        let params = json!({"instructions": "x", "max_output_tokens": 9, "metadata": {"k": "v"}});
        let skeleton = skeleton(params.as_object().unwrap(), "up-1");
        let response = response(&completion, skeleton, "c").unwrap();
        let written = normalized(&serde_json::to_string(&response).unwrap());
        assert_eq!(
            written + "\n",
            include_str!("../../../tests/fixtures/responses_answer.txt")
        );
        assert!(response["id"].as_str().unwrap().starts_with("resp_"));
        assert_eq!(response["object"], "response");
        assert_eq!(response["status"], "completed");
        assert_eq!(response["instructions"], "x");
        assert_eq!(response["max_output_tokens"], 9);
        assert_eq!(response["metadata"], json!({"k": "v"}));
        let output = response["output"].as_array().unwrap();
        assert_eq!(output[0]["type"], "reasoning");
        assert_eq!(output[0]["summary"][0]["text"], "think");
        assert_eq!(output[1]["type"], "message");
        assert_eq!(output[1]["content"][0]["text"], "Let me look.");
        assert_eq!(output[2]["type"], "function_call");
        assert_eq!(output[2]["call_id"], "call_1");
        assert_eq!(output[2]["arguments"], "{\"q\": 1}");
        assert_eq!(
            response["usage"],
            json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 3},
                   "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 2},
                   "total_tokens": 14})
        );

        let cut = json!({"choices": [{"finish_reason": "length", "message": {"content": "Hel"}}]});
        let response = super::response(&cut, Map::new(), "c").unwrap();
        assert_eq!(response["status"], "incomplete");
        assert_eq!(
            response["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
        assert_eq!(response["output"][0]["status"], "incomplete");
        let none = json!({"choices": []});
        assert_eq!(
            super::response(&none, Map::new(), "c")
                .unwrap_err()
                .status(),
            502
        );
    }
}
