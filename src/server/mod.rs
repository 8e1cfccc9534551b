//! The HTTP server: the axum `Router` (`app()`, also used by tests), shared state,
//! the pooled upstream client, binding (plain or TLS via rustls), `TCP_NODELAY`,
//! and graceful shutdown with a grace period for open streams.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use axum::routing::{get, post};
use axum_server::tls_rustls::RustlsConfig;
use tokio::task::JoinHandle;

pub mod body;
mod conn;
mod http1;
pub mod reload;

use crate::api;
use crate::config::{Config, ConfigError};
use crate::extensions::ExtensionResolver;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::shard::Sharded;
use crate::upstream::UpstreamClient;
use crate::usage::Ledger;

/// State shared by every request. Each serving thread has its own copy
/// ([`AppState::fork`]): the same gateway, metrics, budget and client, under reference
/// counts of its own, since every request clones the state it is handed.
pub struct AppState {
    gateway: Arc<ArcSwap<Gateway>>,
    /// Per serving thread ([`crate::shard`]): a handle on the gateway in force,
    /// which the thread's requests clone (see [`GatewayHandle`]).
    gateway_handles: Arc<Sharded<arc_swap::ArcSwapOption<Arc<Gateway>>>>,
    client: UpstreamClient,
    /// This server's metrics (`[metrics] enabled`, read at startup); they outlive reloads.
    metrics: Option<Arc<Metrics>>,
    /// The usage ledger (`[database]`, read at startup: a change needs a restart;
    /// `[pricing]` follows reloads).
    ledger: Option<Arc<Ledger>>,
    /// Managed keys (`[database]`, read at startup); every gateway in force gets them.
    managed_keys: Option<Arc<crate::usage::keys::ManagedKeys>>,
    /// Request body bytes being received or held now (`limits.max_body_memory_mb`).
    bodies: Arc<body::BodyBudget>,
    /// The gateway in force reads the client's header name spellings: connections
    /// accepted while it is set record them (`conn::serve`).
    client_spellings: Arc<AtomicBool>,
}

impl AppState {
    /// The state of a server without a usage ledger (tests; [`AppState::with_ledger`]).
    pub fn new(gateway: Gateway, client: UpstreamClient) -> Self {
        let metrics = gateway
            .config
            .settings
            .metrics
            .enabled
            .then(|| Arc::new(Metrics::new()));
        Self::with_metrics(gateway, client, metrics, None, None)
    }

    /// The state of a server, with its usage ledger when `[database]` is set: the
    /// ledger's writer starts on the current runtime.
    pub fn with_ledger(mut gateway: Gateway, client: UpstreamClient) -> Result<Self, ConfigError> {
        let settings = &gateway.config.settings;
        let metrics = settings.metrics.enabled.then(|| Arc::new(Metrics::new()));
        let ledger = match &settings.database {
            Some(database) => Some(Ledger::start(
                database,
                &gateway.config.path,
                &settings.pricing,
                metrics.as_ref().map(|m| m.ledger_rows()),
            )?),
            None => None,
        };
        let managed_keys = match (&gateway.config.settings.database, &ledger) {
            (Some(database), Some(ledger)) => Some(crate::usage::keys::ManagedKeys::start(
                database,
                &gateway.config.path,
                ledger.schema_ready(),
            )?),
            _ => None,
        };
        gateway.managed_keys = managed_keys.clone();
        Ok(Self::with_metrics(
            gateway,
            client,
            metrics,
            ledger,
            managed_keys,
        ))
    }

    fn with_metrics(
        gateway: Gateway,
        client: UpstreamClient,
        metrics: Option<Arc<Metrics>>,
        ledger: Option<Arc<Ledger>>,
        managed_keys: Option<Arc<crate::usage::keys::ManagedKeys>>,
    ) -> Self {
        count_log_drops(&gateway, metrics.as_deref());
        AppState {
            ledger,
            managed_keys,
            client_spellings: Arc::new(AtomicBool::new(gateway.client_spellings)),
            gateway: Arc::new(ArcSwap::from_pointee(gateway)),
            gateway_handles: Arc::default(),
            client,
            metrics,
            bodies: Arc::default(),
        }
    }

