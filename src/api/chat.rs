//! `POST {api_prefix}/chat/completions`: the OpenAI Chat Completions door.
//!
//! The door parses the body (`parse_request`) and answers in OpenAI's shapes (JSON,
//! or SSE chunks ending in `[DONE]`); everything between (key, body limits, routing,
//! group rules, handlers, provider call, metrics, loggers) is the shared core
//! (`api::core`). A refused request's body is left unread (a small HTTP/1 one is
//! dropped so the connection stays reusable).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::core::{self, Reply};
use super::raw_chat;
use crate::context::{Endpoint, RequestContext};
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::server::AppState;
use crate::streaming::{encode_sse_assembling, StreamIdentity};

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
) -> Response {
    let mut incoming = core::Incoming::new(&state, peer, request, Endpoint::ChatCompletions);
    let result = handle(
        &state,
        &incoming.gateway,
        &mut incoming.ctx,
        &mut incoming.body,
        &mut incoming.upstream_time,
    )
    .await;
    incoming.discard_unread_body().await;
    let (gateway, ctx, ending) = incoming.finish();
    match result {
        Ok((Reply::Complete(answer), _)) => {
            let answer = gateway.redactor.redact_payload(answer);
            ending.completed(&gateway, ctx, answer.usage(), || {
                answer.to_value().into_owned()
            });
            core::json_response(answer.into_json_bytes())
        }
        Ok((Reply::Stream(chunks), hide_usage)) => {
            let identity = StreamIdentity::new("chatcmpl-", ctx.model.clone().unwrap_or_default());
            // The loggers' copy of the answer is capped like any answer held whole.
            let assemble = gateway
                .log_dispatcher
                .as_ref()
                .map(|_| gateway.config.settings.max_response_body_bytes());
            let (chunks, finish) = ending.stream(&gateway, ctx, chunks);
            let body = encode_sse_assembling(chunks, identity, assemble, hide_usage, finish);
            core::sse_response(Body::from_stream(body))
        }
        Err(error) => ending.failed(&gateway, ctx, error).into_response(),
    }
}

/// `upstream_time` is set to how long the provider call took, once it was made.
/// `body` is taken when it is read; left there, the request was refused before.
/// With the reply: whether the stream's usage is to be kept from the client (the
/// gateway asked for it, the client did not).
async fn handle(
    state: &AppState,
    gateway: &Gateway,
    ctx: &mut RequestContext,
    body: &mut Option<Body>,
    upstream_time: &mut Option<std::time::Duration>,
) -> Result<(Reply, bool), ApiError> {
    let (bytes, held) = core::admit(state, gateway, ctx, body).await?;
    // Nobody will look at the request: it may go on as the client sent it.
    if gateway.handlers.is_empty()
        && gateway.log_dispatcher.is_none()
        && core::may_take_raw(gateway, gateway.raw_chat, &bytes, |c| {
            c.provider.takes_raw_chat()
        })
    {
        json_content_type(&ctx.http_headers)?;
        if let Some(raw) = raw_chat::read(&bytes) {
            ctx.request = raw.summary();
            let connection = core::route(gateway, ctx)?;
            if connection.provider.takes_raw_chat() {
                // No handler and no logger: nobody reads `llm_params`.
                core::hold_budgets(state, gateway, ctx)?;
                let call = core::raw_upstream_call(ctx, raw, state.metrics().is_some());
                let hide_usage = call.is_stream() && !call.client_include_usage();
                let reply = core::call_provider(connection, call, upstream_time).await?;
                // The body's share of the memory budget is held until it was sent.
                drop((bytes, held));
                return Ok((reply, hide_usage));
            }
        }
    }
    ctx.request = parse_request(&ctx.http_headers, &bytes)?;
    // The parsed request is what is kept from here on.
    drop((bytes, held));
    let connection = core::route(gateway, ctx)?;
    let keep_request = core::run_handlers(state, gateway, ctx).await?;
    // Streams bring usage to loggers and metrics whether or not the client asked
    // for it; with neither, nobody needs it and nothing is asked for.
    let want_usage = keep_request || state.metrics().is_some();
    let call = core::upstream_call(ctx, keep_request, want_usage)?;
    let hide_usage = call.is_stream() && !call.client_include_usage();
    let reply = core::call_provider(connection, call, upstream_time).await?;
    Ok((reply, hide_usage))
}

