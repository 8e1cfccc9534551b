//! Client authentication: the `KeyCheck` trait, the built-in checks, and `api_key_id`.
//!
//! A key check turns the client's key into a grant (group and user info) or a
//! rejection. Keys from the config live in a hash map keyed by a 128-bit SipHash-2-4
//! of the key under a secret drawn at startup ([`KeyTag`]), so a lookup is O(1), no
//! plain-text key list is scanned, and what is compared is nothing a client can aim at.

use std::sync::Arc;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use siphasher::sip128::{Hasher128, SipHasher24};
use std::hash::Hasher as _;

use crate::config::{Config, ConfigError, ExtensionSpec, DEFAULT_KEY_CHECK};
use crate::error::ApiError;
use crate::extensions::{builtin_name, Builtin, ExtensionResolver};

mod with_request;
pub use with_request::{CheckApiKeyWithRequest, WithRequestArgs};

/// What a successful key check grants.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeyGrant {
    pub group: String,
    /// Free-form information about the caller (logged and visible to handlers).
    pub user_info: Value,
    /// The key's `api_key_id`, when the check knows it already (in-config keys are
    /// hashed once at startup rather than per request); otherwise it is computed.
    #[serde(skip)]
    pub api_key_id: Option<Arc<str>>,
}

/// Decides whether a client key is valid and which group it belongs to.
#[async_trait]
pub trait KeyCheck: Send + Sync {
    /// `Ok(None)` rejects the key (401 `invalid_api_key`, or 403 per `invalid_api_key_status`).
    async fn check(&self, api_key: &str) -> Result<Option<KeyGrant>, ApiError>;
}

/// `lm_proxy.api_key_check.check_api_key_in_config`: the first group (in config
/// order) whose `api_keys` contains the key.
pub struct InConfigKeys {
    tag: KeyTag,
    /// Tag of the key → (group, `api_key_id`); foldhash (the tags are already
    /// uniform, and one is looked up per request).
    by_tag: hashbrown::HashMap<u128, (Arc<str>, Arc<str>)>,
}

/// What a client key is looked up by: SipHash-2-4 with 128-bit output, keyed with a
/// secret drawn when the key table is built. SipHash is a pseudorandom function, so
/// without the secret a client can neither aim a key at a stored tag nor learn
/// anything from which one it hit; two keys share a tag with probability 2^-128.
/// It replaced SHA-256 of the key (3,600 instructions per request, against about
/// 300): a keyed PRF needs no collision resistance against a party who has no key.
struct KeyTag {
    secret: (u64, u64),
}

impl KeyTag {
    fn new() -> KeyTag {
        KeyTag {
            secret: (rand::random(), rand::random()),
        }
    }

    fn of(&self, key: &str) -> u128 {
        let mut hasher = SipHasher24::new_with_keys(self.secret.0, self.secret.1);
        hasher.write(key.as_bytes());
        hasher.finish128().as_u128()
    }
}

impl InConfigKeys {
    pub fn from_config(config: &Config) -> Self {
        let tag = KeyTag::new();
        let mut by_tag = hashbrown::HashMap::new();
        for (group, settings) in &config.settings.groups {
            let group: Arc<str> = Arc::from(group.as_str());
            // The config refuses empty keys; skipping them here as well keeps a
            // config built another way from letting a request without a key in.
            for key in settings.api_keys.iter().filter(|k| !k.is_empty()) {
                by_tag.entry(tag.of(key)).or_insert_with(|| {
                    let id = api_key_id(&config.settings.encryption_key, key);
                    (group.clone(), Arc::from(id))
                });
            }
        }
        InConfigKeys { tag, by_tag }
    }
}

#[async_trait]
impl KeyCheck for InConfigKeys {
    async fn check(&self, api_key: &str) -> Result<Option<KeyGrant>, ApiError> {
        // No key (no `Authorization` header) never matches.
        if api_key.is_empty() {
            return Ok(None);
        }
        Ok(self
            .by_tag
            .get(&self.tag.of(api_key))
            .map(|(group, id)| KeyGrant {
                // Not `to_string`: for an `Arc<str>` that goes through `Display`
                // and a growing `String` (about 170 instructions against 40).
                group: String::from(&**group),
                user_info: Value::Null,
                api_key_id: Some(id.clone()),
            }))
    }
}

/// `lm_proxy.api_key_check.AllowAll(group="default", capture_api_key=True)`: every key
/// is accepted into one group; with `capture_api_key` the key is put in the user info
/// (as the reference did) so that handlers can read it.
pub struct AllowAll {
    pub group: String,
    pub capture_api_key: bool,
}

#[async_trait]
impl KeyCheck for AllowAll {
    async fn check(&self, api_key: &str) -> Result<Option<KeyGrant>, ApiError> {
        let user_info = if self.capture_api_key {
            json!({ "api_key": api_key })
        } else {
            json!({})
        };
        Ok(Some(KeyGrant {
            group: self.group.clone(),
            user_info,
            api_key_id: None,
        }))
    }
}

