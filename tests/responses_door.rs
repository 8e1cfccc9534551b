//! The Responses door (`POST /v1/responses`): translation for an OpenAI-compatible
//! chat upstream (request items → chat messages, answer → `response`, chunks → the
//! event grammar with `sequence_number`), the built-in mock, byte-for-byte
//! pass-through to an upstream that speaks the Responses API (`responses_api`),
//! what needs server-side state refused with a 400 on translated connections, bad
//! inputs in OpenAI's envelope, and the door in the metrics and the log entry.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use common::TestGateway;
use serde_json::{json, Value};

/// A Responses API answer with unusual spacing and a field nobody here knows, so
/// that any re-serialisation shows.
const RESPONSE_ANSWER: &str = "{\"id\":\"resp_up1\",\"object\":\"response\",\"created_at\":1700000000,\"status\":\"completed\",\"model\":\"gpt-real\",\"output\":[{\"type\":\"web_search_call\",\"id\":\"ws_1\",\"status\":\"completed\"},{\"type\":\"message\",\"id\":\"msg_1\",\"role\":\"assistant\",\"status\":\"completed\",\"content\":[{\"type\":\"output_text\",\"text\":\"caf\\u00e9\",\"annotations\":[]}]}],\"usage\":{\"input_tokens\":11,\"output_tokens\":2,\"total_tokens\":13}, \"zz_new\":{\"b\":1.50}}";

/// The event data of a streamed Responses answer, as the upstream writes them.
const RESPONSE_EVENTS: [(&str, &str); 4] = [
    ("response.created", "{\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_up2\",\"object\":\"response\",\"status\":\"in_progress\",\"output\":[]}}"),
    ("response.output_text.delta", "{\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"caf\\u00e9\" , \"zz\":1.50}"),
    ("response.output_text.done", "{\"type\":\"response.output_text.done\",\"sequence_number\":2,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"text\":\"caf\\u00e9\"}"),
    ("response.completed", "{\"type\":\"response.completed\",\"sequence_number\":3,\"response\":{\"id\":\"resp_up2\",\"object\":\"response\",\"status\":\"completed\",\"output\":[],\"usage\":{\"input_tokens\":4,\"output_tokens\":5,\"total_tokens\":9}}}"),
];

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, HeaderMap, Bytes)>>>);

impl Seen {
    fn last(&self) -> (String, HeaderMap, Bytes) {
        self.0
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no upstream request")
    }

