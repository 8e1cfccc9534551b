//! `POST {api_prefix}/chat/completions`.
//!
//! Order of work, as in the reference: service enabled → key check → (body checks)
//! → routing → group may use the connection → `before` handlers → upstream call →
//! log line. The key is checked from the headers before the body is read, so that
//! clients without a key cannot make the gateway receive and hold their uploads;
//! the body is then read within the size limit, the body timeout and the server's
//! memory budget (`server::body`). A refused request's body is left unread (a small
//! HTTP/1 one is dropped so the connection stays reusable).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Map, Value};

use crate::context::RequestContext;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::logging::RequestSummary;
use crate::payload::{Payload, PayloadStream};
use crate::providers::UpstreamCall;
use crate::routing::RouteModel;
use crate::server::{body, AppState};
use crate::streaming::{completion_id, encode_sse_assembling, unix_now, StreamIdentity};

/// What the core produced for a request.
enum Reply {
    Complete(Payload),
    /// The chunks, and whether usage is to be kept from the client (it did not ask).
    Stream(PayloadStream, bool),
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
) -> Response {
    // Taken whole and split, so that the headers are moved, not copied (the
    // `HeaderMap` extractor clones them).
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let gateway = state.gateway();
    let remote_addr = gateway.trusted_proxies.client_addr(&headers, peer.ip());
    let mut ctx = RequestContext::new(headers, remote_addr);
    let mut upstream_time = None;
    let mut body = Some(body);
    let result = handle(&state, &gateway, &mut ctx, &mut body, &mut upstream_time).await;
    if let Some(unread) = body {
        let timeout = gateway.config.settings.limits.body_timeout();
        body::discard_refused(unread, &ctx.http_headers, parts.version, timeout).await;
    }
    let summary = RequestSummary::of(&ctx);
    let metrics = state.metrics().map(|m| m.request(&ctx, upstream_time));
    match result {
        Ok(Reply::Complete(answer)) => {
            let answer = gateway.redactor.redact_payload(answer);
            summary.log(200, None, "");
            if let Some(metrics) = metrics {
                metrics.completed(answer.usage());
            }
            let log_answer = gateway
                .log_dispatcher
                .as_ref()
                .map(|_| answer.to_value().into_owned());
            let response = (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                answer.into_json_bytes(),
            )
                .into_response();
            if let Some(dispatcher) = &gateway.log_dispatcher {
                ctx.response = log_answer;
                dispatcher.submit(ctx.to_log_json());
            }
            response
        }
        Ok(Reply::Stream(chunks, hide_usage)) => {
            let chunks = match metrics {
                Some(metrics) => metrics.stream(chunks),
                None => chunks,
            };
            let identity = StreamIdentity {
                id: completion_id(),
                created: unix_now(),
                model: ctx.model.clone().unwrap_or_default(),
            };
            let dispatcher = gateway.log_dispatcher.clone();
            let redactor = gateway.redactor.clone();
            let chunks: PayloadStream = Box::pin(chunks.map(move |item| match item {
                Ok(chunk) => Ok(redactor.redact_payload(chunk)),
                Err(e) => Err(redactor.redact(e)),
            }));
            // The loggers' copy of the answer is capped like any answer held whole.
            let assemble = dispatcher
                .as_ref()
                .map(|_| gateway.config.settings.max_response_body_bytes());
            let body =
                encode_sse_assembling(chunks, identity, assemble, hide_usage, move |outcome| {
                    let note = if outcome.completed {
                        ""
                    } else {
                        " (client disconnected)"
                    };
                    summary.log(200, outcome.error.as_ref(), note);
                    if let Some(dispatcher) = dispatcher {
                        ctx.response = outcome.response;
                        ctx.error = outcome.error;
                        if !outcome.completed {
                            ctx.extra.insert("client_disconnected".into(), true.into());
                        }
                        dispatcher.submit(ctx.to_log_json());
                    }
                });
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/event-stream"),
                    ),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                    (
                        HeaderName::from_static("x-accel-buffering"),
                        HeaderValue::from_static("no"),
                    ),
                ],
                Body::from_stream(body),
            )
                .into_response()
        }
        Err(error) => {
            let error = gateway.redactor.redact(error);
            summary.log(error.status().as_u16(), Some(&error), "");
            if let Some(metrics) = metrics {
                metrics.failed(&error);
            }
            let response = error.clone().into_response();
            if let Some(dispatcher) = &gateway.log_dispatcher {
                ctx.error = Some(error);
                dispatcher.submit(ctx.to_log_json());
            }
            response
        }
    }
}

