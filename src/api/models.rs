//! `GET {api_prefix}/models`, `GET {api_prefix}/models/{id}`, and the key check
//! shared with chat completions.
//!
//! The list is built from the routing rules whose connection the caller's group may
//! use: one entry per pattern (`as_is`), only literal names (`ignore_wildcards`), or,
//! for `connection.*` rules with wildcards, the upstream's own models that the rule
//! routes (`expand_wildcards`; a connection that cannot list keeps its pattern, with
//! a warning). Entries are merged with `model_info`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::future::join_all;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::auth::{api_key_id, bearer_key};
use crate::config::ModelListingMode;
use crate::context::RequestContext;
use crate::error::{ApiError, ErrorBody};
use crate::gateway::Gateway;
use crate::routing::{has_wildcards, RouteModel, Rule};
use crate::server::AppState;

/// Check the client key and record the grant in the context.
pub async fn authenticate(gateway: &Gateway, ctx: &mut RequestContext) -> Result<(), ApiError> {
    let key = bearer_key(&ctx.http_headers).to_owned();
    authenticate_key(gateway, ctx, &key).await
}

/// Check this client key (taken from the headers as the door's clients send it) and
/// record the grant in the context.
pub async fn authenticate_key(
    gateway: &Gateway,
    ctx: &mut RequestContext,
    key: &str,
) -> Result<(), ApiError> {
    let grant = match gateway.key_check.check(key).await? {
        Some(grant) => Some(grant),
        // The default key check knows the managed keys too (`usage::keys`): after
        // the config's, so those never wait on anything. A key check of the user's
        // own replaces both.
        None if gateway.default_key_check => match &gateway.managed_keys {
            Some(managed) => managed.grant(key, &gateway.config).await,
            None => None,
        },
        None => None,
    };
    let grant = grant.ok_or_else(|| ApiError::InvalidApiKey {
        status: gateway.config.invalid_api_key_status(),
    })?;
    ctx.api_key_id = Some(match grant.api_key_id {
        // Copied as a `str` (`to_string` on an `Arc<str>` goes through `Display`).
        Some(id) => String::from(&*id),
        None => api_key_id(&gateway.config.settings.encryption_key, key),
    });
    ctx.group = Some(grant.group);
    ctx.user_info = grant.user_info;
    Ok(())
}

pub async fn list_models(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let gateway = state.gateway();
    let remote_addr = gateway.trusted_proxies.client_addr(&headers, peer.ip());
    let mut ctx = RequestContext::new(headers, remote_addr);
    match models(&gateway, &mut ctx).await {
        Ok(list) => axum::Json(list).into_response(),
        Err(err) => err.into_response(),
    }
}

/// `client.models.retrieve(id)`: the entry of the caller's `/models` list with that
/// id, or 404 `model_not_found`. The route takes the rest of the path, since model
/// ids may contain `/` (`meta-llama/Llama-3-8B`).
pub async fn retrieve_model(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let gateway = state.gateway();
    let remote_addr = gateway.trusted_proxies.client_addr(&headers, peer.ip());
    let mut ctx = RequestContext::new(headers, remote_addr);
    match retrieve(&gateway, &mut ctx, &id).await {
        Ok(model) => axum::Json(model).into_response(),
        Err(err) => err.into_response(),
    }
}

async fn retrieve(
    gateway: &Gateway,
    ctx: &mut RequestContext,
    id: &str,
) -> Result<Value, ApiError> {
    // Built from the same list, so the shape, the group's permissions and the
    // listing mode (expanded upstream ids included) are exactly those of `/models`.
    let list = models(gateway, ctx).await?;
    list["data"]
        .as_array()
        .and_then(|data| data.iter().find(|entry| entry["id"] == id))
        .cloned()
        .ok_or_else(|| model_not_found(id))
}

/// OpenAI's answer for an unknown model id.
fn model_not_found(id: &str) -> ApiError {
    ApiError::Custom(Box::new(
        ErrorBody::new(
            StatusCode::NOT_FOUND,
            format!("The model '{id}' does not exist or you do not have access to it."),
            "invalid_request_error",
        )
        .param(Some("model".into()))
        .code(Some("model_not_found".into())),
    ))
}

async fn models(gateway: &Gateway, ctx: &mut RequestContext) -> Result<Value, ApiError> {
    if !gateway.config.settings.enabled {
        return Err(ApiError::ServiceDisabled);
    }
    authenticate(gateway, ctx).await?;
    let group = ctx.group.as_deref().unwrap_or_default();
    let mode = gateway.config.settings.model_listing_mode;
    let rules: Vec<(usize, &Rule)> = gateway
        .router
        .rules()
        .iter()
        .enumerate()
        .filter(|(_, rule)| gateway.group_allows(group, &rule.connection))
        .filter(|(_, rule)| {
            mode != ModelListingMode::IgnoreWildcards || !has_wildcards(&rule.pattern)
        })
        .collect();

    // Expansion asks each connection once (concurrently), through the cache.
    let expandable = |rule: &Rule| {
        mode == ModelListingMode::ExpandWildcards
            && has_wildcards(&rule.pattern)
            && rule.model == RouteModel::PassThrough
    };
    let mut to_list: Vec<&str> = rules
        .iter()
        .filter(|(_, rule)| expandable(rule))
        .map(|(_, rule)| rule.connection.as_str())
        .collect();
    to_list.sort_unstable();
    to_list.dedup();
    let lists: HashMap<&str, Result<Arc<Vec<String>>, ApiError>> = join_all(
        to_list
            .iter()
            .map(|conn| async move { (*conn, gateway.models_of(conn).await) }),
    )
    .await
    .into_iter()
    .collect();

    let mut seen = HashSet::new();
    let mut data = Vec::new();
    for (index, rule) in rules {
        match lists
            .get(rule.connection.as_str())
            .filter(|_| expandable(rule))
        {
            Some(Ok(ids)) => {
                // Only the ids that this rule would actually route (first match wins).
                for id in ids
                    .iter()
                    .filter(|id| gateway.router.route_index(id) == Some(index))
                {
                    if seen.insert(id.clone()) {
                        data.push(entry(gateway, id, &rule.pattern, &rule.connection));
                    }
                }
            }
            Some(Err(e)) => {
                tracing::warn!(
                    "model listing: connection '{}' could not list its models ({e}); listing '{}' as written",
                    rule.connection,
                    rule.pattern,
                    e = gateway.redactor.redact(e.clone())
                );
                if seen.insert(rule.pattern.clone()) {
                    data.push(entry(
                        gateway,
                        &rule.pattern,
                        &rule.pattern,
                        &rule.connection,
                    ));
                }
            }
            None => {
                if seen.insert(rule.pattern.clone()) {
                    data.push(entry(
                        gateway,
                        &rule.pattern,
                        &rule.pattern,
                        &rule.connection,
                    ));
                }
            }
        }
    }
    Ok(json!({"object": "list", "data": data}))
}

/// A `/models` entry, merged with `model_info` for the id (or else its pattern).
fn entry(gateway: &Gateway, id: &str, pattern: &str, connection: &str) -> Value {
    let mut entry = json!({"id": id, "object": "model", "created": 0, "owned_by": connection});
    let info = gateway
        .config
        .settings
        .model_info
        .get(id)
        .or_else(|| gateway.config.settings.model_info.get(pattern));
    if let (Some(info), Value::Object(map)) = (info, &mut entry) {
        for (k, v) in info {
            map.insert(k.clone(), v.clone());
        }
    }
    entry
}
