//! `POST {api_prefix}/embeddings`: the OpenAI Embeddings door.
//!
//! The door checks the body in OpenAI's terms (`input` a string, strings, token ids
//! or lists of token ids; `encoding_format` `float` or `base64`; `dimensions`;
//! `user`), then the shared core does what it does for every door (key, body
//! limits, routing, group rules, `before` handlers, metrics, log line, loggers;
//! `ctx.endpoint` is `embeddings`). The connection answers through
//! `Provider::embeddings`: an OpenAI-compatible one gets the client's bytes with
//! only `model` replaced and its answer is passed on; the others (Gemini, Vertex AI,
//! the mock, Python `embed_func`) give vectors, which this door writes as OpenAI's
//! answer, base64 (little-endian f32) when asked. A connection that cannot embed
//! answers 400 naming it. Errors are OpenAI's envelope.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::core;
use crate::context::{Endpoint, RequestContext};
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::payload::Payload;
use crate::providers::doors::{DoorCall, EmbeddingInput, Embeddings};
use crate::server::AppState;

/// Most items in one `input` list (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
) -> Response {
    let mut incoming = core::Incoming::new(&state, peer, request, Endpoint::Embeddings);
    let result = handle(
        &state,
        &incoming.gateway,
        &mut incoming.ctx,
        &mut incoming.body,
        &mut incoming.upstream_time,
    )
    .await;
    incoming.discard_unread_body().await;
    let (gateway, ctx, ending) = incoming.finish();
    match result {
        Ok(answer) => {
            let answer = gateway.redactor.redact_payload(answer);
            ending.completed(&gateway, ctx, answer.usage(), || {
                answer.to_value().into_owned()
            });
            super::core::json_response(answer.into_json_bytes())
        }
        Err(error) => ending.failed(&gateway, ctx, error).into_response(),
    }
}

async fn handle(
    state: &AppState,
    gateway: &Gateway,
    ctx: &mut RequestContext,
    body: &mut Option<Body>,
    upstream_time: &mut Option<std::time::Duration>,
) -> Result<Payload, ApiError> {
    let (bytes, held) = core::admit(state, gateway, ctx, body).await?;
    ctx.request = super::chat::json_object_body(&ctx.http_headers, &bytes)?;
    validate(&ctx.request)?;
    let connection = core::route(gateway, ctx)?;
    let keep_request = core::run_handlers(state, gateway, ctx).await?;
    let call = door_call(gateway, ctx, bytes, keep_request, &connection.name, true)?;
    drop(held);
    let base64 = call.params.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let dimensions = call.dimensions();
    let model = call.model.clone();
    let provider = connection.provider.clone();
    let started = std::time::Instant::now();
    let answer = provider.embeddings(call).await;
    *upstream_time = Some(started.elapsed());
    match answer? {
        Embeddings::Answer(answer) if base64 => Ok(encode_floats(answer)),
        Embeddings::Answer(answer) => Ok(answer),
        Embeddings::Vectors {
            vectors,
            prompt_tokens,
        } => Ok(Payload::Value(list(
            vectors,
            prompt_tokens,
            &model,
            base64,
            dimensions,
        ))),
    }
}

