//! `bench-load`: the load generator of the field's four scenarios (bench/field.sh,
//! bench/README.md "Session 9: the field's four scenarios").
//!
//! The "On the Bench" board compares LLM gateways by four figures; each subcommand
//! measures one of them against one server (the mock itself, a proxy or lm-proxy),
//! and the script subtracts the direct figures from the proxies' figures:
//!
//! - `latency`: non-streamed, one connection, one request after the other: p50/p99.
//! - `rate`: open loop at fixed rates (a request is due every 1/rate s whether or not
//!   earlier ones have come back), a sweep that stops at the first rate whose p99 is
//!   over `--max-p99-ms` or whose errors are over `--max-errors` percent. Latency is
//!   counted from the moment a request was due, not from when it could be sent, so a
//!   server that falls behind cannot hide it (no coordinated omission).
//! - `ttft`: streams, `--concurrency` of them at a time, closed loop: time to the
//!   first chunk that carries content text (p50/p99), and every stream must end.
//! - `streams`: N streams opened within `--ramp-ms`, for N in `--levels`, stopping at
//!   the first level where any stream stalls (see [`Rules`] for what a stall is).
//!
//! With `--pid P[,P...]` it also reads the CPU time (utime + stime, from
//! /proc/P/stat, with all descendants: nginx's workers) used during each measurement,
//! and samples the processes' resident memory (VmRSS) every 20 ms for the peak.
//! Every measurement prints a human line and a `RESULT key=value ...` line for the
//! script. Percentiles are exact (nearest rank over all samples, kept as µs).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;

