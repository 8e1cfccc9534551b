//! `POST {api_prefix}/messages` and `POST {api_prefix}/messages/count_tokens`: the
//! Anthropic Messages API door (Claude Code, the Anthropic SDKs).
//!
//! The door checks the body in Anthropic's terms (`request::validate`), then the
//! shared core (`api::core`) does what it does for every door: key (`x-api-key` or
//! `Authorization: Bearer`), body limits, routing by `model`, group rules, `before`
//! handlers, metrics, log line and loggers. Then one of two paths:
//!
//! - the route ends at an `api_type = "anthropic"` connection: **pass-through**.
//!   The client's bytes go upstream with only `model` replaced (unless a handler
//!   changed the request: then it is written out again from the context), and the
//!   answer or each stream event comes back as the upstream wrote it
//!   (`providers::anthropic::native`). With no handler and no logger to see the
//!   request, the body is checked by one walk instead of a tree (`raw`): an
//!   agent's request is tens of kilobytes, and the tree was most of its cost;
//! - any other connection: **translation**. The request becomes the canonical
//!   (chat-completions) request (`request::to_canonical`), the provider answers as
//!   it does for the chat door, and the answer (`answer`) or the chunk stream
//!   (`stream`) is turned into Anthropic's shapes.
//!
//! Errors are answered in Anthropic's envelope (`errors`).

pub mod answer;
pub mod chat_body;
pub mod count;
pub mod errors;
pub mod fast;
pub mod raw;
pub mod request;
pub mod stream;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Map, Value};

use super::core::{self, Reply};
use crate::context::{Endpoint, RequestContext};
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::json_scan::{member_spans, TokenCounts};
use crate::payload::{Payload, PayloadStream};
use crate::providers::anthropic::native::{NativeCall, NativeReply, CLIENT_HEADERS};
use crate::providers::{AnthropicProvider, Connection, UpstreamCall};
use crate::server::AppState;

/// What the door answers with.
enum DoorReply {
    /// A whole answer in Anthropic's shape, with the token counts the metrics take.
    Json {
        answer: Payload,
        usage: Option<TokenCounts>,
    },
    /// Anthropic events from an Anthropic upstream.
    Events(PayloadStream),
    /// Canonical chunks, to be translated.
    Chunks(PayloadStream, stream::Translator),
}

pub async fn messages(
    state: State<Arc<AppState>>,
    peer: ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
) -> Response {
    serve(Endpoint::Messages, state, peer, request).await
}

pub async fn count_tokens(
    state: State<Arc<AppState>>,
    peer: ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
) -> Response {
    serve(Endpoint::CountTokens, state, peer, request).await
}

async fn serve(
    endpoint: Endpoint,
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
) -> Response {
    let mut incoming = core::Incoming::new(&state, peer, request, endpoint);
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
    let assemble = gateway
        .log_dispatcher
        .as_ref()
        .map(|_| gateway.config.settings.max_response_body_bytes());
    match result {
        Ok(DoorReply::Json { answer, usage }) => {
            let answer = gateway.redactor.redact_payload(answer);
            ending.completed(&gateway, ctx, usage, || answer.to_value().into_owned());
            core::json_response(answer.into_json_bytes())
        }
        Ok(DoorReply::Events(events)) => {
            let (events, finish) = ending.stream(&gateway, ctx, events);
            // Anthropic sends its own pings; they are passed on like any event.
            let body = stream::encode(events, assemble, None, finish);
            core::sse_response(Body::from_stream(body))
        }
        Ok(DoorReply::Chunks(chunks, translator)) => {
            // Metrics and redaction see the canonical chunks (their usage).
            let (chunks, finish) = ending.stream(&gateway, ctx, chunks);
            let body = stream::encode_translated(
                chunks,
                translator,
                assemble,
                Some(stream::PING_EVERY),
                finish,
            );
            core::sse_response(Body::from_stream(body))
        }
        Err(error) => errors::response(ending.failed(&gateway, ctx, error)),
    }
}

