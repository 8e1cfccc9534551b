//! The gateway's own HTTP surface: endpoints, keys and groups, routing, the mock
//! connection, and bad input. Upstream passthrough lives in `openai_upstream.rs`.

mod common;

use common::{sse_chunks, user, MockUpstream, TestGateway};
use reqwest::StatusCode;
use serde_json::{json, Value};

const BASE: &str = r#"
encryption_key = "test-encryption-key"
[connections.mock]
api_type = "mock"
[connections.other]
api_type = "mock"
response = "from other"
[routing]
"fixed-*" = "other.rewritten-name"
"gpt*" = "mock.*"
"exact-model" = "other.*"
[groups.default]
api_keys = ["key-default", "key-dup"]
[groups.limited]
api_keys = ["key-limited", "key-dup"]
allowed_connections = " other "
"#;

#[tokio::test]
async fn non_streamed_answer_is_a_full_openai_object() {
    let gw = TestGateway::start(BASE).await;
    let (status, body) = gw
        .chat_json("key-default", user("gpt-4o", "Hello there"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "You said: Hello there"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["total_tokens"], 6);
}

#[tokio::test]
async fn streamed_answer_is_sse_with_role_content_finish_usage_and_done() {
    let gw = TestGateway::start(BASE).await;
    let mut req = user("gpt-4o", "one two three");
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let response = gw.chat("key-default", req).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    // Not to be cached, nor held back by a buffering proxy in front.
    assert_eq!(response.headers()["cache-control"], "no-cache");
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    let text = response.text().await.unwrap();
    let (chunks, done) = sse_chunks(&text);
    assert!(done, "stream ends with [DONE]: {text}");
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(chunks
        .iter()
        .all(|c| c["id"] == id && c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "You said: one two three");
    let finish: Vec<&Value> = chunks
        .iter()
        .filter(|c| !c["choices"][0]["finish_reason"].is_null())
        .collect();
    assert_eq!(finish.len(), 1);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 5);
}

#[tokio::test]
async fn mock_honours_n_max_tokens_and_tool_choice() {
    let gw = TestGateway::start(BASE).await;
    let mut req = user("gpt-x", "a b c d e f");
    req["n"] = json!(3);
    req["max_tokens"] = json!(2);
    let (_, body) = gw.chat_json("key-default", req).await;
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["finish_reason"], "length");
        assert_eq!(c["message"]["content"], "You said: ");
    }

    let mut req = user("gpt-x", "weather?");
    req["tools"] = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    req["tool_choice"] = json!("required");
    let (_, body) = gw.chat_json("key-default", req.clone()).await;
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        "{}"
    );

    req["stream"] = json!(true);
    let text = gw.chat("key-default", req).await.text().await.unwrap();
    let (chunks, done) = sse_chunks(&text);
    assert!(done);
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, "{}");
}

