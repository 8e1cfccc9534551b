//! Managed keys and the admin API (issue 17, points 6 and 7, and their part of 8):
//! the real binary, SQLite files in temporary folders and a PostgreSQL server the
//! test starts itself (initdb / pg_ctl, as tests/usage_ledger.rs does).
//!
//! - a key made through `POST /admin/keys` works on `/v1/chat/completions` (on the
//!   replica that made it and on another one sharing the database); the list shows
//!   no secret; neither log holds the key;
//! - a revoked key is refused at once by the replica that revoked it and within a
//!   few seconds by the other one (SQLite file shared; PostgreSQL);
//! - the admin API refuses a wrong or missing token and a client key (401), and
//!   does not exist without `[admin]` (404);
//! - a key's budget stops it with 429 `budget_exceeded` while its group's other
//!   keys go on, across a restart (SQLite) and shared by two replicas
//!   (PostgreSQL);
//! - a key check of your own replaces config and managed keys;
//! - `GET /admin/usage` sums match the requests sent;
//! - the command line creates, lists and revokes keys and prints usage, and fails
//!   clearly without `[database]` or with a database it cannot reach.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use common::postgres::Postgres;
use common::process::{run_to_exit, write, Proc};

const ADMIN_TOKEN: &str = "admin-token-7c1d9e";
const KEY: &str = "client-key-admin-1";
const OTHER_KEY: &str = "client-key-admin-2";

/// Chat answers with 1000 prompt and 200 completion tokens.
async fn upstream(uri: Uri, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = request["model"].as_str().unwrap_or("m").to_owned();
    match uri.path() {
        "/v1/chat/completions" => (
            [("content-type", "application/json")],
            json!({
                "id": "c1", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200},
            })
            .to_string(),
        )
            .into_response(),
        _ => axum::http::StatusCode::NOT_FOUND.into_response(),
    }
}

struct Rt {
    runtime: tokio::runtime::Runtime,
    upstream: String,
}

impl Rt {
    fn start() -> Rt {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let addr = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let app = axum::Router::new().fallback(axum::routing::post(upstream));
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            addr
        });
        Rt {
            runtime,
            upstream: format!("http://{addr}/v1"),
        }
    }
}

/// `admin`: whether `[admin]` is there (its token from the environment).
fn config(upstream: &str, database: &str, admin: bool) -> String {
    let admin = if admin {
        "[admin]\ntoken = \"env:LMP_TEST_ADMIN_TOKEN\"\n"
    } else {
        ""
    };
    format!(
        r#"
encryption_key = "admin-test-key"
[connections.up]
api_type = "open_ai"
api_base = "{upstream}"
api_key = "sk-upstream-secret"
[routing]
"*" = "up.*"
[groups.default]
api_keys = ["{KEY}", "{OTHER_KEY}"]
[groups.other]
api_keys = []
[pricing]
"priced-*" = {{ input = 2.0, output = 10.0 }}
{database}
{admin}
"#
    )
}

