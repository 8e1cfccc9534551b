//! The Messages request written as a chat-completions request straight from the
//! client's bytes, for a connection that does not speak the Messages API but takes a
//! chat request as written (`Provider::takes_raw_chat`: OpenAI-compatible servers,
//! so Claude Code on a local model) when nothing will look at the request (no
//! handler, no logger).
//!
//! The tree path parses the body into a tree, checks it (`request::validate`),
//! builds the canonical request from it (`request::to_canonical`) and serializes
//! that: for an agent's request of 16 KB that was 1.2 million instructions
//! (bench/README.md, session 30), five times its pass-through to Anthropic. [`write`]
//! does it in one walk of the text (`json_scan::Walk`, which checks every byte as
//! serde_json's parser does): strings, schemas and numbers are copied as the client
//! wrote them (the same JSON values, not always the same bytes as serde would
//! write), and only what the translation changes is written anew.
//!
//! It answers only for a request the tree path surely accepts and translates: a
//! member given twice or a key written with escapes where the translation reads
//! one, a member the translation refuses, a block it cannot translate, anything
//! `request::validate` would refuse, make it answer `None`, and the door takes the
//! tree path, which gives every error its answer. The differential test below holds
//! it to "written here ⇒ the tree path sends the same JSON".

use std::borrow::Cow;

use bytes::Bytes;
use serde_json::Value;

use crate::api::raw_body::{
    inner, join, named_members, named_members_of, not_blank, number_text, rewalk, strings,
    walk_body, ChatWriter, RawBody,
};
use crate::json_scan::{first_time, first_value, has_escape, string_value, write_json_str, Walk};

/// The chat request for the Messages request in `body` (for `/v1/messages`, not
/// `count_tokens`), with the client's model; `None` sends the request down the tree
/// path.
pub fn write(body: &Bytes) -> Option<RawBody> {
    let mut request = Request {
        writer: ChatWriter::new(body.len()),
        messages: 0,
        max_tokens: false,
        stream: None,
        system: None,
    };
    let raw = walk_body(body, not_blank, |walk, key| request.member(walk, key))?;
    (request.messages > 0 && request.max_tokens).then_some(())?;
    // Blocks are joined by a blank line: only a single empty text (or none) is no
    // system prompt.
    let system = request
        .system
        .filter(|parts| parts.len() > 1 || parts.first().is_some_and(|p| !p.is_empty()));
    let system = system.as_deref().map(|parts| (parts, &b"\\n\\n"[..]));
    Some(request.writer.finish(raw.model, system, request.stream))
}

/// What the walk of the top-level members gathered and wrote (the members after
/// `messages` in the client's order, as `to_canonical` puts them).
struct Request<'a> {
    writer: ChatWriter,
    /// How many Anthropic messages there were.
    messages: usize,
    /// `max_tokens` was a positive integer.
    max_tokens: bool,
    stream: Option<bool>,
    /// The system texts as written between their quotes (escapes kept), in order.
    system: Option<Vec<&'a str>>,
}

impl<'a> Request<'a> {
    /// One top-level member but `model`: checked as `request::validate` checks it
    /// and translated as `request::to_canonical` translates it, or refused.
    fn member(&mut self, walk: &mut Walk<'a>, key: &'a str) -> Option<()> {
        match key {
            "messages" => {
                let chat = &mut self.writer.messages;
                let mut count = 0;
                walk.array(|walk| {
                    count += 1;
                    message(walk, chat)
                })?;
                self.messages = count;
            }
            "max_tokens" => {
                // `Value::as_u64` at least 1: digits only, in range.
                let text = walk.skip()?;
                (text.parse::<u64>().ok()? >= 1).then_some(())?;
                self.max_tokens = true;
                self.writer.param(key, text);
            }
            "stream" => {
                let stream = walk.bool_or_null()??;
                self.stream = Some(stream);
                self.writer
                    .param(key, if stream { "true" } else { "false" });
            }
            "system" => {
                let parts = if walk.at_string() {
                    vec![inner(walk.skip()?)?]
                } else {
                    let mut parts = Vec::new();
                    walk.array(|walk| {
                        let block = Block::read(walk)?;
                        (block.kind() == "text").then_some(())?;
                        parts.push(inner(block.text?)?);
                        Some(())
                    })?;
                    parts
                };
                self.system = Some(parts);
            }
            "temperature" | "top_p" => {
                let text = number_text(walk)?;
                self.writer.param(key, text);
            }
            "top_k" => {
                let text = walk.skip()?;
                text.parse::<u64>().ok()?;
                self.writer.param(key, text);
            }
            "stop_sequences" => {
                let start = walk.at();
                strings(walk)?;
                self.writer.param("stop", walk.text_since(start));
            }
            "metadata" => {
                let [user] = named_members(walk, ["user_id"])?;
                if let Some(user) = user.filter(|u| *u != "null") {
                    self.writer.param("user", user);
                }
            }
            "tools" => self.writer.kept_list("tools", walk, &TOOLS, tool)?,
            "tool_choice" => self.tool_choice(walk)?,
            "thinking" => self.thinking(walk)?,
            // Anything else has no equivalent in a chat request: the tree path
            // refuses it, naming it. (`extra_headers` become headers there.)
            _ => return None,
        }
        Some(())
    }

