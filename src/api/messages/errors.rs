//! Errors on the Anthropic door, in Anthropic's envelope:
//! `{"type": "error", "error": {"type": ..., "message": ...}}`.
//!
//! The error itself is the core's [`ApiError`] (already redacted by the core's
//! [`super::super::core::Ending`]); only its rendering differs from the chat door.
//! The status and the headers it carries (`retry-after`, `connection: close`) are
//! the same; the type is Anthropic's name for the status, or the upstream's own
//! Anthropic type when a pass-through upstream gave one.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::error::ApiError;

/// The error types Anthropic's API documents.
const ANTHROPIC_TYPES: [&str; 10] = [
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "timeout_error",
    "overloaded_error",
];

/// Anthropic's error type for an HTTP status.
pub fn type_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// The inner `error` object: `type` and `message`.
pub fn error_object(error: &ApiError) -> Value {
    let status = error.status();
    let openai = error.error_object();
    let message = openai["message"].as_str().unwrap_or_default().to_owned();
    // An upstream's own Anthropic type is kept when it agrees with the status class
    // (a 4xx type on a 4xx answer); otherwise the status decides.
    let upstream_type = match error {
        ApiError::UpstreamRejected(body) | ApiError::Custom(body) => Some(body.error_type.as_str()),
        _ => None,
    }
    .filter(|t| ANTHROPIC_TYPES.contains(t))
    .filter(|t| {
        let server_type = matches!(*t, "api_error" | "overloaded_error" | "timeout_error");
        if status.is_client_error() {
            !server_type
        } else {
            server_type
        }
    });
    let error_type = upstream_type.unwrap_or_else(|| type_for_status(status));
    json!({"type": error_type, "message": message})
}

/// The whole envelope.
pub fn envelope(error: &ApiError) -> Value {
    json!({"type": "error", "error": error_object(error)})
}

/// The error as the Anthropic door answers it: the chat door's status and headers,
/// Anthropic's body.
pub fn response(error: ApiError) -> Response {
    let body = serde_json::to_vec(&envelope(&error)).unwrap_or_default();
    let mut response = error.into_response();
    response.headers_mut().remove(header::CONTENT_LENGTH);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    *response.body_mut() = Body::from(body);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorBody;

    #[test]
    fn statuses_map_to_anthropic_types() {
        let cases = [
            (
                ApiError::InvalidApiKey {
                    status: StatusCode::UNAUTHORIZED,
                },
                "authentication_error",
            ),
            (
                ApiError::ConnectionNotAllowed("c".into()),
                "permission_error",
            ),
            (ApiError::ModelNotFound("m".into()), "not_found_error"),
            (ApiError::invalid_request("bad"), "invalid_request_error"),
            (
                ApiError::RequestTooLarge { limit_bytes: 10 },
                "request_too_large",
            ),
            (ApiError::upstream_failure("x"), "api_error"),
            (ApiError::internal("x"), "api_error"),
            (ApiError::ServiceDisabled, "overloaded_error"),
            (
                ApiError::UpstreamTimeout {
                    detail: String::new(),
                },
                "timeout_error",
            ),
            (
                ApiError::Custom(Box::new(ErrorBody::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "slow down",
                    "requests",
                ))),
                "rate_limit_error",
            ),
            // The upstream's own type survives when it fits the status.
            (
                ApiError::UpstreamRejected(Box::new(ErrorBody::new(
                    StatusCode::BAD_REQUEST,
                    "m",
                    "billing_error",
                ))),
                "billing_error",
            ),
            // An OpenAI-style type does not.
            (
                ApiError::UpstreamRejected(Box::new(ErrorBody::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "m",
                    "server_error",
                ))),
                "overloaded_error",
            ),
        ];
        for (error, expected) in cases {
            let body = envelope(&error);
            assert_eq!(body["type"], "error");
            assert_eq!(body["error"]["type"], expected, "{error:?}");
            assert!(body["error"]["message"].is_string());
        }
    }

    #[tokio::test]
    async fn the_response_keeps_status_and_retry_after() {
        let error = ApiError::UpstreamRejected(Box::new(
            ErrorBody::new(StatusCode::TOO_MANY_REQUESTS, "slow", "rate_limit_error")
                .header(header::RETRY_AFTER, HeaderValue::from_static("7")),
        ));
        let response = response(error);
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            body,
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}})
        );
    }
}
