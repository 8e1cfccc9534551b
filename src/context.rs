//! The per-request context: everything known about one request (any door) as it
//! moves through key check, routing, handlers, the upstream call and logging. Its
//! fields are the reference's, so handlers and loggers see what they used to.

use std::time::{Instant, SystemTime};

use http::HeaderMap;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// The door a request came in through: which client API it speaks. Handlers,
/// loggers, the JSON log entry, the request line and `/metrics` see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Endpoint {
    /// `POST {api_prefix}/chat/completions` (OpenAI Chat Completions).
    #[default]
    ChatCompletions,
    /// `POST {api_prefix}/messages` (Anthropic Messages).
    Messages,
    /// `POST {api_prefix}/messages/count_tokens` (Anthropic).
    CountTokens,
    /// `POST {api_prefix}/embeddings` (OpenAI Embeddings).
    Embeddings,
    /// `POST {api_prefix}/completions` (OpenAI legacy text completions).
    Completions,
    /// `POST {api_prefix}/responses` (OpenAI Responses, stateless).
    Responses,
}

impl Endpoint {
    /// The path under `api_prefix`, as handlers and logs name the door.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat/completions",
            Endpoint::Messages => "messages",
            Endpoint::CountTokens => "messages/count_tokens",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Completions => "completions",
            Endpoint::Responses => "responses",
        }
    }
}

#[derive(Debug)]
pub struct RequestContext {
    /// uuid4, as in the reference.
    pub id: String,
    /// The door the request came in through.
    pub endpoint: Endpoint,
    pub created_at: SystemTime,
    pub started: Instant,
    /// The client's request body as received.
    pub request: Map<String, Value>,
    /// The client's HTTP headers (never logged as a whole: they carry the key).
    pub http_headers: HeaderMap,
    pub remote_addr: String,
    pub api_key_id: Option<String>,
    pub group: Option<String>,
    pub user_info: Value,
    /// The connection the model was routed to.
    pub connection: Option<String>,
    /// The upstream model name.
    pub model: Option<String>,
    /// The upstream request fields other than `model` and `messages`; handlers may
    /// change them, and `extra_headers` (a table) becomes HTTP headers upstream.
    pub llm_params: Map<String, Value>,
    /// Free space for handlers.
    pub extra: Map<String, Value>,
    pub response: Option<Value>,
    pub error: Option<ApiError>,
    /// The extensions of the client's HTTP/1.x request, kept only while the server
    /// records header name spellings in them (an HTTPHeadersForwarder is
    /// configured): read by the forwarder (`upstream::case::client_spellings`).
    pub client_head: Option<http::Extensions>,
    /// Headers the forwarder copied whose client spelling is not lowercase: the
    /// spelling and the value copied. The copy goes out in that spelling while
    /// `llm_params.extra_headers` still holds that value under the lowercase name.
    pub forwarded_spellings: Vec<(Box<str>, Value)>,
    /// The group budget's reservation (`usage::budget`), settled when the request
    /// ends.
    pub budget_hold: Option<crate::usage::budget::Hold>,
}

/// `map[key]`, for the small objects of a request (its members, `usage`): up to
/// [`FEW_MEMBERS`] members are compared in order instead of hashing `key`, which
/// `serde_json::Map` does with SipHash (about 200 instructions a lookup, several
/// lookups a request on the paths measured in bench/README.md).
pub fn member<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    if map.len() <= FEW_MEMBERS {
        map.iter()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| value)
    } else {
        map.get(key)
    }
}

/// [`member`] of a value that may be an object.
pub fn member_of<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => member(map, key),
        _ => None,
    }
}

/// Objects up to this many members are searched in order by [`member`].
const FEW_MEMBERS: usize = 8;

/// `prefix` and a fresh random (v4) UUID in 32 hex digits: the ids the gateway
/// makes up (`chatcmpl-…`, `msg_…`). Written without `format!`, which went through
/// the formatting machinery for every request and stream.
pub fn random_id(prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + 32);
    id.push_str(prefix);
    push_random_hex(&mut id);
    id
}

/// Append a fresh random (v4) UUID's 32 hex digits to `id`.
pub fn push_random_hex(id: &mut String) {
    let mut digits = uuid::Uuid::encode_buffer();
    id.push_str(uuid::Uuid::new_v4().simple().encode_lower(&mut digits));
}

/// What the client asked for, as the request's records show it
/// ([`RequestContext::asked`]).
#[derive(Clone, Copy, Debug)]
pub struct Asked<'a> {
    /// The `model` of the request, as the client wrote it.
    pub model: Option<&'a str>,
    pub stream: bool,
}

