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
//!
//! The key comes from the client, so it is checked and encoded before it goes
//! anywhere: a key outside visible ASCII (control characters, whitespace, non-ASCII)
//! is refused, and so is one with `/ # ? % \` (or made of dots only) when the
//! placeholder is in the URL; in the URL the key is percent-encoded for its place
//! (every byte but `A-Z a-z 0-9 - . _ ~`). A refused key gets the ordinary
//! invalid-key answer and no call is made. Without this, `../../health#` made the
//! gateway ask the service's `/health`, which answered 200.

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

/// Where in the URL template the key placeholder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Path,
    Query,
}

/// The URL template cut at the placeholders: literal text, and where a key goes.
#[derive(Debug)]
struct UrlTemplate {
    parts: Vec<(String, Option<Place>)>,
}

impl UrlTemplate {
    /// Cut `url` at every `placeholder`. The key may stand in the path or the query;
    /// in the scheme, the host (or user info) or the fragment it is refused, since
    /// there it would choose where the request goes, or never be sent.
    fn parse(url: &str, placeholder: &str) -> Result<UrlTemplate, String> {
        let mut parts = Vec::new();
        let mut rest = url;
        let mut consumed = 0;
        // The end of the authority: the first `/`, `?` or `#` after `scheme://`.
        let authority_end = url
            .find("://")
            .map(|i| i + 3)
            .map(|start| {
                url[start..]
                    .find(['/', '?', '#'])
                    .map_or(url.len(), |j| start + j)
            })
            .unwrap_or(0);
        while !placeholder.is_empty() {
            let Some(at) = rest.find(placeholder) else {
                break;
            };
            let pos = consumed + at;
            let before = &url[..pos];
            let place = if before.contains('#') {
                return Err("url: the key placeholder may not stand in the fragment (after '#'), which is never sent".into());
            } else if before.contains('?') {
                Place::Query
            } else if pos < authority_end || !url.contains("://") {
                return Err("url: the key placeholder may stand in the path or the query, not in the scheme or host".into());
            } else {
                Place::Path
            };
            parts.push((rest[..at].to_owned(), Some(place)));
            rest = &rest[at + placeholder.len()..];
            consumed = pos + placeholder.len();
        }
        parts.push((rest.to_owned(), None));
        Ok(UrlTemplate { parts })
    }

    /// Whether a client key may be sent to the service at all. Real keys (API keys,
    /// JWTs, opaque tokens) are visible ASCII; in a URL they also have none of the
    /// characters that would change which resource is asked (a segment of dots
    /// only is `.`/`..` even when encoded, and the URL parser removes it).
    fn accepts(&self, api_key: &str) -> bool {
        if api_key.is_empty() || !api_key.bytes().all(|b| b.is_ascii_graphic()) {
            return false;
        }
        if self.has_key() && api_key.contains(['/', '#', '?', '%', '\\']) {
            return false;
        }
        !(self.has_path_key() && api_key.bytes().all(|b| b == b'.'))
    }

    fn has_key(&self) -> bool {
        self.parts.iter().any(|(_, place)| place.is_some())
    }

    fn has_path_key(&self) -> bool {
        self.parts
            .iter()
            .any(|(_, place)| *place == Some(Place::Path))
    }

    /// The URL for a key that [`UrlTemplate::accepts`].
    fn render(&self, key: &str) -> String {
        let mut url = String::new();
        for (literal, place) in &self.parts {
            url.push_str(literal);
            if place.is_some() {
                percent_encode_into(&mut url, key);
            }
        }
        url
    }
}

