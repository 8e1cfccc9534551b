//! Canonical answers (`chat.completion`) → Responses API `response` objects, for
//! connections whose upstream does not speak the Responses API; shared with the
//! stream translation (the skeleton, items, usage and status).
//!
//! Everything here is written as JSON text, member by member in OpenAI's order:
//! a translated stream writes the response three times and each item twice, and
//! building them as trees first (a map insert, with its key hashed, per member) and
//! serializing them cost more than the rest of the translation. Trees are made
//! only for the loggers, by reading the text the client got.

use serde_json::Value;

use crate::context::member_of;
use crate::error::ApiError;
use crate::json_scan::{write_json_str, TokenCounts};

/// A new id with OpenAI's prefix for its kind (`resp`, `msg`, `fc`, `rs`).
pub fn new_id(prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + 33);
    id.push_str(prefix);
    id.push('_');
    crate::context::push_random_hex(&mut id);
    id
}

/// The members of a `response` that change as the answer comes, as JSON text.
pub struct Outcome<'a> {
    /// `in_progress`, `completed`, `incomplete` or `failed`.
    pub status: &'a str,
    pub error: &'a [u8],
    pub incomplete_details: &'a [u8],
    /// The whole `output` array.
    pub output: &'a [u8],
    pub usage: &'a [u8],
}

impl Outcome<'static> {
    /// A response that has only begun.
    pub const IN_PROGRESS: Outcome<'static> = Outcome {
        status: "in_progress",
        error: b"null",
        incomplete_details: b"null",
        output: b"[]",
        usage: b"null",
    };
}

/// A `response` object's text without the members of its [`Outcome`]: the
/// members that echo the request (as OpenAI's do), written once per request from
/// the request as the handlers left it.
#[derive(Clone)]
pub struct Skeleton {
    text: Vec<u8>,
    /// Where the outcome's five members go in `text`, in the order of [`Outcome`]'s
    /// fields (`status`, `error`, `incomplete_details`, `output`, `usage`).
    holes: [usize; 5],
}

/// A request member a skeleton echoes: from the request's tree, or its text as the
/// client wrote it (`chat_body`, which reads the request without a tree).
#[derive(Clone, Copy)]
pub enum Echo<'a> {
    Tree(&'a Value),
    Text(&'a str),
}

impl Echo<'_> {
    /// The length of the text it writes, when known without writing it.
    fn known_len(self) -> usize {
        match self {
            Echo::Tree(_) => 0,
            Echo::Text(text) => text.len(),
        }
    }

    fn write(self, out: &mut Vec<u8>) {
        match self {
            Echo::Tree(value) => write_value(out, value),
            Echo::Text(text) => out.extend_from_slice(text.as_bytes()),
        }
    }
}

impl Skeleton {
    pub fn new(params: &serde_json::Map<String, Value>, model: &str) -> Skeleton {
        let given = |key: &str| {
            crate::context::member(params, key)
                .filter(|v| !v.is_null())
                .map(Echo::Tree)
        };
        let effort = crate::context::member(params, "reasoning")
            .and_then(|r| member_of(r, "effort"))
            .map(Echo::Tree);
        Skeleton::of(given, effort, model)
    }

