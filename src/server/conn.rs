//! Client connections: the accept loop, the connection cap, and the timeouts that
//! keep slow, silent and idle clients from holding sockets.
//!
//! Why our own loop instead of `axum_server`'s: that one retries a failed `accept`
//! every 50 ms without a word (EMFILE locked every client out, silently), has no cap
//! on open connections, and applies no timeout before a request head (hyper-util's
//! protocol detection waits for the first bytes forever; hyper's HTTP/1
//! `header_read_timeout` uses one duration for both the head and the keep-alive wait,
//! and nothing covers HTTP/2 connections without streams).
//!
//! How the timeouts are kept without a timer per request: each connection has a
//! [`ConnState`] of a few atomics that the connection updates as it goes (a request
//! starts, its response ends, bytes arrive while nothing is in progress), stamped
//! with a coarse clock. A sweeper task per serving thread reads them every tick
//! (an eighth of the shortest timeout, at most 0.5 s) and tells overdue connections
//! to close. The request path pays a few relaxed atomic operations on memory the
//! connection owns.
//!
//! Phases of a connection, and the deadline the sweeper applies:
//! - `FIRST`: accepted, no request yet (TLS handshake included): closed when no
//!   request head is complete `header_timeout` after the accept;
//! - `BUSY`: requests in progress: no deadline here (the body read is bounded by
//!   the handler, `limits.body_timeout_seconds`);
//! - `IDLE`: no request in progress: closed (gracefully, HTTP/2 with GOAWAY) after
//!   `idle_timeout`;
//! - `HEAD`: HTTP/1, bytes of a next request arrived after `IDLE`: closed when that
//!   head is not complete within `header_timeout` of its first byte.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use futures_util::task::AtomicWaker;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::config::Limits;
use crate::logging::throttle::Throttled;
use crate::metrics::Metrics;

/// Connection phases (see the module documentation).
pub(super) const FIRST: u8 = 0;
const BUSY: u8 = 1;
const IDLE: u8 = 2;
const HEAD: u8 = 3;

/// Close requests, in increasing force.
pub(super) const KEEP: u8 = 0;
/// Idle or overdue for its idle time: graceful close (HTTP/2 GOAWAY), bounded.
pub(super) const CLOSE_IDLE: u8 = 1;
/// Server shutdown: graceful close, until the grace period ends.
const CLOSE_SHUTDOWN: u8 = 2;
/// Drop the connection now (header timeout, end of the grace period).
pub(super) const CLOSE_NOW: u8 = 3;

/// The client-connection settings of one server, fixed at startup.
#[derive(Clone, Debug)]
pub(crate) struct ConnLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub http2_keepalive_interval: Option<Duration>,
    pub http2_keepalive_timeout: Duration,
}

impl ConnLimits {
    pub fn new(limits: &Limits, max_connections: usize) -> Self {
        ConnLimits {
            header_timeout: limits.header_timeout(),
            idle_timeout: limits.idle_timeout(),
            max_connections,
            http2_keepalive_interval: limits.http2_keepalive_interval(),
            http2_keepalive_timeout: limits.http2_keepalive_timeout(),
        }
    }

    /// How often the sweeper looks: an eighth of the shortest timeout, so that a
    /// deadline is kept within about 12 %, between 5 ms and 0.5 s.
    fn tick(&self) -> Duration {
        (self.header_timeout.min(self.idle_timeout) / 8)
            .clamp(Duration::from_millis(5), Duration::from_millis(500))
    }
}

/// What all serving threads of one server share.
pub(crate) struct Shared {
    limits: ConnLimits,
    /// Open client connections, all threads.
    open: AtomicUsize,
    /// Woken when a connection closes while the cap was reached.
    room: tokio::sync::Notify,
    /// Milliseconds since `start`, advanced by every sweeper tick and accept.
    clock_ms: AtomicU64,
    start: Instant,
    /// Stop accepting; connections finish within `grace_ms`.
    stopping: tokio_util::sync::CancellationToken,
    grace_ms: AtomicU64,
    /// This server's metrics, for failed accepts.
    metrics: Option<Arc<Metrics>>,
    /// Failed accepts, all serving threads: one line per second at most.
    accept_log: Throttled,
    /// The cap reached, all serving threads: one line per 10 s at most (a normal
    /// state under load, not a fault).
    cap_log: Throttled,
}

