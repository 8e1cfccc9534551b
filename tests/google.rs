//! `api_type = "google"` and `"google_vertex_ai"` against in-process mock Google
//! upstreams (tests/google/mock.rs): translated request bodies, replayed answers
//! (text, tools, finish reasons, usage, n=2, safety blocks), streams (CRLF, errors
//! before and during), Google error mapping, and Vertex auth (JWT signature, token
//! caching and refresh, authorized_user, ADC, metadata server, project precedence).

mod common;
#[path = "google/mock.rs"]
mod mock;

use std::ffi::OsString;
use std::io::Write as _;

use common::{sse_chunks, user, TestGateway};
use mock::{GoogleMock, GOOD_KEY, TEST_KEY_PEM};
use reqwest::StatusCode;
use serde_json::{json, Value};

const KEY: &str = "client-key";

fn studio_config(mock: &GoogleMock, extra: &str) -> String {
    format!(
        r#"
[connections.gemini]
api_type = "google"
api_base = "{base}"
api_key = "{GOOD_KEY}"
timeout = 5
{extra}
[connections.badkey]
api_type = "google"
api_base = "{base}"
api_key = "AIza-wrong-key"
[routing]
"bad-key" = "badkey.gemini-2.5-flash"
"*" = "gemini.*"
[groups.default]
api_keys = ["{KEY}"]
"#,
        base = mock.base()
    )
}

async fn studio(extra: &str) -> (GoogleMock, TestGateway) {
    let mock = GoogleMock::start().await;
    let gw = TestGateway::start(&studio_config(&mock, extra)).await;
    (mock, gw)
}

fn streamed(mut body: Value) -> Value {
    body["stream"] = json!(true);
    body
}

/// POST a streamed request; (status, chunks, ended with [DONE]).
async fn stream(gw: &TestGateway, body: Value) -> (StatusCode, Vec<Value>, bool) {
    let response = gw.chat(KEY, streamed(body)).await;
    let status = response.status();
    let text = response.text().await.unwrap();
    if status != StatusCode::OK {
        return (status, vec![serde_json::from_str(&text).unwrap()], false);
    }
    let (chunks, done) = sse_chunks(&text);
    (status, chunks, done)
}

/// Per choice: (role chunks, text, tool calls as (index, id, name, args), finish reasons).
type Assembled = (
    usize,
    String,
    Vec<(u64, String, String, String)>,
    Vec<String>,
);

fn assemble(chunks: &[Value], choice: u64) -> Assembled {
    let mut out: Assembled = (0, String::new(), Vec::new(), Vec::new());
    for chunk in chunks {
        for c in chunk["choices"].as_array().unwrap() {
            if c["index"] != choice {
                continue;
            }
            let delta = &c["delta"];
            if delta.get("role").is_some() {
                out.0 += 1;
            }
            if let Some(t) = delta["content"].as_str() {
                out.1.push_str(t);
            }
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                out.2.push((
                    call["index"].as_u64().unwrap(),
                    call["id"].as_str().unwrap().to_owned(),
                    call["function"]["name"].as_str().unwrap().to_owned(),
                    call["function"]["arguments"].as_str().unwrap().to_owned(),
                ));
            }
            if let Some(f) = c["finish_reason"].as_str() {
                out.3.push(f.to_owned());
            }
        }
    }
    out
}

fn id_pattern_ok(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

// ---------------------------------------------------------------------------------
// AI Studio: requests and answers

#[tokio::test]
async fn plain_text_with_system_prompt() {
    let (mock, gw) = studio("").await;
    let (status, body) = gw
        .chat_json(
            KEY,
            json!({"model": "gemini-2.5-flash", "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"}
            ], "temperature": 0.2, "max_tokens": 50, "user": "someone"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let request = mock.last();
    assert_eq!(
        request.path,
        "/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(request.query, None, "the key never goes in the URL");
    assert_eq!(request.headers["x-goog-api-key"], GOOD_KEY);
    assert!(request.headers.get("authorization").is_none());
    assert_eq!(
        request.body,
        json!({
            "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "generationConfig": {"temperature": 0.2, "maxOutputTokens": 50}
        })
    );
    assert_eq!(body["id"], "chatcmpl-resp-42");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gemini-mock-001");
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(
        body["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": "Hello world"}, "logprobs": null, "finish_reason": "stop"}])
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}})
    );
}