/// The call for the provider, from the context as handlers left it. The body is
/// the client's bytes with `model` replaced, unless a handler changed the request
/// (then it is written out again from the context).
pub(crate) fn door_call(
    gateway: &Gateway,
    ctx: &mut RequestContext,
    bytes: Bytes,
    keep_request: bool,
    connection: &str,
    embeddings: bool,
) -> Result<DoorCall, ApiError> {
    let model = ctx.model.clone().unwrap_or_default();
    let mut params = if keep_request || !gateway.handlers.is_empty() {
        ctx.llm_params.clone()
    } else {
        std::mem::take(&mut ctx.llm_params)
    };
    let (headers, header_case) = core::spelled_extra_headers(
        params.shift_remove("extra_headers").as_ref(),
        &ctx.forwarded_spellings,
    )?;
    params.shift_remove("model");
    params.shift_remove("messages");
    let body = if gateway.handlers.is_empty() {
        super::messages::with_model(bytes, &model)?
    } else {
        let original: Map<String, Value> = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::internal(format!("the checked body no longer parses: {e}")))?;
        let unchanged = original.len() == params.len() + 1
            && original
                .iter()
                .all(|(k, v)| k == "model" || params.get(k) == Some(v));
        if unchanged {
            super::messages::with_model(bytes, &model)?
        } else {
            let mut rebuilt = Map::with_capacity(params.len() + 1);
            rebuilt.insert("model".into(), model.clone().into());
            rebuilt.extend(params.iter().map(|(k, v)| (k.clone(), v.clone())));
            Bytes::from(
                serde_json::to_vec(&rebuilt)
                    .map_err(|e| ApiError::internal(format!("could not write the request: {e}")))?,
            )
        }
    };
    // A handler may have changed the input: checked again.
    let inputs = if embeddings {
        inputs(params.get("input"))?
    } else {
        Vec::new()
    };
    let stream = params
        .get("stream")
        .or_else(|| ctx.request.get("stream"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(DoorCall {
        connection: connection.to_owned(),
        model,
        body,
        params,
        inputs,
        headers,
        header_case,
        stream,
        // Set by the completions door when it wants a stream's usage.
        gateway_usage: false,
    })
}

/// The checks of an embeddings request, in OpenAI's terms.
pub fn validate(request: &Map<String, Value>) -> Result<(), ApiError> {
    match request.get("model") {
        Some(Value::String(m)) if !m.is_empty() => {}
        Some(_) => {
            return Err(ApiError::invalid_param(
                "model",
                "`model` must be a non-empty string.",
            ))
        }
        None => return Err(ApiError::invalid_param("model", "`model` is required.")),
    }
    inputs(request.get("input"))?;
    match request.get("encoding_format") {
        None | Some(Value::Null) => {}
        Some(Value::String(f)) if f == "float" || f == "base64" => {}
        Some(other) => {
            return Err(ApiError::invalid_param(
                "encoding_format",
                format!("`encoding_format` must be \"float\" or \"base64\", not {other}."),
            ))
        }
    }
    match request.get("dimensions") {
        None | Some(Value::Null) => {}
        Some(d) if d.as_u64().is_some_and(|d| d >= 1) => {}
        Some(other) => {
            return Err(ApiError::invalid_param(
                "dimensions",
                format!("`dimensions` must be a positive integer, not {other}."),
            ))
        }
    }
    match request.get("user") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(_) => return Err(ApiError::invalid_param("user", "`user` must be a string.")),
    }
    Ok(())
}

