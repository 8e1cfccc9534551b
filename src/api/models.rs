//! `GET {api_prefix}/models`, and the key check shared with chat completions.
//!
//! The list is built from the routing rules whose connection the caller's group may
//! use: one entry per pattern (`as_is`), or only literal names (`ignore_wildcards`),
//! each merged with `model_info[pattern]`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::auth::{api_key_id, bearer_key};
use crate::config::ModelListingMode;
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::routing::has_wildcards;
use crate::server::AppState;

/// Check the client key and record the grant in the context.
pub async fn authenticate(gateway: &Gateway, ctx: &mut RequestContext) -> Result<(), ApiError> {
    let key = bearer_key(&ctx.http_headers).to_owned();
    let grant = gateway
        .key_check
        .check(&key)
        .await?
        .ok_or(ApiError::InvalidApiKey)?;
    ctx.api_key_id = Some(api_key_id(&gateway.config.settings.encryption_key, &key));
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

async fn models(gateway: &Gateway, ctx: &mut RequestContext) -> Result<Value, ApiError> {
    if !gateway.config.settings.enabled {
        return Err(ApiError::ServiceDisabled);
    }
    authenticate(gateway, ctx).await?;
    let group = ctx.group.as_deref().unwrap_or_default();
    let mode = gateway.config.settings.model_listing_mode;
    let data: Vec<Value> = gateway
        .router
        .rules()
        .iter()
        .filter(|rule| gateway.group_allows(group, &rule.connection))
        .filter(|rule| mode != ModelListingMode::IgnoreWildcards || !has_wildcards(&rule.pattern))
        .map(|rule| {
            let mut entry = json!({
                "id": rule.pattern,
                "object": "model",
                "created": 0,
                "owned_by": rule.connection,
            });
            if let (Some(info), Value::Object(map)) = (
                gateway.config.settings.model_info.get(&rule.pattern),
                &mut entry,
            ) {
                for (k, v) in info {
                    map.insert(k.clone(), v.clone());
                }
            }
            entry
        })
        .collect();
    Ok(json!({"object": "list", "data": data}))
}
