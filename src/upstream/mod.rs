//! The upstream HTTP client of the providers: where a request to an upstream goes
//! out and how its answer comes back.
//!
//! Two transports behind one type:
//!
//! - **In-task HTTP/1.1 pool** ([`pool`]) for `http://` and `https://` upstreams
//!   (TLS with ALPN `http/1.1` and the platform's certificates, as reqwest checks
//!   them): local and LAN OpenAI-compatible servers (vLLM, llama.cpp, Ollama, LM
//!   Studio), where the upstream is fast and the proxy's own cost shows, and the
//!   providers. The request's task reads and writes the upstream socket itself
//!   through a connection of our own ([`http1`]), with no hand-off to a connection
//!   task and no buffer held while it waits. HTTP/1.1, as the reference's httpx client spoke
//!   it, is what lets header names keep the spelling the config, a handler or the
//!   client gave them (`case.rs`); HTTP/2 would send them in lowercase.
//!   The proxies the environment names (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`,
//!   `NO_PROXY`, either case; hyper-util's matcher, as reqwest reads them) are used
//!   when they are `http://` ones: plain-http requests in absolute form with the
//!   proxy's credentials, https ones through a `CONNECT` tunnel.
//! - **reqwest** for origins behind an `https://` or SOCKS proxy and URLs with
//!   credentials in them. Vertex AI's token and metadata fetches use reqwest too
//!   ([`UpstreamClient::reqwest`]); model lists and `CheckAPIKeyWithRequest` calls
//!   take the pool ([`UpstreamClient::get_spelled`], [`UpstreamClient::request_spelled`]).
//!
//! A provider turns its URL into a [`Target`] once, at startup, and sends with
//! [`Target::post`]; one whose URL is made per call from the model's name (Gemini,
//! Vertex AI) sends with [`UpstreamClient::post_spelled`], which keeps each URL's
//! `Target` per serving thread.

mod case;
mod http1;
mod pool;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::error::ApiError;
use crate::shard::Sharded;
pub use case::{client_spellings, HeaderCase};
pub use http1::Http1Error;
use pool::{Pool, PooledBody};

/// How long an unused keep-alive connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Most idle connections kept per upstream origin.
const MAX_IDLE_PER_ORIGIN: usize = 1024;
/// The most read of answers that are small by nature: access tokens, metadata
/// server values, key-check answers.
pub const SMALL_ANSWER_LIMIT: usize = 1024 * 1024;
/// What lm-proxy calls itself upstream.
const USER_AGENT: &str = concat!("lm-proxy/", env!("CARGO_PKG_VERSION"));

/// The pooled upstream client; cheap to clone (all clones share the pools).
#[derive(Clone)]
pub struct UpstreamClient {
    inner: Arc<ClientInner>,
}

/// Pools by origin (host, port, whether it is `https`) and the HTTP proxy they go
/// through, if any (its host and port).
type PoolKey = (String, u16, bool, Option<(String, u16)>);
type PoolsByOrigin = Mutex<HashMap<PoolKey, Arc<Pool>>>;

struct ClientInner {
    reqwest: reqwest::Client,
    /// In-task pools; `None` only in tests that exercise the reqwest transport.
    pools: Option<PoolsByOrigin>,
    /// The proxies the environment names (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`,
    /// `NO_PROXY`, either case, read as curl and reqwest read them).
    proxies: hyper_util::client::proxy::matcher::Matcher,
    connect_timeout: Duration,
    /// The targets of URLs that change from call to call, per serving thread
    /// ([`UpstreamClient::post_spelled`]).
    recent_targets: Sharded<Mutex<RecentTargets>>,
}

/// The [`Target`]s of the last URLs a serving thread sent to that were not prepared
/// at startup: a Gemini or Vertex model's URL, made per call from the model's name.
/// Preparing one (parsing the URL, finding its pool under the lock all threads
/// share, the proxy the environment names for it) was about 13,000 instructions, a
/// tenth of a translated Gemini stream, and the only lock every serving thread took
/// per call on that path (bench/README.md, session 36); a model is asked again and
/// again. Bounded, as a client chooses the model names: the oldest
/// entry goes first.
#[derive(Default)]
struct RecentTargets {
    entries: std::collections::VecDeque<(Box<str>, Arc<Target>)>,
}

