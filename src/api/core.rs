//! The core every door shares: what happens to a request between the door that
//! parsed it and the door that answers it, whatever client API it speaks.
//!
//! Order of work, as in the reference: service enabled → key check → (the door's
//! body checks) → routing → group may use the connection → `before` handlers →
//! provider call → metrics, log line, loggers. The key is checked from the headers
//! before the body is read, so that clients without a key cannot make the gateway
//! receive and hold their uploads; the body is then read within the size limit, the
//! body timeout and the server's memory budget (`server::body`).
//!
//! A door (`chat.rs`, `messages/`) calls [`admit`], parses the bytes into
//! `ctx.request`, calls [`route`] and [`run_handlers`], builds its provider call, and
//! ends the request through an [`Ending`], which writes the request line, reports
//! metrics and hands the context to the loggers exactly once. The context knows its
//! door (`ctx.endpoint`), so handlers, loggers, the log line and `/metrics` see it.

use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::context::{Endpoint, RequestContext};
use crate::error::ApiError;
use crate::gateway::{Gateway, RawReach};
use crate::handlers::TokenMeter;
use crate::json_scan::TokenCounts;
use crate::logging::RequestSummary;
use crate::metrics::{RequestMetrics, StreamObserver};
use crate::payload::{Payload, PayloadStream};
use crate::providers::{Connection, UpstreamCall};
use crate::routing::RouteModel;
use crate::secrets::Redactor;
use crate::server::{body, AppState, GatewayHandle};
use crate::streaming::StreamSummary;
use crate::upstream::HeaderCase;
use crate::usage::PendingRow;

/// What a provider produced for a request.
pub enum Reply {
    Complete(Payload),
    Stream(PayloadStream),
}

/// The client key as the door's clients send it: `Authorization: Bearer` on every
/// door; on the Anthropic door also `x-api-key` (what the Anthropic SDKs and Claude
/// Code with `ANTHROPIC_API_KEY` send), which wins when both are there.
pub fn client_key(ctx: &RequestContext) -> &str {
    if matches!(ctx.endpoint, Endpoint::Messages | Endpoint::CountTokens) {
        if let Some(key) = ctx
            .http_headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty())
        {
            return key;
        }
    }
    crate::auth::bearer_key(&ctx.http_headers)
}

/// Service enabled → key check → body read within the limits. The bytes come with
/// the share of the server's body budget they hold; keep it while they are held.
/// `body` is taken when it is read; left there, the request was refused before.
pub async fn admit<'s>(
    state: &'s AppState,
    gateway: &Gateway,
    ctx: &mut RequestContext,
    body: &mut Option<Body>,
) -> Result<(Bytes, body::Reservation<'s>), ApiError> {
    if !gateway.config.settings.enabled {
        return Err(ApiError::ServiceDisabled);
    }
    let key = client_key(ctx).to_owned();
    super::models::authenticate_key(gateway, ctx, &key).await?;
    let rules = body::BodyRules {
        limit: gateway.config.body_limit_bytes(),
        timeout: gateway.config.settings.limits.body_timeout(),
        memory: gateway.config.settings.limits.body_memory_bytes(),
    };
    let body = body.take().unwrap_or_default();
    body::read(body, &ctx.http_headers, rules, state.bodies()).await
}

/// Route `ctx.request.model`: the first matching rule, the group's permission for
/// its connection, and the upstream model name (`ctx.connection`, `ctx.model`).
pub fn route<'g>(
    gateway: &'g Gateway,
    ctx: &mut RequestContext,
) -> Result<&'g Connection, ApiError> {
    let requested = crate::context::member(&ctx.request, "model")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let rule = gateway
        .router
        .route(requested)
        .ok_or_else(|| ApiError::ModelNotFound(requested.to_owned()))?;
    let connection = gateway.connections.get(&rule.connection).ok_or_else(|| {
        ApiError::internal(format!(
            "routed to unknown connection '{}'",
            rule.connection
        ))
    })?;
    let model = match &rule.model {
        RouteModel::PassThrough => requested.to_owned(),
        RouteModel::Fixed(name) => name.clone(),
        RouteModel::ConnectionDefault => connection
            .default_model
            .clone()
            .unwrap_or_else(|| requested.to_owned()),
    };
    ctx.connection = Some(connection.name.clone());
    let group = ctx.group.as_deref().unwrap_or_default();
    if !gateway.group_allows(group, &connection.name) {
        return Err(ApiError::ConnectionNotAllowed(connection.name.clone()));
    }
    ctx.model = Some(model);
    Ok(connection)
}

