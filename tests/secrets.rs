//! Secrets never leak: recognisable provider and client keys are configured, every
//! error path is driven with debug mode off and on, and neither key may appear in
//! any response body, response header, stderr log line or JSON log entry (only the
//! key's `api_key_id` may).

mod common;

use std::time::Duration;

use common::process::{write, Proc};
use common::{user, MockUpstream};
use serde_json::json;

const PROVIDER_KEY: &str = "sk-PROVIDER-SECRET-7f3a9c21";
const CLIENT_KEY: &str = "client-SECRET-44d1e0b7";
const OTHER_CLIENT_KEY: &str = "client-SECRET-limited-9a8b";
const ENCRYPTION_KEY: &str = "ENCRYPTION-SECRET-5e6f";

#[tokio::test(flavor = "multi_thread")]
async fn no_error_path_leaks_a_secret() {
    let upstream = MockUpstream::start().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("requests.log");
    let config = format!(
        r#"
encryption_key = "{ENCRYPTION_KEY}"
[connections.up]
api_type = "open_ai"
api_base = "{base}"
api_key = "{PROVIDER_KEY}"
timeout = 1
[connections.up.http_headers]
X-Relay-Token = "{PROVIDER_KEY}-relay"
[connections.dead]
api_type = "open_ai"
api_base = "http://127.0.0.1:{dead_port}/v1"
api_key = "{PROVIDER_KEY}"
[connections.ant]
api_type = "anthropic"
api_base = "http://127.0.0.1:{dead_port}"
api_key = "{PROVIDER_KEY}"
[routing]
"dead-*" = "dead.*"
"ant-*" = "ant.*"
"echo-*" = "up.*"
"status-*" = "up.*"
"ok" = "up.*"
"not-json" = "up.*"
"slow" = "up.*"
"midstream-fail" = "up.*"
"stall-stream" = "up.*"
[groups.default]
api_keys = ["{CLIENT_KEY}"]
[groups.limited]
api_keys = ["{OTHER_CLIENT_KEY}"]
allowed_connections = "dead"
[[loggers]]
class = "lm_proxy.loggers.BaseLogger"
log_writer = {{ class = "lm_proxy.loggers.JsonLogWriter", file_name = {log:?} }}
"#,
        base = upstream.base(),
        log = log_path.to_str().unwrap()
    );
    write(dir.path(), "config.toml", &config);

    // (client key, model, stream)
    let cases: Vec<(&str, &str, bool)> = vec![
        (CLIENT_KEY, "ok", false),
        (CLIENT_KEY, "ok", true),
        ("wrong-key", "ok", false),
        (OTHER_CLIENT_KEY, "ok", false),
        (CLIENT_KEY, "nothing-routes-this", false),
        (CLIENT_KEY, "echo-auth-401", false),
        (CLIENT_KEY, "echo-auth-500", false),
        (CLIENT_KEY, "echo-auth-500", true),
        (CLIENT_KEY, "echo-auth-stream", true),
        (CLIENT_KEY, "status-400", false),
        (CLIENT_KEY, "status-429", false),
        (CLIENT_KEY, "not-json", false),
        (CLIENT_KEY, "slow", false),
        (CLIENT_KEY, "midstream-fail", true),
        (CLIENT_KEY, "stall-stream", true),
        (CLIENT_KEY, "dead-x", false),
        (CLIENT_KEY, "dead-x", true),
        (CLIENT_KEY, "ant-claude", false),
    ];

    for debug in ["0", "1"] {
        let dir_path = dir.path().to_path_buf();
        let cases = cases.clone();
        let (answers, log) = tokio::task::spawn_blocking(move || {
            let mut proc = Proc::start(&dir_path, &["--env", ""], &[("LM_PROXY_DEBUG", debug)]);
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap();
            let mut answers = Vec::new();
            for (key, model, stream) in &cases {
                let mut body = user(model, "x");
                if *stream {
                    body["stream"] = json!(true);
                }
                let response = client
                    .post(format!("{}/v1/chat/completions", proc.url))
                    .bearer_auth(key)
                    .json(&body)
                    .send()
                    .unwrap();
                let status = response.status().as_u16();
                let headers = format!("{:?}", response.headers());
                answers.push((
                    model.to_string(),
                    status,
                    headers,
                    response.text().unwrap_or_default(),
                ));
            }
            // A clean stop flushes the JSON log.
            proc.signal("-TERM");
            assert!(proc.wait_exit(Duration::from_secs(15)).success());
            (answers, proc.wait_for_log("stopped"))
        })
        .await
        .unwrap();

        let mut statuses = Vec::new();
        for (model, status, headers, body) in &answers {
            statuses.push(*status);
            for secret in [PROVIDER_KEY, CLIENT_KEY, OTHER_CLIENT_KEY, ENCRYPTION_KEY] {
                assert!(
                    !body.contains(secret),
                    "debug={debug} {model}: body leaks {secret}: {body}"
                );
                assert!(
                    !headers.contains(secret),
                    "debug={debug} {model}: headers leak {secret}"
                );
            }
            assert!(!body.contains("SECRET"), "debug={debug} {model}: {body}");
        }
        // The paths were really exercised: errors of every kind came back.
        for expected in [200, 403, 404, 401, 502, 400, 429, 504] {
            assert!(
                statuses.contains(&expected),
                "debug={debug}: no {expected} in {statuses:?}"
            );
        }
        assert!(
            !log.contains("SECRET"),
            "debug={debug}: stderr log leaks a secret:\n{log}"
        );
    }
    let entries = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(
        entries.lines().count(),
        cases.len() * 2,
        "one log entry per request"
    );
    assert!(!entries.contains("SECRET"), "JSON log leaks a secret");
    assert!(entries.contains(&lm_proxy::auth::api_key_id(ENCRYPTION_KEY, CLIENT_KEY)));
}