    /// `tool_choice` → the chat `tool_choice`, and `parallel_tool_calls: false`
    /// for `disable_parallel_tool_use: true`.
    fn tool_choice(&mut self, walk: &mut Walk<'a>) -> Option<()> {
        let [kind, name, disable_parallel] =
            named_members(walk, ["type", "name", "disable_parallel_tool_use"])?;
        let choice = match string_value(kind?)?.as_ref() {
            "auto" => Cow::Borrowed("\"auto\""),
            "any" => Cow::Borrowed("\"required\""),
            "none" => Cow::Borrowed("\"none\""),
            "tool" => {
                let name = name?;
                inner(name)?;
                Cow::Owned(format!(
                    r#"{{"type":"function","function":{{"name":{name}}}}}"#
                ))
            }
            _ => return None,
        };
        self.writer.param("tool_choice", &choice);
        if disable_parallel == Some("true") {
            self.writer.param("parallel_tool_calls", "false");
        }
        Some(())
    }

    /// `thinking` → `reasoning_effort` by its budget (nothing when disabled).
    fn thinking(&mut self, walk: &mut Walk<'a>) -> Option<()> {
        let [kind, budget] = named_members(walk, ["type", "budget_tokens"])?;
        match string_value(kind?)?.as_ref() {
            "disabled" => Some(()),
            "enabled" => {
                let budget: u64 = budget?.parse().ok()?;
                let effort = super::request::reasoning_effort(budget);
                self.writer
                    .param("reasoning_effort", &format!("\"{effort}\""));
                Some(())
            }
            _ => None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    User,
    Assistant,
}

/// One Anthropic message → its chat messages, each written to `chat` after a comma.
fn message<'a>(walk: &mut Walk<'a>, chat: &mut Vec<u8>) -> Option<()> {
    let mut role = None;
    let mut content = false;
    // The content, when it came before the role (then walked again).
    let mut content_first = None;
    walk.object(|walk, key| match key {
        "role" => first_value(&mut role, || match walk.string()?.as_ref() {
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }),
        "content" => {
            first_time(&mut content)?;
            match role {
                Some(role) => message_content(walk, role, chat),
                None => {
                    content_first = Some(walk.skip()?);
                    Some(())
                }
            }
        }
        _ if has_escape(key) => None,
        _ => walk.skip().map(drop),
    })?;
    let role = role?;
    content.then_some(())?;
    match content_first {
        Some(text) => rewalk(text, |walk| message_content(walk, role, chat)),
        None => Some(()),
    }
}

fn message_content<'a>(walk: &mut Walk<'a>, role: Role, chat: &mut Vec<u8>) -> Option<()> {
    if walk.at_string() {
        let text = walk.skip()?;
        chat.extend_from_slice(match role {
            Role::User => b",{\"role\":\"user\",\"content\":",
            Role::Assistant => b",{\"role\":\"assistant\",\"content\":",
        });
        chat.extend_from_slice(text.as_bytes());
        chat.push(b'}');
        return Some(());
    }
    match role {
        Role::User => user_blocks(walk, chat),
        Role::Assistant => assistant_blocks(walk, chat),
    }
}

