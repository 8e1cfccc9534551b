//! Anthropic stream events → OpenAI `chat.completion.chunk`s (reference §2.6, §2.11).
//!
//! A state machine over `message_start` … `message_stop` for one choice. Every
//! delta is forwarded as soon as it arrives; the only thing ever held back is the
//! answer of a wrapped `response_format` schema, which must be unwrapped whole.
//! A stream that ends before `message_stop` is a failure, never a fake finish.
//!
//! The events of every stream (`content_block_delta`, `content_block_stop`,
//! `message_delta`, `message_stop`, `ping`) are read into a typed view that borrows
//! from the event's text ([`FastEvent`]), and chunks are written as text
//! ([`ChunkWriter`]); the rest (`message_start`, block starts, errors, anything the
//! view does not know) takes the tree path, which decides exactly as before. The
//! view admits only members it knows, of the types it expects, so whatever it
//! accepts the tree path would have read the same way.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

use super::request::{JsonMode, JSON_TOOL_NAME};
use super::response::{
    error_event, finish_reason, json_answer, mid_stream_error, Usage, UsageCounts,
};
use crate::error::ApiError;
use crate::json_scan::{first_time, first_value, has_escape, refuse_unknown, StringMemo, Walk};
use crate::payload::{Payload, PayloadStream};
use crate::providers::chunk_text::{
    empty_delta, role_delta, string_delta, text_or_empty, write_str, ChunkWriter, Text,
};
use crate::sse::EventData;
use crate::streaming::{completion_id, json_chunk, unix_now, DataStream};

/// What an Anthropic content block (by its block index) turned into.
#[derive(Debug)]
enum Block {
    Text,
    /// Reasoning: its text and signature, kept for the next turn (`thinking`).
    Thinking {
        text: String,
        signature: String,
    },
    /// Redacted reasoning: nothing to show, its data kept for the next turn.
    Redacted(Value),
    /// A client tool call: its OpenAI tool-call index, and whether any argument
    /// text was sent (if not, `"{}"` is sent at the block's end).
    Tool {
        index: u64,
        args_seen: bool,
    },
    /// The `response_format` tool: its input is the message content. `buffer` is
    /// `Some` when the answer must be unwrapped first.
    Json {
        args_seen: bool,
        buffer: Option<String>,
    },
    Other,
}

/// The typed view of the events that make up most of a stream. Unknown members
/// (`message`, `content_block`, `error`, `choices`, ...) or members of another type
/// make it fail, and the event then takes the tree path.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
#[serde(deny_unknown_fields)]
struct FastEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Text<'a>>,
    index: Option<u64>,
    #[serde(borrow)]
    delta: Option<FastDelta<'a>>,
    usage: Option<UsageCounts>,
}

/// `delta` of a `content_block_delta` (text, thinking, signature, tool arguments)
/// or of a `message_delta` (stop reason).
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(Debug, PartialEq))]
#[serde(deny_unknown_fields)]
struct FastDelta<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Text<'a>>,
    #[serde(borrow)]
    text: Option<Text<'a>>,
    #[serde(borrow)]
    thinking: Option<Text<'a>>,
    #[serde(borrow)]
    signature: Option<Text<'a>>,
    #[serde(borrow)]
    partial_json: Option<Text<'a>>,
    #[serde(borrow)]
    stop_reason: Option<Text<'a>>,
    /// Sent by Anthropic, not used: admitted as a string or null, so that the view
    /// accepts only what the tree path would have parsed.
    #[serde(borrow)]
    #[allow(dead_code)]
    stop_sequence: Option<Text<'a>>,
}

