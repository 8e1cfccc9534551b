"""The reference's Python API surface (issue 19, points 6, 8 and 10): `Config` and
`Group` as pydantic models, the built-ins called from Python, and the helper modules
`lm_proxy.core`, `lm_proxy.utils` and `lm_proxy.models_endpoint`."""

from __future__ import annotations

import asyncio
import copy
import json
import pickle
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import openai
import pydantic
import pytest
from conftest import (
    CLIENT_KEY,
    UPSTREAM_CONTENT,
    UPSTREAM_KEY,
    MockUpstream,
    client_for,
    import_lm_proxy,
)

lm_proxy = import_lm_proxy()
from lm_proxy import Config, Group, OpenAIHTTPException  # noqa: E402
from lm_proxy.api_key_check import AllowAll, CheckAPIKeyWithRequest  # noqa: E402
from lm_proxy.base_types import Address, Headers, HTTPRequest, RequestContext  # noqa: E402
from lm_proxy.bootstrap import bootstrap  # noqa: E402
from lm_proxy.config import ModelListingMode  # noqa: E402
from lm_proxy.handlers import HTTPHeadersForwarder, RateLimiter  # noqa: E402
from lm_proxy.loggers import BaseLogger, JsonLogWriter, LogEntryTransformer  # noqa: E402

MESSAGES = [{"role": "user", "content": "Hello there"}]


def upstream_connection(upstream: MockUpstream) -> dict[str, Any]:
    return {"api_type": "openai", "api_base": upstream.api_base, "api_key": UPSTREAM_KEY}


# --------------------------------------------------------------------------------------
# Point 6: Config and Group are pydantic models
# --------------------------------------------------------------------------------------


def test_config_and_group_offer_the_pydantic_api() -> None:
    assert issubclass(Config, pydantic.BaseModel) and issubclass(Group, pydantic.BaseModel)

    group = Group(api_keys=["K1"], allowed_connections="a,b")
    assert group.model_dump() == {"api_keys": ["K1"], "allowed_connections": "a,b"}
    # The reference's examples' spelling, through model_validate too.
    assert Group.model_validate({"api_keys": ["K1"], "connections": "a,b"}) == group
    assert group.model_copy(update={"api_keys": ["K2"]}).api_keys == ["K2"]
    assert group.api_keys == ["K1"], "model_copy leaves the original alone"

    config = Config(
        connections={"m": {"api_type": "mock"}},
        groups={"users": {"api_keys": ["U1"], "allowed_connections": ["m"]}},
        model_listing_mode="ignore_wildcards",
    )
    assert isinstance(config.groups["users"], Group)
    assert config.model_listing_mode is ModelListingMode.IGNORE_WILDCARDS
    dumped = config.model_dump()
    assert dumped["groups"] == {"users": {"api_keys": ["U1"], "allowed_connections": ["m"]}}
    assert dumped["connections"] == {"m": {"api_type": "mock"}}
    assert dumped["port"] == 8000 and dumped["api_key_check"] == config.api_key_check
    assert config.model_dump(include={"host", "port"}) == {"host": "0.0.0.0", "port": 8000}
    assert config.model_dump(mode="json")["model_listing_mode"] == "ignore_wildcards"

    moved = config.model_copy(update={"port": 9000})
    assert moved.port == 9000 and config.port == 8000
    assert moved != config and moved.model_copy(update={"port": 8000}) == config

    schema = Config.model_json_schema()
    assert schema["type"] == "object" and schema["required"] == ["connections"]
    assert schema["additionalProperties"] is False
    for name in ("connections", "routing", "groups", "api_key_check", "before", "loggers"):
        assert name in schema["properties"], name
    assert schema["properties"]["port"] == {"default": 8000, "title": "Port", "type": "integer"}
    assert "api_keys" in schema["$defs"]["Group"]["properties"]
    assert Group.model_json_schema()["properties"]["api_keys"]["type"] == "array"

    # Wrong types are refused as by the reference's models.
    with pytest.raises(pydantic.ValidationError):
        Config(connections={"m": {"api_type": "mock"}}, port="not a port")
    with pytest.raises(pydantic.ValidationError):
        Group.model_validate({"api_keys": "K1", "bogus": 1})


