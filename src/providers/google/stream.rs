//! Gemini `streamGenerateContent?alt=sse` events → OpenAI `chat.completion.chunk`s
//! (reference §3.4, §3.8 "Streaming state machine").
//!
//! Each SSE event is a whole `GenerateContentResponse` carrying only new text. Per
//! candidate: a role chunk first, then text / reasoning deltas, one chunk per
//! function call, each with one whole tool-call delta (Gemini sends calls whole;
//! `index` counts calls per choice across events), a finish chunk when `finishReason` arrives. `usageMetadata` is
//! repeated (partially) on many events, so the last one is kept and sent as the
//! `choices: []` usage chunk at the end, only when the client asked for
//! `stream_options.include_usage`. A blocked prompt is an error.
//!
//! Events of text and reasoning (the bulk of a stream) are read into a typed view
//! that borrows from the event's text ([`FastResponse`]) and chunks are written as
//! text ([`ChunkWriter`]); events with anything else (function calls, prompt
//! feedback, safety ratings, members of unexpected types) take the tree path, which
//! decides exactly as before. The view admits only members it knows, of the types
//! it expects, so whatever it accepts the tree path would have read the same way.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

use serde::Deserialize;
use serde_json::{json, Value};

use super::ids;
use super::response::{
    blocked_prompt_error, candidate_index, completion_id_of, finish_reason, model_name_of,
    read_parts, tool_call_values, validation_error, write_usage, AnswerContext, Parts,
};
use super::signatures::SignatureStore;
use crate::error::ApiError;
use crate::json_scan::{first_time, StringMemo, Walk};
use crate::payload::Payload;
use crate::providers::chunk_text::{empty_delta, role_delta, string_delta, ChunkWriter, Text};
use crate::sse::EventData;
use crate::streaming::{json_chunk, unix_now};

#[derive(Debug, Default)]
struct Choice {
    /// Tool calls sent so far (the next call's `index`).
    tool_calls: usize,
    /// The role chunk was sent.
    started: bool,
    /// The finish chunk was sent.
    finished: bool,
}

/// What every chunk of one stream shares.
struct Identity {
    id: String,
    model: String,
    /// Stem of the tool-call ids (see `ids::response_stem`).
    stem: String,
}

/// The typed view of an event of text or reasoning. Unknown members or members of
/// another type make it fail, and the event then takes the tree path.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FastResponse<'a> {
    #[serde(borrow)]
    candidates: Option<Vec<FastCandidate<'a>>>,
    #[serde(borrow)]
    model_version: Option<Text<'a>>,
    #[serde(borrow)]
    response_id: Option<Text<'a>>,
    /// Kept whole (as the tree path keeps it); `Some(Null)` for `null`, as there.
    #[serde(default, deserialize_with = "present")]
    usage_metadata: Option<Value>,
}

fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FastCandidate<'a> {
    #[serde(borrow)]
    content: Option<FastContent<'a>>,
    index: Option<u64>,
    #[serde(borrow)]
    finish_reason: Option<Text<'a>>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
#[serde(deny_unknown_fields)]
struct FastContent<'a> {
    /// Admitted as a string or null, not used.
    #[serde(borrow)]
    #[allow(dead_code)]
    role: Option<Text<'a>>,
    #[serde(borrow)]
    parts: Option<Vec<FastPart<'a>>>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FastPart<'a> {
    #[serde(borrow)]
    text: Option<Text<'a>>,
    thought: Option<bool>,
    /// Admitted as a string or null; a text part's signature is not passed on.
    #[serde(borrow)]
    #[allow(dead_code)]
    thought_signature: Option<Text<'a>>,
}

