//! Streams on the Anthropic door: canonical chunks → Anthropic events (translated
//! connections), and Anthropic events → the client's SSE body (every connection).
//!
//! The event grammar Anthropic clients parse: `message_start`, then for each
//! content block `content_block_start`, `content_block_delta`s (`text_delta`,
//! `thinking_delta`, `input_json_delta`) and `content_block_stop`, then
//! `message_delta` (stop reason, usage) and `message_stop`. A failure after the
//! stream started is an `event: error`. Translation is event by event with bounded
//! state: each chunk's pieces go out as soon as it arrives.

use std::collections::VecDeque;

use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use serde_json::{json, Map, Value};

use super::answer;
use crate::error::ApiError;
use crate::json_scan::member_str;
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

/// Chunks → events, one chunk at a time.
pub struct Translator {
    id: String,
    model: String,
    connection: String,
    started: bool,
    block: Block,
    /// Index of the open block, or of the next one.
    index: u64,
    /// Tool calls already closed (their arguments can no longer be added).
    closed_tools: Vec<u64>,
    finish_reason: Option<String>,
    usage: Option<Value>,
}

impl Translator {
    pub fn new(model: &str, connection: &str) -> Self {
        Translator {
            id: answer::message_id(None),
            model: model.to_owned(),
            connection: connection.to_owned(),
            started: false,
            block: Block::None,
            index: 0,
            closed_tools: Vec::new(),
            finish_reason: None,
            usage: None,
        }
    }

    fn start(&mut self, chunk: Option<&Value>, out: &mut Vec<Value>) {
        if self.started {
            return;
        }
        self.started = true;
        if let Some(id) = chunk.and_then(|c| c.get("id")).and_then(Value::as_str) {
            self.id = answer::message_id(Some(id));
        }
        if let Some(model) = chunk.and_then(|c| c.get("model")).and_then(Value::as_str) {
            self.model = model.to_owned();
        }
        out.push(json!({"type": "message_start", "message": {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }}));
    }

    fn close_block(&mut self, out: &mut Vec<Value>) {
        if self.block == Block::None {
            return;
        }
        if let Block::Tool(k) = self.block {
            self.closed_tools.push(k);
        }
        out.push(json!({"type": "content_block_stop", "index": self.index}));
        self.block = Block::None;
        self.index += 1;
    }

    fn open(&mut self, block: Block, content_block: Value, out: &mut Vec<Value>) {
        self.close_block(out);
        self.block = block;
        out.push(json!({"type": "content_block_start", "index": self.index, "content_block": content_block}));
    }

    fn delta(&self, delta: Value, out: &mut Vec<Value>) {
        out.push(json!({"type": "content_block_delta", "index": self.index, "delta": delta}));
    }

    /// The events one chunk becomes.
    pub fn chunk(&mut self, chunk: &Value, out: &mut Vec<Value>) -> Result<(), ApiError> {
        self.start(Some(chunk), out);
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage.clone());
        }
        let Some(choice) = chunk.get("choices").and_then(|c| c.get(0)) else {
            return Ok(());
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(thinking) = answer::reasoning_text(delta) {
            if self.block != Block::Thinking {
                self.open(
                    Block::Thinking,
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                    out,
                );
            }
            self.delta(json!({"type": "thinking_delta", "thinking": thinking}), out);
        }
        for key in ["content", "refusal"] {
            if let Some(text) = delta
                .get(key)
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                if self.block != Block::Text {
                    self.open(Block::Text, json!({"type": "text", "text": ""}), out);
                }
                self.delta(json!({"type": "text_delta", "text": text}), out);
                if key == "refusal" {
                    self.finish_reason = Some("content_filter".into());
                }
            }
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let k = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let function = call.get("function").unwrap_or(&Value::Null);
            if self.block != Block::Tool(k) {
                if self.closed_tools.contains(&k) {
                    return Err(ApiError::upstream_failure(format!(
                        "connection '{}': tool call {k} continued after another one began",
                        self.connection
                    )));
                }
                let id = call
                    .get("id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("toolu_{}", uuid::Uuid::new_v4().simple()));
                let name = function.get("name").and_then(Value::as_str).unwrap_or("");
                self.open(
                    Block::Tool(k),
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                    out,
                );
            }
            if let Some(fragment) = function
                .get("arguments")
                .and_then(Value::as_str)
                .filter(|f| !f.is_empty())
            {
                self.delta(
                    json!({"type": "input_json_delta", "partial_json": fragment}),
                    out,
                );
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            if self.finish_reason.is_none() {
                self.finish_reason = Some(reason.to_owned());
            }
            self.close_block(out);
        }
        Ok(())
    }

    /// The events that end the message.
    pub fn finish(&mut self, out: &mut Vec<Value>) {
        self.start(None, out);
        self.close_block(out);
        let usage = answer::usage(self.usage.as_ref());
        out.push(json!({"type": "message_delta",
            "delta": {"stop_reason": answer::stop_reason(self.finish_reason.as_deref()), "stop_sequence": null},
            "usage": usage}));
        out.push(json!({"type": "message_stop"}));
    }
}

