//! `api_type = "mock"`: a built-in, deterministic model for demos, client
//! integration tests and load tests. It needs no network and no key.
//!
//! The answer is built from the request: `response` from the connection settings if
//! set, otherwise "You said: <last user message>". It is split into one chunk per
//! word when streamed (with an optional delay per chunk), honours `n`,
//! `max_tokens` / `max_completion_tokens` (finish_reason `length`),
//! `stream_options.include_usage`, and answers with a call to the requested tool when
//! `tool_choice` is `"required"` or names a function. Token counts are word counts.
//! Its `models` setting is what it reports to `expand_wildcards` listings.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::doors::{DoorCall, EmbeddingInput, Embeddings, TextCompletion};
use super::{Provider, UpstreamCall};
use crate::config::{Config, ConfigError, ProviderSettings};
use crate::error::ApiError;
use crate::payload::Payload;
use crate::streaming::{completion_id, unix_now, ChunkStream};

/// Largest `n` the mock answers (a guard against absurd requests).
const MAX_CHOICES: u64 = 128;
/// Length of the mock's embeddings unless `dimensions` asks for another.
const MOCK_DIMENSIONS: usize = 16;
/// Longest embedding the mock makes.
const MAX_DIMENSIONS: u64 = 8192;
/// Most numbers in one mock embeddings answer (a few MB of JSON), so that one small
/// request cannot make it write hundreds of megabytes.
const MAX_NUMBERS: usize = 1 << 20;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MockOptions {
    /// Fixed answer text instead of the echo.
    #[serde(default)]
    response: Option<String>,
    /// Delay before each streamed content chunk, in milliseconds.
    #[serde(default, deserialize_with = "crate::config::lenient::f64")]
    chunk_delay_ms: f64,
    /// Model ids reported to `expand_wildcards` listings.
    #[serde(default)]
    models: Option<Vec<String>>,
}

pub struct MockProvider {
    response: Option<String>,
    chunk_delay: Duration,
    models: Option<Vec<String>>,
}

impl MockProvider {
    pub fn from_settings(
        settings: &ProviderSettings,
        key: &str,
        config: &Config,
    ) -> Result<Self, ConfigError> {
        let options: MockOptions = crate::config::deserialize_at(
            Value::Object(settings.options.clone()),
            key,
            &config.path,
        )?;
        Ok(MockProvider {
            response: options.response,
            chunk_delay: Duration::from_secs_f64(options.chunk_delay_ms / 1000.0),
            models: options.models,
        })
    }

    fn plan(&self, call: &UpstreamCall) -> Result<Answer, ApiError> {
        let n = call.choice_count();
        if n > MAX_CHOICES {
            return Err(ApiError::invalid_param(
                "n",
                format!("n must be at most {MAX_CHOICES}"),
            ));
        }
        let prompt_tokens: usize = call
            .messages()
            .iter()
            .map(|m| word_count(&message_text(m)))
            .sum();
        if let Some(tool) = requested_tool(call) {
            return Ok(Answer {
                n,
                pieces: Vec::new(),
                tool: Some(tool),
                finish_reason: "tool_calls",
                prompt_tokens,
                completion_tokens: 1,
            });
        }
        let text = match &self.response {
            Some(text) => text.clone(),
            None => {
                let last_user = call
                    .messages()
                    .iter()
                    .rev()
                    .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
                    .map(message_text)
                    .unwrap_or_default();
                if last_user.trim().is_empty() {
                    "Hello from the lm-proxy mock connection.".to_owned()
                } else {
                    format!("You said: {}", last_user.trim())
                }
            }
        };
        let limit = ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|k| call.params.get(*k).and_then(Value::as_u64));
        let mut pieces: Vec<String> = text.split_inclusive(' ').map(str::to_owned).collect();
        let mut finish_reason = "stop";
        if let Some(limit) = limit {
            if (pieces.len() as u64) > limit {
                pieces.truncate(limit as usize);
                finish_reason = "length";
            }
        }
        let completion_tokens = pieces.len();
        Ok(Answer {
            n,
            pieces,
            tool: None,
            finish_reason,
            prompt_tokens,
            completion_tokens,
        })
    }
}

struct Answer {
    n: u64,
    pieces: Vec<String>,
    tool: Option<String>,
    finish_reason: &'static str,
    prompt_tokens: usize,
    completion_tokens: usize,
}

impl Answer {
    fn usage(&self) -> Value {
        let completion = self.completion_tokens * self.n as usize;
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        })
    }

    fn tool_call_id(&self, choice: u64) -> String {
        format!("call_mock_{choice}")
    }
}

#[async_trait]
impl Provider for MockProvider {
    async fn list_models(&self) -> Result<Vec<String>, ApiError> {
        self.models
            .clone()
            .ok_or_else(|| ApiError::upstream_failure("this mock connection has no `models` list"))
    }

