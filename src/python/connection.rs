//! `env.connections[name]` for connections served by Rust (OpenAI-compatible,
//! Anthropic, Google, mock, Fallback): an async callable with the reference's
//! signature, `await conn(messages, **params)`, so that Python connections such as the
//! reference's load balancer can delegate to them. The call runs on the tokio runtime;
//! the caller's asyncio loop only awaits a future.

use std::sync::Arc;

use futures_util::StreamExt;
use pyo3::exceptions::{PyStopAsyncIteration, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::providers::{Provider, UpstreamCall};
use crate::streaming::ChunkStream;

use super::bridge::Bridge;
use super::convert::{from_py, map_from_py, to_py};
use super::runtime::helpers;

#[pyclass(name = "Connection", module = "lm_proxy._lm_proxy", frozen)]
pub struct RustConnection {
    name: String,
    provider: Arc<dyn Provider>,
    default_model: Option<String>,
    bridge: Arc<Bridge>,
}

impl RustConnection {
    pub fn new(
        name: String,
        provider: Arc<dyn Provider>,
        default_model: Option<String>,
        bridge: Arc<Bridge>,
    ) -> Self {
        RustConnection {
            name,
            provider,
            default_model,
            bridge,
        }
    }

    fn upstream_call(
        &self,
        messages: &Bound<'_, PyAny>,
        params: &Bound<'_, PyDict>,
        stream: bool,
    ) -> PyResult<UpstreamCall> {
        let mut params: Map<String, Value> = map_from_py(params.as_any(), "params")?;
        let model = match params.shift_remove("model") {
            Some(Value::String(model)) if !model.is_empty() => model,
            Some(Value::Null) | None => self.default_model.clone().ok_or_else(|| {
                PyValueError::new_err(format!(
                    "connection '{}' has no `model` setting: pass model=...",
                    self.name
                ))
            })?,
            Some(other) => {
                return Err(PyValueError::new_err(format!(
                    "model must be a string, found {other}"
                )))
            }
        };
        let mut headers = http::HeaderMap::new();
        let mut header_case = crate::upstream::HeaderCase::NONE;
        if let Some(Value::Object(map)) = params.shift_remove("extra_headers") {
            header_case = crate::upstream::HeaderCase::of(map.keys().map(String::as_str));
            for (name, value) in map {
                let text = match value {
                    Value::String(s) => s,
                    Value::Null => continue,
                    other => other.to_string(),
                };
                let name = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| PyValueError::new_err(format!("bad header name {name:?}")))?;
                let value = http::HeaderValue::from_str(&text)
                    .map_err(|_| PyValueError::new_err(format!("bad value for {name}")))?;
                headers.insert(name, value);
            }
        }
        let messages = match from_py(messages)? {
            Value::Array(items) => Value::Array(items),
            Value::String(text) => {
                Value::Array(vec![serde_json::json!({"role": "user", "content": text})])
            }
            other => {
                return Err(PyValueError::new_err(format!(
                    "messages must be a list of message dicts (or a prompt string), found {}",
                    crate::config::json_type(&other)
                )))
            }
        };
        let mut all = Map::with_capacity(params.len() + 2);
        all.insert("messages".into(), messages);
        all.extend(params);
        if stream {
            all.insert("stream".into(), Value::Bool(true));
        } else {
            all.shift_remove("stream");
            all.shift_remove("stream_options");
        }
        Ok(UpstreamCall {
            model,
            params: all,
            headers,
            header_case,
            // Python asked for what it wants; the gateway adds nothing.
            gateway_usage: false,
            raw_body: None,
        })
    }
}

/// An `ApiError` as the Python `OpenAIHTTPException` it amounts to.
pub fn api_error_to_py(py: Python<'_>, error: &ApiError) -> PyErr {
    let object = error.error_object();
    let text = |k: &str| object.get(k).and_then(Value::as_str).map(str::to_owned);
    let headers = PyDict::new(py);
    if let ApiError::UpstreamRejected(body) | ApiError::Custom(body) = error {
        for (name, value) in &body.headers {
            let _ = headers.set_item(name.as_str(), String::from_utf8_lossy(value.as_bytes()));
        }
    }
    let made = helpers(py).and_then(|h| {
        h.http_exception.bind(py).call1((
            text("message").unwrap_or_default(),
            error.status().as_u16(),
            text("type").unwrap_or_else(|| "server_error".into()),
            text("code"),
            headers,
        ))
    });
    match made {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

#[pymethods]
impl RustConnection {
    /// `await conn(messages, **params)`: the reference's connection signature
    /// (`callback=` streams text pieces to it); returns an `LLMResponse` (a `str`).
    #[pyo3(signature = (messages, **params))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        messages: &Bound<'py, PyAny>,
        params: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let params = match params {
            Some(p) => p.copy()?,
            None => PyDict::new(py),
        };
        helpers(py)?
            .call_connection
            .bind(py)
            .call1((slf, messages, params))
    }

    /// An awaitable of the whole `chat.completion` dict.
    fn complete<'py>(
        &self,
        py: Python<'py>,
        messages: &Bound<'py, PyAny>,
        params: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let call = self.upstream_call(messages, params, false)?;
        let provider = self.provider.clone();
        self.bridge.future_from_rust(
            py,
            async move { provider.complete(call).await },
            |py, result| match result {
                Ok(value) => to_py(py, &value),
                Err(e) => Err(api_error_to_py(py, &e)),
            },
        )
    }

    /// An async iterator of `chat.completion.chunk` dicts.
    fn stream(
        &self,
        messages: &Bound<'_, PyAny>,
        params: &Bound<'_, PyDict>,
    ) -> PyResult<ChunkIterator> {
        let call = self.upstream_call(messages, params, true)?;
        Ok(ChunkIterator {
            state: Arc::new(tokio::sync::Mutex::new(StreamState::Pending(
                self.provider.clone(),
                Box::new(call),
            ))),
            bridge: self.bridge.clone(),
        })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    #[getter]
    fn model(&self) -> Option<&str> {
        self.default_model.as_deref()
    }

    fn __repr__(&self) -> String {
        format!("<lm_proxy connection '{}'>", self.name)
    }
}

enum StreamState {
    Pending(Arc<dyn Provider>, Box<UpstreamCall>),
    Open(ChunkStream),
    Done,
}

#[pyclass(module = "lm_proxy._lm_proxy", frozen)]
pub struct ChunkIterator {
    state: Arc<tokio::sync::Mutex<StreamState>>,
    bridge: Arc<Bridge>,
}

#[pymethods]
impl ChunkIterator {
    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let state = self.state.clone();
        self.bridge.future_from_rust(
            py,
            async move {
                let mut state = state.lock().await;
                if matches!(*state, StreamState::Pending(..)) {
                    if let StreamState::Pending(provider, call) =
                        std::mem::replace(&mut *state, StreamState::Done)
                    {
                        match provider.stream(*call).await {
                            Ok(stream) => *state = StreamState::Open(stream),
                            Err(e) => return Err(Some(e)),
                        }
                    }
                }
                let StreamState::Open(stream) = &mut *state else {
                    return Err(None);
                };
                match stream.next().await {
                    Some(Ok(chunk)) => Ok(chunk),
                    Some(Err(e)) => {
                        *state = StreamState::Done;
                        Err(Some(e))
                    }
                    None => {
                        *state = StreamState::Done;
                        Err(None)
                    }
                }
            },
            |py, result| match result {
                Ok(chunk) => to_py(py, &chunk),
                Err(Some(e)) => Err(api_error_to_py(py, &e)),
                Err(None) => Err(PyStopAsyncIteration::new_err(())),
            },
        )
    }
}
