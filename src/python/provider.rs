//! Connections written in Python: `connections.x = my_fn`, `api_type = "function"`
//! with `inference_func`, dotted paths and class tables.
//!
//! The callable is called as in the reference, `fn(messages, model=..., **params)`,
//! plus `callback=` for streamed requests (unless it is a generator function). What
//! it gives back:
//! - a `str` (or subclass): the answer's text;
//! - a dict (or pydantic model) with `choices`: a whole `chat.completion`; a dict
//!   without: the assistant message;
//! - an async generator / iterator (or a sync generator) of text pieces, delta dicts
//!   or whole `chat.completion.chunk` dicts: streamed as they come;
//! - pieces handed to `callback(piece)` while it runs (the reference's way).
//!
//! `n > 1` calls the function `n` times at once, each without `n` (one choice
//! each), and merges the answers or multiplexes the streams (`providers::fanout`,
//! as for Anthropic): the reference returned one choice whatever `n` said.
//!
//! Streams are produced by a task that pulls from Python and pushes chunks into a
//! small channel: the client's pace holds the generator back, a client that goes
//! away cancels the pending step and closes the generator (`aclose()`, so its
//! `finally` runs), and at shutdown open Python streams end with an error chunk and
//! `[DONE]` just before the grace period runs out.

use std::sync::Arc;

use async_trait::async_trait;
use axum::http::StatusCode;
use futures_util::StreamExt;
use pyo3::exceptions::{PyConnectionAbortedError, PyStopAsyncIteration, PyStopIteration};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch};

use crate::error::{ApiError, ErrorBody};
use crate::providers::{fanout, Provider, UpstreamCall};
use crate::streaming::{completion_id, unix_now, ChunkStream, StreamAccumulator};

use super::bridge::{blocking, call_in_env, Shared, TaskSlot};
use super::call::{Callable, Scope};
use super::convert::{from_py, to_py};
use super::errors::{api_error, bridge_failure, Role};
use super::runtime::helpers;

/// One piece of an answer, as Python produced it.
#[derive(Debug)]
enum Event {
    Text(String),
    Delta(Map<String, Value>),
    Chunk(Value),
    Completion(Value),
    /// What a completion returned after its text was streamed through `callback` adds:
    /// choice 0's tool calls, finish reason and the usage.
    Tail(Value),
}

/// What a call (or one step of an iterator) gave back.
enum Classified {
    Events(Vec<Event>),
    Await(Shared),
    AsyncIter(Shared),
    SyncIter(Shared),
}

fn classify(value: &Bound<'_, PyAny>, yielded: bool) -> PyResult<Classified> {
    let py = value.py();
    let out = helpers(py)?.classify.bind(py).call1((value, yielded))?;
    let (tag, payload): (String, Bound<'_, PyAny>) = out.extract()?;
    let shared = || Arc::new(payload.clone().unbind());
    Ok(match tag.as_str() {
        "none" => Classified::Events(Vec::new()),
        "text" => Classified::Events(vec![Event::Text(payload.extract()?)]),
        "completion" => Classified::Events(vec![Event::Completion(from_py(&payload)?)]),
        "message" => {
            let message = from_py(&payload)?;
            let finish = if message.get("tool_calls").is_some_and(|t| !t.is_null()) {
                "tool_calls"
            } else {
                "stop"
            };
            Classified::Events(vec![Event::Completion(json!({
                "choices": [{"index": 0, "message": message, "finish_reason": finish}]
            }))])
        }
        "chunk" => Classified::Events(vec![Event::Chunk(from_py(&payload)?)]),
        "delta" => match from_py(&payload)? {
            Value::Object(map) => Classified::Events(vec![Event::Delta(map)]),
            _ => Classified::Events(Vec::new()),
        },
        "await" => Classified::Await(shared()),
        "aiter" => Classified::AsyncIter(shared()),
        "iter" => Classified::SyncIter(shared()),
        other => {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "unexpected classification {other}"
            )))
        }
    })
}

/// The `callback` handed to streamed calls: each piece goes straight to the client.
#[pyclass(module = "lm_proxy._lm_proxy")]
struct StreamSink {
    tx: mpsc::UnboundedSender<Event>,
}

