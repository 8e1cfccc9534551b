//! Property tests over the code that reads untrusted input: the upstream SSE reader,
//! request validation, the Anthropic and Gemini request translators, and config
//! loading. They must never panic, and must answer bad input with client errors.
//!
//! `PROPTEST_CASES=100000 cargo test --lib proptests` runs them long; failures found
//! are kept under `proptest-regressions/` and replayed first on every run.

use bytes::Bytes;
use futures_util::StreamExt;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::api::validate::validate_request;
use crate::providers::UpstreamCall;
use crate::streaming::sse_json_events;

/// Any JSON value, a few levels deep, with keys that often collide with real ones.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-z \\u{e9}\\u{1F600}{}\":]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let key = prop_oneof![
            Just("type".to_owned()),
            Just("text".to_owned()),
            Just("role".to_owned()),
            Just("content".to_owned()),
            Just("function".to_owned()),
            Just("name".to_owned()),
            Just("arguments".to_owned()),
            Just("url".to_owned()),
            "[a-z_]{1,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..5)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

fn arb_part() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[a-z ]{0,10}".prop_map(|t| json!({"type": "text", "text": t})),
        prop_oneof![
            Just("data:image/png;base64,iVBORw0KGgo=".to_owned()),
            Just("data:image/gif;base64,R0lG".to_owned()),
            Just("data:;base64,".to_owned()),
            Just("data:image/png,notbase64".to_owned()),
            Just("https://example.com/cat.jpg".to_owned()),
            Just("https://example.com/noextension".to_owned()),
            Just("ftp://x".to_owned()),
            "[a-z:/.]{1,20}",
        ]
        .prop_map(|url| json!({"type": "image_url", "image_url": {"url": url}})),
        arb_json(),
    ]
}

fn arb_message() -> impl Strategy<Value = Value> {
    let role = prop_oneof![
        Just("system"),
        Just("developer"),
        Just("user"),
        Just("assistant"),
        Just("tool"),
        Just("function"),
        Just("wizard"),
    ];
    let content = prop_oneof![
        Just(Value::Null),
        "[a-z ]{0,10}".prop_map(Value::String),
        prop::collection::vec(arb_part(), 0..3).prop_map(Value::Array),
        arb_json(),
    ];
    let arguments = prop_oneof![
        Just(json!("")),
        Just(json!("{}")),
        Just(json!("{\"a\": 1}")),
        Just(json!("[1, 2]")),
        Just(json!("not json")),
        Just(Value::Null),
    ];
    let tool_calls = prop::option::of(prop::collection::vec(
        ("[a-z_]{1,6}", "[a-z]{1,6}", arguments)
            .prop_map(|(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})),
        0..3,
    ));
    (role, content, tool_calls, prop::option::of("[a-z_]{0,6}")).prop_map(
        |(role, content, calls, call_id)| {
            let mut m = json!({"role": role, "content": content});
            if let Some(calls) = calls {
                m["tool_calls"] = Value::Array(calls);
            }
            if let Some(id) = call_id {
                m["tool_call_id"] = json!(id);
            }
            m
        },
    )
}

/// Request fields with arbitrary values (most of them invalid).
fn arb_extras() -> impl Strategy<Value = Vec<(&'static str, Value)>> {
    prop::collection::vec(
        (
            prop_oneof![
                Just("n"),
                Just("max_tokens"),
                Just("max_completion_tokens"),
                Just("temperature"),
                Just("top_p"),
                Just("stop"),
                Just("tool_choice"),
                Just("parallel_tool_calls"),
                Just("response_format"),
                Just("stream"),
                Just("stream_options"),
                Just("user"),
                Just("seed"),
                Just("top_k"),
                Just("logit_bias"),
            ],
            arb_json(),
        ),
        0..5,
    )
}