/// Check the body: JSON object with a string `model`, a list of message objects,
/// and a boolean `stream` if present. Everything else is kept for the upstream.
pub fn parse_request(headers: &HeaderMap, bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let request = json_object_body(headers, bytes)?;
    super::validate::validate_request(&request)?;
    Ok(request)
}

/// The body as a JSON object, sent as JSON (every door's first check).
pub fn json_object_body(headers: &HeaderMap, bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    json_content_type(headers)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid_request(
            "The request body is empty; expected a JSON object with `model` and `messages`.",
        ));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| ApiError::InvalidRequest {
        message: format!("We could not parse the JSON body of your request: {e}"),
        param: None,
        code: Some("invalid_json"),
    })?;
    let Value::Object(request) = value else {
        return Err(ApiError::invalid_request(format!(
            "The request body must be a JSON object, not {}.",
            crate::config::json_type(&value)
        )));
    };
    Ok(request)
}

/// The body is declared JSON (the first check of every door's body).
pub fn json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    // A JSON content type is required, not just accepted: a web page can make a
    // browser send a cross-site POST without a preflight only with no content type
    // or a form/text one, so requiring JSON keeps such requests off a gateway that
    // takes any key (`AllowAll`) or relies on the client's network position.
    let Some(content_type) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::InvalidRequest {
            message: "The request has no Content-Type: send the body as JSON with \
                      `Content-Type: application/json`."
                .into(),
            param: None,
            code: Some("invalid_content_type"),
        });
    };
    {
        // The media type before any parameters, compared without case (and without
        // a lowercased copy: this runs for every request).
        let value = content_type.as_bytes();
        let essence = value[..memchr::memchr(b';', value).unwrap_or(value.len())].trim_ascii();
        let is_json = essence.eq_ignore_ascii_case(b"application/json")
            || essence
                .len()
                .checked_sub(5)
                .is_some_and(|at| essence[at..].eq_ignore_ascii_case(b"+json"));
        if !is_json {
            return Err(ApiError::InvalidRequest {
                message: format!(
                    "Unsupported Content-Type '{}': send the request body as application/json.",
                    content_type.to_str().unwrap_or("(not text)")
                ),
                param: None,
                code: Some("invalid_content_type"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn parse(body: &str) -> Result<Map<String, Value>, ApiError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        parse_request(&headers, body.as_bytes())
    }

    #[test]
    fn bad_bodies_are_400() {
        for body in [
            "",
            "  ",
            "{",
            "[]",
            "{}",
            r#"{"model": 1, "messages": []}"#,
            r#"{"model": "", "messages": [{"role": "user"}]}"#,
            r#"{"model": "m"}"#,
            r#"{"model": "m", "messages": {}}"#,
            r#"{"model": "m", "messages": []}"#,
            r#"{"model": "m", "messages": ["hi"]}"#,
            r#"{"model": "m", "messages": [{"content": "hi"}]}"#,
            r#"{"model": "m", "messages": [{"role": "user"}], "stream": "yes"}"#,
        ] {
            let err = parse(body).expect_err(body);
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{body}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        let err =
            parse_request(&headers, br#"{"model":"m","messages":[{"role":"user"}]}"#).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        // No content type at all: what a cross-site "simple" request can send.
        let err = parse_request(
            &HeaderMap::new(),
            br#"{"model":"m","messages":[{"role":"user"}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert_eq!(err.error_object()["code"], "invalid_content_type");
        for bad in [
            "application/jsonx",
            "text/json",
            "json",
            "application/json-seq",
        ] {
            headers.insert(header::CONTENT_TYPE, bad.parse().unwrap());
            let err = parse_request(&headers, br#"{"model":"m","messages":[]}"#).unwrap_err();
            assert_eq!(err.error_object()["code"], "invalid_content_type", "{bad}");
        }
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "application/vnd.x+json",
            "Application/JSON",
            " application/problem+JSON ; charset=utf-8",
            "+json",
        ] {
            headers.insert(header::CONTENT_TYPE, ok.parse().unwrap());
            assert!(
                parse_request(
                    &headers,
                    br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#
                )
                .is_ok(),
                "{ok}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_kept() {
        let req = parse(r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "brand_new": {"a": 1}}"#).unwrap();
        assert_eq!(req["brand_new"]["a"], 1);
    }
}
