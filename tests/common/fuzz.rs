//! What the fuzz targets (`tests/fuzz_*.rs`) share: arbitrary JSON, "mostly right,
//! sometimes junk" values, and the runner (a fixed set of cases in CI, new random
//! ones for a long run asked for with `PROPTEST_CASES`, and a check that enough
//! cases got through to the code under test).

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Uri};
use axum::response::Response;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{json, Value};

use super::TestGateway;

/// Cases per run when `PROPTEST_CASES` is not set.
const DEFAULT_CASES: u32 = 192;

/// Any JSON value, a few levels deep; strings are often one of `words` (the ones
/// the parsers under test look for), keys look like field names.
pub fn arb_json(words: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let word = prop::sample::select(words).prop_map(str::to_owned);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        prop_oneof![word, "\\PC{0,12}"].prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-zA-Z_$]{1,10}", inner), 0..4)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// `good` `good_weight` times in `good_weight + 1`, otherwise [`arb_json`].
pub fn sometimes_junk<S: Strategy<Value = Value> + 'static>(
    good: S,
    good_weight: u32,
    words: &'static [&'static str],
) -> BoxedStrategy<Value> {
    prop_oneof![good_weight => good, 1 => arb_json(words)].boxed()
}

/// Run `check` on the cases of `strategy`: the same cases on every default run,
/// `PROPTEST_CASES` new random ones when set. Panics with the smallest failing case;
/// then asserts that at least a tenth of the cases counted themselves in `passed`
/// (got through to the code under test), so a generator that drifts off cannot
/// pass quietly.
pub fn run<S: Strategy>(
    strategy: &S,
    passed: &AtomicUsize,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let long_run: Option<u32> = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok());
    let cases = long_run.unwrap_or(DEFAULT_CASES);
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = match long_run {
        Some(_) => TestRunner::new(config),
        None => TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha)),
    };
    if let Err(failure) = runner.run(strategy, check) {
        panic!("{failure}");
    }
    let passed = passed.load(Ordering::Relaxed);
    eprintln!("{passed} of {cases} cases got through");
    assert!(
        passed * 10 >= cases as usize,
        "only {passed} of {cases} cases got through: the generator is too far off"
    );
}

// ------------------------------------------------------------ the gateway under test

/// A good answer in the format the path asks for (OpenAI, Anthropic, Gemini),
/// streamed when asked.
async fn answer(uri: Uri, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let stream = request["stream"] == true;
    let path = uri.path();
    let (content_type, text) = if path.ends_with("/chat/completions") {
        if stream {
            let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi", "reasoning_content": "r",
                "tool_calls": [{"index": 0, "id": "t", "function": {"name": "f", "arguments": "{}"}}]},
                "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}});
            (
                "text/event-stream",
                format!("data: {chunk}\n\ndata: [DONE]\n\n"),
            )
        } else {
            ("application/json", super::completion("m", "hi").to_string())
        }
    } else if path.ends_with("/count_tokens") {
        ("application/json", "{\"input_tokens\":3}".to_owned())
    } else if path.ends_with("/v1/messages") {
        if stream {
            let events = [
                json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                    "model": "claude", "content": [], "stop_reason": null, "usage": {"input_tokens": 1, "output_tokens": 1}}}),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}),
                json!({"type": "content_block_stop", "index": 0}),
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}}),
                json!({"type": "message_stop"}),
            ];
            let text = events
                .iter()
                .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
                .collect();
            ("text/event-stream", text)
        } else {
            let message = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
                "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
                "usage": {"input_tokens": 1, "output_tokens": 1}});
            ("application/json", message.to_string())
        }
    } else {
        let answer = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]},
            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1}, "modelVersion": "gemini"});
        if path.contains("streamGenerateContent") {
            ("text/event-stream", format!("data: {answer}\n\n"))
        } else {
            ("application/json", answer.to_string())
        }
    };
    let mut response = Response::new(Body::from(text));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    response
}

/// A gateway with an OpenAI-compatible (`o-*`), an Anthropic (`a-*`), a Gemini
/// (`g-*`) and the mock connection (anything else), key `fuzz-key`; the upstreams
/// are one mock on 127.0.0.1 that answers any request well.
pub async fn start_gateway() -> TestGateway {
    let app = axum::Router::new().fallback(answer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    TestGateway::start(&format!(
        r#"
[connections.openai]
api_type = "open_ai"
api_base = "http://{addr}/v1"
api_key = "sk-fuzz"
[connections.anthropic]
api_type = "anthropic"
api_base = "http://{addr}"
api_key = "sk-ant-fuzz"
[connections.gemini]
api_type = "google"
api_base = "http://{addr}"
api_key = "gemini-fuzz"
[connections.mock]
api_type = "mock"
[routing]
"o-*" = "openai.*"
"a-*" = "anthropic.*"
"g-*" = "gemini.*"
"*" = "mock.*"
[groups.default]
api_keys = ["fuzz-key"]
"#
    ))
    .await
}
