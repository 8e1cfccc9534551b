//! The one error type of the request path, and how each error looks on the wire.
//!
//! Every failure a client can see is an [`ApiError`]; each variant knows its HTTP
//! status and its OpenAI `type` / `code`, and renders as the OpenAI error envelope
//! `{"error": {"message", "type", "param", "code"}}`. Details that could help an
//! attacker or leak internals (transport errors, upstream bodies on 5xx) are only
//! included when debug mode is on (see [`set_debug_details`]).

use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

static DEBUG_DETAILS: AtomicBool = AtomicBool::new(false);

/// Turn on error details in responses (debug mode). Set once at startup.
pub fn set_debug_details(on: bool) {
    DEBUG_DETAILS.store(on, Ordering::Relaxed);
}

/// Whether debug details are shown in error responses.
pub fn debug_details() -> bool {
    DEBUG_DETAILS.load(Ordering::Relaxed)
}

const INVALID_KEY_MESSAGE: &str =
    "Incorrect API key provided: your API key is invalid, expired, or revoked.";
const UPSTREAM_MESSAGE: &str = "Error processing upstream provider response";

/// A complete error answer: status, OpenAI error fields and extra headers
/// (boxed inside [`ApiError`] to keep the common `Result`s small).
#[derive(Debug, Clone)]
pub struct ErrorBody {
    pub status: StatusCode,
    pub message: String,
    pub error_type: String,
    pub code: Option<String>,
    pub param: Option<String>,
    /// Headers sent with the answer (e.g. `Retry-After`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ErrorBody {
    pub fn new(
        status: StatusCode,
        message: impl Into<String>,
        error_type: impl Into<String>,
    ) -> Self {
        ErrorBody {
            status,
            message: message.into(),
            error_type: error_type.into(),
            code: None,
            param: None,
            headers: Vec::new(),
        }
    }

    pub fn code(mut self, code: Option<String>) -> Self {
        self.code = code;
        self
    }

