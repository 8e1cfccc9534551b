//! Keeping secrets out of answers and logs.
//!
//! Upstreams sometimes echo what they were sent (a provider's "Incorrect API key
//! provided: sk-...", a relay's debug output, an OAuth endpoint quoting the grant).
//! Every error that reaches a client or a log passes through a [`Redactor`] holding
//! the configured secrets (provider keys, client keys, the encryption key, static
//! header values, provider options), which replaces any of them with `***`: every
//! string of the error (message, type, code, param) and every header value sent with
//! it. Answers and chunks passed on get the same treatment for their `error` members
//! ([`Redactor::redact_payload`]), including OpenAI-compatible text passed through
//! unparsed: one multi-pattern search over its bytes, and a tree only on a hit.
//!
//! A secret is searched for in every form it is sent in or may come back in: as
//! it is, JSON-escaped (`\/`, `\n`, `\"`), and percent- or form-encoded (upper and
//! lower hex), so that an echoed `refresh_token=1%2F%2F...` is caught too.
//!
//! Secrets that are not in the config (a Vertex credential file's client secret,
//! refresh token and private key, the access tokens obtained at run time) are
//! registered while they are in use ([`RuntimeSecrets`]) and redacted alike,
//! process-wide.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use aho_corasick::{AhoCorasick, MatchKind};
use arc_swap::ArcSwapOption;
use http::HeaderValue;
use serde_json::Value;

use crate::config::{Config, ConnectionSpec};
use crate::error::{ApiError, ErrorBody};
use crate::payload::Payload;

/// Shorter values are not treated as secrets: replacing them would mangle ordinary
/// text, and they are too short to be real credentials.
const MIN_SECRET_LEN: usize = 6;

/// What a secret is replaced with.
const MASK: &str = "***";

/// The forms `secret` can take in text: as it is, JSON-escaped (serde's escapes,
/// and `\/` as some encoders write it), form-encoded as in a token request body
/// (`+` for space), percent-encoded with `%20`, each encoding in upper- and
/// lower-case hex.
pub fn encoded_forms(secret: &str) -> Vec<String> {
    let mut forms = vec![secret.to_owned()];
    let json = serde_json::to_string(secret).expect("strings always serialize");
    let json = json[1..json.len() - 1].to_owned();
    if json.contains('/') {
        forms.push(json.replace('/', "\\/"));
    }
    forms.push(json);
    let form: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let percent = percent_encode(secret);
    for encoded in [form, percent] {
        if encoded.contains('%') {
            forms.push(lower_hex(&encoded));
        }
        forms.push(encoded);
    }
    forms.sort();
    forms.dedup();
    forms
}

/// RFC 3986 percent-encoding: everything but unreserved characters, uppercase hex.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `%2F` → `%2f`, leaving everything else alone.
fn lower_hex(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3).unwrap_or(&rest[at..]);
        out.push_str(&escape.to_ascii_lowercase());
        rest = &rest[at + escape.len()..];
    }
    out.push_str(rest);
    out
}

/// `text` cut to at most `max` bytes, followed by `...` when cut. The cut also drops
/// the word it falls in (a run of the characters keys and tokens are made of): a
/// secret cut in two would no longer be recognised by the redactor, and its first
/// part would go out.
pub fn truncate_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let kept = text[..end].trim_end_matches(|c: char| {
        c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '+' | '%' | '~' | '\\')
    });
    format!("{kept}...")
}

/// Every form of every secret of a set, longest first.
fn patterns_of(secrets: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut patterns: Vec<String> = secrets
        .into_iter()
        .filter(|s| s.len() >= MIN_SECRET_LEN)
        .flat_map(|s| encoded_forms(&s))
        .collect();
    patterns.sort();
    patterns.dedup();
    patterns
}

/// Most patterns per automaton of a [`Scanner`]: aho-corasick's SIMD prefilter
/// (Teddy) takes up to 64; past that its search ran about 15 times slower (a 180-byte
/// chunk: 40 ns with 40 patterns, 700 ns with 200).
const SCAN_GROUP: usize = 60;

