//! `lm_proxy.handlers.RateLimiter`: a sliding-window limit of `max_requests` per
//! `window_seconds`, counted per API key, client IP, connection, group, or globally;
//! and, with `max_tokens`, of the tokens (prompt + completion, from the answers'
//! usage) spent in the window by the same bucket.
//!
//! Tokens are known only when an answer ends, so the token limit is checked before
//! the upstream call against what the bucket's finished requests spent, and each
//! request adds its tokens at its end ([`RequestHandler::token_meter`]). Requests in
//! flight when the limit is reached still finish: the limit can be passed by what
//! they spend, never by a request that starts after it.
//!
//! Each bucket keeps the instants of the requests it admitted inside the window.
//! The check and the insert happen under one lock, so concurrent requests can never
//! be admitted past the limit; rejected requests are not recorded. The number of
//! buckets is capped (`max_buckets`): expired buckets are dropped first, then the
//! least recently used.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::{HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;

use super::{RequestHandler, TokenMeter};
use crate::context::RequestContext;
use crate::error::{ApiError, ErrorBody};
use crate::shared_state::RedisStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    ApiKey,
    Ip,
    Connection,
    Group,
    Global,
}

/// The keyword arguments, with the reference's defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterArgs {
    /// Requests per window; 60 when neither this nor `max_tokens` is given, no
    /// request limit when only `max_tokens` is.
    #[serde(default)]
    pub max_requests: Option<usize>,
    /// Tokens (prompt + completion) per window; none by default.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(
        default = "default_window",
        deserialize_with = "crate::config::lenient::f64"
    )]
    pub window_seconds: f64,
    #[serde(default = "default_scope")]
    pub per: Scope,
    #[serde(default = "default_max_buckets")]
    pub max_buckets: usize,
    /// `"memory"` (default) or a `redis://` URL shared by several replicas.
    #[serde(default)]
    pub backend: Option<String>,
    /// What to do when the shared backend cannot be reached.
    #[serde(default)]
    pub on_backend_error: BackendPolicy,
}

/// `on_backend_error`: admit requests while the backend is down (fail open) or
/// answer 503 (fail closed, the default: a limit that silently stops limiting is
/// worse than a visible outage).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendPolicy {
    Allow,
    #[default]
    Deny,
}

/// The reference's request limit when nothing is configured.
const DEFAULT_MAX_REQUESTS: usize = 60;
fn default_window() -> f64 {
    60.0
}
fn default_scope() -> Scope {
    Scope::ApiKey
}
fn default_max_buckets() -> usize {
    10_000
}

struct Bucket {
    admitted: VecDeque<Instant>,
    last_used: Instant,
}

pub struct RateLimiter {
    /// `None`: tokens only.
    max_requests: Option<usize>,
    window: Duration,
    per: Scope,
    max_buckets: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Shared windows (several replicas); `None` keeps them in `buckets`.
    shared: Option<Arc<RedisStore>>,
    on_backend_error: BackendPolicy,
    /// `max_tokens`, with the windows it counts in.
    tokens: Option<Arc<TokenWindows>>,
}

/// The tokens each bucket spent in the window: in memory, or in the shared backend.
struct TokenWindows {
    max_tokens: u64,
    window: Duration,
    max_buckets: usize,
    buckets: Mutex<HashMap<String, TokenBucket>>,
    shared: Option<Arc<RedisStore>>,
    /// The backend's key prefix: limiters with different settings never share one.
    shared_prefix: String,
}

#[derive(Default)]
struct TokenBucket {
    /// When each finished request ended, and what it spent; oldest first.
    spent: VecDeque<(Instant, u64)>,
    /// The sum of `spent`.
    total: u64,
}

impl TokenBucket {
    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some(&(at, tokens)) = self.spent.front() {
            if now.duration_since(at) < window {
                break;
            }
            self.spent.pop_front();
            self.total -= tokens;
        }
    }
}

impl TokenWindows {
    /// `Err(wait)` when `key` has spent its tokens: how long until enough of them
    /// leave the window for the total to fall under the limit.
    fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let Some(bucket) = buckets.get_mut(key) else {
            return Ok(());
        };
        bucket.expire(now, self.window);
        if bucket.total < self.max_tokens {
            return Ok(());
        }
        let mut left = bucket.total;
        for &(at, tokens) in &bucket.spent {
            left -= tokens;
            if left < self.max_tokens {
                return Err((at + self.window).saturating_duration_since(now));
            }
        }
        Ok(())
    }

    /// Add what a finished request spent.
    fn charge(&self, key: &str, now: Instant, tokens: u64) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= self.max_buckets {
            let window = self.window;
            buckets.retain(|_, b| {
                b.expire(now, window);
                b.total > 0
            });
            // Still full of live buckets: the one that spent least makes room.
            if buckets.len() >= self.max_buckets {
                if let Some(least) = buckets
                    .iter()
                    .min_by_key(|(_, b)| b.total)
                    .map(|(k, _)| k.clone())
                {
                    buckets.remove(&least);
                }
            }
        }
        let bucket = buckets.entry(key.to_owned()).or_default();
        bucket.expire(now, self.window);
        bucket.spent.push_back((now, tokens));
        bucket.total += tokens;
    }

    fn limit_text(&self) -> String {
        format!("{} tokens/{}", self.max_tokens, window_text(self.window))
    }
}

