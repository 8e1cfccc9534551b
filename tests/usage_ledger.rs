//! The usage ledger (issue 17, points 1-3 and the ledger's part of 8): the real
//! binary against SQLite and against a PostgreSQL server the test starts itself
//! (initdb / pg_ctl on a free port, in a temporary folder; scripts/test installs
//! PostgreSQL, and its absence fails the test, saying so).
//!
//! - every door, streamed and not, gets one row with the tokens, cost, status,
//!   door, models, key id (never the key) of its request;
//! - costs come from `[pricing]` globs, then the built-in table; an unpriced model
//!   costs 0 with one warning;
//! - rows are written in batches off the request path: with a 60 s interval, the
//!   rows reach SQLite only when SIGTERM's clean stop writes the buffer;
//! - PostgreSQL stopped mid-run: requests are answered at once, and their rows
//!   appear once it is back;
//! - a database unreachable from startup never stops the gateway; rows past
//!   `buffer_rows` are dropped, counted in `/metrics` and logged;
//! - a mistake in `[database]` or `[pricing]` stops startup naming the key.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use sqlx::Row as _;

use common::postgres::{free_port, Postgres};
use common::process::{run_to_exit, write, Proc};
use lm_proxy::usage::db::{Batch, Db, RowSink, Target};
use lm_proxy::usage::Row;

const KEY: &str = "client-key-ledger-1";
/// A key of the group without a budget.
const FREE_KEY: &str = "client-key-free-1";

/// The chat usage the mock reports: 1000 prompt tokens (400 from cache), 200
/// completion tokens (50 of them reasoning).
const CHAT_USAGE: &str = r#"{"prompt_tokens":1000,"completion_tokens":200,"total_tokens":1200,"prompt_tokens_details":{"cached_tokens":400},"completion_tokens_details":{"reasoning_tokens":50}}"#;