impl RequestContext {
    pub fn new(http_headers: HeaderMap, remote_addr: String) -> Self {
        RequestContext {
            id: {
                let mut text = uuid::Uuid::encode_buffer();
                uuid::Uuid::new_v4()
                    .hyphenated()
                    .encode_lower(&mut text)
                    .to_owned()
            },
            endpoint: Endpoint::ChatCompletions,
            created_at: SystemTime::now(),
            started: Instant::now(),
            request: Map::new(),
            http_headers,
            remote_addr,
            api_key_id: None,
            group: None,
            user_info: Value::Null,
            connection: None,
            model: None,
            llm_params: Map::new(),
            extra: Map::new(),
            response: None,
            error: None,
            client_head: None,
            forwarded_spellings: Vec::new(),
            budget_hold: None,
        }
    }

    /// Seconds since the request arrived.
    pub fn duration(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The JSON view of the context that loggers receive: every field of the
    /// reference's context except the HTTP request (headers carry the client key).
    /// `created_at` is ISO 8601, `duration` seconds.
    pub fn to_log_json(&self) -> Value {
        let text = |v: &Option<String>| v.clone().map(Value::String).unwrap_or(Value::Null);
        let error = self.error.as_ref().map(|e| {
            let mut object = e.error_object();
            if let Value::Object(map) = &mut object {
                map.insert("status".into(), e.status().as_u16().into());
            }
            object
        });
        let mut map = Map::new();
        map.insert("id".into(), Value::String(self.id.clone()));
        map.insert("endpoint".into(), self.endpoint.as_str().into());
        map.insert("request".into(), Value::Object(self.request.clone()));
        map.insert(
            "response".into(),
            self.response.clone().unwrap_or(Value::Null),
        );
        map.insert("error".into(), error.unwrap_or(Value::Null));
        map.insert("group".into(), text(&self.group));
        map.insert("connection".into(), text(&self.connection));
        map.insert("model".into(), text(&self.model));
        map.insert("llm_params".into(), Value::Object(self.llm_params.clone()));
        map.insert("api_key_id".into(), text(&self.api_key_id));
        map.insert(
            "remote_addr".into(),
            Value::String(self.remote_addr.clone()),
        );
        map.insert(
            "created_at".into(),
            Value::String(humantime::format_rfc3339_micros(self.created_at).to_string()),
        );
        map.insert("duration".into(), self.duration().into());
        // `{}` when the key check gave none, as the reference's README promises.
        let user_info = match &self.user_info {
            Value::Null => Value::Object(Map::new()),
            other => other.clone(),
        };
        map.insert("user_info".into(), user_info);
        map.insert("extra".into(), Value::Object(self.extra.clone()));
        crate::logging::redact_context(&mut map);
        Value::Object(map)
    }

    /// Whether the client asked for a streamed answer.
    pub fn is_stream(&self) -> bool {
        member(&self.request, "stream")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// The model the client asked for and whether it asked for a stream, read once
    /// for the request's records (its line, metrics and usage row): each read of
    /// `request` is a SipHash of the key.
    pub fn asked(&self) -> Asked<'_> {
        Asked {
            model: member(&self.request, "model").and_then(Value::as_str),
            stream: self.is_stream(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{}` when the key check gave none (the README's promise; the issue found None).
    #[test]
    fn log_json_user_info_is_an_empty_table_without_one() {
        let mut ctx = RequestContext::new(HeaderMap::new(), "127.0.0.1".into());
        assert_eq!(ctx.to_log_json()["user_info"], serde_json::json!({}));
        ctx.user_info = serde_json::json!({"tier": "gold"});
        assert_eq!(ctx.to_log_json()["user_info"]["tier"], "gold");
    }

    /// `member` finds what `Map::get` finds, on either side of the size where it
    /// stops searching in order.
    #[test]
    fn member_agrees_with_get() {
        for size in 0..=FEW_MEMBERS + 3 {
            let map: Map<String, Value> = (0..size).map(|i| (format!("k{i}"), i.into())).collect();
            for key in (0..=size)
                .map(|i| format!("k{i}"))
                .chain(["".into(), "k".into()])
            {
                assert_eq!(member(&map, &key), map.get(&key), "{size} members, {key:?}");
                let object = Value::Object(map.clone());
                assert_eq!(member_of(&object, &key), map.get(&key));
            }
        }
        assert_eq!(member_of(&Value::from("k0"), "k0"), None);
        assert_eq!(member_of(&Value::Null, "k0"), None);
    }

    #[test]
    fn random_ids_are_fresh_hex_after_their_prefix() {
        let (a, b) = (random_id("chatcmpl-"), random_id("chatcmpl-"));
        assert_ne!(a, b);
        let digits = a.strip_prefix("chatcmpl-").unwrap();
        assert_eq!(digits.len(), 32);
        assert!(digits
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        let id = RequestContext::new(HeaderMap::new(), "127.0.0.1".into()).id;
        assert!(uuid::Uuid::parse_str(&id).is_ok() && id.len() == 36, "{id}");
    }
}
