//! `count_tokens` for connections that do not speak the Messages API: an
//! **estimate**, counted with OpenAI's `o200k_base` BPE (tiktoken-rs; its ranks
//! are compiled into the binary, nothing is downloaded). Claude, Gemini and local
//! models each have their own tokenizer, so the figure is close (typically within
//! 10-20 % for English text and code), not exact: good for budgeting a context
//! window, not for billing.
//!
//! What is counted: the text of `system`, of every message's blocks (text,
//! thinking, tool-use names and inputs, tool results, text documents), the JSON of
//! blocks of any other kind, each tool's name, description and input schema, plus
//! a few tokens of framing per message and per tool. Images and binary documents
//! have no text to count: each counts as [`PER_IMAGE`] tokens.

use serde_json::{Map, Value};
use tiktoken_rs::CoreBPE;

/// Framing of one message (role, separators), as chat formats spend it.
const PER_MESSAGE: u64 = 3;
/// Framing of one tool definition.
const PER_TOOL: u64 = 8;
/// An image or binary document: Anthropic's cost of an image of about 1.15
/// megapixels, the size it scales larger images down to.
pub const PER_IMAGE: u64 = 1600;

/// The estimated `input_tokens` of a Messages API request (already validated).
pub fn estimate(request: &Map<String, Value>) -> u64 {
    let bpe = tiktoken_rs::o200k_base_singleton();
    let mut total = 0;
    match request.get("system") {
        Some(Value::String(text)) => total += text_tokens(bpe, text),
        Some(Value::Array(blocks)) => total += blocks.iter().map(|b| block(bpe, b)).sum::<u64>(),
        _ => {}
    }
    if let Some(Value::Array(messages)) = request.get("messages") {
        for message in messages {
            total += PER_MESSAGE
                + match message.get("content") {
                    Some(Value::String(text)) => text_tokens(bpe, text),
                    Some(Value::Array(blocks)) => blocks.iter().map(|b| block(bpe, b)).sum(),
                    _ => 0,
                };
        }
    }
    if let Some(Value::Array(tools)) = request.get("tools") {
        for tool in tools {
            total += PER_TOOL
                + match tool.get("input_schema") {
                    // A client tool: what the model reads of it.
                    Some(schema) => {
                        let text = |k: &str| tool.get(k).and_then(Value::as_str).unwrap_or("");
                        text_tokens(bpe, text("name"))
                            + text_tokens(bpe, text("description"))
                            + json_tokens(bpe, schema)
                    }
                    None => json_tokens(bpe, tool),
                };
        }
    }
    total
}

fn text_tokens(bpe: &CoreBPE, text: &str) -> u64 {
    // Ordinary encoding: text that looks like a special token is counted as text.
    bpe.encode_ordinary(text).len() as u64
}

fn json_tokens(bpe: &CoreBPE, value: &Value) -> u64 {
    text_tokens(bpe, &value.to_string())
}

fn block(bpe: &CoreBPE, block: &Value) -> u64 {
    let text = |k: &str| block.get(k).and_then(Value::as_str).unwrap_or("");
    match text("type") {
        "text" => text_tokens(bpe, text("text")),
        "thinking" => text_tokens(bpe, text("thinking")),
        // Opaque to the model's tokenizer and ours alike.
        "redacted_thinking" => 0,
        "image" => PER_IMAGE,
        "document" => {
            let source = block.get("source").unwrap_or(&Value::Null);
            match source.get("type").and_then(Value::as_str) {
                Some("text") => text_tokens(
                    bpe,
                    source.get("data").and_then(Value::as_str).unwrap_or(""),
                ),
                Some("content") => nested(bpe, source.get("content")),
                _ => PER_IMAGE,
            }
        }
        "tool_use" => {
            text_tokens(bpe, text("name")) + block.get("input").map_or(0, |i| json_tokens(bpe, i))
        }
        "tool_result" => nested(bpe, block.get("content")),
        _ => json_tokens(bpe, block),
    }
}

/// Content that is a string or a list of blocks (tool results, documents).
fn nested(bpe: &CoreBPE, content: Option<&Value>) -> u64 {
    match content {
        Some(Value::String(text)) => text_tokens(bpe, text),
        Some(Value::Array(blocks)) => blocks.iter().map(|b| block(bpe, b)).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn count(v: Value) -> u64 {
        estimate(v.as_object().unwrap())
    }

    #[test]
    fn counts_real_tokens_of_every_part() {
        // "Hello, world!" is 4 o200k tokens: a character count would say 13.
        assert_eq!(
            count(json!({"messages": [{"role": "user", "content": "Hello, world!"}]})),
            4 + PER_MESSAGE
        );
        let base = count(json!({"messages": [{"role": "user", "content": "hi"}]}));
        let with_system = count(
            json!({"system": "You are terse.", "messages": [{"role": "user", "content": "hi"}]}),
        );
        assert!(with_system > base);
        let blocks = count(
            json!({"system": [{"type": "text", "text": "You are terse."}], "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
        );
        assert_eq!(blocks, with_system);
        let tools = count(json!({"messages": [{"role": "user", "content": "hi"}],
            "tools": [{"name": "get_weather", "description": "Weather of a city.", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]}));
        assert!(tools > base + PER_TOOL + 10, "{tools}");
        let loop_ = count(json!({"messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "use the tool", "signature": "s"},
                {"type": "tool_use", "id": "t", "name": "get_weather", "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "3 degrees"}]},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}]}));
        assert!(loop_ > 3 * PER_MESSAGE + PER_IMAGE + 10, "{loop_}");
        // Special-token text is counted as text, not as one special token.
        assert!(
            count(json!({"messages": [{"role": "user", "content": "<|endoftext|>"}]}))
                > 1 + PER_MESSAGE
        );
    }
}
