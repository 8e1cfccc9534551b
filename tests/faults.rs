//! Upstream faults, one by one: each gets the right status or error chunk, the
//! gateway stays healthy, and the request's log entry records the error. Also the
//! per-connection timeouts (connect, first byte, between chunks, total) and a client
//! that goes away mid-stream.

mod common;

use std::time::{Duration, Instant};

use common::{sse_chunks, user, MockUpstream, TestGateway};
use serde_json::{json, Value};

fn config(upstream: &MockUpstream, log: &std::path::Path, extra_connections: &str) -> String {
    format!(
        r#"
[connections.up]
api_type = "open_ai"
api_base = "{base}"
timeout = 2
first_byte_timeout = 0.5
chunk_timeout = 0.5
{extra_connections}
[routing]
{routes}"*" = "up.*"
[groups.default]
api_keys = ["k"]
[[loggers]]
class = "lm_proxy.loggers.BaseLogger"
log_writer = {{ class = "lm_proxy.loggers.JsonLogWriter", file_name = {log:?} }}
"#,
        base = upstream.base(),
        log = log.to_str().unwrap(),
        routes = if extra_connections.is_empty() {
            ""
        } else {
            "\"refused\" = \"refused.*\"\n\"blackhole\" = \"blackhole.*\"\n"
        }
    )
}

/// Stop the gateway (which flushes its log) and read the JSON log entries.
async fn stop_and_read_log(gw: TestGateway, log: &std::path::Path) -> Vec<Value> {
    gw.server.shutdown(Duration::from_secs(5));
    gw.server.wait().await.unwrap();
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A listener whose accept queue is full, so new connections hang in the handshake
/// (connect timeout) without leaving the machine.
fn blackhole() -> (socket2::Socket, Vec<std::net::TcpStream>, u16) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let addr: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&addr.into()).unwrap();
    socket.listen(0).unwrap();
    let port = socket.local_addr().unwrap().as_socket().unwrap().port();
    // Fill the queue; these connections are never accepted. The first completes its
    // handshake before connect returns, and with a backlog of 0 Linux queues just
    // one: from then on SYNs are dropped. The others are insurance for kernels that
    // queue more; none needs waiting for (no sleep-and-hope).
    let first = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(10),
    )
    .expect("the first connection fits in the accept queue");
    let mut fillers = vec![first];
    for _ in 0..3 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into());
        fillers.push(std::net::TcpStream::from(s));
    }
    (socket, fillers, port)
}

#[tokio::test]
async fn each_upstream_fault_gets_the_right_answer_and_a_log_entry() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("faults.log");
    let (_hole, _fillers, hole_port) = blackhole();
    let extra = format!(
        "[connections.refused]\napi_type = \"open_ai\"\napi_base = \"http://127.0.0.1:{}/v1\"\n\
         [connections.blackhole]\napi_type = \"open_ai\"\napi_base = \"http://127.0.0.1:{hole_port}/v1\"\nconnect_timeout = 0.3\n",
        free_port()
    );
    let gw = TestGateway::start(&config(&upstream, &log, &extra)).await;

    // (model, stream, expected status, expected error code in the body or chunk)
    let cases: Vec<(&str, bool, u16, &str)> = vec![
        ("refused", false, 502, "upstream_error"),
        ("refused", true, 502, "upstream_error"),
        ("blackhole", false, 504, "upstream_timeout"),
        ("slow", false, 504, "upstream_timeout"),
        ("slow", true, 504, "upstream_timeout"),
        ("stall-stream", true, 200, "upstream_timeout"),
        ("status-500", false, 502, "upstream_error"),
        ("status-429", false, 429, "rate_limit_exceeded"),
        ("status-401", false, 401, "invalid_api_key"),
        ("not-json", false, 502, "upstream_error"),
        ("cut-short", false, 502, "upstream_error"),
        ("html", false, 502, "upstream_error"),
        ("midstream-fail", true, 200, "upstream_error"),
        ("error-event", true, 200, "overloaded"),
    ];
    for (model, stream, status, code) in &cases {
        let mut body = user(model, "x");
        if *stream {
            body["stream"] = json!(true);
        }
        let started = Instant::now();
        let response = gw.chat("k", body).await;
        assert_eq!(
            response.status().as_u16(),
            *status,
            "{model} stream={stream}"
        );
        if *model == "status-429" {
            assert_eq!(
                response.headers()["retry-after"],
                "7",
                "Retry-After is passed on"
            );
        }
        let text = response.text().await.unwrap();
        if *status == 200 {
            let (chunks, done) = sse_chunks(&text);
            assert!(done, "{model}: [DONE] after the error chunk");
            assert_eq!(
                chunks.last().unwrap()["error"]["code"],
                *code,
                "{model}: {text}"
            );
        } else {
            let body: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(body["error"]["code"], *code, "{model}: {text}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{model}: answered within the timeouts (the mock would take 60 s)"
        );
    }

    // Still healthy.
    let (status, _) = gw.chat_json("k", user("fine", "x")).await;
    assert_eq!(status, 200);

    let entries = stop_and_read_log(gw, &log).await;
    assert_eq!(entries.len(), cases.len() + 1);
    for ((model, stream, _, code), entry) in cases.iter().zip(&entries) {
        assert_eq!(
            entry["error"]["code"], *code,
            "{model} stream={stream}: the log records the error"
        );
    }
    assert_eq!(entries.last().unwrap()["error"], Value::Null);
}

