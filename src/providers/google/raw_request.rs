//! The Gemini request written straight from the client's bytes, as
//! `anthropic::raw_request` does for Anthropic: a chat request `api::raw_chat` let
//! through whose every member this module knows becomes the `generateContent` body
//! in one walk, with no request tree, no Gemini tree and no serializing (about
//! 17,000 instructions a request; bench/README.md, session 19).
//!
//! It knows system, developer, user and assistant messages whose content is a string,
//! `null` or a list of plain text parts, an assistant's `tool_calls` (with the thought
//! signatures their ids carry or the gateway kept for them, see `signatures`), tool
//! and legacy function results, function `tools` (their schemas cleaned by
//! `schema::write_parameters`, as `schema::sanitize_parameters` cleans them),
//! `tool_choice` (but `allowed_tools`), and the settings `temperature`, `top_p`,
//! `presence_penalty`, `frequency_penalty`, `max_tokens`, `max_completion_tokens`,
//! `stop`, `seed` and `n` (1): an agent's requests (15 KB with 20 tools:
//! bench/README.md, sessions 33 and 34). A gateway tool-call id whose signature only
//! the shared backend could tell, a legacy `function_call`, `functions`,
//! `response_format`, `reasoning_effort`, `top_k` and other content parts make
//! [`write`] answer `None`, and `request::build_request` reads the request as a
//! tree, as before (with every error). What [`write`] writes is byte for byte what
//! that tree serializes to (the differential tests below).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use serde_json::Value;

use super::request::{RequestOptions, MAX_STOP_SEQUENCES};
use super::{ids, schema};
use crate::api::raw_body::{kept, named_members_of};
use crate::json_scan::{
    first_value, has_escape, string_value, write_compact, write_json_str, JsonText, Walk,
};
use crate::providers::raw_request::{
    called_function, description as description_of, members_and, positive, stop_strings,
    text_messages_and, write_strings, write_text_objects,
};
use crate::recent::Recent;

/// Members `build_request` acts on that this writer leaves to it. A stream's
/// `stream_options` (all `raw_chat` lets through: one that asks for the usage) is
/// dropped, as `build_request` drops it: the usage asked stays with the call.
const LEFT_TO_THE_TREE: [&str; 5] = [
    "functions",
    "function_call",
    "top_k",
    "response_format",
    "reasoning_effort",
];

/// Message members `build_request` reads besides `role`, `content`, `tool_calls`,
/// `tool_call_id` and `name`.
const MESSAGE_MEMBERS_LEFT_TO_THE_TREE: [&str; 1] = ["function_call"];

/// One part of a turn, as `build_request` makes it.
enum Part<'a> {
    /// `{"text":…}`.
    Text(JsonText<'a>),
    /// `{"functionCall":{"name":…,"args":…}}`, and its `thoughtSignature`.
    Call {
        name: Cow<'a, str>,
        /// The arguments object, written.
        args: Vec<u8>,
        signature: Option<Cow<'static, str>>,
    },
    /// `{"functionResponse":{"name":…,"response":…}}`, the response written
    /// (shared with the thread's [`RESULTS`] when kept there).
    Response {
        name: Cow<'a, str>,
        response: Rc<Vec<u8>>,
    },
}

/// One turn: its Gemini role and its parts.
type Turn<'a> = (&'static str, Vec<Part<'a>>);