fn sqlite_section(file: &str) -> String {
    format!("[database]\nurl = \"sqlite://{file}\"\nflush_interval_seconds = 0.1\n")
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A chat request with `key`; (status, body).
fn chat(url: &str, key: &str, model: &str) -> (u16, Value) {
    let response = client()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

/// An admin call; (status, body text).
fn admin(
    method: reqwest::Method,
    url: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, String) {
    let mut request = client().request(method, format!("{url}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().unwrap();
    (response.status().as_u16(), response.text().unwrap())
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Poll `check` every 50 ms until it holds, for at most `limit`.
fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if check() {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start(dir: &Path) -> Proc {
    Proc::start(
        dir,
        &["--env", "", "--threads", "1"],
        &[("LMP_TEST_ADMIN_TOKEN", ADMIN_TOKEN)],
    )
}

fn create_key(url: &str, body: Value) -> (String, String) {
    let (status, text) = admin(
        reqwest::Method::POST,
        url,
        "/admin/keys",
        Some(ADMIN_TOKEN),
        Some(body),
    );
    assert_eq!(status, 201, "{text}");
    let created = json_of(&text);
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sk-lmp-"), "{created}");
    (created["id"].as_str().unwrap().to_owned(), key)
}

/// Two replicas on one database: make, use, list, report, revoke.
fn lifecycle(database: &str, dir_a: &Path, dir_b: &Path) {
    let a = start(dir_a);
    let b = start(dir_b);

    // The admin API: a wrong, missing or client token is refused in OpenAI's envelope.
    for token in [Some("wrong-token"), None, Some(KEY)] {
        for (method, path) in [
            (reqwest::Method::GET, "/admin/keys"),
            (reqwest::Method::POST, "/admin/keys"),
            (reqwest::Method::GET, "/admin/usage"),
            (reqwest::Method::DELETE, "/admin/keys/key_0000000000000000"),
        ] {
            let body =
                (method == reqwest::Method::POST).then(|| json!({"group": "default", "name": "x"}));
            let (status, text) = admin(method.clone(), &a.url, path, token, body);
            assert_eq!(status, 401, "{method} {path} with {token:?}: {text}");
            let error = &json_of(&text)["error"];
            assert_eq!(error["code"], "invalid_api_key", "{text}");
            assert_eq!(error["type"], "invalid_request_error", "{text}");
        }
    }
    // Nothing was made by the refused POSTs.
    let (_, text) = admin(
        reqwest::Method::GET,
        &a.url,
        "/admin/keys",
        Some(ADMIN_TOKEN),
        None,
    );
    assert_eq!(json_of(&text)["data"], json!([]), "{text}");

    // Mistakes are 400s naming the problem.
    for (body, needle) in [
        (
            json!({"group": "nope", "name": "x"}),
            "unknown group 'nope'",
        ),
        (json!({"group": "default", "name": ""}), "`name`"),
        (
            json!({"group": "default", "name": "x", "budget": {"usd": 1, "tokens": 2}}),
            "`budget`",
        ),
        (
            json!({"group": "default", "name": "x", "expires_at": "2001-01-01"}),
            "in the past",
        ),
        (json!({"group": "default"}), "name"),
    ] {
        let (status, text) = admin(
            reqwest::Method::POST,
            &a.url,
            "/admin/keys",
            Some(ADMIN_TOKEN),
            Some(body.clone()),
        );
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(needle), "{body}: {text}");
    }

    let (id, key) = create_key(
        &a.url,
        json!({"group": "default", "name": "ci-bot", "expires_at": "30d", "metadata": {"team": "search"}}),
    );
    // Made on A, used on A and (a lookup on a miss) on B at once.
    assert_eq!(chat(&a.url, &key, "priced-a").0, 200);
    assert_eq!(chat(&b.url, &key, "priced-b").0, 200);
    assert_eq!(chat(&a.url, KEY, "priced-config").0, 200);
    // A key with the managed prefix that was never made.
    let (status, body) = chat(&a.url, "sk-lmp-0000", "priced-a");
    assert_eq!(status, 401, "{body}");

    // The list: no secret, the spend to date once the rows are written.
    let listed = || {
        let (status, text) = admin(
            reqwest::Method::GET,
            &a.url,
            "/admin/keys",
            Some(ADMIN_TOKEN),
            None,
        );
        assert_eq!(status, 200, "{text}");
        assert!(!text.contains(&key), "{text}");
        assert!(!text.contains("sk-lmp-"), "{text}");
        json_of(&text)["data"][0].clone()
    };
    within(Duration::from_secs(10), "spend in the list", || {
        listed()["spend"]["requests"] == 2
    });
    let entry = listed();
    assert_eq!(entry["id"], id.as_str());
    assert_eq!(entry["name"], "ci-bot");
    assert_eq!(entry["group"], "default");
    assert_eq!(entry["status"], "active");
    assert_eq!(entry["metadata"]["team"], "search");
    assert_eq!(entry["spend"]["tokens"], 2400);
    let cost = entry["spend"]["cost_usd"].as_f64().unwrap();
    assert!(
        (cost - 2.0 * (2000.0 + 2000.0) / 1e6).abs() < 1e-9,
        "{entry}"
    );
    assert!(
        entry["expires_at"].as_str().unwrap().ends_with('Z'),
        "{entry}"
    );
    assert!(entry.get("key").is_none(), "{entry}");

    // Usage: the sums of the requests sent, however grouped.
    let usage = |query: &str| {
        let (status, text) = admin(
            reqwest::Method::GET,
            &b.url,
            &format!("/admin/usage?{query}"),
            Some(ADMIN_TOKEN),
            None,
        );
        assert_eq!(status, 200, "{query}: {text}");
        json_of(&text)
    };
    // Four rows: three answered, and the unknown key's 401.
    within(Duration::from_secs(10), "four ledger rows", || {
        usage("group_by=group")["total"]["requests"] == 4
    });
    let find = |report: &Value, field: &str, value: &str| {
        report["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l[field] == value)
            .unwrap_or_else(|| panic!("no {field} {value}: {report}"))
            .clone()
    };
    let by_key = usage("group_by=key&since=2020-01-01");
    let line = find(&by_key, "key", &id);
    assert_eq!(line["requests"], 2, "{by_key}");
    assert_eq!(line["prompt_tokens"], 2000, "{by_key}");
    assert_eq!(line["completion_tokens"], 400, "{by_key}");
    assert_eq!(line["total_tokens"], 2400, "{by_key}");
    assert_eq!(line["key_name"], "ci-bot", "{by_key}");
    let total = &by_key["total"];
    assert_eq!(total["requests"], 4, "{by_key}");
    assert_eq!(total["errors"], 1, "{by_key}");
    assert_eq!(total["prompt_tokens"], 3000, "{by_key}");
    assert!((total["cost_usd"].as_f64().unwrap() - 3.0 * 4000.0 / 1e6).abs() < 1e-9);
    let by_group = usage("group_by=group");
    assert_eq!(find(&by_group, "group", "default")["requests"], 3);
    // The refused request has no group.
    assert_eq!(find(&by_group, "group", "")["errors"], 1, "{by_group}");
    let by_model = usage("group_by=model");
    for model in ["priced-a", "priced-b", "priced-config"] {
        assert_eq!(find(&by_model, "model", model)["requests"], 1, "{by_model}");
    }
    // The key is checked before the body is read: the 401 has no model.
    assert_eq!(find(&by_model, "model", "")["errors"], 1, "{by_model}");
    let by_connection = usage("group_by=connection");
    assert_eq!(find(&by_connection, "connection", "up")["requests"], 3);
    let by_day = usage("group_by=day");
    let today = &humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()[..10];
    assert_eq!(by_day["data"][0]["day"], today, "{by_day}");
    assert_eq!(by_day["data"][0]["requests"], 4, "{by_day}");
    // A window that holds nothing, and a bad query.
    assert_eq!(
        usage("since=2001-01-01&until=2001-01-02")["total"]["requests"],
        0
    );
    let (status, text) = admin(
        reqwest::Method::GET,
        &a.url,
        "/admin/usage?group_by=user",
        Some(ADMIN_TOKEN),
        None,
    );
    assert_eq!(status, 400, "{text}");

    // Revoke on A: refused by A at once, by B within a few seconds.
    let (status, text) = admin(
        reqwest::Method::DELETE,
        &a.url,
        &format!("/admin/keys/{id}"),
        Some(ADMIN_TOKEN),
        None,
    );
    assert_eq!(status, 200, "{text}");
    assert_eq!(json_of(&text)["status"], "revoked", "{text}");
    assert!(!text.contains("sk-lmp-"), "{text}");
    assert_eq!(chat(&a.url, &key, "priced-a").0, 401);
    let took = within(Duration::from_secs(6), "B refuses the revoked key", || {
        chat(&b.url, &key, "priced-b").0 == 401
    });
    eprintln!("{database}: the other replica refused the revoked key after {took:?}");
    assert_eq!(chat(&b.url, KEY, "priced-config").0, 200);
    let (status, text) = admin(
        reqwest::Method::DELETE,
        &a.url,
        "/admin/keys/key_ffffffffffffffff",
        Some(ADMIN_TOKEN),
        None,
    );
    assert_eq!(status, 404, "{text}");
    assert_eq!(json_of(&text)["error"]["code"], "key_not_found");
    assert_eq!(listed()["status"], "revoked");

    // Neither replica wrote the key or the admin token anywhere; the calls are logged.
    for proc in [&a, &b] {
        let log = proc.log();
        assert!(!log.contains(&key), "{log}");
        assert!(!log.contains(ADMIN_TOKEN), "{log}");
    }
    let log = a.log();
    assert!(log.contains(&format!("created managed key {id}")), "{log}");
    assert!(log.contains(&format!("revoked managed key {id}")), "{log}");
}

#[test]
fn sqlite_keys_made_used_listed_reported_and_revoked_across_two_replicas() {
    let rt = Rt::start();
    let shared = tempfile::tempdir().unwrap();
    let file = shared.path().join("ledger.db").display().to_string();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for dir in [&dir_a, &dir_b] {
        write(
            dir.path(),
            "config.toml",
            &config(&rt.upstream, &sqlite_section(&file), true),
        );
    }
    lifecycle("sqlite", dir_a.path(), dir_b.path());
    drop(rt.runtime);
}

#[test]
fn a_keys_budget_stops_it_with_429_while_its_group_goes_on() {
    let rt = Rt::start();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "config.toml",
        &config(&rt.upstream, &sqlite_section("ledger.db"), true),
    );
    let gw = start(dir.path());
    // 1200 tokens a request: the first two are admitted, the third finds 2400 spent.
    let (id, key) = create_key(
        &gw.url,
        json!({"group": "default", "name": "capped", "budget": {"tokens": 2000, "period": "day"}}),
    );
    assert_eq!(chat(&gw.url, &key, "priced-1").0, 200);
    assert_eq!(chat(&gw.url, &key, "priced-2").0, 200);
    let (status, body) = chat(&gw.url, &key, "priced-3");
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
    assert_eq!(body["error"]["type"], "insufficient_quota", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("key '{id}'")), "{message}");
    assert!(
        message.contains("2400 tokens of 2000 tokens used today"),
        "{message}"
    );
    assert!(message.contains("resets at"), "{message}");
    // The group has no budget: its other keys go on.
    assert_eq!(chat(&gw.url, KEY, "priced-4").0, 200);
    // The list shows the budget and what was spent.
    within(Duration::from_secs(10), "spend in the list", || {
        let (_, text) = admin(
            reqwest::Method::GET,
            &gw.url,
            "/admin/keys",
            Some(ADMIN_TOKEN),
            None,
        );
        let entry = json_of(&text)["data"][0].clone();
        assert_eq!(entry["budget"], json!({"tokens": 2000, "period": "day"}));
        entry["spend"]["requests"] == 3 && entry["spend"]["tokens"] == 2400
    });

    // Restarted, the key's spend today comes back from the ledger: still refused.
    drop(gw);
    let gw = start(dir.path());
    within(Duration::from_secs(10), "refused after a restart", || {
        chat(&gw.url, &key, "priced-5").0 == 429
    });
    drop(rt.runtime);
}

#[test]
fn without_admin_the_endpoints_do_not_exist_and_admin_needs_a_database() {
    let rt = Rt::start();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "config.toml",
        &config(&rt.upstream, &sqlite_section("ledger.db"), false),
    );
    let gw = start(dir.path());
    for (method, path) in [
        (reqwest::Method::GET, "/admin/keys"),
        (reqwest::Method::POST, "/admin/keys"),
        (reqwest::Method::DELETE, "/admin/keys/key_0000000000000000"),
        (reqwest::Method::GET, "/admin/usage"),
    ] {
        let (status, text) = admin(method.clone(), &gw.url, path, Some(ADMIN_TOKEN), None);
        assert_eq!(status, 404, "{method} {path}: {text}");
        assert_eq!(json_of(&text)["error"]["code"], "unknown_url", "{text}");
    }
    drop(gw);

    // [admin] without [database]: a startup error naming the key.
    write(dir.path(), "config.toml", &config(&rt.upstream, "", true));
    let (code, _, err) = run_to_exit(
        dir.path(),
        &["--env", ""],
        &[("LMP_TEST_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("admin") && err.contains("[database]"), "{err}");
    // A token that is also a client key.
    write(
        dir.path(),
        "config.toml",
        &config(&rt.upstream, &sqlite_section("ledger.db"), true),
    );
    let (code, _, err) = run_to_exit(dir.path(), &["--env", ""], &[("LMP_TEST_ADMIN_TOKEN", KEY)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("admin.token"), "{err}");
    assert!(!err.contains(KEY), "{err}");
    drop(rt.runtime);
}

/// The command line, run to exit in `dir`.
fn cli(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--env", ""];
    all.extend_from_slice(args);
    run_to_exit(dir, &all, &[("LMP_TEST_ADMIN_TOKEN", ADMIN_TOKEN)])
}

#[test]
fn the_command_line_creates_lists_revokes_and_reports_usage() {
    let rt = Rt::start();
    let dir = tempfile::tempdir().unwrap();
    // No [admin]: keys made on the command line work all the same.
    write(
        dir.path(),
        "config.toml",
        &config(&rt.upstream, &sqlite_section("ledger.db"), false),
    );
    let (code, out, err) = cli(
        dir.path(),
        &[
            "keys",
            "create",
            "--group",
            "default",
            "--name",
            "cli key",
            "--budget-usd",
            "5",
            "--period",
            "month",
            "--expires",
            "2099-01-01",
            "--metadata",
            r#"{"team":"ops"}"#,
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("key: "))
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    assert!(key.starts_with("sk-lmp-"), "{out}");
    let id = out
        .split_whitespace()
        .find(|w| w.starts_with("key_"))
        .unwrap()
        .to_owned();
    assert!(out.contains("$5/month"), "{out}");
    assert!(out.contains("2099-01-01T00:00:00Z"), "{out}");
    assert!(!err.contains(&key), "{err}");

    let gw = start(dir.path());
    assert_eq!(chat(&gw.url, &key, "priced-cli").0, 200);
    assert_eq!(chat(&gw.url, KEY, "priced-cli").0, 200);

    // The list: aligned columns, the key's id, name and spend, no secret.
    let (code, out, err) = within_cli(dir.path(), &["keys", "list"], |out| {
        out.lines().any(|l| l.starts_with(&id) && l.contains(" 1 "))
    });
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(&key) && !out.contains("sk-lmp-"), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID "), "{out}");
    let column = |line: &str, name: &str| line.find(name);
    assert_eq!(
        column(lines[0], "NAME"),
        column(lines[1], "cli key"),
        "{out}"
    );
    assert!(
        lines[1].contains("active") && lines[1].contains("1200"),
        "{out}"
    );

    // Usage by key and by group, from a date.
    let (code, out, err) = within_cli(
        dir.path(),
        &["usage", "--since", "2020-01-01", "--by", "key"],
        // Both requests' rows (they may be written in two batches).
        |out| {
            out.contains(&id)
                && out
                    .lines()
                    .any(|l| l.starts_with("TOTAL") && l.split_whitespace().nth(1) == Some("2"))
        },
    );
    assert_eq!(code, 0, "{err}");
    let line = out.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(line.contains("cli key"), "{out}");
    let fields: Vec<&str> = line.split_whitespace().collect();
    // id, "cli", "key", requests, errors, prompt, completion, cached, cost
    assert_eq!(&fields[3..7], ["1", "0", "1000", "200"], "{out}");
    let total = out.lines().find(|l| l.starts_with("TOTAL")).unwrap();
    assert_eq!(total.split_whitespace().nth(1), Some("2"), "{out}");
    let (code, out, _) = cli(dir.path(), &["usage", "--by", "group"]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("default") && l.contains(" 2 ")),
        "{out}"
    );
    let (code, _, err) = cli(dir.path(), &["usage", "--since", "last week"]);
    assert_eq!(code, 1);
    assert!(err.contains("--since"), "{err}");

    // Revoked on the command line: the running gateway refuses it within seconds.
    let (code, out, err) = cli(dir.path(), &["keys", "revoke", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("revoked {id}")), "{out}");
    within(
        Duration::from_secs(6),
        "the gateway refuses the revoked key",
        || chat(&gw.url, &key, "priced-cli").0 == 401,
    );
    let (code, out, _) = cli(dir.path(), &["keys", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("revoked"), "{out}");
    let (code, _, err) = cli(dir.path(), &["keys", "revoke", "key_ffffffffffffffff"]);
    assert_eq!(code, 1);
    assert!(err.contains("no managed key"), "{err}");
    let (code, _, err) = cli(
        dir.path(),
        &["keys", "create", "--group", "nope", "--name", "x"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("unknown group 'nope'"), "{err}");
    assert!(!gw.log().contains(&key));
    drop(gw);

    // No [database]; a database that cannot be reached: one clear line, status 1.
    write(dir.path(), "config.toml", &config(&rt.upstream, "", false));
    let (code, _, err) = cli(dir.path(), &["keys", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("no [database] section"), "{err}");
    write(
        dir.path(),
        "config.toml",
        &config(
            &rt.upstream,
            "[database]\nurl = \"postgres://lm:secret-pw@127.0.0.1:1/lm\"\ntimeout_seconds = 2\n",
            false,
        ),
    );
    let started = Instant::now();
    let (code, _, err) = cli(dir.path(), &["usage"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot be used"), "{err}");
    assert!(!err.contains("secret-pw"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
    drop(rt.runtime);
}

/// Run a command until its output satisfies `ready` (the ledger writes its rows
/// within its flush interval), for at most 10 s.
fn within_cli(dir: &Path, args: &[&str], ready: impl Fn(&str) -> bool) -> (i32, String, String) {
    let started = Instant::now();
    loop {
        let (code, out, err) = cli(dir, args);
        if code == 0 && ready(&out) {
            return (code, out, err);
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{args:?}: {code}\n{out}\n{err}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn postgres_keys_made_used_listed_reported_and_revoked_across_two_replicas() {
    let rt = Rt::start();
    let pg = Postgres::start();
    let section = format!(
        "[database]\nurl = \"{}\"\nflush_interval_seconds = 0.1\n",
        pg.url()
    );
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for dir in [&dir_a, &dir_b] {
        write(
            dir.path(),
            "config.toml",
            &config(&rt.upstream, &section, true),
        );
    }
    lifecycle("postgres", dir_a.path(), dir_b.path());
    drop(rt.runtime);
}

#[test]
fn postgres_two_replicas_share_a_keys_budget() {
    let rt = Rt::start();
    let pg = Postgres::start();
    let section = format!(
        "[database]\nurl = \"{}\"\nflush_interval_seconds = 0.05\ntimeout_seconds = 2\n",
        pg.url()
    );
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for dir in [&dir_a, &dir_b] {
        write(
            dir.path(),
            "config.toml",
            &config(&rt.upstream, &section, true),
        );
    }
    // Debug lines say when a replica's view of the shared figures changes.
    let envs = [
        ("LMP_TEST_ADMIN_TOKEN", ADMIN_TOKEN),
        ("RUST_LOG", "lm_proxy=debug"),
    ];
    let a = Proc::start(dir_a.path(), &["--env", ""], &envs);
    let b = Proc::start(dir_b.path(), &["--env", ""], &envs);
    a.wait_for_log("usage ledger: postgres database ready");
    b.wait_for_log("usage ledger: postgres database ready");
    let (id, key) = create_key(
        &a.url,
        json!({"group": "default", "name": "shared", "budget": {"tokens": 3000, "period": "day"}}),
    );
    // A spends 2400 of the key's 3000 tokens.
    assert_eq!(chat(&a.url, &key, "priced-1").0, 200);
    assert_eq!(chat(&a.url, &key, "priced-2").0, 200);
    // B sees them once A has written them and B has read the shared figures.
    b.wait_for_log(&format!("key:{id} Day usd=0.008000 tokens=2400"));
    assert_eq!(chat(&b.url, &key, "priced-3").0, 200);
    // 3600: B refuses at once; A once B's request has reached the figures.
    let (status, body) = chat(&b.url, &key, "priced-4");
    assert_eq!(status, 429, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("key '{id}'")), "{message}");
    assert!(
        message.contains("3600 tokens of 3000 tokens used today"),
        "{message}"
    );
    a.wait_for_log(&format!("key:{id} Day usd=0.012000 tokens=3600"));
    let (status, body) = chat(&a.url, &key, "priced-5");
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "budget_exceeded");
    // The group has no budget: its config keys go on, on both.
    assert_eq!(chat(&a.url, KEY, "priced-6").0, 200);
    assert_eq!(chat(&b.url, KEY, "priced-7").0, 200);
    for proc in [&a, &b] {
        assert!(!proc.log().contains(&key));
    }
    drop(rt.runtime);
}

#[test]
fn a_key_check_of_your_own_replaces_config_and_managed_keys() {
    let rt = Rt::start();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "config.toml",
        &config(&rt.upstream, &sqlite_section("ledger.db"), true),
    );
    let (code, out, err) = cli(
        dir.path(),
        &["keys", "create", "--group", "default", "--name", "k"],
    );
    assert_eq!(code, 0, "{err}");
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("key: "))
        .unwrap()
        .to_owned();
    // A service that accepts no key (the mock answers GET with 405).
    let own_check = format!(
        "[api_key_check]\nclass = \"lm_proxy.api_key_check.CheckAPIKeyWithRequest\"\n\
         url = \"{}/check/{{api_key}}\"\n",
        rt.upstream
    );
    write(
        dir.path(),
        "config.toml",
        &(config(&rt.upstream, &sqlite_section("ledger.db"), true) + &own_check),
    );
    let gw = start(dir.path());
    assert_eq!(chat(&gw.url, &key, "priced-1").0, 401);
    assert_eq!(chat(&gw.url, KEY, "priced-1").0, 401);
    // The admin API is still there: it has its own token.
    let (status, text) = admin(
        reqwest::Method::GET,
        &gw.url,
        "/admin/keys",
        Some(ADMIN_TOKEN),
        None,
    );
    assert_eq!(status, 200, "{text}");
    drop(rt.runtime);
}
