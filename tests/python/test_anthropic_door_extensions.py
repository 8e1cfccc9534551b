"""The Anthropic door through the Python package: `before` handlers and loggers see
which door a request came in through (`ctx.endpoint`), and Python connections answer
it through the translation (non-streamed and streamed)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
from conftest import CLIENT_KEY, import_lm_proxy

lm_proxy = import_lm_proxy()
from lm_proxy import Config, Group  # noqa: E402
from lm_proxy.base_types import RequestContext  # noqa: E402


def python_connection(messages: list[dict[str, Any]], **params: Any) -> Iterator[str]:
    """A Python connection: streams the last user text back in two pieces."""
    yield "Python heard: "
    yield str(messages[-1]["content"])


def test_handlers_and_loggers_see_the_door_and_python_connections_answer(
    serve_config: Any,
) -> None:
    seen: list[tuple[str, str | None]] = []
    logged: list[tuple[str | None, Any]] = []

    def handler(ctx: RequestContext) -> None:
        seen.append(("before", ctx.endpoint))

    def logger(ctx: RequestContext) -> None:
        logged.append((ctx.endpoint, ctx.response))

    config = Config(
        host="127.0.0.1",
        port=0,
        shutdown_grace_seconds=2,
        connections={"mock": {"api_type": "mock"}, "py": python_connection},
        routing={"py-*": "py.*", "*": "mock.*"},
        groups={"default": Group(api_keys=[CLIENT_KEY])},
        before=[handler],
        loggers=[logger],
    )
    server = serve_config(config, debug=False)
    client = anthropic.Anthropic(
        base_url=server.url,
        api_key=CLIENT_KEY,
        max_retries=0,
        timeout=10,
        http_client=anthropic.DefaultHttpxClient(trust_env=False),
    )
    message = client.messages.create(
        model="py-model", max_tokens=20, messages=[{"role": "user", "content": "bonjour"}]
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "Python heard: bonjour"
    with client.messages.stream(
        model="py-model", max_tokens=20, messages=[{"role": "user", "content": "salut"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "text"
    assert final.content[0].text == "Python heard: salut"

    chat = openai.OpenAI(
        base_url=server.url + "/v1",
        api_key=CLIENT_KEY,
        max_retries=0,
        http_client=openai.DefaultHttpxClient(trust_env=False),
    )
    chat.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])

    server.stop(grace=5)
    assert seen == [
        ("before", "messages"),
        ("before", "messages"),
        ("before", "chat/completions"),
    ]
    assert sorted(str(e) for e, _ in logged) == ["chat/completions", "messages", "messages"]
    # Loggers get the Anthropic door's answers in its own shape.
    shapes = [r.get("type") for e, r in logged if e == "messages"]
    assert shapes == ["message", "message"]
    # ... and as the answer's text, like chat answers (what a text column stores).
    texts = sorted(str(r) for e, r in logged if e == "messages")
    assert texts == ["Python heard: bonjour", "Python heard: salut"]


def test_a_handler_that_edits_the_request_reaches_an_anthropic_upstream(
    serve_config: Any,
) -> None:
    from test_anthropic_client import ANSWER, _AnthropicHandler, _serve

    def handler(ctx: RequestContext) -> None:
        assert ctx.endpoint == "messages"
        ctx.llm_params["max_tokens"] = 7
        ctx.llm_params["extra_headers"] = {"x-tenant": "acme"}

    for upstream in _serve(_AnthropicHandler):
        config = Config(
            host="127.0.0.1",
            port=0,
            shutdown_grace_seconds=2,
            connections={
                "anth": {"api_type": "anthropic", "api_base": upstream.base, "api_key": "sk-up"}
            },
            routing={"*": "anth.claude-real"},
            groups={"default": Group(api_keys=[CLIENT_KEY])},
            before=[handler],
        )
        server = serve_config(config, debug=False)
        client = anthropic.Anthropic(
            base_url=server.url,
            api_key=CLIENT_KEY,
            max_retries=0,
            timeout=10,
            http_client=anthropic.DefaultHttpxClient(trust_env=False),
        )
        raw = client.messages.with_raw_response.create(
            model="any",
            max_tokens=100,
            messages=[{"role": "user", "content": "hi"}],
            metadata={"user_id": "u-1"},
        )
        # The answer still comes back as written; the request is written out again.
        assert raw.http_response.content == ANSWER.encode()
        _, headers, body = upstream.last()
        assert json.loads(body) == {
            "model": "claude-real",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 7,
            "metadata": {"user_id": "u-1"},
        }
        assert headers["x-tenant"] == "acme"
        server.stop(grace=5)
