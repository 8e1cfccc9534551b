//! Google API errors → the OpenAI error envelope.
//!
//! Gemini and Vertex answer failures as `{"error": {"code": 400, "message": ...,
//! "status": "INVALID_ARGUMENT", "details": [...]}}` (sometimes wrapped in a list).
//! The client gets Google's message with a status chosen from Google's `status`
//! (reference §3.5): INVALID_ARGUMENT/FAILED_PRECONDITION/OUT_OF_RANGE → 400, except
//! an invalid API key (reason `API_KEY_INVALID`, "API key not valid") → 401
//! `invalid_api_key`; UNAUTHENTICATED → 401; PERMISSION_DENIED → 403; NOT_FOUND →
//! 404; RESOURCE_EXHAUSTED → 429 with `Retry-After` (from the header, else from the
//! `RetryInfo` detail); INTERNAL/UNKNOWN/CANCELLED → 502; UNAVAILABLE → 503;
//! DEADLINE_EXCEEDED → 504. Bodies without a Google status fall back to the shared
//! HTTP-status mapping.

use std::time::Duration;

use http::{HeaderValue, StatusCode};
use serde_json::Value;

use crate::error::{ApiError, ErrorBody};
use crate::providers::upstream_http;
use crate::upstream::UpstreamResponse;

/// Pass a 2xx response on; turn any other into the matching error.
pub async fn check_status(
    response: UpstreamResponse,
    timeout: Duration,
) -> Result<UpstreamResponse, ApiError> {
    upstream_http::check_status_with(response, timeout, google_error).await
}

/// The parts of a Google error body we use.
#[derive(Debug, Default, PartialEq)]
pub struct GoogleError {
    pub message: Option<String>,
    pub status: Option<String>,
    /// `ErrorInfo.reason` values from `details` (e.g. `API_KEY_INVALID`).
    pub reasons: Vec<String>,
    /// `RetryInfo.retryDelay` in whole seconds, rounded up.
    pub retry_delay_secs: Option<u64>,
}

/// Read `{"error": {...}}` or `[{"error": {...}}]`; `None` when the body is not a
/// Google error.
pub fn parse_google_error(body: &[u8]) -> Option<GoogleError> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let error = match &value {
        Value::Array(items) => items.first()?.get("error")?,
        other => other.get("error")?,
    };
    let error = error.as_object()?;
    let text = |k: &str| {
        error
            .get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let mut parsed = GoogleError {
        message: text("message"),
        status: text("status"),
        ..Default::default()
    };
    for detail in error
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(reason) = detail.get("reason").and_then(Value::as_str) {
            parsed.reasons.push(reason.to_owned());
        }
        if let Some(delay) = detail.get("retryDelay").and_then(Value::as_str) {
            parsed.retry_delay_secs = parse_duration_secs(delay);
        }
    }
    if parsed.message.is_none() && parsed.status.is_none() {
        return None;
    }
    Some(parsed)
}

/// `"30s"`, `"1.5s"` → whole seconds, rounded up.
fn parse_duration_secs(text: &str) -> Option<u64> {
    let secs: f64 = text.trim().strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| secs.ceil() as u64)
}

