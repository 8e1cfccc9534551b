//! The Anthropic request written straight from the client's bytes. A chat request
//! that `api::raw_chat` let through (no handler or logger will look at it) and whose
//! every member this module knows is written as an Anthropic Messages body in one
//! walk of its text: no tree is parsed, translated into another tree and serialized
//! (that was about 25,000 instructions a request, a tenth of a translated 20-chunk
//! stream; bench/README.md, session 19; for an agent's 16 KB request with 20 tools,
//! 1.6 million: session 32).
//!
//! It knows the common shape, an agent's included: system, developer, user and
//! assistant messages whose content is a string, `null` or a list of plain text
//! parts, an assistant's `tool_calls`, tool messages, function `tools`,
//! `tool_choice`, `parallel_tool_calls`, and the settings `max_tokens`,
//! `max_completion_tokens`, `temperature`, `top_p`, `stop`, `user` and `n` (1).
//! Anything else the translation acts on (`response_format`, thinking, `top_k`,
//! other content parts or a `cache_control` on a part, an assistant's reasoning, a
//! tool call whose signed thinking the gateway kept) makes [`write`] answer `None`,
//! and the request takes the tree translation (`request::translate`), which also
//! gives every error its answer. Members the translation drops are dropped here too.
//!
//! What [`write`] writes is what the tree translation serializes to, byte for byte,
//! but for the JSON values it copies as the client wrote them: a tool's
//! `parameters` schema and `cache_control` (the same values, not always the same
//! bytes as serde would write them). The differential tests below hold it to that.

use std::borrow::Cow;
use std::cell::RefCell;

use super::messages::{sanitize_tool_id, NO_RESULT};
use super::request::{json_f64, looks_personal};
use crate::api::raw_body::{kept, named_members_of};
use crate::json_scan::{first_value, has_escape, string_value, write_json_str, JsonText, Walk};
use crate::providers::raw_request::{
    called_function, description as description_of, members_and, positive, stop_strings,
    text_messages_and, write_strings, write_text_objects,
};
use crate::recent::Recent;

/// Members the tree translation acts on that this writer leaves to it (`n` other
/// than 1 or `null` too, see `providers::raw_request::members_and`). A stream's
/// `stream_options` (all `raw_chat` lets through: one that asks for the usage) is
/// dropped, as the translation drops it: the usage asked stays with the call.
const LEFT_TO_THE_TREE: [&str; 4] = ["top_k", "response_format", "reasoning_effort", "thinking"];

/// Message members the translation reads besides `role`, `content`, `tool_calls`
/// and `tool_call_id` (an assistant's earlier reasoning).
const MESSAGE_MEMBERS_LEFT_TO_THE_TREE: [&str; 3] =
    ["thinking_blocks", "reasoning_content", "reasoning"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    User,
    Assistant,
}

/// One content block of a turn, as the translation makes it.
enum Block<'a> {
    Text(JsonText<'a>),
    /// A tool call: its id made safe for Anthropic, its name, and its input as
    /// serde writes it.
    ToolUse {
        id: String,
        name: Cow<'a, str>,
        input: Vec<u8>,
    },
    /// A tool message's result (its id made safe) or, for a call without one, the
    /// translation's error result.
    ToolResult {
        id: String,
        content: ResultContent<'a>,
    },
}

enum ResultContent<'a> {
    None,
    /// A string content, as it was (blank ones are `None`).
    String(JsonText<'a>),
    /// Text parts, as text blocks (blank ones left out; none at all is `None`).
    Texts(Vec<JsonText<'a>>),
    /// The call had no result.
    Missing,
}

/// One turn of the conversation: its role and its blocks.
type Turn<'a> = (Role, Vec<Block<'a>>);