/// An OpenAI-compatible upstream: chat (answers and streams, the usage chunk only
/// when asked, as OpenAI does), embeddings, legacy completions (streamed too).
async fn upstream(uri: Uri, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = request["model"].as_str().unwrap_or("m").to_owned();
    let stream = request["stream"] == true;
    let usage_asked = request["stream_options"]["include_usage"] == true;
    let json_answer = |v: Value| ([("content-type", "application/json")], v.to_string());
    let sse = |events: Vec<Value>| {
        let mut text = String::new();
        for e in events {
            text.push_str(&format!("data: {e}\n\n"));
        }
        text.push_str("data: [DONE]\n\n");
        ([("content-type", "text/event-stream")], text).into_response()
    };
    let usage: Value = serde_json::from_str(CHAT_USAGE).unwrap();
    match uri.path() {
        "/v1/chat/completions" if model == "fails-upstream" => (
            axum::http::StatusCode::BAD_REQUEST,
            json_answer(json!({"error": {"message": "context too long", "type": "invalid_request_error", "code": "context_length_exceeded"}})),
        )
            .into_response(),
        // One chunk, then an error event.
        "/v1/chat/completions" if stream && model.starts_with("breaks") => {
            let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": null}]});
            let error = json!({"error": {"message": "overloaded", "type": "server_error", "code": "overloaded"}});
            let text = format!("data: {chunk}\n\ndata: {error}\n\n");
            ([("content-type", "text/event-stream")], text).into_response()
        }
        // A chunk every 20 ms, for as long as someone reads (a client that leaves).
        "/v1/chat/completions" if stream && model.starts_with("endless") => {
            let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": null}]});
            let event = Bytes::from(format!("data: {chunk}\n\n"));
            let events = futures_util::stream::unfold(0u32, move |n| {
                let event = event.clone();
                async move {
                    if n > 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    (n < 3000).then(|| (Ok::<_, std::io::Error>(event), n + 1))
                }
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(axum::body::Body::from_stream(events))
                .unwrap()
        }
        "/v1/chat/completions" if stream => {
            let chunk = |choices: Value| {
                json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": choices})
            };
            let mut events = vec![
                chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": null}])),
                chunk(json!([{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}])),
            ];
            if usage_asked {
                let mut last = chunk(json!([]));
                last["usage"] = usage;
                events.push(last);
            }
            sse(events)
        }
        "/v1/chat/completions" => json_answer(json!({
            "id": "c1", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
            "usage": usage,
        }))
        .into_response(),
        // Anthropic's Messages API, for the messages door's pass-through.
        "/v1/messages" if stream => {
            let events = [
                ("message_start", json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "usage": {"input_tokens": 100, "cache_read_input_tokens": 50, "output_tokens": 1}}})),
                ("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
                ("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}})),
                ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
                ("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 20}})),
                ("message_stop", json!({"type": "message_stop"})),
            ];
            let text: String = events
                .iter()
                .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
                .collect();
            ([("content-type", "text/event-stream")], text).into_response()
        }
        "/v1/messages" => json_answer(json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "Hi"}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 100, "cache_read_input_tokens": 50, "output_tokens": 20},
        }))
        .into_response(),
        // The Responses API, for the responses door's pass-through.
        "/v1/responses" => {
            let response = json!({
                "id": "resp_1", "object": "response", "created_at": 1, "status": "completed", "model": model,
                "output": [{"type": "message", "id": "m1", "role": "assistant", "status": "completed",
                            "content": [{"type": "output_text", "text": "Hi", "annotations": []}]}],
                "usage": {"input_tokens": 300, "input_tokens_details": {"cached_tokens": 100},
                          "output_tokens": 40, "output_tokens_details": {"reasoning_tokens": 10}, "total_tokens": 340},
            });
            if stream {
                let created = json!({"type": "response.created", "sequence_number": 0,
                                     "response": {"id": "resp_1", "object": "response", "status": "in_progress", "model": model}});
                let done = json!({"type": "response.completed", "sequence_number": 1, "response": response});
                let text = format!(
                    "event: response.created\ndata: {created}\n\nevent: response.completed\ndata: {done}\n\n"
                );
                ([("content-type", "text/event-stream")], text).into_response()
            } else {
                json_answer(response).into_response()
            }
        }
        "/v1/embeddings" => json_answer(json!({
            "object": "list", "model": model,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 1.0]}],
            "usage": {"prompt_tokens": 9, "total_tokens": 9},
        }))
        .into_response(),
        "/v1/completions" if stream => {
            let chunk = |text: &str, finish: Value| {
                json!({"id": "t1", "object": "text_completion", "created": 1, "model": model,
                       "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]})
            };
            let mut events = vec![chunk("Hel", Value::Null), chunk("lo", json!("stop"))];
            if usage_asked {
                events.push(json!({"id": "t1", "object": "text_completion", "created": 1, "model": model,
                    "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}));
            }
            sse(events)
        }
        "/v1/completions" => json_answer(json!({
            "id": "t1", "object": "text_completion", "created": 1, "model": model,
            "choices": [{"text": "Hello", "index": 0, "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        }))
        .into_response(),
        _ => axum::http::StatusCode::NOT_FOUND.into_response(),
    }
}

/// A runtime for the mock upstream and the database reads; the test itself is
/// blocking (the binary, reqwest's blocking client).
struct Rt {
    runtime: tokio::runtime::Runtime,
    upstream: String,
}

impl Rt {
    fn start() -> Rt {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let addr = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let app = axum::Router::new().fallback(axum::routing::post(upstream));
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            addr
        });
        Rt {
            runtime,
            upstream: format!("http://{addr}/v1"),
        }
    }
}

fn config(upstream: &str, database: &str) -> String {
    config_with(upstream, database, "")
}

/// `group`: more lines for `[groups.default]` (a budget).
fn config_with(upstream: &str, database: &str, group: &str) -> String {
    format!(
        r#"
encryption_key = "ledger-test-key"
[connections.up]
api_type = "open_ai"
api_base = "{upstream}"
api_key = "sk-upstream-secret"
[connections.anth]
api_type = "anthropic"
api_base = "{anthropic}"
api_key = "sk-upstream-secret"
[connections.resp]
api_type = "open_ai"
api_base = "{upstream}"
api_key = "sk-upstream-secret"
responses_api = true
[routing]
"claude-native-*" = "anth.*"
"native-resp-*" = "resp.*"
"*" = "up.*"
[groups.default]
api_keys = ["{KEY}"]
{group}
[groups.free]
api_keys = ["{FREE_KEY}"]
[metrics]
enabled = true
{database}
[pricing]
"priced-*" = {{ input = 2.0, output = 10.0, cached_input = 0.5 }}
"cheap-embed*" = {{ input = 1.0, output = 0.0 }}
"claude-native-*" = {{ input = 3.0, output = 15.0, cached_input = 0.3 }}
"native-resp-*" = {{ input = 1.0, output = 4.0, cached_input = 0.25 }}
"#,
        anthropic = upstream.trim_end_matches("/v1"),
    )
}

/// What one request's row must hold.
#[derive(Debug, Clone)]
struct Expected {
    model: String,
    connection: &'static str,
    door: &'static str,
    stream: bool,
    status: i32,
    tokens: [Option<i64>; 4],
    cost: f64,
    error_type: Option<&'static str>,
}

const CHAT_TOKENS: [Option<i64>; 4] = [Some(1000), Some(200), Some(400), Some(50)];
/// 600 fresh at 2.0 + 400 cached at 0.5 + 200 out at 10.0, per million.
const PRICED_CHAT_COST: f64 = (600.0 * 2.0 + 400.0 * 0.5 + 200.0 * 10.0) / 1e6;

/// One request per door and mode; each has its own model name, so that its row can
/// be told apart. `tag` keeps names unique across rounds.
fn exercise(url: &str, tag: &str) -> Vec<Expected> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut expected = Vec::new();
    let mut send = |path: &str, body: Value, expect: Expected| {
        let started = Instant::now();
        let response = client
            .post(format!("{url}/v1/{path}"))
            .bearer_auth(if expect.status == 401 {
                "wrong-key"
            } else {
                KEY
            })
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(
            response.status().as_u16() as i32,
            expect.status,
            "{path} {body}"
        );
        let text = response.text().unwrap();
        // The request never waits on the database (the mock answers at once).
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{path} took {:?}",
            started.elapsed()
        );
        if expect.stream && expect.status == 200 {
            assert!(text.contains("data:"), "{text}");
            // A client that did not ask for usage sees none.
            if path == "chat/completions" || path == "completions" {
                assert!(!text.contains("\"usage\""), "{text}");
            }
        }
        expected.push(expect);
    };
    let row = |model: String, door, stream, tokens, cost| Expected {
        model,
        connection: "up",
        door,
        stream,
        status: 200,
        tokens,
        cost,
        error_type: None,
    };
    for stream in [false, true] {
        let mode = if stream { "stream" } else { "json" };
        let m = format!("priced-chat-{mode}-{tag}");
        send(
            "chat/completions",
            json!({"model": m, "messages": [{"role": "user", "content": "hi"}], "stream": stream}),
            row(
                m.clone(),
                "chat/completions",
                stream,
                CHAT_TOKENS,
                PRICED_CHAT_COST,
            ),
        );
        let m = format!("priced-messages-{mode}-{tag}");
        send(
            "messages",
            json!({"model": m, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}], "stream": stream}),
            row(m.clone(), "messages", stream, CHAT_TOKENS, PRICED_CHAT_COST),
        );
        let m = format!("priced-responses-{mode}-{tag}");
        send(
            "responses",
            json!({"model": m, "input": "hi", "stream": stream}),
            row(
                m.clone(),
                "responses",
                stream,
                CHAT_TOKENS,
                PRICED_CHAT_COST,
            ),
        );
        // Pass-through: the client's API spoken by the upstream too.
        let m = format!("claude-native-{mode}-{tag}");
        send(
            "messages",
            json!({"model": m, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}], "stream": stream}),
            Expected {
                connection: "anth",
                ..row(
                    m.clone(),
                    "messages",
                    stream,
                    [Some(150), Some(20), Some(50), None],
                    (100.0 * 3.0 + 50.0 * 0.3 + 20.0 * 15.0) / 1e6,
                )
            },
        );
        let m = format!("native-resp-{mode}-{tag}");
        send(
            "responses",
            json!({"model": m, "input": "hi", "stream": stream}),
            Expected {
                connection: "resp",
                ..row(
                    m.clone(),
                    "responses",
                    stream,
                    [Some(300), Some(40), Some(100), Some(10)],
                    (200.0 * 1.0 + 100.0 * 0.25 + 40.0 * 4.0) / 1e6,
                )
            },
        );
        let m = format!("priced-completions-{mode}-{tag}");
        send(
            "completions",
            json!({"model": m, "prompt": "hi", "stream": stream}),
            row(
                m.clone(),
                "completions",
                stream,
                [Some(7), Some(3), None, None],
                (7.0 * 2.0 + 3.0 * 10.0) / 1e6,
            ),
        );
    }
    let m = format!("cheap-embed-{tag}");
    send(
        "embeddings",
        json!({"model": m, "input": "hello"}),
        row(
            m.clone(),
            "embeddings",
            false,
            [Some(9), None, None, None],
            9.0 / 1e6,
        ),
    );
    // The built-in table: gpt-4o-mini at 0.15 / 0.60 / 0.075 per million.
    let m = format!("gpt-4o-mini-{tag}");
    send(
        "chat/completions",
        json!({"model": m, "messages": [{"role": "user", "content": "hi"}]}),
        row(
            m.clone(),
            "chat/completions",
            false,
            CHAT_TOKENS,
            (600.0 * 0.15 + 400.0 * 0.075 + 200.0 * 0.60) / 1e6,
        ),
    );
    // No price anywhere: cost 0 (and one warning).
    let m = format!("unpriced-{tag}");
    send(
        "chat/completions",
        json!({"model": m, "messages": [{"role": "user", "content": "hi"}], "stream": true}),
        row(m.clone(), "chat/completions", true, CHAT_TOKENS, 0.0),
    );
    // A stream that fails after its first chunk.
    let m = format!("breaks-{tag}");
    send(
        "chat/completions",
        json!({"model": m, "messages": [{"role": "user", "content": "hi"}], "stream": true}),
        Expected {
            error_type: Some("overloaded"),
            ..row(m.clone(), "chat/completions", true, [None; 4], 0.0)
        },
    );
    // Failures have rows too: the upstream's 400, and a wrong key.
    let m = format!("fails-upstream-{tag}");
    send(
        "chat/completions",
        json!({"model": "fails-upstream", "messages": [{"role": "user", "content": m}]}),
        Expected {
            model: "fails-upstream".into(),
            connection: "up",
            door: "chat/completions",
            stream: false,
            status: 400,
            tokens: [None; 4],
            cost: 0.0,
            error_type: Some("context_length_exceeded"),
        },
    );
    let m = format!("refused-{tag}");
    send(
        "embeddings",
        json!({"model": m, "input": "x"}),
        Expected {
            model: String::new(),
            connection: "up",
            door: "embeddings",
            stream: false,
            status: 401,
            tokens: [None; 4],
            cost: 0.0,
            error_type: Some("invalid_api_key"),
        },
    );
    // A client that leaves a stream after its first bytes.
    let m = format!("endless-{tag}");
    let mut response = client
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({"model": m, "messages": [{"role": "user", "content": "hi"}], "stream": true}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut first = [0u8; 64];
    let n = std::io::Read::read(&mut response, &mut first).unwrap();
    assert!(n > 0);
    drop(response);
    expected.push(Expected {
        error_type: Some("client_disconnected"),
        ..row(m.clone(), "chat/completions", true, [None; 4], 0.0)
    });
    expected
}

/// A row as read back.
#[derive(Debug)]
struct Stored {
    request_id: String,
    api_key_id: Option<String>,
    group: Option<String>,
    connection: Option<String>,
    requested_model: Option<String>,
    model: Option<String>,
    door: String,
    status: i32,
    stream: bool,
    tokens: [Option<i64>; 4],
    cost: f64,
    duration_ms: f64,
    ttft_ms: Option<f64>,
    error_type: Option<String>,
    /// Every text column, for the no-secret check.
    text: String,
}

const SELECT: &str = "SELECT request_id, api_key_id, key_name, group_name, connection, \
    requested_model, model, door, status, stream, prompt_tokens, completion_tokens, \
    cached_tokens, reasoning_tokens, cost_usd, duration_ms, ttft_ms, error_type, created_at \
    FROM usage_ledger ORDER BY id";

/// A row read back, from either backend (the same columns, decoded alike).
macro_rules! stored {
    ($row:expr) => {{
        let row = $row;
        let texts: Vec<Option<String>> = [1, 2, 3, 4, 5, 6, 17]
            .iter()
            .map(|&i| row.get::<Option<String>, _>(i))
            .collect();
        let created_at: i64 = row.get(18);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!(
            (now_ms - created_at).abs() < 600_000,
            "created_at {created_at}"
        );
        Stored {
            request_id: row.get(0),
            api_key_id: row.get(1),
            group: row.get(3),
            connection: row.get(4),
            requested_model: row.get(5),
            model: row.get(6),
            door: row.get(7),
            status: row.get(8),
            stream: row.get(9),
            tokens: [row.get(10), row.get(11), row.get(12), row.get(13)],
            cost: row.get(14),
            duration_ms: row.get(15),
            ttft_ms: row.get(16),
            error_type: row.get(17),
            text: format!("{texts:?}"),
        }
    }};
}

/// Each expected request has exactly one row that says what it should.
fn check_rows(rows: &[Stored], expected: &[Expected]) {
    assert_eq!(rows.len(), expected.len(), "rows: {rows:#?}");
    let mut ids: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), rows.len(), "request ids are unique");
    for want in expected {
        let matching: Vec<&Stored> = rows
            .iter()
            .filter(|r| {
                r.door == want.door
                    && r.stream == want.stream
                    && r.status == want.status
                    && match want.status {
                        // The refused request's body is never read: no model.
                        401 => r.requested_model.is_none(),
                        _ => r.requested_model.as_deref() == Some(want.model.as_str()),
                    }
            })
            .collect();
        // The two refusals of a run have the same door and status; model names
        // tell the rest apart.
        assert!(!matching.is_empty(), "no row for {want:?} in {rows:#?}");
        let row = matching[0];
        assert_eq!(row.tokens, want.tokens, "{want:?}: {row:?}");
        assert!((row.cost - want.cost).abs() < 1e-12, "{want:?}: {row:?}");
        assert_eq!(row.error_type.as_deref(), want.error_type, "{row:?}");
        assert!(
            row.duration_ms >= 0.0 && row.duration_ms < 30_000.0,
            "{row:?}"
        );
        assert!(!row.text.contains(KEY), "the key is never stored: {row:?}");
        assert!(!row.text.contains("sk-upstream-secret"), "{row:?}");
        if want.status == 401 {
            assert_eq!(row.api_key_id, None, "{row:?}");
            continue;
        }
        assert!(
            row.api_key_id.as_deref().is_some_and(|id| !id.is_empty()),
            "{row:?}"
        );
        assert_eq!(row.group.as_deref(), Some("default"), "{row:?}");
        assert_eq!(row.connection.as_deref(), Some(want.connection), "{row:?}");
        assert_eq!(row.model.as_deref(), Some(want.model.as_str()), "{row:?}");
        if want.stream {
            let ttft = row.ttft_ms.expect("streams have a time to first token");
            assert!(ttft <= row.duration_ms, "{row:?}");
        } else {
            assert_eq!(row.ttft_ms, None, "{row:?}");
        }
    }
}