impl<'a> FastEvent<'a> {
    /// The usual event (a delta, a block's or the message's end, a stop reason)
    /// read by walking its text with `json_scan` instead of serde's typed parse.
    /// `None` leaves the event to serde, which reads it or refuses it as before: a
    /// `usage`, a key with escapes, a member twice, an unknown member, a value of
    /// another type. What it returns is what serde returns for the same text
    /// (`walked_events_read_as_serde_reads_them`). `refused` is set when the text
    /// has a member serde's view refuses too (a key it does not know, written
    /// without escapes: `message`, `content_block`, ...), so that serde is not asked
    /// (making its error cost more than reading the event as a tree).
    fn walked(text: &'a str, refused: &mut bool) -> Option<FastEvent<'a>> {
        let mut walk = Walk::new(text);
        let mut event = FastEvent {
            kind: None,
            index: None,
            delta: None,
            usage: None,
        };
        let mut seen = [false; 4];
        walk.object(|walk, key| {
            match key {
                "type" => {
                    first_time(&mut seen[0])?;
                    event.kind = Text::or_null(walk)?;
                }
                "index" => {
                    first_time(&mut seen[1])?;
                    event.index = walk.u64_or_null()?;
                }
                "delta" => {
                    first_time(&mut seen[2])?;
                    if !walk.null() {
                        event.delta = Some(FastDelta::walked(walk, refused)?);
                    }
                }
                "usage" => {
                    first_time(&mut seen[3])?;
                    if !walk.null() {
                        event.usage = Some(UsageCounts::walked(walk, refused)?);
                    }
                }
                _ => return refuse_unknown(key, refused),
            }
            Some(())
        })?;
        walk.done()?;
        Some(event)
    }
}

impl<'a> FastDelta<'a> {
    fn walked(walk: &mut Walk<'a>, refused: &mut bool) -> Option<FastDelta<'a>> {
        let mut delta = FastDelta::default();
        let mut seen = [false; 7];
        walk.object(|walk, key| {
            let (slot, seen) = match key {
                "type" => (&mut delta.kind, &mut seen[0]),
                "text" => (&mut delta.text, &mut seen[1]),
                "thinking" => (&mut delta.thinking, &mut seen[2]),
                "signature" => (&mut delta.signature, &mut seen[3]),
                "partial_json" => (&mut delta.partial_json, &mut seen[4]),
                "stop_reason" => (&mut delta.stop_reason, &mut seen[5]),
                "stop_sequence" => (&mut delta.stop_sequence, &mut seen[6]),
                _ => return refuse_unknown(key, refused),
            };
            first_time(seen)?;
            *slot = Text::or_null(walk)?;
            Some(())
        })?;
        Some(delta)
    }
}

/// Which piece of a `content_block_delta` an [`EventReader`] follows.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Piece {
    Text,
    Thinking,
    PartialJson,
}

/// Reads a stream's delta events into the typed view: an event that is the last
/// one but for its piece of text (`delta.text`, `.thinking` or `.partial_json`: the
/// bulk of a stream, the same `type`, `index` and delta `type` each time) is read
/// by a comparison with the last ([`StringMemo`]), not walked again.
#[derive(Debug, Default, Clone)]
struct EventReader {
    /// The last event when it was a delta carrying one piece of text.
    last: StringMemo,
    piece: Option<Piece>,
    /// Where the last event's `type` and its delta's `type` lie in it.
    kind: Option<Range<usize>>,
    delta_kind: Option<Range<usize>>,
    index: Option<u64>,
}

impl EventReader {
    /// The view of `text` when it is the last event but for its piece of text.
    fn repeated<'a>(&self, text: &'a str) -> Option<FastEvent<'a>> {
        let span = self.last.string_span(text.as_bytes())?;
        let read = |string: &'a str| Text(Cow::Borrowed(string));
        let moved = |range: &Option<Range<usize>>| {
            Some(self.last.moved_text(text, range, &span)?.map(read))
        };
        let mut delta = FastDelta {
            kind: moved(&self.delta_kind)?,
            ..FastDelta::default()
        };
        let piece = read(StringMemo::text_at(text, span.clone())?);
        match self.piece? {
            Piece::Text => delta.text = Some(piece),
            Piece::Thinking => delta.thinking = Some(piece),
            Piece::PartialJson => delta.partial_json = Some(piece),
        }
        Some(FastEvent {
            kind: moved(&self.kind)?,
            index: self.index,
            delta: Some(delta),
            usage: None,
        })
    }

    /// Remember `text` when its view is a delta with one piece of text and its
    /// strings are as written (no escapes); forget it otherwise.
    fn keep(&mut self, text: &bytes::Bytes, view: Option<&FastEvent<'_>>) {
        if self.kept(text, view).is_none() {
            self.last.forget();
            self.piece = None;
        }
    }

    fn kept(&mut self, text: &bytes::Bytes, view: Option<&FastEvent<'_>>) -> Option<()> {
        let view = view?;
        let delta = view.delta.as_ref()?;
        if view.usage.is_some()
            || delta.signature.is_some()
            || delta.stop_reason.is_some()
            || delta.stop_sequence.is_some()
        {
            return None;
        }
        let (piece, value) = match (&delta.text, &delta.thinking, &delta.partial_json) {
            (Some(value), None, None) => (Piece::Text, value),
            (None, Some(value), None) => (Piece::Thinking, value),
            (None, None, Some(value)) => (Piece::PartialJson, value),
            _ => return None,
        };
        let Text(Cow::Borrowed(value)) = value else {
            return None;
        };
        if !self.last.remember(text, value) {
            return None;
        }
        let range =
            |string: &Option<Text<'_>>| self.last.range_of_read(string.as_ref().map(|t| &t.0));
        let (kind, delta_kind) = (range(&view.kind)?, range(&delta.kind)?);
        (self.kind, self.delta_kind) = (kind, delta_kind);
        (self.piece, self.index) = (Some(piece), view.index);
        Some(())
    }
}

/// `message_start`, and `content_block_start` of a text block, read by walking
/// their text: what the tree path (`Translator::on_value`) reads of them, every
/// other member skipped as it ignores them. The typed view refuses both (their
/// `message` and `content_block` members), and reading a `message_start` as a tree
/// cost about 10,000 instructions.
#[cfg_attr(test, derive(Debug, PartialEq))]
enum StartEvent<'a> {
    Message {
        id: Option<Text<'a>>,
        model: Option<Text<'a>>,
        usage: Option<UsageCounts>,
    },
    TextBlock {
        index: u64,
        text: Text<'a>,
    },
}

impl<'a> StartEvent<'a> {
    /// `None` leaves the event to the tree path: another event, a block other than
    /// text, a member given twice, a key with escapes, a top-level member other
    /// than `type`, `index`, `message` and `content_block` (the tree path reads
    /// `error`), a value of a type this walk does not take.
    fn walked(text: &'a str) -> Option<StartEvent<'a>> {
        let mut walk = Walk::new(text);
        let (mut kind, mut index, mut message, mut block) = (None, None, None, None);
        walk.object(|walk, key| {
            match key {
                "type" => {
                    first_value(&mut kind, || walk.string())?;
                }
                "index" => {
                    first_value(&mut index, || Some(walk.u64_or_null()?.unwrap_or(0)))?;
                }
                "message" => {
                    first_value(&mut message, || Self::message(walk))?;
                }
                "content_block" => {
                    first_value(&mut block, || Self::text_block(walk))?;
                }
                _ => return None,
            }
            Some(())
        })?;
        walk.done()?;
        match kind?.as_ref() {
            "message_start" => {
                let (id, model, usage) = message.unwrap_or_default();
                Some(StartEvent::Message { id, model, usage })
            }
            "content_block_start" => Some(StartEvent::TextBlock {
                index: index.unwrap_or(0),
                text: block?,
            }),
            _ => None,
        }
    }

    /// A `message_start`'s message: its `id` and `model` where they are strings,
    /// its usage counts.
    #[allow(clippy::type_complexity)]
    fn message(
        walk: &mut Walk<'a>,
    ) -> Option<(Option<Text<'a>>, Option<Text<'a>>, Option<UsageCounts>)> {
        let (mut id, mut model, mut usage) = (None, None, None);
        let mut seen = [false; 3];
        walk.object(|walk, key| {
            let slot = match key {
                "id" => {
                    first_time(&mut seen[0])?;
                    &mut id
                }
                "model" => {
                    first_time(&mut seen[1])?;
                    &mut model
                }
                "usage" => {
                    first_time(&mut seen[2])?;
                    if !walk.null() {
                        usage = Some(UsageCounts::lenient(walk)?);
                    }
                    return Some(());
                }
                _ if has_escape(key) => return None,
                _ => return walk.skip().map(drop),
            };
            // Not a string: not read, as in the tree path.
            *slot = if walk.at_string() {
                Some(Text(walk.string()?))
            } else {
                walk.skip()?;
                None
            };
            Some(())
        })?;
        Some((id, model, usage))
    }

    /// A `content_block` of type `text`: its text (`""` when it is not a string).
    fn text_block(walk: &mut Walk<'a>) -> Option<Text<'a>> {
        let (mut kind, mut text) = (None, None);
        walk.object(|walk, key| {
            match key {
                "type" => {
                    first_value(&mut kind, || walk.string())?;
                }
                "text" => {
                    first_value(&mut text, || {
                        Some(if walk.at_string() {
                            walk.string()?
                        } else {
                            walk.skip()?;
                            Cow::Borrowed("")
                        })
                    })?;
                }
                _ if has_escape(key) => return None,
                _ => {
                    walk.skip()?;
                }
            }
            Some(())
        })?;
        (kind? == "text").then(|| Text(text.unwrap_or_default()))
    }
}

/// The fields of a `content_block_delta`'s delta, `""` where absent.
struct DeltaFields<'a> {
    kind: &'a str,
    text: &'a str,
    thinking: &'a str,
    signature: &'a str,
    partial_json: &'a str,
}

/// The per-choice translation state.
#[derive(Debug)]
pub struct Translator {
    id: String,
    created: u64,
    model: String,
    connection: String,
    include_usage: bool,
    json_mode: Option<JsonMode>,
    started: bool,
    finished: bool,
    blocks: HashMap<u64, Block>,
    /// Next OpenAI tool-call index: counts client tool calls only, independent of
    /// Anthropic's block index (which also counts text and thinking blocks).
    next_tool: u64,
    /// The ids of the client tool calls, for the kept thinking blocks.
    tool_ids: Vec<String>,
    usage: Usage,
    stop_reason: Option<String>,
    /// Most bytes a wrapped JSON answer may gather before it is unwrapped
    /// (`max_response_body_mb`); past it the stream ends with the 502 of an answer
    /// too large.
    buffer_limit: usize,
    too_large: bool,
    writer: ChunkWriter,
    reader: EventReader,
}

type Out = VecDeque<Payload>;

impl Translator {
    /// Bound the wrapped JSON answer gathered for unwrapping (default: the default
    /// `max_response_body_mb`).
    pub fn with_buffer_limit(mut self, limit: usize) -> Self {
        self.buffer_limit = limit;
        self
    }

