//! `GET /metrics`: Prometheus metrics of one server, in the OpenMetrics text format
//! (which Prometheus scrapes natively).
//!
//! The registry belongs to the server's `AppState`, not to the process, so several
//! servers in one process (tests) count independently, and it outlives config
//! reloads. The request path reports through [`RequestMetrics`]: one call when a
//! non-streamed request ends, or a wrapper around the chunk stream that reports
//! when the stream is dropped (end, error or client disconnect: exactly once).
//!
//! Label values that clients choose (model names) or that extensions may invent
//! (groups) are capped per server: past [`MAX_LABEL_VALUES`] distinct values, new
//! ones are counted as `other`, so a client cannot grow the series without bound.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::registry::{Registry, Unit};

use crate::context::RequestContext;
use crate::error::{ApiError, ErrorBody};
use crate::json_scan::TokenCounts;
use crate::payload::Payload;
use crate::server::AppState;
use crate::shard::Sharded;

mod sharded;
pub use sharded::{DurationHistogram, ShardedCounter, ShardedGauge};

/// Most distinct values kept per capped label (model, group, connection).
pub const MAX_LABEL_VALUES: usize = 100;
/// The value that stands for every label value past the cap.
pub const OTHER: &str = "other";
/// The value for a label that does not apply (no model, no group yet, ...).
pub const NONE: &str = "-";

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whole request, time to first token, upstream part: 0.5 ms ... 2 min.
const LATENCY_BUCKETS: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];
/// The proxy's own share: 25 µs ... 1 s.
const OVERHEAD_BUCKETS: [f64; 14] = [
    0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    1.0,
];