impl Shared {
    pub fn new(limits: ConnLimits, metrics: Option<Arc<Metrics>>) -> Arc<Shared> {
        Arc::new(Shared {
            metrics,
            accept_log: Throttled::new(Duration::from_secs(1)),
            cap_log: Throttled::new(Duration::from_secs(10)),
            limits,
            open: AtomicUsize::new(0),
            room: tokio::sync::Notify::new(),
            clock_ms: AtomicU64::new(0),
            start: Instant::now(),
            stopping: tokio_util::sync::CancellationToken::new(),
            grace_ms: AtomicU64::new(0),
        })
    }

    /// Stop accepting, let open requests finish within `grace`, then close the rest.
    pub fn shutdown(&self, grace: Duration) {
        self.grace_ms.store(
            grace.as_millis().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
        self.stopping.cancel();
    }

    /// Open client connections now (all threads).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn now(&self) -> u64 {
        self.clock_ms.load(Ordering::Relaxed)
    }

    fn advance_clock(&self) -> u64 {
        let now = self.start.elapsed().as_millis() as u64;
        self.clock_ms.fetch_max(now, Ordering::Relaxed).max(now)
    }
}

/// One connection's progress, written by the connection and read by the sweeper.
pub(super) struct ConnState {
    shared: Arc<Shared>,
    /// Requests in progress (HTTP/2: open streams being answered).
    active: AtomicU32,
    phase: AtomicU8,
    /// Clock (ms) when the phase began.
    since: AtomicU64,
    http2: AtomicBool,
    close: AtomicU8,
    waker: AtomicWaker,
    /// Reads that brought bytes, for [`ClientLeft`] (written by the connection's
    /// task only).
    reads: AtomicU32,
}

impl ConnState {
    fn new(shared: Arc<Shared>, now: u64) -> Self {
        ConnState {
            shared,
            active: AtomicU32::new(0),
            phase: AtomicU8::new(FIRST),
            since: AtomicU64::new(now),
            http2: AtomicBool::new(false),
            close: AtomicU8::new(KEEP),
            waker: AtomicWaker::new(),
            reads: AtomicU32::new(0),
        }
    }

    pub(super) fn request_started(&self, http2: bool) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.phase.store(BUSY, Ordering::Relaxed);
        if http2 {
            self.http2.store(true, Ordering::Relaxed);
        }
    }

    fn request_ended(&self) {
        if self.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.since.store(self.shared.now(), Ordering::Relaxed);
            self.phase.store(IDLE, Ordering::Relaxed);
        }
    }

    /// Bytes arrived: after an idle time, the head of a next request has begun.
    #[inline]
    fn bytes_read(&self) {
        // One writer: a load and a store, not an atomic add (a locked instruction,
        // some 20 cycles, on every read).
        self.reads.store(
            self.reads.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
        if self.phase.load(Ordering::Relaxed) == IDLE {
            self.since.store(self.shared.now(), Ordering::Relaxed);
            self.phase.store(HEAD, Ordering::Relaxed);
        }
    }

    /// Ask the connection to close (a stronger request replaces a weaker one).
    fn request_close(&self, how: u8) {
        if self.close.fetch_max(how, Ordering::AcqRel) < how {
            self.waker.wake();
        }
    }

    /// Resolves with the close request once it is at least `at_least`.
    fn closing(&self, at_least: u8) -> impl Future<Output = u8> + '_ {
        std::future::poll_fn(move |cx| self.poll_closing(cx, at_least))
    }

    /// Ready with the close request once it is at least `at_least`.
    pub(super) fn poll_closing(&self, cx: &mut Context<'_>, at_least: u8) -> Poll<u8> {
        let how = self.close.load(Ordering::Acquire);
        if how >= at_least {
            return Poll::Ready(how);
        }
        self.waker.register(cx.waker());
        match self.close.load(Ordering::Acquire) {
            how if how >= at_least => Poll::Ready(how),
            _ => Poll::Pending,
        }
    }

    /// The close asked of this connection so far (`KEEP`: none).
    pub(super) fn close_requested(&self) -> u8 {
        self.close.load(Ordering::Acquire)
    }

    /// Is the connection waiting for nothing but its client (no request in
    /// progress, no head being received), and since when?
    fn idle_since(&self) -> Option<u64> {
        if self.active.load(Ordering::Relaxed) > 0 || self.close.load(Ordering::Relaxed) != KEEP {
            return None;
        }
        let since = self.since.load(Ordering::Relaxed);
        match self.phase.load(Ordering::Relaxed) {
            IDLE | BUSY => Some(since),
            HEAD if self.http2.load(Ordering::Relaxed) => Some(since),
            // Accepted, silent: as good as idle once it has had a moment to speak.
            FIRST if self.shared.now().saturating_sub(since) >= 100 => Some(since),
            _ => None,
        }
    }

    /// The close the sweeper owes this connection at `now`, if any.
    fn overdue(&self, now: u64) -> Option<u8> {
        if self.active.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let limits = &self.shared.limits;
        let age = Duration::from_millis(now.saturating_sub(self.since.load(Ordering::Relaxed)));
        match self.phase.load(Ordering::Relaxed) {
            FIRST => (age > limits.header_timeout).then_some(CLOSE_NOW),
            HEAD if !self.http2.load(Ordering::Relaxed) => {
                (age > limits.header_timeout).then_some(CLOSE_NOW)
            }
            _ => (age > limits.idle_timeout).then_some(CLOSE_IDLE),
        }
    }
}