async fn handle(
    state: &AppState,
    gateway: &Gateway,
    ctx: &mut RequestContext,
    body: &mut Option<Body>,
    upstream_time: &mut Option<std::time::Duration>,
) -> Result<DoorReply, ApiError> {
    let (bytes, held) = core::admit(state, gateway, ctx, body).await?;
    let count_tokens = ctx.endpoint == Endpoint::CountTokens;
    // Nobody will look at the request: checked without a tree, it goes to an
    // Anthropic upstream as the client sent it (`raw`).
    if gateway.handlers.is_empty()
        && gateway.log_dispatcher.is_none()
        && core::may_take_raw(gateway, gateway.raw_messages, &bytes, |c| {
            c.provider.anthropic().is_some()
        })
    {
        super::chat::json_content_type(&ctx.http_headers)?;
        if let Some(raw) = raw::read(&bytes, count_tokens) {
            ctx.request = raw.summary();
            let connection = core::route(gateway, ctx)?;
            if let Some(native) = connection.provider.anthropic() {
                // No handler and no logger: nobody reads `llm_params`.
                core::hold_budgets(state, gateway, ctx)?;
                let call = raw_native_call(ctx, raw, count_tokens)?;
                let reply = timed(
                    upstream_time,
                    Box::pin(native_reply(native, call, count_tokens)),
                )
                .await;
                // The body's share of the memory budget is held until it was sent.
                drop((bytes, held));
                return reply;
            }
        }
    }
    // Nobody will look at the request, and its connection takes a chat request as
    // written: the chat request is written from the client's bytes without a tree
    // (`chat_body`).
    if !count_tokens
        && gateway.handlers.is_empty()
        && gateway.log_dispatcher.is_none()
        && core::may_take_raw(
            gateway,
            gateway.raw_messages_translated,
            &bytes,
            takes_written_chat,
        )
    {
        super::chat::json_content_type(&ctx.http_headers)?;
        if let Some(chat) = chat_body::write(&bytes) {
            ctx.request = chat.summary();
            let connection = core::route(gateway, ctx)?;
            if takes_written_chat(connection) {
                // No handler and no logger: nobody reads `llm_params`.
                core::hold_budgets(state, gateway, ctx)?;
                // The written request asks for a stream's usage itself.
                let call = core::raw_upstream_call(ctx, chat, false);
                let reply = translated_reply(gateway, ctx, connection, call, upstream_time).await;
                // The body's share of the memory budget is held until it was sent.
                drop((bytes, held));
                return reply;
            }
        }
    }
    ctx.request = super::chat::json_object_body(&ctx.http_headers, &bytes)?;
    request::validate(&ctx.request, count_tokens)?;
    let connection = core::route(gateway, ctx)?;
    let Some(native) = connection.provider.anthropic() else {
        // Only the parsed request is kept from here on.
        drop((bytes, held));
        if count_tokens {
            // No upstream counts Anthropic's way: an estimate (`count`).
            core::run_handlers(state, gateway, ctx).await?;
            // The handlers' view: parameters (system, tools) in `llm_params`, the
            // messages in the request.
            let mut request = ctx.llm_params.clone();
            if let Some(messages) = ctx.request.get("messages") {
                request.insert("messages".into(), messages.clone());
            }
            // Tokenizing is CPU work (and the first call loads the ranks).
            let n = tokio::task::spawn_blocking(move || count::estimate(&request))
                .await
                .map_err(|e| ApiError::internal(format!("count_tokens failed: {e}")))?;
            return Ok(DoorReply::Json {
                answer: Payload::Value(serde_json::json!({ "input_tokens": n })),
                usage: None,
            });
        }
        let keep_request = core::run_handlers(state, gateway, ctx).await?;
        let call = translated_call(ctx, keep_request)?;
        return translated_reply(gateway, ctx, connection, call, upstream_time).await;
    };
    core::run_handlers(state, gateway, ctx).await?;
    let call = native_call(gateway, ctx, bytes, count_tokens)?;
    // The client's bytes are held (and counted in the body budget) until sent.
    // Boxed: the upstream call's state is large, and this future is moved whole
    // as the request's future (a copy of it per move).
    let reply = timed(
        upstream_time,
        Box::pin(native_reply(native, call, count_tokens)),
    )
    .await;
    drop(held);
    reply
}