type Label = Arc<str>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    status: u16,
    connection: Label,
    model: Label,
    group: Label,
    stream: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TimingLabels {
    connection: Label,
    stream: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabel {
    stream: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabel {
    connection: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    connection: Label,
    model: Label,
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamErrorLabels {
    connection: Label,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: &'static str,
}

#[derive(Clone)]
struct Buckets(&'static [f64]);

impl MetricConstructor<DurationHistogram> for Buckets {
    fn new_metric(&self) -> DurationHistogram {
        DurationHistogram::new(self.0)
    }
}

/// Interns label values up to a cap; everything past it becomes `other`.
struct LabelCap {
    values: RwLock<HashMap<Box<str>, Label>>,
    other: Label,
    none: Label,
}

impl LabelCap {
    fn new() -> Self {
        LabelCap {
            values: RwLock::new(HashMap::new()),
            other: Arc::from(OTHER),
            none: Arc::from(NONE),
        }
    }

    fn get(&self, value: Option<&str>) -> Label {
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return self.none.clone();
        };
        // A poisoned lock only means a panic elsewhere mid-insert of a whole entry.
        let values = self.values.read().unwrap_or_else(|e| e.into_inner());
        if let Some(label) = values.get(value) {
            return label.clone();
        }
        let full = values.len() >= MAX_LABEL_VALUES;
        drop(values);
        if full {
            return self.other.clone();
        }
        let mut values = self.values.write().unwrap_or_else(|e| e.into_inner());
        if values.len() >= MAX_LABEL_VALUES {
            return self.other.clone();
        }
        values
            .entry(value.into())
            .or_insert_with(|| Arc::from(value))
            .clone()
    }
}

/// The metrics of one server.
pub struct Metrics {
    registry: Registry,
    families: Arc<RequestFamilies>,
    accept_errors: Family<CauseLabel, Counter>,
    log_entries_dropped: Counter,
    ledger_rows_dropped: Counter,
    ledger_rows_written: Counter,
    models: LabelCap,
    groups: LabelCap,
    connections: LabelCap,
    series: SeriesCache,
}

/// The families that requests report to (through their [`Series`], which hold
/// them, so that a request touches nothing shared with other serving threads).
struct RequestFamilies {
    requests: Family<RequestLabels, ShardedCounter>,
    request_duration: Family<TimingLabels, DurationHistogram, Buckets>,
    upstream_duration: Family<TimingLabels, DurationHistogram, Buckets>,
    overhead: Family<StreamLabel, DurationHistogram, Buckets>,
    time_to_first_token: Family<ConnectionLabel, DurationHistogram, Buckets>,
    tokens: Family<TokenLabels, ShardedCounter>,
    open_streams: ShardedGauge,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    upstream_connect_errors: Family<CauseLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("lm_proxy");
        let requests = Family::<RequestLabels, ShardedCounter>::default();
        registry.register(
            "requests",
            "Requests by door (endpoint), HTTP status, connection, requested model, group and stream",
            requests.clone(),
        );
        let request_duration = Family::new_with_constructor(Buckets(&LATENCY_BUCKETS));
        registry.register_with_unit(
            "request_duration",
            "Whole request, from arrival to the answer (streams: to the end of the stream)",
            Unit::Seconds,
            request_duration.clone(),
        );
        let upstream_duration = Family::new_with_constructor(Buckets(&LATENCY_BUCKETS));
        registry.register_with_unit(
            "upstream_duration",
            "Time spent waiting on the upstream (streams: to its headers plus the waits for chunks)",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let overhead = Family::new_with_constructor(Buckets(&OVERHEAD_BUCKETS));
        registry.register_with_unit(
            "overhead",
            "The proxy's own time for requests that reached the upstream: whole request minus upstream",
            Unit::Seconds,
            overhead.clone(),
        );
        let time_to_first_token = Family::new_with_constructor(Buckets(&LATENCY_BUCKETS));
        registry.register_with_unit(
            "time_to_first_token",
            "Streams: from arrival of the request to the first chunk from the upstream",
            Unit::Seconds,
            time_to_first_token.clone(),
        );
        let tokens = Family::<TokenLabels, ShardedCounter>::default();
        registry.register(
            "tokens",
            "Tokens reported in the upstream's usage, by type (prompt, completion)",
            tokens.clone(),
        );
        let open_streams = ShardedGauge::default();
        registry.register(
            "open_streams",
            "Streamed answers in progress",
            open_streams.clone(),
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failed upstream calls by kind: timeout, transport, status_4xx, status_5xx, invalid_response",
            upstream_errors.clone(),
        );
        let upstream_connect_errors = Family::<CauseLabel, Counter>::default();
        registry.register(
            "upstream_connect_errors",
            "Upstream connections that could not be opened, by cause: descriptors, memory, \
             ports (this machine ran out; answered 503), timeout, other",
            upstream_connect_errors.clone(),
        );
        let accept_errors = Family::<CauseLabel, Counter>::default();
        registry.register(
            "accept_errors",
            "Failed accepts of client connections, by cause: descriptors, memory, other",
            accept_errors.clone(),
        );
        let log_entries_dropped = Counter::default();
        registry.register(
            "log_entries_dropped",
            "Request log entries dropped: the log queue was full ([log_queue]), or they were still unwritten when shutdown's flush timed out",
            log_entries_dropped.clone(),
        );
        let ledger_rows_dropped = Counter::default();
        registry.register(
            "ledger_rows_dropped",
            "Usage ledger rows dropped: the buffer was full while the database could not keep up or \
             was unreachable ([database] buffer_rows), or they were still unwritten when a stop's \
             flush timed out",
            ledger_rows_dropped.clone(),
        );
        let ledger_rows_written = Counter::default();
        registry.register(
            "ledger_rows_written",
            "Usage ledger rows written to the database",
            ledger_rows_written.clone(),
        );
        Metrics {
            log_entries_dropped,
            ledger_rows_dropped,
            ledger_rows_written,
            registry,
            families: Arc::new(RequestFamilies {
                requests,
                request_duration,
                upstream_duration,
                overhead,
                time_to_first_token,
                tokens,
                open_streams,
                upstream_errors,
                upstream_connect_errors,
            }),
            accept_errors,
            models: LabelCap::new(),
            groups: LabelCap::new(),
            connections: LabelCap::new(),
            series: SeriesCache::default(),
        }
    }

    /// The counter of dropped request log entries, for the log dispatcher.
    pub fn log_entries_dropped(&self) -> Counter {
        self.log_entries_dropped.clone()
    }

    /// The usage ledger's counters: rows dropped, rows written.
    pub fn ledger_rows(&self) -> (Counter, Counter) {
        (
            self.ledger_rows_dropped.clone(),
            self.ledger_rows_written.clone(),
        )
    }

    /// A client connection could not be accepted (`cause`: descriptors, memory, other).
    pub fn accept_error(&self, cause: &'static str) {
        self.accept_errors
            .get_or_create(&CauseLabel { cause })
            .inc();
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Start reporting one request whose handling is over (answer, stream or error).
    /// `upstream` is how long the provider call took, `None` if it was not reached.
    pub fn request(
        self: &Arc<Self>,
        ctx: &RequestContext,
        asked: crate::context::Asked<'_>,
        upstream: Option<Duration>,
    ) -> RequestMetrics {
        let key = SeriesRef {
            endpoint: ctx.endpoint.as_str(),
            connection: ctx.connection.as_deref(),
            model: asked.model,
            group: ctx.group.as_deref(),
            stream: asked.stream,
        };
        RequestMetrics {
            series: self.series.get(key, || self.new_series(key)),
            started: ctx.started,
            upstream,
        }
    }

    /// The series of requests with these labels, none of them made yet.
    fn new_series(&self, key: SeriesRef<'_>) -> Series {
        Series {
            families: self.families.clone(),
            endpoint: key.endpoint,
            connection: self.connections.get(key.connection),
            model: self.models.get(key.model),
            group: self.groups.get(key.group),
            stream: key.stream,
            ok: OnceLock::new(),
            request_duration: OnceLock::new(),
            upstream_duration: OnceLock::new(),
            overhead: OnceLock::new(),
            time_to_first_token: OnceLock::new(),
            prompt_tokens: OnceLock::new(),
            completion_tokens: OnceLock::new(),
        }
    }
}

/// Most label combinations whose [`Series`] are kept; requests with others (only
/// possible when clients send that many model names) look their series up each time.
const MAX_CACHED_SERIES: usize = 1000;

/// The [`Series`] of each combination of the raw label values seen, so that a request
/// finds all its metrics with one lookup (with `foldhash`) instead of one SipHash
/// lookup and lock per metric family and capped label. One map per serving thread
/// ([`crate::shard`]), each with its own `Series` (they share the metrics they count
/// into): a request takes only its own thread's lock and reference counts.
struct SeriesCache {
    maps: Sharded<RwLock<hashbrown::HashMap<SeriesKey, Arc<Series>>>>,
}

impl Default for SeriesCache {
    fn default() -> Self {
        // As many maps as the metrics have shards: a map holds up to
        // `MAX_CACHED_SERIES` entries.
        SeriesCache {
            maps: Sharded::at_most(sharded::SHARDS, Default::default),
        }
    }
}

impl SeriesCache {
    fn get(&self, key: SeriesRef<'_>, make: impl FnOnce() -> Series) -> Arc<Series> {
        let shard = self.maps.local();
        // A poisoned lock only means a panic elsewhere mid-insert of a whole entry.
        let map = shard.read().unwrap_or_else(|e| e.into_inner());
        if let Some(series) = map.get(&key) {
            return series.clone();
        }
        let full = map.len() >= MAX_CACHED_SERIES;
        drop(map);
        let series = Arc::new(make());
        if !full {
            let mut map = shard.write().unwrap_or_else(|e| e.into_inner());
            if map.len() < MAX_CACHED_SERIES {
                return map.entry(key.to_owned()).or_insert(series).clone();
            }
        }
        series
    }
}

/// The raw label values of a request, as looked up.
#[derive(Clone, Copy, Hash, PartialEq, Eq)]
struct SeriesRef<'a> {
    endpoint: &'static str,
    connection: Option<&'a str>,
    model: Option<&'a str>,
    group: Option<&'a str>,
    stream: bool,
}

impl SeriesRef<'_> {
    fn to_owned(self) -> SeriesKey {
        SeriesKey {
            endpoint: self.endpoint,
            connection: self.connection.map(Box::from),
            model: self.model.map(Box::from),
            group: self.group.map(Box::from),
            stream: self.stream,
        }
    }
}

/// [`SeriesRef`] as kept in the cache. Hashes as the `SeriesRef` of its values.
#[derive(PartialEq, Eq)]
struct SeriesKey {
    endpoint: &'static str,
    connection: Option<Box<str>>,
    model: Option<Box<str>>,
    group: Option<Box<str>>,
    stream: bool,
}

impl SeriesKey {
    fn as_ref(&self) -> SeriesRef<'_> {
        SeriesRef {
            endpoint: self.endpoint,
            connection: self.connection.as_deref(),
            model: self.model.as_deref(),
            group: self.group.as_deref(),
            stream: self.stream,
        }
    }
}

impl std::hash::Hash for SeriesKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_ref().hash(state);
    }
}