/// The hot path's question, "is any of these in this text?", for the answers and
/// chunks passed on unparsed: one automaton per [`SCAN_GROUP`] patterns, or, for a
/// single pattern (one upstream key whose encoded forms are all the same, the usual
/// case), a substring search: about a third of the automaton's instructions on a
/// streamed chunk, where it runs once per chunk.
struct Scanner {
    groups: Vec<ScanGroup>,
    /// The longest pattern's length in bytes.
    longest: usize,
}

enum ScanGroup {
    One(Box<memchr::memmem::Finder<'static>>),
    Many(AhoCorasick),
}

impl Scanner {
    fn new(secrets: impl IntoIterator<Item = String>) -> Option<Scanner> {
        let patterns = patterns_of(secrets);
        let groups: Vec<ScanGroup> = match &patterns[..] {
            [one] => vec![ScanGroup::One(Box::new(
                memchr::memmem::Finder::new(one.as_bytes()).into_owned(),
            ))],
            _ => patterns
                .chunks(SCAN_GROUP)
                .map(|group| {
                    ScanGroup::Many(
                        AhoCorasick::builder()
                            .match_kind(MatchKind::LeftmostFirst)
                            .build(group)
                            .expect("literal patterns always build"),
                    )
                })
                .collect(),
        };
        let longest = patterns.iter().map(String::len).max().unwrap_or(0);
        (!groups.is_empty()).then_some(Scanner { groups, longest })
    }

    fn is_match(&self, haystack: &[u8]) -> bool {
        self.groups.iter().any(|group| match group {
            ScanGroup::One(finder) => finder.find(haystack).is_some(),
            ScanGroup::Many(automaton) => automaton.is_match(haystack),
        })
    }
}

/// One search for every form of every secret of a set.
struct Matcher {
    automaton: AhoCorasick,
    patterns: usize,
}

impl Matcher {
    /// `None` when no value is long enough to count as a secret.
    fn new(secrets: impl IntoIterator<Item = String>) -> Option<Matcher> {
        let patterns = patterns_of(secrets);
        if patterns.is_empty() {
            return None;
        }
        // Leftmost-longest: a secret that contains another is replaced whole.
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .expect("literal patterns always build");
        Some(Matcher {
            automaton,
            patterns: patterns.len(),
        })
    }

    fn is_match(&self, haystack: &[u8]) -> bool {
        self.automaton.is_match(haystack)
    }

    fn redact<'a>(&self, text: Cow<'a, str>) -> Cow<'a, str> {
        if !self.automaton.is_match(text.as_ref()) {
            return text;
        }
        let mut out = String::with_capacity(text.len());
        self.automaton
            .replace_all_with(text.as_ref(), &mut out, |_, _, dst| {
                dst.push_str(MASK);
                true
            });
        Cow::Owned(out)
    }
}

/// What [`Redactor::redact_stream_payload`] keeps between a stream's chunks: which
/// memo text ([`crate::json_scan::TextPlace`]) was last searched and held no
/// upstream secret.
#[derive(Debug, Default)]
pub struct StreamClean(Option<(u64, u64)>);

/// Removes secrets from errors, header values and passed-on answers. Cheap to clone.
#[derive(Clone, Default)]
pub struct Redactor {
    /// The config's secrets; `None` when it holds none.
    matcher: Option<Arc<Matcher>>,
    /// Those of them that are sent upstream, the only ones an upstream can echo:
    /// searched for in answers passed on unparsed ([`Redactor::redact_payload`]).
    upstream: Option<Arc<Scanner>>,
}

impl std::fmt::Debug for Redactor {
    // Never the secrets themselves.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("patterns", &self.matcher.as_ref().map_or(0, |m| m.patterns))
            .field(
                "upstream_groups",
                &self.upstream.as_ref().map_or(0, |s| s.groups.len()),
            )
            .finish()
    }
}

