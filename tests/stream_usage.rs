//! Streams bring usage to loggers and metrics whether or not the client asked for
//! it (issue 19, point 2): the gateway asks OpenAI-compatible upstreams for it
//! (`stream_options.include_usage`), and a client that did not ask sees neither the
//! usage-only chunk nor the `usage` members the upstream added to other chunks. A
//! connection can turn the request off (`stream_usage = false`), and a 400 from a
//! server that rejects `stream_options` says what was added and how to stop it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{json, Value};

use common::{sse_chunks, user, TestGateway};

/// An upstream that streams as OpenAI does: asked for usage, every chunk carries
/// `"usage":null` and a usage-only chunk (`choices: []`) comes last. Model `strict`
/// refuses any request with `stream_options`, as some OpenAI-compatible servers do.
struct OpenAiLike {
    base: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl OpenAiLike {
    async fn start() -> OpenAiLike {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(answer))
            .with_state(bodies.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        OpenAiLike {
            base: format!("http://{addr}/v1"),
            bodies,
        }
    }

    fn last_body(&self) -> Value {
        self.bodies
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

async fn answer(State(bodies): State<Arc<Mutex<Vec<Value>>>>, body: Bytes) -> Response {
    // A member written twice would be read once here (the last): refused instead.
    let text = String::from_utf8_lossy(&body).into_owned();
    if text.matches("\"stream_options\"").count() > 1 {
        return (
            StatusCode::BAD_REQUEST,
            format!("stream_options twice: {text}"),
        )
            .into_response();
    }
    let body: Value = serde_json::from_slice(&body).unwrap();
    bodies.lock().unwrap().push(body.clone());
    let model = body["model"].as_str().unwrap_or_default();
    if model == "strict" && body.get("stream_options").is_some() {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"message": "Unrecognized request argument supplied: stream_options", "type": "invalid_request_error"}})),
        )
            .into_response();
    }
    if model == "context-too-long" {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"message": "This model's maximum context length is 10 tokens", "type": "invalid_request_error"}})),
        )
            .into_response();
    }
    let usage = body["stream_options"]["include_usage"] == true;
    let mut events = String::new();
    for (delta, finish) in [
        (
            json!({"role": "assistant", "content": "Hello"}),
            Value::Null,
        ),
        (json!({"content": " world"}), Value::Null),
        (json!({}), json!("stop")),
    ] {
        // Written by hand, as OpenAI orders them: `usage` last.
        let mut chunk = format!(
            r#"{{"id":"chatcmpl-u","object":"chat.completion.chunk","created":1700000000,"model":"{model}","choices":[{{"index":0,"delta":{delta},"finish_reason":{finish}}}]"#
        );
        if usage {
            chunk.push_str(r#","usage":null"#);
        }
        chunk.push('}');
        events.push_str(&format!("data: {chunk}\n\n"));
    }
    if usage {
        events.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-u\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"{model}\",\"choices\":[],\"usage\":{{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}}}\n\n"
        ));
    }
    events.push_str("data: [DONE]\n\n");
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from(events))
        .unwrap()
}

fn config(base: &str, log: &std::path::Path, extra: &str) -> String {
    format!(
        r#"
[connections.up]
api_type = "open_ai"
api_base = "{base}"
{extra}
[connections.mock]
api_type = "mock"
[routing]
"mock-*" = "mock.*"
"*" = "up.*"
[groups.default]
api_keys = ["k"]
[[loggers]]
class = "lm_proxy.loggers.BaseLogger"
[loggers.log_writer]
class = "lm_proxy.loggers.log_writers.JsonLogWriter"
file_name = {log:?}
[loggers.entry_transformer]
class = "lm_proxy.loggers.LogEntryTransformer"
prompt_tokens = "response.usage.prompt_tokens"
completion_tokens = "response.usage.completion_tokens"
answer = "response.choices.0.message.content"
"#,
        log = log.to_str().unwrap()
    )
}

fn streamed(model: &str, options: Option<Value>) -> Value {
    let mut body = user(model, "hi");
    body["stream"] = json!(true);
    if let Some(options) = options {
        body["stream_options"] = options;
    }
    body
}

/// The client's chunks (checked to end with `[DONE]`) and the raw SSE text.
async fn stream(gw: &TestGateway, body: Value) -> (Vec<Value>, String) {
    let response = gw.chat("k", body).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let (chunks, done) = sse_chunks(&text);
    assert!(done, "{text}");
    (chunks, text)
}

