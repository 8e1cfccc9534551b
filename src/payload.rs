//! What the core sends the client for one answer or one streamed chunk: a JSON tree
//! built here (translated answers, error chunks, Python connections), or the JSON
//! text an OpenAI-compatible upstream wrote, passed on byte for byte.
//!
//! Why: parsing an upstream's answer into a `serde_json::Value` and serializing it
//! again was the largest part of lm-proxy's own work per request, and per event of a
//! stream (bench/README.md). An OpenAI-compatible answer that already has every field
//! the client needs goes out as it came; a light check ([`RawJson::completion`],
//! [`RawJson::chunk`]) reads it once without building a tree, to make sure it is a
//! JSON object of the right shape and to pick up its `usage` for metrics. Anything
//! that does not pass the check takes the tree path, which fills what is missing and
//! reports what is wrong, as before. The tree is built from the text only when
//! somebody needs it (a logger, the stream assembler).

use std::borrow::Cow;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use crate::error::ApiError;
use crate::json_scan::{
    scan_bytes_resuming, scan_object, scan_object_resuming, NotUtf8, ScanMemo, Shape, TextPlace,
    TokenCounts, TopLevel,
};
use crate::sse::{not_utf8, EventBytes, EventData};
use crate::streaming::ChunkStream;

/// One JSON object for the client (a `chat.completion` or a `chat.completion.chunk`).
#[derive(Debug, Clone)]
pub enum Payload {
    /// A tree built or normalized here.
    Value(Value),
    /// An upstream's own text, checked by [`RawJson`].
    Raw(RawJson),
}

/// A stream of `chat.completion.chunk` payloads, or a failure that ends it.
pub type PayloadStream = Pin<Box<dyn Stream<Item = Result<Payload, ApiError>> + Send>>;

/// Trees of a payload stream, for callers that read chunks as JSON values.
pub fn into_chunk_stream(payloads: PayloadStream) -> ChunkStream {
    Box::pin(payloads.map(|item| item.map(Payload::into_value)))
}

/// A stream of chunk trees as payloads.
pub fn from_chunk_stream(chunks: ChunkStream) -> PayloadStream {
    Box::pin(chunks.map(|item| item.map(Payload::Value)))
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Payload::Value(value)
    }
}

impl Payload {
    /// The token counts of the payload's `usage` object, if it carries one.
    pub fn usage(&self) -> Option<TokenCounts> {
        match self {
            Payload::Value(value) => value
                .get("usage")
                .filter(|u| u.is_object())
                .map(TokenCounts::of),
            Payload::Raw(raw) => raw.usage.as_deref().copied(),
        }
    }

    /// A stream's usage-only chunk: a `usage` object and no choices (`choices`
    /// empty or absent), what OpenAI sends last when `stream_options.include_usage`
    /// is set.
    pub fn is_usage_only(&self) -> bool {
        match self {
            Payload::Value(value) => {
                value.get("usage").is_some_and(Value::is_object)
                    && match value.get("choices") {
                        None | Some(Value::Null) => true,
                        Some(Value::Array(list)) => list.is_empty(),
                        Some(_) => false,
                    }
            }
            Payload::Raw(raw) => raw.usage_only,
        }
    }

    /// The payload without its `usage` member (`null` included), for a client that
    /// did not ask for usage; the rest of a raw payload's text is kept as written.
    pub fn without_usage(self) -> Payload {
        match self {
            Payload::Value(Value::Object(mut map)) => {
                map.shift_remove("usage");
                Payload::Value(Value::Object(map))
            }
            Payload::Raw(raw) => Payload::Raw(raw.without_usage()),
            other => other,
        }
    }

    /// Whether the payload has a top-level `usage` member, `null` included.
    pub fn has_usage_member(&self) -> bool {
        match self {
            Payload::Value(value) => value.get("usage").is_some(),
            Payload::Raw(raw) => raw.usage_member.is_some(),
        }
    }

    /// The payload as a tree (parsed from the text for raw payloads).
    pub fn to_value(&self) -> Cow<'_, Value> {
        match self {
            Payload::Value(value) => Cow::Borrowed(value),
            Payload::Raw(raw) => Cow::Owned(raw.to_value()),
        }
    }

    pub fn into_value(self) -> Value {
        match self {
            Payload::Value(value) => value,
            Payload::Raw(raw) => raw.to_value(),
        }
    }

    /// Append the payload's JSON text to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            // Serializing a `Value` into a Vec cannot fail.
            Payload::Value(value) => {
                serde_json::to_writer(out, value).expect("JSON values always serialize")
            }
            Payload::Raw(raw) => out.extend_from_slice(&raw.text),
        }
    }

    /// The payload's JSON text.
    pub fn into_json_bytes(self) -> Bytes {
        match self {
            Payload::Raw(raw) => raw.text,
            value => {
                let mut out = Vec::with_capacity(512);
                value.write_json(&mut out);
                Bytes::from(out)
            }
        }
    }
}