impl Redactor {
    /// A redactor of `secrets`, all of which may be sent upstream.
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let secrets: Vec<String> = secrets.into_iter().collect();
        Redactor::of(secrets.clone(), secrets)
    }

    /// `local`: secrets that never leave the gateway (client keys, the encryption
    /// key); `upstream`: those sent to upstreams.
    fn of(local: Vec<String>, upstream: Vec<String>) -> Self {
        Redactor {
            upstream: Scanner::new(upstream.clone()).map(Arc::new),
            matcher: Matcher::new(local.into_iter().chain(upstream)).map(Arc::new),
        }
    }

    /// Every secret the config holds.
    pub fn from_config(config: &Config) -> Self {
        let mut local = vec![config.settings.encryption_key.clone()];
        for group in config.settings.groups.values() {
            local.extend(group.api_keys.iter().cloned());
        }
        local.extend(config.settings.metrics.token.iter().cloned());
        local.extend(config.settings.admin.iter().map(|a| a.token.clone()));
        let mut upstream = Vec::new();
        // The key-check service's own credentials (`[api_key_check.headers]`, e.g.
        // a service token next to the client key's placeholder) go upstream too.
        let key_check = config.api_key_check.as_ref().map(|spec| &spec.kwargs);
        if let Some(Value::Object(headers)) = key_check.and_then(|kwargs| kwargs.get("headers")) {
            let placeholder = key_check
                .and_then(|kwargs| kwargs.get("key_placeholder"))
                .and_then(Value::as_str)
                .unwrap_or("{api_key}");
            for value in headers.values().filter_map(Value::as_str) {
                // The parts around the client key's placeholder are the secret.
                upstream.extend(
                    value
                        .split(placeholder)
                        .map(str::trim)
                        .filter(|part| !part.is_empty() && !part.eq_ignore_ascii_case("bearer"))
                        .map(str::to_owned),
                );
            }
        }
        for spec in config.connections.values() {
            if let ConnectionSpec::Provider(settings) = spec {
                upstream.extend(settings.api_key.iter().cloned());
                // Trimmed too: that is how a key with stray whitespace is sent.
                upstream.extend(settings.api_key.iter().map(|k| k.trim().to_owned()));
                upstream.extend(settings.http_headers.values().cloned());
                // `init_params.default_headers` are sent like `http_headers`.
                collect_strings(
                    &serde_json::Value::Object(settings.init_params.clone()),
                    &mut upstream,
                );
                collect_strings(
                    &serde_json::Value::Object(settings.options.clone()),
                    &mut upstream,
                );
            }
        }
        Redactor::of(local, upstream)
    }

    /// Whether `bytes` holds any secret in any of its forms.
    pub fn finds_secret(&self, bytes: &[u8]) -> bool {
        self.matcher.as_ref().is_some_and(|m| m.is_match(bytes))
            || runtime_matcher().is_some_and(|m| m.is_match(bytes))
    }

    /// Whether `bytes` holds, in any of its forms, a secret that is sent upstream
    /// (configured or obtained at run time): what an upstream could echo.
    fn finds_upstream_secret(&self, bytes: &[u8]) -> bool {
        self.upstream.as_ref().is_some_and(|s| s.is_match(bytes))
            || runtime_matcher().is_some_and(|m| m.is_match(bytes))
    }

    /// `text` with every secret replaced by `***`.
    pub fn redact_str<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let text = match &self.matcher {
            Some(matcher) => matcher.redact(Cow::Borrowed(text)),
            None => Cow::Borrowed(text),
        };
        match runtime_matcher() {
            Some(matcher) => matcher.redact(text),
            None => text,
        }
    }

    pub fn redact_text(&self, text: &str) -> String {
        self.redact_str(text).into_owned()
    }

    fn redact_string(&self, text: &mut String) {
        if let Cow::Owned(clean) = self.redact_str(text) {
            *text = clean;
        }
    }

    fn redact_option(&self, text: &mut Option<String>) {
        if let Some(text) = text {
            self.redact_string(text);
        }
    }

    /// A header value with every secret removed; `None` when what is left is not a
    /// valid header value.
    pub fn redact_header(&self, value: HeaderValue) -> Option<HeaderValue> {
        if !self.finds_secret(value.as_bytes()) {
            return Some(value);
        }
        let text = String::from_utf8_lossy(value.as_bytes());
        HeaderValue::from_str(&self.redact_str(&text)).ok()
    }

    fn redact_body(&self, body: &mut ErrorBody) {
        self.redact_string(&mut body.message);
        self.redact_string(&mut body.error_type);
        self.redact_option(&mut body.code);
        self.redact_option(&mut body.param);
        body.headers = std::mem::take(&mut body.headers)
            .into_iter()
            .filter_map(|(name, value)| Some((name, self.redact_header(value)?)))
            .collect();
    }

    /// The error with every secret removed from every string it carries (message,
    /// type, code, param, details) and from the headers it is answered with.
    pub fn redact(&self, error: ApiError) -> ApiError {
        match error {
            ApiError::InvalidRequest {
                mut message,
                mut param,
                code,
            } => {
                self.redact_string(&mut message);
                self.redact_option(&mut param);
                ApiError::InvalidRequest {
                    message,
                    param,
                    code,
                }
            }
            ApiError::UpstreamRejected(mut body) => {
                self.redact_body(&mut body);
                ApiError::UpstreamRejected(body)
            }
            ApiError::Custom(mut body) => {
                self.redact_body(&mut body);
                ApiError::Custom(body)
            }
            ApiError::UpstreamFailure { detail } => ApiError::UpstreamFailure {
                detail: self.redact_text(&detail),
            },
            ApiError::UpstreamTimeout { detail } => ApiError::UpstreamTimeout {
                detail: self.redact_text(&detail),
            },
            ApiError::Internal { detail } => ApiError::Internal {
                detail: self.redact_text(&detail),
            },
            ApiError::ModelNotFound(model) => ApiError::ModelNotFound(self.redact_text(&model)),
            ApiError::ConnectionNotAllowed(name) => {
                ApiError::ConnectionNotAllowed(self.redact_text(&name))
            }
            other @ (ApiError::RequestTooLarge { .. }
            | ApiError::InvalidApiKey { .. }
            | ApiError::ServiceDisabled) => other,
        }
    }

    /// An answer or chunk with secrets removed from the errors it reports: its
    /// top-level `error` member and each choice's `error` (OpenRouter reports
    /// failures in chunks that also carry `choices`). Upstream text passed through
    /// unparsed is searched as bytes first for the secrets an upstream can know, the
    /// ones sent to it (one pass, on the hot path; a secret inside a JSON string may
    /// be JSON-escaped, which is one of the forms searched for) and becomes a tree
    /// only when one was found; then every secret is redacted from its errors. It
    /// stays as written when the find was outside an error.
    pub fn redact_payload(&self, payload: Payload) -> Payload {
        match payload {
            Payload::Raw(raw) => {
                if !self.finds_upstream_secret(raw.text()) {
                    return Payload::Raw(raw);
                }
                let mut value = raw.to_value();
                if self.redact_errors(&mut value) {
                    Payload::Value(value)
                } else {
                    Payload::Raw(raw)
                }
            }
            Payload::Value(mut value) => {
                if self.matcher.is_some() || runtime_matcher().is_some() {
                    self.redact_errors(&mut value);
                }
                Payload::Value(value)
            }
        }
    }

    /// [`Redactor::redact_payload`] for the chunks of one stream, in order, with
    /// what `clean` keeps between them. A chunk that is its memo's text but for a
    /// few bytes ([`RawJson::place`]), after that text was searched and held no
    /// upstream secret, is searched only where a secret could now lie: the changed
    /// bytes and a pattern's length less one around them (a secret outside those
    /// was in the text before). The usual text chunk changes a word; its whole text
    /// was searched every time (about 185 instructions a chunk, callgrind). Secrets
    /// obtained at run time can change between chunks: with any registered, every
    /// chunk is searched whole.
    ///
    /// In place: a stream's item is handed on in the slot it was polled into (moving
    /// the 112-byte item in and out of this call and its stage was about 24 of the
    /// stage's 150 instructions a chunk, callgrind).
    pub fn redact_stream_payload(&self, payload: &mut Payload, clean: &mut StreamClean) {
        let Payload::Raw(raw) = payload else {
            clean.0 = None;
            self.redact_in_place(payload);
            return;
        };
        let place = raw.place();
        let text = raw.text();
        let found = match (&self.upstream, place) {
            (Some(scanner), Some(place)) if REGISTERED.load(Ordering::Acquire) == 0 => {
                match &place.changed {
                    Some(changed) if clean.0 == Some((place.memo, place.seq - 1)) => {
                        let reach = scanner.longest.saturating_sub(1);
                        let from = changed.start.saturating_sub(reach);
                        let to = (changed.end + reach).min(text.len());
                        scanner.is_match(&text[from..to])
                    }
                    _ => scanner.is_match(text),
                }
            }
            _ => self.finds_upstream_secret(text),
        };
        if found {
            clean.0 = None;
            self.redact_in_place(payload);
            return;
        }
        clean.0 = place.map(|place| (place.memo, place.seq));
    }

    /// [`Redactor::redact_payload`] of the payload in `slot`.
    fn redact_in_place(&self, slot: &mut Payload) {
        let payload = std::mem::replace(slot, Payload::Value(Value::Null));
        *slot = self.redact_payload(payload);
    }

    /// Redact the error members of an answer or chunk; true when anything changed.
    fn redact_errors(&self, value: &mut Value) -> bool {
        let Value::Object(map) = value else {
            return false;
        };
        let mut changed = false;
        if let Some(error) = map.get_mut("error") {
            changed |= self.redact_strings(error);
        }
        if let Some(Value::Array(choices)) = map.get_mut("choices") {
            for choice in choices {
                if let Some(error) = choice.get_mut("error") {
                    changed |= self.redact_strings(error);
                }
            }
        }
        changed
    }

    /// Redact every string in a JSON value; true when anything changed.
    fn redact_strings(&self, value: &mut Value) -> bool {
        match value {
            Value::String(text) => match self.redact_str(text) {
                Cow::Owned(clean) => {
                    *text = clean;
                    true
                }
                Cow::Borrowed(_) => false,
            },
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, v| self.redact_strings(v) | changed),
            Value::Object(map) => map
                .values_mut()
                .fold(false, |changed, v| self.redact_strings(v) | changed),
            _ => false,
        }
    }
}

