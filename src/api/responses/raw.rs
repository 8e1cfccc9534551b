//! The Responses request checked without a tree (`api::raw_body`), for the
//! pass-through to an upstream that speaks the Responses API when nothing will look
//! at the request (no handler, no JSON logger): the client's bytes go upstream with
//! only `model` replaced, so the tree that `json_object_body` built and
//! `request::validate` read was thrown away unused, and a coding agent's request
//! (its instructions, tools and the conversation's items) is tens of kilobytes.
//!
//! [`read`] answers only for a request that
//! [`request::validate`](super::request::validate) surely accepts; anything else
//! (a key written with escapes, a member given twice, `extra_headers`, which the
//! tree path turns into headers) takes the tree path. The differential test below
//! holds it to "accepted here ⇒ accepted there, with the same model and `stream`".

use bytes::Bytes;

use crate::api::raw_body::{
    not_blank, number, object, objects, string, strings, walk_body, RawBody,
};
use crate::json_scan::Walk;

/// The request in `body` when the validator surely accepts it; `None` sends it
/// down the tree path.
pub fn read(body: &Bytes) -> Option<RawBody> {
    let mut stream = None;
    let mut raw = walk_body(body, not_blank, |walk, key| member(walk, key, &mut stream))?;
    raw.stream = stream;
    Some(raw)
}

/// One top-level member but `model`, checked as `request::validate` checks it (or
/// refused). The validator lets `null` through for every member.
fn member(walk: &mut Walk<'_>, key: &str, stream: &mut Option<bool>) -> Option<()> {
    if walk.null() {
        // Turned into (no) headers on the tree path: left to it all the same.
        return (key != "extra_headers").then_some(());
    }
    match key {
        "input" => {
            if walk.at_string() {
                return string(walk);
            }
            objects(walk)
        }
        "stream" => {
            *stream = Some(walk.bool_or_null()??);
            Some(())
        }
        "store" | "background" | "parallel_tool_calls" => walk.bool_or_null()?.map(drop),
        "instructions" | "user" | "previous_response_id" | "safety_identifier" => string(walk),
        "temperature" | "top_p" => number(walk),
        "max_output_tokens" => (walk.u64_or_null()?? >= 1).then_some(()),
        "tools" => objects(walk),
        "tool_choice" => {
            if walk.at_string() {
                return string(walk);
            }
            object(walk)
        }
        "text" | "reasoning" | "metadata" | "stream_options" => object(walk),
        "include" => strings(walk),
        // Turned into headers on the tree path.
        "extra_headers" => None,
        _ => walk.skip().map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::responses::request::validate;
    use serde_json::{json, Value};

    const SAMPLES: &[&str] = &[
        r#"{"model":"gpt-5","input":"hi"}"#,
        r#" { "model" : "m" , "stream" : true , "instructions" : "be brief" , "input" : [ { "role" : "user" , "content" : "a\nb\u00e9\"" } ] , "temperature" : 0.5 } "#,
        r#"{"input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"t"}]},{"type":"function_call","call_id":"c1","name":"f","arguments":"{}"},{"type":"function_call_output","call_id":"c1","output":"r"}],"model":"m","stream":false,"store":false,"background":null,"parallel_tool_calls":true,"user":"u","previous_response_id":null,"safety_identifier":"s","top_p":1e-1,"max_output_tokens":100,"tools":[{"type":"function","name":"f","parameters":{"type":"object"}}],"tool_choice":"auto","text":{"format":{"type":"text"}},"reasoning":{"effort":"low"},"metadata":{"a":"b"},"stream_options":{"include_obfuscation":false},"include":["reasoning.encrypted_content"],"unknown":[1,{"d":[2]}]}"#,
        r#"{"model":"m\u0041","max_output_tokens":18446744073709551615,"input":[],"tool_choice":{"type":"function","name":"f"},"stream":null,"tools":[]}"#,
        r#"{"model":"m","temperature":-2,"instructions":null,"include":[]}"#,
        // Left to the tree: refused there, or given twice, or turned into headers.
        r#"{"model":"m","model":"n","input":"x"}"#,
        r#"{"model":"m","input":"x","extra_headers":{"a":"b"}}"#,
        r#"{"model":"m","input":["x"],"stream":1,"max_output_tokens":0}"#,
        r#"{"model":" ","input":5,"store":"yes","tools":[1],"tool_choice":7,"text":[],"include":[1]}"#,
        r#"{"input":"x","temperature":"1","user":2}"#,
        // One member wrong each.
        r#"{"model":"m","include":["a",1]}"#,
        r#"{"model":"m","tools":[{},1]}"#,
        r#"{"model":"m","text":"x"}"#,
        r#"{"model":"m","stream":"true"}"#,
        r#"{"model":"m","input":[{},"x"]}"#,
        r#"{"model":"m","tool_choice":[]}"#,
    ];

    /// The first samples are read; the others are left to the tree.
    const READ: usize = 5;

    fn tree_verdict(text: &str) -> Option<(String, Option<bool>)> {
        crate::api::raw_body::tree_verdict(text, |request| validate(request).is_ok())
    }

    #[test]
    fn what_the_reader_accepts_the_validator_accepts_alike() {
        crate::api::raw_body::assert_reader_agrees_with_tree(
            SAMPLES,
            |text| read(&Bytes::from(text.to_owned())).map(|r| (r.model, r.stream)),
            tree_verdict,
        );
    }

    #[test]
    fn ordinary_requests_take_the_fast_path_and_members_for_the_tree_do_not() {
        crate::api::raw_body::assert_samples_split(SAMPLES, READ, |text| {
            read(&Bytes::from(text.to_owned())).is_some()
        });
    }

    #[test]
    fn nesting_is_limited_as_the_tree_parser_limits_it() {
        for depth in 120..132 {
            let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            for text in [
                format!(r#"{{"model":"m","input":"x","x":{deep}}}"#),
                format!(r#"{{"model":"m","input":[{{"type":"message","x":{deep}}}]}}"#),
            ] {
                let raw = read(&Bytes::from(text.clone())).map(|r| (r.model, r.stream));
                assert_eq!(raw, tree_verdict(&text), "depth {depth}");
            }
        }
    }

    #[test]
    fn the_upstream_body_is_the_request_with_only_model_replaced() {
        for text in &SAMPLES[..READ] {
            let same = read(&Bytes::from(*text)).unwrap();
            let model = same.model.clone();
            assert_eq!(same.upstream_body(&model, false), text.as_bytes());
            let body = read(&Bytes::from(*text))
                .unwrap()
                .upstream_body("up-\"model\"\u{1}é", false);
            let sent: Value = serde_json::from_slice(&body).unwrap();
            let mut expected: Value = serde_json::from_str(text).unwrap();
            expected["model"] = json!("up-\"model\"\u{1}é");
            assert_eq!(sent, expected, "{text}");
            let replaced =
                crate::api::messages::with_model(Bytes::from(*text), "up-\"model\"\u{1}é");
            assert_eq!(body, replaced.unwrap(), "{text}");
        }
    }
}