    pub fn param(mut self, param: Option<String>) -> Self {
        self.param = param;
        self
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// An error answered to the client in the OpenAI envelope.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The request itself is malformed (400).
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    /// The body is larger than the configured limit (413).
    #[error("request body too large")]
    RequestTooLarge { limit_bytes: usize },
    /// The key check rejected the client key, or none was sent: 401 as OpenAI
    /// answers (clients map only 401 to an authentication error), or 403 (the
    /// reference's status) with `invalid_api_key_status = 403`.
    #[error("invalid api key")]
    InvalidApiKey { status: StatusCode },
    /// The caller's group may not use the routed connection (403).
    #[error("connection '{0}' not allowed")]
    ConnectionNotAllowed(String),
    /// `enabled = false` in the config (503).
    #[error("service disabled")]
    ServiceDisabled,
    /// No routing rule matched the requested model (404).
    #[error("no route for model '{0}'")]
    ModelNotFound(String),
    /// The upstream answered 4xx (or a status a provider maps on purpose, such as
    /// Anthropic's 529 → 503): its status and message are passed on.
    #[error("upstream {}: {}", .0.status, .0.message)]
    UpstreamRejected(Box<ErrorBody>),
    /// Transport failure, upstream 5xx, or an unreadable upstream answer (502).
    /// `detail` is shown only in debug mode.
    #[error("upstream failure: {detail}")]
    UpstreamFailure { detail: String },
    /// The upstream did not answer in time (504).
    #[error("upstream timeout: {detail}")]
    UpstreamTimeout { detail: String },
    /// An error raised by a request handler or extension with its own status and body.
    #[error("{}", .0.message)]
    Custom(Box<ErrorBody>),
    /// A fault inside the gateway (500). `detail` is shown only in debug mode.
    #[error("internal error: {detail}")]
    Internal { detail: String },
}

impl ApiError {
    pub fn invalid_request(message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: None,
            code: None,
        }
    }

    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: Some(param.to_owned()),
            code: Some("invalid_value"),
        }
    }

    pub fn upstream_failure(detail: impl Into<String>) -> Self {
        ApiError::UpstreamFailure {
            detail: detail.into(),
        }
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        ApiError::Internal {
            detail: detail.into(),
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::InvalidApiKey { status } => *status,
            ApiError::ConnectionNotAllowed(_) => StatusCode::FORBIDDEN,
            ApiError::ServiceDisabled => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::ModelNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::UpstreamRejected(body) | ApiError::Custom(body) => body.status,
            ApiError::UpstreamFailure { .. } => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// True for faults on our side or upstream (worth a warning in the log);
    /// false for client mistakes.
    pub fn is_server_side(&self) -> bool {
        self.status().is_server_error()
    }

    /// The inner `error` object of the OpenAI envelope.
    pub fn error_object(&self) -> Value {
        let debug = debug_details();
        let (message, error_type, param, code): (String, String, Option<String>, Option<String>) =
            match self {
                ApiError::InvalidRequest {
                    message,
                    param,
                    code,
                } => (
                    message.clone(),
                    "invalid_request_error".into(),
                    param.clone(),
                    code.map(str::to_owned),
                ),
                ApiError::RequestTooLarge { limit_bytes } => (
                    format!("Request body is larger than the limit of {limit_bytes} bytes."),
                    "invalid_request_error".into(),
                    None,
                    Some("request_too_large".into()),
                ),
                ApiError::InvalidApiKey { .. } => (
                    INVALID_KEY_MESSAGE.into(),
                    "invalid_request_error".into(),
                    None,
                    Some("invalid_api_key".into()),
                ),
                ApiError::ConnectionNotAllowed(conn) => (
                    format!("Your API key does not allow using the '{conn}' connection."),
                    "invalid_request_error".into(),
                    None,
                    Some("connection_not_allowed".into()),
                ),
                ApiError::ServiceDisabled => (
                    "The service is disabled.".into(),
                    "service_unavailable".into(),
                    None,
                    Some("service_disabled".into()),
                ),
                ApiError::ModelNotFound(model) => (
                    format!(
                        "The model '{model}' does not exist: no routing rule matched it. \
                         Add a matching pattern to [routing], or a \"*\" catch-all rule."
                    ),
                    "invalid_request_error".into(),
                    Some("model".into()),
                    Some("model_not_found".into()),
                ),
                ApiError::UpstreamRejected(body) | ApiError::Custom(body) => (
                    body.message.clone(),
                    body.error_type.clone(),
                    body.param.clone(),
                    body.code.clone(),
                ),
                ApiError::UpstreamFailure { detail } => (
                    with_detail(UPSTREAM_MESSAGE, detail, debug),
                    "upstream_error".into(),
                    None,
                    Some("upstream_error".into()),
                ),
                ApiError::UpstreamTimeout { detail } => (
                    with_detail(
                        "The upstream provider did not answer in time",
                        detail,
                        debug,
                    ),
                    "timeout_error".into(),
                    None,
                    Some("upstream_timeout".into()),
                ),
                ApiError::Internal { detail } => (
                    with_detail("Internal server error", detail, debug),
                    "server_error".into(),
                    None,
                    Some("internal_error".into()),
                ),
            };
        json!({"message": message, "type": error_type, "param": param, "code": code})
    }

    /// The whole envelope `{"error": {...}}`.
    pub fn envelope(&self) -> Value {
        json!({ "error": self.error_object() })
    }

    fn extra_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let ApiError::RequestTooLarge { .. } = self {
            // The rest of the body was not read, so this connection cannot carry
            // another request; say so rather than let the client find out.
            headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let ApiError::UpstreamRejected(body) | ApiError::Custom(body) = self {
            for (name, value) in &body.headers {
                headers.append(name.clone(), value.clone());
            }
        }
        headers
    }
}

fn with_detail(message: &str, detail: &str, debug: bool) -> String {
    if debug && !detail.is_empty() {
        format!("{message}: {detail}")
    } else {
        message.to_owned()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.envelope())).into_response();
        response.headers_mut().extend(self.extra_headers());
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_key_has_reference_body() {
        let err = ApiError::InvalidApiKey {
            status: StatusCode::UNAUTHORIZED,
        };
        let body = err.envelope();
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], Value::Null);
        assert_eq!(body["error"]["message"], INVALID_KEY_MESSAGE);
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
        let forbidden = ApiError::InvalidApiKey {
            status: StatusCode::FORBIDDEN,
        };
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
        assert_eq!(forbidden.envelope(), body);
    }

    #[test]
    fn upstream_detail_hidden_without_debug() {
        let err = ApiError::upstream_failure("connection refused to 10.0.0.1");
        let msg = err.envelope()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        if !debug_details() {
            assert_eq!(msg, UPSTREAM_MESSAGE);
        }
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
    }
}
