//! `bench-upstream`: a zero-latency mock LLM upstream for the benchmarks in `bench/`.
//!
//! It speaks just enough of three wire formats to be proxied:
//! - OpenAI: `POST /v1/chat/completions` (JSON, or SSE with `"stream": true`;
//!   a usage chunk when `stream_options.include_usage` is set), `GET /v1/models`;
//! - OpenAI: `POST /v1/embeddings` (`input` a string or a list; `dimensions`,
//!   default 1536; `encoding_format` `float` or `base64`);
//! - Anthropic: `POST /v1/messages` (JSON or its SSE event sequence);
//! - Gemini: `POST /v1beta/models/{model}:generateContent` and
//!   `:streamGenerateContent?alt=sse`;
//! - `GET /health` for readiness.
//!
//! What a stream looks like is chosen by the model name, so that the same model
//! name works through any proxy: `-s<N>` gives N content chunks (default
//! `--chunks`, 20), `-d<MS>` waits MS milliseconds before each content chunk
//! (default 0), `-w<MS>` waits MS milliseconds before answering at all (a model's
//! latency for non-streamed answers; default 0), `-v` varies the text of each chunk
//! (words of different lengths, now and then an escaped newline, as a model writes;
//! without it every chunk carries ` tok`, so that consecutive chunks differ in
//! nothing, which a proxy comparing each event with the last would find cheaper
//! than real streams). Example: `bench-s20-d10`, `bench-w20`, `bench-s20-v`.
//! `-nu` writes `"usage":null` into every chunk before the usage chunk when the
//! request asks for usage (`stream_options.include_usage`), as OpenAI's API does;
//! `-ob` writes OpenAI's `"obfuscation"` member into every chunk, a padding string
//! whose text and length change from chunk to chunk.
//! Non-streamed answers carry N words.
//!
//! Accepted sockets get `TCP_NODELAY`; answers are built with plain `format!`
//! (no JSON tree), so the mock costs as little CPU as possible next to the proxy
//! it measures. Usage: `bench-upstream [--port P] [--chunks N] [--threads T]
//! [--openai-headers]`; prints `listening on 127.0.0.1:PORT` once it accepts
//! connections. `--openai-headers` adds to every answer the headers OpenAI's API
//! sends besides the framing (request id, processing time, rate-limit counters, the
//! CDN's), so that what a proxy does with an answer's head is measured as it is
//! against the real service.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use futures_util::StreamExt;
use serde::Deserialize;

#[derive(Clone, Copy)]
struct Defaults {
    chunks: usize,
}

/// The fields of any of the three request shapes that the mock looks at.
#[derive(Deserialize)]
struct Request {
    #[serde(default)]
    model: String,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// What the model name asks for.
struct Plan {
    chunks: usize,
    delay: Duration,
    wait: Duration,
    varied: bool,
    /// `-nu`: OpenAI's `"usage":null` in each chunk of a stream that asked for usage.
    usage_null: bool,
    /// `-ob`: OpenAI's `"obfuscation"` padding in each chunk.
    obfuscation: bool,
}

impl Plan {
    fn of(model: &str, defaults: Defaults) -> Plan {
        let mut plan = Plan {
            chunks: defaults.chunks,
            delay: Duration::ZERO,
            wait: Duration::ZERO,
            varied: false,
            usage_null: false,
            obfuscation: false,
        };
        for part in model.split('-') {
            if let Some(n) = part.strip_prefix('s').and_then(|n| n.parse().ok()) {
                plan.chunks = n;
            } else if let Some(ms) = part.strip_prefix('d').and_then(|n| n.parse().ok()) {
                plan.delay = Duration::from_millis(ms);
            } else if let Some(ms) = part.strip_prefix('w').and_then(|n| n.parse().ok()) {
                plan.wait = Duration::from_millis(ms);
            } else if part == "v" {
                plan.varied = true;
            } else if part == "nu" {
                plan.usage_null = true;
            } else if part == "ob" {
                plan.obfuscation = true;
            }
        }
        plan
    }

    /// The text of content chunk `i`, as written inside a JSON string.
    fn token(&self, i: usize) -> &'static str {
        // A model's deltas: a word or two with its leading space, punctuation, a
        // line break now and then (escaped in JSON).
        const VARIED: [&str; 16] = [
            " The", " gateway", " checks", " each", " virtual", " key,", " routes", " the",
            " model", " name", " and", " streams", " its", " answer.", "\\n\\n", "Then",
        ];
        match (self.varied, i) {
            (true, _) => VARIED[i % VARIED.len()],
            (false, 0) => "tok",
            (false, _) => " tok",
        }
    }

