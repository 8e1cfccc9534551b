//! In-process mock Google upstreams for tests/google.rs (axum on 127.0.0.1:0): the
//! Gemini API (AI Studio), Vertex AI (regional path and express mode), an OAuth token
//! endpoint that verifies RS256 JWTs with the test key's public half, and a GCE
//! metadata server. Gemini answers are chosen by the model name in the URL (see
//! [`scenario`]); every request is recorded for the assertions.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// The API key the mock accepts.
pub const GOOD_KEY: &str = "AIza-test-key-0123456789";
pub const TEST_KEY_PEM: &str = include_str!("../fixtures/vertex-test-key.pem");
const TEST_PUBLIC_PEM: &str = include_str!("../fixtures/vertex-test-key.pub.pem");

/// One generateContent / streamGenerateContent request.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Value,
    /// Whether the request was answered 401 (Vertex, unknown token).
    pub rejected: bool,
}

/// One token-endpoint request.
#[derive(Debug, Clone)]
pub struct TokenCall {
    pub form: HashMap<String, String>,
    pub content_type: String,
    /// Decoded JWT header and claims for the JWT bearer grant.
    pub jwt: Option<(Value, Value)>,
    pub signature_valid: bool,
}

#[derive(Default)]
struct MockState {
    requests: Mutex<Vec<Recorded>>,
    token_calls: Mutex<Vec<TokenCall>>,
    metadata_calls: Mutex<Vec<String>>,
    issued: AtomicUsize,
    valid_tokens: Mutex<HashSet<String>>,
    expires_in: AtomicU64,
    token_delay_ms: AtomicU64,
    /// When set, the token endpoint answers 400 invalid_grant.
    reject_grants: AtomicUsize,
    public_key: Vec<u8>,
}

pub struct GoogleMock {
    pub addr: SocketAddr,
    state: Arc<MockState>,
}

fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    STANDARD.decode(body).expect("fixture PEM is base64")
}

impl GoogleMock {
    pub async fn start() -> GoogleMock {
        let state = Arc::new(MockState {
            public_key: pem_der(TEST_PUBLIC_PEM),
            ..Default::default()
        });
        state.expires_in.store(3600, Ordering::SeqCst);
        let app = axum::Router::new()
            .route("/v1beta/models/{action}", post(ai_studio))
            .route("/v1beta/tunedModels/{action}", post(ai_studio))
            .route(
                "/v1/projects/{project}/locations/{location}/publishers/google/models/{action}",
                post(vertex),
            )
            .route("/v1/publishers/google/models/{action}", post(ai_studio))
            .route("/token", post(token))
            .route(
                "/computeMetadata/v1/instance/service-accounts/default/token",
                get(metadata_token),
            )
            .route(
                "/computeMetadata/v1/project/project-id",
                get(metadata_project),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        GoogleMock { addr, state }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests().pop().expect("the mock received no request")
    }

    pub fn token_calls(&self) -> Vec<TokenCall> {
        self.state.token_calls.lock().unwrap().clone()
    }

    pub fn metadata_calls(&self) -> Vec<String> {
        self.state.metadata_calls.lock().unwrap().clone()
    }

    /// Lifetime given to tokens issued from now on.
    pub fn set_expires_in(&self, secs: u64) {
        self.state.expires_in.store(secs, Ordering::SeqCst);
    }

    /// Delay of the token endpoint (to make concurrent refreshes overlap).
    pub fn set_token_delay(&self, ms: u64) {
        self.state.token_delay_ms.store(ms, Ordering::SeqCst);
    }

    pub fn reject_grants(&self, on: bool) {
        self.state
            .reject_grants
            .store(usize::from(on), Ordering::SeqCst);
    }

    /// Make every token issued so far invalid (Vertex answers 401 to them).
    pub fn revoke_tokens(&self) {
        self.state.valid_tokens.lock().unwrap().clear();
    }
}

fn issue(state: &MockState) -> String {
    let n = state.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!("ya29.test-token-{n}");
    state.valid_tokens.lock().unwrap().insert(token.clone());
    token
}

fn record(
    state: &MockState,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: &Bytes,
    rejected: bool,
) -> Value {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    state.requests.lock().unwrap().push(Recorded {
        path,
        query,
        headers,
        body: value.clone(),
        rejected,
    });
    value
}

/// `gemini-x:generateContent` → (`gemini-x`, stream?).
fn split_action(action: &str) -> (String, bool) {
    let (model, method) = action.split_once(':').unwrap_or((action, ""));
    (model.to_owned(), method == "streamGenerateContent")
}

async fn ai_studio(
    State(state): State<Arc<MockState>>,
    Path(action): Path<String>,
    RawQuery(query): RawQuery,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key_ok = headers.get("x-goog-api-key").is_some_and(|k| k == GOOD_KEY);
    let body = record(
        &state,
        uri.path().to_owned(),
        query.clone(),
        headers,
        &body,
        false,
    );
    if !key_ok {
        return google_error(
            StatusCode::BAD_REQUEST,
            json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
                "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}}),
        );
    }
    let (model, stream) = split_action(&action);
    assert_eq!(
        stream,
        query.as_deref() == Some("alt=sse"),
        "streams use alt=sse"
    );
    scenario(&model, &body, stream)
}

async fn vertex(
    State(state): State<Arc<MockState>>,
    Path((_project, _location, action)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_owned();
    let valid = state.valid_tokens.lock().unwrap().contains(&token);
    let body = record(
        &state,
        uri.path().to_owned(),
        query.clone(),
        headers,
        &body,
        !valid,
    );
    if !valid {
        return google_error(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"code": 401, "message": "Request had invalid authentication credentials. Expected OAuth 2 access token.", "status": "UNAUTHENTICATED"}}),
        );
    }
    let (model, stream) = split_action(&action);
    scenario(&model, &body, stream)
}