def test_model_dump_round_trips_and_serves_the_same_gateway(
    upstream: MockUpstream, serve_config: Any, tmp_path: Path
) -> None:
    log_file = tmp_path / "log.jsonl"
    seen: list[str] = []

    def python_check(api_key: str) -> str | None:
        seen.append(api_key)
        return "default" if api_key == CLIENT_KEY else None

    config = Config(
        host="127.0.0.1",
        port=0,
        connections={"up": upstream_connection(upstream), "mock": {"api_type": "mock"}},
        routing={"up-*": "up.*", "*": "mock.*"},
        groups={"default": Group(api_keys=[CLIENT_KEY])},
        api_key_check=python_check,
        before=[RateLimiter(max_requests=100, window_seconds=60), HTTPHeadersForwarder()],
        loggers=[
            BaseLogger(
                log_writer=JsonLogWriter(file_name=str(log_file)),
                entry_transformer=LogEntryTransformer(model="model", group="group"),
            )
        ],
    )
    again = Config.model_validate(config.model_dump())
    assert again == config
    assert again.api_key_check is python_check, "objects survive the python-mode dump"
    tree, objects = config._to_tree()
    tree_again, objects_again = again._to_tree()
    assert list(objects.values()) == list(objects_again.values()) == [python_check]
    strip = {"api_key_check"}  # its reference string has a token of its own per call
    assert {k: v for k, v in tree.items() if k not in strip} == {
        k: v for k, v in tree_again.items() if k not in strip
    }
    # Deep copies work although the built-ins hold locks for direct calls.
    deep = again.model_copy(deep=True)
    assert deep == config and deep.before[0] is not config.before[0]
    assert pickle.loads(pickle.dumps(config.before)) == config.before

    answers = []
    for served in (config, again):
        server = serve_config(served)
        with client_for(server.url) as client:
            answer = client.chat.completions.create(model="up-model", messages=MESSAGES)
            answers.append(answer.choices[0].message.content)
            with pytest.raises(openai.AuthenticationError):
                client_for(server.url, api_key="wrong").models.list()
        server.stop(grace=0)  # the log is written by the time it returns
    assert answers == [UPSTREAM_CONTENT] * 2
    assert [r.body["model"] for r in upstream.requests] == ["up-model", "up-model"]
    assert seen.count(CLIENT_KEY) == 2 and "wrong" in seen
    logged = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert logged == [{"model": "up-model", "group": "default"}] * 2


