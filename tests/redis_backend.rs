//! Shared state across replicas on a real `redis-server` (started here on a free
//! port, stopped at the end): one rate limit enforced across two lm-proxy instances,
//! atomically under concurrency; the fail-open / fail-closed policy when Redis is
//! unreachable; and a key-check cache shared by both instances.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{user, TestGateway};

/// A throwaway redis-server; killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install it (apt-get install redis-server) — scripts/test does")
            });
        let redis = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !redis.ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn limited(backend: &str, max: usize, policy: &str) -> String {
    format!(
        r#"
[connections.mock]
api_type = "mock"
[routing]
"*" = "mock.*"
[groups.default]
api_keys = ["k"]
[[before]]
class = "lm_proxy.handlers.RateLimiter"
max_requests = {max}
window_seconds = 60
per = "global"
backend = "{backend}"
on_backend_error = "{policy}"
"#
    )
}

async fn statuses(
    gateways: &[Arc<TestGateway>],
    requests: usize,
    concurrent: bool,
) -> (usize, usize) {
    let mut codes = Vec::new();
    if concurrent {
        let tasks: Vec<_> = (0..requests)
            .map(|i| {
                let gw = gateways[i % gateways.len()].clone();
                tokio::spawn(async move { gw.chat("k", user("m", "x")).await.status().as_u16() })
            })
            .collect();
        for task in tasks {
            codes.push(task.await.unwrap());
        }
    } else {
        for i in 0..requests {
            codes.push(
                gateways[i % gateways.len()]
                    .chat("k", user("m", "x"))
                    .await
                    .status()
                    .as_u16(),
            );
        }
    }
    let ok = codes.iter().filter(|c| **c == 200).count();
    let limited = codes.iter().filter(|c| **c == 429).count();
    assert_eq!(
        ok + limited,
        requests,
        "only 200 and 429 expected: {codes:?}"
    );
    (ok, limited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_limit_is_enforced_across_two_instances() {
    let redis = Redis::start();
    let a = Arc::new(TestGateway::start(&limited(&redis.url(), 5, "deny")).await);
    let b = Arc::new(TestGateway::start(&limited(&redis.url(), 5, "deny")).await);
    assert_eq!(statuses(&[a.clone(), b.clone()], 20, false).await, (5, 15));

    // Atomic under concurrency: 60 requests at once over both instances (a limiter
    // with other settings uses its own window).
    let c = Arc::new(TestGateway::start(&limited(&redis.url(), 7, "deny")).await);
    let d = Arc::new(TestGateway::start(&limited(&redis.url(), 7, "deny")).await);
    assert_eq!(statuses(&[c, d], 60, true).await, (7, 53));

    // The 429 carries Retry-After from the shared window.
    let response = a.chat("k", user("m", "x")).await;
    assert_eq!(response.status(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
}

/// `max_tokens` with the Redis backend: what one instance's answers spend closes
/// the window for the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_token_limit_holds_across_two_instances() {
    let redis = Redis::start();
    let config = format!(
        r#"
[connections.mock]
api_type = "mock"
[routing]
"*" = "mock.*"
[groups.default]
api_keys = ["k"]
[[before]]
class = "lm_proxy.handlers.RateLimiter"
max_tokens = 40
window_seconds = 60
per = "global"
backend = "{}"
"#,
        redis.url()
    );
    let a = TestGateway::start(&config).await;
    let b = TestGateway::start(&config).await;
    // Tokens are added when each answer ends (asynchronously), so a may answer a
    // request or two more than the limit before it sees them: it must refuse soon.
    let mut answered = 0;
    loop {
        let status = a.chat("k", user("m", "count these words")).await.status();
        if status == 429 {
            break;
        }
        assert_eq!(status, 200);
        answered += 1;
        assert!(answered < 50, "the spent tokens never closed the window");
    }
    assert!(
        answered >= 2,
        "40 tokens are more than one answer's: {answered}"
    );
    // a saw the window spent in Redis: so does b, at once.
    let refused = b.chat("k", user("m", "x")).await;
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "Token rate limit exceeded: 40 tokens/60s"
    );
    assert!((1..=60).contains(&retry));
}

#[tokio::test]
async fn unreachable_redis_follows_the_configured_policy() {
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!(
            "redis://127.0.0.1:{}/",
            listener.local_addr().unwrap().port()
        )
    };
    let open = TestGateway::start(&limited(&dead, 1, "allow")).await;
    for _ in 0..3 {
        assert_eq!(
            open.chat("k", user("m", "x")).await.status(),
            200,
            "fail open admits"
        );
    }
    let closed = TestGateway::start(&limited(&dead, 1, "deny")).await;
    let (status, body) = closed.chat_json("k", user("m", "x")).await;
    assert_eq!(status, 503, "fail closed rejects");
    assert_eq!(body["error"]["code"], "rate_limiter_unavailable");
}

#[tokio::test(flavor = "multi_thread")]
async fn key_check_cache_is_shared_by_instances() {
    let redis = Redis::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().route(
        "/check",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let ok = headers.get("x-key").is_some_and(|v| v == "valid-key");
                if ok {
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::UNAUTHORIZED
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let auth_url = format!("http://{}/check", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = format!(
        r#"
[connections.mock]
api_type = "mock"
[routing]
"*" = "mock.*"
[api_key_check]
class = "lm_proxy.api_key_check.CheckAPIKeyWithRequest"
url = "{auth_url}"
use_cache = true
cache_ttl = 60
cache_backend = "{redis}"
[api_key_check.headers]
X-Key = "{{api_key}}"
"#,
        redis = redis.url()
    );
    let a = TestGateway::start(&config).await;
    let b = TestGateway::start(&config).await;
    assert_eq!(a.chat("valid-key", user("m", "x")).await.status(), 200);
    assert_eq!(b.chat("valid-key", user("m", "x")).await.status(), 200);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the second instance used the shared answer"
    );
    assert_eq!(a.chat("bad-key", user("m", "x")).await.status(), 401);
    assert_eq!(b.chat("bad-key", user("m", "x")).await.status(), 401);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "rejections are shared too");
}

#[path = "google/mock.rs"]
#[allow(dead_code)]
mod google_mock;

impl Redis {
    /// Send one command (RESP array of bulk strings); the reply's first line.
    fn command(&self, args: &[&str]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).unwrap();
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        // `$-1` (none) or `$<n>` then the value: read two lines at most.
        let mut lines = 0;
        while lines < 2 {
            stream.read_exact(&mut byte).unwrap();
            reply.push(byte[0]);
            if reply.ends_with(b"\r\n") {
                lines += 1;
                if reply.starts_with(b"$-1") || !reply.starts_with(b"$") {
                    break;
                }
            }
        }
        let text = String::from_utf8(reply).unwrap();
        text.lines().last().unwrap_or_default().to_owned()
    }
}

/// Thought signatures handed out by one replica are found by every replica that
/// shares the backend (issue 19, point 11): written under the call's id, read when
/// a client sends the id back without its signature.
#[tokio::test(flavor = "multi_thread")]
async fn thought_signatures_are_shared_through_the_backend() {
    let redis = Redis::start();
    let mock = google_mock::GoogleMock::start().await;
    let gw = TestGateway::start(&format!(
        r#"
[connections.gemini]
api_type = "google"
api_base = "{base}"
api_key = "{key}"
thought_signature_backend = "{url}"
[routing]
"*" = "gemini.*"
[groups.default]
api_keys = ["k"]
"#,
        base = mock.base(),
        key = google_mock::GOOD_KEY,
        url = redis.url()
    ))
    .await;

    // Another replica handed out this call: only the backend knows its signature.
    redis.command(&[
        "SET",
        "lm-proxy:thought-signature:call_otherreplica_0_0",
        "c2lnbmF0dXJlLTk=",
    ]);
    let body = serde_json::json!({"model": "gemini-3-pro-preview", "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_otherreplica_0_0", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
        ]},
        {"role": "tool", "tool_call_id": "call_otherreplica_0_0", "content": "12:00"}
    ]});
    let response = gw.chat("k", body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        mock.last().body["contents"][1]["parts"][0]["thoughtSignature"],
        "c2lnbmF0dXJlLTk="
    );

    // What this replica hands out reaches the backend.
    let first = serde_json::json!({"model": "tools", "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather"}}, {"type": "function", "function": {"name": "get_time"}}]});
    assert_eq!(gw.chat("k", first).await.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stored = redis.command(&["GET", "lm-proxy:thought-signature:call_resp-42_0_0"]);
        if stored == "c2lnbmF0dXJlLTE=" {
            break;
        }
        assert!(Instant::now() < deadline, "not stored: {stored}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
