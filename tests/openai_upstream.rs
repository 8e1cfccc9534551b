//! OpenAI-compatible connections against an in-process mock upstream: field
//! passthrough, headers, model rewriting, streamed chunks (tool-call deltas, several
//! choices, usage, [DONE]), and every failure mode before and during a stream.

mod common;

use common::{
    sse_chunks, sse_payloads, user, MockUpstream, TestGateway, VERBATIM_COMPLETION, VERBATIM_STREAM,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn config(upstream: &MockUpstream, extra_connection: &str) -> String {
    format!(
        r#"
encryption_key = "test-encryption-key"
[connections.up]
api_type = "open_ai"
api_base = "{base}/"
api_key = "sk-upstream-SECRET-1234"
model = "default-upstream-model"
timeout = 1.5
{extra_connection}
[connections.up.http_headers]
X-Static-Header = "static-value"
[connections.openai_alias]
api_type = "openai"
api_base = "{base}"
[routing]
"renamed" = "up.upstream-name"
"default-route" = "up"
"alias-*" = "openai_alias.*"
"*" = "up.*"
[groups.default]
api_keys = ["client-key"]
"#,
        base = upstream.base()
    )
}

async fn setup() -> (MockUpstream, TestGateway) {
    let upstream = MockUpstream::start().await;
    let gw = TestGateway::start(&config(&upstream, "")).await;
    (upstream, gw)
}

#[tokio::test]
async fn every_request_field_reaches_the_upstream_intact() {
    let (upstream, gw) = setup().await;
    let request = json!({
        "model": "renamed",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"}
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "n": 2,
        "logprobs": true,
        "top_logprobs": 3,
        "temperature": 0.3,
        "seed": 7,
        "a_field_nobody_has_heard_of": {"nested": [1, 2, {"deep": true}]},
    });
    let (status, body) = gw.chat_json("client-key", request.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let received = upstream.last();
    let mut expected = request.clone();
    expected["model"] = json!("upstream-name");
    assert_eq!(received.body, expected, "only `model` changes");
    assert_eq!(
        received.headers["authorization"],
        "Bearer sk-upstream-SECRET-1234"
    );
    assert_eq!(received.headers["x-static-header"], "static-value");
    assert!(received.headers.get("x-static-header").is_some());

    // The full upstream object comes back.
    assert_eq!(body["id"], "chatcmpl-upstream-1");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["created"], 1_700_000_000);
    assert_eq!(body["model"], "upstream-name");
    assert_eq!(body["system_fingerprint"], "fp_test");
    assert_eq!(body["usage"]["total_tokens"], 9);
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "upstream answer from upstream-name"
    );
}

