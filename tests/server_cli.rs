//! The server and the command line: the built binary's startup errors, flags, `.env`,
//! debug mode, request log lines, config formats; and in-process TLS and graceful
//! shutdown.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{run_to_exit, write, Proc};
use common::{sse_chunks, user, MockUpstream, TestGateway};
use serde_json::{json, Value};

const MOCK_CONFIG: &str = r#"
encryption_key = "test-encryption-key"
[connections.mock]
api_type = "mock"
[routing]
"*" = "mock.*"
[groups.default]
api_keys = ["client-key-abc"]
"#;

#[test]
fn config_mistakes_stop_startup_with_one_line_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &[&str])] = &[
        ("unknown.toml", "bogus_key = 1\n[connections.m]\napi_type = \"mock\"\n", &["unknown.toml", "bogus_key"]),
        ("type.toml", "port = \"eighty\"\n[connections.m]\napi_type = \"mock\"\n", &["type.toml", "port", "eighty"]),
        ("route.toml", "[connections.m]\napi_type = \"mock\"\n[routing]\n\"gpt*\" = \"nope.*\"\n", &["route.toml", "routing.\"gpt*\"", "unknown connection 'nope'", "m"]),
        ("glob.toml", "[connections.m]\napi_type = \"mock\"\n[routing]\n\"gpt[\" = \"m.*\"\n", &["glob.toml", "routing.\"gpt[\"", "invalid model pattern"]),
        ("envvar.toml", "[connections.o]\napi_type = \"open_ai\"\napi_key = \"env:LMP_SURELY_UNSET_VAR\"\n", &["envvar.toml", "connections.o.api_key", "LMP_SURELY_UNSET_VAR"]),
        ("apitype.toml", "[connections.m]\napi_type = \"telepathy\"\n", &["apitype.toml", "connections.m.api_type", "telepathy"]),
        ("conn_key.toml", "[connections.o]\napi_type = \"open_ai\"\nfrobnicate = true\n", &["conn_key.toml", "connections.o.frobnicate"]),
        ("python.toml", "api_key_check = \"my_validators.validate_api_key\"\n[connections.m]\napi_type = \"mock\"\n", &["python.toml", "api_key_check", "Python", "pip install lm-proxy-server"]),
        ("syntax.toml", "[connections.m\napi_type = \"mock\"\n", &["syntax.toml"]),
        ("config.ini", "", &["config.ini", ".ini"]),
        ("noconn.toml", "port = 1\n", &["noconn.toml", "connections"]),
    ];
    for (name, text, needles) in cases {
        let path = write(dir.path(), name, text);
        let (code, _, stderr) = run_to_exit(
            dir.path(),
            &["--config", path.to_str().unwrap(), "--env", ""],
            &[],
        );
        assert_eq!(code, 1, "{name}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{name}: exactly one line: {stderr}");
        for needle in *needles {
            assert!(
                lines[0].contains(needle),
                "{name}: {needle:?} missing in {:?}",
                lines[0]
            );
        }
    }
    let (code, _, stderr) = run_to_exit(dir.path(), &["--config", "missing.toml"], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("missing.toml"));
}