    pub fn new(
        model: &str,
        connection: &str,
        include_usage: bool,
        json_mode: Option<JsonMode>,
    ) -> Self {
        Translator {
            id: completion_id(),
            created: unix_now(),
            model: model.to_owned(),
            connection: connection.to_owned(),
            include_usage,
            json_mode,
            started: false,
            finished: false,
            blocks: HashMap::new(),
            next_tool: 0,
            tool_ids: Vec::new(),
            usage: Usage::default(),
            stop_reason: None,
            buffer_limit: crate::config::DEFAULT_MAX_RESPONSE_BODY,
            too_large: false,
            writer: ChunkWriter::default(),
            reader: EventReader::default(),
        }
    }

    /// Whether `message_stop` was seen.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// One chunk of the choice; `hint`: about how long the delta's text is.
    fn chunk(
        &mut self,
        hint: usize,
        delta: impl FnOnce(&mut Vec<u8>),
        finish: Option<&str>,
    ) -> Payload {
        let Translator {
            writer,
            id,
            created,
            model,
            ..
        } = self;
        writer.choice((id, *created, model), 0, hint, delta, finish)
    }

    /// The role chunk, once, before anything else of the choice.
    fn start(&mut self, out: &mut Out) {
        if !self.started {
            self.started = true;
            let chunk = self.chunk(0, role_delta, None);
            out.push_back(chunk);
        }
    }

    fn content(&mut self, text: &str, out: &mut Out) {
        if !text.is_empty() {
            self.start(out);
            let chunk = self.chunk(text.len(), string_delta("content", text), None);
            out.push_back(chunk);
        }
    }

    fn tool_args(&mut self, index: u64, args: &str, out: &mut Out) {
        // {"tool_calls":[{"index":N,"function":{"arguments":"..."}}]}
        let chunk = self.chunk(
            args.len() + 48,
            |buf| {
                buf.extend_from_slice(b"{\"tool_calls\":[{\"index\":");
                buf.extend_from_slice(itoa::Buffer::new().format(index).as_bytes());
                buf.extend_from_slice(b",\"function\":{\"arguments\":");
                write_str(buf, args);
                buf.extend_from_slice(b"}}]}");
            },
            None,
        );
        out.push_back(chunk);
    }

    /// [`Translator::on_event_data`] for an event given as text (the tests).
    #[cfg(test)]
    pub fn on_data(&mut self, data: &str, out: &mut Out) -> Result<(), ApiError> {
        self.on_event_data(&EventData::from(data.to_owned()), out)
    }

    /// Translate the next upstream event of the stream (one SSE `data`) into zero or
    /// more chunks; a delta that is the last one but for its text is read by a
    /// comparison with the last ([`EventReader`]).
    pub fn on_event_data(&mut self, event: &EventData, out: &mut Out) -> Result<(), ApiError> {
        if self.finished {
            return Ok(());
        }
        if let Some(view) = self.reader.repeated(event.as_str()) {
            if self.on_fast(&view, out) {
                return self.check_size();
            }
        }
        let data = event.as_str();
        let mut refused = false;
        let fast = FastEvent::walked(data, &mut refused).or_else(|| {
            (!refused)
                .then(|| serde_json::from_str(data).ok())
                .flatten()
        });
        self.reader.keep(event.bytes(), fast.as_ref());
        if let Some(event) = fast {
            if self.on_fast(&event, out) {
                return self.check_size();
            }
        } else if refused {
            if let Some(start) = StartEvent::walked(data) {
                match start {
                    StartEvent::Message { id, model, usage } => {
                        let text = |t: &Option<Text>| t.as_ref().map(|t| t.as_str().to_owned());
                        self.on_message_start(text(&id), text(&model), usage, out);
                    }
                    StartEvent::TextBlock { index, text } => {
                        self.on_text_block_start(index, text.as_str(), out)
                    }
                }
                return self.check_size();
            }
        }
        // What the shared reader decided for every provider: not JSON is a failure,
        // a top-level `error` member (without `choices`) reports the upstream's error.
        let event = match json_chunk(data) {
            Ok(event) => event,
            Err(ApiError::UpstreamRejected(body)) => {
                return Err(mid_stream_error(body.message, &body.error_type))
            }
            Err(err) => return Err(err),
        };
        self.on_value(&event, out)
    }

