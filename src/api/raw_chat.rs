//! The chat request passed through without a tree: when nothing will look at the
//! request (no handler, no JSON logger) and the routed connection speaks OpenAI's
//! chat API, the client's bytes go upstream as they came, with only the `model`
//! value replaced when routing renamed it (and `stream_options.include_usage` added
//! when the gateway needs a stream's usage). Parsing the body into a
//! `serde_json::Value` tree, validating the tree and writing it out again was about
//! a sixth of the instructions of a non-streamed request.
//!
//! [`read`] walks the body once (`json_scan::Walk`, which checks every byte as
//! serde_json's parser does) and answers only for a request that
//! [`validate::validate_request`](super::validate::validate_request) surely accepts,
//! in the subset of shapes it knows: a member it does not check the way the
//! validator does (content parts other than text, a key written with escapes, a
//! member given twice, `stream_options` other than a stream's
//! `{"include_usage": true, ...}`, `extra_headers`, ...) makes it
//! answer `None`, and the door takes the tree path, which gives every error and
//! every edge its answer as before. So the fast path changes no verdict: the
//! differential test below holds it to "accepted here ⇒ accepted there, with the
//! same model and `stream`".

use bytes::Bytes;

use super::raw_body::{
    kept_check, named_members, non_empty_list, string, typed_object, walk_body, RawBody,
};
use super::validate::{
    may_omit_content, MAX_MODEL_LEN, MAX_N, MAX_TOKENS, MAX_TOP_LOGPROBS, ROLES,
};
use crate::json_scan::{first_time, first_value, has_escape, Walk};

/// A chat request checked without a tree.
pub type RawChatRequest = RawBody;

/// The request in `body` when the validator surely accepts it and the fast path
/// knows every member it must act on; `None` sends it down the tree path.
pub fn read(body: &Bytes) -> Option<RawChatRequest> {
    let (mut stream, mut messages, mut include_usage) = (None, false, false);
    // `model` as `validate::check_field` checks it.
    let model_ok = |name: &str| {
        !name.is_empty() && name.len() <= MAX_MODEL_LEN && !name.chars().any(char::is_control)
    };
    let mut raw = walk_body(body, model_ok, |walk, key| {
        if key == "stream_options" {
            // What most clients that want a stream's usage send (the Vercel AI SDK
            // always, LangChain's `stream_usage`): it goes upstream as written. Any
            // other (no usage asked, `null`) is the tree path's to drop or extend.
            let [usage] = named_members(walk, ["include_usage"])?;
            include_usage = usage == Some("true");
            return include_usage.then_some(());
        }
        member(walk, key, &mut stream, &mut messages)
    })?;
    messages.then_some(())?;
    // The tree path leaves `stream_options` out of a request that does not stream.
    (!include_usage || stream == Some(true)).then_some(())?;
    raw.stream = stream;
    raw.include_usage = include_usage;
    Some(raw)
}

/// One top-level member, checked as `validate::check_field` checks it (or refused).
fn member(
    walk: &mut Walk<'_>,
    key: &str,
    stream: &mut Option<bool>,
    messages: &mut bool,
) -> Option<()> {
    match key {
        "messages" => {
            *messages = non_empty_list(walk, message)?;
            Some(())
        }
        "stream" => {
            *stream = walk.bool_or_null()?;
            Some(())
        }
        "logprobs" | "parallel_tool_calls" | "store" => walk.bool_or_null().map(drop),
        "temperature" | "top_p" | "presence_penalty" | "frequency_penalty" => {
            let value = walk.skip()?;
            (value == "null" || value.starts_with(|c: char| c == '-' || c.is_ascii_digit()))
                .then_some(())
        }
        "seed" => {
            let value = walk.skip()?;
            // An integer serde_json reads as i64 or u64 (not one it turns into f64).
            // `-0` is read as a float.
            let integer = value.parse::<i64>().is_ok() || value.parse::<u64>().is_ok();
            (value == "null" || (integer && value != "-0")).then_some(())
        }
        "user" => string_or_null(walk),
        "metadata" | "logit_bias" | "tool_choice" => {
            // An object (or, for `tool_choice`, a string), or null.
            let value = walk.skip()?;
            let string_allowed = key == "tool_choice";
            (value == "null"
                || value.starts_with('{')
                || (string_allowed && value.starts_with('"')))
            .then_some(())
        }
        "n" => integer_in(walk, 1, MAX_N),
        "max_tokens" | "max_completion_tokens" => integer_in(walk, 1, MAX_TOKENS),
        "top_logprobs" => integer_in(walk, 0, MAX_TOP_LOGPROBS),
        "stop" => {
            if walk.null() {
                return Some(());
            }
            if walk.at_string() {
                return string(walk);
            }
            walk.array(string)
        }
        "response_format" => {
            if walk.null() {
                return Some(());
            }
            typed_object(walk)
        }
        // An agent's request carries its tools (often many kilobytes of JSON
        // schema): checked here, they go on as written instead of through a tree.
        "tools" => kept_check(walk, &CHECKED_TOOLS, tools),
        // Refused on the tree path.
        "extra_headers" => None,
        _ => walk.skip().map(drop),
    }
}

