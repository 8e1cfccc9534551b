//! Streams on the Responses door: canonical chunks → Responses events (translated
//! connections), and Responses events → the client's SSE body (every connection).
//!
//! The grammar the SDKs parse (`openai.lib.streaming.responses` rebuilds the
//! response from it by `output_index` and `content_index`): `response.created`,
//! `response.in_progress`; per output item `response.output_item.added`, then for a
//! message `response.content_part.added`, `response.output_text.delta`s,
//! `response.output_text.done`, `response.content_part.done`; for a function call
//! `response.function_call_arguments.delta`s and `.done`; for reasoning
//! `response.reasoning_summary_part.added`, `response.reasoning_summary_text.delta`s,
//! `.done`, `response.reasoning_summary_part.done`; then
//! `response.output_item.done`; last `response.completed` (or
//! `response.incomplete` for a length stop) with the whole response and its usage,
//! or `response.failed`. Every event has its `sequence_number`.
//!
//! Translation goes chunk by chunk: each chunk's pieces go out as soon as it
//! arrives. The `.done` events and the final response repeat the whole text, so the
//! text of the answer is kept, up to `max_response_body_mb` (past it the stream
//! fails).

use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{json, Value};

use super::answer;
use crate::error::ApiError;
use crate::json_scan::{self, first_time, member_str};
use crate::payload::{Payload, PayloadStream};
use crate::streaming::StreamSummary;

/// What the translation reads of a chat chunk, deserialized straight from its text
/// (strings borrowed where they have no escapes): a tree of the whole chunk costs
/// several times more, most of it hashing its keys.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
pub struct Chunk<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<ChoiceDelta<'a>>>,
    #[serde(default)]
    usage: Option<Value>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct ChoiceDelta<'a> {
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<MaybeText<'a>>,
    #[serde(borrow, default)]
    refusal: Option<MaybeText<'a>>,
    /// vLLM, DeepSeek.
    #[serde(borrow, default)]
    reasoning_content: Option<MaybeText<'a>>,
    /// OpenRouter, Ollama.
    #[serde(borrow, default)]
    reasoning: Option<MaybeText<'a>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
}

/// A text member, or anything else (ignored, as the tree path ignored it).
#[cfg_attr(test, derive(Debug, PartialEq))]
struct MaybeText<'a>(Option<Cow<'a, str>>);

impl MaybeText<'_> {
    fn text(&self) -> Option<&str> {
        self.0.as_deref().filter(|t| !t.is_empty())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for MaybeText<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = MaybeText<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or anything")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeText(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MaybeText(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(MaybeText(Some(Cow::Owned(v))))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(MaybeText(None))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(MaybeText(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(MaybeText(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(MaybeText(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(MaybeText(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(MaybeText(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(MaybeText(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(MaybeText(None))
            }
        }
        deserializer.deserialize_any(Visit)
    }
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct ToolCallDelta<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct FunctionDelta<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

impl<'a> Chunk<'a> {
    fn not_understood(connection: &str, e: serde_json::Error) -> ApiError {
        ApiError::upstream_failure(format!(
            "connection '{connection}': a streamed chunk is not a chat.completion.chunk: {e}"
        ))
    }

    pub fn of_value(value: &'a Value, connection: &str) -> Result<Chunk<'a>, ApiError> {
        Chunk::deserialize(value).map_err(|e| Self::not_understood(connection, e))
    }

    pub fn of_text(
        text: &'a [u8],
        connection: &str,
        front: &mut ChunkFront,
    ) -> Result<Chunk<'a>, ApiError> {
        // One UTF-8 check for the whole chunk: read as `str`, serde_json does not
        // check each string and key again (it did, once per string, from bytes).
        let text = crate::json_scan::utf8(text).ok_or_else(|| {
            ApiError::upstream_failure(format!(
                "connection '{connection}': a streamed chunk is not UTF-8"
            ))
        })?;
        if let Some(chunk) = Chunk::scanned(text, front) {
            return Ok(chunk);
        }
        serde_json::from_str(text).map_err(|e| Self::not_understood(connection, e))
    }

    /// The usual chunk (text, reasoning or refusal deltas, a finish reason) read by
    /// walking its text with `json_scan` instead of serde's typed parse (about a third
    /// of the instructions). `None` leaves the chunk to serde, which then reads it or
    /// says what is wrong: tool calls, a `usage` object, a key with escapes, a member
    /// twice, a member of a type serde would refuse. What it returns is what serde
    /// returns for the same text (`scanned_chunks_read_as_serde_reads_them`).
    ///
    /// A chunk that starts as the last one walked did up to its `choices` key is
    /// walked from there (`front`): the members before it (`id`, `object`, `created`,
    /// `model`, `system_fingerprint`, the same in every chunk of a stream) are only
    /// stepped over, and the walk of the same bytes would step over them again.
    fn scanned(text: &'a str, front: &mut ChunkFront) -> Option<Chunk<'a>> {
        let mut walk = json_scan::Walk::new(text);
        let (mut choices, mut seen) = (None, [false; 2]);
        let resume_at =
            (!front.0.is_empty() && text.as_bytes().starts_with(&front.0)).then_some(front.0.len());
        let mut first_member = resume_at.is_none();
        let mut choices_at = None;
        let each = |walk: &mut json_scan::Walk<'a>, key: &'a str| {
            let first = std::mem::replace(&mut first_member, false);
            match key {
                "choices" => {
                    // Nothing but other members before it (a `usage` there would
                    // count as seen); as the first member, a front of `{` saves
                    // nothing.
                    if !first && !seen[0] && !seen[1] {
                        choices_at = Some(walk.key_at());
                    }
                    first_time(&mut seen[0])?;
                    if !walk.null() {
                        let mut list = Vec::new();
                        walk.array(|walk| {
                            list.push(ChoiceDelta::scanned(walk)?);
                            Some(())
                        })?;
                        choices = Some(list);
                    }
                }
                "usage" => {
                    first_time(&mut seen[1])?;
                    if !walk.null() {
                        return None;
                    }
                }
                key if json_scan::has_escape(key) => return None,
                _ => {
                    walk.skip()?;
                }
            }
            Some(())
        };
        match resume_at {
            Some(at) => walk.object_from(at, each)?,
            None => walk.object(each)?,
        }
        walk.done()?;
        if let Some(at) = choices_at.filter(|&at| resume_at != Some(at)) {
            front.0.clear();
            front.0.extend_from_slice(&text.as_bytes()[..at]);
        }
        Some(Chunk {
            choices,
            usage: None,
        })
    }
}

impl<'a> Chunk<'a> {
    /// The chunk whose one choice's delta is `content` and nothing else (what
    /// [`ReadChunk::Content`] stands for).
    #[cfg(test)]
    fn content_only(content: &'a str) -> Chunk<'a> {
        let delta = Delta {
            content: Some(MaybeText(Some(Cow::Borrowed(content)))),
            refusal: None,
            reasoning_content: None,
            reasoning: None,
            tool_calls: None,
        };
        Chunk {
            choices: Some(vec![ChoiceDelta {
                delta: Some(delta),
                finish_reason: None,
            }]),
            usage: None,
        }
    }

    /// The text of the one choice's delta when that is all the chunk carries, as
    /// written in it (no escapes): what [`ReadChunk::Content`] carries.
    fn only_content(&self) -> Option<&'a str> {
        let [choice] = self.choices.as_deref()? else {
            return None;
        };
        if self.usage.is_some() || choice.finish_reason.is_some() {
            return None;
        }
        match choice.delta.as_ref()? {
            Delta {
                content: Some(MaybeText(Some(Cow::Borrowed(content)))),
                refusal: None,
                reasoning_content: None,
                reasoning: None,
                tool_calls: None,
            } => Some(content),
            _ => None,
        }
    }
}

/// An upstream chunk as written: the usual text chunk, the last one but for its
/// text, by a comparison with the last (`last_text_chunk`, see
/// [`json_scan::StringMemo`]); any other by [`Chunk::of_text`].
fn read_chunk<'a>(
    text: &'a Bytes,
    connection: &str,
    front: &mut ChunkFront,
    last_text_chunk: &mut json_scan::StringMemo,
) -> Result<ReadChunk<'a>, ApiError> {
    if let Some(span) = last_text_chunk.string_span(text) {
        if let Some(content) = text.get(span).and_then(|s| std::str::from_utf8(s).ok()) {
            return Ok(ReadChunk::Content(content));
        }
    }
    let chunk = Chunk::of_text(text, connection, front)?;
    match chunk.only_content() {
        Some(content) => {
            last_text_chunk.remember(text, content);
        }
        None => last_text_chunk.forget(),
    }
    Ok(ReadChunk::Chunk(chunk))
}