#[pymethods]
impl StreamSink {
    fn __call__(&self, py: Python<'_>, piece: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        if let Classified::Events(events) = classify(piece, true)? {
            for event in events {
                if self.tx.send(event).is_err() {
                    return Err(PyConnectionAbortedError::new_err(
                        "the client of this stream has gone away",
                    ));
                }
            }
        } else {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "callback() takes a piece of text or a delta/chunk dict",
            ));
        }
        Ok(helpers(py)?.done.clone_ref(py))
    }
}

pub struct PyProvider {
    inner: Arc<Inner>,
}

struct Inner {
    scope: Arc<Scope>,
    callable: Callable,
    /// Generator functions stream by yielding: they get no `callback`.
    generator: bool,
}

impl PyProvider {
    pub fn new(scope: Arc<Scope>, callable: Callable, generator: bool) -> Self {
        PyProvider {
            inner: Arc::new(Inner {
                scope,
                callable,
                generator,
            }),
        }
    }
}

fn connection_error(py: Python<'_>, err: PyErr, label: &str) -> ApiError {
    api_error(py, err, Role::Connection, label)
}

impl Inner {
    fn failure(&self) -> ApiError {
        bridge_failure(&self.callable.label, Role::Connection)
    }

    /// Call the function and push what it produces into `out` until it is done.
    /// Returns early (Ok) when `out` is closed.
    async fn drive(
        self: Arc<Self>,
        call: UpstreamCall,
        streaming: bool,
        out: mpsc::Sender<Event>,
    ) -> Result<(), ApiError> {
        let (sink_tx, mut sink_rx) = mpsc::unbounded_channel::<Event>();
        let sink = (streaming && !self.generator).then(|| StreamSink { tx: sink_tx });
        let label = self.callable.label.clone();
        let call_label = label.clone();
        let invocation = self.scope.call(
            &self.callable,
            move |py| {
                let messages = to_py(py, &Value::Array(call.messages().to_vec()))?;
                let kwargs = PyDict::new(py);
                kwargs.set_item("model", &call.model)?;
                for (key, value) in &call.params {
                    if key != "messages" {
                        kwargs.set_item(key, to_py(py, value)?)?;
                    }
                }
                if !call.headers.is_empty() {
                    let headers = PyDict::new(py);
                    for (name, value) in &call.headers {
                        headers
                            .set_item(name.as_str(), String::from_utf8_lossy(value.as_bytes()))?;
                    }
                    kwargs.set_item("extra_headers", headers)?;
                }
                if let Some(sink) = sink {
                    kwargs.set_item("callback", Py::new(py, sink)?)?;
                }
                Ok((PyTuple::new(py, [messages])?, Some(kwargs), ()))
            },
            move |py, _, outcome| {
                outcome
                    .and_then(|value| classify(&value, false))
                    .map_err(|e| connection_error(py, e, &call_label))
            },
        );
        tokio::pin!(invocation);
        let mut from_sink = 0usize;
        let mut sink_open = true;
        let classified = loop {
            tokio::select! {
                biased;
                piece = sink_rx.recv(), if sink_open => match piece {
                    Some(event) => {
                        from_sink += 1;
                        if out.send(event).await.is_err() {
                            return Ok(());
                        }
                    }
                    None => sink_open = false,
                },
                outcome = &mut invocation => break outcome.map_err(|_| self.failure())??,
            }
        };
        while let Ok(event) = sink_rx.try_recv() {
            from_sink += 1;
            if out.send(event).await.is_err() {
                return Ok(());
            }
        }
        self.follow(classified, from_sink > 0, &out).await
    }

