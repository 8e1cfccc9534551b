//! The Messages request checked without a tree, for the pass-through to an
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

use std::ops::Range;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::json_scan::{first_time, first_value, has_escape, string_value, Walk};

/// A Messages request checked without a tree.
#[derive(Debug)]
pub struct RawMessagesRequest {
    /// The client's body: a JSON object, UTF-8, checked.
    body: Bytes,
    /// The `model` value in `body`, quotes included.
    model_span: Range<usize>,
    /// The requested model (its escapes decoded).
    pub model: String,
    /// `stream` when it was given (it can only be `true` or `false` here).
    pub stream: Option<bool>,
}

impl RawMessagesRequest {
    /// What the rest of the gateway reads of the request (routing, the request
    /// line, the metrics, the pass-through's `stream`): `model`, and `stream` when
    /// it was given.
    pub fn summary(&self) -> Map<String, Value> {
        let mut summary = Map::with_capacity(2);
        summary.insert("model".into(), self.model.clone().into());
        if let Some(stream) = self.stream {
            summary.insert("stream".into(), stream.into());
        }
        summary
    }

    /// The body to send upstream: the client's bytes, with `model` written as
    /// `model` when routing renamed it (the same bytes as `with_model` gives,
    /// without a second walk over the body to find the member).
    pub fn upstream_body(self, model: &str) -> Bytes {
        if model == self.model {
            return self.body;
        }
        let mut out = Vec::with_capacity(self.body.len() + model.len() + 2);
        out.extend_from_slice(&self.body[..self.model_span.start]);
        crate::json_scan::write_json_str(&mut out, model);
        out.extend_from_slice(&self.body[self.model_span.end..]);
        Bytes::from(out)
    }
}

/// Members the body may have at most this many of; more, and the tree path takes it
/// (the duplicate check below compares each key with the ones before it).
const MAX_MEMBERS: usize = 64;

/// The request in `body` when the validator surely accepts it (`count_tokens`: for
/// `/v1/messages/count_tokens`, where `max_tokens` is not required); `None` sends
/// it down the tree path.
pub fn read(body: &Bytes, count_tokens: bool) -> Option<RawMessagesRequest> {
    let text = crate::json_scan::utf8(body)?;
    let mut walk = Walk::new(text);
    let mut keys: Vec<&str> = Vec::with_capacity(8);
    let mut found = Found::default();
    walk.object(|walk, key| {
        // A key with an escape might spell a member checked here; given twice, the
        // tree keeps the last and this walk would have judged the first.
        if has_escape(key) || keys.len() == MAX_MEMBERS || keys.contains(&key) {
            return None;
        }
        keys.push(key);
        member(walk, key, &mut found)
    })?;
    walk.done()?;
    let (model_span, model) = found.model?;
    (found.messages && (count_tokens || found.max_tokens)).then_some(RawMessagesRequest {
        body: body.clone(),
        model_span,
        model,
        stream: found.stream,
    })
}

/// What the top-level members brought.
#[derive(Default)]
struct Found {
    model: Option<(Range<usize>, String)>,
    stream: Option<bool>,
    /// A non-empty list of valid messages.
    messages: bool,
    /// A `max_tokens` that is a positive integer.
    max_tokens: bool,
}