#[tokio::test]
async fn images_system_prompts_and_generation_config_are_translated() {
    let (mock, gw) = studio("").await;
    let (status, body) = gw
        .chat_json(
            KEY,
            json!({"model": "models/gemini-2.5-pro", "messages": [
                {"role": "developer", "content": "Rule one."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGRg=="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/photos/cat.png"}}
                ]},
                {"role": "system", "content": "Rule two."},
                {"role": "user", "content": "Be exact."}
            ],
            "top_p": 0.8, "max_completion_tokens": 300, "stop": ["END"], "seed": 11,
            "presence_penalty": 0.1, "frequency_penalty": 0.2,
            "response_format": {"type": "json_object"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let request = mock.last();
    assert_eq!(
        request.path,
        "/v1beta/models/gemini-2.5-pro:generateContent"
    );
    assert_eq!(
        request.body,
        json!({
            "contents": [{"role": "user", "parts": [
                {"text": "What is in these?"},
                {"inlineData": {"mimeType": "image/webp", "data": "UklGRg=="}},
                {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/photos/cat.png"}},
                {"text": "Be exact."}
            ]}],
            "systemInstruction": {"parts": [{"text": "Rule one."}, {"text": "Rule two."}]},
            "generationConfig": {"topP": 0.8, "presencePenalty": 0.1, "frequencyPenalty": 0.2,
                "maxOutputTokens": 300, "stopSequences": ["END"], "seed": 11,
                "responseMimeType": "application/json"}
        })
    );
}

#[tokio::test]
async fn bad_inputs_are_400_before_any_upstream_call() {
    let (mock, gw) = studio("").await;
    let cases = [
        (
            json!({"model": "g", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/photo"}}]}]}),
            "messages[0].content[0]",
        ),
        (
            json!({"model": "g", "messages": [{"role": "user", "content": "x"}], "stop": ["1", "2", "3", "4", "5", "6"]}),
            "stop",
        ),
        (
            json!({"model": "g", "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "function", "function": {"name": "missing"}}, "tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tool_choice",
        ),
        (
            json!({"model": "g", "messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            json!({"model": "g", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f", "parameters": {"$ref": "#/$defs/A", "$defs": {"A": {"properties": {"a": {"$ref": "#/$defs/A"}}}}}}}]}),
            "tools[0].parameters",
        ),
        (
            json!({"model": "../../v1/secrets", "messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (
            json!({"model": "g", "messages": [{"role": "system", "content": "only a system prompt"}]}),
            "messages",
        ),
    ];
    // Each names the field at fault, so a case refused for another reason fails.
    for (case, param) in cases {
        let (status, body) = gw.chat_json(KEY, case.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case} → {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(body["error"]["param"], param, "{case} → {body}");
        assert_eq!(body["error"]["code"], "invalid_value", "{body}");
        assert!(body["error"]["message"].as_str().unwrap().len() > 10);
    }
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn multi_turn_tool_use_with_parallel_calls() {
    let (mock, gw) = studio("").await;
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
    ]);
    let first = json!({"model": "tools", "messages": [{"role": "user", "content": "Weather and time in Oslo?"}],
        "tools": tools, "tool_choice": "auto"});
    let (status, body) = gw.chat_json(KEY, first).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        mock.last().body["tools"],
        json!([{"functionDeclarations": [
            {"name": "get_weather", "description": "Weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
            {"name": "get_time"}
        ]}])
    );
    assert_eq!(
        mock.last().body["toolConfig"],
        json!({"functionCallingConfig": {"mode": "AUTO"}})
    );
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let calls = choice["message"]["tool_calls"].as_array().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(calls[0]["function"]["arguments"], "{\"city\":\"Oslo\"}");
    assert_eq!(calls[1]["function"]["arguments"], "{}");
    assert_eq!(calls[1]["id"], "call_resp-42_0_1");
    for call in &calls {
        assert!(id_pattern_ok(call["id"].as_str().unwrap()), "{call}");
        assert_eq!(call["type"], "function");
    }
    // The same answer gives the same ids (stable, not random).
    let (_, again) = gw
        .chat_json(
            KEY,
            json!({"model": "tools", "messages": [{"role": "user", "content": "again"}], "tools": tools}),
        )
        .await;
    assert_eq!(again["choices"][0]["message"]["tool_calls"], json!(calls));

    // Second turn: the history with both calls and both results, then a question.
    let second = json!({"model": "gemini-2.5-flash", "tools": tools, "messages": [
        {"role": "user", "content": "Weather and time in Oslo?"},
        {"role": "assistant", "content": null, "tool_calls": calls},
        {"role": "tool", "tool_call_id": calls[1]["id"], "content": "12:00"},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "{\"temp_c\": 3}"},
        {"role": "user", "content": "Thanks, and tomorrow?"}
    ]});
    let (status, body) = gw.chat_json(KEY, second).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        mock.last().body["contents"],
        json!([
            {"role": "user", "parts": [{"text": "Weather and time in Oslo?"}]},
            {"role": "model", "parts": [
                // The thought signature travels back on its part, restored from the id.
                {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}, "thoughtSignature": "c2lnbmF0dXJlLTE="},
                {"functionCall": {"name": "get_time", "args": {}}}
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_time", "response": {"content": "12:00"}}},
                {"functionResponse": {"name": "get_weather", "response": {"temp_c": 3}}},
                {"text": "Thanks, and tomorrow?"}
            ]}
        ])
    );
}

#[tokio::test]
async fn argument_less_tools_and_forced_choice() {
    let (mock, gw) = studio("").await;
    let (status, _) = gw
        .chat_json(
            KEY,
            json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "ping"}],
                "tools": [
                    {"type": "function", "function": {"name": "ping", "description": "No arguments"}},
                    {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}, "additionalProperties": false}}}
                ],
                "tool_choice": {"type": "function", "function": {"name": "ping"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let body = mock.last().body;
    let declarations = body["tools"][0]["functionDeclarations"].as_array().unwrap();
    assert_eq!(declarations.len(), 2);
    for declaration in declarations {
        assert!(
            declaration.get("parameters").is_none(),
            "no parameters key at all: {declaration}"
        );
    }
    assert_eq!(
        body["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["ping"]}})
    );
    gw.chat_json(
        KEY,
        json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "ping"}}], "tool_choice": "required"}),
    )
    .await;
    assert_eq!(
        mock.last().body["toolConfig"]["functionCallingConfig"],
        json!({"mode": "ANY"})
    );
    gw.chat_json(
        KEY,
        json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "ping"}}], "tool_choice": "none"}),
    )
    .await;
    assert_eq!(
        mock.last().body["toolConfig"]["functionCallingConfig"],
        json!({"mode": "NONE"})
    );
}

#[tokio::test]
async fn every_finish_reason() {
    let (_mock, gw) = studio("").await;
    let cases = [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("LANGUAGE", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"),
        ("OTHER", "content_filter"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
        ("FINISH_REASON_UNSPECIFIED", "stop"),
        ("A_REASON_FROM_THE_FUTURE", "stop"),
    ];
    for (gemini, openai) in cases {
        let model = format!("finish-{gemini}");
        let (status, body) = gw.chat_json(KEY, user(&model, "x")).await;
        assert_eq!(status, StatusCode::OK, "{gemini}: {body}");
        assert_eq!(body["choices"][0]["finish_reason"], openai, "{gemini}");
        let (_, chunks, done) = stream(&gw, user(&model, "x")).await;
        assert!(done);
        assert_eq!(assemble(&chunks, 0).3, vec![openai.to_owned()], "{gemini}");
    }
}

#[tokio::test]
async fn thoughts_become_reasoning_and_count_as_completion_tokens() {
    let (_mock, gw) = studio("").await;
    let (status, body) = gw.chat_json(KEY, user("thinking", "x")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["choices"][0]["message"]["content"], "42");
    assert_eq!(
        body["choices"][0]["message"]["reasoning_content"],
        "Let me think."
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 31, "total_tokens": 41,
            "prompt_tokens_details": {"cached_tokens": 6}, "completion_tokens_details": {"reasoning_tokens": 30}})
    );
}

