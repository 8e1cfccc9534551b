//! Streaming in both directions.
//!
//! Upstream: every provider's SSE body is read by [`crate::sse`] and turned here
//! into a stream of JSON chunk objects that ends at `[DONE]` or at the end of the
//! body, with an idle timeout between events.
//!
//! Downstream: the client stream is `data: <json>\n\n` per chunk, then
//! `data: [DONE]\n\n`. A failure after the first byte becomes one error chunk
//! (an OpenAI `error` object plus `finish_reason: "error"`), then `[DONE]`.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use http::StatusCode;
use serde_json::{json, Value};

use crate::error::{ApiError, ErrorBody};
use crate::payload::{Payload, PayloadStream};
use crate::sse::{EventBytes, EventData, SseDataEvents};

/// A stream of OpenAI `chat.completion.chunk` objects, or a failure that ends it.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Value, ApiError>> + Send>>;

/// A stream of upstream SSE event data, or a failure that ends it.
pub type DataStream = Pin<Box<dyn Stream<Item = Result<EventData, ApiError>> + Send>>;

/// The `data` of each event of an upstream SSE body (see [`SseDataEvents`]).
pub fn sse_data_events<S, E>(body: S, idle_timeout: Duration) -> DataStream
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    Box::pin(SseDataEvents::new(body, idle_timeout))
}

/// The events of an upstream SSE body, each read by `decode` as it is framed (in
/// the reader's own poll, see [`SseDataEvents::decode`]); the stream ends after
/// the first error.
pub fn sse_decoded<S, E, T, F>(
    body: S,
    idle_timeout: Duration,
    decode: F,
) -> Pin<Box<dyn Stream<Item = Result<T, ApiError>> + Send>>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
    T: Send + 'static,
    F: FnMut(EventData) -> Result<T, ApiError> + Send + Unpin + 'static,
{
    Box::pin(SseDataEvents::new(body, idle_timeout).decode(decode))
}

/// [`sse_decoded`] whose `decode` checks each event's UTF-8 itself ([`EventBytes`]).
pub fn sse_decoded_unchecked<S, E, T, F>(
    body: S,
    idle_timeout: Duration,
    decode: F,
) -> Pin<Box<dyn Stream<Item = Result<T, ApiError>> + Send>>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
    T: Send + 'static,
    F: FnMut(EventBytes) -> Result<T, ApiError> + Send + Unpin + 'static,
{
    Box::pin(SseDataEvents::unchecked(body, idle_timeout).decode(decode))
}

/// Read an upstream SSE body as JSON chunks. Each `data:` payload must be JSON;
/// `[DONE]` ends the stream; an event carrying a top-level `error` object ends it
/// with that error. `idle_timeout` bounds the silence between two events.
pub fn sse_json_events<S, E>(body: S, idle_timeout: Duration) -> ChunkStream
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    sse_decoded(body, idle_timeout, |data| json_chunk(&data))
}

/// One upstream event's data as a JSON chunk, or the error it reports.
pub fn json_chunk(data: &str) -> Result<Value, ApiError> {
    match serde_json::from_str::<Value>(data) {
        Ok(chunk) => match chunk.get("error") {
            Some(error) if chunk.get("choices").is_none() => Err(mid_stream_error(error)),
            _ => Ok(chunk),
        },
        Err(e) => Err(ApiError::upstream_failure(format!(
            "upstream sent a chunk that is not JSON: {e}"
        ))),
    }
}

/// An error object sent by the upstream inside its stream.
fn mid_stream_error(error: &Value) -> ApiError {
    let text = |k: &str| error.get(k).and_then(Value::as_str).map(str::to_owned);
    let body = ErrorBody::new(
        StatusCode::BAD_GATEWAY,
        text("message").unwrap_or_else(|| "upstream reported an error mid-stream".into()),
        text("type").unwrap_or_else(|| "upstream_error".into()),
    )
    .code(text("code"))
    .param(text("param"));
    ApiError::UpstreamRejected(Box::new(body))
}

/// How a client stream ended, reported once to the stream's observer.
#[derive(Debug, Default)]
pub struct StreamSummary {
    pub chunks: usize,
    /// The answer assembled from the chunks (a `chat.completion` object), when
    /// assembling was asked for.
    pub response: Option<Value>,
    /// The failure sent to the client as an error chunk, if any.
    pub error: Option<ApiError>,
    /// False when the client went away before the end.
    pub completed: bool,
}

/// Calls its closure exactly once: at the end of the stream, or when the stream
/// is dropped early (client disconnect).
struct FinishGuard<F: FnOnce(StreamSummary)> {
    on_finish: Option<F>,
    summary: StreamSummary,
    accumulator: Option<StreamAccumulator>,
}

impl<F: FnOnce(StreamSummary)> FinishGuard<F> {
    fn finish(&mut self, completed: bool) {
        if let Some(f) = self.on_finish.take() {
            self.summary.completed = completed;
            if let Some(acc) = self.accumulator.take() {
                if acc.is_truncated() {
                    tracing::warn!(
                        "a streamed answer passed max_response_body_mb ({}): the client got all of it, the request log only its beginning (marked \"truncated\": true)",
                        crate::upstream::describe_limit(acc.limit())
                    );
                }
                self.summary.response = Some(acc.into_response());
            }
            f(std::mem::take(&mut self.summary));
        }
    }
}

