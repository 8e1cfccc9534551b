//! Issue 20, items 3, 7 and 11, tried as an attacker would: upstreams that echo the
//! credentials they were sent in every field and header they have (OpenAI-compatible,
//! OpenRouter's error-in-a-chunk passed through raw, Anthropic, Gemini, a Vertex
//! token endpoint quoting the form it received), and an upstream value with line
//! breaks and terminal escapes. The built binary runs with debug mode off and on;
//! no secret, in any encoding, may reach a response body, a response header, stderr
//! or the JSON log, and every stderr line must be one event.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::process::{write, Proc};
use common::user;
use serde_json::{json, Value};

/// With `/` and `+`, so that its JSON-escaped (`\/`) and percent-encoded forms differ
/// from it.
const PROVIDER_KEY: &str = "sk-PROV/SECRET+7f3a9c21";
const ANTHROPIC_KEY: &str = "sk-ant-SECRET-0b1c2d3e";
const GEMINI_KEY: &str = "AIza-GEMINI-SECRET-55aa";
const CLIENT_KEY: &str = "client-SECRET-44d1e0b7";
const VERTEX_CLIENT_SECRET: &str = "vtx-CLIENT-SECRET-d00d";
const VERTEX_REFRESH_TOKEN: &str = "1//vtx-REFRESH/SECRET+tok";
/// A throwaway service-account key (tests/fixtures/README.md).
const TEST_KEY_PEM: &str = include_str!("fixtures/vertex-test-key.pem");
/// Signed assertions the token endpoint received (each a credential for an hour).
static ASSERTIONS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
/// What a forged log line would start with.
const FORGED: &str = "2026-01-01T00:00:00.000000Z  INFO lm_proxy::request: FORGED";

/// Every form of a secret that must never come out: as it is, JSON-escaped, and
/// form-encoded (upper and lower hex).
fn forms(secret: &str) -> Vec<String> {
    let form: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    vec![
        secret.to_owned(),
        secret.replace('/', "\\/"),
        form.clone(),
        form.to_ascii_lowercase(),
    ]
}

fn all_secret_forms() -> Vec<String> {
    [
        PROVIDER_KEY,
        ANTHROPIC_KEY,
        GEMINI_KEY,
        CLIENT_KEY,
        VERTEX_CLIENT_SECRET,
        VERTEX_REFRESH_TOKEN,
    ]
    .iter()
    .flat_map(|s| forms(s))
    // The start of a key cut in two.
    .chain(["sk-PROV".to_owned()])
    .collect()
}

/// What an echoing upstream puts in a field: everything it knows, in raw and
/// JSON-escaped form (the test writes the JSON text itself where that matters).
fn echo(auth: &str) -> String {
    format!("got {auth} for {CLIENT_KEY}")
}

