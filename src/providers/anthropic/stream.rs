//! Anthropic stream events → OpenAI `chat.completion.chunk`s (reference §2.6, §2.11).
//!
//! A state machine over `message_start` … `message_stop` for one choice. Every
//! delta is forwarded as soon as it arrives; the only thing ever held back is the
//! answer of a wrapped `response_format` schema, which must be unwrapped whole.
//! A stream that ends before `message_stop` is a failure, never a fake finish.

use std::collections::{HashMap, VecDeque};

use futures_util::StreamExt;
use serde_json::{json, Value};

use super::request::{JsonMode, JSON_TOOL_NAME};
use super::response::{error_event, finish_reason, json_answer, mid_stream_error, Usage};
use crate::error::ApiError;
use crate::streaming::{completion_id, unix_now, ChunkStream};

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
}

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
        }
    }

    /// Whether `message_stop` was seen.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
    }

    /// The role chunk, once, before anything else of the choice.
    fn start(&mut self, out: &mut Vec<Value>) {
        if !self.started {
            self.started = true;
            out.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
        }
    }

    fn content(&mut self, text: &str, out: &mut Vec<Value>) {
        if !text.is_empty() {
            self.start(out);
            out.push(self.chunk(json!({"content": text}), None));
        }
    }

    fn tool_args(&mut self, index: u64, args: &str, out: &mut Vec<Value>) {
        out.push(self.chunk(
            json!({"tool_calls": [{"index": index, "function": {"arguments": args}}]}),
            None,
        ));
    }

    /// Translate one upstream event into zero or more chunks.
    pub fn on_event(&mut self, event: &Value) -> Result<Vec<Value>, ApiError> {
        let mut out = Vec::new();
        if self.finished {
            return Ok(out);
        }
        let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
        match event.get("type").and_then(Value::as_str).unwrap_or("") {
            "message_start" => {
                let message = event.get("message").unwrap_or(&Value::Null);
                if !self.started {
                    if let Some(id) = str_of(message, "id") {
                        self.id = id;
                    }
                    if let Some(model) = str_of(message, "model") {
                        self.model = model;
                    }
                }
                if let Some(usage) = message.get("usage") {
                    self.usage.update(usage);
                }
                self.start(&mut out);
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
                    "text" => {
                        self.blocks.insert(index, Block::Text);
                        self.content(text_of("text"), &mut out);
                    }
                    "thinking" => {
                        self.blocks.insert(
                            index,
                            Block::Thinking {
                                text: text_of("thinking").to_owned(),
                                signature: text_of("signature").to_owned(),
                            },
                        );
                        self.reasoning(text_of("thinking"), &mut out);
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
                        self.start(&mut out);
                        if let Some(input) = early_input {
                            self.json_fragment(index, &input, &mut out);
                        }
                    }
                    "tool_use" => {
                        let tool_index = self.next_tool;
                        self.next_tool += 1;
                        if let Some(id) = block.get("id").and_then(Value::as_str) {
                            self.tool_ids.push(id.to_owned());
                        }
                        self.start(&mut out);
                        out.push(self.chunk(
                            json!({"tool_calls": [{
                                "index": tool_index,
                                "id": block.get("id").cloned().unwrap_or(Value::Null),
                                "type": "function",
                                "function": {"name": text_of("name"), "arguments": ""},
                            }]}),
                            None,
                        ));
                        let args_seen = early_input.is_some();
                        if let Some(input) = early_input {
                            self.tool_args(tool_index, &input, &mut out);
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
                match delta.get("type").and_then(Value::as_str).unwrap_or("") {
                    "text_delta" => self.content(field("text"), &mut out),
                    "thinking_delta" => {
                        if let Some(Block::Thinking { text, .. }) = self.blocks.get_mut(&index) {
                            text.push_str(field("thinking"));
                        }
                        self.reasoning(field("thinking"), &mut out)
                    }
                    "signature_delta" => {
                        if let Some(Block::Thinking { signature, .. }) = self.blocks.get_mut(&index)
                        {
                            signature.push_str(field("signature"));
                        }
                    }
                    "input_json_delta" => {
                        let fragment = field("partial_json");
                        if fragment.is_empty() {
                            return Ok(out);
                        }
                        match self.blocks.get_mut(&index) {
                            Some(Block::Tool {
                                index: ti,
                                args_seen,
                            }) => {
                                *args_seen = true;
                                let ti = *ti;
                                self.tool_args(ti, fragment, &mut out);
                            }
                            Some(Block::Json { .. }) => {
                                self.json_fragment(index, fragment, &mut out)
                            }
                            _ => {}
                        }
                    }
                    // citations_delta, future delta types.
                    _ => {}
                }
            }
            "content_block_stop" => match self.blocks.get(&index) {
                Some(Block::Tool {
                    index: ti,
                    args_seen: false,
                }) => {
                    // A tool without arguments may get no input_json_delta at all;
                    // clients parse `arguments`, so they get "{}" rather than "".
                    let ti = *ti;
                    self.tool_args(ti, "{}", &mut out);
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
                    self.content(&text, &mut out);
                }
                _ => {}
            },
            "message_delta" => {
                if let Some(reason) = event
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                {
                    self.stop_reason = Some(reason.to_owned());
                }
                if let Some(usage) = event.get("usage") {
                    self.usage.update(usage);
                }
            }
            "message_stop" => {
                self.finished = true;
                self.remember_thinking();
                self.start(&mut out);
                let mut finish = finish_reason(self.stop_reason.as_deref(), &self.connection);
                if self.next_tool > 0 {
                    finish = "tool_calls";
                } else if finish == "tool_calls" {
                    // Only the JSON answer tool was called: that is a plain answer.
                    finish = "stop";
                }
                out.push(self.chunk(json!({}), Some(finish)));
                if self.include_usage {
                    out.push(json!({
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": self.usage.to_openai(),
                    }));
                }
            }
            "error" => return Err(error_event(event)),
            // ping, and event types added after this was written.
            _ => {}
        }
        if self.too_large {
            return Err(crate::upstream::too_large_error(self.buffer_limit));
        }
        Ok(out)
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

    fn reasoning(&mut self, text: &str, out: &mut Vec<Value>) {
        if !text.is_empty() {
            self.start(out);
            out.push(self.chunk(json!({"reasoning_content": text}), None));
        }
    }

    /// Part of the JSON answer: forwarded as content, or kept for unwrapping.
    fn json_fragment(&mut self, index: u64, fragment: &str, out: &mut Vec<Value>) {
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

/// Translate an Anthropic event stream (from `sse_json_events`) into chunks.
pub fn translate(events: ChunkStream, translator: Translator) -> ChunkStream {
    struct State {
        events: ChunkStream,
        translator: Translator,
        pending: VecDeque<Value>,
        done: bool,
    }
    let state = State {
        events,
        translator,
        pending: VecDeque::new(),
        done: false,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(chunk) = st.pending.pop_front() {
                return Some((Ok(chunk), st));
            }
            if st.done {
                return None;
            }
            let failure = match st.events.next().await {
                Some(Ok(event)) => match st.translator.on_event(&event) {
                    Ok(chunks) => {
                        st.pending.extend(chunks);
                        // Nothing comes after message_stop: the client's stream ends
                        // without waiting for the body's end, which is read off the
                        // client's path so that the connection is kept.
                        if st.translator.is_finished() {
                            st.done = true;
                            let events = std::mem::replace(
                                &mut st.events,
                                Box::pin(futures_util::stream::empty()),
                            );
                            read_to_end(events);
                        }
                        continue;
                    }
                    Err(err) => err,
                },
                // An `error` event (read by the shared SSE reader): Anthropic's type
                // and message, with overloads reported like a 529.
                Some(Err(ApiError::UpstreamRejected(body))) => {
                    mid_stream_error(body.message, &body.error_type)
                }
                Some(Err(err)) => err,
                None if st.translator.is_finished() => return None,
                None => ApiError::upstream_failure(format!(
                    "connection '{}': the Anthropic stream ended before message_stop",
                    st.translator.connection
                )),
            };
            st.done = true;
            return Some((Err(failure), st));
        }
    }))
}

/// How long the rest of a body may take after `message_stop` before its connection
/// is closed instead of kept.
const AFTER_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Read what is left of an upstream stream after `message_stop` (normally only the
/// end of the chunked body, already received), so that its keep-alive connection
/// goes back to the pool: dropped unread, the connection was closed, and every
/// translated stream opened a new one (connect, accept and a socket in TIME_WAIT
/// per stream). What has not arrived yet is awaited in a task of its own, bounded.
fn read_to_end(mut events: ChunkStream) {
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
        let events: ChunkStream = Box::pin(futures_util::stream::iter(vec![Ok(start())]));
        let out: Vec<Result<Value, ApiError>> =
            translate(events, Translator::new("m", "c", false, None))
                .collect()
                .await;
        assert_eq!(out.len(), 2);
        assert!(out[0].is_ok());
        assert!(matches!(out[1], Err(ApiError::UpstreamFailure { .. })));
    }
}