    /// `message_start`: the answer's id and model (unless chunks went out already),
    /// its first usage counts, and the role chunk.
    fn on_message_start(
        &mut self,
        id: Option<String>,
        model: Option<String>,
        usage: Option<UsageCounts>,
        out: &mut Out,
    ) {
        if !self.started {
            if let Some(id) = id {
                self.id = id;
                self.writer.reset();
            }
            if let Some(model) = model {
                self.model = model;
                self.writer.reset();
            }
        }
        if let Some(usage) = usage {
            self.usage.merge(usage);
        }
        self.start(out);
    }

    /// `content_block_start` of a text block (with any text it starts with).
    fn on_text_block_start(&mut self, index: u64, text: &str, out: &mut Out) {
        self.blocks.insert(index, Block::Text);
        self.content(text, out);
    }

    /// The events the typed view reads; false (nothing done) for the others.
    fn on_fast(&mut self, event: &FastEvent, out: &mut Out) -> bool {
        let index = event.index.unwrap_or(0);
        match text_or_empty(&event.kind) {
            "content_block_delta" => {
                let d = event.delta.as_ref();
                let fields = DeltaFields {
                    kind: d.map_or("", |d| text_or_empty(&d.kind)),
                    text: d.map_or("", |d| text_or_empty(&d.text)),
                    thinking: d.map_or("", |d| text_or_empty(&d.thinking)),
                    signature: d.map_or("", |d| text_or_empty(&d.signature)),
                    partial_json: d.map_or("", |d| text_or_empty(&d.partial_json)),
                };
                self.on_delta(index, &fields, out);
            }
            "content_block_stop" => self.on_block_stop(index, out),
            "message_delta" => {
                let reason = event.delta.as_ref().and_then(|d| d.stop_reason.as_ref());
                self.on_message_delta(reason.map(Text::as_str), event.usage);
            }
            "message_stop" => self.on_message_stop(out),
            "ping" => {}
            _ => return false,
        }
        true
    }

    /// Translate one upstream event (as a tree) into zero or more chunks.
    fn on_value(&mut self, event: &Value, out: &mut Out) -> Result<(), ApiError> {
        if self.finished {
            return Ok(());
        }
        let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
        match event.get("type").and_then(Value::as_str).unwrap_or("") {
            "message_start" => {
                let message = event.get("message").unwrap_or(&Value::Null);
                self.on_message_start(
                    str_of(message, "id"),
                    str_of(message, "model"),
                    message.get("usage").map(UsageCounts::of),
                    out,
                );
            }
            "content_block_start" => {
                let block = event.get("content_block").unwrap_or(&Value::Null);
                let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
                let text_of = |k: &str| block.get(k).and_then(Value::as_str).unwrap_or("");
                // Some Anthropic-compatible servers send the whole input at the start.
                let early_input = block
                    .get("input")
                    .filter(|i| i.as_object().is_some_and(|m| !m.is_empty()))
                    .map(Value::to_string);
                match kind {
                    "text" => self.on_text_block_start(index, text_of("text"), out),
                    "thinking" => {
                        self.blocks.insert(
                            index,
                            Block::Thinking {
                                text: text_of("thinking").to_owned(),
                                signature: text_of("signature").to_owned(),
                            },
                        );
                        self.reasoning(text_of("thinking"), out);
                    }
                    "redacted_thinking" => {
                        self.blocks.insert(index, Block::Redacted(block.clone()));
                    }
                    "tool_use" if self.json_mode.is_some() && text_of("name") == JSON_TOOL_NAME => {
                        let wrapped = self.json_mode.is_some_and(|m| m.wrapped);
                        self.blocks.insert(
                            index,
                            Block::Json {
                                args_seen: false,
                                buffer: wrapped.then(String::new),
                            },
                        );
                        self.start(out);
                        if let Some(input) = early_input {
                            self.json_fragment(index, &input, out);
                        }
                    }
                    "tool_use" => {
                        let tool_index = self.next_tool;
                        self.next_tool += 1;
                        if let Some(id) = block.get("id").and_then(Value::as_str) {
                            self.tool_ids.push(id.to_owned());
                        }
                        self.start(out);
                        let call = json!({"tool_calls": [{
                            "index": tool_index,
                            "id": block.get("id").cloned().unwrap_or(Value::Null),
                            "type": "function",
                            "function": {"name": text_of("name"), "arguments": ""},
                        }]});
                        let chunk = self.chunk(
                            128,
                            |buf| serde_json::to_writer(buf, &call).expect("JSON values serialize"),
                            None,
                        );
                        out.push_back(chunk);
                        let args_seen = early_input.is_some();
                        if let Some(input) = early_input {
                            self.tool_args(tool_index, &input, out);
                        }
                        self.blocks.insert(
                            index,
                            Block::Tool {
                                index: tool_index,
                                args_seen,
                            },
                        );
                    }
                    _ => {
                        self.blocks.insert(index, Block::Other);
                    }
                }
            }
            "content_block_delta" => {
                let delta = event.get("delta").unwrap_or(&Value::Null);
                let field = |k: &str| delta.get(k).and_then(Value::as_str).unwrap_or("");
                let fields = DeltaFields {
                    kind: field("type"),
                    text: field("text"),
                    thinking: field("thinking"),
                    signature: field("signature"),
                    partial_json: field("partial_json"),
                };
                self.on_delta(index, &fields, out);
            }
            "content_block_stop" => self.on_block_stop(index, out),
            "message_delta" => {
                let reason = event
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str);
                self.on_message_delta(reason, None);
                if let Some(usage) = event.get("usage") {
                    self.usage.update(usage);
                }
            }
            "message_stop" => self.on_message_stop(out),
            "error" => return Err(error_event(event)),
            // ping, and event types added after this was written.
            _ => {}
        }
        self.check_size()
    }

    fn check_size(&self) -> Result<(), ApiError> {
        if self.too_large {
            return Err(crate::upstream::too_large_error(self.buffer_limit));
        }
        Ok(())
    }