    /// Carry on with what the call returned: its value, an awaitable, an iterator.
    async fn follow(
        &self,
        mut classified: Classified,
        streamed_by_callback: bool,
        out: &mpsc::Sender<Event>,
    ) -> Result<(), ApiError> {
        let label = self.callable.label.clone();
        loop {
            classified = match classified {
                Classified::Events(events) => {
                    // A function that streamed through `callback` usually also returns
                    // the whole text: that is not sent a second time, but the rest of a
                    // completion it returned is (ai-microcore's answer carries usage).
                    for event in events {
                        let event = match event {
                            Event::Completion(c) if streamed_by_callback => Event::Tail(c),
                            _ if streamed_by_callback => continue,
                            event => event,
                        };
                        if out.send(event).await.is_err() {
                            return Ok(());
                        }
                    }
                    return Ok(());
                }
                Classified::Await(awaitable) => {
                    let label = label.clone();
                    self.scope
                        .bridge
                        .run(
                            &self.scope.env,
                            move |py| Ok(awaitable.bind(py).clone()),
                            move |py, outcome| {
                                outcome
                                    .and_then(|v| classify(&v, false))
                                    .map_err(|e| connection_error(py, e, &label))
                            },
                            TaskSlot::default(),
                            true,
                        )
                        .await
                        .map_err(|_| self.failure())??
                }
                Classified::AsyncIter(iterator) => return self.pull_async(iterator, out).await,
                Classified::SyncIter(iterator) => return self.pull_sync(iterator, out).await,
            }
        }
    }

    async fn pull_async(
        &self,
        iterator: Shared,
        out: &mpsc::Sender<Event>,
    ) -> Result<(), ApiError> {
        let mut guard = IterGuard {
            scope: self.scope.clone(),
            iterator: iterator.clone(),
            slot: TaskSlot::default(),
            finished: false,
            asynchronous: true,
        };
        loop {
            let step_iter = iterator.clone();
            let label = self.callable.label.clone();
            let step = self
                .scope
                .bridge
                .run(
                    &self.scope.env,
                    move |py| step_iter.bind(py).call_method0("__anext__"),
                    move |py, outcome| match outcome {
                        Err(e) if e.is_instance_of::<PyStopAsyncIteration>(py) => Ok(None),
                        Err(e) => Err(connection_error(py, e, &label)),
                        Ok(value) => classify(&value, true)
                            .map(Some)
                            .map_err(|e| connection_error(py, e, &label)),
                    },
                    guard.slot.clone(),
                    false,
                )
                .await
                .map_err(|_| self.failure())?;
            if let Some(end) = self.deliver(step, &mut guard, out).await {
                return end;
            }
        }
    }

    /// Send one step's events on; `Some(result)` when the stream is over (the
    /// iterator ended or failed, the client left, or it yielded something unusable).
    async fn deliver(
        &self,
        step: Result<Option<Classified>, ApiError>,
        guard: &mut IterGuard,
        out: &mpsc::Sender<Event>,
    ) -> Option<Result<(), ApiError>> {
        match step {
            Ok(None) => {
                guard.finished = true;
                Some(Ok(()))
            }
            Err(e) => {
                guard.finished = true;
                Some(Err(e))
            }
            Ok(Some(Classified::Events(events))) => {
                for event in events {
                    if out.send(event).await.is_err() {
                        return Some(Ok(()));
                    }
                }
                None
            }
            Ok(Some(_)) => Some(Err(ApiError::upstream_failure(format!(
                "{}: a stream must yield text, delta dicts or chunk dicts",
                self.callable.label
            )))),
        }
    }

    async fn pull_sync(&self, iterator: Shared, out: &mpsc::Sender<Event>) -> Result<(), ApiError> {
        let mut guard = IterGuard {
            scope: self.scope.clone(),
            iterator: iterator.clone(),
            slot: TaskSlot::default(),
            finished: false,
            asynchronous: false,
        };
        loop {
            let env = self.scope.env.clone();
            let step_iter = iterator.clone();
            let label = self.callable.label.clone();
            let step = blocking(move |py| {
                let next = py
                    .import("builtins")
                    .and_then(|b| b.getattr("next"))
                    .map(|f| Arc::new(f.unbind()));
                let outcome = next.and_then(|next| {
                    call_in_env(
                        py,
                        &env,
                        &next,
                        PyTuple::new(py, [step_iter.bind(py)])?,
                        None,
                    )
                });
                match outcome {
                    Err(e) if e.is_instance_of::<PyStopIteration>(py) => Ok(None),
                    Err(e) => Err(connection_error(py, e, &label)),
                    Ok(value) => classify(&value, true)
                        .map(Some)
                        .map_err(|e| connection_error(py, e, &label)),
                }
            })
            .await
            .ok_or_else(|| self.failure())?;
            if let Some(end) = self.deliver(step, &mut guard, out).await {
                return end;
            }
        }
    }
}