/// The connections of one serving thread (one listener).
#[derive(Default)]
struct Registry {
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
    /// Woken when a connection of this registry closes (shutdown waits on it).
    closed: tokio::sync::Notify,
}

impl Registry {
    fn insert(&self, conn: Arc<ConnState>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.conns.lock().expect("registry lock").insert(id, conn);
        id
    }

    fn remove(&self, id: u64) {
        self.conns.lock().expect("registry lock").remove(&id);
        self.closed.notify_waiters();
    }

    fn is_empty(&self) -> bool {
        self.conns.lock().expect("registry lock").is_empty()
    }

    fn close_all(&self, how: u8) {
        for conn in self.conns.lock().expect("registry lock").values() {
            conn.request_close(how);
        }
    }

    /// Close the connection idle the longest, to make room; false when none is idle.
    fn evict_idle(&self) -> bool {
        let conns = self.conns.lock().expect("registry lock");
        let oldest = conns
            .values()
            .filter_map(|c| c.idle_since().map(|since| (since, c)))
            .min_by_key(|(since, _)| *since);
        match oldest {
            Some((_, conn)) => {
                conn.request_close(CLOSE_NOW);
                true
            }
            None => false,
        }
    }

    /// Wait until every connection has closed.
    async fn drained(&self) {
        loop {
            let notified = self.closed.notified();
            if self.is_empty() {
                return;
            }
            notified.await;
        }
    }
}

/// Removes a connection from the counts when its task ends, however it ends.
struct Registration {
    registry: Arc<Registry>,
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.remove(self.id);
        let before = self.shared.open.fetch_sub(1, Ordering::AcqRel);
        if before >= self.shared.limits.max_connections {
            self.shared.room.notify_waiters();
        }
    }
}

/// Accept errors that mean "out of a resource" (descriptors, memory): retrying at
/// once would spin, so the loop backs off and makes room. The `cause` label of
/// `lm_proxy_accept_errors_total`.
fn resource_cause(e: &io::Error) -> Option<&'static str> {
    match e.raw_os_error()? {
        libc::EMFILE | libc::ENFILE => Some("descriptors"),
        libc::ENOBUFS | libc::ENOMEM => Some("memory"),
        _ => None,
    }
}

/// Errors about one connection that died in the backlog: just accept the next.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || matches!(e.raw_os_error(), Some(libc::EPROTO | libc::EPERM))
}

/// The hyper connection builders for these limits; `client_spellings`: HTTP/1 requests
/// carry how the client spelled its header names (a map per request, for the
/// HTTPHeadersForwarder, `upstream::client_spellings`).
struct Builders {
    /// Either protocol, told apart by reading the first bytes (TLS connections and
    /// plain ones that may be HTTP/2).
    auto: auto::Builder<TokioExecutor>,
    /// Plain connections whose first bytes are not HTTP/2's preface (see [`sniff`]).
    http1: hyper::server::conn::http1::Builder,
}