/// A wrong, empty or missing key is 401 `invalid_api_key`, as OpenAI answers (its
/// clients raise `AuthenticationError` only for 401); `invalid_api_key_status =
/// 403` restores the reference's status, with the same body.
#[tokio::test]
async fn invalid_keys_get_401_or_the_configured_403() {
    let envelope = json!({"error": {
        "message": "Incorrect API key provided: your API key is invalid, expired, or revoked.",
        "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}});
    for (extra, expected) in [
        ("", StatusCode::UNAUTHORIZED),
        ("invalid_api_key_status = 403\n", StatusCode::FORBIDDEN),
    ] {
        let gw = TestGateway::start(&format!("{extra}{BASE}")).await;
        for key in ["wrong", ""] {
            let (status, body) = gw.chat_json(key, user("gpt-4o", "hi")).await;
            assert_eq!(status, expected, "{extra:?} key {key:?}");
            assert_eq!(body, envelope);
        }
        // No Authorization header at all, on both API doors.
        let response = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .json(&user("gpt-4o", "hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected);
        for path in ["/v1/models", "/v1/models/gpt-4o"] {
            let response = gw.client.get(gw.url(path)).send().await.unwrap();
            assert_eq!(response.status(), expected, "{path}");
            assert_eq!(response.json::<Value>().await.unwrap(), envelope);
        }
        // Lower-case scheme is accepted.
        let response = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .header("authorization", "bearer key-default")
            .json(&user("gpt-4o", "hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        // A group that may not use the connection stays 403 either way.
        let (status, body) = gw.chat_json("key-limited", user("gpt-4o", "hi")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["error"]["code"], "connection_not_allowed");
    }
}

#[tokio::test]
async fn groups_limit_connections_and_first_group_wins() {
    let gw = TestGateway::start(BASE).await;
    let (status, body) = gw.chat_json("key-limited", user("gpt-4o", "hi")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "connection_not_allowed");
    assert_eq!(
        body["error"]["message"],
        "Your API key does not allow using the 'mock' connection."
    );

    let (status, body) = gw.chat_json("key-limited", user("exact-model", "hi")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["choices"][0]["message"]["content"], "from other");

    // A key listed in two groups belongs to the first one (default: all connections).
    let (status, _) = gw.chat_json("key-dup", user("gpt-4o", "hi")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn routing_rewrites_passes_through_and_reports_no_match() {
    let gw = TestGateway::start(BASE).await;
    let (_, body) = gw
        .chat_json("key-default", user("fixed-anything", "hi"))
        .await;
    assert_eq!(body["model"], "rewritten-name");
    let (_, body) = gw
        .chat_json("key-default", user("gpt-3.5-turbo", "hi"))
        .await;
    assert_eq!(body["model"], "gpt-3.5-turbo");

    for model in ["claude-3", "GPT-4", "exact-model-2"] {
        let (status, body) = gw.chat_json("key-default", user(model, "hi")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{model}");
        assert_eq!(body["error"]["code"], "model_not_found");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(model) && message.contains("\"*\""),
            "{message}"
        );
    }
}

#[tokio::test]
async fn models_list_modes_info_and_group_filter() {
    let config = format!(
        "model_listing_mode = \"ignore_wildcards\"\n{BASE}\n[model_info.exact-model]\ncontext_window = 8192\nowned_by = \"acme\"\n"
    );
    let gw = TestGateway::start(&config).await;
    let models = |key: &'static str| {
        let gw = &gw;
        async move {
            gw.client
                .get(gw.url("/v1/models"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let body = models("key-default").await;
    assert_eq!(body["object"], "list");
    assert_eq!(
        body["data"],
        json!([{"id": "exact-model", "object": "model", "created": 0, "owned_by": "acme", "context_window": 8192}])
    );

    let gw2 = TestGateway::start(BASE).await;
    let list = |body: Value| -> Vec<String> {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = gw2
        .client
        .get(gw2.url("/v1/models"))
        .bearer_auth("key-default")
        .send()
        .await
        .unwrap();
    assert_eq!(
        list(all.json().await.unwrap()),
        ["fixed-*", "gpt*", "exact-model"]
    );
    let limited = gw2
        .client
        .get(gw2.url("/v1/models"))
        .bearer_auth("key-limited")
        .send()
        .await
        .unwrap();
    assert_eq!(
        list(limited.json().await.unwrap()),
        ["fixed-*", "exact-model"]
    );
    let denied = gw2
        .client
        .get(gw2.url("/v1/models"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn health_and_unknown_paths() {
    let gw = TestGateway::start(BASE).await;
    let health = gw.client.get(gw.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.json::<Value>().await.unwrap()["status"], "healthy");
    let missing = gw.client.get(gw.url("/v2/whatever")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["error"]["code"],
        "unknown_url"
    );
    let wrong_method = gw
        .client
        .get(gw.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    // A POST to a door's path is served by the door without the router (see
    // `server::Doors`): its path must match as the router's does, the query aside.
    for (path, status) in [
        ("/v1/chat/completions?trace=1", StatusCode::OK),
        ("/v1/chat/completions/", StatusCode::NOT_FOUND),
        ("/v1/Chat/completions", StatusCode::NOT_FOUND),
        ("/v1/chat%2Fcompletions", StatusCode::NOT_FOUND),
        ("/v1/embeddings/", StatusCode::NOT_FOUND),
    ] {
        let response = gw.post(path, "key-default", user("gpt-4o", "hi")).await;
        assert_eq!(response.status(), status, "{path}");
    }
    for method in [reqwest::Method::PUT, reqwest::Method::DELETE] {
        let response = gw
            .client
            .request(method.clone(), gw.url("/v1/messages"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method}"
        );
    }
}

#[tokio::test]
async fn api_prefix_is_configurable_including_empty() {
    for (prefix, path) in [
        ("", "/chat/completions"),
        ("/api/v2/", "/api/v2/chat/completions"),
    ] {
        let gw = TestGateway::start(&format!("api_prefix = \"{prefix}\"\n{BASE}")).await;
        let response = gw.post(path, "key-default", user("gpt-4o", "hi")).await;
        assert_eq!(response.status(), StatusCode::OK, "prefix {prefix:?}");
        let models_path = path.replace("chat/completions", "models");
        let response = gw
            .client
            .get(gw.url(&models_path))
            .bearer_auth("key-default")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let old = gw.chat("key-default", user("gpt-4o", "hi")).await;
        assert_eq!(old.status(), StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn disabled_service_answers_503() {
    let gw = TestGateway::start(&format!("enabled = false\n{BASE}")).await;
    let (status, body) = gw.chat_json("key-default", user("gpt-4o", "hi")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "service_disabled");
    assert_eq!(body["error"]["type"], "service_unavailable");
}

/// `client.models.retrieve(id)`: the `/models` entry with that id (same shape,
/// `model_info` merged, the group's permissions applied), ids with `/` included, or
/// a 404 `model_not_found` in the OpenAI envelope.
#[tokio::test]
async fn model_retrieve_answers_the_listed_entry_or_404() {
    let config = format!("{BASE}\n[model_info.\"meta-llama/Llama-3-8B\"]\ncontext_window = 8192\n")
        .replace(
            "[routing]\n",
            "[routing]\n\"meta-llama/Llama-3-8B\" = \"mock.*\"\n",
        );
    let gw = TestGateway::start(&config).await;
    let get = |path: String, key: &'static str| {
        let gw = &gw;
        async move {
            let response = gw
                .client
                .get(gw.url(&path))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    };
    let (_, list) = get("/v1/models".into(), "key-default").await;
    let listed = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "meta-llama/Llama-3-8B")
        .unwrap()
        .clone();
    assert_eq!(listed["context_window"], 8192);

    for path in [
        "/v1/models/meta-llama/Llama-3-8B",
        "/v1/models/meta-llama%2FLlama-3-8B",
    ] {
        let (status, model) = get(path.into(), "key-default").await;
        assert_eq!(status, StatusCode::OK, "{path}: {model}");
        assert_eq!(model, listed, "{path}");
    }
    let (status, model) = get("/v1/models/exact-model".into(), "key-limited").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        model,
        json!({"id": "exact-model", "object": "model", "created": 0, "owned_by": "other"})
    );

    // Not listed for this group (its connection is not allowed), or not at all.
    for (path, key) in [
        ("/v1/models/meta-llama/Llama-3-8B", "key-limited"),
        ("/v1/models/no-such-model", "key-default"),
        ("/v1/models/meta-llama", "key-default"),
    ] {
        let (status, body) = get(path.into(), key).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path} {key}: {body}");
        assert_eq!(body["error"]["code"], "model_not_found", "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "model");
    }
    // The key check comes first, as for the list.
    let (status, body) = get("/v1/models/exact-model".into(), "nope").await;
    assert!(status.is_client_error() && status != StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "invalid_api_key");
}

/// As in the reference, a disabled service needs no connection: it loads, starts
/// and answers 503 on the API doors (an enabled one without connections is refused
/// at load, see `config::tests`).
#[tokio::test]
async fn disabled_service_without_connections_starts_and_answers_503() {
    let gw = TestGateway::start("enabled = false\n").await;
    let (status, body) = gw.chat_json("any-key", user("gpt-4o", "hi")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "service_disabled");
    let response = gw
        .client
        .get(gw.url("/v1/models"))
        .bearer_auth("any-key")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);

    let gw = TestGateway::start("enabled = false\n[connections]\n").await;
    let (status, _) = gw.chat_json("any-key", user("gpt-4o", "hi")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn allow_all_key_check_accepts_any_key_into_its_group() {
    let config = format!(
        "{}\n[api_key_check]\nclass = \"lm_proxy.api_key_check.AllowAll\"\ngroup = \"limited\"\n",
        BASE
    );
    let gw = TestGateway::start(&config).await;
    let (status, _) = gw
        .chat_json("anything-at-all", user("exact-model", "hi"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = gw.chat_json("anything-at-all", user("gpt-4o", "hi")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "connection_not_allowed");
}

#[tokio::test]
async fn bad_input_is_400_in_the_openai_envelope() {
    let gw = TestGateway::start(BASE).await;
    // Each with what names the reason: its `param`, its `code`, or (where the answer
    // has neither) a phrase of its message.
    let cases: Vec<(&str, Option<&str>, (&str, &str))> = vec![
        ("", Some("application/json"), ("message", "empty")),
        (
            "{not json",
            Some("application/json"),
            ("code", "invalid_json"),
        ),
        (
            "[1,2]",
            Some("application/json"),
            ("message", "JSON object"),
        ),
        (
            r#"{"messages": [{"role": "user", "content": "x"}]}"#,
            Some("application/json"),
            ("param", "model"),
        ),
        (
            r#"{"model": 5, "messages": [{"role": "user", "content": "x"}]}"#,
            Some("application/json"),
            ("param", "model"),
        ),
        (
            r#"{"model": "gpt-4o"}"#,
            Some("application/json"),
            ("param", "messages"),
        ),
        (
            r#"{"model": "gpt-4o", "messages": "hi"}"#,
            Some("application/json"),
            ("param", "messages"),
        ),
        (
            r#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream": 1}"#,
            Some("application/json"),
            ("param", "stream"),
        ),
        (
            r#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}"#,
            Some("text/plain"),
            ("code", "invalid_content_type"),
        ),
        (
            r#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}"#,
            Some("application/x-www-form-urlencoded"),
            ("code", "invalid_content_type"),
        ),
    ];
    for (body, content_type, (field, reason)) in cases {
        let mut request = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth("key-default")
            .body(body.to_owned());
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "body {body:?} / {content_type:?}"
        );
        let value: Value = response.json().await.unwrap();
        assert_eq!(value["error"]["type"], "invalid_request_error", "{body}");
        let named = match field {
            "message" => value["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(reason)),
            _ => value["error"][field] == reason,
        };
        assert!(named, "body {body:?}: expected {field} {reason:?}: {value}");
        assert!(value["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // Invalid UTF-8 in the body.
    let response = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("key-default")
        .header("content-type", "application/json")
        .body(vec![b'{', 0xff, 0xfe, b'}'])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let gw = TestGateway::start(&format!("max_request_body_mb = 0.01\n{BASE}")).await;
    let big = "x".repeat(20 * 1024);
    let response = gw.chat("key-default", user("gpt-4o", &big)).await;
    assert_eq!(
        response.headers()["connection"],
        "close",
        "the unread rest of the body ends the connection"
    );
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "request_too_large");
    let (status, _) = gw.chat_json("key-default", user("gpt-4o", "small")).await;
    assert_eq!(status, StatusCode::OK);
}

/// A page on another site can make a browser POST here without a CORS preflight only
/// as a "simple" request: no content type, or a form or text one. Behind `AllowAll`
/// (or a network-position trust), that would be a free completion for any site, so
/// the chat door requires a JSON content type.
#[tokio::test]
async fn cross_site_simple_posts_are_refused_even_with_allow_all() {
    let upstream = MockUpstream::start().await;
    let gw = TestGateway::start(&format!(
        "[connections.up]\napi_type = \"open_ai\"\napi_base = \"{}\"\n[routing]\n\"*\" = \"up.*\"\n\
         [api_key_check]\nclass = \"lm_proxy.api_key_check.AllowAll\"\n",
        upstream.base()
    ))
    .await;
    let body = r#"{"model": "m", "messages": [{"role": "user", "content": "x"}]}"#;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
    ] {
        let mut request = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .header("origin", "https://evil.example")
            .body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "{content_type:?}"
        );
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "invalid_content_type", "{error}");
    }
    assert!(
        upstream.requests().is_empty(),
        "nothing reached the upstream"
    );
    // With JSON it is served.
    let response = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