/// A content block's members that the translation reads, as written (each checked
/// as JSON), its `type` decoded (every block has a string `type`:
/// `request::validate`). A member given twice or a key with an escape (it might
/// spell one of these) refuses the block.
struct Block<'a> {
    kind: Cow<'a, str>,
    text: Option<&'a str>,
    id: Option<&'a str>,
    name: Option<&'a str>,
    input: Option<&'a str>,
    source: Option<&'a str>,
    title: Option<&'a str>,
    tool_use_id: Option<&'a str>,
    content: Option<&'a str>,
    is_error: Option<&'a str>,
}

impl<'a> Block<'a> {
    fn read(walk: &mut Walk<'a>) -> Option<Block<'a>> {
        let [kind, text, id, name, input, source, title, tool_use_id, content, is_error] =
            named_members(
                walk,
                [
                    "type",
                    "text",
                    "id",
                    "name",
                    "input",
                    "source",
                    "title",
                    "tool_use_id",
                    "content",
                    "is_error",
                ],
            )?;
        Some(Block {
            kind: string_value(kind?)?,
            text,
            id,
            name,
            input,
            source,
            title,
            tool_use_id,
            content,
            is_error,
        })
    }

    fn kind(&self) -> &str {
        &self.kind
    }
}

/// An assistant's blocks → one assistant message: its texts joined, its
/// `tool_use` blocks as tool calls (content `null` when there are calls and no
/// text); earlier reasoning left out.
fn assistant_blocks<'a>(walk: &mut Walk<'a>, chat: &mut Vec<u8>) -> Option<()> {
    let mut texts = Vec::new();
    let mut calls = Vec::new();
    walk.array(|walk| {
        let block = Block::read(walk)?;
        match block.kind() {
            "text" => texts.push(inner(block.text?)?),
            "tool_use" => {
                calls.push(if calls.is_empty() { b'[' } else { b',' });
                // A missing or non-string id is an empty one, as on the tree path.
                let id = block.id.and_then(inner).unwrap_or_default();
                let name = inner(block.name?)?;
                calls.extend_from_slice(b"{\"id\":\"");
                calls.extend_from_slice(id.as_bytes());
                calls.extend_from_slice(b"\",\"type\":\"function\",\"function\":{\"name\":\"");
                calls.extend_from_slice(name.as_bytes());
                calls.extend_from_slice(b"\",\"arguments\":");
                // The arguments are the input as serde_json writes it (compact, its
                // escapes and numbers its own), as the tree path sends them.
                let arguments = match block.input {
                    None => Cow::Borrowed("{}"),
                    Some(input) => {
                        Cow::Owned(serde_json::from_str::<Value>(input).ok()?.to_string())
                    }
                };
                write_json_str(&mut calls, &arguments);
                calls.extend_from_slice(b"}}");
            }
            "thinking" | "redacted_thinking" => {}
            _ => return None,
        }
        Some(())
    })?;
    chat.extend_from_slice(b",{\"role\":\"assistant\",\"content\":");
    if calls.is_empty() || texts.iter().any(|t| !t.is_empty()) {
        chat.push(b'"');
        join(chat, &texts, b"");
        chat.push(b'"');
    } else {
        chat.extend_from_slice(b"null");
    }
    if !calls.is_empty() {
        chat.extend_from_slice(b",\"tool_calls\":");
        chat.extend_from_slice(&calls);
        chat.push(b']');
    }
    chat.push(b'}');
    Some(())
}

