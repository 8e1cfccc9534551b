//! Deadlines around connections that have no HTTP layer of their own to keep them
//! (Python connections): without them, a function that never answers (a dead
//! generation thread, a deadlock) would hold its client forever.
//!
//! The same settings and errors as HTTP upstreams: `first_byte_timeout` bounds a
//! non-streamed answer and a stream's first chunk (504 `upstream_timeout`);
//! `chunk_timeout` bounds the silence between two chunks (an error chunk, then
//! the stream ends). Both default to `timeout` (600 s when unset). Whatever is
//! running when a deadline passes is dropped, which for a Python connection
//! cancels the pending step and closes its generator (see `python/provider.rs`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::Value;

use super::{upstream_http::timeout_error, Provider, UpstreamCall};
use crate::error::ApiError;
use crate::streaming::ChunkStream;

/// How long a connection may take, checked once at startup.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// Until a non-streamed answer or a stream's first chunk.
    pub first_byte: Duration,
    /// Between two streamed chunks.
    pub chunk: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        let secs = Duration::from_secs_f64(super::DEFAULT_TIMEOUT_SECS);
        Deadlines {
            first_byte: secs,
            chunk: secs,
        }
    }
}

/// A provider whose calls are bounded by [`Deadlines`].
pub struct WithDeadlines {
    inner: Arc<dyn Provider>,
    deadlines: Deadlines,
}

impl WithDeadlines {
    pub fn wrap(inner: Arc<dyn Provider>, deadlines: Deadlines) -> Arc<dyn Provider> {
        Arc::new(WithDeadlines { inner, deadlines })
    }
}

/// Bounds every wait for the next chunk; after a timeout the error is the last
/// item and the inner stream is dropped at once (not when the client goes).
fn bounded(stream: ChunkStream, chunk: Duration) -> ChunkStream {
    Box::pin(futures_util::stream::unfold(
        Some(stream),
        move |state| async move {
            let mut stream = state?;
            match tokio::time::timeout(chunk, stream.next()).await {
                Ok(Some(item)) => Some((item, Some(stream))),
                Ok(None) => None,
                Err(_) => {
                    drop(stream);
                    Some((
                        Err(ApiError::UpstreamTimeout {
                            detail: format!(
                                "no chunk from the connection for {:.1}s",
                                chunk.as_secs_f64()
                            ),
                        }),
                        None,
                    ))
                }
            }
        },
    ))
}

#[async_trait]
impl Provider for WithDeadlines {
    async fn complete(&self, call: UpstreamCall) -> Result<Value, ApiError> {
        let limit = self.deadlines.first_byte;
        match tokio::time::timeout(limit, self.inner.complete(call)).await {
            Ok(result) => result,
            Err(_) => Err(timeout_error(limit)),
        }
    }

    async fn stream(&self, call: UpstreamCall) -> Result<ChunkStream, ApiError> {
        let limit = self.deadlines.first_byte;
        match tokio::time::timeout(limit, self.inner.stream(call)).await {
            Ok(Ok(stream)) => Ok(bounded(stream, self.deadlines.chunk)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(timeout_error(limit)),
        }
    }

    async fn list_models(&self) -> Result<Vec<String>, ApiError> {
        self.inner.list_models().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map};

    /// Answers after `delay`; streams one chunk, then waits `gap` before the next.
    struct Slow {
        delay: Duration,
        gap: Duration,
        dropped: Arc<std::sync::atomic::AtomicBool>,
    }

    struct SetOnDrop(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[async_trait]
    impl Provider for Slow {
        async fn complete(&self, _: UpstreamCall) -> Result<Value, ApiError> {
            let _guard = SetOnDrop(self.dropped.clone());
            tokio::time::sleep(self.delay).await;
            Ok(json!({"choices": []}))
        }

        async fn stream(&self, _: UpstreamCall) -> Result<ChunkStream, ApiError> {
            tokio::time::sleep(self.delay).await;
            let gap = self.gap;
            let guard = SetOnDrop(self.dropped.clone());
            Ok(Box::pin(futures_util::stream::unfold(
                (0, guard),
                move |(i, guard)| async move {
                    if i > 0 {
                        tokio::time::sleep(gap).await;
                    }
                    (i < 3).then(|| (Ok(json!({"i": i})), (i + 1, guard)))
                },
            )))
        }
    }

    fn call() -> UpstreamCall {
        UpstreamCall {
            model: "m".into(),
            params: Map::new(),
            headers: http::HeaderMap::new(),
            header_case: Default::default(),
            gateway_usage: false,
            raw_body: None,
        }
    }

    fn slow(delay: u64, gap: u64) -> (Arc<dyn Provider>, Arc<std::sync::atomic::AtomicBool>) {
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let provider = Arc::new(Slow {
            delay: Duration::from_secs(delay),
            gap: Duration::from_secs(gap),
            dropped: dropped.clone(),
        });
        (provider, dropped)
    }

    const LIMITS: Deadlines = Deadlines {
        first_byte: Duration::from_secs(5),
        chunk: Duration::from_secs(2),
    };

    #[tokio::test(start_paused = true)]
    async fn a_slow_answer_is_a_timeout_and_the_call_is_dropped() {
        let (inner, dropped) = slow(60, 0);
        let provider = WithDeadlines::wrap(inner, LIMITS);
        let err = provider.complete(call()).await.unwrap_err();
        assert!(matches!(err, ApiError::UpstreamTimeout { .. }), "{err:?}");
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
        let err = provider.stream(call()).await.err().unwrap();
        assert!(matches!(err, ApiError::UpstreamTimeout { .. }), "{err:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_ends_with_a_timeout_and_is_dropped() {
        let (inner, dropped) = slow(1, 60);
        let provider = WithDeadlines::wrap(inner, LIMITS);
        let mut stream = provider.stream(call()).await.unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), json!({"i": 0}));
        let err = stream.next().await.unwrap().unwrap_err();
        assert!(matches!(err, ApiError::UpstreamTimeout { .. }), "{err:?}");
        // Dropped at the timeout, before the client drops its end.
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
        assert!(stream.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn answers_in_time_pass_unchanged() {
        let (inner, _) = slow(1, 1);
        let provider = WithDeadlines::wrap(inner, LIMITS);
        assert!(provider.complete(call()).await.is_ok());
        let items: Vec<_> = provider.stream(call()).await.unwrap().collect().await;
        assert_eq!(items.len(), 3);
        assert!(items.iter().all(Result::is_ok));
    }
}
