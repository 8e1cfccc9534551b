//! The Anthropic Messages door (`/v1/messages`, `/v1/messages/count_tokens`):
//! byte-for-byte pass-through to an Anthropic upstream (request with only `model`
//! replaced, JSON answer and SSE events as written, client headers passed on),
//! translation for an OpenAI-compatible upstream, every bad input answered with a
//! 4xx in Anthropic's envelope, and the door visible to the log entry and metrics.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::{MockUpstream, TestGateway};
use serde_json::{json, Value};

/// A thinking block with its signature and a field nobody here knows, written
/// with unusual spacing and escapes, so that any re-serialisation shows.
const ANSWER: &str = "{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-real\",\"content\":[{\"type\":\"thinking\",\"thinking\":\"Let me see\\u2026\",\"signature\":\"EqQBCkYIBx==\"},{\"type\":\"text\",\"text\":\"Hi!\",\"citations\":null}],\"stop_reason\":\"end_turn\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":12,\"output_tokens\":3, \"cache_read_input_tokens\":0},\"zz_future_field\":{\"b\":1.50,\"a\":[]}}";

/// The event data of a streamed answer, each as the upstream writes it.
const EVENTS: [(&str, &str); 9] = [
    ("message_start", "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_02\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-real\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}"),
    ("content_block_start", "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}"),
    ("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Hm\\u2026\"}}"),
    ("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQBCkYIBx==\"}}"),
    ("content_block_stop", "{\"type\":\"content_block_stop\",\"index\":0 }"),
    ("ping", "{\"type\": \"ping\"}"),
    ("content_block_start", "{\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\",\"zz_new\":true}}"),
    ("message_delta", "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}"),
    ("message_stop", "{\"type\":\"message_stop\"}"),
];

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, HeaderMap, Bytes)>>>);

impl Seen {
    fn last(&self) -> (String, HeaderMap, Bytes) {
        self.0
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no upstream request")
    }
}

