//! The Gemini request written straight from the client's bytes, as
//! `anthropic::raw_request` does for Anthropic: a chat request `api::raw_chat` let
//! through whose every member this module knows becomes the `generateContent` body
//! in one walk, with no request tree, no Gemini tree and no serializing (about
//! 17,000 instructions a request; bench/README.md, session 19).
//!
//! It knows system, developer, user and assistant messages whose content is a string,
//! `null` or a list of plain text parts, function `tools` (their schemas cleaned by
//! `schema::write_parameters`, as `schema::sanitize_parameters` cleans them),
//! `tool_choice` (but `allowed_tools`), and the settings `temperature`, `top_p`,
//! `presence_penalty`, `frequency_penalty`, `max_tokens`, `max_completion_tokens`,
//! `stop`, `seed` and `n` (1): an agent's first request (a 15 KB request with 20
//! tools: bench/README.md, session 33). An assistant's tool calls, tool messages
//! (their names and thought signatures are the tree's to find), legacy `functions`,
//! `response_format`, `reasoning_effort`, `top_k` and other content parts make
//! [`write`] answer `None`, and `request::build_request` reads the request as a
//! tree, as before (with every error). What [`write`] writes is byte for byte what
//! that tree serializes to (the differential tests below).

use std::borrow::Cow;

use serde_json::Value;

use super::request::{RequestOptions, MAX_STOP_SEQUENCES};
use super::schema;
use crate::api::raw_body::named_members_of;
use crate::json_scan::{first_value, has_escape, string_value, write_json_str, JsonText, Walk};
use crate::providers::raw_request::{
    description as description_of, members_and, positive, stop_strings, text_messages,
    write_strings, write_text_objects,
};

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

/// Message members `build_request` reads besides `role` and `content`.
const MESSAGE_MEMBERS_LEFT_TO_THE_TREE: [&str; 2] = ["tool_calls", "function_call"];

/// One turn: its Gemini role and its texts.
type Turn<'a> = (&'static str, Vec<JsonText<'a>>);

