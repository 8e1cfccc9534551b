//! The Anthropic request written straight from the client's bytes. A chat request
//! that `api::raw_chat` let through (no handler or logger will look at it) and whose
//! every member this module knows is written as an Anthropic Messages body in one
//! walk of its text: no tree is parsed, translated into another tree and serialized
//! (that was about 25,000 instructions a request, a tenth of a translated 20-chunk
//! stream; bench/README.md, session 19).
//!
//! It knows the common shape: system, developer, user and assistant messages whose
//! content is a string, `null` or a list of plain text parts, and the settings `max_tokens`,
//! `max_completion_tokens`, `temperature`, `top_p`, `stop`, `user` and `n` (1).
//! Anything else the translation acts on (tools, `response_format`, thinking,
//! `top_k`, other content parts or a `cache_control`, tool messages, an assistant's reasoning) makes [`write`]
//! answer `None`, and the request takes the tree translation
//! (`request::translate`), which also gives every error its answer. Members the
//! translation drops are dropped here too. What [`write`] writes is byte for byte
//! what the tree translation serializes to: the differential test below holds it
//! to that.

use std::borrow::Cow;

use super::request::{json_f64, looks_personal};
use crate::json_scan::{write_json_str, Walk};
use crate::providers::raw_request::{
    members, positive, stop_strings, text_messages, write_strings, write_text_objects,
};

/// Members the tree translation acts on that this writer leaves to it (`n` other
/// than 1 or `null` too, see `providers::raw_request::members`). A stream's
/// `stream_options` (all `raw_chat` lets through: one that asks for the usage) is
/// dropped, as the translation drops it: the usage asked stays with the call.
const LEFT_TO_THE_TREE: [&str; 7] = [
    "top_k",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "reasoning_effort",
    "thinking",
];

/// Message members the translation reads besides `role` and `content` (an
/// assistant's tool calls and earlier reasoning).
const MESSAGE_MEMBERS_LEFT_TO_THE_TREE: [&str; 4] = [
    "tool_calls",
    "thinking_blocks",
    "reasoning_content",
    "reasoning",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    User,
    Assistant,
}

/// One turn of the conversation: its role and its text blocks.
type Turn<'a> = (Role, Vec<Cow<'a, str>>);

/// The Anthropic body for the chat request `body` (a JSON object, checked), sent to
/// `model`, with `"stream": true` when `stream`; `None` when the request has
/// something this writer leaves to the tree translation.
pub fn write(body: &str, model: &str, default_max_tokens: u64, stream: bool) -> Option<Vec<u8>> {
    let [messages, max_tokens, max_completion_tokens, temperature, top_p, stop, user] = members(
        body,
        [
            "messages",
            "max_tokens",
            "max_completion_tokens",
            "temperature",
            "top_p",
            "stop",
            "user",
        ],
        &LEFT_TO_THE_TREE,
    )?;
    let max_tokens = match positive(max_completion_tokens, u64::MAX)? {
        Some(max) => max,
        None => positive(max_tokens, u64::MAX)?.unwrap_or(default_max_tokens),
    };
    let (system, turns) = conversation(messages?)?;
    let mut stop = stop_strings(stop)?;
    stop.retain(|text| !text.trim().is_empty());
    let temperature = number(temperature)?;
    let top_p = number(top_p)?;
    let user = match user {
        None | Some("null") => None,
        Some(raw) => {
            let user = Walk::new(raw).string()?;
            (!user.is_empty() && !looks_personal(&user)).then_some(user)
        }
    };

    let mut out = Vec::with_capacity(body.len() + 128);
    out.extend_from_slice(b"{\"model\":");
    write_json_str(&mut out, model);
    out.extend_from_slice(b",\"max_tokens\":");
    out.extend_from_slice(itoa::Buffer::new().format(max_tokens).as_bytes());
    if !system.is_empty() {
        out.extend_from_slice(b",\"system\":");
        text_blocks(&mut out, &system);
    }
    out.extend_from_slice(b",\"messages\":[");
    for (i, (role, blocks)) in turns.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(match role {
            Role::User => b"{\"role\":\"user\",\"content\":",
            Role::Assistant => b"{\"role\":\"assistant\",\"content\":",
        });
        text_blocks(&mut out, blocks);
        out.push(b'}');
    }
    out.push(b']');
    if !stop.is_empty() {
        out.extend_from_slice(b",\"stop_sequences\":");
        write_strings(&mut out, &stop);
    }
    // As the translation does: the temperature clamped to Anthropic's 0..1, and
    // `top_p` only without a temperature.
    if let Some(t) = temperature {
        out.extend_from_slice(b",\"temperature\":");
        write_number(&mut out, t.clamp(0.0, 1.0));
    } else if let Some(p) = top_p {
        out.extend_from_slice(b",\"top_p\":");
        write_number(&mut out, p);
    }
    if let Some(user) = user {
        out.extend_from_slice(b",\"metadata\":{\"user_id\":");
        write_json_str(&mut out, &user);
        out.push(b'}');
    }
    if stream {
        out.extend_from_slice(b",\"stream\":true");
    }
    out.push(b'}');
    Some(out)
}

/// A finite number as the translation reads it (serde_json's reading, so the same
/// `f64`); `None` for anything else.
fn number(raw: Option<&str>) -> Option<Option<f64>> {
    match raw {
        None | Some("null") => Some(None),
        Some(text) => {
            let value: f64 = serde_json::from_str(text).ok()?;
            value.is_finite().then_some(Some(value))
        }
    }
}

/// A number written as the translation's tree serializes it.
fn write_number(out: &mut Vec<u8>, value: f64) {
    serde_json::to_writer(out, &json_f64(value)).expect("a number always serializes");
}