    /// The memory budget shared by the request bodies of this server.
    pub fn bodies(&self) -> &body::BodyBudget {
        &self.bodies
    }

    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    pub fn ledger(&self) -> Option<&Arc<Ledger>> {
        self.ledger.as_ref()
    }

    pub fn managed_keys(&self) -> Option<&Arc<crate::usage::keys::ManagedKeys>> {
        self.managed_keys.as_ref()
    }

    /// This state again, sharing everything with it (for one serving thread).
    pub fn fork(&self) -> AppState {
        AppState {
            gateway: self.gateway.clone(),
            gateway_handles: self.gateway_handles.clone(),
            client: self.client.clone(),
            metrics: self.metrics.clone(),
            ledger: self.ledger.clone(),
            managed_keys: self.managed_keys.clone(),
            bodies: self.bodies.clone(),
            client_spellings: self.client_spellings.clone(),
        }
    }

    /// The gateway in force now (a cheap `Arc` clone; a reload swaps it whole).
    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.load_full()
    }

    /// The gateway in force now, as the request path holds it: through this
    /// thread's handle, made again after a reload.
    /// (Threads that are not serving threads share one handle, shard 0: for them
    /// this costs what taking the gateway itself did.)
    pub fn gateway_handle(&self) -> GatewayHandle {
        let current = self.gateway.load();
        let kept = self.gateway_handles.local();
        match kept.load_full() {
            Some(handle) if Arc::ptr_eq(&*handle, &*current) => GatewayHandle(handle),
            _ => {
                let handle = Arc::new(arc_swap::Guard::into_inner(current));
                kept.store(Some(handle.clone()));
                GatewayHandle(handle)
            }
        }
    }

    /// Replace the gateway; requests already running keep the one they started with.
    pub fn replace_gateway(&self, mut gateway: Gateway) {
        gateway.managed_keys = self.managed_keys.clone();
        count_log_drops(&gateway, self.metrics.as_deref());
        let database = |g: &Gateway| g.config.settings.database.clone();
        if database(&gateway) != database(&self.gateway.load()) {
            tracing::warn!(
                "the [database] section changed: it takes effect at the next restart \
                 ([pricing] and budgets follow the reload)"
            );
        }
        if let Some(ledger) = &self.ledger {
            ledger.set_prices(&gateway.config.settings.pricing);
        }
        self.client_spellings
            .store(gateway.client_spellings, Ordering::Relaxed);
        self.gateway.store(Arc::new(gateway));
        // Handles on the old gateway are made again at their thread's next request;
        // let go of them now, so that an idle thread does not keep it alive.
        for handle in self.gateway_handles.iter() {
            handle.store(None);
        }
    }

    /// Whether connections accepted now record the client's header name spellings.
    pub fn records_client_spellings(&self) -> bool {
        self.client_spellings.load(Ordering::Relaxed)
    }

    pub fn client(&self) -> &UpstreamClient {
        &self.client
    }
}

/// The gateway as a request holds it. Cloning it writes only the reference count
/// of its serving thread's handle: the gateway's own count is written by every
/// thread, and taking and dropping it twice a request made that memory move
/// between cores on every request.
// The extra allocation is the point: a reference count of the thread's own.
#[derive(Clone)]
#[allow(clippy::redundant_allocation)]
pub struct GatewayHandle(Arc<Arc<Gateway>>);

impl std::ops::Deref for GatewayHandle {
    type Target = Gateway;

    fn deref(&self) -> &Gateway {
        &self.0
    }
}

/// Dropped log entries count in this server's metrics, across reloads.
fn count_log_drops(gateway: &Gateway, metrics: Option<&Metrics>) {
    if let (Some(dispatcher), Some(metrics)) = (&gateway.log_dispatcher, metrics) {
        dispatcher.count_drops_in(metrics.log_entries_dropped());
    }
}

/// Install the process-wide TLS crypto provider (ring). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The one pooled upstream client (`crate::upstream`): keep-alive connections reused
/// across requests, `TCP_NODELAY` so small SSE writes are not held back by Nagle's
/// algorithm.
pub fn upstream_client() -> anyhow::Result<UpstreamClient> {
    UpstreamClient::new(DEFAULT_CONNECT_TIMEOUT)
}

