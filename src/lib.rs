//! lm-proxy: an OpenAI-compatible LLM gateway.
//!
//! Module map (see ARCHITECTURE.md for the request path and the reasons):
//! - [`cli`]: command line shared by the binary and the Python package
//! - [`config`]: the config file model, loading and checks
//! - [`gateway`]: the compiled runtime built from a config
//! - [`server`]: axum router, state, TLS, shutdown
//! - [`api`]: HTTP endpoints
//! - [`auth`], [`routing`], [`handlers`], [`providers`], [`sse`], [`streaming`], [`logging`]
//! - [`metrics`]: `GET /metrics` (Prometheus), per server
//! - [`extensions`]: built-in names and the resolver for Python callables
//! - [`error`]: the error type and the OpenAI error envelope

pub mod allocator;
pub mod api;
pub mod auth;
pub mod cli;
pub mod client_addr;
pub mod config;
pub mod context;
pub mod error;
pub mod extensions;
pub mod gateway;
pub mod handlers;
pub mod http1;
pub mod json_scan;
pub mod logging;
pub mod metrics;
pub mod payload;
pub mod providers;
pub mod recent;
pub mod routing;
pub mod secrets;
pub mod server;
pub mod shard;
pub mod shared_state;
pub mod sse;
pub mod streaming;
pub mod upstream;
pub mod usage;

#[cfg(feature = "python")]
mod python;

#[cfg(test)]
mod proptests;

pub use config::{Config, ConfigError};
pub use error::ApiError;
pub use gateway::Gateway;
