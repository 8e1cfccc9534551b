//! `api_type = "anthropic"` against an in-process mock Anthropic Messages API:
//! the translated request bodies and headers, replayed event sequences (text, tool
//! calls in fragments, argument-less tools, every stop reason, usage and cache
//! tokens, JSON answers), `n` fan-out, and every failure before and during a stream.

mod common;

use std::collections::BTreeMap;

use common::{config_from_toml, sse_chunks, user, TestGateway};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The mock Anthropic upstream: `POST /v1/messages`, behaviour chosen by the model
/// name (a `tuned-` prefix is ignored, so the second connection reaches the same
/// scenarios).
mod mock {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::body::{Body, Bytes};
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use futures_util::StreamExt;
    use serde_json::{json, Value};

    #[derive(Debug, Clone)]
    pub struct Recorded {
        pub headers: HeaderMap,
        pub body: Value,
    }

    #[derive(Default)]
    struct Shared {
        requests: Mutex<Vec<Recorded>>,
        served: AtomicUsize,
        /// TCP connections accepted.
        connections: AtomicUsize,
    }

    pub struct Anthropic {
        pub addr: SocketAddr,
        shared: Arc<Shared>,
    }

    impl Anthropic {
        pub async fn start() -> Anthropic {
            let shared = Arc::new(Shared::default());
            let app = axum::Router::new()
                .route("/v1/messages", post(messages))
                .with_state(shared.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let counted = shared.clone();
            let listener = axum::serve::ListenerExt::tap_io(listener, move |_| {
                counted.connections.fetch_add(1, Ordering::SeqCst);
            });
            tokio::spawn(async move {
                axum::serve(listener, app).await.unwrap();
            });
            Anthropic { addr, shared }
        }

        /// TCP connections the gateway opened to the mock so far.
        pub fn connections(&self) -> usize {
            self.shared.connections.load(Ordering::SeqCst)
        }

        /// The provider root, as `api_base` takes it.
        pub fn base(&self) -> String {
            format!("http://{}", self.addr)
        }

        pub fn requests(&self) -> Vec<Recorded> {
            self.shared.requests.lock().unwrap().clone()
        }

        pub fn last(&self) -> Recorded {
            self.requests().pop().expect("no upstream request")
        }
    }

    /// The upstream's non-empty argument fragments for the first tool of `tools`.
    pub const WEATHER_FRAGMENTS: [&str; 4] = ["{\"city\":", " \"Os", "lo\"", "}"];

    fn message(id: &str, model: &str, content: Value, stop: &str, usage: Value) -> Value {
        json!({"id": id, "type": "message", "role": "assistant", "model": model, "content": content,
               "stop_reason": stop, "stop_sequence": null, "usage": usage})
    }

    fn usage_of(scenario: &str) -> Value {
        if scenario == "cache" {
            json!({"input_tokens": 42, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 1200, "output_tokens": 7})
        } else {
            json!({"input_tokens": 10, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 5})
        }
    }

    /// The content blocks of a scenario, with the argument fragments for streams.
    fn blocks(scenario: &str, k: usize) -> Vec<(Value, Vec<String>)> {
        let text = |t: &str| (json!({"type": "text", "text": t}), vec![t.to_owned()]);
        let tool = |id: &str, name: &str, input: Value, frags: &[&str]| {
            (
                json!({"type": "tool_use", "id": id, "name": name, "input": input}),
                frags.iter().map(|s| s.to_string()).collect(),
            )
        };
        match scenario {
            "tools" => vec![
                text("Checking."),
                tool(
                    "toolu_01A",
                    "get_weather",
                    json!({"city": "Oslo"}),
                    &[
                        "",
                        WEATHER_FRAGMENTS[0],
                        WEATHER_FRAGMENTS[1],
                        WEATHER_FRAGMENTS[2],
                        WEATHER_FRAGMENTS[3],
                    ],
                ),
                tool(
                    "toolu_01B",
                    "get_time",
                    json!({"tz": "UTC"}),
                    &["{\"tz\":\"UTC\"}"],
                ),
            ],
            "noargs" => vec![tool("toolu_01C", "get_time", json!({}), &[])],
            // The whole input in content_block_start, no input_json_delta (some
            // Anthropic-compatible servers).
            "early-input" => vec![tool(
                "toolu_01E",
                "get_weather",
                json!({"city": "Oslo", "days": 2}),
                &[],
            )],
            "json" => vec![tool(
                "toolu_01J",
                "json_tool_call",
                json!({"name": "Ada", "age": 36}),
                &["{\"name\": \"Ada\",", " \"age\": 36}"],
            )],
            "thinking" => vec![
                (
                    json!({"type": "thinking", "thinking": "Let me think.", "signature": "sig"}),
                    vec!["Let me think.".into()],
                ),
                text("42"),
            ],
            // A signed thinking block and a tool call, both unique to the answer.
            "think-tool" => vec![
                (
                    json!({"type": "thinking", "thinking": format!("Think {k}."), "signature": format!("sig-{k}")}),
                    vec!["Think ".into(), format!("{k}.")],
                ),
                (
                    json!({"type": "redacted_thinking", "data": format!("opaque-{k}")}),
                    vec![],
                ),
                tool(
                    &format!("toolu_think_{k}"),
                    "get_weather",
                    json!({"city": "Oslo"}),
                    &["{\"city\": \"Oslo\"}"],
                ),
            ],
            "n" => vec![text(&format!("answer {k}"))],
            _ => vec![(
                json!({"type": "text", "text": "Hello world"}),
                vec!["Hello".into(), " world".into()],
            )],
        }
    }

