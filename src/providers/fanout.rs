//! `n > 1` for upstreams that have no `n` of their own: run `n` single-choice calls
//! concurrently and merge them into one OpenAI answer.
//!
//! This module owns the provider-independent part of fan-out: reading and capping
//! `n`, running the calls (the first failure fails the whole request), merging
//! `chat.completion` objects, and multiplexing `chat.completion.chunk` streams.
//! A provider only supplies "make one call" closures whose answers are already in
//! the OpenAI shape, so any translating provider can reuse it.
//!
//! Usage policy: the merged `usage` is the honest bill, the sum of every field of
//! every sub-answer (the prompt is paid once per upstream call, so `prompt_tokens`
//! counts it `n` times). OpenAI itself counts the prompt once; see
//! `docs/providers/anthropic.md`.

use std::future::Future;

use futures_util::stream::{self, StreamExt};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::streaming::{completion_id, unix_now, ChunkStream};

/// `n` as requested: absent or `null` is 1; anything but an integer in `1..=max`
/// is a 400 naming `n`.
pub fn requested_n(params: &Map<String, Value>, max: u64) -> Result<usize, ApiError> {
    let n = match params.get("n") {
        None | Some(Value::Null) => return Ok(1),
        Some(value) => value.as_u64().ok_or_else(|| {
            ApiError::invalid_param("n", format!("`n` must be an integer from 1 to {max}"))
        })?,
    };
    if n == 0 {
        return Err(ApiError::invalid_param(
            "n",
            format!("`n` must be an integer from 1 to {max}"),
        ));
    }
    if n > max {
        return Err(ApiError::invalid_param(
            "n",
            format!(
                "`n` is {n}, but this connection answers at most {max} choices per request \
                 (each choice is a separate upstream call)"
            ),
        ));
    }
    // `n <= max`, and `max` is a small constant, so this always fits in usize.
    Ok(usize::try_from(n).unwrap_or(1))
}

/// Run `call(i)` for `i in 0..n` concurrently; all answers in order, or the first
/// failure (the other calls are dropped, which cancels them).
pub async fn run_all<T, F, Fut>(n: usize, call: F) -> Result<Vec<T>, ApiError>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    futures_util::future::try_join_all((0..n).map(call)).await
}

/// Merge single-choice `chat.completion` objects into one: choice `i` comes from
/// answer `i` (answers with several choices keep them, numbered on), `usage` is
/// the field-by-field sum, `id`/`created`/`model` come from the first answer.
pub fn merge_completions(answers: Vec<Value>) -> Value {
    let mut merged = Map::new();
    let mut choices = Vec::new();
    let mut usage: Option<Value> = None;
    for answer in answers {
        let Value::Object(mut answer) = answer else {
            continue;
        };
        if merged.is_empty() {
            for key in ["id", "object", "created", "model", "system_fingerprint"] {
                if let Some(value) = answer.get(key) {
                    merged.insert(key.to_owned(), value.clone());
                }
            }
        }
        if let Some(Value::Array(list)) = answer.remove("choices") {
            for mut choice in list {
                if let Value::Object(c) = &mut choice {
                    c.insert("index".into(), choices.len().into());
                }
                choices.push(choice);
            }
        }
        if let Some(u) = answer.remove("usage").filter(Value::is_object) {
            usage = Some(match usage {
                None => u,
                Some(mut total) => {
                    add_usage(&mut total, &u);
                    total
                }
            });
        }
    }
    merged
        .entry("id")
        .or_insert_with(|| Value::String(completion_id()));
    merged
        .entry("object")
        .or_insert_with(|| Value::String("chat.completion".into()));
    merged.entry("created").or_insert_with(|| unix_now().into());
    merged.insert("choices".into(), Value::Array(choices));
    if let Some(usage) = usage {
        merged.insert("usage".into(), usage);
    }
    Value::Object(merged)
}