fn builders(limits: &ConnLimits, client_spellings: bool) -> Builders {
    let mut auto = auto::Builder::new(TokioExecutor::new());
    // HTTP/1 head and keep-alive deadlines are the sweeper's: hyper's own
    // `header_read_timeout` uses one duration for the head and the keep-alive wait.
    auto.http1()
        .header_read_timeout(None)
        .preserve_header_case(client_spellings);
    let mut http2 = auto.http2();
    http2.timer(TokioTimer::new());
    if let Some(interval) = limits.http2_keepalive_interval {
        http2
            .keep_alive_interval(interval)
            .keep_alive_timeout(limits.http2_keepalive_timeout);
    }
    let mut http1 = hyper::server::conn::http1::Builder::new();
    // `half_close`: hyper does not read while a response is in progress. Without it,
    // hyper reads to notice a client that leaves mid-response, and as the request's
    // header values still hold its first read buffer, that read takes a second 8 KiB
    // buffer for every open stream. [`ClientLeft`] notices the client leaving instead,
    // with a peek.
    http1
        .timer(TokioTimer::new())
        .half_close(true)
        .header_read_timeout(None)
        .preserve_header_case(client_spellings);
    Builders { auto, http1 }
}

/// What a plain connection's first bytes say it speaks, read with a peek so that
/// they stay in the socket. Why not let hyper-util's auto builder tell: it reads
/// them itself and hands them back through a rewind buffer, so hyper's HTTP/1 read
/// buffer sees a first read of a few bytes, then must reserve its full 8 KiB on top
/// of them and doubles to 16 KiB, which the connection keeps for its lifetime
/// (measured with heaptrack: the largest single cost of an open stream). Served
/// directly, an HTTP/1 connection reads its request into one 8 KiB buffer.
#[derive(Debug, PartialEq, Eq)]
enum Sniffed {
    Http1,
    /// HTTP/2 with prior knowledge, or too few bytes yet to rule it out.
    MaybeHttp2,
    Closed,
}

const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn sniff(stream: &TcpStream) -> Sniffed {
    let mut first = [0u8; HTTP2_PREFACE.len()];
    match stream.peek(&mut first).await {
        Ok(0) | Err(_) => Sniffed::Closed,
        Ok(n) => classify(&first[..n]),
    }
}

fn classify(first: &[u8]) -> Sniffed {
    if HTTP2_PREFACE.starts_with(first) || first.starts_with(HTTP2_PREFACE) {
        Sniffed::MaybeHttp2
    } else {
        Sniffed::Http1
    }
}

