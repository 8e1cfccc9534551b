//! The Messages request checked without a tree (`api::raw_body`), for the pass-through to an
//! Anthropic upstream when nothing will look at the request (no handler, no JSON
//! logger): the client's bytes go upstream with only `model` replaced, so the tree
//! that `json_object_body` built and `request::validate` read was thrown away
//! unused. An agent's request (Claude Code's: a long system prompt, dozens of
//! tools with their schemas, the whole conversation) is tens to hundreds of
//! kilobytes, and building that tree was most of what the gateway did for it.
//!
//! [`read`] walks the body once (`json_scan::Walk`, which checks every byte as
//! serde_json's parser does) and answers only for a request that
//! [`request::validate`](super::request::validate) surely accepts: a member it does
//! not check the way the validator does (a key written with escapes, a member given
//! twice, `extra_headers`, which the tree path turns into headers) makes it answer
//! `None`, and the door takes the tree path, which gives every error its answer as
//! before. The differential test below holds it to "accepted here ⇒ accepted there,
//! with the same model and `stream`".

use bytes::Bytes;

use crate::api::raw_body::{
    kept_check, non_empty_list, not_blank, number, object, objects, string, strings, typed_object,
    walk_body, RawBody,
};
use crate::json_scan::{first_time, first_value, has_escape, Walk};

/// The request in `body` when the validator surely accepts it (`count_tokens`: for
/// `/v1/messages/count_tokens`, where `max_tokens` is not required); `None` sends
/// it down the tree path.
pub fn read(body: &Bytes, count_tokens: bool) -> Option<RawBody> {
    let mut found = Found::default();
    let mut raw = walk_body(body, not_blank, |walk, key| member(walk, key, &mut found))?;
    (found.messages && (count_tokens || found.max_tokens)).then_some(())?;
    raw.stream = found.stream;
    Some(raw)
}

/// What the top-level members brought.
#[derive(Default)]
struct Found {
    stream: Option<bool>,
    /// A non-empty list of valid messages.
    messages: bool,
    /// A `max_tokens` that is a positive integer.
    max_tokens: bool,
}

/// One top-level member but `model`, checked as `request::validate` checks it (or
/// refused).
fn member(walk: &mut Walk<'_>, key: &str, found: &mut Found) -> Option<()> {
    match key {
        "max_tokens" => {
            // `Value::as_u64` of the value at least 1; anything else is for the tree
            // (which refuses it, unless this is a count).
            let n = walk.u64_or_null()??;
            found.max_tokens = n >= 1;
            Some(())
        }
        "messages" => {
            found.messages = non_empty_list(walk, message)?;
            Some(())
        }
        // A boolean (`null` is refused by the validator).
        "stream" => {
            found.stream = Some(walk.bool_or_null()??);
            Some(())
        }
        "system" => {
            if walk.at_string() {
                return string(walk);
            }
            walk.array(|walk| walk.skip().map(drop))
        }
        "temperature" | "top_p" => number(walk),
        "top_k" => walk.u64_or_null()?.map(drop),
        "stop_sequences" => strings(walk),
        "tools" => kept_check(walk, &CHECKED_TOOLS, objects),
        "tool_choice" => typed_object(walk),
        "metadata" | "thinking" => object(walk),
        // Turned into headers on the tree path.
        "extra_headers" => None,
        _ => walk.skip().map(drop),
    }
}

thread_local! {
    /// The tool lists this thread's last requests sent that passed (see
    /// `raw_body::kept_check`).
    static CHECKED_TOOLS: std::cell::RefCell<crate::recent::Recent<()>> =
        const { std::cell::RefCell::new(crate::recent::Recent::new()) };
}

