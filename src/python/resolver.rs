//! `PyResolver`: the `ExtensionResolver` of the Python package.
//!
//! Config values that are not built-ins name Python code: dotted paths (imported with
//! the config file's folder and the working directory on `sys.path`), `class`
//! tables (instantiated with their other keys), or, in a Python `Config`, the objects
//! themselves. A Python `Config` reaches the core as a JSON tree in which each object
//! is a reference string (`@lm_proxy.object:<token>:<n>`) into this resolver's
//! registry, so that the same `Config::from_value` checks apply to every format.
//!
//! One resolver serves one server (or one `bootstrap()`): it owns that server's
//! `lm_proxy.bootstrap.Env`, which it fills after each gateway build, and the
//! shutdown deadline of its Python streams.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use serde_json::Value;
use tokio::sync::watch;

use crate::auth::KeyCheck;
use crate::config::{load_tree, Config, ConfigError, ConnectionSpec, ExtensionSpec, Format};
use crate::extensions::ExtensionResolver;
use crate::gateway::Gateway;
use crate::handlers::RequestHandler;
use crate::logging::{LogWriter, Logger};
use crate::providers::Provider;

use super::adapters::{PyHandler, PyKeyCheck, PyLogWriter, PyLogger};
use super::bridge::{Bridge, Shared};
use super::call::{Callable, Kind, Scope};
use super::connection::RustConnection;
use super::convert::{from_py, to_py, to_py_with};
use super::errors::config_error;
use super::provider::PyProvider;
use super::runtime::{helpers, with_gil};

/// Prefix of the strings that stand for objects of a Python `Config`.
pub const OBJECT_REF_PREFIX: &str = "@lm_proxy.object:";

pub struct PyResolver {
    scope: Arc<Scope>,
    shutdown: watch::Sender<Option<tokio::time::Instant>>,
    registry: Mutex<HashMap<String, Shared>>,
    /// Python objects resolved for connections and components, by config key.
    resolved: Mutex<HashMap<String, Shared>>,
    /// The Python `Config` the current gateway comes from (`env.config`).
    py_config: Mutex<Option<Shared>>,
    /// Every object resolved for the gateways built so far, by config key, so that a
    /// reload reuses each one whose configuration is unchanged instead of building
    /// it again (components such as a database connector refuse a second
    /// instance, and rebuilding would drop their state).
    built: Mutex<Built>,
}

/// The objects resolved for the current and the build under way.
#[derive(Default)]
struct Built {
    entries: HashMap<String, BuiltEntry>,
    /// Counts gateway builds; entries not used by the last completed build are
    /// dropped when the next one completes.
    generation: u64,
}

struct BuiltEntry {
    /// What it was built from: the spec (target, arguments, key), the folder that
    /// dotted paths were imported from, and whether it had to be callable.
    spec: ExtensionSpec,
    base: std::path::PathBuf,
    require_callable: bool,
    resolved: Resolved,
    generation: u64,
}

/// A resolved object and how to call it.
#[derive(Clone)]
struct Resolved {
    object: Shared,
    kind: Kind,
    generator: bool,
    label: String,
}

impl PyResolver {
    pub fn new(py: Python<'_>, env: Option<Bound<'_, PyAny>>) -> PyResult<Arc<PyResolver>> {
        let bridge = Bridge::get(py)?;
        let env = match env {
            Some(env) => env,
            None => helpers(py)?.new_env.bind(py).call0()?,
        };
        let (shutdown, shutdown_rx) = watch::channel(None);
        Ok(Arc::new(PyResolver {
            scope: Arc::new(Scope {
                bridge,
                env: Arc::new(env.unbind()),
                shutdown: shutdown_rx,
            }),
            shutdown,
            registry: Mutex::new(HashMap::new()),
            resolved: Mutex::new(HashMap::new()),
            py_config: Mutex::new(None),
            built: Mutex::new(Built::default()),
        }))
    }

    /// Python streams end with an error chunk a little before `grace` runs out, so
    /// that their clients get a proper end instead of a cut connection.
    pub fn begin_shutdown(&self, grace: Duration) {
        let margin = (grace / 4).min(Duration::from_millis(250));
        let at = tokio::time::Instant::now() + grace.saturating_sub(margin);
        let _ = self.shutdown.send(Some(at));
    }

    /// Turn a Python `Config` into the core's config (objects go to the registry).
    pub fn config_from_python(
        &self,
        py: Python<'_>,
        config: &Bound<'_, PyAny>,
        path: &Path,
    ) -> Result<Config, ConfigError> {
        let converted = config
            .call_method0("_to_tree")
            .and_then(|pair| pair.extract::<(Bound<'_, PyAny>, Bound<'_, PyDict>)>())
            .and_then(|(tree, objects)| {
                let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
                for (key, object) in objects.iter() {
                    registry.insert(key.extract::<String>()?, Arc::new(object.unbind()));
                }
                from_py(&tree)
            })
            .map_err(|e| config_error(py, path, "", e))?;
        self.set_py_config(py, config);
        Config::from_value(converted, path)
    }