/// Serve one listening socket (plain or TLS) until `shared` is shut down, then let
/// the connections finish within the grace period.
pub(crate) async fn serve(
    listener: std::net::TcpListener,
    tls: Option<RustlsConfig>,
    router: Router,
    doors: super::Doors,
    shared: Arc<Shared>,
    client_spellings: Arc<AtomicBool>,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let registry = Arc::new(Registry::default());
    // Chosen per connection: the config in force when it is accepted decides.
    let builders = [false, true].map(|keep| Arc::new(builders(&shared.limits, keep)));
    let tls = tls.map(RustlsAcceptor::new);
    let sweeper = tokio::spawn(sweep(registry.clone(), shared.clone()));

    let mut backoff = Duration::from_millis(5);
    let stopping = shared.stopping.clone();
    loop {
        // At the cap: make room by closing an idle connection, or wait for one to end
        // (new connections wait in the listen backlog meanwhile).
        while shared.open.load(Ordering::Acquire) >= shared.limits.max_connections {
            let evicted = registry.evict_idle();
            shared.cap_log.warn(|| {
                format!(
                    "client connection limit reached ({} open, limits.max_connections); {}",
                    shared.limits.max_connections,
                    if evicted {
                        "closing the longest-idle connections to make room"
                    } else {
                        "none is idle: new connections wait until one closes"
                    }
                )
            });
            let wait = if evicted { 5 } else { 50 };
            tokio::select! {
                _ = stopping.cancelled() => break,
                _ = shared.room.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            }
        }
        let accepted = tokio::select! {
            biased;
            _ = stopping.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = Duration::from_millis(5);
                accepted
            }
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                let cause = resource_cause(&e);
                if let Some(metrics) = &shared.metrics {
                    metrics.accept_error(cause.unwrap_or("other"));
                }
                // Open connections are served meanwhile; new ones wait in the backlog.
                shared.accept_log.warn(|| {
                    format!(
                        "cannot accept connections: {e}{}; open connections are still \
                         served, new ones wait; retrying in {} ms",
                        match cause {
                            Some("descriptors") => {
                                " (out of file descriptors: idle connections are closed to \
                                 make room; raise the open-files limit or lower \
                                 limits.max_connections)"
                            }
                            Some(_) => {
                                " (out of memory: idle connections are closed to make room)"
                            }
                            None => "",
                        },
                        backoff.as_millis()
                    )
                });
                if cause.is_some() {
                    registry.evict_idle();
                }
                tokio::select! {
                    _ = stopping.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // Small writes (SSE chunks) must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        shared.open.fetch_add(1, Ordering::AcqRel);
        let conn = Arc::new(ConnState::new(shared.clone(), shared.advance_clock()));
        let id = registry.insert(conn.clone());
        let registration = Registration {
            registry: registry.clone(),
            shared: shared.clone(),
            id,
        };
        let service = ConnService {
            router: router.clone(),
            doors: doors.clone(),
            peer,
            conn: conn.clone(),
        };
        let socket = Arc::new(stream);
        let io = TrackedIo {
            socket: socket.clone(),
            conn: conn.clone(),
        };
        let spellings = client_spellings.load(Ordering::Relaxed);
        let builder = builders[usize::from(spellings)].clone();
        // One task type per transport: a task is as large as its future's largest
        // state, and the TLS states (handshake, TLS stream) would make every plain
        // connection's task that large too.
        match tls.clone() {
            None => tokio::spawn(async move {
                let _registration = registration;
                // A client that sends nothing is closed by the sweeper (`FIRST`).
                let sniffed = tokio::select! {
                    sniffed = sniff(&socket) => sniffed,
                    _ = conn.closing(CLOSE_IDLE) => return,
                };
                match sniffed {
                    // The gateway's own HTTP/1 server side (`super::http1`), unless
                    // the client's header spellings are to be recorded (hyper's
                    // `preserve_header_case`).
                    Sniffed::Http1 if !spellings => super::http1::serve(io, service).await,
                    Sniffed::Http1 => {
                        let connection = std::pin::pin!(builder
                            .http1
                            .serve_connection(TokioIo::new(io), service)
                            .with_upgrades());
                        drive(connection, &conn, Some(&socket)).await;
                    }
                    Sniffed::MaybeHttp2 => {
                        // Boxed: hyper-util's auto connection has room for both
                        // protocols' states (twice the HTTP/1 connection); inline, it
                        // would make every plain connection's task that large
                        // (`-Zprint-type-sizes`: 3,464 bytes against 1,048).
                        let mut connection = Box::pin(
                            builder
                                .auto
                                .serve_connection_with_upgrades(TokioIo::new(io), service),
                        );
                        drive(connection.as_mut(), &conn, None).await;
                    }
                    Sniffed::Closed => {}
                }
            }),
            Some(tls) => tokio::spawn(async move {
                let _registration = registration;
                let accepted = tokio::select! {
                    accepted = tls.accept(io, ()) => accepted,
                    _ = conn.closing(CLOSE_IDLE) => return,
                };
                if let Ok((stream, ())) = accepted {
                    let connection = std::pin::pin!(builder
                        .auto
                        .serve_connection_with_upgrades(TokioIo::new(stream), service));
                    drive(connection, &conn, None).await;
                }
            }),
        };
    }
    drop(listener);

    // Shutdown: graceful close for every connection, then a hard one after the grace.
    registry.close_all(CLOSE_SHUTDOWN);
    let grace = Duration::from_millis(shared.grace_ms.load(Ordering::Relaxed));
    if tokio::time::timeout(grace, registry.drained())
        .await
        .is_err()
    {
        registry.close_all(CLOSE_NOW);
        registry.drained().await;
    }
    sweeper.abort();
    Ok(())
}

/// A hyper connection of either builder: it runs to its end, or is asked to stop
/// taking requests.
trait ServedConnection: Future {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I> ServedConnection for hyper::server::conn::http1::UpgradeableConnection<I, ConnService>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I> ServedConnection for auto::UpgradeableConnection<'_, I, ConnService, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        auto::UpgradeableConnection::graceful_shutdown(self)
    }
}