/// Fill `ctx.llm_params` from the request and run the `before` handlers, which may
/// change them. Returns whether the request must be kept whole afterwards (a JSON
/// logger will see it), which decides whether the call may take it apart.
///
/// Then, the last step before the upstream call on every door, the group's budget
/// (`usage::budget`): refused when spent, otherwise a reservation the request's end
/// settles. `count_tokens` spends nothing and is not checked.
pub async fn run_handlers(
    state: &AppState,
    gateway: &Gateway,
    ctx: &mut RequestContext,
) -> Result<bool, ApiError> {
    let keep_request = gateway.log_dispatcher.is_some();
    ctx.llm_params = llm_params(
        &mut ctx.request,
        gateway.handlers.is_empty() && !keep_request,
    );
    for handler in &gateway.handlers {
        handler.before(ctx).await?;
    }
    hold_budgets(state, gateway, ctx)?;
    Ok(keep_request)
}

/// Whether the connection this body is for may take it as the client wrote it (a
/// door's tree-free path: `reach` is the door's `Gateway::raw_*`, `takes` what a
/// connection must be): with some connections that do and some that do not, the
/// body's first `model` member (not checked yet: only a guess, the request is
/// routed again once it is) picks one.
pub fn may_take_raw(
    gateway: &Gateway,
    reach: RawReach,
    body: &[u8],
    takes: impl Fn(&Connection) -> bool,
) -> bool {
    match reach {
        RawReach::Every => true,
        RawReach::No => false,
        RawReach::Some => crate::json_scan::utf8(body)
            .and_then(|text| crate::json_scan::member_str(text, "model"))
            .and_then(|model| gateway.router.route(&model))
            .and_then(|rule| gateway.connections.get(&rule.connection))
            .is_some_and(takes),
    }
}

/// Reserve the request's share of its group's budget and of its managed key's
/// (both held in `ctx.budget_hold` until the request settles). What
/// [`run_handlers`] does after the handlers; called alone by a door that passes the
/// client's request on as it came (no handler or logger to see `llm_params`, so
/// none are made).
pub fn hold_budgets(
    state: &AppState,
    gateway: &Gateway,
    ctx: &mut RequestContext,
) -> Result<(), ApiError> {
    if let (Some(ledger), Some(group)) = (state.ledger(), ctx.group.as_deref()) {
        let budget = gateway
            .config
            .settings
            .groups
            .get(group)
            .and_then(|g| g.budget.as_ref());
        if let Some(budget) = budget.filter(|_| ctx.endpoint != Endpoint::CountTokens) {
            ctx.budget_hold = ledger.budgets.reserve(group, budget)?;
        }
    }
    // A managed key's own budget (`usage::keys`): the same reserve / settle, under
    // the name `key:<id>`, held together with the group's so that the request's
    // one settlement reaches both. Refused here, the group's hold is released.
    if let (Some(ledger), Some(managed), Some(id), true) = (
        state.ledger(),
        gateway.managed_keys.as_ref(),
        ctx.api_key_id.as_deref(),
        gateway.default_key_check && ctx.endpoint != Endpoint::CountTokens,
    ) {
        if let Some(budget) = managed.by_id(id).and_then(|k| k.budget.clone()) {
            let name = format!("{}{id}", crate::usage::budget::KEY_PREFIX);
            let hold = ledger.budgets.reserve(&name, &budget)?;
            ctx.budget_hold = crate::usage::budget::Hold::join(ctx.budget_hold.take(), hold);
        }
    }
    Ok(())
}

