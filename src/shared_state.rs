//! State shared by several lm-proxy replicas, kept in Redis: rate-limit windows and
//! the key-check cache. With no `backend` configured everything stays in process.
//!
//! The connection is opened on first use (a Redis that is down at startup does not
//! stop the gateway) and re-established by redis' `ConnectionManager` after that.
//! Every operation has a deadline, so a stuck Redis cannot stall requests; callers
//! decide what a failure means (the rate limiter follows `on_backend_error`).

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

/// Bound on one Redis round trip.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(1);

/// A Redis server used for shared state.
pub struct RedisStore {
    client: redis::Client,
    /// The URL without its password, for log lines.
    display: String,
    connection: OnceCell<ConnectionManager>,
    window_script: redis::Script,
    tokens_spent_script: redis::Script,
    spend_tokens_script: redis::Script,
}

/// Why a shared-state operation did not complete.
#[derive(Debug, Clone, thiserror::Error)]
#[error("redis backend {backend}: {problem}")]
pub struct BackendError {
    pub backend: String,
    pub problem: String,
}

/// Admit a request into a sliding window kept as a sorted set of admission times,
/// atomically (one script run). Redis' own clock is used, so replicas with skewed
/// clocks still share one window. Returns `{1, 0}` when admitted, `{0, wait_ms}`
/// otherwise; rejected requests are not recorded.
const WINDOW_SCRIPT: &str = r"
local key = KEYS[1]
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) < limit then
  redis.call('ZADD', key, now, now .. '-' .. t[2] .. '-' .. ARGV[3])
  redis.call('PEXPIRE', key, window)
  return {1, 0}
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return {0, tonumber(oldest[2]) + window - now}
";

/// A token window: a sorted set of `tokens-time-nonce` members scored by when they
/// were spent (Redis' clock). `{1, 0}` when under `limit`; `{0, wait_ms}` when
/// spent, the wait being until enough tokens leave the window.
const TOKENS_SPENT_SCRIPT: &str = r"
local key = KEYS[1]
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local spent = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
local total = 0
for i = 1, #spent, 2 do
  total = total + tonumber(string.match(spent[i], '^(%d+)'))
end
if total < limit then
  return {1, 0}
end
for i = 1, #spent, 2 do
  total = total - tonumber(string.match(spent[i], '^(%d+)'))
  if total < limit then
    return {0, tonumber(spent[i + 1]) + window - now}
  end
end
return {1, 0}
";

/// Add a finished request's tokens to a token window.
const SPEND_TOKENS_SCRIPT: &str = r"
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', key, now, ARGV[2] .. '-' .. now .. '-' .. t[2] .. '-' .. ARGV[3])
redis.call('PEXPIRE', key, ARGV[1])
return 1
";

impl RedisStore {
    /// Check the URL (no connection is made yet).
    pub fn new(url: &str) -> Result<RedisStore, String> {
        let client = redis::Client::open(url)
            .map_err(|e| format!("'{}' is not a Redis URL: {e}", redact_url(url)))?;
        Ok(RedisStore {
            client,
            display: redact_url(url),
            connection: OnceCell::new(),
            window_script: redis::Script::new(WINDOW_SCRIPT),
            tokens_spent_script: redis::Script::new(TOKENS_SPENT_SCRIPT),
            spend_tokens_script: redis::Script::new(SPEND_TOKENS_SCRIPT),
        })
    }

    fn error(&self, problem: impl std::fmt::Display) -> BackendError {
        BackendError {
            backend: self.display.clone(),
            problem: problem.to_string(),
        }
    }

    async fn connection(&self) -> Result<ConnectionManager, BackendError> {
        let connect = self
            .connection
            .get_or_try_init(|| async { self.client.get_connection_manager().await });
        match tokio::time::timeout(OPERATION_TIMEOUT, connect).await {
            Ok(Ok(connection)) => Ok(connection.clone()),
            Ok(Err(e)) => Err(self.error(e)),
            Err(_) => Err(self.error("no connection within 1 s")),
        }
    }

    async fn run<T, F>(&self, work: impl FnOnce(ConnectionManager) -> F) -> Result<T, BackendError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let connection = self.connection().await?;
        match tokio::time::timeout(OPERATION_TIMEOUT, work(connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.error(e)),
            Err(_) => Err(self.error("no answer within 1 s")),
        }
    }

    /// Sliding-window admission for `key`: `Ok(Ok(()))` admitted, `Ok(Err(wait))` over
    /// the limit (wait until a slot frees up).
    pub async fn admit(
        &self,
        key: &str,
        window: Duration,
        limit: usize,
    ) -> Result<Result<(), Duration>, BackendError> {
        let window_ms = window.as_millis().max(1) as u64;
        let nonce: u64 = rand::random();
        let (admitted, wait_ms): (i64, i64) = self
            .run(|mut connection| async move {
                self.window_script
                    .key(key)
                    .arg(window_ms)
                    .arg(limit as u64)
                    .arg(nonce)
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        Ok(window_verdict(admitted, wait_ms))
    }

    /// Whether the token window `key` is under `limit`: `Ok(Err(wait))` when it is
    /// spent (wait until enough tokens leave the window).
    pub async fn tokens_spent(
        &self,
        key: &str,
        window: Duration,
        limit: u64,
    ) -> Result<Result<(), Duration>, BackendError> {
        let window_ms = window.as_millis().max(1) as u64;
        let (under, wait_ms): (i64, i64) = self
            .run(|mut connection| async move {
                self.tokens_spent_script
                    .key(key)
                    .arg(window_ms)
                    .arg(limit)
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        Ok(window_verdict(under, wait_ms))
    }

    /// Add `tokens` spent now to the token window `key`.
    pub async fn spend_tokens(
        &self,
        key: &str,
        window: Duration,
        tokens: u64,
    ) -> Result<(), BackendError> {
        let window_ms = window.as_millis().max(1) as u64;
        let nonce: u64 = rand::random();
        let _: i64 = self
            .run(|mut connection| async move {
                self.spend_tokens_script
                    .key(key)
                    .arg(window_ms)
                    .arg(tokens)
                    .arg(nonce)
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Option<String>, BackendError> {
        self.run(|mut connection| async move {
            redis::cmd("GET")
                .arg(key)
                .query_async(&mut connection)
                .await
        })
        .await
    }

    pub async fn set_with_ttl(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<(), BackendError> {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        self.run(|mut connection| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut connection)
                .await
        })
        .await
    }
}

/// A window script's `{1, 0}` (admitted) or `{0, wait_ms}` (over the limit).
fn window_verdict(admitted: i64, wait_ms: i64) -> Result<(), Duration> {
    if admitted == 1 {
        Ok(())
    } else {
        Err(Duration::from_millis(wait_ms.max(0) as u64))
    }
}

/// A Redis URL with any password replaced, fit for messages.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "(unparsable URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_url("redis://:hunter2@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        assert!(!RedisStore::new("nope://x")
            .err()
            .unwrap()
            .contains("hunter2"));
        assert!(RedisStore::new("redis://127.0.0.1:1/").is_ok());
    }
}