/// The Anthropic body for the chat request `body` (a JSON object, checked), sent to
/// `model`, with `"stream": true` when `stream`; `None` when the request has
/// something this writer leaves to the tree translation.
pub fn write(body: &str, model: &str, default_max_tokens: u64, stream: bool) -> Option<Vec<u8>> {
    // The messages and the tools, most of an agent's request, are read where the
    // walk of the body meets them.
    let (mut conversation_read, mut tools_read) = (None, None);
    let [max_tokens, max_completion_tokens, temperature, top_p, stop, user, tool_choice, parallel] =
        members_and(
            body,
            [
                "max_tokens",
                "max_completion_tokens",
                "temperature",
                "top_p",
                "stop",
                "user",
                "tool_choice",
                "parallel_tool_calls",
            ],
            &LEFT_TO_THE_TREE,
            |walk, key| match key {
                "messages" => {
                    first_value(&mut conversation_read, || conversation(walk)).map(|()| true)
                }
                "tools" => first_value(&mut tools_read, || {
                    if walk.null() {
                        Some(None)
                    } else {
                        kept(walk, &TOOLS, |walk| {
                            let tools = write_tools(walk)?;
                            let weight = tools.len();
                            Some((tools, weight))
                        })
                        .map(Some)
                    }
                })
                .map(|()| true),
                _ => Some(false),
            },
        )?;
    let (system, turns) = conversation_read?;
    let client_tools = tools_read.flatten();
    let client_choice = match tool_choice {
        None | Some("null") => None,
        Some(raw) => Some(tool_choice_of(raw)?),
    };
    let parallel = match parallel {
        None | Some("null") | Some("true") => true,
        Some("false") => false,
        Some(_) => return None,
    };
    let max_tokens = match positive(max_completion_tokens, u64::MAX)? {
        Some(max) => max,
        None => positive(max_tokens, u64::MAX)?.unwrap_or(default_max_tokens),
    };
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
    // The tools and the choice among them, as the translation settles them: the
    // client's choice only with its tools; with none, a placeholder that lets the
    // model read earlier tool calls, and the choice `none`.
    let history_has_tools = turns.iter().any(|(_, blocks)| {
        blocks
            .iter()
            .any(|b| matches!(b, Block::ToolUse { .. } | Block::ToolResult { .. }))
    });
    let (tools, mut choice) =
        // A list with a tool in it (`[]` is none).
        if let Some(client_tools) = client_tools.as_ref().filter(|t| t.as_slice() != b"[]") {
            (Some(&client_tools[..]), client_choice)
        } else if history_has_tools {
            (Some(&PLACEHOLDER_TOOLS[..]), Some(Choice::None))
        } else {
            (None, None)
        };
    let mut disable_parallel = false;
    if !parallel && tools.is_some() {
        let choice = choice.get_or_insert(Choice::Auto);
        disable_parallel = !matches!(choice, Choice::None);
    }

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
            Role::User => b"{\"role\":\"user\",\"content\":[",
            Role::Assistant => b"{\"role\":\"assistant\",\"content\":[",
        });
        for (j, block) in blocks.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            write_block(&mut out, block);
        }
        out.extend_from_slice(b"]}");
    }
    out.push(b']');
    if let Some(tools) = tools {
        out.extend_from_slice(b",\"tools\":");
        out.extend_from_slice(tools);
        if let Some(choice) = choice {
            out.extend_from_slice(b",\"tool_choice\":{\"type\":");
            match choice {
                Choice::Auto => out.extend_from_slice(b"\"auto\""),
                Choice::None => out.extend_from_slice(b"\"none\""),
                Choice::Any => out.extend_from_slice(b"\"any\""),
                Choice::Tool(name) => {
                    out.extend_from_slice(b"\"tool\",\"name\":");
                    write_json_str(&mut out, &name);
                }
            }
            if disable_parallel {
                out.extend_from_slice(b",\"disable_parallel_tool_use\":true");
            }
            out.push(b'}');
        }
    }
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

/// The tools the translation sends when the conversation has tool calls and the
/// client no tools (`request::placeholder_tool`), written once.
static PLACEHOLDER_TOOLS: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    serde_json::to_vec(&[super::request::placeholder_tool()])
        .expect("a JSON value always serializes")
});

/// A client's `tool_choice`, as `tools::convert_tool_choice` reads it.
enum Choice<'a> {
    Auto,
    None,
    Any,
    Tool(Cow<'a, str>),
}

