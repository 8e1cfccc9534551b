//! Fuzz target: whatever an upstream answers, the gateway answers its client with a
//! well-formed result, never a 500, a panic, a hang or a broken stream.
//!
//! One mock upstream serves, for each generated case, a status, a content type and a
//! body; the gateway in front of it has an OpenAI-compatible, an Anthropic and a
//! Gemini connection, so every provider's answer parser, stream translator and error
//! mapper reads the same kinds of input:
//! - arbitrary bytes;
//! - arbitrary JSON;
//! - answers in the provider's own shape whose fields are now and then replaced by
//!   arbitrary JSON (so parsing gets deep, not only the first type check);
//! - SSE streams of such events, sometimes cut short or framed oddly.
//!
//! What must hold for the client: a status of 200 or 4xx/5xx other than 500; an
//! error in the OpenAI envelope; a non-streamed 200 with `choices`; a stream whose
//! every event is JSON and whose last is `[DONE]`; all within a bound.
//!
//! Runs `PROPTEST_CASES` cases (default 192) per run, in CI as part of the tests;
//! `PROPTEST_CASES=20000 cargo test --test fuzz_upstream` runs it long.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use common::{fuzz, sse_payloads, TestGateway};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug)]
enum Provider {
    OpenAi,
    Anthropic,
    Gemini,
}

impl Provider {
    fn model(self) -> &'static str {
        match self {
            Provider::OpenAi => "o-model",
            Provider::Anthropic => "a-model",
            Provider::Gemini => "g-model",
        }
    }
}

/// What the mock upstream answers in one case.
#[derive(Clone, Debug)]
struct Canned {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

#[derive(Clone, Debug)]
struct Case {
    provider: Provider,
    /// A chat request (streamed or not), or a model list (`GET /v1/models` with
    /// `expand_wildcards`: every connection asks the upstream for its models).
    request: Request,
    answer: Canned,
}

#[derive(Clone, Copy, Debug)]
enum Request {
    Chat { stream: bool },
    Models,
}

type Slot = Arc<Mutex<Option<Canned>>>;

async fn serve_canned(State(slot): State<Slot>) -> Response {
    let canned = slot.lock().unwrap().clone().expect("a case is set");
    let mut response = Response::new(Body::from(canned.body));
    *response.status_mut() = StatusCode::from_u16(canned.status).unwrap();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static(canned.content_type),
    );
    response.into_response()
}

/// How many cases were answered 200, to show the generated answers get past the
/// first checks into the translators.
static ANSWERED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct Harness {
    gateway: TestGateway,
    slot: Slot,
    client: reqwest::Client,
}