/// `upstream_time` is set to how long the provider call took, once it was made.
/// `body` is taken when it is read; left there, the request was refused before.
async fn handle(
    state: &AppState,
    gateway: &Gateway,
    ctx: &mut RequestContext,
    body: &mut Option<Body>,
    upstream_time: &mut Option<std::time::Duration>,
) -> Result<Reply, ApiError> {
    if !gateway.config.settings.enabled {
        return Err(ApiError::ServiceDisabled);
    }
    super::models::authenticate(gateway, ctx).await?;
    let rules = body::BodyRules {
        limit: gateway.config.body_limit_bytes(),
        timeout: gateway.config.settings.limits.body_timeout(),
        memory: gateway.config.settings.limits.body_memory_bytes(),
    };
    let body = body.take().unwrap_or_default();
    let (bytes, held) = body::read(body, &ctx.http_headers, rules, state.bodies()).await?;
    ctx.request = parse_request(&ctx.http_headers, &bytes)?;
    // The parsed request is what is kept from here on.
    drop((bytes, held));
    let requested = ctx.request["model"].as_str().unwrap_or_default().to_owned();

    let rule = gateway
        .router
        .route(&requested)
        .ok_or_else(|| ApiError::ModelNotFound(requested.clone()))?;
    let connection = gateway.connections.get(&rule.connection).ok_or_else(|| {
        ApiError::internal(format!(
            "routed to unknown connection '{}'",
            rule.connection
        ))
    })?;
    ctx.connection = Some(connection.name.clone());
    let group = ctx.group.as_deref().unwrap_or_default();
    if !gateway.group_allows(group, &connection.name) {
        return Err(ApiError::ConnectionNotAllowed(connection.name.clone()));
    }
    ctx.model = Some(match &rule.model {
        RouteModel::PassThrough => requested.clone(),
        RouteModel::Fixed(name) => name.clone(),
        RouteModel::ConnectionDefault => connection
            .default_model
            .clone()
            .unwrap_or_else(|| requested.clone()),
    });
    let keep_request = gateway.log_dispatcher.is_some();
    ctx.llm_params = llm_params(
        &mut ctx.request,
        gateway.handlers.is_empty() && !keep_request,
    );

    for handler in &gateway.handlers {
        handler.before(ctx).await?;
    }

    // Streams bring usage to loggers and metrics whether or not the client asked
    // for it; with neither, nobody needs it and nothing is asked for.
    let want_usage = keep_request || state.metrics().is_some();
    let call = upstream_call(ctx, keep_request, want_usage)?;
    let provider = connection.provider.clone();
    let upstream_started = std::time::Instant::now();
    let reply = if call.is_stream() {
        let hide_usage = !call.client_include_usage();
        provider
            .stream_payload(call)
            .await
            .map(|chunks| Reply::Stream(chunks, hide_usage))
    } else {
        provider.complete_payload(call).await.map(Reply::Complete)
    };
    *upstream_time = Some(upstream_started.elapsed());
    reply
}

/// Check the body: JSON object with a string `model`, a list of message objects,
/// and a boolean `stream` if present. Everything else is kept for the upstream.
pub fn parse_request(headers: &HeaderMap, bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
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
        let essence = content_type
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" && !essence.ends_with("+json") {
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
    super::validate::validate_request(&request)?;
    Ok(request)
}