/// `60s`, `0.5s`.
fn window_text(window: Duration) -> String {
    let secs = window.as_secs_f64();
    if secs.fract() == 0.0 {
        format!("{}s", secs as u64)
    } else {
        format!("{secs}s")
    }
}

impl RateLimiter {
    pub fn new(args: RateLimiterArgs) -> Result<Self, String> {
        if args.max_requests == Some(0) {
            return Err("max_requests must be at least 1".into());
        }
        if args.max_tokens == Some(0) {
            return Err("max_tokens must be at least 1".into());
        }
        let max_requests = match (args.max_requests, args.max_tokens) {
            (None, None) => Some(DEFAULT_MAX_REQUESTS),
            (requests, _) => requests,
        };
        if args.window_seconds <= 0.0 {
            return Err("window_seconds must be greater than 0".into());
        }
        if args.max_buckets == 0 {
            return Err("max_buckets must be at least 1".into());
        }
        let shared = match args.backend.as_deref().map(str::trim) {
            None | Some("") | Some("memory") => None,
            Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => Some(
                Arc::new(RedisStore::new(url).map_err(|p| format!("backend: {p}"))?),
            ),
            Some(other) => {
                return Err(format!(
                    "backend: '{}' is neither \"memory\" nor a redis:// URL",
                    crate::shared_state::redact_url(other)
                ))
            }
        };
        let window = Duration::from_secs_f64(args.window_seconds);
        let tokens = args.max_tokens.map(|max_tokens| {
            Arc::new(TokenWindows {
                max_tokens,
                window,
                max_buckets: args.max_buckets,
                buckets: Mutex::new(HashMap::new()),
                shared: shared.clone(),
                shared_prefix: format!(
                    "lm-proxy:tokenlimit:{:?}:{max_tokens}:{}:",
                    args.per,
                    window.as_millis()
                ),
            })
        });
        Ok(RateLimiter {
            max_requests,
            window,
            per: args.per,
            max_buckets: args.max_buckets,
            buckets: Mutex::new(HashMap::new()),
            shared,
            on_backend_error: args.on_backend_error,
            tokens,
        })
    }

    fn bucket_key(&self, ctx: &RequestContext) -> String {
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        match self.per {
            Scope::ApiKey => text(&ctx.api_key_id),
            Scope::Ip => ctx.remote_addr.clone(),
            Scope::Connection => text(&ctx.connection),
            Scope::Group => text(&ctx.group),
            Scope::Global => String::new(),
        }
    }