thread_local! {
    /// The tool lists this thread's last requests sent that [`tools`] passed (see
    /// `raw_body::kept_check`).
    static CHECKED_TOOLS: std::cell::RefCell<crate::recent::Recent<()>> =
        const { std::cell::RefCell::new(crate::recent::Recent::new()) };
}

/// `tools`, checked as `validate::check_tools` checks it: a list of objects, each
/// with a string `type` and, when that type is `function`, a string
/// `function.name`. Whatever else a tool holds (its description, its parameters'
/// schema) is only checked as JSON.
fn tools(walk: &mut Walk<'_>) -> Option<()> {
    walk.array(|walk| {
        let mut kind = None;
        let mut named = None;
        walk.object(|walk, key| match key {
            "type" => first_value(&mut kind, || walk.string()),
            "function" => first_value(&mut named, || has_string_name(walk)),
            _ if has_escape(key) => None,
            _ => walk.skip().map(drop),
        })?;
        (kind? != "function" || named == Some(true)).then_some(())
    })
}

/// Takes any value: whether it is an object with a string `name` (as
/// `value.get("name").is_some_and(Value::is_string)` reads it).
fn has_string_name(walk: &mut Walk<'_>) -> Option<bool> {
    if !walk.at_object() {
        walk.skip()?;
        return Some(false);
    }
    let mut name = None;
    walk.object(|walk, key| match key {
        "name" => {
            first_value(&mut name, || Some(walk.at_string()))?;
            walk.skip().map(drop)
        }
        _ if has_escape(key) => None,
        _ => walk.skip().map(drop),
    })?;
    Some(name == Some(true))
}

/// An assistant's `tool_calls`, checked as `validate::validate_message` checks
/// them: `null`, or a list of objects whose `function` has a string `name` and an
/// `arguments` that is a string, `null` or absent.
fn tool_calls(walk: &mut Walk<'_>) -> Option<()> {
    if walk.null() {
        return Some(());
    }
    walk.array(|walk| {
        let mut function = false;
        walk.object(|walk, key| match key {
            "function" => {
                first_time(&mut function)?;
                called_function(walk)
            }
            _ if has_escape(key) => None,
            _ => walk.skip().map(drop),
        })?;
        function.then_some(())
    })
}

/// A tool call's `function`: an object with a string `name` and an `arguments`
/// that is a string or `null` when given.
fn called_function(walk: &mut Walk<'_>) -> Option<()> {
    let (mut name, mut arguments) = (false, false);
    walk.object(|walk, key| match key {
        "name" => {
            first_time(&mut name)?;
            string(walk)
        }
        "arguments" => {
            first_time(&mut arguments)?;
            string_or_null(walk)
        }
        _ if has_escape(key) => None,
        _ => walk.skip().map(drop),
    })?;
    name.then_some(())
}

fn string_or_null(walk: &mut Walk<'_>) -> Option<()> {
    if walk.null() {
        return Some(());
    }
    string(walk)
}

/// `null`, or an integer in `min..=max` as `Value::as_u64` reads it.
fn integer_in(walk: &mut Walk<'_>, min: u64, max: u64) -> Option<()> {
    match walk.u64_or_null()? {
        None => Some(()),
        Some(n) => (min..=max).contains(&n).then_some(()),
    }
}