/// What [`read_chunk`] made of a chunk.
#[cfg_attr(test, derive(Debug))]
enum ReadChunk<'a> {
    /// A chunk whose one choice's delta is this text and nothing else (the
    /// characters of a JSON string without escapes): most of a stream's chunks,
    /// translated without a `Chunk` (its `choices` is an allocation).
    Content(&'a str),
    Chunk(Chunk<'a>),
}

impl<'a> ReadChunk<'a> {
    /// The chunk it stands for.
    #[cfg(test)]
    fn into_chunk(self) -> Chunk<'a> {
        match self {
            ReadChunk::Content(content) => Chunk::content_only(content),
            ReadChunk::Chunk(chunk) => chunk,
        }
    }
}

/// What [`Chunk::scanned`] keeps between the chunks of a stream: the last chunk's
/// bytes before its `choices` key, when it walked them.
#[derive(Default, Clone)]
pub struct ChunkFront(Vec<u8>);

impl<'a> ChoiceDelta<'a> {
    fn scanned(walk: &mut json_scan::Walk<'a>) -> Option<ChoiceDelta<'a>> {
        let (mut delta, mut finish_reason, mut seen) = (None, None, [false; 2]);
        walk.object(|walk, key| {
            match key {
                "delta" => {
                    first_time(&mut seen[0])?;
                    if !walk.null() {
                        delta = Some(Delta::scanned(walk)?);
                    }
                }
                "finish_reason" => {
                    first_time(&mut seen[1])?;
                    if !walk.null() {
                        finish_reason = Some(walk.string()?);
                    }
                }
                key if json_scan::has_escape(key) => return None,
                _ => {
                    walk.skip()?;
                }
            }
            Some(())
        })?;
        Some(ChoiceDelta {
            delta,
            finish_reason,
        })
    }
}

impl<'a> Delta<'a> {
    fn scanned(walk: &mut json_scan::Walk<'a>) -> Option<Delta<'a>> {
        let mut delta = Delta {
            content: None,
            refusal: None,
            reasoning_content: None,
            reasoning: None,
            tool_calls: None,
        };
        let mut seen = [false; 4];
        walk.object(|walk, key| {
            let (slot, seen) = match key {
                "content" => (&mut delta.content, &mut seen[0]),
                "refusal" => (&mut delta.refusal, &mut seen[1]),
                "reasoning_content" => (&mut delta.reasoning_content, &mut seen[2]),
                "reasoning" => (&mut delta.reasoning, &mut seen[3]),
                "tool_calls" if walk.null() => return Some(()),
                "tool_calls" => return None,
                key if json_scan::has_escape(key) => return None,
                _ => {
                    walk.skip()?;
                    return Some(());
                }
            };
            first_time(seen)?;
            // As `MaybeText`: `null` is no member; a string its text; anything else
            // a member without text.
            if !walk.null() {
                *slot = Some(MaybeText(if walk.at_string() {
                    Some(walk.string()?)
                } else {
                    walk.skip()?;
                    None
                }));
            }
            Some(())
        })?;
        Some(delta)
    }
}

/// The output item being streamed.
enum Open {
    None,
    Reasoning {
        id: String,
        text: String,
    },
    Text {
        id: String,
        text: String,
    },
    Refusal {
        id: String,
        text: String,
    },
    /// A function call: the upstream's tool call index, and the item.
    Tool {
        index: u64,
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// One event for the client: its type and its JSON text; the terminal events also
/// carry the final response as a tree (for the loggers), boxed: every event is
/// moved from the translator to the encoder, most of them without one.
pub struct Event {
    pub kind: std::borrow::Cow<'static, str>,
    pub data: EventText,
    pub response: Option<Box<Value>>,
}

/// An event's JSON text (what it derefs to): written here by the translator, or an
/// upstream's event as it came (a slice of what was read).
pub enum EventText {
    /// The whole SSE event as the client gets it, `event: <type>\ndata: ` + the
    /// JSON + a blank line, the JSON from `json_start`: written framed, so that
    /// an event that echoes the request (`response.created`, the terminal event:
    /// an agent's instructions and tools, 13 KB and more) goes out in the buffer it
    /// was written in instead of being copied into the client's frame (see
    /// [`encode`]). Kept as the `Vec` it was written in: made into `Bytes`, a `Vec`
    /// with room to spare took an allocation of its own.
    Framed {
        text: Vec<u8>,
        json_start: usize,
    },
    Passed(Bytes),
}

impl std::ops::Deref for EventText {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            EventText::Framed { text, json_start } => {
                &text[*json_start..text.len() - FRAME_END.len()]
            }
            EventText::Passed(text) => text,
        }
    }
}

impl Event {
    /// Whether it is sent as a write of its own, in the buffer it was written in.
    fn own_frame(&self) -> bool {
        matches!(&self.data, EventText::Framed { text, .. } if text.len() >= OWN_FRAME)
    }
}

/// What ends each SSE event.
const FRAME_END: &[u8] = b"\n\n";

/// An event written framed from at least this many bytes is sent in its own
/// buffer (see [`encode`]); smaller ones are copied into a frame with their
/// neighbours, one write for many.
const OWN_FRAME: usize = 4096;

/// A stream of events for the client, or a failure that ends it.
pub type EventStream = std::pin::Pin<Box<dyn Stream<Item = Result<Event, ApiError>> + Send>>;

/// An event being written framed ([`EventText::Framed`]).
struct FramedEvent {
    text: Vec<u8>,
    json_start: usize,
}

impl FramedEvent {
    /// The event's SSE head and the start of its JSON text, its `type` and
    /// `sequence_number`, with room for `capacity` bytes of JSON: written directly
    /// (the text deltas are most of a stream's events; building a tree per event
    /// and serializing it was most of the translation's cost).
    fn start(kind: &str, sequence: u64, capacity: usize) -> FramedEvent {
        let mut text = Vec::with_capacity(capacity + 2 * kind.len() + 16);
        text.extend_from_slice(b"event: ");
        text.extend_from_slice(kind.as_bytes());
        text.extend_from_slice(b"\ndata: ");
        let json_start = text.len();
        text.extend_from_slice(b"{\"type\":\"");
        text.extend_from_slice(kind.as_bytes());
        text.extend_from_slice(b"\",\"sequence_number\":");
        text.extend_from_slice(itoa::Buffer::new().format(sequence).as_bytes());
        FramedEvent { text, json_start }
    }