fn metric(proc: &Proc, name: &str) -> f64 {
    let text = reqwest::blocking::get(format!("{}/metrics", proc.url))
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

async fn sqlite_rows(path: &Path) -> Vec<Stored> {
    let url = format!("sqlite://{}", path.display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let rows = sqlx::query(SELECT).fetch_all(&pool).await.unwrap();
    pool.close().await;
    rows.iter().map(|row| stored!(row)).collect()
}

#[test]
fn sqlite_rows_match_every_door_and_the_clean_stop_writes_them() {
    let rt = Rt::start();
    let dir = tempfile::tempdir().unwrap();
    // A minute between batches: nothing is written before the stop, which must
    // write everything buffered.
    let database = "[database]\nflush_interval_seconds = 60\n";
    write(dir.path(), "config.toml", &config(&rt.upstream, database));
    let mut proc = Proc::start(dir.path(), &["--env", ""], &[]);
    // The default file beside the config, created and migrated at startup.
    proc.wait_for_log("usage ledger: sqlite database ready");
    let db_path = dir.path().join("lm-proxy.db");
    assert!(db_path.exists());
    let expected = exercise(&proc.url, "a");
    assert_eq!(metric(&proc, "lm_proxy_ledger_rows_written_total"), 0.0);
    let before = rt.runtime.block_on(sqlite_rows(&db_path));
    assert!(
        before.is_empty(),
        "written before a batch was due: {before:?}"
    );
    proc.signal("-TERM");
    assert!(proc.wait_exit(Duration::from_secs(20)).success());
    let log = proc.log_after_exit();
    let rows = rt.runtime.block_on(sqlite_rows(&db_path));
    check_rows(&rows, &expected);
    // One warning for the unpriced model, not one per request.
    assert_eq!(log.matches("no price for this model").count(), 1, "{log}");
    assert!(!log.contains(KEY), "{log}");

    // Started again on the same file: the migrations are not applied twice, and
    // new rows join the old ones.
    let mut proc = Proc::start(dir.path(), &["--env", ""], &[]);
    proc.wait_for_log("usage ledger: sqlite database ready");
    let more = exercise(&proc.url, "b");
    proc.signal("-TERM");
    assert!(proc.wait_exit(Duration::from_secs(20)).success());
    let rows = rt.runtime.block_on(sqlite_rows(&db_path));
    let all: Vec<Expected> = expected.into_iter().chain(more).collect();
    check_rows(&rows, &all);
}

#[test]
fn an_unreachable_database_never_stops_the_gateway_and_drops_past_the_bound_are_counted() {
    let rt = Rt::start();
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: the database is down from the start.
    let port = free_port();
    let database = format!(
        "[database]\nurl = \"postgres://lm:pw-not-logged@127.0.0.1:{port}/lm\"\n\
         buffer_rows = 3\ntimeout_seconds = 0.5\nflush_timeout_seconds = 1\n"
    );
    write(dir.path(), "config.toml", &config(&rt.upstream, &database));
    let mut proc = Proc::start(dir.path(), &["--env", ""], &[]);
    proc.wait_for_log("usage ledger: cannot open the postgres database");
    let client = reqwest::blocking::Client::new();
    for i in 0..5 {
        let started = Instant::now();
        let response = client
            .post(format!("{}/v1/chat/completions", proc.url))
            .bearer_auth(KEY)
            .json(&json!({"model": format!("priced-{i}"), "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // 3 rows wait, 2 found the buffer full.
    assert_eq!(metric(&proc, "lm_proxy_ledger_rows_dropped_total"), 2.0);
    proc.wait_for_log("usage ledger: rows dropped: the buffer is full");
    // The stop cannot write the 3 waiting rows: it gives up after
    // flush_timeout_seconds, says so, and exits cleanly.
    proc.signal("-TERM");
    assert!(proc.wait_exit(Duration::from_secs(20)).success());
    let log = proc.log_after_exit();
    assert!(
        log.contains("3 rows could not be written before the stop"),
        "{log}"
    );
    assert!(!log.contains("pw-not-logged"), "{log}");
}

#[test]
fn config_mistakes_in_database_and_pricing_stop_startup_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (section, key, problem) in [
        (
            "[database]\nurl = \"mysql://x/y\"\n",
            "database.url",
            "sqlite://",
        ),
        (
            "[database]\nurl = \"postgres://u:secret-pw@host:notaport/db\"\n",
            "database.url",
            "PostgreSQL",
        ),
        (
            "[database]\nbuffer_rows = 0\n",
            "database",
            "greater than 0",
        ),
        ("[database]\nurll = \"sqlite://x.db\"\n", "database", "urll"),
        (
            "[pricing]\n\"gpt[\" = { input = 1, output = 1 }\n",
            "pricing.\"gpt[\"",
            "",
        ),
        (
            "[pricing]\n\"m\" = { input = -1, output = 1 }\n",
            "pricing",
            "non-negative",
        ),
        (
            "[groups.team]\nbudget = { usd = 5 }\n",
            "groups.team.budget",
            "add a [database] section",
        ),
        (
            "[database]\n[groups.team]\nbudget = { usd = 5, tokens = 10 }\n",
            "groups.team.budget",
            "one of `usd` or `tokens`",
        ),
        (
            "[database]\n[groups.team]\nbudget = { usd = 5, period = \"year\" }\n",
            "groups.team",
            "period",
        ),
    ] {
        let text = format!(
            "[connections.up]\napi_type = \"open_ai\"\napi_base = \"http://127.0.0.1:9/v1\"\n\
             [routing]\n\"*\" = \"up.*\"\n{section}"
        );
        write(dir.path(), "config.toml", &text);
        let (code, _out, err) = run_to_exit(dir.path(), &["--env", ""], &[]);
        assert_eq!(code, 1, "{section}: {err}");
        assert!(err.contains("config.toml"), "{section}: {err}");
        assert!(err.contains(key), "{section}: {err}");
        assert!(err.contains(problem), "{section}: {err}");
        assert!(!err.contains("secret-pw"), "{section}: {err}");
    }
}

async fn postgres_rows(url: &str) -> Vec<Stored> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let rows = sqlx::query(SELECT).fetch_all(&pool).await.unwrap();
    pool.close().await;
    rows.iter().map(|row| stored!(row)).collect()
}

/// Wait (bounded) until the table holds `n` rows.
fn wait_for_rows(rt: &Rt, url: &str, n: usize) -> Vec<Stored> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = rt.runtime.block_on(postgres_rows(url));
        if rows.len() >= n {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{} rows of {n} within 30 s",
            rows.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn postgres_rows_match_every_door_and_survive_the_database_stopping_mid_run() {
    let rt = Rt::start();
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let database = format!(
        "[database]\nurl = \"{}\"\nflush_interval_seconds = 0.05\ntimeout_seconds = 1\n",
        pg.url()
    );
    write(dir.path(), "config.toml", &config(&rt.upstream, &database));
    let mut proc = Proc::start(dir.path(), &["--env", ""], &[]);
    proc.wait_for_log("usage ledger: postgres database ready");
    let first = exercise(&proc.url, "a");
    let rows = wait_for_rows(&rt, &pg.url(), first.len());
    check_rows(&rows, &first);

    // The database goes away: requests are still answered at once (`exercise`
    // checks the time), their rows wait in memory.
    pg.pg_stop();
    let second = exercise(&proc.url, "b");
    proc.wait_for_log("usage ledger: cannot write to the postgres database");
    assert_eq!(metric(&proc, "lm_proxy_ledger_rows_dropped_total"), 0.0);
    assert!(pg.pg_start(), "PostgreSQL restarts: {}", pg.server_log());
    let all: Vec<Expected> = first.into_iter().chain(second).collect();
    let rows = wait_for_rows(&rt, &pg.url(), all.len());
    check_rows(&rows, &all);

    // A third round, then a clean stop: nothing lost, nothing doubled.
    let third = exercise(&proc.url, "c");
    proc.signal("-TERM");
    assert!(proc.wait_exit(Duration::from_secs(20)).success());
    let all: Vec<Expected> = all.into_iter().chain(third).collect();
    let rows = rt.runtime.block_on(postgres_rows(&pg.url()));
    check_rows(&rows, &all);
}

fn chat(client: &reqwest::blocking::Client, url: &str, key: &str) -> (u16, Value, Option<String>) {
    let response = client
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "priced-chat", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, response.json().unwrap(), retry_after)
}

#[test]
fn a_group_budget_stops_at_the_right_request_in_every_door_and_holds_across_a_restart() {
    let rt = Rt::start();
    let dir = tempfile::tempdir().unwrap();
    // Each chat request uses 1200 tokens: 3 fit under 3000 (the third ends above).
    let budget = r#"budget = { tokens = 3000, period = "month" }"#;
    let text = config_with(
        &rt.upstream,
        "[database]\nflush_interval_seconds = 0.05\n",
        budget,
    );
    write(dir.path(), "config.toml", &text);
    let mut proc = Proc::start(dir.path(), &["--env", ""], &[]);
    // Ready: the spend to date has been read.
    proc.wait_for_log("usage ledger: sqlite database ready");
    let client = reqwest::blocking::Client::new();
    for _ in 0..3 {
        assert_eq!(chat(&client, &proc.url, KEY).0, 200);
    }
    let (status, body, retry_after) = chat(&client, &proc.url, KEY);
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "insufficient_quota", "{body}");
    assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("group 'default'")
            && message.contains("3600 tokens of 3000 tokens used this month")
            && message.contains("resets at 20")
            && message.ends_with("T00:00:00Z."),
        "{message}"
    );
    let retry_after: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!(
        retry_after > 0 && retry_after <= 31 * 86_400,
        "{retry_after}"
    );
    // Every door, in its own envelope.
    let messages = client
        .post(format!("{}/v1/messages", proc.url))
        .bearer_auth(KEY)
        .json(&json!({"model": "priced-m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .unwrap();
    assert_eq!(messages.status(), 429);
    let body: Value = messages.json().unwrap();
    assert_eq!(body["type"], "error", "Anthropic's envelope: {body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("budget of group 'default'"));
    for (path, body) in [
        ("embeddings", json!({"model": "cheap-embed", "input": "x"})),
        ("completions", json!({"model": "priced-c", "prompt": "x"})),
        ("responses", json!({"model": "priced-r", "input": "x"})),
    ] {
        let response = client
            .post(format!("{}/v1/{path}", proc.url))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(response.status(), 429, "{path}");
        let body: Value = response.json().unwrap();
        assert_eq!(body["error"]["code"], "budget_exceeded", "{path}: {body}");
    }
    // Another group is not held back.
    assert_eq!(chat(&client, &proc.url, FREE_KEY).0, 200);
    proc.signal("-TERM");
    assert!(proc.wait_exit(Duration::from_secs(20)).success());

    // A restart reads the spend from the ledger: still refused.
    let mut proc = Proc::start(dir.path(), &["--env", ""], &[]);
    proc.wait_for_log("usage ledger: sqlite database ready");
    let (status, body, _) = chat(&client, &proc.url, KEY);
    assert_eq!(status, 429, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("3600 tokens of 3000 tokens"));
    proc.signal("-TERM");
    assert!(proc.wait_exit(Duration::from_secs(20)).success());
    // The refusals have rows too.
    let rows = rt
        .runtime
        .block_on(sqlite_rows(&dir.path().join("lm-proxy.db")));
    let refused = rows
        .iter()
        .filter(|r| r.status == 429 && r.error_type.as_deref() == Some("budget_exceeded"))
        .count();
    assert_eq!(refused, 6, "{rows:#?}");
}

#[test]
fn fifty_concurrent_requests_against_a_nearly_spent_budget_overshoot_by_at_most_those_in_flight() {
    let rt = Rt::start();
    let dir = tempfile::tempdir().unwrap();
    let budget = r#"budget = { tokens = 10000, period = "day" }"#;
    let text = config_with(
        &rt.upstream,
        "[database]\nflush_interval_seconds = 0.05\n",
        budget,
    );
    write(dir.path(), "config.toml", &text);
    let mut proc = Proc::start(dir.path(), &["--env", ""], &[]);
    proc.wait_for_log("usage ledger: sqlite database ready");
    let client = reqwest::blocking::Client::new();
    // 7 × 1200 = 8400 spent: 1600 left, less than two requests.
    for _ in 0..7 {
        assert_eq!(chat(&client, &proc.url, KEY).0, 200);
    }
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(50));
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let (client, url, barrier) = (client.clone(), proc.url.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                chat(&client, &url, KEY)
            })
        })
        .collect();
    let results: Vec<(u16, Value, Option<String>)> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();
    let admitted = results.iter().filter(|r| r.0 == 200).count();
    let refused = results
        .iter()
        .filter(|r| r.0 == 429 && r.1["error"]["code"] == "budget_exceeded")
        .count();
    assert_eq!(admitted + refused, 50, "{results:?}");
    // Each admitted request reserved the average request (1200 tokens): with 1600
    // left, the first two are admitted and nobody else, however they interleave.
    assert_eq!(admitted, 2, "{results:?}");
    proc.signal("-TERM");
    assert!(proc.wait_exit(Duration::from_secs(20)).success());
    let rows = rt
        .runtime
        .block_on(sqlite_rows(&dir.path().join("lm-proxy.db")));
    assert_eq!(rows.len(), 57);
    let spent: i64 = rows
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.tokens[0].unwrap() + r.tokens[1].unwrap())
        .sum();
    // 10800: over by 800, less than the one request that was in flight past the
    // limit.
    assert_eq!(spent, 10_800);
}

#[test]
fn budgets_fail_closed_or_open_while_the_database_is_unreachable() {
    let rt = Rt::start();
    for (policy, expected) in [("closed", 503), ("open", 200)] {
        let dir = tempfile::tempdir().unwrap();
        let database = format!(
            "[database]\nurl = \"postgres://lm@127.0.0.1:{}/lm\"\ntimeout_seconds = 0.5\n\
             flush_timeout_seconds = 0.5\nbudgets_when_unreachable = \"{policy}\"\n",
            free_port()
        );
        let budget = r#"budget = { usd = 5 }"#;
        write(
            dir.path(),
            "config.toml",
            &config_with(&rt.upstream, &database, budget),
        );
        let mut proc = Proc::start(dir.path(), &["--env", ""], &[]);
        proc.wait_for_log("usage ledger: cannot open the postgres database");
        let client = reqwest::blocking::Client::new();
        let (status, body, _) = chat(&client, &proc.url, KEY);
        assert_eq!(status, expected, "{policy}: {body}");
        if expected == 503 {
            assert_eq!(body["error"]["code"], "budget_unavailable", "{body}");
        }
        // A group without a budget is never held back.
        assert_eq!(chat(&client, &proc.url, FREE_KEY).0, 200);
        proc.signal("-TERM");
        assert!(proc.wait_exit(Duration::from_secs(20)).success());
    }
}

#[test]
fn two_replicas_on_one_postgres_database_share_one_budget() {
    let rt = Rt::start();
    let pg = Postgres::start();
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let database = format!(
        "[database]\nurl = \"{}\"\nflush_interval_seconds = 0.05\ntimeout_seconds = 2\n",
        pg.url()
    );
    let budget = r#"budget = { tokens = 3000, period = "month" }"#;
    for dir in [&dir_a, &dir_b] {
        write(
            dir.path(),
            "config.toml",
            &config_with(&rt.upstream, &database, budget),
        );
    }
    // Debug lines say when a replica's view of the shared figures changes.
    let debug = [("RUST_LOG", "lm_proxy=debug")];
    let mut a = Proc::start(dir_a.path(), &["--env", ""], &debug);
    let mut b = Proc::start(dir_b.path(), &["--env", ""], &debug);
    a.wait_for_log("usage ledger: postgres database ready");
    b.wait_for_log("usage ledger: postgres database ready");
    let client = reqwest::blocking::Client::new();
    // Replica A spends 2400 of 3000 tokens (2 × 1200; $0.0034 each).
    for _ in 0..2 {
        assert_eq!(chat(&client, &a.url, KEY).0, 200);
    }
    // Replica B sees them once A has written them and B has read the figures.
    b.wait_for_log("default Month usd=0.006800 tokens=2400");
    assert_eq!(chat(&client, &b.url, KEY).0, 200);
    // 3600 spent: B refuses at once (its own request counts before it is written).
    let (status, body, _) = chat(&client, &b.url, KEY);
    assert_eq!(status, 429, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("3600 tokens of 3000 tokens used this month"));
    // And A, once B's request has reached the shared figures.
    a.wait_for_log("default Month usd=0.010200 tokens=3600");
    let (status, body, _) = chat(&client, &a.url, KEY);
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "budget_exceeded");
    for proc in [&mut a, &mut b] {
        proc.signal("-TERM");
        assert!(proc.wait_exit(Duration::from_secs(20)).success());
    }
    // A third replica started later reads the same figures.
    let c = Proc::start(dir_a.path(), &["--env", ""], &[]);
    c.wait_for_log("usage ledger: postgres database ready");
    assert_eq!(chat(&client, &c.url, KEY).0, 429);
}