/// `input` as items: a string, a list of strings, a list of token ids, or a list
/// of lists of token ids; at most [`MAX_INPUTS`] items, none empty.
pub fn inputs(input: Option<&Value>) -> Result<Vec<EmbeddingInput>, ApiError> {
    let bad = |problem: &str| ApiError::invalid_param("input", problem.to_owned());
    let text = |s: &str| {
        if s.is_empty() {
            Err(bad("`input` may not contain an empty string."))
        } else {
            Ok(EmbeddingInput::Text(s.to_owned()))
        }
    };
    let tokens = |ids: &[Value]| -> Result<EmbeddingInput, ApiError> {
        if ids.is_empty() {
            return Err(bad("`input` may not contain an empty list of token ids."));
        }
        ids.iter()
            .map(|id| {
                id.as_u64()
                    .ok_or_else(|| bad("token ids in `input` must be non-negative integers."))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(EmbeddingInput::Tokens)
    };
    let items =
        match input {
            None | Some(Value::Null) => return Err(bad("`input` is required.")),
            Some(Value::String(s)) => return Ok(vec![text(s)?]),
            Some(Value::Array(items)) => items,
            Some(_) => return Err(bad(
                "`input` must be a string, a list of strings, a list of token ids or a list of \
                 lists of token ids.",
            )),
        };
    if items.is_empty() {
        return Err(bad("`input` may not be an empty list."));
    }
    if items.iter().all(Value::is_number) {
        return Ok(vec![tokens(items)?]);
    }
    if items.len() > MAX_INPUTS {
        return Err(bad(&format!(
            "`input` may hold at most {MAX_INPUTS} items; it has {}.",
            items.len()
        )));
    }
    if !(items.iter().all(Value::is_string) || items.iter().all(Value::is_array)) {
        return Err(bad(
            "items of `input` must be all strings or all lists of token ids.",
        ));
    }
    items
        .iter()
        .map(|item| match item {
            Value::String(s) => text(s),
            Value::Array(ids) => tokens(ids),
            _ => Err(bad(
                "items of `input` must be all strings or all lists of token ids.",
            )),
        })
        .collect()
}

/// OpenAI's answer from vectors. Longer vectors than `dimensions` asked for are cut
/// and scaled back to unit length (what OpenAI's `dimensions` does); shorter ones
/// are an upstream failure.
fn list(
    vectors: Vec<Vec<f32>>,
    prompt_tokens: Option<u64>,
    model: &str,
    base64: bool,
    dimensions: Option<u64>,
) -> Value {
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, mut vector)| {
            if let Some(d) = dimensions.map(|d| d as usize) {
                if vector.len() > d {
                    vector.truncate(d);
                    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
                    if norm > 0.0 {
                        vector.iter_mut().for_each(|x| *x /= norm);
                    }
                }
            }
            let embedding = if base64 {
                Value::String(encode_vector(vector.iter().copied()))
            } else {
                Value::Array(vector.into_iter().map(|x| json!(x)).collect())
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let tokens = prompt_tokens.unwrap_or(0);
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
}

/// A vector as OpenAI's base64: the little-endian bytes of its f32 values.
pub fn encode_vector(values: impl Iterator<Item = f32>) -> String {
    let mut bytes = Vec::new();
    for x in values {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An upstream answer to a base64 request: passed on unless the upstream gave
/// floats anyway (some OpenAI-compatible servers ignore `encoding_format`), which
/// are then encoded here.
fn encode_floats(answer: Payload) -> Payload {
    // The usual case, a base64 answer passed on as written, needs no tree: parsing
    // one for the check was a quarter of such a request's instructions.
    if let Payload::Raw(raw) = &answer {
        if !may_hold_float_vectors(raw.text(), raw.may_hold_escapes()) {
            return answer;
        }
    }
    let mut value = answer.to_value().into_owned();
    let mut changed = false;
    if let Some(items) = value.get_mut("data").and_then(Value::as_array_mut) {
        for item in items {
            if let Some(embedding) = item.get_mut("embedding") {
                if let Value::Array(numbers) = embedding {
                    let floats = numbers.iter().map(|n| n.as_f64().unwrap_or(0.0) as f32);
                    *embedding = Value::String(encode_vector(floats));
                    changed = true;
                }
            }
        }
    }
    if changed {
        Payload::Value(value)
    } else {
        answer
    }
}

/// Whether an answer's text (checked JSON) may give an `embedding` as a list: a
/// member named `embedding` whose value starts with `[`. Text that may hold escapes
/// (a key could be spelled with one; the check that accepted the text knows)
/// counts as maybe.
fn may_hold_float_vectors(text: &[u8], may_hold_escapes: bool) -> bool {
    const KEY: &[u8] = b"\"embedding\"";
    if may_hold_escapes {
        return true;
    }
    memchr::memmem::find_iter(text, KEY).any(|at| {
        let after_key = text[at + KEY.len()..].trim_ascii_start();
        match after_key.split_first() {
            Some((b':', value)) => value.trim_ascii_start().first() == Some(&b'['),
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_that_may_hold_float_vectors_are_read_as_trees() {
        for (text, maybe) in [
            (r#"{"data":[{"embedding":"AACAPw=="}]}"#, false),
            (
                r#"{"data":[{"embedding" : "AACAPw=="}],"model":"embedding"}"#,
                false,
            ),
            (r#"{"data":[{"embedding":[0.5]}]}"#, true),
            ("{\"data\":[{\"embedding\" :\n [0.5]}]}", true),
            (r#"{"data":[{"\u0065mbedding":[0.5]}]}"#, true),
            // An escape anywhere counts (the check does not say where it was).
            (r#"{"data":[{"embedding":"AA\/AA=="}]}"#, true),
            (r#"{"data":[]}"#, false),
        ] {
            let raw = crate::payload::RawJson::object_with_usage(bytes::Bytes::from(text)).unwrap();
            assert_eq!(
                may_hold_float_vectors(raw.text(), raw.may_hold_escapes()),
                maybe,
                "{text}"
            );
        }
        // A base64 answer comes back as the very payload it was.
        let text = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":"AACAPw=="}],"model":"m","usage":{"prompt_tokens":1,"total_tokens":1}}"#;
        let raw = crate::payload::RawJson::object_with_usage(bytes::Bytes::from(text)).unwrap();
        match encode_floats(Payload::Raw(raw)) {
            Payload::Raw(raw) => assert_eq!(raw.text(), text.as_bytes()),
            Payload::Value(_) => panic!("a base64 answer was read as a tree"),
        }
    }

    fn check(body: Value) -> Result<(), ApiError> {
        validate(body.as_object().unwrap())
    }

    #[test]
    fn every_input_shape_is_taken_and_bad_ones_are_400() {
        for ok in [
            json!({"model": "m", "input": "hi"}),
            json!({"model": "m", "input": ["a", "b"]}),
            json!({"model": "m", "input": [1, 2, 3]}),
            json!({"model": "m", "input": [[1, 2], [3]]}),
            json!({"model": "m", "input": "x", "encoding_format": "base64", "dimensions": 8, "user": "u"}),
        ] {
            check(ok.clone()).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, param) in [
            (json!({"input": "hi"}), "model"),
            (json!({"model": 3, "input": "hi"}), "model"),
            (json!({"model": "m"}), "input"),
            (json!({"model": "m", "input": ""}), "input"),
            (json!({"model": "m", "input": []}), "input"),
            (json!({"model": "m", "input": [[]]}), "input"),
            (json!({"model": "m", "input": ["a", 1]}), "input"),
            (json!({"model": "m", "input": [-1]}), "input"),
            (json!({"model": "m", "input": [1.5]}), "input"),
            (json!({"model": "m", "input": {"a": 1}}), "input"),
            (
                json!({"model": "m", "input": "x", "encoding_format": "int8"}),
                "encoding_format",
            ),
            (
                json!({"model": "m", "input": "x", "dimensions": 0}),
                "dimensions",
            ),
            (
                json!({"model": "m", "input": "x", "dimensions": "8"}),
                "dimensions",
            ),
            (json!({"model": "m", "input": "x", "user": 5}), "user"),
        ] {
            let err = check(bad.clone()).expect_err(&bad.to_string());
            assert_eq!(err.status(), 400, "{bad}");
            assert_eq!(err.error_object()["param"], param, "{bad}");
        }
        let many = json!({"model": "m", "input": vec!["x"; MAX_INPUTS + 1]});
        assert_eq!(check(many).unwrap_err().status(), 400);
    }

    #[test]
    fn base64_is_little_endian_f32() {
        let encoded = encode_vector([1.0f32, -2.5].into_iter());
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(
            bytes,
            [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat()
        );
    }

    #[test]
    fn dimensions_cut_and_renormalize_longer_vectors() {
        let answer = list(vec![vec![3.0, 4.0, 12.0]], Some(2), "m", false, Some(2));
        let v = &answer["data"][0]["embedding"];
        assert!((v[0].as_f64().unwrap() - 0.6).abs() < 1e-6, "{v}");
        assert!((v[1].as_f64().unwrap() - 0.8).abs() < 1e-6, "{v}");
        assert_eq!(answer["usage"]["prompt_tokens"], 2);
    }

    #[test]
    fn floats_from_an_upstream_are_encoded_when_base64_was_asked() {
        let floats = Payload::Value(json!({"data": [{"embedding": [1.0, -2.5]}]}));
        let out = encode_floats(floats).into_value();
        assert_eq!(
            out["data"][0]["embedding"],
            encode_vector([1.0f32, -2.5].into_iter())
        );
        let already = Payload::Value(json!({"data": [{"embedding": "AACAPw=="}]}));
        assert_eq!(
            encode_floats(already).into_value()["data"][0]["embedding"],
            "AACAPw=="
        );
    }
}