    fn stop_of(scenario: &str) -> String {
        if let Some(reason) = scenario.strip_prefix("stop-") {
            return reason.to_owned();
        }
        match scenario {
            "tools" | "noargs" | "json" | "early-input" | "think-tool" => "tool_use".into(),
            _ => "end_turn".into(),
        }
    }

    fn anthropic_error(status: u16, kind: &str, message: &str) -> Response {
        let body = json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"});
        (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
    }

    async fn messages(
        State(shared): State<Arc<Shared>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        shared.requests.lock().unwrap().push(Recorded {
            headers,
            body: body.clone(),
        });
        let k = shared.served.fetch_add(1, Ordering::SeqCst);
        let model = body["model"].as_str().unwrap_or("").to_owned();
        let scenario = model.trim_start_matches("tuned-").to_owned();
        match scenario.as_str() {
            "status-400" => {
                return anthropic_error(
                    400,
                    "invalid_request_error",
                    "messages: text content blocks must be non-empty",
                )
            }
            "status-401" => {
                return anthropic_error(401, "authentication_error", "invalid x-api-key")
            }
            "status-403" => return anthropic_error(403, "permission_error", "not allowed"),
            "status-404" => return anthropic_error(404, "not_found_error", "model: status-404"),
            "status-413" => {
                return anthropic_error(
                    413,
                    "request_too_large",
                    "Request exceeds the maximum allowed number of bytes.",
                )
            }
            "status-429" => {
                let mut r = anthropic_error(
                    429,
                    "rate_limit_error",
                    "Number of request tokens has exceeded your per-minute rate limit",
                );
                r.headers_mut().insert("retry-after", "7".parse().unwrap());
                return r;
            }
            "status-500" => return anthropic_error(500, "api_error", "Internal server error"),
            "status-529" => return anthropic_error(529, "overloaded_error", "Overloaded"),
            "slow" => tokio::time::sleep(Duration::from_secs(60)).await,
            // 200 answers that are not a message.
            "ok-not-json" => return (StatusCode::OK, "<html>upstream proxy page</html>").into_response(),
            "ok-no-content" => {
                return axum::Json(json!({"id": "msg_x", "type": "message", "role": "assistant", "model": model, "stop_reason": "end_turn"})).into_response()
            }
            "ok-error-body" => {
                return axum::Json(json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded right now"}})).into_response()
            }
            "ok-error-body-other" => {
                return axum::Json(json!({"type": "error", "error": {"type": "not_found_error", "message": "model: gone"}})).into_response()
            }
            _ => {}
        }
        let id = format!("msg_{scenario}_{k}");
        let resolved = format!("{model}-20250101");
        if !body["stream"].as_bool().unwrap_or(false) {
            let content: Vec<Value> = blocks(&scenario, k).into_iter().map(|(b, _)| b).collect();
            return axum::Json(message(
                &id,
                &resolved,
                Value::Array(content),
                &stop_of(&scenario),
                usage_of(&scenario),
            ))
            .into_response();
        }
        sse(&scenario, &id, &resolved, k)
    }

    fn event(v: Value) -> String {
        format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap())
    }

    fn sse(scenario: &str, id: &str, model: &str, k: usize) -> Response {
        let mut start_usage = usage_of(scenario);
        start_usage["output_tokens"] = json!(1);
        let mut events = vec![event(
            json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": start_usage}}),
        )];
        for (i, (block, pieces)) in blocks(scenario, k).into_iter().enumerate() {
            let mut start = block.clone();
            match block["type"].as_str().unwrap() {
                "text" => start["text"] = json!(""),
                "thinking" => {
                    start["thinking"] = json!("");
                    start["signature"] = json!("");
                }
                "redacted_thinking" => {}
                _ if scenario == "early-input" => {}
                _ => start["input"] = json!({}),
            }
            events.push(event(
                json!({"type": "content_block_start", "index": i, "content_block": start}),
            ));
            if i == 1 {
                events.push(event(json!({"type": "ping"})));
            }
            for piece in pieces {
                let delta = match block["type"].as_str().unwrap() {
                    "text" => json!({"type": "text_delta", "text": piece}),
                    "thinking" => json!({"type": "thinking_delta", "thinking": piece}),
                    _ => json!({"type": "input_json_delta", "partial_json": piece}),
                };
                events.push(event(
                    json!({"type": "content_block_delta", "index": i, "delta": delta}),
                ));
            }
            if block["type"] == "thinking" {
                events.push(event(json!({"type": "content_block_delta", "index": i, "delta": {"type": "signature_delta", "signature": block["signature"]}})));
            }
            events.push(event(json!({"type": "content_block_stop", "index": i})));
        }
        let output = usage_of(scenario)["output_tokens"].clone();
        let tail = vec![
            event(
                json!({"type": "message_delta", "delta": {"stop_reason": stop_of(scenario), "stop_sequence": null}, "usage": {"output_tokens": output}}),
            ),
            event(json!({"type": "message_stop"})),
        ];
        let mut cut = false;
        match scenario {
            // Role, text, then an error event.
            "error-event" => {
                events.truncate(3);
                events.push(event(json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})));
            }
            "cut" => {
                events.truncate(3);
                cut = true;
            }
            "eof" => events.truncate(3),
            _ => events.extend(tail),
        }
        // `n` streams are paced so that two of them interleave.
        let delay = if scenario == "n" {
            Duration::from_millis(15)
        } else {
            Duration::ZERO
        };
        let body = futures_util::stream::iter(events)
            .then(move |text| async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok::<Bytes, std::io::Error>(Bytes::from(text))
            })
            .chain(
                futures_util::stream::iter(cut.then_some(())).then(|()| async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err(std::io::Error::other("cut"))
                }),
            );
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(body))
            .unwrap()
    }
}

