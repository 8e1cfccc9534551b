//! The Responses request written as a chat-completions request straight from the
//! client's bytes, for a connection whose upstream does not speak the Responses API
//! but takes a chat request as written (`Provider::takes_raw_chat`: OpenAI-compatible
//! servers, so a coding agent such as Codex on a local model) when nothing will look
//! at the request (no handler, no logger).
//!
//! The tree path parses the body into a tree, checks it (`request::validate`),
//! builds the canonical request from it (`request::to_canonical`, which copied every
//! tool's schema) and serializes that: 2.3 million instructions for an agent's
//! request of 16 KB (bench/README.md, session 31). [`write`] does it in one walk
//! of the text, as `messages::chat_body` does for the Messages door: values are
//! copied as the client wrote them (the same JSON, not always the same bytes), and
//! only what the translation changes is written anew. It also keeps the members the
//! response echoes ([`Echoes`]), as text.
//!
//! It answers only for a request the tree path surely accepts and translates; for
//! anything else (a member given twice or a key written with escapes where the
//! translation reads one, what needs server-side state, a built-in tool, an item or
//! part the translation refuses, whatever `request::validate` refuses) it answers
//! `None`, and the door takes the tree path, which gives every error its answer.
//! The differential test below holds it to "written here ⇒ the tree path sends the
//! same JSON and echoes the same members".

use std::borrow::Cow;

use bytes::Bytes;

use super::answer::{Echo, Skeleton};
use crate::api::raw_body::{
    inner, join, named_members, named_members_of, not_blank, number_text, strings, walk_body,
    ChatWriter, RawBody,
};
use crate::json_scan::{first_value, has_escape, string_value, Walk};

/// The chat request for the Responses request in `body`, with the client's model,
/// and what its response echoes; `None` sends the request down the tree path.
pub fn write(body: &Bytes) -> Option<(RawBody, Echoes<'_>)> {
    let mut request = Request {
        writer: ChatWriter::new(body.len()),
        input: false,
        stream: None,
        echoes: Echoes::default(),
    };
    let raw = walk_body(body, not_blank, |walk, key| request.member(walk, key))?;
    request.input.then_some(())?;
    let instructions = request
        .echoes
        .instructions
        .and_then(inner)
        .filter(|text| !text.is_empty());
    let system = instructions
        .as_ref()
        .map(|text| (std::slice::from_ref(text), &b""[..]));
    let chat = request.writer.finish(raw.model, system, request.stream);
    Some((chat, request.echoes))
}

/// The members a translated response echoes (as OpenAI's do), as the client wrote
/// them; `null` ones are not given.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echoes<'a> {
    instructions: Option<&'a str>,
    max_output_tokens: Option<&'a str>,
    metadata: Option<&'a str>,
    parallel_tool_calls: Option<&'a str>,
    temperature: Option<&'a str>,
    text: Option<&'a str>,
    tool_choice: Option<&'a str>,
    tools: Option<&'a str>,
    top_p: Option<&'a str>,
    user: Option<&'a str>,
    /// `reasoning.effort`, `null` included.
    effort: Option<&'a str>,
}

impl Echoes<'_> {
    /// The response's skeleton for the upstream's `model` (what
    /// `Skeleton::new` makes of the request's tree).
    pub fn skeleton(&self, model: &str) -> Skeleton {
        let given = |key: &str| {
            match key {
                "instructions" => self.instructions,
                "max_output_tokens" => self.max_output_tokens,
                "metadata" => self.metadata,
                "parallel_tool_calls" => self.parallel_tool_calls,
                "temperature" => self.temperature,
                "text" => self.text,
                "tool_choice" => self.tool_choice,
                "tools" => self.tools,
                "top_p" => self.top_p,
                "user" => self.user,
                _ => None,
            }
            .map(Echo::Text)
        };
        Skeleton::of(given, self.effort.map(Echo::Text), model)
    }
}

/// What the walk of the top-level members gathered and wrote (the members after
/// `messages` in the client's order, as `to_canonical` puts them).
struct Request<'a> {
    writer: ChatWriter,
    /// `input` was given (it is required).
    input: bool,
    stream: Option<bool>,
    echoes: Echoes<'a>,
}

