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

use super::{Provider, UpstreamCall};
use crate::config::{Config, ConfigError, ProviderSettings};
use crate::error::ApiError;
use crate::streaming::{completion_id, unix_now, ChunkStream};

/// Largest `n` the mock answers (a guard against absurd requests).
const MAX_CHOICES: u64 = 128;

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
