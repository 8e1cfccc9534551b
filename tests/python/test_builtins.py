"""The reference's own names, imported in Python and used as values in a `Config`,
are the Rust built-ins: the config holds no Python object at all (so nothing on the
request path is Python), it behaves as the built-ins do, and the very same config
runs in the native binary, which has no Python."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import (
    UPSTREAM_CONTENT,
    UPSTREAM_KEY,
    GatewayProcess,
    MockUpstream,
    client_for,
    gateway_binary,
    import_lm_proxy,
)

import_lm_proxy()
from lm_proxy import Config, Group  # noqa: E402
from lm_proxy.api_key_check import AllowAll, check_api_key_in_config  # noqa: E402
from lm_proxy.handlers import HTTPHeadersForwarder, RateLimiter  # noqa: E402
from lm_proxy.loggers import BaseLogger, JsonLogWriter, LogEntryTransformer  # noqa: E402
from lm_proxy.strategies import Fallback  # noqa: E402

MESSAGES = [{"role": "user", "content": "Hello there"}]


def builtins_config(upstream: MockUpstream, log_file: Path, key_check: Any) -> Config:
    upstream_conn = {"api_type": "openai", "api_base": upstream.api_base, "api_key": UPSTREAM_KEY}
    return Config(
        host="127.0.0.1",
        port=0,
        encryption_key="builtins",
        connections={
            "broken": dict(upstream_conn),
            "upstream": dict(upstream_conn),
            "safe": Fallback(connections=["broken.fail-model", "upstream.good-model"]),
        },
        routing={"*": "safe.*"},
        groups={"default": Group(api_keys=["K1"])},
        api_key_check=key_check,
        before=[
            RateLimiter(max_requests=2, window_seconds=60),
            HTTPHeadersForwarder(white_list_headers=["X-Tenant"]),
        ],
        loggers=[
            BaseLogger(
                log_writer=JsonLogWriter(file_name=str(log_file)),
                entry_transformer=LogEntryTransformer(model="request.model", group="group"),
            )
        ],
    )


def exercise(url: str, api_key: str, upstream: MockUpstream) -> None:
    client = client_for(url, api_key)
    for _ in range(2):
        answer = client.chat.completions.create(
            model="m", messages=MESSAGES, extra_headers={"X-Tenant": "acme", "X-Other": "no"}
        )
        assert answer.choices[0].message.content == UPSTREAM_CONTENT
    # Fallback: the broken connection first, then the working one.
    assert [r.body["model"] for r in upstream.requests] == ["fail-model", "good-model"] * 2
    forwarded = upstream.requests[-1].headers
    assert forwarded["x-tenant"] == "acme" and "x-other" not in forwarded
    assert forwarded["authorization"] == f"Bearer {UPSTREAM_KEY}"
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert limited.value.body["code"] == "rate_limit_exceeded"
    assert int(limited.value.response.headers["retry-after"]) > 0


@pytest.mark.parametrize(
    "key_check",
    [AllowAll(group="default", capture_api_key=False), check_api_key_in_config],
    ids=["AllowAll", "check_api_key_in_config"],
)
def test_builtins_from_python_run_in_rust(
    serve_config: Any, upstream: MockUpstream, tmp_path: Path, key_check: Any
) -> None:
    log_file = tmp_path / "logs" / "requests.jsonl"
    config = builtins_config(upstream, log_file, key_check)
    _tree, objects = config._to_tree()
    assert objects == {}, "no Python object reaches the server"
    server = serve_config(config, debug=False)
    exercise(server.url, "K1", upstream)
    server.stop()
    entries = [json.loads(line) for line in log_file.read_text().splitlines()]
    # Every request is logged, the rate-limited one included.
    assert entries == [{"model": "m", "group": "default"}] * 3


def test_same_config_in_the_native_binary(upstream: MockUpstream, tmp_path: Path) -> None:
    log_file = tmp_path / "native.jsonl"
    tree, objects = builtins_config(upstream, log_file, AllowAll())._to_tree()
    assert objects == {}
    path = tmp_path / "from_python.json"
    path.write_text(json.dumps(tree))
    gateway = GatewayProcess(gateway_binary(), path)
    try:
        gateway.wait_ready()
        exercise(gateway.url, "any-key", upstream)
    finally:
        gateway.stop()
    assert gateway.process.returncode == 0
    assert len(log_file.read_text().splitlines()) == 3