/// What [`RawJson::stream_chunk`] makes of a chunk's text.
#[derive(Debug)]
pub enum StreamChunk {
    /// It goes to the client as written.
    Raw(RawJson),
    /// UTF-8, to be read as JSON (and filled in, or its error reported).
    Other(EventData),
}

/// An upstream's JSON text that passed the check for being sent on unchanged.
#[derive(Debug, Clone)]
pub struct RawJson {
    text: Bytes,
    /// The token counts of its `usage` object (metrics count them). Boxed: most
    /// texts have none (a stream's chunks but its last), and a `RawJson` past 128
    /// bytes is moved by a call to `memcpy` each time a stream's item is handed on
    /// (about 300 instructions a chunk, callgrind, when `place` was added).
    usage: Option<Box<TokenCounts>>,
    /// A usage-only chunk ([`Payload::is_usage_only`]).
    usage_only: bool,
    /// Where its `usage` member lies in `text`, if it has one.
    usage_member: Option<(usize, usize)>,
    /// Some string in `text` may hold a backslash escape (`false` only when the
    /// check found none), so that a search of the raw text for a spelling is exact.
    may_hold_escapes: bool,
    /// For a stream's chunk checked with the stream's memo: which of the memo's
    /// texts it is, and what changed since the one before
    /// ([`RawJson::stream_chunk`]).
    place: Option<TextPlace>,
}

/// The check's findings about one text ([`crate::json_scan`]).
struct Probe(TopLevel);

impl Probe {
    fn of(text: &[u8]) -> Option<Probe> {
        // Text that goes to the client unchanged must be valid JSON throughout,
        // UTF-8 included.
        Probe::of_str(crate::json_scan::utf8(text)?)
    }

    /// [`Probe::of`] for text already known to be UTF-8.
    fn of_str(text: &str) -> Option<Probe> {
        scan_object(text).map(Probe)
    }

    /// `id`, `object`, `created` and `model` are all there (not null), so nothing
    /// needs filling in.
    fn has_identity(&self) -> bool {
        let top = &self.0;
        top.id && top.object && top.created && top.model
    }

    /// The findings kept with a payload that passed: its usage, whether it is a
    /// usage-only chunk, where its `usage` member lies.
    fn usage(self) -> Option<Found> {
        let usage_only = matches!(self.0.usage, Shape::Expected(_))
            && matches!(self.0.choices, Shape::Absent | Shape::Expected(true));
        let usage_member = self.0.usage_member;
        let usage = match self.0.usage {
            Shape::Absent => None,
            Shape::Expected(usage) => Some(usage),
            // `usage: 0` or similar: leave it to the tree path.
            Shape::Other => return None,
        };
        Some(Found {
            usage,
            usage_only,
            usage_member,
        })
    }
}

/// What [`Probe::usage`] keeps.
struct Found {
    usage: Option<TokenCounts>,
    usage_only: bool,
    usage_member: Option<(usize, usize)>,
}

impl Found {
    fn with_text(self, text: Bytes) -> RawJson {
        RawJson {
            text,
            usage: self.usage.map(Box::new),
            usage_only: self.usage_only,
            usage_member: self.usage_member,
            may_hold_escapes: true,
            place: None,
        }
    }
}

impl RawJson {
    /// An OpenAI-compatible `chat.completion` that can go to the client as written:
    /// a JSON object with `id`, `object`, `created`, `model` and a `choices` list.
    /// `Err` gives the text back for the tree path (which fills gaps and reports
    /// errors).
    pub fn completion(text: Bytes) -> Result<RawJson, Bytes> {
        let found = Probe::of(&text).and_then(|probe| {
            let choices_is_list = matches!(probe.0.choices, Shape::Expected(_));
            if !choices_is_list || !probe.has_identity() {
                return None;
            }
            probe.usage()
        });
        match found {
            Some(found) => Ok(found.with_text(text)),
            None => Err(text),
        }
    }