/// The Gemini body for the chat request `body` (a JSON object, checked); `None`
/// when the request has something this writer leaves to the tree.
pub fn write(body: &str, options: &RequestOptions) -> Option<Vec<u8>> {
    // The tools, most of an agent's first request, are written where the walk of
    // the body meets them.
    let mut tools_read = None;
    let [messages, temperature, top_p, presence, frequency, max_completion_tokens, max_tokens, stop, seed, tool_choice] =
        members_and(
            body,
            [
                "messages",
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
            |walk, key| {
                if key != "tools" {
                    return Some(false);
                }
                first_value(&mut tools_read, || {
                    if walk.null() {
                        Some(None)
                    } else {
                        declarations(walk).map(Some)
                    }
                })
                .map(|()| true)
            },
        )?;
    let (declarations, names) = tools_read.flatten().unwrap_or_default();
    let tool_config = match tool_choice {
        None | Some("null") => None,
        Some(raw) => Some(tool_config(raw, &names)?),
    };
    let (system, turns) = conversation(messages?)?;

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
    for (i, (role, texts)) in turns.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"role\":");
        write_json_str(&mut out, role);
        out.extend_from_slice(b",\"parts\":");
        text_parts(&mut out, texts);
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
        out.extend_from_slice(&declarations);
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
/// whose content is text (`text_messages`): system and developer texts hoisted, empty
/// texts left out, same-role neighbours merged. `None` for anything else, and for a
/// conversation with nothing but system messages (refused by the tree).
fn conversation(raw: &str) -> Option<(Vec<JsonText<'_>>, Vec<Turn<'_>>)> {
    let mut system = Vec::new();
    let mut turns: Vec<Turn<'_>> = Vec::new();
    for message in text_messages(raw, &MESSAGE_MEMBERS_LEFT_TO_THE_TREE)? {
        let texts = message.texts.into_iter().filter(|text| !text.is_empty());
        let role = match message.role.as_ref() {
            "system" | "developer" => {
                system.extend(texts);
                continue;
            }
            "user" => "user",
            "assistant" => "model",
            // Tool results, and roles the tree refuses.
            _ => return None,
        };
        for text in texts {
            match turns.last_mut() {
                Some((last, texts)) if *last == role => texts.push(text),
                _ => turns.push((role, vec![text])),
            }
        }
    }
    (!turns.is_empty()).then_some((system, turns))
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

/// The client's `tools` (a list of function tools) as Gemini's function
/// declarations, as `request::tools_and_choice` makes them: the written list and
/// the functions' names. `None` for a tool the tree refuses (another type, no
/// `function`, no name) and a schema `schema::write_parameters` leaves to it.
fn declarations<'a>(walk: &mut Walk<'a>) -> Option<(Vec<u8>, Vec<Cow<'a, str>>)> {
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
        names.push(function?);
        Some(())
    })?;
    written.push(b']');
    Some((written, names))
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
fn tool_config(raw: &str, names: &[Cow<'_, str>]) -> Option<String> {
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
    names.contains(&name).then_some(())?;
    let mut config = br#"{"mode":"ANY","allowedFunctionNames":["#.to_vec();
    write_json_str(&mut config, &name);
    config.extend_from_slice(b"]}");
    String::from_utf8(config).ok()
}

/// `[{"text":…},…]`.
fn text_parts(out: &mut Vec<u8>, texts: &[JsonText<'_>]) {
    write_text_objects(out, b"{\"text\":", texts);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::raw_chat;
    use crate::providers::google::request::build_request;
    use crate::providers::UpstreamCall;

    /// What `build_request` sends for the request `text` (which `raw_chat` let
    /// through), as `post` serializes it; `None` when it refuses the request.
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
        let body = build_request(&call, options).ok()?;
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

    /// `text` is written as `expected`, and so is it by the tree.
    fn assert_written_as_the_tree_writes(text: &str, expected: &str) {
        let options = options(false);
        let written = write(text, &options).map(|b| String::from_utf8(b).unwrap());
        assert_eq!(written.as_deref(), Some(expected));
        assert_eq!(
            tree_body(text, "gemini-2.5-flash", &options).as_deref(),
            Some(expected)
        );
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
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}]}"#,
            r#"{"model":"m","messages":[{"role":"tool","tool_call_id":"c","content":"x"}]}"#,
        ];
        for text in crate::providers::raw_request::arb::LEFT_TO_EVERY_TREE
            .into_iter()
            .chain(own)
        {
            assert!(
                raw_chat::read(&bytes::Bytes::from(text)).is_some(),
                "{text}"
            );
            assert_eq!(write(text, &options(false)), None, "{text}");
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

    /// The same for agents' requests (tools, a `tool_choice`; those with tool calls
    /// or results are left to the tree), byte for byte.
    #[test]
    fn what_is_written_for_an_agent_is_what_the_tree_sends() {
        use crate::providers::raw_request::arb;
        arb::each_raw_request_of(arb::agent_request(), 1000, 60, |case, text| {
            let options = options(case % 3 == 0);
            let Some(body) = write(text, &options) else {
                return false;
            };
            assert_eq!(
                Some(String::from_utf8(body).unwrap()),
                tree_body(text, "gemini-2.5-flash", &options),
                "{text}"
            );
            true
        });
    }

    /// Whatever the writer writes is what `build_request` sends, byte for byte
    /// (with and without configured safety settings, for Gemini 2 and 3 models); it
    /// writes nothing for a request the tree refuses; and it writes a good share of
    /// the requests.
    #[test]
    fn what_is_written_is_what_the_tree_sends() {
        crate::providers::raw_request::arb::each_raw_request(|case, text| {
            let options = options(case % 3 == 0);
            let model = if case % 2 == 0 {
                "gemini-3-pro"
            } else {
                "gemini-2.5-flash"
            };
            let Some(body) = write(text, &options) else {
                return false;
            };
            assert_eq!(
                Some(String::from_utf8(body).unwrap()),
                tree_body(text, model, &options),
                "{text}"
            );
            true
        });
    }
}
