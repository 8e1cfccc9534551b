//! HTTP plumbing shared by HTTP providers (over `crate::upstream`): sending with a
//! deadline, and turning
//! upstream failures into [`ApiError`]s (4xx keep their status and message; 5xx and
//! transport failures are 502; timeouts 504).

use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

use futures_util::{FutureExt, StreamExt};

use crate::error::{ApiError, ErrorBody};
use crate::upstream::{UpstreamError, UpstreamResponse};

/// The most of an upstream error body we read (the rest is not needed for a message).
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Wait for the response head of a sent request, within `timeout`.
///
/// Not an `async fn`: that would keep both the request future and the timeout
/// wrapping it in its state (twice the size, moved on every await up the stack).
pub fn send(
    request: impl std::future::Future<Output = Result<UpstreamResponse, UpstreamError>>,
    timeout: Duration,
) -> impl std::future::Future<Output = Result<UpstreamResponse, ApiError>> {
    tokio::time::timeout(timeout, request).map(move |result| match result {
        Err(_) => Err(timeout_error(timeout)),
        Ok(Err(e)) => Err(e.into_api_error()),
        Ok(Ok(response)) => Ok(response),
    })
}

/// [`send`] for a reqwest request (token and metadata calls), giving reqwest's
/// response.
pub async fn send_reqwest(
    request: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<reqwest::Response, ApiError> {
    match tokio::time::timeout(timeout, request.send()).await {
        Err(_) => Err(timeout_error(timeout)),
        Ok(Err(e)) => Err(transport_error(e)),
        Ok(Ok(response)) => Ok(response),
    }
}

pub fn timeout_error(timeout: Duration) -> ApiError {
    ApiError::UpstreamTimeout {
        detail: format!("no answer within {:.1}s", timeout.as_secs_f64()),
    }
}

/// A reqwest failure, without the URL (it may carry credentials in some setups).
pub fn transport_error(e: reqwest::Error) -> ApiError {
    UpstreamError::reqwest(e).into_api_error()
}

/// Pass a 2xx response on; turn any other status into the matching error.
pub async fn check_status(
    response: UpstreamResponse,
    timeout: Duration,
) -> Result<UpstreamResponse, ApiError> {
    check_status_with(response, timeout, status_error).await
}

/// [`check_status`] with a provider's own mapping of status, error body and
/// `Retry-After` to an error (for providers whose statuses need more than
/// [`status_error`], e.g. Anthropic's 529).
pub async fn check_status_with(
    response: UpstreamResponse,
    timeout: Duration,
    map: fn(StatusCode, &[u8], Option<http::HeaderValue>) -> ApiError,
) -> Result<UpstreamResponse, ApiError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .filter(|v| is_retry_after(v))
        .cloned();
    let body = read_limited(response, timeout).await.unwrap_or_default();
    Err(map(status, &body, retry_after))
}

/// Whether an upstream's `Retry-After` has one of the two forms HTTP allows
/// (delta-seconds, or an HTTP-date such as `Wed, 21 Oct 2015 07:28:00 GMT`), so
/// that only such a value is passed on to the client: anything else (an upstream
/// echoing a request header there) is dropped. Values are redacted as well.
fn is_retry_after(value: &http::HeaderValue) -> bool {
    let bytes = value.as_bytes();
    let seconds = !bytes.is_empty() && bytes.len() <= 10 && bytes.iter().all(u8::is_ascii_digit);
    let date = (20..=40).contains(&bytes.len())
        && bytes.ends_with(b" GMT")
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b' ' | b',' | b':'));
    seconds || date
}

/// Read at most `ERROR_BODY_LIMIT` bytes of an error answer within `timeout`.
async fn read_limited(response: UpstreamResponse, timeout: Duration) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let mut pieces = response.bytes_stream();
    let read = async {
        while let Some(Ok(chunk)) = pieces.next().await {
            body.extend_from_slice(&chunk);
            if body.len() >= ERROR_BODY_LIMIT {
                body.truncate(ERROR_BODY_LIMIT);
                break;
            }
        }
    };
    tokio::time::timeout(timeout, read).await.ok()?;
    Some(body)
}

/// Map an upstream error status and body to an error for the client.
pub fn status_error(
    status: StatusCode,
    body: &[u8],
    retry_after: Option<http::HeaderValue>,
) -> ApiError {
    let parsed = parse_error_body(body);
    let message = parsed
        .message
        .unwrap_or_else(|| format!("upstream answered {status} with no error message"));
    if status.is_client_error() {
        let error_type = parsed
            .error_type
            .unwrap_or_else(|| default_error_type(status).into());
        let mut body = ErrorBody::new(status, message, error_type)
            .code(parsed.code)
            .param(parsed.param);
        if let Some(value) = retry_after {
            body = body.header(http::header::RETRY_AFTER, value);
        }
        ApiError::UpstreamRejected(Box::new(body))
    } else if status.is_redirection() {
        // Redirects are never followed (they would carry the provider key and the
        // prompt to another host; see `upstream::UpstreamClient`).
        ApiError::upstream_failure(format!(
            "upstream answered {status}, a redirect, which lm-proxy does not follow: \
             set the connection's api_base to the final URL"
        ))
    } else {
        ApiError::upstream_failure(format!("upstream answered {status}: {message}"))
    }
}