#[tokio::test]
async fn odd_content_types_are_understood_not_lost() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(&config(&upstream, &dir.path().join("l.log"), "")).await;

    // Asked to stream, the upstream answered with one JSON object: replayed as chunks.
    let mut body = user("ignores-stream", "x");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let text = gw.chat("k", body).await.text().await.unwrap();
    let (chunks, done) = sse_chunks(&text);
    assert!(done);
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "one JSON answer");
    assert_eq!(chunks.last().unwrap()["usage"]["total_tokens"], 9);

    // Not asked to stream, the upstream streamed: put together into one answer.
    let (status, body) = gw.chat_json("k", user("always-stream", "x")).await;
    assert_eq!(status, 200);
    assert_eq!(body["choices"][0]["message"]["content"], "Hello world");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_closes_the_upstream_and_is_logged() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gone.log");
    let gw = TestGateway::start(&config(&upstream, &log, "")).await;
    let mut body = user("slow-stream", "x");
    body["stream"] = json!(true);
    // A stream read to its end is not counted as abandoned...
    assert!(sse_chunks(&gw.chat("k", body.clone()).await.text().await.unwrap()).1);
    assert_eq!(upstream.aborted_streams(), 0);
    // ...one the client leaves is.
    let mut response = gw.chat("k", body).await;
    assert!(response.chunk().await.unwrap().is_some());
    drop(response);

    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.aborted_streams() == 0 {
        assert!(
            Instant::now() < deadline,
            "the upstream request was not dropped within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let entries = stop_and_read_log(gw, &log).await;
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["extra"].get("client_disconnected"), None);
    assert_eq!(entries[1]["extra"]["client_disconnected"], true);
}

/// A client that hangs up while the upstream is still working on a non-streamed
/// answer: nothing will be written to it before the answer, so only watching the
/// socket can notice; the upstream call must be dropped then, not 60 s later, and
/// the request logged as abandoned.
#[tokio::test]
async fn a_client_that_leaves_before_the_answer_cancels_the_upstream_call() {
    use tokio::io::AsyncWriteExt;
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Timeouts far above the test's bound: only the client leaving can end the call.
    let log = dir.path().join("l.log");
    let text = config(&upstream, &log, "")
        .replace("\ntimeout = 2\n", "\ntimeout = 60\n")
        .replace("first_byte_timeout = 0.5", "first_byte_timeout = 60");
    let gw = TestGateway::start(&text).await;
    let body = user("slow", "x").to_string();
    let mut socket = tokio::net::TcpStream::connect(gw.server.addr)
        .await
        .unwrap();
    socket
        .write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer k\r\n\
                 content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.requests().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(upstream.abandoned_waits(), 0);
    drop(socket);
    while upstream.abandoned_waits() == 0 {
        assert!(
            Instant::now() < deadline,
            "the upstream call outlived its client by more than 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The gateway serves on, and the abandoned request is in the log.
    let (status, _) = gw.chat_json("k", user("fine", "x")).await;
    assert_eq!(status, 200);
    let entries = stop_and_read_log(gw, &log).await;
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0]["extra"]["client_disconnected"], true);
    assert_eq!(entries[0]["response"], Value::Null);
    assert_eq!(entries[1]["extra"].get("client_disconnected"), None);
}

#[test]
fn timeouts_must_be_positive() {
    for key in [
        "timeout",
        "connect_timeout",
        "first_byte_timeout",
        "chunk_timeout",
    ] {
        let text = format!("[connections.up]\napi_type = \"open_ai\"\n{key} = 0\n");
        let path = std::path::Path::new("t.toml");
        let tree =
            lm_proxy::config::parse_text(&text, lm_proxy::config::Format::Toml, path).unwrap();
        let config = lm_proxy::Config::from_value(tree, path).unwrap();
        let client = lm_proxy::server::upstream_client().unwrap();
        let err = match lm_proxy::Gateway::build(
            config,
            &client,
            &lm_proxy::extensions::NativeResolver,
        ) {
            Err(e) => e,
            Ok(_) => panic!("{key} = 0 was accepted"),
        };
        assert_eq!(err.key, format!("connections.up.{key}"), "{err}");
    }
}
