//! Hostile clients: slow or silent connections, idle floods, unending, oversized
//! and unauthenticated bodies. The gateway must close what overstays its
//! `[limits]`, refuse bodies it should not hold, and keep answering ordinary
//! clients meanwhile. Timeouts are configured small (a few hundred ms) so the file
//! runs in seconds; the assertions are generous upper bounds that prove "did not
//! hang", never tight latencies.

mod common;

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestGateway;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Well past every configured timeout: a connection still open after this was
/// never going to be closed.
const BOUND: Duration = Duration::from_secs(5);

fn config(limits: &str) -> String {
    format!(
        r#"
max_request_body_mb = 1
[connections.mock]
api_type = "mock"
[routing]
"*" = "mock.*"
[groups.default]
api_keys = ["good-key"]
[limits]
{limits}
"#
    )
}

/// Short timeouts for the tests of each one.
const SHORT: &str = r#"
header_timeout_seconds = 0.3
body_timeout_seconds = 0.3
idle_timeout_seconds = 0.5
"#;

async fn connect(gateway: &TestGateway) -> TcpStream {
    TcpStream::connect(gateway.server.addr).await.unwrap()
}

/// Read until the server closes the connection (EOF or reset); returns what it sent.
/// Panics when the connection is still open after `BOUND`.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(BOUND, read_all)
        .await
        .expect("the server should have closed the connection");
    String::from_utf8_lossy(&seen).into_owned()
}

/// Read one response head (up to the blank line) and, if it has a Content-Length,
/// its body. Panics when it does not come within `BOUND`.
async fn read_response(stream: &mut TcpStream) -> (String, String) {
    let read = async {
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !seen.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                panic!(
                    "connection closed before a response head: {:?}",
                    String::from_utf8_lossy(&seen)
                );
            }
            seen.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&seen).into_owned();
        let length = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.unwrap();
        (head, String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(BOUND, read)
        .await
        .expect("a response should have come")
}

fn chat_head(key: &str, content_length: usize, extra: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {content_length}\r\n{extra}\r\n"
    )
}

fn small_request() -> String {
    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

#[tokio::test]
async fn slow_headers_are_closed_after_the_header_timeout() {
    let gateway = TestGateway::start(&config(SHORT)).await;
    let mut stream = connect(&gateway).await;
    stream
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // One header line every 50 ms, never the blank line: slowloris.
    let mut closed = false;
    for i in 0..100 {
        let line = format!("x-slow-{i}: a\r\n");
        if stream.write_all(line.as_bytes()).await.is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 1024];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(50), stream.read(&mut probe)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "a trickled request head was still open after 5 s");
    assert!(started.elapsed() < BOUND);
}

#[tokio::test]
async fn a_silent_connection_is_closed() {
    let gateway = TestGateway::start(&config(SHORT)).await;
    let mut stream = connect(&gateway).await;
    assert_eq!(read_until_closed(&mut stream).await, "");
}

#[tokio::test]
async fn an_unfinished_body_gets_408_after_the_body_timeout() {
    let gateway = TestGateway::start(&config(SHORT)).await;
    let mut stream = connect(&gateway).await;
    stream
        .write_all(chat_head("good-key", 1000, "").as_bytes())
        .await
        .unwrap();
    stream.write_all(b"{\"model\": \"m\"").await.unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(body.contains("body_timeout_seconds"), "{body}");
    read_until_closed(&mut stream).await;
}

