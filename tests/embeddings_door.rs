//! The embeddings door (`POST /v1/embeddings`): byte-for-byte pass-through to an
//! OpenAI-compatible upstream (only `model` replaced, the answer as written),
//! base64 encoding where the upstream gives floats, Gemini `batchEmbedContents` and
//! Vertex `predict` translated with usage, the mock's deterministic vectors, a
//! connection that cannot embed, bad inputs in OpenAI's envelope, and the door in
//! the metrics and the log entry.

mod common;
#[path = "doors/upstream.rs"]
mod upstream;

use std::time::Duration;

use base64::Engine;
use common::TestGateway;
use serde_json::{json, Value};

async fn setup(extra: &str) -> (TestGateway, upstream::Seen) {
    let (base, seen) = upstream::start().await;
    let gw = TestGateway::start(&upstream::config(&base, extra)).await;
    (gw, seen)
}

async fn post(gw: &TestGateway, key: &str, body: &str) -> (u16, String) {
    let response = gw
        .client
        .post(gw.url("/v1/embeddings"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

async fn post_json(gw: &TestGateway, body: Value) -> (u16, Value) {
    let (status, text) = post(gw, "k1", &body.to_string()).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn decode(b64: &Value) -> Vec<f32> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.as_str().expect("a base64 string"))
        .unwrap();
    bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[tokio::test]
async fn pass_through_is_byte_for_byte_both_ways() {
    let (gw, seen) = setup("").await;
    let body = "{ \"input\" : [\"caf\\u00e9\", \"b\"],\"model\":\"text-embedding-3-small\", \"dimensions\":3,\"user\":\"u-1\",\"zz_vendor\":{\"x\":1.50}}";
    let (status, answer) = post(&gw, "k1", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, upstream::EMBEDDINGS_ANSWER);
    let (path, headers, sent) = seen.last();
    assert_eq!(path, "/v1/embeddings");
    assert_eq!(headers["authorization"], "Bearer sk-oai-upstream");
    // The route names no other model: the bytes are the client's own.
    assert_eq!(std::str::from_utf8(&sent).unwrap(), body);
}

#[tokio::test]
async fn only_the_model_is_replaced_on_the_way_up() {
    let (base, seen) = upstream::start().await;
    let config = upstream::config(&base, "").replace(
        "\"*\" = \"oai.*\"",
        "\"small\" = \"oai.text-embedding-3-small\"\n\"*\" = \"oai.*\"",
    );
    let gw = TestGateway::start(&config).await;
    let body = "{\"model\" : \"small\",\"input\":[1, 2,3], \"encoding_format\":\"float\"}";
    let (status, answer) = post(&gw, "k1", body).await;
    assert_eq!(status, 200, "{answer}");
    let (_, _, sent) = seen.last();
    assert_eq!(
        std::str::from_utf8(&sent).unwrap(),
        "{\"model\" : \"text-embedding-3-small\",\"input\":[1, 2,3], \"encoding_format\":\"float\"}"
    );
}

#[tokio::test]
async fn base64_is_passed_on_or_encoded_when_the_upstream_gives_floats() {
    let (gw, _seen) = setup("").await;
    let (status, text) = post(
        &gw,
        "k1",
        r#"{"model":"text-embedding-3-small","input":"x","encoding_format":"base64"}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(text, upstream::EMBEDDINGS_BASE64_ANSWER);
    let (status, answer) = post_json(
        &gw,
        json!({"model": "floats-only", "input": "x", "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(decode(&answer["data"][0]["embedding"]), [0.5, -1.25, 2.0]);
    assert_eq!(answer["usage"]["prompt_tokens"], 7);
}

#[tokio::test]
async fn gemini_batch_embed_contents_is_translated() {
    let (gw, seen) = setup("").await;
    let (status, answer) = post_json(
        &gw,
        json!({"model": "gemini-embedding-001", "input": ["a", "b"], "dimensions": 3, "encoding_format": "float", "user": "u"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (path, headers, sent) = seen.last();
    assert_eq!(
        path,
        "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    );
    assert_eq!(headers["x-goog-api-key"], "AIza-test-key");
    let sent: Value = serde_json::from_slice(&sent).unwrap();
    assert_eq!(
        sent,
        json!({"requests": [
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 3},
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]}, "outputDimensionality": 3},
        ]})
    );
    assert_eq!(answer["object"], "list");
    assert_eq!(answer["model"], "gemini-embedding-001");
    assert_eq!(answer["data"][1]["index"], 1);
    assert_eq!(answer["data"][1]["object"], "embedding");
    assert_eq!(answer["data"][1]["embedding"], json!([1.0, 0.5, -0.25]));
    assert_eq!(
        answer["usage"],
        json!({"prompt_tokens": 0, "total_tokens": 0})
    );

    // base64 is encoded by the gateway.
    let (_, answer) = post_json(
        &gw,
        json!({"model": "gemini-embedding-001", "input": "a", "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(decode(&answer["data"][0]["embedding"]), [0.0, 0.5, -0.25]);

    // Token ids cannot go to Google.
    let (status, answer) = post_json(
        &gw,
        json!({"model": "gemini-embedding-001", "input": [1, 2]}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["param"], "input");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("'gemini'"));
}

#[tokio::test]
async fn vertex_predict_is_translated_with_usage() {
    let (gw, seen) = setup("").await;
    let (status, answer) = post_json(
        &gw,
        json!({"model": "vertex-text-embedding-005", "input": ["a", "b"], "dimensions": 2}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (path, headers, sent) = seen.last();
    assert_eq!(
        path,
        "/v1/projects/p1/locations/us-central1/publishers/google/models/vertex-text-embedding-005:predict"
    );
    assert_eq!(headers["authorization"], "Bearer ya29.fixed");
    let sent: Value = serde_json::from_slice(&sent).unwrap();
    assert_eq!(
        sent,
        json!({"instances": [{"content": "a"}, {"content": "b"}], "parameters": {"outputDimensionality": 2}})
    );
    assert_eq!(answer["data"][1]["embedding"], json!([1.0, 1.0]));
    assert_eq!(
        answer["usage"],
        json!({"prompt_tokens": 6, "total_tokens": 6})
    );
}

#[tokio::test]
async fn the_mock_gives_stable_vectors_of_the_asked_length() {
    let (gw, _seen) = setup("").await;
    let ask = json!({"model": "mock-embed", "input": ["hello world", "other", "1 2 3"]});
    let (status, first) = post_json(&gw, ask.clone()).await;
    assert_eq!(status, 200, "{first}");
    let (_, again) = post_json(&gw, ask).await;
    assert_eq!(first, again, "the same input, the same vectors");
    let vectors: Vec<&Vec<Value>> = first["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["embedding"].as_array().unwrap())
        .collect();
    assert_eq!(vectors.len(), 3);
    assert_eq!(vectors[0].len(), 16);
    assert_ne!(vectors[0], vectors[1]);
    assert_eq!(first["usage"]["prompt_tokens"], 6);
    // Token ids embed as their ids written out with spaces.
    let (_, tokens) = post_json(&gw, json!({"model": "mock", "input": [[1, 2, 3]]})).await;
    assert_eq!(
        tokens["data"][0]["embedding"],
        first["data"][2]["embedding"]
    );
    assert_eq!(tokens["usage"]["prompt_tokens"], 3);
    // A request for an absurd answer is refused.
    let (status, _) = post_json(
        &gw,
        json!({"model": "mock", "input": vec!["x"; 2048], "dimensions": 8192}),
    )
    .await;
    assert_eq!(status, 400);
    // Pinned: the same numbers in every run (the mock's unit test pins one too).
    let (_, short) = post_json(
        &gw,
        json!({"model": "mock", "input": "hello", "dimensions": 4}),
    )
    .await;
    let short = short["data"][0]["embedding"].as_array().unwrap().clone();
    assert_eq!(short.len(), 4);
    assert!(
        (short[0].as_f64().unwrap() - 0.746_528).abs() < 1e-5,
        "{short:?}"
    );
    let (_, b64) = post_json(
        &gw,
        json!({"model": "mock", "input": "hello", "dimensions": 4, "encoding_format": "base64"}),
    )
    .await;
    let decoded = decode(&b64["data"][0]["embedding"]);
    for (a, b) in decoded.iter().zip(&short) {
        assert!((f64::from(*a) - b.as_f64().unwrap()).abs() < 1e-6);
    }
}

#[tokio::test]
async fn a_connection_that_cannot_embed_answers_400_naming_it() {
    let (gw, seen) = setup("").await;
    let (status, answer) = post_json(&gw, json!({"model": "claude-x", "input": "hi"})).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["type"], "invalid_request_error");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'anth'"),
        "{answer}"
    );
    assert_eq!(seen.count(), 0);
}

#[tokio::test]
async fn bad_inputs_are_4xx_in_openai_envelope() {
    let (gw, seen) = setup("").await;
    for (body, param) in [
        ("{\"model\":\"m\"}", Some("input")),
        ("{\"model\":\"m\",\"input\":\"\"}", Some("input")),
        ("{\"model\":\"m\",\"input\":[]}", Some("input")),
        ("{\"model\":\"m\",\"input\":[\"a\",[1]]}", Some("input")),
        ("{\"model\":\"m\",\"input\":{}}", Some("input")),
        (
            "{\"model\":\"m\",\"input\":\"x\",\"encoding_format\":\"int8\"}",
            Some("encoding_format"),
        ),
        (
            "{\"model\":\"m\",\"input\":\"x\",\"dimensions\":-3}",
            Some("dimensions"),
        ),
        (
            "{\"model\":\"m\",\"input\":\"x\",\"user\":[]}",
            Some("user"),
        ),
        ("{\"input\":\"x\"}", Some("model")),
        ("{\"model\":\"m\",", None),
        ("[1]", None),
        ("", None),
    ] {
        let (status, text) = post(&gw, "k1", body).await;
        assert_eq!(status, 400, "{body}: {text}");
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["error"]["type"], "invalid_request_error", "{body}");
        if let Some(param) = param {
            assert_eq!(answer["error"]["param"], param, "{body}");
        }
    }
    // Upstream 4xx keep their status; a bad upstream answer is a 502.
    let (status, answer) = post_json(&gw, json!({"model": "upstream-400", "input": "x"})).await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = post_json(&gw, json!({"model": "not-json", "input": "x"})).await;
    assert_eq!(status, 502, "{answer}");
    // Key, group and size limits of every door.
    let (status, _) = post(&gw, "nope", r#"{"model":"m","input":"x"}"#).await;
    assert_eq!(status, 401);
    let (status, answer) = post(&gw, "k2", r#"{"model":"gpt-x","input":"x"}"#).await;
    assert_eq!(status, 403, "{answer}");
    let big = json!({"model": "m", "input": "x".repeat(20_000)}).to_string();
    let (status, _) = post(&gw, "k1", &big).await;
    assert_eq!(status, 413);
    let upstream_calls = seen.count();
    assert_eq!(
        upstream_calls, 2,
        "only the two upstream-error cases went up"
    );
}

#[tokio::test]
async fn the_log_entry_and_metrics_know_the_door() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.log");
    let extra = format!(
        "[[loggers]]\nclass = \"lm_proxy.loggers.BaseLogger\"\nlog_writer = {{class = \"lm_proxy.loggers.JsonLogWriter\", file_name = {:?}}}\n",
        log.to_str().unwrap()
    );
    let (gw, _seen) = setup(&extra).await;
    let (status, _) = post_json(&gw, json!({"model": "mock", "input": "one two"})).await;
    assert_eq!(status, 200);
    let (status, _) = post_json(
        &gw,
        json!({"model": "text-embedding-3-small", "input": "x"}),
    )
    .await;
    assert_eq!(status, 200);
    let metrics = gw.metrics().await;
    for needle in [
        r#"endpoint="embeddings",status="200",connection="mock""#,
        r#"endpoint="embeddings",status="200",connection="oai""#,
    ] {
        assert!(metrics.contains(needle), "{needle} in\n{metrics}");
    }
    gw.server.shutdown(Duration::from_secs(5));
    gw.server.wait().await.unwrap();
    let lines = common::json_lines(&log);
    assert_eq!(lines.len(), 2);
    for line in &lines {
        assert_eq!(line["endpoint"], "embeddings", "{line}");
        // The reference's BaseLogger logs an answer's text; embeddings have none.
        assert_eq!(line["response"], "", "{line}");
        assert!(line["request"]["input"].as_str().is_some(), "{line}");
    }
}

#[tokio::test]
async fn handlers_apply_and_an_unchanged_request_still_goes_byte_for_byte() {
    // A rate limit of two requests and a header forwarder: both doors' `before`
    // handlers run; the forwarder changes no field, so the bytes still pass as written.
    let extra = "[[before]]\nclass = \"lm_proxy.handlers.RateLimiter\"\nmax_requests = 2\nwindow_seconds = 60\nper = \"api_key\"\n[[before]]\nclass = \"lm_proxy.handlers.HTTPHeadersForwarder\"\nwhite_list_headers = [\"x-trace\"]\n";
    let (gw, seen) = setup(extra).await;
    let body = "{\"model\":\"text-embedding-3-small\",  \"input\":\"x\"}";
    let send = || {
        gw.client
            .post(gw.url("/v1/embeddings"))
            .bearer_auth("k1")
            .header("content-type", "application/json")
            .header("x-trace", "t-1")
            .body(body)
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 200);
    let (_, headers, sent) = seen.last();
    assert_eq!(std::str::from_utf8(&sent).unwrap(), body);
    assert_eq!(headers["x-trace"], "t-1");
    let (status, _) = post(&gw, "k1", r#"{"model":"mock","input":"x"}"#).await;
    assert_eq!(status, 200);
    let third = send().await.unwrap();
    assert_eq!(third.status(), 429);
}

#[tokio::test]
async fn a_fallback_embeds_with_its_first_member_that_can() {
    let (base, seen) = upstream::start().await;
    let config = upstream::config(&base, "")
        .replace(
            "[routing]",
            "[connections.chain]\nclass = \"lm_proxy.strategies.Fallback\"\nconnections = [\"anth\", \"oai.text-embedding-3-large\"]\n[routing]\n\"chained\" = \"chain\"",
        );
    let gw = TestGateway::start(&config).await;
    let (status, text) = post(&gw, "k1", "{\"model\":\"chained\", \"input\":\"x\"}").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(text, upstream::EMBEDDINGS_ANSWER);
    let (_, _, sent) = seen.last();
    assert_eq!(
        std::str::from_utf8(&sent).unwrap(),
        "{\"model\":\"text-embedding-3-large\", \"input\":\"x\"}"
    );
}