    /// The skeleton for a request whose members (not `null`) `given` finds, with
    /// `reasoning.effort` (`effort`, when given) and the upstream's `model`.
    pub fn of<'a>(
        given: impl Fn(&str) -> Option<Echo<'a>>,
        effort: Option<Echo<'a>>,
        model: &str,
    ) -> Skeleton {
        // The members' own text and room for the outcome's (an agent's tools and
        // instructions are kilobytes: written into a buffer that grows, they were
        // copied again at each doubling).
        let echoed: usize = [
            "instructions",
            "max_output_tokens",
            "metadata",
            "parallel_tool_calls",
            "temperature",
            "text",
            "tool_choice",
            "tools",
            "top_p",
            "user",
        ]
        .into_iter()
        .filter_map(&given)
        .map(Echo::known_len)
        .sum();
        let mut text = Vec::with_capacity(640 + echoed);
        let mut holes = [0; 5];
        let member = |text: &mut Vec<u8>, key: &str| {
            text.extend_from_slice(if text.is_empty() { b"{\"" } else { b",\"" });
            text.extend_from_slice(key.as_bytes());
            text.extend_from_slice(b"\":");
        };
        // A member the request may set, or its default (JSON text).
        let echoed = |text: &mut Vec<u8>, key: &str, default: &[u8]| {
            member(text, key);
            match given(key) {
                Some(value) => value.write(text),
                None => text.extend_from_slice(default),
            }
        };
        member(&mut text, "id");
        write_json_str(&mut text, &new_id("resp"));
        member(&mut text, "object");
        text.extend_from_slice(b"\"response\"");
        member(&mut text, "created_at");
        text.extend_from_slice(
            itoa::Buffer::new()
                .format(crate::streaming::unix_now())
                .as_bytes(),
        );
        member(&mut text, "status");
        holes[0] = text.len();
        member(&mut text, "background");
        text.extend_from_slice(b"false");
        member(&mut text, "error");
        holes[1] = text.len();
        member(&mut text, "incomplete_details");
        holes[2] = text.len();
        echoed(&mut text, "instructions", b"null");
        echoed(&mut text, "max_output_tokens", b"null");
        echoed(&mut text, "metadata", b"{}");
        member(&mut text, "model");
        write_json_str(&mut text, model);
        member(&mut text, "output");
        holes[3] = text.len();
        echoed(&mut text, "parallel_tool_calls", b"true");
        member(&mut text, "previous_response_id");
        text.extend_from_slice(b"null");
        member(&mut text, "reasoning");
        text.extend_from_slice(b"{\"effort\":");
        match effort {
            Some(effort) => effort.write(&mut text),
            None => text.extend_from_slice(b"null"),
        }
        text.extend_from_slice(b",\"summary\":null}");
        // A translated response is never stored (the gateway keeps no state).
        member(&mut text, "store");
        text.extend_from_slice(b"false");
        echoed(&mut text, "temperature", b"null");
        echoed(&mut text, "text", br#"{"format":{"type":"text"}}"#);
        echoed(&mut text, "tool_choice", b"\"auto\"");
        echoed(&mut text, "tools", b"[]");
        echoed(&mut text, "top_p", b"null");
        member(&mut text, "truncation");
        text.extend_from_slice(b"\"disabled\"");
        member(&mut text, "usage");
        holes[4] = text.len();
        echoed(&mut text, "user", b"null");
        text.push(b'}');
        Skeleton { text, holes }
    }

    /// The whole response with `outcome`'s members.
    pub fn write(&self, outcome: &Outcome<'_>, out: &mut Vec<u8>) {
        let [status, error, incomplete, output, usage] = self.holes;
        let text = &self.text;
        out.reserve(text.len() + outcome.output.len() + outcome.usage.len() + 64);
        out.extend_from_slice(&text[..status]);
        write_json_str(out, outcome.status);
        out.extend_from_slice(&text[status..error]);
        out.extend_from_slice(outcome.error);
        out.extend_from_slice(&text[error..incomplete]);
        out.extend_from_slice(outcome.incomplete_details);
        out.extend_from_slice(&text[incomplete..output]);
        out.extend_from_slice(outcome.output);
        out.extend_from_slice(&text[output..usage]);
        out.extend_from_slice(outcome.usage);
        out.extend_from_slice(&text[usage..]);
    }

    /// The length of the text without the outcome (to size buffers).
    pub fn text_len(&self) -> usize {
        self.text.len()
    }
}

pub fn write_value(out: &mut Vec<u8>, value: &Value) {
    serde_json::to_writer(out, value).expect("JSON values always serialize");
}

