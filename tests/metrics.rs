//! `GET /metrics`: counters move with requests, token counts come from usage (plain
//! and streamed), the open-streams gauge returns to 0 (also after a client walks
//! away), upstream errors are counted by kind, label values are capped, the token
//! protects the endpoint, and `enabled = false` removes it.

mod common;

use std::time::Duration;

use common::{user, MockUpstream, TestGateway};
use futures_util::StreamExt;
use serde_json::json;

fn config(upstream: &MockUpstream, extra: &str) -> String {
    format!(
        r#"
        {extra}
        [connections.up]
        api_type = "open_ai"
        api_base = "{base}"
        timeout = 0.5
        [connections.dead]
        api_type = "open_ai"
        api_base = "http://127.0.0.1:9/v1"
        [connections.demo]
        api_type = "mock"
        chunk_delay_ms = 100
        [routing]
        "dead*" = "dead.*"
        "demo*" = "demo.*"
        "*" = "up.*"
        [groups.default]
        api_keys = ["k1"]
        "#,
        base = upstream.base()
    )
}

async fn scrape(gw: &TestGateway) -> String {
    let response = gw.client.get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

/// The value of the first sample of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (label_part, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|(k, v)| label_part.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().unwrap())
    })
}

/// The sum of every sample of `name` whose labels include all of `labels`.
fn total(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix('{')?;
            let (label_part, value) = rest.split_once("} ")?;
            labels
                .iter()
                .all(|(k, v)| label_part.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.trim().parse::<f64>().unwrap())
        })
        .sum()
}

/// Scrape until `check` holds (streams report when the server drops them, which
/// may be a moment after the client has read the last byte).
async fn eventually(gw: &TestGateway, check: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let text = scrape(gw).await;
        if check(&text) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = scrape(gw).await;
    panic!("condition never held; last scrape:\n{text}");
}

#[tokio::test]
async fn counters_latencies_and_tokens_move_with_requests() {
    let upstream = MockUpstream::start().await;
    let gw = TestGateway::start(&config(&upstream, "")).await;

    let before = scrape(&gw).await;
    assert_eq!(sample(&before, "lm_proxy_open_streams", &[]), Some(0.0));
    assert_eq!(total(&before, "lm_proxy_requests_total", &[]), 0.0);

    for _ in 0..2 {
        let (status, _) = gw.chat_json("k1", user("gpt-x", "hi")).await;
        assert_eq!(status, 200);
    }
    let (status, _) = gw.chat_json("wrong-key", user("gpt-x", "hi")).await;
    assert_eq!(status, 401);

    let text = scrape(&gw).await;
    let ok = [
        ("status", "200"),
        ("connection", "up"),
        ("model", "gpt-x"),
        ("group", "default"),
        ("stream", "false"),
    ];
    assert_eq!(sample(&text, "lm_proxy_requests_total", &ok), Some(2.0));
    let denied = [("status", "401"), ("connection", "-"), ("group", "-")];
    assert_eq!(sample(&text, "lm_proxy_requests_total", &denied), Some(1.0));

    let timing = [("connection", "up"), ("stream", "false")];
    assert_eq!(
        sample(&text, "lm_proxy_request_duration_seconds_count", &timing),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "lm_proxy_upstream_duration_seconds_count", &timing),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "lm_proxy_overhead_seconds_count",
            &[("stream", "false")]
        ),
        Some(2.0)
    );
    // The rejected request has a duration but no upstream part.
    assert_eq!(
        sample(
            &text,
            "lm_proxy_request_duration_seconds_count",
            &[("connection", "-")]
        ),
        Some(1.0)
    );
    assert!(sample(
        &text,
        "lm_proxy_upstream_duration_seconds_count",
        &[("connection", "-")]
    )
    .is_none());

    // The mock upstream reports 5 prompt and 4 completion tokens per answer.
    let tokens = |kind| {
        sample(
            &text,
            "lm_proxy_tokens_total",
            &[("connection", "up"), ("model", "gpt-x"), ("type", kind)],
        )
    };
    assert_eq!(tokens("prompt"), Some(10.0));
    assert_eq!(tokens("completion"), Some(8.0));
}