/// Percent-encode every byte but the unreserved characters of RFC 3986, which is
/// right in a path segment and in a query value alike (`&`, `=`, `+`, `/` encoded).
fn percent_encode_into(out: &mut String, text: &str) {
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

pub struct CheckApiKeyWithRequest {
    args: WithRequestArgs,
    url: UrlTemplate,
    method: reqwest::Method,
    client: crate::upstream::UpstreamClient,
    /// The names of `headers` as the config spells them.
    header_case: crate::upstream::HeaderCase,
    cache: Option<moka::future::Cache<[u8; 32], Option<KeyGrant>>>,
    shared: Option<RedisStore>,
}

impl CheckApiKeyWithRequest {
    pub fn new(
        args: WithRequestArgs,
        client: crate::upstream::UpstreamClient,
    ) -> Result<Self, String> {
        let method =
            reqwest::Method::from_bytes(args.method.trim().to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("method: '{}' is not an HTTP method", args.method))?;
        if args.key_placeholder.is_empty() {
            return Err("key_placeholder: must not be empty".into());
        }
        let url = UrlTemplate::parse(&args.url, &args.key_placeholder)?;
        // The URL is not repeated: it may hold a credential of its own (user info, a
        // token in the query).
        if let Err(e) = reqwest::Url::parse(&url.render("key")) {
            return Err(format!("url: not a valid URL ({e})"));
        }
        if args.timeout <= 0.0 {
            return Err("timeout: must be greater than 0".into());
        }
        let cache = args.use_cache.then(|| {
            moka::future::Cache::builder()
                .max_capacity(args.cache_size.max(1))
                .time_to_live(crate::config::cache_ttl(args.cache_ttl))
                .build()
        });
        let shared = match args.cache_backend.as_deref().map(str::trim) {
            None | Some("") | Some("memory") => None,
            Some(url) => Some(RedisStore::new(url).map_err(|p| format!("cache_backend: {p}"))?),
        };
        if shared.is_some() && !args.use_cache {
            return Err("cache_backend: set use_cache = true to use a cache backend".into());
        }
        for name in args.headers.keys() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!("headers: '{name}' is not a valid header name"));
            }
        }
        let header_case = crate::upstream::HeaderCase::of(args.headers.keys().map(String::as_str));
        Ok(CheckApiKeyWithRequest {
            args,
            url,
            method,
            client,
            header_case,
            cache,
            shared,
        })
    }

    async fn ask(&self, api_key: &str) -> Result<Option<KeyGrant>, Unavailable> {
        let placeholder = &self.args.key_placeholder;
        let url = self.url.render(api_key);
        let mut headers = http::HeaderMap::with_capacity(self.args.headers.len());
        for (name, value) in &self.args.headers {
            let name = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Unavailable(format!("'{name}' is not a valid header name")))?;
            // The value holds the key: it is not repeated in the message.
            let mut value = http::HeaderValue::from_str(&value.replace(placeholder, api_key))
                .map_err(|_| Unavailable(format!("the value of '{name}' is not a valid header")))?;
            value.set_sensitive(true);
            headers.append(name, value);
        }
        // On the gateway's own pool: header names as configured. Errors are
        // reported without the URL, which may contain the key.
        let sent = self.client.request_spelled(
            self.method.clone(),
            &url,
            headers,
            &self.header_case,
            bytes::Bytes::new(),
        );
        let timeout = Duration::from_secs_f64(self.args.timeout);
        let response = match tokio::time::timeout(timeout, sent).await {
            Err(_) => return Err(Unavailable(format!("no answer within {timeout:?}"))),
            Ok(Err(crate::upstream::UpstreamError::BadUrl(_))) => {
                return Err(Unavailable(
                    "the URL with the key in it is not valid".into(),
                ))
            }
            Ok(Err(e)) => return Err(Unavailable(e.to_string())),
            Ok(Ok(response)) => response,
        };
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
        let body =
            tokio::time::timeout(timeout, response.bytes(crate::upstream::SMALL_ANSWER_LIMIT))
                .await
                .map_err(|_| Unavailable(format!("no whole answer within {timeout:?}")))?
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
        let ttl = crate::config::cache_ttl(self.args.cache_ttl);
        if let Err(e) = store.set_with_ttl(&key, &text, ttl).await {
            tracing::warn!("key check cache: {e}; the answer is cached in this process only");
        }
        Ok(grant)
    }
}