/// `auto`, `none`, `required`, or `{"type": "function", "function": {"name": …}}`
/// (the `type` may be left out or not be a string); `None` for anything else.
fn tool_choice_of(raw: &str) -> Option<Choice<'_>> {
    if raw.starts_with('"') {
        return match &*string_value(raw)? {
            "auto" => Some(Choice::Auto),
            "none" => Some(Choice::None),
            "required" => Some(Choice::Any),
            _ => None,
        };
    }
    let [kind, function] = named_members_of(raw, ["type", "function"])?;
    if let Some(kind) = kind.filter(|kind| kind.starts_with('"')) {
        (string_value(kind)? == "function").then_some(())?;
    }
    let [name] = named_members_of(function?, ["name"])?;
    let name = string_value(name?)?;
    (!name.is_empty()).then_some(Choice::Tool(name))
}

thread_local! {
    /// The tools of this thread's last requests (by their bytes), as written: an
    /// agent sends the same tools with every turn (`raw_body::kept`).
    static TOOLS: RefCell<Recent<Vec<u8>>> = const { RefCell::new(Recent::new()) };
}

/// The client's `tools` (a list of function tools) as Anthropic tools, written as
/// `tools::convert_tools` makes them. A tool's `parameters` schema and its
/// `cache_control` are copied as written (a schema without a top-level `type` gets
/// `"type":"object"` after its members, as the translation inserts it).
fn write_tools(walk: &mut Walk<'_>) -> Option<Vec<u8>> {
    let mut out = vec![b'['];
    walk.array(|walk| {
        if out.len() > 1 {
            out.push(b',');
        }
        let (mut kind, mut function, mut cache) = (None, None, None);
        walk.object(|walk, key| match key {
            "type" => first_value(&mut kind, || walk.skip()),
            "cache_control" => first_value(&mut cache, || walk.skip()),
            "function" => first_value(&mut function, || {
                walk.at_object().then_some(())?;
                function_tool(walk)
            }),
            _ if has_escape(key) => None,
            _ => walk.skip().map(drop),
        })?;
        if let Some(kind) = kind.filter(|kind| kind.starts_with('"')) {
            (string_value(kind)? == "function").then_some(())?;
        }
        let FunctionTool {
            name,
            description,
            schema,
        } = function?;
        out.extend_from_slice(b"{\"name\":");
        write_json_str(&mut out, &name);
        if let Some(description) = description {
            out.extend_from_slice(b",\"description\":");
            description.write(&mut out);
        }
        out.extend_from_slice(b",\"input_schema\":");
        match schema {
            None => out.extend_from_slice(br#"{"type":"object","properties":{}}"#),
            Some((schema, true)) => out.extend_from_slice(schema.as_bytes()),
            Some((schema, false)) => {
                // Its members, then the `type` the translation adds.
                let members = schema[..schema.len() - 1].trim_end_matches([' ', '\t', '\n', '\r']);
                out.extend_from_slice(members.as_bytes());
                if !members.ends_with('{') {
                    out.push(b',');
                }
                out.extend_from_slice(br#""type":"object"}"#);
            }
        }
        if let Some(cache) = cache {
            out.extend_from_slice(b",\"cache_control\":");
            out.extend_from_slice(cache.as_bytes());
        }
        out.push(b'}');
        Some(())
    })?;
    out.push(b']');
    Some(out)
}

/// What the translation takes from a function tool's `function`.
struct FunctionTool<'a> {
    name: Cow<'a, str>,
    description: Option<JsonText<'a>>,
    /// The `parameters` schema as written, and whether it has a top-level `type`.
    schema: Option<(&'a str, bool)>,
}

/// A function tool's `function` (at its `{`): its name (a non-empty string), its
/// description when that is a non-empty string (otherwise the translation leaves it
/// out), and its `parameters` schema when it is an object, as written, with whether
/// it has a top-level `type`; `None` for a schema that is neither an object nor
/// `null`.
fn function_tool<'a>(walk: &mut Walk<'a>) -> Option<FunctionTool<'a>> {
    let (mut name, mut description, mut schema) = (None, None, None);
    walk.object(|walk, key| match key {
        "name" => first_value(&mut name, || walk.string()),
        "description" => first_value(&mut description, || description_of(walk)),
        "parameters" => first_value(&mut schema, || {
            if walk.null() {
                return Some(None);
            }
            walk.at_object().then_some(())?;
            let start = walk.at();
            let mut typed = false;
            walk.object(|walk, key| {
                if key == "type" {
                    typed = true;
                } else if has_escape(key) {
                    // It might spell `type`.
                    return None;
                }
                walk.skip().map(drop)
            })?;
            Some(Some((walk.text_since(start), typed)))
        }),
        _ if has_escape(key) => None,
        _ => walk.skip().map(drop),
    })?;
    let name = name?;
    (!name.is_empty()).then_some(())?;
    Some(FunctionTool {
        name,
        description: description.flatten(),
        schema: schema.flatten(),
    })
}

