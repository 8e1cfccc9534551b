//! Users' request hooks (`before` in the config): the `RequestHandler` trait, the
//! built-ins (`RateLimiter`, `HTTPHeadersForwarder`) and building the configured
//! list. Handlers run in order after routing and before the upstream call; each may
//! change `ctx.llm_params` or end the request with an error.

mod headers_forwarder;
mod rate_limiter;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::config::{deserialize_at, Config, ConfigError};
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::extensions::{builtin_name, Builtin, ExtensionResolver};

pub use headers_forwarder::{ForwarderArgs, HttpHeadersForwarder, SENSITIVE_HEADERS};
pub use rate_limiter::{BackendPolicy, RateLimiter, RateLimiterArgs, Scope};

/// Told the tokens (prompt + completion) a request spent, once, when its answer
/// ends with a usage.
pub type TokenMeter = Box<dyn FnOnce(u64) + Send>;

#[async_trait]
pub trait RequestHandler: Send + Sync {
    /// Runs before the upstream call. An error ends the request with that answer.
    async fn before(&self, ctx: &mut RequestContext) -> Result<(), ApiError>;

    /// For a handler that counts tokens (`RateLimiter` with `max_tokens`): what to
    /// tell when this request's answer ends with a usage. Asked once the request
    /// has passed every handler.
    fn token_meter(&self, _ctx: &RequestContext) -> Option<TokenMeter> {
        None
    }
}

/// Whether a configured handler reads how the client spelled its header names (the
/// built-in HTTPHeadersForwarder, which sends them on as spelled): only then does the
/// server record the spellings, which costs a map per request.
pub fn uses_client_spellings(config: &Config) -> bool {
    config
        .before
        .iter()
        .any(|spec| builtin_name(&spec.target) == Some(Builtin::HttpHeadersForwarder))
}

/// Build the `before` handlers in config order.
pub fn build_handlers(
    config: &Config,
    resolver: &dyn ExtensionResolver,
) -> Result<Vec<Arc<dyn RequestHandler>>, ConfigError> {
    let mut handlers: Vec<Arc<dyn RequestHandler>> = Vec::new();
    for spec in &config.before {
        let kwargs = Value::Object(spec.kwargs.clone());
        let handler: Arc<dyn RequestHandler> = match builtin_name(&spec.target) {
            Some(Builtin::RateLimiter) => {
                let args: RateLimiterArgs = deserialize_at(kwargs, &spec.key, &config.path)?;
                Arc::new(
                    RateLimiter::new(args)
                        .map_err(|p| ConfigError::new(&config.path, &spec.key, p))?,
                )
            }
            Some(Builtin::HttpHeadersForwarder) => {
                let args: ForwarderArgs = deserialize_at(kwargs, &spec.key, &config.path)?;
                Arc::new(HttpHeadersForwarder::new(args))
            }
            Some(_) => {
                return Err(ConfigError::new(
                    &config.path,
                    &spec.key,
                    format!("'{}' cannot be used as a request handler", spec.target),
                ))
            }
            None => resolver.handler(spec, config)?,
        };
        handlers.push(handler);
    }
    Ok(handlers)
}