fn bearer(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

fn sse(events: &[String]) -> Response {
    let mut body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    body.push_str("data: [DONE]\n\n");
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from(body))
        .unwrap()
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// The OpenAI-compatible upstream: by model.
async fn openai(headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = body["model"].as_str().unwrap_or("").to_owned();
    let auth = bearer(&headers, "authorization");
    let e = echo(&auth);
    let chunk_head =
        r#""id":"chatcmpl-r","object":"chat.completion.chunk","created":1700000000,"model":"m""#;
    match model.as_str() {
        // Every field of the error, and the Retry-After header.
        "fields-429" => {
            let mut r = json_response(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": {"message": e, "type": e, "param": e, "code": e}}),
            );
            r.headers_mut()
                .insert("retry-after", auth.parse().unwrap());
            r
        }
        "fields-500" => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": {"message": e, "type": e, "code": e}}),
        ),
        // Plain text longer than the 500 bytes kept: the cut falls inside the key.
        "plain-400" => (StatusCode::BAD_REQUEST, format!("{} {e}", "x".repeat(476))).into_response(),
        // A mid-stream error event.
        "stream-error-event" => sse(&[
            format!(r#"{{{chunk_head},"choices":[{{"index":0,"delta":{{"content":"a"}}}}]}}"#),
            json!({"error": {"message": e, "type": e, "param": e, "code": e}}).to_string(),
        ]),
        // OpenRouter: an error inside a chunk that also has `choices`, passed through
        // raw; the key written JSON-escaped (`\/`) as some encoders do.
        "openrouter-stream" => sse(&[format!(
            r#"{{{chunk_head},"choices":[{{"index":0,"delta":{{"content":""}},"finish_reason":"error"}}],"error":{{"code":"{k}","message":"provider said {k} / {c}","metadata":{{"raw":"{k}"}}}}}}"#,
            k = auth.replace('/', "\\/"),
            c = CLIENT_KEY
        )]),
        "openrouter-complete" => (
            [("content-type", "application/json")],
            format!(
                r#"{{"id":"chatcmpl-r","object":"chat.completion","created":1,"model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":""}},"finish_reason":"error","error":{{"message":"{k}"}}}}],"error":{{"message":"{k}","code":"{c}"}}}}"#,
                k = auth.replace('/', "\\/"),
                c = CLIENT_KEY
            ),
        )
            .into_response(),
        _ => json_response(StatusCode::NOT_FOUND, json!({"error": {"message": "?"}})),
    }
}

/// The Anthropic Messages API: errors carrying the key in `type` and `message`.
async fn anthropic(headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let e = echo(&bearer(&headers, "x-api-key"));
    let error = json!({"type": "error", "error": {"type": e, "message": e}});
    if body["stream"].as_bool() == Some(true) {
        let start = json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": [], "stop_reason": null, "usage": {"input_tokens": 1, "output_tokens": 0}}});
        let text =
            format!("event: message_start\ndata: {start}\n\nevent: error\ndata: {error}\n\n");
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from(text))
            .unwrap();
    }
    let mut r = json_response(StatusCode::TOO_MANY_REQUESTS, error);
    r.headers_mut().insert(
        "retry-after",
        bearer(&headers, "x-api-key").parse().unwrap(),
    );
    r
}

/// Gemini: a Google error with the key, or an answer whose finishReason holds a
/// forged log line.
async fn gemini(Path(action): Path<String>, headers: HeaderMap) -> Response {
    let key = bearer(&headers, "x-goog-api-key");
    if action.starts_with("gem-finish") {
        let reason = format!("STOP\n{FORGED}\r\u{1b}[2K\u{1b}[31mred\u{9b}x\u{2028}y");
        let answer = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}, "finishReason": reason, "index": 0}],
            "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2}});
        if action.contains("streamGenerateContent") {
            return Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from(format!("data: {answer}\n\n")))
                .unwrap();
        }
        return axum::Json(answer).into_response();
    }
    let e = echo(&key);
    let mut r = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        json!({"error": {"code": 429, "message": e, "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": e}]}}),
    );
    r.headers_mut().insert("retry-after", key.parse().unwrap());
    r
}

/// An OAuth token endpoint that refuses the grant and quotes it: the form body as
/// received (refresh token percent-encoded) and each field decoded.
async fn token(body: Bytes) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    if let Some(assertion) = form.get("assertion") {
        ASSERTIONS.lock().unwrap().push(assertion.clone());
    }
    let received = String::from_utf8_lossy(&body).into_owned();
    json_response(
        StatusCode::BAD_REQUEST,
        json!({
            "error": "invalid_grant",
            "error_description": format!(
                "bad grant {received} (secret {} token {} assertion {})",
                form.get("client_secret").cloned().unwrap_or_default(),
                form.get("refresh_token").cloned().unwrap_or_default(),
                form.get("assertion").cloned().unwrap_or_default()
            ),
        }),
    )
}

async fn start_upstream() -> SocketAddr {
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(openai))
        .route("/v1/messages", post(anthropic))
        .route("/v1beta/models/{action}", post(gemini))
        .route("/token", post(token));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