fn write_block(out: &mut Vec<u8>, block: &Block<'_>) {
    match block {
        Block::Text(text) => {
            out.extend_from_slice(b"{\"type\":\"text\",\"text\":");
            text.write(out);
            out.push(b'}');
        }
        Block::ToolUse { id, name, input } => {
            out.extend_from_slice(b"{\"type\":\"tool_use\",\"id\":");
            write_json_str(out, id);
            out.extend_from_slice(b",\"name\":");
            write_json_str(out, name);
            out.extend_from_slice(b",\"input\":");
            out.extend_from_slice(input);
            out.push(b'}');
        }
        Block::ToolResult { id, content } => {
            out.extend_from_slice(b"{\"type\":\"tool_result\",\"tool_use_id\":");
            write_json_str(out, id);
            match content {
                ResultContent::None => {}
                ResultContent::String(text) => {
                    out.extend_from_slice(b",\"content\":");
                    text.write(out);
                }
                ResultContent::Texts(texts) => {
                    out.extend_from_slice(b",\"content\":");
                    text_blocks(out, texts);
                }
                ResultContent::Missing => {
                    out.extend_from_slice(b",\"content\":");
                    write_json_str(out, NO_RESULT);
                    out.extend_from_slice(b",\"is_error\":true");
                }
            }
            out.push(b'}');
        }
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

/// `messages` → (system texts, alternating turns), as `messages::convert_messages`
/// makes them for messages whose content is text (`text_messages_and`), an
/// assistant's tool calls and tool messages: system and developer messages hoisted,
/// blank texts left out, same-role neighbours merged, tool results first in a user
/// turn, an error result for each tool call without one, a `"."` user turn before a
/// leading assistant turn, a final assistant turn's trailing whitespace trimmed.
/// `None` for anything else, and for a conversation the translation refuses
/// (nothing but system messages).
fn conversation<'a>(walk: &mut Walk<'a>) -> Option<(Vec<JsonText<'a>>, Vec<Turn<'a>>)> {
    let mut system = Vec::new();
    let mut turns: Vec<Turn<'_>> = Vec::new();
    for (message, [tool_calls, tool_call_id]) in text_messages_and(
        walk,
        &MESSAGE_MEMBERS_LEFT_TO_THE_TREE,
        ["tool_calls", "tool_call_id"],
    )? {
        let texts = message.texts.into_iter().filter(|text| !text.is_blank());
        let (role, blocks) = match message.role.as_ref() {
            "system" | "developer" => {
                system.extend(texts);
                continue;
            }
            "user" => (Role::User, texts.map(Block::Text).collect::<Vec<_>>()),
            "assistant" => {
                let mut blocks: Vec<Block<'_>> = texts.map(Block::Text).collect();
                if let Some(calls) = tool_calls.filter(|calls| *calls != "null") {
                    tool_uses(calls, &mut blocks)?;
                }
                (Role::Assistant, blocks)
            }
            "tool" => {
                let id = string_value(tool_call_id?)?;
                (!id.is_empty()).then_some(())?;
                let content = if message.string {
                    // As it was, unless blank.
                    match texts.into_iter().next() {
                        Some(text) => ResultContent::String(text),
                        None => ResultContent::None,
                    }
                } else {
                    let texts: Vec<_> = texts.collect();
                    if texts.is_empty() {
                        ResultContent::None
                    } else {
                        ResultContent::Texts(texts)
                    }
                };
                let id = sanitize_tool_id(&id);
                (Role::User, vec![Block::ToolResult { id, content }])
            }
            // Roles the translation refuses.
            _ => return None,
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, last_blocks)) if *last == role => last_blocks.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    for (role, blocks) in &mut turns {
        if *role == Role::User && blocks.iter().any(|b| matches!(b, Block::ToolResult { .. })) {
            // Tool results before any other block of the turn, in order.
            let (mut results, rest): (Vec<_>, Vec<_>) = std::mem::take(blocks)
                .into_iter()
                .partition(|b| matches!(b, Block::ToolResult { .. }));
            results.extend(rest);
            *blocks = results;
        }
    }
    add_missing_tool_results(&mut turns);
    if turns
        .first()
        .is_some_and(|(role, _)| *role == Role::Assistant)
    {
        turns.insert(
            0,
            (
                Role::User,
                vec![Block::Text(JsonText::Value(Cow::Borrowed(".")))],
            ),
        );
    }
    if let Some((Role::Assistant, blocks)) = turns.last_mut() {
        if let Some(Block::Text(text)) = blocks.last_mut() {
            text.trim_end();
            if text.is_empty() {
                blocks.pop();
            }
        }
        if blocks.is_empty() {
            turns.pop();
        }
    }
    (!turns.is_empty()).then_some((system, turns))
}

/// An assistant's `tool_calls` (a list, as written) → `tool_use` blocks, as
/// `messages::tool_use_block` makes them; `None` for a call the translation refuses,
/// and for calls whose signed thinking the gateway kept (the translation puts it
/// back before them).
fn tool_uses<'a>(raw: &'a str, blocks: &mut Vec<Block<'a>>) -> Option<()> {
    let mut ids = Vec::new();
    // A part of the checked body.
    Walk::checked(raw).array(|walk| {
        let (mut id, mut function) = (None, None);
        walk.object(|walk, key| match key {
            "id" => first_value(&mut id, || walk.string()),
            "function" => first_value(&mut function, || called_function(walk, false)),
            _ if has_escape(key) => None,
            _ => walk.skip().map(drop),
        })?;
        let id = id?;
        (!id.is_empty()).then_some(())?;
        let (name, input) = function?;
        blocks.push(Block::ToolUse {
            id: sanitize_tool_id(&id),
            name,
            input,
        });
        ids.push(id);
        Some(())
    })?;
    let kept = super::thinking::recall(ids.iter().map(|id| id.as_ref()), None);
    kept.is_none_or(|blocks| blocks.is_empty()).then_some(())
}

