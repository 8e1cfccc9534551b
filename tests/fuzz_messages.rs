//! Fuzz target: whatever a client sends to the Anthropic door, it gets a 200 (a
//! `message`, or an event stream ending in `message_stop`) or a 4xx in Anthropic's
//! envelope, never a 5xx (the upstreams here always answer well), a panic or a hang,
//! through the pass-through and every translated provider.
//!
//! Bodies are arbitrary bytes, arbitrary JSON, and Messages API requests (every
//! block type, tools, tool choices, thinking, sampling fields) whose values are now
//! and then replaced by arbitrary JSON. `PROPTEST_CASES=N` runs N new random cases.

mod common;

use std::time::Duration;

use common::{fuzz, TestGateway};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Map, Value};

const WORDS: &[&str] = &["text", "user", "assistant", "tool_use", "base64", "auto"];

fn or_junk<S: Strategy<Value = Value> + 'static>(good: S) -> BoxedStrategy<Value> {
    fuzz::sometimes_junk(good, 20, WORDS)
}

fn text() -> BoxedStrategy<Value> {
    or_junk("\\PC{0,12}".prop_map(Value::String))
}

fn block() -> BoxedStrategy<Value> {
    or_junk(prop_oneof![
        4 => text().prop_map(|t| json!({"type": "text", "text": t, "cache_control": {"type": "ephemeral"}})),
        1 => Just(json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}})),
        1 => Just(json!({"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}})),
        1 => Just(json!({"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc"}})),
        1 => Just(json!({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}})),
        2 => (text(), fuzz::arb_json(WORDS)).prop_map(|(name, input)| json!({"type": "tool_use", "id": "toolu_1", "name": name, "input": input})),
        2 => (text(), any::<bool>()).prop_map(|(content, err)| json!({"type": "tool_result", "tool_use_id": "toolu_1", "content": content, "is_error": err})),
        1 => Just(json!({"type": "thinking", "thinking": "hm", "signature": "sig"})),
        1 => Just(json!({"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}})),
    ])
}

fn message() -> BoxedStrategy<Value> {
    let role = prop_oneof![5 => Just("user"), 3 => Just("assistant"), 1 => Just("system")];
    let content = or_junk(prop_oneof![
        3 => "\\PC{1,12}".prop_map(Value::String),
        4 => prop::collection::vec(block(), 1..3).prop_map(Value::Array),
    ]);
    (role, content)
        .prop_map(|(role, content)| json!({"role": role, "content": content}))
        .boxed()
}

fn field<S: Strategy<Value = Value> + 'static>(
    name: &'static str,
    value: S,
) -> BoxedStrategy<(String, Value)> {
    value.prop_map(move |v| (name.to_owned(), v)).boxed()
}

fn request(model: &'static str) -> BoxedStrategy<Value> {
    let tool = (text(), fuzz::arb_json(WORDS)).prop_map(
        |(name, schema)| json!({"name": name, "description": "d", "input_schema": schema}),
    );
    let extra = prop_oneof![
        field(
            "system",
            or_junk(prop_oneof![
                "\\PC{0,12}".prop_map(Value::String),
                Just(json!([{"type": "text", "text": "be brief"}])),
            ])
        ),
        field("temperature", or_junk((0.0f64..2.0).prop_map(|t| json!(t)))),
        field("top_p", or_junk((0.0f64..1.0).prop_map(|t| json!(t)))),
        field("top_k", or_junk((0u32..50).prop_map(|t| json!(t)))),
        field(
            "stop_sequences",
            or_junk(prop::collection::vec("\\PC{0,4}", 0..3).prop_map(|s| json!(s)))
        ),
        field(
            "tool_choice",
            or_junk(
                prop::sample::select(vec!["auto", "any", "none"]).prop_map(|c| json!({"type": c}))
            )
        ),
        field(
            "tool_choice",
            text().prop_map(
                |n| json!({"type": "tool", "name": n, "disable_parallel_tool_use": true})
            )
        ),
        field(
            "thinking",
            or_junk((0u64..40000).prop_map(|b| json!({"type": "enabled", "budget_tokens": b})))
        ),
        field(
            "metadata",
            or_junk(text().prop_map(|u| json!({"user_id": u})))
        ),
        ("[a-z_]{1,12}", fuzz::arb_json(WORDS)).boxed(),
    ];
    (
        prop::collection::vec(message(), 1..5),
        prop::option::of(prop::collection::vec(or_junk(tool), 0..3)),
        any::<bool>(),
        or_junk((1u64..100).prop_map(|n| json!(n))),
        prop::collection::vec(extra, 0..4),
    )
        .prop_map(move |(messages, tools, stream, max_tokens, extras)| {
            let mut request = Map::new();
            request.insert("model".into(), json!(model));
            request.insert("max_tokens".into(), max_tokens);
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

/// The path (messages or count_tokens) and the body.
fn case() -> impl Strategy<Value = (bool, Vec<u8>)> {
    let shaped = prop::sample::select(vec!["o-model", "a-model", "g-model", "mock-model"])
        .prop_flat_map(request)
        .prop_map(|r| r.to_string().into_bytes());
    let body = prop_oneof![
        8 => shaped,
        1 => fuzz::arb_json(WORDS).prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..200),
    ];
    (prop::bool::weighted(0.1), body)
}

static ANSWERED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

async fn check(
    gw: &TestGateway,
    client: &reqwest::Client,
    count_tokens: bool,
    body: Vec<u8>,
) -> Result<(), TestCaseError> {
    let path = if count_tokens {
        "/v1/messages/count_tokens"
    } else {
        "/v1/messages"
    };
    let response = client
        .post(gw.url(path))
        .header("x-api-key", "fuzz-key")
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
    let status = response.status().as_u16();
    let streamed = response
        .headers()
        .get("content-type")
        .is_some_and(|c| c == "text/event-stream");
    let text = response
        .text()
        .await
        .map_err(|e| TestCaseError::fail(format!("body not read: {e}")))?;
    let shown = String::from_utf8_lossy(&body);
    prop_assert!(
        status == 200 || (400..500).contains(&status),
        "status {status} for {shown}: {text}"
    );
    if status != 200 {
        let error: Value = serde_json::from_str(&text)
            .map_err(|e| TestCaseError::fail(format!("{status} not JSON ({e}): {text}")))?;
        prop_assert_eq!(&error["type"], "error", "{}", text);
        prop_assert!(error["error"]["message"].is_string(), "{}", text);
        prop_assert_eq!(&error["error"]["type"], "invalid_request_error", "{}", text);
        return Ok(());
    }
    ANSWERED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if streamed {
        prop_assert!(
            text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
            "{shown}: {text}"
        );
    } else {
        let answer: Value = serde_json::from_str(&text)
            .map_err(|e| TestCaseError::fail(format!("answer not JSON ({e}): {text}")))?;
        if !count_tokens {
            prop_assert_eq!(&answer["type"], "message", "{}", text);
        }
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
    fuzz::run(&case(), &ANSWERED, |(count_tokens, body)| {
        runtime.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(30),
                check(&gw, &client, count_tokens, body),
            )
            .await
            .map_err(|_| TestCaseError::fail("the gateway did not answer within 30 s"))?
        })
    });
}
