//! Test support: an in-process OpenAI-compatible mock upstream (axum on 127.0.0.1:0)
//! whose behaviour is chosen by the model name it receives, and helpers that start
//! the real gateway in-process or as the built binary.
#![allow(dead_code)]

pub mod fuzz;
pub mod postgres;
pub mod process;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde_json::{json, Value};

use lm_proxy::config::{parse_text, Config, Format};
use lm_proxy::extensions::NativeResolver;
use lm_proxy::server::RunningServer;

/// One request the mock upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
    /// The body's bytes as they arrived.
    pub bytes: Bytes,
}

#[derive(Default)]
struct UpstreamState {
    requests: Mutex<Vec<Recorded>>,
    /// Streamed answers whose body was dropped before it was fully sent (the
    /// gateway closed the connection).
    aborted_streams: std::sync::atomic::AtomicUsize,
    /// `slow` answers whose request was dropped while the mock waited (the gateway
    /// closed the connection).
    abandoned_waits: std::sync::atomic::AtomicUsize,
}

/// A mock OpenAI-compatible server. Behaviour by the `model` it receives:
/// - `status-400`, `status-401`, `status-429` (Retry-After: 7), `status-500`,
///   `status-503-empty`: that error status;
/// - `slow`: answers after 60 s (longer than any timeout a test sets, so a test
///   bound far below 60 s shows the timeout applied, on any machine);
/// - `not-json`: 200 with a text body;
/// - `tools`: streamed parallel tool calls in fragments (and a second choice's text);
/// - `midstream-fail`: two chunks, then the connection is cut;
/// - `slow-stream`: five chunks 150 ms apart;
/// - `stall-stream`: one chunk, then silence for 60 s;
/// - `no-done`: chunks without `[DONE]`;
/// - `crlf`: SSE framed with CRLF and a keep-alive comment;
/// - `error-event`: one chunk, then an OpenAI `error` event;
/// - `bad-utf8`: a text chunk, then one like it whose text is not UTF-8;
///   `bad-utf8-first`: the first text chunk is not UTF-8;
/// - anything else: a normal answer whose content names the model.
pub struct MockUpstream {
    pub addr: SocketAddr,
    state: Arc<UpstreamState>,
}

impl MockUpstream {
    pub async fn start() -> MockUpstream {
        let state = Arc::new(UpstreamState::default());
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(chat))
            .route(
                "/v1/models",
                get(|| async { axum::Json(json!({"object": "list", "data": []})) }),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        MockUpstream { addr, state }
    }

