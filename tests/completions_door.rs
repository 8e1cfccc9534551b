//! The legacy completions door (`POST /v1/completions`): pass-through to an
//! OpenAI-compatible upstream, streamed (events forwarded as written) and not, the
//! mock's completions, other kinds refused with a 400 naming the connection, bad
//! inputs in OpenAI's envelope, the door in the metrics and the log entry, and
//! streams' usage and answer for loggers and metrics (issue 16).

mod common;
#[path = "doors/upstream.rs"]
mod upstream;

use std::time::Duration;

use common::{sse_payloads, TestGateway};
use serde_json::{json, Value};

async fn setup(extra: &str) -> (TestGateway, upstream::Seen) {
    let (base, seen) = upstream::start().await;
    let gw = TestGateway::start(&upstream::config(&base, extra)).await;
    (gw, seen)
}

async fn post(gw: &TestGateway, key: &str, body: &str) -> (u16, String, String) {
    let response = gw
        .client
        .post(gw.url("/v1/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

async fn post_json(gw: &TestGateway, body: Value) -> (u16, Value) {
    let (status, _, text) = post(gw, "k1", &body.to_string()).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn pass_through_is_byte_for_byte_both_ways() {
    let (gw, seen) = setup("").await;
    let body = "{\"model\":\"gpt-3.5-turbo-instruct\", \"prompt\":\"Say \\u00e9\",\"max_tokens\":1,\"logprobs\":null,\"zz_vendor\":[1.50]}";
    let (status, content_type, answer) = post(&gw, "k1", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(content_type, "application/json");
    assert_eq!(answer, upstream::COMPLETION_ANSWER);
    let (path, headers, sent) = seen.last();
    assert_eq!(path, "/v1/completions");
    assert_eq!(headers["authorization"], "Bearer sk-oai-upstream");
    assert_eq!(std::str::from_utf8(&sent).unwrap(), body);
}

#[tokio::test]
async fn streams_are_forwarded_as_written() {
    let (gw, seen) = setup("").await;
    let body = r#"{"model":"gpt-3.5-turbo-instruct","prompt":["a"],"stream":true,"stream_options":{"include_usage":true}}"#;
    let (status, content_type, text) = post(&gw, "k1", body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(content_type, "text/event-stream");
    let mut expected: Vec<String> = upstream::COMPLETION_EVENTS
        .iter()
        .map(|e| e.to_string())
        .collect();
    expected.push("[DONE]".into());
    assert_eq!(sse_payloads(&text), expected);
    let (_, headers, sent) = seen.last();
    assert_eq!(std::str::from_utf8(&sent).unwrap(), body);
    assert_eq!(headers["accept"], "text/event-stream");
}

#[tokio::test]
async fn a_stream_that_fails_midway_ends_with_an_error_event_and_done() {
    let (gw, _seen) = setup("").await;
    let (status, _, text) = post(
        &gw,
        "k1",
        r#"{"model":"midfail","prompt":"a","stream":true}"#,
    )
    .await;
    assert_eq!(status, 200);
    let events = sse_payloads(&text);
    assert_eq!(events[0], upstream::COMPLETION_EVENTS[0]);
    let error: Value = serde_json::from_str(&events[1]).unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("overloaded"),
        "{error}"
    );
    assert_eq!(events.last().unwrap(), "[DONE]");
}

#[tokio::test]
async fn the_mock_completes_streamed_and_not() {
    let (gw, _seen) = setup("").await;
    let (status, answer) = post_json(
        &gw,
        json!({"model": "mock", "prompt": "hello there", "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "text_completion");
    assert_eq!(answer["choices"][0]["text"], "You said: ");
    assert_eq!(answer["choices"][0]["finish_reason"], "length");
    assert_eq!(
        answer["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4})
    );

    let (status, _, text) = post(
        &gw,
        "k1",
        r#"{"model":"mock","prompt":["hi", "yo"],"stream":true,"stream_options":{"include_usage":true}}"#,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let events = sse_payloads(&text);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text_of = |index: u64| -> String {
        chunks
            .iter()
            .flat_map(|c| c["choices"].as_array().unwrap())
            .filter(|c| c["index"] == index)
            .map(|c| c["text"].as_str().unwrap())
            .collect()
    };
    assert_eq!(text_of(0), "You said: hi");
    assert_eq!(text_of(1), "You said: yo");
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 6);
}

#[tokio::test]
async fn other_kinds_answer_400_naming_the_connection() {
    let (gw, seen) = setup("").await;
    for (model, connection) in [
        ("claude-x", "'anth'"),
        ("gemini-2.5-flash", "'gemini'"),
        ("vertex-x", "'vertex'"),
    ] {
        let (status, answer) = post_json(&gw, json!({"model": model, "prompt": "hi"})).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["type"], "invalid_request_error");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(connection), "{message}");
    }
    assert_eq!(seen.count(), 0);
}

#[tokio::test]
async fn bad_inputs_are_4xx_in_openai_envelope() {
    let (gw, seen) = setup("").await;
    for (body, param) in [
        ("{\"model\":\"m\"}", Some("prompt")),
        ("{\"model\":\"m\",\"prompt\":{}}", Some("prompt")),
        ("{\"model\":\"m\",\"prompt\":[\"a\",1]}", Some("prompt")),
        ("{\"prompt\":\"x\"}", Some("model")),
        (
            "{\"model\":\"m\",\"prompt\":\"x\",\"stream\":1}",
            Some("stream"),
        ),
        ("{\"model\":", None),
        ("\"x\"", None),
    ] {
        let (status, _, text) = post(&gw, "k1", body).await;
        assert_eq!(status, 400, "{body}: {text}");
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["error"]["type"], "invalid_request_error", "{body}");
        if let Some(param) = param {
            assert_eq!(answer["error"]["param"], param, "{body}");
        }
    }
    let (status, answer) = post_json(&gw, json!({"model": "upstream-400", "prompt": "x"})).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["message"], "upstream says no");
    let (status, _, _) = post(&gw, "nope", r#"{"model":"m","prompt":"x"}"#).await;
    assert_eq!(status, 401);
    let (status, _, _) = post(&gw, "k2", r#"{"model":"gpt-x","prompt":"x"}"#).await;
    assert_eq!(status, 403);
    let big = json!({"model": "m", "prompt": "x".repeat(20_000)}).to_string();
    let (status, _, _) = post(&gw, "k1", &big).await;
    assert_eq!(status, 413);
    assert_eq!(seen.count(), 1, "only the upstream-error case went up");
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
    let (status, _) = post_json(&gw, json!({"model": "mock", "prompt": "one two"})).await;
    assert_eq!(status, 200);
    let (status, _, _) = post(
        &gw,
        "k1",
        r#"{"model":"gpt-3.5-turbo-instruct","prompt":"x","stream":true}"#,
    )
    .await;
    assert_eq!(status, 200);
    let metrics = gw.metrics().await;
    for needle in [
        r#"endpoint="completions",status="200",connection="mock""#,
        r#"endpoint="completions",status="200",connection="oai""#,
    ] {
        assert!(metrics.contains(needle), "{needle} in\n{metrics}");
    }
    gw.server.shutdown(Duration::from_secs(5));
    gw.server.wait().await.unwrap();
    let lines = common::json_lines(&log);
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l["endpoint"] == "completions"));
    let plain = lines.iter().find(|l| l["connection"] == "mock").unwrap();
    assert_eq!(plain["response"], "You said: one two", "{plain}");
}

/// One OpenAI-compatible connection on the mock (`extra` in its table) and a logger
/// whose entries carry a stream's token counts and answer text.
fn usage_config(base: &str, log: &std::path::Path, extra: &str) -> String {
    format!(
        r#"
[connections.oai]
api_type = "open_ai"
api_base = "{base}/v1"
{extra}
[routing]
"*" = "oai.*"
[groups.default]
api_keys = ["k1"]
[[loggers]]
class = "lm_proxy.loggers.BaseLogger"
[loggers.log_writer]
class = "lm_proxy.loggers.log_writers.JsonLogWriter"
file_name = {log:?}
[loggers.entry_transformer]
class = "lm_proxy.loggers.LogEntryTransformer"
prompt_tokens = "response.usage.prompt_tokens"
completion_tokens = "response.usage.completion_tokens"
answer = "response.choices.0.text"
object = "response.object"
"#,
        log = log.to_str().unwrap()
    )
}

/// The data of the upstream's events but the usage-only one, and `[DONE]`.
fn events_without_usage() -> Vec<String> {
    let mut events: Vec<String> = upstream::COMPLETION_EVENTS[..2]
        .iter()
        .map(|e| e.to_string())
        .collect();
    events.push("[DONE]".into());
    events
}

/// A streamed completion asks the upstream for usage when the client did not, so
/// that loggers and metrics get token counts, and the client does not see it; a
/// client that asked gets exactly what the upstream sent; other stream options
/// are kept. Loggers get the streamed answer's text.
#[tokio::test]
async fn streams_bring_usage_and_the_answer_to_loggers_and_metrics() {
    let (base, seen) = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.log");
    let gw = TestGateway::start(&usage_config(&base, &log, "")).await;

    // Not asked by the client: asked upstream, hidden from the client.
    let body = r#" {"model":"gpt-3.5-turbo-instruct","prompt":"a","stream":true}"#;
    let (status, _, text) = post(&gw, "k1", body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(sse_payloads(&text), events_without_usage());
    let sent: Value = serde_json::from_slice(&seen.last().2).unwrap();
    assert_eq!(
        sent["stream_options"],
        json!({"include_usage": true}),
        "{sent}"
    );
    assert_eq!(sent["prompt"], "a");
    assert_eq!(sent["stream"], true);

    // Asked by the client: the body goes as written, the usage chunk comes back.
    let body = r#"{"model":"gpt-3.5-turbo-instruct","prompt":"a","stream":true,"stream_options":{"include_usage":true}}"#;
    let (status, _, text) = post(&gw, "k1", body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(sse_payloads(&text).len(), 4, "{text}");
    assert_eq!(std::str::from_utf8(&seen.last().2).unwrap(), body);

    // Other stream options: kept, usage added.
    let body = r#"{"model":"gpt-3.5-turbo-instruct","prompt":"a","stream":true,"stream_options":{"continuous_usage_stats":false}}"#;
    let (status, _, text) = post(&gw, "k1", body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(sse_payloads(&text), events_without_usage());
    let sent: Value = serde_json::from_slice(&seen.last().2).unwrap();
    assert_eq!(
        sent["stream_options"],
        json!({"continuous_usage_stats": false, "include_usage": true})
    );

    let metrics = gw.metrics().await;
    let completion_tokens = metrics
        .lines()
        .find(|l| l.starts_with("lm_proxy_tokens_total{") && l.contains(r#"type="completion""#))
        .unwrap_or_else(|| panic!("no completion token count in {metrics}"));
    assert!(completion_tokens.ends_with(" 6"), "{completion_tokens}");

    gw.server.shutdown(Duration::from_secs(5));
    gw.server.wait().await.unwrap();
    let lines = common::json_lines(&log);
    assert_eq!(lines.len(), 3);
    for line in &lines {
        assert_eq!(line["prompt_tokens"], 2, "{line}");
        assert_eq!(line["completion_tokens"], 2, "{line}");
        assert_eq!(line["answer"], "Hello", "{line}");
        assert_eq!(line["object"], "text_completion", "{line}");
    }
}

/// `stream_usage = false` (for servers that refuse `stream_options`): the client's
/// request goes as written.
#[tokio::test]
async fn stream_usage_false_sends_the_completion_request_as_written() {
    let (base, seen) = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.log");
    let gw = TestGateway::start(&usage_config(&base, &log, "stream_usage = false")).await;
    let body = r#"{"model":"gpt-3.5-turbo-instruct","prompt":"a","stream":true}"#;
    let (status, _, text) = post(&gw, "k1", body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(sse_payloads(&text), events_without_usage());
    assert_eq!(std::str::from_utf8(&seen.last().2).unwrap(), body);
    gw.server.shutdown(Duration::from_secs(5));
    gw.server.wait().await.unwrap();
    let lines = common::json_lines(&log);
    // No usage, but the answer.
    assert_eq!(lines[0]["answer"], "Hello", "{}", lines[0]);
    assert!(lines[0]["completion_tokens"].is_null(), "{}", lines[0]);
}

/// A server that refuses the `stream_options` the gateway added: the 400 says so and
/// names the setting that stops it.
#[tokio::test]
async fn a_refused_stream_options_names_the_setting() {
    let (base, _seen) = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.log");
    let gw = TestGateway::start(&usage_config(&base, &log, "")).await;
    let (status, _, text) = post(
        &gw,
        "k1",
        r#"{"model":"strict","prompt":"a","stream":true}"#,
    )
    .await;
    assert_eq!(status, 400, "{text}");
    let error: Value = serde_json::from_str(&text).unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Unrecognized request argument"),
        "{message}"
    );
    assert!(message.contains("stream_usage = false"), "{message}");
    assert!(message.contains("'oai'"), "{message}");
    gw.server.shutdown(Duration::from_secs(5));
    gw.server.wait().await.unwrap();
}