impl<'a> FastResponse<'a> {
    /// The usual event (text or reasoning parts, a finish reason, an index, the
    /// identity members) read by walking its text with `json_scan` instead of
    /// serde's typed parse. `None` leaves the event to serde, which reads it or
    /// refuses it as before: `usageMetadata`, a key with escapes, a member twice, an
    /// unknown member, a value of another type. What it returns is what serde
    /// returns for the same text (`walked_events_read_as_serde_reads_them`).
    fn walked(text: &'a str) -> Option<FastResponse<'a>> {
        let mut walk = Walk::new(text);
        let mut event = FastResponse {
            candidates: None,
            model_version: None,
            response_id: None,
            usage_metadata: None,
        };
        let mut seen = [false; 3];
        walk.object(|walk, key| {
            match key {
                "candidates" => {
                    first_time(&mut seen[0])?;
                    if !walk.null() {
                        let mut list = Vec::new();
                        walk.array(|walk| {
                            list.push(FastCandidate::walked(walk)?);
                            Some(())
                        })?;
                        event.candidates = Some(list);
                    }
                }
                "modelVersion" => {
                    first_time(&mut seen[1])?;
                    event.model_version = Text::or_null(walk)?;
                }
                "responseId" => {
                    first_time(&mut seen[2])?;
                    event.response_id = Text::or_null(walk)?;
                }
                _ => return None,
            }
            Some(())
        })?;
        walk.done()?;
        Some(event)
    }
}

impl<'a> FastCandidate<'a> {
    fn walked(walk: &mut Walk<'a>) -> Option<FastCandidate<'a>> {
        let mut candidate = FastCandidate {
            content: None,
            index: None,
            finish_reason: None,
        };
        let mut seen = [false; 3];
        walk.object(|walk, key| {
            match key {
                "content" => {
                    first_time(&mut seen[0])?;
                    if !walk.null() {
                        candidate.content = Some(FastContent::walked(walk)?);
                    }
                }
                "index" => {
                    first_time(&mut seen[1])?;
                    candidate.index = walk.u64_or_null()?;
                }
                "finishReason" => {
                    first_time(&mut seen[2])?;
                    candidate.finish_reason = Text::or_null(walk)?;
                }
                _ => return None,
            }
            Some(())
        })?;
        Some(candidate)
    }
}

impl<'a> FastContent<'a> {
    fn walked(walk: &mut Walk<'a>) -> Option<FastContent<'a>> {
        let mut content = FastContent {
            role: None,
            parts: None,
        };
        let mut seen = [false; 2];
        walk.object(|walk, key| {
            match key {
                "role" => {
                    first_time(&mut seen[0])?;
                    content.role = Text::or_null(walk)?;
                }
                "parts" => {
                    first_time(&mut seen[1])?;
                    if !walk.null() {
                        let mut list = Vec::new();
                        walk.array(|walk| {
                            list.push(FastPart::walked(walk)?);
                            Some(())
                        })?;
                        content.parts = Some(list);
                    }
                }
                _ => return None,
            }
            Some(())
        })?;
        Some(content)
    }
}

impl<'a> FastPart<'a> {
    fn walked(walk: &mut Walk<'a>) -> Option<FastPart<'a>> {
        let mut part = FastPart {
            text: None,
            thought: None,
            thought_signature: None,
        };
        let mut seen = [false; 3];
        walk.object(|walk, key| {
            match key {
                "text" => {
                    first_time(&mut seen[0])?;
                    part.text = Text::or_null(walk)?;
                }
                "thought" => {
                    first_time(&mut seen[1])?;
                    part.thought = walk.bool_or_null()?;
                }
                "thoughtSignature" => {
                    first_time(&mut seen[2])?;
                    part.thought_signature = Text::or_null(walk)?;
                }
                _ => return None,
            }
            Some(())
        })?;
        Some(part)
    }
}

/// Reads a stream's events into the typed view, in order: an event that is the last
/// one but for the text of its one part (Gemini's usual event: the same candidate,
/// role, model version, response id and usage, new text) is read by a comparison
/// with the last ([`StringMemo`]), not walked or parsed again.
#[derive(Default, Clone)]
struct EventReader {
    /// The last event when it was one candidate with one text part, not finished.
    last: StringMemo,
    /// Where that event's other strings lie in it.
    role: Option<Range<usize>>,
    model_version: Option<Range<usize>>,
    response_id: Option<Range<usize>>,
    index: Option<u64>,
    thought: Option<bool>,
    usage_metadata: Option<Value>,
}

impl EventReader {
    /// The view of `event` (walked, else by serde), `None` when it does not fit
    /// the view, as [`FastResponse::walked`] and serde would say.
    fn read<'a>(&mut self, event: &'a EventData) -> Option<FastResponse<'a>> {
        let text = event.bytes();
        if let Some(span) = self.last.string_span(text) {
            if let Some(view) = self.repeated(event.as_str(), span) {
                return Some(view);
            }
        }
        let data = event.as_str();
        let view = FastResponse::walked(data).or_else(|| serde_json::from_str(data).ok());
        match &view {
            Some(view) if self.keep(text, view).is_some() => {}
            _ => self.last.forget(),
        }
        view
    }