impl<'a> Request<'a> {
    /// One top-level member but `model`: checked as `request::validate` checks it
    /// and translated as `request::to_canonical` translates it, or refused. Both
    /// pass over `null` members.
    fn member(&mut self, walk: &mut Walk<'a>, key: &'a str) -> Option<()> {
        if walk.null() {
            // `input` is required; `extra_headers` are the tree path's to read.
            return (key != "input" && key != "extra_headers").then_some(());
        }
        match key {
            "input" => {
                let chat = &mut self.writer.messages;
                if walk.at_string() {
                    chat.extend_from_slice(b",{\"role\":\"user\",\"content\":");
                    chat.extend_from_slice(walk.skip()?.as_bytes());
                    chat.push(b'}');
                } else {
                    let mut items = Items::default();
                    walk.array(|walk| items.item(walk, chat))?;
                    items.close(chat);
                }
                self.input = true;
            }
            "instructions" => self.echoes.instructions = Some(string(walk)?),
            "stream" => {
                let stream = walk.bool_or_null()??;
                self.stream = Some(stream);
                self.writer
                    .param(key, if stream { "true" } else { "false" });
            }
            "parallel_tool_calls" => {
                let text = boolean(walk)?;
                self.echoes.parallel_tool_calls = Some(text);
                self.writer.param(key, text);
            }
            "store" => drop(boolean(walk)?),
            // `true` needs server-side state: the tree path says so.
            "background" => (boolean(walk)? == "false").then_some(())?,
            "user" => {
                let text = string(walk)?;
                self.echoes.user = Some(text);
                self.writer.param(key, text);
            }
            "safety_identifier" => drop(string(walk)?),
            "temperature" | "top_p" => {
                let text = number_text(walk)?;
                if key == "temperature" {
                    self.echoes.temperature = Some(text);
                } else {
                    self.echoes.top_p = Some(text);
                }
                self.writer.param(key, text);
            }
            // Passed on whatever they hold, as on the tree path.
            "service_tier" | "top_logprobs" => {
                let text = walk.skip()?;
                self.writer.param(key, text);
            }
            "max_output_tokens" => {
                let text = walk.skip()?;
                (text.parse::<u64>().ok()? >= 1).then_some(())?;
                self.echoes.max_output_tokens = Some(text);
                self.writer.param("max_completion_tokens", text);
            }
            "metadata" => self.echoes.metadata = Some(object(walk)?),
            "stream_options" => drop(object(walk)?),
            "include" => strings(walk)?,
            "truncation" | "prompt_cache_key" => drop(walk.skip()?),
            "tools" => {
                let start = walk.at();
                self.writer.kept_list("tools", walk, &TOOLS, tool)?;
                self.echoes.tools = Some(walk.text_since(start));
            }
            "tool_choice" => {
                let text = walk.skip()?;
                self.echoes.tool_choice = Some(text);
                let choice = tool_choice(text)?;
                self.writer.param(key, &choice);
            }
            "text" => {
                let start = walk.at();
                let [verbosity, format] = named_members(walk, ["verbosity", "format"])?;
                self.echoes.text = Some(walk.text_since(start));
                self.text_config(verbosity, format)?;
            }
            "reasoning" => {
                let [effort] = named_members(walk, ["effort"])?;
                self.echoes.effort = effort;
                if let Some(effort) = effort.filter(|e| *e != "null") {
                    inner(effort)?;
                    self.writer.param("reasoning_effort", effort);
                }
            }
            // What needs server-side state, what the tree path turns into headers,
            // and anything without an equivalent in a chat request: the tree path
            // refuses it, naming it.
            _ => return None,
        }
        Some(())
    }