    /// The JSON object closed and the SSE event ended.
    fn finish(mut self) -> EventText {
        self.text.push(b'}');
        self.text.extend_from_slice(FRAME_END);
        EventText::Framed {
            text: self.text,
            json_start: self.json_start,
        }
    }
}

/// `,"name":` and the value as a JSON string (escaped as serde_json does).
fn push_str_field(data: &mut Vec<u8>, name: &str, value: &str) {
    data.push(b',');
    data.push(b'"');
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(b"\":");
    crate::json_scan::write_json_str(data, value);
}

/// `,"name":` and JSON text as it is.
fn push_raw_field(data: &mut Vec<u8>, name: &str, json: &[u8]) {
    data.push(b',');
    data.push(b'"');
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(b"\":");
    data.extend_from_slice(json);
}

/// `,"name":` and a number.
fn push_number_field(data: &mut Vec<u8>, name: &str, value: u64) {
    data.push(b',');
    data.push(b'"');
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(b"\":");
    data.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Chunks → events, one chunk at a time.
pub struct Translator {
    /// The response object but for what the answer decides.
    skeleton: answer::Skeleton,
    connection: String,
    sequence: u64,
    started: bool,
    /// The finished items, as the `output` array's text so far (`[` and the items,
    /// comma-separated), and how many there are.
    output: Vec<u8>,
    items: u64,
    open: Open,
    /// Tool calls already closed (their arguments can no longer be added).
    closed_tools: Vec<u64>,
    finish_reason: Option<String>,
    usage: Option<Value>,
    /// Bytes of text kept, and the most that may be.
    kept: usize,
    limit: usize,
    /// The members every delta event of one item repeats, written once per item:
    /// the item's id, and `,"item_id":..,"output_index":..,"<part>":0,"delta":`.
    delta_members: (String, Vec<u8>),
    /// Give the terminal event the final response as a tree (for the loggers).
    keep_tree: bool,
    /// What the reading of the last chunk keeps for the next.
    front: ChunkFront,
    /// The last chunk when all it carried was a piece of text: the next one that
    /// differs from it only in that text is read by a comparison, not a walk.
    last_text_chunk: json_scan::StringMemo,
}

impl Translator {
    /// `keep_tree`: the terminal event carries the final response as a tree too,
    /// read from its text (only loggers need it).
    pub fn new(
        skeleton: answer::Skeleton,
        connection: &str,
        limit: usize,
        keep_tree: bool,
    ) -> Self {
        let mut output = Vec::with_capacity(512);
        output.push(b'[');
        Translator {
            skeleton,
            connection: connection.to_owned(),
            sequence: 0,
            started: false,
            output,
            items: 0,
            open: Open::None,
            closed_tools: Vec::new(),
            finish_reason: None,
            usage: None,
            kept: 0,
            limit,
            delta_members: (String::new(), Vec::new()),
            keep_tree,
            front: ChunkFront::default(),
            last_text_chunk: json_scan::StringMemo::default(),
        }
    }

    /// One event: its `type` and `sequence_number` first, then what `fields`
    /// writes (members, each after a comma), written directly as text.
    fn event(
        &mut self,
        kind: &'static str,
        capacity: usize,
        fields: impl FnOnce(&mut Vec<u8>),
        out: &mut Vec<Event>,
    ) {
        let mut event = FramedEvent::start(kind, self.sequence, capacity);
        self.sequence += 1;
        fields(&mut event.text);
        out.push(Event {
            kind: Cow::Borrowed(kind),
            data: event.finish(),
            response: None,
        });
    }

    /// A delta event, written directly: `item_id`, `output_index`, the index named
    /// `part_field` (0), `delta`, and `"logprobs":[]` for text.
    fn delta_event(
        &mut self,
        kind: &'static str,
        item_id: &str,
        part_field: Option<&str>,
        delta: &str,
        logprobs: bool,
        out: &mut Vec<Event>,
    ) {
        // Most events of a stream are these: what they repeat is written once per
        // item, and each is allocated once at its size (escapes aside).
        if self.delta_members.0 != item_id {
            let mut members = Vec::with_capacity(item_id.len() + 64);
            push_str_field(&mut members, "item_id", item_id);
            push_number_field(&mut members, "output_index", self.items);
            if let Some(part_field) = part_field {
                push_number_field(&mut members, part_field, 0);
            }
            members.extend_from_slice(b",\"delta\":");
            self.delta_members = (item_id.to_owned(), members);
        }
        let members = &self.delta_members.1;
        let capacity = 64 + kind.len() + members.len() + delta.len() + 16;
        let mut event = FramedEvent::start(kind, self.sequence, capacity);
        self.sequence += 1;
        event.text.extend_from_slice(members);
        crate::json_scan::write_json_str(&mut event.text, delta);
        if logprobs {
            event.text.extend_from_slice(b",\"logprobs\":[]");
        }
        out.push(Event {
            kind: std::borrow::Cow::Borrowed(kind),
            data: event.finish(),
            response: None,
        });
    }

    fn start(&mut self, out: &mut Vec<Event>) {
        if self.started {
            return;
        }
        self.started = true;
        // The response is written into each event where it goes (not once and
        // copied into both: it echoes the request, 13 KB for an agent).
        for kind in ["response.created", "response.in_progress"] {
            let capacity = self.skeleton.text_len() + 128;
            let mut event = FramedEvent::start(kind, self.sequence, capacity);
            self.sequence += 1;
            event.text.extend_from_slice(b",\"response\":");
            self.skeleton
                .write(&answer::Outcome::IN_PROGRESS, &mut event.text);
            out.push(Event {
                kind: Cow::Borrowed(kind),
                data: event.finish(),
                response: None,
            });
        }
    }

    fn keep(&mut self, text: &str) -> Result<(), ApiError> {
        self.kept += text.len();
        if self.kept > self.limit {
            return Err(crate::upstream::too_large_error(self.limit));
        }
        Ok(())
    }

    /// The status of an item closed now: the response's as the finish reason
    /// known so far makes it.
    fn item_status(&self) -> &'static str {
        answer::status(self.finish_reason.as_deref()).0
    }

    /// Open an item (closing the one before): `response.output_item.added` with
    /// the item as it begins, and for text its part's `added` event.
    fn open(&mut self, open: Open, out: &mut Vec<Event>) {
        self.close(out);
        let index = self.items;
        let mut item = Vec::with_capacity(160);
        match &open {
            Open::None => {}
            Open::Reasoning { id, .. } => answer::write_reasoning_item(id, None, &mut item),
            Open::Text { id, .. } | Open::Refusal { id, .. } => {
                answer::write_message_item(id, "in_progress", &[], &mut item)
            }
            Open::Tool {
                id, call_id, name, ..
            } => answer::write_function_call_item(id, call_id, name, "", "in_progress", &mut item),
        }
        let fields = |d: &mut Vec<u8>| {
            push_number_field(d, "output_index", index);
            push_raw_field(d, "item", &item);
        };
        self.event("response.output_item.added", item.len() + 96, fields, out);
        let (kind, part_field, id, part) = match &open {
            Open::Reasoning { id, .. } => (
                "response.reasoning_summary_part.added",
                "summary_index",
                id,
                answer::Part::Summary(""),
            ),
            Open::Text { id, .. } => (
                "response.content_part.added",
                "content_index",
                id,
                answer::Part::Text(""),
            ),
            Open::Refusal { id, .. } => (
                "response.content_part.added",
                "content_index",
                id,
                answer::Part::Refusal(""),
            ),
            Open::Tool { .. } | Open::None => {
                self.open = open;
                return;
            }
        };
        let fields = |d: &mut Vec<u8>| {
            push_str_field(d, "item_id", id);
            push_number_field(d, "output_index", index);
            push_number_field(d, part_field, 0);
            d.extend_from_slice(b",\"part\":");
            part.write(d);
        };
        self.event(kind, 256, fields, out);
        self.open = open;
    }

    /// Close the open item: its `.done` events and `response.output_item.done`.
    fn close(&mut self, out: &mut Vec<Event>) {
        let index = self.items;
        let status = self.item_status();
        // `"item_id":..,"output_index":..` and the part's index.
        let head = |d: &mut Vec<u8>, id: &str, part_field: Option<&str>| {
            push_str_field(d, "item_id", id);
            push_number_field(d, "output_index", index);
            if let Some(part_field) = part_field {
                push_number_field(d, part_field, 0);
            }
        };
        let mut item = Vec::new();
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => return,
            Open::Reasoning { id, text } => {
                let capacity = text.len() + 128;
                let fields = |d: &mut Vec<u8>| {
                    head(d, &id, Some("summary_index"));
                    push_str_field(d, "text", &text);
                };
                let kind = "response.reasoning_summary_text.done";
                self.event(kind, capacity, fields, out);
                let fields = |d: &mut Vec<u8>| {
                    head(d, &id, Some("summary_index"));
                    d.extend_from_slice(b",\"part\":");
                    answer::Part::Summary(&text).write(d);
                };
                let kind = "response.reasoning_summary_part.done";
                self.event(kind, capacity, fields, out);
                item.reserve(text.len() + 128);
                answer::write_reasoning_item(&id, Some(&text), &mut item);
            }
            Open::Text { id, text } => {
                let capacity = text.len() + 160;
                let fields = |d: &mut Vec<u8>| {
                    head(d, &id, Some("content_index"));
                    push_str_field(d, "text", &text);
                    d.extend_from_slice(br#","logprobs":[]"#);
                };
                self.event("response.output_text.done", capacity, fields, out);
                let part = answer::Part::Text(&text);
                let fields = |d: &mut Vec<u8>| {
                    head(d, &id, Some("content_index"));
                    d.extend_from_slice(b",\"part\":");
                    part.write(d);
                };
                self.event("response.content_part.done", capacity, fields, out);
                item.reserve(text.len() + 192);
                answer::write_message_item(&id, status, &[part], &mut item);
            }
            Open::Refusal { id, text } => {
                let capacity = text.len() + 160;
                let fields = |d: &mut Vec<u8>| {
                    head(d, &id, Some("content_index"));
                    push_str_field(d, "refusal", &text);
                };
                self.event("response.refusal.done", capacity, fields, out);
                let part = answer::Part::Refusal(&text);
                let fields = |d: &mut Vec<u8>| {
                    head(d, &id, Some("content_index"));
                    d.extend_from_slice(b",\"part\":");
                    part.write(d);
                };
                self.event("response.content_part.done", capacity, fields, out);
                item.reserve(text.len() + 160);
                answer::write_message_item(&id, status, &[part], &mut item);
            }
            Open::Tool {
                index: k,
                id,
                call_id,
                name,
                arguments,
            } => {
                self.closed_tools.push(k);
                let fields = |d: &mut Vec<u8>| {
                    head(d, &id, None);
                    push_str_field(d, "name", &name);
                    push_str_field(d, "arguments", &arguments);
                };
                let capacity = arguments.len() + 160;
                let kind = "response.function_call_arguments.done";
                self.event(kind, capacity, fields, out);
                item.reserve(arguments.len() + 192);
                let status = "completed";
                answer::write_function_call_item(
                    &id, &call_id, &name, &arguments, status, &mut item,
                );
            }
        };
        let fields = |d: &mut Vec<u8>| {
            push_number_field(d, "output_index", index);
            push_raw_field(d, "item", &item);
        };
        self.event("response.output_item.done", item.len() + 96, fields, out);
        if self.items > 0 {
            self.output.push(b',');
        }
        self.output.extend_from_slice(&item);
        self.items += 1;
    }

    /// A piece of text for the open reasoning, text or refusal item.
    fn text_delta(
        &mut self,
        kind: &str,
        delta: &str,
        out: &mut Vec<Event>,
    ) -> Result<(), ApiError> {
        self.keep(delta)?;
        let (event, part_field, logprobs, id) = match &mut self.open {
            Open::Reasoning { id, text } if kind == "reasoning" => {
                text.push_str(delta);
                let event = "response.reasoning_summary_text.delta";
                (event, "summary_index", false, std::mem::take(id))
            }
            Open::Text { id, text } if kind == "text" => {
                text.push_str(delta);
                let event = "response.output_text.delta";
                (event, "content_index", true, std::mem::take(id))
            }
            Open::Refusal { id, text } if kind == "refusal" => {
                text.push_str(delta);
                let event = "response.refusal.delta";
                (event, "content_index", false, std::mem::take(id))
            }
            _ => {
                let open = match kind {
                    "reasoning" => Open::Reasoning {
                        id: answer::new_id("rs"),
                        text: String::new(),
                    },
                    "text" => Open::Text {
                        id: answer::new_id("msg"),
                        text: String::new(),
                    },
                    _ => Open::Refusal {
                        id: answer::new_id("msg"),
                        text: String::new(),
                    },
                };
                self.open(open, out);
                self.kept -= delta.len();
                return self.text_delta(kind, delta, out);
            }
        };
        self.delta_event(event, &id, Some(part_field), delta, logprobs, out);
        // The id was taken to write the event while the item was borrowed: back.
        if let Open::Reasoning { id: slot, .. }
        | Open::Text { id: slot, .. }
        | Open::Refusal { id: slot, .. } = &mut self.open
        {
            *slot = id;
        }
        Ok(())
    }

    /// The events one chunk becomes.
    /// A chunk whose one choice's delta is `content` and nothing else: what
    /// [`Translator::chunk`] does with it.
    fn content(&mut self, content: &str, out: &mut Vec<Event>) -> Result<(), ApiError> {
        self.start(out);
        if content.is_empty() {
            return Ok(());
        }
        self.text_delta("text", content, out)
    }

    pub fn chunk(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Event>) -> Result<(), ApiError> {
        self.start(out);
        if let Some(usage) = chunk.usage.as_ref().filter(|u| u.is_object()) {
            self.usage = Some(usage.clone());
        }
        let Some(choice) = chunk.choices.as_ref().and_then(|c| c.first()) else {
            return Ok(());
        };
        if let Some(delta) = &choice.delta {
            let reasoning = [&delta.reasoning_content, &delta.reasoning]
                .into_iter()
                .find_map(|r| r.as_ref().and_then(MaybeText::text));
            if let Some(thinking) = reasoning {
                self.text_delta("reasoning", thinking, out)?;
            }
            for (text, kind) in [(&delta.content, "text"), (&delta.refusal, "refusal")] {
                if let Some(text) = text.as_ref().and_then(MaybeText::text) {
                    self.text_delta(kind, text, out)?;
                }
            }
            for call in delta.tool_calls.iter().flatten() {
                self.tool_call(call, out)?;
            }
        }
        if let Some(reason) = &choice.finish_reason {
            if self.finish_reason.is_none() {
                self.finish_reason = Some(reason.to_string());
            }
            self.close(out);
        }
        Ok(())
    }

    /// A chunk given as a tree (tests; the stream reads chunks with [`Chunk`]).
    pub fn chunk_value(&mut self, chunk: &Value, out: &mut Vec<Event>) -> Result<(), ApiError> {
        let chunk = Chunk::of_value(chunk, &self.connection)?;
        self.chunk(&chunk, out)
    }

    fn tool_call(
        &mut self,
        call: &ToolCallDelta<'_>,
        out: &mut Vec<Event>,
    ) -> Result<(), ApiError> {
        let k = call.index.unwrap_or(0);
        let function = call.function.as_ref();
        let is_open = matches!(self.open, Open::Tool { index, .. } if index == k);
        if !is_open {
            if self.closed_tools.contains(&k) {
                return Err(ApiError::upstream_failure(format!(
                    "connection '{}': tool call {k} continued after another one began",
                    self.connection
                )));
            }
            let id = answer::new_id("fc");
            let call_id = call
                .id
                .as_deref()
                .map(str::to_owned)
                .unwrap_or_else(|| answer::new_id("call"));
            let name = function
                .and_then(|f| f.name.as_deref())
                .unwrap_or_default()
                .to_owned();
            self.keep(&name)?;
            let open = Open::Tool {
                index: k,
                id,
                call_id,
                name,
                arguments: String::new(),
            };
            self.open(open, out);
        }
        if let Some(fragment) = function
            .and_then(|f| f.arguments.as_deref())
            .filter(|f| !f.is_empty())
        {
            self.keep(fragment)?;
            if let Open::Tool { id, arguments, .. } = &mut self.open {
                arguments.push_str(fragment);
                let id = std::mem::take(id);
                let kind = "response.function_call_arguments.delta";
                self.delta_event(kind, &id, None, fragment, false, out);
                if let Open::Tool { id: slot, .. } = &mut self.open {
                    *slot = id;
                }
            }
        }
        Ok(())
    }

    /// The events that end the response: `response.completed`, or
    /// `response.incomplete` after a length stop.
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        self.start(out);
        self.close(out);
        let (status, incomplete_details) = answer::status(self.finish_reason.as_deref());
        let mut usage = Vec::with_capacity(160);
        answer::write_usage(self.usage.as_ref(), &mut usage);
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.terminal(kind, status, b"null", incomplete_details, &usage, out);
    }