/// Provider-specific settings may hold credentials too (e.g. inline service-account
/// JSON); every string among them is treated as a potential secret.
fn collect_strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------
// Secrets known only at run time

/// The secrets registered by live [`RuntimeSecrets`], and one matcher for them all
/// (rebuilt on each change: at startup and when a token is obtained, not per
/// request).
struct Registry {
    slots: Mutex<HashMap<u64, Vec<String>>>,
    matcher: ArcSwapOption<Matcher>,
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| Registry {
    slots: Mutex::new(HashMap::new()),
    matcher: ArcSwapOption::empty(),
});

/// Whether any secrets are registered; checked before touching the registry, so
/// that processes without run-time secrets pay one atomic load.
static REGISTERED: AtomicU64 = AtomicU64::new(0);

fn runtime_matcher() -> Option<Arc<Matcher>> {
    if REGISTERED.load(Ordering::Acquire) == 0 {
        return None;
    }
    REGISTRY.matcher.load_full()
}

impl Registry {
    fn update(&self, change: impl FnOnce(&mut HashMap<u64, Vec<String>>)) {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut slots);
        let all: Vec<String> = slots.values().flatten().cloned().collect();
        let matcher = Matcher::new(all).map(Arc::new);
        REGISTERED.store(u64::from(matcher.is_some()), Ordering::Release);
        self.matcher.store(matcher);
    }
}

