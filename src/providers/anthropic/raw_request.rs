//! The Anthropic request written straight from the client's bytes. A chat request
//! that `api::raw_chat` let through (no handler or logger will look at it) and whose
//! every member this module knows is written as an Anthropic Messages body in one
//! walk of its text: no tree is parsed, translated into another tree and serialized
//! (that was about 25,000 instructions a request, a tenth of a translated 20-chunk
//! stream; bench/README.md, session 19).
//!
//! It knows the common shape: system, developer, user and assistant messages whose
//! content is a string (or `null`), and the settings `max_tokens`,
//! `max_completion_tokens`, `temperature`, `top_p`, `stop`, `user` and `n` (1).
//! Anything else the translation acts on (tools, `response_format`, thinking,
//! `top_k`, content parts, tool messages, an assistant's reasoning) makes [`write`]
//! answer `None`, and the request takes the tree translation
//! (`request::translate`), which also gives every error its answer. Members the
//! translation drops are dropped here too. What [`write`] writes is byte for byte
//! what the tree translation serializes to: the differential test below holds it
//! to that.

use std::borrow::Cow;

use super::request::{json_f64, looks_personal};
use crate::json_scan::{write_json_str, Walk};

/// Members the tree translation acts on that this writer leaves to it (`n` other
/// than 1 or `null` too).
const LEFT_TO_THE_TREE: [&str; 8] = [
    "top_k",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "reasoning_effort",
    "thinking",
    "stream_options",
];

/// Message members the translation reads besides `role` and `content` (an
/// assistant's tool calls and earlier reasoning).
const MESSAGE_MEMBERS_LEFT_TO_THE_TREE: [&str; 4] = [
    "tool_calls",
    "thinking_blocks",
    "reasoning_content",
    "reasoning",
];

/// The members this writer reads, as written in the request (`null` included).
#[derive(Default)]
struct Members<'a> {
    messages: Option<&'a str>,
    max_tokens: Option<&'a str>,
    max_completion_tokens: Option<&'a str>,
    temperature: Option<&'a str>,
    top_p: Option<&'a str>,
    stop: Option<&'a str>,
    user: Option<&'a str>,
}

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
    let members = members(body)?;
    let max_tokens = match count(members.max_completion_tokens)? {
        Some(max) => max,
        None => count(members.max_tokens)?.unwrap_or(default_max_tokens),
    };
    let (system, turns) = conversation(members.messages?)?;
    let stop = stop_sequences(members.stop)?;
    let temperature = number(members.temperature)?;
    let top_p = number(members.top_p)?;
    let user = match members.user {
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
        out.extend_from_slice(b",\"stop_sequences\":[");
        for (i, sequence) in stop.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_str(&mut out, sequence);
        }
        out.push(b']');
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

/// The top-level members, each value as written; `None` for a member left to the
/// tree, given twice, or with an escape in its key (which might spell one).
fn members(body: &str) -> Option<Members<'_>> {
    let mut members = Members::default();
    let mut walk = Walk::new(body);
    walk.object(|walk, key| {
        let slot = match key {
            "messages" => &mut members.messages,
            "max_tokens" => &mut members.max_tokens,
            "max_completion_tokens" => &mut members.max_completion_tokens,
            "temperature" => &mut members.temperature,
            "top_p" => &mut members.top_p,
            "stop" => &mut members.stop,
            "user" => &mut members.user,
            // One choice: the translation's answer as without it.
            "n" => {
                let n = walk.skip()?;
                return (n == "1" || n == "null").then_some(());
            }
            _ if key.contains('\\') || LEFT_TO_THE_TREE.contains(&key) => return None,
            // `model` is the routed one; `stream` is the call's; the rest Anthropic
            // has no equivalent for, and the translation drops it.
            _ => return walk.skip().map(drop),
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(walk.skip()?);
        Some(())
    })?;
    walk.done()?;
    Some(members)
}

/// A token count as the translation reads it: absent or `null`, or a positive
/// integer; `None` for anything else (the translation refuses it).
fn count(raw: Option<&str>) -> Option<Option<u64>> {
    match raw {
        None | Some("null") => Some(None),
        Some(text) => text.parse::<u64>().ok().filter(|n| *n >= 1).map(Some),
    }
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

/// `stop` as `stop_sequences`: a string or a list of strings, blank ones left out.
fn stop_sequences<'a>(raw: Option<&'a str>) -> Option<Vec<Cow<'a, str>>> {
    let mut kept = Vec::new();
    let mut keep = |text: Cow<'a, str>| {
        if !text.trim().is_empty() {
            kept.push(text);
        }
    };
    match raw {
        None | Some("null") => {}
        Some(raw) => {
            let mut walk = Walk::new(raw);
            if walk.at_string() {
                keep(walk.string()?);
            } else {
                walk.array(|walk| {
                    keep(walk.string()?);
                    Some(())
                })?;
            }
        }
    }
    Some(kept)
}