use mock::Anthropic;

const KEY: &str = "sk-ant-SECRET-1234";

fn config(upstream: &Anthropic) -> String {
    format!(
        r#"
[connections.claude]
api_type = "anthropic"
api_base = "{base}"
api_key = "{KEY}"
timeout = 5
[connections.claude.http_headers]
anthropic-beta = "test-beta-1"
[connections.tuned]
api_type = "anthropic"
api_base = "{base}/"
api_key = "other-key"
anthropic_version = "2099-01-01"
max_tokens = 1000
timeout = 1
[routing]
"tuned-*" = "tuned.*"
"*" = "claude.*"
[groups.default]
api_keys = ["client-key"]
"#,
        base = upstream.base()
    )
}

async fn setup() -> (Anthropic, TestGateway) {
    let upstream = Anthropic::start().await;
    let gw = TestGateway::start(&config(&upstream)).await;
    (upstream, gw)
}

fn streamed(mut body: Value) -> Value {
    body["stream"] = json!(true);
    body
}

/// POST a streamed request: (status, chunks, ended with [DONE]).
async fn stream(gw: &TestGateway, body: Value) -> (StatusCode, Vec<Value>, bool) {
    let response = gw.chat("client-key", streamed(body)).await;
    let status = response.status();
    let text = response.text().await.unwrap();
    let (chunks, done) = sse_chunks(&text);
    (status, chunks, done)
}

fn content_of(chunks: &[Value], choice: u64) -> String {
    chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .filter(|ch| ch["index"] == choice)
        .filter_map(|ch| ch["delta"]["content"].as_str().map(str::to_owned))
        .collect()
}

fn finish_of(chunks: &[Value], choice: u64) -> Vec<String> {
    chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .filter(|ch| ch["index"] == choice)
        .filter_map(|ch| ch["finish_reason"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn plain_text_request_headers_and_answer() {
    let (upstream, gw) = setup().await;
    let (status, body) = gw
        .chat_json("client-key", user("claude-text", "Hi there"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sent = upstream.last();
    assert_eq!(
        sent.body,
        json!({"model": "claude-text", "max_tokens": 4096,
               "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi there"}]}]})
    );
    assert_eq!(sent.headers["x-api-key"], KEY);
    assert_eq!(sent.headers["anthropic-version"], "2023-06-01");
    assert_eq!(sent.headers["anthropic-beta"], "test-beta-1");
    assert_eq!(sent.headers["content-type"], "application/json");
    assert!(
        sent.headers.get("authorization").is_none(),
        "the client's key never goes upstream"
    );

    assert_eq!(body["id"], "msg_claude-text_0");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(body["model"], "claude-text-20250101");
    assert_eq!(
        body["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": "Hello world"}, "logprobs": null, "finish_reason": "stop"}])
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "prompt_tokens_details": {"cached_tokens": 0}})
    );
}

#[tokio::test]
async fn plain_text_stream() {
    let (upstream, gw) = setup().await;
    let (status, chunks, done) = stream(&gw, user("claude-text", "Hi")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(done);
    assert_eq!(upstream.last().body["stream"], true);
    assert_eq!(upstream.last().headers["accept"], "text/event-stream");
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let contents: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        contents,
        ["", "Hello", " world"],
        "each text delta as it came"
    );
    assert_eq!(finish_of(&chunks, 0), ["stop"]);
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == "msg_claude-text_0"));
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "no usage chunk unless asked"
    );
}

/// A translated stream ends at `message_stop`; the rest of the upstream body (the
/// end of its chunked encoding) is still read, so the next stream reuses the
/// connection instead of opening one per stream.
#[tokio::test]
async fn streams_reuse_the_upstream_connection() {
    let (upstream, gw) = setup().await;
    for _ in 0..3 {
        let (status, chunks, done) = stream(&gw, user("claude-text", "Hi")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(done);
        assert_eq!(finish_of(&chunks, 0), ["stop"]);
    }
    assert_eq!(
        upstream.connections(),
        1,
        "one connection for three streams"
    );
}

#[tokio::test]
async fn connection_keys_version_max_tokens_and_client_limits() {
    let (upstream, gw) = setup().await;
    gw.chat_json("client-key", user("tuned-text", "x")).await;
    let sent = upstream.last();
    assert_eq!(sent.headers["anthropic-version"], "2099-01-01");
    assert_eq!(sent.headers["x-api-key"], "other-key");
    assert!(sent.headers.get("anthropic-beta").is_none());
    assert_eq!(sent.body["max_tokens"], 1000, "the connection's default");

    let mut req = user("tuned-text", "x");
    req["max_tokens"] = json!(77);
    gw.chat_json("client-key", req.clone()).await;
    assert_eq!(upstream.last().body["max_tokens"], 77);
    req["max_completion_tokens"] = json!(88);
    gw.chat_json("client-key", req).await;
    assert_eq!(
        upstream.last().body["max_tokens"],
        88,
        "max_completion_tokens wins"
    );
}

#[tokio::test]
async fn bad_connection_keys_stop_startup_naming_the_key() {
    for (extra, key) in [
        ("max_tokenz = 5", "connections.claude.max_tokenz"),
        ("max_tokens = 0", "connections.claude.max_tokens"),
        (
            "anthropic_version = 5",
            "connections.claude.anthropic_version",
        ),
    ] {
        let text = format!(
            "[connections.claude]\napi_type = \"anthropic\"\n{extra}\n[routing]\n\"*\" = \"claude.*\"\n[groups.default]\napi_keys = [\"k\"]\n"
        );
        let mut config = config_from_toml(&text);
        config.settings.host = "127.0.0.1".into();
        config.settings.port = 0;
        let err = match lm_proxy::server::start(
            config,
            std::sync::Arc::new(lm_proxy::extensions::NativeResolver),
            Default::default(),
        )
        .await
        {
            Ok(_) => panic!("{extra}: startup should fail"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(key), "{extra}: {err}");
    }
}

#[tokio::test]
async fn system_prompts_anywhere_and_same_role_merging() {
    let (upstream, gw) = setup().await;
    let req = json!({"model": "claude-text", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one"},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
        {"role": "user", "content": [{"type": "text", "text": "two"}]},
        {"role": "assistant", "content": "three"},
        {"role": "assistant", "content": [{"type": "text", "text": "four"}]},
        {"role": "user", "content": "five"},
        {"role": "system", "content": "Answer in French."},
    ]});
    let (status, _) = gw.chat_json("client-key", req).await;
    assert_eq!(status, StatusCode::OK);
    let sent = upstream.last().body;
    assert_eq!(
        sent["system"],
        json!([{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use metric units."}, {"type": "text", "text": "Answer in French."}])
    );
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "three"}, {"type": "text", "text": "four"}]},
            {"role": "user", "content": [{"type": "text", "text": "five"}]},
        ])
    );
}