/// Canonical chunks → Anthropic events (as trees). A failure is passed on and ends
/// the stream.
pub fn translate(chunks: PayloadStream, translator: Translator) -> PayloadStream {
    struct State {
        chunks: PayloadStream,
        translator: Translator,
        pending: VecDeque<Result<Payload, ApiError>>,
        ended: bool,
    }
    let state = State {
        chunks,
        translator,
        pending: VecDeque::new(),
        ended: false,
    };
    Box::pin(futures_util::stream::unfold(
        state,
        |mut state| async move {
            loop {
                if let Some(item) = state.pending.pop_front() {
                    return Some((item, state));
                }
                if state.ended {
                    return None;
                }
                let mut out = Vec::new();
                let failure = match state.chunks.next().await {
                    Some(Ok(chunk)) => state.translator.chunk(&chunk.to_value(), &mut out).err(),
                    Some(Err(e)) => Some(e),
                    None => {
                        state.translator.finish(&mut out);
                        state.ended = true;
                        None
                    }
                };
                state
                    .pending
                    .extend(out.into_iter().map(|v| Ok(Payload::Value(v))));
                if let Some(e) = failure {
                    state.pending.push_back(Err(e));
                    state.ended = true;
                }
            }
        },
    ))
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
    let finish = Finish {
        on_finish: Some(on_finish),
        summary: StreamSummary::default(),
        assembler: assemble.map(Assembler::new),
    };
    let keep_alive = keep_alive.map(|every| KeepAlive {
        every,
        timer: Box::pin(tokio::time::sleep(every)),
        seen: 0,
    });
    let state = (events, finish, keep_alive, 0u64);
    futures_util::stream::unfold(Some(state), |state| async move {
        let (mut events, mut finish, mut keep_alive, mut writes) = state?;
        let first = match &mut keep_alive {
            None => events.next().await,
            Some(clock) => loop {
                tokio::select! {
                    biased;
                    item = events.next() => break item,
                    () = clock.timer.as_mut() => {
                        let idle = clock.seen == writes;
                        clock.seen = writes;
                        let next = tokio::time::Instant::now() + clock.every;
                        clock.timer.as_mut().reset(next);
                        if idle {
                            writes += 1;
                            let state = (events, finish, keep_alive, writes);
                            return Some((Ok(Bytes::from_static(PING)), Some(state)));
                        }
                    }
                }
            },
        };
        let mut buf = Vec::with_capacity(1024);
        let mut ended = write(first, &mut finish, &mut buf);
        while !ended && buf.len() < 16 * 1024 {
            match events.next().now_or_never() {
                Some(item) => ended = write(item, &mut finish, &mut buf),
                None => break,
            }
        }
        writes += 1;
        let next = (!ended).then_some((events, finish, keep_alive, writes));
        Some((Ok(Bytes::from(buf)), next))
    })
}

/// Write one item; true when the stream has ended.
fn write<F: FnOnce(StreamSummary)>(
    item: Option<Result<Payload, ApiError>>,
    finish: &mut Finish<F>,
    out: &mut Vec<u8>,
) -> bool {
    match item {
        Some(Ok(event)) => {
            finish.summary.chunks += 1;
            if let Some(assembler) = &mut finish.assembler {
                assembler.add(&event.to_value());
            }
            match &event {
                Payload::Raw(raw) => {
                    let text = raw.text();
                    let kind = std::str::from_utf8(text)
                        .ok()
                        .and_then(|t| member_str(t, "type"))
                        .unwrap_or(std::borrow::Cow::Borrowed("message"));
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
            false
        }
        Some(Err(error)) => {
            let data = serde_json::to_vec(&error_event(&error)).unwrap_or_default();
            write_event("error", &data, out);
            finish.summary.error = Some(error);
            finish.finish(true);
            true
        }
        None => {
            finish.finish(true);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events_of(chunks: &[Value]) -> Vec<Value> {
        let mut t = Translator::new("m", "c");
        let mut out = Vec::new();
        for chunk in chunks {
            t.chunk(chunk, &mut out).unwrap();
        }
        t.finish(&mut out);
        out
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

    #[tokio::test]
    async fn a_failure_mid_stream_is_an_error_event() {
        let chunks: PayloadStream = Box::pin(futures_util::stream::iter(vec![
            Ok(Payload::Value(chunk(json!({"content": "Hi"}), None))),
            Err(ApiError::upstream_failure("gone")),
        ]));
        let events = translate(chunks, Translator::new("m", "c"));
        let body: Vec<u8> = encode(events, None, None, |_| {})
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