/// A request pipelined while a slow stream is being answered waits in the socket
/// (hyper reads nothing mid-response) and is answered after it, on the same
/// connection: the watch for the client leaving must not take those waiting bytes
/// for a departure, nor spin on them.
#[tokio::test]
async fn a_request_pipelined_during_a_stream_is_answered_after_it() {
    let gateway = TestGateway::start(&config(SHORT).replace(
        "[routing]",
        "[connections.slow]\napi_type = \"mock\"\nchunk_delay_ms = 100\n\
         [routing]\n\"slow\" = \"slow.*\"",
    ))
    .await;
    let mut stream = connect(&gateway).await;
    let first = json!({"model": "slow", "stream": true,
        "messages": [{"role": "user", "content": "one two three"}]})
    .to_string();
    let second =
        json!({"model": "m", "messages": [{"role": "user", "content": "second"}]}).to_string();
    stream
        .write_all(format!("{}{first}", chat_head("good-key", first.len(), "")).as_bytes())
        .await
        .unwrap();
    // Read the stream, chunked, to its last (empty) chunk; send the second request
    // once the first event has come.
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    let mut sent = false;
    tokio::time::timeout(BOUND, async {
        while !seen.ends_with(b"\r\n0\r\n\r\n") {
            assert_eq!(
                stream.read(&mut byte).await.unwrap(),
                1,
                "closed mid-stream"
            );
            seen.push(byte[0]);
            if !sent && seen.ends_with(b"\n\n") && seen.windows(5).any(|w| w == b"data:") {
                let head = chat_head("good-key", second.len(), "");
                stream
                    .write_all(format!("{head}{second}").as_bytes())
                    .await
                    .unwrap();
                sent = true;
            }
        }
    })
    .await
    .expect("the stream should have ended");
    let streamed = String::from_utf8_lossy(&seen);
    assert!(sent, "{streamed}");
    assert!(streamed.starts_with("HTTP/1.1 200"), "{streamed}");
    assert!(
        streamed.contains("three") && streamed.contains("[DONE]"),
        "{streamed}"
    );
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("You said: second"), "{body}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let gateway = TestGateway::start(&config(SHORT)).await;
    let mut stream = connect(&gateway).await;
    for _ in 0..2 {
        // Kept alive between requests...
        stream
            .write_all(b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        let (head, _) = read_response(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    // ...and closed once idle for the idle timeout.
    assert_eq!(read_until_closed(&mut stream).await, "");
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let gateway = TestGateway::start(&config(SHORT)).await;
    let stream = connect(&gateway).await;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(connection);
    let request = http::Request::get(format!("{}/health", gateway.server.url()))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    // The server ends the connection (GOAWAY) once it has had no stream for a while.
    tokio::time::timeout(BOUND, driver)
        .await
        .expect("the idle HTTP/2 connection should have been closed")
        .unwrap()
        .ok();
}

/// Over HTTP/2: a body that never ends gets 408, and one without a key gets 401
/// without being read.
#[tokio::test]
async fn http2_bodies_are_bounded_too() {
    use futures_util::StreamExt as _;
    let gateway = TestGateway::start(&config(SHORT)).await;
    let stream = connect(&gateway).await;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    for (key, status) in [("good-key", 408), ("wrong-key", 401)] {
        let first = hyper::body::Frame::data(bytes::Bytes::from_static(b"{\"model\": "));
        let unending = futures_util::stream::iter([Ok::<_, std::io::Error>(first)])
            .chain(futures_util::stream::pending());
        let request = http::Request::post(format!("{}/v1/chat/completions", gateway.server.url()))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(http_body_util::StreamBody::new(unending))
            .unwrap();
        let response = tokio::time::timeout(BOUND, sender.send_request(request))
            .await
            .expect("an answer should have come")
            .unwrap();
        assert_eq!(response.status(), status);
    }
    assert_eq!(gateway.server.state.bodies().held(), 0);
}

#[tokio::test]
async fn an_unauthenticated_body_is_not_read() {
    let gateway = TestGateway::start(&config("body_timeout_seconds = 30")).await;
    let mut stream = connect(&gateway).await;
    // 512 KiB announced (under the 1 MiB limit), 1 KiB sent: the answer comes anyway.
    stream
        .write_all(chat_head("wrong-key", 512 * 1024, "").as_bytes())
        .await
        .unwrap();
    stream.write_all(&[b' '; 1024]).await.unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(
        body.contains("invalid_api_key") || body.contains("API key"),
        "{body}"
    );
    // The rest is not waited for: the connection is closed.
    read_until_closed(&mut stream).await;
    assert_eq!(gateway.server.state.bodies().held(), 0);
}

#[tokio::test]
async fn a_small_refused_body_keeps_the_connection_usable() {
    let gateway = TestGateway::start(&config(SHORT)).await;
    let mut stream = connect(&gateway).await;
    let body = small_request();
    for (key, status) in [("wrong-key", "401"), ("good-key", "200")] {
        stream
            .write_all(chat_head(key, body.len(), "").as_bytes())
            .await
            .unwrap();
        stream.write_all(body.as_bytes()).await.unwrap();
        let (head, _) = read_response(&mut stream).await;
        assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{head}");
    }
}

#[tokio::test]
async fn expect_continue_over_the_limit_gets_413_and_no_100() {
    let gateway = TestGateway::start(&config("body_timeout_seconds = 30")).await;
    let mut stream = connect(&gateway).await;
    stream
        .write_all(chat_head("good-key", 2 * 1024 * 1024, "expect: 100-continue\r\n").as_bytes())
        .await
        .unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(body.contains("request_too_large"), "{body}");

    // Without Expect, a Content-Length over the limit is refused before the body too.
    let mut stream = connect(&gateway).await;
    stream
        .write_all(chat_head("good-key", 2 * 1024 * 1024, "").as_bytes())
        .await
        .unwrap();
    stream.write_all(&[b' '; 1024]).await.unwrap();
    let (head, _) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
}

#[tokio::test]
async fn bodies_in_flight_are_capped() {
    // Room for two bodies of 400 KiB, not three.
    let gateway =
        TestGateway::start(&config("body_timeout_seconds = 30\nmax_body_memory_mb = 1")).await;
    let body = {
        let mut body = small_request().into_bytes();
        body.pop();
        body.extend(format!(r#", "pad": "{}"}}"#, "x".repeat(400 * 1024)).into_bytes());
        body
    };
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(&gateway).await;
        stream
            .write_all(chat_head("good-key", body.len(), "").as_bytes())
            .await
            .unwrap();
        stream.write_all(&body[..1000]).await.unwrap();
        holders.push(stream);
    }
    // Both are being received (their budget is taken) before the third comes.
    let deadline = Instant::now() + BOUND;
    while gateway.server.state.bodies().held() < 2 * body.len() {
        assert!(Instant::now() < deadline, "the two bodies were not started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut third = connect(&gateway).await;
    third
        .write_all(chat_head("good-key", body.len(), "").as_bytes())
        .await
        .unwrap();
    let (head, refused) = read_response(&mut third).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(refused.contains("server_busy"), "{refused}");
    assert!(refused.contains("max_body_memory_mb"), "{refused}");

    // Finishing the held bodies serves them and gives the budget back.
    for stream in &mut holders {
        stream.write_all(&body[1000..]).await.unwrap();
        let (head, _) = read_response(stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    assert_eq!(gateway.server.state.bodies().held(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_idle_connections_make_room() {
    let gateway = TestGateway::start(&config(
        "max_connections = 10\nheader_timeout_seconds = 30\nidle_timeout_seconds = 30",
    ))
    .await;
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(connect(&gateway).await);
    }
    let deadline = Instant::now() + BOUND;
    while gateway.server.open_connections() < 10 {
        assert!(
            Instant::now() < deadline,
            "the silent connections were not accepted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // An ordinary client still gets in: the longest-silent connection is closed.
    let started = Instant::now();
    let (status, _) = tokio::time::timeout(
        BOUND,
        gateway.chat_json(
            "good-key",
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        ),
    )
    .await
    .expect("the ordinary client was locked out");
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(gateway.server.open_connections() <= 10);
    let mut evicted = 0;
    for stream in &mut silent {
        let mut probe = [0u8; 16];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(20), stream.read(&mut probe)).await
        {
            evicted += 1;
        }
    }
    assert!(evicted >= 1, "no silent connection was closed to make room");
}

/// Slowloris, an idle flood, unending and unauthenticated bodies, all at once and in
/// bounded numbers, while an ordinary client keeps sending requests: each of its
/// requests is answered within 2 s (usually a few ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_clients_are_served_during_an_attack() {
    let gateway = TestGateway::start(&config(
        "header_timeout_seconds = 0.5\nbody_timeout_seconds = 0.5\nidle_timeout_seconds = 1\n\
         max_connections = 300\nmax_body_memory_mb = 4",
    ))
    .await;
    let addr = gateway.server.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attacking = || !stop.load(std::sync::atomic::Ordering::Relaxed);
    let mut attackers = Vec::new();
    // Each attacker reconnects whenever the server closes it, until told to stop.
    let spawn = |kind: usize, stop: std::sync::Arc<std::sync::atomic::AtomicBool>| {
        tokio::spawn(async move {
            let big = chat_head("good-key", 900 * 1024, "");
            let unauthenticated = chat_head("no-such-key", 900 * 1024, "");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(mut stream) = TcpStream::connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let opening: &[u8] = match kind {
                    0 => b"POST /v1/chat/completions HTTP/1.1\r\n",
                    1 => b"",
                    2 => big.as_bytes(),
                    _ => unauthenticated.as_bytes(),
                };
                if stream.write_all(opening).await.is_err() {
                    continue;
                }
                // Trickle a byte every 100 ms (header bytes, body bytes, or nothing).
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let trickle: &[u8] = match kind {
                        0 => b"x-a: b\r\n",
                        1 => b"",
                        _ => b"          ",
                    };
                    if stream.write_all(trickle).await.is_err() {
                        break;
                    }
                    let mut probe = [0u8; 4096];
                    let read =
                        tokio::time::timeout(Duration::from_millis(100), stream.read(&mut probe));
                    if let Ok(Ok(0) | Err(_)) = read.await {
                        break;
                    }
                }
            }
        })
    };
    for (kind, count) in [(0, 50), (1, 100), (2, 20), (3, 20)] {
        for _ in 0..count {
            attackers.push(spawn(kind, stop.clone()));
        }
    }
    // Let the attack build up (every attacker connected), then measure.
    let deadline = Instant::now() + BOUND;
    while gateway.server.open_connections() < 150 {
        assert!(Instant::now() < deadline, "the attack did not build up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client = reqwest::Client::new();
    let mut slowest = Duration::ZERO;
    let run_until = Instant::now() + Duration::from_millis(2500);
    let mut answered = 0;
    while Instant::now() < run_until && attacking() {
        let started = Instant::now();
        let response = tokio::time::timeout(
            Duration::from_secs(2),
            client
                .post(gateway.url("/v1/chat/completions"))
                .bearer_auth("good-key")
                .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
                .send(),
        )
        .await
        .expect("an ordinary request took over 2 s during the attack")
        .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
        slowest = slowest.max(started.elapsed());
        answered += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for attacker in attackers {
        attacker.await.unwrap();
    }
    assert!(answered >= 10, "only {answered} requests answered");
    eprintln!("{answered} requests answered during the attack, slowest {slowest:?}");
    // Nothing held after the attack ends.
    let deadline = Instant::now() + BOUND;
    while gateway.server.state.bodies().held() > 0 {
        assert!(Instant::now() < deadline, "body budget not given back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The binary under a descriptor limit far below its connection cap: accepting
/// fails with EMFILE, which is logged (not a silent busy loop), and silent
/// connections are closed to make room, so an ordinary client is still served.
#[test]
fn the_binary_keeps_serving_when_descriptors_run_out() {
    use std::os::unix::process::CommandExt as _;

    let dir = tempfile::tempdir().unwrap();
    common::process::write(
        dir.path(),
        "config.toml",
        &config("max_connections = 1000\nheader_timeout_seconds = 30"),
    );
    let mut command = Command::new(env!("CARGO_BIN_EXE_lm-proxy-server"));
    command
        .current_dir(dir.path())
        .args(["--port", "0", "--host", "127.0.0.1", "--threads", "1"])
        .env_remove("RUST_LOG")
        .env_remove("LM_PROXY_DEBUG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child here.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = child.stderr.take().unwrap();
    let _child = Kill(child);
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening on ") {
                    let url = line[at + 13..]
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    let _ = ready_tx.send(url);
                }
                log.lock().unwrap().push_str(&(line + "\n"));
            }
        });
    }
    let url = ready_rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("server did not start: {}", log.lock().unwrap()));
    assert!(
        log.lock().unwrap().contains("open files limit 64"),
        "{}",
        log.lock().unwrap()
    );
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();

    // 100 silent connections: more than the 64 descriptors the server may open.
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(std::net::TcpStream::connect(addr).unwrap());
    }
    let deadline = Instant::now() + BOUND;
    while !log.lock().unwrap().contains("cannot accept connections") {
        assert!(
            Instant::now() < deadline,
            "EMFILE was not logged: {}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // An ordinary request on a new connection is still answered.
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(BOUND)).unwrap();
    let body = small_request();
    stream
        .write_all(
            format!(
                "{}{body}",
                chat_head("good-key", body.len(), "connection: close\r\n")
            )
            .as_bytes(),
        )
        .unwrap();
    let mut answer = String::new();
    let started = Instant::now();
    std::io::Read::read_to_string(&mut stream, &mut answer)
        .unwrap_or_else(|e| panic!("no answer ({e}): {}", log.lock().unwrap()));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(started.elapsed() < BOUND);
    // Logged once, not once per failed accept.
    let reports = log
        .lock()
        .unwrap()
        .matches("cannot accept connections")
        .count();
    assert!(reports <= 2, "{reports} reports: {}", log.lock().unwrap());
    drop(silent);
}

// The HTTP/1 server side's framing (`server::http1`): what a request may say about
// its body, heads past the bounds, pipelining, HTTP/1.0, interim answers.

/// Send `bytes` on a fresh connection and read the one answer that must come, then
/// the close that must follow it.
async fn refused(gateway: &TestGateway, bytes: &[u8]) -> (String, serde_json::Value) {
    let mut stream = connect(gateway).await;
    stream.write_all(bytes).await.unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert_eq!(read_until_closed(&mut stream).await, "", "after {head}");
    let body = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    (head, body)
}

/// Requests that frame their body two ways, or in a way the gateway does not read,
/// are how requests are smuggled past a proxy: each is refused with a 400 in the
/// OpenAI envelope, and its connection closed (what follows the head cannot be
/// trusted to be the next request).
#[tokio::test]
async fn ambiguous_or_broken_framing_is_refused_and_the_connection_closed() {
    let gateway = TestGateway::start(&config("")).await;
    let body = small_request();
    let n = body.len();
    let cases = [
        format!(
            "{}{body}",
            chat_head("good-key", n, "transfer-encoding: chunked\r\n")
        ),
        chat_head("good-key", n, "content-length: 3\r\n"),
        chat_head("good-key", n, "").replace(&format!("content-length: {n}"), "content-length: 1x"),
        chat_head("good-key", n, "").replace(
            &format!("content-length: {n}"),
            "transfer-encoding: gzip, chunked",
        ),
        chat_head("good-key", n, "").replace(
            &format!("content-length: {n}"),
            "transfer-encoding: chunked\r\ntransfer-encoding: chunked",
        ),
        chat_head("good-key", n, "")
            .replace("HTTP/1.1", "HTTP/1.0")
            .replace(
                &format!("content-length: {n}"),
                "transfer-encoding: chunked",
            ),
        "GARBAGE\r\n\r\n".to_owned(),
        "POST /v1/chat/completions HTTP/1.1\r\nbad name: x\r\n\r\n".to_owned(),
        "POST /v1/chat/completions HTTP/1.1\r\nx: a\0b\r\n\r\n".to_owned(),
        "POST /v1/chat/completions HTTP/2.0\r\n\r\n".to_owned(),
    ];
    for case in cases {
        let (head, body) = refused(&gateway, case.as_bytes()).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{case:?}: {head}");
        assert_eq!(body["error"]["code"], "bad_request", "{case:?}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{case:?}");
        assert!(
            body["error"]["message"].as_str().unwrap().len() > 20,
            "{body}"
        );
    }
    // The gateway serves on.
    let mut stream = connect(&gateway).await;
    stream
        .write_all(format!("{}{body}", chat_head("good-key", n, "")).as_bytes())
        .await
        .unwrap();
    assert!(read_response(&mut stream)
        .await
        .0
        .starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn heads_past_the_bounds_get_431() {
    let gateway = TestGateway::start(&config("")).await;
    let long = chat_head(
        "good-key",
        0,
        &format!("x-long: {}\r\n", "a".repeat(70 * 1024)),
    );
    let many: String = (0..101).map(|i| format!("x-{i}: v\r\n")).collect();
    let many = chat_head("good-key", 0, &many);
    for case in [long, many] {
        let (head, body) = refused(&gateway, case.as_bytes()).await;
        assert!(head.starts_with("HTTP/1.1 431"), "{head}");
        assert_eq!(body["error"]["code"], "request_header_fields_too_large");
    }
}

/// Requests sent back to back in one write (the second one chunked, with a chunk
/// extension and a trailer) are answered in order on the same connection.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let gateway = TestGateway::start(&config("")).await;
    let ask = |word: &str| {
        json!({"model": "m", "messages": [{"role": "user", "content": word}]}).to_string()
    };
    let (one, two, three) = (ask("one"), ask("two"), ask("three"));
    let (two_a, two_b) = two.split_at(10);
    let chunked_head = chat_head("good-key", 0, "transfer-encoding: chunked\r\n")
        .replace("content-length: 0\r\n", "");
    let all = format!(
        "{}{one}{chunked_head}{:x};ext=1\r\n{two_a}\r\n{:x}\r\n{two_b}\r\n0\r\nx-trailer: t\r\n\r\n{}{three}",
        chat_head("good-key", one.len(), ""),
        two_a.len(),
        two_b.len(),
        chat_head("good-key", three.len(), ""),
    );
    let mut stream = connect(&gateway).await;
    stream.write_all(all.as_bytes()).await.unwrap();
    for word in ["one", "two", "three"] {
        let (head, body) = read_response(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{word}: {head}");
        assert!(
            body.contains(&format!("You said: {word}")),
            "{word}: {body}"
        );
    }
}

/// A body that arrives a byte at a time, after its head, is read whole.
#[tokio::test]
async fn a_body_sent_a_byte_at_a_time_is_read_whole() {
    let gateway = TestGateway::start(&config("")).await;
    let body = small_request();
    let mut stream = connect(&gateway).await;
    stream.set_nodelay(true).unwrap();
    stream
        .write_all(chat_head("good-key", body.len(), "").as_bytes())
        .await
        .unwrap();
    for byte in body.as_bytes() {
        stream.write_all(&[*byte]).await.unwrap();
        stream.flush().await.unwrap();
    }
    let (head, answer) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(answer.contains("You said: hi"), "{answer}");
}

/// HTTP/1.0 has no chunks: a stream runs to the close; keep-alive only when asked,
/// and then said in the answer.
#[tokio::test]
async fn http10_clients_get_streams_to_the_close_and_keep_alive_when_asked() {
    let gateway = TestGateway::start(&config("")).await;
    let stream_body =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    let mut stream = connect(&gateway).await;
    let head = chat_head("good-key", stream_body.len(), "").replace("HTTP/1.1", "HTTP/1.0");
    stream
        .write_all(format!("{head}{stream_body}").as_bytes())
        .await
        .unwrap();
    let all = read_until_closed(&mut stream).await;
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(
        body.starts_with("data: {") && body.ends_with("data: [DONE]\n\n"),
        "{body}"
    );

    let body = small_request();
    let head = chat_head("good-key", body.len(), "connection: keep-alive\r\n")
        .replace("HTTP/1.1", "HTTP/1.0");
    let mut stream = connect(&gateway).await;
    for _ in 0..2 {
        stream
            .write_all(format!("{head}{body}").as_bytes())
            .await
            .unwrap();
        let (answer_head, answer) = read_response(&mut stream).await;
        assert!(
            answer_head
                .to_ascii_lowercase()
                .contains("connection: keep-alive"),
            "{answer_head}"
        );
        assert!(answer.contains("You said: hi"), "{answer}");
    }
}

/// `Expect: 100-continue` within the limit: the interim answer comes when the
/// gateway wants the body, then the answer.
#[tokio::test]
async fn expect_continue_within_the_limit_gets_100_then_the_answer() {
    let gateway = TestGateway::start(&config("")).await;
    let body = small_request();
    let mut stream = connect(&gateway).await;
    stream
        .write_all(chat_head("good-key", body.len(), "expect: 100-continue\r\n").as_bytes())
        .await
        .unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(BOUND, stream.read_exact(&mut interim))
        .await
        .expect("100 Continue should come")
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(body.as_bytes()).await.unwrap();
    let (head, answer) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(answer.contains("You said: hi"), "{answer}");
}

/// An answer to HEAD has a head only: the next request on the connection is read
/// as the next request.
#[tokio::test]
async fn head_requests_get_no_body() {
    let gateway = TestGateway::start(&config("")).await;
    let mut stream = connect(&gateway).await;
    stream
        .write_all(b"HEAD /health HTTP/1.1\r\nhost: test\r\n\r\nGET /health HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(BOUND, async {
        while seen.windows(4).filter(|w| *w == b"\r\n\r\n").count() < 2 {
            assert_eq!(stream.read(&mut byte).await.unwrap(), 1);
            seen.push(byte[0]);
        }
    })
    .await
    .expect("two heads");
    let seen = String::from_utf8_lossy(&seen);
    let (first, second) = seen.split_once("\r\n\r\n").unwrap();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
}
