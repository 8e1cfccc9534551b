//! What the doors' tree-free readers share (`raw_chat`, `messages::raw`,
//! `responses::raw`): a request body checked by one walk, kept as the client's
//! bytes, that goes upstream as written with only `model` replaced, and the walk of
//! its top-level members.
//!
//! A reader answers only for a body its door's validator surely accepts; anything
//! it does not check the way the validator does makes it answer `None`, and the
//! door takes the tree path, which gives every error its answer.

use std::ops::Range;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::json_scan::{first_time, first_value, has_escape, string_value, Walk};
use crate::recent::Recent;

/// A request body checked without a tree.
#[derive(Debug, Clone)]
pub struct RawBody {
    /// The client's body: a JSON object, UTF-8, checked.
    body: Bytes,
    /// The `model` value in `body`, quotes included.
    model_span: Range<usize>,
    /// The requested model (its escapes decoded).
    pub model: String,
    /// `stream` when it was given as `true` or `false`.
    pub stream: Option<bool>,
    /// The body asks for a stream's usage itself (`stream_options.include_usage:
    /// true`), so none is to be added and the client gets the usage chunk.
    pub include_usage: bool,
}

impl RawBody {
    /// A body the gateway wrote for the upstream from the client's (a door's
    /// translation, `messages::chat_body`), `model` written at `model_span`; a
    /// written stream asks for its usage ([`ChatWriter::finish`]).
    pub fn written(
        body: Bytes,
        model_span: Range<usize>,
        model: String,
        stream: Option<bool>,
    ) -> RawBody {
        RawBody {
            body,
            model_span,
            model,
            stream,
            include_usage: stream == Some(true),
        }
    }

    /// What the rest of the gateway reads of the request (routing, the request
    /// line, the metrics, the pass-through's `stream`).
    pub fn summary(&self) -> Map<String, Value> {
        summary(&self.model, self.stream)
    }

    /// The body to send upstream: the client's bytes, with `model` written as
    /// `model` when routing renamed it (the bytes `messages::with_model` gives,
    /// without a second walk to find the member), and
    /// `stream_options.include_usage: true` added as the last member when
    /// `add_usage` and the body does not ask for the usage already (only the chat
    /// door asks, and its reader let through no other `stream_options`, so there is
    /// none to extend).
    pub fn upstream_body(&self, model: &str, add_usage: bool) -> Bytes {
        let add_usage = add_usage && !self.include_usage;
        if model == self.model && !add_usage {
            return self.body.clone();
        }
        const USAGE: &[u8] = br#","stream_options":{"include_usage":true}"#;
        let mut out = Vec::with_capacity(self.body.len() + model.len() + USAGE.len());
        out.extend_from_slice(&self.body[..self.model_span.start]);
        crate::json_scan::write_json_str(&mut out, model);
        out.extend_from_slice(&self.body[self.model_span.end..]);
        if add_usage {
            // The object's closing brace: the last `}` (only whitespace follows it),
            // after at least `model` and `messages`.
            let close = out
                .iter()
                .rposition(|&b| b == b'}')
                .expect("a checked object ends with a brace");
            out.splice(close..close, USAGE.iter().copied());
        }
        Bytes::from(out)
    }

    /// The client's body (a JSON object, checked), for a provider that writes its
    /// own request from it (`providers::anthropic::raw_request`).
    pub fn text(&self) -> &str {
        // Checked as UTF-8 by the walk; a second check rather than an unchecked view.
        crate::json_scan::utf8(&self.body).unwrap_or_default()
    }

    /// The request as the tree path has it for a provider: every member but
    /// `model` (which the call carries, routed), in the client's order.
    pub fn params(&self) -> Result<Map<String, Value>, crate::error::ApiError> {
        let mut params: Map<String, Value> = serde_json::from_slice(&self.body).map_err(|e| {
            crate::error::ApiError::invalid_request(format!(
                "the request body is not a JSON object: {e}"
            ))
        })?;
        params.shift_remove("model");
        Ok(params)
    }
}