/// The request's members other than `model` and `messages`: the upstream call's
/// parameters, which handlers may change. When no handler or logger will see the
/// request (`unseen`), they are moved out of it rather than copied (a `tools` list
/// with its JSON schemas can be tens of kilobytes); `model` and `stream` stay, as the
/// request line and metrics read them, and `messages` is taken by `upstream_call`.
fn llm_params(request: &mut Map<String, Value>, unseen: bool) -> Map<String, Value> {
    let is_param = |key: &str| key != "model" && key != "messages";
    // Only `stream` (a bool) or nothing besides: copying costs nothing.
    let worth_moving = unseen && request.keys().any(|k| is_param(k) && k != "stream");
    if !worth_moving {
        return request
            .iter()
            .filter(|(k, _)| is_param(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    }
    let whole = std::mem::take(request);
    let mut params = Map::with_capacity(whole.len());
    for (key, value) in whole {
        if !is_param(&key) {
            request.insert(key, value);
        } else if key == "stream" {
            request.insert(key.clone(), value.clone());
            params.insert(key, value);
        } else {
            params.insert(key, value);
        }
    }
    params
}

/// The upstream call from the context as handlers left it. Unless the request is
/// still to be logged whole (`keep_request`: a JSON logger is configured), the
/// messages and parameters are moved into the call instead of copied (a deep copy
/// of the whole conversation): after this, only the model and `stream` are read.
fn upstream_call(
    ctx: &mut RequestContext,
    keep_request: bool,
    want_usage: bool,
) -> Result<UpstreamCall, ApiError> {
    let llm_params = if keep_request {
        ctx.llm_params.clone()
    } else {
        std::mem::take(&mut ctx.llm_params)
    };
    let mut params = Map::with_capacity(llm_params.len() + 1);
    if let Some(messages) = ctx.request.get_mut("messages") {
        let messages = if keep_request {
            messages.clone()
        } else {
            messages.take()
        };
        params.insert("messages".into(), messages);
    }
    let mut headers = HeaderMap::new();
    for (key, value) in llm_params {
        if key == "extra_headers" {
            headers = extra_headers(&value)?;
        } else {
            params.insert(key, value);
        }
    }
    Ok(UpstreamCall {
        model: ctx.model.clone().unwrap_or_default(),
        params,
        headers,
        // The client sees usage only if it asked (`chat_completions` hides it
        // otherwise).
        gateway_usage: want_usage,
    })
}

/// Headers that describe the upstream request's framing or connection, which hyper
/// writes from the body it sends: one set by a handler would make the request
/// malformed (a `content-length` shorter than the body cuts it off).
const GATEWAY_SET_HEADERS: [HeaderName; 9] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::HOST,
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// `llm_params.extra_headers` (set by handlers) as HTTP headers.
fn extra_headers(value: &Value) -> Result<HeaderMap, ApiError> {
    let mut headers = HeaderMap::new();
    let Value::Object(map) = value else {
        if value.is_null() {
            return Ok(headers);
        }
        return Err(ApiError::internal(
            "llm_params.extra_headers must be a table of strings",
        ));
    };
    for (name, value) in map {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Null => continue,
            other => other.to_string(),
        };
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            ApiError::internal(format!("invalid header name in extra_headers: {name:?}"))
        })?;
        if GATEWAY_SET_HEADERS.contains(&name) {
            return Err(ApiError::internal(format!(
                "llm_params.extra_headers may not set `{name}`: the gateway writes the \
                 upstream request's framing and connection headers itself"
            )));
        }
        let value = HeaderValue::from_str(&text).map_err(|_| {
            ApiError::internal(format!("invalid header value in extra_headers for {name}"))
        })?;
        headers.insert(name, value);
    }
    Ok(headers)
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
    fn parameters_are_moved_only_when_nobody_sees_the_request() {
        let body = r#"{"temperature": 0.5, "model": "m", "stream": true,
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "messages": [{"role": "user", "content": "hi"}], "seed": 7}"#;
        let expected_params = ["temperature", "stream", "tools", "seed"];

        // Seen by a handler or logger: copied, the request stays whole.
        let mut request = parse(body).unwrap();
        let params = llm_params(&mut request, false);
        assert_eq!(params.keys().collect::<Vec<_>>(), expected_params);
        assert_eq!(request, parse(body).unwrap());

        // Unseen: moved out in the client's order; model, messages and stream stay.
        let mut request = parse(body).unwrap();
        let params = llm_params(&mut request, true);
        assert_eq!(params.keys().collect::<Vec<_>>(), expected_params);
        assert_eq!(params["tools"][0]["function"]["name"], "f");
        assert_eq!(params["stream"], true);
        assert_eq!(
            request.keys().collect::<Vec<_>>(),
            ["model", "stream", "messages"]
        );
        assert_eq!(request["messages"][0]["content"], "hi");

        // Nothing worth moving: the same as a copy.
        let minimal =
            r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": false}"#;
        let mut request = parse(minimal).unwrap();
        let params = llm_params(&mut request, true);
        assert_eq!(params.keys().collect::<Vec<_>>(), ["stream"]);
        assert_eq!(request, parse(minimal).unwrap());
    }

    #[test]
    fn extra_headers_may_not_set_framing_headers() {
        let ok = extra_headers(&serde_json::json!({"X-Tenant": "acme", "X-Count": 3})).unwrap();
        assert_eq!(ok["x-tenant"], "acme");
        assert_eq!(ok["x-count"], "3");
        for name in [
            "Content-Length",
            "transfer-encoding",
            "Host",
            "Connection",
            "keep-alive",
        ] {
            let err = extra_headers(&serde_json::json!({ name: "5" })).unwrap_err();
            let message = err.to_string();
            assert!(
                message.contains(&name.to_ascii_lowercase()),
                "{name}: {message}"
            );
        }
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
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "application/vnd.x+json",
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
