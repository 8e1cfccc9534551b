//! The HTTP server: the axum `Router` (`app()`, also used by tests), shared state,
//! the pooled upstream client, binding (plain or TLS via rustls), `TCP_NODELAY`,
//! and graceful shutdown with a grace period for open streams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use axum::routing::{get, post};
use axum_server::accept::NoDelayAcceptor;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use axum_server::Handle;
use tokio::task::JoinHandle;

pub mod reload;

use crate::api;
use crate::config::{Config, ConfigError};
use crate::extensions::ExtensionResolver;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::upstream::UpstreamClient;

/// State shared by every request.
pub struct AppState {
    gateway: ArcSwap<Gateway>,
    client: UpstreamClient,
    /// This server's metrics (`[metrics] enabled`, read at startup); they outlive reloads.
    metrics: Option<Arc<Metrics>>,
}

impl AppState {
    pub fn new(gateway: Gateway, client: UpstreamClient) -> Self {
        let metrics = gateway
            .config
            .settings
            .metrics
            .enabled
            .then(|| Arc::new(Metrics::new()));
        AppState {
            gateway: ArcSwap::from_pointee(gateway),
            client,
            metrics,
        }
    }

    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// The gateway in force now (a cheap `Arc` clone; a reload swaps it whole).
    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.load_full()
    }

    /// Replace the gateway; requests already running keep the one they started with.
    pub fn replace_gateway(&self, gateway: Gateway) {
        self.gateway.store(Arc::new(gateway));
    }

    pub fn client(&self) -> &UpstreamClient {
        &self.client
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
    upstream_client_with(DEFAULT_CONNECT_TIMEOUT)
}

/// Time allowed to open an upstream connection when the connection sets none.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The upstream client with a given connect timeout (for connections that set one).
pub fn upstream_client_with(connect_timeout: Duration) -> anyhow::Result<UpstreamClient> {
    UpstreamClient::new(connect_timeout)
}

/// The router for a prefix; tests serve it directly.
pub fn app(state: Arc<AppState>) -> axum::Router {
    let gateway = state.gateway();
    let prefix = &gateway.config.api_prefix;
    let mut router = axum::Router::new()
        .route(
            &format!("{prefix}/chat/completions"),
            post(api::chat::chat_completions),
        )
        .route(&format!("{prefix}/models"), get(api::models::list_models))
        .route("/health", get(api::health));
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

/// A server that is accepting connections.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub tls: bool,
    pub state: Arc<AppState>,
    handle: Handle<SocketAddr>,
    task: JoinHandle<std::io::Result<()>>,
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

    /// Stop accepting; let open requests and streams finish within `grace`, then
    /// close what remains.
    pub fn shutdown(&self, grace: Duration) {
        self.handle.graceful_shutdown(Some(grace));
    }

    /// Wait until the server has stopped, then write out queued log entries.
    pub async fn wait(self) -> anyhow::Result<()> {
        let result = match self.task.await {
            Ok(served) => served.context("server stopped with an error"),
            Err(e) => Err(anyhow::Error::new(e).context("server task failed")),
        };
        self.state.gateway().flush_logs().await;
        result
    }
}

/// Build the gateway from a config and start serving on its host and port.
pub async fn start(
    config: Config,
    resolver: Arc<dyn ExtensionResolver>,
    overrides: reload::Overrides,
) -> anyhow::Result<RunningServer> {
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
    let bind = format!("{}:{}", config.settings.host, config.settings.port);
    let listener = std::net::TcpListener::bind(&bind).map_err(|e| {
        ConfigError::new(
            &config.path,
            "port",
            format!("cannot listen on {bind}: {e}"),
        )
    })?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;

    let gateway = Gateway::build(config, &client, resolver.as_ref())?;
    let state = Arc::new(AppState::new(gateway, client));
    reload::spawn_reloader(state.clone(), resolver, overrides);
    let service = app(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let handle = Handle::new();
    let is_tls = tls.is_some();
    let task = match tls {
        Some(tls) => {
            let acceptor = RustlsAcceptor::new(tls).acceptor(NoDelayAcceptor);
            let server = axum_server::from_tcp(listener)?
                .acceptor(acceptor)
                .handle(handle.clone());
            tokio::spawn(server.serve(service))
        }
        None => {
            let server = axum_server::from_tcp(listener)?
                .acceptor(NoDelayAcceptor)
                .handle(handle.clone());
            tokio::spawn(server.serve(service))
        }
    };
    Ok(RunningServer {
        addr,
        tls: is_tls,
        state,
        handle,
        task,
    })
}