impl<F: FnOnce(StreamSummary)> Drop for FinishGuard<F> {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// Identity of a stream, for the error chunk when the failure comes mid-way.
#[derive(Debug, Clone)]
pub struct StreamIdentity {
    /// The upstream's id once a chunk named one; until then none is made: a fresh
    /// id (`id_prefix` and random hex) is only needed for an error chunk before any
    /// chunk of the upstream's, and making one for every stream was two random
    /// UUIDs' worth of work (about 500 instructions a stream, callgrind).
    pub id: Option<String>,
    pub id_prefix: &'static str,
    pub created: u64,
    pub model: String,
}

impl StreamIdentity {
    /// A stream starting now, its ids made with `id_prefix` (`chatcmpl-`, `cmpl-`).
    pub fn new(id_prefix: &'static str, model: String) -> Self {
        StreamIdentity {
            id: None,
            id_prefix,
            created: unix_now(),
            model,
        }
    }
}

/// Encode chunks as the client's SSE body. `identity` fills the error chunk when the
/// upstream fails before sending any chunk of its own. With `assemble`, the chunks
/// are also put together into the whole answer, handed to `on_finish` (for loggers).
///
/// The events that are ready are written into one buffer and sent together, in one
/// write: hyper flushes whenever the body has nothing ready, so without this every
/// event was its own write (and TCP segment) even when the upstream sent a burst.
/// After the chunk stream runs dry the task yields ([`tokio::task::yield_now`]:
/// woken once its runtime has polled for I/O and run the other ready tasks, such as
/// an upstream connection task handing over its next frame; no timer) and goes on
/// gathering while that brings more. The events gathered are sent after
/// [`COALESCE_IDLE_TURNS`] turns in a row bring nothing, or at [`COALESCE_LIMIT`]
/// bytes: a lone event waits a few scheduler turns (microseconds), never a timer
/// tick. Those turns bring the next event of an upstream whose connection runs as
/// a task of its own (reqwest's, for HTTPS), which hands its frames over one at a
/// time; where the body is read in this task (the gateway's own HTTP/1 connections)
/// everything that has come is read before the first turn, and a turn brings
/// nothing. So once [`FRUITLESS_FRAMES`] frames in a row waited their turns for
/// nothing, the stream's frames go out as soon as nothing more is ready (a model's
/// stream, an event every few ms: each turn was a poll of the whole task and a
/// look at the sockets, about 2,500 instructions and an `epoll_wait`, twice an
/// event). A turn that brings an event, while frames still wait, starts the count
/// again; once they stop, they do not wait again for the rest of the stream.
pub fn encode_sse<F>(
    chunks: PayloadStream,
    identity: StreamIdentity,
    assemble: bool,
    on_finish: F,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send
where
    F: FnOnce(StreamSummary) + Send + 'static,
{
    let limit = assemble.then_some(crate::config::DEFAULT_MAX_RESPONSE_BODY);
    encode_sse_assembling(chunks, identity, limit, false, on_finish)
}

/// [`encode_sse`] that assembles the answer (when `assemble` is set) keeping at most
/// that many bytes of it (`max_response_body_mb`): past it the assembled copy is cut
/// and marked `"truncated": true`; the client's stream is not affected.
///
/// With `hide_usage` (the client did not ask for usage, the gateway did), usage-only
/// chunks are assembled but not sent, and other chunks lose their `usage` member.
pub fn encode_sse_assembling<F>(
    chunks: PayloadStream,
    identity: StreamIdentity,
    assemble: Option<usize>,
    hide_usage: bool,
    on_finish: F,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send
where
    F: FnOnce(StreamSummary) + Send + 'static,
{
    // Boxed: the unfold below moves its state in and out of each write's future,
    // and the encoder (with the closure and what it captured) is large.
    let encoder = Box::new(SseEncoder {
        identity,
        fruitless_frames: 0,
        in_burst: false,
        hide_usage,
        last_raw: None,
        guard: FinishGuard {
            on_finish: Some(on_finish),
            summary: StreamSummary::default(),
            accumulator: assemble.map(StreamAccumulator::with_limit),
        },
    });
    futures_util::stream::unfold(Some((chunks, encoder)), |state| async move {
        let (mut chunks, mut encoder) = state?;
        let first = chunks.next().await;
        // Taken once there is an event to write: a stream waiting for its next event
        // (most of a slow stream's life) holds no buffer. A small one, unless the
        // frame before filled its own with events that were all ready at once: then
        // room for the rest of the burst.
        let capacity = match encoder.in_burst {
            true => COALESCE_LIMIT + NEARLY_FULL,
            false => FRAME_START,
        };
        let mut buf = Vec::with_capacity(capacity);
        let mut ended = encoder.write(first, &mut buf);
        // Whether events after the first went into this frame: a frame filled by
        // one big event is no burst, and the next need not be made for one.
        let mut gathered = false;
        // Turns of the scheduler taken so far without a new event, and how many
        // this frame may take.
        let mut idle_turns = 0;
        let turns = if encoder.fruitless_frames < FRUITLESS_FRAMES {
            COALESCE_IDLE_TURNS
        } else {
            0
        };
        while !ended && buf.len() < COALESCE_LIMIT {
            // Everything that is ready now, without waiting: taken before the first
            // yield, so that events that came together (and, at the start, the
            // response head, which hyper writes when the body first waits) go out
            // in one write.
            let mut got = false;
            // A frame nearly full goes out as it is rather than be grown (which
            // copies what it holds): the connection writes the frames that are
            // ready together, and the next one is made with room for the burst.
            while !small_and_nearly_full(&buf) {
                let Some(item) = chunks.next().now_or_never() else {
                    break;
                };
                got = true;
                gathered = true;
                ended = encoder.write(item, &mut buf);
                if ended || buf.len() >= COALESCE_LIMIT {
                    break;
                }
            }
            if ended || buf.len() >= COALESCE_LIMIT || small_and_nearly_full(&buf) {
                break;
            }
            if got {
                if idle_turns > 0 {
                    // A turn brought it: waiting pays off with this upstream.
                    encoder.fruitless_frames = 0;
                }
                idle_turns = 0;
            } else if idle_turns == turns {
                if turns > 0 {
                    encoder.fruitless_frames = encoder.fruitless_frames.saturating_add(1);
                }
                break;
            }
            idle_turns += 1;
            tokio::task::yield_now().await;
        }
        // Events that were ready together filled this frame (the small one nearly,
        // or a burst's to the limit): more are likely ready, and the next frame is
        // made with room for them.
        encoder.in_burst =
            !ended && gathered && (buf.len() >= COALESCE_LIMIT || small_and_nearly_full(&buf));
        let next = (!ended).then_some((chunks, encoder));
        Some((Ok(Bytes::from(buf)), next))
    })
}

/// Most bytes gathered into one write.
pub const COALESCE_LIMIT: usize = 16 * 1024;

/// A chat stream's frame as first made: a lone event, or a short burst.
const FRAME_START: usize = 4096;

/// Less room than this left in a frame, and the next event may not fit (events are
/// a few hundred bytes).
const NEARLY_FULL: usize = 1024;

/// For the Messages and Responses doors' encoders (the chat encoder sends a nearly
/// full frame as it is instead, see `SseEncoder::in_burst`). Before each event
/// after a frame's first: once the frame is nearly full, room
/// for a burst up to [`COALESCE_LIMIT`], taken at once rather than by doubling
/// (each growth copied what was written: 4, 8 and 16 KiB for one 16 KiB frame).
/// A frame that its events fit (a slow stream's one event, a short burst) keeps
/// the buffer it was made with.
pub fn room_for_burst(frame: &mut Vec<u8>) {
    if small_and_nearly_full(frame) {
        frame.reserve(COALESCE_LIMIT);
    }
}

/// A frame made smaller than a burst's room with too little left for another event:
/// the point where a burst's frame is grown ([`room_for_burst`]) or sent (the chat
/// encoder).
fn small_and_nearly_full(frame: &Vec<u8>) -> bool {
    frame.capacity() - frame.len() < NEARLY_FULL && frame.capacity() < COALESCE_LIMIT
}
/// Scheduler turns without a new event after which the gathered events are sent.
const COALESCE_IDLE_TURNS: u32 = 2;

/// Frames in a row whose turns brought nothing, after which a stream's frames no
/// longer wait for turns.
const FRUITLESS_FRAMES: u8 = 3;

/// Writes a client stream's events and keeps what its end needs.
struct SseEncoder<F: FnOnce(StreamSummary)> {
    identity: StreamIdentity,
    /// Frames in a row whose turns of waiting brought no event (see
    /// [`encode_sse`]).
    fruitless_frames: u8,
    /// The last frame went out full, or small and nearly full, with events that
    /// were ready at once: more are likely ready, and the next frame is made with
    /// room for them.
    in_burst: bool,
    /// Keep usage the client did not ask for out of its stream.
    hide_usage: bool,
    /// The last chunk passed through as upstream text: its identity is read only if
    /// an error chunk needs it.
    last_raw: Option<Payload>,
    guard: FinishGuard<F>,
}

impl<F: FnOnce(StreamSummary)> SseEncoder<F> {
    /// Append what one item of the chunk stream becomes on the wire; true when
    /// the stream has ended (`[DONE]` written).
    fn write(&mut self, item: Option<Result<Payload, ApiError>>, out: &mut Vec<u8>) -> bool {
        match item {
            Some(Ok(mut chunk)) => {
                self.guard.summary.chunks += 1;
                if let Some(acc) = &mut self.guard.accumulator {
                    acc.add(&chunk.to_value());
                }
                // One field test per chunk when nothing is to be hidden.
                if self.hide_usage && chunk.has_usage_member() {
                    if chunk.is_usage_only() {
                        return false;
                    }
                    match &chunk {
                        // Written without the member, not copied without it first
                        // (every chunk of OpenAI's has `"usage":null` when usage was
                        // asked for). The chunk is kept as it came: its identity is
                        // what an error chunk reads from it.
                        Payload::Raw(raw) => {
                            out.extend_from_slice(b"data: ");
                            raw.write_without_usage(out);
                            out.extend_from_slice(b"\n\n");
                        }
                        Payload::Value(_) => {
                            chunk = chunk.without_usage();
                            write_event(&chunk, out);
                        }
                    }
                } else {
                    write_event(&chunk, out);
                }
                match chunk {
                    Payload::Value(value) => {
                        remember_identity(&mut self.identity, &value);
                        self.last_raw = None;
                    }
                    raw @ Payload::Raw(_) => self.last_raw = Some(raw),
                }
                false
            }
            Some(Err(err)) => {
                if let Some(raw) = self.last_raw.take() {
                    remember_identity(&mut self.identity, &raw.into_value());
                }
                write_event(&Payload::Value(error_chunk(&self.identity, &err)), out);
                out.extend_from_slice(DONE);
                self.guard.summary.error = Some(err);
                self.guard.finish(true);
                true
            }
            None => {
                out.extend_from_slice(DONE);
                self.guard.finish(true);
                true
            }
        }
    }
}

const DONE: &[u8] = b"data: [DONE]\n\n";

/// Puts streamed chunks back together into one `chat.completion` object: text,
/// reasoning and tool calls per choice, finish reasons, usage.
///
/// What it keeps is bounded by its limit (`max_response_body_mb`): text, and a fixed
/// cost per choice and tool call, count against it. Past the limit nothing more is
/// kept (the text kept is the answer's beginning) and the answer is marked
/// truncated; a non-streamed call served from a stream fails instead (see
/// [`StreamAccumulator::is_truncated`]). Without the bound an upstream could make
/// one request hold several times an unbounded stream's size.
#[derive(Debug)]
pub struct StreamAccumulator {
    id: Option<Value>,
    created: Option<Value>,
    model: Option<Value>,
    choices: std::collections::BTreeMap<u64, ChoiceParts>,
    usage: Option<Value>,
    /// The chunks are a legacy completion's (`text_completion`, `choices[].text`):
    /// the answer is put together in that shape.
    text_completion: bool,
    budget: Budget,
}

impl Default for StreamAccumulator {
    /// Bounded by the default `max_response_body_mb`.
    fn default() -> Self {
        StreamAccumulator::with_limit(crate::config::DEFAULT_MAX_RESPONSE_BODY)
    }
}

#[derive(Debug, Default)]
struct ChoiceParts {
    content: String,
    reasoning: String,
    /// tool-call index → (id, name, arguments)
    tool_calls: std::collections::BTreeMap<u64, (Value, Value, String)>,
    finish_reason: Option<Value>,
}

/// What an accumulator may still keep.
#[derive(Debug)]
struct Budget {
    limit: usize,
    held: usize,
    truncated: bool,
}

/// The cost counted for each choice and each tool call kept, besides its text.
const ENTRY_COST: usize = 64;

impl Budget {
    /// Count `n` bytes if they fit; once something did not, nothing more does.
    fn take(&mut self, n: usize) -> bool {
        if self.truncated {
            return false;
        }
        match self.held.checked_add(n) {
            Some(total) if total <= self.limit => {
                self.held = total;
                true
            }
            _ => {
                self.truncated = true;
                false
            }
        }
    }

    fn push(&mut self, into: &mut String, text: &str) {
        if self.take(text.len()) {
            into.push_str(text);
        }
    }

    /// A value (an id, a name) kept whole if it fits.
    fn value(&mut self, value: &Value) -> Option<Value> {
        let size = match value {
            Value::String(s) => s.len(),
            other => crate::logging::approx_size(other),
        };
        self.take(size).then(|| value.clone())
    }
}

impl StreamAccumulator {
    /// An accumulator that keeps at most about `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        StreamAccumulator {
            id: None,
            created: None,
            model: None,
            choices: Default::default(),
            usage: None,
            text_completion: false,
            budget: Budget {
                limit,
                held: 0,
                truncated: false,
            },
        }
    }

    /// Whether something was left out because the limit was reached.
    pub fn is_truncated(&self) -> bool {
        self.budget.truncated
    }

    /// The limit it was made with.
    pub fn limit(&self) -> usize {
        self.budget.limit
    }

    pub fn add(&mut self, chunk: &Value) {
        let budget = &mut self.budget;
        for (slot, key) in [
            (&mut self.id, "id"),
            (&mut self.created, "created"),
            (&mut self.model, "model"),
        ] {
            if slot.is_none() {
                *slot = chunk.get(key).and_then(|v| budget.value(v));
            }
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            // Replaced, never added up: one event's worth at most.
            self.usage = Some(usage.clone());
        }
        if chunk.get("object").and_then(Value::as_str) == Some("text_completion") {
            self.text_completion = true;
        }
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
            return;
        };
        for choice in choices {
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let parts = match self.choices.entry(index) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    if !budget.take(ENTRY_COST) {
                        continue;
                    }
                    e.insert(ChoiceParts::default())
                }
            };
            let delta = choice.get("delta");
            if let Some(text) = delta.and_then(|d| d.get("content")).and_then(Value::as_str) {
                budget.push(&mut parts.content, text);
            }
            // A legacy completion's piece of text.
            if let Some(text) = choice.get("text").and_then(Value::as_str) {
                budget.push(&mut parts.content, text);
            }
            if let Some(text) = delta
                .and_then(|d| d.get("reasoning_content"))
                .and_then(Value::as_str)
            {
                budget.push(&mut parts.reasoning, text);
            }
            if let Some(calls) = delta
                .and_then(|d| d.get("tool_calls"))
                .and_then(Value::as_array)
            {
                for call in calls {
                    let slot = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                    let entry = match parts.tool_calls.entry(slot) {
                        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::btree_map::Entry::Vacant(e) => {
                            if !budget.take(ENTRY_COST) {
                                continue;
                            }
                            e.insert((Value::Null, Value::Null, String::new()))
                        }
                    };
                    if let Some(id) = call.get("id").filter(|v| !v.is_null()) {
                        if let Some(id) = budget.value(id) {
                            entry.0 = id;
                        }
                    }
                    if let Some(name) = call.pointer("/function/name").filter(|v| !v.is_null()) {
                        if let Some(name) = budget.value(name) {
                            entry.1 = name;
                        }
                    }
                    if let Some(args) = call.pointer("/function/arguments").and_then(Value::as_str)
                    {
                        budget.push(&mut entry.2, args);
                    }
                }
            }
            if let Some(reason) = choice.get("finish_reason").filter(|v| !v.is_null()) {
                parts.finish_reason = Some(reason.clone());
            }
        }
    }

    pub fn into_response(self) -> Value {
        if self.text_completion {
            return self.into_text_completion();
        }
        let choices: Vec<Value> = self
            .choices
            .into_iter()
            .map(|(index, parts)| {
                let mut message = serde_json::Map::new();
                message.insert("role".into(), "assistant".into());
                let has_tools = !parts.tool_calls.is_empty();
                message.insert(
                    "content".into(),
                    if parts.content.is_empty() && has_tools { Value::Null } else { parts.content.into() },
                );
                if !parts.reasoning.is_empty() {
                    message.insert("reasoning_content".into(), parts.reasoning.into());
                }
                if has_tools {
                    let calls: Vec<Value> = parts
                        .tool_calls
                        .into_values()
                        .map(|(id, name, args)| {
                            json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
                        })
                        .collect();
                    message.insert("tool_calls".into(), calls.into());
                }
                json!({"index": index, "message": message, "finish_reason": parts.finish_reason})
            })
            .collect();
        let mut answer = json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage,
        });
        if self.budget.truncated {
            answer["truncated"] = true.into();
        }
        answer
    }
}