    /// A terminal event: the whole response with the items finished, and for the
    /// loggers, when they need it, the response as a tree.
    fn terminal(
        &mut self,
        kind: &'static str,
        status: &str,
        error: &[u8],
        incomplete_details: &[u8],
        usage: &[u8],
        out: &mut Vec<Event>,
    ) {
        let mut output = std::mem::take(&mut self.output);
        output.push(b']');
        let outcome = answer::Outcome {
            status,
            error,
            incomplete_details,
            output: &output,
            usage,
        };
        let capacity = self.skeleton.text_len() + output.len() + usage.len() + error.len() + 128;
        let mut event = FramedEvent::start(kind, self.sequence, capacity);
        self.sequence += 1;
        event.text.extend_from_slice(b",\"response\":");
        let start = event.text.len();
        self.skeleton.write(&outcome, &mut event.text);
        let response = self
            .keep_tree
            .then(|| {
                serde_json::from_slice(&event.text[start..])
                    .ok()
                    .map(Box::new)
            })
            .flatten();
        out.push(Event {
            kind: Cow::Borrowed(kind),
            data: event.finish(),
            response,
        });
    }

    /// `response.failed` for a failure after the stream started: the items already
    /// finished, and the error as the client may see it.
    pub fn fail(&mut self, error: &ApiError, out: &mut Vec<Event>) {
        self.start(out);
        self.open = Open::None;
        let object = error.error_object();
        let mut failure = Vec::with_capacity(128);
        failure.extend_from_slice(b"{\"code\":");
        crate::json_scan::write_json_str(&mut failure, failure_code(error));
        failure.extend_from_slice(b",\"message\":");
        answer::write_value(&mut failure, &object["message"]);
        failure.push(b'}');
        let mut usage = Vec::with_capacity(160);
        match &self.usage {
            Some(counts) => answer::write_usage(Some(counts), &mut usage),
            None => usage.extend_from_slice(b"null"),
        }
        self.terminal("response.failed", "failed", &failure, b"null", &usage, out);
    }
}

/// The Responses API's error code for a failure (`server_error`, or
/// `rate_limit_exceeded` for a 429).
fn failure_code(error: &ApiError) -> &'static str {
    if error.status().as_u16() == 429 {
        "rate_limit_exceeded"
    } else {
        "server_error"
    }
}