/// A user's blocks → a `tool` message for each `tool_result` (in order, before the
/// rest), then one user message of the other parts: their text when the only part
/// is a text, a list of parts otherwise.
fn user_blocks<'a>(walk: &mut Walk<'a>, chat: &mut Vec<u8>) -> Option<()> {
    let mut parts = Vec::new();
    let mut count = 0;
    // The text of the first part when it is a text part (its string as written).
    let mut first_text = None;
    walk.array(|walk| {
        let block = Block::read(walk)?;
        let text = match block.kind() {
            "tool_result" => return tool_result(&block, chat),
            "text" => Some(block.text?),
            "image" => None,
            "document" => document_text(&block)?,
            _ => return None,
        };
        parts.push(if count == 0 { b'[' } else { b',' });
        if count == 0 {
            first_text = text;
        }
        count += 1;
        match (block.kind(), text) {
            (_, Some(text)) => {
                inner(text)?;
                parts.extend_from_slice(b"{\"type\":\"text\",\"text\":");
                parts.extend_from_slice(text.as_bytes());
                parts.push(b'}');
            }
            ("image", None) => image(&block, &mut parts)?,
            (_, None) => document_file(&block, &mut parts)?,
        }
        Some(())
    })?;
    if count == 0 {
        return Some(());
    }
    chat.extend_from_slice(b",{\"role\":\"user\",\"content\":");
    match first_text.filter(|_| count == 1) {
        Some(text) => chat.extend_from_slice(text.as_bytes()),
        None => {
            chat.extend_from_slice(&parts);
            chat.push(b']');
        }
    }
    chat.push(b'}');
    Some(())
}

/// A `source` object's members, as written.
struct Source<'a> {
    kind: Option<Cow<'a, str>>,
    media_type: Option<&'a str>,
    data: Option<&'a str>,
    url: Option<&'a str>,
}

impl<'a> Source<'a> {
    /// The block's `source` (`None` when it has none or it is not an object).
    fn of(block: &Block<'a>) -> Option<Source<'a>> {
        let [kind, media_type, data, url] =
            named_members_of(block.source?, ["type", "media_type", "data", "url"])?;
        Some(Source {
            kind: kind.and_then(string_value),
            media_type,
            data,
            url,
        })
    }

    fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or_default()
    }
}

/// An image block → an `image_url` part (base64 as a data URL).
fn image(block: &Block<'_>, parts: &mut Vec<u8>) -> Option<()> {
    let source = Source::of(block)?;
    parts.extend_from_slice(b"{\"type\":\"image_url\",\"image_url\":{\"url\":\"");
    match source.kind() {
        "base64" => {
            let media = inner(source.media_type?)?;
            let data = inner(source.data?)?;
            data_url(parts, media, data);
        }
        "url" => parts.extend_from_slice(inner(source.url?)?.as_bytes()),
        _ => return None,
    }
    parts.extend_from_slice(b"\"}}");
    Some(())
}

fn data_url(out: &mut Vec<u8>, media: &str, data: &str) {
    out.extend_from_slice(b"data:");
    out.extend_from_slice(media.as_bytes());
    out.extend_from_slice(b";base64,");
    out.extend_from_slice(data.as_bytes());
}

/// A plain-text document's text (its `data` string as written); `Some(None)` for a
/// base64 document (a `file` part).
fn document_text<'a>(block: &Block<'a>) -> Option<Option<&'a str>> {
    let source = Source::of(block)?;
    match source.kind() {
        "text" => {
            let data = source.data?;
            inner(data)?;
            Some(Some(data))
        }
        "base64" => Some(None),
        _ => None,
    }
}

/// A base64 document → a `file` part (a missing or non-string media type or data
/// is empty, as on the tree path; the title, when a string, its file name).
fn document_file(block: &Block<'_>, parts: &mut Vec<u8>) -> Option<()> {
    let source = Source::of(block)?;
    let media = source.media_type.and_then(inner).unwrap_or_default();
    let data = source.data.and_then(inner).unwrap_or_default();
    parts.extend_from_slice(b"{\"type\":\"file\",\"file\":{\"file_data\":\"");
    data_url(parts, media, data);
    parts.push(b'"');
    if let Some(title) = block.title.filter(|t| inner(t).is_some()) {
        parts.extend_from_slice(b",\"filename\":");
        parts.extend_from_slice(title.as_bytes());
    }
    parts.extend_from_slice(b"}}");
    Some(())
}

