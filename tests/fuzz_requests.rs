//! Fuzz target: whatever a client sends to the chat door, it gets a 200 or a 4xx in
//! the OpenAI envelope, never a 5xx (the upstreams here always answer well), a panic
//! or a hang, through every provider's request translation.
//!
//! Bodies are arbitrary bytes, arbitrary JSON, and requests in the Chat Completions
//! shape (messages with every role and content part, tools, tool calls and results,
//! response formats with JSON schemas, sampling fields) whose values are now and then
//! replaced by arbitrary JSON. The gateway routes them to an OpenAI-compatible, an
//! Anthropic, a Gemini and the built-in mock connection; each mock upstream answers
//! any request well, streamed or not, in its own format.
//!
//! Runs `PROPTEST_CASES` cases (default 192); `PROPTEST_CASES=20000 cargo test --test
//! fuzz_requests` runs it long.

mod common;

use std::time::Duration;

use common::{fuzz, TestGateway};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Map, Value};

// ------------------------------------------------------------------ strategies

/// Strings the parsers under test look for.
const WORDS: &[&str] = &["text", "user", "function", "object", "#/$defs/A"];

fn arb_json() -> impl Strategy<Value = Value> {
    fuzz::arb_json(WORDS)
}

/// Mostly `good`, sometimes anything.
fn or_junk<S: Strategy<Value = Value> + 'static>(good: S) -> BoxedStrategy<Value> {
    fuzz::sometimes_junk(good, 20, WORDS)
}

fn text() -> BoxedStrategy<Value> {
    or_junk("\\PC{0,12}".prop_map(Value::String))
}

fn part() -> BoxedStrategy<Value> {
    or_junk(prop_oneof![
        text().prop_map(|t| json!({"type": "text", "text": t})),
        prop::sample::select(vec![
            "data:image/png;base64,iVBORw0KGgo=",
            "data:application/pdf;base64,JVBERi0=",
            "data:image/png,raw",
            "data:;base64,",
            "https://example.com/cat.jpg",
            "https://example.com/noext",
            "gs://bucket/a.pdf",
            "file:///etc/passwd",
        ])
        .prop_map(|url| json!({"type": "image_url", "image_url": {"url": url, "detail": "low"}})),
        Just(json!({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}})),
        Just(
            json!({"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0="}})
        ),
        Just(json!({"type": "refusal", "refusal": "no"})),
    ])
}

fn message() -> BoxedStrategy<Value> {
    let role = prop_oneof![
        5 => Just("user"),
        2 => Just("assistant"),
        2 => Just("system"),
        1 => Just("developer"),
        1 => Just("tool"),
        1 => Just("function"),
    ];
    let content = or_junk(prop_oneof![
        1 => Just(Value::Null),
        5 => "\\PC{1,12}".prop_map(Value::String),
        4 => prop::collection::vec(part(), 1..3).prop_map(Value::Array),
    ]);
    let arguments = or_junk(
        prop::sample::select(vec!["", "{}", "{\"a\": 1}", "[1]", "not json"])
            .prop_map(|a| json!(a)),
    );
    let call = (text(), text(), arguments).prop_map(|(id, name, args)| {
        json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
    });
    (
        role,
        content,
        prop::option::of(prop::collection::vec(or_junk(call), 0..3)),
        prop::option::of(or_junk("[a-z0-9_]{1,8}".prop_map(Value::String))),
    )
        .prop_map(|(role, content, calls, call_id)| {
            let mut m = json!({"role": role, "content": content});
            if let Some(calls) = calls {
                m["tool_calls"] = Value::Array(calls);
            }
            if let Some(id) = call_id {
                m["tool_call_id"] = id;
            }
            m
        })
        .boxed()
}

fn schema() -> BoxedStrategy<Value> {
    or_junk(prop_oneof![
        Just(json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]})),
        Just(
            json!({"type": "object", "$defs": {"A": {"type": "integer"}},
            "properties": {"a": {"$ref": "#/$defs/A"}, "b": {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}]}}})
        ),
        Just(
            json!({"type": "object", "$defs": {"A": {"properties": {"x": {"$ref": "#/$defs/A"}}}},
            "properties": {"a": {"$ref": "#/$defs/A"}}})
        ),
        Just(json!({"type": ["string", "null"], "enum": ["x", 1]})),
        arb_json().prop_map(|p| json!({"type": "object", "properties": {"p": p}})),
    ])
}

fn field<S: Strategy<Value = Value> + 'static>(
    name: &'static str,
    value: S,
) -> BoxedStrategy<(String, Value)> {
    value.prop_map(move |v| (name.to_owned(), v)).boxed()
}