#[tokio::test]
async fn reasoning_effort_asks_gemini_for_its_thoughts() {
    let (mock, gw) = studio("").await;
    let mut request = user("thinking", "x");
    request["reasoning_effort"] = json!("high");
    let (status, body) = gw.chat_json(KEY, request.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        mock.last().body["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 24576, "includeThoughts": true})
    );
    assert_eq!(
        body["choices"][0]["message"]["reasoning_content"],
        "Let me think."
    );
    request["reasoning_effort"] = json!("sometimes");
    let (status, body) = gw.chat_json(KEY, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "reasoning_effort");
}

#[tokio::test]
async fn n_2_uses_candidate_count() {
    let (mock, gw) = studio("").await;
    let mut request = user("two", "x");
    request["n"] = json!(2);
    let (status, body) = gw.chat_json(KEY, request.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(mock.last().body["generationConfig"]["candidateCount"], 2);
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[0]["message"]["content"], "first one");
    assert_eq!(choices[1]["index"], 1);
    assert_eq!(choices[1]["message"]["content"], "second two");
    assert_eq!(choices[1]["finish_reason"], "length");

    request["stream_options"] = json!({"include_usage": true});
    let (status, chunks, done) = stream(&gw, request).await;
    assert_eq!(status, StatusCode::OK);
    assert!(done);
    assert_eq!(mock.last().body["generationConfig"]["candidateCount"], 2);
    let zero = assemble(&chunks, 0);
    let one = assemble(&chunks, 1);
    assert_eq!(
        (zero.0, zero.1.as_str(), zero.3.clone()),
        (1, "first one", vec!["stop".to_owned()])
    );
    assert_eq!(
        (one.0, one.1.as_str(), one.3.clone()),
        (1, "second two", vec!["length".to_owned()])
    );
    let usage_chunks: Vec<&Value> = chunks.iter().filter(|c| c.get("usage").is_some()).collect();
    assert_eq!(usage_chunks.len(), 1);
    assert_eq!(usage_chunks[0]["usage"]["total_tokens"], 11);
}

#[tokio::test]
async fn safety_blocks() {
    let (_mock, gw) = studio("").await;
    // Blocked prompt: a clear 400, never an empty 200.
    let (status, body) = gw.chat_json(KEY, user("blocked", "x")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "content_filter");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("SAFETY"));
    // Streamed: the same error before the stream starts.
    let (status, chunks, _) = stream(&gw, user("blocked", "x")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(chunks[0]["error"]["code"], "content_filter");

    // A SAFETY candidate without content: a choice with null content.
    let (status, body) = gw.chat_json(KEY, user("safety", "x")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": null}, "logprobs": null, "finish_reason": "content_filter"}])
    );
    let (_, chunks, done) = stream(&gw, user("safety", "x")).await;
    assert!(done);
    let assembled = assemble(&chunks, 0);
    assert_eq!(
        (assembled.0, assembled.3),
        (1, vec!["content_filter".to_owned()])
    );
}

// ---------------------------------------------------------------------------------
// AI Studio: streams

/// An agent's request (tools with schemas to clean, a `tool_choice`, a tool call
/// signed in its id and its result) with nothing to look at it is written from the
/// client's bytes without a tree; what goes upstream is what the tree translation
/// sends, as a gateway with a handler (which takes the tree path) shows, streamed
/// and not, for Gemini 2 and 3 (the placeholder signature).
#[tokio::test]
async fn an_agents_requests_written_without_a_tree_are_the_translated_ones() {
    let (bare_upstream, bare) = studio("").await;
    let (handled_upstream, handled) = studio(
        "[[before]]\nclass = \"lm_proxy.handlers.RateLimiter\"\nmax_requests = 100\nwindow_seconds = 60\nper = \"api_key\"\n",
    )
    .await;
    let body = json!({"model": "gemini-2.5-flash", "max_tokens": 300, "temperature": 0.4,
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                "parameters": {"$schema": "http://json-schema.org/draft-07/schema#",
                    "additionalProperties": false,
                    "properties": {"city": {"type": "string", "format": "hostname"},
                        "unit": {"type": "string", "enum": ["c", "f"]},
                        "days": {"type": "integer", "minimum": 1.0, "exclusiveMaximum": 8}},
                    "required": ["city", "country"]}, "strict": true}},
            {"type": "function", "function": {"name": "get_time", "description": "",
                "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "messages": [
            {"role": "system", "content": "You are an agent."},
            {"role": "user", "content": "Weather in Oslo?\n"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a_0_0__thought__c2lnbmF0dXJlLTE", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
            {"role": "tool", "tool_call_id": "call_a_0_0__thought__c2lnbmF0dXJlLTE",
             "content": "{\"temperature\": 4.0}"},
            {"role": "assistant", "content": "Checking the time.", "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "get_time", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "12:00"}]});
    for (stream, model) in [
        (false, "gemini-2.5-flash"),
        (true, "gemini-2.5-flash"),
        (true, "gemini-3-pro-preview"),
    ] {
        let mut body = body.clone();
        body["stream"] = json!(stream);
        body["model"] = json!(model);
        let mut sent = Vec::new();
        for (gw, upstream) in [(&bare, &bare_upstream), (&handled, &handled_upstream)] {
            let (status, answer) = if stream {
                let (status, chunks, _) = self::stream(gw, body.clone()).await;
                (status, json!(chunks.len()))
            } else {
                gw.chat_json(KEY, body.clone()).await
            };
            assert_eq!(status, StatusCode::OK, "{answer}");
            sent.push(upstream.last().body);
        }
        assert_eq!(sent[0].to_string(), sent[1].to_string());
        assert_eq!(
            sent[0]["tools"],
            json!([{"functionDeclarations": [
                {"name": "get_weather", "description": "Current weather", "parameters": {
                    "properties": {"city": {"type": "string"},
                        "unit": {"type": "string", "enum": ["c", "f"]},
                        "days": {"type": "integer", "minimum": 1.0}},
                    "required": ["city"], "type": "object"}},
                {"name": "get_time"}]}])
        );
        assert_eq!(
            sent[0]["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
        );
        let placeholder = model.starts_with("gemini-3");
        assert_eq!(
            sent[0]["contents"][1],
            json!({"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}},
                 "thoughtSignature": "c2lnbmF0dXJlLTE="}]})
        );
        assert_eq!(
            sent[0]["contents"][3]["parts"][1]["thoughtSignature"],
            if placeholder {
                json!("skip_thought_signature_validator")
            } else {
                Value::Null
            }
        );
        assert_eq!(
            sent[0]["contents"][4],
            json!({"role": "user", "parts": [
                {"functionResponse": {"name": "get_time", "response": {"content": "12:00"}}}]})
        );
    }
}

#[tokio::test]
async fn streamed_text_with_and_without_usage() {
    let (mock, gw) = studio("").await;
    let (status, chunks, done) = stream(&gw, user("gemini-2.5-flash", "hi")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(done);
    let request = mock.last();
    assert_eq!(
        request.path,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    );
    assert_eq!(request.query.as_deref(), Some("alt=sse"));
    assert_eq!(request.headers["accept"], "text/event-stream");
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let assembled = assemble(&chunks, 0);
    assert_eq!(assembled.0, 1);
    assert_eq!(assembled.1, "Hello world");
    assert_eq!(assembled.3, vec!["stop".to_owned()]);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert!(chunks
        .iter()
        .all(|c| c["id"] == "chatcmpl-resp-42" && c["object"] == "chat.completion.chunk"));
    // No empty content delta for the final signature-only part.
    assert!(chunks
        .iter()
        .all(|c| c["choices"][0]["delta"]["content"] != ""
            || c["choices"][0]["delta"].get("role").is_some()));

    let mut request = user("gemini-2.5-flash", "hi");
    request["stream_options"] = json!({"include_usage": true});
    let (_, chunks, done) = stream(&gw, request).await;
    assert!(done);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    // The last usageMetadata wins (earlier ones are partial); thoughts are completion.
    assert_eq!(
        last["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 3}})
    );
    assert_eq!(
        chunks.iter().filter(|c| c.get("usage").is_some()).count(),
        1
    );
}

/// Parallel calls that Gemini sends in one event go out one per chunk, each with
/// its own `index`, as OpenAI streams them (llama-index reads one call per chunk).
#[tokio::test]
async fn streamed_parallel_calls_go_one_per_chunk() {
    let (_mock, gw) = studio("").await;
    let (status, chunks, done) = stream(&gw, user("parallel", "weather and time?")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(done);
    let per_chunk: Vec<usize> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .map(Vec::len)
        .collect();
    assert_eq!(per_chunk, [1, 1], "{chunks:?}");
    let (_, _, calls, finishes) = assemble(&chunks, 0);
    let names: Vec<(u64, &str)> = calls.iter().map(|c| (c.0, c.2.as_str())).collect();
    assert_eq!(names, [(0, "get_weather"), (1, "get_time")]);
    assert_eq!(finishes, ["tool_calls"]);
}

#[tokio::test]
async fn streamed_function_calls() {
    let (_mock, gw) = studio("").await;
    let mut request = user("tools", "weather and time?");
    request["tools"] = json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "get_time"}}
    ]);
    let (status, chunks, done) = stream(&gw, request).await;
    assert_eq!(status, StatusCode::OK);
    assert!(done);
    let (roles, text, calls, finishes) = assemble(&chunks, 0);
    assert_eq!(roles, 1);
    assert_eq!(text, "Checking. ");
    assert_eq!(finishes, vec!["tool_calls".to_owned()]);
    assert_eq!(calls.len(), 2, "one delta per call: {calls:?}");
    assert_eq!(calls[0].0, 0);
    assert_eq!(calls[0].2, "get_weather");
    assert_eq!(calls[0].3, "{\"city\":\"Oslo\"}");
    assert!(calls[0].1.starts_with("call_resp-42_0_0__thought__"));
    assert_eq!(
        (
            calls[1].0,
            calls[1].1.as_str(),
            calls[1].2.as_str(),
            calls[1].3.as_str()
        ),
        (1, "call_resp-42_0_1", "get_time", "{}")
    );
    for call in &calls {
        assert!(id_pattern_ok(&call.1));
    }
    // The streamed ids equal the non-streamed ones for the same answer.
    let mut whole = user("tools", "x");
    whole["tools"] = json!([{"type": "function", "function": {"name": "get_time"}}]);
    let (_, body) = gw.chat_json(KEY, whole).await;
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"][0]["id"],
        calls[0].1
    );
}

#[tokio::test]
async fn crlf_framed_stream() {
    let (_mock, gw) = studio("").await;
    let (status, chunks, done) = stream(&gw, user("crlf", "x")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(done);
    let assembled = assemble(&chunks, 0);
    assert_eq!(assembled.1, "Hello world");
    assert_eq!(assembled.3, vec!["stop".to_owned()]);
}

#[tokio::test]
async fn errors_before_and_during_a_stream() {
    let (_mock, gw) = studio("").await;
    // Before: the upstream status, mapped, with Retry-After kept.
    let response = gw.chat(KEY, streamed(user("error-429", "x"))).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "17");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Resource has been exhausted"));

    // An error as the very first event of a 200 stream: still a real status.
    let (status, chunks, _) = stream(&gw, user("first-event-error", "x")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(chunks[0]["error"]["message"], "Internal error encountered.");

    // During: the text so far, then an error chunk, then [DONE].
    let (status, chunks, done) = stream(&gw, user("stream-error", "x")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(done);
    assert_eq!(assemble(&chunks[..chunks.len() - 1], 0).1, "Hello");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "error");
    assert_eq!(last["error"]["message"], "The model is overloaded.");
}

/// A 200 whose body is not Gemini's JSON is an upstream error (a 502: streamed too,
/// since the first event is read before the client is answered), never an empty
/// answer.
#[tokio::test]
async fn google_ok_answers_that_are_not_json_are_upstream_errors() {
    let (_mock, gw) = studio("").await;
    for stream in [false, true] {
        let mut request = user("ok-not-json", "x");
        request["stream"] = json!(stream);
        let (status, body) = gw.chat_json(KEY, request).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "stream={stream}: {body}");
        assert_eq!(body["error"]["code"], "upstream_error", "{body}");
        assert!(body.get("choices").is_none(), "{body}");
    }
}

#[tokio::test]
async fn google_errors_keep_message_and_get_a_sensible_status() {
    let (_mock, gw) = studio("").await;
    let cases = [
        (
            "error-400",
            400,
            "invalid_request_error",
            "contents is not specified",
        ),
        ("error-403", 403, "permission_error", "Permission denied"),
        ("error-404", 404, "invalid_request_error", "not found"),
        ("error-429", 429, "rate_limit_error", "exhausted"),
        ("error-500", 502, "upstream_error", "internal error"),
        ("error-503", 503, "upstream_error", "overloaded"),
        ("error-504", 504, "timeout_error", "Deadline expired"),
    ];
    for (model, status, error_type, fragment) in cases {
        let (got, body) = gw.chat_json(KEY, user(model, "x")).await;
        assert_eq!(got.as_u16(), status, "{model}: {body}");
        assert_eq!(body["error"]["type"], error_type, "{model}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(fragment),
            "{model}: {body}"
        );
    }
    let (_, body) = gw.chat_json(KEY, user("error-404", "x")).await;
    assert_eq!(body["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn invalid_api_key_is_401() {
    let (mock, gw) = studio("").await;
    let (status, body) = gw.chat_json(KEY, user("bad-key", "x")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("API key not valid"));
    assert!(!body.to_string().contains("AIza-wrong-key"));
    assert_eq!(mock.last().headers["x-goog-api-key"], "AIza-wrong-key");
    let response = gw.chat(KEY, streamed(user("bad-key", "x"))).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn safety_settings_from_the_connection() {
    let (mock, gw) = studio(
        r#"[connections.gemini.google_gemini_safety_settings]
HARM_CATEGORY_HARASSMENT = "BLOCK_ONLY_HIGH""#,
    )
    .await;
    gw.chat_json(KEY, user("gemini-2.5-flash", "x")).await;
    assert_eq!(
        mock.last().body["safetySettings"],
        json!([{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}])
    );
}

#[tokio::test]
async fn gcs_uris_are_refused_unless_the_connection_allows_them() {
    let body = json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "gs://operator-bucket/secret.pdf"}}]}]});
    let (mock, gw) = studio("").await;
    let (status, error) = gw.chat_json(KEY, body.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert_eq!(error["error"]["param"], "messages[0].content[0]", "{error}");
    assert!(
        mock.requests().is_empty(),
        "refused before any upstream call"
    );

    let (mock, gw) = studio("allow_gcs_uris = true").await;
    let (status, answer) = gw.chat_json(KEY, body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        mock.last().body["contents"][0]["parts"][0]["fileData"]["fileUri"],
        "gs://operator-bucket/secret.pdf"
    );
}