#[test]
fn version_help_and_bad_flags() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _) = run_to_exit(dir.path(), &["--version"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")));
    let (code, out, _) = run_to_exit(dir.path(), &["--help"], &[]);
    assert_eq!(code, 0);
    for flag in [
        "--config",
        "--env",
        "--debug",
        "--no-debug",
        "--host",
        "--port",
    ] {
        assert!(out.contains(flag), "{flag} in help");
    }
    let (code, _, _) = run_to_exit(dir.path(), &["--frobnicate"], &[]);
    assert_ne!(code, 0);
}

#[test]
fn toml_json_and_yaml_configs_serve_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let json_text = serde_json::to_string_pretty(&json!({
        "encryption_key": "k",
        "connections": {"mock": {"api_type": "mock"}},
        "routing": {"gpt*": "mock.*"},
        "groups": {"default": {"api_keys": ["client-key-abc"]}},
    }))
    .unwrap();
    let yaml_text = "encryption_key: k\nconnections:\n  mock:\n    api_type: mock\nrouting:\n  'gpt*': mock.*\ngroups:\n  default:\n    api_keys: [client-key-abc]\n";
    let toml_text = "encryption_key = \"k\"\n[connections.mock]\napi_type = \"mock\"\n[routing]\n\"gpt*\" = \"mock.*\"\n[groups.default]\napi_keys = [\"client-key-abc\"]\n";
    let mut answers = Vec::new();
    for (name, text) in [
        ("c.json", json_text.as_str()),
        ("c.yaml", yaml_text),
        ("c.yml", yaml_text),
        ("c.toml", toml_text),
    ] {
        write(dir.path(), name, text);
        let proc = Proc::start(dir.path(), &["--config", name, "--env", ""], &[]);
        let client = reqwest::blocking::Client::new();
        let body: Value = client
            .post(format!("{}/v1/chat/completions", proc.url))
            .bearer_auth("client-key-abc")
            .json(&user("gpt-4", "same answer"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        answers.push(body["choices"].clone());
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    assert_eq!(answers[0][0]["message"]["content"], "You said: same answer");
}

#[test]
fn dotenv_is_loaded_substituted_and_can_be_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let config = MOCK_CONFIG.replace("\"client-key-abc\"", "\"env:LMP_TEST_CLIENT_KEY\"");
    write(dir.path(), "config.toml", &config);
    write(dir.path(), ".env", "LMP_TEST_CLIENT_KEY=key-from-dotenv\n");
    write(
        dir.path(),
        "other.env",
        "LMP_TEST_CLIENT_KEY=key-from-other\n",
    );

    // Default: .env in the working directory, default config name config.toml.
    let proc = Proc::start(dir.path(), &[], &[]);
    let client = reqwest::blocking::Client::new();
    let status = |proc: &Proc, key: &str| {
        client
            .post(format!("{}/v1/chat/completions", proc.url))
            .bearer_auth(key)
            .json(&user("m", "x"))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(status(&proc, "key-from-dotenv"), 200);
    drop(proc);

    // --env-file alias picks another file, and .env values override the process env.
    let proc = Proc::start(
        dir.path(),
        &["--env-file", "other.env"],
        &[("LMP_TEST_CLIENT_KEY", "from-process")],
    );
    assert_eq!(status(&proc, "key-from-other"), 200);
    drop(proc);

    // --env "" disables loading: the variable is missing, which stops startup (it is a key).
    let (code, _, stderr) = run_to_exit(dir.path(), &["--env", ""], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("LMP_TEST_CLIENT_KEY"), "{stderr}");

    // An explicitly named .env file that does not exist is an error.
    let (code, _, stderr) = run_to_exit(dir.path(), &["--env", "nope.env"], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("nope.env"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn debug_mode_adds_error_details_and_logs_carry_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = MockUpstream::start().await;
    let config = format!(
        "encryption_key = \"k\"\n[connections.up]\napi_type = \"open_ai\"\napi_base = \"{}\"\napi_key = \"sk-provider-SECRET-777\"\n[routing]\n\"*\" = \"up.*\"\n[groups.default]\napi_keys = [\"client-SECRET-key-999\"]\n",
        upstream.base()
    );
    write(dir.path(), "config.toml", &config);
    let dir_path = dir.path().to_path_buf();
    let run = move |args: Vec<&'static str>, envs: Vec<(&'static str, &'static str)>| {
        let dir_path = dir_path.clone();
        std::thread::spawn(move || {
            let proc = Proc::start(&dir_path, &args, &envs);
            let client = reqwest::blocking::Client::new();
            let mut bodies = Vec::new();
            for model in ["status-500", "gpt-ok", "status-401"] {
                let response = client
                    .post(format!("{}/v1/chat/completions", proc.url))
                    .bearer_auth("client-SECRET-key-999")
                    .json(&user(model, "x"))
                    .send()
                    .unwrap();
                let headers = format!("{:?}", response.headers());
                bodies.push((
                    response.status().as_u16(),
                    headers,
                    response.text().unwrap(),
                ));
            }
            let log = proc.wait_for_log("status-401");
            (bodies, log)
        })
        .join()
        .unwrap()
    };

    let (plain, plain_log) = run(vec!["--env", ""], vec![]);
    assert_eq!(plain[0].0, 502);
    assert!(
        plain[0]
            .2
            .contains("\"Error processing upstream provider response\""),
        "{}",
        plain[0].2
    );
    assert_eq!(plain[1].0, 200);

    let (debug, debug_log) = run(vec!["--env", ""], vec![("LM_PROXY_DEBUG", "yes")]);
    assert_eq!(debug[0].0, 502);
    assert!(
        debug[0].2.contains("internal upstream detail"),
        "debug shows the upstream detail: {}",
        debug[0].2
    );
    assert!(debug_log.contains("DEBUG") || debug_log.contains("internal upstream detail"));

    // --no-debug overrides the environment.
    let (forced, _) = run(
        vec!["--env", "", "--no-debug"],
        vec![("LM_PROXY_DEBUG", "1")],
    );
    assert!(!forced[0].2.contains("internal upstream detail"));

    for (log, name) in [(&plain_log, "plain"), (&debug_log, "debug")] {
        assert!(
            log.contains("status=200") && log.contains("status=502"),
            "{name} log has request lines: {log}"
        );
        assert!(
            log.contains("connection=\"up\"") && log.contains("model=\"gpt-ok\""),
            "{name}: {log}"
        );
        assert!(log.contains("duration_ms="), "{name}: {log}");
        assert!(!log.contains("SECRET"), "{name} log leaks a secret: {log}");
    }
    for (status, headers, body) in plain.iter().chain(debug.iter()) {
        assert!(
            !body.contains("SECRET") && !headers.contains("SECRET"),
            "{status}: {headers} {body}"
        );
    }
    // One request line per request.
    assert_eq!(
        plain_log.matches("lm_proxy::request").count(),
        3,
        "{plain_log}"
    );
}

#[test]
fn sigterm_stops_the_binary_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "config.toml", MOCK_CONFIG);
    let mut proc = Proc::start(dir.path(), &["--env", ""], &[]);
    let pid = proc.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = proc.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(proc.wait_for_log("stopped").contains("stopped"));
}

/// Request lines are batched (src/logging/output.rs): none is lost or written twice
/// when the server stops, and each is a whole line.
#[test]
fn sigterm_writes_every_request_line_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "config.toml", MOCK_CONFIG);
    let mut proc = Proc::start(dir.path(), &["--env", ""], &[]);
    let client = reqwest::blocking::Client::new();
    const N: usize = 60;
    for i in 0..N {
        let mut body = user("gpt-4", &format!("request {i}"));
        if i % 3 == 0 {
            body["stream"] = json!(true);
        }
        let response = client
            .post(format!("{}/v1/chat/completions", proc.url))
            .bearer_auth(if i % 5 == 0 {
                "wrong-key"
            } else {
                "client-key-abc"
            })
            .json(&body)
            .send()
            .unwrap();
        let status = response.status().as_u16();
        let _ = response.text().unwrap();
        assert_eq!(status, if i % 5 == 0 { 401 } else { 200 }, "request {i}");
    }
    proc.signal("-TERM");
    assert!(proc.wait_exit(Duration::from_secs(15)).success());
    let log = proc.log_after_exit();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("lm_proxy::request"))
        .collect();
    assert_eq!(lines.len(), N, "one request line per request:\n{log}");
    for line in &lines {
        assert!(
            line.contains("chat completion") && line.contains(" error="),
            "a whole line: {line}"
        );
    }
    let refused = lines.iter().filter(|l| l.contains("status=401")).count();
    assert_eq!(refused, N / 5, "{log}");
    // Every request line is out before the server says it stopped.
    let stopped = log.find(" stopped").expect("stopped line");
    assert_eq!(log[..stopped].matches("lm_proxy::request").count(), N);
}