/// Secrets that are not in the config but must be redacted like those that are
/// (credential files, tokens obtained): held by their owner, redacted by every
/// [`Redactor`] while it lives, forgotten when it is dropped.
pub struct RuntimeSecrets {
    id: u64,
}

impl RuntimeSecrets {
    pub fn new(secrets: Vec<String>) -> RuntimeSecrets {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        REGISTRY.update(|slots| {
            slots.insert(id, secrets);
        });
        RuntimeSecrets { id }
    }

    /// Replace this owner's secrets.
    pub fn set(&self, secrets: Vec<String>) {
        REGISTRY.update(|slots| {
            slots.insert(self.id, secrets);
        });
    }

    /// `text` with every registered run-time secret replaced (for lines logged
    /// where no [`Redactor`] is at hand).
    pub fn redact(text: &str) -> Cow<'_, str> {
        match runtime_matcher() {
            Some(matcher) => matcher.redact(Cow::Borrowed(text)),
            None => Cow::Borrowed(text),
        }
    }
}

impl Drop for RuntimeSecrets {
    fn drop(&mut self) {
        REGISTRY.update(|slots| {
            slots.remove(&self.id);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use serde_json::json;

    #[test]
    fn the_metrics_token_and_key_check_credentials_are_secrets() {
        let path = std::path::Path::new("t.toml");
        let tree = crate::config::parse_text(
            r#"
[connections.mock]
api_type = "mock"
[metrics]
token = "metrics-token-4e5f"
[api_key_check]
class = "lm_proxy.api_key_check.CheckAPIKeyWithRequest"
url = "http://auth/check"
[api_key_check.headers]
Authorization = "Bearer {api_key}"
X-Service-Token = "service-token-9a8b"
"#,
            crate::config::Format::Toml,
            path,
        )
        .unwrap();
        let config = Config::from_value(tree, path).unwrap();
        let r = Redactor::from_config(&config);
        assert_eq!(
            r.redact_text("metrics-token-4e5f and service-token-9a8b, Bearer stays"),
            "*** and ***, Bearer stays"
        );
    }

    #[test]
    fn secrets_are_replaced_everywhere() {
        let r = Redactor::new([
            "sk-abcdef123".to_owned(),
            "key".to_owned(),
            "sk-abcdef123456".to_owned(),
        ]);
        assert_eq!(
            r.redact_text("bad key sk-abcdef123456 and sk-abcdef123"),
            "bad key *** and ***"
        );
        let err = r.redact(ApiError::upstream_failure("echo: sk-abcdef123"));
        assert_eq!(err.to_string(), "upstream failure: echo: ***");
        assert!(!format!("{r:?}").contains("abcdef"));
    }

    #[test]
    fn every_encoding_of_a_secret_is_found() {
        let secret = "1//0g-HIDDEN/tok+en \"x\"";
        let r = Redactor::new([secret.to_owned()]);
        let form: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        let json = serde_json::to_string(secret).unwrap();
        for text in [
            secret.to_owned(),
            format!("grant_type=refresh_token&refresh_token={form}&x=1"),
            format!("refresh_token={}", lower_hex(&form)),
            format!("uri?t={}", percent_encode(secret)),
            format!("{{\"echo\":{json}}}"),
            format!("{{\"echo\":{}}}", json.replace('/', "\\/")),
        ] {
            let clean = r.redact_text(&text);
            assert!(clean.contains(MASK), "{text} -> {clean}");
            assert!(!clean.contains("HIDDEN"), "{text} -> {clean}");
            assert!(r.finds_secret(text.as_bytes()), "{text}");
        }
        // A multi-line PEM is found in its JSON-escaped form.
        let pem = "-----BEGIN PRIVATE KEY-----\nMIIEabc\n-----END PRIVATE KEY-----\n";
        let r = Redactor::new([pem.to_owned()]);
        let echoed = json!({ "detail": pem }).to_string();
        assert_eq!(r.redact_text(&echoed), r#"{"detail":"***"}"#);
    }

    #[test]
    fn cut_text_never_ends_in_part_of_a_word() {
        assert_eq!(truncate_text("short", 10), "short");
        assert_eq!(truncate_text("key=sk-abc/def%2F0123 rest", 12), "key=...");
        assert_eq!(truncate_text("a b c", 4), "a b ...");
        assert_eq!(truncate_text("caf\u{e9}\u{e9}", 5), "...");
    }

    #[test]
    fn every_string_and_header_of_an_error_is_redacted() {
        let key = "sk-SECRET-123456";
        let r = Redactor::new([key.to_owned()]);
        let body = ErrorBody::new(StatusCode::TOO_MANY_REQUESTS, format!("m {key}"), key)
            .code(Some(format!("c-{key}")))
            .param(Some(key.into()))
            .header(
                http::header::RETRY_AFTER,
                HeaderValue::from_str(&format!("7 {key}")).unwrap(),
            )
            .header(
                http::header::WARNING,
                HeaderValue::from_bytes(format!("{key}\u{e9}").as_bytes()).unwrap(),
            );
        let err = r.redact(ApiError::UpstreamRejected(Box::new(body)));
        let object = err.error_object().to_string();
        assert!(!object.contains("SECRET"), "{object}");
        assert_eq!(err.error_object()["code"], "c-***");
        let ApiError::UpstreamRejected(body) = &err else {
            panic!()
        };
        assert_eq!(body.headers[0].1, "7 ***");
        assert!(body
            .headers
            .iter()
            .all(|(_, v)| !String::from_utf8_lossy(v.as_bytes()).contains("SECRET")));
    }

    #[test]
    fn errors_inside_answers_are_redacted_and_clean_text_stays_raw() {
        let key = "sk-SECRET-123456";
        let r = Redactor::new([key.to_owned()]);
        let chunk = |error: &str| {
            format!(
                r#"{{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{{"index":0,"delta":{{"content":""}},"finish_reason":"error"}}],"error":{{"message":"bad {error}","code":"{error}","metadata":{{"raw":"{error}"}}}}}}"#
            )
        };
        let raw = |text: String| {
            Payload::Raw(crate::payload::RawJson::chunk(bytes::Bytes::from(text)).unwrap())
        };
        // No secret: the same bytes go on.
        let clean = chunk("nothing");
        let out = r.redact_payload(raw(clean.clone()));
        assert!(matches!(out, Payload::Raw(_)));
        assert_eq!(out.into_json_bytes(), clean.as_bytes());
        // A secret in the error: every string of it redacted.
        let out = r.redact_payload(raw(chunk(key))).into_value();
        assert_eq!(out["error"]["code"], "***");
        assert_eq!(out["error"]["metadata"]["raw"], "***");
        assert!(!out.to_string().contains("SECRET"));
        // Trees too, and an error inside a choice.
        let tree = json!({"choices": [{"error": {"message": key}}], "error": {"type": key}});
        let out = r.redact_payload(Payload::Value(tree)).into_value();
        assert!(!out.to_string().contains("SECRET"), "{out}");
    }

    /// A stream's chunks searched only where they changed answer as chunks searched
    /// whole: a secret completed by a change at either end of it, written over a
    /// clean text, or still there from a chunk that held it, with one memo and
    /// with two memos' chunks taking turns.
    #[test]
    fn a_streams_chunks_searched_where_they_changed_answer_as_searched_whole() {
        use crate::json_scan::ScanMemo;
        let key = "sk-SECRET-123456";
        let r = Redactor::new([key.to_owned()]);
        let chunk = |message: &str| {
            format!(
                r#"{{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"error":{{"message":"{message}","code":"x"}}}}"#
            )
        };
        let mut pairs: Vec<(String, String)> = Vec::new();
        for at in 0..key.len() {
            // One byte of the key different, missing, or one more, in the text before.
            let mut edits = vec![
                format!("{}X{}", &key[..at], &key[at + 1..]),
                format!("{}{}", &key[..at], &key[at + 1..]),
                format!("{}X{}", &key[..at], &key[at..]),
            ];
            edits.push(format!("ab {} cd", edits[0]));
            for before in edits {
                let after = if before.starts_with("ab ") {
                    format!("ab {key} cd")
                } else {
                    key.to_owned()
                };
                pairs.push((before, after));
            }
        }
        // A text that held the key, then one that still does outside the change.
        pairs.push((format!("{key} a"), format!("{key} b")));
        pairs.push((format!("a {key}"), format!("a {key}")));
        let whole = |text: &str| {
            let raw = crate::payload::RawJson::chunk(bytes::Bytes::from(text.to_owned())).unwrap();
            r.redact_payload(Payload::Raw(raw)).into_json_bytes()
        };
        let streamed = |text: &str, memo: &mut ScanMemo, clean: &mut StreamClean| {
            let crate::payload::StreamChunk::Raw(raw) =
                crate::payload::RawJson::stream_chunk(text.to_owned().into(), memo).unwrap()
            else {
                panic!("{text} passes as written");
            };
            let mut payload = Payload::Raw(raw);
            r.redact_stream_payload(&mut payload, clean);
            payload.into_json_bytes()
        };
        for (before, after) in &pairs {
            let (before, after) = (chunk(before), chunk(after));
            // One memo.
            let (mut memo, mut clean) = (ScanMemo::default(), StreamClean::default());
            for text in [&before, &after, &after, &before] {
                assert_eq!(
                    streamed(text, &mut memo, &mut clean),
                    whole(text),
                    "{before} then {text}"
                );
            }
            assert!(!String::from_utf8_lossy(&whole(&after)).contains(key));
            // Two memos' chunks in turn through one stream's search: the first
            // memo's `before`, the second's clean text, the first's `after`.
            let (mut first, mut second) = (ScanMemo::default(), ScanMemo::default());
            let mut clean = StreamClean::default();
            let other = chunk("nothing here");
            streamed(&before, &mut first, &mut clean);
            streamed(&other, &mut second, &mut clean);
            assert_eq!(
                streamed(&after, &mut first, &mut clean),
                whole(&after),
                "{after}"
            );
        }
    }

    #[test]
    fn one_upstream_secret_is_searched_as_a_substring() {
        let r = Redactor::new(vec!["sk-upstream-SECRET-1".into()]);
        let scanner = r.upstream.as_ref().unwrap();
        assert!(matches!(scanner.groups[..], [ScanGroup::One(_)]));
        for text in [
            "sk-upstream-SECRET-1",
            "{\"error\":\"bad key sk-upstream-SECRET-1\"}",
            "xsk-upstream-SECRET-1",
        ] {
            assert!(r.finds_upstream_secret(text.as_bytes()), "{text}");
        }
        for text in [
            "",
            "sk-upstream-SECRET-",
            "sk-upstream-SECRET-2",
            "SK-UPSTREAM-SECRET-1",
        ] {
            assert!(!r.finds_upstream_secret(text.as_bytes()), "{text}");
        }
    }

    #[test]
    fn many_upstream_secrets_are_searched_in_groups() {
        let keys: Vec<String> = (0..150).map(|i| format!("sk-key-{i:04}-x")).collect();
        let r = Redactor::new(keys.clone());
        assert_eq!(r.upstream.as_ref().unwrap().groups.len(), 3);
        for key in [&keys[0], &keys[75], &keys[149]] {
            assert!(r.finds_upstream_secret(format!("[{key}]").as_bytes()));
        }
        assert!(!r.finds_upstream_secret(b"sk-key-9999-x"));
        // Client keys are redacted everywhere but not searched for in passed-on text.
        let r = Redactor::of(vec!["client-SECRET-1".into()], vec![]);
        assert!(!r.finds_upstream_secret(b"client-SECRET-1"));
        assert_eq!(r.redact_text("client-SECRET-1"), MASK);
    }

    #[test]
    fn runtime_secrets_are_redacted_while_registered() {
        let plain = Redactor::default();
        let token = "ya29.runtime-SECRET-token";
        let held = RuntimeSecrets::new(vec![token.to_owned()]);
        assert_eq!(plain.redact_text(&format!("t={token}")), "t=***");
        assert_eq!(RuntimeSecrets::redact(token), MASK);
        held.set(vec!["other-SECRET-value".into()]);
        assert_eq!(plain.redact_text(token), token);
        drop(held);
        assert_eq!(
            plain.redact_text("other-SECRET-value"),
            "other-SECRET-value"
        );
    }
}
