//! Unit tests of the bridge that need an interpreter but no wheel: the test binary
//! embeds CPython (pyo3 links libpython when it does not build an extension module)
//! and imports the pure-Python package from `python/` with this crate's module
//! registered as `lm_proxy._lm_proxy`, the way the wheel lays it out.

use std::sync::Once;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use serde_json::{json, Value};

use super::convert::{from_py, map_from_py, map_to_py, to_py};
use super::errors::{api_error, config_error, raise_config_error, summary, Role};
use crate::error::ApiError;

/// Start the interpreter once per test binary and make `import lm_proxy` work.
fn python() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        Python::initialize();
        Python::attach(|py| {
            let sys = py.import("sys").unwrap();
            let package_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/python");
            sys.getattr("path")
                .unwrap()
                .call_method1("insert", (0, package_dir))
                .unwrap();
            let module = pyo3::wrap_pymodule!(super::_lm_proxy)(py);
            sys.getattr("modules")
                .unwrap()
                .set_item("lm_proxy._lm_proxy", module)
                .unwrap();
            // Every later helpers() lookup imports lm_proxy._bridge; fail here, clearly.
            super::runtime::helpers(py).expect("lm_proxy._bridge imports");
        });
    });
}

/// Evaluate a Python expression (with `datetime`, `enum`, `decimal`, `uuid` and
/// `lm_proxy.errors` imported).
fn eval<'py>(py: Python<'py>, expr: &str) -> Bound<'py, PyAny> {
    let globals = PyDict::new(py);
    let setup = c"import datetime, decimal, enum, uuid, dataclasses\nfrom lm_proxy.errors import OpenAIHTTPException, ConfigError";
    py.run(setup, Some(&globals), None).unwrap();
    let code = std::ffi::CString::new(expr).unwrap();
    py.eval(&code, Some(&globals), None).unwrap()
}

fn raise<'py>(py: Python<'py>, expr: &str) -> PyErr {
    PyErr::from_value(eval(py, expr))
}

#[test]
fn json_values_survive_the_round_trip_through_python_in_order() {
    python();
    let value = json!({
        "z": 1, "a": [true, false, null, -7, 2.5, "ü\u{0}"],
        "big": u64::MAX, "min": i64::MIN,
        "nested": {"b": {}, "a": []}
    });
    Python::attach(|py| {
        let object = to_py(py, &value).unwrap();
        let back = from_py(&object).unwrap();
        assert_eq!(back, value);
        // Key order is kept both ways (serde_json preserves order here).
        let keys: Vec<&String> = back.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["z", "a", "big", "min", "nested"]);
        // Python sees the plain types: an int beyond i64 is still an int.
        assert_eq!(
            eval(py, "type")
                .call1((object.get_item("big").unwrap(),))
                .unwrap()
                .str()
                .unwrap()
                .to_string(),
            "<class 'int'>"
        );
        let map = map_to_py(py, value.as_object().unwrap()).unwrap();
        assert_eq!(map.len(), 5);
    });
}

#[test]
fn python_values_that_are_not_json_become_json() {
    python();
    Python::attach(|py| {
        let cases: &[(&str, Value)] = &[
            ("(1, 'a', None)", json!([1, "a", null])),
            ("frozenset({3})", json!([3])),
            ("b'caf\\xc3\\xa9\\xff'", json!("café\u{fffd}")),
            (
                "{1: 'one', None: 'none', (1, 2): 'pair'}",
                json!({"1": "one", "null": "none", "[1,2]": "pair"}),
            ),
            ("float('nan')", Value::Null),
            ("float('inf')", Value::Null),
            ("2 ** 70", json!(1180591620717411303424.0)),
            ("True", json!(true)),
            // Through lm_proxy._bridge.to_jsonable:
            ("datetime.date(2024, 2, 29)", json!("2024-02-29")),
            ("decimal.Decimal('1.5')", json!(1.5)),
            ("enum.Enum('Colour', 'RED')(1)", json!(1)),
            (
                "uuid.UUID(int=1)",
                json!("00000000-0000-0000-0000-000000000001"),
            ),
            (
                "dataclasses.make_dataclass('P', ['x'])(x=[1])",
                json!({"x": [1]}),
            ),
            (
                "OpenAIHTTPException('no', 429, code='slow')",
                json!({"message": "no", "type": "invalid_request_error", "param": null, "code": "slow", "status": 429}),
            ),
            ("object", json!("<class 'object'>")),
        ];
        for (expr, expected) in cases {
            assert_eq!(&from_py(&eval(py, expr)).unwrap(), expected, "{expr}");
        }
    });
}

