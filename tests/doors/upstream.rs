//! A mock upstream for the embeddings and completions doors: OpenAI-compatible
//! `/v1/embeddings` and `/v1/completions` answering fixed bytes (behaviour by model
//! name), Gemini's `batchEmbedContents` and Vertex AI's `predict`. Every request is
//! recorded (path, headers, body bytes).

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// An OpenAI embeddings answer with unusual spacing and a field nobody here knows,
/// so that any re-serialisation shows.
pub const EMBEDDINGS_ANSWER: &str = "{\"object\":\"list\", \"data\":[{\"object\":\"embedding\",\"index\":0,\"embedding\":[0.5, -1.25e0,2.0]}],\"model\":\"text-embedding-real\",\"usage\":{\"prompt_tokens\":7,\"total_tokens\":7},\"zz_new\":{\"b\":1.50}}";

/// The same as base64, as OpenAI answers `encoding_format: "base64"`.
pub const EMBEDDINGS_BASE64_ANSWER: &str = "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":0,\"embedding\":\"AAAAPwAAoL8AAABA\"}],\"model\":\"text-embedding-real\",\"usage\":{\"prompt_tokens\":7,\"total_tokens\":7}}";

pub const COMPLETION_ANSWER: &str = "{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1700000000,\"model\":\"instruct-real\",\"choices\":[{\"text\":\" there\\u2026\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1,\"total_tokens\":3}, \"zz_new\":1.50}";

/// The data of each event of a streamed completion, as the upstream writes them; the
/// last (usage-only) one only when the request asks for it
/// (`stream_options.include_usage`), as OpenAI does.
pub const COMPLETION_EVENTS: [&str; 3] = [
    "{\"id\":\"cmpl-2\",\"object\":\"text_completion\",\"created\":1700000000,\"model\":\"instruct-real\",\"choices\":[{\"text\":\"Hel\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}], \"zz\":1.50}",
    "{\"id\":\"cmpl-2\",\"object\":\"text_completion\",\"created\":1700000000,\"model\":\"instruct-real\",\"choices\":[{\"text\":\"lo\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"stop\"}]}",
    "{\"id\":\"cmpl-2\",\"object\":\"text_completion\",\"created\":1700000000,\"model\":\"instruct-real\",\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":2,\"total_tokens\":4}}",
];

#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<Vec<(String, HeaderMap, Bytes)>>>);

impl Seen {
    pub fn last(&self) -> (String, HeaderMap, Bytes) {
        self.0
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no upstream request")
    }

    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

async fn handle(State(seen): State<Seen>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    seen.0
        .lock()
        .unwrap()
        .push((uri.path().to_owned(), headers.clone(), body.clone()));
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = uri.path();
    let json_answer = |text: String| ([("content-type", "application/json")], text).into_response();
    if path.ends_with(":batchEmbedContents") {
        let n = request["requests"].as_array().map_or(0, Vec::len);
        let embeddings: Vec<Value> = (0..n)
            .map(|i| json!({"values": [i as f64, 0.5, -0.25]}))
            .collect();
        return json_answer(json!({"embeddings": embeddings}).to_string());
    }
    if path.ends_with(":predict") {
        let n = request["instances"].as_array().map_or(0, Vec::len);
        let predictions: Vec<Value> = (0..n)
            .map(|i| json!({"embeddings": {"values": [1.0, i as f64], "statistics": {"token_count": 3, "truncated": false}}}))
            .collect();
        return json_answer(json!({"predictions": predictions}).to_string());
    }
    let model = request["model"].as_str().unwrap_or("");
    // Some OpenAI-compatible servers refuse `stream_options`.
    if model == "strict" && request.get("stream_options").is_some() {
        let body = json!({"error": {"message": "Unrecognized request argument supplied: stream_options", "type": "invalid_request_error", "param": null, "code": null}});
        return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    }
    if model == "upstream-400" {
        let body = json!({"error": {"message": "upstream says no", "type": "invalid_request_error", "param": "input", "code": null}});
        return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    }
    if path.ends_with("/embeddings") {
        if model == "not-json" {
            return json_answer("<html>".into());
        }
        // An upstream that honours base64, unless its name says it gives floats only.
        if request["encoding_format"] == "base64" && model != "floats-only" {
            return json_answer(EMBEDDINGS_BASE64_ANSWER.into());
        }
        return json_answer(EMBEDDINGS_ANSWER.into());
    }
    if request["stream"] == true {
        let mut text = String::new();
        if model == "midfail" {
            text.push_str(&format!("data: {}\n\n", COMPLETION_EVENTS[0]));
            text.push_str(
                "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n",
            );
        } else {
            let usage_asked = request["stream_options"]["include_usage"] == true;
            let events = if usage_asked {
                &COMPLETION_EVENTS[..]
            } else {
                &COMPLETION_EVENTS[..2]
            };
            for data in events {
                text.push_str(&format!("data: {data}\n\n"));
            }
            text.push_str("data: [DONE]\n\n");
        }
        return ([("content-type", "text/event-stream")], text).into_response();
    }
    json_answer(COMPLETION_ANSWER.into())
}

/// Start the mock; returns its base URL (without `/v1`) and the recorder.
pub async fn start() -> (String, Seen) {
    let seen = Seen::default();
    let app = axum::Router::new()
        .fallback(axum::routing::post(handle))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

/// A config with every kind of connection the doors meet, all on the mock.
pub fn config(base: &str, extra: &str) -> String {
    format!(
        r#"
        max_request_body_mb = 0.01
        {extra}
        [connections.oai]
        api_type = "open_ai"
        api_base = "{base}/v1"
        api_key = "sk-oai-upstream"
        [connections.gemini]
        api_type = "google"
        api_base = "{base}"
        api_key = "AIza-test-key"
        [connections.vertex]
        api_type = "google_vertex_ai"
        api_base = "{base}"
        google_vertex_project_id = "p1"
        google_vertex_location = "us-central1"
        google_vertex_access_token = "ya29.fixed"
        [connections.anth]
        api_type = "anthropic"
        api_base = "{base}"
        api_key = "sk-ant"
        [connections.mock]
        api_type = "mock"
        [routing]
        "gemini-*" = "gemini.*"
        "vertex-*" = "vertex.*"
        "claude*" = "anth.*"
        "mock*" = "mock.*"
        "*" = "oai.*"
        [groups.default]
        api_keys = ["k1"]
        [groups.limited]
        api_keys = ["k2"]
        allowed_connections = "mock"
        "#
    )
}