impl RecentTargets {
    /// Enough for the models one gateway's clients ask for.
    const MAX_ENTRIES: usize = 32;

    fn get(&self, url: &str) -> Option<Arc<Target>> {
        self.entries
            .iter()
            .find(|(kept, _)| **kept == *url)
            .map(|(_, target)| target.clone())
    }

    fn keep(&mut self, url: &str, target: Arc<Target>) {
        if self.entries.len() == Self::MAX_ENTRIES {
            self.entries.pop_front();
        }
        self.entries.push_back((url.into(), target));
    }
}

impl UpstreamClient {
    /// A client whose new connections must open within `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> anyhow::Result<UpstreamClient> {
        Self::with_transport(
            connect_timeout,
            false,
            hyper_util::client::proxy::matcher::Matcher::from_system(),
        )
    }

    /// `reqwest_only`: every call through reqwest (tests of that transport);
    /// `proxies`: which proxy each origin goes through.
    fn with_transport(
        connect_timeout: Duration,
        reqwest_only: bool,
        proxies: hyper_util::client::proxy::matcher::Matcher,
    ) -> anyhow::Result<Self> {
        crate::server::install_crypto_provider();
        let reqwest = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(MAX_IDLE_PER_ORIGIN)
            .user_agent(USER_AGENT)
            // HTTP/1.1 header names in title case (`X-Custom-Header`, not the
            // lowercase `http::HeaderName` keeps): the reference's clients (httpx) sent
            // names as users wrote them, and some servers match names by case.
            // Exact spellings (`X-API-key`, `x-lower-case`; see `case.rs`) reach only
            // the in-task pool's upstreams (every `http` and `https` one, through an
            // `http://` proxy too): reqwest builds its request from a `HeaderMap`, which
            // keeps no spellings. HTTP/2 (https by ALPN) is lowercase by spec.
            .http1_title_case_headers()
            // Never follow redirects: reqwest would resend the provider key headers
            // (`x-api-key`, `x-goog-api-key`, static `http_headers`) and the prompt to
            // whatever host the `Location` names. A 3xx is an upstream error instead
            // (`upstream_http::status_error`), for chat calls, model lists, key checks
            // and token requests alike.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("cannot create the upstream HTTP client")?;
        Ok(UpstreamClient {
            inner: Arc::new(ClientInner {
                reqwest,
                pools: (!reqwest_only).then(Default::default),
                proxies,
                connect_timeout,
                recent_targets: Sharded::default(),
            }),
        })
    }

    /// The [`Target`] of a URL that changes from call to call, prepared once per
    /// serving thread (see [`RecentTargets`]). A URL that is not one is refused each
    /// time.
    fn recent_target(&self, url: &str) -> Result<Arc<Target>, UpstreamError> {
        let recent = self.inner.recent_targets.local();
        if let Some(target) = crate::shard::lock(recent).get(url) {
            return Ok(target);
        }
        let target = Arc::new(self.target(url).map_err(UpstreamError::BadUrl)?);
        crate::shard::lock(recent).keep(url, target.clone());
        Ok(target)
    }

    /// The reqwest client, for calls off the chat path (model lists, key checks,
    /// access tokens).
    pub fn reqwest(&self) -> &reqwest::Client {
        &self.inner.reqwest
    }

    /// POST to a URL that changes from call to call (see [`Target::post`]).
    pub async fn post(
        &self,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<UpstreamResponse, UpstreamError> {
        self.post_spelled(url, headers, &HeaderCase::NONE, body)
            .await
    }

    /// GET from a URL that changes from call to call (model list pages), header
    /// names spelled as `case` says (see [`Target::post_spelled`]).
    pub async fn get_spelled(
        &self,
        url: &str,
        headers: HeaderMap,
        case: &HeaderCase,
    ) -> Result<UpstreamResponse, UpstreamError> {
        self.request_spelled(http::Method::GET, url, headers, case, Bytes::new())
            .await
    }

    /// Any method to a URL that changes from call to call (key checks), header
    /// names spelled as `case` says (see [`Target::post_spelled`]).
    pub async fn request_spelled(
        &self,
        method: http::Method,
        url: &str,
        headers: HeaderMap,
        case: &HeaderCase,
        body: Bytes,
    ) -> Result<UpstreamResponse, UpstreamError> {
        // Not kept (see `recent_target`): a key check's URL may carry the client's
        // key, and a model list's page token changes from call to call.
        let target = self.target(url).map_err(UpstreamError::BadUrl)?;
        target.send_spelled(method, headers, case, body).await
    }

    /// [`UpstreamClient::post`] with header names spelled as `case` says (see
    /// [`Target::post_spelled`]). The URL's [`Target`] is kept per serving thread
    /// for the next call to it (a provider's URL made from the model's name).
    pub async fn post_spelled(
        &self,
        url: &str,
        headers: HeaderMap,
        case: &HeaderCase,
        body: Bytes,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let target = self.recent_target(url)?;
        target.post_spelled(headers, case, body).await
    }

    /// How connections to an `https` host start TLS: the TLS settings (ALPN
    /// `http/1.1`, the platform's certificates) and the host's name for SNI and the
    /// certificate check.
    fn tls_origin(host: &str, url: &str) -> Result<pool::TlsOrigin, String> {
        // Made once per process, at the first `https` origin: loading the platform's
        // certificates takes a while and they do not change while it runs.
        static CONNECTOR: std::sync::OnceLock<Result<tokio_rustls::TlsConnector, String>> =
            std::sync::OnceLock::new();
        let connector = CONNECTOR
            .get_or_init(|| {
                use rustls_platform_verifier::BuilderVerifierExt;
                crate::server::install_crypto_provider();
                let mut config = rustls::ClientConfig::builder()
                    .with_platform_verifier()
                    .map_err(|e| format!("cannot load the platform's certificates: {e}"))?
                    .with_no_client_auth();
                // HTTP/1.1 only: the pool speaks nothing else (see the module docs).
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
            })
            .clone()?;
        let server_name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| format!("'{url}': the host is not a name TLS can check: {e}"))?;
        Ok(pool::TlsOrigin {
            connector,
            server_name,
        })
    }

    /// The proxy the environment names for `url`: `Some(None)` for none (or one
    /// that `NO_PROXY` exempts), `Some(Some(..))` for an `http://` proxy, `None` for
    /// one the pool cannot use (`https://` or SOCKS; reqwest takes those calls).
    fn proxy_for(&self, url: &reqwest::Url) -> Result<Option<Option<pool::Proxy>>, String> {
        let uri: http::Uri = url.as_str().parse().map_err(|e| format!("'{url}': {e}"))?;
        let Some(intercept) = self.inner.proxies.intercept(&uri) else {
            return Ok(Some(None));
        };
        let proxy = intercept.uri();
        if proxy.scheme_str() != Some("http") {
            return Ok(None);
        }
        let Some(host) = proxy.host() else {
            return Ok(None);
        };
        Ok(Some(Some(pool::Proxy {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: proxy.port_u16().unwrap_or(80),
            authorization: intercept.basic_auth().cloned().map(|mut value| {
                value.set_sensitive(true);
                value
            }),
        })))
    }

    /// Prepare a URL for repeated requests: parsed once, its pool looked up once.
    pub fn target(&self, url: &str) -> Result<Target, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("'{url}' is not a URL: {e}"))?;
        let route = match (&self.inner.pools, parsed.scheme(), parsed.host_str()) {
            (Some(pools), scheme @ ("http" | "https"), Some(host))
                if parsed.username().is_empty() && parsed.password().is_none() =>
            {
                let https = scheme == "https";
                let port = parsed
                    .port_or_known_default()
                    .unwrap_or(if https { 443 } else { 80 });
                // `[::1]` in a URL is `::1` to connect to.
                let connect_host = host.trim_start_matches('[').trim_end_matches(']');
                let Some(proxy) = self.proxy_for(&parsed)? else {
                    // A proxy the pool cannot speak to (https or SOCKS): reqwest.
                    return Ok(Target {
                        url: parsed,
                        route: Route::Reqwest(self.inner.reqwest.clone()),
                    });
                };
                let key = (
                    connect_host.to_owned(),
                    port,
                    https,
                    proxy.as_ref().map(|p| (p.host.clone(), p.port)),
                );
                let existing = pools
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&key)
                    .cloned();
                // Plain http through a proxy: requests in absolute form, with the
                // proxy's credentials (https tunnels carry them in CONNECT).
                let through_proxy = match &proxy {
                    Some(proxy) if !https => Some(proxy.authorization.clone()),
                    _ => None,
                };
                let pool = match existing {
                    Some(pool) => pool,
                    None => {
                        let tls = if https {
                            Some(Self::tls_origin(connect_host, url)?)
                        } else {
                            None
                        };
                        let made = Arc::new(Pool::new(
                            connect_host.to_owned(),
                            port,
                            tls,
                            proxy,
                            self.inner.connect_timeout,
                            IDLE_TIMEOUT,
                            MAX_IDLE_PER_ORIGIN,
                        ));
                        pools
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(key)
                            .or_insert(made)
                            .clone()
                    }
                };
                let authority = match parsed.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host.to_owned(),
                };
                let mut path = if through_proxy.is_some() {
                    format!("{scheme}://{authority}{}", parsed.path())
                } else {
                    parsed.path().to_owned()
                };
                if let Some(query) = parsed.query() {
                    path.push('?');
                    path.push_str(query);
                }
                path.parse::<http::Uri>()
                    .map_err(|e| format!("'{url}': bad path: {e}"))?;
                Route::Pooled {
                    pool,
                    uri: path.into(),
                    host: HeaderValue::from_str(&authority)
                        .map_err(|e| format!("'{url}': bad host: {e}"))?,
                    proxy_authorization: through_proxy.flatten(),
                }
            }
            _ => Route::Reqwest(self.inner.reqwest.clone()),
        };
        Ok(Target { url: parsed, route })
    }
}

