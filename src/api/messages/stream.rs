//! Streams on the Anthropic door: canonical chunks → Anthropic events (translated
//! connections), and Anthropic events → the client's SSE body (every connection).
//!
//! The event grammar Anthropic clients parse: `message_start`, then for each
//! content block `content_block_start`, `content_block_delta`s (`text_delta`,
//! `thinking_delta`, `input_json_delta`) and `content_block_stop`, then
//! `message_delta` (stop reason, usage) and `message_stop`. A failure after the
//! stream started is an `event: error`. Translation is event by event with bounded
//! state: each chunk's pieces go out as soon as it arrives.
//!
//! Translation reads each chunk through a borrowed view ([`fast::Chunk`], no JSON
//! tree) and writes its events straight into the buffer that goes to the client
//! ([`Event::write_json`]); trees of the events ([`Event::to_value`]) are made
//! only for the loggers' copy of the message. Both renderings are held to the
//! same bytes by the tests below.

use std::borrow::Cow;

use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use serde_json::{json, Map, Value};

use super::answer;
use super::fast::{self, Chunk};
use crate::error::ApiError;
use crate::payload::{Payload, PayloadStream};
use crate::streaming::StreamSummary;

/// The open content block.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Block {
    None,
    Thinking,
    Text,
    /// A tool call: the upstream's tool call index.
    Tool(u64),
}

/// One Anthropic event made by the translation.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    MessageStart {
        id: &'a str,
        model: &'a str,
    },
    BlockStart {
        index: u64,
        block: BlockStart<'a>,
    },
    Delta {
        index: u64,
        kind: DeltaKind,
        text: &'a str,
    },
    BlockStop {
        index: u64,
    },
    MessageDelta {
        stop_reason: &'static str,
        usage: Option<fast::Usage>,
    },
    MessageStop,
}

/// The `content_block` of a `content_block_start`.
#[derive(Debug, Clone, Copy)]
pub enum BlockStart<'a> {
    Thinking,
    Text,
    ToolUse { id: &'a str, name: &'a str },
}

/// The kind of a `content_block_delta`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DeltaKind {
    Thinking,
    Text,
    InputJson,
}

impl DeltaKind {
    /// The delta's `type` and the member its text goes in.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            DeltaKind::Thinking => ("thinking_delta", "thinking"),
            DeltaKind::Text => ("text_delta", "text"),
            DeltaKind::InputJson => ("input_json_delta", "partial_json"),
        }
    }
}

/// OpenAI usage counts → Anthropic's `usage` numbers (input tokens without the
/// cached ones, which are reported as cache reads): what [`answer::usage`] makes
/// of the same `usage` object.
fn usage_numbers(usage: Option<&fast::Usage>) -> (u64, u64, u64) {
    let prompt = usage.and_then(|u| u.prompt_tokens).unwrap_or(0);
    let cached = usage.and_then(|u| u.cached_tokens).unwrap_or(0).min(prompt);
    let output = usage.and_then(|u| u.completion_tokens).unwrap_or(0);
    (prompt - cached, output, cached)
}

/// A JSON string (escaped as serde_json escapes it).
fn write_str(s: &str, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

fn write_u64(n: u64, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, &n).expect("writing to a Vec cannot fail");
}

