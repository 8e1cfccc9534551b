//! `lm_proxy.handlers.HTTPHeadersForwarder`: copies the client's request headers to
//! the upstream request (through `llm_params.extra_headers`), never the sensitive
//! ones: above all the client's `Authorization`, which carries its lm-proxy key.
//! The headers the connection sets itself (static `http_headers`, provider
//! versions and projects, credentials) win over copied ones
//! (`upstream::json_post_headers`).

use std::collections::HashSet;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::RequestHandler;
use crate::context::RequestContext;
use crate::error::ApiError;

/// Never forwarded, whatever the config says (a white list cannot reopen them):
/// - credentials: the client's lm-proxy key above all, in any header it may use;
/// - hop-by-hop and framing headers, which describe the client's connection to the
///   gateway, not the gateway's to the upstream (also any header the client's
///   `Connection` header names, see [`HttpHeadersForwarder::before`]);
/// - client-address headers: the upstream would take the client's word for where
///   it is (the gateway works the address out itself, `client_addr.rs`);
/// - caching and range headers (the reference's set).
pub const SENSITIVE_HEADERS: &[&str] = &[
    // credentials
    "authorization",
    "www-authenticate",
    "proxy-authorization",
    "proxy-authenticate",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "cookie",
    "set-cookie",
    // hop-by-hop and framing
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "proxy-connection",
    "te",
    "trailer",
    "expect",
    "host",
    "accept-encoding",
    "http2-settings",
    // client addresses and proxy chains
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-prefix",
    "x-real-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-original-forwarded-for",
    "via",
    // caching and ranges
    "cache-control",
    "etag",
    "if-none-match",
    "if-modified-since",
    "strict-transport-security",
    "range",
    "if-range",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwarderArgs {
    /// Headers not to forward, in addition to [`SENSITIVE_HEADERS`].
    #[serde(default)]
    pub ignore_headers: Vec<String>,
    /// When not empty, only these headers are forwarded (case-insensitive).
    #[serde(default)]
    pub white_list_headers: Vec<String>,
}

pub struct HttpHeadersForwarder {
    ignore: HashSet<String>,
    white_list: HashSet<String>,
}

impl HttpHeadersForwarder {
    pub fn new(args: ForwarderArgs) -> Self {
        let lower = |v: Vec<String>| {
            v.into_iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect::<HashSet<_>>()
        };
        let mut ignore = lower(args.ignore_headers);
        ignore.extend(SENSITIVE_HEADERS.iter().map(|h| h.to_string()));
        HttpHeadersForwarder {
            ignore,
            white_list: lower(args.white_list_headers),
        }
    }

    fn forwards(&self, name: &str) -> bool {
        // HTTP/2 pseudo-headers never appear in a HeaderMap, but be explicit.
        !name.starts_with(':')
            && !self.ignore.contains(name)
            && (self.white_list.is_empty() || self.white_list.contains(name))
    }
}

#[async_trait]
impl RequestHandler for HttpHeadersForwarder {
    async fn before(&self, ctx: &mut RequestContext) -> Result<(), ApiError> {
        // Headers the client declared hop-by-hop (`Connection: close, x-foo`).
        let hop_by_hop: HashSet<String> = ctx
            .http_headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|name| name.trim().to_ascii_lowercase())
            .collect();
        let mut forwarded = Map::new();
        for (name, value) in &ctx.http_headers {
            if !self.forwards(name.as_str()) || hop_by_hop.contains(name.as_str()) {
                continue;
            }
            let Ok(text) = value.to_str() else { continue };
            // Repeated headers are joined as HTTP allows.
            match forwarded.get_mut(name.as_str()) {
                Some(Value::String(existing)) => {
                    existing.push_str(", ");
                    existing.push_str(text);
                }
                _ => {
                    forwarded.insert(name.as_str().to_owned(), Value::String(text.to_owned()));
                }
            }
        }
        if forwarded.is_empty() {
            return Ok(());
        }
        // The names stay lowercase in `extra_headers` (what the reference's handlers
        // after this one read); the client's spellings are kept beside them, for the
        // upstreams that write spellings.
        if let Some(client) = &ctx.client_head {
            let names: Vec<&str> = forwarded.keys().map(String::as_str).collect();
            let spelled = crate::upstream::client_spellings(&names, client);
            for (name, spelling) in names.iter().zip(spelled) {
                if *name != &*spelling {
                    let copied = forwarded[*name].clone();
                    ctx.forwarded_spellings.push((spelling, copied));
                }
            }
        }
        let extra = ctx
            .llm_params
            .entry("extra_headers")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(extra) = extra {
            for (name, value) in forwarded {
                // Headers set by earlier handlers win over copied client headers.
                extra.entry(name).or_insert(value);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(headers: &[(&str, &str)]) -> RequestContext {
        let mut map = http::HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        RequestContext::new(map, "127.0.0.1".into())
    }

    #[tokio::test]
    async fn sensitive_headers_are_never_forwarded() {
        let f = HttpHeadersForwarder::new(ForwarderArgs {
            ignore_headers: vec!["X-Drop".into()],
            white_list_headers: vec![],
        });
        let mut c = ctx(&[
            ("authorization", "Bearer client-key"),
            ("x-trace", "1"),
            ("x-drop", "no"),
            ("host", "h"),
        ]);
        f.before(&mut c).await.unwrap();
        assert_eq!(
            c.llm_params["extra_headers"],
            serde_json::json!({"x-trace": "1"})
        );
    }

    #[tokio::test]
    async fn white_list_is_case_insensitive_and_cannot_reopen_authorization() {
        let f = HttpHeadersForwarder::new(ForwarderArgs {
            ignore_headers: vec![],
            white_list_headers: vec!["X-Tenant".into(), "Authorization".into()],
        });
        let mut c = ctx(&[
            ("authorization", "Bearer k"),
            ("x-tenant", "acme"),
            ("x-other", "1"),
        ]);
        f.before(&mut c).await.unwrap();
        assert_eq!(
            c.llm_params["extra_headers"],
            serde_json::json!({"x-tenant": "acme"})
        );
    }

    #[tokio::test]
    async fn client_address_and_hop_by_hop_headers_are_never_forwarded() {
        let f = HttpHeadersForwarder::new(ForwarderArgs {
            ignore_headers: vec![],
            white_list_headers: vec![],
        });
        let mut c = ctx(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("true-client-ip", "6.6.6.6"),
            ("via", "1.1 evil"),
            ("x-goog-api-key", "k"),
            ("te", "trailers"),
            ("connection", "keep-alive, X-Hop"),
            ("x-hop", "1"),
            ("x-tenant", "acme"),
        ]);
        f.before(&mut c).await.unwrap();
        assert_eq!(
            c.llm_params["extra_headers"],
            serde_json::json!({"x-tenant": "acme"})
        );

        // A white list cannot reopen them either.
        let f = HttpHeadersForwarder::new(ForwarderArgs {
            ignore_headers: vec![],
            white_list_headers: vec![
                "X-Forwarded-For".into(),
                "X-Real-IP".into(),
                "x-tenant".into(),
            ],
        });
        let mut c = ctx(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-tenant", "acme"),
        ]);
        f.before(&mut c).await.unwrap();
        assert_eq!(
            c.llm_params["extra_headers"],
            serde_json::json!({"x-tenant": "acme"})
        );
    }
}