async fn token(State(state): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let delay = state.token_delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let mut call = TokenCall {
        form: form.clone(),
        content_type: headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned(),
        jwt: None,
        signature_valid: false,
    };
    if let Some(assertion) = form.get("assertion") {
        let pieces: Vec<&str> = assertion.split('.').collect();
        if pieces.len() == 3 {
            let decode = |p: &str| -> Value {
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap_or_default())
                    .unwrap_or(Value::Null)
            };
            call.jwt = Some((decode(pieces[0]), decode(pieces[1])));
            let signature = URL_SAFE_NO_PAD.decode(pieces[2]).unwrap_or_default();
            let key = ring::signature::UnparsedPublicKey::new(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                &state.public_key,
            );
            let signed = format!("{}.{}", pieces[0], pieces[1]);
            call.signature_valid = key.verify(signed.as_bytes(), &signature).is_ok();
        }
    }
    let signature_valid = call.signature_valid;
    let is_jwt = call.jwt.is_some();
    state.token_calls.lock().unwrap().push(call);
    if state.reject_grants.load(Ordering::SeqCst) == 1 || (is_jwt && !signature_valid) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
            ),
        )
            .into_response();
    }
    let mut answer = json!({
        "access_token": issue(&state),
        "expires_in": state.expires_in.load(Ordering::SeqCst),
        "token_type": "Bearer",
    });
    if form.get("grant_type").map(String::as_str) == Some("refresh_token") {
        let n = state.issued.load(Ordering::SeqCst);
        answer["refresh_token"] = json!(format!("1//rotated-refresh-{n}"));
    }
    axum::Json(answer).into_response()
}

async fn metadata_token(State(state): State<Arc<MockState>>, headers: HeaderMap) -> Response {
    state.metadata_calls.lock().unwrap().push("token".into());
    if headers.get("metadata-flavor").is_none_or(|v| v != "Google") {
        return (StatusCode::FORBIDDEN, "missing Metadata-Flavor").into_response();
    }
    axum::Json(json!({"access_token": issue(&state), "expires_in": state.expires_in.load(Ordering::SeqCst), "token_type": "Bearer"}))
        .into_response()
}

async fn metadata_project(State(state): State<Arc<MockState>>, headers: HeaderMap) -> Response {
    state.metadata_calls.lock().unwrap().push("project".into());
    if headers.get("metadata-flavor").is_none_or(|v| v != "Google") {
        return (StatusCode::FORBIDDEN, "missing Metadata-Flavor").into_response();
    }
    "metadata-project".into_response()
}