/// Call the connection's provider; `upstream_time` is set to how long it took.
pub async fn call_provider(
    connection: &Connection,
    call: UpstreamCall,
    upstream_time: &mut Option<Duration>,
) -> Result<Reply, ApiError> {
    let provider = &connection.provider;
    let upstream_started = std::time::Instant::now();
    let reply = if call.is_stream() {
        provider.stream_payload(call).await.map(Reply::Stream)
    } else {
        provider.complete_payload(call).await.map(Reply::Complete)
    };
    *upstream_time = Some(upstream_started.elapsed());
    reply
}

/// The request's members other than `model` and `messages`: the upstream call's
/// parameters, which handlers may change. When no handler or logger will see the
/// request (`unseen`), they are moved out of it rather than copied (a `tools` list
/// with its JSON schemas can be tens of kilobytes); `model` and `stream` stay, as the
/// request line and metrics read them, and `messages` is taken by `upstream_call`.
pub fn llm_params(request: &mut Map<String, Value>, unseen: bool) -> Map<String, Value> {
    let is_param = |key: &str| key != "model" && key != "messages";
    // Only `stream` (a bool) or nothing besides: copying costs nothing.
    let worth_moving = unseen && request.keys().any(|k| is_param(k) && k != "stream");
    if !worth_moving {
        return request
            .iter()
            .filter(|(k, _)| is_param(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    }
    let whole = std::mem::take(request);
    let mut params = Map::with_capacity(whole.len());
    for (key, value) in whole {
        if !is_param(&key) {
            request.insert(key, value);
        } else if key == "stream" {
            request.insert(key.clone(), value.clone());
            params.insert(key, value);
        } else {
            params.insert(key, value);
        }
    }
    params
}

/// The upstream call from the context as handlers left it; `want_usage`: the gateway
/// needs the stream's usage (loggers or metrics) whether or not the client asked. Unless the request is
/// still to be logged whole (`keep_request`: a JSON logger is configured), the
/// messages and parameters are moved into the call instead of copied (a deep copy
/// of the whole conversation): after this, only the model and `stream` are read.
pub fn upstream_call(
    ctx: &mut RequestContext,
    keep_request: bool,
    want_usage: bool,
) -> Result<UpstreamCall, ApiError> {
    let llm_params = if keep_request {
        ctx.llm_params.clone()
    } else {
        std::mem::take(&mut ctx.llm_params)
    };
    let mut params = Map::with_capacity(llm_params.len() + 1);
    if let Some(messages) = ctx.request.get_mut("messages") {
        let messages = if keep_request {
            messages.clone()
        } else {
            messages.take()
        };
        params.insert("messages".into(), messages);
    }
    let mut headers = HeaderMap::new();
    let mut header_case = HeaderCase::NONE;
    for (key, value) in llm_params {
        if key == "extra_headers" {
            (headers, header_case) = spelled_extra_headers(Some(&value), &ctx.forwarded_spellings)?;
        } else {
            params.insert(key, value);
        }
    }
    Ok(UpstreamCall {
        model: ctx.model.clone().unwrap_or_default(),
        params,
        headers,
        header_case,
        // Streams bring usage to loggers and metrics whether or not the client asked;
        // the door hides what the client did not ask for.
        gateway_usage: want_usage,
        raw_body: None,
    })
}

/// The upstream call of a request that goes on as the client sent it
/// (`api::raw_chat`): no handler ran, so there are no parameters or headers to add.
pub fn raw_upstream_call(
    ctx: &RequestContext,
    raw: crate::api::raw_chat::RawChatRequest,
    want_usage: bool,
) -> UpstreamCall {
    UpstreamCall {
        model: ctx.model.clone().unwrap_or_default(),
        // Empty: `raw_body` says whether it streams (a map with `stream` in it cost
        // a hashed insert and a hashed lookup a request).
        params: Map::new(),
        headers: HeaderMap::new(),
        header_case: HeaderCase::NONE,
        gateway_usage: want_usage,
        raw_body: Some(raw),
    }
}

/// Headers that describe the upstream request's framing or connection, which hyper
/// writes from the body it sends: one set by a handler would make the request
/// malformed (a `content-length` shorter than the body cuts it off).
const GATEWAY_SET_HEADERS: [HeaderName; 9] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::HOST,
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// `llm_params.extra_headers` (`value`, when there is one) as headers, with how the
/// handlers or the client spelled their names ([`extra_headers`],
/// [`extra_header_case`]): what every door's upstream call carries.
pub fn spelled_extra_headers(
    value: Option<&Value>,
    forwarded: &[(Box<str>, Value)],
) -> Result<(HeaderMap, HeaderCase), ApiError> {
    match value {
        Some(value) => Ok((extra_headers(value)?, extra_header_case(value, forwarded))),
        None => Ok((HeaderMap::new(), HeaderCase::NONE)),
    }
}

/// How the handlers spelled the names of `llm_params.extra_headers` (the table's
/// keys, as [`extra_headers`] reads it), for upstreams that keep spellings. A header
/// the forwarder copied (`forwarded`: the client's spelling and the value copied)
/// takes the client's spelling while the table still holds that value under the
/// forwarder's lowercase name; a handler that replaced the value spells it.
pub fn extra_header_case(value: &Value, forwarded: &[(Box<str>, Value)]) -> HeaderCase {
    let Value::Object(map) = value else {
        return HeaderCase::NONE;
    };
    if forwarded.is_empty() {
        return HeaderCase::of(map.keys().map(String::as_str));
    }
    HeaderCase::of(map.iter().map(|(name, value)| {
        forwarded
            .iter()
            .find(|(spelling, copied)| {
                copied == value
                    && spelling.eq_ignore_ascii_case(name)
                    && !name.bytes().any(|b| b.is_ascii_uppercase())
            })
            .map_or(name.as_str(), |(spelling, _)| &**spelling)
    }))
}

/// `llm_params.extra_headers` (set by handlers) as HTTP headers.
pub fn extra_headers(value: &Value) -> Result<HeaderMap, ApiError> {
    let mut headers = HeaderMap::new();
    let Value::Object(map) = value else {
        if value.is_null() {
            return Ok(headers);
        }
        return Err(ApiError::internal(
            "llm_params.extra_headers must be a table of strings",
        ));
    };
    for (name, value) in map {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Null => continue,
            other => other.to_string(),
        };
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            ApiError::internal(format!("invalid header name in extra_headers: {name:?}"))
        })?;
        if GATEWAY_SET_HEADERS.contains(&name) {
            return Err(ApiError::internal(format!(
                "llm_params.extra_headers may not set `{name}`: the gateway writes the \
                 upstream request's framing and connection headers itself"
            )));
        }
        let value = HeaderValue::from_str(&text).map_err(|_| {
            ApiError::internal(format!("invalid header value in extra_headers for {name}"))
        })?;
        headers.insert(name, value);
    }
    Ok(headers)
}