/// Canonical chunks → Responses events (as trees). A failure becomes
/// `response.failed`, then is passed on (for the log line) and ends the stream.
pub fn translate(chunks: PayloadStream, translator: Translator) -> EventStream {
    struct State {
        chunks: PayloadStream,
        translator: Translator,
        /// The events of the last chunk not yet handed out, last first (each is
        /// moved once, by `pop`); kept (empty) between chunks, so that a chunk's
        /// events do not take an allocation.
        pending: Vec<Event>,
        /// The failure that ends the stream, handed out after `pending`.
        failure: Option<ApiError>,
        ended: bool,
    }
    // Boxed: the unfold moves its state into and out of each item's future, and the
    // translator is large (that was 56 copies a stream, 6,000 instructions).
    let state = Box::new(State {
        chunks,
        translator,
        pending: Vec::new(),
        failure: None,
        ended: false,
    });
    Box::pin(futures_util::stream::unfold(
        state,
        |mut state| async move {
            loop {
                if let Some(event) = state.pending.pop() {
                    return Some((Ok(event), state));
                }
                if let Some(error) = state.failure.take() {
                    return Some((Err(error), state));
                }
                if state.ended {
                    return None;
                }
                let mut out = std::mem::take(&mut state.pending);
                let failure = match state.chunks.next().await {
                    Some(Ok(payload)) => {
                        let translator = &mut state.translator;
                        let parsed = match &payload {
                            Payload::Raw(raw) => read_chunk(
                                raw.bytes(),
                                &translator.connection,
                                &mut translator.front,
                                &mut translator.last_text_chunk,
                            ),
                            Payload::Value(value) => {
                                translator.last_text_chunk.forget();
                                Chunk::of_value(value, &translator.connection).map(ReadChunk::Chunk)
                            }
                        };
                        parsed
                            .and_then(|read| match read {
                                ReadChunk::Content(content) => {
                                    translator.content(content, &mut out)
                                }
                                ReadChunk::Chunk(chunk) => translator.chunk(&chunk, &mut out),
                            })
                            .err()
                    }
                    Some(Err(e)) => Some(e),
                    None => {
                        state.translator.finish(&mut out);
                        state.ended = true;
                        None
                    }
                };
                if let Some(error) = failure {
                    // What the chunk gave before it failed goes out first (its events
                    // are numbered already), then the failure.
                    state.translator.fail(&error, &mut out);
                    state.ended = true;
                    state.failure = Some(error);
                }
                out.reverse();
                state.pending = out;
            }
        },
    ))
}