/// With no handler and no JSON logger, nothing reads the request but the gateway:
/// its bytes go upstream as the client wrote them (number spellings, escapes,
/// member order, whitespace), with only the `model` value replaced when routing
/// renames it; an agent's `tools` too. Members the fast path leaves to the parsed
/// path (here an image part) are parsed and written again.
#[tokio::test]
async fn requests_nobody_inspects_go_upstream_as_written() {
    let (upstream, gw) = setup().await;
    let written = |model: &str| {
        format!(
            r#"{{ "messages" : [{{"role":"user","content":"caf\u00e9 \n1"}}], "temperature": 1.0E0, "model":"{model}", "x":[1.50, -0.0] }}"#
        )
    };
    let send = |body: String| {
        gw.client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth("client-key")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let response = send(written("some-client-model")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        upstream.last().bytes,
        written("some-client-model").as_bytes()
    );

    let response = send(written("renamed")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.last().bytes, written("upstream-name").as_bytes());

    // An agent's tools go as written too (checked as the validator checks them).
    let tools = r#"{"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{}}}}], "#;
    let with_tools = written("renamed").replacen("{ ", tools, 1);
    let response = send(with_tools).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        upstream.last().bytes,
        written("upstream-name").replacen("{ ", tools, 1).as_bytes()
    );

    // A member the fast path leaves to the parsed path (an image part): the same
    // request, parsed and written again (the model first, numbers as serde_json
    // writes them).
    let with_image = written("renamed").replacen(
        r#""content":"caf\u00e9 \n1""#,
        r#""content":[{"type":"image_url","image_url":{"url":"https://example.com/a.png"}}]"#,
        1,
    );
    assert_ne!(with_image, written("renamed"));
    let response = send(with_image).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let last = upstream.last();
    assert!(
        last.bytes.starts_with(br#"{"model":"upstream-name""#),
        "{:?}",
        last.bytes
    );
    assert_eq!(last.body["temperature"], 1.0);
}

#[tokio::test]
async fn model_passthrough_default_and_openai_alias() {
    let (upstream, gw) = setup().await;
    gw.chat_json("client-key", user("some-client-model", "x"))
        .await;
    assert_eq!(upstream.last().body["model"], "some-client-model");
    gw.chat_json("client-key", user("default-route", "x")).await;
    assert_eq!(upstream.last().body["model"], "default-upstream-model");
    let (status, _) = gw.chat_json("client-key", user("alias-m", "x")).await;
    assert_eq!(status, StatusCode::OK);
    let last = upstream.last();
    assert_eq!(last.body["model"], "alias-m");
    assert!(
        last.headers.get("authorization").is_none(),
        "no key configured, none sent"
    );
    // The client's own key never goes upstream.
    assert!(upstream.requests().iter().all(|r| r
        .headers
        .get("authorization")
        .map(|v| v.to_str().unwrap())
        != Some("Bearer client-key")));
}

#[tokio::test]
async fn stream_options_are_dropped_for_non_streamed_calls_only() {
    let (upstream, gw) = setup().await;
    let mut req = user("m", "x");
    req["stream_options"] = json!({"include_usage": true});
    gw.chat_json("client-key", req.clone()).await;
    assert!(upstream.last().body.get("stream_options").is_none());
    req["stream"] = json!(true);
    gw.chat("client-key", req).await.text().await.unwrap();
    assert_eq!(
        upstream.last().body["stream_options"],
        json!({"include_usage": true})
    );
}

#[tokio::test]
async fn streamed_tool_calls_choices_and_usage_are_forwarded() {
    let (_upstream, gw) = setup().await;
    let mut req = user("tools", "weather and time?");
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let response = gw.chat("client-key", req).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let (chunks, done) = sse_chunks(&text);
    assert!(done, "{text}");
    assert_eq!(
        chunks.len(),
        11,
        "every upstream chunk is forwarded: {text}"
    );

    // Reassemble as a client would: per choice index, per tool-call index.
    let mut args: std::collections::BTreeMap<(u64, u64), (String, String, String)> =
        Default::default();
    let mut second_choice_text = String::new();
    let mut finishes = Vec::new();
    for chunk in &chunks {
        for choice in chunk["choices"].as_array().unwrap() {
            let ci = choice["index"].as_u64().unwrap();
            if let Some(calls) = choice["delta"]["tool_calls"].as_array() {
                for call in calls {
                    let entry = args
                        .entry((ci, call["index"].as_u64().unwrap()))
                        .or_default();
                    if let Some(id) = call["id"].as_str() {
                        entry.0 = id.into();
                    }
                    if let Some(name) = call["function"]["name"].as_str() {
                        entry.1 = name.into();
                    }
                    entry
                        .2
                        .push_str(call["function"]["arguments"].as_str().unwrap_or(""));
                }
            }
            if let Some(t) = choice["delta"]["content"].as_str() {
                if ci == 1 {
                    second_choice_text.push_str(t);
                }
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                finishes.push((ci, f.to_owned()));
            }
        }
    }
    assert_eq!(
        args[&(0, 0)],
        (
            "call_a".into(),
            "get_weather".into(),
            "{\"city\":\"Oslo\"}".into()
        )
    );
    assert_eq!(
        args[&(0, 1)],
        ("call_b".into(), "get_time".into(), "{}".into())
    );
    assert_eq!(second_choice_text, "second choice");
    assert_eq!(
        finishes,
        [(0, "tool_calls".to_owned()), (1, "stop".to_owned())]
    );
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], 11);
}