/// One request as every door receives it: the context (its door named, the client's
/// address resolved), the body not read yet, and the provider call's time once made.
/// A door's handler reads `body` (through [`admit`]) and sets `upstream_time`; then
/// [`Incoming::finish`] deals with a body left unread and starts the [`Ending`].
pub struct Incoming {
    pub gateway: GatewayHandle,
    /// Taken by [`Incoming::finish`]; while it is here, dropping the `Incoming`
    /// means the request was abandoned (see the `Drop` impl). Boxed, as it goes on
    /// to the [`Ending`]'s calls and their closures: moved between frames by value,
    /// its 800 bytes were copied about seven times a request.
    pub ctx: ManuallyDrop<Box<RequestContext>>,
    /// Taken when it is read; left there, the request was refused before.
    pub body: Option<Body>,
    pub upstream_time: Option<Duration>,
    version: axum::http::Version,
    /// For the ending of a request abandoned before `finish`.
    state: Arc<AppState>,
    finished: bool,
}

impl Incoming {
    pub fn new(
        state: &Arc<AppState>,
        peer: std::net::SocketAddr,
        request: axum::extract::Request,
        endpoint: Endpoint,
    ) -> Incoming {
        // Taken whole and split, so that the headers are moved, not copied (the
        // `HeaderMap` extractor clones them).
        let (parts, body) = request.into_parts();
        let gateway = state.gateway_handle();
        let remote_addr = gateway
            .trusted_proxies
            .client_addr(&parts.headers, peer.ip());
        let mut ctx = Box::new(RequestContext::new(parts.headers, remote_addr));
        ctx.endpoint = endpoint;
        // Where the forwarder will read the client's spellings (HTTP/2 has none).
        if gateway.client_spellings && parts.version <= axum::http::Version::HTTP_11 {
            ctx.client_head = Some(parts.extensions);
        }
        Incoming {
            gateway,
            ctx: ManuallyDrop::new(ctx),
            body: Some(body),
            upstream_time: None,
            version: parts.version,
            state: state.clone(),
            finished: false,
        }
    }