/// A `tool_result` block → a `tool` message: its text parts joined by newlines,
/// `Error: ` before them when it reports an error.
fn tool_result(block: &Block<'_>, chat: &mut Vec<u8>) -> Option<()> {
    let id = inner(block.tool_use_id?)?;
    let mut texts = Vec::new();
    match block.content {
        None | Some("null") => {}
        Some(content) if content.starts_with('"') => texts.push(inner(content)?),
        Some(content) => rewalk(content, |walk| {
            walk.array(|walk| {
                let part = Block::read(walk)?;
                (part.kind() == "text").then_some(())?;
                texts.push(inner(part.text?)?);
                Some(())
            })
        })?,
    }
    chat.extend_from_slice(b",{\"role\":\"tool\",\"tool_call_id\":\"");
    chat.extend_from_slice(id.as_bytes());
    chat.extend_from_slice(b"\",\"content\":\"");
    if block.is_error == Some("true") {
        chat.extend_from_slice(b"Error: ");
    }
    join(chat, &texts, b"\\n");
    chat.extend_from_slice(b"\"}");
    Some(())
}

thread_local! {
    /// The tools of this thread's last requests (by their bytes), as chat tools.
    static TOOLS: std::cell::RefCell<crate::recent::Recent<Vec<u8>>> =
        const { std::cell::RefCell::new(crate::recent::Recent::new()) };
}

