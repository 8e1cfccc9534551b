//! Header name spellings for requests to HTTP/1.1 upstreams.
//!
//! `http::HeaderMap` keeps names lowercase, so the spelling an operator wrote in a
//! connection's `http_headers` (`X-API-key`, `x-lower-case`) or a handler used in
//! `llm_params.extra_headers` is gone by the time a request is written. A
//! [`HeaderCase`] keeps those spellings beside the map; the in-task pool's
//! connection (`http1.rs`) writes each name as spelled there, title case otherwise.
//!
//! The client's own spellings, which hyper's HTTP/1.1 server records while an
//! HTTPHeadersForwarder is configured, are in a map private to hyper; they are read
//! back through hyper's HTTP/1.1 client, which writes a head from that map
//! ([`client_spellings`]).
//!
//! Only names whose spelling differs from title case are kept: the common case (no
//! configured or handler-set name, or all in title case) is [`HeaderCase::NONE`],
//! and sending then costs nothing more than before.
//!
//! Which transports honour this: the in-task pool (`http://` and `https://`
//! upstreams, through an `http://` proxy too). reqwest (origins behind an https or
//! SOCKS proxy) builds its own request, so it sends title case.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

/// The spellings of some header names for one upstream request, with hyper's map of
/// them ready to be put into the request. Cheap to clone.
#[derive(Clone, Default)]
pub struct HeaderCase(Option<Arc<Spelled>>);

struct Spelled {
    /// Lowercase name and spelling, in the order given; no spelling is title case.
    names: Vec<(HeaderName, Box<str>)>,
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

    /// How `name` is spelled, if not in title case.
    pub fn spelling_of(&self, name: &HeaderName) -> Option<&str> {
        let spelled = self.0.as_ref()?;
        spelled
            .names
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, spelling)| &**spelling)
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
        if names.is_empty() {
            return HeaderCase::NONE;
        }
        let case = HeaderCase(Some(Arc::new(Spelled { names })));
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

/// Names that frame or upgrade the exchange keep title case: the connection writes
/// the body's framing itself, and the others are not for handlers to spell.
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
/// HTTP/1.1 server parsed with `preserve_header_case` (what the server records for a
/// client's request; the tests of [`client_spellings`] make one this way). The head is written whole into
/// an in-memory pipe before the connection is polled, so each poll finishes without
/// waiting; no runtime is needed. `None` if hyper did not hand over a request.
#[cfg(test)]
fn parsed_case_map(names: &[(HeaderName, Box<str>)]) -> Option<http::Extensions> {
    use hyper::body::Incoming;
    use hyper::server::conn::http1;
    use std::convert::Infallible;
    use tokio::io::AsyncWrite;
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

/// How the client spelled `names` (lowercase names of headers its request carried),
/// from `client`, the extensions of that request as hyper's HTTP/1.1 server handed it
/// over. The server records the spellings there only with `preserve_header_case`
/// (`server::conn` turns it on while an HTTPHeadersForwarder is configured), in a map
/// private to hyper; its HTTP/1.1 client, though, writes a request's names from that
/// map. So a request with these names (empty values) and a copy of the client's
/// extensions is written into an in-memory pipe by a client connection (no socket,
/// no runtime), and the names are read back from the head. One spelling per name, in
/// the order given; a name the map lacks (an HTTP/2 request, a connection accepted
/// before a reload turned recording on) comes back as given. Names and their count
/// are the client's, already bounded by the server's head limits.
pub fn client_spellings(names: &[&str], client: &http::Extensions) -> Vec<Box<str>> {
    let mut request = http::Request::new(Empty::<Bytes>::new());
    let mut size = 64;
    for name in names {
        if let Ok(header) = HeaderName::from_bytes(name.as_bytes()) {
            request
                .headers_mut()
                .append(header, http::HeaderValue::from_static(""));
            size += name.len() + 3;
        }
    }
    *request.extensions_mut() = client.clone();
    let head = written_head(request, size).unwrap_or_default();
    let written: Vec<&[u8]> = head
        .split(|&b| b == b'\n')
        .skip(1)
        .filter_map(|line| Some(&line[..line.iter().position(|&b| b == b':')?]))
        .collect();
    names
        .iter()
        .map(|name| {
            let spelled = written
                .iter()
                .find(|w| w.eq_ignore_ascii_case(name.as_bytes()))
                .and_then(|w| std::str::from_utf8(w).ok())
                .unwrap_or(name);
            spelled.into()
        })
        .collect()
}

/// The head hyper's HTTP/1.1 client writes for `request` (at most `size` bytes): the
/// pipe holds it whole, so one poll of the connection writes it without waiting.
fn written_head(request: http::Request<Empty<Bytes>>, size: usize) -> Option<Vec<u8>> {
    let (mut ours, theirs) = tokio::io::duplex(size);
    let mut cx = Context::from_waker(Waker::noop());
    let handshake = hyper::client::conn::http1::handshake(TokioIo::new(theirs));
    let Poll::Ready(Ok((mut sender, connection))) = std::pin::pin!(handshake).poll(&mut cx) else {
        return None;
    };
    // Kept until the head is read: dropping it would cancel the request unwritten.
    let _answer = sender.send_request(request);
    let mut connection = std::pin::pin!(connection);
    let mut head = vec![0u8; size];
    let mut filled = 0;
    // One poll encodes and writes the head; a few more are only a guard.
    for _ in 0..4 {
        let ended = connection.as_mut().poll(&mut cx).is_ready();
        let mut buf = tokio::io::ReadBuf::new(&mut head[filled..]);
        if let Poll::Ready(Ok(())) =
            tokio::io::AsyncRead::poll_read(std::pin::Pin::new(&mut ours), &mut cx, &mut buf)
        {
            filled += buf.filled().len();
        }
        if head[..filled].ends_with(b"\r\n\r\n") {
            head.truncate(filled - 4);
            return Some(head);
        }
        if ended || filled == head.len() {
            return None;
        }
    }
    None
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
    fn client_spellings_come_from_the_map_hyper_s_server_recorded() {
        let recorded = parsed_case_map(&[
            ("x-trace-id".parse().unwrap(), "X-Trace-ID".into()),
            (
                "x-request-source".parse().unwrap(),
                "x-request-source".into(),
            ),
            ("x-tenant".parse().unwrap(), "X-TENANT".into()),
        ])
        .unwrap();
        let names = ["x-request-source", "x-trace-id", "x-not-sent", "x-tenant"];
        let spelled = client_spellings(&names, &recorded);
        assert_eq!(
            spelled.iter().map(|s| &**s).collect::<Vec<_>>(),
            ["x-request-source", "X-Trace-ID", "x-not-sent", "X-TENANT"]
        );
        // Nothing recorded (HTTP/2, recording off): the names as given.
        let spelled = client_spellings(&names, &http::Extensions::new());
        assert_eq!(spelled.iter().map(|s| &**s).collect::<Vec<_>>(), names);
        assert!(client_spellings(&[], &recorded).is_empty());
    }
}
