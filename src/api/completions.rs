//! `POST {api_prefix}/completions`: OpenAI's legacy text completions (what vLLM and
//! llama.cpp clients still call), streamed or not.
//!
//! The door checks the body in OpenAI's terms (`model`, `prompt`, `stream`), the
//! shared core does the rest as for every door (`ctx.endpoint` is `completions`),
//! and the connection answers through `Provider::text_completion`: an
//! OpenAI-compatible one gets the client's bytes with only `model` replaced, and its
//! answer or stream events are passed on as written; the mock answers itself; other
//! kinds answer 400 naming the connection. Errors are OpenAI's envelope; a stream
//! that fails midway ends with an error event and `[DONE]`, as on the chat door.
//! Streams bring usage to loggers and metrics as chat streams do (the upstream is
//! asked for it unless the connection says `stream_usage = false`; a client that
//! did not ask does not see it), and loggers get the streamed answer put together
//! as one `text_completion`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::core;
use crate::context::{Endpoint, RequestContext};
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::providers::doors::TextCompletion;
use crate::server::AppState;
use crate::streaming::{encode_sse_assembling, StreamIdentity};

pub async fn completions(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
) -> Response {
    let mut incoming = core::Incoming::new(&state, peer, request, Endpoint::Completions);
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
        Ok((TextCompletion::Complete(answer), _)) => {
            let answer = gateway.redactor.redact_payload(answer);
            ending.completed(&gateway, ctx, answer.usage(), || {
                answer.to_value().into_owned()
            });
            super::core::json_response(answer.into_json_bytes())
        }
        Ok((TextCompletion::Stream(chunks), hide_usage)) => {
            let identity = StreamIdentity::new("cmpl-", ctx.model.clone().unwrap_or_default());
            // Loggers get the answer put together (a `text_completion`), capped like
            // any answer held whole.
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

/// With the answer: whether a stream's usage is to be kept from the client (the
/// gateway asked for it, the client did not), as on the chat door.
async fn handle(
    state: &AppState,
    gateway: &Gateway,
    ctx: &mut RequestContext,
    body: &mut Option<Body>,
    upstream_time: &mut Option<std::time::Duration>,
) -> Result<(TextCompletion, bool), ApiError> {
    let (bytes, held) = core::admit(state, gateway, ctx, body).await?;
    ctx.request = super::chat::json_object_body(&ctx.http_headers, &bytes)?;
    validate(&ctx.request)?;
    let connection = core::route(gateway, ctx)?;
    let keep_request = core::run_handlers(state, gateway, ctx).await?;
    let mut call =
        super::embeddings::door_call(gateway, ctx, bytes, keep_request, &connection.name, false)?;
    drop(held);
    // Streams bring usage to loggers and metrics whether or not the client asked
    // for it; with neither, nobody needs it and nothing is asked for.
    call.gateway_usage = keep_request || state.metrics().is_some();
    let hide_usage = call.stream && !call.client_include_usage();
    let provider = connection.provider.clone();
    let started = std::time::Instant::now();
    let answer = provider.text_completion(call).await;
    *upstream_time = Some(started.elapsed());
    Ok((answer?, hide_usage))
}

/// The checks of a legacy completions request, in OpenAI's terms; everything else
/// is the upstream's to judge.
pub fn validate(request: &Map<String, Value>) -> Result<(), ApiError> {
    match request.get("model") {
        Some(Value::String(m)) if !m.is_empty() => {}
        Some(_) => {
            return Err(ApiError::invalid_param(
                "model",
                "`model` must be a non-empty string.",
            ))
        }
        None => return Err(ApiError::invalid_param("model", "`model` is required.")),
    }
    let prompt_ok = match request.get("prompt") {
        None => false,
        Some(Value::String(_)) => true,
        Some(Value::Array(items)) => {
            let token_ids = |v: &Value| {
                v.as_array()
                    .is_some_and(|ids| ids.iter().all(|id| id.as_u64().is_some()))
            };
            items.iter().all(|i| i.as_u64().is_some())
                || items.iter().all(Value::is_string)
                || items.iter().all(token_ids)
        }
        Some(_) => false,
    };
    if !prompt_ok {
        return Err(ApiError::invalid_param(
            "prompt",
            "`prompt` is required: a string, a list of strings, a list of token ids or a list \
             of lists of token ids.",
        ));
    }
    for (name, ok) in [
        (
            "stream",
            request
                .get("stream")
                .is_none_or(|v| v.is_boolean() || v.is_null()),
        ),
        (
            "stream_options",
            request
                .get("stream_options")
                .is_none_or(|v| v.is_object() || v.is_null()),
        ),
        (
            "max_tokens",
            request
                .get("max_tokens")
                .is_none_or(|v| v.is_u64() || v.is_null()),
        ),
    ] {
        if !ok {
            return Err(ApiError::invalid_param(
                name,
                format!("`{name}` has the wrong type."),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bad_bodies_are_400_naming_the_field() {
        for ok in [
            json!({"model": "m", "prompt": "hi"}),
            json!({"model": "m", "prompt": ["a", "b"], "stream": true}),
            json!({"model": "m", "prompt": [1, 2]}),
            json!({"model": "m", "prompt": [[1], [2, 3]], "max_tokens": 5}),
        ] {
            validate(ok.as_object().unwrap()).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, param) in [
            (json!({"prompt": "hi"}), "model"),
            (json!({"model": ""}), "model"),
            (json!({"model": "m"}), "prompt"),
            (json!({"model": "m", "prompt": 5}), "prompt"),
            (json!({"model": "m", "prompt": ["a", 1]}), "prompt"),
            (
                json!({"model": "m", "prompt": "x", "stream": "yes"}),
                "stream",
            ),
            (
                json!({"model": "m", "prompt": "x", "max_tokens": -1}),
                "max_tokens",
            ),
        ] {
            let err = validate(bad.as_object().unwrap()).expect_err(&bad.to_string());
            assert_eq!(err.status(), 400, "{bad}");
            assert_eq!(err.error_object()["param"], param, "{bad}");
        }
    }
}