/// Whether a connection takes the chat request that `chat_body` writes: it takes a
/// chat request as written, and the Messages door does not pass requests through
/// to it.
pub fn takes_written_chat(connection: &Connection) -> bool {
    connection.provider.anthropic().is_none() && connection.provider.takes_raw_chat()
}

/// The answer of a connection that does not speak the Messages API to the
/// canonical `call`: the whole answer translated, or the chunks with their
/// translator.
async fn translated_reply(
    gateway: &Gateway,
    ctx: &RequestContext,
    connection: &Connection,
    call: UpstreamCall,
    upstream_time: &mut Option<std::time::Duration>,
) -> Result<DoorReply, ApiError> {
    let translator = stream::Translator::new(&call.model, &connection.name);
    match core::call_provider(connection, call, upstream_time).await? {
        Reply::Complete(canonical) => {
            let usage = canonical.usage();
            let canonical = gateway.redactor.redact_payload(canonical).into_value();
            let model = ctx.model.as_deref().unwrap_or_default();
            let message = answer::message(&canonical, model, &connection.name)?;
            Ok(DoorReply::Json {
                answer: Payload::Value(message),
                usage,
            })
        }
        Reply::Stream(chunks) => Ok(DoorReply::Chunks(chunks, translator)),
    }
}

async fn timed<T>(
    upstream_time: &mut Option<std::time::Duration>,
    call: impl std::future::Future<Output = T>,
) -> T {
    let started = std::time::Instant::now();
    let out = call.await;
    *upstream_time = Some(started.elapsed());
    out
}

async fn native_reply(
    provider: &AnthropicProvider,
    call: NativeCall,
    count_tokens: bool,
) -> Result<DoorReply, ApiError> {
    let json = |answer: Payload| DoorReply::Json {
        usage: answer.usage(),
        answer,
    };
    if count_tokens {
        return provider.native_count_tokens(call).await.map(json);
    }
    Ok(match provider.native_messages(call).await? {
        NativeReply::Complete(answer) => json(answer),
        NativeReply::Stream(events) => DoorReply::Events(events),
    })
}

/// The pass-through call: the client's bytes with `model` replaced, unless a
/// handler changed the request (then written out again from the context).
fn native_call(
    gateway: &Gateway,
    ctx: &mut RequestContext,
    bytes: Bytes,
    count_tokens: bool,
) -> Result<NativeCall, ApiError> {
    let model = ctx.model.clone().unwrap_or_default();
    let (extra_headers, extra_header_case) = core::spelled_extra_headers(
        ctx.llm_params.get("extra_headers"),
        &ctx.forwarded_spellings,
    )?;
    let stream = !count_tokens
        && ctx
            .llm_params
            .get("stream")
            .or_else(|| ctx.request.get("stream"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
    let client_headers = client_headers(ctx);
    let body = if gateway.handlers.is_empty() {
        with_model(bytes, &model)?
    } else {
        let rebuilt = rebuilt_request(ctx, &model);
        let original: Map<String, Value> = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::internal(format!("the checked body no longer parses: {e}")))?;
        if same_but_model(&original, &rebuilt) {
            with_model(bytes, &model)?
        } else {
            Bytes::from(
                serde_json::to_vec(&rebuilt)
                    .map_err(|e| ApiError::internal(format!("could not write the request: {e}")))?,
            )
        }
    };
    Ok(NativeCall {
        body,
        stream,
        client_headers,
        extra_headers,
        extra_header_case,
    })
}

/// The pass-through call for a request checked without a tree (no handler, no
/// logger): [`native_call`]'s, with the body from the walk.
fn raw_native_call(
    ctx: &RequestContext,
    raw: super::raw_body::RawBody,
    count_tokens: bool,
) -> Result<NativeCall, ApiError> {
    // No handler added any (the walk sent requests that name some to the tree).
    let (extra_headers, extra_header_case) =
        core::spelled_extra_headers(None, &ctx.forwarded_spellings)?;
    let stream = !count_tokens && raw.stream.unwrap_or(false);
    Ok(NativeCall {
        client_headers: client_headers(ctx),
        body: raw.upstream_body(ctx.model.as_deref().unwrap_or_default(), false),
        stream,
        extra_headers,
        extra_header_case,
    })
}

/// The client's `anthropic-version` and `anthropic-beta` headers, passed on as they
/// came.
fn client_headers(ctx: &RequestContext) -> HeaderMap {
    let mut client_headers = HeaderMap::new();
    for name in CLIENT_HEADERS {
        for value in ctx.http_headers.get_all(name) {
            client_headers.append(HeaderName::from_static(name), value.clone());
        }
    }
    client_headers
}

/// The request as handlers left it: `model` (the upstream's), `messages`, and
/// `llm_params` but for `extra_headers` (which are headers, not body).
fn rebuilt_request(ctx: &RequestContext, model: &str) -> Map<String, Value> {
    let mut out = Map::with_capacity(ctx.llm_params.len() + 2);
    out.insert("model".into(), model.into());
    if let Some(messages) = ctx.request.get("messages") {
        out.insert("messages".into(), messages.clone());
    }
    for (key, value) in &ctx.llm_params {
        if key != "extra_headers" && key != "model" && key != "messages" {
            out.insert(key.clone(), value.clone());
        }
    }
    out
}

fn same_but_model(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|(k, v)| k == "model" || b.get(k).is_some_and(|w| w == v))
}

