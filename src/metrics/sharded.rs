//! The request path's metrics, kept per serving thread ([`crate::shard`]) and added
//! up when `/metrics` is scraped.
//!
//! prometheus-client's `Histogram` takes a lock for each observation and its
//! `Counter` is one atomic for every thread: all serving threads wrote the same few
//! cache lines several times per request. These types count into the calling
//! thread's shard instead (relaxed atomics on lines no other serving thread
//! writes) and encode as the metric types they replace, with the same names and
//! labels.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

use crate::shard::Sharded;

/// Shards of one metric series: a counter takes 128 bytes a shard and a histogram
/// 256, and a busy server has hundreds of series; on a machine with more cores,
/// serving threads share shards (a write contended by a few threads, not by all).
pub(super) const SHARDS: usize = 17;

/// A sum kept per shard, added up when read (in two's complement, so that a gauge's
/// decrements, adds of `u64::MAX`, come out right).
#[derive(Clone)]
struct ShardedSum(Arc<Sharded<AtomicU64>>);

impl Default for ShardedSum {
    fn default() -> Self {
        ShardedSum(Arc::new(Sharded::at_most(SHARDS, AtomicU64::default)))
    }
}

impl ShardedSum {
    fn add(&self, n: u64) {
        self.0.local().fetch_add(n, Ordering::Relaxed);
    }

    fn total(&self) -> u64 {
        self.0.iter().fold(0u64, |total, shard| {
            total.wrapping_add(shard.load(Ordering::Relaxed))
        })
    }
}

/// A monotonic counter (OpenMetrics `counter`).
#[derive(Clone, Default)]
pub struct ShardedCounter(ShardedSum);

impl ShardedCounter {
    pub fn inc(&self) {
        self.0.add(1);
    }

    pub fn inc_by(&self, n: u64) {
        self.0.add(n);
    }

    pub fn get(&self) -> u64 {
        self.0.total()
    }
}

impl std::fmt::Debug for ShardedCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ShardedCounter").field(&self.get()).finish()
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A gauge that goes up and down (OpenMetrics `gauge`); a shard may go below zero
/// when another thread's shard took the increment, the total does not.
#[derive(Clone, Default)]
pub struct ShardedGauge(ShardedSum);

impl ShardedGauge {
    pub fn inc(&self) {
        self.0.add(1);
    }

    pub fn dec(&self) {
        self.0.add(u64::MAX);
    }

    pub fn get(&self) -> i64 {
        self.0.total() as i64
    }
}

impl std::fmt::Debug for ShardedGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ShardedGauge").field(&self.get()).finish()
    }
}

impl TypedMetric for ShardedGauge {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for ShardedGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Most finite bucket bounds a [`DurationHistogram`] takes.
pub const MAX_BOUNDS: usize = 17;

/// One thread's share of a histogram: the observations in each bucket (the last
/// is `+Inf`) and the sum of the observed durations in nanoseconds.
struct HistogramShard {
    buckets: [AtomicU64; MAX_BOUNDS + 1],
    sum_nanos: AtomicU64,
}

/// A histogram of durations in seconds (OpenMetrics `histogram`) with fixed bucket
/// bounds. Its count is the sum of its buckets, so a scrape taken while requests
/// are observed never shows a count that disagrees with the `+Inf` bucket.
#[derive(Clone)]
pub struct DurationHistogram {
    inner: Arc<HistogramInner>,
}

struct HistogramInner {
    /// Upper bounds in seconds, as exposed.
    bounds: &'static [f64],
    /// The same bounds in nanoseconds, as compared.
    bound_nanos: [u64; MAX_BOUNDS],
    shards: Sharded<HistogramShard>,
}

impl DurationHistogram {
    /// A histogram with these upper bounds (in seconds, increasing, at most
    /// [`MAX_BOUNDS`]) and an `+Inf` bucket after them.
    pub fn new(bounds: &'static [f64]) -> Self {
        assert!(
            bounds.len() <= MAX_BOUNDS,
            "at most {MAX_BOUNDS} bucket bounds"
        );
        let mut bound_nanos = [u64::MAX; MAX_BOUNDS];
        for (nanos, seconds) in bound_nanos.iter_mut().zip(bounds) {
            *nanos = (seconds * 1e9).round() as u64;
        }
        DurationHistogram {
            inner: Arc::new(HistogramInner {
                bounds,
                bound_nanos,
                shards: Sharded::at_most(SHARDS, || HistogramShard {
                    buckets: Default::default(),
                    sum_nanos: AtomicU64::new(0),
                }),
            }),
        }
    }