/// `messages` → (system texts, alternating turns), as `messages::convert_messages`
/// makes them for messages whose content is a string or `null`: system and
/// developer messages hoisted, blank texts left out, same-role neighbours merged,
/// a `"."` user turn before a leading assistant turn, a final assistant turn's
/// trailing whitespace trimmed. `None` for anything else, and for a conversation
/// the translation refuses (nothing but system messages).
fn conversation(raw: &str) -> Option<(Vec<Cow<'_, str>>, Vec<Turn<'_>>)> {
    let mut system = Vec::new();
    let mut turns: Vec<Turn<'_>> = Vec::new();
    let mut walk = Walk::new(raw);
    walk.array(|walk| {
        let (role, text) = message(walk)?;
        let text = text.filter(|text| !text.trim().is_empty());
        let role = match role.as_ref() {
            "system" | "developer" => {
                system.extend(text);
                return Some(());
            }
            "user" => Role::User,
            "assistant" => Role::Assistant,
            // Tool messages, and roles the translation refuses.
            _ => return None,
        };
        if let Some(text) = text {
            match turns.last_mut() {
                Some((last, blocks)) if *last == role => blocks.push(text),
                _ => turns.push((role, vec![text])),
            }
        }
        Some(())
    })?;
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

/// One message: its role and its content (`None` when absent or `null`). `None`
/// for content other than a string, or a member the translation reads that this
/// writer does not.
fn message<'a>(walk: &mut Walk<'a>) -> Option<(Cow<'a, str>, Option<Cow<'a, str>>)> {
    let mut role = None;
    let mut content = None;
    walk.object(|walk, key| match key {
        "role" => {
            role.is_none().then_some(())?;
            role = Some(walk.string()?);
            Some(())
        }
        "content" => {
            content.is_none().then_some(())?;
            content = Some(if walk.null() {
                None
            } else {
                Some(walk.string()?)
            });
            Some(())
        }
        _ if key.contains('\\') || MESSAGE_MEMBERS_LEFT_TO_THE_TREE.contains(&key) => None,
        _ => walk.skip().map(drop),
    })?;
    Some((role?, content.flatten()))
}

