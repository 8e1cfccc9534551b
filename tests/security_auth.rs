//! Issue 20, items 1, 2, 13 and 14c, tried as an attacker would:
//! - `CheckAPIKeyWithRequest` must not let a client key rewrite the URL it asks
//!   (`../../health#` made the gateway ask the auth service's `/health`);
//! - an empty client key or metrics token must not open the gateway;
//! - config errors must name the key and the file, never echo a secret;
//! - a provider `api_key` with a trailing newline must still be sent.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;

use common::process::{run_to_exit, write, Proc};
use common::{config_from_toml, user, MockUpstream, TestGateway};
use lm_proxy::config::{parse_text, Config, ConfigError, Format};

// ------------------------------------------------------- the mock auth service

/// An auth service that records every path (with its query) it is asked for and
/// answers 200 to `/health`, to `/keys/good-key/valid` and to `/check?key=a+b=c&d!`
/// (decoded); anything else 401.
struct AuthService {
    url: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl AuthService {
    async fn start() -> AuthService {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let app = axum::Router::new().fallback(move |uri: Uri| {
            let record = record.clone();
            async move {
                let raw = uri
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default();
                record.lock().unwrap().push(raw.clone());
                let query_key = uri.query().and_then(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .find(|(k, _)| k == "key")
                        .map(|(_, v)| v.into_owned())
                });
                let ok = uri.path() == "/health"
                    || uri.path() == "/keys/good-key/valid"
                    || (uri.path() == "/check" && query_key.as_deref() == Some("a+b=c&d!"));
                if ok {
                    (StatusCode::OK, "{}").into_response()
                } else {
                    (StatusCode::UNAUTHORIZED, "no").into_response()
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        AuthService {
            url: format!("http://{addr}"),
            seen,
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn with_request_config(url: &str) -> String {
    format!(
        r#"
[connections.mock]
api_type = "mock"
[routing]
"*" = "mock.*"
[api_key_check]
class = "lm_proxy.api_key_check.CheckAPIKeyWithRequest"
url = "{url}"
"#
    )
}

// --------------------------------------------------------- item 1: auth bypass

#[tokio::test]
async fn with_request_keys_that_rewrite_the_url_are_refused_before_any_call() {
    let auth = AuthService::start().await;
    let gw = TestGateway::start(&with_request_config(&format!(
        "{}/keys/{{api_key}}/valid",
        auth.url
    )))
    .await;
    for key in [
        "../../health#",
        "x/../../health#",
        "%2e%2e/%2e%2e/health#",
        "..",
        "a\\b",
    ] {
        let (status, body) = gw.chat_json(key, user("m", "x")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{key}: {body}");
        assert_eq!(body["error"]["code"], "invalid_api_key", "{key}");
    }
    assert_eq!(
        auth.seen(),
        Vec::<String>::new(),
        "refused keys never reach the auth service (and never its /health)"
    );

    let (status, body) = gw.chat_json("good-key", user("m", "x")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = gw.chat_json("bad-key", user("m", "x")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(auth.seen(), ["/keys/good-key/valid", "/keys/bad-key/valid"]);
}

#[tokio::test]
async fn with_request_key_in_a_query_is_sent_encoded() {
    let auth = AuthService::start().await;
    let gw = TestGateway::start(&with_request_config(&format!(
        "{}/check?key={{api_key}}",
        auth.url
    )))
    .await;
    let (status, body) = gw.chat_json("a+b=c&d!", user("m", "x")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(auth.seen(), ["/check?key=a%2Bb%3Dc%26d%21"]);
}

#[tokio::test]
async fn with_request_placeholder_in_the_host_is_a_config_error() {
    let config = config_from_toml(&with_request_config("http://{api_key}.auth.example/x"));
    let client = lm_proxy_client();
    let err =
        lm_proxy::gateway::Gateway::build(config, &client, &lm_proxy::extensions::NativeResolver)
            .err()
            .expect("refused");
    assert_eq!(err.key, "api_key_check.url");
    assert!(err.problem.contains("path or the query"), "{err}");
}

fn lm_proxy_client() -> lm_proxy::upstream::UpstreamClient {
    lm_proxy::server::install_crypto_provider();
    lm_proxy::upstream::UpstreamClient::new(std::time::Duration::from_secs(1)).expect("client")
}

/// The gateway in-process on 127.0.0.1, from a config changed after loading.
async fn serve_config(mut config: Config) -> TestGateway {
    config.settings.host = "127.0.0.1".into();
    config.settings.port = 0;
    let server = lm_proxy::server::start(
        config,
        Arc::new(lm_proxy::extensions::NativeResolver),
        Default::default(),
    )
    .await
    .expect("gateway starts");
    TestGateway {
        server,
        client: reqwest::Client::new(),
    }
}

// -------------------------------------------------------- item 2: empty secrets

/// Write `text` as `name` in a fresh directory and load it with the real loader.
fn load_file(name: &str, text: &str) -> (tempfile::TempDir, Result<Config, ConfigError>) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), name, text);
    let result = Config::load(&path);
    (dir, result)
}

const MOCK: &str = "[connections.mock]\napi_type = \"mock\"\n[routing]\n\"*\" = \"mock.*\"\n";

#[test]
fn an_empty_client_key_is_a_startup_error() {
    // TEAM_KEY set but empty: before, the group's key was "" and matched a request
    // with no Authorization header.
    std::env::set_var("LMP_SEC_TEAM_KEY_EMPTY", "");
    let (_dir, result) = load_file(
        "empty-env.toml",
        &format!("{MOCK}[groups.team]\napi_keys = [\"env:LMP_SEC_TEAM_KEY_EMPTY\"]\n"),
    );
    let err = result.unwrap_err();
    assert_eq!(err.key, "groups.team.api_keys[0]");
    assert!(err.to_string().contains("empty-env.toml"), "{err}");
    assert!(
        err.problem.contains("LMP_SEC_TEAM_KEY_EMPTY is empty"),
        "{err}"
    );

    let (_dir, result) = load_file(
        "empty-literal.toml",
        &format!("{MOCK}[groups.team]\napi_keys = [\"ok-key-1\", \"  \"]\n"),
    );
    let err = result.unwrap_err();
    assert_eq!(err.key, "groups.team.api_keys[1]");
    assert!(err.to_string().contains("empty-literal.toml"), "{err}");
}

#[tokio::test]
async fn an_optional_empty_client_key_is_left_out() {
    std::env::set_var("LMP_SEC_OPTIONAL_EMPTY", "");
    let (_dir, result) = load_file(
        "optional.toml",
        &format!("{MOCK}[groups.default]\napi_keys = [\"env:LMP_SEC_OPTIONAL_EMPTY?\"]\n"),
    );
    let config = result.unwrap();
    assert!(config.settings.groups["default"].api_keys.is_empty());
}

#[tokio::test]
async fn no_key_never_matches_an_empty_configured_key() {
    // A config built past the loader's checks (as an embedding program might) with
    // an empty key: a request without Authorization still gets 401.
    let mut config = config_from_toml(&format!(
        "{MOCK}[groups.default]\napi_keys = [\"real-key-1\"]\n"
    ));
    config.settings.groups["default"].api_keys = vec![String::new()];
    let gw = serve_config(config).await;
    let response = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .json(&user("m", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let (status, _) = gw.chat_json("", user("m", "x")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[test]
fn an_empty_metrics_token_is_a_startup_error() {
    std::env::set_var("LMP_SEC_METRICS_TOKEN_EMPTY", "");
    let (_dir, result) = load_file(
        "metrics.toml",
        &format!("{MOCK}[metrics]\ntoken = \"env:LMP_SEC_METRICS_TOKEN_EMPTY\"\n"),
    );
    let err = result.unwrap_err();
    assert_eq!(err.key, "metrics.token");
    assert!(err.to_string().contains("metrics.toml"), "{err}");

    let (_dir, result) = load_file("metrics2.toml", &format!("{MOCK}[metrics]\ntoken = \"\"\n"));
    assert_eq!(result.unwrap_err().key, "metrics.token");

    // Explicitly optional: absent (no token), as the operator asked.
    let (_dir, result) = load_file(
        "metrics3.toml",
        &format!("{MOCK}[metrics]\ntoken = \"env:LMP_SEC_METRICS_TOKEN_EMPTY?\"\n"),
    );
    assert_eq!(result.unwrap().settings.metrics.token, None);
}

#[tokio::test]
async fn an_empty_metrics_token_built_past_the_loader_locks_metrics() {
    let mut config = config_from_toml(MOCK);
    config.settings.metrics.token = Some(String::new());
    let gw = serve_config(config).await;
    let response = gw.client.get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let response = gw
        .client
        .get(gw.url("/metrics"))
        .header("authorization", "Bearer ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

// ------------------------------------------------- item 13: config error leaks

fn assert_clean(err: &ConfigError, file: &str, key: &str, secret: &str) {
    let text = err.to_string();
    assert!(text.contains(file), "names the file: {text}");
    assert_eq!(err.key, key, "names the key: {text}");
    assert!(!text.contains(secret), "echoes the secret: {text}");
}

#[test]
fn a_toml_syntax_error_names_the_key_not_the_line() {
    // The closing quote is missing: the toml crate's message quotes the line.
    let text = "[connections.openai]\napi_type = \"open_ai\"\napi_key = \"sk-live-SECRET-1234\n";
    let err = parse_text(text, Format::Toml, Path::new("bad.toml")).unwrap_err();
    assert_clean(
        &err,
        "bad.toml",
        "connections.openai.api_key",
        "SECRET-1234",
    );
    assert!(err.problem.contains("line 3"), "{err}");

    let text = "api_keys: [\"client-SECRET-77\"\nport: 1\n";
    let err = parse_text(text, Format::Yaml, Path::new("bad.yml")).unwrap_err();
    assert!(!err.to_string().contains("SECRET-77"), "{err}");
}

#[test]
fn serde_errors_do_not_quote_values() {
    let text = format!("{MOCK}[groups.team]\napi_keys = \"client-SECRET-42\"\n");
    let (_dir, result) = load_file("type.toml", &text);
    let err = result.unwrap_err();
    assert_clean(&err, "type.toml", "groups.team.api_keys", "SECRET-42");
    assert!(err.problem.contains("invalid type"), "{err}");

    // A key written where a group's table belongs.
    let text = format!("{MOCK}[groups]\nteam = \"client-SECRET-43\"\n");
    let (_dir, result) = load_file("table.toml", &text);
    assert_clean(
        &result.unwrap_err(),
        "table.toml",
        "groups.team",
        "SECRET-43",
    );

    // Values that are not secrets stay in the message: they help.
    let (_dir, result) = load_file("port.toml", &format!("port = \"eighty\"\n{MOCK}"));
    assert!(result.unwrap_err().problem.contains("eighty"));
}

#[tokio::test]
async fn an_api_base_with_a_password_is_not_echoed() {
    let config = config_from_toml(
        "[connections.x]\napi_type = \"open_ai\"\napi_base = \"htp://bob:hunter2-SECRET@example.com/v1\"\n[routing]\n\"*\" = \"x.*\"\n",
    );
    let err = lm_proxy::gateway::Gateway::build(
        config,
        &lm_proxy_client(),
        &lm_proxy::extensions::NativeResolver,
    )
    .err()
    .expect("refused");
    assert_clean(&err, "test.toml", "connections.x.api_base", "hunter2");
    assert!(err.problem.contains("example.com"), "{err}");
}

#[test]
fn the_binary_prints_config_errors_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "config.toml",
        "[connections.openai]\napi_type = \"open_ai\"\napi_key = \"sk-live-SECRET-9876\n",
    );
    let (code, _, stderr) = run_to_exit(dir.path(), &["--env", ""], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("config.toml"), "{stderr}");
    assert!(stderr.contains("connections.openai.api_key"), "{stderr}");
    assert!(!stderr.contains("SECRET-9876"), "{stderr}");
}

// ------------------------------------------ item 14c: api_key with a newline

#[tokio::test]
async fn a_provider_key_with_a_trailing_newline_is_trimmed_and_sent() {
    let upstream = MockUpstream::start().await;
    let gw = TestGateway::start(&format!(
        "[connections.openai]\napi_type = \"open_ai\"\napi_base = \"{}\"\napi_key = \" sk-test-key-14c\\n\"\n[routing]\n\"*\" = \"openai.*\"\n[groups.default]\napi_keys = [\"client-1\"]\n",
        upstream.base()
    ))
    .await;
    let (status, body) = gw.chat_json("client-1", user("gpt", "x")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let auth = upstream.last().headers.get("authorization").cloned();
    assert_eq!(
        auth.as_ref().and_then(|v| v.to_str().ok()),
        Some("Bearer sk-test-key-14c"),
        "before, the key with its newline made no valid header and was silently not sent"
    );
}

#[test]
fn a_provider_key_that_no_header_can_carry_is_a_startup_error() {
    for (value, what) in [("\"\\n\"", "blank"), ("\"sk-a\\u0001b\"", "control")] {
        let text = format!(
            "[connections.openai]\napi_type = \"open_ai\"\napi_key = {value}\n[routing]\n\"*\" = \"openai.*\"\n"
        );
        let (_dir, result) = load_file("key.toml", &text);
        let err = result.unwrap_err();
        assert_eq!(err.key, "connections.openai.api_key", "{err}");
        assert!(err.problem.contains(what), "{err}");
    }
}

#[test]
fn the_binary_warns_about_a_trimmed_key_without_printing_it() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "config.toml",
        "[connections.openai]\napi_type = \"open_ai\"\napi_base = \"http://127.0.0.1:9/v1\"\napi_key = \"env:LMP_SEC_NEWLINE_KEY\"\n[routing]\n\"*\" = \"openai.*\"\n",
    );
    let proc = Proc::start(
        dir.path(),
        &["--env", ""],
        &[("LMP_SEC_NEWLINE_KEY", "sk-newline-SECRET-55\n")],
    );
    let log = proc.log();
    assert!(
        log.contains("connections.openai.api_key") && log.contains("removed"),
        "{log}"
    );
    assert!(!log.contains("SECRET-55"), "{log}");
}

#[test]
fn a_rejected_reload_does_not_print_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "config.toml", MOCK);
    let proc = Proc::start(
        dir.path(),
        &["--config", path.to_str().unwrap(), "--env", ""],
        &[],
    );
    write(
        dir.path(),
        "config.toml",
        &format!("{MOCK}[groups.default]\napi_keys = \"client-SECRET-reload\"\n"),
    );
    proc.signal("-HUP");
    let log = proc.wait_for_log("config reload rejected");
    assert!(log.contains("groups.default.api_keys"), "{log}");
    assert!(!log.contains("SECRET-reload"), "{log}");
}