#[tokio::test]
async fn crlf_framing_and_missing_done_are_read() {
    let (_upstream, gw) = setup().await;
    for (model, expected) in [("crlf", "crlf works"), ("no-done", "no done marker")] {
        let mut req = user(model, "x");
        req["stream"] = json!(true);
        let text = gw.chat("client-key", req).await.text().await.unwrap();
        let (chunks, done) = sse_chunks(&text);
        assert!(done, "the client always gets [DONE]");
        let content: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, expected);
        assert!(chunks.iter().all(|c| c.get("error").is_none()), "{text}");
    }
}

#[tokio::test]
async fn upstream_4xx_keeps_status_and_message() {
    let (_upstream, gw) = setup().await;
    let (status, body) = gw.chat_json("client-key", user("status-400", "x")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error"]["message"],
        "This model's maximum context length is 10 tokens"
    );
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    assert_eq!(body["error"]["param"], "messages");

    let response = gw.chat("client-key", user("status-429", "x")).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "7");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["message"], "Rate limit reached");

    let (status, body) = gw.chat_json("client-key", user("status-401", "x")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!body.to_string().contains("SECRET"));

    // Also when the client asked for a stream: the error comes before any byte.
    let mut req = user("status-400", "x");
    req["stream"] = json!(true);
    let (status, body) = gw.chat_json("client-key", req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "context_length_exceeded");
}

#[tokio::test]
async fn upstream_5xx_bad_bodies_and_refused_connections_are_502() {
    let (_upstream, gw) = setup().await;
    for model in ["status-500", "status-503-empty", "not-json"] {
        let (status, body) = gw.chat_json("client-key", user(model, "x")).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{model}");
        assert_eq!(body["error"]["type"], "upstream_error");
        assert_eq!(body["error"]["code"], "upstream_error");
        assert_eq!(
            body["error"]["message"], "Error processing upstream provider response",
            "no details without debug"
        );
    }

    // A port with nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = closed.local_addr().unwrap().port();
    drop(closed);
    let config = format!(
        "[connections.dead]\napi_type = \"open_ai\"\napi_base = \"http://127.0.0.1:{dead_port}/v1\"\n[routing]\n\"*\" = \"dead.*\"\n[groups.default]\napi_keys = [\"k\"]\n"
    );
    let gw = TestGateway::start(&config).await;
    let (status, body) = gw.chat_json("k", user("m", "x")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["error"]["code"], "upstream_error");
    let mut req = user("m", "x");
    req["stream"] = json!(true);
    let (status, _) = gw.chat_json("k", req).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn upstream_timeouts_are_504() {
    let (_upstream, gw) = setup().await;
    let started = std::time::Instant::now();
    let (status, body) = gw.chat_json("client-key", user("slow", "x")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body["error"]["code"], "upstream_timeout");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "the 1.5 s timeout applied (the mock answers after 60 s)"
    );
}

#[tokio::test]
async fn failures_after_the_stream_began_become_an_error_chunk_then_done() {
    let (_upstream, gw) = setup().await;
    for (model, expect_message) in [
        (
            "midstream-fail",
            "Error processing upstream provider response",
        ),
        ("error-event", "upstream overloaded"),
        (
            "stall-stream",
            "The upstream provider did not answer in time",
        ),
    ] {
        let chunks = failed_stream(&gw, model, expect_message).await;
        assert!(chunks.len() >= 2, "{model}: earlier chunks were delivered");
        assert_eq!(
            chunks.last().unwrap()["id"],
            chunks[0]["id"],
            "the error chunk belongs to the same stream"
        );
    }
}

/// A streamed request for `model` whose stream fails: a 200 whose last chunk is an
/// error chunk with `message`, then `[DONE]`. The chunks.
async fn failed_stream(gw: &TestGateway, model: &str, message: &str) -> Vec<Value> {
    let mut req = user(model, "x");
    req["stream"] = json!(true);
    let response = gw.chat("client-key", req).await;
    assert_eq!(response.status(), StatusCode::OK, "{model}");
    let text = response.text().await.unwrap();
    let (chunks, done) = sse_chunks(&text);
    assert!(done, "{model}: [DONE] after the error: {text}");
    let last = chunks.last().unwrap();
    assert_eq!(last["error"]["message"], message, "{model}: {text}");
    assert_eq!(last["choices"][0]["finish_reason"], "error", "{model}");
    chunks
}