#[tokio::test]
async fn images_from_data_urls_and_https() {
    let (upstream, gw) = setup().await;
    let req = json!({"model": "claude-text", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
    ]}]});
    let (status, _) = gw.chat_json("client-key", req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        upstream.last().body["messages"][0]["content"],
        json!([
            {"type": "text", "text": "Compare"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        ])
    );
    let before = upstream.requests().len();
    let req = json!({"model": "claude-text", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}]}]});
    let (status, body) = gw.chat_json("client-key", req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error"]["param"],
        "messages[0].content[0].image_url.url"
    );
    assert_eq!(
        upstream.requests().len(),
        before,
        "rejected before any upstream call"
    );
}

#[tokio::test]
async fn multi_turn_tool_use_with_two_parallel_calls() {
    let (upstream, gw) = setup().await;
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Current weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time"}},
    ]);
    let req = json!({"model": "tools", "tools": tools, "tool_choice": "auto", "parallel_tool_calls": true,
    "messages": [
        {"role": "user", "content": "Weather in Oslo and the time?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "toolu_01A", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
            {"id": "toolu_01B", "type": "function", "function": {"name": "get_time", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "toolu_01A", "content": "3°C"},
        {"role": "tool", "tool_call_id": "toolu_01B", "content": "12:00"},
        {"role": "user", "content": "And again?"},
    ]});
    let (status, body) = gw.chat_json("client-key", req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sent = upstream.last().body;
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo and the time?"}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "toolu_01B", "name": "get_time", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "3°C"},
                {"type": "tool_result", "tool_use_id": "toolu_01B", "content": "12:00"},
                {"type": "text", "text": "And again?"}]},
        ])
    );
    assert_eq!(
        sent["tools"],
        json!([
            {"name": "get_weather", "description": "Current weather",
             "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
            {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
        ])
    );
    assert_eq!(sent["tool_choice"], json!({"type": "auto"}));

    let message = &body["choices"][0]["message"];
    assert_eq!(message["content"], "Checking.");
    assert_eq!(
        message["tool_calls"],
        json!([
            {"id": "toolu_01A", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
            {"id": "toolu_01B", "type": "function", "function": {"name": "get_time", "arguments": "{\"tz\":\"UTC\"}"}},
        ])
    );
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");

    // tool_choice and parallel_tool_calls variants.
    let mut req = user("claude-text", "x");
    req["tools"] = tools.clone();
    for (choice, parallel, expected) in [
        (
            json!("required"),
            json!(false),
            json!({"type": "any", "disable_parallel_tool_use": true}),
        ),
        (json!("none"), json!(false), json!({"type": "none"})),
        (
            json!({"type": "function", "function": {"name": "get_time"}}),
            json!(true),
            json!({"type": "tool", "name": "get_time"}),
        ),
    ] {
        req["tool_choice"] = choice;
        req["parallel_tool_calls"] = parallel;
        gw.chat_json("client-key", req.clone()).await;
        assert_eq!(upstream.last().body["tool_choice"], expected);
    }
}

/// An agent's request (tools, tool calls, their results, one result missing) with
/// nothing to look at it is written from the client's bytes without a tree; what
/// goes upstream is what the tree translation sends, as a gateway with a handler
/// (which takes the tree path) shows, streamed and not.
#[tokio::test]
async fn an_agents_request_written_without_a_tree_is_the_translated_one() {
    let (bare_upstream, bare) = setup().await;
    let handled_upstream = Anthropic::start().await;
    let handled = TestGateway::start(&format!(
        "{}\n[[before]]\nclass = \"lm_proxy.handlers.RateLimiter\"\nmax_requests = 100\nwindow_seconds = 60\nper = \"api_key\"\n",
        config(&handled_upstream)
    ))
    .await;
    let body = json!({"model": "tools", "max_tokens": 300, "temperature": 1.4,
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                "parameters": {"properties": {"city": {"type": "string"}}, "required": ["city"]}, "strict": true},
             "cache_control": {"type": "ephemeral"}},
            {"type": "function", "function": {"name": "get_time", "description": ""}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": false,
        "messages": [
            {"role": "system", "content": "You are an agent."},
            {"role": "user", "content": "Weather in Oslo and the time?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call:01A", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}},
                {"id": "call_01B", "type": "function", "function": {"name": "get_time", "arguments": ""}}]},
            {"role": "user", "content": "Quickly."},
            {"role": "tool", "tool_call_id": "call:01A", "content": [{"type": "text", "text": "3°C"}]}]});
    for stream in [false, true] {
        let mut body = body.clone();
        body["stream"] = json!(stream);
        let mut sent = Vec::new();
        for (gw, upstream) in [(&bare, &bare_upstream), (&handled, &handled_upstream)] {
            let (status, answer) = if stream {
                let (status, chunks, _) = self::stream(gw, body.clone()).await;
                (status, json!(chunks.len()))
            } else {
                gw.chat_json("client-key", body.clone()).await
            };
            assert_eq!(status, StatusCode::OK, "{answer}");
            sent.push(upstream.last().body);
        }
        assert_eq!(sent[0].to_string(), sent[1].to_string());
        assert_eq!(
            sent[0]["messages"][2]["content"],
            json!([
                {"type": "tool_result", "tool_use_id": "call_01A", "content": [{"type": "text", "text": "3°C"}]},
                {"type": "tool_result", "tool_use_id": "call_01B",
                 "content": "No result was provided for this tool call.", "is_error": true},
                {"type": "text", "text": "Quickly."}])
        );
        assert_eq!(
            sent[0]["tool_choice"],
            json!({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true})
        );
        assert_eq!(sent[0]["tools"][0]["input_schema"]["type"], "object");
        assert_eq!(sent[0].get("stream").is_some(), stream);
    }
}