/// Events of an upstream that speaks the Responses API, as it wrote them; the
/// terminal one's response is read for the loggers when `assemble` is set.
pub fn passed_through(events: PayloadStream, assemble: bool) -> EventStream {
    Box::pin(events.map(move |item| {
        item.map(|payload| {
            let kind = match &payload {
                Payload::Raw(raw) => crate::json_scan::utf8(raw.text())
                    .and_then(|t| member_str(t, "type"))
                    .map(Cow::into_owned),
                Payload::Value(value) => {
                    value.get("type").and_then(Value::as_str).map(str::to_owned)
                }
            };
            let kind = kind.unwrap_or_else(|| "message".to_owned());
            let response = if assemble && is_terminal(&kind) {
                payload.to_value().get("response").cloned().map(Box::new)
            } else {
                None
            };
            Event {
                kind: Cow::Owned(kind),
                data: EventText::Passed(payload.into_json_bytes()),
                response,
            }
        })
    }))
}

/// The event types that end a response stream.
fn is_terminal(kind: &str) -> bool {
    matches!(
        kind,
        "response.completed" | "response.incomplete" | "response.failed"
    )
}

/// Calls the stream's finish closure exactly once (end, error or drop).
struct Finish<F: FnOnce(StreamSummary)> {
    on_finish: Option<F>,
    summary: StreamSummary,
}

impl<F: FnOnce(StreamSummary)> Finish<F> {
    fn finish(&mut self, completed: bool) {
        if let Some(f) = self.on_finish.take() {
            self.summary.completed = completed;
            f(std::mem::take(&mut self.summary));
        }
    }
}

impl<F: FnOnce(StreamSummary)> Drop for Finish<F> {
    fn drop(&mut self) {
        self.finish(false);
    }
}

struct Encoder<F: FnOnce(StreamSummary)> {
    finish: Finish<F>,
    /// Give the loggers the final response (from the terminal event).
    assemble: bool,
    /// Events written: the next `sequence_number` (both OpenAI and the translator
    /// number from 0).
    written: u64,
    /// A terminal event was written (a failure after it needs no event of its own).
    terminal: bool,
}

impl<F: FnOnce(StreamSummary)> Encoder<F> {
    /// Write one item; true when the stream has ended.
    fn write(&mut self, item: Option<Result<Event, ApiError>>, out: &mut Vec<u8>) -> bool {
        match item {
            Some(Ok(event)) => {
                self.finish.summary.chunks += 1;
                self.written += 1;
                if is_terminal(&event.kind) {
                    self.terminal = true;
                    if self.assemble {
                        self.finish.summary.response = event.response.map(|response| *response);
                    }
                }
                match event.data {
                    // Written framed: sent in its own buffer when it is one to
                    // (see `encode`), otherwise copied whole.
                    EventText::Framed { text, .. } if out.is_empty() && text.len() >= OWN_FRAME => {
                        *out = text;
                    }
                    EventText::Framed { text, .. } => out.extend_from_slice(&text),
                    EventText::Passed(data) => write_event(&event.kind, &data, out),
                }
                false
            }
            Some(Err(error)) => {
                if !self.terminal {
                    let object = error.error_object();
                    let event = json!({
                        "type": "error",
                        "sequence_number": self.written,
                        "code": object.get("code").cloned().unwrap_or(Value::Null),
                        "message": object["message"],
                        "param": object.get("param").cloned().unwrap_or(Value::Null),
                    });
                    let data = serde_json::to_vec(&event).unwrap_or_default();
                    write_event("error", &data, out);
                }
                self.finish.summary.error = Some(error);
                self.finish.finish(true);
                true
            }
            None => {
                self.finish.finish(true);
                true
            }
        }
    }
}