    fn last_json(&self) -> Value {
        serde_json::from_slice(&self.last().2).unwrap()
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

fn chunk(model: &str, delta: Value, finish: Option<&str>) -> Value {
    json!({"id": "chatcmpl-r", "object": "chat.completion.chunk", "created": 1, "model": model,
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

/// What a chat upstream answers for a model name, as a chat.completion message
/// and finish reason.
fn scripted(model: &str, request: &Value) -> (Value, &'static str) {
    match model {
        "chat-tools" => {
            // Calls the tool until the conversation has its output, then answers.
            let has_output = request["messages"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["role"] == "tool"));
            if has_output {
                (
                    json!({"role": "assistant", "content": "It is sunny."}),
                    "stop",
                )
            } else {
                (
                    json!({"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
                    ]}),
                    "tool_calls",
                )
            }
        }
        "chat-reason" => (
            json!({"role": "assistant", "reasoning_content": "Think.", "content": "Done."}),
            "stop",
        ),
        "chat-length" => (json!({"role": "assistant", "content": "Hel"}), "length"),
        _ => (
            json!({"role": "assistant", "content": "Hello there"}),
            "stop",
        ),
    }
}

async fn handle(State(seen): State<Seen>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    seen.0
        .lock()
        .unwrap()
        .push((uri.path().to_owned(), headers.clone(), body.clone()));
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = request["model"].as_str().unwrap_or("").to_owned();
    let stream = request["stream"] == true;
    if uri.path() == "/v1/responses" {
        if !stream {
            return ([("content-type", "application/json")], RESPONSE_ANSWER).into_response();
        }
        let mut text = String::new();
        for (kind, data) in RESPONSE_EVENTS {
            text.push_str(&format!("event: {kind}\ndata: {data}\n\n"));
        }
        return ([("content-type", "text/event-stream")], text).into_response();
    }
    if uri.path() == "/v1/messages" {
        return anthropic_answer(&model, stream);
    }
    if uri.path().contains("GenerateContent") || uri.path().contains("generateContent") {
        return gemini_answer(uri.path().contains("streamGenerateContent"));
    }
    if model == "chat-500" {
        let body = json!({"error": {"message": "down", "type": "server_error"}});
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(body),
        )
            .into_response();
    }
    let (message, finish) = scripted(&model, &request);
    let usage = json!({"prompt_tokens": 6, "completion_tokens": 3, "total_tokens": 9});
    if !stream {
        let answer = json!({"id": "chatcmpl-r", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage});
        return axum::Json(answer).into_response();
    }
    let mut chunks = vec![chunk(&model, json!({"role": "assistant"}), None)];
    if let Some(reasoning) = message.get("reasoning_content") {
        chunks.push(chunk(&model, json!({"reasoning_content": reasoning}), None));
    }
    if let Some(text) = message["content"].as_str() {
        // In two pieces, to show the deltas.
        let (a, b) = text.split_at(text.len() / 2);
        chunks.push(chunk(&model, json!({"content": a}), None));
        chunks.push(chunk(&model, json!({"content": b}), None));
    }
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        let args = call["function"]["arguments"].as_str().unwrap();
        let (a, b) = args.split_at(args.len() / 2);
        chunks.push(chunk(
            &model,
            json!({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
            "function": {"name": call["function"]["name"], "arguments": a}}]}),
            None,
        ));
        chunks.push(chunk(
            &model,
            json!({"tool_calls": [{"index": 0, "function": {"arguments": b}}]}),
            None,
        ));
    }
    let mut text = String::new();
    for c in &chunks {
        text.push_str(&format!("data: {c}\n\n"));
    }
    if model == "chat-midfail" {
        text.push_str(
            "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n",
        );
        return ([("content-type", "text/event-stream")], text).into_response();
    }
    text.push_str(&format!(
        "data: {}\n\n",
        chunk(&model, json!({}), Some(finish))
    ));
    let mut last = chunk(&model, json!({}), None);
    last["choices"] = json!([]);
    last["usage"] = usage;
    text.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
    ([("content-type", "text/event-stream")], text).into_response()
}

