//! Header names reach HTTP/1.1 upstreams in title case rather than lowercased
//! (issue 19, point 9: a configured `X-Custom-Header` arrived as `x-custom-header`),
//! on the gateway's own pool (plain http) and through reqwest (model lists, https,
//! proxies); and a client address from `X-Forwarded-For` keeps its written form.
//! The mock here reads raw bytes: an HTTP server library would lowercase the names.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use common::{user, TestGateway};

/// Answers every request on 127.0.0.1 and keeps each request's head as sent.
async fn raw_upstream() -> (String, Arc<Mutex<Vec<String>>>) {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = heads.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = socket.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + length {
                    let n = socket.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = if head.starts_with("GET") {
                    json!({"object": "list", "data": [{"id": "listed-model", "object": "model"}]})
                } else {
                    common::completion("m", "hello")
                }
                .to_string();
                seen.lock().unwrap().push(head);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (base, heads)
}

fn header_names(head: &str) -> Vec<&str> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':').map(|(name, _)| name))
        .collect()
}

#[tokio::test]
async fn header_names_keep_their_case_and_forwarded_addresses_their_form() {
    let (base, heads) = raw_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.log");
    let gw = TestGateway::start(&format!(
        r#"
model_listing_mode = "expand_wildcards"
[connections.up]
api_type = "open_ai"
api_base = "{base}"
[connections.up.http_headers]
X-Custom-Header = "configured"
[routing]
"*" = "up.*"
[groups.default]
api_keys = ["k"]
[[loggers]]
class = "lm_proxy.loggers.BaseLogger"
[loggers.log_writer]
class = "lm_proxy.loggers.log_writers.JsonLogWriter"
file_name = {log:?}
[loggers.entry_transformer]
class = "lm_proxy.loggers.LogEntryTransformer"
remote_addr = "remote_addr"
"#,
        log = log.to_str().unwrap()
    ))
    .await;

    // The chat call goes over the gateway's own HTTP/1.1 pool.
    let response = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("k")
        .header("X-Forwarded-For", "2001:DB8:0::1")
        .json(&user("m", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let chat = heads.lock().unwrap().last().cloned().unwrap();
    let names = header_names(&chat);
    assert!(names.contains(&"X-Custom-Header"), "{chat}");
    assert!(names.contains(&"Content-Type"), "{chat}");
    assert!(!names.contains(&"x-custom-header"), "{chat}");

    // The model list goes through reqwest.
    let listed: Value = gw
        .client
        .get(gw.url("/v1/models"))
        .bearer_auth("k")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"][0]["id"], "listed-model", "{listed}");
    let list = heads.lock().unwrap().last().cloned().unwrap();
    assert!(list.starts_with("GET"), "{list}");
    assert!(header_names(&list).contains(&"X-Custom-Header"), "{list}");

    gw.server.shutdown(Duration::from_secs(5));
    gw.server.wait().await.unwrap();
    let line: Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["remote_addr"], "2001:DB8:0::1");
}

/// The lines of a request head whose name is `name` in any case.
fn lines_named<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
        })
        .collect()
}

/// Exact spellings (issue 19, point 9): a connection's `http_headers` arrive as the
/// config wrote them, from the chat door, the two OpenAI-only doors and the
/// Anthropic door (translated); headers set
/// through `llm_params.extra_headers` arrive as written there (the forwarder writes
/// the names as the reference's did: lowercase, the form ASGI servers hand over);
/// the provider's key and the gateway's own headers keep title case.
#[tokio::test]
async fn configured_and_handler_set_spellings_arrive_exactly() {
    let (base, heads) = raw_upstream().await;
    let gw = TestGateway::start(&format!(
        r#"
[connections.up]
api_type = "open_ai"
api_base = "{base}"
api_key = "sk-upstream"
[connections.up.http_headers]
X-Custom-Header = "configured"
x-lower-case = "configured"
X-API-key = "configured"
[routing]
"*" = "up.*"
[groups.default]
api_keys = ["k"]
[[before]]
class = "lm_proxy.handlers.HTTPHeadersForwarder"
white_list_headers = ["X-Client-Trace", "x-lower-case"]
"#
    ))
    .await;

    let mut sent = Vec::new();
    for (path, body) in [
        ("/v1/chat/completions", user("m", "hi")),
        (
            "/v1/chat/completions",
            json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        ("/v1/embeddings", json!({"model": "m", "input": "hi"})),
        ("/v1/completions", json!({"model": "m", "prompt": "hi"})),
        // The Anthropic door, translated for the OpenAI-compatible connection.
        (
            "/v1/messages",
            json!({"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}),
        ),
    ] {
        let before = heads.lock().unwrap().len();
        // The answers of this mock fit only the plain chat call; the heads are what
        // matters here.
        let _ = gw
            .client
            .post(gw.url(path))
            .bearer_auth("k")
            .header("X-Client-Trace", "t-1")
            // A client's value for a name the connection sets: the connection wins,
            // with the config's spelling.
            .header("X-Lower-Case", "from-client")
            .json(&body)
            .send()
            .await
            .unwrap()
            .bytes()
            .await;
        let seen = heads.lock().unwrap();
        assert_eq!(seen.len(), before + 1, "{path}");
        sent.push((path, seen[before].clone()));
    }
    for (path, head) in &sent {
        let names = header_names(head);
        for spelled in ["X-Custom-Header", "x-lower-case", "X-API-key"] {
            assert!(names.contains(&spelled), "{path}: {spelled} in\n{head}");
        }
        assert_eq!(
            lines_named(head, "x-lower-case"),
            ["x-lower-case: configured"],
            "{path}: {head}"
        );
        assert_eq!(
            lines_named(head, "authorization"),
            ["Authorization: Bearer sk-upstream"],
            "{path}: {head}"
        );
        assert_eq!(
            lines_named(head, "x-client-trace"),
            ["x-client-trace: t-1"],
            "{path}: {head}"
        );
        for gateway_set in ["Content-Type", "Host", "Content-Length"] {
            assert!(
                names.contains(&gateway_set),
                "{path}: {gateway_set} in\n{head}"
            );
        }
    }
    gw.server.shutdown(Duration::from_secs(5));
    gw.server.wait().await.unwrap();
}