    /// The door's work is over: a body it refused unread is drained within the body
    /// timeout (or the connection closed). Then [`Incoming::finish`].
    ///
    /// Apart from `finish`, and borrowing: a future that owned the `Incoming` would
    /// hold a second copy of it, and every door's handler future is as large as its
    /// largest state (this one made the chat handler's 3.2 KiB instead of 2.3 KiB,
    /// held by every request in flight).
    pub async fn discard_unread_body(&mut self) {
        if let Some(unread) = self.body.take() {
            let timeout = self.gateway.config.settings.limits.body_timeout();
            body::discard_refused(unread, &self.ctx.http_headers, self.version, timeout).await;
        }
    }

    /// The request's [`Ending`] begins (after [`Incoming::discard_unread_body`]).
    pub fn finish(mut self) -> (GatewayHandle, Box<RequestContext>, Ending) {
        debug_assert!(self.body.is_none(), "the unread body was not discarded");
        let (ctx, mut ending) = self.end();
        ending.meters = self
            .gateway
            .handlers
            .iter()
            .filter_map(|handler| handler.token_meter(&ctx))
            .collect();
        (self.gateway.clone(), ctx, ending)
    }

    /// The context taken out, once, with its [`Ending`] begun (the budget
    /// reservation goes with it).
    fn end(&mut self) -> (Box<RequestContext>, Ending) {
        debug_assert!(!self.finished, "the request was ended twice");
        self.finished = true;
        // SAFETY: taken only here, once: `finished` is set and checked by `Drop`.
        let mut ctx = unsafe { ManuallyDrop::take(&mut self.ctx) };
        let hold = ctx.budget_hold.take();
        let ending = Ending::new(&self.state, &ctx, self.upstream_time, hold);
        (ctx, ending)
    }
}

/// A door's handler dropped before [`Incoming::finish`]: its connection was closed
/// (the client left, or the server's grace period ran out) while the request was
/// in progress. It ends as abandoned (request line, metrics, usage row and loggers'
/// entry with `client_disconnected`), so that it is not lost from the records.
impl Drop for Incoming {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let (ctx, ending) = self.end();
        ending.abandoned(&self.gateway, ctx);
    }
}

/// The end of one request, whatever the door: the request line, the metrics and
/// the loggers' entry, each exactly once. Made when the core's work is over (the
/// context then has every field it will get before the answer).
pub struct Ending {
    metrics: Option<RequestMetrics>,
    /// The usage ledger's row (`[database]`), written into its buffer at the end.
    /// Boxed: most of the `Ending`'s size, which is moved a few times a request.
    ledger: Option<Box<PendingRow>>,
    /// Handlers that count the tokens spent (`RateLimiter` with `max_tokens`).
    meters: Vec<TokenMeter>,
}

/// Prompt + completion tokens, for the token meters.
fn tokens_spent(usage: &TokenCounts) -> u64 {
    usage
        .prompt
        .unwrap_or(0)
        .saturating_add(usage.completion.unwrap_or(0))
}

