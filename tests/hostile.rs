//! A corpus of malformed and hostile requests. Every one must be answered with a 4xx
//! in the OpenAI error envelope, never a 5xx, a panic or a hang, and the gateway must
//! serve ordinary requests afterwards.

mod common;

use common::TestGateway;
use serde_json::{json, Value};

const CONFIG: &str = r#"
max_request_body_mb = 1
[connections.mock]
api_type = "mock"
[routing]
"*" = "mock.*"
[groups.default]
api_keys = ["good-key"]
"#;

/// One request of the corpus.
struct Case {
    name: String,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    authorization: Option<Vec<u8>>,
    /// The field the answer's `param` must name (or a part of it), where the case
    /// breaks exactly one field: a case refused for another reason then fails.
    param: Option<String>,
    /// For a case that breaks no single field: the error `code` it must get, or
    /// (`message:...`) a phrase its message must hold.
    reason: Option<&'static str>,
}

fn case(name: &str, body: impl Into<Vec<u8>>) -> Case {
    Case {
        name: name.to_owned(),
        body: body.into(),
        content_type: Some("application/json"),
        authorization: Some(b"Bearer good-key".to_vec()),
        param: None,
        reason: None,
    }
}

/// A case refused for the reason `reason` names (see [`Case::reason`]).
fn because(reason: &'static str, name: &str, body: impl Into<Vec<u8>>) -> Case {
    Case {
        reason: Some(reason),
        ..case(name, body)
    }
}

/// A valid request with one field replaced.
fn with_field(field: &str, value: Value) -> Case {
    let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    body[field] = value.clone();
    Case {
        param: Some(field.to_owned()),
        ..case(
            &format!("{field} = {value}"),
            serde_json::to_vec(&body).unwrap(),
        )
    }
}

/// A valid request with one message replaced.
fn with_message(message: Value) -> Case {
    let body = json!({"model": "m", "messages": [message.clone()]});
    Case {
        param: Some("messages".to_owned()),
        ..case(
            &format!("message {message}"),
            serde_json::to_vec(&body).unwrap(),
        )
    }
}

