//! The per-request `tracing` line: one INFO line per finished request with its
//! status, model, connection and duration, and no secret in it (the client key is
//! never logged; `api_key_id` stands for it). Debug mode adds error details.
//! Streams are logged when they end, including when the client goes away.
//!
//! The line's target, `lm_proxy::request` ([`super::output::REQUEST_TARGET`]), is
//! what sends it through the batching stderr output ([`super::output`]): it reaches
//! stderr up to 100 ms later, in one `write` with other request lines.

use crate::context::RequestContext;
use crate::error::{debug_details, ApiError};

/// The fields of a finished request that the log line shows.
#[derive(Debug, Clone)]
pub struct RequestSummary {
    pub id: String,
    pub requested_model: Option<String>,
    pub connection: Option<String>,
    pub upstream_model: Option<String>,
    pub group: Option<String>,
    pub stream: bool,
    pub started: std::time::Instant,
}

impl RequestSummary {
    pub fn of(ctx: &RequestContext) -> Self {
        RequestSummary {
            id: ctx.id.clone(),
            requested_model: ctx
                .request
                .get("model")
                .and_then(|m| m.as_str())
                .map(str::to_owned),
            connection: ctx.connection.clone(),
            upstream_model: ctx.model.clone(),
            group: ctx.group.clone(),
            stream: ctx.is_stream(),
            started: ctx.started,
        }
    }

    /// Emit the request line. `status` is the HTTP status sent; for streams, an error
    /// that happened after the headers is reported in `error`.
    pub fn log(&self, status: u16, error: Option<&ApiError>, note: &str) {
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let model = self.requested_model.as_deref().unwrap_or("-");
        let connection = self.connection.as_deref().unwrap_or("-");
        let upstream_model = self.upstream_model.as_deref().unwrap_or("-");
        let group = self.group.as_deref().unwrap_or("-");
        let error_text = error.map(|e| {
            if debug_details() {
                e.to_string()
            } else {
                e.error_object()["code"]
                    .as_str()
                    .unwrap_or("error")
                    .to_owned()
            }
        });
        let server_side = error.is_some_and(ApiError::is_server_side);
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: super::output::REQUEST_TARGET,
                    id = %self.id,
                    status,
                    model,
                    connection,
                    upstream_model,
                    group,
                    stream = self.stream,
                    duration_ms = format_args!("{duration_ms:.1}"),
                    error = error_text.as_deref().unwrap_or(""),
                    "chat completion{note}"
                )
            };
        }
        if server_side {
            line!(warn);
        } else {
            line!(info);
        }
    }
}