/// Closes an iterator that was not read to its end (client gone, shutdown): the
/// pending step is cancelled and the generator closed, so its `finally` runs.
struct IterGuard {
    scope: Arc<Scope>,
    iterator: Shared,
    slot: TaskSlot,
    finished: bool,
    asynchronous: bool,
}

impl Drop for IterGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let iterator = self.iterator.clone();
        let env = self.scope.env.clone();
        if self.asynchronous {
            let slot = self.slot.clone();
            let event_loop = self.scope.bridge.event_loop().clone();
            self.scope.bridge.submit(Box::new(move |py| {
                let pending = slot.take();
                let result = helpers(py).and_then(|h| {
                    h.abandon.bind(py).call1((
                        event_loop.bind(py),
                        env.bind(py),
                        iterator.bind(py),
                        pending,
                    ))
                });
                if let Err(e) = result {
                    tracing::warn!("cannot close a Python stream: {e}");
                }
            }));
        } else if tokio::runtime::Handle::try_current().is_ok() {
            tokio::task::spawn_blocking(move || {
                Python::attach(|py| {
                    let result = helpers(py).and_then(|h| {
                        h.close_iterator
                            .bind(py)
                            .call1((env.bind(py), iterator.bind(py)))
                    });
                    if let Err(e) = result {
                        tracing::warn!("cannot close a Python stream: {e}");
                    }
                })
            });
        }
    }
}

/// Turns events into `chat.completion.chunk` objects with one identity.
struct Chunks {
    id: String,
    created: u64,
    model: String,
    started: bool,
    /// The function sends whole chunks or a whole completion: add nothing around them.
    raw: bool,
    include_usage: bool,
}

impl Chunks {
    fn new(call: &UpstreamCall) -> Self {
        Chunks {
            id: completion_id(),
            created: unix_now(),
            model: call.model.clone(),
            started: false,
            raw: false,
            include_usage: call.include_usage(),
        }
    }