impl StreamAccumulator {
    /// The answer as a legacy completion (`text_completion`), as the completions
    /// door's non-streamed answers are.
    fn into_text_completion(self) -> Value {
        let choices: Vec<Value> = self
            .choices
            .into_iter()
            .map(|(index, parts)| {
                json!({"index": index, "text": parts.content, "logprobs": null,
                       "finish_reason": parts.finish_reason})
            })
            .collect();
        let mut answer = json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage,
        });
        if self.budget.truncated {
            answer["truncated"] = true.into();
        }
        answer
    }
}

/// A whole `chat.completion` as the chunks a stream would have carried: per choice a
/// role chunk, its content, its tool calls, its finish reason; then usage if asked.
pub fn completion_to_chunks(completion: &Value, include_usage: bool) -> Vec<Value> {
    let head = |choices: Value| {
        json!({
            "id": completion.get("id").cloned().unwrap_or(Value::Null),
            "object": "chat.completion.chunk",
            "created": completion.get("created").cloned().unwrap_or(Value::Null),
            "model": completion.get("model").cloned().unwrap_or(Value::Null),
            "choices": choices,
        })
    };
    let mut chunks = Vec::new();
    for choice in completion
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let index = choice.get("index").cloned().unwrap_or(json!(0));
        let message = choice.get("message").cloned().unwrap_or(json!({}));
        let mut delta = json!({"role": "assistant"});
        if let Some(content) = message.get("content").filter(|c| !c.is_null()) {
            delta["content"] = content.clone();
        }
        if let Some(reasoning) = message.get("reasoning_content").filter(|c| !c.is_null()) {
            delta["reasoning_content"] = reasoning.clone();
        }
        if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
            let calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, call)| {
                    let mut call = call.clone();
                    // Indexing a non-object `Value` mutably panics; an upstream's
                    // malformed call is passed on as it came.
                    if let Some(fields) = call.as_object_mut() {
                        fields.insert("index".into(), json!(i));
                    }
                    call
                })
                .collect();
            delta["tool_calls"] = Value::Array(calls);
        }
        chunks.push(head(
            json!([{"index": index, "delta": delta, "finish_reason": null}]),
        ));
        let finish = choice
            .get("finish_reason")
            .cloned()
            .unwrap_or(json!("stop"));
        chunks.push(head(
            json!([{"index": index, "delta": {}, "finish_reason": finish}]),
        ));
    }
    if include_usage {
        if let Some(usage) = completion.get("usage").filter(|u| u.is_object()) {
            let mut last = head(json!([]));
            last["usage"] = usage.clone();
            chunks.push(last);
        }
    }
    chunks
}