/// A request line reaches stderr on its own (the background flush), while the server
/// keeps running and logs nothing else.
#[test]
fn a_request_line_shows_up_while_the_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "config.toml", MOCK_CONFIG);
    let mut proc = Proc::start(dir.path(), &["--env", ""], &[]);
    let status = reqwest::blocking::Client::new()
        .post(format!("{}/v1/chat/completions", proc.url))
        .bearer_auth("client-key-abc")
        .json(&user("gpt-4", "x"))
        .send()
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !proc.log().contains("lm_proxy::request") {
        assert!(
            Instant::now() < deadline,
            "no request line within 5 s: {}",
            proc.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = proc.log();
    assert_eq!(log.matches("lm_proxy::request").count(), 1, "{log}");
    assert!(log.contains("status=200"), "{log}");
    assert!(proc.child.try_wait().unwrap().is_none(), "still serving");
}

#[tokio::test]
async fn graceful_shutdown_lets_open_streams_finish() {
    let upstream = MockUpstream::start().await;
    let config = format!(
        "[connections.up]\napi_type = \"open_ai\"\napi_base = \"{}\"\n[routing]\n\"*\" = \"up.*\"\n[groups.default]\napi_keys = [\"k\"]\n",
        upstream.base()
    );
    let gw = TestGateway::start(&config).await;
    let mut req = user("slow-stream", "x");
    req["stream"] = json!(true);
    let mut response = gw.chat("k", req).await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let first = response.chunk().await.unwrap().unwrap();
    gw.server.shutdown(Duration::from_secs(10));
    let mut text = String::from_utf8_lossy(&first).into_owned();
    while let Some(chunk) = response.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let (chunks, done) = sse_chunks(&text);
    assert!(done, "the open stream finished: {text}");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "part0 part1 part2 part3 part4 ");
    let url = gw.url("/health");
    gw.server.wait().await.unwrap();
    assert!(reqwest::get(url).await.is_err(), "no longer accepting");
}