/// Add every number of `more` into `total`, recursing into objects (so
/// `prompt_tokens_details.cached_tokens` is summed too). Fields only in `more` are
/// copied; non-numbers already in `total` are kept.
pub fn add_usage(total: &mut Value, more: &Value) {
    let (Value::Object(total), Value::Object(more)) = (total, more) else {
        return;
    };
    for (key, value) in more {
        match (total.get_mut(key), value) {
            (Some(Value::Number(a)), Value::Number(b)) => {
                if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
                    *a = x.saturating_add(y).into();
                } else if let Some(sum) = a
                    .as_f64()
                    .zip(b.as_f64())
                    .and_then(|(x, y)| serde_json::Number::from_f64(x + y))
                {
                    *a = sum;
                }
            }
            (Some(inner @ Value::Object(_)), Value::Object(_)) => add_usage(inner, value),
            (Some(Value::Null) | None, _) => {
                total.insert(key.clone(), value.clone());
            }
            _ => {}
        }
    }
}

/// Multiplex `n` single-choice chunk streams into one client stream.
///
/// Each sub-stream `i` must be a complete OpenAI chunk stream for one choice,
/// started with usage reporting on (its `choices: []` usage chunk is consumed
/// here). Chunks are forwarded as they arrive with `choices[].index` rewritten to
/// `i` and one `id`/`created` for all; each sub-stream's own order is kept, so
/// every choice's role chunk comes first. When all have ended, one usage chunk
/// with the summed usage follows if `include_usage`. The first error of any
/// sub-stream ends the whole stream with that error.
pub fn multiplex(streams: Vec<ChunkStream>, include_usage: bool) -> ChunkStream {
    type ChunkItem = Result<Value, ApiError>;
    type Tagged = std::pin::Pin<Box<dyn futures_util::Stream<Item = (usize, ChunkItem)> + Send>>;
    struct State {
        inner: stream::SelectAll<Tagged>,
        id: String,
        created: u64,
        model: Option<Value>,
        usage: Option<Value>,
        include_usage: bool,
        done: bool,
    }
    let inner = stream::select_all(
        streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| -> Tagged { Box::pin(s.map(move |item| (i, item))) }),
    );
    let state = State {
        inner,
        id: completion_id(),
        created: unix_now(),
        model: None,
        usage: None,
        include_usage,
        done: false,
    };
    Box::pin(stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            match st.inner.next().await {
                Some((_, Err(err))) => {
                    st.done = true;
                    return Some((Err(err), st));
                }
                Some((i, Ok(chunk))) => {
                    if let Some(out) =
                        relabel(&mut st.usage, &mut st.model, chunk, i, &st.id, st.created)
                    {
                        return Some((Ok(out), st));
                    }
                }
                None => {
                    st.done = true;
                    let usage = st.usage.take().filter(|_| st.include_usage)?;
                    let mut chunk = Map::new();
                    chunk.insert("id".into(), Value::String(st.id.clone()));
                    chunk.insert(
                        "object".into(),
                        Value::String("chat.completion.chunk".into()),
                    );
                    chunk.insert("created".into(), st.created.into());
                    if let Some(model) = st.model.take() {
                        chunk.insert("model".into(), model);
                    }
                    chunk.insert("choices".into(), Value::Array(Vec::new()));
                    chunk.insert("usage".into(), usage);
                    return Some((Ok(Value::Object(chunk)), st));
                }
            }
        }
    }))
}