    /// The last event's view, with its text at `span` of `text` and its other
    /// strings where they lie in `text`.
    fn repeated<'a>(&self, text: &'a str, span: Range<usize>) -> Option<FastResponse<'a>> {
        let read = |string: &'a str| Text(Cow::Borrowed(string));
        let moved = |range: &Option<Range<usize>>| {
            Some(self.last.moved_text(text, range, &span)?.map(read))
        };
        let part = FastPart {
            text: Some(read(StringMemo::text_at(text, span.clone())?)),
            thought: self.thought,
            thought_signature: None,
        };
        let candidate = FastCandidate {
            content: Some(FastContent {
                role: moved(&self.role)?,
                parts: Some(vec![part]),
            }),
            index: self.index,
            finish_reason: None,
        };
        Some(FastResponse {
            candidates: Some(vec![candidate]),
            model_version: moved(&self.model_version)?,
            response_id: moved(&self.response_id)?,
            usage_metadata: self.usage_metadata.clone(),
        })
    }

    /// Remember `text` when its view is one unfinished candidate with one text part
    /// and its strings are as written (no escapes); `None` when it is not kept.
    fn keep(&mut self, text: &bytes::Bytes, view: &FastResponse<'_>) -> Option<()> {
        let [candidate] = view.candidates.as_deref()? else {
            return None;
        };
        let content = candidate.content.as_ref()?;
        let [part] = content.parts.as_deref()? else {
            return None;
        };
        if candidate.finish_reason.is_some() || part.thought_signature.is_some() {
            return None;
        }
        let Some(Text(Cow::Borrowed(value))) = &part.text else {
            return None;
        };
        if !self.last.remember(text, value) {
            return None;
        }
        let range =
            |string: &Option<Text<'_>>| self.last.range_of_read(string.as_ref().map(|t| &t.0));
        let (role, model_version, response_id) = (
            range(&content.role)?,
            range(&view.model_version)?,
            range(&view.response_id)?,
        );
        (self.role, self.model_version, self.response_id) = (role, model_version, response_id);
        (self.index, self.thought) = (candidate.index, part.thought);
        self.usage_metadata = view.usage_metadata.clone();
        Some(())
    }
}

impl FastCandidate<'_> {
    /// `read_parts` for a candidate without function calls.
    fn parts(&self) -> Parts {
        let mut out = Parts::default();
        let parts = self.content.as_ref().and_then(|c| c.parts.as_ref());
        for part in parts.into_iter().flatten() {
            let Some(text) = part.text.as_ref().map(Text::as_str) else {
                continue;
            };
            if text.is_empty() {
                continue;
            }
            let slot = if part.thought == Some(true) {
                &mut out.reasoning
            } else {
                &mut out.text
            };
            slot.get_or_insert_with(String::new).push_str(text);
        }
        out
    }
}

type Out = VecDeque<Payload>;

/// The per-stream translation state.
pub struct StreamTranslator {
    ctx: AnswerContext,
    include_usage: bool,
    created: u64,
    /// Set from the first event: one id, model and tool-call stem for the stream.
    identity: Option<Identity>,
    choices: BTreeMap<u64, Choice>,
    last_usage: Option<Value>,
    events: usize,
    writer: ChunkWriter,
    /// Where the signatures of the tool calls handed out are remembered.
    signatures: Option<SignatureStore>,
    reader: EventReader,
}