/// Serve HTTP on one connection until it ends, is told to close, or (`client`: a
/// plain HTTP/1 connection served with `half_close`) its client leaves.
///
/// The connection is pinned by the caller, so that it is stored once, in the task,
/// and not a second time in this function's state.
async fn drive<C: ServedConnection>(
    mut connection: Pin<&mut C>,
    conn: &ConnState,
    client: Option<&TcpStream>,
) {
    let mut left = ClientLeft::new(client, conn);
    // Dropping the connection drops the request in progress with it: its upstream
    // call is abandoned and its stream is logged as the client disconnecting.
    let how = tokio::select! {
        biased;
        _ = connection.as_mut() => return,
        how = conn.closing(CLOSE_IDLE) => how,
        () = &mut left => return,
    };
    if how == CLOSE_NOW {
        return;
    }
    // Idle HTTP/1 connections close at once; HTTP/2 sends GOAWAY and lets open
    // streams finish. An idle close is bounded, as the client may never answer.
    connection.as_mut().graceful_shutdown();
    let bound = match how {
        CLOSE_IDLE => conn.shared.limits.header_timeout,
        _ => Duration::from_secs(86_400 * 365),
    };
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = conn.closing(CLOSE_NOW) => {}
        () = &mut left => {}
        _ = tokio::time::sleep(bound) => {}
    }
}

/// Resolves when the client of a plain HTTP/1 connection has gone (end of file or
/// an error on its socket), found with a one-byte peek whenever the socket turns
/// readable; never resolves without a socket.
///
/// What hyper does with `half_close` off, minus its buffer: it reads mid-response
/// to see end of file. As the peek consumes nothing, bytes that wait in the socket
/// (a pipelined request, a body hyper has not read yet) are hyper's to read, and
/// hide whatever comes after them: the watch then pauses until hyper has read, which
/// happens in this same task, so the next poll after that read looks again. (hyper,
/// too, stops watching while unread bytes wait in its buffer.) The watch shares the
/// socket's read-readiness waker with hyper's reads; both are this task's.
pub(super) struct ClientLeft<'a> {
    socket: Option<&'a TcpStream>,
    conn: &'a ConnState,
    /// `ConnState::reads` when bytes were last seen waiting in the socket.
    unread_at: Option<u32>,
}

impl<'a> ClientLeft<'a> {
    pub(super) fn new(socket: Option<&'a TcpStream>, conn: &'a ConnState) -> Self {
        ClientLeft {
            socket,
            conn,
            unread_at: None,
        }
    }
}

impl Future for ClientLeft<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(socket) = self.socket else {
            return Poll::Pending;
        };
        if let Some(at) = self.unread_at {
            if self.conn.reads.load(Ordering::Relaxed) == at {
                return Poll::Pending;
            }
            self.unread_at = None;
        }
        loop {
            if ready!(socket.poll_read_ready(cx)).is_err() {
                return Poll::Ready(());
            }
            let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
            let peeked = socket.try_io(tokio::io::Interest::READABLE, || {
                socket2::SockRef::from(socket).peek(&mut byte)
            });
            match peeked {
                Ok(0) => return Poll::Ready(()),
                Ok(_) => {
                    self.unread_at = Some(self.conn.reads.load(Ordering::Relaxed));
                    return Poll::Pending;
                }
                // Nothing there: `try_io` cleared the readiness; wait for the next.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => return Poll::Ready(()),
            }
        }
    }
}

/// Every tick: advance the clock, close overdue connections.
async fn sweep(registry: Arc<Registry>, shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(shared.limits.tick());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        let now = shared.advance_clock();
        let conns = registry.conns.lock().expect("registry lock");
        for conn in conns.values() {
            if let Some(how) = conn.overdue(now) {
                conn.request_close(how);
            }
        }
    }
}

/// The socket, noting when bytes arrive on an idle connection. Shared (`Arc`) with
/// the connection's [`ClientLeft`] watch, so it is read and written through `&self`.
pub(super) struct TrackedIo {
    pub(super) socket: Arc<TcpStream>,
    pub(super) conn: Arc<ConnState>,
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_recv(cx, buf)
    }
}