#[test]
fn cycles_and_deep_nesting_are_errors_not_crashes() {
    python();
    Python::attach(|py| {
        let cyclic = PyList::empty(py);
        cyclic.append(&cyclic).unwrap();
        let err = from_py(cyclic.as_any()).unwrap_err();
        assert!(err.is_instance_of::<pyo3::exceptions::PyValueError>(py));
        assert!(err.to_string().contains("nests too deeply"), "{err}");
        // 200 levels are fine.
        let deep = eval(py, "eval('[' * 200 + ']' * 200)");
        assert!(from_py(&deep).is_ok());
    });
}

#[test]
fn mappings_are_required_where_a_dict_is_expected() {
    python();
    Python::attach(|py| {
        assert!(map_from_py(&py.None().into_bound(py), "user_info")
            .unwrap()
            .is_empty());
        assert_eq!(
            Value::Object(map_from_py(&eval(py, "{'a': 1}"), "user_info").unwrap()),
            json!({"a": 1})
        );
        let err = map_from_py(&eval(py, "[1]"), "user_info").unwrap_err();
        assert!(err.is_instance_of::<pyo3::exceptions::PyTypeError>(py));
        assert_eq!(
            err.value(py).to_string(),
            "user_info must be a dict, found a list"
        );
    });
}

#[test]
fn openai_http_exceptions_become_exactly_the_answer_they_describe() {
    python();
    Python::attach(|py| {
        let err = raise(
            py,
            "OpenAIHTTPException('slow down', 429, 'rate_limit_error', code='rate', param='model', headers={'Retry-After': 7, 'bad header': 'x'})",
        );
        let answer = api_error(py, err, Role::KeyCheck, "api_key_check x");
        assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            answer.envelope(),
            json!({"error": {"message": "slow down", "type": "rate_limit_error", "param": "model", "code": "rate"}})
        );
        let response = answer.into_response();
        assert_eq!(response.headers()["retry-after"], "7");
        assert_eq!(
            response.headers().len(),
            2,
            "content-type and retry-after only: {:?}",
            response.headers()
        );

        // A status that is not an error status answers 500 rather than a success.
        let err = raise(py, "OpenAIHTTPException('odd', 200)");
        let answer = api_error(py, err, Role::Handler, "before h");
        assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(answer.envelope()["error"]["message"], "odd");
    });
}

#[test]
fn other_exceptions_are_faults_whose_status_depends_on_the_role() {
    python();
    Python::attach(|py| {
        for (role, status) in [
            (Role::KeyCheck, StatusCode::INTERNAL_SERVER_ERROR),
            (Role::Handler, StatusCode::INTERNAL_SERVER_ERROR),
            (Role::Connection, StatusCode::BAD_GATEWAY),
        ] {
            let err = raise(py, "KeyError('secret-detail')");
            assert_eq!(summary(py, &err), "KeyError: 'secret-detail'");
            let answer = api_error(py, err, role, "label");
            assert_eq!(answer.status(), status, "{role:?}");
            match (&answer, role) {
                (ApiError::UpstreamFailure { detail }, Role::Connection)
                | (ApiError::Internal { detail }, Role::KeyCheck | Role::Handler) => {
                    assert_eq!(detail, "label raised KeyError: 'secret-detail'")
                }
                other => panic!("{other:?}"),
            }
            if !crate::error::debug_details() {
                let text = answer.envelope().to_string();
                assert!(!text.contains("secret-detail"), "{text}");
            }
        }
        // Cancellation is ours (client gone, server stopping), not the extension's fault.
        let err = raise(py, "__import__('asyncio').CancelledError()");
        let answer = api_error(py, err, Role::Connection, "conn");
        assert!(
            matches!(&answer, ApiError::UpstreamFailure { detail } if detail == "conn was cancelled"),
            "{answer:?}"
        );
        // An exception with an empty message is named by its type alone.
        assert_eq!(summary(py, &raise(py, "RuntimeError()")), "RuntimeError");
    });
}

#[test]
fn config_errors_cross_the_border_both_ways() {
    python();
    Python::attach(|py| {
        let path = std::path::Path::new("/etc/lm/config.py");
        // lm-proxy's own ConfigError: its message as is.
        let err = raise(py, "ConfigError('needs a url')");
        let converted = config_error(py, path, "connections.x", err);
        assert_eq!(converted.key, "connections.x");
        assert_eq!(converted.problem, "needs a url");
        // Anything else: with its type.
        let err = raise(py, "ImportError('no module named foo')");
        let converted = config_error(py, path, "before", err);
        assert_eq!(converted.problem, "ImportError: no module named foo");
        // And back: a Python ConfigError with the whole line.
        let back = raise_config_error(py, &converted);
        let expected = eval(py, "ConfigError");
        assert!(back.is_instance(py, &expected));
        assert_eq!(back.value(py).to_string(), converted.to_string());
    });
}
