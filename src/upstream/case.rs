//! Header name spellings for requests to HTTP/1.1 upstreams.
//!
//! `http::HeaderMap` keeps names lowercase, so the spelling an operator wrote in a
//! connection's `http_headers` (`X-API-key`, `x-lower-case`) or a handler used in
//! `llm_params.extra_headers` is gone by the time a request is written. hyper's
//! HTTP/1.1 client writes a request's names as spelled in a `HeaderCaseMap` found
//! in the request's extensions (names missing from it fall back to title case, the
//! connection's `title_case_headers`), but that type is private to hyper: the only
//! way to get one is to have hyper's HTTP/1.1 server parse a request head with
//! `preserve_header_case`. [`HeaderCase::of`] does exactly that, once per set of
//! spellings, over an in-memory pipe (no socket, no runtime), and keeps the parsed
//! request's extensions to be cloned into each request that needs them.
//!
//! Only names whose spelling differs from title case are kept: the common case (no
//! configured or handler-set name, or all in title case) is [`HeaderCase::NONE`],
//! and sending then costs nothing more than before.
//!
//! Which transports honour this: only the in-task pool (plain `http://` upstreams
//! without a proxy in the environment). reqwest (https, proxies) builds its own
//! hyper request and drops the caller's extensions, so it sends title case; HTTP/2
//! sends lowercase names by specification.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWrite;

/// The spellings of some header names for one upstream request, with hyper's map of
/// them ready to be put into the request. Cheap to clone.
#[derive(Clone, Default)]
pub struct HeaderCase(Option<Arc<Spelled>>);

struct Spelled {
    /// Lowercase name and spelling, in the order given; no spelling is title case.
    names: Vec<(HeaderName, Box<str>)>,
    /// The extensions of a request parsed by hyper: its `HeaderCaseMap` of `names`.
    extensions: http::Extensions,
}

impl std::fmt::Debug for HeaderCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.spellings().map(|(_, spelling)| spelling))
            .finish()
    }
}

/// At most this many sets of spellings are kept (handlers may make up names per
/// request; the cache must not grow with them).
const CACHE_LIMIT: usize = 256;

impl HeaderCase {
    /// No special spellings: every name goes out in title case.
    pub const NONE: HeaderCase = HeaderCase(None);

    /// The spellings among `names` that are not title case. A name given twice (in
    /// any case) is spelled as its last use, as the last value is the one a
    /// `HeaderMap::insert` keeps; names that are not valid header names are left
    /// out. Names all in title case cost one pass over them and no allocation;
    /// other sets seen before cost one key string and a cache lookup; a new one the
    /// parse of one small request head.
    pub fn of<'a, I>(names: I) -> HeaderCase
    where
        I: IntoIterator<Item = &'a str>,
        I::IntoIter: Clone,
    {
        let names = names.into_iter();
        let mut key = String::new();
        for (index, name) in names.clone().enumerate() {
            let kept = !is_title_case(name)
                && is_token(name)
                && spellable(name)
                && !names
                    .clone()
                    .skip(index + 1)
                    .any(|later| later.eq_ignore_ascii_case(name));
            if kept {
                key.push_str(name);
                key.push('\n');
            }
        }
        Self::cached(key)
    }

    /// Whether any name has a spelling of its own.
    pub fn is_none(&self) -> bool {
        self.0.is_none()
    }

    /// Lowercase names and their spellings.
    pub fn spellings(&self) -> impl Iterator<Item = (&HeaderName, &str)> {
        self.0
            .iter()
            .flat_map(|s| s.names.iter().map(|(name, spelling)| (name, &**spelling)))
    }