fn corpus() -> Vec<Case> {
    let mut cases = vec![
        // Not JSON, or not an object.
        because("message:body is empty", "empty body", ""),
        because("message:body is empty", "whitespace", " \n\t "),
        because("invalid_json", "open brace", "{"),
        because("invalid_json", "close brace", "}"),
        because(
            "invalid_json",
            "truncated",
            r#"{"model": "m", "messages": [{"role": "us"#,
        ),
        because("invalid_json", "missing value", r#"{"model": }"#),
        because(
            "invalid_json",
            "trailing comma",
            r#"{"model": "m", "messages": [],}"#,
        ),
        because("invalid_json", "single quotes", "{'model': 'm'}"),
        because(
            "invalid_json",
            "NaN",
            r#"{"model": "m", "temperature": NaN}"#,
        ),
        because(
            "invalid_json",
            "byte order mark",
            "\u{feff}{\"model\": \"m\"}",
        ),
        because("message:must be a JSON object", "a string", r#""hello""#),
        because("message:must be a JSON object", "a number", "42"),
        because("message:must be a JSON object", "null", "null"),
        because("message:must be a JSON object", "an array", "[1, 2, 3]"),
        because(
            "invalid_json",
            "huge number",
            format!(
                r#"{{"model": "m", "messages": [], "seed": 1e{}}}"#,
                "9".repeat(400)
            ),
        ),
        because(
            "invalid_json",
            "lone surrogate",
            r#"{"model": "\ud800", "messages": [{"role": "user", "content": "x"}]}"#,
        ),
        because(
            "invalid_json",
            "invalid utf-8 in string",
            b"{\"model\": \"m\xff\xfe\", \"messages\": []}".to_vec(),
        ),
        because(
            "invalid_json",
            "overlong utf-8",
            b"{\"model\": \"\xc0\xaf\", \"messages\": []}".to_vec(),
        ),
        because("invalid_json", "nul bytes", b"\0\0\0\0".to_vec()),
        // Deep nesting.
        because(
            "invalid_json",
            "deep arrays",
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
        ),
        because(
            "invalid_json",
            "deep objects in an unknown field",
            format!(
                r#"{{"model": "m", "messages": [{{"role": "user", "content": "x"}}], "x": {}1{}}}"#,
                "{\"a\":".repeat(5000),
                "}".repeat(5000)
            ),
        ),
        because(
            "invalid_json",
            "deep messages",
            format!(
                r#"{{"model": "m", "messages": {}{}}}"#,
                "[".repeat(10_000),
                "]".repeat(10_000)
            ),
        ),
        // Too large for the 1 MiB limit.
        because(
            "request_too_large",
            "oversized body",
            format!(
                r#"{{"model": "m", "messages": [{{"role": "user", "content": "{}"}}]}}"#,
                "a".repeat(2 * 1024 * 1024)
            ),
        ),
        with_field("model", json!("m".repeat(100_000))),
        // Wrong types.
        with_field("model", json!(1)),
        with_field("model", json!(["m"])),
        with_field("model", json!({"name": "m"})),
        with_field("model", json!(true)),
        with_field("model", json!(null)),
        with_field("model", json!("")),
        with_field("model", json!("line\nbreak")),
        with_field("messages", json!("hello")),
        with_field("messages", json!({"role": "user"})),
        with_field("messages", json!([])),
        with_field("messages", json!([1])),
        with_field("messages", json!([null])),
        with_field("messages", json!([[]])),
        with_field("stream", json!("true")),
        with_field("stream", json!(1)),
        with_field("temperature", json!("hot")),
        with_field("stop", json!(5)),
        with_field("stop", json!([1, 2])),
        with_field("tools", json!("none")),
        with_field("tools", json!([{"type": "function"}])),
        with_field("tool_choice", json!(7)),
        with_field("stream_options", json!(true)),
        with_field("response_format", json!("json")),
        // Absurd n and token limits.
        with_field("n", json!(0)),
        with_field("n", json!(-3)),
        with_field("n", json!(1_000_000_000)),
        with_field("n", json!(2.5)),
        with_field("n", json!("2")),
        with_field("max_tokens", json!(-1)),
        with_field("max_tokens", json!(0)),
        with_field("max_tokens", json!(1e30)),
        with_field("max_completion_tokens", json!("lots")),
        with_field("top_logprobs", json!(1000)),
        // Bad messages and content parts.
        with_message(json!({"role": "wizard", "content": "x"})),
        with_message(json!({"role": "", "content": "x"})),
        with_message(json!({"role": "SYSTEM", "content": "x"})),
        with_message(json!({"role": 5, "content": "x"})),
        with_message(json!({"content": "x"})),
        with_message(json!({"role": "user"})),
        with_message(json!({"role": "user", "content": 12})),
        with_message(json!({"role": "user", "content": {"type": "text", "text": "x"}})),
        with_message(json!({"role": "user", "content": [{"text": "no type"}]})),
        with_message(json!({"role": "user", "content": [{"type": "text"}]})),
        with_message(json!({"role": "user", "content": [{"type": "text", "text": 5}]})),
        with_message(json!({"role": "user", "content": [{"type": "image_url"}]})),
        with_message(
            json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]}),
        ),
        with_message(json!({"role": "user", "content": ["plain string part"]})),
        with_message(json!({"role": "tool", "content": "result without id"})),
        with_message(json!({"role": "assistant", "tool_calls": "none"})),
        with_message(
            json!({"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}),
        ),
        with_message(
            json!({"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}),
        ),
    ];

    // Header tricks.
    let valid =
        serde_json::to_vec(&json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}))
            .unwrap();
    for (name, auth) in [
        ("no authorization", None),
        ("bearer without key", Some(b"Bearer".to_vec())),
        ("bearer with spaces", Some(b"Bearer    ".to_vec())),
        ("basic auth", Some(b"Basic Z29vZC1rZXk6".to_vec())),
        ("key without scheme", Some(b"good-key".to_vec())),
        ("non-ascii key", Some(b"Bearer good-key\xe9".to_vec())),
        (
            "key with a trailing suffix",
            Some(b"Bearer good-key-and-more".to_vec()),
        ),
        (
            "very long key",
            Some(format!("Bearer {}", "k".repeat(16 * 1024)).into_bytes()),
        ),
    ] {
        cases.push(Case {
            name: name.to_owned(),
            body: valid.clone(),
            content_type: Some("application/json"),
            authorization: auth,
            param: None,
            reason: Some("invalid_api_key"),
        });
    }
    for content_type in [
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "application/jsonx",
    ] {
        cases.push(Case {
            name: format!("content type {content_type}"),
            body: valid.clone(),
            content_type: Some(content_type),
            authorization: Some(b"Bearer good-key".to_vec()),
            param: None,
            reason: Some("invalid_content_type"),
        });
    }
    cases
}

#[tokio::test]
async fn every_hostile_request_is_a_4xx_in_the_openai_envelope() {
    let gw = TestGateway::start(CONFIG).await;
    let cases = corpus();
    assert!(cases.len() >= 50, "the corpus has {} cases", cases.len());
    let mut failures = Vec::new();
    let unexplained: Vec<&str> = cases
        .iter()
        .filter(|c| c.param.is_none() && c.reason.is_none())
        .map(|c| c.name.as_str())
        .collect();
    assert!(
        unexplained.is_empty(),
        "cases that say not why they fail: {unexplained:?}"
    );
    for case in &cases {
        let mut request = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .body(case.body.clone());
        if let Some(ct) = case.content_type {
            request = request.header("content-type", ct);
        }
        if let Some(auth) = &case.authorization {
            request = request.header(
                "authorization",
                reqwest::header::HeaderValue::from_bytes(auth).unwrap(),
            );
        }
        let response =
            match tokio::time::timeout(std::time::Duration::from_secs(10), request.send()).await {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => {
                    failures.push(format!("{}: transport error {e}", case.name));
                    continue;
                }
                Err(_) => {
                    failures.push(format!("{}: no answer in 10 s", case.name));
                    continue;
                }
            };
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let shaped = body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
            && body["error"]["type"].is_string()
            && body["error"].get("param").is_some()
            && body["error"].get("code").is_some();
        let reason_named = case.param.as_deref().is_none_or(|field| {
            body["error"]["param"].as_str().is_some_and(|p| {
                p == field
                    || p.starts_with(&format!("{field}["))
                    || p.starts_with(&format!("{field}."))
            })
        });
        let reason_given = case
            .reason
            .is_none_or(|reason| match reason.strip_prefix("message:") {
                Some(phrase) => body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(phrase)),
                None => body["error"]["code"] == reason,
            });
        if !(400..500).contains(&status) || !shaped || !reason_named || !reason_given {
            failures.push(format!("{}: {status} {body}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Still healthy and serving.
    let (status, body) = gw
        .chat_json("good-key", common::user("m", "still alive?"))
        .await;
    assert_eq!(status, 200, "{body}");
}