/// Time allowed to open an upstream connection when the connection sets none.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client API door: the handler of the POSTs to one path. Boxed so that every
/// door has this one type, for [`Doors`].
pub(crate) type Door = fn(
    axum::extract::State<Arc<AppState>>,
    axum::extract::ConnectInfo<SocketAddr>,
    axum::extract::Request,
) -> futures_util::future::BoxFuture<'static, axum::response::Response>;

/// The client API doors and their paths under one prefix: routed by [`app`], and
/// called by each connection straight for a POST to one of these paths
/// (`conn::ConnService`), without the router in between: its route lookup, the
/// extension map a routed request needs for the peer address, and its boxed
/// service and future layers were about 3,000 instructions of a request's 49,000
/// (`bench/README.md`, "Session 21").
#[derive(Clone)]
pub(crate) struct Doors {
    state: Arc<AppState>,
    paths: Arc<[(Box<str>, Door)]>,
}

impl Doors {
    pub(crate) fn new(state: Arc<AppState>) -> Doors {
        let prefix = state.gateway().config.api_prefix.clone();
        let door = |path: &str, door: Door| (format!("{prefix}{path}").into_boxed_str(), door);
        let paths: Arc<[(Box<str>, Door)]> = Arc::new([
            door("/chat/completions", |s, p, r| {
                Box::pin(api::chat::chat_completions(s, p, r))
            }),
            door("/messages", |s, p, r| {
                Box::pin(api::messages::messages(s, p, r))
            }),
            door("/messages/count_tokens", |s, p, r| {
                Box::pin(api::messages::count_tokens(s, p, r))
            }),
            door("/embeddings", |s, p, r| {
                Box::pin(api::embeddings::embeddings(s, p, r))
            }),
            door("/completions", |s, p, r| {
                Box::pin(api::completions::completions(s, p, r))
            }),
            door("/responses", |s, p, r| {
                Box::pin(api::responses::responses(s, p, r))
            }),
        ]);
        Doors { state, paths }
    }

    /// The door a request goes to straight: a POST to one of the doors' paths
    /// exactly (as the router matches them: no normalisation).
    pub(crate) fn door_for<B>(&self, request: &http::Request<B>) -> Option<Door> {
        if request.method() != http::Method::POST {
            return None;
        }
        let path = request.uri().path();
        self.paths
            .iter()
            .find(|(door_path, _)| **door_path == *path)
            .map(|(_, door)| *door)
    }

    pub(crate) fn state(&self) -> &Arc<AppState> {
        &self.state
    }
}

/// The router for a prefix; tests serve it directly.
pub fn app(state: Arc<AppState>) -> axum::Router {
    app_with(&Doors::new(state))
}

fn app_with(doors: &Doors) -> axum::Router {
    let state = doors.state.clone();
    let gateway = state.gateway();
    let prefix = &gateway.config.api_prefix;
    let mut router = axum::Router::new();
    for (path, door) in doors.paths.iter() {
        router = router.route(path, post(*door));
    }
    let mut router = router
        .route(&format!("{prefix}/models"), get(api::models::list_models))
        // A catch-all: model ids may contain `/`.
        .route(
            &format!("{prefix}/models/{{*id}}"),
            get(api::models::retrieve_model),
        )
        .route("/health", get(api::health));
    // The admin API exists only with `[admin]` at startup (and `[database]`, which
    // the config requires with it); a reload that removes `[admin]` makes its
    // routes answer 404 (`api::admin`).
    if state.managed_keys.is_some() && gateway.config.settings.admin.is_some() {
        router = router
            .route(
                "/admin/keys",
                get(api::admin::list_keys).post(api::admin::create_key),
            )
            .route(
                "/admin/keys/{id}",
                axum::routing::delete(api::admin::revoke_key),
            )
            .route("/admin/usage", get(api::admin::usage));
    }
    if state.metrics.is_some() {
        router = router.route(
            &gateway.config.settings.metrics.path,
            get(crate::metrics::serve),
        );
    }
    router
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .with_state(state)
}

/// Where a server's connections are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serving {
    /// On the runtime that calls [`start_serving`] (the Python package: its shared
    /// multi-threaded runtime, where Python calls are made).
    CallerRuntime,
    /// On this many threads, each with a single-threaded runtime and a listening
    /// socket of its own on the same address (`SO_REUSEPORT`): the kernel spreads new
    /// connections over them, and a connection, its requests and their upstream
    /// connections stay on one thread from accept to close. No task moves between
    /// threads and no thread wakes another on the request path, which is what a
    /// work-stealing runtime costs on every request (bench/README.md). The native
    /// binary's default, with one thread per CPU (`--threads`).
    ThreadPerCore(usize),
}