fn arb_request() -> impl Strategy<Value = Map<String, Value>> {
    let tool =
        "[a-z_]{1,8}".prop_map(|name| json!({"type": "function", "function": {"name": name}}));
    (
        prop::collection::vec(arb_message(), 1..6),
        prop::option::of(prop::collection::vec(tool, 0..3)),
        arb_extras(),
    )
        .prop_map(|(messages, tools, extras)| {
            let mut request = Map::new();
            request.insert("model".into(), json!("m"));
            request.insert("messages".into(), Value::Array(messages));
            if let Some(tools) = tools {
                request.insert("tools".into(), Value::Array(tools));
            }
            for (key, value) in extras {
                request.insert(key.into(), value);
            }
            request
        })
}

fn call_of(request: &Map<String, Value>) -> UpstreamCall {
    let mut params = request.clone();
    params.remove("model");
    UpstreamCall {
        model: "m".into(),
        params,
        headers: http::HeaderMap::new(),
        header_case: Default::default(),
        gateway_usage: false,
        raw_body: None,
    }
}

/// `text` cut at `positions` (none past its end, in any order): the pieces in which
/// a body may arrive from the network.
pub(crate) fn cut_at(text: &[u8], mut positions: Vec<usize>) -> Vec<Vec<u8>> {
    positions.sort_unstable();
    let mut parts = Vec::with_capacity(positions.len() + 1);
    let mut last = 0;
    for p in positions {
        parts.push(text[last..p].to_vec());
        last = p;
    }
    parts.push(text[last..].to_vec());
    parts
}