/// A chunk that is not UTF-8 ends the stream with an error chunk, whether it differs
/// from the chunk before only in its text (checked where it changed) or more
/// (checked whole); the chunks before it were delivered.
#[tokio::test]
async fn a_chunk_that_is_not_utf8_ends_the_stream_with_an_error() {
    let (_upstream, gw) = setup().await;
    for (model, delivered) in [("bad-utf8", "Hello"), ("bad-utf8-first", "")] {
        let chunks = failed_stream(&gw, model, "Error processing upstream provider response").await;
        let content: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, delivered, "{model}");
        assert!(
            chunks
                .iter()
                .all(|c| c["choices"][0]["finish_reason"] != "stop"),
            "{model}: nothing after the bad chunk"
        );
    }
}

/// Complete answers and chunks are handed on as the upstream wrote them (no
/// re-serialization: spacing, key order and number spelling survive); chunks that
/// lack fields are still filled in. Logging and metrics read them all the same.
#[tokio::test]
async fn complete_upstream_json_reaches_the_client_byte_for_byte() {
    let upstream = MockUpstream::start().await;
    let gw = TestGateway::start(&format!(
        "{}\n[metrics]\nenabled = true\n",
        config(&upstream, "")
    ))
    .await;
    let response = gw.chat("client-key", user("verbatim", "x")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    assert_eq!(response.text().await.unwrap(), VERBATIM_COMPLETION);

    let mut request = user("verbatim", "x");
    request["stream"] = json!(true);
    // Asked for, so that the usage chunk reaches the client (as written).
    request["stream_options"] = json!({"include_usage": true});
    let text = gw.chat("client-key", request).await.text().await.unwrap();
    let payloads = sse_payloads(&text);
    let upstream_payloads = sse_payloads(VERBATIM_STREAM);
    assert_eq!(payloads[0], upstream_payloads[0], "{text}");
    assert_eq!(payloads[1], upstream_payloads[1].trim(), "{text}");
    let filled: Value = serde_json::from_str(&payloads[2]).unwrap();
    assert_eq!(filled["object"], "chat.completion.chunk");
    assert!(filled["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(filled["model"], "verbatim");
    assert_eq!(filled["choices"][0]["finish_reason"], "stop");
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));

    // Usage from both answers was counted (read without a JSON tree).
    let metrics = reqwest::get(gw.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prompt_tokens = metrics
        .lines()
        .find(|l| {
            l.starts_with("lm_proxy_tokens_total{")
                && l.contains(r#"model="verbatim""#)
                && l.contains(r#"type="prompt""#)
        })
        .unwrap_or_else(|| panic!("no prompt token count in {metrics}"));
    assert!(prompt_tokens.ends_with(" 6"), "{prompt_tokens}");
}

/// Both sockets of the gateway on the request path have `TCP_NODELAY` (the one it
/// accepted from the client and the one it opened to the upstream): request heads
/// and small SSE writes must not wait on Nagle's algorithm. Read from this test
/// process's own open sockets, where the in-process gateway keeps both open
/// (keep-alive on each side) after a request.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn client_and_upstream_sockets_have_tcp_nodelay() {
    use std::os::fd::BorrowedFd;

    let (upstream, gw) = setup().await;
    let (status, _) = gw.chat_json("client-key", user("gpt-x", "hi")).await;
    assert_eq!(status, StatusCode::OK);
    let (gateway_port, upstream_port) = (gw.server.addr.port(), upstream.addr.port());
    let (mut accepted, mut to_upstream) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: the descriptor was just listed as an open socket and is only
        // borrowed for getsockname/getpeername/getsockopt; if it were closed (or
        // reused) meanwhile, those calls fail or describe another socket, which the
        // port checks below skip.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        let (Ok(local), Ok(peer)) = (socket.local_addr(), socket.peer_addr()) else {
            continue;
        };
        let (Some(local), Some(peer)) = (local.as_socket(), peer.as_socket()) else {
            continue;
        };
        let Ok(nodelay) = socket.tcp_nodelay() else {
            continue;
        };
        if local.port() == gateway_port {
            accepted.push(nodelay);
        } else if peer.port() == upstream_port {
            to_upstream.push(nodelay);
        }
    }
    assert!(!accepted.is_empty(), "no accepted client connection found");
    assert!(!to_upstream.is_empty(), "no upstream connection found");
    assert!(accepted.iter().all(|&on| on), "accepted: {accepted:?}");
    assert!(
        to_upstream.iter().all(|&on| on),
        "to upstream: {to_upstream:?}"
    );
}

/// `extra_headers` in the body is refused: it would become upstream HTTP headers
/// (`llm_params.extra_headers` is the handlers' channel), letting a client set any
/// header, framing ones included. The openai SDKs send their `extra_headers` as
/// HTTP headers, which are unaffected.
#[tokio::test]
async fn extra_headers_in_the_body_are_refused_before_the_upstream() {
    let (upstream, gw) = setup().await;
    for headers in [
        json!({"content-length": "5"}),
        json!({"OpenAI-Project": "proj_other"}),
    ] {
        let mut body = user("gpt-x", "hi");
        body["extra_headers"] = headers;
        let (status, error) = gw.chat_json("client-key", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
        assert_eq!(error["error"]["param"], "extra_headers", "{error}");
    }
    assert!(upstream.requests().is_empty());
    // As HTTP headers (what the SDKs do), they are no concern of the body check.
    let response = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("client-key")
        .header("X-Tenant", "acme")
        .json(&user("gpt-x", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// `init_params` (the reference passed them to the SDK client): `default_headers`
/// are sent upstream, with `http_headers` winning a name both set, and `timeout`
/// applies when the connection sets none; anything else stops startup.
#[tokio::test]
async fn init_params_headers_and_timeout_apply_and_unknown_ones_stop_startup() {
    let upstream = MockUpstream::start().await;
    let config = format!(
        r#"
[connections.up]
api_type = "open_ai"
api_base = "{base}"
[connections.up.init_params]
timeout = 0.5
[connections.up.init_params.default_headers]
X-From-Init = "init-value"
X-Both = "from-init"
[connections.up.http_headers]
X-Both = "from-http-headers"
[routing]
"*" = "up.*"
[groups.default]
api_keys = ["k"]
"#,
        base = upstream.base()
    );
    let gw = TestGateway::start(&config).await;
    let (status, body) = gw.chat_json("k", user("m", "x")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let headers = upstream.last().headers;
    assert_eq!(headers["x-from-init"], "init-value");
    let both: Vec<_> = headers.get_all("x-both").iter().collect();
    assert_eq!(both, ["from-http-headers"], "{headers:?}");
    // The mock's `slow` answers after 60 s: the 0.5 s of init_params cut it short.
    let started = std::time::Instant::now();
    let (status, body) = gw.chat_json("k", user("slow", "x")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));

    for (init, key, problem) in [
        (
            "max_retries = 3",
            "connections.up.init_params.max_retries",
            "unsupported init parameter",
        ),
        (
            "default_headers = { X-N = 5 }",
            "connections.up.init_params.default_headers.X-N",
            "header values must be strings",
        ),
    ] {
        let text = format!(
            "[connections.up]\napi_type = \"open_ai\"\napi_base = \"{}\"\ninit_params = {{ {init} }}\n[routing]\n\"*\" = \"up.*\"\n",
            upstream.base()
        );
        let mut config = common::config_from_toml(&text);
        config.settings.host = "127.0.0.1".into();
        config.settings.port = 0;
        let err = match lm_proxy::server::start(
            config,
            std::sync::Arc::new(lm_proxy::extensions::NativeResolver),
            Default::default(),
        )
        .await
        {
            Ok(_) => panic!("{init}: startup should fail"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(key) && err.contains(problem), "{init}: {err}");
    }
}
