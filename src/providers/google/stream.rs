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

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::ids;
use super::response::{
    blocked_prompt_error, candidate_index, completion_id_for, finish_reason, model_name,
    read_parts, tool_call_values, usage, validation_error, AnswerContext,
};
use crate::error::ApiError;
use crate::streaming::unix_now;

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
        }
    }

    fn chunk(&self, index: u64, delta: Value, finish: Option<&str>) -> Value {
        let (id, model) = self
            .identity
            .as_ref()
            .map_or(("", ""), |i| (i.id.as_str(), i.model.as_str()));
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": model,
            "choices": [{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
    }

    /// Translate one upstream event into zero or more chunks.
    pub fn on_event(&mut self, event: &Value) -> Result<Vec<Value>, ApiError> {
        self.events += 1;
        if let Some(error) = blocked_prompt_error(event) {
            return Err(error);
        }
        if self.identity.is_none() {
            self.identity = Some(Identity {
                id: completion_id_for(event),
                model: model_name(event, &self.ctx.model),
                stem: ids::response_stem(event),
            });
        }
        if let Some(meta) = event.get("usageMetadata") {
            self.last_usage = Some(meta.clone());
        }
        let stem = self
            .identity
            .as_ref()
            .map(|i| i.stem.clone())
            .unwrap_or_default();

        let mut out = Vec::new();
        let candidates = event.get("candidates").and_then(Value::as_array);
        for (position, candidate) in candidates.into_iter().flatten().enumerate() {
            let index = candidate_index(candidate, position);
            let reason = candidate.get("finishReason").and_then(Value::as_str);
            let state = self.choices.entry(index).or_default();
            if state.finished {
                continue;
            }
            if self.ctx.validate {
                if let Some(error) = reason.and_then(|r| validation_error(r, candidate)) {
                    return Err(error);
                }
            }
            let parts = read_parts(candidate);
            let first_ordinal = state.tool_calls;
            state.tool_calls += parts.calls.len();
            let had_calls = state.tool_calls > 0;
            let send_role = !state.started;
            state.started = true;
            state.finished = reason.is_some();

            if send_role {
                out.push(self.chunk(index, json!({"role": "assistant", "content": ""}), None));
            }
            if let Some(reasoning) = parts.reasoning {
                out.push(self.chunk(index, json!({"reasoning_content": reasoning}), None));
            }
            if let Some(text) = parts.text {
                out.push(self.chunk(index, json!({"content": text}), None));
            }
            // Gemini sends each call whole: one delta with id, name and all
            // arguments; `index` is the call's position in the choice. One chunk per
            // call, as OpenAI streams them: clients such as llama-index read only
            // the first tool call of a chunk and would drop parallel calls.
            for (mut call, ordinal) in tool_call_values(&stem, index, first_ordinal, &parts.calls)
                .into_iter()
                .zip(first_ordinal..)
            {
                call["index"] = ordinal.into();
                out.push(self.chunk(index, json!({"tool_calls": [call]}), None));
            }
            if let Some(finish) = finish_reason(reason, had_calls) {
                out.push(self.chunk(index, json!({}), Some(finish)));
            }
        }
        Ok(out)
    }

    /// The chunks after the upstream's last event: finish chunks for choices Gemini
    /// left open, then the usage chunk if asked for.
    pub fn finish(&mut self) -> Result<Vec<Value>, ApiError> {
        if self.events == 0 {
            return Err(ApiError::upstream_failure(
                "Gemini ended the stream without sending anything",
            ));
        }
        let mut out = Vec::new();
        let open: Vec<(u64, bool)> = self
            .choices
            .iter()
            .filter(|(_, c)| !c.finished)
            .map(|(i, c)| (*i, c.tool_calls > 0))
            .collect();
        for (index, had_calls) in open {
            tracing::warn!("Gemini stream ended without a finishReason for candidate {index}");
            let finish = if had_calls { "tool_calls" } else { "stop" };
            out.push(self.chunk(index, json!({}), Some(finish)));
        }
        if self.include_usage {
            let usage = match &self.last_usage {
                Some(meta) => usage(meta),
                None => {
                    tracing::warn!("Gemini stream carried no usageMetadata; reporting zero usage");
                    usage(&Value::Null)
                }
            };
            let mut chunk = self.chunk(0, json!({}), None);
            chunk["choices"] = json!([]);
            chunk["usage"] = usage;
            out.push(chunk);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        chunks.extend(t.finish().unwrap());
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
        chunks.extend(t.finish().unwrap());
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
        assert!(translator(false).finish().is_err());
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
