//! What one request may make the gateway hold (issue 20, items 9 and 12):
//! upstream answers past `max_response_body_mb` (declared, chunked, SSE gathered
//! into one answer, Anthropic), the loggers' copy of a streamed answer, and a log
//! queue whose writer never finishes (a stuck logger in-process, a JSON log file on
//! a pipe nobody reads in the binary, stopped with SIGTERM).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::process::{write, Proc};
use common::{config_from_toml, sse_chunks, user, Infallibly, TestGateway};
use futures_util::StreamExt;
use serde_json::{json, Value};

use lm_proxy::auth::KeyCheck;
use lm_proxy::config::{Config, ConfigError, ExtensionSpec};
use lm_proxy::extensions::{ExtensionResolver, NativeResolver};
use lm_proxy::handlers::RequestHandler;
use lm_proxy::logging::{LogWriter, Logger};
use lm_proxy::providers::Provider;

/// `max_response_body_mb` in these tests: 52,428 bytes.
const CAP_MB: &str = "0.05";
const CAP_TEXT: &str = "max_response_body_mb (0.05 MiB)";
/// Content of the big answers: about twice the cap.
const BIG: usize = 100_000;

fn completion(content: &str) -> Value {
    json!({
        "id": "chatcmpl-big", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    })
}

fn chunk(content: &str) -> String {
    let chunk = json!({
        "id": "chatcmpl-big", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]
    });
    format!("data: {chunk}\n\n")
}

/// 100 SSE chunks of 1,000 characters, then `[DONE]`.
fn big_sse() -> Body {
    let piece = "s".repeat(1000);
    let events = (0..100)
        .map(move |_| Ok::<_, std::convert::Infallible>(Bytes::from(chunk(&piece))))
        .chain(std::iter::once(Ok(Bytes::from_static(b"data: [DONE]\n\n"))));
    Body::from_stream(futures_util::stream::iter(events))
}

/// An upstream whose answers are chosen by the requested model:
/// - `declared`: `Content-Length` far past the cap, a little of the body, then
///   silence (only a check of the header answers before the timeout);
/// - `chunked`: a JSON answer of ~100 KB in 1 KB chunks, no `Content-Length`;
/// - `sse-for-plain`: a non-streamed request answered with ~100 KB of SSE;
/// - `stream`: ~100 KB of SSE (100 chunks);
/// - anything else: a small answer.
///
/// It also serves Anthropic's `/v1/messages` with a declared ~100 KB answer.
async fn big_upstream() -> String {
    async fn chat(body: Bytes) -> Response {
        let request: Value = serde_json::from_slice(&body).unwrap();
        let json_type = [(header::CONTENT_TYPE, "application/json")];
        let sse_type = [(header::CONTENT_TYPE, "text/event-stream")];
        match request["model"].as_str().unwrap_or("") {
            "declared" => {
                let start = Bytes::from_static(b"{\"id\":\"chatcmpl-big\",\"choices\":[");
                let stalled =
                    futures_util::stream::iter([Ok::<_, std::convert::Infallible>(start)])
                        .chain(futures_util::stream::pending());
                Response::builder()
                    .header(header::CONTENT_TYPE, "application/json")
                    .header(header::CONTENT_LENGTH, "10000000000")
                    .body(Body::from_stream(stalled))
                    .unwrap()
            }
            "chunked" => {
                let text = completion(&"c".repeat(BIG)).to_string().into_bytes();
                let pieces: Vec<Infallibly> = text
                    .chunks(1024)
                    .map(|p| Ok(Bytes::copy_from_slice(p)))
                    .collect();
                (
                    json_type,
                    Body::from_stream(futures_util::stream::iter(pieces)),
                )
                    .into_response()
            }
            "sse-for-plain" | "stream" => (sse_type, big_sse()).into_response(),
            _ => (json_type, completion("small").to_string()).into_response(),
        }
    }
    async fn messages() -> Response {
        let message = json!({
            "id": "msg_big", "type": "message", "role": "assistant", "model": "claude",
            "content": [{"type": "text", "text": "a".repeat(BIG)}],
            "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}
        });
        (
            [(header::CONTENT_TYPE, "application/json")],
            message.to_string(),
        )
            .into_response()
    }
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/messages", post(messages));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn gateway_config(upstream: &str, log_file: Option<&std::path::Path>) -> String {
    let mut text = format!(
        r#"
max_response_body_mb = {CAP_MB}
[connections.up]
api_type = "open_ai"
api_base = "{upstream}/v1"
api_key = "sk-upstream"
timeout = 30
[connections.claude]
api_type = "anthropic"
api_base = "{upstream}"
api_key = "sk-ant"
timeout = 30
[routing]
"claude*" = "claude.*"
"*" = "up.*"
[groups.default]
api_keys = ["client-key"]
"#
    );
    if let Some(path) = log_file {
        text.push_str(&format!(
            "[[loggers]]\nclass = \"lm_proxy.loggers.BaseLogger\"\nlog_writer = {{class = \"lm_proxy.loggers.JsonLogWriter\", file_name = {:?}}}\nentry_transformer = {{class = \"lm_proxy.loggers.LogEntryTransformer\", response = \"response\", truncated = \"response.truncated\"}}\n",
            path.to_str().unwrap()
        ));
    }
    text
}