/// The request members a tree-free body shows the rest of the gateway: `model`,
/// and `stream` when it was given.
pub fn summary(model: &str, stream: Option<bool>) -> Map<String, Value> {
    let mut summary = Map::with_capacity(2);
    summary.insert("model".into(), model.into());
    if let Some(stream) = stream {
        summary.insert("stream".into(), stream.into());
    }
    summary
}

/// Members a body may have at most this many of; more, and the tree path takes it
/// (the duplicate check below compares each key with the ones before it).
const MAX_MEMBERS: usize = 64;

/// Walks the JSON object in `body`: `model` must be a string that `model_ok`
/// accepts (its escapes decoded), every other member goes to `member`, which checks
/// it or answers `None`. A key with an escape (it might spell a member that is
/// checked) or given twice (the tree keeps the last, the walk would have judged the
/// first) is refused too. `stream` is the door's own (`member`'s) to read: the
/// doors differ on `null`.
pub fn walk_body<'a>(
    body: &'a Bytes,
    model_ok: impl Fn(&str) -> bool,
    mut member: impl FnMut(&mut Walk<'a>, &'a str) -> Option<()>,
) -> Option<RawBody> {
    let text = crate::json_scan::utf8(body)?;
    let mut walk = Walk::new(text);
    let mut keys: Vec<&str> = Vec::with_capacity(8);
    let mut model = None;
    walk.object(|walk, key| {
        if has_escape(key) || keys.len() == MAX_MEMBERS || keys.contains(&key) {
            return None;
        }
        keys.push(key);
        if key != "model" {
            return member(walk, key);
        }
        let start = walk.at();
        if !walk.at_string() {
            return None;
        }
        let written = walk.skip()?;
        let name = string_value(written)?;
        model_ok(&name).then_some(())?;
        model = Some((start..start + written.len(), name.into_owned()));
        Some(())
    })?;
    walk.done()?;
    let (model_span, model) = model?;
    Some(RawBody {
        body: body.clone(),
        model_span,
        model,
        stream: None,
        include_usage: false,
    })
}

/// The Messages and Responses validators' rule for `model`: not blank.
pub fn not_blank(model: &str) -> bool {
    !model.trim().is_empty()
}

/// A string, checked but not decoded (a prompt can be long).
pub fn string(walk: &mut Walk<'_>) -> Option<()> {
    walk.at_string().then_some(())?;
    walk.skip().map(drop)
}

/// An object, checked as JSON and not read.
pub fn object(walk: &mut Walk<'_>) -> Option<()> {
    walk.at_object().then_some(())?;
    walk.skip().map(drop)
}

/// A number (`Value::is_number`), checked and not read.
pub fn number(walk: &mut Walk<'_>) -> Option<()> {
    number_text(walk).map(drop)
}

/// A number (`Value::is_number`), checked: its text as written.
pub fn number_text<'a>(walk: &mut Walk<'a>) -> Option<&'a str> {
    let value = walk.skip()?;
    value
        .starts_with(|c: char| c == '-' || c.is_ascii_digit())
        .then_some(value)
}

/// An object with a string `type` (given once), whatever else it holds: a content
/// block, a `tool_choice`, a `response_format`.
pub fn typed_object(walk: &mut Walk<'_>) -> Option<()> {
    let mut kind = false;
    walk.object(|walk, key| match key {
        "type" => {
            first_time(&mut kind)?;
            string(walk)
        }
        _ if has_escape(key) => None,
        _ => walk.skip().map(drop),
    })?;
    kind.then_some(())
}

/// A list whose items `each` checks: whether it had any.
pub fn non_empty_list<'a>(
    walk: &mut Walk<'a>,
    mut each: impl FnMut(&mut Walk<'a>) -> Option<()>,
) -> Option<bool> {
    let mut count = 0usize;
    walk.array(|walk| {
        count += 1;
        each(walk)
    })?;
    Some(count > 0)
}