/// One chat request on a new connection that accepts the test's self-signed certificate.
async fn chat_over_tls(url: &str, text: &str) -> Value {
    reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap()
        .post(url)
        .bearer_auth("client-key-abc")
        .json(&user("m", text))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn https_when_certificate_and_key_are_configured() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_path = write(dir.path(), "cert.pem", &cert.cert.pem());
    let key_path = write(dir.path(), "key.pem", &cert.signing_key.serialize_pem());
    let config = format!(
        "ssl_certfile = {:?}\nssl_keyfile = {:?}\n{MOCK_CONFIG}",
        cert_path.to_str().unwrap(),
        key_path.to_str().unwrap()
    );
    let gw = TestGateway::start(&config).await;
    assert!(gw.server.url().starts_with("https://"));
    let body = chat_over_tls(&gw.url("/v1/chat/completions"), "over tls").await;
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "You said: over tls"
    );
    // Plain HTTP to the TLS port fails.
    let plain = gw.server.url().replace("https://", "http://");
    let plain_ok = reqwest::get(format!("{plain}/health"))
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false);
    assert!(!plain_ok, "plain HTTP is not served on the TLS port");

    // The binary, on its serving threads (one TLS acceptor each).
    write(dir.path(), "tls.toml", &config);
    let proc = Proc::start(
        dir.path(),
        &["--config", "tls.toml", "--env", "", "--threads", "2"],
        &[],
    );
    assert!(proc.url.starts_with("https://"), "{}", proc.url);
    for i in 0..4 {
        // A new client each time: a new connection, on either thread.
        let url = format!("{}/v1/chat/completions", proc.url);
        let body = chat_over_tls(&url, &format!("tls {i}")).await;
        assert_eq!(
            body["choices"][0]["message"]["content"],
            format!("You said: tls {i}")
        );
    }
}

#[test]
fn a_broken_certificate_path_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "ssl_certfile = \"missing-cert.pem\"\nssl_keyfile = \"missing-key.pem\"\n{MOCK_CONFIG}"
    );
    write(dir.path(), "config.toml", &config);
    let (code, _, stderr) = run_to_exit(dir.path(), &["--env", "", "--port", "0"], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("ssl_certfile"), "{stderr}");
    let config = format!("ssl_certfile = \"only-cert.pem\"\n{MOCK_CONFIG}");
    write(dir.path(), "config.toml", &config);
    let (code, _, stderr) = run_to_exit(dir.path(), &["--env", ""], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("ssl_keyfile"), "{stderr}");
}

#[test]
fn the_default_encryption_key_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "config.toml",
        &MOCK_CONFIG.replace("encryption_key = \"test-encryption-key\"\n", ""),
    );
    let proc = Proc::start(dir.path(), &["--env", ""], &[]);
    assert!(
        proc.log().contains("encryption_key is the public default"),
        "{}",
        proc.log()
    );
    drop(proc);
    write(dir.path(), "config.toml", MOCK_CONFIG);
    let proc = Proc::start(dir.path(), &["--env", ""], &[]);
    assert!(
        !proc.log().contains("encryption_key is the public default"),
        "{}",
        proc.log()
    );
}

