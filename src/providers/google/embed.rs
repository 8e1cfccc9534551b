//! Embeddings on Google: Gemini on AI Studio (`batchEmbedContents`) and Vertex AI
//! (`predict` of its text embedding models), translated from OpenAI's request and
//! back to vectors (the embeddings door writes OpenAI's answer).
//!
//! `dimensions` becomes `outputDimensionality`. Vertex reports the tokens it read
//! per input (`statistics.token_count`); AI Studio reports none, so its usage is 0.
//! Token ids cannot be sent to Google: 400 naming `input`.

use serde_json::{json, Value};

use super::super::doors::{DoorCall, EmbeddingInput, Embeddings};
use super::{json_bytes, model_path, Endpoint, GoogleProvider};
use crate::error::ApiError;
use crate::upstream::UpstreamError;

impl GoogleProvider {
    pub(super) async fn embed(&self, call: DoorCall) -> Result<Embeddings, ApiError> {
        let texts = call
            .inputs
            .iter()
            .map(|input| match input {
                EmbeddingInput::Text(text) => Ok(text.as_str()),
                EmbeddingInput::Tokens(_) => Err(ApiError::invalid_param(
                    "input",
                    format!(
                        "connection '{}' (Google) embeds text only, not token ids",
                        call.connection
                    ),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let dimensions = call.dimensions();
        let vertex = !matches!(self.endpoint, Endpoint::AiStudio { .. });
        let (url, body) = if vertex {
            let instances: Vec<Value> = texts.iter().map(|t| json!({"content": t})).collect();
            let mut body = json!({"instances": instances});
            if let Some(d) = dimensions {
                body["parameters"] = json!({"outputDimensionality": d});
            }
            (self.method_url(&call.model, "predict").await?, body)
        } else {
            let (collection, id) = model_path(&call.model)?;
            let name = format!("{collection}/{id}");
            let requests: Vec<Value> = texts
                .iter()
                .map(|t| {
                    let mut one = json!({"model": name, "content": {"parts": [{"text": t}]}});
                    if let Some(d) = dimensions {
                        one["outputDimensionality"] = json!(d);
                    }
                    one
                })
                .collect();
            let body = json!({"requests": requests});
            (
                self.method_url(&call.model, "batchEmbedContents").await?,
                body,
            )
        };
        let work = async {
            let response = self
                .post_to(
                    &url,
                    json_bytes(&body)?,
                    (&call.headers, &call.header_case),
                    false,
                )
                .await?;
            response
                .bytes(self.max_response_body)
                .await
                .map_err(UpstreamError::into_api_error)
        };
        let bytes = tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(super::timeout_error(self.timeout)))?;
        let answer: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::upstream_failure(format!(
                "connection '{}': the embeddings answer is not JSON: {e}",
                self.name
            ))
        })?;
        let (vectors, prompt_tokens) = if vertex {
            vertex_vectors(&answer)
        } else {
            studio_vectors(&answer)
        }
        .ok_or_else(|| {
            ApiError::upstream_failure(format!(
                "connection '{}': the embeddings answer has an unexpected shape",
                self.name
            ))
        })?;
        if vectors.len() != texts.len() {
            return Err(ApiError::upstream_failure(format!(
                "connection '{}': {} embeddings for {} inputs",
                self.name,
                vectors.len(),
                texts.len()
            )));
        }
        Ok(Embeddings::Vectors {
            vectors,
            prompt_tokens,
        })
    }
}

fn floats(values: &Value) -> Option<Vec<f32>> {
    values
        .as_array()?
        .iter()
        .map(|x| x.as_f64().map(|x| x as f32))
        .collect()
}

/// `{"embeddings": [{"values": [...]}, ...]}`.
fn studio_vectors(answer: &Value) -> Option<(Vec<Vec<f32>>, Option<u64>)> {
    let vectors = answer
        .get("embeddings")?
        .as_array()?
        .iter()
        .map(|e| floats(e.get("values")?))
        .collect::<Option<Vec<_>>>()?;
    Some((vectors, None))
}

/// `{"predictions": [{"embeddings": {"values": [...], "statistics": {"token_count": n}}}]}`.
fn vertex_vectors(answer: &Value) -> Option<(Vec<Vec<f32>>, Option<u64>)> {
    let mut tokens = None;
    let vectors = answer
        .get("predictions")?
        .as_array()?
        .iter()
        .map(|p| {
            let embeddings = p.get("embeddings")?;
            if let Some(n) = embeddings
                .pointer("/statistics/token_count")
                .and_then(Value::as_f64)
            {
                *tokens.get_or_insert(0) += n as u64;
            }
            floats(embeddings.get("values")?)
        })
        .collect::<Option<Vec<_>>>()?;
    Some((vectors, tokens))
}