#[tokio::test]
async fn invalid_tool_arguments_are_a_400_before_any_upstream_call() {
    let (upstream, gw) = setup().await;
    let req = json!({"model": "claude-text", "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": "}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "r"},
    ]});
    let (status, body) = gw.chat_json("client-key", req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], "invalid_value");
    assert_eq!(
        body["error"]["param"],
        "messages[1].tool_calls[0].function.arguments"
    );
    assert!(upstream.requests().is_empty());
}

/// Per tool-call index: (id, name, argument fragments after the first delta).
fn tool_deltas(chunks: &[Value]) -> BTreeMap<u64, (String, String, Vec<String>)> {
    let mut calls: BTreeMap<u64, (String, String, Vec<String>)> = BTreeMap::new();
    for chunk in chunks {
        for call in chunk["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let index = call["index"]
                .as_u64()
                .expect("every tool delta has an index");
            let entry = calls.entry(index).or_default();
            if let Some(id) = call["id"].as_str() {
                assert!(entry.0.is_empty(), "id only in the first delta");
                entry.0 = id.into();
                entry.1 = call["function"]["name"].as_str().unwrap().into();
                assert_eq!(call["type"], "function");
                assert_eq!(
                    call["function"]["arguments"], "",
                    "the first delta has empty arguments"
                );
            } else {
                entry
                    .2
                    .push(call["function"]["arguments"].as_str().unwrap().into());
            }
        }
    }
    calls
}

#[tokio::test]
async fn streamed_tool_call_fragments_are_forwarded_one_to_one() {
    let (_upstream, gw) = setup().await;
    let (status, chunks, done) = stream(&gw, user("tools", "weather?")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(done);
    assert_eq!(content_of(&chunks, 0), "Checking.");
    let calls = tool_deltas(&chunks);
    assert_eq!(calls.len(), 2);
    let (id, name, fragments) = &calls[&0];
    assert_eq!((id.as_str(), name.as_str()), ("toolu_01A", "get_weather"));
    assert_eq!(
        fragments,
        &mock::WEATHER_FRAGMENTS,
        "each non-empty fragment, unbuffered"
    );
    let joined: String = fragments.concat();
    assert_eq!(
        serde_json::from_str::<Value>(&joined).unwrap(),
        json!({"city": "Oslo"})
    );
    let (id, name, fragments) = &calls[&1];
    assert_eq!((id.as_str(), name.as_str()), ("toolu_01B", "get_time"));
    assert_eq!(fragments.concat(), "{\"tz\":\"UTC\"}");
    assert_eq!(finish_of(&chunks, 0), ["tool_calls"]);
}

#[tokio::test]
async fn tools_without_arguments_get_empty_object_text() {
    let (_upstream, gw) = setup().await;
    let (_, body) = gw.chat_json("client-key", user("noargs", "time?")).await;
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        "{}"
    );
    assert_eq!(body["choices"][0]["message"]["content"], Value::Null);
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");

    let (_, chunks, done) = stream(&gw, user("noargs", "time?")).await;
    assert!(done);
    let calls = tool_deltas(&chunks);
    assert_eq!(calls[&0].0, "toolu_01C");
    assert_eq!(calls[&0].2, ["{}"]);
    assert_eq!(finish_of(&chunks, 0), ["tool_calls"]);
}