impl hashbrown::Equivalent<SeriesKey> for SeriesRef<'_> {
    fn equivalent(&self, key: &SeriesKey) -> bool {
        *self == key.as_ref()
    }
}

/// The metrics that requests with one set of labels report to: handles taken from
/// the families the first time each is needed (so a series shows in the exposition
/// only once it has something in it), then kept.
struct Series {
    families: Arc<RequestFamilies>,
    endpoint: &'static str,
    connection: Label,
    model: Label,
    group: Label,
    stream: bool,
    /// `requests` with status 200 (other statuses go through the family).
    ok: OnceLock<ShardedCounter>,
    request_duration: OnceLock<DurationHistogram>,
    upstream_duration: OnceLock<DurationHistogram>,
    overhead: OnceLock<DurationHistogram>,
    time_to_first_token: OnceLock<DurationHistogram>,
    prompt_tokens: OnceLock<ShardedCounter>,
    completion_tokens: OnceLock<ShardedCounter>,
}

impl Series {
    fn request_labels(&self, status: u16) -> RequestLabels {
        RequestLabels {
            endpoint: self.endpoint,
            status,
            connection: self.connection.clone(),
            model: self.model.clone(),
            group: self.group.clone(),
            stream: self.stream,
        }
    }

    fn timing_labels(&self) -> TimingLabels {
        TimingLabels {
            connection: self.connection.clone(),
            stream: self.stream,
        }
    }