/// Append one SSE event carrying a JSON payload.
fn write_event(payload: &Payload, out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    payload.write_json(out);
    out.extend_from_slice(b"\n\n");
}

fn remember_identity(identity: &mut StreamIdentity, chunk: &Value) {
    if let Some(id) = chunk.get("id").and_then(Value::as_str) {
        if identity.id.as_deref() != Some(id) {
            identity.id = Some(id.to_owned());
        }
    }
    if let Some(created) = chunk.get("created").and_then(Value::as_u64) {
        identity.created = created;
    }
    if let Some(model) = chunk.get("model").and_then(Value::as_str) {
        if model != identity.model {
            identity.model = model.to_owned();
        }
    }
}

/// The chunk that reports a mid-stream failure: readable by the OpenAI SDK (which
/// raises on a top-level `error`) and by clients that only look at `finish_reason`.
pub fn error_chunk(identity: &StreamIdentity, err: &ApiError) -> Value {
    let id = match &identity.id {
        Some(id) => id.clone(),
        None => crate::context::random_id(identity.id_prefix),
    };
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": identity.created,
        "model": identity.model,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "error"}],
        "error": err.error_object(),
    })
}

/// A fresh `chatcmpl-...` id.
pub fn completion_id() -> String {
    crate::context::random_id("chatcmpl-")
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_takes_its_room_once_and_a_lone_event_keeps_a_small_frame() {
        let mut frame = Vec::with_capacity(4096);
        frame.extend_from_slice(&[b'x'; 300]);
        room_for_burst(&mut frame);
        assert_eq!(
            frame.capacity(),
            4096,
            "room left: the frame as it was made"
        );
        frame.extend_from_slice(&[b'x'; 3000]);
        room_for_burst(&mut frame);
        assert!(
            frame.capacity() >= COALESCE_LIMIT + 3300,
            "nearly full: room taken"
        );
        let data = frame.as_ptr();
        while frame.len() < COALESCE_LIMIT {
            room_for_burst(&mut frame);
            frame.extend_from_slice(&[b'y'; 300]);
        }
        assert_eq!(
            frame.as_ptr(),
            data,
            "the rest of the burst never moved the frame"
        );
    }

    #[test]
    fn accumulator_reassembles_text_tools_and_usage() {
        let mut acc = StreamAccumulator::default();
        for chunk in [
            json!({"id": "c1", "created": 5, "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hel"}}, {"index": 1, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": "{\"a\""}}]}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}, {"index": 1, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}, "finish_reason": "tool_calls"}]}),
            json!({"id": "c1", "choices": [], "usage": {"total_tokens": 3}}),
        ] {
            acc.add(&chunk);
        }
        let r = acc.into_response();
        assert_eq!(r["id"], "c1");
        assert_eq!(r["choices"][0]["message"]["content"], "Hello");
        assert_eq!(r["choices"][0]["finish_reason"], "stop");
        assert_eq!(r["choices"][1]["message"]["content"], Value::Null);
        assert_eq!(
            r["choices"][1]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(r["usage"]["total_tokens"], 3);
    }

    fn body(parts: &[&str]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        let parts: Vec<Result<Bytes, std::io::Error>> = parts
            .iter()
            .map(|p| Ok(Bytes::from(p.to_string())))
            .collect();
        futures_util::stream::iter(parts)
    }

    async fn collect(stream: ChunkStream) -> Vec<Result<Value, ApiError>> {
        stream.collect().await
    }

    #[tokio::test]
    async fn parses_crlf_split_and_multiline_events() {
        let s = sse_json_events(
            body(&[
                ": keep-alive\r\n\r\ndata: {\"a\":",
                "1}\r\n\r",
                "\ndata: {\"b\":\ndata: 2}\n\n",
                "data: [DONE]\n\n",
                "data: {\"c\":3}\n\n",
            ]),
            Duration::from_secs(5),
        );
        let items = collect(s).await;
        let values: Vec<Value> = items.into_iter().map(Result::unwrap).collect();
        assert_eq!(values, vec![json!({"a": 1}), json!({"b": 2})]);
    }

    #[tokio::test]
    async fn upstream_error_event_and_bad_json_end_the_stream() {
        let s = sse_json_events(
            body(&[
                "data: {\"x\":1}\n\n",
                "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n",
                "data: {\"y\":1}\n\n",
            ]),
            Duration::from_secs(5),
        );
        let items = collect(s).await;
        assert_eq!(items.len(), 2);
        let err = items[1].as_ref().unwrap_err();
        assert_eq!(err.error_object()["message"], "overloaded");

        let items = collect(sse_json_events(
            body(&["data: nope\n\n"]),
            Duration::from_secs(5),
        ))
        .await;
        assert!(matches!(items[0], Err(ApiError::UpstreamFailure { .. })));
    }

    fn identity() -> StreamIdentity {
        StreamIdentity {
            id: Some("x".into()),
            id_prefix: "chatcmpl-",
            created: 1,
            model: "m0".into(),
        }
    }

    #[tokio::test]
    async fn ready_events_go_out_together_and_late_ones_alone() {
        let chunk = |i: u64| Ok::<Payload, ApiError>(json!({ "n": i }).into());
        let burst: PayloadStream = Box::pin(futures_util::stream::iter((0..5).map(chunk)));
        let out: Vec<Bytes> = encode_sse(burst, identity(), false, |_| {})
            .map(Result::unwrap)
            .collect()
            .await;
        let all: String = (0..5).map(|i| format!("data: {{\"n\":{i}}}\n\n")).collect();
        assert_eq!(out, vec![Bytes::from(all + "data: [DONE]\n\n")]);

        let paced: PayloadStream =
            Box::pin(futures_util::stream::iter(0..3).then(move |i| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                chunk(i)
            }));
        let out: Vec<Bytes> = encode_sse(paced, identity(), false, |_| {})
            .map(Result::unwrap)
            .collect()
            .await;
        let expected = [
            "data: {\"n\":0}\n\n",
            "data: {\"n\":1}\n\n",
            // The end is written with the last event.
            "data: {\"n\":2}\n\ndata: [DONE]\n\n",
        ];
        assert_eq!(out, expected.map(Bytes::from));
    }

    /// Events that are all there at the first poll come out of that poll, with no
    /// wait in between: hyper writes the response head when the body first waits,
    /// so a wait there cost a write of its own.
    #[tokio::test]
    async fn events_ready_at_once_come_out_of_the_first_poll() {
        let burst: PayloadStream = Box::pin(futures_util::stream::iter(
            (0..3).map(|i| Ok::<Payload, ApiError>(json!({ "n": i }).into())),
        ));
        let mut body = Box::pin(encode_sse(burst, identity(), false, |_| {}));
        match futures_util::poll!(body.next()) {
            std::task::Poll::Ready(Some(Ok(bytes))) => assert!(bytes.ends_with(DONE)),
            other => panic!("the first poll gave {other:?}"),
        }
    }

    use std::future::Future;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    /// A chunk stream that counts the polls that found nothing ready, and gives an
    /// item only every other poll when `every_other` (as an upstream connection's
    /// own task hands its frames over: the next one comes after a turn).
    struct Counted {
        items: std::collections::VecDeque<Payload>,
        paced: Option<Pin<Box<tokio::time::Sleep>>>,
        every_other: bool,
        ready_now: bool,
        pending: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Stream for Counted {
        type Item = Result<Payload, ApiError>;
        fn poll_next(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            use std::task::Poll;
            let this = &mut *self;
            if let Some(sleep) = &mut this.paced {
                if sleep.as_mut().poll(cx).is_pending() {
                    this.pending.fetch_add(1, Ordering::Relaxed);
                    return Poll::Pending;
                }
                let next = tokio::time::Instant::now() + Duration::from_millis(5);
                sleep.as_mut().reset(next);
            }
            if this.every_other {
                this.ready_now = !this.ready_now;
                if !this.ready_now {
                    this.pending.fetch_add(1, Ordering::Relaxed);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
            Poll::Ready(this.items.pop_front().map(Ok))
        }
    }

    fn counted(
        n: u64,
        paced: bool,
        every_other: bool,
    ) -> (PayloadStream, Arc<std::sync::atomic::AtomicUsize>) {
        let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stream = Counted {
            items: (0..n).map(|i| json!({ "n": i }).into()).collect(),
            paced: paced.then(|| Box::pin(tokio::time::sleep(Duration::from_millis(5)))),
            every_other,
            ready_now: false,
            pending: pending.clone(),
        };
        (Box::pin(stream), pending)
    }

    /// A stream whose events come apart (a model's) stops waiting for scheduler
    /// turns after a few frames whose turns brought nothing: each of its later
    /// events is looked for once after it is written, not three times.
    #[tokio::test]
    async fn lone_events_stop_waiting_for_turns_that_bring_nothing() {
        let (paced, pending) = counted(10, true, false);
        let out: Vec<Bytes> = encode_sse(paced, identity(), false, |_| {})
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(out.len(), 11, "each event its own write, then the end");
        // Each event and the end: one poll waiting for it; after each event the
        // looks for more: three in the first frames (now and after two turns), one
        // in the others.
        let waits = pending.load(Ordering::Relaxed);
        let fruitless = usize::from(FRUITLESS_FRAMES);
        let most = 11 + fruitless * 3 + (10 - fruitless);
        assert!(
            waits <= most,
            "{waits} polls found nothing (at most {most})"
        );
    }

    /// Events that each come a turn after the one before (an upstream connection
    /// of its own task) still go out together: the turns bring them.
    #[tokio::test]
    async fn events_a_turn_apart_go_out_together() {
        let (stream, _) = counted(12, false, true);
        let out: Vec<Bytes> = encode_sse(stream, identity(), false, |_| {})
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].ends_with(DONE));
    }

    /// The frames of a burst of `count` events, all ready at once, each carrying
    /// `text_len` bytes of text.
    async fn frames_of_burst(count: usize, text_len: usize) -> Vec<Bytes> {
        let text = "y".repeat(text_len);
        let chunks: PayloadStream = Box::pin(futures_util::stream::iter(
            (0..count).map(move |_| Ok(json!({ "t": text }).into())),
        ));
        encode_sse(chunks, identity(), false, |_| {})
            .map(Result::unwrap)
            .collect()
            .await
    }

    #[tokio::test]
    async fn a_big_burst_goes_out_in_writes_of_bounded_size() {
        let out = frames_of_burst(40, 1000).await;
        assert!(out.len() >= 3, "{} writes", out.len());
        assert!(out.iter().all(|b| b.len() < COALESCE_LIMIT + 1100));
        let total: usize = out.iter().map(Bytes::len).sum();
        assert_eq!(
            total,
            40 * (1000 + "data: {\"t\":\"\"}\n\n".len()) + DONE.len()
        );
    }

    #[tokio::test]
    async fn a_burst_fills_a_small_frame_then_frames_made_for_it() {
        // 60 events of about 200 bytes, all ready at once (an upstream's burst).
        let frames = frames_of_burst(60, 180).await;
        let event = "data: {\"t\":\"\"}\n\n".len() + 180;
        // The first frame is the small one, sent once nearly full (not grown)...
        assert!(frames[0].len() <= FRAME_START, "{}", frames[0].len());
        assert!(frames[0].len() > FRAME_START - NEARLY_FULL - event);
        // ...the next holds the rest of the burst: made with room for it.
        assert_eq!(
            frames.len(),
            2,
            "{:?}",
            frames.iter().map(Bytes::len).collect::<Vec<_>>()
        );
        assert_eq!(frames[0].len() + frames[1].len(), 60 * event + DONE.len());
        assert!(frames[1].ends_with(DONE));
    }

    #[tokio::test]
    async fn a_long_burst_keeps_frames_made_for_it() {
        // 200 events of about 200 bytes (40 KB), all ready at once: after the small
        // first frame, every frame but the last is a burst's, filled to the limit
        // (not a small frame again after each full one).
        let frames = frames_of_burst(200, 180).await;
        let lengths: Vec<usize> = frames.iter().map(Bytes::len).collect();
        assert!(lengths.len() >= 4, "{lengths:?}");
        assert!(lengths[0] <= FRAME_START, "{lengths:?}");
        let middle = &lengths[1..lengths.len() - 1];
        assert!(middle.iter().all(|&n| n >= COALESCE_LIMIT), "{lengths:?}");
    }

    #[tokio::test]
    async fn one_big_event_is_no_burst() {
        // A lone event that nearly fills the small frame, then (once that frame was
        // sent) a burst: the burst's first frame is a small one again, not one made
        // for a burst that never came.
        let (sender, receiver) =
            tokio::sync::mpsc::unbounded_channel::<Result<Payload, ApiError>>();
        let chunks: PayloadStream = Box::pin(futures_util::stream::unfold(
            receiver,
            |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) },
        ));
        let mut frames = std::pin::pin!(encode_sse(chunks, identity(), false, |_| {}));
        let big = "y".repeat(FRAME_START - NEARLY_FULL / 2 - 20);
        sender.send(Ok(json!({ "t": big }).into())).unwrap();
        let first = frames.next().await.unwrap().unwrap();
        // It went out alone, leaving its small frame less room than another event.
        assert!(first.len() <= FRAME_START && FRAME_START - first.len() < NEARLY_FULL);
        let small = "y".repeat(180);
        for _ in 0..60 {
            sender.send(Ok(json!({ "t": small }).into())).unwrap();
        }
        drop(sender);
        let second = frames.next().await.unwrap().unwrap();
        assert!(second.len() <= FRAME_START, "{}", second.len());
    }

    #[tokio::test]
    async fn encoder_sends_error_chunk_then_done() {
        let chunks: PayloadStream = Box::pin(futures_util::stream::iter(vec![
            Ok(json!({"id": "chatcmpl-1", "created": 7, "model": "m", "choices": []}).into()),
            Err(ApiError::upstream_failure("boom")),
        ]));
        let (tx, rx) = std::sync::mpsc::channel();
        let out: Vec<Bytes> = encode_sse(chunks, identity(), true, move |s| tx.send(s).unwrap())
            .map(Result::unwrap)
            .collect()
            .await;
        let text: String = out
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert!(text.contains("\"finish_reason\":\"error\""));
        assert!(text.contains("\"id\":\"chatcmpl-1\""));
        let summary = rx.recv().unwrap();
        assert!(summary.completed && summary.error.is_some());
        assert_eq!(summary.chunks, 1);
        assert_eq!(summary.response.unwrap()["id"], "chatcmpl-1");
    }

    #[tokio::test]
    async fn an_error_before_any_chunk_gets_a_fresh_id_of_the_doors_kind() {
        let fails_at_once = || -> PayloadStream {
            Box::pin(futures_util::stream::iter(vec![Err(
                ApiError::upstream_failure("boom"),
            )]))
        };
        let mut ids = Vec::new();
        for _ in 0..2 {
            let identity = StreamIdentity::new("cmpl-", "m".into());
            let out: Vec<Bytes> = encode_sse(fails_at_once(), identity, false, |_| {})
                .map(Result::unwrap)
                .collect()
                .await;
            let text: String = out.iter().map(|b| String::from_utf8_lossy(b)).collect();
            let data = text
                .strip_prefix("data: ")
                .unwrap()
                .split("\n\n")
                .next()
                .unwrap();
            let chunk: Value = serde_json::from_str(data).unwrap();
            assert_eq!(chunk["model"], "m");
            assert!(chunk["created"].as_u64().unwrap() > 1_700_000_000);
            let id = chunk["id"].as_str().unwrap().to_owned();
            let digits = id.strip_prefix("cmpl-").unwrap();
            assert!(digits.len() == 32 && digits.bytes().all(|b| b.is_ascii_hexdigit()));
            ids.push(id);
        }
        assert_ne!(ids[0], ids[1]);
    }
}

