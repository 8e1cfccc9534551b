//! `lm_proxy.api_key_check.CheckAPIKeyWithRequest`: a client key is valid when an
//! external HTTP service (an OIDC userinfo endpoint, an internal auth API) answers
//! 2xx to a request carrying it. Fails closed: any non-2xx answer, transport error,
//! timeout or unreadable body rejects the key.
//!
//! With `use_cache`, answers are kept for `cache_ttl` seconds in an in-process TTL
//! cache (moka, bounded by `cache_size`, keyed by a digest of the key, never the key
//! itself). Concurrent checks of one uncached key share a single upstream call.
//! Transport failures are not cached, so a flapping service does not lock users out
//! for a whole TTL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{KeyCheck, KeyGrant};
use crate::error::ApiError;
use crate::shared_state::RedisStore;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WithRequestArgs {
    pub url: String,
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default)]
    pub headers: HashMap<String, String>,
    #[serde(default)]
    pub response_as_user_info: bool,
    #[serde(default)]
    pub group_field: Option<String>,
    #[serde(default = "default_group")]
    pub default_group: String,
    #[serde(default = "default_placeholder")]
    pub key_placeholder: String,
    #[serde(default)]
    pub use_cache: bool,
    #[serde(default = "default_cache_size")]
    pub cache_size: u64,
    #[serde(
        default = "default_cache_ttl",
        deserialize_with = "crate::config::lenient::f64"
    )]
    pub cache_ttl: f64,
    #[serde(
        default = "default_timeout",
        deserialize_with = "crate::config::lenient::f64"
    )]
    pub timeout: f64,
    /// A `redis://` URL: with `use_cache`, answers are shared by every replica (the
    /// in-process cache still sits in front of it).
    #[serde(default)]
    pub cache_backend: Option<String>,
}

fn default_method() -> String {
    "get".into()
}
fn default_group() -> String {
    "default".into()
}
fn default_placeholder() -> String {
    "{api_key}".into()
}
fn default_cache_size() -> u64 {
    16_384
}
fn default_cache_ttl() -> f64 {
    300.0
}
fn default_timeout() -> f64 {
    5.0
}

/// Why a check produced no answer worth caching.
#[derive(Debug, Clone)]
struct Unavailable(String);

pub struct CheckApiKeyWithRequest {
    args: WithRequestArgs,
    method: reqwest::Method,
    client: reqwest::Client,
    cache: Option<moka::future::Cache<[u8; 32], Option<KeyGrant>>>,
    shared: Option<RedisStore>,
}

impl CheckApiKeyWithRequest {
    pub fn new(args: WithRequestArgs, client: reqwest::Client) -> Result<Self, String> {
        let method =
            reqwest::Method::from_bytes(args.method.trim().to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("method: '{}' is not an HTTP method", args.method))?;
        if reqwest::Url::parse(&args.url.replace(&args.key_placeholder, "key")).is_err() {
            return Err(format!("url: '{}' is not a URL", args.url));
        }
        if args.timeout <= 0.0 {
            return Err("timeout: must be greater than 0".into());
        }
        let cache = args.use_cache.then(|| {
            moka::future::Cache::builder()
                .max_capacity(args.cache_size.max(1))
                .time_to_live(Duration::from_secs_f64(args.cache_ttl.max(0.001)))
                .build()
        });
        let shared = match args.cache_backend.as_deref().map(str::trim) {
            None | Some("") | Some("memory") => None,
            Some(url) => Some(RedisStore::new(url).map_err(|p| format!("cache_backend: {p}"))?),
        };
        if shared.is_some() && !args.use_cache {
            return Err("cache_backend: set use_cache = true to use a cache backend".into());
        }
        Ok(CheckApiKeyWithRequest {
            args,
            method,
            client,
            cache,
            shared,
        })
    }

    async fn ask(&self, api_key: &str) -> Result<Option<KeyGrant>, Unavailable> {
        let placeholder = &self.args.key_placeholder;
        let url = self.args.url.replace(placeholder, api_key);
        let mut request = self
            .client
            .request(self.method.clone(), &url)
            .timeout(Duration::from_secs_f64(self.args.timeout));
        for (name, value) in &self.args.headers {
            request = request.header(name.as_str(), value.replace(placeholder, api_key));
        }
        // Errors are reported without the URL, which may contain the key.
        let response = request
            .send()
            .await
            .map_err(|e| Unavailable(e.without_url().to_string()))?;
        if !response.status().is_success() {
            return Ok(None);
        }
        if !self.args.response_as_user_info {
            return Ok(Some(KeyGrant {
                group: self.args.default_group.clone(),
                user_info: Value::Null,
                api_key_id: None,
            }));
        }
        // Bounded like every answer read whole (a key check's answer is small).
        let body = crate::upstream::reqwest_bytes(response, crate::upstream::SMALL_ANSWER_LIMIT)
            .await
            .map_err(|e| Unavailable(format!("unreadable answer: {e}")))?;
        let user_info: Value = serde_json::from_slice(&body)
            .map_err(|e| Unavailable(format!("unreadable answer: {e}")))?;
        let group = self
            .args
            .group_field
            .as_deref()
            .and_then(|field| user_info.get(field))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| self.args.default_group.clone());
        Ok(Some(KeyGrant {
            group,
            user_info,
            api_key_id: None,
        }))
    }
}

impl CheckApiKeyWithRequest {
    /// With a shared cache: its answer if it has one, else ask the service and store
    /// the answer there. A shared cache that cannot be reached is skipped (logged).
    async fn ask_through_shared(
        &self,
        api_key: &str,
        digest: &[u8; 32],
    ) -> Result<Option<KeyGrant>, Unavailable> {
        let Some(store) = &self.shared else {
            return self.ask(api_key).await;
        };
        let key = format!("lm-proxy:keycheck:{}", hex::encode(digest));
        match store.get(&key).await {
            Ok(Some(text)) => match serde_json::from_str::<Option<KeyGrant>>(&text) {
                Ok(grant) => return Ok(grant),
                Err(e) => {
                    tracing::warn!("key check cache: unreadable entry ({e}); asking the service")
                }
            },
            Ok(None) => {}
            Err(e) => tracing::warn!("key check cache: {e}; asking the service"),
        }
        let grant = self.ask(api_key).await?;
        let text = serde_json::to_string(&grant).unwrap_or_else(|_| "null".into());
        let ttl = Duration::from_secs_f64(self.args.cache_ttl.max(0.001));
        if let Err(e) = store.set_with_ttl(&key, &text, ttl).await {
            tracing::warn!("key check cache: {e}; the answer is cached in this process only");
        }
        Ok(grant)
    }
}

#[async_trait]
impl KeyCheck for CheckApiKeyWithRequest {
    async fn check(&self, api_key: &str) -> Result<Option<KeyGrant>, ApiError> {
        let result = match &self.cache {
            None => self.ask(api_key).await,
            Some(cache) => {
                let digest: [u8; 32] = Sha256::digest(api_key.as_bytes()).into();
                cache
                    .try_get_with(digest, self.ask_through_shared(api_key, &digest))
                    .await
                    .map_err(|e: Arc<Unavailable>| (*e).clone())
            }
        };
        match result {
            Ok(grant) => Ok(grant),
            Err(Unavailable(reason)) => {
                tracing::warn!("API key check service unavailable, key rejected: {reason}");
                Ok(None)
            }
        }
    }
}
