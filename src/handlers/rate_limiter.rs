//! `lm_proxy.handlers.RateLimiter`: a sliding-window limit of `max_requests` per
//! `window_seconds`, counted per API key, client IP, connection, group, or globally.
//!
//! Each bucket keeps the instants of the requests it admitted inside the window.
//! The check and the insert happen under one lock, so concurrent requests can never
//! be admitted past the limit; rejected requests are not recorded. The number of
//! buckets is capped (`max_buckets`): expired buckets are dropped first, then the
//! least recently used.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::{HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;

use super::RequestHandler;
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
    #[serde(default = "default_max_requests")]
    pub max_requests: usize,
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

fn default_max_requests() -> usize {
    60
}
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
    max_requests: usize,
    window: Duration,
    per: Scope,
    max_buckets: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Shared windows (several replicas); `None` keeps them in `buckets`.
    shared: Option<RedisStore>,
    on_backend_error: BackendPolicy,
}

impl RateLimiter {
    pub fn new(args: RateLimiterArgs) -> Result<Self, String> {
        if args.max_requests == 0 {
            return Err("max_requests must be at least 1".into());
        }
        if args.window_seconds <= 0.0 {
            return Err("window_seconds must be greater than 0".into());
        }
        if args.max_buckets == 0 {
            return Err("max_buckets must be at least 1".into());
        }
        let shared = match args.backend.as_deref().map(str::trim) {
            None | Some("") | Some("memory") => None,
            Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                Some(RedisStore::new(url).map_err(|p| format!("backend: {p}"))?)
            }
            Some(other) => {
                return Err(format!(
                    "backend: '{}' is neither \"memory\" nor a redis:// URL",
                    crate::shared_state::redact_url(other)
                ))
            }
        };
        Ok(RateLimiter {
            max_requests: args.max_requests,
            window: Duration::from_secs_f64(args.window_seconds),
            per: args.per,
            max_buckets: args.max_buckets,
            buckets: Mutex::new(HashMap::new()),
            shared,
            on_backend_error: args.on_backend_error,
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
        if bucket.admitted.len() < self.max_requests {
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
        let secs = self.window.as_secs_f64();
        if secs.fract() == 0.0 {
            format!("{}/{}s", self.max_requests, secs as u64)
        } else {
            format!("{}/{secs}s", self.max_requests)
        }
    }
}

#[async_trait]
impl RequestHandler for RateLimiter {
    async fn before(&self, ctx: &mut RequestContext) -> Result<(), ApiError> {
        let key = self.bucket_key(ctx);
        let verdict = match &self.shared {
            None => self.try_admit(&key, Instant::now()),
            Some(store) => {
                // Limiters with different settings must not share a window.
                let shared_key = format!(
                    "lm-proxy:ratelimit:{:?}:{}:{}:{key}",
                    self.per,
                    self.max_requests,
                    self.window.as_millis()
                );
                match store
                    .admit(&shared_key, self.window, self.max_requests)
                    .await
                {
                    Ok(verdict) => verdict,
                    Err(e) if self.on_backend_error == BackendPolicy::Allow => {
                        tracing::warn!("rate limiter: {e}; admitting the request (on_backend_error = \"allow\")");
                        Ok(())
                    }
                    Err(e) => {
                        tracing::error!("rate limiter: {e}; rejecting the request (on_backend_error = \"deny\")");
                        let body = ErrorBody::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "Rate limiting is unavailable; try again shortly.",
                            "service_unavailable",
                        )
                        .code(Some("rate_limiter_unavailable".into()));
                        return Err(ApiError::Custom(Box::new(body)));
                    }
                }
            }
        };
        match verdict {
            Ok(()) => Ok(()),
            Err(wait) => {
                // Whole seconds, rounded up, never 0 (a client retrying at once would fail).
                let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
                let body = ErrorBody::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("Rate limit exceeded: {}", self.limit_text()),
                    "rate_limit_error",
                )
                .code(Some("rate_limit_exceeded".into()))
                .header(
                    HeaderName::from_static("retry-after"),
                    HeaderValue::from(retry_after),
                );
                Err(ApiError::Custom(Box::new(body)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max: usize, window: f64, max_buckets: usize) -> RateLimiter {
        RateLimiter::new(RateLimiterArgs {
            max_requests: max,
            window_seconds: window,
            per: Scope::ApiKey,
            max_buckets,
            backend: None,
            on_backend_error: BackendPolicy::Deny,
        })
        .unwrap()
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