    fn token_counter(&self, kind: &'static str) -> ShardedCounter {
        self.families
            .tokens
            .get_or_create(&TokenLabels {
                connection: self.connection.clone(),
                model: self.model.clone(),
                r#type: kind,
            })
            .clone()
    }
}

/// What one request reports; see [`Metrics::request`].
pub struct RequestMetrics {
    series: Arc<Series>,
    started: Instant,
    upstream: Option<Duration>,
}

impl RequestMetrics {
    /// A non-streamed answer was produced.
    pub fn completed(self, usage: Option<TokenCounts>) {
        if let Some(usage) = usage {
            self.count_tokens(usage);
        }
        self.finish(200, self.upstream);
    }

    /// The client left before any byte of an answer was sent (`499`, nginx's
    /// status for it).
    pub fn abandoned(self) {
        self.finish(499, self.upstream);
    }

    /// The request failed before any byte of an answer was sent.
    pub fn failed(self, error: &ApiError) {
        if self.upstream.is_some() {
            self.upstream_error(error);
        }
        self.finish(error.status().as_u16(), self.upstream);
    }

    /// A stream is starting: what watches its chunks and reports when it is
    /// dropped (the door's stream adapter calls [`StreamObserver::observe`] with
    /// each poll of the chunks, so that no adapter of its own stands between).
    pub fn stream(self) -> StreamObserver {
        self.series.families.open_streams.inc();
        StreamObserver {
            report: self,
            waiting_since: None,
            upstream_wait: Duration::ZERO,
            first_chunk: false,
            usage: None,
        }
    }

    fn upstream_error(&self, error: &ApiError) {
        if let Some(cause) = connect_error_cause(error) {
            self.series
                .families
                .upstream_connect_errors
                .get_or_create(&CauseLabel { cause })
                .inc();
        }
        if let Some(kind) = upstream_error_kind(error) {
            self.series
                .families
                .upstream_errors
                .get_or_create(&UpstreamErrorLabels {
                    connection: self.series.connection.clone(),
                    kind,
                })
                .inc();
        }
    }