impl Harness {
    async fn start() -> Harness {
        let slot: Slot = Arc::default();
        let app = axum::Router::new()
            .fallback(serve_canned)
            .with_state(slot.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let gateway = TestGateway::start(&format!(
            r#"
model_listing_mode = "expand_wildcards"
model_listing_cache_seconds = 0
[connections.openai]
api_type = "open_ai"
api_base = "http://{addr}/v1"
api_key = "sk-fuzz"
timeout = 5
[connections.anthropic]
api_type = "anthropic"
api_base = "http://{addr}"
api_key = "sk-ant-fuzz"
timeout = 5
[connections.gemini]
api_type = "google"
api_base = "http://{addr}"
api_key = "gemini-fuzz"
timeout = 5
[routing]
"o-*" = "openai.*"
"a-*" = "anthropic.*"
"g-*" = "gemini.*"
[groups.default]
api_keys = ["fuzz-key"]
"#
        ))
        .await;
        Harness {
            gateway,
            slot,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        }
    }

    async fn check(&self, case: Case) -> Result<(), TestCaseError> {
        *self.slot.lock().unwrap() = Some(case.answer.clone());
        let stream = match case.request {
            Request::Chat { stream } => stream,
            Request::Models => return self.check_models().await,
        };
        let request = json!({
            "model": case.provider.model(),
            "messages": [{"role": "user", "content": "hi"}],
            "stream": stream,
        });
        let response = self
            .client
            .post(self.gateway.url("/v1/chat/completions"))
            .bearer_auth("fuzz-key")
            .json(&request)
            .send()
            .await
            .map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = response
            .text()
            .await
            .map_err(|e| TestCaseError::fail(format!("body not read: {e}")))?;
        prop_assert!(
            status == 200 || (400..600).contains(&status) && status != 500,
            "status {status}: {body}"
        );
        if status != 200 {
            let error: Value = serde_json::from_str(&body)
                .map_err(|e| TestCaseError::fail(format!("{status} not JSON ({e}): {body}")))?;
            prop_assert!(error["error"]["message"].is_string(), "{body}");
            prop_assert!(error["error"]["type"].is_string(), "{body}");
            return Ok(());
        }
        ANSWERED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !stream {
            let answer: Value = serde_json::from_str(&body)
                .map_err(|e| TestCaseError::fail(format!("200 not JSON ({e}): {body}")))?;
            prop_assert!(answer["choices"].is_array(), "{body}");
            return Ok(());
        }
        prop_assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        let events = sse_payloads(&body);
        prop_assert_eq!(
            events.last().map(String::as_str),
            Some("[DONE]"),
            "{}",
            body
        );
        for event in &events[..events.len() - 1] {
            let value: Value = serde_json::from_str(event)
                .map_err(|e| TestCaseError::fail(format!("event not JSON ({e}): {event}")))?;
            prop_assert!(
                value["choices"].is_array() || value["error"]["message"].is_string(),
                "{event}"
            );
        }
        Ok(())
    }
}

impl Harness {
    /// Whatever the upstreams list, `/v1/models` answers 200 with a `data` list
    /// (a connection whose list fails keeps its routing pattern).
    async fn check_models(&self) -> Result<(), TestCaseError> {
        let response = self
            .client
            .get(self.gateway.url("/v1/models"))
            .bearer_auth("fuzz-key")
            .send()
            .await
            .map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .map_err(|e| TestCaseError::fail(format!("body not read: {e}")))?;
        prop_assert_eq!(status, 200, "{}", body);
        let list: Value = serde_json::from_str(&body)
            .map_err(|e| TestCaseError::fail(format!("not JSON ({e}): {body}")))?;
        prop_assert!(list["data"].is_array(), "{body}");
        ANSWERED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

fn model_list() -> BoxedStrategy<Value> {
    let id = || or_junk("[a-z0-9./-]{0,16}".prop_map(Value::String));
    prop_oneof![
        prop::collection::vec(
            or_junk(id().prop_map(|id| json!({"id": id, "object": "model"}))),
            0..4
        )
        .prop_map(|data| json!({"object": "list", "data": data})),
        (
            prop::collection::vec(
                or_junk(id().prop_map(|id| json!({"id": id, "type": "model"}))),
                0..4
            ),
            any::<bool>(),
            id()
        )
            .prop_map(
                |(data, more, last)| json!({"data": data, "has_more": more, "last_id": last})
            ),
        (
            prop::collection::vec(
                or_junk(id().prop_map(|name| json!({"name": name,
            "supportedGenerationMethods": ["generateContent"]}))),
                0..4
            ),
            or_junk(Just(json!("next")))
        )
            .prop_map(|(models, token)| json!({"models": models, "nextPageToken": token})),
    ]
    .boxed()
}

// ------------------------------------------------------------------ strategies

/// Strings the parsers under test look for.
const WORDS: &[&str] = &["text", "tool_use", "message_stop", "STOP", "MAX_TOKENS"];

fn arb_json() -> impl Strategy<Value = Value> {
    fuzz::arb_json(WORDS)
}

/// Mostly `good`, sometimes anything.
fn or_junk<S: Strategy<Value = Value> + 'static>(good: S) -> BoxedStrategy<Value> {
    fuzz::sometimes_junk(good, 6, WORDS)
}

fn text() -> BoxedStrategy<Value> {
    or_junk("\\PC{0,16}".prop_map(Value::String))
}

fn count() -> BoxedStrategy<Value> {
    or_junk((0u32..5000).prop_map(|n| json!(n)))
}

fn openai_answer() -> BoxedStrategy<Value> {
    let tool_call = (text(), text(), text()).prop_map(|(id, name, args)| {
        json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
    });
    let message = (text(), prop::collection::vec(or_junk(tool_call), 0..3)).prop_map(
        |(content, calls)| json!({"role": "assistant", "content": content, "tool_calls": calls}),
    );
    let choice = (or_junk(message), text()).prop_map(
        |(message, finish)| json!({"index": 0, "message": message, "finish_reason": finish}),
    );
    (
        prop::collection::vec(or_junk(choice), 0..3),
        count(),
        count(),
    )
        .prop_map(|(choices, p, c)| {
            json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
                   "choices": choices, "usage": {"prompt_tokens": p, "completion_tokens": c}})
        })
        .boxed()
}