    /// The spellings of a request built from several sources (`(spellings, headers)`
    /// pairs, the source whose values win first): a source's spelling is used for a
    /// name when the request's values for it are exactly that source's, so a name
    /// whose value another source replaced (the provider's `Authorization`, the
    /// gateway's `Content-Type`) is not written in the loser's spelling.
    pub fn resolve(request: &HeaderMap, sources: &[(&HeaderCase, &HeaderMap)]) -> HeaderCase {
        // A source's spelling is used when no source before it set the name and the
        // request carries exactly its values.
        let uses = |index: usize, name: &HeaderName| {
            let from = sources[index].1;
            !sources[..index]
                .iter()
                .any(|(_, earlier)| earlier.contains_key(name))
                && request.get_all(name).iter().eq(from.get_all(name).iter())
        };
        let mut spelled = (0..sources.len()).filter(|&i| !sources[i].0.is_none());
        let Some(only) = spelled.next() else {
            return HeaderCase::NONE;
        };
        // The usual case with spellings: one source (the connection's static
        // headers), all of them going out unchanged: its own map, no allocation.
        let case = sources[only].0;
        if spelled.next().is_none() && case.spellings().all(|(name, _)| uses(only, name)) {
            return case.clone();
        }
        let mut key = String::new();
        for (index, (case, _)) in sources.iter().enumerate() {
            for (name, spelling) in case.spellings() {
                if uses(index, name) {
                    key.push_str(spelling);
                    key.push('\n');
                }
            }
        }
        Self::cached(key)
    }

    /// Put hyper's map into a request that is about to be sent.
    pub fn apply<B>(&self, request: &mut http::Request<B>) {
        if let Some(spelled) = &self.0 {
            *request.extensions_mut() = spelled.extensions.clone();
        }
    }

    /// The case for `key`: spellings, each followed by a newline (never part of a
    /// header name), all of them valid and spellable.
    fn cached(key: String) -> HeaderCase {
        if key.is_empty() {
            return HeaderCase::NONE;
        }
        static CACHE: OnceLock<Mutex<HashMap<String, HeaderCase>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        if let Some(hit) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return hit.clone();
        }
        // Built outside the lock: parsing takes microseconds, and two threads that
        // race build the same thing.
        let names: Vec<(HeaderName, Box<str>)> = key
            .lines()
            .filter_map(|spelling| {
                let name = HeaderName::from_bytes(spelling.as_bytes()).ok()?;
                Some((name, spelling.into()))
            })
            .collect();
        let Some(extensions) = parsed_case_map(&names) else {
            return HeaderCase::NONE;
        };
        let case = HeaderCase(Some(Arc::new(Spelled { names, extensions })));
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(key, case.clone());
        case
    }
}

/// Whether hyper's title case (`title_case_headers`) writes `name` as it is: the
/// first letter and each one after a `-` upper case, every other letter lower case.
fn is_title_case(name: &str) -> bool {
    let mut after_dash = true;
    name.bytes().all(|b| {
        let ok = if after_dash {
            !b.is_ascii_lowercase()
        } else {
            !b.is_ascii_uppercase()
        };
        after_dash = b == b'-';
        ok
    })
}

/// Names whose placeholder value in the synthesized head would change how hyper
/// parses it (framing, upgrades): they keep title case.
fn spellable(name: &str) -> bool {
    ![
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "expect",
    ]
    .iter()
    .any(|framing| framing.eq_ignore_ascii_case(name))
}