fn collect_events(parts: Vec<Vec<u8>>) -> Vec<Result<Value, crate::error::ApiError>> {
    let body = futures_util::stream::iter(
        parts
            .into_iter()
            .map(|p| Ok::<_, std::io::Error>(Bytes::from(p))),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(sse_json_events(body, std::time::Duration::from_secs(5)).collect())
}

proptest! {
    /// However an SSE body is cut into network reads (CRLF or LF framing), the same
    /// events come out.
    #[test]
    fn sse_events_survive_any_chunking(
        values in prop::collection::vec(arb_json(), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        crlf in any::<bool>(),
    ) {
        let newline = if crlf { "\r\n" } else { "\n" };
        let mut text = String::new();
        let objects: Vec<Value> = values.into_iter().map(|v| json!({"choices": [], "v": v})).collect();
        for v in &objects {
            text.push_str(&format!(": keep-alive{newline}data: {v}{newline}{newline}"));
        }
        text.push_str(&format!("data: [DONE]{newline}{newline}"));
        let bytes = text.into_bytes();
        let parts = cut_at(&bytes, cuts.iter().map(|i| i.index(bytes.len() + 1)).collect());
        let got: Vec<Value> = collect_events(parts).into_iter().map(|r| r.expect("valid events")).collect();
        prop_assert_eq!(got, objects);
    }

    /// Arbitrary bytes never make the reader panic or hang.
    #[test]
    fn sse_reader_takes_any_bytes(parts in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..6)) {
        let _ = collect_events(parts);
    }

    /// Validation never panics, and whatever it lets through, both translators either
    /// translate or refuse with a client error: never a panic, never a 5xx.
    #[test]
    fn translators_never_fail_on_validated_requests(request in arb_mixed_request()) {
        if validate_request(&request).is_ok() {
            let call = call_of(&request);
            match crate::providers::anthropic::request::translate("m", &call.params, 1024) {
                Ok(t) => { serde_json::to_vec(&t.body).expect("serializable"); }
                Err(e) => prop_assert!(e.status().is_client_error(), "anthropic: {e:?}"),
            }
            match crate::providers::google::request::build_request(&call, &Default::default()) {
                Ok(body) => { serde_json::to_vec(&body).expect("serializable"); }
                Err(e) => prop_assert!(e.status().is_client_error(), "gemini: {e:?}"),
            }
        }
    }

    /// Any JSON tree as a config either loads or gives a config error; never a panic.
    #[test]
    fn config_trees_never_panic(tree in arb_json(), connections in arb_json()) {
        let mut tree = tree;
        if let Value::Object(map) = &mut tree {
            map.insert("connections".into(), connections);
        }
        let _ = crate::config::Config::from_value(tree, std::path::Path::new("fuzz.toml"));
    }

    /// Any text given as TOML, JSON or YAML is parsed or refused; never a panic.
    #[test]
    fn config_text_never_panics(text in "\\PC{0,200}") {
        for format in [crate::config::Format::Toml, crate::config::Format::Json, crate::config::Format::Yaml] {
            let _ = crate::config::parse_text(&text, format, std::path::Path::new("fuzz"));
        }
    }
}

/// Requests made to pass validation: an optional system prompt, user/assistant
/// turns of plain text, tools with distinct names and, optionally, one call of the
/// first tool with its result. Every text is unique (numbered), so each can be found
/// in a translation.
fn arb_valid_request() -> impl Strategy<Value = Map<String, Value>> {
    let text = "[a-z]{1,8}( [a-z]{1,8}){0,3}";
    (
        prop::option::of(text),
        prop::collection::vec((text, text), 1..4),
        text,
        prop::collection::btree_set("[a-z][a-z_]{0,7}", 0..4),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(system, turns, last, tools, call_a_tool, parts)| {
            let mut n = 0;
            let mut unique = |t: &str| {
                n += 1;
                format!("{t} #{n}")
            };
            let content = |t: String| {
                if parts {
                    json!([{"type": "text", "text": t}])
                } else {
                    json!(t)
                }
            };
            let mut messages = Vec::new();
            if let Some(system) = system {
                messages.push(json!({"role": "system", "content": unique(&system)}));
            }
            for (user, assistant) in turns {
                messages.push(json!({"role": "user", "content": content(unique(&user))}));
                messages.push(json!({"role": "assistant", "content": unique(&assistant)}));
            }
            let tools: Vec<String> = tools.into_iter().map(|t| format!("tool_{t}")).collect();
            if let (true, Some(first)) = (call_a_tool, tools.first()) {
                let arguments = json!({"q": unique("argument")}).to_string();
                messages.push(json!({"role": "user", "content": unique("use the tool")}));
                messages.push(json!({"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": first, "arguments": arguments}}
                ]}));
                messages.push(json!({"role": "tool", "tool_call_id": "call_1", "content": unique("tool result")}));
            }
            messages.push(json!({"role": "user", "content": content(unique(&last))}));
            let mut request = Map::new();
            request.insert("model".into(), json!("m"));
            request.insert("messages".into(), Value::Array(messages));
            if !tools.is_empty() {
                let tools: Vec<Value> = tools
                    .iter()
                    .map(|name| json!({"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}))
                    .collect();
                request.insert("tools".into(), Value::Array(tools));
            }
            request
        })
}

/// Every string leaf of a JSON tree (object keys excluded).
fn strings_in(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings_in(v, out)),
        Value::Object(map) => map.values().for_each(|v| strings_in(v, out)),
        _ => {}
    }
}

/// The texts (message contents, tool call arguments) and tool names a translation
/// must carry over, one by one.
fn expected_strings(request: &Map<String, Value>) -> (Vec<String>, Vec<String>) {
    let mut texts = Vec::new();
    for message in request["messages"].as_array().unwrap() {
        match &message["content"] {
            Value::String(s) => texts.push(s.clone()),
            Value::Array(parts) => texts.extend(
                parts
                    .iter()
                    .filter_map(|p| p["text"].as_str().map(str::to_owned)),
            ),
            _ => {}
        }
        for call in message["tool_calls"].as_array().into_iter().flatten() {
            let arguments: Value =
                serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
            texts.push(arguments["q"].as_str().unwrap().to_owned());
        }
    }
    let tools = request
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|t| t["function"]["name"].as_str().unwrap().to_owned())
        .collect();
    (texts, tools)
}

/// A runner with a fixed seed, so that the shares counted below are the same on
/// every run.
fn runner(cases: u32) -> proptest::test_runner::TestRunner {
    use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
    TestRunner::new_with_rng(
        ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    )
}

