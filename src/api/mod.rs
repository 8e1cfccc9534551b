//! The HTTP endpoints: thin functions that extract, call the core, and respond.

pub mod admin;
pub mod chat;
pub mod completions;
pub mod core;
pub mod embeddings;
pub mod messages;
pub mod models;
pub mod raw_body;
pub mod raw_chat;
pub mod responses;
pub mod validate;

use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::{ApiError, ErrorBody};

/// `GET /health`: liveness, no key needed.
pub async fn health() -> Response {
    axum::Json(json!({"status": "healthy"})).into_response()
}

/// Any path we do not serve: an OpenAI-shaped 404.
pub async fn not_found(method: Method, uri: Uri) -> Response {
    let body = ErrorBody::new(
        StatusCode::NOT_FOUND,
        format!("Unknown endpoint: {method} {}", uri.path()),
        "invalid_request_error",
    )
    .code(Some("unknown_url".into()));
    ApiError::Custom(Box::new(body)).into_response()
}

/// A known path with the wrong method: an OpenAI-shaped 405.
pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let body = ErrorBody::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("Method {method} is not allowed for {}", uri.path()),
        "invalid_request_error",
    )
    .code(Some("method_not_allowed".into()));
    ApiError::Custom(Box::new(body)).into_response()
}