    fn on_delta(&mut self, index: u64, delta: &DeltaFields, out: &mut Out) {
        match delta.kind {
            "text_delta" => self.content(delta.text, out),
            "thinking_delta" => {
                if let Some(Block::Thinking { text, .. }) = self.blocks.get_mut(&index) {
                    text.push_str(delta.thinking);
                }
                self.reasoning(delta.thinking, out)
            }
            "signature_delta" => {
                if let Some(Block::Thinking { signature, .. }) = self.blocks.get_mut(&index) {
                    signature.push_str(delta.signature);
                }
            }
            "input_json_delta" => {
                let fragment = delta.partial_json;
                if fragment.is_empty() {
                    return;
                }
                match self.blocks.get_mut(&index) {
                    Some(Block::Tool {
                        index: ti,
                        args_seen,
                    }) => {
                        *args_seen = true;
                        let ti = *ti;
                        self.tool_args(ti, fragment, out);
                    }
                    Some(Block::Json { .. }) => self.json_fragment(index, fragment, out),
                    _ => {}
                }
            }
            // citations_delta, future delta types.
            _ => {}
        }
    }

    fn on_block_stop(&mut self, index: u64, out: &mut Out) {
        match self.blocks.get(&index) {
            Some(Block::Tool {
                index: ti,
                args_seen: false,
            }) => {
                // A tool without arguments may get no input_json_delta at all;
                // clients parse `arguments`, so they get "{}" rather than "".
                let ti = *ti;
                self.tool_args(ti, "{}", out);
            }
            Some(Block::Json { args_seen, buffer }) => {
                let text = match (buffer, self.json_mode) {
                    (Some(buffer), Some(mode)) if !buffer.is_empty() => {
                        match serde_json::from_str::<Value>(buffer) {
                            Ok(input) => json_answer(&input, mode),
                            Err(_) => buffer.clone(),
                        }
                    }
                    _ if !args_seen => "{}".to_owned(),
                    _ => String::new(),
                };
                self.content(&text, out);
            }
            _ => {}
        }
    }

    fn on_message_delta(&mut self, stop_reason: Option<&str>, usage: Option<UsageCounts>) {
        if let Some(reason) = stop_reason {
            self.stop_reason = Some(reason.to_owned());
        }
        if let Some(usage) = usage {
            self.usage.merge(usage);
        }
    }

    fn on_message_stop(&mut self, out: &mut Out) {
        self.finished = true;
        self.remember_thinking();
        self.start(out);
        let mut finish = finish_reason(self.stop_reason.as_deref(), &self.connection);
        if self.next_tool > 0 {
            finish = "tool_calls";
        } else if finish == "tool_calls" {
            // Only the JSON answer tool was called: that is a plain answer.
            finish = "stop";
        }
        let chunk = self.chunk(0, empty_delta, Some(finish));
        out.push_back(chunk);
        if self.include_usage {
            let usage = self.usage;
            let chunk = self
                .writer
                .usage_only((&self.id, self.created, &self.model), |out| {
                    usage.write_openai(out)
                });
            out.push_back(chunk);
        }
    }

    /// Keep the answer's signed thinking blocks, in their order, for the next turn.
    fn remember_thinking(&mut self) {
        let mut indexed: Vec<(u64, Value)> = self
            .blocks
            .iter()
            .filter_map(|(i, block)| {
                let value = match block {
                    Block::Thinking { text, signature } => json!(
                        {"type": "thinking", "thinking": text, "signature": signature}),
                    Block::Redacted(value) => value.clone(),
                    _ => return None,
                };
                super::thinking::signed_block(&value).map(|v| (*i, v))
            })
            .collect();
        if indexed.is_empty() {
            return;
        }
        indexed.sort_by_key(|(i, _)| *i);
        super::thinking::remember(
            indexed.into_iter().map(|(_, v)| v).collect(),
            self.tool_ids.iter().map(String::as_str),
        );
    }

    fn reasoning(&mut self, text: &str, out: &mut Out) {
        if !text.is_empty() {
            self.start(out);
            let chunk = self.chunk(text.len(), string_delta("reasoning_content", text), None);
            out.push_back(chunk);
        }
    }

    /// Part of the JSON answer: forwarded as content, or kept for unwrapping.
    fn json_fragment(&mut self, index: u64, fragment: &str, out: &mut Out) {
        if let Some(Block::Json { args_seen, buffer }) = self.blocks.get_mut(&index) {
            *args_seen = true;
            if let Some(buffer) = buffer {
                if buffer.len().saturating_add(fragment.len()) > self.buffer_limit {
                    self.too_large = true;
                } else {
                    buffer.push_str(fragment);
                }
                return;
            }
        }
        self.content(fragment, out);
    }
}

/// Translate an Anthropic event stream (each event's data, from `sse_data_events`)
/// into chunks.
pub fn translate(events: DataStream, translator: Translator) -> PayloadStream {
    Box::pin(Translate {
        events: Some(events),
        translator,
        pending: VecDeque::new(),
        done: false,
    })
}

/// The stream [`translate`] returns: polled in place (an `unfold` moved its whole
/// state in and out of a future for every chunk).
struct Translate {
    /// `None` once the rest of the body was handed to [`read_to_end`].
    events: Option<DataStream>,
    translator: Translator,
    pending: Out,
    done: bool,
}

impl Stream for Translate {
    type Item = Result<Payload, ApiError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let st = self.get_mut();
        loop {
            if let Some(chunk) = st.pending.pop_front() {
                return Poll::Ready(Some(Ok(chunk)));
            }
            if st.done {
                return Poll::Ready(None);
            }
            let Some(events) = st.events.as_mut() else {
                return Poll::Ready(None);
            };
            let failure = match futures_util::ready!(events.poll_next_unpin(cx)) {
                Some(Ok(data)) => match st.translator.on_event_data(&data, &mut st.pending) {
                    Ok(()) => {
                        // Nothing comes after message_stop: the client's stream ends
                        // without waiting for the body's end, which is read off the
                        // client's path so that the connection is kept.
                        if st.translator.is_finished() {
                            st.done = true;
                            if let Some(events) = st.events.take() {
                                read_to_end(events);
                            }
                        }
                        continue;
                    }
                    Err(err) => err,
                },
                Some(Err(err)) => err,
                None if st.translator.is_finished() => return Poll::Ready(None),
                None => ApiError::upstream_failure(format!(
                    "connection '{}': the Anthropic stream ended before message_stop",
                    st.translator.connection
                )),
            };
            st.done = true;
            st.events = None;
            return Poll::Ready(Some(Err(failure)));
        }
    }
}