impl StreamTranslator {
    pub fn new(ctx: AnswerContext, include_usage: bool) -> Self {
        StreamTranslator {
            ctx,
            include_usage,
            created: unix_now(),
            identity: None,
            choices: BTreeMap::new(),
            last_usage: None,
            events: 0,
            writer: ChunkWriter::default(),
            signatures: None,
            reader: EventReader::default(),
        }
    }

    /// Remember the thought signatures of the tool calls sent in `store`.
    pub fn with_signatures(mut self, store: SignatureStore) -> Self {
        self.signatures = Some(store);
        self
    }

    fn chunk(
        &mut self,
        index: u64,
        hint: usize,
        delta: impl FnOnce(&mut Vec<u8>),
        finish: Option<&str>,
    ) -> Payload {
        let (id, model) = id_and_model(&self.identity);
        self.writer
            .choice((id, self.created, model), index, hint, delta, finish)
    }

    fn set_identity(&mut self, response_id: Option<&str>, model_version: Option<&str>) {
        if self.identity.is_none() {
            self.identity = Some(Identity {
                id: completion_id_of(response_id),
                model: model_name_of(model_version, &self.ctx.model),
                stem: ids::stem_of(response_id),
            });
        }
    }

    /// Translate the next upstream event of the stream into zero or more chunks:
    /// [`StreamTranslator::on_data`], with the usual text event read by a
    /// comparison with the last ([`EventReader`]).
    pub fn on_event_data(&mut self, event: &EventData, out: &mut Out) -> Result<(), ApiError> {
        match self.reader.read(event) {
            Some(view) => self.on_fast(view, out),
            None => self.on_value(&json_chunk(event)?, out),
        }
    }

    /// [`StreamTranslator::on_event_data`] for an event given as text (the tests).
    #[cfg(test)]
    pub fn on_data(&mut self, data: &str, out: &mut Out) -> Result<(), ApiError> {
        self.on_event_data(&EventData::from(data.to_owned()), out)
    }

    /// An event of text and reasoning only, read by the typed view.
    fn on_fast(&mut self, event: FastResponse, out: &mut Out) -> Result<(), ApiError> {
        self.events += 1;
        // No `promptFeedback` in the view: never a blocked prompt.
        self.set_identity(
            event.response_id.as_ref().map(Text::as_str),
            event.model_version.as_ref().map(Text::as_str),
        );
        if let Some(meta) = event.usage_metadata {
            self.last_usage = Some(meta);
        }
        for (position, candidate) in event.candidates.iter().flatten().enumerate() {
            let index = candidate.index.unwrap_or(position as u64);
            let reason = candidate.finish_reason.as_ref().map(Text::as_str);
            // No `finishMessage` in the view: what `validation_error` reads is absent.
            let parts = candidate.parts();
            self.on_candidate(index, reason, &Value::Null, parts, "", out)?;
        }
        Ok(())
    }

    /// Translate one upstream event (as a tree) into zero or more chunks.
    fn on_value(&mut self, event: &Value, out: &mut Out) -> Result<(), ApiError> {
        self.events += 1;
        if let Some(error) = blocked_prompt_error(event) {
            return Err(error);
        }
        self.set_identity(
            event.get("responseId").and_then(Value::as_str),
            event.get("modelVersion").and_then(Value::as_str),
        );
        if let Some(meta) = event.get("usageMetadata") {
            self.last_usage = Some(meta.clone());
        }
        let stem = self
            .identity
            .as_ref()
            .map(|i| i.stem.clone())
            .unwrap_or_default();
        let candidates = event.get("candidates").and_then(Value::as_array);
        for (position, candidate) in candidates.into_iter().flatten().enumerate() {
            let index = candidate_index(candidate, position);
            let reason = candidate.get("finishReason").and_then(Value::as_str);
            let parts = read_parts(candidate);
            self.on_candidate(index, reason, candidate, parts, &stem, out)?;
        }
        Ok(())
    }