fn default_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        _ => "invalid_request_error",
    }
}

#[derive(Debug, Default, PartialEq)]
pub struct ParsedError {
    pub message: Option<String>,
    pub error_type: Option<String>,
    pub code: Option<String>,
    pub param: Option<String>,
}

/// Read an error body in any of the shapes upstreams use: OpenAI's nested
/// `{"error": {...}}`, vLLM's older flat `{"object": "error", "message", "code": 400}`,
/// `{"error": "text"}`, `{"detail": ...}`, or plain text.
pub fn parse_error_body(body: &[u8]) -> ParsedError {
    let text_of = |v: Option<&Value>| -> Option<String> {
        match v? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            _ => None,
        }
    };
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => {
            let inner = match map.get("error") {
                Some(Value::Object(inner)) => inner.clone(),
                Some(Value::String(s)) => {
                    return ParsedError {
                        message: Some(s.clone()),
                        ..Default::default()
                    }
                }
                _ => map.clone(),
            };
            let message = text_of(inner.get("message")).or_else(|| match map.get("detail") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(other @ (Value::Object(_) | Value::Array(_))) => Some(other.to_string()),
                _ => None,
            });
            ParsedError {
                message,
                error_type: text_of(inner.get("type")),
                // Integer codes (vLLM's HTTP status) carry nothing the status does not.
                code: text_of(inner.get("code")),
                param: text_of(inner.get("param")),
            }
        }
        _ => {
            let text = String::from_utf8_lossy(body).trim().to_owned();
            ParsedError {
                message: (!text.is_empty()).then(|| truncate(&text, 500)),
                ..Default::default()
            }
        }
    }
}

/// Cut without leaving part of a word at the end (a cut secret would escape the
/// redactor).
fn truncate(text: &str, max: usize) -> String {
    crate::secrets::truncate_text(text, max)
}

/// GET a JSON document (model lists), within `timeout` and at most `limit` bytes
/// (`max_response_body_mb`), errors mapped as for chat calls.
pub async fn get_json(
    sent: impl std::future::Future<Output = Result<UpstreamResponse, UpstreamError>>,
    timeout: Duration,
    limit: usize,
) -> Result<Value, ApiError> {
    let work = async {
        let response = send(sent, timeout).await?;
        let response = check_status(response, timeout).await?;
        let bytes = response
            .bytes(limit)
            .await
            .map_err(UpstreamError::into_api_error)?;
        serde_json::from_slice::<Value>(&bytes)
            .map_err(|e| ApiError::upstream_failure(format!("model list is not JSON: {e}")))
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(timeout_error(timeout)))
}

/// The `id`s of `data[]` in an OpenAI- or Anthropic-shaped model list.
pub fn data_ids(list: &Value) -> Vec<String> {
    list.get("data")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_in_every_shape() {
        let nested = parse_error_body(br#"{"error":{"message":"too long","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#);
        assert_eq!(nested.message.as_deref(), Some("too long"));
        assert_eq!(nested.code.as_deref(), Some("context_length_exceeded"));
        assert_eq!(nested.param.as_deref(), Some("messages"));

        let flat = parse_error_body(br#"{"object":"error","message":"bad","type":"BadRequestError","param":null,"code":400}"#);
        assert_eq!(flat.message.as_deref(), Some("bad"));
        assert_eq!(flat.code, None);

        assert_eq!(
            parse_error_body(br#"{"error":"nope"}"#).message.as_deref(),
            Some("nope")
        );
        assert_eq!(
            parse_error_body(b"plain text").message.as_deref(),
            Some("plain text")
        );
        assert_eq!(parse_error_body(b"").message, None);
    }

    #[test]
    fn statuses_map_to_client_errors_or_502() {
        let e = status_error(
            StatusCode::TOO_MANY_REQUESTS,
            b"{}",
            Some("3".parse().unwrap()),
        );
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.error_object()["type"], "rate_limit_error");
        let e = status_error(StatusCode::SERVICE_UNAVAILABLE, b"down", None);
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn only_well_formed_retry_after_values_are_passed_on() {
        for ok in ["7", "120", "Wed, 21 Oct 2015 07:28:00 GMT"] {
            assert!(is_retry_after(&ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "",
            "7 sk-secret",
            "Bearer sk-abcdef",
            "-1",
            "12345678901",
            "x GMT",
        ] {
            assert!(!is_retry_after(&bad.parse().unwrap()), "{bad}");
        }
    }
}
