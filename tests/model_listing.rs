//! `model_listing_mode = "expand_wildcards"`: each connection the caller may use is
//! asked for its models (OpenAI `/models`, Anthropic `/v1/models`, Gemini
//! `/v1beta/models`), the ids its rules route are listed, answers are cached, and a
//! connection that fails keeps its pattern.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Query;
use axum::http::HeaderMap;
use axum::routing::get;
use common::TestGateway;
use serde_json::{json, Value};

/// Mock model lists for the three API shapes; counts calls and checks credentials.
async fn lists() -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let (c1, c2, c3) = (calls.clone(), calls.clone(), calls.clone());
    let app = axum::Router::new()
        .route(
            "/openai/v1/models",
            get(move |headers: HeaderMap| async move {
                c1.fetch_add(1, Ordering::SeqCst);
                assert_eq!(headers["authorization"], "Bearer sk-openai");
                axum::Json(json!({"object": "list", "data": [
                    {"id": "gpt-4o", "object": "model"}, {"id": "gpt-4o-mini", "object": "model"},
                    {"id": "text-embedding-3-small", "object": "model"}, {"id": "o1", "object": "model"}]}))
            }),
        )
        .route(
            "/anthropic/v1/models",
            get(move |headers: HeaderMap, Query(q): Query<std::collections::HashMap<String, String>>| async move {
                c2.fetch_add(1, Ordering::SeqCst);
                assert_eq!(headers["x-api-key"], "sk-ant");
                // Two pages, chained with has_more / last_id.
                if q.get("after_id").map(String::as_str) == Some("claude-opus-4") {
                    axum::Json(json!({"data": [{"id": "claude-haiku-4", "type": "model"}], "has_more": false, "last_id": "claude-haiku-4"}))
                } else {
                    axum::Json(json!({"data": [{"id": "claude-sonnet-4", "type": "model"}, {"id": "claude-opus-4", "type": "model"}], "has_more": true, "last_id": "claude-opus-4"}))
                }
            }),
        )
        .route(
            "/google/v1beta/models",
            get(move |headers: HeaderMap| async move {
                c3.fetch_add(1, Ordering::SeqCst);
                assert_eq!(headers["x-goog-api-key"], "goog-key");
                axum::Json(json!({"models": [
                    {"name": "models/gemini-2.5-flash", "supportedGenerationMethods": ["generateContent", "countTokens"]},
                    {"name": "models/gemini-embedding-001", "supportedGenerationMethods": ["embedContent"]},
                    {"name": "models/gemini-2.5-pro", "supportedGenerationMethods": ["generateContent"]}]}))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), calls)
}

fn config(base: &str, dead_port: u16, extra: &str) -> String {
    format!(
        r#"
model_listing_mode = "expand_wildcards"
{extra}
[connections.openai]
api_type = "open_ai"
api_base = "{base}/openai/v1"
api_key = "sk-openai"
[connections.anthropic]
api_type = "anthropic"
api_base = "{base}/anthropic"
api_key = "sk-ant"
[connections.google]
api_type = "google"
api_base = "{base}/google"
api_key = "goog-key"
[connections.dead]
api_type = "open_ai"
api_base = "http://127.0.0.1:{dead_port}/v1"
[routing]
"gpt-4o-mini" = "openai.*"
"gpt*" = "openai.*"
"claude-*" = "anthropic.*"
"gemini-*" = "google.*"
"local-*" = "dead.*"
"fixed-*" = "openai.gpt-4o"
[groups.default]
api_keys = ["k"]
[groups.no_google]
api_keys = ["k2"]
allowed_connections = "openai, anthropic, dead"
[model_info.gpt-4o]
context_window = 128000
"#
    )
}

fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

async fn ids(gw: &TestGateway, key: &str) -> Vec<Value> {
    let body: Value = gw
        .client
        .get(gw.url("/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["data"].as_array().unwrap().clone()
}

#[tokio::test]
async fn wildcards_expand_to_the_upstream_models_each_rule_routes() {
    let (base, calls) = lists().await;
    let gw = TestGateway::start(&config(&base, dead_port(), "")).await;
    let data = ids(&gw, "k").await;
    let listed: Vec<(&str, &str)> = data
        .iter()
        .map(|m| (m["id"].as_str().unwrap(), m["owned_by"].as_str().unwrap()))
        .collect();
    assert_eq!(
        listed,
        [
            ("gpt-4o-mini", "openai"),
            ("gpt-4o", "openai"),
            ("claude-sonnet-4", "anthropic"),
            ("claude-opus-4", "anthropic"),
            ("claude-haiku-4", "anthropic"),
            ("gemini-2.5-flash", "google"),
            ("gemini-2.5-pro", "google"),
            ("local-*", "dead"),
            ("fixed-*", "openai"),
        ]
    );
    let gpt4o = data.iter().find(|m| m["id"] == "gpt-4o").unwrap();
    assert_eq!(gpt4o["context_window"], 128000, "model_info merged by id");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "openai once, anthropic twice (two pages), google once"
    );

    // Cached: no new upstream calls; the group filter still applies.
    let limited = ids(&gw, "k2").await;
    assert!(limited.iter().all(|m| m["owned_by"] != "google"));
    assert!(limited.iter().any(|m| m["id"] == "claude-haiku-4"));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn listings_are_refetched_after_the_cache_time() {
    let (base, calls) = lists().await;
    let gw = TestGateway::start(&config(
        &base,
        dead_port(),
        "model_listing_cache_seconds = 0.2",
    ))
    .await;
    ids(&gw, "k").await;
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    tokio::time::sleep(Duration::from_millis(400)).await;
    ids(&gw, "k").await;
    assert_eq!(calls.load(Ordering::SeqCst), 8);
}

/// `GET /v1/models/{id}` honours `expand_wildcards`: an upstream id that a rule
/// routes is found (with its `model_info`), within the group's connections only.
#[tokio::test]
async fn retrieve_finds_expanded_ids_for_the_group() {
    let (base, _calls) = lists().await;
    let gw = TestGateway::start(&config(&base, dead_port(), "")).await;
    let get = |id: &'static str, key: &'static str| {
        let gw = &gw;
        async move {
            let response = gw
                .client
                .get(gw.url(&format!("/v1/models/{id}")))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (status, model) = get("gemini-2.5-pro", "k").await;
    assert_eq!(status, 200, "{model}");
    assert_eq!(
        model,
        json!({"id": "gemini-2.5-pro", "object": "model", "created": 0, "owned_by": "google"})
    );
    let (status, model) = get("gpt-4o", "k2").await;
    assert_eq!((status, &model["context_window"]), (200, &json!(128000)));
    // Routed by `gemini-*`, but the group may not use google; and an id the
    // upstream does not have is not invented from the pattern.
    for (id, key) in [("gemini-2.5-pro", "k2"), ("gemini-9", "k")] {
        let (status, body) = get(id, key).await;
        assert_eq!(status, 404, "{id}: {body}");
        assert_eq!(body["error"]["code"], "model_not_found");
    }
}