/// The headers of a JSON POST to an upstream: the call's (from handlers'
/// `llm_params.extra_headers`), then the connection's static headers replacing any
/// of the same name, then `content-type: application/json` and, for a stream,
/// `accept: text/event-stream`. Providers add their credentials after this.
pub fn json_post_headers(connection: &HeaderMap, call: &HeaderMap, stream: bool) -> HeaderMap {
    // The call's headers first, then the connection's over them: what the operator
    // configured on the connection (static `http_headers`, `anthropic-version`,
    // `x-goog-user-project`, ...) is never replaced by a per-request header, which
    // may have been copied from the client (`HTTPHeadersForwarder`).
    let mut headers = call.clone();
    merge_headers(&mut headers, connection);
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if stream {
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
    }
    headers
}

/// Set every header of `from` in `into`, replacing the values `into` had for that
/// name (as reqwest's `RequestBuilder::headers` does); names with several values
/// keep them all.
pub fn merge_headers(into: &mut HeaderMap, from: &HeaderMap) {
    let mut last = None;
    for (name, value) in from {
        if last != Some(name) {
            into.insert(name, value.clone());
            last = Some(name);
        } else {
            into.append(name, value.clone());
        }
    }
}

/// A prepared upstream URL (see [`UpstreamClient::target`]).
pub struct Target {
    url: reqwest::Url,
    route: Route,
}