#[cfg(test)]
mod accumulator_limit_tests {
    use super::*;

    fn text_chunk(index: u64, text: &str) -> Value {
        json!({"id": "c", "choices": [{"index": index, "delta": {"content": text}}]})
    }

    #[test]
    fn the_beginning_is_kept_up_to_the_limit_and_the_answer_marked() {
        let mut acc = StreamAccumulator::with_limit(ENTRY_COST + 1 + 10);
        for piece in ["12345", "67890", "abcde", "f"] {
            acc.add(&text_chunk(0, piece));
        }
        assert!(acc.is_truncated());
        let answer = acc.into_response();
        assert_eq!(answer["choices"][0]["message"]["content"], "1234567890");
        assert_eq!(answer["truncated"], true);

        let mut acc = StreamAccumulator::with_limit(1000);
        acc.add(&text_chunk(0, "fits"));
        assert!(!acc.is_truncated());
        assert!(acc.into_response().get("truncated").is_none());
    }

    /// Many tiny choices or tool calls cost their entries, not only their text.
    #[test]
    fn entries_count_against_the_limit() {
        let mut acc = StreamAccumulator::with_limit(10 * ENTRY_COST);
        for index in 0..1000 {
            acc.add(&text_chunk(index, ""));
            acc.add(&json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": index, "function": {"arguments": ""}}]}}]}));
        }
        assert!(acc.is_truncated());
        assert!(acc.choices.len() < 10);
        assert!(
            acc.choices
                .values()
                .map(|c| c.tool_calls.len())
                .sum::<usize>()
                < 10
        );
    }
}