def test_json_dump_of_a_config_loads_back(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(
        '[connections.m]\napi_type = "mock"\n'
        '[routing]\n"*" = "m.*"\n'
        '[groups.default]\napi_keys = ["K1"]\n'
        '[api_key_check]\nclass = "lm_proxy.api_key_check.AllowAll"\n'
        '[[before]]\nclass = "lm_proxy.handlers.RateLimiter"\nmax_requests = 5\n'
    )
    loaded = Config.load(toml)
    assert Config.model_validate(loaded.model_dump()) == loaded
    assert Config.model_validate_json(loaded.model_dump_json()) == loaded
    # A config of Python objects: the built-ins are written as the tables a file holds.
    built = Config(
        connections={"m": {"api_type": "mock"}},
        routing={"*": "m.*"},
        groups={"default": Group(api_keys=["K1"])},
        api_key_check=AllowAll(),
        before=[RateLimiter(max_requests=5)],
    )
    as_json = json.loads(built.model_dump_json())
    assert as_json["api_key_check"] == {"class": "lm_proxy.api_key_check.AllowAll"}
    assert as_json["before"] == [{"class": "lm_proxy.handlers.RateLimiter", "max_requests": 5}]
    assert Config.model_validate(as_json)._to_tree() == (built._to_tree()[0], {})


# --------------------------------------------------------------------------------------
# Point 8: the built-ins called from Python
# --------------------------------------------------------------------------------------


class _KeyService(BaseHTTPRequestHandler):
    """`/check/<key>`: good → 200 with user info, redirect → 302, boom → 500,
    anything else → 403; `/hdr`: 200 when `Authorization: Bearer good`."""

    calls: list[str]

    def do_GET(self) -> None:
        self.server.calls.append(self.path)  # type: ignore[attr-defined]
        key = self.path.rsplit("/", 1)[-1]
        if self.path == "/hdr":
            ok = self.headers.get("Authorization") == "Bearer good"
            self._answer(200 if ok else 401, {"sub": "h"})
        elif key in ("good", "a%20b"):
            self._answer(200, {"sub": key, "role": "admin", "n": 1})
        elif key == "badjson":
            self._answer(200, None)
        elif key == "redirect":
            self.send_response(302)
            self.send_header("Location", "/check/good")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif key == "boom":
            self._answer(500, {"error": "down"})
        else:
            self._answer(403, {"error": "no"})

    do_POST = do_GET

    def _answer(self, status: int, body: Any) -> None:
        data = b"not json" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def key_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KeyService)
    server.calls = []  # type: ignore[attr-defined]
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_check_api_key_with_request_called_from_python(key_service: Any) -> None:
    base = key_service.url
    check = CheckAPIKeyWithRequest(url=f"{base}/check/{{api_key}}")
    assert check("good") == ("default", None)
    assert check("a b") is None, "not visible ASCII: refused without a call"
    assert check("wrong") is None
    assert check("boom") is None
    assert check("redirect") is None, "redirects are not followed"
    assert check("../x") is None and check("") is None
    assert key_service.calls == ["/check/good", "/check/wrong", "/check/boom", "/check/redirect"]

    with_info = CheckAPIKeyWithRequest(
        url=f"{base}/check/{{api_key}}",
        method="POST",
        response_as_user_info=True,
        group_field="role",
    )
    assert with_info("good") == ("admin", {"sub": "good", "role": "admin", "n": 1})
    assert with_info("badjson") is None
    by_default = CheckAPIKeyWithRequest(
        url=f"{base}/check/{{api_key}}", response_as_user_info=True, default_group="basic"
    )
    assert by_default("good") == ("basic", {"sub": "good", "role": "admin", "n": 1})

    by_header = CheckAPIKeyWithRequest(
        url=f"{base}/hdr", headers={"Authorization": "Bearer {api_key}"}
    )
    assert by_header("good") == ("default", None)
    assert by_header("other") is None

    # Nothing listens on a port just closed: the service fails, the key is refused.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert CheckAPIKeyWithRequest(url=f"http://127.0.0.1:{closed}/{{api_key}}")("good") is None

    cached = CheckAPIKeyWithRequest(url=f"{base}/check/{{api_key}}", use_cache=True)
    key_service.calls.clear()
    assert cached("good") == cached("good") == ("default", None)
    assert cached("wrong") is None and cached("wrong") is None
    assert key_service.calls == ["/check/good", "/check/wrong"], "answers are cached"
    # Copies start with an empty cache of their own.
    assert copy.deepcopy(cached)("good") == ("default", None)
    assert key_service.calls[-1] == "/check/good"


def test_the_built_ins_stay_rust_built_ins_as_config_values(
    key_service: Any, serve_config: Any
) -> None:
    check = CheckAPIKeyWithRequest(url=f"{key_service.url}/check/{{api_key}}")
    config = Config(
        host="127.0.0.1",
        port=0,
        connections={"m": {"api_type": "mock"}},
        routing={"*": "m.*"},
        api_key_check=check,
        before=[RateLimiter(max_requests=1, window_seconds=60), HTTPHeadersForwarder()],
    )
    tree, objects = config._to_tree()
    assert objects == {}, "no Python object reaches the server"
    assert tree["api_key_check"]["class"] == "lm_proxy.api_key_check.CheckAPIKeyWithRequest"
    server = serve_config(config)
    with client_for(server.url, api_key="good") as client:
        client.chat.completions.create(model="x", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="x", messages=MESSAGES)
    with pytest.raises(openai.AuthenticationError):
        client_for(server.url, api_key="wrong").chat.completions.create(
            model="x", messages=MESSAGES
        )