fn openai_chunk() -> BoxedStrategy<Value> {
    let delta = (text(), text(), text()).prop_map(|(content, name, args)| {
        json!({"content": content, "tool_calls": [{"index": 0, "id": "c", "function": {"name": name, "arguments": args}}]})
    });
    (or_junk(delta), text(), any::<bool>())
        .prop_map(|(delta, finish, with_error)| {
            let mut chunk = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
            if with_error {
                chunk["error"] = json!({"message": "upstream hiccup", "code": 502});
            }
            chunk
        })
        .boxed()
}

fn anthropic_block() -> BoxedStrategy<Value> {
    or_junk(prop_oneof![
        text().prop_map(|t| json!({"type": "text", "text": t})),
        (text(), text(), arb_json()).prop_map(
            |(id, name, input)| json!({"type": "tool_use", "id": id, "name": name, "input": input})
        ),
        (text(), text())
            .prop_map(|(t, s)| json!({"type": "thinking", "thinking": t, "signature": s})),
        Just(json!({"type": "redacted_thinking", "data": "abc"})),
    ])
}

fn anthropic_answer() -> BoxedStrategy<Value> {
    (
        prop::collection::vec(anthropic_block(), 0..4),
        text(),
        count(),
        count(),
    )
        .prop_map(|(content, stop, input, output)| {
            json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
                   "content": content, "stop_reason": stop,
                   "usage": {"input_tokens": input, "output_tokens": output}})
        })
        .boxed()
}

fn anthropic_event() -> BoxedStrategy<(String, Value)> {
    let index = || or_junk((0u32..3).prop_map(|n| json!(n)));
    prop_oneof![
        anthropic_answer().prop_map(|m| ("message_start".to_owned(), json!({"type": "message_start", "message": m}))),
        (index(), anthropic_block()).prop_map(|(i, b)| (
            "content_block_start".to_owned(),
            json!({"type": "content_block_start", "index": i, "content_block": b})
        )),
        (index(), text(), text()).prop_map(|(i, t, j)| (
            "content_block_delta".to_owned(),
            json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": t, "partial_json": j}})
        )),
        (index(), text()).prop_map(|(i, j)| (
            "content_block_delta".to_owned(),
            json!({"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": j}})
        )),
        (index(), text()).prop_map(|(i, t)| (
            "content_block_delta".to_owned(),
            json!({"type": "content_block_delta", "index": i, "delta": {"type": "thinking_delta", "thinking": t}})
        )),
        index().prop_map(|i| ("content_block_stop".to_owned(), json!({"type": "content_block_stop", "index": i}))),
        (text(), count()).prop_map(|(stop, n)| (
            "message_delta".to_owned(),
            json!({"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": n}})
        )),
        Just(("message_stop".to_owned(), json!({"type": "message_stop"}))),
        Just(("ping".to_owned(), json!({"type": "ping"}))),
        text().prop_map(|m| ("error".to_owned(), json!({"type": "error", "error": {"type": "overloaded_error", "message": m}}))),
        arb_json().prop_map(|v| ("junk".to_owned(), v)),
    ]
    .boxed()
}

fn gemini_answer() -> BoxedStrategy<Value> {
    let part = or_junk(prop_oneof![
        text().prop_map(|t| json!({"text": t})),
        (text(), text())
            .prop_map(|(t, s)| json!({"text": t, "thought": true, "thoughtSignature": s})),
        (text(), arb_json())
            .prop_map(|(name, args)| json!({"functionCall": {"name": name, "args": args}})),
    ]);
    let candidate = (prop::collection::vec(part, 0..3), text(), count())
        .prop_map(|(parts, finish, index)| {
            json!({"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": index})
        });
    (
        prop::collection::vec(or_junk(candidate), 0..3),
        count(),
        count(),
        or_junk(Just(Value::Null)),
    )
        .prop_map(|(candidates, p, c, feedback)| {
            let mut answer = json!({"candidates": candidates,
                "usageMetadata": {"promptTokenCount": p, "candidatesTokenCount": c},
                "modelVersion": "gemini", "responseId": "r1"});
            if !feedback.is_null() {
                answer["promptFeedback"] = feedback;
            }
            answer
        })
        .boxed()
}

