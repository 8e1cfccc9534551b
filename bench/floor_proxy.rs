//! `bench-floor-proxy`: the least a proxy built on lm-proxy's stack can do, for the
//! benchmarks in `bench/`: the floor under lm-proxy's own figures.
//!
//! It forwards `POST /v1/chat/completions` and `POST /v1/embeddings` to the upstream as it came (body bytes,
//! content type; no parsing, no key check, no routing, no logging) and streams the
//! upstream's answer back as it arrives. It is built from the same parts as
//! lm-proxy: axum-server with `TCP_NODELAY` on accepted sockets, one pooled reqwest
//! client with `TCP_NODELAY`, tokio's multi-threaded runtime and mimalloc. Whatever
//! lm-proxy costs above this is its own work; whatever this costs above a direct
//! call is the price of any proxy on this machine (a second hop: two more socket
//! reads and writes and two more wake-ups per request).
//!
//! Usage: `bench-floor-proxy --port P --upstream http://127.0.0.1:U/v1`; prints
//! `listening on 127.0.0.1:PORT` once it accepts connections.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum_server::accept::NoDelayAcceptor;

#[global_allocator]
static ALLOCATOR: lm_proxy::allocator::Allocator = lm_proxy::allocator::Allocator;

struct Upstream {
    client: reqwest::Client,
    chat_url: reqwest::Url,
    embeddings_url: reqwest::Url,
}

async fn forward_chat(
    State(up): State<Arc<Upstream>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    forward(&up, up.chat_url.clone(), headers, body).await
}

async fn forward_embeddings(
    State(up): State<Arc<Upstream>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    forward(&up, up.embeddings_url.clone(), headers, body).await
}

async fn forward(up: &Upstream, url: reqwest::Url, headers: HeaderMap, body: Bytes) -> Response {
    let mut request = up.client.post(url).body(body);
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        request = request.header(header::CONTENT_TYPE, content_type.clone());
    }
    match request.send().await {
        Ok(answer) => {
            let status = answer.status();
            let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
            let mut response = Body::from_stream(answer.bytes_stream()).into_response();
            *response.status_mut() = status;
            if let Some(content_type) = content_type {
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, content_type);
            }
            response
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.without_url().to_string()).into_response(),
    }
}

fn main() -> anyhow::Result<()> {
    let mut port = 0u16;
    let mut upstream = String::from("http://127.0.0.1:8081/v1");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => port = args.next().unwrap_or_default().parse()?,
            "--upstream" => upstream = args.next().unwrap_or_default(),
            other => anyhow::bail!("unknown argument {other:?} (--port P --upstream URL)"),
        }
    }
    // reqwest is built without a default TLS provider (as in lm-proxy); plain http
    // needs none, but the client builder insists on one being installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1024)
        .build()?;
    let base = upstream.trim_end_matches('/');
    let state = Arc::new(Upstream {
        client,
        chat_url: reqwest::Url::parse(&format!("{base}/chat/completions"))?,
        embeddings_url: reqwest::Url::parse(&format!("{base}/embeddings"))?,
    });
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(forward_chat))
        .route("/v1/embeddings", post(forward_embeddings))
        .route("/health", get(|| async { "ok" }))
        .with_state(state);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
            listener.set_nonblocking(true)?;
            let addr: SocketAddr = listener.local_addr()?;
            println!("listening on {addr}");
            axum_server::from_tcp(listener)?
                .acceptor(NoDelayAcceptor)
                .serve(app.into_make_service())
                .await?;
            Ok(())
        })
}