    /// One candidate of an event: `candidate` is read only for a failed validation.
    fn on_candidate(
        &mut self,
        index: u64,
        reason: Option<&str>,
        candidate: &Value,
        parts: Parts,
        stem: &str,
        out: &mut Out,
    ) -> Result<(), ApiError> {
        let state = self.choices.entry(index).or_default();
        if state.finished {
            return Ok(());
        }
        if self.ctx.validate {
            if let Some(error) = reason.and_then(|r| validation_error(r, candidate)) {
                return Err(error);
            }
        }
        let first_ordinal = state.tool_calls;
        state.tool_calls += parts.calls.len();
        let had_calls = state.tool_calls > 0;
        let send_role = !state.started;
        state.started = true;
        state.finished = reason.is_some();

        if send_role {
            let chunk = self.chunk(index, 0, role_delta, None);
            out.push_back(chunk);
        }
        if let Some(reasoning) = parts.reasoning {
            let delta = string_delta("reasoning_content", &reasoning);
            let chunk = self.chunk(index, reasoning.len(), delta, None);
            out.push_back(chunk);
        }
        if let Some(text) = parts.text {
            let chunk = self.chunk(index, text.len(), string_delta("content", &text), None);
            out.push_back(chunk);
        }
        // Gemini sends each call whole: one delta with id, name and all
        // arguments; `index` is the call's position in the choice. One chunk per
        // call, as OpenAI streams them: clients such as llama-index read only
        // the first tool call of a chunk and would drop parallel calls.
        for (mut call, ordinal) in tool_call_values(stem, index, first_ordinal, &parts.calls)
            .into_iter()
            .zip(first_ordinal..)
        {
            call["index"] = ordinal.into();
            let delta = json!({"tool_calls": [call]});
            if let Some(store) = &self.signatures {
                store.remember(&json!({"choices": [{"delta": &delta}]}));
            }
            let chunk = self.chunk(
                index,
                256,
                |buf| serde_json::to_writer(buf, &delta).expect("JSON values serialize"),
                None,
            );
            out.push_back(chunk);
        }
        if let Some(finish) = finish_reason(reason, had_calls) {
            let chunk = self.chunk(index, 0, empty_delta, Some(finish));
            out.push_back(chunk);
        }
        Ok(())
    }

    /// The chunks after the upstream's last event: finish chunks for choices Gemini
    /// left open, then the usage chunk if asked for.
    pub fn finish(&mut self, out: &mut Out) -> Result<(), ApiError> {
        if self.events == 0 {
            return Err(ApiError::upstream_failure(
                "Gemini ended the stream without sending anything",
            ));
        }
        let open: Vec<(u64, bool)> = self
            .choices
            .iter()
            .filter(|(_, c)| !c.finished)
            .map(|(i, c)| (*i, c.tool_calls > 0))
            .collect();
        for (index, had_calls) in open {
            tracing::warn!("Gemini stream ended without a finishReason for candidate {index}");
            let finish = if had_calls { "tool_calls" } else { "stop" };
            let chunk = self.chunk(index, 0, empty_delta, Some(finish));
            out.push_back(chunk);
        }
        if self.include_usage {
            let meta = self.last_usage.take().unwrap_or_else(|| {
                tracing::warn!("Gemini stream carried no usageMetadata; reporting zero usage");
                Value::Null
            });
            let (id, model) = id_and_model(&self.identity);
            let chunk = self
                .writer
                .usage_only((id, self.created, model), |out| write_usage(&meta, out));
            out.push_back(chunk);
        }
        Ok(())
    }
}