/// (model, stream, expected status)
const CASES: &[(&str, bool, u16)] = &[
    ("fields-429", false, 429),
    ("fields-429", true, 429),
    ("fields-500", false, 502),
    ("plain-400", false, 400),
    ("stream-error-event", true, 200),
    ("openrouter-stream", true, 200),
    ("openrouter-complete", false, 200),
    ("ant-x", false, 429),
    ("ant-x", true, 200),
    ("gem-error", false, 429),
    ("gem-error", true, 429),
    ("vtx-x", false, 502),
    ("vtx-x", true, 502),
    ("vsa-x", false, 502),
];

#[tokio::test(flavor = "multi_thread")]
async fn echoed_credentials_never_leave_in_any_field_or_encoding() {
    let addr = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("requests.log");
    let credentials = write(
        dir.path(),
        "adc.json",
        &json!({"type": "authorized_user", "client_id": "vtx-client-id",
            "client_secret": VERTEX_CLIENT_SECRET, "refresh_token": VERTEX_REFRESH_TOKEN,
            "token_uri": format!("http://{addr}/token")})
        .to_string(),
    );
    let service_account = write(
        dir.path(),
        "sa.json",
        &json!({"type": "service_account", "client_email": "proxy@p.iam.gserviceaccount.com",
            "private_key": TEST_KEY_PEM, "token_uri": format!("http://{addr}/token")})
        .to_string(),
    );
    let config = format!(
        r#"
[connections.up]
api_type = "open_ai"
api_base = "http://{addr}/v1"
api_key = "{PROVIDER_KEY}"
timeout = 5
[connections.ant]
api_type = "anthropic"
api_base = "http://{addr}"
api_key = "{ANTHROPIC_KEY}"
timeout = 5
[connections.gem]
api_type = "google"
api_base = "http://{addr}"
api_key = "{GEMINI_KEY}"
timeout = 5
[connections.vtx]
api_type = "google_vertex_ai"
api_base = "http://{addr}"
google_vertex_project_id = "p"
google_vertex_credentials = {credentials:?}
timeout = 5
[connections.vsa]
api_type = "google_vertex_ai"
api_base = "http://{addr}"
google_vertex_project_id = "p"
google_vertex_credentials = {service_account:?}
timeout = 5
[routing]
"ant-*" = "ant.*"
"gem-*" = "gem.*"
"vtx-*" = "vtx.*"
"vsa-*" = "vsa.*"
"*" = "up.*"
[groups.default]
api_keys = ["{CLIENT_KEY}"]
[[loggers]]
class = "lm_proxy.loggers.BaseLogger"
log_writer = {{ class = "lm_proxy.loggers.JsonLogWriter", file_name = {log:?} }}
"#,
        credentials = credentials.to_str().unwrap(),
        service_account = service_account.to_str().unwrap(),
        log = log_path.to_str().unwrap()
    );
    write(dir.path(), "config.toml", &config);
    for debug in ["0", "1"] {
        let dir_path = dir.path().to_path_buf();
        let (answers, log) = tokio::task::spawn_blocking(move || {
            let mut proc = Proc::start(&dir_path, &["--env", ""], &[("LM_PROXY_DEBUG", debug)]);
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap();
            let mut answers = Vec::new();
            for (model, stream, _) in CASES {
                let mut body = user(model, "x");
                if *stream {
                    body["stream"] = json!(true);
                }
                let response = client
                    .post(format!("{}/v1/chat/completions", proc.url))
                    .bearer_auth(CLIENT_KEY)
                    .json(&body)
                    .send()
                    .unwrap();
                let status = response.status().as_u16();
                let headers = format!("{:?}", response.headers());
                answers.push((
                    format!("{model} stream={stream}"),
                    status,
                    headers,
                    response.text().unwrap_or_default(),
                ));
            }
            proc.signal("-TERM");
            assert!(proc.wait_exit(Duration::from_secs(15)).success());
            (answers, proc.log_after_exit())
        })
        .await
        .unwrap();

        let assertions = ASSERTIONS.lock().unwrap().clone();
        assert!(
            !assertions.is_empty(),
            "the service account asked for a token"
        );
        let secrets: Vec<String> = all_secret_forms()
            .into_iter()
            .chain(assertions.iter().flat_map(|a| forms(a)))
            .chain(["BEGIN PRIVATE KEY".to_owned()])
            .collect();
        // Every leak is listed (not only the first), so a failure shows them all.
        let mut leaks = Vec::new();
        let mut check = |place: &str, text: &str| {
            for secret in secrets.iter().map(String::as_str).chain(["SECRET"]) {
                if text.contains(secret) {
                    leaks.push(format!("debug={debug} {place} leaks {secret}: {text}"));
                }
            }
        };
        for ((case, status, headers, body), (_, _, expected)) in answers.iter().zip(CASES) {
            assert_eq!(status, expected, "debug={debug} {case}: {body}");
            check(&format!("{case} body"), body);
            check(&format!("{case} headers"), headers);
        }
        for line in log.lines() {
            check("stderr", line);
        }
        assert!(leaks.is_empty(), "{}", leaks.join("\n"));
        // The OpenRouter chunk still reaches the client, with its error, redacted.
        let (_, _, _, body) = &answers[5];
        assert!(body.contains("provider said Bearer *** / ***"), "{body}");
        // The paths were exercised: redacted errors were seen.
        assert!(
            answers.iter().any(|(_, _, _, body)| body.contains("***")),
            "debug={debug}: no redaction seen"
        );
        // The token endpoint's refusal was logged (always), redacted.
        assert!(
            log.lines()
                .any(|l| l.contains(" WARN ") && l.contains("invalid_grant")),
            "debug={debug}: no token WARN line:\n{log}"
        );
    }
    let secrets: Vec<String> = all_secret_forms()
        .into_iter()
        .chain(ASSERTIONS.lock().unwrap().iter().flat_map(|a| forms(a)))
        .collect();
    let entries = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(entries.lines().count(), CASES.len() * 2);
    for secret in &secrets {
        assert!(
            !entries.contains(secret.as_str()),
            "JSON log leaks {secret}"
        );
    }
    assert!(!entries.contains("SECRET"), "JSON log leaks a secret");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_line_breaks_and_escapes_stay_on_one_log_line() {
    let addr = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[connections.gem]
api_type = "google"
api_base = "http://{addr}"
api_key = "{GEMINI_KEY}"
timeout = 5
[routing]
"*" = "gem.*"
[groups.default]
api_keys = ["{CLIENT_KEY}"]
"#
    );
    write(dir.path(), "config.toml", &config);
    let dir_path = dir.path().to_path_buf();
    let log = tokio::task::spawn_blocking(move || {
        let mut proc = Proc::start(&dir_path, &["--env", ""], &[]);
        let client = reqwest::blocking::Client::new();
        for stream in [false, true] {
            let mut body = user("gem-finish", "x");
            body["stream"] = json!(stream);
            let response = client
                .post(format!("{}/v1/chat/completions", proc.url))
                .bearer_auth(CLIENT_KEY)
                .json(&body)
                .send()
                .unwrap();
            assert_eq!(response.status(), 200);
            let _ = response.text();
        }
        proc.signal("-TERM");
        assert!(proc.wait_exit(Duration::from_secs(15)).success());
        proc.log_after_exit()
    })
    .await
    .unwrap();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("finishReason")).collect();
    assert_eq!(warnings.len(), 2, "one WARN line per answer:\n{log}");
    for line in log.lines() {
        assert!(
            !line.starts_with(FORGED),
            "a forged line reached stderr:\n{log}"
        );
        assert!(
            !line.chars().any(|c| c.is_control() || c == '\u{2028}'),
            "a control character in {line:?}"
        );
    }
    assert!(
        warnings[0]
            .contains(r"STOP\n2026-01-01T00:00:00.000000Z  INFO lm_proxy::request: FORGED\r"),
        "{}",
        warnings[0]
    );
}
