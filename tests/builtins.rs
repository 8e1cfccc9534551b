//! The reference's built-ins, in Rust: RateLimiter, HTTPHeadersForwarder,
//! CheckAPIKeyWithRequest, BaseLogger/JsonLogWriter/LogEntryTransformer, Fallback,
//! api_key_id, trusted proxies for remote_addr, and live reload.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use common::process::{run_to_exit, write, Proc};
use common::{sse_chunks, user, MockUpstream, TestGateway};
use serde_json::{json, Value};

fn read_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is JSON ({e}): {l}")))
        .collect()
}

// ---------------------------------------------------------------- RateLimiter

const LIMITED: &str = r#"
[connections.mock]
api_type = "mock"
[routing]
"*" = "mock.*"
[groups.default]
api_keys = ["key-a", "key-b", "key-c"]
[[before]]
class = "lm_proxy.handlers.RateLimiter"
max_requests = 2
window_seconds = 2
per = "api_key"
[[before]]
class = "lm_proxy.handlers.RateLimiter"
max_requests = 4
window_seconds = 60
per = "connection"
"#;

#[tokio::test]
async fn rate_limiter_reference_scenario() {
    let gw = TestGateway::start(LIMITED).await;
    let status = |key: &'static str| {
        let gw = &gw;
        async move { gw.chat(key, user("m", "x")).await }
    };
    assert_eq!(status("key-a").await.status(), 200);
    assert_eq!(status("key-a").await.status(), 200);
    let rejected = status("key-a").await;
    assert_eq!(rejected.status(), 429);
    let retry_after: u64 = rejected.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=2).contains(&retry_after),
        "whole seconds until a slot frees: {retry_after}"
    );
    let body: Value = rejected.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(body["error"]["message"], "Rate limit exceeded: 2/2s");

    // A second key is unaffected by the first key's window...
    assert_eq!(status("key-b").await.status(), 200);
    assert_eq!(status("key-b").await.status(), 200);
    // ...but the connection-wide limit of 4 per minute is now reached.
    let body: Value = status("key-c").await.json().await.unwrap();
    assert_eq!(body["error"]["message"], "Rate limit exceeded: 4/60s");

    // The per-key window reopens after 2 s; the connection limit still holds
    // (rejected requests were not counted against the key window).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let body: Value = status("key-a").await.json().await.unwrap();
    assert_eq!(body["error"]["message"], "Rate limit exceeded: 4/60s");
}

/// `max_tokens`: the usage of finished answers (streamed or not) counts against the
/// key's window; once spent, requests get 429 before the upstream is called, and
/// other keys are unaffected. No request limit applies when only tokens are set.
#[tokio::test]
async fn rate_limiter_counts_tokens_from_usage() {
    let config = r#"
[connections.mock]
api_type = "mock"
[routing]
"*" = "mock.*"
[groups.default]
api_keys = ["key-a", "key-b"]
[[before]]
class = "lm_proxy.handlers.RateLimiter"
max_tokens = 60
window_seconds = 60
per = "api_key"
"#;
    let gw = TestGateway::start(config).await;
    let mut spent = 0;
    let mut answered = 0;
    while spent < 60 {
        let response = gw.chat("key-a", user("m", "count these words")).await;
        assert_eq!(response.status(), 200, "under the limit ({spent} spent)");
        let body: Value = response.json().await.unwrap();
        let usage = &body["usage"];
        spent +=
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap();
        answered += 1;
        assert!(answered < 100, "the mock's answers spend tokens");
    }
    let refused = gw.chat("key-a", user("m", "x")).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(
        body["error"]["message"],
        "Token rate limit exceeded: 60 tokens/60s"
    );

    // Streams count too: key-b streams until its window is spent (the client did
    // not ask for usage; the gateway asks the upstream for it).
    let mut streams = 0;
    loop {
        let mut request = user("m", "count these words");
        request["stream"] = json!(true);
        let response = gw.chat("key-b", request).await;
        if response.status() == 429 {
            break;
        }
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        assert!(
            !text.contains("\"usage\":{"),
            "no usage chunk the client did not ask for"
        );
        streams += 1;
        assert!(streams < 100, "streams must spend the window");
    }
    assert!(streams >= 1);
    assert_eq!(gw.chat("key-a", user("m", "x")).await.status(), 429);
}