    fn chunk(&self, delta: Value, finish_reason: Value) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        })
    }

    fn fill(&self, mut chunk: Value) -> Value {
        if let Value::Object(map) = &mut chunk {
            map.entry("id").or_insert_with(|| self.id.clone().into());
            map.entry("object")
                .or_insert_with(|| "chat.completion.chunk".into());
            map.entry("created").or_insert_with(|| self.created.into());
            map.entry("model")
                .or_insert_with(|| self.model.clone().into());
        }
        chunk
    }

    fn on_event(&mut self, event: Event) -> Vec<Value> {
        let delta = match event {
            Event::Text(text) => {
                let mut d = Map::new();
                d.insert("content".into(), text.into());
                d
            }
            Event::Delta(d) => d,
            Event::Chunk(chunk) => {
                self.raw = true;
                self.started = true;
                return vec![self.fill(chunk)];
            }
            Event::Completion(completion) => {
                self.raw = true;
                self.started = true;
                return self.completion_chunks(completion);
            }
            Event::Tail(completion) => return self.tail_chunks(completion),
        };
        let mut out = Vec::with_capacity(2);
        if !self.started {
            self.started = true;
            if !delta.contains_key("role") {
                out.push(self.chunk(json!({"role": "assistant", "content": ""}), Value::Null));
            }
        }
        out.push(self.chunk(Value::Object(delta), Value::Null));
        out
    }

    fn completion_chunks(&self, completion: Value) -> Vec<Value> {
        let mut out = Vec::new();
        let choices = completion
            .get("choices")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (position, choice) in choices.iter().enumerate() {
            let index = choice.get("index").cloned().unwrap_or(position.into());
            let mut delta = choice
                .get("message")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            delta.entry("role").or_insert_with(|| "assistant".into());
            if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
                for (i, call) in calls.iter_mut().enumerate() {
                    if let Value::Object(call) = call {
                        call.entry("index").or_insert_with(|| i.into());
                    }
                }
            }
            let finish = choice
                .get("finish_reason")
                .filter(|v| !v.is_null())
                .cloned()
                .unwrap_or_else(|| "stop".into());
            let mut first = self.chunk(Value::Object(delta), Value::Null);
            first["choices"][0]["index"] = index.clone();
            let mut last = self.chunk(json!({}), finish);
            last["choices"][0]["index"] = index;
            out.push(first);
            out.push(last);
        }
        out.extend(self.usage_chunk(&completion));
        out
    }

    /// The usage chunk of a completion, when the client asked for usage.
    fn usage_chunk(&self, completion: &Value) -> Option<Value> {
        let usage = completion.get("usage").filter(|u| u.is_object())?;
        if !self.include_usage {
            return None;
        }
        let mut chunk = self.chunk(Value::Null, Value::Null);
        chunk["choices"] = json!([]);
        chunk["usage"] = usage.clone();
        Some(chunk)
    }

    /// The end of a stream whose text went through `callback`: choice 0's tool calls
    /// (not streamed), its finish reason and the usage of the returned completion.
    fn tail_chunks(&mut self, completion: Value) -> Vec<Value> {
        let mut out = Vec::new();
        if !self.started {
            out.push(self.chunk(json!({"role": "assistant", "content": ""}), Value::Null));
        }
        self.started = true;
        self.raw = true;
        let choice = completion
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
            .cloned()
            .unwrap_or_default();
        let mut calls = choice
            .pointer("/message/tool_calls")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (i, call) in calls.iter_mut().enumerate() {
            if let Value::Object(call) = call {
                call.entry("index").or_insert_with(|| i.into());
            }
        }
        let finish = match choice.get("finish_reason").filter(|v| !v.is_null()) {
            Some(reason) => reason.clone(),
            None if !calls.is_empty() => "tool_calls".into(),
            None => "stop".into(),
        };
        if !calls.is_empty() {
            out.push(self.chunk(json!({ "tool_calls": calls }), Value::Null));
        }
        out.push(self.chunk(json!({}), finish));
        out.extend(self.usage_chunk(&completion));
        out
    }

    fn finish(&mut self) -> Vec<Value> {
        if self.raw {
            return Vec::new();
        }
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            out.push(self.chunk(json!({"role": "assistant", "content": ""}), Value::Null));
        }
        out.push(self.chunk(json!({}), "stop".into()));
        out
    }
}

/// A whole `chat.completion` with what clients expect filled in.
fn fill_completion(mut completion: Value, call: &UpstreamCall) -> Value {
    if let Value::Object(map) = &mut completion {
        map.entry("id").or_insert_with(|| completion_id().into());
        map.insert("object".into(), "chat.completion".into());
        map.entry("created").or_insert_with(|| unix_now().into());
        map.entry("model")
            .or_insert_with(|| call.model.clone().into());
        if map.get("usage").is_some_and(Value::is_null) {
            map.shift_remove("usage");
        }
        if let Some(Value::Array(choices)) = map.get_mut("choices") {
            for (i, choice) in choices.iter_mut().enumerate() {
                if let Value::Object(choice) = choice {
                    choice.entry("index").or_insert_with(|| i.into());
                    if let Some(Value::Object(message)) = choice.get_mut("message") {
                        message.entry("role").or_insert_with(|| "assistant".into());
                    }
                    if choice.get("finish_reason").is_none_or(Value::is_null) {
                        choice.insert("finish_reason".into(), "stop".into());
                    }
                }
            }
        }
    }
    completion
}