    /// The `api_base` to configure: `http://127.0.0.1:PORT/v1`.
    pub fn base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// How many streamed answers the gateway abandoned before their end.
    pub fn aborted_streams(&self) -> usize {
        self.state
            .aborted_streams
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many `slow` (non-streamed) requests the gateway abandoned while waiting.
    pub fn abandoned_waits(&self) -> usize {
        self.state
            .abandoned_waits
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn last(&self) -> Recorded {
        self.requests()
            .pop()
            .expect("the upstream received no request")
    }
}

async fn chat(
    State(state): State<Arc<UpstreamState>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    state.requests.lock().unwrap().push(Recorded {
        path: "/v1/chat/completions".into(),
        headers,
        body: body.clone(),
        bytes,
    });
    let model = body["model"].as_str().unwrap_or("").to_owned();
    let stream = body["stream"].as_bool().unwrap_or(false);
    // A careless upstream that echoes the credentials it received.
    let auth = state
        .requests
        .lock()
        .unwrap()
        .last()
        .and_then(|r| {
            r.headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    match model.as_str() {
        "status-400" => error(
            StatusCode::BAD_REQUEST,
            json!({"error": {"message": "This model's maximum context length is 10 tokens", "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}),
        ),
        "status-401" => error(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"message": "Incorrect API key provided: sk-up***", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
        ),
        "status-429" => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": {"message": "Rate limit reached", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}),
            );
            r.headers_mut().insert("retry-after", "7".parse().unwrap());
            r
        }
        "echo-auth-401" => error(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"message": format!("Incorrect API key provided: {auth}"), "type": "invalid_request_error"}}),
        ),
        "echo-auth-500" => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": {"message": format!("crashed while handling {auth}"), "type": "server_error"}}),
        ),
        "echo-auth-stream" => Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from(format!(
                "data: {}\n\ndata: {}\n\n",
                chunk(&model, json!([{"index": 0, "delta": {"role": "assistant", "content": ""}}])),
                json!({"error": {"message": format!("stream failed for {auth}"), "type": "server_error"}})
            )))
            .unwrap(),
        "status-500" => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": {"message": "internal upstream detail", "type": "server_error"}}),
        ),
        "status-503-empty" => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        "slow" => {
            // Dropped with the handler when the gateway closes the connection.
            struct Waiting(Arc<UpstreamState>);
            impl Drop for Waiting {
                fn drop(&mut self) {
                    self.0
                        .abandoned_waits
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
            let waiting = Waiting(state.clone());
            tokio::time::sleep(Duration::from_secs(60)).await;
            std::mem::forget(waiting);
            axum::Json(completion(&model, "late")).into_response()
        }
        "not-json" => (StatusCode::OK, "this is not json").into_response(),
        // Answers whose exact text must reach the client unchanged (odd spacing, key
        // order, a number serde would print differently, an unknown member).
        "verbatim" if !stream => (
            [("content-type", "application/json")],
            VERBATIM_COMPLETION,
        )
            .into_response(),
        "verbatim" => Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from(VERBATIM_STREAM))
            .unwrap(),
        // Ignores `stream: true` and answers with one JSON object.
        "ignores-stream" => axum::Json(completion(&model, "one JSON answer")).into_response(),
        // Streams even when not asked to.
        "always-stream" if !stream => sse_response(&model, &body, state.clone()),
        // A JSON body cut off after a few bytes.
        "cut-short" => Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(futures_util::stream::iter(vec![
                Ok(Bytes::from_static(b"{\"id\": \"chatcmpl-cut\", \"choi")),
                Err(std::io::Error::other("cut")),
            ])))
            .unwrap(),
        // The wrong content type for a chat answer.
        "html" => (
            [("content-type", "text/html")],
            "<html><body>502 Bad Gateway</body></html>",
        )
            .into_response(),
        _ if stream => sse_response(&model, &body, state.clone()),
        _ => {
            axum::Json(completion(&model, &format!("upstream answer from {model}"))).into_response()
        }
    }
}

pub const VERBATIM_COMPLETION: &str = "{ \"model\" : \"verbatim\", \"id\":\"chatcmpl-v\",\"object\":\"chat.completion\",\"created\":1.0e3,\n  \"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"caf\\u00e9\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4},\"vendor_extra\":{\"z\":1,\"a\":2}}";
/// Two chunks written as the upstream would, then one that lacks fields (filled in).
pub const VERBATIM_STREAM: &str = "data: {\"model\":\"verbatim\",\"id\":\"chatcmpl-v\",\"object\":\"chat.completion.chunk\",\"created\":1.0e3,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"caf\\u00e9\"}}]}\n\ndata:  {\"id\":\"chatcmpl-v\",\"object\":\"chat.completion.chunk\",\"created\":1000,\"model\":\"verbatim\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";