    fn words(&self) -> String {
        let mut text = String::with_capacity(self.chunks * 8);
        for i in 0..self.chunks {
            text.push_str(self.token(i));
        }
        text
    }

    /// The `-w` wait, before any answer (the head of a stream included).
    async fn wait(&self) {
        if !self.wait.is_zero() {
            tokio::time::sleep(self.wait).await;
        }
    }
}

fn main() {
    let mut port: u16 = 0;
    let mut chunks: usize = 20;
    let mut threads: usize = 0;
    let mut openai_headers = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--openai-headers" {
            openai_headers = true;
            continue;
        }
        let mut value = |name: &str| {
            args.next()
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or_else(|| usage(&format!("{name} needs a number")))
        };
        match arg.as_str() {
            "--port" => port = value("--port") as u16,
            "--chunks" => chunks = value("--chunks"),
            "--threads" => threads = value("--threads"),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        runtime.worker_threads(threads);
    }
    let runtime = runtime.enable_all().build().expect("tokio runtime");
    runtime.block_on(serve(port, Defaults { chunks }, openai_headers));
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("bench-upstream: {problem}");
    }
    eprintln!("usage: bench-upstream [--port P] [--chunks N] [--threads T] [--openai-headers]");
    std::process::exit(2)
}

/// The headers OpenAI's API sends with an answer besides the framing and the
/// content type, with values of their usual form and length.
const OPENAI_HEADERS: [(&str, &str); 16] = [
    ("date", "Sun, 06 Dec 2026 05:00:00 GMT"),
    ("access-control-expose-headers", "X-Request-ID"),
    ("openai-organization", "org-benchbenchbenchbenchbench"),
    ("openai-processing-ms", "412"),
    ("openai-project", "proj_benchbenchbenchbenchbench"),
    ("openai-version", "2020-10-01"),
    ("x-envoy-upstream-service-time", "415"),
    ("x-ratelimit-limit-requests", "10000"),
    ("x-ratelimit-limit-tokens", "30000000"),
    ("x-ratelimit-remaining-requests", "9999"),
    ("x-ratelimit-remaining-tokens", "29999976"),
    ("x-ratelimit-reset-requests", "6ms"),
    ("x-ratelimit-reset-tokens", "0s"),
    ("x-request-id", "req_0123456789abcdef0123456789abcdef"),
    (
        "strict-transport-security",
        "max-age=31536000; includeSubDomains; preload",
    ),
    ("cf-ray", "8f0123456789abcd-AMS"),
];

