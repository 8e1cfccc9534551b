//! Users' request hooks (`before` in the config): the `RequestHandler` trait and
//! building the configured list. Handlers run in order after routing and before the
//! upstream call; each may change `ctx.llm_params` or end the request with an error.

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{Config, ConfigError};
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::extensions::{builtin_name, ExtensionResolver};

#[async_trait]
pub trait RequestHandler: Send + Sync {
    /// Runs before the upstream call. An error ends the request with that answer.
    async fn before(&self, ctx: &mut RequestContext) -> Result<(), ApiError>;
}

/// Build the `before` handlers in config order.
pub fn build_handlers(
    config: &Config,
    resolver: &dyn ExtensionResolver,
) -> Result<Vec<Arc<dyn RequestHandler>>, ConfigError> {
    let mut handlers = Vec::new();
    for spec in &config.before {
        match builtin_name(&spec.target) {
            Some(builtin) => {
                return Err(ConfigError::new(
                    &config.path,
                    &spec.key,
                    format!(
                        "'{}' cannot be used as a request handler{}",
                        spec.target,
                        builtin.not_yet_note()
                    ),
                ))
            }
            None => handlers.push(resolver.handler(spec, config)?),
        }
    }
    Ok(handlers)
}
