//! Ids the gateway makes up for Gemini answers, and the thought signatures carried
//! inside tool-call ids.
//!
//! Gemini function calls usually come without an id (reference §3.9), so every call
//! gets `call_<response>_<candidate>_<ordinal>`: stable for a given answer (the
//! streamed and the non-streamed translation agree) and within `^[a-zA-Z0-9_-]+$`,
//! the pattern Anthropic enforces when a conversation moves there. Gemini's own call
//! ids are not passed on; results are matched by name and order, which Gemini accepts.
//!
//! Gemini 3 requires the `thoughtSignature` of a function-call part to come back on
//! that part in the history (§3.10), and OpenAI clients cannot carry it anywhere but
//! the tool-call id. So a call that had a signature gets the id
//! `call_..__thought__<signature as url-safe base64>` (the separator LiteLLM uses),
//! and the signature is restored from the id when the history comes back. For
//! `gemini-3*` models, a model turn with function calls but no signature (a history
//! from another provider) gets Google's documented placeholder
//! `skip_thought_signature_validator` on its first call.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::Value;

pub(super) const SIGNATURE_SEPARATOR: &str = "__thought__";
pub(super) const SIGNATURE_PLACEHOLDER: &str = "skip_thought_signature_validator";

/// The stem shared by the ids of one answer: Gemini's `responseId` with anything
/// outside `[A-Za-z0-9_-]` dropped, or a random one when there is none.
pub fn response_stem(response: &Value) -> String {
    stem_of(response.get("responseId").and_then(Value::as_str))
}

/// [`response_stem`] of a `responseId` already read.
pub fn stem_of(response_id: Option<&str>) -> String {
    let from_response: String = response_id
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect();
    if from_response.is_empty() {
        let mut random = uuid::Uuid::new_v4().simple().to_string();
        // 32 hex digits; 16 are plenty to tell answers apart.
        random.truncate(16);
        random
    } else {
        from_response
    }
}

/// The id of a tool call: `call_<stem>_<candidate>_<ordinal>`, plus the thought
/// signature when the part carried one.
pub fn tool_call_id(stem: &str, candidate: u64, ordinal: usize, signature: Option<&str>) -> String {
    let mut id = format!("call_{stem}_{candidate}_{ordinal}");
    if let Some(encoded) = signature.and_then(encode_signature) {
        id.push_str(SIGNATURE_SEPARATOR);
        id.push_str(&encoded);
    }
    id
}

/// `id` with `signature` appended after the separator (`id` unchanged when the
/// signature is not base64).
pub fn with_signature(id: &str, signature: &str) -> String {
    match encode_signature(signature) {
        Some(encoded) => format!("{id}{SIGNATURE_SEPARATOR}{encoded}"),
        None => id.to_owned(),
    }
}

/// Gemini's signature (standard base64 bytes) as url-safe base64 without padding, so
/// that the id stays within `[A-Za-z0-9_-]`.
fn encode_signature(signature: &str) -> Option<String> {
    let bytes = STANDARD
        .decode(signature)
        .or_else(|_| URL_SAFE_NO_PAD.decode(signature.trim_end_matches('=')))
        .ok()?;
    (!bytes.is_empty()).then(|| URL_SAFE_NO_PAD.encode(bytes))
}

/// The thought signature carried in a tool-call id, as Gemini wants it back.
pub fn signature_from_call_id(id: &str) -> Option<String> {
    let (_, encoded) = id.split_once(SIGNATURE_SEPARATOR)?;
    let bytes = URL_SAFE_NO_PAD.decode(encoded).ok()?;
    (!bytes.is_empty()).then(|| STANDARD.encode(bytes))
}

/// Whether histories for this model need a placeholder signature when none is known.
pub fn needs_signature_placeholder(model: &str) -> bool {
    model
        .trim_start_matches("models/")
        .to_ascii_lowercase()
        .starts_with("gemini-3")
}

/// Put the placeholder on the first function call of a model turn that has calls but
/// no signature at all.
pub fn add_signature_placeholder(parts: &mut [Value]) {
    let has_signature = parts.iter().any(|p| p.get("thoughtSignature").is_some());
    if has_signature {
        return;
    }
    if let Some(first_call) = parts.iter_mut().find(|p| p.get("functionCall").is_some()) {
        first_call["thoughtSignature"] = Value::String(SIGNATURE_PLACEHOLDER.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_stable_and_match_the_pattern() {
        let stem = response_stem(&json!({"responseId": "mX9k.Z0a/BC+"}));
        assert_eq!(stem, "mX9kZ0aBC");
        let id = tool_call_id(&stem, 1, 2, None);
        assert_eq!(id, "call_mX9kZ0aBC_1_2");
        let random = response_stem(&json!({}));
        assert_eq!(random.len(), 16);
        let signed = tool_call_id(&stem, 0, 0, Some("CiQB4/H+abc="));
        assert!(signed
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        assert_eq!(
            signature_from_call_id(&signed).as_deref(),
            Some("CiQB4/H+abc=")
        );
        assert_eq!(signature_from_call_id("call_x_0_0"), None);
        // Not base64: dropped rather than corrupting the id.
        assert_eq!(tool_call_id("s", 0, 0, Some("***")), "call_s_0_0");
    }

    #[test]
    fn placeholder_only_for_unsigned_gemini_3_turns() {
        assert!(needs_signature_placeholder("gemini-3-pro-preview"));
        assert!(needs_signature_placeholder("models/Gemini-3.1-flash"));
        assert!(!needs_signature_placeholder("gemini-2.5-flash"));
        let mut parts = vec![
            json!({"text": "x"}),
            json!({"functionCall": {"name": "a", "args": {}}}),
            json!({"functionCall": {"name": "b", "args": {}}}),
        ];
        add_signature_placeholder(&mut parts);
        assert_eq!(parts[1]["thoughtSignature"], SIGNATURE_PLACEHOLDER);
        assert!(parts[2].get("thoughtSignature").is_none());
        let mut signed = vec![
            json!({"functionCall": {"name": "a", "args": {}}}),
            json!({"functionCall": {"name": "b", "args": {}}, "thoughtSignature": "AAAA"}),
        ];
        add_signature_placeholder(&mut signed);
        assert!(signed[0].get("thoughtSignature").is_none());
    }
}
