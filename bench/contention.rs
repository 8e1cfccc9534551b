//! What a request's bookkeeping costs when every serving thread does it at once:
//! the writes a request makes to memory other threads write too (a lock word, a
//! shared reference count, a shared counter) against the same work on per-thread
//! shards (`lm_proxy::shard`), on 1 to N threads.
//!
//!     cargo build --release --bins && target/release/bench-contention [max threads] [work]
//!
//! Each thread records the metrics of a request the way the request path did before
//! session 25 (three prometheus-client histograms, a counter and two token counters,
//! an `Arc` of the shared state and of the gateway cloned and dropped) and the way it
//! does now (lm-proxy's sharded counters and histograms, per-thread reference
//! counts), with some local work between requests (`work` rounds of arithmetic,
//! 300 by default, about 0.4 µs; 10000, about 13 µs, is a request's own CPU time or
//! more, at which collisions are rarer). Printed: nanoseconds per
//! request and thread; flat from 1 thread up means nothing is contended.
//! Timing, not a test: run it on an otherwise idle machine (bench/README.md).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use lm_proxy::metrics::{DurationHistogram, ShardedCounter};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

const BOUNDS: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

/// One request's bookkeeping as it was: shared locks and counts.
struct Shared {
    histograms: [Histogram; 3],
    requests: Counter,
    tokens: [Counter; 2],
    state: Arc<[u8; 64]>,
    gateway: Arc<[u8; 64]>,
}

/// The same on per-thread shards.
struct Sharded {
    histograms: [DurationHistogram; 3],
    requests: ShardedCounter,
    tokens: [ShardedCounter; 2],
}

/// Rounds of arithmetic between two bookkeepings (the second argument).
static WORK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// A request's own work between two bookkeepings, so that threads do not only
/// fight over the shared lines.
fn local_work(seed: u64) -> u64 {
    let mut x = seed;
    for i in 0..*WORK.get().unwrap_or(&300) {
        // Opaque to the optimizer, which would otherwise fold the loop.
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
    }
    x
}

fn run(threads: usize, seconds: f64, request: impl Fn(u64) + Sync) -> f64 {
    let stop = AtomicBool::new(false);
    let start = Barrier::new(threads + 1);
    let counts: Vec<u64> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|index| {
                let (stop, start, request) = (&stop, &start, &request);
                scope.spawn(move || {
                    lm_proxy::shard::set_thread_shard(index + 1);
                    start.wait();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..64 {
                            request(n);
                            n += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        start.wait();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let per_thread = counts.iter().sum::<u64>() as f64 / threads as f64;
    seconds * 1e9 / per_thread
}

fn main() {
    let most = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let work = std::env::args()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    WORK.set(work).unwrap();
    let shared = Shared {
        histograms: std::array::from_fn(|_| Histogram::new(BOUNDS.iter().copied())),
        requests: Counter::default(),
        tokens: Default::default(),
        state: Arc::new([0; 64]),
        gateway: Arc::new([0; 64]),
    };
    let sharded = Sharded {
        histograms: std::array::from_fn(|_| DurationHistogram::new(&BOUNDS)),
        requests: ShardedCounter::default(),
        tokens: Default::default(),
    };
    let local_only = |n: u64| {
        std::hint::black_box(local_work(n));
    };
    let before = |n: u64| {
        let state = shared.state.clone();
        let gateway = shared.gateway.clone();
        let x = local_work(n);
        let seconds = (x % 1000) as f64 * 1e-6;
        for histogram in &shared.histograms {
            histogram.observe(seconds);
        }
        shared.requests.inc();
        shared.tokens[0].inc_by(10);
        shared.tokens[1].inc_by(20);
        std::hint::black_box((state, gateway));
    };
    let now = |n: u64| {
        // The state and gateway handles are the thread's own: cloning them writes a
        // count no other thread writes.
        thread_local! {
            static HANDLES: (Arc<[u8; 64]>, Arc<[u8; 64]>) = (Arc::new([0; 64]), Arc::new([0; 64]));
        }
        let (state, gateway) = HANDLES.with(|(s, g)| (s.clone(), g.clone()));
        let x = local_work(n);
        let duration = Duration::from_micros(x % 1000);
        for histogram in &sharded.histograms {
            histogram.observe(duration);
        }
        sharded.requests.inc();
        sharded.tokens[0].inc_by(10);
        sharded.tokens[1].inc_by(20);
        std::hint::black_box((state, gateway));
    };
    let seconds = 1.0;
    println!(
        "ns per request and thread ({work} rounds of work between; 1 s per figure, 3 runs \
         each: min / median)"
    );
    println!("| threads | local work only | shared (before) | sharded (now) |");
    println!("|---|---|---|---|");
    let mut threads = 1;
    while threads <= most {
        let figures: Vec<String> = [&local_only as &(dyn Fn(u64) + Sync), &before, &now]
            .iter()
            .map(|request| {
                let mut runs: Vec<f64> = (0..3).map(|_| run(threads, seconds, request)).collect();
                runs.sort_by(f64::total_cmp);
                format!("{:.0} / {:.0}", runs[0], runs[1])
            })
            .collect();
        println!("| {threads} | {} |", figures.join(" | "));
        threads = if threads * 2 > most && threads < most {
            most
        } else {
            threads * 2
        };
    }
}
