//! Header names reach upstreams as the config, handlers or clients spelled them
//! (issue 19, point 9: a configured `X-Custom-Header` arrived as `x-custom-header`),
//! on the gateway's own pool (chat and door calls, model lists; title case only
//! through reqwest, which serves proxied upstreams); and a client address from
//! `X-Forwarded-For` keeps its written form.
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
x-lower-case = "configured"
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

    // The model list (a GET on the same pool) keeps the spellings too.
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
    assert!(header_names(&list).contains(&"x-lower-case"), "{list}");

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
/// through `llm_params.extra_headers` arrive as written there (reqwest sends the
/// client's names lowercase, and the forwarder keeps the client's spelling);
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

/// One request written as bytes on `socket` (keep-alive), so that its header names
/// keep the spellings given here: HTTP client libraries title-case or lowercase
/// them. Returns the response's status code once the response has been read whole.
async fn raw_request(
    socket: &mut tokio::net::TcpStream,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> u16 {
    let body = body.to_string();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    socket.write_all(request.as_bytes()).await.unwrap();

    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = |buf: &[u8]| -> Option<usize> {
        let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        if let Some(length) = lines_named(&head, "content-length").first() {
            let length: usize = length.split_once(':').unwrap().1.trim().parse().unwrap();
            return (buf.len() >= head_end + length).then_some(head_end);
        }
        buf.ends_with(b"\r\n0\r\n\r\n").then_some(head_end)
    };
    loop {
        if let Some(head_end) = read(&buf) {
            let head = String::from_utf8_lossy(&buf[..head_end]);
            return head.split(' ').nth(1).unwrap().parse().unwrap();
        }
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the gateway closed the connection mid-response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The header names of a client that spells them its own way.
const CLIENT_SPELLED: [(&str, &str); 5] = [
    ("AUTHORIZATION", "Bearer k"),
    ("X-Trace-ID", "1"),
    ("x-request-source", "a"),
    ("X-TENANT", "acme"),
    // A name the connection sets itself: the connection's value and spelling win.
    ("X-Lower-Case", "from-client"),
];

/// The client's own spellings (issue 19, point 9: "the case the config or the client
/// gave them"): headers HTTPHeadersForwarder copies reach a plain-http upstream as the
/// client wrote them, from the chat door (plain and streamed), the OpenAI-only doors
/// and the Anthropic door; the provider's key and the connection's own headers keep
/// theirs.
#[tokio::test]
async fn forwarded_headers_keep_the_client_s_spelling() {
    let (base, heads) = raw_upstream().await;
    let gw = TestGateway::start(&format!(
        r#"
[connections.up]
api_type = "open_ai"
api_base = "{base}"
api_key = "sk-upstream"
[connections.up.http_headers]
x-lower-case = "configured"
[routing]
"*" = "up.*"
[groups.default]
api_keys = ["k"]
[[before]]
class = "lm_proxy.handlers.HTTPHeadersForwarder"
"#
    ))
    .await;
    assert!(gw.server.state.records_client_spellings());
    let address = gw.server.addr;
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    for (path, body) in [
        ("/v1/chat/completions", user("m", "hi")),
        (
            "/v1/chat/completions",
            json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        ("/v1/embeddings", json!({"model": "m", "input": "hi"})),
        ("/v1/completions", json!({"model": "m", "prompt": "hi"})),
        (
            "/v1/messages",
            json!({"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}),
        ),
    ] {
        let before = heads.lock().unwrap().len();
        // The mock's answer fits only the plain chat call; the heads are what matters.
        let status = raw_request(&mut socket, path, &CLIENT_SPELLED, &body).await;
        if path == "/v1/chat/completions" && body.get("stream").is_none() {
            assert_eq!(status, 200);
        }
        let head = heads.lock().unwrap()[before].clone();
        for (name, line) in [
            ("x-trace-id", "X-Trace-ID: 1"),
            ("x-request-source", "x-request-source: a"),
            ("x-tenant", "X-TENANT: acme"),
            ("x-lower-case", "x-lower-case: configured"),
            ("authorization", "Authorization: Bearer sk-upstream"),
        ] {
            assert_eq!(lines_named(&head, name), [line], "{path}: {head}");
        }
    }
    gw.server.shutdown(Duration::from_secs(5));
    gw.server.wait().await.unwrap();
}

/// Recording the client's spellings costs a map per request, so the server records
/// them only while the config has a forwarder, decided per connection when it is
/// accepted: a connection accepted before a reload added the forwarder sends its
/// copies lowercase, a later one in the client's spelling; a reload that removes the
/// forwarder turns recording off.
#[tokio::test]
async fn spellings_are_recorded_only_while_a_forwarder_is_configured() {
    let (base, heads) = raw_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let without = format!(
        r#"
[connections.up]
api_type = "open_ai"
api_base = "{base}"
[routing]
"*" = "up.*"
[groups.default]
api_keys = ["k"]
"#
    );
    let with =
        format!("{without}\n[[before]]\nclass = \"lm_proxy.handlers.HTTPHeadersForwarder\"\n");
    std::fs::write(&path, &without).unwrap();
    let gw = TestGateway::start_file(&path).await;
    assert!(!gw.server.state.records_client_spellings());
    let reload = || async {
        let resolver = lm_proxy::extensions::NativeResolver;
        assert!(
            lm_proxy::server::reload::reload(&gw.server.state, &resolver, &Default::default())
                .await
        );
    };
    let trace = |head: &str| lines_named(head, "x-trace-id").join("|");

    let mut early = tokio::net::TcpStream::connect(gw.server.addr)
        .await
        .unwrap();
    let chat = user("m", "hi");
    assert_eq!(
        raw_request(&mut early, "/v1/chat/completions", &CLIENT_SPELLED, &chat).await,
        200
    );
    assert_eq!(trace(heads.lock().unwrap().last().unwrap()), "");

    std::fs::write(&path, &with).unwrap();
    reload().await;
    assert!(gw.server.state.records_client_spellings());
    assert_eq!(
        raw_request(&mut early, "/v1/chat/completions", &CLIENT_SPELLED, &chat).await,
        200
    );
    assert_eq!(
        trace(heads.lock().unwrap().last().unwrap()),
        "x-trace-id: 1"
    );
    let mut late = tokio::net::TcpStream::connect(gw.server.addr)
        .await
        .unwrap();
    assert_eq!(
        raw_request(&mut late, "/v1/chat/completions", &CLIENT_SPELLED, &chat).await,
        200
    );
    assert_eq!(
        trace(heads.lock().unwrap().last().unwrap()),
        "X-Trace-ID: 1"
    );

    std::fs::write(&path, &without).unwrap();
    reload().await;
    assert!(!gw.server.state.records_client_spellings());
    gw.server.shutdown(Duration::from_secs(5));
    gw.server.wait().await.unwrap();
}

/// Anthropic and Gemini connections send their `http_headers` as the config spelled
/// them too (they went out in title case before): the chat door translated to each,
/// and the Anthropic door passed through to the Anthropic connection; the keys
/// (`x-api-key`, `x-goog-api-key`) and the gateway's own headers keep their usual
/// spelling.
#[tokio::test]
async fn anthropic_and_gemini_connections_send_configured_spellings() {
    let (base, heads) = raw_upstream().await;
    let root = base.trim_end_matches("/v1");
    let gw = TestGateway::start(&format!(
        r#"
model_listing_mode = "expand_wildcards"
[connections.claude]
api_type = "anthropic"
api_base = "{root}"
api_key = "sk-ant-upstream"
[connections.claude.http_headers]
X-Custom-Header = "configured"
x-lower-case = "configured"
[connections.gemini]
api_type = "google"
api_base = "{root}"
api_key = "gemini-upstream"
[connections.gemini.http_headers]
X-Custom-Header = "configured"
x-lower-case = "configured"
[routing]
"claude*" = "claude.*"
"gemini*" = "gemini.*"
[groups.default]
api_keys = ["k"]
"#
    ))
    .await;
    // The Anthropic connection's model list (a GET with a query) keeps them too.
    let listed = gw
        .client
        .get(gw.url("/v1/models"))
        .bearer_auth("k")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let list = heads
        .lock()
        .unwrap()
        .iter()
        .find(|h| h.starts_with("GET /v1/models?limit=1000 "))
        .cloned()
        .expect("the Anthropic model list was asked for");
    for spelled in ["X-Custom-Header", "x-lower-case"] {
        assert!(
            header_names(&list).contains(&spelled),
            "{spelled} in\n{list}"
        );
    }
    let messages = json!({"model": "claude-x", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
    for (path, body) in [
        ("/v1/chat/completions", user("claude-x", "hi")),
        ("/v1/messages", messages),
        ("/v1/chat/completions", user("gemini-x", "hi")),
    ] {
        let before = heads.lock().unwrap().len();
        // The mock answers in OpenAI's shape; only the heads matter here.
        let _ = gw
            .client
            .post(gw.url(path))
            .bearer_auth("k")
            .json(&body)
            .send()
            .await
            .unwrap()
            .bytes()
            .await;
        let seen = heads.lock().unwrap();
        assert_eq!(seen.len(), before + 1, "{path}");
        let head = &seen[before];
        let names = header_names(head);
        for spelled in ["X-Custom-Header", "x-lower-case", "Content-Type"] {
            assert!(names.contains(&spelled), "{path}: {spelled} in\n{head}");
        }
        let key = if head.contains(":generateContent") {
            "X-Goog-Api-Key"
        } else {
            "X-Api-Key"
        };
        assert!(names.contains(&key), "{path}: {key} in\n{head}");
    }
}