impl Serving {
    /// `--threads N`: N serving threads; 0 serves on the caller's runtime.
    pub fn threads(n: usize) -> Serving {
        match n {
            0 => Serving::CallerRuntime,
            n => Serving::ThreadPerCore(n),
        }
    }

    /// One serving thread per CPU.
    pub fn per_cpu() -> Serving {
        Serving::ThreadPerCore(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

/// A server that is accepting connections.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub tls: bool,
    pub state: Arc<AppState>,
    serving: Serving,
    /// Connection counts and shutdown, shared by the serving threads.
    connections: Arc<conn::Shared>,
    /// Ends when every connection is closed after a shutdown.
    task: JoinHandle<std::io::Result<()>>,
}

/// How far ahead the timer anchor keeps tokio's timer driver planning to wake up.
pub const TIMER_ANCHOR_PERIOD: Duration = Duration::from_secs(1);

/// Keep one timer pending, due within [`TIMER_ANCHOR_PERIOD`], for as long as the
/// server runs.
///
/// Why: tokio's timer driver interrupts its own sleep (a write to the I/O driver's
/// eventfd, and on the multi-threaded runtime the wake-up of a parked worker
/// thread) whenever a timer is registered that is due before the driver's planned
/// wake-up. Every request registers its timeouts (first byte, whole call), and
/// between requests no timer is pending, so every request paid that interruption:
/// two eventfd writes per request, and a thread wake-up (strace at concurrency 1).
/// With this timer always due sooner than any request's timeout (they are 1 s or
/// more unless configured lower), registering one never interrupts anything; the
/// price is one wake-up per period.
fn spawn_timer_anchor() -> JoinHandle<()> {
    tokio::spawn(async {
        let mut ticks = tokio::time::interval(TIMER_ANCHOR_PERIOD / 2);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticks.tick().await;
        }
    })
}

impl RunningServer {
    /// `http://addr` or `https://addr`, with 0.0.0.0 shown as 127.0.0.1.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("{scheme}://{addr}")
    }

    /// "2 serving threads" or "shared runtime", for the startup line.
    pub fn serving_description(&self) -> String {
        match self.serving {
            Serving::CallerRuntime => "shared runtime".to_owned(),
            Serving::ThreadPerCore(0 | 1) => "1 serving thread".to_owned(),
            Serving::ThreadPerCore(n) => format!("{n} serving threads"),
        }
    }

    /// Stop accepting; let open requests and streams finish within `grace`, then
    /// close what remains.
    pub fn shutdown(&self, grace: Duration) {
        self.connections.shutdown(grace);
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.connections.open_connections()
    }

    /// Wait until the server has stopped, then write out queued log entries.
    pub async fn wait(self) -> anyhow::Result<()> {
        let result = match self.task.await {
            Ok(served) => served.context("server stopped with an error"),
            Err(e) => Err(anyhow::Error::new(e).context("server task failed")),
        };
        self.state.gateway().flush_logs().await;
        // After the loggers: the last requests' rows are in the buffer by now.
        if let Some(ledger) = self.state.ledger() {
            ledger.close().await;
        }
        result
    }
}

/// Build the gateway from a config and start serving on its host and port, on the
/// caller's runtime.
pub async fn start(
    config: Config,
    resolver: Arc<dyn ExtensionResolver>,
    overrides: reload::Overrides,
) -> anyhow::Result<RunningServer> {
    start_serving(config, resolver, overrides, Serving::CallerRuntime).await
}