#[tokio::test]
async fn rate_limiter_never_admits_more_than_the_limit_under_concurrency() {
    let config = LIMITED
        .replace(
            "max_requests = 2\nwindow_seconds = 2",
            "max_requests = 10\nwindow_seconds = 60",
        )
        .replace("max_requests = 4", "max_requests = 1000");
    let gw = Arc::new(TestGateway::start(&config).await);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            gw.chat("key-a", user("m", "x")).await.status().as_u16()
        }));
    }
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, limited), (10, 54));
}

#[tokio::test]
async fn per_ip_limits_cannot_be_dodged_with_forged_headers() {
    let config = format!(
        "trusted_proxies = []\n{}",
        LIMITED
            .replace("per = \"api_key\"", "per = \"ip\"")
            .replace("max_requests = 4", "max_requests = 1000")
    );
    let gw = TestGateway::start(&config).await;
    let mut statuses = Vec::new();
    for i in 0..3 {
        let response = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth("key-a")
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .header("x-real-ip", format!("198.51.100.{i}"))
            .json(&user("m", "x"))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);
}

// ------------------------------------------------------- HTTPHeadersForwarder

#[tokio::test]
async fn headers_forwarder_copies_safe_headers_only() {
    let upstream = MockUpstream::start().await;
    let config = format!(
        r#"
[connections.up]
api_type = "open_ai"
api_base = "{}"
api_key = "sk-upstream"
[connections.up.http_headers]
X-Static = "static"
[routing]
"*" = "up.*"
[groups.default]
api_keys = ["client-key"]
[[before]]
class = "lm_proxy.handlers.HTTPHeadersForwarder"
white_list_headers = ["X-Tenant", "x-trace-id", "Authorization"]
"#,
        upstream.base()
    );
    let gw = TestGateway::start(&config).await;
    let response = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("client-key")
        .header("x-tenant", "acme")
        .header("X-Trace-Id", "t-1")
        .header("x-not-listed", "nope")
        .json(&user("m", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.last().headers;
    assert_eq!(seen["x-tenant"], "acme");
    assert_eq!(seen["x-trace-id"], "t-1");
    assert_eq!(seen["x-static"], "static");
    assert!(seen.get("x-not-listed").is_none());
    assert_eq!(
        seen["authorization"], "Bearer sk-upstream",
        "the client's key never goes upstream"
    );
}

#[tokio::test]
async fn forwarded_client_headers_never_replace_the_operators_headers() {
    let upstream = MockUpstream::start().await;
    // A minimal Anthropic Messages API that records the headers it was sent.
    let anthropic_seen = Arc::new(std::sync::Mutex::new(Vec::<HeaderMap>::new()));
    let sink = anthropic_seen.clone();
    let app = axum::Router::new().route(
        "/v1/messages",
        axum::routing::post(move |headers: HeaderMap| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(headers);
                axum::Json(
                    json!({"id": "msg_1", "type": "message", "role": "assistant",
                    "model": "claude-x", "content": [{"type": "text", "text": "hi"}],
                    "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}}),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let anthropic = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = format!(
        r#"
[connections.up]
api_type = "open_ai"
api_base = "{}"
api_key = "sk-upstream"
[connections.up.http_headers]
OpenAI-Organization = "org-operator"
OpenAI-Project = "proj-operator"
[connections.ant]
api_type = "anthropic"
api_base = "http://{anthropic}"
api_key = "sk-ant-upstream"
anthropic_version = "2023-06-01"
[routing]
"claude-*" = "ant.*"
"*" = "up.*"
[groups.default]
api_keys = ["client-key"]
[[before]]
class = "lm_proxy.handlers.HTTPHeadersForwarder"
"#,
        upstream.base()
    );
    let gw = TestGateway::start(&config).await;
    for model in ["gpt-x", "claude-x"] {
        let response = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth("client-key")
            .header("OpenAI-Organization", "org-attacker")
            .header("OpenAI-Project", "proj-attacker")
            .header("anthropic-version", "1999-01-01")
            .header("x-goog-user-project", "attacker-project")
            .header("X-Forwarded-For", "6.6.6.6")
            .header("Forwarded", "for=6.6.6.6")
            .header("X-Real-IP", "6.6.6.6")
            .header("x-tenant", "acme")
            .json(&user(model, "x"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{model}");
    }
    let seen = upstream.last().headers;
    assert_eq!(seen["openai-organization"], "org-operator");
    assert_eq!(seen["openai-project"], "proj-operator");
    assert_eq!(seen["authorization"], "Bearer sk-upstream");
    assert_eq!(seen["x-tenant"], "acme", "ordinary headers still pass");
    let ant = anthropic_seen.lock().unwrap().pop().unwrap();
    assert_eq!(ant["anthropic-version"], "2023-06-01");
    assert_eq!(ant["x-api-key"], "sk-ant-upstream");
    assert_eq!(ant["x-tenant"], "acme");
    for seen in [&seen, &ant] {
        for name in ["x-forwarded-for", "forwarded", "x-real-ip"] {
            assert!(seen.get(name).is_none(), "{name} was forwarded: {seen:?}");
        }
    }
}

// ---------------------------------------------------- CheckAPIKeyWithRequest

struct AuthService {
    url: String,
    calls: Arc<AtomicUsize>,
}

/// A userinfo-like service: `Bearer good-*` → 200 with user info; else 401.
async fn auth_service(delay: Duration) -> AuthService {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().route(
        "/userinfo/{tenant}",
        axum::routing::post(move |axum::extract::Path(tenant): axum::extract::Path<String>, headers: HeaderMap| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
                match auth.strip_prefix("Bearer good-") {
                    Some(user) => axum::Json(json!({"sub": user, "tenant": tenant, "role": match user { "admin" => "admins", "ghost" => "ghosts", _ => "default" }})).into_response_ok(),
                    None => (StatusCode::UNAUTHORIZED, "no").into_response_ok(),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    AuthService {
        url: format!("http://{addr}"),
        calls,
    }
}

trait IntoResponseOk {
    fn into_response_ok(self) -> axum::response::Response;
}
impl<T: axum::response::IntoResponse> IntoResponseOk for T {
    fn into_response_ok(self) -> axum::response::Response {
        self.into_response()
    }
}

fn with_request_config(auth_url: &str, extra: &str) -> String {
    format!(
        r#"
[connections.mock]
api_type = "mock"
[connections.premium]
api_type = "mock"
[routing]
"premium" = "premium.*"
"*" = "mock.*"
[groups.default]
allowed_connections = "mock"
[groups.admins]
[api_key_check]
class = "lm_proxy.api_key_check.CheckAPIKeyWithRequest"
method = "POST"
url = "{auth_url}/userinfo/{{api_key}}"
response_as_user_info = true
group_field = "role"
{extra}
[api_key_check.headers]
Authorization = "Bearer {{api_key}}"
"#
    )
}

#[tokio::test]
async fn key_check_with_request_substitutes_the_key_and_reads_the_group() {
    let auth = auth_service(Duration::ZERO).await;
    let gw = TestGateway::start(&with_request_config(&auth.url, "")).await;
    assert_eq!(gw.chat("good-alice", user("m", "x")).await.status(), 200);
    let (status, body) = gw.chat_json("good-alice", user("premium", "x")).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "alice is in `default`, which may not use premium"
    );
    assert_eq!(body["error"]["code"], "connection_not_allowed");
    assert_eq!(
        gw.chat("good-admin", user("premium", "x")).await.status(),
        200
    );
    let (status, body) = gw.chat_json("bad-key", user("m", "x")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(
        auth.calls.load(Ordering::SeqCst),
        4,
        "no cache: one call per request"
    );
}

/// A key check may answer with a group the config does not define (here the
/// service says `ghosts`): that group may use no connection and sees no model.
#[tokio::test]
async fn a_group_the_config_does_not_define_is_denied_everything() {
    let auth = auth_service(Duration::ZERO).await;
    let gw = TestGateway::start(&with_request_config(&auth.url, "")).await;
    for model in ["m", "premium"] {
        let (status, body) = gw.chat_json("good-ghost", user(model, "x")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{model}: {body}");
        assert_eq!(body["error"]["code"], "connection_not_allowed", "{body}");
    }
    let response = gw
        .client
        .get(gw.url("/v1/models"))
        .bearer_auth("good-ghost")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let listing: Value = response.json().await.unwrap();
    assert_eq!(listing["data"], json!([]), "{listing}");
    // The same service's configured groups work, so the check itself answered.
    assert_eq!(gw.chat("good-alice", user("m", "x")).await.status(), 200);
    let listing: Value = gw
        .client
        .get(gw.url("/v1/models"))
        .bearer_auth("good-alice")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(listing["data"], json!([]), "{listing}");
}

#[tokio::test]
async fn key_check_cache_makes_one_call_for_concurrent_checks_of_a_key() {
    let auth = auth_service(Duration::from_millis(200)).await;
    let gw = Arc::new(
        TestGateway::start(&with_request_config(
            &auth.url,
            "use_cache = true\ncache_ttl = 60",
        ))
        .await,
    );
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move { gw.chat("good-bob", user("m", "x")).await.status().as_u16() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(auth.calls.load(Ordering::SeqCst), 1);
    assert_eq!(gw.chat("good-bob", user("m", "x")).await.status(), 200);
    assert_eq!(
        auth.calls.load(Ordering::SeqCst),
        1,
        "served from the cache"
    );
}

#[tokio::test]
async fn key_check_fails_closed() {
    // Nothing listens on this port.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let gw = TestGateway::start(&with_request_config(&dead_url, "")).await;
    let (status, body) = gw.chat_json("good-alice", user("m", "x")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "invalid_api_key");

    // A service slower than the timeout rejects too.
    let slow = auth_service(Duration::from_secs(60)).await;
    let gw = TestGateway::start(&with_request_config(&slow.url, "timeout = 0.3")).await;
    let started = Instant::now();
    let (status, _) = gw.chat_json("good-alice", user("m", "x")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Far below the service's 60 s: the 0.3 s timeout applied.
    assert!(started.elapsed() < Duration::from_secs(30));
}

// ------------------------------------------------------------------- Loggers

fn logger_config(log_path: &std::path::Path, upstream: &MockUpstream) -> String {
    format!(
        r#"
encryption_key = "log-test-key"
[connections.mock]
api_type = "mock"
[connections.up]
api_type = "open_ai"
api_base = "{base}"
[routing]
"up-tools" = "up.tools"
"up-status-500" = "up.status-500"
"up-*" = "up.*"
"*" = "mock.*"
[groups.default]
api_keys = ["client-key-1"]
[[loggers]]
class = "lm_proxy.loggers.BaseLogger"
[loggers.log_writer]
class = "lm_proxy.loggers.log_writers.JsonLogWriter"
file_name = {log:?}
[loggers.entry_transformer]
class = "lm_proxy.loggers.LogEntryTransformer"
completion_tokens = "response.usage.completion_tokens"
prompt = "request.messages"
first_text = "request.messages.0.content"
answer = "response.choices.0.message.content"
tool_args = "response.choices.0.message.tool_calls.0.function.arguments"
group = "group"
connection = "connection"
api_key_id = "api_key_id"
remote_addr = "remote_addr"
created_at = "created_at"
duration = "duration"
error = "error.code"
nothing = "response.no.such.path"
"#,
        base = upstream.base(),
        log = log_path.to_str().unwrap()
    )
}

#[tokio::test]
async fn json_logger_writes_one_transformed_line_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("nested/dir/requests.log");
    let upstream = MockUpstream::start().await;
    let gw = TestGateway::start(&logger_config(&log_path, &upstream)).await;

    let (status, _) = gw
        .chat_json("client-key-1", user("m", "hello logger"))
        .await;
    assert_eq!(status, 200);
    let mut streamed = user("up-tools", "weather?");
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let text = gw
        .chat("client-key-1", streamed)
        .await
        .text()
        .await
        .unwrap();
    assert!(sse_chunks(&text).1);
    let mut plain_stream = user("m", "stream me");
    plain_stream["stream"] = json!(true);
    plain_stream["stream_options"] = json!({"include_usage": true});
    gw.chat("client-key-1", plain_stream)
        .await
        .text()
        .await
        .unwrap();
    let (status, _) = gw
        .chat_json("client-key-1", user("up-status-500", "x"))
        .await;
    assert_eq!(status, 502);
    let (status, _) = gw.chat_json("wrong-key", user("m", "x")).await;
    assert_eq!(status, 401);

    gw.server.shutdown(Duration::from_secs(5));
    gw.server.wait().await.unwrap();
    let lines = read_lines(&log_path);
    assert_eq!(lines.len(), 5, "{lines:#?}");

    let first = &lines[0];
    assert_eq!(first["first_text"], "hello logger");
    assert_eq!(
        first["prompt"],
        json!([{"role": "user", "content": "hello logger"}])
    );
    assert_eq!(first["answer"], "You said: hello logger");
    assert_eq!(first["completion_tokens"], 4);
    assert_eq!(first["group"], "default");
    assert_eq!(first["connection"], "mock");
    assert_eq!(first["remote_addr"], "127.0.0.1");
    assert_eq!(first["nothing"], Value::Null);
    assert_eq!(first["error"], Value::Null);
    assert_eq!(
        first["api_key_id"],
        lm_proxy::auth::api_key_id("log-test-key", "client-key-1")
    );
    assert!(
        first["created_at"].as_str().unwrap().ends_with('Z'),
        "ISO 8601: {}",
        first["created_at"]
    );
    assert!(first["duration"].as_f64().unwrap() >= 0.0);

    // Streamed requests are logged with the assembled answer and usage.
    assert_eq!(lines[1]["tool_args"], "{\"city\":\"Oslo\"}");
    assert_eq!(lines[1]["completion_tokens"], 6);
    assert_eq!(lines[2]["answer"], "You said: stream me");
    assert_eq!(lines[2]["completion_tokens"], 4);
    assert_eq!(lines[3]["error"], "upstream_error");
    assert_eq!(lines[4]["error"], "invalid_api_key");
    let raw = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !raw.contains("client-key-1"),
        "the client key never reaches the log"
    );
}

#[tokio::test]
async fn default_log_entry_is_the_whole_context_without_http_request() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("all.log");
    let config = format!(
        "[connections.mock]\napi_type = \"mock\"\n[routing]\n\"*\" = \"mock.*\"\n[api_key_check]\nclass = \"lm_proxy.api_key_check.AllowAll\"\n[[loggers]]\nclass = \"lm_proxy.loggers.BaseLogger\"\nlog_writer = {{class = \"lm_proxy.loggers.JsonLogWriter\", file_name = {:?}}}\n",
        log_path.to_str().unwrap()
    );
    let gw = TestGateway::start(&config).await;
    assert_eq!(
        gw.chat("any-secret-key", user("m", "x")).await.status(),
        200
    );
    gw.server.shutdown(Duration::from_secs(5));
    gw.server.wait().await.unwrap();
    let lines = read_lines(&log_path);
    assert_eq!(lines.len(), 1);
    let keys: Vec<&str> = lines[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for key in [
        "id",
        "request",
        "response",
        "error",
        "group",
        "connection",
        "model",
        "llm_params",
        "api_key_id",
        "remote_addr",
        "created_at",
        "duration",
        "user_info",
        "extra",
    ] {
        assert!(keys.contains(&key), "{key} in {keys:?}");
    }
    assert!(!keys.contains(&"http_request"));
    // The answer as the reference's JSON log wrote it: its text.
    assert_eq!(lines[0]["response"], "You said: x");
    assert_eq!(
        lines[0]["user_info"]["api_key"], "***",
        "AllowAll's captured key is redacted in logs"
    );
    assert!(!std::fs::read_to_string(&log_path)
        .unwrap()
        .contains("any-secret-key"));
}

#[tokio::test(flavor = "multi_thread")]

async fn sigterm_right_after_the_last_answer_loses_no_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = MockUpstream::start().await;
    let log_path = dir.path().join("logs/requests.log");
    write(
        dir.path(),
        "config.toml",
        &logger_config(&log_path, &upstream),
    );
    let dir_path = dir.path().to_path_buf();
    let n = 40;
    tokio::task::spawn_blocking(move || {
        let mut proc = Proc::start(&dir_path, &["--env", ""], &[]);
        let client = reqwest::blocking::Client::new();
        for i in 0..n {
            let mut body = user(
                if i % 3 == 0 { "up-x" } else { "m" },
                &format!("request {i}"),
            );
            if i % 2 == 0 {
                body["stream"] = json!(true);
            }
            let response = client
                .post(format!("{}/v1/chat/completions", proc.url))
                .bearer_auth("client-key-1")
                .json(&body)
                .send()
                .unwrap();
            assert_eq!(response.status(), 200);
            response.text().unwrap();
        }
        proc.signal("-TERM");
        assert!(proc.wait_exit(Duration::from_secs(15)).success());
    })
    .await
    .unwrap();
    assert_eq!(read_lines(&log_path).len(), n);
}

#[test]
fn unwritable_log_path_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "blocker", "a file where a folder should be");
    let bad = dir.path().join("blocker/requests.log");
    let config = format!(
        "[connections.mock]\napi_type = \"mock\"\n[[loggers]]\nclass = \"lm_proxy.loggers.BaseLogger\"\nlog_writer = {{class = \"lm_proxy.loggers.JsonLogWriter\", file_name = {:?}}}\n",
        bad.to_str().unwrap()
    );
    write(dir.path(), "config.toml", &config);
    let (code, _, stderr) = run_to_exit(dir.path(), &["--env", "", "--port", "0"], &[]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("loggers[0].log_writer.file_name")
            && stderr.contains("cannot open log file"),
        "{stderr}"
    );
}

// ------------------------------------------------------------------ Fallback

#[tokio::test]
async fn fallback_tries_connections_in_order() {
    let upstream = MockUpstream::start().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let config = format!(
        r#"
[connections.dead]
api_type = "open_ai"
api_base = "http://127.0.0.1:{dead_port}/v1"
[connections.up]
api_type = "open_ai"
api_base = "{base}"
[connections.chain]
class = "lm_proxy.strategies.Fallback"
connections = ["dead", "up.served-by-second"]
[connections.chain_dict]
class = "lm_proxy.strategies.Fallback"
[connections.chain_dict.connections]
up = {{ model = "status-500" }}
dead = {{}}
[routing]
"dict-*" = "chain_dict.*"
"*" = "chain.*"
[groups.default]
api_keys = ["k"]
"#,
        base = upstream.base()
    );
    let gw = TestGateway::start(&config).await;
    let (status, body) = gw.chat_json("k", user("anything", "x")).await;
    assert_eq!(status, 200);
    assert_eq!(body["model"], "served-by-second");

    let mut streamed = user("anything", "x");
    streamed["stream"] = json!(true);
    let text = gw.chat("k", streamed).await.text().await.unwrap();
    let (chunks, done) = sse_chunks(&text);
    assert!(
        done && chunks.iter().all(|c| c.get("error").is_none()),
        "{text}"
    );
    assert_eq!(upstream.last().body["model"], "served-by-second");

    // Every member fails: the last failure is answered.
    let (status, body) = gw.chat_json("k", user("dict-x", "x")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(upstream.last().body["model"], "status-500");
}

#[test]
fn fallback_needs_two_known_connections() {
    let dir = tempfile::tempdir().unwrap();
    for (connections, needle) in [
        ("[\"m\"]", "at least two"),
        ("[\"m\", \"nope\"]", "unknown connection 'nope'"),
    ] {
        let config = format!(
            "[connections.m]\napi_type = \"mock\"\n[connections.f]\nclass = \"lm_proxy.strategies.Fallback\"\nconnections = {connections}\n"
        );
        write(dir.path(), "config.toml", &config);
        let (code, _, stderr) = run_to_exit(dir.path(), &["--env", "", "--port", "0"], &[]);
        assert_eq!(code, 1);
        assert!(
            stderr.contains("connections.f.connections") && stderr.contains(needle),
            "{stderr}"
        );
    }
}

// -------------------------------------------------------------- Live reload

#[tokio::test]
async fn reload_swaps_valid_configs_and_keeps_streams_alive() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = MockUpstream::start().await;
    let base = format!(
        "[connections.up]\napi_type = \"open_ai\"\napi_base = \"{}\"\n[routing]\n\"*\" = \"up.*\"\n",
        upstream.base()
    );
    let path = write(
        dir.path(),
        "config.toml",
        &format!("{base}[groups.default]\napi_keys = [\"old-key\"]\n"),
    );
    let gw = TestGateway::start_file(&path).await;

    // A stream that is open while the config changes.
    let mut slow = user("slow-stream", "x");
    slow["stream"] = json!(true);
    let mut open_stream = gw.chat("old-key", slow).await;
    let first = open_stream.chunk().await.unwrap().unwrap();

    write(
        dir.path(),
        "config.toml",
        &format!("{base}[groups.default]\napi_keys = [\"new-key\"]\n"),
    );
    let resolver = lm_proxy::extensions::NativeResolver;
    assert!(
        lm_proxy::server::reload::reload(&gw.server.state, &resolver, &Default::default()).await
    );
    assert_eq!(gw.chat("new-key", user("m", "x")).await.status(), 200);
    assert_eq!(gw.chat("old-key", user("m", "x")).await.status(), 401);

    // An invalid config is rejected and the current one keeps serving.
    write(dir.path(), "config.toml", &format!("{base}[routing2]\n"));
    assert!(
        !lm_proxy::server::reload::reload(&gw.server.state, &resolver, &Default::default()).await
    );
    assert_eq!(gw.chat("new-key", user("m", "x")).await.status(), 200);

    let mut text = String::from_utf8_lossy(&first).into_owned();
    while let Some(chunk) = open_stream.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let (chunks, done) = sse_chunks(&text);
    assert!(
        done && chunks.iter().all(|c| c.get("error").is_none()),
        "the open stream finished: {text}"
    );
}

#[test]
fn sighup_and_dev_autoreload_reread_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = |key: &str, autoreload: bool| {
        format!(
            "dev_autoreload = {autoreload}\n[connections.mock]\napi_type = \"mock\"\n[routing]\n\"*\" = \"mock.*\"\n[groups.default]\napi_keys = [\"{key}\"]\n"
        )
    };
    // reqwest is built without a default TLS provider; the client needs one installed.
    lm_proxy::server::install_crypto_provider();
    let client = reqwest::blocking::Client::new();
    let status = |proc: &Proc, key: &str| {
        client
            .post(format!("{}/v1/chat/completions", proc.url))
            .bearer_auth(key)
            .json(&user("m", "x"))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let wait_for = |proc: &Proc, needle: &str, count: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while proc.log().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in log: {}",
                proc.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    // SIGHUP
    write(dir.path(), "config.toml", &config("key-1", false));
    let proc = Proc::start(dir.path(), &["--env", ""], &[]);
    assert_eq!(status(&proc, "key-1"), 200);
    write(dir.path(), "config.toml", &config("key-2", false));
    proc.signal("-HUP");
    wait_for(&proc, "config reloaded", 1);
    assert_eq!(status(&proc, "key-2"), 200);
    assert_eq!(status(&proc, "key-1"), 401);
    write(dir.path(), "config.toml", "this is = not valid toml [");
    proc.signal("-HUP");
    wait_for(&proc, "reload rejected", 1);
    assert_eq!(status(&proc, "key-2"), 200);
    drop(proc);

    // dev_autoreload: a file change is enough.
    write(dir.path(), "config.toml", &config("key-3", true));
    let proc = Proc::start(dir.path(), &["--env", ""], &[]);
    wait_for(&proc, "watching", 1);
    write(dir.path(), "config.toml", &config("key-4", true));
    wait_for(&proc, "config reloaded", 1);
    assert_eq!(status(&proc, "key-4"), 200);
}