/// One top-level member, checked as `request::validate` checks it (or refused).
fn member(walk: &mut Walk<'_>, key: &str, found: &mut Found) -> Option<()> {
    match key {
        "model" => {
            let start = walk.at();
            if !walk.at_string() {
                return None;
            }
            let written = walk.skip()?;
            let name = string_value(written)?;
            (!name.trim().is_empty()).then_some(())?;
            found.model = Some((start..start + written.len(), name.into_owned()));
            Some(())
        }
        "max_tokens" => {
            // `Value::as_u64` of the value at least 1; anything else is for the tree
            // (which refuses it, unless this is a count).
            let n = walk.u64_or_null()??;
            found.max_tokens = n >= 1;
            Some(())
        }
        "messages" => {
            let mut count = 0;
            walk.array(|walk| {
                count += 1;
                message(walk)
            })?;
            found.messages = count > 0;
            Some(())
        }
        "stream" => {
            found.stream = Some(walk.bool_or_null()??);
            Some(())
        }
        "system" => {
            (walk.at_string() || walk.at_array()).then_some(())?;
            walk.skip().map(drop)
        }
        "temperature" | "top_p" => {
            let value = walk.skip()?;
            value
                .starts_with(|c: char| c == '-' || c.is_ascii_digit())
                .then_some(())
        }
        "top_k" => walk.u64_or_null()?.map(drop),
        "stop_sequences" => walk.array(string),
        "tools" => walk.array(|walk| {
            walk.at_object().then_some(())?;
            walk.skip().map(drop)
        }),
        "tool_choice" => {
            let mut kind = false;
            walk.object(|walk, key| match key {
                "type" => {
                    first_time(&mut kind)?;
                    string(walk)
                }
                _ if has_escape(key) => None,
                _ => walk.skip().map(drop),
            })?;
            kind.then_some(())
        }
        "metadata" | "thinking" => {
            walk.at_object().then_some(())?;
            walk.skip().map(drop)
        }
        // Turned into headers on the tree path.
        "extra_headers" => None,
        _ => walk.skip().map(drop),
    }
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
            walk.array(block)
        }
        _ if has_escape(key) => None,
        _ => walk.skip().map(drop),
    })?;
    (role_known == Some(true) && content).then_some(())
}

/// A content block: an object with a string `type` (what else it holds is the
/// upstream's to judge, as on the tree path).
fn block(walk: &mut Walk<'_>) -> Option<()> {
    let mut kind = false;
    walk.object(|walk, key| match key {
        "type" => {
            first_time(&mut kind)?;
            string(walk)
        }
        _ if has_escape(key) => None,
        _ => walk.skip().map(drop),
    })?;
    kind.then_some(())
}

/// A string, checked but not decoded (a prompt can be long).
fn string(walk: &mut Walk<'_>) -> Option<()> {
    walk.at_string().then_some(())?;
    walk.skip().map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::messages::request::validate;
    use crate::json_scan::cut_and_edited;
    use serde_json::json;

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
    ];

    /// The first samples are read; the others are left to the tree.
    const READ: usize = 5;

    /// What the tree path decides: the validated request's model and `stream`.
    fn tree_verdict(text: &str, count_tokens: bool) -> Option<(String, Option<bool>)> {
        let Ok(Value::Object(request)) = serde_json::from_str::<Value>(text) else {
            return None;
        };
        validate(&request, count_tokens).ok()?;
        Some((
            request["model"].as_str()?.to_owned(),
            request.get("stream").and_then(Value::as_bool),
        ))
    }

    #[test]
    fn what_the_reader_accepts_the_validator_accepts_alike() {
        let texts = cut_and_edited(SAMPLES, b"\"\\{}[],:0a-e. \x01");
        for count_tokens in [false, true] {
            let (mut accepted, mut trees) = (0, 0);
            for text in &texts {
                let tree = tree_verdict(text, count_tokens);
                trees += usize::from(tree.is_some());
                let Some(raw) = read(&Bytes::from(text.clone()), count_tokens) else {
                    continue;
                };
                accepted += 1;
                assert_eq!(
                    Some((raw.model.clone(), raw.stream)),
                    tree,
                    "the reader accepted what the tree path judges otherwise \
                     (count_tokens {count_tokens}): {text}"
                );
            }
            // The fast path is taken for most requests the validator accepts here.
            assert!(accepted * 2 > trees, "{accepted} of {trees}");
        }
    }

    #[test]
    fn ordinary_requests_take_the_fast_path_and_members_for_the_tree_do_not() {
        for text in &SAMPLES[..READ] {
            assert!(read(&Bytes::from(*text), false).is_some(), "{text}");
        }
        for text in &SAMPLES[READ..] {
            assert!(read(&Bytes::from(*text), false).is_none(), "{text}");
        }
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
            assert_eq!(same.upstream_body(&model), text.as_bytes());
            let original: Value = serde_json::from_str(text).unwrap();
            let body = raw.upstream_body("up-\"model\"\u{1}é");
            let sent: Value = serde_json::from_slice(&body).unwrap();
            let mut expected = original.clone();
            expected["model"] = json!("up-\"model\"\u{1}é");
            assert_eq!(sent, expected, "{text}");
            let replaced = super::super::with_model(Bytes::from(*text), "up-\"model\"\u{1}é");
            assert_eq!(body, replaced.unwrap(), "{text}");
        }
    }
}
