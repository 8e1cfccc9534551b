//! Names that config values use for code, and who resolves them.
//!
//! The reference's own dotted names (`lm_proxy.api_key_check.AllowAll`, ...) map to
//! Rust built-ins, so configs that use only them run with no Python at all. Any other
//! dotted path is a Python callable: the native binary cannot run it and stops at
//! startup saying so; the Python package supplies an [`ExtensionResolver`] that
//! wraps such callables in the core traits.

use std::path::Path;
use std::sync::Arc;

use crate::auth::KeyCheck;
use crate::config::{Config, ConfigError, ExtensionSpec};
use crate::gateway::Gateway;
use crate::handlers::RequestHandler;
use crate::logging::{LogWriter, Logger};
use crate::providers::Provider;

/// The built-ins known by their reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    CheckApiKeyInConfig,
    AllowAll,
    CheckApiKeyWithRequest,
    RateLimiter,
    HttpHeadersForwarder,
    BaseLogger,
    JsonLogWriter,
    LogEntryTransformer,
    Fallback,
}

/// Map a dotted path to a built-in. Both the short names the reference documents
/// (`lm_proxy.handlers.RateLimiter`) and the module paths they live in
/// (`lm_proxy.handlers.rate_limiter.RateLimiter`) are accepted.
pub fn builtin_name(target: &str) -> Option<Builtin> {
    let target = target.trim();
    let rest = target.strip_prefix("lm_proxy.")?;
    let (module, name) = match rest.split_once('.') {
        Some((module, tail)) => (module, tail.rsplit('.').next().unwrap_or(tail)),
        None => return None,
    };
    let builtin = match (module, name) {
        ("api_key_check", "check_api_key_in_config") => Builtin::CheckApiKeyInConfig,
        ("api_key_check", "AllowAll") => Builtin::AllowAll,
        ("api_key_check", "CheckAPIKeyWithRequest") => Builtin::CheckApiKeyWithRequest,
        ("handlers", "RateLimiter") => Builtin::RateLimiter,
        ("handlers", "HTTPHeadersForwarder") => Builtin::HttpHeadersForwarder,
        ("loggers", "BaseLogger") => Builtin::BaseLogger,
        ("loggers", "JsonLogWriter") => Builtin::JsonLogWriter,
        ("loggers", "LogEntryTransformer") => Builtin::LogEntryTransformer,
        ("strategies", "Fallback") => Builtin::Fallback,
        _ => return None,
    };
    Some(builtin)
}

/// Turns config values that name non-built-in code into core trait objects.
pub trait ExtensionResolver: Send + Sync {
    fn key_check(
        &self,
        spec: &ExtensionSpec,
        config: &Config,
    ) -> Result<Arc<dyn KeyCheck>, ConfigError>;
    fn connection(
        &self,
        spec: &ExtensionSpec,
        config: &Config,
    ) -> Result<Arc<dyn Provider>, ConfigError>;
    fn handler(
        &self,
        spec: &ExtensionSpec,
        config: &Config,
    ) -> Result<Arc<dyn RequestHandler>, ConfigError>;
    fn logger(&self, spec: &ExtensionSpec, config: &Config)
        -> Result<Arc<dyn Logger>, ConfigError>;
    fn log_writer(
        &self,
        spec: &ExtensionSpec,
        config: &Config,
    ) -> Result<Arc<dyn LogWriter>, ConfigError>;
    /// `components` entries (arbitrary objects shared with user code).
    fn component(&self, spec: &ExtensionSpec, config: &Config) -> Result<(), ConfigError>;

    /// A function connection's `embed_func`: a callable that embeds texts.
    fn embedder(
        &self,
        spec: &ExtensionSpec,
        config: &Config,
    ) -> Result<Arc<dyn crate::providers::doors::Embedder>, ConfigError> {
        Err(ConfigError::new(
            &config.path,
            &spec.key,
            format!(
                "'{}' names a Python callable; the native lm-proxy-server runs without \
                 Python. Install the Python package (pip install lm-proxy-server) and run its \
                 `lm-proxy-server` command to use Python extensions",
                spec.target
            ),
        ))
    }

    /// Read the config file at `path` (at startup and on every reload). The native
    /// resolver reads TOML, JSON and YAML; the Python one also executes `.py` files.
    fn load_config(&self, path: &Path) -> Result<Config, ConfigError> {
        Config::load(path)
    }

    /// Called once a gateway has been built from `gateway.config` with this resolver
    /// (at startup and after each reload), before it serves: the Python resolver
    /// publishes its connections and components to Python code here.
    fn gateway_built(&self, _gateway: &Gateway) {}
}

/// The native binary's resolver: no Python, so every non-built-in name is an error
/// that tells the user to run the Python package instead.
pub struct NativeResolver;

impl NativeResolver {
    fn python_required(spec: &ExtensionSpec, config: &Config) -> ConfigError {
        let problem = if spec.target.starts_with("lm_proxy.") {
            format!("'{}' is not a known lm-proxy built-in", spec.target)
        } else {
            format!(
                "'{}' names a Python callable; the native lm-proxy-server runs without Python. \
                 Install the Python package (pip install lm-proxy-server) and run its \
                 `lm-proxy-server` command to use Python extensions",
                spec.target
            )
        };
        ConfigError::new(&config.path, &spec.key, problem)
    }
}

impl ExtensionResolver for NativeResolver {
    fn key_check(
        &self,
        spec: &ExtensionSpec,
        config: &Config,
    ) -> Result<Arc<dyn KeyCheck>, ConfigError> {
        Err(Self::python_required(spec, config))
    }

    fn connection(
        &self,
        spec: &ExtensionSpec,
        config: &Config,
    ) -> Result<Arc<dyn Provider>, ConfigError> {
        Err(Self::python_required(spec, config))
    }

    fn handler(
        &self,
        spec: &ExtensionSpec,
        config: &Config,
    ) -> Result<Arc<dyn RequestHandler>, ConfigError> {
        Err(Self::python_required(spec, config))
    }

    fn logger(
        &self,
        spec: &ExtensionSpec,
        config: &Config,
    ) -> Result<Arc<dyn Logger>, ConfigError> {
        Err(Self::python_required(spec, config))
    }

    fn log_writer(
        &self,
        spec: &ExtensionSpec,
        config: &Config,
    ) -> Result<Arc<dyn LogWriter>, ConfigError> {
        Err(Self::python_required(spec, config))
    }

    fn component(&self, spec: &ExtensionSpec, config: &Config) -> Result<(), ConfigError> {
        Err(Self::python_required(spec, config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_names_map_to_builtins() {
        assert_eq!(
            builtin_name("lm_proxy.api_key_check.AllowAll"),
            Some(Builtin::AllowAll)
        );
        assert_eq!(
            builtin_name("lm_proxy.api_key_check.with_request.CheckAPIKeyWithRequest"),
            Some(Builtin::CheckApiKeyWithRequest)
        );
        assert_eq!(
            builtin_name("lm_proxy.strategies.Fallback"),
            Some(Builtin::Fallback)
        );
        assert_eq!(builtin_name("my_validators.validate_api_key"), None);
        assert_eq!(builtin_name("lm_proxy.nothing.Here"), None);
    }
}