    /// `text.verbosity` → `verbosity`; `text.format` → `response_format`.
    fn text_config(&mut self, verbosity: Option<&'a str>, format: Option<&'a str>) -> Option<()> {
        if let Some(verbosity) = verbosity.filter(|v| *v != "null") {
            self.writer.param("verbosity", verbosity);
        }
        let Some(format) = format.filter(|f| *f != "null") else {
            return Some(());
        };
        let [kind, name, description, schema, strict] =
            named_members_of(format, ["type", "name", "description", "schema", "strict"])?;
        match string_value(kind?)?.as_ref() {
            "text" => {}
            "json_object" => self
                .writer
                .param("response_format", r#"{"type":"json_object"}"#),
            "json_schema" => {
                let name = name?;
                inner(name)?;
                let mut value = String::from(r#"{"type":"json_schema","json_schema":{"name":"#);
                value.push_str(name);
                for (key, given) in [
                    ("description", description),
                    ("schema", schema),
                    ("strict", strict),
                ] {
                    if let Some(given) = given.filter(|g| *g != "null") {
                        value.push_str(",\"");
                        value.push_str(key);
                        value.push_str("\":");
                        value.push_str(given);
                    }
                }
                value.push_str("}}");
                self.writer.param("response_format", &value);
            }
            _ => return None,
        }
        Some(())
    }
}

/// A string value, as written.
fn string<'a>(walk: &mut Walk<'a>) -> Option<&'a str> {
    walk.at_string().then_some(())?;
    walk.skip()
}

/// An object value, as written.
fn object<'a>(walk: &mut Walk<'a>) -> Option<&'a str> {
    walk.at_object().then_some(())?;
    walk.skip()
}

/// `true` or `false`, as written.
fn boolean<'a>(walk: &mut Walk<'a>) -> Option<&'a str> {
    match walk.skip()? {
        text @ ("true" | "false") => Some(text),
        _ => None,
    }
}

/// `tool_choice` → the chat `tool_choice`.
fn tool_choice(text: &str) -> Option<Cow<'_, str>> {
    if text.starts_with('"') {
        return matches!(string_value(text)?.as_ref(), "auto" | "none" | "required")
            .then_some(Cow::Borrowed(text));
    }
    let [kind, name] = named_members_of(text, ["type", "name"])?;
    (string_value(kind?)? == "function").then_some(())?;
    let name = name?;
    inner(name)?;
    Some(Cow::Owned(format!(
        r#"{{"type":"function","function":{{"name":{name}}}}}"#
    )))
}

thread_local! {
    /// The tools of this thread's last requests (by their bytes), as chat tools.
    static TOOLS: std::cell::RefCell<crate::recent::Recent<Vec<u8>>> =
        const { std::cell::RefCell::new(crate::recent::Recent::new()) };
}

/// A function tool → a chat function tool (its name, and its description,
/// parameters and `strict` unless `null`); built-in tools are refused.
fn tool(walk: &mut Walk<'_>, out: &mut Vec<u8>) -> Option<()> {
    let [kind, name, description, parameters, strict] = named_members(
        walk,
        ["type", "name", "description", "parameters", "strict"],
    )?;
    (string_value(kind?)? == "function").then_some(())?;
    let name = name?;
    inner(name)?;
    out.extend_from_slice(b"{\"type\":\"function\",\"function\":{\"name\":");
    out.extend_from_slice(name.as_bytes());
    for (key, given) in [
        ("description", description),
        ("parameters", parameters),
        ("strict", strict),
    ] {
        if let Some(given) = given.filter(|g| *g != "null") {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            out.extend_from_slice(given.as_bytes());
        }
    }
    out.extend_from_slice(b"}}");
    Some(())
}

/// The input items, written as chat messages. An assistant message is left open
/// until another message comes, so that the function calls after it join it as
/// its tool calls (as the tree path appends them to it).
#[derive(Default)]
struct Items {
    /// The last message written is an assistant's, still open; with whether it has
    /// tool calls (its list open too).
    open_assistant: Option<bool>,
}