/// The Gemini body for the chat request `body` (a JSON object, checked); `None`
/// when the request has something this writer leaves to the tree.
pub fn write(body: &str, model: &str, options: &RequestOptions) -> Option<Vec<u8>> {
    // The tools, most of an agent's request, are written as the last request with
    // the same tools had them written (see `declared`).
    let (mut conversation_read, mut tools_read) = (None, None);
    let [temperature, top_p, presence, frequency, max_completion_tokens, max_tokens, stop, seed, tool_choice] =
        members_and(
            body,
            [
                "temperature",
                "top_p",
                "presence_penalty",
                "frequency_penalty",
                "max_completion_tokens",
                "max_tokens",
                "stop",
                "seed",
                "tool_choice",
            ],
            &LEFT_TO_THE_TREE,
            |walk, key| match key {
                "messages" => first_value(&mut conversation_read, || {
                    conversation(walk, model, options)
                })
                .map(|()| true),
                "tools" => first_value(&mut tools_read, || {
                    if walk.null() {
                        Some(None)
                    } else {
                        declared(walk).map(Some)
                    }
                })
                .map(|()| true),
                _ => Some(false),
            },
        )?;
    let (system, turns) = conversation_read?;
    let declared = tools_read.flatten();
    let (declarations, names): (&[u8], &[String]) = match declared.as_deref() {
        Some(Some(declared)) => (&declared.written, &declared.names),
        _ => (&[], &[]),
    };
    let tool_config = match tool_choice {
        None | Some("null") => None,
        Some(raw) => Some(tool_config(raw, names)?),
    };

    // `generationConfig`, in the order `build_request` inserts its members.
    let mut config: Vec<(&str, Cow<'_, str>)> = Vec::new();
    for (name, raw) in [
        ("temperature", temperature),
        ("topP", top_p),
        ("presencePenalty", presence),
        ("frequencyPenalty", frequency),
    ] {
        if let Some(number) = number(raw)? {
            config.push((name, Cow::Owned(number)));
        }
    }
    let max = match positive(max_completion_tokens, i64::MAX as u64)? {
        Some(max) => Some(max),
        None => positive(max_tokens, i64::MAX as u64)?,
    };
    if let Some(max) = max {
        config.push(("maxOutputTokens", Cow::Owned(max.to_string())));
    }
    if let Some(sequences) = stop_sequences(stop)? {
        config.push(("stopSequences", Cow::Owned(sequences)));
    }
    if let Some(seed) = integer(seed)? {
        config.push(("seed", Cow::Owned(seed)));
    }

    let mut out = Vec::with_capacity(body.len() + 128);
    out.extend_from_slice(b"{\"contents\":[");
    for (i, (role, parts)) in turns.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"role\":");
        write_json_str(&mut out, role);
        out.extend_from_slice(b",\"parts\":");
        write_parts(&mut out, parts);
        out.push(b'}');
    }
    out.push(b']');
    if !system.is_empty() {
        out.extend_from_slice(b",\"systemInstruction\":{\"parts\":");
        text_parts(&mut out, &system);
        out.push(b'}');
    }
    if !names.is_empty() {
        out.extend_from_slice(b",\"tools\":[{\"functionDeclarations\":");
        out.extend_from_slice(declarations);
        out.extend_from_slice(b"}]");
        if let Some(config) = tool_config {
            out.extend_from_slice(b",\"toolConfig\":{\"functionCallingConfig\":");
            out.extend_from_slice(config.as_bytes());
            out.push(b'}');
        }
    }
    if let Some(settings) = &options.safety_settings {
        out.extend_from_slice(b",\"safetySettings\":");
        serde_json::to_writer(&mut out, settings).expect("a JSON value always serializes");
    }
    if !config.is_empty() {
        out.extend_from_slice(b",\"generationConfig\":{");
        for (i, (name, value)) in config.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_str(&mut out, name);
            out.push(b':');
            out.extend_from_slice(value.as_bytes());
        }
        out.push(b'}');
    }
    out.push(b'}');
    Some(out)
}

/// `messages` → (system texts, turns), as `build_request` makes them for messages
/// whose content is text (`text_messages_and`), an assistant's tool calls and tool
/// (or function) results: system and developer texts hoisted, empty texts left out,
/// same-role neighbours merged, and for Gemini 3 models the placeholder signature on
/// a model turn with calls but no signature. `None` for anything else, and for a
/// conversation with nothing but system messages (refused by the tree).
fn conversation<'a>(
    walk: &mut Walk<'a>,
    model: &str,
    options: &RequestOptions,
) -> Option<(Vec<JsonText<'a>>, Vec<Turn<'a>>)> {
    let mut system = Vec::new();
    let mut turns: Vec<Turn<'a>> = Vec::new();
    // Tool-call id → function name, from the assistant messages so far.
    let mut call_names: HashMap<Cow<'a, str>, Cow<'a, str>> = HashMap::new();
    let messages = text_messages_and(
        walk,
        &MESSAGE_MEMBERS_LEFT_TO_THE_TREE,
        ["tool_calls", "tool_call_id", "name"],
    )?;
    for (message, [tool_calls, tool_call_id, name]) in messages {
        let role = message.role.as_ref();
        let (role, parts) = match role {
            "system" | "developer" => {
                system.extend(message.texts.into_iter().filter(|text| !text.is_empty()));
                continue;
            }
            "user" | "assistant" => {
                let mut parts: Vec<Part<'a>> = message
                    .texts
                    .into_iter()
                    .filter(|text| !text.is_empty())
                    .map(Part::Text)
                    .collect();
                if role == "user" {
                    ("user", parts)
                } else {
                    if let Some(calls) = tool_calls.filter(|calls| *calls != "null") {
                        function_calls(calls, &mut parts, &mut call_names, options)?;
                    }
                    ("model", parts)
                }
            }
            "tool" | "function" => {
                // A name given as something else than a string is no name.
                let given = name
                    .filter(|name| name.starts_with('"'))
                    .map(string_value)
                    .map(Option::unwrap_or_default)
                    .filter(|name| !name.is_empty());
                let name = if role == "tool" {
                    let id = match tool_call_id.filter(|id| id.starts_with('"')) {
                        Some(id) => string_value(id)?,
                        None => Cow::Borrowed(""),
                    };
                    call_names.get(&id).cloned().or(given)?
                } else {
                    given?
                };
                let response = tool_response(&message.texts);
                ("user", vec![Part::Response { name, response }])
            }
            // Roles the tree refuses.
            _ => return None,
        };
        if parts.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, last_parts)) if *last == role => last_parts.extend(parts),
            _ => turns.push((role, parts)),
        }
    }
    if ids::needs_signature_placeholder(model) {
        for (role, parts) in &mut turns {
            if *role == "model" {
                add_signature_placeholder(parts);
            }
        }
    }
    (!turns.is_empty()).then_some((system, turns))
}