/// A list of objects.
pub fn objects(walk: &mut Walk<'_>) -> Option<()> {
    walk.array(object)
}

/// A list of strings.
pub fn strings(walk: &mut Walk<'_>) -> Option<()> {
    walk.array(string)
}

/// A walk of `text` (a value a walk checked and skipped) by `read`, which must take
/// all of it.
pub fn rewalk<'a>(text: &'a str, read: impl FnOnce(&mut Walk<'a>) -> Option<()>) -> Option<()> {
    let mut walk = Walk::new(text);
    read(&mut walk)?;
    walk.done()
}

/// What a thread's `recent` keeps for a list: its place in the thread-local.
pub type KeptLists<V> = &'static std::thread::LocalKey<std::cell::RefCell<Recent<V>>>;

/// What `make` makes of the list at the walk (and its weight in bytes), or what it
/// made of the same bytes before on this thread: an agent sends the same tools
/// with every turn, so a list kept in `recent` is found by `memcmp` where the walk
/// stands and stepped over, neither walked nor checked again (the same bytes pass
/// the same checks). Only whole lists are kept (they end where their brackets
/// close, so no other kept list is a prefix too), and only what `make` accepts.
pub fn kept<'a, V>(
    walk: &mut Walk<'a>,
    recent: KeptLists<V>,
    make: impl FnOnce(&mut Walk<'a>) -> Option<(V, usize)>,
) -> Option<std::rc::Rc<V>> {
    let kept = recent.with(|recent| recent.borrow_mut().get_prefix(walk.rest().as_bytes()));
    if let Some((length, value)) = kept {
        walk.skip_known(length)?;
        return Some(value);
    }
    walk.at_array().then_some(())?;
    let start = walk.at();
    let (value, weight) = make(walk)?;
    let key = walk.text_since(start).as_bytes();
    Some(recent.with(|recent| recent.borrow_mut().insert(key, value, weight)))
}

/// The list at the walk, checked by `check` unless this thread passed the same
/// bytes before (see [`kept`]: a third of reading an agent's 16 KB request;
/// bench/README.md, session 34).
pub fn kept_check<'a>(
    walk: &mut Walk<'a>,
    recent: KeptLists<()>,
    check: impl FnOnce(&mut Walk<'a>) -> Option<()>,
) -> Option<()> {
    kept(walk, recent, |walk| check(walk).map(|()| ((), 0))).map(drop)
}

/// A chat-completions request that a door writes from the client's bytes as it
/// walks them (`messages::chat_body`, `responses::chat_body`): the messages and the
/// other members, each part written as it is read.
pub struct ChatWriter {
    /// The chat messages, each written after a comma.
    pub messages: Vec<u8>,
    /// The members after `messages`, `,"key":value` each, in the order written.
    params: Vec<u8>,
    /// Lists kept per thread ([`ChatWriter::kept_list`]) and where in `params` each
    /// goes: copied once, into the request, rather than into `params` and then
    /// with it (an agent's tools are 12 KB; bench/README.md, session 36).
    kept: Vec<(usize, std::rc::Rc<Vec<u8>>)>,
}

impl ChatWriter {
    /// A writer for a request of about `size` bytes: with room for all of it from
    /// the start, neither part is copied again as it grows.
    pub fn new(size: usize) -> ChatWriter {
        ChatWriter {
            messages: Vec::with_capacity(size),
            params: Vec::with_capacity(size),
            kept: Vec::new(),
        }
    }

    /// `,"key":value` with the value as written.
    pub fn param(&mut self, key: &str, value: &str) {
        self.params.extend_from_slice(b",\"");
        self.params.extend_from_slice(key.as_bytes());
        self.params.extend_from_slice(b"\":");
        self.params.extend_from_slice(value.as_bytes());
    }