/// With `HTTP_PROXY` set, plain-`http` upstreams are reached through the proxy
/// (requests in absolute form); `NO_PROXY` exempts hosts.
#[tokio::test(flavor = "multi_thread")]
async fn http_upstreams_go_through_the_proxy_named_in_the_environment() {
    // The mock upstream plays the proxy: it answers the absolute-form request itself.
    let proxy = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "c.toml",
        "[connections.far]\napi_type = \"open_ai\"\napi_base = \"http://upstream.invalid/v1\"\n\
         [routing]\n\"*\" = \"far.*\"\n[groups.default]\napi_keys = [\"client-key-abc\"]\n",
    );
    let proxy_url = format!("http://{}", proxy.addr);
    let chat = |proc: &Proc| {
        let url = format!("{}/v1/chat/completions", proc.url);
        async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth("client-key-abc")
                .json(&user("gpt-x", "via proxy"))
                .send()
                .await
                .unwrap()
        }
    };

    let proc = Proc::start(
        dir.path(),
        &["--config", "c.toml", "--env", ""],
        &[("HTTP_PROXY", &proxy_url), ("NO_PROXY", "")],
    );
    let response = chat(&proc).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("gpt-x"),
        "{body}"
    );
    let seen = proxy.last();
    assert_eq!(seen.headers["host"], "upstream.invalid");
    drop(proc);

    // Exempted by NO_PROXY: a direct connection to a host that does not exist fails.
    let proc = Proc::start(
        dir.path(),
        &["--config", "c.toml", "--env", ""],
        &[("HTTP_PROXY", &proxy_url), ("NO_PROXY", "upstream.invalid")],
    );
    let before = proxy.requests().len();
    assert_eq!(chat(&proc).await.status(), 502);
    assert_eq!(proxy.requests().len(), before, "the proxy was not asked");
}

/// Serving threads: any count serves (each thread its own listener on the same
/// port), `--threads 0` serves on the shared runtime, and all stop cleanly.
#[test]
fn every_serving_thread_count_serves_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "config.toml", MOCK_CONFIG);
    for (threads, env) in [("0", None), ("1", None), ("3", None), ("", Some("2"))] {
        let mut args = vec!["--config", "config.toml", "--env", ""];
        if !threads.is_empty() {
            args.extend(["--threads", threads]);
        }
        let envs: Vec<(&str, &str)> = env.map(|n| ("LM_PROXY_THREADS", n)).into_iter().collect();
        let mut proc = Proc::start(dir.path(), &args, &envs);
        let expected = match env.unwrap_or(threads) {
            "0" => "shared runtime".to_owned(),
            "1" => "1 serving thread)".to_owned(),
            n => format!("{n} serving threads"),
        };
        let log = proc.wait_for_log(&expected);
        assert!(log.contains(&expected), "{expected}: {log}");
        // A new client (so a new connection) each time: they land on different threads.
        for i in 0..8 {
            let answer: Value = reqwest::blocking::Client::new()
                .post(format!("{}/v1/chat/completions", proc.url))
                .bearer_auth("client-key-abc")
                .json(&user("gpt-4", &format!("hello {i}")))
                .send()
                .unwrap()
                .json()
                .unwrap();
            assert_eq!(
                answer["choices"][0]["message"]["content"],
                format!("You said: hello {i}"),
                "threads={threads:?} env={env:?}"
            );
        }
        // What the threads counted, each in its own shards, adds up in one scrape.
        let metrics = reqwest::blocking::get(format!("{}/metrics", proc.url))
            .unwrap()
            .text()
            .unwrap();
        for (series, expected) in [
            ("lm_proxy_requests_total{", 8.0),
            ("lm_proxy_request_duration_seconds_count{", 8.0),
            ("lm_proxy_request_duration_seconds_bucket{le=\"+Inf\"", 8.0),
        ] {
            let total: f64 = metrics
                .lines()
                .filter(|line| line.starts_with(series))
                .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
                .sum();
            assert_eq!(total, expected, "{series} threads={threads:?}: {metrics}");
        }
        proc.signal("-TERM");
        assert!(proc.wait_exit(Duration::from_secs(15)).success());
        let log = proc.log_after_exit();
        assert_eq!(log.matches("lm_proxy::request").count(), 8, "{log}");
    }
    let (code, _, stderr) = run_to_exit(
        dir.path(),
        &["--config", "config.toml", "--threads", "many"],
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--threads"), "{stderr}");
}
