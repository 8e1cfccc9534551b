"""The package as a library: `bootstrap()` and `env`, awaiting connections from
Python, the reference's load-balancer and fallback examples (against the mock
upstream), and `lm_proxy.Server`."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import (
    CLIENT_KEY,
    UPSTREAM_CONTENT,
    UPSTREAM_KEY,
    UPSTREAM_TOOL_ARGUMENTS,
    MockUpstream,
    client_for,
    import_lm_proxy,
)

lm_proxy = import_lm_proxy()
from lm_proxy import Config, ConfigError, Group, OpenAIHTTPException, Server  # noqa: E402
from lm_proxy.api_key_check import AllowAll  # noqa: E402
from lm_proxy.base_types import LLMResponse, RequestContext  # noqa: E402
from lm_proxy.bootstrap import bootstrap, env  # noqa: E402
from lm_proxy.strategies import Fallback  # noqa: E402

MESSAGES = [{"role": "user", "content": "Hello there"}]


def upstream_connection(upstream: MockUpstream, **extra: Any) -> dict[str, Any]:
    return {"api_type": "openai", "api_base": upstream.api_base, "api_key": UPSTREAM_KEY, **extra}


def test_bootstrap_and_awaiting_connections(upstream: MockUpstream, tmp_path: Path) -> None:
    config = Config(
        connections={
            "up": upstream_connection(upstream, model="default-model"),
            "mock": {"api_type": "mock"},
        },
        routing={"*": "mock.*"},
        components={"settings": {"class": "collections.OrderedDict", "answer": 42}},
    )
    new_env = bootstrap(config, env_file=None)
    assert env.config is config and new_env.config is config
    assert list(env.connections) == ["up", "mock"]
    assert env.components["settings"]["answer"] == 42

    async def use() -> tuple[Any, ...]:
        whole = await env.connections["up"](MESSAGES, temperature=0.1)
        pieces: list[str] = []

        async def callback(piece: str) -> None:
            pieces.append(piece)

        streamed = await env.connections["mock"](MESSAGES, model="echo", callback=callback)
        tool_stream = await env.connections["up"](MESSAGES, stream=True)
        return whole, pieces, streamed, tool_stream

    whole, pieces, streamed, tool_stream = asyncio.run(use())
    assert isinstance(whole, LLMResponse) and whole == UPSTREAM_CONTENT
    assert whole.completion["usage"]["total_tokens"] == 8
    received = upstream.requests
    assert received[0].body["model"] == "default-model"
    assert received[0].body["temperature"] == 0.1
    assert "".join(pieces) == streamed == "You said: Hello there"
    assert len(pieces) == 4, "one piece per streamed chunk"
    assert tool_stream == ""  # the upstream streams a tool call, no text
    assert tool_stream.choices[0].finish_reason == "tool_calls"
    assert tool_stream.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert received[1].body["stream"] is True

    async def failing() -> None:
        await env.connections["up"](MESSAGES, model="fail-now")

    with pytest.raises(OpenAIHTTPException) as failed:
        asyncio.run(failing())
    assert failed.value.status_code == 502


LOAD_BALANCER = '''
"""The reference's examples/load_balancer_config.py, pointed at a mock upstream."""
import logging
import os
import random

from lm_proxy.config import Config, Group
from lm_proxy.bootstrap import env

random.seed(1234)  # the test wants both servers picked, always


async def load_balancer(*args, **kwargs):
    connection_name = random.choice(
        [i for i in env.config.connections.keys() if i != "load_balancer"]
    )
    logging.info(f"Load balancer selected connection: {connection_name}")
    kwargs.pop("model", None)  # remove model to avoid confusion
    return await env.connections[connection_name](*args, **kwargs)