/// One message, checked as `validate::validate_message` checks it: a role it
/// knows, content as a string or a list of text parts (absent or `null` only for
/// the roles that may omit it), `tool_call_id` a string for a tool message,
/// `tool_calls` as [`tool_calls`] reads them. Other content parts are for the tree
/// path.
fn message(walk: &mut Walk<'_>) -> Option<()> {
    let mut role: Option<&str> = None;
    // `Some(true)`: a string or a list; `Some(false)`: `null`.
    let mut content: Option<bool> = None;
    let mut call_id_is_string = false;
    let (mut seen_role, mut seen_call_id, mut seen_calls) = (false, false, false);
    walk.object(|walk, key| match key {
        "role" => {
            first_time(&mut seen_role)?;
            let name = walk.string()?;
            role = Some(ROLES.iter().find(|known| **known == name)?);
            Some(())
        }
        "content" => first_value(&mut content, || {
            Some(if walk.null() {
                false
            } else if walk.at_string() {
                string(walk)?;
                true
            } else {
                walk.array(text_part)?;
                true
            })
        }),
        "tool_call_id" => {
            first_time(&mut seen_call_id)?;
            call_id_is_string = walk.at_string();
            walk.skip().map(drop)
        }
        "tool_calls" => {
            first_time(&mut seen_calls)?;
            tool_calls(walk)
        }
        _ if has_escape(key) => None,
        _ => walk.skip().map(drop),
    })?;
    let role = role?;
    (content == Some(true) || may_omit_content(role)).then_some(())?;
    (role != "tool" || call_id_is_string).then_some(())
}