    /// An OpenAI-compatible `chat.completion.chunk` that can go to the client as
    /// written: a JSON object with `id`, `object`, `created` and `model`, and not an
    /// error event (an `error` member without `choices`). `Err` gives the text back.
    pub fn chunk(text: Bytes) -> Result<RawJson, Bytes> {
        match Self::chunk_usage(Probe::of(&text)) {
            Some(found) => Ok(found.with_text(text)),
            None => Err(text),
        }
    }

    /// [`RawJson::chunk`] for an SSE event's data, the chunks of one stream in order
    /// with the stream's `memo`: what a chunk repeats of the last one is not checked
    /// again, for UTF-8 ([`EventBytes`]: the SSE reader leaves that to this) or as
    /// JSON ([`scan_bytes_resuming`]: the same answer, a fraction of the work on a
    /// usual text chunk). A text that is UTF-8 but not a chunk that can pass as
    /// written comes back as [`StreamChunk::Other`]; one that is not UTF-8 is the
    /// stream's failure.
    pub fn stream_chunk(text: EventBytes, memo: &mut ScanMemo) -> Result<StreamChunk, ApiError> {
        let found = scan_bytes_resuming(text.as_bytes(), memo).map_err(|NotUtf8| not_utf8())?;
        Ok(match Self::chunk_usage(found.map(Probe)) {
            Some(found) => StreamChunk::Raw(RawJson {
                place: memo.last_change(),
                ..found.with_text(text.into_bytes())
            }),
            // SAFETY: `scan_bytes_resuming` answers `Ok` only for UTF-8.
            None => StreamChunk::Other(unsafe { text.checked_by_caller() }),
        })
    }

    /// Which text of its stream's memo this chunk is, and what changed since the
    /// one before ([`RawJson::stream_chunk`]; `None` for other texts).
    pub fn place(&self) -> Option<&TextPlace> {
        self.place.as_ref()
    }

    /// Any one JSON object an upstream wrote in the client's own API, for a door
    /// that passes such answers and events on as written (the Anthropic door with
    /// an Anthropic upstream); `usage` is what the caller read from it, in the
    /// metrics' terms. `Err` gives the text back when it is not one valid object.
    pub fn object(text: Bytes, usage: Option<TokenCounts>) -> Result<RawJson, Bytes> {
        match Probe::of(&text) {
            // Not a chat chunk: nothing in it is ever hidden from the client.
            Some(_) => Ok(RawJson {
                text,
                usage: usage.map(Box::new),
                usage_only: false,
                usage_member: None,
                may_hold_escapes: true,
                place: None,
            }),
            None => Err(text),
        }
    }

    /// [`RawJson::object`] whose usage is the token counts of its top-level `usage`
    /// object, read in the same single pass that checks the text (an embeddings or
    /// completions answer passed on as written: reading the usage apart scanned a
    /// 20 KB vector answer twice). `Err` gives the text back when it is not one
    /// valid object or has a member the probe reads twice.
    pub fn object_with_usage(text: Bytes) -> Result<RawJson, Bytes> {
        let (usage, escapes) = match Probe::of(&text) {
            Some(probe) => (
                match probe.0.usage {
                    Shape::Expected(usage) => Some(usage),
                    Shape::Absent | Shape::Other => None,
                },
                probe.0.escapes,
            ),
            None => return Err(text),
        };
        Ok(RawJson {
            text,
            usage: usage.map(Box::new),
            usage_only: false,
            usage_member: None,
            may_hold_escapes: escapes,
            place: None,
        })
    }

    /// JSON the gateway wrote itself: a translated stream's chunk (see
    /// `providers::chunk_text`) or a whole answer in a door's own API (a translated
    /// Responses API `response`). One JSON object by construction, so not checked
    /// again; a chunk has no `usage` member, and an answer's usage is counted by its
    /// door, not read from it.
    pub fn built(text: Bytes) -> RawJson {
        RawJson {
            text,
            usage: None,
            usage_only: false,
            usage_member: None,
            may_hold_escapes: true,
            place: None,
        }
    }

    /// A usage-only chunk the gateway wrote itself (a translated stream's last
    /// chunk, see `providers::chunk_text::ChunkWriter::usage_only`): its counts and
    /// where its `usage` member lies are known from the writing.
    pub fn built_usage_only(
        text: Bytes,
        usage: TokenCounts,
        usage_member: (usize, usize),
    ) -> RawJson {
        RawJson {
            text,
            usage: Some(Box::new(usage)),
            usage_only: true,
            usage_member: Some(usage_member),
            may_hold_escapes: true,
            place: None,
        }
    }