    async fn embeddings(&self, call: DoorCall) -> Result<Embeddings, ApiError> {
        let dimensions = match call.dimensions() {
            Some(d) if d > MAX_DIMENSIONS => {
                return Err(ApiError::invalid_param(
                    "dimensions",
                    format!("the mock embeds in at most {MAX_DIMENSIONS} dimensions"),
                ))
            }
            Some(d) => d as usize,
            None => MOCK_DIMENSIONS,
        };
        if dimensions.saturating_mul(call.inputs.len()) > MAX_NUMBERS {
            return Err(ApiError::invalid_param(
                "dimensions",
                format!("the mock makes at most {MAX_NUMBERS} numbers per request"),
            ));
        }
        let vectors = call
            .inputs
            .iter()
            .map(|input| mock_vector(&input.as_text(), dimensions))
            .collect();
        let prompt_tokens = call
            .inputs
            .iter()
            .map(|input| match input {
                EmbeddingInput::Text(text) => word_count(text) as u64,
                EmbeddingInput::Tokens(ids) => ids.len() as u64,
            })
            .sum();
        Ok(Embeddings::Vectors {
            vectors,
            prompt_tokens: Some(prompt_tokens),
        })
    }

    async fn text_completion(&self, call: DoorCall) -> Result<TextCompletion, ApiError> {
        text_completion(&self.response, self.chunk_delay, call)
    }

    async fn complete(&self, call: UpstreamCall) -> Result<Value, ApiError> {
        let answer = self.plan(&call)?;
        let choices: Vec<Value> = (0..answer.n)
            .map(|index| {
                let message = match &answer.tool {
                    Some(name) => json!({
                        "role": "assistant",
                        "content": null,
                        "tool_calls": [{
                            "id": answer.tool_call_id(index),
                            "type": "function",
                            "function": {"name": name, "arguments": "{}"},
                        }],
                    }),
                    None => json!({"role": "assistant", "content": answer.pieces.concat()}),
                };
                json!({"index": index, "message": message, "logprobs": null, "finish_reason": answer.finish_reason})
            })
            .collect();
        Ok(json!({
            "id": completion_id(),
            "object": "chat.completion",
            "created": unix_now(),
            "model": call.model,
            "choices": choices,
            "usage": answer.usage(),
        }))
    }

    async fn stream(&self, call: UpstreamCall) -> Result<ChunkStream, ApiError> {
        let answer = self.plan(&call)?;
        let id = completion_id();
        let created = unix_now();
        let chunk = |choices: Value, usage: Value| {
            json!({
                "id": id, "object": "chat.completion.chunk", "created": created,
                "model": call.model, "choices": choices, "usage": usage,
            })
        };
        let choice = |index: u64, delta: Value, finish: Value| json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}]);
        let include_usage = call.include_usage();

        // (chunk, whether to wait `chunk_delay` before sending it)
        let mut planned: Vec<(Value, bool)> = Vec::new();
        for index in 0..answer.n {
            planned.push((
                chunk(
                    choice(
                        index,
                        json!({"role": "assistant", "content": ""}),
                        Value::Null,
                    ),
                    Value::Null,
                ),
                false,
            ));
        }
        match &answer.tool {
            Some(name) => {
                for index in 0..answer.n {
                    let head = json!({"tool_calls": [{"index": 0, "id": answer.tool_call_id(index), "type": "function",
                                                       "function": {"name": name, "arguments": ""}}]});
                    planned.push((chunk(choice(index, head, Value::Null), Value::Null), true));
                    let args =
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]});
                    planned.push((chunk(choice(index, args, Value::Null), Value::Null), true));
                }
            }
            None => {
                for piece in &answer.pieces {
                    for index in 0..answer.n {
                        planned.push((
                            chunk(
                                choice(index, json!({"content": piece}), Value::Null),
                                Value::Null,
                            ),
                            true,
                        ));
                    }
                }
            }
        }
        for index in 0..answer.n {
            planned.push((
                chunk(
                    choice(index, json!({}), json!(answer.finish_reason)),
                    Value::Null,
                ),
                false,
            ));
        }
        if include_usage {
            planned.push((chunk(json!([]), answer.usage()), false));
        }

        let delay = self.chunk_delay;
        let stream = futures_util::stream::iter(planned).then(move |(chunk, wait)| async move {
            if wait && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(chunk)
        });
        Ok(Box::pin(stream))
    }
}

/// The tool the request forces: a named `tool_choice`, or the first tool when
/// `tool_choice` is `"required"`.
fn requested_tool(call: &UpstreamCall) -> Option<String> {
    let choice = call.params.get("tool_choice")?;
    if let Some(name) = choice.pointer("/function/name").and_then(Value::as_str) {
        return Some(name.to_owned());
    }
    if choice.as_str() == Some("required") {
        return call
            .params
            .get("tools")?
            .as_array()?
            .first()?
            .pointer("/function/name")
            .and_then(Value::as_str)
            .map(str::to_owned);
    }
    None
}

/// The text of a message: its string content, or its text parts joined.
fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