/// Build the configured key check.
pub fn build_key_check(
    config: &Config,
    client: &crate::upstream::UpstreamClient,
    resolver: &dyn ExtensionResolver,
) -> Result<Arc<dyn KeyCheck>, ConfigError> {
    let default_spec;
    let spec = match &config.api_key_check {
        Some(spec) => spec,
        None => {
            // An explicitly empty `api_key_check` means the default, as in the reference.
            default_spec =
                ExtensionSpec::parse(&Value::String(DEFAULT_KEY_CHECK.into()), "api_key_check")
                    .ok()
                    .flatten()
                    .expect("the default key check is a dotted path");
            &default_spec
        }
    };
    let err = |problem: String| ConfigError::new(&config.path, &spec.key, problem);
    match builtin_name(&spec.target) {
        Some(Builtin::CheckApiKeyInConfig) => {
            if !spec.kwargs.is_empty() {
                return Err(err("check_api_key_in_config takes no arguments".into()));
            }
            Ok(Arc::new(InConfigKeys::from_config(config)))
        }
        Some(Builtin::AllowAll) => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Args {
                #[serde(default = "default_group")]
                group: String,
                #[serde(default = "yes")]
                capture_api_key: bool,
            }
            fn default_group() -> String {
                "default".into()
            }
            fn yes() -> bool {
                true
            }
            let args: Args = crate::config::deserialize_at(
                Value::Object(spec.kwargs.clone()),
                &spec.key,
                &config.path,
            )?;
            if !config.settings.groups.contains_key(&args.group) {
                return Err(ConfigError::new(
                    &config.path,
                    format!("{}.group", spec.key),
                    format!("unknown group '{}'", args.group),
                ));
            }
            Ok(Arc::new(AllowAll {
                group: args.group,
                capture_api_key: args.capture_api_key,
            }))
        }
        Some(Builtin::CheckApiKeyWithRequest) => {
            let args: WithRequestArgs = crate::config::deserialize_at(
                Value::Object(spec.kwargs.clone()),
                &spec.key,
                &config.path,
            )?;
            let check = CheckApiKeyWithRequest::new(args, client.clone()).map_err(|p| {
                let (sub, problem) = p.split_once(": ").unwrap_or(("", p.as_str()));
                let key = if sub.is_empty() {
                    spec.key.clone()
                } else {
                    format!("{}.{sub}", spec.key)
                };
                ConfigError::new(&config.path, key, problem)
            })?;
            Ok(Arc::new(check))
        }
        Some(_) => Err(err(format!(
            "'{}' cannot be used as api_key_check",
            spec.target
        ))),
        None => resolver.key_check(spec, config),
    }
}

/// `api_key_id`: an HMAC-SHA256 of the client key under `encryption_key`, hex.
/// Identifies a key in logs and rate limits without revealing it.
pub fn api_key_id(encryption_key: &str, api_key: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(encryption_key.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(api_key.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The client key from `Authorization: Bearer <key>` (scheme case-insensitive);
/// absent or another scheme → `""`, as in the reference.
pub fn bearer_key(headers: &http::HeaderMap) -> &str {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let v = v.trim();
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer_key(&h), "");
        h.insert("authorization", "bearer  abc ".parse().unwrap());
        assert_eq!(bearer_key(&h), "abc");
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer_key(&h), "");
    }

    #[test]
    fn key_id_is_keyed_and_stable() {
        let a = api_key_id("k1", "secret");
        assert_eq!(a, api_key_id("k1", "secret"));
        assert_ne!(a, api_key_id("k2", "secret"));
        assert!(!a.contains("secret"));
        assert_eq!(a.len(), 64);
    }

    #[tokio::test]
    async fn in_config_keys_carry_their_id_worked_out_once() {
        let tree = json!({
            "encryption_key": "site-secret",
            "connections": {"c": {"api_type": "open_ai", "api_base": "http://127.0.0.1:9/v1"}},
            "routing": {"*": "c.*"},
            "groups": {"a": {"api_keys": ["k-a"]}, "b": {"api_keys": ["k-b", "k-a"]}},
        });
        let config = Config::from_value(tree, std::path::Path::new("t.json")).unwrap();
        let keys = InConfigKeys::from_config(&config);
        let grant = keys.check("k-b").await.unwrap().unwrap();
        assert_eq!(grant.group, "b");
        assert_eq!(
            grant.api_key_id.as_deref(),
            Some(api_key_id("site-secret", "k-b").as_str())
        );
        // A key listed twice belongs to its first group.
        assert_eq!(keys.check("k-a").await.unwrap().unwrap().group, "a");
        assert!(keys.check("k-c").await.unwrap().is_none());
        // Near misses: a prefix, an extension, another case.
        for near in ["k-", "k-bb", "K-B", "k-b "] {
            assert!(keys.check(near).await.unwrap().is_none(), "{near}");
        }
    }

    #[test]
    fn key_tags_are_keyed_by_a_secret_of_each_table() {
        let (one, two) = (KeyTag::new(), KeyTag::new());
        assert_eq!(one.of("sk-1"), one.of("sk-1"));
        assert_ne!(one.of("sk-1"), one.of("sk-2"));
        // Another table's secret: the same key gets another tag, so tags say nothing
        // about keys outside the process that made them.
        assert_ne!(one.of("sk-1"), two.of("sk-1"));
    }
}