/// The chunks' `id` and `model` (empty before the first event set them).
fn id_and_model(identity: &Option<Identity>) -> (&str, &str) {
    identity
        .as_ref()
        .map_or(("", ""), |i| (i.id.as_str(), i.model.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The walk reads an event exactly as serde's typed parse does, or leaves it
    /// to serde: samples of every shape, then every truncation, one-byte deletion
    /// and one-byte replacement of each.
    #[test]
    fn walked_events_read_as_serde_reads_them() {
        let samples = [
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"tok"}]},"index":0}],"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"Hm","thought":true},{"text":"Hi","thought":false,"thoughtSignature":"c2ln"}],"role":"model"},"finishReason":"STOP","index":1}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"say \"hi\"\n\u00e9\ud83d\ude00"}]}}],"responseId":null,"modelVersion":null}"#,
            r#"{"candidates":null}"#,
            r#"{"candidates":[]}"#,
            r#"{}"#,
            r#" { "candidates" : [ { "content" : { "parts" : [ { "text" : "x" } ] } , "index" : 2 } ] } "#,
            r#"{"candidates":[{"content":{"parts":[{"text":"a","text":"b"}]}}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"te\u0078t":"a"}]}}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{}}}]}}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"a"}]}}],"usageMetadata":{"promptTokenCount":3}}"#,
            r#"{"candidates":[{"index":-1}]}"#,
            r#"{"candidates":[{"index":1.0}]}"#,
            r#"{"candidates":[{"index":1e2}]}"#,
            r#"{"candidates":[{"index":18446744073709551615}]}"#,
            r#"{"candidates":[{"index":18446744073709551616}]}"#,
            r#"{"candidates":[{"index":007}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"thought":"yes"}]}}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":7}]}}]}"#,
            r#"{"candidates":[{"content":{"role":["model"],"parts":null}}]}"#,
            r#"{"candidates":[{"finishReason":"MAX_TOKENS","safetyRatings":[]}]}"#,
            r#"{"candidates":{"index":0}}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"\ud800"}]}}]}"#,
            r#"[]"#,
        ];
        let edits = b"\"\\{[10- n";
        let texts = crate::json_scan::cut_and_edited(&samples, edits);
        let mut walked = 0;
        for text in &texts {
            if let Some(event) = FastResponse::walked(text) {
                walked += 1;
                let serde = serde_json::from_str::<FastResponse>(text);
                assert_eq!(Some(event), serde.ok(), "{text}");
            }
        }
        // The walk does read the usual events (not everything left to serde).
        assert!(walked > 500, "{walked} of {}", texts.len());
        for sample in &samples[..7] {
            assert!(FastResponse::walked(sample).is_some(), "{sample}");
        }
    }

    fn values(out: Out) -> Vec<Value> {
        out.into_iter().map(Payload::into_value).collect()
    }

    fn texts(out: Out) -> Vec<String> {
        out.into_iter()
            .map(|p| String::from_utf8(p.into_json_bytes().to_vec()).unwrap())
            .collect()
    }

    impl StreamTranslator {
        /// An event's text through [`StreamTranslator::on_data`], its chunks as trees.
        fn on_event(&mut self, event: &Value) -> Result<Vec<Value>, ApiError> {
            let mut out = VecDeque::new();
            self.on_data(&event.to_string(), &mut out)?;
            Ok(values(out))
        }

        fn end(&mut self) -> Result<Vec<Value>, ApiError> {
            let mut out = VecDeque::new();
            self.finish(&mut out)?;
            Ok(values(out))
        }
    }

    /// The typed view and the tree path translate every event alike: same chunks,
    /// byte for byte, same errors, same state after it.
    #[test]
    fn typed_view_and_tree_path_agree() {
        let events = [
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"tok"}]},"index":0}],"modelVersion":"gemini-x","responseId":"r.1/2"}"#,
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"esc \"q\" \n \u00e9 \ud83d\ude00"},{"text":" more"}]},"index":0}],"usageMetadata":{"promptTokenCount":3}}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"think","thought":true},{"text":"","thoughtSignature":"AAAA"},{"text":null},{"thought":false}]},"index":0}],"usageMetadata":null}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"a"}]}},{"content":{"parts":[{"text":"b"}]},"index":1}]}"#,
            r#"{"candidates":[{"content":null,"index":2,"finishReason":"MAX_TOKENS"}]}"#,
            r#"{"candidates":[{"content":{"parts":null},"index":3}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"x","thought":"yes"}]},"index":0}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"x"}]},"index":"0"}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"x","text":"y"}]},"index":0}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"x"}]},"index":0,"safetyRatings":[{"a":"\ud800"}]}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{"a":1}},"thoughtSignature":"AAAA"}]},"index":0}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"x"}]},"index":0}],"extra":1e400}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"\ud800"}]},"index":0}]}"#,
            r#"{"candidates":{},"responseId":"r"}"#,
            r#"{"candidates":null}"#,
            r#"{"candidates":[]}"#,
            r#"{"promptFeedback":{"blockReason":"SAFETY"}}"#,
            r#"{"error":{"message":"quota","code":429}}"#,
            r#"not json"#,
            r#"[1]"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"end"}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":4,"totalTokenCount":7}}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"after"}]},"index":0}]}"#,
        ];
        for validate in [false, true] {
            let ctx = AnswerContext {
                model: "m".into(),
                validate,
            };
            let mut fast = StreamTranslator::new(ctx.clone(), true);
            let mut tree = StreamTranslator::new(ctx, true);
            tree.created = fast.created;
            for event in events {
                let (mut a, mut b) = (VecDeque::new(), VecDeque::new());
                let ra = fast.on_data(event, &mut a);
                let rb = json_chunk(event).and_then(|value| tree.on_value(&value, &mut b));
                match (ra, rb) {
                    (Ok(()), Ok(())) => {}
                    (Err(ea), Err(eb)) => {
                        assert_eq!(ea.error_object(), eb.error_object(), "{event}")
                    }
                    (ra, rb) => panic!("{event}: {ra:?} against {rb:?}"),
                }
                assert_eq!(texts(a), texts(b), "{event}");
                assert_eq!(
                    format!("{:?} {:?} {}", fast.choices, fast.last_usage, fast.events),
                    format!("{:?} {:?} {}", tree.choices, tree.last_usage, tree.events),
                    "{event}"
                );
            }
            let (mut a, mut b) = (VecDeque::new(), VecDeque::new());
            fast.finish(&mut a).unwrap();
            tree.finish(&mut b).unwrap();
            assert_eq!(texts(a), texts(b));
        }
    }

    #[test]
    fn text_events_read_by_comparison_read_as_walked() {
        let templates = [
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"@"}]},"index":0}],"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"@","thought":true}],"role":"model"}}],"usageMetadata":{"promptTokenCount":5},"responseId":"r2"}"#,
            r#"{"usageMetadata":{"trafficType":"ON_DEMAND"},"candidates":[{"index":3,"content":{"parts":[{"text":"@"}]}}],"modelVersion":null}"#,
            r#"{"candidates":[{"content":{"role":"mod\u0065l","parts":[{"text":"@"}]}}]}"#,
        ];
        let event = |text: &bytes::Bytes| EventData::from_utf8(text.clone()).expect("UTF-8");
        let compared = crate::json_scan::check_string_memo_reader(
            &templates,
            &["\"}]},\"finishReason\":\"STOP\",\"x\":{\"y\":[\""],
            |reader: &mut EventReader, text| format!("{:?}", reader.read(&event(text))),
            |text| {
                let text = event(text);
                let view = FastResponse::walked(&text).or_else(|| serde_json::from_str(&text).ok());
                format!("{view:?}")
            },
            |reader, text| reader.last.string_span(text).is_some(),
        );
        assert!(compared > 150, "{compared}");
    }

    /// Events of text, as Gemini writes them, are read by the typed view.
    #[test]
    fn text_events_take_the_typed_view() {
        for event in [
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hi \"x\"\n"}]},"index":0}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":1,"totalTokenCount":6,"promptTokensDetails":[{"modality":"TEXT","tokenCount":5}]},"modelVersion":"gemini-2.5-flash","responseId":"abc"}"#,
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"","thoughtSignature":"AAAA"}]},"finishReason":"STOP","index":0}],"modelVersion":"gemini-2.5-flash","responseId":"abc"}"#,
        ] {
            let view = serde_json::from_str::<FastResponse>(event);
            assert!(view.is_ok(), "{event}: {:?}", view.err());
        }
    }

    fn translator(include_usage: bool) -> StreamTranslator {
        StreamTranslator::new(
            AnswerContext {
                model: "gemini-2.5-flash".into(),
                validate: false,
            },
            include_usage,
        )
    }

    fn deltas(chunks: &[Value]) -> Vec<(u64, Value, Value)> {
        chunks
            .iter()
            .flat_map(|c| c["choices"].as_array().unwrap().clone())
            .map(|c| {
                (
                    c["index"].as_u64().unwrap(),
                    c["delta"].clone(),
                    c["finish_reason"].clone(),
                )
            })
            .collect()
    }

    #[test]
    fn text_calls_finish_and_last_usage() {
        let mut t = translator(true);
        let mut chunks = t
            .on_event(&json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}, "index": 0}],
                "usageMetadata": {"promptTokenCount": 5}, "responseId": "r1", "modelVersion": "gemini-2.5-flash"}))
            .unwrap();
        chunks.extend(
            t.on_event(&json!({"candidates": [{"content": {"parts": [
                {"text": "lo"},
                {"functionCall": {"name": "a", "args": {"x": 1}}},
                {"functionCall": {"name": "b", "args": {}}}
            ]}, "index": 0}], "usageMetadata": {"trafficType": "ON_DEMAND"}, "responseId": "r1"}))
                .unwrap(),
        );
        chunks.extend(
            t.on_event(&json!({"candidates": [{"content": {"parts": [
                {"functionCall": {"name": "c", "args": {}}},
                {"text": "", "thoughtSignature": "AAAA"}
            ]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3, "thoughtsTokenCount": 40, "totalTokenCount": 48}}))
            .unwrap(),
        );
        chunks.extend(t.end().unwrap());
        assert!(chunks.iter().all(|c| c["id"] == "chatcmpl-r1"));
        let d = deltas(&chunks);
        assert_eq!(d[0].1, json!({"role": "assistant", "content": ""}));
        assert_eq!(d[1].1, json!({"content": "Hel"}));
        assert_eq!(d[2].1, json!({"content": "lo"}));
        // Parallel calls of one event go out one per chunk, as OpenAI sends them.
        assert_eq!(
            d[3].1,
            json!({"tool_calls": [
                {"index": 0, "id": "call_r1_0_0", "type": "function", "function": {"name": "a", "arguments": "{\"x\":1}"}}
            ]})
        );
        assert_eq!(
            d[4].1,
            json!({"tool_calls": [
                {"index": 1, "id": "call_r1_0_1", "type": "function", "function": {"name": "b", "arguments": "{}"}}
            ]})
        );
        assert_eq!(d[5].1["tool_calls"].as_array().unwrap().len(), 1);
        assert_eq!(d[5].1["tool_calls"][0]["index"], 2);
        assert_eq!(d[5].1["tool_calls"][0]["id"], "call_r1_0_2");
        assert_eq!(d[6], (0, json!({}), json!("tool_calls")));
        let usage = chunks.last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 43);
        assert_eq!(usage["usage"]["total_tokens"], 48);
    }

    #[test]
    fn two_candidates_open_choices_and_no_usage() {
        let mut t = translator(false);
        let mut chunks = t
            .on_event(&json!({"candidates": [
                {"content": {"parts": [{"text": "a"}]}, "index": 0},
                {"content": {"parts": [{"text": "b"}]}, "index": 1, "finishReason": "MAX_TOKENS"}
            ]}))
            .unwrap();
        chunks.extend(t.end().unwrap());
        let d = deltas(&chunks);
        assert_eq!(
            d.iter().filter(|x| x.1.get("role").is_some()).count(),
            2,
            "{d:?}"
        );
        assert!(d.contains(&(1, json!({}), json!("length"))));
        // Candidate 0 never finished: closed with stop at the end.
        assert_eq!(d.last().unwrap(), &(0, json!({}), json!("stop")));
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    }

    #[test]
    fn blocked_prompt_and_empty_stream_are_errors() {
        let mut t = translator(false);
        let err = t
            .on_event(&json!({"promptFeedback": {"blockReason": "SAFETY"}}))
            .unwrap_err();
        assert_eq!(err.error_object()["code"], "content_filter");
        assert!(translator(false).end().is_err());
        let mut strict = StreamTranslator::new(
            AnswerContext {
                model: "m".into(),
                validate: true,
            },
            false,
        );
        assert!(strict
            .on_event(&json!({"candidates": [{"finishReason": "RECITATION"}]}))
            .is_err());
    }
}