fn text_of(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

async fn log_lines(gw: TestGateway, path: &std::path::Path) -> Vec<Value> {
    gw.server.shutdown(Duration::from_secs(5));
    gw.server.wait().await.unwrap();
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn streams_bring_usage_to_loggers_and_clients_see_only_what_they_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.log");
    let upstream = OpenAiLike::start().await;
    let gw = TestGateway::start(&config(&upstream.base, &log, "")).await;

    // Not asked: the gateway asks the upstream, and the client sees no usage at all.
    let (chunks, text) = stream(&gw, streamed("gpt", None)).await;
    assert_eq!(
        upstream.last_body()["stream_options"],
        json!({"include_usage": true})
    );
    assert_eq!(text_of(&chunks), "Hello world");
    assert_eq!(chunks.len(), 3, "no usage-only chunk: {text}");
    assert!(!text.contains("usage"), "no usage members: {text}");

    // Asked: exactly what the upstream sent (usage members and the usage chunk).
    let (chunks, text) = stream(&gw, streamed("gpt", Some(json!({"include_usage": true})))).await;
    assert_eq!(chunks.len(), 4, "{text}");
    assert!(chunks[..3]
        .iter()
        .all(|c| c["usage"].is_null() && c.as_object().unwrap().contains_key("usage")));
    assert_eq!(chunks[3]["usage"]["completion_tokens"], 2);

    // Asked not to: other stream options are kept, usage is asked for and hidden.
    let options = json!({"include_usage": false, "vendor_option": 1});
    let (chunks, text) = stream(&gw, streamed("gpt", Some(options))).await;
    assert_eq!(
        upstream.last_body()["stream_options"],
        json!({"include_usage": true, "vendor_option": 1})
    );
    assert_eq!(chunks.len(), 3);
    assert!(!text.contains("usage"), "{text}");

    // A translated connection (the built-in mock) too.
    let (chunks, text) = stream(&gw, streamed("mock-echo", None)).await;
    assert!(!chunks.is_empty());
    assert!(!text.contains("usage"), "{text}");

    // Non-streamed requests get no `stream_options`.
    let (status, _) = gw.chat_json("k", user("gpt-plain", "x")).await;
    assert_eq!(status, 200);
    assert!(upstream.last_body().get("stream_options").is_none());

    let lines = log_lines(gw, &log).await;
    assert_eq!(lines.len(), 5, "{lines:#?}");
    for line in &lines[..3] {
        assert_eq!(line["answer"], "Hello world");
        assert_eq!(line["prompt_tokens"], 7, "{line}");
        assert_eq!(line["completion_tokens"], 2, "{line}");
    }
    assert!(
        lines[3]["completion_tokens"].as_u64().is_some(),
        "{}",
        lines[3]
    );
}

#[tokio::test]
async fn stream_usage_can_be_turned_off_and_a_refusal_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.log");
    let upstream = OpenAiLike::start().await;

    // The default: a server that rejects `stream_options` answers 400, explained.
    let gw = TestGateway::start(&config(&upstream.base, &log, "")).await;
    let response = gw.chat("k", streamed("strict", None)).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Unrecognized request argument"),
        "{message}"
    );
    assert!(message.contains("stream_usage = false"), "{message}");
    assert!(message.contains("'up'"), "{message}");
    // Other 400s are left as the upstream worded them.
    let response = gw.chat("k", streamed("context-too-long", None)).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert_eq!(message, "This model's maximum context length is 10 tokens");
    gw.server.shutdown(Duration::from_secs(5));
    gw.server.wait().await.unwrap();

    // Turned off: nothing is added, the stream works, the client still sees no usage.
    let gw = TestGateway::start(&config(&upstream.base, &log, "stream_usage = false")).await;
    let (chunks, _) = stream(&gw, streamed("strict", None)).await;
    assert!(upstream.last_body().get("stream_options").is_none());
    assert_eq!(text_of(&chunks), "Hello world");
    // A client that asks still gets what it asked for.
    let (chunks, _) = stream(&gw, streamed("gpt", Some(json!({"include_usage": true})))).await;
    assert_eq!(chunks.last().unwrap()["usage"]["total_tokens"], 9);
    gw.server.shutdown(Duration::from_secs(5));
    gw.server.wait().await.unwrap();
}

#[test]
fn stream_usage_must_be_a_bool() {
    let text = config(
        "http://127.0.0.1:9/v1",
        std::path::Path::new("x.log"),
        "stream_usage = 1",
    );
    let path = std::path::Path::new("test.toml");
    let tree = lm_proxy::config::parse_text(&text, lm_proxy::config::Format::Toml, path).unwrap();
    let config = lm_proxy::config::Config::from_value(tree, path);
    // Either the config check or building the connection refuses it.
    let refused = match config {
        Err(e) => e.to_string(),
        Ok(config) => {
            let client = lm_proxy::upstream::UpstreamClient::new(Duration::from_secs(1)).unwrap();
            match lm_proxy::providers::build_connections(
                &config,
                &client,
                &lm_proxy::extensions::NativeResolver,
            ) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("stream_usage = 1 was accepted"),
            }
        }
    };
    assert!(refused.contains("connections.up.stream_usage"), "{refused}");
}

/// With neither loggers nor metrics nobody needs a stream's usage: nothing is added
/// to the upstream request (no cost, no risk with strict servers); with metrics only,
/// usage is asked for.
#[tokio::test]
async fn usage_is_asked_for_only_when_loggers_or_metrics_need_it() {
    let upstream = OpenAiLike::start().await;
    // Metrics are on by default.
    for (extra, asked) in [("[metrics]\nenabled = false\n", false), ("", true)] {
        let gw = TestGateway::start(&format!(
            "[connections.up]\napi_type = \"open_ai\"\napi_base = \"{}\"\n[routing]\n\"*\" = \"up.*\"\n[groups.default]\napi_keys = [\"k\"]\n{extra}",
            upstream.base
        ))
        .await;
        let (chunks, text) = stream(&gw, streamed("gpt", None)).await;
        assert_eq!(text_of(&chunks), "Hello world");
        assert!(!text.contains("usage"), "{text}");
        assert_eq!(
            upstream.last_body().get("stream_options").is_some(),
            asked,
            "{extra}"
        );
        // A client that asks for the usage gets it, its `stream_options` sent as
        // written (the request goes on without a tree: no handler, no logger).
        let options = json!({"include_usage": true, "include_obfuscation": false});
        let (chunks, _) = stream(&gw, streamed("gpt", Some(options.clone()))).await;
        assert_eq!(text_of(&chunks), "Hello world");
        assert!(
            chunks.last().unwrap()["usage"]["total_tokens"].is_u64(),
            "{extra}: {chunks:?}"
        );
        assert_eq!(upstream.last_body()["stream_options"], options, "{extra}");
        gw.server.shutdown(Duration::from_secs(5));
        gw.server.wait().await.unwrap();
    }
}