    /// `,"key":[…]` of what `each` writes for each item of the list at the walk;
    /// nothing for an empty list (as the translations leave out an empty `tools`).
    pub fn list<'a>(
        &mut self,
        key: &str,
        walk: &mut Walk<'a>,
        mut each: impl FnMut(&mut Walk<'a>, &mut Vec<u8>) -> Option<()>,
    ) -> Option<()> {
        let mark = self.params.len();
        self.param(key, "[");
        let params = &mut self.params;
        let mut count = 0;
        walk.array(|walk| {
            if count > 0 {
                params.push(b',');
            }
            count += 1;
            each(walk, params)
        })?;
        if count == 0 {
            self.params.truncate(mark);
        } else {
            self.params.push(b']');
        }
        Some(())
    }

    /// [`ChatWriter::list`] for a list whose translation depends on its bytes
    /// alone: a list this thread translated before is copied as translated (see
    /// [`kept`]). Lists the translation refuses are not kept.
    pub fn kept_list<'a>(
        &mut self,
        key: &str,
        walk: &mut Walk<'a>,
        recent: KeptLists<Vec<u8>>,
        each: impl FnMut(&mut Walk<'a>, &mut Vec<u8>) -> Option<()>,
    ) -> Option<()> {
        let written = kept(walk, recent, |walk| {
            let mark = self.params.len();
            self.list(key, walk, each)?;
            let written = self.params.split_off(mark);
            let weight = written.len();
            Some((written, weight))
        })?;
        self.kept.push((self.params.len(), written));
        Some(())
    }

    /// The request for `model` (the client's, spliced later by
    /// [`RawBody::upstream_body`] when routing renamed it): a system message of
    /// `system`'s texts (written between quotes as they are, `separator` between
    /// them) first when there is one, then the messages and the other members, and
    /// for a stream `stream_options.include_usage` (the door reports the usage that
    /// the last chunk brings).
    pub fn finish(
        self,
        model: String,
        system: Option<(&[&str], &[u8])>,
        stream: Option<bool>,
    ) -> RawBody {
        let system_len = system.map_or(0, |(texts, separator)| {
            texts
                .iter()
                .map(|t| t.len() + separator.len())
                .sum::<usize>()
                + 32
        });
        let kept_len: usize = self.kept.iter().map(|(_, list)| list.len()).sum();
        let mut out = Vec::with_capacity(
            self.messages.len() + self.params.len() + kept_len + model.len() + system_len + 96,
        );
        out.extend_from_slice(b"{\"model\":");
        let model_start = out.len();
        crate::json_scan::write_json_str(&mut out, &model);
        let model_span = model_start..out.len();
        out.extend_from_slice(b",\"messages\":[");
        let mut messages = &self.messages[..];
        if let Some((texts, separator)) = system {
            out.extend_from_slice(b"{\"role\":\"system\",\"content\":\"");
            join(&mut out, texts, separator);
            out.extend_from_slice(b"\"}");
        } else if let Some(rest) = messages.strip_prefix(b",") {
            // Each message was written after a comma: the first needs none.
            messages = rest;
        }
        out.extend_from_slice(messages);
        out.push(b']');
        let mut written = 0;
        for (at, list) in &self.kept {
            out.extend_from_slice(&self.params[written..*at]);
            out.extend_from_slice(list);
            written = *at;
        }
        out.extend_from_slice(&self.params[written..]);
        if stream == Some(true) {
            out.extend_from_slice(br#","stream_options":{"include_usage":true}"#);
        }
        out.push(b'}');
        RawBody::written(Bytes::from(out), model_span, model, stream)
    }
}

/// The members of the object at the walk that are named in `names`, each as
/// written (checked as JSON), `None` for those it does not have; the others are
/// skipped. A name given twice (the tree keeps the last, a walk would read the
/// first), or a key with an escape (it might spell one of `names`), refuses the
/// object (`None`).
pub fn named_members<'a, const N: usize>(
    walk: &mut Walk<'a>,
    names: [&str; N],
) -> Option<[Option<&'a str>; N]> {
    let mut values = [None; N];
    walk.object(
        |walk, key| match names.iter().position(|name| *name == key) {
            Some(i) => first_value(&mut values[i], || walk.skip()),
            None if has_escape(key) => None,
            None => walk.skip().map(drop),
        },
    )?;
    Some(values)
}