    /// [`RawJson::object`] for the events of one stream (SSE data, which the SSE
    /// reader has already checked to be UTF-8), in order, with the stream's `memo`
    /// (see [`RawJson::stream_chunk`]). `Err` gives the text back.
    pub fn stream_object(
        text: EventData,
        usage: Option<TokenCounts>,
        memo: &mut ScanMemo,
    ) -> Result<RawJson, EventData> {
        match scan_object_resuming(&text, memo) {
            Some(_) => Ok(RawJson {
                text: text.into_bytes(),
                usage: usage.map(Box::new),
                usage_only: false,
                usage_member: None,
                may_hold_escapes: true,
                place: None,
            }),
            None => Err(text),
        }
    }

    /// `Some(usage)` when the probed text is a chunk that can pass unchanged.
    fn chunk_usage(probe: Option<Probe>) -> Option<Found> {
        let probe = probe?;
        if !probe.has_identity() || (probe.0.error && probe.0.choices == Shape::Absent) {
            return None;
        }
        probe.usage()
    }

    /// The text with its `usage` member cut out (with the comma that joined it to
    /// its neighbour), the rest as written.
    fn without_usage(self) -> RawJson {
        if self.usage_member.is_none() {
            return self;
        }
        let mut out = Vec::with_capacity(self.text.len());
        self.write_without_usage(&mut out);
        RawJson {
            text: Bytes::from(out),
            usage: None,
            usage_only: false,
            usage_member: None,
            may_hold_escapes: self.may_hold_escapes,
            place: None,
        }
    }

    /// Append the text to `out` with its `usage` member cut out as
    /// [`RawJson::without_usage`] cuts it: the two parts written where they go, for a
    /// stream whose every chunk carries OpenAI's `"usage":null` that the client did
    /// not ask for (a new text made for each chunk first was about 190 instructions
    /// and an allocation a chunk, callgrind, stream-20-openai).
    pub fn write_without_usage(&self, out: &mut Vec<u8>) {
        match self.usage_cut() {
            Some((cut_from, cut_to)) => {
                out.extend_from_slice(&self.text[..cut_from]);
                out.extend_from_slice(&self.text[cut_to..]);
            }
            None => out.extend_from_slice(&self.text),
        }
    }

    /// The bytes to cut to take the `usage` member out: the member with the comma
    /// that joined it to its neighbour. `None` when there is no member.
    fn usage_cut(&self) -> Option<(usize, usize)> {
        let (start, end) = self.usage_member?;
        let text = &self.text;
        let is_space = |b: &u8| b.is_ascii_whitespace();
        // The text is a valid object, so the member is preceded by `{` or `,`
        // (after whitespace) and followed by `,` or `}`.
        let before = text[..start].iter().rposition(|b| !is_space(b));
        let (cut_from, cut_to) = match before {
            Some(at) if text[at] == b',' => (at, end),
            _ => {
                let after = text[end..]
                    .iter()
                    .position(|b| !is_space(b))
                    .map_or(end, |i| end + i);
                if text.get(after) == Some(&b',') {
                    (start, after + 1)
                } else {
                    (start, end)
                }
            }
        };
        Some((cut_from, cut_to))
    }

    /// The JSON text as the upstream wrote it.
    pub fn text(&self) -> &[u8] {
        &self.text
    }

    /// The same text, shared (to keep it without a copy).
    pub fn bytes(&self) -> &Bytes {
        &self.text
    }

    /// Whether a string of the text may hold a backslash escape: `false` only when
    /// the check found none ([`RawJson::object_with_usage`]), so that a search of
    /// the text for a key as spelled cannot miss one spelled with escapes.
    pub fn may_hold_escapes(&self) -> bool {
        self.may_hold_escapes
    }

