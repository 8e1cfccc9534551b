"""Python extensions served by the installed package, driven by the `openai` client.

Each kind (key check, `before` handler, logger, connection, component) in its sync
and async forms, the request context they see, and every error path: what the
client receives, that details show only in debug mode, and that the server keeps
serving afterwards.
"""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import openai
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
from lm_proxy.base_types import RequestContext  # noqa: E402
from lm_proxy.bootstrap import env  # noqa: E402
from lm_proxy.loggers import BaseLogger, JsonLogWriter, LogEntryTransformer  # noqa: E402

MESSAGES = [{"role": "user", "content": "Hello there"}]


def make_config(upstream: MockUpstream, **overrides: Any) -> Config:
    """Mock and upstream connections, one client key; `overrides` replace settings."""
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "encryption_key": "python-extension-tests",
        "shutdown_grace_seconds": 2,
        "connections": {
            "mock": {"api_type": "mock"},
            "upstream": {
                "api_type": "openai",
                "api_base": upstream.api_base,
                "api_key": UPSTREAM_KEY,
            },
        },
        "routing": {"up-*": "upstream.*", "*": "mock.*"},
        "groups": {"default": Group(api_keys=[CLIENT_KEY])},
    }
    settings.update(overrides)
    return Config(**settings)


def python_connection_config(upstream: MockUpstream, connection: Any, **overrides: Any) -> Config:
    """A config whose `py-*` models go to the Python connection `connection`."""
    config = make_config(upstream, **overrides)
    config.connections = {**config.connections, "py": connection}
    config.routing = {"py-*": "py.*", **config.routing}
    return config


def stream_text(stream: Any) -> tuple[str, list[str | None]]:
    text, finish = "", []
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.finish_reason is not None:
                finish.append(choice.finish_reason)
    return text, finish


# ---- key checks ----------------------------------------------------------------------


def _sync_check(api_key: str) -> Any:
    if api_key == "good":
        return "default"
    if api_key == "vip":
        return "vip", {"tier": "gold"}
    return None


async def _async_check(api_key: str) -> Any:
    await asyncio.sleep(0)
    return _sync_check(api_key)


@pytest.mark.parametrize("check", [_sync_check, _async_check], ids=["sync", "async"])
def test_key_check_function(serve_config: Any, upstream: MockUpstream, check: Any) -> None:
    seen: list[tuple[Any, Any]] = []

    def handler(ctx: RequestContext) -> None:
        seen.append((ctx.group, dict(ctx.user_info or {})))

    server = serve_config(
        make_config(
            upstream,
            api_key_check=check,
            before=[handler],
            groups={"default": Group(), "vip": Group()},
        ),
        debug=False,
    )
    answer = client_for(server.url, "good").chat.completions.create(model="m", messages=MESSAGES)
    assert answer.choices[0].message.content == "You said: Hello there"
    client_for(server.url, "vip").chat.completions.create(model="m", messages=MESSAGES)
    assert seen == [("default", {}), ("vip", {"tier": "gold"})]

    with pytest.raises(openai.AuthenticationError) as denied:
        client_for(server.url, "bad").chat.completions.create(model="m", messages=MESSAGES)
    assert denied.value.status_code == 401
    assert denied.value.body["code"] == "invalid_api_key"


class PrefixCheck:
    """A class-based key check configured with keyword arguments."""

    def __init__(self, prefix: str, group: str = "default") -> None:
        self.prefix = prefix
        self.group = group

    async def __call__(self, api_key: str) -> Any:
        return (
            (self.group, {"key_tail": api_key[len(self.prefix) :]})
            if api_key.startswith(self.prefix)
            else None
        )


def test_key_check_class_table_with_kwargs(serve_config: Any, upstream: MockUpstream) -> None:
    seen: list[Any] = []
    server = serve_config(
        make_config(
            upstream,
            api_key_check={"class": PrefixCheck, "prefix": "tok-", "group": "team"},
            groups={"team": Group()},
            before=[lambda ctx: seen.append((ctx.group, ctx.user_info))],
        ),
        debug=False,
    )
    client_for(server.url, "tok-abc").chat.completions.create(model="m", messages=MESSAGES)
    assert seen == [("team", {"key_tail": "abc"})]
    with pytest.raises(openai.AuthenticationError):
        client_for(server.url, "nope").chat.completions.create(model="m", messages=MESSAGES)