class _CountingLimiter(RateLimiter):
    calls = 0

    async def __call__(self, ctx: Any) -> None:
        type(self).calls += 1
        await super().__call__(ctx)


def test_a_built_in_subclass_that_changes_the_call_runs_in_python(serve_config: Any) -> None:
    limiter = _CountingLimiter(max_requests=1, window_seconds=60)
    config = Config(
        host="127.0.0.1",
        port=0,
        connections={"m": {"api_type": "mock"}},
        routing={"*": "m.*"},
        groups={"default": Group(api_keys=[CLIENT_KEY])},
        before=[limiter, RateLimiter(max_requests=5)],
    )
    _tree, objects = config._to_tree()
    assert list(objects.values()) == [limiter], "the plain RateLimiter stays in Rust"
    server = serve_config(config)
    with client_for(server.url) as client:
        client.chat.completions.create(model="x", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(model="x", messages=MESSAGES)
    assert 1 <= int(limited.value.response.headers["retry-after"]) <= 60
    assert _CountingLimiter.calls == 2


def test_allow_all_rate_limiter_and_forwarder_called_from_python() -> None:
    assert AllowAll()("k1") == ("default", {"api_key": "k1"})
    assert AllowAll(group="g", capture_api_key=False)("k1") == ("g", {})

    limiter = RateLimiter(max_requests=2, window_seconds=30)
    a, b = RequestContext(api_key_id="a"), RequestContext(api_key_id="b")

    async def limit(which: RateLimiter, ctx: RequestContext) -> None:
        await which(ctx)

    asyncio.run(limit(limiter, a))
    asyncio.run(limit(limiter, a))
    with pytest.raises(OpenAIHTTPException) as over:
        asyncio.run(limit(limiter, a))
    error = over.value
    assert (error.status_code, error.error_type, error.code) == (
        429,
        "rate_limit_error",
        "rate_limit_exceeded",
    )
    assert error.message == "Rate limit exceeded: 2/30s"
    assert 1 <= int(error.headers["Retry-After"]) <= 30
    asyncio.run(limit(limiter, b))  # another key has its own window
    with pytest.raises(OpenAIHTTPException):
        asyncio.run(limit(limiter, a))  # still over: the refused request was not counted
    one_global = RateLimiter(max_requests=1, window_seconds=1.5, per="global")
    asyncio.run(limit(one_global, a))
    with pytest.raises(OpenAIHTTPException, match=r"1/1\.5s"):
        asyncio.run(limit(one_global, b))

    headers = Headers(
        [
            ("X-Tenant", "acme"),
            ("x-trace", "1"),
            ("X-Trace", "2"),
            ("Authorization", "Bearer client-key"),
            ("Cookie", "session=1"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("Connection", "x-hop"),
            ("x-hop", "1"),
        ]
    )
    ctx = RequestContext(
        http_request=HTTPRequest(headers=headers, client=Address("1.2.3.4", 5)),
        llm_params={"extra_headers": {"x-tenant": "set-by-handler"}},
    )
    asyncio.run(HTTPHeadersForwarder()(ctx))
    assert ctx.llm_params["extra_headers"] == {"x-tenant": "set-by-handler", "x-trace": "1, 2"}
    only = RequestContext(http_request=HTTPRequest(headers=headers))
    asyncio.run(HTTPHeadersForwarder(white_list_headers=["x-tenant", "authorization"])(only))
    assert only.llm_params == {"extra_headers": {"X-Tenant": "acme"}}
    ignored = RequestContext(http_request=HTTPRequest(headers=headers))
    asyncio.run(HTTPHeadersForwarder(ignore_headers=["X-Trace"])(ignored))
    assert ignored.llm_params == {"extra_headers": {"X-Tenant": "acme"}}
    nothing = RequestContext()
    asyncio.run(HTTPHeadersForwarder()(nothing))
    assert nothing.llm_params == {}

    # Any request with a headers mapping, such as a Starlette request (whose headers
    # have a `raw` list of byte pairs).
    class StarletteLikeHeaders(dict[str, str]):
        raw = ((b"x-a", b"1"), (b"cookie", b"c"))

    other = RequestContext()
    other.http_request = SimpleNamespace(  # type: ignore[assignment]
        headers=StarletteLikeHeaders({"x-a": "1", "cookie": "c"})
    )
    asyncio.run(HTTPHeadersForwarder()(other))
    assert other.llm_params == {"extra_headers": {"x-a": "1"}}


# --------------------------------------------------------------------------------------
# Point 10: the reference's helper modules
# --------------------------------------------------------------------------------------


def _request(key: str | None, host: str = "127.0.0.1", **headers: str) -> Any:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return SimpleNamespace(headers=headers, client=SimpleNamespace(host=host))


def test_core_helpers(tmp_path: Path) -> None:
    from lm_proxy.core import check, log_non_blocking, resolve_connection_and_model

    logged: list[RequestContext] = []
    async_logged: list[str | None] = []

    async def async_logger(ctx: RequestContext) -> None:
        async_logged.append(ctx.id)

    config = Config(
        connections={"openai": {"api_type": "mock"}, "local": {"api_type": "mock"}},
        routing={"gpt*": "openai.*", "local": "local.tiny", "*": "local.fallback"},
        groups={
            "admin": Group(api_keys=["A1"]),
            "users": Group(api_keys=["U1"], allowed_connections="local"),
        },
        loggers=[
            logged.append,
            async_logger,
            BaseLogger(log_writer=JsonLogWriter(file_name=str(tmp_path / "l.jsonl"))),
        ],
    )
    assert resolve_connection_and_model(config, "gpt-4o") == ("openai", "gpt-4o")
    assert resolve_connection_and_model(config, "local") == ("local", "tiny")
    assert resolve_connection_and_model(config, "other") == ("local", "fallback")
    with pytest.raises(ValueError, match="No routing rule matched model 'x'"):
        resolve_connection_and_model(config.model_copy(update={"routing": {}}), "x")
    with pytest.raises(ValueError, match="unknown connection 'nope'"):
        resolve_connection_and_model(config.model_copy(update={"routing": {"*": "nope.*"}}), "x")

    bootstrap(config, env_file=None)

    async def run() -> None:
        assert await check(_request("U1")) == ("users", "U1", {})
        assert await check(_request("A1")) == ("admin", "A1", {})
        with pytest.raises(OpenAIHTTPException) as refused:
            await check(_request("nope"))
        assert (refused.value.status_code, refused.value.code) == (401, "invalid_api_key")
        with pytest.raises(OpenAIHTTPException):
            await check(SimpleNamespace(headers={}, client=None))

        ctx = RequestContext(group="users", model="tiny")
        task = await log_non_blocking(ctx)
        assert task is not None
        await task
        await asyncio.sleep(0)  # the async logger's own task
        assert logged == [ctx] and async_logged == [ctx.id]
        assert ctx.duration is not None and ctx.duration >= 0

    asyncio.run(run())
    entry = json.loads((tmp_path / "l.jsonl").read_text())
    assert entry["group"] == "users" and entry["model"] == "tiny"

    # A key check that answers (group, user_info), and a Config without loggers.
    bootstrap(
        Config(connections={"m": {"api_type": "mock"}}, api_key_check=AllowAll()), env_file=None
    )

    async def run_allow_all() -> None:
        assert await check(_request("any")) == ("default", "any", {"api_key": "any"})
        assert await log_non_blocking(RequestContext()) is None

    asyncio.run(run_allow_all())


def test_utils_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    from lm_proxy.utils import get_client_ip, replace_env_strings_recursive

    monkeypatch.setenv("LMP_REF_API", "value")
    monkeypatch.delenv("LMP_REF_MISSING", raising=False)
    data = {"a": "env:LMP_REF_API", "b": ["env:LMP_REF_MISSING", 1, {"c": "env:LMP_REF_API"}]}
    assert replace_env_strings_recursive(data) == {"a": "value", "b": ["", 1, {"c": "value"}]}
    assert data["a"] == "env:LMP_REF_API", "the input is not changed"
    assert replace_env_strings_recursive("plain") == "plain"

    # Behind a trusted proxy (loopback by default) the forwarding headers count,
    # read from the right; from anyone else they do not.
    xff = {"X-Forwarded-For": "203.0.113.7, 198.51.100.2"}
    assert get_client_ip(_request(None, **xff)) == "198.51.100.2"
    assert get_client_ip(_request(None, **xff), ["127.0.0.1", "198.51.100.0/24"]) == "203.0.113.7"
    assert get_client_ip(_request(None, host="192.0.2.9", **xff)) == "192.0.2.9"
    assert get_client_ip(_request(None, **{"X-Real-IP": "192.0.2.1"})) == "192.0.2.1"
    forwarded = {"Forwarded": 'for="[2001:DB8::1]:4711";proto=https'}
    assert get_client_ip(_request(None, **forwarded)) == "2001:DB8::1", "as written"
    assert get_client_ip(_request(None, host="::1")) == "::1"
    assert get_client_ip(SimpleNamespace(headers={}, client=None)) == "unknown"
    assert get_client_ip(_request(None, host="testclient", **xff)) == "testclient"
    # The package's own request type works too.
    http_request = HTTPRequest(
        headers=Headers([("x-forwarded-for", "203.0.113.7")]), client=Address("127.0.0.1", 1)
    )
    assert get_client_ip(http_request) == "203.0.113.7"


def test_models_endpoint() -> None:
    from lm_proxy import models_endpoint

    config = Config(
        connections={"openai": {"api_type": "mock"}, "local": {"api_type": "mock"}},
        routing={"gpt-4o": "openai.*", "gpt*": "openai.*", "tiny": "local.tiny"},
        groups={
            "admin": Group(api_keys=["A1"]),
            "users": Group(api_keys=["U1"], allowed_connections="local"),
        },
        model_info={"tiny": {"owned_by": "me", "context": 8}},
    )
    bootstrap(config, env_file=None)
    admin = asyncio.run(models_endpoint.models(_request("A1")))
    assert admin["object"] == "list"
    assert [m["id"] for m in admin["data"]] == ["gpt-4o", "gpt*", "tiny"]
    assert admin["data"][0] == {
        "id": "gpt-4o",
        "object": "model",
        "created": 0,
        "owned_by": "openai",
    }
    assert admin["data"][2]["owned_by"] == "me" and admin["data"][2]["context"] == 8
    users = asyncio.run(models_endpoint.models(_request("U1")))
    assert [m["id"] for m in users["data"]] == ["tiny"]
    with pytest.raises(OpenAIHTTPException) as refused:
        asyncio.run(models_endpoint.models(_request("bad")))
    assert refused.value.status_code == 401

    bootstrap(config.model_copy(update={"model_listing_mode": "ignore_wildcards"}), env_file=None)
    listed = asyncio.run(models_endpoint.models(_request("A1")))
    assert [m["id"] for m in listed["data"]] == ["gpt-4o", "tiny"]

    bootstrap(config.model_copy(update={"enabled": False}), env_file=None)
    with pytest.raises(OpenAIHTTPException) as disabled:
        asyncio.run(models_endpoint.models(_request("A1")))
    assert (disabled.value.status_code, disabled.value.code) == (503, "service_disabled")