/// `[{"type":"text","text":…},…]`.
fn text_blocks(out: &mut Vec<u8>, texts: &[Cow<'_, str>]) {
    out.push(b'[');
    for (i, text) in texts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"type\":\"text\",\"text\":");
        write_json_str(out, text);
        out.push(b'}');
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::raw_chat;
    use crate::providers::anthropic::request::serialized;
    use crate::providers::anthropic::MAX_CHOICES;
    use crate::providers::fanout::requested_n;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

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
        for text in [
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tool_choice":"auto"}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"reasoning_effort":"low"}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"top_k":3}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"x"}]}]}"#,
            r#"{"model":"m","messages":[{"role":"tool","tool_call_id":"c","content":"x"}]}"#,
            r#"{"model":"m","messages":[{"role":"assistant","content":"x","reasoning_content":"r"}]}"#,
            r#"{"model":"m","messages":[{"role":"system","content":"only system"}]}"#,
        ] {
            assert!(
                raw_chat::read(&bytes::Bytes::from(text)).is_some(),
                "{text}"
            );
            assert_eq!(written(text, false), None, "{text}");
        }
    }

    /// A JSON string as a client may write it: plain, blank, escaped, non-ASCII.
    fn arb_string() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            r#""hi""#,
            r#""""#,
            r#""  \n\t ""#,
            r#""ends in space  \n""#,
            r#"" lead""#,
            r#""a\"b\\c\u00e9\ud83d\ude00\/""#,
            "\"é 😀 </script>\u{2028}\"",
            r#""\u0041\u0020""#,
            r#""\u3000""#,
        ])
    }

    fn arb_message() -> impl Strategy<Value = String> {
        let role = prop_oneof![
            8 => Just(r#""user""#),
            6 => Just(r#""assistant""#),
            2 => Just(r#""system""#),
            1 => Just(r#""developer""#),
            1 => Just(r#""tool""#),
            1 => Just(r#""wizard""#),
        ];
        let content = prop_oneof![
            12 => arb_string().prop_map(str::to_owned),
            2 => Just("null".to_owned()),
            1 => arb_string().prop_map(|s| format!(r#"[{{"type":"text","text":{s}}}]"#)),
        ];
        let extra = prop_oneof![
            16 => Just(""),
            2 => Just(r#""name":"n""#),
            1 => Just(r#""tool_call_id":"c1""#),
            1 => Just(r#""reasoning_content":"r""#),
            1 => Just(r#""tool_calls":null"#),
        ];
        (
            role,
            prop::option::weighted(0.9, content),
            extra,
            any::<bool>(),
        )
            .prop_map(|(role, content, extra, content_first)| {
                let mut members = vec![format!(r#""role":{role}"#)];
                if let Some(content) = content {
                    let member = format!(r#""content":{content}"#);
                    if content_first {
                        members.insert(0, member);
                    } else {
                        members.push(member);
                    }
                }
                if !extra.is_empty() {
                    members.push(extra.to_owned());
                }
                format!("{{{}}}", members.join(","))
            })
    }

    /// A chat request: messages and any of the members the writer reads, leaves to
    /// the tree or drops, with values it must write, and values the tree refuses.
    fn arb_request() -> impl Strategy<Value = String> {
        let member = |key: &'static str, values: Vec<&'static str>| {
            prop::option::weighted(0.3, prop::sample::select(values))
                .prop_map(move |value| value.map(|value| format!(r#""{key}":{value}"#)))
                .boxed()
        };
        // Members the writer leaves to the tree, rarely: most requests are written.
        let rare = |key: &'static str, value: &'static str| {
            prop::option::weighted(0.03, Just(format!(r#""{key}":{value}"#))).boxed()
        };
        let members = vec![
            member("max_tokens", vec!["null", "1", "100", "100000000"]),
            member("max_completion_tokens", vec!["null", "7", "1"]),
            member(
                "temperature",
                vec![
                    "null",
                    "0",
                    "0.7",
                    "1.5",
                    "2",
                    "0.1e1",
                    "1E0",
                    "0.30000000000000004",
                ],
            ),
            member(
                "top_p",
                vec!["null", "0.9", "1", "5e-1", "0.123456789012345678"],
            ),
            member(
                "stop",
                vec![
                    "null",
                    r#""x""#,
                    r#"" ""#,
                    r#"["a"," ","\u0062"]"#,
                    r#"[]"#,
                    r#""\n""#,
                ],
            ),
            member(
                "user",
                vec![
                    "null",
                    r#""""#,
                    r#""u-1""#,
                    r#""a@b.c""#,
                    r#""+1 (555) 123-4567""#,
                    r#""\u00e9l""#,
                ],
            ),
            member("n", vec!["null", "1", "1", "1", "2"]),
            member("stream", vec!["true", "false", "null"]),
            member("seed", vec!["3"]),
            member("metadata", vec![r#"{"k":"v"}"#]),
            rare("response_format", r#"{"type":"text"}"#),
            rare("tool_choice", r#""none""#),
            rare("reasoning_effort", r#""low""#),
            member("unknown_member", vec![r#"[1,{"a":null}]"#]),
        ];
        (
            prop::collection::vec(arb_message(), 0..5),
            members,
            prop::sample::select(vec![r#""gpt-4o""#, r#""m\u0031""#]),
        )
            .prop_flat_map(|(messages, members, model)| {
                let mut all: Vec<String> = members.into_iter().flatten().collect();
                all.push(format!(r#""messages":[{}]"#, messages.join(",")));
                all.push(format!(r#""model":{model}"#));
                Just(all).prop_shuffle()
            })
            .prop_map(|members| format!("{{{}}}", members.join(",")))
    }

    /// Whatever the writer writes is what the tree translation sends, byte for
    /// byte; it writes nothing for a request the translation refuses; and it writes
    /// a good share of the requests (so the comparison is not vacuous).
    #[test]
    fn what_is_written_is_what_the_tree_translation_sends() {
        let mut runner = TestRunner::deterministic();
        let strategy = arb_request();
        let (mut raw_requests, mut written_requests) = (0, 0);
        for case in 0..4000 {
            let text = strategy.new_tree(&mut runner).unwrap().current();
            if raw_chat::read(&bytes::Bytes::from(text.clone())).is_none() {
                continue;
            }
            raw_requests += 1;
            let stream = case % 2 == 0;
            let Some(body) = write(&text, "claude-x", DEFAULT_MAX_TOKENS, stream) else {
                continue;
            };
            written_requests += 1;
            let tree = tree_body(&text, "claude-x", stream);
            assert_eq!(
                Some(String::from_utf8(body).unwrap()),
                tree.map(|b| String::from_utf8(b).unwrap()),
                "{text}"
            );
        }
        eprintln!("{written_requests} of {raw_requests} written");
        assert!(raw_requests > 1000, "{raw_requests} requests read raw");
        assert!(
            written_requests > 300,
            "{written_requests} of {raw_requests} written"
        );
    }
}