def test_key_check_errors(serve_config: Any, upstream: MockUpstream) -> None:
    def check(api_key: str) -> Any:
        if api_key == "expired":
            raise OpenAIHTTPException(
                "Your key has expired.",
                status_code=401,
                error_type="authentication_error",
                code="key_expired",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if api_key == "boom":
            raise ValueError("database unreachable at 10.0.0.5")
        if api_key == "weird":
            return 42
        return "default"

    server = serve_config(make_config(upstream, api_key_check=check), debug=False)
    with pytest.raises(openai.AuthenticationError) as expired:
        client_for(server.url, "expired").chat.completions.create(model="m", messages=MESSAGES)
    assert expired.value.status_code == 401
    assert expired.value.body["code"] == "key_expired"
    assert expired.value.body["message"] == "Your key has expired."
    assert expired.value.body["type"] == "authentication_error"
    assert expired.value.response.headers["www-authenticate"] == "Bearer"

    for key in ("boom", "weird"):
        with pytest.raises(openai.InternalServerError) as failed:
            client_for(server.url, key).chat.completions.create(model="m", messages=MESSAGES)
        assert failed.value.status_code == 500
        assert failed.value.body["code"] == "internal_error"
        # No details outside debug mode.
        assert failed.value.body["message"] == "Internal server error"

    # The server is unharmed.
    client_for(server.url, "fine").chat.completions.create(model="m", messages=MESSAGES)


def test_error_details_in_debug_mode(serve_config: Any, upstream: MockUpstream) -> None:
    def check(api_key: str) -> str:
        raise ValueError("database unreachable")

    server = serve_config(make_config(upstream, api_key_check=check), debug=True)
    try:
        with pytest.raises(openai.InternalServerError) as failed:
            client_for(server.url).chat.completions.create(model="m", messages=MESSAGES)
        message = failed.value.body["message"]
        assert "ValueError: database unreachable" in message
        assert "api_key_check" in message
    finally:
        server.stop(grace=0)
        # Debug mode is process-wide: leave it off for the other tests.
        serve_config(make_config(upstream), debug=False).stop(grace=0)


# ---- handlers ------------------------------------------------------------------------


def _sync_handler(ctx: RequestContext) -> None:
    ctx.llm_params["temperature"] = 0.25
    ctx.llm_params.setdefault("extra_headers", {})["X-Audit"] = ctx.id
    ctx.llm_params["model"] = "up-rewritten"
    ctx.request.messages.insert(0, {"role": "system", "content": "Be brief."})
    ctx.extra["handled"] = True


async def _async_handler(ctx: RequestContext) -> None:
    await asyncio.sleep(0)
    _sync_handler(ctx)


@pytest.mark.parametrize("handler", [_sync_handler, _async_handler], ids=["sync", "async"])
def test_handler_changes_reach_upstream(
    serve_config: Any, upstream: MockUpstream, handler: Any
) -> None:
    logged: list[dict[str, Any]] = []
    server = serve_config(
        make_config(upstream, before=[handler], loggers=[lambda ctx: logged.append(ctx.to_dict())]),
        debug=False,
    )
    answer = client_for(server.url).chat.completions.create(
        model="up-original", messages=MESSAGES, temperature=1.0, user="alice"
    )
    assert answer.choices[0].message.content == UPSTREAM_CONTENT
    received = upstream.only_request()
    assert received.body["model"] == "up-rewritten"
    assert received.body["temperature"] == 0.25
    assert received.body["user"] == "alice"
    assert received.body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert received.body["messages"][1] == MESSAGES[0]
    assert received.headers["x-audit"]
    server.stop()
    assert logged[0]["extra"] == {"handled": True}
    assert logged[0]["id"] == received.headers["x-audit"]
    assert logged[0]["model"] == "up-rewritten"


def test_context_fields(serve_config: Any, upstream: MockUpstream) -> None:
    seen: dict[str, Any] = {}

    def handler(ctx: RequestContext) -> None:
        seen.update(
            id=ctx.id,
            model_attr=ctx.request.model,
            messages=[m.content for m in ctx.request.messages],
            stream=ctx.request.stream,
            temperature=ctx.request.temperature,
            unset_field=ctx.request.top_p,
            header_lower=ctx.http_request.headers["x-tenant"],
            header_upper=ctx.http_request.headers["X-TENANT"],
            client_host=ctx.http_request.client.host,
            response=ctx.response,
            error=ctx.error,
            group=ctx.group,
            connection=ctx.connection,
            upstream_model=ctx.model,
            llm_params=dict(ctx.llm_params),
            api_key_id=ctx.api_key_id,
            remote_addr=ctx.remote_addr,
            created_at=ctx.created_at,
            duration=ctx.duration,
            user_info=ctx.user_info,
            extra=dict(ctx.extra),
            as_dict=ctx.to_dict(),
        )

    server = serve_config(make_config(upstream, before=[handler]), debug=False)
    client_for(server.url).chat.completions.create(
        model="some-model",
        messages=MESSAGES,
        temperature=0.5,
        extra_headers={"X-Tenant": "acme"},
    )
    assert len(seen["id"]) == 36  # a uuid4
    assert seen["model_attr"] == "some-model"
    assert seen["messages"] == ["Hello there"]
    assert seen["stream"] is None
    assert seen["temperature"] == 0.5
    assert seen["unset_field"] is None
    assert seen["header_lower"] == seen["header_upper"] == "acme"
    assert seen["client_host"] == seen["remote_addr"] == "127.0.0.1"
    assert seen["response"] is None and seen["error"] is None
    assert seen["group"] == "default"
    assert seen["connection"] == "mock"
    assert seen["upstream_model"] == "some-model"
    assert seen["llm_params"] == {"model": "some-model", "temperature": 0.5}
    assert len(seen["api_key_id"]) == 64 and CLIENT_KEY not in seen["api_key_id"]
    assert isinstance(seen["created_at"], datetime) and seen["created_at"].tzinfo is not None
    assert isinstance(seen["duration"], float) and seen["duration"] >= 0
    assert seen["user_info"] == {}
    assert seen["extra"] == {}
    assert "http_request" not in seen["as_dict"]
    assert seen["as_dict"]["request"]["model"] == "some-model"
    assert seen["as_dict"]["group"] == "default"


def test_handler_errors(serve_config: Any, upstream: MockUpstream) -> None:
    async def limit(ctx: RequestContext) -> None:
        if ctx.request.model == "limited":
            raise OpenAIHTTPException(
                "Slow down.",
                status_code=429,
                error_type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": "7"},
            )

    def crash(ctx: RequestContext) -> None:
        if ctx.request.model == "crash":
            raise RuntimeError("handler bug with secret detail")

    server = serve_config(make_config(upstream, before=[limit, crash]), debug=False)
    client = client_for(server.url)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="limited", messages=MESSAGES)
    assert limited.value.status_code == 429
    assert limited.value.response.headers["retry-after"] == "7"
    assert limited.value.body == {
        "message": "Slow down.",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    with pytest.raises(openai.InternalServerError) as crashed:
        client.chat.completions.create(model="crash", messages=MESSAGES)
    assert crashed.value.body["message"] == "Internal server error"
    assert "secret" not in json.dumps(crashed.value.body)
    # Still serving.
    assert client.chat.completions.create(model="fine", messages=MESSAGES).choices


# ---- loggers -------------------------------------------------------------------------


def test_loggers_sync_async_and_failing(serve_config: Any, upstream: MockUpstream) -> None:
    sync_seen: list[dict[str, Any]] = []
    async_seen: list[Any] = []

    def sync_logger(ctx: RequestContext) -> None:
        sync_seen.append(
            {
                "group": ctx.group,
                "content": ctx.response["choices"][0]["message"]["content"]
                if ctx.response
                else None,
                "error": ctx.error,
                "created_at": ctx.created_at,
                "model": ctx.request.model,
            }
        )

    async def async_logger(ctx: RequestContext) -> None:
        await asyncio.sleep(0)
        async_seen.append(ctx.duration)

    def broken_logger(ctx: RequestContext) -> None:
        raise RuntimeError("logger bug")

    server = serve_config(
        make_config(upstream, loggers=[broken_logger, sync_logger, async_logger]), debug=False
    )
    client = client_for(server.url)
    client.chat.completions.create(model="m1", messages=MESSAGES)
    stream = client.chat.completions.create(model="m2", messages=MESSAGES, stream=True)
    assert stream_text(stream)[0] == "You said: Hello there"
    with pytest.raises(openai.AuthenticationError):
        client_for(server.url, "bad-key").chat.completions.create(model="m3", messages=MESSAGES)
    server.stop()  # writes out every queued entry

    assert [e["model"] for e in sync_seen] == ["m1", "m2", None]
    assert sync_seen[0]["content"] == sync_seen[1]["content"] == "You said: Hello there"
    assert isinstance(sync_seen[0]["created_at"], datetime)
    assert isinstance(sync_seen[2]["error"], OpenAIHTTPException)
    assert sync_seen[2]["error"].status_code == 401
    assert sync_seen[2]["error"].code == "invalid_api_key"
    assert len(async_seen) == 3 and all(d >= 0 for d in async_seen)


def test_base_logger_with_python_writer(
    serve_config: Any, upstream: MockUpstream, tmp_path: Path
) -> None:
    written: list[dict[str, Any]] = []
    transformed: list[dict[str, Any]] = []
    config = make_config(
        upstream,
        loggers=[
            # Rust BaseLogger and transformer, Python writer.
            BaseLogger(
                log_writer=lambda entry: written.append(entry),
                entry_transformer=LogEntryTransformer(
                    model="request.model", tokens="response.usage.completion_tokens", group="group"
                ),
            ),
            # All Rust.
            BaseLogger(
                log_writer=JsonLogWriter(file_name=str(tmp_path / "logs" / "all.jsonl")),
                entry_transformer=LogEntryTransformer(
                    model="request.model", prompt="request.messages"
                ),
            ),
            # A Python transformer: the whole logger runs in Python.
            BaseLogger(
                log_writer=transformed.append,
                entry_transformer=lambda ctx: {"id": ctx.id, "connection": ctx.connection},
            ),
        ],
    )
    tree, objects = config._to_tree()
    assert tree["loggers"][0]["class"] == "lm_proxy.loggers.BaseLogger"
    assert tree["loggers"][1]["log_writer"] == {
        "class": "lm_proxy.loggers.log_writers.JsonLogWriter",
        "file_name": str(tmp_path / "logs" / "all.jsonl"),
    }
    assert len(objects) == 2  # the lambda writer and the Python BaseLogger

    server = serve_config(config, debug=False)
    client_for(server.url).chat.completions.create(model="mock-a", messages=MESSAGES)
    server.stop()
    assert written == [{"model": "mock-a", "tokens": 4, "group": "default"}]
    lines = (tmp_path / "logs" / "all.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"model": "mock-a", "prompt": MESSAGES}]
    assert len(transformed) == 1 and transformed[0]["connection"] == "mock"


# ---- connections ---------------------------------------------------------------------


def conn_sync_text(messages: list[dict[str, Any]], **params: Any) -> str:
    return f"sync:{params['model']}:{messages[-1]['content']}"


async def conn_async_text(messages: list[dict[str, Any]], **params: Any) -> str:
    await asyncio.sleep(0)
    return f"async:{params['model']}:{messages[-1]['content']}"


def conn_sync_callback(messages: list[dict[str, Any]], callback: Any = None, **params: Any) -> str:
    words = ["sync", "callback", "words"]
    if callback is not None:
        for i, word in enumerate(words):
            callback(word if i == 0 else " " + word)
    return " ".join(words)


async def conn_async_callback(
    messages: list[dict[str, Any]], callback: Any = None, **params: Any
) -> str:
    words = ["async", "callback", "words"]
    if callback is not None:
        for i, word in enumerate(words):
            await callback(word if i == 0 else " " + word)
            await asyncio.sleep(0)
    return " ".join(words)


async def conn_async_gen(messages: list[dict[str, Any]], **params: Any) -> Any:
    for piece in ["async", " generator", " pieces"]:
        await asyncio.sleep(0)
        yield piece


def conn_sync_gen(messages: list[dict[str, Any]], **params: Any) -> Any:
    yield from ["sync", " generator", " pieces"]


class MyText(str):
    """A str subclass, as microcore's LLMResponse was."""


async def conn_str_subclass(messages: list[dict[str, Any]], **params: Any) -> MyText:
    return MyText("subclassed text")


CONNECTIONS = {
    "sync_text": (conn_sync_text, "sync:py-x:Hello there"),
    "async_text": (conn_async_text, "async:py-x:Hello there"),
    "sync_callback": (conn_sync_callback, "sync callback words"),
    "async_callback": (conn_async_callback, "async callback words"),
    "async_generator": (conn_async_gen, "async generator pieces"),
    "sync_generator": (conn_sync_gen, "sync generator pieces"),
    "str_subclass": (conn_str_subclass, "subclassed text"),
}


@pytest.mark.parametrize("name", list(CONNECTIONS))
def test_python_connection(serve_config: Any, upstream: MockUpstream, name: str) -> None:
    func, expected = CONNECTIONS[name]
    server = serve_config(python_connection_config(upstream, func), debug=False)
    client = client_for(server.url)
    whole = client.chat.completions.create(model="py-x", messages=MESSAGES)
    assert whole.object == "chat.completion"
    assert whole.model == "py-x"
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == expected
    assert whole.choices[0].finish_reason == "stop"

    stream = client.chat.completions.create(model="py-x", messages=MESSAGES, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1
    if "callback" in name or "generator" in name:
        assert len(chunks) >= 5, "pieces are streamed one by one"


def test_connection_gets_model_and_params(serve_config: Any, upstream: MockUpstream) -> None:
    calls: list[dict[str, Any]] = []

    async def record(messages: list[dict[str, Any]], **params: Any) -> str:
        calls.append({"messages": messages, **{k: v for k, v in params.items() if k != "callback"}})
        return "ok"

    config = python_connection_config(upstream, record)
    config.routing = {"alias": "py.real-model", **config.routing}
    server = serve_config(config, debug=False)
    client_for(server.url).chat.completions.create(
        model="alias", messages=MESSAGES, temperature=0.3, max_tokens=5, stream=False
    )
    assert calls == [
        {
            "messages": MESSAGES,
            "model": "real-model",
            "temperature": 0.3,
            "max_tokens": 5,
            "stream": False,
        }
    ]


def test_connection_n_choices_fan_out(serve_config: Any, upstream: MockUpstream) -> None:
    """`n > 1`: the function is called `n` times, each without `n`, and the answers
    are merged (or the streams multiplexed) into `n` choices."""
    calls: list[dict[str, Any]] = []

    async def numbered(messages: list[dict[str, Any]], **params: Any) -> Any:
        calls.append(params)
        number = len(calls)
        for piece in ["choice", f" {number}"]:
            await asyncio.sleep(0)
            yield piece

    server = serve_config(python_connection_config(upstream, numbered), debug=False)
    client = client_for(server.url)

    whole = client.chat.completions.create(model="py-n", messages=MESSAGES, n=3)
    assert [c.index for c in whole.choices] == [0, 1, 2]
    assert {c.message.content for c in whole.choices} == {"choice 1", "choice 2", "choice 3"}
    assert all(c.finish_reason == "stop" for c in whole.choices)
    assert len(calls) == 3 and all("n" not in call for call in calls), calls

    chunks = list(client.chat.completions.create(model="py-n", messages=MESSAGES, n=2, stream=True))
    texts: dict[int, str] = {}
    finished: dict[int, str | None] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason is not None:
                finished[choice.index] = choice.finish_reason
    assert sorted(texts.values()) == ["choice 4", "choice 5"], texts
    assert finished == {0: "stop", 1: "stop"}
    assert len({c.id for c in chunks}) == 1
    assert len(calls) == 5 and all("n" not in call for call in calls[3:]), calls

    # n = 1 is passed on as the client sent it; too many choices is a 400 naming `n`.
    client.chat.completions.create(model="py-n", messages=MESSAGES, n=1)
    assert calls[-1]["n"] == 1
    with pytest.raises(openai.BadRequestError) as too_many:
        client.chat.completions.create(model="py-n", messages=MESSAGES, n=9)
    assert too_many.value.body["param"] == "n"
    assert len(calls) == 6


def test_connection_returns_openai_dict(serve_config: Any, upstream: MockUpstream) -> None:
    def answer(messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
        return {
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "lookup", "arguments": '{"q": "x"}'},
                            }
                        ],
                    },
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
        }

    server = serve_config(python_connection_config(upstream, answer), debug=False)
    client = client_for(server.url)
    whole = client.chat.completions.create(model="py-tools", messages=MESSAGES)
    assert whole.choices[0].finish_reason == "tool_calls"
    assert whole.choices[0].message.tool_calls[0].function.name == "lookup"
    assert whole.usage.total_tokens == 6
    assert whole.id.startswith("chatcmpl-")

    chunks = list(
        client.chat.completions.create(
            model="py-tools", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function.arguments == '{"q": "x"}'
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage.total_tokens == 6


def test_function_api_type_with_inference_func(serve_config: Any, upstream: MockUpstream) -> None:
    config = make_config(upstream)
    config.connections = {
        **config.connections,
        "local": {"api_type": "function", "inference_func": conn_async_gen, "model": "tiny"},
    }
    config.routing = {"local": "local", **config.routing}
    server = serve_config(config, debug=False)
    answer = client_for(server.url).chat.completions.create(model="local", messages=MESSAGES)
    assert answer.choices[0].message.content == "async generator pieces"
    assert answer.model == "tiny"


def test_connection_errors(serve_config: Any, upstream: MockUpstream) -> None:
    async def flaky(messages: list[dict[str, Any]], **params: Any) -> Any:
        model = params["model"]
        if model == "py-bad-request":
            raise OpenAIHTTPException("prompt too long", 400, code="context_length_exceeded")
        if model == "py-crash":
            raise KeyError("internal state")
        if model == "py-bad-type":
            return 12345
        return "fine"

    async def breaks_mid_stream(messages: list[dict[str, Any]], **params: Any) -> Any:
        yield "first"
        raise RuntimeError("generator broke")

    config = python_connection_config(upstream, flaky)
    config.connections = {**config.connections, "mid": breaks_mid_stream}
    config.routing = {"mid-*": "mid.*", **config.routing}
    server = serve_config(config, debug=False)
    client = client_for(server.url)

    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="py-bad-request", messages=MESSAGES)
    assert bad.value.body["code"] == "context_length_exceeded"
    for model in ("py-crash", "py-bad-type"):
        with pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(model=model, messages=MESSAGES)
        assert failed.value.status_code == 502
        assert failed.value.body["code"] == "upstream_error"
        assert failed.value.body["message"] == "Error processing upstream provider response"
    # An error before the first piece is a real HTTP status, streamed or not.
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="py-bad-request", messages=MESSAGES, stream=True)
    # After the first piece: an error chunk, which the SDK raises.
    stream = client.chat.completions.create(model="mid-x", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            received.extend(c.delta.content or "" for c in chunk.choices)
    assert "first" in "".join(received)
    assert (
        client.chat.completions.create(model="py-ok", messages=MESSAGES).choices[0].message.content
        == "fine"
    )


# ---- components ----------------------------------------------------------------------


class Counter:
    def __init__(self, start: int = 0) -> None:
        self.value = start
        self.lock = threading.Lock()

    def next(self) -> int:
        with self.lock:
            self.value += 1
            return self.value


def test_components(serve_config: Any, upstream: MockUpstream) -> None:
    shared = Counter(100)
    seen: list[Any] = []

    def handler(ctx: RequestContext) -> None:
        ctx.extra["n"] = env.components["counter"].next()
        seen.append((env.components["shared"] is shared, env.config.encryption_key))

    server = serve_config(
        make_config(
            upstream,
            components={"counter": {"class": Counter, "start": 10}, "shared": shared},
            before=[handler],
        ),
        debug=False,
    )
    client = client_for(server.url)
    client.chat.completions.create(model="m", messages=MESSAGES)
    client.chat.completions.create(model="m", messages=MESSAGES)
    assert seen == [(True, "python-extension-tests")] * 2
    # Outside a request, `env` is the last server started: this one.
    assert env.components["counter"].value == 12