impl TrackedIo {
    /// One read into `buf` once the socket has bytes (or end of file: nothing
    /// added).
    pub(super) fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let socket = &*self.socket;
        loop {
            ready!(socket.poll_read_ready(cx))?;
            // SAFETY: `recv` only writes into the slice; `assume_init` below covers
            // exactly the bytes it wrote.
            let unfilled = unsafe { buf.unfilled_mut() };
            let room = unfilled.len();
            let mut received = None;
            let outcome = socket.try_io(tokio::io::Interest::READABLE, || {
                let n = socket2::SockRef::from(socket).recv(unfilled)?;
                received = Some(n);
                // Fewer bytes than there was room for: the socket is drained (Linux,
                // edge-triggered epoll). Answering `WouldBlock` has `try_io` clear the
                // readiness, as tokio's own reads do after a short read, against the
                // readiness seen before this read (one that came meanwhile is kept);
                // it spares a read that would find nothing, and lets `ClientLeft`
                // wait without a peek after each request.
                if n > 0 && n < room {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            if let Some(n) = received {
                // SAFETY: `recv` initialised the first `n` bytes of `unfilled`.
                unsafe { buf.assume_init(n) };
                buf.advance(n);
                if n > 0 {
                    self.conn.bytes_read();
                }
                return Poll::Ready(Ok(()));
            }
            match outcome {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Poll::Ready(Err(e)),
                Ok(()) => unreachable!("a successful read sets `received`"),
            }
        }
    }

    /// No more writes: the client reads end of file after what was sent.
    pub(super) fn shutdown(&self) -> io::Result<()> {
        socket2::SockRef::from(&*self.socket).shutdown(std::net::Shutdown::Write)
    }

    /// One write (`try_write` or `try_write_vectored`) once the socket can take it.
    pub(super) fn poll_written(
        &self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.socket.poll_write_ready(cx))?;
            match write(&self.socket) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                written => return Poll::Ready(written),
            }
        }
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_written(cx, |socket| socket.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_written(cx, |socket| socket.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.shutdown())
    }
}

/// The router for one connection: a POST to a client API door goes to it straight
/// ([`super::Doors`]), anything else through the router with the peer address
/// added (`ConnectInfo`); either way the request counts as in progress until its
/// response body is done or dropped.
#[derive(Clone)]
pub(super) struct ConnService {
    router: Router,
    doors: super::Doors,
    peer: SocketAddr,
    conn: Arc<ConnState>,
}

impl hyper::service::Service<http::Request<Incoming>> for ConnService {
    type Response = http::Response<TrackedBody>;
    type Error = Infallible;
    type Future = TrackedFuture;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        self.handle(request)
    }
}

impl ConnService {
    /// Hand a request to its door or the router; it counts as in progress until its
    /// answer's body is done or dropped.
    pub(super) fn handle<B>(&self, mut request: http::Request<B>) -> TrackedFuture
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        self.conn
            .request_started(request.version() == http::Version::HTTP_2);
        let guard = Some(InProgress(self.conn.clone()));
        if let Some(door) = self.doors.door_for(&request) {
            let door = door(
                axum::extract::State(self.doors.state().clone()),
                ConnectInfo(self.peer),
                request.map(axum::body::Body::new),
            );
            return TrackedFuture {
                inner: Handling::Door(door),
                guard,
            };
        }
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let mut router = self.router.clone();
        TrackedFuture {
            inner: Handling::Routed(Box::new(tower_service::Service::call(&mut router, request))),
            guard,
        }
    }
}