/// A mock Anthropic API: fixed bytes, behaviour by model name.
async fn anthropic_upstream() -> (String, Seen) {
    use axum::extract::State;
    use axum::http::Uri;
    let seen = Seen::default();
    async fn handle(
        State(seen): State<Seen>,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        seen.0
            .lock()
            .unwrap()
            .push((uri.path().to_owned(), headers.clone(), body.clone()));
        if uri.path().ends_with("/count_tokens") {
            return (
                [("content-type", "application/json")],
                "{\"input_tokens\":12}",
            )
                .into_response();
        }
        let request: Value = serde_json::from_slice(&body).unwrap();
        let error = |status: u16, kind: &str| {
            let body = json!({"type": "error", "error": {"type": kind, "message": format!("upstream says {kind}")}});
            let mut r = (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
            r.headers_mut().insert("retry-after", "9".parse().unwrap());
            r
        };
        match request["model"].as_str().unwrap_or("") {
            "claude-echo-key" => {
                // An upstream that echoes the key it was sent in its error message.
                let key = headers["x-api-key"].to_str().unwrap().to_owned();
                let body = json!({"type": "error", "error": {"type": "authentication_error", "message": format!("invalid x-api-key: {key}")}});
                return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
            }
            "claude-midfail" => {
                let text = format!(
                    "event: message_start\ndata: {}\n\nevent: error\ndata: {}\n\n",
                    EVENTS[0].1,
                    r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
                );
                return ([("content-type", "text/event-stream")], text).into_response();
            }
            "claude-429" => return error(429, "rate_limit_error"),
            "claude-529" => return error(529, "overloaded_error"),
            "claude-400" => return error(400, "invalid_request_error"),
            _ => {}
        }
        if request["stream"] == true {
            let mut text = String::new();
            for (name, data) in EVENTS {
                text.push_str(&format!("event: {name}\ndata: {data}\n\n"));
            }
            ([("content-type", "text/event-stream")], text).into_response()
        } else {
            ([("content-type", "application/json")], ANSWER).into_response()
        }
    }
    let app = axum::Router::new()
        .route("/v1/messages", axum::routing::post(handle))
        .route("/v1/messages/count_tokens", axum::routing::post(handle))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

fn config(anthropic: &str, openai: &str, extra: &str) -> String {
    format!(
        r#"
        max_request_body_mb = 0.01
        {extra}
        [connections.anth]
        api_type = "anthropic"
        api_base = "{anthropic}"
        api_key = "sk-ant-upstream-secret"
        [connections.oai]
        api_type = "open_ai"
        api_base = "{openai}"
        api_key = "sk-oai-upstream"
        [routing]
        "claude-alias" = "anth.claude-real"
        "claude*" = "anth.*"
        "gpt*" = "oai.*"
        "private*" = "anth.*"
        [groups.default]
        api_keys = ["k1"]
        allowed_connections = "anth,oai"
        [groups.limited]
        api_keys = ["k2"]
        allowed_connections = "oai"
        "#
    )
}

async fn setup(extra: &str) -> (TestGateway, Seen, MockUpstream) {
    let (anthropic, seen) = anthropic_upstream().await;
    let openai = MockUpstream::start().await;
    let gw = TestGateway::start(&config(&anthropic, &openai.base(), extra)).await;
    (gw, seen, openai)
}

async fn post_raw(
    gw: &TestGateway,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> (u16, HeaderMap, Bytes) {
    let mut request = gw.client.post(gw.url(path)).body(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let mut headers = HeaderMap::new();
    for (k, v) in response.headers() {
        headers.insert(
            axum::http::HeaderName::from_bytes(k.as_str().as_bytes()).unwrap(),
            v.to_str().unwrap().parse().unwrap(),
        );
    }
    (status, headers, response.bytes().await.unwrap())
}

const JSON: (&str, &str) = ("content-type", "application/json");

#[tokio::test]
async fn pass_through_is_byte_for_byte_both_ways() {
    let (gw, seen, _openai) = setup("").await;
    let body = "{\"max_tokens\": 50 ,\"model\":\"claude-alias\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"caf\\u00e9\",\"cache_control\":{\"type\":\"ephemeral\"}}]}],\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":1024},\"zz_beta_field\":[1.0, 2e3]}";
    let (status, headers, answer) = post_raw(
        &gw,
        "/v1/messages",
        &[
            JSON,
            ("x-api-key", "k1"),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "interleaved-thinking-2025-05-14"),
        ],
        body,
    )
    .await;
    assert_eq!(status, 200, "{answer:?}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(std::str::from_utf8(&answer).unwrap(), ANSWER);

    let (path, upstream_headers, sent) = seen.last();
    assert_eq!(path, "/v1/messages");
    assert_eq!(
        std::str::from_utf8(&sent).unwrap(),
        body.replace("\"claude-alias\"", "\"claude-real\"")
    );
    assert_eq!(upstream_headers["anthropic-version"], "2023-06-01");
    assert_eq!(
        upstream_headers["anthropic-beta"],
        "interleaved-thinking-2025-05-14"
    );
    // The connection's key goes upstream, never the client's.
    assert_eq!(upstream_headers["x-api-key"], "sk-ant-upstream-secret");
}

#[tokio::test]
async fn pass_through_streams_every_event_as_written() {
    let (gw, seen, _openai) = setup("").await;
    let body = r#"{"model":"claude-real","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, headers, answer) = post_raw(
        &gw,
        "/v1/messages",
        &[JSON, ("authorization", "Bearer k1")],
        body,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    let mut expected = String::new();
    for (name, data) in EVENTS {
        expected.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    }
    assert_eq!(std::str::from_utf8(&answer).unwrap(), expected);
    // The model was the client's, so the body went up untouched.
    assert_eq!(std::str::from_utf8(&seen.last().2).unwrap(), body);
}

#[tokio::test]
async fn count_tokens_passes_through_to_anthropic_connections() {
    let (gw, seen, _openai) = setup("").await;
    let body = r#"{"model":"claude-alias","messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, answer) = post_raw(
        &gw,
        "/v1/messages/count_tokens",
        &[JSON, ("x-api-key", "k1")],
        body,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(&answer[..], b"{\"input_tokens\":12}");
    let (path, _, sent) = seen.last();
    assert_eq!(path, "/v1/messages/count_tokens");
    assert_eq!(
        std::str::from_utf8(&sent).unwrap(),
        body.replace("claude-alias", "claude-real")
    );
}

#[tokio::test]
async fn count_tokens_is_estimated_for_other_connections() {
    let (gw, _seen, openai) = setup("").await;
    let count = |body: Value| {
        let gw = &gw;
        async move {
            let (status, _, answer) = post_raw(
                gw,
                "/v1/messages/count_tokens",
                &[JSON, ("x-api-key", "k1")],
                body.to_string(),
            )
            .await;
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
            let answer: Value = serde_json::from_slice(&answer).unwrap();
            assert_eq!(answer.as_object().unwrap().len(), 1, "{answer}");
            answer["input_tokens"].as_u64().unwrap()
        }
    };
    // "Hello, world!" is 4 tokens of o200k_base, plus 3 of message framing.
    let hello = count(
        json!({"model": "gpt-x", "messages": [{"role": "user", "content": "Hello, world!"}]}),
    )
    .await;
    assert_eq!(hello, 7);
    let system = count(
        json!({"model": "gpt-x", "system": "Answer in French, briefly.",
        "messages": [{"role": "user", "content": "Hello, world!"}]}),
    )
    .await;
    assert!(system > hello, "{system}");
    let tools = count(json!({"model": "gpt-x", "system": "Answer in French, briefly.",
        "messages": [{"role": "user", "content": "Hello, world!"}],
        "tools": [{"name": "get_weather", "description": "The weather in a city.",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]})).await;
    assert!(tools > system + 15, "{tools}");
    // Nothing went upstream.
    assert!(openai.requests().is_empty());
    // Still checked like any request.
    let (status, _, answer) = post_raw(
        &gw,
        "/v1/messages/count_tokens",
        &[JSON, ("x-api-key", "k1")],
        r#"{"model":"gpt-x","messages":[]}"#,
    )
    .await;
    assert_eq!(status, 400);
    let error: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn translation_for_an_openai_compatible_upstream() {
    let (gw, _seen, openai) = setup("").await;
    let body = json!({"model": "gpt-x", "max_tokens": 20, "system": "Be brief.",
        "messages": [{"role": "user", "content": "hi"}], "stop_sequences": ["END"],
        "metadata": {"user_id": "u-7"}});
    let (status, _, answer) = post_raw(
        &gw,
        "/v1/messages",
        &[JSON, ("x-api-key", "k1")],
        body.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{answer:?}");
    let message: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(message["type"], "message");
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["content"][0]["type"], "text");
    assert_eq!(message["content"][0]["text"], "upstream answer from gpt-x");
    assert_eq!(message["stop_reason"], "end_turn");
    assert!(message["usage"]["input_tokens"].is_u64(), "{message}");
    let sent = openai.last().body;
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    );
    assert_eq!(sent["stop"], json!(["END"]));
    assert_eq!(sent["user"], "u-7");
    assert_eq!(sent["max_tokens"], 20);

    // Streamed: the event grammar, ending in message_stop.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (status, headers, answer) = post_raw(
        &gw,
        "/v1/messages",
        &[JSON, ("x-api-key", "k1")],
        streamed.to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    let text = String::from_utf8(answer.to_vec()).unwrap();
    let names: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("event: "))
        .map(|e| e.split('\n').next().unwrap())
        .collect();
    assert_eq!(names.first(), Some(&"message_start"), "{text}");
    assert_eq!(names.last(), Some(&"message_stop"), "{text}");
    assert!(names.contains(&"content_block_delta"), "{text}");
    assert_eq!(openai.last().body["stream_options"]["include_usage"], true);
}

/// Request headers, body, expected status and Anthropic error type.
type Case<'a> = (Vec<(&'a str, &'a str)>, String, u16, &'a str);

#[tokio::test]
async fn every_bad_input_is_a_4xx_in_anthropics_envelope() {
    let (gw, _seen, _openai) = setup("").await;
    let ok =
        r#"{"model":"claude-real","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
    let key = ("x-api-key", "k1");
    let big = format!(
        r#"{{"model":"claude-real","max_tokens":5,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(20_000)
    );
    let cases: Vec<Case> = vec![
        (vec![key], ok.into(), 400, "invalid_request_error"),
        (vec![JSON, key], "{".into(), 400, "invalid_request_error"),
        (vec![JSON, key], "".into(), 400, "invalid_request_error"),
        (vec![JSON, key], "[1]".into(), 400, "invalid_request_error"),
        (vec![JSON, key], r#"{"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#.into(), 400, "invalid_request_error"),
        (vec![JSON, key], r#"{"model":"claude-real","messages":[{"role":"user","content":"hi"}]}"#.into(), 400, "invalid_request_error"),
        (vec![JSON, key], r#"{"model":"claude-real","max_tokens":5}"#.into(), 400, "invalid_request_error"),
        (vec![JSON, key], r#"{"model":"claude-real","max_tokens":5,"messages":"hi"}"#.into(), 400, "invalid_request_error"),
        (vec![JSON, key], r#"{"model":"claude-real","max_tokens":-1,"messages":[{"role":"user","content":"hi"}]}"#.into(), 400, "invalid_request_error"),
        (vec![JSON, key], r#"{"model":"claude-real","max_tokens":5,"stream":"yes","messages":[{"role":"user","content":"hi"}]}"#.into(), 400, "invalid_request_error"),
        (vec![JSON, key], r#"{"model":"claude-real","model":"claude-real","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#.into(), 400, "invalid_request_error"),
        (vec![JSON, key], r#"{"model":"gpt-x","max_tokens":5,"messages":[{"role":"user","content":[{"type":"server_tool_use","id":"x"}]}]}"#.into(), 400, "invalid_request_error"),
        (vec![JSON, key], big, 413, "request_too_large"),
        (vec![JSON], ok.into(), 401, "authentication_error"),
        (vec![JSON, ("x-api-key", "wrong")], ok.into(), 401, "authentication_error"),
        (vec![JSON, ("x-api-key", "k2")], ok.into(), 403, "permission_error"),
        (vec![JSON, key], ok.replace("claude-real", "nothing-routes-this"), 404, "not_found_error"),
        (vec![JSON, key], ok.replace("claude-real", "claude-429"), 429, "rate_limit_error"),
        (vec![JSON, key], ok.replace("claude-real", "claude-529"), 503, "overloaded_error"),
        (vec![JSON, key], ok.replace("claude-real", "claude-400"), 400, "invalid_request_error"),
    ];
    for (headers, body, status, kind) in cases {
        let (got, response_headers, answer) =
            post_raw(&gw, "/v1/messages", &headers, body.clone()).await;
        let shown = &body[..body.len().min(120)];
        assert_eq!(got, status, "{shown}: {answer:?}");
        let error: Value = serde_json::from_slice(&answer)
            .unwrap_or_else(|e| panic!("{shown}: not JSON ({e}): {answer:?}"));
        assert_eq!(error["type"], "error", "{shown}");
        assert_eq!(error["error"]["type"], kind, "{shown}: {error}");
        assert!(error["error"]["message"].is_string(), "{shown}");
        let text = String::from_utf8_lossy(&answer);
        assert!(!text.contains("sk-ant-upstream-secret"), "{text}");
        if status == 429 {
            assert_eq!(response_headers["retry-after"], "9");
        }
    }
}

#[tokio::test]
async fn the_log_entry_and_metrics_know_the_door() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.log");
    // A second logger reads the door's answer shape through a transformer (the whole
    // entry's `response` is the answer's text).
    let shapes = dir.path().join("shapes.log");
    let extra = format!(
        "[[loggers]]\nclass = \"lm_proxy.loggers.BaseLogger\"\nlog_writer = {{class = \"lm_proxy.loggers.JsonLogWriter\", file_name = {:?}}}\n\
         [[loggers]]\nclass = \"lm_proxy.loggers.BaseLogger\"\nlog_writer = {{class = \"lm_proxy.loggers.JsonLogWriter\", file_name = {:?}}}\n\
         [loggers.entry_transformer]\nclass = \"lm_proxy.loggers.LogEntryTransformer\"\n\
         connection = \"connection\"\nstream = \"request.stream\"\nshape = \"response.type\"\nfuture = \"response.zz_future_field\"\n",
        log.to_str().unwrap(),
        shapes.to_str().unwrap()
    );
    let (gw, _seen, _openai) = setup(&extra).await;
    let body =
        r#"{"model":"claude-real","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, _) = post_raw(&gw, "/v1/messages", &[JSON, ("x-api-key", "k1")], body).await;
    assert_eq!(status, 200);
    let stream = r#"{"model":"gpt-x","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, _) = post_raw(&gw, "/v1/messages", &[JSON, ("x-api-key", "k1")], stream).await;
    assert_eq!(status, 200);
    let (status, _) = gw.chat_json("k1", common::user("gpt-x", "hi")).await;
    assert_eq!(status, 200);

    let metrics = gw.metrics().await;
    for needle in [
        r#"endpoint="messages",status="200",connection="anth""#,
        r#"endpoint="chat/completions",status="200",connection="oai""#,
    ] {
        assert!(metrics.contains(needle), "{needle} in\n{metrics}");
    }

    gw.server.shutdown(Duration::from_secs(5));
    gw.server.wait().await.unwrap();
    let lines = common::json_lines(&log);
    let endpoints: Vec<&str> = lines
        .iter()
        .map(|l| l["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(endpoints.len(), 3);
    assert_eq!(endpoints.iter().filter(|e| **e == "messages").count(), 2);
    assert!(endpoints.contains(&"chat/completions"));
    // The whole entry's `response` is the answer's text (as on the chat door), streams
    // assembled; the loggers get the answers in the door's shape (the transformer's
    // paths), an upstream's unknown field included.
    let streamed = lines
        .iter()
        .find(|l| l["request"]["stream"] == true)
        .unwrap();
    assert_eq!(streamed["response"], "Hello world", "{streamed}");
    let native = lines.iter().find(|l| l["connection"] == "anth").unwrap();
    assert_eq!(native["response"], "Hi!", "{native}");
    let shapes = common::json_lines(&shapes);
    assert_eq!(shapes.len(), 3);
    let streamed = shapes.iter().find(|l| l["stream"] == true).unwrap();
    assert_eq!(streamed["shape"], "message", "{streamed}");
    let native = shapes.iter().find(|l| l["connection"] == "anth").unwrap();
    assert_eq!(native["future"]["a"], json!([]), "{native}");
}

#[tokio::test]
async fn upstream_failures_mid_stream_and_echoed_secrets() {
    let (gw, _seen, _openai) = setup("").await;
    let key = ("x-api-key", "k1");
    let body = r#"{"model":"claude-midfail","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, answer) = post_raw(&gw, "/v1/messages", &[JSON, key], body).await;
    assert_eq!(status, 200);
    let text = std::str::from_utf8(&answer).unwrap();
    let expected_start = format!("event: message_start\ndata: {}\n\n", EVENTS[0].1);
    assert!(text.starts_with(&expected_start), "{text}");
    let error = text
        .strip_prefix(&expected_start)
        .and_then(|rest| rest.strip_prefix("event: error\ndata: "))
        .unwrap_or_else(|| panic!("no error event: {text}"));
    let error: Value = serde_json::from_str(error.trim_end()).unwrap();
    assert_eq!(
        error,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );

    let body =
        r#"{"model":"claude-echo-key","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, answer) = post_raw(&gw, "/v1/messages", &[JSON, key], body).await;
    assert_eq!(status, 401);
    let text = String::from_utf8_lossy(&answer);
    assert!(!text.contains("sk-ant-upstream-secret"), "{text}");
    let error: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(error["error"]["type"], "authentication_error");
}

#[tokio::test]
async fn with_handlers_the_body_still_goes_up_as_written_unless_changed() {
    // A handler that changes nothing (the rate limiter) keeps the pass-through exact.
    let extra = "[[before]]\nclass = \"lm_proxy.handlers.RateLimiter\"\nmax_requests = 100\nwindow_seconds = 60\nper = \"api_key\"\n";
    let (gw, seen, _openai) = setup(extra).await;
    let body = "{\"model\":\"claude-alias\", \"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"x\":1.50}";
    let (status, _, _) = post_raw(&gw, "/v1/messages", &[JSON, ("x-api-key", "k1")], body).await;
    assert_eq!(status, 200);
    assert_eq!(
        std::str::from_utf8(&seen.last().2).unwrap(),
        body.replace("claude-alias", "claude-real")
    );
}

/// With no handler and no logger, the chat request for an OpenAI-compatible
/// upstream is written from the client's bytes (`messages::chat_body`); with a
/// handler it is built from the tree. Both send the same request, streamed or not.
#[tokio::test]
async fn the_chat_request_written_without_a_tree_is_the_translated_one() {
    let (bare, _, bare_upstream) = setup("").await;
    let extra = "[[before]]\nclass = \"lm_proxy.handlers.RateLimiter\"\nmax_requests = 100\nwindow_seconds = 60\nper = \"api_key\"\n";
    let (handled, _, handled_upstream) = setup(extra).await;
    let body = json!({"model": "gpt-agent", "max_tokens": 64,
        "system": [{"type": "text", "text": "You are an agent.", "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "lookup", "description": "Find people.",
                   "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}],
        "messages": [
            {"role": "user", "content": "Find them."},
            {"role": "assistant", "content": [{"type": "text", "text": "Looking."},
                {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "caf\u{e9}"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "none"},
                {"type": "text", "text": "Go on."}]}],
        "metadata": {"user_id": "u-1"}, "tool_choice": {"type": "auto"}});
    for stream in [false, true] {
        let mut body = body.clone();
        body["stream"] = json!(stream);
        let mut sent = Vec::new();
        for (gw, upstream) in [(&bare, &bare_upstream), (&handled, &handled_upstream)] {
            let (status, _, answer) = post_raw(
                gw,
                "/v1/messages",
                &[JSON, ("x-api-key", "k1")],
                body.to_string(),
            )
            .await;
            assert_eq!(status, 200, "{answer:?}");
            sent.push(upstream.last().body);
        }
        assert_eq!(sent[0].to_string(), sent[1].to_string());
        assert_eq!(
            sent[0]["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"q\":\"caf\u{e9}\"}"
        );
        assert_eq!(
            sent[0]["messages"][3],
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "none"})
        );
        assert_eq!(sent[0].get("stream_options").is_some(), stream);
    }
}
