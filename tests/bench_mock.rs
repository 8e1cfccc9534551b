//! The benchmark's mock upstream (`bench-upstream`, bench/upstream.rs) speaks the
//! three wire formats well enough for lm-proxy to translate each: OpenAI, Anthropic
//! and Gemini, answers and streams, with the chunk count that its model names ask
//! for (`-s<N>`) and with pacing (`-d<MS>`). The benchmark only runs the OpenAI and
//! Anthropic shapes; this keeps the Gemini one honest too.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{sse_chunks, user, TestGateway};
use reqwest::StatusCode;
use serde_json::json;

/// `bench-upstream` on a free port, killed when dropped.
struct BenchUpstream {
    child: Child,
    port: u16,
}

impl BenchUpstream {
    /// Start it and wait for its "listening on 127.0.0.1:PORT" line.
    fn start() -> BenchUpstream {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bench-upstream"))
            .args(["--port", "0", "--chunks", "4"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("bench-upstream starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("bench-upstream prints its address");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
        BenchUpstream { child, port }
    }
}

impl Drop for BenchUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn gateway(mock: &BenchUpstream) -> TestGateway {
    let port = mock.port;
    TestGateway::start(&format!(
        r#"
encryption_key = "test-encryption-key"
[connections.openai]
api_type = "open_ai"
api_base = "http://127.0.0.1:{port}/v1"
api_key = "upstream-key"
[connections.claude]
api_type = "anthropic"
api_base = "http://127.0.0.1:{port}"
api_key = "upstream-key"
[connections.gemini]
api_type = "google"
api_base = "http://127.0.0.1:{port}"
api_key = "upstream-key"
[routing]
"claude*" = "claude.*"
"gemini*" = "gemini.*"
"*" = "openai.*"
[groups.default]
api_keys = ["client-key"]
"#
    ))
    .await
}

#[tokio::test]
async fn each_wire_format_answers_and_streams_through_the_gateway() {
    let mock = BenchUpstream::start();
    let gw = gateway(&mock).await;
    for model in ["bench", "claude-bench", "gemini-bench"] {
        // Non-streamed: the default chunk count (`--chunks 4`) as words.
        let (status, answer) = gw.chat_json("client-key", user(model, "hi")).await;
        assert_eq!(status, StatusCode::OK, "{model}: {answer}");
        assert_eq!(
            answer["choices"][0]["message"]["content"], "tok tok tok tok",
            "{model}: {answer}"
        );
        assert_eq!(answer["usage"]["completion_tokens"], 4, "{model}: {answer}");

        // Streamed, 3 chunks 1 ms apart as the model name asks.
        let mut body = user(&format!("{model}-s3-d1"), "hi");
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let response = gw.chat("client-key", body).await;
        assert_eq!(response.status(), 200, "{model}");
        let (chunks, done) = sse_chunks(&response.text().await.unwrap());
        assert!(done, "{model}: the stream ends with [DONE]");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "tok tok tok", "{model}: {chunks:?}");
        let usage = chunks.iter().rev().find(|c| c["usage"].is_object());
        assert_eq!(
            usage.map(|c| c["usage"]["completion_tokens"].clone()),
            Some(json!(3)),
            "{model}: {chunks:?}"
        );
    }
}

/// The field's scenarios (bench/field.sh): `-w<MS>` makes a non-streamed answer wait
/// (an upstream that answers after 20 ms), and a stream brings 64 deltas.
#[tokio::test]
async fn a_wait_in_the_model_name_delays_the_answer_and_streams_bring_64_deltas() {
    let mock = BenchUpstream::start();
    let gw = gateway(&mock).await;
    let started = std::time::Instant::now();
    let (status, answer) = gw.chat_json("client-key", user("bench-w300", "hi")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "tok tok tok tok"
    );
    // A lower bound only: the mock sleeps at least this long before answering.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "answered after {:?}",
        started.elapsed()
    );

    let mut body = user("bench-s64-d1", "hi");
    body["stream"] = json!(true);
    let response = gw.chat("client-key", body).await;
    assert_eq!(response.status(), 200);
    let (chunks, done) = sse_chunks(&response.text().await.unwrap());
    assert!(done);
    let deltas = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .count();
    assert_eq!(deltas, 64);
}