#[tokio::test]
async fn every_stop_reason_maps_to_a_finish_reason() {
    let (_upstream, gw) = setup().await;
    for (reason, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "stop"), // no tool call in the answer: nothing for the client to run
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("something_new", "stop"),
    ] {
        let model = format!("stop-{reason}");
        let (_, body) = gw.chat_json("client-key", user(&model, "x")).await;
        assert_eq!(body["choices"][0]["finish_reason"], finish, "{reason}");
        let (_, chunks, done) = stream(&gw, user(&model, "x")).await;
        assert!(done);
        assert_eq!(finish_of(&chunks, 0), [finish], "{reason} streamed");
    }
}

#[tokio::test]
async fn usage_chunk_only_when_asked_and_cache_tokens() {
    let (_upstream, gw) = setup().await;
    let mut req = user("cache", "x");
    let (_, body) = gw.chat_json("client-key", req.clone()).await;
    let expected = json!({"prompt_tokens": 1342, "completion_tokens": 7, "total_tokens": 1349,
        "prompt_tokens_details": {"cached_tokens": 1200, "cache_write_tokens": 100}});
    assert_eq!(body["usage"], expected);

    req["stream_options"] = json!({"include_usage": true});
    let (_, chunks, done) = stream(&gw, req.clone()).await;
    assert!(done);
    let usage_chunks: Vec<&Value> = chunks.iter().filter(|c| c.get("usage").is_some()).collect();
    assert_eq!(usage_chunks.len(), 1);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], expected);
    assert_eq!(last["id"], chunks[0]["id"]);

    req["stream_options"] = json!({"include_usage": false});
    let (_, chunks, _) = stream(&gw, req.clone()).await;
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(finish_of(&chunks, 0), ["stop"]);

    // Without metrics only the client wants the usage: its request, written
    // straight from its bytes, still brings the usage chunk.
    let (upstream, _) = setup().await;
    let bare = TestGateway::start(&format!(
        "[metrics]\nenabled = false\n{}",
        config(&upstream)
    ))
    .await;
    req["stream_options"] = json!({"include_usage": true});
    let (_, chunks, done) = stream(&bare, req).await;
    assert!(done);
    assert_eq!(chunks.last().unwrap()["usage"], expected);
}

#[tokio::test]
async fn thinking_is_surfaced_as_reasoning_content() {
    let (_upstream, gw) = setup().await;
    let (_, body) = gw.chat_json("client-key", user("thinking", "x")).await;
    assert_eq!(
        body["choices"][0]["message"]["reasoning_content"],
        "Let me think."
    );
    assert_eq!(body["choices"][0]["message"]["content"], "42");
    let (_, chunks, _) = stream(&gw, user("thinking", "x")).await;
    let reasoning: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str())
        .collect();
    assert_eq!(reasoning, "Let me think.");
    assert_eq!(content_of(&chunks, 0), "42");
}

