//! Running out of descriptors and connections (issue 18, point 3): the binary under
//! a small `RLIMIT_NOFILE` keeps serving what it has, answers 503 naming the cause
//! when it cannot open an upstream connection, holds new clients back, logs the cause
//! once per second rather than per failure, counts it in `/metrics`, and serves
//! normally once connections close; `limits.max_connections` holds connections over
//! the cap in the listen backlog and answers them all, none refused.
//!
//! The upstream is a gate: it holds every request until the test opens it, so the
//! number of upstream connections in use is the test's to choose. Every wait is on
//! a condition, bounded by `BOUND`.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::IntoResponse;
use common::TestGateway;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far past anything that should take time here: a wait this long means a hang.
const BOUND: Duration = Duration::from_secs(10);

/// An upstream that holds each chat request until the gate opens.
struct Gate {
    open: tokio::sync::watch::Sender<bool>,
    arrived: AtomicUsize,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

impl Gate {
    async fn start() -> (Arc<Gate>, SocketAddr) {
        let gate = Arc::new(Gate {
            open: tokio::sync::watch::channel(false).0,
            arrived: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(held_answer))
            .with_state(gate.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (gate, addr)
    }

    fn release(&self) {
        self.open.send_replace(true);
    }

    /// Wait until `n` requests have reached the upstream in all.
    async fn wait_arrived(&self, n: usize) {
        wait_for(&format!("{n} requests at the upstream"), || {
            self.arrived.load(Ordering::SeqCst) >= n
        })
        .await;
    }
}

async fn held_answer(State(gate): State<Arc<Gate>>) -> axum::response::Response {
    let mut open = gate.open.subscribe();
    let now = gate.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    gate.most_in_flight.fetch_max(now, Ordering::SeqCst);
    gate.arrived.fetch_add(1, Ordering::SeqCst);
    let _ = open.wait_for(|open| *open).await;
    gate.in_flight.fetch_sub(1, Ordering::SeqCst);
    axum::Json(common::completion("m", "released")).into_response()
}

/// Poll a condition every 10 ms until it holds; panic after `BOUND`.
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn config(upstream: SocketAddr, limits: &str) -> String {
    format!(
        r#"
[connections.up]
api_type = "open_ai"
api_base = "http://{upstream}/v1"
api_key = "upstream-secret-key"
[routing]
"*" = "up.*"
[groups.default]
api_keys = ["good-key"]
[limits]
header_timeout_seconds = 30
idle_timeout_seconds = 30
{limits}
"#
    )
}

fn chat_request(extra_headers: &str) -> Vec<u8> {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\nauthorization: Bearer good-key\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n{extra_headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn messages_request() -> Vec<u8> {
    let body =
        json!({"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    format!(
        "POST /v1/messages HTTP/1.1\r\nhost: test\r\nx-api-key: good-key\r\n\
         anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Read one HTTP/1.1 response (Content-Length or chunked body): status and body.
/// `None` when the connection closes before a whole response.
async fn read_response(stream: &mut TcpStream) -> Option<(u16, String)> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&seen[..head_end]).to_ascii_lowercase();
    let status: u16 = head.get(9..12)?.parse().ok()?;
    let mut body = seen[head_end..].to_vec();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    if let Some(length) = header("content-length:") {
        let length: usize = length.parse().ok()?;
        while body.len() < length {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => body.extend_from_slice(&buf[..n]),
            }
        }
    } else if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        while !body.ends_with(b"0\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => body.extend_from_slice(&buf[..n]),
            }
        }
    }
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Send a request and read its answer, within `BOUND`.
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> Option<(u16, String)> {
    tokio::time::timeout(BOUND, async {
        stream.write_all(request).await.ok()?;
        read_response(stream).await
    })
    .await
    .expect("no answer within the bound")
}

/// The value of one sample line of `/metrics` (0 when absent).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The built binary, one serving thread, with the open-files limit `soft`/`hard`;
/// stderr collected; killed on drop.
struct Limited {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Limited {
    fn start(config: &str, soft: u64, hard: u64) -> Limited {
        use std::os::unix::process::CommandExt as _;
        let dir = tempfile::tempdir().unwrap();
        common::process::write(dir.path(), "config.toml", config);
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
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: soft as libc::rlim_t,
                    rlim_max: hard as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening on ") {
                    let url = line[at + 13..].split_whitespace().next().unwrap_or("");
                    let _ = ready_tx.send(url.to_owned());
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let mut limited = Limited {
            child,
            addr: "127.0.0.1:1".parse().unwrap(),
            log,
            _dir: dir,
        };
        let url = ready_rx
            .recv_timeout(BOUND)
            .unwrap_or_else(|_| panic!("the server did not start: {}", limited.log()));
        limited.addr = url.trim_start_matches("http://").parse().unwrap();
        limited
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Descriptors the process has open now.
    fn open_descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }

    async fn metrics(&self) -> String {
        let mut stream = self.connect().await;
        let (status, body) = exchange(
            &mut stream,
            b"GET /metrics HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n",
        )
        .await
        .expect("a /metrics answer");
        assert_eq!(status, 200, "{body}");
        body
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_survives_running_out_of_descriptors() {
    const HARD: u64 = 64;
    let (gate, upstream) = Gate::start().await;
    // A cap far above the descriptors: nothing but the descriptor limit holds back.
    let gateway = Limited::start(&config(upstream, "max_connections = 1000"), 40, HARD);
    let log = gateway.log();
    assert!(
        log.contains("open files limit 64 (soft limit raised from 40 to the hard limit)"),
        "{log}"
    );

    // Open client connections, each answered once (so they are accepted), to about
    // two thirds of the descriptors left: their requests then take the rest as
    // upstream connections, and the requests after that find none.
    let free = HARD as usize - gateway.open_descriptors();
    let mut clients = Vec::new();
    for _ in 0..free * 2 / 3 {
        let mut stream = gateway.connect().await;
        let answered = exchange(&mut stream, b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n").await;
        assert_eq!(answered.map(|a| a.0), Some(200));
        clients.push(stream);
    }
    let started = Instant::now();

    // One request per connection, one after the other: each is either held by the
    // upstream (it got a descriptor) or answered 503 at once.
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for mut stream in clients {
        // Counted before sending: the request may reach the upstream at once.
        let before = gate.arrived.load(Ordering::SeqCst);
        stream.write_all(&chat_request("")).await.unwrap();
        let answer = tokio::select! {
            answer = read_response(&mut stream) => answer,
            _ = gate.wait_arrived(before + 1) => None,
        };
        match answer {
            None => held.push(stream),
            Some((503, body)) => {
                let error: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(
                    error["error"]["code"], "gateway_out_of_file_descriptors",
                    "{body}"
                );
                assert!(
                    error["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("run out of file descriptors"),
                    "{body}"
                );
                assert!(
                    !body.contains("upstream-secret-key") && !body.contains(&upstream.to_string())
                );
                refused.push(stream);
            }
            Some((status, body)) => panic!("unexpected answer {status}: {body}"),
        }
    }
    assert!(held.len() >= 5, "only {} requests held", held.len());
    assert!(
        refused.len() >= 5,
        "only {} requests refused",
        refused.len()
    );

    // Each refused connection is still served: ask again, many times; the Anthropic
    // door answers in its own envelope.
    let mut refusals = refused.len();
    for _ in 0..4 {
        for stream in &mut refused {
            let (status, _) = exchange(stream, &chat_request("")).await.unwrap();
            assert_eq!(status, 503);
            refusals += 1;
        }
    }
    let (status, body) = exchange(&mut refused[0], &messages_request())
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["type"], "error", "{body}");
    assert_eq!(error["error"]["type"], "overloaded_error", "{body}");
    refusals += 1;

    // New clients: accepting fails for lack of descriptors; idle connections are
    // closed to make room, so each new one is answered (503, no descriptor left for
    // the upstream) or waits; none hangs, none is reset unanswered.
    let mut newcomers = Vec::new();
    for _ in 0..6 {
        let mut stream = gateway.connect().await;
        stream
            .write_all(&chat_request("connection: close\r\n"))
            .await
            .unwrap();
        newcomers.push(tokio::spawn(
            async move { read_response(&mut stream).await },
        ));
    }
    wait_for("a failed accept in the log", || {
        gateway.log().contains("cannot accept connections")
    })
    .await;

    // The upstream answers: every held request gets its answer.
    gate.release();
    for stream in &mut held {
        let (status, body) = tokio::time::timeout(BOUND, read_response(stream))
            .await
            .expect("a held request was never answered")
            .expect("a held request lost its connection");
        assert_eq!(status, 200, "{body}");
    }
    let mut newcomer_statuses = Vec::new();
    for newcomer in newcomers {
        let answer = tokio::time::timeout(BOUND, newcomer)
            .await
            .expect("a new client hung")
            .unwrap();
        let (status, body) = answer.expect("a new client was dropped unanswered");
        assert!(status == 200 || status == 503, "{status}: {body}");
        newcomer_statuses.push(status);
        refusals += usize::from(status == 503);
    }
    let elapsed = started.elapsed();

    // Every connection closes: the gateway serves normally again.
    drop(held);
    drop(refused);
    let mut stream = gateway.connect().await;
    let (status, body) = exchange(&mut stream, &chat_request("connection: close\r\n"))
        .await
        .expect("an answer after recovery");
    assert_eq!(status, 200, "{body}");

    // Counted in /metrics.
    let metrics = gateway.metrics().await;
    let upstream_refusals = sample(
        &metrics,
        "lm_proxy_upstream_connect_errors_total{cause=\"descriptors\"}",
    );
    assert!(
        upstream_refusals >= refusals as f64,
        "{refusals} 503s:\n{metrics}"
    );
    let accept_failures = sample(
        &metrics,
        "lm_proxy_accept_errors_total{cause=\"descriptors\"}",
    );
    assert!(accept_failures >= 1.0, "{metrics}");

    // The cause is logged at most once per second, not once per failure.
    let log = gateway.log();
    let most = elapsed.as_secs() as usize + 2;
    let upstream_lines = log
        .matches("cannot open upstream connections: out of file descriptors")
        .count();
    assert!(
        (1..=most).contains(&upstream_lines),
        "{upstream_lines} lines for {refusals} refusals in {elapsed:?}:\n{log}"
    );
    assert!(upstream_lines < refusals);
    let accept_lines = log.matches("cannot accept connections").count();
    assert!(
        (1..=most).contains(&accept_lines) && accept_lines as f64 <= accept_failures,
        "{accept_lines} lines for {accept_failures} failures in {elapsed:?}:\n{log}"
    );
    eprintln!(
        "held {}, 503s {refusals}, new clients {newcomer_statuses:?}, accept failures \
         {accept_failures}, log lines {upstream_lines} + {accept_lines}, {elapsed:?}",
        gate.most_in_flight.load(Ordering::SeqCst)
    );
}

/// `max_connections = 3` and 8 clients at once: 3 are served, 5 wait in the listen
/// backlog (not refused, not reset), and all 8 get their answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_held_and_all_answered() {
    const CAP: usize = 3;
    const CLIENTS: usize = 8;
    let (gate, upstream) = Gate::start().await;
    let gateway = TestGateway::start(&config(upstream, &format!("max_connections = {CAP}"))).await;
    let addr = gateway.server.addr;
    let written = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let written = written.clone();
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream
                .write_all(&chat_request("connection: close\r\n"))
                .await
                .expect("request written");
            written.fetch_add(1, Ordering::SeqCst);
            read_response(&mut stream).await
        }));
    }
    gate.wait_arrived(CAP).await;
    wait_for("every client's request written", || {
        written.load(Ordering::SeqCst) == CLIENTS
    })
    .await;
    // Without the cap the other five would reach the upstream at once; give them a
    // generous moment to show up, which they must not.
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        assert!(
            gate.arrived.load(Ordering::SeqCst) <= CAP,
            "the cap was passed"
        );
        assert!(
            clients.iter().all(|c| !c.is_finished()),
            "a client over the cap was answered early"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gateway.server.open_connections(), CAP);

    gate.release();
    for client in clients {
        let answer = tokio::time::timeout(BOUND, client)
            .await
            .expect("a client was never answered")
            .unwrap();
        let (status, body) = answer.expect("a client's connection was dropped unanswered");
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(gate.arrived.load(Ordering::SeqCst), CLIENTS);
    assert!(gate.most_in_flight.load(Ordering::SeqCst) <= CAP);
}
