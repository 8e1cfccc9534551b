//! Signed thinking blocks on the chat door.
//!
//! Claude's `thinking` blocks carry a `signature` (and `redacted_thinking` blocks
//! an opaque `data`) that Anthropic wants back, unchanged, on the assistant turn
//! that continues a tool-use loop. OpenAI clients keep `content` and `tool_calls`
//! of that turn, sometimes the `reasoning_content` text, rarely anything else. So
//! the blocks travel two ways:
//!
//! - on the answer, as `thinking_blocks` of the message (LiteLLM's convention), which
//!   a client that sends the message back whole returns as it got it;
//! - kept here, server-side, under stable handles the client does return: the
//!   turn's tool-call ids (Anthropic's `toolu_...`, unguessable) and a SHA-256 of
//!   the turn's reasoning text. The cache is process-wide (a reload does not lose
//!   it), bounded by bytes and forgets a turn after an hour without use.
//!
//! A turn whose blocks are found neither way goes upstream without them, as before
//! (Anthropic then treats its reasoning as absent).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use moka::sync::Cache;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Bytes of thinking blocks kept at most (text and signatures counted).
const CAPACITY_BYTES: u64 = 64 * 1024 * 1024;
/// A turn unused this long is forgotten.
const TIME_TO_IDLE: Duration = Duration::from_secs(3600);

type Blocks = Arc<Vec<Value>>;

fn store() -> &'static Cache<String, Blocks> {
    static STORE: OnceLock<Cache<String, Blocks>> = OnceLock::new();
    STORE.get_or_init(|| {
        Cache::builder()
            .max_capacity(CAPACITY_BYTES)
            .weigher(|key: &String, blocks: &Blocks| {
                let size: usize = blocks.iter().map(block_size).sum();
                u32::try_from(size.saturating_add(key.len())).unwrap_or(u32::MAX)
            })
            .time_to_idle(TIME_TO_IDLE)
            .build()
    })
}

fn block_size(block: &Value) -> usize {
    ["thinking", "signature", "data"]
        .iter()
        .filter_map(|k| block.get(*k).and_then(Value::as_str))
        .map(str::len)
        .sum::<usize>()
        + 32
}

fn tool_key(id: &str) -> String {
    format!("tool:{id}")
}

fn reasoning_key(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut key = String::with_capacity(10 + 64);
    key.push_str("reasoning:");
    for byte in digest {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

/// A block Anthropic takes back: a `thinking` block with a non-empty signature or a
/// `redacted_thinking` block with its data, reduced to the fields Anthropic defined.
pub fn signed_block(block: &Value) -> Option<Value> {
    let text = |k: &str| block.get(k).and_then(Value::as_str);
    match text("type")? {
        "thinking" => {
            let signature = text("signature").filter(|s| !s.is_empty())?;
            Some(
                json!({"type": "thinking", "thinking": text("thinking").unwrap_or(""), "signature": signature}),
            )
        }
        "redacted_thinking" => {
            let data = text("data").filter(|s| !s.is_empty())?;
            Some(json!({"type": "redacted_thinking", "data": data}))
        }
        _ => None,
    }
}

/// The reasoning text of a turn's blocks, as the chat answer shows it.
pub fn reasoning_text(blocks: &[Value]) -> String {
    blocks
        .iter()
        .filter_map(|b| b.get("thinking").and_then(Value::as_str))
        .collect()
}

/// Keep the signed blocks of one answer under its tool-call ids and its reasoning
/// text. Nothing is kept for an answer without signed blocks.
pub fn remember<'a>(blocks: Vec<Value>, tool_ids: impl IntoIterator<Item = &'a str>) {
    if blocks.is_empty() {
        return;
    }
    let reasoning = reasoning_text(&blocks);
    let blocks = Arc::new(blocks);
    let cache = store();
    for id in tool_ids {
        if !id.is_empty() {
            cache.insert(tool_key(id), blocks.clone());
        }
    }
    if !reasoning.is_empty() {
        cache.insert(reasoning_key(&reasoning), blocks);
    }
}

/// The signed blocks of an earlier answer: by the first of its tool-call ids that
/// is known, else by its reasoning text.
pub fn recall<'a>(
    tool_ids: impl IntoIterator<Item = &'a str>,
    reasoning: Option<&str>,
) -> Option<Vec<Value>> {
    let cache = store();
    tool_ids
        .into_iter()
        .find_map(|id| cache.get(&tool_key(id)))
        .or_else(|| {
            reasoning
                .filter(|r| !r.is_empty())
                .and_then(|r| cache.get(&reasoning_key(r)))
        })
        .map(|blocks| blocks.as_ref().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_come_back_by_tool_id_or_reasoning_text() {
        let blocks = vec![
            json!({"type": "thinking", "thinking": "unit-test thought ", "signature": "sig-u1"}),
            json!({"type": "redacted_thinking", "data": "opaque-u1"}),
        ];
        remember(blocks.clone(), ["toolu_unit_1", ""]);
        assert_eq!(
            recall(["toolu_unknown", "toolu_unit_1"], None),
            Some(blocks.clone())
        );
        assert_eq!(recall([], Some("unit-test thought ")), Some(blocks));
        assert_eq!(recall(["toolu_unknown"], Some("other")), None);
        assert_eq!(recall([], Some("")), None);
    }

    #[test]
    fn only_signed_blocks_are_taken_back() {
        assert_eq!(
            signed_block(
                &json!({"type": "thinking", "thinking": "t", "signature": "s", "extra": 1})
            ),
            Some(json!({"type": "thinking", "thinking": "t", "signature": "s"}))
        );
        assert_eq!(
            signed_block(&json!({"type": "thinking", "thinking": "t", "signature": ""})),
            None
        );
        assert_eq!(
            signed_block(&json!({"type": "thinking", "thinking": "t"})),
            None
        );
        assert_eq!(signed_block(&json!({"type": "redacted_thinking"})), None);
        assert_eq!(signed_block(&json!({"type": "text", "text": "t"})), None);
    }
}