/// One sub-stream chunk made part of the merged stream: usage taken out (and
/// summed), choice indexes set to `i`, shared id and created. `None` when nothing
/// is left to send (a usage-only chunk).
fn relabel(
    usage_total: &mut Option<Value>,
    model: &mut Option<Value>,
    chunk: Value,
    i: usize,
    id: &str,
    created: u64,
) -> Option<Value> {
    let Value::Object(mut chunk) = chunk else {
        return None;
    };
    if let Some(usage) = chunk.remove("usage").filter(Value::is_object) {
        match usage_total {
            Some(total) => add_usage(total, &usage),
            None => *usage_total = Some(usage),
        }
    }
    if model.is_none() {
        *model = chunk.get("model").cloned();
    }
    let has_choices = match chunk.get_mut("choices") {
        Some(Value::Array(choices)) => {
            for choice in choices.iter_mut() {
                if let Value::Object(c) = choice {
                    c.insert("index".into(), i.into());
                }
            }
            !choices.is_empty()
        }
        _ => false,
    };
    if !has_choices {
        return None;
    }
    chunk.insert("id".into(), Value::String(id.to_owned()));
    chunk.insert("created".into(), created.into());
    Some(Value::Object(chunk))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn params(n: Value) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("n".into(), n);
        m
    }

    #[test]
    fn n_is_checked_and_capped() {
        assert_eq!(requested_n(&Map::new(), 8).unwrap(), 1);
        assert_eq!(requested_n(&params(Value::Null), 8).unwrap(), 1);
        assert_eq!(requested_n(&params(json!(8)), 8).unwrap(), 8);
        for bad in [json!(9), json!(0), json!(-1), json!(1.5), json!("2")] {
            let err = requested_n(&params(bad.clone()), 8).unwrap_err();
            assert_eq!(err.status(), http::StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(err.error_object()["param"], "n");
            assert_eq!(err.error_object()["code"], "invalid_value");
        }
    }

    #[test]
    fn completions_merge_with_summed_usage() {
        let one = |text: &str, p: u64, c: u64, cached: u64| {
            json!({"id": format!("id-{text}"), "object": "chat.completion", "created": 5, "model": "m",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
                             "prompt_tokens_details": {"cached_tokens": cached}}})
        };
        let merged = merge_completions(vec![one("a", 10, 2, 4), one("b", 10, 3, 4)]);
        assert_eq!(merged["id"], "id-a");
        assert_eq!(merged["choices"][0]["index"], 0);
        assert_eq!(merged["choices"][1]["index"], 1);
        assert_eq!(merged["choices"][1]["message"]["content"], "b");
        assert_eq!(
            merged["usage"],
            json!({"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25,
                   "prompt_tokens_details": {"cached_tokens": 8}})
        );
    }

    fn sub(i: usize, delay_ms: u64, fail: bool) -> ChunkStream {
        let chunk = |delta: Value, finish: Value| {
            json!({"id": format!("sub{i}"), "object": "chat.completion.chunk", "created": 1, "model": "m",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let mut items: Vec<Result<Value, ApiError>> = vec![
            Ok(chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            )),
            Ok(chunk(json!({"content": format!("text{i}")}), Value::Null)),
        ];
        if fail {
            items.push(Err(ApiError::upstream_failure("cut")));
        }
        items.push(Ok(chunk(json!({}), json!("stop"))));
        items.push(Ok(json!({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
                             "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})));
        Box::pin(stream::iter(items).then(move |item| async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            item
        }))
    }

    #[tokio::test]
    async fn streams_multiplex_with_one_usage_chunk() {
        let out: Vec<Value> = multiplex(vec![sub(0, 3, false), sub(1, 5, false)], true)
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(out.len(), 7);
        let id = out[0]["id"].clone();
        assert!(out.iter().all(|c| c["id"] == id));
        for i in 0..2u64 {
            let first = out
                .iter()
                .find(|c| c["choices"].get(0).is_some_and(|ch| ch["index"] == i))
                .unwrap();
            assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        }
        let last = out.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["total_tokens"], 10);
        assert_eq!(out.iter().filter(|c| c.get("usage").is_some()).count(), 1);

        let out: Vec<Value> = multiplex(vec![sub(0, 1, false), sub(1, 1, false)], false)
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(out.len(), 6, "no usage chunk unless asked");
    }

    #[tokio::test]
    async fn one_failing_sub_stream_fails_the_whole_stream() {
        let out: Vec<Result<Value, ApiError>> =
            multiplex(vec![sub(0, 20, false), sub(1, 1, true)], true)
                .collect()
                .await;
        assert!(out.last().unwrap().is_err());
        assert_eq!(out.iter().filter(|r| r.is_err()).count(), 1);
    }
}