/// What goes in comes out: for requests that pass validation (all of these), both
/// translators succeed and every text and every tool reaches the upstream body.
#[test]
fn translations_carry_every_message_and_tool_to_the_upstream_body() {
    let translated = std::sync::atomic::AtomicUsize::new(0);
    let with_tools = std::sync::atomic::AtomicUsize::new(0);
    runner(256)
        .run(&arb_valid_request(), |request| {
            validate_request(&request)
                .map_err(|e| TestCaseError::fail(format!("not valid: {e:?}")))?;
            let call = call_of(&request);
            let (texts, tools) = expected_strings(&request);
            let anthropic =
                crate::providers::anthropic::request::translate("m", &call.params, 1024)
                    .map_err(|e| TestCaseError::fail(format!("anthropic: {e:?}")))?;
            let gemini =
                crate::providers::google::request::build_request(&call, &Default::default())
                    .map_err(|e| TestCaseError::fail(format!("gemini: {e:?}")))?;
            for (name, body) in [
                ("anthropic", Value::Object(anthropic.body)),
                ("gemini", Value::Object(gemini)),
            ] {
                let mut found = Vec::new();
                strings_in(&body, &mut found);
                for text in texts.iter().chain(&tools) {
                    prop_assert!(
                        found.contains(text),
                        "{}: {:?} missing from {}",
                        name,
                        text,
                        body
                    );
                }
            }
            translated.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if !tools.is_empty() {
                with_tools.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap();
    let (translated, with_tools) = (translated.into_inner(), with_tools.into_inner());
    assert_eq!(translated, 256);
    assert!(with_tools > 64, "{with_tools} of 256 cases had tools");
}

/// What `translators_never_fail_on_validated_requests` feeds the translators: fully
/// arbitrary requests (which pass validation only about 4 % of the time), valid
/// ones, and valid ones with arbitrary extra fields.
fn arb_mixed_request() -> impl Strategy<Value = Map<String, Value>> {
    prop_oneof![
        arb_request(),
        arb_valid_request(),
        (arb_valid_request(), arb_extras()).prop_map(|(mut request, extras)| {
            for (key, value) in extras {
                request.insert(key.into(), value);
            }
            request
        }),
    ]
}

/// The requests of `translators_never_fail_on_validated_requests` reach the
/// translators in a known share of cases (else that test would prove little), and
/// validation still refuses some.
#[test]
fn mixed_requests_pass_validation_often_enough_to_test_the_translators() {
    let passed = std::sync::atomic::AtomicUsize::new(0);
    let cases = 512;
    runner(cases)
        .run(&arb_mixed_request(), |request| {
            if validate_request(&request).is_ok() {
                passed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap();
    let passed = passed.into_inner();
    eprintln!("{passed} of {cases} mixed requests passed validation");
    // About half: every valid request, some of those with extras, a few arbitrary.
    assert!(passed * 3 >= cases as usize, "only {passed} of {cases}");
    assert!(passed < cases as usize, "validation refused nothing");
}

/// A config that loads, and the keys (path, and the name a `ConfigError` gives it)
/// that the test below sets to other values.
fn base_config() -> Value {
    json!({
        "host": "127.0.0.1", "port": 8000, "api_prefix": "/v1", "enabled": true,
        "max_request_body_mb": 4, "shutdown_grace_seconds": 5, "model_listing_mode": "as_is",
        "connections": {
            "m": {"api_type": "mock"},
            "up": {"api_type": "open_ai", "api_base": "http://127.0.0.1:9/v1",
                   "api_key": "sk-prop-SECRET-1", "timeout": 5},
        },
        "routing": {"*": "up.*", "mock-*": "m.*"},
        "groups": {"default": {"api_keys": ["client-prop-SECRET-2"], "allowed_connections": "*"}},
    })
}

const CONFIG_KEYS: &[(&[&str], &str)] = &[
    (&["host"], "host"),
    (&["port"], "port"),
    (&["api_prefix"], "api_prefix"),
    (&["enabled"], "enabled"),
    (&["max_request_body_mb"], "max_request_body_mb"),
    (&["shutdown_grace_seconds"], "shutdown_grace_seconds"),
    (&["model_listing_mode"], "model_listing_mode"),
    (&["trusted_proxies"], "trusted_proxies"),
    (&["metrics"], "metrics"),
    (&["connections", "m"], "connections.m"),
    (
        &["connections", "up", "api_type"],
        "connections.up.api_type",
    ),
    (
        &["connections", "up", "api_base"],
        "connections.up.api_base",
    ),
    (&["connections", "up", "api_key"], "connections.up.api_key"),
    (&["connections", "up", "timeout"], "connections.up.timeout"),
    (&["connections", "up", "model"], "connections.up.model"),
    (&["routing"], "routing"),
    (&["routing", "*"], "routing.\"*\""),
    (&["groups", "default"], "groups.default"),
    (
        &["groups", "default", "api_keys"],
        "groups.default.api_keys",
    ),
    (
        &["groups", "default", "allowed_connections"],
        "groups.default.allowed_connections",
    ),
];

/// Values of the shapes config keys take, right and wrong, and anything else.
fn arb_config_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => prop_oneof![Just(-1i64), Just(0), Just(1), Just(8080), Just(70000)].prop_map(|n| json!(n)),
        1 => prop_oneof![Just(0.5f64), Just(-2.5), Just(1e9)].prop_map(|f| json!(f)),
        1 => any::<bool>().prop_map(Value::Bool),
        3 => prop_oneof![
            Just(""), Just(" "), Just("m"), Just("up.*"), Just("m.*"), Just("nope.*"), Just("*"),
            Just("m, up"), Just("/api"), Just("/a?b"), Just("http://127.0.0.1:1/v1"), Just("ftp://x"),
            Just("mock"), Just("open_ai"), Just("as_is"), Just("10.0.0.0/8"), Just("5"), Just("yes"),
        ].prop_map(|s| json!(s)),
        1 => prop::collection::vec(prop_oneof![Just("k1"), Just("m"), Just(""), Just("10.0.0.1")], 0..3)
            .prop_map(|v| json!(v)),
        1 => Just(json!({"api_type": "mock"})),
        1 => Just(json!({})),
        2 => arb_json(),
    ]
}

/// Config keys set to values right and wrong: each tree either loads or is refused
/// with a `ConfigError` naming that key (or a key inside it), and never with a
/// secret of the config in the message. Both outcomes occur in a good share.
#[test]
fn config_keys_with_wrong_values_are_refused_naming_the_key() {
    let loaded = std::sync::atomic::AtomicUsize::new(0);
    let refused = std::sync::atomic::AtomicUsize::new(0);
    let cases = 512;
    let strategy = (0..CONFIG_KEYS.len(), arb_config_value());
    runner(cases)
        .run(&strategy, |(which, value)| {
            let (path, key) = CONFIG_KEYS[which];
            let mut tree = base_config();
            let (last, parents) = path.split_last().unwrap();
            let mut node = &mut tree;
            for part in parents {
                node = &mut node[*part];
            }
            node[*last] = value.clone();
            match crate::config::Config::from_value(tree, std::path::Path::new("prop.toml")) {
                Ok(_) => {
                    loaded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => {
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let named = e.key == key
                        || e.key.starts_with(&format!("{key}."))
                        || e.key.starts_with(&format!("{key}["));
                    prop_assert!(
                        named,
                        "{} = {}: refused naming {:?}: {}",
                        key,
                        value,
                        e.key,
                        e
                    );
                    let text = e.to_string();
                    prop_assert!(!text.contains("SECRET"), "{} = {}: {}", key, value, text);
                }
            }
            Ok(())
        })
        .unwrap();
    let (loaded, refused) = (loaded.into_inner(), refused.into_inner());
    eprintln!("{loaded} loaded, {refused} refused of {cases}");
    assert!(loaded * 10 >= cases as usize, "only {loaded} loaded");
    assert!(refused * 5 >= cases as usize, "only {refused} refused");
}