/// The client's body with the value of its `model` member replaced; the bytes
/// themselves when the upstream model is the one the client named.
pub(crate) fn with_model(bytes: Bytes, model: &str) -> Result<Bytes, ApiError> {
    // The body was parsed as JSON already, so it is UTF-8.
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::invalid_request("The request body is not UTF-8."))?;
    let spans = member_spans(text, "model", usize::MAX).unwrap_or_default();
    let [span] = spans.as_slice() else {
        return Err(ApiError::invalid_param(
            "model",
            "`model` must appear exactly once in the request body.",
        ));
    };
    let encoded = serde_json::to_string(model)
        .map_err(|e| ApiError::internal(format!("could not write the model name: {e}")))?;
    if text[span.clone()] == encoded {
        return Ok(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() + encoded.len());
    out.extend_from_slice(&bytes[..span.start]);
    out.extend_from_slice(encoded.as_bytes());
    out.extend_from_slice(&bytes[span.end..]);
    Ok(Bytes::from(out))
}

/// The canonical call for a translated connection, from the context as handlers
/// left it (moved out of it unless a logger still needs the request whole).
fn translated_call(ctx: &mut RequestContext, keep_request: bool) -> Result<UpstreamCall, ApiError> {
    let mut params = if keep_request {
        ctx.llm_params.clone()
    } else {
        std::mem::take(&mut ctx.llm_params)
    };
    let (headers, header_case) = core::spelled_extra_headers(
        params.shift_remove("extra_headers").as_ref(),
        &ctx.forwarded_spellings,
    )?;
    params.shift_remove("model");
    let messages = match ctx.request.get_mut("messages") {
        Some(messages) if keep_request => messages.clone(),
        Some(messages) => messages.take(),
        None => Value::Null,
    };
    let params = request::to_canonical(&messages, params)?;
    Ok(UpstreamCall {
        model: ctx.model.clone().unwrap_or_default(),
        params,
        headers,
        header_case,
        // The canonical request already asks for usage (`stream_options`): the
        // Messages API's `message_delta` carries it, so nothing is hidden here.
        gateway_usage: false,
        raw_body: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_model_value_changes() {
        let body = Bytes::from_static(
            br#"{ "max_tokens":5,"model" :"claude-x" , "messages":[{"role":"user","content":"hi","model":"keep"}], "zz_unknown": {"a": 1.50}}"#,
        );
        let same = with_model(body.clone(), "claude-x").unwrap();
        assert_eq!(same.as_ptr(), body.as_ptr(), "no copy when unchanged");
        let changed = with_model(body.clone(), "claude-\"y\"").unwrap();
        assert_eq!(
            std::str::from_utf8(&changed).unwrap(),
            r#"{ "max_tokens":5,"model" :"claude-\"y\"" , "messages":[{"role":"user","content":"hi","model":"keep"}], "zz_unknown": {"a": 1.50}}"#
        );
        let twice = Bytes::from_static(br#"{"model":"a","model":"b"}"#);
        assert_eq!(with_model(twice, "c").unwrap_err().status(), 400);
    }
}