/// One message: an object whose `role` is `user` or `assistant` and whose
/// `content` is a string or a list of objects that each have a string `type`.
fn message(walk: &mut Walk<'_>) -> Option<()> {
    let mut role_known = None;
    let mut content = false;
    walk.object(|walk, key| match key {
        "role" => first_value(&mut role_known, || {
            let role = walk.string()?;
            Some(role == "user" || role == "assistant")
        }),
        "content" => {
            first_time(&mut content)?;
            if walk.at_string() {
                return string(walk);
            }
            // Blocks: objects with a string `type` (what else they hold is the
            // upstream's to judge, as on the tree path).
            walk.array(typed_object)
        }
        _ if has_escape(key) => None,
        _ => walk.skip().map(drop),
    })?;
    (role_known == Some(true) && content).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const SAMPLES: &[&str] = &[
        r#"{"model":"claude-x","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#,
        r#" { "model" : "c" , "stream" : true , "max_tokens" : 5 , "system" : "be brief" , "messages" : [ { "role" : "user" , "content" : "a\nb\u00e9\"" } ] , "temperature" : 0.5 } "#,
        r#"{"messages":[{"role":"user","content":[{"type":"text","text":"t","cache_control":{"type":"ephemeral"}},{"type":"image","source":{}}]},{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"f","input":{"a":[1,2]}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"r"}]}],"model":"m","stream":false,"max_tokens":10,"top_k":3,"top_p":1e-1,"stop_sequences":["x","y"],"metadata":{"user_id":"u"},"tool_choice":{"type":"auto"},"thinking":{"type":"enabled","budget_tokens":1024},"system":[{"type":"text","text":"s"}],"tools":[{"name":"f","input_schema":{"type":"object"}}],"unknown":[1,{"d":[2]}]}"#,
        r#"{"model":"m\u0041","max_tokens":18446744073709551615,"messages":[{"content":"x","role":"assistant","extra":null}],"stop_sequences":[],"tools":[]}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[]}],"temperature":-2}"#,
        // Left to the tree: refused there, or given twice, or turned into headers.
        r#"{"model":"m","model":"n","max_tokens":1,"messages":[{"role":"user","content":"x"}]}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","role":"system","content":"x"}],"extra_headers":{"a":"b"}}"#,
        r#"{"model":"m","max_tokens":0,"messages":[{"role":"user","content":[{"type":1}]}],"stream":null}"#,
        r#"{"model":" ","max_tokens":1.5,"messages":[],"top_k":-1,"system":7,"tools":[1],"tool_choice":{"name":"f"}}"#,
        r#"{"model":"m","messages":[{"role":"user","content":null}],"stop_sequences":[1],"metadata":[]}"#,
        // One member wrong each.
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"stop_sequences":["a",1]}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"tools":[{},1]}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"system":{}}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"text"},{}]}]}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"top_k":1.5}"#,
        r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"thinking":"on"}"#,
    ];

    /// The first samples are read; the others are left to the tree.
    const READ: usize = 5;

    /// The tree path's verdict.
    fn tree_verdict(text: &str, count_tokens: bool) -> Option<(String, Option<bool>)> {
        use crate::api::messages::request::validate;
        crate::api::raw_body::tree_verdict(text, |request| validate(request, count_tokens).is_ok())
    }

    #[test]
    fn what_the_reader_accepts_the_validator_accepts_alike() {
        for count_tokens in [false, true] {
            crate::api::raw_body::assert_reader_agrees_with_tree(
                SAMPLES,
                |text| {
                    read(&Bytes::from(text.to_owned()), count_tokens).map(|r| (r.model, r.stream))
                },
                |text| tree_verdict(text, count_tokens),
            );
        }
    }

    #[test]
    fn ordinary_requests_take_the_fast_path_and_members_for_the_tree_do_not() {
        crate::api::raw_body::assert_samples_split(SAMPLES, READ, |text| {
            read(&Bytes::from(text.to_owned()), false).is_some()
        });
        // A count needs no `max_tokens`; a message does.
        let count = r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#;
        assert!(read(&Bytes::from(count), true).is_some());
        assert!(read(&Bytes::from(count), false).is_none());
    }

    #[test]
    fn nesting_is_limited_as_the_tree_parser_limits_it() {
        for depth in 120..132 {
            let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            for text in [
                format!(
                    r#"{{"model":"m","max_tokens":1,"messages":[{{"role":"user","content":"x"}}],"x":{deep}}}"#
                ),
                format!(
                    r#"{{"model":"m","max_tokens":1,"messages":[{{"role":"user","content":[{{"type":"text","x":{deep}}}]}}]}}"#
                ),
            ] {
                let raw = read(&Bytes::from(text.clone()), false).map(|r| (r.model, r.stream));
                assert_eq!(raw, tree_verdict(&text, false), "depth {depth}");
            }
        }
    }

    #[test]
    fn the_upstream_body_is_the_request_with_only_model_replaced() {
        for text in &SAMPLES[..READ] {
            let raw = read(&Bytes::from(*text), false).unwrap();
            // The model as it came: the very bytes, as `with_model` gives them.
            let same = read(&Bytes::from(*text), false).unwrap();
            let model = same.model.clone();
            assert_eq!(same.upstream_body(&model, false), text.as_bytes());
            let original: Value = serde_json::from_str(text).unwrap();
            let body = raw.upstream_body("up-\"model\"\u{1}é", false);
            let sent: Value = serde_json::from_slice(&body).unwrap();
            let mut expected = original.clone();
            expected["model"] = json!("up-\"model\"\u{1}é");
            assert_eq!(sent, expected, "{text}");
            let replaced = super::super::with_model(Bytes::from(*text), "up-\"model\"\u{1}é");
            assert_eq!(body, replaced.unwrap(), "{text}");
        }
    }
}