config = Config(
    host="127.0.0.1",
    port=0,
    connections=dict(
        load_balancer=load_balancer,
        server1={
            "api_type": "openai",
            "api_base": os.environ["MOCK_API_BASE"],
            "api_key": os.getenv("OPENAI_API_KEY", "sk-1"),
            "model": "gpt-5-mini",
        },
        server2={
            "api_type": "openai",
            "api_base": os.environ["MOCK_API_BASE"],
            "api_key": os.getenv("OTHER_API_KEY", "sk-2"),
            "model": "claude-sonnet-4-6",
        },
    ),
    routing={"*": "load_balancer.*"},
    groups=dict(default=Group(connections="load_balancer", api_keys=["KEY1"])),
)
'''


def test_reference_load_balancer_example(
    tmp_path: Path, upstream: MockUpstream, serve_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOCK_API_BASE", upstream.api_base)
    path = tmp_path / "load_balancer_config.py"
    path.write_text(LOAD_BALANCER)
    server = serve_config(path, debug=False)
    client = client_for(server.url, "KEY1")
    for _ in range(12):
        answer = client.chat.completions.create(model="anything", messages=MESSAGES)
        assert answer.choices[0].message.content == UPSTREAM_CONTENT
        assert answer.usage.total_tokens == 8, "the upstream's whole answer comes through"
    models = {r.body["model"] for r in upstream.requests}
    assert models == {"gpt-5-mini", "claude-sonnet-4-6"}

    # Streamed: the balancer passes the reference's `callback` on.
    upstream.clear()
    stream = client.chat.completions.create(model="anything", messages=MESSAGES, stream=True)
    chunks = list(stream)
    # The upstream streams a tool call: it reaches the client through the balancer's
    # returned answer (the pieces given to `callback` are text only).
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert [tc.function.arguments for tc in calls] == ['{"city": "Paris", "unit": "celsius"}']
    assert upstream.only_request().body["stream"] is True

    with pytest.raises(openai.AuthenticationError):
        client_for(server.url, "other").chat.completions.create(model="x", messages=MESSAGES)


def test_reference_fallback_example(serve_config: Any, upstream: MockUpstream) -> None:
    # doc/fallback.md of the reference: a local server first, then OpenAI. Here the
    # "local" server is down (the mock upstream answers 500 to `fail-*` models).
    config = Config(
        host="127.0.0.1",
        port=0,
        connections={
            "local": upstream_connection(upstream),
            "openai": upstream_connection(upstream),
            "fallback": Fallback(connections=["local.fail-gpt-oss-20b", "openai.gpt-5.2"]),
            "fallback_dict": Fallback(
                connections={
                    "local": {"model": "fail-oss"},
                    "openai": {"model": "gpt-5.2", "reasoning_effort": "low"},
                }
            ),
        },
        routing={"dict": "fallback_dict.*", "*": "fallback.*"},
        groups={"default": Group(api_keys=["KEY1"])},
    )
    assert config._to_tree()[1] == {}, "Fallback is the Rust built-in"
    server = serve_config(config, debug=False)
    client = client_for(server.url, "KEY1")
    answer = client.chat.completions.create(model="anything", messages=MESSAGES)
    assert answer.choices[0].message.content == UPSTREAM_CONTENT
    assert [r.body["model"] for r in upstream.requests] == ["fail-gpt-oss-20b", "gpt-5.2"]

    upstream.clear()
    client.chat.completions.create(model="dict", messages=MESSAGES)
    assert [r.body["model"] for r in upstream.requests] == ["fail-oss", "gpt-5.2"]
    assert upstream.requests[1].body["reasoning_effort"] == "low"

    # Streamed answers fall over too, before the first chunk.
    upstream.clear()
    stream = client.chat.completions.create(model="anything", messages=MESSAGES, stream=True)
    arguments = "".join(
        call.function.arguments or ""
        for chunk in stream
        for choice in chunk.choices
        for call in choice.delta.tool_calls or []
    )
    assert arguments == "".join(UPSTREAM_TOOL_ARGUMENTS)


class LoadBalancer:
    """The reference's "combining strategies" example: a class-based connection."""

    def __init__(self, connections: list[str]) -> None:
        self.connections = connections
        self.turn = 0

    async def __call__(self, messages: list[Any], **kwargs: Any) -> Any:
        name = self.connections[self.turn % len(self.connections)]
        self.turn += 1
        kwargs.pop("model", None)  # each server uses its own model
        return await env.connections[name](messages, **kwargs)


def test_fallback_over_a_python_connection(serve_config: Any, upstream: MockUpstream) -> None:
    config = Config(
        host="127.0.0.1",
        port=0,
        connections={
            "server1": upstream_connection(upstream, model="fail-1"),
            "server2": upstream_connection(upstream, model="fail-2"),
            "cluster": {"class": LoadBalancer, "connections": ["server1", "server2"]},
            "dedicated_backup": {"api_type": "mock", "response": "from the backup"},
            "safe_route": Fallback(connections={"cluster": {}, "dedicated_backup": {}}),
        },
        routing={"*": "safe_route.*"},
        groups={"default": Group(api_keys=["KEY1"])},
    )
    server = serve_config(config, debug=False)
    client = client_for(server.url, "KEY1")
    for _ in range(2):
        answer = client.chat.completions.create(model="m", messages=MESSAGES)
        assert answer.choices[0].message.content == "from the backup"
    assert [r.body["model"] for r in upstream.requests] == ["fail-1", "fail-2"]


def test_server_api(tmp_path: Path) -> None:
    config = Config(
        host="127.0.0.1",
        port=0,
        connections={"mock": {"api_type": "mock"}},
        routing={"*": "mock.*"},
        groups={"default": Group(api_keys=[CLIENT_KEY])},
        api_prefix="/api/v2",
    )
    with Server(config, debug=False) as server:
        assert server.running
        assert server.url.startswith("http://127.0.0.1:")
        assert server.base_url == server.url + "/api/v2"
        client = client_for(server.url, prefix="/api/v2")
        assert client.chat.completions.create(model="m", messages=MESSAGES).choices
        assert "running" in repr(server)
    assert not server.running
    server.stop()  # a second stop is harmless
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=MESSAGES)

    # A path works too (any format), with host/port overrides.
    path = tmp_path / "config.json"
    path.write_text(
        '{"connections": {"mock": {"api_type": "mock"}}, "routing": {"*": "mock.*"},'
        ' "groups": {"default": {"api_keys": ["json-key"]}}}'
    )
    with Server(path, host="127.0.0.1", port=0, debug=False) as by_path:
        assert by_path.config.source == str(path)
        answer = client_for(by_path.url, "json-key").chat.completions.create(
            model="m", messages=MESSAGES
        )
        assert answer.choices


def test_each_server_sees_its_own_env(serve_config: Any) -> None:
    seen: list[tuple[str, str]] = []

    def handler(ctx: RequestContext) -> None:
        seen.append((env.config.encryption_key, sorted(env.connections)[0]))

    def config(name: str) -> Config:
        return Config(
            host="127.0.0.1",
            port=0,
            encryption_key=name,
            connections={f"{name}-conn": {"api_type": "mock"}},
            routing={"*": f"{name}-conn.*"},
            api_key_check=AllowAll(),
            before=[handler],
        )

    first = serve_config(config("first"), debug=False)
    second = serve_config(config("second"), debug=False)
    client_for(first.url, "k").chat.completions.create(model="m", messages=MESSAGES)
    client_for(second.url, "k").chat.completions.create(model="m", messages=MESSAGES)
    client_for(first.url, "k").chat.completions.create(model="m", messages=MESSAGES)
    assert seen == [
        ("first", "first-conn"),
        ("second", "second-conn"),
        ("first", "first-conn"),
    ]
    # Outside any request: the last server started.
    assert env.config.encryption_key == "second"


def test_serve_in_background_script(tmp_path: Path) -> None:
    """`Server` in a plain script: start, use, stop, exit cleanly."""
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import openai, httpx
            from lm_proxy import Config, Server
            from lm_proxy.api_key_check import AllowAll

            async def shout(messages, **params):
                return messages[-1]["content"].upper()

            config = Config(host="127.0.0.1", port=0, connections={"shout": shout},
                            routing={"*": "shout.*"}, api_key_check=AllowAll())
            with Server(config) as server:
                client = openai.OpenAI(base_url=server.url + "/v1", api_key="k",
                                       http_client=httpx.Client(trust_env=False))
                print(client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "quiet"}]
                ).choices[0].message.content)
            print("stopped")
            """
        )
    )
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["QUIET", "stopped"]


def test_config_objects_take_this_projects_tables(
    tmp_path: Path, upstream: MockUpstream, serve_config: Any
) -> None:
    """`Config` knows every top-level setting the core does, so a config file with
    `[metrics]`, `[limits]`, `[log_queue]` loads as a `Config`, and a `Config` built
    in Python can set them (it rejected them as unknown keys)."""
    path = tmp_path / "c.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            invalid_api_key_status = 403
            max_response_body_mb = 8
            [connections.up]
            api_type = "open_ai"
            api_base = "{upstream.api_base}"
            api_key = "{UPSTREAM_KEY}"
            [routing]
            "*" = "up.*"
            [groups.default]
            api_keys = ["KEY1"]
            [metrics]
            enabled = false
            [limits]
            header_timeout_seconds = 5
            [log_queue]
            max_entries = 16
            """
        )
    )
    loaded = Config.load(path)
    assert loaded.invalid_api_key_status == 403
    assert loaded.limits == {"header_timeout_seconds": 5}
    assert loaded.log_queue == {"max_entries": 16}
    assert loaded.metrics == {"enabled": False}
    assert Config.load(path) == loaded

    built = Config(
        connections={"up": upstream_connection(upstream)},
        routing={"*": "up.*"},
        groups={"default": Group(api_keys=["KEY1"])},
        invalid_api_key_status=403,
        limits={"idle_timeout_seconds": 30},
        metrics={"enabled": False},
    )
    server = serve_config(built)
    answer = client_for(server.url, "KEY1").chat.completions.create(model="m", messages=MESSAGES)
    assert answer.choices[0].message.content == UPSTREAM_CONTENT
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client_for(server.url, "other").chat.completions.create(model="m", messages=MESSAGES)
    assert refused.value.status_code == 403, "the configured status, not the default 401"
    metrics = httpx.get(f"{server.url}/metrics", trust_env=False)
    assert metrics.status_code == 404, "metrics disabled from the Config object"
    with pytest.raises(ConfigError, match="limits"):
        Config(connections={"up": upstream_connection(upstream)}, limits={"nope": 1}).check()