    /// The text as a tree.
    pub fn to_value(&self) -> Value {
        // The text was checked to be a JSON object when this was made.
        serde_json::from_slice(&self.text).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw_completion(text: &str) -> Option<RawJson> {
        let result = RawJson::completion(Bytes::from(text.to_owned()));
        if let Err(back) = &result {
            assert_eq!(back, text.as_bytes(), "the text comes back whole");
        }
        result.ok()
    }

    /// Both entry points (bytes, and SSE data) decide alike and give rejected text
    /// back whole.
    fn raw_chunk(text: &str) -> Option<RawJson> {
        let streamed = RawJson::stream_chunk(text.to_owned().into(), &mut ScanMemo::default());
        let passes = match streamed.expect("UTF-8") {
            StreamChunk::Raw(raw) => {
                assert_eq!(raw.text, text.as_bytes());
                true
            }
            StreamChunk::Other(back) => {
                assert_eq!(back.as_str(), text, "the text comes back whole");
                false
            }
        };
        let from_bytes = RawJson::chunk(Bytes::from(text.to_owned()));
        assert_eq!(passes, from_bytes.is_ok(), "{text}");
        from_bytes.ok()
    }

    #[test]
    fn complete_answers_pass_through_unchanged() {
        let text = r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3},"x-extra":[1.5e300]}"#;
        let raw = raw_completion(text).expect("a complete answer passes");
        let payload = Payload::Raw(raw);
        let counts = payload.usage().unwrap();
        assert_eq!((counts.prompt, counts.completion), (Some(1), Some(2)));
        assert_eq!(payload.to_value()["choices"][0]["message"]["content"], "hi");
        assert_eq!(payload.into_json_bytes(), text.as_bytes());
    }

    #[test]
    fn answers_that_need_filling_or_are_odd_take_the_tree_path() {
        for text in [
            r#"{"object":"chat.completion","created":1,"model":"m","choices":[]}"#,
            r#"{"id":null,"object":"chat.completion","created":1,"model":"m","choices":[]}"#,
            r#"{"id":"c","object":"chat.completion","created":1,"model":"m"}"#,
            r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":{}}"#,
            r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[],"usage":7}"#,
            r#"{"id":"c","id":"d","object":"chat.completion","created":1,"model":"m","choices":[]}"#,
            r#"["c","chat.completion",1,"m",[]]"#,
            r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[]} trailing"#,
            "not json",
            "",
        ] {
            assert!(raw_completion(text).is_none(), "{text}");
        }
        // Invalid UTF-8 in a member the check would otherwise skip.
        let mut bad =
            br#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[],"x":""#
                .to_vec();
        bad.extend_from_slice(b"\xff\"}");
        assert!(RawJson::completion(Bytes::from(bad.clone())).is_err());
        assert!(RawJson::chunk(Bytes::from(bad)).is_err());
    }

    /// A stream's item is moved several times on its way to the client; up to 128
    /// bytes each move is a few vector moves, past that a call to `memcpy`
    /// (callgrind: about 300 instructions a chunk more at 168 bytes).
    #[test]
    fn a_payload_is_moved_without_a_call() {
        assert!(std::mem::size_of::<Payload>() <= 128);
        assert!(std::mem::size_of::<Result<Payload, crate::error::ApiError>>() <= 128);
    }

    #[test]
    fn chunks_pass_unless_they_need_filling_or_report_an_error() {
        let text = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"a"}}]}"#;
        assert!(raw_chunk(text).unwrap().usage.is_none());
        let usage = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"total_tokens":4}}"#;
        assert_eq!(
            raw_chunk(usage).unwrap().usage.as_deref(),
            Some(&TokenCounts::default())
        );
        assert!(raw_chunk(r#"{"choices":[]}"#).is_none());
        assert!(raw_chunk(
            r#"{"id":"c","object":"o","created":1,"model":"m","error":{"message":"x"}}"#
        )
        .is_none());
        // An error member next to choices is part of a normal chunk, as before.
        assert!(raw_chunk(
            r#"{"id":"c","object":"o","created":1,"model":"m","choices":[],"error":{"message":"x"}}"#
        )
        .is_some());
        // `choices: null` is no choices: with an error, an error event.
        assert!(raw_chunk(
            r#"{"id":"c","object":"o","created":1,"model":"m","choices":null,"error":{"message":"x"}}"#
        )
        .is_none());
        // `usage: null` is no usage; unknown members of any shape are skipped.
        let odd = r#"{"id":"c","object":"o","created":1,"model":"m","usage":null,"x":{"y":[1,{"z":"\u00e9\n"}],"w":-1.5e3},"choices":[{"delta":{}}]}"#;
        assert_eq!(raw_chunk(odd).unwrap().usage, None);
        // Text that is not valid JSON anywhere, even in a skipped member, is not passed.
        for bad in [
            r#"{"id":"c","object":"o","created":1,"model":"m","choices":[],"x":"\q"}"#,
            "{\"id\":\"c\",\"object\":\"o\",\"created\":1,\"model\":\"m\",\"choices\":[],\"x\":\"a\u{1}b\"}",
            r#"{"id":"c","object":"o","created":1,"model":"m","choices":[1,]}"#,
            r#"{"id":"c","object":"o","created":1,"model":"m","choices":[],"model":"n"}"#,
        ] {
            assert!(raw_chunk(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn usage_only_chunks_are_recognised_and_usage_members_cut_out() {
        let usage_only = r#"{"id":"c","object":"o","created":1,"model":"m","choices":[ ],"usage":{"prompt_tokens":2}}"#;
        let payload = Payload::Raw(raw_chunk(usage_only).unwrap());
        assert!(payload.is_usage_only());
        let tree = Payload::Value(serde_json::from_str(usage_only).unwrap());
        assert!(tree.is_usage_only());
        for text in [
            r#"{"id":"c","object":"o","created":1,"model":"m","choices":[{"delta":{}}],"usage":{"prompt_tokens":2}}"#,
            r#"{"id":"c","object":"o","created":1,"model":"m","choices":[],"usage":null}"#,
            r#"{"id":"c","object":"o","created":1,"model":"m","choices":[]}"#,
        ] {
            assert!(
                !Payload::Raw(raw_chunk(text).unwrap()).is_usage_only(),
                "{text}"
            );
            let tree = Payload::Value(serde_json::from_str(text).unwrap());
            assert!(!tree.is_usage_only(), "{text}");
        }
        // Cut wherever the member stands; the rest stays as written.
        for (text, expected) in [
            (
                r#"{"id":"c","object":"o","created":1,"model":"m","choices":[],"usage":null}"#,
                r#"{"id":"c","object":"o","created":1,"model":"m","choices":[]}"#,
            ),
            (
                r#"{ "usage" : null , "id":"c","object":"o","created":1,"model":"m","choices":[]}"#,
                r#"{  "id":"c","object":"o","created":1,"model":"m","choices":[]}"#,
            ),
            (
                r#"{"id":"c","object":"o","usage":{"prompt_tokens":1},"created":1.0e3,"model":"m","choices":[]}"#,
                r#"{"id":"c","object":"o","created":1.0e3,"model":"m","choices":[]}"#,
            ),
        ] {
            let raw = raw_chunk(text).unwrap();
            // Written into a stream's frame with the member left out: the same text.
            let mut written = b"data: ".to_vec();
            raw.write_without_usage(&mut written);
            assert_eq!(&written[6..], expected.as_bytes());
            let payload = Payload::Raw(raw);
            assert!(payload.has_usage_member());
            let cut = payload.without_usage();
            assert!(!cut.has_usage_member());
            assert_eq!(cut.into_json_bytes(), expected.as_bytes());
        }
        let only = r#"{"usage":null}"#;
        let raw = RawJson {
            text: Bytes::from_static(only.as_bytes()),
            usage: None,
            usage_only: false,
            usage_member: Some((1, 13)),
            may_hold_escapes: true,
            place: None,
        };
        let mut written = Vec::new();
        raw.write_without_usage(&mut written);
        assert_eq!(written, b"{}");
        assert_eq!(&raw.without_usage().text[..], b"{}");
        let tree = Payload::Value(json!({"b": 1, "usage": null, "a": 2})).without_usage();
        assert_eq!(tree.into_json_bytes(), r#"{"b":1,"a":2}"#.as_bytes());
    }

    #[test]
    fn objects_with_usage_are_checked_and_counted_in_one_pass() {
        let counts = |text: &str| {
            let raw = RawJson::object_with_usage(Bytes::from(text.to_owned())).expect(text);
            assert_eq!(raw.text, text.as_bytes(), "passed on as written");
            raw.usage.map(|u| (u.prompt, u.completion))
        };
        let embeddings = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-2e-3]}],"model":"m","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        assert_eq!(counts(embeddings), Some((Some(8), None)));
        assert_eq!(counts(r#"{"data":[],"usage":null}"#), None);
        assert_eq!(counts(r#"{"data":[],"usage":5}"#), None);
        assert_eq!(counts(r#"{"data":[]}"#), None);
        for bad in [
            r#"{"data":[0.1,]}"#,
            r#"[{"usage":{}}]"#,
            r#"{"usage":{},"usage":{}}"#,
            "",
        ] {
            let back = RawJson::object_with_usage(Bytes::from(bad)).expect_err(bad);
            assert_eq!(back, bad.as_bytes(), "the text comes back whole");
        }
    }

    #[test]
    fn trees_serialize_as_before() {
        let payload = Payload::from(json!({"b": 1, "a": [true, null]}));
        assert_eq!(payload.usage(), None);
        assert_eq!(
            payload.into_json_bytes(),
            r#"{"b":1,"a":[true,null]}"#.as_bytes()
        );
    }
}