/// Resolves once the shutdown deadline for Python streams has passed.
async fn deadline_passed(shutdown: &mut watch::Receiver<Option<tokio::time::Instant>>) {
    loop {
        let deadline = *shutdown.borrow_and_update();
        match deadline {
            Some(at) => {
                tokio::time::sleep_until(at).await;
                return;
            }
            None => {
                if shutdown.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

fn shutting_down() -> ApiError {
    ApiError::Custom(Box::new(
        ErrorBody::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The server is shutting down; this stream was ended early.",
            "service_unavailable",
        )
        .code(Some("server_shutting_down".into())),
    ))
}

/// The most choices one request may ask of a Python connection: each is a call of
/// the function, running at the same time as the others.
pub const MAX_CHOICES: u64 = 8;

/// The call each of `n` fanned-out calls makes: the same, without `n`, so that a
/// function that honours `n` itself still gives one choice per call.
fn single_choice(mut call: UpstreamCall) -> UpstreamCall {
    call.params.shift_remove("n");
    call
}

#[async_trait]
impl Provider for PyProvider {
    async fn complete(&self, call: UpstreamCall) -> Result<Value, ApiError> {
        let n = fanout::requested_n(&call.params, MAX_CHOICES)?;
        if n == 1 {
            return self.complete_one(call).await;
        }
        let call = single_choice(call);
        let answers = fanout::run_all(n, |_| self.complete_one(call.clone())).await?;
        Ok(fanout::merge_completions(answers))
    }

    async fn stream(&self, call: UpstreamCall) -> Result<ChunkStream, ApiError> {
        let n = fanout::requested_n(&call.params, MAX_CHOICES)?;
        if n == 1 {
            return self.stream_one(call).await;
        }
        let include_usage = call.include_usage();
        let call = single_choice(call);
        let streams = fanout::run_all(n, |_| self.stream_one(call.clone())).await?;
        Ok(fanout::multiplex(streams, include_usage))
    }
}

impl PyProvider {
    /// One call of the function, its answer put together.
    async fn complete_one(&self, call: UpstreamCall) -> Result<Value, ApiError> {
        let (tx, mut rx) = mpsc::channel::<Event>(16);
        let producer = self.inner.clone().drive(call.clone(), false, tx);
        let collector = async {
            let mut events = Vec::new();
            while let Some(event) = rx.recv().await {
                events.push(event);
            }
            events
        };
        let (result, mut events) = tokio::join!(producer, collector);
        result?;
        if events.len() == 1 && matches!(events[0], Event::Completion(_)) {
            if let Some(Event::Completion(completion)) = events.pop() {
                return Ok(fill_completion(completion, &call));
            }
        }
        let mut chunks = Chunks::new(&call);
        let mut acc = StreamAccumulator::default();
        for event in events {
            for chunk in chunks.on_event(event) {
                acc.add(&chunk);
            }
        }
        for chunk in chunks.finish() {
            acc.add(&chunk);
        }
        Ok(fill_completion(acc.into_response(), &call))
    }

    /// One call of the function, streamed.
    async fn stream_one(&self, call: UpstreamCall) -> Result<ChunkStream, ApiError> {
        let (chunk_tx, mut chunk_rx) = mpsc::channel::<Result<Value, ApiError>>(8);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let mut shutdown = inner.scope.shutdown.clone();
            let mut chunks = Chunks::new(&call);
            let (event_tx, mut event_rx) = mpsc::channel::<Event>(8);
            let producer = inner.clone().drive(call, true, event_tx);
            tokio::pin!(producer);
            let mut produced: Option<Result<(), ApiError>> = None;
            loop {
                tokio::select! {
                    biased;
                    event = event_rx.recv() => match event {
                        Some(event) => {
                            for chunk in chunks.on_event(event) {
                                if chunk_tx.send(Ok(chunk)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        None => break,
                    },
                    result = &mut producer, if produced.is_none() => produced = Some(result),
                    _ = deadline_passed(&mut shutdown) => {
                        let _ = chunk_tx.send(Err(shutting_down())).await;
                        return;
                    }
                    _ = chunk_tx.closed() => return,
                }
            }
            let result = match produced {
                Some(result) => result,
                None => producer.await,
            };
            match result {
                Ok(()) => {
                    for chunk in chunks.finish() {
                        if chunk_tx.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = chunk_tx.send(Err(e)).await;
                }
            }
        });
        match chunk_rx.recv().await {
            Some(Ok(first)) => {
                let rest = futures_util::stream::unfold(chunk_rx, |mut rx| async move {
                    rx.recv().await.map(|item| (item, rx))
                });
                Ok(Box::pin(
                    futures_util::stream::once(async move { Ok(first) }).chain(rest),
                ))
            }
            Some(Err(e)) => Err(e),
            None => Err(ApiError::internal(format!(
                "{}: the stream ended before it started",
                self.inner.callable.label
            ))),
        }
    }
}