#[async_trait]
impl KeyCheck for CheckApiKeyWithRequest {
    async fn check(&self, api_key: &str) -> Result<Option<KeyGrant>, ApiError> {
        if !self.url.accepts(api_key) {
            tracing::debug!("API key check: a key with characters no key has was refused without asking the service");
            return Ok(None);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_could_change_the_url_are_refused() {
        let t = UrlTemplate::parse("http://auth/keys/{api_key}/valid", "{api_key}").unwrap();
        for key in [
            "../../health#",
            "x/../../health#",
            "%2e%2e/%2e%2e/health#",
            "..",
            ".",
            "a?b",
            "a\\b",
            "a b",
            "a\nb",
            "",
            "ключ",
        ] {
            assert!(!t.accepts(key), "{key:?}");
        }
        assert!(t.accepts("sk-abc.DEF_123~"));
        assert_eq!(t.render("a+b=c&d"), "http://auth/keys/a%2Bb%3Dc%26d/valid");
        // Only in a header: `/` (base64) is fine, whitespace never.
        let t = UrlTemplate::parse("http://auth/userinfo", "{api_key}").unwrap();
        assert!(t.accepts("ab/cd=="));
        assert!(!t.accepts("ab cd"));
        let t = UrlTemplate::parse("http://auth/check?k={api_key}&x=1", "{api_key}").unwrap();
        assert_eq!(t.render("a+b"), "http://auth/check?k=a%2Bb&x=1");
        assert!(t.accepts(".."), "dots are harmless in a query");
    }

    #[test]
    fn the_placeholder_may_not_choose_the_host() {
        for url in [
            "http://{api_key}.auth/x",
            "http://u:{api_key}@auth/x",
            "http://auth/x#{api_key}",
        ] {
            assert!(UrlTemplate::parse(url, "{api_key}").is_err(), "{url}");
        }
    }

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A raw HTTP service: connection number `n` (from 0) gets `answer(n)`, or is
    /// closed without an answer (a transport failure) when that is `None`. Every
    /// request head is recorded.
    struct Service {
        url: String,
        calls: Arc<AtomicUsize>,
        heads: Arc<Mutex<Vec<String>>>,
    }

    async fn service(answer: fn(usize) -> Option<(u16, &'static str)>) -> Service {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let calls = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (calls.clone(), heads.clone());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let n = count.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match socket.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let Some((status, body)) = answer(n) else {
                        return; // dropped: the client sees the connection closed
                    };
                    let text = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(text.as_bytes()).await;
                });
            }
        });
        Service { url, calls, heads }
    }

    fn client() -> crate::upstream::UpstreamClient {
        crate::upstream::UpstreamClient::new(Duration::from_secs(5)).unwrap()
    }

    fn check(args: Value) -> CheckApiKeyWithRequest {
        let args: WithRequestArgs = serde_json::from_value(args).unwrap();
        CheckApiKeyWithRequest::new(args, client()).unwrap()
    }

    /// The service gets the configured header names as spelled (issue 19, point 9),
    /// over the gateway's own pool.
    #[tokio::test]
    async fn configured_header_names_reach_the_service_as_spelled() {
        let svc = service(|_| Some((200, "{}"))).await;
        let check = check(json!({
            "url": format!("{}/check", svc.url),
            "method": "post",
            "headers": {"X-API-key": "{api_key}", "x-lower-case": "v"},
        }));
        check.check("sk-abc").await.unwrap().expect("admitted");
        let head = svc.heads.lock().unwrap()[0].clone();
        assert!(head.starts_with("POST /check HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nX-API-key: sk-abc\r\n"), "{head}");
        assert!(head.contains("\r\nx-lower-case: v\r\n"), "{head}");
    }

    #[tokio::test]
    async fn a_custom_key_placeholder_is_replaced_in_the_url_and_headers() {
        let svc = service(|_| Some((200, "{}"))).await;
        let check = check(json!({
            "url": format!("{}/keys/<<KEY>>?also={{api_key}}", svc.url),
            "key_placeholder": "<<KEY>>",
            "headers": {"X-Key": "Token <<KEY>>"},
        }));
        let grant = check.check("sk-abc").await.unwrap().expect("admitted");
        assert_eq!(grant.group, "default");
        let head = svc.heads.lock().unwrap()[0].clone();
        // The default `{api_key}` is just text when another placeholder is set.
        assert!(
            head.starts_with("GET /keys/sk-abc?also={api_key} HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("x-key: token sk-abc\r\n"),
            "{head}"
        );
        // An empty placeholder is refused at startup.
        let args: WithRequestArgs =
            serde_json::from_value(json!({"url": svc.url, "key_placeholder": ""})).unwrap();
        let Err(problem) = CheckApiKeyWithRequest::new(args, client()) else {
            panic!("an empty key_placeholder was accepted");
        };
        assert_eq!(problem, "key_placeholder: must not be empty");
    }

    #[tokio::test]
    async fn the_default_group_applies_unless_the_answer_names_one() {
        let svc = service(|n| {
            Some((
                200,
                match n {
                    0 => r#"{"sub": "a", "role": "admins"}"#,
                    1 => r#"{"sub": "b"}"#,
                    _ => r#"{"sub": "c", "role": 7}"#,
                },
            ))
        })
        .await;
        let with_field = check(json!({
            "url": format!("{}/u", svc.url),
            "response_as_user_info": true,
            "group_field": "role",
            "default_group": "basic",
        }));
        let group = |grant: Option<KeyGrant>| grant.expect("admitted").group;
        assert_eq!(group(with_field.check("k1").await.unwrap()), "admins");
        assert_eq!(group(with_field.check("k2").await.unwrap()), "basic");
        assert_eq!(
            group(with_field.check("k3").await.unwrap()),
            "basic",
            "not a string"
        );
        // Without user info, every valid key is in the default group.
        let svc = service(|_| Some((204, ""))).await;
        let plain = check(json!({"url": svc.url, "default_group": "basic"}));
        let grant = plain.check("k").await.unwrap().expect("admitted");
        assert_eq!(
            (grant.group.as_str(), &grant.user_info),
            ("basic", &Value::Null)
        );
    }

    #[tokio::test]
    async fn the_cache_holds_at_most_cache_size_keys() {
        let svc = service(|_| Some((200, "{}"))).await;
        let check = check(json!({"url": svc.url, "use_cache": true, "cache_size": 2}));
        for key in ["k1", "k2", "k3", "k4", "k5"] {
            assert!(check.check(key).await.unwrap().is_some());
        }
        let cache = check.cache.as_ref().unwrap();
        cache.run_pending_tasks().await;
        assert!(cache.entry_count() <= 2, "{} entries", cache.entry_count());
        // A cached key is not asked again.
        let before = svc.calls.load(Ordering::SeqCst);
        let cached: Vec<_> = ["k1", "k2", "k3", "k4", "k5"]
            .into_iter()
            .filter(|k| cache.contains_key(&<[u8; 32]>::from(Sha256::digest(k.as_bytes()))))
            .collect();
        assert!(!cached.is_empty());
        for key in &cached {
            check.check(key).await.unwrap();
        }
        assert_eq!(svc.calls.load(Ordering::SeqCst), before);
    }

    /// A service that cannot be reached (or cuts the connection) rejects the key
    /// now, but that is not remembered: the next request asks again. A real
    /// refusal is remembered for the TTL.
    #[tokio::test]
    async fn transport_failures_are_not_cached_but_refusals_are() {
        let svc = service(|n| match n {
            0 => None,
            1 => Some((200, "{}")),
            _ => Some((401, "{}")),
        })
        .await;
        let check = check(json!({"url": svc.url, "use_cache": true, "cache_ttl": 600}));
        assert!(check.check("k").await.unwrap().is_none(), "cut: rejected");
        assert!(
            check.check("k").await.unwrap().is_some(),
            "asked again, admitted"
        );
        assert!(
            check.check("k").await.unwrap().is_some(),
            "now from the cache"
        );
        assert_eq!(svc.calls.load(Ordering::SeqCst), 2);
        // A refusal (401) for another key is cached.
        assert!(check.check("other").await.unwrap().is_none());
        assert!(check.check("other").await.unwrap().is_none());
        assert_eq!(svc.calls.load(Ordering::SeqCst), 3);
    }
}