/// [`named_members`] of the object in `text` (a value a walk checked and skipped).
pub fn named_members_of<'a, const N: usize>(
    text: &'a str,
    names: [&str; N],
) -> Option<[Option<&'a str>; N]> {
    let mut walk = Walk::new(text);
    let values = named_members(&mut walk, names)?;
    walk.done()?;
    Some(values)
}

/// What is between the quotes of a string value as written (escapes kept: an
/// escape stands for at least one character, so it is empty only when the string
/// is); `None` for a value that is not a string.
pub fn inner(value: &str) -> Option<&str> {
    value.strip_prefix('"')?.strip_suffix('"')
}

/// `parts` (string contents as written) one after the other, `separator` between.
pub fn join(out: &mut Vec<u8>, parts: &[&str], separator: &[u8]) {
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(separator);
        }
        out.extend_from_slice(part.as_bytes());
    }
}

/// A differential-test helper: the JSON a written body stands for, as serde writes
/// it (members in order); a body nested deeper than serde reads (a schema at the
/// reader's limit is a level deeper in a function tool, on the tree path too) as
/// it is.
#[cfg(test)]
pub fn normal_json(body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => value.to_string(),
        Err(e) if e.to_string().starts_with("recursion limit") => {
            String::from_utf8(body.to_vec()).unwrap()
        }
        Err(e) => panic!("a written body is JSON: {e}"),
    }
}

/// The differential test of a tree-free reader: over every sample, its truncations
/// and its one-byte edits, what `read` accepts `tree` accepts with the same model
/// and `stream`; and `read` takes most of what `tree` accepts.
#[cfg(test)]
pub fn assert_reader_agrees_with_tree(
    samples: &[&str],
    read: impl Fn(&str) -> Option<(String, Option<bool>)>,
    tree: impl Fn(&str) -> Option<(String, Option<bool>)>,
) {
    let texts = crate::json_scan::cut_and_edited(samples, b"\"\\{}[],:0a-e. \x01");
    let (mut accepted, mut trees) = (0, 0);
    for text in &texts {
        let verdict = tree(text);
        trees += usize::from(verdict.is_some());
        let Some(raw) = read(text) else {
            continue;
        };
        accepted += 1;
        assert_eq!(
            Some(raw),
            verdict,
            "the reader accepted what the tree path judges otherwise: {text}"
        );
    }
    assert!(accepted * 2 > trees, "{accepted} of {trees}");
}

/// The samples of a reader's tests: the first `read` of them are read, the others
/// are left to the tree.
#[cfg(test)]
pub fn assert_samples_split(samples: &[&str], read: usize, reads: impl Fn(&str) -> bool) {
    for text in &samples[..read] {
        assert!(reads(text), "not read: {text}");
        // Again, with what the thread kept of it (`kept_check`).
        assert!(reads(text), "not read the second time: {text}");
    }
    for text in &samples[read..] {
        assert!(!reads(text), "read: {text}");
    }
}

/// A differential-test helper: the verdict a door's tree path gives a body (its
/// validator's, with the model and `stream` it would read) next to the reader's.
#[cfg(test)]
pub fn tree_verdict(
    text: &str,
    validate: impl Fn(&Map<String, Value>) -> bool,
) -> Option<(String, Option<bool>)> {
    let Ok(Value::Object(request)) = serde_json::from_str::<Value>(text) else {
        return None;
    };
    validate(&request).then_some(())?;
    Some((
        request["model"].as_str()?.to_owned(),
        request.get("stream").and_then(Value::as_bool),
    ))
}