/// Append one event: `event: <type>` and its data as written.
fn write_event(kind: &str, data: &[u8], out: &mut Vec<u8>) {
    out.reserve(kind.len() + data.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}

/// Responses events → the client's SSE body, each event written as soon as it comes
/// (events that are ready together share a write). `assemble`: hand the final
/// response to `on_finish` (for the loggers). A failure before any terminal event
/// is an `error` event. No `[DONE]`: the Responses API ends with its terminal event.
///
/// An event the translator wrote framed and big ([`OWN_FRAME`]: those that echo
/// the request) is a write of its own, sent in the buffer it was written in: copied
/// into a frame it was copied again each time the frame grew (13 KB events, three
/// a stream, were a third of the instructions of an agent's translated stream;
/// bench/README.md, session 35).
pub fn encode<F>(
    events: EventStream,
    assemble: bool,
    on_finish: F,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send
where
    F: FnOnce(StreamSummary) + Send + 'static,
{
    let encoder = Box::new(Encoder {
        finish: Finish {
            on_finish: Some(on_finish),
            summary: StreamSummary::default(),
        },
        assemble,
        written: 0,
        terminal: false,
    });
    // The state: the events, the encoder, and an event of its own frame that came
    // while the last frame was gathered (the next frame's).
    let held: Option<Event> = None;
    futures_util::stream::unfold(Some((events, encoder, held)), |state| async move {
        let (mut events, mut encoder, held) = state?;
        let first = match held {
            Some(event) => Some(Ok(event)),
            None => events.next().await,
        };
        let own_frame = matches!(&first, Some(Ok(event)) if event.own_frame());
        let mut buf = if own_frame {
            Vec::new()
        } else {
            Vec::with_capacity(2048)
        };
        let mut ended = encoder.write(first, &mut buf);
        let mut held = None;
        while !ended && !own_frame && buf.len() < crate::streaming::COALESCE_LIMIT {
            match events.next().now_or_never() {
                Some(Some(Ok(event))) if event.own_frame() => {
                    held = Some(event);
                    break;
                }
                Some(item) => {
                    crate::streaming::room_for_burst(&mut buf);
                    ended = encoder.write(item, &mut buf);
                }
                None => break,
            }
        }
        let next = (!ended).then_some((events, encoder, held));
        Some((Ok(Bytes::from(buf)), next))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The walk reads a chunk exactly as serde's typed parse does, or leaves it to
    /// serde: samples of every shape, then every truncation, one-byte deletion and
    /// one-byte replacement of each (most no longer JSON, some still chunks).
    #[test]
    fn scanned_chunks_read_as_serde_reads_them() {
        let samples = [
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}]}"#,
            r#"{"choices":[{"delta":{"content":"say \"hi\"\n\u00e9\ud83d\ude00"},"finish_reason":null,"logprobs":null}],"usage":null}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[{"delta":{"reasoning_content":"think","reasoning":null,"refusal":"no"}}]}"#,
            r#"{"choices":[{"delta":{"content":7,"refusal":[1,{"a":"b"}],"reasoning":{"x":1}}}]}"#,
            r#"{"choices":[{"delta":{"content":"a"}},{"delta":{"content":"b"},"finish_reason":"length"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}"#,
            r#"{"choices":null}"#,
            r#" { "choices" : [ { "delta" : { "content" : "x" } , "finish_reason" : null } ] } "#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"t","function":{"name":"f","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":null,"content":"y"}}]}"#,
            r#"{"choices":[{"delta":{"content":"a","content":"b"}}]}"#,
            r#"{"choices":[{"delta":{"content":"a"}}],"choices":[]}"#,
            r#"{"choic\u0065s":[{"delta":{"content":"a"}}]}"#,
            r#"{"choices":[{"delta":{"cont\u0065nt":"a"}}]}"#,
            r#"{"choices":[{"delta":{"content":"a"},"finish_reason":3}]}"#,
            r#"{"choices":{"delta":{}}}"#,
            r#"{"choices":["x"]}"#,
            r#"{"choices":[{"delta":"x"}]}"#,
            r#"{"choices":[{"delta":{"content":"\ud800"}}]}"#,
            r#"{"created":1e400,"choices":[{"delta":{"content":"big"}}]}"#,
            r#"[]"#,
            r#"{}"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"delta":{"content":"x"}}],"choices":[]}"#,
            r#"{"id":"c","usage":null,"choices":[{"delta":{"content":"x"}}],"usage":null}"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m",  "choices":[{"delta":{"content":"y"}}]}"#,
        ];
        let texts = crate::json_scan::cut_and_edited(&samples, b"\"\\{1 ");
        let fresh = || ChunkFront::default();
        let mut scanned = 0;
        for text in &texts {
            let serde = serde_json::from_str::<Chunk>(text);
            if let Some(chunk) = Chunk::scanned(text, &mut fresh()) {
                scanned += 1;
                assert_eq!(Some(chunk), serde.ok(), "{text}");
            }
            // Whichever path reads it, `of_text` agrees with serde.
            assert_eq!(
                Chunk::of_text(text.as_bytes(), "c", &mut fresh()).ok(),
                serde_json::from_str::<Chunk>(text).ok(),
                "{text}"
            );
        }
        // The walk does read the usual chunks (not everything left to serde).
        assert!(scanned > 500, "{scanned} of {}", texts.len());
        for sample in &samples[..9] {
            assert!(
                Chunk::scanned(sample, &mut fresh()).is_some() || sample.contains("usage\":{"),
                "{sample}"
            );
        }
        // After a chunk with members before `choices`, every text reads as serde
        // reads it, and after every text, every sample does.
        let mut after_first = fresh();
        Chunk::scanned(samples[0], &mut after_first).unwrap();
        assert!(!after_first.0.is_empty(), "the front was kept");
        let mut resumed = 0;
        for text in &texts {
            let serde = serde_json::from_str::<Chunk>(text).ok();
            let mut front = after_first.clone();
            if let Some(chunk) = Chunk::scanned(text, &mut front) {
                assert_eq!(Some(chunk), serde, "{} then {text}", samples[0]);
                resumed += usize::from(text.as_bytes().starts_with(&after_first.0));
            }
            for sample in samples {
                let serde = serde_json::from_str::<Chunk>(sample).ok();
                if let Some(chunk) = Chunk::scanned(sample, &mut front.clone()) {
                    assert_eq!(Some(chunk), serde, "{text} then {sample}");
                }
            }
        }
        // Texts that start with the front were read from it.
        assert!(resumed > 300, "{resumed}");
    }

    #[test]
    fn text_chunks_read_by_comparison_read_as_walked() {
        let templates = [
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":{"content":"@"},"logprobs":null,"finish_reason":null}]}"#,
            r#"{"choices":[{"delta":{"role":"assistant","content":"@"}}]}"#,
            r#" { "choices" : [ { "delta" : { "content" : "@" } } ] } "#,
        ];
        let compared = json_scan::check_string_memo_reader(
            &templates,
            &["\"}],\"usage\":{", "@\"", r#"\u00e9"#],
            |memo: &mut json_scan::StringMemo, text| {
                format!(
                    "{:?}",
                    read_chunk(text, "c", &mut ChunkFront::default(), memo)
                        .map(ReadChunk::into_chunk)
                        .ok()
                )
            },
            |text| {
                format!(
                    "{:?}",
                    Chunk::of_text(text, "c", &mut ChunkFront::default()).ok()
                )
            },
            |memo, text| memo.string_span(text).is_some(),
        );
        assert!(compared > 150, "{compared}");
    }

    fn chunk(delta: Value, finish: Option<&str>) -> Value {
        json!({"id": "chatcmpl-9", "model": "up", "object": "chat.completion.chunk", "created": 1,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    fn tree(event: &Event) -> Value {
        let value: Value = serde_json::from_slice(&event.data).unwrap();
        assert_eq!(value["type"], event.kind.as_ref(), "{value}");
        value
    }

    /// A translator for a request that set nothing, keeping the final tree.
    fn translator(limit: usize) -> Translator {
        let skeleton = answer::Skeleton::new(&serde_json::Map::new(), "m");
        Translator::new(skeleton, "c", limit, true)
    }

    fn events_of(chunks: &[Value]) -> Vec<Value> {
        let mut t = translator(1 << 20);
        let mut out = Vec::new();
        for chunk in chunks {
            t.chunk_value(chunk, &mut out).unwrap();
        }
        t.finish(&mut out);
        out.iter().map(tree).collect()
    }

    /// Every event of a stream with each kind of item, and its final response, as
    /// written: key order and spelling are what the SDKs were tested against.
    #[test]
    fn events_are_written_exactly_so() {
        let params = json!({"instructions": "Be brief.", "max_output_tokens": 50,
            "metadata": {"k": "v"}, "reasoning": {"effort": "low"}, "temperature": 0.5,
            "tools": [{"type": "function", "name": "get"}], "user": "u1", "top_p": 1});
        let skeleton = answer::Skeleton::new(params.as_object().unwrap(), "up-1");
        let mut t = Translator::new(skeleton, "c", 1 << 20, false);
        let mut out = Vec::new();
        let chunks = [
            chunk(
                json!({"role": "assistant", "reasoning_content": "Hm"}),
                None,
            ),
            chunk(json!({"content": "Hi \"you\""}), None),
            chunk(json!({"refusal": "no"}), None),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "get", "arguments": "{\"q\":"}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
                Some("length"),
            ),
            json!({"id": "chatcmpl-9", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7,
                "prompt_tokens_details": {"cached_tokens": 2}}}),
        ];
        for c in &chunks {
            t.chunk_value(c, &mut out).unwrap();
        }
        t.finish(&mut out);
        let written: Vec<String> = out
            .iter()
            .map(|e| answer::normalized(std::str::from_utf8(&e.data).unwrap()))
            .collect();
        let expected = include_str!("../../../tests/fixtures/responses_events.txt");
        assert_eq!(written.join("\n") + "\n", expected);
        assert!(
            out.iter().all(|e| e.response.is_none()),
            "no tree was asked for"
        );

        let mut t = translator(1 << 20);
        let mut out = Vec::new();
        t.chunk_value(&chunk(json!({"content": "Hi"}), None), &mut out)
            .unwrap();
        t.fail(&ApiError::upstream_failure("gone"), &mut out);
        let last = out.last().unwrap();
        let failed = answer::normalized(std::str::from_utf8(&last.data).unwrap());
        // The loggers' tree is the response the client got.
        assert_eq!(last.response.as_deref(), Some(&tree(last)["response"]));
        let expected = include_str!("../../../tests/fixtures/responses_failed.txt");
        assert_eq!(failed + "\n", expected);
    }

    #[test]
    fn reasoning_text_and_tool_calls_follow_the_grammar() {
        let events = events_of(&[
            chunk(
                json!({"role": "assistant", "reasoning_content": "Hm"}),
                None,
            ),
            chunk(json!({"content": "Hi"}), None),
            chunk(json!({"content": " there"}), None),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "get", "arguments": ""}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"q\":"}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
                None,
            ),
            chunk(json!({}), Some("tool_calls")),
            json!({"id": "chatcmpl-9", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7}}),
        ]);
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, event) in events.iter().enumerate() {
            assert_eq!(event["sequence_number"], i as u64, "{event}");
        }
        assert_eq!(events[10]["output_index"], 1);
        assert_eq!(events[10]["item_id"], events[8]["item"]["id"]);
        assert_eq!(events[16]["item_id"], events[15]["item"]["id"]);
        assert_eq!(events[4]["item_id"], events[2]["item"]["id"]);
        assert_eq!(events[12]["text"], "Hi there");
        assert_eq!(events[15]["item"]["call_id"], "call_1");
        assert_eq!(events[15]["output_index"], 2);
        assert_eq!(events[18]["arguments"], "{\"q\":1}");
        let response = &events[20]["response"];
        assert_eq!(response["status"], "completed");
        assert_eq!(response["output"].as_array().unwrap().len(), 3);
        assert_eq!(response["output"][1]["content"][0]["text"], "Hi there");
        assert_eq!(response["usage"]["input_tokens"], 5);
        assert_eq!(response["usage"]["output_tokens"], 7);
    }

    #[test]
    fn a_length_stop_is_incomplete_and_too_much_text_fails() {
        let events = events_of(&[chunk(json!({"content": "Hel"}), Some("length"))]);
        let last = events.last().unwrap();
        assert_eq!(last["type"], "response.incomplete");
        assert_eq!(
            last["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );
        assert_eq!(last["response"]["output"][0]["status"], "incomplete");

        let mut t = translator(4);
        let mut out = Vec::new();
        assert!(t
            .chunk_value(&chunk(json!({"content": "12345"}), None), &mut out)
            .is_err());
    }

    #[tokio::test]
    async fn an_answer_past_the_limit_fails_with_every_event_numbered() {
        let chunks: PayloadStream = Box::pin(futures_util::stream::iter(vec![
            Ok(Payload::Value(chunk(json!({"content": "Hi"}), None))),
            // Its reasoning fits, its text does not: the reasoning's events were
            // numbered before the failure.
            Ok(Payload::Value(chunk(
                json!({"reasoning_content": "ok", "content": "there, and on"}),
                None,
            ))),
        ]));
        let events: Vec<Value> = translate(chunks, translator(8))
            .filter_map(|e| async move { e.ok().map(|e| tree(&e)) })
            .collect()
            .await;
        for (i, event) in events.iter().enumerate() {
            assert_eq!(event["sequence_number"], i as u64, "{event}");
        }
        let last = events.last().unwrap();
        assert_eq!(last["type"], "response.failed");
        assert_eq!(last["response"]["error"]["code"], "server_error");
    }

    /// A request whose echo is big (an agent's instructions): each event that
    /// echoes it is a frame of its own, sent as written, and the body is every
    /// event framed in order, whatever the frames.
    #[tokio::test]
    async fn events_that_echo_a_big_request_are_frames_of_their_own() {
        let params = json!({"instructions": "Work in the repository. ".repeat(400)});
        let skeleton = answer::Skeleton::new(params.as_object().unwrap(), "up-1");
        let translator = Translator::new(skeleton, "c", 1 << 20, true);
        let chunks = || -> PayloadStream {
            let mut chunks: Vec<_> = ["Hi", " there", "."]
                .iter()
                .map(|text| Ok(Payload::Value(chunk(json!({"content": text}), None))))
                .collect();
            chunks.push(Ok(Payload::Value(chunk(json!({}), Some("stop")))));
            Box::pin(futures_util::stream::iter(chunks))
        };
        let events: Vec<Event> = translate(chunks(), translator)
            .map(Result::unwrap)
            .collect()
            .await;
        let framed = |event: &Event| {
            let json = std::str::from_utf8(&event.data).unwrap();
            format!("event: {}\ndata: {json}\n\n", event.kind)
        };
        let expected: String = events.iter().map(framed).collect();
        let big: Vec<String> = events
            .iter()
            .filter(|e| e.own_frame())
            .map(framed)
            .collect();
        let kinds: Vec<&str> = events
            .iter()
            .filter(|e| e.own_frame())
            .map(|e| e.kind.as_ref())
            .collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.completed"
            ]
        );

        let count = events.len();
        let events: EventStream = Box::pin(futures_util::stream::iter(events.into_iter().map(Ok)));
        let (summary_sender, summary) = std::sync::mpsc::channel();
        let frames: Vec<String> = encode(events, true, move |summary| {
            summary_sender.send(summary).unwrap();
        })
        .map(|frame| String::from_utf8(frame.unwrap().to_vec()).unwrap())
        .collect()
        .await;
        // Not `assert_eq!`: the texts are 30 KB.
        assert!(
            frames.concat() == expected,
            "the body is not the events framed in order"
        );
        for event in &big {
            assert!(
                frames.contains(event),
                "not a frame of its own: {}",
                &event[..40]
            );
        }
        // The small events between them still share frames.
        assert!(frames.len() < count, "{} frames", frames.len());
        let summary = summary.recv().unwrap();
        assert_eq!(summary.chunks, count);
        assert!(summary.completed);
        assert_eq!(
            summary.response.unwrap()["instructions"],
            params["instructions"]
        );
    }

    #[tokio::test]
    async fn a_failure_mid_stream_is_response_failed() {
        let chunks: PayloadStream = Box::pin(futures_util::stream::iter(vec![
            Ok(Payload::Value(chunk(json!({"content": "Hi"}), None))),
            Err(ApiError::upstream_failure("gone")),
        ]));
        let events = translate(chunks, translator(1 << 20));
        let body: Vec<u8> = encode(events, false, |summary| assert!(summary.error.is_some()))
            .map(|b| b.unwrap().to_vec())
            .concat()
            .await;
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with("event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,"), "{text}");
        assert!(
            text.contains("event: response.output_text.delta\n"),
            "{text}"
        );
        assert!(text.contains("event: response.failed\n"), "{text}");
        assert!(!text.contains("event: error\n"), "{text}");
        assert!(!text.contains("response.completed"), "{text}");

        // A pass-through stream cut short: an `error` event numbered after the rest.
        let raw: PayloadStream = Box::pin(futures_util::stream::iter(vec![
            Ok(Payload::Value(
                json!({"type": "response.created", "sequence_number": 0}),
            )),
            Err(ApiError::upstream_failure("gone")),
        ]));
        let body: Vec<u8> = encode(passed_through(raw, false), false, |_| {})
            .map(|b| b.unwrap().to_vec())
            .concat()
            .await;
        let text = String::from_utf8(body).unwrap();
        assert!(
            text.contains("event: error\ndata: {\"type\":\"error\",\"sequence_number\":1,"),
            "{text}"
        );
    }
}
