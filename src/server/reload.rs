//! Live reload: on SIGHUP, and on changes to the config file when
//! `dev_autoreload = true`, the config is read again. A valid new config is
//! compiled into a new `Gateway` and swapped in atomically: requests already
//! running (streams included) finish on the gateway they started with. An invalid
//! one is logged and the old gateway keeps serving.
//!
//! What a running listener cannot change (`host`, `port`, `ssl_*`, `api_prefix`)
//! keeps its old value, with a warning that a restart is needed. Rate-limit windows
//! start afresh with the new gateway.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::AppState;
use crate::config::Config;
use crate::extensions::ExtensionResolver;
use crate::gateway::Gateway;

/// Settings given on the command line that win over the file on every reload.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub host: Option<String>,
    pub port: Option<u16>,
}

impl Overrides {
    pub fn apply(&self, config: &mut Config) {
        if let Some(host) = &self.host {
            config.settings.host = host.clone();
        }
        if let Some(port) = self.port {
            config.settings.port = port;
        }
    }
}

/// Read the config file again and swap it in if it is valid. Returns whether the
/// new config took effect.
pub async fn reload(
    state: &AppState,
    resolver: &dyn ExtensionResolver,
    overrides: &Overrides,
) -> bool {
    let current = state.gateway();
    let path = current.config.path.clone();
    let mut config = match resolver.load_config(&path) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("config reload rejected, the previous config stays in force: {e}");
            return false;
        }
    };
    overrides.apply(&mut config);
    keep_listener_settings(&current.config, &mut config);
    let limits = &config.settings.limits;
    if let Err(e) = limits.check(config.settings.max_request_body_mb, &config.path) {
        tracing::error!("config reload rejected, the previous config stays in force: {e}");
        return false;
    }
    match Gateway::build(config, state.client(), resolver) {
        Ok(gateway) => {
            state.replace_gateway(gateway);
            tracing::info!("config reloaded from {}", path.display());
            true
        }
        Err(e) => {
            tracing::error!("config reload rejected, the previous config stays in force: {e}");
            false
        }
    }
}

fn keep_listener_settings(old: &Config, new: &mut Config) {
    let warn = |key: &str| {
        tracing::warn!(
            "{}: `{key}` changed; it takes effect after a restart",
            new.path.display()
        );
    };
    if new.settings.host != old.settings.host {
        warn("host");
        new.settings.host = old.settings.host.clone();
    }
    if new.settings.port != old.settings.port {
        warn("port");
        new.settings.port = old.settings.port;
    }
    if new.settings.ssl_certfile != old.settings.ssl_certfile
        || new.settings.ssl_keyfile != old.settings.ssl_keyfile
    {
        warn("ssl_certfile/ssl_keyfile");
        new.settings.ssl_certfile = old.settings.ssl_certfile.clone();
        new.settings.ssl_keyfile = old.settings.ssl_keyfile.clone();
    }
    if new.api_prefix != old.api_prefix {
        warn("api_prefix");
        new.api_prefix = old.api_prefix.clone();
    }
    let (old_l, new_l) = (&old.settings.limits, &mut new.settings.limits);
    if !new_l.same_connection_settings(old_l) {
        warn("limits (timeouts, max_connections, http2 keep-alive)");
        let (body_timeout, body_memory) = (new_l.body_timeout_seconds, new_l.max_body_memory_mb);
        *new_l = old_l.clone();
        new_l.body_timeout_seconds = body_timeout;
        new_l.max_body_memory_mb = body_memory;
    }
    let (old_m, new_m) = (&old.settings.metrics, &mut new.settings.metrics);
    if new_m.enabled != old_m.enabled || new_m.path != old_m.path {
        warn("metrics.enabled/metrics.path");
        new_m.enabled = old_m.enabled;
        new_m.path = old_m.path.clone();
    }
}

/// Run reloads for the life of the server: on SIGHUP always, and on file changes
/// when the config asks for `dev_autoreload`.
pub fn spawn_reloader(
    state: Arc<AppState>,
    resolver: Arc<dyn ExtensionResolver>,
    overrides: Overrides,
) {
    let (tx, mut rx) = mpsc::channel::<()>(1);

    // The handler is installed here, before the server says it is listening, not in
    // the task: until it is installed a SIGHUP still has its default effect and ends
    // the process (a reload sent right after startup did, when the task had not run
    // yet).
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hangup) => {
            let tx = tx.clone();
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading the config");
                    let _ = tx.try_send(());
                }
            });
        }
        Err(_) => tracing::warn!("cannot listen for SIGHUP; reload on signal is off"),
    }

    let gateway = state.gateway();
    let watcher = if gateway.config.settings.dev_autoreload {
        watch_file(&gateway.config.path, tx.clone())
    } else {
        None
    };
    drop(gateway);

    tokio::spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            // Editors write a file in several steps: let them finish, then read once.
            tokio::time::sleep(Duration::from_millis(150)).await;
            while rx.try_recv().is_ok() {}
            reload(&state, resolver.as_ref(), &overrides).await;
        }
    });
}

/// Watch the config file's folder (editors often replace the file rather than
/// write it in place) and signal on changes to the file.
fn watch_file(path: &Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let file: PathBuf = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = file.file_name().map(|n| n.to_os_string());
    let handler = move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let ours = event
                .paths
                .iter()
                .any(|p| p.file_name().map(|n| n.to_os_string()) == name);
            if ours && !event.kind.is_access() {
                let _ = tx.try_send(());
            }
        }
    };
    match notify::recommended_watcher(handler) {
        Ok(mut watcher) => match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                tracing::info!("dev_autoreload: watching {}", file.display());
                Some(watcher)
            }
            Err(e) => {
                tracing::warn!("dev_autoreload: cannot watch {}: {e}", dir.display());
                None
            }
        },
        Err(e) => {
            tracing::warn!("dev_autoreload: cannot start a file watcher: {e}");
            None
        }
    }
}