    /// Admit a request for `key` at `now`, or say how long until a slot frees up.
    pub fn try_admit(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let Some(max_requests) = self.max_requests else {
            return Ok(());
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= self.max_buckets {
            self.evict(&mut buckets, now);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert_with(|| Bucket {
            admitted: VecDeque::new(),
            last_used: now,
        });
        bucket.last_used = now;
        while let Some(&oldest) = bucket.admitted.front() {
            if now.duration_since(oldest) >= self.window {
                bucket.admitted.pop_front();
            } else {
                break;
            }
        }
        if bucket.admitted.len() < max_requests {
            bucket.admitted.push_back(now);
            Ok(())
        } else {
            let oldest = bucket.admitted.front().copied().unwrap_or(now);
            Err((oldest + self.window).saturating_duration_since(now))
        }
    }

    fn evict(&self, buckets: &mut HashMap<String, Bucket>, now: Instant) {
        let window = self.window;
        buckets.retain(|_, b| {
            b.admitted
                .back()
                .is_some_and(|&last| now.duration_since(last) < window)
        });
        while buckets.len() >= self.max_buckets {
            let Some(lru) = buckets
                .iter()
                .min_by_key(|(_, b)| b.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            buckets.remove(&lru);
        }
    }

    pub fn bucket_count(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn limit_text(&self) -> String {
        format!(
            "{}/{}",
            self.max_requests.unwrap_or(DEFAULT_MAX_REQUESTS),
            window_text(self.window)
        )
    }

    /// The backend failed: admit (and say so) or answer 503, as configured.
    fn backend_failed(&self, e: impl std::fmt::Display) -> Result<(), ApiError> {
        if self.on_backend_error == BackendPolicy::Allow {
            tracing::warn!(
                "rate limiter: {e}; admitting the request (on_backend_error = \"allow\")"
            );
            return Ok(());
        }
        tracing::error!("rate limiter: {e}; rejecting the request (on_backend_error = \"deny\")");
        let body = ErrorBody::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Rate limiting is unavailable; try again shortly.",
            "service_unavailable",
        )
        .code(Some("rate_limiter_unavailable".into()));
        Err(ApiError::Custom(Box::new(body)))
    }

    /// The token limit, before the upstream call.
    async fn check_tokens(&self, windows: &TokenWindows, key: &str) -> Result<(), ApiError> {
        let verdict = match &windows.shared {
            None => windows.check(key, Instant::now()),
            Some(store) => {
                let shared_key = format!("{}{key}", windows.shared_prefix);
                match store
                    .tokens_spent(&shared_key, windows.window, windows.max_tokens)
                    .await
                {
                    Ok(verdict) => verdict,
                    Err(e) => return self.backend_failed(e),
                }
            }
        };
        verdict.map_err(|wait| {
            over_limit(
                wait,
                format!("Token rate limit exceeded: {}", windows.limit_text()),
            )
        })
    }
}

/// 429 with `Retry-After`.
fn over_limit(wait: Duration, message: String) -> ApiError {
    // Whole seconds, rounded up, never 0 (a client retrying at once would fail).
    let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
    let body = ErrorBody::new(StatusCode::TOO_MANY_REQUESTS, message, "rate_limit_error")
        .code(Some("rate_limit_exceeded".into()))
        .header(
            HeaderName::from_static("retry-after"),
            HeaderValue::from(retry_after),
        );
    ApiError::Custom(Box::new(body))
}

#[async_trait]
impl RequestHandler for RateLimiter {
    async fn before(&self, ctx: &mut RequestContext) -> Result<(), ApiError> {
        let key = self.bucket_key(ctx);
        // Tokens first: a request refused for its tokens takes no request slot.
        if let Some(windows) = &self.tokens {
            self.check_tokens(windows, &key).await?;
        }
        let Some(max_requests) = self.max_requests else {
            return Ok(());
        };
        let verdict = match &self.shared {
            None => self.try_admit(&key, Instant::now()),
            Some(store) => {
                // Limiters with different settings must not share a window.
                let shared_key = format!(
                    "lm-proxy:ratelimit:{:?}:{}:{}:{key}",
                    self.per,
                    max_requests,
                    self.window.as_millis()
                );
                match store.admit(&shared_key, self.window, max_requests).await {
                    Ok(verdict) => verdict,
                    Err(e) => return self.backend_failed(e),
                }
            }
        };
        verdict
            .map_err(|wait| over_limit(wait, format!("Rate limit exceeded: {}", self.limit_text())))
    }

    fn token_meter(&self, ctx: &RequestContext) -> Option<TokenMeter> {
        let windows = self.tokens.clone()?;
        let key = self.bucket_key(ctx);
        Some(Box::new(move |tokens: u64| {
            if tokens == 0 {
                return;
            }
            match windows.shared.clone() {
                None => windows.charge(&key, Instant::now(), tokens),
                Some(store) => {
                    // The request is over: its tokens are added without holding it.
                    let shared_key = format!("{}{key}", windows.shared_prefix);
                    let window = windows.window;
                    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                        return;
                    };
                    runtime.spawn(async move {
                        if let Err(e) = store.spend_tokens(&shared_key, window, tokens).await {
                            tracing::warn!("rate limiter: {e}; {tokens} tokens were not counted");
                        }
                    });
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max: usize, window: f64, max_buckets: usize) -> RateLimiter {
        RateLimiter::new(RateLimiterArgs {
            max_requests: Some(max),
            max_tokens: None,
            window_seconds: window,
            per: Scope::ApiKey,
            max_buckets,
            backend: None,
            on_backend_error: BackendPolicy::Deny,
        })
        .unwrap()
    }

    fn args(max_requests: Option<usize>, max_tokens: Option<u64>) -> RateLimiterArgs {
        RateLimiterArgs {
            max_requests,
            max_tokens,
            window_seconds: 10.0,
            per: Scope::ApiKey,
            max_buckets: 3,
            backend: None,
            on_backend_error: BackendPolicy::Deny,
        }
    }

    #[test]
    fn the_request_limit_defaults_to_60_unless_only_tokens_are_limited() {
        assert_eq!(
            RateLimiter::new(args(None, None)).unwrap().max_requests,
            Some(60)
        );
        let tokens_only = RateLimiter::new(args(None, Some(100))).unwrap();
        assert_eq!(tokens_only.max_requests, None);
        let t0 = Instant::now();
        assert!((0..500).all(|_| tokens_only.try_admit("a", t0).is_ok()));
        let both = RateLimiter::new(args(Some(5), Some(100))).unwrap();
        assert_eq!(both.max_requests, Some(5));
        assert!(RateLimiter::new(args(None, Some(0))).is_err());
        assert!(RateLimiter::new(args(Some(0), None)).is_err());
    }

    #[test]
    fn tokens_spent_in_the_window_close_it_until_enough_of_them_leave() {
        let limiter = RateLimiter::new(args(None, Some(100))).unwrap();
        let windows = limiter.tokens.as_ref().unwrap();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(windows.check("a", t0).is_ok(), "nothing spent yet");
        windows.charge("a", at(0), 40);
        windows.charge("a", at(1000), 50);
        assert!(windows.check("a", at(1500)).is_ok(), "90 of 100");
        windows.charge("a", at(2000), 30);
        // 120 spent: under 100 again once the first 40 leave, at 10 s.
        assert_eq!(
            windows.check("a", at(2500)),
            Err(Duration::from_millis(7500))
        );
        assert!(
            windows.check("b", at(2500)).is_ok(),
            "other buckets unaffected"
        );
        assert!(
            windows.check("a", at(10_000)).is_ok(),
            "80 left in the window"
        );
        // A request that spends more than the whole limit waits for itself.
        windows.charge("c", at(0), 500);
        assert_eq!(
            windows.check("c", at(4000)),
            Err(Duration::from_millis(6000))
        );
        assert!(windows.check("c", at(10_000)).is_ok());
    }

    #[test]
    fn token_buckets_are_bounded() {
        let limiter = RateLimiter::new(args(None, Some(100))).unwrap();
        let windows = limiter.tokens.as_ref().unwrap();
        let t0 = Instant::now();
        for i in 0..100 {
            windows.charge(&format!("key-{i}"), t0, 1 + i);
        }
        let buckets = windows.buckets.lock().unwrap();
        assert_eq!(buckets.len(), 3);
        assert!(buckets.contains_key("key-99"), "the newest bucket is kept");
    }

    #[test]
    fn the_meter_charges_the_requests_bucket() {
        let limiter = RateLimiter::new(args(None, Some(100))).unwrap();
        let mut ctx = RequestContext::new(http::HeaderMap::new(), "127.0.0.1".into());
        ctx.api_key_id = Some("k".into());
        let meter = limiter.token_meter(&ctx).expect("a token limit meters");
        meter(150);
        let windows = limiter.tokens.as_ref().unwrap();
        assert!(windows.check("k", Instant::now()).is_err());
        assert!(windows.check("other", Instant::now()).is_ok());
        let requests_only = RateLimiter::new(args(Some(5), None)).unwrap();
        assert!(requests_only.token_meter(&ctx).is_none());
    }

    #[test]
    fn sliding_window_rejections_are_not_counted() {
        let l = limiter(2, 2.0, 100);
        let t0 = Instant::now();
        assert!(l.try_admit("a", t0).is_ok());
        assert!(l.try_admit("a", t0 + Duration::from_millis(500)).is_ok());
        let wait = l
            .try_admit("a", t0 + Duration::from_millis(900))
            .unwrap_err();
        assert_eq!(wait, Duration::from_millis(1100));
        assert!(l.try_admit("a", t0 + Duration::from_millis(1900)).is_err());
        // The first admitted request leaves the window at t0+2s; rejections did not count.
        assert!(l.try_admit("a", t0 + Duration::from_millis(2000)).is_ok());
        assert!(l.try_admit("a", t0 + Duration::from_millis(2100)).is_err());
        assert!(
            l.try_admit("b", t0 + Duration::from_millis(2100)).is_ok(),
            "other keys unaffected"
        );
    }

    #[test]
    fn bucket_count_is_bounded() {
        let l = limiter(1, 60.0, 10);
        let t0 = Instant::now();
        for i in 0..1000 {
            let _ = l.try_admit(&format!("key-{i}"), t0 + Duration::from_millis(i));
        }
        assert!(l.bucket_count() <= 10);
    }

    #[test]
    fn concurrent_admissions_never_exceed_the_limit() {
        let l = std::sync::Arc::new(limiter(10, 60.0, 100));
        let admitted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..64)
            .map(|_| {
                let (l, admitted) = (l.clone(), admitted.clone());
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        if l.try_admit("shared", Instant::now()).is_ok() {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(admitted.load(std::sync::atomic::Ordering::SeqCst), 10);
    }
}