/// Marks one request in progress while alive.
struct InProgress(Arc<ConnState>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A request being handled: by a door called straight, or by the router (boxed: the
/// router's future is 20 times the size of the door's box, and rarer).
enum Handling {
    Door(futures_util::future::BoxFuture<'static, axum::response::Response>),
    Routed(Box<axum::routing::future::RouteFuture<Infallible>>),
}

pub(super) struct TrackedFuture {
    inner: Handling,
    guard: Option<InProgress>,
}

impl Future for TrackedFuture {
    type Output = Result<http::Response<TrackedBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let polled = match &mut self.inner {
            Handling::Door(door) => door.as_mut().poll(cx),
            Handling::Routed(routed) => match Pin::new(&mut **routed).poll(cx) {
                Poll::Ready(Ok(response)) => Poll::Ready(response),
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => Poll::Pending,
            },
        };
        let Poll::Ready(response) = polled else {
            return Poll::Pending;
        };
        let guard = self.guard.take();
        Poll::Ready(Ok(response.map(|inner| TrackedBody {
            inner,
            _guard: guard,
        })))
    }
}

/// A response body that ends its request's "in progress" mark when dropped.
pub(crate) struct TrackedBody {
    inner: axum::body::Body,
    _guard: Option<InProgress>,
}

impl hyper::body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The open-files limit (`RLIMIT_NOFILE`) as found at startup and as left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OpenFiles {
    /// The soft limit found.
    pub before: u64,
    /// The soft limit in force now.
    pub soft: u64,
    pub hard: u64,
}

/// Raise the soft limit on open files to the hard limit (a server needs one per
/// connection; distributions often start services with a soft limit of 1024) and
/// say what it was and is; `None` when the limit cannot be read.
pub(crate) fn raise_open_files_limit() -> Option<OpenFiles> {
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        let before = limit.rlim_cur as u64;
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
        Some(OpenFiles {
            before,
            soft: limit.rlim_cur as u64,
            hard: limit.rlim_max as u64,
        })
    }
}

/// `limits.max_connections`, or when 0, what the descriptor limit allows: each
/// client connection in progress usually holds an upstream connection too, and
/// some descriptors are kept for listeners, files and the rest.
pub(crate) fn max_connections(configured: u64, open_files: Option<u64>) -> usize {
    if configured > 0 {
        return configured.min(usize::MAX as u64) as usize;
    }
    match open_files {
        Some(n) => (n.saturating_sub(64) / 2).clamp(16, 1 << 20) as usize,
        None => 1 << 20,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_tell_http1_from_http2() {
        assert_eq!(
            classify(b"POST /v1/chat/completions HTTP/1.1\r\n"),
            Sniffed::Http1
        );
        assert_eq!(classify(b"G"), Sniffed::Http1);
        // Too few bytes to rule HTTP/2 out: the auto builder reads on and decides.
        assert_eq!(classify(b"P"), Sniffed::MaybeHttp2);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Sniffed::MaybeHttp2);
        assert_eq!(classify(HTTP2_PREFACE), Sniffed::MaybeHttp2);
        assert_eq!(classify(b"PUT /x HTTP/1.1\r\n"), Sniffed::Http1);
    }

    /// The peek leaves the bytes in the socket for hyper to read, and sees EOF.
    #[tokio::test]
    async fn sniffing_consumes_nothing() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(sniff(&server).await, Sniffed::Http1);
        let mut read = [0u8; 18];
        server.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"GET / HTTP/1.1\r\n\r\n");
        drop(client);
        assert_eq!(sniff(&server).await, Sniffed::Closed);
    }

    #[test]
    fn derived_connection_cap() {
        assert_eq!(max_connections(0, Some(1024)), 480);
        assert_eq!(max_connections(0, Some(100)), 18);
        assert_eq!(max_connections(0, Some(10)), 16);
        assert_eq!(max_connections(300, Some(1024)), 300);
        assert_eq!(max_connections(0, Some(u64::MAX)), 1 << 20);
    }

    #[test]
    fn phases_and_deadlines() {
        let limits = ConnLimits {
            header_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(1000),
            max_connections: 10,
            http2_keepalive_interval: None,
            http2_keepalive_timeout: Duration::from_secs(1),
        };
        let shared = Shared::new(limits, None);
        let conn = ConnState::new(shared.clone(), 0);
        assert_eq!(conn.overdue(100), None);
        assert_eq!(conn.overdue(101), Some(CLOSE_NOW));
        conn.request_started(false);
        assert_eq!(conn.overdue(5000), None);
        shared.clock_ms.store(200, Ordering::Relaxed);
        conn.request_ended();
        assert_eq!(conn.overdue(1100), None);
        assert_eq!(conn.overdue(1201), Some(CLOSE_IDLE));
        shared.clock_ms.store(300, Ordering::Relaxed);
        conn.bytes_read();
        assert_eq!(conn.overdue(400), None);
        assert_eq!(conn.overdue(401), Some(CLOSE_NOW));
        // HTTP/2: bytes between streams are frames, not a head: idle deadline only.
        let conn = ConnState::new(shared.clone(), 0);
        conn.request_started(true);
        conn.request_ended();
        conn.bytes_read();
        assert_eq!(conn.overdue(1000), None);
        assert_eq!(conn.overdue(1301), Some(CLOSE_IDLE));
    }
}