/// A stream's payloads as the provider gives them, watched by the metrics (which
/// count upstream errors as the upstream gave them) and then with secrets removed:
/// one adapter for both, as it runs for every poll of every chunk.
struct ServedStream {
    payloads: PayloadStream,
    observer: Option<StreamObserver>,
    redactor: Arc<Redactor>,
    /// What the search for echoed secrets knows of the chunk before.
    clean: crate::secrets::StreamClean,
}

impl futures_util::Stream for ServedStream {
    type Item = Result<Payload, ApiError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        // Changed where it lies and handed on as it is: taken apart and put back
        // together, the 112-byte item was moved twice more for each chunk.
        let mut polled = this.payloads.as_mut().poll_next(cx);
        if let Some(observer) = &mut this.observer {
            observer.observe(&polled);
        }
        match &mut polled {
            Poll::Ready(Some(Ok(payload))) => {
                this.redactor
                    .redact_stream_payload(payload, &mut this.clean);
            }
            Poll::Ready(Some(Err(error))) => {
                let taken = std::mem::replace(error, ApiError::ServiceDisabled);
                *error = this.redactor.redact(taken);
            }
            _ => {}
        }
        polled
    }
}

/// A stream's payloads, passed on unchanged; the last usage among them goes to the
/// token meters when the stream ends or is dropped (the client left).
struct MeteredStream {
    payloads: PayloadStream,
    usage: Option<TokenCounts>,
    meters: Vec<TokenMeter>,
}

impl futures_util::Stream for MeteredStream {
    type Item = Result<Payload, ApiError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = self.payloads.as_mut().poll_next(cx);
        if let std::task::Poll::Ready(Some(Ok(payload))) = &polled {
            if let Some(usage) = payload.usage() {
                self.usage = Some(usage);
            }
        }
        polled
    }
}

impl Drop for MeteredStream {
    fn drop(&mut self) {
        if let Some(usage) = &self.usage {
            let tokens = tokens_spent(usage);
            for meter in self.meters.drain(..) {
                meter(tokens);
            }
        }
    }
}

impl Ending {
    /// `hold`: the budget reservation, settled with the row (released if none).
    pub fn new(
        state: &AppState,
        ctx: &RequestContext,
        upstream_time: Option<Duration>,
        hold: Option<crate::usage::budget::Hold>,
    ) -> Self {
        let asked = ctx.asked();
        Ending {
            metrics: state
                .metrics()
                .map(|m| m.request(ctx, asked, upstream_time)),
            ledger: state.ledger().map(|l| Box::new(l.begin(ctx, asked, hold))),
            meters: Vec::new(),
        }
    }

    /// The request failed before any byte of an answer: the error with secrets
    /// removed, for the door to answer in its envelope.
    pub fn failed(
        self,
        gateway: &Gateway,
        mut ctx: Box<RequestContext>,
        error: ApiError,
    ) -> ApiError {
        let error = gateway.redactor.redact(error);
        RequestSummary::of(&ctx).log(error.status().as_u16(), Some(&error), "");
        if let Some(metrics) = self.metrics {
            metrics.failed(&error);
        }
        if let Some(row) = self.ledger {
            row.failed(&error);
        }
        if let Some(dispatcher) = &gateway.log_dispatcher {
            ctx.error = Some(error.clone());
            dispatcher.submit(ctx.to_log_json());
        }
        error
    }

    /// The client left before any byte of an answer (see `Drop for Incoming`).
    fn abandoned(self, gateway: &Gateway, mut ctx: Box<RequestContext>) {
        RequestSummary::of(&ctx).log(499, None, " (client disconnected)");
        if let Some(metrics) = self.metrics {
            metrics.abandoned();
        }
        if let Some(row) = self.ledger {
            row.abandoned();
        }
        if let Some(dispatcher) = &gateway.log_dispatcher {
            ctx.extra.insert("client_disconnected".into(), true.into());
            dispatcher.submit(ctx.to_log_json());
        }
    }

