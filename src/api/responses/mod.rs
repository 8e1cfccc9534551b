//! `POST {api_prefix}/responses`: the OpenAI Responses API door (the OpenAI SDKs'
//! `responses.create` / `.stream` / `.parse`, the OpenAI Agents SDK, Codex), stateless.
//!
//! The door checks the body in OpenAI's terms (`request::validate`), then the
//! shared core does what it does for every door (key, body limits, routing by
//! `model`, group rules, `before` handlers, metrics, log line, loggers;
//! `ctx.endpoint` is `responses`). Then one of two paths:
//!
//! - the route ends at an OpenAI connection whose upstream speaks the Responses
//!   API (`responses_api`, on by default for api.openai.com): **pass-through**. The
//!   client's bytes go upstream with only `model` replaced (unless a handler changed
//!   the request: then it is written out again from the context), and the answer
//!   or each stream event comes back as the upstream wrote it, so built-in tools,
//!   `previous_response_id` and `store` work there. With no handler and no logger
//!   to see the request, the body is checked by one walk instead of a tree
//!   (`raw`);
//! - any other connection: **translation**. The request becomes the canonical
//!   (chat-completions) request (`request::to_canonical`; what needs server-side
//!   state is a 400 that says so), the provider answers as it does for the chat
//!   door, and the answer (`answer`) or the chunk stream (`stream`) is turned into
//!   the Responses API's shapes.
//!
//! Errors are OpenAI's envelope; a stream that fails midway ends with
//! `response.failed` (translated) or an `error` event (pass-through).

pub mod answer;
pub mod chat_body;
pub mod raw;
pub mod request;
pub mod stream;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::core::{self, Reply};
use crate::context::{Endpoint, RequestContext};
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::json_scan::TokenCounts;
use crate::payload::{Payload, PayloadStream, RawJson};
use crate::providers::doors::{DoorCall, TextCompletion};
use crate::providers::UpstreamCall;
use crate::server::AppState;

/// What the door answers with.
enum DoorReply {
    /// A whole `response` object, with the token counts the metrics take.
    Json {
        answer: Payload,
        usage: Option<TokenCounts>,
    },
    /// Responses events from an upstream that speaks the Responses API.
    Events(PayloadStream),
    /// Canonical chunks, to be translated (the translator boxed: it is large, and
    /// the other replies small).
    Chunks(PayloadStream, Box<stream::Translator>),
}