#[tokio::test]
async fn streams_count_tokens_time_to_first_token_and_close_the_gauge() {
    let upstream = MockUpstream::start().await;
    let gw = TestGateway::start(&config(&upstream, "")).await;

    // A stream with usage (mock upstream: 5 prompt + 6 completion tokens).
    let mut body = user("gpt-s", "hi");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let text = gw.chat("k1", body).await.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));

    // A slow stream (five chunks 150 ms apart): open while it runs.
    let mut slow = user("slow-stream", "hi");
    slow["stream"] = json!(true);
    let response = gw.chat("k1", slow).await;
    let mut bytes = response.bytes_stream();
    let first = bytes.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    let during = scrape(&gw).await;
    assert_eq!(sample(&during, "lm_proxy_open_streams", &[]), Some(1.0));
    while let Some(chunk) = bytes.next().await {
        chunk.unwrap();
    }

    let text = eventually(&gw, |t| {
        sample(t, "lm_proxy_open_streams", &[]) == Some(0.0)
            && total(t, "lm_proxy_requests_total", &[("stream", "true")]) == 2.0
    })
    .await;
    let tokens = |kind| {
        sample(
            &text,
            "lm_proxy_tokens_total",
            &[("model", "gpt-s"), ("type", kind)],
        )
    };
    assert_eq!(tokens("prompt"), Some(5.0));
    assert_eq!(tokens("completion"), Some(6.0));
    assert_eq!(
        sample(
            &text,
            "lm_proxy_time_to_first_token_seconds_count",
            &[("connection", "up")]
        ),
        Some(2.0)
    );
    // The slow stream waited ~600 ms on its upstream; that is not proxy overhead.
    let upstream_sum = sample(
        &text,
        "lm_proxy_upstream_duration_seconds_sum",
        &[("connection", "up"), ("stream", "true")],
    )
    .unwrap();
    assert!(upstream_sum >= 0.5, "{upstream_sum}");
    let overhead_sum = sample(
        &text,
        "lm_proxy_overhead_seconds_sum",
        &[("stream", "true")],
    )
    .unwrap();
    // Were the upstream's wait counted as overhead, the overhead would exceed it.
    assert!(
        overhead_sum < upstream_sum,
        "{overhead_sum} >= {upstream_sum}"
    );
}