    /// A whole answer is being sent. `log_answer` makes the loggers' copy of it (in
    /// the door's shape); it is called only when loggers are configured.
    pub fn completed(
        self,
        gateway: &Gateway,
        mut ctx: Box<RequestContext>,
        usage: Option<TokenCounts>,
        log_answer: impl FnOnce() -> Value,
    ) {
        RequestSummary::of(&ctx).log(200, None, "");
        if let Some(metrics) = self.metrics {
            metrics.completed(usage);
        }
        if let Some(row) = self.ledger {
            row.completed(usage);
        }
        if let Some(usage) = &usage {
            let tokens = tokens_spent(usage);
            for meter in self.meters {
                meter(tokens);
            }
        }
        if let Some(dispatcher) = &gateway.log_dispatcher {
            ctx.response = Some(log_answer());
            dispatcher.submit(ctx.to_log_json());
        }
    }

    /// A stream is starting: the provider's payloads, observed by the metrics and
    /// with secrets removed from their errors, and the closure the door's encoder
    /// calls once when the stream ends (end, error or client disconnect).
    pub fn stream(
        self,
        gateway: &Gateway,
        ctx: Box<RequestContext>,
        payloads: PayloadStream,
    ) -> (PayloadStream, impl FnOnce(StreamSummary) + Send + 'static) {
        let payloads: PayloadStream = Box::pin(ServedStream {
            payloads,
            observer: self.metrics.map(RequestMetrics::stream),
            redactor: gateway.redactor.clone(),
            clean: Default::default(),
        });
        // Outside the redaction: the row records errors as the client sees them.
        // Like the metrics' wrapper, it reports when dropped, with the stream.
        let payloads = match self.ledger {
            Some(row) => row.stream(payloads),
            None => payloads,
        };
        let payloads: PayloadStream = if self.meters.is_empty() {
            payloads
        } else {
            Box::pin(MeteredStream {
                payloads,
                usage: None,
                meters: self.meters,
            })
        };
        let dispatcher = gateway.log_dispatcher.clone();
        // Only the loggers need the context at the end; without them it is dropped
        // now rather than held (the request tree, the client's headers and the read
        // buffer they share) for as long as the stream lasts, and the request line's
        // fields are moved out of it (the line is written when the stream ends).
        let (summary, ctx) = match dispatcher {
            Some(_) => (RequestSummary::of(&ctx).into_owned(), Some(ctx)),
            None => {
                let mut ctx = ctx;
                (RequestSummary::taken_from(&mut ctx), None)
            }
        };
        let finish = move |outcome: StreamSummary| {
            let note = if outcome.completed {
                ""
            } else {
                " (client disconnected)"
            };
            summary.log(200, outcome.error.as_ref(), note);
            if let (Some(dispatcher), Some(mut ctx)) = (dispatcher, ctx) {
                ctx.response = outcome.response;
                ctx.error = outcome.error;
                if !outcome.completed {
                    ctx.extra.insert("client_disconnected".into(), true.into());
                }
                dispatcher.submit(ctx.to_log_json());
            }
        };
        (payloads, finish)
    }
}

/// A 200 with a JSON body. Built directly: through `IntoResponse` for a
/// (headers, bytes) pair the content type is set twice (`Bytes` sets its own).
pub fn json_response(body: Bytes) -> axum::response::Response {
    static HEADERS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(|| {
        HeaderMap::from_iter([(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )])
    });
    with_headers(Body::from(body), &HEADERS)
}

/// A client SSE answer (`text/event-stream`, not to be cached or buffered by a
/// proxy in front) with `body`.
pub fn sse_response(body: Body) -> axum::response::Response {
    static HEADERS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(|| {
        HeaderMap::from_iter([
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ])
    });
    with_headers(body, &HEADERS)
}