    fn count_tokens(&self, usage: TokenCounts) {
        let s = &self.series;
        if let Some(n) = usage.prompt {
            s.prompt_tokens
                .get_or_init(|| s.token_counter("prompt"))
                .inc_by(n);
        }
        if let Some(n) = usage.completion {
            s.completion_tokens
                .get_or_init(|| s.token_counter("completion"))
                .inc_by(n);
        }
    }

    fn first_chunk(&self) {
        let (s, m) = (&self.series, &self.series.families);
        s.time_to_first_token
            .get_or_init(|| {
                m.time_to_first_token
                    .get_or_create(&ConnectionLabel {
                        connection: s.connection.clone(),
                    })
                    .clone()
            })
            .observe(self.started.elapsed());
    }

    fn finish(&self, status: u16, upstream: Option<Duration>) {
        let (s, m) = (&self.series, &self.series.families);
        let total = self.started.elapsed();
        if status == 200 {
            s.ok.get_or_init(|| m.requests.get_or_create(&s.request_labels(200)).clone())
                .inc();
        } else {
            m.requests.get_or_create(&s.request_labels(status)).inc();
        }
        s.request_duration
            .get_or_init(|| m.request_duration.get_or_create(&s.timing_labels()).clone())
            .observe(total);
        if let Some(upstream) = upstream {
            s.upstream_duration
                .get_or_init(|| {
                    m.upstream_duration
                        .get_or_create(&s.timing_labels())
                        .clone()
                })
                .observe(upstream);
            s.overhead
                .get_or_init(|| {
                    m.overhead
                        .get_or_create(&StreamLabel { stream: s.stream })
                        .clone()
                })
                .observe(total.saturating_sub(upstream));
        }
    }
}

/// Classify an upstream failure; `None` for errors that are not the upstream's.
pub fn upstream_error_kind(error: &ApiError) -> Option<&'static str> {
    match error {
        ApiError::UpstreamTimeout { .. } => Some("timeout"),
        ApiError::UpstreamRejected(body) if body.status.is_client_error() => Some("status_4xx"),
        // A 200 whose body passed `max_response_body_mb`: the answer is the problem.
        ApiError::UpstreamRejected(body)
            if body.code.as_deref() == Some(crate::upstream::RESPONSE_TOO_LARGE) =>
        {
            Some("invalid_response")
        }
        ApiError::UpstreamRejected(_) => Some("status_5xx"),
        ApiError::UpstreamFailure { detail } => Some(failure_kind(detail)),
        _ => None,
    }
}

/// Why an upstream connection could not be opened, when that is why `error` came.
pub fn connect_error_cause(error: &ApiError) -> Option<&'static str> {
    // The prefix `UpstreamError::into_api_error` writes for connect failures.
    const CONNECT: &str = "cannot connect to upstream";
    match error {
        ApiError::Custom(_) => {
            crate::upstream::exhausted::Cause::of_answer(error).map(|c| c.label())
        }
        ApiError::UpstreamTimeout { detail } if detail.starts_with(CONNECT) => Some("timeout"),
        ApiError::UpstreamFailure { detail } if detail.starts_with(CONNECT) => Some("other"),
        _ => None,
    }
}

/// `UpstreamFailure`s carry only their detail text; these prefixes are the ones
/// `providers::upstream_http` (and the stream readers) write.
fn failure_kind(detail: &str) -> &'static str {
    const TRANSPORT: [&str; 6] = [
        "cannot connect",
        "upstream request failed",
        "upstream answer broke off",
        "upstream stream broke off",
        "cannot get a Google access token",
        "metadata server",
    ];
    if detail.starts_with("upstream answered ") {
        "status_5xx"
    } else if TRANSPORT.iter().any(|t| detail.contains(t)) {
        "transport"
    } else {
        "invalid_response"
    }
}