impl Items {
    fn item<'a>(&mut self, walk: &mut Walk<'a>, chat: &mut Vec<u8>) -> Option<()> {
        let item = Item::read(walk)?;
        let kind = match (&item.kind, item.role_given) {
            (None, true) => "message",
            (Some(kind), _) => kind.as_ref(),
            (None, false) => return None,
        };
        match kind {
            "message" => {
                self.close(chat);
                let role = match item.role.as_deref()? {
                    role @ ("user" | "assistant" | "system") => role,
                    "developer" => "system",
                    _ => return None,
                };
                chat.extend_from_slice(b",{\"role\":\"");
                chat.extend_from_slice(role.as_bytes());
                chat.extend_from_slice(b"\",\"content\":");
                match item.content? {
                    Content::Text(text) => chat.extend_from_slice(text.as_bytes()),
                    Content::Parts(parts) => write_parts(&parts, role, chat)?,
                }
                if role == "assistant" {
                    self.open_assistant = Some(false);
                } else {
                    chat.push(b'}');
                }
            }
            "function_call" => {
                let (id, name, arguments) = (item.call_id?, item.name?, item.arguments?);
                for text in [id, name, arguments] {
                    inner(text)?;
                }
                match self.open_assistant {
                    Some(true) => chat.push(b','),
                    Some(false) => chat.extend_from_slice(b",\"tool_calls\":["),
                    None => chat.extend_from_slice(
                        b",{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[",
                    ),
                }
                self.open_assistant = Some(true);
                chat.extend_from_slice(b"{\"id\":");
                chat.extend_from_slice(id.as_bytes());
                chat.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
                chat.extend_from_slice(name.as_bytes());
                chat.extend_from_slice(b",\"arguments\":");
                chat.extend_from_slice(arguments.as_bytes());
                chat.extend_from_slice(b"}}");
            }
            "function_call_output" => {
                self.close(chat);
                let id = item.call_id?;
                inner(id)?;
                chat.extend_from_slice(b",{\"role\":\"tool\",\"tool_call_id\":");
                chat.extend_from_slice(id.as_bytes());
                chat.extend_from_slice(b",\"content\":");
                match item.output? {
                    Content::Text(text) => chat.extend_from_slice(text.as_bytes()),
                    Content::Parts(parts) => {
                        let mut texts = Vec::with_capacity(parts.len());
                        for part in &parts {
                            match part.kind.as_deref() {
                                Some("input_text" | "output_text") => {
                                    texts.push(inner(part.text?)?)
                                }
                                _ => return None,
                            }
                        }
                        chat.push(b'"');
                        join(chat, &texts, b"\\n");
                        chat.push(b'"');
                    }
                }
                chat.push(b'}');
            }
            // Earlier reasoning: not given back to a chat upstream.
            "reasoning" => {}
            _ => return None,
        }
        Some(())
    }

    /// Ends the open assistant message, if any.
    fn close(&mut self, chat: &mut Vec<u8>) {
        match self.open_assistant.take() {
            Some(true) => chat.extend_from_slice(b"]}"),
            Some(false) => chat.push(b'}'),
            None => {}
        }
    }
}

/// A message's parts: their texts joined (by newlines in a user's message) when
/// all are texts, a list of chat parts otherwise (images and files are a user's).
fn write_parts(parts: &[Part<'_>], role: &str, chat: &mut Vec<u8>) -> Option<()> {
    let user = role == "user";
    let mut texts = Vec::with_capacity(parts.len());
    let mut all_texts = true;
    for part in parts {
        match part.kind.as_deref() {
            Some("input_text" | "output_text") => texts.push(inner(part.text?)?),
            // A refusal that is not a string is an empty text, as on the tree path.
            Some("refusal") => texts.push(part.refusal.and_then(inner).unwrap_or_default()),
            Some("input_image") if user => {
                inner(part.image_url?)?;
                all_texts = false;
            }
            Some("input_file") if user => {
                inner(part.file_data?)?;
                all_texts = false;
            }
            _ => return None,
        }
    }
    if all_texts {
        chat.push(b'"');
        join(chat, &texts, if user { b"\\n" } else { b"" });
        chat.push(b'"');
        return Some(());
    }
    chat.push(b'[');
    let mut texts = texts.into_iter();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            chat.push(b',');
        }
        match part.kind.as_deref() {
            Some("input_image") => {
                chat.extend_from_slice(b"{\"type\":\"image_url\",\"image_url\":{\"url\":");
                chat.extend_from_slice(part.image_url?.as_bytes());
                if let Some(detail) = part.detail.filter(|d| d.starts_with('"')) {
                    chat.extend_from_slice(b",\"detail\":");
                    chat.extend_from_slice(detail.as_bytes());
                }
                chat.extend_from_slice(b"}}");
            }
            Some("input_file") => {
                chat.extend_from_slice(b"{\"type\":\"file\",\"file\":{\"file_data\":");
                chat.extend_from_slice(part.file_data?.as_bytes());
                if let Some(name) = part.filename.filter(|n| n.starts_with('"')) {
                    chat.extend_from_slice(b",\"filename\":");
                    chat.extend_from_slice(name.as_bytes());
                }
                chat.extend_from_slice(b"}}");
            }
            _ => {
                chat.extend_from_slice(b"{\"type\":\"text\",\"text\":\"");
                chat.extend_from_slice(texts.next()?.as_bytes());
                chat.extend_from_slice(b"\"}");
            }
        }
    }
    chat.push(b']');
    Some(())
}