    fn set_py_config(&self, py: Python<'_>, config: &Bound<'_, PyAny>) {
        *self.py_config.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Arc::new(config.clone().unbind()));
        // env.config is there before anything is built, as in the reference.
        let publish = helpers(py).and_then(|h| {
            let kwargs = PyDict::new(py);
            kwargs.set_item("config", config)?;
            h.publish_env
                .bind(py)
                .call((self.scope.env.bind(py),), Some(&kwargs))
        });
        if let Err(e) = publish {
            tracing::warn!("cannot publish env.config: {e}");
        }
    }

    /// The object a spec names: the one built for the same key from the same spec
    /// by an earlier build (a reload of an unchanged entry), or a new one.
    fn resolve(
        &self,
        spec: &ExtensionSpec,
        config: &Config,
        require_callable: bool,
    ) -> Result<Resolved, ConfigError> {
        let base = config.path.parent().unwrap_or(Path::new("")).to_path_buf();
        {
            let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
            let generation = built.generation;
            if let Some(entry) = built.entries.get_mut(&spec.key) {
                if entry.spec == *spec
                    && entry.base == base
                    && entry.require_callable == require_callable
                {
                    entry.generation = generation;
                    return Ok(entry.resolved.clone());
                }
            }
        }
        let resolved = self.resolve_new(spec, config, require_callable)?;
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        let generation = built.generation;
        built.entries.insert(
            spec.key.clone(),
            BuiltEntry {
                spec: spec.clone(),
                base,
                require_callable,
                resolved: resolved.clone(),
                generation,
            },
        );
        Ok(resolved)
    }

    fn resolve_new(
        &self,
        spec: &ExtensionSpec,
        config: &Config,
        require_callable: bool,
    ) -> Result<Resolved, ConfigError> {
        let registry: HashMap<String, Shared> = self
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        with_gil(|py| {
            let attempt = || -> PyResult<Resolved> {
                let target = match registry.get(&spec.target) {
                    Some(object) => object.bind(py).clone(),
                    None => PyString::new(py, &spec.target).into_any(),
                };
                let lookup = |text: &str| registry.get(text).map(|o| o.bind(py).clone());
                let kwargs = to_py_with(py, &Value::Object(spec.kwargs.clone()), &lookup)?;
                let base = config
                    .path
                    .parent()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let h = helpers(py)?;
                let object = h.resolve.bind(py).call1((
                    target,
                    kwargs,
                    spec.is_class_table,
                    base,
                    require_callable,
                ))?;
                let kind: String = h.kind.bind(py).call1((&object,))?.extract()?;
                let name = if spec.target.starts_with(OBJECT_REF_PREFIX) {
                    object.repr()?.to_string_lossy().chars().take(80).collect()
                } else {
                    spec.target.clone()
                };
                Ok(Resolved {
                    kind: if kind == "async" || kind == "asyncgen" {
                        Kind::Async
                    } else {
                        Kind::Sync
                    },
                    generator: kind == "asyncgen" || kind == "gen",
                    label: format!("{} ({name})", spec.key),
                    object: Arc::new(object.unbind()),
                })
            };
            attempt().map_err(|e| config_error(py, &config.path, &spec.key, e))
        })
    }

    fn callable(&self, resolved: Resolved) -> Callable {
        Callable {
            func: resolved.object,
            kind: resolved.kind,
            label: resolved.label,
        }
    }

    fn remember(&self, key: &str, object: &Shared) {
        self.resolved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned(), object.clone());
    }
}

impl ExtensionResolver for PyResolver {
    fn key_check(
        &self,
        spec: &ExtensionSpec,
        config: &Config,
    ) -> Result<Arc<dyn KeyCheck>, ConfigError> {
        let resolved = self.resolve(spec, config, true)?;
        Ok(Arc::new(PyKeyCheck {
            scope: self.scope.clone(),
            callable: self.callable(resolved),
        }))
    }

    fn connection(
        &self,
        spec: &ExtensionSpec,
        config: &Config,
    ) -> Result<Arc<dyn Provider>, ConfigError> {
        let resolved = self.resolve(spec, config, true)?;
        self.remember(&spec.key, &resolved.object);
        let generator = resolved.generator;
        Ok(Arc::new(PyProvider::new(
            self.scope.clone(),
            self.callable(resolved),
            generator,
        )))
    }

    fn embedder(
        &self,
        spec: &ExtensionSpec,
        config: &Config,
    ) -> Result<Arc<dyn crate::providers::doors::Embedder>, ConfigError> {
        let resolved = self.resolve(spec, config, true)?;
        Ok(Arc::new(super::embed::PyEmbedder {
            scope: self.scope.clone(),
            callable: self.callable(resolved),
        }))
    }