/// Watches the chunk stream of one answer: how long it waits on the upstream, when
/// the first chunk comes, the usage it carries. Reports once, when dropped.
pub struct StreamObserver {
    report: RequestMetrics,
    waiting_since: Option<Instant>,
    upstream_wait: Duration,
    first_chunk: bool,
    usage: Option<TokenCounts>,
}

impl StreamObserver {
    /// One poll of the chunk stream and what it gave.
    pub fn observe(&mut self, item: &Poll<Option<Result<Payload, ApiError>>>) {
        // Upstream wait: from the first poll that found nothing ready to the end of
        // the poll that delivered the next item (reading that one chunk counts as
        // waiting). The clock is read twice per wait, not at every poll in between:
        // a stream is polled several times per chunk.
        if item.is_pending() {
            self.waiting_since.get_or_insert_with(Instant::now);
        } else if let Some(since) = self.waiting_since.take() {
            self.upstream_wait += since.elapsed();
        }
        match item {
            Poll::Pending | Poll::Ready(None) => {}
            Poll::Ready(Some(Ok(chunk))) => {
                if !self.first_chunk {
                    self.first_chunk = true;
                    self.report.first_chunk();
                }
                if let Some(usage) = chunk.usage() {
                    self.usage = Some(usage);
                }
            }
            Poll::Ready(Some(Err(err))) => self.report.upstream_error(err),
        }
    }
}

impl Drop for StreamObserver {
    fn drop(&mut self) {
        let report = &self.report;
        if let Some(usage) = self.usage {
            report.count_tokens(usage);
        }
        let upstream = report.upstream.map(|u| u + self.upstream_wait);
        report.finish(200, upstream);
        report.series.families.open_streams.dec();
    }
}

/// `GET {metrics.path}`: the exposition, behind the bearer token when one is set.
pub async fn serve(State(state): State<Arc<AppState>>, uri: Uri, headers: HeaderMap) -> Response {
    let Some(metrics) = state.metrics() else {
        return crate::api::not_found(Method::GET, uri).await;
    };
    let gateway = state.gateway();
    if let Some(token) = gateway.config.settings.metrics.token() {
        if !bearer_matches(&headers, token) {
            let body = ErrorBody::new(
                StatusCode::UNAUTHORIZED,
                "The metrics endpoint needs `Authorization: Bearer <metrics token>`.",
                "invalid_request_error",
            )
            .code(Some("invalid_api_key".into()))
            .header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return ApiError::Custom(Box::new(body)).into_response();
        }
    }
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        Body::from(metrics.encode()),
    )
        .into_response()
}

