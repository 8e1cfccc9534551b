//! Upstream redirects are never followed: a 3xx from an upstream, a model list, or a
//! key-check service would otherwise carry the provider key headers (`Authorization`,
//! `x-api-key`, `x-goog-api-key`, static `http_headers`), the client key and the
//! prompt to whatever host the `Location` header names.
//!
//! The upstreams here answer every request with `307 Temporary Redirect` to a second
//! server, which records what reaches it and would answer successfully: if the
//! gateway followed a redirect, the request would succeed and the recorder would see
//! it. Chat calls take reqwest's path (the one that could follow redirects) through
//! an `api_base` with user info, as an https or proxied upstream would.

mod common;

use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use common::{user, TestGateway};
use serde_json::{json, Value};

const PROVIDER_KEY: &str = "sk-provider-redirect-7c1e";
const RELAY_TOKEN: &str = "relay-token-5d2a";

/// A server answering every request with a valid chat completion, recording the
/// path and headers of each.
async fn recorder() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    async fn record(State(seen): State<Arc<Mutex<Vec<String>>>>, request: Request) -> Response {
        let headers: Vec<String> = request
            .headers()
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("")))
            .collect();
        seen.lock()
            .unwrap()
            .push(format!("{} {}", request.uri(), headers.join("; ")));
        axum::Json(common::completion("elsewhere", "followed")).into_response()
    }
    let app = axum::Router::new()
        .fallback(record)
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

/// A server that redirects every request (same path) to `target` with `status`.
async fn redirector(target: String, status: StatusCode) -> String {
    let app = axum::Router::new().fallback(move |request: Request| {
        let target = target.clone();
        async move {
            let location = format!("{target}{}", request.uri());
            (
                status,
                [(
                    axum::http::header::LOCATION,
                    HeaderValue::from_str(&location).unwrap(),
                )],
            )
                .into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("{addr}")
}

fn config(redirecting: &str) -> String {
    format!(
        r#"
model_listing_mode = "expand_wildcards"
[connections.openai]
api_type = "open_ai"
api_base = "http://user:pw@{redirecting}/v1"
api_key = "{PROVIDER_KEY}"
[connections.openai.http_headers]
X-Relay-Token = "{RELAY_TOKEN}"
[connections.listing]
api_type = "open_ai"
api_base = "http://{redirecting}/v1"
api_key = "{PROVIDER_KEY}"
[connections.anthropic]
api_type = "anthropic"
api_base = "http://user:pw@{redirecting}"
api_key = "{PROVIDER_KEY}"
[connections.google]
api_type = "google"
api_base = "http://user:pw@{redirecting}"
api_key = "{PROVIDER_KEY}"
[routing]
"gpt-*" = "openai.*"
"list-*" = "listing.*"
"claude-*" = "anthropic.*"
"gemini-*" = "google.*"
[groups.default]
api_keys = ["client-key"]
"#
    )
}

#[tokio::test]
async fn upstream_redirects_are_errors_and_are_not_followed() {
    for status in [
        StatusCode::MOVED_PERMANENTLY,
        StatusCode::FOUND,
        StatusCode::TEMPORARY_REDIRECT,
        StatusCode::PERMANENT_REDIRECT,
    ] {
        let (elsewhere, seen) = recorder().await;
        let redirecting = redirector(elsewhere, status).await;
        let gw = TestGateway::start(&config(&redirecting)).await;

        for model in ["gpt-4o", "claude-sonnet-4", "gemini-2.5-flash"] {
            for stream in [false, true] {
                let response = gw
                    .chat(
                        "client-key",
                        json!({"model": model, "messages": [{"role": "user", "content": "secret prompt"}], "stream": stream}),
                    )
                    .await;
                assert_eq!(
                    response.status(),
                    StatusCode::BAD_GATEWAY,
                    "{status} for {model} (stream {stream})"
                );
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["error"]["type"], "upstream_error", "{body}");
            }
        }

        // Model listing (always reqwest): the connection that fails keeps its pattern.
        let listed: Value = gw
            .client
            .get(gw.url("/v1/models"))
            .bearer_auth("client-key")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ids: Vec<&str> = listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert!(ids.contains(&"list-*"), "{listed}");
        assert!(!ids.contains(&"elsewhere"), "{listed}");

        let seen = seen.lock().unwrap();
        assert!(
            seen.is_empty(),
            "{status}: the redirect target received {seen:?}"
        );
    }
}

#[tokio::test]
async fn key_check_service_redirects_reject_the_key() {
    let (elsewhere, seen) = recorder().await;
    let redirecting = redirector(elsewhere, StatusCode::TEMPORARY_REDIRECT).await;
    let (upstream_base, _upstream_seen) = recorder().await;
    let gw = TestGateway::start(&format!(
        r#"
[connections.up]
api_type = "open_ai"
api_base = "{upstream_base}/v1"
api_key = "{PROVIDER_KEY}"
[routing]
"*" = "up.*"
[api_key_check]
class = "lm_proxy.api_key_check.CheckAPIKeyWithRequest"
url = "http://{redirecting}/userinfo"
[api_key_check.headers]
Authorization = "Bearer {{api_key}}"
"#
    ))
    .await;
    let (status, body) = gw.chat_json("client-key-123", user("m", "hi")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
    let seen = seen.lock().unwrap();
    assert!(seen.is_empty(), "the redirect target received {seen:?}");
}