enum Route {
    Pooled {
        pool: Arc<Pool>,
        /// Path and query (origin form, as HTTP/1.1 sends it; absolute form to an
        /// `http://` proxy), checked to be a valid request target.
        uri: Box<str>,
        /// The `Host` header: the URL's host and port as written.
        host: HeaderValue,
        /// `Proxy-Authorization` for a plain-http origin reached through a proxy.
        proxy_authorization: Option<HeaderValue>,
    },
    Reqwest(reqwest::Client),
}

impl Target {
    /// POST `body` with `headers` (which should include the content type); resolves
    /// with the response head. Headers not set here get the client's defaults
    /// (`user-agent: lm-proxy/...`, `accept: */*`).
    pub async fn post(
        &self,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<UpstreamResponse, UpstreamError> {
        self.post_spelled(headers, &HeaderCase::NONE, body).await
    }

    /// [`Target::post`] with header names spelled as `case` says where the transport
    /// allows it (the in-task pool; reqwest and HTTP/2 cannot, see `case.rs`).
    pub async fn post_spelled(
        &self,
        headers: HeaderMap,
        case: &HeaderCase,
        body: Bytes,
    ) -> Result<UpstreamResponse, UpstreamError> {
        self.send_spelled(http::Method::POST, headers, case, body)
            .await
    }

    async fn send_spelled(
        &self,
        method: http::Method,
        mut headers: HeaderMap,
        case: &HeaderCase,
        body: Bytes,
    ) -> Result<UpstreamResponse, UpstreamError> {
        match &self.route {
            Route::Pooled {
                pool,
                uri,
                host,
                proxy_authorization,
            } => {
                pooled_headers(&mut headers, host, proxy_authorization.as_ref());
                let head = http1::request_head(&method, uri, &headers, case, body.len());
                send_pooled(pool, &method, &head, &body).await
            }
            Route::Reqwest(client) => {
                // Boxed: reqwest's future is large, and inline it would make every
                // call's future (and each move of it) that large, pooled ones too.
                let mut request = client.request(method, self.url.clone()).headers(headers);
                if !body.is_empty() {
                    request = request.body(body);
                }
                let response = Box::pin(request.send())
                    .await
                    .map_err(UpstreamError::reqwest)?;
                Ok(UpstreamResponse::from_reqwest(response))
            }
        }
    }
}

impl Target {
    /// The head of every POST with `headers` spelled as `case` says, written once:
    /// a connection that adds no header per call sends the same head each time but
    /// for its `Content-Length` ([`Target::post_prepared`]). Building the header map,
    /// adding the transport's headers and writing the head cost about 2,500
    /// instructions per request. `None` where the pool does not carry the request.
    pub fn prepare_post(&self, mut headers: HeaderMap, case: &HeaderCase) -> Option<PreparedPost> {
        match &self.route {
            Route::Pooled {
                uri,
                host,
                proxy_authorization,
                ..
            } => {
                pooled_headers(&mut headers, host, proxy_authorization.as_ref());
                Some(PreparedPost {
                    start: http1::request_head_start(&Method::POST, uri, &headers, case),
                })
            }
            Route::Reqwest(_) => None,
        }
    }

