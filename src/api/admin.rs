//! The admin API (`[admin] token`, docs/admin-api.md): managed keys and usage
//! reports from the ledger. Routed only when `[admin]` is set at startup.
//!
//! Every call needs `Authorization: Bearer <admin token>`, compared in constant
//! time (the digests of both, so that not even the length is compared early);
//! client keys never open it. Errors come in OpenAI's envelope. Every call is
//! logged with who (the caller's address) and what (the key's id, name, group),
//! never a key: the new key is in the creation answer and nowhere else.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ErrorBody};
use crate::server::AppState;
use crate::usage::keys::{self, GroupBy, KeyError, ManagedKeys, NewKey};

/// The largest `POST /admin/keys` body.
const MAX_BODY: usize = 64 * 1024;

fn error(status: StatusCode, message: impl Into<String>, kind: &str, code: &str) -> Response {
    ApiError::Custom(Box::new(
        ErrorBody::new(status, message.into(), kind).code(Some(code.into())),
    ))
    .into_response()
}

fn key_error(e: KeyError) -> Response {
    match e {
        KeyError::Invalid(m) => error(
            StatusCode::BAD_REQUEST,
            m,
            "invalid_request_error",
            "invalid_value",
        ),
        e @ KeyError::NotFound(_) => error(
            StatusCode::NOT_FOUND,
            e.to_string(),
            "invalid_request_error",
            "key_not_found",
        ),
        e @ KeyError::Database(_) => {
            tracing::warn!("admin API: {e}");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "The usage database cannot be reached; try again.",
                "server_error",
                "database_unavailable",
            )
        }
    }
}

/// The managed keys, when the admin API is on and the token is right; otherwise
/// the answer to give (404 as any unknown route when `[admin]` is gone, 401).
/// Who calls, for the log: the client's address (forwarding headers believed
/// from trusted proxies only, as everywhere).
fn caller(state: &AppState, headers: &HeaderMap, peer: SocketAddr) -> String {
    state
        .gateway()
        .trusted_proxies
        .client_addr(headers, peer.ip())
}

fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    method: &Method,
    uri: &Uri,
    who: &str,
) -> Result<Arc<ManagedKeys>, Box<Response>> {
    let gateway = state.gateway();
    let (Some(admin), Some(managed)) = (&gateway.config.settings.admin, state.managed_keys())
    else {
        return Err(Box::new(not_found(method, uri)));
    };
    let given = crate::auth::bearer_key(headers);
    // Digests of equal length, compared without an early exit.
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(admin.token.as_bytes()),
    );
    let same = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0;
    if given.is_empty() || !same {
        tracing::warn!(
            "admin API: {who} refused ({} token): {method} {}",
            if given.is_empty() { "no" } else { "a wrong" },
            uri.path()
        );
        let body = ErrorBody::new(
            StatusCode::UNAUTHORIZED,
            "The admin API needs `Authorization: Bearer <admin token>` ([admin] token).",
            "invalid_request_error",
        )
        .code(Some("invalid_api_key".into()))
        .header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Err(Box::new(ApiError::Custom(Box::new(body)).into_response()));
    }
    Ok(managed.clone())
}

fn not_found(method: &Method, uri: &Uri) -> Response {
    let body = ErrorBody::new(
        StatusCode::NOT_FOUND,
        format!("Unknown endpoint: {method} {}", uri.path()),
        "invalid_request_error",
    )
    .code(Some("unknown_url".into()));
    ApiError::Custom(Box::new(body)).into_response()
}

/// `POST /admin/keys`: make a key; the answer holds it, once.
pub async fn create_key(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let who = caller(&state, &headers, peer);
    let managed = match authorize(&state, &headers, &method, &uri, &who) {
        Ok(m) => m,
        Err(answer) => return *answer,
    };
    if body.len() > MAX_BODY {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("The body must be at most {MAX_BODY} bytes."),
            "invalid_request_error",
            "request_too_large",
        );
    }
    let new: NewKey = match serde_json::from_slice(&body) {
        Ok(new) => new,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "The body must be a JSON object with `group`, `name` and optionally \
                     `budget`, `expires_at`, `metadata`: {e}"
                ),
                "invalid_request_error",
                "invalid_value",
            )
        }
    };
    let gateway = state.gateway();
    let db = match managed.migrated_db().await {
        Ok(db) => db,
        Err(e) => return key_error(e),
    };
    match keys::create(db, &gateway.config, &new).await {
        Ok((record, key)) => {
            tracing::info!(
                "admin API: {} created managed key {} (name {:?}, group '{}')",
                who,
                record.id,
                record.name,
                record.group
            );
            let mut answer = record.to_json(None);
            answer["key"] = Value::String(key);
            (StatusCode::CREATED, axum::Json(answer)).into_response()
        }
        Err(e) => key_error(e),
    }
}