async fn with_openai_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in OPENAI_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn serve(port: u16, defaults: Defaults, openai_headers: bool) {
    let mut app = axum::Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/v1/chat/completions", post(openai))
        .route("/v1/models", get(models))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/messages", post(anthropic))
        .route("/v1beta/models/{*call}", post(gemini))
        .with_state(defaults);
    if openai_headers {
        app = app.layer(axum::middleware::map_response(with_openai_headers));
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| {
            eprintln!("bench-upstream: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1)
        });
    let addr = listener.local_addr().expect("bound address");
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    println!("listening on {addr}");
    axum::serve(listener, app).await.expect("server runs");
}

fn parse(body: &[u8]) -> Result<Request, (StatusCode, String)> {
    serde_json::from_slice(body).map_err(|e| (StatusCode::BAD_REQUEST, format!("bad JSON: {e}")))
}

fn json(body: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// An SSE response from pre-rendered events; `paced` events wait `delay` first.
fn sse(events: Vec<(String, bool)>, delay: Duration) -> Response {
    let body = if delay.is_zero() {
        let frames = events
            .into_iter()
            .map(|(e, _)| Ok::<_, Infallible>(Bytes::from(e)));
        Body::from_stream(futures_util::stream::iter(frames))
    } else {
        let frames = futures_util::stream::iter(events).then(move |(event, paced)| async move {
            if paced {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, Infallible>(Bytes::from(event))
        });
        Body::from_stream(frames)
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// Model names come from clients of the proxies; keep them JSON-safe.
fn safe(model: &str) -> String {
    model
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(*c))
        .collect()
}

async fn models() -> Response {
    json(r#"{"object":"list","data":[{"id":"bench","object":"model","created":1700000000,"owned_by":"bench"}]}"#.into())
}

async fn openai(State(defaults): State<Defaults>, body: Bytes) -> Response {
    let request = match parse(&body) {
        Ok(r) => r,
        Err(problem) => return problem.into_response(),
    };
    let model = safe(&request.model);
    let plan = Plan::of(&model, defaults);
    plan.wait().await;
    let n = plan.chunks;
    if !request.stream {
        return json(format!(
            r#"{{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"{model}","system_fingerprint":"fp_bench","choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}"}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":10,"completion_tokens":{n},"total_tokens":{total}}}}}"#,
            text = plan.words(),
            total = 10 + n,
        ));
    }
    let head = format!(
        r#"{{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"{model}","system_fingerprint":"fp_bench","choices":["#
    );
    let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
    // What closes a chunk: its `choices` list, then OpenAI's `"usage":null` when the
    // stream ends with a usage chunk and the plan asks for it.
    let close = if include_usage && plan.usage_null {
        r#"],"usage":null}"#
    } else {
        "]}"
    };
    // Chunk `i`'s ending: with `-ob`, OpenAI's padding before the closing brace, a
    // string of 2 to 14 letters and digits that differs from the last chunk's.
    let ending = |i: usize| -> std::borrow::Cow<'static, str> {
        if !plan.obfuscation {
            return close.into();
        }
        const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let pad: String = (0..2 + (i * 7) % 13)
            .map(|k| LETTERS[(i * 31 + k * 17) % LETTERS.len()] as char)
            .collect();
        format!(r#"{},"obfuscation":"{pad}"}}"#, &close[..close.len() - 1]).into()
    };
    let mut events = Vec::with_capacity(n + 4);
    events.push((
        format!(
            "data: {head}{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}{end}\n\n",
            end = ending(0)
        ),
        false,
    ));
    for i in 0..n {
        let text = plan.token(i);
        events.push((
            format!(
                "data: {head}{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}},\"logprobs\":null,\"finish_reason\":null}}{end}\n\n",
                end = ending(i + 1)
            ),
            true,
        ));
    }
    events.push((
        format!(
            "data: {head}{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}{end}\n\n",
            end = ending(n + 1)
        ),
        false,
    ));
    if include_usage {
        events.push((
            format!(
                "data: {head}],\"usage\":{{\"prompt_tokens\":10,\"completion_tokens\":{n},\"total_tokens\":{}}}}}\n\n",
                10 + n
            ),
            false,
        ));
    }
    events.push(("data: [DONE]\n\n".into(), false));
    sse(events, plan.delay)
}

/// The fields of an embeddings request that the mock looks at.
#[derive(Deserialize)]
struct EmbeddingsRequest {
    #[serde(default)]
    model: String,
    #[serde(default)]
    input: serde_json::Value,
    #[serde(default)]
    dimensions: Option<usize>,
    #[serde(default)]
    encoding_format: Option<String>,
}

/// Largest `dimensions` the mock answers (text-embedding-3-large has 3,072).
const MAX_DIMENSIONS: usize = 4096;

/// One vector per input, of `dimensions` floats (1536 by default, as
/// text-embedding-3-small), each written with OpenAI's precision; base64 is the
/// little-endian f32 bytes, as OpenAI sends.
async fn embeddings(body: Bytes) -> Response {
    let request: EmbeddingsRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad JSON: {e}")).into_response(),
    };
    let count = match &request.input {
        serde_json::Value::Array(items) if items.iter().all(|i| !i.is_number()) => items.len(),
        _ => 1,
    };
    let dimensions = request.dimensions.unwrap_or(1536).clamp(1, MAX_DIMENSIONS);
    let vector = vector_text(
        dimensions,
        request.encoding_format.as_deref() == Some("base64"),
    );
    let mut data = String::with_capacity(count * (vector.len() + 64));
    for index in 0..count {
        if index > 0 {
            data.push(',');
        }
        data.push_str(&format!(
            r#"{{"object":"embedding","index":{index},"embedding":{vector}}}"#
        ));
    }
    let tokens = 8 * count;
    json(format!(
        r#"{{"object":"list","data":[{data}],"model":"{model}","usage":{{"prompt_tokens":{tokens},"total_tokens":{tokens}}}}}"#,
        model = safe(&request.model),
    ))
}

/// The JSON text of the mock's vector (a float array or a base64 string), made once
/// per shape so that the mock's CPU per answer stays small next to the proxy's.
fn vector_text(dimensions: usize, base64: bool) -> std::sync::Arc<str> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    /// Vector texts by dimensions and whether they are base64.
    type Made = Mutex<HashMap<(usize, bool), Arc<str>>>;
    static MADE: OnceLock<Made> = OnceLock::new();
    let made = MADE.get_or_init(Default::default);
    if let Some(text) = made
        .lock()
        .expect("vector cache")
        .get(&(dimensions, base64))
    {
        return text.clone();
    }
    let values = (0..dimensions).map(|i| ((i * 7919 % 2000) as f32 - 1000.0) / 31_250.0);
    let text: Arc<str> = if base64 {
        use base64::Engine;
        let bytes: Vec<u8> = values.flat_map(f32::to_le_bytes).collect();
        format!(
            "\"{}\"",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
        .into()
    } else {
        let floats: Vec<String> = values.map(|v| format!("{v:.10}")).collect();
        format!("[{}]", floats.join(",")).into()
    };
    made.lock()
        .expect("vector cache")
        .insert((dimensions, base64), text.clone());
    text
}

async fn anthropic(State(defaults): State<Defaults>, body: Bytes) -> Response {
    let request = match parse(&body) {
        Ok(r) => r,
        Err(problem) => return problem.into_response(),
    };
    let model = safe(&request.model);
    let plan = Plan::of(&model, defaults);
    plan.wait().await;
    let n = plan.chunks;
    if !request.stream {
        return json(format!(
            r#"{{"id":"msg_bench","type":"message","role":"assistant","model":"{model}","content":[{{"type":"text","text":"{text}"}}],"stop_reason":"end_turn","stop_sequence":null,"usage":{{"input_tokens":10,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":{n}}}}}"#,
            text = plan.words(),
        ));
    }
    let event = |name: &str, data: String| format!("event: {name}\ndata: {data}\n\n");
    let mut events = Vec::with_capacity(n + 6);
    events.push((
        event(
            "message_start",
            format!(
                r#"{{"type":"message_start","message":{{"id":"msg_bench","type":"message","role":"assistant","model":"{model}","content":[],"stop_reason":null,"stop_sequence":null,"usage":{{"input_tokens":10,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}}}}"#
            ),
        ),
        false,
    ));
    events.push((
        event(
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#
                .into(),
        ),
        false,
    ));
    for i in 0..n {
        let text = plan.token(i);
        events.push((
            event(
                "content_block_delta",
                format!(
                    r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{text}"}}}}"#
                ),
            ),
            true,
        ));
    }
    events.push((
        event(
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#.into(),
        ),
        false,
    ));
    events.push((
        event(
            "message_delta",
            format!(
                r#"{{"type":"message_delta","delta":{{"stop_reason":"end_turn","stop_sequence":null}},"usage":{{"output_tokens":{n}}}}}"#
            ),
        ),
        false,
    ));
    events.push((
        event("message_stop", r#"{"type":"message_stop"}"#.into()),
        false,
    ));
    sse(events, plan.delay)
}

async fn gemini(
    State(defaults): State<Defaults>,
    Path(call): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let Some((model, method)) = call.rsplit_once(':') else {
        return (StatusCode::NOT_FOUND, "expected models/{model}:{method}").into_response();
    };
    let model = safe(model);
    let plan = Plan::of(&model, defaults);
    plan.wait().await;
    let n = plan.chunks;
    let usage = |candidates: usize| {
        format!(
            r#""usageMetadata":{{"promptTokenCount":10,"candidatesTokenCount":{candidates},"totalTokenCount":{}}}"#,
            10 + candidates
        )
    };
    match method {
        "generateContent" => json(format!(
            r#"{{"candidates":[{{"content":{{"role":"model","parts":[{{"text":"{text}"}}]}},"finishReason":"STOP","index":0}}],{usage},"modelVersion":"{model}","responseId":"bench"}}"#,
            text = plan.words(),
            usage = usage(n),
        )),
        "streamGenerateContent" => {
            if !query.unwrap_or_default().contains("alt=sse") {
                return (
                    StatusCode::BAD_REQUEST,
                    "bench-upstream streams only with alt=sse",
                )
                    .into_response();
            }
            let _ = body;
            let mut events = Vec::with_capacity(n + 1);
            for i in 0..n {
                let text = plan.token(i);
                events.push((
                    format!(
                        "data: {{\"candidates\":[{{\"content\":{{\"role\":\"model\",\"parts\":[{{\"text\":\"{text}\"}}]}},\"index\":0}}],\"modelVersion\":\"{model}\",\"responseId\":\"bench\"}}\r\n\r\n"
                    ),
                    true,
                ));
            }
            events.push((
                format!(
                    "data: {{\"candidates\":[{{\"content\":{{\"role\":\"model\",\"parts\":[{{\"text\":\"\"}}]}},\"finishReason\":\"STOP\",\"index\":0}}],{},\"modelVersion\":\"{model}\",\"responseId\":\"bench\"}}\r\n\r\n",
                    usage(n)
                ),
                false,
            ));
            sse(events, plan.delay)
        }
        _ => (StatusCode::NOT_FOUND, "unknown Gemini method").into_response(),
    }
}
