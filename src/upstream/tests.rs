//! The in-task pool against a raw HTTP/1.1 upstream on 127.0.0.1:0 that counts the
//! connections it accepts and can close them in the ways real servers do.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::*;
use hyper_util::client::proxy::matcher::Matcher;

#[derive(Clone, Copy, PartialEq)]
enum After {
    /// Keep the connection open for the next request.
    KeepAlive,
    /// Answer with `Connection: close`, then close.
    AnnounceClose,
    /// Close without a word when told to, after the answer (an idle timeout on the
    /// upstream, while the connection sits in the pool).
    SilentClose,
}

struct RawUpstream {
    url: String,
    accepted: Arc<AtomicUsize>,
    /// Request heads as received.
    heads: Arc<Mutex<Vec<String>>>,
    /// One message per connection the upstream closed.
    closed: mpsc::UnboundedReceiver<()>,
    /// Tells a `SilentClose` upstream to close the connection it answered on.
    close_now: Arc<tokio::sync::Notify>,
}

/// Answers every request with `{"n": <request number on this connection>}`; a
/// request whose body is `stream` gets `one two three` in three chunked frames.
async fn raw_upstream(after: After) -> RawUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/v1/chat/completions",
        listener.local_addr().unwrap()
    );
    let accepted = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (closed_tx, closed) = mpsc::unbounded_channel();
    let close_now = Arc::new(tokio::sync::Notify::new());
    let (count, seen, close_signal) = (accepted.clone(), heads.clone(), close_now.clone());
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let (seen, closed_tx) = (seen.clone(), closed_tx.clone());
            let close_signal = close_signal.clone();
            tokio::spawn(async move {
                let mut socket = socket;
                serve_connection(&mut socket, after, &seen).await;
                if after == After::SilentClose {
                    close_signal.notified().await;
                }
                drop(socket);
                let _ = closed_tx.send(());
            });
        }
    });
    RawUpstream {
        url,
        accepted,
        heads,
        closed,
        close_now,
    }
}