#[tokio::test]
async fn a_client_that_walks_away_closes_its_stream() {
    let upstream = MockUpstream::start().await;
    let gw = TestGateway::start(&config(&upstream, "")).await;
    // The built-in mock: one chunk per word, 100 ms apart.
    let mut body = user("demo", "one two three four five six seven eight");
    body["stream"] = json!(true);
    let response = gw.chat("k1", body).await;
    let mut bytes = response.bytes_stream();
    bytes.next().await.unwrap().unwrap();
    assert_eq!(
        sample(&scrape(&gw).await, "lm_proxy_open_streams", &[]),
        Some(1.0)
    );
    drop(bytes);
    let text = eventually(&gw, |t| {
        sample(t, "lm_proxy_open_streams", &[]) == Some(0.0)
    })
    .await;
    assert_eq!(
        sample(
            &text,
            "lm_proxy_requests_total",
            &[("connection", "demo"), ("stream", "true")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn upstream_errors_are_counted_by_kind() {
    let upstream = MockUpstream::start().await;
    let gw = TestGateway::start(&config(&upstream, "")).await;
    for (model, status) in [
        ("status-500", 502),
        ("status-400", 400),
        ("not-json", 502),
        ("slow", 504),
        ("dead-model", 502),
    ] {
        let (got, _) = gw.chat_json("k1", user(model, "hi")).await;
        assert_eq!(got, status, "{model}");
    }
    // Mid-stream: an error event after the first chunk.
    let mut body = user("error-event", "hi");
    body["stream"] = json!(true);
    gw.chat("k1", body).await.text().await.unwrap();

    let text = eventually(&gw, |t| {
        sample(t, "lm_proxy_open_streams", &[]) == Some(0.0)
    })
    .await;
    let errors = |connection, kind| {
        sample(
            &text,
            "lm_proxy_upstream_errors_total",
            &[("connection", connection), ("kind", kind)],
        )
    };
    // status-500, and the mid-stream error event (reported like a 502).
    assert_eq!(errors("up", "status_5xx"), Some(2.0), "{text}");
    assert_eq!(errors("up", "status_4xx"), Some(1.0));
    assert_eq!(errors("up", "invalid_response"), Some(1.0));
    assert_eq!(errors("up", "timeout"), Some(1.0));
    assert_eq!(errors("dead", "transport"), Some(1.0));
    assert_eq!(
        sample(
            &text,
            "lm_proxy_requests_total",
            &[("status", "504"), ("model", "slow")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn client_chosen_model_names_are_capped() {
    let upstream = MockUpstream::start().await;
    let gw = TestGateway::start(&config(&upstream, "")).await;
    let cap = lm_proxy::metrics::MAX_LABEL_VALUES;
    for i in 0..cap + 20 {
        let (status, _) = gw.chat_json("k1", user(&format!("m-{i}"), "hi")).await;
        assert_eq!(status, 200);
    }
    let text = scrape(&gw).await;
    let series = text
        .lines()
        .filter(|l| l.starts_with("lm_proxy_requests_total{"))
        .count();
    assert_eq!(series, cap + 1, "{text}");
    assert_eq!(
        sample(&text, "lm_proxy_requests_total", &[("model", "other")]),
        Some(20.0)
    );
}

#[tokio::test]
async fn each_server_counts_for_itself() {
    let upstream = MockUpstream::start().await;
    let a = TestGateway::start(&config(&upstream, "")).await;
    let b = TestGateway::start(&config(&upstream, "")).await;
    a.chat_json("k1", user("gpt-x", "hi")).await;
    assert_eq!(
        total(&scrape(&a).await, "lm_proxy_requests_total", &[]),
        1.0
    );
    assert_eq!(
        total(&scrape(&b).await, "lm_proxy_requests_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn the_token_protects_the_endpoint_and_the_path_is_configurable() {
    let upstream = MockUpstream::start().await;
    let extra = "[metrics]\ntoken = \"s3cret\"\npath = \"/internal/metrics\"";
    let gw = TestGateway::start(&config(&upstream, extra)).await;
    let url = gw.url("/internal/metrics");

    let response = gw.client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"]["message"].is_string());

    let response = gw
        .client
        .get(&url)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = gw
        .client
        .get(&url)
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("lm_proxy_open_streams"));

    // The default path is not served when another one is configured.
    let response = gw.client.get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn disabled_metrics_are_404() {
    let upstream = MockUpstream::start().await;
    let gw = TestGateway::start(&config(&upstream, "[metrics]\nenabled = false")).await;
    let response = gw.client.get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unknown_url");
    // Requests are served as before.
    let (status, _) = gw.chat_json("k1", user("gpt-x", "hi")).await;
    assert_eq!(status, 200);
}

#[test]
fn bad_metrics_settings_stop_startup() {
    for (extra, problem) in [
        ("[metrics]\npath = \"metrics\"", "must be a path"),
        ("[metrics]\npath = \"/v1/models\"", "already used"),
        ("[metrics]\npath = \"/health\"", "already used"),
        (
            "[metrics]\npath = \"/v1/models/metrics\"",
            "retrieved by id",
        ),
        ("[metrics]\nunknown = 1", "unknown field"),
    ] {
        let text =
            format!("{extra}\n[connections.m]\napi_type = \"mock\"\n[routing]\n\"*\" = \"m.*\"\n");
        let tree =
            lm_proxy::config::parse_text(&text, lm_proxy::config::Format::Toml, "t.toml".as_ref())
                .unwrap();
        let err = lm_proxy::Config::from_value(tree, "t.toml".as_ref()).unwrap_err();
        assert!(err.to_string().contains(problem), "{extra}: {err}");
    }
}