impl Event<'_> {
    /// The event's `type`, which also names its SSE event.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::MessageStart { .. } => "message_start",
            Event::BlockStart { .. } => "content_block_start",
            Event::Delta { .. } => "content_block_delta",
            Event::BlockStop { .. } => "content_block_stop",
            Event::MessageDelta { .. } => "message_delta",
            Event::MessageStop => "message_stop",
        }
    }

    /// The event as a tree, for the loggers' copy of the message.
    pub fn to_value(&self) -> Value {
        match *self {
            Event::MessageStart { id, model } => json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
            Event::BlockStart { index, block } => {
                let content_block = match block {
                    BlockStart::Thinking => {
                        json!({"type": "thinking", "thinking": "", "signature": ""})
                    }
                    BlockStart::Text => json!({"type": "text", "text": ""}),
                    BlockStart::ToolUse { id, name } => {
                        json!({"type": "tool_use", "id": id, "name": name, "input": {}})
                    }
                };
                json!({"type": "content_block_start", "index": index, "content_block": content_block})
            }
            Event::Delta { index, kind, text } => {
                let (kind, field) = kind.names();
                let mut delta = Map::with_capacity(2);
                delta.insert("type".into(), kind.into());
                delta.insert(field.into(), text.into());
                json!({"type": "content_block_delta", "index": index, "delta": delta})
            }
            Event::BlockStop { index } => json!({"type": "content_block_stop", "index": index}),
            Event::MessageDelta { stop_reason, usage } => {
                let (input, output, cached) = usage_numbers(usage.as_ref());
                let mut usage = Map::new();
                usage.insert("input_tokens".into(), input.into());
                usage.insert("output_tokens".into(), output.into());
                if cached > 0 {
                    usage.insert("cache_read_input_tokens".into(), cached.into());
                }
                json!({"type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                    "usage": usage})
            }
            Event::MessageStop => json!({"type": "message_stop"}),
        }
    }

    /// Append the event's JSON text: the bytes serde_json writes for
    /// [`Event::to_value`], without the tree.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match *self {
            Event::MessageStart { id, model } => {
                out.extend_from_slice(br#"{"type":"message_start","message":{"id":"#);
                write_str(id, out);
                out.extend_from_slice(br#","type":"message","role":"assistant","model":"#);
                write_str(model, out);
                out.extend_from_slice(
                    br#","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":0,"output_tokens":0}}}"#,
                );
            }
            Event::BlockStart { index, block } => {
                out.extend_from_slice(br#"{"type":"content_block_start","index":"#);
                write_u64(index, out);
                out.extend_from_slice(br#","content_block":"#);
                match block {
                    BlockStart::Thinking => out
                        .extend_from_slice(br#"{"type":"thinking","thinking":"","signature":""}"#),
                    BlockStart::Text => out.extend_from_slice(br#"{"type":"text","text":""}"#),
                    BlockStart::ToolUse { id, name } => {
                        out.extend_from_slice(br#"{"type":"tool_use","id":"#);
                        write_str(id, out);
                        out.extend_from_slice(br#","name":"#);
                        write_str(name, out);
                        out.extend_from_slice(br#","input":{}}"#);
                    }
                }
                out.push(b'}');
            }
            Event::Delta { index, kind, text } => {
                let (kind, field) = kind.names();
                out.extend_from_slice(br#"{"type":"content_block_delta","index":"#);
                write_u64(index, out);
                out.extend_from_slice(br#","delta":{"type":""#);
                out.extend_from_slice(kind.as_bytes());
                out.extend_from_slice(br#"",""#);
                out.extend_from_slice(field.as_bytes());
                out.extend_from_slice(br#"":"#);
                write_str(text, out);
                out.extend_from_slice(b"}}");
            }
            Event::BlockStop { index } => {
                out.extend_from_slice(br#"{"type":"content_block_stop","index":"#);
                write_u64(index, out);
                out.push(b'}');
            }
            Event::MessageDelta { stop_reason, usage } => {
                let (input, output, cached) = usage_numbers(usage.as_ref());
                out.extend_from_slice(br#"{"type":"message_delta","delta":{"stop_reason":"#);
                write_str(stop_reason, out);
                out.extend_from_slice(br#","stop_sequence":null},"usage":{"input_tokens":"#);
                write_u64(input, out);
                out.extend_from_slice(br#","output_tokens":"#);
                write_u64(output, out);
                if cached > 0 {
                    out.extend_from_slice(br#","cache_read_input_tokens":"#);
                    write_u64(cached, out);
                }
                out.extend_from_slice(b"}}");
            }
            Event::MessageStop => out.extend_from_slice(br#"{"type":"message_stop"}"#),
        }
    }
}

/// Chunks → events, one chunk at a time.
pub struct Translator {
    /// Made when the message starts (from the first chunk's id, or a new one).
    id: Option<String>,
    model: String,
    connection: String,
    started: bool,
    block: Block,
    /// Index of the open block, or of the next one.
    index: u64,
    /// Tool calls already closed (their arguments can no longer be added).
    closed_tools: Vec<u64>,
    finish_reason: Option<String>,
    usage: Option<fast::Usage>,
    /// Reads the upstream's chunks as written.
    reader: fast::ChunkReader,
}

impl Translator {
    pub fn new(model: &str, connection: &str) -> Self {
        Translator {
            id: None,
            model: model.to_owned(),
            connection: connection.to_owned(),
            started: false,
            block: Block::None,
            index: 0,
            closed_tools: Vec::new(),
            finish_reason: None,
            usage: None,
            reader: fast::ChunkReader::default(),
        }
    }

    fn start(&mut self, chunk: Option<&Chunk<'_>>, emit: &mut impl FnMut(Event<'_>)) {
        if self.started {
            return;
        }
        self.started = true;
        if let Some(id) = chunk.and_then(|c| c.id.as_deref()) {
            self.id = Some(answer::message_id(Some(id)));
        }
        if let Some(model) = chunk.and_then(|c| c.model.as_deref()) {
            self.model = model.to_owned();
        }
        let id = self.id.get_or_insert_with(|| answer::message_id(None));
        emit(Event::MessageStart {
            id,
            model: &self.model,
        });
    }

    fn close_block(&mut self, emit: &mut impl FnMut(Event<'_>)) {
        if self.block == Block::None {
            return;
        }
        if let Block::Tool(k) = self.block {
            self.closed_tools.push(k);
        }
        emit(Event::BlockStop { index: self.index });
        self.block = Block::None;
        self.index += 1;
    }

    fn open(&mut self, block: Block, start: BlockStart<'_>, emit: &mut impl FnMut(Event<'_>)) {
        self.close_block(emit);
        self.block = block;
        emit(Event::BlockStart {
            index: self.index,
            block: start,
        });
    }

    fn delta(&self, kind: DeltaKind, text: &str, emit: &mut impl FnMut(Event<'_>)) {
        emit(Event::Delta {
            index: self.index,
            kind,
            text,
        });
    }

    /// The events one chunk becomes.
    pub fn chunk(
        &mut self,
        chunk: &Chunk<'_>,
        emit: &mut impl FnMut(Event<'_>),
    ) -> Result<(), ApiError> {
        self.start(Some(chunk), emit);
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        let Some(choice) = &chunk.choice else {
            return Ok(());
        };
        if let Some(thinking) = &choice.reasoning {
            if self.block != Block::Thinking {
                self.open(Block::Thinking, BlockStart::Thinking, emit);
            }
            self.delta(DeltaKind::Thinking, thinking, emit);
        }
        for (text, refusal) in [(&choice.content, false), (&choice.refusal, true)] {
            if let Some(text) = text.as_deref().filter(|t| !t.is_empty()) {
                if self.block != Block::Text {
                    self.open(Block::Text, BlockStart::Text, emit);
                }
                self.delta(DeltaKind::Text, text, emit);
                if refusal {
                    self.finish_reason = Some("content_filter".into());
                }
            }
        }
        for call in &choice.tool_calls {
            let k = call.index;
            if self.block != Block::Tool(k) {
                if self.closed_tools.contains(&k) {
                    return Err(ApiError::upstream_failure(format!(
                        "connection '{}': tool call {k} continued after another one began",
                        self.connection
                    )));
                }
                let id = match &call.id {
                    Some(id) => Cow::Borrowed(&**id),
                    None => Cow::Owned(crate::context::random_id("toolu_")),
                };
                let name = call.name.as_deref().unwrap_or("");
                self.open(Block::Tool(k), BlockStart::ToolUse { id: &id, name }, emit);
            }
            if let Some(fragment) = call.arguments.as_deref().filter(|f| !f.is_empty()) {
                self.delta(DeltaKind::InputJson, fragment, emit);
            }
        }
        if let Some(reason) = choice.finish_reason.as_deref() {
            if self.finish_reason.is_none() {
                self.finish_reason = Some(reason.to_owned());
            }
            self.close_block(emit);
        }
        Ok(())
    }

    /// The events one chunk payload becomes: read through the view, or through the
    /// tree when the view does not take the text.
    pub fn payload(
        &mut self,
        chunk: &Payload,
        emit: &mut impl FnMut(Event<'_>),
    ) -> Result<(), ApiError> {
        match chunk {
            Payload::Raw(raw) => match self.reader.read(raw.bytes()) {
                Some(view) => self.chunk(&view, emit),
                None => self.chunk(&Chunk::from_value(&raw.to_value()), emit),
            },
            Payload::Value(value) => {
                self.reader.forget();
                self.chunk(&Chunk::from_value(value), emit)
            }
        }
    }

    /// The events that end the message.
    pub fn finish(&mut self, emit: &mut impl FnMut(Event<'_>)) {
        self.start(None, emit);
        self.close_block(emit);
        emit(Event::MessageDelta {
            stop_reason: answer::stop_reason(self.finish_reason.as_deref()),
            usage: self.usage,
        });
        emit(Event::MessageStop);
    }
}
/// Puts a stream's events back together into one `message`, for the loggers;
/// bounded by `limit` bytes of text.
pub struct Assembler {
    message: Value,
    blocks: Vec<Value>,
    /// Partial JSON of each tool block, by block index.
    partial: Vec<(usize, String)>,
    held: usize,
    limit: usize,
    truncated: bool,
}

impl Assembler {
    pub fn new(limit: usize) -> Self {
        Assembler {
            message: Value::Null,
            blocks: Vec::new(),
            partial: Vec::new(),
            held: 0,
            limit,
            truncated: false,
        }
    }

    fn room(&mut self, bytes: usize) -> bool {
        if self.truncated || self.held + bytes > self.limit {
            self.truncated = true;
            return false;
        }
        self.held += bytes;
        true
    }

    pub fn add(&mut self, event: &Value) {
        let index = event.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        match event.get("type").and_then(Value::as_str).unwrap_or("") {
            "message_start" => self.message = event.get("message").cloned().unwrap_or(Value::Null),
            "content_block_start" if index == self.blocks.len() && self.room(64) => {
                self.blocks
                    .push(event.get("content_block").cloned().unwrap_or(Value::Null));
            }
            "content_block_delta" => {
                let delta = event.get("delta").unwrap_or(&Value::Null);
                let (field, text) = match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => ("text", delta.get("text")),
                    Some("thinking_delta") => ("thinking", delta.get("thinking")),
                    Some("signature_delta") => ("signature", delta.get("signature")),
                    Some("citations_delta") => {
                        if let Some(block) = self.blocks.get_mut(index) {
                            if let Some(list) = block
                                .as_object_mut()
                                .map(|b| b.entry("citations").or_insert_with(|| json!([])))
                                .and_then(Value::as_array_mut)
                            {
                                list.push(delta.get("citation").cloned().unwrap_or(Value::Null));
                            }
                        }
                        return;
                    }
                    Some("input_json_delta") => ("partial_json", delta.get("partial_json")),
                    _ => return,
                };
                let Some(text) = text.and_then(Value::as_str) else {
                    return;
                };
                if index >= self.blocks.len() || !self.room(text.len()) {
                    return;
                }
                if field == "partial_json" {
                    match self.partial.iter_mut().find(|(i, _)| *i == index) {
                        Some((_, json)) => json.push_str(text),
                        None => self.partial.push((index, text.to_owned())),
                    }
                    return;
                }
                if let Some(Value::Object(block)) = self.blocks.get_mut(index) {
                    let entry = block.entry(field).or_insert_with(|| json!(""));
                    if let Value::String(s) = entry {
                        s.push_str(text);
                    }
                }
            }
            "message_delta" => {
                if let (Value::Object(message), Some(Value::Object(delta))) =
                    (&mut self.message, event.get("delta"))
                {
                    for (k, v) in delta {
                        message.insert(k.clone(), v.clone());
                    }
                }
                if let (Value::Object(message), Some(Value::Object(usage))) =
                    (&mut self.message, event.get("usage"))
                {
                    let entry = message.entry("usage").or_insert_with(|| json!({}));
                    if let Value::Object(target) = entry {
                        for (k, v) in usage {
                            target.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            _ => {}
        }
    }

    pub fn into_message(mut self) -> Value {
        for (index, json) in std::mem::take(&mut self.partial) {
            if let Some(Value::Object(block)) = self.blocks.get_mut(index) {
                let input = serde_json::from_str(&json).unwrap_or(Value::String(json));
                block.insert("input".into(), input);
            }
        }
        let mut message = match self.message {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        message.insert("content".into(), Value::Array(self.blocks));
        if self.truncated {
            message.insert("truncated".into(), true.into());
        }
        Value::Object(message)
    }
}

/// Calls the stream's finish closure exactly once (end, error or drop).
struct Finish<F: FnOnce(StreamSummary)> {
    on_finish: Option<F>,
    summary: StreamSummary,
    assembler: Option<Assembler>,
    /// For a stream of canonical chunks: the translation to Anthropic events.
    translator: Option<Box<Translator>>,
}

impl<F: FnOnce(StreamSummary)> Finish<F> {
    fn finish(&mut self, completed: bool) {
        if let Some(f) = self.on_finish.take() {
            self.summary.completed = completed;
            self.summary.response = self.assembler.take().map(Assembler::into_message);
            f(std::mem::take(&mut self.summary));
        }
    }
}

impl<F: FnOnce(StreamSummary)> Drop for Finish<F> {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// Append one event: `event: <type>` and its data as written.
fn write_event(kind: &str, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}

/// The `error` event for a failure after the stream started.
pub fn error_event(error: &ApiError) -> Value {
    super::errors::envelope(error)
}

/// How often a translated stream that has sent nothing gets a `ping` event.
pub const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

const PING: &[u8] = b"event: ping\ndata: {\"type\": \"ping\"}\n\n";

/// The keep-alive clock of a stream: one timer for the whole stream, re-armed only
/// when it fires (not per event); a `ping` goes out when no write happened since
/// the last time it fired, so after 1-2 periods of silence. Anthropic's API sends
/// such pings itself; translated upstreams do not, and idle connections get cut by
/// proxies and load balancers in between.
struct KeepAlive {
    every: std::time::Duration,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// `writes` when the timer last fired.
    seen: u64,
}

/// Anthropic events → the client's SSE body, each event written as soon as it comes
/// (events that are ready together share a write). `assemble`: also put the
/// message together for the loggers, keeping at most that many bytes of it.
/// `keep_alive`: send `ping` events when the stream is silent that long.
pub fn encode<F>(
    events: PayloadStream,
    assemble: Option<usize>,
    keep_alive: Option<std::time::Duration>,
    on_finish: F,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send
where
    F: FnOnce(StreamSummary) + Send + 'static,
{
    encode_items(events, None, assemble, keep_alive, on_finish)
}

/// Canonical chunks → Anthropic events → the client's SSE body: [`encode`] with
/// each chunk translated on the way, its events written straight into the
/// buffer. A chunk the translator refuses, like a failure of the chunk stream,
/// ends the stream with an `error` event after the events written before it.
pub fn encode_translated<F>(
    chunks: PayloadStream,
    translator: Translator,
    assemble: Option<usize>,
    keep_alive: Option<std::time::Duration>,
    on_finish: F,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send
where
    F: FnOnce(StreamSummary) + Send + 'static,
{
    encode_items(
        chunks,
        Some(Box::new(translator)),
        assemble,
        keep_alive,
        on_finish,
    )
}

/// [`encode`] and [`encode_translated`]: Anthropic events without a translator,
/// canonical chunks with one.
fn encode_items<F>(
    items: PayloadStream,
    translator: Option<Box<Translator>>,
    assemble: Option<usize>,
    keep_alive: Option<std::time::Duration>,
    on_finish: F,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send
where
    F: FnOnce(StreamSummary) + Send + 'static,
{
    let finish = Finish {
        on_finish: Some(on_finish),
        summary: StreamSummary::default(),
        assembler: assemble.map(Assembler::new),
        translator,
    };
    let keep_alive = keep_alive.map(|every| KeepAlive {
        every,
        timer: Box::pin(tokio::time::sleep(every)),
        seen: 0,
    });
    let state = (items, finish, keep_alive, 0u64);
    futures_util::stream::unfold(Some(state), |state| async move {
        let (mut items, mut finish, mut keep_alive, mut writes) = state?;
        let first = match &mut keep_alive {
            None => items.next().await,
            Some(clock) => loop {
                tokio::select! {
                    biased;
                    item = items.next() => break item,
                    () = clock.timer.as_mut() => {
                        let idle = clock.seen == writes;
                        clock.seen = writes;
                        let next = tokio::time::Instant::now() + clock.every;
                        clock.timer.as_mut().reset(next);
                        if idle {
                            writes += 1;
                            let state = (items, finish, keep_alive, writes);
                            return Some((Ok(Bytes::from_static(PING)), Some(state)));
                        }
                    }
                }
            },
        };
        let mut buf = Vec::with_capacity(4096);
        let mut ended = write(first, &mut finish, &mut buf);
        while !ended && buf.len() < crate::streaming::COALESCE_LIMIT {
            match items.next().now_or_never() {
                Some(item) => {
                    crate::streaming::room_for_burst(&mut buf);
                    ended = write(item, &mut finish, &mut buf);
                }
                None => break,
            }
        }
        writes += 1;
        let next = (!ended).then_some((items, finish, keep_alive, writes));
        Some((Ok(Bytes::from(buf)), next))
    })
}

/// Append one translated event, and give it to the assembler.
fn write_translated(
    event: Event<'_>,
    summary: &mut StreamSummary,
    assembler: &mut Option<Assembler>,
    out: &mut Vec<u8>,
) {
    summary.chunks += 1;
    if let Some(assembler) = assembler {
        assembler.add(&event.to_value());
    }
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.kind().as_bytes());
    out.extend_from_slice(b"\ndata: ");
    event.write_json(out);
    out.extend_from_slice(b"\n\n");
}

/// Write one item; true when the stream has ended.
fn write<F: FnOnce(StreamSummary)>(
    item: Option<Result<Payload, ApiError>>,
    finish: &mut Finish<F>,
    out: &mut Vec<u8>,
) -> bool {
    let Finish {
        summary,
        assembler,
        translator,
        ..
    } = finish;
    let failure = match (item, translator) {
        (Some(Ok(chunk)), Some(translator)) => {
            let mut emit = |event: Event<'_>| write_translated(event, summary, assembler, out);
            match translator.payload(&chunk, &mut emit) {
                Ok(()) => return false,
                Err(error) => error,
            }
        }
        (Some(Ok(event)), None) => {
            summary.chunks += 1;
            if let Some(assembler) = assembler {
                assembler.add(&event.to_value());
            }
            match &event {
                Payload::Raw(raw) => {
                    let text = raw.text();
                    let kind = fast::event_type(text).unwrap_or(Cow::Borrowed("message"));
                    write_event(&kind, text, out);
                }
                Payload::Value(value) => {
                    let kind = value
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("message");
                    let mut data = Vec::with_capacity(256);
                    event.write_json(&mut data);
                    write_event(kind, &data, out);
                }
            }
            return false;
        }
        (Some(Err(error)), _) => error,
        (None, translator) => {
            if let Some(translator) = translator {
                let mut emit = |event: Event<'_>| write_translated(event, summary, assembler, out);
                translator.finish(&mut emit);
            }
            finish.finish(true);
            return true;
        }
    };
    let data = serde_json::to_vec(&error_event(&failure)).unwrap_or_default();
    write_event("error", &data, out);
    finish.summary.error = Some(failure);
    finish.finish(true);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The events of a chunk sequence as trees, each checked to be written as
    /// serde_json writes its tree, read from the chunks both as text and as trees
    /// (which must agree).
    fn events_of(chunks: &[Value]) -> Vec<Value> {
        let (trees, text) = translate_both(chunks);
        // Ids made up here (no id upstream) differ from run to run.
        let made_up = |events: &[Value]| -> Vec<Value> {
            let mut events = events.to_vec();
            for event in &mut events {
                for pointer in ["/message/id", "/content_block/id"] {
                    if let Some(Value::String(id)) = event.pointer_mut(pointer) {
                        if id.len() == 36 && id.starts_with("msg_") || id.starts_with("toolu_") {
                            id.clear();
                        }
                    }
                }
            }
            events
        };
        assert_eq!(
            made_up(&trees),
            made_up(&text),
            "view and tree readings agree"
        );
        trees
    }

    /// The translation of the chunks given as raw text and as trees.
    fn translate_both(chunks: &[Value]) -> (Vec<Value>, Vec<Value>) {
        let mut results = Vec::new();
        for raw in [false, true] {
            let mut t = Translator::new("m", "c");
            let mut out = Vec::new();
            let mut emit = |event: Event<'_>| {
                let value = event.to_value();
                let mut bytes = Vec::new();
                event.write_json(&mut bytes);
                assert_eq!(
                    std::str::from_utf8(&bytes).unwrap(),
                    serde_json::to_string(&value).unwrap()
                );
                assert_eq!(value["type"], event.kind());
                out.push(value);
            };
            for chunk in chunks {
                let payload = if raw {
                    Payload::Raw(
                        crate::payload::RawJson::object(
                            Bytes::from(serde_json::to_vec(chunk).unwrap()),
                            None,
                        )
                        .unwrap(),
                    )
                } else {
                    Payload::Value(chunk.clone())
                };
                t.payload(&payload, &mut emit).unwrap();
            }
            t.finish(&mut emit);
            results.push(out);
        }
        let text = results.pop().unwrap();
        (results.pop().unwrap(), text)
    }

    fn chunk(delta: Value, finish: Option<&str>) -> Value {
        json!({"id": "chatcmpl-9", "model": "up", "object": "chat.completion.chunk", "created": 1,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    #[test]
    fn thinking_text_and_tool_calls_follow_the_grammar() {
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
        let kinds: Vec<String> = events
            .iter()
            .map(|e| {
                let t = e["type"].as_str().unwrap();
                match e.pointer("/delta/type").and_then(Value::as_str) {
                    Some(d) if t == "content_block_delta" => format!("{t}:{d}"),
                    _ => t.to_owned(),
                }
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "content_block_start",
                "content_block_delta:thinking_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta:text_delta",
                "content_block_delta:text_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta:input_json_delta",
                "content_block_delta:input_json_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert_eq!(events[0]["message"]["id"], "msg_chatcmpl-9");
        assert_eq!(events[8]["content_block"]["id"], "call_1");
        assert_eq!(events[8]["index"], 2);
        let delta = &events[12];
        assert_eq!(delta["delta"]["stop_reason"], "tool_use");
        assert_eq!(
            delta["usage"],
            json!({"input_tokens": 5, "output_tokens": 7})
        );

        // The assembled message (for loggers) is the same as a whole answer's.
        let mut assembler = Assembler::new(1 << 20);
        for e in &events {
            assembler.add(e);
        }
        let message = assembler.into_message();
        assert_eq!(message["content"][1]["text"], "Hi there");
        assert_eq!(message["content"][2]["input"], json!({"q": 1}));
        assert_eq!(message["stop_reason"], "tool_use");
        assert_eq!(message["usage"]["output_tokens"], 7);
    }

    #[test]
    fn an_empty_stream_still_is_a_whole_message() {
        let events = events_of(&[]);
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["message_start", "message_delta", "message_stop"]);
        assert_eq!(events[1]["delta"]["stop_reason"], "end_turn");
    }

    /// Stream translation cases no door test covered: a refusal, cached tokens,
    /// text that needs escaping, and chunks of odd shapes (read through the tree,
    /// alike either way).
    #[test]
    fn refusals_cached_tokens_escapes_and_odd_chunks() {
        let events = events_of(&[
            chunk(
                json!({"role": "assistant", "content": "a\"b\n\u{1}\u{e9}\u{1f600}</"}),
                None,
            ),
            json!({"id": "chatcmpl-9", "choices": [null]}),
            json!({"id": "chatcmpl-9", "choices": [{"delta": {"content": 5, "refusal": "no"}}], "usage": 7}),
            chunk(json!({"content": ""}), Some("stop")),
            json!({"id": "chatcmpl-9", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 3,
                   "prompt_tokens_details": {"cached_tokens": 4}}}),
            json!({"id": "x", "choices": [{"delta": {"content": 1.5}}], "usage": {"prompt_tokens": 1.0}}),
        ]);
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(events[2]["delta"]["text"], "a\"b\n\u{1}\u{e9}\u{1f600}</");
        assert_eq!(events[3]["delta"]["text"], "no");
        // The refusal decides the stop reason; the last usage object (its
        // non-integer count read as none) gives the counts.
        assert_eq!(events[5]["delta"]["stop_reason"], "refusal");
        assert_eq!(
            events[5]["usage"],
            json!({"input_tokens": 0, "output_tokens": 0})
        );
        let events = events_of(&[
            json!({"id": "c", "choices": [], "usage": {"prompt_tokens": 10,
            "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}}}),
        ]);
        assert_eq!(
            events[1]["usage"],
            json!({"input_tokens": 6, "output_tokens": 3, "cache_read_input_tokens": 4})
        );

        // A member written twice: the tree's reading (the last one) wins.
        let text = br#"{"id":"c","choices":[{"delta":{"content":"a","content":"b"}}]}"#;
        let raw = crate::payload::RawJson::object(Bytes::from_static(text), None).unwrap();
        let mut t = Translator::new("m", "c");
        let mut out = Vec::new();
        t.payload(&Payload::Raw(raw), &mut |e: Event<'_>| {
            out.push(e.to_value())
        })
        .unwrap();
        assert_eq!(out[2]["delta"]["text"], "b");
    }

    #[tokio::test]
    async fn a_tool_call_resumed_after_another_began_ends_with_an_error_event() {
        let call = |index: u64, args: &str| {
            Ok(Payload::Value(chunk(
                json!({"tool_calls": [{"index": index, "id": format!("call_{index}"),
                    "function": {"name": "f", "arguments": args}}]}),
                None,
            )))
        };
        let chunks: PayloadStream = Box::pin(futures_util::stream::iter(vec![
            call(0, "{}"),
            call(1, "{"),
            call(0, "}"),
        ]));
        let body: Vec<u8> =
            encode_translated(chunks, Translator::new("m", "c"), None, None, |_| {})
                .map(|b| b.unwrap().to_vec())
                .concat()
                .await;
        let text = String::from_utf8(body).unwrap();
        assert!(
            text.contains(
                r#""content_block":{"type":"tool_use","id":"call_1","name":"f","input":{}}"#
            ),
            "{text}"
        );
        assert!(
            text.ends_with("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"Error processing upstream provider response\"}}\n\n")
                || text.contains("event: error\n"),
            "{text}"
        );
        assert!(!text.contains("message_stop"), "{text}");
    }

    #[tokio::test]
    async fn a_failure_mid_stream_is_an_error_event() {
        let chunks: PayloadStream = Box::pin(futures_util::stream::iter(vec![
            Ok(Payload::Value(chunk(json!({"content": "Hi"}), None))),
            Err(ApiError::upstream_failure("gone")),
        ]));
        let body: Vec<u8> =
            encode_translated(chunks, Translator::new("m", "c"), None, None, |_| {})
                .map(|b| b.unwrap().to_vec())
                .concat()
                .await;
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with("event: message_start\ndata: {"), "{text}");
        assert!(text.contains("event: content_block_delta\n"), "{text}");
        assert!(
            text.ends_with("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"Error processing upstream provider response\"}}\n\n")
                || text.contains("event: error\n"),
            "{text}"
        );
        assert!(!text.contains("message_stop"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_translated_stream_gets_pings() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Payload, ApiError>>();
        let events: PayloadStream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async {
            rx.recv().await.map(|item| (item, rx))
        }));
        let every = std::time::Duration::from_secs(15);
        let mut body = Box::pin(encode(events, None, Some(every), |_| {}));
        tx.send(Ok(Payload::Value(json!({"type": "message_start"}))))
            .unwrap();
        let first = body.next().await.unwrap().unwrap();
        assert!(first.starts_with(b"event: message_start\n"));
        // Written just before the timer's first tick: that tick sends nothing, the
        // next one (nothing written in between) a ping.
        let started = tokio::time::Instant::now();
        let ping = body.next().await.unwrap().unwrap();
        assert_eq!(&ping[..], PING);
        assert_eq!(started.elapsed(), 2 * every);
        tx.send(Ok(Payload::Value(json!({"type": "message_stop"}))))
            .unwrap();
        drop(tx);
        let last = body.next().await.unwrap().unwrap();
        assert!(last.starts_with(b"event: message_stop\n"));
        assert!(body.next().await.is_none());
    }
}