/// One content part: text (with its string), or a type the validator lets through
/// unchecked; the types it checks (`image_url`, `input_audio`, `file`, `refusal`)
/// are for the tree path.
fn text_part(walk: &mut Walk<'_>) -> Option<()> {
    let mut kind = None;
    let mut text_is_string = None;
    walk.object(|walk, key| match key {
        "type" => first_value(&mut kind, || walk.string()),
        "text" => {
            first_value(&mut text_is_string, || Some(walk.at_string()))?;
            walk.skip().map(drop)
        }
        _ if has_escape(key) => None,
        _ => walk.skip().map(drop),
    })?;
    match kind?.as_ref() {
        "text" => (text_is_string == Some(true)).then_some(()),
        "image_url" | "input_audio" | "file" | "refusal" => None,
        _ => Some(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::validate::validate_request;
    use serde_json::{json, Value};

    const SAMPLES: &[&str] = &[
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
        r#" { "model" : "m" , "stream" : true , "messages" : [ { "role" : "system" , "content" : "be brief" } , { "role" : "user" , "content" : "a\nb\u00e9\"" } ] , "temperature" : 0.5 } "#,
        r#"{"messages":[{"role":"assistant","content":null},{"role":"user","content":[{"type":"text","text":"t"},{"type":"new_kind","x":1}]}],"model":"m","stream":false,"max_tokens":10,"n":1,"seed":-3,"stop":["x","y"],"user":"u","metadata":{"a":"b"},"logprobs":null,"top_logprobs":0,"tool_choice":"auto","response_format":{"type":"json_object"},"unknown":[1,{"d":[2]}]}"#,
        r#"{"model":"m","messages":[{"role":"tool","tool_call_id":"c1","content":"r"},{"role":"function","name":"f"}],"stop":"s","presence_penalty":-1e2,"logit_bias":{"1":2}}"#,
        r#"{"model":"m\u0041","messages":[{"role":"developer","content":[]}],"seed":18446744073709551615,"max_completion_tokens":100000000}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"weather?"},{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},{"id":"c2","type":"function","function":{"arguments":null,"name":"f"}}]},{"role":"tool","tool_call_id":"call_1","content":"sunny"}],"tools":[{"type":"function","function":{"name":"get_weather","description":"d","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]},"strict":true}},{"type":"web_search"},{"function":7,"type":"custom"},{"type":"custom","function":{"name":1}}],"tool_choice":{"type":"function","function":{"name":"get_weather"}},"parallel_tool_calls":false}"#,
        r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"function":{"name":"g"}}]},{"role":"user","content":"x"}],"tools":[]}"#,
        r#"{"model":"m","stream":true,"stream_options":{"include_obfuscation":false,"include_usage":true},"messages":[{"role":"user","content":"x"}]}"#,
        // Left to the tree: `stream_options` without a stream, or not asking for usage.
        r#"{"model":"m","messages":[{"role":"user","content":"x","tool_calls":null}],"stream_options":{"include_usage":true},"tools":[]}"#,
        r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":false}}"#,
        r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}],"stream_options":null}"#,
        r#"{"model":"m","model":"n","messages":[{"role":"user","content":"x"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","role":"wizard","content":"x"}],"extra_headers":{"a":"b"}}"#,
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":""}},{"type":"text","text":5}]}]}"#,
        r#"{"model":"m","messages":[{"role":"tool","content":"r","tool_call_id":7}],"n":0,"seed":1.5,"top_p":"1"}"#,
        r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"function":{"name":"g","arguments":{}}}]}],"tools":[{"type":"function","function":{"name":5}}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":[]},{"type":1}]}"#,
    ];

    /// The first samples are read; the others are left to the tree.
    const READ: usize = 8;

    /// What the tree path decides: the validated request's model and `stream`.
    fn tree_verdict(text: &str) -> Option<(String, Option<bool>)> {
        let Ok(Value::Object(request)) = serde_json::from_str::<Value>(text) else {
            return None;
        };
        validate_request(&request).ok()?;
        Some((
            request["model"].as_str()?.to_owned(),
            request.get("stream").and_then(Value::as_bool),
        ))
    }

    #[test]
    fn what_the_reader_accepts_the_validator_accepts_alike() {
        // Whether the client asked for a stream's usage (what
        // `UpstreamCall::client_include_usage` reads from the tree's parameters)
        // is compared too, after the model.
        let asked = |model: String, usage: bool| format!("{model}\u{0}{usage}");
        crate::api::raw_body::assert_reader_agrees_with_tree(
            SAMPLES,
            |text| {
                read(&Bytes::from(text.to_owned()))
                    .map(|r| (asked(r.model, r.include_usage), r.stream))
            },
            |text| {
                let (model, stream) = tree_verdict(text)?;
                let request: Value = serde_json::from_str(text).ok()?;
                let usage = request["stream_options"]["include_usage"].as_bool() == Some(true);
                Some((asked(model, usage), stream))
            },
        );
    }

    #[test]
    fn ordinary_requests_take_the_fast_path_and_members_for_the_tree_do_not() {
        crate::api::raw_body::assert_samples_split(SAMPLES, READ, |text| {
            read(&Bytes::from(text.to_owned())).is_some()
        });
    }

    /// A tool list read before is taken as checked, and only that list: what
    /// follows it, and a list that starts as it does, are checked as ever.
    #[test]
    fn a_tool_list_checked_before_is_taken_as_checked() {
        let tools = r#"[{"type":"function","function":{"name":"kept_by_this_test","parameters":{"type":"object"}}}]"#;
        let read_with = |tools: &str, rest: &str| {
            let text = format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"tools":{tools}{rest}}}"#
            );
            let read = read(&Bytes::from(text.clone())).map(|r| r.model);
            if read.is_some() {
                assert_eq!(read, tree_verdict(&text).map(|(model, _)| model), "{text}");
            }
            read.is_some()
        };
        assert!(read_with(tools, ""));
        assert!(read_with(tools, r#","n":1"#));
        assert!(!read_with(tools, r#","n":0"#));
        assert!(!read_with(tools, r#","tools":[]"#));
        let another = tools.replacen("}}]", r#"}},{"type":"function","function":{"name":5}}]"#, 1);
        assert!(!read_with(&another, ""));
        assert!(!read_with(&tools.replacen("]", "", 1), ""));
    }

    #[test]
    fn nesting_is_limited_as_the_tree_parser_limits_it() {
        for depth in 120..132 {
            let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            for text in [
                format!(
                    r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"x":{deep}}}"#
                ),
                format!(
                    r#"{{"model":"m","messages":[{{"role":"user","content":"x","x":{deep}}}]}}"#
                ),
                format!(
                    r#"{{"model":"m","messages":[{{"role":"user","content":[{{"type":"text","text":"t","x":{deep}}}]}}]}}"#
                ),
            ] {
                let raw = read(&Bytes::from(text.clone())).map(|r| (r.model, r.stream));
                assert_eq!(raw, tree_verdict(&text), "depth {depth}: {}", &text[..90]);
            }
        }
    }

    #[test]
    fn the_upstream_body_is_the_request_with_model_replaced_and_usage_asked() {
        for text in &SAMPLES[..READ] {
            let raw = read(&Bytes::from(*text)).unwrap();
            let original: Value = serde_json::from_str(text).unwrap();
            // The model as it came: the very bytes.
            assert_eq!(raw.upstream_body(&raw.model, false), text.as_bytes());
            for (model, add_usage) in [
                ("up-model", false),
                ("a\"b\u{1}é", true),
                (&raw.model[..], true),
            ] {
                let body = raw.upstream_body(model, add_usage);
                let sent: Value = serde_json::from_slice(&body).unwrap();
                let mut expected = original.clone();
                expected["model"] = json!(model);
                // A body that asks for the usage itself is left as it is.
                if add_usage && !raw.include_usage {
                    expected["stream_options"] = json!({"include_usage": true});
                }
                assert_eq!(sent, expected, "{text}");
            }
        }
    }
}