/// A batch written again (its first write's answer lost, or the first write still
/// running) adds no row and no spend twice: one id per batch in
/// `ledger_batches`, no unique index on the rows. Two writes one after the
/// other, then two at once on two connections, then a new batch of the same
/// The ledger's database on `pg` (a pool of `connections`) and a sink writing to it.
async fn postgres_sink(pg: &Postgres, connections: u32) -> (Db, RowSink) {
    let target = Target::parse(&pg.url(), Path::new("/")).unwrap();
    let db = Db::connect(&target, connections, Duration::from_secs(10))
        .await
        .unwrap();
    let sink = RowSink::open(&target, &db).await.unwrap();
    (db, sink)
}

/// `n` rows of group `team`, each 10 prompt and 2 completion tokens costing `usd`.
fn team_rows(n: i64, usd: f64) -> Vec<Row> {
    (0..n)
        .map(|i| Row {
            created_at_ms: 1_764_547_200_000 + i,
            request_id: format!("req-{i}"),
            group: Some("team".into()),
            door: "chat/completions",
            status: 200,
            prompt_tokens: Some(10),
            completion_tokens: Some(2),
            cost_usd: usd,
            ..Row::default()
        })
        .collect()
}

/// rows (a new id: written, as it should be).
#[test]
fn a_postgres_batch_written_twice_adds_its_rows_and_spend_once() {
    let pg = Postgres::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let target = Target::parse(&pg.url(), Path::new("/")).unwrap();
        let timeout = Duration::from_secs(10);
        let db = Db::connect(&target, 4, timeout).await.unwrap();
        let sinks = [
            RowSink::open(&target, &db).await.unwrap(),
            RowSink::open(&target, &db).await.unwrap(),
        ];
        let rows = team_rows(5, 0.5);
        let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
        let counts = || async {
            let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM usage_ledger")
                .fetch_one(&pool)
                .await
                .unwrap();
            let (usd, tokens): (f64, i64) = sqlx::query_as(
                "SELECT usd, tokens FROM budget_usage WHERE group_name = 'team' \
                 AND period = 'total'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            (rows, usd, tokens)
        };

        let batch = Batch::new(rows.clone());
        let (batch, first) = sinks[0].insert(batch, timeout).await;
        first.unwrap();
        let (batch, again) = sinks[0].insert(batch, timeout).await;
        again.unwrap();
        assert_eq!(counts().await, (5, 2.5, 60));

        // The same batch twice at once: the second waits for the first's outcome.
        let twice = Batch::new(rows.clone());
        let copy = Batch {
            id: twice.id.clone(),
            rows: twice.rows.clone(),
        };
        let (a, b) = tokio::join!(
            sinks[0].insert(twice, timeout),
            sinks[1].insert(copy, timeout)
        );
        a.1.unwrap();
        b.1.unwrap();
        assert_eq!(counts().await, (10, 5.0, 120));

        // Ids sort by time and old ones are forgotten; recent ones are kept.
        assert!(
            batch.id.len() == 30 && batch.id.as_bytes()[13] == b'-',
            "{}",
            batch.id
        );
        let now: i64 = batch.id[..13].parse().unwrap();
        db.forget_batches(now, timeout).await.unwrap();
        let (kept,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM ledger_batches")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(kept, 2);
        db.forget_batches(now + 7 * 3_600_000, timeout)
            .await
            .unwrap();
        let (kept,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM ledger_batches")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(kept, 0);
        pool.close().await;
        db.close().await;
    });
}

/// Every column of a row comes back from PostgreSQL as it was written (the rows go
/// in PostgreSQL's binary COPY format, encoded by the gateway): NULLs, extremes,
/// text beyond ASCII, and a NUL (which PostgreSQL's text cannot hold: it becomes
/// U+FFFD rather than failing the batch on every retry).
#[test]
fn postgres_rows_come_back_column_for_column() {
    let pg = Postgres::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let timeout = Duration::from_secs(10);
        let (db, sink) = postgres_sink(&pg, 2).await;
        let full = Row {
            created_at_ms: 1_764_547_200_123,
            request_id: "req-full".into(),
            api_key_id: Some("key_0123".into()),
            key_name: Some("Zoë's key ✓".into()),
            group: Some("team".into()),
            connection: Some("claude".into()),
            requested_model: Some("claude-*".into()),
            model: Some("claude-sonnet-4".into()),
            door: "messages",
            status: 502,
            stream: true,
            prompt_tokens: Some(i64::MAX),
            completion_tokens: Some(0),
            cached_tokens: Some(7),
            reasoning_tokens: Some(-1),
            cost_usd: 0.125,
            duration_ms: 1234.5,
            ttft_ms: Some(f64::MIN_POSITIVE),
            error_type: Some("bad\0code".into()),
        };
        let bare = Row {
            created_at_ms: -1,
            request_id: String::new(),
            door: "chat/completions",
            ..Row::default()
        };
        let (_, written) = sink
            .insert(Batch::new(vec![full.clone(), bare.clone()]), timeout)
            .await;
        written.unwrap();

        let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
        let read: Vec<_> = sqlx::query(
            "SELECT created_at, request_id, api_key_id, key_name, group_name, connection, \
             requested_model, model, door, status, stream, prompt_tokens, completion_tokens, \
             cached_tokens, reasoning_tokens, cost_usd, duration_ms, ttft_ms, error_type \
             FROM usage_ledger ORDER BY id",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            use sqlx::Row as _;
            let text = |i: usize| r.get::<Option<String>, _>(i);
            let int = |i: usize| r.get::<Option<i64>, _>(i);
            (
                r.get::<i64, _>(0),
                r.get::<String, _>(1),
                (text(2), text(3), text(4), text(5), text(6), text(7)),
                r.get::<String, _>(8),
                r.get::<i32, _>(9),
                r.get::<bool, _>(10),
                (int(11), int(12), int(13), int(14)),
                (
                    r.get::<f64, _>(15),
                    r.get::<f64, _>(16),
                    r.get::<Option<f64>, _>(17),
                ),
                text(18),
            )
        })
        .collect();
        let expected = |row: &Row, error_type: Option<&str>| {
            (
                row.created_at_ms,
                row.request_id.clone(),
                (
                    row.api_key_id.clone(),
                    row.key_name.clone(),
                    row.group.clone(),
                    row.connection.clone(),
                    row.requested_model.clone(),
                    row.model.clone(),
                ),
                row.door.to_string(),
                row.status,
                row.stream,
                (
                    row.prompt_tokens,
                    row.completion_tokens,
                    row.cached_tokens,
                    row.reasoning_tokens,
                ),
                (row.cost_usd, row.duration_ms, row.ttft_ms),
                error_type.map(str::to_owned),
            )
        };
        assert_eq!(
            read,
            [
                expected(&full, Some("bad\u{FFFD}code")),
                expected(&bare, None)
            ]
        );
        pool.close().await;
        db.close().await;
    });
}