/// Whether `name` is a valid header name (an HTTP token), checked without building
/// a `HeaderName` (which allocates for names it does not know).
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// hyper's `HeaderCaseMap` for `names`, inside the extensions of a request that its
/// HTTP/1.1 server parsed with `preserve_header_case`. The head is written whole into
/// an in-memory pipe before the connection is polled, so each poll finishes without
/// waiting; no runtime is needed. `None` if hyper did not hand over a request.
fn parsed_case_map(names: &[(HeaderName, Box<str>)]) -> Option<http::Extensions> {
    let mut head = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for (_, spelling) in names {
        head.extend_from_slice(spelling.as_bytes());
        head.extend_from_slice(b": x\r\n");
    }
    head.extend_from_slice(b"\r\n");
    // Room for the head and hyper's small answer, so no write ever waits.
    let (mut client, server) = tokio::io::duplex(head.len() + 1024);
    let mut cx = Context::from_waker(Waker::noop());
    match std::pin::Pin::new(&mut client).poll_write(&mut cx, &head) {
        Poll::Ready(Ok(n)) if n == head.len() => {}
        _ => return None,
    }
    let parsed: Arc<Mutex<Option<http::Extensions>>> = Arc::default();
    let keep = parsed.clone();
    let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        *keep.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(std::mem::take(request.extensions_mut()));
        std::future::ready(Ok::<_, Infallible>(http::Response::new(
            Empty::<Bytes>::new(),
        )))
    });
    let connection = http1::Builder::new()
        .preserve_header_case(true)
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(server), service);
    let mut connection = std::pin::pin!(connection);
    // One poll reads, parses and calls the service; a few more are only a guard.
    for _ in 0..4 {
        if parsed.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
            break;
        }
        if connection.as_mut().poll(&mut cx).is_ready() {
            break;
        }
    }
    let extensions = parsed.lock().unwrap_or_else(|e| e.into_inner()).take();
    extensions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_case_is_what_hyper_writes_without_a_map() {
        for name in ["X-Custom-Header", "Content-Type", "A", "X-1-Ab", "Te"] {
            assert!(is_title_case(name), "{name}");
        }
        for name in [
            "x-lower-case",
            "X-API-key",
            "X-Api-KEY",
            "content-type",
            "X-a",
        ] {
            assert!(!is_title_case(name), "{name}");
        }
    }

    #[test]
    fn only_spellings_other_than_title_case_are_kept() {
        assert!(HeaderCase::of(["X-Custom-Header", "Accept"]).is_none());
        assert!(HeaderCase::of(["content-length", "Transfer-encoding", "bad name", ""]).is_none());
        let case = HeaderCase::of([
            "X-Custom-Header",
            "x-lower-case",
            "x-api-key",
            "X-API-key",
            "bad name",
            "x-title",
            "X-Title",
        ]);
        let kept: Vec<_> = case.spellings().map(|(n, s)| (n.as_str(), s)).collect();
        assert_eq!(
            kept,
            [("x-lower-case", "x-lower-case"), ("x-api-key", "X-API-key")]
        );
        // The same set comes from the cache: the same map, not a new parse.
        let again = HeaderCase::of(["x-lower-case", "X-API-key"]);
        assert!(Arc::ptr_eq(
            case.0.as_ref().unwrap(),
            again.0.as_ref().unwrap()
        ));
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (n.parse().unwrap(), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn a_spelling_applies_only_where_its_source_value_went_out() {
        let connection = headers(&[("x-api-key", "c"), ("x-lower-case", "c")]);
        let connection_case = HeaderCase::of(["X-API-key", "x-lower-case"]);
        let call = headers(&[("x-tenant", "t"), ("x-api-key", "from-call")]);
        let call_case = HeaderCase::of(["x-TENANT", "x-API-KEY"]);
        let sources = [(&connection_case, &connection), (&call_case, &call)];

        // Only the connection spells what goes out: its own map, shared.
        let sent = headers(&[("x-api-key", "c"), ("x-lower-case", "c")]);
        let resolved = HeaderCase::resolve(&sent, &sources[..1]);
        assert!(Arc::ptr_eq(
            resolved.0.as_ref().unwrap(),
            connection_case.0.as_ref().unwrap()
        ));

        // The call's x-api-key lost to the connection's; the provider replaced
        // x-lower-case: neither spelling is used for it.
        let sent = headers(&[
            ("x-api-key", "c"),
            ("x-lower-case", "provider"),
            ("x-tenant", "t"),
        ]);
        let resolved = HeaderCase::resolve(&sent, &sources);
        let kept: Vec<_> = resolved.spellings().map(|(_, s)| s).collect();
        assert_eq!(kept, ["X-API-key", "x-TENANT"]);

        assert!(HeaderCase::resolve(&sent, &[]).is_none());
    }

    #[test]
    fn the_parsed_map_is_hyper_s() {
        let case = HeaderCase::of(["x-lower-case"]);
        let mut request = http::Request::new(());
        case.apply(&mut request);
        // Opaque, but present: one extension (hyper's map).
        assert_eq!(request.extensions().len(), 1);
    }
}