/// Whether `Authorization: Bearer <token>` carries `token` (compared in constant time).
/// An empty token matches nothing, not a missing header.
fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    if token.is_empty() {
        return false;
    }
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, given)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_metrics_token_matches_nothing() {
        let mut headers = HeaderMap::new();
        assert!(!bearer_matches(&headers, ""));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert!(!bearer_matches(&headers, ""));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer t0k"),
        );
        assert!(bearer_matches(&headers, "t0k"));
    }

    #[test]
    fn label_values_are_capped() {
        let cap = LabelCap::new();
        for i in 0..MAX_LABEL_VALUES {
            assert_eq!(&*cap.get(Some(&format!("m{i}"))), format!("m{i}"));
        }
        assert_eq!(&*cap.get(Some("one-too-many")), OTHER);
        assert_eq!(&*cap.get(Some("m3")), "m3");
        assert_eq!(&*cap.get(None), NONE);
        assert_eq!(&*cap.get(Some("")), NONE);
    }

    #[test]
    fn series_are_found_again_and_the_cache_is_bounded() {
        let m = Metrics::new();
        fn key(model: &str) -> SeriesRef<'_> {
            SeriesRef {
                endpoint: "chat/completions",
                connection: Some("c"),
                model: Some(model),
                group: None,
                stream: false,
            }
        }
        let first = m.series.get(key("a"), || m.new_series(key("a")));
        let again = m.series.get(key("a"), || unreachable!("cached"));
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(&*first.group, NONE);
        let streamed = SeriesRef {
            stream: true,
            ..key("a")
        };
        let other = m.series.get(streamed, || m.new_series(streamed));
        assert!(!Arc::ptr_eq(&first, &other));

        for i in 0..MAX_CACHED_SERIES + 10 {
            let name = format!("m{i}");
            let series = m.series.get(key(&name), || m.new_series(key(&name)));
            let expected = if i < MAX_LABEL_VALUES - 1 {
                name.as_str()
            } else {
                OTHER
            };
            assert_eq!(&*series.model, expected, "{i}");
        }
        assert_eq!(
            m.series.maps.local().read().unwrap().len(),
            MAX_CACHED_SERIES
        );
    }

    /// Each serving thread finds its own `Series` for the same labels; what they
    /// count shows as one series.
    #[test]
    fn threads_count_into_the_same_series_through_their_own() {
        let m = Metrics::new();
        let key = SeriesRef {
            endpoint: "chat/completions",
            connection: Some("c"),
            model: Some("a"),
            group: Some("g"),
            stream: false,
        };
        let here = m.series.get(key, || m.new_series(key));
        let elsewhere = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    crate::shard::set_thread_shard(1);
                    m.series.get(key, || m.new_series(key))
                })
                .join()
                .unwrap()
        });
        assert!(!Arc::ptr_eq(&here, &elsewhere));
        for series in [here, elsewhere] {
            let report = RequestMetrics {
                series,
                started: Instant::now(),
                upstream: Some(Duration::ZERO),
            };
            report.completed(Some(TokenCounts {
                prompt: Some(3),
                completion: Some(4),
                ..TokenCounts::default()
            }));
        }
        let text = m.encode();
        for expected in [
            r#"lm_proxy_requests_total{endpoint="chat/completions",status="200",connection="c",model="a",group="g",stream="false"} 2"#,
            r#"lm_proxy_request_duration_seconds_count{connection="c",stream="false"} 2"#,
            r#"lm_proxy_upstream_duration_seconds_bucket{le="0.0005",connection="c",stream="false"} 2"#,
            r#"lm_proxy_tokens_total{connection="c",model="a",type="prompt"} 6"#,
            r#"lm_proxy_tokens_total{connection="c",model="a",type="completion"} 8"#,
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
    }

    #[test]
    fn upstream_failures_are_classified() {
        use crate::providers::upstream_http::status_error;
        let e = status_error(StatusCode::SERVICE_UNAVAILABLE, b"down", None);
        assert_eq!(upstream_error_kind(&e), Some("status_5xx"));
        let e = status_error(StatusCode::TOO_MANY_REQUESTS, b"{}", None);
        assert_eq!(upstream_error_kind(&e), Some("status_4xx"));
        let e = ApiError::upstream_failure("cannot connect to upstream: refused");
        assert_eq!(upstream_error_kind(&e), Some("transport"));
        let e = ApiError::upstream_failure("upstream stream broke off: reset");
        assert_eq!(upstream_error_kind(&e), Some("transport"));
        let e = ApiError::upstream_failure("connection 'x': upstream answer is not JSON: eof");
        assert_eq!(upstream_error_kind(&e), Some("invalid_response"));
        let e = ApiError::UpstreamTimeout {
            detail: "slow".into(),
        };
        assert_eq!(upstream_error_kind(&e), Some("timeout"));
        let e = ApiError::InvalidApiKey {
            status: http::StatusCode::UNAUTHORIZED,
        };
        assert_eq!(upstream_error_kind(&e), None);
    }

    #[test]
    fn bearer_tokens() {
        let mut headers = HeaderMap::new();
        assert!(!bearer_matches(&headers, "s3cret"));
        headers.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(bearer_matches(&headers, "s3cret"));
        assert!(!bearer_matches(&headers, "s3cre"));
        headers.insert(header::AUTHORIZATION, "bearer wrong!".parse().unwrap());
        assert!(!bearer_matches(&headers, "s3cret"));
    }

    #[test]
    fn exposition_names() {
        let m = Metrics::new();
        m.families.open_streams.inc();
        let text = m.encode();
        assert!(
            text.contains("# TYPE lm_proxy_open_streams gauge"),
            "{text}"
        );
        assert!(text.contains("lm_proxy_open_streams 1"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
