//! Python exceptions from user code as answers to the client.
//!
//! `lm_proxy.errors.OpenAIHTTPException(message, status_code, error_type, code,
//! headers)` becomes exactly that answer. Anything else is a fault: 500 from key
//! checks and handlers, 502 from connections, with the exception shown only in
//! debug mode (the core's `ApiError` hides details otherwise) and always logged.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::config::ConfigError;
use crate::error::{ApiError, ErrorBody};

use super::runtime::helpers;

/// Which kind of extension raised, which decides the status of unexpected errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    KeyCheck,
    Handler,
    Connection,
}

/// `Type: message` of an exception.
pub fn summary(py: Python<'_>, err: &PyErr) -> String {
    let name = err
        .get_type(py)
        .qualname()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    let value = err.value(py);
    match value.str() {
        Ok(text) if !text.to_string_lossy().is_empty() => {
            format!("{name}: {}", text.to_string_lossy())
        }
        _ => name,
    }
}

/// The formatted traceback (for debug logs).
pub fn traceback(py: Python<'_>, err: &PyErr) -> String {
    helpers(py)
        .and_then(|h| h.format_exception.bind(py).call1((err.value(py),)))
        .and_then(|t| t.extract::<String>())
        .unwrap_or_else(|_| summary(py, err))
}

/// The client's answer for an exception raised by `label` (e.g. "api_key_check
/// my_validators.check").
pub fn api_error(py: Python<'_>, err: PyErr, role: Role, label: &str) -> ApiError {
    if let Ok(h) = helpers(py) {
        if err.is_instance(py, h.http_exception.bind(py)) {
            return http_exception(py, err.value(py).as_any());
        }
    }
    let text = summary(py, &err);
    if err.is_instance_of::<pyo3::exceptions::asyncio::CancelledError>(py) {
        // Cancelled by us: the client went away or the server is stopping.
        tracing::debug!("{label} was cancelled");
        return match role {
            Role::Connection => ApiError::upstream_failure(format!("{label} was cancelled")),
            Role::KeyCheck | Role::Handler => ApiError::internal(format!("{label} was cancelled")),
        };
    }
    tracing::error!("{label} raised {text}");
    if tracing::enabled!(tracing::Level::DEBUG) {
        tracing::debug!("{label}: {}", traceback(py, &err));
    }
    let detail = format!("{label} raised {text}");
    match role {
        Role::Connection => ApiError::upstream_failure(detail),
        Role::KeyCheck | Role::Handler => ApiError::internal(detail),
    }
}

/// An `OpenAIHTTPException` as the error answer it describes.
fn http_exception(_py: Python<'_>, exc: &Bound<'_, PyAny>) -> ApiError {
    let text = |name: &str| -> Option<String> {
        exc.getattr(name)
            .ok()
            .filter(|v| !v.is_none())
            .and_then(|v| v.str().ok().map(|s| s.to_string_lossy().into_owned()))
    };
    let status = exc
        .getattr("status_code")
        .ok()
        .and_then(|v| v.extract::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or_else(|| {
            tracing::warn!(
                "OpenAIHTTPException.status_code must be a 4xx or 5xx status; answering 500"
            );
            StatusCode::INTERNAL_SERVER_ERROR
        });
    let mut body = ErrorBody::new(
        status,
        text("message").unwrap_or_default(),
        text("error_type").unwrap_or_else(|| "invalid_request_error".into()),
    )
    .code(text("code"))
    .param(text("param"));
    if let Ok(headers) = exc.getattr("headers") {
        if let Ok(dict) = headers.cast::<PyDict>() {
            for (name, value) in dict.iter() {
                let name = name
                    .cast::<PyString>()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let value = value
                    .str()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                match (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    (Ok(n), Ok(v)) => body = body.header(n, v),
                    _ => tracing::warn!(
                        "OpenAIHTTPException: header {name:?} is not a valid HTTP header; dropped"
                    ),
                }
            }
        }
    }
    ApiError::Custom(Box::new(body))
}

/// The bridge failed to run the call at all.
pub fn bridge_failure(label: &str, role: Role) -> ApiError {
    let detail = format!("{label}: the Python runtime of lm-proxy is shutting down");
    match role {
        Role::Connection => ApiError::upstream_failure(detail),
        _ => ApiError::internal(detail),
    }
}

/// A config problem found while resolving Python objects.
pub fn config_error(
    py: Python<'_>,
    config_path: &std::path::Path,
    key: &str,
    err: PyErr,
) -> ConfigError {
    if tracing::enabled!(tracing::Level::DEBUG) {
        tracing::debug!("{key}: {}", traceback(py, &err));
    }
    // lm-proxy's own ConfigError says what is wrong in plain words; anything else
    // (an ImportError, a TypeError from a constructor) is shown with its type.
    let own = helpers(py).is_ok_and(|h| err.is_instance(py, h.config_error.bind(py)));
    let problem = if own {
        err.value(py).to_string()
    } else {
        summary(py, &err)
    };
    ConfigError::new(config_path, key, problem)
}

/// A `ConfigError` as the Python exception `lm_proxy.errors.ConfigError`.
pub fn raise_config_error(py: Python<'_>, err: &ConfigError) -> PyErr {
    match helpers(py) {
        Ok(h) => match h.config_error.bind(py).call1((err.to_string(),)) {
            Ok(exc) => PyErr::from_value(exc),
            Err(e) => e,
        },
        Err(e) => e,
    }
}
