//! The core's extension traits over Python callables: key checks, `before`
//! handlers, loggers and log writers. Each call goes through [`Scope::call`], so sync
//! callables run on caller threads (callers.rs) and async ones on the bridge's loop.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};
use serde_json::{Map, Value};

use crate::auth::{KeyCheck, KeyGrant};
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::handlers::RequestHandler;
use crate::logging::{FieldKind, FieldKinds, LogWriter, Logger};

use super::call::{Callable, Scope};
use super::convert::{from_py, map_from_py, map_to_py, to_py};
use super::errors::{api_error, bridge_failure, summary, Role};
use super::runtime::helpers;

/// `api_key_check` written in Python: returns a group name, `(group, user_info)`, or
/// something falsy to reject the key.
pub struct PyKeyCheck {
    pub scope: Arc<Scope>,
    pub callable: Callable,
}

#[async_trait]
impl KeyCheck for PyKeyCheck {
    async fn check(&self, api_key: &str) -> Result<Option<KeyGrant>, ApiError> {
        let api_key = api_key.to_owned();
        let label = self.callable.label.clone();
        self.scope
            .call(
                &self.callable,
                move |py| Ok((PyTuple::new(py, [api_key])?, None, ())),
                move |py, _, outcome| {
                    let value = outcome.map_err(|e| api_error(py, e, Role::KeyCheck, &label))?;
                    grant_of(&value).map_err(|e| api_error(py, e, Role::KeyCheck, &label))
                },
            )
            .await
            .map_err(|_| bridge_failure(&self.callable.label, Role::KeyCheck))?
    }
}

fn grant_of(value: &Bound<'_, PyAny>) -> PyResult<Option<KeyGrant>> {
    let (group, user_info) = if let Ok(tuple) = value.cast::<PyTuple>() {
        if tuple.len() != 2 {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "api_key_check returned a tuple of {} items; expected (group, user_info)",
                tuple.len()
            )));
        }
        (tuple.get_item(0)?, Some(tuple.get_item(1)?))
    } else {
        (value.clone(), None)
    };
    if !group.is_truthy()? {
        return Ok(None);
    }
    let Ok(name) = group.cast::<PyString>() else {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "api_key_check must return a group name, (group, user_info) or None; got {}",
            group.get_type().qualname()?
        )));
    };
    let user_info = match user_info {
        Some(info) => from_py(&info)?,
        None => Value::Null,
    };
    Ok(Some(KeyGrant {
        group: name.to_cow()?.into_owned(),
        user_info,
        api_key_id: None,
    }))
}

/// A `before` handler written in Python. It gets a `lm_proxy.base_types.
/// RequestContext`; what it leaves in `llm_params` (including `model` and
/// `extra_headers`), `request`, `extra` and `user_info` is read back.
pub struct PyHandler {
    pub scope: Arc<Scope>,
    pub callable: Callable,
}

/// The parts of a context a Python handler sees, copied out of the request.
struct Snapshot {
    fields: Map<String, Value>,
    headers: Vec<(String, String)>,
}

impl Snapshot {
    fn of(ctx: &RequestContext) -> Snapshot {
        let text = |v: &Option<String>| v.clone().map(Value::String).unwrap_or(Value::Null);
        let created = ctx
            .created_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let mut fields = Map::new();
        fields.insert("id".into(), Value::String(ctx.id.clone()));
        fields.insert("endpoint".into(), ctx.endpoint.as_str().into());
        fields.insert("created_at".into(), created.into());
        fields.insert("duration".into(), ctx.duration().into());
        fields.insert("request".into(), Value::Object(ctx.request.clone()));
        fields.insert("remote_addr".into(), Value::String(ctx.remote_addr.clone()));
        fields.insert("api_key_id".into(), text(&ctx.api_key_id));
        fields.insert("group".into(), text(&ctx.group));
        fields.insert("user_info".into(), ctx.user_info.clone());
        fields.insert("connection".into(), text(&ctx.connection));
        fields.insert("model".into(), text(&ctx.model));
        fields.insert("llm_params".into(), Value::Object(ctx.llm_params.clone()));
        fields.insert("extra".into(), Value::Object(ctx.extra.clone()));
        let headers = ctx
            .http_headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        Snapshot { fields, headers }
    }
}

/// What a handler changed.
struct Changes {
    llm_params: Map<String, Value>,
    model: Option<String>,
    request: Map<String, Value>,
    extra: Map<String, Value>,
    user_info: Value,
}