    /// POST `body` with a head prepared by [`Target::prepare_post`] on this target.
    pub async fn post_prepared(
        &self,
        prepared: &PreparedPost,
        body: Bytes,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let Route::Pooled { pool, .. } = &self.route else {
            unreachable!("heads are prepared only for pooled routes");
        };
        let mut head = Vec::with_capacity(prepared.start.len() + 32);
        head.extend_from_slice(&prepared.start);
        http1::finish_request_head(&mut head, &Method::POST, body.len());
        send_pooled(pool, &Method::POST, &head, &body).await
    }
}

/// A request whose head is written, sent on the pool; its answer.
async fn send_pooled(
    pool: &Arc<Pool>,
    method: &Method,
    head: &[u8],
    body: &Bytes,
) -> Result<UpstreamResponse, UpstreamError> {
    let (head, body) = pool.send(method, head, body).await?;
    Ok(UpstreamResponse {
        status: head.status,
        headers: head.headers,
        body: ResponseBody::Pooled(body),
    })
}

/// A POST's head up to its `Content-Length` (see [`Target::prepare_post`]).
#[derive(Debug)]
pub struct PreparedPost {
    start: Vec<u8>,
}

/// The headers the pool's transport adds to a request: `Host`, the proxy's
/// credentials, and the client's defaults where the request has none.
fn pooled_headers(
    headers: &mut HeaderMap,
    host: &HeaderValue,
    proxy_authorization: Option<&HeaderValue>,
) {
    headers.insert(http::header::HOST, host.clone());
    if let Some(credentials) = proxy_authorization {
        headers.insert(http::header::PROXY_AUTHORIZATION, credentials.clone());
    }
    if !headers.contains_key(http::header::USER_AGENT) {
        headers.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(USER_AGENT),
        );
    }
    if !headers.contains_key(http::header::ACCEPT) {
        headers.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
    }
}