/// An answer with a copy of `headers`, made once: inserting the same names into a
/// fresh map for every answer (hashing each, growing the map) cost about 700
/// instructions a stream (callgrind), a copy of the two small vectors behind the
/// map a fraction of that.
fn with_headers(body: Body, headers: &HeaderMap) -> axum::response::Response {
    let mut response = axum::response::Response::new(body);
    *response.headers_mut() = headers.clone();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Map<String, Value> {
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn parameters_are_moved_only_when_nobody_sees_the_request() {
        let body = r#"{"temperature": 0.5, "model": "m", "stream": true,
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "messages": [{"role": "user", "content": "hi"}], "seed": 7}"#;
        let expected_params = ["temperature", "stream", "tools", "seed"];

        // Seen by a handler or logger: copied, the request stays whole.
        let mut request = parse(body);
        let params = llm_params(&mut request, false);
        assert_eq!(params.keys().collect::<Vec<_>>(), expected_params);
        assert_eq!(request, parse(body));

        // Unseen: moved out in the client's order; model, messages and stream stay.
        let mut request = parse(body);
        let params = llm_params(&mut request, true);
        assert_eq!(params.keys().collect::<Vec<_>>(), expected_params);
        assert_eq!(params["tools"][0]["function"]["name"], "f");
        assert_eq!(params["stream"], true);
        assert_eq!(
            request.keys().collect::<Vec<_>>(),
            ["model", "stream", "messages"]
        );
        assert_eq!(request["messages"][0]["content"], "hi");

        // Nothing worth moving: the same as a copy.
        let minimal =
            r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": false}"#;
        let mut request = parse(minimal);
        let params = llm_params(&mut request, true);
        assert_eq!(params.keys().collect::<Vec<_>>(), ["stream"]);
        assert_eq!(request, parse(minimal));
    }

    #[test]
    fn a_client_spelling_holds_while_the_copied_value_is_sent() {
        let forwarded: Vec<(Box<str>, Value)> = vec![
            ("X-Trace-ID".into(), "1".into()),
            ("X-Tenant-ID".into(), "acme".into()),
            ("X-Source".into(), "a".into()),
        ];
        // x-tenant-id: a later handler replaced the copied value; X-SOURCE: a handler
        // wrote the name its own way.
        let table = serde_json::json!({
            "x-trace-id": "1", "x-tenant-id": "other", "X-SOURCE": "a", "x-own": "b"
        });
        let case = extra_header_case(&table, &forwarded);
        let spelled: Vec<_> = case.spellings().map(|(_, s)| s).collect();
        assert_eq!(spelled, ["X-Trace-ID", "x-tenant-id", "X-SOURCE", "x-own"]);
        // No copies recorded: the table's names, as before.
        let spelled: Vec<_> = extra_header_case(&table, &[])
            .spellings()
            .map(|(_, s)| s.to_owned())
            .collect();
        assert_eq!(spelled, ["x-trace-id", "x-tenant-id", "X-SOURCE", "x-own"]);
    }

    #[test]
    fn extra_headers_may_not_set_framing_headers() {
        let ok = extra_headers(&serde_json::json!({"X-Tenant": "acme", "X-Count": 3})).unwrap();
        assert_eq!(ok["x-tenant"], "acme");
        assert_eq!(ok["x-count"], "3");
        for name in [
            "Content-Length",
            "transfer-encoding",
            "Host",
            "Connection",
            "keep-alive",
        ] {
            let err = extra_headers(&serde_json::json!({ name: "5" })).unwrap_err();
            let message = err.to_string();
            assert!(
                message.contains(&name.to_ascii_lowercase()),
                "{name}: {message}"
            );
        }
    }

    #[test]
    fn the_anthropic_door_takes_x_api_key_and_bearer_the_chat_door_only_bearer() {
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", "sk-x".parse().unwrap());
        let mut ctx = RequestContext::new(headers, "127.0.0.1".into());
        assert_eq!(client_key(&ctx), "");
        ctx.endpoint = Endpoint::Messages;
        assert_eq!(client_key(&ctx), "sk-x");
        ctx.http_headers.remove("x-api-key");
        ctx.http_headers
            .insert(header::AUTHORIZATION, "Bearer sk-b".parse().unwrap());
        assert_eq!(client_key(&ctx), "sk-b");
        ctx.endpoint = Endpoint::CountTokens;
        assert_eq!(client_key(&ctx), "sk-b");
    }
}