fn error(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

pub fn completion(model: &str, content: &str) -> Value {
    json!({
        "id": "chatcmpl-upstream-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "system_fingerprint": "fp_test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    })
}

fn chunk(model: &str, choices: Value) -> Value {
    json!({"id": "chatcmpl-upstream-s", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model, "choices": choices})
}

fn data(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// The SSE events for a streamed request, by model.
fn sse_events(model: &str, body: &Value) -> Vec<(String, Duration)> {
    let now = Duration::ZERO;
    let include_usage = body["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let role = |i: u64| {
        chunk(
            model,
            json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
        )
    };
    let text = |i: u64, t: &str| {
        chunk(
            model,
            json!([{"index": i, "delta": {"content": t}, "finish_reason": null}]),
        )
    };
    let finish = |i: u64, r: &str| {
        chunk(
            model,
            json!([{"index": i, "delta": {}, "finish_reason": r}]),
        )
    };
    let usage = json!({"id": "chatcmpl-upstream-s", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}});
    let mut events: Vec<(String, Duration)> = Vec::new();
    match model {
        "tools" => {
            let tc = |i: u64, delta: Value| {
                chunk(
                    model,
                    json!([{"index": i, "delta": {"tool_calls": [delta]}, "finish_reason": null}]),
                )
            };
            events.push((data(&role(0)), now));
            events.push((data(&role(1)), now));
            events.push((data(&tc(0, json!({"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}))), now));
            events.push((
                data(&tc(
                    0,
                    json!({"index": 0, "function": {"arguments": "{\"city\":"}}),
                )),
                now,
            ));
            events.push((data(&tc(0, json!({"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}}))), now));
            events.push((data(&text(1, "second choice")), now));
            events.push((
                data(&tc(
                    0,
                    json!({"index": 0, "function": {"arguments": "\"Oslo\"}"}}),
                )),
                now,
            ));
            events.push((
                data(&tc(0, json!({"index": 1, "function": {"arguments": "{}"}}))),
                now,
            ));
            events.push((data(&finish(0, "tool_calls")), now));
            events.push((data(&finish(1, "stop")), now));
            if include_usage {
                events.push((data(&usage), now));
            }
            events.push(("data: [DONE]\n\n".into(), now));
        }
        "slow-stream" => {
            events.push((data(&role(0)), now));
            for i in 0..5 {
                events.push((
                    data(&text(0, &format!("part{i} "))),
                    Duration::from_millis(150),
                ));
            }
            events.push((data(&finish(0, "stop")), now));
            events.push(("data: [DONE]\n\n".into(), now));
        }
        "stall-stream" => {
            events.push((data(&role(0)), now));
            events.push((data(&text(0, "before the stall")), Duration::from_secs(60)));
        }
        "no-done" => {
            events.push((data(&role(0)), now));
            events.push((data(&text(0, "no done marker")), now));
            events.push((data(&finish(0, "stop")), now));
        }
        "crlf" => {
            events.push((": keep-alive\r\n\r\n".into(), now));
            events.push((format!("data: {}\r\n\r\n", role(0)), now));
            events.push((format!("data: {}\r\n\r\n", text(0, "crlf works")), now));
            events.push((format!("data: {}\r\n\r\n", finish(0, "stop")), now));
            events.push(("data: [DONE]\r\n\r\n".into(), now));
        }
        // The marker becomes bytes that are not UTF-8 (`sse_response`).
        "bad-utf8" => {
            events.push((data(&role(0)), now));
            events.push((data(&text(0, "Hello")), now));
            events.push((data(&text(0, &format!(" w{BAD_UTF8_MARKER}rld"))), now));
            events.push((data(&finish(0, "stop")), now));
            events.push(("data: [DONE]\n\n".into(), now));
        }
        "bad-utf8-first" => {
            events.push((data(&role(0)), now));
            events.push((data(&text(0, BAD_UTF8_MARKER)), now));
            events.push((data(&finish(0, "stop")), now));
            events.push(("data: [DONE]\n\n".into(), now));
        }
        "error-event" => {
            events.push((data(&role(0)), now));
            events.push((data(&json!({"error": {"message": "upstream overloaded", "type": "server_error", "param": null, "code": "overloaded"}})), now));
        }
        _ => {
            events.push((data(&role(0)), now));
            events.push((data(&text(0, "Hello")), now));
            events.push((data(&text(0, " world")), now));
            events.push((data(&finish(0, "stop")), now));
            if include_usage {
                events.push((data(&usage), now));
            }
            events.push(("data: [DONE]\n\n".into(), now));
        }
    }
    events
}

/// Where `bad-utf8` streams have bytes that are not UTF-8.
const BAD_UTF8_MARKER: &str = "<not UTF-8>";

/// An event's bytes, the marker replaced by a byte that starts a two-byte
/// character followed by one that cannot continue it.
fn event_bytes(text: String) -> Bytes {
    match text.find(BAD_UTF8_MARKER) {
        Some(at) => {
            let mut bytes = text.into_bytes();
            bytes.splice(at..at + BAD_UTF8_MARKER.len(), [0xC3, b'r']);
            Bytes::from(bytes)
        }
        None => Bytes::from(text),
    }
}

/// Counts a streamed body as aborted when it is dropped before its last event.
struct AbortWatch {
    state: Arc<UpstreamState>,
    finished: bool,
}

impl Drop for AbortWatch {
    fn drop(&mut self) {
        if !self.finished {
            self.state
                .aborted_streams
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

fn sse_response(model: &str, body: &Value, state: Arc<UpstreamState>) -> Response {
    let events = sse_events(model, body);
    let fail_at_end = model == "midstream-fail";
    let events = if fail_at_end {
        let mut e = sse_events("default", body);
        e.truncate(2);
        e
    } else {
        events
    };
    let stream = futures_util::stream::iter(events)
        .then(|(text, delay)| async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<Bytes, std::io::Error>(event_bytes(text))
        })
        .chain(
            futures_util::stream::iter(fail_at_end.then_some(())).then(|()| async {
                // Let the first chunks reach the gateway before the connection is cut.
                tokio::time::sleep(Duration::from_millis(200)).await;
                Err(std::io::Error::other("cut"))
            }),
        );
    // Travels with the body: dropped early when the gateway closes the connection.
    let mut watch = AbortWatch {
        state,
        finished: false,
    };
    let stream = stream.chain(futures_util::stream::poll_fn(move |_| {
        // Borrow the whole guard, so that the closure owns it (not a copy of the flag).
        let watch = &mut watch;
        watch.finished = true;
        std::task::Poll::Ready(None)
    }));
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// Parse config text (TOML) as if read from `test.toml`.
pub fn config_from_toml(text: &str) -> Config {
    let path = Path::new("test.toml");
    let tree = parse_text(text, Format::Toml, path).expect("test config parses");
    Config::from_value(tree, path).unwrap_or_else(|e| panic!("test config is valid: {e}"))
}

/// The gateway running in-process on 127.0.0.1 with a free port.
pub struct TestGateway {
    pub server: RunningServer,
    pub client: reqwest::Client,
}

impl TestGateway {
    /// Start from TOML text; `host`/`port` are forced to 127.0.0.1:0.
    pub async fn start(toml_text: &str) -> TestGateway {
        Self::serve(config_from_toml(toml_text)).await
    }

    /// Start from a config file on disk (needed for reloads).
    pub async fn start_file(path: &Path) -> TestGateway {
        Self::serve(Config::load(path).unwrap_or_else(|e| panic!("test config is valid: {e}")))
            .await
    }

    async fn serve(mut config: Config) -> TestGateway {
        config.settings.host = "127.0.0.1".into();
        config.settings.port = 0;
        let server = lm_proxy::server::start(
            config,
            std::sync::Arc::new(NativeResolver),
            Default::default(),
        )
        .await
        .expect("gateway starts");
        TestGateway {
            server,
            client: reqwest::Client::new(),
        }
    }

    /// The `/metrics` page (no token configured).
    pub async fn metrics(&self) -> String {
        let page = self.client.get(self.url("/metrics")).send().await.unwrap();
        page.text().await.unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.server.url(), path)
    }

    /// POST a JSON body to `/v1/chat/completions` with a Bearer key.
    pub async fn chat(&self, key: &str, body: Value) -> reqwest::Response {
        self.post("/v1/chat/completions", key, body).await
    }

    /// POST a JSON body to `path` with a Bearer key.
    pub async fn post(&self, path: &str, key: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// POST and return (status, JSON body).
    pub async fn chat_json(&self, key: &str, body: Value) -> (StatusCode, Value) {
        let response = self.chat(key, body).await;
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        let value = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, value)
    }
}

/// Split an SSE body into its `data:` payloads (`[DONE]` included as a string).
pub fn sse_payloads(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// The JSON chunks of an SSE body, and whether it ended with `[DONE]`.
pub fn sse_chunks(text: &str) -> (Vec<Value>, bool) {
    let payloads = sse_payloads(text);
    let done = payloads.last().map(String::as_str) == Some("[DONE]");
    let chunks = payloads
        .iter()
        .filter(|p| p.as_str() != "[DONE]")
        .map(|p| serde_json::from_str(p).unwrap_or_else(|e| panic!("chunk is JSON ({e}): {p}")))
        .collect();
    (chunks, done)
}

/// A body stream that never errors, for building responses.
pub type Infallibly = Result<Bytes, Infallible>;

/// A request body with one user message.
pub fn user(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// The JSON objects of a JSON-lines file (a `JsonLogWriter`'s log).
pub fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}