fn google_error(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn error_for(code: u16, status: &str, message: &str) -> Response {
    let mut response = google_error(
        StatusCode::from_u16(code).unwrap(),
        json!({"error": {"code": code, "message": message, "status": status}}),
    );
    if code == 429 {
        response
            .headers_mut()
            .insert("retry-after", "17".parse().unwrap());
    }
    response
}

fn usage(prompt: u64, candidates: u64) -> Value {
    json!({"promptTokenCount": prompt, "candidatesTokenCount": candidates, "totalTokenCount": prompt + candidates})
}

fn text_candidate(text: &str, finish: Option<&str>, index: u64) -> Value {
    let mut candidate =
        json!({"content": {"role": "model", "parts": [{"text": text}]}, "index": index});
    if let Some(reason) = finish {
        candidate["finishReason"] = json!(reason);
    }
    candidate
}

fn answer(candidates: Value, usage_metadata: Value) -> Value {
    json!({"candidates": candidates, "usageMetadata": usage_metadata, "modelVersion": "gemini-mock-001", "responseId": "resp-42"})
}

/// The answer for a model name:
/// - `blocked`: prompt blocked (no candidates);
/// - `safety`: one SAFETY candidate without content;
/// - `finish-<REASON>`: text "partial" finished with REASON;
/// - `tools`: two parallel calls (streamed: the second call in a later event, with a
///   thought signature on the first);
/// - `thinking`: a thought part, text, and usage with thoughts;
/// - `two`: two candidates (for n=2);
/// - `error-<code>`: that Google error (429 with Retry-After: 17);
/// - `stream-error`: one text event, then a Google error event;
/// - `first-event-error`: a Google error as the first event of a 200 stream;
/// - `crlf`: the default stream, framed with CRLF;
/// - anything else: "Hello world" (streamed in three events, usage on each).
fn scenario(model: &str, _body: &Value, stream: bool) -> Response {
    // A 200 that is not Gemini's JSON (a captive portal, a proxy's page).
    if model == "ok-not-json" {
        let content_type = if stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let body = if stream {
            "data: <html>proxy page</html>\n\n"
        } else {
            "<html>proxy page</html>"
        };
        return (StatusCode::OK, [("content-type", content_type)], body).into_response();
    }
    if let Some(code) = model.strip_prefix("error-") {
        let code: u16 = code.parse().unwrap_or(500);
        let (status, message) = match code {
            400 => (
                "INVALID_ARGUMENT",
                "* GenerateContentRequest.contents: contents is not specified",
            ),
            403 => (
                "PERMISSION_DENIED",
                "Permission denied on resource project p.",
            ),
            404 => (
                "NOT_FOUND",
                "models/nope is not found for API version v1beta",
            ),
            429 => (
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
            ),
            503 => (
                "UNAVAILABLE",
                "The model is overloaded. Please try again later.",
            ),
            504 => (
                "DEADLINE_EXCEEDED",
                "Deadline expired before operation could complete.",
            ),
            _ => ("INTERNAL", "An internal error has occurred."),
        };
        return error_for(code, status, message);
    }
    let events: Vec<Value> = match model {
        "blocked" => vec![
            json!({"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []}, "usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 4}, "modelVersion": "gemini-mock-001"}),
        ],
        "safety" => vec![answer(
            json!([{"finishReason": "SAFETY", "index": 0, "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH", "blocked": true}]}]),
            json!({"promptTokenCount": 4, "totalTokenCount": 4}),
        )],
        _ if model.starts_with("finish-") => {
            let reason = &model["finish-".len()..];
            vec![answer(
                json!([text_candidate("partial", Some(reason), 0)]),
                usage(4, 1),
            )]
        }
        "tools" if stream => vec![
            answer(
                json!([{"content": {"role": "model", "parts": [{"text": "Checking. "}, {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}, "thoughtSignature": "c2lnbmF0dXJlLTE="}]}, "index": 0}]),
                json!({"trafficType": "ON_DEMAND"}),
            ),
            answer(
                json!([{"content": {"role": "model", "parts": [{"functionCall": {"name": "get_time", "args": {}}}]}, "finishReason": "STOP", "index": 0}]),
                usage(20, 9),
            ),
        ],
        // Parallel calls in one event, streamed or not.
        "parallel" => vec![answer(
            json!([{"content": {"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
                {"functionCall": {"name": "get_time", "args": {}}}
            ]}, "finishReason": "STOP", "index": 0}]),
            usage(20, 9),
        )],
        "tools" => vec![answer(
            json!([{"content": {"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}, "thoughtSignature": "c2lnbmF0dXJlLTE="},
                {"functionCall": {"name": "get_time", "args": {}}}
            ]}, "finishReason": "STOP", "index": 0}]),
            usage(20, 9),
        )],
        "thinking" => vec![answer(
            json!([{"content": {"role": "model", "parts": [{"text": "Let me think.", "thought": true}, {"text": "42"}]}, "finishReason": "STOP", "index": 0}]),
            json!({"promptTokenCount": 10, "candidatesTokenCount": 1, "thoughtsTokenCount": 30, "cachedContentTokenCount": 6, "totalTokenCount": 41}),
        )],
        "two" if stream => vec![
            answer(
                json!([
                    text_candidate("first", None, 0),
                    text_candidate("second", None, 1)
                ]),
                json!({"promptTokenCount": 5}),
            ),
            answer(
                json!([
                    text_candidate(" one", Some("STOP"), 0),
                    text_candidate(" two", Some("MAX_TOKENS"), 1)
                ]),
                usage(5, 6),
            ),
        ],
        "two" => vec![answer(
            json!([
                text_candidate("first one", Some("STOP"), 0),
                text_candidate("second two", Some("MAX_TOKENS"), 1)
            ]),
            usage(5, 6),
        )],
        "stream-error" => vec![
            answer(
                json!([text_candidate("Hello", None, 0)]),
                json!({"promptTokenCount": 5}),
            ),
            json!({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}),
        ],
        "first-event-error" => vec![
            json!({"error": {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"}}),
        ],
        _ if stream => vec![
            answer(
                json!([text_candidate("Hello", None, 0)]),
                json!({"promptTokenCount": 5}),
            ),
            answer(
                json!([text_candidate(" world", None, 0)]),
                json!({"trafficType": "ON_DEMAND"}),
            ),
            answer(
                json!([{"content": {"role": "model", "parts": [{"text": "", "thoughtSignature": "AAAA"}]}, "finishReason": "STOP", "index": 0}]),
                json!({"promptTokenCount": 5, "candidatesTokenCount": 2, "thoughtsTokenCount": 3, "totalTokenCount": 10}),
            ),
        ],
        _ => vec![answer(
            json!([text_candidate("Hello world", Some("STOP"), 0)]),
            usage(5, 2),
        )],
    };
    if !stream {
        return axum::Json(events.into_iter().next().unwrap()).into_response();
    }
    let crlf = model == "crlf";
    let texts: Vec<String> = events
        .iter()
        .map(|e| {
            if crlf {
                format!("data: {e}\r\n\r\n")
            } else {
                format!("data: {e}\n\n")
            }
        })
        .collect();
    let texts = if crlf {
        std::iter::once(": keep-alive\r\n\r\n".to_owned())
            .chain(texts)
            .collect()
    } else {
        texts
    };
    // Split each event in two writes so the gateway must reassemble them.
    let pieces: Vec<Result<Bytes, std::io::Error>> = texts
        .into_iter()
        .flat_map(|t| {
            let mid = t.len() / 2;
            let mid = (mid..t.len())
                .find(|i| t.is_char_boundary(*i))
                .unwrap_or(t.len());
            vec![
                Ok(Bytes::from(t[..mid].to_owned())),
                Ok(Bytes::from(t[mid..].to_owned())),
            ]
        })
        .collect();
    let body = futures_util::stream::iter(pieces).then(|piece| async move {
        tokio::task::yield_now().await;
        piece
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(body))
        .unwrap()
}