pub async fn responses(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
) -> Response {
    let mut incoming = core::Incoming::new(&state, peer, request, Endpoint::Responses);
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
    let assemble = gateway.log_dispatcher.is_some();
    match result {
        Ok(DoorReply::Json { answer, usage }) => {
            let answer = gateway.redactor.redact_payload(answer);
            ending.completed(&gateway, ctx, usage, || answer.to_value().into_owned());
            super::core::json_response(answer.into_json_bytes())
        }
        Ok(DoorReply::Events(events)) => {
            let (events, finish) = ending.stream(&gateway, ctx, events);
            let events = stream::passed_through(events, assemble);
            let body = stream::encode(events, assemble, finish);
            core::sse_response(Body::from_stream(body))
        }
        Ok(DoorReply::Chunks(chunks, translator)) => {
            // Metrics and redaction see the canonical chunks (their usage).
            let (chunks, finish) = ending.stream(&gateway, ctx, chunks);
            let events = stream::translate(chunks, *translator);
            let body = stream::encode(events, assemble, finish);
            core::sse_response(Body::from_stream(body))
        }
        Err(error) => ending.failed(&gateway, ctx, error).into_response(),
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
    // Nobody will look at the request: checked without a tree, it goes to an
    // upstream that speaks the Responses API as the client sent it (`raw`).
    if gateway.handlers.is_empty()
        && gateway.log_dispatcher.is_none()
        && core::may_take_raw(gateway, gateway.raw_responses, &bytes, |c| {
            c.provider.speaks_responses()
        })
    {
        super::chat::json_content_type(&ctx.http_headers)?;
        if let Some(raw) = raw::read(&bytes) {
            ctx.request = raw.summary();
            let connection = core::route(gateway, ctx)?;
            if connection.provider.speaks_responses() {
                // No handler and no logger: nobody reads `llm_params`.
                core::hold_budgets(state, gateway, ctx)?;
                let call = raw_door_call(ctx, raw, &connection.name)?;
                drop((bytes, held));
                return pass_through(connection, call, upstream_time).await;
            }
        }
    }
    // Nobody will look at the request, and its connection takes a chat request as
    // written: the chat request is written from the client's bytes without a tree
    // (`chat_body`).
    if gateway.handlers.is_empty()
        && gateway.log_dispatcher.is_none()
        && core::may_take_raw(
            gateway,
            gateway.raw_responses_translated,
            &bytes,
            takes_written_chat,
        )
    {
        super::chat::json_content_type(&ctx.http_headers)?;
        if let Some((chat, echoes)) = chat_body::write(&bytes) {
            ctx.request = chat.summary();
            let connection = core::route(gateway, ctx)?;
            if takes_written_chat(connection) {
                // No handler and no logger: nobody reads `llm_params`.
                core::hold_budgets(state, gateway, ctx)?;
                let skeleton = echoes.skeleton(ctx.model.as_deref().unwrap_or_default());
                // The written request asks for a stream's usage itself.
                let call = core::raw_upstream_call(ctx, chat, false);
                let reply =
                    translated_reply(gateway, connection, call, skeleton, upstream_time).await;
                // The body's share of the memory budget is held until it was sent.
                drop((bytes, held));
                return reply;
            }
        }
    }
    ctx.request = super::chat::json_object_body(&ctx.http_headers, &bytes)?;
    request::validate(&ctx.request)?;
    let connection = core::route(gateway, ctx)?;
    let keep_request = core::run_handlers(state, gateway, ctx).await?;
    if connection.provider.speaks_responses() {
        let call = super::embeddings::door_call(
            gateway,
            ctx,
            bytes,
            keep_request,
            &connection.name,
            false,
        )?;
        drop(held);
        return pass_through(connection, call, upstream_time).await;
    }
    // Only the parsed request is kept from here on.
    drop((bytes, held));
    let (call, skeleton) = translated_call(ctx, keep_request)?;
    translated_reply(gateway, connection, call, skeleton, upstream_time).await
}

/// Whether a connection takes the chat request that `chat_body` writes: it takes a
/// chat request as written, and its upstream does not speak the Responses API
/// (the door passes requests through to those).
pub fn takes_written_chat(connection: &crate::providers::Connection) -> bool {
    !connection.provider.speaks_responses() && connection.provider.takes_raw_chat()
}

/// The answer of a connection whose upstream does not speak the Responses API to
/// the canonical `call`: the whole response written into `skeleton`, or the chunks
/// with their translator.
async fn translated_reply(
    gateway: &Gateway,
    connection: &crate::providers::Connection,
    call: UpstreamCall,
    skeleton: answer::Skeleton,
    upstream_time: &mut Option<std::time::Duration>,
) -> Result<DoorReply, ApiError> {
    let limit = gateway.config.settings.max_response_body_bytes();
    match core::call_provider(connection, call, upstream_time).await? {
        Reply::Complete(canonical) => {
            let usage = canonical.usage();
            let canonical = gateway.redactor.redact_payload(canonical).into_value();
            let response = answer::response(&canonical, &skeleton, &connection.name)?;
            Ok(DoorReply::Json {
                answer: Payload::Raw(RawJson::built(Bytes::from(response))),
                usage,
            })
        }
        Reply::Stream(chunks) => {
            let keep_tree = gateway.log_dispatcher.is_some();
            let translator = stream::Translator::new(skeleton, &connection.name, limit, keep_tree);
            Ok(DoorReply::Chunks(chunks, Box::new(translator)))
        }
    }
}

/// The call for an upstream that speaks the Responses API, answered as it answers.
async fn pass_through(
    connection: &crate::providers::Connection,
    call: DoorCall,
    upstream_time: &mut Option<std::time::Duration>,
) -> Result<DoorReply, ApiError> {
    let provider = connection.provider.clone();
    let started = std::time::Instant::now();
    let reply = provider.responses(call).await;
    *upstream_time = Some(started.elapsed());
    Ok(match reply? {
        TextCompletion::Complete(answer) => DoorReply::Json {
            usage: answer.usage(),
            answer,
        },
        TextCompletion::Stream(events) => DoorReply::Events(events),
    })
}

/// The pass-through call for a request checked without a tree (no handler, no
/// logger): `embeddings::door_call`'s, with the body from the walk.
fn raw_door_call(
    ctx: &RequestContext,
    raw: crate::api::raw_body::RawBody,
    connection: &str,
) -> Result<DoorCall, ApiError> {
    // No handler added any (the walk sent requests that name some to the tree).
    let (headers, header_case) = core::spelled_extra_headers(None, &ctx.forwarded_spellings)?;
    let model = ctx.model.clone().unwrap_or_default();
    let stream = raw.stream.unwrap_or(false);
    Ok(DoorCall {
        connection: connection.to_owned(),
        body: raw.upstream_body(&model, false),
        model,
        // Nothing on this path reads them (they are for completions' usage).
        params: serde_json::Map::new(),
        inputs: Vec::new(),
        headers,
        header_case,
        stream,
        gateway_usage: false,
    })
}

/// The canonical call for a translated connection and the response's skeleton,
/// from the context as handlers left it (moved out of it unless a logger still
/// needs the request whole).
fn translated_call(
    ctx: &mut RequestContext,
    keep_request: bool,
) -> Result<(UpstreamCall, answer::Skeleton), ApiError> {
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
    let model = ctx.model.clone().unwrap_or_default();
    let skeleton = answer::Skeleton::new(&params, &model);
    let params = request::to_canonical(params)?;
    Ok((
        UpstreamCall {
            model,
            params,
            headers,
            header_case,
            // The canonical request already asks for usage (`stream_options`):
            // `response.completed` carries it, so nothing is hidden here.
            gateway_usage: false,
            raw_body: None,
        },
        skeleton,
    ))
}