/// An Anthropic Messages API answer: "Hi from Claude".
fn anthropic_answer(model: &str, stream: bool) -> Response {
    let usage = json!({"input_tokens": 4, "output_tokens": 3});
    if !stream {
        return axum::Json(
            json!({"id": "msg_a1", "type": "message", "role": "assistant",
            "model": model, "content": [{"type": "text", "text": "Hi from Claude"}],
            "stop_reason": "end_turn", "stop_sequence": null, "usage": usage}),
        )
        .into_response();
    }
    let events = [
        json!({"type": "message_start", "message": {"id": "msg_a2", "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi from "}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Claude"}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 3}}),
        json!({"type": "message_stop"}),
    ];
    let text: String = events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect();
    ([("content-type", "text/event-stream")], text).into_response()
}

/// A Gemini answer: "Hi from Gemini".
fn gemini_answer(stream: bool) -> Response {
    let answer = |text: &str, finish: Option<&str>| {
        let mut candidate =
            json!({"content": {"role": "model", "parts": [{"text": text}]}, "index": 0});
        if let Some(finish) = finish {
            candidate["finishReason"] = finish.into();
        }
        json!({"candidates": [candidate],
               "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 3, "totalTokenCount": 7}})
    };
    if !stream {
        return axum::Json(answer("Hi from Gemini", Some("STOP"))).into_response();
    }
    let text = format!(
        "data: {}\n\ndata: {}\n\n",
        answer("Hi from ", None),
        answer("Gemini", Some("STOP"))
    );
    ([("content-type", "text/event-stream")], text).into_response()
}

async fn start_upstream() -> (String, Seen) {
    let seen = Seen::default();
    let app = axum::Router::new()
        .fallback(axum::routing::post(handle))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

fn config(base: &str, extra: &str) -> String {
    format!(
        r#"
        max_request_body_mb = 0.01
        {extra}
        [connections.chat]
        api_type = "open_ai"
        api_base = "{base}/v1"
        api_key = "sk-chat-upstream"
        [connections.native]
        api_type = "open_ai"
        api_base = "{base}/v1"
        api_key = "sk-native-upstream"
        responses_api = true
        [connections.mock]
        api_type = "mock"
        [connections.anth]
        api_type = "anthropic"
        api_base = "{base}"
        api_key = "sk-ant"
        [connections.gemini]
        api_type = "google"
        api_base = "{base}"
        api_key = "AIza-test-key"
        [connections.fb]
        class = "lm_proxy.strategies.Fallback"
        connections = ["chat.chat-500", "mock"]
        [routing]
        "claude*" = "anth.*"
        "gemini*" = "gemini.*"
        "fb*" = "fb.*"
        "mock*" = "mock.*"
        "gpt-*" = "native.*"
        "*" = "chat.*"
        [groups.default]
        api_keys = ["k1"]
        [groups.limited]
        api_keys = ["k2"]
        allowed_connections = "mock"
        "#
    )
}

async fn setup(extra: &str) -> (TestGateway, Seen) {
    let (base, seen) = start_upstream().await;
    let gw = TestGateway::start(&config(&base, extra)).await;
    (gw, seen)
}

async fn post(gw: &TestGateway, key: &str, body: &str) -> (u16, String, String) {
    let response = gw
        .client
        .post(gw.url("/v1/responses"))
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

/// The events of an SSE body: (the `event:` name, the data as JSON), checking that
/// the name is the data's `type`.
fn sse_events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|event| {
            let (name, data) = event
                .strip_prefix("event: ")
                .and_then(|e| e.split_once("\ndata: "))
                .unwrap_or_else(|| panic!("not an event: {event:?}"));
            let data: Value = serde_json::from_str(data).unwrap();
            assert_eq!(data["type"], name, "{event}");
            data
        })
        .collect()
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn output_text(response: &Value) -> String {
    response["output"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().unwrap())
        .filter_map(|p| p["text"].as_str())
        .collect()
}

#[tokio::test]
async fn a_chat_upstream_gets_the_canonical_request_and_the_client_a_response() {
    let (gw, seen) = setup("").await;
    let (status, response) = post_json(
        &gw,
        json!({"model": "some-chat-model", "input": "Hi", "instructions": "Be brief.",
               "max_output_tokens": 50, "metadata": {"k": "v"}, "store": true, "user": "u1"}),
    )
    .await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["object"], "response");
    assert_eq!(response["status"], "completed");
    assert_eq!(response["model"], "some-chat-model");
    assert_eq!(response["metadata"], json!({"k": "v"}));
    assert_eq!(output_text(&response), "Hello there");
    assert_eq!(response["usage"]["input_tokens"], 6);
    assert_eq!(response["usage"]["output_tokens"], 3);
    let (path, headers, _) = seen.last();
    assert_eq!(path, "/v1/chat/completions");
    assert_eq!(headers["authorization"], "Bearer sk-chat-upstream");
    assert_eq!(
        seen.last_json(),
        json!({"model": "some-chat-model", "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            "max_completion_tokens": 50, "user": "u1"})
    );

    // Items: a message with parts, and structured output.
    let (status, response) = post_json(
        &gw,
        json!({"model": "some-chat-model",
               "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}],
               "text": {"format": {"type": "json_schema", "name": "o", "schema": {"type": "object"}}},
               "reasoning": {"effort": "high"}}),
    )
    .await;
    assert_eq!(status, 200, "{response}");
    let sent = seen.last_json();
    assert_eq!(sent["messages"], json!([{"role": "user", "content": "Hi"}]));
    assert_eq!(
        sent["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "o", "schema": {"type": "object"}}})
    );
    assert_eq!(sent["reasoning_effort"], "high");
    assert_eq!(
        response["text"]["format"]["type"], "json_schema",
        "the request's text config is echoed"
    );
}

#[tokio::test]
async fn a_function_calling_loop_of_two_turns() {
    let (gw, seen) = setup("").await;
    let tools = json!([{"type": "function", "name": "get_weather", "description": "Weather",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let (status, first) = post_json(
        &gw,
        json!({"model": "chat-tools", "input": "Weather in Paris?", "tools": tools}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let call = &first["output"][0];
    assert_eq!(call["type"], "function_call");
    assert_eq!(call["name"], "get_weather");
    assert_eq!(call["call_id"], "call_w1");
    assert_eq!(call["arguments"], "{\"city\":\"Paris\"}");
    assert_eq!(
        seen.last_json()["tools"][0],
        json!({"type": "function", "function": {"name": "get_weather", "description": "Weather",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
    );
    let mut input = vec![json!({"role": "user", "content": "Weather in Paris?"})];
    input.extend(first["output"].as_array().unwrap().iter().cloned());
    input.push(json!({"type": "function_call_output", "call_id": "call_w1", "output": "sunny"}));
    let (status, second) = post_json(
        &gw,
        json!({"model": "chat-tools", "input": input, "tools": tools}),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(output_text(&second), "It is sunny.");
    assert_eq!(
        seen.last_json()["messages"],
        json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_w1", "content": "sunny"},
        ])
    );
}

#[tokio::test]
async fn translated_streams_follow_the_event_grammar() {
    let (gw, _seen) = setup("").await;
    for (model, expected_output) in [
        ("chat-text", vec!["message"]),
        ("chat-reason", vec!["reasoning", "message"]),
        ("chat-tools", vec!["function_call"]),
    ] {
        let (status, content_type, text) = post(
            &gw,
            "k1",
            &json!({"model": model, "input": "Hi", "stream": true}).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(content_type, "text/event-stream");
        let events = sse_events(&text);
        for (i, event) in events.iter().enumerate() {
            assert_eq!(event["sequence_number"], i as u64, "{model}: {event}");
        }
        let kinds = kinds(&events);
        assert_eq!(
            kinds[..2],
            ["response.created", "response.in_progress"],
            "{model}"
        );
        assert_eq!(*kinds.last().unwrap(), "response.completed", "{model}");
        let response = &events.last().unwrap()["response"];
        let types: Vec<&str> = response["output"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, expected_output, "{model}");
        assert_eq!(response["usage"]["output_tokens"], 3, "{model}");
        match model {
            "chat-text" => {
                assert!(kinds.contains(&"response.output_text.delta"));
                assert_eq!(output_text(response), "Hello there");
            }
            "chat-reason" => {
                assert!(kinds.contains(&"response.reasoning_summary_text.delta"));
                assert_eq!(response["output"][0]["summary"][0]["text"], "Think.");
            }
            _ => {
                assert!(kinds.contains(&"response.function_call_arguments.delta"));
                let done = events
                    .iter()
                    .find(|e| e["type"] == "response.function_call_arguments.done")
                    .unwrap();
                assert_eq!(done["arguments"], "{\"city\":\"Paris\"}");
            }
        }
    }

    // A length stop: `response.incomplete`, and the same in a whole answer.
    let (_, _, text) = post(
        &gw,
        "k1",
        r#"{"model":"chat-length","input":"Hi","stream":true}"#,
    )
    .await;
    let events = sse_events(&text);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.incomplete");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    let (_, response) = post_json(&gw, json!({"model": "chat-length", "input": "Hi"})).await;
    assert_eq!(response["status"], "incomplete");
    assert_eq!(
        response["incomplete_details"]["reason"],
        "max_output_tokens"
    );

    // A failure midway: `response.failed`, nothing after it.
    let (status, _, text) = post(
        &gw,
        "k1",
        r#"{"model":"chat-midfail","input":"Hi","stream":true}"#,
    )
    .await;
    assert_eq!(status, 200);
    let events = sse_events(&text);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.failed", "{text}");
    assert_eq!(last["response"]["status"], "failed");
    assert!(last["response"]["error"]["message"].is_string());
}

#[tokio::test]
async fn the_mock_serves_the_door_deterministically() {
    let (gw, seen) = setup("").await;
    let (status, response) = post_json(&gw, json!({"model": "mock", "input": "one two"})).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(output_text(&response), "You said: one two");
    let (_, again) = post_json(&gw, json!({"model": "mock", "input": "one two"})).await;
    assert_eq!(output_text(&again), output_text(&response));
    assert_eq!(again["usage"], response["usage"]);
    let (status, _, text) = post(
        &gw,
        "k1",
        r#"{"model":"mock","input":[{"role":"user","content":"one two"}],"stream":true}"#,
    )
    .await;
    assert_eq!(status, 200);
    let events = sse_events(&text);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.completed");
    assert_eq!(output_text(&last["response"]), "You said: one two");
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, "You said: one two");
    // A forced tool call.
    let (_, response) = post_json(
        &gw,
        json!({"model": "mock", "input": "x", "tool_choice": "required",
               "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}]}),
    )
    .await;
    assert_eq!(response["output"][0]["type"], "function_call", "{response}");
    assert_eq!(response["output"][0]["name"], "f");
    assert_eq!(seen.count(), 0, "the mock needs no upstream");
}

#[tokio::test]
async fn anthropic_gemini_and_fallback_connections_are_translated_too() {
    let (gw, seen) = setup("").await;
    for (model, text, path) in [
        ("claude-x", "Hi from Claude", "/v1/messages"),
        ("gemini-x", "Hi from Gemini", "GenerateContent"),
        ("fb-x", "You said: Hi", "/v1/chat/completions"),
    ] {
        let (status, response) = post_json(&gw, json!({"model": model, "input": "Hi"})).await;
        assert_eq!(status, 200, "{model}: {response}");
        assert_eq!(output_text(&response), text, "{model}");
        assert!(
            response["usage"]["output_tokens"].as_u64().unwrap() > 0,
            "{model}"
        );
        assert!(
            seen.last().0.to_lowercase().contains(&path.to_lowercase()),
            "{model}: {}",
            seen.last().0
        );
        let (status, _, body) = post(
            &gw,
            "k1",
            &json!({"model": model, "input": "Hi", "stream": true}).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{model}: {body}");
        let events = sse_events(&body);
        for (i, event) in events.iter().enumerate() {
            assert_eq!(event["sequence_number"], i as u64, "{model}: {event}");
        }
        let last = events.last().unwrap();
        assert_eq!(last["type"], "response.completed", "{model}: {body}");
        assert_eq!(output_text(&last["response"]), text, "{model}");
    }
}

#[tokio::test]
async fn a_responses_upstream_gets_the_bytes_and_its_answer_passes_as_written() {
    let (gw, seen) = setup("").await;
    let body = "{\"model\":\"gpt-x\", \"input\":\"Say \\u00e9\",\"previous_response_id\":\"resp_0\",\"tools\":[{\"type\":\"web_search\"}],\"store\":true,\"zz_vendor\":[1.50]}";
    let (status, content_type, answer) = post(&gw, "k1", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(content_type, "application/json");
    assert_eq!(answer, RESPONSE_ANSWER);
    let (path, headers, sent) = seen.last();
    assert_eq!(path, "/v1/responses");
    assert_eq!(headers["authorization"], "Bearer sk-native-upstream");
    assert_eq!(std::str::from_utf8(&sent).unwrap(), body);

    let (status, content_type, text) =
        post(&gw, "k1", r#"{"model":"gpt-x","input":"Hi","stream":true}"#).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(content_type, "text/event-stream");
    let mut expected = String::new();
    for (kind, data) in RESPONSE_EVENTS {
        expected.push_str(&format!("event: {kind}\ndata: {data}\n\n"));
    }
    assert_eq!(text, expected);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"endpoint="responses",status="200",connection="native""#),
        "{metrics}"
    );
}

#[tokio::test]
async fn what_needs_server_state_is_a_400_on_translated_connections() {
    let (gw, seen) = setup("").await;
    for (body, param) in [
        (
            json!({"model": "m", "input": "Hi", "previous_response_id": "resp_1"}),
            "previous_response_id",
        ),
        (
            json!({"model": "m", "input": "Hi", "tools": [{"type": "web_search"}]}),
            "tools[0].type",
        ),
        (
            json!({"model": "m", "input": "Hi", "background": true}),
            "background",
        ),
        (
            json!({"model": "mock", "input": [{"type": "item_reference", "id": "msg_1"}]}),
            "input[0].type",
        ),
    ] {
        let (status, error) = post_json(&gw, body.clone()).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
        assert_eq!(error["error"]["param"], param, "{error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("server-side state") || message.contains("built-in"),
            "{message}"
        );
    }
    assert_eq!(seen.count(), 0);
}

#[tokio::test]
async fn bad_inputs_are_4xx_in_openai_envelope() {
    let (gw, seen) = setup("").await;
    for (body, status, param) in [
        ("not json", 400, Value::Null),
        ("[1]", 400, Value::Null),
        (r#"{"input":"x"}"#, 400, json!("model")),
        (r#"{"model":"m","input":5}"#, 400, json!("input")),
        (r#"{"model":"m"}"#, 400, json!("input")),
        (r#"{"model":"m","input":[1]}"#, 400, json!("input[0]")),
        (
            r#"{"model":"m","input":"x","max_output_tokens":-1}"#,
            400,
            json!("max_output_tokens"),
        ),
        (
            r#"{"model":"m","input":[{"role":"user"}]}"#,
            400,
            json!("input[0].content"),
        ),
        (
            r#"{"model":"m","input":[{"type":"function_call","name":"f"}]}"#,
            400,
            json!("input[0].call_id"),
        ),
    ] {
        let (got, _, text) = post(&gw, "k1", body).await;
        assert_eq!(got, status, "{body}: {text}");
        let error: Value = serde_json::from_str(&text).unwrap();
        assert!(error["error"]["message"].is_string(), "{text}");
        if !param.is_null() {
            assert_eq!(error["error"]["param"], param, "{body}: {text}");
        }
    }
    let (status, _, _) = post(&gw, "bad-key", r#"{"model":"m","input":"x"}"#).await;
    assert_eq!(status, 401);
    let (status, _, _) = post(&gw, "k2", r#"{"model":"m","input":"x"}"#).await;
    assert_eq!(status, 403);
    let big = json!({"model": "m", "input": "x".repeat(20_000)}).to_string();
    let (status, _, _) = post(&gw, "k1", &big).await;
    assert_eq!(status, 413);
    assert_eq!(seen.count(), 0);
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
    let (status, _, _) = post(
        &gw,
        "k1",
        r#"{"model":"chat-text","input":"x","stream":true}"#,
    )
    .await;
    assert_eq!(status, 200);
    let metrics = gw.metrics().await;
    for needle in [
        r#"endpoint="responses",status="200",connection="mock""#,
        r#"endpoint="responses",status="200",connection="chat""#,
    ] {
        assert!(metrics.contains(needle), "{needle} in\n{metrics}");
    }
    gw.server.shutdown(Duration::from_secs(5));
    gw.server.wait().await.unwrap();
    let lines = common::json_lines(&log);
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l["endpoint"] == "responses"));
    let plain = lines.iter().find(|l| l["connection"] == "mock").unwrap();
    assert_eq!(plain["response"], "You said: one two", "{plain}");
    let streamed = lines.iter().find(|l| l["connection"] == "chat").unwrap();
    assert_eq!(streamed["response"], "Hello there", "{streamed}");
}

/// With no handler and no logger, the chat request for a chat-only upstream is
/// written from the client's bytes (`responses::chat_body`); with a handler it is
/// built from the tree. Both send the same request and echo the same members,
/// streamed or not.
#[tokio::test]
async fn the_chat_request_written_without_a_tree_is_the_translated_one() {
    let (bare, bare_seen) = setup("").await;
    let extra = "[[before]]\nclass = \"lm_proxy.handlers.RateLimiter\"\nmax_requests = 100\nwindow_seconds = 60\nper = \"api_key\"\n";
    let (handled, handled_seen) = setup(extra).await;
    let body = json!({"model": "chat-tools", "instructions": "You are an agent.", "store": false,
        "tools": [{"type": "function", "name": "get_weather", "description": "Weather",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "tool_choice": "auto", "parallel_tool_calls": true, "reasoning": {"effort": "low"},
        "metadata": {"k": "v"}, "temperature": 0.5, "max_output_tokens": 99,
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "call_w1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call_output", "call_id": "call_w1", "output": "sunny"}]});
    for stream in [false, true] {
        let mut body = body.clone();
        body["stream"] = json!(stream);
        let mut sent = Vec::new();
        let mut answers = Vec::new();
        for (gw, seen) in [(&bare, &bare_seen), (&handled, &handled_seen)] {
            let (status, _, text) = post(gw, "k1", &body.to_string()).await;
            assert_eq!(status, 200, "{text}");
            sent.push(seen.last_json());
            let mut response = if stream {
                let events = sse_events(&text);
                events.last().unwrap()["response"].clone()
            } else {
                serde_json::from_str::<Value>(&text).unwrap()
            };
            let response = response.as_object_mut().unwrap();
            for varies in ["id", "created_at", "output"] {
                response.shift_remove(varies);
            }
            answers.push(Value::Object(response.clone()));
        }
        assert_eq!(sent[0].to_string(), sent[1].to_string());
        assert_eq!(answers[0], answers[1]);
        assert_eq!(sent[0]["messages"][3]["role"], "tool");
        assert_eq!(sent[0]["max_completion_tokens"], 99);
        assert_eq!(answers[0]["metadata"], json!({"k": "v"}));
        assert_eq!(answers[0]["tools"], body["tools"]);
        assert_eq!(sent[0].get("stream_options").is_some(), stream);
    }
}
