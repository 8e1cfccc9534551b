//! A function connection's `embed_func`: a Python callable that embeds texts (a
//! local sentence-transformers-style model, for instance), sync or async.
//!
//! It is called with one positional argument, the list of inputs (strings, or
//! lists of token ids when the client sent token ids), and returns one vector per
//! input: a list of lists of numbers (or anything with `tolist()`, such as a NumPy
//! array or a tensor), or a `(vectors, prompt_tokens)` pair so that `usage` counts
//! the tokens read. Exceptions become answers as for chat callables
//! (`OpenAIHTTPException` → its status; anything else → 502).

use std::sync::Arc;

use async_trait::async_trait;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use super::call::{Callable, Scope};
use super::errors::{api_error, bridge_failure, Role};
use crate::error::ApiError;
use crate::providers::doors::{DoorCall, Embedder, EmbeddingInput};

pub struct PyEmbedder {
    pub scope: Arc<Scope>,
    pub callable: Callable,
}

type Vectors = (Vec<Vec<f32>>, Option<u64>);

#[async_trait]
impl Embedder for PyEmbedder {
    async fn embed(&self, call: &DoorCall) -> Result<Vectors, ApiError> {
        let inputs = call.inputs.clone();
        let count = inputs.len();
        let label = self.callable.label.clone();
        let result = self
            .scope
            .call(
                &self.callable,
                move |py| {
                    let items = PyList::empty(py);
                    for input in &inputs {
                        match input {
                            EmbeddingInput::Text(text) => items.append(text)?,
                            EmbeddingInput::Tokens(ids) => items.append(ids.clone())?,
                        }
                    }
                    Ok((PyTuple::new(py, [items])?, None, ()))
                },
                move |py, _, outcome| {
                    let value = outcome.map_err(|e| api_error(py, e, Role::Connection, &label))?;
                    vectors_of(&value).map_err(|e| api_error(py, e, Role::Connection, &label))
                },
            )
            .await
            .map_err(|_| bridge_failure(&self.callable.label, Role::Connection))??;
        if result.0.len() != count {
            return Err(ApiError::upstream_failure(format!(
                "{} returned {} vectors for {count} inputs",
                self.callable.label,
                result.0.len()
            )));
        }
        Ok(result)
    }
}

/// The callable's answer: vectors, or `(vectors, prompt_tokens)`.
fn vectors_of(value: &Bound<'_, PyAny>) -> PyResult<Vectors> {
    if let Ok(pair) = value.cast::<PyTuple>() {
        if pair.len() != 2 {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "embed_func returned a tuple; expected (vectors, prompt_tokens)",
            ));
        }
        let tokens: Option<u64> = pair.get_item(1)?.extract()?;
        return Ok((plain_vectors(&pair.get_item(0)?)?, tokens));
    }
    Ok((plain_vectors(value)?, None))
}

fn plain_vectors(value: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<f32>>> {
    let value = if value.hasattr("tolist")? {
        value.call_method0("tolist")?
    } else {
        value.clone()
    };
    value.extract::<Vec<Vec<f32>>>().map_err(|_| {
        pyo3::exceptions::PyTypeError::new_err(
            "embed_func must return one list of numbers per input (or (vectors, prompt_tokens))",
        )
    })
}