/// Build the gateway from a config and start serving on its host and port, as
/// `serving` says.
pub async fn start_serving(
    config: Config,
    resolver: Arc<dyn ExtensionResolver>,
    overrides: reload::Overrides,
    serving: Serving,
) -> anyhow::Result<RunningServer> {
    config
        .settings
        .limits
        .check(config.settings.max_request_body_mb, &config.path)?;
    let client = upstream_client()?;
    let tls = match (&config.settings.ssl_certfile, &config.settings.ssl_keyfile) {
        (Some(cert), Some(key)) => {
            Some(RustlsConfig::from_pem_file(cert, key).await.map_err(|e| {
                ConfigError::new(
                    &config.path,
                    "ssl_certfile",
                    format!("cannot load TLS certificate/key: {e}"),
                )
            })?)
        }
        _ => None,
    };
    let threads = match serving {
        Serving::CallerRuntime => 1,
        Serving::ThreadPerCore(n) => n.max(1),
    };
    let listeners = bind(&config, threads)?;
    let addr = listeners[0].local_addr()?;

    let gateway = Gateway::build(config, &client, resolver.as_ref())?;
    // Logged once the config is known to be good (a config error is one line).
    let limits = connection_limits(&gateway.config.settings.limits);
    let state = Arc::new(AppState::with_ledger(gateway, client)?);
    let connections = conn::Shared::new(limits, state.metrics().cloned());
    reload::spawn_reloader(state.clone(), resolver, overrides);
    let is_tls = tls.is_some();
    let task = match serving {
        Serving::CallerRuntime => {
            let listener = listeners
                .into_iter()
                .next()
                .expect("one listener was bound");
            let served = serve(listener, tls, connections.clone(), state.clone());
            tokio::spawn(async move {
                let anchor = spawn_timer_anchor();
                let result = served.await;
                anchor.abort();
                result
            })
        }
        Serving::ThreadPerCore(_) => {
            let mut threads = Vec::new();
            for (index, listener) in listeners.into_iter().enumerate() {
                let (tls, state, shared) = (tls.clone(), state.clone(), connections.clone());
                let thread = std::thread::Builder::new()
                    .name(format!("lm-proxy-serve-{index}"))
                    .spawn(move || serve_on_own_runtime(index, listener, tls, shared, state))
                    .context("cannot start a serving thread")?;
                threads.push(thread);
            }
            tokio::task::spawn_blocking(move || {
                let mut result = Ok(());
                for thread in threads {
                    let outcome = thread.join().unwrap_or_else(|_| {
                        Err(std::io::Error::other("a serving thread panicked"))
                    });
                    if result.is_ok() {
                        result = outcome;
                    }
                }
                result
            })
        }
    };
    Ok(RunningServer {
        addr,
        tls: is_tls,
        state,
        serving,
        connections,
        task,
    })
}

/// A serving thread's life: a single-threaded runtime that serves one listener
/// until the server is shut down and its connections have closed.
fn serve_on_own_runtime(
    index: usize,
    listener: std::net::TcpListener,
    tls: Option<RustlsConfig>,
    connections: Arc<conn::Shared>,
    state: Arc<AppState>,
) -> std::io::Result<()> {
    // Upstream connections made here are kept for this thread's requests, and
    // what its requests count and log is kept apart from other threads'.
    crate::shard::set_serving_thread(index + 1);
    let state = Arc::new(state.fork());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let anchor = spawn_timer_anchor();
        let result = serve(listener, tls, connections, state).await;
        anchor.abort();
        result
    })
}

/// Serve one listening socket (plain or TLS) until the server shuts down.
fn serve(
    listener: std::net::TcpListener,
    tls: Option<RustlsConfig>,
    connections: Arc<conn::Shared>,
    state: Arc<AppState>,
) -> impl std::future::Future<Output = std::io::Result<()>> + Send + 'static {
    let client_spellings = state.client_spellings.clone();
    let doors = Doors::new(state);
    conn::serve(
        listener,
        tls,
        app_with(&doors),
        doors,
        connections,
        client_spellings,
    )
}

/// The connection settings from `[limits]`, with the open-files limit raised to its
/// hard limit first (logged with both figures, and the connection cap derived).
fn connection_limits(limits: &crate::config::Limits) -> conn::ConnLimits {
    let files = conn::raise_open_files_limit();
    let open_files = files.map(|f| f.soft);
    let max = conn::max_connections(limits.max_connections, open_files);
    if let Some(open_files) = open_files.filter(|&n| limits.max_connections > n) {
        tracing::warn!(
            "limits.max_connections ({max}) is above the open files limit ({open_files}): \
             accepting will fail for lack of descriptors before the cap is reached"
        );
    }
    let files = match files {
        None => "unknown".to_owned(),
        Some(f) if f.before < f.soft => {
            format!(
                "{} (soft limit raised from {} to the hard limit)",
                f.soft, f.before
            )
        }
        Some(f) if f.soft < f.hard => {
            format!(
                "{} (could not raise it to the hard limit {})",
                f.soft, f.hard
            )
        }
        Some(f) => format!("{} (the hard limit {})", f.soft, f.hard),
    };
    tracing::info!(
        "open files limit {files}; at most {max} client connections (limits.max_connections)"
    );
    conn::ConnLimits::new(limits, max)
}