/// SSE text of `events` (`event:` lines where given), sometimes cut short.
fn sse(events: Vec<(Option<String>, String)>, done: bool, cut: Option<usize>) -> Vec<u8> {
    let mut text = String::new();
    for (name, data) in events {
        if let Some(name) = name {
            text.push_str(&format!("event: {name}\n"));
        }
        text.push_str(&format!("data: {data}\n\n"));
    }
    if done {
        text.push_str("data: [DONE]\n\n");
    }
    let mut bytes = text.into_bytes();
    if let Some(at) = cut {
        bytes.truncate(at % (bytes.len() + 1));
    }
    bytes
}

fn cut() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![4 => Just(None), 1 => any::<usize>().prop_map(Some)]
}

fn stream_body(provider: Provider) -> BoxedStrategy<Vec<u8>> {
    match provider {
        Provider::OpenAi => (
            prop::collection::vec(openai_chunk(), 0..6),
            any::<bool>(),
            cut(),
        )
            .prop_map(|(chunks, done, cut)| {
                let events = chunks.into_iter().map(|c| (None, c.to_string())).collect();
                sse(events, done, cut)
            })
            .boxed(),
        Provider::Anthropic => (prop::collection::vec(anthropic_event(), 0..8), cut())
            .prop_map(|(events, cut)| {
                let events = events
                    .into_iter()
                    .map(|(name, data)| (Some(name), data.to_string()))
                    .collect();
                sse(events, false, cut)
            })
            .boxed(),
        Provider::Gemini => (prop::collection::vec(gemini_answer(), 0..5), cut())
            .prop_map(|(answers, cut)| {
                let events = answers.into_iter().map(|a| (None, a.to_string())).collect();
                sse(events, false, cut)
            })
            .boxed(),
    }
}

fn answer_body(provider: Provider) -> BoxedStrategy<Vec<u8>> {
    match provider {
        Provider::OpenAi => openai_answer(),
        Provider::Anthropic => anthropic_answer(),
        Provider::Gemini => gemini_answer(),
    }
    .prop_map(|v| v.to_string().into_bytes())
    .boxed()
}

fn case() -> impl Strategy<Value = Case> {
    let provider = prop_oneof![
        Just(Provider::OpenAi),
        Just(Provider::Anthropic),
        Just(Provider::Gemini)
    ];
    let request = prop_oneof![
        4 => any::<bool>().prop_map(|stream| Request::Chat { stream }),
        1 => Just(Request::Models),
    ];
    (provider, request).prop_flat_map(|(provider, request)| {
        let body = prop_oneof![
            3 => stream_body(provider),
            3 => answer_body(provider),
            1 => model_list().prop_map(|v| v.to_string().into_bytes()),
            1 => arb_json().prop_map(|v| v.to_string().into_bytes()),
            1 => prop::collection::vec(any::<u8>(), 0..300),
        ];
        let status = prop_oneof![
            8 => Just(200u16),
            1 => prop::sample::select(vec![400u16, 401, 403, 404, 413, 429, 500, 502, 503, 529]),
        ];
        let content_type =
            prop::sample::select(vec!["application/json", "text/event-stream", "text/plain"]);
        (status, content_type, body).prop_map(move |(status, content_type, body)| Case {
            provider,
            request,
            answer: Canned {
                status,
                content_type,
                body,
            },
        })
    })
}

#[test]
fn any_upstream_answer_gives_the_client_a_well_formed_result() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let harness = runtime.block_on(Harness::start());
    fuzz::run(&case(), &ANSWERED, |case| {
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), harness.check(case))
                .await
                .map_err(|_| TestCaseError::fail("the gateway did not finish within 30 s"))?
        })
    });
}