/// Bounds "did not hang" without timing anything finer.
async fn within<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 10 s"))
}

fn assert_names_the_cap(status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let error = &body["error"];
    assert_eq!(error["type"], "upstream_error", "{body}");
    assert_eq!(error["code"], "upstream_response_too_large", "{body}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains(CAP_TEXT), "{message}");
}

/// Non-streamed answers past the cap are a 502 naming it, however the upstream
/// framed them: declared (refused from the header: the body never comes, and the
/// answer comes long before the 30 s timeout), chunked, SSE put together, and from
/// Anthropic. An answer within the cap still passes.
#[tokio::test]
async fn answers_past_the_cap_are_a_502_naming_it() {
    let upstream = big_upstream().await;
    let gw = TestGateway::start(&gateway_config(&upstream, None)).await;
    for model in ["declared", "chunked", "sse-for-plain", "claude-big"] {
        let (status, body) = within(model, gw.chat_json("client-key", user(model, "hi"))).await;
        assert_names_the_cap(status, &body);
    }
    let (status, body) = gw.chat_json("client-key", user("small", "hi")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "small");

    // A stream asked of an upstream that answers with one (too large) JSON object.
    let mut request = user("declared", "hi");
    request["stream"] = true.into();
    let response = within("declared stream", gw.chat("client-key", request)).await;
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let body: Value = response.json().await.unwrap();
    assert_names_the_cap(status, &body);
}

/// A streamed answer larger than the cap reaches the client whole; the JSON log's
/// copy of it stops at the cap and says it was truncated.
#[tokio::test]
async fn a_streamed_answer_past_the_cap_is_logged_truncated_and_sent_whole() {
    let upstream = big_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.log");
    let gw = TestGateway::start(&gateway_config(&upstream, Some(&log))).await;
    let mut request = user("stream", "hi");
    request["stream"] = true.into();
    let response = within("the stream", gw.chat("client-key", request)).await;
    assert_eq!(response.status(), 200);
    let text = within("the stream's body", response.text()).await.unwrap();
    let (chunks, done) = sse_chunks(&text);
    assert!(done, "the stream ends with [DONE]");
    assert_eq!(chunks.len(), 100);
    let sent: usize = chunks
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap().len())
        .sum();
    assert_eq!(sent, 100 * 1000);
    assert!(chunks.iter().all(|c| c.get("error").is_none()));

    gw.server.shutdown(Duration::from_secs(5));
    within("shutdown", gw.server.wait()).await.unwrap();
    let line = std::fs::read_to_string(&log).unwrap();
    assert!(
        line.len() < 53_000 + 2_000,
        "log line of {} bytes",
        line.len()
    );
    let entry: Value = serde_json::from_str(line.trim()).unwrap();
    // The answer is its text (as the reference's JSON log wrote it); the completion's
    // `truncated` mark is there for a path into it.
    assert_eq!(entry["truncated"], true, "{entry}");
    let kept = entry["response"].as_str().unwrap();
    assert!(
        kept.len() > 40_000 && kept.len() <= 52_428,
        "{} bytes kept",
        kept.len()
    );
}