/// An assistant's `tool_calls` (a list, as written) → `functionCall` parts, as
/// `request::assistant_parts` makes them, each call's name kept under its id for the
/// results. `None` for a call the tree refuses, and for a gateway id whose signature
/// only the shared backend can tell.
fn function_calls<'a>(
    raw: &'a str,
    parts: &mut Vec<Part<'a>>,
    call_names: &mut HashMap<Cow<'a, str>, Cow<'a, str>>,
    options: &RequestOptions,
) -> Option<()> {
    // A part of the checked body.
    Walk::checked(raw).array(|walk| {
        let (mut id, mut function) = (None, None);
        walk.object(|walk, key| match key {
            "id" => first_value(&mut id, || walk.skip()),
            "function" => first_value(&mut function, || called_function(walk, true)),
            _ if has_escape(key) => None,
            _ => walk.skip().map(drop),
        })?;
        let (name, args) = function?;
        // An id that is not a string is taken for none, as the tree does.
        let id = match id.filter(|id| id.starts_with('"')) {
            Some(id) => string_value(id)?,
            None => Cow::Borrowed(""),
        };
        let signature = options.signatures.signature_now(&id)?.map(Cow::Owned);
        if !id.is_empty() {
            call_names.insert(id, name.clone());
        }
        parts.push(Part::Call {
            name,
            args,
            signature,
        });
        Some(())
    })
}

thread_local! {
    /// The JSON tool results of this thread's last requests (by the string literal
    /// that carried each), as responses: an agent sends every earlier result again
    /// with each turn, and decoding one from its string and writing it compactly
    /// took some 28,000 instructions for 1.3 KB (bench/README.md, session 36).
    static RESULTS: RefCell<Recent<Vec<u8>>> = const { RefCell::new(Recent::new()) };
}