/// How long the rest of a body may take after `message_stop` before its connection
/// is closed instead of kept.
const AFTER_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Read what is left of an upstream stream after `message_stop` (normally only the
/// end of the chunked body, already received), so that its keep-alive connection
/// goes back to the pool: dropped unread, the connection was closed, and every
/// translated stream opened a new one (connect, accept and a socket in TIME_WAIT
/// per stream). What has not arrived yet is awaited in a task of its own, bounded.
fn read_to_end(mut events: DataStream) {
    use futures_util::FutureExt;
    loop {
        match events.next().now_or_never() {
            Some(Some(_)) => continue,
            Some(None) => return,
            None => break,
        }
    }
    tokio::spawn(async move {
        let _ = tokio::time::timeout(AFTER_STOP_GRACE, async {
            while events.next().await.is_some() {}
        })
        .await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Translator {
        /// An event's text through [`Translator::on_data`], its chunks as trees.
        fn on_event(&mut self, event: &Value) -> Result<Vec<Value>, ApiError> {
            let mut out = VecDeque::new();
            self.on_data(&event.to_string(), &mut out)?;
            Ok(out.into_iter().map(Payload::into_value).collect())
        }
    }

    #[test]
    fn delta_events_read_by_comparison_read_as_walked() {
        let templates = [
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"@"}}"#,
            r#"{"delta":{"thinking":"@","type":"thinking_delta"},"type":"content_block_delta","index":1}"#,
            r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"@"}}"#,
            r#"{"type":"content_block_delta","delta":{"text":"@","type":null}}"#,
            r#"{"type":"content_block_d\u0065lta","index":0,"delta":{"type":"text_delta","text":"@"}}"#,
        ];
        fn walked(text: &str) -> Option<FastEvent<'_>> {
            let mut refused = false;
            FastEvent::walked(text, &mut refused).or_else(|| {
                (!refused)
                    .then(|| serde_json::from_str(text).ok())
                    .flatten()
            })
        }
        fn text(bytes: &bytes::Bytes) -> &str {
            std::str::from_utf8(bytes).expect("UTF-8")
        }
        let compared = crate::json_scan::check_string_memo_reader(
            &templates,
            &["\",\"stop_reason\":\"end_turn"],
            |reader: &mut EventReader, bytes| {
                if let Some(view) = reader.repeated(text(bytes)) {
                    return format!("{:?}", Some(view));
                }
                let view = walked(text(bytes));
                reader.keep(bytes, view.as_ref());
                format!("{view:?}")
            },
            |bytes| format!("{:?}", walked(text(bytes))),
            |reader, bytes| reader.repeated(text(bytes)).is_some(),
        );
        assert!(compared > 150, "{compared}");
    }

    /// `event` through `fast` by [`Translator::on_data`] (the walks and typed views
    /// first) and through `tree` by the tree path: the same chunks, byte for byte,
    /// or the same error.
    fn translated_alike(fast: &mut Translator, tree: &mut Translator, event: &str) {
        let (mut a, mut b) = (VecDeque::new(), VecDeque::new());
        let ra = fast.on_data(event, &mut a);
        let rb = match json_chunk(event) {
            Ok(value) => tree.on_value(&value, &mut b),
            Err(ApiError::UpstreamRejected(body)) => {
                Err(mid_stream_error(body.message, &body.error_type))
            }
            Err(err) => Err(err),
        };
        match (ra, rb) {
            (Ok(()), Ok(())) => {}
            (Err(ea), Err(eb)) => {
                assert_eq!(ea.status(), eb.status(), "{event}");
                assert_eq!(ea.error_object(), eb.error_object(), "{event}");
            }
            (ra, rb) => panic!("{event}: {ra:?} against {rb:?}"),
        }
        assert_eq!(texts(a), texts(b), "{event}");
    }

    fn texts(out: Out) -> Vec<String> {
        out.into_iter()
            .map(|p| String::from_utf8(p.into_json_bytes().to_vec()).unwrap())
            .collect()
    }

    /// The typed view and the tree path translate every event alike: same chunks,
    /// byte for byte, same errors, same state after it (events of a whole stream,
    /// and odd ones that the view must leave to the tree or read the same way).
    /// The walk reads an event exactly as serde's typed parse does, or leaves it
    /// to serde: samples of every shape, then every truncation, one-byte deletion
    /// and one-byte replacement of each.
    #[test]
    fn walked_events_read_as_serde_reads_them() {
        let samples = [
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"tok"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"q\":"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hm"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"c2ln"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null}}"#,
            r#"{"type":"message_stop"}"#,
            r#"{"type":"ping"}"#,
            r#" { "type" : "content_block_delta" , "index" : 2 , "delta" : { "text" : "x\u00e9\n" } } "#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":5}}"#,
            r#"{"type":"message_delta","usage":{"input_tokens":1,"cache_read_input_tokens":null,"cache_creation_input_tokens":2,"output_tokens":3},"delta":{"stop_reason":null}}"#,
            r#"{"type":"message_start","message":{"id":"m"}}"#,
            r#"{"type":"message_delta","usage":{"output_tokens":5,"server_tool_use":{}}}"#,
            r#"{"type":"message_delta","usage":null,"usage":null}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"text":"a","text":"b"}}"#,
            r#"{"ty\u0070e":"ping"}"#,
            r#"{"type":"content_block_delta","index":-1,"delta":null}"#,
            r#"{"type":"content_block_delta","index":1.5}"#,
            r#"{"type":"content_block_delta","index":18446744073709551616}"#,
            r#"{"type":7}"#,
            r#"{"type":"content_block_delta","delta":{"text":["x"]}}"#,
            r#"{"type":"content_block_delta","delta":{"text":"\ud800"}}"#,
            r#"{"type":null,"index":null,"delta":{"type":null}}"#,
            r#"{}"#,
            r#"[]"#,
        ];
        let edits = b"\"\\{[10- n";
        let texts = crate::json_scan::cut_and_edited(&samples, edits);
        let (mut walked, mut refused_both) = (0, 0);
        for text in &texts {
            let mut refused = false;
            let serde = serde_json::from_str::<FastEvent>(text);
            if let Some(event) = FastEvent::walked(text, &mut refused) {
                walked += 1;
                assert_eq!(Some(event), serde.ok(), "{text}");
            } else if refused {
                // What the walk calls refused, serde refuses: it is not asked.
                assert!(serde.is_err(), "{text}");
                refused_both += 1;
            }
        }
        // The walk does read the usual events (not everything left to serde).
        assert!(walked > 500, "{walked} of {}", texts.len());
        assert!(refused_both > 100, "{refused_both}");
        for sample in &samples[..11] {
            assert!(FastEvent::walked(sample, &mut false).is_some(), "{sample}");
        }
    }

    #[test]
    fn typed_view_and_tree_path_agree() {
        let events = [
            r#"{"type":"message_start","message":{"id":"msg_1","model":"claude-x","usage":{"input_tokens":3}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"plain"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"esc \"q\" \n \u00e9 \ud83d\ude00 \u2028 </x>"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"ünï 😀"}}"#,
            r#"{ "index" : 0 , "delta" : { "text" : "spaced" , "type" : "text_delta" } , "type" : "content_block_delta" }"#,
            r#"{"type":"content_block_delta","index":null,"delta":{"type":"text_delta","text":"null index"}}"#,
            r#"{"type":"content_block_delta","index":"0","delta":{"type":"text_delta","text":"string index"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":7}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":null}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":null}"#,
            r#"{"type":"content_block_delta","index":0}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"dup","text":"licate"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x","extra":[1,{"a":"\ud800"}]}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"},"extra":1e400}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"citations_delta","citation":{}}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"\ud800"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"},"error":null}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"},"error":{"message":"m"},"choices":[]}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}} trailing"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"some_future_event","index":2}"#,
            r#"{"type":7}"#,
            r#"[1]"#,
            r#"{}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"thinking","thinking":""}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"signature_delta","signature":"sig"}}"#,
            r#"{"type":"content_block_stop","index":1}"#,
            r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}"#,
            r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#,
            r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"1}"}}"#,
            r#"{"type":"content_block_stop","index":2}"#,
            r#"{"type":"content_block_start","index":3,"content_block":{"type":"tool_use","id":5,"name":"g","input":{}}}"#,
            r#"{"type":"content_block_stop","index":3}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":9}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":null},"usage":{"output_tokens":10,"server_tool_use":{"web_search_requests":1}}}"#,
            r#"{"type":"message_delta","usage":{"output_tokens":1.5}}"#,
            r#"{"type":"message_delta","usage":null}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":4,"cache_read_input_tokens":2,"cache_creation_input_tokens":1,"output_tokens":11}}"#,
            r#"{"type":"error"}"#,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#,
            r#"not json"#,
            r#"{"type":"message_stop"}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"after the end"}}"#,
        ];
        let mut fast = Translator::new("m", "c", true, None);
        let mut tree = Translator::new("m", "c", true, None);
        tree.id = fast.id.clone();
        tree.created = fast.created;
        for event in events {
            translated_alike(&mut fast, &mut tree, event);
            assert_eq!(
                format!(
                    "{:?}",
                    (
                        &fast.blocks.len(),
                        fast.usage,
                        &fast.stop_reason,
                        fast.finished
                    )
                ),
                format!(
                    "{:?}",
                    (
                        &tree.blocks.len(),
                        tree.usage,
                        &tree.stop_reason,
                        tree.finished
                    )
                ),
                "{event}"
            );
        }
        assert!(fast.is_finished());
    }

    /// `message_start` and text `content_block_start` events read by the walk give
    /// what the tree path gives (chunks byte for byte, errors, and the state
    /// after: id, model, usage, blocks), for samples and every truncation, one-byte
    /// deletion and replacement of each; and the walk reads a good share of them.
    #[test]
    fn walked_start_events_translate_as_the_tree_path_does() {
        let samples = [
            r#"{"type":"message_start","message":{"id":"msg_01","type":"message","role":"assistant","model":"claude-x-1","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":3,"cache_creation":{"ephemeral_5m_input_tokens":0},"output_tokens":1,"service_tier":"standard"}}}"#,
            r#"{"message":{"usage":{"input_tokens":7.5,"output_tokens":"2"},"model":5,"id":null},"type":"message_start","index":3}"#,
            r#"{"type":"message_start","message":{"id":"m\u00e9\"","usage":null}}"#,
            r#"{"type":"message_start"}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_start","index":2,"content_block":{"type":"text","text":"Hi \"x\"\n","citations":[]}}"#,
            r#"{"content_block":{"text":7,"type":"text"},"type":"content_block_start","index":null}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"thinking","thinking":""}}"#,
        ];
        let edits = b"\"\\{[10-: n";
        let variants = crate::json_scan::cut_and_edited(&samples, edits);
        let mut walked = 0;
        for text in &variants {
            if StartEvent::walked(text).is_some() {
                walked += 1;
            }
            let mut fast = Translator::new("m", "c", true, None);
            let mut tree = Translator::new("m", "c", true, None);
            tree.id = fast.id.clone();
            tree.created = fast.created;
            // Counts from before, which a count that is not one must leave alone.
            fast.usage = Usage {
                input: 9,
                cache_read: 8,
                cache_creation: 7,
                output: 6,
            };
            tree.usage = fast.usage;
            translated_alike(&mut fast, &mut tree, text);
            let state =
                |t: &Translator| format!("{:?}", (&t.id, &t.model, t.usage, &t.blocks, t.started));
            assert_eq!(state(&fast), state(&tree), "{text}");
        }
        assert!(walked > 300, "{walked} of {}", variants.len());
        for sample in &samples[..7] {
            assert!(StartEvent::walked(sample).is_some(), "{sample}");
        }
        assert!(StartEvent::walked(samples[7]).is_none());
    }

    /// The events that make up most of a stream, as Anthropic writes them, are read
    /// by the typed view (the others by the tree path).
    #[test]
    fn common_events_take_the_typed_view() {
        for event in [
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi \"there\"\n"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"x"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"s"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#,
            r#"{"type":"message_stop"}"#,
            r#"{"type":"ping"}"#,
        ] {
            let view = serde_json::from_str::<FastEvent>(event);
            assert!(view.is_ok(), "{event}: {:?}", view.err());
        }
    }

    /// The chunks' text is what serializing the trees built before gave.
    #[test]
    fn chunks_are_the_former_trees_serialized() {
        let mut t = Translator::new("m", "c", false, None);
        t.id = "msg_1".into();
        t.created = 5;
        let mut out = VecDeque::new();
        t.start(&mut out);
        t.content("a\"b", &mut out);
        t.tool_args(2, "{\"x\":1}", &mut out);
        t.reasoning("r", &mut out);
        let chunk = |delta: Value| {
            json!({"id": "msg_1", "object": "chat.completion.chunk", "created": 5, "model": "m",
                   "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]})
            .to_string()
        };
        assert_eq!(
            texts(out),
            [
                chunk(json!({"role": "assistant", "content": ""})),
                chunk(json!({"content": "a\"b"})),
                chunk(
                    json!({"tool_calls": [{"index": 2, "function": {"arguments": "{\"x\":1}"}}]})
                ),
                chunk(json!({"reasoning_content": "r"})),
            ]
        );
    }

    fn run(events: &[Value], include_usage: bool, json_mode: Option<JsonMode>) -> Vec<Value> {
        let mut t = Translator::new("m", "c", include_usage, json_mode);
        let mut out = Vec::new();
        for e in events {
            out.extend(t.on_event(e).unwrap());
        }
        assert!(t.is_finished());
        out
    }

    fn start() -> Value {
        json!({"type": "message_start", "message": {"id": "msg_1", "model": "claude-real", "content": [],
               "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 1}}})
    }

    fn end(reason: &str) -> Vec<Value> {
        vec![
            json!({"type": "message_delta", "delta": {"stop_reason": reason}, "usage": {"output_tokens": 9}}),
            json!({"type": "message_stop"}),
        ]
    }

    #[test]
    fn text_and_two_tools_with_independent_indexes() {
        let mut events = vec![
            start(),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "ping"}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking."}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_a", "name": "w", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Os"}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "lo\"}"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_b", "name": "t", "input": {}}}),
            json!({"type": "content_block_stop", "index": 2}),
        ];
        events.extend(end("tool_use"));
        let out = run(&events, true, None);
        let deltas: Vec<&Value> = out
            .iter()
            .filter_map(|c| c["choices"].get(0).map(|ch| &ch["delta"]))
            .collect();
        assert_eq!(deltas[0], &json!({"role": "assistant", "content": ""}));
        assert_eq!(deltas[1], &json!({"content": "Checking."}));
        assert_eq!(
            deltas[2]["tool_calls"][0],
            json!({"index": 0, "id": "toolu_a", "type": "function", "function": {"name": "w", "arguments": ""}})
        );
        assert_eq!(
            deltas[3]["tool_calls"][0],
            json!({"index": 0, "function": {"arguments": "{\"city\": \"Os"}})
        );
        assert_eq!(
            deltas[4]["tool_calls"][0],
            json!({"index": 0, "function": {"arguments": "lo\"}"}})
        );
        assert_eq!(deltas[5]["tool_calls"][0]["index"], 1);
        assert_eq!(
            deltas[6]["tool_calls"][0],
            json!({"index": 1, "function": {"arguments": "{}"}})
        );
        assert_eq!(
            out[out.len() - 2]["choices"][0]["finish_reason"],
            "tool_calls"
        );
        let usage = out.last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["prompt_tokens"], 15);
        assert_eq!(usage["usage"]["completion_tokens"], 9);
        assert!(out
            .iter()
            .all(|c| c["id"] == "msg_1" && c["model"] == "claude-real"));
    }

    #[test]
    fn thinking_and_no_usage_chunk_unless_asked() {
        let mut events = vec![
            start(),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "some_future_event"}),
        ];
        events.extend(end("max_tokens"));
        let out = run(&events, false, None);
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[1]["choices"][0]["delta"],
            json!({"reasoning_content": "hmm"})
        );
        assert_eq!(out[2]["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn json_answers_stream_as_content() {
        let tool = |i: u64| json!({"type": "content_block_start", "index": i, "content_block": {"type": "tool_use", "id": "t", "name": JSON_TOOL_NAME, "input": {}}});
        let frag = |s: &str| json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": s}});
        let mut events = vec![
            start(),
            tool(0),
            frag("{\"a\":"),
            frag("1}"),
            json!({"type": "content_block_stop", "index": 0}),
        ];
        events.extend(end("tool_use"));
        let out = run(&events, false, Some(JsonMode { wrapped: false }));
        let text: Vec<&str> = out
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, ["", "{\"a\":", "1}"]);
        assert_eq!(out.last().unwrap()["choices"][0]["finish_reason"], "stop");

        let mut events = vec![
            start(),
            tool(0),
            frag("{\"values\":"),
            frag("[1]}"),
            json!({"type": "content_block_stop", "index": 0}),
        ];
        events.extend(end("tool_use"));
        let out = run(&events, false, Some(JsonMode { wrapped: true }));
        let text: String = out
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "[1]");

        // A wrapped answer is gathered whole before it is unwrapped: bounded.
        let mut t = Translator::new("m", "c", false, Some(JsonMode { wrapped: true }))
            .with_buffer_limit(16);
        for event in [start(), tool(0), frag("{\"values\":")] {
            t.on_event(&event).unwrap();
        }
        let error = t.on_event(&frag("[1, 2, 3]}")).unwrap_err();
        assert_eq!(
            error.error_object()["code"],
            crate::upstream::RESPONSE_TOO_LARGE
        );
    }

    #[tokio::test]
    async fn early_end_is_an_error() {
        let events: DataStream = Box::pin(futures_util::stream::iter(vec![Ok(start()
            .to_string()
            .into())]));
        let out: Vec<Result<Payload, ApiError>> =
            translate(events, Translator::new("m", "c", false, None))
                .collect()
                .await;
        assert_eq!(out.len(), 2);
        assert!(out[0].is_ok());
        assert!(matches!(out[1], Err(ApiError::UpstreamFailure { .. })));
    }
}