// ---- the log queue ----------------------------------------------------------------

/// A logger that never returns: it blocks its thread, as a write to a full pipe does.
struct Stuck {
    entered: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl Logger for Stuck {
    async fn log(&self, _context: &Value) -> anyhow::Result<()> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        loop {
            std::thread::park();
        }
    }
}

/// The native resolver, plus `tests.Stuck` as a logger.
struct WithStuckLogger {
    entered: Arc<AtomicUsize>,
}

impl ExtensionResolver for WithStuckLogger {
    fn key_check(&self, s: &ExtensionSpec, c: &Config) -> Result<Arc<dyn KeyCheck>, ConfigError> {
        NativeResolver.key_check(s, c)
    }
    fn connection(&self, s: &ExtensionSpec, c: &Config) -> Result<Arc<dyn Provider>, ConfigError> {
        NativeResolver.connection(s, c)
    }
    fn handler(
        &self,
        s: &ExtensionSpec,
        c: &Config,
    ) -> Result<Arc<dyn RequestHandler>, ConfigError> {
        NativeResolver.handler(s, c)
    }
    fn logger(&self, spec: &ExtensionSpec, c: &Config) -> Result<Arc<dyn Logger>, ConfigError> {
        if spec.target == "tests.Stuck" {
            return Ok(Arc::new(Stuck {
                entered: self.entered.clone(),
            }));
        }
        NativeResolver.logger(spec, c)
    }
    fn log_writer(&self, s: &ExtensionSpec, c: &Config) -> Result<Arc<dyn LogWriter>, ConfigError> {
        NativeResolver.log_writer(s, c)
    }
    fn component(&self, s: &ExtensionSpec, c: &Config) -> Result<(), ConfigError> {
        NativeResolver.component(s, c)
    }
}

fn dropped_metric(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("lm_proxy_log_entries_dropped_total "))
        .unwrap_or_else(|| panic!("no drop counter in {metrics}"))
        .trim()
        .parse()
        .unwrap()
}

/// A logger that never finishes: requests are still answered, the queue stays at
/// its bound (`max_entries` waiting plus the one being written), what does not fit
/// is dropped and counted in /metrics, and shutdown ends after the flush timeout,
/// counting what was left unwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_logger_drops_past_the_bound_and_shutdown_still_ends() {
    let entered = Arc::new(AtomicUsize::new(0));
    let mut config = config_from_toml(
        r#"
loggers = ["tests.Stuck"]
[log_queue]
max_entries = 4
flush_timeout_seconds = 0.3
[connections.mock]
api_type = "mock"
[routing]
"*" = "mock.*"
[groups.default]
api_keys = ["client-key"]
"#,
    );
    config.settings.host = "127.0.0.1".into();
    config.settings.port = 0;
    let resolver = Arc::new(WithStuckLogger {
        entered: entered.clone(),
    });
    let server = lm_proxy::server::start(config, resolver, Default::default())
        .await
        .expect("gateway starts");
    let client = reqwest::Client::new();
    let url = server.url();
    for i in 0..30 {
        let response = within(
            "a request",
            client
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth("client-key")
                .json(&user("m", &format!("request {i}")))
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), 200);
    }
    let dispatcher = server.state.gateway().log_dispatcher.clone().unwrap();
    assert!(
        dispatcher.pending() <= 5,
        "{} pending",
        dispatcher.pending()
    );
    within("the logger's first entry", async {
        while entered.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        entered.load(Ordering::SeqCst),
        1,
        "stuck in its first entry"
    );
    let metrics = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped = dropped_metric(&metrics);
    assert!(dropped >= 25, "{dropped} dropped");
    assert_eq!(dropped, dispatcher.dropped());

    server.shutdown(Duration::from_millis(100));
    within("shutdown with a stuck logger", server.wait())
        .await
        .unwrap();
    // The entry being written and the queued ones count as dropped too.
    assert_eq!(dispatcher.dropped(), 30);
}