/// A PostgreSQL write that times out (here: its COPY waits on a lock another
/// session holds on the table) leaves nothing behind, and the same batch written
/// again on the same pool afterwards lands once, spend included.
#[test]
fn a_postgres_write_that_timed_out_is_written_once_when_retried() {
    let pg = Postgres::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // One connection: the retry reuses the one the timed-out write left.
        let (db, sink) = postgres_sink(&pg, 1).await;
        let rows = team_rows(3, 0.25);

        let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
        let mut locker = pool.begin().await.unwrap();
        sqlx::query("LOCK TABLE usage_ledger IN EXCLUSIVE MODE")
            .execute(&mut *locker)
            .await
            .unwrap();
        let (batch, timed_out) = sink
            .insert(Batch::new(rows), Duration::from_millis(300))
            .await;
        let error = timed_out.unwrap_err();
        assert!(error.contains("no answer within"), "{error}");
        locker.rollback().await.unwrap();

        let (_, again) = sink.insert(batch, Duration::from_secs(10)).await;
        again.unwrap();
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM usage_ledger")
            .fetch_one(&pool)
            .await
            .unwrap();
        let (usd,): (f64,) = sqlx::query_as(
            "SELECT usd FROM budget_usage WHERE group_name = 'team' AND period = 'total'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!((count, usd), (3, 0.75));
        pool.close().await;
        db.close().await;
    });
}