/// `messages` → (system texts, alternating turns), as `messages::convert_messages`
/// makes them for messages whose content is text (`text_messages`): system and
/// developer messages hoisted, blank texts left out, same-role neighbours merged,
/// a `"."` user turn before a leading assistant turn, a final assistant turn's
/// trailing whitespace trimmed. `None` for anything else, and for a conversation
/// the translation refuses (nothing but system messages).
fn conversation(raw: &str) -> Option<(Vec<Cow<'_, str>>, Vec<Turn<'_>>)> {
    let mut system = Vec::new();
    let mut turns: Vec<Turn<'_>> = Vec::new();
    for message in text_messages(raw, &MESSAGE_MEMBERS_LEFT_TO_THE_TREE)? {
        let texts = message
            .texts
            .into_iter()
            .filter(|text| !text.trim().is_empty());
        let role = match message.role.as_ref() {
            "system" | "developer" => {
                system.extend(texts);
                continue;
            }
            "user" => Role::User,
            "assistant" => Role::Assistant,
            // Tool messages, and roles the translation refuses.
            _ => return None,
        };
        for text in texts {
            match turns.last_mut() {
                Some((last, blocks)) if *last == role => blocks.push(text),
                _ => turns.push((role, vec![text])),
            }
        }
    }
    if turns
        .first()
        .is_some_and(|(role, _)| *role == Role::Assistant)
    {
        turns.insert(0, (Role::User, vec![Cow::Borrowed(".")]));
    }
    if let Some((Role::Assistant, blocks)) = turns.last_mut() {
        if let Some(text) = blocks.last_mut() {
            match text {
                Cow::Borrowed(text) => *text = text.trim_end(),
                Cow::Owned(text) => text.truncate(text.trim_end().len()),
            }
        }
        if blocks.last().is_some_and(|text| text.is_empty()) {
            blocks.pop();
        }
        if blocks.is_empty() {
            turns.pop();
        }
    }
    (!turns.is_empty()).then_some((system, turns))
}

/// `[{"type":"text","text":…},…]`.
fn text_blocks(out: &mut Vec<u8>, texts: &[Cow<'_, str>]) {
    write_text_objects(out, b"{\"type\":\"text\",\"text\":", texts);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::raw_chat;
    use crate::providers::anthropic::request::serialized;
    use crate::providers::anthropic::MAX_CHOICES;
    use crate::providers::fanout::requested_n;

    const DEFAULT_MAX_TOKENS: u64 = 4096;

    /// What the tree path sends for the request `text` (which `raw_chat` let
    /// through): `None` when it refuses the request.
    fn tree_body(text: &str, model: &str, stream: bool) -> Option<Vec<u8>> {
        let raw = raw_chat::read(&bytes::Bytes::from(text.to_owned())).expect("a raw request");
        let params = raw.params().ok()?;
        requested_n(&params, MAX_CHOICES).ok()?;
        let (body, _) = serialized(model, &params, DEFAULT_MAX_TOKENS, stream).ok()?;
        Some(body.to_vec())
    }

    fn written(text: &str, stream: bool) -> Option<String> {
        write(text, "claude-x", DEFAULT_MAX_TOKENS, stream).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn a_usual_request_is_written_as_the_translation_writes_it() {
        let text = r#"{"model":"gpt","messages":[{"role":"system","content":"Be brief."},
            {"role":"user","content":"Hi \"there\" \u00e9"},{"role":"user","content":"  "},
            {"role":"assistant","content":"Hello  "}],"temperature":1.5,"top_p":0.5,
            "stop":["\n"," ","END"],"user":"u-1","seed":7,"n":1}"#;
        let expected = r#"{"model":"claude-x","max_tokens":4096,"system":[{"type":"text","text":"Be brief."}],"messages":[{"role":"user","content":[{"type":"text","text":"Hi \"there\" é"}]},{"role":"assistant","content":[{"type":"text","text":"Hello"}]}],"stop_sequences":["END"],"temperature":1.0,"metadata":{"user_id":"u-1"},"stream":true}"#;
        assert_eq!(written(text, true).as_deref(), Some(expected));
        assert_eq!(
            tree_body(text, "claude-x", true),
            Some(expected.as_bytes().to_vec())
        );
    }

    #[test]
    fn what_the_translation_acts_on_is_left_to_it() {
        let own = [
            r#"{"model":"m","messages":[{"role":"assistant","content":"x","reasoning_content":"r"}]}"#,
            r#"{"model":"m","messages":[{"role":"system","content":"only system"}]}"#,
        ];
        for text in crate::providers::raw_request::arb::LEFT_TO_EVERY_TREE
            .into_iter()
            .chain(own)
        {
            assert!(
                raw_chat::read(&bytes::Bytes::from(text)).is_some(),
                "{text}"
            );
            assert_eq!(written(text, false), None, "{text}");
        }
    }

    /// Whatever the writer writes is what the tree translation sends, byte for
    /// byte; it writes nothing for a request the translation refuses; and it writes
    /// a good share of the requests (so the comparison is not vacuous).
    #[test]
    fn what_is_written_is_what_the_tree_translation_sends() {
        crate::providers::raw_request::arb::each_raw_request(|case, text| {
            let stream = case % 2 == 0;
            let Some(body) = write(text, "claude-x", DEFAULT_MAX_TOKENS, stream) else {
                return false;
            };
            let tree = tree_body(text, "claude-x", stream);
            assert_eq!(
                Some(String::from_utf8(body).unwrap()),
                tree.map(|b| String::from_utf8(b).unwrap()),
                "{text}"
            );
            true
        });
    }
}