/// `GET /admin/keys`: every key, no secret, spend to date.
pub async fn list_keys(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let who = caller(&state, &headers, peer);
    let managed = match authorize(&state, &headers, &method, &uri, &who) {
        Ok(m) => m,
        Err(answer) => return *answer,
    };
    let db = match managed.migrated_db().await {
        Ok(db) => db,
        Err(e) => return key_error(e),
    };
    match keys::list(db).await {
        Ok(list) => {
            tracing::info!("admin API: {} listed managed keys ({})", who, list.len());
            let data: Vec<Value> = list
                .iter()
                .map(|(record, spend)| record.to_json(Some(spend)))
                .collect();
            axum::Json(json!({ "object": "list", "data": data })).into_response()
        }
        Err(e) => key_error(e),
    }
}

/// `DELETE /admin/keys/{id}`: revoke; refused here at once, by every replica
/// within about `usage::keys::REFRESH`.
pub async fn revoke_key(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let who = caller(&state, &headers, peer);
    let managed = match authorize(&state, &headers, &method, &uri, &who) {
        Ok(m) => m,
        Err(answer) => return *answer,
    };
    let db = match managed.migrated_db().await {
        Ok(db) => db,
        Err(e) => return key_error(e),
    };
    match keys::revoke(db, &id).await {
        Ok(record) => {
            managed.forget(&record.id);
            tracing::info!(
                "admin API: {} revoked managed key {} (name {:?}, group '{}')",
                who,
                record.id,
                record.name,
                record.group
            );
            axum::Json(record.to_json(None)).into_response()
        }
        Err(e) => key_error(e),
    }
}

#[derive(Debug, Deserialize)]
pub struct UsageQuery {
    #[serde(default)]
    group_by: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    until: Option<String>,
}

/// `GET /admin/usage?group_by=key|group|model|connection|day&since=&until=`:
/// requests, tokens and cost from the ledger. `since` defaults to the start of the
/// ledger, `until` to now; both take a date or an RFC 3339 time (UTC).
pub async fn usage(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    query: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let who = caller(&state, &headers, peer);
    let managed = match authorize(&state, &headers, &method, &uri, &who) {
        Ok(m) => m,
        Err(answer) => return *answer,
    };
    let bad = |m: String| {
        error(
            StatusCode::BAD_REQUEST,
            m,
            "invalid_request_error",
            "invalid_value",
        )
    };
    let Ok(Query(query)) = query else {
        return bad("The query takes group_by, since and until.".into());
    };
    let by_text = query.group_by.as_deref().unwrap_or("group");
    let Some(by) = GroupBy::parse(by_text) else {
        return bad(format!(
            "group_by must be key, group, model, connection or day, not '{by_text}'"
        ));
    };
    let parse = |text: &Option<String>, default: i64, name: &str| match text {
        Some(t) => keys::parse_time(t).map_err(|e| format!("{name}: {e}")),
        None => Ok(default),
    };
    let since = match parse(&query.since, 0, "since") {
        Ok(t) => t,
        Err(e) => return bad(e),
    };
    // `until` excluded; the default takes every row so far.
    let until = match parse(&query.until, keys::now_ms() + 1, "until") {
        Ok(t) => t,
        Err(e) => return bad(e),
    };
    let db = match managed.migrated_db().await {
        Ok(db) => db,
        Err(e) => return key_error(e),
    };
    match keys::usage(db, by, since, until).await {
        Ok(lines) => {
            tracing::info!(
                "admin API: {} read usage by {} ({} to {})",
                who,
                by.as_str(),
                keys::rfc3339(since),
                keys::rfc3339(until)
            );
            let mut total = keys::UsageLine {
                value: String::new(),
                key_name: None,
                requests: 0,
                errors: 0,
                prompt_tokens: 0,
                completion_tokens: 0,
                cached_tokens: 0,
                reasoning_tokens: 0,
                cost_usd: 0.0,
            };
            for l in &lines {
                total.requests += l.requests;
                total.errors += l.errors;
                total.prompt_tokens += l.prompt_tokens;
                total.completion_tokens += l.completion_tokens;
                total.cached_tokens += l.cached_tokens;
                total.reasoning_tokens += l.reasoning_tokens;
                total.cost_usd += l.cost_usd;
            }
            let mut total = total.to_json(GroupBy::Group);
            if let Some(object) = total.as_object_mut() {
                object.remove("group");
            }
            axum::Json(json!({
                "object": "usage",
                "group_by": by.as_str(),
                "since": keys::rfc3339(since),
                "until": keys::rfc3339(until),
                "data": lines.iter().map(|l| l.to_json(by)).collect::<Vec<_>>(),
                "total": total,
            }))
            .into_response()
        }
        Err(e) => key_error(e),
    }
}