const USAGE: &str = "usage: bench-load SCENARIO --url URL [options]
scenarios: latency | rate | ttft | streams
  --url URL            POST target (e.g. http://127.0.0.1:18801/v1/chat/completions)
  --key KEY            Authorization: Bearer KEY
  --model NAME         model name (the mock reads its plan from it: bench-w20, bench-s64-d20)
  --pid P[,P...]       server processes to measure (CPU time, peak RSS; with descendants)
  --duration S         seconds per measurement (latency, rate, ttft; default 10)
  --warmup S           seconds of warm-up before measuring (default 1)
  --rates R,R,...      rate: requests per second to sweep (default 500,1000,2000,4000,8000,16000,32000)
  --max-p99-ms MS      rate: the p99 bound (default 1000)
  --max-errors PCT     rate: the error bound in percent (default 0.1)
  --max-conns N        rate: connections at most (default 4096)
  --concurrency N      ttft: streams at a time (default 32)
  --deltas N           ttft/streams: content chunks each stream must bring (default 64)
  --levels N,N,...     streams: open streams to sweep (default 64,128,256,512,1024,2048,4096)
  --ramp-ms MS         streams: open each level's streams evenly within MS (default 500)
  --expected-ms MS     streams: how long a stream takes upstream (default 64 * 20)
  --gap-ms MS          streams: longest silence allowed in a stream (default 1000)
  --slack-ms MS        streams: allowed lateness past --expected-ms (default 2000)
  --timeout-ms MS      one request or stream at most (default 10000)";

fn main() {
    let opts = match Opts::parse(std::env::args().skip(1)) {
        Ok(opts) => opts,
        Err(problem) => {
            eprintln!("bench-load: {problem}\n{USAGE}");
            std::process::exit(2);
        }
    };
    // Few runtime threads: the load generator shares the machine with what it
    // measures; the script pins it with taskset and sets BENCH_LOAD_THREADS.
    let threads = std::env::var("BENCH_LOAD_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1usize);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ok = runtime.block_on(run(opts));
    std::process::exit(if ok { 0 } else { 1 });
}

#[derive(Clone, Debug)]
struct Opts {
    scenario: String,
    url: String,
    key: Option<String>,
    model: String,
    pids: Vec<u32>,
    duration: Duration,
    warmup: Duration,
    rates: Vec<u64>,
    max_p99: Duration,
    max_errors_pct: f64,
    max_conns: usize,
    concurrency: usize,
    deltas: usize,
    levels: Vec<usize>,
    ramp: Duration,
    rules: Rules,
    timeout: Duration,
}

impl Opts {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Opts, String> {
        let scenario = args.next().ok_or("no scenario")?;
        if !["latency", "rate", "ttft", "streams"].contains(&scenario.as_str()) {
            return Err(format!("unknown scenario {scenario:?}"));
        }
        let mut opts = Opts {
            model: match scenario.as_str() {
                "latency" => "bench",
                "rate" => "bench-w20",
                _ => "bench-s64-d20",
            }
            .into(),
            scenario,
            url: String::new(),
            key: None,
            pids: Vec::new(),
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            rates: vec![500, 1000, 2000, 4000, 8000, 16000, 32000],
            max_p99: Duration::from_secs(1),
            max_errors_pct: 0.1,
            max_conns: 4096,
            concurrency: 32,
            deltas: 64,
            levels: vec![64, 128, 256, 512, 1024, 2048, 4096],
            ramp: Duration::from_millis(500),
            rules: Rules {
                expected: Duration::from_millis(64 * 20),
                gap: Duration::from_millis(1000),
                slack: Duration::from_millis(2000),
                deltas: 64,
            },
            timeout: Duration::from_secs(10),
        };
        let mut expected_set = false;
        while let Some(flag) = args.next() {
            let value = args.next().ok_or(format!("{flag} needs a value"))?;
            let num = |v: &str| {
                v.parse::<f64>()
                    .map_err(|_| format!("{flag}: not a number: {v}"))
            };
            let list = |v: &str| -> Result<Vec<u64>, String> {
                v.split(',')
                    .map(|n| {
                        n.trim()
                            .parse()
                            .map_err(|_| format!("{flag}: not a list of numbers: {v}"))
                    })
                    .collect()
            };
            let ms = |v: &str| num(v).map(|n| Duration::from_secs_f64(n / 1000.0));
            let secs = |v: &str| num(v).map(Duration::from_secs_f64);
            match flag.as_str() {
                "--url" => opts.url = value,
                "--key" => opts.key = Some(value),
                "--model" => opts.model = value,
                "--pid" => opts.pids = list(&value)?.into_iter().map(|p| p as u32).collect(),
                "--duration" => opts.duration = secs(&value)?,
                "--warmup" => opts.warmup = secs(&value)?,
                "--rates" => opts.rates = list(&value)?,
                "--max-p99-ms" => opts.max_p99 = ms(&value)?,
                "--max-errors" => opts.max_errors_pct = num(&value)?,
                "--max-conns" => opts.max_conns = num(&value)? as usize,
                "--concurrency" => opts.concurrency = num(&value)? as usize,
                "--deltas" => opts.deltas = num(&value)? as usize,
                "--levels" => opts.levels = list(&value)?.into_iter().map(|n| n as usize).collect(),
                "--ramp-ms" => opts.ramp = ms(&value)?,
                "--expected-ms" => {
                    opts.rules.expected = ms(&value)?;
                    expected_set = true;
                }
                "--gap-ms" => opts.rules.gap = ms(&value)?,
                "--slack-ms" => opts.rules.slack = ms(&value)?,
                "--timeout-ms" => opts.timeout = ms(&value)?,
                other => return Err(format!("unknown option {other}")),
            }
        }
        if opts.url.is_empty() {
            return Err("--url is required".into());
        }
        opts.rules.deltas = opts.deltas;
        if !expected_set {
            opts.rules.expected = Duration::from_millis(opts.deltas as u64 * 20);
        }
        Ok(opts)
    }

    fn body(&self, stream: bool) -> Bytes {
        Bytes::from(format!(
            r#"{{"model":"{}","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#,
            self.model
        ))
    }
}

// ---------------------------------------------------------------- statistics

/// Nearest-rank percentile of sorted samples (`p` in 0..=100); 0 for no samples.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // The epsilon keeps float error from moving an exact rank up (0.999 * 1000).
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Summary {
    count: usize,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
}

fn summarize(mut samples: Vec<u64>) -> Summary {
    samples.sort_unstable();
    Summary {
        count: samples.len(),
        p50_us: percentile(&samples, 50.0),
        p99_us: percentile(&samples, 99.0),
        p999_us: percentile(&samples, 99.9),
        max_us: samples.last().copied().unwrap_or(0),
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

// ---------------------------------------------------------------- stalls

/// What a stream must do to count as held (scenario `streams`).
///
/// A stream **stalls** when any of these happens:
/// - it fails: connection error, a status other than 200, or the timeout;
/// - it is silent for longer than `gap` at any point, counted from the moment its
///   request is sent (so a late answer head counts too) to its last byte;
/// - it is incomplete: fewer than `deltas` content chunks, or no `data: [DONE]`;
/// - it ends later than `expected + slack` after its request was sent (`expected` is
///   what the mock takes: deltas x delay).
#[derive(Clone, Copy, Debug)]
struct Rules {
    expected: Duration,
    gap: Duration,
    slack: Duration,
    deltas: usize,
}

/// What one stream did, times relative to when its request was sent.
#[derive(Debug, Default)]
struct StreamRecord {
    failed: Option<String>,
    /// Arrival of the answer head and of every body frame after it.
    arrivals: Vec<Duration>,
    /// The first frame with content text in it.
    first_token: Option<Duration>,
    deltas: usize,
    done: bool,
}

impl StreamRecord {
    fn longest_gap(&self) -> Duration {
        let mut last = Duration::ZERO;
        let mut longest = Duration::ZERO;
        for &at in &self.arrivals {
            longest = longest.max(at.saturating_sub(last));
            last = at;
        }
        longest
    }

    fn end(&self) -> Duration {
        self.arrivals.last().copied().unwrap_or_default()
    }

    /// Why the stream stalled under `rules`, or None when it was held.
    fn stall(&self, rules: &Rules) -> Option<String> {
        if let Some(failure) = &self.failed {
            return Some(failure.clone());
        }
        let gap = self.longest_gap();
        if gap > rules.gap {
            return Some(format!("silent for {} ms", gap.as_millis()));
        }
        if self.deltas < rules.deltas || !self.done {
            return Some(format!(
                "incomplete: {} of {} deltas, [DONE] {}",
                self.deltas,
                rules.deltas,
                if self.done { "seen" } else { "missing" }
            ));
        }
        if self.end() > rules.expected + rules.slack {
            return Some(format!("ended after {} ms", self.end().as_millis()));
        }
        None
    }
}

/// Reads SSE lines as they arrive (split anywhere across frames): counts the
/// chunks with content text and notices `data: [DONE]`.
#[derive(Default)]
struct SseCounter {
    partial: Vec<u8>,
    deltas: usize,
    done: bool,
}

impl SseCounter {
    /// Feeds one frame; returns how many content chunks it completed.
    fn feed(&mut self, frame: &[u8]) -> usize {
        let before = self.deltas;
        let mut rest = frame;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            let line = &rest[..end];
            if self.partial.is_empty() {
                self.line(line);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.line(&whole);
            }
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        self.deltas - before
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"[DONE]" {
            self.done = true;
            return;
        }
        // Content text, not the empty content of the role chunk.
        const KEY: &[u8] = b"\"content\":\"";
        if let Some(at) = memchr::memmem::find(data, KEY) {
            if data.get(at + KEY.len()).is_some_and(|&c| c != b'"') {
                self.deltas += 1;
            }
        }
    }
}

// ---------------------------------------------------------------- the client

/// HTTP/1.1 connections to one server, reused after each complete answer.
struct Client {
    host: String,
    addr: String,
    path: String,
    key: Option<String>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    opened: AtomicUsize,
}

impl Client {
    fn new(url: &str, key: Option<String>) -> Result<Client, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or("only http:// URLs are supported")?;
        let (addr, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        Ok(Client {
            host: addr.to_string(),
            addr: addr.to_string(),
            path: if path.is_empty() { "/" } else { path }.to_string(),
            key,
            idle: Mutex::new(Vec::new()),
            opened: AtomicUsize::new(0),
        })
    }

    async fn connection(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        loop {
            let pooled = self.idle.lock().expect("pool").pop();
            match pooled {
                Some(mut sender) => {
                    if sender.ready().await.is_ok() {
                        return Ok(sender);
                    }
                }
                None => break,
            }
        }
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(connection);
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(sender)
    }

    fn give_back(&self, sender: SendRequest<Full<Bytes>>) {
        if !sender.is_closed() {
            self.idle.lock().expect("pool").push(sender);
        }
    }

    fn drop_idle(&self) {
        self.idle.lock().expect("pool").clear();
    }

    fn request(&self, body: Bytes) -> hyper::Request<Full<Bytes>> {
        let mut request = hyper::Request::post(&self.path)
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(key) = &self.key {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        request.body(Full::new(body)).expect("request")
    }

    /// One non-streamed exchange: Ok when the answer is a 200 with its whole body.
    async fn exchange(&self, body: Bytes) -> Result<(), String> {
        let mut sender = self.connection().await?;
        let answer = sender
            .send_request(self.request(body))
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = answer.status();
        answer
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?;
        self.give_back(sender);
        if status != 200 {
            return Err(format!("status {status}"));
        }
        Ok(())
    }

    /// One stream, every arrival timed from `sent`.
    async fn stream(&self, body: Bytes, sent: Instant, record: &mut StreamRecord) {
        let mut sender = match self.connection().await {
            Ok(sender) => sender,
            Err(e) => return record.failed = Some(e),
        };
        let answer = match sender.send_request(self.request(body)).await {
            Ok(answer) => answer,
            Err(e) => return record.failed = Some(format!("request: {e}")),
        };
        record.arrivals.push(sent.elapsed());
        if answer.status() != 200 {
            record.failed = Some(format!("status {}", answer.status()));
        }
        let mut body = answer.into_body();
        let mut sse = SseCounter::default();
        loop {
            match body.frame().await {
                None => break,
                Some(Err(e)) => {
                    record.failed = Some(format!("body: {e}"));
                    return;
                }
                Some(Ok(frame)) => {
                    let at = sent.elapsed();
                    record.arrivals.push(at);
                    if let Some(data) = frame.data_ref() {
                        if sse.feed(data) > 0 && record.first_token.is_none() {
                            record.first_token = Some(at);
                        }
                    }
                }
            }
        }
        record.deltas = sse.deltas;
        record.done = sse.done;
        self.give_back(sender);
    }
}

// ---------------------------------------------------------------- the probe

/// CPU time and resident memory of the measured server processes.
struct Probe {
    pids: Vec<u32>,
    peak_rss_kb: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

/// The processes and all their descendants (nginx: master and workers).
fn tree(pids: &[u32]) -> Vec<u32> {
    let mut all = Vec::new();
    let mut todo: Vec<u32> = pids.to_vec();
    while let Some(pid) = todo.pop() {
        all.push(pid);
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                todo.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
    all
}

fn rss_kb(pids: &[u32]) -> u64 {
    tree(pids)
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .sum()
}

/// utime + stime of the processes (USER_HZ is 100 on Linux).
fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks: u64 = tree(pids)
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name, which may contain spaces.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    ticks as f64 / 100.0
}

impl Probe {
    fn start(pids: Vec<u32>) -> Probe {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        if !pids.is_empty() {
            let (pids, peak, stop) = (pids.clone(), peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_kb(&pids), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
        Probe {
            pids,
            peak_rss_kb: peak,
            stop,
        }
    }

    /// Starts a measurement: the peak restarts from the current RSS.
    fn mark(&self) -> (f64, u64) {
        let now = rss_kb(&self.pids);
        self.peak_rss_kb.store(now, Ordering::Relaxed);
        (cpu_seconds(&self.pids), now)
    }

    /// CPU seconds since `mark` and the peak RSS (KB) since.
    fn since(&self, mark: (f64, u64)) -> (f64, u64) {
        let peak = self
            .peak_rss_kb
            .load(Ordering::Relaxed)
            .max(rss_kb(&self.pids));
        (cpu_seconds(&self.pids) - mark.0, peak)
    }

    fn describe(&self, cpu: f64, units: usize, unit: &str, peak_kb: u64) -> String {
        if self.pids.is_empty() {
            return "cpu_us_per=na peak_rss_kb=na".into();
        }
        let per = if units == 0 {
            0.0
        } else {
            cpu * 1e6 / units as f64
        };
        let _ = unit;
        format!("cpu_us_per={per:.1} peak_rss_kb={peak_kb}")
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------- scenarios

async fn run(opts: Opts) -> bool {
    let client = match Client::new(&opts.url, opts.key.clone()) {
        Ok(client) => Arc::new(client),
        Err(e) => {
            eprintln!("bench-load: {e}");
            return false;
        }
    };
    let probe = Probe::start(opts.pids.clone());
    match opts.scenario.as_str() {
        "latency" => latency(&opts, &client, &probe).await,
        "rate" => rate_sweep(&opts, &client, &probe).await,
        "ttft" => ttft(&opts, &client, &probe).await,
        _ => streams_sweep(&opts, &client, &probe).await,
    }
}

/// Closed loop, one connection: per-request latency of non-streamed answers.
async fn latency(opts: &Opts, client: &Client, probe: &Probe) -> bool {
    let body = opts.body(false);
    let warm_until = Instant::now() + opts.warmup;
    while Instant::now() < warm_until {
        if let Err(e) = client.exchange(body.clone()).await {
            eprintln!("bench-load: warm-up request failed: {e}");
            return false;
        }
    }
    let mark = probe.mark();
    let (mut samples, mut errors) = (Vec::new(), 0usize);
    let end = Instant::now() + opts.duration;
    while Instant::now() < end {
        let sent = Instant::now();
        match client.exchange(body.clone()).await {
            Ok(()) => samples.push(micros(sent.elapsed())),
            Err(_) => errors += 1,
        }
    }
    let (cpu, peak) = probe.since(mark);
    let s = summarize(samples);
    let rate = s.count as f64 / opts.duration.as_secs_f64();
    println!(
        "latency c1: {} requests ({rate:.0}/s), p50 {} us, p99 {} us, p99.9 {} us, errors {errors}",
        s.count, s.p50_us, s.p99_us, s.p999_us
    );
    println!(
        "RESULT scenario=latency requests={} rps={rate:.0} p50_us={} p99_us={} p999_us={} max_us={} errors={errors} {}",
        s.count,
        s.p50_us,
        s.p99_us,
        s.p999_us,
        s.max_us,
        probe.describe(cpu, s.count, "request", peak)
    );
    errors == 0
}

/// One open-loop run at `rate` for `duration`: latencies from when each was due.
async fn paced(
    opts: &Opts,
    client: &Arc<Client>,
    rate: u64,
    duration: Duration,
) -> (Vec<u64>, usize, usize) {
    let total = (rate as f64 * duration.as_secs_f64()).round() as u64;
    let body = opts.body(false);
    let permits = Arc::new(Semaphore::new(opts.max_conns));
    let mut tasks = tokio::task::JoinSet::new();
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0u64;
    while sent < total {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            let at = start + Duration::from_secs_f64(sent as f64 / rate as f64);
            let (client, body, permits) = (client.clone(), body.clone(), permits.clone());
            let timeout = opts.timeout;
            tasks.spawn(async move {
                // Waiting for a connection slot is part of the latency.
                let _permit = permits.acquire_owned().await.expect("semaphore");
                let outcome = tokio::time::timeout(timeout, client.exchange(body)).await;
                match outcome {
                    Ok(Ok(())) => Ok(micros(at.elapsed())),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err("timeout".to_string()),
                }
            });
            sent += 1;
        }
    }
    let (mut samples, mut errors, mut first_error) = (Vec::with_capacity(total as usize), 0, None);
    while let Some(done) = tasks.join_next().await {
        match done.expect("request task") {
            Ok(us) => samples.push(us),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("bench-load: at {rate}/s, first error: {e}");
    }
    (samples, errors, total as usize)
}

/// The highest rate that keeps p99 and errors within bounds.
async fn rate_sweep(opts: &Opts, client: &Arc<Client>, probe: &Probe) -> bool {
    let mut sustained = 0u64;
    let mut broke_at = None;
    if let Some(&first) = opts.rates.first() {
        paced(opts, client, first, opts.warmup).await;
    }
    for &rate in &opts.rates {
        let mark = probe.mark();
        let (samples, errors, total) = paced(opts, client, rate, opts.duration).await;
        let (cpu, peak) = probe.since(mark);
        let s = summarize(samples);
        let error_pct = errors as f64 * 100.0 / total.max(1) as f64;
        let held = s.p99_us <= micros(opts.max_p99) && error_pct <= opts.max_errors_pct;
        println!(
            "rate {rate}/s: {total} due, p50 {} us, p99 {} us, errors {errors} ({error_pct:.3} %), connections {}: {}",
            s.p50_us,
            s.p99_us,
            client.opened.load(Ordering::Relaxed),
            if held { "held" } else { "broken" }
        );
        println!(
            "RESULT scenario=rate-step rate={rate} requests={total} p50_us={} p99_us={} errors={errors} held={held} {}",
            s.p50_us,
            s.p99_us,
            probe.describe(cpu, s.count, "request", peak)
        );
        if !held {
            broke_at = Some(rate);
            break;
        }
        sustained = rate;
    }
    println!(
        "RESULT scenario=rate sustained_rps={sustained} broke_at={}",
        broke_at.map_or("none".into(), |r| r.to_string())
    );
    true
}

/// Closed loop of `concurrency` streams: time to the first content chunk.
async fn ttft(opts: &Opts, client: &Arc<Client>, probe: &Probe) -> bool {
    let body = opts.body(true);
    let rules = opts.rules;
    let run_for = |until: Instant| {
        let mut loops = tokio::task::JoinSet::new();
        for _ in 0..opts.concurrency {
            let (client, body) = (client.clone(), body.clone());
            loops.spawn(async move {
                let (mut firsts, mut bad, mut first_bad) = (Vec::new(), 0usize, None);
                while Instant::now() < until {
                    let sent = Instant::now();
                    let mut record = StreamRecord::default();
                    client.stream(body.clone(), sent, &mut record).await;
                    // Each stream must also end properly (all deltas and [DONE]).
                    let complete =
                        record.failed.is_none() && record.deltas >= rules.deltas && record.done;
                    match (complete, record.first_token) {
                        (true, Some(first)) => firsts.push(micros(first)),
                        _ => {
                            bad += 1;
                            first_bad.get_or_insert(
                                format!("{record:?}").chars().take(300).collect::<String>(),
                            );
                        }
                    }
                }
                (firsts, bad, first_bad)
            });
        }
        loops
    };
    let mut warm = run_for(Instant::now() + opts.warmup);
    while warm.join_next().await.is_some() {}
    let mark = probe.mark();
    let mut loops = run_for(Instant::now() + opts.duration);
    let (mut firsts, mut bad) = (Vec::new(), 0);
    while let Some(done) = loops.join_next().await {
        let (f, b, first_bad) = done.expect("stream loop");
        firsts.extend(f);
        bad += b;
        if let Some(e) = first_bad {
            eprintln!("bench-load: a bad stream: {e}");
        }
    }
    let (cpu, peak) = probe.since(mark);
    let s = summarize(firsts);
    println!(
        "ttft c{}: {} streams, first token p50 {} us, p99 {} us, bad streams {bad}",
        opts.concurrency, s.count, s.p50_us, s.p99_us
    );
    println!(
        "RESULT scenario=ttft concurrency={} streams={} p50_us={} p99_us={} p999_us={} bad={bad} {}",
        opts.concurrency,
        s.count,
        s.p50_us,
        s.p99_us,
        s.p999_us,
        probe.describe(cpu, s.count, "stream", peak)
    );
    bad == 0
}

/// Levels of open streams; stops at the first level where one stalls.
async fn streams_sweep(opts: &Opts, client: &Arc<Client>, probe: &Probe) -> bool {
    let body = opts.body(true);
    let mut held = 0usize;
    let mut broke_at = None;
    for &level in &opts.levels {
        // Each level opens its own connections, as that many clients would.
        client.drop_idle();
        let open = Arc::new(AtomicUsize::new(0));
        let most_open = Arc::new(AtomicUsize::new(0));
        let mark = probe.mark();
        let start = tokio::time::Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..level {
            let at = start + opts.ramp.mul_f64(i as f64 / level as f64);
            let (client, body, open, most_open) = (
                client.clone(),
                body.clone(),
                open.clone(),
                most_open.clone(),
            );
            let timeout = opts.timeout;
            tasks.spawn(async move {
                tokio::time::sleep_until(at).await;
                let sent = Instant::now();
                let now_open = open.fetch_add(1, Ordering::Relaxed) + 1;
                most_open.fetch_max(now_open, Ordering::Relaxed);
                let mut record = StreamRecord::default();
                if tokio::time::timeout(timeout, client.stream(body, sent, &mut record))
                    .await
                    .is_err()
                {
                    record.failed = Some("timeout".into());
                }
                open.fetch_sub(1, Ordering::Relaxed);
                record
            });
        }
        let (mut stalls, mut first_stall, mut firsts, mut longest_gap) =
            (0, None, Vec::new(), Duration::ZERO);
        while let Some(done) = tasks.join_next().await {
            let record = done.expect("stream task");
            longest_gap = longest_gap.max(record.longest_gap());
            if let Some(first) = record.first_token {
                firsts.push(micros(first));
            }
            if let Some(why) = record.stall(&opts.rules) {
                stalls += 1;
                first_stall.get_or_insert(why);
            }
        }
        let (cpu, peak) = probe.since(mark);
        client.drop_idle();
        let s = summarize(firsts);
        println!(
            "streams {level}: most open at once {}, stalls {stalls}{}, longest gap {} ms, first token p99 {} us",
            most_open.load(Ordering::Relaxed),
            first_stall.as_ref().map_or(String::new(), |w| format!(" (first: {w})")),
            longest_gap.as_millis(),
            s.p99_us
        );
        println!(
            "RESULT scenario=streams-step level={level} most_open={} stalls={stalls} longest_gap_ms={} ttft_p99_us={} idle_rss_kb={} {}",
            most_open.load(Ordering::Relaxed),
            longest_gap.as_millis(),
            s.p99_us,
            mark.1,
            probe.describe(cpu, level, "stream", peak)
        );
        if stalls > 0 {
            broke_at = Some(level);
            break;
        }
        held = level;
    }
    println!(
        "RESULT scenario=streams held={held} broke_at={}",
        broke_at.map_or("none".into(), |l| l.to_string())
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 50.0), 50);
        assert_eq!(percentile(&sorted, 99.0), 99);
        assert_eq!(percentile(&sorted, 99.9), 100);
        assert_eq!(percentile(&sorted, 100.0), 100);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 99.0), 0);
        // One slow sample in 1,000 is p99.9's, not p99's.
        let mut samples = vec![100u64; 999];
        samples.push(900_000);
        let s = summarize(samples);
        assert_eq!((s.p99_us, s.p999_us, s.max_us), (100, 100, 900_000));
    }

    fn rules() -> Rules {
        Rules {
            expected: Duration::from_millis(1280),
            gap: Duration::from_millis(1000),
            slack: Duration::from_millis(2000),
            deltas: 64,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn held_record() -> StreamRecord {
        StreamRecord {
            arrivals: (0..=65).map(|i| ms(1 + i * 20)).collect(),
            first_token: Some(ms(21)),
            deltas: 64,
            done: true,
            ..StreamRecord::default()
        }
    }

    #[test]
    fn a_paced_complete_stream_is_held() {
        assert_eq!(held_record().stall(&rules()), None);
        assert_eq!(held_record().longest_gap(), ms(20));
    }

    #[test]
    fn each_rule_makes_a_stall() {
        let rules = rules();
        let mut silent = held_record();
        for at in &mut silent.arrivals[30..] {
            *at += ms(1500);
        }
        assert!(silent.stall(&rules).unwrap().starts_with("silent"));

        // A late answer head is a gap too: counted from when the request was sent.
        let mut late_head = held_record();
        for at in &mut late_head.arrivals {
            *at += ms(1200);
        }
        assert!(late_head.stall(&rules).unwrap().starts_with("silent"));

        let mut short = held_record();
        short.deltas = 63;
        assert!(short.stall(&rules).unwrap().starts_with("incomplete"));
        let mut undone = held_record();
        undone.done = false;
        assert!(undone.stall(&rules).unwrap().starts_with("incomplete"));

        // Never silent for a second, but 3.5 s in all: over 1.28 s + 2 s.
        let mut slow = held_record();
        slow.arrivals = (0..=70).map(|i| ms(1 + i * 50)).collect();
        assert!(slow.stall(&rules).unwrap().starts_with("ended after"));

        let mut failed = held_record();
        failed.failed = Some("status 502".into());
        assert_eq!(failed.stall(&rules).as_deref(), Some("status 502"));
    }

    #[test]
    fn sse_lines_split_across_frames_are_counted_once() {
        let role =
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n";
        let delta = b"data: {\"choices\":[{\"delta\":{\"content\":\" tok\"}}]}\n\n";
        let mut counter = SseCounter::default();
        assert_eq!(counter.feed(role), 0, "the role chunk has no text");
        let (a, b) = delta.split_at(20);
        assert_eq!(counter.feed(a), 0);
        assert_eq!(counter.feed(b), 1);
        let mut two = delta.to_vec();
        two.extend_from_slice(delta);
        assert_eq!(counter.feed(&two), 2);
        assert!(!counter.done);
        assert_eq!(counter.feed(b"data: [DO"), 0);
        counter.feed(b"NE]\r\n\r\n");
        assert!(counter.done);
        assert_eq!(counter.deltas, 3);
    }
}