// ---------------------------------------------------------------------------------
// Startup checks

fn startup_error(toml_text: &str) -> String {
    let config = common::config_from_toml(toml_text);
    let client = lm_proxy::server::upstream_client().unwrap();
    match lm_proxy::Gateway::build(config, &client, &lm_proxy::extensions::NativeResolver) {
        Ok(_) => panic!("the config should be refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unknown_or_conflicting_keys_stop_startup_with_the_key_named() {
    // Some of these Vertex configs name no project: GOOGLE_CLOUD_PROJECT is read.
    let _env = ENV_LOCK.blocking_read();
    let base = |api_type: &str, extra: &str| {
        format!("[connections.g]\napi_type = \"{api_type}\"\napi_key = \"k\"\n{extra}\n[routing]\n\"*\" = \"g.*\"\n")
    };
    let message = startup_error(&base("google", "google_vertex_project_id = \"p\""));
    assert!(
        message.contains("connections.g.google_vertex_project_id"),
        "{message}"
    );
    assert!(message.contains("unknown setting"), "{message}");
    let message = startup_error(&base("google", "apikey = \"typo\""));
    assert!(message.contains("connections.g.apikey"), "{message}");
    let message =
        startup_error("[connections.g]\napi_type = \"google\"\n[routing]\n\"*\" = \"g.*\"\n");
    assert!(message.contains("connections.g.api_key"), "{message}");
    let message = startup_error(
        "[connections.v]\napi_type = \"google_vertex_ai\"\ngoogle_vertex_project_id = \"p\"\ngoogle_vertex_access_token = \"t\"\ngoogle_vertex_credentials = \"/nonexistent.json\"\n",
    );
    assert!(
        message.contains("connections.v.google_vertex_credentials"),
        "{message}"
    );
    let message = startup_error(
        "[connections.v]\napi_type = \"google_vertex_ai\"\ngoogle_vertex_credentials = \"/nonexistent/sa.json\"\n",
    );
    assert!(
        message.contains("cannot read credentials file"),
        "{message}"
    );
    let message = startup_error(
        "[connections.v]\napi_type = \"google_vertex_ai\"\ngoogle_vertex_access_token = \"t\"\ngoogle_vertex_location = \"us-central1/../x\"\n",
    );
    assert!(
        message.contains("connections.v.google_vertex_location"),
        "{message}"
    );
    let message = startup_error(
        "[connections.v]\napi_type = \"google_vertex_ai\"\ngoogle_vertex_project_id = \"p\"\ngoogle_vertex_gcloud_auth = false\n",
    );
    assert!(message.contains("no Vertex credentials"), "{message}");
    let message = startup_error(
        "[connections.v]\napi_type = \"google_vertex_ai\"\ngoogle_vertex_project_id = \"p\"\ngoogle_vertex_access_token = \"t\"\nsome_key = 1\n",
    );
    assert!(message.contains("connections.v.some_key"), "{message}");
}

// ---------------------------------------------------------------------------------
// Vertex

/// Held for writing by the tests that change the ADC environment variables, for
/// reading by every other test that starts a Vertex connection.
static ENV_LOCK: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn service_account(token_uri: &str, project: Option<&str>) -> String {
    let mut sa = json!({
        "type": "service_account",
        "private_key_id": "test-kid-1",
        "private_key": TEST_KEY_PEM,
        "client_email": "proxy@test-project.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": token_uri,
    });
    if let Some(project) = project {
        sa["project_id"] = json!(project);
    }
    sa.to_string()
}

fn temp_json(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

fn vertex_config(mock: &GoogleMock, connection: &str) -> String {
    format!(
        r#"
[connections.vertex]
api_type = "google_vertex_ai"
api_base = "{base}"
timeout = 5
{connection}
[routing]
"*" = "vertex.*"
[groups.default]
api_keys = ["{KEY}"]
"#,
        base = mock.base()
    )
}

/// A gateway with a service-account file whose token_uri is the mock.
async fn vertex_with_service_account(
    extra: &str,
) -> (GoogleMock, TestGateway, tempfile::NamedTempFile) {
    let mock = GoogleMock::start().await;
    let file = temp_json(&service_account(&mock.token_url(), Some("file-project")));
    let connection = format!(
        "google_vertex_project_id = \"my-project\"\ngoogle_vertex_location = \"europe-west4\"\ngoogle_vertex_credentials = \"{}\"\n{extra}",
        file.path().display()
    );
    let gw = TestGateway::start(&vertex_config(&mock, &connection)).await;
    (mock, gw, file)
}

#[tokio::test]
async fn vertex_service_account_jwt_and_request() {
    let _env = ENV_LOCK.read().await;
    let (mock, gw, _file) = vertex_with_service_account("").await;
    let (status, body) = gw.chat_json(KEY, user("gemini-2.5-flash", "hi")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello world");

    let calls = mock.token_calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.content_type, "application/x-www-form-urlencoded");
    assert_eq!(
        call.form["grant_type"],
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    assert!(
        call.signature_valid,
        "RS256 signature verifies with the test public key"
    );
    let (header, claims) = call.jwt.clone().unwrap();
    assert_eq!(
        header,
        json!({"alg": "RS256", "typ": "JWT", "kid": "test-kid-1"})
    );
    assert_eq!(claims["iss"], "proxy@test-project.iam.gserviceaccount.com");
    assert_eq!(
        claims["scope"],
        "https://www.googleapis.com/auth/cloud-platform"
    );
    assert_eq!(claims["aud"], mock.token_url());
    let iat = claims["iat"].as_u64().unwrap();
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 3600);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(iat.abs_diff(now) < 60);

    let request = mock.last();
    assert_eq!(
        request.path,
        "/v1/projects/my-project/locations/europe-west4/publishers/google/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(request.headers["authorization"], "Bearer ya29.test-token-1");
    assert!(request.headers.get("x-goog-api-key").is_none());
    assert_eq!(
        request.body["contents"],
        json!([{"role": "user", "parts": [{"text": "hi"}]}])
    );

    // Streams go to streamGenerateContent?alt=sse with the cached token.
    let (status, chunks, done) = stream(&gw, user("gemini-2.5-flash", "hi")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(done);
    assert_eq!(assemble(&chunks, 0).1, "Hello world");
    let request = mock.last();
    assert!(request.path.ends_with(":streamGenerateContent"));
    assert_eq!(request.query.as_deref(), Some("alt=sse"));
    assert_eq!(mock.token_calls().len(), 1);
}

#[tokio::test]
async fn vertex_tokens_are_cached_and_shared_by_concurrent_requests() {
    let _env = ENV_LOCK.read().await;
    let mock = GoogleMock::start().await;
    mock.set_token_delay(150);
    let file = temp_json(&service_account(&mock.token_url(), None));
    let connection = format!(
        "google_vertex_project_id = \"p1\"\ngoogle_vertex_credentials = \"{}\"",
        file.path().display()
    );
    let gw = TestGateway::start(&vertex_config(&mock, &connection)).await;
    let requests = (0..6).map(|_| gw.chat_json(KEY, user("gemini-2.5-flash", "x")));
    for (status, body) in futures_util::future::join_all(requests).await {
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(
        mock.token_calls().len(),
        1,
        "one refresh for concurrent requests"
    );
    let (status, _) = gw.chat_json(KEY, user("gemini-2.5-flash", "x")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        mock.token_calls().len(),
        1,
        "later requests reuse the cached token"
    );
    assert!(mock
        .requests()
        .iter()
        .all(|r| r.headers["authorization"] == "Bearer ya29.test-token-1"));
    // Default location in the path.
    assert!(mock
        .last()
        .path
        .starts_with("/v1/projects/p1/locations/us-central1/"));
}

#[tokio::test]
async fn vertex_refreshes_before_expiry_and_after_401() {
    let _env = ENV_LOCK.read().await;
    let (mock, gw, _file) = vertex_with_service_account("").await;
    // Tokens that expire within the refresh margin are refreshed on the next request.
    mock.set_expires_in(120);
    gw.chat_json(KEY, user("gemini-2.5-flash", "x")).await;
    gw.chat_json(KEY, user("gemini-2.5-flash", "x")).await;
    assert_eq!(mock.token_calls().len(), 2);
    assert_eq!(
        mock.last().headers["authorization"],
        "Bearer ya29.test-token-2"
    );

    // A long-lived token that Vertex stops accepting: one refresh, one retry.
    mock.set_expires_in(3600);
    let (status, _) = gw.chat_json(KEY, user("gemini-2.5-flash", "x")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mock.token_calls().len(), 3);
    mock.revoke_tokens();
    let before = mock.requests().len();
    let (status, body) = gw.chat_json(KEY, user("gemini-2.5-flash", "x")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let attempts = &mock.requests()[before..];
    assert_eq!(attempts.len(), 2);
    assert!(attempts[0].rejected && !attempts[1].rejected);
    assert_eq!(
        attempts[1].headers["authorization"],
        "Bearer ya29.test-token-4"
    );
    assert_eq!(mock.token_calls().len(), 4);

    // Streams retry the same way.
    mock.revoke_tokens();
    let (status, chunks, done) = stream(&gw, user("gemini-2.5-flash", "x")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(done && !chunks.is_empty());
    assert_eq!(mock.token_calls().len(), 5);
}

#[tokio::test]
async fn vertex_token_failures_are_502_without_secrets() {
    let _env = ENV_LOCK.read().await;
    let (mock, gw, _file) = vertex_with_service_account("").await;
    mock.reject_grants(true);
    let (status, body) = gw.chat_json(KEY, user("gemini-2.5-flash", "x")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let text = body.to_string();
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains("assertion"),
        "{text}"
    );
    assert!(mock.requests().is_empty());
    // A 401 that persists after the one refresh is passed on, not retried forever.
    mock.reject_grants(false);
    gw.chat_json(KEY, user("gemini-2.5-flash", "x")).await;
    let calls_before = mock.token_calls().len();
    mock.revoke_tokens();
    mock.reject_grants(true);
    let (status, _) = gw.chat_json(KEY, user("gemini-2.5-flash", "x")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(mock.token_calls().len(), calls_before + 1);
}

#[tokio::test]
async fn vertex_token_uri_override_and_response_validation() {
    let _env = ENV_LOCK.read().await;
    let mock = GoogleMock::start().await;
    // The file names Google's real endpoint; `token_uri` moves it to the mock.
    let file = temp_json(&service_account(
        "https://oauth2.googleapis.com/token",
        Some("p"),
    ));
    let connection = format!(
        "google_cloud_service_account = \"{}\"\ntoken_uri = \"{}\"\ngoogle_vertex_response_validation = \"true\"",
        file.path().display(),
        mock.token_url()
    );
    let gw = TestGateway::start(&vertex_config(&mock, &connection)).await;
    let (status, _) = gw.chat_json(KEY, user("gemini-2.5-flash", "x")).await;
    assert_eq!(status, StatusCode::OK);
    let (_, claims) = mock.token_calls()[0].jwt.clone().unwrap();
    assert_eq!(claims["aud"], mock.token_url());
    // With response validation, a safety-stopped answer is an error, not a choice.
    let (status, body) = gw.chat_json(KEY, user("safety", "x")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "content_filter");
    let (status, _) = gw.chat_json(KEY, user("finish-MAX_TOKENS", "x")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn vertex_authorized_user_refresh_and_quota_project() {
    let _env = ENV_LOCK.read().await;
    let mock = GoogleMock::start().await;
    mock.set_expires_in(60);
    let file = temp_json(
        &json!({
            "type": "authorized_user",
            "client_id": "764086051850-test.apps.googleusercontent.com",
            "client_secret": "d-test-secret",
            "refresh_token": "1//original-refresh",
            "quota_project_id": "quota-proj",
            "token_uri": mock.token_url(),
        })
        .to_string(),
    );
    let connection = format!(
        "google_vertex_project_id = \"p2\"\ncredentials_file = \"{}\"",
        file.path().display()
    );
    let gw = TestGateway::start(&vertex_config(&mock, &connection)).await;
    let (status, body) = gw.chat_json(KEY, user("gemini-2.5-flash", "x")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let calls = mock.token_calls();
    assert_eq!(calls[0].form["grant_type"], "refresh_token");
    assert_eq!(
        calls[0].form["client_id"],
        "764086051850-test.apps.googleusercontent.com"
    );
    assert_eq!(calls[0].form["client_secret"], "d-test-secret");
    assert_eq!(calls[0].form["refresh_token"], "1//original-refresh");
    let request = mock.last();
    assert_eq!(request.headers["x-goog-user-project"], "quota-proj");
    assert!(request.path.starts_with("/v1/projects/p2/"));
    // Short-lived token: the next request refreshes, with the rotated refresh token.
    gw.chat_json(KEY, user("gemini-2.5-flash", "x")).await;
    let calls = mock.token_calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].form["refresh_token"], "1//rotated-refresh-1");
}

#[tokio::test]
async fn vertex_fixed_access_token_and_express_mode() {
    let _env = ENV_LOCK.read().await;
    let mock = GoogleMock::start().await;
    // A fixed token is sent as is; a 401 is not retried (nothing to refresh).
    let gw = TestGateway::start(&vertex_config(
        &mock,
        "google_vertex_project_id = \"p3\"\ngoogle_vertex_location = \"global\"\ngoogle_vertex_access_token = \"ya29.fixed\"",
    ))
    .await;
    let (status, body) = gw.chat_json(KEY, user("gemini-2.5-flash", "x")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(mock.requests().len(), 1);
    assert_eq!(mock.last().headers["authorization"], "Bearer ya29.fixed");
    assert!(mock
        .last()
        .path
        .starts_with("/v1/projects/p3/locations/global/"));
    assert!(mock.token_calls().is_empty());

    // Express mode: an API key, no project in the path.
    let gw = TestGateway::start(&vertex_config(&mock, &format!("api_key = \"{GOOD_KEY}\""))).await;
    let (status, body) = gw.chat_json(KEY, user("gemini-2.5-flash", "x")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let request = mock.last();
    assert_eq!(
        request.path,
        "/v1/publishers/google/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(request.headers["x-goog-api-key"], GOOD_KEY);
}

// ---------------------------------------------------------------------------------
// Vertex: environment (ADC lookup and project precedence). These change process
// environment variables, so they hold ENV_LOCK for writing; every other test that
// starts a Vertex connection (which reads GOOGLE_CLOUD_PROJECT and the ADC
// variables when the project or credentials are not named) holds it for reading,
// so none sees another's environment.

/// Sets environment variables and puts the old values back when dropped.
struct EnvVars(Vec<(&'static str, Option<OsString>)>);

impl EnvVars {
    fn set(vars: &[(&'static str, Option<&str>)]) -> EnvVars {
        let saved = vars
            .iter()
            .map(|(name, value)| {
                let old = std::env::var_os(name);
                match value {
                    Some(v) => std::env::set_var(name, v),
                    None => std::env::remove_var(name),
                }
                (*name, old)
            })
            .collect();
        EnvVars(saved)
    }
}

impl Drop for EnvVars {
    fn drop(&mut self) {
        for (name, old) in &self.0 {
            match old {
                Some(v) => std::env::set_var(name, v),
                None => std::env::remove_var(name),
            }
        }
    }
}

const ADC_VARS: [&str; 5] = [
    "GOOGLE_APPLICATION_CREDENTIALS",
    "CLOUDSDK_CONFIG",
    "GCE_METADATA_HOST",
    "GOOGLE_CLOUD_PROJECT",
    "GCLOUD_PROJECT",
];

/// Start a gateway with these environment variables (the others of ADC_VARS unset).
async fn start_with_env(config: &str, vars: &[(&'static str, &str)]) -> TestGateway {
    let all: Vec<(&'static str, Option<&str>)> = ADC_VARS
        .iter()
        .map(|name| (*name, vars.iter().find(|(n, _)| n == name).map(|(_, v)| *v)))
        .collect();
    let _env = EnvVars::set(&all);
    TestGateway::start(config).await
}

#[tokio::test]
async fn vertex_project_id_precedence() {
    let _lock = ENV_LOCK.write().await;
    let mock = GoogleMock::start().await;
    let file = temp_json(&service_account(&mock.token_url(), Some("file-project")));
    let path = file.path().display().to_string();
    let project_of = |mock: &GoogleMock| {
        mock.last()
            .path
            .split('/')
            .nth(3)
            .unwrap_or_default()
            .to_owned()
    };

    // 1. The connection key beats the environment and the file.
    let with_key = format!(
        "google_vertex_project_id = \"key-project\"\ngoogle_vertex_credentials = \"{path}\""
    );
    let gw = start_with_env(
        &vertex_config(&mock, &with_key),
        &[("GOOGLE_CLOUD_PROJECT", "env-project")],
    )
    .await;
    gw.chat_json(KEY, user("gemini-2.5-flash", "x")).await;
    assert_eq!(project_of(&mock), "key-project");

    // 2. GOOGLE_CLOUD_PROJECT beats the file.
    let without_key = format!("google_vertex_credentials = \"{path}\"");
    let gw = start_with_env(
        &vertex_config(&mock, &without_key),
        &[("GOOGLE_CLOUD_PROJECT", "env-project")],
    )
    .await;
    gw.chat_json(KEY, user("gemini-2.5-flash", "x")).await;
    assert_eq!(project_of(&mock), "env-project");

    // 3. Then the file's project_id.
    let gw = start_with_env(&vertex_config(&mock, &without_key), &[]).await;
    gw.chat_json(KEY, user("gemini-2.5-flash", "x")).await;
    assert_eq!(project_of(&mock), "file-project");

    // No project anywhere: startup stops, naming the key.
    let no_project = temp_json(&service_account(&mock.token_url(), None));
    let config = vertex_config(
        &mock,
        &format!(
            "google_vertex_credentials = \"{}\"",
            no_project.path().display()
        ),
    );
    let _env = EnvVars::set(&ADC_VARS.map(|n| (n, None)));
    let message = startup_error(&config);
    assert!(
        message.contains("connections.vertex.google_vertex_project_id"),
        "{message}"
    );
}

#[tokio::test]
async fn vertex_application_default_credentials() {
    let _lock = ENV_LOCK.write().await;
    let mock = GoogleMock::start().await;
    let empty_gcloud_dir = tempfile::tempdir().unwrap();
    let gcloud_dir = empty_gcloud_dir.path().display().to_string();

    // GOOGLE_APPLICATION_CREDENTIALS first.
    let file = temp_json(&service_account(&mock.token_url(), Some("adc-project")));
    let gw = start_with_env(
        &vertex_config(&mock, "google_vertex_gcloud_auth = true"),
        &[
            (
                "GOOGLE_APPLICATION_CREDENTIALS",
                &file.path().display().to_string(),
            ),
            ("CLOUDSDK_CONFIG", &gcloud_dir),
            ("GCE_METADATA_HOST", "127.0.0.1:9"),
        ],
    )
    .await;
    let (status, body) = gw.chat_json(KEY, user("gemini-2.5-flash", "x")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(mock.token_calls()[0].signature_valid);
    assert!(mock.last().path.starts_with("/v1/projects/adc-project/"));

    // Then the gcloud file in $CLOUDSDK_CONFIG (here: user credentials).
    let gcloud_with_file = tempfile::tempdir().unwrap();
    std::fs::write(
        gcloud_with_file.path().join("application_default_credentials.json"),
        json!({"type": "authorized_user", "client_id": "c", "client_secret": "s", "refresh_token": "1//gcloud-refresh", "token_uri": mock.token_url()}).to_string(),
    )
    .unwrap();
    let gw = start_with_env(
        &vertex_config(&mock, "google_vertex_project_id = \"p\""),
        &[
            (
                "CLOUDSDK_CONFIG",
                &gcloud_with_file.path().display().to_string(),
            ),
            ("GCE_METADATA_HOST", "127.0.0.1:9"),
        ],
    )
    .await;
    let (status, body) = gw.chat_json(KEY, user("gemini-2.5-flash", "x")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        mock.token_calls().last().unwrap().form["refresh_token"],
        "1//gcloud-refresh"
    );

    // Then the metadata server (token and project), with Metadata-Flavor: Google.
    let gw = start_with_env(
        &vertex_config(&mock, "google_vertex_gcloud_auth = true"),
        &[
            ("CLOUDSDK_CONFIG", &gcloud_dir),
            ("GCE_METADATA_HOST", &mock.addr.to_string()),
        ],
    )
    .await;
    let token_calls = mock.token_calls().len();
    let (status, body) = gw.chat_json(KEY, user("gemini-2.5-flash", "x")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = gw.chat_json(KEY, user("gemini-2.5-flash", "x")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        mock.token_calls().len(),
        token_calls,
        "no token endpoint call"
    );
    assert_eq!(
        mock.metadata_calls(),
        vec!["project".to_owned(), "token".to_owned()],
        "project and token asked once each"
    );
    assert!(mock
        .last()
        .path
        .starts_with("/v1/projects/metadata-project/"));
}

/// A client that strips the thought signature from tool-call ids (LiteLLM does,
/// for model names without "gemini") still gets it to Gemini on the next turn:
/// the gateway kept it, keyed by the call (issue 19, point 11). An id the gateway
/// never gave out gets Google's placeholder on a Gemini 3 model, as before.
#[tokio::test]
async fn thought_signatures_survive_clients_that_strip_them_from_ids() {
    let (mock, gw) = studio("").await;
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "get_time"}}
    ]);
    for streamed_first_turn in [true, false] {
        let first = json!({"model": "tools", "tools": tools, "messages": [{"role": "user", "content": "Weather in Oslo?"}]});
        let ids: Vec<String> = if streamed_first_turn {
            let (status, chunks, _) = stream(&gw, first).await;
            assert_eq!(status, StatusCode::OK);
            assemble(&chunks, 0).2.into_iter().map(|c| c.1).collect()
        } else {
            let (status, body) = gw.chat_json(KEY, first).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["choices"][0]["message"]["tool_calls"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_owned())
                .collect()
        };
        assert!(ids[0].contains("__thought__"), "{ids:?}");
        // What LiteLLM sends back: the ids cut at the separator.
        let stripped: Vec<&str> = ids
            .iter()
            .map(|id| id.split("__thought__").next().unwrap())
            .collect();
        let second = json!({"model": "gemini-3-pro-preview", "tools": tools, "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": stripped[0], "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
                {"id": stripped[1], "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": stripped[1], "content": "12:00"},
            {"role": "tool", "tool_call_id": stripped[0], "content": "{\"temp_c\": 3}"}
        ]});
        let (status, body) = gw.chat_json(KEY, second).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let contents = mock.last().body["contents"].clone();
        assert_eq!(
            contents[1]["parts"],
            json!([
                {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}, "thoughtSignature": "c2lnbmF0dXJlLTE="},
                {"functionCall": {"name": "get_time", "args": {}}}
            ]),
            "streamed first turn: {streamed_first_turn}"
        );
        // The results still find their calls.
        assert_eq!(
            contents[2]["parts"][0]["functionResponse"]["name"],
            "get_time"
        );
    }

    // A call id the gateway never handed out: the documented placeholder.
    let unknown = json!({"model": "gemini-3-pro-preview", "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_from_elsewhere_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
        ]},
        {"role": "tool", "tool_call_id": "call_from_elsewhere_1", "content": "12:00"}
    ]});
    let (status, body) = gw.chat_json(KEY, unknown).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        mock.last().body["contents"][1]["parts"][0]["thoughtSignature"],
        "skip_thought_signature_validator"
    );
}