/// OpenAI chat `usage` → the Responses API's, as text (counts the upstream left out
/// are 0; the total, their sum).
pub fn write_usage(usage: Option<&Value>, out: &mut Vec<u8>) {
    let count = |object: Option<&Value>, key: &str| {
        object
            .and_then(|o| member_of(o, key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let details = |key: &str| usage.and_then(|u| member_of(u, key));
    let input = count(usage, "prompt_tokens");
    let output = count(usage, "completion_tokens");
    let total = usage
        .and_then(|u| member_of(u, "total_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(input + output);
    let cached = count(details("prompt_tokens_details"), "cached_tokens");
    let reasoning = count(details("completion_tokens_details"), "reasoning_tokens");
    let mut number = |before: &[u8], n: u64| {
        out.extend_from_slice(before);
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    };
    number(b"{\"input_tokens\":", input);
    number(b",\"input_tokens_details\":{\"cached_tokens\":", cached);
    number(b"},\"output_tokens\":", output);
    number(
        b",\"output_tokens_details\":{\"reasoning_tokens\":",
        reasoning,
    );
    number(b"},\"total_tokens\":", total);
    out.push(b'}');
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

/// `status` (`completed` or `incomplete`, which is also the status of the items)
/// and `incomplete_details` (JSON text) for a chat `finish_reason`: a length stop
/// is `incomplete` (`max_output_tokens`), a content filter too (`content_filter`).
pub fn status(finish_reason: Option<&str>) -> (&'static str, &'static [u8]) {
    match finish_reason {
        Some("length") => ("incomplete", br#"{"reason":"max_output_tokens"}"#),
        Some("content_filter") => ("incomplete", br#"{"reason":"content_filter"}"#),
        _ => ("completed", b"null"),
    }
}

/// One part of a message's `content`, or of a reasoning item's `summary`.
#[derive(Clone, Copy)]
pub enum Part<'a> {
    Text(&'a str),
    Refusal(&'a str),
    Summary(&'a str),
}

impl Part<'_> {
    pub fn write(self, out: &mut Vec<u8>) {
        match self {
            Part::Text(text) => {
                out.extend_from_slice(br#"{"type":"output_text","text":"#);
                write_json_str(out, text);
                out.extend_from_slice(br#","annotations":[],"logprobs":[]}"#);
            }
            Part::Refusal(text) => {
                out.extend_from_slice(br#"{"type":"refusal","refusal":"#);
                write_json_str(out, text);
                out.push(b'}');
            }
            Part::Summary(text) => {
                out.extend_from_slice(br#"{"type":"summary_text","text":"#);
                write_json_str(out, text);
                out.push(b'}');
            }
        }
    }
}

/// A reasoning item; its summary is empty while it streams (`None`).
pub fn write_reasoning_item(id: &str, summary: Option<&str>, out: &mut Vec<u8>) {
    out.extend_from_slice(br#"{"id":"#);
    write_json_str(out, id);
    out.extend_from_slice(br#","type":"reasoning","summary":["#);
    if let Some(text) = summary {
        Part::Summary(text).write(out);
    }
    out.extend_from_slice(b"]}");
}

pub fn write_message_item(id: &str, status: &str, content: &[Part<'_>], out: &mut Vec<u8>) {
    out.extend_from_slice(br#"{"id":"#);
    write_json_str(out, id);
    out.extend_from_slice(br#","type":"message","role":"assistant","status":"#);
    write_json_str(out, status);
    out.extend_from_slice(br#","content":["#);
    for (i, part) in content.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        part.write(out);
    }
    out.extend_from_slice(b"]}");
}

pub fn write_function_call_item(
    id: &str,
    call_id: &str,
    name: &str,
    arguments: &str,
    status: &str,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(br#"{"id":"#);
    write_json_str(out, id);
    out.extend_from_slice(br#","type":"function_call","call_id":"#);
    write_json_str(out, call_id);
    out.extend_from_slice(br#","name":"#);
    write_json_str(out, name);
    out.extend_from_slice(br#","arguments":"#);
    write_json_str(out, arguments);
    out.extend_from_slice(br#","status":"#);
    write_json_str(out, status);
    out.push(b'}');
}

/// A `chat.completion` → a `response` (its first choice) on the request's
/// skeleton, as text.
pub fn response(
    completion: &Value,
    skeleton: &Skeleton,
    connection: &str,
) -> Result<Vec<u8>, ApiError> {
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
    // An item's status is the response's: `completed` or `incomplete`.
    let (status, incomplete_details) = status(finish);
    let mut output = Vec::with_capacity(256);
    output.push(b'[');
    // `,` between items.
    let next = |output: &mut Vec<u8>| {
        if output.len() > 1 {
            output.push(b',');
        }
    };
    if let Some(thinking) = crate::api::messages::answer::reasoning_text(message) {
        write_reasoning_item(&new_id("rs"), Some(thinking), &mut output);
    }
    let mut content = Vec::new();
    if let Some(text) = message.get("content").and_then(Value::as_str) {
        if !text.is_empty() {
            content.push(Part::Text(text));
        }
    }
    if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
        content.push(Part::Refusal(refusal));
    }
    if !content.is_empty() {
        next(&mut output);
        write_message_item(&new_id("msg"), status, &content, &mut output);
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let function = call.get("function").unwrap_or(&Value::Null);
        let text = |key: &str| {
            function
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        let call_id = match call.get("id").and_then(Value::as_str) {
            Some(id) => id.to_owned(),
            None => new_id("call"),
        };
        next(&mut output);
        write_function_call_item(
            &new_id("fc"),
            &call_id,
            text("name"),
            text("arguments"),
            "completed",
            &mut output,
        );
    }
    output.push(b']');
    let mut usage = Vec::with_capacity(160);
    write_usage(completion.get("usage"), &mut usage);
    let mut out = Vec::with_capacity(skeleton.text_len() + output.len() + usage.len() + 64);
    let outcome = Outcome {
        status,
        error: b"null",
        incomplete_details,
        output: &output,
        usage: &usage,
    };
    skeleton.write(&outcome, &mut out);
    Ok(out)
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
    use serde_json::{json, Map};

    fn usage(usage: Option<&Value>) -> Value {
        let mut out = Vec::new();
        write_usage(usage, &mut out);
        serde_json::from_slice(&out).unwrap()
    }

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
        let skeleton = Skeleton::new(params.as_object().unwrap(), "up-1");
        let text = response(&completion, &skeleton, "c").unwrap();
        let written = normalized(std::str::from_utf8(&text).unwrap());
        assert_eq!(
            written + "\n",
            include_str!("../../../tests/fixtures/responses_answer.txt")
        );
        let response: Value = serde_json::from_slice(&text).unwrap();
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
        let skeleton = Skeleton::new(&Map::new(), "m");
        let text = super::response(&cut, &skeleton, "c").unwrap();
        let response: Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(response["status"], "incomplete");
        assert_eq!(
            response["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
        assert_eq!(response["output"][0]["status"], "incomplete");
        let none = json!({"choices": []});
        assert_eq!(
            super::response(&none, &skeleton, "c").unwrap_err().status(),
            502
        );
    }
}