/// Map a failed Google response to the client's error.
pub fn google_error(status: StatusCode, body: &[u8], retry_after: Option<HeaderValue>) -> ApiError {
    let Some(parsed) = parse_google_error(body) else {
        return upstream_http::status_error(status, body, retry_after);
    };
    let message = parsed
        .message
        .clone()
        .unwrap_or_else(|| format!("Google answered {status}"));
    let google_status = parsed.status.as_deref().unwrap_or("");
    let key_invalid = parsed.reasons.iter().any(|r| r == "API_KEY_INVALID")
        || message.contains("API key not valid");
    let code = (!google_status.is_empty()).then(|| google_status.to_ascii_lowercase());

    let (http_status, error_type, code) = if key_invalid {
        (
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            Some("invalid_api_key".to_owned()),
        )
    } else {
        match google_status {
            "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", code)
            }
            "UNAUTHENTICATED" => (StatusCode::UNAUTHORIZED, "authentication_error", code),
            "PERMISSION_DENIED" => (StatusCode::FORBIDDEN, "permission_error", code),
            "NOT_FOUND" => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some(if message.to_ascii_lowercase().contains("model") {
                    "model_not_found".to_owned()
                } else {
                    "not_found".to_owned()
                }),
            ),
            "ALREADY_EXISTS" | "ABORTED" => (StatusCode::CONFLICT, "invalid_request_error", code),
            "RESOURCE_EXHAUSTED" => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", code),
            "UNAVAILABLE" => (StatusCode::SERVICE_UNAVAILABLE, "upstream_error", code),
            "DEADLINE_EXCEEDED" => (StatusCode::GATEWAY_TIMEOUT, "timeout_error", code),
            "INTERNAL" | "UNKNOWN" | "CANCELLED" | "DATA_LOSS" | "UNIMPLEMENTED" => {
                (StatusCode::BAD_GATEWAY, "upstream_error", code)
            }
            // No (known) Google status: go by the HTTP status.
            _ => return upstream_http::status_error(status, body, retry_after),
        }
    };

    let mut error = ErrorBody::new(http_status, message, error_type).code(code);
    if http_status == StatusCode::TOO_MANY_REQUESTS {
        let value = retry_after.or_else(|| {
            parsed
                .retry_delay_secs
                .and_then(|s| HeaderValue::from_str(&s.to_string()).ok())
        });
        if let Some(value) = value {
            error = error.header(http::header::RETRY_AFTER, value);
        }
    }
    ApiError::UpstreamRejected(Box::new(error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(status: u16, body: Value) -> ApiError {
        google_error(
            StatusCode::from_u16(status).unwrap(),
            body.to_string().as_bytes(),
            None,
        )
    }

    fn google(code: u16, status: &str, message: &str) -> Value {
        json!({"error": {"code": code, "message": message, "status": status}})
    }

    #[test]
    fn statuses_map_per_google_status() {
        let cases = [
            (400, "INVALID_ARGUMENT", 400, "invalid_argument"),
            (400, "FAILED_PRECONDITION", 400, "failed_precondition"),
            (401, "UNAUTHENTICATED", 401, "unauthenticated"),
            (403, "PERMISSION_DENIED", 403, "permission_denied"),
            (429, "RESOURCE_EXHAUSTED", 429, "resource_exhausted"),
            (500, "INTERNAL", 502, "internal"),
            (503, "UNAVAILABLE", 503, "unavailable"),
            (504, "DEADLINE_EXCEEDED", 504, "deadline_exceeded"),
        ];
        for (http, status, expected, code) in cases {
            let err = map(http, google(http, status, "the message"));
            assert_eq!(err.status().as_u16(), expected, "{status}");
            let object = err.error_object();
            assert_eq!(object["message"], "the message", "{status}");
            assert_eq!(object["code"], code, "{status}");
        }
        let err = map(404, google(404, "NOT_FOUND", "models/x is not found"));
        assert_eq!(err.status(), StatusCode::NOT_FOUND);
        assert_eq!(err.error_object()["code"], "model_not_found");
    }

    #[test]
    fn invalid_api_key_is_401() {
        let body = json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}});
        let err = map(400, body);
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(err.error_object()["code"], "invalid_api_key");
        let listed = json!([{"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT"}}]);
        assert_eq!(map(400, listed).status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn retry_after_from_header_or_retry_info() {
        let body = json!({"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12.2s"}]}});
        let err = google_error(
            StatusCode::TOO_MANY_REQUESTS,
            body.to_string().as_bytes(),
            None,
        );
        let ApiError::UpstreamRejected(inner) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(inner.headers[0].1, "13");
        let err = google_error(
            StatusCode::TOO_MANY_REQUESTS,
            body.to_string().as_bytes(),
            Some(HeaderValue::from_static("7")),
        );
        let ApiError::UpstreamRejected(inner) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(inner.headers[0].1, "7");
    }

    #[test]
    fn non_google_bodies_use_the_http_status() {
        let err = google_error(StatusCode::BAD_REQUEST, b"plain failure", None);
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert_eq!(err.error_object()["message"], "plain failure");
        let err = google_error(StatusCode::BAD_GATEWAY, b"", None);
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
    }
}
