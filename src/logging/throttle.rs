//! A warning that may fire on every failed call (each refused `accept`, each upstream
//! connect that finds no descriptor left) written at most once per period, with a
//! count of the ones left out: when a resource runs out, a log line per failure
//! would itself be a flood, and the first line already says what is wrong.
//!
//! Shared by every thread that reports the same condition (the serving threads of a
//! server, every request), so the period holds for the process, not per thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One rate-limited warning.
pub struct Throttled {
    period_ms: u64,
    /// Milliseconds since [`epoch`] before which nothing more is written; 0: never
    /// written yet.
    next_ms: AtomicU64,
    /// Reports left out since the last line written.
    suppressed: AtomicU64,
}

/// A process-wide start of time, so that a `Throttled` can be a `static`.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Throttled {
    pub const fn new(period: Duration) -> Self {
        Throttled {
            period_ms: period.as_millis() as u64,
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Write `message()` as a warning unless one was written less than a period ago;
    /// the line written says how many were left out since the previous one.
    /// Returns whether a line was written.
    pub fn warn(&self, message: impl FnOnce() -> String) -> bool {
        // +1: 0 stands for "never written".
        let now = epoch().elapsed().as_millis() as u64 + 1;
        let next = self.next_ms.load(Ordering::Acquire);
        if now < next
            || self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.period_ms,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
        {
            // Inside the period, or another thread is writing this period's line.
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        if suppressed > 0 {
            tracing::warn!(
                "{} ({suppressed} more like it since the last report)",
                message()
            );
        } else {
            tracing::warn!("{}", message());
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period() {
        let log = Throttled::new(Duration::from_secs(3600));
        assert!(log.warn(|| "first".into()));
        for _ in 0..100 {
            assert!(!log.warn(|| unreachable!("not built while suppressed")));
        }
        assert_eq!(log.suppressed.load(Ordering::Relaxed), 100);

        let log = Throttled::new(Duration::ZERO);
        // A period of zero: the next report is due at once.
        assert!(log.warn(|| "a".into()));
        assert!(log.warn(|| "b".into()));
    }
}