    fn handler(
        &self,
        spec: &ExtensionSpec,
        config: &Config,
    ) -> Result<Arc<dyn RequestHandler>, ConfigError> {
        let resolved = self.resolve(spec, config, true)?;
        Ok(Arc::new(PyHandler {
            scope: self.scope.clone(),
            callable: self.callable(resolved),
        }))
    }

    fn logger(
        &self,
        spec: &ExtensionSpec,
        config: &Config,
    ) -> Result<Arc<dyn Logger>, ConfigError> {
        let resolved = self.resolve(spec, config, true)?;
        Ok(Arc::new(PyLogger {
            scope: self.scope.clone(),
            callable: self.callable(resolved),
        }))
    }

    fn log_writer(
        &self,
        spec: &ExtensionSpec,
        config: &Config,
    ) -> Result<Arc<dyn LogWriter>, ConfigError> {
        let resolved = self.resolve(spec, config, true)?;
        Ok(Arc::new(PyLogWriter {
            scope: self.scope.clone(),
            callable: self.callable(resolved),
        }))
    }

    fn component(&self, spec: &ExtensionSpec, config: &Config) -> Result<(), ConfigError> {
        let resolved = self.resolve(spec, config, false)?;
        self.remember(&spec.key, &resolved.object);
        Ok(())
    }

    fn load_config(&self, path: &Path) -> Result<Config, ConfigError> {
        let python = Format::of(path)? == Format::Python;
        let tree = if python { None } else { Some(load_tree(path)?) };
        with_gil(|py| {
            let h = helpers(py).map_err(|e| config_error(py, path, "", e))?;
            let text_path = path.to_string_lossy().into_owned();
            match tree {
                None => {
                    let config = h
                        .load_python_config
                        .bind(py)
                        .call1((text_path,))
                        .map_err(|e| config_error(py, path, "", e))?;
                    self.config_from_python(py, &config, path)
                }
                Some(tree) => {
                    let config = Config::from_value(tree.clone(), path)?;
                    // env.config: the same settings as a Python `Config`.
                    let python_config = to_py(py, &tree)
                        .and_then(|t| h.config_from_tree.bind(py).call1((t, text_path)));
                    match python_config {
                        Ok(python_config) => self.set_py_config(py, &python_config),
                        Err(e) => tracing::warn!("env.config is not available: {e}"),
                    }
                    Ok(config)
                }
            }
        })
    }

    fn gateway_built(&self, gateway: &Gateway) {
        {
            // What this build did not use (removed or changed entries) is let go.
            let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
            let generation = built.generation;
            built
                .entries
                .retain(|_, entry| entry.generation == generation);
            built.generation += 1;
        }
        let resolved = self
            .resolved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let py_config = self
            .py_config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let bridge = self.scope.bridge.clone();
        with_gil(|py| {
            let publish = || -> PyResult<()> {
                let connections = PyDict::new(py);
                for (name, spec) in &gateway.config.connections {
                    let mut key = String::from("connections");
                    crate::config::push_key(&mut key, name);
                    let python = resolved
                        .get(&key)
                        .or_else(|| resolved.get(&format!("{key}.inference_func")))
                        .filter(|_| match spec {
                            ConnectionSpec::Extension(_) => true,
                            ConnectionSpec::Provider(p) => {
                                p.api_type == crate::config::ApiType::Function
                            }
                        });
                    match python {
                        Some(object) => connections.set_item(name, object.bind(py))?,
                        None => {
                            if let Some(connection) = gateway.connections.get(name) {
                                let wrapper = RustConnection::new(
                                    name.clone(),
                                    connection.provider.clone(),
                                    connection.default_model.clone(),
                                    bridge.clone(),
                                );
                                connections.set_item(name, Py::new(py, wrapper)?)?;
                            }
                        }
                    }
                }
                let components = PyDict::new(py);
                for (name, spec) in &gateway.config.components {
                    if let Some(object) = resolved.get(&spec.key) {
                        components.set_item(name, object.bind(py))?;
                    }
                }
                let kwargs = PyDict::new(py);
                kwargs.set_item("connections", connections)?;
                kwargs.set_item("components", components)?;
                kwargs.set_item("debug", crate::error::debug_details())?;
                if let Some(config) = &py_config {
                    kwargs.set_item("config", config.bind(py))?;
                }
                kwargs.set_item("make_default", true)?;
                helpers(py)?
                    .publish_env
                    .bind(py)
                    .call((self.scope.env.bind(py),), Some(&kwargs))?;
                Ok(())
            };
            if let Err(e) = publish() {
                tracing::error!("cannot publish lm_proxy.bootstrap.env: {e}");
            }
        });
    }
}