/// A tool result's texts (joined) as `functionResponse.response`, written as
/// `request::tool_response` makes it: a JSON object as it is, other JSON as
/// `{"content":<it>}`, anything else as `{"content":"<the text>"}`. A result given
/// as one string that may be JSON is written once per thread ([`RESULTS`]); one
/// that cannot be is copied as it is (no more work than finding it in the thread's
/// results), and one given in parts is written each time.
fn tool_response(texts: &[JsonText<'_>]) -> Rc<Vec<u8>> {
    match texts {
        [text @ JsonText::Written(literal)] if may_be_json(text) => RESULTS.with(|recent| {
            recent.borrow_mut().get_or_make(
                literal.as_bytes(),
                || write_tool_response(texts),
                Vec::len,
            )
        }),
        _ => Rc::new(write_tool_response(texts)),
    }
}

/// Whether a result's text might be JSON by its first character (most results
/// that are not, a file or a command's output, say so there).
fn may_be_json(text: &JsonText<'_>) -> bool {
    let first = match text {
        JsonText::Written(literal) => literal.as_bytes().get(1),
        JsonText::Value(value) => value.as_bytes().first(),
    };
    matches!(
        first,
        Some(
            b'{' | b'[' | b'"' | b'-' | b'0'
                ..=b'9' | b't' | b'f' | b'n' | b'\\' | b' ' | b'\t' | b'\n' | b'\r'
        )
    )
}

/// [`tool_response`], written.
fn write_tool_response(texts: &[JsonText<'_>]) -> Vec<u8> {
    let joined;
    let text = match texts {
        [text] => text,
        _ => {
            joined = JsonText::Value(Cow::Owned(
                texts.iter().map(|text| text.value()).collect::<String>(),
            ));
            &joined
        }
    };
    let length = match text {
        JsonText::Written(literal) => literal.len(),
        JsonText::Value(value) => value.len() + 2,
    };
    let mut out = Vec::with_capacity(length + 16);
    // Not decoded to find out that it is not JSON.
    if !may_be_json(text) {
        out.extend_from_slice(b"{\"content\":");
        text.write(&mut out);
        out.push(b'}');
        return out;
    }
    let value = text.value();
    // JSON is written back as serde writes it, mostly without reading it into a tree.
    let object = value
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{');
    if !object {
        out.extend_from_slice(b"{\"content\":");
    }
    if write_compact(&value, &mut out).is_some() {
        if !object {
            out.push(b'}');
        }
        return out;
    }
    out.clear();
    match serde_json::from_str::<Value>(&value) {
        Ok(object @ Value::Object(_)) => {
            serde_json::to_writer(&mut out, &object).expect("a JSON value always serializes");
        }
        Ok(other) if !value.trim().is_empty() => {
            out.extend_from_slice(b"{\"content\":");
            serde_json::to_writer(&mut out, &other).expect("a JSON value always serializes");
            out.push(b'}');
        }
        _ => {
            out.extend_from_slice(b"{\"content\":");
            text.write(&mut out);
            out.push(b'}');
        }
    }
    out
}

/// As `ids::add_signature_placeholder`: the placeholder on the first function call
/// of a model turn that has calls but no signature at all.
fn add_signature_placeholder(parts: &mut [Part<'_>]) {
    let signed = parts.iter().any(|part| {
        matches!(
            part,
            Part::Call {
                signature: Some(_),
                ..
            }
        )
    });
    if signed {
        return;
    }
    if let Some(Part::Call { signature, .. }) = parts
        .iter_mut()
        .find(|part| matches!(part, Part::Call { .. }))
    {
        *signature = Some(Cow::Borrowed(ids::SIGNATURE_PLACEHOLDER));
    }
}

/// A number member as the tree writes it (read and written by serde_json, so `1.50`
/// is `1.5` there too): absent or `null` is `Some(None)`; `None` for a value that is
/// not a number.
fn number(raw: Option<&str>) -> Option<Option<String>> {
    match raw {
        None | Some("null") => Some(None),
        Some(text) => match serde_json::from_str::<Value>(text).ok()? {
            value @ Value::Number(_) => Some(Some(value.to_string())),
            _ => None,
        },
    }
}

/// `seed`: an integer (as the tree checks it), written as serde_json writes it.
fn integer(raw: Option<&str>) -> Option<Option<String>> {
    match number(raw)? {
        Some(text) if text.parse::<i64>().is_ok() || text.parse::<u64>().is_ok() => {
            Some(Some(text))
        }
        Some(_) => None,
        None => Some(None),
    }
}

/// `stop` as `stopSequences` (a JSON list, written): a string is kept as it is, a
/// list without its empty strings; `Some(None)` when nothing is left; `None` for
/// more sequences than Gemini takes, or a value of another type.
fn stop_sequences(raw: Option<&str>) -> Option<Option<String>> {
    let single = raw.is_some_and(|raw| raw.starts_with('"'));
    let mut sequences = stop_strings(raw)?;
    if !single {
        sequences.retain(|text| !text.is_empty());
    }
    if sequences.len() > MAX_STOP_SEQUENCES {
        return None;
    }
    if sequences.is_empty() {
        return Some(None);
    }
    let mut out = Vec::new();
    write_strings(&mut out, &sequences);
    String::from_utf8(out).ok().map(Some)
}

/// A request's tools as [`declarations`] writes them.
struct Declared {
    /// The list of function declarations, written.
    written: Vec<u8>,
    /// The functions' names.
    names: Vec<String>,
}

thread_local! {
    /// The tools of this thread's last requests (by their bytes), as declared, or
    /// `None` where the tree must declare them.
    static DECLARED: RefCell<Recent<Option<Declared>>> = const { RefCell::new(Recent::new()) };
}

/// The tools at the walk (the `tools` member of a checked body) as
/// [`declarations`] writes them, from the thread's [`Recent`] when a request sent
/// the same bytes before: found where the walk stands and stepped over, not walked
/// again (`raw_body::kept`). What the tree must declare is kept too (as `None`), so
/// that the next request with those tools goes to the tree without walking them.
/// `None` as for [`declarations`].
fn declared(walk: &mut Walk<'_>) -> Option<Rc<Option<Declared>>> {
    let declared = kept(walk, &DECLARED, |walk| {
        let raw = walk.skip()?;
        let declared = declarations_of(raw);
        let weight = declared.as_ref().map_or(0, |declared| {
            declared.written.len() + declared.names.iter().map(String::len).sum::<usize>()
        });
        Some((declared, weight))
    })?;
    declared.is_some().then_some(declared)
}

/// [`declarations`] of the whole of `raw`, a checked list.
fn declarations_of(raw: &str) -> Option<Declared> {
    let mut walk = Walk::checked(raw);
    let declared = declarations(&mut walk)?;
    walk.done()?;
    Some(declared)
}

/// The client's `tools` (a list of function tools) as Gemini's function
/// declarations, as `request::tools_and_choice` makes them: the written list and
/// the functions' names. `None` for a tool the tree refuses (another type, no
/// `function`, no name) and a schema `schema::write_parameters` leaves to it.
fn declarations(walk: &mut Walk<'_>) -> Option<Declared> {
    let mut written = vec![b'['];
    let mut names = Vec::new();
    // A function's cleaned schema, written before its name when it comes first.
    let mut parameters = Vec::new();
    walk.array(|walk| {
        let (mut kind, mut function) = (None, None);
        if !names.is_empty() {
            written.push(b',');
        }
        walk.object(|walk, key| match key {
            "type" => first_value(&mut kind, || walk.skip()),
            "function" => first_value(&mut function, || {
                walk.at_object().then_some(())?;
                declaration(walk, &mut written, &mut parameters)
            }),
            _ if has_escape(key) => None,
            _ => walk.skip().map(drop),
        })?;
        // A `type` that is not a string is taken for a function, as the tree does.
        if let Some(kind) = kind.filter(|kind| kind.starts_with('"')) {
            (string_value(kind)? == "function").then_some(())?;
        }
        names.push(function?.into_owned());
        Some(())
    })?;
    written.push(b']');
    Some(Declared { written, names })
}

/// A function tool's `function` (at its `{`) as a declaration, written to `out`:
/// its name (a non-empty string), its description when that is a non-empty
/// string, and its cleaned `parameters` when it has any (written to `parameters`
/// first). Its name.
fn declaration<'a>(
    walk: &mut Walk<'a>,
    out: &mut Vec<u8>,
    parameters: &mut Vec<u8>,
) -> Option<Cow<'a, str>> {
    let (mut name, mut description, mut has_parameters) = (None, None, None);
    parameters.clear();
    walk.object(|walk, key| match key {
        "name" => first_value(&mut name, || walk.text()),
        "description" => first_value(&mut description, || description_of(walk)),
        "parameters" => first_value(&mut has_parameters, || {
            schema::write_parameters(walk, parameters)
        }),
        _ if has_escape(key) => None,
        _ => walk.skip().map(drop),
    })?;
    let name = name?;
    (!name.is_empty()).then_some(())?;
    out.extend_from_slice(b"{\"name\":");
    name.write(out);
    if let Some(description) = description.flatten() {
        out.extend_from_slice(b",\"description\":");
        description.write(out);
    }
    if has_parameters == Some(true) {
        out.extend_from_slice(b",\"parameters\":");
        out.extend_from_slice(parameters);
    }
    out.push(b'}');
    Some(name.value())
}

/// `tool_choice` (as written, not `null`) as the `functionCallingConfig` the tree
/// makes of it for the functions `names`: `auto`, `none`, `required` (with tools),
/// or a function among them by name. `None` for anything else (the tree refuses it
/// or, for `allowed_tools`, reads it itself).
fn tool_config(raw: &str, names: &[String]) -> Option<String> {
    if raw.starts_with('"') {
        return match &*string_value(raw)? {
            "auto" => Some(r#"{"mode":"AUTO"}"#.to_owned()),
            "none" => Some(r#"{"mode":"NONE"}"#.to_owned()),
            "required" if !names.is_empty() => Some(r#"{"mode":"ANY"}"#.to_owned()),
            _ => None,
        };
    }
    let [kind, function, name] = named_members_of(raw, ["type", "function", "name"])?;
    if let Some(kind) = kind.filter(|kind| kind.starts_with('"')) {
        (string_value(kind)? != "allowed_tools").then_some(())?;
    }
    let name = match function {
        Some(function) if function.starts_with('{') => {
            match named_members_of(function, ["name"])? {
                [Some(name)] => Some(name),
                [None] => name,
            }
        }
        _ => name,
    }?;
    let name = string_value(name.starts_with('"').then_some(name)?)?;
    names.iter().any(|known| *known == name).then_some(())?;
    let mut config = br#"{"mode":"ANY","allowedFunctionNames":["#.to_vec();
    write_json_str(&mut config, &name);
    config.extend_from_slice(b"]}");
    String::from_utf8(config).ok()
}

/// `[{"text":…},…]`.
fn text_parts(out: &mut Vec<u8>, texts: &[JsonText<'_>]) {
    write_text_objects(out, b"{\"text\":", texts);
}

/// A turn's parts, `[…]`.
fn write_parts(out: &mut Vec<u8>, parts: &[Part<'_>]) {
    out.push(b'[');
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match part {
            Part::Text(text) => {
                out.extend_from_slice(b"{\"text\":");
                text.write(out);
            }
            Part::Call {
                name,
                args,
                signature,
            } => {
                out.extend_from_slice(b"{\"functionCall\":{\"name\":");
                write_json_str(out, name);
                out.extend_from_slice(b",\"args\":");
                out.extend_from_slice(args);
                out.push(b'}');
                if let Some(signature) = signature {
                    out.extend_from_slice(b",\"thoughtSignature\":");
                    write_json_str(out, signature);
                }
            }
            Part::Response { name, response } => {
                out.extend_from_slice(b"{\"functionResponse\":{\"name\":");
                write_json_str(out, name);
                out.extend_from_slice(b",\"response\":");
                out.extend_from_slice(response);
                out.push(b'}');
            }
        }
        out.push(b'}');
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::raw_chat;
    use crate::providers::google::request::build_request;
    use crate::providers::UpstreamCall;

    /// What `post` sends for the request `text` (which `raw_chat` let through) on
    /// the tree path, the kept signatures restored; `None` when the tree refuses the
    /// request.
    fn tree_body(text: &str, model: &str, options: &RequestOptions) -> Option<String> {
        let raw = raw_chat::read(&bytes::Bytes::from(text.to_owned())).expect("a raw request");
        let call = UpstreamCall {
            model: model.to_owned(),
            params: raw.params().ok()?,
            headers: http::HeaderMap::new(),
            header_case: Default::default(),
            gateway_usage: false,
            raw_body: None,
        };
        // The default store keeps signatures in this process only: no wait.
        let restored = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(options.signatures.restore(&call));
        let body = build_request(restored.as_ref().unwrap_or(&call), options).ok()?;
        Some(serde_json::to_string(&body).unwrap())
    }

    fn options(safety: bool) -> RequestOptions {
        RequestOptions {
            safety_settings: safety.then(|| {
                serde_json::json!([{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}])
            }),
            ..RequestOptions::default()
        }
    }

    /// `text` is written as `expected` for `model` (the second time with the tools
    /// declared the first time), and so is it by the tree.
    fn assert_written_for_as_the_tree_writes(text: &str, model: &str, expected: &str) {
        let options = options(false);
        for _ in 0..2 {
            let written = write(text, model, &options).map(|b| String::from_utf8(b).unwrap());
            assert_eq!(written.as_deref(), Some(expected));
        }
        assert_eq!(tree_body(text, model, &options).as_deref(), Some(expected));
    }

    /// The differential tests' check of generated request number `case`: when the
    /// writer writes it (with and without configured safety settings, for Gemini 2
    /// and 3 models), it is what the tree sends; whether it was written.
    fn written_as_the_tree_writes(case: usize, text: &str) -> bool {
        let options = options(case % 3 == 0);
        let model = if case % 2 == 0 {
            "gemini-3-pro"
        } else {
            "gemini-2.5-flash"
        };
        let body = write(text, model, &options);
        // Again, with the tools this thread kept from the first time.
        assert_eq!(write(text, model, &options), body, "{text}");
        let Some(body) = body else {
            return false;
        };
        assert_eq!(
            Some(String::from_utf8(body).unwrap()),
            tree_body(text, model, &options),
            "{text}"
        );
        true
    }

    fn assert_written_as_the_tree_writes(text: &str, expected: &str) {
        assert_written_for_as_the_tree_writes(text, "gemini-2.5-flash", expected);
    }

    #[test]
    fn a_usual_request_is_written_as_the_tree_writes_it() {
        let text = r#"{"model":"gemini","messages":[{"role":"system","content":"Be brief."},
            {"role":"user","content":"Hi \"there\" \u00e9"},{"role":"user","content":" "},
            {"role":"assistant","content":""},{"role":"assistant","content":"Hello"}],
            "temperature":0.70,"top_p":1,"max_tokens":50,"stop":["END",""],"seed":-3,"n":1,"user":"u"}"#;
        let expected = r#"{"contents":[{"role":"user","parts":[{"text":"Hi \"there\" é"},{"text":" "}]},{"role":"model","parts":[{"text":"Hello"}]}],"systemInstruction":{"parts":[{"text":"Be brief."}]},"generationConfig":{"temperature":0.7,"topP":1,"maxOutputTokens":50,"stopSequences":["END"],"seed":-3}}"#;
        assert_written_as_the_tree_writes(text, expected);
    }

    #[test]
    fn what_the_tree_acts_on_is_left_to_it() {
        let own = [
            r#"{"model":"m","messages":[{"role":"system","content":"only system"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":["1","2","3","4","5","6"]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tool_choice":"required"}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"functions":[{"name":"f"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}},{"type":"function","function":{"name":"g"}}],"tool_choice":{"type":"allowed_tools","function":{"name":"f"},"allowed_tools":{"mode":"auto","tools":[{"type":"function","function":{"name":"f"}}]}}}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function","function":{"name":"g"}}}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"web_search"}]}"#,
            r##"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"a":{"$ref":"#/$defs/A"}},"$defs":{"A":{"type":"string"}}}}}]}"##,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"string"}}}]}"#,
            r#"{"model":"m","messages":[{"role":"tool","tool_call_id":"c","content":"x"}]}"#,
            r#"{"model":"m","messages":[{"role":"function","content":"x"}]}"#,
            // An empty id names no call: its result needs a name.
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"","function":{"name":"f"}}]},{"role":"tool","tool_call_id":"","content":"x"}]}"#,
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c","function":{"name":"f","arguments":"[1]"}}]}]}"#,
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c","function":{"name":"f","arguments":"1"}}]}]}"#,
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c","function":{"name":""}}]}]}"#,
            r#"{"model":"m","messages":[{"role":"assistant","content":"x","function_call":{"name":"f"}}]}"#,
        ];
        for text in crate::providers::raw_request::arb::LEFT_TO_EVERY_TREE
            .into_iter()
            .chain(own)
        {
            assert!(
                raw_chat::read(&bytes::Bytes::from(text)).is_some(),
                "{text}"
            );
            // The second time from what this thread kept of its tools (a refusal
            // is kept too).
            for _ in 0..2 {
                assert_eq!(write(text, "gemini-3-pro", &options(false)), None, "{text}");
            }
        }
    }

    /// An agent's first request: its tools as function declarations, their
    /// schemas cleaned, and its `tool_choice`, as the tree writes them.
    #[test]
    fn an_agents_tools_are_declared_as_the_tree_declares_them() {
        let text = r#"{"model":"gemini","messages":[{"role":"system","content":"Be brief."},
            {"role":"user","content":"Find \"them\""}],
            "tools":[{"type":"function","function":{"name":"lookup","description":"Looks up.",
              "parameters":{"$schema":"x","type":"object","additionalProperties":false,
                "properties":{"q":{"type":"string","format":"email","minLength":1.0},
                  "kind":{"type":"string","enum":["a","b\n"]},"n":{"type":"integer","maximum":1e2},
                  "tags":{"type":"array","items":{"type":"string","description":"a tag"}},
                  "empty":{"type":"object","properties":{},"required":["x"],"title":"E"}},
                "required":["q","missing","q"],"description":"Args"}}},
              {"function":{"name":"now","description":"","parameters":{"properties":{}}},"type":"function"}],
            "tool_choice":{"type":"function","function":{"name":"lookup"}}}"#;
        let expected = r#"{"contents":[{"role":"user","parts":[{"text":"Find \"them\""}]}],"systemInstruction":{"parts":[{"text":"Be brief."}]},"tools":[{"functionDeclarations":[{"name":"lookup","description":"Looks up.","parameters":{"type":"object","properties":{"q":{"type":"string","minLength":1.0},"kind":{"type":"string","enum":["a","b\n"]},"n":{"type":"integer","maximum":100.0},"tags":{"type":"array","items":{"type":"string","description":"a tag"}},"empty":{"type":"object","title":"E"}},"required":["q"],"description":"Args"}},{"name":"now"}]}],"toolConfig":{"functionCallingConfig":{"mode":"ANY","allowedFunctionNames":["lookup"]}}}"#;
        assert_written_as_the_tree_writes(text, expected);
    }

    /// An agent's later request: tool calls (one signed in its id, one whose
    /// signature the gateway kept, one unsigned) and their results (a JSON object,
    /// other JSON, text, joined text parts, a legacy function result), for Gemini 2
    /// and for Gemini 3 (the placeholder on a turn without signatures).
    #[test]
    fn an_agents_conversation_is_written_as_the_tree_writes_it() {
        let kept = ids::tool_call_id("rawkept", 0, 1, Some("CiQB4/H+abc="));
        super::super::signatures::SignatureStore::default().remember(
            &serde_json::json!({"choices": [{"message": {"tool_calls": [{"id": kept}]}}]}),
        );
        let text = r#"{"model":"gemini","messages":[{"role":"user","content":"Find them"},
            {"role":"assistant","content":"Looking.","tool_calls":[
              {"id":"call_s_0_0__thought__CiQB4_H-abc","type":"function","function":{"name":"lookup","arguments":"{\"q\": \"a\", \"n\": 2.50}"}},
              {"id":"call_rawkept_0_1","type":"function","function":{"arguments":" ","name":"now"}},
              {"id":"call_3","type":"function","function":{"name":"now","arguments":"null"}}]},
            {"role":"tool","tool_call_id":"call_s_0_0__thought__CiQB4_H-abc","content":"{\"found\": [1, 2]}"},
            {"role":"tool","tool_call_id":"call_rawkept_0_1","content":[{"type":"text","text":"12"},{"type":"text","text":":00"}]},
            {"role":"user","content":"And now?"},
            {"role":"assistant","tool_calls":[{"id":"c9","function":{"name":"lookup","arguments":"{\"q\":\"b\"}"}}]},
            {"role":"tool","tool_call_id":"c9","name":"ignored","content":"[1]"},
            {"role":"function","name":"legacy","content":"not \"json\"\n"},
            {"role":"tool","tool_call_id":"unknown","name":"named","content":""}]}"#;
        let results = r#"{"role":"user","parts":[{"functionResponse":{"name":"lookup","response":{"found":[1,2]}}},{"functionResponse":{"name":"now","response":{"content":"12:00"}}},{"text":"And now?"}]}"#;
        let last_results = r#"{"role":"user","parts":[{"functionResponse":{"name":"lookup","response":{"content":[1]}}},{"functionResponse":{"name":"legacy","response":{"content":"not \"json\"\n"}}},{"functionResponse":{"name":"named","response":{"content":""}}}]}"#;
        let first_calls = r#"{"role":"model","parts":[{"text":"Looking."},{"functionCall":{"name":"lookup","args":{"q":"a","n":2.5}},"thoughtSignature":"CiQB4/H+abc="},{"functionCall":{"name":"now","args":{}},"thoughtSignature":"CiQB4/H+abc="},{"functionCall":{"name":"now","args":{}}}]}"#;
        for (model, placeholder) in [
            ("gemini-2.5-flash", ""),
            (
                "gemini-3-pro",
                r#","thoughtSignature":"skip_thought_signature_validator""#,
            ),
        ] {
            let expected = format!(
                r#"{{"contents":[{{"role":"user","parts":[{{"text":"Find them"}}]}},{first_calls},{results},{{"role":"model","parts":[{{"functionCall":{{"name":"lookup","args":{{"q":"b"}}}}{placeholder}}}]}},{last_results}]}}"#
            );
            assert_written_for_as_the_tree_writes(text, model, &expected);
        }
    }

    /// A JSON tool result is written once per thread and then found by its
    /// literal's bytes: results that differ only in their last bytes each get their
    /// own response, in whatever order they come, and the tree writes the same;
    /// a result that is not JSON is copied each time, not kept.
    #[test]
    fn json_tool_results_are_kept_per_thread_by_their_bytes() {
        let request = |result: &str| {
            format!(
                r#"{{"model":"m","messages":[{{"role":"assistant","tool_calls":[{{"id":"c","function":{{"name":"f","arguments":"{{}}"}}}}]}},{{"role":"tool","tool_call_id":"c","content":{}}}]}}"#,
                serde_json::to_string(result).unwrap()
            )
        };
        let results = [
            (r#"{"n": [1, 2], "s": "a\"b"}"#, r#"{"n":[1,2],"s":"a\"b"}"#),
            (r#"{"n": [1, 2], "s": "a\"c"}"#, r#"{"n":[1,2],"s":"a\"c"}"#),
            (r#"[{"n": 1}]"#, r#"{"content":[{"n":1}]}"#),
            (r#"[{"n": 1}] "#, r#"{"content":[{"n":1}]}"#),
            (r#"[{"n": 1.5}]"#, r#"{"content":[{"n":1.5}]}"#),
            ("plain text", r#"{"content":"plain text"}"#),
        ];
        for _ in 0..2 {
            for (result, response) in results.iter().chain(results.iter().rev()) {
                let expected = format!(
                    r#"{{"contents":[{{"role":"model","parts":[{{"functionCall":{{"name":"f","args":{{}}}}}}]}},{{"role":"user","parts":[{{"functionResponse":{{"name":"f","response":{response}}}}}]}}]}}"#
                );
                assert_written_as_the_tree_writes(&request(result), &expected);
            }
        }
        let literal = |result: &str| serde_json::to_string(result).unwrap();
        let (json, plain) = (literal(results[0].0), literal("plain text"));
        let response = |literal: &str| tool_response(&[JsonText::Written(literal)]);
        assert!(Rc::ptr_eq(&response(&json), &response(&json)));
        assert!(!Rc::ptr_eq(&response(&plain), &response(&plain)));
    }

    /// A gateway id without its signature, which only the shared backend could
    /// know: left to the tree, which waits for the backend (`signatures::restore`).
    #[test]
    fn a_signature_only_the_shared_backend_knows_is_left_to_the_tree() {
        let shared = crate::shared_state::RedisStore::new("redis://127.0.0.1:9/").unwrap();
        let options = RequestOptions {
            signatures: super::super::signatures::SignatureStore::new(Some(shared)),
            ..RequestOptions::default()
        };
        let call = |id: &str| {
            format!(
                r#"{{"model":"g","messages":[{{"role":"user","content":"x"}},{{"role":"assistant","tool_calls":[{{"id":"{id}","function":{{"name":"f"}}}}]}}]}}"#
            )
        };
        assert_eq!(
            write(&call("call_rawnotkept_0_0"), "gemini-3-pro", &options),
            None
        );
        // Ids that carry their signature, or are not the gateway's, need no backend.
        for id in ["call_s_0_0__thought__CiQB4_H-abc", "call_1", "toolu_1"] {
            assert!(write(&call(id), "gemini-3-pro", &options).is_some(), "{id}");
        }
    }

    /// The same for agents' requests (tools, a `tool_choice`, tool calls and
    /// results), byte for byte, for Gemini 2 and 3.
    #[test]
    fn what_is_written_for_an_agent_is_what_the_tree_sends() {
        use crate::providers::raw_request::arb;
        arb::each_raw_request_of(arb::agent_request(), 1000, 200, written_as_the_tree_writes);
    }

    /// Whatever the writer writes is what `build_request` sends, byte for byte
    /// (with and without configured safety settings, for Gemini 2 and 3 models); it
    /// writes nothing for a request the tree refuses; and it writes a good share of
    /// the requests.
    #[test]
    fn what_is_written_is_what_the_tree_sends() {
        crate::providers::raw_request::arb::each_raw_request(written_as_the_tree_writes);
    }
}