    /// Count one duration: in the first bucket whose bound it does not exceed.
    pub fn observe(&self, duration: Duration) {
        let inner = &*self.inner;
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let finite = &inner.bound_nanos[..inner.bounds.len()];
        let bucket = finite
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(finite.len());
        let shard = inner.shards.local();
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        shard.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The count in each bucket (non-cumulative, `+Inf` last) and the sum in
    /// seconds, over all shards.
    fn totals(&self) -> (Vec<(f64, u64)>, f64) {
        let inner = &*self.inner;
        let mut buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .map(|bound| (bound, 0))
            .collect();
        let mut sum_nanos = 0u128;
        for shard in inner.shards.iter() {
            for (total, count) in buckets.iter_mut().zip(&shard.buckets) {
                total.1 += count.load(Ordering::Relaxed);
            }
            sum_nanos += u128::from(shard.sum_nanos.load(Ordering::Relaxed));
        }
        (buckets, sum_nanos as f64 / 1e9)
    }
}

impl std::fmt::Debug for DurationHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (buckets, sum) = self.totals();
        f.debug_struct("DurationHistogram")
            .field("buckets", &buckets)
            .field("sum", &sum)
            .finish()
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (buckets, sum) = self.totals();
        let count = buckets.iter().map(|(_, n)| n).sum();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::Registry;

    fn exposition(register: impl FnOnce(&mut Registry)) -> String {
        let mut registry = Registry::default();
        register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    const BOUNDS: [f64; 5] = [0.000025, 0.0005, 0.001, 0.25, 1.0];

    /// Observed from several threads (and shards), the sharded types expose what
    /// prometheus-client's own types expose for the same observations.
    #[test]
    fn sharded_metrics_expose_what_prometheus_clients_own_types_expose() {
        let durations: Vec<Duration> = [
            0u64,
            1,
            24_999,
            25_000,
            25_001,
            499_999,
            500_000,
            1_000_000,
            250_000_000,
            999_999_999,
            1_000_000_000,
            1_000_000_001,
            7_000_000_000,
        ]
        .into_iter()
        .map(Duration::from_nanos)
        .collect();
        let ours = DurationHistogram::new(&BOUNDS);
        let (counter, gauge) = (ShardedCounter::default(), ShardedGauge::default());
        std::thread::scope(|scope| {
            for (index, chunk) in durations.chunks(3).enumerate() {
                let (ours, counter, gauge) = (&ours, &counter, &gauge);
                scope.spawn(move || {
                    crate::shard::set_thread_shard(index);
                    for &duration in chunk {
                        ours.observe(duration);
                        counter.inc_by(2);
                        gauge.inc();
                    }
                    // Decremented on another shard than the increments.
                    crate::shard::set_thread_shard(index + 1);
                    gauge.dec();
                });
            }
        });
        let theirs = Histogram::new(BOUNDS.iter().copied());
        let (their_counter, their_gauge) = (
            prometheus_client::metrics::counter::Counter::<u64>::default(),
            prometheus_client::metrics::gauge::Gauge::<i64>::default(),
        );
        for &duration in &durations {
            theirs.observe(duration.as_secs_f64());
            their_counter.inc_by(2);
            their_gauge.inc();
        }
        for _ in durations.chunks(3) {
            their_gauge.dec();
        }
        let expose = |h: &dyn Fn(&mut Registry)| exposition(|r| h(r));
        assert_eq!(
            expose(&|r| r.register("d", "help", ours.clone())),
            expose(&|r| r.register("d", "help", theirs.clone())),
        );
        assert_eq!(
            expose(&|r| r.register("c", "help", counter.clone())),
            expose(&|r| r.register("c", "help", their_counter.clone())),
        );
        assert_eq!(
            expose(&|r| r.register("g", "help", gauge.clone())),
            expose(&|r| r.register("g", "help", their_gauge.clone())),
        );
        assert_eq!(gauge.get(), durations.len() as i64 - 5);
    }
}