/// `count` listening sockets on the config's host and port (the first one picks
/// the port when it is 0). Several are bound with `SO_REUSEPORT`, so that they
/// share the address. A failure names the key.
fn bind(config: &Config, count: usize) -> Result<Vec<std::net::TcpListener>, ConfigError> {
    let bind = format!("{}:{}", config.settings.host, config.settings.port);
    let failed = |e: &dyn std::fmt::Display| {
        ConfigError::new(
            &config.path,
            "port",
            format!("cannot listen on {bind}: {e}"),
        )
    };
    let candidates: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&bind)
        .map_err(|e| ConfigError::new(&config.path, "host", format!("cannot resolve {bind}: {e}")))?
        .collect();
    let mut last_error = None;
    for candidate in candidates {
        match bind_all(candidate, count) {
            Ok(listeners) => return Ok(listeners),
            Err(e) => last_error = Some(e),
        }
    }
    Err(match last_error {
        Some(e) => failed(&e),
        None => failed(&"the host resolves to no address"),
    })
}

fn bind_all(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut listeners: Vec<std::net::TcpListener> = Vec::with_capacity(count);
    for _ in 0..count {
        let at = match listeners.first() {
            Some(first) => first.local_addr()?,
            None => addr,
        };
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(at),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        // As std's `TcpListener::bind` does: a restarted server can bind at once.
        socket.set_reuse_address(true)?;
        if count > 1 {
            #[cfg(unix)]
            socket.set_reuse_port(true)?;
        }
        socket.bind(&at.into())?;
        // The backlog is where connections wait while the gateway is at
        // `limits.max_connections` or out of descriptors: as long as the kernel allows
        // (it caps this at net.core.somaxconn), so that they are held, not refused.
        socket.listen(65_535)?;
        socket.set_nonblocking(true)?;
        listeners.push(socket.into());
    }
    Ok(listeners)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(dir: &std::path::Path, name: &str) -> Gateway {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[connections.{name}]\napi_type = \"open_ai\"\n\
                 api_base = \"http://127.0.0.1:9/v1\"\napi_key = \"k\"\n\
                 [routing]\n\"*\" = \"{name}.*\"\n[groups.default]\napi_keys = [\"c\"]\n"
            ),
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        let client = upstream_client().unwrap();
        Gateway::build(config, &client, &crate::extensions::NativeResolver).unwrap()
    }

    /// A serving thread's requests share one handle on the gateway, its own; after a
    /// reload every thread's next request gets the new gateway, and the old one is
    /// let go once the requests holding it are over, whether or not a thread serves
    /// another request.
    #[test]
    fn gateway_handles_are_per_thread_and_follow_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let state = AppState::new(gateway(dir.path(), "first"), upstream_client().unwrap());
        let fork = state.fork();
        let (a, b) = (state.gateway_handle(), fork.gateway_handle());
        assert!(Arc::ptr_eq(&a.0, &b.0), "one thread, one handle");
        let elsewhere = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    crate::shard::set_thread_shard(1);
                    fork.gateway_handle()
                })
                .join()
                .unwrap()
        });
        assert!(!Arc::ptr_eq(&a.0, &elsewhere.0), "a handle per thread");
        assert!(Arc::ptr_eq(&*a.0, &*elsewhere.0), "on the same gateway");
        let old = Arc::downgrade(&*a.0);

        state.replace_gateway(gateway(dir.path(), "second"));
        let after = fork.gateway_handle();
        assert!(after.config.settings.connections.contains_key("second"));
        // Requests still running keep theirs.
        assert!(a.config.settings.connections.contains_key("first"));
        drop((a, b, elsewhere));
        assert!(old.upgrade().is_none(), "the old gateway is let go");
    }
}