/// Every `tool_use` needs a `tool_result` in the very next user turn: as
/// `messages::add_missing_tool_results` does, a user turn is made where there is
/// none, and the missing results go after the results it has.
fn add_missing_tool_results(turns: &mut Vec<Turn<'_>>) {
    let mut i = 0;
    while i < turns.len() {
        let ids: Vec<String> = match &turns[i] {
            (Role::Assistant, blocks) => blocks
                .iter()
                .filter_map(|b| match b {
                    Block::ToolUse { id, .. } => Some(id.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        if ids.is_empty() {
            i += 1;
            continue;
        }
        if turns.get(i + 1).is_none_or(|(role, _)| *role != Role::User) {
            turns.insert(i + 1, (Role::User, Vec::new()));
        }
        let next = &mut turns[i + 1].1;
        let missing: Vec<Block<'_>> = ids
            .into_iter()
            .filter(|id| {
                !next
                    .iter()
                    .any(|b| matches!(b, Block::ToolResult { id: answered, .. } if answered == id))
            })
            .map(|id| Block::ToolResult {
                id,
                content: ResultContent::Missing,
            })
            .collect();
        let at = next
            .iter()
            .take_while(|b| matches!(b, Block::ToolResult { .. }))
            .count();
        next.splice(at..at, missing);
        i += 2;
    }
}

/// `[{"type":"text","text":…},…]`.
fn text_blocks(out: &mut Vec<u8>, texts: &[JsonText<'_>]) {
    write_text_objects(out, b"{\"type\":\"text\",\"text\":", texts);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::raw_body::normal_json;
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

    /// [`write`]'s body, written twice: the second time with the tools this
    /// thread kept from the first (`TOOLS`), which must not change a byte.
    fn written_twice(text: &str, stream: bool) -> Option<Vec<u8>> {
        let first = write(text, "claude-x", DEFAULT_MAX_TOKENS, stream);
        let again = write(text, "claude-x", DEFAULT_MAX_TOKENS, stream);
        assert_eq!(first, again, "written again from the kept tools: {text}");
        first
    }

    fn written(text: &str, stream: bool) -> Option<String> {
        written_twice(text, stream).map(|b| String::from_utf8(b).unwrap())
    }

    /// `text`, streamed, is written as `expected`, byte for byte what the tree
    /// translation sends.
    fn assert_written_as_the_tree_writes(text: &str, expected: &str) {
        assert_eq!(written(text, true).as_deref(), Some(expected));
        assert_eq!(
            tree_body(text, "claude-x", true),
            Some(expected.as_bytes().to_vec())
        );
    }

    #[test]
    fn a_usual_request_is_written_as_the_translation_writes_it() {
        let text = r#"{"model":"gpt","messages":[{"role":"system","content":"Be brief."},
            {"role":"user","content":"Hi \"there\" \u00e9"},{"role":"user","content":"  "},
            {"role":"assistant","content":"Hello  "}],"temperature":1.5,"top_p":0.5,
            "stop":["\n"," ","END"],"user":"u-1","seed":7,"n":1}"#;
        let expected = r#"{"model":"claude-x","max_tokens":4096,"system":[{"type":"text","text":"Be brief."}],"messages":[{"role":"user","content":[{"type":"text","text":"Hi \"there\" é"}]},{"role":"assistant","content":[{"type":"text","text":"Hello"}]}],"stop_sequences":["END"],"temperature":1.0,"metadata":{"user_id":"u-1"},"stream":true}"#;
        assert_written_as_the_tree_writes(text, expected);
    }

    #[test]
    fn what_the_translation_acts_on_is_left_to_it() {
        let own = [
            r#"{"model":"m","messages":[{"role":"assistant","content":"x","reasoning_content":"r"}]}"#,
            r#"{"model":"m","messages":[{"role":"system","content":"only system"}]}"#,
            // Tools and calls the translation refuses: it gives them their errors.
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"web_search"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":""}}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f","parameters":[]}}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tool_choice":"sometimes"}"#,
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c","function":{"name":"f","arguments":"[1]"}}]}]}"#,
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"function":{"name":"f"}}]}]}"#,
            r#"{"model":"m","messages":[{"role":"tool","tool_call_id":"","content":"x"}]}"#,
            // A key with an escape might spell `type`, which the schema needs.
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"\u0074ype":"object"}}}]}"#,
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

    /// An agent's conversation through the chat door: its tools, its tool call (the
    /// id made safe, the arguments an object), the result first in its user turn,
    /// an error result for the call left without one, and the choice of tool with
    /// parallel calls turned off.
    #[test]
    fn an_agents_request_becomes_this_anthropic_request() {
        let text = r#"{"model":"gpt","stream":true,"messages":[
            {"role":"system","content":"You are an agent."},
            {"role":"user","content":"Find them."},
            {"role":"assistant","content":null,"tool_calls":[
                {"id":"call:1","type":"function","function":{"name":"lookup","arguments":"{\"q\": \"a\"}"}},
                {"id":"call_2","type":"function","function":{"name":"lookup","arguments":" "}}]},
            {"role":"user","content":"Also this."},
            {"role":"tool","tool_call_id":"call:1","content":"[{\"name\":\"p\"}]"}],
            "tools":[{"type":"function","function":{"name":"lookup","description":"Find people.",
                "parameters":{"properties":{"q":{"type":"string"}}},"strict":true},
                "cache_control":{"type":"ephemeral"}}],
            "tool_choice":{"type":"function","function":{"name":"lookup"}},
            "parallel_tool_calls":false}"#;
        let expected = r#"{"model":"claude-x","max_tokens":4096,"system":[{"type":"text","text":"You are an agent."}],"messages":[{"role":"user","content":[{"type":"text","text":"Find them."}]},{"role":"assistant","content":[{"type":"tool_use","id":"call_1","name":"lookup","input":{"q":"a"}},{"type":"tool_use","id":"call_2","name":"lookup","input":{}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"call_1","content":"[{\"name\":\"p\"}]"},{"type":"tool_result","tool_use_id":"call_2","content":"No result was provided for this tool call.","is_error":true},{"type":"text","text":"Also this."}]}],"tools":[{"name":"lookup","description":"Find people.","input_schema":{"properties":{"q":{"type":"string"}},"type":"object"},"cache_control":{"type":"ephemeral"}}],"tool_choice":{"type":"tool","name":"lookup","disable_parallel_tool_use":true},"stream":true}"#;
        assert_written_as_the_tree_writes(text, expected);
    }

    /// Earlier tool calls and no tools: the placeholder tool, and no tool use.
    #[test]
    fn tool_calls_without_tools_get_the_placeholder() {
        let text = r#"{"model":"gpt","messages":[{"role":"user","content":"x"},
            {"role":"assistant","tool_calls":[{"id":"c","function":{"name":"f","arguments":"{\"a\":[1, 2.0]}"}}]},
            {"role":"tool","tool_call_id":"c","content":[{"type":"text","text":"done"}]}],
            "parallel_tool_calls":false}"#;
        let body = written(text, false).expect("written");
        assert!(
            body.contains(r#""tools":[{"name":"no_tools_available""#)
                && body.ends_with(r#""tool_choice":{"type":"none"}}"#),
            "{body}"
        );
        assert_eq!(Some(body.into_bytes()), tree_body(text, "claude-x", false));
    }

    /// A tool call whose signed thinking the gateway kept goes to the tree, which
    /// puts that thinking back before it.
    #[test]
    fn calls_with_kept_thinking_are_left_to_the_tree() {
        let text = r#"{"model":"gpt","messages":[{"role":"user","content":"x"},
            {"role":"assistant","tool_calls":[{"id":"toolu_raw_kept","function":{"name":"f","arguments":"{}"}}]}]}"#;
        assert!(written(text, false).is_some());
        super::super::thinking::remember(
            vec![serde_json::json!({"type": "thinking", "thinking": "t", "signature": "sig-raw"})],
            ["toolu_raw_kept"],
        );
        assert_eq!(written(text, false), None);
    }

    /// Whatever the writer writes is what the tree translation sends, byte for
    /// byte; it writes nothing for a request the translation refuses; and it writes
    /// a good share of the requests (so the comparison is not vacuous).
    #[test]
    fn what_is_written_is_what_the_tree_translation_sends() {
        crate::providers::raw_request::arb::each_raw_request(|case, text| {
            let stream = case % 2 == 0;
            let Some(body) = written_twice(text, stream) else {
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

    /// The same for agents' requests (tools, tool calls, tool results): the same
    /// JSON as the tree translation sends, members in the same order (schemas are
    /// copied as written, so not always the same bytes).
    #[test]
    fn what_is_written_for_an_agent_is_what_the_tree_translation_sends() {
        let strategy = crate::providers::raw_request::arb::agent_request();
        crate::providers::raw_request::arb::each_raw_request_of(
            strategy,
            1000,
            350,
            |case, text| {
                let stream = case % 2 == 0;
                let Some(body) = written_twice(text, stream) else {
                    return false;
                };
                let tree = tree_body(text, "claude-x", stream).expect("the tree translates it");
                assert_eq!(normal_json(&body), normal_json(&tree), "{text}");
                true
            },
        );
    }
}