/// An upstream answer: its head, and a body still to be read.
pub struct UpstreamResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: ResponseBody,
}

enum ResponseBody {
    Pooled(PooledBody),
    Reqwest(BoxStream<'static, reqwest::Result<Bytes>>),
}

impl UpstreamResponse {
    /// A response that reqwest received.
    pub fn from_reqwest(response: reqwest::Response) -> UpstreamResponse {
        UpstreamResponse {
            status: response.status(),
            headers: response.headers().clone(),
            body: ResponseBody::Reqwest(response.bytes_stream().boxed()),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body as it arrives.
    pub fn bytes_stream(self) -> BodyStream {
        BodyStream(self.body)
    }

    /// The whole body, refused once it passes `limit` bytes: at once when its
    /// `Content-Length` says so, otherwise as soon as what arrived passes it, so that
    /// an upstream cannot make a request hold more than `limit` (an unbounded
    /// answer once took the process to 4.2 GB for a 3 GB body). The buffer grows
    /// no further than `limit` either.
    pub async fn bytes(self, limit: usize) -> Result<Bytes, UpstreamError> {
        let too_large = || UpstreamError::TooLarge { limit };
        let declared = self
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            // Dropping the unread body closes its connection (it cannot be reused).
            return Err(too_large());
        }
        let mut stream = self.bytes_stream();
        let Some(first) = stream.next().await.transpose()? else {
            return Ok(Bytes::new());
        };
        if first.len() > limit {
            return Err(too_large());
        }
        let Some(second) = stream.next().await.transpose()? else {
            return Ok(first);
        };
        let mut all = Vec::new();
        for piece in [first, second] {
            append_within(&mut all, &piece, limit).ok_or_else(too_large)?;
        }
        while let Some(more) = stream.next().await.transpose()? {
            append_within(&mut all, &more, limit).ok_or_else(too_large)?;
        }
        Ok(Bytes::from(all))
    }
}

/// Append `piece` unless that takes `all` past `limit` (`None` then). Capacity
/// doubles as usual but never past `limit`.
fn append_within(all: &mut Vec<u8>, piece: &[u8], limit: usize) -> Option<()> {
    let needed = all.len().checked_add(piece.len()).filter(|&n| n <= limit)?;
    if needed > all.capacity() {
        let target = (all.capacity() * 2).max(needed).min(limit);
        all.reserve_exact(target - all.len());
    }
    all.extend_from_slice(piece);
    Some(())
}

/// Read a whole reqwest answer (token and metadata calls, key checks), refused past
/// `limit` bytes as [`UpstreamResponse::bytes`] does.
pub async fn reqwest_bytes(
    response: reqwest::Response,
    limit: usize,
) -> Result<Bytes, UpstreamError> {
    UpstreamResponse::from_reqwest(response).bytes(limit).await
}

/// An upstream body as a stream of byte pieces.
pub struct BodyStream(ResponseBody);

impl Stream for BodyStream {
    type Item = Result<Bytes, UpstreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.0 {
            ResponseBody::Pooled(body) => body.poll_data(cx),
            ResponseBody::Reqwest(stream) => stream
                .poll_next_unpin(cx)
                .map(|item| item.map(|r| r.map_err(UpstreamError::reqwest))),
        }
    }
}

/// Why an upstream call failed before an answer could be read.
#[derive(Debug)]
pub enum UpstreamError {
    BadUrl(String),
    Connect(std::io::Error),
    ConnectTimeout(Duration),
    /// Sending the request or reading the response head.
    Request(Http1Error),
    /// Reading the body.
    Body(Http1Error),
    /// From the reqwest transport, with the URL taken out.
    Reqwest(reqwest::Error),
    /// The answer is larger than the most a request may hold (`max_response_body_mb`).
    TooLarge {
        limit: usize,
    },
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The error with its causes (reqwest's carry no URL, see `reqwest`).
        fn chain(f: &mut std::fmt::Formatter<'_>, e: &dyn std::error::Error) -> std::fmt::Result {
            write!(f, "{e}")?;
            let mut source = e.source();
            while let Some(s) = source {
                write!(f, ": {s}")?;
                source = s.source();
            }
            Ok(())
        }
        match self {
            UpstreamError::BadUrl(problem) => f.write_str(problem),
            UpstreamError::Connect(e) => chain(f, e),
            UpstreamError::ConnectTimeout(t) => {
                write!(f, "no connection within {:.1}s", t.as_secs_f64())
            }
            UpstreamError::Request(e) | UpstreamError::Body(e) => chain(f, e),
            UpstreamError::Reqwest(e) => chain(f, e),
            UpstreamError::TooLarge { limit } => write!(
                f,
                "the upstream's answer is larger than max_response_body_mb ({})",
                describe_limit(*limit)
            ),
        }
    }
}

impl UpstreamError {
    /// A reqwest failure, without the URL (it may carry credentials in some setups).
    pub fn reqwest(e: reqwest::Error) -> UpstreamError {
        UpstreamError::Reqwest(e.without_url())
    }