/// The mock's embedding of a text: each component a function of the text and its
/// index only (FNV-1a, then a 64-bit mix), so the same text gets the same vector in
/// every run, on every machine; scaled to unit length, as real embeddings are.
pub(crate) fn mock_vector(text: &str, dimensions: usize) -> Vec<f32> {
    let mut seed: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.as_bytes() {
        seed ^= u64::from(*byte);
        seed = seed.wrapping_mul(0x0100_0000_01b3);
    }
    let mut vector: Vec<f32> = (0..dimensions as u64)
        .map(|i| {
            // splitmix64 of (seed, index)
            let mut z = seed.wrapping_add((i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            // The top 24 bits as a value in [-1, 1).
            ((z >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect();
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

/// The prompts of a legacy completions request: a string, strings, token ids or
/// lists of token ids (written out with spaces).
fn prompts(prompt: Option<&Value>) -> Vec<String> {
    let as_text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Array(ids) => ids
            .iter()
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    };
    match prompt {
        None => vec![String::new()],
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            vec![as_text(&Value::Array(items.clone()))]
        }
        Some(Value::Array(items)) if items.is_empty() => vec![String::new()],
        Some(Value::Array(items)) => items.iter().map(as_text).collect(),
        Some(other) => vec![as_text(other)],
    }
}

/// A legacy completion from the mock: "You said: <prompt>" (or the configured
/// `response`) per prompt, cut at `max_tokens` words; streamed a word per chunk.
fn text_completion(
    response: &Option<String>,
    delay: Duration,
    call: DoorCall,
) -> Result<TextCompletion, ApiError> {
    let prompts = prompts(call.params.get("prompt"));
    let n = call
        .params
        .get("n")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .max(1);
    if n.saturating_mul(prompts.len() as u64) > MAX_CHOICES {
        return Err(ApiError::invalid_param(
            "n",
            format!("the mock answers at most {MAX_CHOICES} choices"),
        ));
    }
    let limit = call.params.get("max_tokens").and_then(Value::as_u64);
    let mut choices = Vec::new();
    let mut prompt_tokens = 0;
    let mut completion_tokens = 0;
    for prompt in &prompts {
        prompt_tokens += word_count(prompt);
        let text = match response {
            Some(text) => text.clone(),
            None if prompt.trim().is_empty() => {
                "Hello from the lm-proxy mock connection.".to_owned()
            }
            None => format!("You said: {}", prompt.trim()),
        };
        let mut pieces: Vec<String> = text.split_inclusive(' ').map(str::to_owned).collect();
        let mut finish = "stop";
        if let Some(limit) = limit {
            if pieces.len() as u64 > limit {
                pieces.truncate(limit as usize);
                finish = "length";
            }
        }
        for _ in 0..n {
            completion_tokens += pieces.len();
            choices.push((pieces.clone(), finish));
        }
    }
    let id = crate::context::random_id("cmpl-");
    let created = unix_now();
    let model = call.model.clone();
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let object = |choices: Value, usage: Value| {
        json!({"id": id, "object": "text_completion", "created": created, "model": model,
               "choices": choices, "usage": usage})
    };
    let choice = |index: usize, text: &str, finish: Value| json!({"index": index, "text": text, "logprobs": null, "finish_reason": finish});
    if !call.stream {
        let all = choices
            .iter()
            .enumerate()
            .map(|(i, (pieces, finish))| choice(i, &pieces.concat(), json!(finish)))
            .collect();
        return Ok(TextCompletion::Complete(Payload::Value(object(
            Value::Array(all),
            usage,
        ))));
    }
    // Asked by the client, or by the gateway for loggers and metrics (the door then
    // hides it from a client that did not ask).
    let include_usage = call.include_usage();
    // (chunk, whether to wait `delay` before sending it)
    let mut planned = Vec::new();
    for (i, (pieces, _)) in choices.iter().enumerate() {
        for piece in pieces {
            planned.push((
                object(json!([choice(i, piece, Value::Null)]), Value::Null),
                true,
            ));
        }
    }
    for (i, (_, finish)) in choices.iter().enumerate() {
        planned.push((
            object(json!([choice(i, "", json!(finish))]), Value::Null),
            false,
        ));
    }
    if include_usage {
        planned.push((object(json!([]), usage), false));
    }
    let stream = futures_util::stream::iter(planned).then(move |(chunk, wait)| async move {
        if wait && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(Payload::Value(chunk))
    });
    Ok(TextCompletion::Stream(Box::pin(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mock_vectors_are_stable_unit_vectors_of_the_asked_length() {
        let a = mock_vector("hello world", 16);
        assert_eq!(a, mock_vector("hello world", 16));
        assert_ne!(a, mock_vector("hello world!", 16));
        assert_eq!(a.len(), 16);
        assert_eq!(mock_vector("x", 3).len(), 3);
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        // Pinned: the same numbers in every run and on every machine.
        assert_eq!(
            format!("{:.6}", mock_vector("hello", 4)[0]),
            format!("{:.6}", PINNED)
        );
    }

    const PINNED: f32 = 0.746_528;
}