async fn serve_connection(socket: &mut TcpStream, after: After, seen: &Mutex<Vec<String>>) {
    let mut buffer = Vec::new();
    let mut served = 0;
    loop {
        let Some((head, body)) = read_request(socket, &mut buffer).await else {
            return;
        };
        seen.lock().unwrap().push(head);
        served += 1;
        let close = if after == After::AnnounceClose {
            "connection: close\r\n"
        } else {
            ""
        };
        if body == b"stream" {
            let head = format!("HTTP/1.1 200 OK\r\n{close}transfer-encoding: chunked\r\n\r\n");
            socket.write_all(head.as_bytes()).await.unwrap();
            for piece in ["one ", "two ", "three"] {
                let frame = format!("{:x}\r\n{piece}\r\n", piece.len());
                if socket.write_all(frame.as_bytes()).await.is_err() {
                    return;
                }
            }
            if socket.write_all(b"0\r\n\r\n").await.is_err() {
                return;
            }
        } else {
            let answer = format!("{{\"n\":{served}}}");
            let text = format!(
                "HTTP/1.1 200 OK\r\n{close}content-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            );
            socket.write_all(text.as_bytes()).await.unwrap();
        }
        if after != After::KeepAlive {
            return;
        }
    }
}

fn client() -> UpstreamClient {
    UpstreamClient::with_transport(Duration::from_secs(5), false, no_proxies()).unwrap()
}

fn no_proxies() -> Matcher {
    Matcher::builder().build()
}

async fn post_text(target: &Target, body: &'static str) -> Result<String, UpstreamError> {
    let response = target
        .post(HeaderMap::new(), Bytes::from_static(body.as_bytes()))
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.bytes(usize::MAX).await?;
    Ok(String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn one_connection_carries_request_after_request() {
    let upstream = raw_upstream(After::KeepAlive).await;
    let target = client().target(&upstream.url).unwrap();
    assert!(matches!(target.route, Route::Pooled { .. }));
    for n in 1..=5 {
        assert_eq!(
            post_text(&target, "{}").await.unwrap(),
            format!("{{\"n\":{n}}}")
        );
    }
    // A streamed body read to its end also gives its connection back.
    let response = target
        .post(HeaderMap::new(), Bytes::from_static(b"stream"))
        .await
        .unwrap();
    let pieces: Vec<Bytes> = response.bytes_stream().map(|p| p.unwrap()).collect().await;
    assert_eq!(pieces.concat(), b"one two three");
    assert_eq!(post_text(&target, "{}").await.unwrap(), "{\"n\":7}");
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn requests_carry_host_user_agent_and_the_given_headers() {
    let upstream = raw_upstream(After::KeepAlive).await;
    let target = client().target(&upstream.url).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-custom", HeaderValue::from_static("yes"));
    let response = target
        .post(headers, Bytes::from_static(b"{}"))
        .await
        .unwrap();
    response.bytes(usize::MAX).await.unwrap();
    let head = upstream.heads.lock().unwrap()[0].to_ascii_lowercase();
    let port = upstream
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    assert!(
        head.starts_with("post /v1/chat/completions http/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("host: 127.0.0.1:{port}\r\n")),
        "{head}"
    );
    assert!(head.contains("user-agent: lm-proxy/"), "{head}");
    assert!(head.contains("x-custom: yes\r\n"), "{head}");
    assert!(
        head.contains("content-type: application/json\r\n"),
        "{head}"
    );
    assert!(head.contains("content-length: 2\r\n"), "{head}");
}

/// A head written once and completed per request is the head a request with the
/// same headers and spellings gets written whole.
#[tokio::test]
async fn a_prepared_head_is_the_head_written_whole() {
    let upstream = raw_upstream(After::KeepAlive).await;
    let target = client().target(&upstream.url).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", HeaderValue::from_static("acme"));
    headers.append("x-tenant", HeaderValue::from_static("second"));
    headers.insert(http::header::USER_AGENT, HeaderValue::from_static("own/1"));
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let case = HeaderCase::of(["X-TENANT"]);
    let prepared = target.prepare_post(headers.clone(), &case).unwrap();
    for body in ["{}", "{\"a\":1}"] {
        let body = Bytes::from_static(body.as_bytes());
        let whole = target.post_spelled(headers.clone(), &case, body.clone());
        whole.await.unwrap().bytes(usize::MAX).await.unwrap();
        let once = target.post_prepared(&prepared, body);
        once.await.unwrap().bytes(usize::MAX).await.unwrap();
    }
    let heads = upstream.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 4);
    assert_eq!(heads[0], heads[1]);
    assert_eq!(heads[2], heads[3]);
    assert_ne!(heads[0], heads[2], "each with its own length");
    assert!(heads[0].contains("X-TENANT: acme\r\n"), "{}", heads[0]);
    assert!(heads[0].contains("User-Agent: own/1\r\n"), "{}", heads[0]);
}

#[tokio::test]
async fn a_connection_the_upstream_announced_closing_is_not_reused() {
    let upstream = raw_upstream(After::AnnounceClose).await;
    let target = client().target(&upstream.url).unwrap();
    for _ in 0..3 {
        assert_eq!(post_text(&target, "{}").await.unwrap(), "{\"n\":1}");
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_replaced() {
    let mut upstream = raw_upstream(After::SilentClose).await;
    let target = client().target(&upstream.url).unwrap();
    for round in 1..=3 {
        assert_eq!(post_text(&target, "{}").await.unwrap(), "{\"n\":1}");
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), round);
        // The answer is read and its connection back in the pool: now the upstream
        // closes it. Let the runtime's I/O driver see that (a yield polls the driver
        // before the task runs again); the next request must not fail on it.
        upstream.close_now.notify_one();
        upstream.closed.recv().await.unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(post_text(&target, "{}").await.unwrap(), "{\"n\":1}");
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_body_dropped_before_its_end_closes_its_connection() {
    let mut upstream = raw_upstream(After::KeepAlive).await;
    let target = client().target(&upstream.url).unwrap();
    let response = target
        .post(HeaderMap::new(), Bytes::from_static(b"stream"))
        .await
        .unwrap();
    drop(response);
    // The upstream sees its connection end, and the next request gets a new one.
    upstream.closed.recv().await.unwrap();
    assert_eq!(post_text(&target, "{}").await.unwrap(), "{\"n\":1}");
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connect_failures_are_502_and_connect_timeouts_504() {
    // A port nobody listens on: refused at once.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/chat/completions", free.local_addr().unwrap());
    drop(free);
    let target = client().target(&url).unwrap();
    let error = target
        .post(HeaderMap::new(), Bytes::new())
        .await
        .err()
        .unwrap();
    let error = error.into_api_error();
    assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
    assert!(
        error.to_string().contains("cannot connect to upstream"),
        "{error}"
    );

    let error = UpstreamError::ConnectTimeout(Duration::from_millis(300)).into_api_error();
    assert_eq!(error.status(), StatusCode::GATEWAY_TIMEOUT);
}

/// http and https upstreams go through the in-task pool (one pool per origin,
/// scheme and proxy), through an `http://` proxy too; URLs with credentials and
/// origins behind an https or SOCKS proxy through reqwest.
#[test]
fn upstreams_are_pooled_through_http_proxies_and_others_go_through_reqwest() {
    let direct = client();
    assert!(matches!(
        direct.target("https://api.example.com/v1").unwrap().route,
        Route::Pooled { .. }
    ));
    assert!(matches!(
        direct.target("http://[::1]:8000/v1").unwrap().route,
        Route::Pooled { .. }
    ));
    assert!(matches!(
        direct
            .target("https://user:secret@api.example.com/v1")
            .unwrap()
            .route,
        Route::Reqwest(_)
    ));
    let pools =
        |client: &UpstreamClient| client.inner.pools.as_ref().unwrap().lock().unwrap().len();
    let before = pools(&direct);
    direct.target("http://api.example.com:443/v1").unwrap();
    direct.target("https://api.example.com:443/v2").unwrap();
    assert_eq!(
        pools(&direct),
        before + 1,
        "http on 443 is another origin than https"
    );

    let proxies = Matcher::builder()
        .http("http://user:pass@proxy.internal:3128")
        .https("http://proxy.internal:3128")
        .no("localhost,.corp.example")
        .build();
    let proxied = UpstreamClient::with_transport(Duration::from_secs(5), false, proxies).unwrap();
    // Plain http through the proxy: absolute form and the proxy's credentials.
    match proxied
        .target("http://vllm.lan:8000/v1/chat/completions?x=1")
        .unwrap()
        .route
    {
        Route::Pooled {
            uri,
            host,
            proxy_authorization,
            ..
        } => {
            assert_eq!(&*uri, "http://vllm.lan:8000/v1/chat/completions?x=1");
            assert_eq!(host, "vllm.lan:8000");
            assert_eq!(proxy_authorization.unwrap(), "Basic dXNlcjpwYXNz");
        }
        Route::Reqwest(_) => panic!("an http proxy is the pool's"),
    }
    // https through the proxy: a tunnel, so the request is in origin form.
    match proxied
        .target("https://api.example.com/v1/models")
        .unwrap()
        .route
    {
        Route::Pooled {
            uri,
            proxy_authorization,
            ..
        } => {
            assert_eq!(&*uri, "/v1/models");
            assert!(proxy_authorization.is_none());
        }
        Route::Reqwest(_) => panic!("an http proxy is the pool's"),
    }
    // NO_PROXY: direct, in its own pool.
    match proxied.target("http://gpu.corp.example/v1").unwrap().route {
        Route::Pooled { uri, .. } => assert_eq!(&*uri, "/v1"),
        Route::Reqwest(_) => panic!("a direct origin is the pool's"),
    }
    let socks = Matcher::builder()
        .all("socks5://proxy.internal:1080")
        .build();
    let socks = UpstreamClient::with_transport(Duration::from_secs(5), false, socks).unwrap();
    assert!(matches!(
        socks.target("https://api.example.com/v1").unwrap().route,
        Route::Reqwest(_)
    ));
}

#[test]
fn merged_headers_replace_by_name_and_keep_every_value() {
    let mut into = HeaderMap::new();
    into.insert("a", HeaderValue::from_static("old"));
    into.insert("b", HeaderValue::from_static("kept"));
    let mut from = HeaderMap::new();
    from.append("a", HeaderValue::from_static("new1"));
    from.append("a", HeaderValue::from_static("new2"));
    merge_headers(&mut into, &from);
    let a: Vec<_> = into.get_all("a").iter().collect();
    assert_eq!(a, ["new1", "new2"]);
    assert_eq!(into["b"], "kept");
}

/// Over the cap: refused from `Content-Length` before any of the body is read, and
/// for a chunked body as soon as it passes; the connection is not reused. At the
/// cap exactly: read whole. Both transports.
#[tokio::test]
async fn answers_past_the_cap_are_refused_and_their_connection_closed() {
    for reqwest_only in [false, true] {
        let mut upstream = raw_upstream(After::KeepAlive).await;
        let client =
            UpstreamClient::with_transport(Duration::from_secs(5), reqwest_only, no_proxies())
                .unwrap();
        let target = client.target(&upstream.url).unwrap();
        let read = |body: &'static str, limit: usize| {
            let target = &target;
            async move {
                let response = target
                    .post(HeaderMap::new(), Bytes::from_static(body.as_bytes()))
                    .await
                    .unwrap();
                response.bytes(limit).await
            }
        };
        // `{"n":1}` is 7 bytes, declared; `one two three` is 13, chunked.
        let declared = read("x", 6).await.unwrap_err();
        assert!(
            matches!(declared, UpstreamError::TooLarge { limit: 6 }),
            "{declared}"
        );
        if !reqwest_only {
            // (reqwest may keep a connection whose small body it had already read.)
            tokio::time::timeout(Duration::from_secs(10), upstream.closed.recv())
                .await
                .expect("the connection of a refused answer is closed");
        }
        let chunked = read("stream", 8).await.unwrap_err();
        assert!(
            matches!(chunked, UpstreamError::TooLarge { limit: 8 }),
            "{chunked}"
        );
        // (`n` counts the requests on its connection.)
        assert!(read("x", 7).await.unwrap().starts_with(b"{\"n\":"));
        assert_eq!(&read("stream", 13).await.unwrap()[..], b"one two three");

        let error = chunked.into_api_error();
        assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
        let object = error.error_object();
        assert_eq!(object["type"], "upstream_error");
        assert_eq!(object["code"], RESPONSE_TOO_LARGE);
        assert!(
            object["message"]
                .as_str()
                .unwrap()
                .contains("max_response_body_mb (8 bytes)"),
            "{object}"
        );
    }
}

#[test]
fn limits_are_described_as_the_setting_is_written() {
    assert_eq!(describe_limit(64 * 1024 * 1024), "64 MiB");
    assert_eq!(describe_limit(512 * 1024), "0.50 MiB");
    assert_eq!(describe_limit(100), "100 bytes");
}

#[test]
fn the_buffer_never_grows_past_the_cap() {
    let mut all = Vec::new();
    for _ in 0..9 {
        append_within(&mut all, &[0; 100], 1000).unwrap();
    }
    assert!(append_within(&mut all, &[0; 101], 1000).is_none());
    append_within(&mut all, &[0; 100], 1000).unwrap();
    assert_eq!(all.len(), 1000);
    assert!(all.capacity() <= 1000, "{}", all.capacity());
}

/// Read one request (head and Content-Length body) from `socket`; `None` at EOF.
async fn read_request(socket: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buffer[head_end..head_end + length].to_vec();
    buffer.drain(..head_end + length);
    Some((head, body))
}

/// A request that reached the upstream may have been acted on (a completion billed,
/// a tool run), so when the connection then fails it must not be sent again on
/// another, even though it went out on a reused keep-alive connection (the case in
/// which an unsent request *is* retried). The upstream here answers the first
/// request of a connection, then reads the second whole and closes without a word.
#[tokio::test]
async fn a_request_written_upstream_is_never_sent_twice() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/v1/chat/completions",
        listener.local_addr().unwrap()
    );
    let bodies = Arc::new(Mutex::new(Vec::<String>::new()));
    let accepted = Arc::new(AtomicUsize::new(0));
    let (seen, count) = (bodies.clone(), accepted.clone());
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut served = 0;
                while let Some((_, body)) = read_request(&mut socket, &mut buffer).await {
                    seen.lock().unwrap().push(String::from_utf8(body).unwrap());
                    served += 1;
                    if served == 2 {
                        return; // drops the socket: read, never answered
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{{\"n\":{served}}}",
                        format!("{{\"n\":{served}}}").len()
                    );
                    socket.write_all(answer.as_bytes()).await.unwrap();
                }
            });
        }
    });
    let target = client().target(&url).unwrap();
    assert_eq!(post_text(&target, "first").await.unwrap(), "{\"n\":1}");
    // The second goes out on the pooled connection, which then fails.
    let outcome = post_text(&target, "second").await;
    assert!(outcome.is_err(), "answered: {outcome:?}");
    assert_eq!(
        *bodies.lock().unwrap(),
        ["first", "second"],
        "the upstream got the second request exactly once"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "no new connection for a resend"
    );
    // The pool is not stuck: the next request gets a new connection.
    assert_eq!(post_text(&target, "third").await.unwrap(), "{\"n\":1}");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// A URL made per call (a Gemini model's) is prepared once per thread: the next
/// call to it sends through the same `Target`, each URL to its own path; the
/// thread keeps a bounded number of them, the oldest going first; a URL that is
/// not one is refused every time, never kept.
#[tokio::test]
async fn urls_made_per_call_are_prepared_once_per_thread() {
    let upstream = raw_upstream(After::KeepAlive).await;
    let client = client();
    let base = upstream
        .url
        .trim_end_matches("/chat/completions")
        .to_owned();
    let url = |n: usize| format!("{base}/models/m{n}:generate");
    let post = |url: String| {
        let client = client.clone();
        async move {
            let response = client
                .post_spelled(
                    &url,
                    HeaderMap::new(),
                    &HeaderCase::NONE,
                    Bytes::from_static(b"{}"),
                )
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.bytes(usize::MAX).await.unwrap();
        }
    };
    post(url(0)).await;
    let first = client.recent_target(&url(0)).unwrap();
    post(url(0)).await;
    assert!(Arc::ptr_eq(&first, &client.recent_target(&url(0)).unwrap()));
    for n in 1..=RecentTargets::MAX_ENTRIES {
        post(url(n)).await;
    }
    let heads = upstream.heads.lock().unwrap().clone();
    let paths: Vec<&str> = heads
        .iter()
        .map(|head| head.split(' ').nth(1).unwrap())
        .collect();
    let expected: Vec<String> = [0, 0]
        .into_iter()
        .chain(1..=RecentTargets::MAX_ENTRIES)
        .map(|n| format!("/v1/models/m{n}:generate"))
        .collect();
    assert_eq!(paths, expected);
    // One connection for all of them: every target found the origin's one pool.
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
    // The first URL, the oldest, made room for the last; the rest are kept.
    let kept = crate::shard::lock(client.inner.recent_targets.local())
        .entries
        .len();
    assert_eq!(kept, RecentTargets::MAX_ENTRIES);
    assert!(!Arc::ptr_eq(
        &first,
        &client.recent_target(&url(0)).unwrap()
    ));
    let last = client
        .recent_target(&url(RecentTargets::MAX_ENTRIES))
        .unwrap();
    assert!(Arc::ptr_eq(
        &last,
        &client
            .recent_target(&url(RecentTargets::MAX_ENTRIES))
            .unwrap()
    ));
    for _ in 0..2 {
        let refused = client
            .post_spelled(
                "not a url",
                HeaderMap::new(),
                &HeaderCase::NONE,
                Bytes::new(),
            )
            .await;
        assert!(matches!(refused, Err(UpstreamError::BadUrl(_))));
    }
    let kept = crate::shard::lock(client.inner.recent_targets.local());
    assert!(kept
        .entries
        .iter()
        .all(|(url, _)| url.starts_with("http://")));
}