/// The binary with its JSON log on a pipe nobody reads (the pipe fills, and every
/// write blocks): requests are answered, drops are counted and reported, and SIGTERM
/// ends the process.
#[test]
fn a_json_log_on_a_full_pipe_does_not_stop_requests_or_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("log.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    // Opened for reading and writing, so that the gateway's open does not wait for a
    // reader; never read, so the pipe fills.
    let _held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let config = format!(
        r#"
[log_queue]
max_entries = 8
flush_timeout_seconds = 0.5
[connections.mock]
api_type = "mock"
[routing]
"*" = "mock.*"
[groups.default]
api_keys = ["client-key"]
[[loggers]]
class = "lm_proxy.loggers.BaseLogger"
log_writer = {{class = "lm_proxy.loggers.JsonLogWriter", file_name = {:?}}}
"#,
        fifo.to_str().unwrap()
    );
    let path = write(dir.path(), "config.toml", &config);
    let mut proc = Proc::start(
        dir.path(),
        &["--config", path.to_str().unwrap(), "--env", ""],
        &[],
    );
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // Each entry holds its 8 KB prompt: the 64 KiB pipe is full after a few.
    let prompt = "p".repeat(8 * 1024);
    for _ in 0..40 {
        let response = client
            .post(format!("{}/v1/chat/completions", proc.url))
            .bearer_auth("client-key")
            .json(&user("m", &prompt))
            .send()
            .expect("answered while the log is stuck");
        assert_eq!(response.status(), 200);
    }
    let metrics = client
        .get(format!("{}/metrics", proc.url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(dropped_metric(&metrics) >= 20, "{metrics}");
    proc.signal("-TERM");
    proc.wait_exit(Duration::from_secs(10));
    let log = proc.log_after_exit();
    assert!(log.contains("request log entries dropped"), "{log}");
    assert!(log.contains("not written"), "{log}");
}

// ---- settings ------------------------------------------------------------------------

fn load(text: &str) -> Result<Config, ConfigError> {
    let path = std::path::Path::new("test.toml");
    let tree = lm_proxy::config::parse_text(text, lm_proxy::config::Format::Toml, path).unwrap();
    Config::from_value(tree, path)
}

#[test]
fn the_caps_have_defaults_and_refuse_zero() {
    let base = "[connections.mock]\napi_type = \"mock\"\n";
    let config = load(base).unwrap();
    assert_eq!(config.settings.max_response_body_bytes(), 64 * 1024 * 1024);
    let queue = &config.settings.log_queue;
    assert_eq!(
        (
            queue.max_entries,
            queue.max_bytes(),
            queue.flush_timeout_seconds
        ),
        (8192, 256 * 1024 * 1024, 10.0)
    );
    let set = load(&format!(
        "max_response_body_mb = \"2\"\n[log_queue]\nmax_entries = \"5\"\nmax_mb = 1\n{base}"
    ))
    .unwrap();
    assert_eq!(set.settings.max_response_body_bytes(), 2 * 1024 * 1024);
    assert_eq!(set.settings.log_queue.max_entries, 5);
    for (text, key) in [
        ("max_response_body_mb = 0\n", "max_response_body_mb"),
        ("[log_queue]\nmax_entries = 0\n", "max_entries"),
        ("[log_queue]\nmax_mb = -1\n", "max_mb"),
        (
            "[log_queue]\nflush_timeout_seconds = 0\n",
            "flush_timeout_seconds",
        ),
        ("[log_queue]\nqueue = 1\n", "queue"),
    ] {
        let error = load(&format!("{text}{base}")).unwrap_err().to_string();
        assert!(error.contains(key), "{error}");
    }
}