fn changes_of(py: Python<'_>, ctx: &Bound<'_, PyAny>) -> PyResult<Changes> {
    let changed = helpers(py)?.handler_changes.bind(py).call1((ctx,))?;
    let get = |name: &str| changed.get_item(name);
    let model = get("model")?;
    Ok(Changes {
        llm_params: map_from_py(&get("llm_params")?, "ctx.llm_params")?,
        model: if model.is_none() {
            None
        } else {
            Some(model.str()?.to_cow()?.into_owned())
        },
        request: map_from_py(&get("request")?, "ctx.request")?,
        extra: map_from_py(&get("extra")?, "ctx.extra")?,
        user_info: from_py(&get("user_info")?)?,
    })
}

#[async_trait]
impl RequestHandler for PyHandler {
    async fn before(&self, ctx: &mut RequestContext) -> Result<(), ApiError> {
        let snapshot = Snapshot::of(ctx);
        let label = self.callable.label.clone();
        let changes = self
            .scope
            .call(
                &self.callable,
                move |py| {
                    let fields = map_to_py(py, &snapshot.fields)?;
                    let headers = PyList::new(py, snapshot.headers)?;
                    let pyctx = helpers(py)?
                        .handler_context
                        .bind(py)
                        .call1((fields, headers))?;
                    Ok((PyTuple::new(py, [&pyctx])?, None, pyctx.unbind()))
                },
                move |py, pyctx, outcome| {
                    outcome.map_err(|e| api_error(py, e, Role::Handler, &label))?;
                    let Some(pyctx) = pyctx else {
                        return Err(ApiError::internal(format!(
                            "{label}: cannot build the request context"
                        )));
                    };
                    changes_of(py, pyctx.bind(py)).map_err(|e| {
                        api_error(
                            py,
                            e,
                            Role::Handler,
                            &format!("{label} (reading the context back)"),
                        )
                    })
                },
            )
            .await
            .map_err(|_| bridge_failure(&self.callable.label, Role::Handler))??;
        ctx.llm_params = changes.llm_params;
        if let Some(model) = changes.model {
            ctx.model = Some(model);
        }
        if changes.request.contains_key("messages") {
            ctx.request = changes.request;
        }
        ctx.extra = changes.extra;
        ctx.user_info = changes.user_info;
        Ok(())
    }
}

/// A logger written in Python: called with a `RequestContext` rebuilt from the log
/// entry (no HTTP request: its headers carry the client key). Runs on the logging
/// task, never on the request path.
pub struct PyLogger {
    pub scope: Arc<Scope>,
    pub callable: Callable,
}

#[async_trait]
impl Logger for PyLogger {
    async fn log(&self, context: &Value) -> anyhow::Result<()> {
        let context = context.clone();
        let label = self.callable.label.clone();
        self.scope
            .call(
                &self.callable,
                move |py| {
                    let entry = to_py(py, &context)?;
                    let pyctx = helpers(py)?.log_context.bind(py).call1((entry,))?;
                    Ok((PyTuple::new(py, [pyctx])?, None, ()))
                },
                move |py, _, outcome| {
                    outcome
                        .map(|_| ())
                        .map_err(|e| anyhow::anyhow!("{label} raised {}", summary(py, &e)))
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.callable.label))?
    }
}

/// A log writer written in Python (`BaseLogger(log_writer=...)`): called with each
/// entry as a dict, its answer and timestamps as Python objects (see `FieldKind`).
pub struct PyLogWriter {
    pub scope: Arc<Scope>,
    pub callable: Callable,
}

#[async_trait]
impl LogWriter for PyLogWriter {
    async fn write(&self, entry: &Value, kinds: &FieldKinds) -> std::io::Result<()> {
        let entry = entry.clone();
        let kinds: Vec<(String, &'static str)> = kinds
            .iter()
            .map(|(key, kind)| {
                let kind = match kind {
                    FieldKind::Response => "response",
                    FieldKind::Timestamp => "timestamp",
                };
                (key.clone(), kind)
            })
            .collect();
        let label = self.callable.label.clone();
        self.scope
            .call(
                &self.callable,
                move |py| {
                    // The answer as an `LLMResponse`, timestamps as `datetime`s: what
                    // the reference's writers got (a text column takes the answer).
                    let entry = to_py(py, &entry)?;
                    let entry = helpers(py)?
                        .log_entry
                        .bind(py)
                        .call1((entry, PyList::new(py, kinds)?))?;
                    Ok((PyTuple::new(py, [entry])?, None::<Bound<'_, PyDict>>, ()))
                },
                move |py, _, outcome| {
                    outcome.map(|_| ()).map_err(|e| {
                        std::io::Error::other(format!("{label} raised {}", summary(py, &e)))
                    })
                },
            )
            .await
            .map_err(|e| std::io::Error::other(format!("{}: {e}", self.callable.label)))?
    }

    fn reference_keys_only(&self) -> bool {
        true
    }

    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}