/// The second turn of a tool loop, as an OpenAI client sends it: the assistant
/// turn with only its content and tool calls.
fn second_turn(tool_call_id: &str, assistant_extra: Value) -> Value {
    let mut assistant = json!({"role": "assistant", "content": null, "tool_calls": [
        {"id": tool_call_id, "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]});
    for (k, v) in assistant_extra.as_object().unwrap() {
        assistant[k] = v.clone();
    }
    json!({"model": "think-tool", "reasoning_effort": "low", "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        assistant,
        {"role": "tool", "tool_call_id": tool_call_id, "content": "3°C"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]})
}

#[tokio::test]
async fn signed_thinking_survives_a_tool_loop_on_the_chat_door() {
    let (upstream, gw) = setup().await;
    let first = json!({"model": "think-tool", "reasoning_effort": "low",
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]});

    // Non-streamed: the answer shows the reasoning and carries the signed blocks.
    let (status, body) = gw.chat_json("client-key", first.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        upstream.last().body["thinking"],
        json!({"type": "enabled", "budget_tokens": 2048})
    );
    let message = &body["choices"][0]["message"];
    assert_eq!(message["reasoning_content"], "Think 0.");
    let signed = json!([{"type": "thinking", "thinking": "Think 0.", "signature": "sig-0"},
                        {"type": "redacted_thinking", "data": "opaque-0"}]);
    assert_eq!(message["thinking_blocks"], signed);
    let id = message["tool_calls"][0]["id"].as_str().unwrap().to_owned();
    // The client sends back only content and tool calls: restored from the store.
    let (status, _) = gw
        .chat_json("client-key", second_turn(&id, json!({})))
        .await;
    assert_eq!(status, StatusCode::OK);
    let sent = upstream.last().body;
    assert_eq!(sent["messages"][1]["content"][0], signed[0]);
    assert_eq!(sent["messages"][1]["content"][1], signed[1]);
    assert_eq!(sent["messages"][1]["content"][2]["type"], "tool_use");
    assert_eq!(sent["thinking"]["budget_tokens"], 2048);

    // Streamed: reasoning deltas, and the blocks kept when the stream ends.
    let (status, chunks, done) = stream(&gw, first).await;
    assert!(status == StatusCode::OK && done);
    let reasoning: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str())
        .collect();
    assert_eq!(reasoning, "Think 2.");
    let id = tool_deltas(&chunks)[&0].0.clone();
    assert_eq!(id, "toolu_think_2");
    // This time the client keeps the reasoning text but no tool-call id matches
    // (a client that renamed its ids): found by the reasoning text.
    let (status, _) = gw
        .chat_json(
            "client-key",
            second_turn("call_renamed", json!({"reasoning_content": "Think 2."})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let sent = upstream.last().body;
    assert_eq!(
        sent["messages"][1]["content"][0],
        json!({"type": "thinking", "thinking": "Think 2.", "signature": "sig-2"})
    );
    assert_eq!(
        sent["messages"][1]["content"][1],
        json!({"type": "redacted_thinking", "data": "opaque-2"})
    );

    // An unknown turn: no thinking block invented, and thinking left out so that
    // Anthropic does not refuse the loop.
    let (status, _) = gw
        .chat_json("client-key", second_turn("call_unknown", json!({})))
        .await;
    assert_eq!(status, StatusCode::OK);
    let sent = upstream.last().body;
    assert_eq!(sent["messages"][1]["content"][0]["type"], "tool_use");
    assert!(sent.get("thinking").is_none());
}

#[tokio::test]
async fn n_two_non_streamed_fans_out_and_merges() {
    let (upstream, gw) = setup().await;
    let mut req = user("n", "x");
    req["n"] = json!(2);
    let (status, body) = gw.chat_json("client-key", req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(upstream.requests().len(), 2);
    assert!(upstream
        .requests()
        .iter()
        .all(|r| r.body.get("n").is_none()));
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[1]["index"], 1);
    let mut texts: Vec<&str> = choices
        .iter()
        .map(|c| c["message"]["content"].as_str().unwrap())
        .collect();
    texts.sort();
    assert_eq!(texts, ["answer 0", "answer 1"]);
    assert_eq!(
        body["usage"]["prompt_tokens"], 20,
        "the honest bill: every call's prompt"
    );
    assert_eq!(body["usage"]["completion_tokens"], 10);
    assert_eq!(body["usage"]["total_tokens"], 30);

    let mut req = user("n", "x");
    req["n"] = json!(9);
    let (status, body) = gw.chat_json("client-key", req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "n");
    assert_eq!(body["error"]["code"], "invalid_value");
    assert_eq!(
        upstream.requests().len(),
        2,
        "no upstream call for a rejected n"
    );
}

#[tokio::test]
async fn n_two_streamed_interleaves_with_one_usage_chunk_and_one_done() {
    let (upstream, gw) = setup().await;
    let mut req = user("n", "x");
    req["n"] = json!(2);
    req["stream_options"] = json!({"include_usage": true});
    let response = gw.chat("client-key", streamed(req)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert_eq!(text.matches("[DONE]").count(), 1);
    let (chunks, done) = sse_chunks(&text);
    assert!(done);
    assert_eq!(upstream.requests().len(), 2);

    let id = &chunks[0]["id"];
    let created = &chunks[0]["created"];
    assert!(
        chunks
            .iter()
            .all(|c| &c["id"] == id && &c["created"] == created),
        "one id and created"
    );
    let indexes: Vec<u64> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).map(|ch| ch["index"].as_u64().unwrap()))
        .collect();
    let switches = indexes.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(switches >= 2, "the two choices interleave: {indexes:?}");
    for i in 0..2 {
        let first = chunks
            .iter()
            .find(|c| c["choices"].get(0).is_some_and(|ch| ch["index"] == i))
            .unwrap();
        assert_eq!(
            first["choices"][0]["delta"]["role"], "assistant",
            "choice {i} starts with its role"
        );
        assert_eq!(finish_of(&chunks, i), ["stop"]);
    }
    let mut texts = vec![content_of(&chunks, 0), content_of(&chunks, 1)];
    texts.sort();
    assert_eq!(texts, ["answer 0", "answer 1"]);
    let usage: Vec<&Value> = chunks.iter().filter(|c| c.get("usage").is_some()).collect();
    assert_eq!(usage.len(), 1);
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
    assert_eq!(usage[0]["usage"]["total_tokens"], 30);
}

#[tokio::test]
async fn upstream_errors_keep_status_and_message() {
    let (_upstream, gw) = setup().await;
    for (model, status, message, kind) in [
        (
            "status-400",
            400,
            "messages: text content blocks must be non-empty",
            "invalid_request_error",
        ),
        (
            "status-401",
            401,
            "invalid x-api-key",
            "authentication_error",
        ),
        ("status-403", 403, "not allowed", "permission_error"),
        ("status-404", 404, "model: status-404", "not_found_error"),
        (
            "status-413",
            413,
            "Request exceeds the maximum allowed number of bytes.",
            "request_too_large",
        ),
        (
            "status-429",
            429,
            "Number of request tokens has exceeded your per-minute rate limit",
            "rate_limit_error",
        ),
        ("status-529", 503, "Overloaded", "server_error"),
    ] {
        for stream_it in [false, true] {
            let mut req = user(model, "x");
            if stream_it {
                req = streamed(req);
            }
            let response = gw.chat("client-key", req).await;
            assert_eq!(
                response.status().as_u16(),
                status,
                "{model} stream={stream_it}"
            );
            if model == "status-429" {
                assert_eq!(response.headers()["retry-after"], "7");
            }
            let text = response.text().await.unwrap();
            assert!(!text.contains("SECRET"), "the upstream key never leaks");
            let body: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(body["error"]["message"], message, "{model}");
            assert_eq!(body["error"]["type"], kind, "{model}");
        }
    }
    let (_, body) = gw.chat_json("client-key", user("status-529", "x")).await;
    assert_eq!(body["error"]["code"], "overloaded");

    let (status, body) = gw.chat_json("client-key", user("status-500", "x")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["error"]["code"], "upstream_error");
}

#[tokio::test]
async fn failures_mid_stream_become_an_error_chunk_then_done() {
    let (_upstream, gw) = setup().await;
    for (model, message) in [
        ("error-event", "Overloaded"),
        ("cut", "Error processing upstream provider response"),
        ("eof", "Error processing upstream provider response"),
    ] {
        let (status, chunks, done) = stream(&gw, user(model, "x")).await;
        assert_eq!(status, StatusCode::OK, "{model}");
        assert!(done, "{model}: [DONE] after the error chunk");
        assert_eq!(
            content_of(&chunks, 0),
            "Hello",
            "{model}: what came before is delivered"
        );
        let last = chunks.last().unwrap();
        assert_eq!(last["error"]["message"], message, "{model}");
        assert_eq!(last["choices"][0]["finish_reason"], "error");
        assert_eq!(last["id"], chunks[0]["id"]);
        assert_eq!(
            finish_of(&chunks, 0),
            ["error"],
            "{model}: no fake finish before the error"
        );
    }
    let (_, chunks, _) = stream(&gw, user("error-event", "x")).await;
    assert_eq!(chunks.last().unwrap()["error"]["code"], "overloaded");
}

#[tokio::test]
async fn response_format_json_schema_comes_back_as_content() {
    let (upstream, gw) = setup().await;
    let schema = json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"]});
    let mut req = user("json", "Who?");
    req["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": true}});
    let (status, body) = gw.chat_json("client-key", req.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sent = upstream.last().body;
    assert_eq!(sent["tools"][0]["name"], "json_tool_call");
    assert_eq!(sent["tools"][0]["input_schema"], schema);
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": "json_tool_call"})
    );
    let message = &body["choices"][0]["message"];
    assert!(message.get("tool_calls").is_none());
    assert_eq!(
        serde_json::from_str::<Value>(message["content"].as_str().unwrap()).unwrap(),
        json!({"name": "Ada", "age": 36})
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");

    let (_, chunks, done) = stream(&gw, req).await;
    assert!(done);
    assert!(chunks
        .iter()
        .all(|c| c["choices"][0]["delta"].get("tool_calls").is_none()));
    assert_eq!(
        serde_json::from_str::<Value>(&content_of(&chunks, 0)).unwrap(),
        json!({"name": "Ada", "age": 36})
    );
    assert_eq!(finish_of(&chunks, 0), ["stop"]);
}

#[tokio::test]
async fn stop_sampling_user_and_dropped_fields() {
    let (upstream, gw) = setup().await;
    let mut req = user("claude-text", "x");
    req["stop"] = json!(["END", " ", "\n\n"]);
    req["temperature"] = json!(1.8);
    req["top_p"] = json!(0.9);
    req["user"] = json!("user-7");
    req["seed"] = json!(3);
    req["logit_bias"] = json!({"50256": -100});
    req["presence_penalty"] = json!(0.5);
    req["frequency_penalty"] = json!(0.5);
    req["logprobs"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let (status, _) = gw.chat_json("client-key", req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        upstream.last().body,
        json!({"model": "claude-text", "max_tokens": 4096,
               "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
               "stop_sequences": ["END"], "temperature": 1.0, "metadata": {"user_id": "user-7"}})
    );
    let mut req = user("claude-text", "x");
    req["stop"] = json!("###");
    req["top_p"] = json!(0.9);
    gw.chat_json("client-key", req).await;
    let sent = upstream.last().body;
    assert_eq!(sent["stop_sequences"], json!(["###"]));
    assert_eq!(sent["top_p"], 0.9);
}

#[tokio::test]
async fn timeout_applies_to_anthropic_calls() {
    let (_upstream, gw) = setup().await;
    let started = std::time::Instant::now();
    let (status, body) = gw.chat_json("client-key", user("tuned-slow", "x")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body["error"]["code"], "upstream_timeout");
    // The mock answers after 60 s; the connection's 1 s timeout cut it short.
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

/// 200 answers that are not an Anthropic message: each is an upstream failure with
/// its own status and code, never a 200 with an empty or made-up completion.
#[tokio::test]
async fn ok_answers_that_are_not_a_message_are_upstream_errors() {
    let (_upstream, gw) = setup().await;
    for (model, status, code, message) in [
        ("ok-not-json", 502, json!("upstream_error"), None),
        ("ok-no-content", 502, json!("upstream_error"), None),
        (
            "ok-error-body",
            503,
            json!("overloaded"),
            Some("Overloaded right now"),
        ),
        (
            "ok-error-body-other",
            502,
            json!("model_not_found"),
            Some("model: gone"),
        ),
    ] {
        let (got, body) = gw.chat_json("client-key", user(model, "x")).await;
        assert_eq!(got.as_u16(), status, "{model}: {body}");
        assert_eq!(body["error"]["code"], code, "{model}: {body}");
        if let Some(message) = message {
            assert_eq!(body["error"]["message"], message, "{model}: {body}");
        }
        assert!(body.get("choices").is_none(), "{model}: {body}");
    }
}

#[tokio::test]
async fn tool_input_given_whole_at_the_block_start_is_streamed_as_its_arguments() {
    let (_upstream, gw) = setup().await;
    let (status, chunks, done) = stream(&gw, user("early-input", "weather?")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(done);
    let calls = tool_deltas(&chunks);
    assert_eq!(calls.len(), 1, "{chunks:?}");
    let (id, name, fragments) = &calls[&0];
    assert_eq!((id.as_str(), name.as_str()), ("toolu_01E", "get_weather"));
    assert_eq!(
        serde_json::from_str::<Value>(&fragments.concat()).unwrap(),
        json!({"city": "Oslo", "days": 2}),
        "{fragments:?}"
    );
    assert_eq!(finish_of(&chunks, 0), ["tool_calls"]);
}