/// A client tool → a function tool (its name, description unless `null`, and
/// input schema as written); Anthropic's own tools (a string `type` other than
/// `custom`) are refused.
fn tool(walk: &mut Walk<'_>, out: &mut Vec<u8>) -> Option<()> {
    let [kind, name, description, schema] =
        named_members(walk, ["type", "name", "description", "input_schema"])?;
    if let Some(kind) = kind.filter(|k| k.starts_with('"')) {
        (string_value(kind)? == "custom").then_some(())?;
    }
    let name = name?;
    inner(name)?;
    out.extend_from_slice(b"{\"type\":\"function\",\"function\":{\"name\":");
    out.extend_from_slice(name.as_bytes());
    if let Some(description) = description.filter(|d| *d != "null") {
        out.extend_from_slice(b",\"description\":");
        out.extend_from_slice(description.as_bytes());
    }
    out.extend_from_slice(b",\"parameters\":");
    out.extend_from_slice(
        schema
            .unwrap_or(r#"{"type":"object","properties":{}}"#)
            .as_bytes(),
    );
    out.extend_from_slice(b"}}");
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    /// Requests the writer writes (each branch of the translation in one or more).
    const WRITTEN: &[&str] = &[
        r#"{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#,
        // An agent's request: system blocks, tools, a tool call and its result.
        r#"{"model":"claude-x","max_tokens":1024,"stream":true,"system":[{"type":"text","text":"You are an agent.","cache_control":{"type":"ephemeral"}},{"type":"text","text":"Be brief."}],"tools":[{"name":"lookup","description":"Find people.","input_schema":{"type":"object","properties":{"q":{"type":"string"},"n":{"type":"integer","maximum":1e3}},"required":["q"]},"cache_control":{"type":"ephemeral"}},{"type":"custom","name":"bare","description":null},{"name":"nil","input_schema":null}],"messages":[{"role":"user","content":"Find them."},{"role":"assistant","content":[{"type":"thinking","thinking":"hmm","signature":"s"},{"type":"text","text":"Looking."},{"type":"tool_use","id":"toolu_1","name":"lookup","input":{ "q" : "a\u0041\/", "n" : 2.50, "deep": [1e2, {"x": null}] }}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"[{\"name\":\"p\"}]"},{"type":"text","text":"Summarise."}]}],"metadata":{"user_id":"u-1","other":1},"temperature":0.2,"tool_choice":{"type":"auto"},"thinking":{"type":"enabled","budget_tokens":2048}}"#,
        // Whitespace, escapes, the content before the role, members in another order.
        r#" { "max_tokens" : 5 , "messages" : [ { "content" : "a\nb\u00e9\"" , "role" : "user" , "extra" : [ 1 ] } , { "content" : [ { "text" : "x\ty" , "type" : "text" } ] , "role" : "assistant" } ] , "model" : "c\u0041" , "stream" : false , "system" : "be \"brief\"" } "#,
        // Every user block kind; a tool result that is an error, in parts.
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"one"},{"type":"text","text":"two\n"}],"is_error":true},{"type":"text","text":"look"},{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0K"}},{"type":"image","source":{"url":"https://e.x/a.png?q=1&b=\u00e9","type":"url"}},{"type":"document","source":{"type":"text","data":"plain doc"}},{"type":"document","title":"a.pdf","source":{"type":"base64","media_type":"application/pdf","data":"JVBERi0x"}},{"type":"document","source":{"type":"base64","data":7}}]}],"stop_sequences":["\n\nHuman:","END"],"top_k":40,"top_p":0.9,"thinking":{"type":"disabled","budget_tokens":"any"},"metadata":{"user_id":null},"tool_choice":{"type":"tool","name":"lookup","disable_parallel_tool_use":true}}"#,
        // A lone text document is plain content; calls without text have null
        // content; a missing id and input; an empty result; empty system texts.
        r#"{"model":"m","max_tokens":3,"system":[{"type":"text","text":""},{"type":"text","text":""}],"messages":[{"role":"user","content":[{"type":"document","source":{"type":"text","data":"d"}}]},{"role":"assistant","content":[{"type":"tool_use","name":"f"},{"type":"tool_use","id":7,"name":"g","input":null}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"x","content":null},{"type":"tool_result","tool_use_id":"y","is_error":false}]},{"role":"user","content":[]}],"tools":[],"tool_choice":{"type":"any"},"thinking":{"type":"enabled","budget_tokens":20000}}"#,
        r#"{"model":"m","max_tokens":3,"system":"","messages":[{"role":"assistant","content":[{"type":"redacted_thinking","data":"x"}]},{"role":"user","content":"q"}],"tool_choice":{"type":"none","name":5},"thinking":{"type":"enabled","budget_tokens":5000},"stream":true,"temperature":-1E0}"#,
        r#"{"model":"m","max_tokens":3,"system":[],"messages":[{"role":"user","content":"q"}],"tools":[{"type":7,"name":"n","description":{"long":"x"}}],"metadata":{"user_id":{"id":1}}}"#,
    ];

    /// Requests left to the tree path: refused there, or translated from members
    /// this writer does not read.
    const LEFT: &[&str] = &[
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"unknown":1}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"extra_headers":{"a":"b"}}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"tools":[{"type":"web_search_20250305","name":"web_search"}]}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"assistant","content":[{"type":"image","source":{"type":"url","url":"u"}}]}]}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"tool_use","id":"a","name":"f","input":{}}]}]}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"text","text":"a","text":"b"}]}]}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","con\u0074ent":"x"}]}"#,
        r#"{"model":"m","max_tokens":0,"messages":[{"role":"user","content":"x"}]}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"tool_choice":{"type":"some"}}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"thinking":{"type":"enabled"}}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"system":[{"type":"image","source":{}}]}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"file","file_id":"f"}}]}]}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"image","source":{}}]}]}]}"#,
        r#"{"model":"m","max_tokens":1,"messages":[]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"stream":null}"#,
        // One member of the wrong type each (the validator refuses them).
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"stop_sequences":[1]}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"top_k":1.5}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"temperature":"1"}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"metadata":[]}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"tools":[1]}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"tool_choice":"auto"}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"thinking":"on"}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"system":{}}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"stream":"true"}"#,
        r#"{"model":"m","max_tokens":"1","messages":[{"role":"user","content":"x"}]}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"system","content":"x"}]}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":5}]}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"tools":[{"name":"f","input_schema":{"maximum":1e400}}]}"#,
    ];

    /// The body the tree path sends an OpenAI-compatible upstream for `text` (the
    /// door's `translated_call` with no handler, then the provider's body): `None`
    /// when the tree path refuses the request.
    fn tree_body(text: &str) -> Option<Value> {
        let Ok(Value::Object(mut request)) = serde_json::from_str::<Value>(text) else {
            return None;
        };
        super::super::request::validate(&request, false).ok()?;
        let model = request.shift_remove("model")?;
        let messages = request.shift_remove("messages")?;
        request.shift_remove("extra_headers");
        let params = super::super::request::to_canonical(&messages, request).ok()?;
        let mut body = Map::new();
        body.insert("model".into(), model);
        body.extend(params);
        Some(Value::Object(body))
    }

    fn written(text: &str) -> Option<RawBody> {
        write(&Bytes::from(text.to_owned()))
    }

    #[test]
    fn what_is_written_is_what_the_tree_path_sends() {
        let texts = crate::json_scan::cut_and_edited(WRITTEN, b"\"\\{}[],:0a-e. \x01");
        let (mut accepted, mut trees) = (0, 0);
        for text in texts.iter().map(String::as_str).chain(LEFT.iter().copied()) {
            let tree = tree_body(text);
            trees += usize::from(tree.is_some());
            let Some(raw) = written(text) else {
                continue;
            };
            accepted += 1;
            let Some(tree) = tree else {
                panic!("written, but the tree path refuses it: {text}");
            };
            assert_eq!(
                crate::api::raw_body::normal_json(&raw.upstream_body(&raw.model, false)),
                tree.to_string(),
                "{text}"
            );
            assert_eq!(Some(raw.model.as_str()), tree["model"].as_str(), "{text}");
            assert_eq!(raw.stream, tree.get("stream").and_then(Value::as_bool));
        }
        assert!(accepted * 2 > trees, "{accepted} of {trees}");
    }

    #[test]
    fn the_usual_requests_are_written_and_the_others_left_to_the_tree() {
        for text in WRITTEN {
            let body = |raw: RawBody| raw.upstream_body(&raw.model, false);
            let first = written(text).map(body);
            assert!(first.is_some(), "not written: {text}");
            // The second time with the tools as the thread kept them.
            assert_eq!(written(text).map(body), first, "{text}");
        }
        for text in LEFT {
            assert!(written(text).is_none(), "written: {text}");
        }
    }

    #[test]
    fn an_agents_request_becomes_this_chat_request() {
        let raw = written(WRITTEN[1]).unwrap();
        assert_eq!(raw.stream, Some(true));
        let body: Value = serde_json::from_slice(&raw.upstream_body("local-model", false)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "model": "local-model",
                "messages": [
                    {"role": "system", "content": "You are an agent.\n\nBe brief."},
                    {"role": "user", "content": "Find them."},
                    {"role": "assistant", "content": "Looking.", "tool_calls": [{
                        "id": "toolu_1", "type": "function",
                        "function": {"name": "lookup", "arguments": r#"{"q":"aA/","n":2.5,"deep":[100.0,{"x":null}]}"#},
                    }]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "[{\"name\":\"p\"}]"},
                    {"role": "user", "content": "Summarise."},
                ],
                "max_tokens": 1024,
                "stream": true,
                "tools": [
                    {"type": "function", "function": {"name": "lookup", "description": "Find people.",
                        "parameters": {"type": "object", "properties": {"q": {"type": "string"},
                            "n": {"type": "integer", "maximum": 1000.0}}, "required": ["q"]}}},
                    {"type": "function", "function": {"name": "bare",
                        "parameters": {"type": "object", "properties": {}}}},
                    {"type": "function", "function": {"name": "nil", "parameters": null}},
                ],
                "user": "u-1",
                "temperature": 0.2,
                "tool_choice": "auto",
                "reasoning_effort": "low",
                "stream_options": {"include_usage": true},
            })
        );
    }

    #[test]
    fn nesting_is_limited_as_the_tree_parser_limits_it() {
        for depth in 120..132 {
            let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            for text in [
                format!(
                    r#"{{"model":"m","max_tokens":1,"messages":[{{"role":"user","content":"x"}}],"tools":[{{"name":"f","input_schema":{deep}}}]}}"#
                ),
                format!(
                    r#"{{"model":"m","max_tokens":1,"messages":[{{"content":[{{"type":"text","text":"t","x":{deep}}}],"role":"user"}}]}}"#
                ),
                format!(
                    r#"{{"model":"m","max_tokens":1,"messages":[{{"role":"assistant","content":[{{"type":"tool_use","name":"f","input":{deep}}}]}}]}}"#
                ),
            ] {
                let tree = tree_body(&text);
                match written(&text) {
                    Some(raw) => assert_eq!(
                        Some(crate::api::raw_body::normal_json(
                            &raw.upstream_body("m", false)
                        )),
                        tree.map(|t| t.to_string()),
                        "depth {depth}"
                    ),
                    None => assert!(tree.is_none() || depth > 125, "depth {depth}"),
                }
            }
        }
    }
}