/// A message's `content` or a function call's `output`: a string as written, or
/// its parts.
enum Content<'a> {
    Text(&'a str),
    Parts(Vec<Part<'a>>),
}

impl<'a> Content<'a> {
    /// A string or a list of parts; anything else is for the tree path (which
    /// refuses it where it reads it).
    fn read(walk: &mut Walk<'a>) -> Option<Content<'a>> {
        if walk.at_string() {
            return walk.skip().map(Content::Text);
        }
        let mut parts = Vec::new();
        walk.array(|walk| {
            parts.push(Part::read(walk)?);
            Some(())
        })?;
        Some(Content::Parts(parts))
    }
}

/// An input item's members that the translation reads (each at most once), as
/// written; `type` and `role` decoded.
#[derive(Default)]
struct Item<'a> {
    kind: Option<Cow<'a, str>>,
    /// `role` is a member (whatever its value: with no `type`, the item is a message).
    role_given: bool,
    role: Option<Cow<'a, str>>,
    content: Option<Content<'a>>,
    call_id: Option<&'a str>,
    name: Option<&'a str>,
    arguments: Option<&'a str>,
    output: Option<Content<'a>>,
}

impl<'a> Item<'a> {
    fn read(walk: &mut Walk<'a>) -> Option<Item<'a>> {
        let mut item = Item::default();
        let mut type_given = false;
        walk.object(|walk, key| match key {
            "type" => {
                crate::json_scan::first_time(&mut type_given)?;
                // `null` is no type.
                if !walk.null() {
                    item.kind = Some(walk.string()?);
                }
                Some(())
            }
            "role" => {
                crate::json_scan::first_time(&mut item.role_given)?;
                if walk.at_string() {
                    item.role = Some(walk.string()?);
                } else {
                    walk.skip()?;
                }
                Some(())
            }
            "content" => first_value(&mut item.content, || Content::read(walk)),
            "output" => first_value(&mut item.output, || Content::read(walk)),
            "call_id" => first_value(&mut item.call_id, || walk.skip()),
            "name" => first_value(&mut item.name, || walk.skip()),
            "arguments" => first_value(&mut item.arguments, || walk.skip()),
            _ if has_escape(key) => None,
            _ => walk.skip().map(drop),
        })?;
        Some(item)
    }
}

/// A content part's members that the translation reads, as written; `type`
/// decoded (`None` when it is not a string).
struct Part<'a> {
    kind: Option<Cow<'a, str>>,
    text: Option<&'a str>,
    refusal: Option<&'a str>,
    image_url: Option<&'a str>,
    detail: Option<&'a str>,
    file_data: Option<&'a str>,
    filename: Option<&'a str>,
}

impl<'a> Part<'a> {
    fn read(walk: &mut Walk<'a>) -> Option<Part<'a>> {
        let [kind, text, refusal, image_url, detail, file_data, filename] = named_members(
            walk,
            [
                "type",
                "text",
                "refusal",
                "image_url",
                "detail",
                "file_data",
                "filename",
            ],
        )?;
        Some(Part {
            kind: kind.and_then(string_value),
            text,
            refusal,
            image_url,
            detail,
            file_data,
            filename,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::answer::Outcome;
    use super::*;
    use serde_json::{Map, Value};

    /// Requests the writer writes (each branch of the translation in one or more).
    const WRITTEN: &[&str] = &[
        r#"{"model":"gpt-x","input":"hi"}"#,
        // A coding agent's request: instructions, tools, reasoning, calls and outputs.
        r#"{"model":"m","stream":true,"store":false,"instructions":"You are an agent.","tools":[{"type":"function","name":"lookup","description":"Find.","parameters":{"type":"object","properties":{"q":{"type":"string","maxLength":1e2}}},"strict":false},{"type":"function","name":"bare","description":null,"parameters":null}],"tool_choice":"auto","parallel_tool_calls":true,"reasoning":{"effort":"medium","summary":"auto"},"include":["reasoning.encrypted_content"],"input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"Find them."}]},{"type":"reasoning","id":"rs_1","summary":[],"encrypted_content":"gAAAAB"},{"type":"message","role":"assistant","content":[{"type":"output_text","text":"Looking."}]},{"type":"function_call","call_id":"call_1","name":"lookup","arguments":"{\"q\":\"a\"}"},{"type":"reasoning","id":"rs_2","summary":[]},{"type":"function_call","name":"lookup","arguments":"{}","call_id":"call_2","id":"fc_2","status":"completed"},{"type":"function_call_output","call_id":"call_1","output":"[1]"},{"type":"function_call_output","call_id":"call_2","output":[{"type":"input_text","text":"a"},{"type":"output_text","text":"b\n"}]},{"role":"user","content":"Go on."}]}"#,
        // Whitespace, escapes, roles, parts, formats, nulls, every echoed member.
        r#" { "input" : [ { "content" : [ { "text" : "Look:" , "type" : "input_text" } , { "type" : "input_image" , "image_url" : "data:image/png;base64,AAA" , "detail" : "low" } , { "type" : "input_file" , "file_data" : "data:application/pdf;base64,JVBE" , "filename" : "a.pdf" } , { "type" : "input_image" , "image_url" : "https://e.x/i.png" , "detail" : null } ] , "role" : "user" , "type" : null } , { "role" : "developer" , "content" : "Use tools." } , { "role" : "system" , "content" : [ { "type" : "input_text" , "text" : "s1" } , { "type" : "input_text" , "text" : "s2" } ] } , { "role" : "assistant" , "content" : [ { "type" : "refusal" , "refusal" : "no" } , { "type" : "refusal" , "refusal" : 5 } , { "type" : "output_text" , "text" : "x\u00e9" } ] } , { "role" : "user" , "content" : [ ] } ] , "model" : "c\u0041" , "instructions" : "" , "text" : { "format" : { "type" : "json_schema" , "name" : "out" , "schema" : { "type" : "object" } , "strict" : true , "description" : null } , "verbosity" : "low" } , "max_output_tokens" : 100 , "temperature" : 0.2 , "top_p" : 1E-1 , "metadata" : { "k" : "v" } , "user" : "u-1" , "safety_identifier" : "s" , "service_tier" : "flex" , "top_logprobs" : 2 , "truncation" : "auto" , "prompt_cache_key" : 7 , "stream_options" : { } , "background" : false , "previous_response_id" : null , "conversation" : null , "prompt" : null , "unknown" : null , "stream" : false , "tool_choice" : { "type" : "function" , "name" : "lookup" } , "reasoning" : { "effort" : null } } "#,
        r#"{"model":"m","input":[{"type":"function_call","call_id":"c","name":"f","arguments":""},{"type":"message","role":"assistant","content":"x"},{"type":"function_call","call_id":"d","name":"g","arguments":"{}"}],"text":{"format":{"type":"json_object"}},"tools":[],"tool_choice":"required","reasoning":{}}"#,
        r#"{"model":"m","input":[],"instructions":"be brief","text":{"format":{"type":"text"},"verbosity":null},"tool_choice":"none","reasoning":{"effort":"high"},"parallel_tool_calls":false}"#,
    ];

    /// Requests left to the tree path: refused there, or read by it alone.
    const LEFT: &[&str] = &[
        r#"{"model":"m","input":"x","unknown":1}"#,
        r#"{"model":"m","input":"x","extra_headers":{"a":"b"}}"#,
        r#"{"model":"m","input":"x","previous_response_id":"resp_1"}"#,
        r#"{"model":"m","input":"x","background":true}"#,
        r#"{"model":"m","input":"x","tools":[{"type":"web_search"}]}"#,
        r#"{"model":"m","input":[{"type":"item_reference","id":"msg_1"}]}"#,
        r#"{"model":"m","input":[{"type":"web_search_call","id":"ws_1"}]}"#,
        r#"{"model":"m","input":[{"role":"user","content":[{"type":"input_image","file_id":"file-1"}]}]}"#,
        r#"{"model":"m","input":[{"role":"assistant","content":[{"type":"input_image","image_url":"u"}]}]}"#,
        r#"{"model":"m","input":[{"role":"tool","content":"x"}]}"#,
        r#"{"model":"m","input":[{"content":"x"}]}"#,
        r#"{"model":"m","input":[{"type":"function_call","call_id":"c","name":"f"}]}"#,
        r#"{"model":"m","input":[{"type":"message","role":"user","role":"user","content":"x"}]}"#,
        r#"{"model":"m","input":[{"type":"message","role":"user","cont\u0065nt":"x"}]}"#,
        r#"{"model":"m","input":"x","tool_choice":{"type":"allowed_tools"}}"#,
        r#"{"model":"m","input":"x","text":{"format":{"type":"json_schema"}}}"#,
        r#"{"model":"m","input":"x","reasoning":{"effort":1}}"#,
        r#"{"model":"m","input":"x","max_output_tokens":0}"#,
        r#"{"model":"m","input":null}"#,
        // One member of the wrong type each (the validator refuses them).
        r#"{"model":"m","input":"x","store":"yes"}"#,
        r#"{"model":"m","input":"x","background":0}"#,
        r#"{"model":"m","input":"x","parallel_tool_calls":"no"}"#,
        r#"{"model":"m","input":"x","safety_identifier":5}"#,
        r#"{"model":"m","input":"x","user":5}"#,
        r#"{"model":"m","input":"x","instructions":["a"]}"#,
        r#"{"model":"m","input":"x","temperature":"1"}"#,
        r#"{"model":"m","input":"x","metadata":[]}"#,
        r#"{"model":"m","input":"x","stream_options":true}"#,
        r#"{"model":"m","input":"x","include":[1]}"#,
        r#"{"model":"m","input":"x","text":"json"}"#,
        r#"{"model":"m","input":"x","reasoning":"high"}"#,
        r#"{"model":"m","input":"x","tools":[1]}"#,
        r#"{"model":"m","input":"x","tool_choice":1}"#,
        r#"{"model":"m","input":"x","stream":"true"}"#,
        r#"{"model":"m","input":5}"#,
        r#"{"model":"m","input":[5]}"#,
        r#"{"model":"m"}"#,
    ];

    /// What the tree path does for `text`: the body it sends an OpenAI-compatible
    /// upstream (`translated_call` with no handler, then the provider's body) and the
    /// response's skeleton (ids and times left out); `None` when it refuses.
    fn tree(text: &str) -> Option<(Value, Value)> {
        let Ok(Value::Object(mut request)) = serde_json::from_str::<Value>(text) else {
            return None;
        };
        super::super::request::validate(&request).ok()?;
        let model = request.shift_remove("model")?;
        request.shift_remove("extra_headers");
        let skeleton = Skeleton::new(&request, "up");
        let params = super::super::request::to_canonical(request).ok()?;
        let mut body = Map::new();
        body.insert("model".into(), model);
        body.extend(params);
        Some((Value::Object(body), skeleton_json(&skeleton)))
    }

    fn skeleton_json(skeleton: &Skeleton) -> Value {
        let mut text = Vec::new();
        skeleton.write(&Outcome::IN_PROGRESS, &mut text);
        let mut value: Value = serde_json::from_slice(&text).unwrap();
        let object = value.as_object_mut().unwrap();
        object.shift_remove("id");
        object.shift_remove("created_at");
        value
    }

    /// `write`'s body (with the client's model) and skeleton, as JSON.
    fn written(text: &str) -> Option<(String, Value, String, Option<bool>)> {
        let bytes = Bytes::from(text.to_owned());
        let (chat, echoes) = write(&bytes)?;
        Some((
            crate::api::raw_body::normal_json(&chat.upstream_body(&chat.model, false)),
            skeleton_json(&echoes.skeleton("up")),
            chat.model.clone(),
            chat.stream,
        ))
    }

    #[test]
    fn what_is_written_is_what_the_tree_path_sends_and_echoes() {
        let texts = crate::json_scan::cut_and_edited(WRITTEN, b"\"\\{}[],:0a-e. \x01");
        let (mut accepted, mut trees) = (0, 0);
        for text in texts.iter().map(String::as_str).chain(LEFT.iter().copied()) {
            let tree = tree(text);
            trees += usize::from(tree.is_some());
            let Some((body, skeleton, model, stream)) = written(text) else {
                continue;
            };
            accepted += 1;
            let Some((tree_body, tree_skeleton)) = tree else {
                panic!("written, but the tree path refuses it: {text}");
            };
            assert_eq!(body, tree_body.to_string(), "{text}");
            assert_eq!(skeleton, tree_skeleton, "{text}");
            assert_eq!(Some(model.as_str()), tree_body["model"].as_str(), "{text}");
            assert_eq!(stream, tree_body.get("stream").and_then(Value::as_bool));
        }
        assert!(accepted * 2 > trees, "{accepted} of {trees}");
    }

    #[test]
    fn the_usual_requests_are_written_and_the_others_left_to_the_tree() {
        for text in WRITTEN {
            let first = written(text);
            assert!(first.is_some(), "not written: {text}");
            // The second time with the tools as the thread kept them.
            assert_eq!(written(text), first, "{text}");
        }
        for text in LEFT {
            assert!(written(text).is_none(), "written: {text}");
        }
    }

    #[test]
    fn an_agents_request_becomes_this_chat_request() {
        let (body, _, _, stream) = written(WRITTEN[1]).unwrap();
        assert_eq!(stream, Some(true));
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "model": "m",
                "messages": [
                    {"role": "system", "content": "You are an agent."},
                    {"role": "user", "content": "Find them."},
                    {"role": "assistant", "content": "Looking.", "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"a\"}"}},
                        {"id": "call_2", "type": "function", "function": {"name": "lookup", "arguments": "{}"}},
                    ]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "[1]"},
                    {"role": "tool", "tool_call_id": "call_2", "content": "a\nb\n"},
                    {"role": "user", "content": "Go on."},
                ],
                "stream": true,
                "tools": [
                    {"type": "function", "function": {"name": "lookup", "description": "Find.",
                        "parameters": {"type": "object", "properties": {"q": {"type": "string", "maxLength": 100.0}}},
                        "strict": false}},
                    {"type": "function", "function": {"name": "bare"}},
                ],
                "tool_choice": "auto",
                "parallel_tool_calls": true,
                "reasoning_effort": "medium",
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
                    r#"{{"model":"m","input":"x","tools":[{{"type":"function","name":"f","parameters":{deep}}}]}}"#
                ),
                format!(
                    r#"{{"model":"m","input":[{{"role":"user","content":[{{"type":"input_text","text":"t","x":{deep}}}]}}]}}"#
                ),
                format!(r#"{{"model":"m","input":"x","metadata":{{"a":{deep}}}}}"#),
            ] {
                let tree = tree(&text);
                match written(&text) {
                    Some((body, skeleton, _, _)) => {
                        let (tree_body, tree_skeleton) = tree.expect("the tree path takes it");
                        assert_eq!(body, tree_body.to_string(), "depth {depth}");
                        assert_eq!(skeleton, tree_skeleton, "depth {depth}");
                    }
                    None => assert!(tree.is_none() || depth > 125, "depth {depth}"),
                }
            }
        }
    }
}
