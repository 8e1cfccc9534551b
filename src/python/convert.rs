//! JSON values ⇄ Python objects.
//!
//! The core speaks `serde_json::Value`; Python code gets plain dicts, lists, strings
//! and numbers (key order kept). Going back is lenient, because values that come out
//! of user code (user info, `llm_params`, log entries) may hold dates, enums, tuples,
//! pydantic models or anything else: those are turned into JSON by
//! `lm_proxy._bridge.to_jsonable`, and as a last resort into their `str()`.

use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyBytes, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet, PyString, PyTuple,
};
use serde_json::{Map, Number, Value};

use super::runtime::helpers;

/// How deep a Python structure may nest before it is taken for a cycle.
const MAX_DEPTH: usize = 200;

/// A JSON value as a Python object.
pub fn to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    to_py_with(py, value, &|_| None)
}

/// A JSON value as a Python object; strings for which `lookup` returns an object
/// (references to objects of a Python config) become that object.
pub fn to_py_with<'py>(
    py: Python<'py>,
    value: &Value,
    lookup: &dyn Fn(&str) -> Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                PyFloat::new(py, n.as_f64().unwrap_or(f64::NAN)).into_any()
            }
        }
        Value::String(s) => match lookup(s) {
            Some(object) => object,
            None => PyString::new(py, s).into_any(),
        },
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_py_with(py, item, lookup)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => map_to_py_with(py, map, lookup)?.into_any(),
    })
}

/// A JSON object as a Python dict.
pub fn map_to_py<'py>(py: Python<'py>, map: &Map<String, Value>) -> PyResult<Bound<'py, PyDict>> {
    map_to_py_with(py, map, &|_| None)
}

fn map_to_py_with<'py>(
    py: Python<'py>,
    map: &Map<String, Value>,
    lookup: &dyn Fn(&str) -> Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (key, value) in map {
        dict.set_item(key, to_py_with(py, value, lookup)?)?;
    }
    Ok(dict)
}

/// A Python object as JSON (lenient, see the module docs).
pub fn from_py(object: &Bound<'_, PyAny>) -> PyResult<Value> {
    from_py_at(object, 0)
}

/// A Python object that must be a mapping, as a JSON object.
pub fn map_from_py(object: &Bound<'_, PyAny>, what: &str) -> PyResult<Map<String, Value>> {
    match from_py(object)? {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        other => Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "{what} must be a dict, found {}",
            crate::config::json_type(&other)
        ))),
    }
}

fn from_py_at(object: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    if depth > MAX_DEPTH {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "value nests too deeply to be turned into JSON (a cycle?)",
        ));
    }
    if object.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = object.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if let Ok(s) = object.cast::<PyString>() {
        return Ok(Value::String(s.to_cow()?.into_owned()));
    }
    if object.is_instance_of::<PyInt>() {
        // Enums deriving from int come here too; their value is the int.
        if let Ok(i) = object.extract::<i64>() {
            return Ok(Value::from(i));
        }
        if let Ok(u) = object.extract::<u64>() {
            return Ok(Value::from(u));
        }
        let f: f64 = object.extract()?;
        return Ok(Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null));
    }
    if let Ok(f) = object.cast::<PyFloat>() {
        return Ok(Number::from_f64(f.value())
            .map(Value::Number)
            .unwrap_or(Value::Null));
    }
    if let Ok(dict) = object.cast::<PyDict>() {
        let mut map = Map::with_capacity(dict.len());
        for (key, value) in dict.iter() {
            let key = match key.cast::<PyString>() {
                Ok(s) => s.to_cow()?.into_owned(),
                Err(_) => match from_py_at(&key, depth + 1)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                },
            };
            map.insert(key, from_py_at(&value, depth + 1)?);
        }
        return Ok(Value::Object(map));
    }
    if let Ok(list) = object.cast::<PyList>() {
        return list
            .iter()
            .map(|item| from_py_at(&item, depth + 1))
            .collect::<PyResult<Vec<_>>>()
            .map(Value::Array);
    }
    if let Ok(tuple) = object.cast::<PyTuple>() {
        return tuple
            .iter()
            .map(|item| from_py_at(&item, depth + 1))
            .collect::<PyResult<Vec<_>>>()
            .map(Value::Array);
    }
    if object.is_instance_of::<PySet>() || object.is_instance_of::<PyFrozenSet>() {
        return object
            .try_iter()?
            .map(|item| from_py_at(&item?, depth + 1))
            .collect::<PyResult<Vec<_>>>()
            .map(Value::Array);
    }
    if let Ok(bytes) = object.cast::<PyBytes>() {
        return Ok(Value::String(
            String::from_utf8_lossy(bytes.as_bytes()).into_owned(),
        ));
    }
    // Dates, enums, dataclasses, pydantic models, mappings, ...: Python knows best.
    let py = object.py();
    let plain = helpers(py)?.to_jsonable.bind(py).call1((object,))?;
    if plain.is(object) {
        return Ok(Value::String(object.str()?.to_cow()?.into_owned()));
    }
    from_py_at(&plain, depth + 1)
}