fn request(model: &'static str) -> BoxedStrategy<Value> {
    let tool = (text(), schema()).prop_map(|(name, parameters)| {
        json!({"type": "function", "function": {"name": name, "parameters": parameters}})
    });
    let extra = prop_oneof![
        field("n", or_junk((0u32..4).prop_map(|n| json!(n)))),
        field("max_tokens", or_junk((0i64..100).prop_map(|n| json!(n)))),
        field(
            "max_completion_tokens",
            or_junk((1i64..100).prop_map(|n| json!(n)))
        ),
        field("temperature", or_junk((0.0f64..2.0).prop_map(|t| json!(t)))),
        field("top_p", or_junk((0.0f64..1.0).prop_map(|t| json!(t)))),
        field(
            "stop",
            or_junk(prop::collection::vec("\\PC{0,4}", 0..5).prop_map(|s| json!(s)))
        ),
        field(
            "tool_choice",
            or_junk(prop::sample::select(vec!["auto", "none", "required"]).prop_map(|c| json!(c)))
        ),
        field(
            "tool_choice",
            text().prop_map(|n| json!({"type": "function", "function": {"name": n}}))
        ),
        field(
            "parallel_tool_calls",
            or_junk(any::<bool>().prop_map(Value::Bool))
        ),
        field(
            "response_format",
            schema().prop_map(
                |s| json!({"type": "json_schema", "json_schema": {"name": "r", "schema": s}})
            )
        ),
        field(
            "response_format",
            or_junk(Just(json!({"type": "json_object"})))
        ),
        field(
            "stream_options",
            or_junk(Just(json!({"include_usage": true})))
        ),
        field("reasoning_effort", text()),
        field("seed", or_junk(any::<u32>().prop_map(|n| json!(n)))),
        field("logprobs", or_junk(any::<bool>().prop_map(Value::Bool))),
        field("user", text()),
        field("metadata", arb_json()),
        ("[a-z_]{1,12}", arb_json()).boxed(),
    ];
    (
        prop::collection::vec(message(), 1..5),
        prop::option::of(prop::collection::vec(or_junk(tool), 0..3)),
        any::<bool>(),
        prop::collection::vec(extra, 0..5),
    )
        .prop_map(move |(messages, tools, stream, extras)| {
            let mut request = Map::new();
            request.insert("model".into(), json!(model));
            request.insert("messages".into(), Value::Array(messages));
            request.insert("stream".into(), json!(stream));
            if let Some(tools) = tools {
                request.insert("tools".into(), Value::Array(tools));
            }
            for (key, value) in extras {
                request.insert(key, value);
            }
            Value::Object(request)
        })
        .boxed()
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let shaped = prop::sample::select(vec!["o-model", "a-model", "g-model", "mock-model"])
        .prop_flat_map(request)
        .prop_map(|r| r.to_string().into_bytes());
    prop_oneof![
        8 => shaped,
        1 => arb_json().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..200),
    ]
}

/// How many cases were answered 200, to show the generated requests get past
/// validation into the translators and upstream calls.
static ANSWERED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

async fn check(
    gw: &TestGateway,
    client: &reqwest::Client,
    body: Vec<u8>,
) -> Result<(), TestCaseError> {
    let response = client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("fuzz-key")
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
    let status = response.status().as_u16();
    let text = response
        .text()
        .await
        .map_err(|e| TestCaseError::fail(format!("body not read: {e}")))?;
    prop_assert!(
        status == 200 || (400..500).contains(&status),
        "status {status} for {}: {text}",
        String::from_utf8_lossy(&body)
    );
    if status == 200 {
        ANSWERED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    } else {
        if std::env::var_os("FUZZ_SHOW_ERRORS").is_some() {
            eprintln!("{status} {text}");
        }
        let error: Value = serde_json::from_str(&text)
            .map_err(|e| TestCaseError::fail(format!("{status} not JSON ({e}): {text}")))?;
        prop_assert!(error["error"]["message"].is_string(), "{text}");
        prop_assert_eq!(&error["error"]["type"], "invalid_request_error", "{}", text);
    }
    Ok(())
}

#[test]
fn any_request_body_gets_a_200_or_a_client_error() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let gw = runtime.block_on(fuzz::start_gateway());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    fuzz::run(&body(), &ANSWERED, |body| {
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), check(&gw, &client, body))
                .await
                .map_err(|_| TestCaseError::fail("the gateway did not answer within 30 s"))?
        })
    });
}