    /// The error for the client: a timeout is 504, anything else 502; the text says
    /// which step failed (connect, request, answer), as `metrics` classifies it.
    pub fn into_api_error(self) -> ApiError {
        // Out of descriptors, memory or ports here: 503, not the upstream's fault.
        if let Some(error) = exhausted::answer(&self) {
            return error;
        }
        let kind = match &self {
            UpstreamError::TooLarge { limit } => return too_large_error(*limit),
            UpstreamError::ConnectTimeout(_) => {
                return ApiError::UpstreamTimeout {
                    detail: format!("cannot connect to upstream: {self}"),
                }
            }
            UpstreamError::Reqwest(e) if e.is_timeout() => {
                return ApiError::UpstreamTimeout {
                    detail: self.to_string(),
                }
            }
            UpstreamError::Connect(_) => "cannot connect to upstream",
            UpstreamError::Reqwest(e) if e.is_connect() => "cannot connect to upstream",
            UpstreamError::Body(_) => "upstream answer broke off",
            UpstreamError::Reqwest(e) if e.is_body() || e.is_decode() => {
                "upstream answer broke off"
            }
            UpstreamError::BadUrl(_) | UpstreamError::Request(_) | UpstreamError::Reqwest(_) => {
                "upstream request failed"
            }
        };
        ApiError::upstream_failure(format!("{kind}: {self}"))
    }
}

/// The error for an upstream answer past the cap: 502, `upstream_error`, with a
/// message that names the setting and its value even with debug off (the operator's
/// limit is no secret, and the client needs to know why a 200 became a 502).
pub fn too_large_error(limit: usize) -> ApiError {
    let body = crate::error::ErrorBody::new(
        StatusCode::BAD_GATEWAY,
        format!(
            "The upstream's answer is larger than max_response_body_mb ({}), the most this gateway holds per request.",
            describe_limit(limit)
        ),
        "upstream_error",
    )
    .code(Some(RESPONSE_TOO_LARGE.into()));
    ApiError::UpstreamRejected(Box::new(body))
}

/// The `code` of [`too_large_error`] (metrics count it as `invalid_response`).
pub const RESPONSE_TOO_LARGE: &str = "upstream_response_too_large";

/// A byte count as the setting is written: `64 MiB`, `0.5 MiB`, or bytes when tiny.
pub fn describe_limit(limit: usize) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let mib = limit as f64 / MIB;
    if limit >= 1024 * 1024 && limit % (1024 * 1024) == 0 {
        format!("{} MiB", limit / (1024 * 1024))
    } else if mib >= 0.01 {
        format!("{mib:.2} MiB")
    } else {
        format!("{limit} bytes")
    }
}

pub mod exhausted;

#[cfg(test)]
mod tests;
